//! A Rust client for the tether server (wire protocol v1 over `ws://`): it connects,
//! reconnects by itself with backoff, resumes where the application left off, and
//! acknowledges what the application has processed.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use tether::client::{Client, Event};
//! use tether::server::{auth::issue_token, config::ServerConfig, Server};
//! use tether::{Message, UserId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A server in-process, on a port the OS picks.
//! let secret = "an example secret of at least 32 bytes";
//! let config = ServerConfig::parse_from(
//!     ["serve", "--listen", "127.0.0.1:0", "--jwt-secret", secret, "--api-key", "an example api key"],
//!     [("", ""); 0],
//! )?;
//! let server = Server::start(config).await?;
//! let alice = UserId::new("alice")?;
//! server.engine().send(&alice, Message::new(r#"{"text":"hello"}"#)).await?;
//!
//! let token = issue_token(secret, &alice, Some(Duration::from_secs(3600)), SystemTime::now())?;
//! let url = format!("ws://{}/ws", server.local_addr());
//! let mut client = Client::builder(url, token).connect().await?;
//!
//! let Event::Connected(info) = client.recv().await? else { unreachable!("connected first") };
//! assert_eq!(info.user, "alice");
//! let Event::Message(m) = client.recv().await? else { unreachable!("then the message") };
//! assert_eq!(m.data_str(), r#"{"text":"hello"}"#);
//! // Closing acknowledges the message returned by the last `recv`: its handler is done.
//! client.close().await;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Delivery, acknowledgement and duplicates
//!
//! Each message has a per-user `seq`. The client keeps one number, *processed*: the highest
//! seq the application has acknowledged, in the mailbox's current epoch. It resumes every new
//! connection from that number, so the server sends again exactly the messages with a higher
//! seq that are still unacknowledged. It also acknowledges it to the server, cumulatively and
//! in batches: as soon as 64 messages are due, as soon as the application has processed
//! everything the connection delivered and nothing more is arriving (so even a server window
//! smaller than 64 never stalls), and otherwise within 10 ms. The batching only delays when
//! the server frees its copies; what counts for redelivery is *processed*, kept here.
//!
//! - **Auto-ack** (the default): a message is processed when the application calls
//!   [`recv`](Client::recv) (or [`close`](Client::close)) again after receiving it, that is,
//!   when its handler has returned. A handler that panics or a client that is dropped leaves
//!   its last message unacknowledged, and it comes again on the next connection.
//! - **Manual** ([`ClientBuilder::auto_ack`]`(false)`): a message is processed when the
//!   application calls [`ack`](Client::ack) with its seq (or a higher one).
//!
//! `recv` never returns a message whose seq is at or below *processed*. Copies of messages
//! that a dead connection delivered but the application had not yet taken from the client
//! are dropped once a newer connection to the same mailbox epoch exists, since the server
//! sends those again on the new connection.
//!
//! With auto-ack the application sees every message exactly once across the reconnects of
//! one `Client`, including when a connection dies while a handler runs: the server sends
//! that message again on the new connection, but the next `recv` first marks the previous
//! message processed and only then checks the copy, which is no longer above *processed* and
//! is dropped. A message comes twice only across clients: when a handler panics or the
//! `Client` is dropped before its next `recv`, the message is not processed, and a client
//! that connects afterwards (resuming from [`resume_point`](Client::resume_point) or fresh)
//! receives it again. With manual acks, a message received but not yet passed to
//! [`ack`](Client::ack) when its connection dies comes again on the new connection. Either
//! way delivery is at-least-once, and nothing is lost while the mailbox exists.
//!
//! If the mailbox's epoch changes (the user stayed away past the server's retention and the
//! mailbox was created afresh), seqs start again from 1 and *processed* starts again from 0;
//! the [`Event::Connected`] of that connection says `recovered: false` and lists what was lost.
//!
//! # Reconnection
//!
//! On any disconnect the client emits [`Event::Disconnected`] and reconnects with
//! [`Backoff`] (full jitter; default from 100 ms doubling to 30 s, unlimited attempts), except:
//!
//! | close code | meaning | what the client does |
//! |---|---|---|
//! | 4001 | unauthorized | stops: `recv` returns [`ClientError::Unauthorized`] |
//! | 4002 | a newer connection of the same user took over | stops: [`ClientError::Replaced`] (it does not fight back) |
//! | 4003 | protocol violation | stops: [`ClientError::ProtocolViolation`] |
//! | 4100 | try later | waits at least the close reason's `retry_after_ms`, then reconnects |
//! | 1001 | server shutting down (or idle timeout) | reconnects with backoff |
//!
//! The backoff starts over once a connection has stayed up for 2 s, so a server that accepts
//! and drops at once cannot make the client spin. With
//! [`max_reconnect_attempts`](ClientBuilder::max_reconnect_attempts) the client gives up after
//! that many consecutive failed attempts ([`ClientError::GaveUp`]).
//!
//! # Bounds
//!
//! Everything is bounded: events wait in a channel of
//! [`event_capacity`](ClientBuilder::event_capacity); when it is full the client stops reading
//! the socket, so the server's delivery window (not this client) holds the rest. Outstanding
//! publishes and pings are capped by [`max_pending_requests`](ClientBuilder::max_pending_requests);
//! callers beyond that wait. Frames larger than [`max_frame_bytes`](ClientBuilder::max_frame_bytes)
//! end the client with [`ClientError::FrameTooBig`].

#![forbid(unsafe_code)]

mod frame;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use crate::protocol::fingerprint;
use crate::protocol::{
    CLOSE_PROTOCOL_VIOLATION, CLOSE_REPLACED, CLOSE_TRY_LATER, CLOSE_UNAUTHORIZED,
};
use crate::{Backoff, Epoch, Priority, ResumePoint};

pub use frame::{
    decode_publish_outcome, decode_server_frame, ConnectedInfo, DecodeError, Delivered, ErrorFrame,
    PublishOutcome, ServerFrame, StreamAborted, StreamPosition,
};

type Socket = WebSocketStream<TcpStream>;

