//! `Pool`: run plain functions in worker processes.
//!
//! Any `fn(A) -> R` whose argument and result are [`Message`]s can be
//! submitted; several different functions can share one pool (a function
//! table). Results come back as [`Ticket`]s, or as an iterator over a whole
//! input in submission order ([`Pool::map`]) or completion order
//! ([`Pool::map_unordered`]).

mod feed;
mod stateful;

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{Message, Scratch};
use crate::runtime::tramp::{self, Trampoline};
use crate::runtime::Ticket;
use crate::runtime::{submit_to, submit_until, Config, RecvError, Reservation, Workers};
use crate::wait::Deadline;
use crate::wire::{self, FrameBuf, FrameHeader, HEADER};
use crate::{Error, PutError, TaskError};

pub use feed::{FeedError, FeedHandle};
pub use stateful::{Worker, WorkerPool, WorkerPoolBuilder};

/// A pool of worker processes running plain functions.
///
/// Dropping the pool discards queued tasks, lets running ones finish (up to
/// the shutdown timeout, then kills), and reaps every worker; the segment is
/// a memfd, so nothing is left behind.
pub struct Pool {
    inner: Arc<Workers>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// Options for a [`Pool`] (and, through [`WorkerPoolBuilder`], a [`WorkerPool`]).
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    config: Config,
}

macro_rules! builder_options {
    () => {
        /// Number of worker processes (default: one per core).
        pub fn workers(mut self, n: usize) -> Self {
            self.config.workers = n;
            self
        }

        /// Tasks that may be queued or running at once before a submission
        /// waits (default 256). Results that arrived but were not yet taken do
        /// not count.
        pub fn queue_capacity(mut self, n: usize) -> Self {
            self.config.queue_capacity = n;
            self
        }

        /// Size of the shared segment in bytes (default 256 MiB; memory is
        /// only committed as it is used). Large arguments and results live here.
        pub fn segment_size(mut self, bytes: u64) -> Self {
            self.config.segment_size = bytes;
            self
        }

        /// Payload bytes per ring slot (default 256, 80 to 1024). Slots are
        /// padded to whole 64-byte lines with their 16-byte slot header, so a
        /// slot holds at least this much (304 bytes for 256); an archive
        /// that fits beside the 64-byte frame header travels inline (240
        /// bytes for 256), a larger one in an arena block.
        pub fn slot_size(mut self, bytes: usize) -> Self {
            self.config.slot_size = bytes;
            self
        }

        /// How long a waiting side spins before it sleeps (default 50 us).
        /// `Duration::ZERO` never spins: lowest CPU use, higher latency.
        pub fn spin(mut self, spin: Duration) -> Self {
            self.config.spin = $crate::sync::SpinPolicy { spin };
            self
        }

        /// What happens to the tasks of a worker that dies (default: run them
        /// again, 3 runs in all, then `TaskError::WorkerDied`).
        pub fn on_worker_death(mut self, policy: $crate::OnWorkerDeath) -> Self {
            self.config.on_death = policy;
            self
        }

        /// A task running longer than this is hung: its worker is killed and
        /// replaced, and the task ends with `TaskError::TimedOut` (default:
        /// none; `Duration::MAX` is none too).
        pub fn task_timeout(mut self, timeout: Duration) -> Self {
            self.config.task_timeout = Some(timeout);
            self
        }

        /// How long dropping the pool waits for running tasks before it kills
        /// their workers (default 2 s; `Duration::MAX`: as long as they take).
        pub fn shutdown_timeout(mut self, t: Duration) -> Self {
            self.config.shutdown_timeout = t;
            self
        }

        /// Replaces each worker process after it ran `n` tasks (Python's
        /// `maxtasksperchild`; default: never), returning whatever memory a
        /// long-lived worker held. The worker takes at most its remaining
        /// quota from the queue, answers every task it took, and exits
        /// cleanly; a fresh process (a stateful one built again by
        /// `Worker::init`) takes its place at once. No task is lost or run
        /// twice by the change; [`crate::Pool::respawns`] counts the replacements.
        /// `n == 0` is refused by `build` ([`Error::Config`]).
        pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
            self.config.max_tasks = Some(n);
            self
        }
    };
}
pub(crate) use builder_options;

