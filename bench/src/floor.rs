//! The raw floors: what the hardware allows between two processes, measured
//! in the same run as everything else.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{measure_cpu, progress, time_ops, BoxResult, Latency};

/// The run-wide floor (of the latency table; the other sections measure
/// theirs beside their rows).
pub struct Floor {
    /// A bare cache-line ping-pong between two processes (both spinning on
    /// one shared line): the round trip no transport can beat.
    pub round_trip: Latency,
}

/// Measures the run-wide floor: the bare ping-pong round trip.
pub fn measure(iterations: usize) -> BoxResult<Floor> {
    progress("floor: cache-line ping-pong between two processes");
    let _pin = crate::affinity::ParentPin::new();
    // The best of three runs: the floor is what the hardware allows, and one
    // run can land while the other core is taken (seen here: 120 ns in one
    // run, 760 ns in another).
    let name = "floor: cache-line ping-pong between 2 processes (both spin)";
    let bare = || ping_pong(&SharedMap::new(PAGE)?, iterations / 3, Work::None, None, name);
    let mut round_trip = bare()?;
    for _ in 0..2 {
        let again = bare()?;
        if again.p50 < round_trip.p50 {
            round_trip = again;
        }
    }
    Ok(Floor { round_trip })
}

/// The word the two processes bounce: the parent writes odd numbers, the
/// child answers with the next even one; [`STOP`] ends the child.
const STOP: u64 = u64::MAX;

/// A shared anonymous mapping (whole pages, zero-filled), unmapped on drop.
/// Its first word is the ping-pong's; the buffers of a copying ping-pong
/// follow it.
struct SharedMap {
    ptr: *mut libc::c_void,
    len: usize,
}

const PAGE: usize = 4096;

impl SharedMap {
    fn new(bytes: usize) -> io::Result<SharedMap> {
        let len = bytes.max(1).next_multiple_of(PAGE);
        // SAFETY: an anonymous shared mapping of `len` bytes at an address
        // the kernel chooses; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMap { ptr, len })
    }

    fn word(&self) -> &AtomicU64 {
        // SAFETY: the mapping is at least a page, zero-filled, page-aligned
        // (so aligned for an AtomicU64) and lives as long as `self`.
        unsafe { &*self.ptr.cast::<AtomicU64>() }
    }

