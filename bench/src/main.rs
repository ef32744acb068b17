//! `shmpool-bench`: what does a round trip through an shmpool worker cost, and
//! how many trivial tasks per second can a pool push, compared with the usual
//! ways of talking to another process (a pipe, a Unix stream socket) and with
//! the in-process lower bound (a crossbeam channel between two threads)?
//!
//! # What is measured
//!
//! * **Latency**: one request and its reply, with nothing else in flight. For
//!   shmpool that is `pool.submit(empty, ())?.wait()?` on a pool with one
//!   worker. For the baselines an 8-byte request goes to an echo peer, which
//!   squares it and sends the 8-byte answer back: a child process over two
//!   pipes, a child process over a Unix stream socket, or a thread over two
//!   bounded crossbeam channels. Every round trip is timed on its own with
//!   `Instant` after a warm-up; the table shows the median, p90, p99 and max.
//! * **Throughput**: `N` trivial tasks (`square(x) = x * x`), in tasks per
//!   second. *One-by-one* rows hand the tasks over singly, keeping a window of
//!   them in flight: `pool.submit` with up to a queue's worth of outstanding
//!   tickets, or one `write`/`send` per 8-byte request. *Batched* rows let the
//!   transport group them: `pool.map`, or one `write`/`send` per 512 requests.
//!   For the baselines a separate parent thread reads the replies while the
//!   main thread writes, so the peer never waits for the parent. Every run is
//!   checked (each reply must be the square of its request, in order) and the
//!   figure shown is the median of several runs.
//!
//! # How to read it
//!
//! The "vs shmpool" column compares the time per round trip (latency: the
//! medians) or per task (throughput) with the matching shmpool row: latency
//! rows with shmpool's latency, one-by-one rows with "shmpool, 1 worker,
//! submit" and batched rows with "shmpool, 1 worker, map". "8.30x slower"
//! means the row needs 8.3 times as long as that shmpool row. The crossbeam
//! rows never cross a process boundary: they are what a queue inside one
//! process costs at best, not a competitor.
//!
//! # Locks, shared map, buffer hand-off
//!
//! * **Locks**: each shmpool lock kind and, as the reference, a robust
//!   process-shared pthread mutex placed in the same named segment. Every
//!   round takes the lock, increments a counter in the segment with a plain
//!   load and store, and releases it. *Uncontended*: many rounds in this
//!   process alone, in nanoseconds per round (median of several runs).
//!   *Contended*: this process and a pool worker run the same number of
//!   rounds on the same lock at once; the table shows rounds per second of
//!   both together and the wall time per acquisition. The counter must end at
//!   the total, or the run fails: that checks the mutual exclusion. "vs
//!   pthread" compares times per round with the pthread row's.
//! * **Shared map**: a pool worker reads and increments one key of a
//!   `SharedMap<String, u64>` in the pool's segment, beside a Python
//!   `multiprocessing.Manager().dict()` used the same way from a child
//!   `multiprocessing.Process` (when `python3` is on `PATH`).
//! * **Buffer hand-off**: a `SharedBuffer` of 8 B to 1 GiB goes to a worker
//!   as a handle, is opened there and one byte of it read, and the answer
//!   comes back; beside it the same bytes copied through a pipe to a child
//!   process, which answers with one byte. The hand-offs of all sizes take
//!   turns, round after round, so that every size meets the same conditions
//!   (the pool adapts its spinning to recent history); the table shows the
//!   median and p99 of each size, and the ratio of the largest to the
//!   smallest (the goal is at most 2x).
//!
//! The pipe and socket peers are this binary itself, re-executed with the
//! hidden arguments `--peer pipe`, `--peer unix` or `--peer sink BYTES`.

mod common;
mod floor;
mod oneway;
mod peers;
mod report;

use std::collections::VecDeque;
use std::error::Error;
use std::fs::File;
use std::io::{self, Read, Write};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

type BoxResult<T> = Result<T, Box<dyn Error>>;

/// Size of one request or reply on the pipe and socket baselines.
const MESSAGE: usize = 8;
/// Queue capacity of the pools, and the window of outstanding tasks kept by
/// the one-by-one shmpool and crossbeam rows.
const WINDOW: usize = 256;
/// Requests per `write`/`send` in the batched baseline rows (4 KiB on pipes).
const BATCH: usize = 512;
/// Capacity, in batches, of the crossbeam channels of the batched row.
const BATCH_CHANNEL_CAPACITY: usize = 4;
/// Size of the read buffers of the peers and of the parent's reply readers.
const READ_BUFFER: usize = 64 * 1024;
/// Tasks run through a fresh pool before its throughput is measured.
const POOL_WARM_UP_TASKS: u64 = 10_000;
/// Hidden first argument that turns this binary into a pipe or socket peer.
const PEER_FLAG: &str = "--peer";
/// Peer kind (after [`PEER_FLAG`]) of the pipe copies of the hand-off rows.
const SINK: &str = "sink";

const USAGE: &str = "\
Usage: shmpool-bench [--quick | --full] [--json FILE]

Measures shmpool's round-trip latency and task throughput against pipes,
Unix sockets and crossbeam channels, its locks against a robust pthread
mutex, its shared map against a Python Manager dict, and buffer hand-offs
against pipe copies, and prints tables.

Options:
  --quick      fewer iterations, well under two minutes (the default)
  --full       more iterations, for steadier figures (several minutes)
  --json FILE  also write the figures to FILE as JSON
  -h, --help   print this help
";

/// The task of the latency rows: does nothing.
fn empty(_: ()) {}

/// Reads a buffer where it lies in shared memory (no copy, no deserialising).
/// It looks at the length and the two ends only, so the row measures the
/// hand-off, not the worker's use of the bytes.
fn sum_in_place(buffer: &shmpool::Archived<Vec<u8>>) -> u64 {
    buffer.len() as u64 + buffer.first().map_or(0, |&b| b as u64) + buffer.last().map_or(0, |&b| b as u64)
}

/// Takes an owned buffer: the caller clones it to submit it by value, and the
/// worker deserialises it, two more copies than reading it in place.
fn sum_owned(buffer: Vec<u8>) -> u64 {
    buffer.len() as u64 + buffer.first().map_or(0, |&b| b as u64) + buffer.last().map_or(0, |&b| b as u64)
}

/// The task of the throughput rows, and what the baseline peers compute.
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn main() -> BoxResult<()> {
    shmpool::init();
    procspawn::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(PEER_FLAG) {
        let rest = args.get(2..).unwrap_or(&[]);
        return match args.get(1).map(String::as_str) {
            Some(SINK) => run_sink(args.get(2).map(String::as_str)),
            Some(role) if role.starts_with("oneway-") => oneway::run_peer(role, rest),
            Some(role) if role.starts_with("rt-") => peers::run_peer(role, rest),
            transport => run_peer(transport),
        };
    }
    match parse_args(&args) {
        Ok(Action::Help) => {
            print!("{USAGE}");
            Ok(())
        }
        Ok(Action::Run(options)) => run(&options),
        Err(message) => {
            eprintln!("shmpool-bench: {message}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------
// Command line

/// How long to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Quick,
    Full,
}

/// Iteration counts for one [`Mode`].
struct Params {
    /// Untimed round trips before the timed ones, per latency row.
    latency_warm_up: usize,
    /// Timed round trips per latency row.
    latency_iterations: usize,
    /// Tasks per throughput run of the one-by-one rows.
    tasks: u64,
    /// Tasks per throughput run of the batched rows, which are much faster.
    batched_tasks: u64,
    /// Throughput runs per row; the median is reported.
    runs: usize,
    /// Runs per lock row, uncontended and contended; the median is reported.
    lock_runs: usize,
    /// Rounds (lock, increment, unlock) per uncontended lock run.
    lock_pairs: u64,
    /// Rounds per process in a contended lock run.
    contended_rounds: u64,
    /// Reads of the shared map by the worker.
    map_reads: u64,
    /// Updates of the shared map by the worker.
    map_updates: u64,
    /// Reads of the Manager dict by the Python child.
    python_reads: u64,
    /// Updates of the Manager dict by the Python child.
    python_updates: u64,
    /// Untimed and (at most) timed hand-offs per buffer size; also the pipe
    /// copies (fewer warm-ups from 64 MiB up).
    handoff_warm_up: usize,
    handoff_iterations: usize,
    /// Time after which the hand-off rounds, or a pipe row, stop early (3
    /// samples at least).
    handoff_budget: Duration,
    pipe_budget: Duration,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Quick => "quick",
            Mode::Full => "full",
        }
    }

    fn params(self) -> Params {
        match self {
            Mode::Quick => Params {
                latency_warm_up: 10_000,
                latency_iterations: 100_000,
                tasks: 1_000_000,
                batched_tasks: 5_000_000,
                runs: 5,
                lock_runs: 3,
                lock_pairs: 500_000,
                contended_rounds: 300_000,
                map_reads: 500_000,
                map_updates: 200_000,
                python_reads: 20_000,
                python_updates: 10_000,
                handoff_warm_up: 100,
                handoff_iterations: 2_000,
                handoff_budget: Duration::from_secs(2),
                pipe_budget: Duration::from_secs(2),
            },
            Mode::Full => Params {
                latency_warm_up: 20_000,
                latency_iterations: 300_000,
                tasks: 3_000_000,
                batched_tasks: 30_000_000,
                runs: 5,
                lock_runs: 5,
                lock_pairs: 2_000_000,
                contended_rounds: 1_000_000,
                map_reads: 2_000_000,
                map_updates: 1_000_000,
                python_reads: 100_000,
                python_updates: 50_000,
                handoff_warm_up: 500,
                handoff_iterations: 10_000,
                handoff_budget: Duration::from_secs(5),
                pipe_budget: Duration::from_secs(5),
            },
        }
    }
}

struct Options {
    mode: Mode,
    json: Option<PathBuf>,
    only: Option<Vec<String>>,
}

impl Options {
    fn wants(&self, section: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|s| s == section))
    }
}

enum Action {
    Run(Options),
    Help,
}

fn parse_args(args: &[String]) -> Result<Action, String> {
    let mut options = Options { mode: Mode::Quick, json: None, only: None };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Action::Help),
            "--quick" => options.mode = Mode::Quick,
            "--full" => options.mode = Mode::Full,
            "--only" => {
                let list = args.next().ok_or("--only needs a list of sections")?;
                options.only = Some(list.split(',').map(str::to_owned).collect());
            }
            "--json" => {
                let path = args.next().ok_or("--json needs a file name")?;
                options.json = Some(PathBuf::from(path));
            }
            other => match other.strip_prefix("--json=") {
                Some(path) if !path.is_empty() => options.json = Some(PathBuf::from(path)),
                _ => return Err(format!("unknown argument `{other}`")),
            },
        }
    }
    Ok(Action::Run(options))
}

