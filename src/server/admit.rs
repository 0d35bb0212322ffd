//! Admission: every accepted socket (HTTP, `/echo`, WebSocket, plain or TLS) takes a slot
//! against `max_connections` and one against `max_connections_per_ip` for its address, held
//! until the socket closes, lingering included.
//!
//! A socket past either limit is not dropped unanswered: it is served one request that gets a
//! refusal the client can read (HTTP 503 with `Retry-After`, WebSocket close 4100), with the
//! same header timeout as any other. Those refusals are themselves bounded: at most
//! [`MAX_REFUSING`] sockets are being refused at a time, and one more is closed at once,
//! so a flood of connections costs the server a bounded number of sockets and tasks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Sockets being answered with a refusal at once, beyond the limits; one more is closed
/// without an answer. Enough for the refusals a busy server's clients can read while they
/// back off; a flood beyond it gets a closed socket, as from any full server.
pub(crate) const MAX_REFUSING: usize = 64;

/// The counts that the limits are checked against, shared by every connection task.
pub(crate) struct Admission {
    max: usize,
    max_per_ip: usize,
    open: AtomicUsize,
    refusing: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A socket's place in the counts, given back on drop: admitted (served normally), or
/// refused (past a limit: answered with a refusal, then closed).
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
    refused: bool,
}

impl Ticket {
    pub(crate) fn is_refused(&self) -> bool {
        self.refused
    }
}

impl Admission {
    pub(crate) fn new(max: usize, max_per_ip: usize) -> Self {
        Self {
            max,
            max_per_ip,
            open: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Sockets admitted and open now (refused ones not counted).
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes a slot for a socket from `ip`; `None` past a limit with [`MAX_REFUSING`]
    /// refusals under way: close it at once.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Ticket> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = per_ip.get(&ip).copied().unwrap_or(0);
        // Under the lock, so two accepts cannot both take the last slot.
        if from_ip < self.max_per_ip && self.open.load(Ordering::Relaxed) < self.max {
            *per_ip.entry(ip).or_insert(0) += 1;
            self.open.fetch_add(1, Ordering::Relaxed);
            return Some(Ticket {
                admission: self.clone(),
                ip,
                refused: false,
            });
        }
        drop(per_ip);
        let refusing = self.refusing.fetch_add(1, Ordering::Relaxed);
        if refusing >= MAX_REFUSING {
            self.refusing.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Ticket {
            admission: self.clone(),
            ip,
            refused: true,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let a = &self.admission;
        if self.refused {
            a.refusing.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let mut per_ip = a.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // An address with no socket costs nothing: the map holds only addresses with
                // sockets open, so it is bounded by max_connections.
                per_ip.remove(&self.ip);
            }
        }
        a.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn admitted(t: &Option<Ticket>) -> bool {
        t.as_ref().is_some_and(|t| !t.is_refused())
    }

    fn refused(t: &Option<Ticket>) -> bool {
        t.as_ref().is_some_and(Ticket::is_refused)
    }

    #[test]
    fn the_per_address_cap_refuses_one_address_and_not_another() {
        let a = Arc::new(Admission::new(10, 2));
        let first = [a.admit(A), a.admit(A)];
        assert!(first.iter().all(admitted));
        assert!(refused(&a.admit(A)));
        assert!(admitted(&a.admit(B)));
        drop(first);
        assert!(
            admitted(&a.admit(A)),
            "a closed socket frees its address's slot"
        );
        assert_eq!(
            a.per_ip.lock().unwrap().len(),
            0,
            "no address is kept without sockets"
        );
    }

    #[test]
    fn past_the_limit_sockets_are_refused_then_dropped() {
        let a = Arc::new(Admission::new(1, 1));
        let held = a.admit(A);
        assert!(admitted(&held));
        let refusing: Vec<_> = (0..MAX_REFUSING).map(|_| a.admit(B)).collect();
        assert!(refusing.iter().all(refused));
        assert!(a.admit(B).is_none());
        assert_eq!(a.open(), 1);
        drop(refusing);
        assert!(refused(&a.admit(B)));
        drop(held);
        assert!(admitted(&a.admit(B)));
    }
}
