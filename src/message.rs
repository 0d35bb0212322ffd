//! What flows through the engine: user ids, messages, priorities, stream parts, deliveries,
//! outcomes, and the input the engine refuses at the call.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use thiserror::Error;

/// Who a message is for. Cheap to clone (a reference count), hashed once at creation.
///
/// The hash is seeded per process, so users cannot choose ids that collide in the shard maps.
///
/// ```
/// use tether::UserId;
///
/// let alice = UserId::new("alice").unwrap();
/// assert_eq!(alice.as_str(), "alice");
/// assert!(UserId::new("").is_err());
/// ```
#[derive(Clone)]
pub struct UserId {
    hash: u64,
    name: Arc<str>,
}

fn process_hasher() -> &'static ahash::RandomState {
    static SEED: OnceLock<ahash::RandomState> = OnceLock::new();
    SEED.get_or_init(ahash::RandomState::new)
}

impl UserId {
    /// Makes a user id from any non-empty string. The engine also enforces its configured
    /// maximum length (see [`EngineBuilder::max_user_id_len`](crate::EngineBuilder::max_user_id_len)).
    pub fn new(name: impl AsRef<str>) -> Result<Self, InvalidInput> {
        let name = name.as_ref();
        if name.is_empty() {
            return Err(InvalidInput::EmptyUserId);
        }
        Ok(Self {
            hash: process_hasher().hash_one(name),
            name: Arc::from(name),
        })
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The per-process hash computed at creation.
    pub(crate) fn prehash(&self) -> u64 {
        self.hash
    }

    /// Which of `n` shards owns this user: a multiply-shift over a remix of the hash, so that
    /// it does not correlate with the hash bits the shard's map uses.
    pub(crate) fn shard_of(&self, n: usize) -> usize {
        let mixed = self
            .hash
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
        ((mixed as u128 * n as u128) >> 64) as usize
    }
}

impl PartialEq for UserId {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.name == other.name
    }
}

impl Eq for UserId {}

impl Hash for UserId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.name, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Which of a user's devices a session is: a short name the client chooses and keeps (in
/// its app's storage), cheap to clone. Each device of a user has its own mailbox, so every
/// device gets every message, with its own seqs, window, acks and resume point.
///
/// [`DeviceId::default()`] is the default device, the one a connect without a device name
/// uses ([`Engine::connect`](crate::Engine::connect)); its name is empty, which no named
/// device can have. The engine also enforces its configured maximum length (see
/// [`EngineBuilder::max_device_id_len`](crate::EngineBuilder::max_device_id_len)).
///
/// ```
/// use tether::{DeviceId, InvalidInput};
///
/// let phone = DeviceId::new("phone").unwrap();
/// assert_eq!(phone.as_str(), "phone");
/// assert!(!phone.is_default());
/// assert!(DeviceId::default().is_default());
/// assert_eq!(DeviceId::new(""), Err(InvalidInput::EmptyDeviceId));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DeviceId(Arc<str>);

