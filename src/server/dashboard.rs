//! The monitoring dashboard: `GET /dashboard` serves one self-contained page (compiled in from
//! `dashboard.html`: inline CSS, plain JavaScript, charts drawn as inline SVG, nothing fetched
//! from anywhere else), and `GET /api/dashboard` the JSON it polls.
//!
//! The JSON is aggregates only, so its cost does not grow with the number of users: the
//! engine's counters and gauges ([`Engine::metrics`](crate::Engine::metrics), a few hundred
//! Relaxed loads), the front end's counters, the process's resident memory, a ring of one
//! sample per [`SAMPLE_EVERY`] over the last five minutes, and two bounded lists: the ten
//! deepest backlogs ([`Engine::deepest_mailboxes`](crate::Engine::deepest_mailboxes), one scan
//! of every shard, cached for [`DEEPEST_TTL`] however many pages poll) and the sessions whose
//! circuit breaker is not closed ([`OpenBreakers`], touched only on breaker transitions).
//!
//! Each sample of the ring diffs two metrics snapshots ([`MetricsSnapshot::diff`]) to give
//! message rates and latency percentiles over that interval. A background task takes the
//! samples (only when the dashboard is on), so a page opened now shows the last minutes.
//!
//! Access: when the server listens on a loopback address, the request's `Host` names a
//! loopback host and the request carries no proxy header (`Forwarded`, `X-Forwarded-For`,
//! `X-Forwarded-Host`, `X-Forwarded-Proto`, `X-Real-IP`), the data is served without
//! credentials; otherwise it needs the API key as `Authorization: Bearer <key>`, which the
//! page asks for once and keeps in the tab's `sessionStorage`, never in a URL. Checking
//! `Host` keeps a web page from reading the data through DNS rebinding (a name of the
//! attacker's that resolves to 127.0.0.1); checking the proxy headers keeps a reverse proxy
//! on the same machine (which connects from loopback and, like nginx by default, may send
//! `Host: 127.0.0.1:7700`) from handing the data to whoever reaches the proxy. A proxy that
//! adds none of those headers cannot be told from a local client, so a proxy in front of the
//! dashboard must add one (nginx: `proxy_set_header X-Forwarded-For
//! $proxy_add_x_forwarded_for;`). The page itself holds no data and is served to anyone who
//! can reach the port.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::response::{error, json, text, Body};
use super::Shared;
use crate::breaker::{BreakerCell, BreakerState, Transition};
use crate::metrics::{Histogram, MetricsSnapshot};
use crate::{Engine, UserId};

/// The page, compiled into the binary.
const PAGE: &str = include_str!("dashboard.html");

/// How often the background task samples the metrics for the charts.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples kept: five minutes.
const SAMPLES: usize = 60;

/// How long the deepest-backlog list is reused before the shards are scanned again.
pub(crate) const DEEPEST_TTL: Duration = Duration::from_secs(5);

/// Users in the deepest-backlog list.
const DEEPEST: usize = 10;

/// Longest a refresh of the deepest-backlog list may wait for the shards (an overloaded
/// engine must not make the dashboard hang; the previous list is served meanwhile).
const DEEPEST_WAIT: Duration = Duration::from_secs(1);

/// Sessions with a breaker that is not closed, tracked at most: past it, more are counted by
/// the engine's gauges but not listed.
const MAX_TRACKED: usize = 10_000;

/// Sessions with a breaker that is not closed, listed in a response at most (oldest first).
const MAX_LISTED: usize = 50;

/// Everything the dashboard keeps between requests; one per server, in [`Shared`].
pub(crate) struct Dashboard {
    started: Instant,
    /// Sessions whose breaker is not closed, fed by the WebSocket tasks.
    pub(crate) breakers: OpenBreakers,
    history: Mutex<History>,
    deepest: tokio::sync::Mutex<Option<Deepest>>,
}

