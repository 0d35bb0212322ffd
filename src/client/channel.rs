//! What the application's [`Client`](super::Client) and its connection task (`task.rs`) pass
//! each other: events one way, commands the other, and the ack state both read.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::{
    ClientError, ConnectedInfo, Delivered, ErrorFrame, PublishOutcome, RequestError, StreamAborted,
};
use crate::Epoch;

/// What [`Client::recv`](super::Client::recv) returns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A connection opened (the first one, and every reconnect).
    Connected(ConnectedInfo),
    /// A message.
    Message(Delivered),
    /// A stream ended without its remaining parts; acknowledged like a message.
    StreamAborted(StreamAborted),
    /// The connection ended. Unless `recv` next returns an error, the client is reconnecting.
    Disconnected(Disconnect),
    /// The server answered something with an `error` frame that no request was waiting for.
    ServerError(ErrorFrame),
}

impl Event {
    /// The seq of a message or an abort marker.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Event::Message(m) => Some(m.seq()),
            Event::StreamAborted(a) => Some(a.seq),
            _ => None,
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Disconnect {
    /// The close code the server sent, if it sent a close frame.
    pub code: Option<u16>,
    /// The close reason, or what went wrong.
    pub reason: String,
}

/// What the application and the connection task share.
pub(super) struct Shared {
    pub(super) state: Mutex<AckState>,
    /// Wakes the connection task: an ack, a close or a reconnect request.
    pub(super) wake: Notify,
    pub(super) close: AtomicBool,
    pub(super) reconnect: AtomicBool,
    pub(super) next_ref: AtomicU64,
}

pub(super) struct AckState {
    /// The epoch the application is in: that of the last `Connected` it received.
    pub(super) epoch: Option<Epoch>,
    /// The highest seq the application processed in `epoch`.
    pub(super) processed: u64,
    /// The newest connection the task has: (generation, epoch).
    pub(super) latest: Option<(u64, Epoch)>,
}

impl Shared {
    pub(super) fn state(&self) -> MutexGuard<'_, AckState> {
        // Nothing panics while holding the lock; recovering keeps that true if it ever did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One item from the connection task to the application.
pub(super) struct Envelope {
    /// The connection it came from, and that connection's epoch.
    pub(super) generation: u64,
    pub(super) epoch: Epoch,
    pub(super) item: Result<Event, ClientError>,
}

pub(super) enum Command {
    Publish {
        frame: String,
        reference: String,
        reply: oneshot::Sender<Result<PublishOutcome, RequestError>>,
    },
    Ping {
        reply: oneshot::Sender<Result<Duration, RequestError>>,
    },
}
