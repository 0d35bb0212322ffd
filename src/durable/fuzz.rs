//! [`log_ops`]: the shard log on the crashing fake file system, against a model of what each
//! crash must keep.
//!
//! Input: a mode byte (`% 3`: `Always`, `Interval(5 ms)`, `Never`), then operations of 2
//! bytes. `op % 32`: 0..=15 append a record (the second byte picks its size, its class and
//! whether it is held); 16..=21 commit (or, one time in five, a forced `sync`) after
//! advancing the clock; 22 and 23 release a held record; 24 reclaim; 25 snapshot the held
//! records; 26 and 27 crash: a process crash (`kill -9`: everything written survives) or a
//! power cut (a random prefix of the unsynced bytes and names survives) in another boot; 28
//! arms a fault: a failing sync, a failing write, or a power loss a few storage operations
//! ahead (the next crash comes later); 29..=31 do nothing.
//! The input ends with a power cut.
//!
//! After each crash the log is reopened and the replay checked: every record intact, none
//! twice, in log order, every held record that the crash mode guaranteed present (a power
//! cut: its commit returned with it synced; a process crash: written), nothing that no commit
//! ever tried to write, and a prefix: no held record missing before one that is present.
//! After a failed sync or write every call must fail, typed, until the crash.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{BootId, Class, Fsync, FsyncMode, LogConfig, LogError, MemStorage, Position, ShardLog};

const MAX_OPS: usize = 2048;

#[derive(Debug, Clone)]
struct Rec {
    id: u64,
    pos: Position,
    end_lsn: u64,
    held: bool,
    attempted: bool,
    written: bool,
    synced: bool,
}

fn payload(id: u64, snapshot: bool, len: usize) -> Vec<u8> {
    let mut p = id.to_le_bytes().to_vec();
    p.push(u8::from(snapshot));
    p.extend((0..len).map(|i| (id as u8).wrapping_mul(31).wrapping_add(i as u8)));
    p
}

/// Decodes a replayed payload: `(id, from snapshot)`, after checking its filler.
fn decode(p: &[u8]) -> (u64, bool) {
    assert!(p.len() >= 9, "replayed record too short: {p:?}");
    let id = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
    assert_eq!(
        p,
        payload(id, p[8] == 1, p.len() - 9),
        "record {id} damaged"
    );
    (id, p[8] == 1)
}

struct Run {
    config: LogConfig,
    fs: MemStorage,
    log: Option<ShardLog<MemStorage>>,
    recs: Vec<Rec>,
    next_id: u64,
    now: u64,
    boot: u8,
    crashed: bool,
}

impl Run {
    fn log(&mut self) -> &mut ShardLog<MemStorage> {
        self.log.as_mut().expect("the log is open")
    }

    /// A call after a failure: it must fail typed, and poisoning is for good.
    fn check_failure(&mut self, err: &LogError) {
        match err {
            LogError::StorageFull { .. } | LogError::PendingRecords => {}
            _ => assert!(
                self.crashed || self.log().is_poisoned(),
                "{err} without poison"
            ),
        }
    }

    fn append(&mut self, b: u8) {
        let class = if b & 1 == 0 {
            Class::New
        } else {
            Class::MustWrite
        };
        let id = self.next_id;
        let data = payload(id, false, usize::from(b) % 128);
        let poisoned = self.log().is_poisoned();
        match self.log().append(&data, class) {
            Ok(pos) => {
                assert!(!poisoned, "append after poison succeeded");
                self.next_id += 1;
                let held = b & 2 == 0;
                if held {
                    self.log().hold(pos).expect("hold a fresh record");
                }
                let end_lsn = self.log().end();
                self.recs.push(Rec {
                    id,
                    pos,
                    end_lsn,
                    held,
                    attempted: false,
                    written: false,
                    synced: false,
                });
            }
            Err(e) => self.check_failure(&e),
        }
    }

