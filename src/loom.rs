//! The one place that chooses between `std` and `loom` primitives.
//!
//! Every atomic, `Arc`, `UnsafeCell` and thread primitive that is shared between threads is
//! imported from here, so that `RUSTFLAGS="--cfg loom"` swaps in loom's model-checked versions
//! (the layout of tokio's `src/loom/mod.rs`). Loom models build their rings with two slots,
//! which keeps them exhaustive and fast.

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    hint::spin_loop,
    sync::{
        atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc,
    },
    thread,
};

#[cfg(not(loom))]
pub(crate) use std::{
    hint::spin_loop,
    sync::{
        atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc,
    },
    thread,
};

/// `std`'s `UnsafeCell` behind loom's closure-based API, so ring code reads the same in both.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Parks the current thread for at most `timeout` (loom models no time, so there it parks until
/// unparked; models must therefore always unpark).
pub(crate) fn park_timeout(timeout: std::time::Duration) {
    #[cfg(loom)]
    {
        let _ = timeout;
        thread::park();
    }
    #[cfg(not(loom))]
    thread::park_timeout(timeout);
}
