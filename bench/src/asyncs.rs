//! The async section (issue #12): a shmpool `Ticket` awaited on a tokio
//! current-thread runtime, beside the blocking `Ticket::wait` and beside
//! tokio's own `UnixStream` request/reply to a child process; the
//! throughput of 10,000 tickets awaited at once; and the CPU a process
//! burns while a future waits.
//!
//! Every row squares an 8-byte request and checks the reply, as the
//! round-trip rows of the latency table do. The child of the socket row is
//! the same `--peer unix` echo the latency table's socket row talks to; only
//! the parent's side is async here. The runtime runs on the calling thread
//! (pinned to the parent's core); the shmpool reactor thread starts on first
//! park, from that thread, and inherits its core.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

use crate::affinity::{self, ParentPin};
use crate::common::{
    check_reply, check_squares, format_nanos, histogram, measure_cpu, median, progress, record, rotated, square,
    time_ops, BoxResult, Latency, Mode, Rounds,
};
use crate::pipes::{Transport, PEER_FLAG};
use crate::process::Reaped;
use crate::report::{verdict, Cell, Column, Section};

/// How many tickets the throughput rows hold at once.
const TICKETS: u64 = 10_000;
/// How long the task of the idle rows sleeps.
const IDLE_WINDOW: Duration = Duration::from_secs(1);
/// How long the socket child may take to exit once its socket closes.
const CHILD_EXIT: Duration = Duration::from_secs(10);

/// Counts of one mode.
struct Params {
    /// Rounds of the round-trip rows, in rotating order.
    rounds: usize,
    /// Untimed round trips per row at the start of each round.
    warm_up: usize,
    /// Timed round trips per row and round.
    iterations: usize,
    /// Throughput runs per row (the median is shown), alternating rows.
    runs: usize,
}

impl Params {
    fn new(mode: Mode) -> Params {
        Params {
            rounds: mode.pick(3, 5),
            warm_up: mode.pick(2_000, 5_000),
            iterations: mode.pick(20_000, 60_000),
            runs: mode.pick(7, 15),
        }
    }
}

/// The round-trip rows, in the order they are shown; the first is the
/// reference of the ratios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Row {
    Await,
    Wait,
    TokioUnix,
}

const ROWS: [Row; 3] = [Row::Await, Row::Wait, Row::TokioUnix];

impl Row {
    fn name(self) -> &'static str {
        match self {
            Row::Await => "shmpool submit + .await (tokio current-thread)",
            Row::Wait => "shmpool submit + wait (blocking, spinning then futex)",
            Row::TokioUnix => "tokio UnixStream request/reply, child process",
        }
    }
}

/// One round trip of an async row, awaited on the runtime.
trait RoundTrip {
    async fn round_trip(&mut self, request: u64) -> BoxResult<()>;
}

/// A ticket per request, awaited.
struct AwaitTicket<'a>(&'a shmpool::Pool);

impl RoundTrip for AwaitTicket<'_> {
    async fn round_trip(&mut self, request: u64) -> BoxResult<()> {
        let reply = self.0.submit(square, request)?.await?;
        Ok(check_reply(request, reply)?)
    }
}

/// Eight bytes written and eight read back on tokio's `UnixStream`.
struct TokioSocket(tokio::net::UnixStream);

impl RoundTrip for TokioSocket {
    async fn round_trip(&mut self, request: u64) -> BoxResult<()> {
        self.0.write_all(&request.to_le_bytes()).await?;
        let mut reply = [0; 8];
        self.0.read_exact(&mut reply).await?;
        Ok(check_reply(request, u64::from_le_bytes(reply))?)
    }
}

/// [`time_ops`] for an async row: `warm_up` untimed round trips, then
/// `iterations` timed ones, each on its own.
async fn time_async(op: &mut impl RoundTrip, warm_up: usize, iterations: usize) -> BoxResult<Histogram<u64>> {
    for i in 0..warm_up {
        op.round_trip(i as u64).await?;
    }
    let mut samples = histogram();
    for i in 0..iterations {
        let start = Instant::now();
        op.round_trip(i as u64).await?;
        record(&mut samples, start.elapsed());
    }
    Ok(samples)
}

