//! A test harness for the server: an in-process server on 127.0.0.1:0, tokens, a raw
//! WebSocket client that speaks protocol v1 frame by frame, and a minimal HTTP/1.1 client.
//!
//! Every wait is bounded by [`GUARD`] (a hang fails the test instead of stalling the suite),
//! and nothing here measures time: tests sleep to let a TTL pass, never assert a duration.
#![allow(dead_code)] // not every helper is used by every build (features)

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::WebSocketStream;

use tether::server::config::ServerConfig;
use tether::server::{auth, Server};
use tether::UserId;

pub const SECRET: &str = "a test secret that is at least 32 bytes long";
pub const API_KEY: &str = "test-api-key-0123456789";
/// How long a test waits for something that must happen before it fails instead of hanging.
pub const GUARD: Duration = Duration::from_secs(20);

/// A server on 127.0.0.1:0 with test credentials and `extra` flags.
pub async fn server(extra: &[&str]) -> Server {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
    ];
    args.extend_from_slice(extra);
    let config = ServerConfig::parse_from(args, [("", ""); 0]).expect("test config");
    Server::start(config).await.expect("server starts")
}

/// A valid token for `user`, good for an hour.
pub fn token(user: &str) -> String {
    token_signed(
        SECRET,
        user,
        Some(Duration::from_secs(3600)),
        SystemTime::now(),
    )
}

/// A token for `user` signed with `secret`, issued at `now`, expiring after `ttl`.
pub fn token_signed(secret: &str, user: &str, ttl: Option<Duration>, now: SystemTime) -> String {
    let user = UserId::new(user).unwrap();
    auth::issue_token(secret, &user, ttl, now).unwrap()
}

