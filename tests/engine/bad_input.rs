//! Every input the engine refuses, at the exact edges, with the message handed back; acks
//! that are refused change nothing; settings that `build` refuses; back-pressure on a full
//! inbox.

use std::time::Duration;

use tether::{
    AckError, ConfigError, ConnectError, Engine, InvalidInput, Message, OverflowPolicy, Priority,
    SendError, SendOutcome, ShedThresholds, TrySendError, UserId, UserLimits,
};

use crate::common::{recv, user};

/// Checks a refused `try_send`: the error and the untouched message.
fn expect_try_invalid(r: Result<(), TrySendError>, error: InvalidInput, payload: &[u8]) {
    match r {
        Err(TrySendError::Invalid { error: e, message }) => {
            assert_eq!(e, error);
            assert_eq!(&message.payload()[..], payload);
        }
        Err(e) => panic!("expected Invalid({error:?}), got {e:?}"),
        Ok(()) => panic!("expected Invalid({error:?}), got Ok"),
    }
}

/// Checks a refused async send: the error, and that `into_inner` gives the message back.
fn expect_send_invalid<T>(r: Result<T, SendError>, error: InvalidInput, payload: &[u8]) {
    let e = match r {
        Err(e) => e,
        Ok(_) => panic!("expected Invalid({error:?}), got Ok"),
    };
    assert!(
        matches!(&e, SendError::Invalid { error: got, .. } if *got == error),
        "expected Invalid({error:?}), got {e:?}"
    );
    let message = e.into_inner().expect("the message comes back");
    assert_eq!(&message.payload()[..], payload);
}

#[test]
fn an_empty_user_id_is_refused() {
    assert_eq!(UserId::new("").unwrap_err(), InvalidInput::EmptyUserId);
    assert_eq!(UserId::new("x").unwrap().as_str(), "x");
}

#[tokio::test]
async fn user_id_length_is_checked_at_the_exact_edge() {
    let engine = Engine::builder()
        .shards(2)
        .max_user_id_len(8)
        .build()
        .unwrap();
    let at_max = user("12345678");
    let too_long = user("123456789");
    let err = InvalidInput::UserIdTooLong { len: 9, max: 8 };

    engine.try_send(&at_max, Message::new("a")).unwrap();
    engine.send(&at_max, Message::new("b")).await.unwrap();
    // send_blocking on the runtime thread is harmless here: the inbox has room (and the shard
    // workers do not need this runtime), so it returns without parking for long.
    engine.send_blocking(&at_max, Message::new("c")).unwrap();
    assert_eq!(
        engine
            .send_confirmed(&at_max, Message::new("d"))
            .await
            .unwrap(),
        SendOutcome::Queued { evicted: 0 }
    );
    engine.set_user_limits(&at_max, None).await.unwrap();
    let mut s = engine.connect(&at_max, None).await.unwrap();
    for expected in ["a", "b", "c", "d"] {
        assert_eq!(&recv(&mut s).await.payload()[..], expected.as_bytes());
    }

    expect_try_invalid(
        engine.try_send(&too_long, Message::new("e")),
        err.clone(),
        b"e",
    );
    expect_send_invalid(
        engine.send(&too_long, Message::new("f")).await,
        err.clone(),
        b"f",
    );
    expect_send_invalid(
        engine.send_confirmed(&too_long, Message::new("g")).await,
        err.clone(),
        b"g",
    );
    expect_send_invalid(
        engine.send_blocking(&too_long, Message::new("h")),
        err.clone(),
        b"h",
    );
    assert_eq!(
        engine.connect(&too_long, None).await.unwrap_err(),
        ConnectError::Invalid(err.clone())
    );
    assert_eq!(
        engine.set_user_limits(&too_long, None).await.unwrap_err(),
        tether::SetLimitsError::Invalid(err)
    );
    engine.barrier().await;
    assert!(engine.mailbox_stats(&too_long).await.is_none());
}

