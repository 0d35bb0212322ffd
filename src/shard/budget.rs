//! The engine-wide memory budget for held payload bytes, shared by shards without contention.
//!
//! Each shard worker keeps its own usage in a plain integer and publishes it (Relaxed) to its
//! own padded slot once per loop; at the start of a loop it sums the other shards' slots. Its
//! view of the total is therefore exact for its own bytes and at most one loop old for the
//! others', which bounds the overshoot to what the other shards admit in one batch. With one
//! shard the budget is exact. The alternative, one shared counter updated per message, would
//! put a contended read-modify-write on every send.

use crossbeam_utils::CachePadded;

use crate::config::ShedThresholds;
use crate::loom::{Arc, AtomicU64, Ordering};
use crate::Priority;

pub(crate) struct Budget {
    limit: u64,
    /// Per priority: admit while held bytes after the message stay at or under this.
    thresholds: [u64; 4],
    used: Box<[CachePadded<AtomicU64>]>,
}

impl Budget {
    pub(crate) fn new(limit: u64, shed: ShedThresholds, shards: usize) -> Arc<Self> {
        let at = |f: f64| ((limit as f64) * f) as u64;
        Arc::new(Self {
            limit,
            thresholds: [limit, at(shed.high), at(shed.normal), at(shed.low)],
            used: (0..shards)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        })
    }

    /// Bytes held engine-wide, as last published by the shards.
    pub(crate) fn used(&self) -> u64 {
        self.used.iter().map(|u| u.load(Ordering::Relaxed)).sum()
    }

    /// The budget.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// The view of shard `shard` (an associated function: loom's `Arc` cannot be a receiver).
    pub(crate) fn view(budget: &Arc<Self>, shard: usize) -> BudgetView {
        BudgetView {
            budget: budget.clone(),
            shard,
            local: 0,
            others: 0,
        }
    }
}

/// One shard worker's view of the budget.
pub(crate) struct BudgetView {
    budget: Arc<Budget>,
    shard: usize,
    local: u64,
    others: u64,
}

impl BudgetView {
    /// Re-reads the other shards' usage; once per worker loop.
    pub(crate) fn refresh(&mut self) {
        if self.budget.used.len() > 1 {
            self.others = self.budget.used() - self.budget.used[self.shard].load(Ordering::Relaxed);
        }
    }

    /// Whether a message of `priority` holding `bytes` may be admitted now.
    pub(crate) fn admits(&self, priority: Priority, bytes: usize) -> bool {
        self.others + self.local + bytes as u64 <= self.budget.thresholds[priority.index()]
    }

    /// Records a change in the bytes this shard holds.
    pub(crate) fn adjust(&mut self, before: usize, after: usize) {
        self.local = self.local + after as u64 - before as u64;
    }

    /// Bytes this shard holds.
    pub(crate) fn local(&self) -> u64 {
        self.local
    }

    /// Records bytes this shard no longer holds.
    pub(crate) fn release(&mut self, bytes: u64) {
        self.local -= bytes;
    }

    /// Publishes this shard's usage; once per worker loop.
    pub(crate) fn publish(&self) {
        self.budget.used[self.shard].store(self.local, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn sheds_low_first_and_critical_last() {
        let budget = Budget::new(1000, ShedThresholds::default(), 1);
        let mut view = Budget::view(&budget, 0);
        view.adjust(0, 600);
        assert!(view.admits(Priority::Low, 0));
        assert!(!view.admits(Priority::Low, 1));
        assert!(view.admits(Priority::Normal, 200));
        assert!(!view.admits(Priority::Normal, 201));
        assert!(view.admits(Priority::High, 350));
        assert!(!view.admits(Priority::High, 351));
        assert!(view.admits(Priority::Critical, 400));
        assert!(!view.admits(Priority::Critical, 401));
    }

    #[test]
    fn sees_other_shards_after_refresh() {
        let budget = Budget::new(1000, ShedThresholds::default(), 2);
        let (mut a, mut b) = (Budget::view(&budget, 0), Budget::view(&budget, 1));
        a.adjust(0, 900);
        a.publish();
        assert!(b.admits(Priority::Critical, 1000), "not refreshed yet");
        b.refresh();
        assert!(b.admits(Priority::Critical, 100));
        assert!(!b.admits(Priority::Critical, 101));
        assert_eq!(budget.used(), 900);
    }
}
