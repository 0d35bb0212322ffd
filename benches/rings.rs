//! The lock-free rings beside their peers, in the same run.
//!
//! - `mpsc_1p`, `mpsc_2p`: `tether::sync::mpsc` against `crossbeam_queue::ArrayQueue`, one or
//!   two producer threads and one consumer thread (2p oversubscribes a 2-core machine).
//! - `spsc`, `spsc_batch`: `tether::sync::spsc` against `rtrb::RingBuffer`, one producer thread
//!   and one consumer thread; the batch variant drains with `drain_into` / `read_chunk`.
//!
//! Every case moves `ITEMS_PER_ITER` `u64`s per iteration through a ring of `CAPACITY` slots,
//! timed by the consumer from a `Barrier` release until the last item arrives (`iter_custom`,
//! as in rtrb's benches). Before measuring, each implementation is checked: every item arrives
//! exactly once, and in order per producer. Full/empty retries spin, then yield, so waiting
//! threads give the core back on a 2-core machine. Every wait loop is bounded: it panics after
//! `STALL` without progress (a hang, i.e. a lost item, never a timing assertion).

use std::hint::{black_box, spin_loop};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

const CAPACITY: usize = 1024;
const ITEMS_PER_ITER: u64 = 100_000;
/// Most values one `drain_into` / `read_chunk` takes in the batch variant.
const BATCH: usize = 256;
/// A waiting thread that sees no progress for this long gives up (the other side is gone or
/// an item was lost); nothing asserts on time otherwise.
const STALL: Duration = Duration::from_secs(20);

/// Spin a little, then yield; panic if stalled for `STALL`.
struct Patience {
    spins: u32,
    since: Option<Instant>,
}

impl Patience {
    const SPINS: u32 = 64;

    fn new() -> Self {
        Self {
            spins: 0,
            since: None,
        }
    }

    #[inline]
    fn progress(&mut self) {
        self.spins = 0;
        self.since = None;
    }

    #[inline]
    fn wait(&mut self, what: &str) {
        if self.spins < Self::SPINS {
            self.spins += 1;
            spin_loop();
            return;
        }
        thread::yield_now();
        self.spins += 1;
        if self.spins % 1024 == 0 {
            let since = *self.since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < STALL,
                "{what}: no progress for {STALL:?}; the ring lost or withheld an item"
            );
        }
    }
}

/// Owns whole 128-byte lines (two prefetched 64-byte lines on x86), so an endpoint's cached
/// indices, captured by a spawned thread's boxed closure, cannot share a line with the other
/// side's (the boxes could be neighbours on the heap).
#[repr(align(128))]
struct Padded<T>(T);

// ---------------------------------------------------------------------------------------------
// MPSC

trait MpscRing {
    type Tx: Clone + Send;
    type Rx: Send;
    fn channel(capacity: usize) -> (Self::Tx, Self::Rx);
    fn push(tx: &Self::Tx, v: u64) -> Result<(), u64>;
    fn pop(rx: &mut Self::Rx) -> Option<u64>;
}

struct TetherMpsc;

impl MpscRing for TetherMpsc {
    type Tx = tether::sync::mpsc::Sender<u64>;
    type Rx = tether::sync::mpsc::Receiver<u64>;

    fn channel(capacity: usize) -> (Self::Tx, Self::Rx) {
        tether::sync::mpsc::channel(capacity)
    }

    #[inline]
    fn push(tx: &Self::Tx, v: u64) -> Result<(), u64> {
        tx.push(v).map_err(|full| full.into_inner())
    }

    #[inline]
    fn pop(rx: &mut Self::Rx) -> Option<u64> {
        rx.pop()
    }
}

struct CrossbeamArrayQueue;

impl MpscRing for CrossbeamArrayQueue {
    type Tx = Arc<crossbeam_queue::ArrayQueue<u64>>;
    type Rx = Arc<crossbeam_queue::ArrayQueue<u64>>;

    fn channel(capacity: usize) -> (Self::Tx, Self::Rx) {
        let q = Arc::new(crossbeam_queue::ArrayQueue::new(capacity));
        (q.clone(), q)
    }

    #[inline]
    fn push(tx: &Self::Tx, v: u64) -> Result<(), u64> {
        tx.push(v)
    }

    #[inline]
    fn pop(rx: &mut Self::Rx) -> Option<u64> {
        rx.pop()
    }
}

/// Producer `p` of `producers` pushes the contiguous values `range(p)` in ascending order.
fn producer_range(p: u64, producers: u64, total: u64) -> std::ops::Range<u64> {
    (p * total / producers)..((p + 1) * total / producers)
}

