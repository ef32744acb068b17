//! Publishing: a sample is written once into an arena block and a
//! reference to it is pushed into every subscriber's queue.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use super::layout::{self, ACTIVE};
use super::members::{claim_slot, encode_ref, pop_ref_now, push_ref, Shared, SHARED_RING};
use super::{deadline, Bytes, Overflow, Payload, TopicError};
use crate::ring::RingError;
use crate::sync::SpinPolicy;
use crate::sys::process;
use crate::wait::reactor::Parked;
use crate::wait::{self, Deadline};

/// How often a blocked publisher looks at the subscriber it waits for.
const CHECK: Duration = Duration::from_millis(50);
/// How soon an async send that found the history lock taken looks again.
const LOCK_RETRY: Duration = Duration::from_millis(1);
/// How many times a `DropOldest` push makes room before it gives up (a
/// subscriber that stopped in the middle of a pop holds the slot).
const DROP_TRIES: u32 = 1000;
/// Every this many sends, a publisher reclaims what dead members held.
const REAP_EVERY: u32 = 1024;

/// Sends samples to a topic's subscribers. `send` takes `&self`: one
/// publisher can be shared by threads.
pub struct Publisher<T: Payload> {
    shared: Arc<Shared>,
    slot: usize,
    sends: AtomicU32,
    /// Threads sharing this publisher send one at a time (its slot has one
    /// record of each ring claim).
    turn: std::sync::Mutex<()>,
    /// How a send waits for room in a `Block` queue.
    spin: SpinPolicy,
    _type: PhantomData<fn() -> T>,
}

impl<T: Payload> fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher").field("topic", &self.shared.name).field("slot", &self.slot).finish()
    }
}

impl<T: Payload> Publisher<T> {
    pub(super) fn new(shared: Arc<Shared>) -> Result<Publisher<T>, TopicError> {
        shared.reap();
        let slot = claim_slot(shared.header().publishers.iter().map(|p| &p.pid), "publishers")?;
        Ok(Publisher {
            shared,
            slot,
            sends: AtomicU32::new(0),
            turn: Default::default(),
            spin: SpinPolicy::DEFAULT,
            _type: PhantomData,
        })
    }

    /// Waits for room in `Block` queues with `spin` instead of the default
    /// (`SpinPolicy::BUSY_POLL` never sleeps: see its doc for when that starves).
    pub fn with_spin(mut self, spin: SpinPolicy) -> Self {
        self.spin = spin;
        self
    }

    /// Sends `value` to every subscriber; returns how many it reached.
    /// With [`Overflow::Block`] subscribers it waits while one's queue is
    /// full (a dead subscriber is reclaimed, not waited for).
    pub fn send(&self, value: &T::Input) -> Result<usize, TopicError> {
        self.send_until(value, Deadline::NEVER)
    }

    /// [`Publisher::send`], waiting at most `timeout` in all for full
    /// queues (`Duration::MAX`: no limit): [`TopicError::Timeout`] if a
    /// `Block` queue stayed full; every other subscriber (and the history)
    /// still gets the sample.
    pub fn send_timeout(&self, value: &T::Input, timeout: Duration) -> Result<usize, TopicError> {
        self.send_until(value, deadline(timeout))
    }

    /// Sends only if no `Block` queue is full (`Timeout` if one is, and then
    /// nobody gets the sample). A queue another publisher fills in the
    /// meantime misses the sample (counted in its `missed()`).
    pub fn try_send(&self, value: &T::Input) -> Result<usize, TopicError> {
        self.send_until(value, Deadline::now())
    }