/// A connection that stayed up this long was a success: the backoff starts over.
const STABLE_AFTER: Duration = Duration::from_secs(2);
/// Frames queued for the socket beyond which the client stops reading and taking requests
/// until the socket takes them.
const MAX_OUT: usize = 64;
/// Processed-but-unacknowledged messages that make an ack go out at once. Acking every
/// message costs a frame each way per message; batching them measured +50 % throughput for
/// one client and +24 % for 100 (tether-load, 2 cores).
const ACK_BATCH: u64 = 64;
/// Longest an ack is held back when neither rule below sends it sooner.
const ACK_DELAY: Duration = Duration::from_millis(10);
/// How long [`Client::close`] waits for the goodbye (final ack, close handshake).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait a `retry_after_ms` may impose (a larger one is clamped).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why the client could not connect, or stopped for good ([`Client::recv`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A setting is invalid (see [`ClientBuilder::build`]).
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
    /// 429 to the upgrade). Only [`Client::connect`] returns it; reconnects wait and retry.
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
    /// A frame from the server exceeded [`ClientBuilder::max_frame_bytes`]. Permanent: the
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
    /// No `connected` frame within [`ClientBuilder::connect_timeout`].
    #[error("no `connected` frame within {0:?}")]
    Timeout(Duration),
    /// Reconnecting failed this many times in a row (see
    /// [`ClientBuilder::max_reconnect_attempts`]).
    #[error("gave up after {attempts} reconnect attempts; the last failed with: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// What the last attempt failed with.
        last: String,
    },
    /// The client is closed: [`Client::close`] was called, or the terminal error was already
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

    fn from_ws(e: WsError, max_frame: usize) -> Self {
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
    fn from_close(code: u16, reason: &str) -> Self {
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
    fn new(setting: &'static str, reason: impl Into<String>) -> Self {
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

/// Why a [`publish`](ClientHandle::publish) or [`ping`](ClientHandle::ping) has no answer.
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
    /// No answer within [`ClientBuilder::request_timeout`]; the outcome is unknown.
    #[error("no answer within the request timeout")]
    Timeout,
    /// The client is closed.
    #[error("the client is closed")]
    Closed,
}

/// Why [`Client::ack`] refused.
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

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// A validated client configuration; build one with [`Client::builder`].
///
/// Its `Debug` output shows a fingerprint of the token (the first 8 hex digits of its
/// SHA-256), never the token.
#[derive(Clone)]
pub struct ClientConfig {
    url: String,
    host: String,
    port: u16,
    token: String,
    backoff: Backoff,
    auto_ack: bool,
    connect_timeout: Duration,
    max_frame_bytes: usize,
    event_capacity: usize,
    keepalive: Duration,
    idle_timeout: Duration,
    request_timeout: Duration,
    max_pending_requests: usize,
    resume: Option<ResumePoint>,
}

impl ClientConfig {
    /// The WebSocket URL the client dials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The reconnect schedule of one client: its own random seed unless the application
    /// fixed one, so that clients built from one configuration spread their retries.
    fn task_backoff(&self) -> Backoff {
        self.backoff.reseeded()
    }

    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_frame_size(Some(self.max_frame_bytes))
            .max_message_size(Some(self.max_frame_bytes))
    }
}

/// Settings of a [`Client`], each with its default.
///
/// Its `Debug` output shows a fingerprint of the token, never the token.
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    token: String,
    backoff: Backoff,
    max_attempts: Option<u32>,
    auto_ack: bool,
    connect_timeout: Duration,
    max_frame_bytes: usize,
    event_capacity: usize,
    keepalive: Duration,
    idle_timeout: Duration,
    request_timeout: Duration,
    max_pending_requests: usize,
    resume: Option<ResumePoint>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("token (sha256 prefix)", &fingerprint(&self.token))
            .field("backoff", &self.backoff)
            .field("auto_ack", &self.auto_ack)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("event_capacity", &self.event_capacity)
            .field("keepalive", &self.keepalive)
            .field("idle_timeout", &self.idle_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_pending_requests", &self.max_pending_requests)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("token (sha256 prefix)", &fingerprint(&self.token))
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .field("auto_ack", &self.auto_ack)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("event_capacity", &self.event_capacity)
            .field("keepalive", &self.keepalive)
            .field("idle_timeout", &self.idle_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_pending_requests", &self.max_pending_requests)
            .field("resume", &self.resume)
            .finish()
    }
}

impl ClientBuilder {
    fn new(url: String, token: String) -> Self {
        Self {
            url,
            token,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            max_attempts: None,
            auto_ack: true,
            connect_timeout: Duration::from_secs(10),
            max_frame_bytes: 4 << 20,
            event_capacity: 1024,
            keepalive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            request_timeout: Duration::from_secs(10),
            max_pending_requests: 256,
            resume: None,
        }
    }

    /// The reconnect schedule. Default: full jitter from 100 ms doubling to 30 s, no attempt
    /// limit. A `Backoff` with its own attempt limit ends the client when it runs out. Each
    /// client connected from the configuration draws its own random seed, so many clients
    /// that lost the server together do not retry in lockstep; a seed fixed with
    /// [`Backoff::with_seed`] is kept (every client then follows the same schedule).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Gives up after `n` consecutive failed reconnect attempts (`recv` then returns
    /// [`ClientError::GaveUp`]). Default: unlimited, since a client of a message service is
    /// meant to come back whenever the server does; each wait is capped by the backoff.
    pub fn max_reconnect_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Acknowledge each message when `recv` is called again after it (its handler returned).
    /// Default true. With false, call [`Client::ack`].
    pub fn auto_ack(mut self, on: bool) -> Self {
        self.auto_ack = on;
        self
    }

    /// Time for TCP connect, WebSocket handshake and the `connected` frame. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Largest frame accepted from the server. Default 4 MiB (the engine's default payload
    /// limit is 1 MiB). At least 1 KiB.
    pub fn max_frame_bytes(mut self, n: usize) -> Self {
        self.max_frame_bytes = n;
        self
    }

    /// Events buffered between the connection and `recv`. Default 1024, at least 1.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// Send a WebSocket ping when nothing was sent for this long, so the server's idle
    /// timeout never closes a connection whose application is merely slow. Default 15 s.
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.keepalive = interval;
        self
    }

    /// Treat the connection as dead (and reconnect) after this long without any frame from
    /// the server while the client is reading. Default 45 s; must exceed `keepalive`.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long `publish` and `ping` wait for their answer. Default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Publishes and pings awaiting an answer at once. Default 256, at least 1.
    pub fn max_pending_requests(mut self, n: usize) -> Self {
        self.max_pending_requests = n;
        self
    }

    /// Resume the first connection from a point saved earlier ([`Client::resume_point`]),
    /// e.g. across a restart of the application. Default: connect fresh, which makes the
    /// server send every unacknowledged message again.
    pub fn resume_from(mut self, point: ResumePoint) -> Self {
        self.resume = Some(point);
        self
    }

    /// Checks the settings.
    ///
    /// The URL must be `ws://host[:port][/path]` (no TLS in this build); an empty path means
    /// `/ws`.
    ///
    /// ```
    /// use tether::client::Client;
    ///
    /// let config = Client::builder("ws://127.0.0.1:7700", "token").build().unwrap();
    /// assert_eq!(config.url(), "ws://127.0.0.1:7700/ws");
    /// let err = Client::builder("wss://example.com/ws", "token").build().unwrap_err();
    /// assert_eq!(err.setting(), "url");
    /// ```
    pub fn build(self) -> Result<ClientConfig, ClientConfigError> {
        let (url, host, port) = parse_url(&self.url)?;
        let positive = |setting, d: Duration| {
            if d.is_zero() {
                Err(ClientConfigError::new(setting, "must be greater than 0"))
            } else {
                Ok(())
            }
        };
        positive("connect_timeout", self.connect_timeout)?;
        positive("keepalive", self.keepalive)?;
        positive("request_timeout", self.request_timeout)?;
        if self.idle_timeout <= self.keepalive {
            return Err(ClientConfigError::new(
                "idle_timeout",
                "must be greater than keepalive",
            ));
        }
        if self.max_frame_bytes < 1024 {
            return Err(ClientConfigError::new(
                "max_frame_bytes",
                "must be at least 1024",
            ));
        }
        if self.event_capacity == 0 {
            return Err(ClientConfigError::new(
                "event_capacity",
                "must be at least 1",
            ));
        }
        if self.max_pending_requests == 0 {
            return Err(ClientConfigError::new(
                "max_pending_requests",
                "must be at least 1",
            ));
        }
        let backoff = match self.max_attempts {
            Some(n) => self.backoff.with_max_attempts(n),
            None => self.backoff,
        };
        Ok(ClientConfig {
            url,
            host,
            port,
            token: self.token,
            backoff,
            auto_ack: self.auto_ack,
            connect_timeout: self.connect_timeout,
            max_frame_bytes: self.max_frame_bytes,
            event_capacity: self.event_capacity,
            keepalive: self.keepalive,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout,
            max_pending_requests: self.max_pending_requests,
            resume: self.resume,
        })
    }

    /// [`build`](Self::build), then [`Client::connect`].
    pub async fn connect(self) -> Result<Client, ClientError> {
        Client::connect(self.build()?).await
    }
}

