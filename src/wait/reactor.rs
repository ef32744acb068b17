//! The reactor: one thread per process that sleeps for every parked async
//! waiter at once, on the futex words of the events they wait on
//! (`futex_waitv`), and wakes their tasks when one moves.
//!
//! An async wait is the blocking wait polled: the future tries its step
//! (the same code the blocking form runs between slices) and, when it
//! would block, parks its task with the reactor together with the event it
//! waits on and a cheap readiness check (a ring can pop, say). The reactor
//! sleeps for it as a blocking waiter would: in each round it announces on
//! every event (the event's protocol: a notifier that publishes after the
//! announce sees it and moves the word), then checks every parked task's
//! readiness, wakes the ready ones, looks once more at all of them after
//! the last announce, and sleeps on the words the announces left. A state
//! change before an announce is seen by the checks after it; one after it
//! moves the word and wakes the reactor: no wake-up is lost, a sender still
//! makes a system call only when someone (here, the reactor) sleeps, and
//! tasks parked on one event never wake each other (only the reactor
//! announces).
//!
//! The reactor knows nothing of pools or channels: it holds [`Source`]s,
//! each of which does what is due when polled (wakes tasks, drains a ring,
//! supervises workers) and says which word to sleep on next. A source that
//! asks for a tick is polled at least every [`TICK`] even if nothing moves
//! (peers are watched, dead workers reaped, as blocking waits do between
//! slices). With nothing to watch the thread sleeps on its own control word
//! and costs nothing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::segment::Segment;
use crate::sync::{Announced, Event};

use crate::sys::futex;

/// How often a source that asked for ticks is polled when nothing moves:
/// the interval at which blocking waits look at their peer.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// How long the reactor sleeps between polls when it cannot sleep on every
/// word (more than `futex_waitv` takes, or a kernel without it).
const FALLBACK_POLL: Duration = Duration::from_millis(1);

/// What a source wants the reactor to sleep on until its next poll.
#[derive(Debug, Clone)]
pub(crate) struct Arm {
    /// The futex word; it stays mapped as long as the source that gave it
    /// lives (the [`Source`] contract).
    word: NonNull<AtomicU32>,
    /// Sleep while the word holds this value.
    value: u32,
    /// Poll again by then even if the word does not move.
    until: Option<Instant>,
    /// Keeps the word mapped through the round, for a source that may let
    /// go of its mapping meanwhile (a cancelled task).
    keep: Option<Segment>,
}

impl Arm {
    /// Sleep on `event` while its word holds the value `announced` left;
    /// with `tick`, poll again within [`TICK`] even if it does not move.
    ///
    /// The event must live in memory the source keeps mapped.
    pub(crate) fn on(event: &Event, announced: Announced, tick: bool) -> Arm {
        let until = tick.then(|| Instant::now() + TICK);
        Arm { word: NonNull::from(event.futex_word()), value: announced.word(), until, keep: None }
    }
}

/// Something the reactor watches for parked async waiters.
///
/// Contract: the word of every [`Arm`] a source returns stays mapped for as
/// long as the source lives (it holds the [`Segment`] the word is in), or
/// the arm carries that segment itself; and `poll` never blocks.
pub(crate) trait Source: Send + Sync {
    /// Does what is due (wakes the tasks whose condition may now hold) and
    /// says what to sleep on next; `None` when nobody waits any more (the
    /// reactor then drops the source).
    fn poll(&self) -> Option<Arm>;

    /// Whether the source would wake its task if polled now: looked at
    /// once more after every source of the round announced, so that a
    /// change that came between its own announce and the last one is not
    /// slept through.
    fn ready_now(&self) -> bool {
        false
    }
}

struct Reactor {
    /// Bumped (and woken) by every new source: the thread's own futex word.
    control: AtomicU32,
    /// Sources handed in since the thread last looked.
    new: Mutex<Vec<Arc<dyn Source>>>,
}

// SAFETY: `Arm` holds a pointer to a word in a mapping its source keeps
// alive; it is only dereferenced by the reactor thread while it holds that
// source (see `run`). The pointer itself is plain data.
unsafe impl Send for Arm {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing the reactor's locks guard can be left half-done by a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's reactor, its thread started on first use; `None` if the
/// thread could not be started (logged; the next call tries again).
fn reactor() -> Option<&'static Reactor> {
    static REACTOR: OnceLock<Reactor> = OnceLock::new();
    static STARTED: Mutex<bool> = Mutex::new(false);
    let r = REACTOR.get_or_init(|| Reactor { control: AtomicU32::new(0), new: Mutex::new(Vec::new()) });
    let mut started = lock(&STARTED);
    if !*started {
        match std::thread::Builder::new().name("shmpool-reactor".into()).spawn(move || run(r)) {
            Ok(_) => {
                *started = true;
                let _ = REACTOR_STARTED.set(r);
            }
            Err(e) => {
                log::error!("shmpool: the reactor thread for async waits could not start: {e}");
                return None;
            }
        }
    }
    Some(r)
}

