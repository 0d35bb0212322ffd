//! The server's settings: from flags, `TETHER_*` environment variables and an optional TOML
//! file, in that order of precedence, over built-in defaults.
//!
//! Every setting has one name used everywhere: `max_frame_bytes` is the flag
//! `--max-frame-bytes`, the variable `TETHER_MAX_FRAME_BYTES` and the file key
//! `max_frame_bytes`. The file is flat (no tables) and may set any setting; an unknown key
//! is an error, so a typo never silently falls back to a default.
//!
//! Values are read the same way from every source: durations as `500ms`, `5s`, `2m`, `1h`,
//! `1d` or sums like `1m30s`; sizes as a byte count or with a binary suffix (`64KiB`, `1MiB`,
//! `1GiB`); booleans as `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`); lists
//! comma-separated (in the file also a TOML array of strings). In the TOML file, numbers and booleans may
//! also be written as TOML integers and booleans.
//!
//! # Why the environment is read here and not by clap
//!
//! clap's `env` feature reads the process environment when the argument is defined, with no
//! way to hand it another one. Reading `TETHER_*` here means the whole precedence chain is
//! one function ([`ServerConfig::from_sources`]) that tests feed with a map, safely in
//! parallel, and the file can slot in between the environment and the defaults. `--help`
//! still names each variable and default: the table below generates both the flags and the
//! help text, so they cannot drift apart.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::builder::ValueParser;
use clap::{Arg, ArgAction, ArgMatches, Command};
use thiserror::Error;

use super::auth::{self, ApiKey, JwtVerifier, MIN_SECRET_BYTES};
use crate::{DedupMode, EngineBuilder, OverflowPolicy, UserId, UserLimits};

/// Shortest API key accepted, in bytes: long enough that guessing is hopeless, short enough
/// for any key a person would generate.
pub const MIN_API_KEY_BYTES: usize = 16;

/// The environment variable naming the config file (like `--config`).
pub const CONFIG_ENV: &str = "TETHER_CONFIG";

/// Where a value came from; errors name it so the operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag (its long name, without the dashes).
    Flag(&'static str),
    /// An environment variable (its name).
    Env(String),
    /// A key in the TOML file at this path.
    File(PathBuf),
    /// The built-in default.
    Default,
    /// Set in code on a [`ServerConfig`] (checked by [`ServerConfig::validate`]).
    Code,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag --{flag}"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Default => f.write_str("the built-in default"),
            Origin::Code => f.write_str("the configuration set in code"),
        }
    }
}

/// Why the server's settings cannot be used. Each variant names the setting (or file) at
/// fault. Distinct from the engine's [`tether::ConfigError`](crate::ConfigError), which
/// [`EngineBuilder::build`] returns for the engine settings the server forwards.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("invalid {setting} {value:?} (from {origin}): {reason}")]
    Invalid {
        /// The setting's name (as in the config file).
        setting: &'static str,
        /// Where the value came from.
        origin: Origin,
        /// The value as given (`<redacted>` for secrets).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TOML file has a key that is no setting.
    #[error("config file {}: unknown setting {key:?}", path.display())]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// The TOML file cannot be read or is not valid TOML.
    #[error("config file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Exactly one of `jwt_secret` and `api_key` is set. Development mode needs both absent;
    /// anything else needs both present, so that a half-configured production server never
    /// starts with a generated credential nobody knows.
    #[error(
        "{missing} is not set but {present} is: set both, or neither to run in development mode"
    )]
    MissingCredential {
        /// The setting that is missing.
        missing: &'static str,
        /// The one that is set.
        present: &'static str,
    },
    /// The operating system's random number generator failed.
    #[error("cannot generate development credentials: {0}")]
    Random(#[source] std::io::Error),
    /// The command line did not parse (only from [`ServerConfig::parse_from`]; the binary
    /// lets clap report these itself).
    #[error("{0}")]
    Args(#[from] clap::Error),
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

/// Everything the server runs with. Build it with [`ServerConfig::parse_from`] or
/// [`ServerConfig::from_sources`] (which validate), or start from [`Default`] and set fields,
/// then call [`validate`](Self::validate).
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
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Address and port to listen on. Default `127.0.0.1:7700`.
    pub listen: SocketAddr,
    /// HS256 secret for client tokens, at least 32 bytes. Default none (development mode
    /// when `api_key` is unset too; see [`ensure_credentials`](Self::ensure_credentials)).
    pub jwt_secret: Option<String>,
    /// Key for the HTTP publish API (`Authorization: Bearer <key>`), at least 16 bytes.
    /// Default none.
    pub api_key: Option<String>,
    /// Origins allowed to open WebSocket connections (exact `scheme://host[:port]`); empty
    /// allows any. Default empty.
    pub allowed_origins: Vec<String>,
    /// Whether WebSocket clients may publish to other users. Default false.
    pub allow_client_publish: bool,
    /// Whether the WebSocket echo service at `/echo` (for conformance suites) is on. Default
    /// false.
    pub echo_route: bool,
    /// Whether the dashboard (`/dashboard` and `/api/dashboard`) is served. Default `None`:
    /// off, but on in development mode ([`ensure_credentials`](Self::ensure_credentials) turns
    /// it on unless it was set). See [`dashboard_enabled`](Self::dashboard_enabled).
    pub dashboard: Option<bool>,
    /// Log filter: `level` or `target=level` pairs, comma-separated, as `RUST_LOG` without
    /// span filters. Default `info`.
    pub log: String,
    /// Log line format. Default human.
    pub log_format: LogFormat,
    /// Largest WebSocket frame and message, in bytes. Default 64 KiB.
    pub max_frame_bytes: usize,
    /// Largest HTTP request body, in bytes. Default: `max_frame_bytes`.
    pub max_body_bytes: usize,
    /// Most WebSocket connections at once. Default 10,000.
    pub max_connections: usize,
    /// Time a new connection has to send its `connect` frame. Default 5 s.
    pub connect_timeout: Duration,
    /// Time without any frame from the client after which the connection is closed.
    /// Default 60 s; must exceed `ping_interval`.
    pub idle_timeout: Duration,
    /// How often the server pings an otherwise quiet client. Default 20 s.
    pub ping_interval: Duration,
    /// Bytes a connection's writer buffers before flushing (tungstenite's default is
    /// 128 KiB per connection). Default 16 KiB.
    pub write_buffer_bytes: usize,
    /// Longest a write to a client may take before it counts as a delivery failure for the
    /// session's circuit breaker. Default 10 s.
    pub write_timeout: Duration,
    /// Publishes per second one connection may make (token bucket refill). Default 100.
    pub publish_rate: u32,
    /// Publishes one connection may make in a burst (token bucket size). Default 200.
    pub publish_burst: u32,
    /// Longest a graceful shutdown may take before connections are cut. Default 10 s.
    pub shutdown_timeout: Duration,
    /// Engine shards. Default: the engine's (the machine's available parallelism).
    pub shards: Option<usize>,
    /// Messages in flight per user. Default: the engine's (1024).
    pub window: Option<usize>,
    /// Most mailboxes. Default: the engine's (10,000,000).
    pub max_users: Option<usize>,
    /// Engine-wide budget for held payload bytes. Default: the engine's (1 GiB).
    pub memory_budget_bytes: Option<u64>,
    /// Messages queued per user. Default: the engine's (1000).
    pub max_messages_per_user: Option<usize>,
    /// Payload bytes queued per user. Default: the engine's (1 MiB).
    pub max_bytes_per_user: Option<usize>,
    /// What a full mailbox does. Default: the engine's (drop-oldest).
    pub overflow: Option<OverflowPolicy>,
    /// Duplicate detection. Default: the engine's (ids).
    pub dedup: Option<DedupMode>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|s| auth::fingerprint(s));
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("jwt_secret (sha256 prefix)", &redact(&self.jwt_secret))
            .field("api_key (sha256 prefix)", &redact(&self.api_key))
            .field("allowed_origins", &self.allowed_origins)
            .field("allow_client_publish", &self.allow_client_publish)
            .field("echo_route", &self.echo_route)
            .field("dashboard", &self.dashboard)
            .field("log", &self.log)
            .field("log_format", &self.log_format)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("write_buffer_bytes", &self.write_buffer_bytes)
            .field("write_timeout", &self.write_timeout)
            .field("publish_rate", &self.publish_rate)
            .field("publish_burst", &self.publish_burst)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("shards", &self.shards)
            .field("window", &self.window)
            .field("max_users", &self.max_users)
            .field("memory_budget_bytes", &self.memory_budget_bytes)
            .field("max_messages_per_user", &self.max_messages_per_user)
            .field("max_bytes_per_user", &self.max_bytes_per_user)
            .field("overflow", &self.overflow)
            .field("dedup", &self.dedup)
            .finish()
    }
}

