//! A shard: one worker thread that alone owns the mailboxes of the users hashed to it, and the
//! shared side through which producers and sessions hand it work.
//!
//! Commands (send, connect, ...) go through a bounded lock-free inbox; acks and closes from
//! sessions go through the never-failing signal list; either wakes the worker through the park
//! handshake. These, and the session outboxes, are the only structures shared between threads,
//! all in `sync/` and model-checked with loom. Everything in this folder but this file's
//! `ShardShared` and `link.rs` is owned by the worker thread alone:
//!
//! - `worker.rs`: the single-writer loop: drain the inbox and signals, run the wheel, deliver;
//!   and the users of the shard, each with one mailbox per device, fanning sends out to them;
//! - `mailbox/`: one device's bands, delivery window, expiry, streams, attach and removal;
//! - `dedup.rs`: the fingerprint window; `budget.rs`: the engine-wide memory budget (each shard
//!   publishes its own usage); `streams.rs`: per-mailbox stream reordering;
//! - `link.rs`: what a session and the worker share besides the outbox.

pub(crate) mod budget;
mod dedup;
pub(crate) mod link;
pub(crate) mod mailbox;
mod streams;
pub(crate) mod worker;

use std::sync::OnceLock;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use tokio::sync::{oneshot, Notify};

use crate::config::UserLimits;
use crate::error::{ConnectError, SetLimitsError};
use crate::loom::{fence, thread::Thread, Arc, AtomicBool, AtomicUsize, Ordering};
use crate::message::{Delivery, Message, UserId};
use crate::metrics::{MailboxStats, ShardMetrics};
use crate::outcome::SendOutcome;
use crate::session::{ConnectInfo, ResumePoint};
use crate::shutdown::{ShutdownOptions, ShutdownReport};
use crate::stream::StreamStatus;
use crate::sync::mpsc;
use crate::sync::outbox::OutboxSender;
use crate::sync::park::Parker;
use crate::sync::signal::{Drain, SignalList};
use crate::sync::Full;
use link::SessionShared;

pub(crate) enum Command {
    Send {
        user: UserId,
        message: Message,
        reply: Option<oneshot::Sender<SendOutcome>>,
    },
    Connect(Box<ConnectRequest>),
    SetLimits {
        user: UserId,
        limits: Option<UserLimits>,
        reply: oneshot::Sender<Result<(), SetLimitsError>>,
    },
    /// Replies once every command and signal issued before it has taken effect.
    Barrier(oneshot::Sender<()>),
    /// Stops accepting, flushes or keeps, reports.
    Shutdown {
        options: ShutdownOptions,
        reply: oneshot::Sender<ShutdownReport>,
    },
    /// Makes the worker panic, to test that a crashed shard answers with errors.
    #[cfg(all(test, not(loom)))]
    Panic,
    /// Replies with the stats of the user's main mailbox (see `Engine::mailbox_stats`).
    Inspect {
        user: UserId,
        reply: oneshot::Sender<Option<MailboxStats>>,
    },
    /// Replies with the stats of each of the user's mailboxes, in the order they were made.
    Devices {
        user: UserId,
        reply: oneshot::Sender<Vec<MailboxStats>>,
    },
    AbortStream {
        user: UserId,
        stream: std::sync::Arc<str>,
        reason: std::sync::Arc<str>,
        reply: oneshot::Sender<bool>,
    },
    StreamStatus {
        user: UserId,
        stream: Box<str>,
        reply: oneshot::Sender<Option<StreamStatus>>,
    },
    /// Replies with the shard's `k` deepest backlogs: (user, queued messages, queued bytes),
    /// deepest first.
    Deepest {
        k: usize,
        reply: oneshot::Sender<Vec<(UserId, usize, usize)>>,
    },
}