/// Hands `source` to the reactor, which polls it at once and then whenever
/// its word moves (or, if it asks, every [`TICK`]). False if the reactor
/// could not be started: the caller must not park its task.
pub(crate) fn watch(source: Arc<dyn Source>) -> bool {
    let Some(r) = reactor() else { return false };
    lock(&r.new).push(source);
    // SYNC: Release, paired with the Acquire load at the top of `run`'s
    // loop: a thread that reads the new value sees the pushed source.
    r.control.fetch_add(1, Ordering::Release);
    futex::wake(&r.control, 1);
    true
}

/// Makes the reactor start a new round now (if it runs).
fn poke() {
    if let Some(r) = REACTOR_STARTED.get() {
        // SYNC: Release, as in `watch`.
        r.control.fetch_add(1, Ordering::Release);
        futex::wake(&r.control, 1);
    }
}

/// The reactor, once its thread runs (for `poke`, which never starts it).
static REACTOR_STARTED: OnceLock<&'static Reactor> = OnceLock::new();

/// The reactor thread: polls its sources, then sleeps on all their words.
fn run(r: &'static Reactor) {
    let mut sources: Vec<Arc<dyn Source>> = Vec::new();
    loop {
        let control = r.control.load(Ordering::Acquire);
        sources.append(&mut lock(&r.new));
        let mut arms: Vec<Arm> = Vec::with_capacity(sources.len());
        sources.retain(|s| match catch_unwind(AssertUnwindSafe(|| s.poll())) {
            Ok(Some(arm)) => {
                // The last announce on a word is the value to sleep on.
                match arms.iter_mut().find(|a| a.word == arm.word) {
                    Some(a) => {
                        a.value = arm.value;
                        a.until = match (a.until, arm.until) {
                            (Some(x), Some(y)) => Some(x.min(y)),
                            (x, y) => x.or(y),
                        };
                    }
                    None => arms.push(arm),
                }
                true
            }
            Ok(None) => false,
            Err(_) => {
                // A source is the library's own code; if it panicked, its
                // waiters' next poll meets the same failure in their own task.
                log::error!("shmpool: an async wait source panicked in the reactor; it was dropped");
                false
            }
        });
        // After every announce of the round: a source whose condition came
        // true since its own poll is polled again at once, not slept through.
        if sources.iter().any(|s| catch_unwind(AssertUnwindSafe(|| s.ready_now())).unwrap_or(true)) {
            continue;
        }
        let mut deadline = arms.iter().filter_map(|a| a.until).min();
        if arms.len() >= futex::WAITV_MAX {
            arms.truncate(futex::WAITV_MAX - 1);
            let soon = Instant::now() + FALLBACK_POLL;
            deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
        }
        let mut words: Vec<(&AtomicU32, u32)> = Vec::with_capacity(arms.len() + 1);
        words.push((&r.control, control));
        for a in &arms {
            // SAFETY: every arm came from a source still in `sources`, which
            // keeps the word mapped (the `Source` contract), or carries the
            // segment that maps it (`keep`); neither `sources` nor `arms`
            // changes until the next round, after this wait.
            words.push((unsafe { a.word.as_ref() }, a.value));
        }
        if futex::wait_any(&words, deadline).is_none() {
            // No `futex_waitv` (Linux before 5.16): poll.
            std::thread::sleep(FALLBACK_POLL);
        }
    }
}

/// A parked task waiting on one event until its readiness check holds.
struct WakeOn {
    event: NonNull<Event>,
    /// Wake the task at this instant even if it is not ready.
    recheck: Option<Instant>,
    /// `None` once woken or cancelled: then nothing of the task is kept,
    /// the mapping included (a cancelled wait must not keep a segment
    /// mapped until the reactor's next round).
    live: Mutex<Option<Live>>,
}

/// What a parked task keeps while it waits.
struct Live {
    waker: Waker,
    /// Whether the task's step may succeed now (a ring can pop, say).
    ready: Box<dyn Fn() -> bool + Send + Sync>,
    /// Keeps the event mapped.
    _seg: Segment,
}

// SAFETY: `event` points into the mapping that `live`'s segment keeps
// alive, and is only read while `live` is held (locked, `Some`), through
// shared references to an `Event` (atomics).
unsafe impl Send for WakeOn {}
// SAFETY: as for `Send`; everything else is behind the mutex.
unsafe impl Sync for WakeOn {}

