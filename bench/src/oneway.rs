//! One-way messages at 8 B, 4 KiB and 1 MiB: shmpool channel vs iceoryx2
//! publish-subscribe vs ipc-channel, latency and throughput.
//!
//! Every row is two real processes: this one and a child (a shmpool channel
//! child, or this binary re-executed as `--peer oneway-...`). The protocol
//! they speak, the message checks and the child guard are in `link`; each
//! transport is one file beside it.

use std::path::Path;
use std::time::Duration;

use crate::common::{format_bytes, format_nanos, progress, BoxResult, Latency, Mode};
use crate::floor::Floor;
use crate::report::{Cell, Column, Section};

mod iox;
mod ipc;
mod link;
mod shm;

use link::{Echoed, Plan, Streamed};
use shm::Wait;

/// Message sizes of the one-way rows.
pub const SIZES: [usize; 3] = [8, 4 << 10, 1 << 20];

/// One-way latency of one transport at one size.
pub struct OneWayLatency {
    pub transport: String,
    pub bytes: usize,
    pub latency: Latency,
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
    IpcChannel,
}

const SHMPOOL_PREFIX: &str = "shmpool";

impl Transport {
    const ALL: [Transport; 9] = [
        Transport::ShmVec,
        Transport::ShmVecBlocking,
        Transport::ShmVecBusyPoll,
        Transport::ShmBuffer,
        Transport::ShmBufferBlocking,
        Transport::ShmBufferBusyPoll,
        Transport::IoxPolling,
        Transport::IoxBlocking,
        Transport::IpcChannel,
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
            Transport::IpcChannel => "ipc-channel, IpcBytesSender",
        }
    }

    /// A handle is larger than an 8-byte payload: the buffer rows start at 4 KiB.
    fn runs_at(self, size: usize) -> bool {
        !matches!(self, Transport::ShmBuffer | Transport::ShmBufferBlocking | Transport::ShmBufferBusyPoll)
            || size >= 4 << 10
    }

    fn run(self, size: usize, plan: &Plan, row: usize) -> BoxResult<(Echoed, Streamed)> {
        match self {
            Transport::ShmVec => shm::vec_rows(size, Wait::Spin, plan),
            Transport::ShmVecBlocking => shm::vec_rows(size, Wait::Sleep, plan),
            Transport::ShmVecBusyPoll => shm::vec_rows(size, Wait::BusyPoll, plan),
            Transport::ShmBuffer => shm::buffer_rows(size, Wait::Spin, plan),
            Transport::ShmBufferBlocking => shm::buffer_rows(size, Wait::Sleep, plan),
            Transport::ShmBufferBusyPoll => shm::buffer_rows(size, Wait::BusyPoll, plan),
            Transport::IoxPolling => iox::rows(size, false, plan, row),
            Transport::IoxBlocking => iox::rows(size, true, plan, row),
            Transport::IpcChannel => ipc::rows(size, plan),
        }
    }
}

fn is_shmpool(transport: &str) -> bool {
    transport.starts_with(SHMPOOL_PREFIX)
}

