//! A shard's worker: the one thread that owns the mailboxes of the users hashed to its shard,
//! with their timing wheel and duplicate filter.
//!
//! Every rule of the engine (priority order, overflow, seq and acks, the window, TTLs, away
//! retention, dedup, the memory budget) is plain sequential code on data this thread alone
//! owns. One pass: read the clock once, fire due timers, take a batch of commands, apply every
//! pending signal, wake each session that got deliveries once. With nothing to do the worker
//! parks until work arrives or the next timer is due.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::{Config, UserLimits};
use crate::error::{ConnectError, SetLimitsError};
use crate::loom::Arc;
use crate::message::{AbortReason, Message, Prehashed, RejectReason, SendOutcome, UserId};
use crate::metrics::ShardRecorder;
use crate::session::Epoch;
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

/// The shard's mailboxes: a slab (so timers can name a mailbox by its slot) and an index by
/// user, created on first use up to a maximum.
struct Mailboxes {
    index: HashMap<UserId, u32, Prehashed>,
    /// Per-user limit overrides; they outlive mailboxes.
    overrides: HashMap<UserId, UserLimits, Prehashed>,
    slots: Vec<Option<(UserId, Mailbox)>>,
    free: Vec<u32>,
    max: usize,
    /// Epochs need to differ between mailbox lives, not be secret.
    rng: fastrand::Rng,
}

impl Mailboxes {
    fn slot_of(&self, user: &UserId) -> Option<u32> {
        self.index.get(user).copied()
    }

    fn at(&mut self, slot: u32) -> Option<&mut Mailbox> {
        self.slots
            .get_mut(slot as usize)
            .and_then(|s| s.as_mut().map(|(_, m)| m))
    }

