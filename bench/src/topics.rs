//! Topics and queues between processes (issue 13): shmpool's named
//! `Topic` against iceoryx2 publish-subscribe with 1, 2 and 4 subscriber
//! processes at 8 B, 4 KiB and 1 MiB (one-way latency and throughput), and
//! shmpool's named `Queue` against Redis Streams with a consumer group (one
//! producer, two consumer processes, trivial items).
//!
//! Like with like: shmpool's busy-polling subscribers beside iceoryx2's
//! polling ones, shmpool's default wait (spin, then sleep) beside
//! iceoryx2's event wait. Busy-polling rows run only where every process
//! has a core of its own (publisher + subscribers <= cores): beyond that a
//! poller holds the core its publisher or a sibling needs, and each message
//! costs a scheduler time slice (set `SHMPOOL_BENCH_OVERSUBSCRIBE=1` to run
//! them anyway, marked). The rows of one (subscribers, size) group run in
//! rounds of rotating order, pinned as the one-way rows are (the publisher
//! on the parent's core, subscribers alternating over the pair).
//!
//! - `board`: the control board (acknowledgements, counts, samples) beside
//!   the transport, and the shared clock.
//! - `pubsub`: the pub-sub rows, both ends.
//! - `queue`: the work-queue rows, both ends.
//! - `resp`: a Redis server of our own and a minimal RESP client.

mod board;
mod pubsub;
mod queue;
mod resp;

use std::time::Duration;

use crate::affinity::{self, ParentPin};
use crate::common::{
    format_bytes, format_nanos, format_rate, median, progress, rotated, BoxResult, Latency, Mode, Rounds,
};
use crate::oneway::{self, iox};
use crate::report::{verdict, Cell, Column, Section};

pub use pubsub::Transport;

/// Subscriber counts of the pub-sub rows.
pub const COUNTS: [usize; 3] = [1, 2, 4];
/// Message sizes: the one-way section's.
pub const SIZES: [usize; 3] = oneway::SIZES;
/// Runs the busy-polling rows on too few cores as well (marked).
const OVERSUBSCRIBE: &str = "SHMPOOL_BENCH_OVERSUBSCRIBE";

/// One pub-sub row's latency: the medians of its rounds.
pub struct PubSubLatency {
    pub transport: Transport,
    pub subscribers: usize,
    pub bytes: usize,
    pub latency: Latency,
    pub spread: Option<f64>,
}

/// One pub-sub row's throughput (the last round's).
pub struct PubSubRate {
    pub transport: Transport,
    pub subscribers: usize,
    pub bytes: usize,
    /// Messages each subscriber received per second.
    pub messages_per_second: f64,
    /// CPU time of every process per message sent.
    pub cpu_per_message: Duration,
}

/// One work-queue row: the median of its runs, or why it did not run.
pub struct QueueRate {
    pub kind: queue::Kind,
    pub figures: Option<QueueFigures>,
    /// Runs that failed, and why (they are reported, not retried).
    pub failures: Vec<String>,
}

pub struct QueueFigures {
    pub items_per_second: f64,
    /// The share of the items the busier consumer took.
    pub busier_share: f64,
    pub cpu_per_item: Duration,
    pub runs: usize,
}

/// Everything the section measured.
pub struct Topics {
    pub latency: Vec<PubSubLatency>,
    pub throughput: Vec<PubSubRate>,
    pub queue: Vec<QueueRate>,
    pub rounds: usize,
    pub cores: usize,
    /// Busy-polling rows run although processes outnumber cores.
    pub oversubscribed: bool,
    /// Whether `redis-server` was found.
    pub redis: bool,
}

/// Whether the busy-polling rows of `subscribers` fit on `cores`.
fn fits(subscribers: usize, cores: usize) -> bool {
    subscribers < cores
}

/// The rows of one (subscribers, size) group, in table order.
fn rows_of(subscribers: usize, cores: usize, oversubscribed: bool) -> Vec<Transport> {
    Transport::ALL.into_iter().filter(|t| !t.busy() || oversubscribed || fits(subscribers, cores)).collect()
}

