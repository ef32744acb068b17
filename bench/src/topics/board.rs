//! The control board of a topics row: a small file in /dev/shm that the
//! parent and every child map, outside the transport being measured. The
//! children count what they finished on one futex word and the parent sleeps
//! on it (it never spins: on 2 cores it shares a core with a subscriber),
//! and each child leaves its figures (a count, its latency samples) in its
//! own area.
//!
//! Layout, in 64-bit words: word 0 is the acknowledgement counter (its low
//! 32 bits the futex word); then per child `AREA_HEADER` words (its count,
//! its number of samples) and `capacity` sample words.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::BoxResult;

const AREA_HEADER: usize = 2;
/// How long the parent sleeps at most between looks at its children.
const SLICE: Duration = Duration::from_millis(50);

/// One mapping of a board.
pub struct Board {
    ptr: *mut AtomicU64,
    words: usize,
    capacity: usize,
    /// The creator removes the file when it drops the board.
    path: Option<PathBuf>,
}

impl Board {
    fn words_for(children: usize, capacity: usize) -> usize {
        1 + children * (AREA_HEADER + capacity)
    }

    /// Creates the board `name` for `children` children of `capacity`
    /// samples each.
    pub fn create(name: &str, children: usize, capacity: usize) -> BoxResult<Board> {
        let path = PathBuf::from(format!("/dev/shm/{name}"));
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        let words = Board::words_for(children, capacity);
        file.set_len((words * 8) as u64)?;
        let mut board = Board::map(&file, words, capacity)?;
        board.path = Some(path);
        Ok(board)
    }

    /// Opens the board `name` a parent created with the same shape.
    pub fn open(name: &str, children: usize, capacity: usize) -> BoxResult<Board> {
        let file = OpenOptions::new().read(true).write(true).open(format!("/dev/shm/{name}"))?;
        Board::map(&file, Board::words_for(children, capacity), capacity)
    }

    fn map(file: &File, words: usize, capacity: usize) -> BoxResult<Board> {
        use std::os::fd::AsRawFd;
        // SAFETY: maps `words * 8` bytes of a file that long, shared, at an
        // address the kernel picks; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                words * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Board { ptr: ptr.cast(), words, capacity, path: None })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.words, "board word {i} out of {}", self.words);
        // SAFETY: in bounds (asserted) of a live, page-aligned mapping;
        // every access to the shared words goes through atomics.
        unsafe { &*self.ptr.add(i) }
    }

    fn futex(&self) -> &AtomicU32 {
        // SAFETY: the low half of word 0 (little-endian, 8-aligned), only
        // ever accessed as this atomic.
        unsafe { &*self.ptr.cast::<AtomicU32>() }
    }

    fn area(&self, child: usize) -> usize {
        1 + child * (AREA_HEADER + self.capacity)
    }

    /// A child says it finished a step; the last of `children` to do so
    /// wakes the parent.
    pub fn ack(&self, children: usize) {
        // SYNC: Release: what the child wrote in its area before is seen by
        // the parent's Acquire load of the counter.
        let now = self.futex().fetch_add(1, Ordering::Release) + 1;
        if now as usize % children.max(1) == 0 {
            // SAFETY: FUTEX_WAKE on a word of a shared mapping.
            unsafe { libc::syscall(libc::SYS_futex, self.futex().as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
        }
    }

    /// Acknowledgements so far.
    pub fn acks(&self) -> u32 {
        self.futex().load(Ordering::Acquire)
    }

    /// Sleeps until the counter reaches `target`; between sleeps calls
    /// `check` (are the children alive?) and fails after `timeout`.
    pub fn wait(&self, target: u32, timeout: Duration, mut check: impl FnMut() -> BoxResult<()>) -> BoxResult<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.acks();
            if now >= target {
                return Ok(());
            }
            let slice = libc::timespec { tv_sec: 0, tv_nsec: SLICE.as_nanos() as libc::c_long };
            // SAFETY: FUTEX_WAIT on a word of a shared mapping with a valid
            // relative timeout; it returns at once if the word moved.
            unsafe { libc::syscall(libc::SYS_futex, self.futex().as_ptr(), libc::FUTEX_WAIT, now, &slice) };
            if self.acks() < target {
                check()?;
                if Instant::now() > deadline {
                    return Err(
                        format!("children acknowledged {} of {target} steps in {timeout:?}", self.acks()).into()
                    );
                }
            }
        }
    }

    /// Child `child`'s count (messages received).
    pub fn set_count(&self, child: usize, count: u64) {
        self.word(self.area(child)).store(count, Ordering::Relaxed);
    }

    pub fn count(&self, child: usize) -> u64 {
        self.word(self.area(child)).load(Ordering::Relaxed)
    }

    /// Child `child`'s latency samples, in nanoseconds (at most `capacity`).
    pub fn put_samples(&self, child: usize, samples: &[u64]) {
        let base = self.area(child) + AREA_HEADER;
        let n = samples.len().min(self.capacity);
        for (k, &s) in samples[..n].iter().enumerate() {
            self.word(base + k).store(s, Ordering::Relaxed);
        }
        self.word(self.area(child) + 1).store(n as u64, Ordering::Relaxed);
    }

    pub fn samples(&self, child: usize) -> Vec<u64> {
        let base = self.area(child) + AREA_HEADER;
        let n = (self.word(self.area(child) + 1).load(Ordering::Relaxed) as usize).min(self.capacity);
        (0..n).map(|k| self.word(base + k).load(Ordering::Relaxed)).collect()
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` made; no reference into
        // it outlives `self` (all are borrows of it).
        unsafe { libc::munmap(self.ptr.cast(), self.words * 8) };
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process, so a
/// stamp taken by the publisher can be read against the subscriber's.
pub fn mono_nanos() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_board_carries_counts_samples_and_acks_between_mappings() {
        let name = format!("shmpool-bench-board-test-{}", std::process::id());
        let parent = Board::create(&name, 2, 4).expect("created");
        let child = Board::open(&name, 2, 4).expect("opened");
        child.set_count(1, 7);
        child.put_samples(1, &[1, 2, 3, 4, 5]);
        child.ack(2);
        child.ack(2);
        parent.wait(2, Duration::from_secs(1), || Ok(())).expect("two acks");
        assert_eq!((parent.count(1), parent.samples(1), parent.samples(0)), (7, vec![1, 2, 3, 4], vec![]));
        assert!(parent.wait(3, Duration::from_millis(60), || Ok(())).is_err());
        drop(child);
        drop(parent);
        assert!(!std::path::Path::new(&format!("/dev/shm/{name}")).exists());
        let (a, b) = (mono_nanos(), mono_nanos());
        assert!(b >= a);
    }
}