/// `ws://host[:port][/path]` to (normalised URL, host to dial, port).
fn parse_url(text: &str) -> Result<(String, String, u16), ClientConfigError> {
    let bad = |reason: &str| ClientConfigError::new("url", format!("{text:?}: {reason}"));
    let uri: Uri = text.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => return Err(bad("wss:// needs TLS, which this client does not include")),
        _ => return Err(bad("expected ws://host[:port][/path]")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "credentials in the URL are not supported; use the token",
        ));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = authority.port_u16().unwrap_or(80);
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => "/ws",
        Some(p) => p,
    };
    let dial_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((format!("ws://{authority}{path}"), dial_host, port))
}

fn retry_after_of(reason: &str) -> Duration {
    #[derive(serde::Deserialize)]
    struct TryLater {
        retry_after_ms: u64,
    }
    serde_json::from_str::<TryLater>(reason)
        .map(|t| Duration::from_millis(t.retry_after_ms).min(MAX_RETRY_AFTER))
        // A 4100 without a readable reason still means "not now".
        .unwrap_or(Duration::from_secs(1))
}

// ---------------------------------------------------------------------------------------------
// Events and publishes
// ---------------------------------------------------------------------------------------------

/// What [`Client::recv`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A connection opened (the first one, and every reconnect).
    Connected(ConnectedInfo),
    /// A message.
    Message(Delivered),
    /// A stream ended without its remaining parts; acknowledged like a message.
    StreamAborted(StreamAborted),
    /// The connection ended. Unless `recv` next returns an error, the client is reconnecting.
    Disconnected(Disconnect),
    /// The server answered something with an `error` frame that no request was waiting for.
    ServerError(ErrorFrame),
}

impl Event {
    /// The seq of a message or an abort marker.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Event::Message(m) => Some(m.seq()),
            Event::StreamAborted(a) => Some(a.seq),
            _ => None,
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Disconnect {
    /// The close code the server sent, if it sent a close frame.
    pub code: Option<u16>,
    /// The close reason, or what went wrong.
    pub reason: String,
}

/// A message to publish over the WebSocket (the server must allow client publishing).
///
/// ```
/// use std::time::Duration;
/// use tether::client::Publish;
/// use tether::Priority;
///
/// let p = Publish::json("bob", &serde_json::json!({"text": "hi"}))?
///     .priority(Priority::High)
///     .ttl(Duration::from_secs(60))
///     .id("greeting-1");
/// let raw = Publish::raw("bob", r#"{"n": 1.50}"#)?; // sent byte for byte
/// assert!(Publish::raw("bob", "{nope").is_err());
/// # let _ = (p, raw);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Publish {
    to: String,
    data: Box<RawValue>,
    priority: Option<Priority>,
    ttl_ms: Option<u64>,
    id: Option<String>,
    stream: Option<StreamPosition>,
}

