//! The duplicate filter: xxh3-64 fingerprints of (user, message id) or (user, payload), kept
//! for a time window in two rotating generations.
//!
//! A fingerprint is a duplicate if it is in the current or the previous generation. Every
//! `window` the previous generation is cleared and becomes the current one, so a fingerprint
//! is remembered for at least `window` and at most twice that. The sets hash with the
//! fingerprint itself (it is already uniform), and rotation reuses their memory: clearing a
//! set of `u64`s resets its control bytes, which costs no more than the inserts that grew it.
//! If the current generation reaches `max_entries` it rotates early: memory stays bounded and
//! the window shrinks under an extreme load rather than the process growing.
//!
//! The user's id is folded in as the xxh3 seed (its per-process hash), so equal ids or
//! payloads sent to different users never collide by construction, and the two kinds of
//! fingerprint use different seeds so an id never matches a payload.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use crate::message::{Message, Prehashed, UserId};

/// What the duplicate filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DedupMode {
    /// No duplicate detection.
    Off,
    /// Messages with the same id to the same user within the window are duplicates; messages
    /// without an id are never duplicates. The default: an id is the producer saying "this is
    /// the same message", while equal payloads ("ok", "ping") are often distinct messages.
    #[default]
    Ids,
    /// As `Ids`, and messages without an id are duplicates when their payload equals an
    /// earlier one to the same user within the window.
    IdsAndContent,
}

impl DedupMode {
    /// Each mode with the name [`FromStr`] reads and [`Display`](fmt::Display) writes.
    const NAMES: [(Self, &'static str); 3] = [
        (Self::Off, "off"),
        (Self::Ids, "ids"),
        (Self::IdsAndContent, "ids-and-content"),
    ];
}

/// Reads `off`, `ids` or `ids-and-content`, the names settings files and flags use.
///
/// ```
/// use tether::DedupMode;
///
/// assert_eq!("ids-and-content".parse(), Ok(DedupMode::IdsAndContent));
/// assert_eq!(DedupMode::Off.to_string(), "off");
/// assert!("everything".parse::<DedupMode>().is_err());
/// ```
impl FromStr for DedupMode {
    type Err = ParseDedupModeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::NAMES
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(mode, _)| *mode)
            .ok_or(ParseDedupModeError(()))
    }
}

impl fmt::Display for DedupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::NAMES.iter().find(|(m, _)| m == self).map(|(_, n)| *n);
        f.write_str(name.unwrap_or_default())
    }
}

/// A name that is no [`DedupMode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDedupModeError(());

impl fmt::Display for ParseDedupModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected off, ids or ids-and-content")
    }
}

impl std::error::Error for ParseDedupModeError {}

const ID_DOMAIN: u64 = 0x6964_5f64_6f6d_6169;
const CONTENT_DOMAIN: u64 = 0x636f_6e74_656e_7421;

pub(crate) struct DedupWindow {
    mode: DedupMode,
    window_ms: u64,
    max_entries: usize,
    current: HashSet<u64, Prehashed>,
    previous: HashSet<u64, Prehashed>,
    rotated_at: u64,
}

impl DedupWindow {
    pub(crate) fn new(mode: DedupMode, window_ms: u64, max_entries: usize) -> Self {
        Self {
            mode,
            window_ms,
            max_entries,
            current: HashSet::default(),
            previous: HashSet::default(),
            rotated_at: 0,
        }
    }

    /// The message's fingerprint, or `None` if the mode ignores it.
    pub(crate) fn fingerprint(&self, user: &UserId, message: &Message) -> Option<u64> {
        let seed = user.prehash();
        match (self.mode, message.id()) {
            (DedupMode::Off, _) => None,
            (_, Some(id)) => Some(xxhash_rust::xxh3::xxh3_64_with_seed(
                id.as_str().as_bytes(),
                seed ^ ID_DOMAIN,
            )),
            (DedupMode::Ids, None) => None,
            // A stream's parts are told apart by index, not content (two parts may well be
            // equal); the stream itself refuses a repeated index.
            (DedupMode::IdsAndContent, None) if message.is_stream_part() => None,
            (DedupMode::IdsAndContent, None) => Some(xxhash_rust::xxh3::xxh3_64_with_seed(
                message.payload(),
                seed ^ CONTENT_DOMAIN,
            )),
        }
    }

    /// Whether `fp` was recorded within the window.
    pub(crate) fn seen(&self, fp: u64) -> bool {
        self.current.contains(&fp) || self.previous.contains(&fp)
    }

    /// Records `fp` (for a message that was accepted).
    pub(crate) fn record(&mut self, fp: u64) {
        if self.current.len() >= self.max_entries {
            self.rotate();
        }
        self.current.insert(fp);
    }

    /// Moves the generations along if a window has passed; once per worker pass.
    pub(crate) fn tick(&mut self, now_ms: u64) {
        let since = now_ms.saturating_sub(self.rotated_at);
        if since >= self.window_ms {
            self.rotate();
            if since >= 2 * self.window_ms {
                // After a long pause the previous generation is stale too.
                self.previous.clear();
            }
            self.rotated_at = now_ms;
        }
    }

    fn rotate(&mut self) {
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.clear();
    }

    /// Fingerprints held (both generations).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn dedup_mode_names_round_trip() {
        for (mode, name) in DedupMode::NAMES {
            assert_eq!(name.parse(), Ok(mode));
            assert_eq!(mode.to_string(), name);
        }
        for bad in ["", "Ids", "ids_and_content", "ids "] {
            assert_eq!(bad.parse::<DedupMode>(), Err(ParseDedupModeError(())));
        }
    }

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn ids_per_user_and_content_only_when_asked() {
        let w = DedupWindow::new(DedupMode::Ids, 1000, 100);
        let (a, b) = (user("a"), user("b"));
        let m = Message::new("x").with_id("1");
        assert_eq!(
            w.fingerprint(&a, &m),
            w.fingerprint(&a, &Message::new("y").with_id("1"))
        );
        assert_ne!(w.fingerprint(&a, &m), w.fingerprint(&b, &m));
        assert_eq!(w.fingerprint(&a, &Message::new("x")), None);
        let c = DedupWindow::new(DedupMode::IdsAndContent, 1000, 100);
        assert!(c.fingerprint(&a, &Message::new("x")).is_some());
        assert_ne!(
            c.fingerprint(&a, &Message::new("1")),
            c.fingerprint(&a, &Message::new("z").with_id("1")),
            "an id never matches a payload"
        );
        let off = DedupWindow::new(DedupMode::Off, 1000, 100);
        assert_eq!(off.fingerprint(&a, &m), None);
    }

    #[test]
    fn remembers_for_one_to_two_windows() {
        let mut w = DedupWindow::new(DedupMode::Ids, 100, 1000);
        w.tick(0);
        w.record(7);
        w.tick(99);
        assert!(w.seen(7));
        w.tick(100); // rotated once: still in the previous generation
        assert!(w.seen(7));
        w.tick(200); // rotated twice: forgotten
        assert!(!w.seen(7));
    }

    #[test]
    fn a_long_pause_forgets_everything() {
        let mut w = DedupWindow::new(DedupMode::Ids, 100, 1000);
        w.record(1);
        w.tick(50);
        w.record(2);
        w.tick(10_000);
        assert!(!w.seen(1) && !w.seen(2));
    }

    #[test]
    fn entries_are_bounded() {
        let mut w = DedupWindow::new(DedupMode::Ids, 1_000_000, 10);
        for fp in 0..1000 {
            w.record(fp);
            assert!(w.len() <= 20);
        }
        assert!(w.seen(999) && !w.seen(0));
    }
}
