//! What a run found: every message checked against what the publishers know was accepted
//! ([`tally`]), into a [`LoadReport`] printed as a summary and as one JSON line.

use serde::Serialize;
use tether::Histogram;

use crate::config::LoadConfig;
use crate::publisher::PublisherStats;
use crate::receiver::ReceiverStats;

/// Client errors kept in the report.
const MAX_ERRORS: usize = 10;

/// What a run measured and found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LoadReport {
    /// WebSocket clients.
    pub(crate) clients: usize,
    /// Publishers.
    pub(crate) publishers: usize,
    /// Approximate payload size.
    pub(crate) payload_bytes: usize,
    /// Messages per publish request.
    pub(crate) batch: usize,
    /// Time spent publishing, seconds (clients connect before it starts).
    pub(crate) publish_secs: f64,
    /// From the start of publishing until the last message arrived (or the drain ended),
    /// seconds.
    pub(crate) elapsed_secs: f64,
    /// Messages the server accepted.
    pub(crate) published: u64,
    /// Publishes refused (`rejected` outcomes, 503 try-later).
    pub(crate) rejected: u64,
    /// Older messages the server evicted to make room (reported by `queued` outcomes).
    pub(crate) evicted: u64,
    /// Messages whose publish request failed without an answer (a timeout, a cut
    /// connection): their outcome is unknown.
    pub(crate) publish_errors: u64,
    /// The first of those failures, if any.
    pub(crate) publish_error: Option<String>,
    /// Distinct messages received.
    pub(crate) delivered: u64,
    /// `published / publish_secs`.
    pub(crate) publish_rate: f64,
    /// `delivered / elapsed_secs`.
    pub(crate) delivery_rate: f64,
    /// Publish-to-receive latency, µs (the engine's histogram: its quantiles are bucket upper
    /// bounds, at most 12.5 % above the true value).
    pub(crate) latency: Histogram,
    /// Accepted and never received.
    pub(crate) lost: u64,
    /// Losses that the recipient's own evictions cannot explain: the sum over recipients of
    /// `lost - evicted` where that is positive.
    pub(crate) lost_beyond_evicted: u64,
    /// Received by a client other than the recipient.
    pub(crate) misrouted: u64,
    /// Received more than once.
    pub(crate) duplicates: u64,
    /// Received but not known to be accepted.
    pub(crate) unexpected: u64,
    /// Messages of other runs, ignored.
    pub(crate) stale: u64,
    /// Reconnects of all clients.
    pub(crate) reconnects: u64,
    /// Messages the servers' missed manifests reported lost.
    pub(crate) missed: u64,
    /// The first few client errors, if any client stopped.
    pub(crate) errors: Vec<String>,
}

impl LoadReport {
    /// True if no client stopped, nothing was duplicated or misrouted, every recipient's
    /// losses can be messages the server's overflow policy evicted from that recipient's
    /// mailbox, and every unexpected message can be one whose publish lost its answer.
    pub(crate) fn is_clean(&self) -> bool {
        self.lost_beyond_evicted == 0
            && self.misrouted == 0
            && self.duplicates == 0
            && self.unexpected <= self.publish_errors
            && self.errors.is_empty()
    }

    /// The report as one JSON line.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A few lines for a terminal.
    pub(crate) fn summary(&self) -> String {
        let l = |q: f64| {
            self.latency
                .quantile(q)
                .map_or_else(|| "-".to_owned(), |us| us.to_string())
        };
        let mut s = format!(
            "clients {} publishers {} payload {} B batch {}\n\
             published {} in {:.2}s ({:.0}/s), rejected {}, evicted {}, publish errors {}\n\
             delivered {} in {:.2}s ({:.0}/s)\n\
             latency p50 {} us, p90 {} us, p99 {} us, max {} us\n\
             lost {}{}, misrouted {}, duplicates {}, unexpected {}, reconnects {}, missed {}",
            self.clients,
            self.publishers,
            self.payload_bytes,
            self.batch,
            self.published,
            self.publish_secs,
            self.publish_rate,
            self.rejected,
            self.evicted,
            self.publish_errors,
            self.delivered,
            self.elapsed_secs,
            self.delivery_rate,
            l(0.50),
            l(0.90),
            l(0.99),
            l(1.0),
            self.lost,
            match (self.lost, self.lost_beyond_evicted) {
                (0, _) => String::new(),
                (_, 0) =>
                    " (evicted by the server's per-user caps: the clients fell behind)".to_owned(),
                (_, n) => format!(" ({n} beyond what the server evicted per user)"),
            },
            self.misrouted,
            self.duplicates,
            self.unexpected,
            self.reconnects,
            self.missed,
        );
        if let Some(e) = &self.publish_error {
            s.push_str("\npublish error: ");
            s.push_str(e);
        }
        for e in &self.errors {
            s.push_str("\nclient error: ");
            s.push_str(e);
        }
        s
    }
}

