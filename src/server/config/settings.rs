//! Every setting of `tether serve`, each declared once: its doc comment is its help text,
//! then its name, field type, default, syntax, and the clauses of [`settings!`] (limits, how
//! it reaches the engine). The name is also the file key; the flag and the `TETHER_*`
//! variable are spelled from it.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use super::check::{self, at_least_1ms, buffer_size, log_filter, min_bytes, origins, positive};
use super::syntax::{Addr, Bool, Count, Kind, List, Named, Opt, Secret, Size, Syntax, Text, Time};
use super::table::{ascii, given_or, respell, settings};
use super::MIN_API_KEY_BYTES;
use crate::server::auth;
use crate::{DedupMode, EngineBuilder, OverflowPolicy, UserLimits};

const DEFAULT_FRAME_BYTES: usize = 64 * 1024;

settings! {
    /// Everything the server runs with. Build it with [`ServerConfig::parse_from`] or
    /// [`ServerConfig::from_sources`] (which validate), or start from [`Default`] and set
    /// fields, then call [`validate`](Self::validate). Each field is the setting of the same
    /// name; `tether serve --help` and docs/configuration.md give its flag, variable and
    /// default.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tether::server::config::ServerConfig;
    ///
    /// let env = [("TETHER_IDLE_TIMEOUT", "2m")];
    /// let config = ServerConfig::parse_from(["serve", "--listen", "0.0.0.0:9000"], env)?;
    /// assert_eq!(config.listen.port(), 9000);
    /// assert_eq!(config.idle_timeout, Duration::from_secs(120));
    /// assert_eq!(config.max_frame_bytes, 64 * 1024); // the default
    /// # Ok::<(), tether::server::config::ConfigError>(())
    /// ```
    pub struct ServerConfig;

    "Network and access" {
        /// Address and port to listen on (HTTP and WebSocket on one port).
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7700)), Addr;

        /// HS256 secret that client tokens are signed with, at least 32 bytes. Prefer the
        /// environment or the file: flags show in the process list.
        jwt_secret: Option<String> = None, Opt<Secret>,
            shown "none; with api_key also unset, development mode generates both",
            check min_bytes(auth::MIN_SECRET_BYTES, " for HS256 (RFC 7518 section 3.2)");

        /// Key for the HTTP publish API, sent as Authorization: Bearer followed by the key, at
        /// least 16 bytes. With only one of jwt_secret and api_key set the server does not
        /// start.
        api_key: Option<String> = None, Opt<Secret>, value "KEY",
            shown "none; with jwt_secret also unset, development mode generates both",
            check min_bytes(MIN_API_KEY_BYTES, "");

        /// Origins allowed to open WebSocket connections, comma-separated, each exactly
        /// scheme://host or scheme://host:port; others get 403. A request without Origin (not
        /// a browser) is not checked.
        allowed_origins: Vec<String> = Vec::new(), List, value "ORIGINS",
            shown "empty: any origin",
            check |v| origins(v);

        /// PEM file with the server's certificate chain: with tls_key, the port serves
        /// https:// and wss:// (TLS 1.2 and 1.3, rustls). Both files are read again on SIGHUP;
        /// connections open at the time keep the certificate they began with.
        tls_cert: Option<String> = None, Opt<Text>, value "PATH", shown "none: plain TCP";

        /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1) of tls_cert.
        tls_key: Option<String> = None, Opt<Text>, value "PATH", shown "none: plain TCP";

        /// Let WebSocket clients publish to other users.
        allow_client_publish: bool = false, Bool;

        /// Serve a WebSocket echo service at /echo, for conformance suites such as Autobahn.
        echo_route: bool = false, Bool;

        /// Serve the monitoring dashboard at /dashboard and its data at /api/dashboard (which
        /// needs the API key unless the server listens on loopback). Development mode turns it
        /// on unless it is set; off, both routes answer 404.
        dashboard: Option<bool> = None, Opt<Bool>, shown "false; true in development mode";
    }

    "Logging" {
        /// Log filter: a level, or target=level pairs, comma-separated (RUST_LOG without span
        /// filters), e.g. info,tether=debug. Logs go to stderr.
        log: String = "info".to_owned(), Text, value "FILTER", check |v| log_filter(v);

        /// Log line format: human (one line of text per event) or json (one JSON object per
        /// line).
        log_format: LogFormat = LogFormat::Human, Named<LogFormat>, value "human|json";
    }

    "Limits" {
        /// Largest WebSocket frame and message (1 byte to 1 GiB); a larger one closes the
        /// connection with 1009.
        max_frame_bytes: usize = DEFAULT_FRAME_BYTES, Size, check buffer_size;

        /// Largest HTTP request body (1 byte to 1 GiB); a larger one is 413.
        max_body_bytes: usize = DEFAULT_FRAME_BYTES, Size,
            follows max_frame_bytes, check buffer_size;

        /// Most sockets open at once, HTTP, /echo and WebSocket alike; past it, an HTTP
        /// request is answered 503 with Retry-After and a WebSocket is closed with 4100 and
        /// retry_after_ms.
        max_connections: usize = 10_000, Count, check positive;

        /// Most sockets open at once from one IP address, answered past it as past
        /// max_connections. Behind a reverse proxy every socket comes from the proxy's
        /// address: raise it to max_connections there.
        max_connections_per_ip: usize = 256, Count, check positive;

        /// Time a client has to send a request's headers (and finish the TLS handshake);
        /// then the connection is closed.
        header_timeout: Duration = Duration::from_secs(5), Time, check at_least_1ms;

        /// Time a client has to send a whole request body once the headers are in; then it
        /// is answered 408.
        body_timeout: Duration = Duration::from_secs(30), Time, check at_least_1ms;

        /// After answering a request before reading all of its body (413, 401, 405, 429,
        /// 503), bytes of it still read and discarded before closing, so that the client can
        /// read the answer instead of a reset (1 byte to 1 GiB).
        linger_bytes: usize = 64 << 20, Size, check buffer_size;

        /// Longest that discarding may take.
        linger_time: Duration = Duration::from_secs(10), Time, check at_least_1ms;

        /// Time a new connection has to send its connect frame; then it is closed with 4001.
        connect_timeout: Duration = Duration::from_secs(5), Time, check at_least_1ms;

        /// Close a connection (1001) after this long without a frame from the client (pongs
        /// count); must exceed ping_interval.
        idle_timeout: Duration = Duration::from_secs(60), Time, check at_least_1ms;

        /// Ping a quiet client this often.
        ping_interval: Duration = Duration::from_secs(20), Time, check at_least_1ms;

        /// Size of a connection's read buffer and of the write buffer it fills before writing
        /// to the socket, 1 byte to 1 GiB (tungstenite's default is 128 KiB each).
        write_buffer_bytes: usize = 16 * 1024, Size, check buffer_size;

        /// Longest a write to a client may take before it counts as a delivery failure for
        /// the session's circuit breaker; the frames stay queued in order and no new delivery
        /// is taken until they are written.
        write_timeout: Duration = Duration::from_secs(10), Time, check at_least_1ms;

        /// Publishes per second one user may make over WebSocket, across all its
        /// connections and reconnects (token bucket refill); more are refused with
        /// rate_limited.
        publish_rate: u32 = 100, Count<u32>, check positive;

        /// Publishes one user may make in a burst (token bucket size).
        publish_burst: u32 = 200, Count<u32>, check positive;

        /// Messages per second one API key may publish over HTTP (token bucket refill; a
        /// batch takes one token per message); more are answered 429 with Retry-After.
        http_publish_rate: u32 = 50_000, Count<u32>, check positive;

        /// Messages one API key may publish over HTTP in a burst (token bucket size); a
        /// larger batch is 413.
        http_publish_burst: u32 = 100_000, Count<u32>, check positive;

        /// Longest a graceful shutdown (SIGINT, SIGTERM) may take: stop accepting, flush to
        /// connected sessions for half of it, close every WebSocket with 1001, wait for the
        /// connections at most this long in all.
        shutdown_timeout: Duration = Duration::from_secs(10), Time, check at_least_1ms;
    }

    "Engine" {
        /// Engine shards (worker threads).
        shards: Option<usize> = None, Opt<Count>,
            shown "the machine's available parallelism", check positive, engine shards;

        /// Messages in flight (delivered, not acknowledged) per user.
        window: Option<usize> = None, Opt<Count>, shown 1024, check positive, engine window;

        /// Most users the engine keeps mailboxes for.
        max_users: Option<usize> = None, Opt<Count>,
            shown 10_000_000, check positive, engine max_users;

        /// Device mailboxes per user (each device gets every message); one more evicts the
        /// device away longest, or is refused (4100) when all are connected. 1 to 1024.
        max_devices_per_user: Option<usize> = None, Opt<Count>,
            shown 10, check positive, engine max_devices_per_user;

        /// Longest device name a connect frame may give, in bytes.
        max_device_id_len: Option<usize> = None, Opt<Count>,
            shown 64, check positive, engine max_device_id_len;

        /// Engine-wide budget for held payload bytes; near it, low priorities are refused
        /// first.
        memory_budget_bytes: Option<u64> = None, Opt<Size<u64>>,
            shown "1GiB", check positive, engine memory_budget_bytes;

        /// Messages queued per user while away.
        max_messages_per_user: Option<usize> = None, Opt<Count>,
            shown UserLimits::default().max_messages,
            check positive, user_limit max_messages;

        /// Payload bytes queued per user while away.
        max_bytes_per_user: Option<usize> = None, Opt<Size>,
            shown Size::<usize>::show(&UserLimits::default().max_bytes),
            check positive, user_limit max_bytes;

        /// What a full mailbox does with one more message: drop-oldest, drop-newest or reject.
        overflow: Option<OverflowPolicy> = None, Opt<Named<OverflowPolicy>>,
            value "drop-oldest|drop-newest|reject",
            shown OverflowPolicy::default(), user_limit overflow;

        /// What counts as a duplicate message: off, ids or ids-and-content.
        dedup: Option<DedupMode> = None, Opt<Named<DedupMode>>, value "off|ids|ids-and-content",
            shown DedupMode::default(), engine dedup;
    }
}

