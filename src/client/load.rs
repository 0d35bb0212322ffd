//! The load generator behind the `tether-load` binary: N WebSocket clients
//! ([`Client`], auto-ack) and M publishers against a running server, for a
//! bounded time and count, checking every message.
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
//! - latency: publish-to-receive (same process, same monotonic clock), p50/p90/p99/max.
//!
//! # Why HTTP for publishing
//!
//! Publishers use `POST /api/publish` (or `/api/publish_batch` with `batch > 1`), the path a
//! service uses, rather than WebSocket `publish` frames, which the server refuses by default
//! and rate-limits per connection. The HTTP client is a minimal HTTP/1.1 one over a tokio
//! `TcpStream` with keep-alive, one request in flight per publisher, so it adds no
//! dependency.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::{decode_publish_outcome, parse_url, Client, Event, PublishOutcome};
use crate::server::auth::{fingerprint, issue_token};
use crate::{Backoff, UserId};

/// Largest payload a run may ask for: the server's default frame limit is 64 KiB.
const MAX_PAYLOAD: usize = 1 << 20;
/// Largest HTTP response head and body the publisher reads.
const MAX_HEAD: u64 = 16 * 1024;
const MAX_BODY: usize = 4 << 20;
/// Error strings kept in the report.
const MAX_ERRORS: usize = 10;

/// What to run. Build with [`LoadConfig::new`] and set the fields.
///
/// Its `Debug` output shows fingerprints of the API key and the JWT secret (the first 8 hex
/// digits of their SHA-256), never the secrets.
#[derive(Clone)]
pub struct LoadConfig {
    /// The server, `ws://host:port` (the WebSocket path defaults to `/ws`; publishes go to
    /// the same host and port). Default `ws://127.0.0.1:7700`.
    pub url: String,
    /// The HTTP publish API key.
    pub api_key: String,
    /// The server's JWT secret, to mint tokens for the users `load-0` .. `load-<N-1>`.
    pub jwt_secret: String,
    /// WebSocket clients, one user each. Default 10.
    pub clients: usize,
    /// Publishers, one HTTP connection each. Default 2.
    pub publishers: usize,
    /// How long to publish. Default 10 s.
    pub duration: Duration,
    /// Stop after this many messages in all (whichever of this and `duration` comes first).
    pub messages: Option<u64>,
    /// Cap on messages per second, all publishers together. Default: as fast as answers come.
    pub rate: Option<u64>,
    /// Approximate size of each message's `data`, in bytes. Default 64.
    pub payload_bytes: usize,
    /// Messages per HTTP request (> 1 uses `/api/publish_batch`). Default 1.
    pub batch: usize,
    /// Every this long, drop one random client's connection (it reconnects and resumes).
    pub disconnect_every: Option<Duration>,
    /// Longest wait after publishing for the last messages. Default 5 s.
    pub drain: Duration,
    /// Longest time one publish request may take, connecting included; a request without an
    /// answer by then counts as a publish error. Default 5 s.
    pub request_timeout: Duration,
    /// Allow a target that is not a loopback address. Default false.
    pub allow_remote: bool,
    /// User id prefix. Default `load-`.
    pub user_prefix: String,
}

impl LoadConfig {
    /// The defaults, with the credentials.
    pub fn new(
        url: impl Into<String>,
        api_key: impl Into<String>,
        jwt_secret: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            api_key: api_key.into(),
            jwt_secret: jwt_secret.into(),
            clients: 10,
            publishers: 2,
            duration: Duration::from_secs(10),
            messages: None,
            rate: None,
            payload_bytes: 64,
            batch: 1,
            disconnect_every: None,
            drain: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            allow_remote: false,
            user_prefix: "load-".into(),
        }
    }
}

impl std::fmt::Debug for LoadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadConfig")
            .field("url", &self.url)
            .field("api_key (sha256 prefix)", &fingerprint(&self.api_key))
            .field("jwt_secret (sha256 prefix)", &fingerprint(&self.jwt_secret))
            .field("clients", &self.clients)
            .field("publishers", &self.publishers)
            .field("duration", &self.duration)
            .field("messages", &self.messages)
            .field("rate", &self.rate)
            .field("payload_bytes", &self.payload_bytes)
            .field("batch", &self.batch)
            .field("disconnect_every", &self.disconnect_every)
            .field("drain", &self.drain)
            .field("request_timeout", &self.request_timeout)
            .field("allow_remote", &self.allow_remote)
            .field("user_prefix", &self.user_prefix)
            .finish()
    }
}

/// Why a run could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The target is not a loopback address and `allow_remote` is off.
    #[error("refusing to load {0}: not a loopback address (pass --allow-remote to allow)")]
    Remote(String),
    /// The target's name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        source: io::Error,
    },
    /// A client could not connect.
    #[error("client {user} could not connect: {source}")]
    Connect {
        /// The client's user.
        user: String,
        /// Why.
        source: super::ClientError,
    },
    /// The publish API refused the request in a way retrying cannot fix (401, 400, ...).
    #[error("the publish API answered {status}: {body}")]
    Publish {
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

/// A progress snapshot, passed to the callback about once a second.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Progress {
    /// Since publishing started.
    pub elapsed: Duration,
    /// Messages the server accepted so far.
    pub published: u64,
    /// Distinct messages received so far.
    pub delivered: u64,
    /// Messages received in the last second.
    pub delivered_last_second: u64,
    /// Reconnects so far.
    pub reconnects: u64,
    /// True once publishing stopped (draining).
    pub draining: bool,
}

