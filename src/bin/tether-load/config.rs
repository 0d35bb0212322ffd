//! What to run ([`LoadConfig`], checked by [`check`]) and why a run could not start or had to
//! stop ([`LoadError`]).

use std::fmt;
use std::io;
use std::time::Duration;

use tether::client::ClientError;
use tether::protocol::fingerprint;

/// Largest payload a run may ask for: the server's default frame limit is 64 KiB.
pub(crate) const MAX_PAYLOAD: usize = 1 << 20;

/// What to run. [`LoadConfig::new`] gives the defaults of the command line.
///
/// Its `Debug` output shows fingerprints of the API key and the JWT secret (the first 8 hex
/// digits of their SHA-256), never the secrets.
#[derive(Clone)]
pub(crate) struct LoadConfig {
    /// The server, `ws://host:port` (the WebSocket path defaults to `/ws`; publishes go to
    /// the same host and port).
    pub(crate) url: String,
    /// The HTTP publish API key.
    pub(crate) api_key: String,
    /// The server's JWT secret, to mint tokens for the users `load-0` .. `load-<N-1>`.
    pub(crate) jwt_secret: String,
    /// WebSocket clients, one user each.
    pub(crate) clients: usize,
    /// Publishers, one HTTP connection each.
    pub(crate) publishers: usize,
    /// How long to publish.
    pub(crate) duration: Duration,
    /// Stop after this many messages in all (whichever of this and `duration` comes first).
    pub(crate) messages: Option<u64>,
    /// Cap on messages per second, all publishers together; `None`: as fast as answers come.
    pub(crate) rate: Option<u64>,
    /// Approximate size of each message's `data`, in bytes.
    pub(crate) payload_bytes: usize,
    /// Messages per HTTP request (> 1 uses `/api/publish_batch`).
    pub(crate) batch: usize,
    /// Every this long, drop one random client's connection (it reconnects and resumes).
    pub(crate) disconnect_every: Option<Duration>,
    /// Longest wait after publishing for the last messages.
    pub(crate) drain: Duration,
    /// Longest time one publish request may take, connecting included; a request without an
    /// answer by then counts as a publish error.
    pub(crate) request_timeout: Duration,
    /// Allow a target that is not a loopback address.
    pub(crate) allow_remote: bool,
    /// User id prefix.
    pub(crate) user_prefix: String,
}

impl LoadConfig {
    /// The defaults, with the credentials.
    pub(crate) fn new(url: String, api_key: String, jwt_secret: String) -> Self {
        Self {
            url,
            api_key,
            jwt_secret,
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

impl fmt::Debug for LoadConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// Refuses settings out of range, before anything connects.
pub(crate) fn check(c: &LoadConfig) -> Result<(), LoadError> {
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

/// Why a run could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The target is not a loopback address and `allow_remote` is off.
    #[error("refusing to load {0}: not a loopback address (pass --allow-remote to allow)")]
    Remote(String),
    /// The target's name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    /// A client could not connect.
    #[error("client {user} could not connect: {source}")]
    Connect { user: String, source: ClientError },
    /// The publish API refused the request in a way retrying cannot fix (401, 400, ...);
    /// status 0 when 50 requests in a row got no answer at all.
    #[error("the publish API answered {status}: {body}")]
    Publish { status: u16, body: String },
}

impl LoadError {
    /// The error as one JSON line for `--json`:
    /// `{"error":{"kind":"publish","status":401,"message":"..."}}` (`status` only for
    /// `publish`).
    pub(crate) fn to_json(&self) -> String {
        let kind = match self {
            LoadError::Config(_) => "config",
            LoadError::Remote(_) => "remote",
            LoadError::Resolve { .. } => "resolve",
            LoadError::Connect { .. } => "connect",
            LoadError::Publish { .. } => "publish",
        };
        let mut error = serde_json::json!({ "kind": kind, "message": self.to_string() });
        if let LoadError::Publish { status, .. } = self {
            error["status"] = (*status).into();
        }
        serde_json::json!({ "error": error }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> LoadConfig {
        LoadConfig::new("ws://127.0.0.1:1".into(), "k".into(), "s".into())
    }

    #[test]
    fn settings_are_checked() {
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
            LoadConfig {
                request_timeout: Duration::ZERO,
                ..base()
            },
        ];
        for c in cases {
            assert!(matches!(check(&c), Err(LoadError::Config(_))), "{c:?}");
        }
        assert!(check(&base()).is_ok());
        // The edges themselves are allowed.
        let edge = LoadConfig {
            clients: 1_000_000,
            publishers: 10_000,
            batch: 10_000,
            payload_bytes: MAX_PAYLOAD,
            ..base()
        };
        assert!(check(&edge).is_ok());
    }

    #[test]
    fn debug_output_never_shows_the_credentials() {
        let (key, secret) = (
            "an api key to hide",
            "a jwt secret to hide, 32 bytes or more",
        );
        let c = LoadConfig::new("ws://127.0.0.1:1".into(), key.into(), secret.into());
        let text = format!("{c:?} {c:#?}");
        assert!(!text.contains(key), "{text}");
        assert!(!text.contains(secret), "{text}");
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(text.contains(&fingerprint(key)), "{text}");
    }

    #[test]
    fn errors_read_as_json_with_their_kind() {
        let json = |e: LoadError| -> serde_json::Value {
            serde_json::from_str(&e.to_json()).expect("json")
        };
        let publish = json(LoadError::Publish {
            status: 401,
            body: "unauthorized".into(),
        });
        assert_eq!(publish["error"]["kind"], "publish");
        assert_eq!(publish["error"]["status"], 401);
        let remote = json(LoadError::Remote("192.0.2.1".into()));
        assert_eq!(remote["error"]["kind"], "remote");
        assert!(remote["error"].get("status").is_none());
        assert!(remote["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a loopback address")));
    }
}
