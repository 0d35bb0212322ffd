//! The publishing side: one [`Publisher`] per HTTP connection, numbering its messages per
//! recipient and recording which numbers the server accepted; [`Http`] is its connection,
//! hyper's HTTP/1.1 client with a deadline on every request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tether::client::{decode_publish_outcome, PublishOutcome};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::config::LoadError;
use crate::receiver::stamp_json;
use crate::report::Bitset;
use crate::run::Counters;

/// Largest response body read: a batch of 10,000 outcomes is well under it.
const MAX_BODY: usize = 4 << 20;

pub(crate) struct Publisher {
    pub(crate) index: usize,
    /// This run's id, in every message.
    pub(crate) run: u64,
    pub(crate) http: Http,
    pub(crate) clients: usize,
    /// Per recipient: its user id as a JSON string.
    pub(crate) targets: Vec<String>,
    /// Per recipient: the numbers the server accepted.
    pub(crate) accepted: Vec<Bitset>,
    /// Per recipient: the next number.
    pub(crate) next: Vec<u64>,
    /// The next recipient (round robin, each publisher starting at its own index).
    pub(crate) cursor: usize,
    pub(crate) pad: String,
    pub(crate) batch: usize,
    /// Time between requests when the rate is capped.
    pub(crate) interval: Option<Duration>,
    pub(crate) shared: Arc<Counters>,
    pub(crate) start: Instant,
    pub(crate) rejected: u64,
    /// Per recipient: older messages evicted from its mailbox to make room.
    pub(crate) evicted: Vec<u64>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

pub(crate) struct PublisherStats {
    pub(crate) index: usize,
    pub(crate) accepted: Vec<Bitset>,
    pub(crate) published: u64,
    pub(crate) rejected: u64,
    pub(crate) evicted: Vec<u64>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

impl Publisher {
    pub(crate) async fn run(
        mut self,
        deadline: Instant,
        budget: Arc<AtomicU64>,
    ) -> Result<PublisherStats, LoadError> {
        let mut published = 0;
        let mut next_at = tokio::time::Instant::now();
        let mut consecutive_errors = 0u32;
        let mut batch: Vec<(usize, u64)> = Vec::with_capacity(self.batch);
        let mut body = String::new();
        while Instant::now() < deadline {
            let want = self.batch as u64;
            let Ok(before) = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b > 0).then(|| b.saturating_sub(want))
            }) else {
                break;
            };
            let count = before.min(want) as usize;
            if let Some(interval) = self.interval {
                tokio::time::sleep_until(next_at).await;
                next_at += interval;
            }
            batch.clear();
            body.clear();
            let (path, batched) = if self.batch > 1 {
                ("/api/publish_batch", true)
            } else {
                ("/api/publish", false)
            };
            if batched {
                body.push_str(r#"{"messages":["#);
            }
            for i in 0..count {
                let to = self.cursor;
                self.cursor = (self.cursor + 1) % self.clients;
                let n = self.next[to];
                self.next[to] += 1;
                batch.push((to, n));
                if i > 0 {
                    body.push(',');
                }
                let t = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
                body.push_str(r#"{"to":"#);
                body.push_str(&self.targets[to]);
                body.push_str(r#","data":"#);
                body.push_str(&stamp_json(self.run, to, self.index, n, t, &self.pad));
                body.push('}');
            }
            if batched {
                body.push_str("]}");
            }
            match self.http.post(path, &body).await {
                Ok((200, response)) => {
                    consecutive_errors = 0;
                    let outcomes = if batched {
                        batch_outcomes(&response, batch.len())
                    } else {
                        vec![decode_publish_outcome(&response).ok()]
                    };
                    for (&(to, n), outcome) in batch.iter().zip(outcomes) {
                        match outcome {
                            Some(o) if o.is_accepted() => {
                                if let PublishOutcome::Queued { evicted } = o {
                                    self.evicted[to] += evicted;
                                    self.shared.evicted.fetch_add(evicted, Ordering::Relaxed);
                                }
                                self.accepted[to].insert(n);
                                published += 1;
                                self.shared.published.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => self.rejected += 1,
                        }
                    }
                }
                Ok((503 | 429, _)) => {
                    // The engine's inbox is full: back off a little; the numbers are skipped.
                    self.rejected += batch.len() as u64;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok((status, response)) => {
                    let text = String::from_utf8_lossy(&response);
                    return Err(LoadError::Publish {
                        status,
                        body: text.chars().take(200).collect(),
                    });
                }
                Err(e) => {
                    // The outcome of these is unknown: they count as neither accepted nor lost.
                    self.errors += batch.len() as u64;
                    self.first_error.get_or_insert_with(|| e.to_string());
                    consecutive_errors += 1;
                    if consecutive_errors >= 50 {
                        return Err(LoadError::Publish {
                            status: 0,
                            body: "50 publish requests in a row failed without an answer".into(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        Ok(PublisherStats {
            index: self.index,
            accepted: self.accepted,
            published,
            rejected: self.rejected,
            evicted: self.evicted,
            errors: self.errors,
            first_error: self.first_error,
        })
    }
}

/// The outcomes of a `/api/publish_batch` answer, by position (`None`: refused or unreadable).
fn batch_outcomes(body: &[u8], n: usize) -> Vec<Option<PublishOutcome>> {
    #[derive(Deserialize)]
    struct Results<'a> {
        #[serde(borrow)]
        results: Vec<&'a serde_json::value::RawValue>,
    }
    let mut out = vec![None; n];
    if let Ok(r) = serde_json::from_slice::<Results<'_>>(body) {
        for (slot, raw) in out.iter_mut().zip(r.results) {
            *slot = decode_publish_outcome(raw.get().as_bytes()).ok();
        }
    }
    out
}

/// One keep-alive HTTP/1.1 connection to the publish API, one request at a time, opened on
/// first use and again after any failure. Each request, connecting included, ends within
/// `timeout`, so a server that accepts and never answers cannot hold a run past its deadline.
pub(crate) struct Http {
    addr: SocketAddr,
    host: HeaderValue,
    authorization: HeaderValue,
    timeout: Duration,
    conn: Option<Conn>,
}

/// A connection: hyper's handle to send on, and the task that drives the socket.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // A connection left mid-request (a timeout) would otherwise wait on a silent server
        // for as long as the server keeps it open.
        self.driver.abort();
    }
}

/// Why a publish request has no answer: its outcome is unknown.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// No complete answer within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TCP connection could not be opened.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The exchange failed (the connection closed, a malformed answer, ...).
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The answer's body could not be read, or is larger than [`MAX_BODY`].
    #[error("response body: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
}

impl Http {
    /// A client of the publish API at `addr`, sending `Host: <authority>` and the API key.
    pub(crate) fn new(
        addr: SocketAddr,
        authority: &str,
        api_key: &str,
        timeout: Duration,
    ) -> Result<Self, LoadError> {
        let header = |what: &str, text: String| {
            HeaderValue::try_from(text)
                .map_err(|_| LoadError::Config(format!("{what} is not a valid header value")))
        };
        Ok(Self {
            addr,
            host: header("the url's host", authority.to_owned())?,
            authorization: header("the api key", format!("Bearer {api_key}"))?,
            timeout,
            conn: None,
        })
    }

    /// POSTs the JSON `body` to `path`: the status and the response body.
    pub(crate) async fn post(
        &mut self,
        path: &'static str,
        body: &str,
    ) -> Result<(u16, Bytes), HttpError> {
        let timeout = self.timeout;
        let result = tokio::time::timeout(timeout, self.exchange(path, body))
            .await
            .unwrap_or(Err(HttpError::Timeout(timeout)));
        if result.is_err() {
            // The connection may be mid-response: never reuse it.
            self.conn = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        path: &'static str,
        body: &str,
    ) -> Result<(u16, Bytes), HttpError> {
        if self.conn.as_ref().is_some_and(|c| c.sender.is_closed()) {
            self.conn = None;
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let tcp = TcpStream::connect(self.addr)
                    .await
                    .map_err(HttpError::Connect)?;
                tcp.set_nodelay(true).map_err(HttpError::Connect)?;
                let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
                let driver = tokio::spawn(async move {
                    // Its error is the request's too, and the request reports it.
                    let _ = connection.await;
                });
                self.conn.insert(Conn { sender, driver })
            }
        };
        conn.sender.ready().await?;
        let mut request = Request::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = Uri::from_static(path);
        let headers = request.headers_mut();
        headers.insert(header::HOST, self.host.clone());
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let response = conn.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(HttpError::Body)?
            .to_bytes();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_answers_decode_by_position() {
        let body = br#"{"results":[{"outcome":"delivered"},{"error":{"code":"x","message":"y"}},{"outcome":"queued","evicted":1}]}"#;
        let got = batch_outcomes(body, 4);
        assert_eq!(
            got,
            [
                Some(PublishOutcome::Delivered),
                None,
                Some(PublishOutcome::Queued { evicted: 1 }),
                None
            ]
        );
        assert_eq!(batch_outcomes(b"nope", 2), [None, None]);
    }
}
