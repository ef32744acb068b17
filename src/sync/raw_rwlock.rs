//! A reader-writer lock in shared memory whose holders are known by pid, so
//! that a dead writer or reader is noticed and its hold cleared.
//!
//! POSIX has no robust rwlock, hence this one: a writer word holding the
//! writer's pid, and a table of reader slots holding each reader's pid.

#[cfg(loom)]
use crate::primitive::fence;
use crate::primitive::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::event::{AdaptiveSpin, Event, SpinPolicy};
use super::os;

/// How many readers may hold the lock at once (threads or processes).
pub const READER_SLOTS: usize = 32;

/// How often a waiter checks that the holders it waits for are alive. The
/// loom models have no deaths, and wait with no liveness deadline, so that a
/// lost wake-up there sleeps for ever and shows as a deadlock.
#[cfg(not(loom))]
const LIVENESS_CHECK: Option<Duration> = Some(Duration::from_millis(20));
#[cfg(loom)]
const LIVENESS_CHECK: Option<Duration> = None;

/// The store-load barrier of the two Dekker pairs (see [`RawRwLock`]) on the
/// side whose store is a SeqCst read-modify-write and whose load is SeqCst.
///
/// In the C++20 model that Rust uses, that pair is already ordered (both are
/// in the single total order S, in program order), and on x86 the locked
/// instruction is a full barrier: nothing to emit. Loom treats SeqCst
/// accesses as AcqRel (loom README, "Limitations"; tokio-rs/loom#180) and
/// supports only SeqCst fences, so its model spells the order out as one.
#[inline(always)]
fn rmw_load_order() {
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}

