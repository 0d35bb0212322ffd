//! The `Engine` handle: validates input, routes each user to its shard, and starts and stops
//! the shard workers.

use std::future::Future;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::breaker::Breaker;
use crate::config::{Config, ConfigError, EngineBuilder, UserLimits};
use crate::error::{AbortStreamError, ConnectError, SendError, SetLimitsError, TrySendError};
use crate::loom::{thread, Arc, AtomicBool, Ordering};
use crate::message::{DeviceId, InvalidInput, Message, UserId};
use crate::metrics::{MailboxStats, MetricsSnapshot};
use crate::outcome::SendOutcome;
use crate::session::ResumePoint;
use crate::shard::budget::Budget;
use crate::shard::link::SessionShared;
use crate::shard::worker::Worker;
use crate::shard::{Command, ConnectRequest, ShardShared};
use crate::shutdown::{ShutdownOptions, ShutdownReport};
use crate::stream::StreamStatus;
use crate::sync::{mpsc, outbox, Full};

mod session;

pub use session::Session;

/// The messaging engine. Cheap to clone; every clone is a handle to the same shards. The
/// workers stop when the last handle is dropped.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tether::{Engine, Message, Priority, SendOutcome, UserId};
///
/// let engine = Engine::builder().shards(2).build().unwrap();
/// let carol = UserId::new("carol").unwrap();
///
/// // Carol is away: messages wait in her mailbox.
/// let outcome = engine.send_confirmed(&carol, Message::new("later")).await.unwrap();
/// assert_eq!(outcome, SendOutcome::Queued { evicted: 0 });
/// engine.send(&carol, Message::new("urgent").with_priority(Priority::Critical)).await.unwrap();
///
/// // She connects: the most urgent first.
/// let mut session = engine.connect(&carol, None).await.unwrap();
/// assert_eq!(&session.recv().await.unwrap().payload()[..], b"urgent");
/// assert_eq!(&session.recv().await.unwrap().payload()[..], b"later");
/// # });
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    shards: Box<[Arc<ShardShared>]>,
    budget: Arc<Budget>,
    workers: Mutex<Vec<thread::JoinHandle<()>>>,
    closing: AtomicBool,
}

impl EngineBuilder {
    /// Checks the settings and starts the shard workers.
    pub fn build(self) -> Result<Engine, ConfigError> {
        Engine::start(self.validate()?)
    }
}

impl Engine {
    /// A builder with every default (see [`EngineBuilder`]).
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    pub(crate) fn start(config: Config) -> Result<Engine, ConfigError> {
        let config = Arc::new(config);
        let budget = Budget::new(config.memory_budget_bytes, config.shed, config.shards);
        let seeds = ahash::RandomState::new();
        let mut shards = Vec::with_capacity(config.shards);
        let mut workers = Vec::with_capacity(config.shards);
        for i in 0..config.shards {
            let (tx, rx) = mpsc::channel(config.inbox_capacity);
            let shard = Arc::new(ShardShared::new(tx));
            let worker = Worker::new(
                shard.clone(),
                rx,
                config.clone(),
                Budget::view(&budget, i),
                seeds.hash_one(i),
            );
            let spawned = thread::Builder::new()
                .name(format!("tether-shard-{i}"))
                .spawn(move || worker.run());
            match spawned {
                Ok(handle) => {
                    shard.set_worker(handle.thread().clone());
                    workers.push(handle);
                    shards.push(shard);
                }
                Err(e) => {
                    for s in &shards {
                        s.stop();
                    }
                    for w in workers {
                        let _ = w.join();
                    }
                    return Err(ConfigError::Spawn(e.to_string()));
                }
            }
        }
        Ok(Engine {
            inner: std::sync::Arc::new(Inner {
                config,
                shards: shards.into_boxed_slice(),
                budget,
                workers: Mutex::new(workers),
                closing: AtomicBool::new(false),
            }),
        })
    }

    /// The settings the engine runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Payload bytes the engine holds (queued and in flight), as last published by the shards.
    pub fn memory_used(&self) -> u64 {
        self.inner.budget.used()
    }

