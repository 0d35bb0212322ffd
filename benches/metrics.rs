//! Metrics: what counting one event costs, beside the `metrics` and `prometheus` crates in the
//! same run; what the latency histograms cost the engine; and what 10,000 metrics weigh.
//!
//! Three parts, in this order (`cargo bench --bench metrics`):
//!
//! 1. `memory` (printed, not timed; runs first, while nothing else is alive). A counting
//!    `#[global_allocator]` around `std::alloc::System` tracks the net bytes *requested* and the
//!    net number of live blocks while switched on (malloc's own per-block overhead, roughly
//!    8-16 bytes, comes on top; thread stacks are mmap'd and not seen). Measured:
//!    (a) heap growth of an engine with `shards(1)` while 10,000 users get a mailbox, empty
//!    (connected once, closed normally) or holding one 64-byte message (payload subtracted),
//!    beside `size_of::<tether::UserCounters>()`; the same at 14,336 users (same slab and index
//!    capacity, so the difference shows what is capacity reserved by doubling); (b) heap of a one-shard engine after `build` +
//!    `barrier` at two inbox capacities (the difference isolates the ring), with latency metrics
//!    on and off, and the heap of one `Histogram`; (c) 10,000 `prometheus::IntCounter`s
//!    registered in a `Registry`, one `IntCounterVec` with 10,000 label values, and 10,000
//!    `metrics` counters (by name, and by label value) in the recorder below.
//! 2. `increment` / `increment_2threads` (criterion). One iteration is `INCS` (256) increments
//!    of one counter, so ns per increment = time / 256 (criterion's elements/s is increments/s).
//!    - `tether_model`: what a shard does per event and per pass: `+= 1` on a field of a
//!      worker-owned `[u64; 22]` (through `black_box`, so each increment is a load, add and
//!      store, as through `cx.rec.counters`), then once per 256 increments (one pass of 256
//!      commands) 22 Relaxed stores into a 128-byte aligned block of `AtomicU64`s, as
//!      `ShardMetrics::publish` does for the counters (the 11 gauges and the histograms are
//!      published the same way; `histogram_publish` measures the latter).
//!    - `atomic_fetch_add`: `AtomicU64::fetch_add(1, Relaxed)`.
//!    - `metrics_handle`: `metrics::Counter::increment(1)` on a handle kept from `counter!`;
//!      `metrics_macro`: `counter!("name").increment(1)` per event (looks the counter up in the
//!      recorder every time). The `metrics` crate does nothing without a recorder, so a global
//!      one is installed: `AtomicRecorder` below, a `RwLock<HashMap<Key, Arc<AtomicU64>>>` in
//!      the manner of `metrics-util`'s registry (its counters are `AtomicU64`s, which `metrics`
//!      increments with `fetch_add(Release)`). `metrics_noop` is the same macro with
//!      `metrics::NoopRecorder` set as the local recorder: the floor, counting nothing.
//!    - `prometheus_int_counter`: `IntCounter::inc()` (an `Arc` to an `AtomicU64`,
//!      `fetch_add(Relaxed)`); `prometheus_local`: its `LocalIntCounter` (a `RefCell<u64>`),
//!      flushed once per 256, the same idea as tether's.
//!    - `histogram_publish`: one pass's publish of two dirty histograms (2 x 315 Relaxed
//!      stores); `histogram_record`: 256 calls of a copy of `LocalHistogram::record` (bucket
//!      index, increment, count, sum, max); together the whole cost of `latency_metrics(true)`
//!      on a shard: 2 records per message and, per pass that recorded anything, one publish.
//!    - `tether_model_per_message`: 256 messages, each counted in the 8 places the engine
//!      counts a directly delivered, acknowledged message (3 shard counters, the `in_flight`
//!      gauge up and down, 3 per-user counters), then one publish of 22 counters and 11 gauges:
//!      what counters cost per message. Its elements are increments (8 per message).
//!
//!    `increment_2threads`: two threads at once, each doing the iteration's 256 increments;
//!    the time is the wall time until both are done, so it is per increment *per thread*. For
//!    the shared counters both threads hit the same counter; `tether_model` gives each thread
//!    its own worker struct and block, as each shard has.
//! 3. `engine_1000users_1producer` / `engine_1user_1producer` (criterion) and `engine_ab`
//!    (printed): the send -> drain -> ack loop of `benches/throughput.rs` (`N` = 200,000
//!    messages of 64 bytes per run, `shards(2)`, one producer thread `try_send`ing, one consumer
//!    thread draining up to 256 per session and acking the batch's last seq, per-user caps
//!    raised to `N` with `Reject` so nothing is dropped) with `latency_metrics(true)` and
//!    `latency_metrics(false)` side by side. Counters and gauges cannot be switched off, so the
//!    difference is the histograms' cost. Because two criterion functions run one after the
//!    other, `engine_ab` also runs both engines alternately (`AB_ROUNDS` pairs, the order
//!    swapped every pair) and prints the median of the paired ratios, for the consumer's wall
//!    time and for the CPU time the two shard worker threads spent over the run (read from
//!    `/proc/self/task/<tid>/schedstat`, Linux only): the workers are where the histograms are
//!    recorded and published, and their CPU time is less disturbed by other load than wall
//!    time. The check run of each criterion variant also prints allocation calls per message
//!    (counting allocator, one ordinary run) and the workers' CPU per message.
//!
//! Correctness before measuring: the counter models are checked to count exactly; every engine
//! variant is checked once (every message arrives exactly once, at the right user, in order;
//! seqs consecutive), and after every run the engine's counters (and per-user counters in the
//! check run) must show `N` sent, delivered and acknowledged, and the histograms `N` samples
//! each when on and none when off. Waiting loops panic after `HANG`; nothing asserts on time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, OnceLock, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use criterion::{measurement::WallTime, SamplingMode};
use metrics::{Counter, Gauge, Histogram as MHistogram, Key, KeyName, Metadata, Recorder};
use metrics::{SharedString, Unit};
use tether::{CloseReason, Engine, Message, OverflowPolicy, Session, UserId, UserLimits};

