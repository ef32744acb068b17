//! The loom model of [`os`](super::os) (the operating system as the sync
//! algorithms see it). Not part of the crate: only the loom model tests
//! (`tests/loom_locks.rs`, `tests/loom_ring.rs`) compile it, mounted at their
//! crate root as `os`, with loom's atomics as `crate::primitive`.
//!
//! - Pids are model threads; nobody dies.
//! - A futex wait with a deadline may end at any time (the deadline may
//!   pass): it returns at once, as a spurious wake-up every caller tolerates.
//! - A futex wait without a deadline really sleeps until a wake on its word,
//!   as the kernel's does: the value check and the enqueue are atomic with
//!   respect to wakes (here: under one model mutex). A lost wake-up therefore
//!   leaves the waiter asleep for ever, which loom reports as a deadlock.

use std::time::Instant;

use loom::sync::{Condvar, Mutex};

use crate::primitive::{AtomicU32, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    Woken,
    TimedOut,
}

/// Each model thread is a "process" of its own.
pub(crate) fn current_pid() -> u32 {
    // Deterministic across executions (loom requires it): from the model's
    // own thread numbering.
    let id = format!("{:?}", loom::thread::current().id());
    100 + id.chars().filter(char::is_ascii_digit).collect::<String>().parse::<u32>().unwrap_or(0)
}

/// Nobody dies in these models.
pub(crate) fn is_alive(_pid: u32) -> bool {
    true
}

/// The model kernel: per futex word (by address), how many wakes it has had.
struct Kernel {
    wakes: Mutex<Vec<(usize, u64)>>,
    cond: Condvar,
}

loom::lazy_static! {
    static ref KERNEL: Kernel = Kernel { wakes: Mutex::new(Vec::new()), cond: Condvar::new() };
}

fn key(word: &AtomicU32) -> usize {
    word as *const AtomicU32 as usize
}

fn wakes_of(table: &[(usize, u64)], k: usize) -> u64 {
    table.iter().find(|(a, _)| *a == k).map_or(0, |(_, n)| *n)
}

/// Sleeps until one of `words` differs from its expected value or is woken.
fn sleep(words: &[(&AtomicU32, u32)]) {
    let mut table = KERNEL.wakes.lock().unwrap();
    if words.iter().any(|(w, v)| w.load(Ordering::SeqCst) != *v) {
        return;
    }
    let seen: Vec<u64> = words.iter().map(|(w, _)| wakes_of(&table, key(w))).collect();
    while words.iter().zip(&seen).all(|((w, _), n)| wakes_of(&table, key(w)) == *n) {
        table = KERNEL.cond.wait(table).unwrap();
    }
}

pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> Wake {
    if deadline.is_some() {
        loom::thread::yield_now();
        return Wake::Woken;
    }
    sleep(&[(word, expected)]);
    Wake::Woken
}

pub(crate) const WAITV_MAX: usize = 128;

pub(crate) fn futex_wait_any(words: &[(&AtomicU32, u32)], deadline: Option<Instant>) -> Option<Wake> {
    if deadline.is_some() {
        loom::thread::yield_now();
    } else {
        sleep(words);
    }
    Some(Wake::Woken)
}

pub(crate) fn futex_wake(word: &AtomicU32, _n: u32) -> usize {
    let mut table = KERNEL.wakes.lock().unwrap();
    let k = key(word);
    match table.iter_mut().find(|(a, _)| *a == k) {
        Some((_, n)) => *n += 1,
        None => table.push((k, 1)),
    }
    KERNEL.cond.notify_all();
    0
}

pub(crate) fn yield_now() {
    loom::thread::yield_now();
}