/// A process-shared reader-writer lock, writer-preferring.
///
/// | field             | meaning                                               |
/// |-------------------|-------------------------------------------------------|
/// | `writer == 0`     | no writer holds or is draining readers                |
/// | `writer == pid`   | process `pid` holds it, or waits for readers to leave |
/// | `readers[i] == 0` | slot free                                             |
/// | `readers[i] == pid` | a reader in process `pid` holds slot `i`            |
/// | `waiting == n`    | `n` waiters are in the contended path (spinning or asleep on `event`) |
///
/// The fast paths are one read-modify-write in and one out, as a pthread
/// rwlock's: a reader CASes its slot `0 -> pid` and loads `writer`; a writer
/// CASes `writer` `0 -> pid` and loads the slots; a release swaps its word
/// to `0` and loads `waiting`, and touches `event` only when that is nonzero.
///
/// SYNC, Dekker pair D1 (exclusion): a reader claims a slot (SeqCst CAS) and
/// then loads `writer` (SeqCst); a writer claims `writer` (SeqCst CAS) and
/// then loads the slots (SeqCst). Both claims and both loads are in the total
/// order S, so at least one side sees the other's claim; a reader that sees
/// a writer gives its slot back, a writer that sees a reader waits (or, in
/// `try_write`, gives `writer` back).
///
/// SYNC, Dekker pair D2 (no lost wake-up): a release swaps its word (SeqCst)
/// and then loads `waiting` (SeqCst); a waiter increments `waiting`, then
/// the SeqCst fence F2 of [`Event`]'s announce, then re-checks the words
/// before it sleeps. Either the release sees the waiter and notifies `event`
/// (whose own protocol then wakes it), or the waiter's re-check sees the
/// release.
///
/// SYNC, data: a release is a swap to `0` with (at least) Release; the
/// acquirer's load of that `0` (the reader's `writer` load, the writer's slot
/// loads and `writer` CAS) is SeqCst, hence Acquire: what the holder wrote
/// happens before what the next holder reads.
///
/// A waiter that dies leaves `waiting` too high: releases then notify `event`
/// (a fence and a load, a wake only if someone sleeps), as every release did
/// before this word existed. Nothing is lost.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RawRwLock {
    writer: AtomicU32,
    /// INVARIANT: at least the number of live waiters in `RawRwLock::wait`
    /// (each increments it before its re-check and decrements it after).
    waiting: AtomicU32,
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
    #[inline]
    pub fn try_read(&self) -> Option<usize> {
        // A writer holds or drains: do not take a slot (an early out only;
        // the load that decides is the one after the claim).
        if self.writer.load(Ordering::Relaxed) != 0 {
            return None;
        }
        let me = os::current_pid();
        // Start at a pid-dependent slot so processes spread over the table.
        let start = me as usize % READER_SLOTS;
        let slot = match self.readers[start].compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => start,
            Err(_) => self.claim_other_slot(me, start)?,
        };
        rmw_load_order();
        // SYNC: D1 (see the type's doc): after our SeqCst claim, so either we
        // see a writer's claim or it sees our slot. Reading `0` here is also
        // the Acquire of the last writer's release in `unlock_write`.
        if self.writer.load(Ordering::SeqCst) == 0 {
            return Some(slot);
        }
        self.release_word(&self.readers[slot]);
        None
    }

    /// Takes a read hold, waiting until `deadline`. Returns the slot and the
    /// pid of a writer that died holding the lock, if one was cleared.
    pub fn read(&self, deadline: Option<Instant>, spin: &AdaptiveSpin) -> Result<(usize, Option<u32>), RwFailure> {
        if let Some(slot) = self.try_read() {
            return Ok((slot, None));
        }
        self.read_contended(deadline, spin)
    }

    #[cold]
    #[inline(never)]
    fn read_contended(
        &self,
        deadline: Option<Instant>,
        spin: &AdaptiveSpin,
    ) -> Result<(usize, Option<u32>), RwFailure> {
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
                    self.notify_waiters();
                }
                continue;
            }
            self.wait(deadline, spin, || self.writer.load(Ordering::Relaxed) == 0 && self.has_free_slot())
                .map_err(|()| RwFailure::Timeout { holder: Some(writer).filter(|&w| w != 0) })?;
            waited = true;
        }
    }

    /// Releases the read hold in `slot`.
    #[inline]
    pub fn unlock_read(&self, slot: usize) {
        if let Some(s) = self.readers.get(slot) {
            self.release_word(s);
        }
    }

    /// Tries to take the write hold now.
    #[inline]
    pub fn try_write(&self) -> bool {
        let me = os::current_pid();
        // SYNC: Acquire (SeqCst) of the last writer's release in `unlock_write`.
        if self.writer.compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed).is_err() {
            return false;
        }
        rmw_load_order();
        // SYNC: D1: after our SeqCst claim; every `0` read is also the
        // Acquire of that slot's last reader's release.
        if self.reader_bits() == 0 {
            return true;
        }
        self.release_word(&self.writer);
        false
    }

    /// Takes the write hold, waiting until `deadline`. Returns the pid of a
    /// writer that died holding the lock, if one was cleared.
    pub fn write(&self, deadline: Option<Instant>, spin: &AdaptiveSpin) -> Result<Option<u32>, RwFailure> {
        if self.try_write() {
            return Ok(None);
        }
        self.write_contended(deadline, spin)
    }

    #[cold]
    #[inline(never)]
    fn write_contended(&self, deadline: Option<Instant>, spin: &AdaptiveSpin) -> Result<Option<u32>, RwFailure> {
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
                    self.wait(deadline, spin, || self.writer.load(Ordering::Relaxed) == 0)
                        .map_err(|()| RwFailure::Timeout { holder: Some(w) })?;
                    waited = true;
                }
            }
        }
        // 2. Wait for the readers to leave; new ones see us and back off.
        rmw_load_order();
        // SYNC: D1, as in `try_write`: the slot loads below follow our claim.
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
            if self.wait(deadline, spin, || self.reader_bits() == 0).is_err() {
                self.release_word(&self.writer);
                return Err(RwFailure::Timeout { holder });
            }
            waited = true;
        }
    }

    /// Releases the write hold.
    #[inline]
    pub fn unlock_write(&self) {
        self.release_word(&self.writer);
    }

    /// The writer's pid, if a writer holds or is acquiring the lock.
    pub fn writer(&self) -> Option<u32> {
        Some(self.writer.load(Ordering::Relaxed)).filter(|&w| w != 0)
    }

    /// Pids of the current readers.
    pub fn readers(&self) -> Vec<u32> {
        self.readers.iter().map(|r| r.load(Ordering::Relaxed)).filter(|&p| p != 0).collect()
    }

    /// Clears a held word (`writer` or a reader slot) and wakes waiters if
    /// there are any.
    #[inline]
    fn release_word(&self, word: &AtomicU32) {
        // SYNC: Release publishes the holder's writes to the next acquirer
        // (see the type's doc); SeqCst makes this the store of D2.
        word.swap(0, Ordering::SeqCst);
        rmw_load_order();
        // SYNC: D2: after our SeqCst swap, so either we see a waiter's
        // increment or its re-check sees our release.
        if self.waiting.load(Ordering::SeqCst) != 0 {
            self.notify_waiters();
        }
    }

    #[cold]
    fn notify_waiters(&self) {
        self.event.notify();
    }

    /// The OR of every reader slot: zero when no reader holds one. One pass
    /// of loads without branches, cheaper than stopping at the first reader
    /// on the path where there is none.
    #[inline]
    fn reader_bits(&self) -> u32 {
        self.readers.iter().fold(0, |bits, r| bits | r.load(Ordering::SeqCst))
    }

    #[cold]
    fn claim_other_slot(&self, me: u32, start: usize) -> Option<usize> {
        (1..READER_SLOTS)
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
        let check = LIVENESS_CHECK.and_then(|c| now.checked_add(c));
        let until = match (deadline, check) {
            (Some(d), Some(c)) => Some(d.min(c)),
            (d, c) => d.or(c),
        };
        // SYNC: D2 (see the type's doc): the waiter's side of the pair is
        // this increment, then the SeqCst fence F2 that `wait_until` runs
        // (in `Event::announce`) after it and before every re-check that can
        // lead to sleep; it pairs with the SeqCst swap and load in
        // `release_word`, so a release whose load missed our increment is
        // seen by that re-check. (A fence here as well would be a second
        // one: the loom models pass without it.)
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.event.wait_until(ready, until, SpinPolicy::DEFAULT, spin);
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }
}
