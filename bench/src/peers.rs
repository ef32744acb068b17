//! Round-trip and throughput peers: procspawn, ipc-channel request/reply and
//! Python's multiprocessing.Pool; Python pickling for the buffer hand-off.
//!
//! The work is that of shmpool's rows: the request is a `u64` x, the reply
//! x * x ([`square`]), every reply checked. Every child process is reaped on
//! every path, and a peer that dies or hangs is an error after a deadline,
//! never a hang.

pub mod ipc;
mod proc_pool;
pub mod python;

use std::time::Duration;

use crate::common::{
    check_reply, format_bytes, measure_cpu, median, median_run, plural, progress, time_ops, BoxResult, Delivery,
    Latency, Mode, Throughput,
};

use self::ipc::IpcPeer;
use self::python::{Elapsed, Script, Timed};

/// How this binary is told to be a peer (main.rs dispatches `--peer rt-*`).
const PEER_FLAG: &str = "--peer";
/// How long a child may take to start and connect.
const PEER_START: Duration = Duration::from_secs(20);
/// How long a child may take to exit once told to.
const PEER_EXIT: Duration = Duration::from_secs(10);
/// How long one procspawn task may take before its worker counts as hung.
const PEER_REPLY: Duration = Duration::from_secs(30);
/// Tasks per message (ipc-channel) or per spawn (procspawn) when batched:
/// 4 KiB of requests, as in the pipe rows' 4 KiB writes.
const BATCH: u64 = 512;

/// Counts and budgets of one mode.
struct Params {
    ipc_warm_up: usize,
    ipc_iterations: usize,
    /// procspawn and Python round trips (tens of µs or more each).
    slow_warm_up: usize,
    slow_iterations: usize,
    slow_budget: Duration,
    runs: usize,
    ipc_tasks: u64,
    ipc_batched_tasks: u64,
    procspawn_tasks: u64,
    procspawn_batched_tasks: u64,
    python_tasks: u64,
    python_batched_tasks: u64,
    handoff_warm_up: usize,
    handoff_iterations: usize,
    handoff_budget: Duration,
    /// The longest a Python run may take before it counts as hung.
    python_timeout: Duration,
}

impl Params {
    fn new(mode: Mode) -> Params {
        Params {
            ipc_warm_up: mode.pick(2_000, 10_000),
            ipc_iterations: mode.pick(20_000, 100_000),
            slow_warm_up: mode.pick(200, 1_000),
            slow_iterations: mode.pick(5_000, 50_000),
            slow_budget: mode.pick(Duration::from_secs(1), Duration::from_secs(5)),
            runs: mode.pick(3, 5),
            ipc_tasks: mode.pick(200_000, 1_000_000),
            ipc_batched_tasks: mode.pick(2_000_000, 5_000_000),
            procspawn_tasks: mode.pick(10_000, 50_000),
            procspawn_batched_tasks: mode.pick(1_000_000, 5_000_000),
            python_tasks: mode.pick(20_000, 100_000),
            python_batched_tasks: mode.pick(1_000_000, 5_000_000),
            handoff_warm_up: mode.pick(100, 500),
            handoff_iterations: mode.pick(2_000, 10_000),
            handoff_budget: mode.pick(Duration::from_millis(500), Duration::from_secs(2)),
            python_timeout: mode.pick(Duration::from_secs(60), Duration::from_secs(600)),
        }
    }
}

/// Round-trip latency rows of the peers (an 8-byte request, its square back).
pub fn latency(mode: Mode) -> BoxResult<Vec<Latency>> {
    let params = Params::new(mode);
    let mut rows = Vec::new();
    // Parent and child of every row on one fixed pair of cores.
    let _pin = crate::affinity::ParentPin::new();
    let child = crate::affinity::pair().1;

    progress("ipc-channel request/reply latency");
    let peer = IpcPeer::<u64>::spawn()?;
    crate::affinity::pin_process(peer.pid(), child)?;
    let op = |x: u64| -> BoxResult<()> { Ok(check_reply(x, peer.call(x)?)?) };
    time_ops(params.ipc_warm_up, 0, None, op)?;
    let (samples, cpu) = measure_cpu(&[0, peer.pid()], || time_ops(0, params.ipc_iterations, None, op));
    let samples = samples?;
    peer.finish()?;
    rows.push(
        Latency::from_histogram("ipc-channel request/reply, child process", &samples)
            .with_cpu(cpu, samples.len() as usize),
    );

    progress("procspawn pool latency");
    let pool = proc_pool::pool(1)?;
    let worker = proc_pool::pid(&pool)?;
    crate::affinity::pin_process(worker, child)?;
    let op = |x: u64| -> BoxResult<()> { Ok(check_reply(x, proc_pool::call(&pool, x)?)?) };
    time_ops(params.slow_warm_up, 0, None, op)?;
    let (samples, cpu) =
        measure_cpu(&[0, worker], || time_ops(0, params.slow_iterations, Some(params.slow_budget), op));
    let samples = samples?;
    drop(pool);
    rows.push(Latency::from_histogram("procspawn pool", &samples).with_cpu(cpu, samples.len() as usize));

    progress("Python multiprocessing.Pool apply latency");
    let script = Script::write()?;
    let (parent, child) = crate::affinity::pair();
    let args = [params.slow_warm_up, params.slow_iterations, params.slow_budget.as_nanos() as usize, parent, child];
    match script.run::<Timed>("latency", &args, params.python_timeout)? {
        Some(timed) => rows.push(timed.latency("Python multiprocessing.Pool apply")),
        None => python::missing(),
    }
    Ok(rows)
}

