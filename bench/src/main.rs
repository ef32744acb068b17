//! `shmpool-bench`: shmpool side by side with what users would pick instead,
//! in one run, on one machine, with the same payloads.
//!
//! # Sections
//!
//! * **latency**: one task's round trip with nothing else in flight: shmpool
//!   (spinning then sleeping, the default, and blocking only), its remote
//!   objects, a pipe, a Unix socket, ipc-channel request/reply, a procspawn
//!   pool, Python's `multiprocessing.Pool.apply`, a crossbeam channel between
//!   threads (no process boundary), and the floor: a bare cache-line
//!   ping-pong between two processes. Percentiles come from an HDR
//!   histogram; the CPU time both sides used per round trip is shown beside
//!   them, so that busy-spinning cannot pass for speed.
//! * **throughput**: trivial tasks (square a `u64`, every reply checked in
//!   order), one by one and batched, with 1 worker and with one per core,
//!   against the same peers.
//! * **one-way**: messages of 8 B, 4 KiB and 1 MiB from one process to
//!   another: shmpool's channel against iceoryx2 publish-subscribe and
//!   ipc-channel, latency (round trip / 2) and throughput.
//! * **payload**, **idle CPU**: a 1 MiB argument read in place or by value;
//!   the CPU an idle pool burns.
//! * **locks**: every shmpool lock kind, uncontended and contended by two
//!   processes, against a robust process-shared pthread mutex and raw_sync.
//! * **shared map**: reads and updates from another process against Python's
//!   `Manager().dict()`.
//! * **hand-off**: a `SharedBuffer` of 8 B to 1 GiB handed to a worker
//!   against the peers' shared memory (ipc-channel's `IpcSharedMemory`,
//!   Python's `multiprocessing.shared_memory`) and their copy paths (a pipe,
//!   Python pickling), each beside a floor measured with its own buffers.
//! * **pipeline**: N workers digesting 4 MiB shared buffers against N threads
//!   of one process over the same buffers and Python's shared_memory; first
//!   pass and steady state apart.
//! * **async**: a `Ticket` awaited on a tokio current-thread runtime beside
//!   the blocking wait and a tokio `UnixStream` to a child process; 10,000
//!   tickets awaited at once; the CPU a process burns while a future waits.
//! * **topics**: a named `Topic` from 1 publisher to 1, 2 and 4 subscriber
//!   processes against iceoryx2 publish-subscribe (latency, throughput), and
//!   a named `Queue` with 2 consumer processes against Redis Streams.
//! * **net** (built only with the feature `net`): a pool with no local
//!   worker and one member process over loopback TCP, its task round trip
//!   beside zenoh's own query round trip and a plain TCP request/reply, and
//!   its batched map throughput; 1 MiB messages one way through a topic
//!   across hosts beside zenoh's own put.
//!
//! Every ratio compares rows measured in the same run. The peers are this
//! binary re-executed with the hidden first argument `--peer ROLE`, or
//! `python3` running the scripts in `bench/python/` (skipped, and said so,
//! when `python3` is missing).

mod affinity;
mod asyncs;
mod common;
mod crc32;
mod floor;
mod handoff;
mod locks;
mod map;
#[cfg(feature = "net")]
mod net;
mod oneway;
mod params;
mod payload;
mod peers;
mod pipeline;
mod pipes;
mod plot;
mod process;
mod report;
mod roundtrip;
mod topics;

use std::path::PathBuf;

use common::{BoxResult, Machine, Mode};
use params::Params;
use pipes::{PEER_FLAG, SINK};
use report::{Cell, Column, Report, Section};

const USAGE: &str = "\
Usage: shmpool-bench [--quick | --full] [--json FILE] [--plot DIR] [--only SECTIONS]

Measures shmpool side by side with pipes, Unix sockets, ipc-channel,
procspawn, iceoryx2, raw_sync, pthread and Python's multiprocessing, and
prints tables with ratios.

Options:
  --quick          fewer iterations, under two minutes of measuring (the default)
  --full           more iterations, for steadier figures (several minutes)
  --json FILE      also write the figures to FILE as JSON
  --plot DIR       also write SVG charts and the tables (tables.md) to DIR
  --only SECTIONS  measure only these, comma-separated, of: latency, throughput,
                   oneway, payload, idle, locks, map, handoff, pipeline,
                   async, topics, net (net: built with --features net)
  -h, --help       print this help
