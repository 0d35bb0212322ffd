//! The dashboard, tested in a real browser: an in-process server with `--dashboard`, real
//! WebSocket sessions (one reading and acknowledging, two idle, one that stops reading until
//! its circuit breaker opens), users away with backlogs in several bands; then headless
//! Chromium loads `/dashboard`, runs its scripts, and the test reads what the page shows.
//!
//! Chromium is required where `TETHER_REQUIRE_BROWSER=1` (`.ci/test`, the suite's command, sets
//! it and installs Chromium): without it these tests fail and say how to install it
//! (`apt-get install -y chromium`; `TETHER_CHROMIUM` may name another binary). A plain
//! `cargo test` on a machine without Chromium skips them, each with a line that says so. The 1280x800
//! screenshot is saved as `target/dashboard.png`; with `TETHER_UPDATE_SCREENSHOT=1` it is also
//! copied to `docs/dashboard.png`, the picture the README shows.
#![cfg(all(feature = "server", unix))]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tether::server::config::ServerConfig;
use tether::server::Server;
use tether::{Message, Priority, UserId};

use crate::harness::{http, server, Raw, API_KEY, GUARD, SECRET};

/// How long one Chromium run may take before it is killed and the test fails.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(90);

/// Virtual milliseconds the page runs before its DOM is read: enough for six fetches and a
/// chart redraw (virtual time stands still while a fetch is pending).
const VIRTUAL_BUDGET_MS: u32 = 8000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_sessions_breakers_queues_and_charts_in_a_browser() {
    let Some(chromium) = chromium() else { return };
    let server = server(&[
        "--dashboard",
        "--write-timeout",
        "100ms",
        "--window",
        "32",
        "--max-frame-bytes",
        "1MiB",
    ])
    .await;
    let engine = server.engine().clone();
    let user = |name: &str| UserId::new(name).unwrap();

    // A reader that acknowledges everything, fed a steady trickle: rates and latencies.
    let (mut reader, _) = Raw::connect(&server, "reader", None).await;
    let reading = tokio::spawn(async move {
        while let Ok(frame) = reader.next_or_close().await {
            if frame["type"] == "message" {
                if let Some(seq) = frame["seq"].as_u64() {
                    reader.ack(seq).await;
                }
            }
        }
    });
    let trickle = tokio::spawn({
        let engine = engine.clone();
        async move {
            let to = UserId::new("reader").unwrap();
            for n in 0u64.. {
                let payload = format!("{{\"n\":{n}}}");
                if engine.send(&to, Message::new(payload)).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    });
    let (_idle_1, _) = Raw::connect(&server, "idle-1", None).await;
    let (_idle_2, _) = Raw::connect(&server, "idle-2", None).await;

    // Users away, with backlogs in every band.
    let backlog = [
        ("away-a", Priority::Critical, 3),
        ("away-a", Priority::Low, 2),
        ("away-b", Priority::Normal, 7),
        ("away-c", Priority::High, 1),
    ];
    for (name, priority, n) in backlog {
        for i in 0..n {
            let m = Message::new(format!("{{\"i\":{i}}}")).with_priority(priority);
            engine.send(&user(name), m).await.unwrap();
        }
    }

    // A client that never reads: 100 messages of 512 KiB, far more than the socket buffers
    // and the window of 32 hold, so writes time out and its breaker opens (as in
    // tests/wire_breaker.rs).
    let (stalled, _) = Raw::connect(&server, "stalled", None).await;
    let big = format!("\"{}\"", "y".repeat(512 * 1024));
    for _ in 0..100 {
        engine
            .send(&user("stalled"), Message::new(big.clone()))
            .await
            .unwrap();
    }

    // Wait until the breaker is open and listed, and the server's ring holds two intervals
    // with deliveries (its samples come every 5 s), so the latency chart has two points.
    let deadline = Instant::now() + GUARD * 2;
    let data = loop {
        engine.barrier().await;
        let d = dashboard_json(&server).await;
        let listed = d["breakers"]["open_sessions"]
            .as_array()
            .is_some_and(|l| l.iter().any(|o| o["user"] == "stalled"));
        let intervals = d["history"].as_array().map_or(0, |h| {
            h.iter()
                .filter(|p| p["enqueue_to_delivery"]["count"].as_u64() > Some(0))
                .count()
        });
        if listed && intervals >= 2 {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "never saw the open breaker and two sampled intervals: {d}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The endpoint agrees with the engine.
    assert_eq!(data["sessions"]["active"], 4, "{data}");
    let m = engine.metrics();
    assert!(m.counters.breaker_opens >= 1);
    let deepest = data["queues"]["deepest"].as_array().expect("a list");
    assert!(deepest.len() <= 10);
    for name in ["away-a", "away-b", "away-c"] {
        let stats = engine.mailbox_stats(&user(name)).await.expect("a mailbox");
        let shown = deepest
            .iter()
            .find(|u| u["user"] == name)
            .unwrap_or_else(|| panic!("{name} among the deepest: {data}"));
        assert_eq!(shown["queued"].as_u64(), Some(stats.queued() as u64));
        assert_eq!(
            shown["queued_bytes"].as_u64(),
            Some(stats.queued_bytes as u64)
        );
    }
    assert_eq!(data["queues"]["bands"]["critical"], 3);
    assert_eq!(data["queues"]["bands"]["high"], 1);
    assert_eq!(data["queues"]["bands"]["low"], 2);

    // The page, after its scripts ran.
    let url = format!("http://{}/dashboard", server.local_addr());
    let dom = run_chromium(
        &chromium,
        &[
            format!("--virtual-time-budget={VIRTUAL_BUDGET_MS}"),
            "--dump-dom".into(),
        ],
        &url,
    )
    .await;
    let stdout = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        stdout.contains("id=\"card-sessions\""),
        "Chromium printed no dashboard: {}",
        dom.describe()
    );
    let page = Dom(&stdout);
    assert_eq!(
        page.attr("<body", "data-state").as_deref(),
        Some("ok"),
        "{stdout}"
    );
    let fetches: u32 = page.number("<body", "data-fetches");
    assert!(fetches >= 2, "the page polled: {fetches}");
    assert_eq!(page.attr("<body", "data-layout").as_deref(), Some("wide"));

    assert_eq!(page.value("sessions-active"), 4, "active sessions shown");
    assert!(page.value("ws-connections") >= 4);

    // The tripped breaker: counted, lit, and listed as open with a red indicator. It stays
    // Open: its delivery window is full of messages it never acknowledges, so no trial can
    // start after the cooldown (`each_listed_session_is_coloured_by_its_state` checks the
    // yellow of a half-open one).
    let (open, half_open) = (
        page.value("breakers-open"),
        page.value("breakers-half-open"),
    );
    assert!(open >= 1, "open {open}, half-open {half_open}");
    let lit = |id: &str| page.attr(&format!("id=\"{id}\""), "data-active");
    assert_eq!(
        lit("breaker-dot-open").as_deref(),
        Some("true"),
        "the red indicator is lit"
    );
    let list = page.section("id=\"open-breakers\"", "</ul>");
    let item = Dom(list).attr("data-user=\"stalled\"", "data-user");
    assert_eq!(
        item.as_deref(),
        Some("stalled"),
        "the stalled session listed: {list}"
    );
    let row = Dom(Dom(list).section("<li data-user=\"stalled\"", "</li>"));
    assert_eq!(
        (
            row.attr("<li", "data-state").as_deref(),
            row.attr("class=\"dot", "class").as_deref(),
            row.attr("class=\"dot", "data-color").as_deref(),
        ),
        (Some("open"), Some("dot red"), Some("red")),
        "the stalled session's row is red (Open): {list}"
    );
    assert!(page.value("breakers-closed") >= 3, "the other sessions");

    // Queue depths: the bands and the deepest mailboxes match the engine.
    assert_eq!(page.value("queue-critical"), 3);
    assert_eq!(page.value("queue-high"), 1);
    assert_eq!(page.value("queue-low"), 2);
    assert!(page.value("queue-normal") >= 7);
    assert!(page.value("queue-total") >= 13);
    // Every user here has one device, so users and device mailboxes agree with the engine.
    let gauges = engine.metrics().gauges;
    assert_eq!(page.value("queue-users"), gauges.users);
    assert_eq!(page.value("queue-mailboxes"), gauges.mailboxes);
    let table = page.section("id=\"deepest\"", "</tbody>");
    for name in ["away-a", "away-b", "away-c"] {
        let stats = engine.mailbox_stats(&user(name)).await.expect("a mailbox");
        assert!(stats.queued() > 0);
        let row = format!("data-user=\"{name}\"");
        let table = Dom(table);
        assert_eq!(
            table.number::<usize>(&row, "data-queued"),
            stats.queued(),
            "{name}"
        );
        assert_eq!(
            table.number::<usize>(&row, "data-bytes"),
            stats.queued_bytes,
            "{name}"
        );
    }

    // Charts with data: a line of at least two points each.
    for series in ["held-bytes", "enqueue-to-delivery-p50", "sent"] {
        let needle = format!("data-series=\"{series}\"");
        let n: usize = page.number(&needle, "data-points");
        let points = page.attr(&needle, "points").unwrap_or_default();
        assert!(
            n >= 2 && points.split(' ').filter(|p| p.contains(',')).count() == n,
            "{series}: {n} points ({points})"
        );
    }
    assert!(page.attr("id=\"mem-rss\"", "data-value").is_some());

    // A screenshot at 1280x800, the test's artifact (and the README's picture on request).
    let png = target_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let shot = run_chromium(
        &chromium,
        &[
            format!("--virtual-time-budget={VIRTUAL_BUDGET_MS}"),
            "--window-size=1280,800".into(),
            format!("--screenshot={}", png.display()),
        ],
        &url,
    )
    .await;
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {}: {e}; {}",
            png.display(),
            shot.describe()
        )
    });
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000);
    if std::env::var_os("TETHER_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
        std::fs::copy(&png, &docs).expect("copy the screenshot to docs/");
    }

    // At phone width the page switches to one column.
    let phone = run_chromium(
        &chromium,
        &[
            "--virtual-time-budget=2000".into(),
            "--window-size=390,844".into(),
            "--dump-dom".into(),
        ],
        &url,
    )
    .await;
    let phone_dom = String::from_utf8_lossy(&phone.stdout).into_owned();
    assert_eq!(
        Dom(&phone_dom).attr("<body", "data-layout").as_deref(),
        Some("narrow"),
        "{}",
        phone.describe()
    );

    trickle.abort();
    drop(stalled);
    server.shutdown().await;
    reading.abort();
}

