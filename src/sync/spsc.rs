//! Bounded lock-free single-producer, single-consumer ring: a session's outbox.
//!
//! Leslie Lamport's wait-free SPSC queue ("Proving the correctness of multiprocess programs",
//! 1977) with each side caching the other's index, as rtrb and folly's `ProducerConsumerQueue`
//! do, so a push or pop touches the other side's cache line only when the cached value says the
//! ring looks full or empty.
//!
//! Layout: `capacity` is a power of two; `head` and `tail` are free-running positions (slot =
//! position & mask), each on its own 128-byte line. `tail - head` is the number of values.
//! The producer alone writes `tail`, the consumer alone writes `head`; each publishes its index
//! with `Release` after touching the slot and reads the other's with `Acquire`.

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use super::Full;
use crate::loom::{Arc, AtomicUsize, Ordering, UnsafeCell};

struct Ring<T> {
    head: CachePadded<AtomicUsize>,
    tail: CachePadded<AtomicUsize>,
    mask: usize,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

// SAFETY: a value is written by the producer, then handed to the consumer through the
// Release/Acquire pair on `tail`; slots are never accessed by both sides at once.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Ring<T> {}

/// Creates a ring with room for at least `capacity` values (rounded up to a power of two).
///
/// ```
/// use tether::sync::spsc;
///
/// let (mut tx, mut rx) = spsc::channel::<u32>(4);
/// let producer = std::thread::spawn(move || {
///     for i in 0..4 {
///         tx.push(i).unwrap();
///     }
/// });
/// producer.join().unwrap();
/// let mut batch = Vec::new();
/// assert_eq!(rx.drain_into(&mut batch, 10), 4);
/// assert_eq!(batch, [0, 1, 2, 3]);
/// ```
pub fn channel<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let capacity = capacity.max(1).next_power_of_two();
    let ring = Arc::new(Ring {
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        mask: capacity - 1,
        slots: (0..capacity)
            .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
            .collect(),
    });
    (
        Producer {
            ring: ring.clone(),
            tail: 0,
            cached_head: 0,
        },
        Consumer {
            ring,
            head: 0,
            cached_tail: 0,
        },
    )
}

/// The writing side (a session outbox's is owned by the shard worker). See [`channel`].
pub struct Producer<T> {
    ring: Arc<Ring<T>>,
    tail: usize,
    cached_head: usize,
}

impl<T> Producer<T> {
    /// Appends `value`, or hands it back in [`Full`] if the ring is full. Never blocks.
    pub fn push(&mut self, value: T) -> Result<(), Full<T>> {
        let capacity = self.ring.mask + 1;
        if self.tail.wrapping_sub(self.cached_head) == capacity {
            // Acquire: the consumer's reads of the slots before `head` happen before we reuse them.
            self.cached_head = self.ring.head.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.cached_head) == capacity {
                return Err(Full(value));
            }
        }
        let slot = &self.ring.slots[self.tail & self.ring.mask];
        // SAFETY: positions in [head, head + capacity) past `tail` belong to the producer alone,
        // and `tail` is in that range by the check above.
        slot.with_mut(|p| unsafe { (*p).write(value) });
        self.tail = self.tail.wrapping_add(1);
        // Release: publishes the slot write to the consumer's Acquire load of `tail`.
        self.ring.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.ring.mask + 1
    }
}

/// The reading side (a session outbox's is owned by the session). See [`channel`].
pub struct Consumer<T> {
    ring: Arc<Ring<T>>,
    head: usize,
    cached_tail: usize,
}

impl<T> Consumer<T> {
    /// Takes the oldest value, if any. Never blocks.
    pub fn pop(&mut self) -> Option<T> {
        if self.available() == 0 {
            return None;
        }
        let value = self.read_head();
        self.publish_head();
        Some(value)
    }

