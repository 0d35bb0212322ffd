//! Bounded lock-free multi-producer, single-consumer ring: a shard's inbox.
//!
//! The algorithm is Dmitry Vyukov's bounded MPMC queue (as in crossbeam's `array_queue.rs`),
//! specialised to one consumer so that the consumer's index is a plain integer it alone owns.
//!
//! Layout: `capacity` is a power of two; `mask = capacity - 1`. Every slot carries a `stamp`:
//! - `stamp == pos`: the slot is free for the producer that claims position `pos`;
//! - `stamp == pos + 1`: the slot holds the value written at position `pos`, ready to read;
//! - after the read the consumer sets `stamp = pos + capacity`, freeing it for the next lap.
//!
//! Producers claim a position with a CAS on `tail`, then write the value and publish it by
//! storing the stamp with `Release`. The consumer reads the stamp with `Acquire`, so it sees the
//! value, and never touches `tail`. `tail` and the consumer's `head` sit on their own 128-byte
//! lines (two prefetched 64-byte lines on x86) so producers and consumer do not false-share.
//!
//! A push never blocks and never waits for other producers: a full ring is reported at once
//! with the value handed back, which the engine turns into back-pressure.

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use super::Full;
use crate::loom::{spin_loop, Arc, AtomicUsize, Ordering, UnsafeCell};

struct Slot<T> {
    stamp: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

struct Ring<T> {
    tail: CachePadded<AtomicUsize>,
    /// Written by the consumer only; read by producers only for `len()` estimates.
    head: CachePadded<AtomicUsize>,
    mask: usize,
    slots: Box<[Slot<T>]>,
}

// SAFETY: values move from producers to the consumer through the slots; each slot is accessed
// by exactly one side at a time as arbitrated by its stamp, so `T: Send` is all that is needed.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above; shared access only ever touches atomics or a slot the stamp hands over.
unsafe impl<T: Send> Sync for Ring<T> {}

/// Creates a ring with room for at least `capacity` values (rounded up to a power of two,
/// minimum 2). Returns the cloneable sending side and the single receiving side.
///
/// ```
/// use tether::sync::mpsc;
///
/// let (tx, mut rx) = mpsc::channel::<u32>(2);
/// let tx2 = tx.clone();
/// std::thread::spawn(move || tx2.push(1).unwrap()).join().unwrap();
/// tx.push(2).unwrap();
/// assert_eq!(tx.push(3).unwrap_err().into_inner(), 3); // full: the value comes back
/// assert_eq!(rx.pop(), Some(1));
/// assert_eq!(rx.pop(), Some(2));
/// assert_eq!(rx.pop(), None);
/// ```
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let capacity = capacity.max(2).next_power_of_two();
    let slots = (0..capacity)
        .map(|i| Slot {
            stamp: AtomicUsize::new(i),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        })
        .collect();
    let ring = Arc::new(Ring {
        tail: CachePadded::new(AtomicUsize::new(0)),
        head: CachePadded::new(AtomicUsize::new(0)),
        mask: capacity - 1,
        slots,
    });
    (Sender { ring: ring.clone() }, Receiver { ring, head: 0 })
}

/// The producing side; clone it freely, use it from any thread. See [`channel`].
pub struct Sender<T> {
    ring: Arc<Ring<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            ring: self.ring.clone(),
        }
    }
}