#[tokio::test]
async fn payload_size_is_checked_at_the_exact_edge_and_the_message_comes_back() {
    let engine = Engine::builder()
        .shards(1)
        .max_payload_bytes(16)
        .build()
        .unwrap();
    let u = user("payload");
    let at_max = vec![7u8; 16];
    let too_big = vec![9u8; 17];
    let err = InvalidInput::PayloadTooLarge { len: 17, max: 16 };

    assert_eq!(
        engine
            .send_confirmed(&u, Message::new(at_max.clone()))
            .await
            .unwrap(),
        SendOutcome::Queued { evicted: 0 }
    );
    engine.try_send(&u, Message::new(at_max.clone())).unwrap();

    let message = Message::new(too_big.clone())
        .with_priority(Priority::High)
        .with_id("big-1");
    let returned = match engine.try_send(&u, message) {
        Err(e @ TrySendError::Invalid { .. }) => {
            assert!(matches!(&e, TrySendError::Invalid { error, .. } if *error == err));
            e.into_inner().unwrap()
        }
        Err(e) => panic!("expected Invalid, got {e:?}"),
        Ok(()) => panic!("an oversize payload was accepted"),
    };
    assert_eq!(&returned.payload()[..], &too_big[..]);
    assert_eq!(returned.priority(), Priority::High);
    assert_eq!(returned.id().unwrap().as_str(), "big-1");

    expect_send_invalid(
        engine.send(&u, Message::new(too_big.clone())).await,
        err.clone(),
        &too_big,
    );
    expect_send_invalid(
        engine
            .send_confirmed(&u, Message::new(too_big.clone()))
            .await,
        err.clone(),
        &too_big,
    );
    expect_send_invalid(
        engine.send_blocking(&u, Message::new(too_big.clone())),
        err,
        &too_big,
    );
    engine.barrier().await;
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(stats.queued(), 2);
    assert_eq!(stats.queued_bytes, 32);
    assert_eq!(stats.missed, 0, "refused at the call, not a loss");
}

#[tokio::test]
async fn message_ids_must_be_non_empty_and_within_the_maximum() {
    let engine = Engine::builder()
        .shards(1)
        .max_message_id_len(4)
        .build()
        .unwrap();
    let u = user("ids");
    assert_eq!(
        engine
            .send_confirmed(&u, Message::new("ok").with_id("abcd"))
            .await
            .unwrap(),
        SendOutcome::Queued { evicted: 0 }
    );
    expect_try_invalid(
        engine.try_send(&u, Message::new("long").with_id("abcde")),
        InvalidInput::MessageIdTooLong { len: 5, max: 4 },
        b"long",
    );
    expect_send_invalid(
        engine
            .send_confirmed(&u, Message::new("long").with_id("abcde"))
            .await,
        InvalidInput::MessageIdTooLong { len: 5, max: 4 },
        b"long",
    );
    expect_try_invalid(
        engine.try_send(&u, Message::new("empty").with_id("")),
        InvalidInput::EmptyMessageId,
        b"empty",
    );
    expect_send_invalid(
        engine.send(&u, Message::new("empty").with_id("")).await,
        InvalidInput::EmptyMessageId,
        b"empty",
    );
    assert_eq!(engine.mailbox_stats(&u).await.unwrap().queued(), 1);
}

#[tokio::test]
async fn an_ack_of_a_never_delivered_seq_is_refused_and_changes_nothing() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let u = user("acks");
    let mut s = engine.connect(&u, None).await.unwrap();
    assert_eq!(
        s.ack(1),
        Err(AckError::NotDelivered {
            seq: 1,
            last_received: 0
        })
    );
    for i in 0..3 {
        engine
            .send(&u, Message::new(format!("m{i}")))
            .await
            .unwrap();
    }
    engine.barrier().await;
    let before = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(before.in_flight, 3);

    // Delivered to the outbox but not yet received by this session: still refused.
    assert_eq!(recv(&mut s).await.seq(), 1);
    assert_eq!(recv(&mut s).await.seq(), 2);
    assert_eq!(
        s.ack(3),
        Err(AckError::NotDelivered {
            seq: 3,
            last_received: 2
        })
    );
    assert!(matches!(
        s.ack(u64::MAX),
        Err(AckError::NotDelivered { seq: u64::MAX, .. })
    ));
    engine.barrier().await;
    assert_eq!(engine.mailbox_stats(&u).await.unwrap(), before);

    // A valid ack afterwards works.
    s.ack(2).unwrap();
    engine.barrier().await;
    let after = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(after.in_flight, 1);
    assert_eq!(after.in_flight_bytes, 2);
    assert_eq!(recv(&mut s).await.seq(), 3);
    s.ack(3).unwrap();
    engine.barrier().await;
    assert_eq!(engine.mailbox_stats(&u).await.unwrap().in_flight, 0);
}

