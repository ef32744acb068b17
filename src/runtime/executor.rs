//! The loop a worker process runs: take a batch of tasks, run each through
//! its trampoline under `catch_unwind`, answer the batch.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::bootstrap::WorkerConfig;
use super::calls::{self, CallContext};
use super::code;
use super::control::{self, MAX_BATCH, W_BUILD_MISMATCH, W_INIT_FAILED, W_READY, W_RETIRING};
use super::tramp::{InitTrampoline, Reply, Trampoline, WorkerState};
use crate::codec::Scratch;
use crate::ring::{Ring, RingError};
use crate::segment::Segment;
use crate::sync::SpinPolicy;
use crate::sys::process;
use crate::wait::{self, Deadline};
use crate::wire::{self, Body, FrameHeader, Status};
use crate::Error;

/// How long an idle worker sleeps before checking that its parent lives.
const PARENT_CHECK: Duration = Duration::from_millis(250);

/// The segment of the pool this process works for (set once, at start).
static POOL_SEGMENT: std::sync::OnceLock<Segment> = std::sync::OnceLock::new();

/// In a worker process, the segment of the pool it works for: shared
/// containers created in [`crate::Pool::segment`] by the parent can be
/// opened from it by name. `None` outside workers.
pub fn pool_segment() -> Option<Segment> {
    POOL_SEGMENT.get().cloned()
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs the worker described by `cfg` until its task ring closes or its
/// parent dies.
pub(crate) fn run(cfg: &WorkerConfig) -> Result<(), Error> {
    let seg = Segment::from_inherited_fd(cfg.fd)?;
    let (layout, init) = control::open(&seg, cfg.control)?;
    let slot = control::slot(&seg, cfg.control, layout.workers, cfg.index)?;
    // Another build's code offsets (the init record's, every task's) would
    // name other code here: refuse before any is used, and say so.
    if let Err(ours) = control::check_build(&layout) {
        slot.build_id.store(ours, Ordering::Relaxed);
        slot.pid.store(process::current_pid(), Ordering::Relaxed);
        slot.state.store(W_BUILD_MISMATCH, Ordering::Release);
        return Err(Error::BuildMismatch { expected: layout.build_id, found: ours });
    }
    let tasks = Ring::open(&seg, layout.task_ring)?;
    let results = Ring::open(&seg, layout.result_ring)?;
    let signals = control::signals(&seg, cfg.control)?;
    slot.pid.store(process::current_pid(), Ordering::Relaxed);
    let _ = POOL_SEGMENT.set(seg.clone());
    // A pool without a call ring (an old control block) just has no calls:
    // parent_call then says it is not in a worker.
    if let (Ok(call_ring), Ok(replies)) =
        (Ring::open(&seg, layout.call_ring), Ring::open(&seg, slot.reply_ring.load(Ordering::Acquire)))
    {
        calls::install(CallContext {
            seg: seg.clone(),
            calls: call_ring,
            replies,
            control: cfg.control,
            index: cfg.index,
            parent: cfg.parent,
            key: cfg.key,
            next: std::sync::atomic::AtomicU64::new(0),
            one_at_a_time: std::sync::Mutex::new(()),
        });
    }
    super::logs::install_forwarder(&seg, layout.log_ring, layout.log_dropped, layout.log_level);
    install_panic_hook();

    let mut state: WorkerState = None;
    if let Some(init) = init {
        match build_state(&seg, &init, cfg.key) {
            Ok(s) => state = Some(s),
            Err(message) => {
                if let Ok(Body::Block { offset, len }) = wire::encode_block(&seg, &message) {
                    slot.error_block.store(offset, Ordering::Relaxed);
                    slot.error_len.store(len, Ordering::Relaxed);
                }
                slot.state.store(W_INIT_FAILED, Ordering::Release);
                return Ok(());
            }
        }
    }
    slot.state.store(W_READY, Ordering::Release);

    let stride = tasks.payload_capacity().div_ceil(16) * 16;
    // The frames taken from the ring live in the segment, not in this
    // process: if it dies, the parent can run them again from there.
    let held_area = seg.alloc((MAX_BATCH * stride) as u64)?;
    let held_ptr = seg.ptr(held_area.offset, (MAX_BATCH * stride) as u64)?;
    slot.frame_stride.store(stride as u64, Ordering::Relaxed);
    slot.held_frames.store(held_area.offset, Ordering::Release);
    let mut lens = [0usize; MAX_BATCH];
    let mut scratch = Scratch::new();
    // The parent's choice: spin this long before sleeping (0: never spin).
    let spin = spin_of(layout.spin_ns);
    // A full result ring waits as the pool waits, but a busy-polling pool's
    // worker spins only for a result slot when it is not polling for tasks.
    let push_spin = if spin.busy_poll { SpinPolicy::BUSY_POLL } else { SpinPolicy::DEFAULT };
    let answerer = cfg.index as i64 + 1;
    // `max_tasks_per_worker`: this process runs at most `quota` tasks, then
    // retires (0: no limit).
    let quota = layout.max_tasks;
    let mut ran: u64 = 0;
    let parent_alive = || -> Result<(), ()> {
        if process::parent_pid() == cfg.parent {
            Ok(())
        } else {
            Err(())
        }
    };

    loop {
        slot.heartbeat.store(process::monotonic_ns(), Ordering::Relaxed);
        let mut n = 0;
        // Take a fair share of what is queued, so one worker does not hoard
        // slow tasks while others idle; a lone worker takes whole batches.
        let mut share = (tasks.len() / layout.workers as usize).clamp(1, MAX_BATCH);
        if quota != 0 {
            // Never take a task this process will not run: what it takes
            // beyond its quota would wait for its death to be run again.
            share = share.min(usize::try_from(quota - ran).unwrap_or(usize::MAX)).max(1);
        }
        // No held task yet, so no stale bit can be read for a new one.
        slot.answered.store(0, Ordering::Relaxed);
        let got = wait::ring_in_slices(
            Deadline::NEVER,
            PARENT_CHECK,
            |until| {
                tasks.pop_many_recorded(share, Some(until), spin, Some(&slot.pop_claim), |_, bytes| {
                    let len = bytes.len().min(stride);
                    // SAFETY: the held area is this worker's own block
                    // (allocated above), `n < MAX_BATCH` frames of `stride`
                    // bytes each; the parent reads it only after this process died.
                    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), held_ptr.add(n * stride), len) };
                    lens[n] = len;
                    if let Some(h) = FrameHeader::read(bytes) {
                        slot.held[2 * n].store(h.stream, Ordering::Relaxed);
                        slot.held[2 * n + 1].store(h.seq, Ordering::Relaxed);
                    }
                    slot.held_n.store(n as u32 + 1, Ordering::Release);
                    n += 1;
                })
            },
            parent_alive,
        );
        match got {
            Ok(Ok(_)) => {}
            Ok(Err(RingError::Closed)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
        }
        for (i, &len) in lens.iter().enumerate().take(n) {
            // SAFETY: frame `i` was written above into this worker's held area.
            let frame = unsafe { std::slice::from_raw_parts(held_ptr.add(i * stride), len) };
            let mut reply = Reply::new(&seg, &mut scratch, results.payload_capacity());
            slot.busy_index.store(i as u32, Ordering::Relaxed);
            let started = process::monotonic_ns();
            slot.busy_since.store(started, Ordering::Release);
            let hdr = run_one(&seg, frame, cfg.key, &mut state, &mut reply);
            slot.busy_since.store(0, Ordering::Release);
            // `func` names the answering worker: the parent tells answered
            // tasks from unanswered ones if this worker dies.
            let out = reply.header(&hdr, answerer);
            ran += 1;
            if quota != 0 && ran >= quota && i + 1 == n {
                // The last answer: say so first, so that the waiter it wakes
                // replaces this worker at once (see `Workers::retire_due`).
                slot.state.store(W_RETIRING, Ordering::Release);
                // SYNC: Release, before the answer's push; the parent pops
                // the answer (Acquire) and then loads this counter.
                signals.retiring.fetch_add(1, Ordering::Release);
            }
            // Each answer goes out as soon as its task ends: a later task of
            // the batch may wait on what the caller does with this one.
            // A free slot is taken at once (no clock read); waiting for one
            // is the sliced wait.
            let write = |_: usize, dst: &mut [u8]| out.write(dst, reply.inline());
            let pushed = match results.try_push_many_recorded(1, Some(&slot.push_claim), write) {
                Err(RingError::WouldBlock) => wait::ring_in_slices(
                    Deadline::NEVER,
                    PARENT_CHECK,
                    |until| results.push_many_recorded(1, Some(until), push_spin, Some(&slot.push_claim), write),
                    parent_alive,
                ),
                other => Ok(other),
            };
            match pushed {
                Ok(Ok(_)) => {}
                Ok(Err(RingError::Closed)) | Err(_) => return Ok(()),
                Ok(Err(e)) => return Err(e.into()),
            }
            // The argument's block was kept until the answer was out: until
            // then a requeue may have needed it. Marked answered first, so a
            // parent recovering this worker never runs it again from a
            // block that is freed.
            // This worker is the word's only writer: no read-modify-write.
            let answered = slot.answered.load(Ordering::Relaxed) | 1 << i;
            slot.answered.store(answered, Ordering::Release);
            wire::discard(&seg, &hdr);
            // One writer (this worker) here too: no read-modify-write.
            slot.done.store(slot.done.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        slot.held_n.store(0, Ordering::Release);
        if quota != 0 && ran >= quota {
            // Every task taken was answered: exit cleanly, to be replaced.
            return Ok(());
        }
    }
}

/// The control block's `spin_ns` meaning busy-poll: no spin time is this long.
const BUSY_POLL_CODE: u64 = u64::MAX;

/// How a pool's wait policy travels to its workers in the control block's
/// `spin_ns`: the spin time in nanoseconds, or [`BUSY_POLL_CODE`].
pub(crate) fn spin_code(policy: SpinPolicy) -> u64 {
    if policy.busy_poll {
        BUSY_POLL_CODE
    } else {
        policy.spin.as_nanos().min((BUSY_POLL_CODE - 1) as u128) as u64
    }
}

/// The policy [`spin_code`] wrote.
pub(crate) fn spin_of(code: u64) -> SpinPolicy {
    if code == BUSY_POLL_CODE {
        SpinPolicy::BUSY_POLL
    } else {
        SpinPolicy::spin_for(Duration::from_nanos(code))
    }
}

/// Runs one task frame, leaving its answer in `reply`; returns its header.
pub(crate) fn run_one(
    seg: &Segment,
    frame: &[u8],
    key: u64,
    state: &mut WorkerState,
    reply: &mut Reply<'_>,
) -> FrameHeader {
    run_sealed(code::SealKind::Task, seg, frame, key, state, reply)
}

/// Runs one frame sealed as `kind` (a task, or a worker's call to its
/// parent), leaving its answer in `reply`; returns its header.
pub(crate) fn run_sealed(
    kind: code::SealKind,
    seg: &Segment,
    frame: &[u8],
    key: u64,
    state: &mut WorkerState,
    reply: &mut Reply<'_>,
) -> FrameHeader {
    let Some(hdr) = FrameHeader::read(frame) else {
        reply.fail(Status::BadInput, "frame shorter than its header");
        return FrameHeader::default();
    };
    if code::seal(kind, hdr.func, hdr.tramp, key) != hdr.check {
        reply.fail(Status::BadInput, "seal mismatch: not a task or call of this pool");
        // The frame is not ours: its body names no block we may free.
        return FrameHeader { body: wire::BODY_NONE, len: 0, block: 0, ..hdr };
    }
    // SAFETY: the seal proves the pair was made by a holder of `key` from a
    // real trampoline of a binary of this build (segments carrying code
    // offsets record the build id, checked before any frame is run). For a
    // pool the only holder is our parent (the key never enters the
    // segment); for a service, any process allowed to map its segment —
    // trusted as a local socket's peer would be, as the service docs say.
    let tramp = unsafe { std::mem::transmute::<usize, Trampoline>(code::code_address(hdr.tramp)) };
    let func = code::code_address(hdr.func);
    let ran = wire::with_body(seg, &hdr, frame, false, |arg| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: sealed pair (above): `func` has the type `tramp` expects.
            unsafe { tramp(func, state, arg, reply) }
        }))
    });
    match ran {
        Ok(Ok(())) => {}
        Ok(Err(payload)) => {
            let message = take_panic_message(&*payload);
            reply.body.discard(seg);
            reply.fail(Status::Panicked, &message);
        }
        Err(e) => reply.fail(Status::BadInput, &e.to_string()),
    }
    hdr
}