/// Moves the values `0..total` from `producers` threads to one consumer thread, calling
/// `consume` on each arrival; returns the consumer's time from the barrier to the last item
/// and the wrapping sum of what arrived.
fn mpsc_run<R: MpscRing>(
    capacity: usize,
    producers: u64,
    total: u64,
    mut consume: impl FnMut(u64) + Send,
) -> (Duration, u64) {
    let (tx, rx) = R::channel(capacity);
    let rx = Padded(rx);
    let barrier = Barrier::new(producers as usize + 1);
    thread::scope(|s| {
        for p in 0..producers {
            let tx = tx.clone();
            let barrier = &barrier;
            s.spawn(move || {
                let mut patience = Patience::new();
                barrier.wait();
                for mut v in producer_range(p, producers, total) {
                    while let Err(back) = R::push(&tx, v) {
                        v = back;
                        patience.wait("mpsc producer on a full ring");
                    }
                    patience.progress();
                }
            });
        }
        drop(tx);
        let (barrier, consume) = (&barrier, &mut consume);
        // `move`: the receiver travels (padded) with its thread, not left on this stack.
        let consumer = s.spawn(move || {
            // Rebind the whole `Padded` first: `rx.0` alone would capture just the field.
            let mut rx = rx;
            let rx = &mut rx.0;
            let mut patience = Patience::new();
            let mut sum = 0u64;
            barrier.wait();
            let start = Instant::now();
            let mut received = 0;
            while received < total {
                match R::pop(rx) {
                    Some(v) => {
                        consume(v);
                        sum = sum.wrapping_add(v);
                        received += 1;
                        patience.progress();
                    }
                    None => patience.wait("mpsc consumer on an empty ring"),
                }
            }
            let elapsed = start.elapsed();
            assert!(R::pop(rx).is_none(), "an item arrived more than once");
            (elapsed, sum)
        });
        consumer.join().unwrap()
    })
}

/// Every value arrives exactly once, each producer's in the order it pushed them.
fn mpsc_check<R: MpscRing>(capacity: usize, producers: u64, total: u64) {
    let mut seen = vec![false; total as usize];
    let mut last: Vec<Option<u64>> = vec![None; producers as usize];
    let (_, sum) = mpsc_run::<R>(capacity, producers, total, |v| {
        assert!(v < total, "value {v} was never pushed");
        assert!(!seen[v as usize], "value {v} arrived twice");
        seen[v as usize] = true;
        let p = (0..producers)
            .find(|&p| producer_range(p, producers, total).contains(&v))
            .unwrap() as usize;
        assert!(last[p] < Some(v), "producer {p}: {v} after {:?}", last[p]);
        last[p] = Some(v);
    });
    assert!(seen.iter().all(|&s| s), "a value never arrived");
    assert_eq!(sum, expected_sum(total));
}

/// Timed transfer with a cheap exactly-once check (the count is exact, the sum must match).
fn mpsc_timed<R: MpscRing>(producers: u64, total: u64) -> Duration {
    let (elapsed, sum) = mpsc_run::<R>(CAPACITY, producers, total, |_| ());
    assert_eq!(
        black_box(sum),
        expected_sum(total),
        "items lost or duplicated"
    );
    elapsed
}

/// `0 + 1 + ... + (total - 1)`, wrapping like the consumer's sum.
fn expected_sum(total: u64) -> u64 {
    let (a, b) = if total % 2 == 0 {
        (total / 2, total.wrapping_sub(1))
    } else {
        (total, (total - 1) / 2)
    };
    a.wrapping_mul(b)
}

fn mpsc_bench<R: MpscRing>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, producers: u64) {
    mpsc_check::<R>(CAPACITY, producers, 1_000_000);
    mpsc_check::<R>(4, producers, 100_000);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| mpsc_timed::<R>(producers, iters * ITEMS_PER_ITER))
    });
}

