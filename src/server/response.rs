//! The HTTP responses every route builds from: a body with its content type, JSON, and the
//! `{"error":{"code","message"}}` shape that every refusal shares (docs/protocol.md).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// The body of every response the server writes: it is always complete before it is sent.
pub(super) type Body = Full<Bytes>;

/// How long a client told to try later should wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub(super) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(super) fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    text(status, "application/json", body)
}

/// `{"error":{"code":..,"message":..}}` with `status`.
pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    json(status, body.to_string())
}

/// 503 with `Retry-After`: the request was fine, the server cannot take it now.
pub(super) fn try_later(message: &str) -> Response<Body> {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "try_later", message);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(RETRY_AFTER.as_secs()),
    );
    r
}

/// 401 with `WWW-Authenticate: Bearer`: the route needs the API key.
pub(super) fn unauthorized(message: &str) -> Response<Body> {
    let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}
