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
//! The pipe and socket peers are this binary itself, re-executed with the
//! hidden arguments `--peer pipe` or `--peer unix`.

use std::collections::VecDeque;
use std::error::Error;
use std::fs::File;
use std::io::{self, Read, Write};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

const USAGE: &str = "\
Usage: shmpool-bench [--quick | --full] [--json FILE]

Measures shmpool's round-trip latency and task throughput against pipes,
Unix sockets and crossbeam channels, and prints a table.

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(PEER_FLAG) {
        return run_peer(args.get(1).map(String::as_str));
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
            },
            Mode::Full => Params {
                latency_warm_up: 20_000,
                latency_iterations: 300_000,
                tasks: 3_000_000,
                batched_tasks: 30_000_000,
                runs: 5,
            },
        }
    }
}

struct Options {
    mode: Mode,
    json: Option<PathBuf>,
}

enum Action {
    Run(Options),
    Help,
}

fn parse_args(args: &[String]) -> Result<Action, String> {
    let mut options = Options { mode: Mode::Quick, json: None };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Action::Help),
            "--quick" => options.mode = Mode::Quick,
            "--full" => options.mode = Mode::Full,
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
    let latency = measure_latency(&params)?;
    let throughput = measure_throughput(&params, machine.cores)?;
    let payload = measure_payload(&params)?;
    let idle = measure_idle_cpu()?;
    let report = Report {
        mode: options.mode,
        params: &params,
        machine: &machine,
        latency: &latency,
        throughput: &throughput,
        payload: &payload,
        idle: &idle,
    };
    print!("{}", report.table());
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
    max: Duration,
}

impl Latency {
    fn from_samples(name: &str, mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Latency {
            name: name.to_owned(),
            median: percentile(&samples, 50.0),
            p90: percentile(&samples, 90.0),
            p99: percentile(&samples, 99.0),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
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
    let pool = build_pool(1)?;
    let samples = time_round_trips(params, |_| {
        pool.submit(empty, ())?.wait()?;
        Ok(())
    })?;
    Ok(Latency::from_samples("shmpool submit + wait", samples))
}

fn peer_latency(params: &Params, transport: Transport) -> BoxResult<Latency> {
    let mut peer = Peer::spawn(transport)?;
    let samples = time_round_trips(params, |i| Ok(peer.round_trip(i)?))?;
    peer.finish()?;
    Ok(Latency::from_samples(transport.label(), samples))
}

fn crossbeam_latency(params: &Params) -> BoxResult<Latency> {
    let (request_tx, request_rx) = bounded(1);
    let (reply_tx, reply_rx) = bounded(1);
    let samples = thread::scope(|s| {
        s.spawn(move || echo_squares(request_rx, reply_tx));
        let samples = time_round_trips(params, |i| {
            request_tx.send(i)?;
            check_reply(i, reply_rx.recv()?)?;
            Ok(())
        });
        // Closing the request channel ends the echo thread, error or not.
        drop(request_tx);
        samples
    })?;
    Ok(Latency::from_samples("crossbeam channel, thread", samples))
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
    Ok(rows)
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
            "  {:<width$}  {:>10}  {:>10}  {:>10}  {:>10}  vs shmpool (median)\n",
            "", "median", "p90", "p99", "max"
        );
        for row in self.latency {
            out += &format!(
                "  {:<width$}  {:>10}  {:>10}  {:>10}  {:>10}  {}\n",
                row.name,
                format_duration(row.median),
                format_duration(row.p90),
                format_duration(row.p99),
                format_duration(row.max),
                describe_ratio(self.latency_ratio(row)),
            );
        }

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
                     \"max_ns\": {}, \"time_vs_shmpool\": {}}}",
                    json_string(&row.name),
                    row.median.as_nanos(),
                    row.p90.as_nanos(),
                    row.p99.as_nanos(),
                    row.max.as_nanos(),
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
        format!(
            "{{\n  \"mode\": {},\n  \"machine\": {{\"cpu\": {}, \"cores\": {}, \"kernel\": {}}},\n  \
             \"latency\": {{\n    \"warm_up\": {},\n    \"iterations\": {},\n    \"rows\": [\n{}\n    ]\n  }},\n  \
             \"throughput\": {{\n    \"one_by_one_tasks\": {},\n    \"batched_tasks\": {},\n    \"runs\": {},\n    \"rows\": [\n{}\n    ]\n  }},\n  \
             \"payload\": {{\n    \"bytes\": {},\n    \"rows\": [\n{}\n    ]\n  }},\n  \
             \"idle_cpu\": {{\"window_ns\": {}, \"parent_cpu_ns\": {}, \"worker_cpu_ns\": {}}}\n}}\n",
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
