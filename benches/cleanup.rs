//! Cleaning up after users who went away, beside the design a team would write first, in the
//! same run.
//!
//! The engine: one shard (`shards(1)`), a manual clock (`Clock::manual()`), payloads of 64 B.
//! Users never connect, so each mailbox counts as away since it was created and its removal
//! timer sits in the shard's timing wheel. Time moves only when the bench advances the clock;
//! `barrier()` then makes the shard act on the new time (fire due timers) and reply.
//!
//! The naive peer: `HashMap<u32, (away_since_ms, VecDeque<Bytes>)>`, and a cleanup tick that
//! scans the whole map (`retain`) and drops every entry away for longer than the retention.
//!
//! (a) `cleanup/expire_1000_away`: 1000 away mailboxes holding 3 messages each, kept 1 minute.
//! - `tether`: `clock.advance(61 s)` + `barrier()`; the barrier's pass fires the 1000 removal
//!   timers. Setup (3000 sends and a barrier) is outside the timed region; afterwards a sample
//!   user's `mailbox_stats` is `None` and `memory_used()` is 0.
//! - `tether_round_trip`: the same setup, then `clock.advance(0)` + `barrier()`: nothing is
//!   due, so this is the cross-thread round trip alone (waking the parked worker and being
//!   woken by its reply), in the same conditions.
//! - `naive_scan`: one tick at +61 s that finds and drops all 1000 entries.
//!
//! (b) `cleanup/idle_1m`: 1,000,000 away mailboxes holding one message each, kept 1 hour,
//! built once outside the timed region (the resident memory it took is printed).
//! - `tether_advance_1s`: `clock.advance(1 s)` + `barrier()`; nothing expires.
//! - `tether_round_trip`: `clock.advance(0)` + `barrier()`.
//! - `naive_scan`: one full scan of the 1M-entry map in which nothing expires.
//!
//! The round trip wakes a parked worker thread and is woken by its reply; on the 2-vCPU VM
//! measured it is either about 3 µs or about 75 µs depending on the state of the machine, for
//! seconds at a time, so criterion benches run one after the other can see different modes.
//! After each group the bench therefore also alternates the two steps it compares (the round
//! trip and the step under test) in one bounded loop and prints the median of each.
//!
//! All 1M removal timers were set in the same millisecond (a manual clock), so they share one
//! wheel slot and cascade together a few times before they fire, the first time about 56
//! minutes in. The 1 s steps must stay clear of that: the bench computes the tick of the first
//! cascade with a `tether::time::Wheel` placed like the shard's, and rebuilds the 1M
//! mailboxes (untimed) if the next step would reach it. After the criterion runs, the bench
//! steps the clock once through each of those ticks and prints what each barrier took
//! (single measurements, not statistics): the cascades, then the expiry of all 1M mailboxes
//! at the hour, after which memory_used() must be 0. The naive peer's tick at the hour is
//! timed once too.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode};
use tether::time::Wheel;
use tether::{Clock, Engine, Message, UserId};
use tokio::runtime::Runtime;

const PAYLOAD_BYTES: usize = 64;

const AWAY_USERS: usize = 1000;
const MESSAGES_PER_AWAY_USER: usize = 3;
const SHORT_KEEP: Duration = Duration::from_secs(60);

const IDLE_USERS: usize = 1_000_000;
const LONG_KEEP: Duration = Duration::from_secs(3600);
const STEP: Duration = Duration::from_secs(1);

/// Rounds of the paired measurements printed after the criterion runs.
const PAIRED_AWAY_ROUNDS: usize = 200;
const PAIRED_IDLE_STEPS: usize = 2000;

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn user(prefix: &str, i: usize) -> UserId {
    UserId::new(format!("{prefix}-{i}")).expect("a valid user id")
}

fn payload(i: usize) -> Bytes {
    Bytes::from(vec![i as u8; PAYLOAD_BYTES])
}

