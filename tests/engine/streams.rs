//! Resumable streams: parts delivered in index order whatever order they are published in,
//! resumed after a disconnect without loss and without sending acknowledged parts again, and
//! aborted as a whole (by timeout, TTL, overflow, the memory budget or the producer) with a
//! marker the user receives after the parts already delivered.

use std::collections::BTreeMap;
use std::time::Duration;

use tether::{
    AbortReason, Clock, Delivery, Engine, Message, OverflowPolicy, Priority, RejectReason,
    ResumePoint, SendOutcome, Session, StreamPart, StreamPhase, UserId, UserLimits,
};

use crate::common::{advance, assert_nothing_more, recv, text, user};

fn part(stream: &str, index: u32, last: bool, payload: impl Into<bytes::Bytes>) -> Message {
    Message::new(payload).with_stream_part(StreamPart::new(stream, index, last))
}

/// `(stream, index)` of a delivered part; panics on an abort marker.
fn which(d: &Delivery) -> (String, u32) {
    let p = d.stream_part().expect("a stream part");
    assert!(p.abort_reason().is_none(), "unexpected abort marker");
    (p.stream().to_owned(), p.index())
}

/// Receives `n` deliveries.
async fn recv_n(s: &mut Session, n: usize) -> Vec<Delivery> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(recv(s).await);
    }
    v
}

fn big_limits() -> UserLimits {
    UserLimits {
        max_messages: 10_000,
        max_bytes: 16 << 20,
        overflow: OverflowPolicy::Reject,
    }
}

#[tokio::test]
async fn a_text_stream_interrupted_mid_way_resumes_without_loss_or_resending_acked_parts() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("reader");
    let words: Vec<String> = (0..20).map(|i| format!("word{i} ")).collect();
    let mut s = engine.connect(&u, None).await.unwrap();
    for (i, w) in words.iter().enumerate() {
        let last = i == words.len() - 1;
        let outcome = engine
            .send_confirmed(&u, part("essay", i as u32, last, w.clone()))
            .await
            .unwrap();
        assert_eq!(outcome, SendOutcome::Delivered);
    }
    // The reader shows 10 words, has acknowledged 7 of them, and the connection dies.
    let first = recv_n(&mut s, 10).await;
    let mut shown: Vec<String> = first.iter().take(7).map(text).collect();
    let acked_seq = first[6].seq();
    s.ack(acked_seq).unwrap();
    let epoch = s.info().epoch;
    engine.barrier().await;
    drop(s);

    let resume = ResumePoint {
        epoch,
        last_seq: acked_seq,
    };
    let mut s = engine.connect(&u, Some(resume)).await.unwrap();
    assert!(s.info().recovered);
    assert_eq!(s.info().redelivered, 13, "everything after the acked part");
    let rest = recv_n(&mut s, 13).await;
    // Delivery continues from the first unacknowledged part, with the original seqs.
    assert_eq!(which(&rest[0]), ("essay".into(), 7));
    assert_eq!(rest[0].seq(), first[7].seq());
    for (k, d) in rest.iter().enumerate() {
        assert_eq!(which(d).1, 7 + k as u32, "in index order");
    }
    shown.extend(rest.iter().map(text));
    assert_eq!(shown, words, "nothing lost, nothing twice");
    s.ack(rest.last().unwrap().seq()).unwrap();
    assert_nothing_more(&engine, &mut s).await;

    let status = engine.stream_status(&u, "essay").await.unwrap();
    assert_eq!(status.phase, StreamPhase::Completed);
    assert_eq!((status.delivered, status.acknowledged), (20, 20));
    let c = engine.metrics().counters;
    assert_eq!((c.streams_started, c.streams_completed), (1, 1));
    assert_eq!(c.streams_resumed, 1);
    assert_eq!(engine.metrics().gauges.streams_open, 0);
    assert_eq!(
        engine.memory_used(),
        0,
        "the stream's state and parts are freed"
    );
}

#[tokio::test]
async fn a_json_document_in_50_pieces_parses_after_a_resume_in_the_middle() {
    let engine = Engine::builder().shards(1).window(16).build().unwrap();
    let u = user("json");
    let doc = serde_json::json!({
        "items": (0..200).map(|i| serde_json::json!({"id": i, "name": format!("item {i}"), "tags": ["a", "b"]})).collect::<Vec<_>>(),
        "total": 200,
    });
    let text_doc = serde_json::to_string(&doc).unwrap();
    let bytes = text_doc.as_bytes();
    let piece = bytes.len().div_ceil(50);
    let pieces: Vec<&[u8]> = bytes.chunks(piece).collect();
    assert_eq!(pieces.len(), 50);
    for (i, p) in pieces.iter().enumerate() {
        engine
            .send(&u, part("doc", i as u32, i == 49, p.to_vec()))
            .await
            .unwrap();
    }
    let mut s = engine.connect(&u, None).await.unwrap();
    let mut received = Vec::new();
    for k in 0..25 {
        let d = recv(&mut s).await;
        received.extend_from_slice(d.payload());
        if k < 20 {
            s.ack(d.seq()).unwrap();
        }
    }
    // The connection breaks before the last 5 are acknowledged; the client resumes from
    // what it received.
    let resume = s.resume_point();
    drop(s);
    let mut s = engine.connect(&u, Some(resume)).await.unwrap();
    for _ in 0..25 {
        let d = recv(&mut s).await;
        assert!(which(&d).1 >= 25, "nothing received before comes again");
        received.extend_from_slice(d.payload());
        s.ack(d.seq()).unwrap();
    }
    assert_nothing_more(&engine, &mut s).await;
    let parsed: serde_json::Value = serde_json::from_slice(&received).unwrap();
    assert_eq!(parsed, doc);
    let status = engine.stream_status(&u, "doc").await.unwrap();
    assert_eq!(status.phase, StreamPhase::Completed);
}