    /// The memory budget, in bytes.
    pub fn memory_budget(&self) -> u64 {
        self.inner.budget.limit()
    }

    fn shard(&self, user: &UserId) -> &Arc<ShardShared> {
        &self.inner.shards[user.shard_of(self.inner.shards.len())]
    }

    fn check_user(&self, user: &UserId) -> Result<(), InvalidInput> {
        let max = self.inner.config.max_user_id_len;
        let len = user.as_str().len();
        if len > max {
            return Err(InvalidInput::UserIdTooLong { len, max });
        }
        Ok(())
    }

    fn check_device(&self, device: &DeviceId) -> Result<(), InvalidInput> {
        let max = self.inner.config.max_device_id_len;
        let len = device.as_str().len();
        if len > max {
            return Err(InvalidInput::DeviceIdTooLong { len, max });
        }
        Ok(())
    }

    fn check_stream_id(&self, stream: &str) -> Result<(), InvalidInput> {
        let max = self.inner.config.max_message_id_len;
        match stream.len() {
            0 => Err(InvalidInput::EmptyStreamId),
            len if len > max => Err(InvalidInput::StreamIdTooLong { len, max }),
            _ => Ok(()),
        }
    }

    /// The engine's clock now (µs): what a front end stamps a request's arrival with.
    pub(crate) fn now_us(&self) -> u64 {
        self.inner.config.clock.now_us()
    }

    fn check(&self, user: &UserId, message: &Message) -> Result<(), InvalidInput> {
        self.check_user(user)?;
        let c = &self.inner.config;
        let len = message.payload().len();
        if len > c.max_payload_bytes {
            return Err(InvalidInput::PayloadTooLarge {
                len,
                max: c.max_payload_bytes,
            });
        }
        if let Some(part) = message.stream_part() {
            self.check_stream_id(part.stream())?;
        }
        if let Some(id) = message.id() {
            let len = id.as_str().len();
            if len == 0 {
                return Err(InvalidInput::EmptyMessageId);
            }
            if len > c.max_message_id_len {
                return Err(InvalidInput::MessageIdTooLong {
                    len,
                    max: c.max_message_id_len,
                });
            }
        }
        Ok(())
    }

    fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// Sends without waiting and without confirmation (fire and forget). The outcome is still
    /// decided and counted by the shard. A full shard inbox is back-pressure:
    /// [`TrySendError::Full`] hands the message back.
    ///
    /// ```
    /// use tether::{Engine, Message, TrySendError, UserId};
    ///
    /// let engine = Engine::builder().shards(1).max_payload_bytes(4).build().unwrap();
    /// let dave = UserId::new("dave").unwrap();
    /// engine.try_send(&dave, Message::new("ok")).unwrap();
    /// match engine.try_send(&dave, Message::new("too long")) {
    ///     Err(TrySendError::Invalid { message, .. }) => assert_eq!(&message.payload()[..], b"too long"),
    ///     _ => unreachable!(),
    /// }
    /// ```
    pub fn try_send(&self, user: &UserId, mut message: Message) -> Result<(), TrySendError> {
        if self.is_closing() {
            return Err(TrySendError::ShuttingDown(message));
        }
        if let Err(error) = self.check(user, &message) {
            return Err(TrySendError::Invalid { error, message });
        }
        // The producer's call: where the latency histograms start (one clock read, about
        // 30 ns: benches/clock.rs; none with the histograms off).
        if self.inner.config.latency_metrics {
            message.stamp_sent(self.now_us());
        }
        let cmd = Command::Send {
            user: user.clone(),
            message,
            reply: None,
        };
        self.shard(user).push(cmd).map_err(|Full(cmd)| {
            TrySendError::Full(cmd.into_message().expect("a Send comes back as a Send"))
        })
    }

