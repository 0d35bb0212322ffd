//! Wire protocol v1 from the client's side: decoding the frames the server writes
//! (`tether::protocol::encode_*`) and encoding the frames a client sends.
//!
//! Decoding follows the same rules as the server's decoder where they matter to a client:
//! fields this version does not know are ignored and an unknown `type` is reported as
//! [`ServerFrame::Unknown`] rather than as an error, so a newer server can add frames; a field
//! the frame uses may appear only once (serde's derive refuses duplicates); numbers must be
//! integers in range. No input panics. `data` is never parsed into a tree: the delivered
//! payload is a slice of the frame's own buffer, the JSON text exactly as the publisher sent it.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Epoch, MessageId, MissedManifest, Priority, ResetReason};

/// What the server said when a connection opened (the `connected` frame).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectedInfo {
    /// The user the token authenticated.
    pub user: String,
    /// The device this connection is, if the client named one (see
    /// [`ClientBuilder::device`](super::ClientBuilder::device)); `None` for the default device.
    pub device: Option<String>,
    /// The mailbox's epoch. Seqs are only comparable within one epoch; a new epoch means the
    /// mailbox was created afresh (the previous one expired) and seqs start again from 1.
    pub epoch: Epoch,
    /// True if the resume point was honoured: nothing acknowledged before it is sent again.
    pub recovered: bool,
    /// Unacknowledged messages the server sends again, with their original seqs, first.
    pub redelivered: u64,
    /// Messages waiting in the mailbox behind the delivery window.
    pub pending: u64,
    /// What the user lost since the previous connection, and why.
    pub missed: MissedManifest,
}

/// The position of a message in a multi-part stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    /// The stream's id.
    pub id: String,
    /// The part's index, from 0.
    pub part: u32,
    /// True on the final part.
    pub last: bool,
}

/// A message delivered to the user (the `message` frame).
///
/// The payload is the JSON text the publisher sent, byte for byte, sharing the buffer of the
/// frame it arrived in.
#[derive(Clone, PartialEq, Eq)]
pub struct Delivered {
    seq: u64,
    priority: Priority,
    id: Option<String>,
    stream: Option<StreamPosition>,
    data: Bytes,
}

impl Delivered {
    /// The per-user sequence number; acknowledging it settles every seq up to it.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The message's priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The publisher's message id, if it gave one.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The stream this message is a part of, if any.
    pub fn stream(&self) -> Option<&StreamPosition> {
        self.stream.as_ref()
    }

    /// The payload: one JSON value, as raw UTF-8 JSON text.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The payload as text.
    pub fn data_str(&self) -> &str {
        // Always UTF-8: the payload is a slice, on value boundaries, of a text frame that
        // was checked as UTF-8 before decoding. The fallback is unreachable.
        std::str::from_utf8(&self.data).unwrap_or_default()
    }

    /// Parses the payload as `T`.
    pub fn json<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }
}

impl fmt::Debug for Delivered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivered")
            .field("seq", &self.seq)
            .field("priority", &self.priority)
            .field("id", &self.id)
            .field("stream", &self.stream)
            .field("data", &self.data_str())
            .finish()
    }
}

/// A stream ended without its remaining parts (the `stream_aborted` frame). It has a seq and
/// is acknowledged like a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamAborted {
    /// The marker's seq.
    pub seq: u64,
    /// The stream's id.
    pub stream: String,
    /// The stable cause: `timeout`, `expired`, `overflow`, `memory_budget` or `producer`.
    pub code: String,
    /// The producer's text for a producer abort, the code otherwise.
    pub reason: String,
}

/// What the engine did with a publish (the `publish_result` frame, and the body of an HTTP
/// publish response).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishOutcome {
    /// Handed to the recipient's live session.
    Delivered,
    /// Kept in the recipient's mailbox; `evicted` older messages made room for it.
    Queued {
        /// Messages dropped by the overflow policy to make room.
        evicted: u64,
    },
    /// A copy with the same id was accepted recently: nothing changed.
    Duplicate,
    /// Refused: by the engine (`mailbox_full`, `memory_budget`, ...) or by the server's front
    /// end (`publish_not_allowed`, `rate_limited`, `try_later`, `shutting_down`).
    Rejected {
        /// The snake_case reason.
        reason: String,
    },
    /// The recipient has several devices: what each of their mailboxes did with it.
    Fanout {
        /// Devices whose live session got it.
        delivered: u64,
        /// Devices that keep it in their mailbox.
        queued: u64,
        /// Devices whose own caps or policy did not keep it.
        dropped: u64,
        /// Older messages evicted for it, over all devices.
        evicted: u64,
    },
}

