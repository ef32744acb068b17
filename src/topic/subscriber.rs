//! Subscribing: each subscriber has its own queue of references to shared
//! samples; a received [`Sample`] is read in place and releases its
//! reference when dropped.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::layout::{self, SubSlot, ACTIVE, CLEANING, FREE, JOINING, RETIRING};
use super::members::{claim_slot, decode_ref, drain_refs, Shared};
use super::publisher::HistoryTurn;
use super::{deadline, Overflow, Payload, TopicError};
use crate::ring::{Ring, RingError};
use crate::segment::Segment;
use crate::sync::SpinPolicy;
use crate::wait::reactor::Parked;
use crate::wait::Deadline;

/// A `held` entry reserved by a receive that has not popped yet.
pub(super) const RESERVED: u64 = 1;

/// Receives a topic's samples. `recv` takes `&self`: one subscriber can be
/// shared by threads (each sample goes to one of them).
pub struct Subscriber<T: Payload> {
    shared: Arc<Shared>,
    slot: usize,
    spin: SpinPolicy,
    /// Threads sharing this subscriber pop one at a time (its slot has one
    /// pop claim record).
    turn: std::sync::Mutex<()>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Payload> fmt::Debug for Subscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber").field("topic", &self.shared.name).field("slot", &self.slot).finish()
    }
}

impl<T: Payload> Subscriber<T> {
    pub(super) fn new(shared: Arc<Shared>, overflow: Overflow) -> Result<Subscriber<T>, TopicError> {
        shared.reap();
        let h = shared.header();
        let n = shared.subs.len();
        let slot = claim_slot(h.subscribers[..n].iter().map(|s| &s.pid), "subscribers")?;
        let s = &h.subscribers[slot];
        s.state.store(JOINING, Ordering::Release);
        s.overflow.store(overflow.code(), Ordering::Relaxed);
        s.missed.store(0, Ordering::Relaxed);
        for held in &s.held {
            held.store(0, Ordering::Relaxed);
        }
        let ring = &shared.subs[slot];
        // A sample a publisher pushed for this slot's previous subscriber
        // after it was reclaimed is not ours.
        drain_refs(&shared.seg, ring, &s.pop_claim);
        let sub = Subscriber {
            shared: Arc::clone(&shared),
            slot,
            spin: SpinPolicy::DEFAULT,
            turn: Default::default(),
            _type: PhantomData,
        };
        match shared.ring.as_ref().filter(|_| h.history.load(Ordering::Relaxed) > 0) {
            Some(history) => {
                // Under the history lock no sample is sent: every sample is
                // in the history copy or comes after `ACTIVE`, never both.
                let _turn = HistoryTurn::take(&shared, Deadline::after(Duration::from_secs(5)))?;
                history.peek_all(|b| {
                    if let Some((off, seq)) = decode_ref(b) {
                        if layout::retain(&shared.seg, off)
                            && ring.try_push(&super::members::encode_ref(off, seq)).is_err()
                        {
                            layout::release(&shared.seg, off);
                        }
                    }
                });
                s.state.store(ACTIVE, Ordering::Release);
            }
            None => s.state.store(ACTIVE, Ordering::Release),
        }
        Ok(sub)
    }

    fn slot(&self) -> &SubSlot {
        &self.shared.header().subscribers[self.slot]
    }

    fn ring(&self) -> &Ring {
        &self.shared.subs[self.slot]
    }

    /// Waits with `spin` instead of the default (`SpinPolicy::BUSY_POLL`
    /// never sleeps: see its doc for when that starves).
    pub fn with_spin(mut self, spin: SpinPolicy) -> Self {
        self.spin = spin;
        self
    }

    /// Samples this subscriber lost: dropped from its full queue
    /// ([`Overflow::DropOldest`]) or refused after a race.
    pub fn missed(&self) -> u64 {
        self.slot().missed.load(Ordering::Relaxed)
    }

    /// Samples waiting in this subscriber's queue.
    pub fn pending(&self) -> usize {
        self.ring().len()
    }

    /// Receives the next sample, waiting for it.
    pub fn recv(&self) -> Result<Sample<T>, TopicError> {
        self.recv_until(Deadline::NEVER)
    }