impl Default for ServerConfig {
    /// The documented defaults (a test checks they equal what the table's defaults parse
    /// to). No credentials: see [`ensure_credentials`](Self::ensure_credentials).
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            jwt_secret: None,
            api_key: None,
            allowed_origins: Vec::new(),
            allow_client_publish: false,
            echo_route: false,
            dashboard: None,
            log: "info".to_owned(),
            log_format: LogFormat::Human,
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 64 * 1024,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(20),
            write_buffer_bytes: 16 * 1024,
            write_timeout: Duration::from_secs(10),
            publish_rate: 100,
            publish_burst: 200,
            shutdown_timeout: Duration::from_secs(10),
            shards: None,
            window: None,
            max_users: None,
            memory_budget_bytes: None,
            max_messages_per_user: None,
            max_bytes_per_user: None,
            overflow: None,
            dedup: None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The table of settings: one entry per setting drives the flags, the help text, the
// environment variable names, the accepted file keys and the defaults.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Value,
    /// A flag that may stand alone (`--dashboard` = `--dashboard=true`).
    Bool,
    /// Comma-separated; the flag may repeat and the file may give a TOML array.
    List,
}

struct Setting {
    name: &'static str,
    /// `name` with dashes; a test checks it.
    flag: &'static str,
    value_name: &'static str,
    heading: &'static str,
    help: &'static str,
    /// Parsed when no source gives a value, and shown in `--help`.
    default: Option<&'static str>,
    /// Shown in `--help` when there is no parsed default.
    default_note: &'static str,
    kind: Kind,
    secret: bool,
}

impl Setting {
    fn env(&self) -> String {
        format!("TETHER_{}", self.name.to_ascii_uppercase())
    }

    fn help_text(&self) -> String {
        let default = self.default.unwrap_or(self.default_note);
        format!("{} [env: {}] [default: {}]", self.help, self.env(), default)
    }
}

const NET: &str = "Network and access";
const LIMITS: &str = "Limits";
const ENGINE: &str = "Engine";
const LOGS: &str = "Logging";

const fn setting(
    name: &'static str,
    flag: &'static str,
    value_name: &'static str,
    heading: &'static str,
    default: Option<&'static str>,
    help: &'static str,
) -> Setting {
    Setting {
        name,
        flag,
        value_name,
        heading,
        help,
        default,
        default_note: "none",
        kind: Kind::Value,
        secret: false,
    }
}

const fn noted(mut s: Setting, note: &'static str) -> Setting {
    s.default_note = note;
    s
}

const fn boolean(mut s: Setting) -> Setting {
    s.kind = Kind::Bool;
    s
}

const LISTEN: Setting = setting(
    "listen",
    "listen",
    "IP:PORT",
    NET,
    Some("127.0.0.1:7700"),
    "Address and port to listen on",
);
const JWT_SECRET: Setting = Setting {
    secret: true,
    ..noted(
        setting(
            "jwt_secret",
            "jwt-secret",
            "SECRET",
            NET,
            None,
            "HS256 secret that client tokens are signed with, at least 32 bytes. Prefer the \
             environment or the file: flags show in the process list",
        ),
        "none; with api_key also unset, development mode generates both",
    )
};
const API_KEY: Setting = Setting {
    secret: true,
    ..noted(
        setting(
            "api_key",
            "api-key",
            "KEY",
            NET,
            None,
            "Key for the HTTP publish API (Authorization: Bearer <KEY>), at least 16 bytes",
        ),
        "none; with jwt_secret also unset, development mode generates both",
    )
};
const ALLOWED_ORIGINS: Setting = Setting {
    kind: Kind::List,
    ..noted(
        setting(
            "allowed_origins",
            "allowed-origins",
            "ORIGINS",
            NET,
            None,
            "Origins allowed to open WebSocket connections, comma-separated, each exactly \
             scheme://host[:port]",
        ),
        "empty: any origin",
    )
};
const ALLOW_CLIENT_PUBLISH: Setting = boolean(setting(
    "allow_client_publish",
    "allow-client-publish",
    "BOOL",
    NET,
    Some("false"),
    "Let WebSocket clients publish to other users",
));
const ECHO_ROUTE: Setting = boolean(setting(
    "echo_route",
    "echo-route",
    "BOOL",
    NET,
    Some("false"),
    "Serve a WebSocket echo service at /echo, for conformance suites such as Autobahn",
));
const DASHBOARD: Setting = boolean(noted(
    setting(
        "dashboard",
        "dashboard",
        "BOOL",
        NET,
        None,
        "Serve the monitoring dashboard at /dashboard (its data needs the API key unless the \
         server listens on loopback)",
    ),
    "false; true in development mode",
));
const LOG: Setting = setting(
    "log",
    "log",
    "FILTER",
    LOGS,
    Some("info"),
    "Log filter: a level, or target=level pairs, comma-separated (RUST_LOG without span \
     filters), e.g. info,tether=debug",
);
const LOG_FORMAT: Setting = setting(
    "log_format",
    "log-format",
    "human|json",
    LOGS,
    Some("human"),
    "Log line format",
);
/// The largest value of the size limits (`max_frame_bytes`, `max_body_bytes`,
/// `write_buffer_bytes`): 1 GiB.
pub const MAX_BUFFER_BYTES: usize = 1 << 30;

const MAX_FRAME_BYTES: Setting = setting(
    "max_frame_bytes",
    "max-frame-bytes",
    "SIZE",
    LIMITS,
    Some("64KiB"),
    "Largest WebSocket frame and message",
);
const MAX_BODY_BYTES: Setting = noted(
    setting(
        "max_body_bytes",
        "max-body-bytes",
        "SIZE",
        LIMITS,
        None,
        "Largest HTTP request body",
    ),
    "max_frame_bytes",
);
const MAX_CONNECTIONS: Setting = setting(
    "max_connections",
    "max-connections",
    "N",
    LIMITS,
    Some("10000"),
    "Most WebSocket connections at once",
);
const CONNECT_TIMEOUT: Setting = setting(
    "connect_timeout",
    "connect-timeout",
    "DURATION",
    LIMITS,
    Some("5s"),
    "Time a new connection has to send its connect frame",
);
const IDLE_TIMEOUT: Setting = setting(
    "idle_timeout",
    "idle-timeout",
    "DURATION",
    LIMITS,
    Some("60s"),
    "Close a connection after this long without a frame from the client; must exceed \
     ping_interval",
);
const PING_INTERVAL: Setting = setting(
    "ping_interval",
    "ping-interval",
    "DURATION",
    LIMITS,
    Some("20s"),
    "Ping a quiet client this often",
);
const WRITE_BUFFER_BYTES: Setting = setting(
    "write_buffer_bytes",
    "write-buffer-bytes",
    "SIZE",
    LIMITS,
    Some("16KiB"),
    "Size of a connection's read buffer and of the write buffer it fills before writing to the socket (tungstenite's default is 128 KiB each)",
);
const WRITE_TIMEOUT: Setting = setting(
    "write_timeout",
    "write-timeout",
    "DURATION",
    LIMITS,
    Some("10s"),
    "Longest a write to a client may take before it counts as a delivery failure",
);
const PUBLISH_RATE: Setting = setting(
    "publish_rate",
    "publish-rate",
    "N",
    LIMITS,
    Some("100"),
    "Publishes per second per connection (sustained)",
);
const PUBLISH_BURST: Setting = setting(
    "publish_burst",
    "publish-burst",
    "N",
    LIMITS,
    Some("200"),
    "Publishes per connection allowed in a burst",
);
const SHUTDOWN_TIMEOUT: Setting = setting(
    "shutdown_timeout",
    "shutdown-timeout",
    "DURATION",
    LIMITS,
    Some("10s"),
    "Longest a graceful shutdown may take",
);
const SHARDS: Setting = noted(
    setting(
        "shards",
        "shards",
        "N",
        ENGINE,
        None,
        "Engine shards (worker threads)",
    ),
    "the machine's available parallelism",
);
const WINDOW: Setting = noted(
    setting(
        "window",
        "window",
        "N",
        ENGINE,
        None,
        "Messages in flight (delivered, not acknowledged) per user",
    ),
    "1024",
);
const MAX_USERS: Setting = noted(
    setting(
        "max_users",
        "max-users",
        "N",
        ENGINE,
        None,
        "Most mailboxes the engine keeps",
    ),
    "10000000",
);
const MEMORY_BUDGET_BYTES: Setting = noted(
    setting(
        "memory_budget_bytes",
        "memory-budget-bytes",
        "SIZE",
        ENGINE,
        None,
        "Engine-wide budget for held payload bytes; near it, low priorities are refused first",
    ),
    "1GiB",
);
const MAX_MESSAGES_PER_USER: Setting = noted(
    setting(
        "max_messages_per_user",
        "max-messages-per-user",
        "N",
        ENGINE,
        None,
        "Messages queued per user",
    ),
    "1000",
);
const MAX_BYTES_PER_USER: Setting = noted(
    setting(
        "max_bytes_per_user",
        "max-bytes-per-user",
        "SIZE",
        ENGINE,
        None,
        "Payload bytes queued per user",
    ),
    "1MiB",
);
const OVERFLOW: Setting = noted(
    setting(
        "overflow",
        "overflow",
        "drop-oldest|drop-newest|reject",
        ENGINE,
        None,
        "What a full mailbox does with one more message",
    ),
    "drop-oldest",
);
const DEDUP: Setting = noted(
    setting(
        "dedup",
        "dedup",
        "off|ids|ids-and-content",
        ENGINE,
        None,
        "What counts as a duplicate message",
    ),
    "ids",
);

