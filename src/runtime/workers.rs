//! What every pool shares: the segment, the two rings, the worker processes,
//! the in-flight bound, and the collector that routes results to waiters.

use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::calls::{CallServer, REPLY_SLOTS};
use super::code;
use super::control::{self, Layout, W_RETIRING};
use super::lock;
use super::logs;
use super::router::{RecvError, Routing};
use super::supervisor::Recent;
use super::tramp::Trampoline;
use crate::codec::{self, Message};
use crate::ring::{self, Ring, RingError};
use crate::segment::Segment;
use crate::sync::SpinPolicy;
use crate::sys::{process, shm};
use crate::wait::{self, Deadline, Step};
use crate::wire::{self, FrameHeader, HEADER};
use crate::{Error, TaskError};

/// How long a waiter blocks before it looks at the workers' health.
pub(super) const HEALTH_CHECK: Duration = Duration::from_millis(50);
/// Workers in a row that may fail to start before the pool stops respawning.
pub(super) const MAX_FAILED_STARTS: u32 = 3;
/// How long a worker may take to start and initialise.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a join looks whether the workers have exited.
const JOIN_POLL: Duration = Duration::from_millis(1);

/// Options shared by both pool kinds.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub workers: usize,
    pub queue_capacity: usize,
    pub segment_size: u64,
    pub slot_size: usize,
    pub spin: SpinPolicy,
    pub shutdown_timeout: Duration,
    /// Replace workers that die (pools); a remote object's process is not.
    pub respawn: bool,
    /// What becomes of the tasks a dead worker held.
    pub on_death: OnWorkerDeath,
    /// A task running longer than this is hung: its worker is killed.
    pub task_timeout: Option<Duration>,
    /// A worker that ran this many tasks exits and is replaced (`None`: never).
    pub max_tasks: Option<u64>,
    /// Members on other hosts may join (a pool that listens): while it is
    /// open, a pool without local workers waits for them rather than
    /// failing.
    pub remote: bool,
}

/// What happens to the tasks a worker held when it died (killed, crashed,
/// exited, or killed for exceeding the task timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnWorkerDeath {
    /// Run them again on another worker, up to `max_attempts` runs in all
    /// (at-least-once: a task may run again if its worker died after
    /// finishing it, before its answer was out); then `WorkerDied`. A task
    /// that exceeded the task timeout is not run again: `TimedOut`.
    Requeue {
        /// Runs in all, the first included.
        max_attempts: u32,
    },
    /// Answer them at once with `TaskError::WorkerDied` (or `TimedOut`).
    Report,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue_capacity: 256,
            segment_size: 256 << 20,
            slot_size: 256,
            spin: SpinPolicy::DEFAULT,
            shutdown_timeout: Duration::from_secs(2),
            respawn: true,
            on_death: OnWorkerDeath::Requeue { max_attempts: 3 },
            task_timeout: None,
            max_tasks: None,
            remote: false,
        }
    }
}

