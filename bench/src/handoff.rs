//! Large buffer hand-off: a SharedBuffer handle to a worker against the
//! peers' own shared memory (ipc-channel's `IpcSharedMemory`, Python's
//! `multiprocessing.shared_memory`) and their copy paths (a pipe, Python
//! pickling through a `multiprocessing.Pool`), each kind beside a floor
//! measured in the same rounds with the rows' own buffers: the zero-copy
//! floor is a spinning cache-line ping-pong whose child reads the first byte
//! of the very buffer shmpool hands over; the copy floor one memcpy out of
//! that buffer.
//!
//! Every row runs several rounds, in an order that rotates from round to
//! round, on one fixed pair of cores (parent and child); a row's figure is
//! the median of its rounds' p50s, shown with their spread. A row faster than
//! its floor makes the run INVALID.

use std::time::{Duration, Instant};

use ipc_channel::ipc::IpcSharedMemory;

use crate::affinity::{self, ParentPin};
use crate::common::{format_bytes, histogram, progress, record, rotated, BoxResult, Latency, Mode, Rounds as Figures};
use crate::floor;
use crate::params::Params;
use crate::payload::check_sum;
use crate::peers::ipc::{IpcPeer, SHM_FILL};
use crate::pipes::Sink;
use crate::report::{verdict, Cell, Column, Section};

/// Buffer sizes of the hand-off rows.
pub const HANDOFF_SIZES: [usize; 5] = [8, 4 << 10, 1 << 20, 64 << 20, 1 << 30];
/// Segment of the hand-off pool: room for the 1 GiB buffer (its size class
/// is 1.25 GiB) and the smaller ones. Committed only as it is touched.
const HANDOFF_SEGMENT: u64 = 3 << 30;
/// The byte every buffer is filled with (the floor's child checks it).
const FILL: u8 = floor::READ_FILL;
const _: () = assert!(FILL == SHM_FILL);

/// Task of the shmpool row: opens the buffer and reads one byte of it.
fn touch(handle: shmpool::BufferHandle) -> u64 {
    let seg = shmpool::pool_segment().expect("touch runs in a pool worker");
    let buffer = handle.open(&seg).expect("the buffer handle opens");
    buffer.len() as u64 + buffer.as_slice()[0] as u64
}

/// The rows, in the order of the table; each round starts one further on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Row {
    Shmpool,
    IpcShm,
    PythonShm,
    ZeroCopyFloor,
    Pipe,
    PythonPickle,
    CopyFloor,
}

const ROWS: [Row; 7] =
    [Row::Shmpool, Row::IpcShm, Row::PythonShm, Row::ZeroCopyFloor, Row::Pipe, Row::PythonPickle, Row::CopyFloor];

impl Row {
    fn name(self) -> &'static str {
        match self {
            Row::Shmpool => "shmpool SharedBuffer handle to a Pool worker",
            Row::IpcShm => "ipc-channel IpcSharedMemory, back and forth (fd sent, mapped per message)",
            Row::PythonShm => "Python shared_memory, name to a Pool worker (kept attached)",
            Row::ZeroCopyFloor => "zero-copy floor: cache-line ping-pong, child reads 1 byte (both spin)",
            Row::Pipe => "pipe (copy path): the bytes to a child, 1-byte reply",
            Row::PythonPickle => "Python Pool.apply, pickled (copy path)",
            Row::CopyFloor => "copy floor: one memcpy out of the shared buffer",
        }
    }

    /// The floor this row may not beat (none for the floors).
    fn floor(self) -> Option<Row> {
        match self {
            Row::Shmpool | Row::IpcShm | Row::PythonShm => Some(Row::ZeroCopyFloor),
            Row::Pipe | Row::PythonPickle => Some(Row::CopyFloor),
            Row::ZeroCopyFloor | Row::CopyFloor => None,
        }
    }
}

/// Rounds of each row, and per-round budgets.
struct Rounds {
    rounds: usize,
    /// Warm-up calls per size in the first round (a tenth in later ones).
    warm_up: usize,
    iterations: usize,
    /// Timed calls of one size in one round stop once they took this long
    /// (after `min_samples`).
    budget: Duration,
}

impl Rounds {
    fn new(params: &Params, mode: Mode) -> Rounds {
        let rounds = mode.pick(3, 5);
        Rounds {
            rounds,
            warm_up: params.handoff_warm_up,
            iterations: params.handoff_iterations / rounds,
            budget: params.handoff_budget / (rounds * HANDOFF_SIZES.len()) as u32,
        }
    }

    fn warm_up(&self, round: usize, bytes: usize) -> usize {
        let base = if round == 0 { self.warm_up } else { self.warm_up / 10 };
        match bytes {
            b if b >= 256 << 20 => 0,
            b if b >= 64 << 20 => base.min(2),
            _ => base,
        }
    }

    /// One sample per round for the sizes whose calls take a second.
    fn min_samples(bytes: usize) -> usize {
        if bytes >= 256 << 20 {
            1
        } else {
            3
        }
    }
}

