//! The net section (issue 14, built with the bench's feature `net`): a pool
//! across hosts, on loopback TCP.
//!
//! - Round trip: a pool with no local worker (`workers(0)` + `listen`) and
//!   one member process (`shmpool::net::join`, 1 worker) answering
//!   `submit(square, x).wait()`, beside zenoh's own query round trip
//!   between two processes (a queryable in a child answering `get`: the
//!   engine's floor), zenoh's put/subscribe ping-pong (the pattern the relay
//!   uses: a put each way) and a plain TCP request/reply (8 bytes,
//!   TCP_NODELAY). Every row squares an 8-byte request and checks the
//!   reply; the rows run in rounds of rotating order, the parent's side
//!   pinned to one core of the pair and every child (and its own workers)
//!   to the other.
//! - Throughput: `pool.map(square, 0..N)` run by the member alone, beside
//!   the same map on a local pool of 1 worker (no network).
//! - Streaming (`stream`): 1 MiB messages one way, a topic across hosts (a
//!   publisher here, a subscriber in a child with its own session and topic
//!   namespace) beside zenoh's own put to a subscriber in a child.
//!
//! The children are this binary re-executed with `--peer net-member`,
//! `--peer net-zenoh`, `--peer net-tcp` or `--peer net-stream-*`; each pins
//! itself to the core it is given before it starts a thread, so that
//! everything it starts (zenoh's threads, the member's worker processes)
//! inherits that core.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zenoh::Wait;

use crate::affinity::{self, ParentPin};
use crate::common::{
    check_reply, check_squares, format_rate, measure_cpu, median, progress, rotated, square, time_ops, BoxResult,
    Latency, Mode, Rounds,
};
use crate::pipes::PEER_FLAG;
use crate::process::Reaped;
use crate::report::{verdict, Cell, Column, Section};

mod stream;

/// The secret of the bench's pool and members.
const SECRET: &[u8] = b"shmpool-bench net section";
/// The zenoh floor's key expressions: the queryable's, and the ping-pong's.
const QUERY_KEY: &str = "bench/net/square";
const PING_KEY: &str = "bench/net/ping";
const PONG_KEY: &str = "bench/net/pong";
/// The most tasks a throughput run is sized to.
const MAX_TASKS: u64 = 5_000_000;
/// How long a child may take to come up (connect, join) or to exit.
const SETTLE: Duration = Duration::from_secs(20);
/// The goal: the remote round trip within this factor of zenoh's query.
const GOAL_FACTOR: f64 = 1.2;
/// The goal: remote batched map throughput, tasks per second.
const GOAL_RATE: f64 = 1e6;

/// Counts of one mode.
struct Params {
    /// Rounds of the round-trip rows, in rotating order.
    rounds: usize,
    /// Untimed round trips per row at the start of each round.
    warm_up: usize,
    /// Timed round trips per row and round, at most.
    iterations: usize,
    /// Time per row and round, at most (after 3 samples).
    budget: Duration,
    /// Throughput runs per row (the median is shown), alternating rows.
    runs: usize,
    /// How long a throughput run should take (its task count is sized to it).
    run_time: Duration,
    /// Streaming runs per row (the median is shown), alternating rows.
    stream_runs: usize,
    /// How long a streaming run should take (its message count is sized to it).
    stream_time: Duration,
}

impl Params {
    fn new(mode: Mode) -> Params {
        Params {
            rounds: mode.pick(3, 5),
            warm_up: mode.pick(300, 1_000),
            iterations: mode.pick(20_000, 100_000),
            budget: mode.pick(Duration::from_millis(1_500), Duration::from_secs(4)),
            runs: mode.pick(3, 5),
            run_time: mode.pick(Duration::from_millis(1_000), Duration::from_secs(3)),
            stream_runs: mode.pick(3, 5),
            stream_time: mode.pick(Duration::from_millis(400), Duration::from_secs(2)),
        }
    }
}

