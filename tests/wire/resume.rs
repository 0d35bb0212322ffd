//! Resuming over the wire: abrupt disconnects in the middle of a long flow lose nothing and
//! duplicate nothing but re-deliveries (with their original seqs); streams resume where the
//! acknowledgements left them; an aborted stream ends with a `stream_aborted` delivery.
#![cfg(feature = "server")]

use crate::harness;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tether::{StreamPhase, UserId};

use crate::harness::{eventually, publish_batch, publish_ok, server, Delivered, Raw};

/// What the client side of the long flow keeps: the resume point, what it processed, and
/// the seq each message number was first seen with.
struct Client {
    epoch: String,
    /// The last processed seq: the client keeps a message only if its seq is above this.
    last_seq: u64,
    /// How often each message number was processed.
    processed: Vec<u32>,
    processed_total: u64,
    /// The seq each message number was first seen with.
    seq_of: HashMap<u64, u64>,
    /// Deliveries seen again (after a resume) that the client had seen before.
    seen_again: u64,
}

impl Client {
    fn new(total: u64) -> Self {
        Self {
            epoch: String::new(),
            last_seq: 0,
            processed: vec![0; total as usize],
            processed_total: 0,
            seq_of: HashMap::new(),
            seen_again: 0,
        }
    }

    /// Looks at one delivery; returns whether it was new and processed.
    fn see(&mut self, d: &Delivered, process: bool) -> bool {
        let n = d.value["data"]["n"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}", d.text));
        match self.seq_of.get(&n) {
            Some(&first) => {
                assert_eq!(first, d.seq, "message {n} was sent again with another seq");
                self.seen_again += 1;
            }
            None => {
                self.seq_of.insert(n, d.seq);
            }
        }
        if !process || d.seq <= self.last_seq {
            return false;
        }
        // One producer, one priority: the numbers come in order, each new seq the next one.
        assert_eq!(
            n, self.processed_total,
            "message {} was lost or reordered: got {n} with seq {} after seq {}",
            self.processed_total, d.seq, self.last_seq
        );
        self.last_seq = d.seq;
        self.processed[n as usize] += 1;
        self.processed_total += 1;
        true
    }

    fn resume(&self) -> Option<(&str, u64)> {
        (!self.epoch.is_empty()).then_some((self.epoch.as_str(), self.last_seq))
    }

