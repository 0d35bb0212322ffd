//! The shard log (`tether::durable`) from the outside: torn tails cut at every byte,
//! corruption and repair, a failed fsync, the disk bound and ENOSPC, the directory lock, group
//! commit, the fsync modes, segments, reclaim and snapshots. The crash model with random
//! operation sequences is `durable::fuzz` (unit tests and `fuzz/fuzz_targets/log_ops.rs`).

use std::path::PathBuf;
use std::time::Duration;

use tether::durable::{
    repair, BootId, Class, FileId, FsStorage, Fsync, LogConfig, LogError, MemStorage, Position,
    ShardLog, Storage, FRAME_OVERHEAD, HEADER_LEN,
};

const FIRST: &str = "seg-0000000000000000.log";

fn config() -> LogConfig {
    LogConfig {
        boot_id: Some(BootId([1; 16])),
        ..LogConfig::default()
    }
}

fn open(
    fs: &MemStorage,
    config: &LogConfig,
) -> Result<(ShardLog<MemStorage>, Vec<Vec<u8>>), LogError> {
    let mut records = Vec::new();
    let (log, report) =
        ShardLog::open(fs.clone(), config.clone(), |_, p| records.push(p.to_vec()))?;
    assert_eq!(report.records, records.len() as u64);
    Ok((log, records))
}

fn record(i: usize) -> Vec<u8> {
    format!("record {i} {}", "x".repeat(i * 7)).into_bytes()
}

/// A log of `n` committed records in its first segment; returns the file's bytes and where
/// each record's frame starts.
fn written_log(n: usize) -> (Vec<u8>, Vec<u64>) {
    let fs = MemStorage::new();
    let (mut log, _) = open(&fs, &config()).unwrap();
    let offsets = (0..n)
        .map(|i| log.append(&record(i), Class::New).unwrap().offset)
        .collect();
    log.commit(0).unwrap();
    (fs.read(FIRST).unwrap(), offsets)
}

fn with_file(bytes: &[u8]) -> MemStorage {
    let fs = MemStorage::new();
    fs.overwrite(FIRST, bytes.to_vec());
    fs
}

/// Recovery keeps `expected` records, then takes a new one that a reopen sees after them.
fn assert_recovers(fs: &MemStorage, expected: usize, what: &str) {
    let (mut log, records) = open(fs, &config()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let want: Vec<Vec<u8>> = (0..expected).map(record).collect();
    assert_eq!(records, want, "{what}");
    log.append(b"after", Class::New).unwrap();
    log.commit(0).unwrap();
    drop(log);
    let (_, again) = open(fs, &config()).unwrap();
    assert_eq!(
        again.len(),
        expected + 1,
        "{what}: the new record after recovery"
    );
    assert_eq!(
        again.last().map(Vec::as_slice),
        Some(&b"after"[..]),
        "{what}"
    );
}

#[test]
fn a_log_cut_at_every_byte_keeps_exactly_the_longest_valid_prefix() {
    let (bytes, offsets) = written_log(6);
    let ends: Vec<usize> = (0..6)
        .map(|i| offsets[i] as usize + FRAME_OVERHEAD + record(i).len())
        .collect();
    assert_eq!(*ends.last().unwrap(), bytes.len());
    for cut in 0..=bytes.len() {
        let fs = with_file(&bytes[..cut]);
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        let (_, report) = ShardLog::open(fs.clone(), config(), |_, _| {}).unwrap();
        let boundary = cut == HEADER_LEN || ends.contains(&cut);
        assert_eq!(
            report.torn.is_empty(),
            boundary,
            "cut at {cut}: torn tail reported?"
        );
        let dropped: u64 = report.torn.iter().map(|t| t.dropped_bytes).sum();
        let valid_end = if cut < HEADER_LEN {
            0
        } else {
            ends.iter()
                .copied()
                .filter(|&e| e <= cut)
                .max()
                .unwrap_or(HEADER_LEN)
        };
        assert_eq!(
            dropped,
            (cut - valid_end) as u64,
            "cut at {cut}: bytes dropped"
        );
        assert_recovers(&with_file(&bytes[..cut]), whole, &format!("cut at {cut}"));
    }
}

#[test]
fn every_flipped_byte_of_the_last_record_is_a_torn_tail() {
    let (bytes, offsets) = written_log(6);
    for i in offsets[5] as usize..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[i] ^= 0x5a;
        let fs = with_file(&damaged);
        let (_, report) = ShardLog::open(fs.clone(), config(), |_, _| {}).unwrap();
        assert_eq!(report.torn.len(), 1, "byte {i}");
        assert_eq!(report.torn[0].offset, offsets[5], "byte {i}");
        assert_recovers(&with_file(&damaged), 5, &format!("flipped byte {i}"));
    }
}

