//! A doorbell in shared memory: wait for a condition, spinning briefly and
//! then sleeping on a futex; notify wakes sleepers only when there are any.

use crate::primitive::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::os;

/// How a waiter waits: spin for a bounded time and then sleep (the
/// default), sleep at once, or busy-poll (spin, never sleep).
///
/// A futex round trip costs about 11 us on the reference machine, a
/// cache-line round trip about 70 ns, so a short spin turns most hand-offs
/// between busy processes into sub-microsecond ones. The spin is bounded, so an
/// idle waiter sleeps and burns no core.
///
/// [`SpinPolicy::BUSY_POLL`] never sleeps: the waiter polls its condition
/// until it holds or its deadline passes (as iceoryx2's polling subscriber
/// does), so a message is seen within a cache-line transfer of its arrival,
/// at the price of a whole core per waiter for as long as it waits. A
/// busy-polling wait still ends at its deadline (the clock is read once
/// every [`BUSY_CLOCK_EVERY`] polls), and the waits built on it still look
/// at their peer between slices. Choose it only when every busy-polling
/// process has a core of its own: on a machine with fewer cores than
/// busy-polling processes plus the processes they wait for, a poller takes
/// the core its peer needs to answer and each hand-off costs a scheduler
/// time slice (milliseconds), not nanoseconds. Two processes busy-polling
/// each other on a 2-core machine shared with anything else starve this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinPolicy {
    /// The longest time to spin before sleeping (at most `u32::MAX`
    /// nanoseconds, about 4.3 s, are used). Ignored when `busy_poll` is set.
    pub spin: Duration,
    /// Spin until the condition holds or the deadline passes; never sleep,
    /// never yield the core.
    pub busy_poll: bool,
}

impl SpinPolicy {
    /// Never spin: sleep at once (lowest CPU use).
    pub const SLEEP: SpinPolicy = SpinPolicy::spin_for(Duration::ZERO);
    /// The default: spin up to 50 us, then sleep.
    pub const DEFAULT: SpinPolicy = SpinPolicy::spin_for(Duration::from_micros(50));
    /// Busy-poll: spin without ever sleeping (lowest latency, a core per
    /// waiter; see the type's doc for when it starves).
    pub const BUSY_POLL: SpinPolicy = SpinPolicy { spin: Duration::MAX, busy_poll: true };

    /// Spin up to `spin`, then sleep (`Duration::ZERO`: sleep at once).
    pub const fn spin_for(spin: Duration) -> SpinPolicy {
        SpinPolicy { spin, busy_poll: false }
    }

    /// The spin an async poll does before its task parks: this policy's,
    /// never longer than [`SpinPolicy::DEFAULT`]'s and never busy-polling
    /// (a poll must not hold its executor's thread).
    pub fn for_poll(self) -> SpinPolicy {
        SpinPolicy::spin_for(if self.spin < SpinPolicy::DEFAULT.spin { self.spin } else { SpinPolicy::DEFAULT.spin })
    }
}

/// A busy-polling wait reads the clock (for its deadline) once in this many
/// polls of its condition: ~20 ns of clock every few microseconds.
pub const BUSY_CLOCK_EVERY: u32 = 256;

/// A spinning (not busy-polling) wait reads the clock once in this many
/// polls of its condition (a poll is one pause, ~33 ns here), to end its
/// spin budget.
const SPIN_CLOCK_EVERY: u32 = 64;

/// A spinning wait yields its core once in this many clock reads (~4 us
/// of spinning): if the side it waits for shares the core, it runs then.
const YIELD_EVERY: u32 = 2;

/// A yield that kept this process off its core this long means another
/// process ran there: the machine has more busy processes than cores.
/// (An uncontended `sched_yield` returns in under a microsecond.)
const SHARED_CORE: Duration = Duration::from_micros(20);

impl Default for SpinPolicy {
    fn default() -> Self {
        SpinPolicy::DEFAULT
    }
}

/// Bit 0 of [`Event::word`]: some waiter may be asleep on the word.
const SLEEPERS: u32 = 1;
/// What an announce adds to [`Event::word`] besides setting `SLEEPERS`: one
/// step of the counter in bits 1..=31.
const STEP: u32 = 2;

