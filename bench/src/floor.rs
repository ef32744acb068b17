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
    let _pin = crate::affinity::ParentPin::new();
    // The best of three runs: the floor is what the hardware allows, and one
    // run can land while the other core is taken (seen here: 120 ns in one
    // run, 760 ns in another).
    let mut round_trip = ping_pong(iterations / 3, None, None)?;
    for _ in 0..2 {
        let again = ping_pong(iterations / 3, None, None)?;
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

/// What the child answers when the byte it read is not [`READ_FILL`].
const BAD_READ: u64 = u64::MAX - 1;

/// The byte the buffer of a reading ping-pong must start with.
pub const READ_FILL: u8 = 0xA5;

/// The floor of a zero-copy hand-off of `bytes` (a buffer in shared memory,
/// already filled with [`READ_FILL`]): the cache-line ping-pong, the child
/// reading the buffer's first byte through its own view of the same mapping
/// before it answers. At most `iterations` round trips, stopping once they
/// took `budget`; the parent on the parent's core (the caller pins it), the
/// child on the child's.
pub fn zero_copy_floor(bytes: &[u8], iterations: usize, budget: Duration) -> BoxResult<Latency> {
    ping_pong(iterations, Some(bytes), Some(budget))
}

/// The floor of a copy of `source` out of its buffer: the median of one
/// memcpy into a private, already faulted-in target, `samples` of them (at
/// least 1) or fewer once `budget` is spent (3 at least).
pub fn copy_floor(source: &[u8], samples: usize, budget: Duration) -> Latency {
    let mut target = vec![0u8; source.len()];
    target.copy_from_slice(source);
    let mut histogram = crate::common::histogram();
    let mut spent = Duration::ZERO;
    for i in 0..samples.max(1) {
        if i >= 3 && spent > budget {
            break;
        }
        let start = Instant::now();
        target.copy_from_slice(std::hint::black_box(source));
        std::hint::black_box(&mut target);
        let took = start.elapsed();
        spent += took;
        crate::common::record(&mut histogram, took);
    }
    Latency::from_histogram("copy floor: one memcpy out of the buffer", &histogram)
}

/// Round trips of one cache line between this process and a forked child,
/// both spinning: no system call, no scheduler, no framing. With `read`, the
/// child reads its first byte before each answer (and stops the run with
/// [`BAD_READ`] if it is not [`READ_FILL`]).
fn ping_pong(iterations: usize, read: Option<&[u8]>, budget: Option<Duration>) -> BoxResult<Latency> {
    let read = read.filter(|bytes| !bytes.is_empty()).map(|bytes| bytes.as_ptr());
    let child_core = crate::affinity::pair().1;
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
        // Failure leaves the child where the scheduler put it: the parent's
        // figures stay valid, only less steady.
        let _ = crate::affinity::pin_thread(0, child_core);
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
            if let Some(first) = read {
                // SAFETY: `first` points at the first byte of a buffer the
                // parent keeps mapped (MAP_SHARED, inherited by fork) for as
                // long as this child runs: the parent waits for it before
                // returning. A volatile read: the byte is read every time.
                let byte = unsafe { std::ptr::read_volatile(first) };
                if byte != READ_FILL {
                    word.store(BAD_READ, Ordering::Release);
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
                if word.load(Ordering::Acquire) == BAD_READ {
                    return Err("the ping-pong child read a wrong byte from the buffer".into());
                }
                return Err("the ping-pong child stopped answering".into());
            }
            next += 2;
            Ok(())
        };
        time_ops(iterations / 10, 0, None, &mut round_trip)?;
        let (histogram, cpu) = measure_cpu(&[0, child as u32], || time_ops(0, iterations, budget, &mut round_trip));
        let histogram = histogram?;
        let name = if read.is_some() {
            "zero-copy floor: cache-line ping-pong, the child reads 1 byte of the buffer (both spin)"
        } else {
            "floor: cache-line ping-pong between 2 processes (both spin)"
        };
        Ok(Latency::from_histogram(name, &histogram).with_cpu(cpu, histogram.len() as usize))
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
