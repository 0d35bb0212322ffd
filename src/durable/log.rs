//! [`ShardLog`]: appending, group commit, segment rolling, liveness and reclaiming.

use std::collections::BTreeMap;

use super::error::is_full;
use super::frame::{
    encode_record, FileKind, Header, FLAG_PREVIOUS_SYNCED, FRAME_OVERHEAD, HEADER_LEN,
};
use super::storage::{Storage, StorageFile};
use super::{Fsync, LogConfig, LogError};

/// Which bound an appended record is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// New work (an enqueued message): refused with `StorageFull` once the log is within
    /// `reserve_bytes` of its bound, or after the file system ran out of space.
    New,
    /// A record that must be written for space to be freed or for state already promised
    /// (a delivery, an acknowledgement, a removal): it may use the reserve.
    MustWrite,
}

/// The file a record lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileId {
    /// The segment whose first record is at this log position.
    Segment(u64),
    /// The snapshot that covers the log up to this position.
    Snapshot(u64),
}

/// Where a record lies: its file, its byte offset in that file and its framed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The file.
    pub file: FileId,
    /// Byte offset of the record's frame in the file.
    pub offset: u64,
    /// Bytes of the frame (payload plus [`FRAME_OVERHEAD`](super::FRAME_OVERHEAD)).
    pub frame_len: u32,
}

/// What a [`ShardLog::commit`] achieved. Log positions count record bytes from the start of
/// the log (headers excluded); every record ends at or before `written_to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Every record appended so far is written (a process crash no longer loses it).
    pub written_to: u64,
    /// Records up to here are synced (a power cut no longer loses them). Under
    /// [`Fsync::Always`] this equals `written_to`.
    pub synced_to: u64,
    /// Records this commit wrote.
    pub records: u32,
    /// Bytes this commit wrote.
    pub bytes: u64,
    /// Whether this commit synced.
    pub synced: bool,
}

/// The log's use of space, for the caller's snapshot decision and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes in segment and snapshot files.
    pub log_bytes: u64,
    /// Framed bytes of the records held live.
    pub live_bytes: u64,
    /// Records held live.
    pub live_records: u64,
    /// Appended records not yet committed.
    pub pending_bytes: u64,
    /// The disk bound (`LogConfig::max_bytes`).
    pub limit: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FileInfo {
    pub bytes: u64,
    pub live_records: u64,
    pub live_bytes: u64,
}

pub(crate) struct Active<F> {
    pub id: u64,
    pub name: String,
    pub file: F,
    pub len: u64,
}

/// One shard's log. Single-threaded: the shard worker owns it. See the module docs for the
/// pass it is built around.
pub struct ShardLog<S: Storage> {
    pub(crate) storage: S,
    pub(crate) config: LogConfig,
    pub(crate) active: Active<S::File>,
    /// Segments closed under `Fsync::Never` without a sync: a forced `sync` must cover them.
    pub(crate) unsynced: Vec<Active<S::File>>,
    pub(crate) files: BTreeMap<FileId, FileInfo>,
    pub(crate) pending: Vec<u8>,
    pub(crate) pending_records: u32,
    /// Log position after the last appended record.
    pub(crate) end: u64,
    pub(crate) written: u64,
    pub(crate) synced: u64,
    pub(crate) dir_dirty: bool,
    pub(crate) last_sync_ms: Option<u64>,
    pub(crate) poison: Option<String>,
    /// The file system said ENOSPC; new records are refused until a commit succeeds.
    pub(crate) out_of_space: bool,
}

/// A header for a file this log writes.
pub(crate) fn make_header(
    config: &LogConfig,
    kind: FileKind,
    first: u64,
    previous_synced: bool,
) -> Header {
    Header {
        kind,
        flags: if previous_synced {
            FLAG_PREVIOUS_SYNCED
        } else {
            0
        },
        shard: config.shard,
        first,
        boot_id: config.boot_id.map_or([0; 16], |b| b.0),
        fsync: config.fsync.mode().code(),
    }
}

