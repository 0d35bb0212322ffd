//! Per-user caps (messages and bytes) under each overflow policy, priority-aware eviction,
//! per-user overrides, and what the missed manifest reports.

use tether::{
    Engine, Message, MessageId, OverflowPolicy, Priority, RejectReason, SendOutcome, Session,
    UserId, UserLimits,
};

use crate::common::{recv, text, user};

fn ids(v: &[MessageId]) -> Vec<&str> {
    v.iter().map(MessageId::as_str).collect()
}

fn engine_with(limits: UserLimits) -> Engine {
    Engine::builder()
        .shards(2)
        .user_limits(limits)
        .build()
        .unwrap()
}

fn limits(max_messages: usize, max_bytes: usize, overflow: OverflowPolicy) -> UserLimits {
    UserLimits {
        max_messages,
        max_bytes,
        overflow,
    }
}

/// Sends `payload` with id = payload and the given priority, returning the outcome.
async fn send(engine: &Engine, u: &UserId, payload: &str, p: Priority) -> SendOutcome {
    engine
        .send_confirmed(
            u,
            Message::new(payload.to_string())
                .with_id(payload)
                .with_priority(p),
        )
        .await
        .unwrap()
}

/// Connects and receives exactly `n` deliveries, then checks nothing more is waiting.
async fn connect_and_take(engine: &Engine, u: &UserId, n: usize) -> (Session, Vec<String>) {
    let mut s = engine.connect(u, None).await.unwrap();
    let mut got = Vec::new();
    for i in 0..n {
        let d = recv(&mut s).await;
        assert_eq!(d.seq(), i as u64 + 1);
        got.push(text(&d));
    }
    engine.barrier().await;
    assert!(s.try_recv().is_err(), "more than {n} deliveries");
    (s, got)
}

#[tokio::test]
async fn drop_oldest_evicts_the_oldest_and_lists_it_in_the_manifest() {
    let engine = engine_with(limits(3, 1 << 20, OverflowPolicy::DropOldest));
    let u = user("drop-oldest");
    for m in ["m0", "m1", "m2"] {
        assert_eq!(
            send(&engine, &u, m, Priority::Normal).await,
            SendOutcome::Queued { evicted: 0 }
        );
    }
    assert_eq!(
        send(&engine, &u, "m3", Priority::Normal).await,
        SendOutcome::Queued { evicted: 1 }
    );
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(stats.queued(), 3);
    assert_eq!(stats.missed, 1);

    let (s, got) = connect_and_take(&engine, &u, 3).await;
    assert_eq!(got, ["m1", "m2", "m3"]);
    let missed = &s.info().missed;
    assert_eq!(missed.evicted, 1);
    assert_eq!((missed.rejected, missed.shed, missed.expired), (0, 0, 0));
    assert_eq!(ids(&missed.ids), ["m0"]);
    assert_eq!(missed.total(), 1);

    // The manifest is reset by each connect.
    drop(s);
    let s = engine.connect(&u, None).await.unwrap();
    assert_eq!(s.info().missed.total(), 0);
    assert!(s.info().missed.ids.is_empty());
}

#[tokio::test]
async fn drop_newest_refuses_the_incoming_and_keeps_the_first_three() {
    let engine = engine_with(limits(3, 1 << 20, OverflowPolicy::DropNewest));
    let u = user("drop-newest");
    for m in ["m0", "m1", "m2"] {
        assert_eq!(
            send(&engine, &u, m, Priority::Normal).await,
            SendOutcome::Queued { evicted: 0 }
        );
    }
    assert_eq!(
        send(&engine, &u, "m3", Priority::Normal).await,
        SendOutcome::Rejected(RejectReason::Dropped)
    );
    // Also a more urgent one: DropNewest does not look at priorities.
    assert_eq!(
        send(&engine, &u, "m4", Priority::Critical).await,
        SendOutcome::Rejected(RejectReason::Dropped)
    );
    let (s, got) = connect_and_take(&engine, &u, 3).await;
    assert_eq!(got, ["m0", "m1", "m2"]);
    let missed = &s.info().missed;
    assert_eq!(missed.evicted, 2);
    assert_eq!(missed.rejected, 0);
    assert_eq!(ids(&missed.ids), ["m3", "m4"]);
}

