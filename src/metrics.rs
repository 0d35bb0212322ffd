//! Metrics: shard-local counters and latency histograms, snapshots, diffs, and export as JSON
//! and Prometheus text.
//!
//! Each shard worker counts into plain integers it alone owns (no atomic per event) and
//! publishes them once per pass into its own padded block of atomics with Relaxed stores;
//! `Engine::metrics` sums the blocks. Histograms have fixed log-linear buckets over
//! microseconds (16 exact buckets below 16 µs, then 8 per power of two up to 2^40 µs, about
//! 12 days): recording is an index computation and an increment, never an allocation.
//!
//! Per-user counters live in the mailbox (see `MailboxStats::counters`) and leave with it.

use std::fmt::Write as _;

use crossbeam_utils::CachePadded;
use serde::Serialize;

use crate::loom::{AtomicU64, Ordering};
use crate::message::DeviceId;
use crate::session::Epoch;

/// Defines a set of named `u64` fields once, with their Prometheus help text, and generates
/// the struct, its array form (for publishing in a loop) and the names.
macro_rules! metric_set {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $help:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct $name {
            $($(#[$fmeta])* #[doc = $help] pub $field: u64,)*
        }

        #[allow(dead_code)] // not every set uses every helper
        impl $name {
            pub(crate) const LEN: usize = [$(stringify!($field)),*].len();
            pub(crate) const NAMES: [&'static str; Self::LEN] = [$(stringify!($field)),*];
            pub(crate) const HELP: [&'static str; Self::LEN] = [$($help),*];

            pub(crate) fn to_array(self) -> [u64; Self::LEN] {
                [$(self.$field),*]
            }

            pub(crate) fn from_array(a: [u64; Self::LEN]) -> Self {
                let mut i = 0;
                $(let $field = a[i]; i += 1;)*
                let _ = i;
                Self { $($field),* }
            }
        }
    };
}

metric_set! {
    /// Engine-wide event counts since start (monotonic).
    Counters {
        sent: "Sends processed by a shard, whatever their outcome.",
        delivered: "Messages that entered a delivery window for the first time.",
        redelivered: "Unacknowledged messages delivered again to a new session.",
        queued: "Messages kept in a band to wait for delivery.",
        acknowledged: "Messages settled by an acknowledgement.",
        expired: "Messages whose TTL passed before they were acknowledged.",
        evicted: "Messages dropped by the DropOldest or DropNewest overflow policies.",
        shed: "Messages refused by the engine-wide memory budget.",
        rejected: "Messages refused by the Reject policy, the byte cap or the user limit.",
        duplicates: "Messages refused as duplicates.",
        overflows: "Sends that found a mailbox at its cap (whatever the policy did).",
        connects: "Sessions connected.",
        reconnections: "Connects to a mailbox that already existed.",
        replaced: "Sessions ended because a newer session of the same user connected.",
        closed_normal: "Sessions closed cleanly.",
        closed_abnormal: "Sessions closed by a broken connection or dropped.",
        closed_shutdown: "Sessions ended by the engine's shutdown.",
        mailboxes_removed: "Mailboxes removed by away retention or idle cleanup.",
        breaker_opens: "Circuit breakers that opened.",
        breaker_half_opens: "Circuit breakers that allowed a trial delivery (retry attempts).",
        breaker_closes: "Circuit breakers that closed after a successful trial (retry successes).",
        breaker_reopens: "Trial deliveries that failed and reopened a breaker (retry failures).",
        streams_started: "Streams opened by their first arriving part.",
        streams_completed: "Streams whose last part was acknowledged.",
        streams_aborted_timeout: "Streams aborted because no part arrived for the stream timeout.",
        streams_aborted_expired: "Streams aborted because their TTL passed before the last part was delivered.",
        streams_aborted_overflow: "Streams aborted because the mailbox could not keep them.",
        streams_aborted_memory_budget: "Streams aborted because the memory budget refused a part.",
        streams_aborted_producer: "Streams aborted by their producer.",
        streams_aborted_mailbox_removed: "Streams still open when their mailbox was removed (no marker: no one is left to receive it).",
        streams_resumed: "Streams in the middle of delivery when a new session attached.",
        devices_evicted: "Device mailboxes removed to make room for a new device of the same user (the one away longest).",
        devices_refused: "Connects of a new device refused because every device of the user was connected.",
    }
}

metric_set! {
    /// One mailbox's event counts (one device of a user) since it was created (they go with it).
    UserCounters {
        sent: "Messages for this user that reached the mailbox (not duplicates or shed ones).",
        delivered: "Messages that entered the delivery window for the first time.",
        redelivered: "Messages delivered again to a new session.",
        acknowledged: "Messages settled by an acknowledgement.",
        expired: "Messages whose TTL passed before they were acknowledged.",
        evicted: "Messages dropped by an overflow policy.",
        shed: "Messages refused by the memory budget.",
        rejected: "Messages refused by the Reject policy or the byte cap.",
        duplicates: "Messages refused as duplicates.",
    }
}

metric_set! {
    /// Engine-wide levels right now.
    Gauges {
        sessions_active: "Sessions attached to a mailbox.",
        mailboxes: "Mailboxes held: one per device of a user, or one waiting for a user's first device.",
        queued_critical: "Messages waiting in the Critical bands.",
        queued_high: "Messages waiting in the High bands.",
        queued_normal: "Messages waiting in the Normal bands.",
        queued_low: "Messages waiting in the Low bands.",
        max_queue_depth: "The deepest backlog any one user has had since the engine started.",
        in_flight: "Delivery-window slots in use.",
        held_bytes: "Payload bytes held, queued and in flight.",
        breakers_open: "Sessions whose circuit breaker is open.",
        breakers_half_open: "Sessions whose circuit breaker is waiting on a trial.",
        streams_open: "Streams open (started, not yet completed or aborted).",
        users: "Users with at least one mailbox.",
    }
}

/// Index of `max_queue_depth` in `Gauges`' array form.
const MAX_DEPTH: usize = 6;

/// Number of histogram buckets.
const BUCKETS: usize = 16 + 37 * 8;

/// The bucket of a value in µs: exact below 16, then 8 log-linear buckets per power of two.
fn bucket_of(us: u64) -> usize {
    if us < 16 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize; // >= 4
    let sub = ((us >> (exp - 3)) & 7) as usize;
    (16 + (exp - 4) * 8 + sub).min(BUCKETS - 1)
}

/// The largest value (µs) that falls into bucket `b`.
fn bucket_upper(b: usize) -> u64 {
    if b < 16 {
        return b as u64;
    }
    let exp = 4 + (b - 16) / 8;
    let sub = ((b - 16) % 8) as u64;
    ((8 + sub + 1) << (exp - 3)) - 1
}

/// A worker's own histogram: plain counts, published when it changed. Only the range of
/// buckets touched since the last publish is copied out, so a pass that recorded a few
/// similar latencies publishes a few words, not all of them.
pub(crate) struct LocalHistogram {
    buckets: Box<[u64; BUCKETS]>,
    count: u64,
    sum: u64,
    max: u64,
    /// Buckets `lo..=hi` changed since the last publish; `lo > hi` when none did.
    lo: usize,
    hi: usize,
}

impl LocalHistogram {
    pub(crate) fn new() -> Self {
        Self {
            buckets: Box::new([0; BUCKETS]),
            count: 0,
            sum: 0,
            max: 0,
            lo: BUCKETS,
            hi: 0,
        }
    }

    pub(crate) fn record(&mut self, us: u64) {
        let b = bucket_of(us);
        self.buckets[b] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(us);
        self.max = self.max.max(us);
        self.lo = self.lo.min(b);
        self.hi = self.hi.max(b);
    }
}

struct SharedHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl SharedHistogram {
    fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    fn publish(&self, h: &mut LocalHistogram) {
        if h.lo > h.hi {
            return;
        }
        for b in h.lo..=h.hi {
            self.buckets[b].store(h.buckets[b], Ordering::Relaxed);
        }
        self.count.store(h.count, Ordering::Relaxed);
        self.sum.store(h.sum, Ordering::Relaxed);
        self.max.store(h.max, Ordering::Relaxed);
        (h.lo, h.hi) = (BUCKETS, 0);
    }

    fn add_to(&self, into: &mut Histogram) {
        for (b, shared) in into.buckets.iter_mut().zip(self.buckets.iter()) {
            *b += shared.load(Ordering::Relaxed);
        }
        into.count += self.count.load(Ordering::Relaxed);
        into.sum_us += self.sum.load(Ordering::Relaxed);
        into.max_us = into.max_us.max(self.max.load(Ordering::Relaxed));
    }
}

/// What one shard worker counts, owned by it alone.
pub(crate) struct ShardRecorder {
    pub(crate) counters: Counters,
    pub(crate) gauges: Gauges,
    pub(crate) enqueue_to_delivery: LocalHistogram,
    pub(crate) delivery_to_ack: LocalHistogram,
    pub(crate) inbox_wait: LocalHistogram,
    /// Whether latency histograms are recorded (counters and gauges always are).
    pub(crate) latency: bool,
}

impl ShardRecorder {
    pub(crate) fn new(latency: bool) -> Self {
        Self {
            counters: Counters::default(),
            gauges: Gauges::default(),
            enqueue_to_delivery: LocalHistogram::new(),
            delivery_to_ack: LocalHistogram::new(),
            inbox_wait: LocalHistogram::new(),
            latency,
        }
    }
}

/// One shard's published block, read by snapshots.
pub(crate) struct ShardMetrics {
    counters: CachePadded<[AtomicU64; Counters::LEN]>,
    gauges: [AtomicU64; Gauges::LEN],
    enqueue_to_delivery: SharedHistogram,
    delivery_to_ack: SharedHistogram,
    inbox_wait: SharedHistogram,
}

impl ShardMetrics {
    pub(crate) fn new() -> Self {
        Self {
            counters: CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))),
            gauges: std::array::from_fn(|_| AtomicU64::new(0)),
            enqueue_to_delivery: SharedHistogram::new(),
            delivery_to_ack: SharedHistogram::new(),
            inbox_wait: SharedHistogram::new(),
        }
    }

    /// Worker side, once per pass: Relaxed stores, since each value is read on its own and a
    /// snapshot is a sum of recent values, not a consistent cut. Histograms only when
    /// `histograms` says so (at most every millisecond, and at barriers): a pass can be much
    /// shorter than that, and copying buckets each time cost more than recording did.
    pub(crate) fn publish(&self, r: &mut ShardRecorder, histograms: bool) {
        for (shared, v) in self.counters.iter().zip(r.counters.to_array()) {
            shared.store(v, Ordering::Relaxed);
        }
        for (shared, v) in self.gauges.iter().zip(r.gauges.to_array()) {
            shared.store(v, Ordering::Relaxed);
        }
        if histograms {
            self.enqueue_to_delivery.publish(&mut r.enqueue_to_delivery);
            self.delivery_to_ack.publish(&mut r.delivery_to_ack);
            self.inbox_wait.publish(&mut r.inbox_wait);
        }
    }

    /// Adds this shard's published values into `into`.
    pub(crate) fn add_to(&self, into: &mut MetricsSnapshot) {
        let mut c = into.counters.to_array();
        for (sum, shared) in c.iter_mut().zip(self.counters.iter()) {
            *sum += shared.load(Ordering::Relaxed);
        }
        into.counters = Counters::from_array(c);
        let max_depth = into.gauges.max_queue_depth;
        let mut g = into.gauges.to_array();
        for (sum, shared) in g.iter_mut().zip(self.gauges.iter()) {
            *sum += shared.load(Ordering::Relaxed);
        }
        into.gauges = Gauges::from_array(g);
        // The deepest backlog is a maximum across shards, not a sum.
        let mine = self.gauges[MAX_DEPTH].load(Ordering::Relaxed);
        into.gauges.max_queue_depth = max_depth.max(mine);
        self.enqueue_to_delivery
            .add_to(&mut into.enqueue_to_delivery);
        self.delivery_to_ack.add_to(&mut into.delivery_to_ack);
        self.inbox_wait.add_to(&mut into.inbox_wait);
    }
}

