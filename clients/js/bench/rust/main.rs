//! How fast the Rust client takes a backlog: the Rust side of `bench/receive.js --backlog`.
//! N messages of the same shape and size (64 B of JSON) are queued for `bench-rust` through
//! `POST /api/publish_batch` while the user is away; then a `tether::client::Client` (auto-ack)
//! connects, and the rate is N / (connect to last message).
//!
//! ```sh
//! target/release/tether serve --listen 127.0.0.1:0 --jwt-secret "$S" --api-key "$K" \
//!     --max-messages-per-user 200000 --max-bytes-per-user 256MiB &
//! cd clients/js/bench/rust && CARGO_TARGET_DIR=../../../../target cargo run --release -- ADDR "$S" "$K" 100000
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

use tether::client::{Client, Event};
use tether::server::auth::issue_token;
use tether::UserId;

const USER: &str = "bench-rust";
// 256 messages of about 110 bytes: under the server's default 64 KiB body limit.
const BATCH: usize = 256;

/// One `POST /api/publish_batch` on its own connection; the count of accepted messages.
fn publish(addr: &str, key: &str, run: u64, from: usize, count: usize) -> usize {
    // `t` as bench/receive.js writes it (microseconds since 1970), so the sizes match.
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let messages: Vec<String> = (from..from + count)
        .map(|n| {
            format!(
                r#"{{"to":"{USER}","data":{{"r":{run},"u":0,"p":0,"n":{n},"t":{t},"pad":""}}}}"#
            )
        })
        .collect();
    let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
    let mut tcp = TcpStream::connect(addr).expect("connect to the server");
    write!(
        tcp,
        "POST /api/publish_batch HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer.matches(r#""outcome":"queued""#).count()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, secret, key, n] = &args[..] else {
        return Err("usage: backlog ADDR JWT_SECRET API_KEY N".into());
    };
    let n: usize = n.parse()?;
    let run = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_micros() as u64;
    let mut queued = 0;
    for from in (0..n).step_by(BATCH) {
        queued += publish(addr, key, run, from, BATCH.min(n - from));
    }
    let token = issue_token(secret, &UserId::new(USER)?, None, SystemTime::now())?;
    let began = Instant::now();
    let mut client = Client::builder(format!("ws://{addr}/ws"), token)
        .connect()
        .await?;
    let mut received = 0;
    let mut last = began;
    while received < queued {
        match tokio::time::timeout(Duration::from_secs(60), client.recv()).await?? {
            Event::Message(m) if m.data_str().contains(&format!(r#""r":{run},"#)) => {
                received += 1;
                last = Instant::now();
            }
            _ => {}
        }
    }
    client.close().await;
    let secs = (last - began).as_secs_f64();
    println!(
        r#"{{"mode":"backlog","client":"rust","published":{queued},"delivered":{received},"elapsed_secs":{secs},"delivery_rate":{}}}"#,
        received as f64 / secs
    );
    Ok(())
}
