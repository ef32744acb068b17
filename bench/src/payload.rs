//! A large task argument read in place or passed by value, and the CPU time
//! an idle pool burns.

use std::thread;
use std::time::Duration;

use crate::common::{format_bytes, progress, time_ops, BoxResult, Latency};
use crate::params::Params;
use crate::report::{Cell, Column, Section};
use crate::roundtrip::build_pool;

/// Size of the large argument in the payload rows.
const PAYLOAD: usize = 1 << 20;

/// Reads a buffer where it lies in shared memory (no copy, no deserialising).
/// It looks at the length and the two ends only, so the row measures the
/// hand-off, not the worker's use of the bytes.
fn sum_in_place(buffer: &shmpool::Archived<Vec<u8>>) -> u64 {
    buffer.len() as u64 + buffer.first().map_or(0, |&b| b as u64) + buffer.last().map_or(0, |&b| b as u64)
}

/// Takes an owned buffer: the caller clones it to submit it by value, and the
/// worker deserialises it, two more copies than reading it in place.
fn sum_owned(buffer: Vec<u8>) -> u64 {
    buffer.len() as u64 + buffer.first().map_or(0, |&b| b as u64) + buffer.last().map_or(0, |&b| b as u64)
}

pub fn check_sum(got: u64, expect: u64) -> BoxResult<()> {
    if got == expect {
        Ok(())
    } else {
        Err(format!("worker read a sum of {got}, expected {expect}").into())
    }
}

/// A large argument through one worker, read in place or deserialised, beside
/// one plain copy of the same bytes in this process. `empty` is the p50 of an
/// empty task's round trip, subtracted to count the copies a row makes.
pub fn measure_payload(params: &Params, empty: Option<Duration>) -> BoxResult<Section> {
    progress("payload");
    let iterations = (params.latency_iterations / 50).max(10);
    let warm_up = (params.latency_warm_up / 50).max(1);
    let buffer: Vec<u8> = (0..PAYLOAD).map(|i| i as u8).collect();
    let expect = sum_owned(buffer.clone());
    let pool = build_pool(1)?;
    let in_place = time_ops(warm_up, iterations, None, |_| {
        check_sum(pool.submit_archived(sum_in_place, &buffer)?.wait()?, expect)
    })?;
    let by_value =
        time_ops(warm_up, iterations, None, |_| check_sum(pool.submit(sum_owned, buffer.clone())?.wait()?, expect))?;
    let mut target = vec![0u8; PAYLOAD];
    let memcpy = time_ops(warm_up, iterations, None, |_| {
        target.copy_from_slice(&buffer);
        std::hint::black_box(&mut target);
        Ok(())
    })?;
    let rows = [
        (Latency::from_histogram("shmpool, read in place (submit_archived)", &in_place), true),
        (Latency::from_histogram("shmpool, by value (clone + submit)", &by_value), true),
        (Latency::from_histogram("memcpy in this process (one copy)", &memcpy), false),
    ];
    let mut section = Section::new(
        "payload",
        format!(
            "Payload: a {} argument, round trip through 1 worker ({iterations} timed after {warm_up} for warm-up)",
            format_bytes(PAYLOAD)
        ),
        vec![Column::new("p50", "p50_ns"), Column::new("p99", "p99_ns"), Column::new("copies", "copies")],
    );
    let copy = rows[2].0.p50.as_secs_f64();
    let empty = empty.unwrap_or_default().as_secs_f64();
    for (row, round_trip) in &rows {
        let extra = row.p50.as_secs_f64() - if *round_trip { empty } else { 0.0 };
        let copies = if copy > 0.0 { Cell::Factor(extra.max(0.0) / copy) } else { Cell::Empty };
        section.row(row.name.clone(), vec![Cell::time(row.p50), Cell::time(row.p99), copies]);
    }
    section.note("copies = (round trip - empty-task round trip p50) / memcpy time (p50)");
    Ok(section)
}

/// Runs a burst of tasks, then measures the CPU time the parent and the
/// worker burn while nothing happens: spinning must stop, sleeping must begin.
pub fn measure_idle_cpu() -> BoxResult<Section> {
    progress("idle CPU");
    let pool = build_pool(1)?;
    for i in 0..10_000u64 {
        pool.submit(crate::common::square, i)?.wait()?;
    }
    let worker = *pool.worker_pids().first().ok_or("pool has no worker")?;
    let window = Duration::from_secs(1);
    let (p0, w0) = (cpu_time("self")?, cpu_time(&worker.to_string())?);
    // The parent waits as a user would: blocked on a result that is slow to come.
    let slow = pool.submit(sleep_ms, window.as_millis() as u64)?;
    slow.wait()?;
    let (p1, w1) = (cpu_time("self")?, cpu_time(&worker.to_string())?);
    let mut section = Section::new(
        "idle_cpu",
        format!(
            "Idle CPU: CPU time used while the parent waits {} for a task that sleeps",
            crate::common::format_nanos(window.as_secs_f64() * 1e9)
        ),
        vec![Column::new("CPU time", "cpu_ns"), Column::new("of a core", "share_of_core")],
    );
    for (name, used) in [("parent", p1.saturating_sub(p0)), ("worker", w1.saturating_sub(w0))] {
        let share = used.as_secs_f64() / window.as_secs_f64();
        section.row(name, vec![Cell::time(used), Cell::Text(format!("{:.2}%", share * 100.0))]);
    }
    Ok(section)
}

/// A task that sleeps: the worker is busy doing nothing, the parent waits.
fn sleep_ms(ms: u64) -> u64 {
    thread::sleep(Duration::from_millis(ms));
    ms
}

/// CPU time of the main thread of process `pid` (or "self"), in nanoseconds
/// from `/proc/<pid>/schedstat` (its first field). Parent and worker do all
/// their waiting on their main thread.
fn cpu_time(pid: &str) -> BoxResult<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    let ns: u64 = stat.split_whitespace().next().ok_or("empty schedstat")?.parse()?;
    Ok(Duration::from_nanos(ns))
}
