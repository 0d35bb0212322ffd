//! Publish rate limits: token buckets that live in the server, not in a connection, so that a
//! client that reconnects finds its bucket as it left it.
//!
//! WebSocket publishes are limited per user ([`PerUser`], `publish_rate`/`publish_burst`);
//! HTTP publishes per API key (`http_publish_rate`/`http_publish_burst`; the server has one
//! key, so one [`Bucket`]).
//!
//! The per-user map is bounded without losing anything: a bucket that has refilled to its
//! burst says nothing a new bucket would not, so it may be forgotten. The map keeps only
//! users that published within the last `burst / rate` seconds (2 s at the defaults); when a
//! shard of it is full it first forgets its refilled buckets, and only if none is refilled
//! refuses the publish (fail closed: an unknown user must not get a fresh burst).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::UserId;

/// Shards of the per-user map, so connections of different users rarely share a lock.
const SHARDS: usize = 16;

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A refill rate and a bucket size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rate {
    per_sec: f64,
    burst: f64,
}

impl Rate {
    pub(crate) fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
        }
    }

    /// A full bucket, as of `now`.
    pub(crate) fn full(&self, now: Instant) -> Bucket {
        Bucket {
            tokens: self.burst,
            at: now,
        }
    }

    /// Whether `n` tokens can ever be taken at once.
    pub(crate) fn fits(&self, n: u32) -> bool {
        f64::from(n) <= self.burst
    }
}

impl Bucket {
    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.at = now;
    }

    /// Takes `n` tokens, or says how long until there are `n`.
    pub(crate) fn take(&mut self, n: u32, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        let n = f64::from(n);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / rate.per_sec))
        }
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * rate.per_sec >= rate.burst
    }
}

/// One bucket per user that published recently.
pub(crate) struct PerUser {
    rate: Rate,
    /// Users kept per shard at most.
    shard_capacity: usize,
    hasher: ahash::RandomState,
    shards: Box<[Mutex<HashMap<UserId, Bucket>>]>,
}

impl PerUser {
    /// Keeps at most about `capacity` users (rounded up to a multiple of the shards).
    pub(crate) fn new(rate: Rate, capacity: usize) -> Self {
        Self {
            rate,
            shard_capacity: capacity.div_ceil(SHARDS).max(1),
            hasher: ahash::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Takes one token from `user`'s bucket; false if it is empty (or the map is full of
    /// users that all published within the last `burst / rate` seconds).
    pub(crate) fn allow(&self, user: &UserId, now: Instant) -> bool {
        let shard = &self.shards[self.hasher.hash_one(user) as usize % SHARDS];
        let mut buckets = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get_mut(user) {
            return bucket.take(1, self.rate, now).is_ok();
        }
        if buckets.len() >= self.shard_capacity {
            buckets.retain(|_, b| !b.is_full(self.rate, now));
            if buckets.len() >= self.shard_capacity {
                return false;
            }
        }
        let mut bucket = self.rate.full(now);
        let allowed = bucket.take(1, self.rate, now).is_ok();
        buckets.insert(user.clone(), bucket);
        allowed
    }

    /// Users with a bucket now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    #[test]
    fn a_bucket_admits_its_burst_then_refills_at_the_rate() {
        let rate = Rate::new(2, 3);
        let t0 = Instant::now();
        let mut b = rate.full(t0);
        assert_eq!(b.take(3, rate, t0), Ok(()));
        let wait = b.take(1, rate, t0).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(b.take(1, rate, t0 + Duration::from_millis(500)), Ok(()));
        assert!(!rate.fits(4) && rate.fits(3));
    }

    #[test]
    fn a_user_keeps_its_bucket_and_refilled_buckets_make_room() {
        let per = PerUser::new(Rate::new(1, 2), SHARDS);
        let t0 = Instant::now();
        let alice = user("alice");
        assert!(per.allow(&alice, t0) && per.allow(&alice, t0));
        assert!(!per.allow(&alice, t0), "the burst is spent");
        // One user per shard at most: fill every shard with spent buckets.
        let mut others = (0..1000).map(|i| user(&format!("u{i}")));
        let mut refused = 0;
        for u in others.by_ref() {
            if !per.allow(&u, t0) {
                refused += 1;
            }
        }
        assert!(
            refused > 0,
            "a full map refuses rather than forgets a spent bucket"
        );
        assert!(per.len() <= SHARDS);
        // Two seconds later every bucket has refilled: they make room for new users.
        let later = t0 + Duration::from_secs(2);
        assert!(per.allow(&user("newcomer"), later));
        assert!(per.len() <= SHARDS);
    }
}
