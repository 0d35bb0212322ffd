//! End-to-end throughput: engine send -> session receive, beside plain channels and the
//! mutex-and-hashmap queue a team would write first, in the same run.
//!
//! Cases (one criterion group each): 1 or 1000 users, 1 or 2 producer threads. Every iteration
//! moves `N` messages of `PAYLOAD` bytes from the producers to one consumer thread, timed by
//! the consumer from a `Barrier` release until the last message arrives (`iter_custom`, as in
//! rtrb's benches). Message `i` goes to user `i % users`; producer `p` sends the contiguous
//! range `[p * N / P, (p + 1) * N / P)` in order. Each payload is a 64-byte slice of one leaked
//! buffer, made with `Bytes::from_static`, so sending never copies it and never touches a
//! reference count; its first 8 bytes hold `i` (little endian).
//!
//! Variants (functions of each group):
//! - `tether`: one engine per benchmark function, `shards(2)`, window 1024 (default); each user
//!   connects once before measuring. Producers `try_send`, retrying on `Full` (spin, then
//!   yield). The consumer is one thread looping over all sessions: `drain` up to `BATCH`
//!   without waiting, then `ack` the last seq of the batch. The per-user backlog caps are
//!   raised to `N` messages (overflow `Reject`) so that a consumer falling behind never makes
//!   the engine drop a message: with the default caps (1000, DropOldest) tether would evict,
//!   by design, and the run would not be "every message exactly once".
//! - `crossbeam_channel`, `tokio_mpsc`, `flume`: ONE bounded(1024) channel carrying
//!   `(user_index, Bytes)` in both the 1-user and the 1000-user case (1000 channels would
//!   measure the consumer's polling loop, not the channel). Blocking send and receive
//!   (`send`/`recv` with a timeout for crossbeam and flume, `blocking_send`/`blocking_recv`
//!   for tokio). A fresh channel per iteration, created before the barrier.
//! - `mutex_hashmap`: `Mutex<HashMap<u32, [VecDeque<Bytes>; 4]>>`, one entry per user made
//!   before measuring. Producers lock per message and push to the user's Normal band; the
//!   consumer locks, walks every user popping up to `BATCH` messages most urgent band first,
//!   unlocks, then processes the batch. Unbounded: producers never wait for the consumer.
//!
//! - `devices_*` groups (`Devices<D, _>`): the `tether` variant with 1, 2 and 4 devices per
//!   user, all connected, one consumer thread draining and acking every device's session;
//!   throughput counts messages, each delivered to every device of its user. Beside each
//!   device count, `*_sender_fans_out`: the same sessions and deliveries with one user per
//!   device and the producer sending each message to each of them.
//!
//! Before measuring, each variant is checked once: every message arrives exactly once (a seen
//! bitmap), at the right user, in order per (user, producer); tether's seqs are consecutive
//! per user. Every measured run still asserts the count and the sum of the indices. Waiting
//! loops are bounded: they panic after `HANG` (a lost message or a hang, never a timing
//! assertion).

use std::collections::{HashMap, VecDeque};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tether::{
    DedupMode, DeviceId, Engine, Message, OverflowPolicy, Priority, Session, UserId, UserLimits,
};

mod support;
use support::{payload, send_patiently, Patience, HANG, N, PAYLOAD};

/// Channel capacity (and tether's default window).
const CAPACITY: usize = 1024;
/// Most messages the consumer takes from one session / user per look.
const BATCH: usize = 256;
/// Shards of the engine under test (worker threads), on a 2-core machine.
const SHARDS: usize = 2;

#[derive(Clone, Copy, Debug)]
struct Case {
    users: usize,
    producers: usize,
}

impl Case {
    fn name(self) -> String {
        let u = if self.users == 1 { "user" } else { "users" };
        let p = if self.producers == 1 {
            "producer"
        } else {
            "producers"
        };
        format!("{}{u}_{}{p}", self.users, self.producers)
    }