";

/// The sections `--only` accepts, in the order they run.
const SECTIONS: [&str; 11] =
    ["latency", "throughput", "oneway", "payload", "idle", "locks", "map", "handoff", "pipeline", "async", "topics"];
/// The section built only with the feature `net`, run after the others.
const NET: &str = "net";

/// Whether `--only` accepts `section` in this build.
fn known_section(section: &str) -> bool {
    SECTIONS.contains(&section) || (cfg!(feature = "net") && section == NET)
}

fn main() {
    shmpool::init();
    procspawn::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some(PEER_FLAG) {
        run_peer(&args[1..])
    } else {
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
    };
    if let Err(error) = result {
        eprintln!("shmpool-bench: {error}");
        std::process::exit(1);
    }
}

/// Runs this process as one of the peers of the other sections.
fn run_peer(args: &[String]) -> BoxResult<()> {
    let rest = args.get(1..).unwrap_or(&[]);
    match args.first().map(String::as_str) {
        Some(SINK) => pipes::run_sink(rest.first().map(String::as_str)),
        Some(role) if role.starts_with("oneway-") => oneway::run_peer(role, rest),
        Some(role) if role.starts_with("rt-") => peers::run_peer(role, rest),
        Some(role) if role.starts_with("topics-") => topics::run_peer(role, rest),
        #[cfg(feature = "net")]
        Some(role) if role.starts_with("net-") => net::run_peer(role, rest),
        transport => pipes::run_peer(transport),
    }
}

// ---------------------------------------------------------------------------
// Command line

struct Options {
    mode: Mode,
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
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
    let mut options = Options { mode: Mode::Quick, json: None, plot: None, only: None };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| args.next().cloned())
                .filter(|v| !v.is_empty())
                .ok_or(format!("{flag} needs {what}"))
        };
        match flag {
            "-h" | "--help" => return Ok(Action::Help),
            "--quick" => options.mode = Mode::Quick,
            "--full" => options.mode = Mode::Full,
            "--json" => options.json = Some(PathBuf::from(value("a file name")?)),
            "--plot" => options.plot = Some(PathBuf::from(value("a directory")?)),
            "--only" => {
                let list: Vec<String> = value("a list of sections")?.split(',').map(str::to_owned).collect();
                if let Some(unknown) = list.iter().find(|s| !known_section(s)) {
                    let hint = if unknown == NET { " (the net section is built with --features net)" } else { "" };
                    return Err(format!("unknown section `{unknown}`{hint} (known: {})", SECTIONS.join(", ")));
                }
                options.only = Some(list);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Action::Run(options))
}

// ---------------------------------------------------------------------------
// The whole run