impl PoolBuilder {
    builder_options!();

    /// Starts the workers; returns once every one is ready.
    pub fn build(self) -> Result<Pool, Error> {
        let inner = Workers::start::<()>(self.config, None)?;
        Ok(Pool { inner })
    }
}

impl Pool {
    /// Options for a new pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Runs `f(arg)` in a worker. Waits while the queue is full.
    pub fn submit<A: Message, R: Message>(&self, f: fn(A) -> R, arg: A) -> Result<Ticket<R>, Error> {
        self.submit_raw(f as usize, tramp::call_owned::<A, R>, &arg)
    }

    /// Runs `f` in a worker on the archived `arg`, read in place in shared
    /// memory without being deserialised (large arguments travel in an arena
    /// block and are never copied again).
    pub fn submit_archived<A: Message, R: Message>(
        &self,
        f: fn(&crate::Archived<A>) -> R,
        arg: &A,
    ) -> Result<Ticket<R>, Error> {
        self.submit_raw(f as usize, tramp::call_archived::<A, R>, arg)
    }

    fn submit_raw<A: Message, R: Message>(&self, func: usize, tramp: Trampoline, arg: &A) -> Result<Ticket<R>, Error> {
        submit_to(&self.inner, func, tramp, arg)
    }

    /// Runs `f(arg)` in a worker if the queue has room now;
    /// `Err(PutError::Full(arg))` gives the argument back if not.
    pub fn try_submit<A: Message, R: Message>(&self, f: fn(A) -> R, arg: A) -> Result<Ticket<R>, PutError<A>> {
        self.submit_deadline(f, arg, Deadline::now())
    }

    /// Runs `f(arg)` in a worker, waiting at most `timeout` for room in the
    /// queue (`Duration::MAX`: no limit); `Err(PutError::Full(arg))` gives
    /// the argument back if the queue stayed full, `Closed(arg)` if the pool
    /// is closed or its workers are gone, `Encode(arg, why)` if the argument
    /// could not be archived into the segment.
    pub fn submit_timeout<A: Message, R: Message>(
        &self,
        f: fn(A) -> R,
        arg: A,
        timeout: Duration,
    ) -> Result<Ticket<R>, PutError<A>> {
        self.submit_deadline(f, arg, Deadline::after(timeout))
    }

    fn submit_deadline<A: Message, R: Message>(
        &self,
        f: fn(A) -> R,
        arg: A,
        deadline: Deadline,
    ) -> Result<Ticket<R>, PutError<A>> {
        match submit_until(&self.inner, f as usize, tramp::call_owned::<A, R>, &arg, deadline) {
            Ok(Some(ticket)) => Ok(ticket),
            Ok(None) => Err(PutError::Full(arg)),
            Err(e) => Err(put_error(e, arg)),
        }
    }

    /// Runs `f` over every item of `input`; yields the results in input order.
    ///
    /// Tasks are submitted in batches as the queue allows, interleaved with
    /// receiving results, so the input may be longer than the queue.
    pub fn map<A, R, I>(&self, f: fn(A) -> R, input: I) -> Result<MapIter<'_, I::IntoIter, R>, Error>
    where
        A: Message,
        R: Message,
        I: IntoIterator<Item = A>,
    {
        self.map_raw(f as usize, tramp::call_owned::<A, R>, input.into_iter(), true)
    }

    /// Like [`Pool::map`], but yields results as they complete.
    pub fn map_unordered<A, R, I>(&self, f: fn(A) -> R, input: I) -> Result<MapIter<'_, I::IntoIter, R>, Error>
    where
        A: Message,
        R: Message,
        I: IntoIterator<Item = A>,
    {
        self.map_raw(f as usize, tramp::call_owned::<A, R>, input.into_iter(), false)
    }

