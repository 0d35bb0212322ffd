//! Graceful shutdown: what to do with pending messages and live sessions, and the report.

use std::time::Duration;

/// How [`Engine::shutdown`](crate::Engine::shutdown) treats pending messages and sessions.
///
/// ```
/// use std::time::Duration;
/// use tether::ShutdownOptions;
///
/// let quick = ShutdownOptions::default().keep_pending().leave_sessions_open();
/// assert_eq!(quick.flush, None);
/// let patient = ShutdownOptions::default().flush_for(Duration::from_secs(10));
/// assert!(patient.close_sessions);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownOptions {
    /// Keep delivering to live sessions (as their acknowledgements open the window) until
    /// their backlogs are empty or this much time has passed. `None` keeps pending messages
    /// where they are. Default 5 seconds.
    pub flush: Option<Duration>,
    /// End every live session with [`EndReason::Shutdown`](crate::EndReason::Shutdown) (each
    /// still receives what was delivered to it first). Default true.
    pub close_sessions: bool,
}

impl Default for ShutdownOptions {
    fn default() -> Self {
        Self {
            flush: Some(Duration::from_secs(5)),
            close_sessions: true,
        }
    }
}

impl ShutdownOptions {
    /// Flush for at most `deadline`.
    pub fn flush_for(mut self, deadline: Duration) -> Self {
        self.flush = Some(deadline);
        self
    }

    /// Do not flush: pending messages stay in their mailboxes and are reported as kept.
    pub fn keep_pending(mut self) -> Self {
        self.flush = None;
        self
    }

    /// Leave live sessions attached (they receive nothing more once the workers stopped).
    pub fn leave_sessions_open(mut self) -> Self {
        self.close_sessions = false;
        self
    }
}

/// What a shutdown did. Every message the engine accepted before it is accounted for:
/// acknowledged or delivered before or during the flush, or `kept`; sends that reached a shard
/// after it stopped accepting are `dropped` (their senders got an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Messages delivered to live sessions during the flush.
    pub flushed: u64,
    /// Messages still held (queued or delivered and unacknowledged) when the workers stopped.
    /// They stay in memory until the engine is dropped.
    pub kept: u64,
    /// Commands that reached a shard after it stopped accepting (sends racing the shutdown).
    pub dropped: u64,
    /// Sessions ended by the shutdown.
    pub sessions_closed: u64,
    /// Shard workers that stopped.
    pub workers_stopped: usize,
    /// How long the shutdown took.
    pub duration: Duration,
}

impl ShutdownReport {
    pub(crate) fn add(&mut self, shard: &ShutdownReport) {
        self.flushed += shard.flushed;
        self.kept += shard.kept;
        self.dropped += shard.dropped;
        self.sessions_closed += shard.sessions_closed;
        self.workers_stopped += shard.workers_stopped;
    }
}
