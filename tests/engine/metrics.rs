//! Metrics: exact counts after a scripted scenario, snapshot diffs, per-user counters leaving
//! with their mailbox, and Prometheus text that a real parser accepts.

use std::time::Duration;

use tether::{
    Clock, CloseReason, Engine, Message, OverflowPolicy, Priority, SendOutcome, UserId, UserLimits,
};

use crate::common::user;

#[tokio::test]
async fn a_scripted_scenario_gives_exact_counts() {
    let clock = Clock::manual();
    let engine = Engine::builder()
        .shards(2)
        .clock(clock.clone())
        .window(2)
        .user_limits(UserLimits {
            max_messages: 2,
            max_bytes: 1 << 20,
            overflow: OverflowPolicy::DropOldest,
        })
        .build()
        .unwrap();
    let (a, b) = (user("a"), user("b"));
    // a: away, 3 Low sends into a 2-message mailbox: 3 queued, 1 evicted, 1 overflow.
    for i in 0..3 {
        let m = Message::new(format!("a{i}")).with_priority(Priority::Low);
        engine.send(&a, m).await.unwrap();
    }
    // b: a duplicate and one with a TTL that expires.
    engine
        .send(&b, Message::new("b0").with_id("x"))
        .await
        .unwrap();
    let dup = engine
        .send_confirmed(&b, Message::new("b0").with_id("x"))
        .await;
    assert_eq!(dup.unwrap(), SendOutcome::Duplicate);
    engine
        .send(&b, Message::new("b1").with_ttl(Duration::from_millis(10)))
        .await
        .unwrap();
    engine.barrier().await;
    clock.advance(Duration::from_millis(10));
    engine.barrier().await;

    // a connects: 2 delivered; acks 1; drops; reconnects: 1 redelivered; replaced once.
    let mut s = engine.connect(&a, None).await.unwrap();
    engine.barrier().await;
    let first = s.try_recv().unwrap();
    let _second = s.try_recv().unwrap();
    s.ack(first.seq()).unwrap();
    drop(s);
    let s = engine.connect(&a, None).await.unwrap();
    let s2 = engine.connect(&a, None).await.unwrap();
    drop(s);
    s2.close(CloseReason::Normal);
    engine.barrier().await;

    let m = engine.metrics();
    let c = m.counters;
    assert_eq!(c.sent, 6, "3 to a, 3 to b (one of them a duplicate)");
    assert_eq!(c.queued, 5, "3 for a, 2 for b");
    assert_eq!(c.evicted, 1);
    assert_eq!(c.overflows, 1);
    assert_eq!(c.duplicates, 1);
    assert_eq!(c.expired, 1);
    assert_eq!(c.delivered, 2);
    assert_eq!(c.acknowledged, 1);
    assert_eq!(
        c.redelivered, 2,
        "the unacked one, to each of the two later sessions"
    );
    assert_eq!(c.connects, 3);
    assert_eq!(
        c.reconnections, 3,
        "a's mailbox existed before each connect"
    );
    assert_eq!(c.replaced, 1);
    assert_eq!(c.closed_abnormal, 1);
    assert_eq!(c.closed_normal, 1);
    let g = m.gauges;
    assert_eq!(g.sessions_active, 0);
    assert_eq!(g.mailboxes, 2);
    assert_eq!((g.queued_low, g.queued_normal), (0, 1), "b0 waits");
    assert_eq!(g.in_flight, 1, "a's second message, unacknowledged");
    assert_eq!(g.held_bytes, 4, "a2 and b0");
    assert_eq!(g.max_queue_depth, 2);
    assert_eq!(m.enqueue_to_delivery.count, 2);
    assert_eq!(m.delivery_to_ack.count, 1);

    let per_user = engine.mailbox_stats(&a).await.unwrap().counters;
    assert_eq!(
        (
            per_user.sent,
            per_user.delivered,
            per_user.acknowledged,
            per_user.evicted
        ),
        (3, 2, 1, 1)
    );
    assert_eq!(
        engine.mailbox_stats(&b).await.unwrap().counters.duplicates,
        1
    );
}

#[tokio::test]
async fn a_diff_is_the_change_between_two_snapshots() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("d");
    engine.send(&u, Message::new("1")).await.unwrap();
    engine.barrier().await;
    let earlier = engine.metrics();
    for _ in 0..5 {
        engine.send(&u, Message::new("2")).await.unwrap();
    }
    engine.barrier().await;
    let now = engine.metrics();
    let d = now.diff(&earlier);
    assert_eq!((d.counters.sent, d.counters.queued), (5, 5));
    assert_eq!(d.gauges.queued_normal, 6, "gauges keep their current value");
    assert_eq!(now.diff(&now).counters, Default::default());
}

