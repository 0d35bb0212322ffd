//! Wire protocol v1: decoding client frames and encoding server frames.
//!
//! A pure codec, no I/O: the server feeds it the text of each WebSocket frame (and the body of
//! each HTTP publish) and writes out the strings it returns.
//!
//! # Frames
//!
//! One JSON object per WebSocket text frame, told apart by its `"type"`.
//!
//! Client to server ([`ClientFrame`], from [`decode_client_frame`]):
//!
//! | type      | fields                                                                  |
//! |-----------|-------------------------------------------------------------------------|
//! | `connect` | `token`, optional `resume: {"epoch", "seq"}`; must be the first frame    |
//! | `ack`     | `seq`: acknowledges every delivery up to it                              |
//! | `publish` | `to`, `data`, optional `priority`, `ttl_ms`, `id`, `ref`, `stream: {"id", "part", "last"}` |
//! | `ping`    | none                                                                    |
//!
//! Server to client: `connected` ([`encode_connected`]), `message` and `stream_aborted`
//! ([`encode_delivery`]), `publish_result` ([`encode_publish_result`]), `pong`
//! ([`encode_pong`]) and `error` ([`encode_error`], [`encode_frame_error`]). The close codes
//! are the `CLOSE_*` constants.
//!
//! The HTTP publish API takes the same publish fields as a JSON body
//! ([`decode_publish_request`], [`decode_publish_batch`]) and answers with
//! [`encode_publish_outcome`].
//!
//! # Decoding rules
//!
//! - Fields this version does not know are ignored, so that a newer client can talk to an
//!   older server; an unknown `type` is a recoverable error for the same reason.
//! - `null` counts as absent, except as `data`, where it is the payload `null`.
//! - A field the frame uses may appear only once: two JSON parsers could otherwise disagree on
//!   which copy counts, and a proxy could check one while the server acts on the other.
//! - Numbers must be integers in range: `1.0`, `1e3` and `-1` are not a seq.
//! - `data` and ignored fields may nest to any depth: they are checked and skipped by
//!   serde_json's iterative scanner, so no frame can exhaust the stack, and only the frame
//!   size limit bounds the work. (Recipients that parse `data` with a recursive parser may
//!   have their own limit: serde_json's is 128 levels.)
//! - No input panics; every refusal is a [`FrameError`] that names the field at fault.
//!
//! # `data` is never re-serialised
//!
//! A publisher's `data` is captured as the raw JSON text it sent (a [`RawJson`]), becomes the
//! message payload with at most one copy, and is spliced verbatim into the `message` frame
//! that delivers it. Numbers keep their spelling (`1.0e3` stays `1.0e3`), strings their
//! escapes and objects their key order and spacing, and no delivery pays for a JSON parse.
//!
//! ```
//! use tether::server::protocol::{decode_client_frame, ClientFrame};
//!
//! let frame = decode_client_frame(r#"{"type":"publish","to":"alice","data":{"n": 1.50}}"#)?;
//! let ClientFrame::Publish(request) = frame else { unreachable!() };
//! let (user, message) = request.into_message()?;
//! assert_eq!(user.as_str(), "alice");
//! assert_eq!(&message.payload()[..], br#"{"n": 1.50}"#);
//! # Ok::<(), tether::server::protocol::FrameError>(())
//! ```

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::error::Category;
use serde_json::value::RawValue;

use crate::{
    ConnectInfo, Delivery, Epoch, Message, Priority, ResumePoint, SendOutcome, StreamPart, UserId,
};

/// Close code: the connect token was missing, invalid or expired.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// Close code: a newer connection of the same user took over.
pub const CLOSE_REPLACED: u16 = 4002;
/// Close code: the client broke the protocol (a frame that is not a JSON object, a first frame
/// that is not `connect`, a binary frame, ...).
pub const CLOSE_PROTOCOL_VIOLATION: u16 = 4003;
/// Close code: the server is overloaded; the close reason is [`try_later_reason`].
pub const CLOSE_TRY_LATER: u16 = 4100;
/// Close code: the server is shutting down (RFC 6455 "going away").
pub const CLOSE_SHUTTING_DOWN: u16 = 1001;
/// Close code: a frame exceeded the server's maximum frame size (RFC 6455 "message too big").
pub const CLOSE_FRAME_TOO_BIG: u16 = 1009;

/// Longest `ref` a publish may carry, in bytes. Every publish echoes its `ref`, so without a
/// bound a client that sends publishes and does not read could make the server hold replies
/// as large as its frames.
pub const MAX_REF_BYTES: usize = 256;

/// The close reason sent with [`CLOSE_TRY_LATER`]: `{"retry_after_ms":<n>}`.
///
/// ```
/// use std::time::Duration;
/// use tether::server::protocol::try_later_reason;
///
/// assert_eq!(try_later_reason(Duration::from_secs(2)), r#"{"retry_after_ms":2000}"#);
/// ```
pub fn try_later_reason(retry_after: Duration) -> String {
    let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
    let mut w = FrameWriter::with_capacity(40);
    w.lit("{\"retry_after_ms\":");
    w.uint(ms);
    w.lit("}");
    w.finish()
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A frame (or HTTP publish body) the server cannot act on.
///
/// [`code`](Self::code) is stable and snake_case, for the `error` frame and for clients to
/// match on; the `Display` text is for humans and names the field at fault.
/// [`is_protocol_violation`](Self::is_protocol_violation) tells a frame that makes the
/// connection unusable (close with [`CLOSE_PROTOCOL_VIOLATION`]) from one the server answers
/// with an `error` frame and carries on.
///
/// ```
/// use tether::server::protocol::decode_client_frame;
///
/// let err = decode_client_frame(r#"{"type":"ack","seq":"7"}"#).unwrap_err();
/// assert_eq!(err.code(), "invalid_field");
/// assert_eq!(err.field(), Some("seq"));
/// assert!(err.to_string().contains("`seq`"));
/// assert!(!err.is_protocol_violation());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct FrameError {
    kind: FrameErrorKind,
    reference: Option<String>,
}

/// What is wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameErrorKind {
    /// A frame given as bytes is not UTF-8. Protocol violation.
    #[error("the frame is not valid UTF-8")]
    InvalidUtf8,
    /// Not JSON at all. Protocol violation.
    #[error("the frame is not valid JSON: {detail}")]
    InvalidJson {
        /// The parser's description, with line and column.
        detail: String,
    },
    /// Valid JSON, but not an object. Protocol violation.
    #[error("the frame is not a JSON object")]
    NotAnObject,
    /// A `type` this version does not know (perhaps one a newer client speaks).
    #[error("unknown frame type {name:?}")]
    UnknownType {
        /// The type given, cut to 64 bytes.
        name: String,
    },
    /// A required field is absent or `null`.
    #[error("field `{field}` is missing")]
    MissingField {
        /// The field, as a path: `to`, `resume.seq`, ...
        field: &'static str,
    },
    /// A field appears more than once in the same object.
    #[error("field `{field}` appears more than once")]
    DuplicateField {
        /// The field, as a path.
        field: &'static str,
    },
    /// A field has the wrong type or a value out of range.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The field, as a path.
        field: &'static str,
        /// What was expected.
        reason: &'static str,
    },
}

impl FrameError {
    /// What is wrong.
    pub fn kind(&self) -> &FrameErrorKind {
        &self.kind
    }

    /// The stable snake_case code: `invalid_utf8`, `invalid_json`, `not_an_object`,
    /// `unknown_type`, `missing_field`, `duplicate_field` or `invalid_field`.
    pub fn code(&self) -> &'static str {
        match self.kind {
            FrameErrorKind::InvalidUtf8 => "invalid_utf8",
            FrameErrorKind::InvalidJson { .. } => "invalid_json",
            FrameErrorKind::NotAnObject => "not_an_object",
            FrameErrorKind::UnknownType { .. } => "unknown_type",
            FrameErrorKind::MissingField { .. } => "missing_field",
            FrameErrorKind::DuplicateField { .. } => "duplicate_field",
            FrameErrorKind::InvalidField { .. } => "invalid_field",
        }
    }

    /// The field at fault, as a path (`to`, `stream.part`, ...), if the error is about one.
    pub fn field(&self) -> Option<&'static str> {
        match self.kind {
            FrameErrorKind::MissingField { field }
            | FrameErrorKind::DuplicateField { field }
            | FrameErrorKind::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }

    /// True if the frame is not a JSON object at all: the peer does not speak the protocol,
    /// so the server should close with [`CLOSE_PROTOCOL_VIOLATION`] rather than answer.
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self.kind,
            FrameErrorKind::InvalidUtf8
                | FrameErrorKind::InvalidJson { .. }
                | FrameErrorKind::NotAnObject
        )
    }

    /// The `ref` of the publish this error is about, when it could be read, so that the
    /// client can match the `error` frame to its request ([`encode_frame_error`] includes it).
    pub fn reference(&self) -> Option<&str> {
        self.reference.as_deref()
    }

    fn with_reference(mut self, reference: Option<String>) -> Self {
        self.reference = reference;
        self
    }
}