#[tokio::test]
async fn an_ack_after_the_session_was_replaced_is_ended() {
    let engine = Engine::builder().shards(1).build().unwrap();
    let u = user("replaced");
    let mut old = engine.connect(&u, None).await.unwrap();
    engine.send(&u, Message::new("m0")).await.unwrap();
    assert_eq!(recv(&mut old).await.seq(), 1);
    let new = engine.connect(&u, None).await.unwrap();
    assert_eq!(old.ack(1), Err(AckError::Ended));
    engine.barrier().await;
    assert_eq!(engine.mailbox_stats(&u).await.unwrap().in_flight, 1);
    assert_eq!(new.info().redelivered, 1);
}

fn out_of_range(r: Result<Engine, ConfigError>, name: &str, value: u64) {
    match r {
        Err(ConfigError::OutOfRange {
            setting, value: v, ..
        }) => {
            assert_eq!((setting, v), (name, value));
        }
        Err(e) => panic!("{name}: expected OutOfRange, got {e:?}"),
        Ok(_) => panic!("{name} = {value} was accepted"),
    }
}

#[test]
fn build_refuses_settings_out_of_range() {
    let b = Engine::builder;
    out_of_range(b().window(0).build(), "window", 0);
    out_of_range(b().window((1 << 20) + 1).build(), "window", (1 << 20) + 1);
    out_of_range(b().shards(0).build(), "shards", 0);
    out_of_range(b().shards(1025).build(), "shards", 1025);
    out_of_range(b().inbox_capacity(1).build(), "inbox_capacity", 1);
    out_of_range(b().inbox_capacity(0).build(), "inbox_capacity", 0);
    out_of_range(b().max_payload_bytes(0).build(), "max_payload_bytes", 0);
    out_of_range(b().max_user_id_len(0).build(), "max_user_id_len", 0);
    out_of_range(b().max_message_id_len(0).build(), "max_message_id_len", 0);
    out_of_range(b().max_users(0).build(), "max_users", 0);
    out_of_range(b().memory_budget_bytes(0).build(), "memory_budget_bytes", 0);
    let limits = |max_messages, max_bytes| UserLimits {
        max_messages,
        max_bytes,
        overflow: OverflowPolicy::DropOldest,
    };
    out_of_range(
        b().user_limits(limits(0, 10)).build(),
        "user_limits.max_messages",
        0,
    );
    out_of_range(
        b().user_limits(limits(10, 0)).build(),
        "user_limits.max_bytes",
        0,
    );

    // The edges themselves are accepted.
    let engine = b()
        .window(1)
        .shards(1)
        .inbox_capacity(2)
        .user_limits(limits(1, 1))
        .memory_budget_bytes(1)
        .build()
        .unwrap();
    assert_eq!(engine.config().window(), 1);
    assert_eq!(engine.config().shards(), 1);
}

#[test]
fn build_refuses_bad_shed_thresholds() {
    let t = |low, normal, high| ShedThresholds { low, normal, high };
    for bad in [
        t(0.9, 0.8, 0.95),      // low > normal
        t(0.6, 0.96, 0.95),     // normal > high
        t(0.0, 0.8, 0.95),      // zero
        t(-0.1, 0.8, 0.95),     // negative
        t(0.6, 0.8, 1.5),       // above 1
        t(f64::NAN, 0.8, 0.95), // not a number
    ] {
        match Engine::builder().shed_thresholds(bad).build() {
            Err(ConfigError::ShedThresholds(got)) => {
                assert_eq!(format!("{got:?}"), format!("{bad:?}"));
            }
            Err(e) => panic!("{bad:?}: expected ShedThresholds, got {e:?}"),
            Ok(_) => panic!("{bad:?} was accepted"),
        }
    }
    for good in [t(1.0, 1.0, 1.0), t(0.5, 0.5, 0.5), t(0.01, 0.5, 1.0)] {
        assert!(
            Engine::builder()
                .shards(1)
                .shed_thresholds(good)
                .build()
                .is_ok(),
            "{good:?}"
        );
    }
}

