//! Measures the time from a reconnect to the arrival of the last of 1,000 messages queued while
//! the user was away, over a real WebSocket (the original requirement: under 1 s).
//!
//! An in-process server on 127.0.0.1:0; for each of 30 rounds a fresh user gets 1,000 messages
//! of 64 B while away, then a client opens `/ws`, sends `connect` and reads until the 1,000th
//! message, acknowledging as it goes. Timed: from opening the TCP connection to the 1,000th
//! message. Prints the median and the maximum.
//!
//! ```sh
//! cargo run --release --example reconnect_backlog
//! ```

use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use tether::server::config::ServerConfig;
use tether::server::{auth, Server};
use tether::{Message, UserId};
use tokio_tungstenite::tungstenite::Message as Frame;

const SECRET: &str = "reconnect-backlog example secret, 32+ bytes";
const QUEUED: usize = 1000;
const ROUNDS: usize = 30;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = ServerConfig::parse_from(
        [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            "--api-key",
            "reconnect-backlog-key",
        ],
        [("", ""); 0],
    )?;
    let server = Server::start(config).await?;
    let url = format!("ws://{}/ws", server.local_addr());
    let payload = format!("\"{}\"", "x".repeat(62)); // 64 B of JSON
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let user = UserId::new(format!("backlog-{round}"))?;
        for _ in 0..QUEUED {
            server
                .engine()
                .send(&user, Message::new(payload.clone()))
                .await?;
        }
        server.engine().barrier().await;
        let token = auth::issue_token(SECRET, &user, None, SystemTime::now())?;
        let started = Instant::now();
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        ws.send(Frame::text(format!(
            "{{\"type\":\"connect\",\"token\":\"{token}\"}}"
        )))
        .await?;
        let mut received = 0;
        while received < QUEUED {
            let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await?
                .ok_or("connection closed")??;
            let Frame::Text(t) = frame else { continue };
            if t.as_str().starts_with("{\"type\":\"message\"") {
                received += 1;
                if received % 100 == 0 {
                    ws.send(Frame::text(format!(
                        "{{\"type\":\"ack\",\"seq\":{received}}}"
                    )))
                    .await?;
                }
            }
        }
        times.push(started.elapsed());
        ws.close(None).await.ok();
    }
    times.sort();
    println!(
        "reconnect to the last of {QUEUED} queued messages over WebSocket: median {:.2} ms, max {:.2} ms ({ROUNDS} rounds)",
        times[ROUNDS / 2].as_secs_f64() * 1e3,
        times[ROUNDS - 1].as_secs_f64() * 1e3
    );
    server.shutdown().await;
    Ok(())
}
