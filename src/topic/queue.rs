//! Work queues by name: each item to exactly one consumer while consumers
//! live; an item a consumer took and had not acknowledged when it died goes
//! to another (at least once, as a pool re-runs a dead worker's task).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use super::layout::{self, ACTIVE, CLEANING, FREE, KIND_QUEUE, RETIRING};
use super::members::{claim_slot, encode_ref, Shared, SHARED_RING};
use super::subscriber::{pop_ref, RESERVED};
use super::{deadline, Payload, Shape, TopicError};
use crate::ring::Ring;
use crate::segment::Segment;
use crate::sync::SpinPolicy;
use crate::sys::process;
use crate::wait::reactor::Parked;
use crate::wait::Deadline;

/// A named, bounded MPMC work queue: any process pushes, any process pops,
/// each item to one consumer. `push` and `pop` take `&self`.
///
/// ```no_run
/// use shmpool::topic::Queue;
/// # fn main() -> Result<(), shmpool::topic::TopicError> {
/// let jobs = Queue::<u64>::builder("render/jobs").capacity(1024).open_or_create()?;
/// jobs.push(&7)?;
/// let item = jobs.pop()?;
/// assert_eq!(*item, 7);
/// item.ack();
/// # Ok(()) }
/// ```
pub struct Queue<T: Payload> {
    shared: Arc<Shared>,
    /// This process's consumer slot, taken at the first pop.
    consumer: OnceLock<usize>,
    /// This process's producer slot (its loans), taken at the first push.
    producer: OnceLock<usize>,
    /// Threads sharing this handle take turns at ring operations that
    /// record a claim (one record per slot: see `Shared::turn`).
    pop_turn: std::sync::Mutex<()>,
    push_turn: std::sync::Mutex<()>,
    spin: SpinPolicy,
    _type: PhantomData<fn() -> T>,
}

impl<T: Payload> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("name", &self.shared.name).field("len", &self.len()).finish()
    }
}

/// Options for a new queue (they apply when this call creates it).
#[derive(Debug, Clone)]
pub struct QueueBuilder<T: Payload> {
    name: String,
    shape: Shape,
    _type: PhantomData<fn() -> T>,
}

impl<T: Payload> QueueBuilder<T> {
    /// The most items queued at once (1..=2^20; default 1024).
    pub fn capacity(mut self, n: u32) -> Self {
        self.shape.capacity = n;
        self
    }

    /// The segment's size (default 64 MiB; pages are only used as touched).
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.shape.segment_size = bytes;
        self
    }

    /// Names the type explicitly (see [`TopicBuilder::type_name`](super::TopicBuilder::type_name)).
    pub fn type_name(mut self, name: &str) -> Self {
        self.shape.type_name = Some(name.to_owned());
        self
    }

    /// Opens the queue, creating it if it does not exist.
    pub fn open_or_create(self) -> Result<Queue<T>, TopicError> {
        self.attach(true)
    }

    /// Opens the existing queue (`NotFound` if there is none).
    pub fn open(self) -> Result<Queue<T>, TopicError> {
        self.attach(false)
    }

    fn attach(self, create: bool) -> Result<Queue<T>, TopicError> {
        if !(1..=1 << 20).contains(&self.shape.capacity) {
            return Err(TopicError::Config("capacity must be between 1 and 2^20"));
        }
        let seg_name = super::segment_name("queue", &self.name)?;
        super::check_kind("topic", &self.name)?;
        let shared = Shared::attach::<T>(&seg_name, &self.name, KIND_QUEUE, &self.shape, create)?;
        Ok(Queue {
            shared: Arc::new(shared),
            consumer: OnceLock::new(),
            producer: OnceLock::new(),
            pop_turn: Default::default(),
            push_turn: Default::default(),
            spin: SpinPolicy::DEFAULT,
            _type: PhantomData,
        })
    }
}

impl<T: Payload> Queue<T> {
    /// Options for the queue `name`.
    pub fn builder(name: &str) -> QueueBuilder<T> {
        QueueBuilder { name: name.to_owned(), shape: Shape::default(), _type: PhantomData }
    }

    /// Opens the existing queue `name`.
    pub fn open(name: &str) -> Result<Queue<T>, TopicError> {
        Queue::builder(name).open()
    }

    /// Waits with `spin` instead of the default.
    pub fn with_spin(mut self, spin: SpinPolicy) -> Self {
        self.spin = spin;
        self
    }

    fn ring(&self) -> &Ring {
        self.shared.ring.as_ref().expect("a queue has its ring (checked at open)")
    }