#[test]
fn a_damaged_middle_record_is_corruption_and_repair_keeps_the_prefix() {
    let (bytes, offsets) = written_log(6);
    for i in offsets[2] as usize..offsets[3] as usize {
        let mut damaged = bytes.clone();
        damaged[i] ^= 0x01;
        let fs = with_file(&damaged);
        match ShardLog::open(fs.clone(), config(), |_, _| {}) {
            Err(LogError::Corrupt { file, offset, .. }) => {
                assert_eq!(file, format!("mem:{FIRST}"));
                assert_eq!(offset, offsets[2], "byte {i}");
            }
            other => panic!("byte {i}: expected corruption, got {other:?}"),
        }
        let report = repair(&fs, &config()).unwrap();
        assert_eq!(report.kept_records, 2, "byte {i}");
        assert_eq!(
            report.dropped_records, 3,
            "byte {i}: the valid records after the damage"
        );
        assert_eq!(report.dropped_bytes, (bytes.len() as u64) - offsets[2]);
        let (file, offset, _) = report.cut.clone().unwrap();
        assert_eq!(
            (file.as_str(), offset),
            (&*format!("mem:{FIRST}"), offsets[2])
        );
        assert_recovers(&fs, 2, &format!("repaired byte {i}"));
    }
    // A sound log is left as it is.
    let fs = with_file(&bytes);
    let report = repair(&fs, &config()).unwrap();
    assert_eq!(
        (report.cut, report.kept_records, report.dropped_bytes),
        (None, 6, 0)
    );
}

#[test]
fn corruption_error_names_the_file_and_says_how_to_recover() {
    let (mut bytes, offsets) = written_log(3);
    bytes[offsets[0] as usize + FRAME_OVERHEAD] ^= 1;
    let err = ShardLog::open(with_file(&bytes), config(), |_, _| {}).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(FIRST) && text.contains("byte 64") && text.contains("tether repair"),
        "{text}"
    );
}

#[test]
fn a_failed_fsync_poisons_the_log_and_a_restart_recovers_everything_committed() {
    let fs = MemStorage::new();
    let (mut log, _) = open(&fs, &config()).unwrap();
    for i in 0..3 {
        log.append(&record(i), Class::New).unwrap();
    }
    log.commit(0).unwrap();
    fs.fail_next_sync();
    log.append(&record(3), Class::New).unwrap();
    assert!(matches!(log.commit(1), Err(LogError::SyncFailed { .. })));
    assert!(log.is_poisoned());
    // Never retried: every later call fails, typed, even once the disk would work again.
    assert!(matches!(log.commit(2), Err(LogError::Poisoned { .. })));
    assert!(matches!(
        log.append(b"x", Class::MustWrite),
        Err(LogError::Poisoned { .. })
    ));
    assert!(matches!(log.sync(3), Err(LogError::Poisoned { .. })));
    assert!(matches!(log.reclaim(), Err(LogError::Poisoned { .. })));
    assert!(matches!(log.snapshot(), Err(LogError::Poisoned { .. })));
    let (syncs, _) = fs.counts();
    drop(log);
    assert_eq!(fs.counts().0, syncs, "no sync was retried");
    // The power goes: the three committed records come back; the fourth was never synced.
    let (_, records) = open(&fs.crash(0), &config()).unwrap();
    assert_eq!(records, (0..3).map(record).collect::<Vec<_>>());
}