    /// The user's slot, creating a mailbox with a fresh epoch unless the shard is full.
    /// Returns whether it was created.
    fn get_or_create(
        &mut self,
        user: &UserId,
        now: u64,
        retention: &Retention,
    ) -> Option<(u32, bool)> {
        if let Some(slot) = self.slot_of(user) {
            return Some((slot, false));
        }
        if self.index.len() >= self.max {
            return None;
        }
        let mut mailbox = Mailbox::new(Epoch(self.rng.u64(..)), now, retention);
        mailbox.set_limits(self.overrides.get(user).copied());
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some((user.clone(), mailbox));
                slot
            }
            None => {
                self.slots.push(Some((user.clone(), mailbox)));
                u32::try_from(self.slots.len() - 1).expect("more than 4G mailboxes in a shard")
            }
        };
        self.index.insert(user.clone(), slot);
        Some((slot, true))
    }

    fn remove(&mut self, slot: u32) -> Option<Mailbox> {
        let (user, mailbox) = self.slots.get_mut(slot as usize)?.take()?;
        self.index.remove(&user);
        self.free.push(slot);
        if self.index.is_empty() {
            // Give the slab's memory back when a shard empties out.
            self.slots = Vec::new();
            self.free = Vec::new();
        }
        Some(mailbox)
    }

    /// The `k` mailboxes with the most queued messages (more queued bytes first among equals),
    /// deepest first, as (user, queued messages, queued bytes); empty backlogs are skipped.
    /// One pass over the slab with a min-heap of at most `k` entries that names mailboxes by
    /// slot, so only the `k` winners' ids are cloned: O(n log k) time, O(k) memory.
    fn deepest(&self, k: usize) -> Vec<(UserId, usize, usize)> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        if k == 0 {
            return Vec::new();
        }
        let mut heap: BinaryHeap<Reverse<(usize, usize, u32)>> = BinaryHeap::new();
        for (slot, entry) in self.slots.iter().enumerate() {
            let Some((_, m)) = entry else { continue };
            let queued = m.queued_len();
            if queued == 0 {
                continue;
            }
            let full = heap.len() >= k;
            if full
                && heap
                    .peek()
                    .is_some_and(|Reverse((least, _, _))| queued < *least)
            {
                continue; // cannot make the cut: skip reading its bytes
            }
            // Slots are u32 by construction (see `get_or_create`).
            let key = (queued, m.stats().queued_bytes, slot as u32);
            if !full {
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
                let (user, _) = self.slots.get(slot as usize)?.as_ref()?;
                Some((user.clone(), queued, bytes))
            })
            .collect()
    }

    fn iter(&self) -> impl Iterator<Item = &Mailbox> {
        self.slots.iter().flatten().map(|(_, m)| m)
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
            index: HashMap::default(),
            overrides: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            max: config.max_users.div_ceil(config.shards),
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
            for (_, m) in self.mailboxes.slots.iter_mut().flatten() {
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
        for (_, m) in self.mailboxes.slots.iter_mut().flatten() {
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
        for (_, m) in self.mailboxes.slots.iter_mut().flatten() {
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
                    if let Some(mut m) = self.mailboxes.remove(slot) {
                        m.removal_fired();
                        let Dropped { bytes, .. } = m.dismantle(&mut self.wheel, &mut self.rec);
                        self.budget.release(bytes);
                        self.rec.counters.mailboxes_removed += 1;
                        self.rec.gauges.mailboxes -= 1;
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
                let aborted = self.mailboxes.slot_of(&user).and_then(|slot| {
                    self.with_mailbox(slot, |m, cx, r| {
                        let open = m.abort_stream(stream, AbortReason::Producer(reason), cx);
                        m.schedule_removal(r, cx);
                        open
                    })
                });
                let _ = reply.send(aborted.unwrap_or(false));
            }
            Command::StreamStatus {
                user,
                stream,
                reply,
            } => {
                let (now, keep_ms) = (self.now, self.stream_limits.timeout_ms);
                let status = self
                    .mailboxes
                    .slot_of(&user)
                    .and_then(|slot| self.mailboxes.at(slot))
                    .and_then(|m| m.stream_status(&stream, now, keep_ms));
                let _ = reply.send(status);
            }
            Command::Deepest { k, reply } => {
                let _ = reply.send(self.mailboxes.deepest(k));
            }
            Command::Inspect { user, reply } => {
                let stats = self
                    .mailboxes
                    .slot_of(&user)
                    .and_then(|slot| self.mailboxes.at(slot))
                    .map(|m| m.stats());
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
        if let Some(m) = self
            .mailboxes
            .slot_of(user)
            .and_then(|slot| self.mailboxes.at(slot))
        {
            m.set_limits(limits);
        }
        Ok(())
    }

    fn accept(&mut self, user: &UserId, message: Message) -> SendOutcome {
        self.rec.counters.sent += 1;
        let fingerprint = self.dedup.fingerprint(user, &message);
        if let Some(fp) = fingerprint {
            if self.dedup.seen(fp) {
                self.rec.counters.duplicates += 1;
                if let Some(slot) = self.mailboxes.slot_of(user) {
                    self.with_mailbox(slot, |m, _, _| m.record_duplicate());
                }
                return SendOutcome::Duplicate;
            }
        }
        let mut budget_priority = message.priority();
        if message.is_stream_part() {
            // A stream part is judged by its stream, not by itself: a duplicate or refused
            // part is answered as such whatever the memory, and the budget uses the
            // stream's priority (from part 0), not the part's own, which is ignored.
            if let Some(slot) = self.mailboxes.slot_of(user) {
                let admitted = self.with_mailbox(slot, |m, cx, r| {
                    let admitted = m.budget_priority_of_part(&message, cx);
                    if admitted.is_err() && !m.is_live() {
                        m.schedule_removal(r, cx);
                    }
                    admitted
                });
                match admitted.expect("slot was just looked up") {
                    Ok(priority) => budget_priority = priority,
                    Err(outcome) => return outcome,
                }
            }
        }
        if !self.budget.admits(budget_priority, message.cost()) {
            // Recorded on an existing mailbox only: under memory pressure, creating mailboxes
            // to note losses would make it worse.
            match self.mailboxes.slot_of(user) {
                Some(slot) => {
                    self.with_mailbox(slot, |m, cx, r| {
                        m.shed_part_or_message(&message, cx);
                        if !m.is_live() {
                            m.schedule_removal(r, cx);
                        }
                    });
                }
                None => self.rec.counters.shed += 1,
            }
            return SendOutcome::Rejected(RejectReason::MemoryBudget);
        }
        let Some((slot, created)) = self
            .mailboxes
            .get_or_create(user, self.now, &self.retention)
        else {
            self.rec.counters.rejected += 1;
            return SendOutcome::Rejected(RejectReason::TooManyUsers);
        };
        self.rec.gauges.mailboxes += u64::from(created);
        let ttl = message
            .ttl()
            .map(ms)
            .or(self.default_ttl_ms[message.priority().index()]);
        let expires_at = ttl.map(|t| self.now.saturating_add(t));
        let defaults = self.config.user_limits;
        let outcome = self
            .with_mailbox(slot, |m, cx, r| {
                let outcome = m.accept(message, expires_at, &defaults, cx);
                if !m.is_live() {
                    m.schedule_removal(r, cx);
                }
                outcome
            })
            .expect("slot was just looked up");
        if let (Some(fp), SendOutcome::Delivered | SendOutcome::Queued { .. }) =
            (fingerprint, outcome)
        {
            self.dedup.record(fp);
        }
        outcome
    }

    fn connect(&mut self, req: ConnectRequest) {
        if req.shared.close_requested().is_some() {
            // The connecting caller gave up before we got here.
            return;
        }
        let Some((slot, created)) =
            self.mailboxes
                .get_or_create(&req.user, self.now, &self.retention)
        else {
            let _ = req.reply.send(Err(ConnectError::TooManyUsers));
            return;
        };
        self.rec.gauges.mailboxes += u64::from(created);
        let live = Live::new(req.outbox, req.shared);
        let resume = req.resume;
        let info = self
            .with_mailbox(slot, |m, cx, _| m.attach(live, resume, !created, cx))
            .expect("slot was just looked up");
        let _ = req.reply.send(Ok(info));
    }

    fn on_signal(&mut self, node: &Arc<SessionShared>) {
        let Some(slot) = self.mailboxes.slot_of(&node.user) else {
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
