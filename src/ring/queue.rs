//! The lock-free bounded MPMC queue algorithm, apart from where it lives.
//!
//! A sequence number per slot (D. Vyukov's bounded queue): slot `i` of a ring
//! of capacity `cap` is free for the producer at position `pos` when its
//! sequence is `pos`, holds that producer's message when it is `pos + 1`, and
//! becomes free for position `pos + cap` when the consumer releases it.
//!
//! This file knows nothing of segments or futexes, so the same code is model
//! checked by loom (`tests/loom_ring.rs` includes it with loom's atomics).

use crossbeam_utils::CachePadded;

use crate::primitive::{spin_hint, AtomicU64, Ordering};

/// Set in `head` once the queue is closed: no producer can claim after it.
pub const CLOSED: u64 = 1 << 63;

/// The two cursors, each on its own cache line.
///
/// `head`: the next position a producer claims (plus the `CLOSED` bit).
/// `tail`: the next position a consumer claims. Both only grow.
#[repr(C)]
#[derive(Debug)]
pub struct Cursors {
    /// Producers' cursor and the closed bit.
    pub head: CachePadded<AtomicU64>,
    /// Consumers' cursor.
    pub tail: CachePadded<AtomicU64>,
}

impl Cursors {
    /// Fresh cursors at position zero.
    #[cfg(loom)]
    pub fn new() -> Self {
        Cursors { head: CachePadded::new(AtomicU64::new(0)), tail: CachePadded::new(AtomicU64::new(0)) }
    }
}

/// Where the per-slot sequence numbers are.
pub trait Slots {
    /// The number of slots, a power of two.
    fn capacity(&self) -> u64;
    /// The sequence word of slot `index` (`index < capacity`).
    fn seq(&self, index: u64) -> &AtomicU64;
}

/// Why a claim got nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No free slot (push) or no published message (pop) right now.
    WouldBlock,
    /// The queue is closed (push), or closed and drained (pop).
    Closed,
    /// The sequence numbers contradict the cursors: the memory is corrupt.
    Corrupt,
}

/// Sets slot `i`'s sequence to `i`: all slots free for the first lap.
pub fn init(slots: &impl Slots) {
    for i in 0..slots.capacity() {
        slots.seq(i).store(i, Ordering::Relaxed);
    }
}

/// Claims up to `max` consecutive slots for writing; returns `(pos, n)`.
///
/// The caller writes slots `pos..pos + n` and then calls [`publish`] on each.
pub fn claim_push(c: &Cursors, slots: &impl Slots, max: u64) -> Result<(u64, u64), Refused> {
    claim_push_with(c, slots, max, &mut |_, _| {})
}

/// [`claim_push`], calling `intent(pos, n)` before every attempt to claim
/// `pos..pos + n` (see `Ring`'s claim records).
///
/// SYNC: the claiming CAS is Release, so whatever `intent` stored is visible
/// to anyone who sees the cursor moved (Acquire).
pub fn claim_push_with(
    c: &Cursors,
    slots: &impl Slots,
    max: u64,
    intent: &mut impl FnMut(u64, u64),
) -> Result<(u64, u64), Refused> {
    debug_assert!(max > 0);
    let mask = slots.capacity() - 1;
    let mut head = c.head.load(Ordering::Relaxed);
    let mut stale = 0u32;
    loop {
        if head & CLOSED != 0 {
            return Err(Refused::Closed);
        }
        let mut n = 0;
        while n < max.min(slots.capacity()) {
            let pos = head.wrapping_add(n);
            // SYNC: Acquire pairs with the consumer's Release in `release`, so
            // its reads of the slot are done before we overwrite it.
            let seq = slots.seq(pos & mask).load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos) as i64;
            if diff == 0 {
                n += 1;
                continue;
            }
            if n == 0 && diff < 0 {
                // The slot still holds last lap's message.
                return Err(Refused::WouldBlock);
            }
            break;
        }
        if n == 0 {
            // Another producer took this position: move on to the new head.
            let now = c.head.load(Ordering::Relaxed);
            if now == head {
                stale += 1;
                if stale > 1_000 {
                    return Err(Refused::Corrupt);
                }
                spin_hint();
            }
            head = now;
            continue;
        }
        intent(head, n);
        match c.head.compare_exchange_weak(head, head.wrapping_add(n), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Ok((head, n)),
            Err(now) => head = now,
        }
    }
}