/// A latency distribution in microseconds, with fixed log-linear buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    buckets: Vec<u64>,
    /// Samples recorded.
    pub count: u64,
    /// Sum of all samples, µs.
    pub sum_us: u64,
    /// Largest sample, µs.
    pub max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            count: 0,
            sum_us: 0,
            max_us: 0,
        }
    }
}

impl Histogram {
    /// Counts one sample of `us` microseconds, for a program that measures latencies of its
    /// own with the engine's buckets (the `tether-load` binary does).
    ///
    /// ```
    /// let mut h = tether::Histogram::default();
    /// for us in [100, 200, 300] {
    ///     h.record(us);
    /// }
    /// assert_eq!((h.count, h.sum_us, h.max_us), (3, 600, 300));
    /// assert_eq!(h.quantile(1.0), Some(300));
    /// ```
    pub fn record(&mut self, us: u64) {
        self.buckets[bucket_of(us)] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Adds `other`'s samples to these, as if every one had been recorded here.
    ///
    /// ```
    /// let (mut a, mut b) = (tether::Histogram::default(), tether::Histogram::default());
    /// a.record(10);
    /// b.record(1_000);
    /// a.merge(&b);
    /// assert_eq!((a.count, a.max_us), (2, 1_000));
    /// ```
    pub fn merge(&mut self, other: &Histogram) {
        for (sum, n) in self.buckets.iter_mut().zip(&other.buckets) {
            *sum += n;
        }
        self.count += other.count;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The value (µs) at or below which a fraction `q` (0..=1) of samples fall, as the upper
    /// bound of the bucket that holds that sample (at most 12.5 % above the true value);
    /// `None` without samples.
    ///
    /// ```
    /// let snapshot = tether::Engine::builder().build().unwrap().metrics();
    /// assert_eq!(snapshot.enqueue_to_delivery.quantile(0.99), None);
    /// ```
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper(b).min(self.max_us));
            }
        }
        Some(self.max_us)
    }

    /// Non-empty buckets as (upper bound µs, count), for export.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(b, n)| (bucket_upper(b), *n))
    }

    /// The samples recorded since `earlier` (a copy of the same histogram taken before).
    pub(crate) fn minus(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            count: self.count.saturating_sub(earlier.count),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
            max_us: self.max_us,
        }
    }
}