    /// The indices producer `p` sends, in this order.
    fn range(self, p: usize) -> std::ops::Range<u64> {
        let per = N / self.producers as u64;
        let end = if p + 1 == self.producers {
            N
        } else {
            (p as u64 + 1) * per
        };
        p as u64 * per..end
    }

    fn producer_of(self, i: u64) -> usize {
        ((i / (N / self.producers as u64)) as usize).min(self.producers - 1)
    }

    fn user_of(self, i: u64) -> usize {
        (i % self.users as u64) as usize
    }
}

/// What the consumer received: count and index sum always, full checks in the check run.
struct Sink {
    count: u64,
    sum: u64,
    check: Option<Check>,
}

struct Check {
    case: Case,
    seen: Vec<bool>,
    /// Last index received per (user, producer).
    last: Vec<Option<u64>>,
}

impl Sink {
    fn new(case: Case, check: bool) -> Self {
        Self {
            count: 0,
            sum: 0,
            check: check.then(|| Check {
                case,
                seen: vec![false; N as usize],
                last: vec![None; case.users * case.producers],
            }),
        }
    }

    #[inline]
    fn take(&mut self, user: usize, payload: &[u8]) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&payload[..8]);
        let i = u64::from_le_bytes(head);
        self.count += 1;
        self.sum = self.sum.wrapping_add(i);
        if let Some(c) = &mut self.check {
            c.take(user, i, payload.len());
        }
    }

    fn done(&self) -> bool {
        self.count >= N
    }

    fn finish(self, what: &str) {
        assert_eq!(self.count, N, "{what}: message count");
        assert_eq!(self.sum, N * (N - 1) / 2, "{what}: index checksum");
        if let Some(c) = self.check {
            assert!(c.seen.iter().all(|&s| s), "{what}: a message never arrived");
        }
    }
}

impl Check {
    fn take(&mut self, user: usize, i: u64, len: usize) {
        assert_eq!(len, PAYLOAD, "payload length");
        assert!(i < N, "index {i} out of range");
        assert_eq!(
            self.case.user_of(i),
            user,
            "message {i} reached the wrong user"
        );
        assert!(!self.seen[i as usize], "message {i} arrived twice");
        self.seen[i as usize] = true;
        let slot = user * self.case.producers + self.case.producer_of(i);
        if let Some(prev) = self.last[slot] {
            assert!(
                i > prev,
                "user {user}: {i} after {prev} from the same producer"
            );
        }
        self.last[slot] = Some(i);
    }
}

/// One way of moving the messages. `run` moves `N` once and returns the consumer's time from
/// the barrier to the last message.
trait Transport {
    fn new(case: Case) -> Self;
    fn run(&mut self, check: bool) -> Duration;
}

// ---------------------------------------------------------------------------------------------
// tether

/// The engine. `FEATURES`: 0 plain; `TTL` gives every message a TTL (a per-priority default
/// of one minute: a wheel entry while it waits and another while in flight); `DEDUP` also
/// gives it a unique id (formatted by the producer) checked against the dedup window.
struct Tether<const FEATURES: u8> {
    case: Case,
    /// Runs so far: ids must differ between runs or the dedup window would refuse them.
    runs: u64,
    // Sessions first: they are dropped (closed) before the engine stops.
    sessions: Vec<Session>,
    last_seq: Vec<u64>,
    users: Vec<UserId>,
    engine: Engine,
}

const TTL: u8 = 1;
const DEDUP: u8 = 2;

