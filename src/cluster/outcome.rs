//! What the store's operations answer, in the engine's vocabulary where it fits.

use crate::message::{Delivery, UserId};
use crate::outcome::SendOutcome;
use crate::session::{ConnectInfo, Epoch};

/// Which mailbox of a user an outcome is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The mailbox of a device (`""` is the default device).
    Device(String),
    /// The one mailbox that waits for a user's first device (the user has none yet); the
    /// first device to attach takes it over.
    Pending,
}

/// What one mailbox did with an enqueued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOutcome {
    /// Which mailbox.
    pub target: Target,
    /// `Queued { evicted }` when kept (seqs are assigned later, by the owner's fill), or
    /// `Rejected(reason)`: `MailboxFull` (Reject), `Dropped` (DropNewest, or DropOldest found
    /// only more urgent messages), `LargerThanMailbox`.
    pub outcome: SendOutcome,
    /// The node holding the device's live session, if one is attached: the node to wake.
    pub owner: Option<String>,
    /// Kept, attached, and within the room of the session's window: the owner's next fill
    /// delivers it (what the embedded engine reports as `Delivered`).
    pub ready: bool,
}

/// What [`RedisStore::enqueue`](super::RedisStore::enqueue) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A copy with the same fingerprint was kept within the dedup window: refused once for
    /// the user, not per device.
    Duplicate,
    /// Offered to every mailbox of the user, in device-name order.
    Accepted(Vec<DeviceOutcome>),
}

impl Enqueued {
    /// Whether at least one mailbox kept the message.
    pub fn kept(&self) -> bool {
        match self {
            Enqueued::Duplicate => false,
            Enqueued::Accepted(all) => all
                .iter()
                .any(|d| matches!(d.outcome, SendOutcome::Queued { .. })),
        }
    }
}

/// The fencing handle of an attached session: which device mailbox, and the generation the
/// attach got. Every fill, ack and detach carries it; once a newer session attaches (on any
/// node) or this one detaches, they answer [`StoreError::Fenced`](super::StoreError::Fenced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef {
    /// The user.
    pub user: UserId,
    /// The device (`""` is the default device).
    pub device: String,
    /// The session generation (the fencing token), from 1, increasing per attach.
    pub generation: u64,
}

/// What [`RedisStore::attach`](super::RedisStore::attach) found and did.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The handle for this session's fills, acks and detach.
    pub session: SessionRef,
    /// As the embedded engine reports a connect: epoch, recovered, how many were redelivered,
    /// how many still wait after the fill, and the missed manifest (which the attach reset).
    pub info: ConnectInfo,
    /// The node whose session of this device was replaced, if one was attached.
    pub replaced: Option<String>,
    /// Unacknowledged deliveries sent again, with their original seqs, in seq order.
    pub redelivered: Vec<Delivery>,
    /// New deliveries the attach's fill took, most urgent first.
    pub delivered: Vec<Delivery>,
    /// The seq the next new delivery will get: the `next_seq` of the first fill.
    pub next_seq: u64,
}

/// What a fill answered.
#[derive(Debug, Clone)]
pub struct Filled {
    /// Deliveries settled by the ack carried with the fill.
    pub acknowledged: u64,
    /// Deliveries from the requested `next_seq` on: first those already in flight (a
    /// repeated fill), then new ones, most urgent first.
    pub delivered: Vec<Delivery>,
    /// Messages still waiting in the bands.
    pub queued: u64,
    /// The seq the next new delivery will get.
    pub next_seq: u64,
}

/// What an ack or a detach answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// Deliveries settled now (expired ones, already counted as lost, are not).
    pub acknowledged: u64,
    /// Delivered and still unacknowledged.
    pub in_flight: u64,
    /// Waiting in the bands.
    pub queued: u64,
}

/// One device mailbox as [`RedisStore::inspect`](super::RedisStore::inspect) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStats {
    /// The mailbox's epoch.
    pub epoch: Epoch,
    /// The seq the next delivery will get.
    pub next_seq: u64,
    /// The latest session generation (0: never attached).
    pub generation: u64,
    /// The node holding its live session, if attached.
    pub owner: Option<String>,
    /// Messages waiting per band, Critical first.
    pub queued_per_band: [u64; 4],
    /// Payload bytes waiting.
    pub queued_bytes: u64,
    /// Delivered and unacknowledged (expired ones still hold their window slot).
    pub in_flight: u64,
    /// Milliseconds until the away lifetime removes it; `None` while attached.
    pub expires_in_ms: Option<u64>,
    /// How its last session closed (`"normal"`, `"abnormal"`), or `"created"` for a mailbox
    /// a send created before any device; `None` while attached.
    pub away_reason: Option<String>,
    /// The missed manifest's counts since the last attach: evicted, rejected, shed, expired,
    /// deduplicated.
    pub missed: [u64; 5],
    /// Messages offered to it, delivered (first time), acknowledged, redelivered.
    pub counters: [u64; 4],
}
