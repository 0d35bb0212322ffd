//! `RedisStore`: one async method per mailbox operation, each one script call (one round
//! trip), checking its input before anything goes to Redis.

use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ScriptInvocation, Value};

use super::config::ms;
use super::conn::Conn;
use super::keys::{fingerprint, limits_key, route_key};
use super::outcome::{
    Acked, Attached, DeviceOutcome, DeviceStats, Enqueued, Filled, SessionRef, Target,
};
use super::reply::Reply;
use super::scripts::Scripts;
use super::{StoreConfig, StoreError};
use crate::config::{OverflowPolicy, UserLimits};
use crate::message::{InvalidInput, Message, UserId};
use crate::outcome::{RejectReason, SendOutcome};
use crate::session::{CloseReason, ConnectInfo, Epoch, MissedManifest, ResetReason, ResumePoint};

/// Mailboxes in Redis: every operation that changes one is one atomic Lua script on the
/// user's Cluster slot. Cheap to clone; clones share one multiplexed connection, which
/// reconnects by itself.
///
/// The module documentation ([`crate::cluster`]) describes the data model and what each
/// operation guarantees.
#[derive(Clone)]
pub struct RedisStore {
    pub(super) conn: Conn,
    pub(super) scripts: Arc<Scripts>,
    pub(super) config: Arc<StoreConfig>,
}

