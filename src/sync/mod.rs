//! Everything shared between threads, and the only home of `unsafe` code: the lock-free
//! rings, public and stable because they are useful on their own, and the crate-private
//! structures built on them.
//!
//! - [`mpsc`]: the shard inbox, any thread to one worker (Vyukov's bounded queue).
//! - [`spsc`]: the ring under a session's outbox, one worker to one session (Lamport's queue).
//! - `waker` (crate-private): the session task's waker slot.
//! - `outbox` (crate-private): ring + waker + end flag, the delivery window's transport.
//! - `signal` (crate-private): sessions telling their worker about acks and closes, never
//!   failing.
//! - `park` (crate-private): the park/wake handshake between a worker and those who feed it.
//!
//! Each one is model-checked with loom (`RUSTFLAGS="--cfg loom" cargo test --release --lib loom`).

pub mod mpsc;
pub(crate) mod outbox;
pub(crate) mod park;
pub(crate) mod signal;
pub mod spsc;
pub(crate) mod waker;

/// A push into a full ring: the value, handed back untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> Full<T> {
    /// The value that did not fit.
    ///
    /// ```
    /// let (mut tx, _rx) = tether::sync::spsc::channel::<&str>(1);
    /// tx.push("first").unwrap();
    /// assert_eq!(tx.push("second").unwrap_err().into_inner(), "second");
    /// ```
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::fmt::Display for Full<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ring is full")
    }
}

impl<T: std::fmt::Debug> std::error::Error for Full<T> {}