    fn map_raw<I, R>(&self, func: usize, tramp: Trampoline, input: I, ordered: bool) -> Result<MapIter<'_, I, R>, Error>
    where
        I: Iterator,
        I::Item: Message,
        R: Message,
    {
        if self.inner.is_closed() {
            return Err(Error::Closed);
        }
        Ok(MapIter {
            inner: &self.inner,
            func,
            tramp,
            input,
            input_done: false,
            stream: self.inner.new_stream(),
            submitted: 0,
            yielded: 0,
            outstanding: 0,
            ordered,
            slots: VecDeque::new(),
            ready: VecDeque::new(),
            done: VecDeque::new(),
            done_base: 0,
            staged: FrameBuf::new(self.inner.inline_max(), MAP_BATCH),
            scratch: Scratch::new(),
            _result: PhantomData,
        })
    }

    /// Removes every task still queued (not yet taken by a worker); their
    /// tickets and map items end with [`TaskError::Cancelled`]. Returns how many.
    pub fn clear_tasks(&self) -> usize {
        self.inner.clear_tasks()
    }

    /// Stops accepting tasks; workers finish what is queued and exit.
    /// From now on the parent refuses workers' [`crate::parent_call`]s
    /// ([`crate::ParentCallError::Refused`]).
    pub fn close(&self) {
        self.inner.close();
        self.inner.close_calls();
    }

    /// Waits until every worker has exited: they finish what is queued
    /// first. The pool must be closed ([`Pool::close`] or
    /// [`Pool::terminate`]): on an open pool, whose workers never exit on
    /// their own, it returns [`Error::NotClosed`] at once instead of
    /// waiting for ever.
    pub fn join(&self) -> Result<(), Error> {
        join_workers(&self.inner, Deadline::NEVER)
    }

    /// [`Pool::join`], waiting at most `timeout` (`Duration::MAX`: no
    /// limit): [`Error::Timeout`] if workers are still running then (they
    /// are left running: [`Pool::terminate`] stops them).
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), Error> {
        join_workers(&self.inner, Deadline::after(timeout))
    }

    /// Kills every worker now; unfinished tasks end with an error.
    pub fn terminate(&self) {
        self.inner.terminate();
    }

    /// Whether the pool accepts tasks and has a live worker.
    pub fn is_alive(&self) -> bool {
        !self.inner.is_closed() && self.inner.alive_workers() > 0
    }

    /// Pids of the worker processes.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.inner.worker_pids()
    }

    /// The pool's shared segment: create shared containers and buffers here,
    /// and open them by name in tasks through [`crate::pool_segment`].
    pub fn segment(&self) -> &crate::Segment {
        &self.inner.seg
    }

    /// Workers started to replace dead ones so far.
    pub fn respawns(&self) -> u64 {
        self.inner.respawns.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tasks run again after their worker died, so far.
    pub fn requeued(&self) -> u64 {
        self.inner.requeued.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // No new work. Tickets and maps still alive keep the workers until
        // they are done; the last handle shuts them down (see `Workers::drop`).
        self.inner.close();
    }
}

/// `join` for both pool kinds: refused on an open pool, else waits until
/// `deadline` for every worker to exit.
pub(crate) fn join_workers(inner: &Workers, deadline: Deadline) -> Result<(), Error> {
    if !inner.is_closed() {
        return Err(Error::NotClosed);
    }
    if inner.join_until(deadline) {
        Ok(())
    } else {
        Err(Error::Timeout)
    }
}

/// A submission failure that gives the argument back.
pub(crate) fn put_error<A>(e: Error, arg: A) -> PutError<A> {
    match e {
        Error::Closed | Error::Task(TaskError::PoolGone) => PutError::Closed(arg),
        Error::Full => PutError::Full(arg),
        Error::Task(TaskError::Encode(why)) => PutError::Encode(arg, why),
        other => PutError::Encode(arg, other.to_string()),
    }
}

/// A submission failure, as the error of the task that could not be submitted.
fn to_task_error(e: Error) -> TaskError {
    match e {
        Error::Task(t) => t,
        _ => TaskError::PoolGone,
    }
}

