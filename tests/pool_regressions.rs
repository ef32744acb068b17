//! Regression tests for pool bugs (issue #10): each was written first and
//! seen to fail (hang, panic or abort by its watchdog) on the code before
//! its fix.

#[path = "common/watchdog.rs"]
mod watchdog;
use std::time::Duration;
use watchdog::watchdog;

use shmpool::{Error, GetError, LockKind, Pool, PutError, TaskError, Worker, WorkerPool};

fn square(x: u64) -> u64 {
    x * x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

struct Doubler;

impl Worker for Doubler {
    type Init = ();
    type Task = u64;
    type Output = u64;
    fn init(_: ()) -> Self {
        Doubler
    }
    fn run(&mut self, task: u64) -> u64 {
        task * 2
    }
}

// Finding 8: join on an open pool blocked for ever.
#[test]
fn join_on_an_open_pool_is_an_error_not_a_hang() {
    let _w = watchdog("join_on_an_open_pool", Duration::from_secs(60));
    let pool = Pool::builder().workers(1).build().unwrap();
    assert!(matches!(pool.join(), Err(Error::NotClosed)));
    assert!(matches!(pool.join_timeout(Duration::from_millis(10)), Err(Error::NotClosed)));
    // Still usable, then joinable once closed.
    assert_eq!(pool.submit(square, 3u64).unwrap().wait(), Ok(9));
    pool.close();
    pool.join_timeout(Duration::MAX).unwrap();
    pool.join().unwrap();

    let wp = WorkerPool::<Doubler>::builder().workers(1).build(()).unwrap();
    assert!(matches!(wp.join(), Err(Error::NotClosed)));
    wp.put(4).unwrap();
    assert_eq!(wp.get(), Ok(8));
    wp.close();
    wp.join().unwrap();
}

#[test]
fn join_timeout_on_a_busy_closed_pool_times_out_and_leaves_it_running() {
    let _w = watchdog("join_timeout_busy", Duration::from_secs(60));
    let pool = Pool::builder().workers(1).build().unwrap();
    let t = pool.submit(sleep_ms, 30_000u64).unwrap();
    pool.close();
    assert!(matches!(pool.join_timeout(Duration::from_millis(20)), Err(Error::Timeout)));
    pool.terminate();
    pool.join().unwrap();
    assert_eq!(t.wait(), Err(TaskError::PoolGone));
}

// Finding 8: after terminate(), each outstanding ticket took ~50 ms to learn
// the pool was gone (3,000 of them: 2.5 minutes, past this watchdog).
#[test]
fn terminate_answers_three_thousand_outstanding_tickets_with_pool_gone() {
    let _w = watchdog("terminate_3000", Duration::from_secs(60));
    let pool = Pool::builder().workers(1).queue_capacity(4096).build().unwrap();
    // The lone worker is stuck in the first task; the rest stay queued.
    let tickets: Vec<_> = (0..3000).map(|_| pool.submit(sleep_ms, 60_000u64).unwrap()).collect();
    pool.terminate();
    let gone =
        tickets.into_iter().filter(|_| true).map(|t| t.wait()).filter(|r| *r == Err(TaskError::PoolGone)).count();
    assert_eq!(gone, 3000);
}

#[test]
fn terminate_wakes_waiters_blocked_in_other_threads() {
    let _w = watchdog("terminate_wakes", Duration::from_secs(60));
    let pool = Pool::builder().workers(1).queue_capacity(256).build().unwrap();
    let tickets: Vec<_> = (0..64).map(|_| pool.submit(sleep_ms, 60_000u64).unwrap()).collect();
    let waiters: Vec<_> = tickets.into_iter().map(|t| std::thread::spawn(move || t.wait())).collect();
    std::thread::sleep(Duration::from_millis(50));
    pool.terminate();
    for w in waiters {
        assert_eq!(w.join().unwrap(), Err(TaskError::PoolGone));
    }
}

// Finding 13: Duration::MAX overflowed `Instant + Duration` (a panic).
#[test]
fn duration_max_is_no_deadline_for_tickets() {
    let _w = watchdog("ticket_max", Duration::from_secs(60));
    let pool = Pool::builder().workers(1).build().unwrap();
    let t = pool.submit(square, 5u64).unwrap();
    assert_eq!(t.wait_timeout(Duration::MAX).unwrap(), Ok(25));
}

#[test]
fn duration_max_is_no_deadline_for_worker_pool_put_and_get() {
    let _w = watchdog("worker_pool_max", Duration::from_secs(60));
    let wp = WorkerPool::<Doubler>::builder().workers(1).build(()).unwrap();
    wp.put_timeout(21, Duration::MAX).unwrap();
    assert_eq!(wp.get_timeout(Duration::MAX), Ok(42));
    assert_eq!(wp.get_timeout(Duration::MAX), Err(GetError::NothingPending));
}

#[test]
fn duration_max_shutdown_timeout_does_not_panic_in_drop() {
    let _w = watchdog("shutdown_max", Duration::from_secs(60));
    let pool = Pool::builder().workers(1).shutdown_timeout(Duration::MAX).build().unwrap();
    assert_eq!(pool.submit(square, 6u64).unwrap().wait(), Ok(36));
    drop(pool);
    let wp = WorkerPool::<Doubler>::builder().workers(1).shutdown_timeout(Duration::MAX).build(()).unwrap();
    wp.put(1).unwrap();
    assert_eq!(wp.get(), Ok(2));
    drop(wp);
}

#[test]
fn duration_max_task_timeout_never_kills() {
    let _w = watchdog("task_timeout_max", Duration::from_secs(60));
    let pool = Pool::builder().workers(1).task_timeout(Duration::MAX).build().unwrap();
    // Long enough for several supervision rounds while the task runs.
    let t = pool.submit(sleep_ms, 300u64).unwrap();
    assert_eq!(t.wait(), Ok(300));
    assert_eq!(pool.respawns(), 0);
}

#[test]
fn duration_max_join_and_submit_timeouts() {
    let _w = watchdog("join_submit_max", Duration::from_secs(60));
    let pool = Pool::builder().workers(1).build().unwrap();
    let t = pool.submit_timeout(square, 7u64, Duration::MAX).unwrap();
    assert_eq!(t.wait(), Ok(49));
    pool.close();
    pool.join_timeout(Duration::MAX).unwrap();
}

// Timed submission gives the argument back.
#[test]
fn try_submit_on_a_full_queue_gives_the_argument_back() {
    let _w = watchdog("try_submit_full", Duration::from_secs(60));
    let pool = Pool::builder().workers(1).queue_capacity(1).build().unwrap();
    // Capacity 1 plus one per worker may be in flight.
    let held: Vec<_> = (0..2).map(|_| pool.submit(sleep_ms, 200u64).unwrap()).collect();
    match pool.try_submit(sleep_ms, 77u64) {
        Err(PutError::Full(arg)) => assert_eq!(arg, 77),
        other => panic!("expected Full(77), got {:?}", other.map(|_| ())),
    }
    match pool.submit_timeout(sleep_ms, 78u64, Duration::from_millis(1)) {
        Err(PutError::Full(arg)) => assert_eq!(arg, 78),
        other => panic!("expected Full(78), got {:?}", other.map(|_| ())),
    }
    for t in held {
        assert_eq!(t.wait(), Ok(200));
    }
    // Room again.
    assert_eq!(pool.try_submit(square, 8u64).unwrap().wait(), Ok(64));
    pool.close();
    match pool.try_submit(square, 9u64) {
        Err(PutError::Closed(arg)) => assert_eq!(arg, 9),
        other => panic!("expected Closed(9), got {:?}", other.map(|_| ())),
    }
}

/// Task 2 of a batch waits for the flag the caller sets only once it has
/// result 1 (the flag is in the pool's segment). Finding 11: results used to
/// be posted after the whole batch, so result 1 never came and task 2 gave up.
fn wait_for_flag(step: u64) -> bool {
    if step == 1 {
        return true;
    }
    let seg = shmpool::pool_segment().expect("in a worker");
    let flag = seg.object("finding11.flag", LockKind::Mutex, &false).unwrap();
    // The task's own watchdog: give up (answer false) rather than hang.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if flag.load().unwrap() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

#[test]
fn a_later_task_of_a_batch_may_wait_on_what_the_caller_does_with_an_earlier_result() {
    let _w = watchdog("finding11", Duration::from_secs(90));
    let pool = Pool::builder().workers(1).build().unwrap();
    let flag = pool.segment().object("finding11.flag", LockKind::Mutex, &false).unwrap();
    let mut results = pool.map(wait_for_flag, [1u64, 2]).unwrap();
    assert_eq!(results.next(), Some(Ok(true)));
    flag.set(&true).unwrap();
    assert_eq!(results.next(), Some(Ok(true)));
    assert_eq!(results.next(), None);
}
