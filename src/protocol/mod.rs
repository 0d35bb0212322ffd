//! Wire protocol v1: decoding client frames and encoding server frames.
//!
//! A pure codec, no I/O: the server feeds it the text of each WebSocket frame (and the body of
//! each HTTP publish) and writes out the strings it returns. It is compiled with either the
//! `server` or the `client` feature and depends on neither: the server decodes client frames
//! and encodes its own; the Rust client (`tether::client`) reads the close codes here and
//! decodes server frames with its own, lenient reader.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | close codes, limits, the try-later reason, credential fingerprints |
//! | `frames.rs` | the decoded client frames ([`ClientFrame`], [`PublishRequest`], ...) |
//! | `decode.rs` | client frames and HTTP publish bodies to those types |
//! | `encode.rs` | server frames and HTTP answers, written straight into one buffer |
//! | `error.rs` | [`FrameError`]: what is wrong with a frame, by field |
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
//! use tether::protocol::{decode_client_frame, ClientFrame};
//!
//! let frame = decode_client_frame(r#"{"type":"publish","to":"alice","data":{"n": 1.50}}"#)?;
//! let ClientFrame::Publish(request) = frame else { unreachable!() };
//! let (user, message) = request.into_message()?;
//! assert_eq!(user.as_str(), "alice");
//! assert_eq!(&message.payload()[..], br#"{"n": 1.50}"#);
//! # Ok::<(), tether::protocol::FrameError>(())
//! ```

#![forbid(unsafe_code)]

mod decode;
mod encode;
mod error;
mod frames;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use decode::{
    decode_client_frame, decode_client_frame_shared, decode_publish_batch, decode_publish_request,
};
use encode::FrameWriter;
pub use encode::{
    describe_invalid_input, encode_connected, encode_delivery, encode_error, encode_frame_error,
    encode_invalid_input, encode_pong, encode_publish_outcome, encode_publish_result,
    encode_stream_aborted,
};
pub use error::{FrameError, FrameErrorKind};
pub use frames::{ClientFrame, PublishRequest, RawJson, WireResume, WireStreamPart};

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
/// use tether::protocol::try_later_reason;
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

/// A short, non-secret fingerprint of a credential of this protocol (a token, an API key, the
/// JWT secret): the first 8 hex digits of its SHA-256, so that logs and `Debug` output on
/// either end can tell which one is in use without showing it.
///
/// ```
/// assert_eq!(tether::protocol::fingerprint("abc"), "ba7816bf");
/// ```
pub fn fingerprint(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    data_encoding::HEXLOWER.encode(&Sha256::digest(secret.as_bytes())[..4])
}
