//! A user's live connection to the engine: receive deliveries, acknowledge them, close.

use std::fmt;
use std::future::poll_fn;
use std::task::{Context, Poll};

use crate::breaker::{Breaker, BreakerState, Transition};
use crate::error::{AckError, TryRecvError};
use crate::loom::Arc;
use crate::message::{Delivery, DeviceId, UserId};
use crate::session::{CloseReason, ConnectInfo, EndReason, Epoch, MissedManifest, ResumePoint};
use crate::shard::link::{end_reason, SessionShared};
use crate::shard::ShardShared;
use crate::sync::outbox::{OutboxReceiver, TryRecv};
use crate::time::Clock;
/// A connection of one of a user's devices: deliveries arrive in order (in-flight re-deliveries first, then the
/// backlog most urgent first, then live messages), each with its seq.
///
/// At most `window` deliveries are unacknowledged at a time; acknowledge with [`ack`](Self::ack)
/// to let more through. Dropping a session closes it as [`CloseReason::Abnormal`].
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tether::{Engine, Message, UserId, CloseReason};
///
/// let engine = Engine::builder().shards(1).build().unwrap();
/// let bob = UserId::new("bob").unwrap();
/// engine.send(&bob, Message::new("one")).await.unwrap();
///
/// let mut session = engine.connect(&bob, None).await.unwrap();
/// let d = session.recv().await.unwrap();
/// assert_eq!((d.seq(), &d.payload()[..]), (1, &b"one"[..]));
/// session.ack(d.seq()).unwrap();
/// assert!(session.ack(2).is_err()); // never delivered
/// session.close(CloseReason::Normal);
/// # });
/// ```
pub struct Session {
    user: UserId,
    outbox: OutboxReceiver<Delivery>,
    shared: Arc<SessionShared>,
    shard: Arc<ShardShared>,
    info: ConnectInfo,
    last_received: u64,
    ended: Option<EndReason>,
    /// Whether the worker may have attached this session (its connect command was sent).
    submitted: bool,
    breaker: Breaker,
    clock: Clock,
}

impl Session {
    pub(crate) fn new(
        user: UserId,
        outbox: OutboxReceiver<Delivery>,
        shared: Arc<SessionShared>,
        shard: Arc<ShardShared>,
        breaker: Breaker,
        clock: Clock,
    ) -> Self {
        Self {
            breaker,
            clock,
            user,
            outbox,
            shared,
            shard,
            info: ConnectInfo {
                epoch: Epoch(0),
                recovered: false,
                redelivered: 0,
                pending: 0,
                missed: MissedManifest::default(),
            },
            last_received: 0,
            ended: None,
            submitted: false,
        }
    }

    /// The connect command is in the shard's inbox: from now on dropping this session must
    /// tell the worker.
    pub(crate) fn mark_submitted(&mut self) {
        self.submitted = true;
    }

    /// Records the connect's outcome. A resume point the engine accepted counts as received
    /// and acknowledged, so acknowledging up to it again (a client repeating its last ack after
    /// a reconnect) is a harmless no-op rather than an error.
    pub(crate) fn set_info(&mut self, info: ConnectInfo, resume: Option<ResumePoint>) {
        if let (true, Some(r)) = (info.recovered, resume) {
            self.last_received = self.last_received.max(r.last_seq);
            self.shared.raise_ack(r.last_seq);
        }
        self.info = info;
    }

    /// The user.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The device ([`DeviceId::default`] for a plain [`Engine::connect`](crate::Engine::connect)).
    pub fn device(&self) -> &DeviceId {
        &self.shared.device
    }

    /// What the connect found: epoch, whether the resume point was honoured, missed messages.
    pub fn info(&self) -> &ConnectInfo {
        &self.info
    }

    /// The point to resume from after a disconnect: this epoch and the highest seq received.
    pub fn resume_point(&self) -> ResumePoint {
        ResumePoint {
            epoch: self.info.epoch,
            last_seq: self.last_received,
        }
    }

    /// The highest seq received so far (0 if none).
    pub fn last_received(&self) -> u64 {
        self.last_received
    }

