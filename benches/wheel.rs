//! `tether::time::Wheel` beside its peers, in the same run, at 1Ki, 64Ki and 1Mi timers:
//!
//! - `Wheel`: the engine's hierarchical timing wheel (O(1) insert and cancel);
//! - `DelayQueue`: `tokio_util::time::DelayQueue`, tokio's own hierarchical wheel with a slab;
//! - `BinaryHeap`: `BinaryHeap<Reverse<(deadline, id)>>`; it cannot remove an arbitrary entry,
//!   so cancel is lazy deletion (the id goes into a set of cancelled ids, skipped when popped:
//!   the dead entry keeps its memory and is paid for at expiry);
//! - `BTreeMap`: `BTreeMap<(deadline, id), id>`, cancel = `remove`.
//!
//! Operations, each measured on a structure that already holds N timers with deadlines spread
//! pseudo-randomly over 0..10 minutes (in ms):
//!
//! - `insert`: one more timer (pseudo-random deadline in the same range);
//! - `cancel`: a random live timer;
//! - `churn`: insert a timer and cancel it at once (a timeout set and cleared by the reply);
//! - `expire_10min`: all N timers due: one advance past the last deadline, collecting every
//!   value into a `Vec` (reported per advance of N; divide by N for the cost per entry);
//! - `expire_1s`: the same with deadlines over 0..1 s, the only spread the `DelayQueue` can be
//!   measured with (below).
//!
//! For insert, cancel and churn one criterion iteration is one operation, so the reported time
//! is the cost per operation. They run in batches of `N / 16` (at least 256) operations, each
//! batch timed with two clock reads (about 40 ns each on the machine measured: at most 0.3 ns
//! per operation). After each batch the structure is put back to its N timers outside the
//! timed region (cancelled timers re-inserted, inserted ones removed; the heap is rebuilt with
//! `retain`, O(N)). Every structure is built once per N and reused by the three operations.
//!
//! The `DelayQueue` needs a tokio runtime with time enabled, and jumping over 10 minutes of
//! deadlines needs `tokio::time::pause`/`advance`, which exist only with tokio's `test-util`
//! feature; the dev-dependency does not enable it. So the `DelayQueue` runs on a
//! current-thread runtime in real time: insert, cancel and churn never wait, and its expiry is
//! measured with deadlines over 0..1 s, after a real (untimed) sleep past the last one, by
//! awaiting `poll_expired` until the queue is empty (`expire_1s`).
//!
//! `calibration/pointer_chase`: one dependent load per iteration, chasing a random cycle
//! through 40 KiB, 2.5 MiB and 40 MiB (one pointer per 64-byte line): the footprints of the
//! wheel's slab of 40-byte entries at 1Ki, 64Ki and 1Mi timers. It is what an operation costs
//! that must follow one pointer into memory the caches do not hold.
//!
//! Before measuring, every structure is checked: after cancelling a third of 64Ki timers,
//! advancing to the middle of the range fires exactly the live timers due by then, advancing
//! past the end fires the rest, each exactly once, and no cancelled timer ever fires.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::future::poll_fn;
use std::hint::black_box;
use std::task::Poll;
use std::time::{Duration, Instant};

use ahash::AHashSet;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode,
    Throughput,
};
use tether::time::{TimerHandle, Wheel};
use tokio::runtime::Runtime;
use tokio_util::time::delay_queue::Key;
use tokio_util::time::DelayQueue;

const SIZES: [usize; 3] = [1 << 10, 1 << 16, 1 << 20];
/// Deadlines are spread over 0..SPREAD_MS.
const SPREAD_MS: u64 = 10 * 60 * 1000;
/// The short spread of `expire_1s`.
const SHORT_SPREAD_MS: u64 = 1000;
/// Most timers the real-time `DelayQueue` expiry builds before one wait.
const DQ_MAX_PENDING: usize = 4 << 20;

/// Deterministic random choices: the bench's input generator.
struct Rng(fastrand::Rng);

impl Rng {
    fn seeded(seed: u64) -> Self {
        Rng(fastrand::Rng::with_seed(seed))
    }

    fn deadlines(&mut self, n: usize, spread: u64) -> Vec<u64> {
        (0..n).map(|_| self.0.u64(..spread)).collect()
    }

    /// A random permutation of 0..n.
    fn permutation(&mut self, n: usize) -> Vec<u32> {
        let mut p: Vec<u32> = (0..n as u32).collect();
        self.0.shuffle(&mut p);
        p
    }
}

/// What the benches need from a timer structure. Deadlines are ms from the structure's start.
trait Timers {
    type Handle: Copy;
    const NAME: &'static str;

