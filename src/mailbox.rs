//! One user's mailbox, owned by one shard worker: priority bands, the delivery window, seq and
//! epoch, the live session if any, and what the user missed.
//!
//! Invariants (checked by `debug_check` in tests):
//! - a live session with room in its window has empty bands: whenever the window frees up or a
//!   session attaches, `fill_window` moves the most urgent waiting messages into it;
//! - `in_flight` holds delivered, unacknowledged messages with consecutive seqs starting at
//!   `first_in_flight_seq`, so a cumulative ack pops from the front;
//! - `occupied` has bit `b` set exactly when band `b` is non-empty, so the most urgent
//!   non-empty band is `occupied.trailing_zeros()` and the least urgent is the highest bit.

use std::collections::VecDeque;

use crate::config::{OverflowPolicy, UserLimits};
use crate::loom::Arc;
use crate::message::{Delivery, Message, MessageId, RejectReason, SendOutcome};
use crate::ring::outbox::{OutboxNotifier, OutboxSender};
use crate::session::{
    ConnectInfo, Epoch, MissedManifest, ResumePoint, SessionShared, END_REPLACED,
};
use crate::CloseReason;

/// A band's ring keeps up to this many slots of spare capacity once it empties; beyond that
/// the memory goes back to the allocator.
const KEEP_EMPTY_CAPACITY: usize = 16;

/// The session currently attached to a mailbox.
pub(crate) struct Live {
    pub(crate) outbox: OutboxSender<Delivery>,
    pub(crate) shared: Arc<SessionShared>,
    /// The wake-list generation in which this session was last queued for a notify.
    notified_gen: u64,
}