impl Dashboard {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            breakers: OpenBreakers::default(),
            history: Mutex::new(History::default()),
            deepest: tokio::sync::Mutex::new(None),
        }
    }

    /// Takes one sample: the change since the previous one becomes a point of the ring.
    /// `send_to_write` is the front end's histogram as it is now.
    fn sample(&self, engine: &Engine, send_to_write: Histogram) {
        let snapshot = Sample {
            engine: engine.metrics(),
            send_to_write,
        };
        let at = Instant::now();
        let rss = rss_bytes();
        let mut h = lock(&self.history);
        if let Some((then, previous)) = h.last.take() {
            let interval = at.saturating_duration_since(then);
            let point = Point::between(&snapshot, &previous, interval, rss);
            if h.points.len() == SAMPLES {
                h.points.pop_front();
            }
            h.points.push_back(point);
        }
        h.last = Some((at, snapshot));
    }

    /// The deepest backlogs, from the cache or, when it is older than [`DEEPEST_TTL`], from a
    /// new scan; with the time (Unix ms) they were taken.
    async fn deepest(&self, engine: &Engine) -> (Vec<(UserId, usize, usize)>, u64) {
        let mut cached = self.deepest.lock().await;
        let fresh = cached
            .as_ref()
            .is_some_and(|d| d.at.elapsed() < DEEPEST_TTL);
        if !fresh {
            let scan = tokio::time::timeout(DEEPEST_WAIT, engine.deepest_mailboxes(DEEPEST));
            match scan.await {
                Ok(users) => {
                    *cached = Some(Deepest {
                        at: Instant::now(),
                        at_ms: unix_ms(SystemTime::now()),
                        users,
                    })
                }
                Err(_) => tracing::debug!("deepest-backlog scan timed out; serving the last one"),
            }
        }
        cached
            .as_ref()
            .map_or((Vec::new(), 0), |d| (d.users.clone(), d.at_ms))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Deepest {
    at: Instant,
    at_ms: u64,
    users: Vec<(UserId, usize, usize)>,
}

/// What a sample takes: the engine's metrics and the front end's latency histogram.
struct Sample {
    engine: MetricsSnapshot,
    send_to_write: Histogram,
}

#[derive(Default)]
struct History {
    /// The previous sample, to diff the next against.
    last: Option<(Instant, Sample)>,
    points: VecDeque<Point>,
}

/// One interval of the ring, as the JSON shows it.
#[derive(Serialize, Clone)]
struct Point {
    /// When the interval ended, Unix ms.
    t_ms: u64,
    interval_ms: u64,
    /// Per second over the interval.
    rates: Rates,
    /// From the producer's call to entering the delivery window (the engine).
    enqueue_to_delivery: Latency,
    /// From the producer's call to the shard taking the send up.
    inbox_wait: Latency,
    /// From the producer's call to the frame flushed to the WebSocket.
    send_to_write: Latency,
    delivery_to_ack: Latency,
    held_bytes: u64,
    rss_bytes: Option<u64>,
}

#[derive(Serialize, Clone)]
struct Rates {
    sent: f64,
    delivered: f64,
    acknowledged: f64,
    redelivered: f64,
    /// Every message not kept, whatever the reason (the five below).
    dropped: f64,
    expired: f64,
    evicted: f64,
    shed: f64,
    duplicate: f64,
    rejected: f64,
}

#[derive(Serialize, Clone)]
struct Latency {
    count: u64,
    p50_us: Option<u64>,
    p99_us: Option<u64>,
}

impl Latency {
    fn of(h: &Histogram) -> Self {
        Self {
            count: h.count,
            p50_us: h.quantile(0.50),
            p99_us: h.quantile(0.99),
        }
    }
}

impl Point {
    fn between(now: &Sample, then: &Sample, interval: Duration, rss_bytes: Option<u64>) -> Self {
        let d = now.engine.diff(&then.engine);
        let written = now.send_to_write.minus(&then.send_to_write);
        let now = &now.engine;
        let secs = interval.as_secs_f64().max(1e-3);
        let per_sec = |n: u64| (n as f64 / secs * 100.0).round() / 100.0;
        let c = &d.counters;
        Self {
            t_ms: unix_ms(SystemTime::now()),
            interval_ms: interval.as_millis() as u64,
            rates: Rates {
                sent: per_sec(c.sent),
                delivered: per_sec(c.delivered),
                acknowledged: per_sec(c.acknowledged),
                redelivered: per_sec(c.redelivered),
                dropped: per_sec(c.expired + c.evicted + c.shed + c.duplicates + c.rejected),
                expired: per_sec(c.expired),
                evicted: per_sec(c.evicted),
                shed: per_sec(c.shed),
                duplicate: per_sec(c.duplicates),
                rejected: per_sec(c.rejected),
            },
            enqueue_to_delivery: Latency::of(&d.enqueue_to_delivery),
            inbox_wait: Latency::of(&d.inbox_wait),
            send_to_write: Latency::of(&written),
            delivery_to_ack: Latency::of(&d.delivery_to_ack),
            held_bytes: now.gauges.held_bytes,
            rss_bytes,
        }
    }
}

/// Samples the metrics every [`SAMPLE_EVERY`] until the server stops or is dropped. Holds the
/// server's state only while sampling, so a server dropped without shutdown is freed.
pub(crate) async fn sampler(shared: Weak<Shared>) {
    let stopped = match shared.upgrade() {
        Some(s) => s.stopped(),
        None => return,
    };
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared
            .dashboard
            .sample(&shared.engine, shared.stats.send_to_write());
    }
}