impl<const FEATURES: u8> Transport for Tether<FEATURES> {
    fn new(case: Case) -> Self {
        let mut builder = Engine::builder();
        if FEATURES & TTL != 0 {
            for p in Priority::ALL {
                builder = builder.default_ttl(p, Some(Duration::from_secs(60)));
            }
        }
        builder = builder.dedup(if FEATURES & DEDUP != 0 {
            DedupMode::Ids
        } else {
            DedupMode::Off
        });
        let engine = builder
            .shards(SHARDS)
            .user_limits(UserLimits {
                max_messages: N as usize,
                max_bytes: N as usize * PAYLOAD,
                overflow: OverflowPolicy::Reject,
            })
            .build()
            .expect("engine config");
        let users: Vec<UserId> = (0..case.users)
            .map(|u| UserId::new(format!("user-{u}")).expect("user id"))
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let sessions = rt.block_on(async {
            let mut sessions = Vec::with_capacity(users.len());
            for u in &users {
                sessions.push(engine.connect(u, None).await.expect("connect"));
            }
            sessions
        });
        Self {
            case,
            runs: 0,
            sessions,
            last_seq: vec![0; users.len()],
            users,
            engine,
        }
    }

    fn run(&mut self, check: bool) -> Duration {
        let case = self.case;
        self.runs += 1;
        let run = self.runs;
        let barrier = Barrier::new(case.producers + 1);
        let deadline = Instant::now() + HANG;
        let (engine, users) = (&self.engine, &self.users);
        let (sessions, last_seq) = (&mut self.sessions, &mut self.last_seq);
        let mut sink = Sink::new(case, check);
        let elapsed = thread::scope(|s| {
            for p in 0..case.producers {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut patience = Patience::new(deadline);
                    barrier.wait();
                    for i in case.range(p) {
                        let user = &users[case.user_of(i)];
                        let mut message = Message::new(payload(i));
                        if FEATURES & DEDUP != 0 {
                            message = message.with_id(format!("{run}-{i}"));
                        }
                        send_patiently(engine, user, message, &mut patience);
                    }
                });
            }
            let mut buf = Vec::with_capacity(BATCH);
            let mut patience = Patience::new(deadline);
            barrier.wait();
            let start = Instant::now();
            while !sink.done() {
                let mut got = 0;
                for (u, session) in sessions.iter_mut().enumerate() {
                    if session.drain(&mut buf, BATCH) == 0 {
                        continue;
                    }
                    got += buf.len();
                    for d in buf.drain(..) {
                        if sink.check.is_some() {
                            assert_eq!(d.seq(), last_seq[u] + 1, "user {u}: seq gap");
                        }
                        last_seq[u] = d.seq();
                        sink.take(u, d.payload());
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
        sink.finish("tether");
        elapsed
    }
}

// ---------------------------------------------------------------------------------------------
// tether with devices: every user has `D` devices, all connected and acking.

/// The engine of `Tether<0>`, with `D` devices per user, each connected once before measuring
/// (named: with one device this is the one-mailbox path, as without devices). Every message
/// reaches `D` sessions; the consumer loops over all of them as `Tether` does over users.
/// Device `d` of each user feeds sink `d`, so each sink sees every message exactly once.
///
/// With `BY_SENDER` the engine knows no devices: each device is a user of its own (one
/// mailbox each, the default device) and the producer sends every message `D` times, once to
/// each: the fan-out a service had to do itself before devices. Same sessions, same
/// deliveries, `D` times the sends.
struct Devices<const D: usize, const BY_SENDER: bool> {
    case: Case,
    /// Session of user `u`, device `d` at `u * D + d`. Dropped before the engine stops.
    sessions: Vec<Session>,
    last_seq: Vec<u64>,
    /// Whom a message to user `u` is sent to: `targets[u]`.
    targets: Vec<Vec<UserId>>,
    engine: Engine,
}

impl<const D: usize, const BY_SENDER: bool> Transport for Devices<D, BY_SENDER> {
    fn new(case: Case) -> Self {
        let engine = Engine::builder()
            .dedup(DedupMode::Off)
            .shards(SHARDS)
            .user_limits(UserLimits {
                max_messages: N as usize,
                max_bytes: N as usize * PAYLOAD,
                overflow: OverflowPolicy::Reject,
            })
            .build()
            .expect("engine config");
        let id = |name: String| UserId::new(name).expect("user id");
        // Per user, the (user, device) of each of its `D` sessions.
        let places: Vec<Vec<(UserId, DeviceId)>> = (0..case.users)
            .map(|u| {
                (0..D)
                    .map(|d| match BY_SENDER {
                        true => (id(format!("user-{u}-{d}")), DeviceId::default()),
                        false => (
                            id(format!("user-{u}")),
                            DeviceId::new(format!("device-{d}")).expect("device id"),
                        ),
                    })
                    .collect()
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let sessions = rt.block_on(async {
            let mut sessions = Vec::with_capacity(case.users * D);
            for (user, device) in places.iter().flatten() {
                let session = engine.connect_device(user, device, None).await;
                sessions.push(session.expect("connect"));
            }
            sessions
        });
        let targets = places
            .into_iter()
            .map(|p| {
                let mut users: Vec<UserId> = p.into_iter().map(|(u, _)| u).collect();
                if !BY_SENDER {
                    users.truncate(1);
                }
                users
            })
            .collect();
        Self {
            case,
            last_seq: vec![0; sessions.len()],
            sessions,
            targets,
            engine,
        }
    }

    fn run(&mut self, check: bool) -> Duration {
        let case = self.case;
        let barrier = Barrier::new(case.producers + 1);
        let deadline = Instant::now() + HANG;
        let (engine, targets) = (&self.engine, &self.targets);
        let (sessions, last_seq) = (&mut self.sessions, &mut self.last_seq);
        let mut sinks: Vec<Sink> = (0..D).map(|_| Sink::new(case, check)).collect();
        let elapsed = thread::scope(|s| {
            for p in 0..case.producers {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut patience = Patience::new(deadline);
                    barrier.wait();
                    for i in case.range(p) {
                        for user in &targets[case.user_of(i)] {
                            let message = Message::new(payload(i));
                            send_patiently(engine, user, message, &mut patience);
                        }
                    }
                });
            }
            let mut buf = Vec::with_capacity(BATCH);
            let mut patience = Patience::new(deadline);
            barrier.wait();
            let start = Instant::now();
            while !sinks.iter().all(Sink::done) {
                let mut got = 0;
                for (k, session) in sessions.iter_mut().enumerate() {
                    if session.drain(&mut buf, BATCH) == 0 {
                        continue;
                    }
                    got += buf.len();
                    let (u, d) = (k / D, k % D);
                    for delivery in buf.drain(..) {
                        if check {
                            assert_eq!(delivery.seq(), last_seq[k] + 1, "user {u}/{d}: seq gap");
                        }
                        last_seq[k] = delivery.seq();
                        sinks[d].take(u, delivery.payload());
                    }
                    session.ack(last_seq[k]).expect("ack");
                }
                if got == 0 {
                    patience.wait("tether consumer (devices)");
                } else {
                    patience.progress();
                }
            }
            start.elapsed()
        });
        for sink in sinks {
            sink.finish("tether (devices)");
        }
        elapsed
    }
}

// ---------------------------------------------------------------------------------------------
// Channels: one bounded channel carrying (user index, payload).

trait Chan {
    type Tx: Clone + Send;
    type Rx;
    fn pair() -> (Self::Tx, Self::Rx);
    fn send(tx: &Self::Tx, v: (u32, Bytes));
    /// `None` once every sender is gone and the channel is empty.
    fn recv(rx: &mut Self::Rx) -> Option<(u32, Bytes)>;
}

struct Crossbeam;
impl Chan for Crossbeam {
    type Tx = crossbeam_channel::Sender<(u32, Bytes)>;
    type Rx = crossbeam_channel::Receiver<(u32, Bytes)>;
    fn pair() -> (Self::Tx, Self::Rx) {
        crossbeam_channel::bounded(CAPACITY)
    }
    fn send(tx: &Self::Tx, v: (u32, Bytes)) {
        tx.send_timeout(v, HANG).expect("crossbeam send");
    }
    fn recv(rx: &mut Self::Rx) -> Option<(u32, Bytes)> {
        match rx.recv_timeout(HANG) {
            Ok(v) => Some(v),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => None,
            Err(e) => panic!("crossbeam recv: {e}"),
        }
    }
}

struct TokioMpsc;
impl Chan for TokioMpsc {
    type Tx = tokio::sync::mpsc::Sender<(u32, Bytes)>;
    type Rx = tokio::sync::mpsc::Receiver<(u32, Bytes)>;
    fn pair() -> (Self::Tx, Self::Rx) {
        tokio::sync::mpsc::channel(CAPACITY)
    }
    fn send(tx: &Self::Tx, v: (u32, Bytes)) {
        // Returns only once sent or the receiver is gone (the consumer panicked).
        tx.blocking_send(v).expect("tokio send");
    }
    fn recv(rx: &mut Self::Rx) -> Option<(u32, Bytes)> {
        // Returns `None` once the producers are gone, so it cannot hang past them.
        rx.blocking_recv()
    }
}

struct Flume;
impl Chan for Flume {
    type Tx = flume::Sender<(u32, Bytes)>;
    type Rx = flume::Receiver<(u32, Bytes)>;
    fn pair() -> (Self::Tx, Self::Rx) {
        flume::bounded(CAPACITY)
    }
    fn send(tx: &Self::Tx, v: (u32, Bytes)) {
        tx.send_timeout(v, HANG).expect("flume send");
    }
    fn recv(rx: &mut Self::Rx) -> Option<(u32, Bytes)> {
        match rx.recv_timeout(HANG) {
            Ok(v) => Some(v),
            Err(flume::RecvTimeoutError::Disconnected) => None,
            Err(e) => panic!("flume recv: {e}"),
        }
    }
}

struct Channel<C> {
    case: Case,
    _chan: std::marker::PhantomData<C>,
}

impl<C: Chan> Transport for Channel<C> {
    fn new(case: Case) -> Self {
        Self {
            case,
            _chan: std::marker::PhantomData,
        }
    }

    fn run(&mut self, check: bool) -> Duration {
        let case = self.case;
        let barrier = Barrier::new(case.producers + 1);
        let (tx, mut rx) = C::pair();
        let mut sink = Sink::new(case, check);
        let elapsed = thread::scope(|s| {
            for p in 0..case.producers {
                let (barrier, tx) = (&barrier, tx.clone());
                s.spawn(move || {
                    barrier.wait();
                    for i in case.range(p) {
                        C::send(&tx, (case.user_of(i) as u32, payload(i)));
                    }
                });
            }
            drop(tx);
            barrier.wait();
            let start = Instant::now();
            while !sink.done() {
                let Some((user, bytes)) = C::recv(&mut rx) else {
                    break;
                };
                sink.take(user as usize, &bytes);
            }
            start.elapsed()
        });
        sink.finish(std::any::type_name::<C>());
        elapsed
    }
}

// ---------------------------------------------------------------------------------------------
// The first design: one mutex over a map of per-user priority bands.

type Bands = [VecDeque<Bytes>; 4];
/// The band of a Normal message (Critical = 0 .. Low = 3).
const NORMAL: usize = 2;

struct MutexHashMap {
    case: Case,
    map: Mutex<HashMap<u32, Bands>>,
}

impl Transport for MutexHashMap {
    fn new(case: Case) -> Self {
        let map = (0..case.users as u32)
            .map(|u| (u, Bands::default()))
            .collect();
        Self {
            case,
            map: Mutex::new(map),
        }
    }

    fn run(&mut self, check: bool) -> Duration {
        let case = self.case;
        let barrier = Barrier::new(case.producers + 1);
        let deadline = Instant::now() + HANG;
        let map = &self.map;
        let mut sink = Sink::new(case, check);
        let elapsed = thread::scope(|s| {
            for p in 0..case.producers {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    for i in case.range(p) {
                        let user = case.user_of(i) as u32;
                        let mut map = map.lock().expect("poisoned");
                        map.get_mut(&user).expect("user")[NORMAL].push_back(payload(i));
                    }
                });
            }
            let mut buf: Vec<(u32, Bytes)> = Vec::with_capacity(BATCH);
            let mut patience = Patience::new(deadline);
            barrier.wait();
            let start = Instant::now();
            while !sink.done() {
                {
                    let mut map = map.lock().expect("poisoned");
                    for (&user, bands) in map.iter_mut() {
                        let mut taken = 0;
                        for band in bands.iter_mut() {
                            while taken < BATCH {
                                let Some(b) = band.pop_front() else { break };
                                buf.push((user, b));
                                taken += 1;
                            }
                        }
                    }
                }
                if buf.is_empty() {
                    patience.wait("mutex_hashmap consumer");
                    continue;
                }
                patience.progress();
                for (user, bytes) in buf.drain(..) {
                    sink.take(user as usize, &bytes);
                }
            }
            start.elapsed()
        });
        sink.finish("mutex_hashmap");
        elapsed
    }
}

// ---------------------------------------------------------------------------------------------

fn bench_case(c: &mut Criterion, case: Case) {
    let mut group = c.benchmark_group(case.name());
    group.throughput(Throughput::Elements(N));
    group.sampling_mode(SamplingMode::Flat);
    variant::<Tether<0>>(&mut group, "tether", case);
    variant::<Tether<TTL>>(&mut group, "tether_ttl", case);
    variant::<Tether<{ TTL | DEDUP }>>(&mut group, "tether_ttl_dedup", case);
    variant::<Channel<Crossbeam>>(&mut group, "crossbeam_channel", case);
    variant::<Channel<TokioMpsc>>(&mut group, "tokio_mpsc", case);
    variant::<Channel<Flume>>(&mut group, "flume", case);
    variant::<MutexHashMap>(&mut group, "mutex_hashmap", case);
    group.finish();
}

/// Builds the transport (engine, sessions, map) once, lazily so a filtered-out function costs
/// nothing, checks it once, then measures.
fn variant<T: Transport>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    case: Case,
) {
    let mut state: Option<T> = None;
    group.bench_function(name, |b| {
        let t = state.get_or_insert_with(|| {
            let mut t = T::new(case);
            t.run(true);
            t
        });
        b.iter_custom(|iters| (0..iters).map(|_| t.run(false)).sum());
    });
}

fn throughput(c: &mut Criterion) {
    for users in [1, 1000] {
        for producers in [1, 2] {
            bench_case(c, Case { users, producers });
        }
    }
}

/// Fan-out: the same sends to users with 1, 2 and 4 devices each, in one group, so a device
/// count's cost is read against the one-device run beside it, and against the same deliveries
/// made by a sender that fans out itself to one user per device. Throughput counts messages
/// (of the producer's loop); each reaches every device of its user.
fn devices(c: &mut Criterion) {
    for users in [1, 1000] {
        let case = Case {
            users,
            producers: 1,
        };
        let mut group = c.benchmark_group(format!("devices_{}", case.name()));
        group.throughput(Throughput::Elements(N));
        group.sampling_mode(SamplingMode::Flat);
        variant::<Devices<1, false>>(&mut group, "tether_1device", case);
        variant::<Devices<2, false>>(&mut group, "tether_2devices", case);
        variant::<Devices<2, true>>(&mut group, "tether_2users_sender_fans_out", case);
        variant::<Devices<4, false>>(&mut group, "tether_4devices", case);
        variant::<Devices<4, true>>(&mut group, "tether_4users_sender_fans_out", case);
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = throughput, devices
}
criterion_main!(benches);
