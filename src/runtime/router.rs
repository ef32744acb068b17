//! Routing results to their waiters: whichever thread pops the result
//! ring delivers its own results and stashes the others' for them.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering;
use std::task::Waker;
use std::time::Instant;

use super::control::MAX_BATCH;
use super::lock;
use super::workers::{Workers, HEALTH_CHECK};
use crate::codec;
use crate::ring::RingError;
use crate::sys::process;
use crate::wait::Deadline;
use crate::wire::{self, FrameHeader, OwnedFrame, Status};
use crate::TaskError;

#[derive(Default)]
pub(super) struct Routing {
    /// A thread is popping the result ring; others wait on the condvar.
    pub(super) draining: bool,
    /// Threads waiting on the condvar (`routed`) now. A change made under
    /// this lock wakes them only if there are any: `Condvar::notify_all`
    /// is a futex system call even when nobody waits (one per result).
    waiting: usize,
    /// Results popped by a thread that was not their owner.
    pub(super) stash: HashMap<u64, Stashed, StreamIds>,
    /// Streams whose owner still reads them. A result for any other stream
    /// (its owner went away, or it is a duplicate of one already taken, as
    /// when a worker dies right after answering and the task runs again)
    /// is discarded at once, block and all, never left in the stash.
    live: HashSet<u64, StreamIds>,
    /// Tasks parked on a stream (async waits): woken when a result of the
    /// stream is stashed (see `awaits`).
    pub(super) wakers: HashMap<u64, Waker, StreamIds>,
    /// Tasks parked on room in the queue: woken when a task leaves flight.
    pub(super) room: Vec<Waker>,
    /// The group's drainer is in the reactor (see `awaits`).
    pub(super) armed: bool,
    /// The drainer found another thread draining and went to sleep: that
    /// thread wakes it when it stops (results may be left in the ring).
    pub(super) poke: bool,
}

/// Hashing for stream ids: one multiplication (by 2^64 / the golden ratio).
///
/// std's default, SipHash, costs more than the rest of a look-up, and a
/// task round trip makes four. The ids are handed out in sequence by this
/// process, and only those are ever inserted (a result for any other id is
/// discarded: see `live`), so a worker writing hostile ids into results can
/// only look ids up: the multiplication is a bijection on the low bits the
/// table indexes by, so consecutive ids never share a bucket chain.
#[derive(Default, Clone, Copy)]
pub(super) struct StreamHasher(u64);

impl Hasher for StreamHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The hasher of the routing tables.
pub(super) type StreamIds = BuildHasherDefault<StreamHasher>;

impl Routing {
    /// Registers `stream`: its results are kept for its owner.
    pub(super) fn open(&mut self, stream: u64) {
        self.live.insert(stream);
    }
}

/// The results stashed for one stream: nearly always one (a ticket's), kept
/// without a queue, so a result routed to its owner allocates no queue.
pub(super) enum Stashed {
    One(OwnedFrame),
    Many(VecDeque<OwnedFrame>),
}

impl Stashed {
    fn push(&mut self, item: OwnedFrame) {
        match self {
            Stashed::Many(queue) => queue.push_back(item),
            Stashed::One(_) => {
                let Stashed::One(first) = std::mem::replace(self, Stashed::Many(VecDeque::with_capacity(4))) else {
                    unreachable!("matched One above")
                };
                if let Stashed::Many(queue) = self {
                    queue.extend([first, item]);
                }
            }
        }
    }

