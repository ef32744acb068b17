//! What every section of the benchmark shares: run modes, the machine,
//! latency histograms, CPU accounting and formatting.

use std::error::Error;
use std::num::NonZeroUsize;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report::{Cell, Column};

pub type BoxResult<T> = Result<T, Box<dyn Error>>;

/// How long to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Well under two minutes in all: the README's command.
    Quick,
    /// More iterations, for steadier figures.
    Full,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Quick => "quick",
            Mode::Full => "full",
        }
    }

    /// `quick` in quick mode, `full` in full mode.
    pub fn pick<T>(self, quick: T, full: T) -> T {
        match self {
            Mode::Quick => quick,
            Mode::Full => full,
        }
    }
}

/// Prints what is being measured now (to stderr, so that stdout is the report).
pub fn progress(what: &str) {
    eprintln!("measuring {what} ...");
}

/// What the figures were measured on.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Self {
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

    /// One line: "CPU, N cores, Linux KERNEL".
    pub fn describe(&self) -> String {
        format!("{}, {}, Linux {}", self.cpu, plural(self.cores, "core"), self.kernel)
    }
}

// ---------------------------------------------------------------------------
// Latency

/// A histogram of nanoseconds, from 1 ns to one hour at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("constant histogram bounds are valid")
}

/// Records `took` in `histogram`, saturating at its upper bound.
pub fn record(histogram: &mut Histogram<u64>, took: Duration) {
    histogram.saturating_record((took.as_nanos() as u64).max(1));
}

/// Calls `op(i)` `warm_up` times untimed, then up to `iterations` times
/// timed, each on its own. With a `budget`, stops early once the timed calls
/// have used it (after 3 samples at least).
pub fn time_ops(
    warm_up: usize,
    iterations: usize,
    budget: Option<Duration>,
    mut op: impl FnMut(u64) -> BoxResult<()>,
) -> BoxResult<Histogram<u64>> {
    for i in 0..warm_up {
        op(i as u64)?;
    }
    let mut samples = histogram();
    let mut spent = Duration::ZERO;
    for i in 0..iterations {
        if budget.is_some_and(|budget| i >= 3 && spent > budget) {
            break;
        }
        let start = Instant::now();
        op(i as u64)?;
        let took = start.elapsed();
        spent += took;
        record(&mut samples, took);
    }
    Ok(samples)
}

/// Latency percentiles of one row, from a histogram, and the CPU time used
/// per operation (by every process involved) when it was measured: spinning
/// shows up there, not as speed.
#[derive(Clone, Debug)]
pub struct Latency {
    pub name: String,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    pub samples: u64,
    pub cpu_per_op: Option<Duration>,
}