impl RedisStore {
    /// Connects to one Redis (`redis://host:port`, `redis://:password@host:port/db`), loads
    /// the scripts, and returns the store. The connection reconnects with backoff when it
    /// drops; requests made meanwhile fail as [unavailable](StoreError::is_unavailable).
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let client = redis::Client::open(url)?;
        let manager = ConnectionManager::new_with_config(
            client,
            // redis-rs's backoff waits at least a second between attempts and its default
            // factor makes that minutes: a few quick attempts instead, then the caller sees
            // the outage (each later request tries to reconnect again).
            ConnectionManagerConfig::new()
                .set_number_of_retries(2)
                .set_factor(2)
                .set_max_delay(1000)
                .set_connection_timeout(config.connect_timeout)
                .set_response_timeout(config.response_timeout),
        )
        .await?;
        Self::start(Conn::single(manager), config).await
    }

    /// Connects to a Redis Cluster through any of its nodes (`redis://host:port` each),
    /// loads the scripts on every master, and returns the store.
    pub async fn connect_cluster(seeds: &[&str], config: StoreConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let client = redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.response_timeout)
            .build()?;
        let conn = client.get_async_connection().await?;
        Self::start(Conn::cluster(conn), config).await
    }

    async fn start(conn: Conn, config: StoreConfig) -> Result<Self, StoreError> {
        let store = Self {
            conn,
            scripts: Arc::new(Scripts::new()),
            config: Arc::new(config),
        };
        store.load_scripts().await?;
        Ok(store)
    }

    /// Loads every script (on every master of a Cluster), so that calls by SHA find them.
    pub(super) async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for script in self.scripts.all() {
            script.load_async(&mut conn).await?;
        }
        Ok(())
    }

    /// The settings this store runs with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Requests sent to Redis so far by this store and its clones: a script call, a command
    /// or a whole pipeline counts one (a NOSCRIPT reload counts its load and the retry).
    pub fn round_trips(&self) -> u64 {
        self.conn.round_trips()
    }

    /// Offers `message` to every device mailbox of `user` (or, with no device yet, to the
    /// one mailbox that waits for the first), deduplicated once for the user. Each mailbox
    /// admits it under its own caps and overflow policy; the answer names the owner node of
    /// each attached device, to wake it. Seqs are assigned later, by the owner's fill.
    ///
    /// Not safe to repeat after an error whose effect is unknown (a dropped connection)
    /// unless the message has an id and dedup is on: then a repeat is answered `Duplicate`.
    pub async fn enqueue(&self, user: &UserId, message: &Message) -> Result<Enqueued, StoreError> {
        self.check_user(user)?;
        self.check_message(message)?;
        let c = &*self.config;
        let priority = message.priority();
        let ttl = message
            .ttl()
            .or(c.default_ttl[priority.index()])
            // A TTL under a millisecond expires at once, as in the engine, not never.
            .map_or(0, |t| ms(t).max(1));
        let fp = fingerprint(c.dedup, message);
        let limits = c.user_limits;
        let mut inv = self.scripts.enqueue.key(route_key(user));
        inv.arg(c.missed_ids)
            .arg(priority.index())
            .arg(ttl)
            .arg(message.id().map_or("", |id| id.as_str()))
            .arg(&message.payload()[..])
            .arg(fp.as_ref().map_or(&[][..], |f| &f[..]))
            .arg(ms(c.dedup_window))
            .arg(c.dedup_max_per_user)
            .arg(limits.max_messages)
            .arg(limits.max_bytes)
            .arg(policy_code(limits.overflow))
            .arg(ms(c.keep_after_normal))
            .arg(new_epoch());
        let mut r = self.call(&inv).await?;
        if r.int()? == 1 {
            return Ok(Enqueued::Duplicate);
        }
        let n = r.u64()?;
        let mut outcomes = Vec::new();
        for _ in 0..n {
            let target = match r.target()? {
                Some(device) => Target::Device(device),
                None => Target::Pending,
            };
            let outcome = match r.int()? {
                0 => SendOutcome::Queued {
                    evicted: u32::try_from(r.u64()?).unwrap_or(u32::MAX),
                },
                code => {
                    r.int()?;
                    SendOutcome::Rejected(match code {
                        1 => RejectReason::MailboxFull,
                        2 => RejectReason::Dropped,
                        3 => RejectReason::LargerThanMailbox,
                        _ => return Err(StoreError::Reply("an unknown enqueue outcome")),
                    })
                }
            };
            outcomes.push(DeviceOutcome {
                target,
                outcome,
                owner: r.name()?,
                ready: r.flag()?,
            });
        }
        Ok(Enqueued::Accepted(outcomes))
    }

    /// Attaches a session of `device` (`""`: the default device) of `user` on `node`: a new
    /// generation (fencing every older session of the device, wherever it is), the device's
    /// keys kept for good while attached. With a resume point of the mailbox's epoch,
    /// everything up to its seq counts as acknowledged and `recovered` is true. Everything
    /// still in flight is redelivered with its seq, then up to `fill` queued messages (at
    /// most the window's room) are delivered, most urgent first. The missed manifest is
    /// handed over and reset.
    ///
    /// A device attaching for the first time creates its mailbox (taking over the one that
    /// waited for the user's first device, if any); at `max_devices_per_user` it evicts the
    /// device away longest, or fails with [`StoreError::TooManyDevices`] if all are attached.
    pub async fn attach(
        &self,
        user: &UserId,
        device: &str,
        node: &str,
        resume: Option<ResumePoint>,
        fill: usize,
    ) -> Result<Attached, StoreError> {
        self.check_user(user)?;
        self.check_device(device)?;
        if node.is_empty() {
            return Err(StoreError::EmptyNodeId);
        }
        let c = &*self.config;
        let mut inv = self.scripts.attach.key(route_key(user));
        inv.arg(c.missed_ids)
            .arg(device)
            .arg(node)
            .arg(resume.map_or(String::new(), |r| r.epoch.to_string()))
            .arg(resume.map_or(0, |r| r.last_seq))
            .arg(new_epoch())
            .arg(c.window)
            .arg(fill)
            .arg(c.max_devices_per_user);
        let mut r = self.call(&inv).await?;
        if r.int()? == 3 {
            return Err(StoreError::TooManyDevices {
                max: c.max_devices_per_user,
            });
        }
        let epoch: Epoch = r
            .string()?
            .parse()
            .map_err(|_| StoreError::Reply("an epoch that is not hex"))?;
        let generation = r.u64()?;
        let recovered = r.flag()?;
        let replaced = r.name()?;
        let device_evicted = r.flag()?;
        let next_seq = r.u64()?;
        let pending = r.u64()?;
        let mut counts = [0; 5];
        for c in &mut counts {
            *c = r.u64()?;
        }
        let n_ids = r.u64()?;
        let mut ids = Vec::new();
        for _ in 0..n_ids {
            ids.push(r.string()?.into());
        }
        let redelivered = r.deliveries()?;
        let delivered = r.deliveries()?;
        let [evicted, rejected, shed, expired, deduplicated] = counts;
        let missed = MissedManifest {
            evicted,
            rejected,
            shed,
            expired,
            deduplicated,
            ids,
            reset: device_evicted.then_some(ResetReason::DeviceEvicted),
        };
        Ok(Attached {
            session: SessionRef {
                user: user.clone(),
                device: device.to_owned(),
                generation,
            },
            info: ConnectInfo {
                epoch,
                recovered,
                redelivered: redelivered.len(),
                pending: usize::try_from(pending).unwrap_or(usize::MAX),
                missed,
            },
            replaced,
            redelivered,
            delivered,
            next_seq,
        })
    }

    /// Settles `ack` (cumulative; 0: none), then delivers up to `max` messages into the
    /// session's window: first any already in flight from `next_seq` on (the answer to an
    /// earlier fill that was lost: repeating a fill is safe), then the most urgent queued
    /// ones, never more than the window holds, never one past its deadline.
    pub async fn fill(
        &self,
        session: &SessionRef,
        next_seq: u64,
        ack: u64,
        max: usize,
    ) -> Result<Filled, StoreError> {
        let inv = self.fill_invocation(session, next_seq, ack, max);
        filled(self.call(&inv).await?)
    }

    /// Settles every delivery up to `upto` (cumulative). Safe to repeat.
    pub async fn ack(&self, session: &SessionRef, upto: u64) -> Result<Acked, StoreError> {
        let inv = self.ack_invocation(session, upto);
        acked(self.call(&inv).await?)
    }

    /// The session closed: settles its last ack (0: none) and starts the mailbox's away
    /// lifetime for `reason` (every key of the device expires together when it ends, unless
    /// a session attaches first). In-flight messages stay, to be delivered again.
    pub async fn detach(
        &self,
        session: &SessionRef,
        upto: u64,
        reason: CloseReason,
    ) -> Result<Acked, StoreError> {
        let c = &*self.config;
        let mut inv = self.scripts.detach.key(route_key(&session.user));
        inv.arg(c.missed_ids)
            .arg(&session.device)
            .arg(session.generation)
            .arg(upto)
            .arg(u8::from(reason == CloseReason::Abnormal))
            .arg(ms(c.keep_after_normal))
            .arg(ms(c.keep_after_abnormal));
        acked(self.call(&inv).await?)
    }

    /// Sets (or with `None` clears) the caps of every device mailbox of `user`, in place of
    /// the configured defaults. The override outlives the user's mailboxes.
    pub async fn set_limits(
        &self,
        user: &UserId,
        limits: Option<UserLimits>,
    ) -> Result<(), StoreError> {
        self.check_user(user)?;
        let cmd = match limits {
            Some(l) => {
                for (setting, v) in [("max_messages", l.max_messages), ("max_bytes", l.max_bytes)] {
                    if v == 0 {
                        return Err(InvalidInput::ZeroLimit { setting }.into());
                    }
                }
                let mut cmd = redis::cmd("HSET");
                cmd.arg(limits_key(user))
                    .arg("m")
                    .arg(l.max_messages)
                    .arg("b")
                    .arg(l.max_bytes)
                    .arg("p")
                    .arg(policy_code(l.overflow));
                cmd
            }
            None => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(limits_key(user));
                cmd
            }
        };
        let _: Value = cmd.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// One device mailbox of `user` as it stands (`None` as `device`: the mailbox that waits
    /// for the first device), after expiring what is due; `None` if there is none.
    pub async fn inspect(
        &self,
        user: &UserId,
        device: Option<&str>,
    ) -> Result<Option<DeviceStats>, StoreError> {
        self.check_user(user)?;
        if let Some(d) = device {
            self.check_device(d)?;
        }
        let mut inv = self.scripts.inspect.key(route_key(user));
        inv.arg(self.config.missed_ids)
            .arg(device.unwrap_or(""))
            .arg(if device.is_some() { "0" } else { "1" });
        let mut r = self.call(&inv).await?;
        if r.int()? == 0 {
            return Ok(None);
        }
        let epoch = r
            .string()?
            .parse()
            .map_err(|_| StoreError::Reply("an epoch that is not hex"))?;
        let next_seq = r.u64()?;
        let generation = r.u64()?;
        let owner = r.name()?;
        let mut queued_per_band = [0; 4];
        for q in &mut queued_per_band {
            *q = r.u64()?;
        }
        let queued_bytes = r.u64()?;
        let in_flight = r.u64()?;
        // PTTL: -1 for a key without expiry (attached).
        let expires_in_ms = u64::try_from(r.int()?).ok();
        let away_reason = r.name()?;
        let mut missed = [0; 5];
        for m in &mut missed {
            *m = r.u64()?;
        }
        let mut counters = [0; 4];
        for c in &mut counters {
            *c = r.u64()?;
        }
        Ok(Some(DeviceStats {
            epoch,
            next_seq,
            generation,
            owner,
            queued_per_band,
            queued_bytes,
            in_flight,
            expires_in_ms,
            away_reason,
            missed,
            counters,
        }))
    }

    pub(super) fn fill_invocation(
        &self,
        session: &SessionRef,
        next_seq: u64,
        ack: u64,
        max: usize,
    ) -> ScriptInvocation<'_> {
        let mut inv = self.scripts.fill.key(route_key(&session.user));
        inv.arg(self.config.missed_ids)
            .arg(&session.device)
            .arg(session.generation)
            .arg(ack)
            .arg(next_seq)
            .arg(max.min(self.config.window));
        inv
    }

    pub(super) fn ack_invocation(&self, session: &SessionRef, upto: u64) -> ScriptInvocation<'_> {
        let mut inv = self.scripts.ack.key(route_key(&session.user));
        inv.arg(self.config.missed_ids)
            .arg(&session.device)
            .arg(session.generation)
            .arg(upto);
        inv
    }

    /// Runs one script (by SHA; loaded and retried on NOSCRIPT) and opens its reply.
    pub(super) async fn call(&self, inv: &ScriptInvocation<'_>) -> Result<Reply, StoreError> {
        let value: Value = inv.invoke_async(&mut self.conn.clone()).await?;
        Reply::new(value)
    }

    fn check_user(&self, user: &UserId) -> Result<(), StoreError> {
        let (len, max) = (user.as_str().len(), self.config.max_user_id_len);
        if len > max {
            return Err(InvalidInput::UserIdTooLong { len, max }.into());
        }
        Ok(())
    }

    fn check_device(&self, device: &str) -> Result<(), StoreError> {
        let (len, max) = (device.len(), self.config.max_device_id_len);
        if len > max {
            return Err(StoreError::DeviceIdTooLong { len, max });
        }
        Ok(())
    }

    fn check_message(&self, message: &Message) -> Result<(), StoreError> {
        if message.stream_part().is_some() {
            return Err(StoreError::StreamsUnsupported);
        }
        let (len, max) = (message.payload().len(), self.config.max_payload_bytes);
        if len > max {
            return Err(InvalidInput::PayloadTooLarge { len, max }.into());
        }
        if let Some(id) = message.id() {
            let (len, max) = (id.as_str().len(), self.config.max_message_id_len);
            if len == 0 {
                return Err(InvalidInput::EmptyMessageId.into());
            }
            if len > max {
                return Err(InvalidInput::MessageIdTooLong { len, max }.into());
            }
        }
        Ok(())
    }
}

