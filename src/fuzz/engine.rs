//! Model-based fuzzing of the engine, after tokio's `fuzz/` targets: [`engine_ops`] decodes
//! bytes into a bounded sequence of operations on a one-shard engine with tiny limits, runs
//! them, and checks every observable outcome against a plain reference model.
//!
//! One file on purpose: the decoder, the reference model and the harness that runs both side by
//! side are read together, top to bottom (test code; never in a build users get).
//!
//! The model is deliberately naive (vectors and loops, no bitmaps, no byte counters kept in
//! step): per user its mailboxes in the order they were made (one per device, or one waiting
//! for the first device), each with four band queues, the in-flight list with seqs,
//! `next_seq`, the epoch once observed, the missed manifest and since when it is connected or
//! away; the names of evicted devices; the per-user limits; per device its sessions, each with
//! what is still waiting in its outbox and what it received. The engine runs on a manual clock
//! that moves 1 ms per step, so which device has been away longest is decided by the ops. After
//! every step the harness calls `Engine::barrier` (acks and closes travel asynchronously) and
//! compares each user's `devices` and `mailbox_stats` and the engine's `memory_used` with the
//! model. Each send's outcome, each connect's `ConnectInfo`, each ack's result and every
//! delivery a session receives (seq, payload, priority, id) are compared as they happen.
//!
//! Input layout: 4 setup bytes (window, policy, manifest ids, user and device caps; per-user
//! caps; memory budget; largest payload), then operations of 2 or 3 bytes each, at most
//! [`MAX_OPS`]. The first byte of an operation picks its kind (low nibble) and its user and
//! device (high nibble). See [`decode`].
//!
//! `fuzz/fuzz_targets/engine_ops.rs` is one line calling [`engine_ops`]; the seed corpus in
//! `fuzz/corpus/engine_ops/` and a fixed-seed batch of random inputs run under `cargo test`.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;

use crate::engine::block_on;
use crate::{
    AckError, Clock, CloseReason, ConnectError, ConnectInfo, Delivery, DeviceId, EndReason, Engine,
    Epoch, Fanout, InvalidInput, MailboxStats, Message, MissedManifest, OverflowPolicy, Priority,
    RejectReason, ResetReason, ResumePoint, SendError, SendOutcome, Session, SetLimitsError,
    TryRecvError, TrySendError, UserId, UserLimits,
};

/// Most operations decoded from one input.
pub const MAX_OPS: usize = 256;

/// The user ids; the last one is longer than [`MAX_USER_ID_LEN`] and always refused.
const USERS: [&str; 4] = ["a", "bb", "ccc", "dddd"];
/// How many of [`USERS`] are valid.
const VALID_USERS: usize = 3;
const MAX_USER_ID_LEN: usize = 3;
const MAX_MESSAGE_ID_LEN: usize = 3;
/// The device names: the default device (empty), three named ones, and one longer than
/// [`MAX_DEVICE_ID_LEN`], always refused.
const DEVICES: [&str; 5] = ["", "p", "l", "t", "xxxxx"];
const MAX_DEVICE_ID_LEN: usize = 4;

/// Decodes `data` into operations, runs them against a fresh engine and a reference model,
/// and panics (naming the step) at the first difference.
pub fn engine_ops(data: &[u8]) {
    let (setup, ops) = decode(data);
    let mut h = Harness::new(setup);
    for (step, op) in ops.iter().enumerate() {
        h.run(step, op);
        h.check(step, op);
    }
    h.finish(ops.len());
}

/// The decoded form of an input, for reading a failing case: setup and one operation per line.
pub fn describe(data: &[u8]) -> String {
    let (setup, ops) = decode(data);
    let mut s = format!("{setup:?}\n");
    for (i, op) in ops.iter().enumerate() {
        s.push_str(&format!("{i:3}: {op:?}\n"));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Engine settings chosen by the first four bytes.
#[derive(Debug, Clone, Copy)]
struct Setup {
    window: usize,
    limits: UserLimits,
    missed_ids: usize,
    max_users: usize,
    max_devices: usize,
    budget: u64,
    max_payload: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendMode {
    Confirmed,
    Plain,
    Try,
}

#[derive(Debug, Clone, Copy)]
enum IdSpec {
    None,
    Valid,
    Empty,
    TooLong,
}

/// A payload size: small, or one of the edges of the limits (see `Harness::edge_size`).
#[derive(Debug, Clone, Copy)]
enum Size {
    Small(usize),
    Edge(u8),
}

#[derive(Debug, Clone, Copy)]
enum ResumeSpec {
    None,
    /// The resume point of the user's session (current, else replaced, else the last one gone).
    Current,
    /// The resume point of the user's last session that was closed or dropped.
    Saved,
    /// An epoch that is not the mailbox's.
    WrongEpoch(u8),
    /// The right epoch with a seq the mailbox never assigned.
    PastEnd(u8),
    /// The right epoch with an arbitrary small seq (the client claims to have received it).
    Claim(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    /// The user's attached session.
    Current,
    /// The user's most recent replaced session, kept alive.
    Replaced,
}

#[derive(Debug, Clone, Copy)]
enum AckSpec {
    Last,
    Behind(u8),
    Beyond(u8),
    Exactly(u8),
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Send {
        user: usize,
        mode: SendMode,
        priority: Priority,
        id: IdSpec,
        size: Size,
    },
    Connect {
        at: Dev,
        resume: ResumeSpec,
        keep_old: bool,
    },
    TryRecv {
        at: Dev,
        which: Which,
        count: u8,
    },
    Drain {
        at: Dev,
        which: Which,
        max: u8,
    },
    Ack {
        at: Dev,
        which: Which,
        ack: AckSpec,
    },
    Close {
        at: Dev,
        which: Which,
        reason: CloseReason,
    },
    Drop {
        at: Dev,
        which: Which,
    },
    SetLimits {
        user: usize,
        limits: Option<UserLimits>,
    },
}

/// A user and one of its devices: indices into [`USERS`] and [`DEVICES`].
#[derive(Clone, Copy, PartialEq, Eq)]
struct Dev {
    user: usize,
    device: usize,
}

impl fmt::Debug for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?}", USERS[self.user], DEVICES[self.device])
    }
}

struct Bytes8<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bytes8<'_> {
    fn next(&mut self) -> Option<u8> {
        let b = self.data.get(self.pos).copied();
        self.pos += 1;
        b
    }

    /// The next byte, 0 past the end (so a truncated operation still decodes).
    fn or0(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }
}

fn policy(bits: u8) -> OverflowPolicy {
    match bits & 3 {
        1 => OverflowPolicy::DropNewest,
        2 => OverflowPolicy::Reject,
        _ => OverflowPolicy::DropOldest,
    }
}