mod support;
use support::{payload, send_patiently, Patience, HANG, N, PAYLOAD};

// ---------------------------------------------------------------------------------------------
// Counting allocator

struct Counting;

/// Whether allocations are being counted (only while measuring heap or allocations).
static COUNTING: AtomicBool = AtomicBool::new(false);
/// Net bytes requested while counting.
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
/// Net blocks while counting.
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);
/// Allocation calls (alloc, alloc_zeroed, realloc) while counting.
static ALLOC_CALLS: AtomicU64 = AtomicU64::new(0);

#[inline]
fn note(bytes: isize, blocks: isize, calls: u64) {
    if COUNTING.load(Relaxed) {
        LIVE_BYTES.fetch_add(bytes, Relaxed);
        LIVE_BLOCKS.fetch_add(blocks, Relaxed);
        ALLOC_CALLS.fetch_add(calls, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the wrapper only counts on the side and never touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller upholds `alloc`'s contract (non-zero size), passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize, 1, 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize, 1, 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (every allocation goes through us to it) with
        // this layout, as our caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize), -1, 0);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; our caller upholds `new_size`'s rules.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize, 0, 1);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Net heap (bytes requested, blocks) counted so far; only differences mean anything.
#[derive(Clone, Copy, Debug)]
struct Heap {
    bytes: isize,
    blocks: isize,
}

impl Heap {
    fn now() -> Self {
        Self {
            bytes: LIVE_BYTES.load(Relaxed),
            blocks: LIVE_BLOCKS.load(Relaxed),
        }
    }

    fn since(self, earlier: Heap) -> Heap {
        Heap {
            bytes: self.bytes - earlier.bytes,
            blocks: self.blocks - earlier.blocks,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Constants

/// Increments per criterion iteration (and per modelled worker pass).
const INCS: usize = 256;
/// Counters a shard publishes per pass (`tether::Counters` has this many `u64` fields).
const COUNTERS: usize = 22;
/// Buckets + count + sum + max of one histogram, as published per pass when it changed.
const HIST_WORDS: usize = 16 + 37 * 8 + 3;
/// Metrics (users, counters) in the memory part.
const MANY: usize = 10_000;
/// Most messages the consumer takes from one session per look.
const BATCH: usize = 256;
/// Shards of the engine under test, on a 2-core machine.
const SHARDS: usize = 2;
/// Interleaved on/off pairs in `engine_ab`.
const AB_ROUNDS: usize = 100;

// ---------------------------------------------------------------------------------------------
// Command line: the printed parts honour criterion's filter and its `--test` / `--list` modes.

struct Args {
    filters: Vec<String>,
    test: bool,
    list: bool,
}

fn args() -> &'static Args {
    static ARGS: OnceLock<Args> = OnceLock::new();
    ARGS.get_or_init(|| {
        // Criterion options that take a value as the next argument.
        const WITH_VALUE: [&str; 16] = [
            "--save-baseline",
            "--baseline",
            "--baseline-lenient",
            "--load-baseline",
            "--sample-size",
            "--warm-up-time",
            "--measurement-time",
            "--nresamples",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--profile-time",
            "--color",
            "--output-format",
            "--format",
            "--plotting-backend",
        ];
        let mut out = Args {
            filters: Vec::new(),
            test: false,
            list: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            match a.as_str() {
                "--test" => out.test = true,
                "--list" => out.list = true,
                _ if WITH_VALUE.contains(&a.as_str()) => {
                    it.next();
                }
                _ if a.starts_with('-') => {}
                _ => out.filters.push(a),
            }
        }
        out
    })
}

/// Whether a printed part named `name` should run.
fn wanted(name: &str) -> bool {
    let a = args();
    !a.list && (a.filters.is_empty() || a.filters.iter().any(|f| name.contains(f.as_str())))
}

// ---------------------------------------------------------------------------------------------
// A `metrics` recorder: counters are `AtomicU64`s in a map, like metrics-util's registry.

#[derive(Default)]
struct AtomicRecorder {
    #[allow(clippy::mutable_key_type)] // `Key` hashes its precomputed hash only
    counters: RwLock<HashMap<Key, Arc<AtomicU64>>>,
}

impl AtomicRecorder {
    fn value(&self, key: &Key) -> Option<u64> {
        let map = self.counters.read().expect("recorder lock");
        map.get(key).map(|c| c.load(Relaxed))
    }

    fn len(&self) -> usize {
        self.counters.read().expect("recorder lock").len()
    }
}

impl Recorder for AtomicRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        if let Some(c) = self.counters.read().expect("recorder lock").get(key) {
            return Counter::from_arc(Arc::clone(c));
        }
        let mut map = self.counters.write().expect("recorder lock");
        Counter::from_arc(Arc::clone(map.entry(key.clone()).or_default()))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> MHistogram {
        MHistogram::noop()
    }
}

/// The process's global `metrics` recorder, installed on first use.
fn recorder() -> &'static AtomicRecorder {
    static R: OnceLock<&'static AtomicRecorder> = OnceLock::new();
    R.get_or_init(|| {
        let r: &'static AtomicRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(r).unwrap_or_else(|_| panic!("a recorder was already set"));
        r
    })
}

// ---------------------------------------------------------------------------------------------
// Part 1: memory

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn user_ids(n: usize) -> Vec<UserId> {
    (0..n)
        .map(|u| UserId::new(format!("user-{u:05}")).expect("user id"))
        .collect()
}

fn per(h: Heap, n: usize) -> String {
    format!(
        "{:>10} B  {:>6} blocks  = {:>7.1} B and {:>4.2} blocks each",
        h.bytes,
        h.blocks,
        h.bytes as f64 / n as f64,
        h.blocks as f64 / n as f64
    )
}

/// Heap growth of a one-shard engine while `MANY` users get a mailbox: empty (the user connected
/// once and closed normally, so the mailbox stays, away), or holding one `PAYLOAD`-byte message
/// sent while the user never connected (payload bytes and blocks subtracted).
fn mailboxes(rt: &tokio::runtime::Runtime, count: usize, with_message: bool) -> Heap {
    let engine = Engine::builder()
        .shards(1)
        .idle_timeout(Duration::from_secs(3600))
        .build()
        .expect("engine");
    let users = user_ids(count);
    rt.block_on(engine.barrier());
    let before = Heap::now();
    rt.block_on(async {
        for u in &users {
            if with_message {
                let m = Message::new(Bytes::copy_from_slice(&[0xA5; PAYLOAD]));
                engine.send(u, m).await.expect("send");
            } else {
                let session = engine.connect(u, None).await.expect("connect");
                session.close(CloseReason::Normal);
            }
        }
        engine.barrier().await;
    });
    let mut grown = Heap::now().since(before);
    let m = engine.metrics();
    assert_eq!(m.gauges.mailboxes, count as u64, "mailboxes created");
    assert_eq!(m.gauges.sessions_active, 0, "sessions left");
    if with_message {
        assert_eq!(m.counters.queued, count as u64, "messages queued");
        assert_eq!(m.gauges.held_bytes, (count * PAYLOAD) as u64, "bytes held");
        let stats = rt.block_on(engine.mailbox_stats(&users[count - 1]));
        let stats = stats.expect("mailbox exists");
        assert_eq!((stats.queued(), stats.counters.sent), (1, 1));
        // Each payload is one block of exactly PAYLOAD bytes (`Bytes` from a full `Vec`).
        grown.bytes -= (count * PAYLOAD) as isize;
        grown.blocks -= count as isize;
    }
    drop(engine);
    grown
}

/// Heap held by a one-shard engine after `build` and one `barrier`.
fn engine_heap(rt: &tokio::runtime::Runtime, inbox: usize, latency: bool) -> Heap {
    let before = Heap::now();
    let engine = Engine::builder()
        .shards(1)
        .inbox_capacity(inbox)
        .latency_metrics(latency)
        .build()
        .expect("engine");
    rt.block_on(engine.barrier());
    let held = Heap::now().since(before);
    drop(engine);
    held
}

fn memory() {
    if !wanted("memory") {
        return;
    }
    let rt = runtime();
    let _ = recorder();
    COUNTING.store(true, Relaxed);

    eprintln!("\n== memory: net heap bytes requested (malloc adds ~8-16 B per block on top) ==");
    // (a) mailboxes
    let before = Heap::now();
    let ids = user_ids(MANY);
    let mut ids_heap = Heap::now().since(before);
    // Only the names: the caller's `Vec<UserId>` is not the engine's.
    ids_heap.bytes -= (ids.capacity() * std::mem::size_of::<UserId>()) as isize;
    ids_heap.blocks -= 1;
    drop(ids);
    let empty = mailboxes(&rt, MANY, false);
    let one = mailboxes(&rt, MANY, true);
    // 14,336 = 7/8 of 16,384: the same slab and index capacity as at 10,000, so the bytes
    // above that were capacity reserved by doubling, not per-mailbox cost.
    let full = 14_336;
    let empty_full = mailboxes(&rt, full, false);
    let one_full = mailboxes(&rt, full, true);
    let uc = std::mem::size_of::<tether::UserCounters>();
    eprintln!(
        "(a) {MANY} UserId names (\"user-00000\", made by the caller, shared): {}",
        per(ids_heap, MANY)
    );
    eprintln!(
        "(a) {MANY} empty mailboxes (connected, closed), shards(1): {}",
        per(empty, MANY)
    );
    eprintln!(
        "(a) {MANY} mailboxes with one {PAYLOAD} B message (payload out): {}",
        per(one, MANY)
    );
    eprintln!(
        "(a) {full} empty mailboxes (same capacity as at {MANY}): {}",
        per(empty_full, full)
    );
    eprintln!(
        "(a) {full} mailboxes with one message (payload out):     {}",
        per(one_full, full)
    );
    eprintln!(
        "(a) size_of::<UserCounters>() = {uc} B ({} u64s) per mailbox = {:.1}% of an empty \
         mailbox, {:.1}% of one holding a message; {MANY} sets = {} B",
        uc / 8,
        100.0 * uc as f64 * MANY as f64 / empty.bytes as f64,
        100.0 * uc as f64 * MANY as f64 / one.bytes as f64,
        uc * MANY
    );

    // (b) the shard's metrics block
    let small = engine_heap(&rt, 1024, true);
    let large = engine_heap(&rt, 16384, true);
    let small_off = engine_heap(&rt, 1024, false);
    let per_slot = (large.bytes - small.bytes) as f64 / (16384 - 1024) as f64;
    let fixed = small.bytes as f64 - per_slot * 1024.0;
    eprintln!(
        "(b) engine shards(1) after build+barrier: inbox 1024: {} B / {} blocks; inbox 16384: \
         {} B / {} blocks; inbox 1024 with latency_metrics(false): {} B / {} blocks",
        small.bytes, small.blocks, large.bytes, large.blocks, small_off.bytes, small_off.blocks
    );
    eprintln!(
        "(b) => inbox ring {per_slot:.1} B per slot; everything else in a one-shard engine \
         {fixed:.0} B"
    );
    let before = Heap::now();
    let h = tether::Histogram::default();
    let hist = Heap::now().since(before);
    drop(h);
    let engine = Engine::builder().shards(1).build().expect("engine");
    let before = Heap::now();
    let snapshot = engine.metrics();
    let snap = Heap::now().since(before);
    drop(snapshot);
    drop(engine);
    let counters = std::mem::size_of::<tether::Counters>();
    let gauges = std::mem::size_of::<tether::Gauges>();
    // Derived, not measured: the shard's published block (counters padded to 128-byte lines,
    // gauges, 2 shared histograms) and the worker's own (counters, gauges, 2 local histograms).
    let padded = counters.div_ceil(128) * 128;
    let hist_inline = 16 + 3 * 8;
    let block = padded + gauges + 2 * hist_inline + 2 * hist.bytes as usize;
    let worker = counters + gauges + 2 * (8 + 3 * 8 + 8) + 2 * hist.bytes as usize;
    eprintln!(
        "(b) one tether::Histogram: {} B heap ({} buckets); one MetricsSnapshot: {} B heap; \
         size_of Counters {counters} B, Gauges {gauges} B",
        hist.bytes,
        hist.bytes / 8,
        snap.bytes
    );
    eprintln!(
        "(b) derived from those: shard metrics block ~{block} B + worker recorder ~{worker} B \
         = ~{} B per shard, {} B of it histogram buckets",
        block + worker,
        4 * hist.bytes
    );

    // (c) peers
    let names: Vec<String> = (0..MANY).map(|i| format!("user-{i:05}")).collect();
    let counter_names: Vec<String> = (0..MANY).map(|i| format!("bench_c{i:05}")).collect();
    let mut handles = Vec::with_capacity(MANY);
    let before = Heap::now();
    let registry = prometheus::Registry::new();
    for name in &counter_names {
        let c = prometheus::IntCounter::new(name.as_str(), "A counter.").expect("counter");
        registry.register(Box::new(c.clone())).expect("register");
        handles.push(c);
    }
    let prom = Heap::now().since(before);
    handles.iter().for_each(|c| c.inc());
    assert_eq!(
        registry.gather().len(),
        MANY,
        "prometheus counters registered"
    );
    assert!(handles.iter().all(|c| c.get() == 1));
    drop((registry, handles));

    let before = Heap::now();
    let registry = prometheus::Registry::new();
    let opts = prometheus::Opts::new("bench_messages_total", "Messages per user.");
    let vec = prometheus::IntCounterVec::new(opts, &["user"]).expect("counter vec");
    registry.register(Box::new(vec.clone())).expect("register");
    for name in &names {
        vec.with_label_values(&[name.as_str()]).inc();
    }
    let prom_vec = Heap::now().since(before);
    let families = registry.gather();
    assert_eq!(families[0].get_metric().len(), MANY, "label values");
    drop((families, registry, vec));

    let rec = recorder();
    let mut handles = Vec::with_capacity(MANY);
    let (len0, before) = (rec.len(), Heap::now());
    for name in &counter_names {
        handles.push(metrics::counter!(name.clone()));
    }
    let met = Heap::now().since(before);
    handles.iter().for_each(|c| c.increment(1));
    assert_eq!(rec.len() - len0, MANY, "metrics counters registered");
    assert_eq!(
        rec.value(&Key::from_name(counter_names[7].clone())),
        Some(1)
    );
    drop(handles);

    let (len0, before) = (rec.len(), Heap::now());
    for name in &names {
        metrics::counter!("bench_messages_total", "user" => name.clone()).increment(1);
    }
    let met_vec = Heap::now().since(before);
    assert_eq!(rec.len() - len0, MANY, "metrics label values registered");

    eprintln!(
        "(c) {MANY} prometheus IntCounters in a Registry:      {}",
        per(prom, MANY)
    );
    eprintln!(
        "(c) prometheus IntCounterVec, {MANY} label values:    {}",
        per(prom_vec, MANY)
    );
    eprintln!(
        "(c) {MANY} metrics counters by name (AtomicRecorder): {}",
        per(met, MANY)
    );
    eprintln!(
        "(c) metrics counter, {MANY} label values (AtomicRecorder): {}",
        per(met_vec, MANY)
    );
    eprintln!(
        "    tether: 8 B per counter value, inline in the mailbox: {MANY} counters = {} B",
        MANY * 8
    );
    COUNTING.store(false, Relaxed);
}

// ---------------------------------------------------------------------------------------------
// Part 2: increments

/// A worker's own counters, as `ShardRecorder::counters`.
struct Local {
    counters: [u64; COUNTERS],
}

/// A shard's published block, as `ShardMetrics::counters` (`CachePadded`).
#[repr(align(128))]
struct Block {
    counters: [AtomicU64; COUNTERS],
}

impl Block {
    fn new() -> Self {
        Self {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The field counted (`sent`).
const SENT: usize = 0;

/// The fields one message touches on its way in, out and acknowledged (direct delivery):
/// `ShardRecorder` counters `sent`, `delivered`, `acknowledged` and gauge `in_flight` (+1, -1),
/// and the mailbox's `UserCounters` `sent`, `delivered`, `acknowledged`.
const PER_MESSAGE: usize = 8;
/// Gauges a shard publishes per pass.
const GAUGES: usize = 11;

/// A worker's counters and gauges, and one mailbox's counters.
struct Worker {
    counters: [u64; COUNTERS],
    gauges: [u64; GAUGES],
    user: [u64; 9],
}

/// Its published block: counters (padded) and gauges.
#[repr(align(128))]
struct WorkerBlock {
    counters: [AtomicU64; COUNTERS],
    gauges: [AtomicU64; GAUGES],
}

/// One modelled pass of `INCS` messages, each counted in the 8 places the engine counts it
/// (so 8 * `INCS` increments), then one publish of the counters and gauges (33 stores).
#[inline]
fn tether_message_pass(w: &mut Worker, block: &WorkerBlock) {
    for _ in 0..INCS {
        // One `black_box` per increment: in the engine they happen in different places (accept,
        // deliver, settle), so none may be merged with another.
        black_box(&mut *w).counters[0] += 1; // sent
        black_box(&mut *w).user[0] += 1; // user sent
        black_box(&mut *w).user[1] += 1; // user delivered
        black_box(&mut *w).counters[1] += 1; // delivered
        black_box(&mut *w).gauges[7] += 1; // in_flight
        black_box(&mut *w).gauges[7] -= 1; // in_flight, at the ack
        black_box(&mut *w).user[3] += 1; // user acknowledged
        black_box(&mut *w).counters[4] += 1; // acknowledged
    }
    let block = black_box(block);
    for (shared, v) in block.counters.iter().zip(w.counters) {
        shared.store(v, Relaxed);
    }
    for (shared, v) in block.gauges.iter().zip(w.gauges) {
        shared.store(v, Relaxed);
    }
}

/// `LocalHistogram::record`'s work, with the same bucket layout (16 exact buckets, then 8 per
/// power of two).
struct LocalHist {
    buckets: Box<[u64; HIST_WORDS - 3]>,
    count: u64,
    sum: u64,
    max: u64,
    dirty: bool,
}

impl LocalHist {
    #[inline]
    fn record(&mut self, us: u64) {
        let b = if us < 16 {
            us as usize
        } else {
            let exp = 63 - us.leading_zeros() as usize;
            let sub = ((us >> (exp - 3)) & 7) as usize;
            (16 + (exp - 4) * 8 + sub).min(HIST_WORDS - 4)
        };
        self.buckets[b] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(us);
        self.max = self.max.max(us);
        self.dirty = true;
    }
}

/// Latencies (µs) recorded in turn by `histogram_record`.
const SAMPLE_US: [u64; 8] = [3, 17, 40, 95, 210, 1_500, 7, 64];

/// One modelled pass: `INCS` events counted, then one publish.
#[inline]
fn tether_pass(local: &mut Local, block: &Block) {
    for _ in 0..INCS {
        black_box(&mut *local).counters[SENT] += 1;
    }
    for (shared, v) in black_box(block).counters.iter().zip(local.counters) {
        shared.store(v, Relaxed);
    }
}

#[inline]
fn atomic_pass(c: &AtomicU64) {
    for _ in 0..INCS {
        black_box(c).fetch_add(1, Relaxed);
    }
}

#[inline]
fn metrics_pass(c: &Counter) {
    for _ in 0..INCS {
        black_box(c).increment(1);
    }
}

#[inline]
fn macro_pass() {
    for _ in 0..INCS {
        metrics::counter!("bench_macro_total").increment(1);
    }
}

#[inline]
fn prometheus_pass(c: &prometheus::IntCounter) {
    for _ in 0..INCS {
        black_box(c).inc();
    }
}

#[inline]
fn prometheus_local_pass(c: &prometheus::local::LocalIntCounter) {
    for _ in 0..INCS {
        black_box(c).inc();
    }
    c.flush();
}

struct HistBlock {
    words: Box<[u64]>,
    shared: Box<[AtomicU64]>,
}

impl HistBlock {
    fn new() -> Self {
        Self {
            words: vec![1; HIST_WORDS].into_boxed_slice(),
            shared: (0..HIST_WORDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// As `SharedHistogram::publish` of a dirty histogram.
    #[inline]
    fn publish(&self) {
        for (s, v) in black_box(&self.shared).iter().zip(self.words.iter()) {
            s.store(*v, Relaxed);
        }
    }
}

/// Checks every model counts exactly before anything is measured.
fn check_counters() {
    let (mut local, block) = (
        Local {
            counters: [0; COUNTERS],
        },
        Block::new(),
    );
    for _ in 0..10 {
        tether_pass(&mut local, &block);
    }
    assert_eq!(block.counters[SENT].load(Relaxed), 10 * INCS as u64);
    assert_eq!(
        COUNTERS * 8,
        std::mem::size_of::<tether::Counters>(),
        "tether::Counters changed: update COUNTERS"
    );
    let mut w = Worker {
        counters: [0; COUNTERS],
        gauges: [0; GAUGES],
        user: [0; 9],
    };
    let wb = WorkerBlock {
        counters: std::array::from_fn(|_| AtomicU64::new(0)),
        gauges: std::array::from_fn(|_| AtomicU64::new(0)),
    };
    tether_message_pass(&mut w, &wb);
    assert_eq!(wb.counters[4].load(Relaxed), INCS as u64);
    assert_eq!((wb.gauges[7].load(Relaxed), w.user[3]), (0, INCS as u64));
    assert_eq!(
        GAUGES * 8,
        std::mem::size_of::<tether::Gauges>(),
        "tether::Gauges changed: update GAUGES"
    );
    let a = AtomicU64::new(0);
    atomic_pass(&a);
    assert_eq!(a.load(Relaxed), INCS as u64);
    let rec = recorder();
    let h = metrics::counter!("bench_check_total");
    metrics_pass(&h);
    assert_eq!(
        rec.value(&Key::from_name("bench_check_total")),
        Some(INCS as u64)
    );
    macro_pass();
    assert_eq!(
        rec.value(&Key::from_name("bench_macro_total")),
        Some(INCS as u64)
    );
    let p = prometheus::IntCounter::new("bench_check", "c").expect("counter");
    prometheus_pass(&p);
    let l = p.local();
    prometheus_local_pass(&l);
    assert_eq!(p.get(), 2 * INCS as u64);
}

fn increments(c: &mut Criterion) {
    check_counters();
    let mut g = c.benchmark_group("increment");
    g.throughput(Throughput::Elements(INCS as u64));

    let (mut local, block) = (
        Local {
            counters: [0; COUNTERS],
        },
        Block::new(),
    );
    g.bench_function("tether_model", |b| {
        b.iter(|| tether_pass(&mut local, &block))
    });
    let a = AtomicU64::new(0);
    g.bench_function("atomic_fetch_add", |b| b.iter(|| atomic_pass(&a)));
    let handle = metrics::counter!("bench_handle_total");
    g.bench_function("metrics_handle", |b| b.iter(|| metrics_pass(&handle)));
    g.bench_function("metrics_macro", |b| b.iter(macro_pass));
    g.bench_function("metrics_noop", |b| {
        let noop = metrics::NoopRecorder;
        metrics::with_local_recorder(&noop, || b.iter(macro_pass));
    });
    let p = prometheus::IntCounter::new("bench_inc", "c").expect("counter");
    g.bench_function("prometheus_int_counter", |b| b.iter(|| prometheus_pass(&p)));
    let l = p.local();
    g.bench_function("prometheus_local", |b| b.iter(|| prometheus_local_pass(&l)));
    let (h1, h2) = (HistBlock::new(), HistBlock::new());
    g.bench_function("histogram_publish", |b| {
        b.iter(|| {
            h1.publish();
            h2.publish();
        })
    });
    let mut hist = LocalHist {
        buckets: Box::new([0; HIST_WORDS - 3]),
        count: 0,
        sum: 0,
        max: 0,
        dirty: false,
    };
    g.bench_function("histogram_record", |b| {
        b.iter(|| {
            let h = black_box(&mut hist);
            for i in 0..INCS {
                h.record(black_box(SAMPLE_US[i % SAMPLE_US.len()]));
            }
        })
    });
    let mut w = Worker {
        counters: [0; COUNTERS],
        gauges: [0; GAUGES],
        user: [0; 9],
    };
    let block = WorkerBlock {
        counters: std::array::from_fn(|_| AtomicU64::new(0)),
        gauges: std::array::from_fn(|_| AtomicU64::new(0)),
    };
    g.throughput(Throughput::Elements((INCS * PER_MESSAGE) as u64));
    g.bench_function("tether_model_per_message", |b| {
        b.iter(|| tether_message_pass(&mut w, &block))
    });
    g.finish();

    let mut g = c.benchmark_group("increment_2threads");
    g.throughput(Throughput::Elements(INCS as u64));
    g.bench_function("tether_model", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let (mut local, block) = (
                    Local {
                        counters: [0; COUNTERS],
                    },
                    Block::new(),
                );
                move |iters: u64| {
                    for _ in 0..iters {
                        tether_pass(&mut local, &block);
                    }
                    assert_eq!(block.counters[SENT].load(Relaxed), iters * INCS as u64);
                }
            })
        })
    });
    g.bench_function("atomic_fetch_add", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let a = &a;
                move |iters: u64| (0..iters).for_each(|_| atomic_pass(a))
            })
        })
    });
    g.bench_function("metrics_handle", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let h = &handle;
                move |iters: u64| (0..iters).for_each(|_| metrics_pass(h))
            })
        })
    });
    g.bench_function("prometheus_int_counter", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let p = &p;
                move |iters: u64| (0..iters).for_each(|_| prometheus_pass(p))
            })
        })
    });
    g.finish();
}

