//! A lock-free bounded multi-producer multi-consumer ring in a segment.
//!
//! Fixed-size slots, each a 16-byte slot header followed by an inline payload
//! (16-byte aligned, so an rkyv archive can be read in place). Larger messages
//! are stored by the layer above in arena blocks and travel here as offsets.
//!
//! Blocking operations spin briefly and then sleep on a futex [`Event`]; the
//! other side makes a system call only when somebody sleeps.

pub mod queue;

use std::fmt;
use std::mem::size_of;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_utils::CachePadded;

use crate::segment::{Segment, SegmentError, ShmSafe};
use crate::sync::{AdaptiveSpin, Event, SpinPolicy};
use queue::{Cursors, Refused, Slots};

const RING_MAGIC: u32 = 0x5249_4E47; // "RING"
const SLOT_HEADER: usize = 16;
/// Slot flag: the producer panicked while writing; the slot carries nothing.
const FLAG_POISONED: u32 = 1;
/// The largest capacity a ring may have.
pub const MAX_CAPACITY: u32 = 1 << 24;

/// The ring's header, at the start of its block.
///
/// SYNC: `init_at` stores `capacity`, `stride`, the cursors and every slot's
/// sequence, then `magic` with Release; `open` loads `magic` with Acquire
/// before reading anything else, so a ring whose magic is seen is seen whole.
#[repr(C)]
struct RingHeader {
    /// `RING_MAGIC` once the ring is initialised (written last).
    magic: AtomicU32,
    capacity: AtomicU32,
    stride: AtomicU32,
    _pad: u32,
    cursors: Cursors,
    not_empty: CachePadded<Event>,
    not_full: CachePadded<Event>,
}

// SAFETY: `#[repr(C)]`, atomics (Cursors and Event are atomics) and one
// padding integer; no pointers, no Drop; every bit pattern is valid.
unsafe impl ShmSafe for RingHeader {}

#[repr(C)]
struct SlotHeader {
    seq: AtomicU64,
    len: AtomicU32,
    flags: AtomicU32,
}

// SAFETY: `#[repr(C)]`, atomics only.
unsafe impl ShmSafe for SlotHeader {}

/// Why a ring operation did not move a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// No free slot (try-push) or no message (try-pop) right now.
    WouldBlock,
    /// The deadline passed first.
    Timeout,
    /// The ring is closed (push), or closed and drained (pop).
    Closed,
    /// The message is larger than a slot's payload.
    TooLarge {
        /// The message length.
        len: usize,
        /// The slot payload capacity.
        max: usize,
    },
    /// The ring's shared state is inconsistent.
    Corrupt,
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::WouldBlock => write!(f, "ring is full or empty"),
            RingError::Timeout => write!(f, "timed out waiting on the ring"),
            RingError::Closed => write!(f, "ring is closed"),
            RingError::TooLarge { len, max } => write!(f, "message of {len} bytes exceeds the {max}-byte slot"),
            RingError::Corrupt => write!(f, "ring state in shared memory is corrupt"),
        }
    }
}

impl std::error::Error for RingError {}

impl From<Refused> for RingError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::WouldBlock => RingError::WouldBlock,
            Refused::Closed => RingError::Closed,
            Refused::Corrupt => RingError::Corrupt,
        }
    }
}

/// A handle to a ring in a segment. Cheap to clone; every process opens its own.
#[derive(Clone)]
pub struct Ring {
    seg: Segment,
    hdr: *const RingHeader,
    slots: *mut u8,
    /// Copied from the header once, at open, after validation: the shared
    /// copy is never trusted again.
    capacity: u64,
    stride: usize,
    offset: u64,
    /// This handle's memory of whether spinning pays off, per direction.
    push_spin: AdaptiveSpin,
    pop_spin: AdaptiveSpin,
}

// SAFETY: the pointers point into the segment kept alive by `seg`; all shared
// state behind them is atomics, and slot payloads are accessed only by the
// process that claimed the slot (the queue protocol), except by `peek_all`,
// which reads unclaimed slots with atomic loads only, and `steal_unreleased`,
// whose claimer is dead.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("offset", &self.offset)
            .field("capacity", &self.capacity)
            .field("payload", &self.payload_capacity())
            .field("len", &self.len())
            .finish()
    }
}

