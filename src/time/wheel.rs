//! A hierarchical timing wheel: one per shard, driving message TTLs, away-mailbox expiry, idle
//! cleanup and the breaker and retry timers.
//!
//! The design is Varghese & Lauck's hierarchical wheel ("Hashed and Hierarchical Timing Wheels",
//! 1987) in the shape of tokio's `runtime/time/wheel` and Kafka's `TimingWheel`:
//!
//! - time is counted in 1 ms ticks since the wheel's start;
//! - `LEVELS` = 6 levels of `SLOTS` = 64 slots; a slot at level `l` spans `64^l` ms, a whole
//!   level `64^(l+1)` ms, so the wheel reaches `64^6` ms (about 2.2 years; later deadlines are
//!   clamped to that horizon);
//! - an entry goes to the level of the highest 6-bit digit in which its deadline differs from
//!   the current time, and to the slot given by that digit of its deadline. As time advances,
//!   a slot of a higher level is emptied and its entries are placed again, lower (they
//!   "cascade"), or returned if due;
//! - each level keeps an `occupied: u64` bitmap, so finding the next non-empty slot is a
//!   rotate and a `trailing_zeros`, never a scan;
//! - each slot is an intrusive doubly linked list threaded through a slab of entries, so insert
//!   and cancel are O(1); a handle carries the slab index and a generation so that cancelling
//!   an entry that already fired (or was cancelled) is detected and does nothing.
//!
//! Advancing to `now` costs O(entries returned + entries cascaded + levels), and every entry
//! cascades at most `LEVELS - 1` times in its life, whatever time does in between (a laptop
//! that sleeps for hours wakes up to a handful of slot visits, not millions of ticks).

const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
const LEVELS: usize = 6;
/// The furthest deadline the wheel represents, in ticks from its current time.
const HORIZON: u64 = 1 << (SLOT_BITS as usize * LEVELS);
const NIL: u32 = u32::MAX;

/// Identifies one inserted entry; stale once the entry fires or is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerHandle {
    index: u32,
    generation: u32,
}

struct Entry<T> {
    deadline: u64,
    prev: u32,
    next: u32,
    generation: u32,
    level: u8,
    slot: u8,
    /// `None` while the slab slot is free (then `next` links the free list).
    value: Option<T>,
}

struct Level {
    occupied: u64,
    heads: [u32; SLOTS],
}

/// A hierarchical timing wheel of values of type `T` with 1 ms ticks (see the module docs).
///
/// ```
/// use tether::time::Wheel;
///
/// let mut wheel = Wheel::new();
/// let a = wheel.insert(50, "a");
/// wheel.insert(70_000, "b"); // lands on a higher level and cascades down later
/// assert_eq!(wheel.next_deadline(), Some(50));
/// assert_eq!(wheel.cancel(a), Some("a"));
///
/// let mut fired = Vec::new();
/// wheel.advance(69_999, &mut fired);
/// assert!(fired.is_empty());
/// wheel.advance(70_000, &mut fired);
/// assert_eq!(fired, ["b"]);
/// assert!(wheel.is_empty());
/// ```
pub struct Wheel<T> {
    /// The tick the wheel has advanced to; every entry's deadline is at or after it.
    now: u64,
    levels: [Level; LEVELS],
    entries: Vec<Entry<T>>,
    free: u32,
    len: usize,
}

impl<T> Default for Wheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Wheel<T> {
    /// An empty wheel at tick 0.
    pub fn new() -> Self {
        Self {
            now: 0,
            levels: std::array::from_fn(|_| Level {
                occupied: 0,
                heads: [NIL; SLOTS],
            }),
            entries: Vec::new(),
            free: NIL,
            len: 0,
        }
    }

    /// Number of pending entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no entry is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` to fire at tick `deadline` (a deadline in the past fires on the next
    /// advance; one beyond the horizon is clamped to it).
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerHandle {
        let deadline = deadline.clamp(self.now, self.now + HORIZON - 1);
        let index = if self.free != NIL {
            let index = self.free;
            let e = &mut self.entries[index as usize];
            self.free = e.next;
            e.deadline = deadline;
            e.value = Some(value);
            index
        } else {
            let index = u32::try_from(self.entries.len()).expect("more than 4G timers");
            self.entries.push(Entry {
                deadline,
                prev: NIL,
                next: NIL,
                generation: 0,
                level: 0,
                slot: 0,
                value: Some(value),
            });
            index
        };
        self.link(index);
        self.len += 1;
        TimerHandle {
            index,
            generation: self.entries[index as usize].generation,
        }
    }