    fn insert(&mut self, deadline: u64, id: u64) -> Self::Handle;
    fn cancel(&mut self, handle: Self::Handle);
    /// Puts a cancelled timer back (the heap un-cancels it; the others insert it again).
    fn restore(&mut self, handle: Self::Handle, deadline: u64, id: u64) -> Self::Handle;
    /// Removes the timers of one insert batch (`handles`, in insertion order).
    fn remove_batch(&mut self, handles: &[Self::Handle]) {
        for h in handles {
            self.cancel(*h);
        }
    }
    /// After a churn batch: drop whatever the cancels left behind (the heap's dead entries).
    fn compact(&mut self) {}
    /// Live timers.
    fn live(&self) -> usize;
}

/// The structures that run on virtual time (everything but the `DelayQueue`).
trait Expire: Timers + Sized {
    fn empty() -> Self;
    /// Moves every live timer due by `now` into `out`.
    fn expire(&mut self, now: u64, out: &mut Vec<u64>);
}

// ---------------------------------------------------------------------------------------------
// The four structures

struct TetherWheel(Wheel<u64>);

impl Timers for TetherWheel {
    type Handle = TimerHandle;
    const NAME: &'static str = "Wheel";

    fn insert(&mut self, deadline: u64, id: u64) -> TimerHandle {
        self.0.insert(deadline, id)
    }
    fn cancel(&mut self, handle: TimerHandle) {
        black_box(self.0.cancel(handle));
    }
    fn restore(&mut self, _: TimerHandle, deadline: u64, id: u64) -> TimerHandle {
        self.0.insert(deadline, id)
    }
    fn live(&self) -> usize {
        self.0.len()
    }
}

impl Expire for TetherWheel {
    fn empty() -> Self {
        Self(Wheel::new())
    }
    fn expire(&mut self, now: u64, out: &mut Vec<u64>) {
        self.0.advance(now, out);
    }
}

#[derive(Default)]
struct Heap {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    cancelled: AHashSet<u64>,
}

impl Timers for Heap {
    /// The id.
    type Handle = u64;
    const NAME: &'static str = "BinaryHeap";

    fn insert(&mut self, deadline: u64, id: u64) -> u64 {
        self.heap.push(Reverse((deadline, id)));
        id
    }
    fn cancel(&mut self, id: u64) {
        self.cancelled.insert(id);
    }
    fn restore(&mut self, id: u64, _: u64, _: u64) -> u64 {
        self.cancelled.remove(&id);
        id
    }
    fn remove_batch(&mut self, ids: &[u64]) {
        // Ids only grow, and a batch takes consecutive ones.
        if let Some(&first) = ids.first() {
            self.heap.retain(|Reverse((_, id))| *id < first);
        }
    }
    fn compact(&mut self) {
        if !self.cancelled.is_empty() {
            let cancelled = &self.cancelled;
            self.heap.retain(|Reverse((_, id))| !cancelled.contains(id));
            self.cancelled.clear();
        }
    }
    fn live(&self) -> usize {
        // Only meaningful after `compact` (cancelled ids still in the heap).
        self.heap.len() - self.cancelled.len()
    }
}

impl Expire for Heap {
    fn empty() -> Self {
        Self::default()
    }
    fn expire(&mut self, now: u64, out: &mut Vec<u64>) {
        while let Some(&Reverse((deadline, id))) = self.heap.peek() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            if !self.cancelled.is_empty() && self.cancelled.remove(&id) {
                continue;
            }
            out.push(id);
        }
    }
}

#[derive(Default)]
struct Tree(BTreeMap<(u64, u64), u64>);

impl Timers for Tree {
    type Handle = (u64, u64);
    const NAME: &'static str = "BTreeMap";

    fn insert(&mut self, deadline: u64, id: u64) -> (u64, u64) {
        self.0.insert((deadline, id), id);
        (deadline, id)
    }
    fn cancel(&mut self, key: (u64, u64)) {
        black_box(self.0.remove(&key));
    }
    fn restore(&mut self, key: (u64, u64), _: u64, id: u64) -> (u64, u64) {
        self.0.insert(key, id);
        key
    }
    fn live(&self) -> usize {
        self.0.len()
    }
}

impl Expire for Tree {
    fn empty() -> Self {
        Self::default()
    }
    fn expire(&mut self, now: u64, out: &mut Vec<u64>) {
        while let Some(entry) = self.0.first_entry() {
            if entry.key().0 > now {
                break;
            }
            out.push(entry.remove());
        }
    }
}

/// Must be used inside the runtime's context (`Runtime::enter`).
struct Delay {
    queue: DelayQueue<u64>,
    start: tokio::time::Instant,
}