/// Reads a fenced script's status: 0 goes on, 1 and 2 are the fencing refusals.
fn status(r: &mut Reply) -> Result<(), StoreError> {
    match r.int()? {
        0 => Ok(()),
        1 => Err(StoreError::Fenced),
        2 => Err(StoreError::Gone),
        _ => Err(StoreError::Reply("an unknown status")),
    }
}

pub(super) fn filled(mut r: Reply) -> Result<Filled, StoreError> {
    status(&mut r)?;
    Ok(Filled {
        acknowledged: r.u64()?,
        queued: r.u64()?,
        next_seq: r.u64()?,
        delivered: r.deliveries()?,
    })
}

pub(super) fn acked(mut r: Reply) -> Result<Acked, StoreError> {
    status(&mut r)?;
    Ok(Acked {
        acknowledged: r.u64()?,
        in_flight: r.u64()?,
        queued: r.u64()?,
    })
}

fn policy_code(p: OverflowPolicy) -> u8 {
    match p {
        OverflowPolicy::DropOldest => 0,
        OverflowPolicy::DropNewest => 1,
        OverflowPolicy::Reject => 2,
    }
}

/// An epoch for a mailbox the script may create: the client draws it, because a script's
/// random numbers are the same on every call.
fn new_epoch() -> String {
    Epoch(fastrand::u64(..)).to_string()
}
