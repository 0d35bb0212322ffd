//! Every limit of the front end, with its edge: frame size, connection count, client
//! publishing and its rate, HTTP body size, input validation, origins, idle connections,
//! and frames that break the protocol.
#![cfg(feature = "server")]

use crate::harness;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::harness::{
    bearer, eventually, http, publish, publish_ok, publish_text, request_bytes, server,
    try_http_raw, with_origin, ws_request, Raw,
};

/// A `ping` frame padded with an ignored field to exactly `len` bytes.
fn ping_of_len(len: usize) -> String {
    let bare = r#"{"type":"ping","pad":""}"#;
    let frame = format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(len - bare.len())
    );
    assert_eq!(frame.len(), len);
    frame
}

#[tokio::test]
async fn a_frame_at_the_size_limit_is_read_and_one_byte_more_closes_with_1009() {
    let server = server(&["--max-frame-bytes", "1KiB"]).await;
    let (mut raw, _) = Raw::connect(&server, "big", None).await;
    raw.send_text(&ping_of_len(1024)).await;
    assert_eq!(raw.next().await["type"], "pong");
    // The limit is on the message too: fragments that add up to the limit are fine...
    raw.send_fragmented(&ping_of_len(1024), 400).await;
    assert_eq!(raw.next().await["type"], "pong");
    // ...one byte more is too big, however small each fragment.
    raw.send_fragmented(&ping_of_len(1025), 400).await;
    assert_eq!(raw.close_code().await, Some(1009));
    let (mut raw, _) = Raw::connect(&server, "big", None).await;
    raw.send_text(&ping_of_len(1025)).await;
    assert_eq!(raw.close_code().await, Some(1009));
    // Also before the connect frame.
    let mut raw = Raw::open(&server).await;
    raw.send_text(&ping_of_len(4096)).await;
    assert_eq!(raw.close_code().await, Some(1009));
}

#[tokio::test]
async fn beyond_max_connections_a_client_is_told_to_try_later() {
    let server = server(&["--max-connections", "2"]).await;
    let (first, _) = Raw::connect(&server, "c1", None).await;
    let (mut second, _) = Raw::connect(&server, "c2", None).await;
    let mut third = Raw::open(&server).await;
    let (code, reason) = third.close_frame().await.expect("a close frame");
    assert_eq!(code, 4100);
    let reason: Value = serde_json::from_str(&reason).expect("the reason is JSON");
    assert!(reason["retry_after_ms"].as_u64().is_some(), "{reason}");
    drop(third);
    // The two admitted connections are unaffected.
    assert!(second.ping().await.is_empty());
    // Once one leaves, there is room again.
    drop(first);
    eventually("the first connection is counted out", || async {
        server.connections() < 2
    })
    .await;
    let (mut fourth, connected) = Raw::connect(&server, "c4", None).await;
    assert_eq!(connected["user"], "c4");
    assert!(fourth.ping().await.is_empty());
}

#[tokio::test]
async fn client_publishing_is_off_by_default() {
    let server = server(&[]).await;
    let (mut raw, _) = Raw::connect(&server, "quiet", None).await;
    raw.send(json!({"type": "publish", "ref": "r1", "to": "other", "data": 1}))
        .await;
    let result = raw.next().await;
    assert_eq!(
        result,
        json!({"type": "publish_result", "ref": "r1", "outcome": "rejected",
            "reason": "publish_not_allowed"})
    );
    // Without a ref, the result has none (not `"ref":null`).
    raw.send(json!({"type": "publish", "to": "other", "data": 1}))
        .await;
    assert_eq!(
        raw.next().await,
        json!({"type": "publish_result", "outcome": "rejected", "reason": "publish_not_allowed"})
    );
    assert!(raw.ping().await.is_empty(), "the connection stays usable");
    let (_other, connected) = Raw::connect(&server, "other", None).await;
    assert_eq!(connected["pending"], 0, "nothing was published");
}

