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
//!
//! This file holds the mailbox's state; its behaviour is split by concern, one `impl Mailbox`
//! each: `admit.rs` (caps, overflow, losses), `window.rs` (delivery, acks, expiry),
//! `streams.rs` (held parts, stream timers, aborts) and `attach.rs` (sessions coming and
//! going, retention, removal).

use std::collections::VecDeque;

use crate::breaker::BreakerState;
use crate::config::UserLimits;
use crate::loom::Arc;
use crate::message::{Delivery, DeviceId, Message, MessageId};
use crate::metrics::{Gauges, MailboxStats, ShardRecorder, UserCounters};
use crate::session::{Epoch, MissedManifest};
use crate::shard::link::SessionShared;
use crate::shard::streams::{Stream, StreamLimits, Streams};
use crate::sync::outbox::{OutboxNotifier, OutboxSender};
use crate::time::{TimerHandle, Wheel};

mod admit;
mod attach;
mod streams;
mod window;

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
    /// When the session attached, or (without one) when the last one left or the mailbox was
    /// created: what an operator sees, and how the device away longest is found.
    since: u64,
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
            since: now,
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

    /// Payload bytes waiting in the bands.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
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

    /// Since when the mailbox has been connected, or away (ms).
    pub(crate) fn since(&self) -> u64 {
        self.since
    }

    pub(crate) fn stats(&self, device: Option<DeviceId>) -> MailboxStats {
        MailboxStats {
            device,
            since_ms: self.since,
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
    use crate::{
        CloseReason, OverflowPolicy, Priority, RejectReason, ResumePoint, SendOutcome, UserId,
    };

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
            let shared = Arc::new(SessionShared::new(
                UserId::new("u").unwrap(),
                DeviceId::default(),
                cell(),
            ));
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

    /// What one more device costs per message its mailbox keeps: one of these entries (the
    /// payload and the id are shared, a reference count each), quoted in
    /// docs/architecture.md; keep the two in step.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_queued_or_in_flight_entry_is_128_bytes() {
        assert_eq!(std::mem::size_of::<Queued>(), 128);
        assert_eq!(std::mem::size_of::<InFlight>(), 128);
        // 8 of them: when the producer called, for the latency histograms.
        assert_eq!(std::mem::size_of::<Message>(), 88);
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
        assert_eq!(h.m.stats(None).queued_per_band, [1, 0, 1, 0]);
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
        assert_eq!(h.m.stats(None).queued_per_band, [0, 0, 2, 0]);
        assert_eq!(h.m.missed.as_ref().unwrap().manifest.expired, 1);
        // In flight: delivered with a deadline, never acknowledged.
        let mut rx = h.attach();
        h.send(msg(Priority::Critical, 3, 4), Some(5), &l);
        assert_eq!(rx.try_recv().unwrap().seq(), 1);
        h.with(|m, cx| {
            m.settle(1, cx);
            m.fill_window(cx);
        });
        assert_eq!(h.m.stats(None).in_flight, 1);
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
        assert_eq!(
            (h.m.stats(None).in_flight, h.m.stats(None).queued()),
            (1, 1)
        );
        h.with(|m, cx| {
            m.settle(2, cx);
            m.fill_window(cx);
        });
        assert_eq!(
            (h.m.stats(None).in_flight, h.m.stats(None).queued()),
            (1, 0)
        );
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
                        let shared = Arc::new(SessionShared::new(
                            UserId::new("u").unwrap(),
                            DeviceId::default(),
                            cell(),
                        ));
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