// ---------------------------------------------------------------------------
// The whole run

fn run(options: &Options) -> BoxResult<()> {
    let params = options.mode.params();
    let machine = Machine::detect();
    let latency = if options.wants("latency") { measure_latency(&params)? } else { Vec::new() };
    let throughput = if options.wants("throughput") { measure_throughput(&params, machine.cores)? } else { Vec::new() };
    let payload = if options.wants("payload") { measure_payload(&params)? } else { Vec::new() };
    let idle = if options.wants("idle") {
        measure_idle_cpu()?
    } else {
        IdleCpu { window: Duration::ZERO, parent: Duration::ZERO, worker: Duration::ZERO }
    };
    let locks = if options.wants("locks") { measure_locks(&params)? } else { Vec::new() };
    let map = if options.wants("map") { measure_map(&params)? } else { Vec::new() };
    let handoff = if options.wants("handoff") { measure_handoff(&params)? } else { Vec::new() };
    let mode = match options.mode {
        Mode::Quick => common::Mode::Quick,
        Mode::Full => common::Mode::Full,
    };
    let floor =
        floor::Floor { round_trip: common::Latency::from_histogram("floor", &common::histogram()), memcpy: Vec::new() };
    let mut sections = Vec::new();
    if options.wants("oneway") {
        let oneway = oneway::measure(mode)?;
        sections = oneway::sections(&oneway, &floor);
    }
    let mut peer_latency = if options.wants("peers") { peers::latency(mode)? } else { Vec::new() };
    let peer_throughput = if options.wants("peers") { peers::throughput(mode, machine.cores)? } else { Vec::new() };
    let python_handoff = if options.wants("peers") { peers::python_handoff(mode, &HANDOFF_SIZES)? } else { Vec::new() };
    let mut extra = report::Section::new("peers", "Peers (temporary wiring)", common::Latency::columns());
    for row in peer_latency.drain(..) {
        extra.row(row.name.clone(), row.cells());
    }
    for (size, row) in HANDOFF_SIZES.iter().zip(python_handoff) {
        if let Some(row) = row {
            extra.row(format!("{} {}", row.name, format_bytes(*size)), row.cells());
        }
    }
    for row in peer_throughput {
        extra.note(format!("{}: {} {:.0} tasks/s", row.name, row.delivery.name(), row.tasks_per_second()));
    }
    sections.push(extra);
    let report = Report {
        mode: options.mode,
        params: &params,
        machine: &machine,
        latency: &latency,
        throughput: &throughput,
        payload: &payload,
        idle: &idle,
        locks: &locks,
        map: &map,
        handoff: &handoff,
    };
    print!("{}", report.table());
    for section in &sections {
        print!("{}", section.table());
    }
    if let Some(path) = &options.json {
        std::fs::write(path, report.json())?;
        println!("\nJSON written to {}", path.display());
    }
    Ok(())
}

fn progress(what: &str) {
    eprintln!("measuring {what} ...");
}

// ---------------------------------------------------------------------------
// Machine

/// What the figures were measured on.
struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
}

impl Machine {
    fn detect() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines().find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    (key.trim() == "model name").then(|| value.trim().to_owned())
                })
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let cores = thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|release| release.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Machine { cpu, cores, kernel }
    }
}

// ---------------------------------------------------------------------------
// Latency

/// Round-trip latency of one transport, from per-iteration samples.
struct Latency {
    name: String,
    median: Duration,
    p90: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    /// Timed round trips.
    samples: usize,
    /// CPU time both sides used per round trip (all their threads), when
    /// measured: spinning shows up here, not as speed.
    cpu_per_trip: Option<Duration>,
}

impl Latency {
    fn from_samples(name: &str, mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Latency {
            name: name.to_owned(),
            median: percentile(&samples, 50.0),
            p90: percentile(&samples, 90.0),
            p99: percentile(&samples, 99.0),
            p999: percentile(&samples, 99.9),
            max: samples.last().copied().unwrap_or_default(),
            samples: samples.len(),
            cpu_per_trip: None,
        }
    }

    /// Records `cpu` used over `trips` round trips.
    fn with_cpu(mut self, cpu: Duration, trips: usize) -> Self {
        self.cpu_per_trip = Some(cpu / trips.max(1) as u32);
        self
    }
}

/// CPU time of every thread of process `pid` (0: this process), from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU, first field).
fn process_cpu(pid: u32) -> Duration {
    let dir = if pid == 0 { "/proc/self/task".to_owned() } else { format!("/proc/{pid}/task") };
    let ns: u64 = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// Runs `f` and returns its result and the CPU time `pids` (0: this
/// process) used meanwhile.
fn measure_cpu<T>(pids: &[u32], f: impl FnOnce() -> T) -> (T, Duration) {
    let before: Vec<Duration> = pids.iter().map(|&p| process_cpu(p)).collect();
    let out = f();
    let used = pids.iter().zip(before).map(|(&p, b)| process_cpu(p).saturating_sub(b)).sum();
    (out, used)
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], percent: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (percent / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn measure_latency(params: &Params) -> BoxResult<Vec<Latency>> {
    progress("shmpool latency");
    let mut rows = vec![shmpool_latency(params)?];
    progress("shmpool remote call latency");
    rows.push(remote_latency(params)?);
    progress("shmpool latency without spinning");
    rows.push(shmpool_blocking_latency(params)?);
    for transport in [Transport::Pipe, Transport::Unix] {
        progress(&format!("{} latency", transport.label()));
        rows.push(peer_latency(params, transport)?);
    }
    progress("crossbeam latency");
    rows.push(crossbeam_latency(params)?);
    Ok(rows)
}

/// Runs `round_trip` for the warm-up, then times each of the measured
/// iterations. The argument is the iteration number.
fn time_round_trips(params: &Params, mut round_trip: impl FnMut(u64) -> BoxResult<()>) -> BoxResult<Vec<Duration>> {
    for i in 0..params.latency_warm_up {
        round_trip(i as u64)?;
    }
    let mut samples = Vec::with_capacity(params.latency_iterations);
    for i in 0..params.latency_iterations {
        let start = Instant::now();
        round_trip(i as u64)?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}

fn shmpool_latency(params: &Params) -> BoxResult<Latency> {
    shmpool_latency_with(params, build_pool(1)?, "shmpool submit + wait")
}

/// The same with no spinning on either side: every hand-off sleeps on a futex.
fn shmpool_blocking_latency(params: &Params) -> BoxResult<Latency> {
    let pool = shmpool::Pool::builder().workers(1).queue_capacity(WINDOW).spin(Duration::ZERO).build()?;
    shmpool_latency_with(params, pool, "shmpool, no spinning (futex only)")
}

fn shmpool_latency_with(params: &Params, pool: shmpool::Pool, name: &str) -> BoxResult<Latency> {
    let mut pids = vec![0];
    pids.extend(pool.worker_pids());
    let (samples, cpu) = measure_cpu(&pids, || {
        time_round_trips(params, |_| {
            pool.submit(empty, ())?.wait()?;
            Ok(())
        })
    });
    Ok(Latency::from_samples(name, samples?).with_cpu(cpu, params.latency_warm_up + params.latency_iterations))
}

fn peer_latency(params: &Params, transport: Transport) -> BoxResult<Latency> {
    let mut peer = Peer::spawn(transport)?;
    let pids = [0, peer.child.id()];
    let (samples, cpu) = measure_cpu(&pids, || time_round_trips(params, |i| Ok(peer.round_trip(i)?)));
    peer.finish()?;
    Ok(Latency::from_samples(transport.label(), samples?)
        .with_cpu(cpu, params.latency_warm_up + params.latency_iterations))
}

fn crossbeam_latency(params: &Params) -> BoxResult<Latency> {
    let (request_tx, request_rx) = bounded(1);
    let (reply_tx, reply_rx) = bounded(1);
    let (samples, cpu) = measure_cpu(&[0], || {
        thread::scope(|s| {
            s.spawn(move || echo_squares(request_rx, reply_tx));
            let samples = time_round_trips(params, |i| {
                request_tx.send(i)?;
                check_reply(i, reply_rx.recv()?)?;
                Ok(())
            });
            // Closing the request channel ends the echo thread, error or not.
            drop(request_tx);
            samples
        })
    });
    Ok(Latency::from_samples("crossbeam channel, thread", samples?)
        .with_cpu(cpu, params.latency_warm_up + params.latency_iterations))
}

/// Body of the crossbeam echo thread: squares requests until the request
/// channel closes.
fn echo_squares(requests: Receiver<u64>, replies: Sender<u64>) {
    for x in requests {
        if replies.send(square(x)).is_err() {
            break;
        }
    }
}

fn check_reply(request: u64, reply: u64) -> io::Result<()> {
    if reply == square(request) {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidData, format!("reply {reply} to request {request} is not its square")))
    }
}

// ---------------------------------------------------------------------------
// Throughput

/// How the tasks of a throughput row are handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// One `submit`, `write` or `send` per task, a window of them in flight.
    OneByOne,
    /// `pool.map`, or many tasks per `write` or `send`.
    Batched,
}

impl Delivery {
    fn name(self) -> &'static str {
        match self {
            Delivery::OneByOne => "one-by-one",
            Delivery::Batched => "batched",
        }
    }
}

/// Throughput of one transport: the median run of `tasks` tasks.
struct Throughput {
    name: String,
    delivery: Delivery,
    tasks: u64,
    elapsed: Duration,
}

impl Throughput {
    fn tasks_per_second(&self) -> f64 {
        self.tasks as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn seconds_per_task(&self) -> f64 {
        self.elapsed.as_secs_f64() / self.tasks.max(1) as f64
    }

    /// The shmpool row that this row is compared with: the first row of the
    /// same delivery, which is shmpool's with one worker.
    fn reference<'a>(&self, rows: &'a [Throughput]) -> Option<&'a Throughput> {
        rows.iter().find(|row| row.delivery == self.delivery)
    }
}

/// One throughput run: how long it took and the replies, in request order.
type Run = (Duration, Vec<u64>);

