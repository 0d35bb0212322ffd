//! Duplicates are refused once per user, within the window, by id or by content.

use std::time::Duration;

use tether::cluster::{Enqueued, StoreConfig};
use tether::{CloseReason, DedupMode, Message, OverflowPolicy, SendOutcome, UserLimits};

use crate::common::*;

#[tokio::test]
async fn a_duplicate_id_is_refused_once_for_the_user_across_devices() {
    let (_server, store) = store().await;
    let u = user("alice");
    for d in ["phone", "laptop"] {
        let a = store.attach(&u, d, NODE, None, 0).await.unwrap();
        store
            .detach(&a.session, 0, CloseReason::Normal)
            .await
            .unwrap();
    }
    let m = Message::new("hello").with_id("order-1");
    let Enqueued::Accepted(all) = store.enqueue(&u, &m).await.unwrap() else {
        panic!("first copy refused");
    };
    assert_eq!(all.len(), 2);
    assert_eq!(store.enqueue(&u, &m).await.unwrap(), Enqueued::Duplicate);
    // Another user's id space is its own.
    assert!(store.enqueue(&user("bob"), &m).await.unwrap().kept());
    for d in ["phone", "laptop"] {
        let a = store.attach(&u, d, NODE, None, 10).await.unwrap();
        assert_eq!(texts(&a.delivered), ["hello"], "{d}");
        assert_eq!(a.info.missed.deduplicated, 1, "{d}");
        assert_eq!(a.info.missed.total(), 0);
    }
}

#[tokio::test]
async fn content_counts_only_in_ids_and_content_mode() {
    let (_server, ids) = store().await;
    let u = user("carol");
    put(&ids, &u, Message::new("same")).await;
    put(&ids, &u, Message::new("same")).await;

    let config = StoreConfig {
        dedup: DedupMode::IdsAndContent,
        ..StoreConfig::default()
    };
    let (_server2, content) = store_with(config).await;
    put(&content, &u, Message::new("same")).await;
    assert_eq!(
        content.enqueue(&u, &Message::new("same")).await.unwrap(),
        Enqueued::Duplicate
    );
    // An id never matches a payload.
    put(&content, &u, Message::new("x").with_id("same")).await;

    let off = StoreConfig {
        dedup: DedupMode::Off,
        ..StoreConfig::default()
    };
    let (_server3, off) = store_with(off).await;
    let m = Message::new("a").with_id("1");
    put(&off, &u, m.clone()).await;
    put(&off, &u, m).await;
}

#[tokio::test]
async fn the_window_forgets() {
    let config = StoreConfig {
        dedup_window: Duration::from_millis(150),
        ..StoreConfig::default()
    };
    let (_server, store) = store_with(config).await;
    let u = user("dave");
    let m = Message::new("x").with_id("1");
    put(&store, &u, m.clone()).await;
    assert_eq!(store.enqueue(&u, &m).await.unwrap(), Enqueued::Duplicate);
    sleep(Duration::from_millis(400)).await;
    put(&store, &u, m).await;
}

#[tokio::test]
async fn fingerprints_per_user_are_bounded_soonest_forgotten_first() {
    let config = StoreConfig {
        dedup_max_per_user: 2,
        ..StoreConfig::default()
    };
    let (server, store) = store_with(config).await;
    let u = user("erin");
    for id in ["a", "b", "c"] {
        put(&store, &u, Message::new(id).with_id(id)).await;
        // Fingerprints recorded within the same millisecond are forgotten in any order.
        sleep(Duration::from_millis(5)).await;
    }
    let size: u64 = server.cmd(&["ZCARD", "{u:4:erin}:dedup"]);
    assert_eq!(size, 2);
    assert_eq!(
        store
            .enqueue(&u, &Message::new("c").with_id("c"))
            .await
            .unwrap(),
        Enqueued::Duplicate
    );
    put(&store, &u, Message::new("a").with_id("a")).await;
}

#[tokio::test]
async fn a_message_no_mailbox_kept_is_not_remembered() {
    let config = StoreConfig {
        user_limits: UserLimits {
            max_messages: 1,
            max_bytes: 1 << 20,
            overflow: OverflowPolicy::Reject,
        },
        ..StoreConfig::default()
    };
    let (_server, store) = store_with(config).await;
    let u = user("fay");
    put(&store, &u, Message::new("first")).await;
    let m = Message::new("second").with_id("2");
    let e = store.enqueue(&u, &m).await.unwrap();
    assert!(matches!(only(e), SendOutcome::Rejected(_)));
    let a = store.attach(&u, "", NODE, None, 10).await.unwrap();
    store.ack(&a.session, 1).await.unwrap();
    // Refused before, so a retry is no duplicate.
    assert_eq!(
        only(store.enqueue(&u, &m).await.unwrap()),
        SendOutcome::Queued { evicted: 0 }
    );
}
