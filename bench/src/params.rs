//! Iteration counts of the sections written before the peers joined (the
//! peer modules pick their own counts from the [`Mode`]).

use std::time::Duration;

use crate::common::Mode;

/// Iteration counts for one [`Mode`].
pub struct Params {
    /// Untimed round trips before the timed ones, per latency row.
    pub latency_warm_up: usize,
    /// Timed round trips per latency row.
    pub latency_iterations: usize,
    /// Tasks per throughput run of the one-by-one rows.
    pub tasks: u64,
    /// Tasks per throughput run of the batched rows, which are much faster.
    pub batched_tasks: u64,
    /// Throughput runs per row; the median is reported.
    pub runs: usize,
    /// Runs per lock row, uncontended and contended; the median is reported.
    pub lock_runs: usize,
    /// Rounds (lock, increment, unlock) per uncontended lock run.
    pub lock_pairs: u64,
    /// Rounds per process in a contended lock run.
    pub contended_rounds: u64,
    /// Reads of the shared map by the worker.
    pub map_reads: u64,
    /// Updates of the shared map by the worker.
    pub map_updates: u64,
    /// Reads of the Manager dict by the Python child.
    pub python_reads: u64,
    /// Updates of the Manager dict by the Python child.
    pub python_updates: u64,
    /// Untimed and (at most) timed hand-offs per buffer size; also the pipe
    /// copies (fewer warm-ups from 64 MiB up).
    pub handoff_warm_up: usize,
    pub handoff_iterations: usize,
    /// Time the timed calls of one hand-off row may take over all its sizes
    /// and rounds, and after which they stop early (3 samples at least per
    /// size and round, 1 for 1 GiB).
    pub handoff_budget: Duration,
}

impl Params {
    pub fn new(mode: Mode) -> Params {
        match mode {
            Mode::Quick => Params {
                latency_warm_up: 10_000,
                latency_iterations: 100_000,
                tasks: 1_000_000,
                batched_tasks: 5_000_000,
                runs: 5,
                lock_runs: 3,
                lock_pairs: 500_000,
                contended_rounds: 300_000,
                map_reads: 500_000,
                map_updates: 200_000,
                python_reads: 20_000,
                python_updates: 10_000,
                handoff_warm_up: 100,
                handoff_iterations: 2_000,
                handoff_budget: Duration::from_secs(2),
            },
            Mode::Full => Params {
                latency_warm_up: 20_000,
                latency_iterations: 300_000,
                tasks: 3_000_000,
                batched_tasks: 30_000_000,
                runs: 5,
                lock_runs: 5,
                lock_pairs: 2_000_000,
                contended_rounds: 1_000_000,
                map_reads: 2_000_000,
                map_updates: 1_000_000,
                python_reads: 100_000,
                python_updates: 50_000,
                handoff_warm_up: 500,
                handoff_iterations: 10_000,
                handoff_budget: Duration::from_secs(5),
            },
        }
    }
}
