//! A shard: one worker thread that alone owns the mailboxes of the users hashed to it, fed by a
//! lock-free inbox (commands from any thread) and a signal list (acks and closes from
//! sessions).
//!
//! Every rule of the engine (priority order, overflow, seq and acks, the window) is plain
//! sequential code on data this thread owns; the only shared structures are the inbox, the
//! signal list, the session outboxes and the park handshake, all in `ring/` and `park.rs` and
//! model-checked with loom. The worker drains work in batches, reads the clock once per pass,
//! wakes each session once per pass, and parks when there is nothing to do.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use tokio::sync::{oneshot, Notify};

use crate::budget::BudgetView;
use crate::config::{Config, UserLimits};
use crate::error::ConnectError;
use crate::loom::{fence, thread::Thread, Arc, AtomicBool, AtomicUsize, Ordering};
use crate::mailbox::{Live, Loss, Mailbox, MailboxStats, WakeList};
use crate::message::{Delivery, Message, Prehashed, RejectReason, SendOutcome, UserId};
use crate::park::Parker;
use crate::ring::mpsc;
use crate::ring::outbox::OutboxSender;
use crate::ring::signal::SignalList;
use crate::ring::Full;
use crate::session::{ConnectInfo, Epoch, ResumePoint, SessionShared, END_SHUTDOWN};

/// Commands a worker takes from its inbox before it looks at signals again.
const BATCH: usize = 256;

/// The longest a worker sleeps without a wake-up; a safety net, not a timer.
const IDLE_PARK: Duration = Duration::from_secs(1);

pub(crate) enum Command {
    Send {
        user: UserId,
        message: Message,
        reply: Option<oneshot::Sender<SendOutcome>>,
    },
    Connect(Box<ConnectRequest>),
    SetLimits {
        user: UserId,
        limits: Option<UserLimits>,
    },
    /// Replies once every command and signal issued before it has taken effect.
    Barrier(oneshot::Sender<()>),
    Inspect {
        user: UserId,
        reply: oneshot::Sender<Option<MailboxStats>>,
    },
}

impl Command {
    /// The message of a `Send`, for handing back to a caller whose send failed.
    pub(crate) fn into_message(self) -> Option<Message> {
        match self {
            Command::Send { message, .. } => Some(message),
            _ => None,
        }
    }
}

pub(crate) struct ConnectRequest {
    pub(crate) user: UserId,
    pub(crate) resume: Option<ResumePoint>,
    pub(crate) outbox: OutboxSender<Delivery>,
    pub(crate) shared: Arc<SessionShared>,
    pub(crate) reply: oneshot::Sender<Result<ConnectInfo, ConnectError>>,
}

/// The part of a shard that producers, sessions and the worker share.
pub(crate) struct ShardShared {
    inbox: mpsc::Sender<Command>,
    signals: SignalList<SessionShared>,
    parker: Parker,
    worker: OnceLock<Thread>,
    stop: AtomicBool,
    /// Async senders waiting for inbox space park here.
    space: Notify,
    space_waiters: CachePadded<AtomicUsize>,
}

