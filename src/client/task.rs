//! The connection task: one per [`Client`](super::Client), it owns the socket. It dials, serves a
//! connection (reads deliveries into the event channel, writes acks, publishes and pings,
//! keeps the connection alive), and when the connection ends decides from the close code
//! whether to reconnect (with backoff and a resume point) or stop.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use super::channel::{Command, Envelope, Shared};
use super::error::retry_after_of;
use super::frame;
use super::stream::{self, Stream};
use super::{
    decode_server_frame, ClientConfig, ClientError, ConnectedInfo, Disconnect, Event,
    PublishOutcome, RequestError, ServerFrame,
};
use crate::protocol::{
    CLOSE_PROTOCOL_VIOLATION, CLOSE_REPLACED, CLOSE_TRY_LATER, CLOSE_UNAUTHORIZED,
};
use crate::{Backoff, Epoch, ResumePoint};

pub(super) type Socket = WebSocketStream<Stream>;

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
/// How long [`Client::close`](super::Client::close) waits for the goodbye (final ack, close handshake).
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// One attempt: TCP, WebSocket handshake, `connect` frame, `connected` frame.
pub(super) async fn dial(
    config: &ClientConfig,
    resume: Option<ResumePoint>,
) -> Result<(Socket, ConnectedInfo), ClientError> {
    let max = config.max_frame_bytes;
    let attempt = async {
        let stream = stream::connect(config).await?;
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            config.url.as_str(),
            stream,
            Some(config.ws_config()),
        )
        .await
        .map_err(|e| ClientError::from_ws(e, max))?;
        ws.send(WsMessage::text(frame::encode_connect(
            &config.token,
            resume,
            config.device.as_deref(),
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

/// How one connection ended.
enum End {
    /// The server sent a close frame.
    Closed { code: u16, reason: String },
    /// The connection broke: I/O error, EOF, silence.
    Broken(String),
    /// [`ClientHandle::reconnect`](super::ClientHandle::reconnect).
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

pub(super) struct Task {
    pub(super) config: ClientConfig,
    pub(super) shared: Arc<Shared>,
    pub(super) events: mpsc::Sender<Envelope>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) backoff: Backoff,
    pub(super) generation: u64,
    /// The resume point the current connection was opened with.
    pub(super) resume: Option<ResumePoint>,
}

impl Task {
    pub(super) async fn run(mut self, mut socket: Socket, mut info: ConnectedInfo) {
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
                    // The server's wait is a floor; the jitter comes on top of it, so clients
                    // refused together do not all come back at the same instant.
                    Some(d) => at_least + d,
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
}