    /// The address `offset` bytes in (at most the mapping's length).
    fn at(&self, offset: usize) -> *mut u8 {
        assert!(offset <= self.len, "offset {offset} beyond a mapping of {} bytes", self.len);
        // SAFETY: in bounds of the mapping (asserted).
        unsafe { self.ptr.cast::<u8>().add(offset) }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no reference to it
        // outlives `self`.
        unsafe { libc::munmap(self.ptr, self.len) };
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
    let work = match bytes.first() {
        Some(first) => Work::ReadFirst(first),
        None => Work::None,
    };
    let name = "zero-copy floor: cache-line ping-pong, the child reads 1 byte of the buffer (both spin)";
    ping_pong(&SharedMap::new(PAGE)?, iterations, work, Some(budget), name)
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

/// The name of [`one_way_floor`]'s row.
pub const ONE_WAY_FLOOR: &str = "floor: the rows' work alone, both spin";

/// The one-way floor of messages like `template` (at least 8 bytes), as
/// the one-way rows pass them: half a round trip of the ping-pong in which
/// each side copies the message from its private template into a buffer of
/// its own in shared memory, stamps its first and last 8 bytes, and flips
/// the line; the other side checks both stamps and the middle byte where
/// they lie before it answers. No framing, no allocator, no waiting but the
/// spin. Each buffer starts half a page away from the template, modulo the
/// page: a copy whose source and target lie a few bytes apart modulo 4 KiB
/// can run several times slower on some CPUs (seen here: 4 KiB at 2.9
/// GB/s), an accident of placement, not the floor. At most
/// `iterations` round trips, stopping once they took `budget`; the parent
/// on the parent's core (the caller pins it), the child on the child's.
pub fn one_way_floor(template: &[u8], iterations: usize, budget: Duration) -> BoxResult<Latency> {
    let bytes = template.len();
    if bytes < 8 {
        return Err(format!("a one-way floor of {bytes} bytes: messages are stamped, 8 bytes at least").into());
    }
    let region = bytes.next_multiple_of(PAGE) + PAGE;
    let map = SharedMap::new(PAGE + 2 * region)?;
    let offset = (template.as_ptr() as usize + PAGE / 2) % PAGE;
    let work = Work::Copy {
        template: template.as_ptr(),
        bytes,
        out: map.at(PAGE + offset),
        back: map.at(PAGE + region + offset),
    };
    let latency = ping_pong(&map, iterations, work, Some(budget), ONE_WAY_FLOOR)?;
    Ok(latency.halved())
}

/// What the two sides of a ping-pong do besides flipping the word.
#[derive(Clone, Copy)]
enum Work {
    /// Nothing: the bare cache-line round trip.
    None,
    /// The child reads this byte (the first of a buffer) before it answers.
    ReadFirst(*const u8),
    /// Messages of `bytes` from `template`: the parent writes its message
    /// at `out`, the child checks it there and writes its answer at `back`,
    /// which the parent checks (see [`one_way_floor`]).
    Copy { template: *const u8, bytes: usize, out: *mut u8, back: *mut u8 },
}

/// Copies the message of `bytes` at `template` to `to` and stamps its first
/// and last 8 bytes with `seq`.
///
/// # Safety
///
/// - `template` is valid for reads and `to` for writes of `bytes` (>= 8)
///   bytes, and they do not overlap.
unsafe fn write_message(template: *const u8, to: *mut u8, bytes: usize, seq: u64) {
    // SAFETY: both ranges are valid and apart (the caller's bullet).
    unsafe {
        std::ptr::copy_nonoverlapping(template, to, bytes);
        to.cast::<[u8; 8]>().write_unaligned(seq.to_le_bytes());
        to.add(bytes - 8).cast::<[u8; 8]>().write_unaligned(seq.to_le_bytes());
    }
}

/// Whether the message at `at` is `seq`'s: both stamps say `seq` and the
/// middle byte is the template's.
///
/// # Safety
///
/// - `template` and `at` are valid for reads of `bytes` (>= 8) bytes.
unsafe fn is_message(template: *const u8, at: *const u8, bytes: usize, seq: u64) -> bool {
    // SAFETY: every read is within the `bytes` both are valid for.
    unsafe {
        let head = u64::from_le_bytes(at.cast::<[u8; 8]>().read_unaligned());
        let tail = u64::from_le_bytes(at.add(bytes - 8).cast::<[u8; 8]>().read_unaligned());
        let mid = bytes / 2;
        head == seq && tail == seq && (bytes < 24 || *at.add(mid) == *template.add(mid))
    }
}

/// Round trips of one cache line (the first word of `map`) between this
/// process and a forked child, both spinning: no system call, no scheduler,
/// no framing; each side does its part of `work` per round trip (the child
/// stops the run with [`BAD_READ`] when what it reads is wrong).
fn ping_pong(
    map: &SharedMap,
    iterations: usize,
    work: Work,
    budget: Option<Duration>,
    name: &str,
) -> BoxResult<Latency> {
    let child_core = crate::affinity::pair().1;
    let word = map.word();
    // SAFETY: fork in a process whose other threads (if any) hold no lock the
    // child needs: the child only spins on the shared mapping, copies and
    // reads bytes, reads the clock (vDSO) and calls _exit, all
    // async-signal-safe in practice.
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
            let good = match work {
                Work::None => true,
                // SAFETY: `first` points at the first byte of a buffer the
                // parent keeps mapped (MAP_SHARED, inherited by fork) for as
                // long as this child runs: the parent waits for it before
                // returning. A volatile read: the byte is read every time.
                Work::ReadFirst(first) => (unsafe { std::ptr::read_volatile(first) }) == READ_FILL,
                // SAFETY: `out` and `back` are buffers of `bytes` in the
                // shared mapping, which the parent keeps (as above); the
                // template is this child's copy of the parent's (fork). The
                // parent wrote `out` before its Release store of `expect`,
                // which our Acquire load saw, and does not touch `back` until
                // our store below.
                Work::Copy { template, bytes, out, back } => unsafe {
                    let good = is_message(template, out, bytes, expect);
                    write_message(template, back, bytes, expect + 1);
                    good
                },
            };
            if !good {
                word.store(BAD_READ, Ordering::Release);
                // SAFETY: as above.
                unsafe { libc::_exit(1) };
            }
            word.store(expect + 1, Ordering::Release);
            expect += 2;
        }
    }
    let mut next = 1u64;
    let result = (|| {
        let mut round_trip = |_| -> BoxResult<()> {
            if let Work::Copy { template, bytes, out, .. } = work {
                // SAFETY: the child reads `out` only after our store below,
                // and is done with it before it answers; see `one_way_floor`
                // for the buffers.
                unsafe { write_message(template, out, bytes, next) };
            }
            word.store(next, Ordering::Release);
            if !spin_until(word, next + 1, Duration::from_secs(10)) {
                if word.load(Ordering::Acquire) == BAD_READ {
                    return Err("the ping-pong child read a wrong byte from the buffer".into());
                }
                return Err("the ping-pong child stopped answering".into());
            }
            if let Work::Copy { template, bytes, back, .. } = work {
                // SAFETY: the child wrote `back` before its Release store,
                // which our Acquire spin saw; it waits for our next store.
                if !unsafe { is_message(template, back, bytes, next + 1) } {
                    return Err("the ping-pong child's message was wrong".into());
                }
            }
            next += 2;
            Ok(())
        };
        time_ops(iterations / 10, 0, None, &mut round_trip)?;
        let (histogram, cpu) = measure_cpu(&[0, child as u32], || time_ops(0, iterations, budget, &mut round_trip));
        let histogram = histogram?;
        Ok(Latency::from_histogram(name, &histogram).with_cpu(cpu, histogram.len() as usize))
    })();
    word.store(STOP, Ordering::Release);
    let mut status = 0;
    // SAFETY: waits for our own child, with a valid status pointer.
    unsafe { libc::waitpid(child, &mut status, 0) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copying ping-pong checks every message at both ends: a run of
    /// every size class completes with all its samples.
    #[test]
    fn one_way_floor_passes_checked_messages_of_every_size() {
        for bytes in [8, 24, 4096, 1 << 20] {
            let template: Vec<u8> = (0..bytes).map(|i| (i * 31 + 7) as u8).collect();
            let latency = one_way_floor(&template, 50, Duration::from_secs(5)).expect("the floor runs");
            assert_eq!(latency.samples, 50, "{bytes} bytes");
        }
        assert!(one_way_floor(&[0; 7], 10, Duration::from_secs(1)).is_err());
    }
}
