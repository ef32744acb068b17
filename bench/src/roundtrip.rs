//! Task round trips and task throughput: shmpool against a pipe, a Unix
//! socket, a crossbeam channel between threads, the raw floor and (from
//! [`crate::peers`]) procspawn, ipc-channel and Python's multiprocessing.Pool.

use std::collections::VecDeque;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::common::{
    check_reply, format_nanos, format_rate, measure_cpu, median_run, plural, progress, square, time_ops, BoxResult,
    Delivery, Latency, Run, Throughput,
};
use crate::floor::Floor;
use crate::params::Params;
use crate::pipes::{Peer, Transport};
use crate::report::{verdict, Cell, Column, Section};

/// Queue capacity of the pools, and the window of outstanding tasks kept by
/// the one-by-one shmpool and crossbeam rows.
pub const WINDOW: usize = 256;
/// Requests per `write`/`send` in the batched baseline rows (4 KiB on pipes).
pub const BATCH: usize = 512;
/// Capacity, in batches, of the crossbeam channels of the batched row.
const BATCH_CHANNEL_CAPACITY: usize = 4;
/// Tasks run through a fresh pool before its throughput is measured.
const POOL_WARM_UP_TASKS: u64 = 10_000;

pub fn build_pool(workers: usize) -> Result<shmpool::Pool, shmpool::Error> {
    shmpool::Pool::builder().workers(workers).queue_capacity(WINDOW).build()
}

// ---------------------------------------------------------------------------
// Latency

/// shmpool's own latency rows; the first is the reference of every ratio.
pub fn measure_latency(params: &Params) -> BoxResult<Vec<Latency>> {
    progress("shmpool latency");
    let mut rows = vec![shmpool_latency(params)?];
    progress("shmpool latency without spinning");
    rows.push(shmpool_blocking_latency(params)?);
    progress("shmpool latency busy-polling");
    rows.push(shmpool_busy_poll_latency(params)?);
    progress("shmpool remote call latency");
    rows.push(remote_latency(params)?);
    for transport in [Transport::Pipe, Transport::Unix] {
        progress(&format!("{} latency", transport.label()));
        rows.push(peer_latency(params, transport)?);
    }
    progress("crossbeam latency");
    rows.push(crossbeam_latency(params)?);
    Ok(rows)
}

/// Times the round trips of `op` and the CPU time `pids` used meanwhile
/// (warm-up excluded, as in every row), this thread and `pids` pinned to the
/// fixed pair of cores.
fn timed(params: &Params, name: &str, pids: &[u32], mut op: impl FnMut(u64) -> BoxResult<()>) -> BoxResult<Latency> {
    let _pin = crate::affinity::ParentPin::new();
    for &pid in pids.iter().filter(|&&pid| pid != 0) {
        crate::affinity::pin_process(pid, crate::affinity::pair().1)?;
    }
    time_ops(params.latency_warm_up, 0, None, &mut op)?;
    let (histogram, cpu) = measure_cpu(pids, || time_ops(0, params.latency_iterations, None, op));
    let histogram = histogram?;
    Ok(Latency::from_histogram(name, &histogram).with_cpu(cpu, histogram.len() as usize))
}

fn shmpool_latency(params: &Params) -> BoxResult<Latency> {
    shmpool_latency_with(params, build_pool(1)?, "shmpool submit + wait, spinning then futex (default)")
}

/// The same with no spinning on either side: every hand-off sleeps on a futex.
fn shmpool_blocking_latency(params: &Params) -> BoxResult<Latency> {
    let pool = shmpool::Pool::builder().workers(1).queue_capacity(WINDOW).spin(Duration::ZERO).build()?;
    shmpool_latency_with(params, pool, "shmpool submit + wait, blocking (futex only)")
}

/// Busy-polling on both sides (`PoolBuilder::busy_poll`): nobody ever
/// sleeps; compared with the floor, which spins the same way.
fn shmpool_busy_poll_latency(params: &Params) -> BoxResult<Latency> {
    let pool = shmpool::Pool::builder().workers(1).queue_capacity(WINDOW).busy_poll().build()?;
    shmpool_latency_with(params, pool, BUSY_POLL_ROW)
}

/// The name of the busy-poll round-trip row.
const BUSY_POLL_ROW: &str = "shmpool submit + wait, busy-poll (never sleeps)";

fn shmpool_latency_with(params: &Params, pool: shmpool::Pool, name: &str) -> BoxResult<Latency> {
    let mut pids = vec![0];
    pids.extend(pool.worker_pids());
    // The peers' work, like with like: square the request, check the reply.
    timed(params, name, &pids, |i| {
        let reply = pool.submit(square, i)?.wait()?;
        Ok(check_reply(i, reply)?)
    })
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
    square(x)
}

