//! The `tether` server: the engine behind a WebSocket front end (wire protocol v1, see
//! `docs/protocol.md`) and an HTTP publish API, on one port.
//!
//! One tokio task accepts connections, and `admit` gives each socket its slot against
//! `max_connections` and `max_connections_per_ip` (or a refusal the client can read); `tls`
//! runs the handshake when the port speaks TLS; hyper serves the connection (HTTP/1.1) over
//! `linger`, which keeps reading after an early answer so the client can read it, and hands
//! `/ws` upgrades to `ws`, which runs one task per WebSocket session: it authenticates the
//! `connect` frame, attaches an engine [`Session`](crate::Session), writes deliveries in
//! batches with one flush per batch, and feeds write outcomes to the session's circuit
//! breaker. `rate` holds the publish rate limits, per user and per API key. Everything that
//! decides what a user receives stays in the engine.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use tether::server::{config::ServerConfig, Server};
//!
//! let config = ServerConfig::parse_from(
//!     ["serve", "--listen", "127.0.0.1:0",
//!      "--jwt-secret", "an example secret of at least 32 bytes",
//!      "--api-key", "an example api key"],
//!     [("", ""); 0],
//! ).unwrap();
//! let server = Server::start(config).await.unwrap();
//! assert!(server.local_addr().ip().is_loopback());
//! let report = server.shutdown().await;
//! assert_eq!(report.sessions_closed, 0);
//! # });
//! ```
#![forbid(unsafe_code)]

mod admit;
pub mod auth;
pub mod config;
mod dashboard;
mod devices;
mod http;
mod linger;
mod rate;
mod response;
mod tls;
mod ws;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::protocol::{FrameError, PublishRequest};
use crate::{Engine, InvalidInput, SendOutcome, ShutdownOptions, ShutdownReport, TrySendError};
use admit::{Admission, Ticket};
use auth::{ApiKey, JwtVerifier};
use config::ServerConfig;
pub use tls::TlsError;

/// Why the server could not start or stopped with an error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A setting is invalid or a credential is missing.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The engine refused its settings.
    #[error("engine settings: {0}")]
    Engine(#[from] crate::ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Installing the signal handlers failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The TLS certificate or key could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// [`Server::reload_tls`] on a server without TLS.
    #[error("the server runs without TLS: nothing to reload")]
    NoTls,
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) config: ServerConfig,
    pub(crate) verifier: JwtVerifier,
    pub(crate) api_key: ApiKey,
    /// WebSocket sessions open now.
    pub(crate) connections: AtomicUsize,
    /// Every accepted socket, counted against `max_connections` and `max_connections_per_ip`.
    pub(crate) admission: Arc<Admission>,
    /// The certificate, when the port speaks TLS.
    tls: Option<tls::Tls>,
    /// WebSocket publishes, per user.
    pub(crate) user_rate: rate::PerUser,
    /// HTTP publishes, for the one API key.
    pub(crate) http_rate: (rate::Rate, Mutex<rate::Bucket>),
    pub(crate) stats: FrontStats,
    /// The dashboard's state, with the registry of sessions whose breaker is open.
    pub(crate) dashboard: dashboard::Dashboard,
    /// Becomes true when the server starts shutting down.
    pub(crate) stopping: watch::Receiver<bool>,
}

/// Front-end counters, exported beside the engine's metrics.
#[derive(Default)]
pub(crate) struct FrontStats {
    pub(crate) connections_total: AtomicU64,
    pub(crate) refused_overload: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) http_rate_limited: AtomicU64,
    pub(crate) sockets_refused: AtomicU64,
    pub(crate) sockets_dropped: AtomicU64,
    pub(crate) header_timeouts: AtomicU64,
    pub(crate) body_timeouts: AtomicU64,
    pub(crate) tls_handshake_failures: AtomicU64,
    pub(crate) write_timeouts: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    /// From a delivery's producer call (or HTTP request arrival) to its frame flushed to
    /// the socket, µs.
    send_to_write: Mutex<crate::Histogram>,
}