impl Publish {
    /// A message to `to` whose payload is `data` serialised as JSON.
    pub fn json<T: Serialize + ?Sized>(
        to: impl Into<String>,
        data: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::with_data(
            to.into(),
            serde_json::value::to_raw_value(data)?,
        ))
    }

    /// A message to `to` whose payload is the JSON text `json`, kept exactly as written.
    /// Fails if `json` is not one JSON value.
    pub fn raw(to: impl Into<String>, json: impl Into<String>) -> Result<Self, serde_json::Error> {
        let json: String = json.into();
        let raw = RawValue::from_string(json.trim().to_owned())?;
        Ok(Self::with_data(to.into(), raw))
    }

    fn with_data(to: String, data: Box<RawValue>) -> Self {
        Self {
            to,
            data,
            priority: None,
            ttl_ms: None,
            id: None,
            stream: None,
        }
    }

    /// The priority. Default normal.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// How long the message may wait to be acknowledged (whole milliseconds, at least 1).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.ttl_ms = Some(ms.max(1));
        self
    }

    /// An idempotency key: the server drops a second publish with the same id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Makes this part `part` of stream `id`.
    pub fn stream(mut self, id: impl Into<String>, part: u32, last: bool) -> Self {
        self.stream = Some(StreamPosition {
            id: id.into(),
            part,
            last,
        });
        self
    }

    /// The publish fields as JSON: a `publish` frame with `type` and `ref` when `frame` is
    /// true, else the body of `POST /api/publish`.
    pub(crate) fn encode(&self, frame: bool, reference: Option<&str>) -> String {
        let fields = frame::PublishFields {
            kind: frame.then_some("publish"),
            to: &self.to,
            data: &self.data,
            priority: self.priority.map(Priority::as_str),
            ttl_ms: self.ttl_ms,
            id: self.id.as_deref(),
            reference,
            stream: self.stream.as_ref(),
        };
        // Strings, integers and already-valid raw JSON: serialising cannot fail.
        serde_json::to_string(&fields).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// What the application and the connection task share.
struct Shared {
    state: Mutex<AckState>,
    /// Wakes the connection task: an ack, a close or a reconnect request.
    wake: Notify,
    close: AtomicBool,
    reconnect: AtomicBool,
    next_ref: AtomicU64,
}

struct AckState {
    /// The epoch the application is in: that of the last `Connected` it received.
    epoch: Option<Epoch>,
    /// The highest seq the application processed in `epoch`.
    processed: u64,
    /// The newest connection the task has: (generation, epoch).
    latest: Option<(u64, Epoch)>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, AckState> {
        // Nothing panics while holding the lock; recovering keeps that true if it ever did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One item from the connection task to the application.
struct Envelope {
    /// The connection it came from, and that connection's epoch.
    generation: u64,
    epoch: Epoch,
    item: Result<Event, ClientError>,
}

enum Command {
    Publish {
        frame: String,
        reference: String,
        reply: oneshot::Sender<Result<PublishOutcome, RequestError>>,
    },
    Ping {
        reply: oneshot::Sender<Result<Duration, RequestError>>,
    },
}

/// A connected client. See the [module docs](self) for the delivery rules.
///
/// Drop it or call [`close`](Self::close) to disconnect; dropping does not acknowledge the
/// message the last `recv` returned.
pub struct Client {
    events: mpsc::Receiver<Envelope>,
    handle: ClientHandle,
    auto_ack: bool,
    /// Auto-ack: the seq the last `recv` returned, processed once `recv` is called again.
    to_settle: Option<u64>,
    /// Highest seq returned by `recv` in the application's epoch.
    received: u64,
    task: Option<JoinHandle<()>>,
}

/// A cloneable handle to publish, ping and force a reconnect while another task owns the
/// [`Client`] and calls `recv`.
#[derive(Clone)]
pub struct ClientHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    request_timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("auto_ack", &self.auto_ack)
            .field("received", &self.received)
            .field("resume_point", &self.resume_point())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHandle").finish_non_exhaustive()
    }
}

impl Client {
    /// Settings for a client of `url` (`ws://host:port/ws`) authenticating with `token`.
    pub fn builder(url: impl Into<String>, token: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url.into(), token.into())
    }

    /// Connects once (no retry: a wrong URL or token shows at once) and starts the
    /// connection task on the current tokio runtime. The first [`recv`](Self::recv) returns
    /// the [`Event::Connected`] of this connection.
    ///
    /// Errors: everything in [`ClientError`] except `GaveUp` and `Closed`.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let (socket, info) = dial(&config, config.resume).await?;
        let shared = Arc::new(Shared {
            state: Mutex::new(AckState {
                epoch: config.resume.map(|r| r.epoch),
                processed: config.resume.map_or(0, |r| r.last_seq),
                latest: None,
            }),
            wake: Notify::new(),
            close: AtomicBool::new(false),
            reconnect: AtomicBool::new(false),
            next_ref: AtomicU64::new(1),
        });
        let (event_tx, event_rx) = mpsc::channel(config.event_capacity);
        let (command_tx, command_rx) = mpsc::channel(config.max_pending_requests);
        let handle = ClientHandle {
            commands: command_tx,
            shared: shared.clone(),
            request_timeout: config.request_timeout,
        };
        let auto_ack = config.auto_ack;
        let task = Task {
            backoff: config.task_backoff(),
            resume: config.resume,
            config,
            shared,
            events: event_tx,
            commands: command_rx,
            generation: 0,
        };
        let task = tokio::spawn(task.run(socket, info));
        Ok(Client {
            events: event_rx,
            handle,
            auto_ack,
            to_settle: None,
            received: 0,
            task: Some(task),
        })
    }

    /// The next event. With auto-ack, calling it acknowledges the message the previous call
    /// returned. See the [module docs](self) for which messages it returns.
    ///
    /// Returns an error once, when the client stops for good (`Unauthorized`, `Replaced`,
    /// `ProtocolViolation`, `FrameTooBig`, `GaveUp`), and [`ClientError::Closed`] after that.
    ///
    /// Cancel safe: if the future is dropped before it completes, no event is lost.
    pub async fn recv(&mut self) -> Result<Event, ClientError> {
        if let Some(seq) = self.to_settle.take() {
            self.settle(seq);
        }
        loop {
            let Some(envelope) = self.events.recv().await else {
                return Err(ClientError::Closed);
            };
            let event = envelope.item?;
            match event.seq() {
                Some(seq) => {
                    if !self.fresh(envelope.generation, envelope.epoch, seq) {
                        continue;
                    }
                    self.received = self.received.max(seq);
                    if self.auto_ack {
                        self.to_settle = Some(seq);
                    }
                    return Ok(event);
                }
                None => {
                    if let Event::Connected(info) = &event {
                        let mut state = self.handle.shared.state();
                        if state.epoch != Some(info.epoch) {
                            state.epoch = Some(info.epoch);
                            state.processed = 0;
                            self.received = 0;
                        }
                    }
                    return Ok(event);
                }
            }
        }
    }

    /// Whether a delivery should reach the application (see the module docs).
    fn fresh(&self, generation: u64, epoch: Epoch, seq: u64) -> bool {
        let state = self.handle.shared.state();
        let superseded = state
            .latest
            .is_some_and(|(g, e)| generation < g && e == epoch);
        !superseded && seq > state.processed
    }

    /// Marks everything up to `seq` processed and lets the task acknowledge it.
    fn settle(&self, seq: u64) {
        let mut state = self.handle.shared.state();
        if seq > state.processed {
            state.processed = seq;
            drop(state);
            self.handle.shared.wake.notify_one();
        }
    }

    /// Acknowledges every message up to `seq` (cumulative): they are processed and will not
    /// be returned again. Needed with auto-ack off; with it on, acknowledges early.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use tether::client::{AckError, Client, Event};
    /// use tether::server::{auth::issue_token, config::ServerConfig, Server};
    /// use tether::{Message, UserId};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let secret = "an example secret of at least 32 bytes";
    /// let config = ServerConfig::parse_from(
    ///     ["serve", "--listen", "127.0.0.1:0", "--jwt-secret", secret, "--api-key", "an example api key"],
    ///     [("", ""); 0],
    /// )?;
    /// let server = Server::start(config).await?;
    /// let bob = UserId::new("bob")?;
    /// server.engine().send(&bob, Message::new("1")).await?;
    /// server.engine().send(&bob, Message::new("2")).await?;
    ///
    /// let token = issue_token(secret, &bob, None, SystemTime::now())?;
    /// let mut client = Client::builder(format!("ws://{}/ws", server.local_addr()), token)
    ///     .auto_ack(false)
    ///     .connect()
    ///     .await?;
    /// let Event::Connected(_) = client.recv().await? else { unreachable!() };
    /// let Event::Message(first) = client.recv().await? else { unreachable!() };
    /// client.ack(first.seq())?; // processed: it will not come again
    /// assert_eq!(client.ack(first.seq() + 5), Err(AckError::NotReceived { seq: 6, received: 1 }));
    ///
    /// // The connection dies before "2" is acknowledged: it comes again, "1" does not.
    /// let Event::Message(second) = client.recv().await? else { unreachable!() };
    /// client.reconnect();
    /// let Event::Disconnected(_) = client.recv().await? else { unreachable!() };
    /// let Event::Connected(info) = client.recv().await? else { unreachable!() };
    /// assert!(info.recovered);
    /// let Event::Message(again) = client.recv().await? else { unreachable!() };
    /// assert_eq!((again.seq(), again.data_str()), (second.seq(), "2"));
    /// client.ack(again.seq())?;
    /// client.close().await;
    /// server.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn ack(&mut self, seq: u64) -> Result<(), AckError> {
        if seq > self.received {
            return Err(AckError::NotReceived {
                seq,
                received: self.received,
            });
        }
        if self.to_settle.is_some_and(|s| s <= seq) {
            self.to_settle = None;
        }
        self.settle(seq);
        Ok(())
    }

    /// Where a later client may resume from ([`ClientBuilder::resume_from`]): the epoch and
    /// the highest processed seq. `None` before the first `Connected` event was received.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        let state = self.handle.shared.state();
        state.epoch.map(|epoch| ResumePoint {
            epoch,
            last_seq: state.processed,
        })
    }

    /// A handle for other tasks.
    pub fn handle(&self) -> ClientHandle {
        self.handle.clone()
    }

    /// See [`ClientHandle::publish`].
    pub async fn publish(&self, publish: Publish) -> Result<PublishOutcome, RequestError> {
        self.handle.publish(publish).await
    }

    /// See [`ClientHandle::ping`].
    pub async fn ping(&self) -> Result<Duration, RequestError> {
        self.handle.ping().await
    }

    /// See [`ClientHandle::reconnect`].
    pub fn reconnect(&self) {
        self.handle.reconnect();
    }

    /// Disconnects cleanly: acknowledges what was processed (with auto-ack, the message the
    /// last `recv` returned too), closes the WebSocket with 1000 and waits for the connection
    /// task to end (at most about 2 s).
    pub async fn close(mut self) {
        if let Some(seq) = self.to_settle.take() {
            self.settle(seq);
        }
        self.handle.shared.close.store(true, Ordering::Release);
        self.handle.shared.wake.notify_one();
        // Unblocks a task waiting for room in the event channel.
        self.events.close();
        while self.events.try_recv().is_ok() {}
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(1), task).await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Release: the task reads it with Acquire after the wake-up.
        self.handle.shared.close.store(true, Ordering::Release);
        self.handle.shared.wake.notify_one();
    }
}

