//! Loom model tests of the lock algorithms (`src/sync/raw_*.rs`) and the
//! futex doorbell they sleep on, compiled here against loom's atomics and a
//! model of the operating system (pids are threads; futex waits are spurious
//! wake-ups, which every caller must already tolerate).
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test --release --test loom_locks`
#![cfg(loom)]
#![allow(dead_code, unused_imports)]

mod primitive {
    pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

    pub(crate) fn spin_hint() {
        loom::thread::yield_now();
    }
}

mod segment {
    /// Stand-in for the segment's marker trait.
    pub unsafe trait ShmSafe {}
}

// The algorithm files refer to `super::os` and `super::event`; mounted at the
// crate root here, `super` is the root.
pub(crate) mod os {
    use std::time::Instant;

    use crate::primitive::AtomicU32;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Wake {
        Woken,
        TimedOut,
    }

    /// Each model thread is a "process" of its own.
    pub(crate) fn current_pid() -> u32 {
        // Deterministic across executions (loom requires it): from the
        // model's own thread numbering.
        let id = format!("{:?}", loom::thread::current().id());
        100 + id.chars().filter(char::is_ascii_digit).collect::<String>().parse::<u32>().unwrap_or(0)
    }

    /// Nobody dies in these models.
    pub(crate) fn is_alive(_pid: u32) -> bool {
        true
    }

    /// A futex wait that returns at once: a spurious wake-up.
    pub(crate) fn futex_wait(_word: &AtomicU32, _expected: u32, _deadline: Option<Instant>) -> Wake {
        loom::thread::yield_now();
        Wake::Woken
    }

    pub(crate) const WAITV_MAX: usize = 128;

    pub(crate) fn futex_wait_any(_words: &[(&AtomicU32, u32)], _deadline: Option<Instant>) -> Option<Wake> {
        loom::thread::yield_now();
        Some(Wake::Woken)
    }

    pub(crate) fn futex_wake(_word: &AtomicU32, _n: u32) -> usize {
        0
    }

    pub(crate) fn yield_now() {
        loom::thread::yield_now();
    }
}

#[path = "../src/sync/event.rs"]
pub(crate) mod event;
#[path = "../src/sync/raw_mutex.rs"]
pub(crate) mod raw_mutex;
#[path = "../src/sync/raw_rwlock.rs"]
pub(crate) mod raw_rwlock;
#[path = "../src/sync/raw_spin.rs"]
pub(crate) mod raw_spin;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use event::AdaptiveSpin;
use raw_mutex::RawMutex;
use raw_rwlock::RawRwLock;
use raw_spin::RawSpin;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

/// Data guarded by a lock; loom reports any unsynchronised access.
struct Guarded<L> {
    lock: L,
    value: UnsafeCell<u32>,
}

fn increment<L>(g: &Guarded<L>, lock: impl Fn(&L), unlock: impl Fn(&L)) {
    lock(&g.lock);
    g.value.with_mut(|v| unsafe { *v += 1 });
    unlock(&g.lock);
}

fn two_threads_exclude<L: Send + Sync + 'static>(new: fn() -> L, lock: fn(&L), unlock: fn(&L)) {
    model(move || {
        let g = Arc::new(Guarded { lock: new(), value: UnsafeCell::new(0) });
        let other = {
            let g = g.clone();
            thread::spawn(move || increment(&g, lock, unlock))
        };
        increment(&g, lock, unlock);
        other.join().unwrap();
        lock(&g.lock);
        assert_eq!(g.value.with(|v| unsafe { *v }), 2);
        unlock(&g.lock);
    });
}

#[test]
fn spin_lock_excludes() {
    two_threads_exclude(
        RawSpin::default,
        |l| {
            l.lock(None).unwrap();
        },
        RawSpin::unlock,
    );
}

#[test]
fn mutex_excludes() {
    two_threads_exclude(
        RawMutex::default,
        |l| {
            l.lock(None).unwrap();
        },
        RawMutex::unlock,
    );
}

#[test]
fn rwlock_writers_exclude() {
    two_threads_exclude(
        RawRwLock::default,
        |l| {
            l.write(None, &AdaptiveSpin::new()).unwrap();
        },
        RawRwLock::unlock_write,
    );
}

/// A reader never sees a writer's half-done work: the value is read under a
/// read hold while a writer changes it under the write hold.
#[test]
fn rwlock_readers_exclude_writers() {
    model(|| {
        let g = Arc::new(Guarded { lock: RawRwLock::default(), value: UnsafeCell::new(0) });
        let writer = {
            let g = g.clone();
            thread::spawn(move || {
                g.lock.write(None, &AdaptiveSpin::new()).unwrap();
                g.value.with_mut(|v| unsafe { *v = 7 });
                g.lock.unlock_write();
            })
        };
        let (slot, _) = g.lock.read(None, &AdaptiveSpin::new()).unwrap();
        let seen = g.value.with(|v| unsafe { *v });
        assert!(seen == 0 || seen == 7);
        g.lock.unlock_read(slot);
        writer.join().unwrap();
    });
}

/// try_read and try_write never hold at once: whatever each acquires, its
/// access to the data cannot race with the other's.
#[test]
fn rwlock_try_read_and_try_write_are_exclusive() {
    model(|| {
        let g = Arc::new(Guarded { lock: RawRwLock::default(), value: UnsafeCell::new(0) });
        let w = {
            let g = g.clone();
            thread::spawn(move || {
                if g.lock.try_write() {
                    g.value.with_mut(|v| unsafe { *v += 1 });
                    g.lock.unlock_write();
                }
            })
        };
        if let Some(slot) = g.lock.try_read() {
            let _ = g.value.with(|v| unsafe { *v });
            g.lock.unlock_read(slot);
        }
        w.join().unwrap();
    });
}
