//! Messages sent while a user is away wait in the mailbox and are handed over on connect:
//! seq from 1, FIFO within a band, bands most urgent first.

use tether::{Engine, Message, MissedManifest, Priority, SendOutcome};

use crate::common::{assert_nothing_more, recv, text, user};

#[tokio::test]
async fn message_queued_while_away_is_delivered_on_connect() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("away");
    let outcome = engine
        .send_confirmed(&u, Message::new("hello").with_id("h-1"))
        .await
        .unwrap();
    assert_eq!(outcome, SendOutcome::Queued { evicted: 0 });

    let stats = engine
        .mailbox_stats(&u)
        .await
        .expect("mailbox created by the send");
    assert_eq!(stats.queued_per_band, [0, 0, 1, 0]);
    assert_eq!(stats.queued_bytes, 5);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.next_seq, 1);
    assert!(!stats.connected);

    let mut s = engine.connect(&u, None).await.unwrap();
    // Before any recv: the one message went into the window, none is left waiting.
    let info = s.info().clone();
    assert_eq!(info.pending, 0);
    assert_eq!(info.redelivered, 0);
    assert!(!info.recovered);
    assert_eq!(info.missed, MissedManifest::default());
    assert_eq!(info.epoch, stats.epoch);

    let d = recv(&mut s).await;
    assert_eq!(d.seq(), 1);
    assert_eq!(text(&d), "hello");
    assert_eq!(d.priority(), Priority::Normal);
    assert_eq!(d.message().id().unwrap().as_str(), "h-1");
    assert_eq!(s.last_received(), 1);
    assert_nothing_more(&engine, &mut s).await;

    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert!(stats.connected);
    assert_eq!((stats.in_flight, stats.queued(), stats.next_seq), (1, 0, 2));
}

#[tokio::test]
async fn pending_counts_the_backlog_left_after_the_window_is_filled() {
    let engine = Engine::builder().shards(1).window(2).build().unwrap();
    let u = user("pending");
    for i in 0..5 {
        engine
            .send(&u, Message::new(format!("m{i}")))
            .await
            .unwrap();
    }
    let mut s = engine.connect(&u, None).await.unwrap();
    assert_eq!(s.info().pending, 3);
    assert_eq!(s.info().redelivered, 0);
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!((stats.in_flight, stats.queued()), (2, 3));
    assert_eq!(text(&recv(&mut s).await), "m0");
    assert_eq!(text(&recv(&mut s).await), "m1");
    assert_nothing_more(&engine, &mut s).await;
}

#[tokio::test]
async fn five_messages_are_delivered_in_fifo_order() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("fifo");
    for i in 0..5 {
        let outcome = engine
            .send_confirmed(&u, Message::new(format!("m{i}")).with_id(format!("id{i}")))
            .await
            .unwrap();
        assert_eq!(outcome, SendOutcome::Queued { evicted: 0 });
    }
    let mut s = engine.connect(&u, None).await.unwrap();
    for i in 0..5u64 {
        let d = recv(&mut s).await;
        assert_eq!(d.seq(), i + 1);
        assert_eq!(text(&d), format!("m{i}"));
        assert_eq!(d.message().id().unwrap().as_str(), format!("id{i}"));
    }
    assert_nothing_more(&engine, &mut s).await;
}

#[tokio::test]
async fn interleaved_priorities_are_delivered_critical_first_fifo_within_a_band() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("bands");
    // An irregular interleaving of all four priorities.
    let pattern = [
        3usize, 0, 2, 1, 1, 3, 0, 2, 2, 3, 1, 0, 3, 3, 2, 0, 1, 2, 0, 3,
    ];
    let mut sent = Vec::new();
    for (i, &b) in pattern.iter().enumerate() {
        let p = Priority::ALL[b];
        let payload = format!("{}-{i}", p.as_str());
        engine
            .send(&u, Message::new(payload.clone()).with_priority(p))
            .await
            .unwrap();
        sent.push((p, payload));
    }
    let stats = engine.mailbox_stats(&u).await.unwrap();
    for b in 0..4 {
        let n = pattern.iter().filter(|&&x| x == b).count();
        assert_eq!(stats.queued_per_band[b], n, "band {b}");
    }

    // Expected: by band (Critical first), and in send order within a band (stable sort).
    let mut expected = sent.clone();
    expected.sort_by_key(|(p, _)| *p);

    let mut s = engine.connect(&u, None).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..pattern.len() {
        got.push(recv(&mut s).await);
    }
    for (i, (d, (p, payload))) in got.iter().zip(&expected).enumerate() {
        assert_eq!(d.seq(), i as u64 + 1, "seqs are assigned in delivery order");
        assert_eq!(d.priority(), *p);
        assert_eq!(&text(d), payload);
    }
    assert_nothing_more(&engine, &mut s).await;
}

#[tokio::test]
async fn messages_sent_while_connected_follow_in_arrival_order() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("live");
    engine
        .send(&u, Message::new("queued").with_priority(Priority::Low))
        .await
        .unwrap();
    let mut s = engine.connect(&u, None).await.unwrap();
    for (i, p) in [Priority::Low, Priority::Critical, Priority::Normal]
        .into_iter()
        .enumerate()
    {
        let outcome = engine
            .send_confirmed(&u, Message::new(format!("live{i}")).with_priority(p))
            .await
            .unwrap();
        // The window has room: straight into the session, regardless of priority.
        assert_eq!(outcome, SendOutcome::Delivered);
    }
    let got: Vec<(u64, String)> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let d = recv(&mut s).await;
            v.push((d.seq(), text(&d)));
        }
        v
    };
    assert_eq!(
        got,
        vec![
            (1, "queued".to_string()),
            (2, "live0".to_string()),
            (3, "live1".to_string()),
            (4, "live2".to_string()),
        ]
    );
    assert_nothing_more(&engine, &mut s).await;
}
