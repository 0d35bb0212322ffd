//! Graceful shutdown: each option, and shutdown racing concurrent senders, with every
//! accepted message accounted for.

use std::time::Duration;

use tether::{
    ConnectError, EndReason, Engine, Message, SendError, SendOutcome, ShutdownOptions,
    TrySendError, UserLimits,
};

use crate::common::user;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_delivers_the_backlog_to_a_reader_then_ends_the_session() {
    let engine = Engine::builder().shards(2).window(4).build().unwrap();
    let u = user("reader");
    let mut s = engine.connect(&u, None).await.unwrap();
    for i in 0..100 {
        engine.send(&u, Message::new(format!("{i}"))).await.unwrap();
    }
    engine.barrier().await;
    let (go, start) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        start.await.unwrap();
        let mut got = 0;
        while let Some(d) = s.recv().await {
            got += 1;
            // Once the flush delivered everything the session ends; acks for the last window
            // are refused as `Ended` (those messages are reported as kept).
            match s.ack(d.seq()) {
                Ok(()) | Err(tether::AckError::Ended) => {}
                Err(e) => panic!("{e}"),
            }
        }
        (got, s.end_reason())
    });
    // The shutdown's command is in the inbox (first poll) before the reader starts acking.
    let (report, ()) = tokio::join!(
        engine.shutdown(ShutdownOptions::default().flush_for(Duration::from_secs(30))),
        async { go.send(()).unwrap() }
    );
    let (got, end) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the reader finishes")
        .unwrap();
    assert_eq!(got, 100, "everything delivered");
    assert_eq!(end, Some(EndReason::Shutdown));
    assert_eq!(report.sessions_closed, 1);
    assert_eq!(report.workers_stopped, 2);
    // 4 were in the window before the shutdown; an ack applied just before the shutdown
    // command (signals go first) lets one more window through uncounted.
    assert!((92..=96).contains(&report.flushed), "{report:?}");
    assert_eq!(engine.metrics().counters.delivered, 100);
    assert!(
        report.kept <= 4,
        "at most the last unacknowledged window: {report:?}"
    );
}

#[tokio::test]
async fn keep_pending_reports_what_stays() {
    let engine = Engine::builder().shards(2).window(2).build().unwrap();
    let (away, live) = (user("away"), user("live"));
    for _ in 0..3 {
        engine.send(&away, Message::new("a")).await.unwrap();
        engine.send(&live, Message::new("l")).await.unwrap();
    }
    let s = engine.connect(&live, None).await.unwrap();
    engine.barrier().await;
    let report = engine
        .shutdown(ShutdownOptions::default().keep_pending())
        .await;
    assert_eq!(report.flushed, 0);
    assert_eq!(
        report.kept, 6,
        "3 away + 2 in flight + 1 queued for the live user"
    );
    assert_eq!(report.sessions_closed, 1);
    assert_eq!(s.end_reason(), Some(EndReason::Shutdown));
}

#[tokio::test]
async fn sessions_can_be_left_open() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let u = user("open");
    let s = engine.connect(&u, None).await.unwrap();
    let report = engine
        .shutdown(ShutdownOptions::default().leave_sessions_open())
        .await;
    assert_eq!(report.sessions_closed, 0);
    assert_eq!(s.end_reason(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flush_stops_at_its_deadline_when_nobody_reads() {
    let engine = Engine::builder().shards(1).window(3).build().unwrap();
    let u = user("stuck");
    let s = engine.connect(&u, None).await.unwrap();
    for _ in 0..10 {
        engine.send(&u, Message::new("x")).await.unwrap();
    }
    engine.barrier().await;
    let report = engine
        .shutdown(ShutdownOptions::default().flush_for(Duration::from_millis(50)))
        .await;
    assert_eq!(
        report.flushed, 0,
        "the window was full before and stayed full"
    );
    assert_eq!(report.kept, 10, "3 in flight + 7 queued");
    drop(s);
}

#[tokio::test]
async fn after_shutdown_every_call_is_refused_with_the_message_back() {
    let engine = Engine::builder().shards(2).build().unwrap();
    let u = user("late");
    engine.shutdown(ShutdownOptions::default()).await;
    match engine.try_send(&u, Message::new("t")) {
        Err(TrySendError::ShuttingDown(m)) => assert_eq!(&m.payload()[..], b"t"),
        other => panic!("{other:?}"),
    }
    match engine.send(&u, Message::new("s")).await {
        Err(SendError::ShuttingDown(m)) => assert_eq!(&m.payload()[..], b"s"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        engine.send_confirmed(&u, Message::new("c")).await,
        Err(SendError::ShuttingDown(_))
    ));
    assert_eq!(
        engine.connect(&u, None).await.unwrap_err(),
        ConnectError::ShuttingDown
    );
    let again = engine.shutdown(ShutdownOptions::default()).await;
    assert_eq!(
        again.workers_stopped, 0,
        "a second shutdown has nothing left to stop"
    );
}

#[test]
fn shutdown_under_concurrent_sends_accounts_for_every_message() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let engine = Engine::builder()
        .shards(2)
        .user_limits(UserLimits {
            max_messages: 100_000,
            ..UserLimits::default()
        })
        .build()
        .unwrap();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let engine = engine.clone();
            rt.spawn(async move {
                let u = user(&format!("u{p}"));
                let (mut accepted, mut refused, mut unconfirmed) = (0u64, 0u64, 0u64);
                for i in 0..20_000u32 {
                    match engine.send_confirmed(&u, Message::new(i.to_string())).await {
                        Ok(SendOutcome::Queued { evicted: 0 }) => accepted += 1,
                        Ok(other) => panic!("unexpected {other:?}"),
                        Err(SendError::ShuttingDown(_)) => refused += 1,
                        Err(SendError::Unconfirmed) => unconfirmed += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (accepted, refused, unconfirmed)
            })
        })
        .collect();
    let report = rt.block_on(async {
        // Let the producers get going, then shut down under them.
        while engine.metrics().counters.sent < 5_000 {
            tokio::task::yield_now().await;
        }
        engine.shutdown(ShutdownOptions::default()).await
    });
    let (mut accepted, mut refused, mut unconfirmed) = (0, 0, 0);
    for p in producers {
        let (a, r, u) = rt.block_on(p).unwrap();
        accepted += a;
        refused += r;
        unconfirmed += u;
    }
    assert_eq!(
        accepted + refused + unconfirmed,
        80_000,
        "every send has an answer"
    );
    assert!(
        accepted >= 5_000 && refused > 0,
        "the shutdown raced the senders"
    );
    assert_eq!(
        report.kept, accepted,
        "every accepted message is kept, none lost"
    );
    assert!(report.dropped <= unconfirmed);
}
