//! A client that stops reading: writes time out, each timeout counts as a delivery failure,
//! and the session's circuit breaker opens, so the engine stops handing it messages (they
//! wait in the mailbox) instead of piling them up in the server.
#![cfg(feature = "server")]

use std::time::{Duration, Instant};

use tether::{Message, UserId};

mod wire;
use wire::{server, Raw, GUARD};

#[tokio::test]
async fn a_client_that_stops_reading_trips_its_breaker_and_the_backlog_waits_in_the_mailbox() {
    let server = server(&[
        "--write-timeout",
        "100ms",
        "--window",
        "32",
        "--max-frame-bytes",
        "1MiB",
    ])
    .await;
    let user = UserId::new("stalled").unwrap();
    let (raw, _) = Raw::connect(&server, "stalled", None).await;
    // The client never reads again. A window of 32 messages of 512 KiB is far more than the
    // socket buffers hold; 100 such messages are more than the window.
    let big = format!("\"{}\"", "y".repeat(512 * 1024));
    for _ in 0..100 {
        server
            .engine()
            .send(&user, Message::new(big.clone()))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + GUARD;
    loop {
        server.engine().barrier().await;
        let m = server.engine().metrics();
        if m.gauges.breakers_open + m.gauges.breakers_half_open > 0 && m.counters.breaker_opens > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "the breaker never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = server.engine().mailbox_stats(&user).await.unwrap();
    assert!(
        stats.queued() > 0,
        "the rest waits in the mailbox: {stats:?}"
    );
    assert!(stats.in_flight <= server.engine().config().window());
    let metrics = crate::wire::http(&server, "GET", "/metrics", None, "").await;
    let timeouts = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("tether_ws_write_timeouts_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(
        timeouts >= 5,
        "each timeout was a reported failure ({timeouts})"
    );
    drop(raw);
}

/// Waits (bounded by [`GUARD`]) until the engine counts an opened breaker.
async fn wait_for_breaker_open(server: &tether::server::Server, also: impl AsyncFn()) {
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
async fn a_client_that_keeps_sending_but_never_reads_still_trips_its_breaker() {
    // Every frame the client sends wakes the server's connection loop; the write that the
    // client never lets finish must still time out on its own clock.
    let server = server(&[
        "--write-timeout",
        "300ms",
        "--window",
        "32",
        "--max-frame-bytes",
        "1MiB",
    ])
    .await;
    let user = UserId::new("chatty").unwrap();
    let (raw, _) = Raw::connect(&server, "chatty", None).await;
    let raw = tokio::sync::Mutex::new(raw);
    let big = format!("\"{}\"", "y".repeat(512 * 1024));
    for _ in 0..100 {
        server
            .engine()
            .send(&user, Message::new(big.clone()))
            .await
            .unwrap();
    }
    // An ack of nothing new: accepted, answered with nothing, sent every 50 ms.
    wait_for_breaker_open(&server, async || {
        raw.lock()
            .await
            .send(serde_json::json!({"type": "ack", "seq": 0}))
            .await;
    })
    .await;
}
