//! [`MemStorage`]: an in-memory file system that keeps synced and unsynced bytes apart, so
//! tests can crash it, and that injects failures on request.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::storage::{Storage, StorageFile};

/// An in-memory directory for tests: every byte appended is readable at once, but only what
/// a `sync` (file data) or `sync_dir` (names) made durable survives
/// [`crash`](MemStorage::crash). It can also fail the next sync or write, run out of space, or
/// "lose power" after a number of operations. Clones share the same directory.
///
/// ```
/// use tether::durable::{MemStorage, Storage, StorageFile};
///
/// let fs = MemStorage::new();
/// let mut f = fs.create("a").unwrap();
/// fs.sync_dir().unwrap();
/// f.append(b"kept").unwrap();
/// f.sync().unwrap();
/// f.append(b" lost").unwrap();
/// assert_eq!(fs.read("a").unwrap(), b"kept lost");
/// // A crash that tears nothing off keeps only the synced bytes.
/// let after = fs.crash(0);
/// assert_eq!(after.read("a").unwrap(), b"kept");
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemStorage(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    inodes: Vec<Inode>,
    names: BTreeMap<String, usize>,
    durable_names: BTreeMap<String, usize>,
    // Name changes since the last sync_dir, oldest first; a crash keeps a prefix of them.
    pending: Vec<DirOp>,
    fail_sync: bool,
    fail_write: bool,
    capacity: Option<u64>,
    ops_left: Option<u64>,
    syncs: u64,
    writes: u64,
}

// Appends only ever grow `data` and truncation is synced at once, so the durable content is
// always a prefix of it.
#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: usize,
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(String, usize),
    Unlink(String),
}

fn err(kind: io::ErrorKind, what: &str) -> io::Error {
    io::Error::new(kind, format!("injected: {what}"))
}

impl State {
    /// Counts one mutating operation against `crash_after`; past it, everything fails.
    fn tick(&mut self) -> io::Result<()> {
        match &mut self.ops_left {
            Some(0) => Err(err(io::ErrorKind::Other, "power lost")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn used(&self) -> u64 {
        self.names
            .values()
            .map(|&i| self.inodes[i].data.len() as u64)
            .sum()
    }

    fn inode(&self, name: &str) -> io::Result<usize> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| err(io::ErrorKind::NotFound, name))
    }
}

impl MemStorage {
    /// An empty directory.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock already failed; keep going.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next file sync fails (once).
    pub fn fail_next_sync(&self) {
        self.state().fail_sync = true;
    }

    /// The next append writes half its bytes and fails (once).
    pub fn fail_next_write(&self) {
        self.state().fail_write = true;
    }

    /// The directory holds at most `bytes` (all files together); an append past it writes
    /// what fits and fails with ENOSPC. `None`: unbounded.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state().capacity = bytes;
    }

    /// After `ops` more mutating operations (create, append, sync, truncate, rename, remove,
    /// sync_dir) every operation fails, as if the power went there; then [`crash`](Self::crash).
    pub fn crash_after(&self, ops: u64) {
        self.state().ops_left = Some(ops);
    }