impl Live {
    pub(crate) fn new(outbox: OutboxSender<Delivery>, shared: Arc<SessionShared>) -> Self {
        Self {
            outbox,
            shared,
            notified_gen: 0,
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

/// A snapshot of one user's mailbox, from [`Engine::mailbox_stats`](crate::Engine::mailbox_stats).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MailboxStats {
    /// Messages waiting in each band, Critical first.
    pub queued_per_band: [usize; 4],
    /// Payload bytes waiting in the bands.
    pub queued_bytes: usize,
    /// Delivered, unacknowledged messages.
    pub in_flight: usize,
    /// Their payload bytes.
    pub in_flight_bytes: usize,
    /// The seq the next delivery will get.
    pub next_seq: u64,
    /// The mailbox's epoch.
    pub epoch: Epoch,
    /// Whether a session is attached.
    pub connected: bool,
    /// Losses recorded since the last connect (they go into the next connect's manifest).
    pub missed: u64,
}

impl MailboxStats {
    /// Messages waiting in all bands.
    pub fn queued(&self) -> usize {
        self.queued_per_band.iter().sum()
    }
}

/// Counts of what a user lost since the last connect, with the most recent ids.
#[derive(Default)]
struct Missed {
    manifest: MissedManifest,
    ids: VecDeque<MessageId>,
}

/// Why a message left a mailbox without being acknowledged.
#[derive(Clone, Copy)]
pub(crate) enum Loss {
    Evicted,
    Rejected,
    Shed,
}

pub(crate) struct Mailbox {
    bands: [VecDeque<Message>; 4],
    band_bytes: [usize; 4],
    occupied: u8,
    queued: usize,
    queued_bytes: usize,
    in_flight: VecDeque<Message>,
    in_flight_bytes: usize,
    first_in_flight_seq: u64,
    next_seq: u64,
    epoch: Epoch,
    live: Option<Live>,
    limits: Option<UserLimits>,
    missed: Missed,
}

impl Mailbox {
    pub(crate) fn new(epoch: Epoch) -> Self {
        Self {
            bands: Default::default(),
            band_bytes: [0; 4],
            occupied: 0,
            queued: 0,
            queued_bytes: 0,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            first_in_flight_seq: 1,
            next_seq: 1,
            epoch,
            live: None,
            limits: None,
            missed: Missed::default(),
        }
    }

    /// Payload bytes this mailbox holds (queued and in flight).
    pub(crate) fn held_bytes(&self) -> usize {
        self.queued_bytes + self.in_flight_bytes
    }

    pub(crate) fn set_limits(&mut self, limits: Option<UserLimits>) {
        self.limits = limits;
    }

    /// Whether `shared` is the session attached right now.
    pub(crate) fn is_attached(&self, shared: &Arc<SessionShared>) -> bool {
        self.live
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(&l.shared, shared))
    }

    /// Takes a message: straight into a live session's window if it has room, else into its
    /// band under the overflow policy.
    pub(crate) fn accept(
        &mut self,
        message: Message,
        window: usize,
        defaults: &UserLimits,
        missed_ids: usize,
        wake: &mut WakeList,
    ) -> SendOutcome {
        if self.window_has_room(window) {
            debug_assert_eq!(self.queued, 0, "a window with room implies empty bands");
            self.deliver(message, wake);
            return SendOutcome::Delivered;
        }
        let limits = self.limits.unwrap_or(*defaults);
        let cost = message.cost();
        if cost > limits.max_bytes {
            self.record_loss(Loss::Rejected, message.id(), missed_ids);
            return SendOutcome::Rejected(RejectReason::LargerThanMailbox);
        }
        let mut evicted = 0;
        if !self.fits(&limits, 1, cost) {
            match limits.overflow {
                OverflowPolicy::Reject => {
                    self.record_loss(Loss::Rejected, message.id(), missed_ids);
                    return SendOutcome::Rejected(RejectReason::MailboxFull);
                }
                OverflowPolicy::DropNewest => {
                    self.record_loss(Loss::Evicted, message.id(), missed_ids);
                    return SendOutcome::Rejected(RejectReason::Dropped);
                }
                OverflowPolicy::DropOldest => match self.evict_for(&limits, &message, missed_ids) {
                    Some(n) => evicted = n,
                    None => {
                        self.record_loss(Loss::Evicted, message.id(), missed_ids);
                        return SendOutcome::Rejected(RejectReason::Dropped);
                    }
                },
            }
        }
        self.push_band(message);
        SendOutcome::Queued { evicted }
    }

    /// Would `extra` more messages of `extra_bytes` fit the backlog caps?
    fn fits(&self, limits: &UserLimits, extra: usize, extra_bytes: usize) -> bool {
        self.queued + extra <= limits.max_messages
            && self.queued_bytes + extra_bytes <= limits.max_bytes
    }

    /// Evicts the oldest messages of the least urgent bands that are no more urgent than
    /// `incoming` until it fits; `None` (evicting nothing) if even evicting all of them would
    /// not make room.
    fn evict_for(
        &mut self,
        limits: &UserLimits,
        incoming: &Message,
        missed_ids: usize,
    ) -> Option<u32> {
        let lowest_eligible = incoming.priority().index();
        let (mut n, mut bytes) = (0, 0);
        for b in lowest_eligible..4 {
            n += self.bands[b].len();
            bytes += self.band_bytes[b];
        }
        let cost = incoming.cost();
        if self.queued - n + 1 > limits.max_messages
            || self.queued_bytes - bytes + cost > limits.max_bytes
        {
            return None;
        }
        let mut evicted = 0;
        while !self.fits(limits, 1, cost) {
            let b = 7 - self.occupied.leading_zeros() as usize;
            debug_assert!(b >= lowest_eligible);
            let victim = self.pop_band(b);
            self.record_loss(Loss::Evicted, victim.id(), missed_ids);
            evicted += 1;
        }
        Some(evicted)
    }

    fn push_band(&mut self, message: Message) {
        let b = message.priority().index();
        self.queued += 1;
        self.queued_bytes += message.cost();
        self.band_bytes[b] += message.cost();
        self.occupied |= 1 << b;
        self.bands[b].push_back(message);
    }

    fn pop_band(&mut self, b: usize) -> Message {
        let band = &mut self.bands[b];
        let message = band
            .pop_front()
            .expect("occupied bit set for an empty band");
        if band.is_empty() {
            self.occupied &= !(1 << b);
            if band.capacity() > KEEP_EMPTY_CAPACITY {
                *band = VecDeque::new();
            }
        }
        self.queued -= 1;
        self.queued_bytes -= message.cost();
        self.band_bytes[b] -= message.cost();
        message
    }

    fn window_has_room(&self, window: usize) -> bool {
        self.live.is_some() && self.in_flight.len() < window
    }

    /// Assigns the next seq, hands the message to the session and keeps it in flight.
    fn deliver(&mut self, message: Message, wake: &mut WakeList) {
        let live = self.live.as_mut().expect("deliver needs a live session");
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight_bytes += message.cost();
        // The outbox holds at least `window` slots and every value in it is also in flight,
        // so this push cannot fail while `in_flight.len() < window`.
        let pushed = live.outbox.push(Delivery::new(seq, message.clone()));
        debug_assert!(pushed.is_ok(), "outbox smaller than the window");
        wake.add(live);
        self.in_flight.push_back(message);
    }

    /// Moves the most urgent waiting messages into the window while it has room.
    pub(crate) fn fill_window(&mut self, window: usize, wake: &mut WakeList) {
        while self.occupied != 0 && self.window_has_room(window) {
            let b = self.occupied.trailing_zeros() as usize;
            let message = self.pop_band(b);
            self.deliver(message, wake);
        }
    }

    /// Settles every in-flight message with seq <= `upto` (a cumulative ack).
    pub(crate) fn settle(&mut self, upto: u64) {
        while self.first_in_flight_seq <= upto {
            let Some(message) = self.in_flight.pop_front() else {
                break;
            };
            self.in_flight_bytes -= message.cost();
            self.first_in_flight_seq += 1;
        }
        if self.in_flight.is_empty() && self.in_flight.capacity() > KEEP_EMPTY_CAPACITY {
            self.in_flight = VecDeque::new();
        }
    }

    /// Attaches a new session, replacing any live one, and starts delivery: in-flight messages
    /// past the resume point first, with their original seqs, then the bands.
    pub(crate) fn attach(
        &mut self,
        live: Live,
        resume: Option<ResumePoint>,
        existed: bool,
        window: usize,
        wake: &mut WakeList,
    ) -> ConnectInfo {
        if let Some(old) = self.live.take() {
            old.outbox.end(END_REPLACED);
        }
        let recovered = match resume {
            Some(r) if existed && r.epoch == self.epoch && r.last_seq < self.next_seq => {
                self.settle(r.last_seq);
                true
            }
            _ => false,
        };
        let mut live = live;
        for (i, message) in self.in_flight.iter().enumerate() {
            let seq = self.first_in_flight_seq + i as u64;
            let pushed = live.outbox.push(Delivery::new(seq, message.clone()));
            debug_assert!(pushed.is_ok(), "outbox smaller than the window");
        }
        let redelivered = self.in_flight.len();
        if redelivered > 0 {
            wake.add(&mut live);
        }
        self.live = Some(live);
        self.fill_window(window, wake);
        let missed = std::mem::take(&mut self.missed);
        ConnectInfo {
            epoch: self.epoch,
            recovered,
            redelivered,
            pending: self.queued,
            missed: missed.manifest.with_ids(missed.ids.into()),
        }
    }

    /// Detaches the live session after it closed. Its in-flight messages stay, to be
    /// delivered again to the next session.
    pub(crate) fn detach(&mut self, _reason: CloseReason) {
        self.live = None;
    }

    /// Ends the live session from the engine's side (replacement or shutdown).
    pub(crate) fn end_session(&mut self, code: u8) {
        if let Some(live) = self.live.take() {
            live.outbox.end(code);
        }
    }

    pub(crate) fn record_loss(&mut self, loss: Loss, id: Option<&MessageId>, keep_ids: usize) {
        let m = &mut self.missed.manifest;
        match loss {
            Loss::Evicted => m.evicted += 1,
            Loss::Rejected => m.rejected += 1,
            Loss::Shed => m.shed += 1,
        }
        if let (Some(id), true) = (id, keep_ids > 0) {
            if self.missed.ids.len() == keep_ids {
                self.missed.ids.pop_front();
            }
            self.missed.ids.push_back(id.clone());
        }
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
            missed: self.missed.manifest.total(),
        }
    }

