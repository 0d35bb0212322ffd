//! A shard's worker: the one thread that owns the mailboxes of the users hashed to its shard,
//! with their timing wheel and duplicate filter.
//!
//! Every rule of the engine (priority order, overflow, seq and acks, the window, TTLs, away
//! retention, dedup, the memory budget) is plain sequential code on data this thread alone
//! owns. One pass: read the clock once, fire due timers, take a batch of commands, apply every
//! pending signal, wake each session that got deliveries once. With nothing to do the worker
//! parks until work arrives or the next timer is due.

use std::collections::{HashMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use smallvec::SmallVec;
use tokio::sync::oneshot;

use crate::config::{Config, UserLimits};
use crate::error::{ConnectError, SetLimitsError};
use crate::loom::Arc;
use crate::message::{AbortReason, DeviceId, Message, Prehashed, UserId};
use crate::metrics::ShardRecorder;
use crate::outcome::{RejectReason, SendOutcome};
use crate::session::{Epoch, ResetReason};
use crate::shard::budget::BudgetView;
use crate::shard::dedup::DedupWindow;
use crate::shard::link::{SessionShared, END_SHUTDOWN};
use crate::shard::mailbox::{Ctx, Dropped, Live, Mailbox, Retention, Timer, WakeList};
use crate::shard::streams::StreamLimits;
use crate::shard::{Command, ConnectRequest, ShardShared};
use crate::shutdown::{ShutdownOptions, ShutdownReport};
use crate::sync::mpsc;
use crate::time::Clock;
use crate::time::Wheel;

/// Commands a worker takes from its inbox before it looks at timers and signals again.
const BATCH: usize = 256;

/// The longest a worker sleeps with no timer due; a safety net, not a timer.
const IDLE_PARK: Duration = Duration::from_secs(1);

/// A per-send or per-command list with one item per mailbox of a user: on the stack for up
/// to 8 devices (the engine's default limit is 10).
type PerMailbox<T> = SmallVec<[T; 8]>;

/// One mailbox in the shard's slab: whose it is and the mailbox.
struct Slot {
    user: UserId,
    /// `None` for the mailbox that holds what was sent before the user's first device
    /// connected; that device takes it over.
    device: Option<DeviceId>,
    mailbox: Mailbox,
}

/// One user of the shard: its mailboxes in the order they were made (one per device, or the
/// one waiting for the first device), and the devices evicted to make room for others.
struct UserEntry {
    /// Slab slots; inline for the usual one or two devices.
    slots: SmallVec<[u32; 2]>,
    /// Names of devices evicted since the entry was made, so that their next connect can say
    /// why their mailbox is gone: at most `max_devices_per_user`, oldest forgotten first, all
    /// forgotten with the entry. Boxed: most users never have one.
    evicted: Option<Box<Evicted>>,
}

/// The names of a user's evicted devices, oldest first.
#[derive(Default)]
struct Evicted(VecDeque<DeviceId>);

/// Where a connecting device's mailbox is.
struct Placed {
    slot: u32,
    /// Whether the mailbox existed before this connect.
    existed: bool,
    /// Why the device's previous mailbox is gone, if it was evicted.
    reset: Option<ResetReason>,
}

/// The shard's mailboxes: a slab (so timers can name a mailbox by its slot) and an index by
/// user of each user's mailboxes, created on first use up to a maximum number of users.
struct Mailboxes {
    users: HashMap<UserId, UserEntry, Prehashed>,
    /// Per-user limit overrides; they outlive mailboxes.
    overrides: HashMap<UserId, UserLimits, Prehashed>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Most users.
    max: usize,
    max_devices: usize,
    /// Epochs need to differ between mailbox lives, not be secret.
    rng: fastrand::Rng,
}

impl Mailboxes {
    /// The user's mailboxes (a copy of the list: the caller goes on to change them).
    fn slots_of(&self, user: &UserId) -> PerMailbox<u32> {
        self.users
            .get(user)
            .map_or_else(SmallVec::new, |e| e.slots.iter().copied().collect())
    }

    fn slot(&self, slot: u32) -> Option<&Slot> {
        self.slots.get(slot as usize)?.as_ref()
    }

    fn at(&mut self, slot: u32) -> Option<&mut Mailbox> {
        self.slots
            .get_mut(slot as usize)
            .and_then(|s| s.as_mut().map(|s| &mut s.mailbox))
    }

    /// The mailbox of `user`'s `device`, if it has one.
    fn device_slot(&self, user: &UserId, device: &DeviceId) -> Option<u32> {
        let entry = self.users.get(user)?;
        entry.slots.iter().copied().find(|&s| {
            self.slot(s)
                .is_some_and(|s| s.device.as_ref() == Some(device))
        })
    }

    /// The mailbox `mailbox_stats` and `stream_status` mean: the default device's, else the
    /// user's only one (also the one waiting for a first device).
    fn main_slot(&self, user: &UserId) -> Option<u32> {
        let entry = self.users.get(user)?;
        let default = entry.slots.iter().copied().find(|&s| {
            self.slot(s)
                .is_some_and(|s| s.device.as_ref().is_some_and(DeviceId::is_default))
        });
        match (default, entry.slots.as_slice()) {
            (Some(slot), _) => Some(slot),
            (None, [only]) => Some(*only),
            _ => None,
        }
    }

    /// The mailbox of `user`'s device that has been away longest; `None` if every device is
    /// connected. Of equals, the device made first.
    fn longest_away(&self, user: &UserId) -> Option<u32> {
        let entry = self.users.get(user)?;
        entry
            .slots
            .iter()
            .filter_map(|&s| Some((s, &self.slot(s)?.mailbox)))
            .filter(|(_, m)| !m.is_live())
            .min_by_key(|(_, m)| m.since())
            .map(|(s, _)| s)
    }

    /// Forgets that `user`'s `device` was evicted; returns whether it was.
    fn forget_evicted(&mut self, user: &UserId, device: &DeviceId) -> bool {
        let Some(names) = self.users.get_mut(user).and_then(|e| e.evicted.as_mut()) else {
            return false;
        };
        match names.0.iter().position(|n| n == device) {
            Some(at) => names.0.remove(at).is_some(),
            None => false,
        }
    }

    /// A new mailbox with a fresh epoch in a free slot (not yet listed in any entry).
    fn alloc(
        &mut self,
        user: &UserId,
        device: Option<DeviceId>,
        now: u64,
        retention: &Retention,
    ) -> u32 {
        let mut mailbox = Mailbox::new(Epoch(self.rng.u64(..)), now, retention);
        mailbox.set_limits(self.overrides.get(user).copied());
        let slot = Slot {
            user: user.clone(),
            device,
            mailbox,
        };
        match self.free.pop() {
            Some(free) => {
                self.slots[free as usize] = Some(slot);
                free
            }
            None => {
                self.slots.push(Some(slot));
                u32::try_from(self.slots.len() - 1).expect("more than 4G mailboxes in a shard")
            }
        }
    }

    /// A first mailbox for a user who has none, unless the shard holds its maximum of users.
    fn create_user(
        &mut self,
        user: &UserId,
        device: Option<DeviceId>,
        now: u64,
        retention: &Retention,
    ) -> Option<u32> {
        debug_assert!(!self.users.contains_key(user));
        if self.users.len() >= self.max {
            return None;
        }
        let slot = self.alloc(user, device, now, retention);
        let entry = UserEntry {
            slots: smallvec::smallvec![slot],
            evicted: None,
        };
        self.users.insert(user.clone(), entry);
        Some(slot)
    }

    /// Takes a mailbox out of the slab and out of its user's entry, which goes with its last
    /// mailbox. Returns the mailbox and whether its user went too.
    fn remove(&mut self, slot: u32) -> Option<(Mailbox, bool)> {
        let Slot { user, mailbox, .. } = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        let mut user_gone = false;
        if let Some(entry) = self.users.get_mut(&user) {
            entry.slots.retain(|s| *s != slot);
            if entry.slots.is_empty() {
                self.users.remove(&user);
                user_gone = true;
            }
        }
        if self.users.is_empty() {
            // Give the slab's memory back when a shard empties out.
            self.slots = Vec::new();
            self.free = Vec::new();
        }
        Some((mailbox, user_gone))
    }

    /// The `k` users with the deepest backlog on any one of their mailboxes (more queued
    /// bytes first among equals), deepest first, as (user, queued messages, queued bytes);
    /// empty backlogs are skipped. A user's devices hold copies of the same messages, so the
    /// deepest device is the user's backlog, not their sum. One pass with a min-heap of at
    /// most `k` entries that names users by slot, so only the `k` winners' ids are cloned:
    /// O(n log k) time, O(k) memory.
    fn deepest(&self, k: usize) -> Vec<(UserId, usize, usize)> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        if k == 0 {
            return Vec::new();
        }
        let mut heap: BinaryHeap<Reverse<(usize, usize, u32)>> = BinaryHeap::new();
        for entry in self.users.values() {
            let deepest = entry
                .slots
                .iter()
                .filter_map(|&s| {
                    let m = &self.slot(s)?.mailbox;
                    Some((m.queued_len(), m.queued_bytes(), s))
                })
                .max();
            let Some(key @ (queued, _, _)) = deepest else {
                continue;
            };
            if queued == 0 {
                continue;
            }
            if heap.len() < k {
                heap.push(Reverse(key));
            } else if heap.peek().is_some_and(|Reverse(least)| key > *least) {
                heap.pop();
                heap.push(Reverse(key));
            }
        }
        let mut top: Vec<_> = heap.into_iter().map(|Reverse(key)| key).collect();
        top.sort_unstable_by(|a, b| b.cmp(a));
        top.into_iter()
            .filter_map(|(queued, bytes, slot)| {
                Some((self.slot(slot)?.user.clone(), queued, bytes))
            })
            .collect()
    }

    fn iter(&self) -> impl Iterator<Item = &Mailbox> {
        self.slots.iter().flatten().map(|s| &s.mailbox)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Mailbox> {
        self.slots.iter_mut().flatten().map(|s| &mut s.mailbox)
    }
}

/// Where the worker is in its life.
enum Phase {
    Running,
    /// Shutting down, delivering to live sessions until their backlogs are empty or the
    /// deadline passes.
    Flushing {
        deadline: Instant,
        options: ShutdownOptions,
        reply: oneshot::Sender<ShutdownReport>,
        delivered_before: u64,
    },
    /// Shut down: every command that still arrives is refused.
    Refusing,
}

/// The worker: the single writer of its shard's mailboxes.
pub(crate) struct Worker {
    shard: Arc<ShardShared>,
    inbox: mpsc::Receiver<Command>,
    config: Arc<Config>,
    clock: Clock,
    now: u64,
    now_us: u64,
    rec: ShardRecorder,
    /// When histograms were last published (µs).
    histograms_at: u64,
    phase: Phase,
    /// Commands refused since the shutdown began.
    refused: u64,
    retention: Retention,
    default_ttl_ms: [Option<u64>; 4],
    mailboxes: Mailboxes,
    wheel: Wheel<Timer>,
    fired: Vec<Timer>,
    dedup: DedupWindow,
    budget: BudgetView,
    wake: WakeList,
    stream_limits: StreamLimits,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Worker {
    pub(crate) fn new(
        shard: Arc<ShardShared>,
        inbox: mpsc::Receiver<Command>,
        config: Arc<Config>,
        budget: BudgetView,
        seed: u64,
    ) -> Self {
        let mailboxes = Mailboxes {
            users: HashMap::default(),
            overrides: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            max: config.max_users.div_ceil(config.shards),
            max_devices: config.max_devices_per_user,
            rng: fastrand::Rng::with_seed(seed),
        };
        let retention = Retention {
            after_normal_ms: ms(config.keep_after_normal),
            after_abnormal_ms: ms(config.keep_after_abnormal),
            idle_ms: ms(config.idle_timeout),
        };
        let dedup = DedupWindow::new(
            config.dedup,
            ms(config.dedup_window),
            config.dedup_max_entries,
        );
        let clock = config.clock.clone();
        let stream_limits = StreamLimits {
            timeout_ms: ms(config.stream_timeout),
            max_per_user: config.max_streams_per_user,
            reorder_window: config.stream_reorder_window,
        };
        Self {
            shard,
            inbox,
            default_ttl_ms: config.default_ttl.map(|t| t.map(ms)),
            now: clock.now_ms(),
            now_us: clock.now_us(),
            rec: ShardRecorder::new(config.latency_metrics),
            histograms_at: 0,
            phase: Phase::Running,
            refused: 0,
            clock,
            retention,
            mailboxes,
            wheel: Wheel::new(),
            fired: Vec::new(),
            dedup,
            budget,
            wake: WakeList::new(),
            stream_limits,
            config,
        }
    }

    pub(crate) fn run(mut self) {
        let served = panic::catch_unwind(AssertUnwindSafe(|| self.serve()));
        if served.is_err() {
            // A bug took this shard down mid-pass: its state cannot be trusted. End its
            // sessions and refuse whatever still arrives, so no caller waits forever: confirmed
            // sends see `Unconfirmed`, connects `ShuttingDown`. (The panic itself was printed.)
            self.phase = Phase::Refusing;
            for m in self.mailboxes.iter_mut() {
                let _ = panic::catch_unwind(AssertUnwindSafe(|| m.abandon_session()));
            }
            while self.refuse_all() {}
        }
    }

    fn serve(&mut self) {
        loop {
            if matches!(self.phase, Phase::Refusing) {
                if !self.refuse_all() {
                    break;
                }
                continue;
            }
            let did = self.pass();
            if matches!(self.phase, Phase::Flushing { .. }) && self.flush_done() {
                self.finish_shutdown();
                continue;
            }
            if did > 0 {
                continue;
            }
            if self.shard.is_stopping() {
                break;
            }
            let mut timeout = match self.wheel.next_deadline() {
                // A manual clock moves only by hand, and `barrier` wakes the worker then.
                Some(at) if !self.clock.is_manual() => {
                    Duration::from_millis(at.saturating_sub(self.now)).min(IDLE_PARK)
                }
                _ => IDLE_PARK,
            };
            if let Phase::Flushing { deadline, .. } = &self.phase {
                timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
            }
            self.shard.park(timeout, &self.inbox);
        }
        self.finish();
    }

    /// After shutdown: refuses every command that still arrives, until the engine is dropped.
    /// Returns false once it should exit.
    fn refuse_all(&mut self) -> bool {
        let mut did = 0;
        while let Some(cmd) = self.inbox.pop() {
            // Dropping a command drops its reply channel: the sender sees an error.
            drop(cmd);
            self.refused += 1;
            did += 1;
        }
        // Sessions left open may still ack or close; nothing changes now.
        for node in self.shard.take_signals() {
            drop(node);
        }
        if did > 0 {
            self.shard.space_freed();
            return true;
        }
        if self.shard.is_stopping() {
            return false;
        }
        self.shard.park(IDLE_PARK, &self.inbox);
        true
    }

    fn begin_shutdown(&mut self, options: ShutdownOptions, reply: oneshot::Sender<ShutdownReport>) {
        let deadline = Instant::now() + options.flush.unwrap_or(Duration::ZERO);
        let c = &self.rec.counters;
        self.phase = Phase::Flushing {
            deadline,
            options,
            reply,
            delivered_before: c.delivered + c.redelivered,
        };
        if options.flush.is_none() {
            self.finish_shutdown();
        }
    }

    /// Whether the flush is over: no live session has a backlog, or the deadline passed.
    fn flush_done(&self) -> bool {
        let Phase::Flushing { deadline, .. } = &self.phase else {
            return false;
        };
        Instant::now() >= *deadline
            || self
                .mailboxes
                .iter()
                .all(|m| !m.is_live() || m.queued_len() == 0)
    }

    fn finish_shutdown(&mut self) {
        let Phase::Flushing {
            options,
            reply,
            delivered_before,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Refusing)
        else {
            return;
        };
        let mut report = ShutdownReport {
            workers_stopped: 1,
            dropped: self.refused,
            ..ShutdownReport::default()
        };
        let c = &self.rec.counters;
        report.flushed = c.delivered + c.redelivered - delivered_before;
        for m in self.mailboxes.iter_mut() {
            if options.close_sessions && m.end_session(END_SHUTDOWN, &mut self.rec) {
                report.sessions_closed += 1;
            }
            report.kept += m.held_messages() as u64;
        }
        self.publish_with(true);
        let _ = reply.send(report);
    }

    /// One pass: timers due by now, a batch of commands, every pending signal, then wake-ups.
    /// Returns how much work it did.
    fn pass(&mut self) -> usize {
        self.read_clock();
        self.budget.refresh();
        self.dedup.tick(self.now);
        let mut did = self.fire_timers();
        let mut taken = 0;
        while taken < BATCH {
            let Some(cmd) = self.inbox.pop() else { break };
            if taken == 0 && self.rec.latency {
                // The clock again, once per batch: the inbox wait ends now, not when the
                // pass began (which may be before the command was even sent).
                self.now_us = self.clock.now_us().max(self.now_us);
            }
            // An ack or close issued before this command was sent is in the signal list now
            // (the pop synchronises with the push): apply it first, so a send after a close
            // queues instead of going to the closed session, and an ack before a reconnect
            // is not lost. One load when the list is empty.
            if self.shard.has_signals() {
                self.drain_signals();
            }
            self.handle(cmd);
            taken += 1;
        }
        if taken > 0 {
            self.shard.space_freed();
        }
        did += taken + self.drain_signals();
        self.wake.flush();
        self.publish();
        did
    }

    fn read_clock(&mut self) {
        self.now_us = self.clock.now_us();
        self.now = self.now_us / 1000;
    }

    /// Publishes usage and metrics for readers on other threads.
    fn publish(&mut self) {
        self.publish_with(false);
    }

    /// Publishes usage and metrics; histograms at most once per millisecond unless `force`.
    fn publish_with(&mut self, force: bool) {
        self.budget.publish();
        self.rec.gauges.held_bytes = self.budget.local();
        let histograms = force || self.now_us.saturating_sub(self.histograms_at) >= 1000;
        if histograms {
            self.histograms_at = self.now_us;
        }
        self.shard.metrics.publish(&mut self.rec, histograms);
    }

    /// The engine is being dropped: processes what is left in the inbox and ends every
    /// session (unless a shutdown already did).
    fn finish(&mut self) {
        if matches!(self.phase, Phase::Running) {
            while self.pass() > 0 {}
        }
        for m in self.mailboxes.iter_mut() {
            m.end_session(END_SHUTDOWN, &mut self.rec);
        }
        self.publish_with(true);
    }

    fn fire_timers(&mut self) -> usize {
        self.wheel.advance(self.now, &mut self.fired);
        let fired = std::mem::take(&mut self.fired);
        let n = fired.len();
        for timer in &fired {
            match *timer {
                Timer::Queued { mailbox: slot, .. } | Timer::InFlight { mailbox: slot, .. } => {
                    let timer = *timer;
                    self.with_mailbox(slot, |m, cx, r| {
                        m.expire(timer, cx);
                        // An expiry may leave an away mailbox idle, or free the window.
                        m.schedule_removal(r, cx);
                        m.fill_window(cx);
                    });
                }
                Timer::Stream {
                    mailbox: slot,
                    stream,
                } => {
                    self.with_mailbox(slot, |m, cx, r| {
                        m.stream_timer_fired(stream, cx);
                        m.schedule_removal(r, cx);
                        m.fill_window(cx);
                    });
                }
                Timer::Trial { mailbox: slot } => {
                    self.with_mailbox(slot, |m, cx, _| m.fill_window(cx));
                }
                Timer::Remove { mailbox: slot } => {
                    if let Some((mut m, user_gone)) = self.mailboxes.remove(slot) {
                        m.removal_fired();
                        let Dropped { bytes, .. } = m.dismantle(&mut self.wheel, &mut self.rec);
                        self.budget.release(bytes);
                        self.rec.counters.mailboxes_removed += 1;
                        self.rec.gauges.mailboxes -= 1;
                        self.rec.gauges.users -= u64::from(user_gone);
                    }
                }
            }
        }
        self.fired = fired;
        self.fired.clear();
        n
    }

    /// Runs `f` on the mailbox in `slot` with a context, keeping the budget in step with what
    /// the mailbox holds.
    fn with_mailbox<R>(
        &mut self,
        slot: u32,
        f: impl FnOnce(&mut Mailbox, &mut Ctx<'_>, &Retention) -> R,
    ) -> Option<R> {
        let mailbox = self.mailboxes.at(slot)?;
        let mut cx = Ctx {
            wheel: &mut self.wheel,
            wake: &mut self.wake,
            rec: &mut self.rec,
            now_us: self.now_us,
            now: self.now,
            slot,
            window: self.config.window,
            missed_ids: self.config.missed_ids,
            streams: self.stream_limits,
        };
        let before = mailbox.held_bytes();
        let result = f(mailbox, &mut cx, &self.retention);
        self.budget.adjust(before, mailbox.held_bytes());
        Some(result)
    }

    fn drain_signals(&mut self) -> usize {
        let mut n = 0;
        for node in self.shard.take_signals() {
            self.on_signal(&node);
            n += 1;
        }
        n
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Send {
                user,
                message,
                reply,
            } => {
                if let (true, Some(sent)) = (self.rec.latency, message.sent_us()) {
                    self.rec.inbox_wait.record(self.now_us.saturating_sub(sent));
                }
                let outcome = self.accept(&user, message);
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            Command::Connect(req) => self.connect(*req),
            Command::SetLimits {
                user,
                limits,
                reply,
            } => {
                let _ = reply.send(self.set_limits(&user, limits));
            }
            Command::Barrier(reply) => {
                // Signals pushed before this command was pushed are in the list now.
                self.drain_signals();
                // Everything due by the time the barrier was issued fires before it returns,
                // even if this pass read the clock earlier (a manual clock moved meanwhile).
                self.read_clock();
                self.fire_timers();
                self.wake.flush();
                self.publish_with(true);
                let _ = reply.send(());
            }
            Command::Shutdown { options, reply } => self.begin_shutdown(options, reply),
            #[cfg(all(test, not(loom)))]
            Command::Panic => panic!("a bug in a shard worker (test)"),
            Command::AbortStream {
                user,
                stream,
                reason,
                reply,
            } => {
                // Each device mailbox runs its own copy of the stream.
                let mut aborted = false;
                for slot in self.mailboxes.slots_of(&user) {
                    let reason = AbortReason::Producer(reason.clone());
                    let open = self.with_mailbox(slot, |m, cx, r| {
                        let open = m.abort_stream(stream.clone(), reason, cx);
                        m.schedule_removal(r, cx);
                        open
                    });
                    aborted |= open.unwrap_or(false);
                }
                let _ = reply.send(aborted);
            }
            Command::StreamStatus {
                user,
                stream,
                reply,
            } => {
                let (now, keep_ms) = (self.now, self.stream_limits.timeout_ms);
                let mut status = None;
                for slot in self.mailboxes.slots_of(&user) {
                    status = self
                        .mailboxes
                        .at(slot)
                        .and_then(|m| m.stream_status(&stream, now, keep_ms));
                    if status.is_some() {
                        break;
                    }
                }
                let _ = reply.send(status);
            }
            Command::Deepest { k, reply } => {
                let _ = reply.send(self.mailboxes.deepest(k));
            }
            Command::Inspect { user, reply } => {
                let stats = self
                    .mailboxes
                    .main_slot(&user)
                    .and_then(|slot| self.mailboxes.slot(slot))
                    .map(|s| s.mailbox.stats(s.device.clone()));
                let _ = reply.send(stats);
            }
            Command::Devices { user, reply } => {
                let stats = self
                    .mailboxes
                    .slots_of(&user)
                    .into_iter()
                    .filter_map(|slot| self.mailboxes.slot(slot))
                    .map(|s| s.mailbox.stats(s.device.clone()))
                    .collect();
                let _ = reply.send(stats);
            }
        }
    }

    fn set_limits(
        &mut self,
        user: &UserId,
        limits: Option<UserLimits>,
    ) -> Result<(), SetLimitsError> {
        let overrides = &mut self.mailboxes.overrides;
        match limits {
            Some(l) => {
                if !overrides.contains_key(user) && overrides.len() >= self.mailboxes.max {
                    return Err(SetLimitsError::TooManyUsers);
                }
                overrides.insert(user.clone(), l);
            }
            None => {
                overrides.remove(user);
            }
        }
        for slot in self.mailboxes.slots_of(user) {
            if let Some(m) = self.mailboxes.at(slot) {
                m.set_limits(limits);
            }
        }
        Ok(())
    }

    /// A send: dedup and the memory budget once for the user, then every mailbox the user
    /// has (one per device) admits the message under its own caps and policy. The payload is
    /// shared, never copied.
    fn accept(&mut self, user: &UserId, message: Message) -> SendOutcome {
        self.rec.counters.sent += 1;
        let fingerprint = self.dedup.fingerprint(user, &message);
        let mut slots = self.mailboxes.slots_of(user);
        if let Some(fp) = fingerprint {
            if self.dedup.seen(fp) {
                self.rec.counters.duplicates += 1;
                for &slot in &slots {
                    self.with_mailbox(slot, |m, _, _| m.record_duplicate());
                }
                return SendOutcome::Duplicate;
            }
        }
        // Per mailbox, in the user's order: `None` while it may still take the message.
        let mut outcomes: PerMailbox<Option<SendOutcome>> = slots.iter().map(|_| None).collect();
        let mut budget_priority = message.priority();
        if message.is_stream_part() && !slots.is_empty() {
            // A stream part is judged by its stream, not by itself: a duplicate or refused
            // part is answered as such whatever the memory, and the budget uses the
            // stream's priority (from part 0), not the part's own, which is ignored. Each
            // device mailbox runs its own copy of the stream.
            let mut known = None;
            for (outcome, &slot) in outcomes.iter_mut().zip(&slots) {
                let admitted = self.with_mailbox(slot, |m, cx, r| {
                    let admitted = m.budget_priority_of_part(&message, cx);
                    if admitted.is_err() && !m.is_live() {
                        m.schedule_removal(r, cx);
                    }
                    admitted
                });
                match admitted.expect("the user's slots exist") {
                    Ok(priority) => {
                        known.get_or_insert(priority);
                    }
                    Err(refused) => *outcome = Some(refused),
                }
            }
            match known {
                Some(priority) => budget_priority = priority,
                None => return combine(&outcomes),
            }
        }
        // Each mailbox that keeps the message counts its bytes: conservative, since the
        // payload itself is shared.
        let takers = outcomes.iter().filter(|o| o.is_none()).count().max(1);
        if !self
            .budget
            .admits(budget_priority, message.cost().saturating_mul(takers))
        {
            // Recorded on existing mailboxes only: under memory pressure, creating mailboxes
            // to note losses would make it worse.
            if slots.is_empty() {
                self.rec.counters.shed += 1;
            }
            for (outcome, &slot) in outcomes.iter_mut().zip(&slots) {
                if outcome.is_none() {
                    self.with_mailbox(slot, |m, cx, r| {
                        m.shed_part_or_message(&message, cx);
                        if !m.is_live() {
                            m.schedule_removal(r, cx);
                        }
                    });
                    *outcome = Some(SendOutcome::Rejected(RejectReason::MemoryBudget));
                }
            }
            return match slots.is_empty() {
                true => SendOutcome::Rejected(RejectReason::MemoryBudget),
                false => combine(&outcomes),
            };
        }
        if slots.is_empty() {
            // Before any device: one mailbox, which the first device to connect takes over.
            let Some(slot) = self
                .mailboxes
                .create_user(user, None, self.now, &self.retention)
            else {
                self.rec.counters.rejected += 1;
                return SendOutcome::Rejected(RejectReason::TooManyUsers);
            };
            self.rec.gauges.mailboxes += 1;
            self.rec.gauges.users += 1;
            slots.push(slot);
            outcomes.push(None);
        }
        let ttl = message
            .ttl()
            .map(ms)
            .or(self.default_ttl_ms[message.priority().index()]);
        let expires_at = ttl.map(|t| self.now.saturating_add(t));
        let defaults = self.config.user_limits;
        let last = outcomes.iter().rposition(Option::is_none);
        let mut message = Some(message);
        for (i, &slot) in slots.iter().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            // The last taker gets the message itself, the others a clone that shares the
            // payload (a reference count, never a copy of the bytes).
            let copy = match Some(i) == last {
                true => message.take().expect("taken once, by the last"),
                false => message.clone().expect("kept until the last"),
            };
            let outcome = self.with_mailbox(slot, |m, cx, r| {
                let outcome = m.accept(copy, expires_at, &defaults, cx);
                if !m.is_live() {
                    m.schedule_removal(r, cx);
                }
                outcome
            });
            outcomes[i] = Some(outcome.expect("the user's slots exist"));
        }
        let outcome = combine(&outcomes);
        if let (Some(fp), true) = (fingerprint, outcome.is_kept()) {
            self.dedup.record(fp);
        }
        outcome
    }

    fn connect(&mut self, req: ConnectRequest) {
        if req.shared.close_requested().is_some() {
            // The connecting caller gave up before we got here.
            return;
        }
        let placed = match self.place(&req.user, &req.shared.device) {
            Ok(placed) => placed,
            Err(e) => {
                let _ = req.reply.send(Err(e));
                return;
            }
        };
        let live = Live::new(req.outbox, req.shared);
        let resume = req.resume;
        let mut info = self
            .with_mailbox(placed.slot, |m, cx, _| {
                m.attach(live, resume, placed.existed, cx)
            })
            .expect("the slot was just placed");
        info.missed.reset = placed.reset;
        let _ = req.reply.send(Ok(info));
    }

    /// Finds or makes the mailbox of `user`'s `device`: its own; or the one that waits for
    /// the user's first device; or a new, empty one, evicting the device away longest if the
    /// user has `max_devices_per_user` already.
    fn place(&mut self, user: &UserId, device: &DeviceId) -> Result<Placed, ConnectError> {
        let (now, retention) = (self.now, self.retention);
        let Some(entry) = self.mailboxes.users.get(user) else {
            let Some(slot) =
                self.mailboxes
                    .create_user(user, Some(device.clone()), now, &retention)
            else {
                return Err(ConnectError::TooManyUsers);
            };
            self.rec.gauges.mailboxes += 1;
            self.rec.gauges.users += 1;
            return Ok(Placed {
                slot,
                existed: false,
                reset: None,
            });
        };
        let (count, first) = (entry.slots.len(), entry.slots[0]);
        if let Some(slot) = self.mailboxes.device_slot(user, device) {
            return Ok(Placed {
                slot,
                existed: true,
                reset: None,
            });
        }
        let waiting = self.mailboxes.slots[first as usize]
            .as_mut()
            .expect("listed slots exist");
        if waiting.device.is_none() {
            // Only ever alone: the first device takes it over.
            waiting.device = Some(device.clone());
            return Ok(Placed {
                slot: first,
                existed: true,
                reset: None,
            });
        }
        // A new device: at the limit it takes the place of the device away longest.
        let victim = match count >= self.mailboxes.max_devices {
            true => match self.mailboxes.longest_away(user) {
                Some(victim) => Some(victim),
                None => {
                    self.rec.counters.devices_refused += 1;
                    return Err(ConnectError::TooManyDevices {
                        max: self.mailboxes.max_devices,
                    });
                }
            },
            false => None,
        };
        // Its own name, if it was evicted before, goes before the victim's is kept.
        let reset = self
            .mailboxes
            .forget_evicted(user, device)
            .then_some(ResetReason::DeviceEvicted);
        if let Some(victim) = victim {
            self.evict(user, victim);
        }
        let slot = self
            .mailboxes
            .alloc(user, Some(device.clone()), now, &retention);
        self.rec.gauges.mailboxes += 1;
        let entry = self.mailboxes.users.get_mut(user).expect("looked up above");
        entry.slots.push(slot);
        Ok(Placed {
            slot,
            existed: false,
            reset,
        })
    }

    /// Removes `user`'s mailbox in `victim` to make room for another device, remembering the
    /// device's name so that its next connect can say why its mailbox is gone.
    fn evict(&mut self, user: &UserId, victim: u32) {
        let Slot {
            device,
            mut mailbox,
            ..
        } = self.mailboxes.slots[victim as usize]
            .take()
            .expect("listed slots exist");
        self.mailboxes.free.push(victim);
        let Dropped { bytes, .. } = mailbox.dismantle(&mut self.wheel, &mut self.rec);
        self.budget.release(bytes);
        self.rec.counters.devices_evicted += 1;
        self.rec.gauges.mailboxes -= 1;
        let max = self.mailboxes.max_devices;
        let entry = self
            .mailboxes
            .users
            .get_mut(user)
            .expect("the caller's user");
        entry.slots.retain(|s| *s != victim);
        let names = &mut entry.evicted.get_or_insert_with(Box::default).0;
        if names.len() >= max {
            names.pop_front();
        }
        names.extend(device);
    }

    fn on_signal(&mut self, node: &Arc<SessionShared>) {
        let Some(slot) = self.mailboxes.device_slot(&node.user, &node.device) else {
            return;
        };
        self.with_mailbox(slot, |m, cx, r| {
            if !m.is_attached(node) {
                return; // a replaced session's late ack or close
            }
            m.settle(node.acked(), cx);
            m.breaker_changed(cx);
            if let Some(reason) = node.close_requested() {
                m.detach(reason, r, cx);
            } else {
                m.fill_window(cx);
            }
        });
    }
}

/// The outcome for the user from each of its mailboxes' (all decided by now).
fn combine(outcomes: &[Option<SendOutcome>]) -> SendOutcome {
    let decided: PerMailbox<SendOutcome> = outcomes.iter().flatten().copied().collect();
    debug_assert_eq!(decided.len(), outcomes.len(), "every mailbox decided");
    SendOutcome::combine(&decided)
}
