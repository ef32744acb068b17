//! `WorkerPool`: stateful workers fed through a bounded put/get queue.
//!
//! Each worker process builds its state once from a static argument
//! ([`Worker::init`]) and then runs every task it takes against that state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::builder_options;
use crate::codec::Message;
use crate::runtime::{lock, tramp, Config, ParkOn, RecvError, Reservation, Workers};
use crate::wait::{Changed, Deadline};
use crate::wire::{self, FrameHeader};
use crate::{Error, GetError, PutError, TaskError};

/// How long a getter waits for another thread's receive before looking again.
const RECEIVER_CHECK: Duration = Duration::from_millis(100);

/// A stateful worker: built once per worker process, then run per task.
///
/// ```
/// struct Scale { factor: u64 }
///
/// impl shmpool::Worker for Scale {
///     type Init = u64;
///     type Task = u64;
///     type Output = u64;
///     fn init(factor: u64) -> Self { Scale { factor } }
///     fn run(&mut self, task: u64) -> u64 { task * self.factor }
/// }
/// ```
pub trait Worker: 'static {
    /// The static argument every worker is built from (sent once per worker).
    type Init: Message;
    /// One task.
    type Task: Message;
    /// One task's result.
    type Output: Message;
    /// Builds the worker's state; runs once in each worker process.
    fn init(init: Self::Init) -> Self;
    /// Runs one task.
    fn run(&mut self, task: Self::Task) -> Self::Output;
}

/// A pool of stateful workers with a bounded task queue.
pub struct WorkerPool<W: Worker> {
    pub(super) shared: Arc<Shared<W>>,
}

/// What a `WorkerPool` and its feeder threads share.
pub(super) struct Shared<W: Worker> {
    pub(super) inner: Arc<Workers>,
    stream: u64,
    next_seq: AtomicU64,
    pub(super) state: Mutex<GetState<W::Output>>,
    /// Signalled when a receiving thread has merged what it got, when a
    /// put went in, and when a feed ended.
    pub(super) changed: Changed,
    _worker: PhantomData<fn() -> W>,
}

pub(super) struct GetState<R> {
    /// Puts not yet answered by `get` (cancelled ones are removed when seen).
    pending: u64,
    /// Feeds running ([`WorkerPool::feed`]): while there are any, `get`
    /// waits for their puts instead of saying nothing is pending.
    pub(super) feeding: usize,
    /// Next sequence number `get` returns in ordered mode.
    next: u64,
    /// Results that arrived early (ordered) or are waiting (unordered).
    early: BTreeMap<u64, Result<R, TaskError>>,
    /// Sequence numbers handed out to puts that failed.
    burnt: BTreeSet<u64>,
    /// Unordered mode: every sequence number below this was returned...
    taken_below: u64,
    /// ...and so were these. A result that arrives twice (a worker killed
    /// right after answering) is dropped.
    taken: BTreeSet<u64>,
    /// A thread is receiving results for this pool.
    receiving: bool,
    ordered: bool,
}

impl<W: Worker> fmt::Debug for WorkerPool<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerPool").field("pool", &self.shared.inner).finish()
    }
}

/// Options for a [`WorkerPool`].
pub struct WorkerPoolBuilder<W: Worker> {
    config: Config,
    ordered: bool,
    _worker: PhantomData<fn() -> W>,
}

impl<W: Worker> fmt::Debug for WorkerPoolBuilder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerPoolBuilder").field("config", &self.config).field("ordered", &self.ordered).finish()
    }
}

impl<W: Worker> WorkerPoolBuilder<W> {
    builder_options!();

    /// Whether `get` returns results in `put` order (default `true`) or in
    /// completion order.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// Starts the workers, each built with `W::init(init)`; returns once all
    /// are ready. A panic in `init` is [`Error::WorkerInit`].
    pub fn build(self, init: W::Init) -> Result<WorkerPool<W>, Error> {
        let tramp = tramp::init_worker::<W> as tramp::InitTrampoline as usize;
        let inner = Workers::start(self.config, Some((tramp, 0, &init)))?;
        let stream = inner.new_stream();
        let shared = Arc::new(Shared {
            inner,
            stream,
            next_seq: AtomicU64::new(0),
            changed: Changed::default(),
            state: Mutex::new(GetState {
                pending: 0,
                feeding: 0,
                next: 0,
                early: BTreeMap::new(),
                burnt: BTreeSet::new(),
                taken_below: 0,
                taken: BTreeSet::new(),
                receiving: false,
                ordered: self.ordered,
            }),
            _worker: PhantomData,
        });
        Ok(WorkerPool { shared })
    }
}

