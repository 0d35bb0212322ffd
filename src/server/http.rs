//! HTTP on the server's port: the publish API, metrics, stats, health, and the WebSocket
//! upgrade of `/ws` (and `/echo` when enabled).
//!
//! A connection is served by hyper; when a request upgrades, the 101 goes out, hyper hands
//! the socket back, and the same task runs the WebSocket session, so the server's task set
//! (and its graceful shutdown) covers sessions too.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::admit::Ticket;
use super::config::ServerConfig;
use super::linger::Linger;
use super::response::{error, json, text, try_later, unauthorized, Body};
use super::ws::{self, Upgrade};
use super::{dashboard, devices, publish_one, FrontStats, Published, Shared};

/// What a route that needs the API key answers without it.
const API_KEY_REQUIRED: &str = "a valid `Authorization: Bearer <api key>` is required";
use crate::protocol::{self, FrameError};
use crate::InvalidInput;

/// What a route does once its method matched.
#[derive(Clone, Copy)]
enum Handler {
    WebSocket(Upgrade),
    Publish,
    PublishBatch,
    Metrics,
    Stats,
    Health,
    DashboardPage,
    DashboardData,
    Devices,
}

/// One path: whether this server serves it, and what each method it allows does.
struct Route {
    path: &'static str,
    /// A route a setting turns off answers 404, as a path that never existed.
    served: fn(&ServerConfig) -> bool,
    methods: &'static [(Method, Handler)],
}

/// Every route: dispatch, 404 and 405 with its `Allow` header are all read from here.
const ROUTES: &[Route] = &[
    Route {
        path: "/ws",
        served: |_| true,
        methods: &[(Method::GET, Handler::WebSocket(Upgrade::Session))],
    },
    Route {
        path: "/echo",
        served: |config| config.echo_route,
        methods: &[(Method::GET, Handler::WebSocket(Upgrade::Echo))],
    },
    Route {
        path: "/api/publish",
        served: |_| true,
        methods: &[(Method::POST, Handler::Publish)],
    },
    Route {
        path: "/api/publish_batch",
        served: |_| true,
        methods: &[(Method::POST, Handler::PublishBatch)],
    },
    Route {
        path: "/api/devices",
        served: |_| true,
        methods: &[(Method::GET, Handler::Devices)],
    },
    Route {
        path: "/metrics",
        served: |_| true,
        methods: &[(Method::GET, Handler::Metrics)],
    },
    Route {
        path: "/api/stats",
        served: |_| true,
        methods: &[(Method::GET, Handler::Stats)],
    },
    Route {
        path: "/healthz",
        served: |_| true,
        methods: &[(Method::GET, Handler::Health)],
    },
    Route {
        path: "/dashboard",
        served: ServerConfig::dashboard_enabled,
        methods: &[(Method::GET, Handler::DashboardPage)],
    },
    Route {
        path: "/api/dashboard",
        served: ServerConfig::dashboard_enabled,
        methods: &[(Method::GET, Handler::DashboardData)],
    },
];

/// What one connection's requests share.
struct Conn {
    shared: Arc<Shared>,
    upgrade: Mutex<Option<(hyper::upgrade::OnUpgrade, Upgrade)>>,
    /// Past `max_connections` or `max_connections_per_ip`: every request is refused.
    refused: bool,
    /// Set when an answer leaves part of a body unread: the close then lingers.
    linger: Arc<AtomicBool>,
}

/// Serves one connection (TCP or TLS): HTTP requests until it closes, or a WebSocket after an
/// upgrade. `ticket` is the socket's slot, given back when this returns; on a refused ticket
/// every request is answered with a refusal, and the connection closes after one.
pub(crate) async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    ticket: Ticket,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let refused = ticket.is_refused();
    let c = &shared.config;
    let io = Linger::new(stream, c.linger_bytes, c.linger_time);
    let conn = Arc::new(Conn {
        shared: shared.clone(),
        upgrade: Mutex::default(),
        refused,
        linger: io.armer(),
    });
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(route(req, &conn).await) }
        })
    };
    let http = hyper::server::conn::http1::Builder::new()
        // A client that opens a connection and never finishes its request headers is
        // dropped after `header_timeout`, however slowly it trickles them in.
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(c.header_timeout)
        .max_buf_size(c.max_body_bytes.max(16 * 1024) + 8 * 1024)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(http);
    let served = tokio::select! {
        r = http.as_mut() => r,
        _ = shared.stopped() => {
            http.as_mut().graceful_shutdown();
            http.as_mut().await
        }
    };
    if let Err(e) = served {
        if e.is_timeout() {
            FrontStats::bump(&shared.stats.header_timeouts);
        }
        tracing::debug!(%peer, error = %e, "http connection ended");
    }
    let pending = conn.upgrade.lock().ok().and_then(|mut u| u.take());
    if let Some((on_upgrade, kind)) = pending {
        match on_upgrade.await {
            Ok(upgraded) => ws::serve(TokioIo::new(upgraded), peer, kind, refused, shared).await,
            Err(e) => tracing::debug!(%peer, error = %e, "upgrade failed"),
        }
    }
    // The socket is closed by now (or handed on and closed by `ws`): its slot goes back.
    drop(ticket);
}

