//! One-way messages at 8 B, 4 KiB and 1 MiB: shmpool channel vs iceoryx2
//! publish-subscribe vs ipc-channel (its socket, the copy path, and its
//! `IpcSharedMemory`), latency and throughput, beside a floor measured in
//! the same rounds with the rows' own buffer layout.
//!
//! Every row is two real processes: this one and a child (a shmpool channel
//! child, or this binary re-executed as `--peer oneway-...`), pinned to the
//! fixed pair of cores. The latency rows and the floors run in rounds, in an
//! order that rotates from round to round; a row's figures are the medians
//! of its rounds' (`Rounds`), its spread shown; a row faster than its floor
//! makes the run INVALID. Throughput is streamed in the last round. The
//! protocol the processes speak, the message checks and the child guard are
//! in `link`; each transport is one file beside it.

use std::path::Path;
use std::time::Duration;

use crate::affinity::{self, ParentPin};
use crate::common::{format_bytes, format_nanos, progress, rotated, BoxResult, Latency, Mode, Rounds};
use crate::floor;
use crate::report::{verdict, Cell, Column, Section};

pub(crate) mod iox;
mod ipc;
pub(crate) mod link;
mod shm;

use link::{Echoed, Plan, Streamed};
use shm::Wait;

/// Message sizes of the one-way rows.
pub const SIZES: [usize; 3] = [8, 4 << 10, 1 << 20];

/// One-way latency of one transport (or the floor) at one size: the
/// medians of its rounds.
pub struct OneWayLatency {
    pub transport: String,
    pub bytes: usize,
    pub latency: Latency,
    /// ±half the range of the rounds' p50s, as a share of their median.
    pub spread: Option<f64>,
}

/// One-way throughput of one transport at one size.
pub struct OneWayRate {
    pub transport: String,
    pub bytes: usize,
    pub messages_per_second: f64,
    pub cpu_per_message: Option<Duration>,
}

/// Everything the one-way section measured.
pub struct OneWay {
    pub latency: Vec<OneWayLatency>,
    pub throughput: Vec<OneWayRate>,
    /// The floor of each size, measured beside its rows.
    pub floors: Vec<OneWayLatency>,
    pub rounds: usize,
}

/// The transports, in the order of the rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    ShmVec,
    ShmVecBlocking,
    ShmVecBusyPoll,
    ShmBuffer,
    ShmBufferBlocking,
    ShmBufferBusyPoll,
    IoxPolling,
    IoxBlocking,
    IpcShm,
    IpcBytes,
}

const SHMPOOL_PREFIX: &str = "shmpool";

impl Transport {
    const ALL: [Transport; 10] = [
        Transport::ShmVec,
        Transport::ShmVecBlocking,
        Transport::ShmVecBusyPoll,
        Transport::ShmBuffer,
        Transport::ShmBufferBlocking,
        Transport::ShmBufferBusyPoll,
        Transport::IoxPolling,
        Transport::IoxBlocking,
        Transport::IpcShm,
        Transport::IpcBytes,
    ];

    fn name(self) -> &'static str {
        match self {
            Transport::ShmVec => "shmpool channel, Vec<u8>",
            Transport::ShmVecBlocking => "shmpool channel, Vec<u8>, no spinning",
            Transport::ShmVecBusyPoll => "shmpool channel, Vec<u8>, busy-poll",
            Transport::ShmBuffer => "shmpool channel, SharedBuffer handle",
            Transport::ShmBufferBlocking => "shmpool channel, SharedBuffer handle, no spinning",
            Transport::ShmBufferBusyPoll => "shmpool channel, SharedBuffer handle, busy-poll",
            Transport::IoxPolling => "iceoryx2 pub-sub, loaned, polling",
            Transport::IoxBlocking => "iceoryx2 pub-sub, loaned, event wait",
            Transport::IpcShm => "ipc-channel, IpcSharedMemory back and forth",
            Transport::IpcBytes => "ipc-channel, IpcBytesSender (copy path)",
        }
    }

    /// A handle is larger than an 8-byte payload: the buffer rows start at 4 KiB.
    fn runs_at(self, size: usize) -> bool {
        !matches!(self, Transport::ShmBuffer | Transport::ShmBufferBlocking | Transport::ShmBufferBusyPoll)
            || size >= 4 << 10
    }

    /// One round of the row; `row` is unique to the row and round.
    fn run(self, size: usize, plan: &Plan, row: usize, stream: bool) -> BoxResult<(Echoed, Option<Streamed>)> {
        match self {
            Transport::ShmVec => shm::vec_rows(size, Wait::Spin, plan, stream),
            Transport::ShmVecBlocking => shm::vec_rows(size, Wait::Sleep, plan, stream),
            Transport::ShmVecBusyPoll => shm::vec_rows(size, Wait::BusyPoll, plan, stream),
            Transport::ShmBuffer => shm::buffer_rows(size, Wait::Spin, plan, stream),
            Transport::ShmBufferBlocking => shm::buffer_rows(size, Wait::Sleep, plan, stream),
            Transport::ShmBufferBusyPoll => shm::buffer_rows(size, Wait::BusyPoll, plan, stream),
            Transport::IoxPolling => iox::rows(size, false, plan, row, stream),
            Transport::IoxBlocking => iox::rows(size, true, plan, row, stream),
            Transport::IpcShm => ipc::rows(size, ipc::Kind::SharedMemory, plan, stream),
            Transport::IpcBytes => ipc::rows(size, ipc::Kind::Bytes, plan, stream),
        }
    }
}

