//! tether keeps a user's messages until the user acknowledges them.
//!
//! A service sends messages to users who may or may not be connected. While a user is away,
//! the engine keeps that user's messages in a mailbox, one queue per priority band; when the
//! user connects, it hands them over most urgent first, and keeps each one until the user
//! acknowledges it, so a connection that dies mid-delivery loses nothing.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use tether::{CloseReason, Engine, Message, Priority, UserId};
//!
//! let engine = Engine::builder().build().unwrap();
//! let alice = UserId::new("alice").unwrap();
//!
//! // Alice is away: both wait in her mailbox.
//! engine.send(&alice, Message::new("weekly digest").with_priority(Priority::Low)).await.unwrap();
//! engine.send(&alice, Message::new("your code: 4711").with_priority(Priority::Critical)).await.unwrap();
//!
//! // She connects and gets the urgent one first; the connection dies before she acks.
//! let mut session = engine.connect(&alice, None).await.unwrap();
//! let first = session.recv().await.unwrap();
//! assert_eq!(&first.payload()[..], b"your code: 4711");
//! let resume = session.resume_point();
//! drop(session);
//!
//! // She comes back with her resume point: what she had received counts as acknowledged.
//! let mut session = engine.connect(&alice, Some(resume)).await.unwrap();
//! assert!(session.info().recovered);
//! let next = session.recv().await.unwrap();
//! assert_eq!(&next.payload()[..], b"weekly digest");
//! session.ack(next.seq()).unwrap();
//! session.close(CloseReason::Normal);
//! # });
//! ```
//!
//! # Devices
//!
//! A user may be connected from several devices at once
//! ([`Engine::connect_device`]): each device has its own mailbox and gets every message sent
//! to the user, with its own seqs, acknowledgements and resume point. A program whose clients
//! never name a device ([`Engine::connect`]) has one mailbox per user, as above.
//!
//! # Architecture
//!
//! Users are hashed to shards. Each shard is one worker thread that alone owns its users'
//! mailboxes, fed by a bounded lock-free inbox ([`sync::mpsc`]); a session receives through a
//! bounded lock-free outbox ([`sync::spsc`]) sized to the delivery window; acks travel back
//! through a list that never fails. `docs/architecture.md` in the repository draws the data
//! path and says where each module sits on it.
//!
//! # Stability
//!
//! Beyond the engine's own types, four modules are public and stable because they are useful
//! on their own: [`sync`] (the bounded MPSC and SPSC rings), [`time`] (the hierarchical timing
//! wheel and the clock), [`breaker`] (the circuit breaker) and [`durable`] (the append-only,
//! checksummed shard log with group commit). Everything else in the engine is private.
//! `cluster` (cargo feature `redis`, on by default) is the Redis mailbox store that lets several
//! nodes share users; it is public, and not yet stable, while it is wired behind the engine.
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `server` (default) | `server`: the WebSocket and HTTP front end, and the `tether` binary |
//! | `client` (default) | `client`: a Rust client that reconnects and resumes by itself |
//! | `redis` (default) | `cluster`: the Redis mailbox store, for several nodes sharing users |
//!
//! Either adds `protocol`, the wire format both speak. With neither
//! (`default-features = false`) the crate is the engine alone; with only `client` it builds
//! without the server's dependencies (no hyper, clap, toml, tracing-subscriber or mimalloc).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

// The vocabulary: what users name. No module here imports from the mechanism below it.
mod backoff;
pub mod breaker;
mod config;
mod error;
mod message;
mod metrics;
mod outcome;
mod session;
mod shutdown;
mod stream;

// The mechanism: lock-free structures, time, the single-writer shards and their logs.
pub mod durable;
mod loom;
mod shard;
pub mod sync;
pub mod time;

// The handles: how a program reaches the shards.
mod engine;

// Mailboxes in Redis, shared by several nodes. Not under loom: tokio's loom build has no
// networking.
#[cfg(all(feature = "redis", not(loom)))]
pub mod cluster;

// The network: the wire protocol, the Rust client, the server.
#[cfg(all(feature = "client", not(loom)))]
pub mod client;
#[cfg(all(any(feature = "server", feature = "client"), not(loom)))]
pub mod protocol;
#[cfg(all(feature = "server", not(loom)))]
pub mod server;

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz;

pub use backoff::Backoff;
pub use config::{
    Config, ConfigError, DedupMode, EngineBuilder, OverflowPolicy, ParseDedupModeError,
    ParseOverflowPolicyError, ShedThresholds, UserLimits,
};
pub use durable::Fsync;
pub use engine::{Engine, PendingOutcome, Session};
pub use error::{
    AbortStreamError, AckError, ConnectError, SendError, SetLimitsError, TryRecvError, TrySendError,
};
pub use message::{
    AbortReason, Delivery, DeviceId, InvalidInput, Message, MessageId, Priority, StreamPart, UserId,
};
pub use metrics::{Counters, Gauges, Histogram, MailboxStats, MetricsSnapshot, UserCounters};
pub use outcome::{Fanout, RejectReason, SendOutcome};
pub use session::{
    CloseReason, ConnectInfo, EndReason, Epoch, MissedManifest, ParseEpochError, ResetReason,
    ResumePoint,
};
pub use shutdown::{ShutdownOptions, ShutdownReport};
pub use stream::{StreamPhase, StreamStatus};
pub use time::Clock;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
