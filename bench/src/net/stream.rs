//! The net section's streaming rows: 1 MiB messages one way, from this
//! process to a child over loopback TCP, as fast as they go.
//!
//! - Topic: a `Topic<Bytes>` here, bridged to a session
//!   (`shmpool::net::bridge`); the publisher loans each sample and stamps
//!   its first and last 8 bytes in place. The child is another "host": its
//!   own session and its own topic namespace (`SHMPOOL_TOPIC_NAMESPACE`),
//!   the same topic bridged there, and a subscriber reading every sample.
//! - zenoh put: the engine's floor. The same 1 MiB, stamped at both ends
//!   around a shared body (no copy before zenoh's own), put on a key with
//!   `CongestionControl::Block`, to a subscriber in a child; both sessions
//!   configured like shmpool's (TCP, peer mode, no scouting, no gossip).
//!
//! Each child (a sink) checks every message (its length, its first and
//! last 8 bytes, their order) and reports the end of each run on its
//! stdout; the parent's clock runs from the first send to that report.
//! A sink ends when its stdin closes.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use shmpool::topic::{Bytes, Topic, TopicError, NAMESPACE_ENV};
use zenoh::bytes::ZBytes;
use zenoh::Wait;

use super::{child_command, free_port, with_descendants, zenoh_config, Params, Zenoh, SECRET, SETTLE};
use crate::affinity;
use crate::common::{format_bytes, format_nanos, format_rate, measure_cpu, median, progress, rotated, BoxResult};
use crate::process::Reaped;
use crate::report::{verdict, Cell, Column, Section};

/// The role of the topic's sink: `net-stream-topic ENDPOINT CORE TOPIC`.
pub(super) const TOPIC_SINK: &str = "net-stream-topic";
/// The role of zenoh's sink: `net-stream-zenoh ENDPOINT CORE`.
pub(super) const ZENOH_SINK: &str = "net-stream-zenoh";

/// The size of every message of a run.
const SIZE: usize = 1 << 20;
/// A probe's size: what a sink answers once, to say it is reachable.
const PROBE_LEN: usize = 8;
/// Marks a run's last message (in its first 8 bytes, beside its index).
const LAST: u64 = 1 << 63;
/// The zenoh row's key.
const STREAM_KEY: &str = "bench/net/stream";
/// Each topic's queue length per subscriber (the bridge's too).
const DEPTH: u32 = 16;
/// Samples the topic's publisher keeps ahead of its bridge, at most.
const WINDOW: u64 = 8;
/// Each topic's segment: room for every queue full of 1 MiB samples.
const SEGMENT: u64 = 128 << 20;
/// How long the publisher sleeps while its bridge is a window behind.
const PACE: Duration = Duration::from_micros(200);
/// How often a probe goes out until a sink hears one.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// How long a sink waits for a message before it looks at its stdin's flag.
const POLL: Duration = Duration::from_millis(100);
/// Messages of the sizing run of each row.
const SIZING: u64 = 16;
/// The most messages a run is sized to.
const MAX_MESSAGES: u64 = 20_000;
/// The goal: the topic's time per message within this factor of zenoh's.
const GOAL_FACTOR: f64 = 1.5;

/// What a sink says, one line each.
const READY: &str = "READY";
const PROBED: &str = "PROBE";
const GOT: &str = "GOT";
const ERROR: &str = "ERROR";

/// The rows, in the order they are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Row {
    Topic,
    Zenoh,
}

const ROWS: [Row; 2] = [Row::Topic, Row::Zenoh];

impl Row {
    fn name(self) -> &'static str {
        match self {
            Row::Topic => {
                "shmpool topic across hosts: loan -> bridge -> subscriber in a child (own session, namespace)"
            }
            Row::Zenoh => "zenoh put -> subscriber in a child (the floor)",
        }
    }
}

// ---------------------------------------------------------------------------
// The messages

/// A message's first and last 8 bytes.
type Ends = ([u8; 8], [u8; 8]);

/// The first and last 8 bytes of message `index` of a run of `n`: the
/// index (the last one marked), then its complement.
fn stamps(index: u64, n: u64) -> Ends {
    let head = if index + 1 == n { index | LAST } else { index };
    (head.to_le_bytes(), (!head).to_le_bytes())
}