/// One setting, as the rest of the module sees it.
pub(super) struct Setting {
    /// The file key, and the name errors use.
    pub(super) name: &'static str,
    /// `name` with dashes.
    pub(super) flag: &'static str,
    pub(super) env: &'static str,
    /// The `--help` section it is listed under.
    pub(super) heading: &'static str,
    /// The field's doc comment, which `--help` and docs/configuration.md show too.
    pub(super) help: &'static str,
    pub(super) value_name: &'static str,
    pub(super) kind: Kind,
    /// Never echoed: errors and `Debug` show `<redacted>` or a fingerprint instead.
    pub(super) secret: bool,
    /// What `--help` and the docs say the default is, given the defaults.
    pub(super) default_text: fn(&ServerConfig) -> String,
    /// Parses a value from any source into the field.
    pub(super) set: fn(&mut ServerConfig, &str) -> Result<(), String>,
    /// The field's value as errors and `Debug` show it.
    pub(super) show: fn(&ServerConfig) -> String,
    /// The setting's own limits (checks across settings are in `resolve`).
    pub(super) check: fn(&ServerConfig) -> Result<(), String>,
    /// For a setting whose default is another setting's value: copies it when no source
    /// gave this one.
    pub(super) follow: Option<fn(&mut ServerConfig)>,
    /// For an engine setting: hands a given value to the engine builder.
    pub(super) forward: Option<fn(&ServerConfig, &mut ToEngine)>,
}

