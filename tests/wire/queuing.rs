//! The engine's queuing rules seen from outside: HTTP publishes in, WebSocket deliveries
//! out, against the real server on 127.0.0.1:0. Queuing while away, priority order,
//! overflow, TTL, reconnect churn, concurrent senders, byte-exact payloads and isolation
//! between users.
#![cfg(feature = "server")]

use crate::harness;
use std::collections::HashMap;

use serde_json::{json, Value};

use crate::harness::{publish, publish_ok, publish_text, server, Delivered, Raw};

/// The `n` of a `{"n": ..}` payload.
fn n_of(d: &Delivered) -> u64 {
    d.value["data"]["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("no n: {}", d.text))
}

/// Reads `count` messages, acknowledging each (a small window needs the acks to move on).
async fn read_and_ack(raw: &mut Raw, count: usize) -> Vec<Delivered> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let d = raw.next_message().await;
        raw.ack(d.seq).await;
        out.push(d);
    }
    out
}

#[tokio::test]
async fn messages_queued_while_away_are_delivered_on_connect_in_fifo_order() {
    let server = server(&[]).await;
    for n in 0..20u64 {
        let outcome = publish_ok(&server, json!({"to": "away", "data": {"n": n}})).await;
        assert_eq!(outcome, json!({"outcome": "queued"}));
    }
    let (mut raw, connected) = Raw::connect(&server, "away", None).await;
    assert_eq!(connected["user"], "away");
    assert_eq!(connected["recovered"], false);
    assert_eq!(connected["missed"]["expired"], 0);
    let got = read_and_ack(&mut raw, 20).await;
    let ns: Vec<u64> = got.iter().map(n_of).collect();
    assert_eq!(ns, (0..20).collect::<Vec<_>>(), "FIFO");
    assert!(
        got.windows(2).all(|w| w[0].seq < w[1].seq),
        "seqs strictly increase"
    );
    assert!(got.iter().all(|d| d.priority == "normal"));
    assert!(raw.ping().await.is_empty(), "nothing more was queued");
    // Now connected, a publish is handed over at once.
    let outcome = publish_ok(&server, json!({"to": "away", "data": {"n": 20}})).await;
    assert_eq!(outcome["outcome"], "delivered");
    assert_eq!(n_of(&raw.next_message().await), 20);
}