// ---------------------------------------------------------------------------------------
// Sessions whose circuit breaker is not closed.

/// The users whose session's breaker opened and has not closed since, with when it opened
/// and the breaker itself, whose state (open or half-open) is read when listed. Touched only
/// on breaker transitions (rare), and bounded.
#[derive(Default)]
pub(crate) struct OpenBreakers {
    open: Mutex<HashMap<UserId, Tracked>>,
    next_connection: AtomicU64,
}

/// One listed session.
#[derive(Debug, Clone)]
struct Tracked {
    /// The connection that listed it.
    connection: u64,
    /// When the breaker first opened (a failed trial keeps it).
    since: SystemTime,
    /// The session's breaker: the shard worker starts trials on it, so its state, not the
    /// transitions the connection saw, tells open from half-open.
    cell: Arc<BreakerCell>,
}

/// A listed session's breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListedState {
    Open,
    HalfOpen,
}

impl ListedState {
    fn as_str(self) -> &'static str {
        match self {
            ListedState::Open => "open",
            ListedState::HalfOpen => "half_open",
        }
    }
}

/// One entry of [`OpenBreakers::list`].
#[derive(Debug, Clone)]
struct Listed {
    user: UserId,
    since: SystemTime,
    state: ListedState,
}

/// Orders entries oldest first (then by name, so the order is total) in the bounded heap of
/// [`OpenBreakers::list`].
struct ByAge<'a>(&'a UserId, &'a Tracked);

impl Ord for ByAge<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.1
            .since
            .cmp(&other.1.since)
            .then_with(|| self.0.as_str().cmp(other.0.as_str()))
    }
}

impl PartialOrd for ByAge<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for ByAge<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for ByAge<'_> {}

impl OpenBreakers {
    /// A watch for one connection's breaker: feed it every transition the session reports;
    /// dropping it (the connection ends) removes the connection's entry.
    pub(crate) fn watch(&self) -> BreakerWatch<'_> {
        BreakerWatch {
            registry: self,
            connection: self.next_connection.fetch_add(1, Ordering::Relaxed),
            listed: None,
        }
    }

    /// The `max` oldest entries, oldest first, each with its breaker's state now, and how
    /// many there are. A heap of at most `max + 1` entries picks them, so a poll costs one
    /// pass over the registry and clones only what it lists.
    fn list(&self, max: usize) -> (Vec<Listed>, usize) {
        let open = lock(&self.open);
        let total = open.len();
        if max == 0 {
            return (Vec::new(), total);
        }
        // A max-heap: its top is the youngest of the oldest `max` seen so far.
        let mut oldest = std::collections::BinaryHeap::with_capacity(max.min(total) + 1);
        for (user, tracked) in open.iter() {
            oldest.push(ByAge(user, tracked));
            if oldest.len() > max {
                oldest.pop();
            }
        }
        let listed = oldest
            .into_sorted_vec()
            .into_iter()
            .map(|ByAge(user, t)| Listed {
                user: user.clone(),
                since: t.since,
                // Closed is a closing under way that the connection has yet to report.
                state: match t.cell.state() {
                    BreakerState::HalfOpen => ListedState::HalfOpen,
                    BreakerState::Open { .. } | BreakerState::Closed => ListedState::Open,
                },
            })
            .collect();
        (listed, total)
    }
}