static SETTINGS: &[&Setting] = &[
    &LISTEN,
    &JWT_SECRET,
    &API_KEY,
    &ALLOWED_ORIGINS,
    &ALLOW_CLIENT_PUBLISH,
    &ECHO_ROUTE,
    &DASHBOARD,
    &LOG,
    &LOG_FORMAT,
    &MAX_FRAME_BYTES,
    &MAX_BODY_BYTES,
    &MAX_CONNECTIONS,
    &CONNECT_TIMEOUT,
    &IDLE_TIMEOUT,
    &PING_INTERVAL,
    &WRITE_BUFFER_BYTES,
    &WRITE_TIMEOUT,
    &PUBLISH_RATE,
    &PUBLISH_BURST,
    &SHUTDOWN_TIMEOUT,
    &SHARDS,
    &WINDOW,
    &MAX_USERS,
    &MEMORY_BUDGET_BYTES,
    &MAX_MESSAGES_PER_USER,
    &MAX_BYTES_PER_USER,
    &OVERFLOW,
    &DEDUP,
];

// ---------------------------------------------------------------------------------------
// Flags.

/// The flags of `tether serve`, as given (unparsed: values are parsed with the other
/// sources by [`ServerConfig::from_sources`], so errors read the same whatever the source).
///
/// Implements [`clap::Args`], so a binary can embed it as a subcommand:
/// `enum Cmd { Serve(ServeArgs) }` with `#[derive(clap::Subcommand)]`.
#[derive(Clone, Default)]
pub struct ServeArgs {
    config: Option<PathBuf>,
    values: BTreeMap<&'static str, String>,
}

impl fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: BTreeMap<_, _> = SETTINGS
            .iter()
            .filter_map(|s| {
                let v = self.values.get(s.name)?;
                Some((s.name, if s.secret { "<redacted>" } else { v.as_str() }))
            })
            .collect();
        f.debug_struct("ServeArgs")
            .field("config", &self.config)
            .field("values", &shown)
            .finish()
    }
}

impl ServeArgs {
    /// The `--config` path, if given.
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn add_args(mut cmd: Command) -> Command {
        cmd = cmd.after_help(
            "Precedence: flag, then environment variable, then config file, then default.\n\
             Durations: 500ms, 5s, 2m, 1h, 1d or sums like 1m30s. Sizes: bytes, or 64KiB, \
             1MiB, 1GiB. Booleans: true or false (a bare --flag means true).",
        );
        cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .value_name("PATH")
                .value_parser(ValueParser::path_buf())
                .action(ArgAction::Set)
                .help(format!(
                    "TOML file with settings (keys as the flags, with underscores) \
                     [env: {CONFIG_ENV}] [default: none]"
                )),
        );
        for s in SETTINGS {
            let mut arg = Arg::new(s.name)
                .long(s.flag)
                .value_name(s.value_name)
                .value_parser(ValueParser::string())
                .help_heading(s.heading)
                .help(s.help_text());
            arg = match s.kind {
                Kind::Value => arg.action(ArgAction::Set),
                Kind::List => arg.action(ArgAction::Append),
                Kind::Bool => arg
                    .action(ArgAction::Set)
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true"),
            };
            cmd = cmd.arg(arg);
        }
        cmd
    }
}

impl clap::Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        Self::add_args(cmd)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::add_args(cmd)
    }
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ServeArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let lookup_failed = |e: clap::parser::MatchesError| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, e.to_string())
        };
        if let Some(path) = matches
            .try_get_one::<PathBuf>("config")
            .map_err(lookup_failed)?
        {
            self.config = Some(path.clone());
        }
        for s in SETTINGS {
            if let Some(values) = matches
                .try_get_many::<String>(s.name)
                .map_err(lookup_failed)?
            {
                let joined = values.map(String::as_str).collect::<Vec<_>>().join(",");
                self.values.insert(s.name, joined);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Resolution.

struct Sources {
    /// For each setting given anywhere, the value that wins and where it came from.
    chosen: BTreeMap<&'static str, (String, Origin)>,
}

impl Sources {
    fn gather(
        args: &ServeArgs,
        env: &BTreeMap<String, OsString>,
        file: Option<(&Path, &toml::Table)>,
    ) -> Result<Self, ConfigError> {
        let mut chosen = BTreeMap::new();
        if let Some((path, table)) = file {
            for (key, value) in table {
                let Some(s) = SETTINGS.iter().find(|s| s.name == key) else {
                    return Err(ConfigError::UnknownKey {
                        path: path.to_owned(),
                        key: key.clone(),
                    });
                };
                let origin = Origin::File(path.to_owned());
                // Only the TOML type is shown: rendering TOML back needs toml's `display`.
                let text = toml_to_text(s, value).map_err(|reason| {
                    invalid(
                        s,
                        origin.clone(),
                        &format!("<{}>", value.type_str()),
                        reason,
                    )
                })?;
                chosen.insert(s.name, (text, origin));
            }
        }
        for s in SETTINGS {
            let name = s.env();
            if let Some(value) = env.get(&name) {
                let origin = Origin::Env(name);
                let text = value
                    .to_str()
                    .ok_or_else(|| ConfigError::Invalid {
                        setting: s.name,
                        origin: origin.clone(),
                        value: value.to_string_lossy().into_owned(),
                        reason: "not valid UTF-8".into(),
                    })?
                    .to_owned();
                chosen.insert(s.name, (text, origin));
            }
            if let Some(value) = args.values.get(s.name) {
                chosen.insert(s.name, (value.clone(), Origin::Flag(s.flag)));
            }
        }
        Ok(Self { chosen })
    }

    /// The setting's value parsed, from the winning source or the default; `None` if neither.
    fn get<T>(
        &self,
        s: &'static Setting,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let (text, origin) = match self.chosen.get(s.name) {
            Some((text, origin)) => (text.as_str(), origin.clone()),
            None => match s.default {
                Some(default) => (default, Origin::Default),
                None => return Ok(None),
            },
        };
        parse(text.trim())
            .map(Some)
            .map_err(|reason| invalid(s, origin, text, reason))
    }

    fn origin(&self, s: &Setting) -> (Origin, Option<&str>) {
        match self.chosen.get(s.name) {
            Some((text, origin)) => (origin.clone(), Some(text)),
            None => (Origin::Default, s.default),
        }
    }
}

fn invalid(s: &Setting, origin: Origin, value: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        setting: s.name,
        origin,
        value: if s.secret {
            "<redacted>".into()
        } else {
            value.to_owned()
        },
        reason,
    }
}

