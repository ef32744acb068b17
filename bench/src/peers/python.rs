//! Python's `multiprocessing.Pool` through `python3`: the script
//! (`bench/python/pool.py`) times itself and prints JSON; a run that takes
//! too long is killed with its pool workers (its own process group).

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use serde::Deserialize;

use crate::common::{histogram, record, BoxResult, Latency};
use crate::process::Reaped;

/// The script, written to a temporary file for each use.
const SCRIPT: &str = include_str!("../../python/pool.py");

/// What `pool.py latency` and `pool.py handoff` print.
#[derive(Deserialize)]
pub struct Timed {
    /// Nanoseconds of each timed `pool.apply`.
    samples: Vec<u64>,
    /// CPU time of the Python parent and its workers over the timed calls.
    cpu_ns: u64,
}

impl Timed {
    pub fn latency(&self, name: &str) -> Latency {
        let mut h = histogram();
        for &ns in &self.samples {
            record(&mut h, Duration::from_nanos(ns));
        }
        Latency::from_histogram(name, &h).with_cpu(Duration::from_nanos(self.cpu_ns), self.samples.len())
    }
}

/// What `pool.py throughput` prints.
#[derive(Deserialize)]
pub struct Elapsed {
    /// Nanoseconds of each run.
    pub elapsed_ns: Vec<u64>,
}

/// The script in a temporary file, deleted on drop.
pub struct Script {
    path: PathBuf,
}

impl Script {
    pub fn write() -> io::Result<Script> {
        let path = std::env::temp_dir().join(format!("shmpool-bench-pool-{}.py", std::process::id()));
        std::fs::write(&path, SCRIPT)?;
        Ok(Script { path })
    }

    /// Runs `python3 pool.py COMMAND ARGS` and parses what it prints;
    /// `None` when python3 is not installed. Fails when it exits
    /// unsuccessfully or takes longer than `timeout`.
    pub fn run<T: for<'de> Deserialize<'de>>(
        &self,
        command_name: &str,
        args: &[usize],
        timeout: Duration,
    ) -> BoxResult<Option<T>> {
        let args: Vec<String> =
            std::iter::once(command_name.to_owned()).chain(args.iter().map(usize::to_string)).collect();
        let mut command = Command::new("python3");
        command.arg(&self.path).args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let what = format!("python3 pool.py {}", args.join(" "));
        let mut child = match Reaped::spawn_group(&mut command, what.clone()) {
            Ok(child) => child,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(format!("{what}: {error}").into()),
        };
        let (stdout, stderr) = child.take_output();
        let stdout = thread::spawn(move || read_all(stdout));
        let stderr = thread::spawn(move || read_all(stderr));
        let status = child.wait_for(timeout);
        // The pipes close when the process group is gone, on every path.
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        let status = status?;
        if !status.success() {
            return Err(format!("{what} exited with {status}: {}", stderr.trim()).into());
        }
        let parsed = serde_json::from_str(&stdout)
            .map_err(|error| format!("{what}: unexpected output ({error}): {:.200}", stdout.trim()))?;
        Ok(Some(parsed))
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_all(pipe: Option<impl Read>) -> String {
    let mut text = String::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_string(&mut text);
    }
    text
}

/// Says on stderr that the Python rows are missing.
pub fn missing() {
    eprintln!("python3 is not on PATH: no Python multiprocessing rows");
}
