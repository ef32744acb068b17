//! The shared map, read and updated from another process, against Python's
//! `multiprocessing.Manager().dict()`.

use std::io;
use std::process::Command;
use std::time::Instant;

use crate::common::{format_rate, progress, BoxResult};
use crate::params::Params;
use crate::report::{verdict, Cell, Column, Section};
use crate::roundtrip::build_pool;

/// The map of the shared-map rows, in the pool's segment.
const MAP_NAME: &str = "counts";
/// The one key read and updated.
const MAP_KEY: &str = "k";

/// Task of the shared-map row, in a pool worker: `reads` reads of the key,
/// then `updates` increments. Returns the nanoseconds of each phase.
fn map_ops((reads, updates): (u64, u64)) -> (u64, u64) {
    match map_ops_in_worker(reads, updates) {
        Ok(nanos) => nanos,
        Err(error) => panic!("shared map worker: {error}"),
    }
}

fn map_ops_in_worker(reads: u64, updates: u64) -> BoxResult<(u64, u64)> {
    let seg = shmpool::pool_segment().ok_or("not in a pool worker")?;
    let map = seg.map::<String, u64>(MAP_NAME, shmpool::LockKind::Mutex)?;
    let mut sum = 0u64;
    let start = Instant::now();
    for _ in 0..reads {
        let value = map.get(MAP_KEY)?.ok_or("the key is missing")?;
        sum = sum.wrapping_add(value.to_native());
    }
    let read_nanos = start.elapsed().as_nanos() as u64;
    std::hint::black_box(sum);
    let start = Instant::now();
    for _ in 0..updates {
        map.update(MAP_KEY, |old: Option<u64>| old.unwrap_or(0) + 1)?;
    }
    Ok((read_nanos, start.elapsed().as_nanos() as u64))
}

/// Goal: reads per second of the shmpool row, from another process.
const READ_GOAL: f64 = 10e6;
/// Goal: updates per second of the shmpool row.
const UPDATE_GOAL: f64 = 2e6;

/// One row of the shared-map table: rates, or why there are none.
struct MapRow {
    name: String,
    reads: u64,
    updates: u64,
    /// Reads and updates per second.
    rates: Option<(f64, f64)>,
    note: String,
}

pub fn measure_map(params: &Params) -> BoxResult<Section> {
    progress("shared map");
    let pool = build_pool(1)?;
    let map = pool.segment().map::<String, u64>(MAP_NAME, shmpool::LockKind::Mutex)?;
    map.insert(&MAP_KEY.to_owned(), &0)?;
    // Warm up the worker, its mapping and the arena's free lists.
    pool.submit(map_ops, (params.map_reads / 10, params.map_updates / 10))?.wait()?;
    map.insert(&MAP_KEY.to_owned(), &0)?;
    let (reads, updates) = (params.map_reads, params.map_updates);
    let (read_nanos, update_nanos) = pool.submit(map_ops, (reads, updates))?.wait()?;
    let value = map.get(MAP_KEY)?.ok_or("the key is missing")?.to_native();
    if value != updates {
        return Err(format!("shared map: the value is {value} after {updates} updates").into());
    }
    let rate = |ops: u64, nanos: u64| ops as f64 * 1e9 / nanos.max(1) as f64;
    let mut rows = vec![MapRow {
        name: "shmpool SharedMap<String, u64>, Mutex; get / update(+1)".to_owned(),
        reads,
        updates,
        rates: Some((rate(reads, read_nanos), rate(updates, update_nanos))),
        note: String::new(),
    }];
    progress("Python Manager dict");
    rows.push(python_manager_dict(params)?);
    Ok(map_section(&rows))
}

