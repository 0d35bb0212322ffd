//! What a session and its shard worker share besides the outbox: the ack watermark and the
//! close request the session writes, the breaker cell both read, and the session's place in
//! the shard's signal list. The worker holds one per attached session; the
//! [`Session`](crate::Session) handle holds the other end.

use crate::breaker::BreakerCell;
use crate::loom::{Arc, AtomicU64, AtomicU8, Ordering};
use crate::message::{DeviceId, UserId};
use crate::session::{CloseReason, EndReason};
use crate::sync::signal::{Link, Linked};

/// End codes the worker writes into a session's outbox.
pub(crate) const END_REPLACED: u8 = 1;
pub(crate) const END_SHUTDOWN: u8 = 2;

/// The reason an end code stands for.
pub(crate) fn end_reason(code: u8) -> EndReason {
    match code {
        END_REPLACED => EndReason::Replaced,
        _ => EndReason::Shutdown,
    }
}

/// The part of a session its shard worker reads: the ack watermark and the close request.
pub(crate) struct SessionShared {
    link: Link<SessionShared>,
    pub(crate) user: UserId,
    /// The device it is: the worker finds the session's mailbox by user and device.
    pub(crate) device: DeviceId,
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
    pub(crate) fn new(user: UserId, device: DeviceId, breaker: Arc<BreakerCell>) -> Self {
        Self {
            link: Link::new(),
            user,
            device,
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

    /// Raises the ack watermark to `seq`; true if it rose (the worker must be told).
    pub(crate) fn raise_ack(&self, seq: u64) -> bool {
        // Relaxed: the signal list's push (AcqRel) publishes it to the worker.
        self.acked.fetch_max(seq, Ordering::Relaxed) < seq
    }

    /// Records the close the session asks for; the caller then signals the worker.
    pub(crate) fn request_close(&self, reason: CloseReason) {
        let code = match reason {
            CloseReason::Normal => 1,
            CloseReason::Abnormal => 2,
        };
        // Relaxed: published by the signal list's push, like the ack watermark.
        self.close.store(code, Ordering::Relaxed);
    }
}