pub fn measure(mode: Mode, cores: usize) -> BoxResult<Topics> {
    let rounds = mode.pick(3, 5);
    let oversubscribed = std::env::var_os(OVERSUBSCRIBE).is_some_and(|v| v == "1");
    let plan = pubsub::Plan {
        warm_up: mode.pick(200, 1_000),
        iterations: mode.pick(5_000, 20_000),
        budget: mode.pick(Duration::from_millis(300), Duration::from_secs(2)),
        stream_budget: mode.pick(Duration::from_millis(300), Duration::from_secs(2)),
        stream_max: mode.pick(300_000, 3_000_000),
    };
    let _pin = ParentPin::new();
    let groups: Vec<(usize, usize)> = COUNTS.iter().flat_map(|&n| SIZES.iter().map(move |&s| (n, s))).collect();
    let mut figures: Vec<Vec<Rounds>> =
        groups.iter().map(|&(n, _)| vec![Rounds::default(); rows_of(n, cores, oversubscribed).len()]).collect();
    let mut result = Topics {
        latency: Vec::new(),
        throughput: Vec::new(),
        queue: Vec::new(),
        rounds,
        cores,
        oversubscribed,
        redis: false,
    };
    let mut row_id = 0;
    let measured = (|| -> BoxResult<()> {
        for round in 0..rounds {
            for (g, &(n, size)) in groups.iter().enumerate() {
                let rows = rows_of(n, cores, oversubscribed);
                for index in rotated(round, rows.len()) {
                    let t = rows[index];
                    let what = format!(
                        "topics, round {}/{rounds}: {}, {} subscriber(s), {}",
                        round + 1,
                        t.name(),
                        n,
                        format_bytes(size)
                    );
                    progress(&what);
                    row_id += 1;
                    let stream = round + 1 == rounds;
                    let m = pubsub::run(t, size, n, &plan, row_id, stream).map_err(|e| format!("{what}: {e}"))?;
                    figures[g][index]
                        .rounds
                        .push(Latency::from_histogram(t.name(), &m.samples).with_cpu(m.cpu_per_message, 1));
                    if let Some(s) = m.streamed {
                        result.throughput.push(PubSubRate {
                            transport: t,
                            subscribers: n,
                            bytes: size,
                            messages_per_second: s.messages as f64 / s.elapsed.as_secs_f64().max(1e-9),
                            cpu_per_message: s.cpu / s.messages.max(1) as u32,
                        });
                    }
                }
            }
        }
        Ok(())
    })();
    let removed = iox::remove_domain();
    let left = oneway::leftovers(&iox::file_prefix());
    measured?;
    removed?;
    let ours = format!("shmpool.topic.{}", crate::common::unique_name("topics"));
    let shm_left: Vec<String> = std::fs::read_dir("/dev/shm")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&ours))
        .collect();
    if !left.is_empty() || !shm_left.is_empty() {
        return Err(format!("topic rows left files behind: {}", [left, shm_left].concat().join(", ")).into());
    }
    for (g, &(n, size)) in groups.iter().enumerate() {
        for (index, t) in rows_of(n, cores, oversubscribed).into_iter().enumerate() {
            let f = &figures[g][index];
            if let Some(latency) = f.summary() {
                let spread = f.spread();
                result.latency.push(PubSubLatency { transport: t, subscribers: n, bytes: size, latency, spread });
            }
        }
    }
    measure_queue(mode, &mut result)?;
    Ok(result)
}