/// The round-trip rows, in the order they are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Row {
    Remote,
    ZenohQuery,
    ZenohPingPong,
    Tcp,
    Local,
}

const ROWS: [Row; 5] = [Row::Remote, Row::ZenohQuery, Row::ZenohPingPong, Row::Tcp, Row::Local];

impl Row {
    fn name(self) -> &'static str {
        match self {
            Row::Remote => "shmpool remote task: submit + wait, workers(0) + 1 member process",
            Row::ZenohQuery => "zenoh get -> queryable in a child process (the floor)",
            Row::ZenohPingPong => "zenoh put -> subscriber in a child, put back",
            Row::Tcp => "TCP request/reply, 8 B, TCP_NODELAY, child process",
            Row::Local => "shmpool local task: submit + wait, 1 local worker (no network)",
        }
    }
}

// ---------------------------------------------------------------------------
// The children

/// Runs this process as one of the section's children: `net-member
/// ENDPOINT CORE`, `net-zenoh ENDPOINT CORE`, `net-tcp PORT CORE`, or one
/// of the streaming rows' sinks (`net-stream-topic ENDPOINT CORE TOPIC`,
/// `net-stream-zenoh ENDPOINT CORE`).
pub fn run_peer(role: &str, args: &[String]) -> BoxResult<()> {
    let [target, core, rest @ ..] = args else {
        return Err(format!("{role} needs an endpoint and a core, got {args:?}").into());
    };
    affinity::pin_thread(0, core.parse()?)?;
    match (role, rest) {
        ("net-member", []) => {
            shmpool::net::join(target, 1, SECRET)?;
            Ok(())
        }
        ("net-zenoh", []) => zenoh_peer(target),
        ("net-tcp", []) => tcp_peer(target.parse()?),
        (stream::TOPIC_SINK, [topic]) => stream::topic_sink(target, topic),
        (stream::ZENOH_SINK, []) => stream::zenoh_sink(target),
        (other, _) => Err(format!("unknown net peer `{other}`, or wrong arguments {args:?}").into()),
    }
}

/// A zenoh configuration like shmpool's sessions': a peer that neither
/// scouts nor gossips, listening or connecting only where told.
fn zenoh_config(listen: &[&str], connect: &[&str]) -> BoxResult<zenoh::Config> {
    let list = |endpoints: &[&str]| {
        let quoted: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        format!("[{}]", quoted.join(","))
    };
    let mut config = zenoh::Config::default();
    for (key, value) in [
        ("mode", "\"peer\"".to_owned()),
        ("scouting/multicast/enabled", "false".to_owned()),
        ("scouting/gossip/enabled", "false".to_owned()),
        ("listen/endpoints", list(listen)),
        ("connect/endpoints", list(connect)),
        ("adminspace/enabled", "false".to_owned()),
    ] {
        config.insert_json5(key, &value).map_err(|e| format!("zenoh configuration {key} = {value}: {e}"))?;
    }
    Ok(config)
}

/// zenoh's errors (boxed, `Send + Sync`) as the bench's.
trait Zenoh<T> {
    fn z(self) -> BoxResult<T>;
}

impl<T> Zenoh<T> for zenoh::Result<T> {
    fn z(self) -> BoxResult<T> {
        self.map_err(|e| -> Box<dyn std::error::Error> { e })
    }
}

/// The 8-byte request in `payload`, squared, as bytes; `None` when it is
/// not 8 bytes.
fn squared(payload: &[u8]) -> Option<[u8; 8]> {
    let request = u64::from_le_bytes(payload.try_into().ok()?);
    Some(square(request).to_le_bytes())
}

