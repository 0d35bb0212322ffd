//! The per-session circuit breaker: stop delivering to a session whose writes keep failing, and
//! probe it again after a cooldown.
//!
//! The state machine is Michael Nygard's circuit breaker ("Release It!", 2007; Martin Fowler's
//! "CircuitBreaker" bliki): `failure_threshold` consecutive delivery failures move it from
//! Closed to Open; while Open nothing is delivered and messages stay queued; once the cooldown is
//! over, exactly one trial delivery is let through (HalfOpen); its success closes the breaker,
//! its failure opens it again with the next, longer cooldown. Cooldowns follow the crate's one
//! retry schedule, [`Backoff`] (exponential, full jitter, capped at `max_cooldown`), which is
//! reset when the breaker closes.
//!
//! # Two sides, one word
//!
//! Two parties touch a breaker:
//!
//! - the **owner**, the task that writes the session's frames, holds the [`Breaker`] (`&mut self`,
//!   one owner) and reports each write's outcome with [`Breaker::record_success`] and
//!   [`Breaker::record_failure`]. The consecutive-failure count and the [`Backoff`] are plain
//!   fields of the owner;
//! - the **deliverer**, the shard worker, holds a clone of the shared [`BreakerCell`] (from
//!   [`Breaker::cell`]) and asks [`BreakerCell::may_deliver`] before it hands a message over. On
//!   [`Permit::Trial`] it calls [`BreakerCell::begin_trial`], and delivers one message only if
//!   that returns `true`.
//!
//! The cell holds the whole state in one `AtomicU64`, so the hot-path check is one load, plus
//! three transition counters.
//!
//! # Layout of the state word
//!
//! ```text
//!  63  62 61                                                      0
//! +------+---------------------------------------------------------+
//! | tag  | open-until: engine milliseconds (Open only, else zero)  |
//! +------+---------------------------------------------------------+
//!   tag: 00 Closed, 01 Open, 10 HalfOpen, 11 never written
//! ```
//!
//! Closed is the all-zero word, so the closed check is a compare with zero. The valid words are
//! exactly `0` (Closed), `0b01 << 62 | until` (Open until `until`) and `0b10 << 62` (HalfOpen);
//! deadlines are clamped to [`MAX_UNTIL_MS`] (2^62 - 1 ms, about 146 million years of engine
//! time).
//!
//! # Who moves the word
//!
//! Every state has exactly one side that may leave it: the owner leaves Closed (it trips) and
//! HalfOpen (the trial's outcome closes or reopens it); a trial caller leaves Open (it wins the
//! trial). So a transition of the owner can never be lost to one of the deliverer's or the
//! reverse. Each transition is still a compare-and-swap against the word as last read, in a loop
//! that decides again on the fresh value: that is what makes exactly one of several racing
//! [`begin_trial`](BreakerCell::begin_trial) callers win, and it keeps the breaker correct if
//! another side is ever given a transition.
//!
//! # Orderings
//!
//! Every access is `Relaxed`, on purpose. The word guards no other memory (a transition publishes
//! nothing but itself), so there is no Release/Acquire pair to make. What the breaker needs is:
//!
//! - one winner among racing trial callers: compare-and-swaps on one location are totally
//!   ordered in its modification order and each reads the latest value, at any ordering;
//! - a side that learns of a transition through a synchronizing channel sees the word at least
//!   that new (write-read coherence): the trial message reaches the owner through the outbox
//!   ring (Release/Acquire), so the owner's later load reads HalfOpen or newer; a close is
//!   followed by a wake of the worker through its signal list, so the worker's next check reads
//!   Closed or newer.
//!
//! A stronger ordering would not make a transition visible any sooner. A check that races with
//! a trip may still say [`Permit::Yes`]: that delivery was decided before the breaker opened,
//! and its failure, if any, is reported while Open, where it changes nothing.
//!
//! The counters are statistics, bumped (Relaxed) right after the transition they count, so a
//! snapshot taken during a transition may lag the word by one; once both sides are quiet,
//! `opens == half_opens + (1 if Open)`.
//!
//! ```
//! use std::time::Duration;
//! use tether::breaker::{Breaker, BreakerConfig, BreakerState, Permit, Transition};
//!
//! let config = BreakerConfig { failure_threshold: 2, ..BreakerConfig::default() };
//! let mut breaker = Breaker::new(&config); // the session's side
//! let cell = breaker.cell().clone(); // the worker's side
//!
//! assert_eq!(cell.may_deliver(0), Permit::Yes);
//! assert_eq!(breaker.record_failure(10), None);
//! let Some(Transition::Opened { until_ms }) = breaker.record_failure(20) else { panic!() };
//! assert_eq!(cell.may_deliver(until_ms - 1), Permit::No); // cooling down: messages stay queued
//!
//! assert_eq!(cell.may_deliver(until_ms), Permit::Trial);
//! assert!(cell.begin_trial(until_ms)); // this caller delivers one message...
//! assert_eq!(cell.may_deliver(until_ms), Permit::No); // ...and nobody else does
//! assert_eq!(breaker.record_success(until_ms + 5), Some(Transition::Closed));
//! assert_eq!(cell.state(), BreakerState::Closed);
//! assert_eq!(cell.counts().opens, 1);
//! ```

use std::fmt;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::loom::{Arc, AtomicU64, Ordering};