#[tokio::test]
async fn parts_published_out_of_order_by_four_threads_are_delivered_in_order() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("ooo");
    const N: u32 = 200;
    const LATE: u32 = 13;
    let mut s = engine.connect(&u, None).await.unwrap();
    std::thread::scope(|scope| {
        for t in 0..4u32 {
            let (engine, u) = (&engine, &u);
            scope.spawn(move || {
                // Each thread publishes its share backwards, so parts arrive far out of order.
                for i in (0..N).rev().filter(|i| i % 4 == t && *i != LATE) {
                    let p = part("multi", i, i == N - 1, format!("p{i}"));
                    engine.send_blocking(u, p).unwrap();
                }
            });
        }
    });
    engine.barrier().await;
    let status = engine.stream_status(&u, "multi").await.unwrap();
    assert_eq!(status.missing, [LATE], "names the missing part");
    assert_eq!(status.arrived, LATE);
    assert_eq!(status.held, (LATE + 1..N).collect::<Vec<_>>());
    assert_eq!(status.last, Some(N - 1));
    // Everything before the gap was delivered, in order; nothing after it.
    let before = recv_n(&mut s, LATE as usize).await;
    for (k, d) in before.iter().enumerate() {
        assert_eq!(which(d).1, k as u32);
    }
    assert_nothing_more(&engine, &mut s).await;

    engine
        .send(&u, part("multi", LATE, false, format!("p{LATE}")))
        .await
        .unwrap();
    let after = recv_n(&mut s, (N - LATE) as usize).await;
    for (k, d) in after.iter().enumerate() {
        assert_eq!(which(d).1, LATE + k as u32);
        assert_eq!(text(d), format!("p{}", LATE + k as u32));
        assert!(d.seq() > before.last().unwrap().seq());
    }
    s.ack(after.last().unwrap().seq()).unwrap();
    engine.barrier().await;
    let status = engine.stream_status(&u, "multi").await.unwrap();
    assert_eq!(status.phase, StreamPhase::Completed);
}

#[tokio::test]
async fn several_streams_interrupted_together_resume_independently() {
    let engine = Engine::builder().shards(1).window(64).build().unwrap();
    let u = user("many");
    let mut s = engine.connect(&u, None).await.unwrap();
    // Three streams interleaved, plus ordinary messages; stream c misses its part 2.
    for i in 0..10u32 {
        for name in ["a", "b", "c"] {
            if name == "c" && i == 2 {
                continue;
            }
            engine
                .send(&u, part(name, i, i == 9, format!("{name}{i}")))
                .await
                .unwrap();
        }
        engine
            .send(&u, Message::new(format!("plain{i}")))
            .await
            .unwrap();
    }
    engine.barrier().await;
    // c waits for its part 2; a, b and the plain messages do not wait for c.
    let got = recv_n(&mut s, 10 + 10 + 2 + 10).await;
    let mut per: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for d in &got {
        match d.stream_part() {
            Some(p) => per.entry(p.stream().into()).or_default().push(p.index()),
            None => per.entry("plain".into()).or_default().push(0),
        }
    }
    assert_eq!(per["a"], (0..10).collect::<Vec<_>>());
    assert_eq!(per["b"], (0..10).collect::<Vec<_>>());
    assert_eq!(per["c"], [0, 1]);
    assert_eq!(per["plain"].len(), 10);
    assert_nothing_more(&engine, &mut s).await;

    // The reader acknowledged only up to a's part 3 before the connection died.
    let a3 = got.iter().find(|d| which_opt(d) == Some(("a", 3))).unwrap();
    s.ack(a3.seq()).unwrap();
    let resume = ResumePoint {
        epoch: s.info().epoch,
        last_seq: a3.seq(),
    };
    engine.barrier().await;
    drop(s);
    // Part 2 of c arrives while the user is away.
    engine.send(&u, part("c", 2, false, "c2")).await.unwrap();

    let mut s = engine.connect(&u, Some(resume)).await.unwrap();
    let unacked = got.iter().filter(|d| d.seq() > a3.seq()).count();
    let again = recv_n(&mut s, unacked + 8).await;
    let mut next: BTreeMap<&str, u32> = BTreeMap::new();
    for d in &got {
        if d.seq() <= a3.seq() {
            if let Some((name, i)) = which_opt(d) {
                next.insert(name, i + 1);
            }
        }
    }
    for d in &again {
        if let Some((name, i)) = which_opt(d) {
            let want = next.entry(name).or_insert(0);
            assert_eq!(
                i, *want,
                "stream {name} continues from its first unacked part"
            );
            *want += 1;
        }
    }
    assert_eq!(next["a"], 10);
    assert_eq!(next["b"], 10);
    assert_eq!(next["c"], 10);
    s.ack(again.last().unwrap().seq()).unwrap();
    assert_nothing_more(&engine, &mut s).await;
    for name in ["a", "b", "c"] {
        let status = engine.stream_status(&u, name).await.unwrap();
        assert_eq!(status.phase, StreamPhase::Completed, "{name}");
    }
    assert_eq!(engine.metrics().counters.streams_resumed, 3);
}

