//! What the application holds: [`Client`] (receive, acknowledge, close), [`ClientHandle`]
//! (publish, ping, reconnect from other tasks) and [`Publish`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use super::channel::{AckState, Command, Envelope, Event, Shared};
use super::frame::PublishFields;
use super::task::{dial, Task, CLOSE_TIMEOUT};
use super::{
    AckError, ClientBuilder, ClientConfig, ClientError, PublishOutcome, RequestError,
    StreamPosition,
};
use crate::{Epoch, Priority, ResumePoint};

/// A message to publish over the WebSocket (the server must allow client publishing).
///
/// ```
/// use std::time::Duration;
/// use tether::client::Publish;
/// use tether::Priority;
///
/// let p = Publish::json("bob", &serde_json::json!({"text": "hi"}))?
///     .priority(Priority::High)
///     .ttl(Duration::from_secs(60))
///     .id("greeting-1");
/// let raw = Publish::raw("bob", r#"{"n": 1.50}"#)?; // sent byte for byte
/// assert!(Publish::raw("bob", "{nope").is_err());
/// # let _ = (p, raw);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Publish {
    to: String,
    data: Box<RawValue>,
    priority: Option<Priority>,
    ttl_ms: Option<u64>,
    id: Option<String>,
    stream: Option<StreamPosition>,
}

impl Publish {
    /// A message to `to` whose payload is `data` serialised as JSON.
    pub fn json<T: Serialize + ?Sized>(
        to: impl Into<String>,
        data: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::with_data(
            to.into(),
            serde_json::value::to_raw_value(data)?,
        ))
    }

    /// A message to `to` whose payload is the JSON text `json`, kept exactly as written.
    /// Fails if `json` is not one JSON value.
    pub fn raw(to: impl Into<String>, json: impl Into<String>) -> Result<Self, serde_json::Error> {
        let json: String = json.into();
        let raw = RawValue::from_string(json.trim().to_owned())?;
        Ok(Self::with_data(to.into(), raw))
    }

    fn with_data(to: String, data: Box<RawValue>) -> Self {
        Self {
            to,
            data,
            priority: None,
            ttl_ms: None,
            id: None,
            stream: None,
        }
    }

    /// The priority. Default normal.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// How long the message may wait to be acknowledged (whole milliseconds, at least 1).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.ttl_ms = Some(ms.max(1));
        self
    }

    /// An idempotency key: the server drops a second publish with the same id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Makes this part `part` of stream `id`.
    pub fn stream(mut self, id: impl Into<String>, part: u32, last: bool) -> Self {
        self.stream = Some(StreamPosition {
            id: id.into(),
            part,
            last,
        });
        self
    }

    /// The publish fields as JSON: a `publish` frame with `type` and `ref` when `frame` is
    /// true, else the body of `POST /api/publish`.
    pub(crate) fn encode(&self, frame: bool, reference: Option<&str>) -> String {
        let fields = PublishFields {
            kind: frame.then_some("publish"),
            to: &self.to,
            data: &self.data,
            priority: self.priority.map(Priority::as_str),
            ttl_ms: self.ttl_ms,
            id: self.id.as_deref(),
            reference,
            stream: self.stream.as_ref(),
        };
        // Strings, integers and already-valid raw JSON: serialising cannot fail.
        serde_json::to_string(&fields).unwrap_or_default()
    }
}

/// A connected client. See the [module docs](super) for the delivery rules.
///
/// Drop it or call [`close`](Self::close) to disconnect; dropping does not acknowledge the
/// message the last `recv` returned.
pub struct Client {
    events: mpsc::Receiver<Envelope>,
    handle: ClientHandle,
    auto_ack: bool,
    /// Auto-ack: the seq the last `recv` returned, processed once `recv` is called again.
    to_settle: Option<u64>,
    /// Highest seq returned by `recv` in the application's epoch.
    received: u64,
    task: Option<JoinHandle<()>>,
}

/// A cloneable handle to publish, ping and force a reconnect while another task owns the
/// [`Client`] and calls `recv`.
#[derive(Clone)]
pub struct ClientHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    request_timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("auto_ack", &self.auto_ack)
            .field("received", &self.received)
            .field("resume_point", &self.resume_point())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHandle").finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// [`build`](Self::build), then [`Client::connect`].
    pub async fn connect(self) -> Result<Client, ClientError> {
        Client::connect(self.build()?).await
    }
}

