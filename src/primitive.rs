//! Atomics for the lock-free algorithms.
//!
//! `ring::queue` and the lock algorithms in `sync/` import their atomics from
//! here and nowhere else, so that the loom model tests (`tests/loom_*.rs`) can
//! compile the very same files against loom's model-checked atomics by
//! providing their own `primitive`.

pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// A hint that this thread is waiting for another (loom: a yield point).
#[inline]
pub(crate) fn spin_hint() {
    std::hint::spin_loop();
}
