//! Model-based fuzzing of the engine, after tokio's `fuzz/` targets: [`engine_ops`] decodes
//! bytes into a bounded sequence of operations on a one-shard engine with tiny limits, runs
//! them, and checks every observable outcome against a plain reference model.
//!
//! One file on purpose: the decoder, the reference model and the harness that runs both side by
//! side are read together, top to bottom (test code; never in a build users get).
//!
//! The model is deliberately naive (vectors and loops, no bitmaps, no byte counters kept in
//! step): per user four band queues, the in-flight list with seqs, `next_seq`, the epoch once
//! observed, the per-user limits and the missed manifest; per session what is still waiting in
//! its outbox and what it received. After every step the harness calls `Engine::barrier` (acks
//! and closes travel asynchronously) and compares each user's `mailbox_stats` and the engine's
//! `memory_used` with the model. Each send's outcome, each connect's `ConnectInfo`, each ack's
//! result and every delivery a session receives (seq, payload, priority, id) are compared as
//! they happen.
//!
//! Input layout: 4 setup bytes (window, policy, manifest ids, user cap; per-user caps; memory
//! budget; largest payload), then operations of 2 or 3 bytes each, at most [`MAX_OPS`]. The
//! first byte of an operation picks its kind (low nibble) and its user (high nibble). See
//! [`decode`].
//!
//! `fuzz/fuzz_targets/engine_ops.rs` is one line calling [`engine_ops`]; the seed corpus in
//! `fuzz/corpus/engine_ops/` and a fixed-seed batch of random inputs run under `cargo test`.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;

use crate::engine::block_on;
use crate::{
    AckError, CloseReason, ConnectError, ConnectInfo, Delivery, EndReason, Engine, Epoch,
    InvalidInput, MailboxStats, Message, MissedManifest, OverflowPolicy, Priority, RejectReason,
    ResumePoint, SendError, SendOutcome, Session, SetLimitsError, TryRecvError, TrySendError,
    UserId, UserLimits,
};

/// Most operations decoded from one input.
pub const MAX_OPS: usize = 256;