const TAG_SHIFT: u32 = 62;
const UNTIL_MASK: u64 = (1 << TAG_SHIFT) - 1;
const TAG_CLOSED: u64 = 0b00;
const TAG_OPEN: u64 = 0b01;
const TAG_HALF_OPEN: u64 = 0b10;
/// The Closed word: tag 00, no deadline.
const CLOSED: u64 = TAG_CLOSED << TAG_SHIFT;
/// The HalfOpen word: tag 10, no deadline.
const HALF_OPEN: u64 = TAG_HALF_OPEN << TAG_SHIFT;

/// The latest open-until deadline the state word can hold, in engine milliseconds (2^62 - 1);
/// later deadlines are clamped to it.
///
/// ```
/// assert_eq!(tether::breaker::MAX_UNTIL_MS, (1 << 62) - 1);
/// ```
pub const MAX_UNTIL_MS: u64 = UNTIL_MASK;

/// The Open word for a deadline (clamped to [`MAX_UNTIL_MS`]).
const fn open_word(until_ms: u64) -> u64 {
    let until = if until_ms > MAX_UNTIL_MS {
        MAX_UNTIL_MS
    } else {
        until_ms
    };
    (TAG_OPEN << TAG_SHIFT) | until
}

/// True for the three kinds of word the breaker ever writes.
const fn is_valid(word: u64) -> bool {
    match word >> TAG_SHIFT {
        TAG_CLOSED => word == CLOSED,
        TAG_OPEN => true,
        TAG_HALF_OPEN => word == HALF_OPEN,
        _ => false,
    }
}

/// Reads a state word (always one the breaker wrote).
fn decode(word: u64) -> BreakerState {
    debug_assert!(is_valid(word), "invalid breaker word {word:#018x}");
    match word >> TAG_SHIFT {
        TAG_CLOSED => BreakerState::Closed,
        TAG_OPEN => BreakerState::Open {
            until_ms: word & UNTIL_MASK,
        },
        _ => BreakerState::HalfOpen,
    }
}

/// Settings of a [`Breaker`].
///
/// ```
/// use std::time::Duration;
/// use tether::breaker::BreakerConfig;
///
/// let config = BreakerConfig::default();
/// assert_eq!(config.failure_threshold, 5);
/// assert_eq!(config.cooldown, Duration::from_secs(1));
/// assert_eq!(config.max_cooldown, Duration::from_secs(30));
///
/// let eager = BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() };
/// assert_eq!(eager.cooldown, Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive delivery failures that open a closed breaker. Default 5; 0 counts as 1.
    pub failure_threshold: u32,
    /// The ceiling of the first cooldown; each further trip in a row doubles it. Default 1 s.
    pub cooldown: Duration,
    /// The largest cooldown ceiling. Default 30 s (never below `cooldown`).
    pub max_cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(30),
        }
    }
}

/// What [`BreakerCell::may_deliver`] allows now.
///
/// ```
/// use tether::breaker::{Breaker, BreakerConfig, Permit};
///
/// let breaker = Breaker::new(&BreakerConfig::default());
/// match breaker.cell().may_deliver(0) {
///     Permit::Yes => { /* deliver as usual */ }
///     Permit::Trial => { /* deliver one message if begin_trial(now) returns true */ }
///     Permit::No => { /* leave the messages queued */ }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: deliver.
    Yes,
    /// Open and the cooldown is over: call [`BreakerCell::begin_trial`]; if it returns `true`,
    /// deliver exactly one message, whose outcome the owner reports.
    Trial,
    /// Open and cooling down, or HalfOpen with a trial in flight: deliver nothing.
    No,
}

/// A breaker's state, decoded from its state word.
///
/// ```
/// use tether::breaker::{Breaker, BreakerConfig, BreakerState};
///
/// let config = BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() };
/// let mut breaker = Breaker::new(&config);
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// breaker.record_failure(100);
/// assert!(matches!(breaker.state(), BreakerState::Open { until_ms } if until_ms > 100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Deliveries go through; failures are being counted.
    Closed,
    /// Nothing is delivered before `until_ms` (engine milliseconds); from then on one trial may
    /// be started.
    Open {
        /// When the cooldown ends, in engine milliseconds.
        until_ms: u64,
    },
    /// One trial delivery is in flight; nothing else is delivered until its outcome is reported.
    HalfOpen,
}

/// A transition made by the owner's report, returned so the caller can act on it (schedule a
/// wake-up at `until_ms`, or wake the worker to resume delivering after `Closed`).
///
/// ```
/// use tether::breaker::{Breaker, BreakerConfig, Transition};
///
/// let config = BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() };
/// let mut breaker = Breaker::new(&config);
/// match breaker.record_failure(0) {
///     Some(Transition::Opened { until_ms }) => assert!(until_ms >= 1),
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed or HalfOpen became Open; a trial may start at `until_ms`.
    Opened {
        /// When the cooldown ends, in engine milliseconds.
        until_ms: u64,
    },
    /// HalfOpen became Closed: the trial succeeded and deliveries may resume.
    Closed,
}

/// How many transitions a breaker made (into Open, into HalfOpen, into Closed).
///
/// ```
/// use tether::breaker::{Breaker, BreakerConfig, BreakerCounts};
///
/// let breaker = Breaker::new(&BreakerConfig::default());
/// assert_eq!(breaker.counts(), BreakerCounts::default());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerCounts {
    /// Transitions into Open: trips from Closed plus failed trials.
    pub opens: u64,
    /// Transitions into HalfOpen: trials started.
    pub half_opens: u64,
    /// Transitions into Closed: successful trials.
    pub closes: u64,
}