impl<W: Worker> WorkerPool<W> {
    /// Options for a new pool.
    pub fn builder() -> WorkerPoolBuilder<W> {
        WorkerPoolBuilder { config: Config::default(), ordered: true, _worker: PhantomData }
    }

    /// Queues a task, waiting while the queue is full.
    pub fn put(&self, task: W::Task) -> Result<(), PutError<W::Task>> {
        self.shared.put_until(task, Deadline::NEVER)
    }

    /// Queues a task, waiting at most `timeout` for room (`Duration::MAX`:
    /// no limit); `Full(task)` then.
    pub fn put_timeout(&self, task: W::Task, timeout: Duration) -> Result<(), PutError<W::Task>> {
        self.shared.put_until(task, Deadline::after(timeout))
    }

    /// Queues a task only if there is room now.
    pub fn try_put(&self, task: W::Task) -> Result<(), PutError<W::Task>> {
        self.shared.put_until(task, Deadline::now())
    }

    /// Takes the next result, waiting for it.
    pub fn get(&self) -> Result<W::Output, GetError> {
        self.shared.get_until(Deadline::NEVER, None)
    }

    /// [`WorkerPool::get`] as a future, for async code: the same wait,
    /// polled (see [`Ticket`](crate::Ticket)'s "As a future"). Dropping it
    /// cancels the wait and loses no result: the next `get` takes it.
    pub fn get_async(&self) -> impl Future<Output = Result<W::Output, GetError>> + '_ {
        std::future::poll_fn(move |cx| self.shared.poll_get(cx))
    }

    /// [`WorkerPool::put`] as a future, for async code: resolves once the
    /// task is queued (or with why it cannot be). Dropping it before then
    /// drops the task unsent.
    pub fn put_async(&self, task: W::Task) -> impl Future<Output = Result<(), PutError<W::Task>>> + '_ {
        let mut task = Some(task);
        std::future::poll_fn(move |cx| {
            let Some(t) = task.take() else {
                // Polled again after it completed: nothing is left to put.
                return Poll::Ready(Ok(()));
            };
            match self.shared.poll_put(cx, t) {
                Ok(done) => Poll::Ready(done),
                Err(t) => {
                    task = Some(t);
                    Poll::Pending
                }
            }
        })
    }

    /// Takes the next result, waiting at most `timeout` (`Duration::MAX`: no limit).
    pub fn get_timeout(&self, timeout: Duration) -> Result<W::Output, GetError> {
        self.shared.get_until(Deadline::after(timeout), None)
    }

    /// Takes every outstanding result, in the pool's order (while a
    /// [`feed`](WorkerPool::feed) runs, that includes what it has yet to put).
    pub fn get_all(&self) -> Vec<Result<W::Output, GetError>> {
        let mut out = Vec::new();
        loop {
            match self.get() {
                Err(GetError::NothingPending) => return out,
                r => out.push(r),
            }
        }
    }
}

