//! Redis killed (SIGKILL) and restarted from its AOF: nothing it acknowledged is lost, and
//! the same store carries on (it reconnects, and reloads its scripts on NOSCRIPT).

use std::future::Future;
use std::time::Duration;

use tether::cluster::{Batch, BatchReply, StoreError};
use tether::{Message, Priority, ResumePoint};

use crate::common::*;

/// Retries `op` while Redis is unreachable (the connection is being re-established), for at
/// most 20 s.
async fn retrying<T, F: Future<Output = Result<T, StoreError>>>(mut op: impl FnMut() -> F) -> T {
    for _ in 0..200 {
        match op().await {
            Err(e) if e.is_unavailable() => sleep(Duration::from_millis(100)).await,
            other => return other.unwrap(),
        }
    }
    panic!("Redis did not come back within 20 s");
}

#[tokio::test]
async fn a_redis_restart_with_aof_loses_nothing_it_acknowledged() {
    let (mut server, store) = store().await;
    let u = user("alice");
    for i in 1..=100 {
        let m = Message::new(format!("m{i}")).with_id(format!("id{i}"));
        put(&store, &u, m.with_priority(Priority::Normal)).await;
    }
    let a = attach(&store, &u).await;
    let first = store.fill(&a.session, 1, 0, 30).await.unwrap();
    assert_eq!(first.delivered.len(), 30);
    store.ack(&a.session, 20).await.unwrap();

    server.restart();

    // The session's next pass: a batched fill. Its script is gone from Redis's cache.
    let mut batch = Batch::new();
    batch.fill(&a.session, 31, 0, 1000);
    let replies = retrying(|| store.run(&batch)).await;
    let Ok(BatchReply::Filled(f)) = &replies[0] else {
        panic!("{replies:?}");
    };
    assert_eq!(seqs(&f.delivered), (31..=100).collect::<Vec<_>>());
    assert_eq!(f.delivered[0].message().id().unwrap().as_str(), "id31");

    server.restart();

    // The connection broke again before anything was acknowledged past 20: a resume from
    // 20 gets 21..=100 again, same epoch, same seqs, in order.
    let resume = ResumePoint {
        epoch: a.info.epoch,
        last_seq: 20,
    };
    let b = retrying(|| store.attach(&u, "", NODE, Some(resume), 0)).await;
    assert!(b.info.recovered);
    assert_eq!(b.info.epoch, a.info.epoch);
    assert_eq!(seqs(&b.redelivered), (21..=100).collect::<Vec<_>>());
    let expected: Vec<String> = (21..=100).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&b.redelivered), expected);
    // The dedup set survived too.
    let again = Message::new("m1").with_id("id1");
    assert_eq!(
        store.enqueue(&u, &again).await.unwrap(),
        tether::cluster::Enqueued::Duplicate
    );
}