#[tokio::test]
async fn reject_policy_refuses_with_mailbox_full_and_counts_it_as_rejected() {
    let engine = engine_with(limits(3, 1 << 20, OverflowPolicy::Reject));
    let u = user("reject");
    for m in ["m0", "m1", "m2"] {
        assert_eq!(
            send(&engine, &u, m, Priority::Normal).await,
            SendOutcome::Queued { evicted: 0 }
        );
    }
    assert_eq!(
        send(&engine, &u, "m3", Priority::Normal).await,
        SendOutcome::Rejected(RejectReason::MailboxFull)
    );
    let (s, got) = connect_and_take(&engine, &u, 3).await;
    assert_eq!(got, ["m0", "m1", "m2"]);
    let missed = &s.info().missed;
    assert_eq!(missed.rejected, 1);
    assert_eq!(missed.evicted, 0);
    assert_eq!(ids(&missed.ids), ["m3"]);
}

#[tokio::test]
async fn byte_cap_under_drop_oldest_evicts_several_small_for_one_big() {
    let engine = engine_with(limits(100, 100, OverflowPolicy::DropOldest));
    let u = user("bytes");
    // Ten 10-byte Low messages fill the 100-byte cap exactly.
    for i in 0..10 {
        let payload = format!("low-{i:06}");
        assert_eq!(payload.len(), 10);
        assert_eq!(
            send(&engine, &u, &payload, Priority::Low).await,
            SendOutcome::Queued { evicted: 0 }
        );
    }
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(stats.queued_bytes, 100);

    // 35 bytes need four 10-byte evictions (60 + 35 = 95 <= 100; 70 + 35 > 100).
    let big = format!("big-{}", "x".repeat(31));
    assert_eq!(big.len(), 35);
    assert_eq!(
        send(&engine, &u, &big, Priority::Normal).await,
        SendOutcome::Queued { evicted: 4 }
    );
    // Exactly at the cap is accepted without evicting: 95 + 5 = 100.
    assert_eq!(
        send(&engine, &u, "edge5", Priority::Normal).await,
        SendOutcome::Queued { evicted: 0 }
    );
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(stats.queued_bytes, 100);
    assert_eq!(stats.queued_per_band, [0, 0, 2, 6]);

    let (s, got) = connect_and_take(&engine, &u, 8).await;
    let mut expected = vec![big.clone(), "edge5".to_string()];
    expected.extend((4..10).map(|i| format!("low-{i:06}")));
    assert_eq!(got, expected);
    let missed = &s.info().missed;
    assert_eq!(missed.evicted, 4);
    assert_eq!(
        ids(&missed.ids),
        ["low-000000", "low-000001", "low-000002", "low-000003"]
    );
}

#[tokio::test]
async fn payload_larger_than_the_byte_cap_is_refused_under_every_policy() {
    for policy in [
        OverflowPolicy::DropOldest,
        OverflowPolicy::DropNewest,
        OverflowPolicy::Reject,
    ] {
        let engine = engine_with(limits(10, 100, policy));
        let u = user("large");
        assert_eq!(
            send(&engine, &u, "small", Priority::Low).await,
            SendOutcome::Queued { evicted: 0 }
        );
        let too_big = "y".repeat(101);
        assert_eq!(
            send(&engine, &u, &too_big, Priority::Critical).await,
            SendOutcome::Rejected(RejectReason::LargerThanMailbox),
            "{policy:?}"
        );
        // Nothing was evicted for it.
        let stats = engine.mailbox_stats(&u).await.unwrap();
        assert_eq!(stats.queued(), 1, "{policy:?}");
        assert_eq!(stats.queued_bytes, 5, "{policy:?}");

        let (s, got) = connect_and_take(&engine, &u, 1).await;
        assert_eq!(got, ["small"]);
        assert_eq!(s.info().missed.rejected, 1, "{policy:?}");
        assert_eq!(s.info().missed.evicted, 0, "{policy:?}");
        assert_eq!(ids(&s.info().missed.ids), [too_big.as_str()]);
    }

    // A payload exactly the size of the byte cap fits an empty mailbox.
    let engine = engine_with(limits(10, 100, OverflowPolicy::Reject));
    let u = user("exact");
    assert_eq!(
        send(&engine, &u, &"z".repeat(100), Priority::Normal).await,
        SendOutcome::Queued { evicted: 0 }
    );
}

#[tokio::test]
async fn caps_apply_to_the_backlog_not_to_messages_in_flight() {
    let engine = Engine::builder()
        .shards(1)
        .window(4)
        .user_limits(limits(2, 1 << 20, OverflowPolicy::Reject))
        .build()
        .unwrap();
    let u = user("in-flight");
    let mut s = engine.connect(&u, None).await.unwrap();
    for i in 0..4 {
        assert_eq!(
            send(&engine, &u, &format!("w{i}"), Priority::Normal).await,
            SendOutcome::Delivered
        );
    }
    for i in 0..2 {
        assert_eq!(
            send(&engine, &u, &format!("q{i}"), Priority::Normal).await,
            SendOutcome::Queued { evicted: 0 }
        );
    }
    assert_eq!(
        send(&engine, &u, "over", Priority::Normal).await,
        SendOutcome::Rejected(RejectReason::MailboxFull)
    );
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!((stats.in_flight, stats.queued()), (4, 2));
    for i in 0..4 {
        assert_eq!(text(&recv(&mut s).await), format!("w{i}"));
    }
}