/// Resident memory of this process, from /proc (0 where unavailable).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// An engine with one shard and a manual clock.
struct Fleet {
    engine: Engine,
    clock: Clock,
}

impl Fleet {
    fn new(keep: Duration) -> Self {
        let clock = Clock::manual();
        let engine = Engine::builder()
            .shards(1)
            .clock(clock.clone())
            .keep_away_mailboxes(keep, keep)
            .build()
            .expect("a valid configuration");
        Self { engine, clock }
    }

    /// Sends `per_user` messages to each of `users` users named `prefix-i`, then waits until
    /// they are all queued.
    async fn fill(&self, prefix: &str, users: usize, per_user: usize) {
        for i in 0..users {
            let u = user(prefix, i);
            for m in 0..per_user {
                self.engine
                    .send(&u, Message::new(payload(i + m)))
                    .await
                    .expect("the engine accepts the send");
            }
        }
        self.engine.barrier().await;
        assert_eq!(
            self.engine.memory_used(),
            (users * per_user * PAYLOAD_BYTES) as u64,
            "every message is held"
        );
    }

    /// Advances the clock and waits for the shard to act on it; returns how long that took.
    async fn step(&self, by: Duration) -> Duration {
        let start = Instant::now();
        self.clock.advance(by);
        self.engine.barrier().await;
        start.elapsed()
    }
}

/// What a team writes first: every away connection in one map, and a cleanup tick that scans
/// all of it.
struct NaiveAway {
    map: HashMap<u32, (u64, VecDeque<Bytes>)>,
    keep_ms: u64,
}

impl NaiveAway {
    fn new(keep: Duration) -> Self {
        Self {
            map: HashMap::new(),
            keep_ms: ms(keep),
        }
    }

    fn fill(&mut self, users: usize, per_user: usize, now: u64) {
        for i in 0..users {
            let (_, queue) = self
                .map
                .entry(i as u32)
                .or_insert_with(|| (now, VecDeque::new()));
            for m in 0..per_user {
                queue.push_back(payload(i + m));
            }
        }
    }

    /// One cleanup tick: drops every connection away for `keep` or longer. Returns how many.
    fn tick(&mut self, now: u64) -> usize {
        let before = self.map.len();
        let keep = self.keep_ms;
        self.map
            .retain(|_, (since, _)| now.saturating_sub(*since) < keep);
        before - self.map.len()
    }
}

fn config(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800));
}

// ---------------------------------------------------------------------------------------------
// (a) 1000 away mailboxes expiring