/// Calls `op` `warm_up` times, then times it up to `iterations` times,
/// stopping once `budget` is spent (after `min_samples`).
fn timed(
    warm_up: usize,
    iterations: usize,
    min_samples: usize,
    budget: Duration,
    mut op: impl FnMut() -> BoxResult<()>,
) -> BoxResult<hdrhistogram::Histogram<u64>> {
    for _ in 0..warm_up {
        op()?;
    }
    let mut samples = histogram();
    let mut spent = Duration::ZERO;
    for i in 0..iterations.max(min_samples) {
        if i >= min_samples && spent > budget {
            break;
        }
        let start = Instant::now();
        op()?;
        let took = start.elapsed();
        spent += took;
        record(&mut samples, took);
    }
    Ok(samples)
}

/// Everything the rows use, set up once and kept over the rounds.
struct Rig {
    pool: shmpool::Pool,
    buffers: Vec<shmpool::SharedBuffer>,
    ipc: IpcPeer<IpcSharedMemory>,
    regions: Vec<Option<IpcSharedMemory>>,
    sinks: Vec<Sink>,
}

impl Rig {
    fn new() -> BoxResult<Rig> {
        progress("buffer hand-off: filling the buffers, starting the children");
        let child = affinity::pair().1;
        let pool = shmpool::Pool::builder().workers(1).segment_size(HANDOFF_SEGMENT).build()?;
        for pid in pool.worker_pids() {
            affinity::pin_process(pid, child)?;
        }
        let mut buffers = Vec::with_capacity(HANDOFF_SIZES.len());
        for bytes in HANDOFF_SIZES {
            let mut buffer = pool.segment().buffer(bytes as u64)?;
            buffer.as_mut_slice().ok_or("a fresh buffer is not writable")?.fill(FILL);
            buffers.push(buffer);
        }
        let ipc = IpcPeer::<IpcSharedMemory>::spawn()?;
        affinity::pin_process(ipc.pid(), child)?;
        let regions = HANDOFF_SIZES.iter().map(|&bytes| Some(IpcSharedMemory::from_byte(FILL, bytes))).collect();
        let mut sinks = Vec::with_capacity(HANDOFF_SIZES.len());
        for bytes in HANDOFF_SIZES {
            let sink = Sink::spawn(bytes)?;
            affinity::pin_process(sink.pid(), child)?;
            sinks.push(sink);
        }
        Ok(Rig { pool, buffers, ipc, regions, sinks })
    }

    fn finish(self) -> BoxResult<()> {
        for sink in self.sinks {
            sink.finish()?;
        }
        self.ipc.finish()
    }
}

/// Measures one row over every size in one round.
fn measure_row(row: Row, round: usize, rig: &mut Rig, rounds: &Rounds, mode: Mode) -> BoxResult<Vec<Option<Latency>>> {
    let mut out = Vec::with_capacity(HANDOFF_SIZES.len());
    match row {
        Row::PythonShm => return crate::peers::python_shm_handoff(mode, &HANDOFF_SIZES, rounds.rounds),
        Row::PythonPickle => return crate::peers::python_handoff(mode, &HANDOFF_SIZES),
        _ => {}
    }
    for (index, &bytes) in HANDOFF_SIZES.iter().enumerate() {
        let warm_up = rounds.warm_up(round, bytes);
        let min = Rounds::min_samples(bytes);
        let samples = match row {
            Row::Shmpool => {
                let (pool, buffer) = (&rig.pool, &mut rig.buffers[index]);
                let expect = bytes as u64 + FILL as u64;
                timed(warm_up, rounds.iterations, min, rounds.budget, || {
                    let handle = buffer.share()?;
                    check_sum(pool.submit(touch, handle)?.wait()?, expect)
                })?
            }
            Row::IpcShm => {
                let (ipc, slot) = (&rig.ipc, &mut rig.regions[index]);
                let expect = bytes as u64 + FILL as u64;
                timed(warm_up, rounds.iterations, min, rounds.budget, || {
                    let region = ipc.call(slot.take().ok_or("the region was lost")?)?;
                    let got = region.len() as u64 + region.first().copied().unwrap_or(0) as u64;
                    *slot = Some(region);
                    check_sum(got, expect)
                })?
            }
            Row::ZeroCopyFloor => {
                let latency = floor::zero_copy_floor(rig.buffers[index].as_slice(), rounds.iterations, rounds.budget)?;
                out.push(Some(latency));
                continue;
            }
            Row::Pipe => {
                let (sink, buffer) = (&mut rig.sinks[index], &rig.buffers[index]);
                timed(warm_up.min(10), rounds.iterations, min, rounds.budget, || {
                    Ok(sink.round_trip(buffer.as_slice())?)
                })?
            }
            Row::CopyFloor => {
                out.push(Some(floor::copy_floor(rig.buffers[index].as_slice(), rounds.iterations, rounds.budget)));
                continue;
            }
            Row::PythonShm | Row::PythonPickle => unreachable!("measured above"),
        };
        out.push(Some(Latency::from_histogram(row.name(), &samples)));
    }
    Ok(out)
}

