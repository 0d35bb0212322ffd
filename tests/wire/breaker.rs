//! A client that stops reading: writes time out, each timeout counts as a delivery failure,
//! and the session's circuit breaker opens (what an open breaker then holds back in the
//! mailbox is checked on a manual clock in tests/breaker.rs).
#![cfg(feature = "server")]

use crate::harness;
use std::time::{Duration, Instant};

use tether::breaker::BreakerConfig;
use tether::server::Server;
use tether::{Message, UserId};

use crate::harness::{server, Raw, GUARD};

/// A server with `write_timeout`, and a session of `name` that has stopped reading with a
/// backlog far larger than the socket buffers: 100 messages of 512 KiB, a window of 32.
async fn stalled(write_timeout: &str, name: &str) -> (Server, Raw) {
    let server = server(&[
        "--write-timeout",
        write_timeout,
        "--window",
        "32",
        "--max-frame-bytes",
        "1MiB",
    ])
    .await;
    let user = UserId::new(name).unwrap();
    let (raw, _) = Raw::connect(&server, name, None).await;
    let big = format!("\"{}\"", "y".repeat(512 * 1024));
    for _ in 0..100 {
        server
            .engine()
            .send(&user, Message::new(big.clone()))
            .await
            .unwrap();
    }
    (server, raw)
}

/// Waits (bounded by [`GUARD`]) until the engine counts an opened breaker, running `also`
/// between looks.
async fn wait_for_breaker_open(server: &Server, also: impl AsyncFn()) {
    let deadline = Instant::now() + GUARD;
    loop {
        server.engine().barrier().await;
        if server.engine().metrics().counters.breaker_opens > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the breaker never opened");
        also().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_trips_its_breaker_after_write_timeouts() {
    let (server, raw) = stalled("100ms", "stalled").await;
    wait_for_breaker_open(&server, async || {}).await;
    let metrics = harness::http(&server, "GET", "/metrics", None, "").await;
    let timeouts = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("tether_ws_write_timeouts_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    let threshold = BreakerConfig::default().failure_threshold;
    assert!(
        timeouts >= u64::from(threshold),
        "the breaker opened after {threshold} failures, each a write timeout ({timeouts})"
    );
    drop(raw);
}

#[tokio::test]
async fn a_client_that_keeps_sending_but_never_reads_still_trips_its_breaker() {
    // Every frame the client sends wakes the server's connection loop; the write that the
    // client never lets finish must still time out on its own clock.
    let (server, raw) = stalled("300ms", "chatty").await;
    let raw = tokio::sync::Mutex::new(raw);
    // An ack of nothing new: accepted, answered with nothing, sent every 50 ms.
    wait_for_breaker_open(&server, async || {
        raw.lock()
            .await
            .send(serde_json::json!({"type": "ack", "seq": 0}))
            .await;
    })
    .await;
}
