//! `Pool`: run plain functions in worker processes.
//!
//! Any `fn(A) -> R` whose argument and result are [`Message`]s can be
//! submitted; several different functions can share one pool (a function
//! table). Results come back as [`Ticket`]s, or as an iterator over a whole
//! input in submission order ([`Pool::map`]) or completion order
//! ([`Pool::map_unordered`]).

mod feed;
mod map;
mod stateful;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::Message;
use crate::runtime::tramp::{self, Trampoline};
use crate::runtime::Ticket;
use crate::runtime::{submit_to, submit_until, Config, Workers};
use crate::wait::Deadline;
use crate::wire::{self, FrameHeader, HEADER};
use crate::{Error, PutError, TaskError};

pub use feed::{FeedError, FeedHandle};
pub use map::{MapIter, MapStream};
pub use stateful::{Worker, WorkerPool, WorkerPoolBuilder};

/// A pool of worker processes running plain functions.
///
/// Dropping the pool discards queued tasks, lets running ones finish (up to
/// the shutdown timeout, then kills), and reaps every worker; the segment is
/// a memfd, so nothing is left behind.
pub struct Pool {
    inner: Arc<Workers>,
    /// Relays tasks to members on other hosts (a pool that listens).
    #[cfg(feature = "net")]
    relay: Option<crate::net::Relay>,
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
    /// Where it listens for members on other hosts, and their secret.
    #[cfg(feature = "net")]
    listen: Option<(String, Secret)>,
    /// TLS files for a `tls/` listen endpoint.
    #[cfg(feature = "net")]
    tls: Option<crate::net::Tls>,
}

/// A shared secret, kept out of `Debug` output.
#[cfg(feature = "net")]
#[derive(Clone, Default)]
struct Secret(Vec<u8>);