impl Client {
    /// Settings for a client of `url` (`ws://host:port/ws`) authenticating with `token`.
    pub fn builder(url: impl Into<String>, token: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url.into(), token.into())
    }

    /// Connects once (no retry: a wrong URL or token shows at once) and starts the
    /// connection task on the current tokio runtime. The first [`recv`](Self::recv) returns
    /// the [`Event::Connected`] of this connection.
    ///
    /// Errors: everything in [`ClientError`] except `GaveUp` and `Closed`.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let (socket, info) = dial(&config, config.resume).await?;
        let shared = Arc::new(Shared {
            state: Mutex::new(AckState {
                epoch: config.resume.map(|r| r.epoch),
                processed: config.resume.map_or(0, |r| r.last_seq),
                latest: None,
            }),
            wake: Notify::new(),
            close: AtomicBool::new(false),
            reconnect: AtomicBool::new(false),
            next_ref: AtomicU64::new(1),
        });
        let (event_tx, event_rx) = mpsc::channel(config.event_capacity);
        let (command_tx, command_rx) = mpsc::channel(config.max_pending_requests);
        let handle = ClientHandle {
            commands: command_tx,
            shared: shared.clone(),
            request_timeout: config.request_timeout,
        };
        let auto_ack = config.auto_ack;
        let task = Task {
            backoff: config.task_backoff(),
            resume: config.resume,
            config,
            shared,
            events: event_tx,
            commands: command_rx,
            generation: 0,
        };
        let task = tokio::spawn(task.run(socket, info));
        Ok(Client {
            events: event_rx,
            handle,
            auto_ack,
            to_settle: None,
            received: 0,
            task: Some(task),
        })
    }

    /// The next event. With auto-ack, calling it acknowledges the message the previous call
    /// returned. See the [module docs](super) for which messages it returns.
    ///
    /// Returns an error once, when the client stops for good (`Unauthorized`, `Replaced`,
    /// `ProtocolViolation`, `FrameTooBig`, `GaveUp`), and [`ClientError::Closed`] after that.
    ///
    /// Cancel safe: if the future is dropped before it completes, no event is lost.
    pub async fn recv(&mut self) -> Result<Event, ClientError> {
        if let Some(seq) = self.to_settle.take() {
            self.settle(seq);
        }
        loop {
            let Some(envelope) = self.events.recv().await else {
                return Err(ClientError::Closed);
            };
            let event = envelope.item?;
            match event.seq() {
                Some(seq) => {
                    if !self.fresh(envelope.generation, envelope.epoch, seq) {
                        continue;
                    }
                    self.received = self.received.max(seq);
                    if self.auto_ack {
                        self.to_settle = Some(seq);
                    }
                    return Ok(event);
                }
                None => {
                    if let Event::Connected(info) = &event {
                        let mut state = self.handle.shared.state();
                        if state.epoch != Some(info.epoch) {
                            state.epoch = Some(info.epoch);
                            state.processed = 0;
                            self.received = 0;
                        }
                    }
                    return Ok(event);
                }
            }
        }
    }

    /// Whether a delivery should reach the application (see the module docs).
    fn fresh(&self, generation: u64, epoch: Epoch, seq: u64) -> bool {
        let state = self.handle.shared.state();
        let superseded = state
            .latest
            .is_some_and(|(g, e)| generation < g && e == epoch);
        !superseded && seq > state.processed
    }

    /// Marks everything up to `seq` processed and lets the task acknowledge it.
    fn settle(&self, seq: u64) {
        let mut state = self.handle.shared.state();
        if seq > state.processed {
            state.processed = seq;
            drop(state);
            self.handle.shared.wake.notify_one();
        }
    }

    /// Acknowledges every message up to `seq` (cumulative): they are processed and will not
    /// be returned again. Needed with auto-ack off; with it on, acknowledges early.
    ///
    #[cfg_attr(feature = "server", doc = "```")]
    #[cfg_attr(not(feature = "server"), doc = "```ignore")]
    /// use std::time::SystemTime;
    /// use tether::client::{AckError, Client, Event};
    /// use tether::server::{auth::issue_token, config::ServerConfig, Server};
    /// use tether::{Message, UserId};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let secret = "an example secret of at least 32 bytes";
    /// let config = ServerConfig::parse_from(
    ///     ["serve", "--listen", "127.0.0.1:0", "--jwt-secret", secret, "--api-key", "an example api key"],
    ///     [("", ""); 0],
    /// )?;
    /// let server = Server::start(config).await?;
    /// let bob = UserId::new("bob")?;
    /// server.engine().send(&bob, Message::new("1")).await?;
    /// server.engine().send(&bob, Message::new("2")).await?;
    ///
    /// let token = issue_token(secret, &bob, None, SystemTime::now())?;
    /// let mut client = Client::builder(format!("ws://{}/ws", server.local_addr()), token)
    ///     .auto_ack(false)
    ///     .connect()
    ///     .await?;
    /// let Event::Connected(_) = client.recv().await? else { unreachable!() };
    /// let Event::Message(first) = client.recv().await? else { unreachable!() };
    /// client.ack(first.seq())?; // processed: it will not come again
    /// assert_eq!(client.ack(first.seq() + 5), Err(AckError::NotReceived { seq: 6, received: 1 }));
    ///
    /// // The connection dies before "2" is acknowledged: it comes again, "1" does not.
    /// let Event::Message(second) = client.recv().await? else { unreachable!() };
    /// client.reconnect();
    /// let Event::Disconnected(_) = client.recv().await? else { unreachable!() };
    /// let Event::Connected(info) = client.recv().await? else { unreachable!() };
    /// assert!(info.recovered);
    /// let Event::Message(again) = client.recv().await? else { unreachable!() };
    /// assert_eq!((again.seq(), again.data_str()), (second.seq(), "2"));
    /// client.ack(again.seq())?;
    /// client.close().await;
    /// server.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn ack(&mut self, seq: u64) -> Result<(), AckError> {
        if seq > self.received {
            return Err(AckError::NotReceived {
                seq,
                received: self.received,
            });
        }
        if self.to_settle.is_some_and(|s| s <= seq) {
            self.to_settle = None;
        }
        self.settle(seq);
        Ok(())
    }

    /// Where a later client may resume from ([`ClientBuilder::resume_from`]): the epoch and
    /// the highest processed seq. `None` before the first `Connected` event was received.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        let state = self.handle.shared.state();
        state.epoch.map(|epoch| ResumePoint {
            epoch,
            last_seq: state.processed,
        })
    }

    /// A handle for other tasks.
    pub fn handle(&self) -> ClientHandle {
        self.handle.clone()
    }

    /// See [`ClientHandle::publish`].
    pub async fn publish(&self, publish: Publish) -> Result<PublishOutcome, RequestError> {
        self.handle.publish(publish).await
    }

    /// See [`ClientHandle::ping`].
    pub async fn ping(&self) -> Result<Duration, RequestError> {
        self.handle.ping().await
    }

    /// See [`ClientHandle::reconnect`].
    pub fn reconnect(&self) {
        self.handle.reconnect();
    }

    /// Disconnects cleanly: acknowledges what was processed (with auto-ack, the message the
    /// last `recv` returned too), closes the WebSocket with 1000 and waits for the connection
    /// task to end (at most about 2 s).
    pub async fn close(mut self) {
        if let Some(seq) = self.to_settle.take() {
            self.settle(seq);
        }
        self.handle.shared.close.store(true, Ordering::Release);
        self.handle.shared.wake.notify_one();
        // Unblocks a task waiting for room in the event channel.
        self.events.close();
        while self.events.try_recv().is_ok() {}
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(1), task).await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Release: the task reads it with Acquire after the wake-up.
        self.handle.shared.close.store(true, Ordering::Release);
        self.handle.shared.wake.notify_one();
    }
}