#[tokio::test]
async fn a_low_flood_never_evicts_a_critical() {
    let engine = engine_with(limits(10, 1 << 20, OverflowPolicy::DropOldest));
    let u = user("flood");
    for i in 0..3 {
        send(&engine, &u, &format!("crit-{i}"), Priority::Critical).await;
    }
    for i in 0..2 {
        send(&engine, &u, &format!("high-{i}"), Priority::High).await;
    }
    const FLOOD: usize = 5000;
    for i in 0..FLOOD - 1 {
        engine
            .send(
                &u,
                Message::new(format!("low-{i}")).with_priority(Priority::Low),
            )
            .await
            .unwrap();
    }
    // The last one, confirmed: the mailbox is full of 5 urgent + 5 Low, one Low goes.
    assert_eq!(
        send(&engine, &u, &format!("low-{}", FLOOD - 1), Priority::Low).await,
        SendOutcome::Queued { evicted: 1 }
    );
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(stats.queued_per_band, [3, 2, 0, 5]);

    let (s, got) = connect_and_take(&engine, &u, 10).await;
    let mut expected: Vec<String> = vec![];
    expected.extend((0..3).map(|i| format!("crit-{i}")));
    expected.extend((0..2).map(|i| format!("high-{i}")));
    expected.extend((FLOOD - 5..FLOOD).map(|i| format!("low-{i}")));
    assert_eq!(got, expected);
    assert_eq!(s.info().missed.evicted, (FLOOD - 5) as u64);
}

#[tokio::test]
async fn a_mailbox_full_of_critical_drops_less_urgent_newcomers() {
    let engine = engine_with(limits(4, 1 << 20, OverflowPolicy::DropOldest));
    let u = user("all-critical");
    for i in 0..4 {
        send(&engine, &u, &format!("c{i}"), Priority::Critical).await;
    }
    for (m, p) in [
        ("low", Priority::Low),
        ("normal", Priority::Normal),
        ("high", Priority::High),
    ] {
        assert_eq!(
            send(&engine, &u, m, p).await,
            SendOutcome::Rejected(RejectReason::Dropped),
            "{p:?}"
        );
    }
    // A Critical is no more urgent than the queued Criticals: the oldest of them goes.
    assert_eq!(
        send(&engine, &u, "c4", Priority::Critical).await,
        SendOutcome::Queued { evicted: 1 }
    );
    let (s, got) = connect_and_take(&engine, &u, 4).await;
    assert_eq!(got, ["c1", "c2", "c3", "c4"]);
    assert_eq!(s.info().missed.evicted, 4);
    assert_eq!(ids(&s.info().missed.ids), ["low", "normal", "high", "c0"]);
}

#[tokio::test]
async fn drop_oldest_evicts_from_the_least_urgent_band_no_more_urgent_than_the_newcomer() {
    let engine = engine_with(limits(4, 1 << 20, OverflowPolicy::DropOldest));
    let u = user("mixed");
    for (m, p) in [
        ("c0", Priority::Critical),
        ("c1", Priority::Critical),
        ("n0", Priority::Normal),
        ("n1", Priority::Normal),
    ] {
        send(&engine, &u, m, p).await;
    }
    let steps = [
        // (payload, priority, outcome)
        ("h0", Priority::High, SendOutcome::Queued { evicted: 1 }), // evicts n0
        (
            "l0",
            Priority::Low,
            SendOutcome::Rejected(RejectReason::Dropped),
        ), // no Low queued
        ("n2", Priority::Normal, SendOutcome::Queued { evicted: 1 }), // evicts n1
        ("h1", Priority::High, SendOutcome::Queued { evicted: 1 }), // evicts n2
        ("h2", Priority::High, SendOutcome::Queued { evicted: 1 }), // evicts h0, not a Critical
    ];
    for (m, p, outcome) in steps {
        assert_eq!(send(&engine, &u, m, p).await, outcome, "{m}");
    }
    let (s, got) = connect_and_take(&engine, &u, 4).await;
    assert_eq!(got, ["c0", "c1", "h1", "h2"]);
    assert_eq!(ids(&s.info().missed.ids), ["n0", "l0", "n1", "n2", "h0"]);
}

