//! Feeding a [`WorkerPool`] from a background thread (better.multiprocessing's
//! `putAsync(iterable)`): the caller goes on, results come out through
//! `get` / `get_all` as usual, and a full queue slows the feeder down
//! instead of dropping anything.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::stateful::{Shared, WorkerPool};
use crate::runtime::executor::payload_text;
use crate::runtime::lock;
use crate::wait::Deadline;
use crate::{PutError, Worker};

/// How long one put of the feeder waits for room before it looks whether
/// it was cancelled.
const FEED_SLICE: Duration = Duration::from_millis(20);

/// Why a feed stopped before its input ran out. Nothing is dropped
/// unsaid: each variant says how many tasks went in, and gives back the task
/// that did not and the rest of the input (unless the input itself panicked).
pub enum FeedError<T, I> {
    /// [`FeedHandle::cancel`] stopped it.
    Cancelled {
        /// Tasks that went in.
        sent: u64,
        /// A task taken from the input that did not go in.
        task: Option<T>,
        /// The rest of the input.
        rest: I,
    },
    /// The pool was closed (or dropped, or its workers are gone).
    Closed {
        /// Tasks that went in.
        sent: u64,
        /// A task taken from the input that did not go in.
        task: Option<T>,
        /// The rest of the input.
        rest: I,
    },
    /// A task could not be archived into the segment.
    Encode {
        /// Tasks that went in.
        sent: u64,
        /// The task that could not be archived.
        task: T,
        /// Why.
        why: String,
        /// The rest of the input.
        rest: I,
    },
    /// The input iterator panicked (its state is unknown, so it is not
    /// given back).
    Panicked {
        /// Tasks that went in.
        sent: u64,
        /// The panic message.
        message: String,
    },
}

impl<T, I> FeedError<T, I> {
    /// Tasks that went in before the feed stopped (their results come out
    /// through `get` / `get_all`).
    pub fn sent(&self) -> u64 {
        match self {
            FeedError::Cancelled { sent, .. }
            | FeedError::Closed { sent, .. }
            | FeedError::Encode { sent, .. }
            | FeedError::Panicked { sent, .. } => *sent,
        }
    }

    /// What was not sent: the task taken and not put, then the rest of the
    /// input (`None` if the input panicked).
    pub fn into_unsent(self) -> Option<(Option<T>, I)> {
        match self {
            FeedError::Cancelled { task, rest, .. } | FeedError::Closed { task, rest, .. } => Some((task, rest)),
            FeedError::Encode { task, rest, .. } => Some((Some(task), rest)),
            FeedError::Panicked { .. } => None,
        }
    }
}

impl<T, I> fmt::Debug for FeedError<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedError::Cancelled { sent, task, .. } => {
                f.debug_struct("Cancelled").field("sent", sent).field("task", &task.as_ref().map(|_| "..")).finish()
            }
            FeedError::Closed { sent, task, .. } => {
                f.debug_struct("Closed").field("sent", sent).field("task", &task.as_ref().map(|_| "..")).finish()
            }
            FeedError::Encode { sent, why, .. } => {
                f.debug_struct("Encode").field("sent", sent).field("why", why).finish()
            }
            FeedError::Panicked { sent, message } => {
                f.debug_struct("Panicked").field("sent", sent).field("message", message).finish()
            }
        }
    }
}

impl<T, I> fmt::Display for FeedError<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedError::Cancelled { sent, .. } => write!(f, "feed cancelled after {sent} tasks"),
            FeedError::Closed { sent, .. } => write!(f, "pool closed after {sent} tasks of the feed"),
            FeedError::Encode { sent, why, .. } => {
                write!(f, "feed stopped after {sent} tasks: could not archive a task: {why}")
            }
            FeedError::Panicked { sent, message } => {
                write!(f, "feed stopped after {sent} tasks: the input panicked: {message}")
            }
        }
    }
}

impl<T, I> std::error::Error for FeedError<T, I> {}

/// A running feed ([`WorkerPool::feed`]).
///
/// Dropping it cancels the feed (what was sent stays sent); join it to
/// learn how many tasks went in and to get back what did not.
#[must_use = "dropping a FeedHandle cancels the feed"]
pub struct FeedHandle<T, I> {
    cancel: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    rx: mpsc::Receiver<Result<u64, FeedError<T, I>>>,
}

impl<T, I> fmt::Debug for FeedHandle<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedHandle").field("sent", &self.sent()).finish_non_exhaustive()
    }
}

impl<T, I> FeedHandle<T, I> {
    /// Tasks that went in so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// Stops the feed after the put under way (a task waiting for room is
    /// not put); [`FeedHandle::join`] then says how many went in.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }

    /// Waits until the feed ends: `Ok(n)` when the whole input went in (`n`
    /// tasks), otherwise the [`FeedError`] that stopped it.
    pub fn join(self) -> Result<u64, FeedError<T, I>> {
        let sent = self.sent();
        self.rx.recv().unwrap_or_else(|_| Err(vanished(sent)))
    }