impl WakeOn {
    /// The event, while `live` (locked, `Some`) keeps it mapped.
    fn event<'a>(&'a self, _live: &'a Live) -> &'a Event {
        // SAFETY: `_live` holds the segment that maps the event, for as
        // long as the borrow.
        unsafe { self.event.as_ref() }
    }

    /// Forgets the task (it was woken, or gave up), and its mapping. If
    /// the reactor may be sleeping on it, it is told to look again now, so
    /// that the mapping goes at once (not at its next wake-up).
    fn cancel(&self) {
        if lock(&self.live).take().is_some() {
            poke();
        }
    }
}

impl Source for WakeOn {
    fn poll(&self) -> Option<Arm> {
        let mut live = lock(&self.live);
        let l = live.as_ref()?;
        let event = self.event(l);
        // The reactor's own announce, before the look: a change published
        // after it moves the word we sleep on.
        let announced = event.announce();
        if (l.ready)() || self.recheck.is_some_and(|t| Instant::now() >= t) {
            event.retract(announced);
            if let Some(l) = live.take() {
                l.waker.wake();
            }
            return None;
        }
        let mut arm = Arm::on(event, announced, false);
        arm.until = self.recheck;
        arm.keep = Some(l._seg.clone());
        Some(arm)
    }

    fn ready_now(&self) -> bool {
        lock(&self.live).as_ref().is_some_and(|l| (l.ready)())
    }
}

/// A task to wake at an instant: for a wait whose news may never come (an
/// answer over the network), so that its deadline still ends it.
#[cfg(feature = "net")]
struct Timer {
    /// A word nothing changes: the reactor sleeps on it until `until`.
    word: AtomicU32,
    until: Instant,
    /// `None` once fired or cancelled.
    waker: Mutex<Option<Waker>>,
}

#[cfg(feature = "net")]
impl Source for Timer {
    fn poll(&self) -> Option<Arm> {
        let mut waker = lock(&self.waker);
        waker.as_ref()?;
        if Instant::now() >= self.until {
            if let Some(w) = waker.take() {
                w.wake();
            }
            return None;
        }
        // The word lives in this source, which the reactor holds.
        Some(Arm { word: NonNull::from(&self.word), value: 0, until: Some(self.until), keep: None })
    }
}

/// Wakes a task at an instant unless dropped first.
#[cfg(feature = "net")]
pub(crate) struct WakeAt(Arc<Timer>);

#[cfg(feature = "net")]
impl WakeAt {
    /// Wakes `waker` at `until` (at once if the reactor cannot start).
    pub(crate) fn new(until: Instant, waker: &Waker) -> WakeAt {
        let t = Arc::new(Timer { word: AtomicU32::new(0), until, waker: Mutex::new(Some(waker.clone())) });
        if !watch(t.clone()) {
            waker.wake_by_ref();
        }
        WakeAt(t)
    }
}

#[cfg(feature = "net")]
impl Drop for WakeAt {
    fn drop(&mut self) {
        // The reactor lets go of it at its next look (by `until`).
        lock(&self.0.waker).take();
    }
}

/// The state an async wait on one event keeps between polls: the parked
/// registration, if any. Dropping it (with the future) cancels the wait.
#[derive(Default)]
pub(crate) struct Parked(Option<Arc<WakeOn>>);

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Parked").field(&self.0.is_some()).finish()
    }
}

impl Parked {
    /// Parks the task of a wait on `event` (which lives in `seg`), whose
    /// step the caller has just tried and found wanting: the reactor wakes
    /// it once `ready()` holds (a cheap look at the state the step needs;
    /// a wake it gives in vain costs one more poll), or after `recheck`
    /// even if not (so the step can look at a peer). `attempt()` (the
    /// step, `None` when it would block) runs once more after the task is
    /// parked: what came in between is not missed either way.
    pub(crate) fn park<T>(
        &mut self,
        cx: &mut Context<'_>,
        seg: &Segment,
        event: &Event,
        recheck: Option<Duration>,
        ready: impl Fn() -> bool + Send + Sync + 'static,
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Poll<T> {
        self.cancel();
        let parked = Arc::new(WakeOn {
            event: NonNull::from(event),
            recheck: recheck.and_then(|r| Instant::now().checked_add(r)),
            live: Mutex::new(Some(Live { waker: cx.waker().clone(), ready: Box::new(ready), _seg: seg.clone() })),
        });
        if !watch(parked.clone()) {
            // No reactor (the thread could not start): poll again soon
            // rather than hang.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.0 = Some(parked);
        match attempt() {
            Some(t) => {
                self.cancel();
                Poll::Ready(t)
            }
            None => Poll::Pending,
        }
    }

    /// Cancels a parked wait, if any.
    pub(crate) fn cancel(&mut self) {
        if let Some(p) = self.0.take() {
            p.cancel();
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.cancel();
    }
}