fn measure_throughput(params: &Params, cores: usize) -> BoxResult<Vec<Throughput>> {
    let mut worker_counts = vec![1];
    if cores > 1 {
        worker_counts.push(cores);
    }
    let mut rows = Vec::new();
    for workers in worker_counts {
        progress(&format!("shmpool throughput, {}", plural(workers, "worker")));
        rows.extend(shmpool_throughput(params, workers)?);
    }
    for transport in [Transport::Pipe, Transport::Unix] {
        progress(&format!("{} throughput", transport.label()));
        rows.extend(peer_throughput(params, transport)?);
    }
    progress("crossbeam throughput");
    rows.extend(crossbeam_throughput(params)?);
    progress("shmpool channel throughput");
    rows.push(channel_throughput(params)?);
    Ok(rows)
}

/// A remote object for the call round trip: squares what it is given.
struct Squarer {
    calls: u64,
}

fn make_squarer(_: ()) -> Squarer {
    Squarer { calls: 0 }
}

fn square_call(s: &mut Squarer, x: u64) -> u64 {
    s.calls += 1;
    x * x
}

/// `Remote::call` round trips: the Kkit-style remote object RPC.
fn remote_latency(params: &Params) -> BoxResult<Latency> {
    let remote = shmpool::Remote::spawn(make_squarer, ())?;
    let pids = [0, remote.pid()];
    let (samples, cpu) = measure_cpu(&pids, || {
        time_round_trips(params, |i| {
            let r = remote.call(square_call, i)?;
            Ok(check_reply(i, r)?)
        })
    });
    Ok(Latency::from_samples("shmpool Remote::call", samples?)
        .with_cpu(cpu, params.latency_warm_up + params.latency_iterations))
}

/// A channel child: receives a count, then streams the squares of 0..count.
fn stream_squares(chan: shmpool::Channel<u64, u64>, _: ()) {
    let Ok(n) = chan.recv() else { return };
    for x in 0..n {
        if chan.send(&(x * x)).is_err() {
            return;
        }
    }
}

/// One-way channel throughput: a child streams messages, one `send` each.
fn channel_throughput(params: &Params) -> BoxResult<Throughput> {
    median_run(params, "shmpool channel, one-way, 1 message per send".into(), Delivery::OneByOne, |tasks| {
        let chan = shmpool::start(stream_squares, ())?;
        let start = Instant::now();
        chan.send(&tasks)?;
        let mut replies = Vec::with_capacity(tasks as usize);
        for _ in 0..tasks {
            replies.push(chan.recv()?);
        }
        Ok((start.elapsed(), replies))
    })
}

/// Runs `run` `params.runs` times on the number of tasks for `delivery`,
/// checks every run's replies and returns the median duration as a row.
fn median_run(
    params: &Params,
    name: String,
    delivery: Delivery,
    mut run: impl FnMut(u64) -> BoxResult<Run>,
) -> BoxResult<Throughput> {
    let tasks = match delivery {
        Delivery::OneByOne => params.tasks,
        Delivery::Batched => params.batched_tasks,
    };
    let mut times = Vec::with_capacity(params.runs);
    for _ in 0..params.runs {
        let (elapsed, replies) = run(tasks)?;
        check_squares(tasks, &replies)?;
        times.push(elapsed);
    }
    times.sort_unstable();
    Ok(Throughput { name, delivery, tasks, elapsed: times[times.len() / 2] })
}

/// Checks that `replies` are the squares of `0..tasks`, in order.
fn check_squares(tasks: u64, replies: &[u64]) -> io::Result<()> {
    if replies.len() as u64 != tasks {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} replies to {tasks} requests", replies.len()),
        ));
    }
    (0..tasks).zip(replies).try_for_each(|(request, &reply)| check_reply(request, reply))
}

fn build_pool(workers: usize) -> Result<shmpool::Pool, shmpool::Error> {
    shmpool::Pool::builder().workers(workers).queue_capacity(WINDOW).build()
}

fn shmpool_throughput(params: &Params, workers: usize) -> BoxResult<Vec<Throughput>> {
    let pool = build_pool(workers)?;
    // Let every worker start up and fault in its memory before timing.
    shmpool_map_run(&pool, POOL_WARM_UP_TASKS)?;
    let label = format!("shmpool, {}", plural(workers, "worker"));
    let submit =
        median_run(params, format!("{label}, submit"), Delivery::OneByOne, |tasks| shmpool_submit_run(&pool, tasks))?;
    let map = median_run(params, format!("{label}, map"), Delivery::Batched, |tasks| shmpool_map_run(&pool, tasks))?;
    Ok(vec![submit, map])
}

/// Submits the tasks one by one, waiting for the oldest ticket whenever
/// [`WINDOW`] of them are outstanding.
fn shmpool_submit_run(pool: &shmpool::Pool, tasks: u64) -> BoxResult<Run> {
    let start = Instant::now();
    let mut replies = Vec::with_capacity(tasks as usize);
    let mut outstanding = VecDeque::with_capacity(WINDOW);
    for x in 0..tasks {
        if outstanding.len() == WINDOW {
            let oldest: shmpool::Ticket<u64> = outstanding.pop_front().expect("a full window is not empty");
            replies.push(oldest.wait()?);
        }
        outstanding.push_back(pool.submit(square, x)?);
    }
    for ticket in outstanding {
        replies.push(ticket.wait()?);
    }
    Ok((start.elapsed(), replies))
}

fn shmpool_map_run(pool: &shmpool::Pool, tasks: u64) -> BoxResult<Run> {
    let start = Instant::now();
    let replies = pool.map(square, 0..tasks)?.collect::<Result<Vec<u64>, _>>()?;
    Ok((start.elapsed(), replies))
}

fn peer_throughput(params: &Params, transport: Transport) -> BoxResult<Vec<Throughput>> {
    let mut peer = Peer::spawn(transport)?;
    // Make sure the child is up and running before the clock starts.
    peer.round_trip(1)?;
    let label = transport.label();
    let one_by_one =
        median_run(params, format!("{label}, 8 B writes"), Delivery::OneByOne, |tasks| Ok(peer.stream(tasks, 1)?))?;
    let batched =
        median_run(params, format!("{label}, {} KiB writes", BATCH * MESSAGE / 1024), Delivery::Batched, |tasks| {
            Ok(peer.stream(tasks, BATCH)?)
        })?;
    peer.finish()?;
    Ok(vec![one_by_one, batched])
}

fn crossbeam_throughput(params: &Params) -> BoxResult<Vec<Throughput>> {
    let one_by_one = median_run(params, "crossbeam, 1 task per send".to_owned(), Delivery::OneByOne, |tasks| {
        Ok(crossbeam_one_by_one_run(tasks))
    })?;
    let batched = median_run(params, format!("crossbeam, {BATCH} tasks per send"), Delivery::Batched, |tasks| {
        Ok(crossbeam_batched_run(tasks))
    })?;
    Ok(vec![one_by_one, batched])
}

/// A sender thread, an echo thread and this thread as the receiver, over two
/// channels of [`WINDOW`] tasks each.
fn crossbeam_one_by_one_run(tasks: u64) -> Run {
    let (request_tx, request_rx) = bounded(WINDOW);
    let (reply_tx, reply_rx) = bounded(WINDOW);
    let start = Instant::now();
    let replies = thread::scope(|s| {
        s.spawn(move || echo_squares(request_rx, reply_tx));
        s.spawn(move || {
            for x in 0..tasks {
                if request_tx.send(x).is_err() {
                    break;
                }
            }
        });
        reply_rx.iter().collect()
    });
    (start.elapsed(), replies)
}

/// Like [`crossbeam_one_by_one_run`], with [`BATCH`] tasks per message.
fn crossbeam_batched_run(tasks: u64) -> Run {
    let (request_tx, request_rx) = bounded::<Vec<u64>>(BATCH_CHANNEL_CAPACITY);
    let (reply_tx, reply_rx) = bounded(BATCH_CHANNEL_CAPACITY);
    let start = Instant::now();
    let replies = thread::scope(|s| {
        s.spawn(move || {
            for mut batch in request_rx {
                batch.iter_mut().for_each(|x| *x = square(*x));
                if reply_tx.send(batch).is_err() {
                    break;
                }
            }
        });
        s.spawn(move || {
            let mut next = 0;
            while next < tasks {
                let end = tasks.min(next + BATCH as u64);
                if request_tx.send((next..end).collect()).is_err() {
                    break;
                }
                next = end;
            }
        });
        let mut replies = Vec::with_capacity(tasks as usize);
        reply_rx.iter().for_each(|batch| replies.extend(batch));
        replies
    });
    (start.elapsed(), replies)
}

// ---------------------------------------------------------------------------
// Pipe and Unix socket peers

/// How the parent talks to a peer child process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// Requests on the child's stdin pipe, replies on its stdout pipe.
    Pipe,
    /// One Unix stream socket, the child's end passed as its stdin.
    Unix,
}

impl Transport {
    fn arg(self) -> &'static str {
        match self {
            Transport::Pipe => "pipe",
            Transport::Unix => "unix",
        }
    }

    fn from_arg(arg: &str) -> Option<Self> {
        [Transport::Pipe, Transport::Unix].into_iter().find(|transport| transport.arg() == arg)
    }

    fn label(self) -> &'static str {
        match self {
            Transport::Pipe => "pipe, child process",
            Transport::Unix => "unix socket, child process",
        }
    }
}

/// A child process running [`run_peer`], seen from the parent.
struct Peer {
    child: Child,
    reader: Box<dyn Read + Send>,
    writer: Box<dyn Write + Send>,
}

impl Peer {
    fn spawn(transport: Transport) -> io::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args([PEER_FLAG, transport.arg()]);
        match transport {
            Transport::Pipe => {
                let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err(io::Error::other("child pipes missing"));
                };
                Ok(Peer { child, reader: Box::new(stdout), writer: Box::new(stdin) })
            }
            Transport::Unix => {
                let (ours, theirs) = UnixStream::pair()?;
                let child = command.stdin(Stdio::from(OwnedFd::from(theirs))).spawn()?;
                // The command holds our copy of the child's end; close it.
                drop(command);
                Ok(Peer { child, writer: Box::new(ours.try_clone()?), reader: Box::new(ours) })
            }
        }
    }

    /// Sends one request and waits for its reply.
    fn round_trip(&mut self, request: u64) -> io::Result<()> {
        self.writer.write_all(&request.to_le_bytes())?;
        let mut reply = [0; MESSAGE];
        self.reader.read_exact(&mut reply)?;
        check_reply(request, u64::from_le_bytes(reply))
    }

    /// Streams the requests `0..tasks`, `batch` per write, while a second
    /// thread reads the replies.
    fn stream(&mut self, tasks: u64, batch: usize) -> io::Result<Run> {
        let start = Instant::now();
        let replies = thread::scope(|s| {
            let reader = s.spawn(|| read_replies(&mut self.reader, tasks));
            let written = write_requests(&mut self.writer, tasks, batch);
            let replies = reader.join().map_err(|_| io::Error::other("reply reader panicked"))?;
            written.and(replies)
        })?;
        Ok((start.elapsed(), replies))
    }

    /// Closes the connection, which ends the child, and checks its exit.
    fn finish(self) -> io::Result<()> {
        let Peer { mut child, reader, writer } = self;
        // Both ends must go: with a socket, they are the same connection.
        drop((reader, writer));
        let status = child.wait()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("peer exited with {status}")))
        }
    }
}

