//! A spin lock in shared memory whose word records the holder's pid.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

use crate::sys::process;

/// How often a spinning waiter checks that the holder is alive.
const LIVENESS_CHECK: Duration = Duration::from_millis(1);

/// A process-shared spin lock: `0` free, otherwise the holder's pid.
///
/// Waiters never sleep on a futex: they spin with exponential backoff and
/// then yield the core (`sched_yield`) between attempts, so a waiter on a
/// shared core lets the holder run. Meant for very short critical sections.
///
/// SYNC: acquire is a CAS with Acquire, release a store with Release.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RawSpin {
    word: AtomicU32,
}

// SAFETY: `#[repr(C)]`, one atomic; every bit pattern is valid.
unsafe impl crate::segment::ShmSafe for RawSpin {}

impl RawSpin {
    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> bool {
        let me = process::current_pid();
        self.word.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    /// Takes the lock, spinning until `deadline`. `Ok(Some(pid))` when it was
    /// taken over from holder `pid`, who died; `Err(holder)` on timeout.
    pub fn lock(&self, deadline: Option<Instant>) -> Result<Option<u32>, u32> {
        let me = process::current_pid();
        let backoff = Backoff::new();
        let mut next_check = Instant::now() + LIVENESS_CHECK;
        loop {
            match self.word.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(None),
                Err(0) => continue,
                Err(holder) => {
                    if backoff.is_completed() {
                        std::thread::yield_now();
                    } else {
                        backoff.snooze();
                    }
                    let now = Instant::now();
                    if now >= next_check {
                        next_check = now + LIVENESS_CHECK;
                        if !process::is_alive(holder)
                            && self.word.compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed).is_ok()
                        {
                            return Ok(Some(holder));
                        }
                    }
                    if deadline.is_some_and(|d| now >= d) {
                        return Err(holder);
                    }
                }
            }
        }
    }

    /// Releases the lock (holder only).
    pub fn unlock(&self) {
        self.word.store(0, Ordering::Release);
    }

    /// The holder's pid, or `None` when free.
    pub fn holder(&self) -> Option<u32> {
        Some(self.word.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }
}
