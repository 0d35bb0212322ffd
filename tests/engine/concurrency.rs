//! Many threads and many reconnects at once: nothing is lost, nothing is delivered twice except
//! an unacknowledged message handed over again with its original seq, and order holds per
//! producer, user and band.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tether::{
    CloseReason, Delivery, Engine, Epoch, Message, OverflowPolicy, Priority, ResumePoint,
    TryRecvError, UserId, UserLimits,
};

use crate::common::{user, GUARD};

/// Hang guard for a whole multi-threaded phase (debug builds on 2 cores are slow).
const PHASE_GUARD: Duration = Duration::from_secs(300);

/// Caps high enough that no test here ever loses a message to overflow; `Reject` so that a
/// loss would be visible rather than silent.
fn roomy() -> UserLimits {
    UserLimits {
        max_messages: 100_000,
        max_bytes: 1 << 30,
        overflow: OverflowPolicy::Reject,
    }
}

/// What the reconnecting consumer has seen, and the checks on every delivery.
struct Ledger {
    /// Payload number -> the seq it was first delivered with.
    seq_of: HashMap<u32, u64>,
    /// Seq -> payload number.
    payload_of: HashMap<u64, u32>,
    /// The seq the next delivery of the current session must carry: deliveries of one session
    /// are consecutive from one past the settled point.
    next_expected: u64,
    deliveries: u64,
    repeats: u64,
}