struct SlotSeqs<'a>(&'a Ring);

impl Slots for SlotSeqs<'_> {
    #[inline]
    fn capacity(&self) -> u64 {
        self.0.capacity
    }
    #[inline]
    fn seq(&self, index: u64) -> &AtomicU64 {
        &self.0.slot_header(index).seq
    }
}

/// Bytes a ring of `capacity` slots with `payload`-byte payloads occupies.
pub fn footprint(capacity: u32, payload: u32) -> u64 {
    let stride = stride_for(payload) as u64;
    size_of::<RingHeader>() as u64 + 128 + stride * capacity.next_power_of_two() as u64
}

fn stride_for(payload: u32) -> usize {
    (SLOT_HEADER + payload as usize).div_ceil(64) * 64
}

impl Ring {
    /// Creates a ring in `seg`'s arena with at least `capacity` slots (rounded
    /// up to a power of two) of at least `payload` bytes each.
    pub fn create(seg: &Segment, capacity: u32, payload: u32) -> Result<Ring, SegmentError> {
        let block = seg.alloc(footprint(capacity, payload))?;
        let offset = block.offset.div_ceil(128) * 128;
        Ring::init_at(seg, offset, capacity, payload)
    }

    /// Creates the ring named `name` in `seg`, or opens it if it exists.
    pub fn named(seg: &Segment, name: &str, capacity: u32, payload: u32) -> Result<Ring, SegmentError> {
        const KIND_RING: u32 = 1;
        let (block, _) = seg.named(name, KIND_RING, 0, footprint(capacity, payload), |b| {
            Ring::init_at(seg, b.offset.div_ceil(128) * 128, capacity, payload).map(|_| ())
        })?;
        Ring::open(seg, block.offset.div_ceil(128) * 128)
    }

    fn init_at(seg: &Segment, offset: u64, capacity: u32, payload: u32) -> Result<Ring, SegmentError> {
        if capacity == 0 || capacity > MAX_CAPACITY || payload == 0 || payload > (1 << 20) {
            return Err(SegmentError::Corrupt("ring capacity or slot size out of range"));
        }
        let cap = capacity.next_power_of_two();
        let stride = stride_for(payload) as u32;
        let hdr = seg.get::<RingHeader>(offset)?;
        seg.check_range(offset, size_of::<RingHeader>() as u64 + stride as u64 * cap as u64)?;
        // A reused block may still hold an old ring's magic: clear it before
        // changing anything, so no opener takes the half-built ring for one.
        hdr.magic.store(0, Ordering::Relaxed);
        hdr.capacity.store(cap, Ordering::Relaxed);
        hdr.stride.store(stride, Ordering::Relaxed);
        hdr.cursors.head.store(0, Ordering::Relaxed);
        hdr.cursors.tail.store(0, Ordering::Relaxed);
        let ring = Ring::from_parts(seg, offset, cap as u64, stride as usize)?;
        queue::init(&SlotSeqs(&ring));
        for i in 0..ring.capacity {
            ring.slot_header(i).flags.store(0, Ordering::Relaxed);
        }
        // SYNC: Release publishes every store above (geometry, cursors, slot
        // sequences and flags) to the Acquire load of the magic in `open`.
        hdr.magic.store(RING_MAGIC, Ordering::Release);
        Ok(ring)
    }

    /// Opens the ring whose header is at `offset` in `seg`, validating it.
    pub fn open(seg: &Segment, offset: u64) -> Result<Ring, SegmentError> {
        let hdr = seg.get::<RingHeader>(offset)?;
        // SYNC: Acquire pairs with the Release store of the magic in
        // `init_at`: the geometry read below is the initialised one.
        if hdr.magic.load(Ordering::Acquire) != RING_MAGIC {
            return Err(SegmentError::Corrupt("no ring at this offset"));
        }
        // Shared memory is hostile input: checked below before any use.
        let (cap, stride) = (hdr.capacity.load(Ordering::Relaxed), hdr.stride.load(Ordering::Relaxed));
        if !cap.is_power_of_two() || cap > MAX_CAPACITY || stride < 64 || stride % 64 != 0 || stride > (2 << 20) {
            return Err(SegmentError::Corrupt("ring geometry"));
        }
        Ring::from_parts(seg, offset, cap as u64, stride as usize)
    }

