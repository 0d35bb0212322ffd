//! Streams: multi-part responses that reach the user in part order and survive a disconnect.
//!
//! A stream is a sequence of messages to one user, each carrying a [`StreamPart`] (stream id,
//! index from 0, last flag). The mailbox keeps one [`Stream`] per open stream id:
//!
//! - parts may arrive in any order; a part is *released* into the user's band only once every
//!   part before it has arrived, so releases happen in index order and the band's FIFO keeps
//!   them in order up to delivery. Parts that arrive early wait in a per-stream reorder buffer
//!   of at most `reorder_window` indices past the first missing one (like a TCP receive
//!   window);
//! - part 0 fixes the stream's priority and deadline: every part is delivered at that
//!   priority, and no part expires on its own (a gap would reorder nothing but break the
//!   stream), so a TTL or an overflow ends the stream as a whole;
//! - a stream that gets no new part for `timeout` while incomplete is aborted; so is one whose
//!   deadline passes before its last part is delivered, one that overflow or the memory budget
//!   cannot keep, and one the producer aborts. An abort drops the parts not yet delivered and
//!   queues an abort marker, which is delivered like a message (with a seq, acknowledged, sent
//!   again after a reconnect) after the parts already delivered;
//! - delivered parts go through the normal window, so resuming a stream is resuming the
//!   mailbox: unacknowledged parts are sent again with their seqs, acknowledged ones never.
//!
//! A stream's state is freed when its last part is acknowledged or when it is aborted; a short
//! record of how it ended (bounded in count and age) lets late or retried parts of a finished
//! stream be refused rather than start a stream that could never complete.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::message::{AbortReason, Message, Priority, StreamPart};
use crate::metrics::Counters;
use crate::stream::{StreamPhase, StreamStatus};
use crate::time::TimerHandle;

/// Stream settings, from the engine's configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    /// How long an incomplete stream may go without a new part (ms).
    pub(crate) timeout_ms: u64,
    /// Open streams (and abort markers not yet delivered) per user.
    pub(crate) max_per_user: usize,
    /// How far past the first missing part a part may arrive and be held.
    pub(crate) reorder_window: u32,
}

/// One open stream.
pub(crate) struct Stream {
    id: Arc<str>,
    /// Tells this stream apart from earlier ones with the same id (see `Streams::generations`):
    /// every part it releases carries it.
    generation: u64,
    /// From part 0; `None` until it arrives.
    priority: Option<Priority>,
    /// From part 0's TTL: the last part must be delivered by then.
    deadline: Option<u64>,
    /// Parts `0..next` have arrived and were released into the mailbox.
    next: u32,
    /// Parts past `next` that arrived early.
    held: BTreeMap<u32, Message>,
    held_bytes: usize,
    last: Option<u32>,
    delivered: u32,
    acknowledged: u32,
    /// When the last new part arrived (ms).
    progress_at: u64,
    /// The pending wheel timer and when it is due.
    pub(crate) timer: Option<(TimerHandle, u64)>,
}

impl Stream {
    /// Whether every part up to the last has arrived.
    fn all_arrived(&self) -> bool {
        self.last.is_some_and(|last| self.next > last)
    }

    fn all_delivered(&self) -> bool {
        self.last.is_some_and(|last| self.delivered > last)
    }

