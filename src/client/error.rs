//! What can go wrong: [`ClientError`] for the client as a whole, [`RequestError`] for one
//! publish or ping, [`AckError`], [`ClientConfigError`]; and what a close code or an upgrade
//! refusal from the server stands for.

use std::io;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Error as WsError;

use crate::protocol::{
    CLOSE_PROTOCOL_VIOLATION, CLOSE_REPLACED, CLOSE_TRY_LATER, CLOSE_UNAUTHORIZED,
};

/// Longest wait a `retry_after_ms` may impose (a larger one is clamped).
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Why the client could not connect, or stopped for good ([`Client::recv`](super::Client::recv)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A setting is invalid (see [`ClientBuilder::build`](super::ClientBuilder::build)).
    #[error(transparent)]
    Config(#[from] ClientConfigError),
    /// The server refused the token (close code 4001). Permanent: a new token is needed.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The server says the client broke the protocol (close code 4003), or the server sent
    /// something other than `connected` to open the session. Permanent.
    #[error("protocol violation: {0}")]
    ProtocolViolation(String),
    /// A newer connection of the same user took over (close code 4002). Permanent: two
    /// clients of one user would otherwise take turns replacing each other.
    #[error("replaced by a newer connection of the same user")]
    Replaced,
    /// The server is overloaded and asks to come back later (close code 4100, or HTTP 503 /
    /// 429 to the upgrade). Only [`Client::connect`](super::Client::connect) returns it; reconnects wait and retry.
    #[error("the server asks to try again in {retry_after:?}")]
    TryLater {
        /// How long the server asked to wait.
        retry_after: Duration,
    },
    /// The server is shutting down (close code 1001 before `connected`).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The server answered the WebSocket upgrade with this HTTP status.
    #[error("the server refused the WebSocket upgrade with HTTP {status}")]
    Http {
        /// The status code.
        status: u16,
    },
    /// A frame from the server exceeded [`ClientBuilder::max_frame_bytes`](super::ClientBuilder::max_frame_bytes). Permanent: the
    /// server would send it again on every reconnect.
    #[error("a frame from the server exceeds the limit of {max} bytes")]
    FrameTooBig {
        /// The limit.
        max: usize,
    },
    /// Connecting failed at the TCP level.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The WebSocket connection failed (handshake, framing, or closed before `connected`).
    #[error("connection failed: {0}")]
    Connection(String),
    /// No `connected` frame within [`ClientBuilder::connect_timeout`](super::ClientBuilder::connect_timeout).
    #[error("no `connected` frame within {0:?}")]
    Timeout(Duration),
    /// Reconnecting failed this many times in a row (see
    /// [`ClientBuilder::max_reconnect_attempts`](super::ClientBuilder::max_reconnect_attempts)).
    #[error("gave up after {attempts} reconnect attempts; the last failed with: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// What the last attempt failed with.
        last: String,
    },
    /// The client is closed: [`Client::close`](super::Client::close) was called, or the terminal error was already
    /// returned by an earlier `recv`.
    #[error("the client is closed")]
    Closed,
}

impl ClientError {
    /// True if trying again cannot help (bad token, replaced, protocol, configuration).
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Config(_)
            | ClientError::Unauthorized(_)
            | ClientError::ProtocolViolation(_)
            | ClientError::Replaced
            | ClientError::FrameTooBig { .. }
            | ClientError::GaveUp { .. }
            | ClientError::Closed => true,
            // 408 and 429 are about timing; other 4xx (404 wrong path, 403 origin) are not.
            ClientError::Http { status } => {
                (400..500).contains(status) && !matches!(status, 408 | 429)
            }
            _ => false,
        }
    }

    /// How long the server asked to wait before the next attempt, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::TryLater { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    pub(super) fn from_ws(e: WsError, max_frame: usize) -> Self {
        match e {
            WsError::Io(e) => ClientError::Io(e),
            WsError::Capacity(_) => ClientError::FrameTooBig { max: max_frame },
            WsError::Http(response) => {
                let status = response.status().as_u16();
                if status == 503 || status == 429 {
                    let seconds = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                        .unwrap_or(1);
                    ClientError::TryLater {
                        retry_after: Duration::from_secs(seconds).min(MAX_RETRY_AFTER),
                    }
                } else {
                    ClientError::Http { status }
                }
            }
            other => ClientError::Connection(other.to_string()),
        }
    }

    /// The error a close frame received before `connected` stands for.
    pub(super) fn from_close(code: u16, reason: &str) -> Self {
        match code {
            CLOSE_UNAUTHORIZED => ClientError::Unauthorized(reason.to_owned()),
            CLOSE_REPLACED => ClientError::Replaced,
            CLOSE_PROTOCOL_VIOLATION => ClientError::ProtocolViolation(reason.to_owned()),
            CLOSE_TRY_LATER => ClientError::TryLater {
                retry_after: retry_after_of(reason),
            },
            1001 => ClientError::ShuttingDown,
            _ => ClientError::Connection(format!(
                "closed with code {code} before `connected`: {reason}"
            )),
        }
    }
}

/// A client setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client setting `{setting}`: {reason}")]
pub struct ClientConfigError {
    setting: &'static str,
    reason: String,
}

impl ClientConfigError {
    pub(super) fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }

    /// The setting at fault (`url`, `event_capacity`, ...).
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

/// Why a [`publish`](super::ClientHandle::publish) or [`ping`](super::ClientHandle::ping) has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The client is between connections; nothing was sent.
    #[error("not connected")]
    NotConnected,
    /// The connection ended after the request was sent and before the answer came: the
    /// outcome is unknown. Publish with an `id` to retry safely (the server drops duplicates).
    #[error("the connection was lost before the answer; the outcome is unknown")]
    ConnectionLost,
    /// The server answered with an `error` frame (an invalid publish).
    #[error("refused by the server: {code}: {message}")]
    Refused {
        /// The error's code.
        code: String,
        /// Its description.
        message: String,
    },
    /// No answer within [`ClientBuilder::request_timeout`](super::ClientBuilder::request_timeout); the outcome is unknown.
    #[error("no answer within the request timeout")]
    Timeout,
    /// The client is closed.
    #[error("the client is closed")]
    Closed,
}

/// Why [`Client::ack`](super::Client::ack) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The seq is beyond what this client returned from `recv` in the current epoch;
    /// acknowledging it would settle messages the application never saw.
    #[error("seq {seq} was not received (highest received: {received})")]
    NotReceived {
        /// The seq given.
        seq: u64,
        /// The highest seq `recv` returned in the current epoch.
        received: u64,
    },
}

/// The wait a 4100 close reason asks for ([`try_later_reason`](crate::protocol::try_later_reason)).
pub(super) fn retry_after_of(reason: &str) -> Duration {
    #[derive(serde::Deserialize)]
    struct TryLater {
        retry_after_ms: u64,
    }
    serde_json::from_str::<TryLater>(reason)
        .map(|t| Duration::from_millis(t.retry_after_ms).min(MAX_RETRY_AFTER))
        // A 4100 without a readable reason still means "not now".
        .unwrap_or(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_later_reasons_parse_with_a_fallback() {
        use crate::protocol::try_later_reason;
        assert_eq!(
            retry_after_of(&try_later_reason(Duration::from_millis(1500))),
            Duration::from_millis(1500)
        );
        assert_eq!(retry_after_of("busy"), Duration::from_secs(1));
        assert_eq!(
            retry_after_of(&try_later_reason(Duration::MAX)),
            MAX_RETRY_AFTER
        );
    }
}
