//! [`LogError`]: everything the shard log can refuse or fail with.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why a log operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LogError {
    /// The directory is locked by another opener (another server, or another log in this
    /// process). Two writers must never share a log directory.
    #[error("the log directory {} is in use by another process (locked); stop it or choose another directory", dir.display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The disk bound (or, past the reserve, the bound for must-write records) is reached, or
    /// the file system is full. Nothing already committed is affected.
    #[error("storage full: {used} of {limit} bytes in use")]
    StorageFull {
        /// Bytes the log holds (files plus uncommitted records).
        used: u64,
        /// The bound that refused the record.
        limit: u64,
    },
    /// A file sync failed. The log is poisoned: the sync is never retried (the kernel may
    /// already have dropped the dirty pages), and the next start recovers from disk.
    #[error("fsync of {file} failed: {source}; the log stops here, restart to recover from disk")]
    SyncFailed {
        /// The file (or directory).
        file: String,
        /// The error.
        source: io::Error,
    },
    /// A write failed (other than for lack of space). The log is poisoned like after a failed
    /// sync.
    #[error("write to {file} failed: {source}; the log stops here, restart to recover from disk")]
    WriteFailed {
        /// The file.
        file: String,
        /// The error.
        source: io::Error,
    },
    /// An earlier sync or write failed; every call after it fails with this.
    #[error("the log is stopped after an earlier failure ({cause}); restart to recover from disk")]
    Poisoned {
        /// What failed first.
        cause: String,
    },
    /// A record failed its checksum with valid records after it: the file is damaged, not
    /// merely cut short by a crash. `repair` keeps everything before `offset`.
    #[error("corrupt log: {file} at byte {offset}: {reason}; run `tether repair` to keep the valid records before it (everything from there on is dropped)")]
    Corrupt {
        /// The damaged file.
        file: String,
        /// Byte offset of the damage in that file.
        offset: u64,
        /// What is wrong there.
        reason: &'static str,
    },
    /// A record longer than `LogConfig::max_record_bytes`.
    #[error("record is {len} bytes, more than the maximum of {max}")]
    RecordTooLarge {
        /// Its length.
        len: usize,
        /// The configured maximum.
        max: u32,
    },
    /// `snapshot` was called with records appended but not committed.
    #[error("commit the pending records before writing a snapshot")]
    PendingRecords,
    /// `hold` named a position in a file the log no longer has.
    #[error("no such record position (its file was dropped)")]
    UnknownPosition,
    /// `release` of a record in a file with no held records.
    #[error("release without a matching hold")]
    NotHeld,
    /// A setting out of range.
    #[error("log setting {setting}: {reason}")]
    Config {
        /// The setting.
        setting: &'static str,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Any other file system failure (listing, reading, creating, removing).
    #[error("could not {op} {file}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        file: String,
        /// The error.
        source: io::Error,
    },
}

/// Whether an I/O error means the file system is out of space.
pub(crate) fn is_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}
