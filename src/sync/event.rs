//! A doorbell in shared memory: wait for a condition, spinning briefly and
//! then sleeping on a futex; notify wakes sleepers only when there are any.

use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::sys::futex;

/// How long a waiter spins before it sleeps.
///
/// A futex round trip costs about 11 us on the reference machine, a
/// cache-line round trip about 70 ns, so a short spin turns most hand-offs
/// between busy processes into sub-microsecond ones. The spin is bounded, so an
/// idle waiter sleeps and burns no core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinPolicy {
    /// The longest time to spin before sleeping.
    pub spin: Duration,
}

impl SpinPolicy {
    /// Never spin: sleep at once (lowest CPU use).
    pub const SLEEP: SpinPolicy = SpinPolicy { spin: Duration::ZERO };
    /// The default: spin up to 50 us, then sleep.
    pub const DEFAULT: SpinPolicy = SpinPolicy { spin: Duration::from_micros(50) };
}

impl Default for SpinPolicy {
    fn default() -> Self {
        SpinPolicy::DEFAULT
    }
}

/// A futex doorbell: `#[repr(C)]`, two words, valid when zeroed.
///
/// `epoch` is bumped by every notification that finds a sleeper; `sleepers`
/// counts processes between announcing themselves and waking.
///
/// SYNC: the waiter increments `sleepers` (SeqCst), reads `epoch`, re-checks
/// its condition and only then sleeps on `epoch`; the notifier publishes its
/// data, issues a SeqCst fence, then reads `sleepers`. Either the notifier sees
/// the sleeper (and bumps `epoch`, so the futex wait returns at once), or the
/// waiter's re-check sees the data. No wake-up is lost.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Event {
    epoch: AtomicU32,
    sleepers: AtomicU32,
}

// SAFETY: two atomics, `#[repr(C)]`, no pointers, no Drop; every bit pattern is valid.
unsafe impl crate::segment::ShmSafe for Event {}

impl Event {
    /// Wakes every process sleeping in [`Event::wait_until`] on this event, if any.
    ///
    /// Call it after the state change the waiters look for is published.
    #[inline]
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            futex::wake(&self.epoch, u32::MAX);
        }
    }

    /// Waits until `ready()` is true or `deadline` passes; returns the last
    /// value of `ready()`.
    ///
    /// Spins for at most `policy.spin`, then sleeps. `ready` is called
    /// repeatedly and must be cheap and free of side effects on failure.
    pub fn wait_until(&self, mut ready: impl FnMut() -> bool, deadline: Option<Instant>, policy: SpinPolicy) -> bool {
        if ready() {
            return true;
        }
        if !policy.spin.is_zero() {
            let start = Instant::now();
            let spin_end = start + policy.spin;
            let mut i = 0u32;
            loop {
                for _ in 0..16 {
                    std::hint::spin_loop();
                }
                if ready() {
                    return true;
                }
                i += 1;
                // Reading the clock costs ~20 ns: check it every few rounds.
                if i % 8 == 0 {
                    let now = Instant::now();
                    if now >= spin_end || deadline.is_some_and(|d| now >= d) {
                        break;
                    }
                    // Give the other side the core if we share one.
                    if i % 64 == 0 {
                        std::thread::yield_now();
                    }
                }
            }
        }
        loop {
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            let epoch = self.epoch.load(Ordering::SeqCst);
            if ready() {
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                return true;
            }
            let woke = futex::wait(&self.epoch, epoch, deadline);
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            if ready() {
                return true;
            }
            if woke == futex::Wake::TimedOut || deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
        }
    }
}