impl From<FrameErrorKind> for FrameError {
    fn from(kind: FrameErrorKind) -> Self {
        Self {
            kind,
            reference: None,
        }
    }
}

fn missing(field: &'static str) -> FrameError {
    FrameErrorKind::MissingField { field }.into()
}

fn invalid(field: &'static str, reason: &'static str) -> FrameError {
    FrameErrorKind::InvalidField { field, reason }.into()
}

const EXPECT_STRING: &str = "expected a string";
const EXPECT_U64: &str = "expected an integer from 0 to 18446744073709551615";
const EXPECT_U32: &str = "expected an integer from 0 to 4294967295";
const EXPECT_BOOL: &str = "expected true or false";
const EXPECT_OBJECT: &str = "expected an object";
const EXPECT_PRIORITY: &str = r#"expected "critical", "high", "normal" or "low""#;
const NOT_EMPTY: &str = "must not be empty";

// ---------------------------------------------------------------------------------------------
// Decoded frames
// ---------------------------------------------------------------------------------------------

/// A frame from a client.
///
/// ```
/// use tether::server::protocol::{decode_client_frame, ClientFrame};
///
/// assert_eq!(decode_client_frame(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
/// assert_eq!(decode_client_frame(r#"{"type":"ack","seq":12}"#), Ok(ClientFrame::Ack { seq: 12 }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Opens the session; the first frame of a connection.
    Connect {
        /// The JWT to authenticate with (not checked here).
        token: String,
        /// Where the client left off, to resume without redelivery.
        resume: Option<WireResume>,
    },
    /// Acknowledges every delivery with seq up to `seq`.
    Ack {
        /// The highest seq acknowledged.
        seq: u64,
    },
    /// Sends a message to a user.
    Publish(PublishRequest),
    /// Asks for a `pong`.
    Ping,
}

/// A resume point as the client sends it; the epoch is checked by
/// [`to_resume_point`](Self::to_resume_point), so the server decides what a malformed one
/// means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireResume {
    /// The epoch from the `connected` frame, 16 hex digits.
    pub epoch: String,
    /// The highest seq received.
    pub seq: u64,
}

impl WireResume {
    /// The engine's resume point; an `invalid_field` error on `resume.epoch` if the epoch is
    /// not 1 to 16 hex digits.
    ///
    /// ```
    /// use tether::server::protocol::WireResume;
    ///
    /// let wire = WireResume { epoch: "00000000000000ff".into(), seq: 9 };
    /// assert_eq!(wire.to_resume_point().unwrap().last_seq, 9);
    /// let bad = WireResume { epoch: "zz".into(), seq: 9 };
    /// assert_eq!(bad.to_resume_point().unwrap_err().field(), Some("resume.epoch"));
    /// ```
    pub fn to_resume_point(&self) -> Result<ResumePoint, FrameError> {
        let epoch: Epoch = self
            .epoch
            .parse()
            .map_err(|_| invalid("resume.epoch", "expected 1 to 16 hexadecimal digits"))?;
        Ok(ResumePoint {
            epoch,
            last_seq: self.seq,
        })
    }
}

/// The `stream` object of a publish: this message is part `part` of stream `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireStreamPart {
    /// The stream's id.
    pub id: String,
    /// The part's index, from 0.
    pub part: u32,
    /// True on the final part (absent means false).
    pub last: bool,
}

/// JSON text exactly as a publisher sent it: always one valid JSON value, never re-serialised.
///
/// ```
/// use tether::server::protocol::RawJson;
///
/// let raw = RawJson::from_text("  [1.0, \"\\u00e9\"] ").unwrap();
/// assert_eq!(raw.as_bytes(), b"[1.0, \"\\u00e9\"]"); // surrounding spaces are not part of it
/// assert!(RawJson::from_text("{nope").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RawJson(Bytes);

impl RawJson {
    /// Checks that `text` is one JSON value and copies it (without surrounding whitespace).
    pub fn from_text(text: &str) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(text)?;
        Ok(Self(Bytes::copy_from_slice(raw.get().as_bytes())))
    }

    /// The JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON text, as the message payload it becomes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawJson({})", String::from_utf8_lossy(&self.0))
    }
}

/// A message to publish: the `publish` frame without its `type`, and the body of
/// `POST /api/publish` (where `ref` is accepted and unused).
///
/// Decoding checks the fields' types; [`into_message`](Self::into_message) checks their
/// values. Limits the engine is configured with (payload size, id lengths) are the engine's to
/// check when the message is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// The user to deliver to.
    pub to: String,
    /// The payload, as the JSON text the publisher sent.
    pub data: RawJson,
    /// The priority; `normal` when absent.
    pub priority: Priority,
    /// How long the message may wait to be acknowledged, in milliseconds.
    pub ttl_ms: Option<u64>,
    /// The idempotency key.
    pub id: Option<String>,
    /// The stream this message is part of.
    pub stream: Option<WireStreamPart>,
    /// The client's correlation id, echoed in `publish_result`.
    pub reference: Option<String>,
}

impl PublishRequest {
    /// Checks the values and builds the engine's message, whose payload is `data`'s text.
    ///
    /// Refused, as `invalid_field` naming the field: an empty `to`, `id` or `stream.id`, and
    /// a `ttl_ms` of 0. The error carries the request's `ref`.
    ///
    /// ```
    /// use tether::server::protocol::{decode_publish_request, FrameError};
    /// use tether::Priority;
    ///
    /// let request = decode_publish_request(r#"{"to":"bob","data":[1,2],"priority":"high","ttl_ms":500}"#)?;
    /// let (user, message) = request.into_message()?;
    /// assert_eq!((user.as_str(), message.priority()), ("bob", Priority::High));
    ///
    /// let empty = decode_publish_request(r#"{"to":"","data":1}"#)?;
    /// assert_eq!(empty.into_message().unwrap_err().field(), Some("to"));
    /// # Ok::<(), FrameError>(())
    /// ```
    pub fn into_message(self) -> Result<(UserId, Message), FrameError> {
        let PublishRequest {
            to,
            data,
            priority,
            ttl_ms,
            id,
            stream,
            reference,
        } = self;
        let problem = if ttl_ms == Some(0) {
            Some(invalid("ttl_ms", "must be greater than 0"))
        } else if id.as_ref().is_some_and(String::is_empty) {
            Some(invalid("id", NOT_EMPTY))
        } else if stream.as_ref().is_some_and(|s| s.id.is_empty()) {
            Some(invalid("stream.id", NOT_EMPTY))
        } else {
            None
        };
        if let Some(err) = problem {
            return Err(err.with_reference(reference));
        }
        let user = match UserId::new(&to) {
            Ok(user) => user,
            Err(_) => return Err(invalid("to", NOT_EMPTY).with_reference(reference)),
        };
        let mut message = Message::new(data.into_bytes()).with_priority(priority);
        if let Some(ms) = ttl_ms {
            message = message.with_ttl(Duration::from_millis(ms));
        }
        if let Some(id) = id {
            message = message.with_id(id);
        }
        if let Some(s) = stream {
            message = message.with_stream_part(StreamPart::new(&s.id, s.part, s.last));
        }
        Ok((user, message))
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decodes the text of a client frame.
///
/// `data` is copied once, into the message payload. See the module docs for the rules.
///
/// ```
/// use tether::server::protocol::{decode_client_frame, ClientFrame};
///
/// assert_eq!(decode_client_frame(r#"{"type":"ping","sent_at":17}"#), Ok(ClientFrame::Ping));
/// let err = decode_client_frame("ping").unwrap_err();
/// assert_eq!(err.code(), "invalid_json");
/// assert!(err.is_protocol_violation());
/// ```
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    decode_frame(text, Source::Copy)
}

/// Decodes a client frame held in `Bytes` (as tungstenite's `Utf8Bytes` converts to), sharing
/// the frame's buffer as the payload instead of copying `data` when `data` is at least half
/// the frame.
///
/// The half rule bounds what sharing costs: the engine counts a message's payload length
/// against the user's and its own memory limits, while a shared payload keeps the whole frame
/// alive; a frame with a small `data` and a large ignored field would otherwise hold much more
/// memory than it is charged for.
///
/// ```
/// use bytes::Bytes;
/// use tether::server::protocol::{decode_client_frame_shared, ClientFrame};
///
/// let frame = Bytes::from_static(br#"{"type":"publish","to":"a","data":"a long enough payload"}"#);
/// let ClientFrame::Publish(p) = decode_client_frame_shared(&frame).unwrap() else { panic!() };
/// assert_eq!(p.data.as_bytes(), br#""a long enough payload""#);
/// assert_eq!(decode_client_frame_shared(&Bytes::from_static(b"\xff")).unwrap_err().code(), "invalid_utf8");
/// ```
pub fn decode_client_frame_shared(frame: &Bytes) -> Result<ClientFrame, FrameError> {
    let text = std::str::from_utf8(frame).map_err(|_| FrameErrorKind::InvalidUtf8)?;
    decode_frame(text, Source::Shared(frame))
}

/// Decodes the body of `POST /api/publish`: the publish fields, with no `type`.
///
/// ```
/// use tether::server::protocol::decode_publish_request;
///
/// let request = decode_publish_request(r#"{"to":"alice","data":null}"#).unwrap();
/// assert_eq!(request.data.as_bytes(), b"null");
/// assert_eq!(decode_publish_request(r#"{"to":"alice"}"#).unwrap_err().field(), Some("data"));
/// ```
pub fn decode_publish_request(body: &str) -> Result<PublishRequest, FrameError> {
    let fields = parse_object(body)?;
    decode_publish(&fields, Source::Copy, Echo::No)
}

/// Decodes the body of `POST /api/publish_batch`: `{"messages":[<publish>, ...]}`.
///
/// The outer error is for a body that is not such an object; each message then decodes on its
/// own, so the server can accept the good ones and report the others by position.
///
/// ```
/// use tether::server::protocol::decode_publish_batch;
///
/// let batch = decode_publish_batch(r#"{"messages":[{"to":"a","data":1},{"to":"b"}]}"#).unwrap();
/// assert!(batch[0].is_ok());
/// assert_eq!(batch[1].as_ref().unwrap_err().field(), Some("data"));
/// assert_eq!(decode_publish_batch("{}").unwrap_err().field(), Some("messages"));
/// ```
pub fn decode_publish_batch(
    body: &str,
) -> Result<Vec<Result<PublishRequest, FrameError>>, FrameError> {
    let fields = parse_object(body)?;
    let raw = fields.required(Key::Messages, "messages")?;
    let items: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| invalid("messages", "expected an array of objects"))?;
    Ok(items
        .into_iter()
        .map(|item| {
            let fields = parse_nested(item, "messages", "expected an array of objects")?;
            decode_publish(&fields, Source::Copy, Echo::No)
        })
        .collect())
}

