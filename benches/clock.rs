//! What reading the time costs, for the latency histograms: every send reads the engine's
//! clock once (the producer's call), a shard worker once per batch of commands, a WebSocket
//! connection once per flush.
//!
//! Compared, each one read of the current time:
//! - `Instant::now`: the monotonic clock through the vDSO (`clock_gettime`), what the engine
//!   uses;
//! - `Clock::now_us`: the engine's clock (`Instant::elapsed` since its start, in µs);
//! - `quanta::Instant::now`: the TSC, scaled (what a TSC-based crate would save);
//! - `quanta::Instant::recent`: a coarse clock that a background thread updates every
//!   millisecond (one atomic load: what a coarse clock would save, at 1 ms resolution, too
//!   coarse for µs latencies).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

fn clocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock");
    g.bench_function("std_instant_now", |b| b.iter(|| black_box(Instant::now())));
    let engine = tether::Clock::system();
    g.bench_function("engine_clock_now_us", |b| {
        b.iter(|| black_box(engine.now_us()))
    });
    let tsc = quanta::Clock::new();
    g.bench_function("quanta_now", |b| b.iter(|| black_box(tsc.now())));
    let upkeep = quanta::Upkeep::new(Duration::from_millis(1))
        .start()
        .expect("the upkeep thread starts");
    g.bench_function("quanta_recent", |b| {
        b.iter(|| black_box(quanta::Instant::recent()))
    });
    drop(upkeep);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = clocks
}
criterion_main!(benches);
