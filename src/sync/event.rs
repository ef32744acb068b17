//! A doorbell in shared memory: wait for a condition, spinning briefly and
//! then sleeping on a futex; notify wakes sleepers only when there are any.

use crate::primitive::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::os;

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
            os::futex_wake(&self.epoch, u32::MAX);
        }
    }

    /// Waits until `ready()` is true or `deadline` passes; returns the last
    /// value of `ready()`.
    ///
    /// Spins for at most the budget `adapt` allows under `policy`, then
    /// sleeps; `adapt` learns from the outcome. `ready` is called repeatedly
    /// and must be cheap and free of side effects on failure.
    pub fn wait_until(
        &self,
        mut ready: impl FnMut() -> bool,
        deadline: Option<Instant>,
        policy: SpinPolicy,
        adapt: &AdaptiveSpin,
    ) -> bool {
        if ready() {
            return true;
        }
        let budget = adapt.budget(policy);
        if !budget.is_zero() {
            let start = Instant::now();
            let spin_end = start + budget;
            let mut i = 0u32;
            loop {
                for _ in 0..16 {
                    std::hint::spin_loop();
                }
                if ready() {
                    adapt.record(true, policy);
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
            adapt.record(false, policy);
        }
        loop {
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            // SYNC: pairs with the fence in `notify`: our re-check of `ready`
            // below cannot be ordered before the sleeper count is visible.
            fence(Ordering::SeqCst);
            let epoch = self.epoch.load(Ordering::SeqCst);
            if ready() {
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                return true;
            }
            let woke = os::futex_wait(&self.epoch, epoch, deadline);
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            if ready() {
                return true;
            }
            if woke == os::Wake::TimedOut || deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
        }
    }
}

/// Waits until `ready()` is true or `deadline` passes, sleeping on all of
/// `events` at once (`futex_waitv`): whichever is notified wakes the waiter.
/// Returns the last value of `ready()`.
///
/// No spinning: this is for waiting on many idle channels. With more than
/// 128 events, or a kernel without `futex_waitv`, it polls every millisecond.
pub fn wait_any(events: &[&Event], mut ready: impl FnMut() -> bool, deadline: Option<Instant>) -> bool {
    loop {
        if ready() {
            return true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        if events.len() > os::WAITV_MAX {
            let nap = Instant::now() + Duration::from_millis(1);
            std::thread::sleep(deadline.map_or(nap, |d| d.min(nap)).saturating_duration_since(Instant::now()));
            continue;
        }
        for e in events {
            e.sleepers.fetch_add(1, Ordering::SeqCst);
        }
        // SYNC: as in `wait_until`: announce, fence, then re-check.
        fence(Ordering::SeqCst);
        let words: Vec<(&AtomicU32, u32)> = events.iter().map(|e| (&e.epoch, e.epoch.load(Ordering::SeqCst))).collect();
        let woke = if ready() { Some(os::Wake::Woken) } else { os::futex_wait_any(&words, deadline) };
        for e in events {
            e.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        if woke.is_none() {
            // No futex_waitv: poll.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A waiter's own, process-local memory of whether spinning pays off.
///
/// Spinning only helps while the other side is running on another core. When
/// the cores are oversubscribed (more busy processes than cores), a spinning
/// waiter takes the very core the other side needs, and every wait ends up
/// sleeping after a wasted spin. So the budget halves each time a spin ends in
/// sleep and doubles each time a spin succeeds, up to the policy's maximum.
/// Below [`MIN_SPIN`] the waiter does not spin at all (sleeping at once frees
/// the core for the side it waits on), except for one probe spin of
/// `MIN_SPIN` every [`PROBE_EVERY`] waits, which notices when spinning pays
/// again. Hand-offs between busy processes stay sub-microsecond, and a loaded
/// machine quickly falls back to sleeping.
#[derive(Debug)]
pub struct AdaptiveSpin {
    budget_ns: AtomicU32,
    waits: AtomicU32,
}

/// How often a waiter that has stopped spinning probes with a short spin.
pub const PROBE_EVERY: u32 = 32;

/// The smallest spin budget: enough to catch a reply that is already on its
/// way, small enough to cost nothing noticeable when it is not.
pub const MIN_SPIN: Duration = Duration::from_micros(2);

impl AdaptiveSpin {
    /// A fresh memory, starting at the policy's maximum.
    pub fn new() -> AdaptiveSpin {
        AdaptiveSpin { budget_ns: AtomicU32::new(u32::MAX), waits: AtomicU32::new(0) }
    }

    /// The spin budget for the next wait under `policy`.
    pub fn budget(&self, policy: SpinPolicy) -> Duration {
        // The loom model explores interleavings, not timings: never spin there.
        if cfg!(loom) || policy.spin.is_zero() {
            return Duration::ZERO;
        }
        let max = policy.spin.as_nanos().min(u32::MAX as u128) as u32;
        let budget = self.budget_ns.load(Ordering::Relaxed).min(max);
        if budget < MIN_SPIN.as_nanos() as u32 && budget < max {
            let n = self.waits.fetch_add(1, Ordering::Relaxed);
            // Probe with the full budget: a short probe could never succeed
            // when a hand-off takes longer than it, and spinning would stay off.
            return if n % PROBE_EVERY == 0 { policy.spin } else { Duration::ZERO };
        }
        Duration::from_nanos(budget as u64)
    }

    /// Learns from a spin that succeeded (`true`) or ended in sleep.
    pub fn record(&self, spun_ok: bool, policy: SpinPolicy) {
        let max = policy.spin.as_nanos().min(u32::MAX as u128) as u32;
        let cur = self.budget_ns.load(Ordering::Relaxed).min(max);
        // A success (probes included) restores the full budget at once; each
        // failure halves it.
        let next = if spun_ok { max } else { cur / 2 };
        if next != cur {
            self.budget_ns.store(next, Ordering::Relaxed);
        }
    }
}

impl Default for AdaptiveSpin {
    fn default() -> Self {
        AdaptiveSpin::new()
    }
}

impl Clone for AdaptiveSpin {
    fn clone(&self) -> Self {
        AdaptiveSpin { budget_ns: AtomicU32::new(self.budget_ns.load(Ordering::Relaxed)), waits: AtomicU32::new(0) }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn budget_halves_on_failure_and_resets_on_success() {
        let policy = SpinPolicy { spin: Duration::from_micros(64) };
        let a = AdaptiveSpin::new();
        assert_eq!(a.budget(policy), Duration::from_micros(64));
        a.record(false, policy);
        assert_eq!(a.budget(policy), Duration::from_micros(32));
        a.record(true, policy);
        assert_eq!(a.budget(policy), Duration::from_micros(64));
        for _ in 0..20 {
            a.record(false, policy);
        }
        // Below the minimum: no spin, but one full probe spin every PROBE_EVERY waits.
        let budgets: Vec<Duration> = (0..PROBE_EVERY * 2).map(|_| a.budget(policy)).collect();
        assert_eq!(budgets.iter().filter(|b| **b == policy.spin).count(), 2);
        assert_eq!(budgets.iter().filter(|b| b.is_zero()).count(), PROBE_EVERY as usize * 2 - 2);
        // A probe that succeeds brings spinning back in full.
        a.record(true, policy);
        assert_eq!(a.budget(policy), Duration::from_micros(64));
        assert_eq!(a.budget(SpinPolicy::SLEEP), Duration::ZERO);
    }

    #[test]
    fn a_wait_times_out_and_a_notify_wakes_a_sleeper() {
        let e = std::sync::Arc::new(Event::default());
        let flag = std::sync::Arc::new(AtomicU32::new(0));
        let a = AdaptiveSpin::new();
        let d = Some(Instant::now() + Duration::from_millis(20));
        assert!(!e.wait_until(|| flag.load(Ordering::Acquire) == 1, d, SpinPolicy::SLEEP, &a));
        let (e2, f2) = (e.clone(), flag.clone());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            f2.store(1, Ordering::Release);
            e2.notify();
        });
        assert!(e.wait_until(|| flag.load(Ordering::Acquire) == 1, None, SpinPolicy::SLEEP, &a));
        t.join().unwrap();
    }
}
