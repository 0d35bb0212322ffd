//! The client frames as decoded: what the server acts on.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::error::{invalid, FrameError, NOT_EMPTY};
use crate::{Epoch, Message, Priority, ResumePoint, StreamPart, UserId};

/// A frame from a client.
///
/// ```
/// use tether::protocol::{decode_client_frame, ClientFrame};
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
        /// The device this connection is, as the client names it (kept in the app's
        /// storage); absent for the user's default device. Checked by the server.
        device: Option<String>,
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
    /// use tether::protocol::WireResume;
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
/// use tether::protocol::RawJson;
///
/// let raw = RawJson::from_text("  [1.0, \"\\u00e9\"] ").unwrap();
/// assert_eq!(raw.as_bytes(), b"[1.0, \"\\u00e9\"]"); // surrounding spaces are not part of it
/// assert!(RawJson::from_text("{nope").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RawJson(pub(super) Bytes);

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
    /// use tether::protocol::{decode_publish_request, FrameError};
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