impl<W: Worker> Shared<W> {
    pub(super) fn put_until(&self, task: W::Task, deadline: Deadline) -> Result<(), PutError<W::Task>> {
        let inner = &self.inner;
        let reserved = match inner.reserve(1, deadline) {
            Ok(0) => return Err(PutError::Full(task)),
            Ok(n) => n,
            Err(_) => return Err(PutError::Closed(task)),
        };
        // Given back on every way out but a pushed task, panics included.
        let mut reservation = Reservation::new(inner, reserved);
        // The sequence number is taken under the state lock so that ordered
        // gets see puts in the order their numbers were handed out.
        let mut state = lock(&self.state);
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let pushed = wire::with_scratch(|scratch| {
            let frame =
                inner.frame(self.stream, seq, 0, tramp::call_worker::<W>, &task, scratch).map_err(|e| e.to_string())?;
            inner.push_frames(&[frame.hdr], |_| frame.inline()).map_err(|(_, e)| e.to_string())
        });
        match pushed {
            Ok(()) => {
                reservation.left = 0;
                state.pending += 1;
                drop(state);
                // A getter waiting for a feed's next put.
                self.changed.notify_all();
                Ok(())
            }
            Err(e) => {
                // The number is burnt: gets skip it.
                if state.ordered {
                    state.burnt.insert(seq);
                } else {
                    mark_taken(&mut state, seq);
                }
                drop(state);
                drop(reservation);
                if inner.is_closed() {
                    Err(PutError::Closed(task))
                } else {
                    Err(PutError::Encode(task, e))
                }
            }
        }
    }

    /// Takes the next result, waiting until `deadline`. With `park`, a
    /// wait that would go past the deadline parks that task's waker where
    /// the result (or the change it waits for) will wake it, and returns
    /// `Timeout`: the async `get` is this, polled with a due deadline.
    fn get_until(&self, deadline: Deadline, park: Option<&Waker>) -> Result<W::Output, GetError> {
        let mut state = lock(&self.state);
        loop {
            if let Some(r) = take_next(&mut state) {
                return r.map_err(GetError::Task);
            }
            if state.pending == 0 && state.feeding == 0 {
                return Err(GetError::NothingPending);
            }
            if state.receiving || state.pending == 0 {
                // Another thread is receiving, or a feed has yet to put:
                // wait for what it brings without holding the state lock
                // (puts must go on).
                if deadline.passed() {
                    if let Some(waker) = park {
                        // Under the state lock: the change we wait for is
                        // made under it, and notified after.
                        self.changed.park(waker);
                    }
                    return Err(GetError::Timeout);
                }
                let wait = deadline.slice(RECEIVER_CHECK).saturating_duration_since(std::time::Instant::now());
                state = self.changed.wait_timeout(state, wait);
                continue;
            }
            state.receiving = true;
            drop(state);
            let mut got = Vec::new();
            let res = {
                let _receiving = Receiving(self);
                self.inner.recv(Some(self.stream), deadline, &mut |hdr: &FrameHeader, bytes: &[u8]| {
                    got.push((hdr.seq, wire::decode_result::<W::Output>(hdr.status, bytes)));
                })
            };
            state = lock(&self.state);
            for (seq, r) in got {
                let seen = seq < state.taken_below || state.taken.contains(&seq);
                if seq >= state.next && !seen {
                    state.early.entry(seq).or_insert(r);
                }
            }
            self.changed.notify_all();
            match res {
                Ok(_) => {}
                Err(RecvError::Timeout) => {
                    if let Some(r) = take_next(&mut state) {
                        return r.map_err(GetError::Task);
                    }
                    if deadline.passed() {
                        drop(state);
                        match park {
                            // A result was stashed meanwhile: look again.
                            Some(waker) if !self.inner.park(ParkOn::Stream(self.stream), waker) => {
                                state = lock(&self.state);
                                continue;
                            }
                            _ => return Err(GetError::Timeout),
                        }
                    }
                }
                Err(RecvError::Gone) => {
                    if let Some(r) = take_next(&mut state) {
                        return r.map_err(GetError::Task);
                    }
                    state.pending = state.pending.saturating_sub(1);
                    return Err(GetError::Task(TaskError::PoolGone));
                }
            }
        }
    }

    /// One poll of the async `get` (see [`WorkerPool::get_async`]).
    fn poll_get(&self, cx: &mut Context<'_>) -> Poll<Result<W::Output, GetError>> {
        match self.get_until(Deadline::now(), Some(cx.waker())) {
            Err(GetError::Timeout) => Poll::Pending,
            done => Poll::Ready(done),
        }
    }