impl PublishOutcome {
    /// True for `Delivered`, `Queued`, and a `Fanout` that some device kept: the message is
    /// in the recipient's hands or mailbox.
    pub fn is_accepted(&self) -> bool {
        match self {
            PublishOutcome::Delivered | PublishOutcome::Queued { .. } => true,
            PublishOutcome::Fanout {
                delivered, queued, ..
            } => delivered + queued > 0,
            _ => false,
        }
    }
}

/// An `error` frame: the server could not act on something the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorFrame {
    /// The stable snake_case code (`invalid_field`, `unknown_type`, `invalid_ack`, ...).
    pub code: String,
    /// A human-readable description.
    pub message: String,
    /// The `ref` of the publish this error answers, if any.
    pub reference: Option<String>,
}

/// A decoded server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerFrame {
    /// `connected`: the session is open.
    Connected(ConnectedInfo),
    /// `message`: a delivery.
    Message(Delivered),
    /// `stream_aborted`: an abort marker, a delivery with a seq.
    StreamAborted(StreamAborted),
    /// `publish_result`: the answer to the publish with this `ref`.
    PublishResult {
        /// The publish's `ref`, if it had one.
        reference: Option<String>,
        /// What happened to it.
        outcome: PublishOutcome,
    },
    /// `pong`: the answer to a `ping`.
    Pong,
    /// `error`.
    Error(ErrorFrame),
    /// A frame type this version does not know (the type, cut to 64 bytes). Ignored.
    Unknown(String),
}

/// A server frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable `{frame_type}` frame from the server: {detail}")]
pub struct DecodeError {
    frame_type: String,
    detail: String,
}

impl DecodeError {
    fn new(frame_type: &str, detail: impl fmt::Display) -> Self {
        Self {
            frame_type: cut(frame_type, 64).to_owned(),
            detail: detail.to_string(),
        }
    }

    /// The frame's `type`, or `?` if even that could not be read.
    pub fn frame_type(&self) -> &str {
        &self.frame_type
    }

    /// True if the frame carries a seq (or opens the session): skipping it could make a
    /// cumulative ack settle a delivery the application never saw, so the connection must
    /// not go on after it.
    pub fn carries_seq(&self) -> bool {
        matches!(
            self.frame_type.as_str(),
            "message" | "stream_aborted" | "connected" | "?"
        )
    }
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct WireConnected {
    user: String,
    #[serde(default)]
    device: Option<String>,
    epoch: String,
    recovered: bool,
    redelivered: u64,
    pending: u64,
    missed: WireMissed,
}

// Counts default to 0 so that a server which leaves out a cause it never has still decodes.
#[derive(Deserialize)]
struct WireMissed {
    #[serde(default)]
    expired: u64,
    #[serde(default)]
    evicted: u64,
    #[serde(default)]
    rejected: u64,
    #[serde(default)]
    shed: u64,
    #[serde(default)]
    deduplicated: u64,
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    reset: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    seq: u64,
    #[serde(borrow)]
    priority: Cow<'a, str>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    stream: Option<WireStream>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct WireStream {
    id: String,
    part: u32,
    #[serde(default)]
    last: bool,
}

#[derive(Deserialize)]
struct WireStreamAborted {
    seq: u64,
    stream: String,
    code: String,
    reason: String,
}

#[derive(Deserialize)]
struct WirePublishResult<'a> {
    #[serde(rename = "ref", default)]
    reference: Option<String>,
    #[serde(flatten, borrow)]
    outcome: WireOutcome<'a>,
}