#[tokio::test]
async fn try_send_on_a_full_inbox_returns_full_with_the_message() {
    let engine = Engine::builder()
        .shards(1)
        .inbox_capacity(2)
        .user_limits(UserLimits {
            max_messages: 2_000_000,
            max_bytes: usize::MAX,
            overflow: OverflowPolicy::Reject,
        })
        .build()
        .unwrap();
    let u = user("pressure");
    let mut accepted = 0u64;
    let mut full = None;
    for i in 0..1_000_000u64 {
        match engine.try_send(&u, Message::new(i.to_le_bytes().to_vec())) {
            Ok(()) => accepted += 1,
            Err(TrySendError::Full(message)) => {
                full = Some((i, message));
                break;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    let (i, message) = full.expect("a 2-slot inbox never reported Full in 1M tries");
    assert_eq!(&message.payload()[..], &i.to_le_bytes());
    // The refused message can be sent again, waiting for space this time.
    engine.send(&u, message).await.unwrap();
    accepted += 1;

    engine.barrier().await;
    let stats = engine.mailbox_stats(&u).await.unwrap();
    assert_eq!(stats.queued() as u64, accepted);
    assert_eq!(stats.missed, 0);
    // Every accepted message is there, in order.
    let mut s = engine.connect(&u, None).await.unwrap();
    for k in 0..accepted {
        let d = recv(&mut s).await;
        assert_eq!(d.seq(), k + 1);
        assert_eq!(&d.payload()[..], &k.to_le_bytes());
        s.ack(d.seq()).unwrap();
    }
}

#[tokio::test]
async fn per_user_overrides_are_validated_bounded_and_outlive_the_mailbox() {
    use tether::{Clock, OverflowPolicy, RejectReason, SetLimitsError, UserLimits};

    let clock = Clock::manual();
    let engine = Engine::builder()
        .shards(1)
        .max_users(1)
        .clock(clock.clone())
        .keep_away_mailboxes(Duration::from_secs(1), Duration::from_secs(1))
        .build()
        .unwrap();
    let (a, b) = (UserId::new("a").unwrap(), UserId::new("b").unwrap());
    let one = UserLimits {
        max_messages: 1,
        max_bytes: 100,
        overflow: OverflowPolicy::Reject,
    };
    let zero = UserLimits {
        max_messages: 0,
        ..one
    };
    assert!(matches!(
        engine.set_user_limits(&a, Some(zero)).await,
        Err(SetLimitsError::Invalid(InvalidInput::ZeroLimit {
            setting: "max_messages"
        }))
    ));
    engine.set_user_limits(&a, Some(one)).await.unwrap();
    assert_eq!(
        engine.set_user_limits(&b, Some(one)).await,
        Err(SetLimitsError::TooManyUsers),
        "max_users(1) bounds overrides too"
    );
    // The override applies, and survives the mailbox's expiry.
    for round in 0..2 {
        engine.send(&a, Message::new("1")).await.unwrap();
        let second = engine.send_confirmed(&a, Message::new("2")).await.unwrap();
        assert_eq!(
            second,
            SendOutcome::Rejected(RejectReason::MailboxFull),
            "round {round}"
        );
        engine.barrier().await;
        clock.advance(Duration::from_secs(1));
        engine.barrier().await;
        assert!(engine.mailbox_stats(&a).await.is_none(), "expired");
    }
    engine.set_user_limits(&a, None).await.unwrap();
    engine.set_user_limits(&b, Some(one)).await.unwrap();
}
