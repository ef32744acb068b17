//! Processes: re-executing the current binary as a worker, signals, liveness.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};

/// The id of the calling process (cached: locks ask for it on every
/// acquisition, and `getpid` is a system call). Inlined: the cached value is
/// one relaxed load.
#[inline]
pub fn current_pid() -> u32 {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        pid
    } else {
        current_pid_slow()
    }
}

static PID: AtomicU32 = AtomicU32::new(0);

#[cold]
fn current_pid_slow() -> u32 {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        extern "C" fn forget_pid() {
            PID.store(0, Ordering::Relaxed);
        }
        // A child made by fork() has another pid: forget the cached one there.
        // SAFETY: registers a handler that only stores to an atomic, which is
        // async-signal-safe, as handlers run in the child after fork must be.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) };
    });
    let pid = std::process::id();
    PID.store(pid, Ordering::Relaxed);
    pid
}

/// The id of the calling process's parent (1, or a subreaper, once it died).
pub fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// Starts a new copy of the running executable (`/proc/self/exe`) with the
/// extra environment `env`, keeping descriptor `keep_fd` open across `exec`.
///
/// The child is the same binary, so function addresses taken relative to an
/// anchor in this image mean the same functions there.
pub fn spawn_self(env: &[(&str, String)], keep_fd: RawFd) -> io::Result<Child> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(worker_arg0());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: the closure runs between fork and exec and calls only fcntl,
    // which is async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || crate::sys::shm::set_cloexec(keep_fd, false));
    }
    cmd.spawn()
}

fn worker_arg0() -> String {
    let exe = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&exe)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "shmpool".into());
    format!("{name} [shmpool worker]")
}

/// Whether process `pid` is alive: it exists and is not a zombie (a process
/// that died but was not yet reaped by its parent holds nothing any more).
pub fn is_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission check.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if r != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    // The state is the first field after the parenthesised command name.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z") | Some("X") | Some("x")
        ),
        // Gone between the two checks, or no procfs: trust kill().
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// Sends `SIGKILL` to `pid`.
pub fn kill(pid: u32) -> io::Result<()> {
    if pid == 0 || pid > i32::MAX as u32 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a process id"));
    }
    // SAFETY: kill takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ends the calling process at once with `code`, running no destructors and
/// no `atexit` handlers (used by workers, whose state belongs to the parent).
pub fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pids of the processes that map the file at `path` (from /proc/*/maps).
pub fn pids_mapping(path: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|maps| maps.lines().any(|l| l.ends_with(path) || l.contains(&format!("{path} "))))
        })
        .collect()
}
