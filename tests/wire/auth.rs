//! Authentication over the wire: every way a `connect` can fail to authenticate closes with
//! 4001, a first frame that is not `connect` with 4003, and the HTTP publish API answers 401
//! without the API key.
#![cfg(feature = "server")]

use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::harness::{
    b64url, bearer, http, refused_connect, server, token, token_signed, Raw, API_KEY, SECRET,
};

const UNAUTHORIZED: Option<u16> = Some(4001);

async fn close_code_for(token: &str) -> Option<u16> {
    let server = server(&[]).await;
    refused_connect(&server, token).await.map(|(code, _)| code)
}

#[tokio::test]
async fn a_connect_frame_without_a_usable_token_closes_with_4001() {
    let server = server(&[]).await;
    for frame in [
        json!({"type": "connect"}),
        json!({"type": "connect", "token": null}),
        json!({"type": "connect", "token": 42}),
    ] {
        let mut raw = Raw::open(&server).await;
        raw.send(frame.clone()).await;
        assert_eq!(raw.close_code().await, UNAUTHORIZED, "{frame}");
    }
}

#[tokio::test]
async fn a_valid_token_connects() {
    let server = server(&[]).await;
    let (_raw, connected) = Raw::connect(&server, "valid", None).await;
    assert_eq!(connected["user"], "valid");
}

#[tokio::test]
async fn a_token_signed_with_another_secret_closes_with_4001() {
    let other = "another secret that is also 32+ bytes long";
    let forged = token_signed(
        other,
        "mallory",
        Some(Duration::from_secs(3600)),
        SystemTime::now(),
    );
    assert_eq!(close_code_for(&forged).await, UNAUTHORIZED);
}

#[tokio::test]
async fn an_expired_token_closes_with_4001() {
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    let expired = token_signed(
        SECRET,
        "sleeper",
        Some(Duration::from_secs(3600)),
        two_hours_ago,
    );
    let server = server(&[]).await;
    let (code, reason) = refused_connect(&server, &expired).await.expect("a close");
    assert_eq!(code, 4001);
    assert!(reason.contains("expired"), "{reason}");
}

#[tokio::test]
async fn a_session_ends_with_4001_when_its_token_expires() {
    let server = server(&[]).await;
    // `exp` has whole seconds: 3 s from now is 2 to 3 s away, far more than a connect takes
    // even on a loaded machine.
    let short = token_signed(
        SECRET,
        "brief",
        Some(Duration::from_secs(3)),
        SystemTime::now(),
    );
    let mut raw = Raw::open(&server).await;
    raw.send(json!({"type": "connect", "token": short})).await;
    assert_eq!(raw.next().await["type"], "connected");
    let (code, reason) = raw.close_frame().await.expect("a close frame");
    assert_eq!((code, reason.as_str()), (4001, "the token expired"));
}

#[tokio::test]
async fn an_alg_none_token_closes_with_4001() {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(br#"{"sub":"mallory"}"#);
    for unsigned in [
        format!("{header}.{payload}."),
        // With the real token's signature pasted on: still not HS256.
        format!(
            "{header}.{payload}.{}",
            token("mallory").rsplit('.').next().unwrap()
        ),
    ] {
        assert_eq!(close_code_for(&unsigned).await, UNAUTHORIZED, "{unsigned}");
    }
}

#[tokio::test]
async fn a_tampered_payload_closes_with_4001() {
    // A real token for "eve" with the payload swapped for one naming "admin".
    let real = token("eve");
    let mut parts = real.split('.');
    let (header, _, signature) = (parts.next(), parts.next(), parts.next());
    let forged = format!(
        "{}.{}.{}",
        header.unwrap(),
        b64url(br#"{"sub":"admin"}"#),
        signature.unwrap()
    );
    assert_eq!(close_code_for(&forged).await, UNAUTHORIZED);
}

#[tokio::test]
async fn garbage_tokens_close_with_4001() {
    let server = server(&[]).await;
    for garbage in [
        "",
        "not-a-token",
        "a.b.c",
        "....",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        &"x".repeat(10_000),
    ] {
        let closed = refused_connect(&server, garbage).await;
        assert_eq!(closed.map(|(code, _)| code), UNAUTHORIZED, "{garbage:.40}");
    }
}

#[tokio::test]
async fn no_connect_frame_within_the_connect_timeout_closes_with_4001() {
    let server = server(&["--connect-timeout", "200ms"]).await;
    let mut raw = Raw::open(&server).await;
    // The client reads (and would answer pings) but never sends a frame.
    assert_eq!(raw.close_code().await, UNAUTHORIZED);
}

#[tokio::test]
async fn a_first_frame_that_is_not_connect_closes_with_4003() {
    let server = server(&[]).await;
    for first in [
        json!({"type": "ping"}),
        json!({"type": "ack", "seq": 1}),
        json!({"type": "publish", "to": "x", "data": 1}),
    ] {
        let mut raw = Raw::open(&server).await;
        raw.send(first.clone()).await;
        assert_eq!(raw.close_code().await, Some(4003), "{first}");
    }
    // Not JSON at all, before any connect.
    let mut raw = Raw::open(&server).await;
    raw.send_text("hello").await;
    assert_eq!(raw.close_code().await, Some(4003));
}

#[tokio::test]
async fn a_second_connect_frame_is_answered_with_an_error_and_changes_nothing() {
    let server = server(&[]).await;
    let (mut raw, _) = Raw::connect(&server, "once", None).await;
    raw.send(json!({"type": "connect", "token": token("someone-else")}))
        .await;
    let error = raw.next().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "already_connected");
    assert!(raw.ping().await.is_empty(), "still usable");
}

#[tokio::test]
async fn the_http_publish_api_needs_the_api_key() {
    let server = server(&[]).await;
    let body = json!({"to": "u", "data": 1}).to_string();
    let wrong = format!("Bearer {API_KEY}x");
    let basic = format!("Basic {API_KEY}");
    for path in ["/api/publish", "/api/publish_batch"] {
        for auth in [
            None,
            Some("Bearer "),
            Some(wrong.as_str()),
            Some(basic.as_str()),
        ] {
            let r = http(&server, "POST", path, auth, &body).await;
            assert_eq!(r.status, 401, "{path} with {auth:?}: {}", r.body);
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            assert_eq!(r.json()["error"]["code"], "unauthorized");
        }
    }
    // The right key works; the refused ones published nothing.
    let r = http(&server, "POST", "/api/publish", Some(&bearer()), &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (mut raw, connected) = Raw::connect(&server, "u", None).await;
    assert_eq!(connected["pending"], 0);
    let d = raw.next_message().await;
    assert_eq!(d.raw_data(), "1");
    raw.ack(d.seq).await;
    assert!(raw.ping().await.is_empty(), "exactly one message");
}