    /// [`FeedHandle::join`], waiting at most `timeout` (`Duration::MAX`: no
    /// limit); `Err(self)` gives the handle back if the feed still runs.
    pub fn join_timeout(self, timeout: Duration) -> Result<Result<u64, FeedError<T, I>>, FeedHandle<T, I>> {
        let Some(left) = Deadline::after(timeout).remaining() else { return Ok(self.join()) };
        match self.rx.recv_timeout(left) {
            Ok(r) => Ok(r),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(Err(vanished(self.sent()))),
        }
    }
}

impl<T, I> Drop for FeedHandle<T, I> {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// The feeder thread ended without a word (cannot happen: it catches
/// panics), said rather than hidden.
fn vanished<T, I>(sent: u64) -> FeedError<T, I> {
    FeedError::Panicked { sent, message: "the feeder thread ended without an outcome".into() }
}

impl<W: Worker> WorkerPool<W> {
    /// Puts every task of `input` from a background thread and returns at
    /// once (better.multiprocessing's `putAsync`). The feeder waits while the
    /// queue is full, so nothing is dropped; results come out through
    /// [`WorkerPool::get`] / [`WorkerPool::get_all`] as usual, in put order in
    /// ordered mode, and `get` waits for the feed's puts rather than saying
    /// nothing is pending while it runs.
    ///
    /// A closed pool is refused at once with [`FeedError::Closed`] (the
    /// input comes back untouched).
    // The error gives the input back, so it names the iterator type too.
    #[allow(clippy::type_complexity)]
    pub fn feed<I>(&self, input: I) -> Result<FeedHandle<W::Task, I::IntoIter>, FeedError<W::Task, I::IntoIter>>
    where
        I: IntoIterator<Item = W::Task>,
        I::IntoIter: Send + 'static,
        W::Task: Send + 'static,
        W::Output: Send,
    {
        let rest = input.into_iter();
        if self.shared.inner.is_closed() {
            return Err(FeedError::Closed { sent: 0, task: None, rest });
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        lock(&self.shared.state).feeding += 1;
        let feeding = Feeding(Arc::clone(&self.shared));
        let (c, s) = (Arc::clone(&cancel), Arc::clone(&sent));
        let spawned = std::thread::Builder::new().name("shmpool-feed".into()).spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| feed_all(&feeding.0, rest, &c, &s)));
            let outcome = outcome.unwrap_or_else(|p| {
                Err(FeedError::Panicked { sent: s.load(Ordering::Acquire), message: payload_text(&*p) })
            });
            // The feed ends (getters may stop waiting) before the outcome
            // is out, so that `join` then `get_all` sees it ended.
            drop(feeding);
            let _ = tx.send(outcome);
        });
        match spawned {
            Ok(_) => Ok(FeedHandle { cancel, sent, rx }),
            // The closure (and the input in it) is gone with the error:
            // the input cannot be given back, but nothing was sent.
            Err(e) => Err(FeedError::Panicked { sent: 0, message: format!("could not start the feeder thread: {e}") }),
        }
    }
}

/// The feeder's loop; `Ok(n)` once the input ran out.
fn feed_all<W: Worker, I: Iterator<Item = W::Task>>(
    shared: &Shared<W>,
    mut rest: I,
    cancel: &AtomicBool,
    sent: &AtomicU64,
) -> Result<u64, FeedError<W::Task, I>> {
    let mut n = 0u64;
    loop {
        if cancel.load(Ordering::Acquire) {
            return Err(FeedError::Cancelled { sent: n, task: None, rest });
        }
        let Some(mut task) = rest.next() else { return Ok(n) };
        loop {
            // In slices, so that a cancel is seen while the queue is full.
            match shared.put_until(task, Deadline::after(FEED_SLICE)) {
                Ok(()) => {
                    n += 1;
                    sent.store(n, Ordering::Release);
                    break;
                }
                Err(PutError::Full(t)) if cancel.load(Ordering::Acquire) => {
                    return Err(FeedError::Cancelled { sent: n, task: Some(t), rest });
                }
                Err(PutError::Full(t)) => task = t,
                Err(PutError::Closed(t)) => return Err(FeedError::Closed { sent: n, task: Some(t), rest }),
                Err(PutError::Encode(t, why)) => return Err(FeedError::Encode { sent: n, task: t, why, rest }),
            }
        }
    }
}

/// Counts a running feed in the pool's get state; the end of the feed (also
/// by unwinding) is announced to waiting getters.
struct Feeding<W: Worker>(Arc<Shared<W>>);

impl<W: Worker> Drop for Feeding<W> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.feeding = state.feeding.saturating_sub(1);
        drop(state);
        self.0.changed.notify_all();
    }
}
