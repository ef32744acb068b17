//! Loom model tests of the lock algorithms (`src/sync/raw_*.rs`) and the
//! futex doorbell they sleep on, compiled here against loom's atomics and a
//! model of the operating system (`src/sync/loom_os.rs`: pids are threads; a
//! futex wait with a deadline is a spurious wake-up, one without really
//! sleeps until woken, so a lost wake-up shows as a deadlock).
//!
//! The read-write lock's fast paths order a SeqCst read-modify-write before
//! a SeqCst load with no fence (Dekker pairs D1 and D2 in `raw_rwlock.rs`).
//! Loom treats SeqCst accesses as AcqRel, so under `cfg(loom)` the lock
//! spells that order out as a SeqCst fence (`rmw_load_order`): these models
//! check the protocol with the fence; weakening the fence fails them, but
//! weakening the SeqCst of the accesses themselves is beyond loom.
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --test loom_locks`
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

/// Three preemptions: with two, a reader whose load of `writer` is only
/// Relaxed (no Acquire of the writer's release) was not caught.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
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

/// A writer that waits for a reader to leave sleeps (no liveness deadline in
/// the model) and is woken by the reader's release: the release notifies
/// only when it sees the writer counted in `waiting` (Dekker pair D2), so a
/// lost wake-up leaves the writer asleep for ever and loom reports it.
#[test]
fn rwlock_read_release_wakes_a_waiting_writer() {
    model(|| {
        let g = Arc::new(Guarded { lock: RawRwLock::default(), value: UnsafeCell::new(0) });
        let (slot, _) = g.lock.read(None, &AdaptiveSpin::new()).unwrap();
        let writer = {
            let g = g.clone();
            thread::spawn(move || {
                g.lock.write(None, &AdaptiveSpin::new()).unwrap();
                g.value.with_mut(|v| unsafe { *v = 7 });
                g.lock.unlock_write();
            })
        };
        assert_eq!(g.value.with(|v| unsafe { *v }), 0);
        g.lock.unlock_read(slot);
        writer.join().unwrap();
        let (slot, _) = g.lock.read(None, &AdaptiveSpin::new()).unwrap();
        assert_eq!(g.value.with(|v| unsafe { *v }), 7);
        g.lock.unlock_read(slot);
    });
}

/// A reader that waits for a writer sleeps and is woken by the writer's
/// release, and then sees what the writer wrote.
#[test]
fn rwlock_write_release_wakes_a_waiting_reader() {
    model(|| {
        let g = Arc::new(Guarded { lock: RawRwLock::default(), value: UnsafeCell::new(0) });
        g.lock.write(None, &AdaptiveSpin::new()).unwrap();
        let reader = {
            let g = g.clone();
            thread::spawn(move || {
                let (slot, _) = g.lock.read(None, &AdaptiveSpin::new()).unwrap();
                assert_eq!(g.value.with(|v| unsafe { *v }), 7);
                g.lock.unlock_read(slot);
            })
        };
        g.value.with_mut(|v| unsafe { *v = 7 });
        g.lock.unlock_write();
        reader.join().unwrap();
    });
}

/// A writer that found a reader, backed off and waits in the contended path
/// claims `writer` again; a reader of another process arriving then (in a
/// slot of its own) must still see it, or the writer its slot: Dekker pair
/// D1 on the contended path.
#[test]
fn rwlock_a_writer_that_waited_excludes_a_new_reader() {
    model(|| {
        let g = Arc::new(Guarded { lock: RawRwLock::default(), value: UnsafeCell::new(0) });
        let (slot, _) = g.lock.read(None, &AdaptiveSpin::new()).unwrap();
        let writer = {
            let g = g.clone();
            thread::spawn(move || {
                g.lock.write(None, &AdaptiveSpin::new()).unwrap();
                g.value.with_mut(|v| unsafe { *v = 7 });
                g.lock.unlock_write();
            })
        };
        let reader = {
            let g = g.clone();
            thread::spawn(move || {
                if let Some(slot) = g.lock.try_read() {
                    let _ = g.value.with(|v| unsafe { *v });
                    g.lock.unlock_read(slot);
                }
            })
        };
        g.lock.unlock_read(slot);
        writer.join().unwrap();
        reader.join().unwrap();
    });
}