impl ClientHandle {
    /// Publishes a message (the server must allow client publishing; otherwise the outcome is
    /// `Rejected { reason: "publish_not_allowed" }`) and waits for its outcome.
    ///
    /// Fails fast with [`RequestError::NotConnected`] between connections; waits while
    /// [`max_pending_requests`](ClientBuilder::max_pending_requests) are outstanding.
    pub async fn publish(&self, publish: Publish) -> Result<PublishOutcome, RequestError> {
        let n = self.shared.next_ref.fetch_add(1, Ordering::Relaxed);
        let reference = format!("{n:x}");
        let frame = publish.encode(true, Some(&reference));
        let (reply, answer) = oneshot::channel();
        self.request(
            Command::Publish {
                frame,
                reference,
                reply,
            },
            answer,
        )
        .await
    }

    /// Sends a `ping` and returns the round-trip time when the `pong` arrives.
    pub async fn ping(&self) -> Result<Duration, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::Ping { reply }, answer).await
    }

    async fn request<T>(
        &self,
        command: Command,
        answer: oneshot::Receiver<Result<T, RequestError>>,
    ) -> Result<T, RequestError> {
        if self.shared.close.load(Ordering::Acquire) {
            return Err(RequestError::Closed);
        }
        let exchange = async {
            self.commands
                .send(command)
                .await
                .map_err(|_| RequestError::Closed)?;
            answer.await.map_err(|_| RequestError::Closed)?
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or(Err(RequestError::Timeout))
    }

    /// Drops the current connection abruptly, as a network failure would (no close frame),
    /// and reconnects at once with a resume point. For tests, load generators, and
    /// applications that know the network changed.
    pub fn reconnect(&self) {
        self.shared.reconnect.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_frames_decode_on_the_server() {
        use crate::protocol::{decode_client_frame, decode_publish_request, ClientFrame};
        let p = Publish::raw("bob", r#" {"n": 1.50} "#)
            .expect("json")
            .priority(Priority::Low)
            .ttl(Duration::from_micros(10))
            .id("i")
            .stream("s", 3, true);
        let ClientFrame::Publish(r) =
            decode_client_frame(&p.encode(true, Some("r1"))).expect("frame")
        else {
            panic!()
        };
        assert_eq!(r.to, "bob");
        assert_eq!(r.data.as_bytes(), br#"{"n": 1.50}"#);
        assert_eq!(r.priority, Priority::Low);
        assert_eq!(r.ttl_ms, Some(1));
        assert_eq!(r.id.as_deref(), Some("i"));
        assert_eq!(r.reference.as_deref(), Some("r1"));
        let s = r.stream.expect("stream");
        assert_eq!((s.id.as_str(), s.part, s.last), ("s", 3, true));

        let body = Publish::json("al", &[1, 2])
            .expect("json")
            .encode(false, None);
        assert_eq!(body, r#"{"to":"al","data":[1,2]}"#);
        assert!(decode_publish_request(&body).is_ok());
    }
}