    fn from_parts(seg: &Segment, offset: u64, capacity: u64, stride: usize) -> Result<Ring, SegmentError> {
        let slots_off = offset + size_of::<RingHeader>() as u64;
        let slots = seg.ptr(slots_off, capacity * stride as u64)?;
        let hdr = seg.ptr(offset, size_of::<RingHeader>() as u64)?.cast::<RingHeader>();
        Ok(Ring {
            seg: seg.clone(),
            hdr,
            slots,
            capacity,
            stride,
            offset,
            push_spin: AdaptiveSpin::new(),
            pop_spin: AdaptiveSpin::new(),
        })
    }

    /// The ring header's offset in its segment (to hand to other processes).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The segment the ring lives in.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Largest message a slot holds inline.
    pub fn payload_capacity(&self) -> usize {
        self.stride - SLOT_HEADER
    }

    /// Messages currently queued (racy snapshot).
    pub fn len(&self) -> usize {
        queue::len(self.cursors()) as usize
    }

    /// Whether the ring holds no message (racy snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the ring is closed.
    pub fn is_closed(&self) -> bool {
        queue::is_closed(self.cursors())
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: validated at open; lives as long as `self.seg`.
        unsafe { &*self.hdr }
    }

    fn cursors(&self) -> &Cursors {
        &self.header().cursors
    }

    #[inline]
    fn slot_header(&self, index: u64) -> &SlotHeader {
        debug_assert!(index < self.capacity);
        // SAFETY: index < capacity, and the slots array of capacity * stride
        // bytes was bounds-checked at open; slot starts are 16-byte aligned.
        unsafe { &*self.slots.add(index as usize * self.stride).cast::<SlotHeader>() }
    }

    #[inline]
    fn payload_ptr(&self, pos: u64) -> *mut u8 {
        let index = pos & (self.capacity - 1);
        // SAFETY: as in slot_header; the payload follows the 16-byte slot header.
        unsafe { self.slots.add(index as usize * self.stride + SLOT_HEADER) }
    }

    /// The event a pop waits on (notified by every push and by close): for
    /// waiting on many rings at once with [`crate::sync::wait_any`].
    pub fn readable(&self) -> &Event {
        &self.header().not_empty
    }

    /// Whether a pop would find a message now, or the ring is closed and drained.
    pub fn can_pop(&self) -> bool {
        queue::pop_ready(self.cursors(), &SlotSeqs(self))
    }

    /// The event a push waits on (notified by every pop and by close).
    pub fn writable(&self) -> &Event {
        &self.header().not_full
    }

    /// Whether a push would find room now, or the ring is closed.
    pub fn can_push(&self) -> bool {
        queue::push_ready(self.cursors(), &SlotSeqs(self))
    }

    /// This process's memory of whether spinning pays off for pops (an
    /// async poll spins with it as a blocking pop does).
    pub(crate) fn pop_spin(&self) -> &AdaptiveSpin {
        &self.pop_spin
    }

    /// The same for pushes.
    pub(crate) fn push_spin(&self) -> &AdaptiveSpin {
        &self.push_spin
    }

