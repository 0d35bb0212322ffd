//! [`wheel_ops`]: the timing wheel against a `BTreeMap` of deadlines.
//!
//! Input: operations of 3 bytes. `op % 4`: 0 and 1 insert with a delta drawn from a span that
//! the second byte picks (10 ms up to far past the wheel's horizon) scaled by the third; 2
//! cancels the pending entry the next bytes pick (or a stale handle); 3 advances time by a
//! step the next bytes pick (1 ms up to days, so every level boundary and wrap is crossed).
//! After each advance the wheel must have fired exactly the entries whose deadline passed,
//! and `next_deadline` must never lie after the earliest pending deadline.

use std::collections::BTreeMap;

use crate::time::{TimerHandle, Wheel};

/// The furthest deadline the wheel represents, as in `wheel.rs`.
const HORIZON: u64 = 1 << 36;
const MAX_OPS: usize = 4096;

/// Runs `data` as wheel operations and checks them against the model.
pub fn wheel_ops(data: &[u8]) {
    let mut wheel = Wheel::new();
    let mut model: BTreeMap<u32, u64> = BTreeMap::new();
    let mut handles: Vec<(TimerHandle, u32)> = Vec::new();
    let mut stale: Vec<TimerHandle> = Vec::new();
    let (mut now, mut next_id) = (0u64, 0u32);
    let mut fired = Vec::new();
    for op in data.chunks_exact(3).take(MAX_OPS) {
        let (a, b) = (u64::from(op[1]), u64::from(op[2]));
        match op[0] % 4 {
            0 | 1 => {
                let spans = [10, 64, 4_096, 262_144, 16_777_216, HORIZON, u64::MAX / 4];
                let span = spans[(a % spans.len() as u64) as usize];
                let delta = span / 256 * b + b % 7;
                let deadline = now.saturating_add(delta);
                handles.push((wheel.insert(deadline, next_id), next_id));
                model.insert(next_id, deadline.min(now + HORIZON - 1));
                next_id += 1;
            }
            2 => {
                if handles.is_empty() || a % 5 == 0 {
                    if let Some(h) = stale.get((b as usize) % stale.len().max(1)) {
                        assert_eq!(wheel.cancel(*h), None, "a stale handle cancels nothing");
                    }
                    continue;
                }
                let (h, id) = handles.swap_remove((a * 256 + b) as usize % handles.len());
                let expected = model.remove(&id).map(|_| id);
                assert_eq!(wheel.cancel(h), expected, "cancel {id}");
                stale.push(h);
            }
            _ => {
                let steps = [1, 63, 64, 4_095, 4_096, 262_144, 3_600_000, 86_400_000];
                now += steps[(a % steps.len() as u64) as usize] * (1 + b % 3);
                fired.clear();
                wheel.advance(now, &mut fired);
                fired.sort_unstable();
                let due: Vec<u32> = model
                    .iter()
                    .filter(|(_, d)| **d <= now)
                    .map(|(id, _)| *id)
                    .collect();
                for id in &due {
                    model.remove(id);
                }
                assert_eq!(fired, due, "fired at {now}");
                handles.retain(|(h, id)| {
                    let pending = model.contains_key(id);
                    if !pending {
                        stale.push(*h);
                    }
                    pending
                });
                if let Some(next) = wheel.next_deadline() {
                    let earliest = *model.values().min().expect("the wheel has entries");
                    assert!(
                        next <= earliest,
                        "sleeps past a deadline: {next} > {earliest}"
                    );
                    assert!(next > now, "nothing due is left behind");
                }
            }
        }
        assert_eq!(wheel.len(), model.len(), "pending entries");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed in the corpus passes.
    #[test]
    fn wheel_corpus_replays() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/wheel_ops");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("the seed corpus exists") {
            let data = std::fs::read(entry.expect("readable").path()).expect("readable seed");
            wheel_ops(&data);
            n += 1;
        }
        assert!(n >= 5, "only {n} seeds");
    }

    /// Fixed-seed random inputs, so the model check runs under `cargo test`.
    #[test]
    fn wheel_random_inputs_match_the_model() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let len = 3 * (1 + (next() % 2000) as usize);
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            wheel_ops(&data);
        }
    }
}