impl ClientHandle {
    /// Publishes a message (the server must allow client publishing; otherwise the outcome is
    /// `Rejected { reason: "publish_not_allowed" }`) and waits for its outcome.
    ///
    /// Fails fast with [`RequestError::NotConnected`] between connections; waits while
    /// [`max_pending_requests`](ClientBuilder::max_pending_requests) are outstanding.
    pub async fn publish(&self, publish: Publish) -> Result<PublishOutcome, RequestError> {
        let n = self.shared.next_ref.fetch_add(1, Ordering::Relaxed);
        let reference = format!("{n:x}");
        let frame = publish.encode(true, Some(&reference));
        let (reply, answer) = oneshot::channel();
        self.request(
            Command::Publish {
                frame,
                reference,
                reply,
            },
            answer,
        )
        .await
    }

    /// Sends a `ping` and returns the round-trip time when the `pong` arrives.
    pub async fn ping(&self) -> Result<Duration, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::Ping { reply }, answer).await
    }

    async fn request<T>(
        &self,
        command: Command,
        answer: oneshot::Receiver<Result<T, RequestError>>,
    ) -> Result<T, RequestError> {
        if self.shared.close.load(Ordering::Acquire) {
            return Err(RequestError::Closed);
        }
        let exchange = async {
            self.commands
                .send(command)
                .await
                .map_err(|_| RequestError::Closed)?;
            answer.await.map_err(|_| RequestError::Closed)?
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or(Err(RequestError::Timeout))
    }

    /// Drops the current connection abruptly, as a network failure would (no close frame),
    /// and reconnects at once with a resume point. For tests, load generators, and
    /// applications that know the network changed.
    pub fn reconnect(&self) {
        self.shared.reconnect.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------------

/// One attempt: TCP, WebSocket handshake, `connect` frame, `connected` frame.
async fn dial(
    config: &ClientConfig,
    resume: Option<ResumePoint>,
) -> Result<(Socket, ConnectedInfo), ClientError> {
    let max = config.max_frame_bytes;
    let attempt = async {
        let tcp = TcpStream::connect((config.host.as_str(), config.port)).await?;
        // Acks and pings are tiny and latency matters more than packet count.
        tcp.set_nodelay(true)?;
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            config.url.as_str(),
            tcp,
            Some(config.ws_config()),
        )
        .await
        .map_err(|e| ClientError::from_ws(e, max))?;
        ws.send(WsMessage::text(frame::encode_connect(
            &config.token,
            resume,
        )))
        .await
        .map_err(|e| ClientError::from_ws(e, max))?;
        // Control frames may come first; the loop ends with the first data or close frame,
        // and the connect timeout bounds it in time.
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => {
                    return match decode_server_frame(&Bytes::from(text)) {
                        Ok(ServerFrame::Connected(info)) => Ok((ws, info)),
                        Ok(other) => Err(ClientError::ProtocolViolation(format!(
                            "expected `connected` first, got {other:?}"
                        ))),
                        Err(e) => Err(ClientError::ProtocolViolation(e.to_string())),
                    };
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    let (code, reason) = close_parts(frame.as_ref());
                    // Let tungstenite send the close reply before the socket goes.
                    let _ = tokio::time::timeout(Duration::from_millis(200), ws.flush()).await;
                    return Err(ClientError::from_close(code, &reason));
                }
                Some(Ok(WsMessage::Binary(_))) => {
                    return Err(ClientError::ProtocolViolation(
                        "binary frame from the server".into(),
                    ))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ClientError::from_ws(e, max)),
                None => return Err(ClientError::Connection("closed before `connected`".into())),
            }
        }
    };
    tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .unwrap_or(Err(ClientError::Timeout(config.connect_timeout)))
}

fn close_parts(frame: Option<&CloseFrame>) -> (u16, String) {
    match frame {
        Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
        // RFC 6455: 1005 "no status received".
        None => (1005, String::new()),
    }
}

// ---------------------------------------------------------------------------------------------
// The connection task
// ---------------------------------------------------------------------------------------------

/// How one connection ended.
enum End {
    /// The server sent a close frame.
    Closed { code: u16, reason: String },
    /// The connection broke: I/O error, EOF, silence.
    Broken(String),
    /// [`ClientHandle::reconnect`].
    Requested,
    /// The application closed or dropped the client.
    Shutdown,
    /// Cannot go on at all.
    Fatal(ClientError),
}

/// What to do after a connection ended.
enum Next {
    /// Stop with this error.
    Stop(ClientError),
    /// Reconnect, waiting at least this long (zero: at once, no backoff).
    Reconnect { at_least: Duration, backoff: bool },
}

impl End {
    fn disconnect(&self) -> Option<Disconnect> {
        match self {
            End::Closed { code, reason } => Some(Disconnect {
                code: Some(*code),
                reason: reason.clone(),
            }),
            End::Broken(reason) => Some(Disconnect {
                code: None,
                reason: reason.clone(),
            }),
            End::Requested => Some(Disconnect {
                code: None,
                reason: "reconnect requested".into(),
            }),
            End::Fatal(e) => Some(Disconnect {
                code: None,
                reason: e.to_string(),
            }),
            End::Shutdown => None,
        }
    }

    fn next(self) -> Next {
        match self {
            End::Closed { code, reason } => match code {
                CLOSE_UNAUTHORIZED | CLOSE_REPLACED | CLOSE_PROTOCOL_VIOLATION => {
                    Next::Stop(ClientError::from_close(code, &reason))
                }
                CLOSE_TRY_LATER => Next::Reconnect {
                    at_least: retry_after_of(&reason),
                    backoff: true,
                },
                _ => Next::Reconnect {
                    at_least: Duration::ZERO,
                    backoff: true,
                },
            },
            End::Broken(_) => Next::Reconnect {
                at_least: Duration::ZERO,
                backoff: true,
            },
            End::Requested => Next::Reconnect {
                at_least: Duration::ZERO,
                backoff: false,
            },
            End::Fatal(e) => Next::Stop(e),
            End::Shutdown => Next::Stop(ClientError::Closed),
        }
    }
}

/// One live connection's state.
struct Conn {
    sink: SplitSink<Socket, WsMessage>,
    stream: SplitStream<Socket>,
    generation: u64,
    epoch: Epoch,
    /// Highest seq this connection delivered: acks above it would be refused by the server.
    max_received: u64,
    /// Highest seq acknowledged on this connection (or settled by its resume point).
    acked: u64,
    /// Frames accepted for writing, in order.
    out: VecDeque<WsMessage>,
    publishes: HashMap<String, oneshot::Sender<Result<PublishOutcome, RequestError>>>,
    /// Pings in the order sent: the server answers them in order.
    pings: VecDeque<(Instant, oneshot::Sender<Result<Duration, RequestError>>)>,
    /// An event waiting for room in the channel; while it waits, the socket is not read.
    pending: Option<Envelope>,
    last_inbound: Instant,
    last_outbound: Instant,
}

