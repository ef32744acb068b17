//! Large buffers through a pipeline: N pool workers digest 4 MiB
//! `SharedBuffer`s the parent filled and handed over by handle, against N
//! threads of this process over the same buffers (the floor) and Python's
//! `multiprocessing.Pool` over `multiprocessing.shared_memory` blocks. The
//! digest is CRC-32 of the whole block ([`crate::crc32`] here, `zlib.crc32`
//! in Python), every result checked.
//!
//! The first pass (each worker's first touch of each page through its own
//! mapping: a minor fault per page or fault-around block) is reported apart
//! from the steady state (every page already mapped in every worker, as with
//! a buffer pool reused pass after pass). Steady passes of the workers and of
//! the floor alternate, so that drift of the machine hits both alike.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::affinity::{self, ParentPin};
use crate::common::{format_bytes, median, progress, BoxResult, Mode};
use crate::crc32::crc32;
use crate::peers::python::{self, Script};
use crate::report::{verdict, Cell, Column, Section};

/// Size of one buffer.
pub const BUFFER: usize = 4 << 20;
/// Worker (and thread) counts of the rows.
const WORKERS: [usize; 2] = [1, 2];
/// Goal: the steady state at this share of the floor's throughput or more.
const GOAL: f64 = 0.95;
/// A row of the same work as its floor that comes out this much faster than
/// the floor was measured on a disturbed machine: the run is refused.
const BEYOND_NOISE: f64 = 1.10;

struct Params {
    /// Buffers per pass (96 x 4 MiB = 384 MiB, the figure of issue #11).
    buffers: usize,
    /// Steady passes of each row, after the first.
    steady_passes: usize,
    python_timeout: Duration,
}

impl Params {
    fn new(mode: Mode) -> Params {
        Params {
            buffers: 96,
            steady_passes: mode.pick(5, 15),
            python_timeout: mode.pick(Duration::from_secs(120), Duration::from_secs(600)),
        }
    }
}

// ---------------------------------------------------------------------------
// Worker tasks

/// Opens the buffer in the worker and digests all of it.
fn digest(handle: shmpool::BufferHandle) -> u32 {
    let seg = shmpool::pool_segment().expect("digest runs in a pool worker");
    let buffer = handle.open(&seg).expect("the buffer handle opens");
    crc32(buffer.as_slice())
}

/// [`digest`], after asking the kernel to map the whole buffer in one call
/// (`MADV_POPULATE_READ`): the faults batched instead of one per page.
fn digest_populated(handle: shmpool::BufferHandle) -> u32 {
    let seg = shmpool::pool_segment().expect("digest runs in a pool worker");
    let buffer = handle.open(&seg).expect("the buffer handle opens");
    advise(buffer.as_slice(), libc::MADV_POPULATE_READ, 4096);
    crc32(buffer.as_slice())
}

/// [`digest`], after marking the buffer's huge-page-aligned part of this
/// worker's mapping `MADV_HUGEPAGE` (shmem THP in `advise` mode only).
fn digest_huge(handle: shmpool::BufferHandle) -> u32 {
    let seg = shmpool::pool_segment().expect("digest runs in a pool worker");
    let buffer = handle.open(&seg).expect("the buffer handle opens");
    advise(buffer.as_slice(), libc::MADV_HUGEPAGE, HUGE_PAGE);
    crc32(buffer.as_slice())
}

const HUGE_PAGE: usize = 2 << 20;

/// `madvise(advice)` over the part of `bytes` aligned to `align` (a power
/// of two); an advice the kernel refuses changes nothing, which the timings
/// show.
fn advise(bytes: &[u8], advice: libc::c_int, align: usize) {
    let start = (bytes.as_ptr() as usize).next_multiple_of(align);
    let end = (bytes.as_ptr() as usize + bytes.len()) & !(align - 1);
    if end > start {
        // SAFETY: the range lies inside `bytes`, mapped for as long as the
        // borrow lives; these advices neither unmap nor change contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
    }
}