/// The first and last 8 bytes of a message of `len` bytes held in `slices`,
/// in order; `None` when it is shorter than 16 bytes or the slices do not
/// add up to `len`.
fn ends<'a>(slices: impl IntoIterator<Item = &'a [u8]>, len: usize) -> Option<Ends> {
    if len < 16 {
        return None;
    }
    let (mut head, mut tail) = ([0u8; 8], [0u8; 8]);
    let tail_from = len - 8;
    let mut at = 0;
    for slice in slices {
        let end = at + slice.len();
        if end > len {
            return None;
        }
        if at < 8 {
            let n = (8 - at).min(slice.len());
            head[at..at + n].copy_from_slice(&slice[..n]);
        }
        let from = at.max(tail_from);
        if from < end {
            tail[from - tail_from..end - tail_from].copy_from_slice(&slice[from - at..]);
        }
        at = end;
    }
    (at == len).then_some((head, tail))
}

/// A sink's check of the messages it receives.
#[derive(Debug, Default)]
struct Tally {
    /// The index the next message of the run under way must carry.
    next: u64,
    /// Whether a probe was answered (only the first one is).
    probed: bool,
}

impl Tally {
    /// Takes a message of `len` bytes whose first and last 8 bytes are
    /// `ends`: the line to tell the parent, if any, or why the message is
    /// wrong (lost, out of order, altered).
    fn take(&mut self, len: usize, ends: Option<Ends>) -> Result<Option<String>, String> {
        if len == PROBE_LEN {
            return Ok((!std::mem::replace(&mut self.probed, true)).then(|| PROBED.to_owned()));
        }
        let Some((head, tail)) = ends.filter(|_| len == SIZE) else {
            return Err(format!("a message of {len} bytes (a run's are {SIZE}, a probe's {PROBE_LEN})"));
        };
        let (head, tail) = (u64::from_le_bytes(head), u64::from_le_bytes(tail));
        let index = head & !LAST;
        if tail != !head {
            return Err(format!("message {index} ends with {tail:#x}, not {:#x}", !head));
        }
        if index != self.next {
            return Err(format!("message {index} came where {} was due (lost or out of order)", self.next));
        }
        self.next += 1;
        if head & LAST != 0 {
            return Ok(Some(format!("{GOT} {}", std::mem::take(&mut self.next))));
        }
        Ok(None)
    }
}

// ---------------------------------------------------------------------------
// The children

/// A line to the parent.
fn say(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Runs a sink: says it is ready, then checks each message `next` gives
/// (its length and ends; `None`: nothing within the timeout) until stdin
/// closes.
fn sink(mut next: impl FnMut(Duration) -> BoxResult<Option<(usize, Option<Ends>)>>) -> BoxResult<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            // The parent closes our stdin when it is done.
            let _ = io::stdin().read_to_end(&mut Vec::new());
            stop.store(true, Ordering::Release);
        })
    };
    say(READY)?;
    let mut tally = Tally::default();
    while !stop.load(Ordering::Acquire) {
        let Some((len, ends)) = next(POLL)? else { continue };
        match tally.take(len, ends) {
            Ok(Some(line)) => say(&line)?,
            Ok(None) => {}
            Err(why) => {
                let _ = say(&format!("{ERROR} {why}"));
                return Err(why.into());
            }
        }
    }
    let _ = watcher.join();
    Ok(())
}

/// The topic's sink: its own session (connected to the parent's) and the
/// topic `name` bridged to it, in this process's namespace.
pub(super) fn topic_sink(endpoint: &str, name: &str) -> BoxResult<()> {
    let session = shmpool::net::Session::builder().connect(endpoint).secret(SECRET).open()?;
    let topic = Topic::<Bytes>::builder(name).depth(DEPTH).segment_size(SEGMENT).network(&session).open_or_create()?;
    let subscriber = topic.subscriber()?;
    let result = sink(|timeout| match subscriber.recv_timeout(timeout) {
        Ok(sample) => {
            let bytes = sample.bytes();
            Ok(Some((bytes.len(), ends([bytes], bytes.len()))))
        }
        Err(TopicError::Timeout) => Ok(None),
        Err(e) => Err(e.into()),
    });
    // The subscriber and the bridge leave before the session closes.
    drop(subscriber);
    drop(topic);
    drop(session);
    result
}