/// A line of the latency table: a transport, or the floor of its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Row {
    Transport(Transport),
    Floor,
}

/// The rows of one size, in table order: its transports, then its floor.
fn rows_at(size: usize) -> Vec<Row> {
    Transport::ALL.into_iter().filter(|t| t.runs_at(size)).map(Row::Transport).chain([Row::Floor]).collect()
}

fn is_shmpool(transport: &str) -> bool {
    transport.starts_with(SHMPOOL_PREFIX)
}

/// Measures every row and floor in `mode.pick(3, 5)` rounds, each round
/// every size, each size its rows in rotated order.
pub fn measure(mode: Mode) -> BoxResult<OneWay> {
    let rounds = mode.pick(3, 5);
    let plan = Plan::new(mode, rounds);
    let _pin = ParentPin::new();
    let mut figures: Vec<Vec<Rounds>> =
        SIZES.iter().map(|&size| vec![Rounds::default(); rows_at(size).len()]).collect();
    let mut streamed: Vec<Vec<Option<Streamed>>> =
        SIZES.iter().map(|&size| rows_at(size).iter().map(|_| None).collect()).collect();
    let mut row_id = 0;
    let measured = (|| -> BoxResult<()> {
        for round in 0..rounds {
            for (s, &size) in SIZES.iter().enumerate() {
                let rows = rows_at(size);
                for index in rotated(round, rows.len()) {
                    let name = match rows[index] {
                        Row::Transport(t) => t.name(),
                        Row::Floor => floor::ONE_WAY_FLOOR,
                    };
                    let what = format!("one-way, round {}/{rounds}: {name}, {}", round + 1, format_bytes(size));
                    progress(&what);
                    row_id += 1;
                    let latency = match rows[index] {
                        Row::Floor => floor::one_way_floor(&link::template(size), plan.round_trips, plan.echo_budget),
                        Row::Transport(t) => t.run(size, &plan, row_id, round + 1 == rounds).map(|(echoed, rate)| {
                            streamed[s][index] = rate;
                            Latency::from_histogram(name, &echoed.samples).with_cpu(echoed.cpu, 2 * echoed.round_trips)
                        }),
                    }
                    .map_err(|e| format!("{what}: {e}"))?;
                    figures[s][index].rounds.push(latency);
                }
            }
        }
        Ok(())
    })();
    let removed = iox::remove_domain();
    let left = leftovers(&iox::file_prefix());
    measured?;
    removed?;
    if !left.is_empty() {
        return Err(format!("one-way rows left files behind: {}", left.join(", ")).into());
    }
    let mut result = OneWay { latency: Vec::new(), throughput: Vec::new(), floors: Vec::new(), rounds };
    for (s, &size) in SIZES.iter().enumerate() {
        for (index, row) in rows_at(size).into_iter().enumerate() {
            let f = &figures[s][index];
            let Some(latency) = f.summary() else { continue };
            let line = OneWayLatency { transport: latency.name.clone(), bytes: size, latency, spread: f.spread() };
            match row {
                Row::Floor => result.floors.push(line),
                Row::Transport(_) => result.latency.push(line),
            }
            if let (Row::Transport(t), Some(rate)) = (row, streamed[s][index].take()) {
                result.throughput.push(OneWayRate {
                    transport: t.name().to_owned(),
                    bytes: size,
                    messages_per_second: rate.messages as f64 / rate.elapsed.as_secs_f64().max(1e-9),
                    cpu_per_message: Some(rate.cpu / rate.messages.max(1) as u32),
                });
            }
        }
    }
    Ok(result)
}