/// What the round-trip rows run on: one runtime, a pool per shmpool row
/// (1 worker, default spin policy), and the socket child.
struct Rig {
    runtime: Runtime,
    awaited: shmpool::Pool,
    waited: shmpool::Pool,
    socket: Option<TokioSocket>,
    child: Reaped,
}

impl Rig {
    fn new() -> BoxResult<Rig> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let awaited = one_worker_pool(crate::roundtrip::WINDOW)?;
        let waited = one_worker_pool(crate::roundtrip::WINDOW)?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command
            .args([PEER_FLAG, Transport::Unix.arg()])
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(theirs)));
        let child = Reaped::spawn(&mut command, "tokio UnixStream peer")?;
        // The command holds our copy of the child's end; close it.
        drop(command);
        affinity::pin_process(child.id(), affinity::pair().1)?;
        ours.set_nonblocking(true)?;
        // Registering with the runtime's driver needs its context.
        let socket = {
            let _entered = runtime.enter();
            TokioSocket(tokio::net::UnixStream::from_std(ours)?)
        };
        Ok(Rig { runtime, awaited, waited, socket: Some(socket), child })
    }

    /// One round of `row`: its figures and its mean round trip (where the
    /// rare slow ones show, which the percentiles hide).
    fn measure(&mut self, row: Row, params: &Params) -> BoxResult<(Latency, Duration)> {
        let Params { warm_up, iterations, .. } = *params;
        let (samples, cpu) = match row {
            Row::Await => {
                let pids = pids_of(&self.awaited);
                let mut op = AwaitTicket(&self.awaited);
                self.runtime.block_on(time_async(&mut op, warm_up, 0))?;
                measure_cpu(&pids, || self.runtime.block_on(time_async(&mut op, 0, iterations)))
            }
            Row::Wait => {
                let pids = pids_of(&self.waited);
                let pool = &self.waited;
                let op = |i: u64| -> BoxResult<()> { Ok(check_reply(i, pool.submit(square, i)?.wait()?)?) };
                time_ops(warm_up, 0, None, op)?;
                measure_cpu(&pids, || time_ops(0, iterations, None, op))
            }
            Row::TokioUnix => {
                let socket = self.socket.as_mut().ok_or("the socket is closed")?;
                let pids = [0, self.child.id()];
                self.runtime.block_on(time_async(socket, warm_up, 0))?;
                measure_cpu(&pids, || self.runtime.block_on(time_async(socket, 0, iterations)))
            }
        };
        let samples = samples?;
        let mean = Duration::from_nanos(samples.mean() as u64);
        Ok((Latency::from_histogram(row.name(), &samples).with_cpu(cpu, samples.len() as usize), mean))
    }

    /// Closes the socket, which ends the child, and checks its exit.
    fn finish(mut self) -> BoxResult<()> {
        // Deregistering from the driver needs the runtime's context too.
        let entered = self.runtime.enter();
        drop(self.socket.take());
        drop(entered);
        self.child.finish(CHILD_EXIT)
    }
}

/// A pool of 1 worker, pinned to the child's core, that may hold
/// `capacity` tasks in flight.
fn one_worker_pool(capacity: usize) -> BoxResult<shmpool::Pool> {
    let pool = shmpool::Pool::builder().workers(1).queue_capacity(capacity).build()?;
    for pid in pool.worker_pids() {
        affinity::pin_process(pid, affinity::pair().1)?;
    }
    Ok(pool)
}

/// This process and the pool's workers.
fn pids_of(pool: &shmpool::Pool) -> Vec<u32> {
    let mut pids = vec![0];
    pids.extend(pool.worker_pids());
    pids
}