/// Answers one request, and arms the lingering close when the answer is a refusal that may
/// leave part of the body unread.
async fn route(req: Request<Incoming>, conn: &Conn) -> Response<Body> {
    let has_body = !req.body().is_end_stream();
    let arrived_us = conn.shared.engine.now_us();
    let response = dispatch(req, conn, arrived_us).await;
    let status = response.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        conn.linger.store(true, Ordering::Relaxed);
    }
    response
}

async fn dispatch(req: Request<Incoming>, conn: &Conn, arrived_us: u64) -> Response<Body> {
    let (shared, upgrade) = (&conn.shared, &conn.upgrade);
    let path = req.uri().path();
    let served = |r: &&Route| r.path == path && (r.served)(&shared.config);
    let Some(route) = ROUTES.iter().find(served) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such route");
    };
    let Some(&(_, handler)) = route.methods.iter().find(|(m, _)| m == req.method()) else {
        return method_not_allowed(route);
    };
    if conn.refused && !matches!(handler, Handler::WebSocket(_)) {
        // A WebSocket is refused once upgraded, with 4100, which its client understands.
        let mut r = try_later("too many connections");
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    match handler {
        Handler::WebSocket(kind) => websocket(req, shared, upgrade, kind),
        Handler::Publish => publish(req, shared, false, arrived_us).await,
        Handler::PublishBatch => publish(req, shared, true, arrived_us).await,
        Handler::Metrics => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics_text(shared),
        ),
        Handler::Stats => json(StatusCode::OK, stats_json(shared)),
        Handler::Health if shared.is_stopping() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "stopping\n")
        }
        Handler::Health => text(StatusCode::OK, "text/plain", "ok\n"),
        Handler::DashboardPage => dashboard::page(),
        Handler::DashboardData => dashboard::data(req.headers(), req.uri().query(), shared).await,
        Handler::Devices => {
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if !shared.api_key.check(auth) {
                return unauthorized(API_KEY_REQUIRED);
            }
            devices::list(req.uri().query(), shared).await
        }
    }
}

/// 405, with the route's methods in `Allow` as RFC 9110 asks.
fn method_not_allowed(route: &Route) -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "wrong method for this route",
    );
    let allowed: Vec<&str> = route.methods.iter().map(|(m, _)| m.as_str()).collect();
    if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
        r.headers_mut().insert(header::ALLOW, value);
    }
    r
}

fn frame_error(e: &FrameError) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, e.code(), &e.to_string())
}

/// Validates a WebSocket upgrade request and answers 101, leaving the socket to the
/// connection task.
fn websocket(
    mut req: Request<Incoming>,
    shared: &Shared,
    upgrade: &Mutex<Option<(hyper::upgrade::OnUpgrade, Upgrade)>>,
    kind: Upgrade,
) -> Response<Body> {
    if shared.is_stopping() {
        return try_later("the server is shutting down");
    }
    let headers = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return error(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this route speaks WebSocket",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_websocket_version",
            "Sec-WebSocket-Version must be 13",
        );
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing_websocket_key",
            "Sec-WebSocket-Key is required",
        );
    };
    let allowed = &shared.config.allowed_origins;
    if !allowed.is_empty() {
        // Browsers always send Origin; other clients may not, and are not what the check is for.
        if let Some(origin) = headers.get(header::ORIGIN) {
            let ok = origin
                .to_str()
                .is_ok_and(|o| allowed.iter().any(|a| a == o));
            if !ok {
                return error(
                    StatusCode::FORBIDDEN,
                    "origin_not_allowed",
                    "this Origin is not allowed",
                );
            }
        }
    }
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    if let Ok(mut slot) = upgrade.lock() {
        *slot = Some((on_upgrade, kind));
    }
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// Reads a body of at most `max_body_bytes` within `body_timeout` as UTF-8, or answers the
/// error.
async fn read_body(req: Request<Incoming>, shared: &Shared) -> Result<String, Response<Body>> {
    let max = shared.config.max_body_bytes;
    let too_big = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the body is larger than the limit of {max} bytes"),
        )
    };
    if declared_too_big(&req, max) {
        return Err(too_big());
    }
    let limit = shared.config.body_timeout;
    let collect = Limited::new(req.into_body(), max).collect();
    let Ok(collected) = tokio::time::timeout(limit, collect).await else {
        FrontStats::bump(&shared.stats.body_timeouts);
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            &format!("the body did not arrive within {limit:?}"),
        ));
    };
    let body = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_big()),
        Err(_) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "the request body could not be read",
            ))
        }
    };
    String::from_utf8(body.into()).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_utf8",
            "the body is not UTF-8",
        )
    })
}