#[tokio::test]
async fn a_backlog_is_delivered_most_urgent_first_and_fifo_within_a_priority() {
    let server = server(&[]).await;
    let priorities = [
        "low", "normal", "critical", "high", "low", "critical", "normal",
    ];
    let mut expected: HashMap<&str, Vec<u64>> = HashMap::new();
    for n in 0..28u64 {
        let p = priorities[n as usize % priorities.len()];
        publish_ok(
            &server,
            json!({"to": "prio", "priority": p, "data": {"n": n}}),
        )
        .await;
        expected.entry(p).or_default().push(n);
    }
    let (mut raw, _) = Raw::connect(&server, "prio", None).await;
    let got = read_and_ack(&mut raw, 28).await;
    let mut want = Vec::new();
    for p in ["critical", "high", "normal", "low"] {
        want.extend(expected[p].iter().map(|&n| (p.to_owned(), n)));
    }
    let seen: Vec<(String, u64)> = got.iter().map(|d| (d.priority.clone(), n_of(d))).collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn an_urgent_message_overtakes_a_backlog_waiting_behind_a_full_window() {
    let server = server(&["--window", "2"]).await;
    for n in 0..10u64 {
        publish_ok(
            &server,
            json!({"to": "slow", "priority": "low", "data": {"n": n}}),
        )
        .await;
    }
    let (mut raw, connected) = Raw::connect(&server, "slow", None).await;
    assert_eq!(connected["pending"], 8, "two in the window, eight waiting");
    let first = raw.next_message().await;
    let second = raw.next_message().await;
    assert_eq!((n_of(&first), n_of(&second)), (0, 1));
    // The window is full; a critical message waits in its band, ahead of the low ones.
    let outcome = publish_ok(
        &server,
        json!({"to": "slow", "priority": "critical", "data": {"n": 99}}),
    )
    .await;
    assert_eq!(outcome["outcome"], "queued");
    raw.ack(second.seq).await;
    let next = raw.next_message().await;
    assert_eq!((next.priority.as_str(), n_of(&next)), ("critical", 99));
    let rest = read_and_ack(&mut raw, 8).await;
    assert_eq!(
        rest.iter().map(n_of).collect::<Vec<_>>(),
        (2..10).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn overflow_reject_refuses_the_message_that_does_not_fit() {
    let server = server(&["--max-messages-per-user", "3", "--overflow", "reject"]).await;
    for n in 0..3u64 {
        let outcome = publish_ok(&server, json!({"to": "full", "data": {"n": n}})).await;
        assert_eq!(outcome, json!({"outcome": "queued"}));
    }
    let outcome = publish_ok(&server, json!({"to": "full", "id": "m3", "data": {"n": 3}})).await;
    assert_eq!(
        outcome,
        json!({"outcome": "rejected", "reason": "mailbox_full"})
    );
    let (mut raw, connected) = Raw::connect(&server, "full", None).await;
    assert_eq!(connected["missed"]["rejected"], 1, "{connected}");
    assert_eq!(connected["missed"]["evicted"], 0, "{connected}");
    let got = read_and_ack(&mut raw, 3).await;
    assert_eq!(got.iter().map(n_of).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(raw.ping().await.is_empty());
}

#[tokio::test]
async fn overflow_drop_oldest_reports_what_it_evicted_and_spares_urgent_messages() {
    let server = server(&["--max-messages-per-user", "3", "--overflow", "drop-oldest"]).await;
    let sends = [
        json!({"to": "u", "id": "c0", "priority": "critical", "data": {"n": 0}}),
        json!({"to": "u", "id": "l1", "priority": "low", "data": {"n": 1}}),
        json!({"to": "u", "id": "l2", "priority": "low", "data": {"n": 2}}),
    ];
    for body in sends {
        assert_eq!(
            publish_ok(&server, body).await,
            json!({"outcome": "queued"})
        );
    }
    // Full: the oldest message of the lowest band goes, never the critical one.
    let outcome = publish_ok(
        &server,
        json!({"to": "u", "id": "l3", "priority": "low", "data": {"n": 3}}),
    )
    .await;
    assert_eq!(outcome, json!({"outcome": "queued", "evicted": 1}));
    let outcome = publish_ok(
        &server,
        json!({"to": "u", "id": "n4", "priority": "normal", "data": {"n": 4}}),
    )
    .await;
    assert_eq!(outcome, json!({"outcome": "queued", "evicted": 1}));
    let (mut raw, connected) = Raw::connect(&server, "u", None).await;
    let missed = &connected["missed"];
    assert_eq!(missed["evicted"], 2, "{connected}");
    assert_eq!(missed["ids"], json!(["l1", "l2"]), "{connected}");
    let got = read_and_ack(&mut raw, 3).await;
    let seen: Vec<(String, u64)> = got.iter().map(|d| (d.priority.clone(), n_of(d))).collect();
    assert_eq!(
        seen,
        [
            ("critical".to_owned(), 0),
            ("normal".to_owned(), 4),
            ("low".to_owned(), 3)
        ]
    );
}

#[tokio::test]
async fn overflow_drop_newest_drops_the_newcomer() {
    let server = server(&["--max-messages-per-user", "3", "--overflow", "drop-newest"]).await;
    for n in 0..3u64 {
        publish_ok(&server, json!({"to": "dn", "data": {"n": n}})).await;
    }
    let outcome = publish_ok(&server, json!({"to": "dn", "id": "late", "data": {"n": 3}})).await;
    assert_eq!(outcome, json!({"outcome": "rejected", "reason": "dropped"}));
    let (mut raw, connected) = Raw::connect(&server, "dn", None).await;
    assert_eq!(connected["missed"]["evicted"], 1, "{connected}");
    assert_eq!(connected["missed"]["ids"], json!(["late"]));
    let got = read_and_ack(&mut raw, 3).await;
    assert_eq!(got.iter().map(n_of).collect::<Vec<_>>(), [0, 1, 2]);
}

#[tokio::test]
async fn a_message_sent_twice_with_the_same_id_is_kept_once() {
    let server = server(&[]).await;
    let body = json!({"to": "dedup", "id": "order-17", "data": {"n": 0}});
    assert_eq!(publish_ok(&server, body.clone()).await["outcome"], "queued");
    assert_eq!(
        publish_ok(&server, body).await,
        json!({"outcome": "duplicate"})
    );
    publish_ok(&server, json!({"to": "dedup", "data": {"n": 1}})).await;
    let (mut raw, connected) = Raw::connect(&server, "dedup", None).await;
    assert_eq!(connected["missed"]["deduplicated"], 1, "{connected}");
    let got = read_and_ack(&mut raw, 2).await;
    assert_eq!(got.iter().map(n_of).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(got[0].value["id"], "order-17");
    assert!(raw.ping().await.is_empty());
}

#[tokio::test]
async fn a_message_larger_than_the_users_byte_cap_is_rejected() {
    let server = server(&["--max-bytes-per-user", "100", "--overflow", "reject"]).await;
    let big = format!("\"{}\"", "b".repeat(200));
    let outcome = publish_text(&server, &format!(r#"{{"to":"cap","data":{big}}}"#)).await;
    assert_eq!(outcome.status, 200, "{}", outcome.body);
    assert_eq!(
        outcome.json(),
        json!({"outcome": "rejected", "reason": "larger_than_mailbox"})
    );
    let fits = format!("\"{}\"", "f".repeat(60));
    let first = publish_text(&server, &format!(r#"{{"to":"cap","data":{fits}}}"#)).await;
    assert_eq!(first.json()["outcome"], "queued");
    let second = publish_text(&server, &format!(r#"{{"to":"cap","data":{fits}}}"#)).await;
    assert_eq!(
        second.json(),
        json!({"outcome": "rejected", "reason": "mailbox_full"}),
        "the byte cap is a cap like the count"
    );
    let (mut raw, connected) = Raw::connect(&server, "cap", None).await;
    assert_eq!(connected["missed"]["rejected"], 2, "{connected}");
    assert_eq!(read_and_ack(&mut raw, 1).await[0].raw_data(), fits);
}

#[tokio::test]
async fn near_the_memory_budget_low_priorities_are_refused_first_and_critical_last() {
    let server = server(&[
        "--max-frame-bytes",
        "1KiB",
        "--memory-budget-bytes",
        "20000",
    ])
    .await;
    let payload = format!("\"{}\"", "m".repeat(498)); // 500 bytes: 40 fill the budget
    let mut accepted = HashMap::new();
    let mut shed = 0;
    for p in ["low", "normal", "high", "critical"] {
        // Each priority is accepted until its share of the budget is used, then refused.
        let mut n = 0;
        loop {
            let body = format!(r#"{{"to":"budget","priority":"{p}","data":{payload}}}"#);
            let r = publish_text(&server, &body).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let outcome = r.json();
            if outcome["outcome"] == "rejected" {
                assert_eq!(outcome["reason"], "memory_budget", "{p}: {outcome}");
                shed += 1;
                break;
            }
            assert_eq!(outcome["outcome"], "queued", "{p}: {outcome}");
            n += 1;
            assert!(n <= 40, "{p} was never refused");
        }
        accepted.insert(p, n);
    }
    // Low was refused first: each more urgent priority still got room after it.
    for p in ["low", "normal", "high", "critical"] {
        assert!(accepted[p] > 0, "{p} got no room at all: {accepted:?}");
    }
    let (mut raw, connected) = Raw::connect(&server, "budget", None).await;
    assert_eq!(connected["missed"]["shed"], shed, "{connected}");
    let total: u64 = accepted.values().sum();
    let got = read_and_ack(&mut raw, total as usize).await;
    let order: Vec<&str> = got.iter().map(|d| d.priority.as_str()).collect();
    let mut want = Vec::new();
    for p in ["critical", "high", "normal", "low"] {
        want.extend(std::iter::repeat_n(p, accepted[p] as usize));
    }
    assert_eq!(order, want);
}

#[tokio::test]
async fn a_message_whose_ttl_passes_while_away_is_counted_as_expired_and_never_delivered() {
    let server = server(&[]).await;
    let short = json!({"to": "ttl", "id": "short", "ttl_ms": 30, "data": {"n": 0}});
    assert_eq!(publish_ok(&server, short).await["outcome"], "queued");
    let long = json!({"to": "ttl", "ttl_ms": 600_000, "data": {"n": 1}});
    assert_eq!(publish_ok(&server, long).await["outcome"], "queued");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (mut raw, connected) = Raw::connect(&server, "ttl", None).await;
    assert_eq!(connected["missed"]["expired"], 1, "{connected}");
    assert_eq!(connected["missed"]["ids"], json!(["short"]), "{connected}");
    // FIFO: the expired message was ahead of this one; it is not delivered before it...
    let first = raw.next_message().await;
    assert_eq!(n_of(&first), 1);
    raw.ack(first.seq).await;
    // ...nor after.
    publish_ok(&server, json!({"to": "ttl", "data": {"n": 2}})).await;
    assert_eq!(n_of(&raw.next_message().await), 2);
}

#[tokio::test]
async fn a_delivered_message_whose_ttl_passes_unacknowledged_is_not_sent_again() {
    let server = server(&[]).await;
    let (mut raw, _) = Raw::connect(&server, "ttl2", None).await;
    let short = json!({"to": "ttl2", "id": "brief", "ttl_ms": 50, "data": {"n": 0}});
    assert_eq!(publish_ok(&server, short).await["outcome"], "delivered");
    let d = raw.next_message().await;
    assert_eq!(n_of(&d), 0);
    drop(raw); // never acknowledged
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (mut raw, connected) = Raw::connect(&server, "ttl2", None).await;
    assert_eq!(connected["redelivered"], 0, "{connected}");
    assert_eq!(connected["missed"]["expired"], 1, "{connected}");
    assert_eq!(connected["missed"]["ids"], json!(["brief"]), "{connected}");
    assert!(raw.ping().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_rapid_reconnects_while_messages_flow_lose_nothing() {
    const TOTAL: u64 = 1000;
    let server = std::sync::Arc::new(server(&["--window", "64"]).await);
    let publisher = {
        let server = server.clone();
        tokio::spawn(async move {
            for n in 0..TOTAL {
                let outcome = publish_ok(&server, json!({"to": "churn", "data": {"n": n}})).await;
                assert!(harness::kept(&outcome), "{outcome}");
            }
        })
    };
    // A fixed seed: churn and disconnects fall at varied but reproducible points.
    let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
    let mut next_n = 0u64; // every n below this was processed, in order
    let mut last_seq = 0u64; // the last processed seq
    let mut epoch = String::new();
    let mut seq_of: HashMap<u64, u64> = HashMap::new();
    let mut replaced_checked = 0;
    let mut old: Option<Raw> = None;
    // Every frame read, re-deliveries included: a server that re-sent forever would fail.
    let mut frames = harness::Bound::within("the churn", 20 * TOTAL, 6 * harness::GUARD);
    for cycle in 0..100 {
        // Mostly resume from what was processed; sometimes connect fresh, which sends every
        // unacknowledged message again (the client skips what it already processed).
        let fresh = epoch.is_empty() || cycle % 7 == 3;
        let resume = (!fresh).then_some((epoch.as_str(), last_seq));
        let (mut raw, connected) = Raw::connect(&server, "churn", resume).await;
        let e = connected["epoch"].as_str().unwrap().to_owned();
        if !epoch.is_empty() {
            assert_eq!(e, epoch, "the mailbox lives on");
            assert_eq!(connected["recovered"], !fresh, "{connected}");
        }
        epoch = e;
        if let Some(mut previous) = old.take() {
            // This connection replaced one that was still open: that one ends with 4002.
            assert_eq!(previous.close_code().await, Some(4002));
            replaced_checked += 1;
        }
        let want = (1 + rng.u64(..20)).min(TOTAL - next_n);
        let mut got = 0;
        while got < want {
            frames.tick();
            let d = raw.next_message().await;
            let n = n_of(&d);
            let first_seq = *seq_of.entry(n).or_insert(d.seq);
            assert_eq!(first_seq, d.seq, "message {n} came again with another seq");
            if d.seq <= last_seq {
                continue; // sent again, already processed
            }
            assert_eq!(n, next_n, "a message was lost or reordered");
            next_n += 1;
            last_seq = d.seq;
            got += 1;
            if rng.u64(..3) == 0 {
                raw.ack(d.seq).await;
            }
        }
        match rng.u64(..4) {
            0 => raw.close().await,
            1 => old = Some(raw), // left open: the next connect replaces it
            _ => drop(raw),       // abrupt
        }
    }
    drop(old);
    let (mut raw, _) = Raw::connect(&server, "churn", Some((&epoch, last_seq))).await;
    let resumed_at = last_seq;
    while next_n < TOTAL {
        frames.tick();
        let d = raw.next_message().await;
        let n = n_of(&d);
        assert_eq!(*seq_of.entry(n).or_insert(d.seq), d.seq);
        if d.seq <= last_seq {
            continue;
        }
        assert_eq!(n, next_n, "a message was lost or reordered");
        next_n += 1;
        last_seq = d.seq;
        if next_n % 16 == 0 {
            raw.ack(d.seq).await; // the window holds 64
        }
    }
    if last_seq > resumed_at {
        raw.ack(last_seq).await;
    }
    publisher.await.unwrap();
    assert!(
        replaced_checked > 5,
        "the replace path ran ({replaced_checked})"
    );
    let extra = raw.ping().await;
    assert!(extra.is_empty(), "nothing beyond the {TOTAL}: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_concurrent_senders_are_each_received_once_in_their_order() {
    const SENDERS: u64 = 4;
    const EACH: u64 = 250;
    let server = std::sync::Arc::new(server(&[]).await);
    let (mut raw, _) = Raw::connect(&server, "fan-in", None).await;
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let server = server.clone();
            tokio::spawn(async move {
                for n in 0..EACH {
                    let body = json!({"to": "fan-in", "data": {"s": s, "n": n}});
                    let outcome = publish_ok(&server, body).await;
                    assert!(harness::kept(&outcome), "{outcome}");
                }
            })
        })
        .collect();
    let mut next = [0u64; SENDERS as usize];
    let mut last_seq = 0;
    for i in 0..SENDERS * EACH {
        let d = raw.next_message().await;
        assert!(d.seq > last_seq);
        last_seq = d.seq;
        let s = d.value["data"]["s"].as_u64().unwrap() as usize;
        let n = d.value["data"]["n"].as_u64().unwrap();
        assert_eq!(n, next[s], "sender {s}: lost, duplicated or reordered");
        next[s] += 1;
        if i % 50 == 49 {
            raw.ack(d.seq).await;
        }
    }
    raw.ack(last_seq).await;
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(next, [EACH; SENDERS as usize]);
    assert!(raw.ping().await.is_empty(), "nothing was received twice");
}

/// Payloads whose spelling a re-serialising server would change.
const ODD_PAYLOADS: &[&str] = &[
    r#"{"b" : 1.50e3 ,"a":[ 1 , 2 ],  "z":{ }}"#,
    r#""tab\tnewline\nquote\"slash\/ \u00e9 \ud83d\ude00 raw é 😀 \u0000 \u2028""#,
    "123456789012345678901234567890.000000000000000000001",
    "[-0.0, 1E400, 1e-400, 18446744073709551616, -9223372036854775809]",
    r#"{"k":1,"k":2,"K":3}"#,
    "null",
    "[[[[[[[[[[{}]]]]]]]]]]",
    r#""  leading and trailing spaces inside  ""#,
];

#[tokio::test]
async fn data_comes_back_byte_for_byte() {
    let server = server(&["--allow-client-publish"]).await;
    let (mut raw, _) = Raw::connect(&server, "exact", None).await;
    // Over HTTP, with odd spacing around `data` too (not part of the value).
    for payload in ODD_PAYLOADS {
        let body = format!("{{ \"to\" : \"exact\",\n  \"data\" :   {payload}   \t}}");
        let r = publish_text(&server, &body).await;
        assert_eq!(r.status, 200, "{}: {}", payload, r.body);
        let d = raw.next_message().await;
        assert_eq!(d.raw_data(), *payload);
        raw.ack(d.seq).await;
    }
    // Over the WebSocket: another user publishes to this one.
    let (mut sender, _) = Raw::connect(&server, "sender", None).await;
    for (i, payload) in ODD_PAYLOADS.iter().enumerate() {
        let frame = format!(
            "{{\"type\":\"publish\",\"ref\":\"r{i}\",\"to\":\"exact\",\"data\":  {payload} }}"
        );
        sender.send_text(&frame).await;
        let result = sender.next().await;
        assert_eq!(result["type"], "publish_result", "{result}");
        assert_eq!(result["ref"], format!("r{i}"));
        assert_eq!(result["outcome"], "delivered", "{result}");
        let d = raw.next_message().await;
        assert_eq!(d.raw_data(), *payload);
        raw.ack(d.seq).await;
    }
}

#[tokio::test]
async fn one_user_never_receives_another_users_messages() {
    let server = server(&[]).await;
    let (mut alice, _) = Raw::connect(&server, "alice", None).await;
    // Bob is away for the first half and connects in the middle.
    let mut bob = None;
    for n in 0..100u64 {
        for user in ["alice", "bob"] {
            let body = json!({"to": user, "data": {"for": user, "n": n}});
            let outcome = publish_ok(&server, body).await;
            assert!(harness::kept(&outcome), "{outcome}");
        }
        if n == 50 {
            bob = Some(Raw::connect(&server, "bob", None).await.0);
        }
    }
    // A last message to each: once it arrives, everything sent before it has.
    for user in ["alice", "bob"] {
        publish_ok(
            &server,
            json!({"to": user, "data": {"for": user, "end": true}}),
        )
        .await;
    }
    let mut bob = bob.unwrap();
    for (raw, user) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        let mut ns = Vec::new();
        let mut bound = harness::Bound::new("reading up to the last message", 102);
        loop {
            bound.tick();
            let d = raw.next_message().await;
            assert_eq!(d.value["data"]["for"], user, "{user} got {}", d.text);
            raw.ack(d.seq).await;
            if d.value["data"]["end"] == Value::Bool(true) {
                break;
            }
            ns.push(n_of(&d));
        }
        assert_eq!(ns, (0..100).collect::<Vec<_>>(), "{user}");
    }
    // The HTTP API cannot be talked into it either: a publish names exactly one user.
    let r = publish(&server, json!({"to": ["alice", "bob"], "data": 1})).await;
    assert_eq!(r.status, 400, "{}", r.body);
}