impl FrontStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records deliveries flushed to a socket at `now_us`, each from its send stamp. One
    /// lock per flush (a batch of up to 64 frames), not per frame.
    pub(crate) fn record_delivered(&self, now_us: u64, sent: impl Iterator<Item = u64>) {
        let mut h = self.send_to_write.lock().unwrap_or_else(|p| p.into_inner());
        for at in sent {
            h.record(now_us.saturating_sub(at));
        }
    }

    /// The send-to-write histogram as it is now.
    pub(crate) fn send_to_write(&self) -> crate::Histogram {
        self.send_to_write
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Shared {
    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once the server starts shutting down.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            // The guard `wait_for` returns is not Send; drop it here, not in a select arm.
            let _ = stopping.wait_for(|s| *s).await.map(drop);
        }
    }
}

/// A running server. Dropping it without [`shutdown`](Self::shutdown) stops accepting and
/// leaves the engine to be dropped with the last connection.
pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    acceptor: tokio::task::JoinHandle<JoinSet<()>>,
}

impl Server {
    /// Validates `config`, builds the engine, binds `config.listen` and starts serving in
    /// background tasks on the current tokio runtime. Credentials must be set (see
    /// [`ServerConfig::ensure_credentials`] for development mode).
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        config.validate()?;
        let verifier = config.jwt_verifier()?;
        let api_key = config.api_key_checker()?;
        // A message's payload must fit what a client can publish and, once wrapped in a
        // delivery frame, the connection's write buffer.
        let engine = config
            .engine_builder()
            .max_payload_bytes(config.max_frame_bytes.max(config.max_body_bytes))
            .build()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::Tls::load(Path::new(cert), Path::new(key))?),
            (None, None) => None,
            (Some(path), None) | (None, Some(path)) => {
                return Err(ServerError::Tls(TlsError {
                    path: path.into(),
                    reason: "tls_cert and tls_key must be given together".into(),
                }))
            }
        };
        let (stop, stopping) = watch::channel(false);
        let now = Instant::now();
        let http_rate = rate::Rate::new(config.http_publish_rate, config.http_publish_burst);
        let shared = Arc::new(Shared {
            engine,
            admission: Arc::new(Admission::new(
                config.max_connections,
                config.max_connections_per_ip,
            )),
            tls,
            // A user needs a bucket while connected and for `burst / rate` seconds after its
            // last publish: twice the connections leaves room for that churn.
            user_rate: rate::PerUser::new(
                rate::Rate::new(config.publish_rate, config.publish_burst),
                config.max_connections.saturating_mul(2),
            ),
            http_rate: (http_rate, Mutex::new(http_rate.full(now))),
            config,
            verifier,
            api_key,
            connections: AtomicUsize::new(0),
            stats: FrontStats::default(),
            dashboard: dashboard::Dashboard::new(),
            stopping,
        });
        let acceptor = tokio::spawn(accept_loop(listener, shared.clone()));
        let scheme = if shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(%addr, scheme, "tether listening");
        if shared.config.dashboard_enabled() {
            tokio::spawn(dashboard::sampler(Arc::downgrade(&shared)));
            tracing::info!(url = %format!("{scheme}://{addr}/dashboard"), "dashboard on");
        }
        Ok(Server {
            shared,
            addr,
            stop,
            acceptor,
        })
    }

    /// The address the server listens on (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The engine behind the server, to send to users or read metrics in-process. A payload
    /// sent this way reaches WebSocket clients as the `data` of a `message` frame, spliced in
    /// as it is, so it must be one JSON value (`Message::new(r#"{"n":1}"#)`, or `"\"text\""`
    /// for a string); see [`protocol::encode_delivery`](crate::protocol::encode_delivery).
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// WebSocket sessions open now (`/echo` not counted).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Sockets open now that count against `max_connections`: HTTP, `/echo` and WebSocket,
    /// lingering ones included; not the ones being refused.
    pub fn sockets(&self) -> usize {
        self.shared.admission.open()
    }

    /// Reads `tls_cert` and `tls_key` again (the binary does on SIGHUP): handshakes from now
    /// on present the new certificate, and connections already open keep theirs. On an
    /// error the certificate in use stays.
    pub fn reload_tls(&self) -> Result<(), ServerError> {
        match &self.shared.tls {
            Some(tls) => Ok(tls.reload()?),
            None => Err(ServerError::NoTls),
        }
    }

    /// Shuts down gracefully: stops accepting, shuts the engine down (pending messages are
    /// flushed to connected sessions until `shutdown_timeout`, then kept in the report), closes
    /// every WebSocket with 1001, and waits for the connections to finish, at most
    /// `shutdown_timeout` in all. Returns the engine's report.
    pub async fn shutdown(self) -> ShutdownReport {
        let deadline = self.shared.config.shutdown_timeout;
        let started = Instant::now();
        let _ = self.stop.send(true);
        let options = ShutdownOptions::default().flush_for(deadline / 2);
        let report = self.shared.engine.shutdown(options).await;
        let mut connections = match self.acceptor.await {
            Ok(set) => set,
            Err(_) => JoinSet::new(),
        };
        let left = deadline.saturating_sub(started.elapsed());
        let drained = tokio::time::timeout(left, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                still_open = connections.len(),
                "connections still open at the shutdown deadline; aborting them"
            );
            connections.abort_all();
        }
        tracing::info!(
            flushed = report.flushed,
            kept = report.kept,
            dropped = report.dropped,
            sessions_closed = report.sessions_closed,
            took_ms = started.elapsed().as_millis() as u64,
            "tether stopped"
        );
        report
    }
}