pub(crate) struct Workers {
    pub(crate) seg: Segment,
    pub(super) tasks: Ring,
    pub(super) results: Ring,
    pub(super) layout: Layout,
    pub(super) key: u64,
    pub(crate) config: Config,
    /// Tasks pushed whose result has not yet been popped from the result ring.
    /// Never above `limit`, which the rings' capacities exceed, so neither
    /// side ever blocks pushing.
    pub(super) in_flight: AtomicUsize,
    pub(super) limit: usize,
    pub(super) next_stream: AtomicU64,
    pub(super) closed: AtomicBool,
    pub(super) children: Mutex<Vec<Option<Child>>>,
    /// Per worker index, a respawn is under way (its `children` entry is
    /// `None` while the process starts outside the lock). Read and written
    /// only under the `children` lock: two supervisors never start two
    /// processes for one slot.
    pub(super) respawning: Vec<AtomicBool>,
    pub(super) routing: Mutex<Routing>,
    pub(super) routed: Condvar,
    pub(crate) respawns: AtomicU64,
    /// Tasks run again after their worker died.
    pub(crate) requeued: AtomicU64,
    /// Per worker, the (stream, seq) of the last results received from it:
    /// a dead worker's held task found here was answered and is not run again.
    pub(super) recent: Vec<Recent>,
    /// This process's claim record while `clear_tasks` pops the task ring.
    pub(super) clear_claim: AtomicU64,
    /// Held while `clear_tasks` runs: `clear_claim` records one claim.
    pub(super) clearing: Mutex<()>,
    /// CLOCK_MONOTONIC ns of the last supervision (see `supervision_due`).
    pub(super) last_supervised: AtomicU64,
    /// Workers in a row that exited before becoming ready.
    pub(super) failed_starts: std::sync::atomic::AtomicU32,
    /// Re-emits workers' log records; stopped after the workers at drop.
    pub(super) logs: Mutex<Option<logs::Receiver>>,
    /// Runs workers' calls to the parent; stopped after the workers at drop.
    pub(super) calls: Mutex<Option<CallServer>>,
    /// The last value of `Signals::retiring` a supervision acted on.
    pub(super) retire_seen: AtomicU64,
    /// `terminate` ran: nothing is started any more, not even to finish
    /// the queue of a closed pool.
    pub(super) terminated: AtomicBool,
    /// A task is parked on room in the queue (see `awaits`): a hint, so
    /// that landing results costs no lock when none is.
    pub(super) room_parked: AtomicBool,
    /// Remote members present now (a pool that listens; see `relay`).
    pub(crate) remote_members: AtomicUsize,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.config.workers)
            .field("queue_capacity", &self.config.queue_capacity)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Workers {
    /// Creates the segment, rings and control block, and starts the workers.
    /// `init` is a stateful pool's (trampoline, function or 0, Init argument).
    pub fn start<I: Message>(config: Config, init: Option<(usize, usize, &I)>) -> Result<Arc<Workers>, Error> {
        if (config.workers == 0 && !config.remote) || config.workers > control::MAX_WORKERS as usize {
            return Err(Error::Config("workers must be between 1 and 1024 (0 only for a pool that listens)"));
        }
        if config.queue_capacity == 0 || config.queue_capacity > (ring::MAX_CAPACITY / 2) as usize {
            return Err(Error::Config("queue_capacity must be between 1 and 2^23"));
        }
        if config.slot_size < HEADER + 16 || config.slot_size > codec::SCRATCH {
            return Err(Error::Config("slot_size must be between 80 and 1024 bytes"));
        }
        if config.max_tasks == Some(0) {
            return Err(Error::Config("max_tasks_per_worker must be at least 1"));
        }
        let limit = config.queue_capacity + config.workers;
        let seg = Segment::anonymous(config.segment_size)?;
        let payload = config.slot_size as u32;
        let tasks = Ring::create(&seg, limit as u32, payload)?;
        let results = Ring::create(&seg, limit as u32, payload)?;
        let workers = config.workers as u32;
        // Calls from workers to the parent: one in flight per worker, and
        // room for a dead worker's leftover.
        let call_ring = Ring::create(&seg, (2 * workers).max(2), payload)?;
        let reply_rings = (0..workers)
            .map(|_| Ring::create(&seg, REPLY_SLOTS, payload).map(|r| r.offset()))
            .collect::<Result<Vec<_>, _>>()?;
        let (log_ring, log_dropped) = logs::create(&seg)?;
        let block = seg.alloc(control::footprint(workers))?;
        let layout = Layout {
            control: block.offset,
            workers,
            build_id: code::build_id(),
            task_ring: tasks.offset(),
            result_ring: results.offset(),
            log_ring: log_ring.offset(),
            log_dropped,
            log_level: logs::filter_code(log::max_level()),
            spin_ns: super::executor::spin_code(config.spin),
            max_tasks: config.max_tasks.unwrap_or(0),
            call_ring: call_ring.offset(),
        };
        let mut key_bytes = [0u8; 8];
        shm::random_bytes(&mut key_bytes).map_err(Error::Spawn)?;
        let key = u64::from_ne_bytes(key_bytes);
        let init_hdr = match init {
            None => None,
            Some((tramp, func, arg)) => {
                let body = wire::encode_block(&seg, arg)?;
                let func = if func == 0 { 0 } else { code::code_offset(func) };
                let mut hdr = FrameHeader { func, tramp: code::code_offset(tramp), ..Default::default() };
                hdr.check = code::seal(code::SealKind::Init, hdr.func, hdr.tramp, key);
                body.describe(&mut hdr);
                Some(hdr)
            }
        };
        control::init(&seg, block.offset, &layout, init_hdr.as_ref())?;
        for (i, &offset) in reply_rings.iter().enumerate() {
            control::slot(&seg, block.offset, workers, i as u32)?.reply_ring.store(offset, Ordering::Release);
        }
        let logs = logs::Receiver::start(&seg, log_ring, log_dropped).map_err(Error::Spawn)?;
        let calls = CallServer::start(&seg, call_ring, block.offset, workers, key).map_err(Error::Spawn)?;
        let inner = Arc::new(Workers {
            seg,
            tasks,
            results,
            layout,
            key,
            config,
            in_flight: AtomicUsize::new(0),
            limit,
            next_stream: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            children: Mutex::new((0..workers).map(|_| None).collect()),
            respawning: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            routing: Mutex::new(Routing::default()),
            routed: Condvar::new(),
            respawns: AtomicU64::new(0),
            requeued: AtomicU64::new(0),
            last_supervised: AtomicU64::new(process::monotonic_ns()),
            clear_claim: AtomicU64::new(0),
            clearing: Mutex::new(()),
            recent: (0..workers).map(|_| Recent::default()).collect(),
            failed_starts: std::sync::atomic::AtomicU32::new(0),
            logs: Mutex::new(Some(logs)),
            calls: Mutex::new(Some(calls)),
            retire_seen: AtomicU64::new(0),
            terminated: AtomicBool::new(false),
            room_parked: AtomicBool::new(false),
            remote_members: AtomicUsize::new(0),
        });
        for i in 0..workers {
            let child = inner.spawn_worker(i)?;
            lock(&inner.children)[i as usize] = Some(child);
        }
        inner.await_ready()?;
        Ok(inner)
    }

    /// Largest archive a task or result carries inline in a slot.
    pub fn inline_max(&self) -> usize {
        wire::inline_max(self.payload())
    }

    /// Bytes a task or result frame may take in a slot (both rings').
    pub fn payload(&self) -> usize {
        self.tasks.payload_capacity().min(self.results.payload_capacity())
    }

    /// A new result stream, registered: its results are kept for its
    /// owner until [`Workers::abandon`] ends it (after which any late or
    /// duplicate result for it is discarded, block and all).
    pub fn new_stream(&self) -> u64 {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        lock(&self.routing).open(stream);
        stream
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Reserves room for up to `want` tasks; returns how many (at least one).
    /// Waits (pumping results into the stash) until `deadline`; `Ok(0)` when
    /// the deadline passed with the queue still full.
    pub fn reserve(&self, want: usize, deadline: Deadline) -> Result<usize, Error> {
        loop {
            if self.is_closed() {
                return Err(Error::Closed);
            }
            let cur = self.in_flight.load(Ordering::Relaxed);
            if cur < self.limit {
                let k = want.min(self.limit - cur);
                if self.in_flight.compare_exchange_weak(cur, cur + k, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                    return Ok(k);
                }
                continue;
            }
            if deadline.passed() {
                return Ok(0);
            }
            match self.recv(None, deadline, &mut |_, _| {}) {
                Ok(_) => {}
                Err(RecvError::Timeout) => return Ok(0),
                Err(RecvError::Gone) => return Err(Error::Task(TaskError::PoolGone)),
            }
        }
    }

    /// Gives back `n` reservations that were not used.
    pub fn unreserve(&self, n: usize) {
        if n > 0 {
            self.land(n);
            self.routed.notify_all();
        }
    }

    /// `n` tasks left flight (answered, cleared, or lost with a worker).
    /// Saturating: a result that races with its worker's death is counted once.
    pub(super) fn land(&self, n: usize) {
        if n > 0 {
            let _ = self.in_flight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.saturating_sub(n)));
            self.wake_room();
        }
    }

    /// Frames a task for `func` run by `tramp` with argument `arg`.
    pub fn frame<'s, A: Message>(
        &self,
        stream: u64,
        seq: u64,
        func: usize,
        tramp: Trampoline,
        arg: &A,
        scratch: &'s mut codec::Scratch,
    ) -> Result<wire::Frame<'s>, TaskError> {
        let mut hdr = FrameHeader { stream, seq, ..Default::default() };
        hdr.func = code::code_offset(func);
        hdr.tramp = code::code_offset(tramp as usize);
        hdr.check = code::seal(code::SealKind::Task, hdr.func, hdr.tramp, self.key);
        wire::encode(&self.seg, hdr, arg, scratch, self.payload())
    }

    /// Pushes framed tasks (reservations already taken). `inline(i)` gives
    /// task `i`'s inline archive bytes. On failure, says how many were pushed;
    /// the rest have their blocks freed (their reservations are the caller's
    /// to give back, see [`Reservation`]).
    pub fn push_frames<'b>(
        &self,
        hdrs: &[FrameHeader],
        inline: impl Fn(usize) -> &'b [u8],
    ) -> Result<(), (usize, Error)> {
        let mut sent = 0;
        while sent < hdrs.len() {
            let chunk = Deadline::after(HEALTH_CHECK).instant();
            let pushed = self.tasks.push_many_with(hdrs.len() - sent, chunk, self.config.spin, |j, dst| {
                hdrs[sent + j].write(dst, inline(sent + j))
            });
            match pushed {
                Ok(k) => sent += k,
                Err(RingError::Timeout) => {
                    // A slot held by a dead worker frees up once it is reaped.
                    if self.retire_due() || self.supervision_due() {
                        self.supervise();
                    }
                }
                Err(e) => {
                    for h in &hdrs[sent..] {
                        if h.body == wire::BODY_BLOCK {
                            let _ = self.seg.release(h.block);
                        }
                    }
                    let e = if e == RingError::Closed { Error::Closed } else { e.into() };
                    return Err((sent, e));
                }
            }
        }
        Ok(())
    }

    /// Workers currently running, counting those being replaced after
    /// running their quota of tasks (`max_tasks`): an open pool is never
    /// seen without workers just because its workers took turns.
    pub fn alive_workers(&self) -> usize {
        let mut children = lock(&self.children);
        let replacing = |i: usize| {
            self.respawning[i].load(Ordering::Relaxed)
                || (!self.is_closed()
                    && control::slot(&self.seg, self.layout.control, self.layout.workers, i as u32)
                        .is_ok_and(|s| s.state.load(Ordering::Acquire) == W_RETIRING))
        };
        let mut alive = 0;
        for (i, child) in children.iter_mut().enumerate() {
            let running = child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if running || replacing(i) {
                alive += 1;
            }
        }
        alive
    }

    /// Stops accepting tasks; workers finish the queue and exit.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.tasks.close();
    }

    /// Refuses workers' calls to the parent from now on
    /// ([`crate::ParentCallError::Refused`]); calls already sent are answered.
    pub fn close_calls(&self) {
        if let Some(server) = lock(&self.calls).as_ref() {
            server.close();
        }
    }

    /// Whether a worker retired (ran its quota) since the last supervision
    /// that looked: if so, this caller supervises now, so that its
    /// replacement starts at once rather than at the next health check.
    pub(super) fn retire_due(&self) -> bool {
        if self.config.max_tasks.is_none() {
            return false;
        }
        let Ok(signals) = control::signals(&self.seg, self.layout.control) else { return false };
        // SYNC: Acquire pairs with the retiring worker's Release bump.
        let now = signals.retiring.load(Ordering::Acquire);
        let seen = self.retire_seen.load(Ordering::Relaxed);
        now != seen && self.retire_seen.compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Waits until every worker has exited, up to `timeout` (then kills them).
    pub fn join(&self, timeout: Option<Duration>) {
        if !self.join_until(Deadline::within(timeout)) {
            self.kill_all();
        }
    }

    /// Waits until every worker has exited or `deadline` passes; whether they
    /// all had. Workers still running at the deadline are left running.
    ///
    /// On an open pool this waits for workers that never exit on their own:
    /// the user APIs refuse that case before calling it.
    pub fn join_until(&self, deadline: Deadline) -> bool {
        let exited = wait::in_slices(
            deadline,
            JOIN_POLL,
            |until| {
                // Workers that ran their quota are replaced while tasks
                // are queued, closed pool or not: supervision does that.
                if self.config.max_tasks.is_some() {
                    self.supervise();
                }
                // Poll under the lock, sleep without it: terminate(),
                // is_alive() and waiters' supervision must not block behind
                // a long join.
                if self.reap_exited() {
                    return Step::Done(());
                }
                std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
                Step::Again
            },
            || Ok::<(), ()>(()),
        );
        exited.is_ok() || self.reap_exited()
    }

    /// Forgets the workers that have exited; whether none is left (nor
    /// being started).
    fn reap_exited(&self) -> bool {
        let mut children = lock(&self.children);
        for (i, child) in children.iter_mut().enumerate() {
            // A retired worker is left to supervision, which replaces it
            // if tasks are still queued.
            let retired = control::slot(&self.seg, self.layout.control, self.layout.workers, i as u32)
                .is_ok_and(|s| s.state.load(Ordering::Acquire) == W_RETIRING);
            if retired && !self.tasks.is_empty() && !self.terminated.load(Ordering::Acquire) {
                continue;
            }
            if child.as_mut().is_some_and(|c| !matches!(c.try_wait(), Ok(None))) {
                *child = None;
            }
        }
        children.iter().all(Option::is_none) && !self.respawning.iter().any(|r| r.load(Ordering::Relaxed))
    }

    /// Kills and reaps every worker.
    fn kill_all(&self) {
        let mut children = lock(&self.children);
        for child in children.iter_mut() {
            if let Some(c) = child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            *child = None;
        }
    }

    /// Kills every worker at once and reaps it; every waiter then learns at
    /// once that its result will not come (`RecvError::Gone`): results
    /// already out are still delivered, then the closed result ring says
    /// there is nothing more.
    pub fn terminate(&self) {
        self.terminated.store(true, Ordering::Release);
        self.close();
        self.close_calls();
        self.kill_all();
        // No producer is left (a respawn under way sees `closed` and kills
        // what it started).
        self.end_results();
    }

    /// No worker is left or will be started: closes the result ring, so
    /// that every receive ends with [`RecvError::Gone`] as soon as what is
    /// already in it is delivered, and wakes the waiters parked on the
    /// routing condvar to see it.
    pub(super) fn end_results(&self) {
        self.results.close();
        drop(lock(&self.routing));
        self.routed.notify_all();
    }

    /// Pids of the running workers (dead ones not yet reaped left out).
    pub fn worker_pids(&self) -> Vec<u32> {
        lock(&self.children).iter().flatten().map(|c| c.id()).filter(|&p| process::is_alive(p)).collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.clear_tasks();
        self.tasks.close();
        self.join(Some(self.config.shutdown_timeout));
        // No worker is left to call: the call thread answers what was sent
        // and ends.
        drop(lock(&self.calls).take());
        // Last: what the workers logged before exiting is re-emitted first.
        drop(lock(&self.logs).take());
    }
}

/// Gives back reservations that were not turned into pushed tasks, also when
/// user code (an input iterator, a `Serialize` impl) panics in between.
pub(crate) struct Reservation<'a> {
    inner: &'a Workers,
    /// Reservations still held.
    pub left: usize,
}

impl<'a> Reservation<'a> {
    pub fn new(inner: &'a Workers, n: usize) -> Self {
        Reservation { inner, left: n }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.inner.unreserve(self.left);
    }
}