pub fn measure(mode: Mode) -> BoxResult<OneWay> {
    let plan = Plan::new(mode);
    let mut result = OneWay { latency: Vec::new(), throughput: Vec::new() };
    let mut row = 0;
    let measured = (|| -> BoxResult<()> {
        for size in SIZES {
            for transport in Transport::ALL.into_iter().filter(|t| t.runs_at(size)) {
                progress(&format!("one-way {}, {}", transport.name(), format_bytes(size)));
                row += 1;
                let (echoed, streamed) = transport
                    .run(size, &plan, row)
                    .map_err(|e| format!("one-way {}, {}: {e}", transport.name(), format_bytes(size)))?;
                let latency = Latency::from_histogram(transport.name(), &echoed.samples)
                    .with_cpu(echoed.cpu, 2 * echoed.round_trips);
                result.latency.push(OneWayLatency { transport: transport.name().to_owned(), bytes: size, latency });
                result.throughput.push(OneWayRate {
                    transport: transport.name().to_owned(),
                    bytes: size,
                    messages_per_second: streamed.messages as f64 / streamed.elapsed.as_secs_f64().max(1e-9),
                    cpu_per_message: Some(streamed.cpu / streamed.messages.max(1) as u32),
                });
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
    Ok(result)
}

/// Files of this run's iceoryx2 services still in /dev/shm or /tmp/iceoryx2.
fn leftovers(prefix: &str) -> Vec<String> {
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

/// The one-way time no transport can beat at `size`: half the bare
/// cache-line round trip below 1 MiB, one memcpy of the size from 1 MiB.
fn floor_of(floor: &Floor, size: usize) -> Option<(Duration, &'static str)> {
    if size >= 1 << 20 {
        floor.memcpy_of(size).filter(|d| !d.is_zero()).map(|d| (d, "one memcpy"))
    } else {
        let half = floor.round_trip.p50 / 2;
        (!half.is_zero()).then_some((half, "half the bare round trip"))
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

pub fn sections(result: &OneWay, floor: &Floor) -> Vec<Section> {
    vec![latency_section(result, floor), throughput_section(result)]
}

fn latency_section(result: &OneWay, floor: &Floor) -> Section {
    let mut columns = vec![Column::new("size", "bytes")];
    columns.extend(Latency::columns());
    columns.push(Column::new("vs shmpool", "vs_shmpool"));
    columns.push(Column::new("vs floor", "vs_floor"));
    let mut section = Section::new(
        "oneway_latency",
        "One-way latency between two processes: half of each round trip (the child echoes a message of the same size)",
        columns,
    );
    let mut verdicts = Vec::new();
    for size in SIZES {
        let rows: Vec<&OneWayLatency> = result.latency.iter().filter(|r| r.bytes == size).collect();
        let best = |shmpool: bool| {
            rows.iter().filter(|r| is_shmpool(&r.transport) == shmpool).min_by_key(|r| r.latency.p50).copied()
        };
        let (ours, theirs) = (best(true), best(false));
        let reference = ours.map(|r| nanos(r.latency.p50));
        let bound = floor_of(floor, size);
        for row in &rows {
            let mut cells = vec![Cell::Bytes(size as u64)];
            cells.extend(row.latency.cells());
            let is_reference = ours.is_some_and(|r| std::ptr::eq(r, *row));
            cells.push(if is_reference {
                Cell::Reference
            } else {
                Cell::slower(Some(nanos(row.latency.p50)), reference)
            });
            cells.push(bound.map_or(Cell::Empty, |(d, _)| Cell::Factor(nanos(row.latency.p50) / nanos(d))));
            section.row(row.transport.clone(), cells);
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
            Some((d, what)) => {
                let factor = nanos(ours.latency.p50) / nanos(d);
                line += &format!(", {factor:.1}x the floor ({what}, {}; goal: within 3x)", format_nanos(nanos(d)));
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
        // Like with like: sleeping shmpool vs iceoryx2's event wait,
        // busy-polling shmpool vs iceoryx2's polling subscriber.
        for (suffix, what, peer) in [
            ("no spinning", "without spinning", Transport::IoxBlocking),
            ("busy-poll", "busy-polling", Transport::IoxPolling),
        ] {
            let ours = rows.iter().filter(|r| r.transport.ends_with(suffix)).min_by_key(|r| r.latency.p50);
            let theirs = rows.iter().find(|r| r.transport == peer.name());
            let (Some(a), Some(b)) = (ours, theirs) else { continue };
            let cpu = |r: &OneWayLatency| r.latency.cpu_per_op.map_or("-".to_owned(), |d| format_nanos(nanos(d)));
            let ahead = a.latency.p50 < b.latency.p50 && a.latency.p99 < b.latency.p99;
            verdicts.push(format!(
                "{}: {what}, shmpool ({}) p50 {} / p99 {} (CPU/msg {}) vs {} p50 {} / p99 {} (CPU/msg {}): {}",
                format_bytes(size),
                a.transport,
                format_nanos(nanos(a.latency.p50)),
                format_nanos(nanos(a.latency.p99)),
                cpu(a),
                b.transport,
                format_nanos(nanos(b.latency.p50)),
                format_nanos(nanos(b.latency.p99)),
                cpu(b),
                if ahead { "ahead at p50 and p99" } else { "NOT ahead at both p50 and p99" },
            ));
        }
    }
    for note in [
        "Each row is two processes: a message goes to the child, which checks it and sends one of the same size back;",
        "  the one-way time is half the round trip (as iceoryx2's own benchmarks report it).",
        "Vec<u8>: the channel archives the vector into its shared segment (one copy) and the receiver deserialises it",
        "  (a second copy). SharedBuffer handle: the sender copies the payload into a buffer of the channel's segment and",
        "  sends its handle; the receiver reads the bytes in place. iceoryx2: a loaned sample, written in place (one",
        "  copy of the payload into it), read in place. ipc-channel: the bytes through a Unix socket (kernel copies).",
        "  Both zero-copy senders reuse the buffer freed last (still in the cache), so at 1 MiB each costs about one",
        "  memcpy of the payload; Vec<u8> costs two, plus an allocation.",
        "Waiting: shmpool spins up to 50 µs (adaptively) then sleeps on a futex; \"no spinning\" sleeps at once;",
        "  \"busy-poll\" (Channel::busy_poll) spins and never sleeps, as iceoryx2 polling does; \"event wait\" sleeps on",
        "  an iceoryx2 listener, notified after every sample. Like with like: busy-poll vs polling, no spinning vs event.",
        "CPU/op: CPU time of both processes per one-way message (spinning shows here, not as speed).",
        "vs shmpool: p50 against the fastest shmpool row of the same size (marked reference).",
        "vs floor: p50 against half a bare cache-line round trip between two processes (8 B, 4 KiB) or one memcpy of",
        "  the size in one process (1 MiB); the goal is shmpool within 3x of it.",
        "Every message is checked (length, its sequence number stamped at both ends, a pattern byte in the middle):",
        "  a lost, repeated, reordered or corrupted message fails the run.",
    ] {
        section.note(note);
    }
    for verdict in verdicts {
        section.note(verdict);
    }
    section
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
        "Same transports and payload handling as the latency table. CPU/msg: CPU time of both processes per message.",
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
