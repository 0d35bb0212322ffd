//! What the server tells operators: `/metrics` is Prometheus text, `/api/stats` is JSON with
//! the engine's and the front end's numbers, `/healthz` says ok, and `/echo` exists only when
//! asked for.
#![cfg(feature = "server")]

use crate::harness;
use futures_util::{SinkExt, StreamExt};
use prometheus_parse::{Scrape, Value as Sample};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::harness::{eventually, http, publish_ok, server, Raw, GUARD};

/// `/metrics`, parsed.
async fn scrape(server: &tether::server::Server) -> Scrape {
    let r = http(server, "GET", "/metrics", None, "").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The value of the unlabelled series `name`.
fn value(scrape: &Scrape, name: &str) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .and_then(|s| match s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => Some(v),
            _ => None,
        })
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_the_front_ends_series() {
    let server = server(&[]).await;
    let before = scrape(&server).await;
    assert_eq!(value(&before, "tether_ws_connections"), Some(0.0));
    let (mut raw, _) = Raw::connect(&server, "watched", None).await;
    publish_ok(&server, json!({"to": "watched", "data": 1})).await;
    let d = raw.next_message().await;
    raw.ack(d.seq).await;
    assert!(raw.ping().await.is_empty());
    let after = scrape(&server).await;
    assert_eq!(value(&after, "tether_ws_connections"), Some(1.0));
    assert_eq!(value(&after, "tether_ws_connections_total"), Some(1.0));
    // The ack and the ping (the connect frame is the handshake's, not counted here).
    assert!(value(&after, "tether_ws_frames_in_total").unwrap() >= 2.0);
    assert!(value(&after, "tether_ws_frames_out_total").unwrap() >= 3.0);
    // Every series has its HELP, and the engine's series are there beside the front end's.
    for name in ["tether_ws_connections", "tether_ws_unauthorized_total"] {
        assert!(after.docs.contains_key(name), "no HELP for {name}");
    }
    let engine_series = after
        .samples
        .iter()
        .filter(|s| s.metric.starts_with("tether_") && !s.metric.starts_with("tether_ws_"))
        .count();
    assert!(engine_series > 0, "no engine series");
    drop(raw);
    eventually("the connection is counted out", || async {
        value(&scrape(&server).await, "tether_ws_connections") == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn stats_are_json_with_engine_and_server_sections() {
    let server = server(&[]).await;
    let (_raw, _) = Raw::connect(&server, "counted", None).await;
    harness::refused_connect(&server, "not-a-token").await;
    // Shards publish their counters at the end of a pass, which may come after the reply.
    eventually("the connect is counted", || async {
        let r = http(&server, "GET", "/api/stats", None, "").await;
        r.json()["engine"]["counters"]["connects"].as_u64() >= Some(1)
    })
    .await;
    let r = http(&server, "GET", "/api/stats", None, "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let stats = r.json();
    assert!(stats["engine"].is_object(), "{stats}");
    assert!(stats["server"].is_object(), "{stats}");
    assert!(
        stats["engine"]["counters"]["connects"].as_u64() >= Some(1),
        "{stats}"
    );
    assert_eq!(stats["server"]["ws_connections"], 1, "{stats}");
    assert_eq!(stats["server"]["ws_unauthorized_total"], 1, "{stats}");
}

#[tokio::test]
async fn healthz_answers_ok_while_serving() {
    let server = server(&[]).await;
    let r = http(&server, "GET", "/healthz", None, "").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn the_echo_route_echoes_when_enabled() {
    let server = server(&["--echo-route"]).await;
    let url = format!("ws://{}/echo", server.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("opens");
    for frame in [Frame::text("héllo"), Frame::binary(vec![0u8, 1, 2, 255])] {
        ws.send(frame.clone()).await.unwrap();
        let back = tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("hang guard")
            .expect("a frame")
            .expect("not an error");
        assert_eq!(back, frame);
    }
    // The echo service is not a session: it is not counted as one.
    assert_eq!(server.connections(), 0);
}
