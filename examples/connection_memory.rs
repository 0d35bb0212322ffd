//! Measures the server's resident memory per idle WebSocket session.
//!
//! Starts the `tether` binary built beside this example (`cargo build --release` first) as a
//! child process on 127.0.0.1, opens N sessions from this process with plain TCP sockets (a
//! hand-written upgrade and one masked `connect` frame each, so the client side holds no
//! WebSocket buffers), and reads the child's VmRSS from /proc before and after.
//!
//! ```sh
//! cargo build --release && cargo run --release --example connection_memory -- 1000 10000
//! cargo run --release --example connection_memory -- 1000 -- --write-buffer-bytes 128KiB
//! ```
//! Arguments: connection counts to measure, then `--` and extra `tether serve` flags.
//! Linux only (reads /proc).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tether::server::auth;
use tether::UserId;

const SECRET: &str = "connection-memory example secret, 32+ bytes";
const API_KEY: &str = "connection-memory-key";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let counts: Vec<usize> = args[..split]
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let counts = if counts.is_empty() {
        vec![1000]
    } else {
        counts
    };
    let extra = args.get(split + 1..).unwrap_or_default();

    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("tether"))
        .ok_or("cannot locate the tether binary")?;
    for &n in &counts {
        let (mut child, addr) = start(&bin, extra)?;
        let result = measure(child.id(), &addr, n);
        let _ = child.kill();
        let _ = child.wait();
        let (base, after, took) = result?;
        let per = after.saturating_sub(base) as f64 / n as f64;
        println!(
            "connections={n} extra_flags={extra:?} rss_before={} KiB rss_after={} KiB \
             per_connection={per:.0} B (opened in {:.1} s)",
            base / 1024,
            after / 1024,
            took.as_secs_f64()
        );
    }
    Ok(())
}

/// Starts the server on 127.0.0.1:0; returns it with the address it logged.
fn start(
    bin: &std::path::Path,
    extra: &[String],
) -> Result<(Child, String), Box<dyn std::error::Error>> {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"])
        .args(["--max-connections", "20000", "--idle-timeout", "10m"])
        .args(extra)
        .env("TETHER_JWT_SECRET", SECRET)
        .env("TETHER_API_KEY", API_KEY)
        .env("TETHER_LOG_FORMAT", "human")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(line) = lines.next() else { break };
        let line = line?;
        if let Some(at) = line.find("addr=") {
            let addr = line[at + 5..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned();
            // Keep draining the log so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Ok((child, addr));
        }
    }
    let _ = child.kill();
    Err("the server did not report its address".into())
}

fn rss_bytes(pid: u32) -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or("no VmRSS")?
        .parse()?;
    Ok(kib * 1024)
}

/// Opens `n` sessions and returns the server's RSS before and after, and how long it took.
fn measure(
    pid: u32,
    addr: &str,
    n: usize,
) -> Result<(u64, u64, Duration), Box<dyn std::error::Error>> {
    // One session first, so the runtime's lazily grown structures are in the baseline.
    let _warm = open_session(addr, 0)?;
    std::thread::sleep(Duration::from_millis(500));
    let base = rss_bytes(pid)?;
    let started = Instant::now();
    let mut sessions = Vec::with_capacity(n);
    for i in 1..=n {
        sessions.push(open_session(addr, i)?);
    }
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_bytes(pid)?;
    drop(sessions);
    Ok((base, after, took))
}

/// A WebSocket upgrade and a `connect` frame for user `mem-{i}`, then waits for `connected`.
fn open_session(addr: &str, i: usize) -> Result<TcpStream, Box<dyn std::error::Error>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!("upgrade refused: {}", String::from_utf8_lossy(&head)).into());
    }
    let user = UserId::new(format!("mem-{i}"))?;
    let token = auth::issue_token(SECRET, &user, None, SystemTime::now())?;
    let payload = format!("{{\"type\":\"connect\",\"token\":\"{token}\"}}");
    s.write_all(&masked_text_frame(payload.as_bytes()))?;
    // The `connected` frame: a 2- or 4-byte header and its payload.
    let mut hdr = [0u8; 2];
    s.read_exact(&mut hdr)?;
    let len = match hdr[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            s.read_exact(&mut ext)?;
            usize::from(u16::from_be_bytes(ext))
        }
        n => usize::from(n),
    };
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    if !body.starts_with(b"{\"type\":\"connected\"") {
        return Err(format!("not connected: {}", String::from_utf8_lossy(&body)).into());
    }
    Ok(s)
}

/// A client-to-server text frame (clients must mask); payloads here are under 64 KiB.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x81];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}
