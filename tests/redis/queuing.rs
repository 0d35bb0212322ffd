//! Bands, priority order, the window, cumulative acks, and fills that are safe to repeat.

use tether::cluster::StoreConfig;
use tether::{Message, Priority};

use crate::common::*;

#[tokio::test]
async fn fifo_per_band_and_most_urgent_first() {
    let (_server, store) = store().await;
    let u = user("alice");
    for (t, p) in [
        ("n1", Priority::Normal),
        ("l1", Priority::Low),
        ("n2", Priority::Normal),
        ("c1", Priority::Critical),
        ("h1", Priority::High),
        ("l2", Priority::Low),
        ("c2", Priority::Critical),
    ] {
        put(&store, &u, msg(t, p)).await;
    }
    let a = attach(&store, &u).await;
    assert_eq!(a.info.pending, 7);
    let got = fill_all(&store, &a.session, a.next_seq).await;
    assert_eq!(texts(&got), ["c1", "c2", "h1", "n1", "n2", "l1", "l2"]);
    assert_eq!(seqs(&got), [1, 2, 3, 4, 5, 6, 7]);
    let prios: Vec<_> = got.iter().map(|d| d.priority()).collect();
    assert_eq!(prios[0], Priority::Critical);
    assert_eq!(prios[6], Priority::Low);
}

#[tokio::test]
async fn the_window_bounds_what_is_in_flight_and_acks_are_cumulative() {
    let config = StoreConfig {
        window: 3,
        ..StoreConfig::default()
    };
    let (_server, store) = store_with(config).await;
    let u = user("bob");
    for i in 1..=7 {
        put(&store, &u, msg(&format!("m{i}"), Priority::Normal)).await;
    }
    let a = attach(&store, &u).await;
    let s = &a.session;
    let first = store.fill(s, 1, 0, usize::MAX).await.unwrap();
    assert_eq!(seqs(&first.delivered), [1, 2, 3]);
    assert_eq!((first.queued, first.next_seq), (4, 4));
    // The window is full: nothing more until an ack.
    let none = store.fill(s, 4, 0, usize::MAX).await.unwrap();
    assert!(none.delivered.is_empty());
    let acked = store.ack(s, 2).await.unwrap();
    assert_eq!(
        (acked.acknowledged, acked.in_flight, acked.queued),
        (2, 1, 4)
    );
    // An ack carried by a fill settles first, then the window refills.
    let next = store.fill(s, 4, 3, usize::MAX).await.unwrap();
    assert_eq!(next.acknowledged, 1);
    assert_eq!(texts(&next.delivered), ["m4", "m5", "m6"]);
    // At most `max` at a time.
    store.ack(s, 6).await.unwrap();
    let one = store.fill(s, 7, 0, 1).await.unwrap();
    assert_eq!(seqs(&one.delivered), [7]);
    // An ack past the last delivery settles what was delivered, nothing more.
    let all = store.ack(s, 1000).await.unwrap();
    assert_eq!((all.acknowledged, all.in_flight, all.queued), (1, 0, 0));
    let stats = store.inspect(&u, Some("")).await.unwrap().unwrap();
    assert_eq!((stats.next_seq, stats.in_flight), (8, 0));
    assert_eq!(stats.counters, [7, 7, 7, 0]);
    // Acks are idempotent.
    assert_eq!(store.ack(s, 7).await.unwrap().acknowledged, 0);
}

#[tokio::test]
async fn a_repeated_fill_answers_the_same_deliveries() {
    let (_server, store) = store().await;
    let u = user("carol");
    for t in ["a", "b", "c"] {
        put(&store, &u, msg(t, Priority::Normal)).await;
    }
    let a = attach(&store, &u).await;
    let first = fill_all(&store, &a.session, 1).await;
    // The reply was lost: the node asks again from the seq it expects.
    let again = fill_all(&store, &a.session, 1).await;
    assert_eq!(seqs(&again), seqs(&first));
    assert_eq!(texts(&again), texts(&first));
    put(&store, &u, msg("d", Priority::Normal)).await;
    let later = fill_all(&store, &a.session, 2).await;
    assert_eq!(seqs(&later), [2, 3, 4]);
    assert_eq!(texts(&later), ["b", "c", "d"]);
    let stats = store.inspect(&u, Some("")).await.unwrap().unwrap();
    assert_eq!((stats.in_flight, stats.next_seq), (4, 5));
}

