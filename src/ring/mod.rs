//! The lock-free structures shared between threads, and the only home of `unsafe` code.
//!
//! - [`mpsc`]: the shard inbox, any thread to one worker (Vyukov's bounded queue).
//! - [`spsc`]: the ring under a session's outbox, one worker to one session (Lamport's queue).
//! - [`waker`]: the session task's waker slot.
//! - [`outbox`]: ring + waker + end flag, the delivery window's transport.
//! - [`signal`]: sessions telling their worker about acks and closes, never failing.
//!
//! Each one is model-checked with loom (`RUSTFLAGS="--cfg loom" cargo test --release --lib loom`).

pub(crate) mod mpsc;
pub(crate) mod outbox;
pub(crate) mod signal;
pub(crate) mod spsc;
pub(crate) mod waker;