/// Measures the three tables of the async section.
pub fn measure(mode: Mode) -> BoxResult<Vec<Section>> {
    let params = Params::new(mode);
    let _pin = ParentPin::new();
    let latency = measure_latency(&params)?;
    let throughput = measure_throughput(&params)?;
    let idle = measure_idle()?;
    Ok(vec![latency, throughput, idle])
}

// ---------------------------------------------------------------------------
// Round trip

fn measure_latency(params: &Params) -> BoxResult<Section> {
    let mut rig = Rig::new()?;
    let mut figures = vec![Rounds::default(); ROWS.len()];
    let mut means = vec![Vec::new(); ROWS.len()];
    for round in 0..params.rounds {
        for index in rotated(round, ROWS.len()) {
            let row = ROWS[index];
            progress(&format!("async round trip, round {}/{}: {}", round + 1, params.rounds, row.name()));
            let (latency, mean) = rig.measure(row, params)?;
            figures[index].rounds.push(latency);
            means[index].push(mean);
        }
    }
    rig.finish()?;
    let means: Vec<Duration> = means.into_iter().map(median).collect();
    Ok(latency_section(params, &figures, &means))
}

/// The median over the rounds of one figure of each round.
fn median_of(rounds: &Rounds, figure: impl Fn(&Latency) -> Option<Duration>) -> Option<Duration> {
    let values: Vec<Duration> = rounds.rounds.iter().filter_map(figure).collect();
    (!values.is_empty()).then(|| median(values))
}

/// The round-trip table; `means` are the rows' median means over the rounds.
fn latency_section(params: &Params, figures: &[Rounds], means: &[Duration]) -> Section {
    let mut section = Section::new(
        "async_latency",
        format!(
            "Async round trip: one task (an 8-byte request squared and sent back, the reply checked) awaited on a \
             tokio current-thread runtime, beside the blocking wait and tokio's UnixStream to a child process; \
             shmpool: a pool of 1 worker, default spin policy; {} rounds of {} timed after {} for warm-up, in \
             rotating order, parent and child pinned to cores {} and {}",
            params.rounds,
            params.iterations,
            params.warm_up,
            affinity::pair().0,
            affinity::pair().1
        ),
        vec![
            Column::new("p50 (median)", "p50_ns"),
            Column::new("spread", "p50_spread"),
            Column::new("p90", "p90_ns"),
            Column::new("p99", "p99_ns"),
            Column::new("mean", "mean_ns"),
            Column::new("CPU/op", "cpu_per_op_ns"),
            Column::new("vs .await (p50)", "p50_vs_await"),
        ],
    );
    let p50 = |row: Row| {
        let at = ROWS.iter().position(|r| *r == row)?;
        figures[at].p50().map(|d| d.as_secs_f64())
    };
    let reference = p50(Row::Await);
    for ((row, f), mean) in ROWS.iter().zip(figures).zip(means) {
        section.row(
            row.name(),
            vec![
                f.p50().map_or(Cell::Empty, Cell::time),
                f.spread().map_or(Cell::Empty, |s| Cell::Text(format!("±{:.0}%", s * 100.0))),
                median_of(f, |l| Some(l.p90)).map_or(Cell::Empty, Cell::time),
                f.p99().map_or(Cell::Empty, Cell::time),
                Cell::time(*mean),
                median_of(f, |l| l.cpu_per_op).map_or(Cell::Empty, Cell::time),
                if *row == Row::Await { Cell::Reference } else { Cell::slower(p50(*row), reference) },
            ],
        );
    }
    if let (Some(awaited), Some(waited)) = (reference, p50(Row::Wait)) {
        let factor = awaited / waited.max(1e-12);
        section.note(format!(
            "goal: async round trip within 2x of the blocking spinning round trip (p50): {factor:.2}x, {}",
            verdict(factor <= 2.0)
        ));
    }
    if let (Some(awaited), Some(socket)) = (reference, p50(Row::TokioUnix)) {
        let factor = socket / awaited.max(1e-12);
        section.note(format!(
            "goal: async round trip >= 5x faster than the tokio UnixStream round trip (p50): {factor:.1}x faster, {}",
            verdict(factor >= 5.0)
        ));
    }
    section.note(
        "p50 (median), p90, p99, mean, CPU/op: the median over the rounds of each round's figure; spread: ±half the range \
         of the rounds' p50s, of their median; CPU/op: CPU time of both processes (all threads: the runtime's, the \
         shmpool reactor's) per timed round trip",
    );
    section
}