impl Delay {
    fn new(capacity: usize) -> Self {
        Self {
            queue: DelayQueue::with_capacity(capacity),
            start: tokio::time::Instant::now(),
        }
    }

    /// Awaits `poll_expired` until the queue is empty.
    async fn drain(&mut self, out: &mut Vec<u64>) {
        while let Some(expired) = poll_fn(|cx| self.queue.poll_expired(cx)).await {
            out.push(expired.into_inner());
        }
    }
}

impl Timers for Delay {
    type Handle = Key;
    const NAME: &'static str = "DelayQueue";

    fn insert(&mut self, deadline: u64, id: u64) -> Key {
        self.queue
            .insert_at(id, self.start + Duration::from_millis(deadline))
    }
    fn cancel(&mut self, key: Key) {
        black_box(self.queue.remove(&key));
    }
    fn restore(&mut self, _: Key, deadline: u64, id: u64) -> Key {
        self.insert(deadline, id)
    }
    fn live(&self) -> usize {
        self.queue.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Correctness, before any measurement

/// Inserts a timer per deadline (id = index), cancels a random third, and returns which ones
/// were cancelled.
fn populate<T: Timers>(t: &mut T, deadlines: &[u64], rng: &mut Rng) -> Vec<bool> {
    let handles: Vec<T::Handle> = deadlines
        .iter()
        .enumerate()
        .map(|(id, &d)| t.insert(d, id as u64))
        .collect();
    let n = deadlines.len();
    let mut cancelled = vec![false; n];
    for &i in rng.permutation(n).iter().take(n / 3) {
        t.cancel(handles[i as usize]);
        cancelled[i as usize] = true;
    }
    cancelled
}

/// Checks that `fired` holds exactly the live ids with a deadline in `range`, once each.
fn check_fired(
    name: &str,
    fired: &mut [u64],
    deadlines: &[u64],
    cancelled: &[bool],
    range: std::ops::RangeInclusive<u64>,
) {
    fired.sort_unstable();
    let expected: Vec<u64> = (0..deadlines.len())
        .filter(|&i| !cancelled[i] && range.contains(&deadlines[i]))
        .map(|i| i as u64)
        .collect();
    for id in fired.iter() {
        assert!(
            !cancelled[*id as usize],
            "{name}: cancelled timer {id} fired"
        );
    }
    assert_eq!(
        fired.len(),
        expected.len(),
        "{name}: fired {} timers for {range:?}, expected {}",
        fired.len(),
        expected.len()
    );
    assert!(
        fired.iter().eq(expected.iter()),
        "{name}: wrong or repeated timers fired for {range:?}"
    );
}

fn check_virtual<T: Expire>() {
    let n = 1 << 16;
    let mut rng = Rng::seeded(0x5EED_0001);
    let mut t = T::empty();
    let deadlines = rng.deadlines(n, SPREAD_MS);
    let cancelled = populate(&mut t, &deadlines, &mut rng);
    let mut fired = Vec::new();
    let half = SPREAD_MS / 2;
    t.expire(half, &mut fired);
    check_fired(T::NAME, &mut fired, &deadlines, &cancelled, 0..=half);
    fired.clear();
    t.expire(SPREAD_MS, &mut fired);
    check_fired(
        T::NAME,
        &mut fired,
        &deadlines,
        &cancelled,
        half + 1..=SPREAD_MS,
    );
    fired.clear();
    t.expire(10 * SPREAD_MS, &mut fired);
    assert!(fired.is_empty(), "{}: fired twice", T::NAME);
    t.compact();
    assert_eq!(t.live(), 0, "{}: timers left", T::NAME);
}

/// The `DelayQueue` in real time: nothing fires before its deadline (all 1 s or more ahead),
/// then, after sleeping past the last one, exactly the live timers fire, once each.
fn check_delay_queue(rt: &Runtime) {
    let n = 1 << 16;
    let offset = 1000;
    rt.block_on(async {
        let mut rng = Rng::seeded(0x5EED_0002);
        let mut d = Delay::new(n);
        let deadlines: Vec<u64> = rng.deadlines(n, 200).iter().map(|x| offset + x).collect();
        let cancelled = populate(&mut d, &deadlines, &mut rng);
        let mut fired = Vec::new();
        let mut take = |e: tokio_util::time::delay_queue::Expired<u64>| {
            assert!(
                tokio::time::Instant::now() >= e.deadline(),
                "DelayQueue fired a timer before its deadline"
            );
            fired.push(e.into_inner());
        };
        // Probably nothing is due yet (the first deadline is 1 s away).
        if let Poll::Ready(Some(e)) = poll_fn(|cx| Poll::Ready(d.queue.poll_expired(cx))).await {
            take(e);
        }
        tokio::time::sleep_until(d.start + Duration::from_millis(offset + 201)).await;
        while let Some(e) = poll_fn(|cx| d.queue.poll_expired(cx)).await {
            take(e);
        }
        check_fired(
            Delay::NAME,
            &mut fired,
            &deadlines,
            &cancelled,
            0..=u64::MAX,
        );
        assert_eq!(d.live(), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Measurements

fn batch_for(n: usize) -> usize {
    (n / 16).max(256)
}

/// A structure holding `n` live timers, the handles and deadlines to restore them, and a ring
/// of fresh deadlines for inserts.
struct Fixture<T: Timers> {
    t: T,
    live: Vec<(T::Handle, u64, u64)>,
    order: Vec<u32>,
    order_pos: usize,
    fresh: Vec<u64>,
    fresh_pos: usize,
    next_id: u64,
    batch: usize,
}

impl<T: Timers> Fixture<T> {
    fn new(mut t: T, n: usize, rng: &mut Rng) -> Self {
        let live = rng
            .deadlines(n, SPREAD_MS)
            .into_iter()
            .enumerate()
            .map(|(id, d)| (t.insert(d, id as u64), d, id as u64))
            .collect();
        assert_eq!(t.live(), n);
        Self {
            t,
            live,
            order: rng.permutation(n),
            order_pos: 0,
            fresh: rng.deadlines(1 << 16, SPREAD_MS),
            fresh_pos: 0,
            next_id: n as u64,
            batch: batch_for(n),
        }
    }

    fn next_fresh(&mut self) -> u64 {
        let d = self.fresh[self.fresh_pos];
        self.fresh_pos = (self.fresh_pos + 1) % self.fresh.len();
        d
    }

    /// `iters` inserts in batches, each batch removed afterwards, untimed.
    fn insert(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        let mut handles = Vec::with_capacity(self.batch);
        let fresh = std::mem::take(&mut self.fresh);
        while left > 0 {
            let k = left.min(self.batch as u64);
            let start = Instant::now();
            for _ in 0..k {
                let d = fresh[self.fresh_pos];
                self.fresh_pos = (self.fresh_pos + 1) % fresh.len();
                handles.push(self.t.insert(d, self.next_id));
                self.next_id += 1;
            }
            total += start.elapsed();
            self.t.remove_batch(&handles);
            handles.clear();
            left -= k;
        }
        self.fresh = fresh;
        total
    }

    /// `iters` cancels of distinct random live timers per batch, restored afterwards, untimed.
    fn cancel(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let k = left.min(self.batch as u64) as usize;
            if self.order_pos + k > self.order.len() {
                self.order_pos = 0;
            }
            let chunk = &self.order[self.order_pos..self.order_pos + k];
            let start = Instant::now();
            for &i in chunk {
                self.t.cancel(self.live[i as usize].0);
            }
            total += start.elapsed();
            for &i in chunk {
                let (h, d, id) = self.live[i as usize];
                self.live[i as usize].0 = self.t.restore(h, d, id);
            }
            self.order_pos += k;
            left -= k as u64;
        }
        total
    }

    /// `iters` insert-then-cancel pairs; the heap's dead entries are dropped after each batch,
    /// untimed.
    fn churn(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let k = left.min(self.batch as u64);
            let start = Instant::now();
            for _ in 0..k {
                let d = self.next_fresh();
                let h = self.t.insert(d, self.next_id);
                self.next_id += 1;
                self.t.cancel(h);
            }
            total += start.elapsed();
            self.t.compact();
            left -= k;
        }
        total
    }

    fn check_intact(&self) {
        assert_eq!(self.t.live(), self.live.len(), "{}: not restored", T::NAME);
    }
}

fn config(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(600));
}

/// Insert, cancel and churn on one fixture of `n` timers.
fn ops<T: Timers>(c: &mut Criterion, fixture: &mut Fixture<T>, n: usize) {
    for (op, run) in [
        (
            "insert",
            Fixture::<T>::insert as fn(&mut Fixture<T>, u64) -> Duration,
        ),
        ("cancel", Fixture::<T>::cancel),
        ("churn", Fixture::<T>::churn),
    ] {
        let mut group = c.benchmark_group(format!("wheel/{op}"));
        config(&mut group);
        group.bench_with_input(BenchmarkId::new(T::NAME, n), &n, |b, _| {
            b.iter_custom(|iters| run(fixture, iters))
        });
        group.finish();
        fixture.check_intact();
    }
}

/// One advance over `n` timers, all due; the structure is built before each advance and
/// dropped after it, untimed.
fn expire<T: Expire>(c: &mut Criterion, spread: u64, label: &str) {
    let mut group = c.benchmark_group(format!("wheel/{label}"));
    config(&mut group);
    group
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(1));
    for n in SIZES {
        let deadlines = Rng::seeded(0xE0 ^ n as u64).deadlines(n, spread);
        let mut out = Vec::with_capacity(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new(T::NAME, n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut t = T::empty();
                    for (id, &d) in deadlines.iter().enumerate() {
                        t.insert(d, id as u64);
                    }
                    out.clear();
                    let start = Instant::now();
                    t.expire(spread, &mut out);
                    total += start.elapsed();
                    assert_eq!(out.len(), n, "{}: not all fired", T::NAME);
                    drop(black_box(t));
                }
                total
            })
        });
    }
    group.finish();
}

