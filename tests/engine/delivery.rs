//! The delivery contract: the window, cumulative acks, resume with `(epoch, last_seq)`,
//! replacement of a session by a newer one, and what a reconnect hands over again.

use tether::{
    AckError, CloseReason, Delivery, EndReason, Engine, Epoch, Message, OverflowPolicy, Priority,
    ResumePoint, SendOutcome, Session, TryRecvError, UserId, UserLimits,
};

use crate::common::{assert_nothing_more, recv, text, user, GUARD};

async fn recv_n(s: &mut Session, n: usize) -> Vec<(u64, String)> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let d = recv(s).await;
        v.push((d.seq(), text(&d)));
    }
    v
}

/// `(seq, "m{seq-1}")` for each seq in the range: what `send_numbered` messages look like
/// when delivered in order.
fn numbered(seqs: std::ops::RangeInclusive<u64>) -> Vec<(u64, String)> {
    seqs.map(|s| (s, format!("m{}", s - 1))).collect()
}

async fn send_numbered(engine: &Engine, u: &UserId, n: usize) {
    for i in 0..n {
        engine.send(u, Message::new(format!("m{i}"))).await.unwrap();
    }
}

fn other_epoch(e: Epoch) -> Epoch {
    let bits = u64::from_str_radix(&e.to_string(), 16).unwrap();
    let other: Epoch = format!("{:016x}", bits ^ 0x5a5a).parse().unwrap();
    assert_ne!(other, e);
    other
}

/// Sends 10 messages to an away user, connects, receives all 10 and acks 1..=3.
/// Returns the session's epoch. The session is dropped (an abnormal close) after a barrier, so
/// the ack has taken effect (see `ack_just_before_a_reconnect_is_not_lost`).
async fn ten_received_three_acked(engine: &Engine, u: &UserId) -> Epoch {
    send_numbered(engine, u, 10).await;
    let mut s = engine.connect(u, None).await.unwrap();
    assert_eq!(recv_n(&mut s, 10).await, numbered(1..=10));
    s.ack(3).unwrap();
    engine.barrier().await;
    let stats = engine.mailbox_stats(u).await.unwrap();
    assert_eq!(stats.in_flight, 7);
    assert_eq!(s.resume_point().last_seq, 10);
    let epoch = s.info().epoch;
    drop(s);
    epoch
}

#[tokio::test]
async fn resume_redelivers_only_unacked_messages_beyond_last_seq_with_original_seqs() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("resume");
    let epoch = ten_received_three_acked(&engine, &u).await;

    // The client says it got up to 6 (acked 3): 7..=10 come again, with their seqs.
    let mut s = engine
        .connect(&u, Some(ResumePoint { epoch, last_seq: 6 }))
        .await
        .unwrap();
    assert!(s.info().recovered);
    assert_eq!(s.info().epoch, epoch);
    assert_eq!(s.info().redelivered, 4);
    assert_eq!(s.info().pending, 0);
    assert_eq!(recv_n(&mut s, 4).await, numbered(7..=10));
    assert_nothing_more(&engine, &mut s).await;

    // New messages continue the sequence.
    assert_eq!(
        engine
            .send_confirmed(&u, Message::new("m10"))
            .await
            .unwrap(),
        SendOutcome::Delivered
    );
    assert_eq!(recv_n(&mut s, 1).await, numbered(11..=11));
    assert_eq!(engine.mailbox_stats(&u).await.unwrap().in_flight, 5);
    s.ack(11).unwrap();
    engine.barrier().await;
    assert_eq!(engine.mailbox_stats(&u).await.unwrap().in_flight, 0);
}

#[tokio::test]
async fn resume_at_the_last_received_seq_redelivers_nothing() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("resume-all");
    send_numbered(&engine, &u, 5).await;
    let mut s = engine.connect(&u, None).await.unwrap();
    assert_eq!(recv_n(&mut s, 5).await, numbered(1..=5));
    let rp = s.resume_point();
    assert_eq!(rp.last_seq, 5);
    drop(s); // nothing acked explicitly

    let mut s = engine.connect(&u, Some(rp)).await.unwrap();
    assert!(s.info().recovered);
    assert_eq!(s.info().redelivered, 0);
    assert_nothing_more(&engine, &mut s).await;
    assert_eq!(engine.mailbox_stats(&u).await.unwrap().in_flight, 0);
    engine.send(&u, Message::new("m5")).await.unwrap();
    assert_eq!(recv_n(&mut s, 1).await, numbered(6..=6));
}

