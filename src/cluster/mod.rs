//! Mailboxes in Redis, so that several tether nodes can share users (cargo feature `redis`).
//!
//! This is the storage layer of the Redis backend: [`RedisStore`], one atomic Lua script per
//! operation that changes a mailbox, with typed answers in the engine's vocabulary. A node
//! keeps its live sessions in memory and calls the store to enqueue, attach, fill the
//! window, ack and detach; the embedded engine stays the default and is untouched.
//!
//! # Data model
//!
//! Every key of a user starts with the hash tag `{u:<len>:<user>}`, so all of them, and
//! therefore every script on that user, live in one Redis Cluster slot, and Redis runs one
//! slot's scripts one at a time: that is the per-user ordering. (The length prefix keeps key
//! names unambiguous whatever the user id contains.) Per user:
//!
//! - `…:devs`: the set of device names (`""` is the default device); `…:gone`: devices whose
//!   mailbox was evicted to make room for a new device (their next attach is told);
//!   `…:dedup`: a sorted set of 8-byte fingerprints (xxh3 of the id, or of the payload in
//!   `ids-and-content` mode) scored by when each is forgotten; `…:lim`: a limit override.
//! - Per device mailbox, under `…:dv:<len>:<device>`: `:m`, a meta hash (epoch, drawn at
//!   random when the mailbox is created; next seq; the session generation, which is the
//!   fencing token; the owner node and its window while attached; away since, until and the
//!   close reason while away; queued message and byte counters per band; the missed
//!   manifest's counters and activity counters); `:q0`..`:q3`, one list per band, Critical
//!   to Low, FIFO; `:f`, the in-flight list of `seq:tag` in seq order; `:b`, the bodies
//!   (`<priority>,<deadline>,<id len>;<id><payload>`) by tag; `:t`, deadlines (a sorted
//!   set); `:x`, the ids of the most recent lost messages (bounded).
//! - `…:pend`: the same set of keys for the one mailbox that collects messages sent before
//!   the user has any device; the first device to attach takes it over (renames it).
//!
//! Each device mailbox holds its own copy of a message: the away lifetime removes a device's
//! keys with Redis's own expiry, and a body shared between devices would need a reference
//! count that an expiring key cannot decrement. One more device therefore costs one more
//! copy of each queued payload.
//!
//! # Operations
//!
//! - [`enqueue`](RedisStore::enqueue): dedup once per user; then into every device mailbox
//!   of the user under its caps and overflow policy (DropOldest evicts the oldest of the
//!   least urgent band no more urgent than the newcomer, else drops the newcomer;
//!   DropNewest; Reject), answering per device with the owner node to wake.
//! - [`attach`](RedisStore::attach): a new generation and owner; resume by `(epoch, seq)`;
//!   redelivers what is in flight with its seqs, fills the window, hands over the missed
//!   manifest.
//! - [`fill`](RedisStore::fill), [`ack`](RedisStore::ack), [`detach`](RedisStore::detach):
//!   fenced by the generation, so a replaced or partitioned node cannot deliver or settle
//!   with a stale view ([`StoreError::Fenced`]). Only the owner's fill assigns seqs. A fill
//!   names the seq it expects next, so repeating one (after a lost reply) answers the same
//!   deliveries instead of skipping them.
//! - [`Batch`] and [`RedisStore::run`]: many sessions' fills and acks in one request.
//!
//! Scripts are loaded once and called by SHA, loaded again on NOSCRIPT.
//!
//! # Time
//!
//! Every deadline is computed and checked inside the scripts with Redis's `TIME`, never a
//! node's clock, so nodes with skewed clocks agree. A message past its deadline is never
//! delivered: each script first removes what is due (queued or in flight) and counts it as
//! expired in the missed manifest. A detached device's keys get `PEXPIREAT` at the end of its
//! away lifetime (30 min after a clean close, 5 min after a broken one, by default) and
//! `PERSIST` when a session attaches; the user's own keys live as long as its longest-lived
//! device mailbox.
//!
//! # What differs from the embedded engine
//!
//! - **Streams are refused**: [`enqueue`](RedisStore::enqueue) answers
//!   [`StoreError::StreamsUnsupported`] for a stream part. Holding parts back until the
//!   earlier ones arrive could be scripted, but the stream timeout and the abort marker it
//!   produces need a timer that fires with no request to run on, and Redis has none; a node
//!   running them would make a dead node's streams hang. Deferred, not silently weakened.
//! - **The memory budget is Redis's**: there is no engine-wide budget and no priority
//!   shedding (the manifest's `shed` stays 0). Redis's `maxmemory` with the `noeviction`
//!   policy (checked by [`health`](RedisStore::health)) refuses writes when full, answered as
//!   [`StoreError::is_out_of_memory`]; `max_users` is not enforced.
//! - **Caps count a message from enqueue until the owner fills it.** The embedded engine
//!   puts a message for a session with window room straight into the window; here it waits
//!   in its band for the owner's next fill. The message cap allows for that room (a
//!   connected device with room is not evicted from for a burst that arrives before the
//!   fill), but the byte cap does not, and during such a burst DropOldest may evict a message
//!   the engine would already have delivered.
//! - **The dedup window is exact** (each fingerprint is forgotten `dedup_window` after it was
//!   recorded, not after one to two rotations), bounded per user by `dedup_max_per_user`.
//! - **An empty away mailbox is kept for its whole away lifetime**, not removed after the
//!   idle timeout.
//! - **The circuit breaker** is the node's: a node whose session's breaker is open simply
//!   does not fill it.
//! - **A node that dies stays the owner** of its devices until each attaches again (any
//!   attach takes over; nothing is lost, messages keep queueing). Expiring a dead node's
//!   sessions is the node layer's job (leases), not the store's.

mod batch;
mod config;
mod conn;
mod error;
mod health;
mod keys;
mod outcome;
mod reply;
mod scripts;
mod store;

pub use batch::{Batch, BatchReply};
pub use config::StoreConfig;
pub use error::StoreError;
pub use health::{Health, HealthIssue, NodeHealth};
pub use outcome::{
    Acked, Attached, DeviceOutcome, DeviceStats, Enqueued, Filled, SessionRef, Target,
};
pub use store::RedisStore;