    fn capacity(&self) -> u64 {
        u64::from(self.shared.header().capacity.load(Ordering::Relaxed))
    }

    /// Items queued now (not taken by a consumer).
    pub fn len(&self) -> usize {
        self.shared.header().queued.load(Ordering::Relaxed) as usize
    }

    /// Whether no item is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `value`, waiting while the queue is full.
    pub fn push(&self, value: &T::Input) -> Result<(), TopicError> {
        self.push_until(value, Deadline::NEVER)
    }

    /// Queues `value`, waiting at most `timeout` for room: [`TopicError::Full`]
    /// then (the value was borrowed: it is still yours).
    pub fn push_timeout(&self, value: &T::Input, timeout: Duration) -> Result<(), TopicError> {
        self.push_until(value, deadline(timeout))
    }

    /// Queues `value` only if there is room now (`Full` if not).
    pub fn try_push(&self, value: &T::Input) -> Result<(), TopicError> {
        self.push_until(value, Deadline::now())
    }

    /// [`Queue::push`] as a future (the same wait, polled; see
    /// [`Ticket`](crate::Ticket)'s "As a future").
    pub fn push_async<'a>(&'a self, value: &'a T::Input) -> impl Future<Output = Result<(), TopicError>> + 'a {
        let mut parked = Parked::default();
        std::future::poll_fn(move |cx| {
            let attempt = || match self.push_until(value, Deadline::now()) {
                Err(TopicError::Full) => None,
                done => Some(done),
            };
            if let Some(done) = attempt() {
                return Poll::Ready(done);
            }
            // Room: a place in the bound (pops notify `writable` after they
            // give theirs back; see `pop_until`).
            let shared = Arc::clone(&self.shared);
            let cap = self.capacity();
            let room = move || shared.header().queued.load(Ordering::Relaxed) < cap;
            parked.park(cx, &self.shared.seg, self.ring().writable(), None, room, attempt)
        })
    }

