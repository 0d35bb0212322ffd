//! One WebSocket session: authenticate the `connect` frame, attach an engine session, then
//! move deliveries out and acks, publishes and pings in until either side ends it.
//!
//! Writes go through one ordered queue of encoded frames. A frame leaves the queue only once
//! the socket accepted it, and the queue is pushed out under `write_timeout`: a timeout
//! leaves the frames queued, in order, and counts as a delivery failure for the session's
//! circuit breaker; while frames wait, no new delivery is taken from the engine, so a reader
//! that stops reading fills its delivery window and the rest waits in its mailbox. A write
//! *error* ends the connection: a frame that might not have gone out must never be followed by
//! later ones, or a cumulative ack would settle it unread.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame};
use tokio_tungstenite::WebSocketStream;

use super::{publish_one, FrontStats, Published, Shared};
use crate::protocol::{self as wire, ClientFrame};
use crate::{CloseReason, ConnectError, DeviceId, EndReason, Session};

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Which WebSocket service an upgraded connection runs.
#[derive(Clone, Copy)]
pub(crate) enum Upgrade {
    Session,
    Echo,
}

/// Deliveries taken from the engine in one go, written with one flush.
const BATCH: usize = 64;

/// How long a closing connection waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Runs a WebSocket on an upgraded connection until it ends; one whose socket was past
/// `max_connections` or `max_connections_per_ip` (`refused`) is closed with 4100 at once.
pub(crate) async fn serve(
    io: TokioIo<hyper::upgrade::Upgraded>,
    peer: SocketAddr,
    kind: Upgrade,
    refused: bool,
    shared: Arc<Shared>,
) {
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config(&shared))).await;
    if refused {
        FrontStats::bump(&shared.stats.refused_overload);
        let mut conn = Connection::new(socket, &shared);
        conn.close(CloseCode::Library(wire::CLOSE_TRY_LATER), &try_later())
            .await;
        return;
    }
    match kind {
        Upgrade::Echo => echo(socket).await,
        Upgrade::Session => {
            shared.connections.fetch_add(1, Ordering::AcqRel);
            FrontStats::bump(&shared.stats.connections_total);
            Connection::new(socket, &shared).run(peer).await;
            shared.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// tungstenite's buffers, set down from its 128 KiB defaults to the configured size: with
/// many idle connections these buffers are most of a connection's memory.
fn ws_config(shared: &Shared) -> WebSocketConfig {
    let c = &shared.config;
    // tungstenite refuses (with an error, which ends the connection) a frame that would take
    // the buffer past its maximum, so the maximum must hold the largest delivery frame: the
    // largest payload plus its envelope: fixed fields, and a message id and a stream id of the
    // engine's maximum length, each character escaped as `\u00XX` at worst.
    let engine = shared.engine.config();
    let largest_frame = engine.max_payload_bytes() + 2 * 6 * engine.max_message_id_len + 512;
    WebSocketConfig::default()
        .read_buffer_size(c.write_buffer_bytes)
        .write_buffer_size(c.write_buffer_bytes)
        .max_write_buffer_size(c.write_buffer_bytes + largest_frame)
        .max_frame_size(Some(c.max_frame_bytes))
        .max_message_size(Some(c.max_frame_bytes))
}

fn try_later() -> String {
    wire::try_later_reason(Duration::from_secs(1))
}

/// Echoes text and binary messages (for WebSocket conformance suites such as Autobahn).
async fn echo(mut socket: Socket) {
    while let Some(Ok(frame)) = socket.next().await {
        let reply = match frame {
            Frame::Text(_) | Frame::Binary(_) => frame,
            Frame::Close(_) => break,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

/// How a session loop ended.
enum Ending {
    /// The client closed cleanly.
    ClientClosed,
    /// The connection broke (I/O error, idle timeout, EOF).
    Broken,
    /// The server closes with this code and reason.
    Close(u16, String),
}

struct Connection<'a> {
    sink: SplitSink<Socket, Frame>,
    stream: SplitStream<Socket>,
    /// Frames accepted for writing and not yet handed to the socket, in order, each with
    /// its message's send stamp (µs on the engine's clock; 0 for frames that carry none).
    out: VecDeque<(Frame, u64)>,
    /// Send stamps of deliveries handed to the socket and not yet flushed.
    written: Vec<u64>,
    shared: &'a Shared,
    last_inbound: Instant,
}

impl<'a> Connection<'a> {
    fn new(socket: Socket, shared: &'a Shared) -> Self {
        let (sink, stream) = socket.split();
        Self {
            sink,
            stream,
            out: VecDeque::new(),
            written: Vec::new(),
            shared,
            last_inbound: Instant::now(),
        }
    }

    async fn run(&mut self, peer: SocketAddr) {
        let Some((mut session, expires_at)) = self.handshake().await else {
            return;
        };
        let user = session.user().clone();
        tracing::debug!(%peer, %user, "session connected");
        let ending = self.serve(&mut session, expires_at).await;
        // Frames still queued (deliveries before a replace or a shutdown) go out first.
        let limit = self.shared.config.write_timeout;
        let last = tokio::time::timeout(
            limit,
            pump(
                &mut self.sink,
                &mut self.out,
                &mut self.written,
                &self.shared.stats,
            ),
        )
        .await;
        if let Ok(Ok(())) = last {
            self.flushed();
        }
        match ending {
            Ending::ClientClosed => session.close(CloseReason::Normal),
            Ending::Broken => session.close(CloseReason::Abnormal),
            Ending::Close(code, reason) => {
                session.close(CloseReason::Abnormal);
                self.close(CloseCode::from(code), &reason).await;
            }
        }
        tracing::debug!(%peer, %user, "session ended");
    }

    /// Waits for the `connect` frame, authenticates it and attaches the session; returns it
    /// with the token's `exp`, if it has one.
    async fn handshake(&mut self) -> Option<(Session, Option<u64>)> {
        let c = &self.shared.config;
        let first = tokio::time::timeout(c.connect_timeout, self.next_text()).await;
        let text = match first {
            Err(_) => {
                FrontStats::bump(&self.shared.stats.unauthorized);
                let reason = format!("no connect frame within {:?}", c.connect_timeout);
                self.close(CloseCode::Library(wire::CLOSE_UNAUTHORIZED), &reason)
                    .await;
                return None;
            }
            Ok(Err(ending)) => {
                self.end_without_session(ending).await;
                return None;
            }
            Ok(Ok(text)) => text,
        };
        FrontStats::bump(&self.shared.stats.frames_in);
        let (token, resume, device) = match wire::decode_client_frame_shared(&text) {
            Ok(ClientFrame::Connect {
                token,
                resume,
                device,
            }) => (token, resume, device),
            Ok(_) => {
                self.violation("the first frame must be a connect frame")
                    .await;
                return None;
            }
            // A connect frame without a usable token is an authentication failure, like a bad
            // token, not a client that does not speak the protocol.
            Err(e) if e.field() == Some("token") => {
                FrontStats::bump(&self.shared.stats.unauthorized);
                self.close(CloseCode::Library(wire::CLOSE_UNAUTHORIZED), &e.to_string())
                    .await;
                return None;
            }
            Err(e) => {
                self.violation(&e.to_string()).await;
                return None;
            }
        };
        let claims = match self.shared.verifier.verify(&token, SystemTime::now()) {
            Ok(claims) => claims,
            Err(e) => {
                FrontStats::bump(&self.shared.stats.unauthorized);
                self.close(CloseCode::Library(wire::CLOSE_UNAUTHORIZED), &e.to_string())
                    .await;
                return None;
            }
        };
        // A resume point that does not parse is a client that lost its state: connect
        // fresh, which re-sends everything unacknowledged.
        let resume = resume.and_then(|r| r.to_resume_point().ok());
        let device = match device.map(DeviceId::new).transpose() {
            Ok(device) => device,
            Err(e) => {
                self.violation(&format!("field `device` is invalid: {e}"))
                    .await;
                return None;
            }
        };
        let engine = &self.shared.engine;
        let connected = match &device {
            Some(device) => engine.connect_device(&claims.user, device, resume).await,
            None => engine.connect(&claims.user, resume).await,
        };
        match connected {
            Ok(session) => {
                self.queue(Frame::text(wire::encode_connected(
                    session.user(),
                    session.device(),
                    session.info(),
                )));
                Some((session, claims.expires_at))
            }
            // Every device of the user is connected: one may leave soon, so come back later.
            Err(ConnectError::TooManyUsers | ConnectError::TooManyDevices { .. }) => {
                FrontStats::bump(&self.shared.stats.refused_overload);
                self.close(CloseCode::Library(wire::CLOSE_TRY_LATER), &try_later())
                    .await;
                None
            }
            // The token's user was checked when the token was read: what the engine refuses
            // here is the device name (too long).
            Err(ConnectError::Invalid(e)) if device.is_some() => {
                self.violation(&format!("field `device` is invalid: {e}"))
                    .await;
                None
            }
            Err(ConnectError::ShuttingDown) => {
                self.close(CloseCode::Away, "server shutting down").await;
                None
            }
            Err(e) => {
                FrontStats::bump(&self.shared.stats.unauthorized);
                self.close(CloseCode::Library(wire::CLOSE_UNAUTHORIZED), &e.to_string())
                    .await;
                None
            }
        }
    }

    /// The next text frame, skipping control frames; how the connection ended otherwise.
    async fn next_text(&mut self) -> Result<Bytes, Ending> {
        loop {
            match self.stream.next().await {
                Some(Ok(Frame::Text(t))) => return Ok(Bytes::from(t)),
                Some(Ok(Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_))) => continue,
                other => return Err(self.ending_of(other)),
            }
        }
    }

    /// What a non-text read means for the connection.
    fn ending_of(&self, read: Option<Result<Frame, WsError>>) -> Ending {
        match read {
            Some(Ok(Frame::Close(_))) => Ending::ClientClosed,
            Some(Ok(Frame::Binary(_))) => Ending::Close(
                wire::CLOSE_PROTOCOL_VIOLATION,
                "binary frames are not part of the protocol".into(),
            ),
            Some(Err(WsError::Capacity(e))) => Ending::Close(1009, e.to_string()),
            // A reset is a connection that died, not a peer that broke the protocol.
            Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                Ending::Broken
            }
            Some(Err(WsError::Protocol(e))) => {
                Ending::Close(wire::CLOSE_PROTOCOL_VIOLATION, e.to_string())
            }
            Some(Err(WsError::Utf8(_))) => Ending::Close(
                wire::CLOSE_PROTOCOL_VIOLATION,
                "a text frame that is not valid UTF-8".into(),
            ),
            _ => Ending::Broken,
        }
    }

    async fn end_without_session(&mut self, ending: Ending) {
        if let Ending::Close(code, reason) = ending {
            FrontStats::bump(&self.shared.stats.protocol_errors);
            self.close(CloseCode::from(code), &reason).await;
        }
    }

    async fn violation(&mut self, reason: &str) {
        FrontStats::bump(&self.shared.stats.protocol_errors);
        self.close(CloseCode::Library(wire::CLOSE_PROTOCOL_VIOLATION), reason)
            .await;
    }

    /// Sends a close frame (reason cut to the 123 bytes a close frame allows) and lets the
    /// peer's close arrive, within the write timeout.
    async fn close(&mut self, code: CloseCode, reason: &str) {
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let frame = Frame::Close(Some(CloseFrame {
            code,
            reason: reason[..cut].to_owned().into(),
        }));
        let limit = self.shared.config.write_timeout.min(CLOSE_WAIT);
        let _ = tokio::time::timeout(limit, async {
            if self.sink.send(frame).await.is_ok() {
                // Wait for the client's close so the close code reaches it before the TCP
                // connection goes.
                while let Some(Ok(f)) = self.stream.next().await {
                    if matches!(f, Frame::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    }

    /// Runs the session until it ends; `expires_at` is the token's `exp` (Unix seconds), when
    /// the session ends with 4001 like a token that was expired at connect.
    async fn serve(&mut self, session: &mut Session, expires_at: Option<u64>) -> Ending {
        let c = &self.shared.config;
        let expiry = tokio::time::sleep(expires_at.map_or(FOREVER, until_unix));
        tokio::pin!(expiry);
        let mut ticker = tokio::time::interval(c.ping_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.reset();
        let stopped = self.shared.stopped();
        tokio::pin!(stopped);
        // `stopped` also resolves when the server is dropped without a shutdown (the flag
        // never becomes true then): poll it once only, never after it completed.
        let mut stop_seen = false;
        let mut batch = Vec::with_capacity(BATCH);
        // Stop reading while the client does not take what we write: it would only queue
        // more replies.
        let max_out = self.shared.engine.config().window() + 64;
        let mut failing = false;
        // Lists the user on the dashboard while the breaker is open; unlists when it closes
        // or this connection ends.
        let mut breaker = self.shared.dashboard.breakers.watch();
        // When the frames queued now must be written by. Fixed when writing starts, not per
        // pass: reads cancel and restart the pump, and a client that sends a frame every few
        // seconds must not restart the clock of a write it never lets finish.
        let mut write_deadline: Option<tokio::time::Instant> = None;
        // Frames handed to the socket but not yet flushed: `out` empties before the flush
        // that a read can interrupt, so `out` alone does not say whether a write is pending.
        let mut unflushed = false;
        loop {
            unflushed |= !self.out.is_empty();
            let writing = unflushed;
            if writing {
                write_deadline.get_or_insert_with(|| tokio::time::Instant::now() + c.write_timeout);
            } else {
                write_deadline = None;
            }
            tokio::select! {
                biased;
                read = self.stream.next(), if self.out.len() < max_out => {
                    self.last_inbound = Instant::now();
                    match read {
                        Some(Ok(Frame::Text(t))) => {
                            if let Some(ending) = self.on_text(Bytes::from(t), session).await {
                                return ending;
                            }
                        }
                        Some(Ok(Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_))) => {}
                        other => return self.ending_of(other),
                    }
                }
                wrote = tokio::time::timeout_at(
                    // Only polled while writing, when the deadline is set.
                    write_deadline.unwrap_or_else(tokio::time::Instant::now),
                    pump(&mut self.sink, &mut self.out, &mut self.written, &self.shared.stats),
                ), if writing => {
                    write_deadline = None;
                    match wrote {
                        Ok(Ok(())) => {
                            unflushed = false;
                            self.flushed();
                            if failing {
                                let t = session.report_delivery_success();
                                breaker.saw(t, session.user(), session.breaker_cell());
                                failing = false;
                            }
                        }
                        Ok(Err(_)) => return Ending::Broken,
                        Err(_) => {
                            FrontStats::bump(&self.shared.stats.write_timeouts);
                            let t = session.report_delivery_failure();
                            breaker.saw(t, session.user(), session.breaker_cell());
                            failing = true;
                            // Deliveries are not read while a write is stuck, so this is where
                            // a replaced or shut-down session is noticed.
                            if session.end_reason().is_some() {
                                return session_ended(session);
                            }
                        }
                    }
                }
                delivery = session.recv(), if !writing => match delivery {
                    Some(d) => {
                        batch.push(d);
                        session.drain(&mut batch, BATCH - 1);
                        for d in batch.drain(..) {
                            let sent = d.message().sent_us().unwrap_or(0);
                            self.out.push_back((Frame::text(wire::encode_delivery(&d)), sent));
                        }
                    }
                    None => return session_ended(session),
                },
                () = &mut expiry, if expires_at.is_some() => {
                    FrontStats::bump(&self.shared.stats.unauthorized);
                    return Ending::Close(wire::CLOSE_UNAUTHORIZED, "the token expired".into());
                }
                _ = ticker.tick() => {
                    if self.last_inbound.elapsed() >= c.idle_timeout {
                        return Ending::Close(1001, "idle timeout".into());
                    }
                    self.queue(Frame::Ping(Bytes::new()));
                }
                // The engine ends every session at shutdown; this only wakes the loop so a
                // session blocked on a stuck write notices.
                _ = &mut stopped, if !stop_seen => stop_seen = true,
            }
        }
    }

    /// Handles one client text frame; `Some` if it ends the connection.
    async fn on_text(&mut self, text: Bytes, session: &mut Session) -> Option<Ending> {
        FrontStats::bump(&self.shared.stats.frames_in);
        let frame = match wire::decode_client_frame_shared(&text) {
            Ok(frame) => frame,
            Err(e) if e.is_protocol_violation() => {
                FrontStats::bump(&self.shared.stats.protocol_errors);
                return Some(Ending::Close(wire::CLOSE_PROTOCOL_VIOLATION, e.to_string()));
            }
            Err(e) => {
                self.reply_error_frame(wire::encode_frame_error(&e));
                return None;
            }
        };
        match frame {
            ClientFrame::Ack { seq } => {
                if let Err(e) = session.ack(seq) {
                    self.reply_error_frame(wire::encode_error("invalid_ack", &e.to_string()));
                }
            }
            ClientFrame::Ping => self.queue(Frame::text(wire::encode_pong())),
            ClientFrame::Connect { .. } => self.reply_error_frame(wire::encode_error(
                "already_connected",
                "this connection already has a session",
            )),
            ClientFrame::Publish(request) => {
                let reply = if !self.shared.config.allow_client_publish {
                    refused(&request, "publish_not_allowed")
                } else if !self.shared.user_rate.allow(session.user(), Instant::now()) {
                    FrontStats::bump(&self.shared.stats.rate_limited);
                    refused(&request, "rate_limited")
                } else {
                    self.publish(request).await
                };
                self.queue(Frame::text(reply));
            }
        }
        None
    }

    /// Queues a frame that is no delivery.
    fn queue(&mut self, frame: Frame) {
        self.out.push_back((frame, 0));
    }

    /// Records, for the deliveries just flushed, the time from their producer's call.
    fn flushed(&mut self) {
        if !self.written.is_empty() {
            let now = self.shared.engine.now_us();
            self.shared
                .stats
                .record_delivered(now, self.written.drain(..));
        }
    }

    fn reply_error_frame(&mut self, frame: String) {
        FrontStats::bump(&self.shared.stats.bad_frames);
        self.queue(Frame::text(frame));
    }

    /// Publishes for the client; every publish is answered with a `publish_result` carrying
    /// its `ref`, including the ones the front end refuses.
    async fn publish(&self, request: wire::PublishRequest) -> String {
        let reference = request.reference.clone();
        let reference = reference.as_deref();
        match publish_one(self.shared, request, None).await {
            Published::Outcome(outcome) => wire::encode_publish_result(reference, &outcome),
            Published::Invalid(e) => wire::encode_frame_error(&e),
            Published::BadInput(e) => wire::encode_invalid_input(&e, reference),
            Published::TryLater => rejected(reference, "try_later"),
            Published::Stopping => rejected(reference, "shutting_down"),
        }
    }
}

/// Hands every queued frame to the socket and flushes. Cancel-safe: a frame leaves the
/// queue only once the socket took it (its send stamp then goes to `written`), and what the
/// socket took stays buffered in order.
async fn pump(
    sink: &mut SplitSink<Socket, Frame>,
    out: &mut VecDeque<(Frame, u64)>,
    written: &mut Vec<u64>,
    stats: &FrontStats,
) -> Result<(), WsError> {
    while !out.is_empty() {
        poll_fn(|cx| sink.poll_ready_unpin(cx)).await?;
        let (frame, sent) = out.pop_front().expect("not empty");
        sink.start_send_unpin(frame)?;
        if sent > 0 {
            written.push(sent);
        }
        FrontStats::bump(&stats.frames_out);
    }
    sink.flush().await
}

/// A `publish_result` for a publish the front end refused before the engine saw it.
fn refused(request: &wire::PublishRequest, reason: &str) -> String {
    rejected(request.reference.as_deref(), reason)
}

fn rejected(reference: Option<&str>, reason: &str) -> String {
    let mut frame = serde_json::json!({
        "type": "publish_result",
        "outcome": "rejected",
        "reason": reason,
    });
    // As in every publish_result: `ref` only when the publish had one.
    if let Some(reference) = reference {
        frame["ref"] = reference.into();
    }
    frame.to_string()
}

/// Longer than any session lives: the sleep of a token without `exp`, never polled.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How long from now until `unix_secs` (zero if it has passed).
fn until_unix(unix_secs: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(unix_secs).saturating_sub(now)
}

/// How the connection ends once the engine ended its session.
fn session_ended(session: &Session) -> Ending {
    match session.end_reason() {
        Some(EndReason::Replaced) => Ending::Close(
            wire::CLOSE_REPLACED,
            "replaced by a newer session of the same user".into(),
        ),
        _ => Ending::Close(wire::CLOSE_SHUTTING_DOWN, "server shutting down".into()),
    }
}