impl DeviceId {
    /// A named device: any non-empty string.
    pub fn new(name: impl AsRef<str>) -> Result<Self, InvalidInput> {
        let name = name.as_ref();
        if name.is_empty() {
            return Err(InvalidInput::EmptyDeviceId);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as given; empty for the default device.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the default device.
    pub fn is_default(&self) -> bool {
        self.0.is_empty()
    }
}

/// The default device (the empty name, shared: no allocation).
impl Default for DeviceId {
    fn default() -> Self {
        static DEFAULT: OnceLock<Arc<str>> = OnceLock::new();
        Self(DEFAULT.get_or_init(|| Arc::from("")).clone())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `Hasher` that passes through the `u64` that [`UserId`] already computed.
#[derive(Default)]
pub(crate) struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `UserId`; fold anything else in so the hasher stays total.
        for b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Builds [`PrehashedHasher`]s for maps keyed by [`UserId`].
pub(crate) type Prehashed = std::hash::BuildHasherDefault<PrehashedHasher>;

/// A producer's idempotency key for a message; also reported in missed manifests.
///
/// ```
/// let id = tether::MessageId::from("order-42");
/// assert_eq!(id.as_str(), "order-42");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MessageId(Arc<str>);

impl MessageId {
    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for MessageId {
    fn from(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

impl From<String> for MessageId {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How urgent a message is. Delivery takes the most urgent band first; overload and shedding
/// drop the least urgent first.
///
/// ```
/// use tether::Priority;
/// assert!(Priority::Critical < Priority::Low); // ordered most urgent first
/// assert_eq!(Priority::default(), Priority::Normal);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum Priority {
    /// Delivered before everything else, shed last.
    Critical = 0,
    /// Delivered before Normal and Low.
    High = 1,
    /// The default.
    #[default]
    Normal = 2,
    /// Delivered last, evicted and shed first.
    Low = 3,
}

impl Priority {
    /// All priorities, most urgent first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// The band index: 0 for Critical through 3 for Low.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The lower-case name, as used in the wire protocol and in metrics labels.
    ///
    /// ```
    /// assert_eq!(tether::Priority::High.as_str(), "high");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// Marks a message as one part of a stream: a multi-part response delivered in part order,
/// resumable after a disconnect (see [`Engine::stream_status`](crate::Engine::stream_status)
/// and [`Engine::abort_stream`](crate::Engine::abort_stream)).
///
/// Part 0 sets the stream's priority and TTL for every part; the other parts' own priority
/// and TTL are ignored. Parts may be sent in any order and from any thread: each is held back
/// until the parts before it have arrived.
///
/// A session also receives abort markers: deliveries whose part has an
/// [`abort_reason`](Self::abort_reason), an empty payload, and as index the number of parts
/// delivered before the abort.
///
/// ```
/// let part = tether::StreamPart::new("answer-7", 0, false);
/// assert_eq!(part.index(), 0);
/// assert!(part.abort_reason().is_none());
/// ```
#[derive(Clone)]
pub struct StreamPart {
    stream: Arc<str>,
    index: u32,
    last: bool,
    abort: Option<AbortReason>,
    /// Which stream of this id the part belongs to, stamped by the mailbox when it releases
    /// the part (0 before that). A stream id can be used again once the engine has forgotten
    /// the stream that had it, and parts of the old stream may still be in flight: the
    /// generation keeps their acknowledgements away from the new stream. Internal: not part
    /// of equality or `Debug`.
    generation: u64,
}

impl PartialEq for StreamPart {
    fn eq(&self, other: &Self) -> bool {
        (&self.stream, self.index, self.last, &self.abort)
            == (&other.stream, other.index, other.last, &other.abort)
    }
}

impl Eq for StreamPart {}

impl fmt::Debug for StreamPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamPart")
            .field("stream", &self.stream)
            .field("index", &self.index)
            .field("last", &self.last)
            .field("abort", &self.abort)
            .finish()
    }
}

impl StreamPart {
    /// Part `index` (from 0) of stream `stream`; `last` marks the final part.
    pub fn new(stream: impl AsRef<str>, index: u32, last: bool) -> Self {
        Self {
            stream: Arc::from(stream.as_ref()),
            index,
            last,
            abort: None,
            generation: 0,
        }
    }
    /// The stream's id.
    pub fn stream(&self) -> &str {
        &self.stream
    }
    pub(crate) fn stream_id(&self) -> &Arc<str> {
        &self.stream
    }
    /// On an abort marker, why the stream was aborted; `None` on a part.
    pub fn abort_reason(&self) -> Option<&AbortReason> {
        self.abort.as_ref()
    }
    /// Which stream of this id the part belongs to (see the field).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
    /// The part's index, from 0.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// True for the final part; false on an abort marker, whose stream has no more parts.
    pub fn is_last(&self) -> bool {
        self.last
    }
}

/// A message to a user: a payload that is never copied, a priority, and optional id, TTL and
/// stream part.
///
/// ```
/// use std::time::Duration;
/// use tether::{Message, Priority};
///
/// let m = Message::new("hello")
///     .with_priority(Priority::High)
///     .with_id("greeting-1")
///     .with_ttl(Duration::from_secs(30));
/// assert_eq!(&m.payload()[..], b"hello");
/// assert_eq!(m.priority(), Priority::High);
/// assert_eq!(m.id().unwrap().as_str(), "greeting-1");
/// ```
#[derive(Debug, Clone)]
pub struct Message {
    payload: Bytes,
    priority: Priority,
    id: Option<MessageId>,
    ttl: Option<Duration>,
    stream: Option<Box<StreamPart>>,
    /// When the producer handed it over, in µs on the engine's clock (0: not yet): where
    /// the latency histograms start.
    sent_us: u64,
}

impl Message {
    /// A Normal-priority message with no id, TTL or stream part.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            payload: payload.into(),
            priority: Priority::Normal,
            id: None,
            ttl: None,
            stream: None,
            sent_us: 0,
        }
    }

    /// Marks when the producer handed the message over (the engine's clock, µs), unless it
    /// already was: a front end stamps a request's arrival, before the engine's send does.
    pub(crate) fn stamp_sent(&mut self, now_us: u64) {
        if self.sent_us == 0 {
            self.sent_us = now_us.max(1);
        }
    }

    /// When the producer handed the message over (µs on the engine's clock), if stamped.
    pub(crate) fn sent_us(&self) -> Option<u64> {
        (self.sent_us > 0).then_some(self.sent_us)
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the idempotency key.
    pub fn with_id(mut self, id: impl Into<MessageId>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets how long the message may wait to be acknowledged, counted from when the engine
    /// accepts it. Once it expires it is removed wherever it waits (in a band, or in flight
    /// and unacknowledged) and never delivered after; the user's missed manifest counts it.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Marks the message as a part of a stream.
    pub fn with_stream_part(mut self, part: StreamPart) -> Self {
        self.stream = Some(Box::new(part));
        self
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The payload, by value.
    pub fn into_payload(self) -> Bytes {
        self.payload
    }

    /// The priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The idempotency key, if set.
    pub fn id(&self) -> Option<&MessageId> {
        self.id.as_ref()
    }

    /// The TTL, if set.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The stream part, if set.
    pub fn stream_part(&self) -> Option<&StreamPart> {
        self.stream.as_deref()
    }

    /// The marker a session receives when stream `stream` is aborted after `delivered` parts.
    pub(crate) fn abort_marker(
        stream: Arc<str>,
        delivered: u32,
        priority: Priority,
        reason: AbortReason,
    ) -> Self {
        Self::new(Bytes::new())
            .with_priority(priority)
            .with_stream_part(StreamPart {
                stream,
                index: delivered,
                // Never true: a reader that stops at the last part must not take a cut-off
                // stream for a complete one.
                last: false,
                abort: Some(reason),
                generation: 0,
            })
    }

    /// Stamps a stream part with its stream's generation (in place: no allocation).
    pub(crate) fn with_stream_generation(mut self, generation: u64) -> Self {
        if let Some(part) = self.stream.as_deref_mut() {
            part.generation = generation;
        }
        self
    }

    /// The stream part of a part of a stream; `None` for an ordinary message or an abort
    /// marker.
    pub(crate) fn data_part(&self) -> Option<&StreamPart> {
        self.stream.as_deref().filter(|p| p.abort.is_none())
    }

    /// A part of a stream, as opposed to an ordinary message or an abort marker.
    pub(crate) fn is_stream_part(&self) -> bool {
        self.data_part().is_some()
    }

    /// Bytes this message holds against the user's and the engine's limits.
    pub(crate) fn cost(&self) -> usize {
        self.payload.len()
    }
}

/// A message as a session receives it: with its per-user sequence number.
///
/// `seq` is strictly increasing per user and survives reconnects: a re-delivered message keeps
/// the seq it was first delivered with. Acknowledge with [`Session::ack`](crate::Session::ack).
#[derive(Debug, Clone)]
pub struct Delivery {
    seq: u64,
    message: Message,
}

impl Delivery {
    pub(crate) fn new(seq: u64, message: Message) -> Self {
        Self { seq, message }
    }

    /// The per-user sequence number (the first message a user ever gets has seq 1).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The priority.
    pub fn priority(&self) -> Priority {
        self.message.priority
    }

    /// The stream part, if this is a part of a stream or an abort marker.
    pub fn stream_part(&self) -> Option<&StreamPart> {
        self.message.stream_part()
    }

    /// The message, by value.
    pub fn into_message(self) -> Message {
        self.message
    }
}

/// Input the engine refuses at the call.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// User ids must not be empty.
    #[error("user id is empty")]
    EmptyUserId,
    /// The user id is longer than the configured maximum.
    #[error("user id is {len} bytes, more than the maximum of {max}")]
    UserIdTooLong {
        /// Its length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The payload is larger than the configured maximum.
    #[error("payload is {len} bytes, more than the maximum of {max}")]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The message id is empty.
    #[error("message id is empty")]
    EmptyMessageId,
    /// A per-user cap is zero.
    #[error("{setting} must be at least 1")]
    ZeroLimit {
        /// Which cap.
        setting: &'static str,
    },
    /// A stream id is empty.
    #[error("stream id is empty")]
    EmptyStreamId,
    /// A stream id is longer than the configured maximum (the message id maximum).
    #[error("stream id is {len} bytes, more than the maximum of {max}")]
    StreamIdTooLong {
        /// Its length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The message id is longer than the configured maximum.
    #[error("message id is {len} bytes, more than the maximum of {max}")]
    MessageIdTooLong {
        /// Its length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A named device must have a non-empty name (the default device is
    /// [`DeviceId::default`]).
    #[error("device id is empty")]
    EmptyDeviceId,
    /// The device id is longer than the configured maximum.
    #[error("device id is {len} bytes, more than the maximum of {max}")]
    DeviceIdTooLong {
        /// Its length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// Why a stream was aborted, as its abort marker and [`StreamStatus`](crate::StreamStatus)
/// report it.
///
/// ```
/// use tether::AbortReason;
///
/// assert_eq!(AbortReason::Timeout.code(), "timeout");
/// let by_producer = AbortReason::Producer("model crashed".into());
/// assert_eq!(by_producer.code(), "producer");
/// assert_eq!(by_producer.to_string(), "model crashed");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbortReason {
    /// No new part arrived for the stream timeout while parts were still missing.
    Timeout,
    /// The stream's TTL (from its first part) passed before its last part was delivered.
    Expired,
    /// The user's mailbox could not keep the stream under its overflow policy.
    Overflow,
    /// The engine-wide memory budget refused one of its parts.
    MemoryBudget,
    /// The producer aborted it, with this reason.
    Producer(Arc<str>),
}

impl AbortReason {
    /// A short snake_case code: `timeout`, `expired`, `overflow`, `memory_budget`, `producer`.
    pub fn code(&self) -> &'static str {
        match self {
            AbortReason::Timeout => "timeout",
            AbortReason::Expired => "expired",
            AbortReason::Overflow => "overflow",
            AbortReason::MemoryBudget => "memory_budget",
            AbortReason::Producer(_) => "producer",
        }
    }
}

/// The producer's text for a producer abort; the code otherwise.
impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Producer(text) => f.write_str(text),
            other => f.write_str(other.code()),
        }
    }
}