fn toml_to_text(s: &Setting, value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) if s.kind == Kind::List => items
            .iter()
            .map(|item| match item {
                toml::Value::String(text) if !text.contains(',') => Ok(text.as_str()),
                _ => Err("expected an array of strings without commas".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        _ if s.kind == Kind::List => Err("expected an array of strings".into()),
        _ => Err("expected a string, an integer or a boolean".into()),
    }
}

fn always<T>(value: Option<T>, s: &Setting) -> Result<T, ConfigError> {
    // Only settings with a parsed default reach this, and `get` returns Some for them; the
    // error keeps a table mistake from becoming a panic.
    value.ok_or_else(|| invalid(s, Origin::Default, "", "the setting has no default".into()))
}

impl ServerConfig {
    /// Parses `tether serve` arguments (`args[0]` is the program name) with `env` as the
    /// environment (pass [`std::env::vars_os`] for the real one; only `TETHER_*` names are
    /// looked at), reading the TOML file named by `--config` or `TETHER_CONFIG` if any.
    pub fn parse_from<I, A, E, K, V>(args: I, env: E) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString> + Clone,
        E: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let cmd = ServeArgs::add_args(Command::new("serve"));
        let matches = cmd.try_get_matches_from(args)?;
        let args = <ServeArgs as clap::FromArgMatches>::from_arg_matches(&matches)?;
        Self::load(&args, env)
    }

    /// Resolves parsed flags with `env` (see [`parse_from`](Self::parse_from)), reading the
    /// TOML file named by `--config` or `TETHER_CONFIG` if any.
    pub fn load<E, K, V>(args: &ServeArgs, env: E) -> Result<Self, ConfigError>
    where
        E: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let env = tether_env(env);
        let path = match (&args.config, env.get(CONFIG_ENV)) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(path)) => Some(PathBuf::from(path)),
            (None, None) => None,
        };
        let text = match &path {
            Some(path) => Some(
                std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?,
            ),
            None => None,
        };
        let file = path.as_deref().zip(text.as_deref());
        Self::resolve(args, &env, file)
    }

    /// Resolves the settings from flags, `env` and the text of a TOML file (its path is only
    /// for messages), without any I/O: flag beats environment beats file beats default.
    /// Validates the result like [`validate`](Self::validate).
    ///
    /// ```
    /// use std::path::Path;
    /// use tether::server::config::{ServeArgs, ServerConfig};
    ///
    /// let file = (Path::new("tether.toml"), "publish_rate = 5\nwindow = 64\n");
    /// let env = [("TETHER_PUBLISH_RATE", "7")];
    /// let config = ServerConfig::from_sources(&ServeArgs::default(), env, Some(file))?;
    /// assert_eq!(config.publish_rate, 7); // the environment beats the file
    /// assert_eq!(config.window, Some(64));
    /// # Ok::<(), tether::server::config::ConfigError>(())
    /// ```
    pub fn from_sources<E, K, V>(
        args: &ServeArgs,
        env: E,
        file: Option<(&Path, &str)>,
    ) -> Result<Self, ConfigError>
    where
        E: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        Self::resolve(args, &tether_env(env), file)
    }

    fn resolve(
        args: &ServeArgs,
        env: &BTreeMap<String, OsString>,
        file: Option<(&Path, &str)>,
    ) -> Result<Self, ConfigError> {
        let table = match file {
            Some((path, text)) => Some((
                path,
                text.parse::<toml::Table>().map_err(|e| ConfigError::File {
                    path: path.to_owned(),
                    reason: e.to_string().trim_end().to_owned(),
                })?,
            )),
            None => None,
        };
        let src = Sources::gather(args, env, table.as_ref().map(|(p, t)| (*p, t)))?;

        let max_frame_bytes = always(src.get(&MAX_FRAME_BYTES, parse_size)?, &MAX_FRAME_BYTES)?;
        let config = ServerConfig {
            listen: always(src.get(&LISTEN, parse_addr)?, &LISTEN)?,
            jwt_secret: src.get(&JWT_SECRET, |s| Ok(s.to_owned()))?,
            api_key: src.get(&API_KEY, |s| Ok(s.to_owned()))?,
            allowed_origins: src.get(&ALLOWED_ORIGINS, parse_list)?.unwrap_or_default(),
            allow_client_publish: always(
                src.get(&ALLOW_CLIENT_PUBLISH, parse_bool)?,
                &ALLOW_CLIENT_PUBLISH,
            )?,
            echo_route: always(src.get(&ECHO_ROUTE, parse_bool)?, &ECHO_ROUTE)?,
            dashboard: src.get(&DASHBOARD, parse_bool)?,
            log: always(src.get(&LOG, |s| Ok(s.to_owned()))?, &LOG)?,
            log_format: always(src.get(&LOG_FORMAT, parse_log_format)?, &LOG_FORMAT)?,
            max_frame_bytes,
            max_body_bytes: src
                .get(&MAX_BODY_BYTES, parse_size)?
                .unwrap_or(max_frame_bytes),
            max_connections: always(src.get(&MAX_CONNECTIONS, parse_count)?, &MAX_CONNECTIONS)?,
            connect_timeout: always(src.get(&CONNECT_TIMEOUT, parse_duration)?, &CONNECT_TIMEOUT)?,
            idle_timeout: always(src.get(&IDLE_TIMEOUT, parse_duration)?, &IDLE_TIMEOUT)?,
            ping_interval: always(src.get(&PING_INTERVAL, parse_duration)?, &PING_INTERVAL)?,
            write_buffer_bytes: always(
                src.get(&WRITE_BUFFER_BYTES, parse_size)?,
                &WRITE_BUFFER_BYTES,
            )?,
            write_timeout: always(src.get(&WRITE_TIMEOUT, parse_duration)?, &WRITE_TIMEOUT)?,
            publish_rate: always(src.get(&PUBLISH_RATE, parse_u32)?, &PUBLISH_RATE)?,
            publish_burst: always(src.get(&PUBLISH_BURST, parse_u32)?, &PUBLISH_BURST)?,
            shutdown_timeout: always(
                src.get(&SHUTDOWN_TIMEOUT, parse_duration)?,
                &SHUTDOWN_TIMEOUT,
            )?,
            shards: src.get(&SHARDS, parse_count)?,
            window: src.get(&WINDOW, parse_count)?,
            max_users: src.get(&MAX_USERS, parse_count)?,
            memory_budget_bytes: src.get(&MEMORY_BUDGET_BYTES, parse_size)?.map(|n| n as u64),
            max_messages_per_user: src.get(&MAX_MESSAGES_PER_USER, parse_count)?,
            max_bytes_per_user: src.get(&MAX_BYTES_PER_USER, parse_size)?,
            overflow: src.get(&OVERFLOW, parse_overflow)?,
            dedup: src.get(&DEDUP, parse_dedup)?,
        };
        config.check(|s| src.origin(s))?;
        Ok(config)
    }

    /// Checks what parsing cannot: limits of zero, `ping_interval < idle_timeout`, secret
    /// lengths, origins, the log filter. [`parse_from`](Self::parse_from),
    /// [`load`](Self::load) and [`from_sources`](Self::from_sources) already call it; call it
    /// after changing fields in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(|_| (Origin::Code, None))
    }

    fn check<'a>(
        &'a self,
        origin_of: impl Fn(&'static Setting) -> (Origin, Option<&'a str>),
    ) -> Result<(), ConfigError> {
        let fail = |s: &'static Setting, shown: String, reason: String| {
            let (origin, text) = origin_of(s);
            Err(invalid(s, origin, text.unwrap_or(&shown), reason))
        };
        let positive: [(&'static Setting, u64); 8] = [
            (&MAX_FRAME_BYTES, self.max_frame_bytes as u64),
            (&MAX_BODY_BYTES, self.max_body_bytes as u64),
            (&MAX_CONNECTIONS, self.max_connections as u64),
            (&WRITE_BUFFER_BYTES, self.write_buffer_bytes as u64),
            (&PUBLISH_RATE, u64::from(self.publish_rate)),
            (&PUBLISH_BURST, u64::from(self.publish_burst)),
            (&SHARDS, self.shards.map_or(1, |n| n as u64)),
            (&WINDOW, self.window.map_or(1, |n| n as u64)),
        ];
        let engine_positive: [(&'static Setting, u64); 4] = [
            (&MAX_USERS, self.max_users.map_or(1, |n| n as u64)),
            (&MEMORY_BUDGET_BYTES, self.memory_budget_bytes.unwrap_or(1)),
            (
                &MAX_MESSAGES_PER_USER,
                self.max_messages_per_user.map_or(1, |n| n as u64),
            ),
            (
                &MAX_BYTES_PER_USER,
                self.max_bytes_per_user.map_or(1, |n| n as u64),
            ),
        ];
        for (s, value) in positive.into_iter().chain(engine_positive) {
            if value == 0 {
                return fail(s, "0".into(), "must be at least 1".into());
            }
        }
        // Buffers sized from these are allocated per connection, and sums of them must not
        // wrap: a bound far above any sane value keeps the arithmetic honest.
        for (s, value) in [
            (&MAX_FRAME_BYTES, self.max_frame_bytes),
            (&MAX_BODY_BYTES, self.max_body_bytes),
            (&WRITE_BUFFER_BYTES, self.write_buffer_bytes),
        ] {
            if value > MAX_BUFFER_BYTES {
                return fail(s, value.to_string(), "must be at most 1GiB".into());
            }
        }
        let durations = [
            (&CONNECT_TIMEOUT, self.connect_timeout),
            (&IDLE_TIMEOUT, self.idle_timeout),
            (&PING_INTERVAL, self.ping_interval),
            (&WRITE_TIMEOUT, self.write_timeout),
            (&SHUTDOWN_TIMEOUT, self.shutdown_timeout),
        ];
        for (s, d) in durations {
            if d < Duration::from_millis(1) {
                return fail(s, format!("{d:?}"), "must be at least 1ms".into());
            }
        }
        if self.ping_interval >= self.idle_timeout {
            return fail(
                &PING_INTERVAL,
                format!("{:?}", self.ping_interval),
                format!(
                    "must be shorter than idle_timeout ({:?}), or quiet clients are closed \
                     between pings",
                    self.idle_timeout
                ),
            );
        }
        if let Some(secret) = &self.jwt_secret {
            if secret.len() < MIN_SECRET_BYTES {
                return fail(
                    &JWT_SECRET,
                    String::new(),
                    format!(
                        "is {} bytes; HS256 needs at least {MIN_SECRET_BYTES} (RFC 7518 \
                         section 3.2)",
                        secret.len()
                    ),
                );
            }
        }
        if let Some(key) = &self.api_key {
            if key.len() < MIN_API_KEY_BYTES {
                return fail(
                    &API_KEY,
                    String::new(),
                    format!(
                        "is {} bytes; at least {MIN_API_KEY_BYTES} are required",
                        key.len()
                    ),
                );
            }
        }
        for origin in &self.allowed_origins {
            if let Err(reason) = check_origin(origin) {
                return fail(&ALLOWED_ORIGINS, self.allowed_origins.join(","), reason);
            }
        }
        if let Err(e) = self.log.parse::<tracing_subscriber::filter::Targets>() {
            return fail(&LOG, self.log.clone(), e.to_string());
        }
        Ok(())
    }

    /// Settles the credentials before the server starts.
    ///
    /// - both `jwt_secret` and `api_key` set: nothing to do, `Ok(None)`;
    /// - neither set: development mode. Generates both from the OS's CSPRNG, stores them in
    ///   `self`, and returns them with a token for user `demo` for `main` to print. It also
    ///   turns the dashboard on, unless `dashboard` was set either way;
    /// - exactly one set: [`ConfigError::MissingCredential`] naming the other. A generated
    ///   credential would be unknown to whoever configured the first one, so a half-done
    ///   production setup fails loudly rather than starting half-open.
    ///
    /// ```
    /// use tether::server::config::ServerConfig;
    ///
    /// let mut config = ServerConfig::default();
    /// let dev = config.ensure_credentials()?.expect("no credentials configured");
    /// assert_eq!(config.jwt_secret.as_deref(), Some(dev.jwt_secret.as_str()));
    /// assert!(config.jwt_verifier()?.verify(&dev.demo_token, std::time::SystemTime::now()).is_ok());
    /// # Ok::<(), tether::server::config::ConfigError>(())
    /// ```
    pub fn ensure_credentials(&mut self) -> Result<Option<DevCredentials>, ConfigError> {
        match (&self.jwt_secret, &self.api_key) {
            (Some(_), Some(_)) => Ok(None),
            (Some(_), None) => Err(ConfigError::MissingCredential {
                missing: API_KEY.name,
                present: JWT_SECRET.name,
            }),
            (None, Some(_)) => Err(ConfigError::MissingCredential {
                missing: JWT_SECRET.name,
                present: API_KEY.name,
            }),
            (None, None) => {
                let jwt_secret = auth::generate_secret().map_err(ConfigError::Random)?;
                let api_key = auth::generate_secret().map_err(ConfigError::Random)?;
                let demo_user = UserId::new(DEMO_USER).map_err(|e| {
                    invalid(&JWT_SECRET, Origin::Default, "", format!("demo user: {e}"))
                })?;
                // No expiry: the secret dies with the process, and so does the token.
                let demo_token =
                    auth::issue_token(&jwt_secret, &demo_user, None, SystemTime::now())
                        .map_err(|e| invalid(&JWT_SECRET, Origin::Default, "", e.to_string()))?;
                self.jwt_secret = Some(jwt_secret.clone());
                self.api_key = Some(api_key.clone());
                self.dashboard.get_or_insert(true);
                Ok(Some(DevCredentials {
                    jwt_secret,
                    api_key,
                    demo_user,
                    demo_token,
                }))
            }
        }
    }

    /// Whether the dashboard is served: `dashboard` if set, otherwise off (development mode
    /// sets it, see [`ensure_credentials`](Self::ensure_credentials)).
    ///
    /// ```
    /// use tether::server::config::ServerConfig;
    ///
    /// let mut config = ServerConfig::default();
    /// assert!(!config.dashboard_enabled());
    /// config.ensure_credentials()?; // development mode
    /// assert!(config.dashboard_enabled());
    ///
    /// let mut off = ServerConfig::parse_from(["serve", "--dashboard=false"], [("", ""); 0])?;
    /// off.ensure_credentials()?;
    /// assert!(!off.dashboard_enabled(), "an explicit setting wins");
    /// # Ok::<(), tether::server::config::ConfigError>(())
    /// ```
    pub fn dashboard_enabled(&self) -> bool {
        self.dashboard.unwrap_or(false)
    }

    /// The token verifier for the configured `jwt_secret`.
    pub fn jwt_verifier(&self) -> Result<JwtVerifier, ConfigError> {
        let secret = self
            .jwt_secret
            .as_deref()
            .ok_or(ConfigError::MissingCredential {
                missing: JWT_SECRET.name,
                present: "no credential (call ensure_credentials first)",
            })?;
        JwtVerifier::new(secret).map_err(|e| invalid(&JWT_SECRET, Origin::Code, "", e.to_string()))
    }

    /// The publish API's key checker for the configured `api_key`.
    pub fn api_key_checker(&self) -> Result<ApiKey, ConfigError> {
        let key = self
            .api_key
            .as_deref()
            .ok_or(ConfigError::MissingCredential {
                missing: API_KEY.name,
                present: "no credential (call ensure_credentials first)",
            })?;
        Ok(ApiKey::new(key))
    }

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
        let mut builder = crate::Engine::builder();
        if let Some(n) = self.shards {
            builder = builder.shards(n);
        }
        if let Some(n) = self.window {
            builder = builder.window(n);
        }
        if let Some(n) = self.max_users {
            builder = builder.max_users(n);
        }
        if let Some(n) = self.memory_budget_bytes {
            builder = builder.memory_budget_bytes(n);
        }
        if self.max_messages_per_user.is_some()
            || self.max_bytes_per_user.is_some()
            || self.overflow.is_some()
        {
            let d = UserLimits::default();
            builder = builder.user_limits(UserLimits {
                max_messages: self.max_messages_per_user.unwrap_or(d.max_messages),
                max_bytes: self.max_bytes_per_user.unwrap_or(d.max_bytes),
                overflow: self.overflow.unwrap_or(d.overflow),
            });
        }
        if let Some(mode) = self.dedup {
            builder = builder.dedup(mode);
        }
        builder
    }
}