    /// Receives the next sample, waiting at most `timeout` (`Duration::MAX`: no limit).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Sample<T>, TopicError> {
        self.recv_until(deadline(timeout))
    }

    /// Receives a sample if one is there now (`Timeout` if not).
    pub fn try_recv(&self) -> Result<Sample<T>, TopicError> {
        self.recv_until(Deadline::now())
    }

    /// [`Subscriber::recv`] as a future (the same wait, polled; see
    /// [`Ticket`](crate::Ticket)'s "As a future"). Dropping it loses no sample.
    pub fn recv_async(&self) -> impl Future<Output = Result<Sample<T>, TopicError>> + '_ {
        let mut parked = Parked::default();
        std::future::poll_fn(move |cx| {
            let attempt = || match self.recv_until(Deadline::now()) {
                Err(TopicError::Timeout) => None,
                done => Some(done),
            };
            if let Some(done) = attempt() {
                return std::task::Poll::Ready(done);
            }
            let (ring, policy) = (self.ring(), self.spin.for_poll());
            if ring.readable().spin(|| ring.can_pop(), None, policy, ring.pop_spin()) {
                if let Some(done) = attempt() {
                    return std::task::Poll::Ready(done);
                }
            }
            let r = ring.clone();
            parked.park(cx, &self.shared.seg, ring.readable(), None, move || r.can_pop(), attempt)
        })
    }

    fn recv_until(&self, deadline: Deadline) -> Result<Sample<T>, TopicError> {
        let slot = self.slot();
        // A held entry first, so that a sample is never popped with nowhere
        // to record it.
        let at = layout::record(&slot.held, RESERVED).ok_or(TopicError::TooMany("held samples (at most 64)"))?;
        let got = {
            let _turn = Shared::turn(&self.turn);
            pop_ref(self.ring(), &slot.pop_claim, &slot.held[at], deadline, self.spin, &|| {})
        };
        let (off, _seq) = match got {
            Ok(r) => r,
            Err(e) => {
                layout::unrecord(&slot.held, at, RESERVED);
                return Err(e);
            }
        };
        let sample: Sample<T> = Sample {
            seg: self.shared.seg.clone(),
            shared: Arc::clone(&self.shared),
            off,
            at,
            slot: self.slot,
            ptr: std::ptr::null(),
            len: 0,
            _type: PhantomData,
        };
        sample.validate()
    }
}

/// Pops one sample reference from `ring`, recording it in `held` (reserved)
/// before the ring slot is released; waits until `deadline`.
pub(super) fn pop_ref(
    ring: &Ring,
    claim: &AtomicU64,
    held: &AtomicU64,
    deadline: Deadline,
    spin: SpinPolicy,
    taken: &dyn Fn(),
) -> Result<(u64, u64), TopicError> {
    let mut got = None;
    let read = |_: u64, b: &[u8]| {
        if let Some((off, seq)) = decode_ref(b) {
            taken();
            held.store(off.max(2), Ordering::Release);
            got = Some((off, seq));
        }
    };
    let popped = if deadline.passed() {
        ring.try_pop_many_recorded(1, Some(claim), read)
    } else {
        ring.pop_many_recorded(1, deadline.instant(), spin, Some(claim), read)
    };
    match (popped, got) {
        (Ok(_), Some(r)) => Ok(r),
        (Ok(_), None) => Err(TopicError::Corrupt("a queue entry is shorter than a sample reference".into())),
        (Err(RingError::Timeout | RingError::WouldBlock), _) => Err(TopicError::Timeout),
        (Err(e), _) => Err(TopicError::Corrupt(format!("queue: {e}"))),
    }
}

impl<T: Payload> Drop for Subscriber<T> {
    fn drop(&mut self) {
        let slot = self.slot();
        // Publishers stop delivering, then what is queued goes back. Samples
        // still held (received, not dropped) keep the slot's records until
        // they drop; the slot is free for a new subscriber only after that
        // (their `Sample`s keep `shared` alive, not the slot).
        slot.state.store(RETIRING, Ordering::Release);
        drain_refs(&self.shared.seg, self.ring(), &slot.pop_claim);
        slot.missed.store(0, Ordering::Relaxed);
        // SYNC: SeqCst, paired with the one in `Sample::drop`: of our RETIRING
        // store and a sample's record clear, each side sees the other's, so
        // the last of the two frees the slot.
        std::sync::atomic::fence(Ordering::SeqCst);
        let held = slot.held.iter().any(|h| h.load(Ordering::Acquire) != 0);
        if !held && slot.state.compare_exchange(RETIRING, CLEANING, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            slot.state.store(FREE, Ordering::Release);
            slot.pid.store(0, Ordering::Release);
        }
    }
}

