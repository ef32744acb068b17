//! What a topic or a queue keeps in its named segment: one header (type,
//! shape, members) and, in the arena, samples and items.
//!
//! A **sample** (or queue item) is one arena block: a [`SampleHeader`] and,
//! 16-byte aligned after it, the value's bytes (an rkyv archive, or raw
//! bytes for [`Bytes`](super::Bytes)). It is written once, by one
//! publisher, and read in place by every subscriber; its reference count
//! says how many holders it has (a publisher sending it, each subscriber
//! queue it is in, each subscriber holding it, the history), and the last
//! one frees the block.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::segment::{Segment, ShmSafe};
use crate::sync::RawMutex;

/// Marks a header whose creator finished laying it out.
pub(super) const MAGIC: u32 = 0x5450_4331; // "TPC1"
/// `Header::kind`.
pub(super) const KIND_TOPIC: u32 = 1;
pub(super) const KIND_QUEUE: u32 = 2;
/// The directory kind of the header block.
pub(super) const DIR_KIND: u32 = 30;

/// Most processes using one topic or queue at once.
pub const MAX_MEMBERS: usize = 128;
/// Most subscribers of one topic (and consumers of one queue).
pub const MAX_SUBSCRIBERS: usize = 64;
/// Most publishers of one topic (and producers of one queue) at once.
pub const MAX_PUBLISHERS: usize = 64;
/// Most samples (items) one subscriber (consumer) holds at once.
pub const MAX_HELD: usize = 64;
/// Most loans one publisher has out at once.
pub const MAX_LOANS: usize = 16;
/// The longest type name kept for error messages.
pub(super) const TYPE_NAME: usize = 120;

/// A subscriber slot's life.
pub(super) const FREE: u32 = 0;
/// Taken, history being copied: publishers do not deliver to it yet.
pub(super) const JOINING: u32 = 1;
/// Publishers deliver to it.
pub(super) const ACTIVE: u32 = 2;
/// Its process died; one cleaner gives back what it held.
pub(super) const CLEANING: u32 = 3;
/// Dropped by its owner while samples it received are still held: free
/// when the last of them drops (or, if the owner dies first, reclaimed).
pub(super) const RETIRING: u32 = 4;

/// The header of a topic's or queue's segment.
#[repr(C)]
pub(super) struct Header {
    /// `MAGIC` once laid out (Release, after everything else).
    pub magic: AtomicU32,
    pub kind: AtomicU32,
    pub fingerprint: AtomicU64,
    pub type_size: AtomicU32,
    pub type_align: AtomicU32,
    pub type_name_len: AtomicU32,
    pub max_subscribers: AtomicU32,
    pub depth: AtomicU32,
    pub history: AtomicU32,
    /// Queues: the most items queued at once.
    pub capacity: AtomicU32,
    /// A member saw the table empty and is removing the name (see `members`).
    pub closing: AtomicU32,
    pub type_name: [AtomicU8x8; TYPE_NAME / 8],
    /// Sequence numbers of samples (topics) or items (queues).
    pub next_seq: AtomicU64,
    /// Queues: items queued (not taken), for the capacity bound.
    pub queued: AtomicU64,
    /// Topics: the pid of the process whose bridge carries this host's
    /// samples to and from the network (0: none). One per host, so that
    /// each sample crosses once.
    pub bridge: AtomicU32,
    pub _pad_bridge: AtomicU32,
    /// The history ring (topics with history), or the item ring (queues).
    pub ring: AtomicU64,
    /// Serialises sends with joins when the topic keeps history, so a
    /// joiner gets every sample exactly once: from the history or its queue.
    pub history_lock: RawMutex,
    /// Pids of the processes using the segment (0: free).
    pub members: [AtomicU32; MAX_MEMBERS],
    pub publishers: [PubSlot; MAX_PUBLISHERS],
    pub subscribers: [SubSlot; MAX_SUBSCRIBERS],
}

/// Eight bytes of the type name (atomics, as everything shared is).
#[repr(transparent)]
pub(super) struct AtomicU8x8(pub AtomicU64);