/// The user development mode issues a token for.
pub const DEMO_USER: &str = "demo";

/// Credentials generated in development mode, for `main` to show the operator.
#[derive(Clone)]
#[non_exhaustive]
pub struct DevCredentials {
    /// The generated JWT secret.
    pub jwt_secret: String,
    /// The generated API key.
    pub api_key: String,
    /// The user the demo token is for ([`DEMO_USER`]).
    pub demo_user: UserId,
    /// A token for `demo_user`, without expiry.
    pub demo_token: String,
}

impl fmt::Debug for DevCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCredentials")
            .field("demo_user", &self.demo_user)
            .finish_non_exhaustive()
    }
}

impl DevCredentials {
    /// The plain lines `main` prints on stdout, for a person to copy.
    pub fn banner(&self) -> String {
        format!(
            "\n\
             DEVELOPMENT MODE: neither jwt_secret nor api_key is configured, so throwaway ones\n\
             were generated. They are valid until this process exits. Do not run production\n\
             like this: set TETHER_JWT_SECRET and TETHER_API_KEY (or the config file).\n\
             \n\
             \x20 TETHER_JWT_SECRET={}\n\
             \x20 TETHER_API_KEY={}\n\
             \x20 token for user {:?} (no expiry):\n\
             \x20 {}\n\
             \n\
             \x20 Publish API: Authorization: Bearer <TETHER_API_KEY>\n\
             \x20 New tokens:  tether token --user <id> (with TETHER_JWT_SECRET set as above)\n",
            self.jwt_secret,
            self.api_key,
            self.demo_user.as_str(),
            self.demo_token,
        )
    }
}