    /// [`try_send`](Self::try_send) with the outcome to come: never waits for inbox space (a
    /// full inbox hands the message back as [`TrySendError::Full`], which a front end can turn
    /// into "try later"), and returns a future of the outcome once the shard decided it.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use tether::{Engine, Message, SendOutcome, UserId};
    ///
    /// let engine = Engine::builder().build().unwrap();
    /// let ida = UserId::new("ida").unwrap();
    /// let pending = engine.try_send_confirmed(&ida, Message::new("hi")).unwrap();
    /// assert_eq!(pending.await.unwrap(), SendOutcome::Queued { evicted: 0 });
    /// # });
    /// ```
    pub fn try_send_confirmed(
        &self,
        user: &UserId,
        mut message: Message,
    ) -> Result<PendingOutcome, TrySendError> {
        if self.is_closing() {
            return Err(TrySendError::ShuttingDown(message));
        }
        if let Err(error) = self.check(user, &message) {
            return Err(TrySendError::Invalid { error, message });
        }
        let (tx, rx) = oneshot::channel();
        // The producer's call: where the latency histograms start (one clock read, about
        // 30 ns: benches/clock.rs; none with the histograms off).
        if self.inner.config.latency_metrics {
            message.stamp_sent(self.now_us());
        }
        let cmd = Command::Send {
            user: user.clone(),
            message,
            reply: Some(tx),
        };
        self.shard(user).push(cmd).map_err(|Full(cmd)| {
            TrySendError::Full(cmd.into_message().expect("a Send comes back as a Send"))
        })?;
        Ok(PendingOutcome(rx))
    }

    /// Sends, waiting while the shard's inbox is full, without confirmation.
    pub async fn send(&self, user: &UserId, message: Message) -> Result<(), SendError> {
        self.submit_send(user, message, None).await
    }

    /// Sends and waits for the outcome: delivered, queued (with evictions), duplicate or
    /// rejected with a reason.
    pub async fn send_confirmed(
        &self,
        user: &UserId,
        message: Message,
    ) -> Result<SendOutcome, SendError> {
        let (tx, rx) = oneshot::channel();
        self.submit_send(user, message, Some(tx)).await?;
        rx.await.map_err(|_| SendError::Unconfirmed)
    }

    /// [`send`](Self::send) for threads outside an async runtime: blocks the thread while the
    /// inbox is full. Do not call it from async code.
    pub fn send_blocking(&self, user: &UserId, message: Message) -> Result<(), SendError> {
        block_on(self.send(user, message))
    }

    async fn submit_send(
        &self,
        user: &UserId,
        mut message: Message,
        reply: Option<oneshot::Sender<SendOutcome>>,
    ) -> Result<(), SendError> {
        if self.is_closing() {
            return Err(SendError::ShuttingDown(message));
        }
        if let Err(error) = self.check(user, &message) {
            return Err(SendError::Invalid { error, message });
        }
        // The producer's call: where the latency histograms start (one clock read, about
        // 30 ns: benches/clock.rs; none with the histograms off).
        if self.inner.config.latency_metrics {
            message.stamp_sent(self.now_us());
        }
        let cmd = Command::Send {
            user: user.clone(),
            message,
            reply,
        };
        self.shard(user).push_wait(cmd).await.map_err(|cmd| {
            SendError::ShuttingDown(cmd.into_message().expect("a Send comes back as a Send"))
        })
    }

    /// Connects `user`'s default device ([`DeviceId::default`]), replacing any live session
    /// of that device (which ends with [`EndReason::Replaced`](crate::EndReason::Replaced)).
    /// With a resume point from the same epoch, deliveries the client already received are not
    /// sent again. The same as [`connect_device`](Self::connect_device) with the default
    /// device: a user whose clients never name a device has one mailbox, as without devices.
    pub async fn connect(
        &self,
        user: &UserId,
        resume: Option<ResumePoint>,
    ) -> Result<Session, ConnectError> {
        self.connect_device(user, &DeviceId::default(), resume)
            .await
    }