/// Throughput rows of the peers (square `0..tasks`, replies checked in order).
pub fn throughput(mode: Mode, cores: usize) -> BoxResult<Vec<Throughput>> {
    let params = Params::new(mode);
    let cores = cores.max(1);
    let mut rows = Vec::new();

    progress("ipc-channel throughput, 1 task per send");
    let mut peer = IpcPeer::<u64>::spawn()?;
    peer.stream(params.ipc_tasks / 10, 1)?;
    rows.push(median_run(
        "ipc-channel, child process, 1 task per send".to_owned(),
        Delivery::OneByOne,
        1,
        params.ipc_tasks,
        params.runs,
        |tasks| peer.stream(tasks, 1),
    )?);
    peer.finish()?;

    progress(&format!("ipc-channel throughput, {BATCH} tasks per send"));
    let mut peer = IpcPeer::<Vec<u64>>::spawn()?;
    peer.stream(params.ipc_batched_tasks / 10, BATCH)?;
    rows.push(median_run(
        format!("ipc-channel, child process, {BATCH} tasks per send"),
        Delivery::Chunked,
        1,
        params.ipc_batched_tasks,
        params.runs,
        |tasks| peer.stream(tasks, BATCH),
    )?);
    peer.finish()?;

    let workers = plural(cores, "worker");
    progress(&format!("procspawn Pool throughput, {workers}, 1 task per spawn"));
    let pool = proc_pool::pool(cores)?;
    // Enough in flight to keep every worker busy; each spawn holds a few
    // descriptors until joined, so not all of them.
    let window = 64 * cores;
    proc_pool::stream_one(&pool, (window * 4) as u64, window)?;
    rows.push(median_run(
        format!("procspawn Pool, {workers}, 1 task per spawn"),
        Delivery::OneByOne,
        cores,
        params.procspawn_tasks,
        params.runs,
        |tasks| proc_pool::stream_one(&pool, tasks, window),
    )?);
    progress(&format!("procspawn Pool throughput, {workers}, {BATCH} tasks per spawn"));
    rows.push(median_run(
        format!("procspawn Pool, {workers}, {BATCH} tasks per spawn"),
        Delivery::Chunked,
        cores,
        params.procspawn_batched_tasks,
        params.runs,
        |tasks| proc_pool::stream_chunks(&pool, tasks, BATCH, 4 * cores),
    )?);
    drop(pool);

    let script = Script::write()?;
    let processes = if cores == 1 { "1 process".to_owned() } else { format!("{cores} processes") };
    let maps = [
        (Delivery::OneByOne, params.python_tasks, 1, "chunksize=1"),
        (Delivery::Batched, params.python_batched_tasks, 0, "default chunksize"),
    ];
    for (delivery, tasks, chunksize, label) in maps {
        progress(&format!("Python multiprocessing.Pool throughput, {processes}, map {label}"));
        let args = [cores, tasks as usize, chunksize, params.runs];
        let Some(runs) = script.run::<Elapsed>("throughput", &args, params.python_timeout)? else {
            python::missing();
            break;
        };
        let elapsed = median(runs.elapsed_ns.into_iter().map(Duration::from_nanos).collect());
        rows.push(Throughput {
            name: format!("Python Pool, {processes}, map {label}"),
            delivery,
            workers: cores,
            tasks,
            elapsed,
        });
    }
    Ok(rows)
}

