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
use crate::sync::SpinPolicy;
use crate::sys::process;
use crate::wait::reactor::Parked;
use crate::wait::Deadline;

/// How often a waiting pop looks for items of dead consumers to requeue.
const REAP_EVERY: Duration = Duration::from_millis(100);

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
    end: End,
    spin: SpinPolicy,
    _type: PhantomData<fn() -> T>,
}

/// Where a queue's items are: in this host's segment, or (feature `net`)
/// at the host that serves it.
enum End {
    Local(Local),
    #[cfg(feature = "net")]
    Remote(Arc<crate::net::QueueProxy>),
}

/// A handle on this host's segment of the queue.
struct Local {
    shared: Arc<Shared>,
    /// This process's consumer slot, taken at the first pop.
    consumer: OnceLock<usize>,
    /// This process's producer slot (its loans), taken at the first push.
    producer: OnceLock<usize>,
    /// Threads sharing this handle take turns at ring operations that
    /// record a claim (one record per slot: see `Shared::turn`).
    pop_turn: std::sync::Mutex<()>,
    push_turn: std::sync::Mutex<()>,
    /// The server of this queue to other hosts (`serve`): stops when the
    /// handle drops.
    #[cfg(feature = "net")]
    home: Option<crate::net::QueueHome>,
}

/// What a push writes: a value to archive, or an archive received from
/// the network (already checked).
enum Source<'a, T: Payload> {
    Value(&'a T::Input),
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    Archive(&'a [u8]),
}

impl<T: Payload> Source<'_, T> {
    fn len(&self) -> Result<usize, TopicError> {
        match self {
            Source::Value(v) => T::encoded_len(v).map_err(TopicError::Encode),
            Source::Archive(b) => Ok(b.len()),
        }
    }

    fn write(&self, dst: &mut [u8]) -> Result<(), TopicError> {
        match self {
            Source::Value(v) => T::encode(v, dst).map(|_| ()).map_err(TopicError::Encode),
            Source::Archive(b) => {
                dst.copy_from_slice(b);
                Ok(())
            }
        }
    }
}

impl<T: Payload> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.end {
            End::Local(l) => f.debug_struct("Queue").field("name", &l.shared.name).field("len", &self.len()).finish(),
            #[cfg(feature = "net")]
            End::Remote(p) => f.debug_struct("Queue").field("remote", p).finish(),
        }
    }
}

/// Options for a new queue (they apply when this call creates it).
#[derive(Debug, Clone)]
pub struct QueueBuilder<T: Payload> {
    name: String,
    shape: Shape,
    #[cfg(feature = "net")]
    network: Option<(crate::net::Session, Role)>,
    _type: PhantomData<fn() -> T>,
}

/// This host's part in a queue across hosts.
#[cfg(feature = "net")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The queue's items live here; other hosts reach them through us.
    Home,
    /// The queue's items live at the host that serves it.
    Proxy,
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

    /// Serves the queue to other hosts through `session` (feature `net`):
    /// its items live in this host's segment, and hosts that open it with
    /// [`network`](Self::network) push into it and pop from it over the
    /// network. One host serves a queue (one process of that host does the
    /// serving; another of its processes that asked takes over if it dies).
    ///
    /// An item a remote consumer took is held for it until it acks; if its
    /// session goes (the process died, the link dropped) the item is
    /// queued again, as a dead local consumer's is, and so is everything
    /// leased when the serving process stops. Consumers' presence is zenoh
    /// liveliness, which is not authenticated: a peer that reaches the
    /// port, even without the secret, can keep a dead consumer's presence
    /// key alive, and its items then come back only when serving restarts
    /// (a denial of service, not a way in: no frame of theirs is obeyed).
    #[cfg(feature = "net")]
    pub fn serve(mut self, session: &crate::net::Session) -> Self {
        self.network = Some((session.clone(), Role::Home));
        self
    }

    /// Uses the queue served by another host ([`serve`](Self::serve))
    /// through `session` (feature `net`): `push` and `pop` go to that host
    /// (one network round trip each; items are copied, not shared); the
    /// options above are the serving host's. Opening waits up to 10 s for
    /// that host to be reachable ([`TopicError::NotFound`] if no host
    /// serves the queue) and checks the type
    /// ([`TopicError::TypeMismatch`]).
    #[cfg(feature = "net")]
    pub fn network(mut self, session: &crate::net::Session) -> Self {
        self.network = Some((session.clone(), Role::Proxy));
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
        #[cfg(feature = "net")]
        if let Some((session, Role::Proxy)) = &self.network {
            let (fingerprint, label) = self.shape.type_fingerprint::<T>();
            let proxy = crate::net::QueueProxy::open(session, &self.name, fingerprint, &label)?;
            return Ok(Queue { end: End::Remote(proxy), spin: SpinPolicy::DEFAULT, _type: PhantomData });
        }
        super::check_kind("topic", &self.name)?;
        let shared = Shared::attach::<T>(&seg_name, &self.name, KIND_QUEUE, &self.shape, create)?;
        #[allow(unused_mut)]
        let mut queue =
            Queue { end: End::Local(Local::new(Arc::new(shared))), spin: SpinPolicy::DEFAULT, _type: PhantomData };
        #[cfg(feature = "net")]
        if let Some((session, Role::Home)) = &self.network {
            let home = crate::net::serve_queue(queue.another_handle(), session)?;
            if let End::Local(l) = &mut queue.end {
                l.home = Some(home);
            }
        }
        Ok(queue)
    }
}