    /// Connects one of `user`'s devices. Every device of a user has its own mailbox and gets
    /// every message sent to the user from the moment its mailbox exists, with its own seqs,
    /// window, acks, resume point and missed manifest; devices live side by side, and a new
    /// connect of the same device replaces that device's live session
    /// ([`EndReason::Replaced`](crate::EndReason::Replaced)).
    ///
    /// - Messages sent while the user has no mailbox wait in one, which the first device to
    ///   connect takes over. A device that connects for the first time while the user already
    ///   has device mailboxes starts empty: it gets what arrives from then on (copying another
    ///   device's backlog would repeat what that device may already have received or
    ///   acknowledged, and cost a copy of every entry).
    /// - At most [`max_devices_per_user`](crate::EngineBuilder::max_devices_per_user) device
    ///   mailboxes: a new device past it evicts the device that has been away longest (whose
    ///   next connect reports `recovered = false` and
    ///   [`ResetReason::DeviceEvicted`](crate::ResetReason::DeviceEvicted)), or is refused with
    ///   [`ConnectError::TooManyDevices`] if every device is connected.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use tether::{DeviceId, Engine, Message, UserId};
    ///
    /// let engine = Engine::builder().build().unwrap();
    /// let lea = UserId::new("lea").unwrap();
    /// let mut phone = engine.connect_device(&lea, &DeviceId::new("phone").unwrap(), None).await.unwrap();
    /// let mut laptop = engine.connect_device(&lea, &DeviceId::new("laptop").unwrap(), None).await.unwrap();
    /// engine.send(&lea, Message::new("hello")).await.unwrap();
    /// for session in [&mut phone, &mut laptop] {
    ///     let d = session.recv().await.unwrap();
    ///     assert_eq!((d.seq(), &d.payload()[..]), (1, &b"hello"[..]));
    /// }
    /// assert_eq!(laptop.device().as_str(), "laptop");
    /// # });
    /// ```
    pub async fn connect_device(
        &self,
        user: &UserId,
        device: &DeviceId,
        resume: Option<ResumePoint>,
    ) -> Result<Session, ConnectError> {
        if self.is_closing() {
            return Err(ConnectError::ShuttingDown);
        }
        self.check_user(user)?;
        self.check_device(device)?;
        let shard = self.shard(user).clone();
        let (outbox_tx, outbox_rx) = outbox::channel(self.inner.config.window);
        let breaker = Breaker::new(&self.inner.config.breaker);
        let shared = Arc::new(SessionShared::new(
            user.clone(),
            device.clone(),
            breaker.cell().clone(),
        ));
        let (reply_tx, reply_rx) = oneshot::channel();
        let mut session = Session::new(
            user.clone(),
            outbox_rx,
            shared.clone(),
            shard.clone(),
            breaker,
            self.inner.config.clock.clone(),
        );
        let cmd = Command::Connect(Box::new(ConnectRequest {
            user: user.clone(),
            resume,
            outbox: outbox_tx,
            shared,
            reply: reply_tx,
        }));
        shard
            .push_wait(cmd)
            .await
            .map_err(|_| ConnectError::ShuttingDown)?;
        // From here a dropped future (or session) tells the worker to detach it.
        session.mark_submitted();
        match reply_rx.await {
            Ok(Ok(info)) => {
                session.set_info(info, resume);
                Ok(session)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectError::ShuttingDown),
        }
    }

    /// Returns once every send, connect, ack and close issued (on this thread, or seen to
    /// complete by it) before the call has taken effect in its shard, every timer due by the
    /// engine's clock at that moment has fired, and sessions have been woken for what was
    /// delivered. Useful in tests and before reading
    /// [`memory_used`](Self::memory_used).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use tether::{Engine, Message, UserId};
    /// let engine = Engine::builder().shards(2).build().unwrap();
    /// let erin = UserId::new("erin").unwrap();
    /// engine.try_send(&erin, Message::new("12345")).unwrap();
    /// engine.barrier().await;
    /// assert_eq!(engine.memory_used(), 5);
    /// # });
    /// ```
    pub async fn barrier(&self) {
        let mut replies = Vec::with_capacity(self.inner.shards.len());
        for shard in self.inner.shards.iter() {
            let (tx, rx) = oneshot::channel();
            if shard.push_wait(Command::Barrier(tx)).await.is_ok() {
                replies.push(rx);
            }
        }
        for rx in replies {
            let _ = rx.await;
        }
    }

