//! Seed capabilities of issue #15: workers replaced after `n` tasks
//! (multiprocessing's `maxtasksperchild`) and workers calling their parent
//! (XME's guard process).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shmpool::{Error, ParentCallError, Pool, Worker, WorkerPool};

#[path = "common/watchdog.rs"]
mod watchdog;
use watchdog::watchdog;

const LIMIT: Duration = Duration::from_secs(120);

// ---- max_tasks_per_worker -------------------------------------------------

fn echo_with_pid(x: u64) -> (u64, u32) {
    (x, std::process::id())
}

#[test]
fn workers_are_replaced_after_their_quota_without_losing_or_repeating_a_task() {
    let _w = watchdog("max_tasks map", LIMIT);
    let pool = Pool::builder().workers(2).max_tasks_per_worker(7).segment_size(32 << 20).build().unwrap();
    let first: Vec<u32> = pool.worker_pids();
    let out: Vec<(u64, u32)> = pool.map(echo_with_pid, 0..1000u64).unwrap().map(Result::unwrap).collect();
    // Every result once, in input order.
    assert_eq!(out.len(), 1000);
    for (i, &(x, _)) in out.iter().enumerate() {
        assert_eq!(x, i as u64);
    }
    let mut per_pid: HashMap<u32, u64> = HashMap::new();
    for &(_, pid) in &out {
        *per_pid.entry(pid).or_default() += 1;
    }
    let most = per_pid.values().copied().max().unwrap();
    assert!(most <= 7, "a worker ran {most} tasks, its quota is 7");
    assert!(per_pid.len() > 100, "only {} distinct workers ran 1000 tasks at 7 each", per_pid.len());
    // Every worker but the first two was started as a replacement.
    let replacements = per_pid.keys().filter(|p| !first.contains(p)).count() as u64;
    assert!(pool.respawns() >= replacements, "respawns {} < replacements {replacements}", pool.respawns());
    // Clean exits are not failed starts: the pool still works.
    assert!(pool.is_alive());
    assert_eq!(pool.submit(echo_with_pid, 5).unwrap().wait().unwrap().0, 5);
}

#[test]
fn a_closed_pool_finishes_its_queue_with_retiring_workers() {
    let _w = watchdog("max_tasks close", LIMIT);
    let pool = Pool::builder().workers(1).max_tasks_per_worker(2).segment_size(16 << 20).build().unwrap();
    let tickets: Vec<_> = (0..20u64).map(|i| pool.submit(echo_with_pid, i).unwrap()).collect();
    pool.close();
    pool.join().unwrap();
    let mut per_pid: HashMap<u32, u64> = HashMap::new();
    for (i, t) in tickets.into_iter().enumerate() {
        let (x, pid) = t.wait().unwrap();
        assert_eq!(x, i as u64);
        *per_pid.entry(pid).or_default() += 1;
    }
    assert!(per_pid.values().all(|&n| n <= 2), "{per_pid:?}");
    assert_eq!(per_pid.len(), 10);
}

