//! Caps per device mailbox and each overflow policy.

use tether::cluster::StoreConfig;
use tether::{Message, OverflowPolicy, Priority, RejectReason, SendOutcome, UserLimits};

use crate::common::*;

fn capped(max_messages: usize, max_bytes: usize, overflow: OverflowPolicy) -> StoreConfig {
    StoreConfig {
        user_limits: UserLimits {
            max_messages,
            max_bytes,
            overflow,
        },
        ..StoreConfig::default()
    }
}

fn with_id(text: &str, p: tether::Priority) -> Message {
    msg(text, p).with_id(text)
}

#[tokio::test]
async fn drop_oldest_evicts_the_oldest_of_the_least_urgent_band() {
    let (_server, store) = store_with(capped(3, 1 << 20, OverflowPolicy::DropOldest)).await;
    let u = user("alice");
    for (t, p) in [
        ("n1", Priority::Normal),
        ("l1", Priority::Low),
        ("l2", Priority::Low),
    ] {
        put(&store, &u, with_id(t, p)).await;
    }
    let evicted_one = SendOutcome::Queued { evicted: 1 };
    let e = store
        .enqueue(&u, &with_id("h1", Priority::High))
        .await
        .unwrap();
    assert_eq!(only(e), evicted_one, "evicts l1");
    let e = store
        .enqueue(&u, &with_id("n2", Priority::Normal))
        .await
        .unwrap();
    assert_eq!(only(e), evicted_one, "evicts l2");
    let e = store
        .enqueue(&u, &with_id("c1", Priority::Critical))
        .await
        .unwrap();
    assert_eq!(
        only(e),
        evicted_one,
        "evicts n1, the oldest of the least urgent band"
    );
    let a = attach(&store, &u).await;
    assert_eq!(a.info.missed.evicted, 3);
    assert_eq!(a.info.missed.ids, ["l1".into(), "l2".into(), "n1".into()]);
    let got = fill_all(&store, &a.session, 1).await;
    assert_eq!(texts(&got), ["c1", "h1", "n2"]);
}

#[tokio::test]
async fn drop_oldest_never_evicts_a_more_urgent_message() {
    let (_server, store) = store_with(capped(2, 1 << 20, OverflowPolicy::DropOldest)).await;
    let u = user("bob");
    put(&store, &u, with_id("c1", Priority::Critical)).await;
    put(&store, &u, with_id("h1", Priority::High)).await;
    let dropped = SendOutcome::Rejected(RejectReason::Dropped);
    for (t, p) in [("l1", Priority::Low), ("n1", Priority::Normal)] {
        let e = store.enqueue(&u, &with_id(t, p)).await.unwrap();
        assert_eq!(only(e), dropped, "{t} finds only more urgent messages");
    }
    // Equally urgent may go: the oldest High makes room for the new one.
    let e = store
        .enqueue(&u, &with_id("h2", Priority::High))
        .await
        .unwrap();
    assert_eq!(only(e), SendOutcome::Queued { evicted: 1 });
    let a = attach(&store, &u).await;
    assert_eq!(a.info.missed.evicted, 3);
    assert_eq!(texts(&fill_all(&store, &a.session, 1).await), ["c1", "h2"]);
}

#[tokio::test]
async fn drop_newest_drops_the_newcomer_and_reject_refuses_it() {
    let (_server, store) = store_with(capped(1, 1 << 20, OverflowPolicy::DropNewest)).await;
    let u = user("carol");
    put(&store, &u, msg("kept", Priority::Low)).await;
    let e = store
        .enqueue(&u, &msg("new", Priority::Critical))
        .await
        .unwrap();
    assert_eq!(only(e), SendOutcome::Rejected(RejectReason::Dropped));
    let a = attach(&store, &u).await;
    assert_eq!((a.info.missed.evicted, a.info.missed.rejected), (1, 0));
    assert_eq!(texts(&fill_all(&store, &a.session, 1).await), ["kept"]);

    let v = user("vic");
    let reject = UserLimits {
        max_messages: 1,
        max_bytes: 1 << 20,
        overflow: OverflowPolicy::Reject,
    };
    store.set_limits(&v, Some(reject)).await.unwrap();
    put(&store, &v, msg("kept", Priority::Low)).await;
    let e = store
        .enqueue(&v, &msg("new", Priority::Critical))
        .await
        .unwrap();
    assert_eq!(only(e), SendOutcome::Rejected(RejectReason::MailboxFull));
    // Cleared, the defaults (1, DropNewest) apply again.
    store.set_limits(&v, None).await.unwrap();
    let e = store
        .enqueue(&v, &msg("newer", Priority::Low))
        .await
        .unwrap();
    assert_eq!(only(e), SendOutcome::Rejected(RejectReason::Dropped));
    let a = attach(&store, &v).await;
    assert_eq!((a.info.missed.evicted, a.info.missed.rejected), (1, 1));
}

#[tokio::test]
async fn the_byte_cap_evicts_and_refuses_what_can_never_fit() {
    let (_server, store) = store_with(capped(100, 10, OverflowPolicy::DropOldest)).await;
    let u = user("dave");
    put(&store, &u, msg("12345", Priority::Normal)).await;
    put(&store, &u, msg("67890", Priority::Normal)).await;
    // Exactly at the cap fits; one byte more evicts the oldest.
    let e = store
        .enqueue(&u, &msg("x", Priority::Normal))
        .await
        .unwrap();
    assert_eq!(only(e), SendOutcome::Queued { evicted: 1 });
    let e = store
        .enqueue(&u, &msg("12345678901", Priority::Critical))
        .await
        .unwrap();
    assert_eq!(
        only(e),
        SendOutcome::Rejected(RejectReason::LargerThanMailbox)
    );
    // No device yet: the mailbox that waits for the first one.
    let stats = store.inspect(&u, None).await.unwrap().unwrap();
    assert_eq!((stats.queued_bytes, stats.queued_per_band[2]), (6, 2));
    let a = attach(&store, &u).await;
    assert_eq!((a.info.missed.evicted, a.info.missed.rejected), (1, 1));
    assert_eq!(
        texts(&fill_all(&store, &a.session, 1).await),
        ["67890", "x"]
    );
}

#[tokio::test]
async fn the_message_cap_at_its_edge() {
    let (_server, store) = store_with(capped(3, 1 << 20, OverflowPolicy::Reject)).await;
    let u = user("edge");
    for i in 0..3 {
        put(&store, &u, msg(&i.to_string(), Priority::Normal)).await;
    }
    let e = store
        .enqueue(&u, &msg("3", Priority::Normal))
        .await
        .unwrap();
    assert_eq!(only(e), SendOutcome::Rejected(RejectReason::MailboxFull));
}

#[tokio::test]
async fn an_attached_windows_room_is_not_counted_against_the_cap() {
    let config = StoreConfig {
        window: 3,
        ..capped(2, 1 << 20, OverflowPolicy::DropOldest)
    };
    let (_server, store) = store_with(config).await;
    let u = user("erin");
    let a = attach(&store, &u).await;
    // Three go to the window at the next fill and two wait: all kept.
    for i in 0..5 {
        put(&store, &u, msg(&i.to_string(), Priority::Normal)).await;
    }
    let e = store
        .enqueue(&u, &msg("5", Priority::Normal))
        .await
        .unwrap();
    assert_eq!(only(e), SendOutcome::Queued { evicted: 1 });
    let f = store.fill(&a.session, 1, 0, usize::MAX).await.unwrap();
    assert_eq!(texts(&f.delivered), ["1", "2", "3"]);
    assert_eq!(f.queued, 2);
}