fn write_requests(writer: &mut impl Write, tasks: u64, batch: usize) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(batch * MESSAGE);
    let mut next = 0;
    while next < tasks {
        let end = tasks.min(next + batch as u64);
        buffer.clear();
        (next..end).for_each(|x| buffer.extend_from_slice(&x.to_le_bytes()));
        writer.write_all(&buffer)?;
        next = end;
    }
    Ok(())
}

fn read_replies(reader: impl Read, tasks: u64) -> io::Result<Vec<u64>> {
    let mut words = WordReader::new(reader);
    let mut replies = Vec::with_capacity(tasks as usize);
    while (replies.len() as u64) < tasks {
        if words.read_words(&mut replies)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection early"));
        }
    }
    Ok(replies)
}

/// Entry point of a peer child: squares 8-byte requests from stdin until it
/// closes. Replies go to stdout (pipe) or back over stdin (socket).
fn run_peer(transport: Option<&str>) -> BoxResult<()> {
    let transport = transport.and_then(Transport::from_arg).ok_or("usage: shmpool-bench --peer pipe|unix")?;
    let stdin = io::stdin().as_fd().try_clone_to_owned()?;
    match transport {
        Transport::Pipe => {
            let stdout = io::stdout().as_fd().try_clone_to_owned()?;
            serve_squares(File::from(stdin), File::from(stdout))?;
        }
        Transport::Unix => {
            let socket = UnixStream::from(stdin);
            serve_squares(&socket, &socket)?;
        }
    }
    Ok(())
}

/// Answers every complete request read so far with one write.
fn serve_squares(reader: impl Read, mut writer: impl Write) -> io::Result<()> {
    let mut words = WordReader::new(reader);
    let mut requests = Vec::new();
    let mut replies = Vec::new();
    while words.read_words(&mut requests)? > 0 {
        replies.clear();
        for x in requests.drain(..) {
            replies.extend_from_slice(&square(x).to_le_bytes());
        }
        writer.write_all(&replies)?;
    }
    Ok(())
}

/// Cuts a byte stream into 8-byte little-endian words, whatever sizes the
/// reads come in.
struct WordReader<R> {
    inner: R,
    buffer: Box<[u8]>,
    /// Bytes of an incomplete word at the start of `buffer`.
    partial: usize,
}

impl<R: Read> WordReader<R> {
    fn new(inner: R) -> Self {
        WordReader { inner, buffer: vec![0; READ_BUFFER].into_boxed_slice(), partial: 0 }
    }

    /// Reads until at least one more word is complete and appends all complete
    /// words to `out`. Returns how many were appended: 0 at a clean end of
    /// stream.
    fn read_words(&mut self, out: &mut Vec<u64>) -> io::Result<usize> {
        loop {
            let read = match self.inner.read(&mut self.buffer[self.partial..]) {
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if read == 0 {
                return match self.partial {
                    0 => Ok(0),
                    _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended inside a message")),
                };
            }
            let filled = self.partial + read;
            let complete = filled / MESSAGE;
            out.extend(self.buffer[..complete * MESSAGE].chunks_exact(MESSAGE).map(decode_word));
            self.buffer.copy_within(complete * MESSAGE..filled, 0);
            self.partial = filled - complete * MESSAGE;
            if complete > 0 {
                return Ok(complete);
            }
        }
    }
}

/// Decodes one little-endian request or reply.
fn decode_word(bytes: &[u8]) -> u64 {
    let mut word = [0; MESSAGE];
    word.copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

// ---------------------------------------------------------------------------
// Report

/// Everything measured in one run, ready to print or serialise.
struct Report<'a> {
    mode: Mode,
    params: &'a Params,
    machine: &'a Machine,
    latency: &'a [Latency],
    throughput: &'a [Throughput],
    payload: &'a [Latency],
    idle: &'a IdleCpu,
    locks: &'a [LockRow],
    map: &'a [MapRow],
    handoff: &'a [Handoff],
}

impl Report<'_> {
    /// Time per round trip of `row`, relative to shmpool's (the first row).
    fn latency_ratio(&self, row: &Latency) -> Option<f64> {
        let reference = self.latency.first()?;
        Some(row.median.as_secs_f64() / reference.median.as_secs_f64().max(1e-12))
    }

    /// Time per task of `row`, relative to its shmpool reference row.
    fn throughput_ratio(&self, row: &Throughput) -> Option<f64> {
        let reference = row.reference(self.throughput)?;
        Some(row.seconds_per_task() / reference.seconds_per_task().max(1e-15))
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let machine = self.machine;
        out += &format!(
            "\nshmpool-bench ({} mode) on {}, {}, Linux {}\n",
            self.mode.name(),
            machine.cpu,
            plural(machine.cores, "core"),
            machine.kernel
        );

        out += &format!(
            "\nRound-trip latency of one empty task, shmpool with 1 worker: \
             {} timed round trips after {} for warm-up\n",
            self.params.latency_iterations, self.params.latency_warm_up
        );
        let width = name_width(self.latency.iter().map(|row| row.name.as_str()));
        out += &format!(
            "  {:<width$}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  vs shmpool (median)\n",
            "", "median", "p90", "p99", "p99.9", "max", "CPU/trip"
        );
        for row in self.latency {
            out += &format!(
                "  {:<width$}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {}\n",
                row.name,
                format_duration(row.median),
                format_duration(row.p90),
                format_duration(row.p99),
                format_duration(row.p999),
                format_duration(row.max),
                row.cpu_per_trip.map_or("-".to_owned(), format_duration),
                describe_ratio(self.latency_ratio(row)),
            );
        }
        out += "  CPU/trip: CPU time of both processes (all threads) per round trip, warm-up included\n";

        out += &format!(
            "\nThroughput, trivial tasks (square a u64), median of {} runs \
             of {} tasks (one-by-one) or {} tasks (batched)\n",
            self.params.runs, self.params.tasks, self.params.batched_tasks
        );
        let width = name_width(self.throughput.iter().map(|row| row.name.as_str()));
        out += &format!("  {:<width$}  {:>10}  {:>12}  {:>10}  vs shmpool\n", "", "delivery", "tasks/s", "per task");
        for row in self.throughput {
            out += &format!(
                "  {:<width$}  {:>10}  {:>12}  {:>10}  {}\n",
                row.name,
                row.delivery.name(),
                format_rate(row.tasks_per_second()),
                format_duration(Duration::from_secs_f64(row.seconds_per_task())),
                describe_ratio(self.throughput_ratio(row)),
            );
        }
        for delivery in [Delivery::OneByOne, Delivery::Batched] {
            if let Some(reference) = self.throughput.iter().find(|row| row.delivery == delivery) {
                out += &format!("  {} rows are compared with \"{}\"\n", delivery.name(), reference.name);
            }
        }
        out += "  \"slower\"/\"faster\": time per round trip or per task, \
                relative to that shmpool row\n";

        out += &format!(
            "\nPayload: a {} argument, round trip through 1 worker ({} timed after {} for warm-up)\n",
            format_bytes(PAYLOAD),
            self.params.latency_iterations / 50,
            self.params.latency_warm_up / 50
        );
        let width = name_width(self.payload.iter().map(|row| row.name.as_str()));
        out += &format!("  {:<width$}  {:>10}  {:>10}  copies of the payload\n", "", "median", "p99");
        let copy = self.payload.iter().find(|r| r.name.starts_with("memcpy")).map(|r| r.median.as_secs_f64());
        let empty = self.latency.first().map_or(0.0, |r| r.median.as_secs_f64());
        for row in self.payload {
            let copies = copy.filter(|c| *c > 0.0).map(|c| {
                let extra = if row.name.starts_with("memcpy") {
                    row.median.as_secs_f64()
                } else {
                    row.median.as_secs_f64() - empty
                };
                format!("{:.2}", extra.max(0.0) / c)
            });
            out += &format!(
                "  {:<width$}  {:>10}  {:>10}  {}\n",
                row.name,
                format_duration(row.median),
                format_duration(row.p99),
                copies.unwrap_or_default(),
            );
        }
        out += "  copies = (round trip - empty-task round trip) / memcpy time\n";

        let idle = self.idle;
        out += &format!(
            "\nIdle CPU: while the parent waits {} for a task that sleeps, parent {:.3} ms, worker {:.3} ms of CPU time\n",
            format_duration(idle.window),
            idle.parent.as_secs_f64() * 1e3,
            idle.worker.as_secs_f64() * 1e3,
        );
        out += &self.locks_table();
        out += &self.map_table();
        out += &self.handoff_table();
        out
    }

    /// The pthread row, which the lock rows are compared with.
    fn pthread_row(&self) -> Option<&LockRow> {
        self.locks.iter().find(|row| row.kind == LockUnderTest::Pthread)
    }

    /// Uncontended and contended time of `row` relative to the pthread row's.
    fn lock_ratios(&self, row: &LockRow) -> (Option<f64>, Option<f64>) {
        let Some(pthread) = self.pthread_row() else { return (None, None) };
        let uncontended = row.uncontended_ns / pthread.uncontended_ns.max(1e-3);
        let contended = match (&row.contended, &pthread.contended) {
            (Some(row), Some(pthread)) => Some(row.nanos_per_acquisition() / pthread.nanos_per_acquisition().max(1e-3)),
            _ => None,
        };
        (Some(uncontended), contended)
    }

