//! Engine settings: a builder whose every setter documents its default, validated by `build`.

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use crate::breaker::BreakerConfig;
use crate::message::Priority;
use crate::time::Clock;

/// What the duplicate filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DedupMode {
    /// No duplicate detection.
    Off,
    /// Messages with the same id to the same user within the window are duplicates; messages
    /// without an id are never duplicates. The default: an id is the producer saying "this is
    /// the same message", while equal payloads ("ok", "ping") are often distinct messages.
    #[default]
    Ids,
    /// As `Ids`, and messages without an id are duplicates when their payload equals an
    /// earlier one to the same user within the window.
    IdsAndContent,
}

impl DedupMode {
    /// Each mode with the name [`FromStr`] reads and [`Display`](fmt::Display) writes.
    const NAMES: [(Self, &'static str); 3] = [
        (Self::Off, "off"),
        (Self::Ids, "ids"),
        (Self::IdsAndContent, "ids-and-content"),
    ];
}

/// Reads `off`, `ids` or `ids-and-content`, the names settings files and flags use.
///
/// ```
/// use tether::DedupMode;
///
/// assert_eq!("ids-and-content".parse(), Ok(DedupMode::IdsAndContent));
/// assert_eq!(DedupMode::Off.to_string(), "off");
/// assert!("everything".parse::<DedupMode>().is_err());
/// ```
impl FromStr for DedupMode {
    type Err = ParseDedupModeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::NAMES
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(mode, _)| *mode)
            .ok_or(ParseDedupModeError(()))
    }
}

impl fmt::Display for DedupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::NAMES.iter().find(|(m, _)| m == self).map(|(_, n)| *n);
        f.write_str(name.unwrap_or_default())
    }
}

/// A name that is no [`DedupMode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDedupModeError(());

impl fmt::Display for ParseDedupModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected off, ids or ids-and-content")
    }
}

impl std::error::Error for ParseDedupModeError {}

/// What a full mailbox does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Evict the oldest message of the least urgent non-empty band that is no more urgent than
    /// the new message; if every queued message is more urgent, drop the new one. A flood of
    /// Low therefore never pushes out a Critical. The default.
    #[default]
    DropOldest,
    /// Drop the new message (it is listed in the user's missed manifest).
    DropNewest,
    /// Refuse the new message ([`RejectReason::MailboxFull`](crate::RejectReason::MailboxFull)).
    Reject,
}

impl OverflowPolicy {
    /// Each policy with the name [`FromStr`] reads and [`Display`](fmt::Display) writes.
    const NAMES: [(Self, &'static str); 3] = [
        (Self::DropOldest, "drop-oldest"),
        (Self::DropNewest, "drop-newest"),
        (Self::Reject, "reject"),
    ];
}

/// Reads `drop-oldest`, `drop-newest` or `reject`, the names settings files and flags use.
///
/// ```
/// use tether::OverflowPolicy;
///
/// assert_eq!("reject".parse(), Ok(OverflowPolicy::Reject));
/// assert_eq!(OverflowPolicy::DropNewest.to_string(), "drop-newest");
/// assert!("drop-all".parse::<OverflowPolicy>().is_err());
/// ```
impl FromStr for OverflowPolicy {
    type Err = ParseOverflowPolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::NAMES
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(policy, _)| *policy)
            .ok_or(ParseOverflowPolicyError(()))
    }
}

impl fmt::Display for OverflowPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::NAMES.iter().find(|(p, _)| p == self).map(|(_, n)| *n);
        f.write_str(name.unwrap_or_default())
    }
}

/// A name that is no [`OverflowPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOverflowPolicyError(());

impl fmt::Display for ParseOverflowPolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected drop-oldest, drop-newest or reject")
    }
}

impl std::error::Error for ParseOverflowPolicyError {}

/// Caps on what one user's mailbox holds while waiting for delivery (the backlog, not counting
/// the messages in the delivery window). A user with several devices has them on each
/// device's mailbox separately.
///
/// ```
/// use tether::{OverflowPolicy, UserLimits};
///
/// let small = UserLimits { max_messages: 3, max_bytes: 1024, overflow: OverflowPolicy::Reject };
/// assert_eq!(UserLimits::default().max_messages, 1000);
/// # let _ = small;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLimits {
    /// Most messages queued per user. Default 1000.
    pub max_messages: usize,
    /// Most payload bytes queued per user. Default 1 MiB.
    pub max_bytes: usize,
    /// What happens at either cap. Default [`OverflowPolicy::DropOldest`].
    pub overflow: OverflowPolicy,
}