/// Setup bytes:
/// - `b0`: window `1 + bits 0-1`, policy bits 2-3 (0 and 3 DropOldest, 1 DropNewest, 2
///   Reject), manifest ids kept bits 4-5; bits 6-7: 1 or 2 cap a user at that many devices,
///   otherwise 3 devices, and both set also cap the engine at 2 users;
/// - `b1`: max_messages `1 + bits 0-1`, max_bytes `1 + 4 * bits 2-7`;
/// - `b2`: memory budget `16 + 4 * b2`;
/// - `b3`: largest payload `32 + b3`.
///
/// Operations: `k = b & 15` picks the kind, `h = b >> 4` the user and device: 15 is the invalid
/// user (default device), otherwise user `h % 3` and device `h / 3` (0 the default, 1-3 named,
/// 4 the invalid one). Sends and limits ignore the device:
/// - `0..=4` send `p s`: priority `p & 3`, id `p >> 2 & 7` (0-3 none, 4-5 valid, 6 empty, 7
///   too long), mode `p >> 5 & 3` (0-1 confirmed, 2 plain, 3 try); size `s % 65`, or for
///   `s >= 0xF0` the edge `s & 15`;
/// - `5, 6` connect `r`: resume `r & 7` (0-1 none, 2-3 current, 4 saved, 5 wrong epoch, 6 past
///   the end, 7 claim `r >> 4`), bit 3 keeps the replaced session alive;
/// - `7` try_recv `c`: replaced session if `c & 1`, `1 + (c >> 1 & 7)` times;
/// - `8` drain `c`: replaced session if `c & 1`, at most `c >> 1 & 7`;
/// - `9, 10` ack `c`: replaced session if `c & 0x80`; `c & 3`: last received, behind by, beyond
///   by `c >> 2 & 3`, or exactly `c >> 2 & 15`;
/// - `11` close `c`: replaced session if `c & 1`, Abnormal if `c & 2`;
/// - `12` drop `c`: replaced session if `c & 1`;
/// - `13` set_user_limits `c d`: `None` if `c & 3 == 0`, else max_messages `1 + (c >> 2 & 3)`,
///   max_bytes `1 + d`, policy `c >> 4`;
/// - `14, 15` send as 0-4 with priority Low / Critical forced by the kind.
fn decode(data: &[u8]) -> (Setup, Vec<Op>) {
    let mut r = Bytes8 { data, pos: 0 };
    let (b0, b1, b2, b3) = (r.or0(), r.or0(), r.or0(), r.or0());
    let setup = Setup {
        window: 1 + (b0 & 3) as usize,
        limits: UserLimits {
            max_messages: 1 + (b1 & 3) as usize,
            max_bytes: 1 + 4 * (b1 >> 2) as usize,
            overflow: policy(b0 >> 2),
        },
        missed_ids: ((b0 >> 4) & 3) as usize,
        max_users: if b0 & 0xC0 == 0xC0 { 2 } else { 1000 },
        max_devices: match b0 >> 6 {
            1 => 1,
            2 => 2,
            _ => 3,
        },
        budget: 16 + 4 * b2 as u64,
        max_payload: 32 + b3 as usize,
    };
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        let Some(b) = r.next() else { break };
        let at = match b >> 4 {
            15 => Dev {
                user: VALID_USERS,
                device: 0,
            },
            hi => Dev {
                user: (hi % 3) as usize,
                device: (hi / 3) as usize,
            },
        };
        let user = at.user;
        let which = |replaced: bool| {
            if replaced {
                Which::Replaced
            } else {
                Which::Current
            }
        };
        let op = match b & 15 {
            k @ (0..=4 | 14 | 15) => {
                let (p, s) = (r.or0(), r.or0());
                let priority = match k {
                    14 => Priority::Low,
                    15 => Priority::Critical,
                    _ => Priority::ALL[(p & 3) as usize],
                };
                let id = match (p >> 2) & 7 {
                    0..=3 => IdSpec::None,
                    4 | 5 => IdSpec::Valid,
                    6 => IdSpec::Empty,
                    _ => IdSpec::TooLong,
                };
                let mode = match (p >> 5) & 3 {
                    0 | 1 => SendMode::Confirmed,
                    2 => SendMode::Plain,
                    _ => SendMode::Try,
                };
                let size = if s >= 0xF0 {
                    Size::Edge(s & 15)
                } else {
                    Size::Small(s as usize % 65)
                };
                Op::Send {
                    user,
                    mode,
                    priority,
                    id,
                    size,
                }
            }
            5 | 6 => {
                let c = r.or0();
                let resume = match c & 7 {
                    0 | 1 => ResumeSpec::None,
                    2 | 3 => ResumeSpec::Current,
                    4 => ResumeSpec::Saved,
                    5 => ResumeSpec::WrongEpoch(c >> 4),
                    6 => ResumeSpec::PastEnd(c >> 4 & 3),
                    _ => ResumeSpec::Claim(c >> 4),
                };
                Op::Connect {
                    at,
                    resume,
                    keep_old: c & 8 != 0,
                }
            }
            7 => {
                let c = r.or0();
                Op::TryRecv {
                    at,
                    which: which(c & 1 != 0),
                    count: 1 + (c >> 1 & 7),
                }
            }
            8 => {
                let c = r.or0();
                Op::Drain {
                    at,
                    which: which(c & 1 != 0),
                    max: c >> 1 & 7,
                }
            }
            9 | 10 => {
                let c = r.or0();
                let n = c >> 2 & 3;
                let ack = match c & 3 {
                    0 => AckSpec::Last,
                    1 => AckSpec::Behind(n),
                    2 => AckSpec::Beyond(n),
                    _ => AckSpec::Exactly(c >> 2 & 15),
                };
                Op::Ack {
                    at,
                    which: which(c & 0x80 != 0),
                    ack,
                }
            }
            11 => {
                let c = r.or0();
                let reason = if c & 2 != 0 {
                    CloseReason::Abnormal
                } else {
                    CloseReason::Normal
                };
                Op::Close {
                    at,
                    which: which(c & 1 != 0),
                    reason,
                }
            }
            12 => {
                let c = r.or0();
                Op::Drop {
                    at,
                    which: which(c & 1 != 0),
                }
            }
            _ => {
                let (c, d) = (r.or0(), r.or0());
                let limits = (c & 3 != 0).then(|| UserLimits {
                    max_messages: 1 + (c >> 2 & 3) as usize,
                    max_bytes: 1 + d as usize,
                    overflow: policy(c >> 4),
                });
                Op::SetLimits { user, limits }
            }
        };
        ops.push(op);
    }
    (setup, ops)
}

// ---------------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------------