/// The `TETHER_*` names in `env` that are no setting (nor `TETHER_CONFIG`): most likely
/// typos, worth a warning.
pub fn unknown_env_vars<E, K, V>(env: E) -> Vec<String>
where
    E: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    tether_env(env)
        .into_keys()
        .filter(|name| name != CONFIG_ENV && !SETTINGS.iter().any(|s| s.env() == *name))
        .collect()
}

fn tether_env<E, K, V>(env: E) -> BTreeMap<String, OsString>
where
    E: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    env.into_iter()
        .filter_map(|(k, v)| {
            let k = k.into().into_string().ok()?;
            k.starts_with("TETHER_").then(|| (k, v.into()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Value syntax.

/// Parses a duration: one or more `<integer><unit>` with units `ms`, `s`, `m`, `h`, `d`, e.g.
/// `500ms`, `5s`, `1m30s`. A bare number is refused: the unit is never guessed.
///
/// ```
/// use std::time::Duration;
/// use tether::server::config::parse_duration;
///
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert!(parse_duration("30").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const HINT: &str = "expected a duration like 500ms, 5s, 2m, 1h, 1d or 1m30s";
    let text = text.trim();
    if text.is_empty() {
        return Err(HINT.into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit_len = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || unit_len == 0 {
            return Err(HINT.into());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| HINT.to_owned())?;
        let unit_ms: u64 = match &rest[digits..digits + unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(HINT.into()),
        };
        let part = n
            .checked_mul(unit_ms)
            .map(Duration::from_millis)
            .ok_or_else(|| "duration is too large".to_owned())?;
        total = total
            .checked_add(part)
            .ok_or_else(|| "duration is too large".to_owned())?;
        rest = &rest[digits + unit_len..];
    }
    Ok(total)
}

/// Parses a size in bytes: an integer, optionally with a binary suffix `KiB`, `MiB` or `GiB`
/// (`64KiB` = 65536). `_` may separate digits.
///
/// ```
/// use tether::server::config::parse_size;
///
/// assert_eq!(parse_size("64KiB"), Ok(65536));
/// assert_eq!(parse_size("1_000"), Ok(1000));
/// assert!(parse_size("64KB").is_err()); // KB or KiB? Say which.
/// ```
pub fn parse_size(text: &str) -> Result<usize, String> {
    const HINT: &str = "expected a size like 65536, 64KiB, 1MiB or 1GiB";
    let text = text.trim();
    let digits = text
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'_')
        .count();
    let (number, suffix) = text.split_at(digits);
    let multiplier: usize = match suffix.trim() {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(HINT.into()),
    };
    let n = parse_count(number).map_err(|_| HINT.to_owned())?;
    n.checked_mul(multiplier)
        .ok_or_else(|| "size is too large".to_owned())
}

fn parse_count(text: &str) -> Result<usize, String> {
    let digits: String = text.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a whole number".into());
    }
    digits.parse().map_err(|_| "number is too large".to_owned())
}

fn parse_u32(text: &str) -> Result<u32, String> {
    u32::try_from(parse_count(text)?).map_err(|_| format!("must be at most {}", u32::MAX))
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:7700 or [::1]:7700".to_owned())
}

fn parse_list(text: &str) -> Result<Vec<String>, String> {
    Ok(text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "human" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected human or json".into()),
    }
}

fn parse_overflow(text: &str) -> Result<OverflowPolicy, String> {
    match text {
        "drop-oldest" => Ok(OverflowPolicy::DropOldest),
        "drop-newest" => Ok(OverflowPolicy::DropNewest),
        "reject" => Ok(OverflowPolicy::Reject),
        _ => Err("expected drop-oldest, drop-newest or reject".into()),
    }
}

fn parse_dedup(text: &str) -> Result<DedupMode, String> {
    match text {
        "off" => Ok(DedupMode::Off),
        "ids" => Ok(DedupMode::Ids),
        "ids-and-content" => Ok(DedupMode::IdsAndContent),
        _ => Err("expected off, ids or ids-and-content".into()),
    }
}

/// Browsers send `Origin` as `scheme://host[:port]`, nothing more; an entry with a path or a
/// trailing slash would never match, so it is refused here rather than silently.
fn check_origin(origin: &str) -> Result<(), String> {
    let Some((scheme, host)) = origin.split_once("://") else {
        return Err(format!("{origin:?} is not scheme://host[:port]"));
    };
    if scheme.is_empty() || host.is_empty() || host.contains('/') {
        return Err(format!(
            "{origin:?} is not scheme://host[:port] (no path, no trailing slash)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
        let argv = std::iter::once("serve").chain(args.iter().copied());
        ServerConfig::parse_from(argv, env.iter().copied())
    }

    fn with_file(
        args: &[&str],
        env: &[(&str, &str)],
        toml: &str,
    ) -> Result<ServerConfig, ConfigError> {
        let argv = std::iter::once("serve").chain(args.iter().copied());
        let matches = ServeArgs::add_args(Command::new("serve"))
            .try_get_matches_from(argv)
            .expect("flags parse");
        let args =
            <ServeArgs as clap::FromArgMatches>::from_arg_matches(&matches).expect("flags extract");
        ServerConfig::from_sources(
            &args,
            env.iter().copied(),
            Some((Path::new("test.toml"), toml)),
        )
    }

    /// The setting an error names, or a panic.
    fn setting_of(result: Result<ServerConfig, ConfigError>) -> &'static str {
        match result {
            Err(ConfigError::Invalid { setting, .. }) => setting,
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_as_documented() {
        let parsed = parse(&[], &[]).expect("defaults are valid");
        assert_eq!(parsed, ServerConfig::default());
        let d = ServerConfig::default();
        assert_eq!(d.listen, "127.0.0.1:7700".parse().expect("addr"));
        assert_eq!(d.max_frame_bytes, 65536);
        assert_eq!(d.max_body_bytes, d.max_frame_bytes);
        assert_eq!(d.max_connections, 10_000);
        assert_eq!(d.connect_timeout, Duration::from_secs(5));
        assert_eq!(d.idle_timeout, Duration::from_secs(60));
        assert_eq!(d.ping_interval, Duration::from_secs(20));
        assert_eq!(d.write_buffer_bytes, 16 * 1024);
        assert_eq!(d.write_timeout, Duration::from_secs(10));
        assert_eq!((d.publish_rate, d.publish_burst), (100, 200));
        assert_eq!(d.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(d.log, "info");
        assert_eq!(d.log_format, LogFormat::Human);
        assert!(!d.allow_client_publish && !d.echo_route && !d.dashboard_enabled());
        assert_eq!(d.dashboard, None, "unset: development mode decides");
        assert!(d.allowed_origins.is_empty());
        assert!(d.jwt_secret.is_none() && d.api_key.is_none());
        d.validate().expect("defaults validate");
    }

    #[test]
    fn engine_defaults_shown_in_help_are_the_engines() {
        let engine = ServerConfig::default()
            .engine_builder()
            .shards(1)
            .build()
            .expect("engine builds");
        let c = engine.config();
        let limits = c.user_limits();
        let shown = |s: &Setting| s.default_note.to_owned();
        assert_eq!(shown(&WINDOW), c.window().to_string());
        assert_eq!(
            shown(&MAX_MESSAGES_PER_USER),
            limits.max_messages.to_string()
        );
        assert_eq!(
            parse_size(&shown(&MAX_BYTES_PER_USER)),
            Ok(limits.max_bytes)
        );
        assert_eq!(
            parse_size(&shown(&MEMORY_BUDGET_BYTES)).map(|n| n as u64),
            Ok(c.memory_budget_bytes())
        );
        assert_eq!(
            parse_overflow(&shown(&OVERFLOW)),
            Ok(OverflowPolicy::default())
        );
        assert_eq!(parse_dedup(&shown(&DEDUP)), Ok(DedupMode::default()));
        assert_eq!(shown(&MAX_USERS), "10000000");
        drop(engine);
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let toml = "publish_rate = 1\npublish_burst = 2\nmax_connections = 3\n";
        let env = [
            ("TETHER_PUBLISH_RATE", "10"),
            ("TETHER_PUBLISH_BURST", "20"),
        ];
        let c = with_file(&["--publish-rate", "100"], &env, toml).expect("valid");
        assert_eq!(c.publish_rate, 100, "flag beats env and file");
        assert_eq!(c.publish_burst, 20, "env beats file");
        assert_eq!(c.max_connections, 3, "file beats default");
        assert_eq!(c.connect_timeout, Duration::from_secs(5), "default");
    }

    #[test]
    fn flag_and_env_names_follow_the_setting_name() {
        for s in SETTINGS {
            assert_eq!(s.flag, s.name.replace('_', "-"), "{}", s.name);
            assert_eq!(s.env(), format!("TETHER_{}", s.name.to_uppercase()));
        }
        let names: std::collections::BTreeSet<_> = SETTINGS.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), SETTINGS.len(), "no setting twice");
    }

    #[test]
    fn every_setting_reads_from_every_source() {
        // A valid non-default value per setting, given by flag, by env and by file in turn.
        let value = |s: &Setting| match s.name {
            "listen" => "127.0.0.2:1",
            "jwt_secret" => SECRET,
            "api_key" => "0123456789abcdef",
            "allowed_origins" => "https://a.example",
            "allow_client_publish" | "echo_route" | "dashboard" => "true",
            "log" => "debug",
            "log_format" => "json",
            "overflow" => "reject",
            "dedup" => "off",
            "connect_timeout" | "idle_timeout" | "write_timeout" | "shutdown_timeout" => "3m",
            "ping_interval" => "5s",
            _ => "7",
        };
        for s in SETTINGS {
            let flag = format!("--{}={}", s.flag, value(s));
            let by_flag = parse(&[&flag], &[]).expect(s.name);
            let env = [(s.env(), value(s).to_owned())];
            let argv = ["serve"];
            let by_env = ServerConfig::parse_from(argv, env).expect(s.name);
            let toml = if s.kind == Kind::List {
                format!("{} = [\"{}\"]", s.name, value(s))
            } else {
                format!("{} = \"{}\"", s.name, value(s))
            };
            let by_file = with_file(&[], &[], &toml).expect(s.name);
            assert_ne!(by_flag, ServerConfig::default(), "{}", s.name);
            assert_eq!(by_flag, by_env, "{}", s.name);
            assert_eq!(by_flag, by_file, "{}", s.name);
        }
    }

    #[test]
    fn bool_flags_stand_alone_or_take_a_value() {
        let c = parse(&["--dashboard", "--echo-route=false"], &[]).expect("valid");
        assert_eq!(c.dashboard, Some(true));
        assert!(!c.echo_route);
        let c = parse(&[], &[("TETHER_ALLOW_CLIENT_PUBLISH", "yes")]).expect("valid");
        assert!(c.allow_client_publish);
    }

    #[test]
    fn lists_from_repeated_flags_commas_and_arrays() {
        let a = "https://a.example";
        let b = "http://b.example:8080";
        let expected = vec![a.to_owned(), b.to_owned()];
        let both = format!("{a},{b}");
        let by_repeat = parse(&["--allowed-origins", a, "--allowed-origins", b], &[]);
        assert_eq!(by_repeat.expect("valid").allowed_origins, expected);
        let by_env = parse(&[], &[("TETHER_ALLOWED_ORIGINS", &both)]);
        assert_eq!(by_env.expect("valid").allowed_origins, expected);
        let toml = format!("allowed_origins = [\"{a}\", \"{b}\"]");
        assert_eq!(
            with_file(&[], &[], &toml).expect("valid").allowed_origins,
            expected
        );
    }

    #[test]
    fn each_parse_error_names_its_setting() {
        let cases: &[(&str, &str)] = &[
            ("listen", "localhost"),
            ("max_frame_bytes", "lots"),
            ("max_frame_bytes", "64KB"),
            ("connect_timeout", "5"),
            ("idle_timeout", "soon"),
            ("ping_interval", "-1s"),
            ("write_timeout", "1x"),
            ("shutdown_timeout", ""),
            ("publish_rate", "99999999999"),
            ("dashboard", "maybe"),
            ("log_format", "xml"),
            ("overflow", "drop-all"),
            ("dedup", "everything"),
            ("shards", "two"),
            ("window", "-1"),
            ("memory_budget_bytes", "1TiB"),
            ("log", "info,tether=loud"),
            ("allowed_origins", "example.com"),
            ("allowed_origins", "https://a.example/"),
        ];
        for (name, bad) in cases {
            let env_name = format!("TETHER_{}", name.to_uppercase());
            let result = parse(&[], &[(env_name.as_str(), bad)]);
            assert_eq!(setting_of(result), *name, "{name}={bad:?}");
        }
    }

    #[test]
    fn errors_say_where_the_value_came_from() {
        let err = parse(&["--idle-timeout", "nope"], &[]).expect_err("invalid");
        assert!(matches!(
            &err,
            ConfigError::Invalid { origin: Origin::Flag("idle-timeout"), value, .. } if value == "nope"
        ));
        assert!(err.to_string().contains("--idle-timeout"), "{err}");
        let err = with_file(&[], &[], "idle_timeout = \"nope\"").expect_err("invalid");
        assert!(err.to_string().contains("test.toml"), "{err}");
    }

    #[test]
    fn zero_limits_are_refused() {
        for name in [
            "max_frame_bytes",
            "max_body_bytes",
            "max_connections",
            "write_buffer_bytes",
            "publish_rate",
            "publish_burst",
            "shards",
            "window",
            "max_users",
            "memory_budget_bytes",
            "max_messages_per_user",
            "max_bytes_per_user",
        ] {
            let flag = format!("--{}=0", name.replace('_', "-"));
            assert_eq!(setting_of(parse(&[&flag], &[])), name);
        }
        for name in ["connect_timeout", "idle_timeout", "write_timeout"] {
            let flag = format!("--{}=0ms", name.replace('_', "-"));
            assert_eq!(setting_of(parse(&[&flag], &[])), name);
        }
    }

    #[test]
    fn size_limits_stop_at_1_gib() {
        for name in ["max_frame_bytes", "max_body_bytes", "write_buffer_bytes"] {
            let flag = |v: &str| format!("--{}={v}", name.replace('_', "-"));
            assert!(parse(&[&flag("1GiB")], &[]).is_ok(), "{name} at the limit");
            let over = (MAX_BUFFER_BYTES + 1).to_string();
            assert_eq!(setting_of(parse(&[&flag(&over)], &[])), name);
        }
    }

    #[test]
    fn ping_interval_must_be_shorter_than_idle_timeout() {
        let result = parse(&["--ping-interval", "1m", "--idle-timeout", "1m"], &[]);
        assert_eq!(setting_of(result), "ping_interval");
    }

    #[test]
    fn short_secrets_are_refused_and_not_echoed() {
        let err = parse(&["--jwt-secret", "hunter2"], &[]).expect_err("too short");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(matches!(
            err,
            ConfigError::Invalid {
                setting: "jwt_secret",
                ..
            }
        ));
        let result = parse(&[], &[("TETHER_API_KEY", "short")]);
        assert_eq!(setting_of(result), "api_key");
    }

    #[test]
    fn unknown_toml_key_is_refused() {
        let err = with_file(&[], &[], "listen = \"127.0.0.1:1\"\nlisen = \"x\"\n")
            .expect_err("unknown key");
        assert!(
            matches!(&err, ConfigError::UnknownKey { key, .. } if key == "lisen"),
            "{err:?}"
        );
        let err = with_file(&[], &[], "[limits]\nmax_frame_bytes = 5\n").expect_err("table");
        assert!(matches!(err, ConfigError::UnknownKey { .. }));
    }

    #[test]
    fn invalid_toml_and_wrong_toml_types_are_refused() {
        let err = with_file(&[], &[], "listen = ").expect_err("not toml");
        assert!(matches!(err, ConfigError::File { .. }), "{err:?}");
        let result = with_file(&[], &[], "max_frame_bytes = 1.5");
        assert_eq!(setting_of(result), "max_frame_bytes");
        let result = with_file(&[], &[], "allowed_origins = [1]");
        assert_eq!(setting_of(result), "allowed_origins");
        let result = with_file(&[], &[], "allowed_origins = [\"https://a.example,x\"]");
        assert_eq!(setting_of(result), "allowed_origins");
        let c = with_file(&[], &[], "allowed_origins = \"https://a.example\"").expect("valid");
        assert_eq!(c.allowed_origins, ["https://a.example"]);
        // TOML integers and booleans are fine where the setting wants them.
        let c = with_file(&[], &[], "max_connections = 5\ndashboard = true").expect("valid");
        assert_eq!((c.max_connections, c.dashboard), (5, Some(true)));
    }

    #[test]
    fn config_file_is_read_from_flag_or_env() {
        let path = std::env::temp_dir().join(format!(
            "tether-config-test-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, "max_connections = 42\n").expect("write temp file");
        let path_str = path.to_str().expect("temp path is UTF-8");
        let by_flag = parse(&["--config", path_str], &[]).map(|c| c.max_connections);
        let by_env = parse(&[], &[(CONFIG_ENV, path_str)]).map(|c| c.max_connections);
        let _ = std::fs::remove_file(&path);
        assert_eq!(by_flag.expect("valid"), 42);
        assert_eq!(by_env.expect("valid"), 42);
        let missing = parse(&["--config", "/nonexistent/tether.toml"], &[]);
        assert!(matches!(missing, Err(ConfigError::File { .. })));
    }

    #[test]
    fn non_tether_env_is_ignored_and_unknown_tether_env_is_reported() {
        let env = [
            ("PATH", "/bin"),
            ("TETHER_LISTN", "x"),
            ("TETHER_LISTEN", "127.0.0.1:1"),
            ("TETHER_CONFIG", "/x"),
        ];
        assert_eq!(unknown_env_vars(env), vec!["TETHER_LISTN".to_owned()]);
        assert!(parse(&[], &[("LISTEN", "nonsense")]).is_ok());
    }

    #[test]
    fn unknown_flag_is_a_clap_error() {
        assert!(matches!(
            parse(&["--lisen", "x"], &[]),
            Err(ConfigError::Args(_))
        ));
    }

    #[test]
    fn help_names_every_setting_with_env_and_default() {
        let help = ServeArgs::add_args(Command::new("serve"))
            .render_help()
            .to_string();
        for s in SETTINGS {
            assert!(help.contains(&format!("--{}", s.flag)), "{}", s.name);
            assert!(help.contains(&s.env()), "{}", s.name);
        }
        assert!(help.contains("[default: 127.0.0.1:7700]"), "{help}");
        assert!(help.contains("[default: 64KiB]"), "{help}");
        assert_eq!(
            help.matches("[default: ").count(),
            SETTINGS.len() + 1,
            "{help}"
        );
    }

    #[test]
    fn duration_syntax() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration(" 1h30m "), Ok(Duration::from_secs(5400)));
        for bad in [
            "",
            "s",
            "5",
            "5 s",
            "5sec",
            "1.5s",
            "-5s",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn size_syntax() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        for bad in [
            "",
            "KiB",
            "1kib",
            "1.5MiB",
            "-1",
            "1e6",
            "99999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dev_mode_only_when_both_credentials_are_absent() {
        let mut dev = ServerConfig::default();
        let creds = dev.ensure_credentials().expect("rng").expect("dev mode");
        assert_eq!(dev.api_key.as_deref(), Some(creds.api_key.as_str()));
        assert_eq!(creds.demo_user.as_str(), DEMO_USER);
        let claims = dev
            .jwt_verifier()
            .expect("secret")
            .verify(&creds.demo_token, SystemTime::now())
            .expect("demo token verifies");
        assert_eq!(claims.user.as_str(), "demo");
        assert!(dev
            .api_key_checker()
            .expect("key")
            .check(Some(&format!("Bearer {}", creds.api_key))));
        dev.validate().expect("generated credentials are valid");
        assert!(
            dev.dashboard_enabled(),
            "development mode turns the dashboard on"
        );
        let mut dev_off = parse(&["--dashboard=false"], &[]).expect("valid");
        dev_off
            .ensure_credentials()
            .expect("rng")
            .expect("dev mode");
        assert!(!dev_off.dashboard_enabled(), "unless it was turned off");
        let banner = creds.banner();
        assert!(banner.contains(&creds.jwt_secret) && banner.contains(&creds.demo_token));
        assert!(banner.contains("DEVELOPMENT MODE"));
        assert!(!format!("{creds:?}").contains(&creds.jwt_secret));

        let mut both = parse(&["--jwt-secret", SECRET, "--api-key", SECRET], &[]).expect("valid");
        assert!(both.ensure_credentials().expect("no rng needed").is_none());
        assert!(
            !both.dashboard_enabled(),
            "off by default outside development mode"
        );
        assert_eq!(both.jwt_secret.as_deref(), Some(SECRET));

        let mut only_secret = parse(&[], &[("TETHER_JWT_SECRET", SECRET)]).expect("valid");
        assert!(matches!(
            only_secret.ensure_credentials(),
            Err(ConfigError::MissingCredential {
                missing: "api_key",
                ..
            })
        ));
        let mut only_key = parse(&[], &[("TETHER_API_KEY", SECRET)]).expect("valid");
        assert!(matches!(
            only_key.ensure_credentials(),
            Err(ConfigError::MissingCredential {
                missing: "jwt_secret",
                ..
            })
        ));
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = parse(
            &["--jwt-secret", SECRET, "--api-key", "api-key-api-key-1"],
            &[],
        )
        .expect("valid");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains(SECRET) && !shown.contains("api-key-api-key-1"),
            "{shown}"
        );
        let matches = ServeArgs::add_args(Command::new("serve"))
            .try_get_matches_from(["serve", "--jwt-secret", SECRET])
            .expect("parses");
        let args = <ServeArgs as clap::FromArgMatches>::from_arg_matches(&matches).expect("ok");
        assert!(!format!("{args:?}").contains(SECRET));
    }

    #[test]
    fn engine_builder_forwards_given_settings_only() {
        let c = parse(
            &[
                "--shards=1",
                "--window=8",
                "--max-messages-per-user=3",
                "--overflow=reject",
            ],
            &[],
        )
        .expect("valid");
        let engine = c.engine_builder().build().expect("engine builds");
        assert_eq!(engine.config().shards(), 1);
        assert_eq!(engine.config().window(), 8);
        let limits = engine.config().user_limits();
        assert_eq!(limits.max_messages, 3);
        assert_eq!(limits.max_bytes, UserLimits::default().max_bytes);
        assert_eq!(limits.overflow, OverflowPolicy::Reject);
        drop(engine);
    }

    #[test]
    fn validate_catches_changes_made_in_code() {
        let c = ServerConfig {
            max_connections: 0,
            ..ServerConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                setting: "max_connections",
                origin: Origin::Code,
                ..
            })
        ));
    }
}