/// The zenoh child: connects to the parent's session, answers queries on
/// [`QUERY_KEY`] and puts each ping back as a pong, from zenoh's own
/// threads, until its stdin closes.
fn zenoh_peer(endpoint: &str) -> BoxResult<()> {
    let session = zenoh::open(zenoh_config(&[], &[endpoint])?).wait().z()?;
    let _queryable = session
        .declare_queryable(QUERY_KEY)
        .callback(|query| {
            if let Some(reply) = query.payload().and_then(|p| squared(&p.to_bytes())) {
                let _ = query.reply(QUERY_KEY, reply.to_vec()).wait();
            }
        })
        .wait()
        .z()?;
    let pong =
        session.declare_publisher(PONG_KEY).congestion_control(zenoh::qos::CongestionControl::Block).wait().z()?;
    let _subscriber = session
        .declare_subscriber(PING_KEY)
        .callback(move |sample| {
            if let Some(reply) = squared(&sample.payload().to_bytes()) {
                let _ = pong.put(reply.to_vec()).wait();
            }
        })
        .wait()
        .z()?;
    // The parent closes our stdin when it is done.
    let _ = io::stdin().read_to_end(&mut Vec::new());
    session.close().wait().z()?;
    Ok(())
}

/// The TCP child: connects to the parent and squares every 8-byte request
/// until the parent closes the connection.
fn tcp_peer(port: u16) -> BoxResult<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    let mut request = [0u8; 8];
    loop {
        match stream.read_exact(&mut request) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        stream.write_all(&square(u64::from_le_bytes(request)).to_le_bytes())?;
    }
}

/// Spawns `--peer ROLE TARGET CORE` on the child's core, leading its own
/// process group (a member's workers die with it).
fn spawn_child(role: &str, target: &str, stdin: Stdio) -> BoxResult<Reaped> {
    let mut command = child_command(role, target, &[])?;
    command.stdin(stdin);
    Ok(Reaped::spawn_group(&mut command, format!("the {role} child"))?)
}

/// The command line of `--peer ROLE TARGET CORE EXTRA...`, the child's core
/// filled in.
fn child_command(role: &str, target: &str, extra: &[&str]) -> BoxResult<Command> {
    let core = affinity::pair().1.to_string();
    let mut command = Command::new(std::env::current_exe()?);
    command.args([PEER_FLAG, role, target, &core]).args(extra);
    Ok(command)
}

/// A free TCP port on loopback (free when asked: it is bound again at once).
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `pid` and every process descended from it, from `/proc/*/stat`.
fn with_descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parens.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((child, ppid))
        })
        .collect();
    let mut found = vec![pid];
    let mut at = 0;
    while at < found.len() {
        let parent = found[at];
        found.extend(parents.iter().filter(|&&(_, ppid)| ppid == parent).map(|&(child, _)| child));
        at += 1;
    }
    found
}

// ---------------------------------------------------------------------------
// The rig: every row's two processes, up at once

struct Rig {
    pool: shmpool::Pool,
    /// A local pool of 1 worker: the member's own hop, measured apart.
    local: shmpool::Pool,
    member: Reaped,
    zenoh: zenoh::Session,
    pings: zenoh::pubsub::Publisher<'static>,
    pongs: zenoh::pubsub::Subscriber<zenoh::handlers::FifoChannelHandler<zenoh::sample::Sample>>,
    zenoh_child: Reaped,
    tcp: TcpStream,
    tcp_child: Reaped,
}