    fn locks_table(&self) -> String {
        let mut out = format!(
            "\nLocks: lock, increment a counter in the segment, unlock. Uncontended: {} rounds in one process; \
             contended: this process and a worker, {} rounds each on one lock; median of {} runs\n",
            self.params.lock_pairs, self.params.contended_rounds, self.params.lock_runs
        );
        let width = name_width(self.locks.iter().map(|row| row.kind.label()));
        out += &format!(
            "  {:<width$}  {:>11}  {:>13}  {:>13}  {:>11}  {:>13}\n",
            "", "uncontended", "vs pthread", "contended/s", "per acquire", "vs pthread"
        );
        for row in self.locks {
            let (uncontended_ratio, contended_ratio) = self.lock_ratios(row);
            let (rate, per) = match &row.contended {
                Some(c) => (format_rate(c.pairs_per_second()), format_nanos(c.nanos_per_acquisition())),
                None => ("-".to_owned(), "-".to_owned()),
            };
            out += &format!(
                "  {:<width$}  {:>11}  {:>13}  {:>13}  {:>11}  {:>13}\n",
                row.kind.label(),
                format_nanos(row.uncontended_ns),
                describe_ratio(uncontended_ratio),
                rate,
                per,
                if row.contended.is_some() { describe_ratio(contended_ratio) } else { String::new() },
            );
        }
        out += "  contended/s: rounds per second of both processes together; per acquire: wall time / rounds;\n  \
                the counter ended at the total in every contended row (checked); read holds do not exclude\n  \
                each other, so the read row has no contended run\n";
        out
    }

    /// shmpool's map rates relative to the Python row's: (reads, updates).
    fn map_ratios(&self) -> Option<(f64, f64)> {
        let (shm_reads, shm_updates) = self.map.first()?.rates?;
        let (py_reads, py_updates) = self.map.get(1)?.rates?;
        Some((shm_reads / py_reads.max(1e-9), shm_updates / py_updates.max(1e-9)))
    }

    fn map_table(&self) -> String {
        let mut out =
            "\nShared map, used from another process: reads of key \"k\" and read-modify-write increments of it\n"
                .to_owned();
        let width = name_width(self.map.iter().map(|row| row.name.as_str()));
        out += &format!("  {:<width$}  {:>8}  {:>10}  {:>8}  {:>10}\n", "", "reads", "reads/s", "updates", "updates/s");
        for row in self.map {
            match row.rates {
                Some((reads, updates)) => {
                    out += &format!(
                        "  {:<width$}  {:>8}  {:>10}  {:>8}  {:>10}\n",
                        row.name,
                        row.reads,
                        format_rate(reads),
                        row.updates,
                        format_rate(updates)
                    )
                }
                None => out += &format!("  {:<width$}  {}\n", row.name, row.note),
            }
        }
        match self.map_ratios() {
            Some((reads, updates)) => {
                out += &format!(
                    "  shmpool vs Manager dict: reads {reads:.0}x faster, updates {updates:.0}x faster (goal: 100x or more){}\n",
                    if reads >= 100.0 && updates >= 100.0 { "" } else { "  GOAL MISSED" }
                )
            }
            None => out += "  shmpool vs Manager dict: no Python figures\n",
        }
        out
    }

    /// Median 1 GiB hand-off over median 8 B hand-off (largest over smallest).
    fn handoff_spread(&self) -> Option<f64> {
        let (first, last) = (self.handoff.first()?, self.handoff.last()?);
        Some(last.shmpool.median.as_secs_f64() / first.shmpool.median.as_secs_f64().max(1e-12))
    }

    fn handoff_table(&self) -> String {
        let mut out =
            "\nBuffer hand-off: a SharedBuffer handle to 1 worker, which opens it and reads 1 byte, and back; \
                       vs a pipe copy of the bytes to a child process and a 1-byte reply\n"
                .to_owned();
        out += &format!(
            "  {:>7}  {:>10}  {:>10}  {:>6}  {:>10}  {:>10}  {:>6}  {:>10}  {}\n",
            "size", "median", "p99", "runs", "pipe med.", "pipe p99", "runs", "pipe MB/s", "pipe vs shmpool"
        );
        for row in self.handoff {
            let (shmpool, pipe) = (&row.shmpool, &row.pipe);
            let mb_per_second = row.bytes as f64 / pipe.median.as_secs_f64().max(1e-12) / 1e6;
            out += &format!(
                "  {:>7}  {:>10}  {:>10}  {:>6}  {:>10}  {:>10}  {:>6}  {:>10.1}  {}\n",
                format_bytes(row.bytes),
                format_duration(shmpool.median),
                format_duration(shmpool.p99),
                shmpool.samples,
                format_duration(pipe.median),
                format_duration(pipe.p99),
                pipe.samples,
                mb_per_second,
                describe_ratio(Some(pipe.median.as_secs_f64() / shmpool.median.as_secs_f64().max(1e-12))),
            );
        }
        if let (Some(spread), Some(first), Some(last)) =
            (self.handoff_spread(), self.handoff.first(), self.handoff.last())
        {
            out += &format!(
                "  {} hand-off / {} hand-off (medians): {spread:.2}x (goal: within 2x){}\n",
                format_bytes(last.bytes),
                format_bytes(first.bytes),
                if spread <= 2.0 { "" } else { "  GOAL MISSED" }
            );
        }
        out += "  \"slower\": the pipe copy needs that many times the hand-off's time\n";
        out
    }

    fn json(&self) -> String {
        let machine = self.machine;
        let latency: Vec<String> = self
            .latency
            .iter()
            .map(|row| {
                format!(
                    "      {{\"name\": {}, \"median_ns\": {}, \"p90_ns\": {}, \"p99_ns\": {}, \
                     \"p999_ns\": {}, \"max_ns\": {}, \"cpu_per_trip_ns\": {}, \"time_vs_shmpool\": {}}}",
                    json_string(&row.name),
                    row.median.as_nanos(),
                    row.p90.as_nanos(),
                    row.p99.as_nanos(),
                    row.p999.as_nanos(),
                    row.max.as_nanos(),
                    row.cpu_per_trip.map_or("null".to_owned(), |c| c.as_nanos().to_string()),
                    json_number(self.latency_ratio(row)),
                )
            })
            .collect();
        let payload: Vec<String> = self
            .payload
            .iter()
            .map(|row| {
                format!(
                    "      {{\"name\": {}, \"median_ns\": {}, \"p99_ns\": {}}}",
                    json_string(&row.name),
                    row.median.as_nanos(),
                    row.p99.as_nanos(),
                )
            })
            .collect();
        let throughput: Vec<String> = self
            .throughput
            .iter()
            .map(|row| {
                format!(
                    "      {{\"name\": {}, \"delivery\": {}, \"tasks\": {}, \"seconds\": {:.6}, \
                     \"tasks_per_second\": {:.1}, \"reference\": {}, \"time_vs_reference\": {}}}",
                    json_string(&row.name),
                    json_string(row.delivery.name()),
                    row.tasks,
                    row.elapsed.as_secs_f64(),
                    row.tasks_per_second(),
                    json_string(row.reference(self.throughput).map_or("", |r| &r.name)),
                    json_number(self.throughput_ratio(row)),
                )
            })
            .collect();
        let locks: Vec<String> = self
            .locks
            .iter()
            .map(|row| {
                let (uncontended_ratio, contended_ratio) = self.lock_ratios(row);
                format!(
                    "      {{\"name\": {}, \"uncontended_ns_per_round\": {:.2}, \"uncontended_vs_pthread\": {}, \
                     \"contended_rounds\": {}, \"contended_seconds\": {}, \"contended_rounds_per_second\": {}, \
                     \"contended_ns_per_acquisition\": {}, \"contended_vs_pthread\": {}}}",
                    json_string(row.kind.label()),
                    row.uncontended_ns,
                    json_number(uncontended_ratio),
                    row.contended.as_ref().map_or("null".to_owned(), |c| c.pairs.to_string()),
                    json_number(row.contended.as_ref().map(|c| c.elapsed.as_secs_f64())),
                    json_number(row.contended.as_ref().map(Contended::pairs_per_second)),
                    json_number(row.contended.as_ref().map(Contended::nanos_per_acquisition)),
                    json_number(contended_ratio),
                )
            })
            .collect();
        let map: Vec<String> = self
            .map
            .iter()
            .map(|row| {
                format!(
                    "      {{\"name\": {}, \"reads\": {}, \"updates\": {}, \"reads_per_second\": {}, \
                     \"updates_per_second\": {}, \"note\": {}}}",
                    json_string(&row.name),
                    row.reads,
                    row.updates,
                    json_number(row.rates.map(|r| r.0)),
                    json_number(row.rates.map(|r| r.1)),
                    json_string(&row.note),
                )
            })
            .collect();
        let handoff: Vec<String> = self
            .handoff
            .iter()
            .map(|row| {
                let (shmpool, pipe) = (&row.shmpool, &row.pipe);
                format!(
                    "      {{\"bytes\": {}, \"median_ns\": {}, \"p99_ns\": {}, \"samples\": {}, \
                     \"pipe_median_ns\": {}, \"pipe_p99_ns\": {}, \"pipe_samples\": {}, \
                     \"pipe_time_vs_handoff\": {}}}",
                    row.bytes,
                    shmpool.median.as_nanos(),
                    shmpool.p99.as_nanos(),
                    shmpool.samples,
                    pipe.median.as_nanos(),
                    pipe.p99.as_nanos(),
                    pipe.samples,
                    json_number(Some(pipe.median.as_secs_f64() / shmpool.median.as_secs_f64().max(1e-12))),
                )
            })
            .collect();
        let (map_reads_ratio, map_updates_ratio) = self.map_ratios().unzip();
        format!(
            "{{\n  \"mode\": {},\n  \"machine\": {{\"cpu\": {}, \"cores\": {}, \"kernel\": {}}},\n  \
             \"latency\": {{\n    \"warm_up\": {},\n    \"iterations\": {},\n    \"rows\": [\n{}\n    ]\n  }},\n  \
             \"throughput\": {{\n    \"one_by_one_tasks\": {},\n    \"batched_tasks\": {},\n    \"runs\": {},\n    \"rows\": [\n{}\n    ]\n  }},\n  \
             \"payload\": {{\n    \"bytes\": {},\n    \"rows\": [\n{}\n    ]\n  }},\n  \
             \"idle_cpu\": {{\"window_ns\": {}, \"parent_cpu_ns\": {}, \"worker_cpu_ns\": {}}},\n  \
             \"locks\": {{\n    \"uncontended_rounds\": {},\n    \"contended_rounds_per_process\": {},\n    \"runs\": {},\n    \
             \"rows\": [\n{}\n    ]\n  }},\n  \
             \"shared_map\": {{\n    \"reads_vs_manager_dict\": {},\n    \"updates_vs_manager_dict\": {},\n    \
             \"rows\": [\n{}\n    ]\n  }},\n  \
             \"handoff\": {{\n    \"largest_vs_smallest\": {},\n    \"rows\": [\n{}\n    ]\n  }}\n}}\n",
            json_string(self.mode.name()),
            json_string(&machine.cpu),
            machine.cores,
            json_string(&machine.kernel),
            self.params.latency_warm_up,
            self.params.latency_iterations,
            latency.join(",\n"),
            self.params.tasks,
            self.params.batched_tasks,
            self.params.runs,
            throughput.join(",\n"),
            PAYLOAD,
            payload.join(",\n"),
            self.idle.window.as_nanos(),
            self.idle.parent.as_nanos(),
            self.idle.worker.as_nanos(),
            self.params.lock_pairs,
            self.params.contended_rounds,
            self.params.lock_runs,
            locks.join(",\n"),
            json_number(map_reads_ratio),
            json_number(map_updates_ratio),
            map.join(",\n"),
            json_number(self.handoff_spread()),
            handoff.join(",\n"),
        )
    }
}