#[tokio::test]
async fn the_dashboard_is_served_only_when_enabled() {
    let off = server(&[]).await;
    for path in ["/dashboard", "/api/dashboard"] {
        assert_eq!(
            http(&off, "GET", path, None, "").await.status,
            404,
            "{path}"
        );
    }
    let on = server(&["--dashboard"]).await;
    let page = http(&on, "GET", "/dashboard", None, "").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"));
    assert!(page.body.contains("id=\"chart-latency\""));
    assert_eq!(
        http(&on, "POST", "/api/dashboard", None, "").await.status,
        405
    );
    let bad = http(&on, "GET", "/api/dashboard?since=yesterday", None, "").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let data = http(&on, "GET", "/api/dashboard", None, "").await;
    assert_eq!(data.status, 200, "on loopback no key is needed");
    assert_eq!(data.header("cache-control"), Some("no-store"));
    let d = data.json();
    for key in [
        "sessions", "breakers", "retry", "queues", "messages", "memory", "server", "history",
    ] {
        assert!(d.get(key).is_some(), "{key} in {d}");
    }
    assert_eq!(d["sessions"]["active"], 0);
    assert_eq!(d["version"], 1);
}

#[tokio::test]
async fn off_loopback_the_data_needs_the_api_key_in_a_header() {
    // Listening on every interface: the key is needed, even from this machine.
    let config = ServerConfig::parse_from(
        [
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--dashboard",
        ],
        [("", ""); 0],
    )
    .unwrap();
    let server = Server::start(config).await.unwrap();
    let port = server.local_addr().port();
    let local = format!("127.0.0.1:{port}");
    let get = |path: &'static str, host: String, auth: Option<String>| {
        let local = local.clone();
        async move { raw_get(&local, path, &host, auth.as_deref()).await }
    };
    let (status, _) = get("/dashboard", local.clone(), None).await;
    assert_eq!(status, 200, "the page holds no data");
    let (status, head) = get("/api/dashboard", local.clone(), None).await;
    assert_eq!(status, 401);
    assert!(head
        .to_ascii_lowercase()
        .contains("www-authenticate: bearer"));
    let wrong = Some("Bearer not-the-key-at-all".to_owned());
    assert_eq!(get("/api/dashboard", local.clone(), wrong).await.0, 401);
    let right = Some(format!("Bearer {API_KEY}"));
    assert_eq!(get("/api/dashboard", local.clone(), right).await.0, 200);
    server.shutdown().await;

    // On loopback, a request whose Host is not a loopback name (a page that rebound its own
    // name to 127.0.0.1) needs the key too.
    let server = server_on_loopback().await;
    let local = server.local_addr().to_string();
    let (status, _) = raw_get(&local, "/api/dashboard", "evil.example:80", None).await;
    assert_eq!(status, 401);
    let auth = format!("Bearer {API_KEY}");
    let (status, _) = raw_get(&local, "/api/dashboard", "evil.example:80", Some(&auth)).await;
    assert_eq!(status, 200);
    let (status, _) = raw_get(&local, "/api/dashboard", "localhost", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn through_a_proxy_on_this_machine_the_data_needs_the_api_key() {
    // A reverse proxy on the same machine connects from loopback and may send a loopback
    // Host (nginx's default is the upstream's address): its proxy headers give it away.
    let server = server_on_loopback().await;
    let local = server.local_addr().to_string();
    let auth = format!("Authorization: Bearer {API_KEY}");
    for proxy in [
        "Forwarded: for=203.0.113.7;proto=https",
        "X-Forwarded-For: 203.0.113.7",
        "X-Forwarded-Host: tether.example.com",
        "X-Forwarded-Proto: https",
        "X-Real-IP: 203.0.113.7",
    ] {
        let (status, _) = raw_get_with(&local, "/api/dashboard", &local, &[proxy]).await;
        assert_eq!(status, 401, "{proxy}");
        let (status, _) = raw_get_with(&local, "/api/dashboard", &local, &[proxy, &auth]).await;
        assert_eq!(status, 200, "{proxy} with the key");
    }
    let (status, _) = raw_get_with(&local, "/api/dashboard", &local, &[""; 0]).await;
    assert_eq!(status, 200, "direct, no proxy header");
    // `[::1]` followed by anything but a port is not a loopback Host.
    let (status, _) = raw_get(&local, "/api/dashboard", "[::1].evil.example", None).await;
    assert_ne!(status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_the_page_cannot_draw_shows_an_error_and_polling_goes_on() {
    let Some(chromium) = chromium() else { return };
    let real = server(&["--dashboard"]).await;
    let good = dashboard_json(&real).await;
    // Not a list where the page expects one: drawing it throws.
    let mut bad = good.clone();
    bad["breakers"]["open_sessions"] = Value::from(5);
    let fake = FakeDashboard::start(&real, vec![bad, good]).await;
    let url = format!("http://{}/dashboard", fake.addr);
    let dom = run_chromium(
        &chromium,
        &[
            format!("--virtual-time-budget={VIRTUAL_BUDGET_MS}"),
            "--dump-dom".into(),
        ],
        &url,
    )
    .await;
    let stdout = String::from_utf8_lossy(&dom.stdout).into_owned();
    let page = Dom(&stdout);
    let polled = fake.data_requests.load(Ordering::Relaxed);
    // Before the fix the exception skipped the next poll: one request, and "connecting…".
    assert!(
        polled >= 3,
        "the page kept polling: {polled} requests; {}",
        dom.describe()
    );
    assert_eq!(page.number::<u32>("<body", "data-errors"), 1, "{stdout}");
    assert_eq!(
        page.attr("<body", "data-state").as_deref(),
        Some("ok"),
        "{stdout}"
    );
    fake.task.abort();
    real.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listed_session_is_coloured_by_its_state() {
    let Some(chromium) = chromium() else { return };
    let real = server(&["--dashboard"]).await;
    let mut data = dashboard_json(&real).await;
    data["breakers"]["open"] = Value::from(1);
    data["breakers"]["half_open"] = Value::from(1);
    data["breakers"]["open_sessions"] = serde_json::json!([
        {"user": "tripped", "state": "open", "since_ms": 1, "open_for_ms": 2000},
        {"user": "trying", "state": "half_open", "since_ms": 2, "open_for_ms": 1000},
    ]);
    data["breakers"]["open_sessions_tracked"] = Value::from(2);
    let fake = FakeDashboard::start(&real, vec![data]).await;
    let url = format!("http://{}/dashboard", fake.addr);
    let dom = run_chromium(
        &chromium,
        &["--virtual-time-budget=2000".into(), "--dump-dom".into()],
        &url,
    )
    .await;
    let stdout = String::from_utf8_lossy(&dom.stdout).into_owned();
    let list = Dom(&stdout).section("id=\"open-breakers\"", "</ul>");
    let dot_of = |user: &str| {
        let row = Dom(list).section(&format!("<li data-user=\"{user}\""), "</li>");
        let dot = Dom(row);
        (
            dot.attr("<li", "data-state"),
            dot.attr("class=\"dot", "class"),
            dot.attr("class=\"dot", "data-color"),
        )
    };
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        dot_of("tripped"),
        (some("open"), some("dot red"), some("red")),
        "{list}"
    );
    assert_eq!(
        dot_of("trying"),
        (some("half-open"), some("dot yellow"), some("yellow")),
        "{list}"
    );
    fake.task.abort();
    real.shutdown().await;
}

/// A stand-in for the server on 127.0.0.1:0: the real page (with the real server's CSP) at
/// `/dashboard`, and `/api/dashboard` answering the given bodies in turn, the last one for
/// every later request.
struct FakeDashboard {
    addr: std::net::SocketAddr,
    data_requests: std::sync::Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeDashboard {
    async fn start(real: &Server, bodies: Vec<Value>) -> FakeDashboard {
        let page = http(real, "GET", "/dashboard", None, "").await;
        let csp = page
            .header("content-security-policy")
            .expect("a CSP")
            .to_owned();
        let html = std::sync::Arc::new(page.body);
        let bodies: std::sync::Arc<Vec<String>> =
            std::sync::Arc::new(bodies.iter().map(Value::to_string).collect());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data_requests = std::sync::Arc::new(AtomicUsize::new(0));
        let count = data_requests.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let (html, csp, bodies, count) =
                    (html.clone(), csp.clone(), bodies.clone(), count.clone());
                conns.spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split(' ').nth(1).unwrap_or("");
                    let (status, kind, body, extra) = if path == "/dashboard" {
                        let extra = format!("Content-Security-Policy: {csp}\r\n");
                        (
                            200,
                            "text/html; charset=utf-8",
                            html.as_str().to_owned(),
                            extra,
                        )
                    } else if path.starts_with("/api/dashboard") {
                        let n = count.fetch_add(1, Ordering::Relaxed);
                        let body = bodies[n.min(bodies.len() - 1)].clone();
                        (200, "application/json", body, String::new())
                    } else {
                        (404, "text/plain", "not found".to_owned(), String::new())
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                         Cache-Control: no-store\r\n{extra}Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(response.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        FakeDashboard {
            addr,
            data_requests,
            task,
        }
    }
}

async fn server_on_loopback() -> Server {
    server(&["--dashboard"]).await
}

/// `GET path` with this `Host`: status and response head.
async fn raw_get(addr: &str, path: &str, host: &str, auth: Option<&str>) -> (u16, String) {
    let auth = auth.map(|a| format!("Authorization: {a}"));
    raw_get_with(addr, path, host, auth.as_slice()).await
}

/// `GET path` with this `Host` and these header lines: status and response head.
async fn raw_get_with(
    addr: &str,
    path: &str,
    host: &str,
    headers: &[impl AsRef<str>],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h.as_ref());
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut raw))
        .await
        .expect("hang guard")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

async fn dashboard_json(server: &Server) -> Value {
    let r = http(server, "GET", "/api/dashboard", None, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The Chromium binary: `TETHER_CHROMIUM`, else `chromium` (Debian's, /usr/bin/chromium).
/// Fails the test when there is none: a browser test that skips itself proves nothing.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TETHER_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in on_path
        .iter()
        .map(PathBuf::as_path)
        .chain([Path::new("/usr/bin")])
    {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let how = "Install it with `apt-get install -y chromium` (Debian/Ubuntu; `bash .ci/test` \
               does this), or point TETHER_CHROMIUM at a Chromium or Chrome binary.";
    // A browser test that passes without a browser proves nothing: where the suite's own
    // command runs, its absence is a failure.
    assert!(
        std::env::var_os("TETHER_REQUIRE_BROWSER").is_none(),
        "this test drives a real browser and Chromium is not installed. {how}"
    );
    eprintln!("SKIPPED: dashboard browser test: Chromium is not installed. {how}");
    None
}

struct Run {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<std::process::ExitStatus>,
}

impl Run {
    fn describe(&self) -> String {
        let err = String::from_utf8_lossy(&self.stderr);
        let tail: Vec<_> = err.lines().rev().take(15).collect();
        format!(
            "chromium exited with {:?}; stderr (last lines, newest first):\n{}",
            self.status,
            tail.join("\n")
        )
    }
}

/// Runs headless Chromium on `url` with a fresh profile and `extra` flags, in its own
/// process group, for at most [`CHROMIUM_LIMIT`]; then kills what is left of the group.
async fn run_chromium(bin: &Path, extra: &[String], url: &str) -> Run {
    let (bin, extra, url) = (bin.to_owned(), extra.to_vec(), url.to_owned());
    tokio::task::spawn_blocking(move || run_chromium_blocking(&bin, &extra, &url))
        .await
        .expect("the chromium runner")
}

fn run_chromium_blocking(bin: &Path, extra: &[String], url: &str) -> Run {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let profile = std::env::temp_dir().join(format!(
        "tether-chromium-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile).expect("a profile directory");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--mute-audio",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start Chromium at {}: {e}. Install it with `apt-get install -y \
                 chromium`, or point TETHER_CHROMIUM at a Chromium or Chrome binary.",
                bin.display()
            )
        });
    let group = child.id();
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + CHROMIUM_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => break None,
        }
    };
    // Chromium's helper processes share its group: end them all, whether it finished or not.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let run = Run {
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        status,
    };
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        run.status.is_some(),
        "chromium did not finish within {CHROMIUM_LIMIT:?} and was killed; {}",
        run.describe()
    );
    run
}

/// Where cargo builds: `CARGO_TARGET_DIR`, else `target/` beside Cargo.toml.
fn target_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&dir).expect("the target directory");
    dir
}