/// zenoh's sink: a subscriber on [`STREAM_KEY`] (zenoh's FIFO handler),
/// read in place (slice by slice: no copy).
pub(super) fn zenoh_sink(endpoint: &str) -> BoxResult<()> {
    let session = zenoh::open(zenoh_config(&[], &[endpoint])?).wait().z()?;
    let subscriber = session.declare_subscriber(STREAM_KEY).wait().z()?;
    let result = sink(|timeout| {
        let Some(sample) = subscriber.recv_timeout(timeout).z()? else { return Ok(None) };
        let payload = sample.payload();
        Ok(Some((payload.len(), ends(payload.slices(), payload.len()))))
    });
    drop(subscriber);
    session.close().wait().z()?;
    result
}

/// A sink child, seen from the parent: its stdin (closed to end it) and the
/// lines of its stdout.
struct Sink {
    child: Reaped,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Sink {
    fn spawn(row: Row, endpoint: &str, topic: &str, namespace: &str) -> BoxResult<Sink> {
        let (role, mut command) = match row {
            Row::Topic => {
                let mut command = child_command(TOPIC_SINK, endpoint, &[topic])?;
                // Another host: the topic of the same name is another one.
                command.env(NAMESPACE_ENV, namespace);
                (TOPIC_SINK, command)
            }
            Row::Zenoh => (ZENOH_SINK, child_command(ZENOH_SINK, endpoint, &[])?),
        };
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = Reaped::spawn_group(&mut command, format!("the {role} child"))?;
        let stdin = child.take_stdin();
        let (Some(stdout), _) = child.take_output() else {
            return Err(format!("the {role} child has no stdout").into());
        };
        let (tx, lines) = mpsc::channel();
        // Ends when the child's stdout closes (it exited).
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Sink { child, stdin, lines })
    }

    /// The sink's next line within `timeout` (`None`: none came); an
    /// `ERROR` line or the sink's exit is an error.
    fn next_line(&self, timeout: Duration) -> BoxResult<Option<String>> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) if line.starts_with(ERROR) => Err(format!("a sink failed: {line}").into()),
            Ok(line) => Ok(Some(line)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("a sink exited early".into()),
        }
    }

    /// The rest of the sink's next line, which must be `word`, within `timeout`.
    fn expect(&self, word: &str, timeout: Duration) -> BoxResult<String> {
        match self.next_line(timeout)? {
            Some(line) => match line.strip_prefix(word) {
                Some(rest) => Ok(rest.trim().to_owned()),
                None => Err(format!("a sink said `{line}` where `{word}` was due").into()),
            },
            None => Err(format!("a sink did not say `{word}` within {timeout:?}").into()),
        }
    }

    /// Ends the sink (closes its stdin) and checks its exit.
    fn finish(&mut self) -> BoxResult<()> {
        drop(self.stdin.take());
        let status = self.child.wait_for(SETTLE)?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("a sink exited with {status}").into())
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Unfinished (the parent failed): asked to end rather than killed,
        // so that its topic leaves nothing in /dev/shm.
        if self.stdin.take().is_some() {
            let _ = self.child.wait_for(SETTLE);
        }
    }
}

// ---------------------------------------------------------------------------
// The sending sides

/// The topic row's sending side. Fields drop in order: the publisher, the
/// bridge, the topic, then the session.
struct TopicSource {
    publisher: shmpool::topic::Publisher<Bytes>,
    bridge: shmpool::net::TopicBridge,
    _topic: Topic<Bytes>,
    _session: shmpool::net::Session,
    /// Samples published (probes too): the bridge's `sent` counts up to it.
    published: u64,
}