    /// The engine's metrics now: counters summed over shards as each last published them
    /// (once per worker pass), gauges, latency histograms. Cheap: no shard is interrupted.
    /// After [`barrier`](Self::barrier) it includes everything issued before.
    pub fn metrics(&self) -> MetricsSnapshot {
        let mut snapshot = MetricsSnapshot {
            memory_budget_bytes: self.inner.budget.limit(),
            ..MetricsSnapshot::default()
        };
        for shard in self.inner.shards.iter() {
            shard.metrics.add_to(&mut snapshot);
        }
        snapshot
    }

    /// Shuts the engine down gracefully: stops accepting sends (they get `ShuttingDown` with
    /// the message back), flushes pending messages to live sessions for at most
    /// `options.flush`, ends sessions if asked, stops every worker and timer, and reports
    /// what happened to every pending message. A second call reports nothing more.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use tether::{Engine, Message, ShutdownOptions, SendError, UserId};
    ///
    /// let engine = Engine::builder().shards(2).build().unwrap();
    /// let away = UserId::new("away").unwrap();
    /// engine.send(&away, Message::new("kept")).await.unwrap();
    /// let report = engine.shutdown(ShutdownOptions::default()).await;
    /// assert_eq!((report.kept, report.workers_stopped), (1, 2));
    /// assert!(matches!(
    ///     engine.send(&away, Message::new("late")).await,
    ///     Err(SendError::ShuttingDown(_))
    /// ));
    /// # });
    /// ```
    pub async fn shutdown(&self, options: ShutdownOptions) -> ShutdownReport {
        let started = std::time::Instant::now();
        self.inner.closing.store(true, Ordering::Release);
        let mut replies = Vec::with_capacity(self.inner.shards.len());
        for shard in self.inner.shards.iter() {
            let (tx, rx) = oneshot::channel();
            let cmd = Command::Shutdown { options, reply: tx };
            if shard.push_wait(cmd).await.is_ok() {
                replies.push(rx);
            }
        }
        let mut report = ShutdownReport::default();
        for rx in replies {
            if let Ok(shard) = rx.await {
                report.add(&shard);
            }
        }
        report.duration = started.elapsed();
        report
    }

