//! What every pool shares: the segment, the two rings, the worker processes,
//! the in-flight bound, and the collector that routes results to waiters.

use std::collections::{HashMap, VecDeque};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::control::{self, Layout, MAX_BATCH, W_INIT_FAILED, W_READY};
use crate::codec::{self, Message};
use crate::ring::{self, Ring, RingError};
use crate::segment::Segment;
use crate::spawn::{self, WorkerConfig};
use crate::sync::SpinPolicy;
use crate::sys::{process, shm};
use crate::task::{self, Body, FrameHeader, Trampoline, HEADER};
use crate::{Error, TaskError};

/// How long a waiter blocks before it looks at the workers' health.
const HEALTH_CHECK: Duration = Duration::from_millis(50);
/// Workers in a row that may fail to start before the pool stops respawning.
const MAX_FAILED_STARTS: u32 = 3;
/// How long a worker may take to start and initialise.
const START_TIMEOUT: Duration = Duration::from_secs(60);

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
        }
    }
}

/// A result waiting for its owner, copied out of the ring.
struct Stashed {
    hdr: FrameHeader,
    /// The inline archive (16-byte aligned); empty for block bodies.
    inline: Vec<u128>,
}

#[derive(Default)]
struct Routing {
    /// A thread is popping the result ring; others wait on the condvar.
    draining: bool,
    /// Results popped by a thread that was not their owner.
    stash: HashMap<u64, VecDeque<Stashed>>,
    /// Streams whose owner went away: results still to come, to be discarded.
    abandoned: HashMap<u64, u64>,
}

/// Why a receive returned no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvError {
    Timeout,
    /// No worker is left to produce the result.
    Gone,
}