/// The outcome fields shared by `publish_result` and the HTTP publish response.
#[derive(Deserialize)]
struct WireOutcome<'a> {
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    evicted: Option<u64>,
    #[serde(default)]
    delivered: u64,
    #[serde(default)]
    queued: u64,
    #[serde(default)]
    dropped: u64,
}

impl WireOutcome<'_> {
    fn into_outcome(self) -> Result<PublishOutcome, String> {
        Ok(match &*self.outcome {
            "delivered" => PublishOutcome::Delivered,
            "queued" => PublishOutcome::Queued {
                evicted: self.evicted.unwrap_or(0),
            },
            "duplicate" => PublishOutcome::Duplicate,
            "rejected" => PublishOutcome::Rejected {
                reason: self.reason.unwrap_or_default(),
            },
            "fanout" => PublishOutcome::Fanout {
                delivered: self.delivered,
                queued: self.queued,
                dropped: self.dropped,
                evicted: self.evicted.unwrap_or(0),
            },
            other => return Err(format!("unknown outcome {:?}", cut(other, 64))),
        })
    }
}

#[derive(Deserialize)]
struct WireError {
    code: String,
    message: String,
    #[serde(rename = "ref", default)]
    reference: Option<String>,
}

/// Decodes one server frame held in `frame` (the text of a WebSocket text frame).
///
/// ```
/// use bytes::Bytes;
/// use tether::client::{decode_server_frame, ServerFrame};
///
/// let frame = Bytes::from_static(br#"{"type":"message","seq":7,"priority":"high","data":{"n": 1.50}}"#);
/// let ServerFrame::Message(m) = decode_server_frame(&frame)? else { unreachable!() };
/// assert_eq!((m.seq(), m.data_str()), (7, r#"{"n": 1.50}"#));
/// # Ok::<(), tether::client::DecodeError>(())
/// ```
pub fn decode_server_frame(frame: &Bytes) -> Result<ServerFrame, DecodeError> {
    let text = std::str::from_utf8(frame).map_err(|e| DecodeError::new("?", e))?;
    let tag: Tag<'_> = serde_json::from_str(text).map_err(|e| DecodeError::new("?", e))?;
    let kind = tag.kind;
    let fail = |e: serde_json::Error| DecodeError::new(&kind, e);
    Ok(match &*kind {
        "connected" => {
            let w: WireConnected = serde_json::from_str(text).map_err(fail)?;
            let epoch = w
                .epoch
                .parse::<Epoch>()
                .map_err(|e| DecodeError::new(&kind, format_args!("`epoch`: {e}")))?;
            let missed = MissedManifest {
                evicted: w.missed.evicted,
                rejected: w.missed.rejected,
                shed: w.missed.shed,
                expired: w.missed.expired,
                deduplicated: w.missed.deduplicated,
                ids: w.missed.ids.into_iter().map(MessageId::from).collect(),
                // A reason this client does not know yet still means recovered = false.
                reset: w.missed.reset.as_deref().and_then(ResetReason::from_name),
            };
            ServerFrame::Connected(ConnectedInfo {
                user: w.user,
                device: w.device,
                epoch,
                recovered: w.recovered,
                redelivered: w.redelivered,
                pending: w.pending,
                missed,
            })
        }
        "message" => {
            let w: WireMessage<'_> = serde_json::from_str(text).map_err(fail)?;
            let priority = Priority::ALL
                .into_iter()
                .find(|p| p.as_str() == w.priority)
                .ok_or_else(|| DecodeError::new(&kind, "`priority`: unknown priority"))?;
            ServerFrame::Message(Delivered {
                seq: w.seq,
                priority,
                id: w.id,
                stream: w.stream.map(|s| StreamPosition {
                    id: s.id,
                    part: s.part,
                    last: s.last,
                }),
                data: slice_of(frame, w.data.get()),
            })
        }
        "stream_aborted" => {
            let w: WireStreamAborted = serde_json::from_str(text).map_err(fail)?;
            ServerFrame::StreamAborted(StreamAborted {
                seq: w.seq,
                stream: w.stream,
                code: w.code,
                reason: w.reason,
            })
        }
        "publish_result" => {
            let w: WirePublishResult<'_> = serde_json::from_str(text).map_err(fail)?;
            let outcome = w
                .outcome
                .into_outcome()
                .map_err(|e| DecodeError::new(&kind, e))?;
            ServerFrame::PublishResult {
                reference: w.reference,
                outcome,
            }
        }
        "pong" => ServerFrame::Pong,
        "error" => {
            let w: WireError = serde_json::from_str(text).map_err(fail)?;
            ServerFrame::Error(ErrorFrame {
                code: w.code,
                message: w.message,
                reference: w.reference,
            })
        }
        other => ServerFrame::Unknown(cut(other, 64).to_owned()),
    })
}

