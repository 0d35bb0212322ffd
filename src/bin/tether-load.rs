//! `tether-load`: drives WebSocket clients and HTTP publishers against a running tether
//! server for a bounded time, checks that every message arrived exactly once, and prints
//! throughput and publish-to-receive latency (see `tether::client::load`).
//!
//! ```text
//! tether serve --jwt-secret "$SECRET" --api-key "$KEY" &
//! tether-load --jwt-secret "$SECRET" --api-key "$KEY" --clients 100 --publishers 4 --duration 10s --json
//! ```
//!
//! A progress line goes to stderr once a second; the summary goes to stdout (with `--json`,
//! also as one JSON line, last). Exit code 0 for a clean run (no message duplicated or
//! delivered to the wrong user, and no loss beyond what the server reported evicting for that
//! user), 1 if the run found a problem, 2 if it could not run.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tether::client::load::{self, LoadConfig};
use tether::server::config::{parse_duration, parse_size};

/// Load generator for a tether server: N WebSocket clients (users load-0..N-1, tokens minted
/// with the JWT secret) and M publishers (POST /api/publish with the API key).
#[derive(Parser)]
#[command(name = "tether-load", version)]
struct Args {
    /// The server's WebSocket URL; publishes go to the same host and port.
    #[arg(long, default_value = "ws://127.0.0.1:7700")]
    url: String,
    /// API key of the HTTP publish API [env: TETHER_API_KEY]
    #[arg(long)]
    api_key: Option<String>,
    /// The server's JWT secret, to mint client tokens [env: TETHER_JWT_SECRET]
    #[arg(long)]
    jwt_secret: Option<String>,
    /// WebSocket clients, one user each.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Publishers, one HTTP keep-alive connection each.
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many messages in all.
    #[arg(long)]
    messages: Option<u64>,
    /// Cap on messages per second, all publishers together.
    #[arg(long)]
    rate: Option<u64>,
    /// Approximate size of each message's data (e.g. 64, 1KiB).
    #[arg(long, default_value = "64", value_parser = parse_size)]
    payload_bytes: usize,
    /// Messages per publish request (> 1 uses /api/publish_batch).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Drop one random client's connection this often (it reconnects and resumes).
    #[arg(long, value_parser = parse_duration)]
    disconnect_every: Option<Duration>,
    /// Longest wait for the last messages after publishing stops.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain: Duration,
    /// Longest time one publish request may take; one without an answer by then counts as
    /// a publish error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// Also print the summary as one JSON line.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (Some(api_key), Some(jwt_secret)) = (
        args.api_key
            .or_else(|| std::env::var("TETHER_API_KEY").ok()),
        args.jwt_secret
            .or_else(|| std::env::var("TETHER_JWT_SECRET").ok()),
    ) else {
        eprintln!("tether-load: --api-key and --jwt-secret are required (or TETHER_API_KEY, TETHER_JWT_SECRET)");
        return ExitCode::from(2);
    };
    let mut config = LoadConfig::new(args.url, api_key, jwt_secret);
    config.clients = args.clients;
    config.publishers = args.publishers;
    config.duration = args.duration;
    config.messages = args.messages;
    config.rate = args.rate;
    config.payload_bytes = args.payload_bytes;
    config.batch = args.batch;
    config.disconnect_every = args.disconnect_every;
    config.drain = args.drain;
    config.request_timeout = args.request_timeout;
    config.allow_remote = args.allow_remote;

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(load::run(config, |p| {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}", p.line());
    }));
    match result {
        Ok(report) => {
            println!("{}", report.summary());
            if args.json {
                println!("{}", report.to_json());
            }
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("tether-load: {e}");
            ExitCode::from(2)
        }
    }
}