/// A publisher (or queue producer): its loans, so that a dead one's are freed.
#[repr(C)]
pub(super) struct PubSlot {
    pub pid: AtomicU32,
    pub _pad: AtomicU32,
    /// Samples loaned or being sent (offset, 0: none). A sample is recorded
    /// here before anything else refers to it, and its record cleared
    /// before the publisher's own reference goes.
    pub loans: [AtomicU64; MAX_LOANS],
    /// Its claims on a ring while it pushes and while it pops, `(pos << 8)
    /// | n` (0: none), and which ring (`members::SHARED_RING` for the
    /// history or item ring, else a subscriber's index): a publisher killed
    /// holding a slot leaves it to be poisoned or released, never wedged.
    /// Apart, so that a push claim, cleared only after its slot is
    /// published, never names a slot a live subscriber then pops. (One
    /// publisher handle makes one ring operation at a time: its threads
    /// take turns, so one record each suffices.)
    pub push_claim: AtomicU64,
    pub pop_claim: AtomicU64,
    pub claim_ring: AtomicU32,
    pub _pad2: AtomicU32,
}

/// Set in a slot's `pid` while a cleaner reclaims it: the low bits are
/// then the cleaner's pid (a cleaner that dies is taken over).
pub(super) const CLEANER: u32 = 1 << 31;

/// The live process a slot's `pid` field names: its owner, or the cleaner
/// reclaiming it (see [`CLEANER`]).
pub(super) fn slot_pid(raw: u32) -> u32 {
    raw & !CLEANER
}

/// A subscriber (or queue consumer).
#[repr(C)]
pub(super) struct SubSlot {
    pub pid: AtomicU32,
    /// `FREE`, `JOINING`, `ACTIVE`, `CLEANING`.
    pub state: AtomicU32,
    /// Its [`Overflow`](super::Overflow) policy.
    pub overflow: AtomicU32,
    pub _pad: AtomicU32,
    /// Samples dropped from its queue (`DropOldest`) or not delivered.
    pub missed: AtomicU64,
    /// Its queue of sample references (topics).
    pub ring: AtomicU64,
    /// Its claim while it pops (see `Ring::pop_many_recorded`).
    pub pop_claim: AtomicU64,
    /// A consumer's claim while it pushes an item back (`Item::nack`).
    pub push_claim: AtomicU64,
    /// Samples (items) it received and holds (offset, 0: none).
    pub held: [AtomicU64; MAX_HELD],
}

// SAFETY: `#[repr(C)]`, atomics and a `RawMutex` (atomics) only, valid when zeroed.
unsafe impl ShmSafe for Header {}