/// How many tasks a map pushes at once.
const MAP_BATCH: usize = 32;

/// Results of [`Pool::map`] / [`Pool::map_unordered`].
///
/// Dropping it early discards the results still to come.
pub struct MapIter<'p, I: Iterator, R> {
    inner: &'p Arc<Workers>,
    func: usize,
    tramp: Trampoline,
    input: I,
    input_done: bool,
    stream: u64,
    submitted: u64,
    yielded: u64,
    outstanding: u64,
    ordered: bool,
    /// Ordered mode: results by `seq - yielded`.
    slots: VecDeque<Option<Result<R, TaskError>>>,
    /// Unordered mode: results in arrival order.
    ready: VecDeque<Result<R, TaskError>>,
    /// Which sequence numbers from `done_base` on have been answered: a
    /// result that arrives twice (a worker killed right after answering) is
    /// counted and yielded once.
    done: VecDeque<bool>,
    done_base: u64,
    /// Framed tasks waiting to be pushed (16-byte aligned).
    staged: FrameBuf,
    scratch: Box<Scratch>,
    _result: PhantomData<fn() -> R>,
}

impl<I: Iterator, R> fmt::Debug for MapIter<'_, I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapIter")
            .field("submitted", &self.submitted)
            .field("yielded", &self.yielded)
            .field("outstanding", &self.outstanding)
            .field("ordered", &self.ordered)
            .finish()
    }
}

impl<I, R> MapIter<'_, I, R>
where
    I: Iterator,
    I::Item: Message,
    R: Message,
{
    fn place(&mut self, seq: u64, result: Result<R, TaskError>) {
        if self.ordered {
            let Some(i) = seq.checked_sub(self.yielded) else { return };
            let i = i as usize;
            if self.slots.len() <= i {
                self.slots.resize_with(i + 1, || None);
            }
            if self.slots[i].is_none() {
                self.slots[i] = Some(result);
            }
        } else {
            self.ready.push_back(result);
        }
    }

    /// Starts tracking `seq` (and every number below it) as unanswered.
    fn pending_mark(&mut self, seq: u64) {
        while self.done_base + (self.done.len() as u64) <= seq {
            self.done.push_back(false);
        }
    }

    /// Records `seq` as answered; false if it already was (a duplicate), or
    /// was never submitted (a forged result must not grow our tables).
    fn mark_done(&mut self, seq: u64) -> bool {
        if seq >= self.submitted {
            return false;
        }
        let Some(i) = seq.checked_sub(self.done_base) else { return false };
        self.pending_mark(seq);
        let slot = &mut self.done[i as usize];
        if *slot {
            return false;
        }
        *slot = true;
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            self.done_base += 1;
        }
        true
    }

    /// Submits as many inputs as the queue takes right now; waits for room
    /// only when this map has nothing in flight (other users fill the queue).
    fn feed(&mut self) -> Result<(), Error> {
        while !self.input_done {
            let deadline = if self.outstanding == 0 { Deadline::NEVER } else { Deadline::now() };
            let room = self.inner.reserve(MAP_BATCH, deadline)?;
            if room == 0 {
                return Ok(());
            }
            let inner: &Workers = self.inner;
            // Unused reservations go back on every way out, panics included.
            let mut reservation = Reservation::new(inner, room);
            // Frames encoded but not yet pushed: their blocks are freed if
            // the input iterator or an archive panics before the push.
            let mut hdrs = Staged { seg: &inner.seg, hdrs: Vec::with_capacity(room) };
            let mut lens = [0usize; MAP_BATCH];
            while hdrs.len() < room {
                let Some(item) = self.input.next() else {
                    self.input_done = true;
                    break;
                };
                let seq = self.submitted;
                self.submitted += 1;
                match self.inner.frame(self.stream, seq, self.func, self.tramp, &item, &mut self.scratch) {
                    Ok(frame) => {
                        let k = hdrs.len();
                        lens[k] = self.staged.fill(k, frame.inline());
                        hdrs.push(frame.hdr);
                    }
                    Err(e) => {
                        self.mark_done(seq);
                        self.place(seq, Err(e));
                    }
                }
            }
            let staged = &self.staged;
            let hdrs = hdrs.handed_over();
            let pushed = inner.push_frames(&hdrs, |k| &staged.slot(k)[..lens[k]]);
            if let Err((sent, e)) = pushed {
                reservation.left -= sent;
                drop(reservation);
                for h in &hdrs[..sent] {
                    self.pending_mark(h.seq);
                }
                self.outstanding += sent as u64;
                let err = to_task_error(e);
                for h in &hdrs[sent..] {
                    self.mark_done(h.seq);
                    self.place(h.seq, Err(err.clone()));
                }
                self.input_done = true;
                return Ok(());
            }
            reservation.left -= hdrs.len();
            drop(reservation);
            for h in &hdrs {
                self.pending_mark(h.seq);
            }
            self.outstanding += hdrs.len() as u64;
        }
        Ok(())
    }

    fn take_ready(&mut self) -> Option<Result<R, TaskError>> {
        if self.ordered {
            if matches!(self.slots.front(), Some(Some(_))) {
                self.yielded += 1;
                return self.slots.pop_front().flatten();
            }
            None
        } else {
            let r = self.ready.pop_front()?;
            self.yielded += 1;
            Some(r)
        }
    }
}