    /// Why the engine ended this session, once that has been observed.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.ended
            .or_else(|| self.outbox.end_code().map(end_reason))
    }

    /// Waits for the next delivery. `None` once the session has ended (replaced or shut down)
    /// and everything delivered to it has been received.
    pub async fn recv(&mut self) -> Option<Delivery> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The poll form of [`recv`](Self::recv).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        match self.outbox.poll_recv(cx) {
            Poll::Ready(Ok(d)) => {
                self.last_received = self.last_received.max(d.seq());
                Poll::Ready(Some(d))
            }
            Poll::Ready(Err(code)) => {
                self.ended = Some(end_reason(code));
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Takes the next delivery without waiting.
    pub fn try_recv(&mut self) -> Result<Delivery, TryRecvError> {
        match self.outbox.try_recv() {
            Ok(d) => {
                self.last_received = self.last_received.max(d.seq());
                Ok(d)
            }
            Err(TryRecv::Empty) => Err(TryRecvError::Empty),
            Err(TryRecv::Ended(code)) => {
                let reason = end_reason(code);
                self.ended = Some(reason);
                Err(TryRecvError::Ended(reason))
            }
        }
    }

    /// Moves up to `max` ready deliveries into `out` without waiting; returns how many.
    pub fn drain(&mut self, out: &mut Vec<Delivery>, max: usize) -> usize {
        let start = out.len();
        let n = self.outbox.drain_into(out, max);
        if let Some(top) = out[start..].iter().map(Delivery::seq).max() {
            self.last_received = self.last_received.max(top);
        }
        n
    }

    /// Acknowledges every delivery with seq <= `seq` (cumulative). Refused, changing nothing,
    /// if `seq` is beyond what this session received or the session has ended.
    pub fn ack(&self, seq: u64) -> Result<(), AckError> {
        if self.end_reason().is_some() {
            return Err(AckError::Ended);
        }
        if seq > self.last_received {
            return Err(AckError::NotDelivered {
                seq,
                last_received: self.last_received,
            });
        }
        if self.shared.raise_ack(seq) {
            self.shard.signal(&self.shared);
        }
        Ok(())
    }

    /// Reports that writing a delivery to the user failed (a write error or a write timeout).
    /// Enough consecutive failures open the session's circuit breaker: the engine then
    /// delivers nothing new to this session (messages wait in the mailbox, urgent ones still
    /// first) until the cooldown has passed, then allows one trial delivery. Returns the
    /// transition, if this report caused one.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use tether::breaker::{BreakerConfig, BreakerState};
    /// use tether::{Engine, UserId};
    ///
    /// let config = BreakerConfig { failure_threshold: 2, ..BreakerConfig::default() };
    /// let engine = Engine::builder().breaker(config).build().unwrap();
    /// let mut s = engine.connect(&UserId::new("hal").unwrap(), None).await.unwrap();
    /// assert!(s.report_delivery_failure().is_none());
    /// assert!(s.report_delivery_failure().is_some());
    /// assert!(matches!(s.breaker_state(), BreakerState::Open { .. }));
    /// # });
    /// ```
    pub fn report_delivery_failure(&mut self) -> Option<Transition> {
        let t = self.breaker.record_failure(self.clock.now_ms());
        if t.is_some() {
            self.shard.signal(&self.shared);
        }
        t
    }

    /// Reports that a delivery was written to the user. After a trial this closes the
    /// breaker and delivery resumes; otherwise it resets the failure count.
    pub fn report_delivery_success(&mut self) -> Option<Transition> {
        let t = self.breaker.record_success(self.clock.now_ms());
        if t.is_some() {
            self.shard.signal(&self.shared);
        }
        t
    }

    /// The session's circuit breaker state. A writer should not write while it is Open.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The session's circuit breaker, shared with its shard worker.
    #[cfg(all(feature = "server", not(loom)))]
    pub(crate) fn breaker_cell(&self) -> &Arc<crate::breaker::BreakerCell> {
        self.breaker.cell()
    }

    /// Closes the session. Unacknowledged deliveries stay in the mailbox and are delivered
    /// again to the next session.
    pub fn close(mut self, reason: CloseReason) {
        self.request_close(reason);
    }

    fn request_close(&mut self, reason: CloseReason) {
        if !self.submitted {
            return;
        }
        self.submitted = false;
        self.shared.request_close(reason);
        self.shard.signal(&self.shared);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.request_close(CloseReason::Abnormal);
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("device", &self.shared.device)
            .field("epoch", &self.info.epoch)
            .field("last_received", &self.last_received)
            .finish_non_exhaustive()
    }
}