/// Whether the request's `Content-Length` already says it is over `max`.
fn declared_too_big(req: &Request<Incoming>, max: usize) -> bool {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    declared.is_some_and(|n| n > max as u64)
}

/// `arrived_us`: when the request arrived, where its messages' delivery latency starts.
async fn publish(
    req: Request<Incoming>,
    shared: &Shared,
    batch: bool,
    arrived_us: u64,
) -> Response<Body> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !shared.api_key.check(auth) {
        return unauthorized(API_KEY_REQUIRED);
    }
    if shared.is_stopping() {
        return try_later("the server is shutting down");
    }
    // A single publish is one message: refused before its body is read (but a body that
    // is too big anyway is answered 413 at no cost to the rate).
    if !batch && !declared_too_big(&req, shared.config.max_body_bytes) {
        if let Some(refusal) = take_http_tokens(shared, 1) {
            return refusal;
        }
    }
    let body = match read_body(req, shared).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !batch {
        let request = match protocol::decode_publish_request(&body) {
            Ok(r) => r,
            Err(e) => return frame_error(&e),
        };
        return match publish_one(shared, request, Some(arrived_us)).await {
            Published::Outcome(o) => json(StatusCode::OK, protocol::encode_publish_outcome(&o)),
            Published::Invalid(e) => frame_error(&e),
            Published::BadInput(e @ InvalidInput::PayloadTooLarge { .. }) => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &protocol::describe_invalid_input(&e).1,
            ),
            Published::BadInput(e) => error(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                &protocol::describe_invalid_input(&e).1,
            ),
            Published::TryLater => try_later("the engine is overloaded"),
            Published::Stopping => try_later("the server is shutting down"),
        };
    }
    let requests = match protocol::decode_publish_batch(&body) {
        Ok(r) => r,
        Err(e) => return frame_error(&e),
    };
    let n = u32::try_from(requests.len()).unwrap_or(u32::MAX);
    if n > 0 {
        if let Some(refusal) = take_http_tokens(shared, n) {
            return refusal;
        }
    }
    let mut out = String::with_capacity(16 + requests.len() * 48);
    out.push_str("{\"results\":[");
    for (i, request) in requests.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let item = match request {
            Err(e) => item_error(e.code(), &e.to_string()),
            Ok(r) => match publish_one(shared, r, Some(arrived_us)).await {
                Published::Outcome(o) => protocol::encode_publish_outcome(&o),
                Published::Invalid(e) => item_error(e.code(), &e.to_string()),
                Published::BadInput(e) => {
                    item_error("invalid_field", &protocol::describe_invalid_input(&e).1)
                }
                Published::TryLater => item_error("try_later", "the engine is overloaded"),
                Published::Stopping => item_error("try_later", "the server is shutting down"),
            },
        };
        out.push_str(&item);
    }
    out.push_str("]}");
    json(StatusCode::OK, out)
}

/// Takes `n` messages' worth of the API key's publish rate; otherwise the refusal: 429 with
/// `Retry-After` (whole seconds, at least 1), or 413 for more than a whole burst.
fn take_http_tokens(shared: &Shared, n: u32) -> Option<Response<Body>> {
    let (rate, bucket) = &shared.http_rate;
    let refuse = |message: &str, wait: Duration| {
        FrontStats::bump(&shared.stats.http_rate_limited);
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        r
    };
    if !rate.fits(n) {
        // Waiting would not help: the client must split the batch.
        let message = format!(
            "a batch of {n} messages is more than http_publish_burst ({}) allows at once",
            shared.config.http_publish_burst
        );
        return Some(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &message,
        ));
    }
    let taken = bucket
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(n, *rate, Instant::now());
    taken
        .err()
        .map(|wait| refuse("over http_publish_rate for this API key", wait))
}

fn item_error(code: &str, message: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": message}}).to_string()
}

/// The engine's Prometheus text plus the front end's own series.
fn metrics_text(shared: &Shared) -> String {
    let mut out = shared.engine.metrics().to_prometheus();
    for (name, help, kind, value) in front_series(shared) {
        out.push_str(&format!(
            "# HELP tether_{name} {help}\n# TYPE tether_{name} {kind}\ntether_{name} {value}\n"
        ));
    }
    let (name, help) = SEND_TO_WRITE;
    crate::metrics::write_histogram(&mut out, name, help, &shared.stats.send_to_write());
    out
}

