//! `Pool::map` and `Pool::map_unordered`: a whole input through the pool,
//! its items grouped into frames.
//!
//! Sending every item in a frame of its own costs a ring slot, a dispatch
//! and an answer per item: for trivial functions that is most of the work.
//! So a map sends items in groups (one frame carries an archived `Vec` of
//! items, its answer a `Vec` of results) and adapts the group to the work:
//! it starts with single items (the first results come back at once), and
//! from the time the workers report each group took, it aims at about
//! `GROUP_WORK` (100 µs) of work per group, growing at most twofold a step, up to
//! 512 items and 64 KiB of archive. While the input's
//! length is known, a group is never more than a quarter of a worker's share
//! of what is left, so every worker keeps busy to the end. Slow items (a
//! millisecond or more) go one by one.
//!
//! Each item runs under its own `catch_unwind`: a panic fails that item
//! only. With `max_tasks_per_worker`, whose quota counts items, items go one
//! by one. A group counts as one task for the queue bound, the task timeout
//! and a dead worker's re-run (its items are run again together).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::{to_task_error, Staged};
use crate::codec::{Message, Scratch};
use crate::runtime::tramp::{GroupItem, Trampoline};
use crate::runtime::{ParkOn, RecvError, Reservation, Workers};
use crate::wait::Deadline;
use crate::wire::{self, FrameBuf, FrameHeader};
use crate::{Error, TaskError};

/// How many frames a map pushes at once.
const MAP_BATCH: usize = 32;
/// The most items in one group.
const MAX_GROUP: usize = 512;
/// A group stops growing once its archive is this large.
const GROUP_BYTES: u64 = 64 << 10;
/// The work a group aims at, as the workers measure it.
const GROUP_WORK: Duration = Duration::from_micros(100);

/// One step of a map (see `MapIter::advance`).
enum Advance<T> {
    /// The next item, or the end.
    Done(Option<T>),
    /// Nothing before the deadline: what to wait for.
    Again(ParkOn),
}

/// A group's answer: its items' results, or why the group has none.
type Answer<R> = Result<Vec<GroupItem<R>>, TaskError>;

/// Results of [`Pool::map`](crate::Pool::map) /
/// [`Pool::map_unordered`](crate::Pool::map_unordered).
///
/// Dropping it early discards the results still to come.
pub struct MapIter<'p, I: Iterator, R> {
    inner: &'p Arc<Workers>,
    func: usize,
    /// The group trampoline for `fn(I::Item) -> R`.
    tramp: Trampoline,
    input: I,
    input_done: bool,
    stream: u64,
    /// Items submitted (sequence numbers count items, not frames).
    submitted: u64,
    yielded: u64,
    /// Frames (groups) in flight.
    outstanding: u64,
    ordered: bool,
    /// Groups in flight: first item's sequence number -> items.
    groups: BTreeMap<u64, u64>,
    /// Items in the next group.
    group: usize,
    /// Groups may grow: not with `max_tasks_per_worker`, whose quota counts
    /// items (a worker replaced after `n` items, as the builder says).
    grouping: bool,
    workers: usize,
    /// Ordered mode: results by `seq - yielded`.
    slots: VecDeque<Option<Result<R, TaskError>>>,
    /// Unordered mode: results in arrival order.
    ready: VecDeque<Result<R, TaskError>>,
    /// Which sequence numbers from `done_base` on have been answered: a
    /// group answered twice (a worker killed right after answering) is
    /// counted and yielded once.
    done: VecDeque<bool>,
    done_base: u64,
    /// Framed groups waiting to be pushed (16-byte aligned).
    staged: FrameBuf,
    scratch: Box<Scratch>,
    _result: PhantomData<fn() -> R>,
}

impl<I: Iterator, R> fmt::Debug for MapIter<'_, I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapIter")
            .field("submitted", &self.submitted)
            .field("yielded", &self.yielded)
            .field("outstanding", &self.outstanding)
            .field("group", &self.group)
            .field("ordered", &self.ordered)
            .finish()
    }
}

