//! Loom model tests of the lock algorithms (`src/sync/raw_*.rs`) and the
//! futex doorbell they sleep on, compiled here against loom's atomics and a
//! model of the operating system (`src/sync/loom_os.rs`: pids are threads; a
//! futex wait with a deadline is a spurious wake-up, one without really
//! sleeps until woken, so a lost wake-up shows as a deadlock).
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
#[path = "../src/sync/loom_os.rs"]
pub(crate) mod os;

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

use event::{wait_any, AdaptiveSpin, Event, SpinPolicy};
use primitive::{AtomicU32, Ordering};
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

/// The doorbell: a waiter that sleeps without a deadline is always woken by
/// a notify that follows the state change it waits for (a lost wake-up
/// leaves it asleep for ever: loom reports a deadlock).
#[test]
fn event_never_loses_a_wake_up() {
    model(|| {
        let e = Arc::new(Event::default());
        let flag = Arc::new(AtomicU32::new(0));
        let notifier = {
            let (e, flag) = (e.clone(), flag.clone());
            thread::spawn(move || {
                flag.store(1, Ordering::Release);
                e.notify();
            })
        };
        let ready = || flag.load(Ordering::Acquire) == 1;
        assert!(e.wait_until(ready, None, SpinPolicy::SLEEP, &AdaptiveSpin::new()));
        notifier.join().unwrap();
    });
}

/// Two sleepers on one event, each waiting for its own flag, two notifiers:
/// a notify clears SLEEPERS for both, and the one not yet ready announces
/// again. Nobody sleeps for ever.
#[test]
fn event_wakes_every_sleeper() {
    model(|| {
        let e = Arc::new(Event::default());
        let flags = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let waiter = {
            let (e, flags) = (e.clone(), flags.clone());
            thread::spawn(move || {
                let ready = || flags[1].load(Ordering::Acquire) == 1;
                assert!(e.wait_until(ready, None, SpinPolicy::SLEEP, &AdaptiveSpin::new()));
            })
        };
        let notifier = {
            let (e, flags) = (e.clone(), flags.clone());
            thread::spawn(move || {
                flags[0].store(1, Ordering::Release);
                e.notify();
                flags[1].store(1, Ordering::Release);
                e.notify();
            })
        };
        let ready = || flags[0].load(Ordering::Acquire) == 1;
        assert!(e.wait_until(ready, None, SpinPolicy::SLEEP, &AdaptiveSpin::new()));
        notifier.join().unwrap();
        waiter.join().unwrap();
    });
}

/// `wait_any` over two events: a notify of either wakes the waiter.
#[test]
fn wait_any_never_loses_a_wake_up() {
    model(|| {
        let events = Arc::new([Event::default(), Event::default()]);
        let flag = Arc::new(AtomicU32::new(0));
        let notifier = {
            let (events, flag) = (events.clone(), flag.clone());
            thread::spawn(move || {
                flag.store(1, Ordering::Release);
                events[1].notify();
            })
        };
        let ready = || flag.load(Ordering::Acquire) == 1;
        assert!(wait_any(&[&events[0], &events[1]], ready, None));
        notifier.join().unwrap();
    });
}
