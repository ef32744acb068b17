//! Pools, worker pools and remote objects under hostile input: an oversize
//! value (bigger than the segment) is a typed error that leaves them usable,
//! and `Duration::MAX` is "no limit" for every timeout, never a panic.

use std::time::Duration;

use shmpool::{Error, GetError, Pool, PutError, Remote, RemoteError, TaskError, Worker, WorkerPool};

use crate::watchdog::watchdog;

const SEGMENT: u64 = 4 << 20;

fn oversize() -> Vec<u8> {
    vec![7u8; 2 * SEGMENT as usize]
}

fn len_of(v: Vec<u8>) -> u64 {
    v.len() as u64
}

fn make_big(n: u64) -> Vec<u8> {
    vec![1u8; n as usize]
}

struct Lengths;

impl Worker for Lengths {
    type Init = ();
    type Task = Vec<u8>;
    type Output = u64;
    fn init(_: ()) -> Self {
        Lengths
    }
    fn run(&mut self, task: Vec<u8>) -> u64 {
        task.len() as u64
    }
}

#[test]
fn an_oversize_argument_or_result_is_a_typed_error_and_the_pool_goes_on() {
    let _w = watchdog("pool_oversize", Duration::from_secs(120));
    let pool = Pool::builder().workers(1).segment_size(SEGMENT).build().unwrap();
    assert!(matches!(pool.submit(len_of, oversize()), Err(Error::Task(TaskError::Encode(_)))));
    match pool.try_submit(len_of, oversize()) {
        Err(PutError::Encode(arg, _)) => assert_eq!(arg.len(), 2 * SEGMENT as usize),
        other => panic!("expected Encode with the argument back, got {:?}", other.map(|_| ())),
    }
    match pool.submit_timeout(len_of, oversize(), Duration::MAX) {
        Err(PutError::Encode(arg, _)) => assert_eq!(arg.len(), 2 * SEGMENT as usize),
        other => panic!("expected Encode with the argument back, got {:?}", other.map(|_| ())),
    }
    // A result too big for the segment: the task's error, not a crash.
    assert!(matches!(pool.submit(make_big, 2 * SEGMENT).unwrap().wait(), Err(TaskError::Encode(_))));
    assert_eq!(pool.submit(len_of, vec![0u8; 1000]).unwrap().wait(), Ok(1000));
}

#[test]
fn an_oversize_put_gives_the_task_back_and_the_worker_pool_goes_on() {
    let _w = watchdog("worker_pool_oversize", Duration::from_secs(120));
    let wp = WorkerPool::<Lengths>::builder().workers(1).segment_size(SEGMENT).build(()).unwrap();
    match wp.put(oversize()) {
        Err(PutError::Encode(task, _)) => assert_eq!(task.len(), 2 * SEGMENT as usize),
        other => panic!("expected Encode with the task back, got {other:?}"),
    }
    assert!(matches!(wp.put_timeout(oversize(), Duration::MAX), Err(PutError::Encode(..))));
    wp.put(vec![0u8; 300]).unwrap();
    assert_eq!(wp.get(), Ok(300));
    assert_eq!(wp.get(), Err(GetError::NothingPending));
}

struct Sink {
    got: u64,
}

fn new_sink(_: ()) -> Sink {
    Sink { got: 0 }
}

fn swallow(s: &mut Sink, v: Vec<u8>) -> u64 {
    s.got += v.len() as u64;
    s.got
}

fn total(s: &Sink) -> u64 {
    s.got
}

#[test]
fn an_oversize_remote_call_is_a_codec_error_and_the_object_lives_on() {
    let _w = watchdog("remote_oversize", Duration::from_secs(120));
    let remote = Remote::spawn(new_sink, ()).unwrap();
    // The remote's segment is 64 MiB.
    let huge = vec![3u8; 80 << 20];
    assert!(matches!(remote.call(swallow, huge.clone()), Err(RemoteError::Codec(_))));
    assert!(matches!(remote.call_timeout(swallow, huge, Duration::MAX), Err(RemoteError::Codec(_))));
    assert_eq!(remote.call(swallow, vec![0u8; 10]), Ok(10));
    assert_eq!(remote.get(total), Ok(10));
}

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn duration_max_is_no_limit_for_every_pool_timeout() {
    let _w = watchdog("pool_duration_max", Duration::from_secs(120));
    let pool = Pool::builder().workers(1).task_timeout(Duration::MAX).shutdown_timeout(Duration::MAX).build().unwrap();
    let t = pool.submit_timeout(square, 3u64, Duration::MAX).unwrap();
    assert_eq!(t.wait_timeout(Duration::MAX).unwrap(), Ok(9));
    pool.close();
    pool.join_timeout(Duration::MAX).unwrap();
    drop(pool);

    let wp = WorkerPool::<Lengths>::builder()
        .workers(1)
        .task_timeout(Duration::MAX)
        .shutdown_timeout(Duration::MAX)
        .build(())
        .unwrap();
    wp.put_timeout(vec![1, 2, 3], Duration::MAX).unwrap();
    assert_eq!(wp.get_timeout(Duration::MAX), Ok(3));
    assert_eq!(wp.get_timeout(Duration::MAX), Err(GetError::NothingPending));
    wp.close();
    wp.join_timeout(Duration::MAX).unwrap();
}

#[test]
fn duration_max_is_no_limit_for_every_remote_timeout() {
    let _w = watchdog("remote_duration_max", Duration::from_secs(120));
    let remote = Remote::spawn(new_sink, ()).unwrap();
    assert_eq!(remote.call_timeout(swallow, vec![0u8; 5], Duration::MAX), Ok(5));
    assert_eq!(remote.get_timeout(total, Duration::MAX), Ok(5));
    let pending = remote.call_async(swallow, vec![0u8; 2]);
    assert_eq!(pending.wait_timeout(Duration::MAX).unwrap(), Ok(7));
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn slow_total(s: &Sink) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    s.got
}

#[test]
fn zero_timeouts_try_once_and_give_everything_back() {
    let _w = watchdog("zero_timeouts", Duration::from_secs(120));
    let pool = Pool::builder().workers(1).build().unwrap();
    let t = pool.submit(nap, 300u64).unwrap();
    let t = t.wait_timeout(Duration::ZERO).expect_err("no result yet");
    assert_eq!(t.wait(), Ok(300));

    let remote = Remote::spawn(new_sink, ()).unwrap();
    let pending = remote.call_async(swallow, vec![0u8; 4]);
    assert_eq!(pending.wait(), Ok(4));
    assert_eq!(remote.get_timeout(slow_total, Duration::ZERO), Err(RemoteError::Timeout));
    let slow = remote.call_async(swallow, vec![0u8; 1]);
    let slow = slow.wait_timeout(Duration::ZERO).expect_err("no result yet");
    assert_eq!(slow.wait(), Ok(5));
}