/// Where a payload's bytes come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Copy them out of the text.
    Copy,
    /// The text is this buffer: share it when that is worth it.
    Shared(&'a Bytes),
}

impl Source<'_> {
    fn payload(self, json: &str) -> Bytes {
        if let Source::Shared(frame) = self {
            if json.len() >= frame.len() / 2 {
                // `json` borrows from `frame` by construction; checking the address range
                // anyway keeps a mistake from ever being a panic or a wrong slice.
                let start = (json.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
                if start <= frame.len() && json.len() <= frame.len() - start {
                    return frame.slice(start..start + json.len());
                }
            }
        }
        Bytes::copy_from_slice(json.as_bytes())
    }
}

#[derive(Clone, Copy)]
enum FrameType {
    Connect,
    Ack,
    Publish,
    Ping,
}

fn decode_frame(text: &str, source: Source<'_>) -> Result<ClientFrame, FrameError> {
    let fields = parse_object(text)?;
    match frame_type(fields.required(Key::Type, "type")?)? {
        FrameType::Connect => {
            let token = read_string(fields.required(Key::Token, "token")?, "token")?;
            let resume = match fields.optional(Key::Resume, "resume")? {
                None => None,
                Some(raw) => {
                    let resume = parse_nested(raw, "resume", EXPECT_OBJECT)?;
                    let epoch = resume.required(Key::Epoch, "resume.epoch")?;
                    let seq = resume.required(Key::Seq, "resume.seq")?;
                    Some(WireResume {
                        epoch: read_string(epoch, "resume.epoch")?,
                        seq: read_u64(seq, "resume.seq")?,
                    })
                }
            };
            Ok(ClientFrame::Connect { token, resume })
        }
        FrameType::Ack => Ok(ClientFrame::Ack {
            seq: read_u64(fields.required(Key::Seq, "seq")?, "seq")?,
        }),
        FrameType::Publish => decode_publish(&fields, source, Echo::Yes).map(ClientFrame::Publish),
        FrameType::Ping => Ok(ClientFrame::Ping),
    }
}

fn frame_type(raw: &RawValue) -> Result<FrameType, FrameError> {
    // The unescaped spellings first, so that the common frame allocates nothing here.
    let owned;
    let name = match raw.get() {
        "\"connect\"" => "connect",
        "\"ack\"" => "ack",
        "\"publish\"" => "publish",
        "\"ping\"" => "ping",
        _ => {
            owned = read_string(raw, "type")?;
            owned.as_str()
        }
    };
    match name {
        "connect" => Ok(FrameType::Connect),
        "ack" => Ok(FrameType::Ack),
        "publish" => Ok(FrameType::Publish),
        "ping" => Ok(FrameType::Ping),
        other => {
            // Cut what is echoed back, so a huge type cannot make a huge error frame.
            let mut end = other.len().min(64);
            while !other.is_char_boundary(end) {
                end -= 1;
            }
            Err(FrameErrorKind::UnknownType {
                name: other[..end].to_owned(),
            }
            .into())
        }
    }
}

/// Whether the publish's `ref` will be echoed back (in WebSocket replies; HTTP answers by
/// position and ignores it).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Echo {
    Yes,
    No,
}

fn decode_publish(
    fields: &Fields<'_>,
    source: Source<'_>,
    echo: Echo,
) -> Result<PublishRequest, FrameError> {
    // `ref` first, so that every later error can carry it back to the client.
    let reference = match fields.optional(Key::Ref, "ref")? {
        Some(raw) => Some(read_string(raw, "ref")?),
        None => None,
    };
    if echo == Echo::Yes && reference.as_ref().is_some_and(|r| r.len() > MAX_REF_BYTES) {
        // Not echoed back: that is what the bound is for.
        return Err(invalid("ref", "longer than 256 bytes"));
    }
    match decode_publish_fields(fields, source) {
        Ok(mut request) => {
            request.reference = reference;
            Ok(request)
        }
        Err(err) => Err(err.with_reference(reference)),
    }
}

fn decode_publish_fields(
    fields: &Fields<'_>,
    source: Source<'_>,
) -> Result<PublishRequest, FrameError> {
    let to = read_string(fields.required(Key::To, "to")?, "to")?;
    // Not `required`: `null` is a payload like any other.
    let data = fields
        .get(Key::Data, "data")?
        .ok_or_else(|| missing("data"))?;
    let priority = match fields.optional(Key::Priority, "priority")? {
        None => Priority::Normal,
        Some(raw) => read_priority(raw)?,
    };
    let ttl_ms = match fields.optional(Key::TtlMs, "ttl_ms")? {
        None => None,
        Some(raw) => Some(read_u64(raw, "ttl_ms")?),
    };
    let id = match fields.optional(Key::Id, "id")? {
        None => None,
        Some(raw) => Some(read_string(raw, "id")?),
    };
    let stream = match fields.optional(Key::Stream, "stream")? {
        None => None,
        Some(raw) => {
            let stream = parse_nested(raw, "stream", EXPECT_OBJECT)?;
            let id = read_string(stream.required(Key::Id, "stream.id")?, "stream.id")?;
            let part = read_u32(stream.required(Key::Part, "stream.part")?, "stream.part")?;
            let last = match stream.optional(Key::Last, "stream.last")? {
                None => false,
                Some(raw) => read_bool(raw, "stream.last")?,
            };
            Some(WireStreamPart { id, part, last })
        }
    };
    Ok(PublishRequest {
        to,
        data: RawJson(source.payload(data.get())),
        priority,
        ttl_ms,
        id,
        stream,
        reference: None,
    })
}

fn read_string(raw: &RawValue, field: &'static str) -> Result<String, FrameError> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(field, EXPECT_STRING))
}

fn read_u64(raw: &RawValue, field: &'static str) -> Result<u64, FrameError> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(field, EXPECT_U64))
}

fn read_u32(raw: &RawValue, field: &'static str) -> Result<u32, FrameError> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(field, EXPECT_U32))
}

fn read_bool(raw: &RawValue, field: &'static str) -> Result<bool, FrameError> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(field, EXPECT_BOOL))
}

