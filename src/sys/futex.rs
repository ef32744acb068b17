//! Futex wait and wake on a 32-bit word in shared memory.
//!
//! These are the process-shared operations (no `FUTEX_PRIVATE_FLAG`), so a
//! word in a `MAP_SHARED` mapping wakes waiters in every process mapping it.
//! Deadlines are absolute `CLOCK_MONOTONIC` times (`FUTEX_WAIT_BITSET`), so a
//! wait interrupted by a signal resumes with the same deadline.

use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

/// How a [`wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Woken, the word was not `expected`, or a spurious wake-up: re-check.
    Woken,
    /// The deadline passed.
    TimedOut,
}

/// Sleeps while `*word == expected`, until woken or `deadline` (forever if `None`).
pub fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> Wake {
    let ts = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        monotonic_after(left)
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; the
    // kernel only reads it. `ts_ptr` is null or points to a live timespec.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT_BITSET,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            libc::FUTEX_BITSET_MATCH_ANY,
        )
    };
    if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT) {
        Wake::TimedOut
    } else {
        Wake::Woken
    }
}

/// Wakes up to `n` waiters sleeping on `word`; returns how many were woken.
pub fn wake(word: &AtomicU32, n: u32) -> usize {
    let n = n.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: FUTEX_WAKE only uses the address of `word` as a key; it does not
    // read or write memory.
    let r = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n) };
    r.max(0) as usize
}

/// The `CLOCK_MONOTONIC` time `d` from now, saturating far in the future.
fn monotonic_after(d: Duration) -> libc::timespec {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let secs = d.as_secs().min(i64::MAX as u64 / 2) as i64;
    let mut ts =
        libc::timespec { tv_sec: now.tv_sec.saturating_add(secs), tv_nsec: now.tv_nsec + d.subsec_nanos() as i64 };
    if ts.tv_nsec >= 1_000_000_000 {
        ts.tv_nsec -= 1_000_000_000;
        ts.tv_sec = ts.tv_sec.saturating_add(1);
    }
    ts
}
