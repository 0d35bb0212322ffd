//! A mailbox's side of streams: parts held until their turn, released into the band in
//! index order, stream timers, and aborts that end a stream as a whole.

use std::collections::VecDeque;

use crate::config::{OverflowPolicy, UserLimits};
use crate::message::{AbortReason, Message, Priority};
use crate::outcome::{RejectReason, SendOutcome};
use crate::shard::streams::{Admission, Streams};
use crate::stream::StreamStatus;

use super::{is_part_of, Ctx, Loss, Mailbox, Timer};

impl Mailbox {
    /// Takes a part of a stream (see `stream.rs`): refused, held back until the parts before
    /// it arrive, or released with them into the window or the stream's band. The caps see
    /// the stream as a unit: a part that cannot be kept ends its whole stream.
    pub(super) fn accept_part(
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
    pub(super) fn admit_part(
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
    pub(super) fn schedule_stream(&mut self, slot: u32, cx: &mut Ctx<'_>) {
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
    pub(super) fn end_stream(
        &mut self,
        id: std::sync::Arc<str>,
        reason: AbortReason,
        cx: &mut Ctx<'_>,
    ) {
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
    pub(super) fn abort_slot(&mut self, slot: u32, reason: AbortReason, cx: &mut Ctx<'_>) -> u32 {
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
}