// ---------------------------------------------------------------------------
// Payload and idle CPU

/// Size of the large argument in the payload rows.
const PAYLOAD: usize = 1 << 20;

/// A large argument through one worker, read in place or deserialised, beside
/// one plain copy of the same bytes in this process.
fn measure_payload(params: &Params) -> BoxResult<Vec<Latency>> {
    progress("payload");
    let iterations = (params.latency_iterations / 50).max(10);
    let warm_up = (params.latency_warm_up / 50).max(1);
    let buffer: Vec<u8> = (0..PAYLOAD).map(|i| i as u8).collect();
    let expect = sum_owned(buffer.clone());
    let pool = build_pool(1)?;
    let mut rows = Vec::new();
    let mut time = |name: &str, mut f: Box<dyn FnMut() -> BoxResult<()> + '_>| -> BoxResult<()> {
        for _ in 0..warm_up {
            f()?;
        }
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let start = Instant::now();
            f()?;
            samples.push(start.elapsed());
        }
        rows.push(Latency::from_samples(name, samples));
        Ok(())
    };
    time(
        "shmpool, read in place (submit_archived)",
        Box::new(|| {
            let got = pool.submit_archived(sum_in_place, &buffer)?.wait()?;
            check_sum(got, expect)
        }),
    )?;
    time(
        "shmpool, by value (clone + submit)",
        Box::new(|| {
            let got = pool.submit(sum_owned, buffer.clone())?.wait()?;
            check_sum(got, expect)
        }),
    )?;
    let mut target = vec![0u8; PAYLOAD];
    time(
        "memcpy in this process (one copy)",
        Box::new(|| {
            target.copy_from_slice(&buffer);
            std::hint::black_box(&mut target);
            Ok(())
        }),
    )?;
    Ok(rows)
}

fn check_sum(got: u64, expect: u64) -> BoxResult<()> {
    if got == expect {
        Ok(())
    } else {
        Err(format!("worker read a sum of {got}, expected {expect}").into())
    }
}

/// CPU time used by an idle pool: parent and worker, over a quiet window.
struct IdleCpu {
    window: Duration,
    parent: Duration,
    worker: Duration,
}

/// Runs a burst of tasks, then measures the CPU time the parent and the
/// worker burn while nothing happens: spinning must stop, sleeping must begin.
fn measure_idle_cpu() -> BoxResult<IdleCpu> {
    progress("idle CPU");
    let pool = build_pool(1)?;
    for i in 0..10_000u64 {
        pool.submit(square, i)?.wait()?;
    }
    let worker = *pool.worker_pids().first().ok_or("pool has no worker")?;
    let window = Duration::from_secs(1);
    let (p0, w0) = (cpu_time("self")?, cpu_time(&worker.to_string())?);
    // The parent waits as a user would: blocked on a result that is slow to come.
    let slow = pool.submit(sleep_ms, window.as_millis() as u64)?;
    slow.wait()?;
    let (p1, w1) = (cpu_time("self")?, cpu_time(&worker.to_string())?);
    Ok(IdleCpu { window, parent: p1.saturating_sub(p0), worker: w1.saturating_sub(w0) })
}

/// A task that sleeps: the worker is busy doing nothing, the parent waits.
fn sleep_ms(ms: u64) -> u64 {
    thread::sleep(Duration::from_millis(ms));
    ms
}

/// CPU time of the main thread of process `pid` (or "self"), in nanoseconds
/// from `/proc/<pid>/schedstat` (its first field). Parent and worker do all
/// their waiting on their main thread.
fn cpu_time(pid: &str) -> BoxResult<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    let ns: u64 = stat.split_whitespace().next().ok_or("empty schedstat")?.parse()?;
    Ok(Duration::from_nanos(ns))
}

// ---------------------------------------------------------------------------
// Shared timing helpers

/// Times `f` up to `iterations` times after `warm_up` untimed calls, stopping
/// early (after at least 3 samples) once the timed calls have used `budget`.
fn time_samples(
    warm_up: usize,
    iterations: usize,
    budget: Duration,
    mut f: impl FnMut() -> BoxResult<()>,
) -> BoxResult<Vec<Duration>> {
    for _ in 0..warm_up {
        f()?;
    }
    let mut samples = Vec::with_capacity(iterations.min(100_000));
    let mut spent = Duration::ZERO;
    while samples.len() < iterations && (samples.len() < 3 || spent < budget) {
        let start = Instant::now();
        f()?;
        let took = start.elapsed();
        spent += took;
        samples.push(took);
    }
    Ok(samples)
}

/// Waits, spinning politely, until `done` holds; fails after ten seconds.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> BoxResult<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        thread::yield_now();
    }
    Ok(())
}

/// Median of unsorted durations (zero when empty).
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// A segment name unique to this run.
fn segment_name(what: &str) -> String {
    format!("bench-{what}-{}", std::process::id())
}

// ---------------------------------------------------------------------------
// Locks

/// Directory kind of the blocks this benchmark names in its own segments.
const BENCH_BLOCK_KIND: u32 = 99;
/// The block of [`LockWords`].
const WORDS_BLOCK: &str = "counter";
/// The block of the pthread mutex.
const PTHREAD_BLOCK: &str = "pthread-mutex";
/// Bytes given to the pthread mutex: its size rounded up to a cache line.
const PTHREAD_BLOCK_LEN: u64 = (std::mem::size_of::<libc::pthread_mutex_t>() as u64).div_ceil(64) * 64;
// Arena blocks are 16-byte aligned, enough for the mutex.
const _: () = assert!(std::mem::align_of::<libc::pthread_mutex_t>() <= 16);

/// The locks of the lock rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LockUnderTest {
    Mutex,
    RwWrite,
    RwRead,
    Spin,
    Auth,
    Pthread,
}

impl LockUnderTest {
    const ALL: [LockUnderTest; 6] = [
        LockUnderTest::Mutex,
        LockUnderTest::RwWrite,
        LockUnderTest::RwRead,
        LockUnderTest::Spin,
        LockUnderTest::Auth,
        LockUnderTest::Pthread,
    ];

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.code() == code)
    }

    fn label(self) -> &'static str {
        match self {
            LockUnderTest::Mutex => "shmpool Mutex",
            LockUnderTest::RwWrite => "shmpool RwLock, write",
            LockUnderTest::RwRead => "shmpool RwLock, read",
            LockUnderTest::Spin => "shmpool SpinLock",
            LockUnderTest::Auth => "shmpool AuthLock",
            LockUnderTest::Pthread => "pthread mutex, robust + pshared",
        }
    }

    /// Whether a hold excludes other holders: only those have a contended
    /// row, where two processes increment one counter.
    fn exclusive(self) -> bool {
        self != LockUnderTest::RwRead
    }
}

/// Words shared by the parent and the worker of the lock rows: the counter
/// the locks guard and the start handshake.
struct LockWords<'a> {
    counter: &'a AtomicU64,
    /// Set by the worker once it has opened everything.
    ready: &'a AtomicU64,
    /// Set by the parent to start both loops together.
    go: &'a AtomicU64,
}

impl LockWords<'_> {
    fn open(seg: &shmpool::Segment) -> BoxResult<LockWords<'_>> {
        let (block, _) = seg.named(WORDS_BLOCK, BENCH_BLOCK_KIND, 0, 64, |block| {
            for word in 0..3 {
                seg.get::<AtomicU64>(block.offset + 8 * word)?.store(0, Ordering::Relaxed);
            }
            Ok(())
        })?;
        Ok(LockWords {
            counter: seg.get(block.offset)?,
            ready: seg.get(block.offset + 8)?,
            go: seg.get(block.offset + 16)?,
        })
    }

    fn reset(&self) {
        for word in [self.counter, self.ready, self.go] {
            word.store(0, Ordering::SeqCst);
        }
    }
}

/// A robust, process-shared pthread mutex in a segment block.
struct PthreadMutex {
    /// Keeps the mapping that `mutex` points into alive.
    _seg: shmpool::Segment,
    mutex: *mut libc::pthread_mutex_t,
}

/// A held [`PthreadMutex`]; unlocks when dropped.
struct PthreadGuard<'a>(&'a PthreadMutex);

impl PthreadMutex {
    /// Creates the mutex in `seg` (initialising it), or opens the one there.
    fn open(seg: &shmpool::Segment) -> BoxResult<PthreadMutex> {
        let (block, _) = seg.named(PTHREAD_BLOCK, BENCH_BLOCK_KIND, 1, PTHREAD_BLOCK_LEN, |block| {
            let mutex = seg.ptr(block.offset, PTHREAD_BLOCK_LEN)?.cast::<libc::pthread_mutex_t>();
            Ok(init_robust_mutex(mutex)?)
        })?;
        let mutex = seg.ptr(block.offset, PTHREAD_BLOCK_LEN)?.cast::<libc::pthread_mutex_t>();
        Ok(PthreadMutex { _seg: seg.clone(), mutex })
    }

    fn lock(&self) -> io::Result<PthreadGuard<'_>> {
        // SAFETY: `mutex` points to a mutex initialised by `init_robust_mutex`
        // in a block that `_seg` keeps mapped; a process-shared mutex may be
        // used through any mapping of its memory.
        match unsafe { libc::pthread_mutex_lock(self.mutex) } {
            0 => Ok(PthreadGuard(self)),
            libc::EOWNERDEAD => {
                // SAFETY: as above; EOWNERDEAD means we hold the lock, so we may
                // mark it consistent and release it.
                unsafe {
                    libc::pthread_mutex_consistent(self.mutex);
                    libc::pthread_mutex_unlock(self.mutex);
                }
                Err(io::Error::other("pthread mutex holder died"))
            }
            code => Err(io::Error::from_raw_os_error(code)),
        }
    }
}