/// One mailbox as the model sees it.
struct ModelBox {
    /// Whose: a device, or `None` while it waits for the user's first device.
    device: Option<usize>,
    /// Critical first; each FIFO.
    bands: [VecDeque<Message>; 4],
    /// Delivered, unacknowledged, with their seqs, in seq order.
    in_flight: VecDeque<(u64, Message)>,
    next_seq: u64,
    /// Random in the engine: learned from the first stats or connect that shows it.
    epoch: Option<Epoch>,
    missed: MissedManifest,
    /// Since when it has been connected or away (ms).
    since: u64,
}

impl ModelBox {
    fn new(device: Option<usize>, now: u64) -> Self {
        Self {
            device,
            bands: Default::default(),
            in_flight: VecDeque::new(),
            next_seq: 1,
            epoch: None,
            missed: MissedManifest::default(),
            since: now,
        }
    }

    fn queued(&self) -> usize {
        self.bands.iter().map(VecDeque::len).sum()
    }

    fn queued_bytes(&self) -> usize {
        self.bands.iter().flatten().map(|m| m.payload().len()).sum()
    }

    fn in_flight_bytes(&self) -> usize {
        self.in_flight.iter().map(|(_, m)| m.payload().len()).sum()
    }

    fn held(&self) -> usize {
        self.queued_bytes() + self.in_flight_bytes()
    }
}

#[derive(Clone, Copy)]
enum Loss {
    Evicted,
    Rejected,
    Shed,
}

/// Records a lost message in the manifest, keeping the ids of the last `keep` that had one.
fn lose(missed: &mut MissedManifest, loss: Loss, message: &Message, keep: usize) {
    match loss {
        Loss::Evicted => missed.evicted += 1,
        Loss::Rejected => missed.rejected += 1,
        Loss::Shed => missed.shed += 1,
    }
    if let Some(id) = message.id() {
        if keep > 0 {
            if missed.ids.len() == keep {
                missed.ids.remove(0);
            }
            missed.ids.push(id.clone());
        }
    }
}

/// A session as the model sees it.
struct ModelSession {
    /// The epoch of the mailbox it attached to (placeholder until learned).
    epoch: Epoch,
    /// Delivered to this session and not yet taken by it.
    outbox: VecDeque<(u64, Message)>,
    last_received: u64,
    acked: u64,
    replaced: bool,
    /// The seq of the last delivery the engine handed to this session, checked to increase.
    last_seen: u64,
}

impl ModelSession {
    fn new(epoch: Epoch, outbox: VecDeque<(u64, Message)>) -> Self {
        Self {
            epoch,
            outbox,
            last_received: 0,
            acked: 0,
            replaced: false,
            last_seen: 0,
        }
    }

    /// Checks that the seqs a session receives strictly increase.
    fn observe(&mut self, at: &At<'_>, got: &Delivery) {
        assert!(
            got.seq() > self.last_seen,
            "{at}: seq {} after {} in one session",
            got.seq(),
            self.last_seen
        );
        self.last_seen = got.seq();
    }

    fn try_recv(&mut self) -> Result<(u64, Message), TryRecvError> {
        match self.outbox.pop_front() {
            Some((seq, m)) => {
                self.last_received = self.last_received.max(seq);
                Ok((seq, m))
            }
            None if self.replaced => Err(TryRecvError::Ended(EndReason::Replaced)),
            None => Err(TryRecvError::Empty),
        }
    }

    fn resume_point(&self) -> ResumePoint {
        ResumePoint {
            epoch: self.epoch,
            last_seq: self.last_received,
        }
    }
}

/// One device's sessions as the model sees them.
#[derive(Default)]
struct ModelDevice {
    current: Option<ModelSession>,
    replaced: Option<ModelSession>,
    /// The resume point of the last session closed or dropped.
    saved: Option<ResumePoint>,
}

#[derive(Default)]
struct ModelUser {
    /// In the order they were made.
    boxes: Vec<ModelBox>,
    /// Evicted devices not connected since, oldest first.
    evicted: VecDeque<usize>,
    devices: [ModelDevice; DEVICES.len()],
    /// The per-user limits override.
    limits: Option<UserLimits>,
}

impl ModelUser {
    /// The index of `device`'s mailbox.
    fn box_of(&self, device: usize) -> Option<usize> {
        self.boxes.iter().position(|b| b.device == Some(device))
    }

    /// The mailbox `mailbox_stats` shows: the default device's, else the only one.
    fn main_box(&self) -> Option<&ModelBox> {
        match self.box_of(0) {
            Some(i) => Some(&self.boxes[i]),
            None if self.boxes.len() == 1 => self.boxes.first(),
            None => None,
        }
    }
}

struct Model {
    setup: Setup,
    users: [ModelUser; VALID_USERS],
    /// (user, id) of every accepted message with an id: the dedup window never rotates
    /// within one input (it lasts two minutes).
    accepted_ids: std::collections::HashSet<(usize, String)>,
    /// The engine's clock (ms): one per step.
    now: u64,
}

/// One outcome for the user from its mailboxes' (the engine's rule, restated).
fn combine(outcomes: &[SendOutcome]) -> SendOutcome {
    let kept = |o: &SendOutcome| matches!(o, SendOutcome::Delivered | SendOutcome::Queued { .. });
    match outcomes {
        [one] => *one,
        _ if outcomes.iter().any(kept) => {
            let mut f = Fanout::default();
            for o in outcomes {
                match o {
                    SendOutcome::Delivered => f.delivered += 1,
                    SendOutcome::Queued { evicted } => {
                        f.queued += 1;
                        f.evicted += evicted;
                    }
                    _ => f.dropped += 1,
                }
            }
            SendOutcome::Fanout(f)
        }
        _ => outcomes
            .iter()
            .copied()
            .find(|o| matches!(o, SendOutcome::Rejected(_)))
            .unwrap_or(SendOutcome::Duplicate),
    }
}

impl Model {
    fn held(&self) -> usize {
        self.users
            .iter()
            .flat_map(|u| &u.boxes)
            .map(ModelBox::held)
            .sum()
    }

    fn user_count(&self) -> usize {
        self.users.iter().filter(|u| !u.boxes.is_empty()).count()
    }

    /// Bytes held (queued and in flight) at or under which a message of `p` is still admitted.
    fn threshold(&self, p: Priority) -> usize {
        let b = self.setup.budget as usize;
        match p {
            Priority::Critical => b,
            Priority::High => b * 95 / 100,
            Priority::Normal => b * 80 / 100,
            Priority::Low => b * 60 / 100,
        }
    }

    fn limits(&self, user: usize) -> UserLimits {
        self.users
            .get(user)
            .and_then(|u| u.limits)
            .unwrap_or(self.setup.limits)
    }