/// The part of a breaker shared by the owner and the deliverer: the state word and the
/// transition counters. Get one from [`Breaker::cell`].
///
/// ```
/// use tether::breaker::{Breaker, BreakerConfig, Permit};
///
/// let breaker = Breaker::new(&BreakerConfig::default());
/// let cell = breaker.cell().clone(); // give this to the thread that delivers
/// std::thread::spawn(move || assert_eq!(cell.may_deliver(0), Permit::Yes))
///     .join()
///     .unwrap();
/// ```
pub struct BreakerCell {
    /// Tag and open-until deadline; see the module docs for the layout.
    word: AtomicU64,
    opens: AtomicU64,
    half_opens: AtomicU64,
    closes: AtomicU64,
}

impl BreakerCell {
    fn new() -> Self {
        Self {
            word: AtomicU64::new(CLOSED),
            opens: AtomicU64::new(0),
            half_opens: AtomicU64::new(0),
            closes: AtomicU64::new(0),
        }
    }

    /// May a message be delivered at `now_ms` (engine milliseconds)? One atomic load: Closed
    /// gives [`Permit::Yes`]; Open gives [`Permit::No`] before its deadline and
    /// [`Permit::Trial`] from it on; HalfOpen gives [`Permit::No`] (a trial is in flight).
    ///
    /// ```
    /// use tether::breaker::{Breaker, BreakerConfig, Permit, Transition};
    ///
    /// let config = BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() };
    /// let mut breaker = Breaker::new(&config);
    /// assert_eq!(breaker.cell().may_deliver(0), Permit::Yes);
    /// let Some(Transition::Opened { until_ms }) = breaker.record_failure(0) else { panic!() };
    /// assert_eq!(breaker.cell().may_deliver(until_ms - 1), Permit::No);
    /// assert_eq!(breaker.cell().may_deliver(until_ms), Permit::Trial);
    /// ```
    #[inline]
    pub fn may_deliver(&self, now_ms: u64) -> Permit {
        let word = self.word.load(Ordering::Relaxed);
        if word == CLOSED {
            Permit::Yes
        } else if word >> TAG_SHIFT == TAG_OPEN && word & UNTIL_MASK <= now_ms {
            Permit::Trial
        } else {
            Permit::No
        }
    }

    /// Starts the one trial of this open period: moves Open (with its deadline at or before
    /// `now_ms`) to HalfOpen and returns `true`, for exactly one caller. Returns `false` if the
    /// breaker is not Open, is still cooling down, or another caller won.
    ///
    /// Call it only with a message in hand: after `true`, deliver exactly that one message. The
    /// breaker stays HalfOpen, delivering nothing, until the owner reports the outcome.
    ///
    /// ```
    /// use tether::breaker::{Breaker, BreakerConfig, BreakerState, Transition};
    ///
    /// let config = BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() };
    /// let mut breaker = Breaker::new(&config);
    /// let Some(Transition::Opened { until_ms }) = breaker.record_failure(0) else { panic!() };
    /// let cell = breaker.cell();
    /// assert!(!cell.begin_trial(until_ms - 1), "still cooling down");
    /// assert!(cell.begin_trial(until_ms));
    /// assert!(!cell.begin_trial(until_ms), "one trial per open period");
    /// assert_eq!(cell.state(), BreakerState::HalfOpen);
    /// ```
    #[inline]
    pub fn begin_trial(&self, now_ms: u64) -> bool {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if word >> TAG_SHIFT != TAG_OPEN || word & UNTIL_MASK > now_ms {
                return false;
            }
            // Relaxed: only atomicity matters here (exactly one caller swaps this Open word
            // out); see "Orderings" in the module docs.
            match self
                .word
                .compare_exchange(word, HALF_OPEN, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.half_opens.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                // Someone else moved the word: decide again on what it holds now.
                Err(actual) => word = actual,
            }
        }
    }

    /// The current state (one load).
    ///
    /// ```
    /// use tether::breaker::{Breaker, BreakerConfig, BreakerState};
    ///
    /// let breaker = Breaker::new(&BreakerConfig::default());
    /// assert_eq!(breaker.cell().state(), BreakerState::Closed);
    /// ```
    #[inline]
    pub fn state(&self) -> BreakerState {
        decode(self.word.load(Ordering::Relaxed))
    }

    /// The transition counters. Each is bumped right after its transition, so while one is under
    /// way a count may lag [`state`](Self::state) by one.
    ///
    /// ```
    /// use tether::breaker::{Breaker, BreakerConfig, BreakerCounts, Transition};
    ///
    /// let config = BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() };
    /// let mut breaker = Breaker::new(&config);
    /// let Some(Transition::Opened { until_ms }) = breaker.record_failure(0) else { panic!() };
    /// assert!(breaker.cell().begin_trial(until_ms));
    /// breaker.record_success(until_ms);
    /// assert_eq!(
    ///     breaker.cell().counts(),
    ///     BreakerCounts { opens: 1, half_opens: 1, closes: 1 }
    /// );
    /// ```
    pub fn counts(&self) -> BreakerCounts {
        BreakerCounts {
            opens: self.opens.load(Ordering::Relaxed),
            half_opens: self.half_opens.load(Ordering::Relaxed),
            closes: self.closes.load(Ordering::Relaxed),
        }
    }

    /// The raw state word, for tests of its validity.
    #[cfg(test)]
    fn raw(&self) -> u64 {
        self.word.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for BreakerCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerCell")
            .field("state", &self.state())
            .field("counts", &self.counts())
            .finish()
    }
}

