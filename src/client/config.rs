//! The client's settings: [`ClientBuilder`], each setting with its default and its limits,
//! checked into a [`ClientConfig`].

use std::fmt;
use std::time::Duration;

use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::ClientConfigError;
use crate::protocol::fingerprint;
use crate::{Backoff, ResumePoint};

/// A validated client configuration; build one with [`Client::builder`](super::Client::builder).
///
/// Its `Debug` output shows a fingerprint of the token (the first 8 hex digits of its
/// SHA-256), never the token.
#[derive(Clone)]
pub struct ClientConfig {
    pub(super) url: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) token: String,
    pub(super) backoff: Backoff,
    pub(super) auto_ack: bool,
    pub(super) connect_timeout: Duration,
    pub(super) max_frame_bytes: usize,
    pub(super) event_capacity: usize,
    pub(super) keepalive: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) request_timeout: Duration,
    pub(super) max_pending_requests: usize,
    pub(super) resume: Option<ResumePoint>,
    pub(super) device: Option<String>,
    /// For `wss://`: rustls trusting the given roots.
    #[cfg(feature = "tls")]
    pub(super) tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl ClientConfig {
    /// The WebSocket URL the client dials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The reconnect schedule of one client: its own random seed unless the application
    /// fixed one, so that clients built from one configuration spread their retries.
    pub(super) fn task_backoff(&self) -> Backoff {
        self.backoff.reseeded()
    }

    pub(super) fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_frame_size(Some(self.max_frame_bytes))
            .max_message_size(Some(self.max_frame_bytes))
    }
}

/// Settings of a [`Client`](super::Client), each with its default.
///
/// Its `Debug` output shows a fingerprint of the token, never the token.
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    token: String,
    backoff: Backoff,
    max_attempts: Option<u32>,
    auto_ack: bool,
    connect_timeout: Duration,
    max_frame_bytes: usize,
    event_capacity: usize,
    keepalive: Duration,
    idle_timeout: Duration,
    request_timeout: Duration,
    max_pending_requests: usize,
    resume: Option<ResumePoint>,
    device: Option<String>,
    /// PEM texts of the roots `wss://` trusts.
    #[cfg(feature = "tls")]
    tls_roots: Vec<Vec<u8>>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("token (sha256 prefix)", &fingerprint(&self.token))
            .field("backoff", &self.backoff)
            .field("auto_ack", &self.auto_ack)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("event_capacity", &self.event_capacity)
            .field("keepalive", &self.keepalive)
            .field("idle_timeout", &self.idle_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_pending_requests", &self.max_pending_requests)
            .field("resume", &self.resume)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("token (sha256 prefix)", &fingerprint(&self.token))
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .field("auto_ack", &self.auto_ack)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("event_capacity", &self.event_capacity)
            .field("keepalive", &self.keepalive)
            .field("idle_timeout", &self.idle_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_pending_requests", &self.max_pending_requests)
            .field("resume", &self.resume)
            .field("device", &self.device)
            .finish()
    }
}

impl ClientBuilder {
    pub(super) fn new(url: String, token: String) -> Self {
        Self {
            url,
            token,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            max_attempts: None,
            auto_ack: true,
            connect_timeout: Duration::from_secs(10),
            max_frame_bytes: 4 << 20,
            event_capacity: 1024,
            keepalive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            request_timeout: Duration::from_secs(10),
            max_pending_requests: 256,
            resume: None,
            device: None,
            #[cfg(feature = "tls")]
            tls_roots: Vec::new(),
        }
    }

    /// The reconnect schedule. Default: full jitter from 100 ms doubling to 30 s, no attempt
    /// limit. A `Backoff` with its own attempt limit ends the client when it runs out. Each
    /// client connected from the configuration draws its own random seed, so many clients
    /// that lost the server together do not retry in lockstep; a seed fixed with
    /// [`Backoff::with_seed`] is kept (every client then follows the same schedule).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Gives up after `n` consecutive failed reconnect attempts (`recv` then returns
    /// [`ClientError::GaveUp`](super::ClientError::GaveUp)). Default: unlimited, since a client of a message service is
    /// meant to come back whenever the server does; each wait is capped by the backoff.
    pub fn max_reconnect_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Acknowledge each message when `recv` is called again after it (its handler returned).
    /// Default true. With false, call [`Client::ack`](super::Client::ack).
    pub fn auto_ack(mut self, on: bool) -> Self {
        self.auto_ack = on;
        self
    }

    /// Time for TCP connect, WebSocket handshake and the `connected` frame. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Largest frame accepted from the server. Default 4 MiB (the engine's default payload
    /// limit is 1 MiB). At least 1 KiB.
    pub fn max_frame_bytes(mut self, n: usize) -> Self {
        self.max_frame_bytes = n;
        self
    }