    /// A snapshot of `user`'s mailbox: the default device's, or, if the user has no default
    /// device, its only mailbox (also the one that waits for a first device); `None` if the
    /// user has none, or only several named devices (see [`devices`](Self::devices)).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use tether::{Engine, Message, Priority, UserId};
    /// let engine = Engine::builder().build().unwrap();
    /// let fay = UserId::new("fay").unwrap();
    /// engine.send(&fay, Message::new("hi").with_priority(Priority::High)).await.unwrap();
    /// let stats = engine.mailbox_stats(&fay).await.unwrap();
    /// assert_eq!(stats.queued_per_band, [0, 1, 0, 0]);
    /// assert!(!stats.connected);
    /// # });
    /// ```
    pub async fn mailbox_stats(&self, user: &UserId) -> Option<MailboxStats> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Inspect {
            user: user.clone(),
            reply: tx,
        };
        self.shard(user).push_wait(cmd).await.ok()?;
        rx.await.ok().flatten()
    }

    /// A snapshot of each of `user`'s mailboxes, in the order they were made: one per device
    /// (connected or away since when, queued per band, in flight, its own counters), or the
    /// one waiting for the user's first device. Empty if the user has none.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use tether::{DeviceId, Engine, Message, UserId};
    ///
    /// let engine = Engine::builder().build().unwrap();
    /// let max = UserId::new("max").unwrap();
    /// let _tv = engine.connect_device(&max, &DeviceId::new("tv").unwrap(), None).await.unwrap();
    /// let watch = engine.connect_device(&max, &DeviceId::new("watch").unwrap(), None).await.unwrap();
    /// drop(watch);
    /// engine.send(&max, Message::new("goal!")).await.unwrap();
    ///
    /// let devices = engine.devices(&max).await;
    /// let shown: Vec<_> = devices
    ///     .iter()
    ///     .map(|d| (d.device.as_ref().unwrap().as_str(), d.connected, d.in_flight, d.queued()))
    ///     .collect();
    /// assert_eq!(shown, [("tv", true, 1, 0), ("watch", false, 0, 1)]);
    /// # });
    /// ```
    pub async fn devices(&self, user: &UserId) -> Vec<MailboxStats> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Devices {
            user: user.clone(),
            reply: tx,
        };
        if self.shard(user).push_wait(cmd).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The users with the deepest backlogs: at most `k` of them, as (user, messages queued,
    /// payload bytes queued), most messages first (then most bytes, then by id; which of
    /// several users tied at the cut make it is unspecified). Only messages waiting in the
    /// bands count, not those in flight; users with nothing queued are left out. A user with
    /// several devices counts with its deepest device mailbox (they hold copies of the same
    /// messages). For dashboards and diagnosis.
    ///
    /// Each shard answers by scanning its mailboxes once with a heap of at most `k`
    /// entries, O(users x log k) on the shard's own thread, which delays the shard's other
    /// work by that scan (a few milliseconds per 100,000 users): call it every few seconds
    /// and cache the answer, not per request. Empty while shutting down.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use tether::{Engine, Message, UserId};
    ///
    /// let engine = Engine::builder().shards(2).build().unwrap();
    /// for (name, backlog) in [("ann", 3), ("ben", 1), ("cy", 2)] {
    ///     let user = UserId::new(name).unwrap();
    ///     for i in 0..backlog {
    ///         engine.send(&user, Message::new(format!("#{i}"))).await.unwrap();
    ///     }
    /// }
    /// let top = engine.deepest_mailboxes(2).await;
    /// let shown: Vec<_> = top.iter().map(|(u, n, bytes)| (u.as_str(), *n, *bytes)).collect();
    /// assert_eq!(shown, [("ann", 3, 6), ("cy", 2, 4)]);
    /// # });
    /// ```
    pub async fn deepest_mailboxes(&self, k: usize) -> Vec<(UserId, usize, usize)> {
        if k == 0 {
            return Vec::new();
        }
        let mut replies = Vec::with_capacity(self.inner.shards.len());
        for shard in self.inner.shards.iter() {
            let (tx, rx) = oneshot::channel();
            if shard
                .push_wait(Command::Deepest { k, reply: tx })
                .await
                .is_ok()
            {
                replies.push(rx);
            }
        }
        let mut all = Vec::new();
        for rx in replies {
            if let Ok(top) = rx.await {
                all.extend(top);
            }
        }
        all.sort_unstable_by(|a, b| {
            (b.1, b.2)
                .cmp(&(a.1, a.2))
                .then_with(|| a.0.as_str().cmp(b.0.as_str()))
        });
        all.truncate(k);
        all
    }

    /// Aborts stream `stream` of `user` on the producer's behalf (on every device): its parts
    /// not yet delivered are dropped, and the user receives an abort marker carrying
    /// [`AbortReason::Producer`](crate::AbortReason::Producer) with `reason`, after the parts already delivered. Returns
    /// whether the stream was open. A stream the engine has not seen yet is remembered as
    /// aborted (while the user has a mailbox), so parts that arrive after the abort are
    /// refused with [`RejectReason::StreamClosed`](crate::RejectReason::StreamClosed).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use tether::{AbortReason, Engine, Message, StreamPart, UserId};
    ///
    /// let engine = Engine::builder().build().unwrap();
    /// let bo = UserId::new("bo").unwrap();
    /// let mut session = engine.connect(&bo, None).await.unwrap();
    /// let part = StreamPart::new("answer", 0, false);
    /// engine.send(&bo, Message::new("The answer is").with_stream_part(part)).await.unwrap();
    /// assert!(engine.abort_stream(&bo, "answer", "model overloaded").await.unwrap());
    ///
    /// assert_eq!(&session.recv().await.unwrap().payload()[..], b"The answer is");
    /// let marker = session.recv().await.unwrap();
    /// let reason = marker.stream_part().unwrap().abort_reason().unwrap();
    /// assert_eq!(reason, &AbortReason::Producer("model overloaded".into()));
    /// # });
    /// ```
    pub async fn abort_stream(
        &self,
        user: &UserId,
        stream: &str,
        reason: &str,
    ) -> Result<bool, AbortStreamError> {
        if self.is_closing() {
            return Err(AbortStreamError::ShuttingDown);
        }
        self.check_user(user)?;
        self.check_stream_id(stream)?;
        let (tx, rx) = oneshot::channel();
        let cmd = Command::AbortStream {
            user: user.clone(),
            stream: std::sync::Arc::from(stream),
            reason: std::sync::Arc::from(reason),
            reply: tx,
        };
        self.shard(user)
            .push_wait(cmd)
            .await
            .map_err(|_| AbortStreamError::ShuttingDown)?;
        rx.await.map_err(|_| AbortStreamError::ShuttingDown)
    }

    /// What the engine knows of stream `stream` of `user`: which parts arrived, which are
    /// held back or missing, how many were delivered and acknowledged, or how it ended. Each
    /// device mailbox runs its own copy of a stream: this is the first one, in the order the
    /// mailboxes were made, that knows it.
    /// `None` if the stream is unknown (never seen, finished longer ago than the stream
    /// timeout, or its mailbox is gone) or the engine is shutting down. See [`StreamStatus`].
    pub async fn stream_status(&self, user: &UserId, stream: &str) -> Option<StreamStatus> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::StreamStatus {
            user: user.clone(),
            stream: Box::from(stream),
            reply: tx,
        };
        self.shard(user).push_wait(cmd).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Overrides the mailbox caps for one user (`None` restores the engine default), on each
    /// of its device mailboxes. It applies to messages sent after it and lasts until changed, whether or not the user has
    /// a mailbox (it survives mailbox expiry). Overrides count against `max_users`.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use tether::{Engine, Message, RejectReason, SendOutcome, UserId, UserLimits, OverflowPolicy};
    ///
    /// let engine = Engine::builder().build().unwrap();
    /// let gil = UserId::new("gil").unwrap();
    /// let one = UserLimits { max_messages: 1, max_bytes: 1024, overflow: OverflowPolicy::Reject };
    /// engine.set_user_limits(&gil, Some(one)).await.unwrap();
    /// engine.send(&gil, Message::new("a")).await.unwrap();
    /// let second = engine.send_confirmed(&gil, Message::new("b")).await.unwrap();
    /// assert_eq!(second, SendOutcome::Rejected(RejectReason::MailboxFull));
    /// # });
    /// ```
    pub async fn set_user_limits(
        &self,
        user: &UserId,
        limits: Option<UserLimits>,
    ) -> Result<(), SetLimitsError> {
        if self.is_closing() {
            return Err(SetLimitsError::ShuttingDown);
        }
        self.check_user(user)?;
        if let Some(l) = limits {
            for (setting, v) in [("max_messages", l.max_messages), ("max_bytes", l.max_bytes)] {
                if v == 0 {
                    return Err(InvalidInput::ZeroLimit { setting }.into());
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let cmd = Command::SetLimits {
            user: user.clone(),
            limits,
            reply: tx,
        };
        self.shard(user)
            .push_wait(cmd)
            .await
            .map_err(|_| SetLimitsError::ShuttingDown)?;
        rx.await.map_err(|_| SetLimitsError::ShuttingDown)?
    }
}

/// The outcome of a send accepted by [`Engine::try_send_confirmed`], once its shard decided
/// it. Fails with [`SendError::Unconfirmed`] only if the shard stopped without deciding.
#[derive(Debug)]
pub struct PendingOutcome(oneshot::Receiver<SendOutcome>);

impl Future for PendingOutcome {
    type Output = Result<SendOutcome, SendError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map_err(|_| SendError::Unconfirmed))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        for shard in self.shards.iter() {
            shard.stop();
        }
        let workers = std::mem::take(self.workers.get_mut().unwrap_or_else(|e| e.into_inner()));
        for w in workers {
            let _ = w.join();
        }
    }
}

/// Runs a future to completion on the current thread, parking between polls.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};

    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }

    let waker = Waker::from(std::sync::Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::ConnectError;
    use crate::{EndReason, Message, SendError, UserId};

    /// A shard whose worker panics answers every later call with an error instead of leaving
    /// callers waiting, and ends the sessions it held.
    #[test]
    fn a_crashed_shard_refuses_instead_of_hanging() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let engine = Engine::builder().shards(1).build().unwrap();
            let u = UserId::new("u").unwrap();
            let mut s = engine.connect(&u, None).await.unwrap();
            let crash = engine.inner.shards[0].push(Command::Panic);
            assert!(crash.is_ok());
            let guard = Duration::from_secs(30);
            let send = engine.send_confirmed(&u, Message::new("x"));
            let sent = tokio::time::timeout(guard, send).await.expect("no hang");
            assert!(matches!(sent, Err(SendError::Unconfirmed)), "{sent:?}");
            let connect = tokio::time::timeout(guard, engine.connect(&u, None)).await;
            assert_eq!(
                connect.expect("no hang").unwrap_err(),
                ConnectError::ShuttingDown
            );
            assert_eq!(
                tokio::time::timeout(guard, s.recv())
                    .await
                    .expect("no hang")
                    .map(|d| d.seq()),
                None
            );
            assert_eq!(s.end_reason(), Some(EndReason::Shutdown));
        });
    }

    /// `deepest_mailboxes` ranks users by messages waiting in their bands across shards,
    /// leaves out in-flight messages and empty backlogs, and returns at most `k`.
    #[test]
    fn deepest_mailboxes_rank_backlogs_across_shards() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let engine = Engine::builder().shards(3).window(2).build().unwrap();
            let user = |name: &str| UserId::new(name).unwrap();
            // 40 users with backlogs 1..=40, one byte each message except the ties below.
            for n in 1..=40usize {
                let u = user(&format!("u{n:02}"));
                for _ in 0..n {
                    engine.send(&u, Message::new("x")).await.unwrap();
                }
            }
            // A tie on messages is broken by bytes.
            let heavy = user("heavy");
            for _ in 0..40 {
                engine.send(&heavy, Message::new("xyz")).await.unwrap();
            }
            // A connected reader with a window of 2 holds 2 in flight: only the rest counts.
            let reader = user("reader");
            for _ in 0..45 {
                engine.send(&reader, Message::new("x")).await.unwrap();
            }
            let _session = engine.connect(&reader, None).await.unwrap();
            // A user with nothing queued is left out.
            let _idle = engine.connect(&user("idle"), None).await.unwrap();
            engine.barrier().await;

            let top = engine.deepest_mailboxes(4).await;
            let shown: Vec<_> = top.iter().map(|(u, n, b)| (u.as_str(), *n, *b)).collect();
            assert_eq!(
                shown,
                [
                    ("reader", 43, 43),
                    ("heavy", 40, 120),
                    ("u40", 40, 40),
                    ("u39", 39, 39)
                ]
            );
            let stats = engine.mailbox_stats(&reader).await.unwrap();
            assert_eq!((stats.queued(), stats.queued_bytes), (43, 43));

            let all = engine.deepest_mailboxes(usize::MAX).await;
            assert_eq!(all.len(), 42, "every non-empty backlog, no more");
            assert!(all.windows(2).all(|w| (w[0].1, w[0].2) >= (w[1].1, w[1].2)));
            assert!(engine.deepest_mailboxes(0).await.is_empty());
        });
    }
}
