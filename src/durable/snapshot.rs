//! [`SnapshotWriter`]: the caller's live state written to a new file that replaces the older
//! segments once it is durable.

use super::error::is_full;
use super::frame::{encode_record, FileKind, FRAME_OVERHEAD, HEADER_LEN};
use super::log::{
    create_file, make_header, segment_name, snapshot_name, FileId, FileInfo, Position, ShardLog,
};
use super::recover::snapshot_seed_base;
use super::storage::{Storage, StorageFile};
use super::LogError;

/// Bytes buffered before the snapshot writer writes them out.
const FLUSH_BYTES: usize = 1 << 20;

/// Writes a snapshot: [`append`](Self::append) each live record, then
/// [`finish`](Self::finish). Until `finish` returns, the old files stay authoritative; a
/// writer dropped unfinished leaves a temporary file that the next open removes.
pub struct SnapshotWriter<'a, S: Storage> {
    log: &'a mut ShardLog<S>,
    lsn: u64,
    temp: String,
    file: S::File,
    buf: Vec<u8>,
    len: u64,
    records: u64,
}

impl<S: Storage> std::fmt::Debug for SnapshotWriter<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("lsn", &self.lsn)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl<S: Storage> ShardLog<S> {
    /// Starts a snapshot of everything appended so far: the active segment is closed, so the
    /// snapshot covers exactly the segments before the new one, and those are dropped when it
    /// is finished. The caller then holds the snapshot positions of its live records in place
    /// of the old ones, and forgets the old positions without releasing them (they are void).
    ///
    /// Errors: [`LogError::PendingRecords`] unless the last append was committed; a failure
    /// creating the temporary file.
    pub fn snapshot(&mut self) -> Result<SnapshotWriter<'_, S>, LogError> {
        self.check_poison()?;
        if !self.pending.is_empty() {
            return Err(LogError::PendingRecords);
        }
        if self.active.len > HEADER_LEN as u64 {
            self.roll()?;
        }
        let lsn = self.end;
        let temp = format!("snap-{lsn:016x}.tmp");
        // A leftover from an unfinished snapshot at this same position.
        let _ = self.storage.remove(&temp);
        let header = make_header(&self.config, FileKind::Snapshot, lsn, true);
        let file = match create_file(&self.storage, &temp, &header) {
            Ok(file) => file,
            Err(LogError::WriteFailed { source, .. }) if is_full(&source) => {
                let _ = self.storage.remove(&temp);
                let used = self.space().log_bytes;
                let limit = self.config.max_bytes;
                return Err(LogError::StorageFull { used, limit });
            }
            Err(e) => return Err(self.poison(e)),
        };
        Ok(SnapshotWriter {
            log: self,
            lsn,
            temp,
            file,
            buf: Vec::new(),
            len: HEADER_LEN as u64,
            records: 0,
        })
    }
}

impl<S: Storage> SnapshotWriter<'_, S> {
    /// Adds one record to the snapshot and returns where it lies in it.
    pub fn append(&mut self, payload: &[u8]) -> Result<Position, LogError> {
        let max = self.log.config.max_record_bytes;
        if payload.len() > max as usize {
            return Err(LogError::RecordTooLarge {
                len: payload.len(),
                max,
            });
        }
        let offset = self.len + self.buf.len() as u64;
        let seed = snapshot_seed_base(self.lsn).wrapping_add(offset - HEADER_LEN as u64);
        encode_record(&mut self.buf, seed, payload);
        self.records += 1;
        if self.buf.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(Position {
            file: FileId::Snapshot(self.lsn),
            offset,
            frame_len: (FRAME_OVERHEAD + payload.len()) as u32,
        })
    }

    fn flush(&mut self) -> Result<(), LogError> {
        if let Err(source) = self.file.append(&self.buf) {
            // The old files are untouched: out of space only fails this snapshot.
            let _ = self.log.storage.remove(&self.temp);
            if is_full(&source) {
                let used = self.log.space().log_bytes;
                return Err(LogError::StorageFull {
                    used,
                    limit: self.log.config.max_bytes,
                });
            }
            let file = self.log.storage.locate(&self.temp);
            return Err(self.log.poison(LogError::WriteFailed { file, source }));
        }
        self.len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Makes the snapshot durable (sync, rename into place, sync the directory), then drops
    /// the older snapshot and every segment it covers. Returns the number of records in it.
    /// An error means the snapshot did not replace anything (and, but for running out of
    /// space, the log is poisoned); once it is in place, the call succeeds.
    pub fn finish(mut self) -> Result<u64, LogError> {
        self.flush()?;
        let log = &mut *self.log;
        let name = snapshot_name(self.lsn);
        if let Err(source) = self.file.sync() {
            let file = log.storage.locate(&self.temp);
            return Err(log.poison(LogError::SyncFailed { file, source }));
        }
        if let Err(source) = log.storage.rename(&self.temp, &name) {
            let file = log.storage.locate(&self.temp);
            return Err(log.poison(LogError::WriteFailed { file, source }));
        }
        if let Err(source) = log.storage.sync_dir() {
            let file = log.storage.locate(".");
            return Err(log.poison(LogError::SyncFailed { file, source }));
        }
        // The roll at the start made the active segment begin at the snapshot's position.
        let covered: Vec<FileId> = log
            .files
            .keys()
            .copied()
            .filter(|f| match f {
                FileId::Segment(id) => *id < self.lsn,
                FileId::Snapshot(lsn) => *lsn < self.lsn,
            })
            .collect();
        // The snapshot is in place: from here on nothing may fail the call, or the caller
        // would keep positions in files the next start ignores. Files left by a failed removal
        // are covered by the snapshot and removed at the next start.
        for f in &covered {
            let name = match f {
                FileId::Segment(id) => segment_name(*id),
                FileId::Snapshot(lsn) => snapshot_name(*lsn),
            };
            let _ = log.storage.remove(&name);
            log.files.remove(f);
        }
        log.unsynced.retain(|closed| closed.id >= self.lsn);
        // Only makes the removals durable; no data depends on it.
        let _ = log.storage.sync_dir();
        log.files.insert(
            FileId::Snapshot(self.lsn),
            FileInfo {
                bytes: self.len,
                ..FileInfo::default()
            },
        );
        Ok(self.records)
    }
}