/// A futex doorbell: `#[repr(C)]`, two words (8 bytes), valid when zeroed.
///
/// The first word is the futex word every sleeper sleeps on:
///
/// | bits    | meaning                                                        |
/// |---------|----------------------------------------------------------------|
/// | 0       | `SLEEPERS`: a waiter announced it is going to sleep; set by waiters, cleared by a notify that then wakes everyone, or by the waiter that set it if nothing changed the word since |
/// | 1..=31  | a counter: bumped by every announce, and (by the same add that clears `SLEEPERS`) by every notify that finds `SLEEPERS` set |
///
/// The second word is unused (kept zero) so the layout of everything that
/// embeds an `Event` stays as it was.
///
/// Protocol:
///
/// - Waiter: announce, `w = CAS(old -> (old | SLEEPERS) + STEP)` (so every
///   announce changes the word), SeqCst fence F2, re-check the condition; if
///   still false, `futex_wait(word, w)`. After waking it re-checks, and if
///   it must sleep again it announces again.
/// - Notifier: publish the state change, SeqCst fence F1, load `word`. Bit
///   clear: nothing else to do (no read-modify-write, no system call: the hot
///   path). Bit set: CAS `w -> w + 1` (`w` is odd, so this clears `SLEEPERS`
///   and bumps the counter at once), then `futex_wake` every sleeper.
/// - Retract: a waiter that announced and then does not sleep (its
///   re-check found the condition true, or it timed out) clears the bit
///   again, `CAS(w -> w + 1)`, if it was the first to set it (`old` had the
///   bit clear) and the word is still `w`. Every other announce and every
///   clearing notify changes the word, so an unchanged word means no other
///   waiter has announced since the bit was clear: nobody else relies on it.
///   Otherwise the bit stays, and the next notify pays one wake for it.
///
/// No lost wake-up: F1 and F2 are ordered in the single SeqCst order. If F1
/// comes first, the waiter's re-check after F2 sees the published change. If
/// F2 comes first, the notifier's load after F1 sees the waiter's announce or
/// a later value of the word; a later value still has `SLEEPERS` unless some
/// notify's CAS cleared it since (a retract clears only a bit no sleeper
/// relies on: see above), and every notify that sees the bit (whose CAS
/// succeeds or finds it cleared by another) calls `futex_wake` after that
/// clearing CAS. The clear changes the word away from `w` (the counter
/// moves), so the waiter's `futex_wait(word, w)` either finds the word
/// changed and returns at once, or was queued before the change and is woken.
///
/// Self-healing: nothing counts sleepers, so a sleeper that dies (SIGKILL)
/// leaves at most the `SLEEPERS` bit behind, which costs one extra
/// `futex_wake` on the next notify, and then the bit is clear again. A
/// waiter that announced after another one and then found its condition
/// true (or timed out) leaves the bit the same way, and so does
/// [`wait_any`], which never retracts (it is for waiting on idle events).
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

/// What an announce did: the word it left (to sleep on) and whether it was
/// the one that set `SLEEPERS` (so it may retract it).
///
/// An async waiter ([`crate::wait`]'s futures) holds one while its task is
/// parked: the process's reactor thread sleeps on [`Announced::word`] for
/// it, as a blocking waiter would sleep in [`Event::wait_until`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announced {
    word: u32,
    first: bool,
}

