//! Opening a log: replay of the snapshot and the segments after it, torn tails, corruption,
//! and [`repair`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::frame::{
    decode_record, valid_frame_after, BadFrame, FileKind, Header, FLAG_PREVIOUS_SYNCED,
    FRAME_OVERHEAD, HEADER_LEN,
};
use super::log::{
    create_file, make_header, segment_name, snapshot_name, Active, FileId, FileInfo, Position,
    ShardLog,
};
use super::storage::{Storage, StorageFile};
use super::{BootId, FsyncMode, LogConfig, LogError};

/// A torn tail that recovery cut off: the end of a write that a crash interrupted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The file.
    pub file: String,
    /// Where its valid records end (the file was cut here; 0 for a file removed whole).
    pub offset: u64,
    /// Bytes dropped.
    pub dropped_bytes: u64,
}

/// What a replay found, for the caller to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records replayed (snapshot and segments).
    pub records: u64,
    /// Of them, from the snapshot.
    pub snapshot_records: u64,
    /// Payload bytes replayed.
    pub bytes: u64,
    /// Segment files read.
    pub segments: usize,
    /// How long reading and replaying took.
    pub duration: Duration,
    /// Torn tails cut off.
    pub torn: Vec<TornTail>,
    /// The boot id of the machine that wrote the newest segment, where it recorded one.
    pub previous_boot: Option<BootId>,
    /// The fsync mode of the newest segment's writer (`None` for an empty directory).
    pub previous_fsync: Option<FsyncMode>,
    /// Whether the log may have lost unsynced records to a reboot: its last writer did not
    /// sync every commit and ran in another (or an unknown) boot than this one. The shard
    /// must then not trust that clients have seen only what the log holds.
    pub may_have_lost_unsynced: bool,
    /// The log position where appending continues.
    pub end: u64,
}

/// What [`repair`] kept and dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RepairReport {
    /// The first damage found (file, byte offset, what), where the log was cut; `None` when
    /// the log was sound.
    pub cut: Option<(String, u64, &'static str)>,
    /// Records kept.
    pub kept_records: u64,
    /// Valid records after the cut that were dropped with it.
    pub dropped_records: u64,
    /// Bytes dropped (cut-off tails and whole files).
    pub dropped_bytes: u64,
    /// Files removed whole.
    pub removed_files: Vec<String>,
}

enum Name {
    Segment(u64),
    Snapshot(u64),
    Temp,
    Other,
}

fn parse_name(name: &str) -> Name {
    let hex = |s: &str| u64::from_str_radix(s, 16).ok().filter(|_| s.len() == 16);
    if let Some(id) = name
        .strip_prefix("seg-")
        .and_then(|s| s.strip_suffix(".log"))
        .and_then(hex)
    {
        Name::Segment(id)
    } else if let Some(lsn) = name
        .strip_prefix("snap-")
        .and_then(|s| s.strip_suffix(".snap"))
        .and_then(hex)
    {
        Name::Snapshot(lsn)
    } else if name.ends_with(".tmp") {
        Name::Temp
    } else {
        Name::Other
    }
}

/// The log's files: the newest snapshot, the segments from it on, and leftovers to remove.
struct Listing {
    snapshot: Option<u64>,
    segments: Vec<u64>,
    stale: Vec<String>,
}

fn list<S: Storage>(storage: &S) -> Result<Listing, LogError> {
    let names = storage.list().map_err(|source| LogError::Io {
        op: "list",
        file: storage.locate("."),
        source,
    })?;
    let (mut snaps, mut segs, mut stale) = (Vec::new(), Vec::new(), Vec::new());
    for name in names {
        match parse_name(&name) {
            Name::Segment(id) => segs.push(id),
            Name::Snapshot(lsn) => snaps.push(lsn),
            Name::Temp => stale.push(name),
            Name::Other => {}
        }
    }
    let snapshot = snaps.iter().copied().max();
    let from = snapshot.unwrap_or(0);
    stale.extend(
        snaps
            .iter()
            .filter(|&&s| Some(s) != snapshot)
            .map(|&s| snapshot_name(s)),
    );
    stale.extend(segs.iter().filter(|&&s| s < from).map(|&s| segment_name(s)));
    segs.retain(|&s| s >= from);
    segs.sort_unstable();
    Ok(Listing {
        snapshot,
        segments: segs,
        stale,
    })
}