impl<T> Sender<T> {
    /// Pushes `value`, or hands it back in [`Full`] if the ring is full. Never blocks.
    pub fn push(&self, value: T) -> Result<(), Full<T>> {
        let ring = &*self.ring;
        let mut tail = ring.tail.load(Ordering::Relaxed);
        loop {
            let slot = &ring.slots[tail & ring.mask];
            // Acquire: pairs with the consumer's Release store of `pos + capacity`, so its read
            // of the previous lap's value happens before we overwrite the slot.
            let stamp = slot.stamp.load(Ordering::Acquire);
            let lag = stamp.wrapping_sub(tail) as isize;
            if lag == 0 {
                // Relaxed is enough for the claim itself: ownership of the slot is transferred
                // by its stamp, not by `tail`.
                match ring.tail.compare_exchange_weak(
                    tail,
                    tail.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: winning the CAS for `tail` while `stamp == tail` makes this
                        // producer the only writer of the slot until it publishes the stamp.
                        slot.value.with_mut(|p| unsafe { (*p).write(value) });
                        // Release: publishes the value to the consumer's Acquire stamp load.
                        slot.stamp.store(tail.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(current) => tail = current,
                }
            } else if lag < 0 {
                // The slot still holds last lap's value: the ring is full unless the consumer
                // has moved on since we read `tail`.
                let now = ring.tail.load(Ordering::Relaxed);
                if now == tail {
                    return Err(Full(value));
                }
                tail = now;
            } else {
                // Another producer claimed this position; catch up.
                spin_loop();
                tail = ring.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Number of values in the ring, approximate while other threads push or pop.
    pub fn len(&self) -> usize {
        let tail = self.ring.tail.load(Ordering::Relaxed);
        let head = self.ring.head.load(Ordering::Relaxed);
        // The consumer may pass the `tail` we read before we read `head`: then the difference
        // is negative, and the ring was (nearly) empty, not full.
        let diff = tail.wrapping_sub(head) as isize;
        (diff.max(0) as usize).min(self.capacity())
    }

    /// True if [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.ring.mask + 1
    }
}

/// The consuming side; exactly one exists per ring. See [`channel`].
pub struct Receiver<T> {
    ring: Arc<Ring<T>>,
    head: usize,
}

impl<T> Receiver<T> {
    /// Takes the oldest value, if one is published. Never blocks.
    pub fn pop(&mut self) -> Option<T> {
        let ring = &*self.ring;
        let slot = &ring.slots[self.head & ring.mask];
        // Acquire: pairs with the producer's Release stamp store, making its value visible.
        if slot.stamp.load(Ordering::Acquire) != self.head.wrapping_add(1) {
            return None;
        }
        // SAFETY: the stamp says a producer wrote this slot for position `head` and nobody else
        // touches it until we publish the next-lap stamp below; `&mut self` makes us the only
        // consumer.
        let value = slot.value.with(|p| unsafe { (*p).assume_init_read() });
        // Release: our read of the value happens before the next lap's producer writes it.
        slot.stamp
            .store(self.head.wrapping_add(ring.mask + 1), Ordering::Release);
        self.head = self.head.wrapping_add(1);
        ring.head.store(self.head, Ordering::Relaxed);
        Some(value)
    }

    /// True if no value is published at the head. A producer that has claimed a slot but not
    /// yet published it counts as empty; it will wake the consumer after publishing.
    pub fn is_empty(&self) -> bool {
        let slot = &self.ring.slots[self.head & self.ring.mask];
        // Acquire, like `pop`; the park handshake orders this load with its own fence.
        slot.stamp.load(Ordering::Acquire) != self.head.wrapping_add(1)
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Values still published in the ring are dropped here; `&mut self` means no producer
        // or consumer is left.
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[head & self.mask];
            if slot.stamp.load(Ordering::Relaxed) != head.wrapping_add(1) {
                break;
            }
            // SAFETY: the stamp marks a published, unread value, and we are the last owner.
            slot.value.with_mut(|p| unsafe { (*p).assume_init_drop() });
            head = head.wrapping_add(1);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_full() {
        let (tx, mut rx) = channel::<u32>(4);
        assert_eq!(tx.capacity(), 4);
        for i in 0..4 {
            tx.push(i).unwrap();
        }
        assert_eq!(tx.push(9), Err(Full(9)));
        assert_eq!(tx.len(), 4);
        assert_eq!(rx.pop(), Some(0));
        tx.push(4).unwrap();
        let got: Vec<_> = std::iter::from_fn(|| rx.pop()).collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
        assert!(rx.is_empty());
    }

    /// Regression: `len` read `tail`, then `head`; a consumer passing the old `tail` in
    /// between made the difference wrap and `len` report a full ring.
    #[test]
    fn len_never_wraps_to_full() {
        let (tx, rx) = channel::<u32>(8);
        // Simulate the interleaving: a stale tail below the head.
        tx.ring.tail.store(5, Ordering::Relaxed);
        tx.ring.head.store(7, Ordering::Relaxed);
        assert_eq!(tx.len(), 0);
        drop(rx);
    }

    #[test]
    fn drops_unread_values() {
        let value = std::sync::Arc::new(());
        let (tx, rx) = channel(8);
        for _ in 0..5 {
            tx.push(value.clone()).unwrap();
        }
        drop((tx, rx));
        assert_eq!(std::sync::Arc::strong_count(&value), 1);
    }

    #[test]
    fn many_producers_lose_nothing() {
        const PER: u64 = 50_000;
        let (tx, mut rx) = channel::<u64>(64);
        let handles: Vec<_> = (0..4u64)
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..PER {
                        let mut v = (p << 32) | i;
                        while let Err(Full(back)) = tx.push(v) {
                            v = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u64; 4];
        let mut seen = 0;
        while seen < 4 * PER {
            if let Some(v) = rx.pop() {
                let (p, i) = ((v >> 32) as usize, v & 0xffff_ffff);
                assert_eq!(i, next[p], "per-producer FIFO");
                next[p] += 1;
                seen += 1;
            } else {
                std::thread::yield_now();
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        assert!(rx.pop().is_none());
    }
}

#[cfg(all(test, loom))]
mod loom_mpsc {
    use super::*;
    use loom::thread;

    /// Two producers race for a two-slot ring while the consumer drains: every value arrives
    /// exactly once, each producer's values in order, and a full ring hands the value back.
    #[test]
    fn loom_mpsc_two_producers() {
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>(2);
            let producers: Vec<_> = (0..2u32)
                .map(|p| {
                    let tx = tx.clone();
                    thread::spawn(move || {
                        let mut rejected = 0;
                        for i in 0..2 {
                            if tx.push(p * 10 + i).is_err() {
                                rejected += 1;
                            }
                        }
                        rejected
                    })
                })
                .collect();
            let mut got = Vec::new();
            for _ in 0..3 {
                if let Some(v) = rx.pop() {
                    got.push(v);
                }
            }
            let rejected: u32 = producers.into_iter().map(|h| h.join().unwrap()).sum();
            while let Some(v) = rx.pop() {
                got.push(v);
            }
            assert_eq!(got.len() as u32 + rejected, 4);
            for p in 0..2 {
                let mine: Vec<_> = got.iter().filter(|v| **v / 10 == p).collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "{got:?}");
            }
        });
    }
}
