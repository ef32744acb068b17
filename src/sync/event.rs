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
    /// The longest time to spin before sleeping (at most `u32::MAX`
    /// nanoseconds, about 4.3 s, are used).
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

/// Bit 0 of [`Event::word`]: some waiter may be asleep on the word.
const SLEEPERS: u32 = 1;

/// A futex doorbell: `#[repr(C)]`, two words (8 bytes), valid when zeroed.
///
/// The first word is the futex word every sleeper sleeps on:
///
/// | bits    | meaning                                                        |
/// |---------|----------------------------------------------------------------|
/// | 0       | `SLEEPERS`: a waiter announced it is going to sleep; set by waiters, cleared only by a notify that then wakes everyone |
/// | 1..=31  | the epoch: bumped (by the same add that clears `SLEEPERS`) by every notify that finds `SLEEPERS` set |
///
/// The second word is unused (kept zero) so the layout of everything that
/// embeds an `Event` stays as it was.
///
/// Protocol:
///
/// - Waiter: `w = word.fetch_or(SLEEPERS) | SLEEPERS` (announce), SeqCst
///   fence F2, re-check the condition; if still false, `futex_wait(word, w)`.
///   After waking it re-checks, and if it must sleep again it announces again.
/// - Notifier: publish the state change, SeqCst fence F1, load `word`. Bit
///   clear: nothing else to do (no read-modify-write, no system call: the hot
///   path). Bit set: CAS `w -> w + 1` (`w` is odd, so this clears `SLEEPERS`
///   and bumps the epoch at once), then `futex_wake` every sleeper.
///
/// No lost wake-up: F1 and F2 are ordered in the single SeqCst order. If F1
/// comes first, the waiter's re-check after F2 sees the published change. If
/// F2 comes first, the notifier's load after F1 sees the waiter's announce or
/// a later value of the word; a later value still has `SLEEPERS` unless some
/// notify's CAS cleared it since, and every notify that sees the bit (whose
/// CAS succeeds or finds it cleared by another) calls `futex_wake` after that
/// clearing CAS. The clear changes the word away from `w` (the epoch moves),
/// so the waiter's `futex_wait(word, w)` either finds the word changed and
/// returns at once, or was queued before the change and is woken.
///
/// Self-healing: nothing counts sleepers, so a sleeper that dies (SIGKILL)
/// leaves at most the `SLEEPERS` bit behind, which costs one extra
/// `futex_wake` on the next notify, and then the bit is clear again. The
/// same holds for a waiter that announced and then found its condition true
/// or timed out: it leaves the bit for the next notify to clear.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Event {
    /// INVARIANT: `SLEEPERS` is set whenever a live waiter may be asleep on
    /// this word (it sets the bit before its re-check and sleep).
    word: AtomicU32,
    /// Always zero; keeps the event 8 bytes.
    _reserved: AtomicU32,
}

// SAFETY: two atomics, `#[repr(C)]`, no pointers, no Drop; every bit pattern is valid.
unsafe impl crate::segment::ShmSafe for Event {}

impl Event {
    /// Wakes every process sleeping in [`Event::wait_until`] or [`wait_any`]
    /// on this event, if any.
    ///
    /// Call it after the state change the waiters look for is published.
    /// When nobody sleeps it is a fence and a load: no write, no system call.
    #[inline]
    pub fn notify(&self) {
        // SYNC: F1 (see the type's doc): pairs with F2 in `announce`; orders
        // the caller's published state before our load of `word`, so either
        // the waiter's re-check sees that state or we see its `SLEEPERS`.
        fence(Ordering::SeqCst);
        let w = self.word.load(Ordering::Relaxed);
        if w & SLEEPERS != 0 {
            self.wake(w);
        }
    }

