//! A user's live connection to the engine: receive deliveries, acknowledge them, close.

use std::fmt;
use std::future::poll_fn;
use std::str::FromStr;
use std::task::{Context, Poll};

use crate::breaker::{Breaker, BreakerCell, BreakerState, Transition};
use crate::clock::Clock;
use crate::error::AckError;
use crate::loom::{Arc, AtomicU64, AtomicU8, Ordering};
use crate::message::{Delivery, MessageId, UserId};
use crate::ring::outbox::{OutboxReceiver, TryRecv};
use crate::ring::signal::{Link, Linked};
use crate::shard::ShardShared;

/// End codes the worker writes into a session's outbox.
pub(crate) const END_REPLACED: u8 = 1;
pub(crate) const END_SHUTDOWN: u8 = 2;

/// Identifies one life of a user's mailbox. Random, fixed while the mailbox exists; a resume
/// point from another epoch cannot be honoured.
///
/// Written as 16 lower-case hex digits.
///
/// ```
/// use tether::Epoch;
/// let e: Epoch = "00000000000000ff".parse().unwrap();
/// assert_eq!(e.to_string(), "00000000000000ff");
/// assert!("xyz".parse::<Epoch>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(pub(crate) u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The text is not 1 to 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an epoch is 1 to 16 hexadecimal digits")]
pub struct ParseEpochError;

impl FromStr for Epoch {
    type Err = ParseEpochError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 16 {
            return Err(ParseEpochError);
        }
        u64::from_str_radix(s, 16)
            .map(Epoch)
            .map_err(|_| ParseEpochError)
    }
}

/// Where a reconnecting client left off: the epoch it knew and the highest seq it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// The epoch from the previous [`ConnectInfo`].
    pub epoch: Epoch,
    /// The highest seq received. Everything up to it counts as acknowledged.
    pub last_seq: u64,
}

/// What a user lost since the previous connect, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MissedManifest {
    /// Dropped by the overflow policies DropOldest and DropNewest.
    pub evicted: u64,
    /// Refused by the Reject policy or because the payload exceeded the user's byte cap.
    pub rejected: u64,
    /// Refused by the engine-wide memory budget.
    pub shed: u64,
    /// Expired before they were acknowledged: waiting in a band, or delivered to a session
    /// that did not acknowledge them in time.
    pub expired: u64,
    /// Copies refused as duplicates (not a loss: the first copy was kept; not in `total`).
    pub deduplicated: u64,
    /// Ids of the most recent dropped messages that had ids, oldest first.
    pub ids: Vec<MessageId>,
}

impl MissedManifest {
    pub(crate) fn with_ids(mut self, ids: Vec<MessageId>) -> Self {
        self.ids = ids;
        self
    }

    /// Total messages lost.
    pub fn total(&self) -> u64 {
        self.evicted + self.rejected + self.shed + self.expired
    }
}

/// What [`Engine::connect`](crate::Engine::connect) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    /// The mailbox's epoch: keep it with the last seq received to resume later.
    pub epoch: Epoch,
    /// True if a resume point was given and honoured: nothing before it is sent again.
    pub recovered: bool,
    /// Unacknowledged messages delivered again (with their original seqs) at the start.
    pub redelivered: usize,
    /// Messages still waiting in the bands after the window was filled.
    pub pending: usize,
    /// What was lost since the previous connect.
    pub missed: MissedManifest,
}

/// How a session ended by its own side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A clean goodbye.
    Normal,
    /// The connection broke (also what dropping a `Session` means).
    Abnormal,
}

/// Why the engine ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// A newer session of the same user took over.
    Replaced,
    /// The engine shut down.
    Shutdown,
}

impl EndReason {
    fn from_code(code: u8) -> Self {
        match code {
            END_REPLACED => EndReason::Replaced,
            _ => EndReason::Shutdown,
        }
    }
}

/// Why [`Session::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing to receive right now.
    #[error("no delivery ready")]
    Empty,
    /// The session ended; everything delivered to it was received.
    #[error("session ended: {0:?}")]
    Ended(EndReason),
}

/// The part of a session its shard worker reads: the ack watermark and the close request.
pub(crate) struct SessionShared {
    link: Link<SessionShared>,
    pub(crate) user: UserId,
    /// The session's circuit breaker as the worker sees it.
    pub(crate) breaker: Arc<BreakerCell>,
    acked: AtomicU64,
    /// 0 while open; 1 Normal, 2 Abnormal.
    close: AtomicU8,
}

impl Linked for SessionShared {
    fn link(&self) -> &Link<Self> {
        &self.link
    }
}

impl SessionShared {
    pub(crate) fn new(user: UserId, breaker: Arc<BreakerCell>) -> Self {
        Self {
            link: Link::new(),
            user,
            breaker,
            acked: AtomicU64::new(0),
            close: AtomicU8::new(0),
        }
    }

    /// The highest seq acknowledged so far. Visibility comes from the signal list's handover.
    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// The close the session asked for, if any.
    pub(crate) fn close_requested(&self) -> Option<CloseReason> {
        match self.close.load(Ordering::Relaxed) {
            0 => None,
            1 => Some(CloseReason::Normal),
            _ => Some(CloseReason::Abnormal),
        }
    }
}

/// A user's connection: deliveries arrive in order (in-flight re-deliveries first, then the
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
            self.shared.acked.fetch_max(r.last_seq, Ordering::Relaxed);
        }
        self.info = info;
    }

    /// The user.
    pub fn user(&self) -> &UserId {
        &self.user
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
            .or_else(|| self.outbox.end_code().map(EndReason::from_code))
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
                self.ended = Some(EndReason::from_code(code));
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
                let reason = EndReason::from_code(code);
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
        // Relaxed: the signal list's push (AcqRel) publishes it to the worker.
        if self.shared.acked.fetch_max(seq, Ordering::Relaxed) < seq {
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
    pub(crate) fn breaker_cell(&self) -> &Arc<BreakerCell> {
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
        let code = match reason {
            CloseReason::Normal => 1,
            CloseReason::Abnormal => 2,
        };
        // Relaxed: published by the signal list's push, like the ack watermark.
        self.shared.close.store(code, Ordering::Relaxed);
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
            .field("epoch", &self.info.epoch)
            .field("last_received", &self.last_received)
            .finish_non_exhaustive()
    }
}
