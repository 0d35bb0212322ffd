//! Bad input is a typed error before anything reaches Redis; bad settings too.

use tether::cluster::{RedisStore, StoreConfig, StoreError};
use tether::{ConfigError, InvalidInput, Message, StreamPart, UserLimits};

use crate::common::*;

#[tokio::test]
async fn bad_input_is_refused_with_a_typed_error_at_each_edge() {
    let config = StoreConfig {
        max_user_id_len: 4,
        max_device_id_len: 3,
        max_message_id_len: 2,
        max_payload_bytes: 5,
        ..StoreConfig::default()
    };
    let (_server, store) = store_with(config).await;
    let ok = user("abcd");
    assert!(store
        .enqueue(&ok, &Message::new("12345").with_id("ab"))
        .await
        .is_ok());
    assert!(matches!(
        store.enqueue(&user("abcde"), &Message::new("x")).await,
        Err(StoreError::Invalid(InvalidInput::UserIdTooLong {
            len: 5,
            max: 4
        }))
    ));
    assert!(matches!(
        store.enqueue(&ok, &Message::new("123456")).await,
        Err(StoreError::Invalid(InvalidInput::PayloadTooLarge {
            len: 6,
            max: 5
        }))
    ));
    assert!(matches!(
        store.enqueue(&ok, &Message::new("x").with_id("abc")).await,
        Err(StoreError::Invalid(InvalidInput::MessageIdTooLong {
            len: 3,
            max: 2
        }))
    ));
    assert!(matches!(
        store.enqueue(&ok, &Message::new("x").with_id("")).await,
        Err(StoreError::Invalid(InvalidInput::EmptyMessageId))
    ));
    let part = Message::new("x").with_stream_part(StreamPart::new("s", 0, true));
    assert!(matches!(
        store.enqueue(&ok, &part).await,
        Err(StoreError::StreamsUnsupported)
    ));
    assert!(store.attach(&ok, "abc", NODE, None, 0).await.is_ok());
    assert!(matches!(
        store.attach(&ok, "abcd", NODE, None, 0).await,
        Err(StoreError::DeviceIdTooLong { len: 4, max: 3 })
    ));
    assert!(matches!(
        store.attach(&ok, "", "", None, 0).await,
        Err(StoreError::EmptyNodeId)
    ));
    let zero = UserLimits {
        max_messages: 0,
        ..UserLimits::default()
    };
    assert!(matches!(
        store.set_limits(&ok, Some(zero)).await,
        Err(StoreError::Invalid(InvalidInput::ZeroLimit { .. }))
    ));
}

#[tokio::test]
async fn settings_out_of_range_are_refused_before_connecting() {
    for (config, setting) in [
        (
            StoreConfig {
                window: 0,
                ..StoreConfig::default()
            },
            "window",
        ),
        (
            StoreConfig {
                max_devices_per_user: 1025,
                ..StoreConfig::default()
            },
            "max_devices_per_user",
        ),
        (
            StoreConfig {
                dedup_max_per_user: 0,
                ..StoreConfig::default()
            },
            "dedup_max_per_user",
        ),
    ] {
        // Nothing listens there: the settings are checked first.
        match RedisStore::connect("redis://127.0.0.1:1", config).await {
            Err(StoreError::Config(ConfigError::OutOfRange { setting: s, .. })) => {
                assert_eq!(s, setting)
            }
            Err(e) => panic!("{setting}: {e}"),
            Ok(_) => panic!("{setting}: connected"),
        }
    }
    assert!(StoreConfig {
        max_devices_per_user: 1024,
        ..StoreConfig::default()
    }
    .validate()
    .is_ok());
}

#[tokio::test]
async fn an_unreachable_redis_is_reported_as_unavailable() {
    let config = StoreConfig {
        connect_timeout: std::time::Duration::from_millis(200),
        ..StoreConfig::default()
    };
    // Port 1 on loopback: nothing listens, the connection is refused.
    match RedisStore::connect("redis://127.0.0.1:1", config).await {
        Err(e) => assert!(e.is_unavailable(), "{e}"),
        Ok(_) => panic!("connected to nothing"),
    }
}
