//! The pool's control block in the segment: where the rings are, how to
//! build a stateful worker, and one slot per worker process.

use std::mem::size_of;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::segment::{Segment, SegmentError, ShmSafe};
use crate::wire::FrameHeader;

const CONTROL_MAGIC: u32 = 0x504F_4F4C; // "POOL"
/// Most tasks a worker takes from the ring at once.
pub(crate) const MAX_BATCH: usize = 32;
// `WorkerSlot::answered` has a bit per held task.
const _: () = assert!(MAX_BATCH <= 32);
/// Most workers in one pool.
pub(crate) const MAX_WORKERS: u32 = 1024;

/// Worker slot states.
pub(crate) const W_STARTING: u32 = 0;
pub(crate) const W_READY: u32 = 1;
pub(crate) const W_INIT_FAILED: u32 = 2;
/// The worker runs another build than the one that wrote the control block
/// (its code offsets would name other code): it refused to start.
pub(crate) const W_BUILD_MISMATCH: u32 = 3;
/// The worker ran its quota of tasks (`max_tasks_per_worker`): it takes no
/// more, posts its last answer and exits cleanly, to be replaced.
pub(crate) const W_RETIRING: u32 = 4;

/// [`Signals::calls`] states: the parent answers calls from workers...
pub(crate) const CALLS_OPEN: u32 = 0;
/// ...refuses them (the pool was closed, or is shutting down)...
pub(crate) const CALLS_CLOSED: u32 = 1;
/// ...or its call thread failed: callers get an error instead of waiting.
pub(crate) const CALLS_FAILED: u32 = 2;

#[repr(C)]
pub(crate) struct Control {
    magic: u32,
    workers: u32,
    /// [`crate::build_id`] of the binary that wrote this block (and the code
    /// offsets in it and in every task). Kept third, at offset 8, so that a
    /// build with another layout still finds it.
    build_id: u64,
    task_ring: u64,
    result_ring: u64,
    /// The ring workers forward `log` records through, and the block of the
    /// counter of records dropped because it was full.
    log_ring: u64,
    log_dropped: u64,
    /// The parent's `log::max_level()` when the pool started.
    log_level: u64,
    /// How long workers spin before sleeping, in nanoseconds.
    spin_ns: u64,
    /// Tasks a worker runs before it is replaced (0: no limit).
    max_tasks: u64,
    /// The ring workers send calls to the parent through ([`crate::parent_call`]).
    call_ring: u64,
    /// The stateful worker's init: `tramp` is an `InitTrampoline`, the body a
    /// block holding the archived `Init` (never freed while the pool lives).
    init: InitRecord,
}

/// [`FrameHeader`] as atomics-free plain data written once before workers start.
#[repr(C)]
#[derive(Clone, Copy)]
struct InitRecord([u64; 8]);

// SAFETY: `#[repr(C)]`, integers only; valid for any bit pattern.
unsafe impl ShmSafe for Control {}

/// What parent and workers change while the pool runs; right after
/// [`Control`] (which is written once), before the worker slots.
#[repr(C)]
pub(crate) struct Signals {
    /// Bumped by a worker that retires (before it posts its last answer),
    /// so that the waiter woken by that answer replaces it at once instead
    /// of at the next supervision tick.
    pub retiring: AtomicU64,
    /// `CALLS_*`: whether the parent answers calls from workers.
    pub calls: AtomicU32,
    _reserved: AtomicU32,
}

// SAFETY: `#[repr(C)]`, atomics only; valid for any bit pattern.
unsafe impl ShmSafe for Signals {}

// Signals follow Control, and worker slots follow Signals: both aligned.
const _: () = assert!(size_of::<Control>() % 8 == 0 && size_of::<Signals>() % 8 == 0);