impl Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Histogram", 6)?;
        st.serialize_field("count", &self.count)?;
        st.serialize_field("sum_us", &self.sum_us)?;
        st.serialize_field("p50_us", &self.quantile(0.50))?;
        st.serialize_field("p90_us", &self.quantile(0.90))?;
        st.serialize_field("p99_us", &self.quantile(0.99))?;
        st.serialize_field("max_us", &self.max_us)?;
        st.end()
    }
}

/// The engine's metrics at one moment: from [`Engine::metrics`](crate::Engine::metrics).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tether::{Engine, Message, UserId};
///
/// let engine = Engine::builder().shards(1).build().unwrap();
/// let before = engine.metrics();
/// engine.send(&UserId::new("ann").unwrap(), Message::new("hi")).await.unwrap();
/// engine.barrier().await;
/// let change = engine.metrics().diff(&before);
/// assert_eq!((change.counters.sent, change.counters.queued), (1, 1));
/// assert!(engine.metrics().to_prometheus().contains("tether_messages_sent_total 1"));
/// # });
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Event counts since the engine started.
    pub counters: Counters,
    /// Levels right now.
    pub gauges: Gauges,
    /// Time from the producer's call (`Engine::send` and its kin, or the arrival of the
    /// HTTP request that published it) to the message's entering a delivery window.
    pub enqueue_to_delivery: Histogram,
    /// Time from a message's delivery to its acknowledgement.
    pub delivery_to_ack: Histogram,
    /// Time a send waited in its shard's inbox: from the producer's call to the shard worker
    /// taking it up.
    pub inbox_wait: Histogram,
    /// The memory budget, bytes.
    pub memory_budget_bytes: u64,
}

