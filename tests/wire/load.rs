//! The load generator (the `tether-load` binary) against an in-process server on 127.0.0.1:0:
//! every message checked, with random disconnects and resumes; what it found is read back
//! from its `--json` line, its exit code and its stderr.
#![cfg(all(feature = "server", feature = "client"))]

use crate::harness;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tether::server::Server;

use crate::harness::{API_KEY, SECRET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

async fn start() -> Server {
    harness::server(&[]).await
}

/// What one run of the binary left behind.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The last line of stdout: the report, or the error, as JSON.
    fn json(&self) -> Value {
        let last = self
            .stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("{self}"));
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {self}"))
    }

    /// The report's field `name`, which must be an unsigned integer.
    fn count(&self, name: &str) -> u64 {
        self.json()[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: {self}"))
    }

    /// True if the run found nothing wrong (the binary's exit code 0).
    fn is_clean(&self) -> bool {
        self.status.code() == Some(0)
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `tether-load` against `url` with `args`, and the test credentials unless `args` has
/// its own. The run must end by itself within [`harness::GUARD`]; past that it is killed and the
/// test fails.
async fn load(url: String, args: &[&str]) -> Run {
    let mut all = vec!["--url".to_owned(), url];
    for (flag, value) in [("--api-key", API_KEY), ("--jwt-secret", SECRET)] {
        if !args.contains(&flag) {
            all.extend([flag.to_owned(), value.to_owned()]);
        }
    }
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether-load"))
            .args(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tether-load starts");
        // Read both pipes while waiting, so a full pipe never stalls the child.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_string(&mut text);
                }
                text
            })
        };
        let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
        let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
        let deadline = Instant::now() + harness::GUARD;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tether-load did not end within {:?}", harness::GUARD);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            status,
            stdout: stdout.join().expect("stdout"),
            stderr: stderr.join().expect("stderr"),
        }
    })
    .await
    .expect("join")
}

fn url(server: &Server) -> String {
    format!("ws://{}", server.local_addr())
}

/// The settings every run here starts from (4 clients, 2 publishers, 2 s, drain up to 10 s,
/// `--json`), with `extra` flags and values in place of those or added.
fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<&'a str> {
    let mut flags = vec![
        ("--clients", "4"),
        ("--publishers", "2"),
        ("--duration", "2s"),
        ("--drain", "10s"),
    ];
    for &(flag, value) in extra {
        match flags.iter_mut().find(|(f, _)| *f == flag) {
            Some(slot) => slot.1 = value,
            None => flags.push((flag, value)),
        }
    }
    let mut args: Vec<&str> = flags.into_iter().flat_map(|(f, v)| [f, v]).collect();
    args.push("--json");
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_once_through_random_disconnects() {
    let server = start().await;
    let run = load(
        url(&server),
        &with(&[("--disconnect-every", "200ms"), ("--payload-bytes", "256")]),
    )
    .await;
    println!("{}", run.stdout);
    assert!(run.count("delivered") > 0, "{run}");
    assert_eq!(run.count("lost"), 0, "{run}");
    assert_eq!(run.count("duplicates"), 0, "{run}");
    assert_eq!(run.count("unexpected"), 0, "{run}");
    assert_eq!(run.count("delivered"), run.count("published"), "{run}");
    assert_eq!(run.json()["errors"], Value::Array(vec![]), "{run}");
    assert!(run.count("reconnects") > 0, "{run}");
    assert!(run.is_clean(), "{run}");
    let ticks = run
        .stderr
        .lines()
        .filter(|l| l.starts_with('[') && l.contains("published"))
        .count();
    assert!(ticks > 0, "progress was reported: {run}");
    let json = run.json();
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
    let run = load(
        url(&server),
        &with(&[
            ("--batch", "16"),
            ("--messages", "1000"),
            ("--duration", "30s"),
        ]),
    )
    .await;
    assert_eq!(run.count("published"), 1000, "{run}");
    assert_eq!(run.count("delivered"), 1000, "{run}");
    assert!(run.is_clean(), "{run}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_to_the_overflow_policy_are_attributed_to_evictions() {
    // Tiny caps: the publishers outrun the client, and DropOldest evicts queued messages.
    let server = harness::server(&["--window", "4", "--max-messages-per-user", "5"]).await;
    let run = load(
        url(&server),
        &with(&[
            ("--clients", "1"),
            ("--batch", "32"),
            ("--duration", "500ms"),
        ]),
    )
    .await;
    assert!(run.count("lost") <= run.count("evicted"), "{run}");
    assert_eq!(
        run.count("delivered") + run.count("lost"),
        run.count("published"),
        "{run}"
    );
    assert_eq!(
        (run.count("duplicates"), run.count("unexpected")),
        (0, 0),
        "{run}"
    );
    assert!(run.is_clean(), "{run}");
    // A second run on the same users ignores whatever the first left queued.
    let run = load(
        url(&server),
        &with(&[
            ("--clients", "1"),
            ("--duration", "300ms"),
            ("--messages", "3"),
        ]),
    )
    .await;
    assert_eq!((run.count("delivered"), run.count("lost")), (3, 0), "{run}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_targets_and_wrong_keys_are_refused() {
    // TEST-NET-1: refused before any connection is attempted.
    let run = load("ws://192.0.2.1:7700".into(), &["--json"]).await;
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert_eq!(run.json()["error"]["kind"], "remote", "{run}");

    let server = start().await;
    let run = load(
        url(&server),
        &with(&[("--api-key", "not-the-api-key-at-all")]),
    )
    .await;
    assert_eq!(run.status.code(), Some(2), "{run}");
    let error = &run.json()["error"];
    assert_eq!(
        (error["kind"].as_str(), error["status"].as_u64()),
        (Some("publish"), Some(401)),
        "{run}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_a_json_summary() {
    let server = start().await;
    let run = load(
        url(&server),
        &[
            "--clients",
            "2",
            "--publishers",
            "1",
            "--duration",
            "1s",
            "--json",
        ],
    )
    .await;
    assert!(run.status.success(), "{run}");
    let json = run.json();
    assert_eq!(
        (json["clients"].as_u64(), json["lost"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(json["delivered"].as_u64() > Some(0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_never_shows_the_credentials() {
    // Nothing listens on port 1: the run stops at the first client, after printing its
    // settings.
    let run = load("ws://127.0.0.1:1".into(), &["--clients", "1", "--json"]).await;
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert_eq!(run.json()["error"]["kind"], "connect", "{run}");
    let text = format!("{} {}", run.stdout, run.stderr);
    assert!(!text.contains(API_KEY), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(run.stderr.contains("127.0.0.1:1"), "{text}");
    assert!(
        run.stderr.contains(&tether::protocol::fingerprint(API_KEY)),
        "{text}"
    );
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
    // Before the fix a publisher waited for the answer forever; `load` turns that into a
    // failure instead of a hung test.
    let run = load(
        format!("ws://{front}"),
        &[
            "--clients",
            "2",
            "--publishers",
            "2",
            "--duration",
            "1s",
            "--request-timeout",
            "500ms",
            "--drain",
            "1s",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.count("published"), 0, "{run}");
    assert!(run.count("publish_errors") >= 1, "{run}");
    let error = run.json()["publish_error"]
        .as_str()
        .unwrap_or_else(|| panic!("the first error: {run}"))
        .to_owned();
    assert!(error.contains("no answer within"), "{error}");
    assert!(run.stdout.contains("publish error: no answer"), "{run}");
    task.abort();
    server.shutdown().await;
}