#[tokio::test]
async fn a_ref_of_256_bytes_is_echoed_and_one_byte_more_is_refused_unechoed() {
    let server = server(&["--allow-client-publish"]).await;
    let (mut raw, _) = Raw::connect(&server, "refs", None).await;
    let at_limit = "r".repeat(256);
    raw.send(json!({"type": "publish", "ref": at_limit, "to": "x", "data": 1}))
        .await;
    let result = raw.next().await;
    assert_eq!(
        (&result["type"], &result["ref"], &result["outcome"]),
        (&json!("publish_result"), &json!(at_limit), &json!("queued"))
    );
    let over = "r".repeat(257);
    raw.send(json!({"type": "publish", "ref": over, "to": "x", "data": 2}))
        .await;
    let error = raw.next().await;
    assert_eq!(
        (&error["type"], &error["code"]),
        (&json!("error"), &json!("invalid_field"))
    );
    assert!(
        error["message"].as_str().unwrap().contains("`ref`"),
        "{error}"
    );
    assert!(error.get("ref").is_none(), "not echoed: {error}");
    let (mut x, _) = Raw::connect(&server, "x", None).await;
    assert_eq!(x.next_message().await.raw_data(), "1");
    assert!(x.ping().await.is_empty(), "only the first was published");
    // HTTP answers by position and never echoes a ref, so it does not bound one.
    let long_ref = "r".repeat(1000);
    publish_ok(&server, json!({"to": "y", "data": 3, "ref": long_ref})).await;
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_4003() {
    let server = server(&[]).await;
    let (mut raw, _) = Raw::connect(&server, "bytes", None).await;
    raw.send_text_bytes(b"{\"type\":\"ping\",\"x\":\"\xff\"}")
        .await;
    assert_eq!(raw.close_code().await, Some(4003));
}

#[tokio::test]
async fn the_publish_after_a_full_burst_is_rate_limited() {
    let server = server(&[
        "--allow-client-publish",
        // The slowest refill (one token a second), so a loaded machine cannot refill a token
        // while the six are processed.
        "--publish-rate",
        "1",
        "--publish-burst",
        "5",
    ])
    .await;
    let (mut raw, _) = Raw::connect(&server, "chatty", None).await;
    // Six publishes written back to back: the burst admits five.
    let frames: Vec<Value> = (0..6)
        .map(|i| json!({"type": "publish", "ref": format!("p{i}"), "to": "sink", "data": i}))
        .collect();
    raw.send_all(&frames).await;
    for i in 0..6 {
        let result = raw.next().await;
        assert_eq!(result["type"], "publish_result", "{result}");
        assert_eq!(result["ref"], format!("p{i}"));
        if i < 5 {
            assert_eq!(result["outcome"], "queued", "{result}");
        } else {
            assert_eq!(result["outcome"], "rejected", "{result}");
            assert_eq!(result["reason"], "rate_limited", "{result}");
        }
    }
    let stats = http(&server, "GET", "/api/stats", None, "").await.json();
    assert_eq!(stats["server"]["ws_rate_limited_total"], 1, "{stats}");
}

/// A publish body of exactly `len` bytes.
fn body_of_len(len: usize) -> String {
    let bare = r#"{"to":"u","data":""}"#;
    let body = format!(r#"{{"to":"u","data":"{}"}}"#, "x".repeat(len - bare.len()));
    assert_eq!(body.len(), len);
    body
}

#[tokio::test]
async fn an_http_body_at_the_limit_is_accepted_and_one_byte_more_is_413() {
    let server = server(&["--max-body-bytes", "1KiB"]).await;
    let r = publish_text(&server, &body_of_len(1024)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = publish_text(&server, &body_of_len(1025)).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    // Without a Content-Length (chunked), the limit holds while reading.
    let body = body_of_len(4000);
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        bearer(),
        body.len()
    );
    let r = try_http_raw(server.local_addr(), request.as_bytes())
        .await
        .expect("a response");
    assert_eq!(r.status, 413, "{}", r.body);
    // A batch is one body.
    let batch = json!({"messages": [{"to": "u", "data": "x".repeat(2000)}]}).to_string();
    let r = http(
        &server,
        "POST",
        "/api/publish_batch",
        Some(&bearer()),
        &batch,
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
}

#[tokio::test]
async fn invalid_http_input_is_400_naming_the_field() {
    let server = server(&[]).await;
    let cases = [
        (json!({"data": 1}), "missing_field", "`to`"),
        (json!({"to": "u"}), "missing_field", "`data`"),
        (
            json!({"to": "u", "data": 1, "priority": "urgent"}),
            "invalid_field",
            "`priority`",
        ),
        (
            json!({"to": "u", "data": 1, "priority": 1}),
            "invalid_field",
            "`priority`",
        ),
        (
            json!({"to": "u", "data": 1, "ttl_ms": 0}),
            "invalid_field",
            "`ttl_ms`",
        ),
        (
            json!({"to": "u", "data": 1, "ttl_ms": -1}),
            "invalid_field",
            "`ttl_ms`",
        ),
        (json!({"to": "", "data": 1}), "invalid_field", "`to`"),
        (json!({"to": 7, "data": 1}), "invalid_field", "`to`"),
        (
            json!({"to": "u", "data": 1, "id": ""}),
            "invalid_field",
            "`id`",
        ),
        (
            json!({"to": "u", "data": 1, "stream": {"part": 0}}),
            "missing_field",
            "`stream.id`",
        ),
    ];
    for (body, code, field) in cases {
        let r = publish(&server, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let error = &r.json()["error"];
        assert_eq!(error["code"], code, "{body}: {}", r.body);
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    for (text, code) in [
        ("not json", "invalid_json"),
        ("[1]", "not_an_object"),
        (r#"{"to":"u","to":"v","data":1}"#, "duplicate_field"),
    ] {
        let r = publish_text(&server, text).await;
        assert_eq!(r.status, 400, "{text}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], code, "{text}");
    }
    // In a batch, each item is judged alone and reported by position.
    let batch = json!({"messages": [
        {"to": "u", "data": 1},
        {"data": 2},
        {"to": "u", "data": 3, "priority": "urgent"},
    ]})
    .to_string();
    let r = http(
        &server,
        "POST",
        "/api/publish_batch",
        Some(&bearer()),
        &batch,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].clone();
    assert_eq!(results[0]["outcome"], "queued", "{results}");
    assert_eq!(results[1]["error"]["code"], "missing_field", "{results}");
    assert_eq!(results[2]["error"]["code"], "invalid_field", "{results}");
    let r = http(&server, "POST", "/api/publish_batch", Some(&bearer()), "{}").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`messages`"));
    // Nothing invalid was queued: only the one good batch item.
    let (mut raw, _) = Raw::connect(&server, "u", None).await;
    let d = raw.next_message().await;
    assert_eq!(d.raw_data(), "1");
    raw.ack(d.seq).await;
    assert!(raw.ping().await.is_empty());
}

#[tokio::test]
async fn an_origin_not_allowed_gets_403_at_the_upgrade() {
    let server = server(&["--allowed-origins", "http://ok.example"]).await;
    let addr = server.local_addr();
    let evil = with_origin(ws_request(addr), "http://evil.example");
    match Raw::try_open(addr, evil).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        Err(e) => panic!("expected a 403, got {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
    // Near misses are refused too: origins match exactly.
    for near in ["http://ok.example:80", "https://ok.example", "null"] {
        let request = with_origin(ws_request(addr), near);
        let refused = matches!(
            Raw::try_open(addr, request).await,
            Err(WsError::Http(r)) if r.status() == 403
        );
        assert!(refused, "{near}");
    }
    // The allowed origin, and a client that sends none (not a browser), get in.
    let ok = with_origin(ws_request(addr), "http://ok.example");
    let mut raw = Raw::try_open(addr, ok).await.expect("allowed");
    raw.send(json!({"type": "connect", "token": harness::token("ok")}))
        .await;
    assert_eq!(raw.next().await["type"], "connected");
    let (_raw, connected) = Raw::connect(&server, "no-origin", None).await;
    assert_eq!(connected["user"], "no-origin");
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_for_idleness_and_one_that_pings_is_not() {
    let server = server(&["--idle-timeout", "300ms", "--ping-interval", "100ms"]).await;
    // The quiet client reads, but nothing it writes reaches the server: not even the pongs
    // tungstenite answers the server's pings with.
    let (mut quiet, _) = Raw::connect(&server, "quiet", None).await;
    quiet.mute();
    // Meanwhile the talkative client sends a ping every 50 ms, for several idle timeouts.
    let (mut talkative, _) = Raw::connect(&server, "talkative", None).await;
    let talk = async {
        for _ in 0..40 {
            assert!(
                talkative.ping().await.is_empty(),
                "the talkative client was closed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let (closed, ()) = tokio::join!(quiet.close_frame(), talk);
    let (code, reason) = closed.expect("a close frame");
    assert_eq!(code, 1001);
    assert!(reason.contains("idle"), "{reason}");
    assert!(talkative.ping().await.is_empty(), "still open");
    // The closed session is gone; the user's next connection resumes its mailbox.
    let (_again, connected) = Raw::connect(&server, "quiet", None).await;
    assert_eq!(connected["user"], "quiet");
}

#[tokio::test]
async fn malformed_frames_close_with_4003_and_bad_fields_get_an_error_frame() {
    let server = server(&[]).await;
    // A bad field: an error frame naming it, and the connection carries on.
    let (mut raw, _) = Raw::connect(&server, "sloppy", None).await;
    let cases = [
        (json!({"type": "ack", "seq": "7"}), "invalid_field", "`seq`"),
        (json!({"type": "ack"}), "missing_field", "`seq`"),
        (json!({"type": "subscribe"}), "unknown_type", "subscribe"),
        (json!({"seq": 1}), "missing_field", "`type`"),
    ];
    for (frame, code, names) in cases {
        raw.send(frame.clone()).await;
        let error = raw.next().await;
        assert_eq!(error["type"], "error", "{frame}: {error}");
        assert_eq!(error["code"], code, "{frame}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(names), "{frame}: {message}");
        assert!(raw.ping().await.is_empty(), "usable after {frame}");
    }
    // An ack for a seq never delivered is refused the same way.
    raw.ack(99).await;
    let error = raw.next().await;
    assert_eq!(
        (&error["type"], &error["code"]),
        (&json!("error"), &json!("invalid_ack"))
    );
    assert!(raw.ping().await.is_empty());
    // Not JSON, or not an object: the connection is closed.
    for text in ["{\"type\":\"ping\"", "ping", "[1,2]", "null"] {
        let (mut raw, _) = Raw::connect(&server, "sloppy", None).await;
        raw.send_text(text).await;
        assert_eq!(raw.close_code().await, Some(4003), "{text}");
    }
    // Binary frames are not part of the protocol.
    let (mut raw, _) = Raw::connect(&server, "sloppy", None).await;
    raw.send_binary(br#"{"type":"ping"}"#).await;
    assert_eq!(raw.close_code().await, Some(4003));
}

#[tokio::test]
async fn a_malformed_frame_on_one_connection_never_disturbs_another_users_session() {
    let server = server(&[]).await;
    let (mut bystander, _) = Raw::connect(&server, "bystander", None).await;
    publish_ok(&server, json!({"to": "bystander", "data": {"n": 0}})).await;
    let d = bystander.next_message().await;
    assert_eq!(d.value["data"]["n"], 0);
    for garbage in ["\u{0}", "{", "[]", "true"] {
        let (mut vandal, _) = Raw::connect(&server, "vandal", None).await;
        vandal.send_text(garbage).await;
        assert_eq!(vandal.close_code().await, Some(4003));
    }
    let mut vandal = Raw::open(&server).await;
    vandal.send_binary(&[0xff; 64]).await;
    assert_eq!(vandal.close_code().await, Some(4003));
    // The bystander's session is intact: its unacked message, then new ones, then a pong.
    publish_ok(&server, json!({"to": "bystander", "data": {"n": 1}})).await;
    let next = bystander.next_message().await;
    assert_eq!(next.value["data"]["n"], 1);
    assert!(next.seq > d.seq);
    bystander.ack(next.seq).await;
    assert!(bystander.ping().await.is_empty());
    // Every vandal connection is counted out; the bystander's stays.
    eventually("only the bystander is connected", || async {
        let stats = http(&server, "GET", "/api/stats", None, "").await.json();
        stats["server"]["ws_connections"] == 1
    })
    .await;
    assert!(bystander.ping().await.is_empty());
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_refused() {
    let server = server(&[]).await;
    let r = http(&server, "GET", "/nope", None, "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = http(&server, "GET", "/api/publish", Some(&bearer()), "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    // /echo exists only when asked for.
    let r = http(&server, "GET", "/echo", None, "").await;
    assert_eq!(r.status, 404);
    // A plain GET of /ws is not an upgrade.
    let request = request_bytes("GET", "/ws", None, "");
    let r = try_http_raw(server.local_addr(), &request).await.unwrap();
    assert_eq!(r.status, 426, "{}", r.body);
}

#[tokio::test]
async fn values_over_the_engines_length_limits_are_400_naming_the_field() {
    let server = server(&[]).await;
    let long = "x".repeat(300); // the engine's limit for ids is 256 bytes
    let cases = [
        (json!({"to": long, "data": 1}), "`to`"),
        (json!({"to": "u", "id": long, "data": 1}), "`id`"),
        (
            json!({"to": "u", "data": 1, "stream": {"id": long, "part": 0}}),
            "`stream.id`",
        ),
    ];
    for (body, field) in cases {
        let r = publish(&server, body.clone()).await;
        assert_eq!(r.status, 400, "{}", r.body);
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(field), "{field}: {message}");
    }
}

#[tokio::test]
async fn a_client_publish_the_engine_refuses_is_answered_with_its_ref() {
    let server = server(&["--allow-client-publish"]).await;
    let (mut raw, _) = Raw::connect(&server, "pub", None).await;
    let long = "x".repeat(300);
    raw.send(json!({"type": "publish", "ref": "r1", "to": long, "data": 1}))
        .await;
    let reply = raw.next().await;
    // The engine's length check, answered as an input error naming the field, with the ref
    // so the client can tell which publish failed.
    assert_eq!(
        (&reply["type"], &reply["code"], &reply["ref"]),
        (&json!("error"), &json!("invalid_field"), &json!("r1")),
        "{reply}"
    );
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(message.contains("`to`"), "{reply}");
    assert!(raw.ping().await.is_empty());
}

#[tokio::test]
async fn beyond_max_users_a_new_user_is_told_to_try_later() {
    // One shard: the engine splits max_users evenly across shards (ceil(1 / shards) each).
    let server = server(&["--shards", "1", "--max-users", "1"]).await;
    let (mut first, _) = Raw::connect(&server, "first", None).await;
    let (code, reason) = harness::refused_connect(&server, &harness::token("second"))
        .await
        .expect("a close frame");
    assert_eq!(code, 4100);
    let reason: Value = serde_json::from_str(&reason).expect("the reason is JSON");
    assert!(reason["retry_after_ms"].as_u64().is_some(), "{reason}");
    let outcome = publish_ok(&server, json!({"to": "second", "data": 1})).await;
    assert_eq!(
        outcome,
        json!({"outcome": "rejected", "reason": "too_many_users"})
    );
    // The user who has a mailbox is served as before.
    assert_eq!(
        publish_ok(&server, json!({"to": "first", "data": 2})).await["outcome"],
        "delivered"
    );
    assert_eq!(first.next_message().await.raw_data(), "2");
}

#[tokio::test]
async fn a_connection_that_never_sends_its_request_is_dropped_after_the_connect_timeout() {
    use tokio::io::AsyncReadExt;
    let server = server(&["--connect-timeout", "200ms"]).await;
    let mut tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(harness::GUARD, tcp.read_to_end(&mut buf))
        .await
        .expect("hang guard: the silent connection was kept open");
    // Closed by the server: end of stream (possibly after a 408), or a reset.
    if read.is_ok() {
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_body_that_is_not_utf8_is_400() {
    let server = server(&[]).await;
    let mut request = request_bytes("POST", "/api/publish", Some(&bearer()), "");
    // Replace the empty body with 3 bytes of invalid UTF-8, fixing the length.
    let head = String::from_utf8(request.clone()).unwrap();
    request = head
        .replace("Content-Length: 0", "Content-Length: 3")
        .into_bytes();
    request.extend_from_slice(b"\xff\xfe\xfd");
    let r = try_http_raw(server.local_addr(), &request).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "invalid_utf8");
}