fn read<S: Storage>(storage: &S, name: &str) -> Result<Vec<u8>, LogError> {
    storage.read(name).map_err(|source| LogError::Io {
        op: "read",
        file: storage.locate(name),
        source,
    })
}

/// How far a file's records check out.
struct Walk {
    /// Byte offset where the valid records end.
    valid_end: usize,
    /// The first bad frame, and whether valid frames follow it (corruption, not a torn tail).
    bad: Option<(BadFrame, bool)>,
}

/// Walks the frames of `bytes` after its header; record at file offset `o` lies at log
/// position `base + o - HEADER_LEN`.
fn walk(bytes: &[u8], base: u64, max_len: u32, mut each: impl FnMut(u64, &[u8])) -> Walk {
    let mut off = HEADER_LEN;
    while off < bytes.len() {
        let pos = base.wrapping_add((off - HEADER_LEN) as u64);
        match decode_record(&bytes[off..], pos, max_len) {
            Ok(payload) => {
                each(off as u64, payload);
                off += FRAME_OVERHEAD + payload.len();
            }
            Err(bad) => {
                let body = &bytes[HEADER_LEN..];
                let after = valid_frame_after(body, off - HEADER_LEN, base, max_len);
                return Walk {
                    valid_end: off,
                    bad: Some((bad, after)),
                };
            }
        }
    }
    Walk {
        valid_end: off,
        bad: None,
    }
}

fn corrupt<S: Storage>(storage: &S, name: &str, offset: u64, reason: &'static str) -> LogError {
    LogError::Corrupt {
        file: storage.locate(name),
        offset,
        reason,
    }
}

/// Snapshot records are checksummed with this seed base: the snapshot's log position plus the
/// record's offset in the file.
pub(crate) fn snapshot_seed_base(lsn: u64) -> u64 {
    lsn.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn check_header(
    bytes: &[u8],
    kind: FileKind,
    first: u64,
    shard: u32,
) -> Result<Header, &'static str> {
    let h = Header::decode(bytes)?;
    if h.kind != kind {
        return Err("file kind does not match its name");
    }
    if h.first != first {
        return Err("header position does not match the file name");
    }
    if h.shard != shard {
        return Err("file belongs to another shard");
    }
    Ok(h)
}

/// A segment whose tail is to be cut.
struct Cut {
    name: String,
    at: u64,
    len: u64,
    /// Not yet judged by the next segment's header.
    pending: bool,
}