    fn commit(&mut self, b: u8) {
        self.now += u64::from(b % 8);
        for r in &mut self.recs {
            r.attempted = true;
        }
        let (now, mode) = (self.now, self.config.fsync);
        let result = if b % 5 == 0 {
            self.log().sync(now)
        } else {
            self.log().commit(now)
        };
        match result {
            Ok(c) => {
                assert_eq!(c.written_to, self.log().end(), "a commit writes everything");
                if mode == Fsync::Always || b % 5 == 0 {
                    assert_eq!(
                        c.synced_to, c.written_to,
                        "{mode:?} commit left bytes unsynced"
                    );
                }
                for r in &mut self.recs {
                    r.written |= r.end_lsn <= c.written_to;
                    r.synced |= r.end_lsn <= c.synced_to;
                }
            }
            Err(e) => self.check_failure(&e),
        }
    }

    fn release(&mut self, b: u8) {
        let held: Vec<usize> = (0..self.recs.len())
            .filter(|&i| self.recs[i].held)
            .collect();
        if let Some(&i) = held.get(usize::from(b) % held.len().max(1)) {
            self.recs[i].held = false;
            let pos = self.recs[i].pos;
            self.log().release(pos).expect("release a held record");
        }
    }

    fn reclaim(&mut self) {
        match self.log().reclaim() {
            Ok(_) => {
                let files: BTreeSet<_> = self.log().files().into_iter().collect();
                for r in self.recs.iter().filter(|r| r.held) {
                    assert!(
                        files.contains(&r.pos.file),
                        "reclaim dropped held record {}",
                        r.id
                    );
                }
            }
            Err(e) => self.check_failure(&e),
        }
    }

    fn snapshot(&mut self) {
        let held: Vec<Rec> = self.recs.iter().filter(|r| r.held).cloned().collect();
        let log = self.log.as_mut().expect("open");
        let mut writer = match log.snapshot() {
            Ok(w) => w,
            Err(e) => return self.check_failure(&e),
        };
        let mut fresh = Vec::new();
        for r in &held {
            match writer.append(&payload(r.id, true, (r.id % 50) as usize)) {
                Ok(pos) => fresh.push(Rec { pos, ..r.clone() }),
                Err(e) => {
                    drop(writer);
                    return self.check_failure(&e);
                }
            }
        }
        match writer.finish() {
            Ok(n) => {
                assert_eq!(n, held.len() as u64);
                for r in &mut fresh {
                    let pos = r.pos;
                    self.log().hold(pos).expect("hold a snapshot record");
                    r.attempted = true;
                    r.written = true;
                    r.synced = true;
                }
                self.recs = fresh;
            }
            Err(e) => self.check_failure(&e),
        }
    }

