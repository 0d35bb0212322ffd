//! The circuit breaker inside the engine: a session that keeps failing stops receiving new
//! deliveries (they wait in the mailbox, urgent first), gets one trial after the cooldown,
//! and resumes when the trial succeeds. On a manual clock; nothing sleeps.

use std::time::Duration;

use tether::breaker::{BreakerConfig, BreakerState, Transition};
use tether::{Clock, Engine, Message, Priority, SendOutcome, Session, UserId};

fn engine(clock: &Clock) -> Engine {
    Engine::builder()
        .shards(1)
        .clock(clock.clone())
        .breaker(BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(10),
        })
        .build()
        .unwrap()
}

fn payloads(s: &mut Session) -> Vec<String> {
    let mut out = Vec::new();
    s.drain(&mut out, usize::MAX);
    out.iter()
        .map(|d| String::from_utf8(d.payload().to_vec()).unwrap())
        .collect()
}

async fn advance(engine: &Engine, clock: &Clock, by: Duration) {
    engine.barrier().await;
    clock.advance(by);
    engine.barrier().await;
}

#[tokio::test]
async fn an_open_breaker_holds_deliveries_then_one_trial_then_resumes() {
    let clock = Clock::manual();
    let engine = engine(&clock);
    let u = UserId::new("flaky").unwrap();
    let mut s = engine.connect(&u, None).await.unwrap();

    assert_eq!(s.report_delivery_failure(), None);
    assert_eq!(s.report_delivery_failure(), None);
    let Some(Transition::Opened { until_ms }) = s.report_delivery_failure() else {
        panic!("the third failure opens the breaker");
    };
    assert!(
        (1..=1000).contains(&until_ms),
        "cooldown within the first ceiling"
    );
    engine.barrier().await;

    // While open: nothing new is delivered; messages wait, and urgent ones will go first.
    for (text, p) in [
        ("n1", Priority::Normal),
        ("n2", Priority::Normal),
        ("c", Priority::Critical),
    ] {
        let outcome = engine
            .send_confirmed(&u, Message::new(text).with_priority(p))
            .await
            .unwrap();
        assert_eq!(outcome, SendOutcome::Queued { evicted: 0 });
    }
    engine.barrier().await;
    assert!(payloads(&mut s).is_empty());
    let m = engine.metrics();
    assert_eq!((m.counters.breaker_opens, m.gauges.breakers_open), (1, 1));

    // After the cooldown: exactly one trial, the most urgent message.
    advance(&engine, &clock, Duration::from_millis(1000)).await;
    assert_eq!(payloads(&mut s), ["c"]);
    assert_eq!(s.breaker_state(), BreakerState::HalfOpen);
    let m = engine.metrics();
    assert_eq!(
        (m.counters.breaker_half_opens, m.gauges.breakers_half_open),
        (1, 1)
    );
    engine.barrier().await;
    assert!(payloads(&mut s).is_empty(), "one trial only");

    // The trial succeeds: the breaker closes and the backlog flows, in order.
    assert_eq!(s.report_delivery_success(), Some(Transition::Closed));
    engine.barrier().await;
    assert_eq!(payloads(&mut s), ["n1", "n2"]);
    let m = engine.metrics();
    assert_eq!(m.counters.breaker_closes, 1);
    assert_eq!(
        (m.gauges.breakers_open, m.gauges.breakers_half_open),
        (0, 0)
    );
    assert_eq!(m.retry_success_rate(), Some(1.0));
}

#[tokio::test]
async fn a_failed_trial_reopens_with_a_longer_cooldown() {
    let clock = Clock::manual();
    let engine = engine(&clock);
    let u = UserId::new("down").unwrap();
    let mut s = engine.connect(&u, None).await.unwrap();
    for _ in 0..3 {
        s.report_delivery_failure();
    }
    engine.send(&u, Message::new("x")).await.unwrap();
    engine.send(&u, Message::new("y")).await.unwrap();
    advance(&engine, &clock, Duration::from_millis(1000)).await;
    assert_eq!(payloads(&mut s), ["x"], "the trial");
    let Some(Transition::Opened { .. }) = s.report_delivery_failure() else {
        panic!("a failed trial reopens");
    };
    engine.barrier().await;
    let m = engine.metrics();
    assert_eq!(m.counters.breaker_opens, 2);
    assert_eq!(m.counters.breaker_reopens, 1);
    assert_eq!(m.retry_success_rate(), Some(0.0));
    // The second cooldown is drawn from up to 2 s; after 2 s the next trial goes.
    advance(&engine, &clock, Duration::from_millis(2000)).await;
    assert_eq!(payloads(&mut s), ["y"]);
}

#[tokio::test]
async fn a_new_session_starts_with_a_closed_breaker() {
    let clock = Clock::manual();
    let engine = engine(&clock);
    let u = UserId::new("fresh").unwrap();
    let mut s = engine.connect(&u, None).await.unwrap();
    for _ in 0..3 {
        s.report_delivery_failure();
    }
    engine.send(&u, Message::new("waits")).await.unwrap();
    engine.barrier().await;
    assert!(payloads(&mut s).is_empty());
    drop(s);
    let mut s = engine.connect(&u, None).await.unwrap();
    engine.barrier().await;
    assert_eq!(payloads(&mut s), ["waits"]);
    let g = engine.metrics().gauges;
    assert_eq!((g.breakers_open, g.sessions_active), (0, 1));
}
