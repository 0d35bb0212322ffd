//! Many sessions' fills and acks in one round trip, each with its own answer.

use tether::cluster::{Batch, BatchReply, StoreError};
use tether::Priority;

use crate::common::*;

#[tokio::test]
async fn many_sessions_fill_and_ack_in_one_round_trip_each() {
    let (_server, store) = store().await;
    let mut sessions = Vec::new();
    for i in 0..10 {
        let u = user(&format!("user{i}"));
        for j in 0..5 {
            put(&store, &u, msg(&format!("{i}.{j}"), Priority::Normal)).await;
        }
        sessions.push(attach(&store, &u).await.session);
    }
    // One of them was taken over by another node meanwhile.
    let taken = store
        .attach(&sessions[3].user, "", "node-b", None, 0)
        .await
        .unwrap();

    let mut batch = Batch::new();
    for s in &sessions {
        batch.fill(s, 1, 0, 100);
    }
    let before = store.round_trips();
    let replies = store.run(&batch).await.unwrap();
    assert_eq!(store.round_trips() - before, 1);
    for (i, r) in replies.iter().enumerate() {
        match (i, r) {
            (3, Err(StoreError::Fenced)) => {}
            (_, Ok(BatchReply::Filled(f))) => {
                let expected: Vec<String> = (0..5).map(|j| format!("{i}.{j}")).collect();
                assert_eq!(texts(&f.delivered), expected);
            }
            other => panic!("{other:?}"),
        }
    }

    batch.clear();
    for s in &sessions {
        batch.ack(s, 5);
    }
    batch.fill(&taken.session, 1, 0, 100);
    let before = store.round_trips();
    let replies = store.run(&batch).await.unwrap();
    assert_eq!(store.round_trips() - before, 1);
    assert_eq!(replies.len(), 11);
    for (i, r) in replies[..10].iter().enumerate() {
        match (i, r) {
            (3, Err(StoreError::Fenced)) => {}
            (_, Ok(BatchReply::Acked(a))) => assert_eq!((a.acknowledged, a.in_flight), (5, 0)),
            other => panic!("{other:?}"),
        }
    }
    let Ok(BatchReply::Filled(f)) = &replies[10] else {
        panic!("{:?}", replies[10]);
    };
    assert_eq!(seqs(&f.delivered), [1, 2, 3, 4, 5]);
}