/// Just enough of a serialised DOM to read attributes of the tags the test names.
#[derive(Clone, Copy)]
struct Dom<'a>(&'a str);

impl<'a> Dom<'a> {
    /// The start tag that contains `needle` (e.g. `id="x"`, or `<body`).
    fn tag(&self, needle: &str) -> Option<&'a str> {
        let at = self.0.find(needle)?;
        let start = self.0[..=at].rfind('<')?;
        let end = at + self.0[at..].find('>')?;
        Some(&self.0[start..=end])
    }

    fn attr(&self, needle: &str, name: &str) -> Option<String> {
        let tag = self.tag(needle)?;
        let pattern = format!(" {name}=\"");
        let from = tag.find(&pattern)? + pattern.len();
        let len = tag[from..].find('"')?;
        Some(tag[from..from + len].replace("&amp;", "&"))
    }

    /// An attribute parsed as a number; panics (failing the test) if missing or not one.
    fn number<T: std::str::FromStr>(&self, needle: &str, name: &str) -> T {
        let text = self.attr(needle, name);
        text.as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{name} of the tag with {needle}: {text:?}"))
    }

    /// The `data-value` of the element with this id, as a whole number.
    fn value(&self, id: &str) -> u64 {
        self.number(&format!("id=\"{id}\""), "data-value")
    }

    /// The text from `start` to the next `end`.
    fn section(&self, start: &str, end: &str) -> &'a str {
        let from = self
            .0
            .find(start)
            .unwrap_or_else(|| panic!("{start} in the page"));
        let len = self.0[from..].find(end).unwrap_or(self.0.len() - from);
        &self.0[from..from + len]
    }
}