/// Accepts connections until the server stops; returns the connection tasks still running.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let stopped = shared.stopped();
    tokio::pin!(stopped);
    loop {
        // Reap finished connection tasks so the set does not grow with every connection.
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(ticket) = shared.admission.admit(peer.ip()) else {
                        FrontStats::bump(&shared.stats.sockets_dropped);
                        continue;
                    };
                    if ticket.is_refused() {
                        FrontStats::bump(&shared.stats.sockets_refused);
                    }
                    let _ = stream.set_nodelay(true);
                    tasks.spawn(accept(stream, peer, ticket, shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tasks
}

/// Finishes the TLS handshake, if the port speaks TLS, within `header_timeout`, then serves
/// the connection. The ticket (the socket's slot) is held until the socket closes.
async fn accept(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    shared: Arc<Shared>,
) {
    let Some(tls) = &shared.tls else {
        return http::serve_connection(stream, peer, ticket, shared).await;
    };
    let handshake = tls.acceptor().accept(stream);
    match tokio::time::timeout(shared.config.header_timeout, handshake).await {
        Ok(Ok(stream)) => http::serve_connection(stream, peer, ticket, shared.clone()).await,
        Ok(Err(e)) => {
            FrontStats::bump(&shared.stats.tls_handshake_failures);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            FrontStats::bump(&shared.stats.header_timeouts);
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// What became of one publish request, over HTTP or WebSocket.
pub(crate) enum Published {
    Outcome(SendOutcome),
    Invalid(FrameError),
    BadInput(InvalidInput),
    TryLater,
    Stopping,
}

/// Hands one decoded publish to the engine and waits for its outcome. `arrived_us` is when
/// its HTTP request arrived (the engine's clock): the latency of its delivery counts from
/// there; without it, from this call.
pub(crate) async fn publish_one(
    shared: &Shared,
    request: PublishRequest,
    arrived_us: Option<u64>,
) -> Published {
    let (user, mut message) = match request.into_message() {
        Ok(m) => m,
        Err(e) => return Published::Invalid(e),
    };
    if let Some(at) = arrived_us {
        message.stamp_sent(at);
    }
    match shared.engine.try_send_confirmed(&user, message) {
        Ok(pending) => match pending.await {
            Ok(outcome) => Published::Outcome(outcome),
            Err(_) => Published::Stopping,
        },
        Err(TrySendError::Full(_)) => Published::TryLater,
        Err(TrySendError::ShuttingDown(_)) => Published::Stopping,
        Err(TrySendError::Invalid { error, .. }) => Published::BadInput(error),
    }
}

/// Runs the server with `config` until SIGINT or SIGTERM, then shuts down gracefully within
/// `shutdown_timeout` and returns `Ok(())`. SIGHUP reads the TLS files again.
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    let server = Server::start(config).await?;
    wait_for_signal(&server).await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM; on SIGHUP meanwhile, reads the TLS files again.
#[cfg(unix)]
async fn wait_for_signal(server: &Server) -> Result<(), ServerError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signals)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(ServerError::Signals)?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return r.map_err(ServerError::Signals),
            _ = term.recv() => return Ok(()),
            _ = hangup.recv() => match server.reload_tls() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(ServerError::NoTls) => tracing::info!("SIGHUP: no TLS, nothing to reload"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: the TLS files were not reloaded; the certificate in use stays"),
            },
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal(_: &Server) -> Result<(), ServerError> {
    tokio::signal::ctrl_c().await.map_err(ServerError::Signals)
}