    /// Events buffered between the connection and `recv`. Default 1024, at least 1.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// Send a WebSocket ping when nothing was sent for this long, so the server's idle
    /// timeout never closes a connection whose application is merely slow. Default 15 s.
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.keepalive = interval;
        self
    }

    /// Treat the connection as dead (and reconnect) after this long without any frame from
    /// the server while the client is reading. Default 45 s; must exceed `keepalive`.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long `publish` and `ping` wait for their answer. Default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Publishes and pings awaiting an answer at once. Default 256, at least 1.
    pub fn max_pending_requests(mut self, n: usize) -> Self {
        self.max_pending_requests = n;
        self
    }

    /// Resume the first connection from a point saved earlier ([`Client::resume_point`](super::Client::resume_point)),
    /// e.g. across a restart of the application. Default: connect fresh, which makes the
    /// server send every unacknowledged message again.
    pub fn resume_from(mut self, point: ResumePoint) -> Self {
        self.resume = Some(point);
        self
    }

    /// This client is the user's device `name`: each device of a user gets every message,
    /// with its own seqs, window, acks and resume. Keep the name in the application's
    /// storage so the device is the same one after a restart; a new name is a new device,
    /// which starts with what arrives from then on. Default: the user's default device.
    /// Not empty; the server limits its length (64 bytes by default).
    pub fn device(mut self, name: impl Into<String>) -> Self {
        self.device = Some(name.into());
        self
    }

    /// Trusts the root certificates in `pem` (one or more `CERTIFICATE` blocks) for
    /// `wss://`: the server's certificate must chain to one of them and name the URL's host.
    /// The client has no built-in roots, so `wss://` needs at least one. May be called
    /// again to add more.
    #[cfg(feature = "tls")]
    pub fn tls_root_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_roots.push(pem.into());
        self
    }

    /// Checks the settings.
    ///
    /// The URL must be `ws://host[:port][/path]`, or `wss://` with the feature `tls` (on by
    /// default) and a [root](Self::tls_root_pem) to trust; an empty path means `/ws`.
    ///
    /// ```
    /// use tether::client::Client;
    ///
    /// let config = Client::builder("ws://127.0.0.1:7700", "token").build().unwrap();
    /// assert_eq!(config.url(), "ws://127.0.0.1:7700/ws");
    /// // wss:// without a root to trust:
    /// let err = Client::builder("wss://example.com/ws", "token").build().unwrap_err();
    /// assert_eq!(err.setting(), "url");
    /// ```
    pub fn build(self) -> Result<ClientConfig, ClientConfigError> {
        let (url, host, port, secure) = parse_url(&self.url)?;
        #[cfg(feature = "tls")]
        let tls = match secure {
            true => Some(tls_config(&self.url, &self.tls_roots)?),
            false => None,
        };
        #[cfg(not(feature = "tls"))]
        if secure {
            return Err(ClientConfigError::new(
                "url",
                format!("{:?}: wss:// needs the feature `tls`", self.url),
            ));
        }
        let positive = |setting, d: Duration| {
            if d.is_zero() {
                Err(ClientConfigError::new(setting, "must be greater than 0"))
            } else {
                Ok(())
            }
        };
        positive("connect_timeout", self.connect_timeout)?;
        positive("keepalive", self.keepalive)?;
        positive("request_timeout", self.request_timeout)?;
        if self.idle_timeout <= self.keepalive {
            return Err(ClientConfigError::new(
                "idle_timeout",
                "must be greater than keepalive",
            ));
        }
        if self.max_frame_bytes < 1024 {
            return Err(ClientConfigError::new(
                "max_frame_bytes",
                "must be at least 1024",
            ));
        }
        if self.event_capacity == 0 {
            return Err(ClientConfigError::new(
                "event_capacity",
                "must be at least 1",
            ));
        }
        if self.max_pending_requests == 0 {
            return Err(ClientConfigError::new(
                "max_pending_requests",
                "must be at least 1",
            ));
        }
        if self.device.as_deref() == Some("") {
            return Err(ClientConfigError::new(
                "device",
                "must not be empty (leave it unset for the default device)",
            ));
        }
        let backoff = match self.max_attempts {
            Some(n) => self.backoff.with_max_attempts(n),
            None => self.backoff,
        };
        Ok(ClientConfig {
            url,
            host,
            port,
            token: self.token,
            backoff,
            auto_ack: self.auto_ack,
            connect_timeout: self.connect_timeout,
            max_frame_bytes: self.max_frame_bytes,
            event_capacity: self.event_capacity,
            keepalive: self.keepalive,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout,
            max_pending_requests: self.max_pending_requests,
            resume: self.resume,
            device: self.device,
            #[cfg(feature = "tls")]
            tls,
        })
    }
}

