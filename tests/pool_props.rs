//! Property tests: every path that carries a user value through a pool
//! (`Pool` argument and result, `WorkerPool` task and output, `Remote` call
//! and read) carries it intact, at every length that straddles a boundary
//! the code knows (slot payload, inline limit, arena size classes) and for
//! every slot size the builder accepts. Nothing hangs: each test has a
//! watchdog that aborts the process.
//!
//! One pool per slot size serves all of a test's cases, so the file stays fast.

#[path = "common/values.rs"]
mod values;
#[path = "common/watchdog.rs"]
mod watchdog;
use std::time::Duration;
use values::{bytes, lengths, text};
use watchdog::watchdog;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shmpool::{Pool, Remote, Worker, WorkerPool};

const LIMIT: Duration = Duration::from_secs(120);

/// Slot sizes: the builder's bounds, the default, and sizes in between.
const SLOTS: [usize; 7] = [80, 81, 200, 256, 640, 1000, 1024];

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

fn echo_bytes(v: Vec<u8>) -> Vec<u8> {
    v
}

fn echo_text(s: String) -> String {
    s
}

fn pools() -> Vec<Pool> {
    SLOTS.iter().map(|&s| Pool::builder().workers(1).slot_size(s).build().unwrap()).collect()
}

#[test]
fn pool_arguments_and_results_arrive_intact() {
    let _w = watchdog("pool_props", LIMIT);
    let pools = pools();
    runner(400)
        .run(&(0..pools.len(), lengths(), any::<u64>()), |(p, len, seed)| {
            let pool = &pools[p];
            let v = bytes(len, seed);
            prop_assert_eq!(pool.submit(echo_bytes, v.clone()).unwrap().wait(), Ok(v), "slot {}", SLOTS[p]);
            let s = text(len, seed);
            prop_assert_eq!(pool.submit(echo_text, s.clone()).unwrap().wait(), Ok(s), "slot {}", SLOTS[p]);
            Ok(())
        })
        .unwrap();
}

#[test]
fn pool_maps_carry_every_length_intact() {
    let _w = watchdog("map_props", LIMIT);
    let pools = pools();
    runner(60)
        .run(&(0..pools.len(), proptest::collection::vec((lengths(), any::<u64>()), 1..12)), |(p, items)| {
            let input: Vec<Vec<u8>> = items.iter().map(|&(len, seed)| bytes(len, seed)).collect();
            let out: Vec<_> = pools[p].map(echo_bytes, input.clone()).unwrap().collect();
            prop_assert_eq!(out, input.into_iter().map(Ok).collect::<Vec<_>>(), "slot {}", SLOTS[p]);
            Ok(())
        })
        .unwrap();
}

struct Echo;

impl Worker for Echo {
    type Init = ();
    type Task = Vec<u8>;
    type Output = Vec<u8>;
    fn init(_: ()) -> Self {
        Echo
    }
    fn run(&mut self, task: Vec<u8>) -> Vec<u8> {
        task
    }
}

#[test]
fn worker_pool_tasks_and_outputs_arrive_intact() {
    let _w = watchdog("worker_pool_props", LIMIT);
    let pools: Vec<WorkerPool<Echo>> =
        SLOTS.iter().map(|&s| WorkerPool::<Echo>::builder().workers(1).slot_size(s).build(()).unwrap()).collect();
    runner(400)
        .run(&(0..pools.len(), lengths(), any::<u64>()), |(p, len, seed)| {
            let v = bytes(len, seed);
            pools[p].put(v.clone()).unwrap();
            prop_assert_eq!(pools[p].get(), Ok(v), "slot {}", SLOTS[p]);
            Ok(())
        })
        .unwrap();
}

struct Store {
    last: Vec<u8>,
}

fn new_store(_: ()) -> Store {
    Store { last: Vec::new() }
}

fn keep(s: &mut Store, v: Vec<u8>) -> usize {
    s.last = v;
    s.last.len()
}

fn last(s: &Store) -> Vec<u8> {
    s.last.clone()
}

fn swap_text(_: &mut Store, t: String) -> String {
    t
}

#[test]
fn remote_calls_and_reads_arrive_intact() {
    let _w = watchdog("remote_props", LIMIT);
    let remote = Remote::spawn(new_store, ()).unwrap();
    runner(400)
        .run(&(lengths(), any::<u64>()), |(len, seed)| {
            let v = bytes(len, seed);
            prop_assert_eq!(remote.call(keep, v.clone()), Ok(len));
            prop_assert_eq!(remote.get(last), Ok(v));
            let t = text(len, seed);
            prop_assert_eq!(remote.call(swap_text, t.clone()), Ok(t));
            Ok(())
        })
        .unwrap();
}