fn which_opt(d: &Delivery) -> Option<(&str, u32)> {
    d.stream_part().map(|p| (p.stream(), p.index()))
}

fn manual_engine(clock: &Clock) -> Engine {
    Engine::builder()
        .shards(1)
        .clock(clock.clone())
        .stream_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_stream_whose_missing_part_never_comes_is_aborted_by_timeout() {
    let clock = Clock::manual();
    let engine = manual_engine(&clock);
    let u = user("gap");
    let mut s = engine.connect(&u, None).await.unwrap();
    for i in [0, 1, 3] {
        engine
            .send(&u, part("answer", i, i == 3, vec![b'x'; 100]))
            .await
            .unwrap();
    }
    let got = recv_n(&mut s, 2).await;
    s.ack(got[1].seq()).unwrap();
    engine.barrier().await;
    assert_eq!(engine.memory_used(), 100, "part 3 is held back");
    // The timeout counts from the last new part: not yet.
    advance(&engine, &clock, 9_999).await;
    assert_nothing_more(&engine, &mut s).await;
    advance(&engine, &clock, 1).await;
    let marker = recv(&mut s).await;
    let p = marker.stream_part().unwrap();
    assert_eq!(p.stream(), "answer");
    assert_eq!(p.abort_reason(), Some(&AbortReason::Timeout));
    assert_eq!(p.index(), 2, "after the two parts delivered");
    assert!(marker.payload().is_empty());
    assert_eq!(engine.memory_used(), 0, "the held part is freed");
    let status = engine.stream_status(&u, "answer").await.unwrap();
    assert_eq!(status.phase, StreamPhase::Aborted(AbortReason::Timeout));
    assert_eq!(status.delivered, 2);
    // The late part of an aborted stream is refused, not the start of a new stream.
    let late = engine
        .send_confirmed(&u, part("answer", 2, false, "late"))
        .await
        .unwrap();
    assert_eq!(late, SendOutcome::Rejected(RejectReason::StreamClosed));
    engine.barrier().await;
    let c = engine.metrics().counters;
    assert_eq!((c.streams_started, c.streams_aborted_timeout), (1, 1));
    assert_eq!(engine.metrics().gauges.streams_open, 0);
    s.ack(marker.seq()).unwrap();
    assert_nothing_more(&engine, &mut s).await;
    // How it ended is remembered for the stream timeout, then forgotten.
    advance(&engine, &clock, 9_999).await;
    assert!(engine.stream_status(&u, "answer").await.is_some());
    advance(&engine, &clock, 1).await;
    assert_eq!(engine.stream_status(&u, "answer").await, None);
}

#[tokio::test]
async fn an_explicit_abort_reaches_the_user_after_the_parts_already_delivered() {
    let engine = Engine::builder().shards(1).window(2).build().unwrap();
    let u = user("abort");
    let mut s = engine.connect(&u, None).await.unwrap();
    for i in 0..6 {
        engine
            .send(&u, part("gen", i, false, format!("g{i}")))
            .await
            .unwrap();
    }
    engine
        .send(&u, Message::new("unrelated").with_priority(Priority::Low))
        .await
        .unwrap();
    assert!(engine
        .abort_stream(&u, "gen", "upstream failed")
        .await
        .unwrap());
    assert!(
        !engine.abort_stream(&u, "gen", "again").await.unwrap(),
        "already aborted"
    );
    let got = recv_n(&mut s, 2).await;
    assert_eq!([which(&got[0]).1, which(&got[1]).1], [0, 1]);
    s.ack(got[1].seq()).unwrap();
    let next = recv_n(&mut s, 2).await;
    let p = next[0].stream_part().unwrap();
    assert_eq!(
        p.abort_reason(),
        Some(&AbortReason::Producer("upstream failed".into()))
    );
    assert_eq!(p.index(), 2);
    assert_eq!(
        text(&next[1]),
        "unrelated",
        "queued parts 2..5 were dropped"
    );
    s.ack(next[1].seq()).unwrap();
    assert_nothing_more(&engine, &mut s).await;
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!((stats.in_flight, stats.queued()), (0, 0));
    assert_eq!(stats.missed, 0, "a producer's abort is not a loss");
    assert_eq!(engine.metrics().counters.streams_aborted_producer, 1);
    // Aborting a stream before any of its parts arrived refuses the parts that follow.
    assert!(!engine.abort_stream(&u, "later", "cancelled").await.unwrap());
    let outcome = engine
        .send_confirmed(&u, part("later", 0, true, "x"))
        .await
        .unwrap();
    assert_eq!(outcome, SendOutcome::Rejected(RejectReason::StreamClosed));
}

#[tokio::test]
async fn a_slow_reader_keeps_memory_bounded_and_the_stream_completes() {
    const PART: usize = 4096;
    const PARTS: u32 = 256; // 1 MiB in all
    const CAP: usize = 64 * 1024;
    const WINDOW: usize = 4;
    let engine = Engine::builder()
        .shards(1)
        .window(WINDOW)
        .user_limits(UserLimits {
            max_messages: 100,
            max_bytes: CAP,
            overflow: OverflowPolicy::Reject,
        })
        .build()
        .unwrap();
    let u = user("slow");
    let mut s = engine.connect(&u, None).await.unwrap();
    let producer = {
        let (engine, u) = (engine.clone(), u.clone());
        tokio::spawn(async move {
            for i in 0..PARTS {
                // The producer paces itself on what the reader acknowledged, so the backlog
                // stays under the user's cap instead of overflowing it.
                loop {
                    let st = engine.stream_status(&u, "big").await;
                    let outstanding = st.map_or(0, |st| i - st.acknowledged);
                    if (outstanding as usize) * PART < CAP / 2 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let outcome = engine
                    .send_confirmed(&u, part("big", i, i == PARTS - 1, vec![i as u8; PART]))
                    .await
                    .unwrap();
                assert!(
                    matches!(
                        outcome,
                        SendOutcome::Delivered | SendOutcome::Queued { evicted: 0 }
                    ),
                    "{outcome:?}"
                );
            }
        })
    };
    let mut peak = 0;
    for i in 0..PARTS {
        // A degraded network: the reader takes its time over every part.
        tokio::time::sleep(Duration::from_micros(500)).await;
        let d = recv(&mut s).await;
        assert_eq!(which(&d).1, i);
        assert!(d.payload().iter().all(|&b| b == i as u8));
        peak = peak.max(engine.memory_used());
        s.ack(d.seq()).unwrap();
    }
    producer.await.unwrap();
    engine.barrier().await;
    assert!(
        peak <= (CAP + WINDOW * PART) as u64,
        "held {peak} bytes at most, bounded by the cap and the window"
    );
    let status = engine.stream_status(&u, "big").await.unwrap();
    assert_eq!(status.phase, StreamPhase::Completed);
    assert_eq!(engine.metrics().counters.evicted, 0);
}

#[tokio::test]
async fn a_4_mib_response_resumed_at_half_resends_no_more_than_the_unacknowledged_window() {
    const PART: usize = 64 * 1024;
    const PARTS: u32 = 64; // 4 MiB
    const WINDOW: usize = 8;
    let engine = Engine::builder()
        .shards(1)
        .window(WINDOW)
        .user_limits(big_limits())
        .build()
        .unwrap();
    let u = user("large");
    let content: Vec<Vec<u8>> = (0..PARTS)
        .map(|i| (0..PART).map(|j| (i as usize * 31 + j) as u8).collect())
        .collect();
    let mut s = engine.connect(&u, None).await.unwrap();
    for (i, c) in content.iter().enumerate() {
        engine
            .send(&u, part("blob", i as u32, i as u32 == PARTS - 1, c.clone()))
            .await
            .unwrap();
    }
    // The client acknowledges every 5th part (once it is written to disk), and the
    // connection dies after 32 parts, half of the response.
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let (mut acked, mut acked_parts) = (0, 0);
    for k in 0..32 {
        let d = recv(&mut s).await;
        kept.push(d.payload().to_vec());
        if k % 5 == 4 {
            s.ack(d.seq()).unwrap();
            (acked, acked_parts) = (d.seq(), k + 1);
        }
    }
    // The client keeps only what it acknowledged.
    kept.truncate(acked_parts);
    engine.barrier().await;
    let at_break = engine.mailbox_stats(&u).await.unwrap();
    let unacked_window_bytes = at_break.in_flight_bytes;
    assert!(at_break.in_flight <= WINDOW);
    let resume = ResumePoint {
        epoch: s.info().epoch,
        last_seq: acked,
    };
    drop(s);

    let mut s = engine.connect(&u, Some(resume)).await.unwrap();
    let mut resent_bytes = 0;
    let mut fresh_from = None;
    for i in acked_parts..PARTS as usize {
        let i = i as u32;
        let d = recv(&mut s).await;
        assert_eq!(which(&d).1, i);
        if d.seq() < at_break.next_seq {
            resent_bytes += d.payload().len();
        } else {
            fresh_from.get_or_insert(i);
        }
        kept.push(d.payload().to_vec());
        s.ack(d.seq()).unwrap();
    }
    assert_nothing_more(&engine, &mut s).await;
    assert_eq!(kept, content, "the 4 MiB arrived whole, in order");
    assert!(
        resent_bytes <= unacked_window_bytes,
        "re-sent {resent_bytes} bytes, the unacknowledged window held {unacked_window_bytes}"
    );
    assert!(resent_bytes <= WINDOW * PART);
    assert_eq!(
        resent_bytes as u64,
        engine.metrics().counters.redelivered * PART as u64,
        "what came again is exactly what the engine counted as redelivered"
    );
    assert!(fresh_from.is_some());
}

#[tokio::test]
async fn overflow_aborts_a_stream_as_a_whole_and_says_so() {
    let engine = Engine::builder().shards(1).build().unwrap();
    // Reject: a part that does not fit ends its stream; the parts already queued go too.
    let u = user("full");
    let caps = UserLimits {
        max_messages: 3,
        max_bytes: 1 << 20,
        overflow: OverflowPolicy::Reject,
    };
    engine.set_user_limits(&u, Some(caps)).await.unwrap();
    for i in 0..3 {
        let o = engine
            .send_confirmed(&u, part("s", i, false, "x"))
            .await
            .unwrap();
        assert_eq!(o, SendOutcome::Queued { evicted: 0 });
    }
    let o = engine
        .send_confirmed(&u, part("s", 3, true, "x"))
        .await
        .unwrap();
    assert_eq!(o, SendOutcome::Rejected(RejectReason::MailboxFull));
    let mut s = engine.connect(&u, None).await.unwrap();
    assert_eq!(
        s.info().pending,
        0,
        "no part of the stream is left to deliver"
    );
    let marker = recv(&mut s).await;
    let p = marker.stream_part().unwrap();
    assert_eq!(
        (p.abort_reason(), p.index()),
        (Some(&AbortReason::Overflow), 0)
    );
    assert_eq!(s.info().missed.rejected, 1);
    assert_eq!(
        s.info().missed.evicted,
        3,
        "the queued parts, counted as lost"
    );
    assert_nothing_more(&engine, &mut s).await;

    // DropOldest: evicting for a newer message takes the whole stream, never a middle part.
    let v = user("oldest");
    let caps = UserLimits {
        max_messages: 4,
        max_bytes: 1 << 20,
        overflow: OverflowPolicy::DropOldest,
    };
    engine.set_user_limits(&v, Some(caps)).await.unwrap();
    for i in 0..3 {
        engine
            .send(&v, part("low", i, false, "l").with_priority(Priority::Low))
            .await
            .unwrap();
    }
    engine.send(&v, Message::new("n1")).await.unwrap();
    let o = engine.send_confirmed(&v, Message::new("n2")).await.unwrap();
    assert_eq!(o, SendOutcome::Queued { evicted: 3 });
    let status = engine.stream_status(&v, "low").await.unwrap();
    assert_eq!(status.phase, StreamPhase::Aborted(AbortReason::Overflow));
    let mut s = engine.connect(&v, None).await.unwrap();
    let got = recv_n(&mut s, 3).await;
    assert_eq!(
        got[0].stream_part().unwrap().abort_reason(),
        Some(&AbortReason::Overflow),
        "the marker comes first: nothing of its stream can follow it"
    );
    assert_eq!([text(&got[1]), text(&got[2])], ["n1", "n2"]);
    engine.barrier().await;
    assert_eq!(engine.metrics().counters.streams_aborted_overflow, 2);
}

#[tokio::test]
async fn a_stream_that_fills_the_mailbox_under_drop_oldest_is_aborted_not_truncated() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let u = user("self");
    let caps = UserLimits {
        max_messages: 2,
        max_bytes: 1 << 20,
        overflow: OverflowPolicy::DropOldest,
    };
    engine.set_user_limits(&u, Some(caps)).await.unwrap();
    engine.send(&u, part("s", 0, false, "0")).await.unwrap();
    engine.send(&u, part("s", 1, false, "1")).await.unwrap();
    let o = engine
        .send_confirmed(&u, part("s", 2, true, "2"))
        .await
        .unwrap();
    assert_eq!(o, SendOutcome::Rejected(RejectReason::Dropped));
    let mut s = engine.connect(&u, None).await.unwrap();
    let marker = recv(&mut s).await;
    assert_eq!(
        marker.stream_part().unwrap().abort_reason(),
        Some(&AbortReason::Overflow)
    );
    assert_nothing_more(&engine, &mut s).await;
}

#[tokio::test]
async fn the_memory_budget_aborts_a_stream_as_a_whole() {
    let engine = Engine::builder()
        .shards(1)
        .memory_budget_bytes(1000)
        .user_limits(big_limits())
        .build()
        .unwrap();
    let u = user("budget");
    for i in 0..5 {
        let o = engine
            .send_confirmed(&u, part("s", i, false, vec![0u8; 100]))
            .await
            .unwrap();
        assert_eq!(o, SendOutcome::Queued { evicted: 0 });
    }
    // Normal is refused above 80 % of the budget: the 9th part would pass it.
    let mut refused = None;
    for i in 5..10 {
        let o = engine
            .send_confirmed(&u, part("s", i, false, vec![0u8; 100]))
            .await
            .unwrap();
        if o == SendOutcome::Rejected(RejectReason::MemoryBudget) {
            refused = Some(i);
            break;
        }
    }
    assert!(refused.is_some());
    engine.barrier().await;
    assert_eq!(engine.memory_used(), 0, "the stream's parts are all freed");
    let status = engine.stream_status(&u, "s").await.unwrap();
    assert_eq!(
        status.phase,
        StreamPhase::Aborted(AbortReason::MemoryBudget)
    );
    assert_eq!(engine.metrics().counters.streams_aborted_memory_budget, 1);
}

#[tokio::test]
async fn a_stream_takes_its_priority_and_ttl_from_part_0_and_expires_as_a_whole() {
    let clock = Clock::manual();
    let engine = manual_engine(&clock);
    let u = user("ttl");
    // Part 0: Critical with a 5 s TTL; the others say Low and no TTL, and are ignored.
    engine
        .send(
            &u,
            part("t", 0, false, "0")
                .with_priority(Priority::Critical)
                .with_ttl(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    for i in 1..3 {
        engine
            .send(&u, part("t", i, i == 2, "x").with_priority(Priority::Low))
            .await
            .unwrap();
    }
    engine.barrier().await;
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(stats.queued_per_band, [3, 0, 0, 0]);
    let status = engine.stream_status(&u, "t").await.unwrap();
    assert_eq!(status.priority, Some(Priority::Critical));
    advance(&engine, &clock, 5_000).await;
    let status = engine.stream_status(&u, "t").await.unwrap();
    assert_eq!(status.phase, StreamPhase::Aborted(AbortReason::Expired));
    let mut s = engine.connect(&u, None).await.unwrap();
    assert_eq!(s.info().missed.expired, 3);
    let marker = recv(&mut s).await;
    assert_eq!(marker.priority(), Priority::Critical);
    assert_eq!(
        marker.stream_part().unwrap().abort_reason(),
        Some(&AbortReason::Expired)
    );
    assert_nothing_more(&engine, &mut s).await;
    assert_eq!(engine.metrics().counters.streams_aborted_expired, 1);
}

#[tokio::test]
async fn contradictory_parts_are_refused_and_the_stream_goes_on() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let u = user("strict");
    let send = |m| engine.send_confirmed(&u, m);
    assert_eq!(
        send(part("s", 0, false, "a")).await.unwrap(),
        SendOutcome::Queued { evicted: 0 }
    );
    assert_eq!(
        send(part("s", 0, false, "a")).await.unwrap(),
        SendOutcome::Duplicate,
        "a part sent twice"
    );
    assert_eq!(
        send(part("s", 3, false, "d")).await.unwrap(),
        SendOutcome::Queued { evicted: 0 }
    );
    assert_eq!(
        send(part("s", 3, false, "d")).await.unwrap(),
        SendOutcome::Duplicate,
        "a held part sent twice"
    );
    assert_eq!(
        send(part("s", 2, true, "c")).await.unwrap(),
        SendOutcome::Rejected(RejectReason::StreamPartInvalid),
        "marked last below a part that arrived"
    );
    assert_eq!(
        send(part("s", 4, true, "e")).await.unwrap(),
        SendOutcome::Queued { evicted: 0 }
    );
    assert_eq!(
        send(part("s", 5, false, "f")).await.unwrap(),
        SendOutcome::Rejected(RejectReason::StreamPartInvalid),
        "past the last part"
    );
    let status = engine.stream_status(&u, "s").await.unwrap();
    assert_eq!(
        (status.arrived, status.held.clone(), status.missing.clone()),
        (1, vec![3, 4], vec![1, 2])
    );
    for i in [1, 2] {
        send(part("s", i, false, "m")).await.unwrap();
    }
    let status = engine.stream_status(&u, "s").await.unwrap();
    assert_eq!((status.arrived, status.missing.len()), (5, 0));
    // Shards publish their counters after a pass; a barrier waits for that.
    engine.barrier().await;
    assert_eq!(engine.metrics().counters.duplicates, 2);
}

#[tokio::test]
async fn stream_limits_hold_at_their_edges() {
    let engine = Engine::builder()
        .shards(1)
        .max_streams_per_user(3)
        .stream_reorder_window(8)
        .build()
        .unwrap();
    let u = user("edges");
    for name in ["a", "b", "c"] {
        let o = engine
            .send_confirmed(&u, part(name, 0, false, "x"))
            .await
            .unwrap();
        assert_eq!(o, SendOutcome::Queued { evicted: 0 });
    }
    let o = engine
        .send_confirmed(&u, part("d", 0, false, "x"))
        .await
        .unwrap();
    assert_eq!(o, SendOutcome::Rejected(RejectReason::TooManyStreams));
    // Stream a expects part 1: parts up to 1 + 7 may wait, part 1 + 8 may not.
    let o = engine
        .send_confirmed(&u, part("a", 8, false, "x"))
        .await
        .unwrap();
    assert_eq!(o, SendOutcome::Queued { evicted: 0 });
    let o = engine
        .send_confirmed(&u, part("a", 9, false, "x"))
        .await
        .unwrap();
    assert_eq!(o, SendOutcome::Rejected(RejectReason::StreamWindowFull));
    // Settings are checked at build.
    assert!(Engine::builder().max_streams_per_user(0).build().is_err());
    assert!(Engine::builder().stream_reorder_window(0).build().is_err());
    assert!(Engine::builder()
        .stream_reorder_window(1 << 16)
        .build()
        .is_ok());
    assert!(Engine::builder()
        .stream_reorder_window((1 << 16) + 1)
        .build()
        .is_err());
    assert!(Engine::builder()
        .stream_timeout(Duration::ZERO)
        .build()
        .is_err());
    // Stream ids are checked at the call.
    let err = engine.try_send(&u, part("", 0, true, "x")).unwrap_err();
    assert!(matches!(
        err,
        tether::TrySendError::Invalid {
            error: tether::InvalidInput::EmptyStreamId,
            ..
        }
    ));
    let long = "s".repeat(257);
    assert!(engine.try_send(&u, part(&long, 0, true, "x")).is_err());
    assert!(engine.abort_stream(&u, &long, "x").await.is_err());
}

#[tokio::test]
async fn held_parts_count_against_the_users_caps() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let u: UserId = user("heldcap");
    let caps = UserLimits {
        max_messages: 2,
        max_bytes: 1 << 20,
        overflow: OverflowPolicy::Reject,
    };
    engine.set_user_limits(&u, Some(caps)).await.unwrap();
    for i in [2, 3] {
        let o = engine
            .send_confirmed(&u, part("h", i, false, "x"))
            .await
            .unwrap();
        assert_eq!(o, SendOutcome::Queued { evicted: 0 });
    }
    let o = engine
        .send_confirmed(&u, Message::new("plain"))
        .await
        .unwrap();
    assert_eq!(o, SendOutcome::Rejected(RejectReason::MailboxFull));
}

#[tokio::test]
async fn acks_of_an_old_stream_do_not_reach_a_new_stream_with_the_same_id() {
    let clock = Clock::manual();
    let engine = manual_engine(&clock);
    let u = user("reuse");
    let mut s = engine.connect(&u, None).await.unwrap();
    // The old stream: three parts delivered, none acknowledged, then aborted.
    for i in 0..3 {
        engine
            .send(&u, part("r", i, false, format!("old{i}")))
            .await
            .unwrap();
    }
    let old = recv_n(&mut s, 3).await;
    assert!(engine.abort_stream(&u, "r", "retry").await.unwrap());
    let marker = recv(&mut s).await;
    assert!(marker.stream_part().unwrap().abort_reason().is_some());
    // Its record is forgotten after the stream timeout; the id is free again.
    advance(&engine, &clock, 10_000).await;
    assert_eq!(engine.stream_status(&u, "r").await, None);
    // The new stream: part 0, and its last part 2 held back waiting for part 1.
    for i in [0, 2] {
        let o = engine
            .send_confirmed(&u, part("r", i, i == 2, format!("new{i}")))
            .await
            .unwrap();
        assert_ne!(o, SendOutcome::Rejected(RejectReason::StreamClosed));
    }
    let new0 = recv(&mut s).await;
    assert_eq!(text(&new0), "new0");
    // The old parts are acknowledged now: the last has index 2, the new stream's last part.
    s.ack(old[2].seq()).unwrap();
    engine.barrier().await;
    let status = engine.stream_status(&u, "r").await.unwrap();
    assert_eq!(status.phase, StreamPhase::Open, "untouched by the old acks");
    assert_eq!(
        (status.arrived, status.held, status.acknowledged),
        (1, vec![2], 0)
    );
    // The new stream goes on and completes on its own acks.
    engine.send(&u, part("r", 1, false, "new1")).await.unwrap();
    let rest = recv_n(&mut s, 2).await;
    assert_eq!([text(&rest[0]), text(&rest[1])], ["new1", "new2"]);
    s.ack(rest[1].seq()).unwrap();
    engine.barrier().await;
    let status = engine.stream_status(&u, "r").await.unwrap();
    assert_eq!(status.phase, StreamPhase::Completed);
    assert_eq!(status.acknowledged, 3);
    let c = engine.metrics().counters;
    assert_eq!(
        (
            c.streams_started,
            c.streams_completed,
            c.streams_aborted_producer
        ),
        (2, 1, 1)
    );
    assert_eq!(engine.metrics().gauges.streams_open, 0);
}

/// One shard, a 1000-byte budget (Low refused above 600, Normal above 800, High above 950)
/// and caps that never bind.
fn budget_engine() -> Engine {
    Engine::builder()
        .shards(1)
        .memory_budget_bytes(1000)
        .user_limits(big_limits())
        .build()
        .unwrap()
}

#[tokio::test]
async fn under_memory_pressure_a_duplicate_or_late_part_ends_no_stream() {
    let engine = budget_engine();
    let u = user("pressed");
    let mut s = engine.connect(&u, None).await.unwrap();
    // Stream c completes.
    for i in 0..2 {
        engine.send(&u, part("c", i, i == 1, "c")).await.unwrap();
    }
    let got = recv_n(&mut s, 2).await;
    s.ack(got[1].seq()).unwrap();
    engine.barrier().await;
    assert_eq!(
        engine.stream_status(&u, "c").await.unwrap().phase,
        StreamPhase::Completed
    );
    // Stream s holds 798 of the 800 bytes a Normal message may take.
    for i in 0..8 {
        let o = engine
            .send_confirmed(
                &u,
                part("s", i, false, vec![0u8; if i == 0 { 98 } else { 100 }]),
            )
            .await
            .unwrap();
        assert_eq!(o, SendOutcome::Delivered);
    }
    // A part sent twice is a duplicate, not a reason to end the stream.
    let o = engine
        .send_confirmed(&u, part("s", 3, false, vec![0u8; 100]))
        .await
        .unwrap();
    assert_eq!(o, SendOutcome::Duplicate);
    let status = engine.stream_status(&u, "s").await.unwrap();
    assert_eq!(status.phase, StreamPhase::Open);
    // A late part of the completed stream is refused as such, and the stream stays completed.
    let o = engine
        .send_confirmed(&u, part("c", 1, true, vec![0u8; 100]))
        .await
        .unwrap();
    assert_eq!(o, SendOutcome::Rejected(RejectReason::StreamClosed));
    assert_eq!(
        engine.stream_status(&u, "c").await.unwrap().phase,
        StreamPhase::Completed
    );
    // A new part that would pass the budget does end its stream, as a unit.
    let o = engine
        .send_confirmed(&u, part("s", 8, false, vec![0u8; 100]))
        .await
        .unwrap();
    assert_eq!(o, SendOutcome::Rejected(RejectReason::MemoryBudget));
    assert_eq!(
        engine.stream_status(&u, "s").await.unwrap().phase,
        StreamPhase::Aborted(AbortReason::MemoryBudget)
    );
    engine.barrier().await;
    assert_eq!(engine.metrics().counters.streams_aborted_memory_budget, 1);
}

#[tokio::test]
async fn the_memory_budget_judges_a_part_by_its_streams_priority() {
    let engine = budget_engine();
    let u = user("urgent");
    // A Critical stream: part 0 says so; the later parts say Low, which is ignored.
    let first = part("k", 0, false, vec![0u8; 100]).with_priority(Priority::Critical);
    engine.send_confirmed(&u, first).await.unwrap();
    for i in 1..9 {
        let o = engine
            .send_confirmed(
                &u,
                part("k", i, i == 8, vec![0u8; 100]).with_priority(Priority::Low),
            )
            .await
            .unwrap();
        assert_eq!(
            o,
            SendOutcome::Queued { evicted: 0 },
            "part {i}: past the Low threshold, under the Critical one"
        );
    }
    let status = engine.stream_status(&u, "k").await.unwrap();
    assert_eq!((status.phase, status.arrived), (StreamPhase::Open, 9));
    // An ordinary Low message is still refused at this level.
    let o = engine
        .send_confirmed(&u, Message::new("low").with_priority(Priority::Low))
        .await
        .unwrap();
    assert_eq!(o, SendOutcome::Rejected(RejectReason::MemoryBudget));
    let mut s = engine.connect(&u, None).await.unwrap();
    let got = recv_n(&mut s, 9).await;
    assert!(got.iter().all(|d| d.priority() == Priority::Critical));
    assert_eq!(engine.metrics().counters.streams_aborted_memory_budget, 0);
}

#[tokio::test]
async fn drop_oldest_evicts_nothing_when_it_cannot_make_room_for_a_stream() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let u = user("wasted");
    let caps = UserLimits {
        max_messages: 100,
        max_bytes: 100,
        overflow: OverflowPolicy::DropOldest,
    };
    engine.set_user_limits(&u, Some(caps)).await.unwrap();
    // A Low message, then two 40-byte parts of a Normal stream: 90 of 100 bytes.
    engine
        .send(
            &u,
            Message::new(vec![b'x'; 10]).with_priority(Priority::Low),
        )
        .await
        .unwrap();
    for i in 0..2 {
        engine
            .send(&u, part("s", i, false, vec![b's'; 40]))
            .await
            .unwrap();
    }
    // Part 2 needs 40 more: evicting the Low message frees 10, not enough, and the next
    // oldest candidate is the stream's own part 0. The stream ends; the Low message stays.
    let o = engine
        .send_confirmed(&u, part("s", 2, true, vec![b's'; 40]))
        .await
        .unwrap();
    assert_eq!(o, SendOutcome::Rejected(RejectReason::Dropped));
    let mut s = engine.connect(&u, None).await.unwrap();
    assert_eq!(
        s.info().missed.evicted,
        3,
        "the stream's three parts, no more"
    );
    let marker = recv(&mut s).await;
    assert_eq!(
        marker.stream_part().unwrap().abort_reason(),
        Some(&AbortReason::Overflow)
    );
    let low = recv(&mut s).await;
    assert_eq!(low.payload().len(), 10, "the Low message was not evicted");
    assert_nothing_more(&engine, &mut s).await;

    // When evicting others does make room, it still happens.
    let v = user("room");
    engine.set_user_limits(&v, Some(caps)).await.unwrap();
    engine
        .send(
            &v,
            Message::new(vec![b'x'; 30]).with_priority(Priority::Low),
        )
        .await
        .unwrap();
    for i in 0..2 {
        engine
            .send(&v, part("s", i, false, vec![b's'; 30]))
            .await
            .unwrap();
    }
    let o = engine
        .send_confirmed(&v, part("s", 2, true, vec![b's'; 30]))
        .await
        .unwrap();
    assert_eq!(o, SendOutcome::Queued { evicted: 1 });
}

