//! The shard log: one append-only, checksummed log per shard, written by that shard's worker
//! alone, from which the shard's state is rebuilt after a restart or a crash.
//!
//! This module is byte-level storage; what the records mean is the shard worker's business.
//! A worker pass goes:
//!
//! 1. [`ShardLog::append`] each of the pass's records into an in-memory buffer (nothing is
//!    written yet); each gets its [`Position`].
//! 2. [`ShardLog::commit`] once: ONE write of the buffer and, under [`Fsync::Always`], ONE
//!    `fdatasync` (group commit: the more a pass carries, the less each record costs). The
//!    [`Commit`] it returns says what is now written and synced, so the worker releases the
//!    replies that depended on those records.
//! 3. [`ShardLog::hold`] / [`ShardLog::release`] the positions of records that are still
//!    needed (a queued message) or no longer are (it was acknowledged); a segment with nothing
//!    held in it is deleted by [`ShardLog::reclaim`].
//! 4. When [`ShardLog::snapshot_due`], write the live state through [`ShardLog::snapshot`]:
//!    older segments are dropped once the snapshot is durable.
//!
//! [`ShardLog::open`] replays a snapshot and the segments after it, truncating a torn tail and
//! refusing a damaged middle ([`LogError::Corrupt`], which [`repair`] fixes by keeping the
//! valid prefix). Storage goes through the [`Storage`] seam: [`FsStorage`] on disk (locked
//! against a second opener) or [`MemStorage`], a fake file system that tests crash.
//!
//! ```
//! use tether::durable::{Class, Fsync, LogConfig, MemStorage, ShardLog};
//!
//! let fs = MemStorage::new();
//! let (mut log, _) = ShardLog::open(fs.clone(), LogConfig::default(), |_, _| {}).unwrap();
//! let pos = log.append(b"enqueue alice 1", Class::New).unwrap();
//! log.hold(pos).unwrap();
//! let commit = log.commit(0).unwrap();
//! assert_eq!(commit.synced_to, commit.written_to); // Fsync::Always
//! drop(log);
//!
//! // A power cut keeps what was synced.
//! let mut replayed = Vec::new();
//! let (_, report) = ShardLog::open(fs.crash(1), LogConfig::default(), |_, rec| {
//!     replayed.push(rec.to_vec())
//! })
//! .unwrap();
//! assert_eq!(replayed, [b"enqueue alice 1".to_vec()]);
//! assert_eq!(report.records, 1);
//! ```
//!
//! The files, the framing and what each fsync mode can lose: `docs/durability.md`.

mod config;
mod error;
mod frame;
mod fs;
mod log;
mod mem;
mod recover;
mod snapshot;
mod storage;

/// The crash-model fuzz target (`fuzz/fuzz_targets/log_ops.rs`).
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz;

pub use config::{BootId, Fsync, FsyncMode, LogConfig};
pub use error::LogError;
pub use frame::{FRAME_OVERHEAD, HEADER_LEN};
pub use fs::{FsFile, FsStorage, LOCK_FILE};
pub use log::{Class, Commit, FileId, Position, ShardLog, Space};
pub use mem::{MemFile, MemStorage};
pub use recover::{repair, RepairReport, ReplayReport, TornTail};
pub use snapshot::SnapshotWriter;
pub use storage::{Storage, StorageFile};