impl Default for UserLimits {
    fn default() -> Self {
        Self {
            max_messages: 1000,
            max_bytes: 1 << 20,
            overflow: OverflowPolicy::DropOldest,
        }
    }
}

/// Fractions of the memory budget at which the engine starts refusing each priority.
///
/// A message of priority P is refused when the bytes held would exceed `fraction(P) * budget`.
/// Critical's fraction is always 1.0: it is refused only when the budget itself would be
/// exceeded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShedThresholds {
    /// Default 0.60.
    pub low: f64,
    /// Default 0.80.
    pub normal: f64,
    /// Default 0.95.
    pub high: f64,
}

impl Default for ShedThresholds {
    fn default() -> Self {
        Self {
            low: 0.60,
            normal: 0.80,
            high: 0.95,
        }
    }
}

/// The validated settings an engine runs with. See [`EngineBuilder`] for each default.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) shards: usize,
    pub(crate) inbox_capacity: usize,
    pub(crate) window: usize,
    pub(crate) max_payload_bytes: usize,
    pub(crate) max_user_id_len: usize,
    pub(crate) max_message_id_len: usize,
    pub(crate) max_device_id_len: usize,
    pub(crate) max_devices_per_user: usize,
    pub(crate) user_limits: UserLimits,
    pub(crate) memory_budget_bytes: u64,
    pub(crate) shed: ShedThresholds,
    pub(crate) max_users: usize,
    pub(crate) missed_ids: usize,
    pub(crate) default_ttl: [Option<Duration>; 4],
    pub(crate) keep_after_normal: Duration,
    pub(crate) keep_after_abnormal: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) dedup: DedupMode,
    pub(crate) dedup_window: Duration,
    pub(crate) dedup_max_entries: usize,
    pub(crate) clock: Clock,
    pub(crate) latency_metrics: bool,
    pub(crate) breaker: BreakerConfig,
    pub(crate) stream_timeout: Duration,
    pub(crate) max_streams_per_user: usize,
    pub(crate) stream_reorder_window: u32,
}

impl Config {
    /// Number of shards (worker threads).
    pub fn shards(&self) -> usize {
        self.shards
    }
    /// Most messages in flight (delivered, unacknowledged) per device mailbox.
    pub fn window(&self) -> usize {
        self.window
    }
    /// Per-user caps applied when a user has no override.
    pub fn user_limits(&self) -> UserLimits {
        self.user_limits
    }
    /// Engine-wide budget for held payload bytes.
    pub fn memory_budget_bytes(&self) -> u64 {
        self.memory_budget_bytes
    }
    /// Largest payload accepted by a send.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }
    /// Most device mailboxes per user.
    pub fn max_devices_per_user(&self) -> usize {
        self.max_devices_per_user
    }
}

/// Builds an [`Engine`](crate::Engine).
///
/// ```
/// use tether::{Engine, UserLimits, OverflowPolicy};
///
/// let engine = Engine::builder()
///     .shards(2)
///     .window(256)
///     .user_limits(UserLimits { max_messages: 100, max_bytes: 64 * 1024, overflow: OverflowPolicy::DropOldest })
///     .memory_budget_bytes(64 << 20)
///     .build()
///     .unwrap();
/// assert_eq!(engine.config().shards(), 2);
///
/// assert!(Engine::builder().window(0).build().is_err());
/// ```
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    config: Config,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        let shards = std::thread::available_parallelism()
            .map(NonZeroUsize::get)
            .unwrap_or(1);
        Self {
            config: Config {
                shards,
                inbox_capacity: 16 * 1024,
                window: 1024,
                max_payload_bytes: 1 << 20,
                max_user_id_len: 256,
                max_message_id_len: 256,
                max_device_id_len: 64,
                max_devices_per_user: 10,
                user_limits: UserLimits::default(),
                memory_budget_bytes: 1 << 30,
                shed: ShedThresholds::default(),
                max_users: 10_000_000,
                missed_ids: 100,
                default_ttl: [None; 4],
                keep_after_normal: Duration::from_secs(30 * 60),
                keep_after_abnormal: Duration::from_secs(5 * 60),
                idle_timeout: Duration::from_secs(60),
                dedup: DedupMode::Ids,
                dedup_window: Duration::from_secs(120),
                dedup_max_entries: 500_000,
                clock: Clock::system(),
                latency_metrics: true,
                breaker: BreakerConfig::default(),
                stream_timeout: Duration::from_secs(60),
                max_streams_per_user: 64,
                stream_reorder_window: 1024,
            },
        }
    }
}