    /// The results, oldest first.
    fn items(&self) -> impl Iterator<Item = &OwnedFrame> {
        let (one, many) = match self {
            Stashed::One(item) => (Some(item), None),
            Stashed::Many(queue) => (None, Some(queue.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// Why a receive returned no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvError {
    Timeout,
    /// No worker is left to produce the result.
    Gone,
}

impl Workers {
    /// Receives results of `stream` (all streams' go to the stash with
    /// `None`), calling `on(header, archive)` for each; returns how many.
    ///
    /// Returns as soon as at least one result was handled (or, with `None`,
    /// any result was popped or routed by another thread).
    pub fn recv(
        &self,
        stream: Option<u64>,
        deadline: Deadline,
        on: &mut dyn FnMut(&FrameHeader, &[u8]),
    ) -> Result<usize, RecvError> {
        let mut routing = lock(&self.routing);
        loop {
            if let Some(s) = stream {
                if let Some(stashed) = routing.stash.remove(&s) {
                    drop(routing);
                    let mut n = 0;
                    for item in stashed.items() {
                        self.deliver_stashed(item, on);
                        n += 1;
                    }
                    return Ok(n);
                }
            }
            if routing.draining {
                if deadline.passed() {
                    return Err(RecvError::Timeout);
                }
                let wait = deadline.slice(HEALTH_CHECK).saturating_duration_since(Instant::now());
                let before = self.in_flight.load(Ordering::Relaxed);
                routing.waiting += 1;
                routing = self.routed.wait_timeout(routing, wait).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
                routing.waiting -= 1;
                if stream.is_none() && self.in_flight.load(Ordering::Relaxed) != before {
                    return Ok(0);
                }
                continue;
            }
            routing.draining = true;
            drop(routing);
            let drained = {
                // Clears `draining` and wakes the others even if `on` panics.
                let _draining = Draining(self);
                self.drain(stream, deadline, on)
            };
            routing = lock(&self.routing);
            match drained {
                Ok(n) => {
                    // Leave the stash check to the next round for `Some`; with
                    // `None` any progress is enough.
                    if n > 0 || stream.is_none() {
                        return Ok(n);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Pops result batches until one for `stream` (or, with `None`, any) came.
    ///
    /// Every `HEALTH_CHECK` it also reaps dead workers, whose held tasks are
    /// answered with `WorkerDied` (they may be this stream's).
    pub(super) fn drain(
        &self,
        stream: Option<u64>,
        deadline: Deadline,
        on: &mut dyn FnMut(&FrameHeader, &[u8]),
    ) -> Result<usize, RecvError> {
        let stashed = |s: Option<u64>| s.is_some_and(|s| lock(&self.routing).stash.contains_key(&s));
        loop {
            // Due by the pool's clock, not this call's: results that keep
            // flowing must not keep supervision from running.
            if self.retire_due() || self.supervision_due() {
                // No worker left: results already in the ring, or answers
                // supervise just put in the stash, still count.
                if !self.supervise() && self.results.is_empty() {
                    if stashed(stream) {
                        return Ok(0);
                    }
                    return Err(RecvError::Gone);
                }
                if stashed(stream) {
                    return Ok(0);
                }
            }
            let until = deadline.slice(HEALTH_CHECK);
            let mut mine = 0;
            let mut popped = 0;
            let mut foreign: Vec<OwnedFrame> = Vec::new();
            // A deadline already due (a poll, an async wait's try) takes
            // what is there and never waits, not even to spin.
            let polling = deadline.passed();
            let read = |bytes: &[u8]| {
                popped += 1;
                let Some(hdr) = FrameHeader::read(bytes) else { return };
                if let Some(r) =
                    hdr.func.checked_sub(1).and_then(|w| usize::try_from(w).ok()).and_then(|w| self.recent.get(w))
                {
                    r.record(hdr.stream, hdr.seq);
                }
                if Some(hdr.stream) == stream {
                    mine += 1;
                    let delivered = wire::with_body(&self.seg, &hdr, bytes, true, |archive| on(&hdr, archive));
                    if let Err(e) = delivered {
                        // The body was unreadable: deliver the failure, not nothing.
                        self.deliver_error(&hdr, &e, on);
                    }
                } else {
                    foreign.push(OwnedFrame::copy(hdr, bytes));
                }
            };
            let got = if polling {
                self.results.try_pop_many(MAX_BATCH * 2, read)
            } else {
                self.results.pop_many_with(MAX_BATCH * 2, Some(until), self.config.spin, read)
            };
            self.land(popped);
            if !foreign.is_empty() {
                let mut routing = lock(&self.routing);
                for item in foreign {
                    self.route(&mut routing, item);
                }
                // Their owners may be waiting on the condvar: tell them now.
                self.wake_routed(routing);
            }
            match got {
                Ok(_) if mine > 0 || stream.is_none() => return Ok(mine),
                Ok(_) | Err(RingError::Timeout | RingError::WouldBlock) => {
                    if deadline.passed() {
                        return Err(RecvError::Timeout);
                    }
                }
                // Closed and drained (terminated): an answer the parent put
                // in the stash (cleared, worker died) still counts.
                Err(_) if stashed(stream) => return Ok(0),
                Err(_) => return Err(RecvError::Gone),
            }
        }
    }

    /// Whether `HEALTH_CHECK` has passed since the last supervision; if so,
    /// this caller is the one to run it now.
    pub(super) fn supervision_due(&self) -> bool {
        let now = process::monotonic_ns();
        let last = self.last_supervised.load(Ordering::Relaxed);
        now.saturating_sub(last) >= HEALTH_CHECK.as_nanos() as u64
            && self.last_supervised.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Releases `routing` after a change its waiters look for, and wakes
    /// them if any wait. A thread that will wait counts itself in
    /// `waiting` under the same lock, after it looked at the state: one
    /// that is not counted yet will see this change before it waits.
    pub(super) fn wake_routed(&self, routing: std::sync::MutexGuard<'_, Routing>) {
        let anyone = routing.waiting > 0;
        drop(routing);
        if anyone {
            self.routed.notify_all();
        }
    }

    pub(super) fn route(&self, routing: &mut Routing, item: OwnedFrame) {
        let s = item.hdr.stream;
        if !routing.live.contains(&s) {
            // Nobody will read it: free its block now.
            item.discard(&self.seg);
            return;
        }
        match routing.stash.entry(s) {
            Entry::Occupied(mut stashed) => stashed.get_mut().push(item),
            Entry::Vacant(slot) => {
                slot.insert(Stashed::One(item));
            }
        }
        if let Some(parked) = routing.wakers.remove(&s) {
            parked.wake();
        }
    }

    pub(super) fn deliver_stashed(&self, item: &OwnedFrame, on: &mut dyn FnMut(&FrameHeader, &[u8])) {
        if let Err(e) = item.with_body(&self.seg, |archive| on(&item.hdr, archive)) {
            self.deliver_error(&item.hdr, &e, on);
        }
    }

    pub(super) fn deliver_error(&self, hdr: &FrameHeader, e: &TaskError, on: &mut dyn FnMut(&FrameHeader, &[u8])) {
        let mut s = codec::Scratch::new();
        let mut message = e.to_string();
        // The owner must hear of it whatever the message's length: cut it to
        // fit the scratch (on a char boundary), or send no text at all.
        let mut keep = message.len().min(codec::SCRATCH / 2);
        while !message.is_char_boundary(keep) {
            keep -= 1;
        }
        message.truncate(keep);
        let n = codec::encode_into(&message, &mut s.0).unwrap_or(0);
        let h = FrameHeader { status: Status::BadInput as u32, ..*hdr };
        on(&h, &s.0[..n]);
    }

    /// The owner of `stream` reads no more of its results (it has them
    /// all, or went away): what is stashed for it and whatever comes later
    /// (results still out, duplicates) is discarded.
    pub fn abandon(&self, stream: u64) {
        let mut routing = lock(&self.routing);
        routing.live.remove(&stream);
        routing.wakers.remove(&stream);
        if let Some(stashed) = routing.stash.remove(&stream) {
            for item in stashed.items() {
                item.discard(&self.seg);
            }
        }
    }

    /// Puts a result that no worker produced (cancelled, worker died) where
    /// its owner will find it.
    pub(super) fn synthesize(&self, stream: u64, seq: u64, status: Status, detail: u32) {
        self.synthesize_with(stream, seq, status, &detail);
    }

    /// [`synthesize`](Self::synthesize) with any detail: a message (kept
    /// in this process, so it needs no room in the segment; a detail too
    /// large for a scratch buffer is sent empty).
    pub(super) fn synthesize_with<T: codec::Message>(&self, stream: u64, seq: u64, status: Status, detail: &T) {
        let hdr = FrameHeader { stream, seq, status: status as u32, ..Default::default() };
        let item = OwnedFrame::inline(hdr, detail);
        let mut routing = lock(&self.routing);
        self.route(&mut routing, item);
        self.wake_routed(routing);
    }

    /// Removes every queued task; each owner gets `TaskError::Cancelled`.
    /// Returns how many were removed.
    pub fn clear_tasks(&self) -> usize {
        // One clearer at a time: the claim record below is a single word.
        let _one = lock(&self.clearing);
        let mut cleared = Vec::new();
        while let Ok(n) = self.tasks.try_pop_many_recorded(MAX_BATCH, Some(&self.clear_claim), |_, bytes| {
            if let Some(hdr) = FrameHeader::read(bytes) {
                wire::discard(&self.seg, &hdr);
                cleared.push((hdr.stream, hdr.seq));
            }
        }) {
            self.land(n);
        }
        for &(stream, seq) in &cleared {
            self.synthesize(stream, seq, Status::Cancelled, 0);
        }
        cleared.len()
    }
}

/// Ends a drain: clears the flag and wakes the other waiters, also on unwind.
pub(super) struct Draining<'a>(&'a Workers);

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        let mut routing = lock(&self.0.routing);
        routing.draining = false;
        let poke = std::mem::take(&mut routing.poke);
        self.0.wake_routed(routing);
        if poke {
            // The group's drainer found us draining and went to sleep on
            // the ring's event: results we left in the ring are its to
            // route now. It announced on the event, so this wakes it.
            self.0.results.readable().notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::runtime::tramp;
    use crate::runtime::{submit_to, Config};

    fn square(x: u64) -> u64 {
        x * x
    }

    // Finding 10: a duplicate result for a ticket already answered (a worker
    // killed right after answering, its task run again) stayed in the stash
    // for ever, with its block.
    #[test]
    fn a_duplicate_result_for_a_finished_ticket_is_discarded_not_stashed() {
        let config = Config { workers: 1, segment_size: 8 << 20, ..Config::default() };
        let w = Workers::start::<()>(config, None).unwrap();
        let stream = w.next_stream.load(Ordering::Relaxed);
        let ticket =
            submit_to::<u64, u64>(&w, square as fn(u64) -> u64 as usize, tramp::call_owned::<u64, u64>, &3).unwrap();
        assert_eq!(ticket.wait(), Ok(9));
        let hdr = FrameHeader { stream, seq: 0, func: 1, ..Default::default() };
        w.route(&mut lock(&w.routing), OwnedFrame::inline(hdr, &9u64));
        assert!(!lock(&w.routing).stash.contains_key(&stream), "the duplicate was stashed");
    }
}