/// Base64url without padding, as JWT segments are encoded.
pub fn b64url(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

/// Polls `check` every 10 ms until it returns true; panics with `what` after [`GUARD`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + GUARD;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "hang guard: never {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Bounds a loop in iterations and in time: call [`tick`](Self::tick) once per iteration.
pub struct Bound {
    what: &'static str,
    left: u64,
    deadline: Instant,
}

impl Bound {
    /// At most `iterations`, within [`GUARD`].
    pub fn new(what: &'static str, iterations: u64) -> Self {
        Self::within(what, iterations, GUARD)
    }

    /// At most `iterations`, within `time`.
    pub fn within(what: &'static str, iterations: u64, time: Duration) -> Self {
        Self {
            what,
            left: iterations,
            deadline: Instant::now() + time,
        }
    }

    pub fn tick(&mut self) {
        assert!(
            self.left > 0,
            "loop bound: {} took too many rounds",
            self.what
        );
        self.left -= 1;
        assert!(
            Instant::now() < self.deadline,
            "hang guard: {} took too long",
            self.what
        );
    }
}

/// Frames a test reads while skipping to the one it waits for, at most.
const MAX_SKIPPED: u64 = 100_000;

// ---------------------------------------------------------------------------------------
// WebSocket

/// A TCP stream whose writes can be muted: once [`Raw::mute`] is called, everything the
/// client would write (including tungstenite's automatic pong and close replies) is
/// swallowed, so the server hears nothing from a client that still reads.
pub struct Tap {
    inner: TcpStream,
    mute: Arc<AtomicBool>,
}

impl AsyncRead for Tap {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.mute.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.mute.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

pub type Ws = WebSocketStream<Tap>;

/// The upgrade request for `ws://{addr}/ws`, to add headers to.
pub fn ws_request(addr: SocketAddr) -> Request {
    format!("ws://{addr}/ws")
        .into_client_request()
        .expect("a valid ws url")
}

/// `request` with an `Origin` header.
pub fn with_origin(mut request: Request, origin: &'static str) -> Request {
    request
        .headers_mut()
        .insert("Origin", HeaderValue::from_static(origin));
    request
}

/// A raw protocol-v1 client: frames in, JSON values out.
///
/// Dropping it drops the TCP connection without a close frame: an abrupt disconnect.
pub struct Raw {
    pub ws: Ws,
    mute: Arc<AtomicBool>,
}

/// One message delivery as the client saw it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub seq: u64,
    pub priority: String,
    pub value: Value,
    /// The frame's text as received.
    pub text: String,
}

impl Delivered {
    /// The `data` member exactly as it was written in the frame.
    pub fn raw_data(&self) -> &str {
        raw_data(&self.text)
    }
}

/// The `data` member of a `message` frame as its raw JSON text. The server writes `data`
/// last, after an envelope of fixed fields, so it is everything between the first
/// `,"data":` and the closing brace.
pub fn raw_data(frame: &str) -> &str {
    let start = frame.find(",\"data\":").expect("a message frame has data") + 8;
    frame[start..]
        .strip_suffix('}')
        .expect("a frame ends with }")
}

impl Raw {
    /// Opens `/ws` without sending anything.
    pub async fn open(server: &Server) -> Raw {
        Raw::open_at(server.local_addr()).await
    }

    /// Opens `ws://{addr}/ws` without sending anything.
    pub async fn open_at(addr: SocketAddr) -> Raw {
        Raw::try_open(addr, ws_request(addr))
            .await
            .expect("ws opens")
    }

    /// Opens a WebSocket with `request` (for custom headers); the handshake's error if the
    /// server refuses the upgrade.
    pub async fn try_open(
        addr: SocketAddr,
        request: Request,
    ) -> Result<Raw, tokio_tungstenite::tungstenite::Error> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let mute = Arc::new(AtomicBool::new(false));
        let tap = Tap {
            inner: tcp,
            mute: mute.clone(),
        };
        let handshake = tokio_tungstenite::client_async(request, tap);
        let (ws, _) = tokio::time::timeout(GUARD, handshake)
            .await
            .expect("hang guard: the upgrade never finished")?;
        Ok(Raw { ws, mute })
    }

    /// Opens `/ws` and connects as `user`, returning the `connected` frame.
    pub async fn connect(server: &Server, user: &str, resume: Option<(&str, u64)>) -> (Raw, Value) {
        Raw::connect_device(server, user, None, resume).await
    }

    /// Opens `/ws` and connects as `user`'s `device` (the default device for `None`),
    /// returning the `connected` frame.
    pub async fn connect_device(
        server: &Server,
        user: &str,
        device: Option<&str>,
        resume: Option<(&str, u64)>,
    ) -> (Raw, Value) {
        let mut raw = Raw::open(server).await;
        let mut frame = json!({"type": "connect", "token": token(user)});
        if let Some(device) = device {
            frame["device"] = json!(device);
        }
        if let Some((epoch, seq)) = resume {
            frame["resume"] = json!({"epoch": epoch, "seq": seq});
        }
        raw.send(frame).await;
        let connected = raw.next().await;
        assert_eq!(connected["type"], "connected", "{connected}");
        (raw, connected)
    }

    /// From now on the server hears nothing from this client (see [`Tap`]).
    pub fn mute(&self) {
        self.mute.store(true, Ordering::Relaxed);
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws.send(Frame::text(t.to_owned())).await.expect("send");
    }

    /// Writes `frames` back to back with one flush, so the server reads them together.
    pub async fn send_all(&mut self, frames: &[Value]) {
        for f in frames {
            self.ws
                .feed(Frame::text(f.to_string()))
                .await
                .expect("feed");
        }
        self.ws.flush().await.expect("flush");
    }

    /// Sends `text` as one message split into fragments (a text frame and continuation
    /// frames) of at most `fragment` bytes each.
    pub async fn send_fragmented(&mut self, text: &str, fragment: usize) {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(fragment).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let opcode = OpCode::Data(if i == 0 { Data::Text } else { Data::Continue });
            let frame = RawFrame::message(chunk.to_vec(), opcode, i + 1 == chunks.len());
            self.ws.feed(Frame::Frame(frame)).await.expect("feed");
        }
        self.ws.flush().await.expect("flush");
    }

    /// Sends `bytes` as one text frame, valid UTF-8 or not.
    pub async fn send_text_bytes(&mut self, bytes: &[u8]) {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
        let frame = RawFrame::message(bytes.to_vec(), OpCode::Data(Data::Text), true);
        self.ws.send(Frame::Frame(frame)).await.expect("send");
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Frame::binary(bytes.to_vec()))
            .await
            .expect("send");
    }

    /// The next JSON frame (control frames skipped); panics on close or after [`GUARD`].
    pub async fn next(&mut self) -> Value {
        match self.next_or_close().await {
            Ok(v) => v,
            Err(close) => panic!("connection closed: {close:?}"),
        }
    }

    /// The next text frame as received, or the close frame that ended the connection
    /// (`None` inside if it ended without one).
    ///
    /// The guard is one deadline for the whole wait: the server's pings (control frames,
    /// skipped here) must not keep a test waiting forever for a frame that never comes.
    pub async fn next_text(&mut self) -> Result<String, Option<CloseFrame>> {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("hang guard: no frame within the guard");
            match frame {
                Some(Ok(Frame::Text(t))) => return Ok(t.as_str().to_owned()),
                Some(Ok(Frame::Close(c))) => {
                    // Drive the closing handshake: this sends tungstenite's reply, so the
                    // server is not left waiting for it.
                    let _ = tokio::time::timeout_at(deadline, self.ws.next()).await;
                    return Err(c);
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// The next JSON frame, or the close frame that ended the connection.
    pub async fn next_or_close(&mut self) -> Result<Value, Option<CloseFrame>> {
        self.next_text()
            .await
            .map(|t| serde_json::from_str(&t).expect("server frames are JSON"))
    }

    /// The next frame, which must be a `message`.
    pub async fn next_message(&mut self) -> Delivered {
        let text = match self.next_text().await {
            Ok(t) => t,
            Err(close) => panic!("connection closed while waiting for a message: {close:?}"),
        };
        delivered(text)
    }

    /// Waits for the close frame, skipping other frames; returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        self.close_frame().await.map(|(code, _)| code)
    }

    /// Waits for the close frame, skipping other frames; returns its code and reason.
    pub async fn close_frame(&mut self) -> Option<(u16, String)> {
        let mut bound = Bound::new("waiting for the close frame", MAX_SKIPPED);
        loop {
            bound.tick();
            match self.next_text().await {
                Ok(_) => continue,
                Err(c) => return c.map(|c| (u16::from(c.code), c.reason.as_str().to_owned())),
            }
        }
    }

    pub async fn ack(&mut self, seq: u64) {
        self.send(json!({"type": "ack", "seq": seq})).await;
    }

    /// Sends a `ping` and waits for the `pong`; returns the frames that came before it.
    pub async fn ping(&mut self) -> Vec<Value> {
        self.send(json!({"type": "ping"})).await;
        let mut before = Vec::new();
        let mut bound = Bound::new("waiting for the pong", MAX_SKIPPED);
        loop {
            bound.tick();
            let v = self.next().await;
            if v["type"] == "pong" {
                return before;
            }
            before.push(v);
        }
    }

    /// Closes cleanly with a close frame (code 1000) and waits for the server's reply.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(GUARD, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Parses a frame that must be a `message`. The envelope is read without parsing `data`,
/// which may hold JSON that `serde_json::Value` cannot represent (`1E400`); `value` is the
/// whole frame parsed when it can be, `Null` otherwise.
pub fn delivered(text: String) -> Delivered {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        kind: String,
        seq: u64,
        priority: String,
        #[serde(borrow)]
        #[allow(dead_code)] // present is all that is checked
        data: &'a serde_json::value::RawValue,
    }
    let envelope: Envelope<'_> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a message frame ({e}): {text}"));
    assert_eq!(envelope.kind, "message", "{text}");
    Delivered {
        seq: envelope.seq,
        priority: envelope.priority,
        value: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// Connects `user` with `token` (any string) and returns the close code and reason the
/// server ends the connection with; panics if the server answers `connected`.
pub async fn refused_connect(server: &Server, token: &str) -> Option<(u16, String)> {
    let mut raw = Raw::open(server).await;
    raw.send(json!({"type": "connect", "token": token})).await;
    match raw.next_or_close().await {
        Ok(v) => {
            assert_ne!(v["type"], "connected", "the server accepted {token:?}");
            raw.close_frame().await
        }
        Err(close) => close.map(|c| (u16::from(c.code), c.reason.as_str().to_owned())),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// The response of a minimal HTTP/1.1 request: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The bytes of one HTTP/1.1 request with `Connection: close` and a JSON body.
pub fn request_bytes(method: &str, path: &str, auth: Option<&str>, body: &str) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req.into_bytes()
}

/// Sends `request` (raw bytes) on a fresh connection to `addr` and reads the response; the
/// I/O error if the connection is refused or cut before a response.
pub async fn try_http_raw(addr: SocketAddr, request: &[u8]) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    read_response(&mut s).await
}

/// Reads a whole response from `s` (the server closes after it: `Connection: close`).
pub async fn read_response(s: &mut TcpStream) -> io::Result<HttpResponse> {
    let mut raw = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut raw))
        .await
        .expect("hang guard: no HTTP response")?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let text = String::from_utf8(raw.to_vec()).map_err(|_| bad("response not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no response head"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub async fn http(
    server: &Server,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> HttpResponse {
    let request = request_bytes(method, path, auth, body);
    try_http_raw(server.local_addr(), &request)
        .await
        .expect("an HTTP response")
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// `Bearer <the test API key>`.
pub fn bearer() -> String {
    format!("Bearer {API_KEY}")
}

/// `POST /api/publish` with the test API key.
pub async fn publish(server: &Server, body: Value) -> HttpResponse {
    publish_text(server, &body.to_string()).await
}

/// `POST /api/publish` of a body given as text (for bodies `serde_json` would respell).
pub async fn publish_text(server: &Server, body: &str) -> HttpResponse {
    http(server, "POST", "/api/publish", Some(&bearer()), body).await
}

/// `POST /api/publish`, which must answer 200; returns the outcome object.
pub async fn publish_ok(server: &Server, body: Value) -> Value {
    let r = publish(server, body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// `POST /api/publish_batch` with the test API key; returns the `results` array.
pub async fn publish_batch(server: &Server, messages: Vec<Value>) -> Vec<Value> {
    let body = json!({ "messages": messages }).to_string();
    let r = http(server, "POST", "/api/publish_batch", Some(&bearer()), &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    match r.json()["results"].take() {
        Value::Array(results) => results,
        other => panic!("no results array: {other}"),
    }
}

/// Whether a publish outcome kept the message (delivered now or queued, nothing evicted).
pub fn kept(outcome: &Value) -> bool {
    matches!(outcome["outcome"].as_str(), Some("delivered" | "queued"))
        && outcome.get("evicted").is_none()
}

/// A request sent all but its last byte on a connection the server has accepted, to be
/// finished later: a request that is in flight when something (a shutdown) happens.
pub struct HeldRequest {
    stream: TcpStream,
    last: u8,
}

impl HeldRequest {
    /// Sends `request` but its last byte on a fresh connection to `addr`.
    pub async fn start(addr: SocketAddr, request: &[u8]) -> HeldRequest {
        let (&last, head) = request.split_last().expect("a non-empty request");
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        stream.write_all(head).await.expect("writes");
        stream.flush().await.expect("flushes");
        HeldRequest { stream, last }
    }

    /// Sends the last byte and reads the response.
    pub async fn finish(mut self) -> io::Result<HttpResponse> {
        self.stream.write_all(&[self.last]).await?;
        read_response(&mut self.stream).await
    }
}