impl Rig {
    fn new() -> BoxResult<Rig> {
        let endpoint = format!("tcp/127.0.0.1:{}", free_port()?);
        let pool = shmpool::Pool::builder().workers(0).listen(&endpoint).secret(SECRET).build()?;
        let member = spawn_child("net-member", &endpoint, Stdio::null())?;
        // With no local worker, the first task waits for the member to join.
        let ticket = pool.submit(square, 7)?;
        let reply = match ticket.wait_timeout(SETTLE) {
            Ok(reply) => reply?,
            Err(_) => return Err(format!("the member did not answer within {SETTLE:?}").into()),
        };
        check_reply(7, reply)?;

        let endpoint = format!("tcp/127.0.0.1:{}", free_port()?);
        let zenoh = zenoh::open(zenoh_config(&[&endpoint], &[])?).wait().z()?;
        let zenoh_child = spawn_child("net-zenoh", &endpoint, Stdio::piped())?;
        let pings =
            zenoh.declare_publisher(PING_KEY).congestion_control(zenoh::qos::CongestionControl::Block).wait().z()?;
        let pongs = zenoh.declare_subscriber(PONG_KEY).wait().z()?;

        let listener = TcpListener::bind("127.0.0.1:0")?;
        let tcp_child = spawn_child("net-tcp", &listener.local_addr()?.port().to_string(), Stdio::null())?;
        let (tcp, _) = listener.accept()?;
        tcp.set_nodelay(true)?;

        let local = shmpool::Pool::builder().workers(1).build()?;
        for pid in local.worker_pids() {
            affinity::pin_process(pid, affinity::pair().1)?;
        }

        let mut rig = Rig { pool, local, member, zenoh, pings, pongs, zenoh_child, tcp, tcp_child };
        rig.wait_for_zenoh()?;
        Ok(rig)
    }

    /// Waits until the zenoh child answers both a query and a ping.
    fn wait_for_zenoh(&mut self) -> BoxResult<()> {
        let deadline = Instant::now() + SETTLE;
        while self.query_once(1, Some(Duration::from_millis(500))).is_err() {
            if Instant::now() > deadline {
                return Err(format!("the zenoh child did not answer a query within {SETTLE:?}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        loop {
            self.pings.put(2u64.to_le_bytes().to_vec()).wait().z()?;
            if let Some(sample) = self.pongs.recv_timeout(Duration::from_millis(200)).z()? {
                // Drain pongs of earlier pings: from here on, one per ping.
                check_reply(2, reply_of(&sample.payload().to_bytes())?)?;
                while self.pongs.recv_timeout(Duration::from_millis(200)).z()?.is_some() {}
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the zenoh child did not answer a ping within {SETTLE:?}").into());
            }
        }
    }

    /// One zenoh query, to its first reply.
    fn query_once(&self, request: u64, timeout: Option<Duration>) -> BoxResult<()> {
        let mut get = self
            .zenoh
            .get(QUERY_KEY)
            .payload(request.to_le_bytes().to_vec())
            .consolidation(zenoh::query::ConsolidationMode::None);
        if let Some(timeout) = timeout {
            get = get.timeout(timeout);
        }
        let replies = get.wait().z()?;
        let reply = replies.recv().z()?;
        let sample = reply.result().map_err(|e| format!("the query failed: {e:?}"))?;
        Ok(check_reply(request, reply_of(&sample.payload().to_bytes())?)?)
    }

    fn round_trip(&mut self, row: Row, request: u64) -> BoxResult<()> {
        match row {
            Row::Remote => Ok(check_reply(request, self.pool.submit(square, request)?.wait()?)?),
            Row::Local => Ok(check_reply(request, self.local.submit(square, request)?.wait()?)?),
            Row::ZenohQuery => self.query_once(request, None),
            Row::ZenohPingPong => {
                self.pings.put(request.to_le_bytes().to_vec()).wait().z()?;
                let sample = self.pongs.recv().z()?;
                Ok(check_reply(request, reply_of(&sample.payload().to_bytes())?)?)
            }
            Row::Tcp => {
                self.tcp.write_all(&request.to_le_bytes())?;
                let mut reply = [0u8; 8];
                self.tcp.read_exact(&mut reply)?;
                Ok(check_reply(request, u64::from_le_bytes(reply))?)
            }
        }
    }

    /// The processes of `row`: this one, and the child with its own.
    fn pids(&self, row: Row) -> Vec<u32> {
        let mut pids = vec![0];
        let child = match row {
            Row::Local => {
                pids.extend(self.local.worker_pids());
                return pids;
            }
            Row::Remote => &self.member,
            Row::ZenohQuery | Row::ZenohPingPong => &self.zenoh_child,
            Row::Tcp => &self.tcp_child,
        };
        pids.extend(with_descendants(child.id()));
        pids
    }

    /// One round of `row`.
    fn measure(&mut self, row: Row, params: &Params) -> BoxResult<Latency> {
        time_ops(params.warm_up, 0, None, |i| self.round_trip(row, i))?;
        let pids = self.pids(row);
        let (samples, cpu) =
            measure_cpu(&pids, || time_ops(0, params.iterations, Some(params.budget), |i| self.round_trip(row, i)));
        let samples = samples?;
        Ok(Latency::from_histogram(row.name(), &samples).with_cpu(cpu, samples.len() as usize))
    }

    /// Closes every connection, which ends the children, and checks their exits.
    fn finish(self) -> BoxResult<()> {
        let Rig { pool, local, member, zenoh, pings, pongs, mut zenoh_child, tcp, tcp_child } = self;
        drop(tcp);
        tcp_child.finish(SETTLE)?;
        drop(zenoh_child.take_stdin());
        zenoh_child.finish(SETTLE)?;
        drop((pings, pongs));
        zenoh.close().wait().z()?;
        // The pool's close tells the member, whose join returns.
        drop((pool, local));
        member.finish(SETTLE)
    }
}

/// An 8-byte reply.
fn reply_of(payload: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] = payload
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("a reply of {} bytes", payload.len())))?;
    Ok(u64::from_le_bytes(bytes))
}