impl MetricsSnapshot {
    /// The change since `earlier`: counters and histograms subtract, gauges keep their
    /// current value.
    pub fn diff(&self, earlier: &MetricsSnapshot) -> MetricsSnapshot {
        let (now, then) = (self.counters.to_array(), earlier.counters.to_array());
        let mut d = [0; Counters::LEN];
        for i in 0..Counters::LEN {
            d[i] = now[i].saturating_sub(then[i]);
        }
        MetricsSnapshot {
            counters: Counters::from_array(d),
            gauges: self.gauges,
            enqueue_to_delivery: self.enqueue_to_delivery.minus(&earlier.enqueue_to_delivery),
            delivery_to_ack: self.delivery_to_ack.minus(&earlier.delivery_to_ack),
            inbox_wait: self.inbox_wait.minus(&earlier.inbox_wait),
            memory_budget_bytes: self.memory_budget_bytes,
        }
    }

    /// Retry success rate: breaker trials that closed the breaker, of those that ended.
    /// `None` before any trial ended.
    pub fn retry_success_rate(&self) -> Option<f64> {
        let c = &self.counters;
        let ended = c.breaker_closes + c.breaker_reopens;
        (ended > 0).then(|| c.breaker_closes as f64 / ended as f64)
    }

    /// The snapshot as a JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("metrics serialise")
    }

    /// The snapshot in the Prometheus text exposition format (version 0.0.4): `tether_`
    /// names, units in names, `# HELP` and `# TYPE` lines, labels for band, reason and state.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let c = &self.counters;
        let mut counter = |name: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP tether_{name} {help}");
            let _ = writeln!(out, "# TYPE tether_{name} counter");
            for (labels, v) in rows {
                let _ = writeln!(out, "tether_{name}{labels} {v}");
            }
        };
        let names = Counters::NAMES;
        let help = Counters::HELP;
        let h = |n: &str| help[names.iter().position(|x| *x == n).expect("known counter")];
        for n in [
            "sent",
            "delivered",
            "redelivered",
            "queued",
            "acknowledged",
            "duplicates",
            "overflows",
        ] {
            let v = Counters::to_array(*c)[names.iter().position(|x| *x == n).expect("known")];
            counter(&format!("messages_{n}_total"), h(n), &[("", v)]);
        }
        counter(
            "messages_dropped_total",
            "Messages not kept, by reason.",
            &[
                ("{reason=\"expired\"}", c.expired),
                ("{reason=\"evicted\"}", c.evicted),
                ("{reason=\"shed\"}", c.shed),
                ("{reason=\"rejected\"}", c.rejected),
            ],
        );
        counter(
            "sessions_connected_total",
            h("connects"),
            &[("", c.connects)],
        );
        counter(
            "sessions_reconnections_total",
            h("reconnections"),
            &[("", c.reconnections)],
        );
        counter(
            "sessions_ended_total",
            "Sessions ended, by reason.",
            &[
                ("{reason=\"normal\"}", c.closed_normal),
                ("{reason=\"abnormal\"}", c.closed_abnormal),
                ("{reason=\"replaced\"}", c.replaced),
                ("{reason=\"shutdown\"}", c.closed_shutdown),
            ],
        );
        counter(
            "mailboxes_removed_total",
            h("mailboxes_removed"),
            &[("", c.mailboxes_removed)],
        );
        counter(
            "devices_evicted_total",
            h("devices_evicted"),
            &[("", c.devices_evicted)],
        );
        counter(
            "devices_refused_total",
            h("devices_refused"),
            &[("", c.devices_refused)],
        );
        counter(
            "breaker_transitions_total",
            "Circuit breaker transitions, by the state entered.",
            &[
                ("{state=\"open\"}", c.breaker_opens),
                ("{state=\"half_open\"}", c.breaker_half_opens),
                ("{state=\"closed\"}", c.breaker_closes),
            ],
        );
        counter(
            "retries_total",
            "Trial deliveries after a breaker cooldown, by result.",
            &[
                ("{result=\"success\"}", c.breaker_closes),
                ("{result=\"failure\"}", c.breaker_reopens),
            ],
        );
        counter(
            "streams_started_total",
            h("streams_started"),
            &[("", c.streams_started)],
        );
        counter(
            "streams_completed_total",
            h("streams_completed"),
            &[("", c.streams_completed)],
        );
        counter(
            "streams_aborted_total",
            "Streams aborted, by reason.",
            &[
                ("{reason=\"timeout\"}", c.streams_aborted_timeout),
                ("{reason=\"expired\"}", c.streams_aborted_expired),
                ("{reason=\"overflow\"}", c.streams_aborted_overflow),
                (
                    "{reason=\"memory_budget\"}",
                    c.streams_aborted_memory_budget,
                ),
                ("{reason=\"producer\"}", c.streams_aborted_producer),
                (
                    "{reason=\"mailbox_removed\"}",
                    c.streams_aborted_mailbox_removed,
                ),
            ],
        );
        counter(
            "streams_resumed_total",
            h("streams_resumed"),
            &[("", c.streams_resumed)],
        );

        let g = &self.gauges;
        let mut gauge = |name: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP tether_{name} {help}");
            let _ = writeln!(out, "# TYPE tether_{name} gauge");
            for (labels, v) in rows {
                let _ = writeln!(out, "tether_{name}{labels} {v}");
            }
        };
        gauge(
            "sessions_active",
            "Sessions attached to a mailbox.",
            &[("", g.sessions_active)],
        );
        gauge("mailboxes", "Mailboxes held.", &[("", g.mailboxes)]);
        gauge(
            "users",
            "Users with at least one mailbox.",
            &[("", g.users)],
        );
        gauge(
            "queue_depth_messages",
            "Messages waiting in bands, by band.",
            &[
                ("{band=\"critical\"}", g.queued_critical),
                ("{band=\"high\"}", g.queued_high),
                ("{band=\"normal\"}", g.queued_normal),
                ("{band=\"low\"}", g.queued_low),
            ],
        );
        gauge(
            "queue_max_depth_messages",
            "The deepest backlog any one user has had since the engine started.",
            &[("", g.max_queue_depth)],
        );
        gauge("streams_open", "Streams open.", &[("", g.streams_open)]);
        gauge(
            "in_flight_messages",
            "Delivery-window slots in use.",
            &[("", g.in_flight)],
        );
        gauge(
            "memory_held_bytes",
            "Payload bytes held, queued and in flight.",
            &[("", g.held_bytes)],
        );
        gauge(
            "memory_budget_bytes",
            "The engine-wide memory budget.",
            &[("", self.memory_budget_bytes)],
        );
        gauge(
            "breakers",
            "Sessions by circuit breaker state.",
            &[
                (
                    "{state=\"closed\"}",
                    g.sessions_active
                        .saturating_sub(g.breakers_open + g.breakers_half_open),
                ),
                ("{state=\"half_open\"}", g.breakers_half_open),
                ("{state=\"open\"}", g.breakers_open),
            ],
        );

        for (name, help, hist) in [
            (
                "enqueue_to_delivery_seconds",
                "Time from the producer's call to entering a delivery window.",
                &self.enqueue_to_delivery,
            ),
            (
                "inbox_wait_seconds",
                "Time a send waited in its shard's inbox.",
                &self.inbox_wait,
            ),
            (
                "delivery_to_ack_seconds",
                "Time from delivery to acknowledgement.",
                &self.delivery_to_ack,
            ),
        ] {
            write_histogram(&mut out, name, help, hist);
        }
        out
    }
}

