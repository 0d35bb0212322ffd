//! Time in the engine: the clock each shard worker reads once per pass, and the hierarchical
//! timing wheel that turns deadlines (message TTLs, away mailboxes, idle cleanup, breaker
//! trials, stream timeouts) into work in O(1) per timer.
//!
//! [`Wheel`] is public and stable: a general-purpose hierarchical timing wheel with 1 ms ticks.

mod clock;
mod wheel;

pub use clock::Clock;
pub use wheel::{TimerHandle, Wheel};