    /// Hands a copy of every published, unclaimed message to `f` without
    /// taking it (a message claimed meanwhile is skipped: its sequence number
    /// is read before and after the copy, as in a seqlock).
    ///
    /// The slot is not claimed, so a consumer may take it and a producer
    /// reuse it while we copy: the copy is made with atomic loads only (a
    /// plain or volatile read racing with a write is a data race), and is
    /// thrown away unless the sequence number is unchanged afterwards.
    pub(crate) fn peek_all(&self, mut f: impl FnMut(&[u8])) {
        let tail = self.cursors().tail.load(Ordering::Acquire);
        let head = self.cursors().head.load(Ordering::Acquire) & !queue::CLOSED;
        let end = head.min(tail.saturating_add(self.capacity));
        let mut copy = vec![0u8; self.payload_capacity()];
        for pos in tail..end {
            let sh = self.slot_header(pos & (self.capacity - 1));
            // SYNC: Acquire pairs with the producer's Release in
            // `queue::publish`: the payload it wrote before publishing is
            // visible to the loads below.
            if sh.seq.load(Ordering::Acquire) != pos.wrapping_add(1) {
                continue;
            }
            let len = (sh.len.load(Ordering::Relaxed) as usize).min(copy.len());
            // Whole words: the payload capacity is a multiple of 16 bytes.
            for (chunk, word) in copy[..len].chunks_mut(8).zip(self.payload_words(pos)) {
                let bytes = word.load(Ordering::Relaxed).to_ne_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
            // SYNC: seqlock re-check. The Acquire fence keeps the payload
            // loads above before the `seq` load below. Before any producer
            // writes this slot again, the consumer's `queue::release` stores
            // `pos + capacity` to `seq` (Release) and the producer loads that
            // (Acquire in `claim_push`). So if a load above returned a
            // byte of the next lap, the re-check reads that store or a later
            // one, not `pos + 1`, and the copy is dropped. (The producer's
            // own writes are plain stores through the `&mut [u8]` it is
            // handed; that a relaxed load which sees one orders `seq` is the
            // hardware's causality, as in every seqlock over such writes:
            // the C++ model only promises it for atomic writes after a
            // Release fence.)
            std::sync::atomic::fence(Ordering::Acquire);
            if sh.seq.load(Ordering::Relaxed) == pos.wrapping_add(1) {
                f(&copy[..len]);
            }
        }
    }

    /// The payload of the slot at `pos` as words, for reads that may race
    /// with writers (see [`Ring::peek_all`]).
    #[inline]
    fn payload_words(&self, pos: u64) -> &[AtomicU64] {
        // SAFETY: the payload is in bounds (as in `payload_ptr`), 16-byte
        // aligned (slots start at multiples of 64 bytes, the payload 16 bytes
        // in), and `payload_capacity()` is a multiple of 16, so it is exactly
        // `payload_capacity() / 8` aligned u64 words; `AtomicU64` has the
        // size and alignment of `u64`, and shared atomic access to the bytes
        // is sound for as long as `self.seg` keeps the mapping alive (the
        // lifetime of `&self`).
        unsafe { std::slice::from_raw_parts(self.payload_ptr(pos).cast::<AtomicU64>(), self.payload_capacity() / 8) }
    }

    /// Claims up to `max` slots with `claim`, recording the claim, `(pos << 8)
    /// | n`, in `record` before each attempt (so a claim is covered from the
    /// moment it can exist) and clearing it if nothing was claimed.
    fn claim_recorded(&self, push: bool, max: usize, record: Option<&AtomicU64>) -> Result<(u64, u64), RingError> {
        let mut intent = |pos: u64, n: u64| {
            if let Some(r) = record {
                r.store((pos << 8) | n, Ordering::Relaxed);
            }
        };
        let max = max.clamp(1, 255) as u64;
        let claimed = if push {
            queue::claim_push_with(self.cursors(), &SlotSeqs(self), max, &mut intent)
        } else {
            queue::claim_pop_with(self.cursors(), &SlotSeqs(self), max, &mut intent)
        };
        claimed.map_err(|e| {
            if let Some(r) = record {
                r.store(0, Ordering::Release);
            }
            RingError::from(e)
        })
    }

    /// Positions a consumer claimed but has not released (behind the tail,
    /// still holding their message): a consumer is reading them, or died.
    pub(crate) fn unreleased(&self) -> Vec<u64> {
        let tail = self.cursors().tail.load(Ordering::Acquire);
        (tail.saturating_sub(self.capacity)..tail)
            .filter(|&pos| {
                self.slot_header(pos & (self.capacity - 1)).seq.load(Ordering::Acquire) == pos.wrapping_add(1)
            })
            .collect()
    }

    /// Takes over the unreleased slot at `pos` of a consumer that died:
    /// hands its message to `read` and releases it. False if it moved on.
    pub(crate) fn steal_unreleased(&self, pos: u64, read: impl FnOnce(&[u8])) -> bool {
        let sh = self.slot_header(pos & (self.capacity - 1));
        if sh.seq.load(Ordering::Acquire) != pos.wrapping_add(1) {
            return false;
        }
        let len = (sh.len.load(Ordering::Relaxed) as usize).min(self.payload_capacity());
        if sh.flags.load(Ordering::Relaxed) & FLAG_POISONED == 0 {
            // SAFETY: the slot's claimer is dead (the caller's contract), so
            // nobody else reads or writes it until we release it below.
            read(unsafe { std::slice::from_raw_parts(self.payload_ptr(pos), len) });
        }
        queue::release(&SlotSeqs(self), pos);
        self.header().not_full.notify();
        true
    }

    /// Positions a producer claimed but has not published (between tail and
    /// head, still free): a producer is writing them, or died.
    pub(crate) fn unpublished(&self) -> Vec<u64> {
        let tail = self.cursors().tail.load(Ordering::Acquire);
        let head = self.cursors().head.load(Ordering::Acquire) & !queue::CLOSED;
        // Bounded by the capacity: a corrupt cursor must not mean a long walk.
        (tail..head.min(tail.saturating_add(self.capacity)))
            .filter(|&pos| self.slot_header(pos & (self.capacity - 1)).seq.load(Ordering::Acquire) == pos)
            .collect()
    }

    /// Publishes the claimed slot at `pos` of a producer that died as empty
    /// (poisoned), so consumers go past it. False if it moved on.
    pub(crate) fn poison_unpublished(&self, pos: u64) -> bool {
        let sh = self.slot_header(pos & (self.capacity - 1));
        if sh.seq.load(Ordering::Acquire) != pos {
            return false;
        }
        sh.len.store(0, Ordering::Relaxed);
        sh.flags.store(FLAG_POISONED, Ordering::Relaxed);
        queue::publish(&SlotSeqs(self), pos);
        self.header().not_empty.notify();
        true
    }

    /// Closes the ring and wakes every waiter. Queued messages stay poppable.
    pub fn close(&self) {
        queue::close(self.cursors());
        self.header().not_empty.notify();
        self.header().not_full.notify();
    }

    /// Claims up to `max` slots and lets `write(i, buf)` fill each, returning
    /// the bytes used; returns how many were pushed (at least one).
    ///
    /// `write` must not block. If it panics, the slot is published as empty
    /// (skipped by consumers) and the panic continues.
    pub fn try_push_many(&self, max: usize, write: impl FnMut(usize, &mut [u8]) -> usize) -> Result<usize, RingError> {
        self.try_push_many_recorded(max, None, write)
    }

    /// [`Ring::try_push_many`] that writes its claim, `(pos << 8) | n`, into
    /// `record` right after claiming and clears it once published, so that a
    /// supervisor can tell whose claim a stuck slot is if this process dies.
    pub(crate) fn try_push_many_recorded(
        &self,
        max: usize,
        record: Option<&AtomicU64>,
        mut write: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> Result<usize, RingError> {
        let (pos, n) = self.claim_recorded(true, max, record)?;
        let payload = self.payload_capacity();
        for i in 0..n {
            let p = pos.wrapping_add(i);
            let mut guard = PublishGuard { ring: self, pos: p, end: pos.wrapping_add(n), armed: true };
            // SAFETY: position `p` is claimed by this process (claim_push), so
            // nobody else reads or writes this slot's payload until we publish.
            let buf = unsafe { std::slice::from_raw_parts_mut(self.payload_ptr(p), payload) };
            let len = write(i as usize, buf).min(payload);
            let sh = self.slot_header(p & (self.capacity - 1));
            sh.len.store(len as u32, Ordering::Relaxed);
            sh.flags.store(0, Ordering::Relaxed);
            guard.armed = false;
            queue::publish(&SlotSeqs(self), p);
        }
        if let Some(r) = record {
            r.store(0, Ordering::Release);
        }
        self.header().not_empty.notify();
        Ok(n as usize)
    }

    /// Pushes one message (copied into the slot) without waiting.
    pub fn try_push(&self, msg: &[u8]) -> Result<(), RingError> {
        self.check_len(msg.len())?;
        self.try_push_many(1, |_, buf| {
            buf[..msg.len()].copy_from_slice(msg);
            msg.len()
        })
        .map(|_| ())
    }

    /// Pushes one message, waiting for a free slot until `deadline`.
    pub fn push(&self, msg: &[u8], deadline: Option<Instant>, spin: SpinPolicy) -> Result<(), RingError> {
        self.check_len(msg.len())?;
        self.push_many_with(1, deadline, spin, |_, buf| {
            buf[..msg.len()].copy_from_slice(msg);
            msg.len()
        })
        .map(|_| ())
    }

    /// [`Ring::try_push_many`], waiting until `deadline` for at least one slot.
    pub fn push_many_with(
        &self,
        max: usize,
        deadline: Option<Instant>,
        spin: SpinPolicy,
        write: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> Result<usize, RingError> {
        self.push_many_recorded(max, deadline, spin, None, write)
    }

    /// [`Ring::push_many_with`] with a claim record (see [`Ring::try_push_many_recorded`]).
    pub(crate) fn push_many_recorded(
        &self,
        max: usize,
        deadline: Option<Instant>,
        spin: SpinPolicy,
        record: Option<&AtomicU64>,
        mut write: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> Result<usize, RingError> {
        loop {
            match self.try_push_many_recorded(max, record, &mut write) {
                Err(RingError::WouldBlock) => {}
                other => return other,
            }
            // A deadline already due is a try: it must not announce on the
            // event either (an async poll parks on the word it announced).
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RingError::Timeout);
            }
            let ready = || queue::push_ready(self.cursors(), &SlotSeqs(self));
            if !self.header().not_full.wait_until(ready, deadline, spin, &self.push_spin) {
                return Err(RingError::Timeout);
            }
        }
    }

    /// Claims up to `max` messages and hands each to `read(bytes)`, in order;
    /// returns how many were taken (at least one).
    ///
    /// The slice is valid only during the call: the slot is freed after it.
    pub fn try_pop_many(&self, max: usize, mut read: impl FnMut(&[u8])) -> Result<usize, RingError> {
        self.try_pop_many_recorded(max, None, |_, b| read(b))
    }

    /// [`Ring::try_pop_many`] that writes its claim, `(pos << 8) | n`, into
    /// `record` right after claiming and clears it once every slot is
    /// released; `read` also gets each message's position.
    pub(crate) fn try_pop_many_recorded(
        &self,
        max: usize,
        record: Option<&AtomicU64>,
        mut read: impl FnMut(u64, &[u8]),
    ) -> Result<usize, RingError> {
        let (pos, n) = self.claim_recorded(false, max, record)?;
        let payload = self.payload_capacity();
        let mut taken = 0;
        for i in 0..n {
            let p = pos.wrapping_add(i);
            let sh = self.slot_header(p & (self.capacity - 1));
            let len = (sh.len.load(Ordering::Relaxed) as usize).min(payload);
            let poisoned = sh.flags.load(Ordering::Relaxed) & FLAG_POISONED != 0;
            let guard = ReleaseGuard { ring: self, pos: p, end: pos.wrapping_add(n) };
            if !poisoned {
                // SAFETY: position `p` is claimed by this consumer and was
                // published (Acquire in claim_pop), so the payload is complete
                // and nobody writes it until we release.
                let bytes = unsafe { std::slice::from_raw_parts(self.payload_ptr(p), len) };
                read(p, bytes);
                taken += 1;
            }
            drop(guard);
        }
        if let Some(r) = record {
            r.store(0, Ordering::Release);
        }
        self.header().not_full.notify();
        if taken == 0 {
            // Only poisoned slots: report as nothing available now.
            return Err(RingError::WouldBlock);
        }
        Ok(taken)
    }

    /// Pops one message into `out` (cleared first) without waiting.
    pub fn try_pop(&self, out: &mut Vec<u8>) -> Result<(), RingError> {
        out.clear();
        self.try_pop_many(1, |b| out.extend_from_slice(b)).map(|_| ())
    }

    /// Pops one message into `out`, waiting until `deadline`.
    pub fn pop(&self, out: &mut Vec<u8>, deadline: Option<Instant>, spin: SpinPolicy) -> Result<(), RingError> {
        out.clear();
        self.pop_many_with(1, deadline, spin, |b| out.extend_from_slice(b)).map(|_| ())
    }

    /// [`Ring::try_pop_many`], waiting until `deadline` for at least one message.
    pub fn pop_many_with(
        &self,
        max: usize,
        deadline: Option<Instant>,
        spin: SpinPolicy,
        mut read: impl FnMut(&[u8]),
    ) -> Result<usize, RingError> {
        self.pop_many_recorded(max, deadline, spin, None, |_, b| read(b))
    }

    /// [`Ring::pop_many_with`] with a claim record (see [`Ring::try_pop_many_recorded`]).
    pub(crate) fn pop_many_recorded(
        &self,
        max: usize,
        deadline: Option<Instant>,
        spin: SpinPolicy,
        record: Option<&AtomicU64>,
        mut read: impl FnMut(u64, &[u8]),
    ) -> Result<usize, RingError> {
        loop {
            match self.try_pop_many_recorded(max, record, &mut read) {
                Err(RingError::WouldBlock) => {}
                other => return other,
            }
            // A deadline already due is a try (see `push_many_recorded`).
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RingError::Timeout);
            }
            let ready = || queue::pop_ready(self.cursors(), &SlotSeqs(self));
            if !self.header().not_empty.wait_until(ready, deadline, spin, &self.pop_spin) {
                return Err(RingError::Timeout);
            }
        }
    }