// ---------------------------------------------------------------------------
// The section

/// One throughput row: tasks per run, and the median run's time and CPU.
struct Batch {
    name: &'static str,
    tasks: u64,
    elapsed: Duration,
    cpu: Duration,
}

/// Measures the net section's tables.
pub fn measure(mode: Mode) -> BoxResult<Vec<Section>> {
    let params = Params::new(mode);
    let _pin = ParentPin::new();
    progress("net: starting the member, the zenoh peer and the TCP peer");
    let mut rig = Rig::new()?;
    let mut figures = vec![Rounds::default(); ROWS.len()];
    for round in 0..params.rounds {
        for index in rotated(round, ROWS.len()) {
            let row = ROWS[index];
            progress(&format!("net round trip, round {}/{}: {}", round + 1, params.rounds, row.name()));
            figures[index].rounds.push(rig.measure(row, &params)?);
        }
    }
    let batches = measure_throughput(&rig, &params)?;
    rig.finish()?;
    let streams = stream::measure(&params)?;
    Ok(vec![latency_section(&params, &figures), throughput_section(&params, &batches), stream::section(&streams)])
}

/// One `map` of `tasks` squares on `pool`, checked: its time and CPU.
fn map_run(pool: &shmpool::Pool, pids: &[u32], tasks: u64) -> BoxResult<(Duration, Duration)> {
    let start = Instant::now();
    let (replies, cpu) = measure_cpu(pids, || -> BoxResult<Vec<u64>> {
        Ok(pool.map(square, 0..tasks)?.collect::<Result<Vec<u64>, _>>()?)
    });
    let elapsed = start.elapsed();
    check_squares(tasks, &replies?)?;
    Ok((elapsed, cpu))
}

fn measure_throughput(rig: &Rig, params: &Params) -> BoxResult<Vec<Batch>> {
    let pools = [(&rig.pool, rig.pids(Row::Remote)), (&rig.local, rig.pids(Row::Local))];
    let names =
        ["shmpool map, workers(0) + 1 member process (over loopback)", "shmpool map, 1 local worker (no network)"];
    // Each row's task count: what its warm-up run says fills `run_time`.
    let mut tasks = [0u64; 2];
    for (i, (pool, pids)) in pools.iter().enumerate() {
        progress(&format!("net throughput, sizing: {}", names[i]));
        let probe = 20_000;
        let (elapsed, _) = map_run(pool, pids, probe)?;
        let rate = probe as f64 / elapsed.as_secs_f64().max(1e-9);
        tasks[i] = ((rate * params.run_time.as_secs_f64()) as u64).clamp(probe, MAX_TASKS);
    }
    let mut times = [Vec::new(), Vec::new()];
    let mut cpus = [Vec::new(), Vec::new()];
    for run in 0..params.runs {
        for index in rotated(run, 2) {
            progress(&format!("net throughput, run {}/{}: {}", run + 1, params.runs, names[index]));
            let (pool, pids) = &pools[index];
            let (elapsed, cpu) = map_run(pool, pids, tasks[index])?;
            times[index].push(elapsed);
            cpus[index].push(cpu);
        }
    }
    Ok((0..2)
        .map(|i| Batch {
            name: names[i],
            tasks: tasks[i],
            elapsed: median(times[i].clone()),
            cpu: median(cpus[i].clone()),
        })
        .collect())
}