#[tokio::test]
async fn resume_with_a_stale_epoch_redelivers_everything_unacked() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("stale");
    let epoch = ten_received_three_acked(&engine, &u).await;

    let stale = ResumePoint {
        epoch: other_epoch(epoch),
        last_seq: 6,
    };
    let mut s = engine.connect(&u, Some(stale)).await.unwrap();
    assert!(!s.info().recovered);
    assert_eq!(s.info().epoch, epoch, "the mailbox keeps its epoch");
    assert_eq!(s.info().redelivered, 7);
    assert_eq!(recv_n(&mut s, 7).await, numbered(4..=10));
    assert_nothing_more(&engine, &mut s).await;
}

#[tokio::test]
async fn resume_for_a_user_without_a_mailbox_is_not_recovered() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let known = user("known");
    let epoch = ten_received_three_acked(&engine, &known).await;

    let fresh = user("fresh");
    assert!(engine.mailbox_stats(&fresh).await.is_none());
    let mut s = engine
        .connect(&fresh, Some(ResumePoint { epoch, last_seq: 6 }))
        .await
        .unwrap();
    assert!(!s.info().recovered);
    assert_eq!(s.info().redelivered, 0);
    assert_eq!(s.info().missed.total(), 0);
    assert_nothing_more(&engine, &mut s).await;
    // The connect created the mailbox; the first message is seq 1.
    assert!(engine.mailbox_stats(&fresh).await.unwrap().connected);
    engine.send(&fresh, Message::new("m0")).await.unwrap();
    assert_eq!(recv_n(&mut s, 1).await, numbered(1..=1));
}

#[tokio::test]
async fn a_resume_point_beyond_what_was_delivered_settles_nothing_undelivered() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("bogus");
    let epoch = ten_received_three_acked(&engine, &u).await;

    let mut s = engine
        .connect(
            &u,
            Some(ResumePoint {
                epoch,
                last_seq: 1_000,
            }),
        )
        .await
        .unwrap();
    // Seqs 4..=10 were never acknowledged and 11..=1000 were never delivered: the claim is
    // not honoured and nothing unacknowledged is lost.
    assert!(!s.info().recovered);
    assert_eq!(recv_n(&mut s, 7).await, numbered(4..=10));
    engine.send(&u, Message::new("m10")).await.unwrap();
    assert_eq!(recv_n(&mut s, 1).await, numbered(11..=11));
}

#[tokio::test]
async fn a_reader_that_never_acks_gets_only_a_window_of_messages() {
    const WINDOW: usize = 8;
    const SIZE: usize = 10;
    let engine = Engine::builder().shards(1).window(WINDOW).build().unwrap();
    let limits = engine.config().user_limits();
    let u = user("slow");
    let mut s = engine.connect(&u, None).await.unwrap();
    for i in 0..100 {
        let outcome = engine
            .send_confirmed(&u, Message::new(format!("n{i:09}")))
            .await
            .unwrap();
        let expected = if i < WINDOW {
            SendOutcome::Delivered
        } else {
            SendOutcome::Queued { evicted: 0 }
        };
        assert_eq!(outcome, expected, "message {i}");
    }
    engine.barrier().await;
    let mut got = Vec::new();
    assert_eq!(s.drain(&mut got, 1000), WINDOW);
    let seqs: Vec<u64> = got.iter().map(Delivery::seq).collect();
    assert_eq!(seqs, (1..=WINDOW as u64).collect::<Vec<_>>());
    assert_nothing_more(&engine, &mut s).await;

    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(stats.in_flight, WINDOW);
    assert_eq!(stats.queued(), 100 - WINDOW);
    assert_eq!(stats.in_flight_bytes, WINDOW * SIZE);
    assert_eq!(stats.queued_bytes, (100 - WINDOW) * SIZE);
    engine.barrier().await;
    let used = engine.memory_used();
    assert_eq!(used, 100 * SIZE as u64);
    assert!(used <= (WINDOW * SIZE + limits.max_bytes) as u64);

    // An ack of 3 lets exactly 3 more through.
    s.ack(3).unwrap();
    let more = recv_n(&mut s, 3).await;
    assert_eq!(
        more,
        vec![
            (9, "n000000008".to_string()),
            (10, "n000000009".to_string()),
            (11, "n000000010".to_string())
        ]
    );
    assert_nothing_more(&engine, &mut s).await;
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(
        (stats.in_flight, stats.queued()),
        (WINDOW, 100 - WINDOW - 3)
    );
}