impl Progress {
    /// One line for a terminal.
    pub fn line(&self) -> String {
        format!(
            "[{:>5.1}s] published {} delivered {} ({}/s) reconnects {}{}",
            self.elapsed.as_secs_f64(),
            self.published,
            self.delivered,
            self.delivered_last_second,
            self.reconnects,
            if self.draining { " draining" } else { "" }
        )
    }
}

/// Latency percentiles in microseconds (upper bounds of 1/16-octave buckets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
}

/// What a run measured and found.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct LoadReport {
    /// WebSocket clients.
    pub clients: usize,
    /// Publishers.
    pub publishers: usize,
    /// Approximate payload size.
    pub payload_bytes: usize,
    /// Messages per publish request.
    pub batch: usize,
    /// Time spent publishing, seconds (clients connect before it starts).
    pub publish_secs: f64,
    /// From the start of publishing until the last message arrived (or the drain ended),
    /// seconds.
    pub elapsed_secs: f64,
    /// Messages the server accepted.
    pub published: u64,
    /// Publishes refused (`rejected` outcomes, 503 try-later).
    pub rejected: u64,
    /// Older messages the server evicted to make room (reported by `queued` outcomes).
    pub evicted: u64,
    /// Messages whose publish request failed without an answer (a timeout, a cut
    /// connection): their outcome is unknown.
    pub publish_errors: u64,
    /// The first of those failures, if any.
    pub publish_error: Option<String>,
    /// Distinct messages received.
    pub delivered: u64,
    /// `published / publish_secs`.
    pub publish_rate: f64,
    /// `delivered / elapsed_secs`.
    pub delivery_rate: f64,
    /// Publish-to-receive latency.
    pub latency: Latency,
    /// Accepted and never received.
    pub lost: u64,
    /// Losses that the recipient's own evictions cannot explain: the sum over recipients of
    /// `lost - evicted` where that is positive.
    pub lost_beyond_evicted: u64,
    /// Received by a client other than the recipient.
    pub misrouted: u64,
    /// Received more than once.
    pub duplicates: u64,
    /// Received but not known to be accepted.
    pub unexpected: u64,
    /// Messages of other runs, ignored.
    pub stale: u64,
    /// Reconnects of all clients.
    pub reconnects: u64,
    /// Messages the servers' missed manifests reported lost.
    pub missed: u64,
    /// The first few client errors, if any client stopped.
    pub errors: Vec<String>,
}

impl LoadReport {
    /// True if no client stopped, nothing was duplicated or misrouted, every recipient's
    /// losses can be messages the server's overflow policy evicted from that recipient's
    /// mailbox, and every unexpected message can be one whose publish lost its answer.
    pub fn is_clean(&self) -> bool {
        self.lost_beyond_evicted == 0
            && self.misrouted == 0
            && self.duplicates == 0
            && self.unexpected <= self.publish_errors
            && self.errors.is_empty()
    }

    /// The report as one JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let l = &self.latency;
        let mut s = format!(
            "clients {} publishers {} payload {} B batch {}\n\
             published {} in {:.2}s ({:.0}/s), rejected {}, evicted {}, publish errors {}\n\
             delivered {} in {:.2}s ({:.0}/s)\n\
             latency p50 {} us, p90 {} us, p99 {} us, max {} us\n\
             lost {}{}, misrouted {}, duplicates {}, unexpected {}, reconnects {}, missed {}",
            self.clients,
            self.publishers,
            self.payload_bytes,
            self.batch,
            self.published,
            self.publish_secs,
            self.publish_rate,
            self.rejected,
            self.evicted,
            self.publish_errors,
            self.delivered,
            self.elapsed_secs,
            self.delivery_rate,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.max_us,
            self.lost,
            match (self.lost, self.lost_beyond_evicted) {
                (0, _) => String::new(),
                (_, 0) =>
                    " (evicted by the server's per-user caps: the clients fell behind)".to_owned(),
                (_, n) => format!(" ({n} beyond what the server evicted per user)"),
            },
            self.misrouted,
            self.duplicates,
            self.unexpected,
            self.reconnects,
            self.missed,
        );
        if let Some(e) = &self.publish_error {
            s.push_str("\npublish error: ");
            s.push_str(e);
        }
        for e in &self.errors {
            s.push_str("\nclient error: ");
            s.push_str(e);
        }
        s
    }
}

