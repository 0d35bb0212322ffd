//! Admission: a message enters the window or its band under the user's caps and overflow
//! policy (evicting by priority), and what a user lost is recorded for the missed manifest.

use std::collections::VecDeque;

use crate::config::{OverflowPolicy, UserLimits};
use crate::message::{AbortReason, Message, MessageId, Priority, StreamPart};
use crate::metrics::Gauges;
use crate::outcome::{RejectReason, SendOutcome};

use super::{
    band_gauge, is_part_of, Ctx, Expiry, Loss, Mailbox, Queued, Timer, KEEP_EMPTY_CAPACITY,
};

impl Mailbox {
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
    pub(super) fn backlog_empty(&self) -> bool {
        self.queued == 0 && !self.streams.as_ref().is_some_and(|s| s.has_markers())
    }

    /// Would one more message of `cost` bytes fit the backlog caps? Stream parts held back
    /// count against them like queued messages.
    pub(super) fn fits(&self, limits: &UserLimits, cost: usize) -> bool {
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
    pub(super) fn evict_for(
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
    pub(super) fn can_evict_for(
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

    pub(super) fn push_band(
        &mut self,
        message: Message,
        expires_at: Option<u64>,
        cx: &mut Ctx<'_>,
    ) {
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
    pub(super) fn pop_band(&mut self, b: usize, cx: &mut Ctx<'_>) -> Message {
        let q = self.bands[b]
            .pop_front()
            .expect("occupied bit set for an empty band");
        if let Some(e) = q.expiry {
            cx.wheel.cancel(e.timer);
        }
        self.after_band_removal(b, &q.message, &mut cx.rec.gauges);
        q.message
    }

    pub(super) fn after_band_removal(&mut self, b: usize, message: &Message, gauges: &mut Gauges) {
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
}