fn expire_1000_away(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("cleanup/expire_1000_away");
    config(&mut group);

    let fleet = Fleet::new(SHORT_KEEP);
    let sample = user("away", AWAY_USERS / 2);
    group.bench_function("tether", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    fleet.fill("away", AWAY_USERS, MESSAGES_PER_AWAY_USER).await;
                    let stats = fleet.engine.mailbox_stats(&sample).await;
                    assert_eq!(
                        stats.map(|s| s.queued()),
                        Some(MESSAGES_PER_AWAY_USER),
                        "the sample user's mailbox holds its messages"
                    );
                    total += fleet.step(SHORT_KEEP + Duration::from_secs(1)).await;
                    assert!(
                        fleet.engine.mailbox_stats(&sample).await.is_none(),
                        "the sample user's mailbox is removed"
                    );
                    assert_eq!(fleet.engine.memory_used(), 0, "every message is freed");
                }
                total
            })
        })
    });

    // The same setup, then a step that finds nothing due: the round trip alone, in the same
    // conditions (the worker has just gone idle after the setup).
    group.bench_function("tether_round_trip", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    fleet.fill("away", AWAY_USERS, MESSAGES_PER_AWAY_USER).await;
                    assert!(fleet.engine.mailbox_stats(&sample).await.is_some());
                    total += fleet.step(Duration::ZERO).await;
                    assert!(
                        fleet.engine.mailbox_stats(&sample).await.is_some(),
                        "nothing is due yet"
                    );
                    fleet.step(SHORT_KEEP + Duration::from_secs(1)).await;
                    assert_eq!(fleet.engine.memory_used(), 0, "every message is freed");
                }
                total
            })
        })
    });

    group.bench_function("naive_scan", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut naive = NaiveAway::new(SHORT_KEEP);
                naive.fill(AWAY_USERS, MESSAGES_PER_AWAY_USER, 0);
                let start = Instant::now();
                let removed = naive.tick(ms(SHORT_KEEP) + 1000);
                total += start.elapsed();
                assert_eq!(removed, AWAY_USERS);
                assert!(naive.map.is_empty());
            }
            total
        })
    });
    group.finish();

    // Paired: a round trip and the expiring step alternate, so both see the same conditions.
    let mut trip = Vec::with_capacity(PAIRED_AWAY_ROUNDS);
    let mut expire = Vec::with_capacity(PAIRED_AWAY_ROUNDS);
    rt.block_on(async {
        for _ in 0..PAIRED_AWAY_ROUNDS {
            fleet.fill("away", AWAY_USERS, MESSAGES_PER_AWAY_USER).await;
            trip.push(fleet.step(Duration::ZERO).await);
            expire.push(fleet.step(SHORT_KEEP + Duration::from_secs(1)).await);
            assert_eq!(fleet.engine.memory_used(), 0, "every message is freed");
        }
    });
    let (trip, expire) = (median(&mut trip), median(&mut expire));
    let work = expire.saturating_sub(trip);
    println!(
        "cleanup/expire_1000_away/paired: {PAIRED_AWAY_ROUNDS} rounds of (advance 0 + barrier, \
         advance 61 s + barrier): medians {trip:.2?} and {expire:.2?}; expiry work {work:.2?} \
         ({:.0} ns per mailbox)",
        work.as_nanos() as f64 / AWAY_USERS as f64
    );
}

// ---------------------------------------------------------------------------------------------
// (b) 1M away mailboxes, nothing due

/// The 1M-mailbox engine and the ticks at which its removal timers next move.
struct Million {
    fleet: Fleet,
    /// Where the shard's wheel holds the removal timers: the ticks at which they cascade to a
    /// lower level, then the tick at which they fire.
    events: Vec<u64>,
}

impl Million {
    fn build(rt: &Runtime) -> Self {
        let fleet = Fleet::new(LONG_KEEP);
        let mut million = Self {
            fleet,
            events: Vec::new(),
        };
        million.fill(rt);
        million
    }

    /// Drops the mailboxes, then builds them again with a new clock.
    fn rebuild(&mut self, rt: &Runtime) {
        println!("cleanup/idle_1m: rebuilding (the 1 s steps would reach the first cascade)");
        self.fleet = Fleet::new(LONG_KEEP);
        self.fill(rt);
    }

    fn fill(&mut self, rt: &Runtime) {
        let fleet = &self.fleet;
        let before = rss_bytes();
        let start = Instant::now();
        rt.block_on(fleet.fill("idle", IDLE_USERS, 1));
        let took = start.elapsed();
        let after = rss_bytes();
        println!(
            "cleanup/idle_1m: built {IDLE_USERS} mailboxes x 1 message of {PAYLOAD_BYTES} B in \
             {took:.2?}; resident memory +{:.1} MiB ({:.0} B per mailbox, payload included)",
            mib(after.saturating_sub(before)),
            after.saturating_sub(before) as f64 / IDLE_USERS as f64,
        );
        // Every mailbox was created at tick 0, when the shard's wheel was at tick 0.
        let created = fleet.clock.now_ms();
        let mut model = Wheel::new();
        model.advance(created, &mut Vec::new());
        model.insert(created + ms(LONG_KEEP), ());
        let mut events = Vec::new();
        let mut fired = Vec::new();
        while let Some(at) = model.next_deadline() {
            events.push(at);
            model.advance(at, &mut fired);
        }
        assert_eq!(fired.len(), 1);
        assert_eq!(events.last(), Some(&(created + ms(LONG_KEEP))));
        self.events = events;
    }