pub(crate) fn tally(
    config: &LoadConfig,
    publishers: Vec<PublisherStats>,
    mut receivers: Vec<ReceiverStats>,
    publish_secs: f64,
    elapsed_secs: f64,
) -> LoadReport {
    receivers.sort_by_key(|r| r.tally.user);
    // Per recipient: lost, and evicted from its mailbox.
    let mut lost_by_user = vec![0u64; config.clients];
    let mut evicted_by_user = vec![0u64; config.clients];
    for p in &publishers {
        for (total, e) in evicted_by_user.iter_mut().zip(&p.evicted) {
            *total += e;
        }
    }
    let (mut unexpected, mut delivered) = (0, 0);
    let empty = Bitset::default();
    for r in &receivers {
        let user = r.tally.user;
        for (p, seen) in r.tally.seen.iter().enumerate() {
            let accepted = publishers
                .iter()
                .find(|s| s.index == p)
                .and_then(|s| s.accepted.get(user))
                .unwrap_or(&empty);
            if let Some(lost) = lost_by_user.get_mut(user) {
                *lost += accepted.count_missing_from(seen);
            }
            unexpected += seen.count_missing_from(accepted);
            delivered += seen.count();
        }
    }
    // A client that never reported (its task failed) lost everything it was sent.
    for p in &publishers {
        for (user, accepted) in p.accepted.iter().enumerate() {
            if !receivers.iter().any(|r| r.tally.user == user) {
                if let Some(lost) = lost_by_user.get_mut(user) {
                    *lost += accepted.count();
                }
            }
        }
    }
    let lost = lost_by_user.iter().sum();
    let lost_beyond_evicted = lost_by_user
        .iter()
        .zip(&evicted_by_user)
        .map(|(l, e)| l.saturating_sub(*e))
        .sum();
    let mut latency = Histogram::default();
    for r in &receivers {
        latency.merge(&r.tally.latency);
    }
    let published: u64 = publishers.iter().map(|p| p.published).sum();
    let rate = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    LoadReport {
        clients: config.clients,
        publishers: config.publishers,
        payload_bytes: config.payload_bytes,
        batch: config.batch,
        publish_secs,
        elapsed_secs,
        published,
        rejected: publishers.iter().map(|p| p.rejected).sum(),
        evicted: evicted_by_user.iter().sum(),
        publish_errors: publishers.iter().map(|p| p.errors).sum(),
        publish_error: publishers.iter().find_map(|p| p.first_error.clone()),
        delivered,
        publish_rate: rate(published, publish_secs),
        delivery_rate: rate(delivered, elapsed_secs),
        latency,
        lost,
        lost_beyond_evicted,
        misrouted: receivers.iter().map(|r| r.tally.misrouted).sum(),
        duplicates: receivers.iter().map(|r| r.tally.duplicates).sum(),
        unexpected,
        stale: receivers.iter().map(|r| r.tally.stale).sum(),
        reconnects: receivers.iter().map(|r| r.reconnects).sum(),
        missed: receivers.iter().map(|r| r.missed).sum(),
        errors: receivers
            .iter()
            .filter_map(|r| r.error.clone())
            .take(MAX_ERRORS)
            .collect(),
    }
}