/// The user ids; the last one is longer than [`MAX_USER_ID_LEN`] and always refused.
const USERS: [&str; 4] = ["a", "bb", "ccc", "dddd"];
/// How many of [`USERS`] are valid.
const VALID_USERS: usize = 3;
const MAX_USER_ID_LEN: usize = 3;
const MAX_MESSAGE_ID_LEN: usize = 3;

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
        user: usize,
        resume: ResumeSpec,
        keep_old: bool,
    },
    TryRecv {
        user: usize,
        which: Which,
        count: u8,
    },
    Drain {
        user: usize,
        which: Which,
        max: u8,
    },
    Ack {
        user: usize,
        which: Which,
        ack: AckSpec,
    },
    Close {
        user: usize,
        which: Which,
        reason: CloseReason,
    },
    Drop {
        user: usize,
        which: Which,
    },
    SetLimits {
        user: usize,
        limits: Option<UserLimits>,
    },
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
///   Reject), manifest ids kept bits 4-5, bits 6-7 both set cap the engine at 2 mailboxes;
/// - `b1`: max_messages `1 + bits 0-1`, max_bytes `1 + 4 * bits 2-7`;
/// - `b2`: memory budget `16 + 4 * b2`;
/// - `b3`: largest payload `32 + b3`.
///
/// Operations: `k = b & 15` picks the kind, `b >> 4` the user (15: the invalid one, else `% 3`):
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
        budget: 16 + 4 * b2 as u64,
        max_payload: 32 + b3 as usize,
    };
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        let Some(b) = r.next() else { break };
        let user = match b >> 4 {
            15 => VALID_USERS,
            hi => (hi % 3) as usize,
        };
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
                    user,
                    resume,
                    keep_old: c & 8 != 0,
                }
            }
            7 => {
                let c = r.or0();
                Op::TryRecv {
                    user,
                    which: which(c & 1 != 0),
                    count: 1 + (c >> 1 & 7),
                }
            }
            8 => {
                let c = r.or0();
                Op::Drain {
                    user,
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
                    user,
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
                    user,
                    which: which(c & 1 != 0),
                    reason,
                }
            }
            12 => {
                let c = r.or0();
                Op::Drop {
                    user,
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

/// One user's mailbox as the model sees it.
struct ModelBox {
    /// Critical first; each FIFO.
    bands: [VecDeque<Message>; 4],
    /// Delivered, unacknowledged, with their seqs, in seq order.
    in_flight: VecDeque<(u64, Message)>,
    next_seq: u64,
    /// Random in the engine: learned from the first stats or connect that shows it.
    epoch: Option<Epoch>,
    missed: MissedManifest,
}

impl ModelBox {
    fn new() -> Self {
        Self {
            bands: Default::default(),
            in_flight: VecDeque::new(),
            next_seq: 1,
            epoch: None,
            missed: MissedManifest::default(),
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
    /// Delivered to this session and not yet taken by it.
    outbox: VecDeque<(u64, Message)>,
    last_received: u64,
    acked: u64,
    replaced: bool,
    /// The seq of the last delivery the engine handed to this session, checked to increase.
    last_seen: u64,
}

impl ModelSession {
    fn new(outbox: VecDeque<(u64, Message)>) -> Self {
        Self {
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
}

#[derive(Default)]
struct ModelUser {
    mailbox: Option<ModelBox>,
    current: Option<ModelSession>,
    replaced: Option<ModelSession>,
    /// The resume point of the last session closed or dropped.
    saved: Option<ResumePoint>,
    /// The per-user limits override.
    limits: Option<UserLimits>,
}

struct Model {
    setup: Setup,
    users: [ModelUser; VALID_USERS],
    /// (user, id) of every accepted message with an id: the dedup window never rotates
    /// within one input (it lasts two minutes).
    accepted_ids: std::collections::HashSet<(usize, String)>,
}

impl Model {
    fn held(&self) -> usize {
        self.users
            .iter()
            .filter_map(|u| u.mailbox.as_ref())
            .map(ModelBox::held)
            .sum()
    }

    fn mailboxes(&self) -> usize {
        self.users.iter().filter(|u| u.mailbox.is_some()).count()
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

    /// Creates the user's mailbox if it has none and the engine has room; false if it has none.
    fn ensure_mailbox(&mut self, user: usize) -> bool {
        if self.users[user].mailbox.is_none() {
            if self.mailboxes() >= self.setup.max_users {
                return false;
            }
            self.users[user].mailbox = Some(ModelBox::new());
        }
        true
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
        // The engine's default dedup: an id already accepted for this user is a duplicate.
        let key = m.id().map(|id| (user, id.as_str().to_owned()));
        if let Some(key) = &key {
            if self.accepted_ids.contains(key) {
                if let Some(b) = self.users[user].mailbox.as_mut() {
                    b.missed.deduplicated += 1;
                }
                return Ok(SendOutcome::Duplicate);
            }
        }
        let outcome = self.admit(user, m)?;
        if let (Some(key), SendOutcome::Delivered | SendOutcome::Queued { .. }) = (key, outcome) {
            self.accepted_ids.insert(key);
        }
        Ok(outcome)
    }

    /// A valid, non-duplicate send: budget, mailbox, window, overflow.
    fn admit(&mut self, user: usize, m: &Message) -> Result<SendOutcome, InvalidInput> {
        let len = m.payload().len();
        let keep = self.setup.missed_ids;
        if self.held() + len > self.threshold(m.priority()) {
            if let Some(b) = self.users[user].mailbox.as_mut() {
                lose(&mut b.missed, Loss::Shed, m, keep);
            }
            return Ok(SendOutcome::Rejected(RejectReason::MemoryBudget));
        }
        if !self.ensure_mailbox(user) {
            return Ok(SendOutcome::Rejected(RejectReason::TooManyUsers));
        }
        let limits = self.limits(user);
        let window = self.setup.window;
        let u = &mut self.users[user];
        let b = u.mailbox.as_mut().expect("ensured");
        if let Some(s) = u.current.as_mut() {
            if b.in_flight.len() < window {
                let seq = b.next_seq;
                b.next_seq += 1;
                b.in_flight.push_back((seq, m.clone()));
                s.outbox.push_back((seq, m.clone()));
                return Ok(SendOutcome::Delivered);
            }
        }
        if len > limits.max_bytes {
            lose(&mut b.missed, Loss::Rejected, m, keep);
            return Ok(SendOutcome::Rejected(RejectReason::LargerThanMailbox));
        }
        let fits = |count: usize, bytes: usize| {
            count < limits.max_messages && bytes + len <= limits.max_bytes
        };
        let mut evicted = 0;
        if !fits(b.queued(), b.queued_bytes()) {
            match limits.overflow {
                OverflowPolicy::Reject => {
                    lose(&mut b.missed, Loss::Rejected, m, keep);
                    return Ok(SendOutcome::Rejected(RejectReason::MailboxFull));
                }
                OverflowPolicy::DropNewest => {
                    lose(&mut b.missed, Loss::Evicted, m, keep);
                    return Ok(SendOutcome::Rejected(RejectReason::Dropped));
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
                        return Ok(SendOutcome::Rejected(RejectReason::Dropped));
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
        Ok(SendOutcome::Queued { evicted })
    }

    /// Moves the most urgent waiting messages into the attached session's window.
    fn fill(&mut self, user: usize) {
        let window = self.setup.window;
        let u = &mut self.users[user];
        let (Some(b), Some(s)) = (u.mailbox.as_mut(), u.current.as_mut()) else {
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

    fn settle(&mut self, user: usize, upto: u64) {
        if let Some(b) = self.users[user].mailbox.as_mut() {
            b.in_flight.retain(|(seq, _)| *seq > upto);
        }
    }

    /// The expected `ConnectInfo` (with a placeholder epoch if the mailbox is new) and whether
    /// the mailbox is new. The previously attached session moves to `replaced`.
    fn connect(
        &mut self,
        user: usize,
        resume: Option<ResumePoint>,
    ) -> Result<(ConnectInfo, bool, Option<ModelSession>), ConnectError> {
        self.check_user(user)?;
        let existed = self.users[user].mailbox.is_some();
        if !self.ensure_mailbox(user) {
            return Err(ConnectError::TooManyUsers);
        }
        let old = self.users[user].current.take().map(|mut s| {
            s.replaced = true;
            s
        });
        let b = self.users[user].mailbox.as_ref().expect("ensured");
        let recovered = match resume {
            Some(r) => existed && Some(r.epoch) == b.epoch && r.last_seq < b.next_seq,
            None => false,
        };
        if recovered {
            self.settle(user, resume.expect("recovered").last_seq);
        }
        let b = self.users[user].mailbox.as_ref().expect("ensured");
        let redelivered = b.in_flight.len();
        let mut session = ModelSession::new(b.in_flight.clone());
        if let (true, Some(r)) = (recovered, resume) {
            // An accepted resume point counts as received and acknowledged.
            session.last_received = r.last_seq;
            session.acked = r.last_seq;
        }
        self.users[user].current = Some(session);
        self.fill(user);
        let b = self.users[user].mailbox.as_mut().expect("ensured");
        let info = ConnectInfo {
            epoch: b.epoch.unwrap_or(Epoch(0)),
            recovered,
            redelivered,
            pending: b.queued(),
            missed: std::mem::take(&mut b.missed),
        };
        Ok((info, !existed, old))
    }

    fn session(&mut self, user: usize, which: Which) -> Option<&mut ModelSession> {
        let u = self.users.get_mut(user)?;
        match which {
            Which::Current => u.current.as_mut(),
            Which::Replaced => u.replaced.as_mut(),
        }
    }

    fn ack(&mut self, user: usize, which: Which, seq: u64) -> Option<Result<(), AckError>> {
        let s = self.session(user, which)?;
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
            self.settle(user, seq);
            self.fill(user);
        }
        Some(Ok(()))
    }

    fn resume_point(&self, user: usize, s: &ModelSession) -> Option<ResumePoint> {
        let epoch = self.users[user].mailbox.as_ref()?.epoch?;
        Some(ResumePoint {
            epoch,
            last_seq: s.last_received,
        })
    }

    /// The session goes away (closed, dropped): a replaced one changes nothing in the engine,
    /// the attached one detaches, its in-flight messages stay.
    fn end_session(&mut self, user: usize, which: Which) {
        let u = &mut self.users[user];
        let s = match which {
            Which::Current => u.current.take(),
            Which::Replaced => u.replaced.take(),
        };
        if let Some(s) = s {
            self.forget(user, &s);
        }
    }

    /// Remembers a session that went away for a later resume.
    fn forget(&mut self, user: usize, s: &ModelSession) {
        self.users[user].saved = self.resume_point(user, s);
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

    fn stats(&self, user: usize) -> Option<MailboxStats> {
        let u = &self.users[user];
        let b = u.mailbox.as_ref()?;
        Some(MailboxStats {
            device: None,
            since_ms: 0,
            queued_per_band: [0, 1, 2, 3].map(|i| b.bands[i].len()),
            queued_bytes: b.queued_bytes(),
            in_flight: b.in_flight.len(),
            in_flight_bytes: b.in_flight_bytes(),
            next_seq: b.next_seq,
            epoch: b.epoch.unwrap_or(Epoch(0)),
            connected: u.current.is_some(),
            missed: b.missed.total(),
            // Per-user counters are checked by the metrics tests, not modelled here.
            counters: Default::default(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The harness: the engine and the model side by side
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct RealUser {
    current: Option<Session>,
    replaced: Option<Session>,
}

struct Harness {
    engine: Engine,
    ids: Vec<UserId>,
    real: Vec<RealUser>,
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

impl Harness {
    fn new(setup: Setup) -> Self {
        let engine = Engine::builder()
            .shards(1)
            .inbox_capacity(64)
            .window(setup.window)
            .user_limits(setup.limits)
            .missed_ids(setup.missed_ids)
            .max_users(setup.max_users)
            .memory_budget_bytes(setup.budget)
            .max_payload_bytes(setup.max_payload)
            .max_user_id_len(MAX_USER_ID_LEN)
            .max_message_id_len(MAX_MESSAGE_ID_LEN)
            .build()
            .expect("fuzz settings are valid");
        Self {
            engine,
            ids: USERS
                .iter()
                .map(|u| UserId::new(u).expect("non-empty"))
                .collect(),
            real: (0..VALID_USERS).map(|_| RealUser::default()).collect(),
            model: Model {
                setup,
                users: Default::default(),
                accepted_ids: Default::default(),
            },
            sends: 0,
        }
    }

    fn real_session(&mut self, user: usize, which: Which) -> Option<&mut Session> {
        let u = self.real.get_mut(user)?;
        match which {
            Which::Current => u.current.as_mut(),
            Which::Replaced => u.replaced.as_mut(),
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
                user,
                resume,
                keep_old,
            } => self.connect(&at, user, resume, keep_old),
            Op::TryRecv { user, which, count } => {
                for i in 0..count {
                    let Some(got) = self.real_session(user, which).map(Session::try_recv) else {
                        return;
                    };
                    let s = self.model.session(user, which).expect("sessions match");
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
            Op::Drain { user, which, max } => {
                let mut got = Vec::new();
                let Some(n) = self
                    .real_session(user, which)
                    .map(|s| s.drain(&mut got, max as usize))
                else {
                    return;
                };
                let s = self.model.session(user, which).expect("sessions match");
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
            Op::Ack { user, which, ack } => {
                let Some(s) = self.model.session(user, which) else {
                    return;
                };
                let last = s.last_received;
                let seq = match ack {
                    AckSpec::Last => last,
                    AckSpec::Behind(n) => last.saturating_sub(1 + n as u64),
                    AckSpec::Beyond(n) => last + 1 + n as u64,
                    AckSpec::Exactly(n) => n as u64,
                };
                let want = self.model.ack(user, which, seq).expect("session exists");
                let got = self
                    .real_session(user, which)
                    .expect("sessions match")
                    .ack(seq);
                assert_eq!(got, want, "{at}: ack({seq})");
            }
            Op::Close {
                user,
                which,
                reason,
            } => {
                if let Some(s) = self.take_session(user, which) {
                    s.close(reason);
                }
            }
            Op::Drop { user, which } => {
                drop(self.take_session(user, which));
            }
            Op::SetLimits { user, limits } => {
                let want = self.model.set_limits(user, limits);
                let got = block_on(self.engine.set_user_limits(&self.ids[user], limits));
                assert_eq!(got, want, "{at}: set_user_limits");
            }
        }
    }

    fn take_session(&mut self, user: usize, which: Which) -> Option<Session> {
        let s = self.real_session(user, which).is_some();
        if !s {
            return None;
        }
        self.model.end_session(user, which);
        let u = &mut self.real[user];
        match which {
            Which::Current => u.current.take(),
            Which::Replaced => u.replaced.take(),
        }
    }

    fn connect(&mut self, at: &At<'_>, user: usize, resume: ResumeSpec, keep_old: bool) {
        let known = self
            .model
            .users
            .get(user)
            .and_then(|u| u.mailbox.as_ref())
            .map(|b| (b.epoch.unwrap_or(Epoch(0)), b.next_seq));
        let (epoch, next_seq) = known.unwrap_or((Epoch(0), 1));
        let resume = match resume {
            ResumeSpec::None => None,
            ResumeSpec::Current => self.real.get(user).and_then(|u| {
                u.current
                    .as_ref()
                    .or(u.replaced.as_ref())
                    .map(Session::resume_point)
                    .or(self.model.users[user].saved)
            }),
            ResumeSpec::Saved => self.model.users.get(user).and_then(|u| u.saved),
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
        let want = self.model.connect(user, resume);
        let got = block_on(self.engine.connect(&self.ids[user], resume));
        match (got, want) {
            (Ok(session), Ok((mut want, new, old))) => {
                if new {
                    let b = self.model.users[user].mailbox.as_mut().expect("created");
                    b.epoch = Some(session.info().epoch);
                    want.epoch = session.info().epoch;
                }
                assert_eq!(session.info(), &want, "{at}: connect info");
                let real_old = self.real[user].current.replace(session);
                assert_eq!(real_old.is_some(), old.is_some(), "{at}: replaced session");
                if let (Some(real_old), Some(old)) = (real_old, old) {
                    if keep_old {
                        // The replaced session kept before, if any, goes away (ignored by the
                        // engine: it is no longer attached).
                        if self.real[user].replaced.take().is_some() {
                            self.model.end_session(user, Which::Replaced);
                        }
                        self.real[user].replaced = Some(real_old);
                        self.model.users[user].replaced = Some(old);
                    } else {
                        drop(real_old);
                        self.model.forget(user, &old);
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

    /// `Engine::barrier` followed by `mailbox_stats` of every user in [`USERS`], issued together
    /// and awaited together: one round trip to the worker instead of five. The barrier is
    /// polled first, so its command is in the (FIFO, single-shard, never full) inbox before the
    /// inspections and they see everything it settled.
    fn settle_and_inspect(&self) -> Vec<Option<MailboxStats>> {
        type Pending<'a> = Pin<Box<dyn Future<Output = Option<MailboxStats>> + 'a>>;
        let engine = &self.engine;
        let mut futures: Vec<Pending<'_>> = vec![Box::pin(async {
            engine.barrier().await;
            None
        })];
        futures.extend(
            self.ids
                .iter()
                .map(|user| Box::pin(engine.mailbox_stats(user)) as Pending<'_>),
        );
        let mut done: Vec<Option<Option<MailboxStats>>> = vec![None; futures.len()];
        block_on(std::future::poll_fn(|cx| {
            let mut pending = false;
            for (future, done) in futures.iter_mut().zip(done.iter_mut()) {
                if done.is_none() {
                    match future.as_mut().poll(cx) {
                        Poll::Ready(stats) => *done = Some(stats),
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
    /// use and every session's view.
    fn check(&mut self, step: usize, op: &Op) {
        let at = At(step, op);
        let mut stats = self.settle_and_inspect();
        for (user, mut got) in stats.drain(..VALID_USERS).enumerate() {
            if let Some(g) = got.as_mut() {
                g.counters = Default::default();
                g.device = None;
                g.since_ms = 0;
            }
            if let (Some(got), Some(b)) = (&got, self.model.users[user].mailbox.as_mut()) {
                let epoch = *b.epoch.get_or_insert(got.epoch);
                assert_eq!(got.epoch, epoch, "{at}: epoch of {}", USERS[user]);
            }
            let want = self.model.stats(user);
            assert_eq!(got, want, "{at}: mailbox_stats of {}", USERS[user]);
        }
        assert_eq!(stats, [None], "{at}: the invalid user has no mailbox");
        let used = self.engine.memory_used();
        assert_eq!(used, self.model.held() as u64, "{at}: memory_used");
        assert!(used <= self.engine.memory_budget(), "{at}: over budget");
        for (user, name) in USERS.iter().enumerate().take(VALID_USERS) {
            for which in [Which::Current, Which::Replaced] {
                let real = self
                    .real_session(user, which)
                    .map(|s| (s.last_received(), s.end_reason(), s.resume_point()));
                let model = self.model.session(user, which).map(|s| {
                    let end = s.replaced.then_some(EndReason::Replaced);
                    (s.last_received, end)
                });
                match (real, model) {
                    (None, None) => {}
                    (Some((last, end, resume)), Some((want_last, want_end))) => {
                        assert_eq!(last, want_last, "{at}: last_received");
                        assert_eq!(end, want_end, "{at}: end_reason");
                        assert_eq!(resume.last_seq, last, "{at}: resume point");
                        assert_eq!(
                            Some(resume.epoch),
                            self.model.users[user]
                                .mailbox
                                .as_ref()
                                .and_then(|b| b.epoch),
                            "{at}: resume point's epoch"
                        );
                    }
                    (real, model) => panic!(
                        "{at}: sessions of {name}: engine side {}, model side {}",
                        real.is_some(),
                        model.is_some()
                    ),
                }
            }
        }
    }

    /// Takes everything still waiting in every session, in order, and compares it.
    fn finish(mut self, steps: usize) {
        let at = At(steps, &"the final drain");
        for (user, name) in USERS.iter().enumerate().take(VALID_USERS) {
            for which in [Which::Current, Which::Replaced] {
                let Some(real) = self.real_session(user, which).map(|s| {
                    let mut all = Vec::new();
                    while let Ok(d) = s.try_recv() {
                        all.push(d);
                    }
                    all
                }) else {
                    continue;
                };
                let s = self.model.session(user, which).expect("sessions match");
                let want: Vec<_> = s.outbox.drain(..).collect();
                assert_eq!(real.len(), want.len(), "{at}: left over for {name}");
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
