//! Message TTLs, away-mailbox retention and idle cleanup, on a manual clock: time moves only
//! when a test says so, and `barrier` makes the shards act on it. Nothing here sleeps or
//! asserts on elapsed time.

use std::time::Duration;

use tether::{
    Clock, CloseReason, Engine, EngineBuilder, Message, Priority, SendOutcome, Session, UserId,
};

use crate::common::{advance, user};

fn engine_with(clock: &Clock, f: impl FnOnce(EngineBuilder) -> EngineBuilder) -> Engine {
    f(Engine::builder().shards(1).clock(clock.clone()))
        .build()
        .unwrap()
}

fn drain(s: &mut Session) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    s.drain(&mut out, usize::MAX);
    out.iter()
        .map(|d| (d.seq(), String::from_utf8(d.payload().to_vec()).unwrap()))
        .collect()
}

fn text(s: &str) -> Message {
    Message::new(s.to_owned())
}

#[tokio::test]
async fn a_queued_message_expires_at_its_ttl_and_is_never_delivered() {
    let clock = Clock::manual();
    let engine = engine_with(&clock, |b| b);
    let u = user("ttl");
    engine.send(&u, text("keep")).await.unwrap();
    engine
        .send(
            &u,
            text("short")
                .with_ttl(Duration::from_millis(100))
                .with_id("s-1"),
        )
        .await
        .unwrap();
    engine.send(&u, text("keep too")).await.unwrap();
    advance(&engine, &clock, 99).await;
    assert_eq!(
        engine.mailbox_stats(&u).await.unwrap().queued(),
        3,
        "not yet"
    );
    advance(&engine, &clock, 1).await;
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(
        stats.queued(),
        2,
        "removed from the middle of its band, eagerly"
    );
    assert_eq!(engine.memory_used(), 12, "keep + keep too");

    let mut s = engine.connect(&u, None).await.unwrap();
    assert_eq!(s.info().missed.expired, 1);
    assert_eq!(s.info().missed.ids[0].as_str(), "s-1");
    engine.barrier().await;
    assert_eq!(drain(&mut s), [(1, "keep".into()), (2, "keep too".into())]);
}

