//! The log's settings: [`LogConfig`], [`Fsync`], and the machine's [`BootId`].

use std::fmt;
use std::time::Duration;

use super::LogError;

/// When a commit syncs the log to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Every commit that wrote something ends with one `fdatasync`: a power cut loses nothing
    /// a commit returned for. The default.
    #[default]
    Always,
    /// A commit syncs when this long has passed since the last sync (by the clock reading the
    /// worker passes to `commit`). A process crash loses nothing written; an operating-system
    /// crash or power cut may lose what was written in the last interval.
    Interval(Duration),
    /// Never sync (the kernel writes back when it likes). A process crash loses nothing
    /// written; an operating-system crash may lose anything not yet written back.
    Never,
}

/// An [`Fsync`] without its interval: what a file header records of its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// [`Fsync::Always`].
    Always,
    /// [`Fsync::Interval`].
    Interval,
    /// [`Fsync::Never`].
    Never,
}

impl Fsync {
    /// The mode without its interval.
    pub fn mode(self) -> FsyncMode {
        match self {
            Fsync::Always => FsyncMode::Always,
            Fsync::Interval(_) => FsyncMode::Interval,
            Fsync::Never => FsyncMode::Never,
        }
    }
}

impl FsyncMode {
    pub(crate) fn code(self) -> u8 {
        match self {
            FsyncMode::Always => 0,
            FsyncMode::Interval => 1,
            FsyncMode::Never => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<FsyncMode> {
        match code {
            0 => Some(FsyncMode::Always),
            1 => Some(FsyncMode::Interval),
            2 => Some(FsyncMode::Never),
            _ => None,
        }
    }
}

/// The identity of one boot of the machine (Linux: `/proc/sys/kernel/random/boot_id`). A log
/// written in another boot than the current one may have lost unsynced bytes to the reboot.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootId(pub [u8; 16]);

impl BootId {
    /// The running machine's boot id, where the system has one.
    pub fn current() -> Option<BootId> {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .and_then(|s| BootId::parse(&s))
    }

    /// Parses the 32 hex digits of a boot id (dashes and surrounding space ignored).
    ///
    /// ```
    /// use tether::durable::BootId;
    /// let id = BootId::parse("0f3e9c1a-5b2d-4c7e-8a90-123456789abc\n").unwrap();
    /// assert_eq!(id.to_string(), "0f3e9c1a5b2d4c7e8a90123456789abc");
    /// assert!(BootId::parse("not hex").is_none());
    /// ```
    pub fn parse(text: &str) -> Option<BootId> {
        let digits: Vec<u8> = text.trim().bytes().filter(|&b| b != b'-').collect();
        if digits.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let hex = std::str::from_utf8(pair).ok()?;
            id[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(BootId(id))
    }
}

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootId({self})")
    }
}

/// Settings of one shard log. `LogConfig::default()` gives the documented defaults;
/// [`validate`](Self::validate) is called by `ShardLog::open`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The shard this log belongs to; written into every header and checked on replay.
    /// Default 0.
    pub shard: u32,
    /// When commits sync. Default [`Fsync::Always`].
    pub fsync: Fsync,
    /// A segment is closed and a new one started once a commit takes it to this size.
    /// Default 64 MiB; at least 1 KiB.
    pub segment_bytes: u64,
    /// The largest record. Default 16 MiB; 1 ..= 1 GiB.
    pub max_record_bytes: u32,
    /// The disk bound: all of this log's files together, with uncommitted records. Past
    /// `max_bytes - reserve_bytes`, [`Class::New`](super::Class::New) records are refused with
    /// `StorageFull`; [`Class::MustWrite`](super::Class::MustWrite) ones until `max_bytes`.
    /// Default 1 GiB. A snapshot being written may pass it by its own size for a moment.
    pub max_bytes: u64,
    /// Room kept for must-write records (acknowledgements, deliveries, removals: they let
    /// space be freed). Default 16 MiB; less than `max_bytes`.
    pub reserve_bytes: u64,
    /// [`ShardLog::snapshot_due`](super::ShardLog::snapshot_due) once the log holds more than
    /// this many times the live bytes... Default 2; at least 1.
    pub snapshot_ratio: u32,
    /// ...and more than this floor. Default 64 MiB.
    pub snapshot_floor_bytes: u64,
    /// This machine's boot id, written into headers. Default [`BootId::current`].
    pub boot_id: Option<BootId>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            shard: 0,
            fsync: Fsync::Always,
            segment_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
            max_bytes: 1 << 30,
            reserve_bytes: 16 << 20,
            snapshot_ratio: 2,
            snapshot_floor_bytes: 64 << 20,
            boot_id: BootId::current(),
        }
    }
}

impl LogConfig {
    /// The smallest segment size accepted.
    pub const MIN_SEGMENT_BYTES: u64 = 1024;
    /// The largest record size accepted.
    pub const MAX_RECORD_BYTES: u32 = 1 << 30;

    /// Checks every setting; the error names the first one out of range.
    ///
    /// ```
    /// use tether::durable::{LogConfig, LogError};
    /// let bad = LogConfig { reserve_bytes: 1 << 30, max_bytes: 1 << 30, ..LogConfig::default() };
    /// assert!(matches!(bad.validate(), Err(LogError::Config { setting: "reserve_bytes", .. })));
    /// ```
    pub fn validate(&self) -> Result<(), LogError> {
        let refuse = |setting, reason| Err(LogError::Config { setting, reason });
        if self.segment_bytes < Self::MIN_SEGMENT_BYTES {
            return refuse("segment_bytes", "must be at least 1024");
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > Self::MAX_RECORD_BYTES {
            return refuse("max_record_bytes", "must be 1 ..= 1 GiB");
        }
        if self.reserve_bytes >= self.max_bytes {
            return refuse("reserve_bytes", "must be less than max_bytes");
        }
        if self.snapshot_ratio == 0 {
            return refuse("snapshot_ratio", "must be at least 1");
        }
        if matches!(self.fsync, Fsync::Interval(d) if d.is_zero()) {
            return refuse("fsync", "an interval must be longer than zero (use Always)");
        }
        Ok(())
    }
}