/// Files of this run's iceoryx2 services still in /dev/shm or /tmp/iceoryx2.
pub(crate) fn leftovers(prefix: &str) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, found: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                found.push(path.display().to_string());
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, prefix, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new("/dev/shm"), prefix, &mut found);
    walk(Path::new("/tmp/iceoryx2"), prefix, &mut found);
    found
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

pub fn sections(result: &OneWay) -> Vec<Section> {
    vec![latency_section(result), throughput_section(result)]
}

fn latency_section(result: &OneWay) -> Section {
    let mut columns = vec![Column::new("size", "bytes")];
    columns.extend(Latency::columns());
    columns.insert(2, Column::new("spread", "p50_spread"));
    columns.push(Column::new("vs shmpool", "vs_shmpool"));
    columns.push(Column::new("vs floor", "vs_floor"));
    let (parent, child) = affinity::pair();
    let mut section = Section::new(
        "oneway_latency",
        format!(
            "One-way latency between two processes: half of each round trip (the child echoes a message of the same \
             size); {} rounds in rotating order, each row's floor measured in the same rounds, parent and child \
             pinned to cores {parent} and {child}",
            result.rounds
        ),
        columns,
    );
    let mut verdicts = Vec::new();
    let mut beaten = Vec::new();
    for size in SIZES {
        let rows: Vec<&OneWayLatency> = result.latency.iter().filter(|r| r.bytes == size).collect();
        let floor = result.floors.iter().find(|r| r.bytes == size);
        let best = |shmpool: bool| {
            rows.iter().filter(|r| is_shmpool(&r.transport) == shmpool).min_by_key(|r| r.latency.p50).copied()
        };
        let (ours, theirs) = (best(true), best(false));
        let reference = ours.map(|r| nanos(r.latency.p50));
        let bound = floor.map(|f| f.latency.p50).filter(|d| !d.is_zero());
        let cells_of = |row: &OneWayLatency| {
            let mut cells = vec![Cell::Bytes(size as u64)];
            cells.extend(row.latency.cells());
            cells.insert(2, row.spread.map_or(Cell::Empty, |s| Cell::Text(format!("±{:.0}%", s * 100.0))));
            cells
        };
        for row in &rows {
            let mut cells = cells_of(row);
            let is_reference = ours.is_some_and(|r| std::ptr::eq(r, *row));
            cells.push(if is_reference {
                Cell::Reference
            } else {
                Cell::slower(Some(nanos(row.latency.p50)), reference)
            });
            cells.push(bound.map_or(Cell::Empty, |d| Cell::Factor(nanos(row.latency.p50) / nanos(d))));
            if bound.is_some_and(|d| row.latency.p50 < d) {
                beaten.push(format!("{} at {}", row.transport, format_bytes(size)));
            }
            section.row(row.transport.clone(), cells);
        }
        if let Some(floor) = floor {
            let mut cells = cells_of(floor);
            cells.extend([Cell::Empty, Cell::Empty]);
            section.row(floor.transport.clone(), cells);
        }
        let Some(ours) = ours else { continue };
        let mut line = format!(
            "{}: shmpool's best ({}, p50 {})",
            format_bytes(size),
            ours.transport,
            format_nanos(nanos(ours.latency.p50))
        );
        let ahead = theirs.is_none_or(|t| ours.latency.p50 < t.latency.p50);
        if let Some(t) = theirs {
            let ratio = nanos(t.latency.p50) / nanos(ours.latency.p50).max(1e-9);
            line += &if ahead {
                format!(" is ahead of every peer (the fastest, {}, is {ratio:.2}x slower)", t.transport)
            } else {
                format!(" is behind {} ({:.2}x faster)", t.transport, 1.0 / ratio)
            };
        }
        let within = match bound {
            Some(d) => {
                let factor = nanos(ours.latency.p50) / nanos(d);
                line += &format!(", {factor:.1}x its floor ({}; goal: within 3x)", format_nanos(nanos(d)));
                Some(factor <= 3.0)
            }
            None => {
                line += ", floor not measured in this run";
                None
            }
        };
        let verdict = match (ahead, within) {
            (true, Some(true)) => "goal met",
            (true, None) => "ahead; floor goal not checked",
            _ => "GOAL MISSED",
        };
        verdicts.push(format!("{line}: {verdict}"));
        // Like with like: busy-polling shmpool vs iceoryx2's polling
        // subscriber, default (spin then sleep) and sleeping shmpool vs
        // iceoryx2's event wait.
        for (what, ours, peer) in [
            ("busy-poll vs polling", [Transport::ShmVecBusyPoll, Transport::ShmBufferBusyPoll], Transport::IoxPolling),
            ("default vs event wait", [Transport::ShmVec, Transport::ShmBuffer], Transport::IoxBlocking),
            (
                "no spinning vs event wait",
                [Transport::ShmVecBlocking, Transport::ShmBufferBlocking],
                Transport::IoxBlocking,
            ),
        ] {
            let ours =
                rows.iter().filter(|r| ours.iter().any(|t| r.transport == t.name())).min_by_key(|r| r.latency.p50);
            let theirs = rows.iter().find(|r| r.transport == peer.name());
            let (Some(a), Some(b)) = (ours, theirs) else { continue };
            verdicts.push(pair_goal(size, what, a, b));
        }
    }
    for note in [
        "Each row is two processes: a message goes to the child, which checks it and sends one of the same size back;",
        "  the one-way time is half the round trip (as iceoryx2's own benchmarks report it).",
        "Every figure (p50 to max, CPU/op) is the median of the rounds' own; spread: ±half the range of the rounds'",
        "  p50s, of their median; samples: all rounds'. Verdicts use these medians.",
        "Vec<u8>: the channel archives the vector into its shared segment (one copy) and the receiver deserialises it",
        "  (a second copy). SharedBuffer handle: the sender copies the payload into a buffer of the channel's segment and",
        "  sends its handle; the receiver reads the bytes in place. iceoryx2: a loaned sample, written in place (one",
        "  copy of the payload into it), read in place. Both zero-copy senders reuse the buffer freed last (still in the",
        "  cache), so at 1 MiB each costs about one memcpy of the payload; Vec<u8> costs two, plus an allocation.",
        "ipc-channel: IpcSharedMemory as its own benchmark uses it: one region passed back and forth, each end writing",
        "  its message into it in place (deref_mut) and sending it on (its descriptor travels, the receiver maps it;",
        "  streaming, where nothing comes back, makes a region per message with from_bytes). IpcBytesSender is its",
        "  copy path: the bytes through a Unix socket (kernel copies).",
        "Waiting: shmpool spins up to 50 µs (adaptively) then sleeps on a futex; \"no spinning\" sleeps at once;",
        "  \"busy-poll\" (Channel::busy_poll) spins and never sleeps, as iceoryx2 polling does; \"event wait\" sleeps on",
        "  an iceoryx2 listener, notified after every sample. Like with like: busy-poll vs polling, no spinning vs event.",
        "CPU/op: CPU time of both processes per one-way message (spinning shows here, not as speed).",
        "vs shmpool: p50 against the fastest shmpool row of the same size (marked reference).",
        "vs floor: p50 against the floor of the size, measured in the same rounds: the rows' work alone, in the rows'",
        "  buffer layout: each side copies the message from its private template into its own buffer in shared",
        "  memory, stamps it and flips a cache line; the other checks the stamps and middle byte in place (half the",
        "  round trip). The goal is shmpool within 3x of it; a row below 1.0x makes the run INVALID.",
        "Every message is checked (length, its sequence number stamped at both ends, a pattern byte in the middle):",
        "  a lost, repeated, reordered or corrupted message fails the run.",
    ] {
        section.note(note);
    }
    for verdict in verdicts {
        section.note(verdict);
    }
    for what in beaten {
        section.invalid(format!("one-way row beats its floor: {what}"));
    }
    section
}