impl Latency {
    pub fn from_histogram(name: impl Into<String>, histogram: &Histogram<u64>) -> Self {
        let at = |quantile: f64| Duration::from_nanos(histogram.value_at_quantile(quantile));
        Latency {
            name: name.into(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_nanos(histogram.max()),
            samples: histogram.len(),
            cpu_per_op: None,
        }
    }

    /// Records `cpu` used over `ops` operations.
    pub fn with_cpu(mut self, cpu: Duration, ops: usize) -> Self {
        self.cpu_per_op = Some(cpu / ops.max(1) as u32);
        self
    }

    /// The same figures for half of each operation: one-way times from
    /// round trips (a quantile of the halves is half the quantile). CPU per
    /// operation is halved too: two one-way messages per round trip.
    pub fn halved(self) -> Self {
        Latency {
            p50: self.p50 / 2,
            p90: self.p90 / 2,
            p99: self.p99 / 2,
            p999: self.p999 / 2,
            max: self.max / 2,
            cpu_per_op: self.cpu_per_op.map(|d| d / 2),
            ..self
        }
    }

    /// The percentiles as (label, value), in order.
    pub fn percentiles(&self) -> [(&'static str, Duration); 5] {
        [("p50", self.p50), ("p90", self.p90), ("p99", self.p99), ("p99.9", self.p999), ("max", self.max)]
    }

    /// The columns of [`Latency::cells`].
    pub fn columns() -> Vec<Column> {
        vec![
            Column::new("p50", "p50_ns"),
            Column::new("p90", "p90_ns"),
            Column::new("p99", "p99_ns"),
            Column::new("p99.9", "p999_ns"),
            Column::new("max", "max_ns"),
            Column::new("CPU/op", "cpu_per_op_ns"),
            Column::new("samples", "samples"),
        ]
    }

    pub fn cells(&self) -> Vec<Cell> {
        let mut cells: Vec<Cell> = self.percentiles().iter().map(|&(_, d)| Cell::time(d)).collect();
        cells.push(self.cpu_per_op.map_or(Cell::Empty, Cell::time));
        cells.push(Cell::Count(self.samples));
        cells
    }
}

/// CPU time of every thread of process `pid` (0: this process), from its
/// process CPU-time clock (`clock_getcpuclockid`), which brings a thread
/// running right now up to date first. (`/proc/<pid>/task/*/schedstat`, used
/// before, is stale by up to a scheduler tick for a thread that never
/// leaves its core: a pinned, spinning peer read 0 over a 3 ms round.) Falls
/// back to schedstat when the clock is not available.
pub fn process_cpu(pid: u32) -> Duration {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: writes one clockid_t into `clock`; pid 0 is this process.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: reads the clock just obtained into a valid timespec.
    if rc == 0 && unsafe { libc::clock_gettime(clock, &mut now) } == 0 {
        return Duration::new(now.tv_sec as u64, now.tv_nsec as u32);
    }
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
pub fn measure_cpu<T>(pids: &[u32], f: impl FnOnce() -> T) -> (T, Duration) {
    let before: Vec<Duration> = pids.iter().map(|&p| process_cpu(p)).collect();
    let out = f();
    let used = pids.iter().zip(before).map(|(&p, b)| process_cpu(p).saturating_sub(b)).sum();
    (out, used)
}

/// The figures of one row measured in several rounds: one [`Latency`] per
/// round. Verdicts use the median of the rounds' p50s, shown with its
/// spread, so that one round that met a busy machine decides nothing.
#[derive(Clone, Debug, Default)]
pub struct Rounds {
    pub rounds: Vec<Latency>,
}

impl Rounds {
    /// The median over the rounds of one figure (`None` before any round).
    fn median_of(&self, figure: impl Fn(&Latency) -> Duration) -> Option<Duration> {
        (!self.rounds.is_empty()).then(|| median(self.rounds.iter().map(figure).collect()))
    }

    /// The median of the rounds' p50s (`None` before any round).
    pub fn p50(&self) -> Option<Duration> {
        self.median_of(|l| l.p50)
    }

    /// The median of the rounds' p99s.
    pub fn p99(&self) -> Option<Duration> {
        self.median_of(|l| l.p99)
    }

    /// One row for the table: every percentile and the CPU per operation
    /// the median of the rounds' (each on its own), the samples summed.
    pub fn summary(&self) -> Option<Latency> {
        let first = self.rounds.first()?;
        let cpu = self
            .rounds
            .iter()
            .all(|l| l.cpu_per_op.is_some())
            .then(|| median(self.rounds.iter().filter_map(|l| l.cpu_per_op).collect()));
        Some(Latency {
            name: first.name.clone(),
            p50: self.median_of(|l| l.p50)?,
            p90: self.median_of(|l| l.p90)?,
            p99: self.median_of(|l| l.p99)?,
            p999: self.median_of(|l| l.p999)?,
            max: self.median_of(|l| l.max)?,
            samples: self.rounds.iter().map(|l| l.samples).sum(),
            cpu_per_op: cpu,
        })
    }

    /// ±half of (max - min) of the rounds' p50s, as a share of their median
    /// (`None` with fewer than two rounds).
    pub fn spread(&self) -> Option<f64> {
        let p50s: Vec<f64> = self.rounds.iter().map(|l| l.p50.as_secs_f64()).collect();
        let (min, max) = p50s.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let median = self.p50()?.as_secs_f64().max(1e-12);
        (p50s.len() > 1).then(|| (max - min) / 2.0 / median)
    }
}

/// The order of `n` rows in round `round`: each round starts one row
/// further on, so that no row always runs first (or right after the same
/// neighbour).
pub fn rotated(round: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (k + round) % n.max(1))
}

/// Median of unsorted durations (zero when empty).
pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// Waits, yielding, until `done` holds; fails after ten seconds.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> BoxResult<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        thread::yield_now();
    }
    Ok(())
}

/// A name unique to this run, for segments and services.
pub fn unique_name(what: &str) -> String {
    format!("bench-{what}-{}", std::process::id())
}

// ---------------------------------------------------------------------------
// Formatting

pub fn format_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