#[tokio::test]
async fn per_user_metrics_leave_with_their_mailbox() {
    let clock = Clock::manual();
    let engine = Engine::builder()
        .shards(2)
        .clock(clock.clone())
        .idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let users: Vec<UserId> = (0..100).map(|i| user(&format!("p{i}"))).collect();
    for u in &users {
        let mut s = engine.connect(u, None).await.unwrap();
        engine.send(u, Message::new("m")).await.unwrap();
        engine.barrier().await;
        let d = s.try_recv().unwrap();
        s.ack(d.seq()).unwrap();
        s.close(CloseReason::Normal);
    }
    engine.barrier().await;
    assert_eq!(engine.metrics().gauges.mailboxes, 100);
    assert_eq!(
        engine
            .mailbox_stats(&users[7])
            .await
            .unwrap()
            .counters
            .acknowledged,
        1
    );
    clock.advance(Duration::from_secs(2));
    engine.barrier().await;
    let m = engine.metrics();
    assert_eq!(m.gauges.mailboxes, 0);
    assert_eq!(m.counters.mailboxes_removed, 100);
    for u in &users {
        assert!(
            engine.mailbox_stats(u).await.is_none(),
            "{u}'s metrics are gone"
        );
    }
}

#[tokio::test]
async fn prometheus_text_parses_and_carries_the_values() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let u = user("prom");
    let mut s = engine.connect(&u, None).await.unwrap();
    for p in Priority::ALL {
        engine
            .send(&u, Message::new("x").with_priority(p))
            .await
            .unwrap();
    }
    let d = s.recv().await.unwrap();
    s.ack(d.seq()).unwrap();
    engine.barrier().await;
    let text = engine.metrics().to_prometheus();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} {label:?} missing"))
    };
    assert_eq!(value("tether_messages_sent_total", None), 4.0);
    assert_eq!(value("tether_messages_delivered_total", None), 4.0);
    assert_eq!(value("tether_messages_acknowledged_total", None), 1.0);
    assert_eq!(value("tether_sessions_active", None), 1.0);
    assert_eq!(value("tether_in_flight_messages", None), 3.0);
    assert_eq!(value("tether_memory_held_bytes", None), 3.0);
    assert_eq!(
        value("tether_messages_dropped_total", Some(("reason", "evicted"))),
        0.0
    );
    assert_eq!(value("tether_breakers", Some(("state", "closed"))), 1.0);
    assert!(scrape
        .docs
        .contains_key("tether_enqueue_to_delivery_seconds"));
    let histogram = scrape
        .samples
        .iter()
        .find(|s| s.metric == "tether_delivery_to_ack_seconds")
        .expect("histogram present");
    match &histogram.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(buckets.last().map(|b| b.count), Some(1.0));
        }
        other => panic!("not a histogram: {other:?}"),
    }
}

#[tokio::test]
async fn json_export_is_an_object_with_the_counters() {
    let engine = Engine::builder().shards(1).build().unwrap();
    engine.send(&user("j"), Message::new("x")).await.unwrap();
    engine.barrier().await;
    let json = engine.metrics().to_json();
    assert!(json.starts_with('{') && json.ends_with('}'));
    assert!(json.contains("\"sent\":1"), "{json}");
    assert!(json.contains("\"p99_us\""), "{json}");
}

#[tokio::test]
async fn delivery_latency_starts_at_the_producers_call_and_the_inbox_wait_is_its_own() {
    let clock = Clock::manual();
    let engine = Engine::builder()
        .shards(1)
        .clock(clock.clone())
        .build()
        .unwrap();
    let away = user("away");
    clock.advance(Duration::from_millis(5));
    engine.send(&away, Message::new("m")).await.unwrap();
    // However late the shard takes the send up, the latency counts from the call: 10 ms
    // pass before the user connects and the message enters the window.
    clock.advance(Duration::from_millis(10));
    engine.barrier().await;
    let mut s = engine.connect(&away, None).await.unwrap();
    engine.barrier().await;
    assert!(s.try_recv().is_ok());
    let m = engine.metrics();
    assert_eq!(m.enqueue_to_delivery.count, 1);
    assert_eq!(m.enqueue_to_delivery.max_us, 10_000);
    // The send waited in the inbox from its call until the shard took it up: within the
    // 10 ms, depending on when the worker ran.
    assert_eq!(m.inbox_wait.count, 1);
    assert!(m.inbox_wait.max_us <= 10_000, "{:?}", m.inbox_wait);
    assert!(m
        .to_prometheus()
        .contains("tether_inbox_wait_seconds_count 1"));
}