    /// [`Publisher::send`] as a future (the same send, polled: see
    /// [`Ticket`](crate::Ticket)'s "As a future"): while a `Block`
    /// subscriber's queue is full, the task parks on that queue until it
    /// has room (or the subscriber is found dead and reclaimed). Dropping
    /// it before it completes sends nothing.
    pub fn send_async<'a>(&'a self, value: &'a T::Input) -> impl Future<Output = Result<usize, TopicError>> + 'a {
        let mut parked = Parked::default();
        std::future::poll_fn(move |cx| {
            let attempt = || match self.send_until(value, Deadline::now()) {
                Err(TopicError::Timeout) => None,
                done => Some(done),
            };
            if let Some(done) = attempt() {
                return Poll::Ready(done);
            }
            // A full Block queue held the sample back: park on it. Dead
            // subscribers are reclaimed at each re-poll.
            self.shared.reap();
            let h = self.shared.header();
            let full = h.subscribers[..self.shared.subs.len()].iter().zip(&self.shared.subs).find(|(slot, ring)| {
                slot.state.load(Ordering::Acquire) == ACTIVE
                    && Overflow::from_code(slot.overflow.load(Ordering::Relaxed)) == Overflow::Block
                    && !ring.can_push()
            });
            match full {
                Some((_, ring)) => {
                    let r = ring.clone();
                    parked.park(cx, &self.shared.seg, ring.writable(), Some(CHECK), move || r.can_push(), attempt)
                }
                // No queue is full: another publisher holds the history
                // lock. Look again in a millisecond (there is no event for
                // the lock), rather than spin.
                None => match self.shared.subs.first() {
                    Some(ring) => {
                        parked.park(cx, &self.shared.seg, ring.writable(), Some(LOCK_RETRY), || false, attempt)
                    }
                    None => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                },
            }
        })
    }

    fn send_until(&self, value: &T::Input, deadline: Deadline) -> Result<usize, TopicError> {
        let len = T::encoded_len(value).map_err(TopicError::Encode)?;
        let loan = self.loan_raw(len)?;
        // SAFETY: the loan's block is ours alone until it is sent.
        let dst = unsafe { std::slice::from_raw_parts_mut(loan.ptr, loan.len) };
        let n = T::encode(value, dst).map_err(TopicError::Encode)?;
        if n != len {
            return Err(TopicError::Encode(format!("archive was {n} bytes, {len} expected")));
        }
        self.publish(loan, deadline)
    }

    /// Sends value bytes from another host (a bridge), marked as from the
    /// network so that no bridge sends them out again. They may arrive at
    /// any alignment: copied into the sample (16-aligned) first, then
    /// validated there ([`TopicError::Invalid`], nothing sent, if not valid).
    #[cfg(feature = "net")]
    pub(crate) fn send_from_network(&self, bytes: &[u8], timeout: Duration) -> Result<usize, TopicError> {
        let loan = self.loan_raw(bytes.len())?;
        if loan.len != bytes.len() {
            return Err(TopicError::Corrupt("a new sample has another length than asked".into()));
        }
        // SAFETY: the loan's block is ours alone until it is sent, and in
        // bounds (`loan_raw` checked it against the segment).
        let dst = unsafe { std::slice::from_raw_parts_mut(loan.ptr, loan.len) };
        dst.copy_from_slice(bytes);
        T::check(dst).map_err(TopicError::Invalid)?;
        if let Some(h) = layout::sample(&self.shared.seg, loan.off) {
            h.flags.store(layout::FROM_NETWORK, Ordering::Relaxed);
        }
        self.publish(loan, deadline(timeout))
    }