/// One connection's view of [`OpenBreakers`].
pub(crate) struct BreakerWatch<'a> {
    registry: &'a OpenBreakers,
    /// Tells this connection's entry from that of a newer connection of the same user.
    connection: u64,
    listed: Option<UserId>,
}

impl BreakerWatch<'_> {
    /// Notes what a `report_delivery_*` call of `user`'s session, whose breaker is `cell`,
    /// returned: an opening lists the user (since now; a failed trial that opens it again
    /// keeps the first time), a closing unlists it.
    pub(crate) fn saw(
        &mut self,
        transition: Option<Transition>,
        user: &UserId,
        cell: &Arc<BreakerCell>,
    ) {
        match transition {
            Some(Transition::Opened { .. }) => {
                let mut open = lock(&self.registry.open);
                if self.listed.is_some() {
                    // Listed already: a failed trial keeps the first opening's time.
                } else if open.len() < MAX_TRACKED || open.contains_key(user) {
                    let tracked = Tracked {
                        connection: self.connection,
                        since: SystemTime::now(),
                        cell: cell.clone(),
                    };
                    open.insert(user.clone(), tracked);
                    self.listed = Some(user.clone());
                }
            }
            Some(Transition::Closed) => self.unlist(),
            None => {}
        }
    }

    fn unlist(&mut self) {
        if let Some(user) = self.listed.take() {
            let mut open = lock(&self.registry.open);
            if open
                .get(&user)
                .is_some_and(|t| t.connection == self.connection)
            {
                open.remove(&user);
            }
        }
    }
}

impl Drop for BreakerWatch<'_> {
    fn drop(&mut self) {
        self.unlist();
    }
}

// ---------------------------------------------------------------------------------------
// HTTP.

/// `GET /dashboard`: the page, with a Content-Security-Policy that allows exactly its own
/// inline script (by hash), its inline styles and requests to this origin.
pub(crate) fn page() -> hyper::Response<Body> {
    let mut r = text(StatusCode::OK, "text/html; charset=utf-8", PAGE);
    let h = r.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(content_security_policy()) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    no_sniff(h);
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn no_sniff(h: &mut HeaderMap) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let script = PAGE
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(script, _)| script);
        let hash = data_encoding::BASE64.encode(&Sha256::digest(script.as_bytes()));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        )
    })
}

/// `GET /api/dashboard[?since=<unix ms>]`: the data; the ring's points after `since` only
/// (all of them without it).
pub(crate) async fn data(
    headers: &HeaderMap,
    query: Option<&str>,
    shared: &Shared,
) -> hyper::Response<Body> {
    if !allowed(headers, shared) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the dashboard's data needs `Authorization: Bearer <api key>` unless the server \
             listens on loopback and the request is local (a loopback Host, no proxy headers)",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let since = match parse_since(query) {
        Ok(since) => since,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_query", message),
    };
    let body = snapshot_json(shared, since).await;
    let mut r = json(StatusCode::OK, Bytes::from(body));
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    no_sniff(h);
    r
}