#[test]
fn a_quota_of_zero_is_refused() {
    match Pool::builder().workers(1).max_tasks_per_worker(0).build() {
        Err(Error::Config(_)) => {}
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

/// Counts its own tasks: a replacement starts again from its init.
struct Counter {
    base: u64,
    ran: u64,
}

impl Worker for Counter {
    type Init = u64;
    type Task = u64;
    type Output = (u64, u32, u64);
    fn init(base: u64) -> Self {
        Counter { base, ran: 0 }
    }
    fn run(&mut self, task: u64) -> (u64, u32, u64) {
        self.ran += 1;
        (task, std::process::id(), self.base + self.ran)
    }
}

#[test]
fn a_stateful_replacement_is_built_again_by_init() {
    let _w = watchdog("max_tasks stateful", LIMIT);
    let pool =
        WorkerPool::<Counter>::builder().workers(2).max_tasks_per_worker(3).segment_size(16 << 20).build(1000).unwrap();
    for i in 0..60u64 {
        pool.put(i).unwrap();
    }
    let out: Vec<(u64, u32, u64)> = pool.get_all().into_iter().map(Result::unwrap).collect();
    assert_eq!(out.iter().map(|r| r.0).collect::<Vec<_>>(), (0..60).collect::<Vec<_>>());
    let mut counts: HashMap<u32, Vec<u64>> = HashMap::new();
    for &(_, pid, n) in &out {
        counts.entry(pid).or_default().push(n);
    }
    for (pid, mut ns) in counts.clone() {
        ns.sort_unstable();
        // Each process counted from its own fresh state: 1001, 1002, ...
        assert_eq!(ns, (1001..1001 + ns.len() as u64).collect::<Vec<_>>(), "worker {pid}");
        assert!(ns.len() <= 3, "worker {pid} ran {} tasks", ns.len());
    }
    assert!(counts.len() >= 20);
    assert!(pool.respawns() >= counts.len() as u64 - 2);
}

// ---- parent_call ------------------------------------------------------------

static BUMPED: AtomicU64 = AtomicU64::new(0);

fn bump(n: u64) -> u64 {
    BUMPED.fetch_add(n, Ordering::SeqCst) + n
}

fn ask_parent_to_bump(n: u64) -> String {
    format!("{:?}", shmpool::parent_call(bump, n).map(|_| ()))
}

#[test]
fn a_task_runs_a_function_in_its_parent() {
    let _w = watchdog("parent_call counter", LIMIT);
    let pool = Pool::builder().workers(2).segment_size(16 << 20).build().unwrap();
    let before = BUMPED.load(Ordering::SeqCst);
    assert_eq!(pool.submit(ask_parent_to_bump, 5).unwrap().wait().unwrap(), "Ok(())");
    // The worker's copy of BUMPED is another process's: the parent's moved.
    assert!(BUMPED.load(Ordering::SeqCst) >= before + 5);
}

static CALLS: AtomicU64 = AtomicU64::new(0);

fn twice(x: u64) -> u64 {
    CALLS.fetch_add(1, Ordering::SeqCst);
    2 * x
}

fn many_calls(n: u64) -> u64 {
    (0..n).map(|i| shmpool::parent_call(twice, i).expect("the parent answers")).sum()
}

#[test]
fn two_workers_times_200_parent_calls_are_all_answered() {
    let _w = watchdog("parent_call many", LIMIT);
    let pool = Pool::builder().workers(2).segment_size(16 << 20).build().unwrap();
    let a = pool.submit(many_calls, 200).unwrap();
    let b = pool.submit(many_calls, 200).unwrap();
    let expected: u64 = (0..200u64).map(|i| 2 * i).sum();
    assert_eq!(a.wait(), Ok(expected));
    assert_eq!(b.wait(), Ok(expected));
    assert_eq!(CALLS.load(Ordering::SeqCst), 400);
}

fn big(v: Vec<u8>) -> Vec<u8> {
    v.iter().rev().copied().collect()
}

fn ask_big(n: u64) -> bool {
    let v: Vec<u8> = (0..n).map(|i| i as u8).collect();
    shmpool::parent_call(big, v.clone()).expect("answered") == v.into_iter().rev().collect::<Vec<_>>()
}

#[test]
fn large_calls_and_answers_travel_in_blocks() {
    let _w = watchdog("parent_call large", LIMIT);
    let pool = Pool::builder().workers(1).segment_size(16 << 20).build().unwrap();
    for n in [0u64, 100, 1000, 100_000] {
        assert_eq!(pool.submit(ask_big, n).unwrap().wait(), Ok(true), "{n} bytes");
    }
}

fn panics_in_parent(_: u64) -> u64 {
    panic!("no thanks");
}

fn ask_panicking(n: u64) -> String {
    match shmpool::parent_call(panics_in_parent, n) {
        Err(ParentCallError::Panicked { message }) => message,
        other => format!("unexpected: {other:?}"),
    }
}

#[test]
fn a_panic_in_the_parent_is_the_callers_error_and_the_call_thread_goes_on() {
    let _w = watchdog("parent_call panic", LIMIT);
    let pool = Pool::builder().workers(1).segment_size(16 << 20).build().unwrap();
    assert!(pool.submit(ask_panicking, 1).unwrap().wait().unwrap().contains("no thanks"));
    assert_eq!(pool.submit(many_calls_local, 3).unwrap().wait(), Ok(6));
}

fn plus_one(x: u64) -> u64 {
    x + 1
}

fn many_calls_local(n: u64) -> u64 {
    (0..n).map(|i| shmpool::parent_call(plus_one, i).expect("answered")).sum()
}

#[test]
fn parent_call_outside_a_worker_is_a_typed_error() {
    assert_eq!(shmpool::parent_call(plus_one, 1), Err(ParentCallError::NotInWorker));
}

fn scratch_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let dir = std::env::temp_dir().join(format!("shmpool-seeds-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits (bounded by the test's watchdog) until `path` exists.
fn wait_for(path: &Path) {
    while !path.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn call_after_marker(dir: String) -> String {
    wait_for(&Path::new(&dir).join("closed"));
    format!("{:?}", shmpool::parent_call(plus_one, 1))
}

#[test]
fn parent_call_after_close_is_refused() {
    let _w = watchdog("parent_call after close", LIMIT);
    let dir = scratch_dir("close");
    let pool = Pool::builder().workers(1).segment_size(16 << 20).build().unwrap();
    let t = pool.submit(call_after_marker, dir.to_string_lossy().into_owned()).unwrap();
    pool.close();
    std::fs::write(dir.join("closed"), b"").unwrap();
    assert_eq!(t.wait().unwrap(), format!("{:?}", Err::<u64, _>(ParentCallError::Refused)));
    let _ = std::fs::remove_dir_all(&dir);
}

// A worker whose parent is SIGKILLed while it waits for the answer: the test
// process starts this test binary again as the parent ("middle"), which
// starts a pool whose task calls a parent function that never returns; the
// test kills the middle and reads what the call returned from a file the
// worker writes.

const MIDDLE_ENV: &str = "SHMPOOL_SEEDS_MIDDLE";

fn never_returns(dir: String) -> u64 {
    std::fs::write(Path::new(&dir).join("called"), b"").unwrap();
    std::thread::sleep(Duration::from_secs(600));
    0
}

fn call_and_report(dir: String) {
    let r = shmpool::parent_call(never_returns, dir.clone());
    std::fs::write(Path::new(&dir).join("outcome.tmp"), format!("{r:?}")).unwrap();
    std::fs::rename(Path::new(&dir).join("outcome.tmp"), Path::new(&dir).join("outcome")).unwrap();
}

/// Not a test of its own: the parent role of the test below (a no-op
/// unless started by it).
#[test]
fn middle_parent_role() {
    let Some(dir) = std::env::var_os(MIDDLE_ENV) else { return };
    let pool = Pool::builder().workers(1).segment_size(16 << 20).build().unwrap();
    let t = pool.submit(call_and_report, dir.to_string_lossy().into_owned()).unwrap();
    // Killed while waiting here.
    let _ = t.wait_timeout(Duration::from_secs(600));
}

#[test]
fn a_worker_whose_parent_was_killed_gets_an_error_not_a_hang() {
    let _w = watchdog("parent_call parent killed", LIMIT);
    let dir = scratch_dir("killed");
    let mut middle = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "middle_parent_role", "--test-threads=1", "--quiet"])
        .env(MIDDLE_ENV, &dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&dir.join("called"));
    middle.kill().unwrap();
    middle.wait().unwrap();
    wait_for(&dir.join("outcome"));
    let outcome = std::fs::read_to_string(dir.join("outcome")).unwrap();
    assert_eq!(outcome, format!("{:?}", Err::<u64, _>(ParentCallError::ParentGone)));
    let _ = std::fs::remove_dir_all(&dir);
}