impl<'p, I, R> MapIter<'p, I, R>
where
    I: Iterator,
    I::Item: Message,
    R: Message,
{
    pub(super) fn new(inner: &'p Arc<Workers>, func: usize, tramp: Trampoline, input: I, ordered: bool) -> Self {
        MapIter {
            inner,
            func,
            tramp,
            input,
            input_done: false,
            stream: inner.new_stream(),
            submitted: 0,
            yielded: 0,
            outstanding: 0,
            ordered,
            groups: BTreeMap::new(),
            group: 1,
            grouping: inner.config.max_tasks.is_none(),
            workers: inner.config.workers.max(1),
            slots: VecDeque::new(),
            ready: VecDeque::new(),
            done: VecDeque::new(),
            done_base: 0,
            staged: FrameBuf::new(inner.inline_max(), MAP_BATCH),
            scratch: Scratch::new(),
            _result: PhantomData,
        }
    }

    fn place(&mut self, seq: u64, result: Result<R, TaskError>) {
        if self.ordered {
            let Some(i) = seq.checked_sub(self.yielded) else { return };
            let i = i as usize;
            if self.slots.len() <= i {
                self.slots.resize_with(i + 1, || None);
            }
            if self.slots[i].is_none() {
                self.slots[i] = Some(result);
            }
        } else {
            self.ready.push_back(result);
        }
    }

    /// Starts tracking `seq` (and every number below it) as unanswered.
    fn pending_mark(&mut self, seq: u64) {
        while self.done_base + (self.done.len() as u64) <= seq {
            self.done.push_back(false);
        }
    }

    /// Records `seq` as answered; false if it already was (a duplicate), or
    /// was never submitted (a forged result must not grow our tables).
    fn mark_done(&mut self, seq: u64) -> bool {
        if seq >= self.submitted {
            return false;
        }
        let Some(i) = seq.checked_sub(self.done_base) else { return false };
        self.pending_mark(seq);
        let slot = &mut self.done[i as usize];
        if *slot {
            return false;
        }
        *slot = true;
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            self.done_base += 1;
        }
        true
    }

    /// Fails items `first..first + n` with `error` (each once).
    fn fail_all(&mut self, first: u64, n: u64, error: &TaskError) {
        for seq in first..first + n {
            if self.mark_done(seq) {
                self.place(seq, Err(error.clone()));
            }
        }
    }

    /// Items for the next group: what the work measured so far allows,
    /// and no more than a quarter of each worker's share of what is left.
    fn next_group_len(&self) -> usize {
        let (left, _) = self.input.size_hint();
        let share = (left / (4 * self.workers)).max(1);
        if left > 0 {
            self.group.min(share)
        } else {
            self.group
        }
    }

    /// Learns from a group of `n` items that took `ns` of work and whose
    /// archive was `bytes` long.
    fn adapt(&mut self, n: u64, ns: u64, bytes: u64) {
        if !self.grouping {
            return;
        }
        let per_item = (ns / n.max(1)).max(1);
        let fits = (GROUP_WORK.as_nanos() as u64 / per_item).clamp(1, MAX_GROUP as u64) as usize;
        let mut next = fits.min(self.group.saturating_mul(2)).max(1);
        if bytes >= GROUP_BYTES {
            next = next.min(self.group.div_ceil(2)).max(1);
        }
        self.group = next;
    }

    /// Submits as many groups as the queue takes right now; waits for room
    /// (until `deadline`) only when this map has nothing in flight (other
    /// users fill the queue).
    fn feed(&mut self, deadline: Deadline) -> Result<(), Error> {
        while !self.input_done {
            let deadline = if self.outstanding == 0 { deadline } else { Deadline::now() };
            let room = self.inner.reserve(MAP_BATCH, deadline)?;
            if room == 0 {
                return Ok(());
            }
            let inner: &Workers = self.inner;
            // Unused reservations go back on every way out, panics included.
            let mut reservation = Reservation::new(inner, room);
            // Frames encoded but not yet pushed: their blocks are freed if
            // the input iterator or an archive panics before the push.
            let mut hdrs = Staged::new(&inner.seg, room);
            let mut lens = [0usize; MAP_BATCH];
            let mut sizes = [0u64; MAP_BATCH];
            while hdrs.len() < room && !self.input_done {
                let want = self.next_group_len();
                let mut items = Vec::with_capacity(want);
                while items.len() < want {
                    match self.input.next() {
                        Some(item) => items.push(item),
                        None => {
                            self.input_done = true;
                            break;
                        }
                    }
                }
                if items.is_empty() {
                    break;
                }
                let (first, n) = (self.submitted, items.len() as u64);
                self.submitted += n;
                match self.inner.frame(self.stream, first, self.func, self.tramp, &items, &mut self.scratch) {
                    Ok(frame) => {
                        let k = hdrs.len();
                        lens[k] = self.staged.fill(k, frame.inline());
                        sizes[k] = n;
                        hdrs.push(frame.hdr);
                    }
                    Err(e) => self.fail_all(first, n, &e),
                }
            }
            let staged = &self.staged;
            let hdrs = hdrs.handed_over();
            let pushed = inner.push_frames(&hdrs, |k| &staged.slot(k)[..lens[k]]);
            let sent = match &pushed {
                Ok(()) => hdrs.len(),
                Err((sent, _)) => *sent,
            };
            reservation.left -= sent;
            drop(reservation);
            for (h, &n) in hdrs[..sent].iter().zip(&sizes) {
                self.groups.insert(h.seq, n);
                self.pending_mark(h.seq + n - 1);
            }
            self.outstanding += sent as u64;
            if let Err((_, e)) = pushed {
                let err = to_task_error(e);
                for (h, &n) in hdrs[sent..].iter().zip(&sizes[sent..]) {
                    self.fail_all(h.seq, n, &err);
                }
                self.input_done = true;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Takes a group's answer: its items' results, and what it teaches
    /// about the work.
    fn receive(&mut self, hdr: &FrameHeader, answer: Answer<R>) {
        let Some(n) = self.groups.remove(&hdr.seq) else { return };
        self.outstanding = self.outstanding.saturating_sub(1);
        match answer {
            Ok(items) => {
                self.adapt(n, hdr.check, hdr.len);
                let got = items.len() as u64;
                for (seq, item) in (hdr.seq..).zip(items.into_iter().take(n as usize)) {
                    if self.mark_done(seq) {
                        self.place(seq, item.map_err(|message| TaskError::Panicked { message }));
                    }
                }
                if got < n {
                    let short = TaskError::Decode(format!("a group of {n} items answered {got}"));
                    self.fail_all(hdr.seq + got, n - got, &short);
                }
            }
            Err(e) => self.fail_all(hdr.seq, n, &e),
        }
    }

    fn take_ready(&mut self) -> Option<Result<R, TaskError>> {
        if self.ordered {
            if matches!(self.slots.front(), Some(Some(_))) {
                self.yielded += 1;
                return self.slots.pop_front().flatten();
            }
            None
        } else {
            let r = self.ready.pop_front()?;
            self.yielded += 1;
            Some(r)
        }
    }
}

impl<'p, I, R> MapIter<'p, I, R>
where
    I: Iterator,
    I::Item: Message,
    R: Message,
{
    /// One step of the map, waiting until `deadline`: `Done(Some(r))` the
    /// next result, `Done(None)` the end, `Again(on)` nothing before the
    /// deadline (waiting for a result of this map, or for room to send).
    /// The iterator waits with no deadline; the stream polls with a due one.
    fn advance(&mut self, deadline: Deadline) -> Advance<Result<R, TaskError>> {
        loop {
            if let Some(r) = self.take_ready() {
                return Advance::Done(Some(r));
            }
            if let Err(e) = self.feed(deadline) {
                // Nothing more can be submitted: the rest of the input fails.
                self.input_done = true;
                let seq = self.submitted;
                self.submitted += 1;
                self.mark_done(seq);
                self.place(seq, Err(to_task_error(e)));
                continue;
            }
            if let Some(r) = self.take_ready() {
                // A group that could not be archived is answered at once.
                return Advance::Done(Some(r));
            }
            if self.outstanding == 0 {
                if self.input_done && self.yielded >= self.submitted {
                    return Advance::Done(None);
                }
                if deadline.passed() {
                    // The queue had no room for a first group.
                    return Advance::Again(ParkOn::Room);
                }
                continue;
            }
            let mut got: Vec<(FrameHeader, Answer<R>)> = Vec::new();
            let res = self.inner.recv(Some(self.stream), deadline, &mut |hdr: &FrameHeader, bytes: &[u8]| {
                got.push((*hdr, wire::decode_result::<Vec<GroupItem<R>>>(hdr.status, bytes)));
            });
            for (hdr, answer) in got {
                self.receive(&hdr, answer);
            }
            match res {
                Err(RecvError::Timeout) if deadline != Deadline::NEVER => {
                    if let Some(r) = self.take_ready() {
                        return Advance::Done(Some(r));
                    }
                    return Advance::Again(ParkOn::Stream(self.stream));
                }
                Err(RecvError::Gone | RecvError::Timeout) => {
                    // Every worker is gone: what is outstanding will never come.
                    let missing = self.submitted - self.done_base;
                    self.fail_all(self.done_base, missing, &TaskError::PoolGone);
                    self.groups.clear();
                    self.outstanding = 0;
                    self.input_done = true;
                }
                Ok(_) => {}
            }
        }
    }

    /// The results as a [`Stream`](futures_core::Stream), for async code:
    /// the same map, polled (see [`MapStream`]).
    pub fn into_stream(self) -> MapStream<'p, I, R> {
        MapStream { map: self, retried: false }
    }
}

impl<I, R> Iterator for MapIter<'_, I, R>
where
    I: Iterator,
    I::Item: Message,
    R: Message,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.advance(Deadline::NEVER) {
            Advance::Done(r) => r,
            // Unreachable with no deadline; the end, should it ever be.
            Advance::Again(_) => None,
        }
    }
}