    /// Moves up to `max` values into `out` with one index load and one index store; returns
    /// how many it moved.
    pub fn drain_into(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        if self.cached_tail.wrapping_sub(self.head) < max {
            // The cache may be stale though not exhausted: look again, or a drain would stop
            // short of values that are ready.
            self.refresh_tail();
        }
        let n = self.cached_tail.wrapping_sub(self.head).min(max);
        // An exact-size `extend` reserves once and skips the per-item capacity check.
        out.extend((0..n).map(|_| self.read_head()));
        if n > 0 {
            self.publish_head();
        }
        n
    }

    fn available(&mut self) -> usize {
        if self.head == self.cached_tail {
            self.refresh_tail();
        }
        self.cached_tail.wrapping_sub(self.head)
    }

    fn refresh_tail(&mut self) {
        // Acquire: pairs with the producer's Release store of `tail`.
        self.cached_tail = self.ring.tail.load(Ordering::Acquire);
    }

    /// Reads the value at `head` and advances the local index; the caller publishes it.
    fn read_head(&mut self) -> T {
        let slot = &self.ring.slots[self.head & self.ring.mask];
        // SAFETY: `head < cached_tail`, so the producer published this slot (Acquire above) and
        // will not touch it again until we publish a `head` past it.
        let value = slot.with(|p| unsafe { (*p).assume_init_read() });
        self.head = self.head.wrapping_add(1);
        value
    }

    fn publish_head(&self) {
        // Release: our slot reads happen before the producer reuses the slots.
        self.ring.head.store(self.head, Ordering::Release);
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        let mut pos = head;
        while pos != tail {
            let slot = &self.slots[pos & self.mask];
            // SAFETY: positions in [head, tail) hold published, unread values, and `&mut self`
            // means both sides are gone.
            slot.with_mut(|p| unsafe { (*p).assume_init_drop() });
            pos = pos.wrapping_add(1);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_full_and_batch_drain() {
        let (mut tx, mut rx) = channel::<u32>(3);
        assert_eq!(tx.capacity(), 4);
        for i in 0..4 {
            tx.push(i).unwrap();
        }
        assert_eq!(tx.push(4), Err(Full(4)));
        let mut out = Vec::new();
        assert_eq!(rx.drain_into(&mut out, 3), 3);
        assert_eq!(out, vec![0, 1, 2]);
        tx.push(4).unwrap();
        assert_eq!(rx.pop(), Some(3));
        assert_eq!(rx.pop(), Some(4));
        assert_eq!(rx.pop(), None);
    }

    /// Regression (found by the engine fuzzer): a pop leaves the cached tail stale but not
    /// exhausted; a drain must still see everything ready.
    #[test]
    fn drain_after_pop_sees_new_values() {
        let (mut tx, mut rx) = channel::<u32>(8);
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        assert_eq!(rx.pop(), Some(1));
        tx.push(3).unwrap();
        let mut out = Vec::new();
        assert_eq!(rx.drain_into(&mut out, 8), 2);
        assert_eq!(out, [2, 3]);
    }

    #[test]
    fn drops_unread_values() {
        let value = std::sync::Arc::new(());
        let (mut tx, mut rx) = channel(4);
        for _ in 0..3 {
            tx.push(value.clone()).unwrap();
        }
        drop(rx.pop());
        drop((tx, rx));
        assert_eq!(std::sync::Arc::strong_count(&value), 1);
    }

    #[test]
    fn threads_keep_order() {
        let (mut tx, mut rx) = channel::<u64>(16);
        let producer = std::thread::spawn(move || {
            for i in 0..200_000u64 {
                let mut v = i;
                while let Err(Full(back)) = tx.push(v) {
                    v = back;
                    std::thread::yield_now();
                }
            }
        });
        let mut expect = 0;
        let mut buf = Vec::new();
        while expect < 200_000 {
            buf.clear();
            rx.drain_into(&mut buf, 7);
            for v in &buf {
                assert_eq!(*v, expect);
                expect += 1;
            }
        }
        producer.join().unwrap();
    }
}