/// Measures every row, round after round in rotating order, and returns the
/// table.
pub fn measure_handoff(params: &Params, mode: Mode) -> BoxResult<Section> {
    let _pin = ParentPin::new();
    let rounds = Rounds::new(params, mode);
    let mut rig = Rig::new()?;
    let mut figures = vec![vec![Figures::default(); HANDOFF_SIZES.len()]; ROWS.len()];
    for round in 0..rounds.rounds {
        for index in rotated(round, ROWS.len()) {
            let row = ROWS[index];
            progress(&format!("buffer hand-off, round {}/{}: {}", round + 1, rounds.rounds, row.name()));
            for (size, latency) in measure_row(row, round, &mut rig, &rounds, mode)?.into_iter().enumerate() {
                if let Some(latency) = latency {
                    figures[index][size].rounds.push(latency);
                }
            }
        }
    }
    rig.finish()?;
    Ok(handoff_section(&figures, rounds.rounds))
}

fn handoff_section(figures: &[Vec<Figures>], rounds: usize) -> Section {
    let mut section = Section::new(
        "handoff",
        format!(
            "Buffer hand-off: a buffer of each size to another process, which reads its length and first byte, and \
             back; zero-copy rows (the buffer stays where it is) and copy-path rows (the bytes are copied), each \
             kind with its floor measured beside it with the same buffers; {rounds} rounds in rotating order, \
             parent and child pinned to cores {} and {}",
            affinity::pair().0,
            affinity::pair().1
        ),
        vec![
            Column::new("p50 (median)", "p50_ns"),
            Column::new("spread", "p50_spread"),
            Column::new("p99", "p99_ns"),
            Column::new("vs shmpool", "vs_shmpool"),
            Column::new("vs its floor", "vs_floor"),
        ],
    );
    let mut lost = Vec::new();
    let mut beaten = Vec::new();
    for (size, &bytes) in HANDOFF_SIZES.iter().enumerate() {
        let shmpool = figures[0][size].p50().map(|d| d.as_secs_f64());
        for (index, row) in ROWS.iter().enumerate() {
            let f = &figures[index][size];
            let p50 = f.p50().map(|d| d.as_secs_f64());
            let floor = row.floor().and_then(|floor| {
                let at = ROWS.iter().position(|r| *r == floor)?;
                figures[at][size].p50().map(|d| d.as_secs_f64())
            });
            if let (Some(p50), Some(floor)) = (p50, floor) {
                if p50 < floor {
                    beaten.push(format!("{} at {}", row.name(), format_bytes(bytes)));
                }
            }
            let peer = !matches!(row, Row::Shmpool | Row::ZeroCopyFloor | Row::CopyFloor);
            if peer && p50.zip(shmpool).is_some_and(|(p, s)| p < s) {
                lost.push(format!("{} at {}", row.name(), format_bytes(bytes)));
            }
            section.row(
                format!("{:>7}  {}", format_bytes(bytes), row.name()),
                vec![
                    f.p50().map_or(Cell::Empty, Cell::time),
                    f.spread().map_or(Cell::Empty, |s| Cell::Text(format!("±{:.0}%", s * 100.0))),
                    f.p99().map_or(Cell::Empty, Cell::time),
                    if *row == Row::Shmpool { Cell::Reference } else { Cell::slower(p50, shmpool) },
                    match (p50, floor) {
                        (Some(p50), Some(floor)) if floor > 0.0 => Cell::Ratio(p50 / floor),
                        _ => Cell::Empty,
                    },
                ],
            );
        }
    }
    let first = figures[0].first().and_then(Figures::p50);
    let last = figures[0].last().and_then(Figures::p50);
    if let (Some(first), Some(last)) = (first, last) {
        let spread = last.as_secs_f64() / first.as_secs_f64().max(1e-12);
        section.note(format!(
            "goal: shmpool {} hand-off within 2x of its {} hand-off (p50): {spread:.2}x, {}",
            format_bytes(*HANDOFF_SIZES.last().expect("sizes")),
            format_bytes(HANDOFF_SIZES[0]),
            verdict(spread <= 2.0)
        ));
    }
    section.note(if lost.is_empty() {
        "goal: shmpool ahead of every peer row (zero-copy and copy path) at every size: MET".to_owned()
    } else {
        format!("goal: shmpool ahead of every peer row at every size: MISSED ({})", lost.join("; "))
    });
    section.note(
        "p50 (median): the median of the rounds' p50s; spread: ±half their range, of the median; \"vs its floor\": \
         p50 / the floor's p50 at that size (a row below 1.00x makes the run INVALID)",
    );
    section.note(
        "Python \"-\": not measured (no python3; pickled 1 GiB in quick mode: --full measures it); Python's \
         shared_memory worker attaches each block once and keeps it, as shmpool's worker keeps its segment mapped",
    );
    for what in beaten {
        section.invalid(format!("hand-off row beats its floor: {what}"));
    }
    section
}
