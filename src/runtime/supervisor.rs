//! Supervision: starting workers, reaping dead ones, running or answering
//! what they held, killing hung ones.

use std::process::Child;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::bootstrap::{self, WorkerConfig};
use super::control::{self, MAX_BATCH, W_BUILD_MISMATCH, W_INIT_FAILED, W_READY, W_RETIRING};
use super::lock;
use super::workers::{OnWorkerDeath, Workers, MAX_FAILED_STARTS, START_TIMEOUT};
use crate::codec;
use crate::ring::Ring;
use crate::sys::process;
use crate::wait::{self, Deadline, Step};
use crate::wire::{self, FrameHeader, Status, HEADER};
use crate::Error;

/// How often a start-up looks at a worker's state.
const START_POLL: Duration = Duration::from_micros(200);
/// How long a supervision waits for a retiring worker (it has posted or is
/// posting its last answer) to exit, so as to replace it at once; one that
/// takes longer is replaced by a later supervision.
const RETIRE_WAIT: Duration = Duration::from_millis(50);
/// How often that wait looks.
const RETIRE_POLL: Duration = Duration::from_micros(50);

impl Workers {
    /// Starts the worker process for slot `index` (the caller stores it).
    pub(super) fn spawn_worker(&self, index: u32) -> Result<Child, Error> {
        let slot = control::slot(&self.seg, self.layout.control, self.layout.workers, index)?;
        control::reset(slot);
        let cfg = WorkerConfig {
            fd: self.seg.raw_fd(),
            control: self.layout.control,
            index,
            parent: process::current_pid(),
            key: self.key,
        };
        process::spawn_self(&[(bootstrap::ENV, cfg.encode())], self.seg.raw_fd()).map_err(Error::Spawn)
    }