impl ShardShared {
    pub(crate) fn new(inbox: mpsc::Sender<Command>) -> Self {
        Self {
            inbox,
            signals: SignalList::new(),
            parker: Parker::new(),
            worker: OnceLock::new(),
            stop: AtomicBool::new(false),
            space: Notify::new(),
            space_waiters: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn set_worker(&self, thread: Thread) {
        let _ = self.worker.set(thread);
    }

    /// Hands a command to the worker, or gives it back if the inbox is full.
    pub(crate) fn push(&self, cmd: Command) -> Result<(), Full<Command>> {
        self.inbox.push(cmd)?;
        self.wake_worker();
        Ok(())
    }

    /// Hands a command to the worker, waiting for inbox space; gives it back if the shard
    /// stops meanwhile.
    pub(crate) async fn push_wait(&self, mut cmd: Command) -> Result<(), Command> {
        loop {
            match self.push(cmd) {
                Ok(()) => return Ok(()),
                Err(Full(c)) => cmd = c,
            }
            if self.stop.load(Ordering::Acquire) {
                return Err(cmd);
            }
            let notified = self.space.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let _waiting = SpaceWaiter::enter(&self.space_waiters);
            // SeqCst: the waiter count is visible to a worker that frees a slot after our
            // retry below fails (its fence in `space_freed` pairs with this one).
            fence(Ordering::SeqCst);
            match self.push(cmd) {
                Ok(()) => return Ok(()),
                Err(Full(c)) => cmd = c,
            }
            if self.stop.load(Ordering::Acquire) {
                return Err(cmd);
            }
            notified.await;
        }
    }

    /// Tells the worker that `node` has a new ack watermark or close request.
    pub(crate) fn signal(&self, node: &Arc<SessionShared>) {
        if self.signals.push(node) {
            self.wake_worker();
        }
    }

    fn wake_worker(&self) {
        if let Some(thread) = self.worker.get() {
            self.parker.wake(thread);
        }
    }

    /// Asks the worker to finish and wakes everyone waiting on it.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.worker.get() {
            thread.unpark();
        }
        self.space.notify_waiters();
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Worker side: slots were freed; wake async senders if any wait.
    fn space_freed(&self) {
        // SeqCst: pairs with the fence in `push_wait` (Dekker: free slot / read waiters
        // against register waiter / retry push).
        fence(Ordering::SeqCst);
        if self.space_waiters.load(Ordering::Relaxed) > 0 {
            self.space.notify_waiters();
        }
    }
}

/// Counts an async sender waiting for space for as long as it waits (also when its future is
/// dropped mid-wait).
struct SpaceWaiter<'a>(&'a AtomicUsize);

impl<'a> SpaceWaiter<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for SpaceWaiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The worker: the single writer of its shard's mailboxes.
pub(crate) struct Worker {
    shard: Arc<ShardShared>,
    inbox: mpsc::Receiver<Command>,
    config: Arc<Config>,
    mailboxes: Mailboxes,
    budget: BudgetView,
    wake: WakeList,
}

/// The shard's mailboxes by user, created on first use up to a maximum.
struct Mailboxes {
    map: HashMap<UserId, Mailbox, Prehashed>,
    max: usize,
    rng: u64,
}

impl Mailboxes {
    fn get_mut(&mut self, user: &UserId) -> Option<&mut Mailbox> {
        self.map.get_mut(user)
    }

    fn contains(&self, user: &UserId) -> bool {
        self.map.contains_key(user)
    }

    /// The user's mailbox, created with a fresh epoch unless the shard holds its maximum.
    fn get_or_create(&mut self, user: &UserId) -> Option<&mut Mailbox> {
        if !self.map.contains_key(user) {
            if self.map.len() >= self.max {
                return None;
            }
            let epoch = Epoch(self.next_random());
            self.map.insert(user.clone(), Mailbox::new(epoch));
        }
        self.map.get_mut(user)
    }

    /// splitmix64: epochs need to differ between mailbox lives, not be secret.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Worker {
    pub(crate) fn new(
        shard: Arc<ShardShared>,
        inbox: mpsc::Receiver<Command>,
        config: Arc<Config>,
        budget: BudgetView,
        seed: u64,
    ) -> Self {
        let mailboxes = Mailboxes {
            map: HashMap::default(),
            max: config.max_users.div_ceil(config.shards),
            rng: seed,
        };
        Self {
            shard,
            inbox,
            config,
            mailboxes,
            budget,
            wake: WakeList::new(),
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            let did = self.pass();
            if did == 0 {
                if self.shard.is_stopping() {
                    break;
                }
                let (inbox, shard) = (&self.inbox, &self.shard);
                shard.parker.park_unless(IDLE_PARK, || {
                    !inbox.is_empty() || !shard.signals.is_empty() || shard.is_stopping()
                });
            }
        }
        self.finish();
    }