impl Drop for PthreadGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: the guard exists only while this thread holds the mutex,
        // which is initialised and mapped (see `PthreadMutex::lock`).
        unsafe { libc::pthread_mutex_unlock(self.0.mutex) };
    }
}

/// Initialises the memory at `mutex` as a robust, process-shared mutex.
fn init_robust_mutex(mutex: *mut libc::pthread_mutex_t) -> io::Result<()> {
    let check = |code: libc::c_int| if code == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(code)) };
    let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    // SAFETY: `attr` is initialised by pthread_mutexattr_init before any other
    // use and destroyed once; `mutex` is the start of a writable arena block
    // of at least its size, 16-byte aligned (asserted enough above), that
    // nobody else can see yet (the segment directory publishes it only after
    // this returns).
    unsafe {
        check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
        let result = check(libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED))
            .and_then(|()| check(libc::pthread_mutexattr_setrobust(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST)))
            .and_then(|()| check(libc::pthread_mutex_init(mutex, attr.as_ptr())));
        libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
        result
    }
}

/// One lock of [`LockUnderTest`], opened in this process.
enum OpenLock {
    Mutex(shmpool::sync::Mutex),
    RwLock { lock: shmpool::sync::RwLock, read: bool },
    Spin(shmpool::sync::SpinLock),
    Auth(shmpool::sync::AuthLock),
    Pthread(PthreadMutex),
}

impl OpenLock {
    /// Creates or opens the lock of `kind` in `seg` (the two read-write rows
    /// share one lock).
    fn open(seg: &shmpool::Segment, kind: LockUnderTest) -> BoxResult<OpenLock> {
        Ok(match kind {
            LockUnderTest::Mutex => OpenLock::Mutex(seg.mutex("m")?),
            LockUnderTest::RwWrite => OpenLock::RwLock { lock: seg.rwlock("rw")?, read: false },
            LockUnderTest::RwRead => OpenLock::RwLock { lock: seg.rwlock("rw")?, read: true },
            LockUnderTest::Spin => OpenLock::Spin(seg.spin_lock("s")?),
            LockUnderTest::Auth => OpenLock::Auth(seg.auth_lock("a")?),
            LockUnderTest::Pthread => OpenLock::Pthread(PthreadMutex::open(seg)?),
        })
    }

    /// `rounds` times: take the lock, add one to `counter` with a plain load
    /// and store (an increment is lost if exclusion fails), release. A read
    /// hold only loads the counter.
    fn rounds(&self, rounds: u64, counter: &AtomicU64) -> BoxResult<()> {
        use shmpool::sync::LockError;
        match self {
            OpenLock::Mutex(lock) => {
                hold_rounds(rounds, counter, true, || lock.lock().map_err(LockError::without_guard))
            }
            OpenLock::RwLock { lock, read: true } => {
                hold_rounds(rounds, counter, false, || lock.read().map_err(LockError::without_guard))
            }
            OpenLock::RwLock { lock, read: false } => {
                hold_rounds(rounds, counter, true, || lock.write().map_err(LockError::without_guard))
            }
            OpenLock::Spin(lock) => {
                hold_rounds(rounds, counter, true, || lock.lock().map_err(LockError::without_guard))
            }
            OpenLock::Auth(lock) => {
                hold_rounds(rounds, counter, true, || lock.lock().map_err(LockError::without_guard))
            }
            OpenLock::Pthread(lock) => hold_rounds(rounds, counter, true, || lock.lock()),
        }
    }
}

/// The loop of [`OpenLock::rounds`], for one kind of guard.
fn hold_rounds<G, E: Error + 'static>(
    rounds: u64,
    counter: &AtomicU64,
    increment: bool,
    mut acquire: impl FnMut() -> Result<G, E>,
) -> BoxResult<()> {
    for _ in 0..rounds {
        let guard = acquire()?;
        if increment {
            counter.store(counter.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        } else {
            std::hint::black_box(counter.load(Ordering::Relaxed));
        }
        drop(guard);
    }
    Ok(())
}

/// Task of the contended lock rows, run in a pool worker: opens the named
/// segment, says it is ready, waits for the parent's go and runs `rounds`
/// rounds on the lock of kind `kind`. Returns the nanoseconds they took.
fn hammer_lock((segment, kind, rounds): (String, u8, u64)) -> u64 {
    match hammer_lock_in_worker(&segment, kind, rounds) {
        Ok(nanos) => nanos,
        Err(error) => panic!("contended lock worker: {error}"),
    }
}

fn hammer_lock_in_worker(segment: &str, kind: u8, rounds: u64) -> BoxResult<u64> {
    let kind = LockUnderTest::from_code(kind).ok_or("unknown lock kind")?;
    let seg = shmpool::Segment::open(segment)?;
    let lock = OpenLock::open(&seg, kind)?;
    let words = LockWords::open(&seg)?;
    words.ready.store(1, Ordering::SeqCst);
    wait_for("the parent's go", || words.go.load(Ordering::SeqCst) == 1)?;
    let start = Instant::now();
    lock.rounds(rounds, words.counter)?;
    Ok(start.elapsed().as_nanos() as u64)
}

/// Two processes taking one lock in turn, as fast as they can.
struct Contended {
    /// Lock acquisitions by both processes together.
    pairs: u64,
    /// From the go to the end of the slower process.
    elapsed: Duration,
}

impl Contended {
    fn pairs_per_second(&self) -> f64 {
        self.pairs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn nanos_per_acquisition(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e9 / self.pairs.max(1) as f64
    }
}

/// One lock's figures.
struct LockRow {
    kind: LockUnderTest,
    /// Nanoseconds per lock, increment, unlock in one process.
    uncontended_ns: f64,
    contended: Option<Contended>,
}

fn measure_locks(params: &Params) -> BoxResult<Vec<LockRow>> {
    progress("locks");
    let pool = build_pool(1)?;
    let name = segment_name("locks");
    let seg = shmpool::Segment::create(&name, 1 << 20)?;
    let words = LockWords::open(&seg)?;
    let locks = LockUnderTest::ALL.map(|kind| OpenLock::open(&seg, kind).map(|lock| (kind, lock)));
    let mut rows = Vec::new();
    for opened in locks {
        let (kind, lock) = opened?;
        if let OpenLock::Auth(auth) = &lock {
            for pid in pool.worker_pids() {
                auth.add_operator(pid)?;
            }
        }
        progress(&format!("locks: {}", kind.label()));
        let uncontended_ns = uncontended_lock(params, kind, &lock, &words)?;
        let contended = match kind.exclusive() {
            true => Some(contended_lock(params, &pool, &name, kind, &lock, &words)?),
            false => None,
        };
        rows.push(LockRow { kind, uncontended_ns, contended });
    }
    // The segment is unlinked when `seg`, its creator's handle, goes.
    drop(seg);
    Ok(rows)
}

/// Median nanoseconds per round over `params.runs` runs in this process alone.
fn uncontended_lock(params: &Params, kind: LockUnderTest, lock: &OpenLock, words: &LockWords) -> BoxResult<f64> {
    let pairs = params.lock_pairs;
    lock.rounds(pairs / 10, words.counter)?;
    let mut times = Vec::with_capacity(params.lock_runs);
    for _ in 0..params.lock_runs {
        words.counter.store(0, Ordering::SeqCst);
        let start = Instant::now();
        lock.rounds(pairs, words.counter)?;
        times.push(start.elapsed());
        let count = words.counter.load(Ordering::SeqCst);
        if kind.exclusive() && count != pairs {
            return Err(format!("{}: counter is {count} after {pairs} increments", kind.label()).into());
        }
    }
    Ok(median(times).as_secs_f64() * 1e9 / pairs.max(1) as f64)
}

/// The median of `params.lock_runs` runs of [`contended_run`].
fn contended_lock(
    params: &Params,
    pool: &shmpool::Pool,
    segment: &str,
    kind: LockUnderTest,
    lock: &OpenLock,
    words: &LockWords,
) -> BoxResult<Contended> {
    let mut times = Vec::with_capacity(params.lock_runs);
    for _ in 0..params.lock_runs {
        times.push(contended_run(params, pool, segment, kind, lock, words)?.elapsed);
    }
    Ok(Contended { pairs: 2 * params.contended_rounds, elapsed: median(times) })
}

/// The parent and a pool worker each run `params.contended_rounds` rounds on
/// the same lock at once; the counter must end at the total.
fn contended_run(
    params: &Params,
    pool: &shmpool::Pool,
    segment: &str,
    kind: LockUnderTest,
    lock: &OpenLock,
    words: &LockWords,
) -> BoxResult<Contended> {
    let rounds = params.contended_rounds;
    words.reset();
    let ticket = pool.submit(hammer_lock, (segment.to_owned(), kind.code(), rounds))?;
    wait_for("the lock worker to start", || words.ready.load(Ordering::SeqCst) == 1)?;
    let start = Instant::now();
    words.go.store(1, Ordering::SeqCst);
    lock.rounds(rounds, words.counter)?;
    ticket.wait()?;
    let elapsed = start.elapsed();
    let pairs = 2 * rounds;
    let count = words.counter.load(Ordering::SeqCst);
    if count != pairs {
        return Err(format!(
            "{}: MUTUAL EXCLUSION FAILED: the counter is {count} after {pairs} locked increments by two processes",
            kind.label()
        )
        .into());
    }
    Ok(Contended { pairs, elapsed })
}

// ---------------------------------------------------------------------------
// Shared map

/// The map of the shared-map rows, in the pool's segment.
const MAP_NAME: &str = "counts";
/// The one key read and updated.
const MAP_KEY: &str = "k";

/// Task of the shared-map row, in a pool worker: `reads` reads of the key,
/// then `updates` increments. Returns the nanoseconds of each phase.
fn map_ops((reads, updates): (u64, u64)) -> (u64, u64) {
    match map_ops_in_worker(reads, updates) {
        Ok(nanos) => nanos,
        Err(error) => panic!("shared map worker: {error}"),
    }
}

fn map_ops_in_worker(reads: u64, updates: u64) -> BoxResult<(u64, u64)> {
    let seg = shmpool::pool_segment().ok_or("not in a pool worker")?;
    let map = seg.map::<String, u64>(MAP_NAME, shmpool::LockKind::Mutex)?;
    let mut sum = 0u64;
    let start = Instant::now();
    for _ in 0..reads {
        let value = map.get(MAP_KEY)?.ok_or("the key is missing")?;
        sum = sum.wrapping_add(value.to_native());
    }
    let read_nanos = start.elapsed().as_nanos() as u64;
    std::hint::black_box(sum);
    let start = Instant::now();
    for _ in 0..updates {
        map.update(MAP_KEY, |old: Option<u64>| old.unwrap_or(0) + 1)?;
    }
    Ok((read_nanos, start.elapsed().as_nanos() as u64))
}

/// One row of the shared-map table: rates, or why there are none.
struct MapRow {
    name: String,
    reads: u64,
    updates: u64,
    /// Reads and updates per second.
    rates: Option<(f64, f64)>,
    note: String,
}

fn measure_map(params: &Params) -> BoxResult<Vec<MapRow>> {
    progress("shared map");
    let pool = build_pool(1)?;
    let map = pool.segment().map::<String, u64>(MAP_NAME, shmpool::LockKind::Mutex)?;
    map.insert(&MAP_KEY.to_owned(), &0)?;
    // Warm up the worker, its mapping and the arena's free lists.
    pool.submit(map_ops, (params.map_reads / 10, params.map_updates / 10))?.wait()?;
    map.insert(&MAP_KEY.to_owned(), &0)?;
    let (reads, updates) = (params.map_reads, params.map_updates);
    let (read_nanos, update_nanos) = pool.submit(map_ops, (reads, updates))?.wait()?;
    let value = map.get(MAP_KEY)?.ok_or("the key is missing")?.to_native();
    if value != updates {
        return Err(format!("shared map: the value is {value} after {updates} updates").into());
    }
    let rate = |ops: u64, nanos: u64| ops as f64 * 1e9 / nanos.max(1) as f64;
    let mut rows = vec![MapRow {
        name: "shmpool SharedMap<String, u64>, Mutex; get / update(+1)".to_owned(),
        reads,
        updates,
        rates: Some((rate(reads, read_nanos), rate(updates, update_nanos))),
        note: String::new(),
    }];
    progress("Python Manager dict");
    rows.push(python_manager_dict(params)?);
    Ok(rows)
}

/// The Python baseline: a `multiprocessing.Process` child reads and updates a
/// `Manager().dict()`; prints "reads/s updates/s".
const PYTHON_SCRIPT: &str = r#"
import multiprocessing as mp
import sys
import time


def child(d, lock, reads, updates, out):
    for _ in range(min(reads, 1000)):
        d['k']
    start = time.perf_counter()
    for _ in range(reads):
        d['k']
    read_time = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(updates):
        with lock:
            d['k'] += 1
    out.put((read_time, time.perf_counter() - start))


if __name__ == '__main__':
    reads, updates = int(sys.argv[1]), int(sys.argv[2])
    with mp.Manager() as manager:
        d = manager.dict()
        d['k'] = 0
        lock = mp.Lock()
        out = mp.Queue()
        p = mp.Process(target=child, args=(d, lock, reads, updates, out))
        p.start()
        read_time, update_time = out.get()
        p.join()
        if p.exitcode != 0 or d['k'] != updates:
            sys.exit('child failed, or d["k"] is %r after %d updates' % (d['k'], updates))
        print(reads / read_time, updates / update_time)
"#;

fn python_manager_dict(params: &Params) -> BoxResult<MapRow> {
    let (reads, updates) = (params.python_reads, params.python_updates);
    let mut row = MapRow {
        name: "Python Manager().dict(), child Process; d['k'] / with mp.Lock(): d['k'] += 1".to_owned(),
        reads,
        updates,
        rates: None,
        note: String::new(),
    };
    let script = std::env::temp_dir().join(format!("shmpool-bench-{}.py", std::process::id()));
    std::fs::write(&script, PYTHON_SCRIPT)?;
    let output = Command::new("python3").arg(&script).arg(reads.to_string()).arg(updates.to_string()).output();
    let _ = std::fs::remove_file(&script);
    let output = match output {
        Ok(output) => output,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            row.note = "python3 is not on PATH: not measured".to_owned();
            return Ok(row);
        }
        Err(error) => return Err(error.into()),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("python3 {} failed ({}): {}", script.display(), output.status, stderr.trim()).into());
    }
    let stdout = String::from_utf8(output.stdout)?;
    let rates: Vec<f64> = stdout.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
    match rates[..] {
        [read_rate, update_rate] => row.rates = Some((read_rate, update_rate)),
        _ => return Err(format!("unexpected output from python3: {stdout:?}").into()),
    }
    Ok(row)
}