/// The median over the rounds of one figure of each round.
fn median_of(rounds: &Rounds, figure: impl Fn(&Latency) -> Option<Duration>) -> Option<Duration> {
    let values: Vec<Duration> = rounds.rounds.iter().filter_map(figure).collect();
    (!values.is_empty()).then(|| median(values))
}

fn latency_section(params: &Params, figures: &[Rounds]) -> Section {
    let mut section = Section::new(
        "net_latency",
        format!(
            "Net round trip over loopback TCP (127.0.0.1): one task (an 8-byte request squared and sent back, the \
             reply checked); shmpool: a pool with no local worker that listens, one member process of 1 worker \
             (shmpool::net::join); zenoh 1.10 peers like shmpool's (no scouting, no gossip); {} rounds of up to {} \
             timed (at most {} each) after {} for warm-up, in rotating order, parent and children pinned to cores \
             {} and {}",
            params.rounds,
            params.iterations,
            crate::common::format_nanos(params.budget.as_secs_f64() * 1e9),
            params.warm_up,
            affinity::pair().0,
            affinity::pair().1
        ),
        vec![
            Column::new("p50 (median)", "p50_ns"),
            Column::new("spread", "p50_spread"),
            Column::new("p90", "p90_ns"),
            Column::new("p99", "p99_ns"),
            Column::new("CPU/op", "cpu_per_op_ns"),
            Column::new("vs zenoh query (p50)", "p50_vs_zenoh_query"),
        ],
    );
    let p50 = |row: Row| {
        let at = ROWS.iter().position(|r| *r == row)?;
        figures[at].p50().map(|d| d.as_secs_f64())
    };
    let floor = p50(Row::ZenohQuery);
    for (row, f) in ROWS.iter().zip(figures) {
        section.row(
            row.name(),
            vec![
                f.p50().map_or(Cell::Empty, Cell::time),
                f.spread().map_or(Cell::Empty, |s| Cell::Text(format!("±{:.0}%", s * 100.0))),
                median_of(f, |l| Some(l.p90)).map_or(Cell::Empty, Cell::time),
                f.p99().map_or(Cell::Empty, Cell::time),
                median_of(f, |l| l.cpu_per_op).map_or(Cell::Empty, Cell::time),
                if *row == Row::ZenohQuery { Cell::Reference } else { Cell::slower(p50(*row), floor) },
            ],
        );
    }
    if let (Some(remote), Some(floor)) = (p50(Row::Remote), floor) {
        let factor = remote / floor.max(1e-12);
        section.note(format!(
            "goal: remote round trip within {GOAL_FACTOR}x of zenoh's query round trip (p50): {factor:.2}x, {}",
            verdict(factor <= GOAL_FACTOR)
        ));
    }
    if let (Some(remote), Some(puts), Some(local)) = (p50(Row::Remote), p50(Row::ZenohPingPong), p50(Row::Local)) {
        let relay = remote - puts - local;
        section.note(format!(
            "the relay's own share (p50): remote - zenoh put ping-pong - local task = {}, {:.0}% of the remote round \
             trip (its threads' hand-offs, frame sealing and checking, archiving)",
            crate::common::format_nanos(relay * 1e9),
            relay / remote.max(1e-12) * 100.0
        ));
    }
    section.note(
        "p50 (median), p90, p99, CPU/op: the median over the rounds of each round's figure; spread: ±half the range of \
         the rounds' p50s, of their median; CPU/op: CPU time of the parent (every thread: zenoh's, the relay's) and \
         of the child with everything it started (the member's worker), per timed round trip",
    );
    section
}

