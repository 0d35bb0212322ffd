//! Where the engine's time comes from: the system's monotonic clock, or a manual clock that
//! tests and simulations advance by hand.
//!
//! Shard workers read the clock once per pass, in whole milliseconds since the engine started
//! (the timing wheel's tick).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The engine's time source, given to [`EngineBuilder::clock`](crate::EngineBuilder::clock).
///
/// ```
/// use std::time::Duration;
/// use tether::Clock;
///
/// let clock = Clock::manual();
/// assert_eq!(clock.now_ms(), 0);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_ms(), 2000);
/// ```
#[derive(Debug, Clone)]
pub struct Clock(Source);

#[derive(Debug, Clone)]
enum Source {
    System(Instant),
    Manual(Arc<AtomicU64>),
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system's monotonic clock, counted from now. The default.
    pub fn system() -> Self {
        Clock(Source::System(Instant::now()))
    }

    /// A clock that stands still until [`advance`](Self::advance) moves it. Clones share it.
    /// After advancing, `Engine::barrier` makes every shard act on the new time.
    pub fn manual() -> Self {
        Clock(Source::Manual(Arc::new(AtomicU64::new(0))))
    }

    /// Moves a manual clock forward; does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Source::Manual(ms) = &self.0 {
            let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
            ms.fetch_add(by, Ordering::Relaxed);
        }
    }

    /// Milliseconds since the clock started.
    pub fn now_ms(&self) -> u64 {
        self.now_us() / 1000
    }

    /// Microseconds since the clock started (a manual clock moves in whole milliseconds).
    pub fn now_us(&self) -> u64 {
        match &self.0 {
            Source::System(start) => u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
            Source::Manual(ms) => ms.load(Ordering::Relaxed).saturating_mul(1000),
        }
    }

    /// Whether the clock only moves when told to (then workers need not wake for deadlines).
    pub(crate) fn is_manual(&self) -> bool {
        matches!(self.0, Source::Manual(_))
    }
}