impl Command {
    /// The message of a `Send`, for handing back to a caller whose send failed.
    pub(crate) fn into_message(self) -> Option<Message> {
        match self {
            Command::Send { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// A connect of `user`'s device `shared.device`.
pub(crate) struct ConnectRequest {
    pub(crate) user: UserId,
    pub(crate) resume: Option<ResumePoint>,
    pub(crate) outbox: OutboxSender<Delivery>,
    pub(crate) shared: Arc<SessionShared>,
    pub(crate) reply: oneshot::Sender<Result<ConnectInfo, ConnectError>>,
}

/// The part of a shard that producers, sessions and the worker share.
pub(crate) struct ShardShared {
    inbox: mpsc::Sender<Command>,
    signals: SignalList<SessionShared>,
    parker: Parker,
    worker: OnceLock<Thread>,
    stop: AtomicBool,
    /// Async senders waiting for inbox space park here.
    space: Notify,
    space_waiters: CachePadded<AtomicUsize>,
    /// What the worker publishes once per pass.
    pub(crate) metrics: ShardMetrics,
}

impl ShardShared {
    pub(crate) fn new(inbox: mpsc::Sender<Command>) -> Self {
        Self {
            inbox,
            signals: SignalList::new(),
            parker: Parker::new(),
            worker: OnceLock::new(),
            stop: AtomicBool::new(false),
            space: Notify::new(),
            space_waiters: CachePadded::new(AtomicUsize::new(0)),
            metrics: ShardMetrics::new(),
        }
    }

    pub(crate) fn set_worker(&self, thread: Thread) {
        let _ = self.worker.set(thread);
    }

    /// Hands a command to the worker, or gives it back if the inbox is full.
    // The command comes back by value, as it went in: boxing it would allocate per send on
    // the hot path to shrink an error that is rare.
    #[allow(clippy::result_large_err)]
    pub(crate) fn push(&self, cmd: Command) -> Result<(), Full<Command>> {
        self.inbox.push(cmd)?;
        self.wake_worker();
        Ok(())
    }

    /// Hands a command to the worker, waiting for inbox space; gives it back if the shard
    /// stops meanwhile.
    pub(crate) async fn push_wait(&self, mut cmd: Command) -> Result<(), Command> {
        loop {
            match self.push(cmd) {
                Ok(()) => return Ok(()),
                Err(Full(c)) => cmd = c,
            }
            if self.stop.load(Ordering::Acquire) {
                return Err(cmd);
            }
            let notified = self.space.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let _waiting = SpaceWaiter::enter(&self.space_waiters);
            // SeqCst: the waiter count is visible to a worker that frees a slot after our
            // retry below fails (its fence in `space_freed` pairs with this one).
            fence(Ordering::SeqCst);
            match self.push(cmd) {
                Ok(()) => return Ok(()),
                Err(Full(c)) => cmd = c,
            }
            if self.stop.load(Ordering::Acquire) {
                return Err(cmd);
            }
            notified.await;
        }
    }

    /// Tells the worker that `node` has a new ack watermark or close request.
    pub(crate) fn signal(&self, node: &Arc<SessionShared>) {
        if self.signals.push(node) {
            self.wake_worker();
        }
    }

    fn wake_worker(&self) {
        if let Some(thread) = self.worker.get() {
            self.parker.wake(thread);
        }
    }

    /// Asks the worker to finish and wakes everyone waiting on it.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.worker.get() {
            thread.unpark();
        }
        self.space.notify_waiters();
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Worker side: takes every session with a new ack or close.
    pub(crate) fn take_signals(&self) -> Drain<SessionShared> {
        self.signals.take_all()
    }

    /// Worker side: whether a session signalled since the last `take_signals`.
    pub(crate) fn has_signals(&self) -> bool {
        !self.signals.is_empty()
    }

    /// Worker side: parks for at most `timeout` unless work arrives.
    pub(crate) fn park(&self, timeout: Duration, inbox: &mpsc::Receiver<Command>) {
        self.parker.park_unless(timeout, || {
            !inbox.is_empty() || !self.signals.is_empty() || self.is_stopping()
        });
    }

    /// Worker side: slots were freed; wake async senders if any wait.
    pub(crate) fn space_freed(&self) {
        // SeqCst: pairs with the fence in `push_wait` (Dekker: free slot / read waiters
        // against register waiter / retry push).
        fence(Ordering::SeqCst);
        if self.space_waiters.load(Ordering::Relaxed) > 0 {
            self.space.notify_waiters();
        }
    }
}

/// Counts an async sender waiting for space for as long as it waits (also when its future is
/// dropped mid-wait).
struct SpaceWaiter<'a>(&'a AtomicUsize);

impl<'a> SpaceWaiter<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for SpaceWaiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
