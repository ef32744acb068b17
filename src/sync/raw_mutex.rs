//! A mutex over one futex word in shared memory that records its holder's pid.

use crate::primitive::{AtomicU32, Ordering};
use std::fmt;
use std::time::{Duration, Instant};

use super::os;

/// Set in the lock word while someone may be sleeping on it.
const WAITERS: u32 = 1 << 31;
/// The holder's pid (Linux pids are below 2^22).
const PID_MASK: u32 = !WAITERS;
/// How often a sleeping waiter checks that the holder is still alive.
const LIVENESS_CHECK: Duration = Duration::from_millis(20);

/// A process-shared mutex word with owner-died recovery.
///
/// State table of the word:
///
/// | value              | meaning                                     |
/// |--------------------|---------------------------------------------|
/// | `0`                | unlocked                                    |
/// | `pid`              | held by process `pid`, nobody sleeping      |
/// | `pid \| WAITERS`   | held by `pid`, waiters may be sleeping      |
///
/// The fast path is one CAS in (`0 -> pid`) and one swap out (`-> 0`), as a
/// robust pthread mutex's; liveness checks, the clock and the futex are only
/// on the contended path, and the wake only when the swap returned `WAITERS`.
///
/// SYNC: acquisition is a CAS with Acquire, release a swap with Release, so
/// the data the lock guards is published with it.
#[repr(C)]
#[derive(Default)]
pub struct RawMutex {
    word: AtomicU32,
}

// SAFETY: one atomic, `#[repr(C)]`, no pointers, no Drop; every bit pattern is valid.
unsafe impl crate::segment::ShmSafe for RawMutex {}

/// How a lock was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lock was free or released normally.
    Clean,
    /// The previous holder (this pid) died holding it; what it guarded may be
    /// half-written.
    OwnerDied(u32),
}

/// The deadline passed while process `holder` held the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTimeout {
    /// The pid that held the lock when the wait gave up.
    pub holder: u32,
}

impl fmt::Debug for RawMutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawMutex").field("holder", &(self.word.load(Ordering::Relaxed) & PID_MASK)).finish()
    }
}

impl RawMutex {
    /// Takes the lock if it is free.
    #[inline]
    pub fn try_lock(&self) -> bool {
        let me = os::current_pid() & PID_MASK;
        // SYNC: Acquire pairs with the Release swap in `unlock`.
        self.word.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    /// Takes the lock, waiting until `deadline` (forever if `None`).
    ///
    /// A holder that died is detected while waiting and its lock taken over:
    /// the result is then [`Acquired::OwnerDied`].
    #[inline]
    pub fn lock(&self, deadline: Option<Instant>) -> Result<Acquired, LockTimeout> {
        if self.try_lock() {
            return Ok(Acquired::Clean);
        }
        self.lock_contended(deadline)
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self, deadline: Option<Instant>) -> Result<Acquired, LockTimeout> {
        let me = os::current_pid() & PID_MASK;
        // Spin briefly, reading: a CAS would take the line from the holder on
        // every pass, and the holder needs it to unlock. Try again only when
        // the word reads free.
        for _ in 0..64 {
            std::hint::spin_loop();
            if self.word.load(Ordering::Relaxed) == 0
                && self.word.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                return Ok(Acquired::Clean);
            }
        }
        let mut next_check: Option<Instant> = None;
        loop {
            let cur = self.word.load(Ordering::Relaxed);
            if cur == 0 {
                // We may have had company: keep WAITERS so the next unlock wakes them.
                if self.word.compare_exchange(0, me | WAITERS, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    return Ok(Acquired::Clean);
                }
                continue;
            }
            let holder = cur & PID_MASK;
            // Liveness costs a system call and a /proc read: check it once
            // per interval of waiting, not on every contended pass.
            let now = Instant::now();
            let due = next_check.is_some_and(|t| now >= t);
            if next_check.is_none() || due {
                next_check = Some(now + LIVENESS_CHECK);
            }
            if due && !os::is_alive(holder) {
                if self.word.compare_exchange(cur, me | WAITERS, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    return Ok(Acquired::OwnerDied(holder));
                }
                continue;
            }
            if cur & WAITERS == 0
                && self.word.compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed).is_err()
            {
                continue;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(LockTimeout { holder });
            }
            let check = now + LIVENESS_CHECK;
            let until = deadline.map_or(check, |d| d.min(check));
            os::futex_wait(&self.word, cur | WAITERS, Some(until));
        }
    }

    /// Releases the lock.
    ///
    /// Must be called only by the holder, once per successful acquisition.
    #[inline]
    pub fn unlock(&self) {
        // SYNC: Release pairs with the Acquire CAS of the next taker.
        if self.word.swap(0, Ordering::Release) & WAITERS != 0 {
            self.wake_one();
        }
    }

    #[cold]
    fn wake_one(&self) {
        os::futex_wake(&self.word, 1);
    }

    /// The pid of the holder, or `None` when unlocked.
    pub fn holder(&self) -> Option<u32> {
        match self.word.load(Ordering::Relaxed) & PID_MASK {
            0 => None,
            pid => Some(pid),
        }
    }
}
