//! An intrusive lock-free list of nodes that want the shard worker's attention.
//!
//! Sessions use it to tell their shard "I have a new ack watermark" or "I closed": pushing never
//! fails and never allocates, which matters because a session's `Drop` must be able to signal
//! its close, and a bounded ring cannot promise that. Each node is in the list at most once
//! (its `queued` flag), so the list never holds more nodes than there are sessions, and many
//! acks from one session between two worker passes coalesce into one entry.
//!
//! The list is a Treiber stack that is only ever emptied whole (`take_all` swaps the head with
//! null), the shape of Linux's `llist` and of the wake lists in many runtimes. Because single
//! nodes are never popped, the ABA problem of Treiber stacks cannot arise: a push that links
//! to a head that was taken and pushed again still links to the current list.
//!
//! The list holds one strong `Arc` count for every queued node (`Arc::into_raw` on push,
//! `Arc::from_raw` on take).

use std::marker::PhantomData;
use std::ptr;

use crate::loom::{Arc, AtomicBool, AtomicPtr, Ordering};

/// The per-node part of the list: embed one in the node type.
pub(crate) struct Link<T> {
    next: AtomicPtr<T>,
    queued: AtomicBool,
}

impl<T> Link<T> {
    pub(crate) fn new() -> Self {
        Self {
            next: AtomicPtr::new(ptr::null_mut()),
            queued: AtomicBool::new(false),
        }
    }
}

/// A node type that embeds a [`Link`].
pub(crate) trait Linked: Sized {
    fn link(&self) -> &Link<Self>;
}

pub(crate) struct SignalList<T: Linked> {
    head: AtomicPtr<T>,
    _owns: PhantomData<Arc<T>>,
}

// SAFETY: the list only moves `Arc<T>`s between threads.
unsafe impl<T: Linked + Send + Sync> Send for SignalList<T> {}
// SAFETY: as above; all shared state is atomic.
unsafe impl<T: Linked + Send + Sync> Sync for SignalList<T> {}

impl<T: Linked> SignalList<T> {
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// Queues `node` unless it is already queued. Writes made to the node before the call are
    /// visible to the worker when it takes the node. Returns true if the node was added.
    pub(crate) fn push(&self, node: &Arc<T>) -> bool {
        // AcqRel: Release hands our earlier writes to the worker's `swap(false)`; if the node is
        // already queued, that swap has not happened yet and will read from this one.
        if node.link().queued.swap(true, Ordering::AcqRel) {
            return false;
        }
        let raw = Arc::into_raw(node.clone()) as *mut T;
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            node.link().next.store(head, Ordering::Relaxed);
            // Release: the node's `next` and contents are visible to the Acquire in `take_all`.
            match self
                .head
                .compare_exchange_weak(head, raw, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(current) => head = current,
            }
        }
    }

    /// Takes every queued node. Each node's `queued` flag is cleared before it is yielded, so a
    /// signal sent after the worker looked at the node queues it again.
    pub(crate) fn take_all(&self) -> Drain<T> {
        // Acquire: pairs with the Release CAS of every push in the taken chain.
        let head = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        Drain {
            next: head,
            _owns: PhantomData,
        }
    }

    /// True if no node is queued. Used by the park handshake after a SeqCst fence.
    pub(crate) fn is_empty(&self) -> bool {
        self.head.load(Ordering::Acquire).is_null()
    }
}

impl<T: Linked> Drop for SignalList<T> {
    fn drop(&mut self) {
        for node in self.take_all() {
            drop(node);
        }
    }
}

/// The nodes taken by [`SignalList::take_all`], most recently queued first.
pub(crate) struct Drain<T: Linked> {
    next: *mut T,
    _owns: PhantomData<Arc<T>>,
}

impl<T: Linked> Iterator for Drain<T> {
    type Item = Arc<T>;

    fn next(&mut self) -> Option<Arc<T>> {
        if self.next.is_null() {
            return None;
        }
        // SAFETY: every pointer in the chain came from `Arc::into_raw` in `push`, and the chain
        // was detached by `take_all`, so this is its only owner.
        let node = unsafe { Arc::from_raw(self.next as *const T) };
        self.next = node.link().next.load(Ordering::Relaxed);
        // AcqRel: Acquire reads from the pusher's Release swap, so the node's new state is
        // visible; a later signal reads our `false` and queues the node again.
        node.link().queued.swap(false, Ordering::AcqRel);
        Some(node)
    }
}

impl<T: Linked> Drop for Drain<T> {
    fn drop(&mut self) {
        for node in self.by_ref() {
            drop(node);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    struct Node {
        link: Link<Node>,
        value: AtomicU64,
    }
    impl Linked for Node {
        fn link(&self) -> &Link<Node> {
            &self.link
        }
    }

    fn node(v: u64) -> Arc<Node> {
        Arc::new(Node {
            link: Link::new(),
            value: AtomicU64::new(v),
        })
    }

    #[test]
    fn coalesces_and_requeues() {
        let list = SignalList::new();
        let (a, b) = (node(1), node(2));
        assert!(list.push(&a));
        assert!(!list.push(&a), "already queued");
        assert!(list.push(&b));
        let taken: Vec<u64> = list
            .take_all()
            .map(|n| n.value.load(Ordering::Relaxed))
            .collect();
        assert_eq!(taken, vec![2, 1]);
        assert!(list.is_empty());
        assert!(list.push(&a), "queued again after take");
        drop(list);
        assert_eq!(Arc::strong_count(&a), 1, "list released its count");
    }
}

#[cfg(all(test, loom))]
mod loom_signal {
    use super::*;
    use crate::loom::AtomicU64;
    use loom::thread;

    struct Node {
        link: Link<Node>,
        acked: AtomicU64,
    }
    impl Linked for Node {
        fn link(&self) -> &Link<Node> {
            &self.link
        }
    }

    /// A session raises its ack watermark twice, signalling each time, while the worker takes
    /// the list: after the session is done and the worker takes once more, the worker has
    /// seen the final watermark. No signal is lost to the coalescing flag.
    #[test]
    fn loom_signal_coalescing_loses_nothing() {
        loom::model(|| {
            let list = Arc::new(SignalList::new());
            let n = Arc::new(Node {
                link: Link::new(),
                acked: AtomicU64::new(0),
            });
            let session = {
                let (list, n) = (list.clone(), n.clone());
                thread::spawn(move || {
                    for ack in 1..=2 {
                        n.acked.fetch_max(ack, Ordering::Relaxed);
                        list.push(&n);
                    }
                })
            };
            let mut seen = 0;
            for node in list.take_all() {
                seen = seen.max(node.acked.load(Ordering::Relaxed));
            }
            session.join().unwrap();
            for node in list.take_all() {
                seen = seen.max(node.acked.load(Ordering::Relaxed));
            }
            // Either the last push queued the node (taken just above) or it found the node
            // queued by an earlier push whose take had not cleared the flag yet, in which case
            // that take's `swap(false)` read from it and saw `acked == 2`.
            assert_eq!(seen, 2);
        });
    }
}