// ---------------------------------------------------------------------------
// Throughput

/// Submits `TICKETS` tasks, then awaits them all at once.
async fn join_all_run(pool: &shmpool::Pool) -> BoxResult<Vec<u64>> {
    let tickets = (0..TICKETS).map(|x| pool.submit(square, x)).collect::<Result<Vec<_>, _>>()?;
    Ok(futures::future::try_join_all(tickets).await?)
}

/// Submits `TICKETS` tasks, then waits for each in turn.
fn wait_each_run(pool: &shmpool::Pool) -> BoxResult<Vec<u64>> {
    let tickets = (0..TICKETS).map(|x| pool.submit(square, x)).collect::<Result<Vec<_>, _>>()?;
    Ok(tickets.into_iter().map(shmpool::Ticket::wait).collect::<Result<Vec<_>, _>>()?)
}

/// One throughput row: the median run's time and CPU time.
struct Batch {
    name: &'static str,
    elapsed: Duration,
    cpu: Duration,
}

fn measure_throughput(params: &Params) -> BoxResult<Section> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Room for every ticket: the submissions never wait, the waits do.
    let pool = one_worker_pool(TICKETS as usize)?;
    let pids = pids_of(&pool);
    let names = ["shmpool, 10,000 tickets, try_join_all (tokio current-thread)", "shmpool, 10,000 tickets, wait each"];
    let mut times = [Vec::new(), Vec::new()];
    let mut cpus = [Vec::new(), Vec::new()];
    // One untimed run of each first: the worker starts and faults in its memory.
    for run in 0..=params.runs {
        for index in rotated(run, 2) {
            if run == 1 && index == 0 {
                progress(&format!("async throughput, {} runs of each row", params.runs));
            }
            let start = Instant::now();
            let (replies, cpu) = measure_cpu(&pids, || match index {
                0 => runtime.block_on(join_all_run(&pool)),
                _ => wait_each_run(&pool),
            });
            let elapsed = start.elapsed();
            check_squares(TICKETS, &replies?)?;
            if run > 0 {
                times[index].push(elapsed);
                cpus[index].push(cpu);
            }
        }
    }
    let rows: Vec<Batch> = (0..2)
        .map(|i| Batch { name: names[i], elapsed: median(times[i].clone()), cpu: median(cpus[i].clone()) })
        .collect();
    Ok(throughput_section(params, &rows))
}

fn throughput_section(params: &Params, rows: &[Batch]) -> Section {
    let mut section = Section::new(
        "async_throughput",
        format!(
            "Async throughput: {TICKETS} tasks (square a u64) submitted, then awaited all at once on a tokio \
             current-thread runtime, beside the blocking form (the same submits, then wait on each ticket in turn); \
             a pool of 1 worker with room for all {TICKETS}; median of {} runs, rows alternating",
            params.runs
        ),
        vec![
            Column::new("tasks/s", "tasks_per_second"),
            Column::new("per task", "ns_per_task"),
            Column::new("CPU/task", "cpu_per_task_ns"),
            Column::new("vs join_all", "time_vs_join_all"),
        ],
    );
    let per_task = |row: &Batch| row.elapsed.as_secs_f64() / TICKETS as f64;
    let reference = rows.first().map(per_task);
    for (i, row) in rows.iter().enumerate() {
        section.row(
            row.name,
            vec![
                Cell::Rate(TICKETS as f64 / row.elapsed.as_secs_f64().max(1e-9)),
                Cell::Nanos(per_task(row) * 1e9),
                Cell::Nanos(row.cpu.as_secs_f64() * 1e9 / TICKETS as f64),
                if i == 0 { Cell::Reference } else { Cell::slower(Some(per_task(row)), reference) },
            ],
        );
    }
    section.note("every run's replies checked in order; time from the first submit to the last result");
    section.note("CPU/task: CPU time of the parent (all threads) and the worker, per task, in the median run");
    section
}