/// Upper bounds that keep sizes sane (a typo should fail `build`, not allocate terabytes).
const MAX_SHARDS: usize = 1024;
const MAX_INBOX: usize = 1 << 24;
const MAX_WINDOW: usize = 1 << 20;
const MAX_DEVICES: usize = 1024;

impl EngineBuilder {
    /// Number of shards, each one worker thread owning the mailboxes of the users hashed to
    /// it. Default: the machine's available parallelism. Range 1..=1024.
    pub fn shards(mut self, n: usize) -> Self {
        self.config.shards = n;
        self
    }

    /// Commands each shard's inbox ring holds before senders see back-pressure (rounded up to
    /// a power of two). Default 16384. Range 2..=16M.
    pub fn inbox_capacity(mut self, n: usize) -> Self {
        self.config.inbox_capacity = n;
        self
    }

    /// Most messages in flight (delivered but not acknowledged) per user; the rest wait in
    /// their bands. Default 1024. Range 1..=1M.
    pub fn window(mut self, n: usize) -> Self {
        self.config.window = n;
        self
    }

    /// Largest payload a send accepts; larger ones are refused at the call with
    /// [`InvalidInput::PayloadTooLarge`](crate::InvalidInput::PayloadTooLarge). Default 1 MiB.
    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        self.config.max_payload_bytes = n;
        self
    }

    /// Longest user id, in bytes. Default 256. At least 1.
    pub fn max_user_id_len(mut self, n: usize) -> Self {
        self.config.max_user_id_len = n;
        self
    }

    /// Longest message id, in bytes. Default 256. At least 1.
    pub fn max_message_id_len(mut self, n: usize) -> Self {
        self.config.max_message_id_len = n;
        self
    }

    /// Longest device id, in bytes. Default 64. At least 1.
    pub fn max_device_id_len(mut self, n: usize) -> Self {
        self.config.max_device_id_len = n;
        self
    }

    /// Most device mailboxes one user has (see [`DeviceId`](crate::DeviceId)). A device that
    /// connects for the first time while the user has this many evicts the device that has
    /// been away longest (its next connect reports `recovered = false` and
    /// [`ResetReason::DeviceEvicted`](crate::ResetReason::DeviceEvicted)); if every device is
    /// connected, the connect is refused with
    /// [`ConnectError::TooManyDevices`](crate::ConnectError::TooManyDevices). Default 10.
    /// Range 1..=1024.
    pub fn max_devices_per_user(mut self, n: usize) -> Self {
        self.config.max_devices_per_user = n;
        self
    }

    /// Per-user caps for users without an override (see
    /// [`Engine::set_user_limits`](crate::Engine::set_user_limits)). Default
    /// [`UserLimits::default`]: 1000 messages, 1 MiB, DropOldest. Both caps at least 1.
    pub fn user_limits(mut self, limits: UserLimits) -> Self {
        self.config.user_limits = limits;
        self
    }

    /// Engine-wide budget for payload bytes held (queued and in flight). Default 1 GiB.
    /// At least 1.
    pub fn memory_budget_bytes(mut self, n: u64) -> Self {
        self.config.memory_budget_bytes = n;
        self
    }

    /// Where shedding starts for each priority. Default [`ShedThresholds::default`]; each
    /// fraction in (0, 1] and `low <= normal <= high`.
    pub fn shed_thresholds(mut self, t: ShedThresholds) -> Self {
        self.config.shed = t;
        self
    }

    /// Most users the engine keeps mailboxes for (split evenly across shards; a user counts
    /// once however many device mailboxes it has); a send that would add one more is rejected
    /// with [`RejectReason::TooManyUsers`](crate::RejectReason::TooManyUsers), a connect with
    /// [`ConnectError::TooManyUsers`](crate::ConnectError::TooManyUsers).
    /// Default 10,000,000. At least 1.
    pub fn max_users(mut self, n: usize) -> Self {
        self.config.max_users = n;
        self
    }

    /// How many ids of dropped messages a missed manifest keeps (the most recent). Default 100.
    pub fn missed_ids(mut self, n: usize) -> Self {
        self.config.missed_ids = n;
        self
    }

    /// The TTL for messages of `priority` sent without one (`None`: they wait until delivered,
    /// evicted or their mailbox expires). Default `None` for every priority.
    pub fn default_ttl(mut self, priority: Priority, ttl: Option<Duration>) -> Self {
        self.config.default_ttl[priority.index()] = ttl;
        self
    }

    /// How long a mailbox is kept after its session closed: `after_normal` after a clean
    /// close, `after_abnormal` after a broken connection (or a dropped session). A mailbox
    /// that never had a session counts as closed normally when it was created. When the time
    /// is up the mailbox and everything in it are removed, and a later connect reports
    /// `recovered = false`. Defaults 30 minutes and 5 minutes; each at least 1 ms.
    pub fn keep_away_mailboxes(mut self, after_normal: Duration, after_abnormal: Duration) -> Self {
        self.config.keep_after_normal = after_normal;
        self.config.keep_after_abnormal = after_abnormal;
        self
    }

    /// How long a mailbox that holds nothing (no session, no message, no recorded loss) is
    /// kept before its memory is returned. Default 60 seconds; at least 1 ms.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.config.idle_timeout = idle;
        self
    }

    /// What counts as a duplicate. Default [`DedupMode::Ids`].
    pub fn dedup(mut self, mode: DedupMode) -> Self {
        self.config.dedup = mode;
        self
    }

    /// How long a fingerprint is remembered: at least this long, at most twice. Default 2
    /// minutes; at least 1 ms.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.config.dedup_window = window;
        self
    }

    /// Most fingerprints one shard remembers per generation (two generations); past it the
    /// window rotates early. Default 500,000 (about 10 MiB per shard when full). At least 1.
    pub fn dedup_max_entries(mut self, n: usize) -> Self {
        self.config.dedup_max_entries = n;
        self
    }

    /// Whether shards record the enqueue-to-delivery and delivery-to-ack latency histograms.
    /// Counters and gauges are always kept (they cost a plain increment). Default true.
    pub fn latency_metrics(mut self, on: bool) -> Self {
        self.config.latency_metrics = on;
        self
    }

    /// Each session's circuit breaker: failures to open it (default 5), first cooldown
    /// (1 s), longest cooldown (30 s). See [`BreakerConfig`].
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.config.breaker = config;
        self
    }

    /// How long an incomplete stream may go without a new part before it is aborted with
    /// [`AbortReason::Timeout`](crate::AbortReason::Timeout) (incomplete: a part before the
    /// last is missing, or the last has not arrived). Also how long a finished stream is
    /// remembered, so its late parts are refused. Default 60 seconds; at least 1 ms.
    pub fn stream_timeout(mut self, timeout: Duration) -> Self {
        self.config.stream_timeout = timeout;
        self
    }

    /// Most open streams per user, counting aborted ones whose marker is not delivered yet;
    /// a part that would open one more is refused with
    /// [`RejectReason::TooManyStreams`](crate::RejectReason::TooManyStreams). Also how many
    /// finished streams are remembered per user. Default 64; at least 1.
    pub fn max_streams_per_user(mut self, n: usize) -> Self {
        self.config.max_streams_per_user = n;
        self
    }

    /// How far ahead of its stream's first missing part a part may arrive and be held back:
    /// part `i` is refused with
    /// [`RejectReason::StreamWindowFull`](crate::RejectReason::StreamWindowFull) when
    /// `i >= first_missing + n`. Held parts also count against the user's caps. Default 1024;
    /// from 1 to 65,536 (a status lists the missing indices inside the window, so the window
    /// bounds what one status or abort costs the shard).
    pub fn stream_reorder_window(mut self, n: u32) -> Self {
        self.config.stream_reorder_window = n;
        self
    }

    /// The time source. Default [`Clock::system`]; tests use [`Clock::manual`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.config.clock = clock;
        self
    }

    /// Checks the settings (the engine starts from them in
    /// [`build`](Self::build)).
    pub(crate) fn validate(self) -> Result<Config, ConfigError> {
        let c = self.config;
        let range = |name: &'static str, value: usize, min: usize, max: usize| {
            if value < min || value > max {
                Err(ConfigError::OutOfRange {
                    setting: name,
                    value: value as u64,
                    min: min as u64,
                    max: max as u64,
                })
            } else {
                Ok(())
            }
        };
        range("shards", c.shards, 1, MAX_SHARDS)?;
        range("inbox_capacity", c.inbox_capacity, 2, MAX_INBOX)?;
        range("window", c.window, 1, MAX_WINDOW)?;
        range("max_payload_bytes", c.max_payload_bytes, 1, usize::MAX)?;
        range("max_user_id_len", c.max_user_id_len, 1, usize::MAX)?;
        range("max_message_id_len", c.max_message_id_len, 1, usize::MAX)?;
        range("max_device_id_len", c.max_device_id_len, 1, usize::MAX)?;
        range(
            "max_devices_per_user",
            c.max_devices_per_user,
            1,
            MAX_DEVICES,
        )?;
        range(
            "user_limits.max_messages",
            c.user_limits.max_messages,
            1,
            usize::MAX,
        )?;
        range(
            "user_limits.max_bytes",
            c.user_limits.max_bytes,
            1,
            usize::MAX,
        )?;
        range("max_users", c.max_users, 1, usize::MAX)?;
        range("dedup_max_entries", c.dedup_max_entries, 1, usize::MAX)?;
        range(
            "max_streams_per_user",
            c.max_streams_per_user,
            1,
            usize::MAX,
        )?;
        range(
            "stream_reorder_window",
            c.stream_reorder_window as usize,
            1,
            1 << 16,
        )?;
        let at_least_1ms = |name: &'static str, d: Duration| {
            if d < Duration::from_millis(1) {
                Err(ConfigError::OutOfRange {
                    setting: name,
                    value: d.as_millis() as u64,
                    min: 1,
                    max: u64::MAX,
                })
            } else {
                Ok(())
            }
        };
        at_least_1ms("keep_away_mailboxes.after_normal", c.keep_after_normal)?;
        at_least_1ms("keep_away_mailboxes.after_abnormal", c.keep_after_abnormal)?;
        at_least_1ms("idle_timeout", c.idle_timeout)?;
        at_least_1ms("dedup_window", c.dedup_window)?;
        at_least_1ms("stream_timeout", c.stream_timeout)?;
        if c.memory_budget_bytes == 0 {
            return Err(ConfigError::OutOfRange {
                setting: "memory_budget_bytes",
                value: 0,
                min: 1,
                max: u64::MAX,
            });
        }
        let t = c.shed;
        let ok = |f: f64| f > 0.0 && f <= 1.0;
        if !(ok(t.low) && ok(t.normal) && ok(t.high) && t.low <= t.normal && t.normal <= t.high) {
            return Err(ConfigError::ShedThresholds(t));
        }
        Ok(c)
    }
}

