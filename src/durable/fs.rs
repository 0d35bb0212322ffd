//! [`FsStorage`]: the log's directory on the real file system, locked against a second opener.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::storage::{Storage, StorageFile};
use super::LogError;

/// The name of the lock file inside a log directory.
pub const LOCK_FILE: &str = "LOCK";

/// A log directory on the real file system. Opening it takes an exclusive advisory lock on
/// `LOCK` inside it, held until the value is dropped, so two processes (or two logs in one
/// process) never write the same directory.
///
/// ```
/// use tether::durable::{FsStorage, LogError};
///
/// let dir = std::env::temp_dir().join(format!("tether-doc-lock-{}", std::process::id()));
/// let first = FsStorage::open(&dir).unwrap();
/// assert!(matches!(FsStorage::open(&dir), Err(LogError::Locked { .. })));
/// drop(first);
/// assert!(FsStorage::open(&dir).is_ok());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug)]
pub struct FsStorage {
    dir: PathBuf,
    // Held for the lock; closing it releases the lock.
    _lock: File,
}

impl FsStorage {
    /// Opens (creating if needed) the directory `dir` and locks it. A directory another
    /// opener holds gives [`LogError::Locked`] naming it.
    pub fn open(dir: impl AsRef<Path>) -> Result<FsStorage, LogError> {
        let dir = dir.as_ref().to_path_buf();
        let io_err = |op: &'static str, source: io::Error| LogError::Io {
            op,
            file: dir.display().to_string(),
            source,
        };
        fs::create_dir_all(&dir).map_err(|e| io_err("create the log directory", e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| io_err("open the lock file", e))?;
        // Called through the trait: on newer toolchains std's inherent File::try_lock would win.
        match fs4::FileExt::try_lock(&lock) {
            Ok(()) => Ok(FsStorage { dir, _lock: lock }),
            Err(fs4::TryLockError::WouldBlock) => Err(LogError::Locked { dir }),
            Err(fs4::TryLockError::Error(e)) => Err(io_err("lock the log directory", e)),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Storage for FsStorage {
    type File = FsFile;

    fn create(&self, name: &str) -> io::Result<FsFile> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(self.dir.join(name))?;
        Ok(FsFile(file))
    }

    fn open(&self, name: &str) -> io::Result<FsFile> {
        Ok(FsFile(
            OpenOptions::new().append(true).open(self.dir.join(name))?,
        ))
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.dir.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn locate(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A file of an [`FsStorage`], open for appending.
#[derive(Debug)]
pub struct FsFile(File);

impl StorageFile for FsFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        // set_len changes the size, which is metadata: sync_all, not sync_data.
        self.0.sync_all()
    }
}
