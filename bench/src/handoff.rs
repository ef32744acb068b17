//! Large buffer hand-off: a SharedBuffer handle to a worker against a pipe
//! copy of the bytes and Python pickling through a multiprocessing.Pool.

use std::time::{Duration, Instant};

use crate::common::{format_bytes, progress, time_ops, BoxResult, Latency};
use crate::floor::Floor;
use crate::params::Params;
use crate::payload::check_sum;
use crate::pipes::Sink;
use crate::report::{Cell, Column, Section};

/// Buffer sizes of the hand-off rows.
pub const HANDOFF_SIZES: [usize; 5] = [8, 4 << 10, 1 << 20, 64 << 20, 1 << 30];
/// Segment of the hand-off pool: room for the 1 GiB buffer (its size class
/// is 1.25 GiB) and the smaller ones. Committed only as it is touched.
const HANDOFF_SEGMENT: u64 = 3 << 30;
/// The byte every buffer is filled with.
const FILL: u8 = 0xA5;

/// Task of the hand-off rows: opens the buffer and reads one byte of it.
fn touch(handle: shmpool::BufferHandle) -> u64 {
    let seg = shmpool::pool_segment().expect("touch runs in a pool worker");
    let buffer = handle.open(&seg).expect("the buffer handle opens");
    buffer.len() as u64 + buffer.as_slice()[0] as u64
}

/// One buffer size: the shmpool hand-off, the pipe copy and Python's pickling.
pub struct Handoff {
    pub bytes: usize,
    pub shmpool: Latency,
    pub pipe: Latency,
    pub python: Option<Latency>,
}

/// Hands the buffers of every size to the worker in turn, round after
/// round, so that every size meets the same conditions (the pool's waiters
/// adapt their spinning to recent history, and a size measured right after a
/// long pause would wait on a sleeping worker); then the pipe copies.
pub fn measure_handoff(params: &Params) -> BoxResult<Vec<Handoff>> {
    progress("buffer hand-off: filling the buffers");
    let pool = shmpool::Pool::builder().workers(1).segment_size(HANDOFF_SEGMENT).build()?;
    let mut buffers = Vec::with_capacity(HANDOFF_SIZES.len());
    for bytes in HANDOFF_SIZES {
        let mut buffer = pool.segment().buffer(bytes as u64)?;
        buffer.as_mut_slice().ok_or("a fresh buffer is not writable")?.fill(FILL);
        buffers.push(buffer);
    }
    progress("buffer hand-off, all sizes in turn");
    let mut samples = vec![crate::common::histogram(); buffers.len()];
    let mut spent = Duration::ZERO;
    for round in 0..params.handoff_warm_up + params.handoff_iterations {
        let timed = round >= params.handoff_warm_up;
        if timed && round >= params.handoff_warm_up + 3 && spent > params.handoff_budget {
            break;
        }
        for (buffer, samples) in buffers.iter_mut().zip(&mut samples) {
            let expect = buffer.len() as u64 + FILL as u64;
            let start = Instant::now();
            let handle = buffer.share()?;
            check_sum(pool.submit(touch, handle)?.wait()?, expect)?;
            let took = start.elapsed();
            if timed {
                spent += took;
                crate::common::record(samples, took);
            }
        }
    }
    let mut rows = Vec::with_capacity(buffers.len());
    for (buffer, samples) in buffers.into_iter().zip(samples) {
        let bytes = buffer.len();
        let shmpool = Latency::from_histogram("shmpool SharedBuffer handle", &samples);
        progress(&format!("pipe copy, {}", format_bytes(bytes)));
        let mut sink = Sink::spawn(bytes)?;
        // A 1 GiB copy takes about a second: no warm-up, and the budget
        // stops the row after the minimum of 3 copies.
        let warm_up = match bytes {
            b if b >= 1 << 30 => 0,
            b if b >= 64 << 20 => 1,
            _ => params.handoff_warm_up,
        };
        let samples = time_ops(warm_up, params.handoff_iterations, Some(params.pipe_budget), |_| {
            Ok(sink.round_trip(buffer.as_slice())?)
        })?;
        sink.finish()?;
        let pipe = Latency::from_histogram("pipe copy", &samples);
        rows.push(Handoff { bytes, shmpool, pipe, python: None });
    }
    Ok(rows)
}

/// The hand-off table: per size, shmpool's hand-off, the pipe copy and the
/// Python pickling, with the memcpy floor of that size.
pub fn handoff_section(rows: &[Handoff], floor: &Floor) -> Section {
    let mut section = Section::new(
        "handoff",
        "Buffer hand-off: a SharedBuffer handle to 1 worker, which opens it and reads 1 byte, and back; vs a pipe \
         copy of the bytes to a child process and a 1-byte reply, and vs Python pickling the bytes through a \
         multiprocessing.Pool (pool.apply)",
        vec![
            Column::new("bytes", "bytes"),
            Column::new("shmpool p50", "shmpool_p50_ns"),
            Column::new("p99", "shmpool_p99_ns"),
            Column::new("pipe p50", "pipe_p50_ns"),
            Column::new("pipe vs shmpool", "pipe_vs_shmpool"),
            Column::new("Python p50", "python_p50_ns"),
            Column::new("Python vs shmpool", "python_vs_shmpool"),
            Column::new("memcpy p50", "memcpy_p50_ns"),
        ],
    );
    let mut lost = Vec::new();
    for row in rows {
        let shmpool = row.shmpool.p50.as_secs_f64();
        let pipe = row.pipe.p50.as_secs_f64();
        let python = row.python.as_ref().map(|p| p.p50.as_secs_f64());
        if pipe < shmpool || python.is_some_and(|p| p < shmpool) {
            lost.push(format_bytes(row.bytes));
        }
        section.row(
            format_bytes(row.bytes),
            vec![
                Cell::Bytes(row.bytes as u64),
                Cell::time(row.shmpool.p50),
                Cell::time(row.shmpool.p99),
                Cell::time(row.pipe.p50),
                Cell::slower(Some(pipe), Some(shmpool)),
                row.python.as_ref().map_or(Cell::Empty, |p| Cell::time(p.p50)),
                Cell::slower(python, Some(shmpool)),
                floor.memcpy_of(row.bytes).map_or(Cell::Empty, Cell::time),
            ],
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let spread = last.shmpool.p50.as_secs_f64() / first.shmpool.p50.as_secs_f64().max(1e-12);
        section.note(format!(
            "shmpool {} hand-off / {} hand-off (p50): {spread:.2}x (goal: within 2x){}",
            format_bytes(last.bytes),
            format_bytes(first.bytes),
            if spread <= 2.0 { "" } else { "  GOAL MISSED" }
        ));
    }
    if rows.iter().any(|row| row.python.is_none()) {
        section.note("Python \"-\": not measured (no python3, or 1 GiB in quick mode: --full measures it)");
    }
    section.note("\"slower\": the peer needs that many times the hand-off's time; memcpy: one copy in one process");
    section.note(if lost.is_empty() {
        "goal: shmpool ahead of every peer at every size: met".to_owned()
    } else {
        format!("goal: shmpool ahead of every peer at every size: MISSED at {}", lost.join(", "))
    });
    section
}
