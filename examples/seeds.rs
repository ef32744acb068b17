//! The six seed capabilities of issue #15, one short block each:
//!
//! 1. `feed` (better.multiprocessing's `putAsync`),
//! 2. `split` (XME's `Array`),
//! 3. fork-style `create` (pprocess),
//! 4. `thread` / `SlaveThread` (processional),
//! 5. `parent_call` (XME's guard process),
//! 6. `max_tasks_per_worker` (multiprocessing's `maxtasksperchild`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use shmpool::{Channel, Pool, SlaveThread, Worker, WorkerPool};

/// A stateful worker: built once per process, run per task.
struct Scale(u64);

impl Worker for Scale {
    type Init = u64;
    type Task = u64;
    type Output = u64;
    fn init(factor: u64) -> Self {
        Scale(factor)
    }
    fn run(&mut self, task: u64) -> u64 {
        task * self.0
    }
}

fn area((w, h, unit): (u32, u32, String)) -> String {
    format!("{}{unit}", w * h)
}

/// pprocess's fork-style `create()` runs the same code on both sides of a
/// channel. shmpool replaces it with `shmpool::start` on purpose (a fork of
/// a process with threads keeps their locks locked in the child; see the
/// README's seed table): the child's half is a function of its channel end.
fn child(chan: Channel<u64, u64>, offset: u64) {
    while let Ok(x) = chan.recv() {
        chan.send(&(x + offset)).unwrap();
    }
}

/// Runs in the parent, on a thread the pool owns there.
static LOOKUPS: AtomicU64 = AtomicU64::new(0);

fn lookup(key: u64) -> u64 {
    LOOKUPS.fetch_add(1, Ordering::Relaxed);
    key * 1000
}

/// Runs in a worker, which asks its parent.
fn ask_parent(key: u64) -> u64 {
    shmpool::parent_call(lookup, key).expect("the parent answers") + 1
}

fn pid_of(_: u64) -> u32 {
    std::process::id()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    shmpool::init();

    // 1. feed: put a whole input from a background thread, get as usual.
    let scalers = WorkerPool::<Scale>::builder().workers(2).build(3)?;
    let feed = scalers.feed(0..1000u64).map_err(|e| e.to_string())?;
    let first: Vec<u64> = (0..5).map(|_| scalers.get()).collect::<Result<_, _>>()?;
    let rest = scalers.get_all().len();
    println!("1. feed: {} tasks went in; first results {first:?}, {rest} more", feed.join()?);

    // 2. split: one call per element, arrays zipped, shorter ones repeat their last.
    let pool = Pool::builder().workers(2).build()?;
    let areas: Vec<String> =
        pool.map(area, shmpool::split((vec![2, 3, 4], vec![10]), "m2".to_string())?)?.collect::<Result<_, _>>()?;
    println!("2. split: {areas:?}");

    // 3. create (translated to start): the child adds its offset to what it gets.
    let chan: Channel<u64, u64> = shmpool::start(child, 100)?;
    chan.send(&1)?;
    println!("3. create/start: child answered {}", chan.recv()?);
    drop(chan);

    // 4. thread / SlaveThread: a value or the panic, closures run in order.
    let t = shmpool::thread(|| 6 * 7);
    let slave = SlaveThread::new();
    let later = slave.schedule(|| "scheduled");
    println!("4. thread: {}, SlaveThread: {} then {}", t.wait()?, slave.invoke(|| "invoked")?, later.wait()?);

    // 5. parent_call: tasks ask the parent to run `lookup`.
    let answers: Vec<u64> = pool.map(ask_parent, 1..=3u64)?.collect::<Result<_, _>>()?;
    println!("5. parent_call: {answers:?}, the parent ran lookup {} times", LOOKUPS.load(Ordering::Relaxed));

    // 6. max_tasks_per_worker: each worker process runs at most 5 tasks.
    let recycled = Pool::builder().workers(2).max_tasks_per_worker(5).build()?;
    let pids: HashSet<u32> = recycled.map(pid_of, 0..50u64)?.collect::<Result<_, _>>()?;
    println!("6. max_tasks_per_worker(5): 50 tasks ran in {} processes, {} respawns", pids.len(), recycled.respawns());
    Ok(())
}
