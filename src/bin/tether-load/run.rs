//! A run: clients connect, publishers publish until the deadline or the message cap, a
//! drain lets the last messages arrive, then [`tally`] checks every message.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tether::client::Client;
use tether::server::auth::issue_token;
use tether::{Backoff, UserId};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::config::{check, LoadConfig, LoadError};
use crate::publisher::{Http, Publisher};
use crate::receiver::{Receiver, Tally};
use crate::report::{tally, Bitset, LoadReport};

/// A progress snapshot, passed to the callback about once a second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    /// Since publishing started.
    pub(crate) elapsed: Duration,
    /// Messages the server accepted so far.
    pub(crate) published: u64,
    /// Distinct messages received so far.
    pub(crate) delivered: u64,
    /// Messages received in the last second.
    pub(crate) delivered_last_second: u64,
    /// Reconnects so far.
    pub(crate) reconnects: u64,
    /// True once publishing stopped (draining).
    pub(crate) draining: bool,
}

impl Progress {
    /// One line for a terminal.
    pub(crate) fn line(&self) -> String {
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

/// Runs the load and returns what it found; `progress` is called about once a second.
///
/// Errors are for a run that cannot start (settings, a remote target, a client that cannot
/// connect) or a publish API that refuses the credentials; what the run finds (losses,
/// duplicates) is in the report.
pub(crate) async fn run(
    config: LoadConfig,
    mut progress: impl FnMut(&Progress),
) -> Result<LoadReport, LoadError> {
    check(&config)?;
    let target = Target::of(&config.url)?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|source| LoadError::Resolve {
            host: target.host.clone(),
            source,
        })?
        .collect();
    let Some(&http_addr) = addrs.first() else {
        return Err(LoadError::Resolve {
            host: target.host,
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        });
    };
    if !config.allow_remote && !addrs.iter().all(|a| a.ip().is_loopback()) {
        return Err(LoadError::Remote(target.host));
    }
    let ws_url = target.ws_url;

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
                &target.authority,
                &config.api_key,
                config.request_timeout,
            )?,
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
            let mut rng = fastrand::Rng::new();
            let mut ticker = tokio::time::interval(every.max(Duration::from_millis(1)));
            ticker.reset();
            loop {
                ticker.tick().await;
                kicks[rng.usize(..kicks.len())].notify_one();
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

/// Live totals for the progress line and the drain.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

/// Where a run goes: the WebSocket URL as the client normalises it, and the host, port and
/// authority the publishes go to.
struct Target {
    ws_url: String,
    host: String,
    port: u16,
    authority: String,
}

impl Target {
    fn of(url: &str) -> Result<Target, LoadError> {
        // The client's own check: a URL the clients would refuse is refused here, and both
        // sides agree on the default path and port.
        let config = Client::builder(url, "")
            .build()
            .map_err(|e| LoadError::Config(e.to_string()))?;
        let ws_url = config.url().to_owned();
        let uri: hyper::Uri = ws_url
            .parse()
            .map_err(|_| LoadError::Config(format!("url {ws_url:?} is not a URL")))?;
        let Some(authority) = uri.authority() else {
            return Err(LoadError::Config(format!("url {ws_url:?} has no host")));
        };
        Ok(Target {
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            ws_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_the_clients_url_rules() {
        let t = Target::of("ws://127.0.0.1:7700").expect("valid");
        assert_eq!(t.ws_url, "ws://127.0.0.1:7700/ws");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 7700));
        assert_eq!(t.authority, "127.0.0.1:7700");
        let t = Target::of("ws://[::1]/x").expect("valid");
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert_eq!(t.authority, "[::1]");
        for bad in ["", "http://h/ws", "wss://h/ws", "ws://u:p@h/ws"] {
            assert!(
                matches!(Target::of(bad), Err(LoadError::Config(_))),
                "{bad}"
            );
        }
    }
}
