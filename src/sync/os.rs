//! What the lock algorithms need from the operating system, gathered in one
//! place: the loom model tests (`tests/loom_locks.rs`) compile the same
//! algorithm files against a model of this module.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::primitive::AtomicU32;

pub(crate) use crate::sys::futex::{wait as futex_wait, wait_any as futex_wait_any, Wake, WAITV_MAX};
pub(crate) use crate::sys::process::{current_pid, is_alive};

/// Futex wake system calls made by this process through [`futex_wake`].
static WAKE_CALLS: AtomicU64 = AtomicU64::new(0);

/// Wakes up to `n` waiters sleeping on `word` (one system call, counted).
#[inline]
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) -> usize {
    WAKE_CALLS.fetch_add(1, Ordering::Relaxed);
    crate::sys::futex::wake(word, n)
}

/// How many futex wake system calls the sync primitives of this process have
/// made so far.
pub(crate) fn wake_calls() -> u64 {
    WAKE_CALLS.load(Ordering::Relaxed)
}

/// Gives the core to another runnable thread.
pub(crate) fn yield_now() {
    std::thread::yield_now();
}
