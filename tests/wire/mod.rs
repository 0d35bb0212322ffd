//! A test harness for the server: an in-process server on 127.0.0.1:0, tokens, a raw
//! WebSocket client that speaks protocol v1 frame by frame, and a minimal HTTP/1.1 client.
#![allow(dead_code)] // each test binary uses its own subset

use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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

pub fn token(user: &str) -> String {
    let user = UserId::new(user).unwrap();
    auth::issue_token(
        SECRET,
        &user,
        Some(Duration::from_secs(3600)),
        SystemTime::now(),
    )
    .unwrap()
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw protocol-v1 client: frames in, JSON values out.
pub struct Raw {
    pub ws: Ws,
}

impl Raw {
    /// Opens `/ws` without sending anything.
    pub async fn open(server: &Server) -> Raw {
        let url = format!("ws://{}/ws", server.local_addr());
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws opens");
        Raw { ws }
    }

    /// Opens `/ws` and connects as `user`, returning the `connected` frame.
    pub async fn connect(server: &Server, user: &str, resume: Option<(&str, u64)>) -> (Raw, Value) {
        let mut raw = Raw::open(server).await;
        let mut frame = json!({"type": "connect", "token": token(user)});
        if let Some((epoch, seq)) = resume {
            frame["resume"] = json!({"epoch": epoch, "seq": seq});
        }
        raw.send(frame).await;
        let connected = raw.next().await;
        assert_eq!(connected["type"], "connected", "{connected}");
        (raw, connected)
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Frame::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws.send(Frame::text(t.to_owned())).await.expect("send");
    }

    /// The next JSON frame (control frames skipped); panics on close or after [`GUARD`].
    pub async fn next(&mut self) -> Value {
        match self.next_or_close().await {
            Ok(v) => v,
            Err(close) => panic!("connection closed: {close:?}"),
        }
    }

    /// The next JSON frame, or the close frame that ended the connection.
    pub async fn next_or_close(&mut self) -> Result<Value, Option<CloseFrame>> {
        loop {
            let frame = tokio::time::timeout(GUARD, self.ws.next())
                .await
                .expect("hang guard: no frame within the guard");
            match frame {
                Some(Ok(Frame::Text(t))) => {
                    return Ok(serde_json::from_str(t.as_str()).expect("server frames are JSON"))
                }
                Some(Ok(Frame::Close(c))) => return Err(c),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Waits for the close frame, skipping other frames; returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next_or_close().await {
                Ok(_) => continue,
                Err(c) => return c.map(|c| u16::from(c.code)),
            }
        }
    }

    pub async fn ack(&mut self, seq: u64) {
        self.send(json!({"type": "ack", "seq": seq})).await;
    }
}

/// The response of a minimal HTTP/1.1 request: status, headers (lower-case names), body.
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

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub async fn http(
    server: &Server,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> HttpResponse {
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut raw))
        .await
        .expect("hang guard")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
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
    HttpResponse {
        status,
        headers,
        body,
    }
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

/// `POST /api/publish` with the test API key.
pub async fn publish(server: &Server, body: Value) -> HttpResponse {
    let auth = format!("Bearer {API_KEY}");
    http(
        server,
        "POST",
        "/api/publish",
        Some(&auth),
        &body.to_string(),
    )
    .await
}