#[tokio::test]
async fn with_a_full_window_memory_stays_bounded_by_the_caps_and_critical_overtakes() {
    const WINDOW: usize = 8;
    const SIZE: usize = 10;
    const CAP: usize = 50;
    let engine = Engine::builder()
        .shards(1)
        .window(WINDOW)
        .user_limits(UserLimits {
            max_messages: CAP,
            max_bytes: CAP * SIZE,
            overflow: OverflowPolicy::DropOldest,
        })
        .build()
        .unwrap();
    let u = user("bounded");
    let mut s = engine.connect(&u, None).await.unwrap();
    for i in 0..1000 {
        let outcome = engine
            .send_confirmed(&u, Message::new(format!("n{i:09}")))
            .await
            .unwrap();
        let expected = match i {
            i if i < WINDOW => SendOutcome::Delivered,
            i if i < WINDOW + CAP => SendOutcome::Queued { evicted: 0 },
            _ => SendOutcome::Queued { evicted: 1 },
        };
        assert_eq!(outcome, expected, "message {i}");
        if i % 100 == 99 {
            engine.barrier().await;
            assert!(engine.memory_used() <= (WINDOW * SIZE + CAP * SIZE) as u64);
        }
    }
    engine.barrier().await;
    assert_eq!(engine.memory_used(), (WINDOW * SIZE + CAP * SIZE) as u64);
    assert_eq!(recv_n(&mut s, WINDOW).await.len(), WINDOW);
    assert_nothing_more(&engine, &mut s).await;
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!((stats.in_flight, stats.queued()), (WINDOW, CAP));

    // The window is full; a Critical waits, with 50 Normals ahead of it in time.
    assert_eq!(
        engine
            .send_confirmed(&u, Message::new("urgent").with_priority(Priority::Critical))
            .await
            .unwrap(),
        SendOutcome::Queued { evicted: 1 }
    );
    assert_nothing_more(&engine, &mut s).await;
    s.ack(1).unwrap();
    let d = recv(&mut s).await;
    assert_eq!((d.seq(), text(&d).as_str()), (9, "urgent"));
    assert_eq!(d.priority(), Priority::Critical);
    assert_nothing_more(&engine, &mut s).await;
    // Then the oldest surviving Normal (1000 sent, the last 50 kept, the oldest of those
    // evicted for the Critical).
    s.ack(2).unwrap();
    assert_eq!(
        recv_n(&mut s, 1).await,
        vec![(10, format!("n{:09}", 1000 - CAP + 1))]
    );
}

#[tokio::test]
async fn a_second_connect_replaces_the_first_session() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("replace");
    let mut first = engine.connect(&u, None).await.unwrap();
    send_numbered(&engine, &u, 3).await;
    assert_eq!(recv_n(&mut first, 1).await, numbered(1..=1));
    first.ack(1).unwrap();
    engine.barrier().await; // the ack has taken effect before the second connect

    let mut second = engine.connect(&u, None).await.unwrap();
    assert_eq!(second.info().redelivered, 2);
    assert!(!second.info().recovered);

    // The first session still hands out what was delivered to it, then ends as Replaced.
    assert_eq!(recv_n(&mut first, 2).await, numbered(2..=3));
    let end = tokio::time::timeout(GUARD, first.recv())
        .await
        .expect("hang guard");
    assert!(end.is_none());
    assert_eq!(first.end_reason(), Some(EndReason::Replaced));
    assert_eq!(
        first.try_recv().unwrap_err(),
        TryRecvError::Ended(EndReason::Replaced)
    );
    assert_eq!(first.ack(3), Err(AckError::Ended));

    // The second session gets 2 and 3 again, with their seqs, then live messages.
    assert_eq!(recv_n(&mut second, 2).await, numbered(2..=3));
    assert_eq!(second.end_reason(), None);
    engine.send(&u, Message::new("m3")).await.unwrap();
    assert_eq!(recv_n(&mut second, 1).await, numbered(4..=4));
    assert_nothing_more(&engine, &mut second).await;
}

#[tokio::test]
async fn reconnecting_with_a_resume_point_while_the_old_session_is_still_live() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("overlap");
    send_numbered(&engine, &u, 6).await;
    let mut first = engine.connect(&u, None).await.unwrap();
    assert_eq!(recv_n(&mut first, 4).await, numbered(1..=4));
    // The client reconnects before the old connection was noticed as dead.
    let mut second = engine
        .connect(&u, Some(first.resume_point()))
        .await
        .unwrap();
    assert!(second.info().recovered);
    assert_eq!(second.info().redelivered, 2);
    assert_eq!(recv_n(&mut second, 2).await, numbered(5..=6));
    assert_nothing_more(&engine, &mut second).await;
    // The old one ends as Replaced once it has handed out what it held.
    assert_eq!(recv_n(&mut first, 2).await, numbered(5..=6));
    let end = tokio::time::timeout(GUARD, first.recv())
        .await
        .expect("hang guard");
    assert!(end.is_none());
    assert_eq!(first.end_reason(), Some(EndReason::Replaced));
}