fn read_priority(raw: &RawValue) -> Result<Priority, FrameError> {
    let name = read_string(raw, "priority")?;
    Priority::ALL
        .into_iter()
        .find(|p| p.as_str() == name)
        .ok_or_else(|| invalid("priority", EXPECT_PRIORITY))
}

/// Parses a whole frame or body into its top-level fields.
fn parse_object(text: &str) -> Result<Fields<'_>, FrameError> {
    serde_json::from_str(text).map_err(|e| {
        // Values are captured raw and keys are always strings, so the only data error left
        // is the top level not being an object.
        match e.classify() {
            Category::Data => FrameErrorKind::NotAnObject.into(),
            _ => FrameErrorKind::InvalidJson {
                detail: e.to_string(),
            }
            .into(),
        }
    })
}

/// Parses a field's value, already known to be valid JSON, as an object.
fn parse_nested<'a>(
    raw: &'a RawValue,
    field: &'static str,
    reason: &'static str,
) -> Result<Fields<'a>, FrameError> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(field, reason))
}

/// Every field name any frame or nested object of the protocol uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Key {
    Type,
    Token,
    Resume,
    Epoch,
    Seq,
    To,
    Data,
    Priority,
    TtlMs,
    Id,
    Ref,
    Stream,
    Part,
    Last,
    Messages,
}

const KEY_COUNT: usize = Key::Messages as usize + 1;

impl Key {
    fn from_name(name: &str) -> Option<Key> {
        Some(match name {
            "type" => Key::Type,
            "token" => Key::Token,
            "resume" => Key::Resume,
            "epoch" => Key::Epoch,
            "seq" => Key::Seq,
            "to" => Key::To,
            "data" => Key::Data,
            "priority" => Key::Priority,
            "ttl_ms" => Key::TtlMs,
            "id" => Key::Id,
            "ref" => Key::Ref,
            "stream" => Key::Stream,
            "part" => Key::Part,
            "last" => Key::Last,
            "messages" => Key::Messages,
            _ => return None,
        })
    }
}

/// The known fields of one JSON object, each as its raw JSON text borrowed from the input.
///
/// One pass over the object, no allocation: values stay unparsed until a frame type asks
/// for them, so `data` is never parsed into a tree, and unknown fields are skipped.
/// Duplicates are only noted: they are an error only for a field the frame type reads.
struct Fields<'a> {
    values: [Option<&'a RawValue>; KEY_COUNT],
    duplicates: u32,
}

