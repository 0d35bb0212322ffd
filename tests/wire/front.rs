//! The front end facing the internet: refusals a client that writes its whole body first can
//! still read (lingering close), every socket counted against `max_connections` and
//! `max_connections_per_ip`, header and body timeouts against a client that sends one byte a
//! second, and publish rate limits that a reconnect does not reset.
#![cfg(feature = "server")]

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{
    bearer, eventually, http, publish_text, read_response, server, try_http_raw, Bound,
    HttpResponse, Raw, GUARD,
};

/// Body bytes written before reading the answer: far more than the socket buffers of both
/// ends hold, so the client's writes finish only if the server keeps reading.
const BIG_BODY: usize = 4 << 20;

/// Writes `head` and then `body_len` bytes of body, all of it, and only then reads the answer:
/// what Python's urllib and many SDKs do.
async fn write_everything_then_read(
    addr: SocketAddr,
    head: &str,
    body_len: usize,
) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(head.as_bytes()).await?;
    let chunk = vec![b' '; 64 * 1024];
    let mut left = body_len;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).await?;
        left -= n;
    }
    read_response(&mut s).await
}

fn head(method: &str, path: &str, auth: Option<&str>, body_len: usize) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: {body_len}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_client_that_writes_its_whole_body_first_reads_every_early_answer() {
    let server = server(&["--max-body-bytes", "1KiB"]).await;
    let addr = server.local_addr();
    let key = bearer();
    // 413: over max_body_bytes, many times in a row.
    for attempt in 0..12 {
        let r = write_everything_then_read(
            addr,
            &head("POST", "/api/publish", Some(&key), BIG_BODY),
            BIG_BODY,
        )
        .await
        .unwrap_or_else(|e| panic!("attempt {attempt}: no answer but {e}"));
        assert_eq!(r.status, 413, "attempt {attempt}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "payload_too_large");
    }
    // 401 before the body, 405 and 404.
    let early = [
        (
            head("POST", "/api/publish", Some("Bearer wrong"), BIG_BODY),
            401,
        ),
        (head("PUT", "/api/publish", Some(&key), BIG_BODY), 405),
        (head("POST", "/nowhere", Some(&key), BIG_BODY), 404),
    ];
    for (request, status) in &early {
        for attempt in 0..3 {
            let r = write_everything_then_read(addr, request, BIG_BODY)
                .await
                .unwrap_or_else(|e| panic!("{status}, attempt {attempt}: no answer but {e}"));
            assert_eq!(r.status, *status, "attempt {attempt}: {}", r.body);
        }
    }
    // 429, with a body the server would take: the one token goes to a small publish, and
    // the next is refused before its body is read.
    let server = crate::harness::server(&[
        "--max-body-bytes",
        "8MiB",
        "--http-publish-rate",
        "1",
        "--http-publish-burst",
        "1",
    ])
    .await;
    let small = json!({"to": "u", "data": 1}).to_string();
    assert_eq!(publish_text(&server, &small).await.status, 200);
    let request = head("POST", "/api/publish", Some(&key), BIG_BODY);
    let r = write_everything_then_read(server.local_addr(), &request, BIG_BODY)
        .await
        .expect("the 429 is readable");
    assert_eq!(r.status, 429, "{}", r.body);
}

/// Opens a TCP connection to `addr` from the loopback address `from` (any of 127.0.0.0/8).
async fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("binds a loopback address");
    socket.connect(addr).await.expect("connects")
}

/// `GET /healthz` on `s`.
async fn healthz_on(mut s: TcpStream) -> HttpResponse {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("writes");
    read_response(&mut s).await.expect("an answer")
}

fn assert_try_later(r: &HttpResponse) {
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "try_later");
    let after: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(after >= 1);
}