/// Decodes the body of an HTTP publish response: `{"outcome","reason"?,"evicted"?}`.
///
/// ```
/// use tether::client::{decode_publish_outcome, PublishOutcome};
///
/// assert_eq!(decode_publish_outcome(br#"{"outcome":"queued","evicted":2}"#), Ok(PublishOutcome::Queued { evicted: 2 }));
/// assert!(decode_publish_outcome(b"{}").is_err());
/// ```
pub fn decode_publish_outcome(body: &[u8]) -> Result<PublishOutcome, DecodeError> {
    let w: WireOutcome<'_> =
        serde_json::from_slice(body).map_err(|e| DecodeError::new("publish_outcome", e))?;
    w.into_outcome()
        .map_err(|e| DecodeError::new("publish_outcome", e))
}

/// `part` borrows from `frame` by construction (serde_json's `RawValue` is a slice of its
/// input); share the frame's buffer instead of copying the payload. The address check keeps
/// a mistake from ever being a panic or a wrong slice: it falls back to a copy.
fn slice_of(frame: &Bytes, part: &str) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
    if start <= frame.len() && part.len() <= frame.len() - start {
        frame.slice(start..start + part.len())
    } else {
        Bytes::copy_from_slice(part.as_bytes())
    }
}

// ---------------------------------------------------------------------------------------------
// Client frames
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct ConnectFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    resume: Option<ResumeFrame>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
}

#[derive(Serialize)]
struct ResumeFrame {
    epoch: String,
    seq: u64,
}

/// The `connect` frame.
pub(crate) fn encode_connect(
    token: &str,
    resume: Option<crate::ResumePoint>,
    device: Option<&str>,
) -> String {
    let frame = ConnectFrame {
        kind: "connect",
        token,
        resume: resume.map(|r| ResumeFrame {
            epoch: r.epoch.to_string(),
            seq: r.last_seq,
        }),
        device,
    };
    // Serialising plain strings and integers into a String cannot fail.
    serde_json::to_string(&frame).unwrap_or_default()
}

/// The `ack` frame.
pub(crate) fn encode_ack(seq: u64) -> String {
    format!(r#"{{"type":"ack","seq":{seq}}}"#)
}

/// The `ping` frame.
pub(crate) const PING: &str = r#"{"type":"ping"}"#;

/// The fields of a publish, as the `publish` frame and the HTTP publish body carry them.
#[derive(Serialize)]
pub(crate) struct PublishFields<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    pub(crate) to: &'a str,
    pub(crate) data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) priority: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ttl_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<&'a str>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub(crate) reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stream: Option<&'a StreamPosition>,
}