/// The `DelayQueue`'s expiry in real time: build `iters` queues of `n` timers over 0..1 s
/// (in rounds of at most `DQ_MAX_PENDING` timers), sleep past the last deadline, then time
/// draining each queue.
fn expire_delay_queue(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("wheel/expire_1s");
    config(&mut group);
    group
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_millis(300));
    for n in SIZES {
        let deadlines = Rng::seeded(0xE0 ^ n as u64).deadlines(n, SHORT_SPREAD_MS);
        let mut out = Vec::with_capacity(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new(Delay::NAME, n), &n, |b, _| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    let mut left = iters as usize;
                    while left > 0 {
                        let round = left.min((DQ_MAX_PENDING / n).max(1));
                        let mut queues = Vec::with_capacity(round);
                        for _ in 0..round {
                            let mut d = Delay::new(n);
                            for (id, &x) in deadlines.iter().enumerate() {
                                d.insert(x, id as u64);
                            }
                            queues.push(d);
                        }
                        let last = queues.last().expect("a round is never empty").start;
                        tokio::time::sleep_until(last + Duration::from_millis(SHORT_SPREAD_MS + 2))
                            .await;
                        for mut d in queues {
                            out.clear();
                            let start = Instant::now();
                            d.drain(&mut out).await;
                            total += start.elapsed();
                            assert_eq!(out.len(), n, "DelayQueue: not all fired");
                            drop(black_box(d));
                        }
                        left -= round;
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

/// One dependent load per iteration through a random cycle over `bytes` (one link per line).
fn pointer_chase(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel/calibration/pointer_chase");
    config(&mut group);
    for entries in SIZES {
        let bytes = entries * 40;
        let lines = bytes / 64;
        const STRIDE: usize = 64 / std::mem::size_of::<usize>();
        let order = Rng::seeded(0xC4A5E ^ lines as u64).permutation(lines);
        let mut next = vec![0usize; lines * STRIDE];
        for k in 0..lines {
            next[order[k] as usize * STRIDE] = order[(k + 1) % lines] as usize * STRIDE;
        }
        let mut at = 0;
        group.bench_with_input(
            BenchmarkId::new("random_cycle_bytes", bytes),
            &bytes,
            |b, _| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        at = next[at];
                    }
                    let took = start.elapsed();
                    black_box(at);
                    took
                })
            },
        );
    }
    group.finish();
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