#[tokio::test]
async fn attach_fills_the_window_and_reports_what_still_waits() {
    let config = StoreConfig {
        window: 2,
        ..StoreConfig::default()
    };
    let (_server, store) = store_with(config).await;
    let u = user("dave");
    for i in 0..5 {
        put(&store, &u, msg(&i.to_string(), Priority::Normal)).await;
    }
    let a = store.attach(&u, "", NODE, None, usize::MAX).await.unwrap();
    assert_eq!(seqs(&a.delivered), [1, 2]);
    assert_eq!((a.info.pending, a.next_seq), (3, 3));
    assert!(a.redelivered.is_empty() && !a.info.recovered);
}

#[tokio::test]
async fn ids_payload_bytes_and_priority_come_back_as_sent() {
    let (_server, store) = store().await;
    let u = user("erin");
    let payload: Vec<u8> = (0..=255u8).chain(*b";,1,2;").collect();
    let m = Message::new(payload.clone())
        .with_priority(Priority::High)
        .with_id("id;with,odd:chars");
    put(&store, &u, m).await;
    put(&store, &u, Message::new("")).await;
    let a = attach(&store, &u).await;
    let got = fill_all(&store, &a.session, 1).await;
    assert_eq!(&got[0].payload()[..], &payload[..]);
    assert_eq!(got[0].priority(), Priority::High);
    assert_eq!(got[0].message().id().unwrap().as_str(), "id;with,odd:chars");
    assert!(got[1].payload().is_empty() && got[1].message().id().is_none());
}

#[tokio::test]
async fn an_attached_device_is_named_with_its_owner_and_window_room() {
    let config = StoreConfig {
        window: 2,
        ..StoreConfig::default()
    };
    let (_server, store) = store_with(config).await;
    let u = user("fay");
    let a = attach(&store, &u).await;
    let ready: Vec<_> = {
        let mut out = Vec::new();
        for i in 0..3 {
            let e = store
                .enqueue(&u, &msg(&i.to_string(), Priority::Normal))
                .await;
            let tether::cluster::Enqueued::Accepted(all) = e.unwrap() else {
                panic!("not a duplicate");
            };
            assert_eq!(all[0].owner.as_deref(), Some(NODE));
            out.push(all[0].ready);
        }
        out
    };
    // Two fit the window's room; the third waits for an ack.
    assert_eq!(ready, [true, true, false]);
    store
        .detach(&a.session, 0, tether::CloseReason::Normal)
        .await
        .unwrap();
    let e = store
        .enqueue(&u, &msg("away", Priority::Normal))
        .await
        .unwrap();
    let tether::cluster::Enqueued::Accepted(all) = e else {
        panic!("not a duplicate");
    };
    assert_eq!((all[0].owner.clone(), all[0].ready), (None, false));
}

#[tokio::test]
async fn user_and_device_ids_with_key_syntax_in_them_stay_apart() {
    let (_server, store) = store().await;
    // `}` ends a hash tag early and `}:` could pass for the end of another user's tag.
    let names = ["a", "a}:devs", "{a}", "a:dv:1:b"];
    for name in names {
        put(&store, &user(name), msg(name, Priority::Normal)).await;
    }
    for name in names {
        let a = store
            .attach(&user(name), "x}:m", NODE, None, 10)
            .await
            .unwrap();
        assert_eq!(texts(&a.delivered), [name], "{name}");
        let other = store
            .attach(&user(name), "x", NODE, None, 10)
            .await
            .unwrap();
        assert!(other.delivered.is_empty(), "{name}");
    }
}
