//! The storage seam: the few file operations the log needs, so that tests can run it on a
//! fake file system that loses unsynced bytes on a simulated crash ([`MemStorage`]) and the
//! server on the real one ([`FsStorage`]).
//!
//! [`MemStorage`]: super::MemStorage
//! [`FsStorage`]: super::FsStorage

use std::io;

/// One directory holding one log. Names are plain file names inside it.
pub trait Storage: Send {
    /// A file open for appending.
    type File: StorageFile;

    /// Creates a new, empty file; an existing one of that name is an error.
    fn create(&self, name: &str) -> io::Result<Self::File>;
    /// Opens an existing file for appending at its end.
    fn open(&self, name: &str) -> io::Result<Self::File>;
    /// The whole content of a file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Renames `from` to `to`, replacing `to`. Durable after [`sync_dir`](Self::sync_dir).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file. Durable after [`sync_dir`](Self::sync_dir).
    fn remove(&self, name: &str) -> io::Result<()>;
    /// The names of the files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Makes creations, renames and removals so far durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Where a file lies, for error messages (the full path on a real file system).
    fn locate(&self, name: &str) -> String;
}

/// A file open for appending.
pub trait StorageFile: Send {
    /// Appends all of `data` (or fails, possibly after writing a prefix of it).
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes and makes that durable.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}
