//! A session attaching (with or without a resume point) and detaching, and the mailbox's
//! own end: away retention, idle cleanup, and dismantling it.

use std::collections::VecDeque;

use crate::message::Delivery;
use crate::metrics::ShardRecorder;
use crate::session::{ConnectInfo, ResumePoint};
use crate::shard::link::{END_REPLACED, END_SHUTDOWN};
use crate::time::Wheel;
use crate::CloseReason;

use super::{band_gauge, Ctx, Dropped, Live, Mailbox, Retention, Timer};

impl Mailbox {
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
        self.since = cx.now;
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
        self.since = cx.now;
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
    pub(super) fn is_idle(&self) -> bool {
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
}