fn run(options: &Options) -> BoxResult<()> {
    let mode = options.mode;
    let params = Params::new(mode);
    let machine = Machine::detect();
    // The run-wide floor serves the latency table; the one-way, hand-off
    // and pipeline sections measure their own beside their rows.
    let floor = if options.wants("latency") { Some(floor::measure(params.latency_iterations)?) } else { None };
    let mut sections = Vec::new();
    let mut plots = plot::Data::default();

    let mut empty_task = None;
    if let (true, Some(floor)) = (options.wants("latency"), &floor) {
        let mut rows = roundtrip::measure_latency(&params)?;
        empty_task = rows.first().map(|row| row.p50);
        rows.extend(peers::latency(mode)?);
        sections.push(roundtrip::latency_section(&params, &rows, floor));
        plots.latency = rows;
        plots.latency.push(floor.round_trip.clone());
    }
    if options.wants("throughput") {
        let mut rows = roundtrip::measure_throughput(&params, machine.cores)?;
        rows.extend(peers::throughput(mode, machine.cores)?);
        sections.push(roundtrip::throughput_section(&params, &rows));
        plots.throughput = rows;
    }
    if options.wants("oneway") {
        let result = oneway::measure(mode)?;
        sections.extend(oneway::sections(&result));
        plots.oneway = Some(result);
    }
    if options.wants("payload") {
        sections.push(payload::measure_payload(&params, empty_task)?);
    }
    if options.wants("idle") {
        sections.push(payload::measure_idle_cpu()?);
    }
    if options.wants("locks") {
        sections.push(locks::measure_locks(&params)?);
    }
    if options.wants("map") {
        sections.push(map::measure_map(&params)?);
    }
    if options.wants("handoff") {
        sections.push(handoff::measure_handoff(&params, mode)?);
    }
    if options.wants("pipeline") {
        sections.push(pipeline::measure_pipeline(mode)?);
    }
    if options.wants("async") {
        sections.extend(asyncs::measure(mode)?);
    }
    if options.wants("topics") {
        let result = topics::measure(mode, machine.cores)?;
        sections.extend(topics::sections(&result));
        plots.topics = Some(result);
    }
    #[cfg(feature = "net")]
    if options.wants(NET) {
        sections.extend(net::measure(mode)?);
    }
    if let Some(floor) = &floor {
        sections.push(floor_section(floor));
    }

    let report = Report { mode, machine: &machine, sections: &sections };
    print!("{}", report.table());
    if let Some(path) = &options.json {
        std::fs::write(path, report.json())?;
        println!("\nJSON written to {}", path.display());
    }
    if let Some(dir) = &options.plot {
        let written = plot::write_all(dir, &machine, mode, &plots)?;
        println!("\nCharts written to {}: {}", dir.display(), written.join(", "));
        // The full tables beside the charts, for the docs the README links.
        let tables = format!("# shmpool-bench tables ({})\n\n```text\n{}```\n", mode_name(mode), report.table());
        std::fs::write(dir.join("tables.md"), tables)?;
        println!("Tables written to {}", dir.join("tables.md").display());
    }
    let invalid = report.invalid();
    if !invalid.is_empty() {
        return Err(format!(
            "this run is INVALID and its figures must not be used: a row came out faster than its floor, which \
             only a measuring error can do ({})",
            invalid.join("; ")
        )
        .into());
    }
    Ok(())
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Quick => "quick mode",
        Mode::Full => "full mode",
    }
}

/// The run-wide floor, as a table of its own.
fn floor_section(floor: &floor::Floor) -> Section {
    let mut section = Section::new(
        "floor",
        "Run-wide floor (latency table): a bare cache-line ping-pong between two spinning processes pinned to the \
         fixed pair of cores; the one-way, hand-off and pipeline tables measure their own floors beside their rows, \
         with the rows' buffers",
        vec![Column::new("round trip p50", "ns"), Column::new("CPU/op", "cpu_per_op_ns")],
    );
    section.row(
        floor.round_trip.name.clone(),
        vec![Cell::time(floor.round_trip.p50), floor.round_trip.cpu_per_op.map_or(Cell::Empty, Cell::time)],
    );
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Action, String> {
        parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_parse_in_both_spellings() {
        let Ok(Action::Run(options)) = parse(&["--full", "--json=out.json", "--plot", "charts", "--only", "locks,map"])
        else {
            panic!("valid arguments were refused");
        };
        assert_eq!(options.mode, Mode::Full);
        assert_eq!(options.json, Some(PathBuf::from("out.json")));
        assert_eq!(options.plot, Some(PathBuf::from("charts")));
        assert!(options.wants("locks") && options.wants("map") && !options.wants("latency"));
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        assert!(parse(&["--only", "latency,nope"]).is_err_and(|e| e.contains("nope")));
        assert!(parse(&["--json"]).is_err_and(|e| e.contains("--json needs")));
        assert!(parse(&["--plot="]).is_err());
        assert!(parse(&["--fast"]).is_err_and(|e| e.contains("--fast")));
        assert!(matches!(parse(&["-h"]), Ok(Action::Help)));
    }

    #[test]
    fn the_net_section_exists_only_with_its_feature() {
        let parsed = parse(&["--only", "net"]);
        if cfg!(feature = "net") {
            assert!(matches!(parsed, Ok(Action::Run(o)) if o.wants("net") && !o.wants("latency")));
        } else {
            assert!(parsed.is_err_and(|e| e.contains("--features net")));
        }
    }
}