/// The mode of shared-memory transparent huge pages: the bracketed word of
/// /sys/kernel/mm/transparent_hugepage/shmem_enabled.
fn shmem_thp_mode() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .ok()
        .and_then(|text| {
            let (_, rest) = text.split_once('[')?;
            Some(rest.split_once(']')?.0.to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

// ---------------------------------------------------------------------------
// Measuring

/// How a row's pool treats its buffers.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Plain,
    Populate,
    Huge,
}

impl Variant {
    fn task(self) -> fn(shmpool::BufferHandle) -> u32 {
        match self {
            Variant::Plain => digest,
            Variant::Populate => digest_populated,
            Variant::Huge => digest_huge,
        }
    }
}

/// Passes of one row: the first, then the steady ones; with the workers'
/// minor faults in the first and the second pass.
#[derive(Clone, Debug, Default)]
struct Passes {
    first: Duration,
    steady: Vec<Duration>,
    faults: Option<(u64, u64)>,
}

impl Passes {
    fn steady_median(&self) -> Duration {
        median(self.steady.clone())
    }

    /// (max - min) / median of the steady passes.
    fn spread(&self) -> f64 {
        let (Some(min), Some(max)) = (self.steady.iter().min(), self.steady.iter().max()) else {
            return 0.0;
        };
        (*max - *min).as_secs_f64() / self.steady_median().as_secs_f64().max(1e-12)
    }
}

/// The buffers of one pool, filled, with their expected digests.
struct Filled {
    pool: shmpool::Pool,
    buffers: Vec<shmpool::SharedBuffer>,
    expect: Vec<u32>,
}

fn fill(workers: usize, params: &Params, variant: Variant) -> BoxResult<Filled> {
    // Room for every buffer in its size class, with slack; committed only as
    // it is touched.
    let segment = (params.buffers as u64 + 4) * (2 * BUFFER as u64);
    let pool = shmpool::Pool::builder().workers(workers).segment_size(segment).build()?;
    for (index, pid) in pool.worker_pids().into_iter().enumerate() {
        affinity::pin_process(pid, affinity::worker_core(index, workers))?;
    }
    let mut buffers = Vec::with_capacity(params.buffers);
    let mut expect = Vec::with_capacity(params.buffers);
    for index in 0..params.buffers {
        let mut buffer = pool.segment().buffer(BUFFER as u64)?;
        let bytes = buffer.as_mut_slice().ok_or("a fresh buffer is not writable")?;
        if variant == Variant::Huge {
            advise(bytes, libc::MADV_HUGEPAGE, HUGE_PAGE);
        }
        fill_pattern(bytes, index as u64);
        expect.push(crc32(bytes));
        buffers.push(buffer);
    }
    Ok(Filled { pool, buffers, expect })
}

/// Pseudo-random bytes, different for every `seed` (splitmix64).
fn fill_pattern(bytes: &mut [u8], seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for chunk in bytes.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

/// One pass of the pool over every buffer: share, submit, wait, check.
fn pool_pass(filled: &mut Filled, task: fn(shmpool::BufferHandle) -> u32) -> BoxResult<Duration> {
    let start = Instant::now();
    let mut tickets = Vec::with_capacity(filled.buffers.len());
    for buffer in &mut filled.buffers {
        tickets.push(filled.pool.submit(task, buffer.share()?)?);
    }
    for (index, (ticket, &expect)) in tickets.into_iter().zip(&filled.expect).enumerate() {
        let got = ticket.wait()?;
        if got != expect {
            return Err(format!("pipeline: buffer {index} digested to {got:#x}, expected {expect:#x}").into());
        }
    }
    Ok(start.elapsed())
}

/// The floor: `n` threads of this process over the same buffers (read-only
/// views the parent opened from handles, as a worker does), each pinned as
/// the workers are. They live as long as the pool's workers and, like them,
/// sleep between passes: a thread made afresh for every pass would start
/// each pass in a scheduler state no worker is in.
struct FloorThreads {
    go: Vec<mpsc::Sender<()>>,
    done: mpsc::Receiver<Option<usize>>,
    next: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl FloorThreads {
    fn start(filled: &mut Filled, n: usize) -> BoxResult<FloorThreads> {
        let mut views = Vec::with_capacity(filled.buffers.len());
        for buffer in &mut filled.buffers {
            views.push(buffer.share()?.open(filled.pool.segment())?);
        }
        let views = Arc::new(views);
        let expect = Arc::new(filled.expect.clone());
        let next = Arc::new(AtomicUsize::new(0));
        let (done_tx, done) = mpsc::channel();
        let mut go = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for index in 0..n {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let (views, expect, next, done_tx) = (views.clone(), expect.clone(), next.clone(), done_tx.clone());
            threads.push(thread::spawn(move || {
                let _ = affinity::pin_thread(0, affinity::worker_core(index, n));
                while go_rx.recv().is_ok() {
                    let mut wrong = None;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(view) = views.get(i) else { break };
                        if crc32(view.as_slice()) != expect[i] {
                            wrong = Some(i);
                        }
                    }
                    if done_tx.send(wrong).is_err() {
                        return;
                    }
                }
            }));
            go.push(go_tx);
        }
        Ok(FloorThreads { go, done, next, threads })
    }

    /// One pass of every thread over every buffer.
    fn pass(&self) -> BoxResult<Duration> {
        self.next.store(0, Ordering::Relaxed);
        let start = Instant::now();
        for go in &self.go {
            go.send(()).map_err(|_| "a floor thread died")?;
        }
        let mut wrong = None;
        for _ in &self.go {
            wrong = wrong.or(self.done.recv().map_err(|_| "a floor thread died")?);
        }
        let took = start.elapsed();
        match wrong {
            Some(index) => Err(format!("pipeline floor: buffer {index} digested wrongly").into()),
            None => Ok(took),
        }
    }
}

impl Drop for FloorThreads {
    fn drop(&mut self) {
        self.go.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Minor faults of these processes so far (field 10 of /proc/PID/stat).
fn minor_faults(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit_once(')')?.1.split_whitespace().nth(7)?.parse::<u64>().ok()
        })
        .sum()
}

/// The shmpool row of `workers` workers and its floor, steady passes
/// alternating (floor first in even rounds, the pool first in odd ones).
fn measure_pool_and_floor(workers: usize, params: &Params) -> BoxResult<(Passes, Passes)> {
    progress(&format!("pipeline: {} x {} to {workers} worker(s)", params.buffers, format_bytes(BUFFER)));
    let mut filled = fill(workers, params, Variant::Plain)?;
    let pids = filled.pool.worker_pids();
    let threads = FloorThreads::start(&mut filled, workers)?;
    let mut pool = Passes::default();
    let mut floor = Passes::default();
    let before = minor_faults(&pids);
    pool.first = pool_pass(&mut filled, digest)?;
    let after_first = minor_faults(&pids);
    floor.first = threads.pass()?;
    for round in 0..params.steady_passes {
        let before_pass = minor_faults(&pids);
        if round % 2 == 0 {
            floor.steady.push(threads.pass()?);
            pool.steady.push(pool_pass(&mut filled, digest)?);
        } else {
            pool.steady.push(pool_pass(&mut filled, digest)?);
            floor.steady.push(threads.pass()?);
        }
        if round == 0 {
            pool.faults = Some((after_first - before, minor_faults(&pids) - before_pass));
        }
    }
    Ok((pool, floor))
}

/// The first pass of a fresh pool that treats its buffers as `variant`
/// does, and one more.
fn measure_variant(workers: usize, params: &Params, variant: Variant) -> BoxResult<Passes> {
    let mut filled = fill(workers, params, variant)?;
    let pids = filled.pool.worker_pids();
    let before = minor_faults(&pids);
    let first = pool_pass(&mut filled, variant.task())?;
    let after_first = minor_faults(&pids);
    let second = pool_pass(&mut filled, variant.task())?;
    let faults = Some((after_first - before, minor_faults(&pids) - after_first));
    Ok(Passes { first, steady: vec![second], faults })
}

/// What `pool.py pipeline` prints.
#[derive(Deserialize)]
struct PythonPipeline {
    first_ns: u64,
    steady_ns: Vec<u64>,
    threads_first_ns: u64,
    threads_ns: Vec<u64>,
}

fn python_rows(workers: usize, params: &Params, script: &Script) -> BoxResult<Option<(Passes, Passes)>> {
    progress(&format!("pipeline: Python shared_memory, {workers} process(es)"));
    let (parent, child) = affinity::pair();
    let args = [workers, params.buffers, BUFFER, params.steady_passes, parent, child];
    let Some(out) = script.run::<PythonPipeline>("pipeline", &args, params.python_timeout)? else {
        return Ok(None);
    };
    let passes = |first: u64, steady: &[u64]| Passes {
        first: Duration::from_nanos(first),
        steady: steady.iter().map(|&ns| Duration::from_nanos(ns)).collect(),
        faults: None,
    };
    Ok(Some((passes(out.first_ns, &out.steady_ns), passes(out.threads_first_ns, &out.threads_ns))))
}

/// One table line: a label and its passes, compared with `floor`.
struct Line {
    name: String,
    passes: Passes,
    /// Whether the row has a steady state of its own (variants: one pass).
    steady: bool,
}

pub fn measure_pipeline(mode: Mode) -> BoxResult<Section> {
    let params = Params::new(mode);
    let _pin = ParentPin::new();
    let thp = shmem_thp_mode();
    let script = Script::write()?;
    let mut section = Section::new(
        "pipeline",
        format!(
            "Pipeline: {} buffers of {} (filled by the parent, {} in all) digested (CRC-32 of every byte) by N \
             pool workers, handed over as SharedBuffer handles, vs N threads of one process over the same buffers \
             (the floor) and Python multiprocessing.Pool over shared_memory blocks (zlib.crc32); time per pass",
            params.buffers,
            format_bytes(BUFFER),
            format_bytes(params.buffers * BUFFER)
        ),
        vec![
            Column::new("first pass", "first_ns"),
            Column::new("steady p50", "steady_ns"),
            Column::new("spread", "steady_spread"),
            Column::new("steady GB/s", "steady_bytes_per_second"),
            Column::new("first vs floor", "first_vs_floor"),
            Column::new("steady vs floor", "steady_vs_floor"),
            Column::new("faults 1st/2nd", "faults"),
        ],
    );
    let bytes = (params.buffers * BUFFER) as f64;
    let mut goals = Vec::new();
    let mut python_missing = false;
    for workers in WORKERS {
        let (pool, floor) = measure_pool_and_floor(workers, &params)?;
        let populate = measure_variant(workers, &params, Variant::Populate)?;
        let huge = if thp == "advise" { Some(measure_variant(workers, &params, Variant::Huge)?) } else { None };
        let python = if python_missing { None } else { python_rows(workers, &params, &script)? };
        python_missing |= python.is_none();

        let n = if workers == 1 { "1 worker".to_owned() } else { format!("{workers} workers") };
        let t = if workers == 1 { "1 thread".to_owned() } else { format!("{workers} threads") };
        let mut lines = vec![
            Line { name: format!("shmpool Pool, {n}, SharedBuffer handles"), passes: pool.clone(), steady: true },
            Line {
                name: "  same, workers MADV_POPULATE_READ each buffer (fresh pool)".to_owned(),
                passes: populate.clone(),
                steady: false,
            },
        ];
        if let Some(huge) = &huge {
            lines.push(Line {
                name: "  same, MADV_HUGEPAGE on parent and workers (fresh pool)".to_owned(),
                passes: huge.clone(),
                steady: false,
            });
        }
        lines.push(Line { name: format!("floor: {t} of one process"), passes: floor.clone(), steady: true });
        if let Some((py_pool, py_threads)) = &python {
            lines.push(Line {
                name: format!("Python Pool({workers}) + shared_memory, zlib.crc32"),
                passes: py_pool.clone(),
                steady: true,
            });
            lines.push(Line {
                name: format!("Python floor: {t} of one process, zlib.crc32"),
                passes: py_threads.clone(),
                steady: true,
            });
        }
        let floor_steady = floor.steady_median().as_secs_f64();
        let py_floor = python.as_ref().map(|(_, threads)| threads.steady_median().as_secs_f64());
        for line in &lines {
            // Python rows are compared with Python's own floor (zlib's CRC is
            // not this crate's); the others with the N-thread floor.
            let reference = if line.name.starts_with("Python") { py_floor } else { Some(floor_steady) };
            let steady = line.passes.steady_median().as_secs_f64();
            let first = line.passes.first.as_secs_f64();
            if let Some(r) = reference.filter(|_| line.steady) {
                let ratio = r / steady.max(1e-12);
                if ratio > BEYOND_NOISE {
                    section.invalid(format!(
                        "{}: steady state {ratio:.2}x its floor's throughput; the same work cannot beat its floor \
                         by more than the noise ({BEYOND_NOISE:.2}x): the machine was disturbed",
                        line.name
                    ));
                }
            }
            section.row(
                line.name.clone(),
                vec![
                    Cell::time(line.passes.first),
                    if line.steady { Cell::time(line.passes.steady_median()) } else { Cell::Empty },
                    if line.steady && line.passes.steady.len() > 1 {
                        Cell::Text(format!("±{:.0}%", line.passes.spread() * 50.0))
                    } else {
                        Cell::Empty
                    },
                    if line.steady { Cell::Bandwidth(bytes / steady.max(1e-12)) } else { Cell::Empty },
                    reference.map_or(Cell::Empty, |r| Cell::Ratio(r / first.max(1e-12))),
                    match (line.steady, reference) {
                        (true, Some(r)) => Cell::Ratio(r / steady.max(1e-12)),
                        _ => Cell::Empty,
                    },
                    line.passes.faults.map_or(Cell::Empty, |(a, b)| Cell::Text(format!("{a} / {b}"))),
                ],
            );
        }
        let ratio = floor_steady / pool.steady_median().as_secs_f64().max(1e-12);
        goals.push(format!(
            "goal: steady state with {n} >= {GOAL:.2}x of the {t} floor's throughput: {ratio:.2}x, {}",
            verdict(ratio >= GOAL)
        ));
        if let Some((first_faults, _)) = pool.faults {
            let extra = pool.first.saturating_sub(pool.steady_median()).as_secs_f64();
            goals.push(format!(
                "  {n}: first pass {:.2}x of the floor; {first_faults} worker faults in it, {} per fault over the \
                 steady pass",
                floor_steady / pool.first.as_secs_f64().max(1e-12),
                crate::common::format_nanos(extra * 1e9 / first_faults.max(1) as f64),
            ));
        }
    }
    section.note("\"vs floor\": the floor's time / the row's (throughput share; 1.00x = as fast as the floor); Python rows against Python's floor");
    section.note("spread: ±half of (max - min) / median of the steady passes; faults: the workers' minor faults in pass 1 / pass 2");
    for goal in goals {
        section.note(goal);
    }
    section.note(format!(
        "MADV_HUGEPAGE: shmem transparent huge pages are [{thp}] here{}",
        if thp == "advise" {
            ": measured in the rows above".to_owned()
        } else {
            " (not `advise`): not tried, the kernel would ignore the advice; needs \
             /sys/kernel/mm/transparent_hugepage/shmem_enabled = advise (root)"
                .to_owned()
        }
    ));
    section.note(
        "recycling a buffer to the worker that touched it last: not measurable, the Pool has no per-worker submit; \
         the 2nd-pass fault count is what it would save (buffers that went to the other worker)",
    );
    if python_missing {
        section.note("Python rows: not measured (python3 is not on PATH)");
        python::missing();
    }
    Ok(section)
}