    /// Allocates a sample of `len` value bytes, recorded as a loan.
    fn loan_raw(&self, len: usize) -> Result<RawLoan<'_, T>, TopicError> {
        let shared = &self.shared;
        let seq = shared.header().next_seq.fetch_add(1, Ordering::Relaxed);
        let off = layout::alloc_sample(&shared.seg, len as u64, seq).map_err(|e| TopicError::Encode(e.to_string()))?;
        let loans = &shared.header().publishers[self.slot].loans;
        let Some(at) = layout::record(loans, off) else {
            layout::release(&shared.seg, off);
            return Err(TopicError::TooMany("loans (at most MAX_LOANS = 16 per publisher)"));
        };
        let Some((ptr, len)) = layout::value_ptr(&shared.seg, off) else {
            layout::unrecord(loans, at, off);
            layout::release(&shared.seg, off);
            return Err(TopicError::Corrupt("a new sample is out of bounds".into()));
        };
        Ok(RawLoan { publisher: self, off, at, seq, ptr, len, sent: false })
    }

    /// Delivers a loaned sample to every active subscriber, then drops the
    /// publisher's own reference.
    fn publish(&self, mut loan: RawLoan<'_, T>, deadline: Deadline) -> Result<usize, TopicError> {
        let _turn = Shared::turn(&self.turn);
        let shared = &self.shared;
        let h = shared.header();
        if self.sends.fetch_add(1, Ordering::Relaxed) % REAP_EVERY == REAP_EVERY - 1 {
            shared.reap();
        }
        let history = shared.ring.as_ref().filter(|_| h.history.load(Ordering::Relaxed) > 0);
        // With history, sends and joins take turns (see `Header::history_lock`).
        let _turn = match history {
            Some(_) => Some(HistoryTurn::take(shared, deadline)?),
            None => None,
        };
        let subs = &h.subscribers[..shared.subs.len()];
        // Refuse: a full queue refuses the whole sample, before anyone gets
        // it; so does a full Block queue for a try (`try_send`).
        for (slot, ring) in subs.iter().zip(&shared.subs) {
            if slot.state.load(Ordering::Acquire) != ACTIVE || ring.can_push() {
                continue;
            }
            match Overflow::from_code(slot.overflow.load(Ordering::Relaxed)) {
                Overflow::Refuse => return Err(TopicError::Full),
                Overflow::Block if deadline.passed() => return Err(TopicError::Timeout),
                _ => {}
            }
        }
        let mut timed_out = false;
        let is_try = deadline.passed();
        let entry = encode_ref(loan.off, loan.seq);
        let mut reached = 0;
        for (i, (slot, ring)) in subs.iter().zip(&shared.subs).enumerate() {
            if slot.state.load(Ordering::Acquire) != ACTIVE {
                continue;
            }
            // The queue's reference, taken before the push makes it visible.
            layout::retain(&shared.seg, loan.off);
            let pushed = match Overflow::from_code(slot.overflow.load(Ordering::Relaxed)) {
                Overflow::Block => {
                    let pid = slot.pid.load(Ordering::Relaxed);
                    let me = &h.publishers[self.slot];
                    me.claim_ring.store(i as u32, Ordering::Relaxed);
                    let write = |_: usize, dst: &mut [u8]| {
                        dst[..16].copy_from_slice(&entry);
                        16
                    };
                    let waited = wait::ring_in_slices(
                        deadline,
                        CHECK,
                        |until| {
                            let r = ring.push_many_recorded(1, Some(until), self.spin, Some(&me.push_claim), write);
                            r.map(|_| ())
                        },
                        || if process::is_alive(pid) { Ok(()) } else { Err(pid) },
                    );
                    match waited {
                        Ok(r) => r,
                        Err(wait::Waited::TimedOut) if is_try => {
                            // Filled since the check above (another
                            // publisher): lost to this one, counted, and the
                            // try still reports what it reached.
                            slot.missed.fetch_add(1, Ordering::Relaxed);
                            Err(RingError::Timeout)
                        }
                        Err(wait::Waited::TimedOut) => {
                            // The others still get it (and the history);
                            // the caller learns that one queue stayed full.
                            timed_out = true;
                            Err(RingError::Timeout)
                        }
                        Err(wait::Waited::Peer(pid)) => {
                            shared.clean_subscriber(i, pid);
                            Err(RingError::Closed)
                        }
                    }
                }
                Overflow::DropOldest => {
                    let mut tries = 0u32;
                    loop {
                        match self.push_now(i as u32, ring, entry) {
                            Err(RingError::WouldBlock) if tries < DROP_TRIES => {
                                tries += 1;
                                // Make room: the oldest sample leaves this queue.
                                match self.pop_now(i as u32, ring) {
                                    Some(old) => {
                                        layout::release(&shared.seg, old);
                                        slot.missed.fetch_add(1, Ordering::Relaxed);
                                    }
                                    // The subscriber is taking it right now.
                                    None => std::thread::yield_now(),
                                }
                            }
                            Err(RingError::WouldBlock) => {
                                // Full and nothing to drop for that long: a
                                // subscriber stopped mid-pop. This sample is
                                // lost to it (counted); a dead one is reclaimed.
                                slot.missed.fetch_add(1, Ordering::Relaxed);
                                let pid = slot.pid.load(Ordering::Relaxed);
                                if !process::is_alive(pid) {
                                    shared.clean_subscriber(i, pid);
                                }
                                break Err(RingError::WouldBlock);
                            }
                            other => break other,
                        }
                    }
                }
                Overflow::Refuse => {
                    let r = self.push_now(i as u32, ring, entry);
                    if r.is_err() {
                        // Filled since the check above (another publisher).
                        slot.missed.fetch_add(1, Ordering::Relaxed);
                    }
                    r
                }
            };
            match pushed {
                Ok(()) => reached += 1,
                Err(_) => layout::release(&shared.seg, loan.off),
            }
        }
        if let Some(ring) = history {
            layout::retain(&shared.seg, loan.off);
            let keep = h.history.load(Ordering::Relaxed) as usize;
            while ring.len() >= keep {
                match self.pop_now(SHARED_RING, ring) {
                    Some(old) => layout::release(&shared.seg, old),
                    None => break,
                }
            }
            if self.push_now(SHARED_RING, ring, entry).is_err() {
                layout::release(&shared.seg, loan.off);
            }
        }
        loan.sent = true;
        if timed_out {
            return Err(TopicError::Timeout);
        }
        Ok(reached)
    }
}

