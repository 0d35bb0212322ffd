//! `GET /api/devices?user=NAME` (API key): one user's device mailboxes for operators: each
//! device, connected or away since when, queued per band, in flight, and what it missed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::StatusCode;
use serde_json::{json, Value};

use super::response::{error, json, Body};
use super::Shared;
use crate::{MailboxStats, UserId};

pub(super) async fn list(query: Option<&str>, shared: &Shared) -> hyper::Response<Body> {
    let user = match query_value(query.unwrap_or(""), "user") {
        Some(Ok(name)) => name,
        Some(Err(message)) => return error(StatusCode::BAD_REQUEST, "invalid_query", message),
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "name the user: /api/devices?user=NAME",
            )
        }
    };
    let user = match UserId::new(&user) {
        Ok(user) => user,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_query", &e.to_string()),
    };
    let devices = shared.engine.devices(&user).await;
    // Mailbox times are on the engine's clock; shown as wall-clock times.
    let engine_now = shared.engine.config().clock.now_ms();
    let wall_now = SystemTime::now();
    let since = |d: &MailboxStats| {
        let ago = Duration::from_millis(engine_now.saturating_sub(d.since_ms));
        wall_now
            .checked_sub(ago)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |t| t.as_millis() as u64)
    };
    let devices: Vec<Value> = devices
        .iter()
        .map(|d| {
            json!({
                // "" is the default device; null the mailbox that waits for a first device.
                "device": d.device.as_ref().map(|id| id.as_str()),
                "connected": d.connected,
                "since_unix_ms": since(d),
                "queued": d.queued_per_band,
                "queued_bytes": d.queued_bytes,
                "in_flight": d.in_flight,
                "in_flight_bytes": d.in_flight_bytes,
                "next_seq": d.next_seq,
                "epoch": d.epoch.to_string(),
                "missed": d.missed,
            })
        })
        .collect();
    json(
        StatusCode::OK,
        json!({"user": user.as_str(), "devices": devices}).to_string(),
    )
}

/// The percent-decoded value of `key` in a query string, if present.
fn query_value(query: &str, key: &str) -> Option<Result<String, &'static str>> {
    let (_, raw) = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)?;
    Some(percent_decode(raw))
}

fn percent_decode(raw: &str) -> Result<String, &'static str> {
    const BAD: &str = "the query is not valid percent-encoded UTF-8";
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hex = [bytes.next().ok_or(BAD)?, bytes.next().ok_or(BAD)?];
                let hex = std::str::from_utf8(&hex).map_err(|_| BAD)?;
                u8::from_str_radix(hex, 16).map_err(|_| BAD)?
            }
            b => b,
        });
    }
    String::from_utf8(out).map_err(|_| BAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            query_value("x=1&user=al%C3%A9x+b", "user"),
            Some(Ok("aléx b".into()))
        );
        assert_eq!(query_value("x=1", "user"), None);
        assert!(matches!(query_value("user=%zz", "user"), Some(Err(_))));
        assert!(matches!(query_value("user=%C3", "user"), Some(Err(_))));
        assert!(matches!(query_value("user=%4", "user"), Some(Err(_))));
    }
}