#[test]
fn a_failed_write_poisons_the_log_too() {
    let fs = MemStorage::new();
    let (mut log, _) = open(&fs, &config()).unwrap();
    log.append(&record(0), Class::New).unwrap();
    log.commit(0).unwrap();
    fs.fail_next_write();
    log.append(&record(1), Class::New).unwrap();
    assert!(matches!(log.commit(1), Err(LogError::WriteFailed { .. })));
    assert!(matches!(
        log.append(b"x", Class::New),
        Err(LogError::Poisoned { .. })
    ));
    drop(log);
    // The half-written record is a torn tail.
    let (_, report) = ShardLog::open(fs.process_crash(), config(), |_, _| {}).unwrap();
    assert_eq!((report.records, report.torn.len()), (1, 1));
}

#[test]
fn the_disk_bound_refuses_new_records_at_the_edge_and_keeps_the_reserve_for_must_write() {
    let config = LogConfig {
        max_bytes: 4096,
        reserve_bytes: 1024,
        ..config()
    };
    let fs = MemStorage::new();
    let (mut log, _) = open(&fs, &config).unwrap();
    // The active segment's header takes 64 bytes; a New record may fill up to 3072.
    let fits = 3072 - HEADER_LEN - FRAME_OVERHEAD;
    log.append(&vec![1; fits], Class::New).unwrap();
    match log.append(b"", Class::New) {
        Err(LogError::StorageFull { used, limit }) => assert_eq!((used, limit), (3072, 3072)),
        other => panic!("expected StorageFull, got {other:?}"),
    }
    // Must-write records use the reserve, up to the bound and not a byte past it.
    assert!(matches!(
        log.append(&vec![2; 1024 - FRAME_OVERHEAD + 1], Class::MustWrite),
        Err(LogError::StorageFull { limit: 4096, .. })
    ));
    log.append(&vec![2; 1024 - FRAME_OVERHEAD], Class::MustWrite)
        .unwrap();
    assert!(matches!(
        log.append(b"", Class::MustWrite),
        Err(LogError::StorageFull { .. })
    ));
    log.commit(0).unwrap();
    drop(log);
    // Nothing accepted was lost.
    let (_, records) = open(&fs.crash(0), &config).unwrap();
    assert_eq!(records.len(), 2);
}