/// Writes `hist` as the Prometheus histogram `tether_{name}`, in seconds (the front end's
/// histograms too).
pub(crate) fn write_histogram(out: &mut String, name: &str, help: &str, hist: &Histogram) {
    let _ = writeln!(out, "# HELP tether_{name} {help}");
    let _ = writeln!(out, "# TYPE tether_{name} histogram");
    let mut cumulative = 0;
    for (upper_us, n) in hist.buckets() {
        cumulative += n;
        let le = (upper_us + 1) as f64 / 1e6;
        let _ = writeln!(out, "tether_{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "tether_{name}_bucket{{le=\"+Inf\"}} {}", hist.count);
    let _ = writeln!(out, "tether_{name}_sum {}", hist.sum_us as f64 / 1e6);
    let _ = writeln!(out, "tether_{name}_count {}", hist.count);
}

/// A snapshot of one mailbox: one device of a user, from
/// [`Engine::devices`](crate::Engine::devices), or the one
/// [`Engine::mailbox_stats`](crate::Engine::mailbox_stats) picks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MailboxStats {
    /// Whose mailbox it is: a device, or `None` for the mailbox that holds what was sent
    /// before the user's first device connected (that device takes it over).
    pub device: Option<DeviceId>,
    /// Messages waiting in each band, Critical first.
    pub queued_per_band: [usize; 4],
    /// Payload bytes waiting in the bands.
    pub queued_bytes: usize,
    /// Delivery-window slots in use: delivered, unacknowledged messages (one that expired
    /// keeps its slot until acknowledged past, as a copy may still wait in the session).
    pub in_flight: usize,
    /// Their payload bytes.
    pub in_flight_bytes: usize,
    /// The seq the next delivery will get.
    pub next_seq: u64,
    /// The mailbox's epoch.
    pub epoch: Epoch,
    /// Whether a session is attached.
    pub connected: bool,
    /// Since when, in ms on the engine's clock ([`Clock::now_ms`](crate::Clock::now_ms),
    /// counted from the engine's start): the session attached if `connected`, else the last
    /// session left (or the mailbox was created, if none ever attached).
    pub since_ms: u64,
    /// Losses recorded since the last connect (they go into the next connect's manifest).
    pub missed: u64,
    /// This mailbox's event counts since it was created.
    pub counters: UserCounters,
}

impl MailboxStats {
    /// Messages waiting in all bands.
    pub fn queued(&self) -> usize {
        self.queued_per_band.iter().sum()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn max_depth_index_is_right() {
        assert_eq!(Gauges::NAMES[MAX_DEPTH], "max_queue_depth");
    }

    #[test]
    fn buckets_are_log_linear_and_bounds_hold_their_values() {
        for us in [
            0,
            1,
            15,
            16,
            17,
            31,
            32,
            100,
            1_000,
            65_535,
            1 << 30,
            u64::MAX / 2,
        ] {
            let b = bucket_of(us);
            assert!(us <= bucket_upper(b) || b == BUCKETS - 1, "{us}");
            if b > 0 && b < BUCKETS - 1 {
                assert!(us > bucket_upper(b - 1), "{us} belongs to a lower bucket");
            }
        }
        // Relative error of a bucket's upper bound stays within 1/8.
        for us in [20u64, 1_000, 123_456, 9_999_999] {
            let upper = bucket_upper(bucket_of(us));
            assert!((upper - us) as f64 <= us as f64 / 8.0, "{us} -> {upper}");
        }
    }

    #[test]
    fn publishing_copies_every_changed_bucket() {
        let (mut local, shared) = (LocalHistogram::new(), SharedHistogram::new());
        local.record(5);
        shared.publish(&mut local);
        local.record(1000);
        local.record(3);
        shared.publish(&mut local);
        shared.publish(&mut local); // nothing changed: a no-op
        let mut h = Histogram::default();
        shared.add_to(&mut h);
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets().map(|(_, n)| n).sum::<u64>(), 3);
    }

    #[test]
    fn recorded_and_merged_samples_land_in_the_shards_buckets() {
        let (mut local, shared) = (LocalHistogram::new(), SharedHistogram::new());
        let (mut direct, mut other) = (Histogram::default(), Histogram::default());
        for us in [0, 15, 16, 1_000, 123_456, u64::MAX] {
            local.record(us);
            if us < 1_000 {
                direct.record(us);
            } else {
                other.record(us);
            }
        }
        shared.publish(&mut local);
        let mut from_shard = Histogram::default();
        shared.add_to(&mut from_shard);
        direct.merge(&other);
        assert_eq!(direct, from_shard);
        assert_eq!(direct.count, 6);
        assert_eq!(direct.sum_us, u64::MAX, "the sum saturates");
    }

    #[test]
    fn quantiles_follow_the_samples() {
        let mut local = LocalHistogram::new();
        for us in 1..=1000 {
            local.record(us);
        }
        let shared = SharedHistogram::new();
        shared.publish(&mut local);
        let mut h = Histogram::default();
        shared.add_to(&mut h);
        assert_eq!(h.count, 1000);
        assert_eq!(h.max_us, 1000);
        let p50 = h.quantile(0.5).unwrap();
        assert!((500..=563).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((990..=1000).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), Some(1000));
    }
}