impl TopicSource {
    fn open(endpoint: &str, name: &str) -> BoxResult<TopicSource> {
        let session = shmpool::net::Session::builder().listen(endpoint).secret(SECRET).open()?;
        let topic = Topic::<Bytes>::builder(name).depth(DEPTH).segment_size(SEGMENT).open_or_create()?;
        // The bridge itself rather than the builder's `network`: its count
        // of samples sent paces the publisher.
        let bridge = shmpool::net::bridge(&topic, &session)?;
        let publisher = topic.publisher()?;
        Ok(TopicSource { publisher, bridge, _topic: topic, _session: session, published: 0 })
    }

    /// Waits until fewer than `window` samples are on their way to the
    /// network. The bridge drops its oldest sample rather than hold back a
    /// local publisher: a publisher faster than the network keeps within
    /// the bridge's queue itself.
    fn pace(&self, window: u64) -> BoxResult<()> {
        let deadline = Instant::now() + SETTLE;
        while self.published.saturating_sub(self.bridge.sent()) >= window {
            if Instant::now() > deadline {
                return Err(format!("the topic's bridge sent nothing for {SETTLE:?}").into());
            }
            thread::sleep(PACE);
        }
        Ok(())
    }

    /// Publishes a sample of `len` bytes starting with `head` (and ending
    /// with `tail`), written in place.
    fn send(&mut self, len: usize, head: [u8; 8], tail: Option<[u8; 8]>) -> BoxResult<()> {
        self.pace(WINDOW)?;
        let mut loan = self.publisher.loan(len)?;
        loan[..8].copy_from_slice(&head);
        if let Some(tail) = tail {
            loan[len - 8..].copy_from_slice(&tail);
        }
        loan.send()?;
        self.published += 1;
        Ok(())
    }
}

/// The zenoh row's sending side.
struct ZenohSource {
    publisher: zenoh::pubsub::Publisher<'static>,
    session: zenoh::Session,
    /// Every message's bytes between its stamps, shared (never copied here).
    body: ZBytes,
}

impl ZenohSource {
    fn open(endpoint: &str) -> BoxResult<ZenohSource> {
        let session = zenoh::open(zenoh_config(&[endpoint], &[])?).wait().z()?;
        let publisher = session
            .declare_publisher(STREAM_KEY)
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .wait()
            .z()?;
        Ok(ZenohSource { publisher, session, body: ZBytes::from(vec![0xA5; SIZE - 16]) })
    }

    /// Puts `head` alone (a probe), or `head`, the body and `tail`.
    fn send(&self, head: [u8; 8], tail: Option<[u8; 8]>) -> BoxResult<()> {
        let mut writer = ZBytes::writer();
        writer.append(ZBytes::from(head));
        if let Some(tail) = tail {
            writer.append(self.body.clone());
            writer.append(ZBytes::from(tail));
        }
        self.publisher.put(writer.finish()).wait().z()
    }

    fn close(self) -> BoxResult<()> {
        drop(self.publisher);
        self.session.close().wait().z()
    }
}

enum Source {
    Topic(TopicSource),
    Zenoh(ZenohSource),
}

impl Source {
    /// Sends message `index` of a run of `n` (of [`SIZE`] bytes).
    fn send(&mut self, index: u64, n: u64) -> BoxResult<()> {
        let (head, tail) = stamps(index, n);
        match self {
            Source::Topic(topic) => topic.send(SIZE, head, Some(tail)),
            Source::Zenoh(zenoh) => zenoh.send(head, Some(tail)),
        }
    }

    /// Sends a probe.
    fn probe(&mut self) -> BoxResult<()> {
        let head = u64::MAX.to_le_bytes();
        match self {
            Source::Topic(topic) => topic.send(PROBE_LEN, head, None),
            Source::Zenoh(zenoh) => zenoh.send(head, None),
        }
    }

    /// Waits until nothing sent is still on its way out of this process.
    fn drain(&self) -> BoxResult<()> {
        match self {
            Source::Topic(topic) => topic.pace(1),
            // A put returns once zenoh has the message queued.
            Source::Zenoh(_) => Ok(()),
        }
    }

    fn close(self) -> BoxResult<()> {
        match self {
            Source::Topic(topic) => {
                drop(topic);
                Ok(())
            }
            Source::Zenoh(zenoh) => zenoh.close(),
        }
    }
}

