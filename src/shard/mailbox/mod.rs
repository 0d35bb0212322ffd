//! One user's mailbox, owned by one shard worker: priority bands, the delivery window, seq and
//! epoch, the live session if any, what the user missed, and the timers that expire its
//! messages and, while nobody is connected, the mailbox itself.
//!
//! Invariants (checked by `debug_check` in tests):
//! - a live session with room in its window has empty bands: whenever the window frees up or a
//!   session attaches, `fill_window` moves the most urgent waiting messages into it;
//! - `in_flight` holds delivered, unacknowledged messages in increasing seq order (an expired
//!   one leaves a gap), so a cumulative ack pops from the front;
//! - each band is FIFO and its entries carry increasing tags, so the timer of a queued message
//!   finds it by binary search; expiries mostly hit the front, where removal is O(1);
//! - `occupied` has bit `b` set exactly when band `b` is non-empty, so the most urgent
//!   non-empty band is `occupied.trailing_zeros()` and the least urgent is the highest bit;
//! - a message has a wheel timer exactly when it has a deadline, and a mailbox without a
//!   session has exactly one removal timer (away retention, or idle cleanup when empty).

use std::collections::VecDeque;

use crate::breaker::{BreakerState, Permit};
use crate::config::{OverflowPolicy, UserLimits};
use crate::loom::Arc;
use crate::message::{
    AbortReason, Delivery, Message, MessageId, Priority, RejectReason, SendOutcome, StreamPart,
};
use crate::metrics::{Gauges, MailboxStats, ShardRecorder, UserCounters};
use crate::session::{ConnectInfo, Epoch, MissedManifest, ResumePoint};
use crate::shard::link::{SessionShared, END_REPLACED, END_SHUTDOWN};
use crate::shard::streams::{Admission, Stream, StreamLimits, Streams};
use crate::stream::StreamStatus;
use crate::sync::outbox::{OutboxNotifier, OutboxSender};
use crate::time::{TimerHandle, Wheel};
use crate::CloseReason;

/// The queue-depth gauge of band `b`.
fn band_gauge(g: &mut Gauges, b: usize) -> &mut u64 {
    match b {
        0 => &mut g.queued_critical,
        1 => &mut g.queued_high,
        2 => &mut g.queued_normal,
        _ => &mut g.queued_low,
    }
}

/// A band's ring keeps up to this many slots of spare capacity once it empties; beyond that
/// the memory goes back to the allocator.
const KEEP_EMPTY_CAPACITY: usize = 16;

/// What a shard's timing wheel holds for mailboxes. `mailbox` is the slot in the shard's
/// mailbox slab; a mailbox cancels its message and removal timers before it is removed, so a
/// slot is never reached through a stale one. `Trial` timers are not tracked: one that fires
/// late, or on a slot reused by another mailbox, only fills a window, which is idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// A queued message's TTL.
    Queued { mailbox: u32, band: u8, tag: u64 },
    /// An in-flight message's TTL.
    InFlight { mailbox: u32, seq: u64 },
    /// Removal of a mailbox without a session (away retention or idle cleanup).
    Remove { mailbox: u32 },
    /// A session's breaker cooldown ended: a trial delivery may go.
    Trial { mailbox: u32 },
    /// A stream's deadline or incompleteness timeout (checked when it fires).
    Stream { mailbox: u32, stream: u32 },
}

/// What the mailbox needs from its shard for one operation.
pub(crate) struct Ctx<'a> {
    pub(crate) wheel: &'a mut Wheel<Timer>,
    pub(crate) wake: &'a mut WakeList,
    /// The shard's clock, read once per pass, in ms (timers) and µs (latency).
    pub(crate) now: u64,
    pub(crate) now_us: u64,
    /// The shard's counters and gauges.
    pub(crate) rec: &'a mut ShardRecorder,
    /// This mailbox's slot in the shard's slab.
    pub(crate) slot: u32,
    pub(crate) window: usize,
    pub(crate) missed_ids: usize,
    pub(crate) streams: StreamLimits,
}

/// How long a mailbox without a session is kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    pub(crate) after_normal_ms: u64,
    pub(crate) after_abnormal_ms: u64,
    pub(crate) idle_ms: u64,
}

/// Whether `m` is a part (not the abort marker) released by stream `s`.
fn is_part_of(m: &Message, s: &Stream) -> bool {
    m.data_part().is_some_and(|p| s.owns(p))
}

/// A message's deadline and the wheel entry that enforces it.
#[derive(Clone, Copy)]
struct Expiry {
    at: u64,
    timer: TimerHandle,
}

struct Queued {
    tag: u64,
    message: Message,
    expiry: Option<Expiry>,
    /// When the shard accepted it (µs), for the enqueue-to-delivery latency.
    since_us: u64,
}

/// A delivered, unacknowledged message. After its TTL passes, `message` is `None`: the payload
/// is freed and it will not be delivered again, but the entry keeps its slot in the window
/// until acknowledged past (or a new session attaches), because a copy may still sit unread in
/// the live session's outbox, which is only as large as the window.
struct InFlight {
    seq: u64,
    message: Option<Message>,
    expiry: Option<Expiry>,
    /// When it entered the window (µs), for the delivery-to-ack latency.
    delivered_us: u64,
}

impl InFlight {
    fn cost(&self) -> usize {
        self.message.as_ref().map_or(0, Message::cost)
    }
}

/// The session currently attached to a mailbox.
pub(crate) struct Live {
    pub(crate) outbox: OutboxSender<Delivery>,
    pub(crate) shared: Arc<SessionShared>,
    /// The wake-list generation in which this session was last queued for a notify.
    notified_gen: u64,
    /// The breaker state the worker last accounted for (metrics and trial timers).
    breaker_seen: BreakerState,
}

impl Live {
    pub(crate) fn new(outbox: OutboxSender<Delivery>, shared: Arc<SessionShared>) -> Self {
        Self {
            outbox,
            shared,
            notified_gen: 0,
            breaker_seen: BreakerState::Closed,
        }
    }
}

/// Moves the breaker gauges from one state to another.
fn breaker_gauges(g: &mut Gauges, from: BreakerState, to: BreakerState) {
    for (state, delta) in [(from, -1i64), (to, 1)] {
        match state {
            BreakerState::Closed => {}
            BreakerState::Open { .. } => {
                g.breakers_open = g.breakers_open.wrapping_add_signed(delta)
            }
            BreakerState::HalfOpen => {
                g.breakers_half_open = g.breakers_half_open.wrapping_add_signed(delta)
            }
        }
    }
}

/// Sessions that received deliveries during one worker pass; each is woken once at the end.
pub(crate) struct WakeList {
    gen: u64,
    pending: Vec<OutboxNotifier>,
}

impl WakeList {
    pub(crate) fn new() -> Self {
        Self {
            gen: 1,
            pending: Vec::new(),
        }
    }

    fn add(&mut self, live: &mut Live) {
        if live.notified_gen != self.gen {
            live.notified_gen = self.gen;
            self.pending.push(live.outbox.notifier());
        }
    }

    /// Wakes every session queued since the last flush.
    pub(crate) fn flush(&mut self) {
        for n in self.pending.drain(..) {
            n.notify();
        }
        self.gen += 1;
    }
}