/// The goal line of one like-with-like pair at one size: shmpool's row `a`
/// ahead of iceoryx2's row `b` at p50 AND p99, CPU per message beside.
fn pair_goal(size: usize, what: &str, a: &OneWayLatency, b: &OneWayLatency) -> String {
    let cpu = |r: &OneWayLatency| r.latency.cpu_per_op.map_or("-".to_owned(), |d| format_nanos(nanos(d)));
    format!(
        "goal: {}, {what}: shmpool ahead of iceoryx2 at p50 AND p99: {} p50 {} / p99 {} (CPU/msg {}) vs {} p50 {} / \
         p99 {} (CPU/msg {}), {}",
        format_bytes(size),
        a.transport,
        format_nanos(nanos(a.latency.p50)),
        format_nanos(nanos(a.latency.p99)),
        cpu(a),
        b.transport,
        format_nanos(nanos(b.latency.p50)),
        format_nanos(nanos(b.latency.p99)),
        cpu(b),
        verdict(a.latency.p50 < b.latency.p50 && a.latency.p99 < b.latency.p99),
    )
}

fn throughput_section(result: &OneWay) -> Section {
    let columns = vec![
        Column::new("size", "bytes"),
        Column::new("msgs/s", "messages_per_second"),
        Column::new("bandwidth", "bytes_per_second"),
        Column::new("CPU/msg", "cpu_per_message_ns"),
        Column::new("vs shmpool", "vs_shmpool"),
    ];
    let mut section = Section::new(
        "oneway_throughput",
        "One-way throughput between two processes: the sender streams, the child checks and counts",
        columns,
    );
    let mut verdicts = Vec::new();
    for size in SIZES {
        let rows: Vec<&OneWayRate> = result.throughput.iter().filter(|r| r.bytes == size).collect();
        let best = |shmpool: bool| {
            rows.iter()
                .filter(|r| is_shmpool(&r.transport) == shmpool)
                .max_by(|a, b| a.messages_per_second.total_cmp(&b.messages_per_second))
                .copied()
        };
        let (ours, theirs) = (best(true), best(false));
        let reference = ours.map(|r| 1.0 / r.messages_per_second);
        for row in &rows {
            let is_reference = ours.is_some_and(|r| std::ptr::eq(r, *row));
            section.row(
                row.transport.clone(),
                vec![
                    Cell::Bytes(size as u64),
                    Cell::Rate(row.messages_per_second),
                    Cell::Bandwidth(row.messages_per_second * size as f64),
                    row.cpu_per_message.map_or(Cell::Empty, Cell::time),
                    if is_reference {
                        Cell::Reference
                    } else {
                        Cell::slower(Some(1.0 / row.messages_per_second), reference)
                    },
                ],
            );
        }
        if let (Some(ours), Some(theirs)) = (ours, theirs) {
            let ratio = ours.messages_per_second / theirs.messages_per_second;
            verdicts.push(if ratio > 1.0 {
                format!(
                    "{}: shmpool's best ({}) is ahead of every peer: {ratio:.2}x the messages/s of the fastest, {}",
                    format_bytes(size),
                    ours.transport,
                    theirs.transport
                )
            } else {
                format!(
                    "{}: GOAL MISSED: shmpool's best ({}) moves {ratio:.2}x the messages/s of {}",
                    format_bytes(size),
                    ours.transport,
                    theirs.transport
                )
            });
        }
    }
    for note in [
        "The sender streams as fast as the transport takes messages; the child checks each one (length, stamps, order)",
        "  and acknowledges every 1/8 of a window (16 MiB or 256 messages in flight at most, whichever is fewer), so",
        "  no transport overflows or drops; the clock stops when the child has acknowledged the last message.",
        "Same transports and payload handling as the latency table, streamed once (in the last round), pinned alike.",
        "  CPU/msg: CPU time of both processes per message.",
        "vs shmpool: time per message against the fastest shmpool row of the same size (marked reference).",
    ] {
        section.note(note);
    }
    for verdict in verdicts {
        section.note(verdict);
    }
    section
}

/// Entry point of this module's child processes (`--peer oneway-...`).
pub fn run_peer(role: &str, args: &[String]) -> BoxResult<()> {
    match role {
        iox::ROLE => iox::run_child(args),
        ipc::ROLE => ipc::run_child(args),
        _ => Err(format!("unknown peer role {role}").into()),
    }
}
