//! Async waits on a group's results: tasks parked on a stream (a ticket, a
//! map, a worker pool's results) or on room in the queue, and the reactor
//! source that drains the result ring for them.
//!
//! A blocking waiter drains the result ring itself and stashes what is not
//! its own; a parked task cannot. While any task is parked on a group, the
//! group has one source in the process's reactor ([`crate::wait::reactor`]):
//! it sleeps on the result ring's event, and when the event moves it drains
//! the ring as a blocking `recv(None, ..)` would, routing every result to
//! the stash, which wakes the task parked on that result's stream. Every
//! [`TICK`](crate::wait::reactor::TICK) it also supervises the group (dead
//! workers reaped, their tasks re-run or answered), as blocking waiters do
//! between slices. When the last parked task is gone, the source retires.

use std::sync::{Arc, Weak};
use std::task::Waker;

use super::lock;
use super::router::RecvError;
use super::workers::Workers;
use crate::segment::Segment;
use crate::wait::reactor::{self, Arm, Source};
use crate::wait::Deadline;

/// What a parked task waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParkOn {
    /// A result of this stream.
    Stream(u64),
    /// Room in the queue (a task left flight).
    Room,
}

impl Workers {
    /// Parks the task of `waker` until `on` may have happened. False if it
    /// already has (a result of the stream is stashed): poll again instead.
    ///
    /// After parking on [`ParkOn::Room`], the caller must try once more:
    /// room that came between its last try and the park wakes nobody.
    pub(crate) fn park(self: &Arc<Self>, on: ParkOn, waker: &Waker) -> bool {
        let mut routing = lock(&self.routing);
        match on {
            ParkOn::Stream(s) => {
                if routing.stash.contains_key(&s) {
                    return false;
                }
                match routing.wakers.get_mut(&s) {
                    Some(w) if w.will_wake(waker) => {}
                    Some(w) => w.clone_from(waker),
                    None => {
                        routing.wakers.insert(s, waker.clone());
                    }
                }
            }
            ParkOn::Room => {
                if !routing.room.iter().any(|w| w.will_wake(waker)) {
                    routing.room.push(waker.clone());
                }
                self.room_parked.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if !routing.armed {
            routing.armed = true;
            drop(routing);
            let source = Drainer { workers: Arc::downgrade(self), _seg: self.seg.clone() };
            if !reactor::watch(Arc::new(source)) {
                // No reactor: poll again soon rather than hang (logged).
                lock(&self.routing).armed = false;
                waker.wake_by_ref();
            }
        }
        true
    }

    /// The spin an async poll does before it parks its task: a blocking
    /// wait's spin under the group's policy (adaptive, so a poll that
    /// keeps missing stops spinning), never longer than the default budget
    /// (a busy-polling group's included: a poll must not hold its
    /// executor's thread). True if a result came meanwhile.
    pub(crate) fn spin_for_results(&self) -> bool {
        let policy = self.config.spin.for_poll();
        self.results.readable().spin(|| self.results.can_pop(), None, policy, self.results.pop_spin())
    }

    /// Wakes the tasks parked on room in the queue, if any.
    pub(super) fn wake_room(&self) {
        if self.room_parked.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let room = std::mem::take(&mut lock(&self.routing).room);
            room.into_iter().for_each(Waker::wake);
        }
    }
}

/// The reactor source of one group with parked tasks.
struct Drainer {
    /// Weak: a group nobody else holds is dropped by its owner, not here.
    workers: Weak<Workers>,
    /// Keeps the result ring's event mapped (the `Source` contract).
    _seg: Segment,
}

impl Source for Drainer {
    fn poll(&self) -> Option<Arm> {
        let w = self.workers.upgrade()?;
        let unwinding = Unwinding(&w);
        let arm = drain_for_parked(&w);
        std::mem::forget(unwinding);
        if Arc::strong_count(&w) == 1 {
            // Every other holder let go while we looked: dropping the last
            // handle joins the workers, which must not hold up the reactor.
            std::thread::spawn(move || drop(w));
        }
        arm
    }
}

/// Disarms the group and wakes its parked tasks if a drain panics (the
/// reactor drops a panicking source): each task then polls in its own
/// executor and meets the failure there, rather than waiting for ever.
struct Unwinding<'a>(&'a Workers);

impl Drop for Unwinding<'_> {
    fn drop(&mut self) {
        wake_all_parked(self.0);
    }
}

/// Disarms the group's drainer and wakes every task parked on it.
fn wake_all_parked(w: &Workers) {
    let mut routing = lock(&w.routing);
    routing.armed = false;
    let mut wakers = std::mem::take(&mut routing.room);
    wakers.extend(routing.wakers.drain().map(|(_, w)| w));
    drop(routing);
    wakers.into_iter().for_each(Waker::wake);
}

/// One poll of a group's drainer: routes what the result ring holds to the
/// stash (waking the parked owners), and arms on the ring's event.
fn drain_for_parked(w: &Workers) -> Option<Arm> {
    let event = w.results.readable();
    loop {
        let announced = {
            let mut routing = lock(&w.routing);
            if routing.wakers.is_empty() && routing.room.is_empty() {
                routing.armed = false;
                return None;
            }
            let announced = event.announce();
            if routing.draining {
                // Another thread drains; it routes what it pops and wakes
                // us when it stops (`poke`), for what it leaves behind.
                routing.poke = true;
                return Some(Arm::on(event, announced, true));
            }
            announced
        };
        // The announce comes first: a result pushed after our look below
        // notifies the event and moves the word we sleep on.
        match w.recv(None, Deadline::now(), &mut |_, _| {}) {
            Ok(_) => {
                // Something was routed (and its owner woken): look again.
                event.retract(announced);
            }
            Err(RecvError::Timeout) => {
                let mut routing = lock(&w.routing);
                if routing.draining {
                    // Another thread started draining meanwhile: it wakes
                    // us when it stops.
                    routing.poke = true;
                } else if w.results.can_pop() {
                    // Left in the ring by a drain that just ended: ours now.
                    drop(routing);
                    event.retract(announced);
                    continue;
                }
                return Some(Arm::on(event, announced, true));
            }
            Err(RecvError::Gone) => {
                // No worker is left: every parked task learns it on its poll.
                event.retract(announced);
                wake_all_parked(w);
                return None;
            }
        }
    }
}
