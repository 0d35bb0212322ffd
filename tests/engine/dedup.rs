//! Duplicate detection by xxh3 fingerprint within a time window, on a manual clock.

use std::time::Duration;

use tether::{Clock, DedupMode, Engine, EngineBuilder, Message, SendOutcome, UserId};

use crate::common::user;

fn engine_with(clock: &Clock, f: impl FnOnce(EngineBuilder) -> EngineBuilder) -> Engine {
    f(Engine::builder().shards(2).clock(clock.clone()))
        .build()
        .unwrap()
}

const QUEUED: SendOutcome = SendOutcome::Queued { evicted: 0 };

#[tokio::test]
async fn the_same_id_to_the_same_user_is_a_duplicate() {
    let engine = engine_with(&Clock::manual(), |b| b);
    let (a, b) = (user("a"), user("b"));
    let first = Message::new("v1").with_id("order-7");
    let again = Message::new("v2, same id").with_id("order-7");
    assert_eq!(
        engine.send_confirmed(&a, first.clone()).await.unwrap(),
        QUEUED
    );
    assert_eq!(
        engine.send_confirmed(&a, again).await.unwrap(),
        SendOutcome::Duplicate
    );
    assert_eq!(
        engine.send_confirmed(&b, first).await.unwrap(),
        QUEUED,
        "same id, another user: not a duplicate"
    );
    let mut s = engine.connect(&a, None).await.unwrap();
    assert_eq!(s.info().missed.deduplicated, 1);
    assert_eq!(s.info().missed.total(), 0, "a duplicate is not a loss");
    engine.barrier().await;
    let mut got = Vec::new();
    s.drain(&mut got, 10);
    assert_eq!(got.len(), 1, "the first copy only");
    assert_eq!(&got[0].payload()[..], b"v1");
}

#[tokio::test]
async fn content_dedup_is_opt_in() {
    let clock = Clock::manual();
    let ids_only = engine_with(&clock, |b| b);
    let content = engine_with(&clock, |b| b.dedup(DedupMode::IdsAndContent));
    let off = engine_with(&clock, |b| b.dedup(DedupMode::Off));
    let u = user("c");
    for (engine, second) in [
        (&ids_only, QUEUED),
        (&content, SendOutcome::Duplicate),
        (&off, QUEUED),
    ] {
        assert_eq!(
            engine.send_confirmed(&u, Message::new("ok")).await.unwrap(),
            QUEUED
        );
        assert_eq!(
            engine.send_confirmed(&u, Message::new("ok")).await.unwrap(),
            second
        );
    }
    // Off ignores ids too.
    let m = Message::new("x").with_id("1");
    assert_eq!(off.send_confirmed(&u, m.clone()).await.unwrap(), QUEUED);
    assert_eq!(off.send_confirmed(&u, m).await.unwrap(), QUEUED);
}

#[tokio::test]
async fn outside_the_window_a_message_is_accepted_again() {
    let clock = Clock::manual();
    let engine = engine_with(&clock, |b| b.dedup_window(Duration::from_secs(1)));
    let u = user("w");
    let m = || Message::new("p").with_id("k");
    assert_eq!(engine.send_confirmed(&u, m()).await.unwrap(), QUEUED);
    clock.advance(Duration::from_millis(999));
    engine.barrier().await;
    assert_eq!(
        engine.send_confirmed(&u, m()).await.unwrap(),
        SendOutcome::Duplicate
    );
    // Remembered for at least one window and at most two.
    clock.advance(Duration::from_millis(1001));
    engine.barrier().await;
    assert_eq!(engine.send_confirmed(&u, m()).await.unwrap(), QUEUED);
}

#[tokio::test]
async fn fingerprints_are_bounded_per_shard() {
    let clock = Clock::manual();
    let engine = engine_with(&clock, |b| b.shards(1).dedup_max_entries(10));
    let u = user("bounded");
    let big = tether::UserLimits {
        max_messages: 10_000,
        ..Default::default()
    };
    engine.set_user_limits(&u, Some(big)).await.unwrap();
    for i in 0..1000 {
        let m = Message::new("x").with_id(format!("id-{i}"));
        assert_eq!(engine.send_confirmed(&u, m).await.unwrap(), QUEUED);
    }
    let newest = Message::new("x").with_id("id-999");
    assert_eq!(
        engine.send_confirmed(&u, newest).await.unwrap(),
        SendOutcome::Duplicate
    );
    let oldest = Message::new("x").with_id("id-0");
    assert_eq!(
        engine.send_confirmed(&u, oldest).await.unwrap(),
        QUEUED,
        "forgotten: at most two generations of 10 are kept"
    );
}

#[tokio::test]
async fn a_republish_while_the_first_copy_is_in_flight_is_a_duplicate() {
    let engine = engine_with(&Clock::manual(), |b| b);
    let u = user("in-flight");
    let mut s = engine.connect(&u, None).await.unwrap();
    let m = Message::new("once").with_id("retry-me");
    assert_eq!(
        engine.send_confirmed(&u, m.clone()).await.unwrap(),
        SendOutcome::Delivered
    );
    assert_eq!(s.recv().await.unwrap().seq(), 1);
    assert_eq!(
        engine.send_confirmed(&u, m).await.unwrap(),
        SendOutcome::Duplicate,
        "delivered but not acknowledged: still the same message"
    );
    engine.barrier().await;
    assert!(s.try_recv().is_err());
}

#[test]
fn many_producer_threads_get_exactly_one_acceptance_per_id() {
    const THREADS: usize = 4;
    const IDS: usize = 2000;
    let engine = Engine::builder().shards(2).build().unwrap();
    let users: Vec<UserId> = (0..8).map(|i| user(&format!("u{i}"))).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .build()
        .unwrap();
    let big = tether::UserLimits {
        max_messages: IDS,
        ..Default::default()
    };
    rt.block_on(async {
        for u in &users {
            engine.set_user_limits(u, Some(big)).await.unwrap();
        }
    });
    let tasks: Vec<_> = (0..THREADS)
        .map(|_| {
            let (engine, users) = (engine.clone(), users.clone());
            rt.spawn(async move {
                let (mut accepted, mut duplicates) = (0, 0);
                for i in 0..IDS {
                    let u = &users[i % users.len()];
                    let m = Message::new("m").with_id(format!("id-{i}"));
                    match engine.send_confirmed(u, m).await.unwrap() {
                        SendOutcome::Queued { .. } => accepted += 1,
                        SendOutcome::Duplicate => duplicates += 1,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                (accepted, duplicates)
            })
        })
        .collect();
    let (accepted, duplicates) = rt.block_on(async {
        let mut sum = (0, 0);
        for t in tasks {
            let (a, d) = t.await.unwrap();
            sum = (sum.0 + a, sum.1 + d);
        }
        sum
    });
    assert_eq!(accepted, IDS, "each id accepted exactly once");
    assert_eq!(duplicates, IDS * (THREADS - 1));
    let queued: usize = rt.block_on(async {
        let mut n = 0;
        for u in &users {
            n += engine.mailbox_stats(u).await.unwrap().queued();
        }
        n
    });
    assert_eq!(queued, IDS);
}