fn map_section(rows: &[MapRow]) -> Section {
    let mut section = Section::new(
        "shared_map",
        "Shared map, used from another process: reads of key \"k\" and read-modify-write increments of it",
        vec![
            Column::new("reads", "reads"),
            Column::new("reads/s", "reads_per_second"),
            Column::new("updates", "updates"),
            Column::new("updates/s", "updates_per_second"),
            Column::new("note", "note"),
        ],
    );
    for row in rows {
        let (reads, updates) = row.rates.unzip();
        section.row(
            row.name.clone(),
            vec![
                Cell::Count(row.reads),
                reads.map_or(Cell::Empty, Cell::Rate),
                Cell::Count(row.updates),
                updates.map_or(Cell::Empty, Cell::Rate),
                Cell::Text(row.note.clone()),
            ],
        );
    }
    match (rows.first().and_then(|r| r.rates), rows.get(1).and_then(|r| r.rates)) {
        (Some((shm_reads, shm_updates)), Some((py_reads, py_updates))) => {
            let (reads, updates) = (shm_reads / py_reads.max(1e-9), shm_updates / py_updates.max(1e-9));
            section.note(format!(
                "shmpool vs Manager dict: reads {reads:.0}x faster, updates {updates:.0}x faster (goal: 100x or more){}",
                if reads >= 100.0 && updates >= 100.0 { "" } else { "  GOAL MISSED" }
            ));
        }
        _ => section.note("shmpool vs Manager dict: no Python figures"),
    }
    if let Some((reads, updates)) = rows.first().and_then(|r| r.rates) {
        section.note(format!(
            "goal: SharedMap >= 10 M reads/s from another process, updates >= 2 M/s: reads {}, updates {}, {}",
            format_rate(reads),
            format_rate(updates),
            verdict(reads >= READ_GOAL && updates >= UPDATE_GOAL)
        ));
    }
    section
}

/// The Python baseline: a `multiprocessing.Process` child reads and updates a
/// `Manager().dict()`; prints "reads/s updates/s".
const PYTHON_SCRIPT: &str = include_str!("../python/manager_dict.py");

fn python_manager_dict(params: &Params) -> BoxResult<MapRow> {
    let (reads, updates) = (params.python_reads, params.python_updates);
    let mut row = MapRow {
        name: "Python Manager().dict(), child Process; d['k'] / with mp.Lock(): d['k'] += 1".to_owned(),
        reads,
        updates,
        rates: None,
        note: String::new(),
    };
    let script = std::env::temp_dir().join(format!("shmpool-bench-{}.py", std::process::id()));
    std::fs::write(&script, PYTHON_SCRIPT)?;
    let output = Command::new("python3").arg(&script).arg(reads.to_string()).arg(updates.to_string()).output();
    let _ = std::fs::remove_file(&script);
    let output = match output {
        Ok(output) => output,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            row.note = "python3 is not on PATH: not measured".to_owned();
            return Ok(row);
        }
        Err(error) => return Err(error.into()),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("python3 {} failed ({}): {}", script.display(), output.status, stderr.trim()).into());
    }
    let stdout = String::from_utf8(output.stdout)?;
    let rates: Vec<f64> = stdout.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
    match rates[..] {
        [read_rate, update_rate] => row.rates = Some((read_rate, update_rate)),
        _ => return Err(format!("unexpected output from python3: {stdout:?}").into()),
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shmpool_row(reads_per_second: f64, updates_per_second: f64) -> MapRow {
        MapRow {
            name: "shmpool".to_owned(),
            reads: 1,
            updates: 1,
            rates: Some((reads_per_second, updates_per_second)),
            note: String::new(),
        }
    }

    #[test]
    fn the_goal_line_follows_the_figures_shown() {
        let goal = |section: Section| section.notes.into_iter().find(|n| n.starts_with("goal:")).expect("a goal line");
        let met = goal(map_section(&[shmpool_row(12e6, 2.5e6)]));
        assert!(met.ends_with("reads 12.00 M/s, updates 2.50 M/s, MET"), "{met}");
        let slow_reads = goal(map_section(&[shmpool_row(4.43e6, 2.5e6)]));
        assert!(slow_reads.ends_with("reads 4.43 M/s, updates 2.50 M/s, MISSED"), "{slow_reads}");
        let slow_updates = goal(map_section(&[shmpool_row(12e6, 1.9e6)]));
        assert!(slow_updates.ends_with("MISSED"), "{slow_updates}");
    }
}