/// Runs the load and returns what it found; `progress` is called about once a second.
///
/// ```
/// use std::time::Duration;
/// use tether::client::load::{self, LoadConfig};
/// use tether::server::{config::ServerConfig, Server};
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (secret, key) = ("an example secret of at least 32 bytes", "an example api key");
/// let config = ServerConfig::parse_from(
///     ["serve", "--listen", "127.0.0.1:0", "--jwt-secret", secret, "--api-key", key],
///     [("", ""); 0],
/// )?;
/// let server = Server::start(config).await?;
///
/// let mut run = LoadConfig::new(format!("ws://{}", server.local_addr()), key, secret);
/// run.clients = 2;
/// run.publishers = 1;
/// run.duration = Duration::from_millis(300);
/// let report = load::run(run, |p| eprintln!("{}", p.line())).await?;
/// assert!(report.is_clean(), "{}", report.summary());
/// assert_eq!(report.delivered, report.published);
/// server.shutdown().await;
/// # Ok(())
/// # }
/// ```
///
/// Errors are for a run that cannot start (settings, a remote target, a client that cannot
/// connect) or a publish API that refuses the credentials; what the run finds (losses,
/// duplicates) is in the report.
pub async fn run(
    config: LoadConfig,
    mut progress: impl FnMut(&Progress),
) -> Result<LoadReport, LoadError> {
    check(&config)?;
    let (ws_url, host, port) =
        parse_url(&config.url).map_err(|e| LoadError::Config(e.to_string()))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|source| LoadError::Resolve {
            host: host.clone(),
            source,
        })?
        .collect();
    let Some(&http_addr) = addrs.first() else {
        return Err(LoadError::Resolve {
            host,
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        });
    };
    if !config.allow_remote && !addrs.iter().all(|a| a.ip().is_loopback()) {
        return Err(LoadError::Remote(host));
    }
    let authority = ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();

    let start = Instant::now();
    let run_id = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 ^ u64::from(std::process::id()));
    let shared = Arc::new(Counters::default());
    let token_ttl = config.duration + config.drain + Duration::from_secs(600);
    let (stop_tx, stop_rx) = watch::channel(false);

    // Every client connects before the first publish, so messages go to live sessions.
    let mut receivers = JoinSet::new();
    let mut kicks = Vec::with_capacity(config.clients);
    for i in 0..config.clients {
        let name = format!("{}{i}", config.user_prefix);
        let user = UserId::new(&name).map_err(|e| LoadError::Config(e.to_string()))?;
        let token = issue_token(
            &config.jwt_secret,
            &user,
            Some(token_ttl),
            SystemTime::now(),
        )
        .map_err(|e| LoadError::Config(e.to_string()))?;
        let client = Client::builder(ws_url.clone(), token)
            .backoff(Backoff::new(
                Duration::from_millis(10),
                Duration::from_secs(1),
            ))
            .connect()
            .await
            .map_err(|source| LoadError::Connect {
                user: name.clone(),
                source,
            })?;
        let kick = Arc::new(Notify::new());
        kicks.push(kick.clone());
        let receiver = Receiver {
            client,
            tally: Tally::new(i, run_id, config.publishers),
            shared: shared.clone(),
            start,
            reconnects: 0,
            missed: 0,
            connects: 0,
            error: None,
        };
        receivers.spawn(receiver.run(stop_rx.clone(), kick));
    }

    let targets: Vec<String> = (0..config.clients)
        .map(|i| serde_json::Value::from(format!("{}{i}", config.user_prefix)).to_string())
        .collect();
    // The clock of the run starts once every client is connected.
    let began = Instant::now();
    let deadline = began + config.duration;
    let budget = Arc::new(AtomicU64::new(config.messages.unwrap_or(u64::MAX)));
    let mut publishers = JoinSet::new();
    for p in 0..config.publishers {
        let publisher = Publisher {
            index: p,
            run: run_id,
            http: Http::new(
                http_addr,
                &authority,
                &config.api_key,
                config.request_timeout,
            ),
            clients: config.clients,
            targets: targets.clone(),
            accepted: vec![Bitset::default(); config.clients],
            next: vec![0; config.clients],
            cursor: p % config.clients,
            pad: "x".repeat(config.payload_bytes.saturating_sub(64)),
            batch: config.batch,
            interval: config.rate.map(|r| {
                let per_publisher = (r as f64 / config.publishers as f64).max(1e-3);
                Duration::from_secs_f64(config.batch as f64 / per_publisher)
            }),
            shared: shared.clone(),
            start,
            rejected: 0,
            evicted: vec![0; config.clients],
            errors: 0,
            first_error: None,
        };
        publishers.spawn(publisher.run(deadline, budget.clone()));
    }

    let disconnector = config.disconnect_every.map(|every| {
        let kicks = kicks.clone();
        tokio::spawn(async move {
            let mut rng = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1;
            let mut ticker = tokio::time::interval(every.max(Duration::from_millis(1)));
            ticker.reset();
            loop {
                ticker.tick().await;
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = (rng % kicks.len() as u64) as usize;
                kicks[i].notify_one();
            }
        })
    });

    // Publishing, with progress once a second.
    let mut last_delivered = 0;
    let mut report_progress = |draining: bool| {
        let delivered = shared.delivered.load(Ordering::Relaxed);
        progress(&Progress {
            elapsed: began.elapsed(),
            published: shared.published.load(Ordering::Relaxed),
            delivered,
            delivered_last_second: delivered.saturating_sub(last_delivered),
            reconnects: shared.reconnects.load(Ordering::Relaxed),
            draining,
        });
        last_delivered = delivered;
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.reset();
    let mut outcomes = Vec::with_capacity(config.publishers);
    let mut fatal = None;
    while !publishers.is_empty() {
        tokio::select! {
            done = publishers.join_next() => match done {
                Some(Ok(Ok(stats))) => outcomes.push(stats),
                Some(Ok(Err(e))) => {
                    fatal.get_or_insert(e);
                    // The others stop at once rather than at the deadline.
                    budget.store(0, Ordering::Relaxed);
                }
                Some(Err(e)) => {
                    fatal.get_or_insert(LoadError::Config(format!("publisher task failed: {e}")));
                    budget.store(0, Ordering::Relaxed);
                }
                None => break,
            },
            _ = ticker.tick() => report_progress(false),
        }
    }
    let publish_secs = began.elapsed().as_secs_f64();
    if let Some(d) = disconnector {
        d.abort();
    }

    // Draining: until everything accepted arrived, or the drain period ends.
    let drain_until = Instant::now() + config.drain;
    // Evicted messages will never come; a run that overloaded its clients need not wait.
    let published: u64 = outcomes.iter().map(|o| o.published).sum();
    let expected = published.saturating_sub(shared.evicted.load(Ordering::Relaxed));
    while Instant::now() < drain_until && shared.delivered.load(Ordering::Relaxed) < expected {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            _ = ticker.tick() => report_progress(true),
        }
    }
    let elapsed_secs = began.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let mut received = Vec::with_capacity(config.clients);
    while let Some(done) = receivers.join_next().await {
        if let Ok(stats) = done {
            received.push(stats);
        }
    }
    report_progress(true);
    if let Some(e) = fatal {
        return Err(e);
    }
    Ok(tally(
        &config,
        outcomes,
        received,
        publish_secs,
        elapsed_secs,
    ))
}