/// A received sample, read in place: derefs to `Archived<T>` (validated
/// once, when received) or, for [`Bytes`](super::Bytes), to `[u8]`.
/// Dropping it releases the sample (the last holder frees its block).
pub struct Sample<T: Payload> {
    seg: Segment,
    shared: Arc<Shared>,
    off: u64,
    at: usize,
    slot: usize,
    ptr: *const u8,
    len: usize,
    _type: PhantomData<fn() -> T>,
}

// SAFETY: the sample's bytes are immutable while any holder has it (the
// publisher wrote them before the first reference was pushed), and the
// mapping is kept by `seg`; the pointer is only read through `&self`.
unsafe impl<T: Payload> Send for Sample<T> {}
// SAFETY: as for `Send`: shared reads of immutable bytes, handed out as
// `&T::View`, which must itself be shareable.
unsafe impl<T: Payload> Sync for Sample<T> where T::View: Sync {}

impl<T: Payload> fmt::Debug for Sample<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sample").field("offset", &self.off).field("len", &self.len).finish()
    }
}

impl<T: Payload> Sample<T> {
    /// Checks the reference and the value (hostile bytes); a sample that
    /// fails is released and reported.
    fn validate(mut self) -> Result<Sample<T>, TopicError> {
        let Some((ptr, len)) = layout::value_ptr(&self.seg, self.off) else {
            // Not a sample: nothing to release, only our record.
            layout::unrecord(&self.shared.header().subscribers[self.slot].held, self.at, self.off.max(2));
            self.off = 0;
            return Err(TopicError::Invalid("a queue entry names no sample".into()));
        };
        // SAFETY: in bounds (value_ptr checked); the bytes are immutable
        // while we hold a reference (see the type's Send impl).
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        T::check(bytes).map_err(TopicError::Invalid)?;
        self.ptr = ptr;
        self.len = len;
        Ok(self)
    }

    /// The sample's sequence number in its topic (every sample of a topic
    /// has its own, in the order publishers took them).
    pub fn seq(&self) -> u64 {
        layout::sample(&self.seg, self.off).map_or(0, |h| h.seq.load(Ordering::Relaxed))
    }

    /// Whether a bridge published it, received from another host.
    #[cfg(feature = "net")]
    pub(crate) fn came_from_network(&self) -> bool {
        layout::sample(&self.seg, self.off).is_some_and(|h| h.flags.load(Ordering::Relaxed) & layout::FROM_NETWORK != 0)
    }

    /// The value's bytes (the archive, or the raw bytes).
    pub fn bytes(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: validated and in bounds; immutable while held.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T: Payload> Deref for Sample<T> {
    type Target = T::View;

    fn deref(&self) -> &T::View {
        // SAFETY: `bytes()` passed `T::check` in `validate` (a `Sample` is
        // only handed out after it).
        unsafe { T::view(self.bytes()) }
    }
}

impl<T: Payload> Drop for Sample<T> {
    fn drop(&mut self) {
        if self.off == 0 {
            return;
        }
        let h = self.shared.header();
        let slot = &h.subscribers[self.slot];
        // The record first: killed in between, the sample leaks rather than
        // being released twice.
        layout::unrecord(&slot.held, self.at, self.off.max(2));
        layout::release(&self.seg, self.off);
        // SYNC: SeqCst, paired with the one in `Subscriber::drop`.
        std::sync::atomic::fence(Ordering::SeqCst);
        // The subscriber was dropped while we were held: free its slot when
        // the last held sample goes.
        if slot.state.load(Ordering::Acquire) == RETIRING
            && slot.pid.load(Ordering::Relaxed) == crate::sys::process::current_pid()
            && slot.held.iter().all(|h| h.load(Ordering::Acquire) == 0)
            && slot.state.compare_exchange(RETIRING, CLEANING, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            slot.state.store(FREE, Ordering::Release);
            slot.pid.store(0, Ordering::Release);
        }
    }
}
