//! The delivery window: moving the most urgent waiting messages into a live session (as the
//! breaker allows), settling cumulative acks, and expiring messages wherever they wait.

use crate::breaker::{BreakerState, Permit};
use crate::message::{Delivery, Message};
use crate::metrics::Gauges;

use super::{breaker_gauges, Ctx, Dropped, Expiry, InFlight, Live, Loss, Mailbox, Timer};

impl Mailbox {
    pub(super) fn window_has_room(&self, window: usize) -> bool {
        self.live.is_some() && self.in_flight.len() < window
    }

    /// Whether one more message may be delivered now: a live session with room in its window
    /// and a breaker that allows it. Call it only with a message in hand: when the breaker's
    /// cooldown has ended this starts the trial, which must be that message's delivery.
    pub(super) fn may_deliver(&mut self, cx: &mut Ctx<'_>) -> bool {
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
    pub(super) fn forget_breaker(live: &Live, gauges: &mut Gauges) {
        breaker_gauges(gauges, live.breaker_seen, BreakerState::Closed);
    }

    /// Assigns the next seq, hands the message to the session and keeps it in flight until
    /// it is acknowledged or its deadline passes.
    pub(super) fn deliver(
        &mut self,
        message: Message,
        expires_at: Option<u64>,
        since_us: u64,
        cx: &mut Ctx<'_>,
    ) {
        let live = self.live.as_mut().expect("deliver needs a live session");
        // From the producer's call when the message was stamped (not an abort marker).
        let since_us = message.sent_us().unwrap_or(since_us);
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
}
