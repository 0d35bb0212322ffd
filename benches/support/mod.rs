//! Code the engine benches share (`throughput.rs`, `metrics.rs`): the payload pool and the
//! bounded wait. Not a bench target itself (Cargo only takes `benches/*.rs` and
//! `benches/*/main.rs`).
#![allow(dead_code)] // each bench uses its own subset

use std::hint::spin_loop;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether::{Engine, Message, TrySendError, UserId};

/// Messages per engine run.
pub const N: u64 = 200_000;
/// Payload size in bytes.
pub const PAYLOAD: usize = 64;
/// A run that has not finished after this long panics.
pub const HANG: Duration = Duration::from_secs(60);

/// `N * PAYLOAD` bytes; payload `i` is bytes `[i * PAYLOAD, (i + 1) * PAYLOAD)` and starts with
/// `i` as a little-endian u64. Leaked once so payloads can be `Bytes::from_static`.
pub fn pool() -> &'static [u8] {
    static POOL: OnceLock<&'static [u8]> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut v = vec![0xA5u8; N as usize * PAYLOAD];
        for (i, chunk) in v.chunks_exact_mut(PAYLOAD).enumerate() {
            chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        }
        Vec::leak(v)
    })
}

#[inline]
pub fn payload(i: u64) -> Bytes {
    let at = i as usize * PAYLOAD;
    Bytes::from_static(&pool()[at..at + PAYLOAD])
}

/// Spin a little, then yield; panic once the run's deadline has passed.
pub struct Patience {
    spins: u32,
    deadline: Instant,
}

impl Patience {
    const SPINS: u32 = 64;

    pub fn new(deadline: Instant) -> Self {
        Self { spins: 0, deadline }
    }

    #[inline]
    pub fn progress(&mut self) {
        self.spins = 0;
    }

    #[inline]
    pub fn wait(&mut self, what: &str) {
        self.spins += 1;
        if self.spins < Self::SPINS {
            spin_loop();
            return;
        }
        thread::yield_now();
        if self.spins % 256 == 0 {
            assert!(
                Instant::now() < self.deadline,
                "{what}: not done after {HANG:?}; a message was lost or withheld"
            );
        }
    }
}

/// Sends `message` with `try_send`, waiting patiently while the shard's inbox is full (the
/// back-pressure a producer sees); any other refusal fails the bench.
pub fn send_patiently(engine: &Engine, user: &UserId, message: Message, patience: &mut Patience) {
    let mut message = message;
    loop {
        match engine.try_send(user, message) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) => {
                message = m;
                patience.wait("tether producer");
            }
            Err(e) => panic!("tether refused a message: {e}"),
        }
    }
    patience.progress();
}