    fn check_user(&self, user: usize) -> Result<(), InvalidInput> {
        if user >= VALID_USERS {
            return Err(InvalidInput::UserIdTooLong {
                len: USERS[user].len(),
                max: MAX_USER_ID_LEN,
            });
        }
        Ok(())
    }

    fn send(&mut self, user: usize, m: &Message) -> Result<SendOutcome, InvalidInput> {
        self.check_user(user)?;
        let len = m.payload().len();
        if len > self.setup.max_payload {
            return Err(InvalidInput::PayloadTooLarge {
                len,
                max: self.setup.max_payload,
            });
        }
        if let Some(id) = m.id() {
            let len = id.as_str().len();
            if len == 0 {
                return Err(InvalidInput::EmptyMessageId);
            }
            if len > MAX_MESSAGE_ID_LEN {
                return Err(InvalidInput::MessageIdTooLong {
                    len,
                    max: MAX_MESSAGE_ID_LEN,
                });
            }
        }
        // The engine's default dedup: an id already accepted for this user is a duplicate,
        // refused once and noted by every mailbox of the user.
        let key = m.id().map(|id| (user, id.as_str().to_owned()));
        if let Some(key) = &key {
            if self.accepted_ids.contains(key) {
                for b in &mut self.users[user].boxes {
                    b.missed.deduplicated += 1;
                }
                return Ok(SendOutcome::Duplicate);
            }
        }
        let keep = self.setup.missed_ids;
        // The budget counts one copy per mailbox.
        let copies = self.users[user].boxes.len().max(1);
        if self.held() + len * copies > self.threshold(m.priority()) {
            for b in &mut self.users[user].boxes {
                lose(&mut b.missed, Loss::Shed, m, keep);
            }
            return Ok(SendOutcome::Rejected(RejectReason::MemoryBudget));
        }
        if self.users[user].boxes.is_empty() {
            if self.user_count() >= self.setup.max_users {
                return Ok(SendOutcome::Rejected(RejectReason::TooManyUsers));
            }
            let now = self.now;
            self.users[user].boxes.push(ModelBox::new(None, now));
        }
        let outcomes: Vec<_> = (0..self.users[user].boxes.len())
            .map(|i| self.admit(user, i, m))
            .collect();
        let outcome = combine(&outcomes);
        let kept = !matches!(outcome, SendOutcome::Rejected(_) | SendOutcome::Duplicate);
        if let (Some(key), true) = (key, kept) {
            self.accepted_ids.insert(key);
        }
        Ok(outcome)
    }