/// Runs `work(iters)` on two threads at once (each made by `make`), timed from a common start
/// until both finish.
fn two_threads<F, W>(iters: u64, make: F) -> Duration
where
    F: Fn() -> W + Sync,
    W: FnOnce(u64) + Send,
{
    let barrier = Barrier::new(3);
    thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (barrier, work) = (&barrier, make());
                s.spawn(move || {
                    barrier.wait();
                    work(iters);
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for w in workers {
            w.join().expect("worker");
        }
        start.elapsed()
    })
}

// ---------------------------------------------------------------------------------------------
// Part 3: the engine with latency metrics on and off (the loop of benches/throughput.rs)

/// Thread ids of this process (Linux `/proc`; empty elsewhere).
fn task_ids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Nanoseconds thread `tid` has spent on a CPU (first field of its `schedstat`).
fn cpu_ns(tid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

struct Tether {
    users: usize,
    latency: bool,
    /// The engine's shard worker threads, to read their CPU time (empty if unknown).
    workers: Vec<u32>,
    // Sessions first: they are dropped (closed) before the engine stops.
    sessions: Vec<Session>,
    last_seq: Vec<u64>,
    ids: Vec<UserId>,
    engine: Engine,
    rt: tokio::runtime::Runtime,
}

impl Tether {
    fn new(users: usize, latency: bool) -> Self {
        let tasks = task_ids();
        let engine = Engine::builder()
            .shards(SHARDS)
            .latency_metrics(latency)
            .user_limits(UserLimits {
                max_messages: N as usize,
                max_bytes: N as usize * PAYLOAD,
                overflow: OverflowPolicy::Reject,
            })
            .build()
            .expect("engine config");
        let ids: Vec<UserId> = (0..users)
            .map(|u| UserId::new(format!("user-{u}")).expect("user id"))
            .collect();
        let rt = runtime();
        let sessions = rt.block_on(async {
            let mut sessions = Vec::with_capacity(ids.len());
            for u in &ids {
                sessions.push(engine.connect(u, None).await.expect("connect"));
            }
            engine.barrier().await;
            sessions
        });
        // After the barrier: every worker has run, so it has set its name.
        let mut workers: Vec<u32> = task_ids()
            .into_iter()
            .filter(|t| !tasks.contains(t))
            .filter(|t| {
                let comm = std::fs::read_to_string(format!("/proc/self/task/{t}/comm"));
                comm.is_ok_and(|c| c.starts_with("tether-shard"))
            })
            .collect();
        if workers.len() != SHARDS || workers.iter().any(|&t| cpu_ns(t).is_none()) {
            workers.clear();
        }
        Self {
            users,
            latency,
            workers,
            sessions,
            last_seq: vec![0; users],
            ids,
            engine,
            rt,
        }
    }

    /// Per-user counters summed over all users: (sent, delivered, acknowledged).
    fn user_totals(&self) -> (u64, u64, u64) {
        self.rt.block_on(async {
            let mut t = (0, 0, 0);
            for u in &self.ids {
                let c = self
                    .engine
                    .mailbox_stats(u)
                    .await
                    .expect("mailbox")
                    .counters;
                t = (t.0 + c.sent, t.1 + c.delivered, t.2 + c.acknowledged);
            }
            t
        })
    }

    /// CPU time of the shard workers so far, ns.
    fn worker_cpu(&self) -> Option<u64> {
        if self.workers.is_empty() {
            return None;
        }
        self.workers.iter().map(|&t| cpu_ns(t)).sum()
    }

    /// Moves `N` messages; returns the consumer's time from the start signal to the last one
    /// and the shard workers' CPU time over the run (through the closing barrier).
    /// With `check`, verifies every message arrived once, at its user, in order, with
    /// consecutive seqs, and the per-user counters. Always verifies the engine's counters and
    /// histograms moved by exactly `N`.
    fn run(&mut self, check: bool) -> (Duration, Option<u64>) {
        let before = self.engine.metrics();
        let cpu_before = self.worker_cpu();
        let users_before = check.then(|| self.user_totals());
        let users = self.users;
        let barrier = Barrier::new(2);
        let deadline = Instant::now() + HANG;
        let (engine, ids) = (&self.engine, &self.ids);
        let (sessions, last_seq) = (&mut self.sessions, &mut self.last_seq);
        let mut seen = if check {
            vec![false; N as usize]
        } else {
            Vec::new()
        };
        let mut last_index: Vec<Option<u64>> = vec![None; users];
        let (mut count, mut sum) = (0u64, 0u64);
        let elapsed = thread::scope(|s| {
            let barrier = &barrier;
            s.spawn(move || {
                let mut patience = Patience::new(deadline);
                barrier.wait();
                for i in 0..N {
                    let user = &ids[(i % users as u64) as usize];
                    send_patiently(engine, user, Message::new(payload(i)), &mut patience);
                }
            });
            let mut buf = Vec::with_capacity(BATCH);
            let mut patience = Patience::new(deadline);
            barrier.wait();
            let start = Instant::now();
            while count < N {
                let mut got = 0;
                for (u, session) in sessions.iter_mut().enumerate() {
                    if session.drain(&mut buf, BATCH) == 0 {
                        continue;
                    }
                    got += buf.len();
                    for d in buf.drain(..) {
                        let mut head = [0u8; 8];
                        head.copy_from_slice(&d.payload()[..8]);
                        let i = u64::from_le_bytes(head);
                        count += 1;
                        sum = sum.wrapping_add(i);
                        if check {
                            assert_eq!(d.seq(), last_seq[u] + 1, "user {u}: seq gap");
                            assert_eq!(d.payload().len(), PAYLOAD);
                            assert_eq!((i % users as u64) as usize, u, "{i}: wrong user");
                            assert!(!seen[i as usize], "message {i} arrived twice");
                            seen[i as usize] = true;
                            assert!(last_index[u] < Some(i), "user {u}: {i} out of order");
                            last_index[u] = Some(i);
                        }
                        last_seq[u] = d.seq();
                    }
                    session.ack(last_seq[u]).expect("ack");
                }
                if got == 0 {
                    patience.wait("tether consumer");
                } else {
                    patience.progress();
                }
            }
            start.elapsed()
        });
        assert_eq!(count, N, "message count");
        assert_eq!(sum, N * (N - 1) / 2, "index checksum");
        assert!(seen.iter().all(|&s| s), "a message never arrived");
        self.rt.block_on(self.engine.barrier());
        let cpu = self.worker_cpu().zip(cpu_before).map(|(a, b)| a - b);
        let d = self.engine.metrics().diff(&before);
        let c = &d.counters;
        assert_eq!((c.sent, c.delivered, c.acknowledged), (N, N, N), "counters");
        let samples = if self.latency { N } else { 0 };
        assert_eq!(d.enqueue_to_delivery.count, samples, "enqueue_to_delivery");
        assert_eq!(d.delivery_to_ack.count, samples, "delivery_to_ack");
        assert_eq!(d.gauges.in_flight, 0, "in flight after the last ack");
        if let Some((s0, d0, a0)) = users_before {
            let (s1, d1, a1) = self.user_totals();
            assert_eq!((s1 - s0, d1 - d0, a1 - a0), (N, N, N), "per-user counters");
        }
        (elapsed, cpu)
    }

    /// The check run, then one ordinary run counting allocation calls (all threads).
    fn check(&mut self) {
        self.run(true);
        let calls = ALLOC_CALLS.load(Relaxed);
        COUNTING.store(true, Relaxed);
        let (_, cpu) = self.run(false);
        COUNTING.store(false, Relaxed);
        let calls = ALLOC_CALLS.load(Relaxed) - calls;
        let cpu = cpu.map_or("n/a".to_string(), |c| format!("{:.1}", c as f64 / N as f64));
        eprintln!(
            "engine {} user(s), latency_metrics({}): checked; in a run: {:.4} allocation calls \
             per message (all threads; the barrier and snapshots after it included), shard \
             workers' CPU {cpu} ns per message",
            self.users,
            self.latency,
            calls as f64 / N as f64
        );
    }
}

fn engine_variant(g: &mut BenchmarkGroup<'_, WallTime>, users: usize, latency: bool) {
    let mut state: Option<Tether> = None;
    let name = if latency { "metrics_on" } else { "metrics_off" };
    g.bench_function(name, |b| {
        let t = state.get_or_insert_with(|| {
            let mut t = Tether::new(users, latency);
            t.check();
            t
        });
        b.iter_custom(|iters| (0..iters).map(|_| t.run(false).0).sum());
    });
}

fn engine(c: &mut Criterion) {
    for users in [1000, 1] {
        let u = if users == 1 { "user" } else { "users" };
        let mut g = c.benchmark_group(format!("engine_{users}{u}_1producer"));
        g.throughput(Throughput::Elements(N));
        g.sampling_mode(SamplingMode::Flat);
        g.warm_up_time(Duration::from_secs(1));
        g.measurement_time(Duration::from_secs(4));
        engine_variant(&mut g, users, true);
        engine_variant(&mut g, users, false);
        g.finish();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Both engines alternately, the order swapped every pair; prints medians and the paired ratio.
fn engine_ab() {
    if !wanted("engine_ab") {
        return;
    }
    let rounds = if args().test { 1 } else { AB_ROUNDS };
    eprintln!("\n== engine_ab: latency_metrics on vs off, {rounds} interleaved pairs ==");
    for users in [1000, 1] {
        let mut on = Tether::new(users, true);
        let mut off = Tether::new(users, false);
        on.run(true);
        off.run(true);
        let mut wall = Samples::default();
        let mut cpu = Samples::default();
        for r in 0..rounds {
            let (a, b) = if r % 2 == 0 {
                let a = on.run(false);
                (a, off.run(false))
            } else {
                let b = off.run(false);
                (on.run(false), b)
            };
            wall.push(a.0.as_nanos() as f64, b.0.as_nanos() as f64);
            if let (Some(a), Some(b)) = (a.1, b.1) {
                cpu.push(a as f64, b as f64);
            }
        }
        eprintln!("{users:>4} user(s), wall time:          {}", wall.report());
        if cpu.on.is_empty() {
            eprintln!("{users:>4} user(s), shard worker CPU:   n/a (no /proc/self/task)");
        } else {
            eprintln!("{users:>4} user(s), shard worker CPU:   {}", cpu.report());
        }
    }
}

/// Paired on/off measurements of whole runs (ns per run).
#[derive(Default)]
struct Samples {
    on: Vec<f64>,
    off: Vec<f64>,
    ratio: Vec<f64>,
}

impl Samples {
    fn push(&mut self, on: f64, off: f64) {
        self.on.push(on / N as f64);
        self.off.push(off / N as f64);
        self.ratio.push(on / off);
    }

    fn report(&mut self) -> String {
        let (on, off, ratio) = (
            median(&mut self.on),
            median(&mut self.off),
            median(&mut self.ratio),
        );
        let n = self.ratio.len();
        let (lo, hi) = (self.ratio[n / 4], self.ratio[(3 * n) / 4]);
        format!(
            "on {on:.1} ns/msg, off {off:.1} ns/msg (medians); paired on/off median {ratio:.4} \
             (IQR {lo:.4}..{hi:.4}) => histograms {:+.2}%",
            (ratio - 1.0) * 100.0
        )
    }
}

criterion_group! {
    name = counters;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1));
    targets = increments
}
criterion_group! {
    name = engines;
    config = Criterion::default().sample_size(10);
    targets = engine
}
criterion_main!(memory, counters, engines, engine_ab);