#[tokio::test]
async fn every_socket_counts_against_max_connections() {
    // Long header timeout: the idle sockets below must stay open for the whole test.
    let server = server(&["--max-connections", "2", "--header-timeout", "1m"]).await;
    let addr = server.local_addr();
    // Two plain TCP sockets that have sent nothing yet take both slots.
    let idle = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    eventually("both sockets are counted", || async {
        server.sockets() == 2
    })
    .await;
    // An HTTP request is answered 503 with Retry-After...
    let r = healthz_on(TcpStream::connect(addr).await.unwrap()).await;
    assert_try_later(&r);
    // ...and a WebSocket is closed with 4100.
    let mut ws = Raw::open(&server).await;
    let (code, reason) = ws.close_frame().await.expect("a close frame");
    assert_eq!(code, 4100);
    let reason: Value = serde_json::from_str(&reason).expect("JSON reason");
    assert!(reason["retry_after_ms"].as_u64().is_some(), "{reason}");
    assert_eq!(server.sockets(), 2, "refused sockets take no slot");
    // When one of them closes, there is room again.
    let [first, _second] = idle;
    drop(first);
    eventually("the closed socket is counted out", || async {
        server.sockets() < 2
    })
    .await;
    let r = healthz_on(TcpStream::connect(addr).await.unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually("that socket is counted out", || async {
        server.sockets() < 2
    })
    .await;
    let metrics = http(&server, "GET", "/metrics", None, "").await.body;
    assert!(
        metrics.contains("tether_connections_refused_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn one_address_cannot_take_every_slot() {
    let server = server(&["--max-connections-per-ip", "2", "--header-timeout", "1m"]).await;
    let addr = server.local_addr();
    let one = Ipv4Addr::new(127, 0, 0, 1);
    let _held = [connect_from(one, addr).await, connect_from(one, addr).await];
    eventually("both sockets are counted", || async {
        server.sockets() == 2
    })
    .await;
    // A third from the same address is refused; another address is served.
    assert_try_later(&healthz_on(connect_from(one, addr).await).await);
    let other = healthz_on(connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await).await;
    assert_eq!(other.status, 200, "{}", other.body);
}

#[tokio::test]
async fn refusals_are_bounded_and_the_socket_after_them_is_closed_unanswered() {
    let server = server(&["--max-connections", "1", "--header-timeout", "1m"]).await;
    let addr = server.local_addr();
    let _holder = TcpStream::connect(addr).await.unwrap();
    eventually("the holder is counted", || async { server.sockets() == 1 }).await;
    // 64 sockets past the limit that say nothing: each waits to be answered a refusal.
    let mut refusing = Vec::new();
    for _ in 0..64 {
        refusing.push(TcpStream::connect(addr).await.unwrap());
    }
    // One more is closed at once, without an answer.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(GUARD, extra.read(&mut buf))
        .await
        .expect("hang guard: the extra socket stays open");
    assert!(matches!(read, Ok(0) | Err(_)), "answered: {read:?}");
    // One of the 64 is still answered its refusal.
    assert_try_later(&healthz_on(refusing.pop().unwrap()).await);
}

#[tokio::test]
async fn request_headers_sent_one_byte_a_second_are_cut_off() {
    let server = server(&["--header-timeout", "2s"]).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut sent = 0;
    let mut closed = false;
    for byte in request {
        if s.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        sent += 1;
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Err(_) => continue, // a second passed: the next byte
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => panic!("answered: {:?}", String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(
        closed && sent < request.len(),
        "sent {sent} of {} bytes",
        request.len()
    );
    let stats = http(&server, "GET", "/api/stats", None, "").await.json();
    assert_eq!(stats["server"]["header_timeouts_total"], 1, "{stats}");
}

#[tokio::test]
async fn a_body_sent_one_byte_a_second_is_answered_408() {
    let server = server(&["--body-timeout", "2s"]).await;
    let body = json!({"to": "u", "data": "x".repeat(40)}).to_string();
    let s = TcpStream::connect(server.local_addr()).await.unwrap();
    let (mut reader, mut writer) = s.into_split();
    let head = head("POST", "/api/publish", Some(&bearer()), body.len());
    writer.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for byte in body.into_bytes() {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut raw = Vec::new();
    tokio::time::timeout(GUARD, reader.read_to_end(&mut raw))
        .await
        .expect("hang guard: no answer")
        .expect("reads");
    trickle.abort();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    let stats = http(&server, "GET", "/api/stats", None, "").await.json();
    assert_eq!(stats["server"]["body_timeouts_total"], 1, "{stats}");
}

/// Publishes `n` frames back to back on `raw`; returns how many the server accepted.
async fn publish_burst(raw: &mut Raw, n: usize) -> usize {
    let frames: Vec<Value> = (0..n)
        .map(|i| json!({"type": "publish", "ref": format!("p{i}"), "to": "sink", "data": i}))
        .collect();
    raw.send_all(&frames).await;
    let mut accepted = 0;
    for _ in 0..n {
        let result = raw.next().await;
        assert_eq!(result["type"], "publish_result", "{result}");
        match result["outcome"].as_str() {
            Some("queued" | "delivered") => accepted += 1,
            _ => assert_eq!(result["reason"], "rate_limited", "{result}"),
        }
    }
    accepted
}

#[tokio::test]
async fn a_reconnect_does_not_refill_the_publish_rate() {
    let server = server(&[
        "--allow-client-publish",
        "--publish-rate",
        "1",
        "--publish-burst",
        "20",
    ])
    .await;
    let (mut raw, _) = Raw::connect(&server, "chatty", None).await;
    // The burst, and not one more (unless a second passes: one token a second).
    let first = publish_burst(&mut raw, 30).await;
    assert!((20..=22).contains(&first), "{first}");
    raw.close().await;
    // A new connection of the same user finds the bucket as it was left: a fresh one would
    // take 20 again.
    let (mut raw, _) = Raw::connect(&server, "chatty", None).await;
    let again = publish_burst(&mut raw, 20).await;
    assert!(
        again < 10,
        "a reconnect refilled the bucket: {again} of 20 accepted"
    );
    // Another user has a bucket of its own.
    let (mut other, _) = Raw::connect(&server, "quiet", None).await;
    assert_eq!(publish_burst(&mut other, 20).await, 20);
}

#[tokio::test]
async fn http_publishes_are_limited_per_api_key() {
    let server = server(&["--http-publish-rate", "1", "--http-publish-burst", "5"]).await;
    let batch = |n: usize| {
        let messages: Vec<Value> = (0..n).map(|i| json!({"to": "u", "data": i})).collect();
        json!({ "messages": messages }).to_string()
    };
    let post = |body: String| {
        let server = &server;
        async move { http(server, "POST", "/api/publish_batch", Some(&bearer()), &body).await }
    };
    // A batch larger than the whole burst could never pass: 413, whatever the bucket holds.
    let r = post(batch(6)).await;
    assert_eq!(
        (r.status, &r.json()["error"]["code"]),
        (413, &json!("payload_too_large"))
    );
    // A batch of exactly the burst passes, and takes every token.
    let r = post(batch(5)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["results"].as_array().map(Vec::len), Some(5));
    // Then publishes are refused, each with the time to wait (one token a second).
    let mut bound = Bound::new("publishing until refused", 10);
    let r = loop {
        bound.tick();
        let r = publish_text(&server, &json!({"to": "u", "data": 1}).to_string()).await;
        if r.status != 200 {
            break r;
        }
    };
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    let stats = http(&server, "GET", "/api/stats", None, "").await.json();
    assert!(
        stats["server"]["http_rate_limited_total"].as_u64() >= Some(1),
        "{stats}"
    );
    // Refused requests cost no token: a wrong key is 401, not 429.
    let r = try_http_raw(
        server.local_addr(),
        &crate::harness::request_bytes("POST", "/api/publish", Some("Bearer wrong"), "{}"),
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn delivery_latency_is_measured_to_the_socket_write_with_the_inbox_wait_apart() {
    let server = server(&[]).await;
    let (mut raw, _) = Raw::connect(&server, "timed", None).await;
    let outcome = crate::harness::publish_ok(&server, json!({"to": "timed", "data": 1})).await;
    assert_eq!(outcome["outcome"], "delivered", "{outcome}");
    assert_eq!(raw.next_message().await.raw_data(), "1");
    // The frame is counted once the server's flush returned, which may be just after the
    // client read it.
    eventually("the write is counted", || async {
        let stats = http(&server, "GET", "/api/stats", None, "").await.json();
        stats["server"]["ws_send_to_write"]["count"] == 1
    })
    .await;
    // Shards publish their histograms at most every millisecond, and at a barrier.
    server.engine().barrier().await;
    let stats = http(&server, "GET", "/api/stats", None, "").await.json();
    assert_eq!(stats["engine"]["inbox_wait"]["count"], 1, "{stats}");
    assert_eq!(
        stats["engine"]["enqueue_to_delivery"]["count"], 1,
        "{stats}"
    );
    let metrics = http(&server, "GET", "/metrics", None, "").await.body;
    for series in [
        "tether_ws_send_to_write_seconds_count 1",
        "tether_inbox_wait_seconds_count 1",
        "tether_enqueue_to_delivery_seconds_count 1",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
}