    fn check_len(&self, len: usize) -> Result<(), RingError> {
        if len > self.payload_capacity() {
            return Err(RingError::TooLarge { len, max: self.payload_capacity() });
        }
        Ok(())
    }
}

/// Publishes claimed-but-unwritten slots as poisoned if a writer panics, so
/// the ring never wedges on a slot nobody will publish.
struct PublishGuard<'a> {
    ring: &'a Ring,
    pos: u64,
    end: u64,
    armed: bool,
}

impl Drop for PublishGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut p = self.pos;
        while p != self.end {
            let sh = self.ring.slot_header(p & (self.ring.capacity - 1));
            sh.len.store(0, Ordering::Relaxed);
            sh.flags.store(FLAG_POISONED, Ordering::Relaxed);
            queue::publish(&SlotSeqs(self.ring), p);
            p = p.wrapping_add(1);
        }
        self.ring.header().not_empty.notify();
    }
}

/// Releases a consumed slot, and on unwind every later claimed slot too.
struct ReleaseGuard<'a> {
    ring: &'a Ring,
    pos: u64,
    end: u64,
}

impl Drop for ReleaseGuard<'_> {
    fn drop(&mut self) {
        queue::release(&SlotSeqs(self.ring), self.pos);
        if std::thread::panicking() {
            let mut p = self.pos.wrapping_add(1);
            while p != self.end {
                queue::release(&SlotSeqs(self.ring), p);
                p = p.wrapping_add(1);
            }
            self.ring.header().not_full.notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ring(cap: u32, payload: u32) -> Ring {
        let seg = Segment::anonymous(1 << 20).unwrap();
        Ring::create(&seg, cap, payload).unwrap()
    }

    #[test]
    fn fifo_full_empty_close() {
        let r = ring(4, 48);
        assert_eq!(r.capacity(), 4);
        for i in 0..4u8 {
            r.try_push(&[i; 3]).unwrap();
        }
        assert_eq!(r.try_push(&[9]), Err(RingError::WouldBlock));
        let mut out = Vec::new();
        for i in 0..4u8 {
            r.try_pop(&mut out).unwrap();
            assert_eq!(out, [i; 3]);
        }
        assert_eq!(r.try_pop(&mut out), Err(RingError::WouldBlock));
        r.try_push(&[7]).unwrap();
        r.close();
        assert_eq!(r.try_push(&[8]), Err(RingError::Closed));
        r.try_pop(&mut out).unwrap();
        assert_eq!(out, [7]);
        assert_eq!(r.try_pop(&mut out), Err(RingError::Closed));
    }

    #[test]
    fn too_large_and_timeouts() {
        let r = ring(2, 48);
        assert_eq!(r.try_push(&[0; 49]), Err(RingError::TooLarge { len: 49, max: 48 }));
        let mut out = Vec::new();
        let d = Some(Instant::now() + Duration::from_millis(20));
        assert_eq!(r.pop(&mut out, d, SpinPolicy::DEFAULT), Err(RingError::Timeout));
        r.try_push(&[1]).unwrap();
        r.try_push(&[2]).unwrap();
        let d = Some(Instant::now() + Duration::from_millis(20));
        assert_eq!(r.push(&[3], d, SpinPolicy::SLEEP), Err(RingError::Timeout));
    }

    #[test]
    fn batches_wrap_around() {
        let r = ring(8, 48);
        let mut next = 0u32;
        let mut expect = 0u32;
        for _ in 0..50 {
            let n = r
                .try_push_many(5, |_, buf| {
                    buf[..4].copy_from_slice(&next.to_le_bytes());
                    next += 1;
                    4
                })
                .unwrap();
            assert!(n >= 1);
            r.try_pop_many(8, |b| {
                assert_eq!(u32::from_le_bytes(b.try_into().unwrap()), expect);
                expect += 1;
            })
            .unwrap();
        }
        assert_eq!(next, expect);
    }

    #[test]
    fn panicking_writer_poisons_only_its_slot() {
        let r = ring(4, 48);
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            r.try_push_many(1, |_, _| panic!("writer failed")).unwrap();
        }));
        assert!(res.is_err());
        r.try_push(&[5]).unwrap();
        let mut out = Vec::new();
        // The poisoned slot is skipped; the next real message arrives.
        let d = Some(Instant::now() + Duration::from_secs(5));
        r.pop(&mut out, d, SpinPolicy::DEFAULT).unwrap();
        assert_eq!(out, [5]);
    }

    #[test]
    fn blocked_pop_wakes_on_close() {
        let r = ring(4, 48);
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            let mut out = Vec::new();
            r2.pop(&mut out, None, SpinPolicy::SLEEP)
        });
        std::thread::sleep(Duration::from_millis(50));
        r.close();
        assert_eq!(t.join().unwrap(), Err(RingError::Closed));
    }

    #[test]
    fn peek_all_sees_every_queued_message_whole() {
        let r = ring(8, 48);
        let msgs: [&[u8]; 3] = [&[1], &[2; 13], &[3; 48]];
        for m in msgs {
            r.try_push(m).unwrap();
        }
        let mut seen = Vec::new();
        r.peek_all(|b| seen.push(b.to_vec()));
        assert_eq!(seen, msgs.map(<[u8]>::to_vec));
        let mut out = Vec::new();
        r.try_pop(&mut out).unwrap();
        seen.clear();
        r.peek_all(|b| seen.push(b.to_vec()));
        assert_eq!(seen, msgs[1..].iter().map(|m| m.to_vec()).collect::<Vec<_>>());
    }

    #[test]
    fn open_rejects_garbage() {
        let seg = Segment::anonymous(1 << 20).unwrap();
        let r = Ring::create(&seg, 4, 48).unwrap();
        assert!(Ring::open(&seg, r.offset()).is_ok());
        let b = seg.alloc(4096).unwrap();
        let off = b.offset.div_ceil(128) * 128;
        assert!(matches!(Ring::open(&seg, off), Err(SegmentError::Corrupt(_))));
        assert!(Ring::open(&seg, seg.size() - 8).is_err());
    }
}