pub fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// Nanoseconds with a decimal below 100 ns, then µs, ms or s.
pub fn format_nanos(nanos: f64) -> String {
    if nanos < 100.0 {
        format!("{nanos:.1} ns")
    } else if nanos < 1e3 {
        format!("{nanos:.0} ns")
    } else if nanos < 1e6 {
        format!("{:.1} µs", nanos / 1e3)
    } else if nanos < 1e9 {
        format!("{:.2} ms", nanos / 1e6)
    } else {
        format!("{:.2} s", nanos / 1e9)
    }
}

pub fn format_rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1} k/s", per_second / 1e3)
    } else {
        format!("{per_second:.1} /s")
    }
}

pub fn format_bandwidth(bytes_per_second: f64) -> String {
    if bytes_per_second >= 1e9 {
        format!("{:.2} GB/s", bytes_per_second / 1e9)
    } else {
        format!("{:.1} MB/s", bytes_per_second / 1e6)
    }
}

// ---------------------------------------------------------------------------
// Task throughput

/// The task of the throughput rows, and what every peer computes.
pub fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// Checks one reply.
pub fn check_reply(request: u64, reply: u64) -> std::io::Result<()> {
    if reply == square(request) {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("reply {reply} to request {request} is not its square"),
        ))
    }
}

/// Checks that `replies` are the squares of `0..tasks`, in order.
pub fn check_squares(tasks: u64, replies: &[u64]) -> std::io::Result<()> {
    if replies.len() as u64 != tasks {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} replies to {tasks} requests", replies.len()),
        ));
    }
    (0..tasks).zip(replies).try_for_each(|(request, &reply)| check_reply(request, reply))
}

/// How the tasks of a throughput row are handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// One `submit`, `write` or `send` per task, a window of them in flight.
    OneByOne,
    /// The library groups the tasks: `pool.map`, Python's `Pool.map` with
    /// its default chunksize.
    Batched,
    /// The caller groups them: 512 tasks per message (one `Vec<u64>` per
    /// shmpool task, send or spawn; 4 KiB per pipe write).
    Chunked,
}

impl Delivery {
    pub fn name(self) -> &'static str {
        match self {
            Delivery::OneByOne => "one-by-one",
            Delivery::Batched => "batched",
            Delivery::Chunked => "512/message",
        }
    }
}

/// Throughput of one transport: the median run of `tasks` tasks.
#[derive(Clone, Debug)]
pub struct Throughput {
    pub name: String,
    pub delivery: Delivery,
    /// Processes doing the work (pool workers); 1 for a single peer.
    pub workers: usize,
    pub tasks: u64,
    pub elapsed: Duration,
}

impl Throughput {
    pub fn tasks_per_second(&self) -> f64 {
        self.tasks as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn seconds_per_task(&self) -> f64 {
        self.elapsed.as_secs_f64() / self.tasks.max(1) as f64
    }
}

/// One throughput run: how long it took and the replies, in request order.
pub type Run = (Duration, Vec<u64>);

/// Runs `run(tasks)` `runs` times, checks every run's replies (the squares
/// of `0..tasks` in order) and returns the median run as a row.
pub fn median_run(
    name: String,
    delivery: Delivery,
    workers: usize,
    tasks: u64,
    runs: usize,
    mut run: impl FnMut(u64) -> BoxResult<Run>,
) -> BoxResult<Throughput> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let (elapsed, replies) = run(tasks)?;
        check_squares(tasks, &replies)?;
        times.push(elapsed);
    }
    Ok(Throughput { name, delivery, workers, tasks, elapsed: median(times) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate_and_report_the_median_with_its_spread() {
        assert_eq!(rotated(1, 3).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(rotated(3, 3).collect::<Vec<_>>(), [0, 1, 2]);
        let round = |ns: u64| {
            let mut h = histogram();
            h.record(ns).expect("in range");
            Latency::from_histogram("r", &h)
        };
        let rounds = Rounds { rounds: vec![round(100), round(300), round(200)] };
        let p50 = rounds.p50().expect("three rounds").as_nanos() as f64;
        assert!((p50 - 200.0).abs() < 1.0, "{p50}");
        let spread = rounds.spread().expect("three rounds");
        assert!((spread - 0.5).abs() < 0.01, "{spread}");
        assert!(Rounds::default().p50().is_none() && Rounds { rounds: vec![round(5)] }.spread().is_none());
        let summary = rounds.summary().expect("three rounds");
        assert_eq!((summary.p99.as_nanos(), summary.samples), (200, 3));
        assert_eq!(summary.halved().p50.as_nanos(), 100);
    }
}
