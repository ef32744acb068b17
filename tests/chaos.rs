//! Chaos: a map over 100,000 tasks while another thread kills random workers
//! with SIGKILL twenty times. Every result must arrive exactly once, in
//! order, and the pool must work afterwards.

#[path = "common/watchdog.rs"]
mod watchdog;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use shmpool::{OnWorkerDeath, Pool};
use watchdog::watchdog;

/// A few microseconds of arithmetic, so that kills land mid-task.
fn work(x: u64) -> u64 {
    let mut h = x ^ 0x9E37_79B9_7F4A_7C15;
    for _ in 0..3000 {
        h = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    }
    h
}

#[test]
fn a_map_survives_twenty_sigkills_with_every_result_exactly_once_in_order() {
    const TASKS: u64 = 100_000;
    const KILLS: u32 = 20;
    // Generous retries: a task is run again each time its worker is killed.
    let pool = Pool::builder()
        .workers(2)
        .queue_capacity(64)
        .on_worker_death(OnWorkerDeath::Requeue { max_attempts: 20 })
        .build()
        .unwrap();
    let done = AtomicBool::new(false);
    let kills = AtomicU32::new(0);
    let mut seed = std::process::id() as u64 | 1;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let delays: Vec<u64> = (0..KILLS).map(|_| 3 + random() % 12).collect();
    let choices: Vec<u64> = (0..KILLS).map(|_| random()).collect();
    let results: Vec<u64> = std::thread::scope(|s| {
        s.spawn(|| {
            let mut killed = Vec::new();
            for k in 0..KILLS as usize {
                std::thread::sleep(Duration::from_millis(delays[k]));
                // A live worker not killed before (a replacement, by now).
                let victim = loop {
                    if done.load(Ordering::Acquire) {
                        return;
                    }
                    let pids: Vec<u32> = pool.worker_pids().into_iter().filter(|p| !killed.contains(p)).collect();
                    if !pids.is_empty() {
                        break pids[(choices[k] % pids.len() as u64) as usize];
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                // SAFETY: signalling a child process of ours by pid.
                if unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) } == 0 {
                    killed.push(victim);
                    kills.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let results = pool.map(work, 0..TASKS).unwrap().collect::<Result<Vec<_>, _>>();
        done.store(true, Ordering::Release);
        results.expect("no task may fail: each killed one is run again")
    });
    assert_eq!(results.len() as u64, TASKS, "every result exactly once");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(*r, work(i as u64), "result {i} out of order or wrong");
    }
    assert_eq!(kills.load(Ordering::Relaxed), KILLS, "the map ended before all kills: make tasks longer");
    assert!(pool.respawns() >= KILLS as u64 - 2, "respawns {}", pool.respawns());
    // Usable afterwards.
    assert_eq!(pool.submit(work, 7u64).unwrap().wait(), Ok(work(7)));
    assert!(pool.is_alive());
}

fn inc(x: u64) -> u64 {
    x + 1
}

/// Fast tasks and frequent kills: workers often die right after publishing
/// their answers, the case where a task must not be answered twice.
#[test]
fn an_unordered_map_of_fast_tasks_survives_frequent_kills() {
    const TASKS: u64 = 300_000;
    let _w = watchdog("chaos: unordered map with kills", Duration::from_secs(120));
    let pool = Pool::builder()
        .workers(3)
        .queue_capacity(60)
        .on_worker_death(OnWorkerDeath::Requeue { max_attempts: 50 })
        .build()
        .unwrap();
    let done = AtomicBool::new(false);
    let mut got: Vec<u64> = std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0u64;
            while !done.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(15));
                let pids = pool.worker_pids();
                if let Some(&victim) = pids.get((n % 3) as usize % pids.len().max(1)) {
                    // SAFETY: signalling a child process of ours by pid.
                    unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
                }
                n += 1;
            }
        });
        let got = pool.map_unordered(inc, 0..TASKS).unwrap().collect::<Result<Vec<_>, _>>();
        done.store(true, Ordering::Release);
        got.expect("no task may fail")
    });
    got.sort_unstable();
    assert_eq!(got.len() as u64, TASKS, "every result exactly once");
    assert!(got.iter().enumerate().all(|(i, &v)| v == i as u64 + 1), "a result missing or doubled");
    assert_eq!(pool.submit(inc, 1u64).unwrap().wait(), Ok(2));
}
