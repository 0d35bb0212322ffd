//! Encoding server frames and HTTP answers: each written straight into one buffer sized up
//! front, with a payload spliced in as the JSON text it already is.

use std::fmt;

use super::error::FrameError;
use crate::{ConnectInfo, Delivery, DeviceId, Priority, SendOutcome, StreamPart, UserId};

/// The `connected` frame: the session is open.
///
/// `{"type":"connected","user","device"?,"epoch","recovered","redelivered","pending","missed":
/// {"expired","evicted","rejected","shed","deduplicated","reset"?,"ids":[...]}}`, with `device`
/// only for a named device and `reset` only when the device's mailbox was reset.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tether::{Engine, UserId};
/// use tether::protocol::encode_connected;
///
/// let engine = Engine::builder().shards(1).build().unwrap();
/// let alice = UserId::new("alice").unwrap();
/// let session = engine.connect(&alice, None).await.unwrap();
/// let frame = encode_connected(&alice, session.device(), session.info());
/// assert!(frame.starts_with(r#"{"type":"connected","user":"alice","epoch":""#));
/// # });
/// ```
pub fn encode_connected(user: &UserId, device: &DeviceId, info: &ConnectInfo) -> String {
    let missed = &info.missed;
    let ids_len: usize = missed.ids.iter().map(|id| id.as_str().len() + 3).sum();
    let mut w =
        FrameWriter::with_capacity(256 + user.as_str().len() + device.as_str().len() + ids_len);
    w.lit("{\"type\":\"connected\",\"user\":");
    w.string(user.as_str());
    if !device.is_default() {
        w.lit(",\"device\":");
        w.string(device.as_str());
    }
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
    if let Some(reset) = missed.reset {
        // snake_case: nothing to escape.
        w.lit(",\"reset\":\"");
        w.lit(reset.as_str());
        w.lit("\"");
    }
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
/// use tether::protocol::{decode_publish_request, encode_delivery};
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
/// use tether::protocol::encode_stream_aborted;
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
/// use tether::protocol::encode_publish_result;
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
/// use tether::protocol::encode_publish_outcome;
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
        SendOutcome::Fanout(f) => {
            w.lit("\"outcome\":\"fanout\",\"delivered\":");
            w.uint(u64::from(f.delivered));
            w.lit(",\"queued\":");
            w.uint(u64::from(f.queued));
            w.lit(",\"dropped\":");
            w.uint(u64::from(f.dropped));
            if f.evicted > 0 {
                w.lit(",\"evicted\":");
                w.uint(u64::from(f.evicted));
            }
        }
    }
}

/// The `pong` frame, the answer to a `ping`.
///
/// ```
/// assert_eq!(tether::protocol::encode_pong(), r#"{"type":"pong"}"#);
/// ```
pub fn encode_pong() -> String {
    String::from(r#"{"type":"pong"}"#)
}

/// An `error` frame: `{"type":"error","code","message"}`.
///
/// ```
/// use tether::protocol::encode_error;
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
/// use tether::protocol::{decode_client_frame, encode_frame_error};
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
/// use tether::protocol::describe_invalid_input;
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
pub(super) struct FrameWriter {
    buf: Vec<u8>,
}

impl FrameWriter {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// Text that needs no escaping.
    pub(super) fn lit(&mut self, s: &str) {
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

    pub(super) fn uint(&mut self, mut n: u64) {
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
    pub(super) fn finish(self) -> String {
        self.try_finish()
            .unwrap_or_else(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }
}