#[tokio::test]
async fn the_default_ttl_per_priority_applies_when_a_message_has_none() {
    let clock = Clock::manual();
    let engine = engine_with(&clock, |b| {
        b.default_ttl(Priority::Low, Some(Duration::from_secs(1)))
    });
    let u = user("defaults");
    engine
        .send(&u, text("low").with_priority(Priority::Low))
        .await
        .unwrap();
    engine
        .send(
            &u,
            text("low, own ttl")
                .with_priority(Priority::Low)
                .with_ttl(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    engine.send(&u, text("normal")).await.unwrap();
    advance(&engine, &clock, 1000).await;
    assert_eq!(
        engine.mailbox_stats(&u).await.unwrap().queued_per_band,
        [0, 0, 1, 1]
    );
    advance(&engine, &clock, 4000).await;
    assert_eq!(
        engine.mailbox_stats(&u).await.unwrap().queued_per_band,
        [0, 0, 1, 0]
    );
}

#[tokio::test]
async fn an_unacknowledged_message_expires_in_flight_and_is_not_redelivered() {
    let clock = Clock::manual();
    let engine = engine_with(&clock, |b| b.window(2));
    let u = user("in-flight");
    let mut s = engine.connect(&u, None).await.unwrap();
    engine
        .send(&u, text("a").with_ttl(Duration::from_millis(50)))
        .await
        .unwrap();
    engine.send(&u, text("b")).await.unwrap();
    engine.send(&u, text("c")).await.unwrap();
    engine.barrier().await;
    assert_eq!(drain(&mut s), [(1, "a".into()), (2, "b".into())]);
    advance(&engine, &clock, 50).await;
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(stats.in_flight_bytes, 1, "a's payload is freed");
    assert_eq!(
        stats.in_flight, 2,
        "a keeps its window slot until acknowledged past"
    );
    drop(s);
    let mut s = engine.connect(&u, None).await.unwrap();
    assert_eq!(s.info().missed.expired, 1);
    assert_eq!(s.info().redelivered, 1);
    engine.barrier().await;
    assert_eq!(drain(&mut s), [(2, "b".into()), (3, "c".into())]);
}

#[tokio::test]
async fn a_message_past_its_deadline_is_not_delivered_to_a_late_reader() {
    let clock = Clock::manual();
    let engine = engine_with(&clock, |b| b.window(1));
    let u = user("late");
    let mut s = engine.connect(&u, None).await.unwrap();
    engine.send(&u, text("first")).await.unwrap();
    engine
        .send(&u, text("stale").with_ttl(Duration::from_millis(10)))
        .await
        .unwrap();
    engine.barrier().await;
    assert_eq!(drain(&mut s), [(1, "first".into())]);
    // The window is full, so "stale" waits in its band past its deadline.
    advance(&engine, &clock, 10).await;
    s.ack(1).unwrap();
    engine.barrier().await;
    assert!(
        drain(&mut s).is_empty(),
        "expired while waiting: never delivered"
    );
}

#[tokio::test]
async fn away_mailboxes_are_kept_longer_after_a_normal_close() {
    let clock = Clock::manual();
    let engine = engine_with(&clock, |b| {
        b.keep_away_mailboxes(Duration::from_secs(60), Duration::from_secs(10))
    });
    let (normal, abnormal) = (user("normal"), user("abnormal"));
    let s = engine.connect(&normal, None).await.unwrap();
    s.close(CloseReason::Normal);
    let s = engine.connect(&abnormal, None).await.unwrap();
    drop(s); // a dropped session is an abnormal close
    engine.send(&normal, text("n")).await.unwrap();
    engine.send(&abnormal, text("a")).await.unwrap();
    engine.barrier().await;

    advance(&engine, &clock, 9_999).await;
    assert!(engine.mailbox_stats(&abnormal).await.is_some());
    advance(&engine, &clock, 1).await;
    assert!(
        engine.mailbox_stats(&abnormal).await.is_none(),
        "5 min rule: here 10 s"
    );
    assert!(engine.mailbox_stats(&normal).await.is_some());
    advance(&engine, &clock, 50_000).await;
    assert!(
        engine.mailbox_stats(&normal).await.is_none(),
        "30 min rule: here 60 s"
    );
    assert_eq!(engine.memory_used(), 0, "everything they held is released");
}

#[tokio::test]
async fn a_reconnect_cancels_the_away_expiry() {
    let clock = Clock::manual();
    let engine = engine_with(&clock, |b| {
        b.keep_away_mailboxes(Duration::from_secs(10), Duration::from_secs(10))
    });
    let u = user("back");
    let s = engine.connect(&u, None).await.unwrap();
    let resume = s.resume_point();
    drop(s);
    engine.send(&u, text("while away")).await.unwrap();
    advance(&engine, &clock, 9_000).await;
    let s = engine.connect(&u, Some(resume)).await.unwrap();
    assert!(s.info().recovered);
    advance(&engine, &clock, 60_000).await;
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert!(stats.connected, "kept while connected, however long");
}

#[tokio::test]
async fn after_an_expired_mailbox_a_connect_is_not_recovered() {
    let clock = Clock::manual();
    let engine = engine_with(&clock, |b| {
        b.keep_away_mailboxes(Duration::from_secs(10), Duration::from_secs(10))
    });
    let u = user("gone");
    engine.send(&u, text("lost")).await.unwrap();
    let mut s = engine.connect(&u, None).await.unwrap();
    engine.barrier().await;
    assert_eq!(drain(&mut s).len(), 1);
    let resume = s.resume_point();
    s.close(CloseReason::Normal);
    advance(&engine, &clock, 10_000).await;
    let s = engine.connect(&u, Some(resume)).await.unwrap();
    assert!(!s.info().recovered);
    assert_ne!(s.info().epoch, resume.epoch, "a new mailbox, a new epoch");
}

#[tokio::test]
async fn idle_mailboxes_are_removed_after_the_idle_time() {
    let clock = Clock::manual();
    let engine = engine_with(&clock, |b| b.idle_timeout(Duration::from_secs(2)));
    let users: Vec<UserId> = (0..100).map(|i| user(&format!("idle-{i}"))).collect();
    for u in &users {
        let mut s = engine.connect(u, None).await.unwrap();
        engine.send(u, text("x")).await.unwrap();
        engine.barrier().await;
        let d = s.try_recv().unwrap();
        s.ack(d.seq()).unwrap();
        s.close(CloseReason::Normal);
    }
    engine.barrier().await;
    assert!(engine.mailbox_stats(&users[0]).await.is_some());
    advance(&engine, &clock, 1_999).await;
    assert!(engine.mailbox_stats(&users[99]).await.is_some());
    advance(&engine, &clock, 1).await;
    for u in &users {
        assert!(engine.mailbox_stats(u).await.is_none(), "{u} removed");
    }
}

#[tokio::test]
async fn a_mailbox_that_holds_messages_is_not_idle() {
    let clock = Clock::manual();
    let engine = engine_with(&clock, |b| {
        b.idle_timeout(Duration::from_secs(1))
            .keep_away_mailboxes(Duration::from_secs(100), Duration::from_secs(100))
    });
    let u = user("holding");
    let outcome = engine.send_confirmed(&u, text("waiting")).await.unwrap();
    assert_eq!(outcome, SendOutcome::Queued { evicted: 0 });
    advance(&engine, &clock, 5_000).await;
    assert_eq!(engine.mailbox_stats(&u).await.unwrap().queued(), 1);
}