fn wheels(c: &mut Criterion) {
    let rt = runtime();
    check_virtual::<TetherWheel>();
    check_virtual::<Heap>();
    check_virtual::<Tree>();
    check_delay_queue(&rt);

    for n in SIZES {
        let mut rng = Rng::seeded(0xBA5E ^ n as u64);
        ops(
            c,
            &mut Fixture::new(TetherWheel(Wheel::new()), n, &mut rng),
            n,
        );
        {
            let _context = rt.enter();
            ops(c, &mut Fixture::new(Delay::new(n), n, &mut rng), n);
        }
        ops(c, &mut Fixture::new(Heap::default(), n, &mut rng), n);
        ops(c, &mut Fixture::new(Tree::default(), n, &mut rng), n);
    }

    expire::<TetherWheel>(c, SPREAD_MS, "expire_10min");
    expire::<Heap>(c, SPREAD_MS, "expire_10min");
    expire::<Tree>(c, SPREAD_MS, "expire_10min");
    expire::<TetherWheel>(c, SHORT_SPREAD_MS, "expire_1s");
    expire::<Heap>(c, SHORT_SPREAD_MS, "expire_1s");
    expire::<Tree>(c, SHORT_SPREAD_MS, "expire_1s");
    expire_delay_queue(c, &rt);
    pointer_chase(c);
}

criterion_group!(benches, wheels);
criterion_main!(benches);