    fn push_until(&self, value: &T::Input, deadline: Deadline) -> Result<(), TopicError> {
        let h = self.shared.header();
        let cap = self.capacity();
        // A place in the bound first (given back if anything fails after).
        let room =
            || h.queued.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |q| (q < cap).then_some(q + 1)).is_ok();
        if !room() {
            let full = || h.queued.load(Ordering::Relaxed) < cap;
            let ring = self.ring();
            let mut got = false;
            // Pops notify the ring's `writable` event: room may have come.
            while !got {
                if !ring.writable().wait_until(full, deadline.instant(), self.spin, ring.push_spin()) {
                    return Err(TopicError::Full);
                }
                got = room();
            }
        }
        let pushed = self.push_counted(value, deadline);
        if pushed.is_err() {
            h.queued.fetch_sub(1, Ordering::AcqRel);
            // A pusher may be waiting for the place this gives back.
            self.ring().writable().notify();
        }
        pushed
    }

    /// Writes and queues one item whose place in the bound is taken.
    fn push_counted(&self, value: &T::Input, deadline: Deadline) -> Result<(), TopicError> {
        let shared = &self.shared;
        let producer = self.producer_slot()?;
        let loans = &shared.header().publishers[producer].loans;
        let len = T::encoded_len(value).map_err(TopicError::Encode)?;
        let seq = shared.header().next_seq.fetch_add(1, Ordering::Relaxed);
        let off = layout::alloc_sample(&shared.seg, len as u64, seq).map_err(|e| TopicError::Encode(e.to_string()))?;
        // Our reference is recorded as a loan until the queue has its own.
        let Some(at) = layout::record(loans, off) else {
            layout::release(&shared.seg, off);
            return Err(TopicError::TooMany("concurrent pushes of one queue handle (at most MAX_LOANS = 16)"));
        };
        let written = layout::value_ptr(&shared.seg, off)
            .ok_or_else(|| TopicError::Corrupt("a new item is out of bounds".into()))
            .and_then(|(ptr, n)| {
                // SAFETY: the block is ours alone until queued; in bounds.
                let dst = unsafe { std::slice::from_raw_parts_mut(ptr, n) };
                T::encode(value, dst).map_err(TopicError::Encode)
            });
        let pushed = written.and_then(|_| {
            layout::retain(&shared.seg, off);
            let me = &shared.header().publishers[producer];
            me.claim_ring.store(SHARED_RING, Ordering::Relaxed);
            let _turn = Shared::turn(&self.push_turn);
            shared.push_item(Some(&me.push_claim), encode_ref(off, seq), deadline).map_err(|e| {
                layout::release(&shared.seg, off);
                match e {
                    crate::ring::RingError::Timeout => TopicError::Full,
                    e => TopicError::Corrupt(format!("the item ring refused an item: {e}")),
                }
            })
        });
        layout::unrecord(loans, at, off);
        layout::release(&shared.seg, off);
        pushed
    }

    fn producer_slot(&self) -> Result<usize, TopicError> {
        if let Some(&s) = self.producer.get() {
            return Ok(s);
        }
        let slots = &self.shared.header().publishers;
        let s = claim_slot(slots.iter().map(|p| &p.pid), "producers")?;
        let kept = *self.producer.get_or_init(|| s);
        if kept != s {
            // Another thread of this handle took one first: ours goes back.
            slots[s].pid.store(0, Ordering::Release);
        }
        Ok(kept)
    }

    fn consumer_slot(&self) -> Result<usize, TopicError> {
        if let Some(&s) = self.consumer.get() {
            return Ok(s);
        }
        self.shared.reap();
        let h = self.shared.header();
        let s = claim_slot(h.subscribers.iter().map(|p| &p.pid), "consumers")?;
        let kept = *self.consumer.get_or_init(|| s);
        if kept == s {
            h.subscribers[s].state.store(ACTIVE, Ordering::Release);
        } else {
            // Another thread of this handle took one first: ours goes back.
            h.subscribers[s].pid.store(0, Ordering::Release);
        }
        Ok(kept)
    }

    /// Takes the next item, waiting for one. Acknowledge it with
    /// [`Item::ack`] once done; an item dropped without an ack goes back
    /// to the queue, and one held by a consumer that dies goes to another.
    pub fn pop(&self) -> Result<Item<T>, TopicError> {
        self.pop_until(Deadline::NEVER)
    }

    /// Takes the next item, waiting at most `timeout` (`Timeout` then).
    pub fn pop_timeout(&self, timeout: Duration) -> Result<Item<T>, TopicError> {
        self.pop_until(deadline(timeout))
    }

    /// Takes an item if one is queued now (`Timeout` if not).
    pub fn try_pop(&self) -> Result<Item<T>, TopicError> {
        self.pop_until(Deadline::now())
    }

    /// [`Queue::pop`] as a future. Dropping it loses no item.
    pub fn pop_async(&self) -> impl Future<Output = Result<Item<T>, TopicError>> + '_ {
        let mut parked = Parked::default();
        std::future::poll_fn(move |cx| {
            let attempt = || match self.pop_until(Deadline::now()) {
                Err(TopicError::Timeout) => None,
                done => Some(done),
            };
            if let Some(done) = attempt() {
                return Poll::Ready(done);
            }
            let r = self.ring().clone();
            let ring = self.ring().readable();
            parked.park(cx, &self.shared.seg, ring, Some(Duration::from_millis(100)), move || r.can_pop(), attempt)
        })
    }

    fn pop_until(&self, deadline: Deadline) -> Result<Item<T>, TopicError> {
        let c = self.consumer_slot()?;
        let h = self.shared.header();
        let slot = &h.subscribers[c];
        let at = layout::record(&slot.held, RESERVED).ok_or(TopicError::TooMany("items held (at most 64)"))?;
        // Dead consumers' items come back while we wait: look now and then.
        let got = loop {
            let slice = Deadline::after(Duration::from_millis(100));
            let d = match (deadline.instant(), slice.instant()) {
                (Some(a), Some(b)) if a < b => deadline,
                _ => slice,
            };
            let taken = || {
                // Before the item is recorded as held: killed in between, the
                // cleaner requeues it from the claimed slot (and counts it).
                h.queued.fetch_sub(1, Ordering::AcqRel);
            };
            let popped = {
                let _turn = Shared::turn(&self.pop_turn);
                pop_ref(self.ring(), &slot.pop_claim, &slot.held[at], d, self.spin, &taken)
            };
            match popped {
                Err(TopicError::Timeout) if !deadline.passed() => self.shared.reap(),
                other => break other,
            }
        };
        let (off, _) = match got {
            Ok(r) => r,
            Err(e) => {
                layout::unrecord(&slot.held, at, RESERVED);
                return Err(e);
            }
        };
        // The pop notified pushers before it released the slot; the count
        // fell before that (in `taken`), so they see it.
        let item: Item<T> = Item {
            seg: self.shared.seg.clone(),
            shared: Arc::clone(&self.shared),
            off,
            at,
            slot: c,
            ptr: std::ptr::null(),
            len: 0,
            done: false,
            _type: PhantomData,
        };
        item.validate()
    }
}