    /// Whether the clock can move by `by` without reaching the first cascade.
    fn room_for(&self, by: Duration) -> bool {
        self.fleet.clock.now_ms() + ms(by) < self.events[0]
    }
}

fn idle_1m(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("cleanup/idle_1m");
    config(&mut group);
    let sample = user("idle", IDLE_USERS / 2);

    // The naive map first, so neither resident-memory figure reuses memory the other freed.
    let before = rss_bytes();
    let mut naive = NaiveAway::new(LONG_KEEP);
    naive.fill(IDLE_USERS, 1, 0);
    println!(
        "cleanup/idle_1m: the naive map of {IDLE_USERS} entries x 1 message: resident memory \
         +{:.1} MiB",
        mib(rss_bytes().saturating_sub(before))
    );

    let mut million = Million::build(rt);
    group.bench_function("tether_advance_1s", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if !million.room_for(STEP) {
                    million.rebuild(rt);
                }
                total += rt.block_on(million.fleet.step(STEP));
            }
            total
        })
    });
    group.bench_function("tether_round_trip", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += million.fleet.step(Duration::ZERO).await;
                }
                total
            })
        })
    });
    let engine = &million.fleet.engine;
    assert_eq!(
        rt.block_on(engine.mailbox_stats(&sample))
            .map(|s| s.queued()),
        Some(1),
        "nothing expired"
    );
    assert_eq!(engine.memory_used(), (IDLE_USERS * PAYLOAD_BYTES) as u64);

    group.bench_function("naive_scan", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let removed = naive.tick(ms(STEP));
                total += start.elapsed();
                assert_eq!(removed, 0);
            }
            total
        })
    });
    group.finish();

    // Paired: 1 s steps and round trips alternate, so both see the same conditions.
    if !million.room_for(STEP * PAIRED_IDLE_STEPS as u32) {
        million.rebuild(rt);
    }
    let mut trip = Vec::with_capacity(PAIRED_IDLE_STEPS);
    let mut advance = Vec::with_capacity(PAIRED_IDLE_STEPS);
    rt.block_on(async {
        for _ in 0..PAIRED_IDLE_STEPS {
            advance.push(million.fleet.step(STEP).await);
            trip.push(million.fleet.step(Duration::ZERO).await);
        }
    });
    println!(
        "cleanup/idle_1m/paired: {PAIRED_IDLE_STEPS} rounds of (advance 1 s + barrier, advance 0 + \
         barrier) with 1M mailboxes: medians {:.2?} and {:.2?}",
        median(&mut advance),
        median(&mut trip)
    );

    // Single measurements: step through each tick at which the 1M removal timers move.
    let fleet = &million.fleet;
    let last = million.events.len() - 1;
    for (i, &at) in million.events.iter().enumerate() {
        let by = Duration::from_millis(at - fleet.clock.now_ms());
        let took = rt.block_on(fleet.step(by));
        let what = if i == last {
            "all 1M removal timers fire, 1M mailboxes removed"
        } else {
            "1M removal timers cascade one level down"
        };
        println!("cleanup/idle_1m/once: advance to tick {at} + barrier: {took:.2?} ({what})");
    }
    assert!(rt.block_on(fleet.engine.mailbox_stats(&sample)).is_none());
    assert_eq!(fleet.engine.memory_used(), 0, "every message is freed");
    let start = Instant::now();
    let removed = naive.tick(ms(LONG_KEEP));
    let took = start.elapsed();
    assert_eq!(removed, IDLE_USERS);
    println!(
        "cleanup/idle_1m/once: naive tick at the hour: {took:.2?} ({removed} entries dropped)"
    );
    drop(million);
    println!(
        "cleanup/idle_1m: resident memory after dropping both: {:.1} MiB",
        mib(rss_bytes())
    );
}

fn cleanup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    expire_1000_away(c, &rt);
    idle_1m(c, &rt);
}

criterion_group!(benches, cleanup);
criterion_main!(benches);