/// One worker's entry. Written by the worker, read by the parent.
#[repr(C)]
pub(crate) struct WorkerSlot {
    /// The worker's pid once it has started.
    pub pid: AtomicU32,
    /// `W_*`.
    pub state: AtomicU32,
    /// Tasks finished by this worker.
    pub done: AtomicU64,
    /// On `W_INIT_FAILED`: a block holding the archived panic message.
    pub error_block: AtomicU64,
    pub error_len: AtomicU64,
    /// Tasks taken from the ring and not yet answered: `held_n` pairs of
    /// (stream, seq) in `held`. SYNC: pairs are written before `held_n`
    /// (Release); the parent reads `held_n` (Acquire) after the worker died.
    pub held_n: AtomicU32,
    /// Bit `k` set: held task `k`'s answer is out and its argument block
    /// may be freed already; a dead worker's answered tasks are never run
    /// again, whatever the parent has received so far. SYNC: set (Release)
    /// after the answer is published and before the block is freed; read
    /// (Acquire) by the parent after the worker died.
    pub answered: AtomicU32,
    /// Index (in the held batch) of the task running now.
    pub busy_index: AtomicU32,
    pub held: [AtomicU64; 2 * MAX_BATCH],
    /// Offset of this worker's copies of the frames it holds (`held_n` of
    /// them, `frame_stride` bytes apart): a dead worker's tasks can be run
    /// again from them.
    pub held_frames: AtomicU64,
    pub frame_stride: AtomicU64,
    /// The worker's current ring claims, `(pos << 8) | n` (0: none): a slot
    /// left claimed by a dead worker is told from a live worker's.
    pub pop_claim: AtomicU64,
    pub push_claim: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds: last sign of life, and when the running
    /// task started (0: idle).
    pub heartbeat: AtomicU64,
    pub busy_since: AtomicU64,
    /// On `W_BUILD_MISMATCH`: the worker's own build id.
    pub build_id: AtomicU64,
    /// The ring the parent answers this slot's calls through (set once by
    /// the parent before any worker starts; not cleared by [`reset`]).
    pub reply_ring: AtomicU64,
}

// SAFETY: `#[repr(C)]`, atomics only.
unsafe impl ShmSafe for WorkerSlot {}

/// What the parent and its workers both know about a pool in a segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub control: u64,
    pub workers: u32,
    /// The build id of the binary that wrote the control block.
    pub build_id: u64,
    pub task_ring: u64,
    pub result_ring: u64,
    pub log_ring: u64,
    pub log_dropped: u64,
    pub log_level: u64,
    pub spin_ns: u64,
    /// Tasks a worker runs before it is replaced (0: no limit).
    pub max_tasks: u64,
    pub call_ring: u64,
}

/// Bytes a control block for `workers` workers needs.
pub(crate) fn footprint(workers: u32) -> u64 {
    (size_of::<Control>() + size_of::<Signals>() + workers as usize * size_of::<WorkerSlot>()) as u64
}

/// Writes a fresh control block at `offset` (a block this process owns).
pub(crate) fn init(
    seg: &Segment,
    offset: u64,
    layout: &Layout,
    init: Option<&FrameHeader>,
) -> Result<(), SegmentError> {
    let _ = seg.get::<Control>(offset)?;
    seg.check_range(offset, footprint(layout.workers))?;
    let p = seg.ptr(offset, size_of::<Control>() as u64)?.cast::<Control>();
    let record = init.map_or(InitRecord([0; 8]), |h| {
        // SAFETY: FrameHeader is 64 bytes of plain integers, as is InitRecord.
        InitRecord(unsafe { std::mem::transmute::<FrameHeader, [u64; 8]>(*h) })
    });
    // SAFETY: `p` is in bounds and aligned (checked by get()); the block was
    // just allocated by this process and no worker has been started on it.
    unsafe {
        p.write(Control {
            magic: CONTROL_MAGIC,
            workers: layout.workers,
            build_id: layout.build_id,
            task_ring: layout.task_ring,
            result_ring: layout.result_ring,
            log_ring: layout.log_ring,
            log_dropped: layout.log_dropped,
            log_level: layout.log_level,
            spin_ns: layout.spin_ns,
            max_tasks: layout.max_tasks,
            call_ring: layout.call_ring,
            init: record,
        });
    }
    let sig = signals(seg, offset)?;
    sig.retiring.store(0, Ordering::Relaxed);
    sig.calls.store(CALLS_OPEN, Ordering::Relaxed);
    for i in 0..layout.workers {
        let s = slot(seg, offset, layout.workers, i)?;
        s.reply_ring.store(0, Ordering::Relaxed);
        s.pid.store(0, Ordering::Relaxed);
        s.state.store(W_STARTING, Ordering::Relaxed);
        reset(s);
    }
    std::sync::atomic::fence(Ordering::Release);
    Ok(())
}