#[tokio::test]
async fn per_user_limits_override_the_default_at_the_exact_edge() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let a = user("override-a");
    let b = user("default-b");
    let c = user("override-c");

    engine
        .set_user_limits(&a, Some(limits(5, 1 << 20, OverflowPolicy::Reject)))
        .await
        .unwrap();
    // An override needs no mailbox: it waits for the user's first message.
    assert!(engine.mailbox_stats(&a).await.is_none());

    for i in 0..5 {
        assert_eq!(
            send(&engine, &a, &format!("a{i}"), Priority::Normal).await,
            SendOutcome::Queued { evicted: 0 },
            "message {i} is within the cap"
        );
    }
    assert_eq!(
        send(&engine, &a, "a5", Priority::Normal).await,
        SendOutcome::Rejected(RejectReason::MailboxFull)
    );
    // Another user keeps the engine default (1000 messages).
    for i in 0..6 {
        assert_eq!(
            send(&engine, &b, &format!("b{i}"), Priority::Normal).await,
            SendOutcome::Queued { evicted: 0 }
        );
    }

    // Byte cap override: exactly 50 bytes fit, one more byte does not.
    engine
        .set_user_limits(&c, Some(limits(100, 50, OverflowPolicy::Reject)))
        .await
        .unwrap();
    for i in 0..5 {
        assert_eq!(
            send(&engine, &c, &format!("c-{i:08}"), Priority::Normal).await,
            SendOutcome::Queued { evicted: 0 }
        );
    }
    assert_eq!(engine.mailbox_stats(&c).await.unwrap().queued_bytes, 50);
    assert_eq!(
        send(&engine, &c, "x", Priority::Normal).await,
        SendOutcome::Rejected(RejectReason::MailboxFull)
    );

    // Back to the default: a's sixth message now fits.
    engine.set_user_limits(&a, None).await.unwrap();
    assert_eq!(
        send(&engine, &a, "a6", Priority::Normal).await,
        SendOutcome::Queued { evicted: 0 }
    );
    let (_s, got) = connect_and_take(&engine, &a, 6).await;
    assert_eq!(got, ["a0", "a1", "a2", "a3", "a4", "a6"]);
}

#[tokio::test]
async fn engine_default_limit_accepts_exactly_max_messages() {
    let engine = engine_with(limits(3, 1 << 20, OverflowPolicy::Reject));
    let u = user("default-edge");
    for i in 0..3 {
        assert_eq!(
            send(&engine, &u, &format!("m{i}"), Priority::Low).await,
            SendOutcome::Queued { evicted: 0 }
        );
    }
    assert_eq!(
        send(&engine, &u, "m3", Priority::Low).await,
        SendOutcome::Rejected(RejectReason::MailboxFull)
    );
}

#[tokio::test]
async fn the_missed_manifest_keeps_only_the_most_recent_ids() {
    let engine = Engine::builder()
        .shards(1)
        .missed_ids(2)
        .user_limits(limits(1, 1 << 20, OverflowPolicy::DropNewest))
        .build()
        .unwrap();
    let u = user("few-ids");
    send(&engine, &u, "kept", Priority::Normal).await;
    for m in ["d0", "d1", "d2", "d3"] {
        assert_eq!(
            send(&engine, &u, m, Priority::Normal).await,
            SendOutcome::Rejected(RejectReason::Dropped)
        );
    }
    // A dropped message without an id is counted but has no id to list.
    engine.send(&u, Message::new("anonymous")).await.unwrap();
    let (s, got) = connect_and_take(&engine, &u, 1).await;
    assert_eq!(got, ["kept"]);
    assert_eq!(s.info().missed.evicted, 5);
    assert_eq!(ids(&s.info().missed.ids), ["d2", "d3"]);
}

#[tokio::test]
async fn max_users_refuses_a_mailbox_beyond_the_maximum() {
    let engine = Engine::builder().shards(1).max_users(2).build().unwrap();
    let (a, b, c) = (user("a"), user("b"), user("c"));
    assert_eq!(
        send(&engine, &a, "a0", Priority::Normal).await,
        SendOutcome::Queued { evicted: 0 }
    );
    let _sb = engine.connect(&b, None).await.unwrap();
    assert_eq!(
        send(&engine, &c, "c0", Priority::Critical).await,
        SendOutcome::Rejected(RejectReason::TooManyUsers)
    );
    assert_eq!(
        engine.connect(&c, None).await.unwrap_err(),
        tether::ConnectError::TooManyUsers
    );
    assert!(engine.mailbox_stats(&c).await.is_none());
    // Existing users are unaffected.
    assert_eq!(
        send(&engine, &a, "a1", Priority::Normal).await,
        SendOutcome::Queued { evicted: 0 }
    );
    assert_eq!(
        send(&engine, &b, "b0", Priority::Normal).await,
        SendOutcome::Delivered
    );
}