/// The owner's side of a session's circuit breaker: it counts consecutive failures and chooses
/// cooldowns. Report every delivery outcome (a frame written, or a write error or timeout) to it;
/// hand [`cell`](Self::cell) to the thread that decides deliveries.
///
/// Cooldowns are drawn from a [`Backoff`] with base `cooldown` and cap
/// `max_cooldown`: trip `n` in a row (from 0) waits a uniformly random time in
/// `[0, min(max_cooldown, cooldown * 2^n)]` ("full jitter", so sessions that failed together do
/// not all probe at once), rounded down to whole milliseconds and raised to at least 1 ms, so an
/// Open breaker always refuses deliveries at the instant it opened. A successful trial resets
/// the schedule.
///
/// ```
/// use std::time::Duration;
/// use tether::breaker::{Breaker, BreakerConfig, BreakerState, Permit, Transition};
///
/// let config = BreakerConfig {
///     failure_threshold: 3,
///     cooldown: Duration::from_millis(100),
///     max_cooldown: Duration::from_secs(5),
/// };
/// let mut breaker = Breaker::new(&config).with_seed(7);
/// let cell = breaker.cell().clone();
/// let mut now = 0;
/// let until = loop {
///     now += 1;
///     if let Some(Transition::Opened { until_ms }) = breaker.record_failure(now) {
///         break until_ms;
///     }
/// };
/// assert_eq!(now, 3);
/// assert!(until > now && until <= now + 100);
///
/// // The trial fails: open again, with a cooldown of up to 200 ms this time.
/// assert!(cell.begin_trial(until));
/// let Some(Transition::Opened { until_ms }) = breaker.record_failure(until + 1) else { panic!() };
/// assert!(until_ms > until + 1 && until_ms <= until + 1 + 200);
/// assert_eq!(cell.may_deliver(until + 1), Permit::No);
/// ```
#[derive(Debug)]
pub struct Breaker {
    cell: Arc<BreakerCell>,
    threshold: u32,
    consecutive: u32,
    backoff: Backoff,
    max_cooldown: Duration,
}

impl Breaker {
    /// A closed breaker with `config`'s settings and a random jitter seed.
    ///
    /// ```
    /// use tether::breaker::{Breaker, BreakerConfig, BreakerState};
    ///
    /// let breaker = Breaker::new(&BreakerConfig::default());
    /// assert_eq!(breaker.state(), BreakerState::Closed);
    /// assert_eq!(breaker.consecutive_failures(), 0);
    /// ```
    pub fn new(config: &BreakerConfig) -> Self {
        Self {
            cell: Arc::new(BreakerCell::new()),
            threshold: config.failure_threshold.max(1),
            consecutive: 0,
            backoff: Backoff::new(config.cooldown, config.max_cooldown),
            max_cooldown: config.max_cooldown.max(config.cooldown),
        }
    }