    /// One poll of the async `put` (see [`WorkerPool::put_async`]): the
    /// task back if the queue is still full (and the waker parked on room).
    fn poll_put(&self, cx: &mut Context<'_>, task: W::Task) -> Result<Result<(), PutError<W::Task>>, W::Task> {
        match self.put_until(task, Deadline::now()) {
            Err(PutError::Full(task)) => {
                self.inner.park(ParkOn::Room, cx.waker());
                // Room that came before the park woke nobody: one more try.
                match self.put_until(task, Deadline::now()) {
                    Err(PutError::Full(task)) => Err(task),
                    done => Ok(done),
                }
            }
            done => Ok(done),
        }
    }
}

impl<W: Worker> WorkerPool<W> {
    /// Removes every queued task that no worker has taken; returns how many.
    /// Their results never come, and `get` does not wait for them.
    pub fn clear_tasks(&self) -> usize {
        self.shared.inner.clear_tasks()
    }

    /// Stops accepting tasks; workers finish what is queued and exit. A
    /// running [`feed`](WorkerPool::feed) stops with [`crate::FeedError::Closed`];
    /// workers' [`crate::parent_call`]s are refused from now on.
    pub fn close(&self) {
        self.shared.inner.close();
        self.shared.inner.close_calls();
    }

    /// Waits until every worker has exited (see [`crate::Pool::join`]):
    /// [`Error::NotClosed`] at once on an open pool.
    pub fn join(&self) -> Result<(), Error> {
        super::join_workers(&self.shared.inner, Deadline::NEVER)
    }

    /// [`WorkerPool::join`], waiting at most `timeout`; [`Error::Timeout`]
    /// if workers are still running then (they are left running).
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), Error> {
        super::join_workers(&self.shared.inner, Deadline::after(timeout))
    }

    /// Kills every worker now.
    pub fn terminate(&self) {
        self.shared.inner.terminate();
    }

    /// Whether the pool accepts tasks and has a live worker.
    pub fn is_alive(&self) -> bool {
        !self.shared.inner.is_closed() && self.shared.inner.alive_workers() > 0
    }

    /// Tasks put and not yet returned by `get`.
    pub fn pending(&self) -> u64 {
        lock(&self.shared.state).pending
    }

    /// The pool's shared segment (see [`crate::Pool::segment`]).
    pub fn segment(&self) -> &crate::Segment {
        &self.shared.inner.seg
    }

    /// Pids of the worker processes.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared.inner.worker_pids()
    }

    /// Workers started to replace dead or retired ones so far (see
    /// [`WorkerPoolBuilder::max_tasks_per_worker`]).
    pub fn respawns(&self) -> u64 {
        self.shared.inner.respawns.load(Ordering::Relaxed)
    }
}

impl<W: Worker> Drop for WorkerPool<W> {
    fn drop(&mut self) {
        // Feeds still running stop with `FeedError::Closed`.
        self.shared.inner.close();
    }
}

/// Unordered mode: records that `seq` was returned (or will never be).
fn mark_taken<R>(state: &mut GetState<R>, seq: u64) {
    state.taken.insert(seq);
    while state.taken.remove(&state.taken_below) {
        state.taken_below += 1;
    }
}

/// Marks the end of a receive, also when it unwinds.
struct Receiving<'a, W: Worker>(&'a Shared<W>);

impl<W: Worker> Drop for Receiving<'_, W> {
    fn drop(&mut self) {
        lock(&self.0.state).receiving = false;
        self.0.changed.notify_all();
    }
}

/// The next result `get` may return; cancelled tasks and burnt sequence
/// numbers are skipped.
fn take_next<R>(state: &mut GetState<R>) -> Option<Result<R, TaskError>> {
    loop {
        if state.ordered && state.burnt.remove(&state.next) {
            state.next += 1;
            continue;
        }
        let key = if state.ordered {
            let next = state.next;
            state.early.contains_key(&next).then_some(next)?
        } else {
            *state.early.keys().next()?
        };
        let r = state.early.remove(&key)?;
        if state.ordered {
            state.next += 1;
        } else {
            mark_taken(state, key);
        }
        state.pending = state.pending.saturating_sub(1);
        if matches!(r, Err(TaskError::Cancelled)) {
            continue;
        }
        return Some(r);
    }
}