    /// When the stream's timer should next fire: its deadline while parts remain to be
    /// delivered, or the incompleteness timeout while parts remain to arrive.
    pub(crate) fn due(&self, limits: &StreamLimits) -> Option<u64> {
        let deadline = self.deadline.filter(|_| !self.all_delivered());
        let stalled =
            (!self.all_arrived()).then(|| self.progress_at.saturating_add(limits.timeout_ms));
        match (deadline, stalled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Why the stream must be aborted at `now`, if it must.
    pub(crate) fn overdue(&self, now: u64, limits: &StreamLimits) -> Option<AbortReason> {
        if self.deadline.is_some_and(|d| now >= d) && !self.all_delivered() {
            return Some(AbortReason::Expired);
        }
        if !self.all_arrived() && now >= self.progress_at.saturating_add(limits.timeout_ms) {
            return Some(AbortReason::Timeout);
        }
        None
    }

    /// Whether `part` is one of this stream's released parts (not one of an earlier stream
    /// that had the same id).
    pub(crate) fn owns(&self, part: &StreamPart) -> bool {
        part.generation() == self.generation && part.stream() == &*self.id
    }

    /// The band its parts use (Normal until part 0 says otherwise; nothing is released before).
    pub(crate) fn priority(&self) -> Priority {
        self.priority.unwrap_or_default()
    }

    pub(crate) fn known_priority(&self) -> Option<Priority> {
        self.priority
    }

    /// Parts held back and their bytes.
    pub(crate) fn held(&self) -> (usize, usize) {
        (self.held.len(), self.held_bytes)
    }

    /// Takes the held parts, to free them.
    pub(crate) fn take_held(&mut self) -> BTreeMap<u32, Message> {
        self.held_bytes = 0;
        std::mem::take(&mut self.held)
    }

    /// Whether a session is in the middle of it: something was delivered and something is
    /// still unacknowledged.
    pub(crate) fn in_progress(&self) -> bool {
        self.delivered > 0 && self.last.is_none_or(|last| self.acknowledged <= last)
    }

    fn status(&self) -> StreamStatus {
        let highest_seen = self.held.keys().next_back().copied();
        let end = match (self.last, highest_seen) {
            (Some(last), _) => last,
            (None, Some(h)) => h,
            (None, None) => 0,
        };
        let missing = (self.next..end)
            .filter(|i| !self.held.contains_key(i))
            .collect();
        StreamStatus {
            phase: StreamPhase::Open,
            priority: self.priority,
            arrived: self.next,
            held: self.held.keys().copied().collect(),
            missing,
            last: self.last,
            delivered: self.delivered,
            acknowledged: self.acknowledged,
        }
    }
}

/// How a part fits its stream, decided before anything changes.
pub(crate) enum Admission {
    /// It opens a new stream.
    Opens,
    /// It belongs to the open stream in this slot.
    Joins(u32),
    /// Its index was already received.
    Duplicate,
    /// Refused; the stream (if open) is untouched.
    Refused(crate::outcome::RejectReason),
}

/// The streams of one mailbox: open ones by id, abort markers waiting for delivery, and a
/// short memory of finished ones.
pub(crate) struct Streams {
    slots: Vec<Option<Stream>>,
    free: Vec<u32>,
    index: HashMap<Arc<str>, u32, ahash::RandomState>,
    /// Abort markers not yet delivered, oldest first.
    markers: VecDeque<Message>,
    finished: VecDeque<Finished>,
    /// Parts held back across all streams, and their bytes.
    held_parts: usize,
    held_bytes: usize,
    /// How many finished streams are remembered: the per-user stream limit, so a user cannot
    /// make us remember without bound.
    remember: usize,
    /// Streams opened so far in this mailbox: the next stream's generation is one more. Ids
    /// are the producer's and are forgotten a while after their stream ends, so an id can
    /// come back while parts of its old stream are still in flight; the generation on each
    /// released part says which stream it belongs to.
    generations: u64,
}

/// How a finished stream ended, kept so its late parts are refused.
struct Finished {
    at: u64,
    status: StreamStatus,
    id: Arc<str>,
}

impl Streams {
    pub(crate) fn new(limits: &StreamLimits) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
            markers: VecDeque::new(),
            finished: VecDeque::new(),
            held_parts: 0,
            held_bytes: 0,
            remember: limits.max_per_user,
            generations: 0,
        }
    }