    /// Fixes the jitter seed, for a reproducible sequence of cooldowns (tests, simulations).
    ///
    /// ```
    /// use tether::breaker::{Breaker, BreakerConfig, Transition};
    ///
    /// let config = BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() };
    /// let mut a = Breaker::new(&config).with_seed(3);
    /// let mut b = Breaker::new(&config).with_seed(3);
    /// assert_eq!(a.record_failure(0), b.record_failure(0));
    /// ```
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.backoff = self.backoff.with_seed(seed);
        self
    }

    /// The shared part: clone the `Arc` for the thread that decides deliveries.
    ///
    /// ```
    /// use tether::breaker::{Breaker, BreakerConfig, Permit};
    ///
    /// let breaker = Breaker::new(&BreakerConfig::default());
    /// let for_worker = breaker.cell().clone();
    /// assert_eq!(for_worker.may_deliver(0), Permit::Yes);
    /// ```
    pub fn cell(&self) -> &Arc<BreakerCell> {
        &self.cell
    }

    /// Reports a successful delivery (a frame written) at `now_ms`.
    ///
    /// - Closed: resets the consecutive-failure count; returns `None`.
    /// - HalfOpen: the trial succeeded; closes the breaker, resets the cooldown schedule and
    ///   returns `Some(Transition::Closed)`: wake the deliverer, there is work again.
    /// - Open: changes nothing (a write decided before the breaker opened); returns `None`.
    ///
    /// `now_ms` is not used yet; it keeps the two reports symmetric for callers and for later
    /// statistics.
    ///
    /// ```
    /// use tether::breaker::{Breaker, BreakerConfig};
    ///
    /// let mut breaker = Breaker::new(&BreakerConfig::default());
    /// breaker.record_failure(1);
    /// breaker.record_failure(2);
    /// assert_eq!(breaker.consecutive_failures(), 2);
    /// assert_eq!(breaker.record_success(3), None);
    /// assert_eq!(breaker.consecutive_failures(), 0);
    /// ```
    pub fn record_success(&mut self, now_ms: u64) -> Option<Transition> {
        let _ = now_ms;
        self.consecutive = 0;
        let mut word = self.cell.word.load(Ordering::Relaxed);
        loop {
            if word != HALF_OPEN {
                // Closed (count reset above) or Open (nothing to do).
                return None;
            }
            // Relaxed: the word guards no other memory; see "Orderings" in the module docs.
            match self.cell.word.compare_exchange(
                word,
                CLOSED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.backoff.reset();
                    self.cell.closes.fetch_add(1, Ordering::Relaxed);
                    return Some(Transition::Closed);
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// Reports a failed delivery (a write error or a write timeout) at `now_ms`.
    ///
    /// - Closed: counts it; at `failure_threshold` consecutive failures opens the breaker for
    ///   the next cooldown and returns `Some(Transition::Opened { until_ms })`, else `None`.
    /// - HalfOpen: the trial failed; opens the breaker again with the next, longer cooldown
    ///   (capped at `max_cooldown`) and returns `Some(Transition::Opened { until_ms })`. A
    ///   failure of an older write that arrives while the trial is in flight counts as the
    ///   trial's: the breaker errs towards staying open.
    /// - Open: changes nothing (a write decided before the breaker opened); returns `None`.
    ///
    /// ```
    /// use tether::breaker::{Breaker, BreakerConfig, Transition};
    ///
    /// let config = BreakerConfig { failure_threshold: 2, ..BreakerConfig::default() };
    /// let mut breaker = Breaker::new(&config);
    /// assert_eq!(breaker.record_failure(0), None);
    /// assert!(matches!(breaker.record_failure(0), Some(Transition::Opened { .. })));
    /// assert_eq!(breaker.record_failure(0), None, "already open");
    /// ```
    pub fn record_failure(&mut self, now_ms: u64) -> Option<Transition> {
        let mut word = self.cell.word.load(Ordering::Relaxed);
        let mut counted = false;
        let mut until = None;
        loop {
            match word >> TAG_SHIFT {
                TAG_CLOSED => {
                    if !counted {
                        self.consecutive = self.consecutive.saturating_add(1);
                        counted = true;
                    }
                    if self.consecutive < self.threshold {
                        return None;
                    }
                }
                TAG_HALF_OPEN => {}
                // Open: the session is not being delivered to; this is an older write's failure.
                _ => return None,
            }
            // Drawn once, even if the CAS has to be retried, so a retry does not skip a step of
            // the schedule.
            let until_ms = match until {
                Some(u) => u,
                None => *until.insert(self.next_until(now_ms)),
            };
            // Relaxed: the word guards no other memory; see "Orderings" in the module docs.
            match self.cell.word.compare_exchange(
                word,
                open_word(until_ms),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.consecutive = 0;
                    self.cell.opens.fetch_add(1, Ordering::Relaxed);
                    return Some(Transition::Opened { until_ms });
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// The current state (one load of the shared word).
    ///
    /// ```
    /// use tether::breaker::{Breaker, BreakerConfig, BreakerState};
    ///
    /// let breaker = Breaker::new(&BreakerConfig::default());
    /// assert_eq!(breaker.state(), BreakerState::Closed);
    /// ```
    pub fn state(&self) -> BreakerState {
        self.cell.state()
    }

    /// The transition counters; see [`BreakerCell::counts`].
    ///
    /// ```
    /// use tether::breaker::{Breaker, BreakerConfig};
    ///
    /// let config = BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() };
    /// let mut breaker = Breaker::new(&config);
    /// breaker.record_failure(0);
    /// assert_eq!(breaker.counts().opens, 1);
    /// ```
    pub fn counts(&self) -> BreakerCounts {
        self.cell.counts()
    }

    /// Failures counted in a row while Closed (0 after a success or a trip).
    ///
    /// ```
    /// use tether::breaker::{Breaker, BreakerConfig};
    ///
    /// let mut breaker = Breaker::new(&BreakerConfig::default());
    /// breaker.record_failure(0);
    /// assert_eq!(breaker.consecutive_failures(), 1);
    /// ```
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    /// The deadline of the next open period starting at `now_ms`: the next jittered cooldown of
    /// the schedule, in whole milliseconds, at least 1.
    fn next_until(&mut self, now_ms: u64) -> u64 {
        // `Backoff` without an attempt limit always yields; the cap is the safe fallback.
        let delay = self.backoff.next_delay().unwrap_or(self.max_cooldown);
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
        now_ms.saturating_add(ms).min(MAX_UNTIL_MS)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const SEED: u64 = 0x5eed;

    fn config(threshold: u32, cooldown_ms: u64, max_ms: u64) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: threshold,
            cooldown: Duration::from_millis(cooldown_ms),
            max_cooldown: Duration::from_millis(max_ms),
        }
    }

    /// The cooldowns the breaker must draw: the same seeded schedule, in whole ms, at least 1.
    fn mirror(cfg: &BreakerConfig) -> Backoff {
        Backoff::new(cfg.cooldown, cfg.max_cooldown).with_seed(SEED)
    }

    fn ms(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap().max(1)
    }

    fn opened(t: Option<Transition>) -> u64 {
        match t {
            Some(Transition::Opened { until_ms }) => until_ms,
            other => panic!("expected Opened, got {other:?}"),
        }
    }

    /// Trips a closed breaker with `threshold` failures at `now`; returns the deadline.
    fn trip(b: &mut Breaker, now: u64) -> u64 {
        for _ in 1..b.threshold {
            assert_eq!(b.record_failure(now), None);
        }
        opened(b.record_failure(now))
    }

    #[test]
    fn word_layout_round_trips_and_rejects_the_unused_tag() {
        assert_eq!(CLOSED, 0);
        assert_eq!(HALF_OPEN, 1 << 63);
        assert_eq!(open_word(1234), 1 << 62 | 1234);
        assert_eq!(decode(CLOSED), BreakerState::Closed);
        assert_eq!(decode(HALF_OPEN), BreakerState::HalfOpen);
        assert_eq!(
            decode(open_word(1234)),
            BreakerState::Open { until_ms: 1234 }
        );
        assert_eq!(
            decode(open_word(u64::MAX)),
            BreakerState::Open {
                until_ms: MAX_UNTIL_MS
            }
        );
        for w in [CLOSED, HALF_OPEN, open_word(0), open_word(u64::MAX)] {
            assert!(is_valid(w), "{w:#x}");
        }
        for w in [3 << 62, u64::MAX, 1, HALF_OPEN | 1] {
            assert!(!is_valid(w), "{w:#x}");
        }
    }

    #[test]
    fn defaults_and_degenerate_settings() {
        let d = BreakerConfig::default();
        assert_eq!(d, config(5, 1000, 30_000));
        // A threshold of 0 acts as 1; a zero cooldown still opens for 1 ms.
        let mut b = Breaker::new(&config(0, 0, 0)).with_seed(SEED);
        assert_eq!(
            b.record_failure(50),
            Some(Transition::Opened { until_ms: 51 })
        );
        assert_eq!(b.cell().may_deliver(50), Permit::No);
        assert_eq!(b.cell().may_deliver(51), Permit::Trial);
        // Deadlines beyond the word's range are clamped.
        let mut b = Breaker::new(&config(1, 1000, 1000)).with_seed(SEED);
        assert_eq!(
            b.record_failure(u64::MAX - 1),
            Some(Transition::Opened {
                until_ms: MAX_UNTIL_MS
            })
        );
        assert!(is_valid(b.cell().raw()));
    }

    #[test]
    fn opens_at_exactly_the_threshold_not_before() {
        let cfg = BreakerConfig::default();
        let mut b = Breaker::new(&cfg).with_seed(SEED);
        for i in 1..5 {
            assert_eq!(b.record_failure(i), None);
            assert_eq!(b.consecutive_failures(), i as u32);
            assert_eq!(b.state(), BreakerState::Closed);
            assert_eq!(b.cell().may_deliver(i), Permit::Yes);
        }
        let until = opened(b.record_failure(5));
        assert_eq!(until, 5 + ms(mirror(&cfg).next_delay().unwrap()));
        assert!(until <= 5 + 1000);
        assert_eq!(b.state(), BreakerState::Open { until_ms: until });
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.counts().opens, 1);
    }

    #[test]
    fn success_in_closed_resets_the_count() {
        let mut b = Breaker::new(&config(3, 100, 1000)).with_seed(SEED);
        for round in 0..10 {
            assert_eq!(b.record_failure(round), None);
            assert_eq!(b.record_failure(round), None);
            assert_eq!(b.record_success(round), None);
            assert_eq!(b.consecutive_failures(), 0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.counts(), BreakerCounts::default());
        trip(&mut b, 20);
    }

    #[test]
    fn open_permits_a_trial_only_after_the_cooldown() {
        let mut b = Breaker::new(&config(1, 1000, 30_000)).with_seed(SEED);
        let now = 10_000;
        let until = trip(&mut b, now);
        assert!(until > now);
        let cell = b.cell().clone();
        for t in [now, now + 1, until - 1] {
            assert_eq!(cell.may_deliver(t), Permit::No, "at {t}");
            assert!(!cell.begin_trial(t), "at {t}");
        }
        assert_eq!(b.state(), BreakerState::Open { until_ms: until });
        assert_eq!(cell.may_deliver(until), Permit::Trial);
        assert_eq!(cell.may_deliver(until + 5000), Permit::Trial);
        assert_eq!(cell.counts().half_opens, 0, "checking starts nothing");
        assert!(cell.begin_trial(until));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn exactly_one_trial_per_open_period() {
        let mut b = Breaker::new(&config(1, 10, 100)).with_seed(SEED);
        let until = trip(&mut b, 0);
        let cell = b.cell();
        assert!(cell.begin_trial(until));
        for t in [until, until + 1, u64::MAX] {
            assert!(!cell.begin_trial(t));
            assert_eq!(cell.may_deliver(t), Permit::No, "trial in flight");
        }
        assert_eq!(cell.counts().half_opens, 1);
        // Failures and successes of older writes while Open change nothing.
        let mut b = Breaker::new(&config(1, 10, 100)).with_seed(SEED);
        let until = trip(&mut b, 0);
        assert_eq!(b.record_failure(1), None);
        assert_eq!(b.record_success(2), None);
        assert_eq!(b.state(), BreakerState::Open { until_ms: until });
        assert_eq!(b.counts().opens, 1);
    }

    #[test]
    fn half_open_success_closes_and_resets_the_backoff() {
        let cfg = config(2, 100, 10_000);
        let mut expect = mirror(&cfg);
        let mut b = Breaker::new(&cfg).with_seed(SEED);
        let mut now = 0;
        // Trip, then fail the trial twice: the schedule is at its third step.
        let mut until = trip(&mut b, now);
        assert_eq!(until - now, ms(expect.next_delay().unwrap()));
        for _ in 0..2 {
            now = until;
            assert!(b.cell().begin_trial(now));
            until = opened(b.record_failure(now));
            assert_eq!(until - now, ms(expect.next_delay().unwrap()));
        }
        now = until;
        assert!(b.cell().begin_trial(now));
        assert_eq!(b.record_success(now), Some(Transition::Closed));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.cell().may_deliver(now), Permit::Yes);
        assert_eq!(b.consecutive_failures(), 0);
        // Closed again: the threshold counts from zero and the schedule starts over.
        expect.reset();
        assert_eq!(b.record_failure(now), None);
        let until = opened(b.record_failure(now));
        assert_eq!(until - now, ms(expect.next_delay().unwrap()));
        assert!(until - now <= 100, "first step again");
        assert_eq!(
            b.counts(),
            BreakerCounts {
                opens: 4,
                half_opens: 3,
                closes: 1
            }
        );
    }

    #[test]
    fn half_open_failure_reopens_with_a_longer_cooldown_capped_at_max() {
        let cfg = config(1, 1000, 30_000);
        let mut expect = mirror(&cfg);
        let mut b = Breaker::new(&cfg).with_seed(SEED);
        let mut now = 0;
        let mut until = trip(&mut b, now);
        let mut cooldowns = vec![until - now];
        for _ in 0..12 {
            now = until + 3;
            assert_eq!(b.cell().may_deliver(now), Permit::Trial);
            assert!(b.cell().begin_trial(now));
            until = opened(b.record_failure(now));
            assert_eq!(b.cell().may_deliver(now), Permit::No);
            cooldowns.push(until - now);
        }
        // The cooldowns are the seeded schedule's: full jitter under a ceiling that doubles
        // from 1 s and stops at 30 s.
        let ceilings: Vec<u64> = (0..13).map(|n| ms(expect.ceiling(n))).collect();
        assert_eq!(
            ceilings,
            [
                1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000, 30_000, 30_000, 30_000,
                30_000, 30_000
            ]
        );
        for (n, &c) in cooldowns.iter().enumerate() {
            assert_eq!(c, ms(expect.next_delay().unwrap()), "trip {n}");
            assert!((1..=ceilings[n]).contains(&c), "trip {n}: {c}");
        }
        // Longer on average: the capped tail waits far longer than the first trip's ceiling.
        let tail: u64 = cooldowns[5..].iter().sum::<u64>() / 8;
        assert!(tail > 1000, "{cooldowns:?}");
        assert_eq!(
            b.counts(),
            BreakerCounts {
                opens: 13,
                half_opens: 12,
                closes: 0
            }
        );
    }

    #[test]
    fn counters_count_every_transition() {
        let mut b = Breaker::new(&config(2, 5, 50)).with_seed(SEED);
        let mut now = 0;
        let mut expected = BreakerCounts::default();
        for round in 0..100u64 {
            now += 1;
            let until = trip(&mut b, now);
            expected.opens += 1;
            now = until;
            assert!(b.cell().begin_trial(now));
            expected.half_opens += 1;
            if round % 3 == 0 {
                let until = opened(b.record_failure(now));
                expected.opens += 1;
                now = until;
                assert!(b.cell().begin_trial(now));
                expected.half_opens += 1;
            }
            assert_eq!(b.record_success(now), Some(Transition::Closed));
            expected.closes += 1;
            assert_eq!(b.counts(), expected);
        }
        assert_eq!(expected.opens, 134);
    }

    #[test]
    fn failure_storm_counts_opens_and_caps_cooldowns() {
        let cfg = config(5, 1000, 30_000);
        let mut b = Breaker::new(&cfg).with_seed(SEED);
        let cell = b.cell().clone();
        let (mut now, mut opens, mut trials, mut longest) = (0u64, 0u64, 0u64, 0u64);
        for i in 0..10_000u64 {
            now += 97; // the storm outlasts several cooldowns
            if cell.may_deliver(now) == Permit::Trial {
                assert!(cell.begin_trial(now));
                trials += 1;
            }
            let state = b.state();
            match b.record_failure(now) {
                Some(Transition::Opened { until_ms }) => {
                    assert!(
                        matches!(state, BreakerState::HalfOpen)
                            || (state == BreakerState::Closed && i == 4),
                        "opened from {state:?} at failure {i}"
                    );
                    opens += 1;
                    longest = longest.max(until_ms - now);
                    assert!((1..=30_000).contains(&(until_ms - now)));
                }
                None => assert!(
                    matches!(state, BreakerState::Open { .. })
                        || (state == BreakerState::Closed && i < 4),
                    "ignored in {state:?} at failure {i}"
                ),
                Some(Transition::Closed) => panic!("a failure closed the breaker"),
            }
            assert!(is_valid(cell.raw()), "{:#x}", cell.raw());
        }
        let counts = cell.counts();
        assert_eq!(counts.opens, opens);
        assert_eq!(
            counts.opens,
            1 + trials,
            "one trip, then one per failed trial"
        );
        assert_eq!(counts.half_opens, trials);
        assert_eq!(counts.closes, 0);
        assert!(trials > 10, "{trials}");
        assert!(longest <= 30_000 && longest > 16_000, "{longest}");
    }

    /// Several threads race for the trial of each open period: exactly one wins each time.
    #[test]
    fn racing_trial_callers_have_one_winner() {
        use std::sync::Barrier;
        let mut b = Breaker::new(&config(1, 1, 1)).with_seed(SEED);
        let cell = b.cell().clone();
        let barrier = Barrier::new(3);
        let rounds = 200u64;
        std::thread::scope(|s| {
            let callers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut wins = 0u64;
                        for _ in 0..rounds {
                            barrier.wait(); // the breaker is open and due
                            wins += u64::from(
                                cell.may_deliver(u64::MAX) == Permit::Trial
                                    && cell.begin_trial(u64::MAX),
                            );
                            barrier.wait(); // the owner may report
                        }
                        wins
                    })
                })
                .collect();
            for round in 0..rounds {
                opened(b.record_failure(round));
                barrier.wait();
                barrier.wait();
                assert_eq!(b.state(), BreakerState::HalfOpen, "round {round}");
                if round % 2 == 0 {
                    assert_eq!(b.record_success(round), Some(Transition::Closed));
                }
            }
            let wins: u64 = callers.into_iter().map(|c| c.join().unwrap()).sum();
            assert_eq!(wins, rounds);
        });
        assert_eq!(
            b.counts(),
            BreakerCounts {
                opens: rounds,
                half_opens: rounds,
                closes: rounds / 2
            }
        );
    }
}

