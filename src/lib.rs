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
//! mailboxes, fed by a bounded lock-free inbox ([`ring::mpsc`]); a session receives through a
//! bounded lock-free outbox ([`ring::spsc`]) sized to the delivery window. See `DESIGN.md` and
//! the module docs of `shard`, `mailbox` and `ring`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod backoff;
pub mod breaker;
mod budget;
#[cfg(all(feature = "server", not(loom)))]
pub mod client;
mod clock;
mod config;
mod dedup;
pub mod durable;
mod engine;
mod error;
mod loom;
mod mailbox;
mod message;
mod metrics;
mod park;
pub mod ring;
#[cfg(all(feature = "server", not(loom)))]
pub mod server;
mod session;
mod shard;
mod shutdown;
mod stream;
pub mod wheel;
mod worker;

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz;

pub use backoff::Backoff;
pub use clock::Clock;
pub use config::{Config, EngineBuilder, OverflowPolicy, ShedThresholds, UserLimits};
pub use dedup::DedupMode;
pub use durable::Fsync;
pub use engine::{Engine, PendingOutcome};
pub use error::{
    AbortStreamError, AckError, ConfigError, ConnectError, InvalidInput, SendError, SetLimitsError,
    TrySendError,
};
pub use mailbox::MailboxStats;
pub use message::{
    Delivery, Message, MessageId, Priority, RejectReason, SendOutcome, StreamPart, UserId,
};
pub use metrics::{Counters, Gauges, Histogram, MetricsSnapshot, UserCounters};
pub use session::{
    CloseReason, ConnectInfo, EndReason, Epoch, MissedManifest, ParseEpochError, ResumePoint,
    Session, TryRecvError,
};
pub use shutdown::{ShutdownOptions, ShutdownReport};
pub use stream::{AbortReason, StreamPhase, StreamStatus};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