// ---------------------------------------------------------------------------
// Buffer hand-off

/// Buffer sizes of the hand-off rows.
const HANDOFF_SIZES: [usize; 5] = [8, 4 << 10, 1 << 20, 64 << 20, 1 << 30];
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

/// One buffer size: the shmpool hand-off and the pipe copy.
struct Handoff {
    bytes: usize,
    shmpool: Latency,
    pipe: Latency,
}

/// Hands the buffers of every size to the worker in turn, round after
/// round, so that every size meets the same conditions (the pool's waiters
/// adapt their spinning to recent history, and a size measured right after a
/// long pause would wait on a sleeping worker); then the pipe copies.
fn measure_handoff(params: &Params) -> BoxResult<Vec<Handoff>> {
    progress("buffer hand-off: filling the buffers");
    let pool = shmpool::Pool::builder().workers(1).segment_size(HANDOFF_SEGMENT).build()?;
    let mut buffers = Vec::with_capacity(HANDOFF_SIZES.len());
    for bytes in HANDOFF_SIZES {
        let mut buffer = pool.segment().buffer(bytes as u64)?;
        buffer.as_mut_slice().ok_or("a fresh buffer is not writable")?.fill(FILL);
        buffers.push(buffer);
    }
    progress("buffer hand-off, all sizes in turn");
    let mut samples = vec![Vec::with_capacity(params.handoff_iterations); buffers.len()];
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
                samples.push(took);
            }
        }
    }
    let mut rows = Vec::with_capacity(buffers.len());
    for (buffer, samples) in buffers.into_iter().zip(samples) {
        let bytes = buffer.len();
        let shmpool = Latency::from_samples("shmpool", samples);
        progress(&format!("pipe copy, {}", format_bytes(bytes)));
        let mut sink = Sink::spawn(bytes)?;
        // A 1 GiB copy takes about a second: no warm-up, and the budget
        // stops the row after the minimum of 3 copies.
        let warm_up = match bytes {
            b if b >= 1 << 30 => 0,
            b if b >= 64 << 20 => 1,
            _ => params.handoff_warm_up,
        };
        let samples = time_samples(warm_up, params.handoff_iterations, params.pipe_budget, || {
            Ok(sink.round_trip(buffer.as_slice())?)
        })?;
        sink.finish()?;
        let pipe = Latency::from_samples("pipe", samples);
        rows.push(Handoff { bytes, shmpool, pipe });
    }
    Ok(rows)
}

/// A `--peer sink` child: reads messages of a fixed size from its stdin pipe
/// and answers each with its last byte on its stdout pipe.
struct Sink {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::process::ChildStdout,
}

impl Sink {
    fn spawn(bytes: usize) -> io::Result<Sink> {
        let mut child = Command::new(std::env::current_exe()?)
            .args([PEER_FLAG, SINK, &bytes.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(io::Error::other("child pipes missing"));
        };
        Ok(Sink { child, stdin, stdout })
    }

    /// Copies `message` through the pipe and waits for the one-byte reply.
    fn round_trip(&mut self, message: &[u8]) -> io::Result<()> {
        self.stdin.write_all(message)?;
        let mut reply = [0];
        self.stdout.read_exact(&mut reply)?;
        match message.last() {
            Some(&last) if last != reply[0] => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("sink replied {:#x}, the message ended with {last:#x}", reply[0]),
            )),
            _ => Ok(()),
        }
    }

    fn finish(self) -> io::Result<()> {
        let Sink { mut child, stdin, stdout } = self;
        drop((stdin, stdout));
        let status = child.wait()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("sink exited with {status}")))
        }
    }
}

/// Entry point of a sink child: reads messages of `bytes` bytes from stdin
/// until it closes, answering each with its last byte.
fn run_sink(bytes: Option<&str>) -> BoxResult<()> {
    let bytes: usize = bytes.ok_or("usage: shmpool-bench --peer sink BYTES")?.parse()?;
    let mut stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let mut stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let mut buffer = vec![0u8; bytes.clamp(1, READ_BUFFER * 16)];
    loop {
        let mut left = bytes;
        let mut last = 0;
        while left > 0 {
            let want = left.min(buffer.len());
            let read = match stdin.read(&mut buffer[..want]) {
                Ok(0) if left == bytes => return Ok(()),
                Ok(0) => return Err("stream ended inside a message".into()),
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error.into()),
            };
            last = buffer[read - 1];
            left -= read;
        }
        stdout.write_all(&[last])?;
    }
}

// ---------------------------------------------------------------------------
// Formatting

fn format_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

fn name_width<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(|name| name.chars().count()).max().unwrap_or(0)
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// "reference", "8.30x slower" or "2.10x faster" for a time ratio.
fn describe_ratio(ratio: Option<f64>) -> String {
    match ratio {
        None => String::new(),
        Some(ratio) if (ratio - 1.0).abs() < 1e-9 => "reference".to_owned(),
        Some(ratio) if ratio >= 1.0 => format!("{ratio:.2}x slower"),
        Some(ratio) => format!("{:.2}x faster", 1.0 / ratio),
    }
}

fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos < 1_000 {
        format!("{nanos} ns")
    } else if nanos < 1_000_000 {
        format!("{:.1} µs", duration.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", duration.as_secs_f64() * 1e3)
    }
}

/// Nanoseconds with a decimal below 100 ns, else as [`format_duration`].
fn format_nanos(nanos: f64) -> String {
    if nanos < 100.0 {
        format!("{nanos:.1} ns")
    } else {
        format_duration(Duration::from_secs_f64(nanos / 1e9))
    }
}

fn format_rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M/s", per_second / 1e6)
    } else {
        format!("{:.1} k/s", per_second / 1e3)
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_number(value: Option<f64>) -> String {
    match value {
        Some(value) if value.is_finite() => format!("{value:.4}"),
        _ => "null".to_owned(),
    }
}