/// Creates a new file and writes its header (not synced).
pub(crate) fn create_file<S: Storage>(
    storage: &S,
    name: &str,
    header: &Header,
) -> Result<S::File, LogError> {
    let mut file = storage.create(name).map_err(|source| LogError::Io {
        op: "create",
        file: storage.locate(name),
        source,
    })?;
    file.append(&header.encode())
        .map_err(|source| LogError::WriteFailed {
            file: storage.locate(name),
            source,
        })?;
    Ok(file)
}

pub(crate) fn segment_name(id: u64) -> String {
    format!("seg-{id:016x}.log")
}

pub(crate) fn snapshot_name(lsn: u64) -> String {
    format!("snap-{lsn:016x}.snap")
}

impl<S: Storage> std::fmt::Debug for ShardLog<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLog")
            .field("shard", &self.config.shard)
            .field("active", &self.active.name)
            .field("end", &self.end)
            .field("synced", &self.synced)
            .field("poisoned", &self.poison)
            .finish_non_exhaustive()
    }
}

impl<S: Storage> ShardLog<S> {
    pub(crate) fn check_poison(&self) -> Result<(), LogError> {
        match &self.poison {
            Some(cause) => Err(LogError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn poison(&mut self, error: LogError) -> LogError {
        self.poison = Some(error.to_string());
        error
    }

    /// Buffers one record for the next [`commit`](Self::commit) and returns where it will lie.
    /// Nothing is written yet. A record is not held live until [`hold`](Self::hold).
    ///
    /// Errors: [`LogError::RecordTooLarge`]; [`LogError::StorageFull`] when the record would
    /// take the log past its bound for `class`; [`LogError::Poisoned`].
    pub fn append(&mut self, payload: &[u8], class: Class) -> Result<Position, LogError> {
        self.check_poison()?;
        if payload.len() > self.config.max_record_bytes as usize {
            return Err(LogError::RecordTooLarge {
                len: payload.len(),
                max: self.config.max_record_bytes,
            });
        }
        let frame = (FRAME_OVERHEAD + payload.len()) as u64;
        let used = self.used_bytes();
        let limit = match class {
            Class::New => self.config.max_bytes - self.config.reserve_bytes,
            Class::MustWrite => self.config.max_bytes,
        };
        if used + frame > limit || (self.out_of_space && class == Class::New) {
            return Err(LogError::StorageFull { used, limit });
        }
        let pos = Position {
            file: FileId::Segment(self.active.id),
            offset: self.active.len + self.pending.len() as u64,
            frame_len: frame as u32,
        };
        encode_record(&mut self.pending, self.end, payload);
        self.pending_records += 1;
        self.end += frame;
        Ok(pos)
    }

    /// Writes the buffered records with one write and, as [`Fsync`] says, syncs with one
    /// `fdatasync` (plus one directory sync after a new segment was started). `now_ms` is the
    /// worker's clock reading, used by [`Fsync::Interval`]. Call it once per pass, also when
    /// nothing was appended (an interval sync may be due).
    ///
    /// Errors: [`LogError::StorageFull`] when the file system is full: the partial write is cut
    /// off again, the records stay buffered for the next commit, and until one succeeds only
    /// must-write records are accepted. A failed write or sync poisons the log
    /// ([`LogError::WriteFailed`], [`LogError::SyncFailed`], then [`LogError::Poisoned`]).
    pub fn commit(&mut self, now_ms: u64) -> Result<Commit, LogError> {
        let due = match self.config.fsync {
            Fsync::Always => true,
            Fsync::Interval(d) => self.last_sync_ms.is_none_or(|last| {
                now_ms.saturating_sub(last) >= u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
            }),
            Fsync::Never => false,
        };
        self.commit_inner(now_ms, due)
    }

    /// Writes and syncs whatever is buffered or unsynced, whatever the [`Fsync`] mode: for a
    /// graceful shutdown.
    pub fn sync(&mut self, now_ms: u64) -> Result<Commit, LogError> {
        self.commit_inner(now_ms, true)
    }

    fn commit_inner(&mut self, now_ms: u64, sync: bool) -> Result<Commit, LogError> {
        self.check_poison()?;
        let (records, bytes) = (self.pending_records, self.pending.len() as u64);
        if !self.pending.is_empty() {
            if let Err(e) = self.active.file.append(&self.pending) {
                return Err(self.failed_write(e));
            }
            self.active.len += bytes;
            self.file_mut(FileId::Segment(self.active.id)).bytes += bytes;
            self.written = self.end;
            self.pending.clear();
            self.pending_records = 0;
            self.out_of_space = false;
        }
        let must_sync = sync && (self.synced < self.written || self.dir_dirty);
        if must_sync {
            self.sync_active()?;
            self.last_sync_ms = Some(now_ms);
        }
        if self.active.len >= self.config.segment_bytes {
            self.roll()?;
        }
        Ok(Commit {
            written_to: self.written,
            synced_to: self.synced,
            records,
            bytes,
            synced: must_sync,
        })
    }

    /// After a failed append: out of space is survivable when the partial write can be cut
    /// off again; anything else stops the log.
    fn failed_write(&mut self, e: std::io::Error) -> LogError {
        let file = self.storage.locate(&self.active.name);
        if is_full(&e) {
            match self.active.file.truncate(self.active.len) {
                Ok(()) => {
                    self.out_of_space = true;
                    let used = self.used_bytes();
                    return LogError::StorageFull {
                        used,
                        limit: used.min(self.config.max_bytes),
                    };
                }
                Err(source) => return self.poison(LogError::WriteFailed { file, source }),
            }
        }
        self.poison(LogError::WriteFailed { file, source: e })
    }

    fn sync_active(&mut self) -> Result<(), LogError> {
        for mut closed in std::mem::take(&mut self.unsynced) {
            if let Err(source) = closed.file.sync() {
                let file = self.storage.locate(&closed.name);
                return Err(self.poison(LogError::SyncFailed { file, source }));
            }
        }
        if let Err(source) = self.active.file.sync() {
            let file = self.storage.locate(&self.active.name);
            return Err(self.poison(LogError::SyncFailed { file, source }));
        }
        if self.dir_dirty {
            if let Err(source) = self.storage.sync_dir() {
                let file = self.storage.locate(".");
                return Err(self.poison(LogError::SyncFailed { file, source }));
            }
            self.dir_dirty = false;
        }
        self.synced = self.written;
        Ok(())
    }

    /// Closes the active segment and starts the next at the current end. The closed one is
    /// synced first unless the mode is `Never`, so that a later segment's existence vouches
    /// for the earlier one's tail.
    pub(crate) fn roll(&mut self) -> Result<(), LogError> {
        debug_assert!(self.pending.is_empty());
        let previous_synced = self.config.fsync != Fsync::Never;
        if previous_synced && (self.synced < self.written || self.dir_dirty) {
            self.sync_active()?;
        }
        self.start_segment(self.end, previous_synced)
    }

    /// Creates segment `id` with its header (written, not yet synced) and makes it active.
    fn start_segment(&mut self, id: u64, previous_synced: bool) -> Result<(), LogError> {
        let header = make_header(&self.config, FileKind::Segment, id, previous_synced);
        match create_file(&self.storage, &segment_name(id), &header) {
            Ok(file) => {
                let closed = std::mem::replace(
                    &mut self.active,
                    Active {
                        id,
                        name: segment_name(id),
                        file,
                        len: HEADER_LEN as u64,
                    },
                );
                if self.synced < self.written {
                    self.unsynced.push(closed);
                }
                self.dir_dirty = true;
                self.files.insert(
                    FileId::Segment(id),
                    FileInfo {
                        bytes: HEADER_LEN as u64,
                        ..FileInfo::default()
                    },
                );
                Ok(())
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    fn file_mut(&mut self, id: FileId) -> &mut FileInfo {
        self.files.entry(id).or_default()
    }

    /// Marks a record as live: its file is kept until it is released (or a snapshot
    /// supersedes the file). Call it for each record still needed after replay, and for new
    /// records when appended.
    pub fn hold(&mut self, pos: Position) -> Result<(), LogError> {
        let info = self
            .files
            .get_mut(&pos.file)
            .ok_or(LogError::UnknownPosition)?;
        info.live_records += 1;
        info.live_bytes += u64::from(pos.frame_len);
        Ok(())
    }

    /// Marks a held record as no longer needed. A record whose file a snapshot already
    /// dropped is fine (nothing to count); a release without a hold is [`LogError::NotHeld`].
    pub fn release(&mut self, pos: Position) -> Result<(), LogError> {
        let Some(info) = self.files.get_mut(&pos.file) else {
            return Ok(());
        };
        if info.live_records == 0 {
            return Err(LogError::NotHeld);
        }
        info.live_records -= 1;
        info.live_bytes = info.live_bytes.saturating_sub(u64::from(pos.frame_len));
        Ok(())
    }

    /// Deletes every closed segment with no held record, syncs the directory, and returns the
    /// deleted segments (their ids, as in [`FileId::Segment`]). A record that cancels records in
    /// older segments (an acknowledgement) must stay held until those are gone, or a replay
    /// would see the older record without its cancellation: the returned ids are when to
    /// release it.
    pub fn reclaim(&mut self) -> Result<Vec<u64>, LogError> {
        self.check_poison()?;
        let dead: Vec<u64> = self
            .files
            .iter()
            .filter_map(|(id, info)| match id {
                FileId::Segment(s) if *s != self.active.id && info.live_records == 0 => Some(*s),
                _ => None,
            })
            .collect();
        self.remove_segments(&dead)?;
        Ok(dead)
    }

    pub(crate) fn remove_segments(&mut self, ids: &[u64]) -> Result<(), LogError> {
        if ids.is_empty() {
            return Ok(());
        }
        for &id in ids {
            let name = segment_name(id);
            if let Err(source) = self.storage.remove(&name) {
                if source.kind() != std::io::ErrorKind::NotFound {
                    let file = self.storage.locate(&name);
                    return Err(LogError::Io {
                        op: "remove",
                        file,
                        source,
                    });
                }
            }
            self.files.remove(&FileId::Segment(id));
        }
        self.unsynced.retain(|closed| !ids.contains(&closed.id));
        if let Err(source) = self.storage.sync_dir() {
            let file = self.storage.locate(".");
            return Err(self.poison(LogError::SyncFailed { file, source }));
        }
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.files.values().map(|f| f.bytes).sum::<u64>() + self.pending.len() as u64
    }

    /// The log's use of space.
    pub fn space(&self) -> Space {
        let (mut live_bytes, mut live_records) = (0, 0);
        for f in self.files.values() {
            live_bytes += f.live_bytes;
            live_records += f.live_records;
        }
        Space {
            log_bytes: self.files.values().map(|f| f.bytes).sum(),
            live_bytes,
            live_records,
            pending_bytes: self.pending.len() as u64,
            limit: self.config.max_bytes,
        }
    }

    /// Whether the log holds more than `snapshot_ratio` times its live bytes and more than
    /// `snapshot_floor_bytes`: then a snapshot would free most of it.
    pub fn snapshot_due(&self) -> bool {
        let s = self.space();
        s.log_bytes > self.config.snapshot_floor_bytes
            && s.log_bytes
                > s.live_bytes
                    .saturating_mul(u64::from(self.config.snapshot_ratio))
    }

    /// Log position after the last appended record.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Whether an earlier failure stopped the log.
    pub fn is_poisoned(&self) -> bool {
        self.poison.is_some()
    }

    /// The files the log has now: segments (oldest first) and at most one snapshot.
    pub fn files(&self) -> Vec<FileId> {
        self.files.keys().copied().collect()
    }

    /// The settings it runs with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }
}