impl Header {
    /// The type name recorded at creation.
    pub fn type_name(&self) -> String {
        let len = (self.type_name_len.load(Ordering::Relaxed) as usize).min(TYPE_NAME);
        let bytes: Vec<u8> =
            self.type_name.iter().flat_map(|w| w.0.load(Ordering::Relaxed).to_le_bytes()).take(len).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn set_type_name(&self, name: &str) {
        let bytes = name.as_bytes();
        let len = bytes.len().min(TYPE_NAME);
        for (i, w) in self.type_name.iter().enumerate() {
            let mut word = [0u8; 8];
            for (j, b) in word.iter_mut().enumerate() {
                if let Some(&c) = bytes[..len].get(i * 8 + j) {
                    *b = c;
                }
            }
            w.0.store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
        self.type_name_len.store(len as u32, Ordering::Relaxed);
    }
}

/// The header of every sample and queue item block.
#[repr(C)]
pub(super) struct SampleHeader {
    /// Holders of the sample; the last one frees the block.
    pub refs: AtomicU32,
    /// `SAMPLE_MAGIC ^ (offset as u32)`: a reference that names no sample
    /// (hostile or stale) is refused before anything else is read.
    pub check: AtomicU32,
    /// Length of the value's bytes after the header.
    pub len: AtomicU64,
    pub seq: AtomicU64,
    /// `FROM_NETWORK`: a bridge published it, received from another host
    /// (a bridge never sends such a sample back out).
    pub flags: AtomicU64,
}

/// [`SampleHeader::flags`]: the sample came from another host.
#[cfg(feature = "net")]
pub(super) const FROM_NETWORK: u64 = 1;

// SAFETY: `#[repr(C)]`, atomics only, valid when zeroed.
unsafe impl ShmSafe for SampleHeader {}

pub(super) const SAMPLE_MAGIC: u32 = 0x5341_4d50; // "SAMP"
/// Bytes before a sample's value (the value starts 16-byte aligned).
pub(super) const SAMPLE_HEADER: u64 = std::mem::size_of::<SampleHeader>() as u64;

const _: () = assert!(SAMPLE_HEADER % 16 == 0);

/// A checked view of the sample at `offset`.
pub(super) fn sample(seg: &Segment, offset: u64) -> Option<&SampleHeader> {
    if offset == 0 || offset % 16 != 0 {
        return None;
    }
    let h = seg.get::<SampleHeader>(offset).ok()?;
    if h.check.load(Ordering::Acquire) != SAMPLE_MAGIC ^ offset as u32 {
        return None;
    }
    seg.check_range(offset + SAMPLE_HEADER, h.len.load(Ordering::Relaxed)).ok()?;
    Some(h)
}

/// Allocates a sample of `len` value bytes with one reference (its
/// publisher's); returns its offset. The value is the caller's to write.
pub(super) fn alloc_sample(seg: &Segment, len: u64, seq: u64) -> Result<u64, crate::segment::SegmentError> {
    let block = seg.alloc(SAMPLE_HEADER + len.max(1))?;
    if block.offset % 16 != 0 {
        let _ = seg.release(block.offset);
        return Err(crate::segment::SegmentError::Corrupt("arena block not 16-byte aligned"));
    }
    let h = seg.get::<SampleHeader>(block.offset)?;
    h.refs.store(1, Ordering::Relaxed);
    h.len.store(len, Ordering::Relaxed);
    h.seq.store(seq, Ordering::Relaxed);
    h.flags.store(0, Ordering::Relaxed);
    // SYNC: Release: a reader that checks the tag with Acquire sees the rest.
    h.check.store(SAMPLE_MAGIC ^ block.offset as u32, Ordering::Release);
    Ok(block.offset)
}

/// Adds a reference to the sample at `offset`.
pub(super) fn retain(seg: &Segment, offset: u64) -> bool {
    match sample(seg, offset) {
        Some(h) => {
            h.refs.fetch_add(1, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// Drops a reference to the sample at `offset`; the last frees it.
pub(super) fn release(seg: &Segment, offset: u64) {
    let Some(h) = sample(seg, offset) else { return };
    // SYNC: AcqRel: every holder's reads happen before the last one frees.
    let before = h.refs.fetch_sub(1, Ordering::AcqRel);
    if before == 1 {
        h.check.store(0, Ordering::Relaxed);
        let _ = seg.release(offset);
    } else if before == 0 {
        // Released once too often (a hostile or corrupt segment): undo, leak.
        h.refs.fetch_add(1, Ordering::Relaxed);
    }
}

/// The value bytes of the sample at `offset` (checked bounds).
pub(super) fn value_ptr(seg: &Segment, offset: u64) -> Option<(*mut u8, usize)> {
    let h = sample(seg, offset)?;
    let len = h.len.load(Ordering::Relaxed);
    let p = seg.ptr(offset + SAMPLE_HEADER, len).ok()?;
    Some((p, len as usize))
}

/// Records `offset` in the first free entry of `slots`; false if none is free.
pub(super) fn record(slots: &[AtomicU64], offset: u64) -> Option<usize> {
    slots.iter().position(|s| s.compare_exchange(0, offset, Ordering::AcqRel, Ordering::Relaxed).is_ok())
}

/// Clears the entry of `slots` that holds `offset`.
pub(super) fn unrecord(slots: &[AtomicU64], at: usize, offset: u64) {
    if let Some(s) = slots.get(at) {
        let _ = s.compare_exchange(offset, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}
