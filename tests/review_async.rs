//! Review findings in the async waits (`src/wait/reactor.rs`): each test
//! fails on the bug it names (marked `#[ignore = "bug: ..."]` until fixed).
//! CPU is measured for the whole process, so this binary has one test.

#[path = "common/watchdog.rs"]
mod watchdog;

use std::time::{Duration, Instant};

use shmpool::topic::Topic;
use watchdog::watchdog;

/// CPU time (user + system) of every thread of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes one rusage into the zeroed struct we own.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut u), 0);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// reactor.rs:135 and 207: the reactor keeps one arm per futex word (the
/// first source's announced value), and a `WakeOn` counts *any* change of
/// the word as "moved". Two tasks of one process parked on one event
/// (two `recv_async` on a subscriber shared by tasks, two `pop_async` on
/// one queue, two `send_async` on one full queue) each re-announce when
/// woken, which moves the word, which wakes the other: they wake each
/// other for ever while nothing happens, burning a core.
#[test]
fn review_two_tasks_waiting_on_one_subscriber_use_no_cpu() {
    let _w = watchdog("review two waiters", Duration::from_secs(60));
    let name = format!("rv-two-waiters-{}", std::process::id());
    let topic = Topic::<u64>::builder(&name).segment_size(4 << 20).open_or_create().unwrap();
    let sub = topic.subscriber().unwrap();
    let publisher = topic.publisher().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(1000));
            publisher.send(&1).unwrap();
            publisher.send(&2).unwrap();
        });
        let (cpu0, t0) = (cpu_time(), Instant::now());
        let (a, b) = futures::executor::block_on(futures::future::join(sub.recv_async(), sub.recv_async()));
        let (cpu, wall) = (cpu_time() - cpu0, t0.elapsed());
        let mut got = vec![*a.unwrap(), *b.unwrap()];
        got.sort();
        assert_eq!(got, [1, 2]);
        let share = cpu.as_secs_f64() / wall.as_secs_f64();
        eprintln!("two waiters: {cpu:?} of CPU over {wall:?}");
        assert!(share < 0.05, "two parked tasks used {:.0}% of a core while waiting", share * 100.0);
    });
}