/// Makes the message in the slot claimed at `pos` visible to consumers.
pub fn publish(slots: &impl Slots, pos: u64) {
    // SYNC: Release publishes the slot's payload to the consumer's Acquire.
    slots.seq(pos & (slots.capacity() - 1)).store(pos.wrapping_add(1), Ordering::Release);
}

/// Claims up to `max` consecutive published messages; returns `(pos, n)`.
///
/// The caller reads slots `pos..pos + n` and then calls [`release`] on each.
pub fn claim_pop(c: &Cursors, slots: &impl Slots, max: u64) -> Result<(u64, u64), Refused> {
    claim_pop_with(c, slots, max, &mut |_, _| {})
}

/// [`claim_pop`], calling `intent(pos, n)` before every attempt to claim
/// `pos..pos + n`; the claiming CAS is Release, as in [`claim_push_with`].
pub fn claim_pop_with(
    c: &Cursors,
    slots: &impl Slots,
    max: u64,
    intent: &mut impl FnMut(u64, u64),
) -> Result<(u64, u64), Refused> {
    debug_assert!(max > 0);
    let mask = slots.capacity() - 1;
    let mut tail = c.tail.load(Ordering::Relaxed);
    let mut stale = 0u32;
    loop {
        let mut n = 0;
        while n < max.min(slots.capacity()) {
            let pos = tail.wrapping_add(n);
            // SYNC: Acquire pairs with `publish`'s Release: the payload is visible.
            let seq = slots.seq(pos & mask).load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos.wrapping_add(1)) as i64;
            if diff == 0 {
                n += 1;
                continue;
            }
            if n == 0 && diff < 0 {
                // Nothing published here yet. Closed and drained means every
                // claimed position has been consumed.
                let head = c.head.load(Ordering::Acquire);
                if head & CLOSED != 0 && head & !CLOSED == tail {
                    return Err(Refused::Closed);
                }
                return Err(Refused::WouldBlock);
            }
            break;
        }
        if n == 0 {
            let now = c.tail.load(Ordering::Relaxed);
            if now == tail {
                stale += 1;
                if stale > 1_000 {
                    return Err(Refused::Corrupt);
                }
                spin_hint();
            }
            tail = now;
            continue;
        }
        intent(tail, n);
        match c.tail.compare_exchange_weak(tail, tail.wrapping_add(n), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Ok((tail, n)),
            Err(now) => tail = now,
        }
    }
}

/// Frees the slot consumed at `pos` for the producer one lap later.
pub fn release(slots: &impl Slots, pos: u64) {
    let cap = slots.capacity();
    // SYNC: Release orders our reads of the slot before the producer's reuse.
    slots.seq(pos & (cap - 1)).store(pos.wrapping_add(cap), Ordering::Release);
}

/// Closes the queue: later claims to push fail; consumers drain what is there.
/// Returns whether this call closed it.
pub fn close(c: &Cursors) -> bool {
    c.head.fetch_or(CLOSED, Ordering::AcqRel) & CLOSED == 0
}

/// Whether the queue is closed.
pub fn is_closed(c: &Cursors) -> bool {
    c.head.load(Ordering::Acquire) & CLOSED != 0
}

/// Whether a push could claim a slot now (or the queue is closed).
pub fn push_ready(c: &Cursors, slots: &impl Slots) -> bool {
    let head = c.head.load(Ordering::Acquire);
    if head & CLOSED != 0 {
        return true;
    }
    let seq = slots.seq(head & (slots.capacity() - 1)).load(Ordering::Acquire);
    seq.wrapping_sub(head) as i64 >= 0
}

/// Whether a pop could claim a message now, or the queue is closed and
/// drained. (Closed with a claimed, unpublished slot is not ready: its
/// producer's publish will notify.)
pub fn pop_ready(c: &Cursors, slots: &impl Slots) -> bool {
    let tail = c.tail.load(Ordering::Acquire);
    let seq = slots.seq(tail & (slots.capacity() - 1)).load(Ordering::Acquire);
    if seq.wrapping_sub(tail.wrapping_add(1)) as i64 >= 0 {
        return true;
    }
    let head = c.head.load(Ordering::Acquire);
    head & CLOSED != 0 && head & !CLOSED == tail
}

/// Messages published or being written and not yet claimed by consumers.
pub fn len(c: &Cursors) -> u64 {
    let tail = c.tail.load(Ordering::Acquire);
    let head = c.head.load(Ordering::Acquire) & !CLOSED;
    head.saturating_sub(tail)
}
