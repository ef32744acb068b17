//! Loom model test of the ring algorithm (`src/ring/queue.rs`), and of the
//! ring's blocking operations (the queue plus the futex doorbell it sleeps
//! on, `src/sync/event.rs`), compiled here against loom's atomics and the
//! model of the operating system (`src/sync/loom_os.rs`).
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test --release --test loom_ring`
#![cfg(loom)]

mod primitive {
    pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

    pub(crate) fn spin_hint() {
        loom::thread::yield_now();
    }
}

#[allow(dead_code)]
#[path = "../src/ring/queue.rs"]
mod queue;

mod segment {
    /// Stand-in for the segment's marker trait.
    pub unsafe trait ShmSafe {}
}

#[allow(dead_code)]
#[path = "../src/sync/loom_os.rs"]
mod os;

#[allow(dead_code)]
#[path = "../src/sync/event.rs"]
mod event;

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicU64;
use loom::sync::Arc;
use loom::thread;

use event::{AdaptiveSpin, Event, SpinPolicy};
use queue::{Cursors, Refused, Slots};

/// A heap ring: sequence words plus payload cells loom tracks for races.
struct Model {
    cursors: Cursors,
    not_empty: Event,
    not_full: Event,
    seqs: Vec<AtomicU64>,
    cells: Vec<UnsafeCell<u64>>,
}

impl Slots for Model {
    fn capacity(&self) -> u64 {
        self.seqs.len() as u64
    }
    fn seq(&self, index: u64) -> &AtomicU64 {
        &self.seqs[index as usize]
    }
}

impl Model {
    fn new(cap: usize) -> Arc<Model> {
        let m = Model {
            cursors: Cursors::new(),
            not_empty: Event::default(),
            not_full: Event::default(),
            seqs: (0..cap).map(|_| AtomicU64::new(0)).collect(),
            cells: (0..cap).map(|_| UnsafeCell::new(0)).collect(),
        };
        queue::init(&m);
        Arc::new(m)
    }

    fn cell(&self, pos: u64) -> &UnsafeCell<u64> {
        &self.cells[(pos & (self.capacity() - 1)) as usize]
    }

    fn push(&self, v: u64) -> Result<(), Refused> {
        let (pos, n) = queue::claim_push(&self.cursors, self, 1)?;
        assert_eq!(n, 1);
        // Loom reports a data race if another thread can touch this cell now.
        self.cell(pos).with_mut(|p| unsafe { *p = v });
        queue::publish(self, pos);
        Ok(())
    }

    fn pop(&self) -> Result<u64, Refused> {
        let (pos, n) = queue::claim_pop(&self.cursors, self, 1)?;
        assert_eq!(n, 1);
        let v = self.cell(pos).with(|p| unsafe { *p });
        queue::release(self, pos);
        Ok(v)
    }

    /// `Ring::push` with no deadline: push, or sleep on `not_full` until a
    /// slot frees up; a successful push notifies `not_empty`.
    fn push_blocking(&self, v: u64) {
        loop {
            if self.push(v).is_ok() {
                self.not_empty.notify();
                return;
            }
            let ready = || queue::push_ready(&self.cursors, self);
            assert!(self.not_full.wait_until(ready, None, SpinPolicy::SLEEP, &AdaptiveSpin::new()));
        }
    }

    /// `Ring::pop` with no deadline: pop, or sleep on `not_empty`; a
    /// successful pop notifies `not_full`.
    fn pop_blocking(&self) -> u64 {
        loop {
            if let Ok(v) = self.pop() {
                self.not_full.notify();
                return v;
            }
            let ready = || queue::pop_ready(&self.cursors, self);
            assert!(self.not_empty.wait_until(ready, None, SpinPolicy::SLEEP, &AdaptiveSpin::new()));
        }
    }

    fn push_until_done(&self, v: u64) {
        while self.push(v).is_err() {
            thread::yield_now();
        }
    }
}

/// Explores interleavings with a bounded number of preemptions (as tokio's
/// and crossbeam's loom tests do), which keeps retry loops finite.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

/// Two producers, one consumer, capacity 2 (so slots are reused): every
/// value arrives exactly once and no slot is accessed by two threads at once.
#[test]
fn two_producers_one_consumer_exactly_once() {
    model(|| {
        let m = Model::new(2);
        let producers: Vec<_> = (0..2u64)
            .map(|id| {
                let m = m.clone();
                thread::spawn(move || {
                    m.push_until_done(10 + id);
                })
            })
            .collect();
        let mut got = Vec::new();
        while got.is_empty() {
            match m.pop() {
                Ok(v) => got.push(v),
                Err(_) => thread::yield_now(),
            }
        }
        m.push_until_done(30);
        while got.len() < 3 {
            match m.pop() {
                Ok(v) => got.push(v),
                Err(_) => thread::yield_now(),
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        got.sort_unstable();
        assert_eq!(got, vec![10, 11, 30]);
        assert_eq!(m.pop(), Err(Refused::WouldBlock));
    });
}

/// Two consumers race each other and the producer over a ring whose slots
/// are reused: each value is taken by exactly one of them.
#[test]
fn consumers_race_exactly_once() {
    model(|| {
        let m = Model::new(2);
        m.push(1).unwrap();
        m.push(2).unwrap();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                thread::spawn(move || m.pop().ok())
            })
            .collect();
        let mut all = Vec::new();
        // Three values through two slots: if no consumer has freed one yet,
        // take one here to make room.
        if m.push(3).is_err() {
            // Both slots are full or being read: wait for one to free up,
            // taking a value ourselves if the consumers took none.
            loop {
                if let Ok(v) = m.pop() {
                    all.push(v);
                }
                if m.push(3).is_ok() {
                    break;
                }
                thread::yield_now();
            }
        }
        all.extend(consumers.into_iter().filter_map(|c| c.join().unwrap()));
        queue::close(&m.cursors);
        loop {
            match m.pop() {
                Ok(v) => all.push(v),
                Err(Refused::Closed) => break,
                Err(e) => panic!("drain after close: {e:?}"),
            }
        }
        all.sort_unstable();
        assert_eq!(all, vec![1, 2, 3]);
    });
}

/// A push racing with close either lands (and is drained) or is refused:
/// never accepted and lost.
#[test]
fn close_never_loses_an_accepted_push() {
    model(|| {
        let m = Model::new(2);
        let p = {
            let m = m.clone();
            thread::spawn(move || m.push(7).is_ok())
        };
        let c = {
            let m = m.clone();
            thread::spawn(move || {
                queue::close(&m.cursors);
            })
        };
        c.join().unwrap();
        let accepted = p.join().unwrap();
        let mut drained = Vec::new();
        loop {
            match m.pop() {
                Ok(v) => drained.push(v),
                Err(Refused::Closed) => break,
                Err(_) => thread::yield_now(),
            }
        }
        assert_eq!(drained, if accepted { vec![7] } else { vec![] });
    });
}

/// Blocking push and pop through the doorbells, with slots reused (three
/// values through two slots): the consumer sleeps on an empty ring and the
/// producer on a full one, and neither is left asleep (a lost wake-up is a
/// deadlock, which loom reports). Values arrive in order.
#[test]
fn blocking_push_and_pop_never_lose_a_wake_up() {
    model(|| {
        let m = Model::new(2);
        let producer = {
            let m = m.clone();
            thread::spawn(move || {
                for v in 1..=3 {
                    m.push_blocking(v);
                }
            })
        };
        let got: Vec<u64> = (0..3).map(|_| m.pop_blocking()).collect();
        producer.join().unwrap();
        assert_eq!(got, vec![1, 2, 3]);
    });
}
