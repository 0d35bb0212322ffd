//! A slot for one task's `Waker`, registered by the consumer and fired by the producer.
//!
//! The protocol is the `AtomicWaker` of the futures crate (itself from Tokio's early task
//! notification): a three-state word serialises `register` against `wake` without a lock.
//! - `WAITING`: nobody is touching the slot.
//! - `REGISTERING`: the consumer is writing its waker into the slot.
//! - `WAKING`: a producer is taking the waker out (may be combined with `REGISTERING`, which
//!   tells the registering consumer to wake itself: a wake-up is never lost).

use std::task::Waker;

use crate::loom::{spin_loop, AtomicUsize, Ordering, UnsafeCell};

const WAITING: usize = 0;
const REGISTERING: usize = 0b01;
const WAKING: usize = 0b10;

pub(crate) struct AtomicWaker {
    state: AtomicUsize,
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: the `state` protocol gives one thread at a time access to `waker`, and `Waker` is
// `Send + Sync`.
unsafe impl Send for AtomicWaker {}
// SAFETY: as above.
unsafe impl Sync for AtomicWaker {}

impl AtomicWaker {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicUsize::new(WAITING),
            waker: UnsafeCell::new(None),
        }
    }

    /// Stores `waker` to be woken by the next `wake`. Only one thread may register at a time
    /// (the session's owner); a `wake` racing with it makes `register` wake `waker` itself.
    pub(crate) fn register(&self, waker: &Waker) {
        // Acquire: see the slot as the last `wake` (or `register`) left it.
        match self.state.compare_exchange(
            WAITING,
            REGISTERING,
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                // SAFETY: REGISTERING is set, so `wake` will not take the slot until we clear it.
                self.waker.with_mut(|slot| unsafe {
                    match &*slot {
                        Some(old) if old.will_wake(waker) => {}
                        _ => *slot = Some(waker.clone()),
                    }
                });
                // AcqRel: Release publishes the slot write to the next `wake`; Acquire on
                // failure sees the state a concurrent `wake` left.
                match self.state.compare_exchange(
                    REGISTERING,
                    WAITING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {}
                    Err(_) => {
                        // A `wake` arrived while we registered and could not take the waker:
                        // it is ours to fire.
                        // SAFETY: the `wake` that set WAKING backed off, leaving us the slot.
                        let pending = self.waker.with_mut(|slot| unsafe { (*slot).take() });
                        self.state.swap(WAITING, Ordering::AcqRel);
                        if let Some(w) = pending {
                            w.wake();
                        }
                    }
                }
            }
            Err(WAKING) => {
                // A `wake` is taking the previous waker right now; make sure this task runs.
                // The spin hint lets the waking thread finish (under loom it yields, without
                // which the re-poll loop would starve it).
                waker.wake_by_ref();
                spin_loop();
            }
            Err(_) => {
                // Concurrent `register` calls are a usage error here (one consumer); the other
                // registration stands.
            }
        }
    }

    /// Wakes the registered task, if any.
    pub(crate) fn wake(&self) {
        // AcqRel: Acquire sees the waker a `register` published; Release orders our earlier
        // writes (the values pushed into the outbox) before the task is woken.
        match self.state.fetch_or(WAKING, Ordering::AcqRel) {
            WAITING => {
                // SAFETY: we moved the state from WAITING to WAKING, so the slot is ours.
                let waker = self.waker.with_mut(|slot| unsafe { (*slot).take() });
                // Release: our take happens before the next `register` writes the slot.
                self.state.fetch_and(!WAKING, Ordering::Release);
                if let Some(w) = waker {
                    w.wake();
                }
            }
            _ => {
                // Either a `register` is in progress (it sees WAKING and wakes itself) or
                // another `wake` is running (which fires the same waker).
            }
        }
    }
}
