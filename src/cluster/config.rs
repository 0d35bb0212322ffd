//! The store's settings: what each script is told about caps, lifetimes and dedup, with the
//! embedded engine's defaults.

use std::time::Duration;

use crate::config::{ConfigError, DedupMode, UserLimits};
use crate::message::Priority;

/// Settings of a [`RedisStore`](super::RedisStore). Every node of a cluster must run with
/// the same ones: they travel with each script call, and Redis keeps no copy.
///
/// ```
/// use tether::cluster::StoreConfig;
///
/// let config = StoreConfig { window: 256, ..StoreConfig::default() };
/// assert!(config.validate().is_ok());
/// assert!(StoreConfig { window: 0, ..config }.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Most messages in flight (delivered, unacknowledged) per device mailbox. Default 1024,
    /// range 1..=1M.
    pub window: usize,
    /// Caps per device mailbox for users without an override
    /// ([`RedisStore::set_limits`](super::RedisStore::set_limits)). Default
    /// [`UserLimits::default`]; both caps at least 1.
    pub user_limits: UserLimits,
    /// TTL of messages of each priority sent without one (`None`: no deadline). Default none.
    pub default_ttl: [Option<Duration>; 4],
    /// What counts as a duplicate. Default [`DedupMode::Ids`].
    pub dedup: DedupMode,
    /// How long a fingerprint is remembered. Default 120 s, at least 1 ms. Durations are
    /// taken in whole milliseconds, at most about 278 years.
    pub dedup_window: Duration,
    /// Most fingerprints remembered per user; beyond it the soonest forgotten go first, so
    /// under a flood the window shrinks instead of Redis memory growing. Default 10,000,
    /// at least 1.
    pub dedup_max_per_user: usize,
    /// Ids of lost messages a missed manifest keeps (the most recent). Default 100.
    pub missed_ids: usize,
    /// How long a device mailbox lives after a clean close (and a mailbox created by a send
    /// before any device, from its creation). Default 30 min, at least 1 ms.
    pub keep_after_normal: Duration,
    /// How long a device mailbox lives after a broken connection. Default 5 min, at least 1 ms.
    pub keep_after_abnormal: Duration,
    /// Most device mailboxes per user. Default 10, range 1..=1024.
    pub max_devices_per_user: usize,
    /// Longest device id, in bytes. Default 64, at least 1.
    pub max_device_id_len: usize,
    /// Longest user id, in bytes. Default 256, at least 1.
    pub max_user_id_len: usize,
    /// Longest message id, in bytes. Default 256, at least 1.
    pub max_message_id_len: usize,
    /// Largest payload accepted. Default 1 MiB, range 1..=512 MiB (Redis's string limit).
    pub max_payload_bytes: usize,
    /// How long connecting to a Redis node may take. Default 2 s, at least 1 ms.
    pub connect_timeout: Duration,
    /// How long a request may wait for its reply before it fails as unavailable (a Redis
    /// that stopped answering must not hang publishers and sessions). Default 5 s, at least
    /// 1 ms.
    pub response_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            window: 1024,
            user_limits: UserLimits::default(),
            default_ttl: [None; 4],
            dedup: DedupMode::Ids,
            dedup_window: Duration::from_secs(120),
            dedup_max_per_user: 10_000,
            missed_ids: 100,
            keep_after_normal: Duration::from_secs(30 * 60),
            keep_after_abnormal: Duration::from_secs(5 * 60),
            max_devices_per_user: 10,
            max_device_id_len: 64,
            max_user_id_len: 256,
            max_message_id_len: 256,
            max_payload_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
        }
    }
}

/// The longest duration the scripts are given, in ms (about 278 years): the scripts add it to
/// the server's clock in Lua numbers (doubles), which are exact only below 2^53.
pub(super) const MAX_MS: u64 = 1 << 43;

/// Milliseconds, at most [`MAX_MS`] (a message whose TTL ends in 278 years never expires in
/// practice either).
pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).min(MAX_MS)
}

impl StoreConfig {
    /// Checks every setting against its range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn range(setting: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange {
                    setting,
                    value,
                    min,
                    max,
                })
            }
        }
        let n = |v: usize| v as u64;
        range("window", n(self.window), 1, 1 << 20)?;
        range(
            "user_limits.max_messages",
            n(self.user_limits.max_messages),
            1,
            u64::MAX,
        )?;
        range(
            "user_limits.max_bytes",
            n(self.user_limits.max_bytes),
            1,
            u64::MAX,
        )?;
        range("dedup_window_ms", ms(self.dedup_window), 1, MAX_MS)?;
        range(
            "dedup_max_per_user",
            n(self.dedup_max_per_user),
            1,
            u64::MAX,
        )?;
        range(
            "keep_after_normal_ms",
            ms(self.keep_after_normal),
            1,
            MAX_MS,
        )?;
        range(
            "keep_after_abnormal_ms",
            ms(self.keep_after_abnormal),
            1,
            MAX_MS,
        )?;
        range(
            "max_devices_per_user",
            n(self.max_devices_per_user),
            1,
            1024,
        )?;
        range("max_device_id_len", n(self.max_device_id_len), 1, u64::MAX)?;
        range("max_user_id_len", n(self.max_user_id_len), 1, u64::MAX)?;
        range(
            "max_message_id_len",
            n(self.max_message_id_len),
            1,
            u64::MAX,
        )?;
        range("max_payload_bytes", n(self.max_payload_bytes), 1, 512 << 20)?;
        range("connect_timeout_ms", ms(self.connect_timeout), 1, MAX_MS)?;
        range("response_timeout_ms", ms(self.response_timeout), 1, MAX_MS)?;
        for p in Priority::ALL {
            if let Some(ttl) = self.default_ttl[p.index()] {
                range("default_ttl_ms", ms(ttl), 1, MAX_MS)?;
            }
        }
        Ok(())
    }
}