impl Conn {
    fn outstanding(&self) -> usize {
        self.publishes.len() + self.pings.len()
    }

    fn fail_requests(&mut self, error: RequestError) {
        for (_, reply) in self.publishes.drain() {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, reply) in self.pings.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
    }

    fn envelope(&self, item: Result<Event, ClientError>) -> Envelope {
        Envelope {
            generation: self.generation,
            epoch: self.epoch,
            item,
        }
    }
}

struct Task {
    config: ClientConfig,
    shared: Arc<Shared>,
    events: mpsc::Sender<Envelope>,
    commands: mpsc::Receiver<Command>,
    backoff: Backoff,
    generation: u64,
    /// The resume point the current connection was opened with.
    resume: Option<ResumePoint>,
}

impl Task {
    async fn run(mut self, mut socket: Socket, mut info: ConnectedInfo) {
        loop {
            let started = Instant::now();
            let mut conn = self.open(socket, &info);
            // Through `pending`, so that a slow application does not stop the connection
            // from being served (keepalives, acks) while this waits for room.
            conn.pending = Some(conn.envelope(Ok(Event::Connected(info))));
            let end = self.serve(&mut conn).await;
            conn.fail_requests(RequestError::ConnectionLost);
            let Conn { pending, .. } = conn;
            // What the dead connection delivered still goes out in order, before the
            // disconnect; `recv` drops it if a newer connection will send it again.
            if let Some(envelope) = pending {
                if self.events.send(envelope).await.is_err() {
                    return;
                }
            }
            let epoch = info_epoch(&self.shared);
            if let Some(disconnect) = end.disconnect() {
                let envelope = Envelope {
                    generation: self.generation,
                    epoch,
                    item: Ok(Event::Disconnected(disconnect)),
                };
                if self.events.send(envelope).await.is_err() {
                    return;
                }
            }
            if started.elapsed() >= STABLE_AFTER {
                self.backoff.reset();
            }
            let (at_least, use_backoff) = match end.next() {
                Next::Stop(ClientError::Closed) => return,
                Next::Stop(error) => {
                    self.stop(epoch, error).await;
                    return;
                }
                Next::Reconnect { at_least, backoff } => (at_least, backoff),
            };
            match self.reconnect(at_least, use_backoff).await {
                Ok((s, i)) => (socket, info) = (s, i),
                Err(ClientError::Closed) => return,
                Err(error) => {
                    self.stop(epoch, error).await;
                    return;
                }
            }
        }
    }

    async fn stop(&self, epoch: Epoch, error: ClientError) {
        let envelope = Envelope {
            generation: self.generation,
            epoch,
            item: Err(error),
        };
        let _ = self.events.send(envelope).await;
    }

    /// Sets up the state of a new connection and makes it the newest one.
    fn open(&mut self, socket: Socket, info: &ConnectedInfo) -> Conn {
        self.generation += 1;
        let resumed = self
            .resume
            .filter(|r| info.recovered && r.epoch == info.epoch);
        self.shared.state().latest = Some((self.generation, info.epoch));
        let (sink, stream) = socket.split();
        let now = Instant::now();
        Conn {
            sink,
            stream,
            generation: self.generation,
            epoch: info.epoch,
            max_received: 0,
            // The server settled everything up to an honoured resume point.
            acked: resumed.map_or(0, |r| r.last_seq),
            out: VecDeque::new(),
            publishes: HashMap::new(),
            pings: VecDeque::new(),
            pending: None,
            last_inbound: now,
            last_outbound: now,
        }
    }