impl Ledger {
    fn check(&mut self, d: &Delivery) {
        assert_eq!(
            d.seq(),
            self.next_expected,
            "deliveries of a session are consecutive from the settled point"
        );
        self.next_expected += 1;
        self.deliveries += 1;
        let n = u32::from_le_bytes(d.payload()[..4].try_into().unwrap());
        match self.seq_of.entry(n) {
            Entry::Occupied(e) => {
                assert_eq!(*e.get(), d.seq(), "message {n} came again with another seq");
                self.repeats += 1;
            }
            Entry::Vacant(e) => {
                e.insert(d.seq());
            }
        }
        match self.payload_of.entry(d.seq()) {
            Entry::Occupied(e) => assert_eq!(*e.get(), n, "seq {} reused", d.seq()),
            Entry::Vacant(e) => {
                e.insert(n);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reconnects_lose_nothing_and_repeat_only_unacked_with_original_seqs() {
    const MESSAGES: u32 = 10_000;
    const CYCLES: usize = 1000;
    const WINDOW: usize = 32;
    let engine = Engine::builder()
        .shards(2)
        .window(WINDOW)
        .user_limits(roomy())
        .build()
        .unwrap();
    let u = user("flappy");

    // The producer sends 10 messages per tick, one tick per cycle, so sends keep racing with
    // the connects, receives and disconnects until the last cycle.
    let (tick, ticks) = std::sync::mpsc::channel::<()>();
    let producer = {
        let (engine, u) = (engine.clone(), u.clone());
        std::thread::spawn(move || {
            let per_tick = MESSAGES / CYCLES as u32;
            for i in 0..MESSAGES {
                if i % per_tick == 0 {
                    ticks.recv().unwrap();
                }
                let p = if i % 5 == 0 {
                    Priority::High
                } else {
                    Priority::Normal
                };
                let m = Message::new(i.to_le_bytes().to_vec()).with_priority(p);
                engine.send_blocking(&u, m).unwrap();
            }
        })
    };

    // A fixed seed, so that a failure replays the same choices.
    let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
    let mut ledger = Ledger {
        seq_of: HashMap::new(),
        payload_of: HashMap::new(),
        next_expected: 1,
        deliveries: 0,
        repeats: 0,
    };
    // The highest seq the engine treats as settled: acked, or covered by an honoured resume
    // point. Deliveries always start right after it.
    let mut settled = 0u64;
    let mut prev: Option<ResumePoint> = None;
    let mut leftover = 0usize;
    let mut epoch: Option<Epoch> = None;
    let mut redelivered_total = 0u64;
    let mut exact_checks = 0;

    for cycle in 0..CYCLES {
        tick.send(()).unwrap();
        // Usually resume from the previous session; every tenth time, come back without a
        // resume point (everything unacknowledged is handed over again).
        let resume = if cycle % 10 == 9 { None } else { prev };
        // Every fourth cycle, wait for the previous session's acks and close to take effect
        // and compare the redelivered count with the engine's own numbers. The other cycles
        // reconnect at once: an ack issued before the drop must still count (the consecutive
        // seq check in `Ledger::check` fails if an acknowledged message comes again).
        let expected_redelivered = if cycle % 4 == 0 {
            engine.barrier().await;
            exact_checks += 1;
            match engine.mailbox_stats(&u).await {
                None => Some(0),
                Some(st) => {
                    assert!(!st.connected);
                    let engine_settled = st.next_seq - 1 - st.in_flight as u64;
                    assert_eq!(engine_settled, settled, "cycle {cycle}");
                    let from = match resume {
                        Some(rp) => settled.max(rp.last_seq),
                        None => settled,
                    };
                    Some((st.next_seq - 1 - from) as usize)
                }
            }
        } else {
            None
        };

        let mut s = tokio::time::timeout(GUARD, engine.connect(&u, resume))
            .await
            .expect("hang guard: connect")
            .unwrap();
        let info = s.info().clone();
        match epoch {
            Some(e) => assert_eq!(info.epoch, e, "the mailbox keeps its epoch"),
            None => epoch = Some(info.epoch),
        }
        assert_eq!(info.recovered, resume.is_some(), "cycle {cycle}");
        assert_eq!(info.missed.total(), 0);
        if let Some(rp) = resume {
            settled = settled.max(rp.last_seq);
            // What the last session had in its outbox but did not count as received comes
            // again (more may have arrived after it looked).
            assert!(info.redelivered >= leftover, "cycle {cycle}");
        }
        if let Some(expected) = expected_redelivered {
            assert_eq!(info.redelivered, expected, "cycle {cycle}");
        }
        redelivered_total += info.redelivered as u64;
        ledger.next_expected = settled + 1;

        // Receive a few of what is ready.
        let mut batch = Vec::new();
        s.drain(&mut batch, rng.u64(..8) as usize);
        for d in &batch {
            ledger.check(d);
        }
        // Acknowledge all, some or none of it.
        let top = s.last_received();
        if top > settled {
            match rng.u64(..3) {
                0 => {
                    s.ack(top).unwrap();
                    settled = top;
                }
                1 => {
                    let target = settled + 1 + rng.u64(..top - settled);
                    s.ack(target).unwrap();
                    settled = target;
                }
                _ => {}
            }
        }
        // The resume point covers what was received; then look at what else is in the
        // outbox without counting it as received, and go away.
        let rp = s.resume_point();
        assert_eq!(rp.last_seq, top);
        let mut rest = Vec::new();
        if rng.u64(..2) == 0 {
            s.drain(&mut rest, usize::MAX);
        }
        for d in &rest {
            ledger.check(d);
        }
        leftover = rest.len();
        prev = Some(rp);
        if cycle % 2 == 0 {
            drop(s);
        } else {
            s.close(CloseReason::Normal);
        }
    }

    tokio::time::timeout(
        PHASE_GUARD,
        tokio::task::spawn_blocking(move || producer.join()),
    )
    .await
    .expect("hang guard: producer")
    .unwrap()
    .unwrap();

    // Come back one last time and take everything.
    let mut s = engine.connect(&u, prev).await.unwrap();
    assert!(s.info().recovered);
    settled = settled.max(prev.unwrap().last_seq);
    ledger.next_expected = settled + 1;
    redelivered_total += s.info().redelivered as u64;
    let mut batch = Vec::new();
    let mut rounds = 0;
    while ledger.seq_of.len() < MESSAGES as usize {
        rounds += 1;
        assert!(rounds <= 2 * MESSAGES, "too many rounds");
        let d = tokio::time::timeout(GUARD, s.recv())
            .await
            .expect("hang guard: messages missing")
            .expect("session ended");
        batch.push(d);
        s.drain(&mut batch, WINDOW);
        for d in batch.drain(..) {
            ledger.check(&d);
        }
        s.ack(s.last_received()).unwrap();
    }
    engine.barrier().await;
    assert_eq!(s.try_recv().unwrap_err(), TryRecvError::Empty);
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!((stats.queued(), stats.in_flight, stats.missed), (0, 0, 0));
    assert_eq!(engine.memory_used(), 0);

    // Every message exactly once by seq: seqs 1..=MESSAGES, one payload each.
    assert!((0..MESSAGES).all(|n| ledger.seq_of.contains_key(&n)));
    assert_eq!(ledger.payload_of.len(), MESSAGES as usize);
    assert_eq!(stats.next_seq, MESSAGES as u64 + 1);
    assert_eq!(
        ledger.deliveries,
        MESSAGES as u64 + ledger.repeats,
        "every delivery beyond the first of a message is a repeat"
    );
    // Repeats only come from re-deliveries, and the run did exercise them.
    assert!(ledger.repeats <= redelivered_total);
    assert!(ledger.repeats > 0 && redelivered_total > 0);
    assert!(exact_checks >= CYCLES / 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_producers_to_a_thousand_users_deliver_every_message_exactly_once_in_order() {
    const PRODUCERS: usize = 8;
    const PER_PRODUCER: u32 = 100_000;
    const USERS: usize = 1000;
    const PER_USER: usize = PRODUCERS * PER_PRODUCER as usize / USERS;
    const WINDOW: usize = 64;
    let engine = Engine::builder()
        .shards(2)
        .window(WINDOW)
        .user_limits(roomy())
        .build()
        .unwrap();
    let users: Arc<Vec<UserId>> = Arc::new((0..USERS).map(|i| user(&format!("u{i}"))).collect());

    // Consumers first, each a task that receives in batches and acks each batch.
    let mut consumers = Vec::with_capacity(USERS);
    for u in users.iter() {
        let mut s = engine.connect(u, None).await.unwrap();
        consumers.push(tokio::spawn(async move {
            let mut got: Vec<(u64, u8, u32, Priority)> = Vec::with_capacity(PER_USER);
            let mut batch: Vec<Delivery> = Vec::with_capacity(WINDOW);
            while got.len() < PER_USER {
                let d = s.recv().await.expect("session ended");
                batch.push(d);
                s.drain(&mut batch, WINDOW);
                for d in batch.drain(..) {
                    let p = d.payload();
                    let i = u32::from_le_bytes(p[1..5].try_into().unwrap());
                    got.push((d.seq(), p[0], i, d.priority()));
                }
                s.ack(s.last_received()).unwrap();
            }
            (s, got)
        }));
    }

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (engine, users) = (engine.clone(), users.clone());
            std::thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    let u = &users[i as usize % USERS];
                    let priority = Priority::ALL[(i as usize / USERS) % 4];
                    let mut payload = Vec::with_capacity(5);
                    payload.push(p as u8);
                    payload.extend_from_slice(&i.to_le_bytes());
                    engine
                        .send_blocking(u, Message::new(payload).with_priority(priority))
                        .unwrap();
                }
            })
        })
        .collect();

    tokio::time::timeout(
        PHASE_GUARD,
        tokio::task::spawn_blocking(move || {
            for p in producers {
                p.join().unwrap();
            }
        }),
    )
    .await
    .expect("hang guard: producers")
    .unwrap();

    let results = tokio::time::timeout(PHASE_GUARD, async {
        let mut results = Vec::with_capacity(USERS);
        for c in consumers {
            results.push(c.await.unwrap());
        }
        results
    })
    .await
    .expect("hang guard: consumers did not get every message");

    engine.barrier().await;
    for (ui, (mut s, got)) in results.into_iter().enumerate() {
        assert_eq!(got.len(), PER_USER, "user {ui}");
        assert_eq!(
            s.try_recv().unwrap_err(),
            TryRecvError::Empty,
            "user {ui} got more"
        );
        // One seq per message, in delivery order.
        assert!(got
            .iter()
            .enumerate()
            .all(|(k, &(seq, ..))| seq == k as u64 + 1));
        // Exactly the messages addressed to this user, each once.
        let mut seen = vec![[false; PER_PRODUCER as usize / USERS]; PRODUCERS];
        // In order per (producer, band).
        let mut last: HashMap<(u8, Priority), u32> = HashMap::new();
        for &(_, p, i, priority) in &got {
            assert_eq!(i as usize % USERS, ui, "misrouted message");
            assert_eq!(priority, Priority::ALL[(i as usize / USERS) % 4]);
            let slot = &mut seen[p as usize][i as usize / USERS];
            assert!(!*slot, "user {ui}: ({p}, {i}) delivered twice");
            *slot = true;
            if let Some(prev) = last.insert((p, priority), i) {
                assert!(
                    prev < i,
                    "user {ui}: ({p}, {i}) after ({p}, {prev}) in one band"
                );
            }
        }
        assert!(seen.iter().flatten().all(|&b| b));
        let stats = engine.mailbox_stats(&users[ui]).await.unwrap();
        assert_eq!((stats.queued(), stats.in_flight, stats.missed), (0, 0, 0));
        assert_eq!(stats.next_seq, PER_USER as u64 + 1);
    }
    assert_eq!(engine.memory_used(), 0);
}