    #[cfg(test)]
    pub(crate) fn debug_check(&self, window: usize) {
        for (b, band) in self.bands.iter().enumerate() {
            assert_eq!(band.is_empty(), self.occupied & (1 << b) == 0);
            assert_eq!(
                band.iter().map(Message::cost).sum::<usize>(),
                self.band_bytes[b]
            );
        }
        assert_eq!(
            self.bands.iter().map(VecDeque::len).sum::<usize>(),
            self.queued
        );
        if self.window_has_room(window) {
            assert_eq!(self.queued, 0);
        }
        assert_eq!(
            self.first_in_flight_seq + self.in_flight.len() as u64,
            self.next_seq
        );
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::outbox;
    use crate::{Priority, UserId};

    fn live(window: usize) -> (Live, outbox::OutboxReceiver<Delivery>) {
        let (tx, rx) = outbox::channel(window);
        let shared = Arc::new(SessionShared::new(UserId::new("u").unwrap()));
        (Live::new(tx, shared), rx)
    }

    fn msg(p: Priority, len: usize, id: u32) -> Message {
        Message::new(vec![0u8; len])
            .with_priority(p)
            .with_id(id.to_string())
    }

    #[test]
    fn drop_oldest_never_evicts_more_urgent() {
        let limits = UserLimits {
            max_messages: 2,
            max_bytes: 1 << 20,
            overflow: OverflowPolicy::DropOldest,
        };
        let mut wake = WakeList::new();
        let mut m = Mailbox::new(Epoch(1));
        let put = |m: &mut Mailbox, p, id, wake: &mut WakeList| {
            m.accept(msg(p, 1, id), 4, &limits, 10, wake)
        };
        assert_eq!(
            put(&mut m, Priority::Critical, 1, &mut wake),
            SendOutcome::Queued { evicted: 0 }
        );
        assert_eq!(
            put(&mut m, Priority::Low, 2, &mut wake),
            SendOutcome::Queued { evicted: 0 }
        );
        // A Normal evicts the Low, not the Critical.
        assert_eq!(
            put(&mut m, Priority::Normal, 3, &mut wake),
            SendOutcome::Queued { evicted: 1 }
        );
        // A Low finds only more urgent messages: it is the one dropped.
        assert_eq!(
            put(&mut m, Priority::Low, 4, &mut wake),
            SendOutcome::Rejected(RejectReason::Dropped)
        );
        assert_eq!(m.stats().queued_per_band, [1, 0, 1, 0]);
        let ids: Vec<_> = m.missed.ids.iter().map(|i| i.as_str().to_owned()).collect();
        assert_eq!(ids, ["2", "4"]);
        m.debug_check(4);
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
        let window = 3;
        let mut wake = WakeList::new();
        for round in 0..200 {
            let limits = UserLimits {
                max_messages: 1 + next(4) as usize,
                max_bytes: 8 + next(40) as usize,
                overflow: [
                    OverflowPolicy::DropOldest,
                    OverflowPolicy::DropNewest,
                    OverflowPolicy::Reject,
                ][next(3) as usize],
            };
            let mut m = Mailbox::new(Epoch(round));
            let mut rx: Option<outbox::OutboxReceiver<Delivery>> = None;
            let mut last_seq = 0;
            for step in 0..60 {
                match next(6) {
                    0 | 1 => {
                        let p = Priority::ALL[next(4) as usize];
                        m.accept(
                            msg(p, next(12) as usize, step),
                            window,
                            &limits,
                            5,
                            &mut wake,
                        );
                    }
                    2 => {
                        let (l, r) = live(window);
                        let resume = Some(ResumePoint {
                            epoch: Epoch(round),
                            last_seq,
                        });
                        m.attach(l, resume, true, window, &mut wake);
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
                            m.settle(last_seq);
                            m.fill_window(window, &mut wake);
                        }
                    }
                    _ => {
                        if rx.take().is_some() {
                            m.detach(CloseReason::Abnormal);
                        }
                    }
                }
                wake.flush();
                m.debug_check(window);
                assert!(m.queued_bytes <= limits.max_bytes);
                assert!(m.queued <= limits.max_messages);
            }
        }
    }
}