/// `Remote::call` round trips: the Kkit-style remote object RPC.
fn remote_latency(params: &Params) -> BoxResult<Latency> {
    let remote = shmpool::Remote::spawn(make_squarer, ())?;
    timed(params, "shmpool Remote::call (remote object)", &[0, remote.pid()], |i| {
        let r = remote.call(square_call, i)?;
        Ok(check_reply(i, r)?)
    })
}

fn peer_latency(params: &Params, transport: Transport) -> BoxResult<Latency> {
    let mut peer = Peer::spawn(transport)?;
    let pid = peer.pid();
    let row = timed(params, transport.label(), &[0, pid], |i| Ok(peer.round_trip(i)?));
    peer.finish()?;
    row
}

fn crossbeam_latency(params: &Params) -> BoxResult<Latency> {
    let (request_tx, request_rx) = bounded(1);
    let (reply_tx, reply_rx) = bounded(1);
    thread::scope(|s| {
        s.spawn(move || echo_squares(request_rx, reply_tx));
        let row = timed(params, "crossbeam channel, thread (no process boundary)", &[0], |i| {
            request_tx.send(i)?;
            check_reply(i, reply_rx.recv()?)?;
            Ok(())
        });
        // Closing the request channel ends the echo thread, error or not.
        drop(request_tx);
        row
    })
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

/// The latency table: shmpool's rows, then the peers', then the floor.
pub fn latency_section(params: &Params, rows: &[Latency], floor: &Floor) -> Section {
    let mut columns = Latency::columns();
    columns.push(Column::new("vs shmpool (p50)", "p50_vs_shmpool"));
    let mut section = Section::new(
        "latency",
        format!(
            "Round trip of one task (an 8-byte request squared and sent back, the reply checked; shmpool: a \
             pool of 1 worker), {} timed after {} for warm-up",
            params.latency_iterations, params.latency_warm_up
        ),
        columns,
    );
    let reference = rows.first().map(|row| row.p50.as_secs_f64());
    for (i, row) in rows.iter().chain([&floor.round_trip]).enumerate() {
        let mut cells = row.cells();
        cells.push(if i == 0 { Cell::Reference } else { Cell::slower(Some(row.p50.as_secs_f64()), reference) });
        section.row(row.name.clone(), cells);
    }
    section.note("CPU/op: CPU time of both processes (all threads) per timed round trip, warm-up excluded");
    section.note("\"slower\"/\"faster\": p50 time relative to the first shmpool row");
    if let Some(reference) = rows.first() {
        let floor_p50 = floor.round_trip.p50.as_secs_f64();
        let factor = reference.p50.as_secs_f64() / floor_p50.max(1e-12);
        let beaten: Vec<&str> = rows
            .iter()
            .filter(|row| !row.name.starts_with("shmpool") && !row.name.starts_with("crossbeam"))
            .filter(|row| row.p50 <= reference.p50)
            .map(|row| row.name.as_str())
            .collect();
        section.note(format!(
            "goal: shmpool ahead of every cross-process peer: {}; within 3x of the floor: {factor:.1}x{}",
            if beaten.is_empty() { "met".to_owned() } else { format!("MISSED ({})", beaten.join(", ")) },
            if factor <= 3.0 { "" } else { "  GOAL MISSED" }
        ));
    }
    if let Some(default) = rows.first() {
        let (p50, p99) = (default.p50, default.p99);
        section.note(format!(
            "goal: default mode p50 <= 1 µs and p99 <= 3 µs: p50 {} / p99 {}, {}",
            format_nanos(p50.as_secs_f64() * 1e9),
            format_nanos(p99.as_secs_f64() * 1e9),
            verdict(p50 <= Duration::from_micros(1) && p99 <= Duration::from_micros(3))
        ));
    }
    if let Some(busy) = rows.iter().find(|row| row.name == BUSY_POLL_ROW) {
        let factor = busy.p50.as_secs_f64() / floor.round_trip.p50.as_secs_f64().max(1e-12);
        section.note(format!(
            "goal: busy-poll within 3x of the floor (both spin, like with like): {factor:.1}x{}",
            if factor <= 3.0 { " met" } else { "  GOAL MISSED" }
        ));
    }
    section
}

// ---------------------------------------------------------------------------
// Throughput

/// Tasks/s the batched map is to reach with 1 and with 2 workers.
const MAP_GOAL: f64 = 30e6;

/// shmpool's throughput rows (1 worker first, the reference; then 2 workers
/// and one per core, as the machine has them), then the pipe, socket and
/// crossbeam rows.
pub fn measure_throughput(params: &Params, cores: usize) -> BoxResult<Vec<Throughput>> {
    let mut worker_counts = vec![1];
    worker_counts.extend([2, cores].into_iter().filter(|&n| n > 1 && n <= cores));
    worker_counts.dedup();
    let mut rows = Vec::new();
    for workers in worker_counts {
        progress(&format!("shmpool throughput, {}", plural(workers, "worker")));
        rows.extend(shmpool_throughput(params, workers)?);
    }
    progress("shmpool channel throughput");
    rows.push(channel_throughput(params)?);
    for transport in [Transport::Pipe, Transport::Unix] {
        progress(&format!("{} throughput", transport.label()));
        rows.extend(peer_throughput(params, transport)?);
    }
    progress("crossbeam throughput");
    rows.extend(crossbeam_throughput(params)?);
    Ok(rows)
}

fn tasks_for(params: &Params, delivery: Delivery) -> u64 {
    match delivery {
        Delivery::OneByOne => params.tasks,
        Delivery::Batched | Delivery::Chunked => params.batched_tasks,
    }
}

fn shmpool_throughput(params: &Params, workers: usize) -> BoxResult<Vec<Throughput>> {
    let pool = build_pool(workers)?;
    // Let every worker start up and fault in its memory before timing.
    shmpool_map_run(&pool, POOL_WARM_UP_TASKS)?;
    let label = format!("shmpool, {}", plural(workers, "worker"));
    let (one, batched) = (tasks_for(params, Delivery::OneByOne), tasks_for(params, Delivery::Batched));
    let submit = median_run(format!("{label}, submit"), Delivery::OneByOne, workers, one, params.runs, |tasks| {
        shmpool_submit_run(&pool, tasks)
    })?;
    let map = median_run(format!("{label}, map"), Delivery::Batched, workers, batched, params.runs, |tasks| {
        shmpool_map_run(&pool, tasks)
    })?;
    let name = format!("{label}, map over Vec<u64> chunks of {BATCH}");
    let chunks =
        median_run(name, Delivery::Chunked, workers, batched, params.runs, |tasks| shmpool_chunked_run(&pool, tasks))?;
    Ok(vec![submit, map, chunks])
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

/// The task of the chunked rows: squares a whole chunk, in place.
fn square_chunk(mut chunk: Vec<u64>) -> Vec<u64> {
    chunk.iter_mut().for_each(|x| *x = square(*x));
    chunk
}

/// `pool.map` over chunks of [`BATCH`] tasks: the caller groups the tasks,
/// as the peers' "512 per send" rows do.
fn shmpool_chunked_run(pool: &shmpool::Pool, tasks: u64) -> BoxResult<Run> {
    let start = Instant::now();
    let chunks = (0..tasks).step_by(BATCH).map(|first| (first..tasks.min(first + BATCH as u64)).collect::<Vec<u64>>());
    let mut replies = Vec::with_capacity(tasks as usize);
    for chunk in pool.map(square_chunk, chunks)? {
        replies.extend(chunk?);
    }
    Ok((start.elapsed(), replies))
}

fn shmpool_map_run(pool: &shmpool::Pool, tasks: u64) -> BoxResult<Run> {
    let start = Instant::now();
    let replies = pool.map(square, 0..tasks)?.collect::<Result<Vec<u64>, _>>()?;
    Ok((start.elapsed(), replies))
}

/// A channel child: receives a count, then streams the squares of 0..count.
fn stream_squares(chan: shmpool::Channel<u64, u64>, _: ()) {
    let Ok(n) = chan.recv() else { return };
    for x in 0..n {
        if chan.send(&square(x)).is_err() {
            return;
        }
    }
}

/// One-way channel throughput: a child streams messages, one `send` each.
fn channel_throughput(params: &Params) -> BoxResult<Throughput> {
    let name = "shmpool channel, one-way, 1 message per send".to_owned();
    median_run(name, Delivery::OneByOne, 1, params.tasks, params.runs, |tasks| {
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

fn peer_throughput(params: &Params, transport: Transport) -> BoxResult<Vec<Throughput>> {
    let mut peer = Peer::spawn(transport)?;
    // Make sure the child is up and running before the clock starts.
    peer.round_trip(1)?;
    let label = transport.label();
    let (one, batched) = (tasks_for(params, Delivery::OneByOne), tasks_for(params, Delivery::Batched));
    let rows = median_run(format!("{label}, 8 B writes"), Delivery::OneByOne, 1, one, params.runs, |tasks| {
        Ok(peer.stream(tasks, 1)?)
    })
    .and_then(|one_by_one| {
        let name = format!("{label}, {} KiB writes (bare integers)", BATCH * 8 / 1024);
        let batched =
            median_run(name, Delivery::Chunked, 1, batched, params.runs, |tasks| Ok(peer.stream(tasks, BATCH)?))?;
        Ok(vec![one_by_one, batched])
    });
    peer.finish()?;
    rows
}

fn crossbeam_throughput(params: &Params) -> BoxResult<Vec<Throughput>> {
    let (one, batched) = (tasks_for(params, Delivery::OneByOne), tasks_for(params, Delivery::Batched));
    let one_by_one =
        median_run("crossbeam, 1 task per send".to_owned(), Delivery::OneByOne, 1, one, params.runs, |tasks| {
            Ok(crossbeam_one_by_one_run(tasks))
        })?;
    let name = format!("crossbeam, {BATCH} tasks per send");
    let batched =
        median_run(name, Delivery::Chunked, 1, batched, params.runs, |tasks| Ok(crossbeam_batched_run(tasks)))?;
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

/// The shmpool row a throughput row is compared with: shmpool's first row of
/// the same delivery (1 worker), or of the same worker count when the row
/// uses several processes.
fn reference<'a>(rows: &'a [Throughput], row: &Throughput) -> Option<&'a Throughput> {
    let shmpool = |r: &&Throughput| r.name.starts_with("shmpool,") && r.delivery == row.delivery;
    rows.iter().filter(shmpool).find(|r| r.workers == row.workers).or_else(|| rows.iter().find(shmpool))
}

/// The throughput table, each row against its shmpool reference.
pub fn throughput_section(params: &Params, rows: &[Throughput]) -> Section {
    let mut section = Section::new(
        "throughput",
        format!(
            "Throughput, trivial tasks (square a u64, every reply checked in order), median of {} runs of {} tasks \
             (one-by-one) or {} (batched); Python rows run fewer",
            params.runs, params.tasks, params.batched_tasks
        ),
        vec![
            Column::new("delivery", "delivery"),
            Column::new("workers", "workers"),
            Column::new("tasks", "tasks"),
            Column::new("tasks/s", "tasks_per_second"),
            Column::new("per task", "ns_per_task"),
            Column::new("vs shmpool", "time_vs_shmpool"),
        ],
    );
    for row in rows {
        let reference = reference(rows, row);
        let is_reference = reference.is_some_and(|r| std::ptr::eq(r, row));
        let reference = reference.map(Throughput::seconds_per_task);
        section.row(
            row.name.clone(),
            vec![
                Cell::Text(row.delivery.name().to_owned()),
                Cell::Count(row.workers as u64),
                Cell::Count(row.tasks),
                Cell::Rate(row.tasks_per_second()),
                Cell::Nanos(row.seconds_per_task() * 1e9),
                if is_reference { Cell::Reference } else { Cell::slower(Some(row.seconds_per_task()), reference) },
            ],
        );
    }
    section.note(
        "\"vs shmpool\": time per task relative to shmpool's row of the same delivery and worker count \
         (\"shmpool, N workers, submit\" for one-by-one rows, \"..., map\" for batched ones, \"..., map over \
         chunks\" for 512/message ones, where the caller groups the tasks)",
    );
    section.note(
        "the 512/message pipe and socket rows move bare 8-byte integers with no framing, no typing and no dispatch: \
         the transport's floor, not a task system",
    );
    section.note(
        "batched: the library groups the tasks (shmpool's map puts many framed tasks in each ring claim; \
         Python's map pickles chunks); 512/message: the caller sends a vector of 512 as one message",
    );
    section.note(map_goal(rows));
    section
}

/// The goal line of the batched map: >= [`MAP_GOAL`] tasks/s with 1 and
/// with 2 workers, and 2 workers never slower than 1.
fn map_goal(rows: &[Throughput]) -> String {
    let what = "goal: batched map >= 30 M tasks/s with 1 and with 2 workers, and 2 workers never slower than 1";
    let rate = |workers: usize| {
        rows.iter()
            .find(|r| r.name.starts_with("shmpool,") && r.delivery == Delivery::Batched && r.workers == workers)
            .map(Throughput::tasks_per_second)
    };
    match (rate(1), rate(2)) {
        (Some(one), Some(two)) => format!(
            "{what}: 1 worker {}, 2 workers {}, {}",
            format_rate(one),
            format_rate(two),
            verdict(one >= MAP_GOAL && two >= MAP_GOAL && two >= one)
        ),
        (Some(one), None) => format!("{what}: 1 worker {}, no 2-worker row (one core): NOT CHECKED", format_rate(one)),
        _ => format!("{what}: no shmpool map row: NOT CHECKED"),
    }
}