impl Serialize for StreamPosition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("StreamPosition", 3)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("part", &self.part)?;
        st.serialize_field("last", &self.last)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        decode_client_frame, encode_connected, encode_delivery, encode_error, encode_frame_error,
        encode_pong, encode_publish_outcome, encode_publish_result, encode_stream_aborted,
        ClientFrame,
    };
    use crate::{
        ConnectInfo, Delivery, DeviceId, Message, RejectReason, SendOutcome, StreamPart, UserId,
    };

    fn decode(text: &str) -> Result<ServerFrame, DecodeError> {
        decode_server_frame(&Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn decodes_connected_with_the_whole_manifest() {
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
        let user = UserId::new("al\\ice").expect("a user");
        let frame = decode(&encode_connected(&user, &DeviceId::default(), &info)).expect("decodes");
        let ServerFrame::Connected(got) = frame else {
            panic!("{frame:?}")
        };
        assert_eq!(got.user, "al\\ice");
        assert_eq!(got.epoch, info.epoch);
        assert!(got.recovered);
        assert_eq!((got.redelivered, got.pending), (3, 12));
        assert_eq!(got.missed, info.missed);
        assert_eq!(got.missed.total(), 10);
    }

    #[test]
    fn decodes_messages_sharing_the_frame_buffer() {
        let plain = encode_delivery(&Delivery::new(1, Message::new(r#"{"a": 1.0e3}"#)));
        let bytes = Bytes::from(plain);
        let ServerFrame::Message(m) = decode_server_frame(&bytes).expect("decodes") else {
            panic!()
        };
        assert_eq!(
            (m.seq(), m.priority(), m.id(), m.stream()),
            (1, Priority::Normal, None, None)
        );
        assert_eq!(m.data_str(), r#"{"a": 1.0e3}"#);
        // The payload is a view into the frame, not a copy.
        let at = m.data().as_ptr() as usize - bytes.as_ptr() as usize;
        assert!(at < bytes.len());

        let full = Message::new(r#"[ "p" ]"#)
            .with_priority(Priority::Critical)
            .with_id("i\u{7}d")
            .with_stream_part(StreamPart::new("s\"1", 2, true));
        let frame = decode(&encode_delivery(&Delivery::new(u64::MAX, full))).expect("decodes");
        let ServerFrame::Message(m) = frame else {
            panic!("{frame:?}")
        };
        assert_eq!(m.seq(), u64::MAX);
        assert_eq!(m.priority(), Priority::Critical);
        assert_eq!(m.id(), Some("i\u{7}d"));
        assert_eq!(
            m.stream(),
            Some(&StreamPosition {
                id: "s\"1".into(),
                part: 2,
                last: true
            })
        );
        assert_eq!(m.json::<Vec<String>>().expect("json"), ["p"]);
        assert!(format!("{m:?}").contains("[ \\\"p\\\" ]"));
    }

    #[test]
    fn decodes_stream_aborted() {
        let frame = decode(&encode_stream_aborted(
            8,
            "an\"swer",
            "producer",
            "model crashed",
        ));
        assert_eq!(
            frame,
            Ok(ServerFrame::StreamAborted(StreamAborted {
                seq: 8,
                stream: "an\"swer".into(),
                code: "producer".into(),
                reason: "model crashed".into(),
            }))
        );
    }

    #[test]
    fn decodes_every_publish_result() {
        let cases = [
            (SendOutcome::Delivered, PublishOutcome::Delivered),
            (
                SendOutcome::Queued { evicted: 0 },
                PublishOutcome::Queued { evicted: 0 },
            ),
            (
                SendOutcome::Queued { evicted: 4 },
                PublishOutcome::Queued { evicted: 4 },
            ),
            (SendOutcome::Duplicate, PublishOutcome::Duplicate),
            (
                SendOutcome::Rejected(RejectReason::MailboxFull),
                PublishOutcome::Rejected {
                    reason: "mailbox_full".into(),
                },
            ),
        ];
        for (outcome, expected) in cases {
            for reference in [Some("r\"1"), None] {
                let frame = decode(&encode_publish_result(reference, &outcome));
                assert_eq!(
                    frame,
                    Ok(ServerFrame::PublishResult {
                        reference: reference.map(str::to_owned),
                        outcome: expected.clone(),
                    })
                );
            }
            let body = encode_publish_outcome(&outcome);
            assert_eq!(decode_publish_outcome(body.as_bytes()), Ok(expected));
        }
        // The front end's own refusals write `"ref":null` when the publish had none.
        let refused =
            r#"{"type":"publish_result","ref":null,"outcome":"rejected","reason":"rate_limited"}"#;
        assert_eq!(
            decode(refused),
            Ok(ServerFrame::PublishResult {
                reference: None,
                outcome: PublishOutcome::Rejected {
                    reason: "rate_limited".into()
                },
            })
        );
        assert!(decode(r#"{"type":"publish_result","outcome":"teleported"}"#).is_err());
    }

    #[test]
    fn decodes_pong_error_and_unknown_frames() {
        assert_eq!(decode(&encode_pong()), Ok(ServerFrame::Pong));
        assert_eq!(
            decode(&encode_error("not_connected", "send \"connect\" first")),
            Ok(ServerFrame::Error(ErrorFrame {
                code: "not_connected".into(),
                message: "send \"connect\" first".into(),
                reference: None,
            }))
        );
        let err = decode_client_frame(r#"{"type":"publish","ref":"r9","to":7,"data":0}"#)
            .expect_err("invalid");
        let frame = decode(&encode_frame_error(&err)).expect("decodes");
        let ServerFrame::Error(e) = frame else {
            panic!("{frame:?}")
        };
        assert_eq!(
            (e.code.as_str(), e.reference.as_deref()),
            ("invalid_field", Some("r9"))
        );
        let long = format!(r#"{{"type":"{}","x":1}}"#, "z".repeat(100));
        assert_eq!(decode(&long), Ok(ServerFrame::Unknown("z".repeat(64))));
    }

    #[test]
    fn bad_frames_are_errors_never_panics() {
        let cases = [
            ("", "?"),
            ("[]", "?"),
            ("{}", "?"),
            (r#"{"type":1}"#, "?"),
            (
                r#"{"type":"message","seq":1,"priority":"normal"}"#,
                "message",
            ),
            (
                r#"{"type":"message","seq":-1,"priority":"normal","data":1}"#,
                "message",
            ),
            (
                r#"{"type":"message","seq":1.0,"priority":"normal","data":1}"#,
                "message",
            ),
            (
                r#"{"type":"message","seq":1,"priority":"urgent","data":1}"#,
                "message",
            ),
            (
                r#"{"type":"message","seq":1,"seq":2,"priority":"low","data":1}"#,
                "message",
            ),
            (
                r#"{"type":"message","seq":1,"priority":"low","stream":"s","data":1}"#,
                "message",
            ),
            (r#"{"type":"connected","user":"u"}"#, "connected"),
            (
                r#"{"type":"connected","user":"u","epoch":"xyz","recovered":false,"redelivered":0,"pending":0,"missed":{}}"#,
                "connected",
            ),
            (r#"{"type":"stream_aborted","seq":1}"#, "stream_aborted"),
            (r#"{"type":"error","code":"c"}"#, "error"),
        ];
        for (text, kind) in cases {
            let err = decode(text).expect_err(text);
            assert_eq!(err.frame_type(), kind, "{text}: {err}");
        }
        assert!(decode("{").expect_err("bad").carries_seq());
        assert!(!decode(r#"{"type":"error"}"#)
            .expect_err("bad")
            .carries_seq());
        let not_utf8 = decode_server_frame(&Bytes::from_static(b"{\"type\":\"pong\xff\"}"));
        assert_eq!(not_utf8.map_err(|e| e.carries_seq()), Err(true));
        // Deep nesting in data and ignored fields does not recurse into the stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let text =
            format!(r#"{{"type":"message","seq":1,"x":{deep},"priority":"low","data":{deep}}}"#);
        let Ok(ServerFrame::Message(m)) = decode(&text) else {
            panic!("deep data")
        };
        assert_eq!(m.data().len(), deep.len());
    }

    #[test]
    fn client_frames_decode_on_the_server() {
        let resume = crate::ResumePoint {
            epoch: "00000000000000ab".parse().expect("an epoch"),
            last_seq: 42,
        };
        let frame =
            decode_client_frame(&encode_connect("t\"k", Some(resume), None)).expect("connect");
        let ClientFrame::Connect {
            token,
            resume: Some(r),
            ..
        } = frame
        else {
            panic!("{frame:?}")
        };
        assert_eq!(token, "t\"k");
        assert_eq!(r.to_resume_point(), Ok(resume));
        assert_eq!(
            decode_client_frame(&encode_connect("t", None, None)),
            Ok(ClientFrame::Connect {
                token: "t".into(),
                resume: None,
                device: None,
            })
        );
        assert_eq!(
            decode_client_frame(&encode_ack(u64::MAX)),
            Ok(ClientFrame::Ack { seq: u64::MAX })
        );
        assert_eq!(decode_client_frame(PING), Ok(ClientFrame::Ping));
    }
}