#[cfg(all(test, loom))]
mod loom_breaker {
    use super::*;
    use crate::loom::thread;

    /// Cooldowns of 1..=4 ms from owner time 0, so every open period is due at worker time 100.
    fn small() -> Breaker {
        let config = BreakerConfig {
            failure_threshold: 1,
            cooldown: Duration::from_millis(2),
            max_cooldown: Duration::from_millis(4),
        };
        Breaker::new(&config).with_seed(11)
    }

    /// Reports one outcome; returns the transition and whether the owner saw Closed first.
    fn report(breaker: &mut Breaker, fail: bool) -> (Option<Transition>, bool) {
        assert!(is_valid(breaker.cell().raw()));
        // Only the owner leaves Closed, so "Closed" here is still true at its CAS.
        let was_closed = breaker.state() == BreakerState::Closed;
        let t = if fail {
            breaker.record_failure(0)
        } else {
            breaker.record_success(0)
        };
        if let Some(Transition::Opened { until_ms }) = t {
            assert!((1..=4).contains(&until_ms), "{until_ms}");
        }
        (t, was_closed)
    }

    /// The integration's shape. The owner trips the breaker, then reports the failure of an
    /// older write, which races the worker's start of the trial; then it waits for the trial
    /// message (handed over Release/Acquire, as the outbox ring does) and reports its success.
    /// The worker checks and starts trials until it has delivered one, then looks once more.
    ///
    /// Every word either side sees is valid; the report made after the trial's hand-off finds
    /// the trial (it closes the breaker) unless the racing failure already counted as the
    /// trial's; and once both are done the counters agree with what each side saw: every open
    /// period had exactly one trial, except one still open.
    #[test]
    fn loom_breaker_owner_races_worker() {
        loom::model(|| {
            let mut breaker = small();
            let cell = breaker.cell().clone();
            // Stands in for the outbox: trial messages handed to the session.
            let delivered = Arc::new(AtomicU64::new(0));
            let worker = {
                let delivered = delivered.clone();
                thread::spawn(move || {
                    let (mut wins, mut looked_again) = (0u64, false);
                    loop {
                        assert!(is_valid(cell.raw()));
                        if cell.may_deliver(100) == Permit::Trial && cell.begin_trial(100) {
                            wins += 1;
                            // Release: as the outbox ring publishes a message.
                            delivered.fetch_add(1, Ordering::Release);
                        }
                        if wins == 0 {
                            thread::yield_now(); // nothing to do yet: "park"
                        } else if looked_again {
                            return wins;
                        } else {
                            looked_again = true;
                        }
                    }
                })
            };

            let (tripped, from_closed) = report(&mut breaker, true);
            assert!(matches!(tripped, Some(Transition::Opened { .. })) && from_closed);
            // Give the worker a turn here. Loom's DPOR remembers only the last access to the
            // word, so on its own it never tries the worker's trial CAS before the owner's next
            // load (the worker's own loads hide the race); with this yield it tries both orders.
            thread::yield_now();
            let (stale, stale_from_closed) = report(&mut breaker, true);
            assert!(!stale_from_closed);
            // Acquire: as the session takes the trial message from the outbox.
            while delivered.load(Ordering::Acquire) == 0 {
                thread::yield_now();
            }
            let (outcome, _) = report(&mut breaker, false);
            let wins = worker.join().unwrap();

            if stale.is_none() {
                // The racing failure came before the trial: the trial's success, reported after
                // its hand-off, must find HalfOpen (coherence; see "Orderings").
                assert_eq!(outcome, Some(Transition::Closed));
                assert_eq!(wins, 1);
            }
            let opens = 1 + u64::from(stale.is_some());
            let closes = u64::from(outcome.is_some());
            let state = breaker.state();
            let counts = breaker.counts();
            assert_eq!(counts.opens, opens);
            assert_eq!(counts.closes, closes);
            assert_eq!(counts.half_opens, wins);
            // Each open period ended in exactly one trial, except one still open now.
            let still_open = u64::from(matches!(state, BreakerState::Open { .. }));
            assert_eq!(counts.opens, counts.half_opens + still_open, "{state:?}");
            // Each trial ended in a close or a reopen, except one still in flight now.
            let in_flight = u64::from(state == BreakerState::HalfOpen);
            assert_eq!(
                counts.half_opens,
                counts.closes + (opens - 1) + in_flight,
                "{state:?}"
            );
        });
    }

    /// Two callers race for the trial of one due open period: exactly one wins, and the owner's
    /// report of its failure reopens the breaker.
    #[test]
    fn loom_breaker_one_trial_between_two_callers() {
        loom::model(|| {
            let mut breaker = small();
            assert!(breaker.record_failure(0).is_some());
            let cell = breaker.cell().clone();
            let other = thread::spawn(move || {
                cell.may_deliver(100) == Permit::Trial && cell.begin_trial(100)
            });
            let mine =
                breaker.cell().may_deliver(100) == Permit::Trial && breaker.cell().begin_trial(100);
            let theirs = other.join().unwrap();
            assert!(
                mine ^ theirs,
                "exactly one trial: mine {mine}, theirs {theirs}"
            );
            assert_eq!(breaker.state(), BreakerState::HalfOpen);
            assert!(breaker.record_failure(100).is_some());
            assert_eq!(
                breaker.counts(),
                BreakerCounts {
                    opens: 2,
                    half_opens: 1,
                    closes: 0
                }
            );
        });
    }
}