/// rustls trusting exactly the roots in `pems`.
#[cfg(feature = "tls")]
fn tls_config(
    url: &str,
    pems: &[Vec<u8>],
) -> Result<std::sync::Arc<tokio_rustls::rustls::ClientConfig>, ClientConfigError> {
    use tokio_rustls::rustls::crypto::ring;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::{ClientConfig as Tls, RootCertStore};

    let bad = |reason: String| ClientConfigError::new("tls_root_pem", reason);
    let mut roots = RootCertStore::empty();
    for pem in pems {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("not a usable root: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(ClientConfigError::new(
            "url",
            format!("{url:?}: wss:// needs a root to trust (tls_root_pem); none is built in"),
        ));
    }
    let mut config = Tls::builder_with_provider(std::sync::Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// `ws://` or `wss://host[:port][/path]` to (normalised URL, host to dial, port, TLS).
fn parse_url(text: &str) -> Result<(String, String, u16, bool), ClientConfigError> {
    let bad = |reason: &str| ClientConfigError::new("url", format!("{text:?}: {reason}"));
    let uri: Uri = text.parse().map_err(|_| bad("not a URL"))?;
    let (scheme, secure, default_port) = match uri.scheme_str() {
        Some("ws") => ("ws", false, 80),
        Some("wss") => ("wss", true, 443),
        _ => return Err(bad("expected ws://host[:port][/path] or wss://")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "credentials in the URL are not supported; use the token",
        ));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = authority.port_u16().unwrap_or(default_port);
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => "/ws",
        Some(p) => p,
    };
    let dial_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((
        format!("{scheme}://{authority}{path}"),
        dial_host,
        port,
        secure,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;

    #[test]
    fn clients_of_one_config_retry_on_their_own_schedules_unless_seeded() {
        let schedule = |mut b: Backoff| -> Vec<Duration> {
            (0..16)
                .map(|_| b.next_delay().expect("unlimited"))
                .collect()
        };
        let config = Client::builder("ws://127.0.0.1:1", "t").build().unwrap();
        let (a, b) = (config.task_backoff(), config.task_backoff());
        // 16 uniform draws of up to 100 ms .. 30 s: equal only if the seeds are.
        assert_ne!(schedule(a), schedule(b), "two clients, one config");
        let seeded = Client::builder("ws://127.0.0.1:1", "t")
            .backoff(Backoff::new(Duration::from_millis(100), Duration::from_secs(30)).with_seed(5))
            .build()
            .unwrap();
        assert_eq!(
            schedule(seeded.task_backoff()),
            schedule(seeded.task_backoff()),
            "a fixed seed is kept"
        );
    }
    #[test]
    fn urls_are_checked_and_normalised() {
        let ok = [
            (
                "ws://127.0.0.1:7700",
                "ws://127.0.0.1:7700/ws",
                "127.0.0.1",
                7700,
            ),
            ("ws://localhost/", "ws://localhost/ws", "localhost", 80),
            ("ws://[::1]:9/x?y=1", "ws://[::1]:9/x?y=1", "::1", 9),
            ("wss://h", "wss://h/ws", "h", 443),
        ];
        for (text, url, host, port) in ok {
            assert_eq!(
                parse_url(text),
                Ok((
                    url.to_owned(),
                    host.to_owned(),
                    port,
                    text.starts_with("wss")
                )),
                "{text}"
            );
        }
        for bad in ["", "http://h/ws", "ws://", "ws://u:p@h/ws", "h:1"] {
            assert_eq!(parse_url(bad).map_err(|e| e.setting()), Err("url"), "{bad}");
        }
    }
    #[test]
    fn builder_refuses_out_of_range_settings() {
        let b = || Client::builder("ws://127.0.0.1:1/ws", "t");
        let cases = [
            (b().event_capacity(0), "event_capacity"),
            (b().max_pending_requests(0), "max_pending_requests"),
            (b().max_frame_bytes(10), "max_frame_bytes"),
            (b().connect_timeout(Duration::ZERO), "connect_timeout"),
            (
                b().keepalive(Duration::from_secs(5))
                    .idle_timeout(Duration::from_secs(5)),
                "idle_timeout",
            ),
        ];
        for (builder, setting) in cases {
            assert_eq!(
                builder.build().map(|_| ()).map_err(|e| e.setting()),
                Err(setting)
            );
        }
        assert!(b().build().is_ok());
    }
}