impl Local {
    fn new(shared: Arc<Shared>) -> Local {
        Local {
            shared,
            consumer: OnceLock::new(),
            producer: OnceLock::new(),
            pop_turn: Default::default(),
            push_turn: Default::default(),
            #[cfg(feature = "net")]
            home: None,
        }
    }

    fn ring(&self) -> &Ring {
        self.shared.ring.as_ref().expect("a queue has its ring (checked at open)")
    }

    fn capacity(&self) -> u64 {
        u64::from(self.shared.header().capacity.load(Ordering::Relaxed))
    }

    fn push_until<T: Payload>(
        &self,
        value: &Source<'_, T>,
        deadline: Deadline,
        spin: SpinPolicy,
    ) -> Result<(), TopicError> {
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
                if !ring.writable().wait_until(full, deadline.instant(), spin, ring.push_spin()) {
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
    fn push_counted<T: Payload>(&self, value: &Source<'_, T>, deadline: Deadline) -> Result<(), TopicError> {
        let shared = &self.shared;
        let producer = self.producer_slot()?;
        let loans = &shared.header().publishers[producer].loans;
        let len = value.len()?;
        let seq = shared.header().next_seq.fetch_add(1, Ordering::Relaxed);
        let off = layout::alloc_sample(&shared.seg, len as u64, seq).map_err(|e| TopicError::Encode(e.to_string()))?;
        // Our reference is recorded as a loan until the queue has its own.
        let Some(at) = layout::record(loans, off) else {
            layout::release(&shared.seg, off);
            return Err(TopicError::TooMany("concurrent pushes of one queue handle (at most MAX_LOANS = 16)"));
        };
        let written = layout::value_ptr(&shared.seg, off)
            .filter(|&(_, n)| n == len)
            .ok_or_else(|| TopicError::Corrupt("a new item is out of bounds".into()))
            .and_then(|(ptr, n)| {
                // SAFETY: the block is ours alone until queued; in bounds
                // (`value_ptr` checked it against the segment).
                let dst = unsafe { std::slice::from_raw_parts_mut(ptr, n) };
                value.write(dst)
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

    fn pop_until<T: Payload>(&self, deadline: Deadline, spin: SpinPolicy) -> Result<Item<T>, TopicError> {
        let c = self.consumer_slot()?;
        let h = self.shared.header();
        let slot = &h.subscribers[c];
        let at = layout::record(&slot.held, RESERVED).ok_or(TopicError::TooMany("items held (at most 64)"))?;
        // Dead consumers' items come back while we wait: look now and then.
        let got = loop {
            let slice = Deadline::after(REAP_EVERY);
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
                pop_ref(self.ring(), &slot.pop_claim, &slot.held[at], d, spin, &taken)
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
        Item::local(Arc::clone(&self.shared), off, at, c)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // The server first: it holds a handle of its own on this queue.
        #[cfg(feature = "net")]
        drop(self.home.take());
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

impl<T: Payload> Queue<T> {
    /// Options for the queue `name`.
    pub fn builder(name: &str) -> QueueBuilder<T> {
        QueueBuilder {
            name: name.to_owned(),
            shape: Shape::default(),
            #[cfg(feature = "net")]
            network: None,
            _type: PhantomData,
        }
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

    /// Another handle on this host's queue (its own producer and consumer
    /// slots), for the server that serves it to other hosts.
    #[cfg(feature = "net")]
    pub(crate) fn another_handle(&self) -> Queue<T> {
        let end = match &self.end {
            End::Local(l) => End::Local(Local::new(Arc::clone(&l.shared))),
            End::Remote(p) => End::Remote(Arc::clone(p)),
        };
        Queue { end, spin: self.spin, _type: PhantomData }
    }

    /// This host's segment of the queue (the serving side of a queue
    /// across hosts; a proxy has none).
    #[cfg(feature = "net")]
    fn local(&self) -> Result<&Local, TopicError> {
        match &self.end {
            End::Local(l) => Ok(l),
            End::Remote(_) => Err(TopicError::Config("a queue opened with `network` is served by another host")),
        }
    }

    /// Becomes the process that serves this host's queue to the network,
    /// if none does (or it died).
    #[cfg(feature = "net")]
    pub(crate) fn claim_home(&self) -> bool {
        self.local().is_ok_and(|l| l.shared.claim_bridge())
    }

    /// Stops being the process that serves this host's queue.
    #[cfg(feature = "net")]
    pub(crate) fn release_home(&self) {
        if let Ok(l) = self.local() {
            l.shared.release_bridge();
        }
    }

    /// The fingerprint and label of the type this host's queue carries.
    #[cfg(feature = "net")]
    pub(crate) fn type_of(&self) -> Result<(u64, String), TopicError> {
        let l = self.local()?;
        Ok((l.shared.type_fingerprint(), l.shared.type_label()))
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        match &self.end {
            End::Local(l) => &l.shared.name,
            #[cfg(feature = "net")]
            End::Remote(p) => p.name(),
        }
    }

    /// Items queued now (not taken by a consumer). For a queue served by
    /// another host, that host's count as it answers within a second (0 if
    /// it does not).
    pub fn len(&self) -> usize {
        match &self.end {
            End::Local(l) => l.shared.header().queued.load(Ordering::Relaxed) as usize,
            #[cfg(feature = "net")]
            End::Remote(p) => p.len(),
        }
    }

    /// Whether no item is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `value`, waiting while the queue is full.
    pub fn push(&self, value: &T::Input) -> Result<(), TopicError> {
        self.push_until(&Source::Value(value), Deadline::NEVER)
    }

    /// Queues `value`, waiting at most `timeout` for room: [`TopicError::Full`]
    /// then (the value was borrowed: it is still yours).
    pub fn push_timeout(&self, value: &T::Input, timeout: Duration) -> Result<(), TopicError> {
        self.push_until(&Source::Value(value), deadline(timeout))
    }

    /// Queues `value` only if there is room now (`Full` if not).
    pub fn try_push(&self, value: &T::Input) -> Result<(), TopicError> {
        self.push_until(&Source::Value(value), Deadline::now())
    }

    /// [`Queue::push`] as a future (the same wait, polled; see
    /// [`Ticket`](crate::Ticket)'s "As a future").
    pub fn push_async<'a>(&'a self, value: &'a T::Input) -> impl Future<Output = Result<(), TopicError>> + 'a {
        self.push_source_async(Source::Value(value))
    }

    /// Queues an archive received from the network (checked), as a future.
    #[cfg(feature = "net")]
    pub(crate) fn push_archive_async<'a>(
        &'a self,
        archive: &'a [u8],
    ) -> impl Future<Output = Result<(), TopicError>> + 'a {
        self.push_source_async(Source::Archive(archive))
    }

    // Without feature `net` a queue is always local: one arm.
    #[cfg_attr(not(feature = "net"), allow(clippy::infallible_destructuring_match))]
    fn push_source_async<'a>(&'a self, value: Source<'a, T>) -> impl Future<Output = Result<(), TopicError>> + 'a {
        let mut parked = Parked::default();
        #[cfg(feature = "net")]
        let mut remote = None;
        std::future::poll_fn(move |cx| {
            let l = match &self.end {
                End::Local(l) => l,
                #[cfg(feature = "net")]
                End::Remote(p) => {
                    let start = || encode_aligned(&value).and_then(|bytes| p.start_push(&bytes, Deadline::NEVER));
                    return crate::net::poll_call(&mut remote, cx, start, |call, cx| p.poll_push(call, cx));
                }
            };
            let attempt = || match l.push_until(&value, Deadline::now(), self.spin) {
                Err(TopicError::Full) => None,
                done => Some(done),
            };
            if let Some(done) = attempt() {
                return Poll::Ready(done);
            }
            // Room: a place in the bound (pops notify `writable` after they
            // give theirs back; see `pop_until`).
            let shared = Arc::clone(&l.shared);
            let cap = l.capacity();
            let room = move || shared.header().queued.load(Ordering::Relaxed) < cap;
            parked.park(cx, &l.shared.seg, l.ring().writable(), None, room, attempt)
        })
    }

    fn push_until(&self, value: &Source<'_, T>, deadline: Deadline) -> Result<(), TopicError> {
        match &self.end {
            End::Local(l) => l.push_until(value, deadline, self.spin),
            #[cfg(feature = "net")]
            End::Remote(p) => p.push(&encode_aligned(value)?, deadline),
        }
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

    /// Takes an item if one is queued now (`Timeout` if not). For a queue
    /// served by another host, "now" is as that host answers.
    pub fn try_pop(&self) -> Result<Item<T>, TopicError> {
        self.pop_until(Deadline::now())
    }

    /// [`Queue::pop`] as a future. Dropping it loses no item.
    // Without feature `net` a queue is always local: one arm.
    #[cfg_attr(not(feature = "net"), allow(clippy::infallible_destructuring_match))]
    pub fn pop_async(&self) -> impl Future<Output = Result<Item<T>, TopicError>> + '_ {
        let mut parked = Parked::default();
        let mut reaped = std::time::Instant::now();
        #[cfg(feature = "net")]
        let mut remote = None;
        std::future::poll_fn(move |cx| {
            let l = match &self.end {
                End::Local(l) => l,
                #[cfg(feature = "net")]
                End::Remote(p) => {
                    let start = || p.start_pop(Deadline::NEVER);
                    return crate::net::poll_call(&mut remote, cx, start, |call, cx| p.poll_pop(call, cx))
                        .map(|got| got.and_then(|leased| Item::remote(leased, p)));
                }
            };
            // Dead consumers' items come back while we wait, as in the
            // blocking form: reaped at the reactor's rechecks.
            if reaped.elapsed() >= REAP_EVERY {
                l.shared.reap();
                reaped = std::time::Instant::now();
            }
            let attempt = || match l.pop_until(Deadline::now(), self.spin) {
                Err(TopicError::Timeout) => None,
                done => Some(done),
            };
            if let Some(done) = attempt() {
                return Poll::Ready(done);
            }
            let r = l.ring().clone();
            let ring = l.ring().readable();
            parked.park(cx, &l.shared.seg, ring, Some(REAP_EVERY), move || r.can_pop(), attempt)
        })
    }

    fn pop_until(&self, deadline: Deadline) -> Result<Item<T>, TopicError> {
        match &self.end {
            End::Local(l) => l.pop_until(deadline, self.spin),
            #[cfg(feature = "net")]
            End::Remote(p) => Item::remote(p.pop(deadline)?, p),
        }
    }
}

/// A value's archive in an aligned buffer, to send to the serving host.
#[cfg(feature = "net")]
fn encode_aligned<T: Payload>(value: &Source<'_, T>) -> Result<rkyv::util::AlignedVec<16>, TopicError> {
    let len = value.len()?;
    let mut buf = rkyv::util::AlignedVec::<16>::with_capacity(len);
    buf.resize(len, 0);
    value.write(&mut buf)?;
    Ok(buf)
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
    held: Held,
    ptr: *const u8,
    len: usize,
    done: bool,
    _type: PhantomData<fn() -> T>,
}

/// Where an item's bytes are, and what its ack or return goes to.
enum Held {
    /// In this host's segment, recorded in the consumer slot's `held[at]`.
    Local { shared: Arc<Shared>, off: u64, at: usize, slot: usize },
    /// Copied from the serving host, which holds it for us under `lease`.
    #[cfg(feature = "net")]
    Remote { leased: crate::net::Leased, proxy: Arc<crate::net::QueueProxy> },
}

// SAFETY: the item's bytes are immutable while it is held (written before
// it was queued, or copied into the item's own buffer) and their memory is
// kept by `held` (the segment's mapping, or the buffer).
unsafe impl<T: Payload> Send for Item<T> {}
// SAFETY: as for `Send`; the view handed out must itself be shareable.
unsafe impl<T: Payload> Sync for Item<T> where T::View: Sync {}

impl<T: Payload> fmt::Debug for Item<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Item").field("seq", &self.seq()).field("len", &self.len).finish()
    }
}

impl<T: Payload> Item<T> {
    /// The item at `off`, recorded in consumer slot `slot`'s `held[at]`,
    /// once its bytes pass `T::check`.
    fn local(shared: Arc<Shared>, off: u64, at: usize, slot: usize) -> Result<Item<T>, TopicError> {
        let Some((ptr, len)) = layout::value_ptr(&shared.seg, off) else {
            layout::unrecord(&shared.header().subscribers[slot].held, at, off.max(2));
            return Err(TopicError::Invalid("a queue entry names no item".into()));
        };
        let mut item: Item<T> =
            Item { held: Held::Local { shared, off, at, slot }, ptr, len, done: false, _type: PhantomData };
        if let Err(e) = T::check(item.bytes()) {
            // Invalid: nobody can use it; acked so it is freed, not requeued.
            item.finish(true);
            return Err(TopicError::Invalid(e));
        }
        Ok(item)
    }

    /// An item the serving host leased us: checked here too (the bytes
    /// crossed the network; a corrupt one is acked there, so it is not
    /// handed to anyone else).
    #[cfg(feature = "net")]
    fn remote(leased: crate::net::Leased, proxy: &Arc<crate::net::QueueProxy>) -> Result<Item<T>, TopicError> {
        let (ptr, len) = (leased.bytes().as_ptr(), leased.bytes().len());
        let checked = T::check(leased.bytes());
        let mut item: Item<T> =
            Item { held: Held::Remote { leased, proxy: Arc::clone(proxy) }, ptr, len, done: false, _type: PhantomData };
        if let Err(e) = checked {
            item.finish(true);
            return Err(TopicError::Invalid(e));
        }
        Ok(item)
    }

    /// The item's sequence number (the order producers queued in).
    pub fn seq(&self) -> u64 {
        match &self.held {
            Held::Local { shared, off, .. } => {
                layout::sample(&shared.seg, *off).map_or(0, |h| h.seq.load(Ordering::Relaxed))
            }
            #[cfg(feature = "net")]
            Held::Remote { leased, .. } => leased.seq(),
        }
    }

    /// The value's bytes.
    pub fn bytes(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: validated, in bounds, immutable while held (the segment's
        // mapping or the leased buffer, both kept by `self.held`).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Done with the item: it is freed and never delivered again. (An item
    /// of a queue served by another host: the ack is one frame to that
    /// host; if the link or the serving process goes before it arrives,
    /// the item is delivered again: at least once.)
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
        let (shared, off, at, slot) = match &self.held {
            Held::Local { shared, off, at, slot } => (shared, *off, *at, *slot),
            #[cfg(feature = "net")]
            Held::Remote { leased, proxy } => return proxy.finish(leased, ack),
        };
        let held = &shared.header().subscribers[slot].held;
        if ack {
            // The record first: killed in between, the item leaks rather
            // than being freed twice.
            layout::unrecord(held, at, off);
            layout::release(&shared.seg, off);
        } else {
            // A reference for the queue, queued first; then ours goes.
            // Killed in between, the item is queued twice with a reference
            // each (the cleaner requeues our record too): delivered twice,
            // freed once, never lost.
            layout::retain(&shared.seg, off);
            let me = &shared.header().subscribers[slot];
            let _turn = Shared::turn(&shared.nack_turn);
            shared.requeue(off, Some(&me.push_claim));
            layout::unrecord(held, at, off);
            layout::release(&shared.seg, off);
        }
        free_if_retired(&shared.header().subscribers[slot]);
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