impl<S: Storage> ShardLog<S> {
    /// Opens the log in `storage`, replaying every record to `replay` in log order: the
    /// snapshot's records first (positions in [`FileId::Snapshot`]), then the segments'. A
    /// torn tail is cut off and reported; damage with valid records after it is
    /// [`LogError::Corrupt`] (records before it were already replayed: discard them). Then a
    /// new segment is started, so a segment is only ever written by one run of one process.
    ///
    /// After opening, [`hold`](Self::hold) the positions of the records that are still live
    /// before the first [`reclaim`](Self::reclaim): until then, nothing counts as live.
    pub fn open(
        storage: S,
        config: LogConfig,
        mut replay: impl FnMut(Position, &[u8]),
    ) -> Result<(ShardLog<S>, ReplayReport), LogError> {
        config.validate()?;
        let started = Instant::now();
        let listing = list(&storage)?;
        let max_len = config.max_record_bytes;
        let mut files = BTreeMap::new();
        let (mut records, mut snapshot_records, mut bytes) = (0u64, 0u64, 0u64);

        if let Some(lsn) = listing.snapshot {
            let name = snapshot_name(lsn);
            let data = read(&storage, &name)?;
            check_header(&data, FileKind::Snapshot, lsn, config.shard)
                .map_err(|reason| corrupt(&storage, &name, 0, reason))?;
            let base = snapshot_seed_base(lsn);
            let w = walk(&data, base, max_len, |offset, payload| {
                snapshot_records += 1;
                bytes += payload.len() as u64;
                let pos = Position {
                    file: FileId::Snapshot(lsn),
                    offset,
                    frame_len: (FRAME_OVERHEAD + payload.len()) as u32,
                };
                replay(pos, payload);
            });
            // A snapshot is renamed into place only after it was synced: any damage is damage.
            if let Some((bad, _)) = w.bad {
                return Err(corrupt(&storage, &name, w.valid_end as u64, bad.describe()));
            }
            files.insert(
                FileId::Snapshot(lsn),
                FileInfo {
                    bytes: data.len() as u64,
                    ..FileInfo::default()
                },
            );
        }
        records += snapshot_records;

        let mut end = listing.snapshot.unwrap_or(0);
        let mut torn = Vec::new();
        let mut cuts: Vec<Cut> = Vec::new();
        let mut drop_files: Vec<String> = Vec::new();
        let mut previous: Option<Header> = None;
        let mut segments = 0;
        for &id in &listing.segments {
            let name = segment_name(id);
            let data = read(&storage, &name)?;
            if let Some(cut) = cuts.last().filter(|c| c.pending) {
                // The segment before has a damaged tail and yet a later one exists. A crash
                // can only do that if the earlier one was not synced before this one began
                // (Fsync::Never, which promises nothing after an OS crash: keep both).
                let flagged =
                    Header::decode(&data).is_ok_and(|h| h.flags & FLAG_PREVIOUS_SYNCED != 0);
                if flagged {
                    let reason = "damaged end of a segment that was synced before the next began";
                    return Err(LogError::Corrupt {
                        file: storage.locate(&cut.name),
                        offset: cut.at,
                        reason,
                    });
                }
            }
            if let Some(cut) = cuts.last_mut() {
                cut.pending = false;
            }
            let header = match Header::decode(&data) {
                // Created but never synced: torn like a record (if a later segment exists,
                // the check above decides on reading it).
                Err(_) => {
                    torn.push(TornTail {
                        file: storage.locate(&name),
                        offset: 0,
                        dropped_bytes: data.len() as u64,
                    });
                    drop_files.push(name.clone());
                    cuts.push(Cut {
                        name,
                        at: 0,
                        len: 0,
                        pending: true,
                    });
                    continue;
                }
                Ok(_) => check_header(&data, FileKind::Segment, id, config.shard)
                    .map_err(|reason| corrupt(&storage, &name, 0, reason))?,
            };
            if id < end {
                return Err(corrupt(
                    &storage,
                    &name,
                    0,
                    "segment overlaps the one before it",
                ));
            }
            segments += 1;
            previous = Some(header);
            let w = walk(&data, id, max_len, |offset, payload| {
                records += 1;
                bytes += payload.len() as u64;
                let pos = Position {
                    file: FileId::Segment(id),
                    offset,
                    frame_len: (FRAME_OVERHEAD + payload.len()) as u32,
                };
                replay(pos, payload);
            });
            if let Some((bad, true)) = w.bad {
                return Err(corrupt(&storage, &name, w.valid_end as u64, bad.describe()));
            }
            end = id + (w.valid_end - HEADER_LEN) as u64;
            if w.bad.is_some() {
                torn.push(TornTail {
                    file: storage.locate(&name),
                    offset: w.valid_end as u64,
                    dropped_bytes: (data.len() - w.valid_end) as u64,
                });
                cuts.push(Cut {
                    name: name.clone(),
                    at: w.valid_end as u64,
                    len: w.valid_end as u64,
                    pending: true,
                });
            }
            files.insert(
                FileId::Segment(id),
                FileInfo {
                    bytes: w.valid_end as u64,
                    ..FileInfo::default()
                },
            );
        }

        // Make the replayed state durable before building on it: cut torn tails, sync every
        // kept segment (a crashed writer may not have), drop leftovers.
        let io = |op: &'static str, name: &str, source| LogError::Io {
            op,
            file: storage.locate(name),
            source,
        };
        for id in files.keys() {
            if let FileId::Segment(id) = id {
                let name = segment_name(*id);
                let mut f = storage.open(&name).map_err(|e| io("open", &name, e))?;
                match cuts.iter().find(|c| c.name == name) {
                    Some(cut) => f.truncate(cut.len),
                    None => f.sync(),
                }
                .map_err(|source| LogError::SyncFailed {
                    file: storage.locate(&name),
                    source,
                })?;
            }
        }
        for name in drop_files.iter().chain(&listing.stale) {
            match storage.remove(name) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("remove", name, e))
                }
                _ => {}
            }
        }
        // An empty newest segment (a restart that wrote nothing) would clash with the new one.
        if files
            .get(&FileId::Segment(end))
            .is_some_and(|f| f.bytes == HEADER_LEN as u64)
        {
            let name = segment_name(end);
            storage.remove(&name).map_err(|e| io("remove", &name, e))?;
            files.remove(&FileId::Segment(end));
        }

        let current = config.boot_id;
        let previous_fsync = previous.and_then(|h| FsyncMode::from_code(h.fsync));
        let previous_boot = previous
            .map(|h| h.boot_id)
            .filter(|b| *b != [0; 16])
            .map(BootId);
        let may_have_lost_unsynced = previous_fsync.is_some_and(|m| m != FsyncMode::Always)
            && (previous_boot.is_none() || previous_boot != current);

        let header = make_header(&config, FileKind::Segment, end, true);
        let name = segment_name(end);
        let mut file = create_file(&storage, &name, &header)?;
        // Synced even under Fsync::Never: the header is the record of which mode and which
        // boot wrote what follows, which the next start needs to judge what may be lost.
        if let Err(source) = file.sync().and_then(|()| storage.sync_dir()) {
            let file = storage.locate(".");
            return Err(LogError::SyncFailed { file, source });
        }
        files.insert(
            FileId::Segment(end),
            FileInfo {
                bytes: HEADER_LEN as u64,
                ..FileInfo::default()
            },
        );
        let log = ShardLog {
            storage,
            config,
            active: Active {
                id: end,
                name,
                file,
                len: HEADER_LEN as u64,
            },
            unsynced: Vec::new(),
            files,
            pending: Vec::new(),
            pending_records: 0,
            end,
            written: end,
            synced: end,
            dir_dirty: false,
            last_sync_ms: None,
            poison: None,
            out_of_space: false,
        };
        let report = ReplayReport {
            records,
            snapshot_records,
            bytes,
            segments,
            duration: started.elapsed(),
            torn,
            previous_boot,
            previous_fsync,
            may_have_lost_unsynced,
            end,
        };
        Ok((log, report))
    }
}

