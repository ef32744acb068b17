//! A reader-writer lock in shared memory whose holders are known by pid, so
//! that a dead writer or reader is noticed and its hold cleared.
//!
//! POSIX has no robust rwlock, hence this one: a writer word holding the
//! writer's pid, and a table of reader slots holding each reader's pid.

use crate::primitive::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::event::{AdaptiveSpin, Event, SpinPolicy};
use super::os;

/// How many readers may hold the lock at once (threads or processes).
pub const READER_SLOTS: usize = 32;
/// How often a waiter checks that the holders it waits for are alive.
const LIVENESS_CHECK: Duration = Duration::from_millis(20);

/// A process-shared reader-writer lock, writer-preferring.
///
/// | field            | meaning                                               |
/// |------------------|-------------------------------------------------------|
/// | `writer == 0`    | no writer holds or is draining readers                |
/// | `writer == pid`  | process `pid` holds it, or waits for readers to leave |
/// | `readers[i]==0`  | slot free                                             |
/// | `readers[i]==pid`| a reader in process `pid` holds slot `i`              |
///
/// SYNC: a reader claims a slot and then reads `writer`; a writer claims
/// `writer` and then reads the slots; a SeqCst fence sits between each
/// claim and read, so at least one of them sees the other (Dekker), and a
/// reader that sees a writer backs off.
/// Every release notifies `event` (after the release is stored), so
/// sleepers re-check.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RawRwLock {
    writer: AtomicU32,
    _pad: u32,
    event: Event,
    readers: [AtomicU32; READER_SLOTS],
}

// SAFETY: `#[repr(C)]`, atomics only; every bit pattern is valid.
unsafe impl crate::segment::ShmSafe for RawRwLock {}

/// Why an acquisition failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RwFailure {
    /// The deadline passed while `holder` (a writer, or some reader) held it.
    Timeout {
        /// The writer, or some reader, that held it.
        holder: Option<u32>,
    },
}

impl RawRwLock {
    /// Tries to take a read hold now; returns the slot on success.
    pub fn try_read(&self) -> Option<usize> {
        let me = os::current_pid();
        if self.writer.load(Ordering::SeqCst) != 0 {
            return None;
        }
        let slot = self.claim_slot(me)?;
        // SYNC: Dekker with the writer's fence in `write`/`try_write`: either
        // we see its claim, or it sees our slot.
        fence(Ordering::SeqCst);
        if self.writer.load(Ordering::SeqCst) == 0 {
            return Some(slot);
        }
        self.readers[slot].store(0, Ordering::SeqCst);
        self.event.notify();
        None
    }

    /// Takes a read hold, waiting until `deadline`. Returns the slot and the
    /// pid of a writer that died holding the lock, if one was cleared.
    pub fn read(&self, deadline: Option<Instant>, spin: &AdaptiveSpin) -> Result<(usize, Option<u32>), RwFailure> {
        let mut died = None;
        let mut waited = false;
        loop {
            if let Some(slot) = self.try_read() {
                return Ok((slot, died));
            }
            let writer = self.writer.load(Ordering::SeqCst);
            // Liveness is checked only after a wait (an interval long), not
            // on every contended pass: it costs a system call and a file read.
            if waited && writer != 0 && !os::is_alive(writer) {
                if self.writer.compare_exchange(writer, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    died = Some(writer);
                    self.event.notify();
                }
                continue;
            }
            self.wait(deadline, spin, || self.writer.load(Ordering::SeqCst) == 0 && self.has_free_slot())
                .map_err(|()| RwFailure::Timeout { holder: Some(writer).filter(|&w| w != 0) })?;
            waited = true;
        }
    }

    /// Releases the read hold in `slot`.
    pub fn unlock_read(&self, slot: usize) {
        if let Some(s) = self.readers.get(slot) {
            s.store(0, Ordering::Release);
        }
        self.event.notify();
    }

    /// Tries to take the write hold now.
    pub fn try_write(&self) -> bool {
        let me = os::current_pid();
        if self.writer.compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return false;
        }
        // SYNC: pairs with the reader's fence in `try_read`.
        fence(Ordering::SeqCst);
        if self.readers.iter().all(|r| r.load(Ordering::SeqCst) == 0) {
            return true;
        }
        self.writer.store(0, Ordering::SeqCst);
        self.event.notify();
        false
    }

    /// Takes the write hold, waiting until `deadline`. Returns the pid of a
    /// writer that died holding the lock, if one was cleared.
    pub fn write(&self, deadline: Option<Instant>, spin: &AdaptiveSpin) -> Result<Option<u32>, RwFailure> {
        let me = os::current_pid();
        let mut died = None;
        // 1. Become the writer. (Liveness only after a wait, as in `read`.)
        let mut waited = false;
        loop {
            match self.writer.compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(w) if waited && !os::is_alive(w) => {
                    if self.writer.compare_exchange(w, me, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                        died = Some(w);
                        break;
                    }
                }
                Err(w) => {
                    self.wait(deadline, spin, || self.writer.load(Ordering::SeqCst) == 0)
                        .map_err(|()| RwFailure::Timeout { holder: Some(w) })?;
                    waited = true;
                }
            }
        }
        // 2. Wait for the readers to leave; new ones see us and back off.
        // SYNC: pairs with the reader's fence in `try_read`.
        fence(Ordering::SeqCst);
        let mut waited = false;
        loop {
            let mut holder = None;
            for r in &self.readers {
                let pid = r.load(Ordering::SeqCst);
                if pid != 0 {
                    if !waited || os::is_alive(pid) {
                        holder = Some(pid);
                    } else {
                        // A reader died holding its slot: it wrote nothing, just free it.
                        let _ = r.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst);
                    }
                }
            }
            if holder.is_none() {
                return Ok(died);
            }
            let drained = || self.readers.iter().all(|r| r.load(Ordering::SeqCst) == 0);
            if self.wait(deadline, spin, drained).is_err() {
                self.writer.store(0, Ordering::SeqCst);
                self.event.notify();
                return Err(RwFailure::Timeout { holder });
            }
            waited = true;
        }
    }

    /// Releases the write hold.
    pub fn unlock_write(&self) {
        self.writer.store(0, Ordering::Release);
        self.event.notify();
    }

    /// The writer's pid, if a writer holds or is acquiring the lock.
    pub fn writer(&self) -> Option<u32> {
        Some(self.writer.load(Ordering::Relaxed)).filter(|&w| w != 0)
    }

    /// Pids of the current readers.
    pub fn readers(&self) -> Vec<u32> {
        self.readers.iter().map(|r| r.load(Ordering::Relaxed)).filter(|&p| p != 0).collect()
    }

    fn claim_slot(&self, me: u32) -> Option<usize> {
        // Start at a pid-dependent slot so processes spread over the table.
        let start = me as usize % READER_SLOTS;
        (0..READER_SLOTS)
            .map(|i| (start + i) % READER_SLOTS)
            .find(|&i| self.readers[i].compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed).is_ok())
    }

    fn has_free_slot(&self) -> bool {
        self.readers.iter().any(|r| r.load(Ordering::Relaxed) == 0)
    }

    /// Sleeps until `ready()`, the deadline (`Err`), or the next liveness check.
    fn wait(&self, deadline: Option<Instant>, spin: &AdaptiveSpin, ready: impl FnMut() -> bool) -> Result<(), ()> {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(());
        }
        let check = now + LIVENESS_CHECK;
        let until = deadline.map_or(check, |d| d.min(check));
        self.event.wait_until(ready, Some(until), SpinPolicy::DEFAULT, spin);
        Ok(())
    }
}