/// Counts of what a user lost since the last connect, with the most recent ids.
#[derive(Default)]
struct Missed {
    manifest: MissedManifest,
    ids: VecDeque<MessageId>,
}

/// Why a message left a mailbox without being acknowledged (or was never let in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loss {
    Evicted,
    Rejected,
    Shed,
    Expired,
}

/// What removing an expired message or a whole mailbox dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
}

pub(crate) struct Mailbox {
    bands: [VecDeque<Queued>; 4],
    band_bytes: [usize; 4],
    occupied: u8,
    queued: usize,
    queued_bytes: usize,
    next_tag: u64,
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: usize,
    next_seq: u64,
    epoch: Epoch,
    live: Option<Live>,
    limits: Option<UserLimits>,
    /// Boxed and created on the first loss: most mailboxes never lose anything.
    missed: Option<Box<Missed>>,
    /// Boxed and created on the first stream part: most users never get a stream.
    streams: Option<Box<Streams>>,
    /// When a mailbox without a session is removed if it still holds something.
    away_until: u64,
    /// The pending removal timer and its deadline, while no session is attached.
    removal: Option<(TimerHandle, u64)>,
    counters: UserCounters,
}

impl Mailbox {
    /// A new mailbox, counted as away since `now` (a user who never connects does not keep
    /// messages forever).
    pub(crate) fn new(epoch: Epoch, now: u64, retention: &Retention) -> Self {
        Self {
            bands: Default::default(),
            band_bytes: [0; 4],
            occupied: 0,
            queued: 0,
            queued_bytes: 0,
            next_tag: 0,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            next_seq: 1,
            epoch,
            live: None,
            limits: None,
            missed: None,
            streams: None,
            away_until: now.saturating_add(retention.after_normal_ms),
            removal: None,
            counters: UserCounters::default(),
        }
    }

    /// Stream parts held back until the parts before them arrive, and their bytes.
    fn stream_held(&self) -> (usize, usize) {
        self.streams.as_ref().map_or((0, 0), |s| s.held())
    }

    /// Payload bytes this mailbox holds (queued, held back and in flight).
    pub(crate) fn held_bytes(&self) -> usize {
        self.queued_bytes + self.stream_held().1 + self.in_flight_bytes
    }

    /// Messages this mailbox holds (queued, held back and in flight).
    pub(crate) fn held_messages(&self) -> usize {
        self.queued
            + self.stream_held().0
            + self
                .in_flight
                .iter()
                .filter(|f| f.message.is_some())
                .count()
    }

    pub(crate) fn set_limits(&mut self, limits: Option<UserLimits>) {
        self.limits = limits;
    }

    /// Messages waiting in the bands.
    pub(crate) fn queued_len(&self) -> usize {
        self.queued
    }

