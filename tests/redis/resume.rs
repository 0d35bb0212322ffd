//! Resume with the same epoch and seqs, redelivery, and the missed manifest.

use tether::cluster::StoreConfig;
use tether::{CloseReason, Epoch, Message, OverflowPolicy, Priority, ResumePoint, UserLimits};

use crate::common::*;

#[tokio::test]
async fn a_resume_gets_exactly_what_was_not_received_with_the_same_epoch_and_seqs() {
    let (_server, store) = store().await;
    let u = user("alice");
    for i in 1..=5 {
        put(&store, &u, msg(&format!("m{i}"), Priority::Normal)).await;
    }
    let a = store.attach(&u, "", NODE, None, usize::MAX).await.unwrap();
    assert_eq!(seqs(&a.delivered), [1, 2, 3, 4, 5]);
    store
        .detach(&a.session, 0, CloseReason::Abnormal)
        .await
        .unwrap();
    let resume = ResumePoint {
        epoch: a.info.epoch,
        last_seq: 2,
    };
    let b = store
        .attach(&u, "", "node-b", Some(resume), usize::MAX)
        .await
        .unwrap();
    assert!(b.info.recovered);
    assert_eq!(b.info.epoch, a.info.epoch);
    assert_eq!(b.info.redelivered, 3);
    assert_eq!(seqs(&b.redelivered), [3, 4, 5]);
    assert_eq!(texts(&b.redelivered), ["m3", "m4", "m5"]);
    put(&store, &u, msg("m6", Priority::Normal)).await;
    let f = store
        .fill(&b.session, b.next_seq, 5, usize::MAX)
        .await
        .unwrap();
    assert_eq!((f.acknowledged, seqs(&f.delivered)), (3, vec![6]));
}

#[tokio::test]
async fn without_a_valid_resume_point_everything_unacknowledged_comes_again() {
    let (_server, store) = store().await;
    let u = user("bob");
    for i in 1..=3 {
        put(&store, &u, msg(&i.to_string(), Priority::Normal)).await;
    }
    let a = store.attach(&u, "", NODE, None, usize::MAX).await.unwrap();
    let stale = [
        None,
        Some(ResumePoint {
            epoch: "1234".parse::<Epoch>().unwrap(),
            last_seq: 2,
        }),
        // A seq the mailbox never reached.
        Some(ResumePoint {
            epoch: a.info.epoch,
            last_seq: 4,
        }),
    ];
    for resume in stale {
        let b = store.attach(&u, "", NODE, resume, 0).await.unwrap();
        assert!(!b.info.recovered, "{resume:?}");
        assert_eq!(seqs(&b.redelivered), [1, 2, 3], "{resume:?}");
    }
}

#[tokio::test]
async fn the_last_ack_of_a_closing_session_is_kept() {
    let (_server, store) = store().await;
    let u = user("carol");
    for i in 1..=3 {
        put(&store, &u, msg(&i.to_string(), Priority::Normal)).await;
    }
    let a = store.attach(&u, "", NODE, None, usize::MAX).await.unwrap();
    let closed = store
        .detach(&a.session, 2, CloseReason::Normal)
        .await
        .unwrap();
    assert_eq!((closed.acknowledged, closed.in_flight), (2, 1));
    let b = store.attach(&u, "", NODE, None, 0).await.unwrap();
    assert_eq!(seqs(&b.redelivered), [3]);
}

#[tokio::test]
async fn the_missed_manifest_counts_and_names_losses_and_starts_again() {
    let config = StoreConfig {
        missed_ids: 2,
        user_limits: UserLimits {
            max_messages: 1,
            max_bytes: 1 << 20,
            overflow: OverflowPolicy::DropNewest,
        },
        ..StoreConfig::default()
    };
    let (_server, store) = store_with(config).await;
    let u = user("dave");
    put(&store, &u, msg("kept", Priority::Normal)).await;
    for id in ["a", "b", "c"] {
        let m = Message::new(id).with_id(id);
        assert!(!store.enqueue(&u, &m).await.unwrap().kept());
    }
    // Without an id a loss is counted, not named.
    assert!(!store
        .enqueue(&u, &Message::new("anon"))
        .await
        .unwrap()
        .kept());
    let a = attach(&store, &u).await;
    assert_eq!(a.info.missed.evicted, 4);
    assert_eq!(
        a.info.missed.ids,
        ["b".into(), "c".into()],
        "the 2 most recent"
    );
    store
        .detach(&a.session, 0, CloseReason::Normal)
        .await
        .unwrap();
    let b = attach(&store, &u).await;
    assert_eq!(b.info.missed, tether::MissedManifest::default());
}
