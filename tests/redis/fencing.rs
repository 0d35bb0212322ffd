//! The session generation fences every node but the latest owner.

use tether::cluster::StoreError;
use tether::{CloseReason, Priority};

use crate::common::*;

#[tokio::test]
async fn a_replaced_session_can_neither_fill_nor_ack_nor_detach() {
    let (_server, store) = store().await;
    let u = user("alice");
    let a = attach(&store, &u).await;
    for t in ["1", "2"] {
        put(&store, &u, msg(t, Priority::Normal)).await;
    }
    let b = store.attach(&u, "", "node-b", None, 0).await.unwrap();
    assert_eq!(b.replaced.as_deref(), Some(NODE));
    assert_eq!(b.session.generation, a.session.generation + 1);
    let s = &a.session;
    assert!(matches!(
        store.fill(s, 1, 0, 10).await,
        Err(StoreError::Fenced)
    ));
    assert!(matches!(store.ack(s, 1).await, Err(StoreError::Fenced)));
    assert!(matches!(
        store.detach(s, 0, CloseReason::Normal).await,
        Err(StoreError::Fenced)
    ));
    // The stale node changed nothing: the new owner gets everything from seq 1.
    let got = fill_all(&store, &b.session, 1).await;
    assert_eq!(seqs(&got), [1, 2]);
    let stats = store.inspect(&u, Some("")).await.unwrap().unwrap();
    assert_eq!(stats.owner.as_deref(), Some("node-b"));
    // Once detached, even the latest generation is fenced.
    store
        .detach(&b.session, 0, CloseReason::Normal)
        .await
        .unwrap();
    assert!(matches!(
        store.fill(&b.session, 3, 0, 10).await,
        Err(StoreError::Fenced)
    ));
    assert!(matches!(
        store.ack(&b.session, 2).await,
        Err(StoreError::Fenced)
    ));
}

#[tokio::test]
async fn a_mailbox_that_is_gone_answers_gone() {
    let (server, store) = store().await;
    let u = user("bob");
    let a = attach(&store, &u).await;
    // Redis lost it (say, a restart without AOF).
    let _: () = server.cmd(&["FLUSHALL"]);
    assert!(matches!(
        store.fill(&a.session, 1, 0, 10).await,
        Err(StoreError::Gone)
    ));
    assert!(matches!(
        store.ack(&a.session, 1).await,
        Err(StoreError::Gone)
    ));
}