#[tokio::test]
async fn a_late_ack_from_a_replaced_session_has_no_effect() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("late-ack");
    let mut first = engine.connect(&u, None).await.unwrap();
    send_numbered(&engine, &u, 4).await;
    assert_eq!(recv_n(&mut first, 4).await, numbered(1..=4));

    let mut second = engine.connect(&u, None).await.unwrap();
    assert_eq!(second.info().redelivered, 4);
    // The old session acks after it was replaced: refused, or at least ignored.
    match first.ack(4) {
        Ok(()) | Err(AckError::Ended) => {}
        Err(e) => panic!("unexpected {e:?}"),
    }
    engine.barrier().await;
    assert_eq!(engine.mailbox_stats(&u).await.unwrap().in_flight, 4);
    assert_eq!(recv_n(&mut second, 4).await, numbered(1..=4));

    // Only the live session's acks count.
    second.ack(2).unwrap();
    engine.barrier().await;
    assert_eq!(engine.mailbox_stats(&u).await.unwrap().in_flight, 2);
    drop(first);
    engine.barrier().await;
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert!(
        stats.connected,
        "dropping the replaced session does not detach the new one"
    );
    assert_eq!(stats.in_flight, 2);
    engine.send(&u, Message::new("m4")).await.unwrap();
    assert_eq!(recv_n(&mut second, 1).await, numbered(5..=5));
}

#[tokio::test]
async fn a_closed_session_leaves_its_unacked_messages_for_the_next_one() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("close");
    send_numbered(&engine, &u, 6).await;
    let mut s = engine.connect(&u, None).await.unwrap();
    assert_eq!(recv_n(&mut s, 6).await, numbered(1..=6));
    s.ack(2).unwrap();
    engine.barrier().await;
    s.close(CloseReason::Normal);
    engine.barrier().await;
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert!(!stats.connected);
    assert_eq!(stats.in_flight, 4);

    // Sent while away: queued behind the unacked ones.
    assert_eq!(
        engine.send_confirmed(&u, Message::new("m6")).await.unwrap(),
        SendOutcome::Queued { evicted: 0 }
    );
    let mut s = engine.connect(&u, None).await.unwrap();
    assert_eq!(s.info().redelivered, 4);
    assert_eq!(recv_n(&mut s, 5).await, numbered(3..=7));
    assert_nothing_more(&engine, &mut s).await;
}

#[tokio::test]
async fn acks_are_cumulative_and_idempotent() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let u = user("cumulative");
    send_numbered(&engine, &u, 5).await;
    let mut s = engine.connect(&u, None).await.unwrap();
    assert_eq!(recv_n(&mut s, 5).await, numbered(1..=5));
    s.ack(4).unwrap();
    s.ack(2).unwrap(); // lower than before: no effect
    s.ack(4).unwrap(); // repeated: no effect
    engine.barrier().await;
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(stats.in_flight, 1);
    assert_eq!(stats.in_flight_bytes, 2);
    s.ack(5).unwrap();
    engine.barrier().await;
    assert_eq!(engine.mailbox_stats(&u).await.unwrap().in_flight, 0);
    assert_eq!(engine.memory_used(), 0);
}

/// An ack that returned `Ok` before the session was dropped must settle its messages even if
/// the user reconnects at once without a resume point (a client that lost its state but did
/// acknowledge). Regression: the worker used to handle the new connect (inbox) before the old
/// session's ack (signal list), then ignore that ack as coming from a replaced session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_just_before_a_reconnect_is_not_lost() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let busy = user("busy");
    let mut failures = Vec::new();
    for i in 0..200 {
        let u = user(&format!("ack-race-{i}"));
        engine.send(&u, Message::new("m0")).await.unwrap();
        let mut s = engine.connect(&u, None).await.unwrap();
        let d = recv(&mut s).await;
        assert_eq!(d.seq(), 1);
        // Keep the worker busy so that the connect lands in the same batch of commands.
        for _ in 0..100 {
            engine.send(&busy, Message::new("x")).await.unwrap();
        }
        s.ack(1).unwrap();
        drop(s);
        let s = engine.connect(&u, None).await.unwrap();
        if s.info().redelivered != 0 {
            failures.push(i);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 200 reconnects redelivered an acknowledged message (first: iteration {})",
        failures.len(),
        failures[0]
    );
}

/// A send issued after the session was dropped must find the user away (queued), not deliver
/// into the dropped session's outbox. Regression: the worker handled the send (inbox) before
/// the close (signal list) when both arrived in one pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_after_a_drop_is_queued_not_delivered() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let busy = user("busy");
    for i in 0..200 {
        let u = user(&format!("drop-send-{i}"));
        let s = engine.connect(&u, None).await.unwrap();
        // Keep the worker busy so the close and the send land in the same pass.
        for _ in 0..50 {
            engine.send(&busy, Message::new("x")).await.unwrap();
        }
        drop(s);
        let outcome = engine
            .send_confirmed(&u, Message::new("after"))
            .await
            .unwrap();
        assert_eq!(outcome, SendOutcome::Queued { evicted: 0 }, "iteration {i}");
    }
}