    /// Nothing open and no marker waiting (finished records do not keep a mailbox).
    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty() && self.markers.is_empty()
    }

    pub(crate) fn open_count(&self) -> usize {
        self.index.len()
    }

    /// Parts held back across all streams, and their bytes.
    pub(crate) fn held(&self) -> (usize, usize) {
        (self.held_parts, self.held_bytes)
    }

    pub(crate) fn slot_of(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&Stream> {
        self.slots.get(slot as usize)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut Stream> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Stream> {
        self.slots.iter().flatten()
    }

    /// Forgets finished streams older than `keep_ms`.
    pub(crate) fn forget_finished(&mut self, now: u64, keep_ms: u64) {
        while self
            .finished
            .front()
            .is_some_and(|f| now.saturating_sub(f.at) >= keep_ms)
        {
            self.finished.pop_front();
        }
    }

    /// Whether stream `id` is open or remembered as finished.
    pub(crate) fn is_known(&self, id: &str) -> bool {
        self.slot_of(id).is_some() || self.finished(id).is_some()
    }

    fn finished(&self, id: &str) -> Option<&Finished> {
        self.finished.iter().rev().find(|f| &*f.id == id)
    }

    /// Decides what to do with `part` without changing anything.
    pub(crate) fn admit(&self, part: &StreamPart, limits: &StreamLimits) -> Admission {
        use crate::outcome::RejectReason::{StreamClosed, StreamPartInvalid, StreamWindowFull};
        let Some(slot) = self.slot_of(part.stream()) else {
            if self.finished(part.stream()).is_some() {
                return Admission::Refused(StreamClosed);
            }
            if self.index.len() + self.markers.len() >= limits.max_per_user {
                return Admission::Refused(crate::outcome::RejectReason::TooManyStreams);
            }
            if part.index() >= limits.reorder_window {
                return Admission::Refused(StreamWindowFull);
            }
            return Admission::Opens;
        };
        let s = self.get(slot).expect("indexed streams exist");
        let i = part.index();
        if i < s.next || s.held.contains_key(&i) {
            return Admission::Duplicate;
        }
        let beyond_last = s.last.is_some_and(|last| i > last);
        let last_too_early = part.is_last()
            && (s.last.is_some_and(|last| last != i)
                || s.held.keys().next_back().is_some_and(|&h| h > i));
        if beyond_last || last_too_early {
            return Admission::Refused(StreamPartInvalid);
        }
        if i - s.next >= limits.reorder_window {
            return Admission::Refused(StreamWindowFull);
        }
        Admission::Joins(slot)
    }

    /// Opens a stream for `id`; the caller checked the limits with `admit`.
    pub(crate) fn open(&mut self, id: Arc<str>, now: u64, counters: &mut Counters) -> u32 {
        self.generations += 1;
        let stream = Stream {
            id: id.clone(),
            generation: self.generations,
            priority: None,
            deadline: None,
            next: 0,
            held: BTreeMap::new(),
            held_bytes: 0,
            last: None,
            delivered: 0,
            acknowledged: 0,
            progress_at: now,
            timer: None,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(stream);
                slot
            }
            None => {
                self.slots.push(Some(stream));
                u32::try_from(self.slots.len() - 1).expect("streams are bounded per user")
            }
        };
        self.index.insert(id, slot);
        counters.streams_started += 1;
        slot
    }

    /// Takes an arrived part: returns the parts it releases, in index order (empty if it is
    /// held). Part 0 fixes the priority and the deadline; every released part takes the
    /// stream's priority.
    pub(crate) fn arrive(
        &mut self,
        slot: u32,
        message: Message,
        deadline: Option<u64>,
        now: u64,
    ) -> Vec<Message> {
        let s = self.slots[slot as usize].as_mut().expect("open stream");
        let part = message.stream_part().expect("a stream part");
        let (index, last) = (part.index(), part.is_last());
        s.progress_at = now;
        if last {
            s.last = Some(index);
        }
        if index == 0 {
            s.priority = Some(message.priority());
            s.deadline = deadline;
        }
        if index != s.next {
            self.held_parts += 1;
            self.held_bytes += message.cost();
            s.held_bytes += message.cost();
            s.held.insert(index, message);
            return Vec::new();
        }
        let (priority, generation) = (s.priority(), s.generation);
        let mut released = vec![message
            .with_priority(priority)
            .with_stream_generation(generation)];
        s.next += 1;
        while let Some(m) = s.held.remove(&s.next) {
            self.held_parts -= 1;
            self.held_bytes -= m.cost();
            s.held_bytes -= m.cost();
            released.push(m.with_priority(priority).with_stream_generation(generation));
            s.next += 1;
        }
        released
    }

    /// The open stream that released `part`, if it is still open: same id and same
    /// generation (a part of an earlier stream with that id belongs to no open stream).
    fn owner_of(&self, part: &StreamPart) -> Option<u32> {
        let slot = self.slot_of(part.stream())?;
        let s = self.get(slot).expect("indexed streams exist");
        s.owns(part).then_some(slot)
    }

    /// Notes that a released `part` entered the delivery window.
    pub(crate) fn delivered(&mut self, part: &StreamPart) {
        if let Some(slot) = self.owner_of(part) {
            let s = self.get_mut(slot).expect("indexed streams exist");
            s.delivered = s.delivered.max(part.index() + 1);
        }
    }

    /// Notes that a released `part` was acknowledged. Returns the stream, removed, if that
    /// completed it. A part of an earlier stream with the same id changes nothing.
    pub(crate) fn acknowledged(
        &mut self,
        part: &StreamPart,
        now: u64,
        counters: &mut Counters,
    ) -> Option<Stream> {
        let slot = self.owner_of(part)?;
        let index = part.index();
        let s = self.get_mut(slot).expect("indexed streams exist");
        s.acknowledged = s.acknowledged.max(index + 1);
        if s.last != Some(index) {
            return None;
        }
        counters.streams_completed += 1;
        Some(self.close(slot, StreamPhase::Completed, now))
    }

    /// Removes an open stream, remembering how it ended. Held parts are the caller's to free
    /// (take them first with `take_held`).
    pub(crate) fn close(&mut self, slot: u32, phase: StreamPhase, now: u64) -> Stream {
        let mut s = self.slots[slot as usize].take().expect("open stream");
        self.index.remove(&s.id);
        self.free.push(slot);
        let (parts, bytes) = s.held();
        self.held_parts -= parts;
        self.held_bytes -= bytes;
        s.held_bytes = 0;
        let mut status = s.status();
        status.phase = phase;
        status.held.clear();
        status.missing.clear();
        self.remember(s.id.clone(), status, now);
        if self.index.is_empty() {
            self.slots = Vec::new();
            self.free = Vec::new();
        }
        s
    }

    /// Records how a stream that never opened ended (its first part was refused), so its
    /// later parts are refused too.
    pub(crate) fn refuse(&mut self, id: Arc<str>, reason: AbortReason, now: u64) {
        let status = StreamStatus {
            phase: StreamPhase::Aborted(reason),
            priority: None,
            arrived: 0,
            held: Vec::new(),
            missing: Vec::new(),
            last: None,
            delivered: 0,
            acknowledged: 0,
        };
        self.remember(id, status, now);
    }

    fn remember(&mut self, id: Arc<str>, status: StreamStatus, now: u64) {
        if self.finished.len() >= self.remember {
            self.finished.pop_front();
        }
        self.finished.push_back(Finished {
            at: now,
            status,
            id,
        });
    }

    /// Aborts an open stream: queues its marker and counts it. Returns the stream (removed)
    /// so the mailbox can take its queued parts out of the band.
    pub(crate) fn abort(
        &mut self,
        slot: u32,
        reason: AbortReason,
        now: u64,
        counters: &mut Counters,
    ) -> Stream {
        count_abort(&reason, counters);
        let s = self.close(slot, StreamPhase::Aborted(reason.clone()), now);
        self.markers.push_back(Message::abort_marker(
            s.id.clone(),
            s.delivered,
            s.priority(),
            reason,
        ));
        s
    }

    /// The next abort marker waiting for delivery.
    pub(crate) fn next_marker(&mut self) -> Option<Message> {
        self.markers.pop_front()
    }

    pub(crate) fn has_markers(&self) -> bool {
        !self.markers.is_empty()
    }

    /// What is known of stream `id`, open or recently finished.
    pub(crate) fn status(&self, id: &str) -> Option<StreamStatus> {
        match self.slot_of(id) {
            Some(slot) => self.get(slot).map(Stream::status),
            None => self.finished(id).map(|f| f.status.clone()),
        }
    }
}

/// Counts an abort under its reason.
fn count_abort(reason: &AbortReason, c: &mut Counters) {
    match reason {
        AbortReason::Timeout => c.streams_aborted_timeout += 1,
        AbortReason::Expired => c.streams_aborted_expired += 1,
        AbortReason::Overflow => c.streams_aborted_overflow += 1,
        AbortReason::MemoryBudget => c.streams_aborted_memory_budget += 1,
        AbortReason::Producer(_) => c.streams_aborted_producer += 1,
    }
}