/// Probes until `sink` hears one: messages sent before its subscription is
/// known here reach nobody.
fn connect(source: &mut Source, sink: &Sink) -> BoxResult<()> {
    sink.expect(READY, SETTLE)?;
    let deadline = Instant::now() + SETTLE;
    loop {
        source.probe()?;
        match sink.next_line(PROBE_EVERY)? {
            Some(line) if line == PROBED => return source.drain(),
            Some(line) => return Err(format!("a sink said `{line}` before it heard a probe").into()),
            None if Instant::now() > deadline => {
                return Err(format!("a sink heard no probe within {SETTLE:?}").into());
            }
            None => {}
        }
    }
}

/// One run of `n` messages, from the first send to the sink's report of
/// the last: its time and the CPU `pids` used.
fn run(source: &mut Source, sink: &Sink, pids: &[u32], n: u64) -> BoxResult<(Duration, Duration)> {
    let start = Instant::now();
    let (got, cpu) = measure_cpu(pids, || -> BoxResult<String> {
        for index in 0..n {
            source.send(index, n)?;
        }
        sink.expect(GOT, SETTLE)
    });
    let elapsed = start.elapsed();
    let got = got?;
    if got != n.to_string() {
        return Err(format!("a sink counted {got} messages of a run of {n}").into());
    }
    Ok((elapsed, cpu))
}

// ---------------------------------------------------------------------------
// The rows

/// One row: messages per run, and the median run's time and CPU.
pub(super) struct Stream {
    row: Row,
    messages: u64,
    elapsed: Duration,
    cpu: Duration,
}

impl Stream {
    fn per_message(&self) -> f64 {
        self.elapsed.as_secs_f64() / self.messages.max(1) as f64
    }

    fn rate(&self) -> f64 {
        1.0 / self.per_message().max(1e-15)
    }
}

/// The streaming rows, and how they were run.
pub(super) struct Streams {
    rows: Vec<Stream>,
    runs: usize,
    run_time: Duration,
}

/// Measures both rows; fails if they leave anything in /dev/shm.
pub(super) fn measure(params: &Params) -> BoxResult<Streams> {
    let name = crate::common::unique_name("net-stream");
    let measured = measure_rows(params, &name);
    let left: Vec<String> = std::fs::read_dir("/dev/shm")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|file| file.contains(&name))
        .collect();
    let streams = measured?;
    if !left.is_empty() {
        return Err(format!("the streaming rows left files in /dev/shm: {}", left.join(", ")).into());
    }
    Ok(streams)
}

fn measure_rows(params: &Params, name: &str) -> BoxResult<Streams> {
    progress("net streaming: starting the topic's and zenoh's sinks");
    let namespace = format!("netbench-b{}", std::process::id());
    // Declared before the sinks: dropped after them, on every path.
    let mut sources = Vec::new();
    let mut sinks = Vec::new();
    for row in ROWS {
        let endpoint = format!("tcp/127.0.0.1:{}", free_port()?);
        sources.push(match row {
            Row::Topic => Source::Topic(TopicSource::open(&endpoint, name)?),
            Row::Zenoh => Source::Zenoh(ZenohSource::open(&endpoint)?),
        });
        sinks.push(Sink::spawn(row, &endpoint, name, &namespace)?);
    }
    let pids: Vec<Vec<u32>> = sinks
        .iter()
        .map(|sink| {
            let mut pids = vec![0];
            pids.extend(with_descendants(sink.child.id()));
            pids
        })
        .collect();
    // Each row's message count: what its sizing run says fills `stream_time`.
    let mut counts = [0u64; ROWS.len()];
    for (i, row) in ROWS.iter().enumerate() {
        progress(&format!("net streaming, connecting and sizing: {}", row.name()));
        connect(&mut sources[i], &sinks[i])?;
        // The first run touches every page the samples will use: untimed.
        run(&mut sources[i], &sinks[i], &pids[i], SIZING)?;
        let (elapsed, _) = run(&mut sources[i], &sinks[i], &pids[i], SIZING)?;
        let rate = SIZING as f64 / elapsed.as_secs_f64().max(1e-9);
        counts[i] = ((rate * params.stream_time.as_secs_f64()) as u64).clamp(SIZING, MAX_MESSAGES);
    }
    let mut times = vec![Vec::new(); ROWS.len()];
    let mut cpus = vec![Vec::new(); ROWS.len()];
    for round in 0..params.stream_runs {
        for i in rotated(round, ROWS.len()) {
            progress(&format!(
                "net streaming, run {}/{}: {} x {}, {}",
                round + 1,
                params.stream_runs,
                counts[i],
                format_bytes(SIZE),
                ROWS[i].name()
            ));
            let (elapsed, cpu) = run(&mut sources[i], &sinks[i], &pids[i], counts[i])?;
            times[i].push(elapsed);
            cpus[i].push(cpu);
        }
    }
    for sink in &mut sinks {
        sink.finish()?;
    }
    for source in sources {
        source.close()?;
    }
    Ok(Streams {
        rows: ROWS
            .iter()
            .enumerate()
            .map(|(i, &row)| Stream {
                row,
                messages: counts[i],
                elapsed: median(times[i].clone()),
                cpu: median(cpus[i].clone()),
            })
            .collect(),
        runs: params.stream_runs,
        run_time: params.stream_time,
    })
}