/// Python pickling through a `multiprocessing.Pool` for each buffer size:
/// `None` where python3 is missing or the size is skipped.
pub fn python_handoff(mode: Mode, sizes: &[usize]) -> BoxResult<Vec<Option<Latency>>> {
    let params = Params::new(mode);
    let script = Script::write()?;
    let mut rows = Vec::with_capacity(sizes.len());
    // The largest size measured so far and its median, to foresee the next.
    let mut last: Option<(usize, Duration)> = None;
    for &bytes in sizes {
        let size = format_bytes(bytes);
        // Little or no warm-up for the sizes whose copies take 100s of ms
        // or seconds; their budget stops them after the minimum of 3.
        let warm_up = match bytes {
            b if b >= 1 << 30 => mode.pick(0, 1),
            b if b >= 64 << 20 => 2,
            b if b >= 1 << 20 => 10,
            _ => params.handoff_warm_up,
        };
        if let Some(why) = skip_handoff(mode, bytes, warm_up, params.handoff_budget, last) {
            eprintln!("Python Pool, pickled, {size}: skipped in quick mode ({why}); --full measures it");
            rows.push(None);
            continue;
        }
        progress(&format!("Python Pool, pickled, {size}"));
        let (parent, child) = crate::affinity::pair();
        let args =
            [bytes, warm_up, params.handoff_iterations, params.handoff_budget.as_nanos() as usize, parent, child];
        match script.run::<Timed>("handoff", &args, params.python_timeout) {
            Ok(Some(timed)) => {
                let row = timed.latency("Python Pool, pickled (copy path)");
                last = Some((bytes, row.p50));
                rows.push(Some(row));
            }
            Ok(None) => {
                python::missing();
                return Ok(sizes.iter().map(|_| None).collect());
            }
            // Python's copies of a 1 GiB buffer may not fit in memory: that
            // leaves the row out, not the run.
            Err(error) if bytes >= 1 << 30 => {
                eprintln!("Python Pool, pickled, {size}: not measured: {error}");
                rows.push(None);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(rows)
}

/// Python's `multiprocessing.shared_memory` hand-off for each buffer size:
/// one block per size, its name to a `Pool(1)` worker that attaches it once
/// (and keeps it) and reads its length and first byte. Parent and worker
/// pinned to the fixed pair of cores; the budget shared over `rounds`.
/// `None` where python3 is missing.
pub fn python_shm_handoff(mode: Mode, sizes: &[usize], rounds: usize) -> BoxResult<Vec<Option<Latency>>> {
    let params = Params::new(mode);
    let script = Script::write()?;
    let (parent, child) = crate::affinity::pair();
    let budget = params.handoff_budget / rounds.max(1) as u32;
    let mut args = vec![
        parent,
        child,
        params.handoff_warm_up,
        params.handoff_iterations / rounds.max(1),
        budget.as_nanos() as usize,
    ];
    args.extend_from_slice(sizes);
    progress("Python shared_memory hand-off, all sizes");
    let Some(timed) =
        script.run::<std::collections::HashMap<String, Timed>>("shm_handoff", &args, params.python_timeout)?
    else {
        python::missing();
        return Ok(sizes.iter().map(|_| None).collect());
    };
    Ok(sizes.iter().map(|bytes| timed.get(&bytes.to_string()).map(|t| t.latency("Python shared_memory"))).collect())
}

/// The longest the calls of one hand-off size may be expected to take in
/// quick mode.
const QUICK_SIZE_LIMIT: Duration = Duration::from_secs(5);

/// Why the hand-off of `bytes` is not measured in quick mode, if it is not:
/// the parent's buffer, its pickle, the worker's read buffer and its
/// unpickled copy all live at once, so at least 5 times the size must be
/// available; and its `warm_up` and timed calls must be expected to fit in
/// [`QUICK_SIZE_LIMIT`]. The time of a call is foreseen from the `last` size
/// measured when that was 1 MiB or more (where the copies dominate and time
/// grows with the size at least in proportion).
fn skip_handoff(
    mode: Mode,
    bytes: usize,
    warm_up: usize,
    budget: Duration,
    last: Option<(usize, Duration)>,
) -> Option<String> {
    if mode != Mode::Quick {
        return None;
    }
    let needed = 5 * bytes as u64;
    if let Some(available) = available_memory().filter(|&available| available < needed) {
        return Some(format!(
            "{} of memory available, Python's copies need about {}",
            format_gib(available),
            format_gib(needed)
        ));
    }
    let (last_bytes, last_p50) = last.filter(|&(last_bytes, _)| last_bytes >= 1 << 20)?;
    let each = last_p50.mul_f64(bytes as f64 / last_bytes as f64);
    let total = each * warm_up as u32 + (each * 3).max(budget);
    (total > QUICK_SIZE_LIMIT).then(|| {
        format!(
            "{} calls of at least {:.1} s each, foreseen from the {} median",
            warm_up + 3,
            each.as_secs_f64(),
            format_bytes(last_bytes)
        )
    })
}

/// MemAvailable of /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn format_gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Entry point of this module's child processes (`--peer rt-...`).
pub fn run_peer(role: &str, args: &[String]) -> BoxResult<()> {
    match role {
        ipc::ROLE => ipc::run_peer(args),
        _ => Err(format!("unknown peer role {role}").into()),
    }
}
