//! The `tether` binary itself, as an operator runs it: `tether token` prints a token the
//! server accepts; `tether serve` with no secrets starts in development mode on
//! 127.0.0.1:0, prints working credentials, queues and delivers over the wire, and on SIGTERM
//! closes sessions with 1001, logs its shutdown report and exits with code 0.
#![cfg(all(feature = "server", unix))]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::harness::{request_bytes, try_http_raw, Raw, GUARD};
use serde_json::{json, Value};
use tether::server::auth::JwtVerifier;

const BIN: &str = env!("CARGO_BIN_EXE_tether");

/// `tether` with `args` and no `TETHER_*` variable from the environment that runs the tests.
pub(crate) fn tether(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TETHER_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The lines a child writes to one of its pipes, as they come.
pub(crate) fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads `lines` until one satisfies `pick`; panics (with what it read) after [`GUARD`].
pub(crate) fn wait_for<T>(
    lines: &mpsc::Receiver<String>,
    what: &str,
    mut pick: impl FnMut(&str) -> Option<T>,
) -> T {
    let deadline = Instant::now() + GUARD;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(found) = pick(&line) {
                    return found;
                }
                seen.push(line);
            }
            Err(_) => panic!("no {what} within {GUARD:?}; read:\n{}", seen.join("\n")),
        }
    }
}

/// Waits for the child to exit, at most [`GUARD`]; kills it and panics otherwise.
pub(crate) fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit within {GUARD:?} of SIGTERM");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child if the test fails before it exits on its own.
pub(crate) struct Reap(pub(crate) Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn token_prints_a_token_the_server_secret_verifies() {
    let secret = "a binary-test secret, at least 32 bytes";
    let out = tether(&[
        "token", "--user", "alice", "--secret", secret, "--ttl", "1h",
    ])
    .output()
    .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).expect("utf-8");
    let claims = JwtVerifier::new(secret)
        .expect("secret")
        .verify(token.trim(), SystemTime::now())
        .expect("the server accepts it");
    assert_eq!(claims.user.as_str(), "alice");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let exp = claims.expires_at.expect("--ttl sets exp");
    assert!(
        (now + 3500..=now + 3700).contains(&exp),
        "exp {exp}, now {now}"
    );
}

#[test]
fn token_refuses_bad_input_with_a_message_and_exit_code_1() {
    for (args, says) in [
        (vec!["token", "--user", "alice"], "no secret"),
        (
            vec!["token", "--user", "alice", "--secret", "short"],
            "secret",
        ),
        (
            vec![
                "token",
                "--user",
                "",
                "--secret",
                "a binary-test secret, at least 32 bytes",
            ],
            "invalid --user",
        ),
        (
            vec![
                "token",
                "--user",
                "alice",
                "--secret",
                "a binary-test secret, at least 32 bytes",
                "--ttl",
                "soon",
            ],
            "invalid --ttl",
        ),
    ] {
        let out = tether(&args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("tether: ") && stderr.contains(says),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed a token");
    }
}

#[test]
fn serve_in_development_mode_delivers_and_stops_cleanly_on_sigterm() {
    let mut child = tether(&["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stdout = lines_of(child.stdout.take().expect("stdout"));
    let stderr = lines_of(child.stderr.take().expect("stderr"));
    let mut child = Reap(child);

    // Logs are JSON lines on stderr; the listening line names the bound address.
    let addr: SocketAddr = wait_for(&stderr, "listening log line", |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["fields"]["message"] == "tether listening")
            .then(|| v["fields"]["addr"].as_str()?.parse().ok())?
    });
    // stdout carries the development credentials and a ready token for `demo`.
    let api_key = wait_for(&stdout, "printed API key", |line| {
        Some(line.trim().strip_prefix("TETHER_API_KEY=")?.to_owned())
    });
    wait_for(&stdout, "token heading", |line| {
        line.contains("token for user \"demo\"").then_some(())
    });
    let token = wait_for(&stdout, "demo token", |line| {
        let t = line.trim();
        (t.split('.').count() == 3).then(|| t.to_owned())
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // Published while demo is away: queued.
        let body = json!({"to": "demo", "data": {"text": "hello"}, "priority": "high"});
        let auth = format!("Bearer {api_key}");
        let request = request_bytes("POST", "/api/publish", Some(&auth), &body.to_string());
        let published = try_http_raw(addr, &request).await.expect("HTTP answer");
        assert_eq!(published.status, 200, "{}", published.body);
        assert_eq!(published.json()["outcome"], "queued");

        // demo connects with the printed token and receives it.
        let mut raw = Raw::open_at(addr).await;
        raw.send(json!({"type": "connect", "token": token})).await;
        let connected = raw.next().await;
        assert_eq!(
            (&connected["type"], &connected["user"]),
            (&json!("connected"), &json!("demo")),
            "{connected}"
        );
        let message = raw.next_message().await;
        assert_eq!(
            (message.seq, message.raw_data()),
            (1, r#"{"text":"hello"}"#)
        );
        raw.ack(1).await;

        // SIGTERM: the session is closed with 1001, then the process exits with 0.
        // The shell's own `kill`: no signal crate for one call.
        let killed = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", child.0.id())])
            .status()
            .expect("sh runs");
        assert!(killed.success());
        assert_eq!(raw.close_code().await, Some(1001));
    });
    let status = wait_exit(&mut child.0);
    assert_eq!(status.code(), Some(0), "{status:?}");
    let report: Value = wait_for(&stderr, "shutdown report", |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["fields"]["message"] == "tether stopped").then_some(v)
    });
    assert_eq!(report["fields"]["sessions_closed"], 1, "{report}");
}