    /// One mailbox takes a valid, non-duplicate send the budget admitted: window, overflow.
    fn admit(&mut self, user: usize, i: usize, m: &Message) -> SendOutcome {
        let len = m.payload().len();
        let keep = self.setup.missed_ids;
        let limits = self.limits(user);
        let window = self.setup.window;
        let u = &mut self.users[user];
        let b = &mut u.boxes[i];
        let session = b.device.and_then(|d| u.devices[d].current.as_mut());
        if let Some(s) = session {
            if b.in_flight.len() < window {
                let seq = b.next_seq;
                b.next_seq += 1;
                b.in_flight.push_back((seq, m.clone()));
                s.outbox.push_back((seq, m.clone()));
                return SendOutcome::Delivered;
            }
        }
        if len > limits.max_bytes {
            lose(&mut b.missed, Loss::Rejected, m, keep);
            return SendOutcome::Rejected(RejectReason::LargerThanMailbox);
        }
        let fits = |count: usize, bytes: usize| {
            count < limits.max_messages && bytes + len <= limits.max_bytes
        };
        let mut evicted = 0;
        if !fits(b.queued(), b.queued_bytes()) {
            match limits.overflow {
                OverflowPolicy::Reject => {
                    lose(&mut b.missed, Loss::Rejected, m, keep);
                    return SendOutcome::Rejected(RejectReason::MailboxFull);
                }
                OverflowPolicy::DropNewest => {
                    lose(&mut b.missed, Loss::Evicted, m, keep);
                    return SendOutcome::Rejected(RejectReason::Dropped);
                }
                OverflowPolicy::DropOldest => {
                    // Candidates: the least urgent band first, oldest first, down to (and
                    // including) the incoming message's own band.
                    let (mut count, mut bytes) = (b.queued(), b.queued_bytes());
                    let mut victims = Vec::new();
                    'search: for band in (m.priority().index()..4).rev() {
                        for i in 0..b.bands[band].len() {
                            if fits(count, bytes) {
                                break 'search;
                            }
                            count -= 1;
                            bytes -= b.bands[band][i].payload().len();
                            victims.push(band);
                        }
                    }
                    if !fits(count, bytes) {
                        lose(&mut b.missed, Loss::Evicted, m, keep);
                        return SendOutcome::Rejected(RejectReason::Dropped);
                    }
                    for band in victims {
                        let victim = b.bands[band].pop_front().expect("counted");
                        lose(&mut b.missed, Loss::Evicted, &victim, keep);
                        evicted += 1;
                    }
                }
            }
        }
        b.bands[m.priority().index()].push_back(m.clone());
        SendOutcome::Queued { evicted }
    }

    /// Moves the most urgent waiting messages of `device`'s mailbox into its session's window.
    fn fill(&mut self, user: usize, device: usize) {
        let window = self.setup.window;
        let u = &mut self.users[user];
        let Some(i) = u.box_of(device) else {
            return;
        };
        let (b, Some(s)) = (&mut u.boxes[i], u.devices[device].current.as_mut()) else {
            return;
        };
        while b.in_flight.len() < window {
            let Some(band) = b.bands.iter_mut().find(|band| !band.is_empty()) else {
                break;
            };
            let m = band.pop_front().expect("non-empty");
            let seq = b.next_seq;
            b.next_seq += 1;
            b.in_flight.push_back((seq, m.clone()));
            s.outbox.push_back((seq, m));
        }
    }

    fn settle(&mut self, user: usize, device: usize, upto: u64) {
        let u = &mut self.users[user];
        if let Some(i) = u.box_of(device) {
            u.boxes[i].in_flight.retain(|(seq, _)| *seq > upto);
        }
    }

    /// Finds or makes the mailbox of `device`: its own, the one waiting for a first device, or
    /// a new one (evicting the device away longest at the limit). Returns its index, whether
    /// it existed and whether the device had been evicted.
    fn place(&mut self, user: usize, device: usize) -> Result<(usize, bool, bool), ConnectError> {
        let (now, max_devices) = (self.now, self.setup.max_devices);
        if self.users[user].boxes.is_empty() {
            if self.user_count() >= self.setup.max_users {
                return Err(ConnectError::TooManyUsers);
            }
            self.users[user]
                .boxes
                .push(ModelBox::new(Some(device), now));
            return Ok((0, false, false));
        }
        let u = &mut self.users[user];
        if let Some(i) = u.box_of(device) {
            return Ok((i, true, false));
        }
        if u.boxes[0].device.is_none() {
            u.boxes[0].device = Some(device);
            return Ok((0, true, false));
        }
        let mut victim = None;
        if u.boxes.len() >= max_devices {
            // Away: no current session. Longest: the earliest `since`, the first of equals.
            let away = (0..u.boxes.len()).filter(|&i| {
                let d = u.boxes[i].device.expect("named devices only");
                u.devices[d].current.is_none()
            });
            victim = away.min_by_key(|&i| u.boxes[i].since);
            if victim.is_none() {
                return Err(ConnectError::TooManyDevices { max: max_devices });
            }
        }
        let was_evicted = match u.evicted.iter().position(|&d| d == device) {
            Some(at) => u.evicted.remove(at).is_some(),
            None => false,
        };
        if let Some(victim) = victim {
            let gone = u.boxes.remove(victim);
            if u.evicted.len() >= max_devices {
                u.evicted.pop_front();
            }
            u.evicted
                .push_back(gone.device.expect("named devices only"));
        }
        u.boxes.push(ModelBox::new(Some(device), now));
        Ok((u.boxes.len() - 1, false, was_evicted))
    }

    /// The expected `ConnectInfo` (with a placeholder epoch if the mailbox is new), whether
    /// the mailbox is new, and the session it replaced (moved out of `current`).
    fn connect(
        &mut self,
        at: Dev,
        resume: Option<ResumePoint>,
    ) -> Result<(ConnectInfo, bool, Option<ModelSession>), ConnectError> {
        let Dev { user, device } = at;
        self.check_user(user)?;
        if DEVICES[device].len() > MAX_DEVICE_ID_LEN {
            return Err(ConnectError::Invalid(InvalidInput::DeviceIdTooLong {
                len: DEVICES[device].len(),
                max: MAX_DEVICE_ID_LEN,
            }));
        }
        let (i, existed, was_evicted) = self.place(user, device)?;
        let now = self.now;
        let u = &mut self.users[user];
        let old = u.devices[device].current.take().map(|mut s| {
            s.replaced = true;
            s
        });
        let b = &mut u.boxes[i];
        b.since = now;
        let recovered = match resume {
            Some(r) => existed && Some(r.epoch) == b.epoch && r.last_seq < b.next_seq,
            None => false,
        };
        if let (true, Some(r)) = (recovered, resume) {
            b.in_flight.retain(|(seq, _)| *seq > r.last_seq);
        }
        let redelivered = b.in_flight.len();
        let epoch = b.epoch.unwrap_or(Epoch(0));
        let mut session = ModelSession::new(epoch, b.in_flight.clone());
        if let (true, Some(r)) = (recovered, resume) {
            // An accepted resume point counts as received and acknowledged.
            session.last_received = r.last_seq;
            session.acked = r.last_seq;
        }
        u.devices[device].current = Some(session);
        self.fill(user, device);
        let b = &mut self.users[user].boxes[i];
        let mut missed = std::mem::take(&mut b.missed);
        missed.reset = was_evicted.then_some(ResetReason::DeviceEvicted);
        let info = ConnectInfo {
            epoch,
            recovered,
            redelivered,
            pending: b.queued(),
            missed,
        };
        Ok((info, !existed, old))
    }

    fn session(&mut self, at: Dev, which: Which) -> Option<&mut ModelSession> {
        let d = self.users.get_mut(at.user)?.devices.get_mut(at.device)?;
        match which {
            Which::Current => d.current.as_mut(),
            Which::Replaced => d.replaced.as_mut(),
        }
    }

    fn ack(&mut self, at: Dev, which: Which, seq: u64) -> Option<Result<(), AckError>> {
        let s = self.session(at, which)?;
        if s.replaced {
            return Some(Err(AckError::Ended));
        }
        if seq > s.last_received {
            return Some(Err(AckError::NotDelivered {
                seq,
                last_received: s.last_received,
            }));
        }
        if seq > s.acked {
            s.acked = seq;
            self.settle(at.user, at.device, seq);
            self.fill(at.user, at.device);
        }
        Some(Ok(()))
    }

    /// The session goes away (closed, dropped): a replaced one changes nothing in the engine,
    /// the attached one detaches (its mailbox is away from now), its in-flight messages stay.
    fn end_session(&mut self, at: Dev, which: Which) {
        let now = self.now;
        let u = &mut self.users[at.user];
        let s = match which {
            Which::Current => {
                if let Some(i) = u.box_of(at.device) {
                    u.boxes[i].since = now;
                }
                u.devices[at.device].current.take()
            }
            Which::Replaced => u.devices[at.device].replaced.take(),
        };
        if let Some(s) = s {
            self.forget(at, &s);
        }
    }

    /// Remembers a session that went away for a later resume.
    fn forget(&mut self, at: Dev, s: &ModelSession) {
        self.users[at.user].devices[at.device].saved = Some(s.resume_point());
    }

    /// Overrides live beside mailboxes (they outlive them) and count against `max_users`.
    fn set_limits(
        &mut self,
        user: usize,
        limits: Option<UserLimits>,
    ) -> Result<(), SetLimitsError> {
        self.check_user(user)?;
        if limits.is_some() && self.users[user].limits.is_none() {
            let overrides = self.users.iter().filter(|u| u.limits.is_some()).count();
            if overrides >= self.setup.max_users {
                return Err(SetLimitsError::TooManyUsers);
            }
        }
        self.users[user].limits = limits;
        Ok(())
    }

    fn stats(&self, u: &ModelUser, b: &ModelBox) -> MailboxStats {
        let device = b.device.map(device_id);
        let connected = b.device.is_some_and(|d| u.devices[d].current.is_some());
        MailboxStats {
            device,
            queued_per_band: [0, 1, 2, 3].map(|i| b.bands[i].len()),
            queued_bytes: b.queued_bytes(),
            in_flight: b.in_flight.len(),
            in_flight_bytes: b.in_flight_bytes(),
            next_seq: b.next_seq,
            epoch: b.epoch.unwrap_or(Epoch(0)),
            connected,
            since_ms: b.since,
            missed: b.missed.total(),
            // Per-mailbox counters are checked by the metrics tests, not modelled here.
            counters: Default::default(),
        }
    }

    /// What `Engine::devices` and `Engine::mailbox_stats` show for `user`.
    fn inspect(&self, user: usize) -> (Vec<MailboxStats>, Option<MailboxStats>) {
        let Some(u) = self.users.get(user) else {
            return (Vec::new(), None);
        };
        let all = u.boxes.iter().map(|b| self.stats(u, b)).collect();
        (all, u.main_box().map(|b| self.stats(u, b)))
    }
}