fn mpsc(c: &mut Criterion) {
    for producers in [1u64, 2] {
        let mut group = c.benchmark_group(format!("mpsc_{producers}p"));
        group.throughput(Throughput::Elements(ITEMS_PER_ITER));
        mpsc_bench::<TetherMpsc>(&mut group, "tether", producers);
        mpsc_bench::<CrossbeamArrayQueue>(&mut group, "crossbeam_ArrayQueue", producers);
        group.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// SPSC

trait SpscRing {
    type Tx: Send;
    type Rx: Send;
    fn channel(capacity: usize) -> (Self::Tx, Self::Rx);
    fn push(tx: &mut Self::Tx, v: u64) -> Result<(), u64>;
    fn pop(rx: &mut Self::Rx) -> Option<u64>;
    /// Appends up to `max` values to `out`; returns how many.
    fn drain(rx: &mut Self::Rx, out: &mut Vec<u64>, max: usize) -> usize;
}

struct TetherSpsc;

impl SpscRing for TetherSpsc {
    type Tx = tether::sync::spsc::Producer<u64>;
    type Rx = tether::sync::spsc::Consumer<u64>;

    fn channel(capacity: usize) -> (Self::Tx, Self::Rx) {
        tether::sync::spsc::channel(capacity)
    }

    #[inline]
    fn push(tx: &mut Self::Tx, v: u64) -> Result<(), u64> {
        tx.push(v).map_err(|full| full.into_inner())
    }

    #[inline]
    fn pop(rx: &mut Self::Rx) -> Option<u64> {
        rx.pop()
    }

    #[inline]
    fn drain(rx: &mut Self::Rx, out: &mut Vec<u64>, max: usize) -> usize {
        rx.drain_into(out, max)
    }
}

struct Rtrb;

impl SpscRing for Rtrb {
    type Tx = rtrb::Producer<u64>;
    type Rx = rtrb::Consumer<u64>;

    fn channel(capacity: usize) -> (Self::Tx, Self::Rx) {
        rtrb::RingBuffer::new(capacity)
    }

    #[inline]
    fn push(tx: &mut Self::Tx, v: u64) -> Result<(), u64> {
        tx.push(v).map_err(|rtrb::PushError::Full(back)| back)
    }

    #[inline]
    fn pop(rx: &mut Self::Rx) -> Option<u64> {
        rx.pop().ok()
    }

    /// `slots()` loads the producer's index once; `read_chunk(n)` with `n` within it does not
    /// reload; moving out through `into_iter` publishes the new head once, on drop.
    #[inline]
    fn drain(rx: &mut Self::Rx, out: &mut Vec<u64>, max: usize) -> usize {
        let n = rx.slots().min(max);
        if n == 0 {
            return 0;
        }
        let chunk = rx.read_chunk(n).expect("slots() said they were there");
        out.extend(chunk);
        n
    }
}

/// Moves `0..total` from a producer thread to a consumer thread, one `pop` at a time or in
/// batches of up to `batch` (`None`: single pops), calling `consume` on each arrival; returns
/// the consumer's time and the wrapping sum of what arrived.
fn spsc_run<R: SpscRing>(
    capacity: usize,
    total: u64,
    batch: Option<usize>,
    mut consume: impl FnMut(u64) + Send,
) -> (Duration, u64) {
    let (tx, rx) = R::channel(capacity);
    let (tx, rx) = (Padded(tx), Padded(rx));
    let barrier = &Barrier::new(2);
    let consume = &mut consume;
    thread::scope(|s| {
        // `move` + `Padded`: the producer's and the consumer's cached indices travel with their
        // threads, on lines of their own (side by side on this stack they would false-share).
        s.spawn(move || {
            let mut tx = tx;
            let tx = &mut tx.0;
            let mut patience = Patience::new();
            barrier.wait();
            for mut v in 0..total {
                while let Err(back) = R::push(tx, v) {
                    v = back;
                    patience.wait("spsc producer on a full ring");
                }
                patience.progress();
            }
        });
        let consumer = s.spawn(move || {
            // Rebind the whole `Padded` first: `rx.0` alone would capture just the field.
            let mut rx = rx;
            let rx = &mut rx.0;
            let mut patience = Patience::new();
            let mut buf = Vec::with_capacity(batch.unwrap_or(0));
            let mut sum = 0u64;
            barrier.wait();
            let start = Instant::now();
            let mut received = 0;
            while received < total {
                match batch {
                    None => match R::pop(rx) {
                        Some(v) => {
                            consume(v);
                            sum = sum.wrapping_add(v);
                            received += 1;
                            patience.progress();
                        }
                        None => patience.wait("spsc consumer on an empty ring"),
                    },
                    Some(max) => {
                        let n = R::drain(rx, &mut buf, max);
                        if n == 0 {
                            patience.wait("spsc consumer on an empty ring");
                            continue;
                        }
                        assert_eq!(n, buf.len(), "drain reported a wrong count");
                        assert!(n <= max, "drain took more than asked");
                        for v in buf.drain(..) {
                            consume(v);
                            sum = sum.wrapping_add(v);
                        }
                        received += n as u64;
                        patience.progress();
                    }
                }
            }
            let elapsed = start.elapsed();
            assert!(R::pop(rx).is_none(), "more items than were pushed");
            (elapsed, sum)
        });
        consumer.join().unwrap()
    })
}

/// Every value arrives exactly once and in order.
fn spsc_check<R: SpscRing>(capacity: usize, total: u64, batch: Option<usize>) {
    let mut expect = 0u64;
    let (_, sum) = spsc_run::<R>(capacity, total, batch, |v| {
        assert_eq!(v, expect, "out of order, lost or duplicated");
        expect += 1;
    });
    assert_eq!(expect, total);
    assert_eq!(sum, expected_sum(total));
}

fn spsc_timed<R: SpscRing>(total: u64, batch: Option<usize>) -> Duration {
    let (elapsed, sum) = spsc_run::<R>(CAPACITY, total, batch, |_| ());
    assert_eq!(
        black_box(sum),
        expected_sum(total),
        "items lost or duplicated"
    );
    elapsed
}

fn spsc_bench<R: SpscRing>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    batch: Option<usize>,
) {
    spsc_check::<R>(CAPACITY, 1_000_000, batch);
    spsc_check::<R>(4, 100_000, batch.map(|_| 3));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| spsc_timed::<R>(iters * ITEMS_PER_ITER, batch))
    });
}

fn spsc(c: &mut Criterion) {
    for (group_name, batch) in [("spsc", None), ("spsc_batch", Some(BATCH))] {
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(ITEMS_PER_ITER));
        spsc_bench::<TetherSpsc>(&mut group, "tether", batch);
        spsc_bench::<Rtrb>(&mut group, "rtrb", batch);
        group.finish();
    }
}

criterion_group! {
    name = rings;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = mpsc, spsc
}
criterion_main!(rings);