fn check(c: &LoadConfig) -> Result<(), LoadError> {
    let bad = |s: &str| Err(LoadError::Config(s.to_owned()));
    if c.clients == 0 || c.clients > 1_000_000 {
        return bad("clients must be 1 to 1,000,000");
    }
    if c.publishers == 0 || c.publishers > 10_000 {
        return bad("publishers must be 1 to 10,000");
    }
    if c.batch == 0 || c.batch > 10_000 {
        return bad("batch must be 1 to 10,000");
    }
    if c.payload_bytes > MAX_PAYLOAD {
        return bad("payload_bytes must be at most 1 MiB");
    }
    if c.rate == Some(0) {
        return bad("rate must be greater than 0");
    }
    if c.duration.is_zero() {
        return bad("duration must be greater than 0");
    }
    if c.request_timeout.is_zero() {
        return bad("request_timeout must be greater than 0");
    }
    Ok(())
}

fn tally(
    config: &LoadConfig,
    publishers: Vec<PublisherStats>,
    mut receivers: Vec<ReceiverStats>,
    publish_secs: f64,
    elapsed_secs: f64,
) -> LoadReport {
    receivers.sort_by_key(|r| r.tally.user);
    // Per recipient: lost, and evicted from its mailbox.
    let mut lost_by_user = vec![0u64; config.clients];
    let mut evicted_by_user = vec![0u64; config.clients];
    for p in &publishers {
        for (total, e) in evicted_by_user.iter_mut().zip(&p.evicted) {
            *total += e;
        }
    }
    let (mut unexpected, mut delivered) = (0, 0);
    let empty = Bitset::default();
    for r in &receivers {
        let user = r.tally.user;
        for (p, seen) in r.tally.seen.iter().enumerate() {
            let accepted = publishers
                .iter()
                .find(|s| s.index == p)
                .and_then(|s| s.accepted.get(user))
                .unwrap_or(&empty);
            if let Some(lost) = lost_by_user.get_mut(user) {
                *lost += accepted.count_missing_from(seen);
            }
            unexpected += seen.count_missing_from(accepted);
            delivered += seen.count();
        }
    }
    // A client that never reported (its task failed) lost everything it was sent.
    for p in &publishers {
        for (user, accepted) in p.accepted.iter().enumerate() {
            if !receivers.iter().any(|r| r.tally.user == user) {
                if let Some(lost) = lost_by_user.get_mut(user) {
                    *lost += accepted.count();
                }
            }
        }
    }
    let lost = lost_by_user.iter().sum();
    let lost_beyond_evicted = lost_by_user
        .iter()
        .zip(&evicted_by_user)
        .map(|(l, e)| l.saturating_sub(*e))
        .sum();
    let mut latency = Histogram::new();
    for r in &receivers {
        latency.merge(&r.tally.latency);
    }
    let published: u64 = publishers.iter().map(|p| p.published).sum();
    let rate = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    LoadReport {
        clients: config.clients,
        publishers: config.publishers,
        payload_bytes: config.payload_bytes,
        batch: config.batch,
        publish_secs,
        elapsed_secs,
        published,
        rejected: publishers.iter().map(|p| p.rejected).sum(),
        evicted: evicted_by_user.iter().sum(),
        publish_errors: publishers.iter().map(|p| p.errors).sum(),
        publish_error: publishers.iter().find_map(|p| p.first_error.clone()),
        delivered,
        publish_rate: rate(published, publish_secs),
        delivery_rate: rate(delivered, elapsed_secs),
        latency: latency.summary(),
        lost,
        lost_beyond_evicted,
        misrouted: receivers.iter().map(|r| r.tally.misrouted).sum(),
        duplicates: receivers.iter().map(|r| r.tally.duplicates).sum(),
        unexpected,
        stale: receivers.iter().map(|r| r.tally.stale).sum(),
        reconnects: receivers.iter().map(|r| r.reconnects).sum(),
        missed: receivers.iter().map(|r| r.missed).sum(),
        errors: receivers
            .iter()
            .filter_map(|r| r.error.clone())
            .take(MAX_ERRORS)
            .collect(),
    }
}

