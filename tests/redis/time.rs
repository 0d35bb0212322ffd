//! Deadlines on Redis's clock, and the away lifetime of device mailboxes. The waits are real
//! time (the store reads Redis's `TIME`); the assertions are about outcomes after a deadline
//! surely passed, never about how long anything took.

use std::time::Duration;

use tether::cluster::{RedisStore, StoreConfig};
use tether::{CloseReason, Message, Priority, ResumePoint, UserId};

use crate::common::*;

/// Waits until `user`'s default-device mailbox is gone (its keys expired), at most 20 s.
async fn until_gone(store: &RedisStore, user: &UserId, device: Option<&str>) {
    for _ in 0..400 {
        if store.inspect(user, device).await.unwrap().is_none() {
            return;
        }
        sleep(Duration::from_millis(50)).await;
    }
    panic!("the mailbox outlived its away lifetime by 20 s");
}

#[tokio::test]
async fn a_queued_message_past_its_deadline_is_never_delivered_and_is_counted() {
    let (_server, store) = store().await;
    let u = user("alice");
    let short = Message::new("short")
        .with_id("t1")
        .with_ttl(Duration::from_millis(100));
    put(&store, &u, short).await;
    put(&store, &u, msg("keep", Priority::Normal)).await;
    put(
        &store,
        &u,
        Message::new("long").with_ttl(Duration::from_secs(600)),
    )
    .await;
    sleep(Duration::from_millis(300)).await;
    let a = store.attach(&u, "", NODE, None, usize::MAX).await.unwrap();
    assert_eq!(texts(&a.delivered), ["keep", "long"]);
    assert_eq!(a.info.missed.expired, 1);
    assert_eq!(a.info.missed.ids, ["t1".into()]);
}

#[tokio::test]
async fn an_in_flight_message_past_its_deadline_is_not_delivered_again() {
    let config = StoreConfig {
        window: 1,
        ..StoreConfig::default()
    };
    let (_server, store) = store_with(config).await;
    let u = user("bob");
    let a = attach(&store, &u).await;
    put(
        &store,
        &u,
        Message::new("brief").with_ttl(Duration::from_millis(100)),
    )
    .await;
    put(&store, &u, msg("next", Priority::Normal)).await;
    let first = fill_all(&store, &a.session, 1).await;
    assert_eq!(texts(&first), ["brief"]);
    sleep(Duration::from_millis(300)).await;
    // Expired in flight: it keeps its window slot (a copy may sit unread at the session)
    // until acknowledged past.
    assert!(fill_all(&store, &a.session, 2).await.is_empty());
    let stats = store.inspect(&u, Some("")).await.unwrap().unwrap();
    assert_eq!((stats.in_flight, stats.missed[3]), (1, 1));
    store
        .detach(&a.session, 0, CloseReason::Abnormal)
        .await
        .unwrap();
    let resume = ResumePoint {
        epoch: a.info.epoch,
        last_seq: 0,
    };
    let b = store
        .attach(&u, "", NODE, Some(resume), usize::MAX)
        .await
        .unwrap();
    assert!(b.info.recovered);
    assert!(
        b.redelivered.is_empty(),
        "never delivered after its deadline"
    );
    assert_eq!(b.info.missed.expired, 1);
    assert_eq!(texts(&b.delivered), ["next"]);
    assert_eq!(seqs(&b.delivered), [2]);
}

#[tokio::test]
async fn default_ttls_apply_per_priority() {
    let mut config = StoreConfig::default();
    config.default_ttl[Priority::Low.index()] = Some(Duration::from_millis(100));
    let (_server, store) = store_with(config).await;
    let u = user("carol");
    put(&store, &u, msg("low", Priority::Low)).await;
    put(&store, &u, msg("normal", Priority::Normal)).await;
    sleep(Duration::from_millis(300)).await;
    let a = store.attach(&u, "", NODE, None, usize::MAX).await.unwrap();
    assert_eq!(texts(&a.delivered), ["normal"]);
    assert_eq!(a.info.missed.expired, 1);
}

#[tokio::test]
async fn the_away_lifetime_follows_the_close_reason() {
    let config = StoreConfig {
        keep_after_normal: Duration::from_secs(600),
        keep_after_abnormal: Duration::from_millis(300),
        ..StoreConfig::default()
    };
    let (server, store) = store_with(config).await;
    let u = user("dave");
    let a = attach(&store, &u).await;
    assert_eq!(
        store
            .inspect(&u, Some(""))
            .await
            .unwrap()
            .unwrap()
            .expires_in_ms,
        None
    );
    store
        .detach(&a.session, 0, CloseReason::Normal)
        .await
        .unwrap();
    let stats = store.inspect(&u, Some("")).await.unwrap().unwrap();
    assert_eq!(stats.away_reason.as_deref(), Some("normal"));
    let left = stats.expires_in_ms.expect("away: it expires");
    assert!(left > 300 && left <= 600_000, "{left}");

    // A message that arrives while away creates a band key: it expires with the rest.
    put(&store, &u, msg("waiting", Priority::High)).await;
    let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert!(keys.len() >= 4, "{keys:?}");
    for k in &keys {
        let ttl: i64 = server.cmd(&["PTTL", k]);
        assert!(ttl > 0, "{k} has no expiry while its device is away");
    }
    // Attached again: every key is kept for good.
    let b = attach(&store, &u).await;
    for k in server.cmd::<Vec<String>>(&["KEYS", "*"]) {
        assert_eq!(server.cmd::<i64>(&["PTTL", &k]), -1, "{k}");
    }
    // A broken connection: the short lifetime, then every key of the user is gone.
    store
        .detach(&b.session, 0, CloseReason::Abnormal)
        .await
        .unwrap();
    until_gone(&store, &u, Some("")).await;
    assert!(server.cmd::<Vec<String>>(&["KEYS", "*"]).is_empty());
    // Its resume point is no good any more: a new mailbox, a new epoch.
    let resume = ResumePoint {
        epoch: b.info.epoch,
        last_seq: 0,
    };
    let c = store.attach(&u, "", NODE, Some(resume), 10).await.unwrap();
    assert!(!c.info.recovered);
    assert_ne!(c.info.epoch, b.info.epoch);
    assert!(c.delivered.is_empty());
}

#[tokio::test]
async fn a_mailbox_created_before_any_device_lives_the_normal_away_lifetime() {
    let config = StoreConfig {
        keep_after_normal: Duration::from_millis(300),
        ..StoreConfig::default()
    };
    let (_server, store) = store_with(config).await;
    let u = user("erin");
    put(&store, &u, msg("early", Priority::Normal)).await;
    let pending = store.inspect(&u, None).await.unwrap().unwrap();
    assert_eq!(pending.away_reason.as_deref(), Some("created"));
    assert!(pending.expires_in_ms.is_some_and(|ms| ms <= 300));
    until_gone(&store, &u, None).await;
    let a = store.attach(&u, "", NODE, None, 10).await.unwrap();
    assert!(a.delivered.is_empty());
}
