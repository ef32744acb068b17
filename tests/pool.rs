//! Pools with real worker processes (this test binary, re-executed).

use std::time::Duration;

use shmpool::{GetError, OnWorkerDeath, Pool, PutError, TaskError, Worker, WorkerPool};

fn square(x: u64) -> u64 {
    x * x
}

fn shout(s: String) -> String {
    s.to_uppercase()
}

fn sum_bytes(v: Vec<u8>) -> u64 {
    v.iter().map(|&b| b as u64).sum()
}

fn sum_archived(v: &shmpool::Archived<Vec<u8>>) -> u64 {
    v.iter().map(|&b| b as u64).sum()
}

fn boom(x: u64) -> u64 {
    if x == 3 {
        panic!("three is not allowed");
    }
    x
}

fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn pid_of(_: ()) -> u32 {
    std::process::id()
}

#[test]
fn submit_and_wait() {
    let pool = Pool::builder().workers(2).queue_capacity(8).build().unwrap();
    assert_eq!(pool.submit(square, 7u64).unwrap().wait(), Ok(49));
}

#[test]
fn several_functions_share_one_pool() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let a = pool.submit(square, 12u64).unwrap();
    let b = pool.submit(shout, "hello".to_string()).unwrap();
    let c = pool.submit(sum_bytes, vec![1u8, 2, 3]).unwrap();
    assert_eq!(c.wait(), Ok(6));
    assert_eq!(b.wait(), Ok("HELLO".to_string()));
    assert_eq!(a.wait(), Ok(144));
}

#[test]
fn tasks_run_in_other_processes() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let pid = pool.submit(pid_of, ()).unwrap().wait().unwrap();
    assert_ne!(pid, std::process::id());
    assert!(pool.worker_pids().contains(&pid));
}

#[test]
fn ordered_map_over_more_than_the_queue() {
    let pool = Pool::builder().workers(2).queue_capacity(16).build().unwrap();
    let out: Vec<u64> = pool.map(square, 0..5000u64).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(out, (0..5000u64).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn unordered_map_returns_every_result_once() {
    let pool = Pool::builder().workers(2).queue_capacity(16).build().unwrap();
    // Early inputs sleep longest, so completion order differs from input order.
    let input: Vec<u64> = (0..20u64).map(|i| (20 - i) * 2).collect();
    let mut out: Vec<u64> = pool.map_unordered(sleepy, input.clone()).unwrap().collect::<Result<_, _>>().unwrap();
    out.sort_unstable();
    let mut expect = input;
    expect.sort_unstable();
    assert_eq!(out, expect);
}

#[test]
fn a_panicking_task_reports_and_the_worker_goes_on() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let pid = pool.worker_pids();
    match pool.submit(boom, 3u64).unwrap().wait() {
        Err(TaskError::Panicked { message }) => assert!(message.contains("three is not allowed"), "{message}"),
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_eq!(pool.submit(boom, 4u64).unwrap().wait(), Ok(4));
    assert_eq!(pool.worker_pids(), pid, "the worker survived its task's panic");
    let results: Vec<_> = pool.map(boom, 0..6u64).unwrap().collect();
    assert!(matches!(results[3], Err(TaskError::Panicked { .. })));
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
}

#[test]
fn large_arguments_travel_through_the_arena() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let expect: u64 = big.iter().map(|&b| b as u64).sum();
    assert_eq!(pool.submit(sum_bytes, big.clone()).unwrap().wait(), Ok(expect));
    assert_eq!(pool.submit_archived(sum_archived, &big).unwrap().wait(), Ok(expect));
    // Many large ones: blocks are freed and reused, the segment does not fill.
    for _ in 0..300 {
        assert_eq!(pool.submit_archived(sum_archived, &big).unwrap().wait(), Ok(expect));
    }
}

#[test]
fn tickets_waited_from_many_threads() {
    let pool = Pool::builder().workers(2).queue_capacity(8).build().unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let pool = &pool;
            s.spawn(move || {
                for i in 0..200u64 {
                    let x = t * 1000 + i;
                    assert_eq!(pool.submit(square, x).unwrap().wait(), Ok(x * x));
                }
            });
        }
    });
}

#[test]
fn dropped_tickets_do_not_leak_or_confuse_others() {
    let pool = Pool::builder().workers(2).queue_capacity(4).build().unwrap();
    for i in 0..100u64 {
        drop(pool.submit(square, i).unwrap());
    }
    assert_eq!(pool.submit(square, 9u64).unwrap().wait(), Ok(81));
}