/// Live totals for the progress line and the drain.
#[derive(Default)]
struct Counters {
    published: AtomicU64,
    evicted: AtomicU64,
    delivered: AtomicU64,
    reconnects: AtomicU64,
}

// ---------------------------------------------------------------------------------------------
// Receivers
// ---------------------------------------------------------------------------------------------

struct Receiver {
    client: Client,
    tally: Tally,
    shared: Arc<Counters>,
    start: Instant,
    reconnects: u64,
    missed: u64,
    connects: u64,
    error: Option<String>,
}

struct ReceiverStats {
    tally: Tally,
    reconnects: u64,
    missed: u64,
    error: Option<String>,
}

/// The checkable part of each message's data (see the module docs).
#[derive(Deserialize)]
struct Stamp {
    /// The run.
    r: u64,
    /// The recipient's index.
    u: usize,
    /// The publisher's index.
    p: usize,
    /// The publisher's number for this recipient.
    n: u64,
    /// When it was published, µs since the run started.
    t: u64,
}

/// A message's data: its stamp and `pad`.
fn stamp_json(run: u64, to: usize, publisher: usize, n: u64, t: u64, pad: &str) -> String {
    format!(r#"{{"r":{run},"u":{to},"p":{publisher},"n":{n},"t":{t},"pad":"{pad}"}}"#)
}

/// What one client received, by stamp.
struct Tally {
    /// The index of the client's user (`load-<user>`).
    user: usize,
    /// This run's id: messages with another are left over from an earlier run.
    run: u64,
    /// Per publisher: the numbers received.
    seen: Vec<Bitset>,
    latency: Histogram,
    duplicates: u64,
    misrouted: u64,
    stale: u64,
}

impl Tally {
    fn new(user: usize, run: u64, publishers: usize) -> Self {
        Self {
            user,
            run,
            seen: vec![Bitset::default(); publishers],
            latency: Histogram::new(),
            duplicates: 0,
            misrouted: 0,
            stale: 0,
        }
    }

    /// Counts one message (`None`: its data is not a stamp) received `now` µs into the run;
    /// true if it is new and this client's.
    fn record(&mut self, stamp: Option<Stamp>, now: u64) -> bool {
        let stamp = match stamp {
            Some(stamp) if stamp.r == self.run => stamp,
            _ => {
                self.stale += 1;
                return false;
            }
        };
        if stamp.u != self.user {
            self.misrouted += 1;
            return false;
        }
        let Some(seen) = self.seen.get_mut(stamp.p) else {
            self.stale += 1;
            return false;
        };
        if seen.insert(stamp.n) {
            self.latency.record(now.saturating_sub(stamp.t));
            true
        } else {
            self.duplicates += 1;
            false
        }
    }
}

impl Receiver {
    async fn run(mut self, mut stop: watch::Receiver<bool>, kick: Arc<Notify>) -> ReceiverStats {
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                () = kick.notified() => self.client.reconnect(),
                event = self.client.recv() => match event {
                    Ok(event) => self.on_event(event),
                    Err(e) => {
                        self.error = Some(e.to_string());
                        break;
                    }
                },
            }
        }
        let Receiver {
            client,
            tally,
            reconnects,
            missed,
            error,
            ..
        } = self;
        client.close().await;
        ReceiverStats {
            tally,
            reconnects,
            missed,
            error,
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Message(m) => {
                let now = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
                if self.tally.record(m.json::<Stamp>().ok(), now) {
                    self.shared.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::Connected(info) => {
                self.connects += 1;
                if self.connects > 1 {
                    self.reconnects += 1;
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                self.missed += info.missed.total();
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Publishers
// ---------------------------------------------------------------------------------------------

struct Publisher {
    index: usize,
    /// This run's id, in every message.
    run: u64,
    http: Http,
    clients: usize,
    /// Per recipient: its user id as a JSON string.
    targets: Vec<String>,
    /// Per recipient: the numbers the server accepted.
    accepted: Vec<Bitset>,
    /// Per recipient: the next number.
    next: Vec<u64>,
    /// The next recipient (round robin, each publisher starting at its own index).
    cursor: usize,
    pad: String,
    batch: usize,
    /// Time between requests when the rate is capped.
    interval: Option<Duration>,
    shared: Arc<Counters>,
    start: Instant,
    rejected: u64,
    /// Per recipient: older messages evicted from its mailbox to make room.
    evicted: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

struct PublisherStats {
    index: usize,
    accepted: Vec<Bitset>,
    published: u64,
    rejected: u64,
    evicted: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Publisher {
    async fn run(
        mut self,
        deadline: Instant,
        budget: Arc<AtomicU64>,
    ) -> Result<PublisherStats, LoadError> {
        let mut published = 0;
        let mut next_at = tokio::time::Instant::now();
        let mut consecutive_errors = 0u32;
        let mut batch: Vec<(usize, u64)> = Vec::with_capacity(self.batch);
        let mut body = String::new();
        while Instant::now() < deadline {
            let want = self.batch as u64;
            let Ok(before) = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b > 0).then(|| b.saturating_sub(want))
            }) else {
                break;
            };
            let count = before.min(want) as usize;
            if let Some(interval) = self.interval {
                tokio::time::sleep_until(next_at).await;
                next_at += interval;
            }
            batch.clear();
            body.clear();
            let (path, batched) = if self.batch > 1 {
                ("/api/publish_batch", true)
            } else {
                ("/api/publish", false)
            };
            if batched {
                body.push_str(r#"{"messages":["#);
            }
            for i in 0..count {
                let to = self.cursor;
                self.cursor = (self.cursor + 1) % self.clients;
                let n = self.next[to];
                self.next[to] += 1;
                batch.push((to, n));
                if i > 0 {
                    body.push(',');
                }
                let t = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
                body.push_str(r#"{"to":"#);
                body.push_str(&self.targets[to]);
                body.push_str(r#","data":"#);
                body.push_str(&stamp_json(self.run, to, self.index, n, t, &self.pad));
                body.push('}');
            }
            if batched {
                body.push_str("]}");
            }
            match self.http.post(path, &body).await {
                Ok((200, response)) => {
                    consecutive_errors = 0;
                    let outcomes = if batched {
                        batch_outcomes(&response, batch.len())
                    } else {
                        vec![decode_publish_outcome(&response).ok()]
                    };
                    for (&(to, n), outcome) in batch.iter().zip(outcomes) {
                        match outcome {
                            Some(o) if o.is_accepted() => {
                                if let PublishOutcome::Queued { evicted } = o {
                                    self.evicted[to] += evicted;
                                    self.shared.evicted.fetch_add(evicted, Ordering::Relaxed);
                                }
                                self.accepted[to].insert(n);
                                published += 1;
                                self.shared.published.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => self.rejected += 1,
                        }
                    }
                }
                Ok((503 | 429, _)) => {
                    // The engine's inbox is full: back off a little; the numbers are skipped.
                    self.rejected += batch.len() as u64;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok((status, response)) => {
                    let text = String::from_utf8_lossy(&response);
                    return Err(LoadError::Publish {
                        status,
                        body: text.chars().take(200).collect(),
                    });
                }
                Err(e) => {
                    // The outcome of these is unknown: they count as neither accepted nor lost.
                    self.errors += batch.len() as u64;
                    self.first_error.get_or_insert_with(|| e.to_string());
                    consecutive_errors += 1;
                    if consecutive_errors >= 50 {
                        return Err(LoadError::Publish {
                            status: 0,
                            body: "50 publish requests in a row failed without an answer".into(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        Ok(PublisherStats {
            index: self.index,
            accepted: self.accepted,
            published,
            rejected: self.rejected,
            evicted: self.evicted,
            errors: self.errors,
            first_error: self.first_error,
        })
    }
}

/// The outcomes of a `/api/publish_batch` answer, by position (`None`: refused or unreadable).
fn batch_outcomes(body: &[u8], n: usize) -> Vec<Option<PublishOutcome>> {
    #[derive(Deserialize)]
    struct Results<'a> {
        #[serde(borrow)]
        results: Vec<&'a serde_json::value::RawValue>,
    }
    let mut out = vec![None; n];
    if let Ok(r) = serde_json::from_slice::<Results<'_>>(body) {
        for (slot, raw) in out.iter_mut().zip(r.results) {
            *slot = decode_publish_outcome(raw.get().as_bytes()).ok();
        }
    }
    out
}

/// A minimal HTTP/1.1 client: one keep-alive connection, one request at a time,
/// `Content-Length` bodies only (what the tether server sends). Each request, connecting
/// included, ends within `timeout`, so a server that accepts and never answers cannot hold
/// a run past its deadline.
struct Http {
    addr: SocketAddr,
    head: String,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    fn new(addr: SocketAddr, authority: &str, api_key: &str, timeout: Duration) -> Self {
        Self {
            addr,
            timeout,
            head: format!(
                "Host: {authority}\r\nAuthorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
            ),
            conn: None,
        }
    }

    /// POSTs `body` to `path`; the status and the response body, or `TimedOut` if the
    /// whole exchange took longer than the timeout.
    async fn post(&mut self, path: &str, body: &str) -> io::Result<(u16, Vec<u8>)> {
        let timeout = self.timeout;
        let result = tokio::time::timeout(timeout, self.exchange(path, body))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ))
            });
        if result.is_err() {
            // The connection may be mid-response: never reuse it.
            self.conn = None;
        }
        result
    }

    async fn exchange(&mut self, path: &str, body: &str) -> io::Result<(u16, Vec<u8>)> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let tcp = TcpStream::connect(self.addr).await?;
                tcp.set_nodelay(true)?;
                self.conn.insert(BufReader::new(tcp))
            }
        };
        let request = format!(
            "POST {path} HTTP/1.1\r\n{}Content-Length: {}\r\n\r\n{body}",
            self.head,
            body.len()
        );
        conn.get_mut().write_all(request.as_bytes()).await?;

        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let mut head = Vec::with_capacity(256);
        let mut status = None;
        let mut length = None;
        let mut close = false;
        // One line per iteration; the head is bounded by MAX_HEAD in all.
        loop {
            let start = head.len();
            let budget = MAX_HEAD.saturating_sub(start as u64);
            let read = (&mut *conn)
                .take(budget)
                .read_until(b'\n', &mut head)
                .await?;
            if read == 0 || !head.ends_with(b"\n") {
                return Err(invalid("response head too long or cut short"));
            }
            let line = std::str::from_utf8(&head[start..])
                .map_err(|_| invalid("response head is not UTF-8"))?
                .trim_end();
            if line.is_empty() {
                break;
            }
            if status.is_none() {
                let code = line
                    .strip_prefix("HTTP/1.1 ")
                    .or_else(|| line.strip_prefix("HTTP/1.0 "))
                    .and_then(|rest| rest.get(..3))
                    .and_then(|c| c.parse::<u16>().ok())
                    .ok_or_else(|| invalid("bad status line"))?;
                status = Some(code);
                continue;
            }
            if let Some((name, value)) = line.split_once(':') {
                let (name, value) = (name.trim(), value.trim());
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(
                        value
                            .parse::<usize>()
                            .map_err(|_| invalid("bad content-length"))?,
                    );
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(invalid("chunked responses are not supported"));
                }
            }
        }
        let status = status.ok_or_else(|| invalid("no status line"))?;
        let length = length.unwrap_or(0);
        if length > MAX_BODY {
            return Err(invalid("response body too large"));
        }
        let mut response = vec![0; length];
        conn.read_exact(&mut response).await?;
        if close {
            self.conn = None;
        }
        Ok((status, response))
    }
}

// ---------------------------------------------------------------------------------------------
// Counting
// ---------------------------------------------------------------------------------------------

/// A growable set of small integers (message numbers are dense from 0).
#[derive(Clone, Default)]
struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    /// Adds `n`; false if it was there already.
    fn insert(&mut self, n: u64) -> bool {
        let Ok(word) = usize::try_from(n / 64) else {
            return false;
        };
        // Numbers come from publishers in this process, dense from 0; a number far beyond
        // anything sent could only come from a foreign message and is ignored.
        if word > (1 << 26) {
            return false;
        }
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (n % 64);
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        fresh
    }

    fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Members of `self` that are not in `other`.
    fn count_missing_from(&self, other: &Bitset) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| u64::from((w & !other.words.get(i).copied().unwrap_or(0)).count_ones()))
            .sum()
    }
}

/// Log-linear histogram of microseconds: exact below 32, then 16 buckets per power of two
/// (at most 1/16 relative error), the layout HdrHistogram uses with few significant bits.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    max: u64,
}

const SUB_BITS: u32 = 4;
const LINEAR: u64 = 32;
const BUCKETS: usize = LINEAR as usize + (64 - 5) * (1 << SUB_BITS);

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < LINEAR {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros(); // >= 5
        let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        LINEAR as usize + ((exp - 5) as usize) * (1 << SUB_BITS) + sub as usize
    }

    /// The largest value bucket `i` holds.
    fn upper(i: usize) -> u64 {
        if i < LINEAR as usize {
            return i as u64;
        }
        let k = i - LINEAR as usize;
        let exp = (k >> SUB_BITS) as u32 + 5;
        let sub = (k & ((1 << SUB_BITS) - 1)) as u64;
        let width_shift = exp - SUB_BITS;
        let low = ((1u64 << SUB_BITS) + sub) << width_shift;
        low.saturating_add((1u64 << width_shift) - 1)
    }

    fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(Self::index(v)) {
            *c += 1;
        }
        self.max = self.max.max(v);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max = self.max.max(other.max);
    }

    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }

    fn summary(&self) -> Latency {
        Latency {
            p50_us: self.quantile(0.50),
            p90_us: self.quantile(0.90),
            p99_us: self.quantile(0.99),
            max_us: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_bound_their_values() {
        let mut last = 0;
        for v in (0..200_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let i = Histogram::index(v);
            assert!(i < BUCKETS, "{v}");
            assert!(i >= last || v > 200_000, "monotonic at {v}");
            last = i;
            assert!(Histogram::upper(i) >= v, "{v} above bucket {i}");
            if v >= LINEAR {
                // At most 1/16 relative error.
                assert!(Histogram::upper(i) - v <= v / 16, "{v}");
            }
        }
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        let s = h.summary();
        assert!((490..=530).contains(&s.p50_us), "{s:?}");
        assert!((985..=1000).contains(&s.p99_us), "{s:?}");
        assert_eq!(s.max_us, 1000);
        assert_eq!(Histogram::new().summary(), Latency::default());
    }

    #[test]
    fn bitsets_count_what_is_missing() {
        let mut a = Bitset::default();
        let mut b = Bitset::default();
        for n in [0, 1, 63, 64, 1000] {
            assert!(a.insert(n));
        }
        assert!(!a.insert(64));
        for n in [1, 64, 2000] {
            b.insert(n);
        }
        assert_eq!((a.count(), b.count()), (5, 3));
        assert_eq!(a.count_missing_from(&b), 3);
        assert_eq!(b.count_missing_from(&a), 1);
        assert!(!a.insert(u64::MAX), "absurd numbers are ignored");
    }

    fn stamp(run: u64, to: usize, publisher: usize, n: u64) -> Option<Stamp> {
        serde_json::from_str(&stamp_json(run, to, publisher, n, 0, "xx")).ok()
    }

    fn publisher(index: usize, accepted: &[&[u64]], evicted: Vec<u64>) -> PublisherStats {
        let accepted: Vec<Bitset> = accepted
            .iter()
            .map(|ns| {
                let mut b = Bitset::default();
                for &n in *ns {
                    b.insert(n);
                }
                b
            })
            .collect();
        PublisherStats {
            index,
            published: accepted.iter().map(Bitset::count).sum(),
            accepted,
            rejected: 0,
            evicted,
            errors: 0,
            first_error: None,
        }
    }

    fn receiver(tally: Tally) -> ReceiverStats {
        ReceiverStats {
            tally,
            reconnects: 0,
            missed: 0,
            error: None,
        }
    }

    fn two_clients() -> LoadConfig {
        LoadConfig {
            clients: 2,
            publishers: 1,
            ..LoadConfig::new("ws://127.0.0.1:1", "k", "s")
        }
    }

    #[test]
    fn misrouted_duplicated_and_stale_stamps_are_told_apart() {
        let (run, other_run) = (7, 8);
        let mut a = Tally::new(0, run, 1);
        let mut b = Tally::new(1, run, 1);
        assert!(a.record(stamp(run, 0, 0, 0), 10));
        assert!(!a.record(stamp(run, 0, 0, 0), 20), "the same stamp again");
        // User 0's message 1 reaches user 1 instead: not counted as user 1's own.
        assert!(!b.record(stamp(run, 0, 0, 1), 30));
        assert!(b.record(stamp(run, 1, 0, 0), 30));
        assert!(!b.record(stamp(other_run, 1, 0, 1), 40));
        assert!(!b.record(None, 40));
        assert_eq!((a.duplicates, a.misrouted, a.stale), (1, 0, 0));
        assert_eq!((b.duplicates, b.misrouted, b.stale), (0, 1, 2));

        let accepted: &[&[u64]] = &[&[0, 1], &[0]];
        let report = tally(
            &two_clients(),
            vec![publisher(0, accepted, vec![0, 0])],
            vec![receiver(a), receiver(b)],
            1.0,
            1.0,
        );
        assert_eq!(report.delivered, 2, "{report:?}");
        assert_eq!(report.duplicates, 1, "{report:?}");
        assert_eq!(report.misrouted, 1, "{report:?}");
        assert_eq!(report.stale, 2, "{report:?}");
        // User 0's message 1 went to user 1: lost for user 0, and nothing evicted explains it.
        assert_eq!(
            (report.lost, report.lost_beyond_evicted),
            (1, 1),
            "{report:?}"
        );
        assert!(!report.is_clean());
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["misrouted"], 1);
        assert!(
            report.summary().contains("misrouted 1, duplicates 1"),
            "{}",
            report.summary()
        );
    }

    #[test]
    fn one_users_evictions_do_not_excuse_another_users_losses() {
        let run = 1;
        // User 0 received 0 and 1 of 0..=2; user 1 received all of 0..=1.
        let accepted: &[&[u64]] = &[&[0, 1, 2], &[0, 1]];
        let receivers = || {
            let mut a = Tally::new(0, run, 1);
            let mut b = Tally::new(1, run, 1);
            for n in [0, 1] {
                assert!(a.record(stamp(run, 0, 0, n), 1));
                assert!(b.record(stamp(run, 1, 0, n), 1));
            }
            vec![receiver(a), receiver(b)]
        };
        // One eviction, from user 1's mailbox: globally lost (1) <= evicted (1), yet user 0's
        // loss is unexplained.
        let report = tally(
            &two_clients(),
            vec![publisher(0, accepted, vec![0, 1])],
            receivers(),
            1.0,
            1.0,
        );
        assert_eq!((report.lost, report.evicted), (1, 1), "{report:?}");
        assert_eq!(report.lost_beyond_evicted, 1, "{report:?}");
        assert!(!report.is_clean());
        // The same eviction from user 0's mailbox explains the loss.
        let report = tally(
            &two_clients(),
            vec![publisher(0, accepted, vec![1, 0])],
            receivers(),
            1.0,
            1.0,
        );
        assert_eq!(report.lost_beyond_evicted, 0, "{report:?}");
        assert!(report.is_clean(), "{report:?}");
    }

    #[test]
    fn batch_answers_decode_by_position() {
        let body = br#"{"results":[{"outcome":"delivered"},{"error":{"code":"x","message":"y"}},{"outcome":"queued","evicted":1}]}"#;
        let got = batch_outcomes(body, 4);
        assert_eq!(
            got,
            [
                Some(PublishOutcome::Delivered),
                None,
                Some(PublishOutcome::Queued { evicted: 1 }),
                None
            ]
        );
        assert_eq!(batch_outcomes(b"nope", 2), [None, None]);
    }

    #[test]
    fn settings_are_checked() {
        let base = || LoadConfig::new("ws://127.0.0.1:1", "k", "s");
        let cases = [
            LoadConfig {
                clients: 0,
                ..base()
            },
            LoadConfig {
                publishers: 0,
                ..base()
            },
            LoadConfig { batch: 0, ..base() },
            LoadConfig {
                payload_bytes: MAX_PAYLOAD + 1,
                ..base()
            },
            LoadConfig {
                rate: Some(0),
                ..base()
            },
            LoadConfig {
                duration: Duration::ZERO,
                ..base()
            },
        ];
        for c in cases {
            assert!(matches!(check(&c), Err(LoadError::Config(_))), "{c:?}");
        }
        assert!(check(&base()).is_ok());
    }
}