fn device_id(d: usize) -> DeviceId {
    match d {
        0 => DeviceId::default(),
        d => DeviceId::new(DEVICES[d]).expect("a non-empty name"),
    }
}

// ---------------------------------------------------------------------------------------------
// The harness: the engine and the model side by side
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct RealDevice {
    current: Option<Session>,
    replaced: Option<Session>,
}

struct Harness {
    engine: Engine,
    clock: Clock,
    ids: Vec<UserId>,
    real: Vec<[RealDevice; DEVICES.len()]>,
    model: Model,
    sends: u64,
}

/// Names a step in assertion messages.
struct At<'a>(usize, &'a dyn fmt::Debug);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}: {:?}", self.0, self.1)
    }
}

fn same_delivery(at: &At<'_>, what: &str, got: &Delivery, want: &(u64, Message)) {
    let (seq, m) = want;
    assert_eq!(got.seq(), *seq, "{at}: {what}: seq");
    assert_eq!(
        got.payload(),
        m.payload(),
        "{at}: {what}: payload of seq {seq}"
    );
    assert_eq!(
        got.priority(),
        m.priority(),
        "{at}: {what}: priority of seq {seq}"
    );
    assert_eq!(got.message().id(), m.id(), "{at}: {what}: id of seq {seq}");
}

/// Every (user, device) pair that can have a session.
fn every_device() -> impl Iterator<Item = Dev> {
    (0..VALID_USERS).flat_map(|user| (0..DEVICES.len()).map(move |device| Dev { user, device }))
}

impl Harness {
    fn new(setup: Setup) -> Self {
        let clock = Clock::manual();
        let engine = Engine::builder()
            .shards(1)
            .inbox_capacity(64)
            .window(setup.window)
            .user_limits(setup.limits)
            .missed_ids(setup.missed_ids)
            .max_users(setup.max_users)
            .max_devices_per_user(setup.max_devices)
            .memory_budget_bytes(setup.budget)
            .max_payload_bytes(setup.max_payload)
            .max_user_id_len(MAX_USER_ID_LEN)
            .max_message_id_len(MAX_MESSAGE_ID_LEN)
            .max_device_id_len(MAX_DEVICE_ID_LEN)
            .clock(clock.clone())
            .build()
            .expect("fuzz settings are valid");
        Self {
            engine,
            clock,
            ids: USERS
                .iter()
                .map(|u| UserId::new(u).expect("non-empty"))
                .collect(),
            real: (0..VALID_USERS).map(|_| Default::default()).collect(),
            model: Model {
                setup,
                users: Default::default(),
                accepted_ids: Default::default(),
                now: 0,
            },
            sends: 0,
        }
    }

    fn real_session(&mut self, at: Dev, which: Which) -> Option<&mut Session> {
        let d = self.real.get_mut(at.user)?.get_mut(at.device)?;
        match which {
            Which::Current => d.current.as_mut(),
            Which::Replaced => d.replaced.as_mut(),
        }
    }

    /// Sizes at the edges of the limits that apply to `user`.
    fn edge_size(&self, user: usize, k: u8) -> usize {
        let s = &self.model.setup;
        let max_bytes = self.model.limits(user).max_bytes;
        let room = (s.budget as usize).saturating_sub(self.model.held());
        let low = self.model.threshold(Priority::Low);
        let normal = self.model.threshold(Priority::Normal);
        let high = self.model.threshold(Priority::High);
        let edges = [
            s.max_payload,
            s.max_payload + 1,
            max_bytes.saturating_sub(1),
            max_bytes,
            max_bytes + 1,
            low,
            low + 1,
            normal,
            normal + 1,
            high,
            high + 1,
            s.budget as usize,
            s.budget as usize + 1,
            room,
            room + 1,
            0,
        ];
        edges[k as usize & 15]
    }

    fn message(&mut self, user: usize, priority: Priority, id: IdSpec, size: Size) -> Message {
        self.sends += 1;
        let n = self.sends;
        let len = match size {
            Size::Small(len) => len,
            Size::Edge(k) => self.edge_size(user, k),
        };
        let payload: Vec<u8> = (0..len)
            .map(|i| (n >> (8 * (i % 8))) as u8 ^ (i / 8) as u8)
            .collect();
        let m = Message::new(Bytes::from(payload)).with_priority(priority);
        match id {
            IdSpec::None => m,
            IdSpec::Valid => m.with_id(format!("{}", n % 8)), // small, so ids repeat and dedup runs
            IdSpec::Empty => m.with_id(""),
            IdSpec::TooLong => m.with_id(format!("{:04}", n % 10_000)),
        }
    }