struct Scale {
    factor: u64,
}

impl Worker for Scale {
    type Init = u64;
    type Task = u64;
    type Output = u64;
    fn init(factor: u64) -> Self {
        Scale { factor }
    }
    fn run(&mut self, task: u64) -> u64 {
        task * self.factor
    }
}

struct Counter {
    seen: u64,
}

impl Worker for Counter {
    type Init = ();
    type Task = u64;
    type Output = (u32, u64);
    fn init(_: ()) -> Self {
        Counter { seen: 0 }
    }
    fn run(&mut self, _task: u64) -> (u32, u64) {
        self.seen += 1;
        (std::process::id(), self.seen)
    }
}

struct SlowScale;

impl Worker for SlowScale {
    type Init = ();
    type Task = u64;
    type Output = u64;
    fn init(_: ()) -> Self {
        SlowScale
    }
    fn run(&mut self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
}

struct BadInit;

impl Worker for BadInit {
    type Init = u64;
    type Task = u64;
    type Output = u64;
    fn init(x: u64) -> Self {
        panic!("cannot init with {x}");
    }
    fn run(&mut self, t: u64) -> u64 {
        t
    }
}

#[test]
fn stateful_workers_put_get() {
    let pool = WorkerPool::<Scale>::builder().workers(2).queue_capacity(4).build(10).unwrap();
    pool.put(5).unwrap();
    pool.put_timeout(6, Duration::from_millis(100)).unwrap();
    assert_eq!(pool.get(), Ok(50));
    assert_eq!(pool.get(), Ok(60));
    assert_eq!(pool.get(), Err(GetError::NothingPending));
    for i in 0..100 {
        pool.put(i).unwrap();
    }
    let all: Vec<u64> = pool.get_all().into_iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(all, (0..100).map(|i| i * 10).collect::<Vec<_>>());
}

#[test]
fn worker_state_persists_across_tasks() {
    let pool = WorkerPool::<Counter>::builder().workers(1).build(()).unwrap();
    for i in 0..10 {
        pool.put(i).unwrap();
    }
    let seen: Vec<u64> = pool.get_all().into_iter().map(|r| r.unwrap().1).collect();
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
}

#[test]
fn put_full_and_get_timeout() {
    let pool = WorkerPool::<SlowScale>::builder().workers(1).queue_capacity(2).build(()).unwrap();
    assert_eq!(pool.get_timeout(Duration::from_millis(10)), Err(GetError::NothingPending));
    pool.put(400).unwrap();
    std::thread::sleep(Duration::from_millis(100)); // the worker is now running it
                                                    // queue_capacity counts queued and running tasks: room for two more at most.
    let mut accepted = 1;
    let mut full = None;
    for _ in 0..10 {
        match pool.put_timeout(300, Duration::from_millis(20)) {
            Ok(()) => accepted += 1,
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    assert!(matches!(full, Some(PutError::Full(300))), "expected Full(300), got {full:?}");
    assert!((2..=3).contains(&accepted), "accepted {accepted}");
    assert!(matches!(pool.try_put(1), Err(PutError::Full(1))));
    assert_eq!(pool.get_timeout(Duration::from_millis(5)), Err(GetError::Timeout));
    // The queued ones are still in the ring while the first runs.
    assert_eq!(pool.clear_tasks(), accepted - 1);
    assert_eq!(pool.get(), Ok(400));
    assert_eq!(pool.get_timeout(Duration::from_millis(10)), Err(GetError::NothingPending));
    pool.put(1).unwrap();
    assert_eq!(pool.get(), Ok(1));
}

#[test]
fn worker_init_panic_is_an_error() {
    match WorkerPool::<BadInit>::builder().workers(1).build(7) {
        Err(shmpool::Error::WorkerInit { message }) => assert!(message.contains("cannot init with 7"), "{message}"),
        other => panic!("expected WorkerInit, got {other:?}"),
    }
}

#[test]
fn cleared_tasks_are_cancelled() {
    let pool = Pool::builder().workers(1).queue_capacity(8).build().unwrap();
    let first = pool.submit(sleepy, 200u64).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let queued: Vec<_> = (0..3).map(|_| pool.submit(sleepy, 1u64).unwrap()).collect();
    assert_eq!(pool.clear_tasks(), 3);
    for t in queued {
        assert_eq!(t.wait(), Err(TaskError::Cancelled));
    }
    assert_eq!(first.wait(), Ok(200));
}

#[test]
fn close_then_submit_is_refused_and_join_returns() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let t = pool.submit(square, 3u64).unwrap();
    pool.close();
    assert!(matches!(pool.submit(square, 4u64), Err(shmpool::Error::Closed)));
    assert_eq!(t.wait(), Ok(9));
    pool.join().unwrap();
    assert!(!pool.is_alive());
}

fn die(code: i32) -> u64 {
    std::process::exit(code)
}

#[test]
fn a_dead_worker_reports_worker_died_and_is_replaced() {
    // Reported at once:
    let pool = Pool::builder().workers(1).on_worker_death(OnWorkerDeath::Report).build().unwrap();
    let before = pool.worker_pids();
    match pool.submit(die, 7).unwrap().wait() {
        Err(TaskError::WorkerDied { pid }) => assert_eq!(vec![pid], before),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // A replacement took over and the pool works on.
    assert_eq!(pool.submit(square, 6u64).unwrap().wait(), Ok(36));
    assert_eq!(pool.respawns(), 1);
    assert_ne!(pool.worker_pids(), before);
    assert_eq!(pool.requeued(), 0);

    // Requeued (the default): run three times in all, killing a worker each
    // time, then reported.
    let pool = Pool::builder().workers(1).build().unwrap();
    assert!(matches!(pool.submit(die, 7).unwrap().wait(), Err(TaskError::WorkerDied { .. })));
    assert_eq!(pool.requeued(), 2);
    assert_eq!(pool.respawns(), 3);
    assert_eq!(pool.submit(square, 5u64).unwrap().wait(), Ok(25));
}

#[test]
fn an_argument_larger_than_the_segment_is_an_error_not_a_crash() {
    let pool = Pool::builder().workers(1).segment_size(4 << 20).build().unwrap();
    let huge = vec![1u8; 8 << 20];
    match pool.submit(sum_bytes, huge.clone()) {
        Err(shmpool::Error::Task(TaskError::Encode(msg))) => assert!(msg.contains("out of memory"), "{msg}"),
        other => panic!("expected an Encode error, got {other:?}"),
    }
    // In a map, only that item fails; the others arrive, in order.
    let inputs = vec![vec![1u8; 10], huge, vec![2u8; 10]];
    let out: Vec<_> = pool.map(sum_bytes, inputs).unwrap().collect();
    assert_eq!(out[0], Ok(10));
    assert!(matches!(out[1], Err(TaskError::Encode(_))));
    assert_eq!(out[2], Ok(20));
    assert_eq!(pool.submit(square, 2u64).unwrap().wait(), Ok(4));
}

#[test]
fn pool_refuses_bad_configuration() {
    assert!(matches!(Pool::builder().workers(0).build(), Err(shmpool::Error::Config(_))));
    assert!(matches!(Pool::builder().queue_capacity(0).build(), Err(shmpool::Error::Config(_))));
    assert!(matches!(Pool::builder().slot_size(8).build(), Err(shmpool::Error::Config(_))));
}

/// Fails to initialise whenever the marker file named by its argument exists.
struct FlakyInit;

impl Worker for FlakyInit {
    type Init = String;
    type Task = i32;
    type Output = i32;
    fn init(marker: String) -> Self {
        if std::path::Path::new(&marker).exists() {
            panic!("marker present: refusing to start");
        }
        FlakyInit
    }
    fn run(&mut self, code: i32) -> i32 {
        if code != 0 {
            std::process::exit(code);
        }
        code
    }
}

#[test]
fn a_worker_that_cannot_restart_ends_in_an_error_not_a_respawn_loop() {
    let marker = std::env::temp_dir().join(format!("shmpool-flaky-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let pool = WorkerPool::<FlakyInit>::builder()
        .workers(1)
        .on_worker_death(OnWorkerDeath::Report)
        .build(marker.to_string_lossy().into_owned())
        .unwrap();
    pool.put(0).unwrap();
    assert_eq!(pool.get(), Ok(0));
    std::fs::write(&marker, b"x").unwrap();
    pool.put(3).unwrap(); // the worker exits; every replacement fails to start
    pool.put(0).unwrap();
    let first = pool.get();
    assert!(matches!(first, Err(GetError::Task(TaskError::WorkerDied { .. }))), "{first:?}");
    // The second task can never run: an error, not a hang (WorkerDied if the
    // dead worker had taken it in the same batch, PoolGone if it was queued).
    let second = pool.get_timeout(Duration::from_secs(60));
    let _ = std::fs::remove_file(&marker);
    assert!(
        matches!(second, Err(GetError::Task(TaskError::PoolGone)) | Err(GetError::Task(TaskError::WorkerDied { .. }))),
        "{second:?}"
    );
}

#[test]
fn a_waiting_get_does_not_block_puts() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let pool = WorkerPool::<SlowScale>::builder().workers(1).queue_capacity(4).build(()).unwrap();
    let clock = AtomicU64::new(0);
    pool.put(500).unwrap();
    std::thread::scope(|s| {
        let getter = s.spawn(|| {
            let r = pool.get();
            (r, clock.fetch_add(1, Ordering::SeqCst))
        });
        std::thread::sleep(Duration::from_millis(50)); // let the getter start waiting
        pool.try_put(1).unwrap();
        let put_done = clock.fetch_add(1, Ordering::SeqCst);
        let (r, get_done) = getter.join().unwrap();
        assert_eq!(r, Ok(500));
        assert!(put_done < get_done, "try_put waited for the pending get");
    });
    assert_eq!(pool.get(), Ok(1));
}

fn hang(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_hung_task_times_out_and_its_worker_is_replaced() {
    let pool = Pool::builder().workers(1).task_timeout(Duration::from_millis(200)).build().unwrap();
    let before = pool.worker_pids();
    match pool.submit(hang, 60_000u64).unwrap().wait() {
        Err(TaskError::TimedOut { pid }) => assert_eq!(vec![pid], before),
        other => panic!("expected TimedOut, got {other:?}"),
    }
    // Not run again (it would hang again), and the replacement works.
    assert_eq!(pool.requeued(), 0);
    assert_eq!(pool.submit(hang, 1u64).unwrap().wait(), Ok(1));
    assert_ne!(pool.worker_pids(), before);
}

fn boom_at_777(x: u64) -> u64 {
    assert!(x != 777, "item 777 refuses");
    x + 1
}

fn pid_after(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

// A map sends its items in groups (many per frame): a panic must still fail
// its own item only, in order, with every other result intact.
#[test]
fn a_panicking_item_fails_only_itself_in_a_grouped_map() {
    let pool = Pool::builder().workers(2).build().unwrap();
    for ordered in [true, false] {
        let it =
            if ordered { pool.map(boom_at_777, 0..20_000u64) } else { pool.map_unordered(boom_at_777, 0..20_000u64) };
        let results: Vec<Result<u64, TaskError>> = it.unwrap().collect();
        assert_eq!(results.len(), 20_000);
        let failed: Vec<&TaskError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(matches!(failed[..], [TaskError::Panicked { ref message }] if message.contains("777")), "{failed:?}");
        let mut ok: Vec<u64> = results.into_iter().filter_map(Result::ok).collect();
        if !ordered {
            ok.sort_unstable();
        }
        assert_eq!(ok, (0..20_000u64).filter(|&x| x != 777).map(|x| x + 1).collect::<Vec<_>>());
    }
}

// Grouping must not serialise slow work on one worker: slow items of a
// short input are spread over every worker.
#[test]
fn slow_items_of_a_map_spread_over_every_worker() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let pids: std::collections::HashSet<u32> =
        pool.map(pid_after, std::iter::repeat_n(30u64, 8)).unwrap().map(Result::unwrap).collect();
    assert_eq!(pids.len(), 2, "both workers ran some of the 8 slow items");
}

// Issue 11 item 1: a busy-polling pool answers, times out, and notices a
// dead worker like a sleeping one (its waits never sleep).
#[test]
fn a_busy_polling_pool_answers_times_out_and_notices_a_dead_worker() {
    let pool = Pool::builder().workers(1).busy_poll().on_worker_death(OnWorkerDeath::Report).build().unwrap();
    for x in 0..1000u64 {
        assert_eq!(pool.submit(square, x).unwrap().wait(), Ok(x * x));
    }
    let ticket = pool.submit(sleepy, 300).unwrap();
    let ticket = ticket.wait_timeout(Duration::from_millis(20)).expect_err("a 300 ms task answered within 20 ms");
    assert_eq!(ticket.wait(), Ok(300));
    assert!(matches!(pool.submit(die, 7).unwrap().wait(), Err(TaskError::WorkerDied { .. })));
    assert_eq!(pool.submit(square, 6u64).unwrap().wait(), Ok(36));
}