pub(super) fn section(streams: &Streams) -> Section {
    let (parent, child) = affinity::pair();
    let mut section = Section::new(
        "net_stream",
        format!(
            "Net streaming over loopback TCP (127.0.0.1): {} messages one way, from this process to a child, as fast \
             as they go, every message checked; N sized so that a run takes about {} (at most {MAX_MESSAGES}); median \
             of {} runs, rows alternating; parent and children pinned to cores {parent} and {child}",
            format_bytes(SIZE),
            format_nanos(streams.run_time.as_secs_f64() * 1e9),
            streams.runs
        ),
        vec![
            Column::new("msgs/run", "messages"),
            Column::new("msgs/s", "messages_per_second"),
            Column::new("bandwidth", "bytes_per_second"),
            Column::new("per msg", "ns_per_message"),
            Column::new("CPU/msg", "cpu_per_message_ns"),
            Column::new("vs zenoh put", "time_vs_zenoh_put"),
        ],
    );
    let find = |row: Row| streams.rows.iter().find(|s| s.row == row);
    let floor = find(Row::Zenoh).map(Stream::per_message);
    for s in &streams.rows {
        section.row(
            s.row.name(),
            vec![
                Cell::Count(s.messages),
                Cell::Rate(s.rate()),
                Cell::GibBandwidth(s.rate() * SIZE as f64),
                Cell::Nanos(s.per_message() * 1e9),
                Cell::Nanos(s.cpu.as_secs_f64() * 1e9 / s.messages.max(1) as f64),
                if s.row == Row::Zenoh { Cell::Reference } else { Cell::slower(Some(s.per_message()), floor) },
            ],
        );
    }
    if let (Some(topic), Some(zenoh)) = (find(Row::Topic), find(Row::Zenoh)) {
        let factor = topic.per_message() / zenoh.per_message().max(1e-15);
        let gib = |s: &Stream| s.rate() * SIZE as f64 / (1u64 << 30) as f64;
        section.note(format!(
            "goal: 1 MiB topic over loopback within {GOAL_FACTOR}x of zenoh put: topic {} ({:.2} GiB/s) vs zenoh put \
             {} ({:.2} GiB/s): {factor:.2}x, {}",
            format_rate(topic.rate()),
            gib(topic),
            format_rate(zenoh.rate()),
            gib(zenoh),
            verdict(factor <= GOAL_FACTOR)
        ));
    }
    for note in [
        "Topic: Topic<Bytes> (depth 16); the publisher loans each sample and writes its first and last 8 bytes in",
        "  place; the bridge (shmpool::net::bridge) copies it out, seals it (AES-256-GCM) and puts it on zenoh; the",
        "  child's session checks the seal and its bridge publishes the payload into the child's own topic (another",
        "  namespace: another host), read by a subscriber there. The bridge drops its oldest sample rather than hold",
        "  back a local publisher, so the publisher keeps at most 8 samples ahead of the bridge's count of samples",
        "  sent (TopicBridge::sent), sleeping meanwhile.",
        "zenoh put: the same 1 MiB (its 8-byte stamps around a shared body: no copy before zenoh's), put with",
        "  CongestionControl::Block to a subscriber (FIFO handler) in a child; both sessions like shmpool's (TCP, peer",
        "  mode, no scouting, no gossip). Every subscriber checks each message's length, its first and last 8 bytes",
        "  and its place in the run. The clock runs from the first send to the child's report of the run's last",
        "  message; CPU/msg: CPU time of the parent (every thread) and of the child, per message.",
    ] {
        section.note(note);
    }
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(index: u64, n: u64) -> (usize, Option<Ends>) {
        let (head, tail) = stamps(index, n);
        let mut bytes = vec![0u8; SIZE];
        bytes[..8].copy_from_slice(&head);
        bytes[SIZE - 8..].copy_from_slice(&tail);
        (SIZE, ends([&bytes[..]], SIZE))
    }

    #[test]
    fn a_tally_reports_each_run_and_its_first_probe() {
        let mut tally = Tally::default();
        let probe = Some((u64::MAX.to_le_bytes(), [0; 8]));
        assert_eq!(tally.take(PROBE_LEN, None), Ok(Some(PROBED.to_owned())));
        assert_eq!(tally.take(PROBE_LEN, probe), Ok(None), "one answer per sink");
        for run in [3, 1] {
            for index in 0..run {
                let (len, ends) = message(index, run);
                let said = tally.take(len, ends).expect("in order");
                assert_eq!(said, (index + 1 == run).then(|| format!("{GOT} {run}")));
            }
        }
    }

    #[test]
    fn a_tally_refuses_lost_altered_and_odd_messages() {
        let mut tally = Tally::default();
        let (len, ends) = message(1, 3);
        assert!(tally.take(len, ends).unwrap_err().contains("lost or out of order"));
        let (len, ends) = message(0, 3);
        let (head, _) = ends.expect("16 bytes or more");
        assert!(tally.take(len, Some((head, [7; 8]))).unwrap_err().contains("ends with"));
        assert!(tally.take(SIZE - 1, ends).unwrap_err().contains("bytes"));
    }

    #[test]
    fn ends_are_found_across_slices() {
        let bytes: Vec<u8> = (0..40u8).collect();
        let want = Some((<[u8; 8]>::try_from(&bytes[..8]).unwrap(), <[u8; 8]>::try_from(&bytes[32..]).unwrap()));
        for cuts in [vec![], vec![3], vec![8, 32], vec![1, 2, 30, 35, 39], vec![0, 0, 40]] {
            let mut slices = Vec::new();
            let mut at = 0;
            for cut in cuts.into_iter().chain([40]) {
                slices.push(&bytes[at..cut]);
                at = cut;
            }
            assert_eq!(ends(slices.iter().copied(), 40), want, "{slices:?}");
        }
        assert_eq!(ends([&bytes[..10]], 10), None, "too short");
        assert_eq!(ends([&bytes[..20]], 40), None, "slices short of the length");
        assert_eq!(ends([&bytes[..]], 20), None, "slices past the length");
    }

    #[test]
    fn the_goal_line_follows_the_figures_shown() {
        let streams = |topic_ms, zenoh_ms| Streams {
            rows: [(Row::Topic, topic_ms), (Row::Zenoh, zenoh_ms)]
                .into_iter()
                .map(|(row, ms)| Stream {
                    row,
                    messages: 1_000,
                    elapsed: Duration::from_millis(ms),
                    cpu: Duration::ZERO,
                })
                .collect(),
            runs: 3,
            run_time: Duration::from_millis(400),
        };
        let met = section(&streams(1_400, 1_000));
        assert!(met.notes[0].contains("1.40x, MET"), "{:?}", met.notes);
        assert!(met.notes[0].contains("714.3 /s (0.70 GiB/s) vs zenoh put 1.0 k/s (0.98 GiB/s)"), "{:?}", met.notes);
        let missed = section(&streams(2_000, 1_000));
        assert!(missed.notes[0].contains("2.00x, MISSED"), "{:?}", missed.notes);
    }
}