fn measure_queue(mode: Mode, result: &mut Topics) -> BoxResult<()> {
    let runs = mode.pick(3, 5);
    let budget = mode.pick(Duration::from_millis(400), Duration::from_secs(2));
    let max = mode.pick(5_000_000, 50_000_000);
    let server = resp::Server::start()?;
    result.redis = server.is_some();
    let redis = server.as_ref().map(|s| (s.port, s.pid()));
    if let Some(server) = &server {
        // Beside the consumers, on the pair's second core.
        affinity::pin_process(server.pid(), affinity::pair().1)?;
    }
    let kinds: Vec<queue::Kind> = queue::Kind::ALL.into_iter().filter(|k| !k.is_redis() || redis.is_some()).collect();
    let mut done: Vec<Vec<queue::Run>> = kinds.iter().map(|_| Vec::new()).collect();
    let mut failed: Vec<Vec<String>> = kinds.iter().map(|_| Vec::new()).collect();
    let mut row = 0;
    for round in 0..runs {
        for index in rotated(round, kinds.len()) {
            let kind = kinds[index];
            let what = format!("topics, queue run {}/{runs}: {}", round + 1, kind.name());
            progress(&what);
            row += 1;
            match queue::run(kind, budget, max, row, redis) {
                Ok(run) => done[index].push(run),
                Err(e) => {
                    eprintln!("{what}: FAILED: {e}");
                    failed[index].push(e.to_string());
                }
            }
        }
    }
    drop(server);
    for kind in queue::Kind::ALL {
        let at = kinds.iter().position(|&k| k == kind);
        let failures = at.map(|i| failed[i].clone()).unwrap_or_default();
        let figures = at.filter(|&i| !done[i].is_empty()).map(|i| {
            let runs = &done[i];
            let rate = |r: &queue::Run| r.items as f64 / r.elapsed.as_secs_f64().max(1e-9);
            let mut by_rate: Vec<&queue::Run> = runs.iter().collect();
            by_rate.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
            let mid = by_rate[by_rate.len() / 2];
            QueueFigures {
                items_per_second: rate(mid),
                busier_share: mid.per_consumer.iter().copied().max().unwrap_or(0) as f64 / mid.items.max(1) as f64,
                cpu_per_item: median(runs.iter().map(|r| r.cpu / r.items.max(1) as u32).collect()),
                runs: runs.len(),
            }
        });
        result.queue.push(QueueRate { kind, figures, failures });
    }
    Ok(())
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

pub fn sections(result: &Topics) -> Vec<Section> {
    vec![latency_section(result), throughput_section(result), queue_section(result)]
}

fn group_label(n: usize, size: usize) -> String {
    format!("{} sub{}, {}", n, if n == 1 { "" } else { "s" }, format_bytes(size))
}

fn latency_section(result: &Topics) -> Section {
    let mut columns = vec![Column::new("subs", "subscribers"), Column::new("size", "bytes")];
    columns.extend(Latency::columns());
    columns.insert(3, Column::new("spread", "p50_spread"));
    columns.push(Column::new("p50 vs pair", "p50_vs_pair"));
    columns.push(Column::new("p99 vs pair", "p99_vs_pair"));
    let (parent, child) = affinity::pair();
    let mut section = Section::new(
        "topics_latency",
        format!(
            "Topics: one-way latency from 1 publisher to N subscriber processes (stamp carried in the payload); {} \
             rounds in rotating order, the publisher pinned to core {parent}, subscribers alternating over cores \
             {child} and {parent}",
            result.rounds
        ),
        columns,
    );
    let mut verdicts = Vec::new();
    for n in COUNTS {
        for size in SIZES {
            let rows: Vec<&PubSubLatency> =
                result.latency.iter().filter(|r| r.subscribers == n && r.bytes == size).collect();
            let find = |t: Transport| rows.iter().find(|r| r.transport == t).copied();
            for row in &rows {
                let mut cells = vec![Cell::Count(n as u64), Cell::Bytes(size as u64)];
                cells.extend(row.latency.cells());
                cells.insert(3, row.spread.map_or(Cell::Empty, |s| Cell::Text(format!("±{:.0}%", s * 100.0))));
                match row.transport.peer().and_then(find) {
                    Some(pair) => {
                        cells.push(Cell::slower(Some(nanos(row.latency.p50)), Some(nanos(pair.latency.p50))));
                        cells.push(Cell::slower(Some(nanos(row.latency.p99)), Some(nanos(pair.latency.p99))));
                    }
                    None if !row.transport.is_shmpool() => cells.extend([Cell::Reference, Cell::Reference]),
                    None => cells.extend([Cell::Empty, Cell::Empty]),
                }
                let mut name = row.transport.name().to_owned();
                if row.transport.busy() && !fits(n, result.cores) {
                    name += " [oversubscribed]";
                }
                section.row(name, cells);
            }
            for ours in [Transport::ShmBusyPoll, Transport::ShmDefault] {
                let Some(peer) = ours.peer() else { continue };
                let what = if ours.busy() { "busy-poll vs polling" } else { "default vs event wait" };
                let line = match (find(ours), find(peer)) {
                    (Some(a), Some(b)) => {
                        let met = a.latency.p50 < b.latency.p50 && a.latency.p99 < b.latency.p99;
                        format!(
                            "{}, {what}: shmpool p50 {} / p99 {} vs iceoryx2 p50 {} / p99 {}: {}{}",
                            group_label(n, size),
                            format_nanos(nanos(a.latency.p50)),
                            format_nanos(nanos(a.latency.p99)),
                            format_nanos(nanos(b.latency.p50)),
                            format_nanos(nanos(b.latency.p99)),
                            verdict(met),
                            if ours.busy() && !fits(n, result.cores) {
                                " (oversubscribed: not a fair figure)"
                            } else {
                                ""
                            },
                        )
                    }
                    _ => format!(
                        "{}, {what}: not run ({} busy-polling processes on {} cores starve; see above): NOT CHECKED",
                        group_label(n, size),
                        n + 1,
                        result.cores
                    ),
                };
                verdicts.push(line);
            }
        }
    }
    for note in [
        "The publisher stamps each message (CLOCK_MONOTONIC, read before it loans the sample and copies the payload",
        "  in); a subscriber's sample is its own clock after it received and checked the message, minus the stamp. The",
        "  publisher sends the next message once every subscriber has acknowledged the last one on a control board",
        "  outside the transport (it sleeps on a futex meanwhile, so it never takes a subscriber's core). Percentiles",
        "  are over every subscriber's samples; the row's figures are the medians of its rounds. CPU/op: CPU time of",
        "  every process (publisher and subscribers) per message.",
        "Pairs, like with like: shmpool's busy-polling subscribers (SpinPolicy::BUSY_POLL) vs iceoryx2's subscribers",
        "  polled without pause; shmpool's default (spin up to 50 µs, adaptively, then sleep on a futex) vs iceoryx2's",
        "  event wait (a notify after every sample, the subscriber asleep on its listener whenever it has nothing).",
        "  The default row's subscribers usually still spin when the next message comes (the publisher sends it",
        "  tens of µs after the acknowledgements): its CPU/op shows that spin; iceoryx2's event wait always sleeps.",
        "p50 / p99 vs pair: the shmpool row's time against its iceoryx2 pair's (marked reference).",
    ] {
        section.note(note);
    }
    if result.oversubscribed {
        section.note(format!(
            "Busy-polling rows with more processes than the {} cores were run on request ({OVERSUBSCRIBE}=1) and are \
             marked [oversubscribed]: a poller holds a core its publisher or a sibling needs, each hand-off waits for \
             a scheduler time slice, and the figures measure the scheduler, not the transport.",
            result.cores
        ));
    } else {
        section.note(format!(
            "Busy-polling rows run only where the publisher and every subscriber have a core of their own (here {} \
             cores: 1 subscriber). With more, a poller holds the core its publisher or a sibling needs and each \
             hand-off waits for a scheduler time slice (milliseconds): those rows are not run (set {OVERSUBSCRIBE}=1 \
             to run them, marked).",
            result.cores
        ));
    }
    section.note("Goal: shmpool ahead of iceoryx2 at p50 and p99 at every size and subscriber count, per pair:");
    for verdict in verdicts {
        section.note(format!("  {verdict}"));
    }
    section
}

fn throughput_section(result: &Topics) -> Section {
    let columns = vec![
        Column::new("subs", "subscribers"),
        Column::new("size", "bytes"),
        Column::new("msgs/s/sub", "messages_per_second_per_subscriber"),
        Column::new("bandwidth/sub", "bytes_per_second_per_subscriber"),
        Column::new("CPU/msg", "cpu_per_message_ns"),
        Column::new("vs pair", "vs_pair"),
    ];
    let mut section = Section::new(
        "topics_throughput",
        "Topics: throughput from 1 publisher to N subscriber processes: messages each subscriber receives per second",
        columns,
    );
    let mut lines = Vec::new();
    for n in COUNTS {
        for size in SIZES {
            let rows: Vec<&PubSubRate> =
                result.throughput.iter().filter(|r| r.subscribers == n && r.bytes == size).collect();
            let find = |t: Transport| rows.iter().find(|r| r.transport == t).copied();
            for row in &rows {
                let vs = match row.transport.peer().and_then(find) {
                    Some(pair) => {
                        Cell::slower(Some(1.0 / row.messages_per_second), Some(1.0 / pair.messages_per_second))
                    }
                    None if !row.transport.is_shmpool() => Cell::Reference,
                    None => Cell::Empty,
                };
                section.row(
                    row.transport.name(),
                    vec![
                        Cell::Count(n as u64),
                        Cell::Bytes(size as u64),
                        Cell::Rate(row.messages_per_second),
                        Cell::Bandwidth(row.messages_per_second * size as f64),
                        Cell::time(row.cpu_per_message),
                        vs,
                    ],
                );
            }
            for ours in [Transport::ShmBusyPoll, Transport::ShmDefault] {
                let (Some(a), Some(b)) = (find(ours), ours.peer().and_then(find)) else { continue };
                let ratio = a.messages_per_second / b.messages_per_second;
                lines.push(format!(
                    "{}, {}: shmpool {} vs iceoryx2 {} per subscriber: {ratio:.2}x ({})",
                    group_label(n, size),
                    if ours.busy() { "busy-poll vs polling" } else { "default vs event wait" },
                    format_rate(a.messages_per_second),
                    format_rate(b.messages_per_second),
                    if ratio > 1.0 { "ahead" } else { "behind" },
                ));
            }
        }
    }
    for note in [
        "The publisher sends back to back for the budget, blocked while a subscriber's queue is full (shmpool",
        "  Overflow::Block, iceoryx2 RetryUntilDelivered; queue depth = buffer size = the one-way window: 256 messages",
        "  at 8 B and 4 KiB, 16 at 1 MiB), then an end marker; the clock stops when every subscriber has taken the",
        "  marker, and each must have received every message. Streamed once, in the last round; pinned alike.",
        "CPU/msg: CPU time of every process per message sent. vs pair: time per message against the iceoryx2 pair.",
    ] {
        section.note(note);
    }
    for line in lines {
        section.note(line);
    }
    section
}

fn queue_section(result: &Topics) -> Section {
    let columns = vec![
        Column::new("items/s", "items_per_second"),
        Column::new("busier consumer", "busier_share"),
        Column::new("CPU/item", "cpu_per_item_ns"),
        Column::new("runs", "runs"),
        Column::new("failed", "failed_runs"),
        Column::new("vs shmpool", "vs_shmpool"),
    ];
    let mut section = Section::new(
        "topics_queue",
        "Work queue: 1 producer, 2 consumer processes, u64 items, each consumer taking and acknowledging one at a time",
        columns,
    );
    let ours = result.queue.iter().find(|r| r.kind == queue::Kind::Shmpool).and_then(|r| r.figures.as_ref());
    for row in &result.queue {
        let cells = match &row.figures {
            Some(f) => vec![
                Cell::Rate(f.items_per_second),
                Cell::Text(format!("{:.0}%", f.busier_share * 100.0)),
                Cell::time(f.cpu_per_item),
                Cell::Count(f.runs as u64),
                Cell::Count(row.failures.len() as u64),
                if row.kind == queue::Kind::Shmpool {
                    Cell::Reference
                } else {
                    Cell::slower(Some(1.0 / f.items_per_second), ours.map(|o| 1.0 / o.items_per_second))
                },
            ],
            None => vec![
                Cell::Text(if row.failures.is_empty() { "absent" } else { "FAILED" }.into()),
                Cell::Empty,
                Cell::Empty,
                Cell::Count(0),
                Cell::Count(row.failures.len() as u64),
                Cell::Empty,
            ],
        };
        section.row(row.kind.name(), cells);
    }
    for note in [
        "The producer pushes for the budget (Redis: XADD, one per call, or 64 pipelined per write), then one end",
        "  item per consumer; each consumer takes items one at a time and acknowledges each (shmpool: pop, then",
        "  Item::ack; Redis: XREADGROUP ... COUNT 1 BLOCK, then XACK; batched: COUNT 64 and one XACK for the 64),",
        "  checking that its items come in order. The clock stops when both consumers took their end item: every",
        "  item was taken and acknowledged. Rate: the median run; busier consumer: its share of that run's items.",
        "Redis: a redis-server of this run on a free loopback port (no persistence), pinned to the pair's second",
        "  core beside a consumer; the client speaks RESP over a TcpStream (TCP_NODELAY). CPU/item counts the",
        "  producer, both consumers and the server.",
    ] {
        section.note(note);
    }
    for row in &result.queue {
        for why in &row.failures {
            section.note(format!("FAILED run of {}: {why}", row.kind.name()));
        }
    }
    let redis = |kind| result.queue.iter().find(|r| r.kind == kind).and_then(|r| r.figures.as_ref());
    match (ours, redis(queue::Kind::RedisOneByOne)) {
        (Some(a), Some(b)) => {
            let ratio = a.items_per_second / b.items_per_second;
            section.note(format!(
                "Goal: >= 20x Redis Streams taking items one at a time: shmpool {} vs Redis {}: {ratio:.1}x: {}",
                format_rate(a.items_per_second),
                format_rate(b.items_per_second),
                verdict(ratio >= 20.0)
            ));
            if let Some(c) = redis(queue::Kind::RedisBatched) {
                section.note(format!(
                    "  Against Redis taking 64 items per call (fewer round trips than shmpool's one-at-a-time pops): \
                     {:.1}x",
                    a.items_per_second / c.items_per_second
                ));
            }
        }
        _ => section.note(
            "Goal: >= 20x Redis Streams: NOT CHECKED: redis-server is absent (not on the PATH), its rows were not run",
        ),
    }
    section
}

/// Entry point of this module's child processes (`--peer topics-...`).
pub fn run_peer(role: &str, args: &[String]) -> BoxResult<()> {
    match role {
        pubsub::ROLE => pubsub::run_child(args),
        queue::ROLE => queue::run_child(args),
        _ => Err(format!("unknown peer role {role}").into()),
    }
}