impl<T: Payload> Publisher<T> {
    /// Pushes a reference into ring `at` (a subscriber's, or `SHARED_RING`)
    /// without waiting, the claim recorded in this publisher's slot.
    fn push_now(&self, at: u32, ring: &crate::ring::Ring, entry: [u8; 16]) -> Result<(), RingError> {
        let me = &self.shared.header().publishers[self.slot];
        me.claim_ring.store(at, Ordering::Relaxed);
        push_ref(ring, Some(&me.push_claim), entry)
    }

    /// Pops a reference from ring `at` without waiting (the caller releases it).
    fn pop_now(&self, at: u32, ring: &crate::ring::Ring) -> Option<u64> {
        let me = &self.shared.header().publishers[self.slot];
        me.claim_ring.store(at, Ordering::Relaxed);
        pop_ref_now(ring, &me.pop_claim)
    }
}

impl Publisher<Bytes> {
    /// A sample of `len` bytes to write in place (no serialisation, no
    /// copy): fill it through `DerefMut`, then [`Loan::send`]. At most
    /// [`MAX_LOANS`](super::MAX_LOANS) at once; a loan dropped unsent is freed.
    pub fn loan(&self, len: usize) -> Result<Loan<'_>, TopicError> {
        Ok(Loan { raw: self.loan_raw(len)? })
    }
}

impl<T: Payload> Drop for Publisher<T> {
    fn drop(&mut self) {
        let slot = &self.shared.header().publishers[self.slot];
        let _ = slot.pid.compare_exchange(process::current_pid(), 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// A sample being written: recorded in the publisher's loans until sent.
struct RawLoan<'p, T: Payload> {
    publisher: &'p Publisher<T>,
    off: u64,
    at: usize,
    seq: u64,
    ptr: *mut u8,
    len: usize,
    sent: bool,
}

impl<T: Payload> Drop for RawLoan<'_, T> {
    fn drop(&mut self) {
        // Sent or not, the publisher's own reference goes now: the record
        // first (a publisher killed between the two leaks the sample rather
        // than have a cleaner release it twice).
        let shared = &self.publisher.shared;
        layout::unrecord(&shared.header().publishers[self.publisher.slot].loans, self.at, self.off);
        layout::release(&shared.seg, self.off);
        let _ = self.sent;
    }
}

/// A raw sample being written in place ([`Publisher::loan`]).
pub struct Loan<'p> {
    raw: RawLoan<'p, Bytes>,
}

impl fmt::Debug for Loan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan").field("len", &self.raw.len).finish()
    }
}

impl Loan<'_> {
    /// Sends the sample to every subscriber; returns how many it reached.
    pub fn send(self) -> Result<usize, TopicError> {
        self.raw.publisher.publish(self.raw, Deadline::NEVER)
    }

    /// [`Loan::send`] with a bound on waiting for full queues.
    pub fn send_timeout(self, timeout: Duration) -> Result<usize, TopicError> {
        self.raw.publisher.publish(self.raw, deadline(timeout))
    }
}

impl Deref for Loan<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the block is this loan's alone until sent, `len` bytes long
        // and in bounds (checked when loaned).
        unsafe { std::slice::from_raw_parts(self.raw.ptr, self.raw.len) }
    }
}

impl DerefMut for Loan<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.raw.ptr, self.raw.len) }
    }
}

// SAFETY: the loan's block is reachable only through it until sent.
unsafe impl Send for Loan<'_> {}

/// Holds the history lock for one send or join (released on drop).
pub(super) struct HistoryTurn<'a>(&'a Shared);

impl<'a> HistoryTurn<'a> {
    pub(super) fn take(shared: &'a Shared, deadline: Deadline) -> Result<HistoryTurn<'a>, TopicError> {
        match shared.header().history_lock.lock(deadline.instant()) {
            // A holder that died mid-send left the history ring consistent
            // (each step is one ring operation): go on.
            Ok(_) => Ok(HistoryTurn(shared)),
            Err(_) => Err(TopicError::Timeout),
        }
    }
}

impl Drop for HistoryTurn<'_> {
    fn drop(&mut self) {
        self.0.header().history_lock.unlock();
    }
}
