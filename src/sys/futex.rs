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

/// One entry of `futex_waitv(2)`.
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// `FUTEX2_SIZE_U32`: the words are 32 bits (and process-shared: no private flag).
const FUTEX2_SIZE_U32: u32 = 2;
/// The most words one `futex_waitv` call takes.
pub const WAITV_MAX: usize = 128;

/// Sleeps until one of `words` is woken (or differs from its expected value)
/// or `deadline` passes. At most [`WAITV_MAX`] words; `None` if the kernel
/// has no `futex_waitv` (before Linux 5.16): the caller then polls.
pub fn wait_any(words: &[(&AtomicU32, u32)], deadline: Option<Instant>) -> Option<Wake> {
    debug_assert!(words.len() <= WAITV_MAX);
    let waiters: Vec<FutexWaitv> = words
        .iter()
        .map(|(w, v)| FutexWaitv { val: *v as u64, uaddr: w.as_ptr() as u64, flags: FUTEX2_SIZE_U32, reserved: 0 })
        .collect();
    let ts = deadline.map(|d| monotonic_after(d.saturating_duration_since(Instant::now())));
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `waiters` is a live array of `len` entries whose addresses are
    // valid u32 words for the call; `ts_ptr` is null or a live timespec. The
    // kernel only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            waiters.as_ptr(),
            waiters.len() as libc::c_uint,
            0 as libc::c_uint,
            ts_ptr,
            libc::CLOCK_MONOTONIC,
        )
    };
    if r >= 0 {
        return Some(Wake::Woken);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOSYS) => None,
        Some(libc::ETIMEDOUT) => Some(Wake::TimedOut),
        _ => Some(Wake::Woken),
    }
}
