//! Remote objects: built in a child process, called and read from the
//! parent, surviving a panicking call, failing cleanly when their process dies.

#[path = "common/watchdog.rs"]
mod watchdog;
use std::time::Duration;
use watchdog::watchdog;

use shmpool::{wait_all, Remote, RemoteError};

struct Counter {
    n: u64,
    log: Vec<String>,
}

fn make_counter(start: u64) -> Counter {
    Counter { n: start, log: Vec::new() }
}

fn add(c: &mut Counter, by: u64) -> u64 {
    c.n += by;
    c.n
}

fn note(c: &mut Counter, s: String) -> usize {
    c.log.push(s);
    c.log.len()
}

fn read_n(c: &Counter) -> u64 {
    c.n
}

fn whoami(_: &Counter) -> u32 {
    std::process::id()
}

fn explode(_: &mut Counter, _: ()) -> u64 {
    panic!("boom in the remote")
}

fn slow_add(c: &mut Counter, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    c.n += ms;
    c.n
}

fn die(_: &mut Counter, code: i32) -> u64 {
    std::process::exit(code)
}

fn refuse(_: u64) -> Counter {
    panic!("creator refused")
}

#[test]
fn calls_and_reads_run_in_the_child_in_order() {
    let c = Remote::spawn(make_counter, 5u64).unwrap();
    assert_eq!(c.call(add, 2), Ok(7));
    assert_eq!(c.get(read_n), Ok(7));
    assert_eq!(c.call(note, "a".to_string()), Ok(1));
    assert_eq!(c.call(note, "b".to_string()), Ok(2));
    let pid = c.get(whoami).unwrap();
    assert_ne!(pid, std::process::id());
    assert_eq!(pid, c.pid());
    // Closures that capture nothing are functions too.
    assert_eq!(
        c.call(
            |c: &mut Counter, x: u64| {
                c.n *= x;
                c.n
            },
            3
        ),
        Ok(21)
    );
}

#[test]
fn pending_calls_and_wait_all() {
    let c = Remote::spawn(make_counter, 0u64).unwrap();
    let pending: Vec<_> = (1..=5).map(|i| c.call_async(add, i)).collect();
    // Calls on one object run in order: running totals.
    assert_eq!(wait_all(pending), Ok(vec![1, 3, 6, 10, 15]));
    // Several objects work in parallel, each in its own process.
    let objects: Vec<_> = (0..4).map(|_| Remote::spawn(make_counter, 0u64).unwrap()).collect();
    let pending: Vec<_> = objects.iter().map(|o| o.call_async(slow_add, 50)).collect();
    assert_eq!(wait_all(pending), Ok(vec![50; 4]));
    let pids: std::collections::HashSet<u32> = objects.iter().map(|o| o.pid()).collect();
    assert_eq!(pids.len(), 4);
}

#[test]
fn a_panicking_call_is_an_error_and_the_object_lives_on() {
    let c = Remote::spawn(make_counter, 1u64).unwrap();
    match c.call(explode, ()) {
        Err(RemoteError::Panicked { message }) => assert!(message.contains("boom in the remote"), "{message}"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(c.call(add, 1), Ok(2), "state survived the panic");
    // In parallel mode the error comes back as a value.
    let p = c.call_async(explode, ());
    assert!(matches!(p.wait(), Err(RemoteError::Panicked { .. })));
}

#[test]
fn a_dead_remote_gives_dead_not_a_hang() {
    let c = Remote::spawn(make_counter, 1u64).unwrap();
    let pid = c.pid();
    assert_eq!(c.call(die, 4), Err(RemoteError::Dead { pid }));
    assert_eq!(c.call(add, 1), Err(RemoteError::Dead { pid }));
    assert_eq!(c.get(read_n), Err(RemoteError::Dead { pid }));
    assert!(!c.is_alive());
}

#[test]
fn a_creator_that_panics_is_a_start_error() {
    match Remote::spawn(refuse, 1u64) {
        Err(RemoteError::Start(message)) => assert!(message.contains("creator refused"), "{message}"),
        other => panic!("expected Start, got {other:?}"),
    }
}

#[test]
fn dropping_the_handle_stops_the_process() {
    let c = Remote::spawn(make_counter, 1u64).unwrap();
    let pid = c.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(c);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "remote process {pid} left behind");
}

#[test]
fn every_pending_call_of_a_dead_remote_ends_with_dead() {
    let _w = watchdog("dead_remote_pending", Duration::from_secs(120));
    let c = Remote::spawn(make_counter, 1u64).unwrap();
    let pid = c.pid();
    let first = c.call_async(die, 4);
    let rest: Vec<_> = (0..60).map(|_| c.call_async(add, 1)).collect();
    assert_eq!(first.wait(), Err(RemoteError::Dead { pid }));
    for p in rest {
        assert_eq!(p.wait(), Err(RemoteError::Dead { pid }));
    }
    assert_eq!(c.call_timeout(add, 1, Duration::MAX), Err(RemoteError::Dead { pid }));
}

// Issue 11 item 1: a busy-polling remote answers and still notices its death.
#[test]
fn a_busy_polling_remote_answers_and_notices_its_death() {
    let c = Remote::spawn_with_policy(make_counter, 1u64, shmpool::sync::SpinPolicy::BUSY_POLL).unwrap();
    for _ in 0..1000 {
        c.call(add, 1).unwrap();
    }
    assert_eq!(c.get(read_n), Ok(1001));
    let pid = c.pid();
    assert_eq!(c.call(die, 4), Err(RemoteError::Dead { pid }));
}