    /// Clears `SLEEPERS` (bumping the epoch) and wakes every sleeper.
    #[cold]
    fn wake(&self, mut w: u32) {
        while w & SLEEPERS != 0 {
            // `w` is odd: `w + 1` clears the bit and carries into the epoch.
            match self.word.compare_exchange_weak(w, w.wrapping_add(1), Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        // Wake even if another notifier cleared the bit first: it may die
        // before its own wake, and the sleepers must not depend on it.
        os::futex_wake(&self.word, u32::MAX);
    }

    /// Whether a waiter has announced that it sleeps (or is about to) and
    /// no notify has cleared that since: the next notify makes a system call.
    #[doc(hidden)]
    pub fn has_sleepers(&self) -> bool {
        self.word.load(Ordering::Relaxed) & SLEEPERS != 0
    }

    /// Sets `SLEEPERS` and returns the word value to sleep on.
    #[inline]
    fn announce(&self) -> u32 {
        let w = self.word.fetch_or(SLEEPERS, Ordering::SeqCst) | SLEEPERS;
        // SYNC: F2 (see the type's doc): pairs with F1 in `notify`; the
        // caller's re-check of its condition after this cannot be ordered
        // before our `SLEEPERS` is visible to a notifier.
        fence(Ordering::SeqCst);
        w
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
            // A budget too large to add to the clock means no spin deadline
            // (the budget is capped well below that, but never panic).
            let spin_end = Instant::now().checked_add(budget);
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
                    if spin_end.is_some_and(|e| now >= e) || deadline.is_some_and(|d| now >= d) {
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
            let w = self.announce();
            if ready() {
                // SLEEPERS stays set: the next notify clears it (one wake).
                return true;
            }
            let woke = os::futex_wait(&self.word, w, deadline);
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
///
/// The protocol is [`Event`]'s on every event at once: announce on each (so
/// each fence F2 follows all the announces), re-check, then sleep on every
/// announced value; a notify of any of them changes its word or wakes us.
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
        // SYNC: each `announce` ends with its F2 fence, so the re-check in
        // `ready()` below comes after every event's SLEEPERS is visible (as
        // in `wait_until`).
        let words: Vec<(&AtomicU32, u32)> = events.iter().map(|e| (&e.word, e.announce())).collect();
        let woke = if ready() { Some(os::Wake::Woken) } else { os::futex_wait_any(&words, deadline) };
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
            // (The policy's maximum, capped as every budget is: a probe of
            // `Duration::MAX` would overflow the clock.)
            return if n % PROBE_EVERY == 0 { Duration::from_nanos(max as u64) } else { Duration::ZERO };
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

    /// Regression (finding 13): a probe spin took the policy's maximum as
    /// is, and `Instant + Duration::MAX` panicked once the budget had fallen
    /// below `MIN_SPIN`.
    #[test]
    fn a_spin_policy_of_duration_max_never_overflows_the_clock() {
        let policy = SpinPolicy { spin: Duration::MAX };
        let a = AdaptiveSpin::new();
        for _ in 0..40 {
            a.record(false, policy);
        }
        let e = Event::default();
        // A whole probe cycle: one wait probes with the full budget.
        for _ in 0..PROBE_EVERY {
            let d = Some(Instant::now() + Duration::from_millis(1));
            assert!(!e.wait_until(|| false, d, policy, &a));
        }
        assert!(a.budget(policy) <= Duration::from_nanos(u32::MAX as u64));
    }

    /// A sleeper that leaves (dies, times out) without being woken costs the
    /// next notify one wake system call, and later notifies none.
    #[test]
    fn a_left_sleepers_bit_costs_one_wake() {
        let e = Event::default();
        let d = Some(Instant::now() + Duration::from_millis(5));
        assert!(!e.wait_until(|| false, d, SpinPolicy::SLEEP, &AdaptiveSpin::new()));
        assert!(e.has_sleepers());
        e.notify();
        assert!(!e.has_sleepers());
        e.notify();
        assert!(!e.has_sleepers());
        // The epoch moved once: the word is 2 (epoch 1, no sleepers).
        assert_eq!(e.word.load(Ordering::Relaxed), 2);
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
