//! What happened to a sent message: delivered, queued (with what it evicted), a duplicate,
//! refused and why, or, for a user with several devices, what each device's mailbox did.

/// What the engine did with a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendOutcome {
    /// Handed to the user's live session (it is in the delivery window, awaiting ack).
    Delivered,
    /// Kept in the user's mailbox; `evicted` older, less urgent messages were dropped for it.
    Queued {
        /// How many messages the DropOldest policy evicted to make room.
        evicted: u32,
    },
    /// A copy with the same fingerprint was accepted within the dedup window.
    Duplicate,
    /// Not kept.
    Rejected(RejectReason),
    /// The user has two or more device mailboxes and at least one of them kept the message:
    /// what each device's mailbox did with it. (With one mailbox, or none yet, a send has one
    /// of the outcomes above, exactly as for a user without devices.)
    Fanout(Fanout),
}

/// What a user's device mailboxes did with one message, from [`SendOutcome::Fanout`]. Each
/// device mailbox admits it under its own caps and overflow policy, so one device can drop it
/// while another keeps it.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tether::{DeviceId, Engine, Message, SendOutcome, UserId};
///
/// let engine = Engine::builder().build().unwrap();
/// let kim = UserId::new("kim").unwrap();
/// let _phone = engine.connect_device(&kim, &DeviceId::new("phone").unwrap(), None).await.unwrap();
/// let laptop = engine.connect_device(&kim, &DeviceId::new("laptop").unwrap(), None).await.unwrap();
/// drop(laptop); // away: its mailbox keeps what arrives
/// engine.barrier().await;
///
/// let SendOutcome::Fanout(f) = engine.send_confirmed(&kim, Message::new("hi")).await.unwrap() else {
///     unreachable!()
/// };
/// assert_eq!((f.delivered, f.queued, f.dropped, f.evicted), (1, 1, 0, 0));
/// assert_eq!(f.kept(), 2);
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Fanout {
    /// Device mailboxes that handed it to their live session.
    pub delivered: u32,
    /// Device mailboxes that kept it in a band.
    pub queued: u32,
    /// Device mailboxes that did not keep it (their own caps, policy or stream state).
    pub dropped: u32,
    /// Older messages evicted for it, summed over the device mailboxes (DropOldest).
    pub evicted: u32,
}

impl Fanout {
    /// Device mailboxes that kept it: delivered or queued.
    pub fn kept(&self) -> u32 {
        self.delivered + self.queued
    }

    /// Adds one device mailbox's outcome.
    pub(crate) fn add(&mut self, outcome: SendOutcome) {
        match outcome {
            SendOutcome::Delivered => self.delivered += 1,
            SendOutcome::Queued { evicted } => {
                self.queued += 1;
                self.evicted += evicted;
            }
            SendOutcome::Duplicate | SendOutcome::Rejected(_) => self.dropped += 1,
            SendOutcome::Fanout(f) => {
                self.delivered += f.delivered;
                self.queued += f.queued;
                self.dropped += f.dropped;
                self.evicted += f.evicted;
            }
        }
    }
}

impl SendOutcome {
    /// Whether the message was kept by at least one mailbox (delivered or queued).
    ///
    /// ```
    /// use tether::{RejectReason, SendOutcome};
    /// assert!(SendOutcome::Queued { evicted: 0 }.is_kept());
    /// assert!(!SendOutcome::Rejected(RejectReason::MailboxFull).is_kept());
    /// ```
    pub fn is_kept(&self) -> bool {
        match self {
            SendOutcome::Delivered | SendOutcome::Queued { .. } => true,
            SendOutcome::Fanout(f) => f.kept() > 0,
            SendOutcome::Duplicate | SendOutcome::Rejected(_) => false,
        }
    }

    /// One outcome for the user from each device mailbox's, in device order: a single
    /// mailbox's as it is; with several, `Fanout` when any kept it, else the first refusal
    /// (`Duplicate` only when every device mailbox saw a duplicate).
    pub(crate) fn combine(outcomes: &[SendOutcome]) -> SendOutcome {
        if let [one] = outcomes {
            return *one;
        }
        if outcomes.iter().any(SendOutcome::is_kept) {
            let mut f = Fanout::default();
            for o in outcomes {
                f.add(*o);
            }
            return SendOutcome::Fanout(f);
        }
        outcomes
            .iter()
            .copied()
            .find(|o| matches!(o, SendOutcome::Rejected(_)))
            .unwrap_or(SendOutcome::Duplicate)
    }
}

/// Why a message was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The mailbox is at its cap and its overflow policy is Reject.
    MailboxFull,
    /// The mailbox is at its cap and this message was the one dropped: the policy is
    /// DropNewest, or DropOldest found only more urgent messages to evict. Listed in the
    /// user's missed manifest.
    Dropped,
    /// The payload alone is larger than the user's byte cap.
    LargerThanMailbox,
    /// Shed by the engine-wide memory budget.
    MemoryBudget,
    /// The engine already holds its maximum number of users.
    TooManyUsers,
    /// A stream part for a stream that already completed or was aborted.
    StreamClosed,
    /// A stream part that contradicts its stream: past the last part, or marked last while a
    /// later part (or another last part) already arrived.
    StreamPartInvalid,
    /// A stream part too far ahead of the first missing part to be held back (the
    /// stream reorder window).
    StreamWindowFull,
    /// The user already has the maximum number of open streams.
    TooManyStreams,
}

impl RejectReason {
    /// A short snake_case name, as used on the wire and in metrics labels.
    ///
    /// ```
    /// assert_eq!(tether::RejectReason::MemoryBudget.as_str(), "memory_budget");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MailboxFull => "mailbox_full",
            RejectReason::Dropped => "dropped",
            RejectReason::LargerThanMailbox => "larger_than_mailbox",
            RejectReason::MemoryBudget => "memory_budget",
            RejectReason::TooManyUsers => "too_many_users",
            RejectReason::StreamClosed => "stream_closed",
            RejectReason::StreamPartInvalid => "stream_part_invalid",
            RejectReason::StreamWindowFull => "stream_window_full",
            RejectReason::TooManyStreams => "too_many_streams",
        }
    }
}