fn throughput_section(params: &Params, rows: &[Batch]) -> Section {
    let mut section = Section::new(
        "net_throughput",
        format!(
            "Net throughput: pool.map(square, 0..N), every reply checked in order, run by one member process over \
             loopback (workers(0): nothing runs locally) beside the same map on a local pool of 1 worker; N sized \
             so that a run takes about {} (at most {MAX_TASKS}); median of {} runs, rows alternating",
            crate::common::format_nanos(params.run_time.as_secs_f64() * 1e9),
            params.runs
        ),
        vec![
            Column::new("tasks/run", "tasks"),
            Column::new("tasks/s", "tasks_per_second"),
            Column::new("per task", "ns_per_task"),
            Column::new("CPU/task", "cpu_per_task_ns"),
            Column::new("vs local", "time_vs_local"),
        ],
    );
    let per_task = |row: &Batch| row.elapsed.as_secs_f64() / row.tasks.max(1) as f64;
    let local = rows.get(1).map(per_task);
    for (i, row) in rows.iter().enumerate() {
        section.row(
            row.name,
            vec![
                Cell::Count(row.tasks),
                Cell::Rate(1.0 / per_task(row).max(1e-15)),
                Cell::Nanos(per_task(row) * 1e9),
                Cell::Nanos(row.cpu.as_secs_f64() * 1e9 / row.tasks.max(1) as f64),
                if i == 1 { Cell::Reference } else { Cell::slower(Some(per_task(row)), local) },
            ],
        );
    }
    if let Some(remote) = rows.first() {
        let rate = 1.0 / per_task(remote).max(1e-15);
        section.note(format!(
            "goal: remote batched map >= 1 M tasks/s over loopback: {}, {}",
            format_rate(rate),
            verdict(rate >= GOAL_RATE)
        ));
    }
    section.note(
        "CPU/task: CPU time of the parent (every thread) and the worker side (the member and its worker, or the \
         local worker), per task, in the median run",
    );
    section
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::histogram;

    fn figures(remote_ns: u64, query_ns: u64) -> Vec<Rounds> {
        ROWS.iter()
            .map(|&row| {
                let ns = match row {
                    Row::Remote => remote_ns,
                    Row::ZenohQuery => query_ns,
                    _ => 10_000,
                };
                let mut h = histogram();
                h.record(ns).expect("in range");
                Rounds { rounds: vec![Latency::from_histogram(row.name(), &h)] }
            })
            .collect()
    }

    #[test]
    fn the_goal_lines_follow_the_figures_shown() {
        let params = Params::new(Mode::Quick);
        let met = latency_section(&params, &figures(110_000, 100_000));
        assert!(met.notes[0].contains("1.10x, MET"), "{:?}", met.notes);
        let missed = latency_section(&params, &figures(130_000, 100_000));
        assert!(missed.notes[0].contains("1.30x, MISSED"), "{:?}", missed.notes);
        let batch = |tasks, ms| Batch { name: "r", tasks, elapsed: Duration::from_millis(ms), cpu: Duration::ZERO };
        let fast = throughput_section(&params, &[batch(2_000_000, 1_000), batch(1_000, 1)]);
        assert!(fast.notes[0].contains("2.00 M/s, MET"), "{:?}", fast.notes);
        let slow = throughput_section(&params, &[batch(500_000, 1_000), batch(1_000, 1)]);
        assert!(slow.notes[0].contains("500.0 k/s, MISSED"), "{:?}", slow.notes);
    }

    #[test]
    fn descendants_include_the_process_itself() {
        let me = std::process::id();
        assert_eq!(with_descendants(me).first(), Some(&me));
    }
}