impl Announced {
    /// The value of the event's word this announce left: a sleeper sleeps
    /// while the word still holds it.
    pub fn word(self) -> u32 {
        self.word
    }
}

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

    /// Clears `SLEEPERS` (bumping the counter) and wakes every sleeper.
    #[cold]
    fn wake(&self, mut w: u32) {
        while w & SLEEPERS != 0 {
            // `w` is odd: `w + 1` clears the bit and carries into the counter.
            match self.word.compare_exchange_weak(w, w.wrapping_add(1), Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        // Wake even if another notifier cleared the bit first: it may die
        // before its own wake, and the sleepers must not depend on it.
        os::futex_wake(&self.word, u32::MAX);
    }

    /// The futex word sleepers sleep on (for a thread that sleeps on many
    /// events at once for async waiters).
    #[doc(hidden)]
    pub fn futex_word(&self) -> &AtomicU32 {
        &self.word
    }

    /// Whether a waiter has announced that it sleeps (or is about to) and
    /// no notify has cleared that since: the next notify makes a system call.
    #[doc(hidden)]
    pub fn has_sleepers(&self) -> bool {
        self.word.load(Ordering::Relaxed) & SLEEPERS != 0
    }

    /// Sets `SLEEPERS` and moves the counter; returns the word to sleep on.
    ///
    /// The caller then re-checks its condition (the announce ends with the
    /// fence F2 of the protocol) and either sleeps on the word while it
    /// still holds [`Announced::word`], or takes the announce back with
    /// [`Event::retract`]. For the async waits (a reactor thread sleeps for
    /// the waiter); blocking waiters use [`Event::wait_until`].
    #[doc(hidden)]
    #[inline]
    pub fn announce(&self) -> Announced {
        let mut old = self.word.load(Ordering::Relaxed);
        let new = loop {
            let new = (old | SLEEPERS).wrapping_add(STEP);
            match self.word.compare_exchange_weak(old, new, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break new,
                Err(now) => old = now,
            }
        };
        // SYNC: F2 (see the type's doc): pairs with F1 in `notify`; the
        // caller's re-check of its condition after this cannot be ordered
        // before our `SLEEPERS` is visible to a notifier.
        fence(Ordering::SeqCst);
        Announced { word: new, first: old & SLEEPERS == 0 }
    }

    /// Takes back an announce whose waiter will not sleep, if nobody else
    /// announced or notified since (see the type's doc, "Retract").
    #[doc(hidden)]
    #[inline]
    pub fn retract(&self, a: Announced) {
        // No ordering needed: the CAS succeeds only if the word is still
        // ours in its modification order, whatever was published meanwhile.
        if a.first && self.word.load(Ordering::Relaxed) == a.word {
            let _ = self.word.compare_exchange(a.word, a.word.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Waits until `ready()` is true or `deadline` passes; returns the last
    /// value of `ready()`.
    ///
    /// Under [`SpinPolicy::BUSY_POLL`] it polls until then and never sleeps.
    /// Otherwise it spins for at most the budget `adapt` allows under
    /// `policy`, then sleeps; `adapt` learns from the outcome. `ready` is
    /// called repeatedly and must be cheap and free of side effects on failure.
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
        // The loom model explores interleavings, not timings: it sleeps.
        if policy.busy_poll && !cfg!(loom) {
            return busy_poll(ready, deadline);
        }
        if self.spin(&mut ready, deadline, policy, adapt) {
            return true;
        }
        loop {
            let announced = self.announce();
            if ready() {
                self.retract(announced);
                return true;
            }
            let woke = os::futex_wait(&self.word, announced.word, deadline);
            if ready() {
                self.retract(announced);
                return true;
            }
            // Not asleep any more, whatever happens next: take the announce
            // back (a spurious wake-up left the word as it was), so that the
            // next announce can be retracted in its turn.
            self.retract(announced);
            if woke == os::Wake::TimedOut || deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
        }
    }

    /// The spin phase of [`Event::wait_until`] alone: polls `ready()` for at
    /// most the budget `adapt` allows under `policy` (never past
    /// `deadline`), yielding now and then; true if it came true. Never
    /// sleeps: an async poll spins this way before its task parks.
    #[doc(hidden)]
    pub fn spin(
        &self,
        mut ready: impl FnMut() -> bool,
        deadline: Option<Instant>,
        policy: SpinPolicy,
        adapt: &AdaptiveSpin,
    ) -> bool {
        let budget = adapt.budget(policy);
        if budget.is_zero() {
            return false;
        }
        // A budget too large to add to the clock means no spin deadline
        // (the budget is capped well below that, but never panic).
        let spin_end = Instant::now().checked_add(budget);
        let mut i = 0u32;
        loop {
            // One pause per poll: a message is seen within a pause of
            // its arrival (the poll reads lines the sender is about to
            // write, which stay in our cache until it does).
            std::hint::spin_loop();
            if ready() {
                adapt.record(true, policy);
                return true;
            }
            i = i.wrapping_add(1);
            // Reading the clock costs ~35 ns: check it every few polls.
            if i % SPIN_CLOCK_EVERY == 0 {
                let now = Instant::now();
                if spin_end.is_some_and(|e| now >= e) || deadline.is_some_and(|d| now >= d) {
                    break;
                }
                // Give the other side the core if we share one.
                if i % (SPIN_CLOCK_EVERY * YIELD_EVERY) == 0 {
                    std::thread::yield_now();
                    if now.elapsed() >= SHARED_CORE {
                        // Something else ran on this core meanwhile: the
                        // cores are oversubscribed, and spinning holds
                        // one the other side may need. Look once more
                        // (it may have been the other side), then sleep,
                        // and spin less next time.
                        if ready() {
                            adapt.record(false, policy);
                            return true;
                        }
                        break;
                    }
                }
            }
        }
        adapt.record(false, policy);
        false
    }
}

/// Polls `ready()` until it is true or `deadline` passes, never sleeping
/// and never yielding (see [`SpinPolicy::BUSY_POLL`]); the clock is read
/// once every [`BUSY_CLOCK_EVERY`] polls.
#[inline]
fn busy_poll(mut ready: impl FnMut() -> bool, deadline: Option<Instant>) -> bool {
    loop {
        for _ in 0..BUSY_CLOCK_EVERY {
            std::hint::spin_loop();
            if ready() {
                return true;
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return ready();
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
        let words: Vec<(&AtomicU32, u32)> = events.iter().map(|e| (&e.word, e.announce().word)).collect();
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
        let policy = SpinPolicy::spin_for(Duration::from_micros(64));
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
        let policy = SpinPolicy::spin_for(Duration::MAX);
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

    /// A sleeper that leaves without being woken and without retracting
    /// (it died) costs the next notify one wake system call, and later
    /// notifies none.
    #[test]
    fn a_left_sleepers_bit_costs_one_wake() {
        let e = Event::default();
        // A waiter that announced and was killed before it could retract.
        let dead = e.announce();
        assert!(dead.first && e.has_sleepers());
        e.notify();
        assert!(!e.has_sleepers());
        e.notify();
        assert!(!e.has_sleepers());
        // One announce and one clearing notify moved the counter: 2 steps.
        assert_eq!(e.word.load(Ordering::Relaxed), 2 * STEP);
    }

    /// Regression (issue 11 item 3): a waiter that announced and then found
    /// its condition true, or timed out, left SLEEPERS set, and the next
    /// notify paid a CAS and a futex_wake system call for nobody.
    #[test]
    fn a_waiter_that_does_not_sleep_leaves_no_sleepers_bit() {
        let e = Event::default();
        let mut polls = 0;
        // False at the first poll, true at the re-check after the announce.
        let ready = || {
            polls += 1;
            polls > 1
        };
        assert!(e.wait_until(ready, None, SpinPolicy::SLEEP, &AdaptiveSpin::new()));
        assert!(!e.has_sleepers());
        let d = Some(Instant::now() + Duration::from_millis(5));
        assert!(!e.wait_until(|| false, d, SpinPolicy::SLEEP, &AdaptiveSpin::new()));
        assert!(!e.has_sleepers());
    }

    /// A retract never clears a bit another waiter announced after it.
    #[test]
    fn a_retract_keeps_a_later_announce() {
        let e = Event::default();
        let (a, b) = (e.announce(), e.announce());
        assert!(a.first && !b.first);
        e.retract(a);
        assert!(e.has_sleepers(), "the second waiter's announce was taken back");
        e.retract(b);
        // Not the first: it cannot tell whether the first one still sleeps.
        assert!(e.has_sleepers());
    }

    #[test]
    fn busy_poll_never_sleeps_and_ends_at_its_deadline() {
        let e = Event::default();
        let d = Instant::now() + Duration::from_millis(5);
        assert!(!e.wait_until(|| false, Some(d), SpinPolicy::BUSY_POLL, &AdaptiveSpin::new()));
        assert!(Instant::now() >= d);
        // Never announced: a notify has nobody to wake.
        assert!(!e.has_sleepers());
        let mut polls = 0;
        assert!(e.wait_until(
            || {
                polls += 1;
                polls == 1000
            },
            None,
            SpinPolicy::BUSY_POLL,
            &AdaptiveSpin::new()
        ));
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
