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
        if r.args().to_string().contains("PANIC-IN-LOGGER") {
            panic!("the capturing logger refuses this record");
        }
        if self.slow.load(std::sync::atomic::Ordering::Relaxed) && r.target() != "shmpool" {
            std::thread::sleep(Duration::from_micros(200));
        }
        self.lines.lock().unwrap().push((r.level(), r.target().to_owned(), r.args().to_string()));
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture { lines: Mutex::new(Vec::new()), slow: std::sync::atomic::AtomicBool::new(false) };

/// The tests share the process's logger: one at a time, installed once.
fn capture() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CAPTURE).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
    });
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    CAPTURE.lines.lock().unwrap().clear();
    guard
}

/// The message of a forwarded record, without the `[worker … UTC] ` tag.
fn body(m: &str) -> &str {
    m.split_once(" UTC] ").map_or(m, |(_, b)| b)
}

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
    let _serial = capture();

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

/// Logs one record of each length in `from..to` bytes (target "len"),
/// mixing one- and two-byte characters.
fn log_lengths(range: (u32, u32)) -> u32 {
    for len in range.0..range.1 {
        log::info!(target: "len", "{}", pattern(len as usize));
    }
    range.1 - range.0
}

/// `len` bytes: 'a'..'z' with a two-byte 'é' every 7th character where it fits.
fn pattern(len: usize) -> String {
    let mut s = String::with_capacity(len);
    let mut i = 0;
    while s.len() < len {
        if i % 7 == 6 && s.len() + 2 <= len {
            s.push('é');
        } else {
            s.push((b'a' + (i % 26) as u8) as char);
        }
        i += 1;
    }
    s
}

fn log_huge(len: u64) -> u32 {
    log::warn!(target: "huge", "{}", pattern(len as usize));
    log::info!(target: "after", "after the huge record");
    0
}

fn lines_for(target: &str) -> Vec<String> {
    CAPTURE.lines.lock().unwrap().iter().filter(|(_, t, _)| t == target).map(|(_, _, m)| body(m).to_owned()).collect()
}

#[test]
fn records_of_every_length_arrive_whole_and_a_huge_one_is_cut_with_a_marker() {
    let _serial = capture();
    let pool = Pool::builder().workers(1).build().unwrap();
    // Batches of 100: the worker never waits for the parent, so a batch
    // must fit the log ring before the next one starts.
    for from in (0..=2000u32).step_by(100) {
        let to = (from + 100).min(2001);
        assert_eq!(pool.submit(log_lengths, (from, to)).unwrap().wait(), Ok(to - from));
        assert!(wait_for(|| lines_for("len").len() >= to as usize), "records {from}..{to} did not all arrive");
    }
    let lines = lines_for("len");
    assert_eq!(lines.len(), 2001);
    for (len, line) in lines.iter().enumerate() {
        assert_eq!(line, &pattern(len), "record of {len} bytes");
    }

    // 1 MiB: cut to the cap on a char boundary, marked; later records still come.
    assert_eq!(pool.submit(log_huge, 1u64 << 20).unwrap().wait(), Ok(0));
    assert!(wait_for(|| !lines_for("after").is_empty()), "the record after the huge one did not arrive");
    let huge = lines_for("huge");
    assert_eq!(huge.len(), 1, "the huge record arrives once");
    let (kept, marker) = huge[0].split_once('…').expect("a cut record carries the marker");
    assert!(kept.len() <= 64 << 10, "kept {} bytes", kept.len());
    assert!(kept.len() > 60 << 10, "kept only {} bytes", kept.len());
    assert!(pattern(1 << 20).starts_with(kept));
    assert!(marker.contains("1048576"), "the marker says how long it was: {marker}");
    assert!(wait_for(|| CAPTURE.lines.lock().unwrap().iter().any(|(_, t, m)| t == "shmpool" && m.contains("cut"))));
}

fn log_refused_then_more(n: u32) -> u32 {
    log::info!(target: "refused", "PANIC-IN-LOGGER");
    for i in 0..n {
        log::info!(target: "later", "later record {i}");
    }
    n
}

#[test]
fn a_panicking_parent_logger_does_not_stop_the_forwarding() {
    let _serial = capture();
    let pool = Pool::builder().workers(1).build().unwrap();
    assert_eq!(pool.submit(log_refused_then_more, 10u32).unwrap().wait(), Ok(10));
    assert!(wait_for(|| lines_for("later").len() == 10), "records after the logger's panic were lost");
    assert!(wait_for(|| CAPTURE
        .lines
        .lock()
        .unwrap()
        .iter()
        .any(|(_, t, m)| t == "shmpool" && m.contains("panicked"))));
    // And the pool still shuts down.
    drop(pool);
}
