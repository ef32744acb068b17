//! The one blocking helper: every wait in the crate has a [`Deadline`]
//! (which a timeout too large to add turns into "none", never a panic), and
//! a wait on another process runs in slices, looking at the peer between
//! them, so a dead or departed peer ends it with a typed outcome.
//!
//! Its async half is the `reactor` module: a future runs the same steps with a due
//! deadline and, when they would block, parks its task with the process's
//! reactor thread, which sleeps on the events' futex words for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::ring::RingError;

pub(crate) mod reactor;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// When a wait gives up: at an instant, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline: wait as long as it takes (peers are still watched).
    pub const NEVER: Deadline = Deadline(None);

    /// `timeout` from now; a timeout too large to add (`Duration::MAX`) is
    /// no deadline at all.
    pub fn after(timeout: Duration) -> Deadline {
        Deadline(Instant::now().checked_add(timeout))
    }

    /// An optional timeout from now (`None`: never).
    pub fn within(timeout: Option<Duration>) -> Deadline {
        timeout.map_or(Deadline::NEVER, Deadline::after)
    }

    /// Already due: one attempt, no waiting.
    pub fn now() -> Deadline {
        Deadline(Some(Instant::now()))
    }

    /// The instant, if there is one.
    pub fn instant(self) -> Option<Instant> {
        self.0
    }

    /// Whether the deadline has passed.
    pub fn passed(self) -> bool {
        self.0.is_some_and(|d| Instant::now() >= d)
    }

    /// Time left (`None`: no deadline).
    pub fn remaining(self) -> Option<Duration> {
        self.0.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The end of the next slice of a wait: `interval` from now, or the
    /// deadline if that is sooner.
    pub fn slice(self, interval: Duration) -> Instant {
        let now = Instant::now();
        // A slice too long to add is as good as a year.
        let next = now.checked_add(interval).or_else(|| now.checked_add(YEAR)).unwrap_or(now);
        self.0.map_or(next, |d| d.min(next))
    }
}

impl From<Option<Instant>> for Deadline {
    fn from(d: Option<Instant>) -> Self {
        Deadline(d)
    }
}

/// What one slice of a wait came to.
#[derive(Debug)]
pub(crate) enum Step<T> {
    /// Finished (with a success or an error of the caller's own).
    Done(T),
    /// Nothing yet: the slice ended.
    Again,
}

/// Why a wait ended without its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Waited<E> {
    /// The deadline passed.
    TimedOut,
    /// The peer check said the wait cannot succeed (peer dead, closed, ...).
    Peer(E),
}

/// Waits in slices of at most `interval` until `attempt(until)` is done or
/// `deadline` passes; after every slice that brought nothing, `check()`
/// looks at the peer and may end the wait.
///
/// `attempt` always runs at least once, so `Deadline::now()` is a "try".
pub(crate) fn in_slices<T, E>(
    deadline: Deadline,
    interval: Duration,
    mut attempt: impl FnMut(Instant) -> Step<T>,
    mut check: impl FnMut() -> Result<(), E>,
) -> Result<T, Waited<E>> {
    loop {
        if let Step::Done(t) = attempt(deadline.slice(interval)) {
            return Ok(t);
        }
        if deadline.passed() {
            return Err(Waited::TimedOut);
        }
        check().map_err(Waited::Peer)?;
    }
}

/// [`in_slices`] around one ring operation given the slice's end: a slice
/// that timed out is tried again; the operation's other outcomes (done,
/// closed, corrupt) end the wait as they are.
pub(crate) fn ring_in_slices<T, E>(
    deadline: Deadline,
    interval: Duration,
    mut op: impl FnMut(Instant) -> Result<T, RingError>,
    check: impl FnMut() -> Result<(), E>,
) -> Result<Result<T, RingError>, Waited<E>> {
    in_slices(
        deadline,
        interval,
        |until| match op(until) {
            Err(RingError::Timeout) => Step::Again,
            other => Step::Done(other),
        },
        check,
    )
}

/// A process-local "something changed" signal for state under a mutex:
/// blocking threads wait on its condvar, async tasks park their waker on
/// it, and one [`Changed::notify_all`] wakes both.
#[derive(Debug, Default)]
pub(crate) struct Changed {
    cv: Condvar,
    wakers: Mutex<Vec<Waker>>,
    /// Some waker is parked: a notify with none costs no lock.
    parked: AtomicBool,
}

impl Changed {
    /// Wakes every waiting thread and every parked task.
    pub(crate) fn notify_all(&self) {
        self.cv.notify_all();
        if self.parked.swap(false, Ordering::AcqRel) {
            let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    /// Waits for a notify (or `timeout`), as `Condvar::wait_timeout`,
    /// going on past a panic of another holder of the mutex.
    pub(crate) fn wait_timeout<'a, T>(&self, guard: MutexGuard<'a, T>, timeout: Duration) -> MutexGuard<'a, T> {
        self.cv.wait_timeout(guard, timeout).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0)
    }

    /// Parks `waker` until the next notify. Call it while holding the mutex
    /// whose state the task found wanting (notifiers change that state under
    /// the same mutex, then notify): no notify is lost in between.
    pub(crate) fn park(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        self.parked.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_timeouts_mean_no_deadline() {
        assert_eq!(Deadline::after(Duration::MAX), Deadline::NEVER);
        assert!(!Deadline::NEVER.passed());
        assert!(Deadline::NEVER.slice(Duration::MAX) > Instant::now() + Duration::from_secs(3600));
        assert!(Deadline::now().passed());
        assert_eq!(Deadline::within(None), Deadline::NEVER);
    }

    #[test]
    fn a_wait_tries_once_then_times_out_or_ends_on_the_peer() {
        let mut tries = 0;
        let r: Result<(), Waited<&str>> = in_slices(
            Deadline::now(),
            Duration::from_millis(1),
            |_| {
                tries += 1;
                Step::Again
            },
            || Ok(()),
        );
        assert_eq!((r, tries), (Err(Waited::TimedOut), 1));
        let r: Result<(), Waited<&str>> =
            in_slices(Deadline::NEVER, Duration::from_millis(1), |_| Step::Again, || Err("gone"));
        assert_eq!(r, Err(Waited::Peer("gone")));
        let r: Result<u8, Waited<()>> = in_slices(Deadline::NEVER, Duration::ZERO, |_| Step::Done(7), || Ok(()));
        assert_eq!(r, Ok(7));
    }
}