fn build_state(seg: &Segment, init: &FrameHeader, key: u64) -> Result<Box<dyn std::any::Any>, String> {
    if code::seal(code::SealKind::Init, init.func, init.tramp, key) != init.check {
        return Err("worker init seal mismatch".into());
    }
    // SAFETY: sealed by our parent: the offset names an InitTrampoline of this binary.
    let tramp = unsafe { std::mem::transmute::<usize, InitTrampoline>(code::code_address(init.tramp)) };
    let func = if init.func == 0 { 0 } else { code::code_address(init.func) };
    let built = wire::with_body(seg, init, &[], false, |arg| {
        std::panic::catch_unwind(|| {
            // SAFETY: sealed with the trampoline: `func` is the function of
            // the type this trampoline was instantiated for (or unused).
            unsafe { tramp(func, arg) }
        })
    });
    match built {
        Ok(Ok(r)) => r,
        Ok(Err(payload)) => Err(take_panic_message(&*payload)),
        Err(e) => Err(e.to_string()),
    }
}

/// Panics in a worker are answers, not noise: record the message and where
/// it was raised for the caller instead of printing it.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = payload_text(info.payload());
        let text = match info.location() {
            Some(l) => format!("{msg} (at {}:{}:{})", l.file(), l.line(), l.column()),
            None => msg,
        };
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
    }));
}

