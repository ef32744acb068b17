//! Bootstrap: the current binary, re-executed, becomes a worker.
//!
//! The parent starts `/proc/self/exe` with `SHMPOOL_WORKER` in its
//! environment and the segment's memfd left open. Before the child's `main`
//! (or a test harness) runs, a load-time constructor sees the variable, runs
//! the worker loop and exits; [`init`] does the same explicitly for programs
//! that prefer to say so as the first line of `main`.
//!
//! Functions travel as sealed offsets (see [`super::code`]).

use std::fmt;

use crate::sys::process;

/// Environment variable that turns a process into a worker.
pub(crate) const ENV: &str = "SHMPOOL_WORKER";

/// What a worker is told by its parent.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct WorkerConfig {
    /// The inherited memfd of the pool's segment.
    pub fd: i32,
    /// Offset of the pool's control block in the segment.
    pub control: u64,
    /// This worker's index in the worker table.
    pub index: u32,
    /// The parent's pid: the worker exits when its parent is gone.
    pub parent: u32,
    /// The secret that seals function offsets.
    pub key: u64,
}

impl fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("fd", &self.fd)
            .field("control", &self.control)
            .field("index", &self.index)
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

impl WorkerConfig {
    pub(crate) fn encode(&self) -> String {
        format!("1:{}:{}:{}:{}:{:016x}", self.fd, self.control, self.index, self.parent, self.key)
    }

    pub(crate) fn decode(s: &str) -> Option<WorkerConfig> {
        let mut it = s.split(':');
        if it.next()? != "1" {
            return None;
        }
        let cfg = WorkerConfig {
            fd: it.next()?.parse().ok()?,
            control: it.next()?.parse().ok()?,
            index: it.next()?.parse().ok()?,
            parent: it.next()?.parse().ok()?,
            key: u64::from_str_radix(it.next()?, 16).ok()?,
        };
        it.next().is_none().then_some(cfg)
    }
}

/// Turns this process into a worker if it was started as one; otherwise
/// returns at once.
///
/// Call it as the first line of `main`. With the default load-time hook
/// (which runs before `main` and before test harnesses), a worker never
/// reaches `main`, so the call is only a documented no-op there; it is the
/// explicit path that keeps working if the hook is ever unavailable.
pub fn init() {
    let Some(value) = std::env::var_os(ENV) else {
        return;
    };
    // Do not leak the role to processes the worker itself starts.
    // SAFETY (not an unsafe block): remove_var races only with other threads
    // reading the environment; a worker has no other thread yet.
    std::env::remove_var(ENV);
    let Some(cfg) = value.to_str().and_then(WorkerConfig::decode) else {
        eprintln!("shmpool: malformed {ENV} value {value:?}; not starting a worker");
        process::exit_now(2);
    };
    let code = match super::executor::run(&cfg) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shmpool worker {}: {e}", process::current_pid());
            3
        }
    };
    process::exit_now(code);
}

#[ctor::ctor(unsafe)]
fn load_time_hook() {
    init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_rejects_garbage() {
        let cfg = WorkerConfig { fd: 7, control: 4096, index: 3, parent: 42, key: 0xdead_beef };
        assert_eq!(WorkerConfig::decode(&cfg.encode()), Some(cfg));
        assert_eq!(WorkerConfig::decode("2:7:4096:3:42:00"), None);
        assert_eq!(WorkerConfig::decode("1:7:4096:3:42"), None);
        assert_eq!(WorkerConfig::decode("1:x:4096:3:42:00"), None);
    }
}
