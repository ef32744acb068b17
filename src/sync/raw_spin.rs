//! A spin lock in shared memory whose word records the holder's pid.

use crate::primitive::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::os;

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
    #[inline]
    pub fn try_lock(&self) -> bool {
        let me = os::current_pid();
        // SYNC: Acquire pairs with the Release store in `unlock`.
        self.word.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    /// Takes the lock, spinning until `deadline`. `Ok(Some(pid))` when it was
    /// taken over from holder `pid`, who died; `Err(holder)` on timeout.
    #[inline]
    pub fn lock(&self, deadline: Option<Instant>) -> Result<Option<u32>, u32> {
        if self.try_lock() {
            return Ok(None);
        }
        self.lock_contended(deadline)
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self, deadline: Option<Instant>) -> Result<Option<u32>, u32> {
        let me = os::current_pid();
        let mut spins = 0u32;
        let mut next_check = Instant::now() + LIVENESS_CHECK;
        loop {
            match self.word.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(None),
                Err(0) => continue,
                Err(holder) => {
                    // Exponential backoff up to 64 hints, then yield the core.
                    if spins < 6 {
                        for _ in 0..(1 << spins) {
                            crate::primitive::spin_hint();
                        }
                        spins += 1;
                    } else {
                        os::yield_now();
                    }
                    let now = Instant::now();
                    if now >= next_check {
                        next_check = now + LIVENESS_CHECK;
                        if !os::is_alive(holder)
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
    #[inline]
    pub fn unlock(&self) {
        // SYNC: Release pairs with the Acquire CAS of the next taker.
        self.word.store(0, Ordering::Release);
    }

    /// The holder's pid, or `None` when free.
    pub fn holder(&self) -> Option<u32> {
        Some(self.word.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }
}