pub(crate) fn take_panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| payload_text(payload))
}

pub(crate) fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use super::*;

    // ARCHITECTURE: a segment carrying code offsets records the build that
    // wrote them; a worker of another build refuses it before using one.
    #[test]
    fn a_worker_of_another_build_refuses_to_start_and_says_so() {
        let seg = Segment::anonymous(4 << 20).unwrap();
        let tasks = Ring::create(&seg, 4, 256).unwrap();
        let results = Ring::create(&seg, 4, 256).unwrap();
        let block = seg.alloc(control::footprint(1)).unwrap();
        let layout = control::Layout {
            control: block.offset,
            workers: 1,
            build_id: crate::build_id() ^ 1,
            task_ring: tasks.offset(),
            result_ring: results.offset(),
            log_ring: 0,
            log_dropped: 0,
            log_level: 0,
            spin_ns: 0,
            max_tasks: 0,
            call_ring: 0,
        };
        control::init(&seg, block.offset, &layout, None).unwrap();
        // The worker takes its own descriptor of the segment, as if inherited.
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", seg.raw_fd()))
            .unwrap()
            .into_raw_fd();
        let cfg = WorkerConfig { fd, control: block.offset, index: 0, parent: process::current_pid(), key: 1 };
        match run(&cfg) {
            Err(Error::BuildMismatch { expected, found }) => {
                assert_eq!((expected, found), (layout.build_id, crate::build_id()));
            }
            other => panic!("expected BuildMismatch, got {other:?}"),
        }
        let slot = control::slot(&seg, block.offset, 1, 0).unwrap();
        assert_eq!(slot.state.load(Ordering::Acquire), W_BUILD_MISMATCH);
        assert_eq!(slot.build_id.load(Ordering::Relaxed), crate::build_id());
    }
}
