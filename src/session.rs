//! What a session is told and tells: epochs, resume points, what was missed while away, and
//! why a session closed or ended. The handle itself is [`Session`](crate::Session).

use std::fmt;
use std::str::FromStr;

use crate::message::MessageId;

/// Identifies one life of a mailbox (one per device of a user). Random, fixed while the
/// mailbox exists; a resume point from another epoch cannot be honoured.
///
/// Written as 16 lower-case hex digits.
///
/// ```
/// use tether::Epoch;
/// let e: Epoch = "00000000000000ff".parse().unwrap();
/// assert_eq!(e.to_string(), "00000000000000ff");
/// assert!("xyz".parse::<Epoch>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(pub(crate) u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The text is not 1 to 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an epoch is 1 to 16 hexadecimal digits")]
pub struct ParseEpochError;

impl FromStr for Epoch {
    type Err = ParseEpochError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 16 {
            return Err(ParseEpochError);
        }
        u64::from_str_radix(s, 16)
            .map(Epoch)
            .map_err(|_| ParseEpochError)
    }
}

/// Where a reconnecting client left off: the epoch it knew and the highest seq it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// The epoch from the previous [`ConnectInfo`].
    pub epoch: Epoch,
    /// The highest seq received. Everything up to it counts as acknowledged.
    pub last_seq: u64,
}

/// What a device lost since its previous connect, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MissedManifest {
    /// Dropped by the overflow policies DropOldest and DropNewest.
    pub evicted: u64,
    /// Refused by the Reject policy or because the payload exceeded the user's byte cap.
    pub rejected: u64,
    /// Refused by the engine-wide memory budget.
    pub shed: u64,
    /// Expired before they were acknowledged: waiting in a band, or delivered to a session
    /// that did not acknowledge them in time.
    pub expired: u64,
    /// Copies refused as duplicates (not a loss: the first copy was kept; not in `total`).
    pub deduplicated: u64,
    /// Ids of the most recent dropped messages that had ids, oldest first.
    pub ids: Vec<MessageId>,
    /// Set when the device's mailbox was removed as a whole since its last connect, for a
    /// reason other than its away retention running out: everything it held is gone, and
    /// the counts above start again from the new mailbox.
    pub reset: Option<ResetReason>,
}

/// Why a device's mailbox was removed as a whole (see [`MissedManifest::reset`]).
///
/// ```
/// assert_eq!(tether::ResetReason::DeviceEvicted.as_str(), "device_evicted");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResetReason {
    /// Another device of the same user connected for the first time while the user already
    /// had `max_devices_per_user` device mailboxes, and this device had been away longest.
    DeviceEvicted,
}

impl ResetReason {
    /// Every reason, for reading names back.
    const ALL: [ResetReason; 1] = [ResetReason::DeviceEvicted];

    /// A short snake_case name, as used on the wire and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::DeviceEvicted => "device_evicted",
        }
    }

    /// The reason [`as_str`](Self::as_str) names; `None` for a name this version does not know.
    ///
    /// ```
    /// use tether::ResetReason;
    /// assert_eq!(ResetReason::from_name("device_evicted"), Some(ResetReason::DeviceEvicted));
    /// assert_eq!(ResetReason::from_name("solar_flare"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl MissedManifest {
    pub(crate) fn with_ids(mut self, ids: Vec<MessageId>) -> Self {
        self.ids = ids;
        self
    }

    /// Total messages lost.
    pub fn total(&self) -> u64 {
        self.evicted + self.rejected + self.shed + self.expired
    }
}

/// What [`Engine::connect`](crate::Engine::connect) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    /// The mailbox's epoch: keep it with the last seq received to resume later.
    pub epoch: Epoch,
    /// True if a resume point was given and honoured: nothing before it is sent again.
    pub recovered: bool,
    /// Unacknowledged messages delivered again (with their original seqs) at the start.
    pub redelivered: usize,
    /// Messages still waiting in the bands after the window was filled.
    pub pending: usize,
    /// What was lost since the previous connect.
    pub missed: MissedManifest,
}

/// How a session ended by its own side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A clean goodbye.
    Normal,
    /// The connection broke (also what dropping a `Session` means).
    Abnormal,
}

/// Why the engine ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// A newer session of the same user and device took over.
    Replaced,
    /// The engine shut down.
    Shutdown,
}