    fn run(&mut self, step: usize, op: &Op) {
        let at = At(step, op);
        match *op {
            Op::Send {
                user,
                mode,
                priority,
                id,
                size,
            } => {
                let m = self.message(user, priority, id, size);
                let want = self.model.send(user, &m);
                let uid = &self.ids[user];
                match mode {
                    SendMode::Confirmed => {
                        match (block_on(self.engine.send_confirmed(uid, m.clone())), want) {
                            (Ok(got), Ok(want)) => assert_eq!(got, want, "{at}: outcome"),
                            (Err(SendError::Invalid { error, message }), Err(want)) => {
                                assert_eq!(error, want, "{at}: refusal");
                                assert_eq!(message.payload(), m.payload(), "{at}: handed back");
                            }
                            (got, want) => panic!("{at}: got {got:?}, want {want:?}"),
                        }
                    }
                    SendMode::Plain => match (block_on(self.engine.send(uid, m.clone())), want) {
                        (Ok(()), Ok(_)) => {}
                        (Err(SendError::Invalid { error, message }), Err(want)) => {
                            assert_eq!(error, want, "{at}: refusal");
                            assert_eq!(message.payload(), m.payload(), "{at}: handed back");
                        }
                        (got, want) => panic!("{at}: got {got:?}, want {want:?}"),
                    },
                    SendMode::Try => match (self.engine.try_send(uid, m.clone()), want) {
                        (Ok(()), Ok(_)) => {}
                        (Err(TrySendError::Invalid { error, message }), Err(want)) => {
                            assert_eq!(error, want, "{at}: refusal");
                            assert_eq!(message.payload(), m.payload(), "{at}: handed back");
                        }
                        (got, want) => panic!("{at}: got {got:?}, want {want:?}"),
                    },
                }
            }
            Op::Connect {
                at: dev,
                resume,
                keep_old,
            } => self.connect(&at, dev, resume, keep_old),
            Op::TryRecv {
                at: dev,
                which,
                count,
            } => {
                for i in 0..count {
                    let Some(got) = self.real_session(dev, which).map(Session::try_recv) else {
                        return;
                    };
                    let s = self.model.session(dev, which).expect("sessions match");
                    match (got, s.try_recv()) {
                        (Ok(got), Ok(want)) => {
                            same_delivery(&at, &format!("try_recv {i}"), &got, &want);
                            s.observe(&at, &got);
                        }
                        (Err(got), Err(want)) => assert_eq!(got, want, "{at}: try_recv {i}"),
                        (got, want) => panic!("{at}: try_recv {i}: got {got:?}, want {want:?}"),
                    }
                }
            }
            Op::Drain {
                at: dev,
                which,
                max,
            } => {
                let mut got = Vec::new();
                let Some(n) = self
                    .real_session(dev, which)
                    .map(|s| s.drain(&mut got, max as usize))
                else {
                    return;
                };
                let s = self.model.session(dev, which).expect("sessions match");
                let ready = s.outbox.len().min(max as usize);
                assert_eq!(n, ready, "{at}: drained");
                assert_eq!(n, got.len(), "{at}: drain's count");
                let mut want = Vec::new();
                for _ in 0..n {
                    want.push(s.try_recv().expect("counted"));
                }
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    same_delivery(&at, &format!("drain {i}"), g, w);
                    s.observe(&at, g);
                }
            }
            Op::Ack {
                at: dev,
                which,
                ack,
            } => {
                let Some(s) = self.model.session(dev, which) else {
                    return;
                };
                let last = s.last_received;
                let seq = match ack {
                    AckSpec::Last => last,
                    AckSpec::Behind(n) => last.saturating_sub(1 + n as u64),
                    AckSpec::Beyond(n) => last + 1 + n as u64,
                    AckSpec::Exactly(n) => n as u64,
                };
                let want = self.model.ack(dev, which, seq).expect("session exists");
                let got = self
                    .real_session(dev, which)
                    .expect("sessions match")
                    .ack(seq);
                assert_eq!(got, want, "{at}: ack({seq})");
            }
            Op::Close {
                at: dev,
                which,
                reason,
            } => {
                if let Some(s) = self.take_session(dev, which) {
                    s.close(reason);
                }
            }
            Op::Drop { at: dev, which } => {
                drop(self.take_session(dev, which));
            }
            Op::SetLimits { user, limits } => {
                let want = self.model.set_limits(user, limits);
                let got = block_on(self.engine.set_user_limits(&self.ids[user], limits));
                assert_eq!(got, want, "{at}: set_user_limits");
            }
        }
    }

    fn take_session(&mut self, at: Dev, which: Which) -> Option<Session> {
        self.real_session(at, which)?;
        self.model.end_session(at, which);
        let d = &mut self.real[at.user][at.device];
        match which {
            Which::Current => d.current.take(),
            Which::Replaced => d.replaced.take(),
        }
    }

    fn connect(&mut self, at: &At<'_>, dev: Dev, resume: ResumeSpec, keep_old: bool) {
        // The mailbox this device would attach to: its own, or the one waiting for a first
        // device.
        let known = self.model.users.get(dev.user).and_then(|u| {
            let i = u
                .box_of(dev.device)
                .or_else(|| (u.boxes.len() == 1 && u.boxes[0].device.is_none()).then_some(0))?;
            let b = &u.boxes[i];
            Some((b.epoch.unwrap_or(Epoch(0)), b.next_seq))
        });
        let (epoch, next_seq) = known.unwrap_or((Epoch(0), 1));
        let saved = |model: &Model| {
            model
                .users
                .get(dev.user)
                .and_then(|u| u.devices.get(dev.device)?.saved)
        };
        let resume = match resume {
            ResumeSpec::None => None,
            ResumeSpec::Current => self
                .real
                .get(dev.user)
                .and_then(|u| {
                    let d = &u[dev.device];
                    d.current
                        .as_ref()
                        .or(d.replaced.as_ref())
                        .map(Session::resume_point)
                })
                .or_else(|| saved(&self.model)),
            ResumeSpec::Saved => saved(&self.model),
            ResumeSpec::WrongEpoch(k) => Some(ResumePoint {
                epoch: Epoch(epoch.0 ^ (1 + k as u64)),
                last_seq: k as u64 & 7,
            }),
            ResumeSpec::PastEnd(k) => Some(ResumePoint {
                epoch,
                last_seq: next_seq + k as u64,
            }),
            ResumeSpec::Claim(k) => Some(ResumePoint {
                epoch,
                last_seq: k as u64,
            }),
        };
        let want = self.model.connect(dev, resume);
        let device = device_id(dev.device);
        let got = block_on(
            self.engine
                .connect_device(&self.ids[dev.user], &device, resume),
        );
        match (got, want) {
            (Ok(session), Ok((mut want, new, old))) => {
                let u = &mut self.model.users[dev.user];
                if new {
                    let i = u.box_of(dev.device).expect("placed");
                    u.boxes[i].epoch = Some(session.info().epoch);
                    want.epoch = session.info().epoch;
                    let s = u.devices[dev.device].current.as_mut().expect("attached");
                    s.epoch = session.info().epoch;
                }
                assert_eq!(session.info(), &want, "{at}: connect info");
                assert_eq!(session.device(), &device, "{at}: device");
                let real_old = self.real[dev.user][dev.device].current.replace(session);
                assert_eq!(real_old.is_some(), old.is_some(), "{at}: replaced session");
                if let (Some(real_old), Some(old)) = (real_old, old) {
                    if keep_old {
                        // The replaced session kept before, if any, goes away (ignored by the
                        // engine: it is no longer attached).
                        if self.real[dev.user][dev.device].replaced.take().is_some() {
                            self.model.end_session(dev, Which::Replaced);
                        }
                        self.real[dev.user][dev.device].replaced = Some(real_old);
                        self.model.users[dev.user].devices[dev.device].replaced = Some(old);
                    } else {
                        drop(real_old);
                        self.model.forget(dev, &old);
                    }
                }
            }
            (Err(got), Err(want)) => assert_eq!(got, want, "{at}: connect refused"),
            (got, want) => panic!(
                "{at}: connect: got {:?}, want {:?}",
                got.map(|s| s.info().clone()),
                want.map(|w| w.0)
            ),
        }
    }

    /// `Engine::barrier` followed by `devices` and `mailbox_stats` of every user in [`USERS`],
    /// issued together and awaited together: one round trip to the worker instead of nine.
    /// The barrier is polled first, so its command is in the (FIFO, single-shard, never full)
    /// inbox before the inspections and they see everything it settled.
    fn settle_and_inspect(&self) -> Vec<(Vec<MailboxStats>, Option<MailboxStats>)> {
        type Seen = (Vec<MailboxStats>, Option<MailboxStats>);
        type Pending<'a> = Pin<Box<dyn Future<Output = Seen> + 'a>>;
        let engine = &self.engine;
        let mut futures: Vec<Pending<'_>> = vec![Box::pin(async {
            engine.barrier().await;
            (Vec::new(), None)
        })];
        futures.extend(self.ids.iter().map(|user| {
            Box::pin(async move {
                let (all, main) = (engine.devices(user), engine.mailbox_stats(user));
                let (mut all, mut main) = (Box::pin(all), Box::pin(main));
                let (mut got_all, mut got_main) = (None, None);
                std::future::poll_fn(|cx| {
                    if got_all.is_none() {
                        if let Poll::Ready(v) = all.as_mut().poll(cx) {
                            got_all = Some(v);
                        }
                    }
                    if got_main.is_none() {
                        if let Poll::Ready(v) = main.as_mut().poll(cx) {
                            got_main = Some(v);
                        }
                    }
                    match (got_all.is_some(), got_main.is_some()) {
                        (true, true) => Poll::Ready(()),
                        _ => Poll::Pending,
                    }
                })
                .await;
                (got_all.expect("ready"), got_main.expect("ready"))
            }) as Pending<'_>
        }));
        let mut done: Vec<Option<Seen>> = vec![None; futures.len()];
        block_on(std::future::poll_fn(|cx| {
            let mut pending = false;
            for (future, done) in futures.iter_mut().zip(done.iter_mut()) {
                if done.is_none() {
                    match future.as_mut().poll(cx) {
                        Poll::Ready(seen) => *done = Some(seen),
                        Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        }));
        done.into_iter()
            .skip(1)
            .map(|d| d.expect("ready"))
            .collect()
    }

    /// After every step: settle asynchronous work, then compare every mailbox, the memory in
    /// use and every session's view. Then the clock moves on by 1 ms, and a barrier makes the
    /// shard read it before the next step's operations.
    fn check(&mut self, step: usize, op: &Op) {
        let at = At(step, op);
        let mut seen = self.settle_and_inspect();
        for (user, (all, main)) in seen.drain(..VALID_USERS).enumerate() {
            let u = &mut self.model.users[user];
            assert_eq!(
                all.len(),
                u.boxes.len(),
                "{at}: mailboxes of {}",
                USERS[user]
            );
            for (b, got) in u.boxes.iter_mut().zip(&all) {
                let epoch = *b.epoch.get_or_insert(got.epoch);
                assert_eq!(got.epoch, epoch, "{at}: epoch of {}", USERS[user]);
            }
            let forget_counters = |mut s: MailboxStats| {
                s.counters = Default::default();
                s
            };
            let all: Vec<_> = all.into_iter().map(forget_counters).collect();
            let (want_all, want_main) = self.model.inspect(user);
            assert_eq!(all, want_all, "{at}: devices of {}", USERS[user]);
            let main = main.map(forget_counters);
            assert_eq!(main, want_main, "{at}: mailbox_stats of {}", USERS[user]);
        }
        assert_eq!(
            seen,
            [(Vec::new(), None)],
            "{at}: the invalid user has no mailbox"
        );
        let used = self.engine.memory_used();
        assert_eq!(used, self.model.held() as u64, "{at}: memory_used");
        assert!(used <= self.engine.memory_budget(), "{at}: over budget");
        for dev in every_device() {
            for which in [Which::Current, Which::Replaced] {
                let real = self
                    .real_session(dev, which)
                    .map(|s| (s.last_received(), s.end_reason(), s.resume_point()));
                let model = self.model.session(dev, which).map(|s| {
                    let end = s.replaced.then_some(EndReason::Replaced);
                    (s.last_received, end, s.epoch)
                });
                match (real, model) {
                    (None, None) => {}
                    (Some((last, end, resume)), Some((want_last, want_end, epoch))) => {
                        assert_eq!(last, want_last, "{at}: last_received of {dev:?}");
                        assert_eq!(end, want_end, "{at}: end_reason of {dev:?}");
                        assert_eq!(resume.last_seq, last, "{at}: resume point of {dev:?}");
                        assert_eq!(resume.epoch, epoch, "{at}: resume point's epoch");
                    }
                    (real, model) => panic!(
                        "{at}: sessions of {dev:?}: engine side {}, model side {}",
                        real.is_some(),
                        model.is_some()
                    ),
                }
            }
        }
        self.clock.advance(Duration::from_millis(1));
        self.model.now += 1;
        block_on(self.engine.barrier());
    }

    /// Takes everything still waiting in every session, in order, and compares it.
    fn finish(mut self, steps: usize) {
        let at = At(steps, &"the final drain");
        for dev in every_device() {
            for which in [Which::Current, Which::Replaced] {
                let Some(real) = self.real_session(dev, which).map(|s| {
                    let mut all = Vec::new();
                    while let Ok(d) = s.try_recv() {
                        all.push(d);
                    }
                    all
                }) else {
                    continue;
                };
                let s = self.model.session(dev, which).expect("sessions match");
                let want: Vec<_> = s.outbox.drain(..).collect();
                assert_eq!(real.len(), want.len(), "{at}: left over for {dev:?}");
                for (i, (g, w)) in real.iter().zip(&want).enumerate() {
                    same_delivery(&at, &format!("left over {i}"), g, w);
                    s.observe(&at, g);
                }
            }
        }
        self.real.clear();
        drop(self.engine);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed in the fuzz corpus passes.
    #[test]
    fn corpus_replays() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/engine_ops");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("the seed corpus exists")
            .map(|e| e.expect("readable").path())
            .collect();
        files.sort();
        for path in &files {
            let data = std::fs::read(path).expect("readable seed");
            engine_ops(&data);
        }
        assert!(files.len() >= 10, "only {} seeds", files.len());
    }

    /// A fixed-seed batch of random inputs, so the model check runs under `cargo test` too.
    #[test]
    fn random_inputs_match_the_model() {
        let mut rng = fastrand::Rng::with_seed(0x2545_F491_4F6C_DD1D);
        let mut next = move || rng.u64(..);
        for _ in 0..300 {
            let len = 4 + (next() % 400) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let run = std::panic::catch_unwind(|| engine_ops(&data));
            if let Err(panic) = run {
                eprintln!("failing input {data:02x?}\n{}", describe(&data));
                std::panic::resume_unwind(panic);
            }
        }
    }

    /// Replays one input file and prints its decoded operations:
    /// `TETHER_FUZZ_INPUT=path cargo test --lib fuzz::tests::replay_file -- --ignored --nocapture`.
    #[test]
    #[ignore = "replays the file named by TETHER_FUZZ_INPUT"]
    fn replay_file() {
        let path = std::env::var("TETHER_FUZZ_INPUT").expect("TETHER_FUZZ_INPUT is set");
        let data = std::fs::read(path).expect("readable input");
        println!("{}", describe(&data));
        engine_ops(&data);
    }
}
