//! Atomics for the lock-free algorithms.
//!
//! `ring::queue` imports its atomics from here and nowhere else, so that the
//! loom model test (`tests/loom_ring.rs`) can compile the very same file
//! against loom's model-checked atomics by providing its own `primitive`.

pub(crate) use std::sync::atomic::{AtomicU64, Ordering};

/// A hint that this thread is waiting for another (loom: a yield point).
#[inline]
pub(crate) fn spin_hint() {
    std::hint::spin_loop();
}
