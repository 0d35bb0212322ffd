//! A session's outbox: the SPSC ring from the shard worker to the session, the session task's
//! waker, and the end-of-session flag, as one unit.
//!
//! The worker pushes a batch, then calls [`OutboxSender::notify`] once. The session's
//! `poll_recv` follows the classic register-then-recheck order (pop, register the waker, pop
//! again), which together with [`AtomicWaker`]'s handshake means a value or an end pushed
//! concurrently is never missed. The end is reported only after every value pushed before it
//! has been received, so a flush followed by a close hands over everything.
//!
//! `ended` layout: `0` while open, otherwise the end code chosen by the worker (`1..=255`).

use std::task::{Context, Poll};

use super::waker::AtomicWaker;
use super::{spsc, Full};
use crate::loom::{Arc, AtomicU8, Ordering};

struct Shared {
    waker: AtomicWaker,
    ended: AtomicU8,
}

/// Creates an outbox with room for at least `capacity` values.
pub(crate) fn channel<T>(capacity: usize) -> (OutboxSender<T>, OutboxReceiver<T>) {
    let (tx, rx) = spsc::channel(capacity);
    let shared = Arc::new(Shared {
        waker: AtomicWaker::new(),
        ended: AtomicU8::new(0),
    });
    (
        OutboxSender {
            ring: tx,
            shared: shared.clone(),
        },
        OutboxReceiver { ring: rx, shared },
    )
}

/// The worker's end.
pub(crate) struct OutboxSender<T> {
    ring: spsc::Producer<T>,
    shared: Arc<Shared>,
}

impl<T> OutboxSender<T> {
    /// Appends a value without waking the session; call [`notify`](Self::notify) after a batch.
    pub(crate) fn push(&mut self, value: T) -> Result<(), T> {
        self.ring.push(value).map_err(Full::into_inner)
    }

    /// Ends the session with `code` (non-zero) and wakes it. The first end wins.
    pub(crate) fn end(&self, code: u8) {
        debug_assert_ne!(code, 0);
        // Release: values pushed before the end are visible to whoever sees the end.
        let _ = self
            .shared
            .ended
            .compare_exchange(0, code, Ordering::Release, Ordering::Relaxed);
        self.shared.waker.wake();
    }

    /// A handle that can wake the session later, after a batch of pushes.
    pub(crate) fn notifier(&self) -> OutboxNotifier {
        OutboxNotifier(self.shared.clone())
    }
}

/// Wakes an outbox's session; see [`OutboxSender::notifier`].
pub(crate) struct OutboxNotifier(Arc<Shared>);

impl OutboxNotifier {
    pub(crate) fn notify(&self) {
        self.0.waker.wake();
    }
}

/// Why [`OutboxReceiver::try_recv`] returned no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryRecv {
    /// Nothing now; more may come.
    Empty,
    /// The session ended with this code and everything before the end was received.
    Ended(u8),
}

/// The session's end.
pub(crate) struct OutboxReceiver<T> {
    ring: spsc::Consumer<T>,
    shared: Arc<Shared>,
}

impl<T> OutboxReceiver<T> {
    /// Takes a value without waiting.
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecv> {
        if let Some(v) = self.ring.pop() {
            return Ok(v);
        }
        // Acquire: pairs with `end`'s Release, so values pushed before the end are visible to
        // the pop below.
        match self.shared.ended.load(Ordering::Acquire) {
            0 => Err(TryRecv::Empty),
            code => self.ring.pop().ok_or(TryRecv::Ended(code)),
        }
    }

    /// Moves up to `max` available values into `out`, without waiting.
    pub(crate) fn drain_into(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        self.ring.drain_into(out, max)
    }

    /// The end code, if the worker ended the session (values may still be waiting).
    pub(crate) fn end_code(&self) -> Option<u8> {
        match self.shared.ended.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Waits for a value: `Ready(Ok(v))`, or `Ready(Err(code))` once the session has ended and
    /// every earlier value has been received.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, u8>> {
        match self.try_recv() {
            Ok(v) => return Poll::Ready(Ok(v)),
            Err(TryRecv::Ended(code)) => return Poll::Ready(Err(code)),
            Err(TryRecv::Empty) => {}
        }
        self.shared.waker.register(cx.waker());
        // Re-check after registering: a push or end that raced with `register` either is
        // visible now or will wake the waker we just stored.
        match self.try_recv() {
            Ok(v) => Poll::Ready(Ok(v)),
            Err(TryRecv::Ended(code)) => Poll::Ready(Err(code)),
            Err(TryRecv::Empty) => Poll::Pending,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn end_is_seen_after_values() {
        let (mut tx, mut rx) = channel::<u32>(4);
        tx.push(1).unwrap();
        tx.end(3);
        tx.end(4);
        assert_eq!(rx.end_code(), Some(3));
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Err(TryRecv::Ended(3)));
    }
}

#[cfg(all(test, loom))]
mod loom_outbox {
    use std::future::poll_fn;

    use super::*;
    use loom::thread;

    /// The worker pushes two values with a wake after each, then ends the session; the
    /// session's task sleeps between polls. Every value arrives in order, then the end, and
    /// the task is never left asleep with something to receive (loom reports a deadlock).
    #[test]
    fn loom_outbox_push_wake_end() {
        loom::model(|| {
            let (mut tx, mut rx) = channel::<u32>(2);
            let worker = thread::spawn(move || {
                let notifier = tx.notifier();
                tx.push(1).unwrap();
                notifier.notify();
                tx.push(2).unwrap();
                notifier.notify();
                tx.end(7);
            });
            let mut got = Vec::new();
            let end = loop {
                match loom::future::block_on(poll_fn(|cx| rx.poll_recv(cx))) {
                    Ok(v) => got.push(v),
                    Err(code) => break code,
                }
            };
            worker.join().unwrap();
            assert_eq!(got, vec![1, 2]);
            assert_eq!(end, 7);
        });
    }

    /// A wake racing with a re-registration of a different waker still reaches the task.
    #[test]
    fn loom_waker_register_races_wake() {
        loom::model(|| {
            let (mut tx, mut rx) = channel::<u32>(1);
            let worker = thread::spawn(move || {
                tx.push(5).unwrap();
                tx.notifier().notify();
            });
            // First poll with one waker, then block with another: the notify must hit the
            // one registered last or be seen by the re-check.
            let first =
                loom::future::block_on(poll_fn(|cx| std::task::Poll::Ready(rx.poll_recv(cx))));
            let value = match first {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => loom::future::block_on(poll_fn(|cx| rx.poll_recv(cx))),
            };
            worker.join().unwrap();
            assert_eq!(value, Ok(5));
        });
    }
}
