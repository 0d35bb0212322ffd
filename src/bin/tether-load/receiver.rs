//! The receiving side: one [`Receiver`] per WebSocket client (auto-ack), counting each
//! message by its stamp ([`Tally`]) and timing it from publish to arrival.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use tether::client::{Client, Event};
use tether::Histogram;
use tokio::sync::{watch, Notify};

use crate::report::Bitset;
use crate::run::Counters;

pub(crate) struct Receiver {
    pub(crate) client: Client,
    pub(crate) tally: Tally,
    pub(crate) shared: Arc<Counters>,
    pub(crate) start: Instant,
    pub(crate) reconnects: u64,
    pub(crate) missed: u64,
    pub(crate) connects: u64,
    pub(crate) error: Option<String>,
}

pub(crate) struct ReceiverStats {
    pub(crate) tally: Tally,
    pub(crate) reconnects: u64,
    pub(crate) missed: u64,
    pub(crate) error: Option<String>,
}

/// The checkable part of each message's data (see the module docs).
#[derive(Deserialize)]
pub(crate) struct Stamp {
    /// The run.
    r: u64,
    /// The recipient's index.
    u: usize,
    /// The publisher's index.
    p: usize,
    /// The publisher's number for this recipient.
    n: u64,
    /// When it was published, µs since the run started.
    t: u64,
}

/// A message's data: its stamp and `pad`.
pub(crate) fn stamp_json(
    run: u64,
    to: usize,
    publisher: usize,
    n: u64,
    t: u64,
    pad: &str,
) -> String {
    format!(r#"{{"r":{run},"u":{to},"p":{publisher},"n":{n},"t":{t},"pad":"{pad}"}}"#)
}

/// What one client received, by stamp.
pub(crate) struct Tally {
    /// The index of the client's user (`load-<user>`).
    pub(crate) user: usize,
    /// This run's id: messages with another are left over from an earlier run.
    pub(crate) run: u64,
    /// Per publisher: the numbers received.
    pub(crate) seen: Vec<Bitset>,
    pub(crate) latency: Histogram,
    pub(crate) duplicates: u64,
    pub(crate) misrouted: u64,
    pub(crate) stale: u64,
}

impl Tally {
    pub(crate) fn new(user: usize, run: u64, publishers: usize) -> Self {
        Self {
            user,
            run,
            seen: vec![Bitset::default(); publishers],
            latency: Histogram::default(),
            duplicates: 0,
            misrouted: 0,
            stale: 0,
        }
    }

    /// Counts one message (`None`: its data is not a stamp) received `now` µs into the run;
    /// true if it is new and this client's.
    pub(crate) fn record(&mut self, stamp: Option<Stamp>, now: u64) -> bool {
        let stamp = match stamp {
            Some(stamp) if stamp.r == self.run => stamp,
            _ => {
                self.stale += 1;
                return false;
            }
        };
        if stamp.u != self.user {
            self.misrouted += 1;
            return false;
        }
        let Some(seen) = self.seen.get_mut(stamp.p) else {
            self.stale += 1;
            return false;
        };
        if seen.insert(stamp.n) {
            self.latency.record(now.saturating_sub(stamp.t));
            true
        } else {
            self.duplicates += 1;
            false
        }
    }
}

impl Receiver {
    pub(crate) async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        kick: Arc<Notify>,
    ) -> ReceiverStats {
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                () = kick.notified() => self.client.reconnect(),
                event = self.client.recv() => match event {
                    Ok(event) => self.on_event(event),
                    Err(e) => {
                        self.error = Some(e.to_string());
                        break;
                    }
                },
            }
        }
        let Receiver {
            client,
            tally,
            reconnects,
            missed,
            error,
            ..
        } = self;
        client.close().await;
        ReceiverStats {
            tally,
            reconnects,
            missed,
            error,
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Message(m) => {
                let now = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
                if self.tally.record(m.json::<Stamp>().ok(), now) {
                    self.shared.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::Connected(info) => {
                self.connects += 1;
                if self.connects > 1 {
                    self.reconnects += 1;
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                self.missed += info.missed.total();
            }
            _ => {}
        }
    }
}