    fn connected(&mut self, connected: &Value) {
        let epoch = connected["epoch"].as_str().expect("an epoch");
        if !self.epoch.is_empty() {
            assert_eq!(epoch, self.epoch, "the mailbox was kept: {connected}");
            assert_eq!(connected["recovered"], true, "{connected}");
            assert_eq!(connected["missed"]["evicted"], 0, "{connected}");
        }
        self.epoch = epoch.to_owned();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_abrupt_disconnects_in_a_ten_thousand_message_flow_lose_nothing() {
    const TOTAL: u64 = 10_000;
    const BATCH: u64 = 100;
    const DISCONNECTS: usize = 200;
    let server = Arc::new(
        server(&[
            "--window",
            "128",
            "--max-messages-per-user",
            "20000",
            "--max-bytes-per-user",
            "16MiB",
        ])
        .await,
    );
    let publisher = {
        let server = server.clone();
        tokio::spawn(async move {
            for start in (0..TOTAL).step_by(BATCH as usize) {
                let batch = (start..start + BATCH)
                    .map(|n| json!({"to": "resumer", "data": {"n": n}}))
                    .collect();
                for result in publish_batch(&server, batch).await {
                    assert!(harness::kept(&result), "{result}");
                }
            }
        })
    };
    // A fixed seed: churn and disconnects fall at varied but reproducible points.
    let mut rng = fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d);
    let mut client = Client::new(TOTAL);
    // Every frame read, re-deliveries included: a server that re-sent forever would fail.
    let mut frames = harness::Bound::within("the flow", 4 * TOTAL, 6 * harness::GUARD);
    for _ in 0..DISCONNECTS {
        let (mut raw, connected) = Raw::connect(&server, "resumer", client.resume()).await;
        client.connected(&connected);
        // Read a varied number of new messages; acknowledge some of them on the way.
        let left = TOTAL - client.processed_total;
        let want = (1 + rng.u64(..2 * TOTAL / DISCONNECTS as u64 - 1)).min(left);
        let mut got = 0;
        while got < want {
            frames.tick();
            let d = raw.next_message().await;
            if client.see(&d, true) {
                got += 1;
                if rng.u64(..8) == 0 {
                    raw.ack(d.seq).await;
                }
            }
        }
        // Sometimes the client dies between reading a message and processing it: it will
        // see that message again.
        if rng.u64(..4) == 0 && client.processed_total < TOTAL {
            let d = raw.next_message().await;
            client.see(&d, false);
        }
        if rng.u64(..3) == 0 && got > 0 {
            raw.ack(client.last_seq).await;
        }
        drop(raw); // no close frame: the TCP connection just goes
    }
    let (mut raw, connected) = Raw::connect(&server, "resumer", client.resume()).await;
    client.connected(&connected);
    let resumed_at = client.last_seq;
    // The disconnects fell all along the flow, not after it.
    assert!(
        client.processed_total > TOTAL * 9 / 10,
        "{}",
        client.processed_total
    );
    while client.processed_total < TOTAL {
        frames.tick();
        let d = raw.next_message().await;
        // Acknowledge as it goes: the window holds 128 unacknowledged messages.
        if client.see(&d, true) && client.processed_total % 32 == 0 {
            raw.ack(d.seq).await;
        }
    }
    if client.last_seq > resumed_at {
        raw.ack(client.last_seq).await;
    }
    publisher.await.expect("the publisher finished");
    let twice: Vec<usize> = (0..TOTAL as usize)
        .filter(|&n| client.processed[n] != 1)
        .collect();
    assert!(twice.is_empty(), "processed other than once: {twice:?}");
    assert!(client.seen_again > 0, "the duplicate path ran");
    assert!(raw.ping().await.is_empty(), "nothing beyond the {TOTAL}");
    let user = UserId::new("resumer").unwrap();
    eventually("the last ack settles the mailbox", || async {
        let stats = server.engine().mailbox_stats(&user).await.unwrap();
        stats.in_flight == 0 && stats.queued() == 0
    })
    .await;
}

/// The `stream` object of a delivery: (id, part, last).
fn part_of(d: &Delivered) -> (String, u64, bool) {
    let s = &d.value["stream"];
    (
        s["id"].as_str().expect("a stream id").to_owned(),
        s["part"].as_u64().expect("a part"),
        s["last"].as_bool().expect("last"),
    )
}

#[tokio::test]
async fn a_stream_resumes_across_disconnects_and_acknowledged_parts_never_come_again() {
    const PARTS: u64 = 50;
    let server = server(&[]).await;
    // Parts arrive pairwise out of order; they are delivered in part order all the same.
    for pair in (0..PARTS).step_by(2) {
        for part in [pair + 1, pair] {
            let body = json!({"to": "reader", "data": format!("w{part} "),
                "stream": {"id": "answer", "part": part, "last": part == PARTS - 1}});
            let outcome = publish_ok(&server, body).await;
            assert!(harness::kept(&outcome), "{outcome}");
        }
    }
    // The reassembled text, and the seq each part was first delivered with.
    let mut text: Vec<String> = Vec::new();
    let mut seq_of_part: HashMap<u64, u64> = HashMap::new();
    let record = |d: &Delivered, text: &mut Vec<String>, seqs: &mut HashMap<u64, u64>| {
        let (id, part, last) = part_of(d);
        assert_eq!(id, "answer");
        assert_eq!(last, part == PARTS - 1);
        let first = *seqs.entry(part).or_insert(d.seq);
        assert_eq!(first, d.seq, "part {part} came again with another seq");
        if part as usize == text.len() {
            text.push(d.value["data"].as_str().unwrap().to_owned());
        }
        part
    };

    // First connection: read 20 parts, acknowledge up to part 11, drop.
    let (mut raw, _) = Raw::connect(&server, "reader", None).await;
    for expect in 0..20 {
        let d = raw.next_message().await;
        assert_eq!(record(&d, &mut text, &mut seq_of_part), expect);
    }
    raw.ack(seq_of_part[&11]).await;
    // A ping answered after the ack: the server has read the ack before the drop.
    assert!(raw.ping().await.iter().all(|v| v["type"] == "message"));
    drop(raw);

    // Second connection, fresh (no resume point): everything unacknowledged comes again,
    // from part 12, with its seq; nothing acknowledged does.
    let (mut raw, connected) = Raw::connect(&server, "reader", None).await;
    assert_eq!(connected["recovered"], false);
    let epoch = connected["epoch"].as_str().unwrap().to_owned();
    for expect in 12..35 {
        let d = raw.next_message().await;
        assert_eq!(
            record(&d, &mut text, &mut seq_of_part),
            expect,
            "resumed at the first unacked part"
        );
    }
    raw.ack(seq_of_part[&34]).await;
    assert!(raw.ping().await.iter().all(|v| v["type"] == "message"));
    drop(raw);

    // Third connection, resuming from a point older than the ack: the ack still counts.
    let resume = Some((epoch.as_str(), seq_of_part[&30]));
    let (mut raw, connected) = Raw::connect(&server, "reader", resume).await;
    assert_eq!(connected["recovered"], true);
    let mut last = 0;
    for expect in 35..PARTS {
        let d = raw.next_message().await;
        assert_eq!(record(&d, &mut text, &mut seq_of_part), expect);
        last = d.seq;
    }
    raw.ack(last).await;
    assert_eq!(
        text.concat(),
        (0..PARTS).map(|p| format!("w{p} ")).collect::<String>()
    );
    assert!(raw.ping().await.is_empty(), "the stream is complete");
    let user = UserId::new("reader").unwrap();
    eventually("the stream completes", || async {
        matches!(
            server.engine().stream_status(&user, "answer").await,
            Some(s) if s.phase == StreamPhase::Completed
        )
    })
    .await;
}

#[tokio::test]
async fn an_aborted_stream_ends_with_a_stream_aborted_delivery_that_is_acknowledged() {
    let server = server(&[]).await;
    let user = UserId::new("listener").unwrap();
    let (mut raw, _) = Raw::connect(&server, "listener", None).await;
    for part in 0..4u64 {
        let body = json!({"to": "listener", "data": part, "stream": {"id": "s1", "part": part}});
        assert_eq!(publish_ok(&server, body).await["outcome"], "delivered");
    }
    let mut last = 0;
    for part in 0..4 {
        let d = raw.next_message().await;
        assert_eq!(part_of(&d).1, part);
        last = d.seq;
    }
    assert!(server
        .engine()
        .abort_stream(&user, "s1", "model \"crashed\"")
        .await
        .unwrap());
    let marker = raw.next().await;
    assert_eq!(marker["type"], "stream_aborted", "{marker}");
    assert_eq!(marker["stream"], "s1");
    assert_eq!(marker["code"], "producer");
    assert_eq!(marker["reason"], "model \"crashed\"");
    let marker_seq = marker["seq"].as_u64().expect("a seq");
    assert!(marker_seq > last, "after the parts already delivered");
    // Later parts of the aborted stream are refused.
    let late = json!({"to": "listener", "data": 4, "stream": {"id": "s1", "part": 4}});
    assert_eq!(
        publish_ok(&server, late).await,
        json!({"outcome": "rejected", "reason": "stream_closed"})
    );
    // Unacknowledged, the marker comes again after a reconnect, with its seq...
    drop(raw);
    let (mut raw, connected) = Raw::connect(&server, "listener", None).await;
    assert_eq!(connected["redelivered"], 5, "{connected}");
    for part in 0..4 {
        assert_eq!(part_of(&raw.next_message().await).1, part);
    }
    let again = raw.next().await;
    assert_eq!(again["type"], "stream_aborted");
    assert_eq!(again["seq"], marker_seq);
    // ...and once acknowledged, never again.
    raw.ack(marker_seq).await;
    assert!(raw.ping().await.is_empty());
    drop(raw);
    let (mut raw, connected) = Raw::connect(&server, "listener", None).await;
    assert_eq!(connected["redelivered"], 0, "{connected}");
    assert_eq!(connected["pending"], 0, "{connected}");
    assert!(raw.ping().await.is_empty());
}

#[tokio::test]
async fn a_stream_whose_ttl_passes_while_away_is_aborted_as_expired() {
    let server = server(&[]).await;
    let first = json!({"to": "late", "ttl_ms": 30, "data": "Once upon",
        "stream": {"id": "story", "part": 0}});
    assert_eq!(publish_ok(&server, first).await["outcome"], "queued");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut raw, _) = Raw::connect(&server, "late", None).await;
    let marker = raw.next().await;
    assert_eq!(marker["type"], "stream_aborted", "{marker}");
    assert_eq!(marker["stream"], "story");
    assert_eq!(marker["code"], "expired");
    raw.ack(marker["seq"].as_u64().expect("a seq")).await;
    assert!(raw.ping().await.is_empty(), "no part of the expired stream");
}