#[test]
fn a_full_file_system_refuses_new_records_keeps_the_batch_and_commits_it_later() {
    let fs = MemStorage::new();
    let (mut log, _) = open(&fs, &config()).unwrap();
    log.append(&record(0), Class::New).unwrap();
    log.commit(0).unwrap();
    fs.set_capacity(Some(fs.used_bytes() + 20));
    log.append(&record(1), Class::New).unwrap();
    log.append(&record(2), Class::MustWrite).unwrap();
    assert!(matches!(log.commit(1), Err(LogError::StorageFull { .. })));
    assert!(!log.is_poisoned(), "out of space is not a failed write");
    // New work is refused until a commit gets through; must-write records are taken.
    assert!(matches!(
        log.append(b"new", Class::New),
        Err(LogError::StorageFull { .. })
    ));
    log.append(&record(3), Class::MustWrite).unwrap();
    assert!(matches!(log.commit(2), Err(LogError::StorageFull { .. })));
    fs.set_capacity(None);
    let c = log.commit(3).unwrap();
    assert_eq!(c.records, 3);
    log.append(&record(4), Class::New).unwrap();
    log.commit(4).unwrap();
    drop(log);
    let (_, records) = open(&fs.crash(0), &config()).unwrap();
    assert_eq!(
        records,
        (0..5).map(record).collect::<Vec<_>>(),
        "no partial write left behind"
    );
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-durable-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_second_opener_of_a_directory_gets_a_typed_error_naming_it() {
    let dir = temp_dir("lock");
    let first = FsStorage::open(&dir).unwrap();
    let (log, _) = ShardLog::open(first, config(), |_, _| {}).unwrap();
    match FsStorage::open(&dir) {
        Err(LogError::Locked { dir: locked }) => assert_eq!(locked, dir),
        other => panic!("expected Locked, got {other:?}"),
    }
    let text = FsStorage::open(&dir).unwrap_err().to_string();
    assert!(
        text.contains(&dir.display().to_string()) && text.contains("in use"),
        "{text}"
    );
    drop(log);
    assert!(FsStorage::open(&dir).is_ok(), "the lock goes with the log");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_real_file_system_keeps_records_across_reopen_and_repair_works_there() {
    let dir = temp_dir("real");
    let (mut log, _) = ShardLog::open(FsStorage::open(&dir).unwrap(), config(), |_, _| {}).unwrap();
    for i in 0..10 {
        log.append(&record(i), Class::New).unwrap();
    }
    let c = log.commit(0).unwrap();
    assert_eq!(c.synced_to, c.written_to);
    drop(log);
    let mut seen = Vec::new();
    let (log, report) = ShardLog::open(FsStorage::open(&dir).unwrap(), config(), |_, p| {
        seen.push(p.to_vec())
    })
    .unwrap();
    assert_eq!(seen, (0..10).map(record).collect::<Vec<_>>());
    assert!(report.torn.is_empty());
    drop(log);
    // Damage record 4 on disk: refused with the path, repaired to four records.
    let path = dir.join(FIRST);
    let mut bytes = std::fs::read(&path).unwrap();
    let off = HEADER_LEN
        + (0..4)
            .map(|i| FRAME_OVERHEAD + record(i).len())
            .sum::<usize>();
    bytes[off + FRAME_OVERHEAD] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = ShardLog::open(FsStorage::open(&dir).unwrap(), config(), |_, _| {}).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { file, offset, .. } if *file == path.display().to_string() && *offset == off as u64),
        "{err}"
    );
    let storage = FsStorage::open(&dir).unwrap();
    let report = repair(&storage, &config()).unwrap();
    assert_eq!((report.kept_records, report.dropped_records), (4, 5));
    let (_, records) = ShardLog::open(storage, config(), |_, _| {})
        .map(|(l, r)| (l, r.records))
        .unwrap();
    assert_eq!(records, 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_commit_is_one_write_and_one_sync_whatever_the_batch() {
    let fs = MemStorage::new();
    let (mut log, _) = open(&fs, &config()).unwrap();
    log.commit(0).unwrap(); // the new segment's directory entry
    for batch in [1, 64, 1024] {
        for i in 0..batch {
            log.append(&record(i % 10), Class::New).unwrap();
        }
        let before = fs.counts();
        let c = log.commit(0).unwrap();
        assert_eq!(c.records, batch as u32);
        assert_eq!(
            fs.counts(),
            (before.0 + 1, before.1 + 1),
            "batch {batch}: (syncs, writes)"
        );
    }
    // Nothing appended: nothing written, nothing synced.
    let before = fs.counts();
    assert!(!log.commit(0).unwrap().synced);
    assert_eq!(fs.counts(), before);
}

#[test]
fn interval_syncs_when_the_interval_has_passed_and_never_does_not() {
    let interval = LogConfig {
        fsync: Fsync::Interval(Duration::from_millis(10)),
        ..config()
    };
    let fs = MemStorage::new();
    let (mut log, _) = open(&fs, &interval).unwrap();
    log.append(b"a", Class::New).unwrap();
    assert!(log.commit(100).unwrap().synced, "the first commit syncs");
    log.append(b"b", Class::New).unwrap();
    let c = log.commit(109).unwrap();
    assert!(
        !c.synced && c.synced_to < c.written_to,
        "9 ms later: not yet"
    );
    let c = log.commit(110).unwrap();
    assert!(
        c.synced && c.synced_to == c.written_to,
        "10 ms later, with nothing new: synced"
    );
    log.append(b"c", Class::New).unwrap();
    log.commit(111).unwrap();
    drop(log);
    // A power cut loses the unsynced "c"; a process crash would not.
    assert_eq!(open(&fs.process_crash(), &interval).unwrap().1.len(), 3);
    assert_eq!(
        open(&fs.crash(0), &interval).unwrap().1,
        [b"a".to_vec(), b"b".to_vec()]
    );

    let never = LogConfig {
        fsync: Fsync::Never,
        ..config()
    };
    let fs = MemStorage::new();
    let (mut log, _) = open(&fs, &never).unwrap();
    let syncs = fs.counts().0;
    log.append(b"a", Class::New).unwrap();
    let c = log.commit(1_000_000).unwrap();
    assert!(!c.synced);
    assert_eq!(fs.counts().0, syncs, "Never never syncs a file");
    let c = log.sync(1_000_001).unwrap();
    assert!(
        c.synced && c.synced_to == c.written_to,
        "a forced sync does"
    );
}

#[test]
fn a_restart_in_another_boot_reports_possible_loss_unless_every_commit_synced() {
    for (fsync, lossy) in [
        (Fsync::Always, false),
        (Fsync::Interval(Duration::from_millis(5)), true),
        (Fsync::Never, true),
    ] {
        let first = LogConfig { fsync, ..config() };
        let fs = MemStorage::new();
        let (mut log, _) = open(&fs, &first).unwrap();
        log.append(b"a", Class::New).unwrap();
        log.commit(0).unwrap();
        drop(log);
        let (_, same) = ShardLog::open(fs.process_crash(), first.clone(), |_, _| {}).unwrap();
        assert!(!same.may_have_lost_unsynced, "{fsync:?}, same boot");
        assert_eq!(same.previous_boot, Some(BootId([1; 16])));
        let rebooted = LogConfig {
            boot_id: Some(BootId([2; 16])),
            ..first
        };
        let (_, other) = ShardLog::open(fs.crash(0), rebooted, |_, _| {}).unwrap();
        assert_eq!(
            other.may_have_lost_unsynced, lossy,
            "{fsync:?}, another boot"
        );
    }
}

#[test]
fn segments_roll_and_reclaim_deletes_those_with_nothing_held() {
    let config = LogConfig {
        segment_bytes: LogConfig::MIN_SEGMENT_BYTES,
        ..config()
    };
    let fs = MemStorage::new();
    let (mut log, _) = open(&fs, &config).unwrap();
    let mut kept: Option<Position> = None;
    for i in 0..40 {
        let pos = log.append(&[i as u8; 200], Class::New).unwrap();
        if i == 3 {
            log.hold(pos).unwrap();
            kept = Some(pos);
        }
        log.commit(0).unwrap();
    }
    let kept = kept.unwrap();
    let segments = |log: &ShardLog<MemStorage>| {
        log.files()
            .into_iter()
            .filter(|f| matches!(f, FileId::Segment(_)))
            .count()
    };
    assert!(
        segments(&log) >= 8,
        "1 KiB segments rolled: {:?}",
        log.files()
    );
    let deleted = log.reclaim().unwrap();
    assert_eq!(
        log.files(),
        [kept.file, FileId::Segment(log.end())],
        "only the held one and the active one stay"
    );
    assert!(!deleted.is_empty());
    assert!(matches!(log.release(kept), Ok(())));
    assert!(matches!(log.release(kept), Err(LogError::NotHeld)));
    log.reclaim().unwrap();
    assert_eq!(segments(&log), 1);
    assert!(matches!(log.hold(kept), Err(LogError::UnknownPosition)));
    drop(log);
    // The deletions are durable.
    let (_, records) = open(&fs.crash(0), &config).unwrap();
    assert!(records.is_empty());
}

#[test]
fn a_snapshot_replaces_the_segments_it_covers() {
    let config = LogConfig {
        snapshot_floor_bytes: 1000,
        segment_bytes: LogConfig::MIN_SEGMENT_BYTES,
        ..config()
    };
    let fs = MemStorage::new();
    let (mut log, _) = open(&fs, &config).unwrap();
    let mut live = Vec::new();
    for i in 0..30 {
        let pos = log.append(&record(i), Class::New).unwrap();
        if i % 10 == 0 {
            log.hold(pos).unwrap();
            live.push(i);
        }
    }
    log.append(b"pending", Class::New).unwrap();
    assert!(matches!(log.snapshot(), Err(LogError::PendingRecords)));
    log.commit(0).unwrap();
    assert!(log.snapshot_due(), "{:?}", log.space());
    let mut snap = log.snapshot().unwrap();
    let positions: Vec<Position> = live
        .iter()
        .map(|&i| snap.append(&record(i)).unwrap())
        .collect();
    assert_eq!(snap.finish().unwrap(), 3);
    for p in positions {
        log.hold(p).unwrap();
    }
    assert!(!log.snapshot_due());
    let files = log.files();
    assert_eq!(
        files.len(),
        2,
        "the active segment and the snapshot: {files:?}"
    );
    assert!(log.space().log_bytes < 1000);
    log.append(b"after", Class::New).unwrap();
    log.commit(1).unwrap();
    drop(log);
    let (_, records) = open(&fs.crash(0), &config).unwrap();
    let mut want: Vec<Vec<u8>> = live.iter().map(|&i| record(i)).collect();
    want.push(b"after".to_vec());
    assert_eq!(records, want);
}

#[test]
fn every_setting_is_checked_at_its_edge() {
    let ok = |c: LogConfig| c.validate().is_ok();
    let setting = |c: LogConfig| match c.validate() {
        Err(LogError::Config { setting, .. }) => setting,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert!(ok(config()));
    assert!(ok(LogConfig {
        segment_bytes: 1024,
        ..config()
    }));
    assert_eq!(
        setting(LogConfig {
            segment_bytes: 1023,
            ..config()
        }),
        "segment_bytes"
    );
    assert!(ok(LogConfig {
        max_record_bytes: 1,
        ..config()
    }));
    assert_eq!(
        setting(LogConfig {
            max_record_bytes: 0,
            ..config()
        }),
        "max_record_bytes"
    );
    assert!(ok(LogConfig {
        max_record_bytes: 1 << 30,
        ..config()
    }));
    assert_eq!(
        setting(LogConfig {
            max_record_bytes: (1 << 30) + 1,
            ..config()
        }),
        "max_record_bytes"
    );
    assert!(ok(LogConfig {
        max_bytes: 101,
        reserve_bytes: 100,
        ..config()
    }));
    assert_eq!(
        setting(LogConfig {
            max_bytes: 100,
            reserve_bytes: 100,
            ..config()
        }),
        "reserve_bytes"
    );
    assert_eq!(
        setting(LogConfig {
            snapshot_ratio: 0,
            ..config()
        }),
        "snapshot_ratio"
    );
    assert_eq!(
        setting(LogConfig {
            fsync: Fsync::Interval(Duration::ZERO),
            ..config()
        }),
        "fsync"
    );
    assert!(ok(LogConfig {
        fsync: Fsync::Interval(Duration::from_millis(1)),
        ..config()
    }));
    // ShardLog::open checks them too.
    assert!(matches!(
        ShardLog::open(
            MemStorage::new(),
            LogConfig {
                snapshot_ratio: 0,
                ..config()
            },
            |_, _| {}
        ),
        Err(LogError::Config { .. })
    ));

    let small = LogConfig {
        max_record_bytes: 10,
        ..config()
    };
    let (mut log, _) = open(&MemStorage::new(), &small).unwrap();
    log.append(&[0; 10], Class::New).unwrap();
    assert!(matches!(
        log.append(&[0; 11], Class::New),
        Err(LogError::RecordTooLarge { len: 11, max: 10 })
    ));
}

#[test]
fn a_log_of_another_shard_is_refused() {
    let fs = MemStorage::new();
    let (mut log, _) = open(&fs, &config()).unwrap();
    log.append(b"a", Class::New).unwrap();
    log.commit(0).unwrap();
    drop(log);
    let other = LogConfig {
        shard: 7,
        ..config()
    };
    assert!(
        matches!(open(&fs, &other), Err(LogError::Corrupt { offset: 0, reason, .. }) if reason.contains("another shard"))
    );
}