/// The front end's latency histogram: its Prometheus name and help.
const SEND_TO_WRITE: (&str, &str) = (
    "ws_send_to_write_seconds",
    "Time from a delivery's producer call (Engine::send, or the arrival of the HTTP publish) to its frame written and flushed to the WebSocket.",
);

fn stats_json(shared: &Shared) -> String {
    let engine: serde_json::Value =
        serde_json::from_str(&shared.engine.metrics().to_json()).unwrap_or_default();
    let front: serde_json::Map<String, serde_json::Value> = front_series(shared)
        .into_iter()
        .map(|(name, _, _, v)| (name.to_owned(), v.into()))
        .collect();
    let mut front = front;
    let latency = serde_json::to_value(shared.stats.send_to_write()).unwrap_or_default();
    front.insert("ws_send_to_write".to_owned(), latency);
    serde_json::json!({"engine": engine, "server": front}).to_string()
}

fn front_series(shared: &Shared) -> Vec<(&'static str, &'static str, &'static str, u64)> {
    let s = &shared.stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    vec![
        (
            "connections",
            "Sockets open that count against max_connections: HTTP, /echo and WebSocket.",
            "gauge",
            shared.admission.open() as u64,
        ),
        (
            "connections_refused_total",
            "Sockets past max_connections or max_connections_per_ip, answered 503 or 4100.",
            "counter",
            get(&s.sockets_refused),
        ),
        (
            "connections_dropped_total",
            "Sockets past the limits closed unanswered, with 64 refusals already under way.",
            "counter",
            get(&s.sockets_dropped),
        ),
        (
            "header_timeouts_total",
            "Connections closed because a request's headers or the TLS handshake took longer than header_timeout.",
            "counter",
            get(&s.header_timeouts),
        ),
        (
            "body_timeouts_total",
            "Requests answered 408 because the body took longer than body_timeout.",
            "counter",
            get(&s.body_timeouts),
        ),
        (
            "tls_handshake_failures_total",
            "TLS handshakes that failed.",
            "counter",
            get(&s.tls_handshake_failures),
        ),
        (
            "http_rate_limited_total",
            "HTTP publishes answered 429 (http_publish_rate).",
            "counter",
            get(&s.http_rate_limited),
        ),
        (
            "ws_connections",
            "WebSocket sessions open.",
            "gauge",
            shared.connections.load(Ordering::Relaxed) as u64,
        ),
        (
            "ws_connections_total",
            "WebSocket connections accepted.",
            "counter",
            get(&s.connections_total),
        ),
        (
            "ws_refused_overload_total",
            "WebSocket connections closed with 4100 (max_connections or engine full).",
            "counter",
            get(&s.refused_overload),
        ),
        (
            "ws_unauthorized_total",
            "WebSocket connections closed with 4001.",
            "counter",
            get(&s.unauthorized),
        ),
        (
            "ws_protocol_violations_total",
            "WebSocket connections closed with 4003 or 1009.",
            "counter",
            get(&s.protocol_errors),
        ),
        (
            "ws_bad_frames_total",
            "Client frames answered with an error frame.",
            "counter",
            get(&s.bad_frames),
        ),
        (
            "ws_rate_limited_total",
            "Client publishes refused by the per-user rate (publish_rate).",
            "counter",
            get(&s.rate_limited),
        ),
        (
            "ws_write_timeouts_total",
            "Writes that did not finish within write_timeout (reported to the breaker).",
            "counter",
            get(&s.write_timeouts),
        ),
        (
            "ws_frames_out_total",
            "Frames written to WebSocket clients.",
            "counter",
            get(&s.frames_out),
        ),
        (
            "ws_frames_in_total",
            "Text frames read from WebSocket clients.",
            "counter",
            get(&s.frames_in),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_path_is_routed_once_with_its_methods() {
        for (i, route) in ROUTES.iter().enumerate() {
            assert!(!route.methods.is_empty(), "{}", route.path);
            let later = &ROUTES[i + 1..];
            assert!(later.iter().all(|r| r.path != route.path), "{}", route.path);
        }
    }

    #[test]
    fn method_not_allowed_lists_the_allowed_methods() {
        let publish = ROUTES.iter().find(|r| r.path == "/api/publish");
        let r = method_not_allowed(publish.expect("the publish route"));
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            r.headers().get(header::ALLOW).map(|v| v.as_bytes()),
            Some(&b"POST"[..])
        );
    }
}
