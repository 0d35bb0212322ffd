//! The circuit breaker's hot-path check beside its peers, in the same run.
//!
//! - `check_1t`: one thread asks "may I deliver now?" in a loop:
//!   - `atomic_u8_load`: a plain `AtomicU8::load(Acquire)`, the floor;
//!   - `tether_closed`: `BreakerCell::may_deliver(now)` on a closed breaker (the common case);
//!   - `tether_open`: the same on an open breaker still cooling down;
//!   - `failsafe_closed`: `failsafe`'s `is_call_permitted()` on a closed
//!     `failsafe::Config::new().build()` breaker (a `parking_lot` mutex around its state).
//! - `check_2t`: two threads hammer the same breaker (or byte) at once, started together by a
//!   `Barrier` and timed each from the release (`iter_custom`, as in rtrb's benches); the
//!   reported time is the slower thread's, per check of that thread.
//!
//! One criterion iteration is one check, so the reported time is nanoseconds per check. Each
//! implementation is checked for the expected answer before it is measured.

use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use failsafe::CircuitBreaker;
use tether::breaker::{Breaker, BreakerCell, BreakerConfig, BreakerState, Permit, Transition};

/// Engine time of every check, in milliseconds.
const NOW: u64 = 1_000;

fn closed_breaker() -> Breaker {
    let breaker = Breaker::new(&BreakerConfig::default());
    assert_eq!(breaker.cell().may_deliver(NOW), Permit::Yes);
    breaker
}

fn open_breaker() -> Breaker {
    let config = BreakerConfig {
        failure_threshold: 1,
        cooldown: Duration::from_secs(10),
        max_cooldown: Duration::from_secs(10),
    };
    let mut breaker = Breaker::new(&config).with_seed(1);
    let Some(Transition::Opened { until_ms }) = breaker.record_failure(NOW) else {
        panic!("a failure at threshold 1 opens the breaker");
    };
    assert!(until_ms > NOW);
    assert_eq!(breaker.state(), BreakerState::Open { until_ms });
    assert_eq!(breaker.cell().may_deliver(NOW), Permit::No);
    breaker
}

fn failsafe_breaker() -> impl CircuitBreaker + Sync {
    let breaker = failsafe::Config::new().build();
    assert!(breaker.is_call_permitted());
    breaker
}

#[inline]
fn tether_check(cell: &BreakerCell) -> bool {
    cell.may_deliver(black_box(NOW)) == Permit::Yes
}

/// Runs `check` `iters` times on each of two threads released together; returns the slower
/// thread's time.
fn two_threads<F: Fn() -> bool + Sync>(iters: u64, check: F) -> Duration {
    let barrier = Barrier::new(2);
    thread::scope(|s| {
        let run = || {
            barrier.wait();
            let start = Instant::now();
            for _ in 0..iters {
                black_box(check());
            }
            start.elapsed()
        };
        let other = s.spawn(run);
        let mine = run();
        mine.max(other.join().unwrap())
    })
}

fn check_1t(c: &mut Criterion) {
    let byte = AtomicU8::new(1);
    assert_eq!(byte.load(Ordering::Acquire), 1);
    let closed = closed_breaker();
    let open = open_breaker();
    let failsafe = failsafe_breaker();

    let mut g = c.benchmark_group("breaker/check_1t");
    g.bench_function("atomic_u8_load", |b| {
        b.iter(|| black_box(&byte).load(Ordering::Acquire) == 1)
    });
    g.bench_function("tether_closed", |b| {
        b.iter(|| tether_check(black_box(closed.cell())))
    });
    g.bench_function("tether_open", |b| {
        b.iter(|| black_box(open.cell()).may_deliver(black_box(NOW)) == Permit::No)
    });
    g.bench_function("failsafe_closed", |b| {
        b.iter(|| black_box(&failsafe).is_call_permitted())
    });
    g.finish();
}

fn check_2t(c: &mut Criterion) {
    let byte = AtomicU8::new(1);
    let closed = closed_breaker();
    let cell = closed.cell().clone();
    let failsafe = failsafe_breaker();
    // Both threads get the expected answers before anything is timed.
    thread::scope(|s| {
        let all_yes = || {
            (0..1000).all(|_| {
                tether_check(&cell)
                    && failsafe.is_call_permitted()
                    && byte.load(Ordering::Acquire) == 1
            })
        };
        let t = s.spawn(all_yes);
        assert!(all_yes());
        assert!(t.join().unwrap());
    });

    let mut g = c.benchmark_group("breaker/check_2t");
    g.bench_function("atomic_u8_load", |b| {
        b.iter_custom(|iters| two_threads(iters, || byte.load(Ordering::Acquire) == 1))
    });
    g.bench_function("tether_closed", |b| {
        b.iter_custom(|iters| two_threads(iters, || tether_check(&cell)))
    });
    g.bench_function("failsafe_closed", |b| {
        b.iter_custom(|iters| two_threads(iters, || failsafe.is_call_permitted()))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = check_1t, check_2t
}
criterion_main!(benches);
