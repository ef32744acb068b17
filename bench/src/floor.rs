//! The raw floors: what the hardware allows between two processes, measured
//! in the same run as everything else.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{measure_cpu, median, progress, time_ops, BoxResult, Latency};

/// The floors of one run.
pub struct Floor {
    /// A bare cache-line ping-pong between two processes (both spinning on
    /// one shared line): the round trip no transport can beat.
    pub round_trip: Latency,
    /// One `memcpy` of each size in this process: (bytes, median time).
    pub memcpy: Vec<(usize, Duration)>,
}

impl Floor {
    /// The median time of one memcpy of `bytes`, when measured.
    pub fn memcpy_of(&self, bytes: usize) -> Option<Duration> {
        self.memcpy.iter().find(|(b, _)| *b == bytes).map(|(_, d)| *d)
    }
}

/// Measures the floors: the ping-pong round trip and one memcpy of each of
/// `sizes`.
pub fn measure(iterations: usize, sizes: &[usize]) -> BoxResult<Floor> {
    progress("floor: cache-line ping-pong between two processes");
    // The best of three runs: the floor is what the hardware allows, and one
    // run can land while the other core is taken (seen here: 120 ns in one
    // run, 760 ns in another).
    let mut round_trip = ping_pong(iterations / 3)?;
    for _ in 0..2 {
        let again = ping_pong(iterations / 3)?;
        if again.p50 < round_trip.p50 {
            round_trip = again;
        }
    }
    progress("floor: memcpy");
    let memcpy = sizes.iter().map(|&bytes| (bytes, memcpy_time(bytes))).collect();
    Ok(Floor { round_trip, memcpy })
}

/// The word the two processes bounce: the parent writes odd numbers, the
/// child answers with the next even one; [`STOP`] ends the child.
const STOP: u64 = u64::MAX;

/// A shared anonymous page, unmapped on drop.
struct SharedPage(*mut libc::c_void);

const PAGE: usize = 4096;

impl SharedPage {
    fn new() -> io::Result<SharedPage> {
        // SAFETY: an anonymous shared mapping of one page at an address the
        // kernel chooses; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedPage(ptr))
    }

    fn word(&self) -> &AtomicU64 {
        // SAFETY: the page is mapped, zero-filled, page-aligned (so aligned
        // for an AtomicU64) and lives as long as `self`.
        unsafe { &*self.0.cast::<AtomicU64>() }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the page mapped in `new`; no reference to it
        // outlives `self`.
        unsafe { libc::munmap(self.0, PAGE) };
    }
}

/// Spins until `word` holds `want`; gives up (false) after `limit`.
fn spin_until(word: &AtomicU64, want: u64, limit: Duration) -> bool {
    let start = Instant::now();
    let mut spins = 0u32;
    while word.load(Ordering::Acquire) != want {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins % 4096 == 0 && start.elapsed() > limit {
            return false;
        }
    }
    true
}

/// Round trips of one cache line between this process and a forked child,
/// both spinning: no system call, no scheduler, no framing.
fn ping_pong(iterations: usize) -> BoxResult<Latency> {
    let page = SharedPage::new()?;
    let word = page.word();
    // SAFETY: fork in a process whose other threads (if any) hold no lock the
    // child needs: the child only spins on the shared page, reads the clock
    // (vDSO) and calls _exit, all async-signal-safe in practice.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error().into());
    }
    if child == 0 {
        let mut expect = 1;
        loop {
            // Answer or, if the parent stops answering for 10 s, leave.
            let start = Instant::now();
            loop {
                let seen = word.load(Ordering::Acquire);
                if seen == STOP {
                    // SAFETY: ends the forked child without running the
                    // parent's atexit handlers or destructors.
                    unsafe { libc::_exit(0) };
                }
                if seen == expect {
                    break;
                }
                std::hint::spin_loop();
                if start.elapsed() > Duration::from_secs(10) {
                    // SAFETY: as above.
                    unsafe { libc::_exit(1) };
                }
            }
            word.store(expect + 1, Ordering::Release);
            expect += 2;
        }
    }
    let mut next = 1u64;
    let result = (|| {
        let mut round_trip = |_| -> BoxResult<()> {
            word.store(next, Ordering::Release);
            if !spin_until(word, next + 1, Duration::from_secs(10)) {
                return Err("the ping-pong child stopped answering".into());
            }
            next += 2;
            Ok(())
        };
        let (histogram, cpu) =
            measure_cpu(&[0, child as u32], || time_ops(iterations / 10, iterations, None, &mut round_trip));
        Ok(Latency::from_histogram("floor: cache-line ping-pong between 2 processes (both spin)", &histogram?)
            .with_cpu(cpu, iterations + iterations / 10))
    })();
    word.store(STOP, Ordering::Release);
    let mut status = 0;
    // SAFETY: waits for our own child, with a valid status pointer.
    unsafe { libc::waitpid(child, &mut status, 0) };
    result
}

/// The median time of one memcpy of `bytes` in this process, between two
/// buffers that are already faulted in.
fn memcpy_time(bytes: usize) -> Duration {
    let source = vec![0x5Au8; bytes];
    // The target starts half a page away from the source, modulo the page:
    // a copy whose source and target lie a few bytes apart modulo 4 KiB can
    // run several times slower on some CPUs (seen here: 4 KiB at 2.9 GB/s),
    // an accident of where malloc put two buffers, not the floor.
    let mut backing = vec![0u8; bytes + 4096];
    let distance = (backing.as_ptr() as usize).wrapping_sub(source.as_ptr() as usize) % 4096;
    let offset = (2048 + 4096 - distance) % 4096;
    let target = &mut backing[offset..offset + bytes];
    // Small copies are timed a thousand at a time: the clock costs more.
    let (runs, per_sample) = match bytes {
        b if b >= 256 << 20 => (3, 1),
        b if b >= 1 << 20 => (50, 1),
        _ => (100, 1000),
    };
    target.copy_from_slice(&source);
    let times = (0..runs)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_sample {
                target.copy_from_slice(std::hint::black_box(&source));
                std::hint::black_box(&mut *target);
            }
            start.elapsed() / per_sample
        })
        .collect();
    median(times)
}
