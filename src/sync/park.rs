//! The park/wake handshake between a shard worker and the threads that hand it work.
//!
//! It is Dekker's pattern with two SeqCst fences. The worker announces `sleeping`, fences,
//! then looks at its queues one last time before parking; a producer publishes its work,
//! fences, then looks at `sleeping`. Of the two fences one comes first in the single SeqCst
//! order, so either the worker sees the work or the producer sees `sleeping` and unparks it:
//! a wake-up is never lost. Unparking a thread that is not parked only stores a token that
//! makes its next `park` return at once, which is harmless.
//!
//! The producer's cost when the worker is awake is one fence and one load of a line the
//! worker rarely writes.

use std::time::Duration;

use crate::loom::{fence, park_timeout, thread::Thread, AtomicBool, Ordering};

pub(crate) struct Parker {
    sleeping: AtomicBool,
}

impl Parker {
    pub(crate) fn new() -> Self {
        Self {
            sleeping: AtomicBool::new(false),
        }
    }

    /// Worker side. Parks the calling thread for at most `timeout` unless `has_work`, checked
    /// after announcing the sleep, says there is something to do.
    pub(crate) fn park_unless(&self, timeout: Duration, has_work: impl FnOnce() -> bool) {
        self.sleeping.store(true, Ordering::Relaxed);
        // SeqCst: orders the store above before the queue loads in `has_work`, against the
        // producer's fence in `wake` (see the module docs).
        fence(Ordering::SeqCst);
        if !has_work() {
            park_timeout(timeout);
        }
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Producer side, called after the work is published. Unparks `worker` if it sleeps.
    pub(crate) fn wake(&self, worker: &Thread) {
        // SeqCst: orders the publication of the work before the load of `sleeping`.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            worker.unpark();
        }
    }
}

#[cfg(all(test, loom))]
mod loom_park {
    use super::*;
    use crate::loom::{thread, Arc, AtomicBool};
    use crate::sync::mpsc;
    use crate::sync::signal::{Link, Linked, SignalList};

    struct Node {
        link: Link<Node>,
    }
    impl Linked for Node {
        fn link(&self) -> &Link<Node> {
            &self.link
        }
    }

    /// A worker that parks whenever it finds nothing: a producer pushing into the inbox and a
    /// session signalling through the list both get their work seen. A lost wake-up leaves the
    /// worker parked forever, which loom reports as a deadlock.
    #[test]
    fn loom_park_no_lost_wakeup() {
        loom::model(|| {
            let (tx, mut rx) = mpsc::channel::<u32>(2);
            let signals = Arc::new(SignalList::<Node>::new());
            let parker = Arc::new(Parker::new());
            let stop = Arc::new(AtomicBool::new(false));

            let worker = {
                let (signals, parker) = (signals.clone(), parker.clone());
                thread::spawn(move || {
                    let (mut items, mut nodes) = (0, 0);
                    while items < 1 || nodes < 1 {
                        let mut did = false;
                        while rx.pop().is_some() {
                            items += 1;
                            did = true;
                        }
                        for _ in signals.take_all() {
                            nodes += 1;
                            did = true;
                        }
                        if !did {
                            parker.park_unless(Duration::from_secs(1), || {
                                !rx.is_empty() || !signals.is_empty()
                            });
                        }
                    }
                })
            };
            let me = worker.thread().clone();
            let producer = {
                let (parker, me) = (parker.clone(), me.clone());
                thread::spawn(move || {
                    tx.push(1).unwrap();
                    parker.wake(&me);
                })
            };
            let node = Arc::new(Node { link: Link::new() });
            signals.push(&node);
            parker.wake(&me);
            producer.join().unwrap();
            worker.join().unwrap();
            stop.store(true, Ordering::Relaxed);
        });
    }
}