    pub(crate) fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Whether `shared` is the session attached right now.
    pub(crate) fn is_attached(&self, shared: &Arc<SessionShared>) -> bool {
        self.live
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(&l.shared, shared))
    }

    /// Takes a message: straight into a live session's window if it has room, else into its
    /// band under the overflow policy. `expires_at` is its deadline, if it has one.
    pub(crate) fn accept(
        &mut self,
        message: Message,
        expires_at: Option<u64>,
        defaults: &UserLimits,
        cx: &mut Ctx<'_>,
    ) -> SendOutcome {
        if message.is_stream_part() {
            return self.accept_part(message, expires_at, defaults, cx);
        }
        self.counters.sent += 1;
        // Straight into the window only past an empty backlog: with the breaker open the
        // window can have room while older messages wait, and they go first.
        if self.backlog_empty() && self.may_deliver(cx) {
            let now_us = cx.now_us;
            self.deliver(message, expires_at, now_us, cx);
            return SendOutcome::Delivered;
        }
        let limits = self.limits.unwrap_or(*defaults);
        let cost = message.cost();
        if cost > limits.max_bytes {
            self.record_loss(Loss::Rejected, message.id(), cx);
            return SendOutcome::Rejected(RejectReason::LargerThanMailbox);
        }
        let mut evicted = 0;
        if !self.fits(&limits, cost) {
            cx.rec.counters.overflows += 1;
            match limits.overflow {
                OverflowPolicy::Reject => {
                    self.record_loss(Loss::Rejected, message.id(), cx);
                    return SendOutcome::Rejected(RejectReason::MailboxFull);
                }
                OverflowPolicy::DropNewest => {
                    self.record_loss(Loss::Evicted, message.id(), cx);
                    return SendOutcome::Rejected(RejectReason::Dropped);
                }
                OverflowPolicy::DropOldest => {
                    match self.evict_for(&limits, message.priority(), cost, None, cx) {
                        Some(n) => evicted = n,
                        None => {
                            self.record_loss(Loss::Evicted, message.id(), cx);
                            return SendOutcome::Rejected(RejectReason::Dropped);
                        }
                    }
                }
            }
        }
        self.push_band(message, expires_at, cx);
        // A breaker whose cooldown just ended may take a trial now.
        self.fill_window(cx);
        SendOutcome::Queued { evicted }
    }

    /// No message waits for the window: nothing in the bands and no stream abort marker.
    fn backlog_empty(&self) -> bool {
        self.queued == 0 && !self.streams.as_ref().is_some_and(|s| s.has_markers())
    }

    /// Would one more message of `cost` bytes fit the backlog caps? Stream parts held back
    /// count against them like queued messages.
    fn fits(&self, limits: &UserLimits, cost: usize) -> bool {
        let (held, held_bytes) = self.stream_held();
        self.queued + held < limits.max_messages
            && self.queued_bytes + held_bytes + cost <= limits.max_bytes
    }

    /// Evicts the oldest messages of the least urgent bands that are no more urgent than
    /// `priority` until `cost` more bytes fit; `None` (evicting nothing) if that cannot make
    /// room. A stream is evicted as a whole: it is aborted. If the eviction would reach a
    /// part of `own` (the incoming part's stream) before there is room, the stream does not
    /// fit: `None`, and the caller aborts it. Whether it can succeed is decided first
    /// (`can_evict_for`), so a failed attempt evicts nothing.
    fn evict_for(
        &mut self,
        limits: &UserLimits,
        priority: Priority,
        cost: usize,
        own: Option<&str>,
        cx: &mut Ctx<'_>,
    ) -> Option<u32> {
        // O(1) first: if room is not made even in the best case (every eligible message
        // evicted, and with them every held part), no order of evictions makes it, and a flood
        // of messages that can never fit costs no scan each.
        let (mut n, mut bytes) = (0, 0);
        for b in priority.index()..4 {
            n += self.bands[b].len();
            bytes += self.band_bytes[b];
        }
        if self.queued - n + 1 > limits.max_messages
            || self.queued_bytes - bytes + cost > limits.max_bytes
        {
            return None;
        }
        if !self.can_evict_for(limits, priority, cost, own) {
            return None;
        }
        let mut evicted = 0;
        while !self.fits(limits, cost) {
            let b = 7 - self.occupied.leading_zeros() as usize;
            debug_assert!(b >= priority.index());
            let front = &self.bands[b].front().expect("occupied band").message;
            let stream = front.data_part().map(StreamPart::stream);
            debug_assert!(
                stream.is_none() || stream != own,
                "can_evict_for stops before its own stream"
            );
            let slot = stream.and_then(|id| self.streams.as_ref()?.slot_of(id));
            match slot {
                Some(slot) => evicted += self.abort_slot(slot, AbortReason::Overflow, cx),
                None => {
                    let victim = self.pop_band(b, cx);
                    self.record_loss(Loss::Evicted, victim.id(), cx);
                    evicted += 1;
                }
            }
        }
        Some(evicted)
    }

    /// A dry run of `evict_for`'s loop, in the same order (least urgent band first, oldest
    /// first; a stream part frees its whole stream: its queued parts and its held ones):
    /// whether room for `cost` bytes is made before the loop would run out of eligible
    /// messages or reach a part of `own`. Changes nothing.
    fn can_evict_for(
        &self,
        limits: &UserLimits,
        priority: Priority,
        cost: usize,
        own: Option<&str>,
    ) -> bool {
        let (held, held_bytes) = self.stream_held();
        let (mut messages, mut bytes) = (self.queued + held, self.queued_bytes + held_bytes);
        let fits = |messages: usize, bytes: usize| {
            messages < limits.max_messages && bytes + cost <= limits.max_bytes
        };
        // Streams already counted as aborted; bounded by the per-user stream limit, and
        // allocated only once a stream is met.
        let mut aborted: Vec<u32> = Vec::new();
        for b in (priority.index()..4).rev() {
            for q in &self.bands[b] {
                if fits(messages, bytes) {
                    return true;
                }
                let stream = q.message.data_part().map(StreamPart::stream);
                if stream.is_some() && stream == own {
                    return false;
                }
                let streams = self.streams.as_deref();
                let slot = stream.and_then(|id| streams?.slot_of(id));
                match (slot, streams) {
                    (Some(slot), Some(streams)) => {
                        if aborted.contains(&slot) {
                            continue;
                        }
                        aborted.push(slot);
                        let s = streams.get(slot).expect("indexed streams exist");
                        let (n, nb) = s.held();
                        messages -= n;
                        bytes -= nb;
                        for p in self.bands[s.priority().index()]
                            .iter()
                            .filter(|p| is_part_of(&p.message, s))
                        {
                            messages -= 1;
                            bytes -= p.message.cost();
                        }
                    }
                    _ => {
                        messages -= 1;
                        bytes -= q.message.cost();
                    }
                }
            }
        }
        fits(messages, bytes)
    }

    /// Takes a part of a stream (see `stream.rs`): refused, held back until the parts before
    /// it arrive, or released with them into the window or the stream's band. The caps see
    /// the stream as a unit: a part that cannot be kept ends its whole stream.
    fn accept_part(
        &mut self,
        message: Message,
        expires_at: Option<u64>,
        defaults: &UserLimits,
        cx: &mut Ctx<'_>,
    ) -> SendOutcome {
        self.counters.sent += 1;
        let (slot, priority) = match self.admit_part(&message, cx) {
            Ok(admitted) => admitted,
            Err(refused) => return refused,
        };
        let id = message
            .data_part()
            .expect("a stream part")
            .stream_id()
            .clone();
        let limits = self.limits.unwrap_or(*defaults);
        let cost = message.cost();
        let mut evicted = 0;
        if cost > limits.max_bytes || !self.fits(&limits, cost) {
            let room = if cost > limits.max_bytes {
                None
            } else {
                cx.rec.counters.overflows += 1;
                match limits.overflow {
                    OverflowPolicy::DropOldest => {
                        self.evict_for(&limits, priority, cost, Some(&id), cx)
                    }
                    _ => None,
                }
            };
            match room {
                Some(n) => evicted = n,
                None => {
                    let (loss, reason) = if cost > limits.max_bytes {
                        (Loss::Rejected, RejectReason::LargerThanMailbox)
                    } else if limits.overflow == OverflowPolicy::Reject {
                        (Loss::Rejected, RejectReason::MailboxFull)
                    } else {
                        (Loss::Evicted, RejectReason::Dropped)
                    };
                    self.record_loss(loss, message.id(), cx);
                    self.end_stream(id, AbortReason::Overflow, cx);
                    return SendOutcome::Rejected(reason);
                }
            }
        }
        let streams = self.streams.as_mut().expect("created above");
        let slot = match slot {
            Some(slot) => slot,
            None => {
                cx.rec.gauges.streams_open += 1;
                streams.open(id, cx.now, &mut cx.rec.counters)
            }
        };
        let released = streams.arrive(slot, message, expires_at, cx.now);
        self.schedule_stream(slot, cx);
        let mut outcome = SendOutcome::Queued { evicted };
        for (i, m) in released.into_iter().enumerate() {
            if self.backlog_empty() && self.may_deliver(cx) {
                self.deliver(m, None, cx.now_us, cx);
                if i == 0 {
                    outcome = SendOutcome::Delivered;
                }
            } else {
                // No per-part deadline: the stream's own timer ends it as a whole.
                self.push_band(m, None, cx);
            }
        }
        self.fill_window(cx);
        outcome
    }

    /// Decides whether stream part `message` can be taken, counting it if not (a duplicate or
    /// a refusal, with the outcome to return). If it can: the open stream it joins (`None`
    /// if it opens one) and the stream's priority, which part 0 fixes; until part 0 arrives,
    /// the part's own priority is the best guess.
    fn admit_part(
        &mut self,
        message: &Message,
        cx: &mut Ctx<'_>,
    ) -> Result<(Option<u32>, Priority), SendOutcome> {
        let config = cx.streams;
        let streams = self
            .streams
            .get_or_insert_with(|| Box::new(Streams::new(&config)));
        streams.forget_finished(cx.now, config.timeout_ms);
        let slot = match streams.admit(message.data_part().expect("a stream part"), &config) {
            Admission::Opens => None,
            Admission::Joins(slot) => Some(slot),
            Admission::Duplicate => {
                cx.rec.counters.duplicates += 1;
                self.record_duplicate();
                return Err(SendOutcome::Duplicate);
            }
            Admission::Refused(reason) => {
                cx.rec.counters.rejected += 1;
                self.counters.rejected += 1;
                return Err(SendOutcome::Rejected(reason));
            }
        };
        let priority = slot
            .and_then(|slot| streams.get(slot)?.known_priority())
            .unwrap_or(message.priority());
        Ok((slot, priority))
    }

    /// Before the memory budget looks at stream part `message`: the priority the budget
    /// must judge it by (its stream's), or, if the part is a duplicate or is refused, the
    /// outcome, counted. Checking the part first means only a part that would open or join
    /// a stream can end it under memory pressure; a duplicate or a late part of a finished
    /// stream leaves everything as it was.
    pub(crate) fn budget_priority_of_part(
        &mut self,
        message: &Message,
        cx: &mut Ctx<'_>,
    ) -> Result<Priority, SendOutcome> {
        match self.admit_part(message, cx) {
            Ok((_, priority)) => Ok(priority),
            Err(refused) => {
                self.counters.sent += 1;
                Err(refused)
            }
        }
    }

    /// Keeps the stream's timer at (or before) its next due time.
    fn schedule_stream(&mut self, slot: u32, cx: &mut Ctx<'_>) {
        let Some(s) = self.streams.as_mut().and_then(|st| st.get_mut(slot)) else {
            return;
        };
        let due = s.due(&cx.streams);
        match (s.timer, due) {
            // An earlier timer re-checks when it fires and moves itself on.
            (Some((_, at)), Some(due)) if at <= due => {}
            (old, due) => {
                if let Some((timer, _)) = old {
                    cx.wheel.cancel(timer);
                }
                s.timer = due.map(|at| {
                    let timer = cx.wheel.insert(
                        at,
                        Timer::Stream {
                            mailbox: cx.slot,
                            stream: slot,
                        },
                    );
                    (timer, at)
                });
            }
        }
    }

    /// A stream's timer fired: aborts the stream if it is overdue, else sets the timer again.
    pub(crate) fn stream_timer_fired(&mut self, slot: u32, cx: &mut Ctx<'_>) {
        let Some(s) = self.streams.as_mut().and_then(|st| st.get_mut(slot)) else {
            return;
        };
        s.timer = None;
        match s.overdue(cx.now, &cx.streams) {
            Some(reason) => {
                self.abort_slot(slot, reason, cx);
            }
            None => self.schedule_stream(slot, cx),
        }
    }

    /// Aborts the open stream `id`, or, if it never opened, remembers that it ended so its
    /// later parts are refused.
    fn end_stream(&mut self, id: std::sync::Arc<str>, reason: AbortReason, cx: &mut Ctx<'_>) {
        let config = cx.streams;
        let streams = self
            .streams
            .get_or_insert_with(|| Box::new(Streams::new(&config)));
        match streams.slot_of(&id) {
            Some(slot) => {
                self.abort_slot(slot, reason, cx);
            }
            None => streams.refuse(id, reason, cx.now),
        }
    }

    /// Aborts the open stream in `slot`: drops its parts not yet delivered (queued in its band
    /// or held back), counts them as lost unless the producer asked for it, and queues its
    /// abort marker. Returns how many parts were dropped.
    fn abort_slot(&mut self, slot: u32, reason: AbortReason, cx: &mut Ctx<'_>) -> u32 {
        let loss = match reason {
            AbortReason::Overflow => Some(Loss::Evicted),
            AbortReason::MemoryBudget => Some(Loss::Shed),
            AbortReason::Timeout | AbortReason::Expired => Some(Loss::Expired),
            AbortReason::Producer(_) => None,
        };
        let streams = self.streams.as_mut().expect("an open stream");
        let mut s = streams.abort(slot, reason, cx.now, &mut cx.rec.counters);
        cx.rec.gauges.streams_open -= 1;
        if let Some((timer, _)) = s.timer.take() {
            cx.wheel.cancel(timer);
        }
        let mut dropped: Vec<Message> = s.take_held().into_values().collect();
        let b = s.priority().index();
        if self.bands[b].iter().any(|q| is_part_of(&q.message, &s)) {
            let band = std::mem::take(&mut self.bands[b]);
            let mut kept = VecDeque::with_capacity(band.len());
            let mut gone = Vec::new();
            for q in band {
                if is_part_of(&q.message, &s) {
                    debug_assert!(
                        q.expiry.is_none(),
                        "stream parts have no timer of their own"
                    );
                    gone.push(q.message);
                } else {
                    kept.push_back(q);
                }
            }
            self.bands[b] = kept;
            for m in gone {
                self.after_band_removal(b, &m, &mut cx.rec.gauges);
                dropped.push(m);
            }
        }
        if let Some(loss) = loss {
            for m in &dropped {
                self.record_loss(loss, m.id(), cx);
            }
        }
        dropped.len() as u32
    }

    /// The producer aborts stream `id`. Returns whether it was open. A stream not seen yet is
    /// remembered as aborted, so parts that arrive after the abort are refused.
    pub(crate) fn abort_stream(
        &mut self,
        id: std::sync::Arc<str>,
        reason: AbortReason,
        cx: &mut Ctx<'_>,
    ) -> bool {
        let (now, keep_ms) = (cx.now, cx.streams.timeout_ms);
        let open = self
            .streams
            .as_ref()
            .is_some_and(|s| s.slot_of(&id).is_some());
        let known = self.streams.as_mut().is_some_and(|s| {
            s.forget_finished(now, keep_ms);
            s.is_known(&id)
        });
        // An open stream is aborted; an unknown one is remembered as aborted; a finished one
        // keeps the record of how it ended.
        if open || !known {
            self.end_stream(id, reason, cx);
        }
        if open {
            self.fill_window(cx);
        }
        open
    }

    /// What is known of stream `id` at `now`: open, or finished less than `keep_ms` ago.
    pub(crate) fn stream_status(
        &mut self,
        id: &str,
        now: u64,
        keep_ms: u64,
    ) -> Option<StreamStatus> {
        let streams = self.streams.as_mut()?;
        streams.forget_finished(now, keep_ms);
        streams.status(id)
    }

    /// The memory budget refused a message; if it is a stream part, its stream ends as a unit.
    /// The caller admitted the part first (`budget_priority_of_part`): it opens or joins a
    /// stream, so no finished stream's record is overwritten.
    pub(crate) fn shed_part_or_message(&mut self, message: &Message, cx: &mut Ctx<'_>) {
        self.record_loss(Loss::Shed, message.id(), cx);
        if let Some(part) = message.data_part() {
            self.end_stream(part.stream_id().clone(), AbortReason::MemoryBudget, cx);
            self.fill_window(cx);
        }
    }

    fn push_band(&mut self, message: Message, expires_at: Option<u64>, cx: &mut Ctx<'_>) {
        let b = message.priority().index();
        let tag = self.next_tag;
        self.next_tag += 1;
        let expiry = expires_at.map(|at| Expiry {
            at,
            timer: cx.wheel.insert(
                at,
                Timer::Queued {
                    mailbox: cx.slot,
                    band: b as u8,
                    tag,
                },
            ),
        });
        self.queued += 1;
        self.queued_bytes += message.cost();
        self.band_bytes[b] += message.cost();
        self.occupied |= 1 << b;
        if self.bands[b].capacity() == 0 {
            // One slot, not the default four: most away users wait for a message or two, and
            // this is what an idle million of them costs.
            self.bands[b].reserve_exact(1);
        }
        self.bands[b].push_back(Queued {
            tag,
            message,
            expiry,
            since_us: cx.now_us,
        });
        let g = &mut cx.rec.gauges;
        *band_gauge(g, b) += 1;
        g.max_queue_depth = g.max_queue_depth.max(self.queued as u64);
        cx.rec.counters.queued += 1;
    }

    /// Takes the oldest message of band `b`, cancelling its timer.
    fn pop_band(&mut self, b: usize, cx: &mut Ctx<'_>) -> Message {
        let q = self.bands[b]
            .pop_front()
            .expect("occupied bit set for an empty band");
        if let Some(e) = q.expiry {
            cx.wheel.cancel(e.timer);
        }
        self.after_band_removal(b, &q.message, &mut cx.rec.gauges);
        q.message
    }

    fn after_band_removal(&mut self, b: usize, message: &Message, gauges: &mut Gauges) {
        *band_gauge(gauges, b) -= 1;
        let band = &mut self.bands[b];
        if band.is_empty() {
            self.occupied &= !(1 << b);
            if band.capacity() > KEEP_EMPTY_CAPACITY {
                *band = VecDeque::new();
            }
        }
        self.queued -= 1;
        self.queued_bytes -= message.cost();
        self.band_bytes[b] -= message.cost();
    }

    fn window_has_room(&self, window: usize) -> bool {
        self.live.is_some() && self.in_flight.len() < window
    }

    /// Whether one more message may be delivered now: a live session with room in its window
    /// and a breaker that allows it. Call it only with a message in hand: when the breaker's
    /// cooldown has ended this starts the trial, which must be that message's delivery.
    fn may_deliver(&mut self, cx: &mut Ctx<'_>) -> bool {
        if !self.window_has_room(cx.window) {
            return false;
        }
        let live = self.live.as_mut().expect("window_has_room checked it");
        match live.shared.breaker.may_deliver(cx.now) {
            Permit::Yes => true,
            Permit::No => false,
            Permit::Trial => {
                if !live.shared.breaker.begin_trial(cx.now) {
                    return false;
                }
                cx.rec.counters.breaker_half_opens += 1;
                breaker_gauges(
                    &mut cx.rec.gauges,
                    live.breaker_seen,
                    BreakerState::HalfOpen,
                );
                live.breaker_seen = BreakerState::HalfOpen;
                true
            }
        }
    }

    /// Accounts for breaker transitions the session reported (from its signal) and, when it
    /// opened, schedules the end of the cooldown.
    pub(crate) fn breaker_changed(&mut self, cx: &mut Ctx<'_>) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let now = live.shared.breaker.state();
        let before = live.breaker_seen;
        if now == before {
            return;
        }
        let c = &mut cx.rec.counters;
        match (before, now) {
            (BreakerState::HalfOpen, BreakerState::Open { .. }) => {
                c.breaker_reopens += 1;
                c.breaker_opens += 1;
            }
            (_, BreakerState::Open { .. }) => c.breaker_opens += 1,
            (BreakerState::HalfOpen, BreakerState::Closed) => c.breaker_closes += 1,
            _ => {}
        }
        breaker_gauges(&mut cx.rec.gauges, before, now);
        live.breaker_seen = now;
        if let BreakerState::Open { until_ms } = now {
            cx.wheel.insert(until_ms, Timer::Trial { mailbox: cx.slot });
        }
    }

    /// Removes the live session's breaker from the gauges as the session goes.
    fn forget_breaker(live: &Live, gauges: &mut Gauges) {
        breaker_gauges(gauges, live.breaker_seen, BreakerState::Closed);
    }

    /// Assigns the next seq, hands the message to the session and keeps it in flight until
    /// it is acknowledged or its deadline passes.
    fn deliver(
        &mut self,
        message: Message,
        expires_at: Option<u64>,
        since_us: u64,
        cx: &mut Ctx<'_>,
    ) {
        let live = self.live.as_mut().expect("deliver needs a live session");
        self.counters.delivered += 1;
        cx.rec.counters.delivered += 1;
        cx.rec.gauges.in_flight += 1;
        if cx.rec.latency {
            cx.rec
                .enqueue_to_delivery
                .record(cx.now_us.saturating_sub(since_us));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight_bytes += message.cost();
        // The outbox holds at least `window` slots and every value in it is also in flight,
        // so this push cannot fail while `in_flight.len() < window`.
        let pushed = live.outbox.push(Delivery::new(seq, message.clone()));
        debug_assert!(pushed.is_ok(), "outbox smaller than the window");
        cx.wake.add(live);
        if let (Some(part), Some(streams)) = (message.data_part(), self.streams.as_mut()) {
            streams.delivered(part);
        }
        let expiry = expires_at.map(|at| Expiry {
            at,
            timer: cx.wheel.insert(
                at,
                Timer::InFlight {
                    mailbox: cx.slot,
                    seq,
                },
            ),
        });
        self.in_flight.push_back(InFlight {
            seq,
            message: Some(message),
            expiry,
            delivered_us: cx.now_us,
        });
    }

    /// Moves the most urgent waiting messages into the window while it has room.
    pub(crate) fn fill_window(&mut self, cx: &mut Ctx<'_>) {
        // Abort markers first: their stream's undelivered parts are gone, so nothing of that
        // stream can come after them, and they free the stream's slot once acknowledged.
        while self.streams.as_ref().is_some_and(|s| s.has_markers()) && self.may_deliver(cx) {
            let marker = self.streams.as_mut().and_then(|s| s.next_marker());
            let marker = marker.expect("has_markers checked it");
            self.deliver(marker, None, cx.now_us, cx);
        }
        while self.occupied != 0 && self.may_deliver(cx) {
            let b = self.occupied.trailing_zeros() as usize;
            let q = self.bands[b].pop_front().expect("occupied band");
            if let Some(e) = q.expiry {
                cx.wheel.cancel(e.timer);
            }
            self.after_band_removal(b, &q.message, &mut cx.rec.gauges);
            self.deliver(q.message, q.expiry.map(|e| e.at), q.since_us, cx);
        }
    }

    /// Settles every in-flight message with seq <= `upto` (a cumulative ack).
    pub(crate) fn settle(&mut self, upto: u64, cx: &mut Ctx<'_>) {
        while self.in_flight.front().is_some_and(|f| f.seq <= upto) {
            let f = self.in_flight.pop_front().expect("front exists");
            if let Some(e) = f.expiry {
                cx.wheel.cancel(e.timer);
            }
            self.in_flight_bytes -= f.cost();
            cx.rec.gauges.in_flight -= 1;
            let part = f.message.as_ref().and_then(Message::data_part);
            if let (Some(part), Some(streams)) = (part, self.streams.as_mut()) {
                let done = streams.acknowledged(part, cx.now, &mut cx.rec.counters);
                if let Some(mut done) = done {
                    cx.rec.gauges.streams_open -= 1;
                    if let Some((timer, _)) = done.timer.take() {
                        cx.wheel.cancel(timer);
                    }
                }
            }
            if f.message.is_some() {
                self.counters.acknowledged += 1;
                cx.rec.counters.acknowledged += 1;
                if cx.rec.latency {
                    cx.rec
                        .delivery_to_ack
                        .record(cx.now_us.saturating_sub(f.delivered_us));
                }
            }
        }
    }

    /// Drops the message a TTL timer points at. Returns what was dropped (nothing if the
    /// message already left, which cannot happen while timers are cancelled on every exit).
    pub(crate) fn expire(&mut self, timer: Timer, cx: &mut Ctx<'_>) -> Dropped {
        let message = match timer {
            Timer::Queued { band, tag, .. } => {
                let b = band as usize;
                let Ok(i) = self.bands[b].binary_search_by_key(&tag, |q| q.tag) else {
                    debug_assert!(false, "queued timer without its message");
                    return Dropped::default();
                };
                let q = self.bands[b].remove(i).expect("index from binary search");
                self.after_band_removal(b, &q.message, &mut cx.rec.gauges);
                q.message
            }
            Timer::InFlight { seq, .. } => {
                let Ok(i) = self.in_flight.binary_search_by_key(&seq, |f| f.seq) else {
                    debug_assert!(false, "in-flight timer without its message");
                    return Dropped::default();
                };
                let f = &mut self.in_flight[i];
                f.expiry = None;
                let Some(message) = f.message.take() else {
                    return Dropped::default();
                };
                self.in_flight_bytes -= message.cost();
                message
            }
            Timer::Remove { .. } | Timer::Trial { .. } | Timer::Stream { .. } => {
                return Dropped::default()
            }
        };
        self.record_loss(Loss::Expired, message.id(), cx);
        Dropped {
            messages: 1,
            bytes: message.cost() as u64,
        }
    }

    /// Attaches a new session, replacing any live one, and starts delivery: in-flight messages
    /// past the resume point first, with their original seqs, then the bands.
    pub(crate) fn attach(
        &mut self,
        live: Live,
        resume: Option<ResumePoint>,
        existed: bool,
        cx: &mut Ctx<'_>,
    ) -> ConnectInfo {
        cx.rec.counters.connects += 1;
        if existed {
            cx.rec.counters.reconnections += 1;
        }
        if let Some(old) = self.live.take() {
            old.outbox.end(END_REPLACED);
            Self::forget_breaker(&old, &mut cx.rec.gauges);
            cx.rec.counters.replaced += 1;
        } else {
            cx.rec.gauges.sessions_active += 1;
        }
        if let Some((timer, _)) = self.removal.take() {
            cx.wheel.cancel(timer);
        }
        let recovered = match resume {
            Some(r) if existed && r.epoch == self.epoch && r.last_seq < self.next_seq => {
                self.settle(r.last_seq, cx);
                true
            }
            _ => false,
        };
        if let Some(streams) = self.streams.as_ref() {
            cx.rec.counters.streams_resumed +=
                streams.iter().filter(|s| s.in_progress()).count() as u64;
        }
        // Expired entries held window slots for the old outbox only.
        let before = self.in_flight.len();
        self.in_flight.retain(|f| f.message.is_some());
        cx.rec.gauges.in_flight -= (before - self.in_flight.len()) as u64;
        let mut live = live;
        for f in &self.in_flight {
            let message = f.message.clone().expect("expired entries were dropped");
            let pushed = live.outbox.push(Delivery::new(f.seq, message));
            debug_assert!(pushed.is_ok(), "outbox smaller than the window");
        }
        let redelivered = self.in_flight.len();
        self.counters.redelivered += redelivered as u64;
        cx.rec.counters.redelivered += redelivered as u64;
        if redelivered > 0 {
            cx.wake.add(&mut live);
        }
        self.live = Some(live);
        self.fill_window(cx);
        let missed = self
            .missed
            .take()
            .map(|m| m.manifest.with_ids(m.ids.into()))
            .unwrap_or_default();
        ConnectInfo {
            epoch: self.epoch,
            recovered,
            redelivered,
            pending: self.queued,
            missed,
        }
    }

    /// Detaches the live session after it closed, keeping the mailbox for the retention that
    /// goes with how it closed. In-flight messages stay, to be delivered again.
    pub(crate) fn detach(&mut self, reason: CloseReason, retention: &Retention, cx: &mut Ctx<'_>) {
        if let Some(old) = self.live.take() {
            // A live window empties and refills all the time; its memory goes back only when
            // the session does (not on every empty, which would reallocate per burst).
            if self.in_flight.is_empty() {
                self.in_flight = VecDeque::new();
            }
            Self::forget_breaker(&old, &mut cx.rec.gauges);
            cx.rec.gauges.sessions_active -= 1;
            match reason {
                CloseReason::Normal => cx.rec.counters.closed_normal += 1,
                CloseReason::Abnormal => cx.rec.counters.closed_abnormal += 1,
            }
        }
        let keep = match reason {
            CloseReason::Normal => retention.after_normal_ms,
            CloseReason::Abnormal => retention.after_abnormal_ms,
        };
        self.away_until = cx.now.saturating_add(keep);
        self.schedule_removal(retention, cx);
    }

    /// Ends the live session from the engine's side (shutdown). Returns whether one was live.
    pub(crate) fn end_session(&mut self, code: u8, rec: &mut ShardRecorder) -> bool {
        let Some(live) = self.live.take() else {
            return false;
        };
        live.outbox.end(code);
        Self::forget_breaker(&live, &mut rec.gauges);
        rec.gauges.sessions_active -= 1;
        rec.counters.closed_shutdown += 1;
        true
    }

    /// Ends the live session without touching any other state (a crashed shard).
    pub(crate) fn abandon_session(&mut self) {
        if let Some(live) = self.live.take() {
            live.outbox.end(END_SHUTDOWN);
        }
    }

    /// Holds nothing worth keeping: no session, no message, no recorded loss.
    fn is_idle(&self) -> bool {
        self.live.is_none()
            && self.queued == 0
            && self.in_flight_bytes == 0
            && self.in_flight.iter().all(|f| f.message.is_none())
            && self.missed.is_none()
            && self.streams.as_ref().is_none_or(|s| s.is_empty())
    }

    /// Keeps the removal timer of a mailbox without a session at the right deadline: the away
    /// retention, or the idle time if that comes first and the mailbox holds nothing. Cheap
    /// when nothing changes; call it after anything that may change the answer.
    pub(crate) fn schedule_removal(&mut self, retention: &Retention, cx: &mut Ctx<'_>) {
        if self.live.is_some() {
            return;
        }
        let due = if self.is_idle() {
            self.away_until
                .min(cx.now.saturating_add(retention.idle_ms))
        } else {
            self.away_until
        };
        match self.removal {
            Some((_, at)) if at == due => {}
            // An idle mailbox keeps its earlier idle deadline rather than sliding it forward
            // on every look.
            Some((_, at)) if self.is_idle() && at < due => {}
            _ => {
                if let Some((timer, _)) = self.removal.take() {
                    cx.wheel.cancel(timer);
                }
                let timer = cx.wheel.insert(due, Timer::Remove { mailbox: cx.slot });
                self.removal = Some((timer, due));
            }
        }
    }

    /// Called when the removal timer fired: the timer is gone.
    pub(crate) fn removal_fired(&mut self) {
        self.removal = None;
    }

    /// Cancels every timer and returns what the mailbox still held, before it is dropped; the
    /// messages count as expired with their mailbox.
    pub(crate) fn dismantle(
        &mut self,
        wheel: &mut Wheel<Timer>,
        rec: &mut ShardRecorder,
    ) -> Dropped {
        for b in 0..4 {
            *band_gauge(&mut rec.gauges, b) -= self.bands[b].len() as u64;
        }
        rec.gauges.in_flight -= self.in_flight.len() as u64;
        rec.counters.expired += self.held_messages() as u64;
        for q in self.bands.iter().flatten() {
            if let Some(e) = q.expiry {
                wheel.cancel(e.timer);
            }
        }
        for f in &self.in_flight {
            if let Some(e) = f.expiry {
                wheel.cancel(e.timer);
            }
        }
        if let Some((timer, _)) = self.removal.take() {
            wheel.cancel(timer);
        }
        if let Some(streams) = self.streams.as_ref() {
            // Open streams end with their mailbox: counted as aborted, so started =
            // completed + aborted + open holds (abort markers still queued were counted when
            // their stream was aborted).
            rec.gauges.streams_open -= streams.open_count() as u64;
            rec.counters.streams_aborted_mailbox_removed += streams.open_count() as u64;
            for s in streams.iter() {
                if let Some((timer, _)) = s.timer {
                    wheel.cancel(timer);
                }
            }
        }
        Dropped {
            messages: self.held_messages() as u64,
            bytes: self.held_bytes() as u64,
        }
    }

    pub(crate) fn record_loss(&mut self, loss: Loss, id: Option<&MessageId>, cx: &mut Ctx<'_>) {
        let keep_ids = cx.missed_ids;
        let missed = self.missed.get_or_insert_with(Box::default);
        let (m, c, u) = (
            &mut missed.manifest,
            &mut cx.rec.counters,
            &mut self.counters,
        );
        match loss {
            Loss::Evicted => (m.evicted += 1, c.evicted += 1, u.evicted += 1),
            Loss::Rejected => (m.rejected += 1, c.rejected += 1, u.rejected += 1),
            Loss::Shed => (m.shed += 1, c.shed += 1, u.shed += 1),
            Loss::Expired => (m.expired += 1, c.expired += 1, u.expired += 1),
        };
        if let (Some(id), true) = (id, keep_ids > 0) {
            if missed.ids.len() == keep_ids {
                missed.ids.pop_front();
            }
            missed.ids.push_back(id.clone());
        }
    }

    /// Counts a duplicate that was refused (it is not a loss: the first copy stands).
    pub(crate) fn record_duplicate(&mut self) {
        self.missed
            .get_or_insert_with(Box::default)
            .manifest
            .deduplicated += 1;
        self.counters.duplicates += 1;
    }

    pub(crate) fn stats(&self) -> MailboxStats {
        MailboxStats {
            queued_per_band: [0, 1, 2, 3].map(|b| self.bands[b].len()),
            queued_bytes: self.queued_bytes,
            in_flight: self.in_flight.len(),
            in_flight_bytes: self.in_flight_bytes,
            next_seq: self.next_seq,
            epoch: self.epoch,
            connected: self.live.is_some(),
            missed: self.missed.as_ref().map_or(0, |m| m.manifest.total()),
            counters: self.counters,
        }
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn debug_check(&self, window: usize) {
        for (b, band) in self.bands.iter().enumerate() {
            assert_eq!(band.is_empty(), self.occupied & (1 << b) == 0);
            assert_eq!(
                band.iter().map(|q| q.message.cost()).sum::<usize>(),
                self.band_bytes[b]
            );
            assert!(band
                .iter()
                .zip(band.iter().skip(1))
                .all(|(a, b)| a.tag < b.tag));
        }
        assert_eq!(
            self.bands.iter().map(VecDeque::len).sum::<usize>(),
            self.queued
        );
        let breaker_closed = self
            .live
            .as_ref()
            .is_some_and(|l| l.shared.breaker.state() == BreakerState::Closed);
        if self.window_has_room(window) && breaker_closed {
            assert_eq!(self.queued, 0);
        }
        let f = &self.in_flight;
        assert!(f.iter().zip(f.iter().skip(1)).all(|(a, b)| a.seq < b.seq));
        assert!(f.back().is_none_or(|last| last.seq < self.next_seq));
        assert_eq!(self.live.is_none(), self.removal.is_some());
        if let Some(streams) = &self.streams {
            let (parts, bytes) = streams
                .iter()
                .map(|s| s.held())
                .fold((0, 0), |(p, b), (p2, b2)| (p + p2, b + b2));
            assert_eq!(streams.held(), (parts, bytes));
            // A stream's released parts wait in its own band, in index order.
            for s in streams.iter() {
                let b = s.priority().index();
                let idx: Vec<u32> = self.bands[b]
                    .iter()
                    .filter(|q| is_part_of(&q.message, s))
                    .map(|q| q.message.stream_part().expect("a part").index())
                    .collect();
                assert!(idx.windows(2).all(|w| w[0] + 1 == w[1]), "{idx:?}");
                for other in (0..4).filter(|&o| o != b) {
                    assert!(!self.bands[other].iter().any(|q| is_part_of(&q.message, s)));
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::outbox;
    use crate::{Priority, UserId};

    const RETENTION: Retention = Retention {
        after_normal_ms: 1000,
        after_abnormal_ms: 100,
        idle_ms: 50,
    };

    /// A mailbox with the shard-side state its operations need.
    struct Harness {
        m: Mailbox,
        wheel: Wheel<Timer>,
        wake: WakeList,
        rec: ShardRecorder,
        now: u64,
        window: usize,
    }

    impl Harness {
        fn new(window: usize) -> Self {
            Self {
                m: Mailbox::new(Epoch(1), 0, &RETENTION),
                wheel: Wheel::new(),
                wake: WakeList::new(),
                rec: ShardRecorder::new(true),
                now: 0,
                window,
            }
        }

        fn with<R>(&mut self, f: impl FnOnce(&mut Mailbox, &mut Ctx<'_>) -> R) -> R {
            let mut cx = Ctx {
                wheel: &mut self.wheel,
                wake: &mut self.wake,
                rec: &mut self.rec,
                now: self.now,
                now_us: self.now * 1000,
                slot: 0,
                window: self.window,
                missed_ids: 5,
                streams: StreamLimits {
                    timeout_ms: 1000,
                    max_per_user: 4,
                    reorder_window: 8,
                },
            };
            let r = f(&mut self.m, &mut cx);
            self.wake.flush();
            r
        }

        fn send(&mut self, m: Message, ttl: Option<u64>, limits: &UserLimits) -> SendOutcome {
            let at = ttl.map(|t| self.now + t);
            self.with(|mb, cx| {
                let o = mb.accept(m, at, limits, cx);
                mb.schedule_removal(&RETENTION, cx);
                o
            })
        }

        /// Advances time and applies every fired timer; returns how many mailbox removals fired.
        fn advance(&mut self, to: u64) -> usize {
            self.now = to;
            let mut fired = Vec::new();
            self.wheel.advance(to, &mut fired);
            let mut removals = 0;
            for t in fired {
                match t {
                    Timer::Remove { .. } => {
                        self.m.removal_fired();
                        removals += 1;
                    }
                    _ => {
                        self.with(|mb, cx| {
                            mb.expire(t, cx);
                            mb.schedule_removal(&RETENTION, cx);
                            mb.fill_window(cx);
                        });
                    }
                }
            }
            removals
        }

        fn attach(&mut self) -> outbox::OutboxReceiver<Delivery> {
            let (tx, rx) = outbox::channel(self.window);
            let shared = Arc::new(SessionShared::new(UserId::new("u").unwrap(), cell()));
            self.with(|mb, cx| mb.attach(Live::new(tx, shared), None, true, cx));
            rx
        }
    }

    fn cell() -> Arc<crate::breaker::BreakerCell> {
        crate::breaker::Breaker::new(&Default::default())
            .cell()
            .clone()
    }

    fn msg(p: Priority, len: usize, id: u32) -> Message {
        Message::new(vec![0u8; len])
            .with_priority(p)
            .with_id(id.to_string())
    }

    fn limits(max_messages: usize, overflow: OverflowPolicy) -> UserLimits {
        UserLimits {
            max_messages,
            max_bytes: 1 << 20,
            overflow,
        }
    }

    #[test]
    fn drop_oldest_never_evicts_more_urgent() {
        let l = limits(2, OverflowPolicy::DropOldest);
        let mut h = Harness::new(4);
        let mut put = |p, id| h.send(msg(p, 1, id), None, &l);
        assert_eq!(
            put(Priority::Critical, 1),
            SendOutcome::Queued { evicted: 0 }
        );
        assert_eq!(put(Priority::Low, 2), SendOutcome::Queued { evicted: 0 });
        // A Normal evicts the Low, not the Critical.
        assert_eq!(put(Priority::Normal, 3), SendOutcome::Queued { evicted: 1 });
        // A Low finds only more urgent messages: it is the one dropped.
        assert_eq!(
            put(Priority::Low, 4),
            SendOutcome::Rejected(RejectReason::Dropped)
        );
        assert_eq!(h.m.stats().queued_per_band, [1, 0, 1, 0]);
        let ids: Vec<_> =
            h.m.missed
                .as_ref()
                .unwrap()
                .ids
                .iter()
                .map(|i| i.as_str().to_owned())
                .collect();
        assert_eq!(ids, ["2", "4"]);
        h.m.debug_check(4);
    }

    #[test]
    fn ttl_removes_from_the_middle_of_a_band_and_from_flight() {
        let l = limits(100, OverflowPolicy::DropOldest);
        let mut h = Harness::new(1);
        h.send(msg(Priority::Normal, 3, 1), None, &l);
        h.send(msg(Priority::Normal, 3, 2), Some(10), &l);
        h.send(msg(Priority::Normal, 3, 3), None, &l);
        h.advance(10);
        assert_eq!(h.m.stats().queued_per_band, [0, 0, 2, 0]);
        assert_eq!(h.m.missed.as_ref().unwrap().manifest.expired, 1);
        // In flight: delivered with a deadline, never acknowledged.
        let mut rx = h.attach();
        h.send(msg(Priority::Critical, 3, 4), Some(5), &l);
        assert_eq!(rx.try_recv().unwrap().seq(), 1);
        h.with(|m, cx| {
            m.settle(1, cx);
            m.fill_window(cx);
        });
        assert_eq!(h.m.stats().in_flight, 1);
        assert_eq!(
            rx.try_recv().unwrap().message().priority(),
            Priority::Critical
        );
        h.advance(15);
        assert_eq!(
            h.m.missed.as_ref().unwrap().manifest.expired,
            1,
            "counted since the attach"
        );
        assert_eq!(h.m.in_flight_bytes, 0, "the expired payload is freed");
        // Its copy may still wait in the outbox, so it keeps the window slot until acked.
        assert_eq!((h.m.stats().in_flight, h.m.stats().queued()), (1, 1));
        h.with(|m, cx| {
            m.settle(2, cx);
            m.fill_window(cx);
        });
        assert_eq!((h.m.stats().in_flight, h.m.stats().queued()), (1, 0));
        // A new session never gets the expired message again.
        let mut rx = h.attach();
        assert_eq!(rx.try_recv().unwrap().seq(), 3);
        assert!(rx.try_recv().is_err());
        h.m.debug_check(1);
        assert_eq!(h.wheel.len(), 0, "every timer accounted for");
    }

    #[test]
    fn away_retention_depends_on_how_the_session_closed() {
        let l = limits(10, OverflowPolicy::DropOldest);
        for (reason, keep) in [(CloseReason::Normal, 1000), (CloseReason::Abnormal, 100)] {
            let mut h = Harness::new(4);
            let _rx = h.attach();
            h.with(|m, cx| m.detach(reason, &RETENTION, cx));
            h.send(msg(Priority::Low, 1, 1), None, &l);
            assert_eq!(h.advance(keep - 1), 0);
            assert_eq!(h.advance(keep), 1, "{reason:?}");
        }
    }

    #[test]
    fn idle_mailboxes_go_after_the_idle_time_and_a_message_keeps_them() {
        let l = limits(10, OverflowPolicy::DropOldest);
        let mut h = Harness::new(4);
        h.with(|m, cx| m.schedule_removal(&RETENTION, cx));
        assert_eq!(h.advance(49), 0);
        h.send(msg(Priority::Low, 1, 1), None, &l);
        assert_eq!(
            h.advance(60),
            0,
            "no longer idle: kept for the away retention"
        );
        assert_eq!(h.advance(1000), 1);
    }

    /// Random operations on one mailbox, with the structural invariants checked after each
    /// and the received seqs checked to be strictly increasing per session.
    #[test]
    fn invariants_hold_under_random_operations() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..200 {
            let l = UserLimits {
                max_messages: 1 + next(4) as usize,
                max_bytes: 8 + next(40) as usize,
                overflow: [
                    OverflowPolicy::DropOldest,
                    OverflowPolicy::DropNewest,
                    OverflowPolicy::Reject,
                ][next(3) as usize],
            };
            let mut h = Harness::new(3);
            h.m.epoch = Epoch(round);
            h.with(|m, cx| m.schedule_removal(&RETENTION, cx));
            let mut rx: Option<outbox::OutboxReceiver<Delivery>> = None;
            let mut last_seq = 0;
            for step in 0..60 {
                match next(7) {
                    0 | 1 => {
                        let p = Priority::ALL[next(4) as usize];
                        let ttl = [None, Some(1), Some(30)][next(3) as usize];
                        let mut m = msg(p, next(12) as usize, step);
                        if next(3) == 0 {
                            let index = next(6) as u32;
                            let stream = format!("s{}-{round}", next(2));
                            m = m.with_stream_part(crate::StreamPart::new(
                                stream,
                                index,
                                index == 5,
                            ));
                        }
                        h.send(m, ttl, &l);
                    }
                    2 => {
                        let (tx, r) = outbox::channel(h.window);
                        let shared =
                            Arc::new(SessionShared::new(UserId::new("u").unwrap(), cell()));
                        let resume = Some(ResumePoint {
                            epoch: Epoch(round),
                            last_seq,
                        });
                        h.with(|m, cx| m.attach(Live::new(tx, shared), resume, true, cx));
                        rx = Some(r);
                        last_seq = 0;
                    }
                    3 => {
                        if let Some(r) = rx.as_mut() {
                            while let Ok(d) = r.try_recv() {
                                assert!(d.seq() > last_seq, "seqs increase within a session");
                                last_seq = d.seq();
                            }
                        }
                    }
                    4 => {
                        if rx.is_some() {
                            h.with(|m, cx| {
                                m.settle(last_seq, cx);
                                m.fill_window(cx);
                            });
                        }
                    }
                    5 => {
                        let to = h.now + next(20);
                        if h.advance(to) > 0 {
                            break; // the mailbox would be removed by its shard here
                        }
                    }
                    _ => {
                        if rx.take().is_some() {
                            h.with(|m, cx| m.detach(CloseReason::Abnormal, &RETENTION, cx));
                        }
                    }
                }
                h.m.debug_check(h.window);
                let (held, held_bytes) = h.m.stream_held();
                assert!(h.m.queued_bytes + held_bytes <= l.max_bytes);
                assert!(h.m.queued + held <= l.max_messages);
            }
        }
    }
}
