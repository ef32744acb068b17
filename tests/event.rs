//! The futex doorbell (`sync::Event`) across real processes: a sleeper in
//! another process is woken, and a sleeper killed with SIGKILL while asleep
//! costs the notifier at most one wake system call, not one per notify for
//! the rest of the segment's life.
//!
//! The sleeper is this test binary re-run with `EVENT_CHILD` set: it opens
//! the named segment, raises a flag and sleeps on the event until the other
//! flag is set (or its own 30 s watchdog deadline passes).

use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmpool::sync::{wait_any, wake_calls, AdaptiveSpin, Event, SpinPolicy};
use shmpool::Segment;

/// Set in the child: `<segment name>,<offset>,<mode>`.
const CHILD_ENV: &str = "EVENT_CHILD";
/// How long anything in these tests may take before it is a hang.
const WATCHDOG: Duration = Duration::from_secs(30);

/// The shared block: two events, then `armed` (the child is about to sleep)
/// and `go` (the condition the child waits for).
struct Shared<'a> {
    events: [&'a Event; 2],
    armed: &'a AtomicU64,
    go: &'a AtomicU64,
}

impl Shared<'_> {
    /// The events the child sleeps on in `mode`.
    fn waited(&self, mode: &str) -> &[&Event] {
        if mode == "one" {
            &self.events[..1]
        } else {
            &self.events
        }
    }
}

fn shared(seg: &Segment, off: u64) -> Shared<'_> {
    Shared {
        events: [seg.get::<Event>(off).unwrap(), seg.get::<Event>(off + 8).unwrap()],
        armed: seg.get::<AtomicU64>(off + 16).unwrap(),
        go: seg.get::<AtomicU64>(off + 24).unwrap(),
    }
}

/// The wake calls are counted per process: keep the tests of this binary
/// from notifying at the same time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs in the child process: sleep on the event(s) until `go`.
fn child_main(spec: &str) {
    let mut parts = spec.split(',');
    let (name, off, mode) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let seg = Segment::open(name).unwrap();
    let s = shared(&seg, off.parse().unwrap());
    let ready = || s.go.load(Ordering::Acquire) == 1;
    s.armed.store(1, Ordering::Release);
    let deadline = Some(Instant::now() + WATCHDOG);
    let woke = match mode {
        "one" => s.events[0].wait_until(ready, deadline, SpinPolicy::SLEEP, &AdaptiveSpin::new()),
        "any" => wait_any(&s.events, ready, deadline),
        other => panic!("unknown mode {other}"),
    };
    std::process::exit(if woke { 0 } else { 3 });
}

/// Kills the child on drop, so a failing test leaves no sleeper behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A named segment with the shared block, and a child sleeping on it in `mode`.
fn sleeping_child(test: &str, mode: &str) -> (Segment, u64, Reaped) {
    let name = format!("eventtest-{mode}-{}", std::process::id());
    let seg = Segment::create(&name, 1 << 20).unwrap();
    let off = seg.alloc_zeroed(64).unwrap().offset.div_ceil(16) * 16;
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{name},{off},{mode}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = Reaped(child);
    let s = shared(&seg, off);
    let start = Instant::now();
    // Armed, and announced on every event it sleeps on.
    while !(s.armed.load(Ordering::Acquire) == 1 && s.waited(mode).iter().all(|e| e.has_sleepers())) {
        assert!(start.elapsed() < WATCHDOG, "the child never went to sleep");
        std::thread::sleep(Duration::from_millis(1));
    }
    wait_asleep(child.0.id(), start);
    (seg, off, child)
}

/// Waits until every thread of `pid` is asleep in the kernel (state `S`):
/// the child's waiting thread is then inside its futex wait.
fn wait_asleep(pid: u32, start: Instant) {
    loop {
        let asleep = std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
            tasks.flatten().all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                // The state follows the parenthesised command name.
                stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('S'))
            })
        });
        if asleep {
            return;
        }
        assert!(start.elapsed() < WATCHDOG, "the child never fell asleep");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn kill_and_reap(mut child: Reaped) {
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "the child was killed, not woken");
}

/// Notifies each event `times` times; returns how many wake system calls that made.
fn notify_many(events: &[&Event], times: usize) -> u64 {
    let before = wake_calls();
    for _ in 0..times {
        for e in events {
            e.notify();
        }
    }
    wake_calls() - before
}

fn killed_sleeper_costs_at_most_one_wake(test: &str, mode: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (seg, off, child) = sleeping_child(test, mode);
    kill_and_reap(child);
    let s = shared(&seg, off);
    let events = s.waited(mode);
    let wakes = notify_many(events, 100);
    assert!(wakes <= events.len() as u64, "{mode}: a dead sleeper cost {wakes} wake calls over 100 notifies");
    // And from then on, none at all.
    assert_eq!(notify_many(events, 100), 0, "{mode}: notifies keep making wake calls");
    assert!(events.iter().all(|e| !e.has_sleepers()));
}

fn live_sleeper_is_woken(test: &str, mode: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (seg, off, mut child) = sleeping_child(test, mode);
    let s = shared(&seg, off);
    s.go.store(1, Ordering::Release);
    s.waited(mode).last().unwrap().notify();
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{mode}: the sleeper was not woken by the notify");
    drop(child);
}

macro_rules! child_or {
    ($body:expr) => {
        match std::env::var(CHILD_ENV) {
            Ok(spec) => child_main(&spec),
            Err(_) => $body,
        }
    };
}

#[test]
fn a_sleeper_killed_in_wait_until_costs_at_most_one_wake() {
    child_or!(killed_sleeper_costs_at_most_one_wake("a_sleeper_killed_in_wait_until_costs_at_most_one_wake", "one"))
}

#[test]
fn a_sleeper_killed_in_wait_any_costs_at_most_one_wake_per_event() {
    child_or!(killed_sleeper_costs_at_most_one_wake(
        "a_sleeper_killed_in_wait_any_costs_at_most_one_wake_per_event",
        "any"
    ))
}

#[test]
fn a_sleeper_in_another_process_is_woken_by_notify() {
    child_or!(live_sleeper_is_woken("a_sleeper_in_another_process_is_woken_by_notify", "one"))
}

#[test]
fn a_sleeper_in_wait_any_in_another_process_is_woken_by_notify() {
    child_or!(live_sleeper_is_woken("a_sleeper_in_wait_any_in_another_process_is_woken_by_notify", "any"))
}