    /// Waits until every worker reports ready; a failed init, a worker of
    /// another build, or one that exits or does not start in time is an error.
    pub(super) fn await_ready(&self) -> Result<(), Error> {
        let deadline = Deadline::after(START_TIMEOUT);
        for i in 0..self.layout.workers {
            let slot = control::slot(&self.seg, self.layout.control, self.layout.workers, i)?;
            let ready = wait::in_slices(
                deadline,
                START_POLL,
                |until| match slot.state.load(Ordering::Acquire) {
                    W_READY => Step::Done(Ok(())),
                    W_INIT_FAILED => Step::Done(Err(self.init_failure(slot))),
                    W_BUILD_MISMATCH => Step::Done(Err(Error::BuildMismatch {
                        expected: self.layout.build_id,
                        found: slot.build_id.load(Ordering::Relaxed),
                    })),
                    _ => {
                        std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
                        Step::Again
                    }
                },
                || match lock(&self.children)[i as usize].as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => {
                        Err(Error::Spawn(std::io::Error::other(format!("worker exited during start-up ({status})"))))
                    }
                    _ => Ok(()),
                },
            );
            match ready {
                Ok(r) => r?,
                Err(wait::Waited::Peer(e)) => {
                    // It may have said why just before it exited.
                    return match slot.state.load(Ordering::Acquire) {
                        W_INIT_FAILED => Err(self.init_failure(slot)),
                        W_BUILD_MISMATCH => Err(Error::BuildMismatch {
                            expected: self.layout.build_id,
                            found: slot.build_id.load(Ordering::Relaxed),
                        }),
                        _ => Err(e),
                    };
                }
                Err(wait::Waited::TimedOut) => {
                    return Err(Error::Spawn(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "worker did not start in time",
                    )))
                }
            }
        }
        Ok(())
    }

    /// The message a worker whose init failed left in its slot.
    fn init_failure(&self, slot: &control::WorkerSlot) -> Error {
        let hdr = FrameHeader {
            body: wire::BODY_BLOCK,
            block: slot.error_block.load(Ordering::Relaxed),
            len: slot.error_len.load(Ordering::Relaxed),
            ..Default::default()
        };
        let message = wire::with_body(&self.seg, &hdr, &[], true, codec::decode::<String>)
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| "worker init failed".into());
        Error::WorkerInit { message }
    }

    /// Reaps dead workers (dealing with what they held), kills hung ones,
    /// and, unless the pool is closed, starts replacements: one process per
    /// slot even when several threads supervise at once (a slot being
    /// respawned is marked under the children lock while its process starts).
    /// Returns whether any worker is alive (or being started).
    pub fn supervise(&self) -> bool {
        let mut children = lock(&self.children);
        let mut alive = 0;
        let mut timed_out = vec![false; children.len()];
        // Retired workers whose slot is started again even in a closed
        // pool, because tasks are still queued for it to run.
        let mut finish_queue = vec![false; children.len()];
        let slot_state = |i: usize| {
            control::slot(&self.seg, self.layout.control, self.layout.workers, i as u32)
                .map_or(W_READY, |s| s.state.load(Ordering::Acquire))
        };
        for (i, child) in children.iter_mut().enumerate() {
            let Some(c) = child.as_mut() else { continue };
            if slot_state(i) == W_RETIRING {
                // It is exiting: wait a moment, so it is replaced now.
                let _ = wait::in_slices(
                    Deadline::after(RETIRE_WAIT),
                    RETIRE_POLL,
                    |until| match c.try_wait() {
                        Ok(None) => {
                            std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
                            Step::Again
                        }
                        _ => Step::Done(()),
                    },
                    || Ok::<(), ()>(()),
                );
            }
        }
        if let Some(limit) = self.config.task_timeout {
            let now = process::monotonic_ns();
            for (i, child) in children.iter_mut().enumerate() {
                let Some(c) = child.as_mut() else { continue };
                let Ok(slot) = control::slot(&self.seg, self.layout.control, self.layout.workers, i as u32) else {
                    continue;
                };
                let since = slot.busy_since.load(Ordering::Acquire);
                // A limit too long for u64 nanoseconds (Duration::MAX) is none.
                let limit_ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
                if since != 0 && now.saturating_sub(since) > limit_ns {
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
                    let state = slot_state(i);
                    let started = state == W_READY || state == W_RETIRING;
                    // Ran its quota and exited cleanly: replaced, also to
                    // finish the queue of a closed pool.
                    let retired = state == W_RETIRING && matches!(&status, Ok(Some(st)) if st.success());
                    finish_queue[i] = retired && !self.tasks.is_empty();
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
            // Another supervisor is starting this slot's process: it counts.
            if self.respawning[i].load(Ordering::Relaxed) {
                alive += 1;
                continue;
            }
            // Checked under the lock each time: terminate() may have run meanwhile.
            let terminated = self.terminated.load(Ordering::Acquire);
            if children[i].is_some() || !self.config.respawn || terminated || (self.is_closed() && !finish_queue[i]) {
                continue;
            }
            if self.failed_starts.load(Ordering::Relaxed) >= MAX_FAILED_STARTS {
                break;
            }
            // Marked under the lock, so no other supervisor starts it too.
            self.respawning[i].store(true, Ordering::Relaxed);
            drop(children);
            let spawned = self.spawn_worker(i as u32);
            children = lock(&self.children);
            self.respawning[i].store(false, Ordering::Relaxed);
            match spawned {
                // terminate() ran meanwhile: what was started goes too.
                Ok(mut child) if self.terminated.load(Ordering::Acquire) || (self.is_closed() && !finish_queue[i]) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Ok(child) => {
                    children[i] = Some(child);
                    self.respawns.fetch_add(1, Ordering::Relaxed);
                    alive += 1;
                }
                Err(_) => {}
            }
        }
        let none_left =
            children.iter().all(Option::is_none) && !self.respawning.iter().any(|r| r.load(Ordering::Relaxed));
        // (A retired worker replaced to finish a closed pool's queue is
        // running, so `none_left` is false then.)
        // Remote members answer too; an open pool that listens may still
        // get some.
        let remote = self.remote_members.load(Ordering::Acquire) > 0 || (self.config.remote && !self.is_closed());
        let none_to_come = !remote
            && (self.is_closed()
                || !self.config.respawn
                || self.failed_starts.load(Ordering::Relaxed) >= MAX_FAILED_STARTS);
        drop(children);
        if none_left && none_to_come {
            // No worker will ever answer again: every waiter learns it at
            // once (results already out are still delivered first).
            self.end_results();
        }
        alive > 0 || remote || self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// Deals with what the dead worker `index` (pid `pid`) held: ring slots
    /// it claimed, and its tasks, which are run again or answered according
    /// to the pool's [`OnWorkerDeath`]. `timed_out`: it was killed because
    /// its current task exceeded the task timeout.
    pub(super) fn recover(&self, index: u32, pid: u32, timed_out: bool) {
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
        // Tasks whose answer it published (their argument blocks may be
        // freed already): never run again, whatever has been received.
        let answered_bits = slot.answered.swap(0, Ordering::Acquire);
        let busy = timed_out.then(|| slot.busy_index.load(Ordering::Acquire) as usize);
        let mut busy_task = None;
        for k in 0..n {
            let Ok(p) = self.seg.ptr(area + k as u64 * stride, stride) else { continue };
            // SAFETY: the dead worker's held area, in bounds (checked); its
            // writer is gone, so nothing changes it while we copy.
            let bytes = unsafe { std::slice::from_raw_parts(p, stride as usize) };
            if let Some(h) = FrameHeader::read(bytes) {
                let marked = k < 32 && answered_bits & (1 << k) != 0;
                if marked
                    || answered.contains(&(h.stream, h.seq))
                    || recent.is_some_and(|r| r.contains(h.stream, h.seq))
                {
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
            let attempts = h.status.saturating_add(1);
            let requeue = match self.config.on_death {
                OnWorkerDeath::Requeue { max_attempts } => attempts < max_attempts,
                OnWorkerDeath::Report => false,
            };
            if busy_task == Some((h.stream, h.seq)) {
                self.land(1);
                wire::discard(&self.seg, &h);
                self.synthesize(h.stream, h.seq, Status::TimedOut, pid);
            } else if requeue && !self.is_closed() && fits(&h, &bytes, &self.tasks) {
                h.status = attempts;
                // `fits` checked that the inline length is within `bytes`.
                let inline = if h.body == wire::BODY_INLINE { &bytes[HEADER..inline_end(&h)] } else { &[][..] };
                // Never wait here (the children lock is held): the task stays
                // in flight, so the ring has room for it unless it is corrupt.
                match self.tasks.try_push_many(1, |_, dst| h.write(dst, inline)) {
                    Ok(_) => {
                        self.requeued.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        self.land(1);
                        wire::discard(&self.seg, &h);
                        self.synthesize(h.stream, h.seq, Status::WorkerDied, pid);
                    }
                }
            } else {
                self.land(1);
                wire::discard(&self.seg, &h);
                self.synthesize(h.stream, h.seq, Status::WorkerDied, pid);
            }
        }
    }
}

/// The last results received from one worker (a small ring of ids).
pub(super) struct Recent {
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
    pub(super) fn record(&self, stream: u64, seq: u64) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % RECENT;
        self.ids[2 * i].store(stream, Ordering::Relaxed);
        self.ids[2 * i + 1].store(seq, Ordering::Relaxed);
    }

    pub(super) fn contains(&self, stream: u64, seq: u64) -> bool {
        (0..RECENT).any(|i| {
            self.ids[2 * i].load(Ordering::Relaxed) == stream && self.ids[2 * i + 1].load(Ordering::Relaxed) == seq
        })
    }
}

/// Whether an inline frame copy is whole and fits a task slot again.
/// (Its header comes from shared memory: every length is checked.)
fn fits(h: &FrameHeader, bytes: &[u8], tasks: &Ring) -> bool {
    let len = (HEADER as u64).checked_add(h.len);
    h.body != wire::BODY_INLINE
        || len.is_some_and(|len| len <= bytes.len() as u64 && len <= tasks.payload_capacity() as u64)
}

/// Where a frame's inline archive ends (only for frames `fits` accepted).
fn inline_end(h: &FrameHeader) -> usize {
    HEADER + h.len as usize
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::runtime::Config;

    // Finding 10: supervisors that found the same dead worker each started a
    // replacement for its slot (the children lock is dropped around the
    // spawn), leaving a process nobody tracks.
    #[test]
    fn concurrent_supervisors_start_one_replacement_per_dead_worker() {
        let config = Config { workers: 1, segment_size: 8 << 20, ..Config::default() };
        let w = Workers::start::<()>(config, None).unwrap();
        {
            let mut children = lock(&w.children);
            let c = children[0].as_mut().unwrap();
            c.kill().unwrap();
            c.wait().unwrap();
        }
        const THREADS: usize = 8;
        let barrier = Arc::new(Barrier::new(THREADS));
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                let barrier = Arc::clone(&barrier);
                let w = &w;
                s.spawn(move || {
                    barrier.wait();
                    w.supervise();
                });
            }
        });
        assert_eq!(w.respawns.load(Ordering::Relaxed), 1);
        assert_eq!(w.worker_pids().len(), 1);
    }

    #[test]
    fn a_worker_that_refused_another_build_is_a_typed_start_failure() {
        let config = Config { workers: 1, segment_size: 8 << 20, ..Config::default() };
        let w = Workers::start::<()>(config, None).unwrap();
        // What a worker of another build leaves in its slot (see the executor).
        let slot = control::slot(&w.seg, w.layout.control, w.layout.workers, 0).unwrap();
        slot.build_id.store(w.layout.build_id ^ 1, Ordering::Relaxed);
        slot.state.store(W_BUILD_MISMATCH, Ordering::Release);
        match w.await_ready() {
            Err(Error::BuildMismatch { expected, found }) => {
                assert_eq!((expected, found), (crate::build_id(), crate::build_id() ^ 1));
            }
            other => panic!("expected BuildMismatch, got {other:?}"),
        }
    }

    /// A group of one worker, SIGKILLed (and reaped) before any task: its
    /// slot is what the tests below fill in as a dead worker would have.
    fn dead_worker() -> (Arc<Workers>, u32) {
        let config = Config { workers: 1, segment_size: 8 << 20, respawn: false, ..Config::default() };
        let w = Workers::start::<()>(config, None).unwrap();
        let pid = {
            let mut children = lock(&w.children);
            let c = children[0].as_mut().unwrap();
            c.kill().unwrap();
            c.wait().unwrap();
            c.id()
        };
        (w, pid)
    }

    /// Writes `hdr` as held task `k` of the dead worker 0.
    fn hold(w: &Workers, k: u64, hdr: &FrameHeader) {
        let slot = control::slot(&w.seg, w.layout.control, w.layout.workers, 0).unwrap();
        let stride = (w.tasks.payload_capacity().div_ceil(16) * 16) as u64;
        let p = w.seg.ptr(slot.held_frames.load(Ordering::Acquire) + k * stride, stride).unwrap();
        // SAFETY: the dead worker's own held area, in bounds (checked);
        // nothing else touches it.
        hdr.write(unsafe { std::slice::from_raw_parts_mut(p, stride as usize) }, &[]);
    }

    // Review finding: a dead worker's task whose answer it had published
    // (and whose argument block it had freed) was run again when the
    // parent had not yet recorded that answer: the requeued frame named a
    // block that may already belong to someone else.
    #[test]
    fn a_dead_workers_answered_tasks_are_not_run_again() {
        let (w, pid) = dead_worker();
        // What the worker left: two held tasks, the first answered (its
        // block freed), the second not (its block still its own).
        let slot = control::slot(&w.seg, w.layout.control, w.layout.workers, 0).unwrap();
        let freed = w.seg.alloc(100).unwrap().offset;
        w.seg.release(freed).unwrap();
        let live = w.seg.alloc(100).unwrap().offset;
        for (k, block) in [(0u64, freed), (1, live)] {
            let hdr = FrameHeader { stream: 7, seq: k, body: wire::BODY_BLOCK, len: 8, block, ..Default::default() };
            hold(&w, k, &hdr);
        }
        slot.held_n.store(2, Ordering::Relaxed);
        slot.answered.store(0b01, Ordering::Release);
        w.in_flight.store(1, Ordering::Relaxed);
        w.recover(0, pid, false);
        // Only the unanswered task is requeued.
        assert_eq!(w.requeued.load(Ordering::Relaxed), 1);
        let mut requeued = Vec::new();
        while w.tasks.try_pop_many(8, |b| requeued.push(FrameHeader::read(b).unwrap())).is_ok() {}
        assert_eq!(requeued.iter().map(|h| (h.seq, h.block)).collect::<Vec<_>>(), [(1, live)]);
    }

    // Review finding: a hostile inline length in a dead worker's held area
    // overflowed `HEADER + len` and panicked the parent's supervisor.
    #[test]
    fn a_hostile_held_frame_is_answered_not_a_panic() {
        let (w, pid) = dead_worker();
        let slot = control::slot(&w.seg, w.layout.control, w.layout.workers, 0).unwrap();
        let stream = w.new_stream();
        let hdr =
            FrameHeader { stream, seq: 0, body: wire::BODY_INLINE, len: u64::MAX - 8, status: 0, ..Default::default() };
        hold(&w, 0, &hdr);
        slot.held_n.store(1, Ordering::Release);
        w.in_flight.store(1, Ordering::Relaxed);
        w.recover(0, pid, false);
        assert_eq!(w.requeued.load(Ordering::Relaxed), 0);
        let mut got = None;
        w.recv(Some(stream), crate::wait::Deadline::after(std::time::Duration::from_secs(5)), &mut |h, b| {
            got = Some(wire::decode_result::<()>(h.status, b))
        })
        .unwrap();
        assert!(matches!(got, Some(Err(crate::TaskError::WorkerDied { .. }))), "{got:?}");
    }
}