    /// One pass: a batch of commands, then every pending signal, then wake-ups. Returns how
    /// much work it did.
    fn pass(&mut self) -> usize {
        self.budget.refresh();
        let mut did = 0;
        while did < BATCH {
            let Some(cmd) = self.inbox.pop() else { break };
            self.handle(cmd);
            did += 1;
        }
        if did > 0 {
            self.shard.space_freed();
        }
        did += self.drain_signals();
        self.wake.flush();
        self.budget.publish();
        did
    }

    fn drain_signals(&mut self) -> usize {
        let mut n = 0;
        for node in self.shard.signals.take_all() {
            self.on_signal(&node);
            n += 1;
        }
        n
    }

    /// Processes what is left in the inbox and ends every session.
    fn finish(&mut self) {
        while self.pass() > 0 {}
        for mailbox in self.mailboxes.map.values_mut() {
            mailbox.end_session(END_SHUTDOWN);
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Send {
                user,
                message,
                reply,
            } => {
                let outcome = self.accept(user, message);
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            Command::Connect(req) => self.connect(*req),
            Command::SetLimits { user, limits } => {
                if let Some(mailbox) = self.mailboxes.get_or_create(&user) {
                    mailbox.set_limits(limits);
                }
            }
            Command::Barrier(reply) => {
                // Signals pushed before this command was pushed are in the list now.
                self.drain_signals();
                self.wake.flush();
                self.budget.publish();
                let _ = reply.send(());
            }
            Command::Inspect { user, reply } => {
                let _ = reply.send(self.mailboxes.get_mut(&user).map(|m| m.stats()));
            }
        }
    }

    fn accept(&mut self, user: UserId, message: Message) -> SendOutcome {
        let ids = self.config.missed_ids;
        if !self.budget.admits(message.priority(), message.cost()) {
            // Recorded on an existing mailbox only: under memory pressure, creating mailboxes
            // to note losses would make it worse.
            if let Some(mailbox) = self.mailboxes.get_mut(&user) {
                mailbox.record_loss(Loss::Shed, message.id(), ids);
            }
            return SendOutcome::Rejected(RejectReason::MemoryBudget);
        }
        let (window, defaults) = (self.config.window, self.config.user_limits);
        let Some(mailbox) = self.mailboxes.get_or_create(&user) else {
            return SendOutcome::Rejected(RejectReason::TooManyUsers);
        };
        let before = mailbox.held_bytes();
        let outcome = mailbox.accept(message, window, &defaults, ids, &mut self.wake);
        let after = mailbox.held_bytes();
        self.budget.adjust(before, after);
        outcome
    }

    fn connect(&mut self, req: ConnectRequest) {
        if req.shared.close_requested().is_some() {
            // The connecting caller gave up before we got here.
            return;
        }
        let existed = self.mailboxes.contains(&req.user);
        let window = self.config.window;
        let Some(mailbox) = self.mailboxes.get_or_create(&req.user) else {
            let _ = req.reply.send(Err(ConnectError::TooManyUsers));
            return;
        };
        let before = mailbox.held_bytes();
        let live = Live::new(req.outbox, req.shared);
        let info = mailbox.attach(live, req.resume, existed, window, &mut self.wake);
        let after = mailbox.held_bytes();
        self.budget.adjust(before, after);
        let _ = req.reply.send(Ok(info));
    }

    fn on_signal(&mut self, node: &Arc<SessionShared>) {
        let window = self.config.window;
        let Some(mailbox) = self.mailboxes.get_mut(&node.user) else {
            return;
        };
        if !mailbox.is_attached(node) {
            return; // a replaced session's late ack or close
        }
        let before = mailbox.held_bytes();
        mailbox.settle(node.acked());
        if let Some(reason) = node.close_requested() {
            mailbox.detach(reason);
        } else {
            mailbox.fill_window(window, &mut self.wake);
        }
        let after = mailbox.held_bytes();
        self.budget.adjust(before, after);
    }
}
