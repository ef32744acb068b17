//! `log` records from workers reach the parent's logger, tagged with the
//! worker's pid; records dropped because the ring was full are reported.
//! (Its own test binary: it installs the process's logger.)

mod common;

use common::wait_for;
use std::sync::Mutex;
use std::time::Duration;

use shmpool::Pool;

struct Capture {
    lines: Mutex<Vec<(log::Level, String, String)>>,
    /// Slows every forwarded record down, to make the log ring overflow.
    slow: std::sync::atomic::AtomicBool,
}

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.slow.load(std::sync::atomic::Ordering::Relaxed) && r.target() != "shmpool" {
            std::thread::sleep(Duration::from_micros(200));
        }
        self.lines.lock().unwrap().push((r.level(), r.target().to_owned(), r.args().to_string()));
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture { lines: Mutex::new(Vec::new()), slow: std::sync::atomic::AtomicBool::new(false) };

fn greet(x: u64) -> u32 {
    log::info!(target: "greeter", "hello from task {x}");
    log::debug!("debug detail {x}");
    std::process::id()
}

fn chatter(n: u64) -> u64 {
    for i in 0..n {
        log::info!(target: "chatter", "line {i}");
    }
    n
}

#[test]
fn worker_records_reach_the_parent_logger_and_drops_are_reported() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(log::LevelFilter::Trace);

    // 1. Records arrive, tagged with the worker's pid, level and target kept.
    let pool = Pool::builder().workers(1).build().unwrap();
    let pid = pool.submit(greet, 7u64).unwrap().wait().unwrap();
    let expect = format!("[worker {pid} at ");
    assert!(wait_for(|| CAPTURE.lines.lock().unwrap().iter().any(|(_, _, m)| m.contains("hello from task 7"))));
    let lines = CAPTURE.lines.lock().unwrap().clone();
    let hello = lines.iter().find(|(_, _, m)| m.contains("hello from task 7")).unwrap();
    assert_eq!(hello.0, log::Level::Info);
    assert_eq!(hello.1, "greeter");
    assert!(hello.2.starts_with(&expect), "{:?}", hello.2);
    assert!(wait_for(|| CAPTURE
        .lines
        .lock()
        .unwrap()
        .iter()
        .any(|(l, _, m)| *l == log::Level::Debug && m.contains("debug detail 7"))));
    drop(pool);

    // 2. A slow parent logger: the ring fills, the worker does not block, and
    // every record is either delivered or counted as dropped.
    CAPTURE.lines.lock().unwrap().clear();
    CAPTURE.slow.store(true, std::sync::atomic::Ordering::Relaxed);
    let pool = Pool::builder().workers(1).build().unwrap();
    const N: u64 = 5000;
    assert_eq!(pool.submit(chatter, N).unwrap().wait(), Ok(N));
    drop(pool); // the receiver drains the ring and reports before the drop returns
    CAPTURE.slow.store(false, std::sync::atomic::Ordering::Relaxed);
    let lines = CAPTURE.lines.lock().unwrap().clone();
    let delivered = lines.iter().filter(|(_, t, _)| t == "chatter").count() as u64;
    let dropped: u64 = lines
        .iter()
        .filter(|(_, t, m)| t == "shmpool" && m.contains("were dropped"))
        .map(|(_, _, m)| m.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(dropped > 0, "a 1024-record ring behind a slow logger must overflow");
    assert_eq!(delivered + dropped, N, "every record delivered or counted");
}