/// Whether a request may read the data: always with the API key; without it only as
/// [`local_request`] says.
fn allowed(headers: &HeaderMap, shared: &Shared) -> bool {
    local_request(headers, shared.config.listen.ip())
        || shared.api_key.check(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
}

/// Headers a proxy adds: a request with any of them came through a proxy, whatever its
/// `Host` says and wherever its connection comes from.
const PROXY_HEADERS: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// Whether a request counts as local, so needs no key: the server listens on loopback, the
/// `Host` names a loopback host, and no proxy header is present.
fn local_request(headers: &HeaderMap, listen: std::net::IpAddr) -> bool {
    listen.is_loopback()
        && !PROXY_HEADERS.iter().any(|name| headers.contains_key(*name))
        && headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(is_loopback_host)
}

/// Whether a `Host` header value (`name[:port]`, `[v6][:port]`) names this machine's
/// loopback: `localhost` (or a name under `.localhost`, RFC 6761) or a loopback IP.
fn is_loopback_host(host: &str) -> bool {
    let is_port = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let name = if let Some(rest) = host.strip_prefix('[') {
        // `[v6]`, optionally followed by `:port` and nothing else.
        match rest.split_once(']') {
            Some((v6, "")) => v6,
            Some((v6, after)) if after.strip_prefix(':').is_some_and(is_port) => v6,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            _ => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn parse_since(query: Option<&str>) -> Result<u64, &'static str> {
    let mut since = 0;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "since" {
            since = value
                .parse()
                .map_err(|_| "`since` must be a time in Unix milliseconds")?;
        }
    }
    Ok(since)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The process's resident memory in bytes (`/proc/self/statm` on Linux); `None` elsewhere.
fn rss_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages.saturating_mul(page_size()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The page size, from the auxiliary vector the kernel gave the process (`AT_PAGESZ`):
/// `statm` counts pages, and a page is not 4 KiB everywhere (16 KiB or 64 KiB on some arm64).
#[cfg(target_os = "linux")]
fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        const AT_PAGESZ: u64 = 6;
        const WORD: usize = std::mem::size_of::<usize>();
        let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
        let word = |c: &[u8]| {
            let mut b = [0u8; WORD];
            b.copy_from_slice(c);
            usize::from_ne_bytes(b) as u64
        };
        auxv.chunks_exact(2 * WORD)
            .find(|pair| word(&pair[..WORD]) == AT_PAGESZ)
            .map(|pair| word(&pair[WORD..]))
            .filter(|size| size.is_power_of_two())
            .unwrap_or(4096)
    })
}

async fn snapshot_json(shared: &Shared, since: u64) -> String {
    let engine = &shared.engine;
    let dash = &shared.dashboard;
    let (deepest, deepest_at_ms) = dash.deepest(engine).await;
    let m = engine.metrics();
    let (c, g) = (&m.counters, &m.gauges);
    let now = SystemTime::now();
    let now_ms = unix_ms(now);
    let (open, open_tracked) = dash.breakers.list(MAX_LISTED);
    let open_sessions: Vec<_> = open
        .iter()
        .map(|o| {
            json!({
                "user": o.user.as_str(),
                "state": o.state.as_str(),
                "since_ms": unix_ms(o.since),
                "open_for_ms": now.duration_since(o.since).map_or(0, |d| d.as_millis() as u64),
            })
        })
        .collect();
    let history: Vec<Point> = lock(&dash.history)
        .points
        .iter()
        .filter(|p| p.t_ms > since)
        .cloned()
        .collect();
    let s = &shared.stats;
    let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let value = json!({
        "version": 1,
        "now_ms": now_ms,
        "uptime_ms": dash.started.elapsed().as_millis() as u64,
        "sample_every_ms": SAMPLE_EVERY.as_millis() as u64,
        "sessions": {
            "active": g.sessions_active,
            "total": c.connects,
            "reconnections": c.reconnections,
            "replaced": c.replaced,
            "closed": {
                "normal": c.closed_normal,
                "abnormal": c.closed_abnormal,
                "replaced": c.replaced,
                "shutdown": c.closed_shutdown,
            },
        },
        "breakers": {
            "closed": g.sessions_active.saturating_sub(g.breakers_open + g.breakers_half_open),
            "half_open": g.breakers_half_open,
            "open": g.breakers_open,
            "open_sessions": open_sessions,
            "open_sessions_tracked": open_tracked,
            "opens": c.breaker_opens,
        },
        "retry": {
            "attempts": c.breaker_half_opens,
            "successes": c.breaker_closes,
            "failures": c.breaker_reopens,
            "success_rate": m.retry_success_rate(),
        },
        "queues": {
            "bands": {
                "critical": g.queued_critical,
                "high": g.queued_high,
                "normal": g.queued_normal,
                "low": g.queued_low,
            },
            "queued": g.queued_critical + g.queued_high + g.queued_normal + g.queued_low,
            "in_flight": g.in_flight,
            "mailboxes": g.mailboxes,
            "users": g.users,
            "max_depth": g.max_queue_depth,
            "overflows": c.overflows,
            "deepest": deepest
                .iter()
                .map(|(user, queued, bytes)| {
                    json!({"user": user.as_str(), "queued": queued, "queued_bytes": bytes})
                })
                .collect::<Vec<_>>(),
            "deepest_at_ms": deepest_at_ms,
        },
        "messages": {
            "sent": c.sent,
            "delivered": c.delivered,
            "acknowledged": c.acknowledged,
            "redelivered": c.redelivered,
            "queued": c.queued,
            "dropped": {
                "expired": c.expired,
                "evicted": c.evicted,
                "shed": c.shed,
                "duplicate": c.duplicates,
                "rejected": c.rejected,
            },
        },
        "memory": {
            "held_bytes": g.held_bytes,
            "budget_bytes": m.memory_budget_bytes,
            "rss_bytes": rss_bytes(),
        },
        "server": {
            "ws_connections": shared.connections.load(Ordering::Relaxed),
            "connections_total": get(&s.connections_total),
            "refused_overload": get(&s.refused_overload),
            "unauthorized": get(&s.unauthorized),
            "protocol_errors": get(&s.protocol_errors),
            "bad_frames": get(&s.bad_frames),
            "rate_limited": get(&s.rate_limited),
            "write_timeouts": get(&s.write_timeouts),
            "frames_out": get(&s.frames_out),
            "frames_in": get(&s.frames_in),
        },
        "history": history,
    });
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:7700",
            "LOCALHOST.:80",
            "app.localhost:1",
            "127.0.0.1",
            "127.0.0.1:7700",
            "127.1.2.3:9",
            "[::1]",
            "[::1]:7700",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "example.com",
            "localhost.example.com:7700",
            "10.0.0.1:7700",
            "[::2]:7700",
            "[::1",
            "127.0.0.1.nip.io",
            "evil-localhost:7700",
            "[::1].evil.example",
            "[::1]evil",
            "[::1]:",
            "[::1]:7700x",
            "[::1]:7700:1",
            "[::1]]",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn a_proxied_request_is_never_local() {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, HeaderValue::from_static(value));
            }
            h
        };
        let host = ("host", "127.0.0.1:7700");
        assert!(local_request(&with(&[host]), loopback));
        assert!(!local_request(&with(&[host]), [0, 0, 0, 0].into()));
        assert!(!local_request(&with(&[]), loopback), "no Host");
        for proxy in [
            ("forwarded", "for=203.0.113.7"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-host", "tether.example.com"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "203.0.113.7"),
            // Even one that claims loopback: the proxy cannot be trusted to say so.
            ("x-forwarded-for", "127.0.0.1"),
        ] {
            assert!(!local_request(&with(&[host, proxy]), loopback), "{proxy:?}");
        }
    }

    #[test]
    fn since_parses_or_is_refused() {
        assert_eq!(parse_since(None), Ok(0));
        assert_eq!(parse_since(Some("")), Ok(0));
        assert_eq!(
            parse_since(Some("since=1700000000000")),
            Ok(1_700_000_000_000)
        );
        assert_eq!(parse_since(Some("x=1&since=5&&y")), Ok(5));
        assert!(parse_since(Some("since=-1")).is_err());
        assert!(parse_since(Some("since=99999999999999999999999")).is_err());
        assert!(parse_since(Some("since")).is_err());
    }

    #[test]
    fn the_script_hash_is_of_the_inline_script() {
        let csp = content_security_policy();
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert_eq!(PAGE.matches("<script>").count(), 1, "one inline script");
        for outside in ["<script src", "<link", "@import", "<img", "<iframe", "url("] {
            assert!(
                !PAGE.contains(outside),
                "nothing loaded from elsewhere: {outside}"
            );
        }
    }

    /// A breaker cell and its owner, opened at once (threshold 1, cooldown 1 ms).
    fn breaker() -> (crate::breaker::Breaker, Arc<BreakerCell>) {
        let config = crate::breaker::BreakerConfig {
            failure_threshold: 1,
            cooldown: Duration::from_millis(1),
            max_cooldown: Duration::from_millis(1),
        };
        let b = crate::breaker::Breaker::new(&config).with_seed(1);
        let cell = b.cell().clone();
        (b, cell)
    }

    #[test]
    fn the_registry_lists_until_closed_or_dropped_and_keeps_the_first_time() {
        let registry = OpenBreakers::default();
        let ann = UserId::new("ann").unwrap();
        let (_b, cell) = breaker();
        let opened = || Some(Transition::Opened { until_ms: 1 });
        let mut first = registry.watch();
        first.saw(None, &ann, &cell);
        assert_eq!(registry.list(10).1, 0);
        first.saw(opened(), &ann, &cell);
        let (listed, n) = registry.list(10);
        assert_eq!((listed[0].user.as_str(), n), ("ann", 1));
        let since = listed[0].since;
        first.saw(Some(Transition::Opened { until_ms: 2 }), &ann, &cell); // a failed trial
        assert_eq!(registry.list(10).0[0].since, since);
        first.saw(Some(Transition::Closed), &ann, &cell);
        assert_eq!(registry.list(10).1, 0);

        // A newer connection of the same user owns the entry: the old one's end keeps it.
        first.saw(opened(), &ann, &cell);
        let mut second = registry.watch();
        second.saw(opened(), &ann, &cell);
        drop(first);
        assert_eq!(registry.list(10).1, 1);
        drop(second);
        assert_eq!(registry.list(10).1, 0);
    }

    #[test]
    fn a_listed_session_shows_its_breakers_state() {
        let registry = OpenBreakers::default();
        let bob = UserId::new("bob").unwrap();
        let (mut b, cell) = breaker();
        let mut watch = registry.watch();
        let Some(Transition::Opened { until_ms }) = b.record_failure(10) else {
            panic!("threshold 1 opens at once")
        };
        watch.saw(Some(Transition::Opened { until_ms }), &bob, &cell);
        let state = || registry.list(10).0[0].state;
        assert_eq!(state(), ListedState::Open, "cooling down");
        assert!(cell.begin_trial(until_ms), "the worker starts a trial");
        assert_eq!(state(), ListedState::HalfOpen);
        assert_eq!(ListedState::HalfOpen.as_str(), "half_open");
        // The trial failed: open again, listed since the first opening.
        let since = registry.list(10).0[0].since;
        let again = b.record_failure(until_ms + 1);
        watch.saw(again, &bob, &cell);
        assert_eq!(state(), ListedState::Open);
        assert_eq!(registry.list(10).0[0].since, since);
    }

    #[test]
    fn the_list_is_the_oldest_entries_in_order() {
        let registry = OpenBreakers::default();
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        {
            let mut open = lock(&registry.open);
            // Inserted in a scrambled order; two share a time (then the name decides).
            for i in [7u64, 3, 9, 0, 5, 1, 8, 2, 6, 4] {
                let since = base + Duration::from_secs(i.min(8));
                let user = UserId::new(format!("u{i}")).unwrap();
                let tracked = Tracked {
                    connection: i,
                    since,
                    cell: breaker().1,
                };
                open.insert(user, tracked);
            }
        }
        let names = |max| {
            let (listed, total) = registry.list(max);
            assert_eq!(total, 10);
            listed
                .iter()
                .map(|l| l.user.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(3), ["u0", "u1", "u2"]);
        assert_eq!(names(0), Vec::<String>::new());
        let all = names(100);
        assert_eq!(all.len(), 10);
        assert_eq!(all[..8], ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"]);
        assert_eq!(all[8..], ["u8", "u9"], "equal times: by name");
    }

    #[test]
    fn a_point_reports_rates_and_interval_percentiles() {
        let then = MetricsSnapshot::default();
        let mut now = MetricsSnapshot::default();
        now.counters.sent = 50;
        now.counters.evicted = 5;
        now.gauges.held_bytes = 7;
        let then = Sample {
            engine: then,
            send_to_write: Histogram::default(),
        };
        let mut written = Histogram::default();
        written.record(30);
        let now = Sample {
            engine: now,
            send_to_write: written,
        };
        let p = Point::between(&now, &then, Duration::from_secs(5), Some(1));
        assert_eq!(
            (p.rates.sent, p.rates.dropped, p.rates.evicted),
            (10.0, 1.0, 1.0)
        );
        assert_eq!(p.enqueue_to_delivery.count, 0);
        assert_eq!(p.enqueue_to_delivery.p99_us, None);
        assert_eq!(
            (p.send_to_write.count, p.send_to_write.p99_us),
            (1, Some(30))
        );
        assert_eq!(
            (p.held_bytes, p.rss_bytes, p.interval_ms),
            (7, Some(1), 5000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn resident_memory_is_read() {
        let rss = rss_bytes().expect("linux has /proc/self/statm");
        assert!(rss > 0 && rss % page_size() == 0);
    }
}