    /// Removes the entry and returns its value, or `None` if it already fired or was
    /// cancelled.
    pub fn cancel(&mut self, handle: TimerHandle) -> Option<T> {
        let e = self.entries.get(handle.index as usize)?;
        if e.generation != handle.generation || e.value.is_none() {
            return None;
        }
        self.unlink(handle.index);
        Some(self.release(handle.index))
    }

    /// The tick of the earliest pending entry's slot: no entry fires before it. `None` when
    /// the wheel is empty. The worker parks no longer than until then.
    pub fn next_deadline(&self) -> Option<u64> {
        self.next_slot().map(|(_, _, start)| start)
    }

    /// Advances to tick `now` and moves every entry due by then into `fired` (in slot order,
    /// not strictly by deadline). Time never goes backwards: an earlier `now` does nothing.
    pub fn advance(&mut self, now: u64, fired: &mut Vec<T>) {
        while let Some((level, slot, start)) = self.next_slot() {
            if start > now {
                break;
            }
            // Everything left in the wheel is at or after `start`.
            self.now = self.now.max(start);
            let lvl = &mut self.levels[level];
            let mut index = lvl.heads[slot];
            lvl.heads[slot] = NIL;
            lvl.occupied &= !(1 << slot);
            while index != NIL {
                let next = self.entries[index as usize].next;
                if self.entries[index as usize].deadline <= now {
                    fired.push(self.release(index));
                } else {
                    self.link(index);
                }
                index = next;
            }
        }
        self.now = self.now.max(now);
    }