/// Why [`EngineBuilder::build`](crate::EngineBuilder::build) refused the settings.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A numeric setting is outside its range.
    #[error("{setting} = {value} is outside {min}..={max}")]
    OutOfRange {
        /// The setting's name.
        setting: &'static str,
        /// The value given.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// Shed thresholds must be in (0, 1] and ordered low <= normal <= high.
    #[error("shed thresholds {0:?} must be in (0, 1] with low <= normal <= high")]
    ShedThresholds(ShedThresholds),
    /// A worker thread could not be started.
    #[error("could not start a shard worker: {0}")]
    Spawn(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_policy_names_round_trip() {
        for (policy, name) in OverflowPolicy::NAMES {
            assert_eq!(name.parse(), Ok(policy));
            assert_eq!(policy.to_string(), name);
        }
        for bad in ["", "Reject", "drop_oldest", " reject"] {
            assert_eq!(
                bad.parse::<OverflowPolicy>(),
                Err(ParseOverflowPolicyError(()))
            );
        }
    }

    #[test]
    fn dedup_mode_names_round_trip() {
        for (mode, name) in DedupMode::NAMES {
            assert_eq!(name.parse(), Ok(mode));
            assert_eq!(mode.to_string(), name);
        }
        for bad in ["", "Ids", "ids_and_content", "ids "] {
            assert_eq!(bad.parse::<DedupMode>(), Err(ParseDedupModeError(())));
        }
    }
}