// ---------------------------------------------------------------------------
// Idle CPU

/// A task that sleeps: the worker is busy doing nothing while the parent waits.
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn measure_idle() -> BoxResult<Section> {
    progress("async idle CPU");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let pool = one_worker_pool(crate::roundtrip::WINDOW)?;
    // Warm: the spin has adapted to a busy pool, the reactor thread runs.
    runtime.block_on(async {
        for x in 0..1_000 {
            check_reply(x, pool.submit(square, x)?.await?)?;
        }
        BoxResult::Ok(())
    })?;
    let ms = IDLE_WINDOW.as_millis() as u64;
    let mut rows = Vec::new();
    for (name, awaited) in [
        ("parent awaiting the ticket (tokio current-thread; all threads)", true),
        ("parent in Ticket::wait (blocking; all threads)", false),
    ] {
        let ticket = pool.submit(sleep_ms, ms)?;
        let start = Instant::now();
        let (reply, cpu) = measure_cpu(&[0], || if awaited { runtime.block_on(ticket) } else { ticket.wait() });
        let elapsed = start.elapsed();
        if reply? != ms {
            return Err("the sleeping task replied wrongly".into());
        }
        rows.push((name, elapsed, cpu));
    }
    let mut section = Section::new(
        "async_idle_cpu",
        format!(
            "Async idle CPU: the parent's CPU time (every thread: the runtime's, the shmpool reactor's) while it \
             waits for a task that sleeps {}",
            format_nanos(IDLE_WINDOW.as_secs_f64() * 1e9)
        ),
        vec![Column::new("waited", "wall_ns"), Column::new("CPU time", "cpu_ns"), Column::new("of a core", "share")],
    );
    let share = |elapsed: Duration, cpu: Duration| cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9);
    for &(name, elapsed, cpu) in &rows {
        section.row(
            name,
            vec![Cell::time(elapsed), Cell::time(cpu), Cell::Text(format!("{:.2}%", share(elapsed, cpu) * 100.0))],
        );
    }
    if let Some(&(_, elapsed, cpu)) = rows.first() {
        let share = share(elapsed, cpu);
        section.note(format!(
            "goal: idle CPU ~0 while a future waits (< 1% of a core): {:.2}%, {}",
            share * 100.0,
            verdict(share < 0.01)
        ));
    }
    Ok(section)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(name: &str, p50_ns: u64) -> Latency {
        let mut h = histogram();
        h.record(p50_ns).expect("in range");
        Latency::from_histogram(name, &h)
    }

    fn figures(await_ns: u64, wait_ns: u64, socket_ns: u64) -> Vec<Rounds> {
        [(Row::Await, await_ns), (Row::Wait, wait_ns), (Row::TokioUnix, socket_ns)]
            .iter()
            .map(|&(row, ns)| Rounds { rounds: vec![round(row.name(), ns)] })
            .collect()
    }

    #[test]
    fn the_goal_lines_follow_the_figures_shown() {
        let params = Params::new(Mode::Quick);
        let means = [Duration::from_micros(1); 3];
        let met = latency_section(&params, &figures(1_000, 800, 20_000), &means);
        assert!(met.notes[0].contains("1.25x, MET"), "{:?}", met.notes);
        assert!(met.notes[1].contains("20.0x faster, MET"), "{:?}", met.notes);
        let missed = latency_section(&params, &figures(2_000, 900, 8_000), &means);
        assert!(missed.notes[0].contains("2.22x, MISSED"), "{:?}", missed.notes);
        assert!(missed.notes[1].contains("4.0x faster, MISSED"), "{:?}", missed.notes);
        assert_eq!(missed.rows.len(), ROWS.len());
    }
}