fn streams_aborted(c: &tether::Counters) -> u64 {
    c.streams_aborted_timeout
        + c.streams_aborted_expired
        + c.streams_aborted_overflow
        + c.streams_aborted_memory_budget
        + c.streams_aborted_producer
        + c.streams_aborted_mailbox_removed
}

#[tokio::test]
async fn streams_open_when_their_mailbox_is_removed_are_counted_as_aborted() {
    let clock = Clock::manual();
    let engine = Engine::builder()
        .shards(1)
        .clock(clock.clone())
        .keep_away_mailboxes(Duration::from_secs(1), Duration::from_secs(1))
        .build()
        .unwrap();
    let u = user("gone");
    // Two open streams (one holding a part back) and one aborted by its producer.
    for (name, i) in [("a", 0), ("a", 2), ("b", 0), ("c", 0)] {
        engine.send(&u, part(name, i, false, "x")).await.unwrap();
    }
    assert!(engine.abort_stream(&u, "c", "cancelled").await.unwrap());
    engine.barrier().await;
    let m = engine.metrics();
    assert_eq!((m.counters.streams_started, m.gauges.streams_open), (3, 2));
    // Nobody connects: the mailbox is removed with everything in it.
    advance(&engine, &clock, 1_000).await;
    let m = engine.metrics();
    let c = &m.counters;
    assert_eq!(c.mailboxes_removed, 1);
    assert_eq!(m.gauges.streams_open, 0);
    assert_eq!(c.streams_aborted_mailbox_removed, 2);
    assert_eq!(
        c.streams_started,
        c.streams_completed + streams_aborted(c) + m.gauges.streams_open,
        "started = completed + aborted + open"
    );
    assert!(m
        .to_prometheus()
        .contains("tether_streams_aborted_total{reason=\"mailbox_removed\"} 2"));
}