#[cfg(feature = "net")]
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
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
        /// Replaces [`busy_poll`](Self::busy_poll).
        pub fn spin(mut self, spin: Duration) -> Self {
            self.config.spin = $crate::sync::SpinPolicy::spin_for(spin);
            self
        }

        /// Busy-poll on every receive path: the workers waiting for tasks
        /// and the caller waiting for results spin without ever sleeping
        /// (as iceoryx2's polling subscriber does), for the lowest latency.
        /// Each waiting side then takes a whole core while it waits, idle or
        /// not. Waits still time out, and dead workers are still noticed
        /// (the clock is read every few microseconds, the workers' health
        /// every 50 ms as always).
        ///
        /// Only for machines with a core per busy process: with more
        /// busy-polling processes (workers plus the caller) than free
        /// cores, a poller holds the core its peer needs and hand-offs cost
        /// scheduler time slices (see [`SpinPolicy::BUSY_POLL`](crate::sync::SpinPolicy::BUSY_POLL)).
        /// On 2 cores, one worker and a caller that both poll starve as soon
        /// as anything else runs. Replaces [`spin`](Self::spin).
        pub fn busy_poll(mut self) -> Self {
            self.config.spin = $crate::sync::SpinPolicy::BUSY_POLL;
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
        /// A map's items count one by one (a map then sends them one per
        /// task, not grouped). `n == 0` is refused by `build` ([`Error::Config`]).
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
        #[cfg(feature = "net")]
        let mut config = self.config;
        #[cfg(not(feature = "net"))]
        let config = self.config;
        #[cfg(feature = "net")]
        {
            match &self.listen {
                Some((endpoint, _)) if endpoint.is_empty() => {
                    return Err(Error::Config("a secret without listen: members need an endpoint to join"))
                }
                Some((_, secret)) if secret.0.is_empty() => {
                    return Err(Error::Config("listen needs a secret: every frame between members is authenticated"))
                }
                _ => {}
            }
            config.remote = self.listen.is_some();
        }
        // The port first: a listen that fails spawns no worker.
        #[cfg(feature = "net")]
        let session = match &self.listen {
            Some((endpoint, secret)) => {
                Some(crate::net::Relay::listen(endpoint, &secret.0, self.tls.clone()).map_err(Error::Net)?)
            }
            None => None,
        };
        let inner = Workers::start::<()>(config, None)?;
        #[cfg(feature = "net")]
        let relay = match session {
            Some(session) => Some(crate::net::Relay::start(Arc::clone(&inner), session).map_err(Error::Net)?),
            None => None,
        };
        Ok(Pool {
            inner,
            #[cfg(feature = "net")]
            relay,
        })
    }

    /// Also accepts workers from other hosts (feature `net`): processes of
    /// this same build that call [`crate::net::join`] with this endpoint
    /// and the same [`secret`](Self::secret). Tasks go to local and remote
    /// workers alike, each to exactly one; a member that leaves or dies has
    /// its tasks run again elsewhere. With `listen`, `workers(0)` is
    /// allowed: the pool then waits for members. Nothing listens unless
    /// this is called; the README says what an open port exposes.
    ///
    /// `build` binds the endpoint before it starts any worker, and fails
    /// with [`Error::Net`] if it cannot: [`NetError::Listen`](crate::net::NetError::Listen)
    /// (the port is taken, with `in_use`; the address is not this host's)
    /// or [`NetError::Endpoint`](crate::net::NetError::Endpoint) (not
    /// `tcp/<host>:<port>`).
    #[cfg(feature = "net")]
    pub fn listen(mut self, endpoint: &str) -> Self {
        let secret = self.listen.take().map(|(_, s)| s).unwrap_or_default();
        self.listen = Some((endpoint.to_owned(), secret));
        self
    }

    /// Listens on a `tls/` endpoint with these files (see
    /// [`SessionBuilder::tls`](crate::net::SessionBuilder::tls)): members
    /// then join with [`net::join_via`](crate::net::join_via) and a session
    /// that trusts the same CA.
    #[cfg(feature = "net")]
    pub fn tls(mut self, tls: crate::net::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The secret members must share to join (every frame between them is
    /// authenticated under it). Required with [`listen`](Self::listen).
    #[cfg(feature = "net")]
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        let endpoint = self.listen.take().map(|(e, _)| e).unwrap_or_default();
        self.listen = Some((endpoint, Secret(secret.as_ref().to_vec())));
        self
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
        self.map_raw(f as usize, tramp::call_group::<A, R>, input.into_iter(), true)
    }

    /// Like [`Pool::map`], but yields results as they complete.
    pub fn map_unordered<A, R, I>(&self, f: fn(A) -> R, input: I) -> Result<MapIter<'_, I::IntoIter, R>, Error>
    where
        A: Message,
        R: Message,
        I: IntoIterator<Item = A>,
    {
        self.map_raw(f as usize, tramp::call_group::<A, R>, input.into_iter(), false)
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
        Ok(MapIter::new(&self.inner, func, tramp, input, ordered))
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

    /// The members on other hosts admitted now (feature `net`; empty for a
    /// pool that does not [`listen`](PoolBuilder::listen)), longest-standing
    /// first: each one's id, workers, tasks it holds and has answered, and
    /// when it joined. Other processes ask with [`crate::net::members`].
    #[cfg(feature = "net")]
    pub fn members(&self) -> Vec<crate::net::MemberInfo> {
        self.relay.as_ref().map_or_else(Vec::new, crate::net::Relay::members)
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
pub(super) fn to_task_error(e: Error) -> TaskError {
    match e {
        Error::Task(t) => t,
        _ => TaskError::PoolGone,
    }
}

// Keep the inline-size arithmetic honest: a frame header plus the smallest
// archive must fit the smallest slot the builder accepts.
const _: () = assert!(HEADER + 16 <= 80);

/// Framed tasks not yet handed to `push_frames` (which frees the blocks of
/// those it cannot push): dropped early, on a panic, it frees their blocks.
pub(super) struct Staged<'a> {
    seg: &'a crate::Segment,
    hdrs: Vec<FrameHeader>,
}

impl<'a> Staged<'a> {
    pub(super) fn new(seg: &'a crate::Segment, capacity: usize) -> Self {
        Staged { seg, hdrs: Vec::with_capacity(capacity) }
    }

    pub(super) fn len(&self) -> usize {
        self.hdrs.len()
    }

    pub(super) fn push(&mut self, hdr: FrameHeader) {
        self.hdrs.push(hdr);
    }

    /// The headers, now `push_frames`'s to send or free.
    pub(super) fn handed_over(mut self) -> Vec<FrameHeader> {
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