pub(crate) struct Inner {
    pub seg: Segment,
    pub tasks: Ring,
    pub results: Ring,
    layout: Layout,
    key: u64,
    pub config: Config,
    /// Tasks pushed whose result has not yet been popped from the result ring.
    /// Never above `limit`, which the rings' capacities exceed, so neither
    /// side ever blocks pushing.
    in_flight: AtomicUsize,
    limit: usize,
    next_stream: AtomicU64,
    closed: AtomicBool,
    children: Mutex<Vec<Option<Child>>>,
    routing: Mutex<Routing>,
    routed: Condvar,
    pub respawns: AtomicU64,
    /// Tasks run again after their worker died.
    pub requeued: AtomicU64,
    /// Per worker, the (stream, seq) of the last results received from it:
    /// a dead worker's held task found here was answered and is not run again.
    recent: Vec<Recent>,
    /// This process's claim record while `clear_tasks` pops the task ring.
    clear_claim: AtomicU64,
    /// CLOCK_MONOTONIC ns of the last supervision (see `supervision_due`).
    last_supervised: AtomicU64,
    /// Workers in a row that exited before becoming ready.
    failed_starts: std::sync::atomic::AtomicU32,
    /// Re-emits workers' log records; stopped after the workers at drop.
    logs: Mutex<Option<crate::logfwd::Receiver>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.config.workers)
            .field("queue_capacity", &self.config.queue_capacity)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Creates the segment, rings and control block, and starts the workers.
    /// `init` is a stateful pool's (trampoline, function or 0, Init argument).
    pub fn start<I: Message>(config: Config, init: Option<(usize, usize, &I)>) -> Result<Arc<Inner>, Error> {
        if config.workers == 0 || config.workers > control::MAX_WORKERS as usize {
            return Err(Error::Config("workers must be between 1 and 1024"));
        }
        if config.queue_capacity == 0 || config.queue_capacity > (ring::MAX_CAPACITY / 2) as usize {
            return Err(Error::Config("queue_capacity must be between 1 and 2^23"));
        }
        if config.slot_size < HEADER + 16 || config.slot_size > codec::SCRATCH {
            return Err(Error::Config("slot_size must be between 80 and 1024 bytes"));
        }
        let limit = config.queue_capacity + config.workers;
        let seg = Segment::anonymous(config.segment_size)?;
        let payload = config.slot_size as u32;
        let tasks = Ring::create(&seg, limit as u32, payload)?;
        let results = Ring::create(&seg, limit as u32, payload)?;
        let workers = config.workers as u32;
        let (log_ring, log_dropped) = crate::logfwd::create(&seg)?;
        let block = seg.alloc(control::footprint(workers))?;
        let layout = Layout {
            control: block.offset,
            workers,
            task_ring: tasks.offset(),
            result_ring: results.offset(),
            log_ring: log_ring.offset(),
            log_dropped,
            log_level: crate::logfwd::filter_code(log::max_level()),
            spin_ns: config.spin.spin.as_nanos().min(u64::MAX as u128) as u64,
        };
        let mut key_bytes = [0u8; 8];
        shm::random_bytes(&mut key_bytes).map_err(Error::Spawn)?;
        let key = u64::from_ne_bytes(key_bytes);
        let init_hdr = match init {
            None => None,
            Some((tramp, func, arg)) => {
                let body = task::encode_block(&seg, arg)?;
                let func = if func == 0 { 0 } else { spawn::code_offset(func) };
                let mut hdr = FrameHeader { func, tramp: spawn::code_offset(tramp), ..Default::default() };
                hdr.check = spawn::seal(spawn::SealKind::Init, hdr.func, hdr.tramp, key);
                body.describe(&mut hdr);
                Some(hdr)
            }
        };
        control::init(&seg, block.offset, &layout, init_hdr.as_ref())?;
        let logs = crate::logfwd::Receiver::start(&seg, log_ring, log_dropped).map_err(Error::Spawn)?;
        let inner = Arc::new(Inner {
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
            routing: Mutex::new(Routing::default()),
            routed: Condvar::new(),
            respawns: AtomicU64::new(0),
            requeued: AtomicU64::new(0),
            last_supervised: AtomicU64::new(process::monotonic_ns()),
            clear_claim: AtomicU64::new(0),
            recent: (0..workers).map(|_| Recent::default()).collect(),
            failed_starts: std::sync::atomic::AtomicU32::new(0),
            logs: Mutex::new(Some(logs)),
        });
        for i in 0..workers {
            inner.spawn_worker(i)?;
        }
        inner.await_ready()?;
        Ok(inner)
    }

    fn spawn_worker(&self, index: u32) -> Result<(), Error> {
        let slot = control::slot(&self.seg, self.layout.control, self.layout.workers, index)?;
        control::reset(slot);
        let cfg = WorkerConfig {
            fd: self.seg.raw_fd(),
            control: self.layout.control,
            index,
            parent: process::current_pid(),
            key: self.key,
        };
        let child = process::spawn_self(&[(spawn::ENV, cfg.encode())], self.seg.raw_fd()).map_err(Error::Spawn)?;
        lock(&self.children)[index as usize] = Some(child);
        Ok(())
    }

    /// Waits until every worker reports ready; a failed init is an error.
    fn await_ready(&self) -> Result<(), Error> {
        let deadline = Instant::now() + START_TIMEOUT;
        for i in 0..self.layout.workers {
            let slot = control::slot(&self.seg, self.layout.control, self.layout.workers, i)?;
            loop {
                match slot.state.load(Ordering::Acquire) {
                    W_READY => break,
                    W_INIT_FAILED => {
                        let hdr = FrameHeader {
                            body: task::BODY_BLOCK,
                            block: slot.error_block.load(Ordering::Relaxed),
                            len: slot.error_len.load(Ordering::Relaxed),
                            ..Default::default()
                        };
                        let message = task::with_body(&self.seg, &hdr, &[], true, codec::decode::<String>)
                            .ok()
                            .and_then(Result::ok)
                            .unwrap_or_else(|| "worker init failed".into());
                        return Err(Error::WorkerInit { message });
                    }
                    _ => {}
                }
                if let Some(child) = lock(&self.children)[i as usize].as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(Error::Spawn(std::io::Error::other(format!(
                            "worker exited during start-up ({status})"
                        ))));
                    }
                }
                if Instant::now() > deadline {
                    return Err(Error::Spawn(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "worker did not start in time",
                    )));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(())
    }

    /// Largest archive a task or result carries inline in a slot.
    pub fn inline_max(&self) -> usize {
        self.tasks.payload_capacity().min(self.results.payload_capacity()) - HEADER
    }

    pub fn new_stream(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Reserves room for up to `want` tasks; returns how many (at least one).
    /// Waits (pumping results into the stash) until `deadline`; `Ok(0)` when
    /// the deadline passed with the queue still full.
    pub fn reserve(&self, want: usize, deadline: Option<Instant>) -> Result<usize, Error> {
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
            if deadline.is_some_and(|d| Instant::now() >= d) {
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
    fn land(&self, n: usize) {
        if n > 0 {
            let _ = self.in_flight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.saturating_sub(n)));
        }
    }

    /// Frames a task for `func` run by `tramp` with argument `arg`.
    pub fn frame<A: Message>(
        &self,
        stream: u64,
        seq: u64,
        func: usize,
        tramp: Trampoline,
        arg: &A,
        scratch: &mut codec::Scratch,
    ) -> Result<(FrameHeader, Body), TaskError> {
        let body = task::encode_body(&self.seg, arg, scratch, self.inline_max())?;
        let mut hdr = FrameHeader { stream, seq, ..Default::default() };
        hdr.func = spawn::code_offset(func);
        hdr.tramp = spawn::code_offset(tramp as usize);
        hdr.check = spawn::seal(spawn::SealKind::Task, hdr.func, hdr.tramp, self.key);
        body.describe(&mut hdr);
        Ok((hdr, body))
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
            let chunk = Some(Instant::now() + HEALTH_CHECK);
            let pushed = self.tasks.push_many_with(hdrs.len() - sent, chunk, self.config.spin, |j, dst| {
                hdrs[sent + j].write(dst, inline(sent + j))
            });
            match pushed {
                Ok(k) => sent += k,
                Err(RingError::Timeout) => {
                    // A slot held by a dead worker frees up once it is reaped.
                    if self.supervision_due() {
                        self.supervise();
                    }
                }
                Err(e) => {
                    for h in &hdrs[sent..] {
                        if h.body == task::BODY_BLOCK {
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

    /// Receives results of `stream` (all streams' go to the stash with
    /// `None`), calling `on(header, archive)` for each; returns how many.
    ///
    /// Returns as soon as at least one result was handled (or, with `None`,
    /// any result was popped or routed by another thread).
    pub fn recv(
        &self,
        stream: Option<u64>,
        deadline: Option<Instant>,
        on: &mut dyn FnMut(&FrameHeader, &[u8]),
    ) -> Result<usize, RecvError> {
        let mut routing = lock(&self.routing);
        loop {
            if let Some(s) = stream {
                if let Some(queue) = routing.stash.get_mut(&s) {
                    let items: Vec<Stashed> = queue.drain(..).collect();
                    routing.stash.remove(&s);
                    drop(routing);
                    for item in &items {
                        self.deliver_stashed(item, on);
                    }
                    return Ok(items.len());
                }
            }
            if routing.draining {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return Err(RecvError::Timeout);
                }
                let wait = deadline.map_or(HEALTH_CHECK, |d| (d - now).min(HEALTH_CHECK));
                let before = self.in_flight.load(Ordering::Relaxed);
                routing = self.routed.wait_timeout(routing, wait).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
                if stream.is_none() && self.in_flight.load(Ordering::Relaxed) != before {
                    return Ok(0);
                }
                continue;
            }
            routing.draining = true;
            drop(routing);
            let drained = {
                // Clears `draining` and wakes the others even if `on` panics.
                let _draining = Draining(self);
                self.drain(stream, deadline, on)
            };
            routing = lock(&self.routing);
            match drained {
                Ok(n) => {
                    // Leave the stash check to the next round for `Some`; with
                    // `None` any progress is enough.
                    if n > 0 || stream.is_none() {
                        return Ok(n);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Pops result batches until one for `stream` (or, with `None`, any) came.
    ///
    /// Every `HEALTH_CHECK` it also reaps dead workers, whose held tasks are
    /// answered with `WorkerDied` (they may be this stream's).
    fn drain(
        &self,
        stream: Option<u64>,
        deadline: Option<Instant>,
        on: &mut dyn FnMut(&FrameHeader, &[u8]),
    ) -> Result<usize, RecvError> {
        loop {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(RecvError::Timeout);
            }
            let next_check = now + HEALTH_CHECK;
            // Due by the pool's clock, not this call's: results that keep
            // flowing must not keep supervision from running.
            if self.supervision_due() {
                // No worker left: results already in the ring, or answers
                // supervise just put in the stash, still count.
                if !self.supervise() && self.results.is_empty() {
                    if stream.is_some_and(|s| lock(&self.routing).stash.contains_key(&s)) {
                        return Ok(0);
                    }
                    return Err(RecvError::Gone);
                }
                if let Some(s) = stream {
                    if lock(&self.routing).stash.contains_key(&s) {
                        return Ok(0);
                    }
                }
            }
            let until = deadline.map_or(next_check, |d| d.min(next_check));
            let mut mine = 0;
            let mut popped = 0;
            let mut foreign: Vec<Stashed> = Vec::new();
            let got = self.results.pop_many_with(MAX_BATCH * 2, Some(until), self.config.spin, |bytes| {
                popped += 1;
                let Some(hdr) = FrameHeader::read(bytes) else { return };
                if let Some(r) = usize::try_from(hdr.func - 1).ok().and_then(|w| self.recent.get(w)) {
                    r.record(hdr.stream, hdr.seq);
                }
                if Some(hdr.stream) == stream {
                    mine += 1;
                    let delivered = task::with_body(&self.seg, &hdr, bytes, true, |archive| on(&hdr, archive));
                    if let Err(e) = delivered {
                        // The body was unreadable: deliver the failure, not nothing.
                        self.deliver_error(&hdr, &e, on);
                    }
                } else {
                    foreign.push(stash_copy(hdr, bytes));
                }
            });
            self.land(popped);
            if !foreign.is_empty() {
                let mut routing = lock(&self.routing);
                for item in foreign {
                    self.route(&mut routing, item);
                }
                drop(routing);
                // Their owners may be waiting on the condvar: tell them now.
                self.routed.notify_all();
            }
            match got {
                Ok(_) if mine > 0 || stream.is_none() => return Ok(mine),
                Ok(_) | Err(RingError::Timeout) => {}
                Err(_) => return Err(RecvError::Gone),
            }
        }
    }

    /// Whether `HEALTH_CHECK` has passed since the last supervision; if so,
    /// this caller is the one to run it now.
    fn supervision_due(&self) -> bool {
        let now = process::monotonic_ns();
        let last = self.last_supervised.load(Ordering::Relaxed);
        now.saturating_sub(last) >= HEALTH_CHECK.as_nanos() as u64
            && self.last_supervised.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    fn route(&self, routing: &mut Routing, item: Stashed) {
        let s = item.hdr.stream;
        if let Some(left) = routing.abandoned.get_mut(&s) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                routing.abandoned.remove(&s);
            }
            if item.hdr.body == task::BODY_BLOCK {
                let _ = self.seg.release(item.hdr.block);
            }
            return;
        }
        routing.stash.entry(s).or_default().push_back(item);
    }

    fn deliver_stashed(&self, item: &Stashed, on: &mut dyn FnMut(&FrameHeader, &[u8])) {
        let delivered = if item.hdr.body == task::BODY_INLINE {
            on(&item.hdr, &as_bytes(&item.inline)[..item.hdr.len as usize]);
            Ok(())
        } else {
            task::with_body(&self.seg, &item.hdr, &[], true, |archive| on(&item.hdr, archive))
        };
        if let Err(e) = delivered {
            self.deliver_error(&item.hdr, &e, on);
        }
    }

    fn deliver_error(&self, hdr: &FrameHeader, e: &TaskError, on: &mut dyn FnMut(&FrameHeader, &[u8])) {
        let mut s = codec::Scratch::new();
        let message = e.to_string();
        if let Ok(n) = codec::encode_into(&message, &mut s.0) {
            let h = FrameHeader { status: task::ST_BAD_INPUT, ..*hdr };
            on(&h, &s.0[..n]);
        }
    }

    /// The owner of `stream` will not read its `outstanding` results.
    pub fn abandon(&self, stream: u64, outstanding: u64) {
        let mut routing = lock(&self.routing);
        let mut left = outstanding;
        if let Some(items) = routing.stash.remove(&stream) {
            left = left.saturating_sub(items.len() as u64);
            for item in items {
                if item.hdr.body == task::BODY_BLOCK {
                    let _ = self.seg.release(item.hdr.block);
                }
            }
        }
        if left > 0 {
            routing.abandoned.insert(stream, left);
        }
    }

    /// Puts a result that no worker produced (cancelled, worker died) where
    /// its owner will find it.
    fn synthesize(&self, stream: u64, seq: u64, status: u32, detail: u32) {
        let mut s = codec::Scratch::new();
        let n = codec::encode_into(&detail, &mut s.0).unwrap_or(0);
        let hdr = FrameHeader { stream, seq, status, body: task::BODY_INLINE, len: n as u64, ..Default::default() };
        let mut inline = vec![0u128; n.div_ceil(16)];
        as_bytes_mut(&mut inline)[..n].copy_from_slice(&s.0[..n]);
        let mut routing = lock(&self.routing);
        self.route(&mut routing, Stashed { hdr, inline });
        drop(routing);
        self.routed.notify_all();
    }

    /// Removes every queued task; each owner gets `TaskError::Cancelled`.
    /// Returns how many were removed.
    pub fn clear_tasks(&self) -> usize {
        let mut cleared = Vec::new();
        while let Ok(n) = self.tasks.try_pop_many_recorded(MAX_BATCH, Some(&self.clear_claim), |_, bytes| {
            if let Some(hdr) = FrameHeader::read(bytes) {
                if hdr.body == task::BODY_BLOCK {
                    let _ = self.seg.release(hdr.block);
                }
                cleared.push((hdr.stream, hdr.seq));
            }
        }) {
            self.land(n);
        }
        for &(stream, seq) in &cleared {
            self.synthesize(stream, seq, task::ST_CANCELLED, 0);
        }
        cleared.len()
    }

    /// Reaps dead workers: their held tasks are answered with
    /// `TaskError::WorkerDied` and, unless the pool is closed, a replacement
    /// is started. Returns whether any worker is alive (or being started).
    pub fn supervise(&self) -> bool {
        let mut children = lock(&self.children);
        let mut alive = 0;
        let mut timed_out = vec![false; children.len()];
        if let Some(limit) = self.config.task_timeout {
            let now = process::monotonic_ns();
            for (i, child) in children.iter_mut().enumerate() {
                let Some(c) = child.as_mut() else { continue };
                let Ok(slot) = control::slot(&self.seg, self.layout.control, self.layout.workers, i as u32) else {
                    continue;
                };
                let since = slot.busy_since.load(Ordering::Acquire);
                if since != 0 && now.saturating_sub(since) > limit.as_nanos() as u64 {
                    // Hung: kill it; it is reaped just below. If it moved on
                    // to another task meanwhile, that one is not to blame.
                    let _ = c.kill();
                    let _ = c.wait();
                    timed_out[i] = slot.busy_since.load(Ordering::Acquire) == since;
                }
            }
        }
        for (i, child) in children.iter_mut().enumerate() {
            let Some(c) = child.as_mut() else { continue };
            match c.try_wait() {
                Ok(None) => alive += 1,
                status => {
                    let pid = c.id();
                    *child = None;
                    // A worker that exited on its own before becoming ready
                    // failed to start (its init panicked, say): respawning it
                    // for ever helps nobody. One killed by a signal did not fail.
                    let started = control::slot(&self.seg, self.layout.control, self.layout.workers, i as u32)
                        .is_ok_and(|s| s.state.load(Ordering::Acquire) == W_READY);
                    let killed =
                        matches!(&status, Ok(Some(st)) if std::os::unix::process::ExitStatusExt::signal(st).is_some());
                    if started || killed {
                        self.failed_starts.store(0, Ordering::Relaxed);
                    } else {
                        self.failed_starts.fetch_add(1, Ordering::Relaxed);
                    }
                    self.recover(i as u32, pid, timed_out[i]);
                    // Buffers it held references to may now be free.
                    let _ = self.seg.reclaim_buffers();
                }
            }
        }
        for i in 0..children.len() {
            // Checked under the lock each time: terminate() may have run meanwhile.
            if children[i].is_some() || self.is_closed() || !self.config.respawn {
                continue;
            }
            if self.failed_starts.load(Ordering::Relaxed) >= MAX_FAILED_STARTS {
                break;
            }
            drop(children);
            let respawned = self.spawn_worker(i as u32).is_ok();
            children = lock(&self.children);
            if respawned {
                self.respawns.fetch_add(1, Ordering::Relaxed);
                alive += 1;
            }
        }
        alive > 0 || self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// Deals with what the dead worker `index` (pid `pid`) held: ring slots
    /// it claimed, and its tasks, which are run again or answered according
    /// to the pool's [`OnWorkerDeath`]. `timed_out`: it was killed because
    /// its current task exceeded the task timeout.
    fn recover(&self, index: u32, pid: u32, timed_out: bool) {
        let Ok(slot) = control::slot(&self.seg, self.layout.control, self.layout.workers, index) else { return };
        // Slots a consumer or producer claimed and never finished: the dead
        // worker's, unless a live worker's claim covers them. A live worker
        // between its claim and recording it is given a moment to record.
        // Every claim is recorded before it is made (see
        // `Ring::try_pop_many_recorded`), so a stuck slot no live claim
        // covers is the dead worker's.
        let stuck_results = self.results.unpublished();
        let stuck_tasks = self.tasks.unreleased();
        let live_claims = |field: fn(&control::WorkerSlot) -> &AtomicU64| -> Vec<(u64, u64)> {
            let parent = self.clear_claim.load(Ordering::Acquire);
            (0..self.layout.workers)
                .filter(|&i| i != index)
                .filter_map(|i| control::slot(&self.seg, self.layout.control, self.layout.workers, i).ok())
                .map(|s| field(s).load(Ordering::Acquire))
                .chain(std::iter::once(parent))
                .filter(|&c| c != 0)
                .map(|c| (c >> 8, c & 0xFF))
                .collect()
        };
        let covered = |claims: &[(u64, u64)], pos: u64| claims.iter().any(|&(p, n)| pos >= p && pos < p + n);
        let push_claims = live_claims(|s| &s.push_claim);
        for pos in stuck_results {
            if !covered(&push_claims, pos) {
                self.results.poison_unpublished(pos);
            }
        }
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let pop_claims = live_claims(|s| &s.pop_claim);
        for pos in stuck_tasks {
            if !covered(&pop_claims, pos) {
                self.tasks.steal_unreleased(pos, |bytes| frames.push(bytes.to_vec()));
            }
        }
        // The frames it had taken, from its held area in the segment. The
        // stride is ours to know, not the segment's to say.
        let n = (slot.held_n.swap(0, Ordering::Acquire) as usize).min(MAX_BATCH);
        let area = slot.held_frames.load(Ordering::Acquire);
        let stride = (self.tasks.payload_capacity().div_ceil(16) * 16) as u64;
        // Results it published: in the ring still, or received already.
        let mut answered: std::collections::HashSet<(u64, u64)> = std::collections::HashSet::new();
        self.results.peek_all(|bytes| {
            if let Some(h) = FrameHeader::read(bytes) {
                if h.func == index as i64 + 1 {
                    answered.insert((h.stream, h.seq));
                }
            }
        });
        let recent = self.recent.get(index as usize);
        let busy = timed_out.then(|| slot.busy_index.load(Ordering::Acquire) as usize);
        let mut busy_task = None;
        for k in 0..n {
            let Ok(p) = self.seg.ptr(area + k as u64 * stride, stride) else { continue };
            // SAFETY: the dead worker's held area, in bounds (checked); its
            // writer is gone, so nothing changes it while we copy.
            let bytes = unsafe { std::slice::from_raw_parts(p, stride as usize) };
            if let Some(h) = FrameHeader::read(bytes) {
                if answered.contains(&(h.stream, h.seq)) || recent.is_some_and(|r| r.contains(h.stream, h.seq)) {
                    // Answered before it died: neither run again nor answered twice.
                    continue;
                }
                if busy == Some(k) {
                    busy_task = Some((h.stream, h.seq));
                }
                frames.push(bytes.to_vec());
            }
        }
        if area != 0 {
            let _ = self.seg.release(area);
        }
        let mut seen = std::collections::HashSet::new();
        for bytes in frames {
            let Some(mut h) = FrameHeader::read(&bytes) else { continue };
            if !seen.insert((h.stream, h.seq)) {
                continue;
            }
            let attempts = h.status + 1;
            let requeue = match self.config.on_death {
                OnWorkerDeath::Requeue { max_attempts } => attempts < max_attempts,
                OnWorkerDeath::Report => false,
            };
            if busy_task == Some((h.stream, h.seq)) {
                self.land(1);
                discard_body(&self.seg, &h);
                self.synthesize(h.stream, h.seq, task::ST_TIMED_OUT, pid);
            } else if requeue && !self.is_closed() && fits(&h, &bytes, &self.tasks) {
                h.status = attempts;
                let inline =
                    if h.body == task::BODY_INLINE { &bytes[HEADER..HEADER + h.len as usize] } else { &[][..] };
                // Never wait here (the children lock is held): the task stays
                // in flight, so the ring has room for it unless it is corrupt.
                match self.tasks.try_push_many(1, |_, dst| h.write(dst, inline)) {
                    Ok(_) => {
                        self.requeued.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        self.land(1);
                        discard_body(&self.seg, &h);
                        self.synthesize(h.stream, h.seq, task::ST_WORKER_DIED, pid);
                    }
                }
            } else {
                self.land(1);
                discard_body(&self.seg, &h);
                self.synthesize(h.stream, h.seq, task::ST_WORKER_DIED, pid);
            }
        }
    }

    /// Workers currently running.
    pub fn alive_workers(&self) -> usize {
        let mut children = lock(&self.children);
        children.iter_mut().flatten().map(|c| c.try_wait()).filter(|s| matches!(s, Ok(None))).count()
    }

    /// Stops accepting tasks; workers finish the queue and exit.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.tasks.close();
    }

    /// Waits until every worker has exited, up to `timeout` (then kills them).
    pub fn join(&self, timeout: Option<Duration>) {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            // Poll under the lock, wait without it: terminate(), is_alive()
            // and waiters' supervision must not block behind a long join.
            let mut children = lock(&self.children);
            for child in children.iter_mut() {
                if child.as_mut().is_some_and(|c| !matches!(c.try_wait(), Ok(None))) {
                    *child = None;
                }
            }
            if children.iter().all(Option::is_none) {
                return;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                for child in children.iter_mut() {
                    if let Some(c) = child.as_mut() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    *child = None;
                }
                return;
            }
            drop(children);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills every worker at once and reaps it.
    pub fn terminate(&self) {
        self.close();
        let mut children = lock(&self.children);
        for child in children.iter_mut() {
            if let Some(c) = child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            *child = None;
        }
    }

    /// Pids of the running workers (dead ones not yet reaped left out).
    pub fn worker_pids(&self) -> Vec<u32> {
        lock(&self.children).iter().flatten().map(|c| c.id()).filter(|&p| process::is_alive(p)).collect()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.clear_tasks();
        self.tasks.close();
        self.join(Some(self.config.shutdown_timeout));
        // Last: what the workers logged before exiting is re-emitted first.
        drop(lock(&self.logs).take());
    }
}

/// The last results received from one worker (a small ring of ids).
struct Recent {
    next: AtomicUsize,
    ids: [AtomicU64; 2 * RECENT],
}

/// Results remembered per worker: more than a batch.
const RECENT: usize = 2 * MAX_BATCH;

impl Default for Recent {
    fn default() -> Self {
        Recent { next: AtomicUsize::new(0), ids: std::array::from_fn(|_| AtomicU64::new(u64::MAX)) }
    }
}

impl Recent {
    fn record(&self, stream: u64, seq: u64) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % RECENT;
        self.ids[2 * i].store(stream, Ordering::Relaxed);
        self.ids[2 * i + 1].store(seq, Ordering::Relaxed);
    }

    fn contains(&self, stream: u64, seq: u64) -> bool {
        (0..RECENT).any(|i| {
            self.ids[2 * i].load(Ordering::Relaxed) == stream && self.ids[2 * i + 1].load(Ordering::Relaxed) == seq
        })
    }
}

/// Whether an inline frame copy is whole and fits a task slot again.
fn fits(h: &FrameHeader, bytes: &[u8], tasks: &Ring) -> bool {
    let len = HEADER as u64 + h.len;
    h.body != task::BODY_INLINE || (len <= bytes.len() as u64 && len <= tasks.payload_capacity() as u64)
}

/// Frees the arena block of a task that will not run again.
fn discard_body(seg: &Segment, h: &FrameHeader) {
    if h.body == task::BODY_BLOCK {
        let _ = seg.release(h.block);
    }
}

/// Ends a drain: clears the flag and wakes the other waiters, also on unwind.
struct Draining<'a>(&'a Inner);

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        lock(&self.0.routing).draining = false;
        self.0.routed.notify_all();
    }
}

/// Gives back reservations that were not turned into pushed tasks, also when
/// user code (an input iterator, a `Serialize` impl) panics in between.
pub(crate) struct Reservation<'a> {
    inner: &'a Inner,
    /// Reservations still held.
    pub left: usize,
}

impl<'a> Reservation<'a> {
    pub fn new(inner: &'a Inner, n: usize) -> Self {
        Reservation { inner, left: n }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.inner.unreserve(self.left);
    }
}

fn stash_copy(hdr: FrameHeader, bytes: &[u8]) -> Stashed {
    let mut inline = Vec::new();
    if hdr.body == task::BODY_INLINE {
        let len = (hdr.len as usize).min(bytes.len().saturating_sub(HEADER));
        inline = vec![0u128; len.div_ceil(16)];
        as_bytes_mut(&mut inline)[..len].copy_from_slice(&bytes[HEADER..HEADER + len]);
        return Stashed { hdr: FrameHeader { len: len as u64, ..hdr }, inline };
    }
    Stashed { hdr, inline }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn as_bytes(v: &[u128]) -> &[u8] {
    // SAFETY: u128 has no padding and every byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * 16) }
}

pub(crate) fn as_bytes_mut(v: &mut [u128]) -> &mut [u8] {
    // SAFETY: as above; the mutable borrow of `v` is carried over.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 16) }
}