#[tokio::test]
async fn acknowledging_up_to_the_resume_point_again_is_harmless() {
    let server = server(&[]).await;
    for n in 0..3 {
        publish_ok(&server, json!({"to": "re-ack", "data": {"n": n}})).await;
    }
    let (mut raw, connected) = Raw::connect(&server, "re-ack", None).await;
    let epoch = connected["epoch"].as_str().unwrap().to_owned();
    let mut seqs = Vec::new();
    for _ in 0..3 {
        seqs.push(raw.next_message().await.seq);
    }
    drop(raw);
    // The client processed all three and resumes from the last; the resume point settles
    // them. A client that then acknowledges what it processed (as a client that acks on
    // reconnect does) acknowledges nothing new: that must not be an error.
    let (mut raw, connected) = Raw::connect(&server, "re-ack", Some((&epoch, seqs[2]))).await;
    assert_eq!(connected["recovered"], true, "{connected}");
    assert_eq!(connected["redelivered"], 0, "{connected}");
    raw.ack(seqs[2]).await;
    raw.ack(seqs[0]).await;
    let frames = raw.ping().await;
    assert!(
        frames.is_empty(),
        "acks at or below the resume point: {frames:?}"
    );
}

#[tokio::test]
async fn a_resume_point_the_server_cannot_honour_sends_everything_unacknowledged_again() {
    let server = server(&[]).await;
    for n in 0..3 {
        publish_ok(&server, json!({"to": "lost", "data": {"n": n}})).await;
    }
    let (mut raw, connected) = Raw::connect(&server, "lost", None).await;
    let epoch = connected["epoch"].as_str().unwrap().to_owned();
    let first = raw.next_message().await;
    raw.ack(first.seq).await;
    let mut unacked = Vec::new();
    for _ in 0..2 {
        unacked.push(raw.next_message().await.seq);
    }
    assert!(raw.ping().await.is_empty());
    drop(raw);
    let other_epoch = if epoch == "0000000000000001" {
        "0000000000000002"
    } else {
        "0000000000000001"
    };
    let beyond = u64::MAX;
    for (resume_epoch, seq) in [
        (other_epoch, unacked[1]), // another epoch: a mailbox the client never saw
        (epoch.as_str(), beyond),  // a seq never delivered
        ("not hex", unacked[1]),   // a resume point that does not parse
    ] {
        let mut raw = Raw::open(&server).await;
        raw.send(json!({"type": "connect", "token": harness::token("lost"),
            "resume": {"epoch": resume_epoch, "seq": seq}}))
            .await;
        let connected = raw.next().await;
        assert_eq!(connected["type"], "connected", "{connected}");
        assert_eq!(
            connected["recovered"], false,
            "{resume_epoch} {seq}: {connected}"
        );
        assert_eq!(connected["epoch"], epoch.as_str());
        assert_eq!(connected["redelivered"], 2, "{connected}");
        let again: Vec<u64> = [raw.next_message().await.seq, raw.next_message().await.seq].into();
        assert_eq!(again, unacked, "sent again with their seqs");
        drop(raw);
    }
}
