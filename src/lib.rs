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
//! Beyond the engine's own types, three modules are public and stable because they are useful
//! on their own: [`sync`] (the bounded MPSC and SPSC rings), [`time`] (the hierarchical timing
//! wheel and the clock) and [`breaker`] (the circuit breaker). Everything else in the engine is
//! private. `cluster` (cargo feature `redis`, on by default) is the Redis mailbox store that
//! lets several nodes share users; it is public, and not yet stable, while it is wired behind
//! the engine.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

// The vocabulary: what users name. No module here imports from the mechanism below it.
mod backoff;
pub mod breaker;
mod config;
mod error;
mod message;
mod metrics;
mod session;
mod shutdown;
mod stream;

// The mechanism: lock-free structures, time, and the single-writer shards.
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
#[cfg(all(feature = "server", not(loom)))]
pub mod client;
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
pub use engine::{Engine, PendingOutcome, Session};
pub use error::{
    AbortStreamError, AckError, ConnectError, SendError, SetLimitsError, TryRecvError, TrySendError,
};
pub use message::{
    AbortReason, Delivery, InvalidInput, Message, MessageId, Priority, RejectReason, SendOutcome,
    StreamPart, UserId,
};
pub use metrics::{Counters, Gauges, Histogram, MailboxStats, MetricsSnapshot, UserCounters};
pub use session::{
    CloseReason, ConnectInfo, EndReason, Epoch, MissedManifest, ParseEpochError, ResumePoint,
};
pub use shutdown::{ShutdownOptions, ShutdownReport};
pub use stream::{StreamPhase, StreamStatus};
pub use time::Clock;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
