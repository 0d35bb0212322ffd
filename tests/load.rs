//! The load generator against an in-process server on 127.0.0.1:0: every message checked,
//! with random disconnects and resumes, through the library and through the binary.
#![cfg(feature = "server")]

mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use tether::client::load::{self, LoadConfig, LoadError};
use tether::server::Server;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use wire::{API_KEY, SECRET};

async fn start() -> Server {
    wire::server(&[]).await
}

fn config(server: &Server) -> LoadConfig {
    let mut c = LoadConfig::new(format!("ws://{}", server.local_addr()), API_KEY, SECRET);
    c.clients = 4;
    c.publishers = 2;
    c.duration = Duration::from_secs(2);
    c.drain = Duration::from_secs(10);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_once_through_random_disconnects() {
    let server = start().await;
    let mut c = config(&server);
    c.disconnect_every = Some(Duration::from_millis(200));
    c.payload_bytes = 256;
    let mut ticks = 0;
    let report = load::run(c, |_| ticks += 1).await.expect("the run");
    println!("{}", report.summary());
    assert!(report.delivered > 0, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.duplicates, 0, "{report:?}");
    assert_eq!(report.unexpected, 0, "{report:?}");
    assert_eq!(report.delivered, report.published, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(report.reconnects > 0, "{report:?}");
    assert!(report.is_clean());
    assert!(ticks > 0, "progress was reported");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
    assert_eq!(
        (json["lost"].as_u64(), json["misrouted"].as_u64()),
        (Some(0), Some(0))
    );
    let latency = |q: &str| {
        json["latency"][q]
            .as_u64()
            .unwrap_or_else(|| panic!("{q}: {json}"))
    };
    let (p50, p99, max) = (latency("p50_us"), latency("p99_us"), latency("max_us"));
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{json}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_a_message_cap() {
    let server = start().await;
    let mut c = config(&server);
    c.batch = 16;
    c.messages = Some(1000);
    c.duration = Duration::from_secs(30);
    let report = load::run(c, |_| {}).await.expect("the run");
    assert_eq!(report.published, 1000, "{report:?}");
    assert_eq!(report.delivered, 1000, "{report:?}");
    assert!(report.is_clean(), "{report:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_to_the_overflow_policy_are_attributed_to_evictions() {
    // Tiny caps: the publishers outrun the client, and DropOldest evicts queued messages.
    let server = wire::server(&["--window", "4", "--max-messages-per-user", "5"]).await;
    let mut c = config(&server);
    c.clients = 1;
    c.batch = 32;
    c.duration = Duration::from_millis(500);
    let report = load::run(c, |_| {}).await.expect("the run");
    assert!(report.lost <= report.evicted, "{report:?}");
    assert_eq!(
        report.delivered + report.lost,
        report.published,
        "{report:?}"
    );
    assert_eq!((report.duplicates, report.unexpected), (0, 0), "{report:?}");
    assert!(report.is_clean(), "{report:?}");
    // A second run on the same users ignores whatever the first left queued.
    let mut c = config(&server);
    c.clients = 1;
    c.duration = Duration::from_millis(300);
    c.messages = Some(3);
    let report = load::run(c, |_| {}).await.expect("the run");
    assert_eq!((report.delivered, report.lost), (3, 0), "{report:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_targets_and_wrong_keys_are_refused() {
    // TEST-NET-1: refused before any connection is attempted.
    let c = LoadConfig::new("ws://192.0.2.1:7700", API_KEY, SECRET);
    assert!(matches!(
        load::run(c, |_| {}).await,
        Err(LoadError::Remote(_))
    ));

    let server = start().await;
    let mut c = config(&server);
    c.api_key = "not-the-api-key-at-all".into();
    match load::run(c, |_| {}).await {
        Err(LoadError::Publish { status, .. }) => assert_eq!(status, 401),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_a_json_summary() {
    let server = start().await;
    let url = format!("ws://{}", server.local_addr());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tether-load"))
            .args(["--url", &url, "--api-key", API_KEY, "--jwt-secret", SECRET])
            .args([
                "--clients",
                "2",
                "--publishers",
                "1",
                "--duration",
                "1s",
                "--json",
            ])
            .output()
    })
    .await
    .expect("join")
    .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("a JSON line");
    let json: serde_json::Value = serde_json::from_str(last).expect("json");
    assert_eq!(
        (json["clients"].as_u64(), json["lost"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(json["delivered"].as_u64() > Some(0));
    server.shutdown().await;
}

#[test]
fn debug_output_never_shows_the_credentials() {
    let c = LoadConfig::new("ws://127.0.0.1:1", API_KEY, SECRET);
    let text = format!("{c:?} {c:#?}");
    assert!(!text.contains(API_KEY), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
}

/// A front on 127.0.0.1:0 for the server at `target`: WebSocket upgrades (`GET`) pass
/// through, every other request is read and never answered. Aborting the handle ends it and
/// every connection it holds.
async fn silent_publish_front(target: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            conns.spawn(async move {
                let mut first = [0u8; 4];
                if inbound.read_exact(&mut first).await.is_err() {
                    return;
                }
                if &first == b"GET " {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    if outbound.write_all(&first).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                } else {
                    // Swallow the request and whatever follows, until the client gives up.
                    let mut sink = [0u8; 4096];
                    while matches!(inbound.read(&mut sink).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_api_that_never_answers_ends_the_run_with_publish_errors() {
    let server = start().await;
    let (front, task) = silent_publish_front(server.local_addr()).await;
    let mut c = LoadConfig::new(format!("ws://{front}"), API_KEY, SECRET);
    c.clients = 2;
    c.publishers = 2;
    c.duration = Duration::from_secs(1);
    c.request_timeout = Duration::from_millis(500);
    c.drain = Duration::from_secs(1);
    // Before the fix a publisher waited for the answer forever; the guard turns that into a
    // failure instead of a hung test.
    let report = tokio::time::timeout(wire::GUARD, load::run(c, |_| {}))
        .await
        .expect("the run ends by itself")
        .expect("the run");
    assert_eq!(report.published, 0, "{report:?}");
    assert!(report.publish_errors >= 1, "{report:?}");
    let error = report.publish_error.as_deref().expect("the first error");
    assert!(error.contains("no answer within"), "{error}");
    assert!(report.summary().contains("publish error: no answer"));
    task.abort();
    server.shutdown().await;
}