impl Setting {
    /// The `TETHER_*` variable.
    pub(super) fn env(&self) -> &'static str {
        self.env
    }

    pub(super) fn help_text(&self) -> String {
        let default = (self.default_text)(&ServerConfig::default());
        format!("{} [env: {}] [default: {default}]", self.help, self.env)
    }
}

/// The engine builder with the per-user limits that settings give one by one and the engine
/// takes as one [`UserLimits`].
#[derive(Default)]
pub(super) struct ToEngine {
    pub(super) builder: EngineBuilder,
    limits: Option<UserLimits>,
}

impl ToEngine {
    pub(super) fn limits(&mut self) -> &mut UserLimits {
        self.limits.get_or_insert_with(UserLimits::default)
    }

    pub(super) fn finish(self) -> EngineBuilder {
        match self.limits {
            Some(limits) => self.builder.user_limits(limits),
            None => self.builder,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One line of text per event. The default.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Reads `human` or `json`.
///
/// ```
/// use tether::server::config::LogFormat;
///
/// assert_eq!("json".parse(), Ok(LogFormat::Json));
/// assert_eq!(LogFormat::Human.to_string(), "human");
/// ```
impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "human" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            _ => Err("expected human or json".into()),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Human => "human",
            Self::Json => "json",
        })
    }
}

impl fmt::Debug for ServerConfig {
    /// Every setting as it would be shown in an error; secrets as a SHA-256 prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("ServerConfig");
        for s in SETTINGS {
            out.field(s.name, &format_args!("{}", (s.show)(self)));
        }
        out.finish()
    }
}

impl ServerConfig {
    /// An engine builder with the engine settings that were given; the engine's own defaults
    /// for the rest (see [`EngineBuilder`]). The engine checks its ranges in
    /// [`EngineBuilder::build`].
    ///
    /// ```
    /// use tether::server::config::ServerConfig;
    ///
    /// let config = ServerConfig::parse_from(["serve", "--shards", "2", "--window", "64"], [("", ""); 0])?;
    /// let engine = config.engine_builder().build().expect("valid engine settings");
    /// assert_eq!(engine.config().shards(), 2);
    /// assert_eq!(engine.config().window(), 64);
    /// # Ok::<(), tether::server::config::ConfigError>(())
    /// ```
    pub fn engine_builder(&self) -> EngineBuilder {
        let mut to = ToEngine::default();
        for forward in SETTINGS.iter().filter_map(|s| s.forward) {
            forward(self, &mut to);
        }
        to.finish()
    }
}

/// The setting named `name`, for code that refers to one setting in particular.
pub(super) fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}