impl<I, R> Iterator for MapIter<'_, I, R>
where
    I: Iterator,
    I::Item: Message,
    R: Message,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.take_ready() {
                return Some(r);
            }
            if let Err(e) = self.feed() {
                // Nothing more can be submitted: the rest of the input fails.
                self.input_done = true;
                let seq = self.submitted;
                self.submitted += 1;
                self.mark_done(seq);
                self.place(seq, Err(to_task_error(e)));
                continue;
            }
            if let Some(r) = self.take_ready() {
                // An input that could not be archived is answered at once.
                return Some(r);
            }
            if self.outstanding == 0 {
                if self.input_done && self.yielded >= self.submitted {
                    return None;
                }
                continue;
            }
            let mut got: Vec<(u64, Result<R, TaskError>)> = Vec::new();
            let res = self.inner.recv(Some(self.stream), Deadline::NEVER, &mut |hdr: &FrameHeader, bytes: &[u8]| {
                got.push((hdr.seq, wire::decode_result::<R>(hdr.status, bytes)));
            });
            for (seq, r) in got {
                if self.mark_done(seq) {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    self.place(seq, r);
                }
            }
            if let Err(RecvError::Gone) | Err(RecvError::Timeout) = res {
                // Every worker is gone: what is outstanding will never come.
                let missing: Vec<u64> = (self.done_base..self.submitted).collect();
                for seq in missing {
                    if self.mark_done(seq) {
                        self.place(seq, Err(TaskError::PoolGone));
                    }
                }
                self.outstanding = 0;
                self.input_done = true;
            }
        }
    }
}

impl<I: Iterator, R> Drop for MapIter<'_, I, R> {
    fn drop(&mut self) {
        // Results still to come, and duplicates of ones taken, are discarded.
        self.inner.abandon(self.stream);
    }
}

// Keep the inline-size arithmetic honest: a frame header plus the smallest
// archive must fit the smallest slot the builder accepts.
const _: () = assert!(HEADER + 16 <= 80);

/// Framed tasks not yet handed to `push_frames` (which frees the blocks of
/// those it cannot push): dropped early, on a panic, it frees their blocks.
struct Staged<'a> {
    seg: &'a crate::Segment,
    hdrs: Vec<FrameHeader>,
}

impl Staged<'_> {
    fn len(&self) -> usize {
        self.hdrs.len()
    }

    fn push(&mut self, hdr: FrameHeader) {
        self.hdrs.push(hdr);
    }

    /// The headers, now `push_frames`'s to send or free.
    fn handed_over(mut self) -> Vec<FrameHeader> {
        std::mem::take(&mut self.hdrs)
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        for h in &self.hdrs {
            wire::discard(self.seg, h);
        }
    }
}