impl<T: Payload> Drop for Queue<T> {
    fn drop(&mut self) {
        let h = self.shared.header();
        let me = process::current_pid();
        if let Some(&p) = self.producer.get() {
            let _ = h.publishers[p].pid.compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        if let Some(&c) = self.consumer.get() {
            let slot = &h.subscribers[c];
            // Items still held keep their records and the slot: the last of
            // them to be acked or requeued frees it (or it is reclaimed
            // with the process).
            if slot.state.compare_exchange(ACTIVE, RETIRING, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                free_if_retired(slot);
            }
        }
    }
}

/// Frees a consumer slot whose queue was dropped once it holds no item.
fn free_if_retired(slot: &layout::SubSlot) {
    if slot.state.load(Ordering::Acquire) == RETIRING
        && slot.held.iter().all(|x| x.load(Ordering::Acquire) == 0)
        && slot.state.compare_exchange(RETIRING, CLEANING, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    {
        // The state first: a joiner claims the slot by its pid, after this.
        slot.state.store(FREE, Ordering::Release);
        slot.pid.store(0, Ordering::Release);
    }
}

/// An item taken from a [`Queue`], read in place. [`Item::ack`] when done;
/// dropped without an ack, it goes back to the queue for another consumer.
pub struct Item<T: Payload> {
    seg: Segment,
    shared: Arc<Shared>,
    off: u64,
    at: usize,
    slot: usize,
    ptr: *const u8,
    len: usize,
    done: bool,
    _type: PhantomData<fn() -> T>,
}

// SAFETY: the item's bytes are immutable while it is held (written before
// it was queued) and the mapping is kept by `seg`.
unsafe impl<T: Payload> Send for Item<T> {}
// SAFETY: as for `Send`; the view handed out must itself be shareable.
unsafe impl<T: Payload> Sync for Item<T> where T::View: Sync {}

impl<T: Payload> fmt::Debug for Item<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Item").field("offset", &self.off).field("len", &self.len).finish()
    }
}

impl<T: Payload> Item<T> {
    fn validate(mut self) -> Result<Item<T>, TopicError> {
        let Some((ptr, len)) = layout::value_ptr(&self.seg, self.off) else {
            let held = &self.shared.header().subscribers[self.slot].held;
            layout::unrecord(held, self.at, self.off.max(2));
            self.done = true;
            return Err(TopicError::Invalid("a queue entry names no item".into()));
        };
        // SAFETY: in bounds (checked); immutable while held.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        if let Err(e) = T::check(bytes) {
            // Invalid: nobody can use it; acked so it is freed, not requeued.
            self.finish(true);
            return Err(TopicError::Invalid(e));
        }
        self.ptr = ptr;
        self.len = len;
        Ok(self)
    }

    /// The item's sequence number (the order producers queued in).
    pub fn seq(&self) -> u64 {
        layout::sample(&self.seg, self.off).map_or(0, |h| h.seq.load(Ordering::Relaxed))
    }

    /// The value's bytes.
    pub fn bytes(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: validated, in bounds, immutable while held.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Done with the item: it is freed and never delivered again.
    pub fn ack(mut self) {
        self.finish(true);
    }

    /// Gives the item back to the queue for another consumer.
    pub fn nack(mut self) {
        self.finish(false);
    }

    fn finish(&mut self, ack: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let held = &self.shared.header().subscribers[self.slot].held;
        if ack {
            // The record first: killed in between, the item leaks rather
            // than being freed twice.
            layout::unrecord(held, self.at, self.off);
            layout::release(&self.seg, self.off);
        } else {
            // A reference for the queue, queued first; then ours goes.
            // Killed in between, the item is queued twice with a reference
            // each (the cleaner requeues our record too): delivered twice,
            // freed once, never lost.
            layout::retain(&self.seg, self.off);
            let slot = &self.shared.header().subscribers[self.slot];
            let _turn = Shared::turn(&self.shared.nack_turn);
            self.shared.requeue(self.off, Some(&slot.push_claim));
            layout::unrecord(held, self.at, self.off);
            layout::release(&self.seg, self.off);
        }
        free_if_retired(&self.shared.header().subscribers[self.slot]);
    }
}

impl<T: Payload> Deref for Item<T> {
    type Target = T::View;

    fn deref(&self) -> &T::View {
        // SAFETY: `bytes()` passed `T::check` in `validate`.
        unsafe { T::view(self.bytes()) }
    }
}

impl<T: Payload> Drop for Item<T> {
    fn drop(&mut self) {
        self.finish(false);
    }
}