impl<'a> Fields<'a> {
    /// The field's raw value (`null` included), or `None` if absent.
    fn get(&self, key: Key, field: &'static str) -> Result<Option<&'a RawValue>, FrameError> {
        if self.duplicates & (1 << key as u32) != 0 {
            return Err(FrameErrorKind::DuplicateField { field }.into());
        }
        Ok(self.values[key as usize])
    }

    /// The field's raw value, or `None` if absent or `null`.
    fn optional(&self, key: Key, field: &'static str) -> Result<Option<&'a RawValue>, FrameError> {
        Ok(self.get(key, field)?.filter(|raw| raw.get() != "null"))
    }

    /// The field's raw value; `missing_field` if absent or `null`.
    fn required(&self, key: Key, field: &'static str) -> Result<&'a RawValue, FrameError> {
        self.optional(key, field)?.ok_or_else(|| missing(field))
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields {
            values: [None; KEY_COUNT],
            duplicates: 0,
        };
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                Some(key) => {
                    let value: &'de RawValue = map.next_value()?;
                    let slot = &mut fields.values[key as usize];
                    if slot.is_some() {
                        fields.duplicates |= 1 << key as u32;
                    } else {
                        *slot = Some(value);
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// Reads a map key as a [`Key`] (`None` for a field this version does not know) without
/// allocating, escaped keys included.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<Key>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Option<Key>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(Key::from_name(name))
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// The `connected` frame: the session is open.
///
/// `{"type":"connected","user","epoch","recovered","redelivered","pending","missed":{"expired",
/// "evicted","rejected","shed","deduplicated","ids":[...]}}`
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tether::{Engine, UserId};
/// use tether::server::protocol::encode_connected;
///
/// let engine = Engine::builder().shards(1).build().unwrap();
/// let alice = UserId::new("alice").unwrap();
/// let session = engine.connect(&alice, None).await.unwrap();
/// let frame = encode_connected(&alice, session.info());
/// assert!(frame.starts_with(r#"{"type":"connected","user":"alice","epoch":""#));
/// # });
/// ```
pub fn encode_connected(user: &UserId, info: &ConnectInfo) -> String {
    let missed = &info.missed;
    let ids_len: usize = missed.ids.iter().map(|id| id.as_str().len() + 3).sum();
    let mut w = FrameWriter::with_capacity(256 + user.as_str().len() + ids_len);
    w.lit("{\"type\":\"connected\",\"user\":");
    w.string(user.as_str());
    w.lit(",\"epoch\":\"");
    // Hex digits: nothing to escape.
    w.display(info.epoch);
    w.lit("\",\"recovered\":");
    w.bool(info.recovered);
    w.lit(",\"redelivered\":");
    w.uint(info.redelivered as u64);
    w.lit(",\"pending\":");
    w.uint(info.pending as u64);
    w.lit(",\"missed\":{\"expired\":");
    w.uint(missed.expired);
    w.lit(",\"evicted\":");
    w.uint(missed.evicted);
    w.lit(",\"rejected\":");
    w.uint(missed.rejected);
    w.lit(",\"shed\":");
    w.uint(missed.shed);
    w.lit(",\"deduplicated\":");
    w.uint(missed.deduplicated);
    w.lit(",\"ids\":[");
    for (i, id) in missed.ids.iter().enumerate() {
        if i > 0 {
            w.lit(",");
        }
        w.string(id.as_str());
    }
    w.lit("]}}");
    w.finish()
}

/// The frame for one delivery: a `message`, or a `stream_aborted` for an abort marker.
///
/// `{"type":"message","seq","priority","id"?,"stream":{"id","part","last"}?,"data"}`, with
/// `id` and `stream` only when set. `data` comes last so that a client sees the envelope
/// before a large payload.
///
/// The payload is spliced in as it is: it must be JSON text, as every payload decoded by this
/// module is (validating it here would cost a parse per delivery). A payload that is not
/// UTF-8, which cannot go in a text frame, is sent as a JSON string of its lossy text instead.
///
/// ```
/// use tether::server::protocol::{decode_publish_request, encode_delivery};
/// # fn delivery(m: tether::Message) -> tether::Delivery {
/// #     tokio::runtime::Runtime::new().unwrap().block_on(async {
/// #         let engine = tether::Engine::builder().shards(1).build().unwrap();
/// #         let u = tether::UserId::new("u").unwrap();
/// #         engine.send(&u, m).await.unwrap();
/// #         engine.connect(&u, None).await.unwrap().recv().await.unwrap()
/// #     })
/// # }
///
/// let request = decode_publish_request(r#"{"to":"u","data":{"b":1,  "a":1.0e3}}"#).unwrap();
/// let (_, message) = request.into_message().unwrap();
/// let d = delivery(message); // as a session receives it
/// assert_eq!(
///     encode_delivery(&d),
///     r#"{"type":"message","seq":1,"priority":"normal","data":{"b":1,  "a":1.0e3}}"#
/// );
/// ```
pub fn encode_delivery(d: &Delivery) -> String {
    match d.message().stream_part() {
        Some(part) => match part.abort_reason() {
            Some(reason) => {
                encode_stream_aborted(d.seq(), part.stream(), reason.code(), &reason.to_string())
            }
            None => encode_message(d, Some(part)),
        },
        None => encode_message(d, None),
    }
}

fn encode_message(d: &Delivery, stream: Option<&StreamPart>) -> String {
    let message = d.message();
    let payload = message.payload();
    let id = message.id().map(|id| id.as_str());
    let stream_len = stream.map_or(0, |s| s.stream().len() + 56);
    let capacity = 96 + payload.len() + id.map_or(0, |id| id.len() + 8) + stream_len;
    let mut w = FrameWriter::with_capacity(capacity);
    write_message_envelope(&mut w, d.seq(), message.priority(), id, stream);
    w.bytes(payload);
    w.lit("}");
    match w.try_finish() {
        Ok(frame) => frame,
        Err(_) => {
            let text = String::from_utf8_lossy(payload);
            let mut w = FrameWriter::with_capacity(capacity + text.len() / 8);
            write_message_envelope(&mut w, d.seq(), message.priority(), id, stream);
            w.string(&text);
            w.lit("}");
            w.finish()
        }
    }
}

/// Everything of a `message` frame up to and including `"data":`.
fn write_message_envelope(
    w: &mut FrameWriter,
    seq: u64,
    priority: Priority,
    id: Option<&str>,
    stream: Option<&StreamPart>,
) {
    w.lit("{\"type\":\"message\",\"seq\":");
    w.uint(seq);
    w.lit(",\"priority\":\"");
    w.lit(priority.as_str());
    w.lit("\"");
    if let Some(id) = id {
        w.lit(",\"id\":");
        w.string(id);
    }
    if let Some(part) = stream {
        w.lit(",\"stream\":{\"id\":");
        w.string(part.stream());
        w.lit(",\"part\":");
        w.uint(u64::from(part.index()));
        w.lit(",\"last\":");
        w.bool(part.is_last());
        w.lit("}");
    }
    w.lit(",\"data\":");
}

/// The `stream_aborted` frame: stream `stream` ends without its remaining parts.
///
/// `{"type":"stream_aborted","seq","stream","code","reason"}`. It has a seq like any delivery
/// and is acknowledged like one. `code` is the stable snake_case cause (`timeout`, `expired`,
/// `overflow`, `memory_budget`, `producer`); `reason` is the producer's text for a producer
/// abort, the code otherwise. [`encode_delivery`] calls this for abort markers.
///
/// ```
/// use tether::server::protocol::encode_stream_aborted;
///
/// assert_eq!(
///     encode_stream_aborted(8, "answer-7", "producer", "model crashed"),
///     r#"{"type":"stream_aborted","seq":8,"stream":"answer-7","code":"producer","reason":"model crashed"}"#
/// );
/// ```
pub fn encode_stream_aborted(seq: u64, stream: &str, code: &str, reason: &str) -> String {
    let mut w = FrameWriter::with_capacity(96 + stream.len() + code.len() + reason.len());
    w.lit("{\"type\":\"stream_aborted\",\"seq\":");
    w.uint(seq);
    w.lit(",\"stream\":");
    w.string(stream);
    w.lit(",\"code\":");
    w.string(code);
    w.lit(",\"reason\":");
    w.string(reason);
    w.lit("}");
    w.finish()
}

/// The `publish_result` frame: what the engine did with a client's publish.
///
/// `{"type":"publish_result","ref"?,"outcome","reason"?,"evicted"?}`: `ref` when the publish
/// had one, `reason` only for `rejected`, `evicted` only when a queued message evicted others.
///
/// ```
/// use tether::server::protocol::encode_publish_result;
/// use tether::SendOutcome;
///
/// assert_eq!(
///     encode_publish_result(Some("r1"), &SendOutcome::Queued { evicted: 2 }),
///     r#"{"type":"publish_result","ref":"r1","outcome":"queued","evicted":2}"#
/// );
/// ```
pub fn encode_publish_result(reference: Option<&str>, outcome: &SendOutcome) -> String {
    let mut w = FrameWriter::with_capacity(96 + reference.map_or(0, |r| r.len() + 8));
    w.lit("{\"type\":\"publish_result\"");
    if let Some(reference) = reference {
        w.lit(",\"ref\":");
        w.string(reference);
    }
    w.lit(",");
    write_outcome_fields(&mut w, outcome);
    w.lit("}");
    w.finish()
}

/// The HTTP publish response body: `{"outcome","reason"?,"evicted"?}`, the fields of
/// [`encode_publish_result`] without `type` and `ref`. A JSON object, so a batch response can
/// join several into an array.
///
/// ```
/// use tether::server::protocol::encode_publish_outcome;
/// use tether::{RejectReason, SendOutcome};
///
/// assert_eq!(encode_publish_outcome(&SendOutcome::Delivered), r#"{"outcome":"delivered"}"#);
/// assert_eq!(
///     encode_publish_outcome(&SendOutcome::Rejected(RejectReason::MailboxFull)),
///     r#"{"outcome":"rejected","reason":"mailbox_full"}"#
/// );
/// ```
pub fn encode_publish_outcome(outcome: &SendOutcome) -> String {
    let mut w = FrameWriter::with_capacity(64);
    w.lit("{");
    write_outcome_fields(&mut w, outcome);
    w.lit("}");
    w.finish()
}

fn write_outcome_fields(w: &mut FrameWriter, outcome: &SendOutcome) {
    match outcome {
        SendOutcome::Delivered => w.lit("\"outcome\":\"delivered\""),
        SendOutcome::Queued { evicted } => {
            w.lit("\"outcome\":\"queued\"");
            if *evicted > 0 {
                w.lit(",\"evicted\":");
                w.uint(u64::from(*evicted));
            }
        }
        SendOutcome::Duplicate => w.lit("\"outcome\":\"duplicate\""),
        SendOutcome::Rejected(reason) => {
            w.lit("\"outcome\":\"rejected\",\"reason\":\"");
            // snake_case: nothing to escape.
            w.lit(reason.as_str());
            w.lit("\"");
        }
        // Only a user with several devices gets it, and devices are not on the wire yet: until
        // they are, it reads as the best of its devices' outcomes.
        SendOutcome::Fanout(f) => write_outcome_fields(
            w,
            &match f.delivered {
                0 => SendOutcome::Queued { evicted: f.evicted },
                _ => SendOutcome::Delivered,
            },
        ),
    }
}

/// The `pong` frame, the answer to a `ping`.
///
/// ```
/// assert_eq!(tether::server::protocol::encode_pong(), r#"{"type":"pong"}"#);
/// ```
pub fn encode_pong() -> String {
    String::from(r#"{"type":"pong"}"#)
}

/// An `error` frame: `{"type":"error","code","message"}`.
///
/// ```
/// use tether::server::protocol::encode_error;
///
/// assert_eq!(
///     encode_error("not_connected", "send \"connect\" first"),
///     r#"{"type":"error","code":"not_connected","message":"send \"connect\" first"}"#
/// );
/// ```
pub fn encode_error(code: &str, message: &str) -> String {
    write_error(code, message, None)
}

/// The `error` frame for a frame that could not be decoded: its code, its message, and the
/// publish's `ref` when it could be read (`{"type":"error","code","message","ref"?}`).
///
/// ```
/// use tether::server::protocol::{decode_client_frame, encode_frame_error};
///
/// let err = decode_client_frame(r#"{"type":"publish","ref":"r9","to":7,"data":0}"#).unwrap_err();
/// assert_eq!(
///     encode_frame_error(&err),
///     r#"{"type":"error","code":"invalid_field","message":"field `to` is invalid: expected a string","ref":"r9"}"#
/// );
/// ```
pub fn encode_frame_error(err: &FrameError) -> String {
    write_error(err.code(), &err.to_string(), err.reference())
}

/// The wire field an engine-side input check refers to, and a message naming it: the engine
/// checks lengths (user ids, ids, payloads) that the decoder cannot know.
///
/// ```
/// use tether::InvalidInput;
/// use tether::server::protocol::describe_invalid_input;
///
/// let (field, message) = describe_invalid_input(&InvalidInput::UserIdTooLong { len: 300, max: 256 });
/// assert_eq!(field, "to");
/// assert!(message.starts_with("field `to` is invalid"));
/// ```
pub fn describe_invalid_input(e: &crate::InvalidInput) -> (&'static str, String) {
    use crate::InvalidInput as I;
    let field = match e {
        I::EmptyUserId | I::UserIdTooLong { .. } => "to",
        I::EmptyMessageId | I::MessageIdTooLong { .. } => "id",
        I::EmptyStreamId | I::StreamIdTooLong { .. } => "stream.id",
        I::PayloadTooLarge { .. } => "data",
        _ => "message",
    };
    (field, format!("field `{field}` is invalid: {e}"))
}

/// The `error` frame answering a publish the engine refused at its input checks, with the
/// publish's `ref` so the client can tell which one.
pub fn encode_invalid_input(e: &crate::InvalidInput, reference: Option<&str>) -> String {
    write_error("invalid_field", &describe_invalid_input(e).1, reference)
}

fn write_error(code: &str, message: &str, reference: Option<&str>) -> String {
    let extra = reference.map_or(0, |r| r.len() + 8);
    let mut w = FrameWriter::with_capacity(48 + code.len() + message.len() + extra);
    w.lit("{\"type\":\"error\",\"code\":");
    w.string(code);
    w.lit(",\"message\":");
    w.string(message);
    if let Some(reference) = reference {
        w.lit(",\"ref\":");
        w.string(reference);
    }
    w.lit("}");
    w.finish()
}

/// Writes one frame into one buffer, sized up front by the caller's estimate.
///
/// A `Vec<u8>` rather than a `String` so that serde_json can escape strings straight into it
/// and a payload can be spliced in without first proving it UTF-8; the one UTF-8 check at the
/// end is the one a text frame needs anyway, and `#![forbid(unsafe_code)]` rules out skipping
/// it.
struct FrameWriter {
    buf: Vec<u8>,
}

impl FrameWriter {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// Text that needs no escaping.
    fn lit(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// Bytes spliced in verbatim.
    fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// A JSON string, quoted and escaped.
    fn string(&mut self, s: &str) {
        // Writing into a Vec cannot fail and a &str always serialises, so this is always Ok.
        let written = serde_json::to_writer(&mut self.buf, s);
        debug_assert!(written.is_ok(), "escaping into a Vec failed");
    }

    fn uint(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.buf.extend_from_slice(&digits[at..]);
    }

    fn bool(&mut self, b: bool) {
        self.lit(if b { "true" } else { "false" });
    }

    /// A value's `Display` text, unescaped.
    fn display(&mut self, value: impl fmt::Display) {
        use std::io::Write;
        let written = write!(self.buf, "{value}");
        debug_assert!(written.is_ok(), "formatting into a Vec failed");
    }

    /// The frame, or the bytes back if something spliced in was not UTF-8.
    fn try_finish(self) -> Result<String, Vec<u8>> {
        String::from_utf8(self.buf).map_err(|e| e.into_bytes())
    }

    /// The frame, for frames built from `&str`s only (always UTF-8).
    fn finish(self) -> String {
        self.try_finish()
            .unwrap_or_else(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MessageId, MissedManifest, RejectReason};
    use serde_json::Value;

    fn decode(text: &str) -> ClientFrame {
        match decode_client_frame(text) {
            Ok(frame) => frame,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    fn error(text: &str) -> FrameError {
        match decode_client_frame(text) {
            Ok(frame) => panic!("{text} decoded as {frame:?}"),
            Err(e) => e,
        }
    }

    fn publish(text: &str) -> PublishRequest {
        match decode(text) {
            ClientFrame::Publish(p) => p,
            other => panic!("{text} decoded as {other:?}"),
        }
    }

    fn json(frame: &str) -> Value {
        match serde_json::from_str(frame) {
            Ok(v) => v,
            Err(e) => panic!("not JSON ({e}): {frame}"),
        }
    }

    /// The raw text of the `data` field of an encoded frame, as a JSON parser sees it.
    fn data_of(frame: &str) -> String {
        #[derive(Deserialize)]
        struct Frame<'a> {
            #[serde(borrow)]
            data: &'a RawValue,
        }
        let parsed: Frame<'_> = serde_json::from_str(frame).expect("a frame with data");
        parsed.data.get().to_owned()
    }

    fn delivery(seq: u64, message: Message) -> Delivery {
        Delivery::new(seq, message)
    }

    // --- decoding: every frame type ------------------------------------------------------

    #[test]
    fn decodes_connect_with_and_without_resume() {
        assert_eq!(
            decode(r#"{"type":"connect","token":"jwt.a.b"}"#),
            ClientFrame::Connect {
                token: "jwt.a.b".into(),
                resume: None
            }
        );
        assert_eq!(
            decode(r#"{"type":"connect","token":"t","resume":null}"#),
            ClientFrame::Connect {
                token: "t".into(),
                resume: None
            }
        );
        let frame = decode(
            r#"{"resume":{"seq":41,"epoch":"00000000deadbeef"},"token":"t","type":"connect"}"#,
        );
        let ClientFrame::Connect {
            resume: Some(resume),
            ..
        } = frame
        else {
            panic!("{frame:?}")
        };
        assert_eq!(resume.seq, 41);
        let point = resume.to_resume_point().expect("a valid epoch");
        assert_eq!(point.epoch.to_string(), "00000000deadbeef");
        assert_eq!(point.last_seq, 41);
    }

    #[test]
    fn decodes_ack_and_ping() {
        assert_eq!(
            decode(r#"{"type":"ack","seq":18446744073709551615}"#),
            ClientFrame::Ack { seq: u64::MAX }
        );
        assert_eq!(decode(r#" {"type":"ping"} "#), ClientFrame::Ping);
        // Escaped spellings of keys and of the type mean the same.
        assert_eq!(
            decode(r#"{"\u0074ype":"\u0061ck","seq":3}"#),
            ClientFrame::Ack { seq: 3 }
        );
    }

    #[test]
    fn decodes_a_full_publish() {
        let p = publish(
            r#"{"type":"publish","to":"bob","data":{"x":[1,2]},"priority":"critical","ttl_ms":1500,
               "id":"order-1","ref":"c-7","stream":{"id":"s1","part":4294967295,"last":true}}"#,
        );
        assert_eq!(p.to, "bob");
        assert_eq!(p.data.as_bytes(), br#"{"x":[1,2]}"#);
        assert_eq!(p.priority, Priority::Critical);
        assert_eq!(p.ttl_ms, Some(1500));
        assert_eq!(p.id.as_deref(), Some("order-1"));
        assert_eq!(p.reference.as_deref(), Some("c-7"));
        assert_eq!(
            p.stream,
            Some(WireStreamPart {
                id: "s1".into(),
                part: u32::MAX,
                last: true
            })
        );
        let (user, m) = p.into_message().expect("valid");
        assert_eq!(user.as_str(), "bob");
        assert_eq!(&m.payload()[..], br#"{"x":[1,2]}"#);
        assert_eq!(m.priority(), Priority::Critical);
        assert_eq!(m.ttl(), Some(Duration::from_millis(1500)));
        assert_eq!(m.id().map(MessageId::as_str), Some("order-1"));
        let part = m.stream_part().expect("a stream part");
        assert_eq!(
            (part.stream(), part.index(), part.is_last()),
            ("s1", u32::MAX, true)
        );
    }

    #[test]
    fn decodes_a_minimal_publish_with_defaults() {
        let p =
            publish(r#"{"type":"publish","to":"bob","data":"hi","stream":{"id":"s","part":0}}"#);
        assert_eq!(p.priority, Priority::Normal);
        assert_eq!(
            (p.ttl_ms, p.id.as_deref(), p.reference.as_deref()),
            (None, None, None)
        );
        assert_eq!(p.stream.map(|s| s.last), Some(false));
        let p = publish(
            r#"{"type":"publish","to":"bob","data":1,"priority":null,"ttl_ms":null,"id":null,"ref":null,"stream":null}"#,
        );
        assert_eq!(p.priority, Priority::Normal);
        assert!(
            p.ttl_ms.is_none() && p.id.is_none() && p.reference.is_none() && p.stream.is_none()
        );
    }

    #[test]
    fn null_data_is_a_payload_not_an_absence() {
        let p = publish(r#"{"type":"publish","to":"bob","data":null}"#);
        assert_eq!(p.data.as_bytes(), b"null");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert_eq!(
            decode(r#"{"type":"ack","seq":5,"future":{"deep":[1,{"x":null}]},"v":2,"seq2":"x"}"#),
            ClientFrame::Ack { seq: 5 }
        );
        // Known names that this type does not use are ignored too, duplicates included.
        assert_eq!(
            decode(r#"{"type":"ping","to":1,"to":2,"data":3}"#),
            ClientFrame::Ping
        );
    }

    // --- data passthrough ------------------------------------------------------------------

    const ODD: &str = r#"{"b":1,  "a":[1.0e3, "\u00e9", "\"", -0.0, 1E+2, {}], "c" : null}"#;

    #[test]
    fn data_survives_byte_for_byte() {
        let frame = format!(r#"{{"type":"publish","to":"u","data":  {ODD}  ,"id":"m1"}}"#);
        let p = publish(&frame);
        assert_eq!(p.data.as_bytes(), ODD.as_bytes());
        let (_, message) = p.into_message().expect("valid");
        assert_eq!(&message.payload()[..], ODD.as_bytes());

        let out = encode_delivery(&delivery(7, message));
        assert!(out.contains(ODD), "{out}");
        assert_eq!(data_of(&out), ODD);
        let v = json(&out);
        assert_eq!(v["type"], "message");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["id"], "m1");
        assert_eq!(v["data"]["a"][1], "é");
    }

    #[test]
    fn scalars_and_big_numbers_pass_through() {
        for data in [
            "0",
            "-12.5e-7",
            "true",
            r#""x\ny\u0000""#,
            "123456789012345678901234567890",
            "1e400",
            "[]",
        ] {
            let p = publish(&format!(r#"{{"type":"publish","to":"u","data":{data}}}"#));
            assert_eq!(p.data.as_bytes(), data.as_bytes());
            let (_, m) = p.into_message().expect("valid");
            assert_eq!(data_of(&encode_delivery(&delivery(1, m))), data);
        }
    }

    #[test]
    fn shared_decode_slices_the_frame_when_data_dominates() {
        let frame = Bytes::from(format!(
            r#"{{"type":"publish","to":"u","data":"{}"}}"#,
            "x".repeat(200)
        ));
        let ClientFrame::Publish(p) = decode_client_frame_shared(&frame).expect("valid") else {
            panic!()
        };
        let data = p.data.into_bytes();
        let start = data.as_ptr() as usize - frame.as_ptr() as usize;
        assert!(start < frame.len(), "the payload is a slice of the frame");
        assert_eq!(&frame[start..start + data.len()], &data[..]);

        // A small `data` next to a large ignored field is copied, so it holds only itself.
        let frame = Bytes::from(format!(
            r#"{{"type":"publish","to":"u","data":1,"pad":"{}"}}"#,
            "x".repeat(200)
        ));
        let ClientFrame::Publish(p) = decode_client_frame_shared(&frame).expect("valid") else {
            panic!()
        };
        let data = p.data.into_bytes();
        let addr = data.as_ptr() as usize;
        let inside =
            (frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len()).contains(&addr);
        assert!(!inside, "copied");
        assert_eq!(&data[..], b"1");
    }

    #[test]
    fn shared_and_copying_decoders_agree() {
        for text in [
            r#"{"type":"publish","to":"u","data":[1, 2 ]}"#,
            r#"{"type":"ack","seq":-1}"#,
            "[]",
            "{",
        ] {
            assert_eq!(
                decode_client_frame_shared(&Bytes::copy_from_slice(text.as_bytes())),
                decode_client_frame(text),
                "{text}"
            );
        }
    }

    // --- errors: every code, naming the field ---------------------------------------------

    fn assert_error(text: &str, code: &str, field: Option<&str>) {
        let err = error(text);
        assert_eq!(err.code(), code, "{text}: {err}");
        assert_eq!(err.field(), field, "{text}: {err}");
        if let Some(field) = field {
            let shown = err.to_string();
            assert!(shown.contains(&format!("`{field}`")), "{text}: {shown}");
        }
        let violation = matches!(code, "invalid_json" | "not_an_object" | "invalid_utf8");
        assert_eq!(err.is_protocol_violation(), violation, "{text}");
        // Every error encodes as a valid `error` frame with its code.
        let frame = json(&encode_frame_error(&err));
        assert_eq!(frame["type"], "error");
        assert_eq!(frame["code"], code);
    }

    #[test]
    fn invalid_json_is_a_protocol_violation() {
        for text in [
            "",
            "ping",
            "{",
            r#"{"type":"ping"} x"#,
            r#"{"type":"ping",}"#,
            r#"{'type':'ping'}"#,
            "{\"type\":\"ping\",\"s\":\"\u{1}\"}",
        ] {
            assert_error(text, "invalid_json", None);
        }
    }

    #[test]
    fn deep_nesting_in_data_and_ignored_fields_is_accepted_without_recursion() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let frame = format!(r#"{{"type":"publish","to":"u","x":{deep},"data":{deep}}}"#);
        assert_eq!(publish(&frame).data.as_bytes(), deep.as_bytes());
        let unclosed = format!(
            r#"{{"type":"publish","to":"u","data":{}"#,
            "[".repeat(100_000)
        );
        assert_error(&unclosed, "invalid_json", None);
    }

    #[test]
    fn non_objects_are_a_protocol_violation() {
        for text in [
            "[]",
            "1",
            "null",
            r#""ping""#,
            "true",
            r#"[{"type":"ping"}]"#,
        ] {
            assert_error(text, "not_an_object", None);
        }
    }

    #[test]
    fn invalid_utf8_is_a_protocol_violation() {
        let err = decode_client_frame_shared(&Bytes::from_static(b"{\"type\":\"ping\xff\"}"))
            .expect_err("not UTF-8");
        assert_eq!(err.code(), "invalid_utf8");
        assert!(err.is_protocol_violation());
    }

    #[test]
    fn unknown_type_is_recoverable_and_echoed_short() {
        assert_error(r#"{"type":"subscribe"}"#, "unknown_type", None);
        let long = format!(r#"{{"type":"{}é"}}"#, "a".repeat(63));
        match error(&long).kind() {
            FrameErrorKind::UnknownType { name } => assert_eq!(name, &"a".repeat(63)),
            other => panic!("{other:?}"),
        }
    }

    /// A publish frame to `u` with `data` 1 and `extra` fields.
    fn pub_with(extra: &str) -> String {
        format!(r#"{{"type":"publish","to":"u","data":1,{extra}}}"#)
    }

    /// A connect frame with `resume` set to `resume`.
    fn resume_with(resume: &str) -> String {
        format!(r#"{{"type":"connect","token":"t","resume":{resume}}}"#)
    }

    #[test]
    fn missing_fields_are_named() {
        let cases = [
            ("{}".to_owned(), "type"),
            (r#"{"type":null}"#.to_owned(), "type"),
            (r#"{"type":"connect"}"#.to_owned(), "token"),
            (resume_with(r#"{"seq":1}"#), "resume.epoch"),
            (resume_with(r#"{"epoch":"1","seq":null}"#), "resume.seq"),
            (r#"{"type":"ack"}"#.to_owned(), "seq"),
            (r#"{"type":"publish","data":1}"#.to_owned(), "to"),
            (r#"{"type":"publish","to":null,"data":1}"#.to_owned(), "to"),
            (r#"{"type":"publish","to":"u"}"#.to_owned(), "data"),
            (pub_with(r#""stream":{"part":0}"#), "stream.id"),
            (pub_with(r#""stream":{"id":"s"}"#), "stream.part"),
        ];
        for (text, field) in cases {
            assert_error(&text, "missing_field", Some(field));
        }
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            (r#"{"type":1}"#.to_owned(), "type"),
            (r#"{"type":"connect","token":5}"#.to_owned(), "token"),
            (resume_with("[]"), "resume"),
            (resume_with(r#"{"epoch":1,"seq":1}"#), "resume.epoch"),
            (resume_with(r#"{"epoch":"1","seq":-1}"#), "resume.seq"),
            (r#"{"type":"ack","seq":"1"}"#.to_owned(), "seq"),
            (r#"{"type":"ack","seq":1.0}"#.to_owned(), "seq"),
            (r#"{"type":"ack","seq":1e3}"#.to_owned(), "seq"),
            (
                r#"{"type":"ack","seq":18446744073709551616}"#.to_owned(),
                "seq",
            ),
            (r#"{"type":"publish","to":["u"],"data":1}"#.to_owned(), "to"),
            (pub_with(r#""priority":"urgent""#), "priority"),
            (pub_with(r#""priority":"High""#), "priority"),
            (pub_with(r#""priority":2"#), "priority"),
            (pub_with(r#""ttl_ms":-5"#), "ttl_ms"),
            (pub_with(r#""id":7"#), "id"),
            (pub_with(r#""ref":{}"#), "ref"),
            (pub_with(r#""stream":"s""#), "stream"),
            (pub_with(r#""stream":{"id":1,"part":0}"#), "stream.id"),
            (
                pub_with(r#""stream":{"id":"s","part":4294967296}"#),
                "stream.part",
            ),
            (
                pub_with(r#""stream":{"id":"s","part":0,"last":1}"#),
                "stream.last",
            ),
        ];
        for (text, field) in cases {
            assert_error(&text, "invalid_field", Some(field));
        }
    }

    #[test]
    fn duplicate_fields_are_named() {
        let cases = [
            (r#"{"type":"ack","type":"ping"}"#.to_owned(), "type"),
            (r#"{"type":"ack","seq":1,"seq":2}"#.to_owned(), "seq"),
            (pub_with(r#""to":"b""#), "to"),
            (pub_with(r#""\u0064ata":2"#), "data"),
            (
                pub_with(r#""stream":{"id":"s","id":"t","part":0}"#),
                "stream.id",
            ),
            (
                resume_with(r#"{"epoch":"1","seq":1,"seq":2}"#),
                "resume.seq",
            ),
        ];
        for (text, field) in cases {
            assert_error(&text, "duplicate_field", Some(field));
        }
    }

    #[test]
    fn into_message_checks_values_and_keeps_the_ref() {
        let cases = [
            (
                r#"{"type":"publish","to":"","data":1,"ref":"r"}"#.to_owned(),
                "to",
            ),
            (pub_with(r#""ttl_ms":0,"ref":"r""#), "ttl_ms"),
            (pub_with(r#""id":"","ref":"r""#), "id"),
            (
                pub_with(r#""stream":{"id":"","part":0},"ref":"r""#),
                "stream.id",
            ),
        ];
        for (text, field) in cases {
            let err = publish(&text).into_message().expect_err(&text);
            assert_eq!(
                (err.code(), err.field()),
                ("invalid_field", Some(field)),
                "{text}"
            );
            assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
            assert_eq!(err.reference(), Some("r"));
            assert_eq!(json(&encode_frame_error(&err))["ref"], "r");
        }
    }

    #[test]
    fn decode_errors_of_a_publish_keep_its_ref() {
        let err = error(r#"{"type":"publish","ref":"r2","to":"u"}"#);
        assert_eq!((err.field(), err.reference()), (Some("data"), Some("r2")));
        // A ref that is itself wrong cannot be carried.
        let err = error(r#"{"type":"publish","ref":3,"to":"u","data":1}"#);
        assert_eq!((err.field(), err.reference()), (Some("ref"), None));
        assert!(json(&encode_frame_error(&err)).get("ref").is_none());
    }

    #[test]
    fn resume_with_a_malformed_epoch_fails_to_convert() {
        for epoch in ["", "xyz", "00000000000000000", "-1"] {
            let wire = WireResume {
                epoch: epoch.into(),
                seq: 1,
            };
            let err = wire.to_resume_point().expect_err(epoch);
            assert_eq!(
                (err.code(), err.field()),
                ("invalid_field", Some("resume.epoch"))
            );
        }
    }

    // --- HTTP bodies ------------------------------------------------------------------------

    #[test]
    fn http_bodies_decode_like_frames() {
        let p = decode_publish_request(r#"{"to":"u","data":{"k": [ ]},"priority":"low"}"#)
            .expect("valid");
        assert_eq!(
            (p.data.as_bytes(), p.priority),
            (&br#"{"k": [ ]}"#[..], Priority::Low)
        );
        assert_eq!(
            decode_publish_request("[]").map_err(|e| e.code()),
            Err("not_an_object")
        );

        let batch = decode_publish_batch(
            r#"{"messages":[{"to":"a","data":1},7,{"to":"b","data":2,"ttl_ms":"x"}],"extra":0}"#,
        )
        .expect("a batch");
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[0].as_ref().map(|p| p.to.as_str()), Ok("a"));
        assert_eq!(
            batch[1].as_ref().map_err(|e| e.field()),
            Err(Some("messages"))
        );
        assert_eq!(
            batch[2].as_ref().map_err(|e| e.field()),
            Err(Some("ttl_ms"))
        );
        for body in [r#"{"messages":{}}"#, r#"{"messages":null}"#, r#"{}"#] {
            let err = decode_publish_batch(body).expect_err(body);
            assert_eq!(err.field(), Some("messages"), "{body}");
        }
        assert_eq!(
            decode_publish_batch(r#"{"messages":[]}"#).map(|b| b.len()),
            Ok(0)
        );
    }

    // --- encoding ---------------------------------------------------------------------------

    #[test]
    fn encodes_connected_with_the_whole_manifest() {
        let info = ConnectInfo {
            epoch: "00000000000000ff".parse().expect("an epoch"),
            recovered: true,
            redelivered: 3,
            pending: 12,
            missed: MissedManifest {
                evicted: 1,
                rejected: 2,
                shed: 3,
                expired: 4,
                deduplicated: 5,
                ids: vec![MessageId::from("a\"b"), MessageId::from("c")],
                reset: None,
            },
        };
        let user = UserId::new("al\\ice\n").expect("a user");
        let out = encode_connected(&user, &info);
        let v = json(&out);
        assert_eq!(v["type"], "connected");
        assert_eq!(v["user"], "al\\ice\n");
        assert_eq!(v["epoch"], "00000000000000ff");
        assert_eq!(v["recovered"], true);
        assert_eq!(
            (v["redelivered"].as_u64(), v["pending"].as_u64()),
            (Some(3), Some(12))
        );
        let m = &v["missed"];
        let counts: Vec<_> = ["evicted", "rejected", "shed", "expired", "deduplicated"]
            .iter()
            .map(|k| m[k].as_u64())
            .collect();
        assert_eq!(counts, [Some(1), Some(2), Some(3), Some(4), Some(5)]);
        assert_eq!(m["ids"], serde_json::json!(["a\"b", "c"]));

        let empty = ConnectInfo {
            missed: MissedManifest::default(),
            ..info
        };
        assert_eq!(
            json(&encode_connected(&user, &empty))["missed"]["ids"],
            serde_json::json!([])
        );
    }

    #[test]
    fn encodes_deliveries_with_and_without_id_and_stream() {
        let plain = encode_delivery(&delivery(1, Message::new("{}")));
        assert_eq!(
            plain,
            r#"{"type":"message","seq":1,"priority":"normal","data":{}}"#
        );

        let m = Message::new(r#"[ "p" ]"#)
            .with_priority(Priority::High)
            .with_id("i\u{7}d")
            .with_stream_part(StreamPart::new("str\"eam", 2, true));
        let out = encode_delivery(&delivery(u64::MAX, m));
        let v = json(&out);
        assert_eq!(v["seq"].as_u64(), Some(u64::MAX));
        assert_eq!(v["priority"], "high");
        assert_eq!(v["id"], "i\u{7}d");
        assert_eq!(
            v["stream"],
            serde_json::json!({"id": "str\"eam", "part": 2, "last": true})
        );
        assert_eq!(data_of(&out), r#"[ "p" ]"#);
    }

    #[test]
    fn a_payload_that_is_not_utf8_becomes_a_string() {
        let out = encode_delivery(&delivery(2, Message::new(&b"ok\xff"[..])));
        assert_eq!(json(&out)["data"], "ok\u{fffd}");
    }

    #[test]
    fn encodes_abort_markers_as_stream_aborted() {
        use crate::AbortReason;
        let marker = Message::abort_marker(
            "s\"1".into(),
            3,
            Priority::Normal,
            AbortReason::Producer("model \"crashed\"".into()),
        );
        let v = json(&encode_delivery(&delivery(9, marker)));
        assert_eq!(
            v,
            serde_json::json!({"type": "stream_aborted", "seq": 9, "stream": "s\"1",
                "code": "producer", "reason": "model \"crashed\""})
        );
        let marker = Message::abort_marker("s".into(), 0, Priority::Low, AbortReason::Timeout);
        let v = json(&encode_delivery(&delivery(10, marker)));
        assert_eq!(
            (&v["code"], &v["reason"]),
            (&Value::from("timeout"), &Value::from("timeout"))
        );
    }

    #[test]
    fn encodes_every_publish_outcome() {
        let cases = [
            (SendOutcome::Delivered, r#"{"outcome":"delivered"}"#),
            (
                SendOutcome::Queued { evicted: 0 },
                r#"{"outcome":"queued"}"#,
            ),
            (
                SendOutcome::Queued { evicted: 4 },
                r#"{"outcome":"queued","evicted":4}"#,
            ),
            (SendOutcome::Duplicate, r#"{"outcome":"duplicate"}"#),
            (
                SendOutcome::Rejected(RejectReason::TooManyUsers),
                r#"{"outcome":"rejected","reason":"too_many_users"}"#,
            ),
        ];
        for (outcome, body) in cases {
            assert_eq!(encode_publish_outcome(&outcome), body);
            let with_ref = json(&encode_publish_result(Some("r\"1"), &outcome));
            let mut expected = json(body);
            expected["type"] = "publish_result".into();
            expected["ref"] = "r\"1".into();
            assert_eq!(with_ref, expected);
            let without = json(&encode_publish_result(None, &outcome));
            assert!(without.get("ref").is_none());
        }
    }

    #[test]
    fn encodes_pong_error_and_try_later() {
        assert_eq!(json(&encode_pong()), serde_json::json!({"type": "pong"}));
        let v = json(&encode_error("bad\u{0}", "line\nbreak \"quoted\" \u{2028}"));
        assert_eq!(v["code"], "bad\u{0}");
        assert_eq!(v["message"], "line\nbreak \"quoted\" \u{2028}");
        assert_eq!(
            json(&try_later_reason(Duration::MAX)),
            serde_json::json!({"retry_after_ms": u64::MAX})
        );
        assert_eq!(try_later_reason(Duration::ZERO), r#"{"retry_after_ms":0}"#);
    }

    #[test]
    fn writes_every_digit_count() {
        let mut n = 1u64;
        for _ in 0..20 {
            for v in [n - 1, n, n.saturating_mul(7)] {
                let mut w = FrameWriter::with_capacity(20);
                w.uint(v);
                assert_eq!(w.finish(), v.to_string());
            }
            n = n.saturating_mul(10);
        }
    }

    #[test]
    fn close_codes_are_the_documented_ones() {
        assert_eq!(
            [
                CLOSE_UNAUTHORIZED,
                CLOSE_REPLACED,
                CLOSE_PROTOCOL_VIOLATION,
                CLOSE_TRY_LATER,
                CLOSE_SHUTTING_DOWN,
                CLOSE_FRAME_TOO_BIG
            ],
            [4001, 4002, 4003, 4100, 1001, 1009]
        );
    }
}
