//! Graceful shutdown with clients connected: pending messages are flushed to the clients
//! that are there, every session then closes with 1001, requests in flight are answered 503,
//! and new connections are refused once the listener is gone.
#![cfg(feature = "server")]

use crate::harness;
use serde_json::json;
use tokio::net::TcpStream;

use crate::harness::{
    bearer, eventually, http, publish_ok, request_bytes, server, try_http_raw, HeldRequest, Raw,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_pending_messages_then_closes_every_session_with_1001() {
    const EACH: u64 = 50;
    const WINDOW: u64 = 8;
    let server = server(&["--window", "8"]).await;
    let addr = server.local_addr();
    let shards = server.engine().config().shards();
    let users = ["s0", "s1", "s2"];
    let mut clients = Vec::new();
    for user in users {
        clients.push(Raw::connect(&server, user, None).await.0);
    }
    for n in 0..EACH {
        for user in users {
            publish_ok(&server, json!({"to": user, "data": {"n": n}})).await;
        }
    }
    // Someone who is away keeps their messages through the shutdown (reported as kept).
    for n in 0..5 {
        publish_ok(&server, json!({"to": "absent", "data": {"n": n}})).await;
    }
    // Nobody has acknowledged anything: each client has a window's worth in flight and the
    // rest pending in its mailbox.
    for user in users {
        let stats = server
            .engine()
            .mailbox_stats(&tether::UserId::new(user).unwrap())
            .await
            .unwrap();
        assert_eq!(stats.queued() as u64, EACH - WINDOW, "{user}: {stats:?}");
    }
    // Two HTTP requests in flight when the shutdown begins: all but their last byte sent.
    let health = HeldRequest::start(addr, &request_bytes("GET", "/healthz", None, "")).await;
    let late = json!({"to": "s0", "data": "late"}).to_string();
    let publish = HeldRequest::start(
        addr,
        &request_bytes("POST", "/api/publish", Some(&bearer()), &late),
    )
    .await;
    // A request answered after they connected: the server has accepted both connections.
    assert_eq!(http(&server, "GET", "/healthz", None, "").await.status, 200);

    let shutdown = tokio::spawn(server.shutdown());
    // The clients read (acknowledging each message) while the server shuts down.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut raw| {
            tokio::spawn(async move {
                let mut ns = Vec::new();
                let mut bound = harness::Bound::new("reading until the close", 4 * EACH);
                loop {
                    bound.tick();
                    match raw.next_text().await {
                        Ok(text) if text.starts_with(r#"{"type":"error""#) => {
                            // An ack that reaches the server after the engine ended the
                            // session is refused (the message stays unacknowledged, counted
                            // as kept): acceptable at shutdown, and timing-dependent.
                            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                            assert_eq!(v["code"], "invalid_ack", "{text}");
                        }
                        Ok(text) => {
                            let d = harness::delivered(text);
                            ns.push(d.value["data"]["n"].as_u64().unwrap());
                            raw.ack(d.seq).await;
                        }
                        Err(close) => return (ns, close.map(|c| u16::from(c.code))),
                    }
                }
            })
        })
        .collect();

    // The listener closes at once: new connections are refused.
    eventually("the listener closes", || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    let r = health
        .finish()
        .await
        .expect("the in-flight request is answered");
    assert_eq!((r.status, r.body.as_str()), (503, "stopping\n"));
    let r = publish
        .finish()
        .await
        .expect("the in-flight publish is answered");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert_eq!(r.json()["error"]["code"], "try_later");
    // A new publish: the connection is refused, or (had it been accepted) 503 + Retry-After.
    let body = json!({"to": "s1", "data": "later"}).to_string();
    match try_http_raw(
        addr,
        &request_bytes("POST", "/api/publish", Some(&bearer()), &body),
    )
    .await
    {
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
        Ok(r) => {
            assert_eq!(r.status, 503, "{}", r.body);
            assert!(r.header("retry-after").is_some());
        }
    }

    let report = tokio::time::timeout(harness::GUARD, shutdown)
        .await
        .expect("hang guard: the shutdown never finished")
        .expect("the shutdown task");
    assert_eq!(report.sessions_closed, 3, "{report:?}");
    assert_eq!(report.workers_stopped, shards, "{report:?}");
    assert!(report.kept >= 5, "the absent user's messages: {report:?}");
    for (user, reader) in users.iter().zip(readers) {
        let (ns, close) = reader.await.expect("a reader");
        assert_eq!(
            ns,
            (0..EACH).collect::<Vec<_>>(),
            "{user} got everything, in order"
        );
        assert_eq!(close, Some(1001), "{user}");
    }
    // Once stopped, nothing listens on the port.
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "still listening after shutdown");
}

#[tokio::test]
async fn a_client_that_connects_after_shutdown_began_is_not_served() {
    let server = server(&["--shutdown-timeout", "2s"]).await;
    let addr = server.local_addr();
    let (mut raw, _) = Raw::connect(&server, "early", None).await;
    let shutdown = tokio::spawn(server.shutdown());
    assert_eq!(raw.close_code().await, Some(1001));
    let report = tokio::time::timeout(harness::GUARD, shutdown)
        .await
        .expect("hang guard")
        .expect("the shutdown task");
    assert_eq!(report.sessions_closed, 1, "{report:?}");
    // The upgrade of a latecomer cannot even start.
    assert!(Raw::try_open(addr, harness::ws_request(addr))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stopped_reading_does_not_hold_up_the_shutdown() {
    let server = server(&["--shutdown-timeout", "1s", "--max-frame-bytes", "512KiB"]).await;
    let user = tether::UserId::new("stuck").unwrap();
    let (stuck, _) = Raw::connect(&server, "stuck", None).await;
    // Far more than the socket buffers hold; the client never reads again.
    let big = format!("\"{}\"", "z".repeat(256 * 1024));
    for _ in 0..64 {
        server
            .engine()
            .send(&user, tether::Message::new(big.clone()))
            .await
            .unwrap();
    }
    let (mut reader, _) = Raw::connect(&server, "reader", None).await;
    let report = tokio::time::timeout(harness::GUARD, async {
        let (report, close) = tokio::join!(server.shutdown(), reader.close_code());
        assert_eq!(
            close,
            Some(1001),
            "the client that reads is closed properly"
        );
        report
    })
    .await
    .expect("hang guard: the stuck client held up the shutdown");
    assert_eq!(report.sessions_closed, 2, "{report:?}");
    assert!(
        report.kept > 0,
        "what the stuck client did not take: {report:?}"
    );
    drop(stuck);
}