/// Valid frames in `bytes` from file offset `from` on, found by trying every offset: what a
/// cut drops.
fn count_valid_after(bytes: &[u8], from: usize, base: u64, max_len: u32) -> u64 {
    let (mut off, mut n) = (from, 0);
    while off + FRAME_OVERHEAD <= bytes.len() {
        let pos = base.wrapping_add((off - HEADER_LEN) as u64);
        match decode_record(&bytes[off..], pos, max_len) {
            Ok(p) => {
                n += 1;
                off += FRAME_OVERHEAD + p.len();
            }
            Err(_) => off += 1,
        }
    }
    n
}

/// Makes a damaged log openable by keeping its longest valid prefix: the log is cut at the
/// first damaged record (or file header), and every file after the cut is removed. Reports
/// where it cut and what it dropped. A sound log is left as it is. This is what
/// `tether repair` runs; never on a directory a running log has open (an [`FsStorage`] holds
/// the directory's lock, so a second one cannot be opened).
///
/// [`FsStorage`]: super::FsStorage
///
/// ```
/// use tether::durable::{repair, Class, LogConfig, LogError, MemStorage, ShardLog, Storage};
///
/// let fs = MemStorage::new();
/// let (mut log, _) = ShardLog::open(fs.clone(), LogConfig::default(), |_, _| {}).unwrap();
/// let first = log.append(b"one", Class::New).unwrap();
/// log.append(b"two", Class::New).unwrap();
/// log.commit(0).unwrap();
/// drop(log);
///
/// // Damage the first record: the second one still checks out, so this is corruption.
/// let name = "seg-0000000000000000.log";
/// let mut bytes = fs.read(name).unwrap();
/// bytes[first.offset as usize + 12] ^= 1;
/// fs.overwrite(name, bytes);
/// let err = ShardLog::open(fs.clone(), LogConfig::default(), |_, _| {}).unwrap_err();
/// assert!(matches!(err, LogError::Corrupt { offset: 64, .. }));
///
/// let report = repair(&fs, &LogConfig::default()).unwrap();
/// assert_eq!((report.kept_records, report.dropped_records), (0, 1));
/// assert!(ShardLog::open(fs, LogConfig::default(), |_, _| {}).is_ok());
/// ```
pub fn repair<S: Storage>(storage: &S, config: &LogConfig) -> Result<RepairReport, LogError> {
    config.validate()?;
    let listing = list(storage)?;
    let max_len = config.max_record_bytes;
    let mut report = RepairReport::default();
    let io = |op: &'static str, name: &str, source| LogError::Io {
        op,
        file: storage.locate(name),
        source,
    };
    let truncate = |name: &str, len: u64| {
        storage
            .open(name)
            .and_then(|mut f| f.truncate(len))
            .map_err(|e| io("truncate", name, e))
    };
    let mut files: Vec<(String, FileKind, u64)> = Vec::new();
    if let Some(lsn) = listing.snapshot {
        files.push((snapshot_name(lsn), FileKind::Snapshot, lsn));
    }
    files.extend(
        listing
            .segments
            .iter()
            .map(|&id| (segment_name(id), FileKind::Segment, id)),
    );
    let mut end = listing.snapshot.unwrap_or(0);
    for (name, kind, first) in files {
        let data = read(storage, &name)?;
        let base = match kind {
            FileKind::Snapshot => snapshot_seed_base(first),
            FileKind::Segment => first,
        };
        if report.cut.is_some() {
            report.dropped_records += count_valid_after(&data, HEADER_LEN, base, max_len);
            report.dropped_bytes += data.len() as u64;
            storage.remove(&name).map_err(|e| io("remove", &name, e))?;
            report.removed_files.push(storage.locate(&name));
            continue;
        }
        let header = check_header(&data, kind, first, config.shard).and_then(|_| {
            if kind == FileKind::Segment && first < end {
                Err("segment overlaps the one before it")
            } else {
                Ok(())
            }
        });
        if let Err(reason) = header {
            report.cut = Some((storage.locate(&name), 0, reason));
            report.dropped_records += count_valid_after(&data, HEADER_LEN, base, max_len);
            report.dropped_bytes += data.len() as u64;
            storage.remove(&name).map_err(|e| io("remove", &name, e))?;
            report.removed_files.push(storage.locate(&name));
            continue;
        }
        let mut kept = 0;
        let w = walk(&data, base, max_len, |_, _| kept += 1);
        report.kept_records += kept;
        if kind == FileKind::Segment {
            end = first + (w.valid_end - HEADER_LEN) as u64;
        }
        if let Some((bad, _)) = w.bad {
            report.cut = Some((storage.locate(&name), w.valid_end as u64, bad.describe()));
            report.dropped_records += count_valid_after(&data, w.valid_end + 1, base, max_len);
            report.dropped_bytes += (data.len() - w.valid_end) as u64;
            truncate(&name, w.valid_end as u64)?;
        }
    }
    storage.sync_dir().map_err(|source| LogError::SyncFailed {
        file: storage.locate("."),
        source,
    })?;
    Ok(report)
}