    /// The earliest non-empty slot: (level, slot, tick at which it starts).
    ///
    /// Below the top level, an entry shares every higher digit with the current time, so its
    /// slot lies ahead of the current position. At the top level, deadlines up to a whole
    /// horizon ahead wrap around: a slot at or behind the position belongs to the next
    /// rotation, and `pos + distance` past 63 carries into it.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for (level, lvl) in self.levels.iter().enumerate() {
            if lvl.occupied == 0 {
                continue;
            }
            let shift = SLOT_BITS as usize * level;
            let pos = (self.now >> shift) & SLOT_MASK;
            let distance = if level == LEVELS - 1 {
                // Slots strictly ahead first; the current slot only as the next rotation.
                let after = ((pos + 1) & SLOT_MASK) as u32;
                1 + u64::from(lvl.occupied.rotate_right(after).trailing_zeros())
            } else {
                u64::from(lvl.occupied.rotate_right(pos as u32).trailing_zeros())
            };
            debug_assert!(distance > 0 || level == 0, "entry behind the current slot");
            let level_span = 1u64 << (shift + SLOT_BITS as usize);
            let start = (self.now & !(level_span - 1)) + ((pos + distance) << shift);
            let slot = ((pos + distance) & SLOT_MASK) as usize;
            // Lower levels hold earlier deadlines than any slot of a higher one.
            return Some((level, slot, start.max(self.now)));
        }
        None
    }

    /// The level whose digit is the highest in which `deadline` differs from `now`.
    fn level_for(now: u64, deadline: u64) -> usize {
        let differing = (now ^ deadline) | SLOT_MASK;
        let top_bit = 63 - differing.leading_zeros() as usize;
        (top_bit / SLOT_BITS as usize).min(LEVELS - 1)
    }

    fn link(&mut self, index: u32) {
        let deadline = self.entries[index as usize].deadline;
        let level = Self::level_for(self.now, deadline);
        let slot = ((deadline >> (SLOT_BITS as usize * level)) & SLOT_MASK) as usize;
        let lvl = &mut self.levels[level];
        let head = lvl.heads[slot];
        lvl.heads[slot] = index;
        lvl.occupied |= 1 << slot;
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        let e = &mut self.entries[index as usize];
        e.prev = NIL;
        e.next = head;
        e.level = level as u8;
        e.slot = slot as u8;
    }

    fn unlink(&mut self, index: u32) {
        let (prev, next, level, slot) = {
            let e = &self.entries[index as usize];
            (e.prev, e.next, e.level as usize, e.slot as usize)
        };
        if prev != NIL {
            self.entries[prev as usize].next = next;
        } else {
            let lvl = &mut self.levels[level];
            lvl.heads[slot] = next;
            if next == NIL {
                lvl.occupied &= !(1 << slot);
            }
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
    }

    /// Frees a slab slot that is no longer linked into any wheel slot and returns its value.
    fn release(&mut self, index: u32) -> T {
        let e = &mut self.entries[index as usize];
        let value = e.value.take().expect("released a free entry");
        e.generation = e.generation.wrapping_add(1);
        e.next = self.free;
        self.free = index;
        self.len -= 1;
        value
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn fire(w: &mut Wheel<u32>, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        w.advance(now, &mut out);
        out.sort_unstable();
        out
    }

    #[test]
    fn level_and_slot_arithmetic() {
        assert_eq!(Wheel::<()>::level_for(0, 0), 0);
        assert_eq!(Wheel::<()>::level_for(0, 63), 0);
        assert_eq!(Wheel::<()>::level_for(0, 64), 1);
        assert_eq!(Wheel::<()>::level_for(0, 4095), 1);
        assert_eq!(Wheel::<()>::level_for(0, 4096), 2);
        assert_eq!(Wheel::<()>::level_for(100, 127), 0, "same level-1 digit");
        assert_eq!(Wheel::<()>::level_for(127, 128), 1);
        assert_eq!(Wheel::<()>::level_for(0, HORIZON - 1), LEVELS - 1);
        assert_eq!(Wheel::<()>::level_for(0, u64::MAX), LEVELS - 1);
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = Wheel::new();
        w.insert(5, 1);
        assert_eq!(w.next_deadline(), Some(5));
        assert!(fire(&mut w, 4).is_empty());
        assert_eq!(fire(&mut w, 5), [1]);
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn cascades_across_every_level_boundary() {
        for level in 1..LEVELS {
            let boundary = 1u64 << (SLOT_BITS as usize * level);
            for deadline in [boundary - 1, boundary, boundary + 1, 3 * boundary + 7] {
                let mut w = Wheel::new();
                w.insert(deadline, 7);
                assert!(fire(&mut w, deadline - 1).is_empty(), "early at {deadline}");
                assert_eq!(fire(&mut w, deadline), [7], "deadline {deadline}");
            }
        }
    }

    #[test]
    fn cancel_after_fire_and_double_cancel_do_nothing() {
        let mut w = Wheel::new();
        let a = w.insert(10, 1);
        let b = w.insert(10, 2);
        assert_eq!(w.cancel(b), Some(2));
        assert_eq!(w.cancel(b), None);
        assert_eq!(fire(&mut w, 10), [1]);
        assert_eq!(w.cancel(a), None, "fired already");
        // The slab slot is reused; the old handle stays stale.
        let c = w.insert(20, 3);
        assert_eq!(w.cancel(a), None);
        assert_eq!(w.cancel(c), Some(3));
    }

    #[test]
    fn far_future_deadlines_clamp_to_the_horizon() {
        let mut w = Wheel::new();
        w.insert(u64::MAX, 1);
        w.insert(30 * 24 * 3_600_000, 2); // 30 days
        assert!(fire(&mut w, 30 * 24 * 3_600_000 - 1).is_empty());
        assert_eq!(fire(&mut w, 30 * 24 * 3_600_000), [2]);
        assert_eq!(fire(&mut w, HORIZON), [1]);
    }

    #[test]
    fn time_jumping_hours_ahead_fires_everything_due_once() {
        let mut w = Wheel::new();
        for i in 0..1000u32 {
            w.insert(u64::from(i) * 37_003, i); // spread over ~10 hours
        }
        w.insert(48 * 3_600_000, 9999); // two days out
        let got = fire(&mut w, 12 * 3_600_000); // the laptop slept for 12 hours
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert_eq!(w.len(), 1);
        assert_eq!(fire(&mut w, 48 * 3_600_000), [9999]);
    }

    /// Regression: a deadline clamped to the horizon lands in the current top-level slot's
    /// next rotation; it must neither fire now nor hide an earlier top-level slot.
    #[test]
    fn top_level_rotation_wraps() {
        let mut w = Wheel::new();
        w.advance(100, &mut Vec::new());
        w.insert(u64::MAX, 1);
        w.insert(42 << 30, 2);
        assert_eq!(w.next_deadline(), Some(42 << 30));
        assert!(fire(&mut w, (42 << 30) - 1).is_empty());
        assert_eq!(fire(&mut w, 42 << 30), [2]);
        assert!(fire(&mut w, 100 + HORIZON - 2).is_empty());
        assert_eq!(fire(&mut w, 100 + HORIZON - 1), [1]);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_advance() {
        let mut w = Wheel::new();
        w.advance(1000, &mut Vec::new());
        w.insert(3, 1);
        assert_eq!(w.next_deadline(), Some(1000));
        assert_eq!(fire(&mut w, 1000), [1]);
    }

    /// Random operations against a `BTreeMap` model (the model lives with the fuzz target,
    /// `crate::fuzz::wheel_ops`, so the fuzzer and this test check the same thing).
    #[test]
    fn matches_btreemap_model() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..50 {
            let data: Vec<u8> = (0..6000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            crate::fuzz::wheel_ops(&data);
        }
    }
}
