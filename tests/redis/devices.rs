//! Every device of a user gets every message, with its own seqs, window, caps and resume.

use tether::cluster::{Enqueued, StoreConfig, StoreError, Target};
use tether::{
    CloseReason, OverflowPolicy, Priority, ResetReason, ResumePoint, SendOutcome, UserLimits,
};

use crate::common::*;

#[tokio::test]
async fn every_device_gets_every_message_with_its_own_seqs() {
    let (_server, store) = store().await;
    let u = user("alice");
    let phone = store.attach(&u, "phone", NODE, None, 0).await.unwrap();
    let laptop = store.attach(&u, "laptop", "node-b", None, 0).await.unwrap();
    assert_ne!(phone.info.epoch, laptop.info.epoch);
    for t in ["a", "b", "c"] {
        let Enqueued::Accepted(all) = store.enqueue(&u, &msg(t, Priority::Normal)).await.unwrap()
        else {
            panic!("duplicate");
        };
        let owners: Vec<_> = all
            .iter()
            .map(|d| (d.target.clone(), d.owner.clone().unwrap()))
            .collect();
        assert_eq!(
            owners,
            [
                (device("laptop"), "node-b".to_owned()),
                (device("phone"), NODE.to_owned())
            ]
        );
    }
    let p = fill_all(&store, &phone.session, 1).await;
    assert_eq!(
        (texts(&p), seqs(&p)),
        (vec!["a".into(), "b".into(), "c".into()], vec![1, 2, 3])
    );
    store.ack(&phone.session, 3).await.unwrap();
    // The laptop drops without reading; the phone keeps receiving.
    store
        .detach(&laptop.session, 0, CloseReason::Abnormal)
        .await
        .unwrap();
    put_all(&store, &u, &["d", "e"]).await;
    let p = fill_all(&store, &phone.session, 4).await;
    assert_eq!(
        (texts(&p), seqs(&p)),
        (vec!["d".into(), "e".into()], vec![4, 5])
    );
    // The laptop comes back having received nothing: all five, seqs 1 to 5, nothing twice.
    let resume = ResumePoint {
        epoch: laptop.info.epoch,
        last_seq: 0,
    };
    let back = store
        .attach(&u, "laptop", NODE, Some(resume), usize::MAX)
        .await
        .unwrap();
    assert!(back.info.recovered);
    assert!(back.redelivered.is_empty(), "it had received nothing");
    assert_eq!(texts(&back.delivered), ["a", "b", "c", "d", "e"]);
    assert_eq!(seqs(&back.delivered), [1, 2, 3, 4, 5]);
}

async fn put_all(store: &tether::cluster::RedisStore, u: &tether::UserId, texts: &[&str]) {
    for t in texts {
        assert!(store
            .enqueue(u, &msg(t, Priority::Normal))
            .await
            .unwrap()
            .kept());
    }
}

#[tokio::test]
async fn a_slow_devices_overflow_does_not_touch_the_other() {
    let config = StoreConfig {
        user_limits: UserLimits {
            max_messages: 2,
            max_bytes: 1 << 20,
            overflow: OverflowPolicy::DropOldest,
        },
        window: 10,
        ..StoreConfig::default()
    };
    let (_server, store) = store_with(config).await;
    let u = user("bob");
    let laptop = store.attach(&u, "laptop", NODE, None, 0).await.unwrap();
    let phone = store.attach(&u, "phone", NODE, None, 0).await.unwrap();
    store
        .detach(&phone.session, 0, CloseReason::Normal)
        .await
        .unwrap();
    let mut last = None;
    for i in 0..5 {
        last = Some(
            store
                .enqueue(&u, &msg(&i.to_string(), Priority::Normal))
                .await
                .unwrap(),
        );
    }
    let Some(Enqueued::Accepted(all)) = last else {
        panic!("duplicate");
    };
    assert_eq!(all[0].outcome, SendOutcome::Queued { evicted: 0 }, "laptop");
    assert_eq!(all[1].outcome, SendOutcome::Queued { evicted: 1 }, "phone");
    assert_eq!(
        texts(&fill_all(&store, &laptop.session, 1).await),
        ["0", "1", "2", "3", "4"]
    );
    let back = store
        .attach(&u, "phone", NODE, None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(texts(&back.delivered), ["3", "4"]);
    assert_eq!(back.info.missed.evicted, 3);
}

#[tokio::test]
async fn messages_before_any_device_go_to_the_first_device_only() {
    let (_server, store) = store().await;
    let u = user("carol");
    let Enqueued::Accepted(all) = store
        .enqueue(&u, &msg("early", Priority::High))
        .await
        .unwrap()
    else {
        panic!("duplicate");
    };
    assert_eq!(all[0].target, Target::Pending);
    put_all(&store, &u, &["early2"]).await;
    let first = store
        .attach(&u, "phone", NODE, None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(texts(&first.delivered), ["early", "early2"]);
    assert!(
        store.inspect(&u, None).await.unwrap().is_none(),
        "taken over"
    );
    let second = store
        .attach(&u, "laptop", NODE, None, usize::MAX)
        .await
        .unwrap();
    assert!(
        second.delivered.is_empty(),
        "a later device starts from now"
    );
    put_all(&store, &u, &["both"]).await;
    assert_eq!(texts(&fill_all(&store, &first.session, 3).await), ["both"]);
    assert_eq!(texts(&fill_all(&store, &second.session, 1).await), ["both"]);
}

#[tokio::test]
async fn the_device_limit_evicts_the_one_away_longest_or_refuses() {
    let config = StoreConfig {
        max_devices_per_user: 2,
        ..StoreConfig::default()
    };
    let (_server, store) = store_with(config).await;
    let u = user("dave");
    let d1 = store.attach(&u, "d1", NODE, None, 0).await.unwrap();
    let d2 = store.attach(&u, "d2", NODE, None, 0).await.unwrap();
    assert!(matches!(
        store.attach(&u, "d3", NODE, None, 0).await,
        Err(StoreError::TooManyDevices { max: 2 })
    ));
    put_all(&store, &u, &["x"]).await;
    store
        .detach(&d1.session, 0, CloseReason::Normal)
        .await
        .unwrap();
    store
        .detach(&d2.session, 0, CloseReason::Normal)
        .await
        .unwrap();
    let d3 = store.attach(&u, "d3", NODE, None, 0).await.unwrap();
    assert_eq!(d3.info.missed.reset, None);
    assert!(
        store.inspect(&u, Some("d1")).await.unwrap().is_none(),
        "d1 away longest"
    );
    assert!(store.inspect(&u, Some("d2")).await.unwrap().is_some());
    // d1's stale session is gone with its mailbox; its next attach is told.
    assert!(matches!(
        store.ack(&d1.session, 1).await,
        Err(StoreError::Gone)
    ));
    store
        .detach(&d3.session, 0, CloseReason::Normal)
        .await
        .unwrap();
    let resume = ResumePoint {
        epoch: d1.info.epoch,
        last_seq: 0,
    };
    let back = store
        .attach(&u, "d1", NODE, Some(resume), 10)
        .await
        .unwrap();
    assert_eq!(back.info.missed.reset, Some(ResetReason::DeviceEvicted));
    assert!(!back.info.recovered);
    assert!(back.delivered.is_empty());
    assert_eq!(
        store.inspect(&u, Some("d2")).await.unwrap(),
        None,
        "d2 was away longest now"
    );
}
