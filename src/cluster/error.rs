//! Why a store operation failed: one error type for the whole store, so a node can tell
//! "Redis is away, answer 503" from "this session was replaced, end it" from a bug.

use thiserror::Error;

use crate::config::ConfigError;
use crate::message::InvalidInput;

/// Why a [`RedisStore`](super::RedisStore) operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A user, message or payload the store refuses at the call (nothing was sent to Redis).
    #[error("invalid input: {0}")]
    Invalid(#[from] InvalidInput),
    /// A device id longer than [`StoreConfig::max_device_id_len`](super::StoreConfig::max_device_id_len).
    #[error("device id is {len} bytes, more than the maximum of {max}")]
    DeviceIdTooLong {
        /// Its length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The node id naming a session's owner is empty.
    #[error("node id is empty")]
    EmptyNodeId,
    /// A stream part: streams are not kept in Redis (see the module documentation).
    #[error("stream parts are not supported by the Redis store")]
    StreamsUnsupported,
    /// A setting of [`StoreConfig`](super::StoreConfig) is out of range.
    #[error("invalid store setting: {0}")]
    Config(#[from] ConfigError),
    /// The session generation is stale: a newer session of the device attached (on this node
    /// or another), or this session already detached. Nothing was changed; the session ends
    /// as replaced.
    #[error("fenced: a newer session of this device holds the mailbox, or it detached")]
    Fenced,
    /// The device mailbox no longer exists (its away lifetime ran out, its device was
    /// evicted, or Redis lost it). Nothing was changed.
    #[error("the device mailbox is gone")]
    Gone,
    /// A device attaching for the first time while the user has the maximum number of device
    /// mailboxes, all of them attached (with one away, the one away longest is evicted).
    #[error("the user already has {max} devices, all attached")]
    TooManyDevices {
        /// The configured maximum.
        max: usize,
    },
    /// Redis answered with an error or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A script answered in a shape this version does not read: a bug, or scripts of another
    /// version under the same SHA (impossible short of a SHA-1 collision).
    #[error("unexpected reply from a store script: {0}")]
    Reply(&'static str),
}

impl StoreError {
    /// Whether Redis could not be reached or cannot serve right now (connection refused or
    /// dropped, timeout, loading, cluster down, a replica mid-failover): retry later; a publish
    /// answers 503. Whether a write that failed this way took effect is unknown.
    pub fn is_unavailable(&self) -> bool {
        use redis::ErrorKind;
        let StoreError::Redis(e) = self else {
            return false;
        };
        e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || matches!(
                e.kind(),
                ErrorKind::BusyLoadingError
                    | ErrorKind::TryAgain
                    | ErrorKind::ClusterDown
                    | ErrorKind::MasterDown
                    | ErrorKind::ReadOnly
                    | ErrorKind::ClusterConnectionNotFound
            )
    }

    /// Whether Redis refused a write because it reached `maxmemory` (with the `noeviction`
    /// policy the store requires). The script did not run: nothing changed.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, StoreError::Redis(e) if e.code() == Some("OOM"))
    }
}