/// A growable set of small integers (message numbers are dense from 0).
#[derive(Clone, Default)]
pub(crate) struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    /// Adds `n`; false if it was there already.
    pub(crate) fn insert(&mut self, n: u64) -> bool {
        let Ok(word) = usize::try_from(n / 64) else {
            return false;
        };
        // Numbers come from publishers in this process, dense from 0; a number far beyond
        // anything sent could only come from a foreign message and is ignored.
        if word > (1 << 26) {
            return false;
        }
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (n % 64);
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        fresh
    }

    pub(crate) fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Members of `self` that are not in `other`.
    pub(crate) fn count_missing_from(&self, other: &Bitset) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| u64::from((w & !other.words.get(i).copied().unwrap_or(0)).count_ones()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::{stamp_json, Stamp, Tally};

    #[test]
    fn bitsets_count_what_is_missing() {
        let mut a = Bitset::default();
        let mut b = Bitset::default();
        for n in [0, 1, 63, 64, 1000] {
            assert!(a.insert(n));
        }
        assert!(!a.insert(64));
        for n in [1, 64, 2000] {
            b.insert(n);
        }
        assert_eq!((a.count(), b.count()), (5, 3));
        assert_eq!(a.count_missing_from(&b), 3);
        assert_eq!(b.count_missing_from(&a), 1);
        assert!(!a.insert(u64::MAX), "absurd numbers are ignored");
    }

    fn stamp(run: u64, to: usize, publisher: usize, n: u64) -> Option<Stamp> {
        serde_json::from_str(&stamp_json(run, to, publisher, n, 0, "xx")).ok()
    }

    fn publisher(index: usize, accepted: &[&[u64]], evicted: Vec<u64>) -> PublisherStats {
        let accepted: Vec<Bitset> = accepted
            .iter()
            .map(|ns| {
                let mut b = Bitset::default();
                for &n in *ns {
                    b.insert(n);
                }
                b
            })
            .collect();
        PublisherStats {
            index,
            published: accepted.iter().map(Bitset::count).sum(),
            accepted,
            rejected: 0,
            evicted,
            errors: 0,
            first_error: None,
        }
    }

    fn receiver(tally: Tally) -> ReceiverStats {
        ReceiverStats {
            tally,
            reconnects: 0,
            missed: 0,
            error: None,
        }
    }

    fn two_clients() -> LoadConfig {
        LoadConfig {
            clients: 2,
            publishers: 1,
            ..LoadConfig::new("ws://127.0.0.1:1".into(), "k".into(), "s".into())
        }
    }

    #[test]
    fn misrouted_duplicated_and_stale_stamps_are_told_apart() {
        let (run, other_run) = (7, 8);
        let mut a = Tally::new(0, run, 1);
        let mut b = Tally::new(1, run, 1);
        assert!(a.record(stamp(run, 0, 0, 0), 10));
        assert!(!a.record(stamp(run, 0, 0, 0), 20), "the same stamp again");
        // User 0's message 1 reaches user 1 instead: not counted as user 1's own.
        assert!(!b.record(stamp(run, 0, 0, 1), 30));
        assert!(b.record(stamp(run, 1, 0, 0), 30));
        assert!(!b.record(stamp(other_run, 1, 0, 1), 40));
        assert!(!b.record(None, 40));
        assert_eq!((a.duplicates, a.misrouted, a.stale), (1, 0, 0));
        assert_eq!((b.duplicates, b.misrouted, b.stale), (0, 1, 2));

        let accepted: &[&[u64]] = &[&[0, 1], &[0]];
        let report = tally(
            &two_clients(),
            vec![publisher(0, accepted, vec![0, 0])],
            vec![receiver(a), receiver(b)],
            1.0,
            1.0,
        );
        assert_eq!(report.delivered, 2, "{report:?}");
        assert_eq!(report.duplicates, 1, "{report:?}");
        assert_eq!(report.misrouted, 1, "{report:?}");
        assert_eq!(report.stale, 2, "{report:?}");
        // User 0's message 1 went to user 1: lost for user 0, and nothing evicted explains it.
        assert_eq!(
            (report.lost, report.lost_beyond_evicted),
            (1, 1),
            "{report:?}"
        );
        assert!(!report.is_clean());
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["misrouted"], 1);
        assert!(
            report.summary().contains("misrouted 1, duplicates 1"),
            "{}",
            report.summary()
        );
    }

    #[test]
    fn one_users_evictions_do_not_excuse_another_users_losses() {
        let run = 1;
        // User 0 received 0 and 1 of 0..=2; user 1 received all of 0..=1.
        let accepted: &[&[u64]] = &[&[0, 1, 2], &[0, 1]];
        let receivers = || {
            let mut a = Tally::new(0, run, 1);
            let mut b = Tally::new(1, run, 1);
            for n in [0, 1] {
                assert!(a.record(stamp(run, 0, 0, n), 1));
                assert!(b.record(stamp(run, 1, 0, n), 1));
            }
            vec![receiver(a), receiver(b)]
        };
        // One eviction, from user 1's mailbox: globally lost (1) <= evicted (1), yet user 0's
        // loss is unexplained.
        let report = tally(
            &two_clients(),
            vec![publisher(0, accepted, vec![0, 1])],
            receivers(),
            1.0,
            1.0,
        );
        assert_eq!((report.lost, report.evicted), (1, 1), "{report:?}");
        assert_eq!(report.lost_beyond_evicted, 1, "{report:?}");
        assert!(!report.is_clean());
        // The same eviction from user 0's mailbox explains the loss.
        let report = tally(
            &two_clients(),
            vec![publisher(0, accepted, vec![1, 0])],
            receivers(),
            1.0,
            1.0,
        );
        assert_eq!(report.lost_beyond_evicted, 0, "{report:?}");
        assert!(report.is_clean(), "{report:?}");
    }
}