    /// Waits and dials until a connection opens, the attempts run out, or the client closes.
    async fn reconnect(
        &mut self,
        mut at_least: Duration,
        mut use_backoff: bool,
    ) -> Result<(Socket, ConnectedInfo), ClientError> {
        let mut last: Option<ClientError> = None;
        loop {
            let wait = if use_backoff {
                match self.backoff.next_delay() {
                    Some(d) => d.max(at_least),
                    None => {
                        return Err(ClientError::GaveUp {
                            attempts: self.backoff.attempts(),
                            last: last.map_or_else(|| "no attempt".into(), |e| e.to_string()),
                        })
                    }
                }
            } else {
                at_least
            };
            use_backoff = true;
            self.idle(wait).await?;
            let resume = {
                let state = self.shared.state();
                state.epoch.map(|epoch| ResumePoint {
                    epoch,
                    last_seq: state.processed,
                })
            };
            let attempt = tokio::select! {
                r = dial(&self.config, resume) => r,
                () = closed(&self.shared) => return Err(ClientError::Closed),
            };
            match attempt {
                Ok(connected) => {
                    self.resume = resume;
                    self.shared.reconnect.store(false, Ordering::Relaxed);
                    return Ok(connected);
                }
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "tether client: reconnect attempt failed");
                    at_least = e.retry_after().unwrap_or(Duration::ZERO);
                    last = Some(e);
                }
            }
        }
    }

    /// Waits `wait` between connections, answering requests with `NotConnected`.
    async fn idle(&mut self, wait: Duration) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Ok(()),
                () = closed(&self.shared) => return Err(ClientError::Closed),
                command = self.commands.recv() => match command {
                    Some(Command::Publish { reply, .. }) => {
                        let _ = reply.send(Err(RequestError::NotConnected));
                    }
                    Some(Command::Ping { reply }) => {
                        let _ = reply.send(Err(RequestError::NotConnected));
                    }
                    // Every handle is gone, the client with them: its Drop asked to close.
                    None => return Err(ClientError::Closed),
                },
            }
        }
    }

    /// Runs one connection until it ends.
    async fn serve(&mut self, conn: &mut Conn) -> End {
        let tick = (self.config.keepalive / 2).max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.reset();
        let max_requests = self.config.max_pending_requests;
        let mut ack_due: Option<tokio::time::Instant> = None;
        // One timer for the connection, re-armed when an ack becomes due.
        let ack_timer = tokio::time::sleep(ACK_DELAY);
        tokio::pin!(ack_timer);
        loop {
            if self.shared.close.load(Ordering::Acquire) {
                self.goodbye(conn).await;
                return End::Shutdown;
            }
            if self.shared.reconnect.swap(false, Ordering::AcqRel) {
                return End::Requested;
            }
            // Acks go out only when nothing else waits for the socket, so a stalled write
            // never piles them up: the next one carries the newest watermark anyway. They go
            // when ACK_BATCH are due, when the application has processed everything this
            // connection delivered and nothing more is readable (the server may be waiting
            // for the ack: its window may be full), or ACK_DELAY after one became due.
            let mut ack_when_idle = false;
            if conn.out.is_empty() {
                let target = self.ack_target(conn);
                if target > conn.acked {
                    let now = tokio::time::Instant::now();
                    if target - conn.acked >= ACK_BATCH || ack_due.is_some_and(|d| d <= now) {
                        push_ack(conn, target);
                        ack_due = None;
                    } else {
                        if ack_due.is_none() {
                            ack_due = Some(now + ACK_DELAY);
                            ack_timer.as_mut().reset(now + ACK_DELAY);
                        }
                        ack_when_idle = target == conn.max_received && conn.pending.is_none();
                    }
                } else {
                    // Nothing due: a stale deadline would make the timer branch spin.
                    ack_due = None;
                }
            }
            let reading = conn.pending.is_none() && conn.out.len() < MAX_OUT;
            let taking = conn.out.len() < MAX_OUT && conn.outstanding() < max_requests;
            let writing = !conn.out.is_empty();
            let ack_timed = ack_due.is_some() && !writing;
            tokio::select! {
                biased;
                () = self.shared.wake.notified() => {}
                permit = self.events.reserve(), if conn.pending.is_some() => {
                    let envelope = conn.pending.take();
                    // A closed channel means the application is closing: the flag checked
                    // at the top of the loop says so.
                    if let (Ok(permit), Some(envelope)) = (permit, envelope) {
                        permit.send(envelope);
                    }
                }
                wrote = pump(&mut conn.sink, &mut conn.out), if writing => match wrote {
                    Ok(()) => conn.last_outbound = Instant::now(),
                    Err(e) => return End::Broken(format!("write failed: {e}")),
                },
                read = conn.stream.next(), if reading => {
                    conn.last_inbound = Instant::now();
                    if let Some(end) = self.on_read(conn, read) {
                        if let End::Closed { .. } = end {
                            // Let tungstenite send its close reply before the socket goes.
                            let _ = tokio::time::timeout(Duration::from_millis(200), conn.sink.flush()).await;
                        }
                        return end;
                    }
                }
                command = self.commands.recv(), if taking => match command {
                    Some(command) => on_command(conn, command),
                    None => {
                        self.goodbye(conn).await;
                        return End::Shutdown;
                    }
                },
                _ = ticker.tick() => {
                    if conn.pending.is_some() {
                        // Not reading, so silence proves nothing.
                        conn.last_inbound = Instant::now();
                    } else if conn.last_inbound.elapsed() >= self.config.idle_timeout {
                        return End::Broken(format!(
                            "no frame from the server for {:?}",
                            self.config.idle_timeout
                        ));
                    }
                    if conn.out.is_empty() && conn.last_outbound.elapsed() >= self.config.keepalive {
                        conn.out.push_back(WsMessage::Ping(Bytes::new()));
                    }
                    // Answers that will never be read: drop them so they do not hold slots.
                    if conn.outstanding() >= max_requests {
                        conn.publishes.retain(|_, reply| !reply.is_closed());
                    }
                }
                // The loop top sends the ack once the deadline has passed.
                () = &mut ack_timer, if ack_timed => {}
                // Every branch above is pending: nothing to read, write or hand over.
                () = std::future::ready(()), if ack_when_idle => {
                    let target = self.ack_target(conn);
                    if target > conn.acked {
                        push_ack(conn, target);
                    }
                    ack_due = None;
                }
            }
        }
    }

    /// The highest seq this connection may acknowledge now: what the application processed,
    /// if the connection delivered it (the server refuses acks beyond its deliveries) and
    /// belongs to the application's epoch.
    fn ack_target(&self, conn: &Conn) -> u64 {
        let state = self.shared.state();
        if state.epoch != Some(conn.epoch) {
            return 0;
        }
        state.processed.min(conn.max_received)
    }

    /// Handles one read; `Some` if the connection ends.
    fn on_read(&self, conn: &mut Conn, read: Option<Result<WsMessage, WsError>>) -> Option<End> {
        let text = match read {
            Some(Ok(WsMessage::Text(text))) => Bytes::from(text),
            Some(Ok(WsMessage::Close(frame))) => {
                let (code, reason) = close_parts(frame.as_ref());
                return Some(End::Closed { code, reason });
            }
            Some(Ok(WsMessage::Binary(_))) => {
                return Some(End::Broken("binary frame from the server".into()))
            }
            // tungstenite answers pings by itself.
            Some(Ok(_)) => return None,
            Some(Err(WsError::Capacity(_))) => {
                return Some(End::Fatal(ClientError::FrameTooBig {
                    max: self.config.max_frame_bytes,
                }))
            }
            Some(Err(e)) => return Some(End::Broken(e.to_string())),
            None => {
                return Some(End::Broken(
                    "connection closed without a close frame".into(),
                ))
            }
        };
        let frame = match decode_server_frame(&text) {
            Ok(frame) => frame,
            // A delivery we cannot read would come again, identical, on every reconnect: it is
            // as permanent as a frame over the size limit.
            Err(e) if e.carries_seq() => {
                return Some(End::Fatal(ClientError::ProtocolViolation(format!(
                    "an undecodable delivery: {e}"
                ))))
            }
            Err(e) => {
                tracing::debug!(error = %e, "tether client: ignoring a frame");
                return None;
            }
        };
        let event = match frame {
            ServerFrame::Message(m) => {
                let seq = m.seq();
                self.delivered(conn, seq).then_some(Event::Message(m))
            }
            ServerFrame::StreamAborted(a) => {
                let seq = a.seq;
                self.delivered(conn, seq).then_some(Event::StreamAborted(a))
            }
            ServerFrame::PublishResult { reference, outcome } => {
                if let Some(reply) = reference.and_then(|r| conn.publishes.remove(&r)) {
                    let _ = reply.send(Ok(outcome));
                }
                None
            }
            ServerFrame::Pong => {
                if let Some((sent, reply)) = conn.pings.pop_front() {
                    let _ = reply.send(Ok(sent.elapsed()));
                }
                None
            }
            ServerFrame::Error(e) => {
                match e.reference.as_ref().and_then(|r| conn.publishes.remove(r)) {
                    Some(reply) => {
                        let _ = reply.send(Err(RequestError::Refused {
                            code: e.code,
                            message: e.message,
                        }));
                        None
                    }
                    None => Some(Event::ServerError(e)),
                }
            }
            ServerFrame::Connected(_) => {
                return Some(End::Broken("a second `connected` frame".into()))
            }
            ServerFrame::Unknown(_) => None,
        };
        let envelope = conn.envelope(Ok(event?));
        match self.events.try_send(envelope) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(envelope)) => {
                conn.pending = Some(envelope);
                None
            }
            // The application is closing; the loop sees the flag next.
            Err(mpsc::error::TrySendError::Closed(_)) => None,
        }
    }

    /// Records a delivery; true if the application may still need it.
    fn delivered(&self, conn: &mut Conn, seq: u64) -> bool {
        conn.max_received = conn.max_received.max(seq);
        let state = self.shared.state();
        // A copy of something already processed (the server had not seen the ack yet):
        // drop it here; the serve loop acknowledges it.
        !(state.epoch == Some(conn.epoch) && seq <= state.processed)
    }

    /// The clean end: the final ack, a close frame, the server's close, within a bound.
    async fn goodbye(&self, conn: &mut Conn) {
        let target = self.ack_target(conn);
        if target > conn.acked {
            push_ack(conn, target);
        }
        conn.out.push_back(WsMessage::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "client closing".into(),
        })));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if pump(&mut conn.sink, &mut conn.out).await.is_ok() {
                while let Some(Ok(frame)) = conn.stream.next().await {
                    if matches!(frame, WsMessage::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
        conn.fail_requests(RequestError::Closed);
    }
}

/// Resolves when the application closes or drops the client. Wake-ups for acks and
/// reconnect requests are consumed here; between connections nothing needs them.
async fn closed(shared: &Shared) {
    // A notify that comes between the check and the await is stored as a permit, so none
    // is missed.
    while !shared.close.load(Ordering::Acquire) {
        shared.wake.notified().await;
    }
}

/// The application's epoch, to label items that belong to no connection.
fn info_epoch(shared: &Shared) -> Epoch {
    let state = shared.state();
    state
        .latest
        .map(|(_, e)| e)
        .or(state.epoch)
        .unwrap_or(Epoch(0))
}

fn push_ack(conn: &mut Conn, target: u64) {
    conn.acked = target;
    conn.out
        .push_back(WsMessage::text(frame::encode_ack(target)));
}

fn on_command(conn: &mut Conn, command: Command) {
    match command {
        Command::Publish {
            frame,
            reference,
            reply,
        } => {
            conn.out.push_back(WsMessage::text(frame));
            conn.publishes.insert(reference, reply);
        }
        Command::Ping { reply } => {
            conn.out.push_back(WsMessage::text(frame::PING));
            conn.pings.push_back((Instant::now(), reply));
        }
    }
}

/// Hands every queued frame to the socket and flushes. Cancel safe: a frame leaves the queue
/// only once the socket took it.
async fn pump(
    sink: &mut SplitSink<Socket, WsMessage>,
    out: &mut VecDeque<WsMessage>,
) -> Result<(), WsError> {
    while let Some(frame) = out.pop_front() {
        if let Err(e) = std::future::poll_fn(|cx| sink.poll_ready_unpin(cx)).await {
            out.push_front(frame);
            return Err(e);
        }
        sink.start_send_unpin(frame)?;
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_of_one_config_retry_on_their_own_schedules_unless_seeded() {
        let schedule = |mut b: Backoff| -> Vec<Duration> {
            (0..16)
                .map(|_| b.next_delay().expect("unlimited"))
                .collect()
        };
        let config = Client::builder("ws://127.0.0.1:1", "t").build().unwrap();
        let (a, b) = (config.task_backoff(), config.task_backoff());
        // 16 uniform draws of up to 100 ms .. 30 s: equal only if the seeds are.
        assert_ne!(schedule(a), schedule(b), "two clients, one config");
        let seeded = Client::builder("ws://127.0.0.1:1", "t")
            .backoff(Backoff::new(Duration::from_millis(100), Duration::from_secs(30)).with_seed(5))
            .build()
            .unwrap();
        assert_eq!(
            schedule(seeded.task_backoff()),
            schedule(seeded.task_backoff()),
            "a fixed seed is kept"
        );
    }

    #[test]
    fn urls_are_checked_and_normalised() {
        let ok = [
            (
                "ws://127.0.0.1:7700",
                "ws://127.0.0.1:7700/ws",
                "127.0.0.1",
                7700,
            ),
            ("ws://localhost/", "ws://localhost/ws", "localhost", 80),
            ("ws://[::1]:9/x?y=1", "ws://[::1]:9/x?y=1", "::1", 9),
        ];
        for (text, url, host, port) in ok {
            assert_eq!(
                parse_url(text),
                Ok((url.to_owned(), host.to_owned(), port)),
                "{text}"
            );
        }
        for bad in [
            "",
            "http://h/ws",
            "wss://h/ws",
            "ws://",
            "ws://u:p@h/ws",
            "h:1",
        ] {
            assert_eq!(parse_url(bad).map_err(|e| e.setting()), Err("url"), "{bad}");
        }
    }

    #[test]
    fn builder_refuses_out_of_range_settings() {
        let b = || Client::builder("ws://127.0.0.1:1/ws", "t");
        let cases = [
            (b().event_capacity(0), "event_capacity"),
            (b().max_pending_requests(0), "max_pending_requests"),
            (b().max_frame_bytes(10), "max_frame_bytes"),
            (b().connect_timeout(Duration::ZERO), "connect_timeout"),
            (
                b().keepalive(Duration::from_secs(5))
                    .idle_timeout(Duration::from_secs(5)),
                "idle_timeout",
            ),
        ];
        for (builder, setting) in cases {
            assert_eq!(
                builder.build().map(|_| ()).map_err(|e| e.setting()),
                Err(setting)
            );
        }
        assert!(b().build().is_ok());
    }

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

    #[test]
    fn close_codes_map_to_the_documented_actions() {
        let next = |code: u16, reason: &str| {
            End::Closed {
                code,
                reason: reason.into(),
            }
            .next()
        };
        assert!(
            matches!(next(4001, "bad"), Next::Stop(ClientError::Unauthorized(r)) if r == "bad")
        );
        assert!(matches!(next(4002, ""), Next::Stop(ClientError::Replaced)));
        assert!(matches!(
            next(4003, "x"),
            Next::Stop(ClientError::ProtocolViolation(_))
        ));
        assert!(matches!(
            next(4100, r#"{"retry_after_ms":250}"#),
            Next::Reconnect { at_least, backoff: true } if at_least == Duration::from_millis(250)
        ));
        for code in [1000, 1001, 1006, 1009, 1011] {
            assert!(matches!(
                next(code, ""),
                Next::Reconnect {
                    at_least: Duration::ZERO,
                    backoff: true
                }
            ));
        }
        assert!(matches!(
            End::Requested.next(),
            Next::Reconnect { backoff: false, .. }
        ));
        assert!(ClientError::Unauthorized(String::new()).is_permanent());
        assert!(ClientError::Http { status: 404 }.is_permanent());
        assert!(!ClientError::Http { status: 429 }.is_permanent());
        assert!(!ClientError::Http { status: 502 }.is_permanent());
        assert!(!ClientError::ShuttingDown.is_permanent());
    }

    #[test]
    fn publish_frames_decode_on_the_server() {
        use crate::protocol::{decode_client_frame, decode_publish_request, ClientFrame};
        let p = Publish::raw("bob", r#" {"n": 1.50} "#)
            .expect("json")
            .priority(Priority::Low)
            .ttl(Duration::from_micros(10))
            .id("i")
            .stream("s", 3, true);
        let ClientFrame::Publish(r) =
            decode_client_frame(&p.encode(true, Some("r1"))).expect("frame")
        else {
            panic!()
        };
        assert_eq!(r.to, "bob");
        assert_eq!(r.data.as_bytes(), br#"{"n": 1.50}"#);
        assert_eq!(r.priority, Priority::Low);
        assert_eq!(r.ttl_ms, Some(1));
        assert_eq!(r.id.as_deref(), Some("i"));
        assert_eq!(r.reference.as_deref(), Some("r1"));
        let s = r.stream.expect("stream");
        assert_eq!((s.id.as_str(), s.part, s.last), ("s", 3, true));

        let body = Publish::json("al", &[1, 2])
            .expect("json")
            .encode(false, None);
        assert_eq!(body, r#"{"to":"al","data":[1,2]}"#);
        assert!(decode_publish_request(&body).is_ok());
    }
}