    /// File syncs and appends so far: `(syncs, appends)`.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state();
        (s.syncs, s.writes)
    }

    /// Bytes in all files.
    pub fn used_bytes(&self) -> u64 {
        self.state().used()
    }

    /// The directory as a power cut leaves it: each file keeps its synced bytes plus a prefix
    /// of its unsynced ones, and a prefix of the unsynced name changes survives; `seed` picks
    /// how long each prefix is (0 keeps no unsynced byte and no unsynced name change). The
    /// result is a separate directory with no faults armed; handles into this one no longer
    /// touch it.
    pub fn crash(&self, seed: u64) -> MemStorage {
        let s = self.state();
        let mut rng = seed;
        let mut pick = |n: usize| -> usize {
            if seed == 0 || n == 0 {
                return 0;
            }
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % (n as u64 + 1)) as usize
        };
        let mut names = s.durable_names.clone();
        let kept_ops = pick(s.pending.len());
        for op in &s.pending[..kept_ops] {
            match op {
                DirOp::Link(name, inode) => names.insert(name.clone(), *inode),
                DirOp::Unlink(name) => names.remove(name),
            };
        }
        let inodes = s
            .inodes
            .iter()
            .map(|inode| {
                let len = inode.durable + pick(inode.data.len() - inode.durable);
                Inode {
                    data: inode.data[..len].to_vec(),
                    durable: len,
                }
            })
            .collect();
        MemStorage(Arc::new(Mutex::new(State {
            inodes,
            durable_names: names.clone(),
            names,
            ..State::default()
        })))
    }

    /// The directory as `kill -9` of the process leaves it: everything written survives.
    pub fn process_crash(&self) -> MemStorage {
        let s = self.state();
        let inodes = s
            .inodes
            .iter()
            .map(|i| Inode {
                data: i.data.clone(),
                durable: i.data.len(),
            })
            .collect();
        MemStorage(Arc::new(Mutex::new(State {
            inodes,
            names: s.names.clone(),
            durable_names: s.names.clone(),
            ..State::default()
        })))
    }

    /// Replaces a file's content at once, durably: for tests that damage files.
    pub fn overwrite(&self, name: &str, data: Vec<u8>) {
        let mut s = self.state();
        let inode = s.inodes.len();
        s.inodes.push(Inode {
            durable: data.len(),
            data,
        });
        s.names.insert(name.to_string(), inode);
        s.durable_names.insert(name.to_string(), inode);
    }

    fn link(s: &mut State, name: &str, inode: usize) {
        s.names.insert(name.to_string(), inode);
        s.pending.push(DirOp::Link(name.to_string(), inode));
    }
}

impl Storage for MemStorage {
    type File = MemFile;

    fn create(&self, name: &str) -> io::Result<MemFile> {
        let mut s = self.state();
        s.tick()?;
        if s.names.contains_key(name) {
            return Err(err(io::ErrorKind::AlreadyExists, name));
        }
        let inode = s.inodes.len();
        s.inodes.push(Inode::default());
        Self::link(&mut s, name, inode);
        Ok(MemFile {
            fs: self.clone(),
            inode,
        })
    }

    fn open(&self, name: &str) -> io::Result<MemFile> {
        let inode = self.state().inode(name)?;
        Ok(MemFile {
            fs: self.clone(),
            inode,
        })
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let s = self.state();
        let inode = s.inode(name)?;
        Ok(s.inodes[inode].data.clone())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = self.state();
        s.tick()?;
        let inode = s.inode(from)?;
        s.names.remove(from);
        s.pending.push(DirOp::Unlink(from.to_string()));
        Self::link(&mut s, to, inode);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut s = self.state();
        s.tick()?;
        s.inode(name)?;
        s.names.remove(name);
        s.pending.push(DirOp::Unlink(name.to_string()));
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state().names.keys().cloned().collect())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.state();
        s.tick()?;
        s.durable_names = s.names.clone();
        s.pending.clear();
        Ok(())
    }

    fn locate(&self, name: &str) -> String {
        format!("mem:{name}")
    }
}

/// A file of a [`MemStorage`].
#[derive(Debug)]
pub struct MemFile {
    fs: MemStorage,
    inode: usize,
}

impl StorageFile for MemFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let mut s = self.fs.state();
        s.tick()?;
        s.writes += 1;
        if std::mem::take(&mut s.fail_write) {
            s.inodes[self.inode]
                .data
                .extend_from_slice(&data[..data.len() / 2]);
            return Err(err(io::ErrorKind::Other, "write failed"));
        }
        if let Some(cap) = s.capacity {
            let room = cap.saturating_sub(s.used()) as usize;
            if data.len() > room {
                s.inodes[self.inode].data.extend_from_slice(&data[..room]);
                return Err(io::Error::from_raw_os_error(28));
            }
        }
        s.inodes[self.inode].data.extend_from_slice(data);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.fs.state();
        s.tick()?;
        s.syncs += 1;
        if std::mem::take(&mut s.fail_sync) {
            return Err(err(io::ErrorKind::Other, "fsync failed"));
        }
        let inode = &mut s.inodes[self.inode];
        inode.durable = inode.data.len();
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.fs.state();
        s.tick()?;
        let inode = &mut s.inodes[self.inode];
        inode.data.truncate(len as usize);
        inode.durable = inode.data.len();
        Ok(())
    }
}
