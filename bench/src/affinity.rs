//! Pinning: every row runs its two sides (parent and child, or a pool's
//! parent and workers) on one fixed pair of cores, and the floors too, so
//! that rows differ by what they measure, not by where the scheduler put
//! them. The pair is the first two cores this process may use (cores 0 and 1
//! on the 2-core CI machines); on a 1-core machine both sides share it.

use std::io;
use std::mem;

/// The fixed pair: (the parent's core, the child's core).
pub fn pair() -> (usize, usize) {
    let allowed = allowed_cores();
    let parent = allowed.first().copied().unwrap_or(0);
    let child = allowed.get(1).copied().unwrap_or(parent);
    (parent, child)
}

/// The core of worker or thread `index` of `n` working beside a parent that
/// mostly waits: a lone worker gets the child's core, so that it does not
/// share one with the parent; with two or more they alternate over the pair.
pub fn worker_core(index: usize, n: usize) -> usize {
    let (parent, child) = pair();
    match (n, index % 2) {
        (1, _) | (_, 1) => child,
        _ => parent,
    }
}

/// The cores the calling thread may run on (as first seen by this process:
/// pinning later does not narrow the pair).
fn allowed_cores() -> Vec<usize> {
    static ALLOWED: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    ALLOWED
        .get_or_init(|| {
            let mut set = empty_set();
            // SAFETY: sched_getaffinity writes at most `size_of::<cpu_set_t>()`
            // bytes into `set`, which is that large; 0 is the calling thread.
            let rc = unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) };
            if rc != 0 {
                return vec![0, 1];
            }
            // SAFETY: CPU_ISSET reads the set in bounds (i < CPU_SETSIZE).
            (0..libc::CPU_SETSIZE as usize).filter(|&i| unsafe { libc::CPU_ISSET(i, &set) }).collect()
        })
        .clone()
}

fn empty_set() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain bits; all-zero is the empty set.
    unsafe { mem::zeroed() }
}

fn set_of(core: usize) -> libc::cpu_set_t {
    let mut set = empty_set();
    // SAFETY: CPU_SET writes in bounds for core < CPU_SETSIZE, which
    // `allowed_cores` guarantees for every core handed out here.
    unsafe { libc::CPU_SET(core, &mut set) };
    set
}

/// Pins the thread `tid` (0: the calling thread) to `core`.
pub fn pin_thread(tid: i32, core: usize) -> io::Result<()> {
    let set = set_of(core);
    // SAFETY: passes a valid cpu_set_t of the size given; the kernel only
    // reads it.
    let rc = unsafe { libc::sched_setaffinity(tid, mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins every thread of process `pid` to `core` (threads it starts later
/// inherit the mask of the thread that starts them).
pub fn pin_process(pid: u32, core: usize) -> io::Result<()> {
    let mut pinned = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = entry?.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        // A thread may have exited since the listing: that is no failure.
        match pin_thread(tid, core) {
            Ok(()) => pinned += 1,
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {}
            Err(error) => return Err(error),
        }
    }
    if pinned == 0 {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("process {pid} has no thread to pin")));
    }
    Ok(())
}

/// Pins the calling thread to the parent's core until dropped, then gives
/// it back the mask it had. Children started meanwhile inherit the parent's
/// core: pin them with [`pin_process`].
pub struct ParentPin {
    previous: Option<libc::cpu_set_t>,
}

impl ParentPin {
    pub fn new() -> ParentPin {
        let mut previous = empty_set();
        // SAFETY: as in `allowed_cores`.
        let rc = unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut previous) };
        let pinned = pin_thread(0, pair().0).is_ok();
        ParentPin { previous: (rc == 0 && pinned).then_some(previous) }
    }
}

impl Drop for ParentPin {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            // SAFETY: as in `pin_thread`.
            unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), previous) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_is_two_allowed_cores_and_the_pin_is_undone() {
        let (parent, child) = pair();
        let allowed = allowed_cores();
        assert!(allowed.contains(&parent) && allowed.contains(&child));
        assert!(allowed.len() < 2 || parent != child);
        std::thread::spawn(move || {
            {
                let _pin = ParentPin::new();
                // SAFETY: sched_getcpu takes no arguments.
                let now = unsafe { libc::sched_getcpu() };
                assert_eq!(now as usize, parent);
            }
            let mut set = empty_set();
            // SAFETY: as in `allowed_cores`.
            unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) };
            // SAFETY: in bounds.
            let count = (0..libc::CPU_SETSIZE as usize).filter(|&i| unsafe { libc::CPU_ISSET(i, &set) }).count();
            assert_eq!(count, allowed.len());
        })
        .join()
        .expect("the pinned thread ran");
    }
}