/// Reads and validates the control block at `offset`.
pub(crate) fn open(seg: &Segment, offset: u64) -> Result<(Layout, Option<FrameHeader>), SegmentError> {
    let _ = seg.get::<Control>(offset)?;
    let p = seg.ptr(offset, size_of::<Control>() as u64)?.cast::<Control>();
    std::sync::atomic::fence(Ordering::Acquire);
    // SAFETY: in bounds and aligned (checked); a volatile copy of plain
    // integers, each validated below before use.
    let c = unsafe { p.read_volatile() };
    if c.magic != CONTROL_MAGIC {
        return Err(SegmentError::Corrupt("no pool control block at this offset"));
    }
    if c.workers == 0 || c.workers > MAX_WORKERS {
        return Err(SegmentError::Corrupt("pool worker count"));
    }
    seg.check_range(offset, footprint(c.workers))?;
    // SAFETY: as in init.
    let init: FrameHeader = unsafe { std::mem::transmute::<[u64; 8], FrameHeader>(c.init.0) };
    let init = (init.tramp != 0).then_some(init);
    let layout = Layout {
        control: offset,
        workers: c.workers,
        build_id: c.build_id,
        task_ring: c.task_ring,
        result_ring: c.result_ring,
        log_ring: c.log_ring,
        log_dropped: c.log_dropped,
        log_level: c.log_level,
        spin_ns: c.spin_ns,
        max_tasks: c.max_tasks,
        call_ring: c.call_ring,
    };
    Ok((layout, init))
}

/// Clears a slot for a new worker process.
pub(crate) fn reset(s: &WorkerSlot) {
    s.pid.store(0, Ordering::Relaxed);
    s.state.store(W_STARTING, Ordering::Relaxed);
    s.held_n.store(0, Ordering::Relaxed);
    s.answered.store(0, Ordering::Relaxed);
    s.busy_index.store(0, Ordering::Relaxed);
    s.held_frames.store(0, Ordering::Relaxed);
    s.frame_stride.store(0, Ordering::Relaxed);
    s.pop_claim.store(0, Ordering::Relaxed);
    s.push_claim.store(0, Ordering::Relaxed);
    s.heartbeat.store(0, Ordering::Relaxed);
    s.build_id.store(0, Ordering::Relaxed);
    s.busy_since.store(0, Ordering::Release);
}

/// Worker `index`'s slot.
pub(crate) fn slot(seg: &Segment, control: u64, workers: u32, index: u32) -> Result<&WorkerSlot, SegmentError> {
    if index >= workers {
        return Err(SegmentError::Corrupt("worker index out of range"));
    }
    let off =
        control + (size_of::<Control>() + size_of::<Signals>()) as u64 + index as u64 * size_of::<WorkerSlot>() as u64;
    seg.get::<WorkerSlot>(off)
}

/// The pool's [`Signals`].
pub(crate) fn signals(seg: &Segment, control: u64) -> Result<&Signals, SegmentError> {
    seg.get::<Signals>(control + size_of::<Control>() as u64)
}

/// Whether a process of this build may use the code offsets of the pool
/// `layout` describes: `Err(ours)` if the block was written by another build.
pub(crate) fn check_build(layout: &Layout) -> Result<(), u64> {
    let ours = super::code::build_id();
    if layout.build_id == ours {
        Ok(())
    } else {
        Err(ours)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(build_id: u64) -> Layout {
        Layout {
            control: 0,
            workers: 2,
            build_id,
            task_ring: 0,
            result_ring: 0,
            log_ring: 0,
            log_dropped: 0,
            log_level: 0,
            spin_ns: 0,
            max_tasks: 0,
            call_ring: 0,
        }
    }

    #[test]
    fn the_control_block_records_the_build_and_another_build_is_refused() {
        let seg = Segment::anonymous(1 << 20).unwrap();
        let ours = crate::build_id();
        for written_by in [ours, ours ^ 0x5a5a, 1] {
            let block = seg.alloc(footprint(2)).unwrap();
            init(&seg, block.offset, &Layout { control: block.offset, ..layout(written_by) }, None).unwrap();
            let (read, _) = open(&seg, block.offset).unwrap();
            assert_eq!(read.build_id, written_by);
            let expected = if written_by == ours { Ok(()) } else { Err(ours) };
            assert_eq!(check_build(&read), expected, "written by {written_by:#x}");
        }
    }
}