/// A map's results as a [`Stream`](futures_core::Stream), from
/// [`MapIter::into_stream`]: in input order for `map`, in completion order
/// for `map_unordered`, grouped and re-run exactly as the iterator's.
///
/// A poll sends what the queue takes, takes the results that are there,
/// spins as a blocking wait would (see [`Ticket`](crate::Ticket)'s "As a
/// future"), and then parks the task until a result of this map (or room in
/// the queue) comes. Dropping the stream discards the results still to come.
pub struct MapStream<'p, I: Iterator, R> {
    map: MapIter<'p, I, R>,
    /// Parked on room and tried once more since (room that came in between
    /// wakes nobody).
    retried: bool,
}

impl<I: Iterator, R> fmt::Debug for MapStream<'_, I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MapStream").field(&self.map).finish()
    }
}

// Nothing in a map is pinned structurally: the stream moves its fields freely.
impl<I: Iterator, R> Unpin for MapStream<'_, I, R> {}

impl<I, R> futures_core::Stream for MapStream<'_, I, R>
where
    I: Iterator,
    I::Item: Message,
    R: Message,
{
    type Item = Result<R, TaskError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // One spin per poll at most: a ring another thread is draining can
        // look ready to us again and again.
        let mut spun = false;
        loop {
            let on = match this.map.advance(Deadline::now()) {
                Advance::Done(r) => {
                    this.retried = false;
                    return Poll::Ready(r);
                }
                Advance::Again(on) => on,
            };
            match on {
                ParkOn::Stream(_) if !spun => {
                    spun = true;
                    this.map.inner.spin_for_results();
                }
                ParkOn::Stream(_) => {
                    if this.map.inner.park(on, cx.waker()) {
                        return Poll::Pending;
                    }
                }
                ParkOn::Room if this.retried => return Poll::Pending,
                ParkOn::Room => {
                    this.map.inner.park(on, cx.waker());
                    this.retried = true;
                }
            }
        }
    }
}

impl<I: Iterator, R> Drop for MapIter<'_, I, R> {
    fn drop(&mut self) {
        // Results still to come, and duplicates of ones taken, are discarded.
        self.inner.abandon(self.stream);
    }
}