    /// Crashes, reopens and checks the replay against the model.
    fn crash(&mut self, power: bool, seed: u64) {
        drop(self.log.take());
        self.fs = if power {
            self.boot = self.boot.wrapping_add(1);
            self.fs.crash(seed)
        } else {
            self.fs.process_crash()
        };
        self.config.boot_id = Some(BootId([self.boot; 16]));
        let mut replayed: Vec<(u64, bool, Position)> = Vec::new();
        let (log, report) = ShardLog::open(self.fs.clone(), self.config.clone(), |pos, p| {
            let (id, snap) = decode(p);
            replayed.push((id, snap, pos));
        })
        .unwrap_or_else(|e| panic!("recovery after a crash failed: {e}"));
        if report.previous_fsync.is_some() {
            let lossy = power && report.previous_fsync != Some(FsyncMode::Always);
            assert_eq!(report.may_have_lost_unsynced, lossy);
        }
        assert_eq!(report.records, replayed.len() as u64);
        let ids: Vec<u64> = replayed.iter().map(|r| r.0).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "replay out of order or twice: {ids:?}"
        );
        let present: BTreeSet<u64> = ids.iter().copied().collect();
        let last = ids.last().copied();
        for r in &self.recs {
            let guaranteed = if power { r.synced } else { r.written };
            // A prefix, except after a power cut under Never, whose writeback order the log
            // does not control (a sealed segment's tail may be lost while later ones stay).
            let prefix = !(power && self.config.fsync == Fsync::Never);
            if r.held && (guaranteed || (prefix && last.is_some_and(|l| r.id < l))) {
                assert!(
                    present.contains(&r.id),
                    "held record {} lost (power={power})",
                    r.id
                );
            }
        }
        for id in &ids {
            let rec = self.recs.iter().find(|r| r.id == *id);
            // Records gone from the model (released, then a snapshot) may still be replayed
            // from segments the crash kept; they were written once.
            assert!(*id < self.next_id, "replay invented record {id}");
            if let Some(r) = rec {
                assert!(r.attempted, "record {id} replayed but never committed");
            }
        }
        let held: BTreeSet<u64> = self.recs.iter().filter(|r| r.held).map(|r| r.id).collect();
        self.log = Some(log);
        self.recs = replayed
            .into_iter()
            .map(|(id, _, pos)| Rec {
                id,
                pos,
                end_lsn: 0,
                held: held.contains(&id),
                attempted: true,
                written: true,
                synced: true,
            })
            .collect();
        for r in self.recs.iter().filter(|r| r.held) {
            let pos = r.pos;
            self.log
                .as_mut()
                .expect("open")
                .hold(pos)
                .expect("hold replayed");
        }
        self.crashed = false;
    }
}

/// Runs `data` as log operations with crashes and checks every recovery.
pub fn log_ops(data: &[u8]) {
    let Some((&mode, ops)) = data.split_first() else {
        return;
    };
    let fsync = match mode % 3 {
        0 => Fsync::Always,
        1 => Fsync::Interval(Duration::from_millis(5)),
        _ => Fsync::Never,
    };
    let config = LogConfig {
        fsync,
        segment_bytes: LogConfig::MIN_SEGMENT_BYTES,
        snapshot_floor_bytes: 0,
        boot_id: Some(BootId([1; 16])),
        ..LogConfig::default()
    };
    let fs = MemStorage::new();
    let (log, report) =
        ShardLog::open(fs.clone(), config.clone(), |_, _| {}).expect("open an empty log");
    assert_eq!(report.records, 0);
    let mut run = Run {
        config,
        fs,
        log: Some(log),
        recs: Vec::new(),
        next_id: 0,
        now: 0,
        boot: 1,
        crashed: false,
    };
    for op in ops.chunks_exact(2).take(MAX_OPS) {
        let b = op[1];
        match op[0] % 32 {
            0..=15 => run.append(b),
            16..=21 => run.commit(b),
            22 | 23 => run.release(b),
            24 => run.reclaim(),
            25 => run.snapshot(),
            26 => run.crash(false, 0),
            27 => run.crash(true, u64::from(b) + 1),
            28 => match b % 3 {
                0 => run.fs.fail_next_sync(),
                1 => run.fs.fail_next_write(),
                _ => {
                    run.fs.crash_after(u64::from(b % 16));
                    run.crashed = true;
                }
            },
            _ => {}
        }
    }
    run.crash(true, u64::from(data.len() as u32) + 1);
    // The recovered log takes new records.
    run.append(0);
    run.commit(0);
    assert!(!run.log().is_poisoned());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed in the fuzz corpus passes.
    #[test]
    fn log_corpus_replays() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/log_ops");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("the seed corpus exists") {
            let path = entry.expect("entry").path();
            log_ops(&std::fs::read(&path).expect("read seed"));
            n += 1;
        }
        assert!(n > 0, "empty corpus");
    }

    /// Random inputs from fixed seeds: the crash model's property test.
    #[test]
    fn random_crash_sequences_recover_what_was_promised() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for case in 0..300 {
            let len = 64 + (case * 37) % 900;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect();
            log_ops(&input);
        }
    }
}
