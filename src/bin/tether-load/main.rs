//! `tether-load`: drives WebSocket clients and HTTP publishers against a running tether
//! server for a bounded time, checks that every message arrived exactly once, and prints
//! throughput and publish-to-receive latency.
//!
//! ```text
//! tether serve --jwt-secret "$SECRET" --api-key "$KEY" &
//! tether-load --jwt-secret "$SECRET" --api-key "$KEY" --clients 100 --publishers 4 --duration 10s --json
//! ```
//!
//! The settings, fingerprints in place of the credentials, and a progress line once a second
//! go to stderr; the summary goes to stdout (with `--json`, also as one JSON line, last: the
//! report, or `{"error":{"kind","message","status"?}}` when the run could not run). Exit code
//! 0 for a clean run (no message duplicated or delivered to the wrong user, and no loss beyond
//! what the server reported evicting for that user), 1 if the run found a problem, 2 if it
//! could not run.
//!
//! # How it checks
//!
//! Each publisher numbers its messages per recipient (0, 1, 2, ...) and records which
//! numbers the server accepted (`delivered` or `queued`). Each message's `data` is
//! `{"r":<run id>,"u":<recipient>,"p":<publisher>,"n":<number>,"t":<µs since the run
//! started>,"pad":"..."}`; each client records the numbers it received per publisher in a
//! bitset, ignores messages of other runs (left in the mailboxes of the same `load-N` users
//! by an earlier, interrupted run), and counts a message stamped for another recipient as
//! misrouted rather than as its own. After publishing stops, a
//! drain period lets the last messages arrive (it ends early once everything accepted was
//! received). Then:
//!
//! - **lost**: accepted and never received. The server's overflow policy may drop queued
//!   messages when a client falls behind (`evicted`, from the publish outcomes); a loss
//!   beyond a recipient's own evictions is a bug (`lost_beyond_evicted`, per recipient, since
//!   one user's evictions cannot explain another user's losses);
//! - **misrouted**: received by a client the message was not addressed to (a bug);
//! - **duplicates**: received more than once (the client's contract is exactly once with
//!   auto-ack, reconnects included, so anything here is a bug);
//! - **unexpected**: received but not accepted (a publish whose HTTP answer was lost: see
//!   `publish_errors`; otherwise a bug);
//! - latency: publish-to-receive (same process, same monotonic clock), p50/p90/p99/max, in
//!   the engine's own histogram ([`tether::Histogram`]).
//!
//! # Why HTTP for publishing
//!
//! Publishers use `POST /api/publish` (or `/api/publish_batch` with `batch > 1`), the path a
//! service uses, rather than WebSocket `publish` frames, which the server refuses by default
//! and rate-limits per connection. Each publisher holds one keep-alive connection of hyper's
//! HTTP/1.1 client (the server's own HTTP library, so nothing is added), one request in
//! flight, each bounded by `--request-timeout`.
//!
//! # Layout
//!
//! `config.rs` (settings, errors), `run.rs` (one run, start to drain), `publisher.rs`,
//! `receiver.rs`, `report.rs` (the checks and the summary).

#![forbid(unsafe_code)]

mod config;
mod publisher;
mod receiver;
mod report;
mod run;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tether::server::config::{parse_duration, parse_size};

use config::LoadConfig;

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
    eprintln!("tether-load: {config:?}");
    let result = runtime.block_on(run::run(config, |p| {
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
            if args.json {
                println!("{}", e.to_json());
            }
            ExitCode::from(2)
        }
    }
}
