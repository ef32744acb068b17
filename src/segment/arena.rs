//! The arena allocator: small blocks in size classes with lock-free free
//! lists, carved from chunks of the heap; large blocks straight from the heap
//! (see `heap`), which merges free neighbours.
//!
//! A small block is one of the size classes up to [`SMALL_MAX`] bytes,
//! header included. It is carved lock-free from the current chunk (`small`
//! in the segment header) or taken from its class's free list, and freed onto
//! that list: small blocks never merge, their memory stays with their class.
//! Anything larger is an exact-size heap block.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::heap::{self, Use, LARGE_LIVE};
use super::{Block, Segment, SegmentError, ShmSafe};

/// The smallest arena block, header included.
const MIN_BLOCK: u64 = 64;
/// Header in front of every arena block.
const BLOCK_HEADER: u64 = 16;
/// Size classes: four per power of two from 64 bytes up to 2^44.
pub(super) const CLASSES: usize = 4 * 38;
/// The largest small block, header included; larger ones come from the heap.
pub(super) const SMALL_MAX: u64 = 64 << 10;
/// The largest chunk small blocks are carved from.
const CHUNK_MAX: u64 = 1 << 20;
const BLOCK_LIVE: u32 = 0xB10C_0000;
const BLOCK_FREE: u32 = 0xF4EE_0000;
const OFFSET_MASK: u64 = (1 << 40) - 1;
const TAG_ONE: u64 = 1 << 40;
/// The `small` word: `(next offset / 16) << REM_BITS | (bytes left / 16)`.
const REM_BITS: u32 = 24;

// SAFETY: `#[repr(C)]`, atomics and padding integers only.
unsafe impl ShmSafe for BlockHeader {}

#[repr(C)]
struct BlockHeader {
    /// `BLOCK_LIVE | class` or `BLOCK_FREE | class` (small blocks), or a heap
    /// tag (large blocks: see `heap`).
    tag: AtomicU32,
    _pad: u32,
    /// Next free block (offset / 16) while on a free list.
    next: AtomicU64,
}

/// A block that passed validation as live.
#[derive(Debug, Clone, Copy)]
enum Live {
    /// A small block: its start (header) and class.
    Small { start: u64, class: u32 },
    /// A large block: the start of its heap header.
    Large { start: u64 },
}

impl Segment {
    /// Allocates a block of at least `len` bytes from the arena.
    ///
    /// Usable by every process at once: small blocks are lock-free, large
    /// ones (above 64 KiB) take the arena heap's lock. The block's payload is
    /// 16-byte aligned; its content is unspecified.
    pub fn alloc(&self, len: u64) -> Result<Block, SegmentError> {
        self.alloc_inner(len).map(|(block, _)| block)
    }

    /// Allocates a block of at least `len` bytes whose payload is all zero.
    ///
    /// A block never handed out before is zero already (a new segment's pages
    /// are zero and are committed only when touched); only a reused one is
    /// cleared, so a large fresh block costs no memory until it is written.
    pub fn alloc_zeroed(&self, len: u64) -> Result<Block, SegmentError> {
        let (block, fresh) = self.alloc_inner(len)?;
        if !fresh {
            let p = self.ptr(block.offset, block.capacity)?;
            // SAFETY: a block this process just allocated, in bounds (checked).
            unsafe { std::ptr::write_bytes(p, 0, block.capacity as usize) };
        }
        Ok(block)
    }

    /// The block and whether it was never used before (so it is zero).
    fn alloc_inner(&self, len: u64) -> Result<(Block, bool), SegmentError> {
        let oom = || SegmentError::OutOfMemory { requested: len, available: self.available() };
        let class = size_class(len).ok_or_else(oom)?;
        let block_size = class_size(class);
        if block_size > SMALL_MAX {
            let n = heap::block_size(len).ok_or_else(oom)?;
            let taken = self.with_heap(|h| h.alloc(n, Use::Large)).map_err(|e| match e {
                SegmentError::OutOfMemory { .. } => oom(),
                e => e,
            })?;
            let block = Block { offset: taken.start + heap::HDR, capacity: taken.size - heap::HDR };
            return Ok((block, taken.fresh));
        }
        let (start, fresh) = match self.pop_free(class)? {
            Some(off) => (off, false),
            None => (self.carve(len, block_size)?, true),
        };
        let bh = self.get::<BlockHeader>(start)?;
        bh.tag.store(BLOCK_LIVE | class as u32, Ordering::Relaxed);
        Ok((Block { offset: start + BLOCK_HEADER, capacity: block_size - BLOCK_HEADER }, fresh))
    }

    /// Returns the block whose payload starts at `offset` to the arena.
    ///
    /// An offset that is not a live block gives an error and changes nothing.
    ///
    /// # Safety
    ///
    /// No process may still read or write the block, nor hold a reference
    /// into it: the arena hands it out again, and the next owner's writes
    /// would race with them.
    pub unsafe fn free(&self, offset: u64) -> Result<(), SegmentError> {
        self.release(offset)
    }

    /// [`Segment::free`] for shmpool's own structures, whose protocols (a
    /// consumed message, a replaced value under its lock, a last reference)
    /// guarantee the block is no longer used.
    pub(crate) fn release(&self, offset: u64) -> Result<(), SegmentError> {
        let (start, class) = match self.live_block(offset)? {
            Live::Small { start, class } => (start, class),
            // The heap checks the tag again under its lock: of two racing
            // frees, the second is refused there.
            Live::Large { start } => return self.with_heap(|h| h.free(start)),
        };
        let bh = self.get::<BlockHeader>(start)?;
        if bh.tag.compare_exchange(BLOCK_LIVE | class, BLOCK_FREE | class, Ordering::AcqRel, Ordering::Relaxed).is_err()
        {
            return Err(SegmentError::Corrupt("double free of an arena block"));
        }
        // SAFETY: validated by live_block: `class` < CLASSES.
        let head = &self.free_heads()[class as usize];
        let mut cur = head.load(Ordering::Relaxed);
        loop {
            bh.next.store(cur & OFFSET_MASK, Ordering::Relaxed);
            let new = (cur & !OFFSET_MASK).wrapping_add(TAG_ONE) | (start / 16);
            // SYNC: Release publishes `next` to the popper's Acquire load of `head`.
            match head.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(c) => cur = c,
            }
        }
    }

    /// The payload capacity of the live block at `offset`, after validation.
    pub fn block_capacity(&self, offset: u64) -> Result<u64, SegmentError> {
        match self.live_block(offset)? {
            Live::Small { class, .. } => Ok(class_size(class as usize) - BLOCK_HEADER),
            Live::Large { start } => self.large_capacity(start),
        }
    }

    /// Validates that `offset` is the payload of a live arena block.
    fn live_block(&self, offset: u64) -> Result<Live, SegmentError> {
        let start = offset.checked_sub(BLOCK_HEADER).ok_or(SegmentError::Corrupt("block offset"))?;
        if start < self.arena_start || start % 16 != 0 {
            return Err(SegmentError::Corrupt("block offset outside the arena"));
        }
        let tag = self.get::<BlockHeader>(start)?.tag.load(Ordering::Acquire);
        if tag == LARGE_LIVE {
            let start = offset.checked_sub(heap::HDR).filter(|&s| s >= self.arena_start);
            let start = start.ok_or(SegmentError::Corrupt("block offset outside the arena"))?;
            return Ok(Live::Large { start });
        }
        let class = tag & 0xFFFF;
        if tag & 0xFFFF_0000 != BLOCK_LIVE || class as usize >= CLASSES {
            return Err(SegmentError::Corrupt("not a live arena block"));
        }
        let end = start.checked_add(class_size(class as usize));
        if end.is_none_or(|e| e > self.arena_end) {
            return Err(SegmentError::Corrupt("arena block overruns the arena"));
        }
        Ok(Live::Small { start, class })
    }

    fn free_heads(&self) -> &[AtomicU64; CLASSES] {
        // SAFETY: the header is in bounds (validated at open) and `free` is atomics.
        unsafe { &(*self.header()).free }
    }

    fn small_word(&self) -> &AtomicU64 {
        // SAFETY: as in free_heads.
        unsafe { &(*self.header()).small }
    }

    fn pop_free(&self, class: usize) -> Result<Option<u64>, SegmentError> {
        let head = &self.free_heads()[class];
        // SYNC: Acquire pairs with the Release push in `free`, so `next` is visible.
        let mut cur = head.load(Ordering::Acquire);
        loop {
            let start = (cur & OFFSET_MASK) * 16;
            if start == 0 {
                return Ok(None);
            }
            let bh = self.get::<BlockHeader>(start)?;
            let next = bh.next.load(Ordering::Relaxed);
            let new = (cur & !OFFSET_MASK).wrapping_add(TAG_ONE) | (next & OFFSET_MASK);
            match head.compare_exchange_weak(cur, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => {
                    if start < self.arena_start || start + class_size(class) > self.arena_end {
                        return Err(SegmentError::Corrupt("free list points outside the arena"));
                    }
                    // Only a block freed into this class may come off its list:
                    // a corrupt list must not hand out a live block.
                    if bh.tag.load(Ordering::Acquire) != BLOCK_FREE | class as u32 {
                        return Err(SegmentError::Corrupt("free list holds a block that is not free"));
                    }
                    return Ok(Some(start));
                }
                Err(c) => cur = c,
            }
        }
    }

    /// Carves a fresh (zero) small block of `block_size` bytes from the
    /// current chunk, taking a new chunk from the heap when it is used up.
    fn carve(&self, requested: u64, block_size: u64) -> Result<u64, SegmentError> {
        let word = self.small_word();
        // SYNC: Acquire pairs with the Release store of a new chunk in
        // `refill`, so its zeroed bytes are seen as zero.
        let mut cur = word.load(Ordering::Acquire);
        loop {
            let (at, left) = (cur >> REM_BITS << 4, (cur & ((1 << REM_BITS) - 1)) << 4);
            if cur != 0 && (at < self.arena_start || at.checked_add(left).is_none_or(|e| e > self.arena_end)) {
                return Err(SegmentError::Corrupt("small-block chunk"));
            }
            if block_size > left {
                self.refill(requested, block_size, cur)?;
                cur = word.load(Ordering::Acquire);
                continue;
            }
            let new = ((at + block_size) >> 4) << REM_BITS | (left - block_size) >> 4;
            match word.compare_exchange_weak(cur, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Ok(at),
                Err(c) => cur = c,
            }
        }
    }

    /// Replaces the chunk `seen` (too short for `block_size`) with a new one
    /// from the heap, unless another thread has replaced it already. What is
    /// left of the old chunk is not used again.
    fn refill(&self, requested: u64, block_size: u64, seen: u64) -> Result<(), SegmentError> {
        let oom = || SegmentError::OutOfMemory { requested, available: self.available() };
        let arena = self.arena_end - self.arena_start;
        let want = (arena / 16).clamp(1 << 10, CHUNK_MAX).max(block_size);
        self.with_heap(|h| {
            let word = self.small_word();
            if word.load(Ordering::Relaxed) != seen {
                return Ok(());
            }
            let exact = heap::block_size(block_size).ok_or_else(oom)?;
            let taken = match h.alloc(heap::block_size(want).ok_or_else(oom)?, Use::Chunk) {
                Err(SegmentError::OutOfMemory { .. }) if want > block_size => h.alloc(exact, Use::Chunk),
                r => r,
            }
            .map_err(|e| match e {
                SegmentError::OutOfMemory { .. } => oom(),
                e => e,
            })?;
            let (at, left) = (taken.start + heap::HDR, taken.size - heap::HDR);
            if at >> 4 > OFFSET_MASK || left >> 4 >= 1 << REM_BITS {
                return Err(SegmentError::Corrupt("arena too large for its small-block chunks"));
            }
            if !taken.fresh {
                let p = self.ptr(at, left)?;
                // SAFETY: the chunk was just taken from the heap under its lock
                // and is not yet published: nobody else reads or writes it.
                unsafe { std::ptr::write_bytes(p, 0, left as usize) };
            }
            // SYNC: Release publishes the zeroed chunk to `carve`'s Acquire.
            // A plain store: only a refill (under the heap lock) replaces the
            // chunk, and a carve racing with it fails its CAS and reloads.
            word.store((at >> 4) << REM_BITS | left >> 4, Ordering::Release);
            Ok(())
        })
    }

    /// Bytes the arena can still hand out to new blocks: never used, plus
    /// freed large blocks (possibly fragmented). Freed small blocks, kept for
    /// reuse in their size class, are not counted.
    pub fn available(&self) -> u64 {
        self.heap_available()
    }
}

/// The size of blocks in class `c`: 64 B, 80 B, 96 B, 112 B, 128 B, 160 B, ...
pub(super) fn class_size(c: usize) -> u64 {
    let base = MIN_BLOCK << (c / 4);
    base + (base / 4) * (c % 4) as u64
}

/// The smallest class whose blocks hold `len` payload bytes.
fn size_class(len: u64) -> Option<usize> {
    let need = len.checked_add(BLOCK_HEADER)?.max(MIN_BLOCK);
    let pow = 63 - (need / MIN_BLOCK).leading_zeros() as usize; // floor(log2(need/64))
    let first = pow * 4;
    (first..CLASSES).find(|&c| class_size(c) >= need)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_and_fit() {
        for len in [0u64, 1, 47, 48, 49, 100, 1000, 1 << 20, (1 << 20) + 1, 3 << 30] {
            let c = size_class(len).unwrap();
            assert!(class_size(c) >= len + BLOCK_HEADER, "len {len}");
            if c > 0 {
                assert!(class_size(c - 1) < (len + BLOCK_HEADER).max(MIN_BLOCK), "len {len} not tight");
            }
            assert_eq!(class_size(c) % 16, 0);
        }
    }

    #[test]
    fn alloc_free_reuses_and_reports_oom() {
        let seg = Segment::anonymous(1 << 20).unwrap();
        let a = seg.alloc(100).unwrap();
        assert!(a.capacity >= 100);
        assert_eq!(a.offset % 16, 0);
        seg.release(a.offset).unwrap();
        let b = seg.alloc(100).unwrap();
        assert_eq!(a, b, "freed block is reused");
        assert!(matches!(seg.release(b.offset + 16), Err(SegmentError::Corrupt(_))));
        seg.release(b.offset).unwrap();
        assert!(matches!(seg.release(b.offset), Err(SegmentError::Corrupt(_))), "double free");
        match seg.alloc(2 << 20) {
            Err(SegmentError::OutOfMemory { requested, available }) => {
                assert_eq!(requested, 2 << 20);
                assert!(available < 1 << 20);
            }
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
    }

    #[test]
    fn corrupt_allocator_state_is_an_error() {
        let seg = Segment::anonymous(1 << 20).unwrap();
        let a = seg.alloc(100).unwrap();
        let b = seg.alloc(100).unwrap();
        seg.release(a.offset).unwrap();
        // Mark the freed block live again behind the allocator's back: the
        // free list now names a live block and must not hand it out.
        let bh = seg.get::<BlockHeader>(a.offset - BLOCK_HEADER).unwrap();
        bh.tag.store(BLOCK_LIVE | bh.tag.load(Ordering::Relaxed) & 0xFFFF, Ordering::Relaxed);
        assert!(matches!(seg.alloc(100), Err(SegmentError::Corrupt(_))));
        // A chunk pointer outside the arena is refused rather than handing
        // out blocks there.
        let word = seg.small_word().load(Ordering::Relaxed);
        seg.small_word().store(word | (seg.arena_end >> 4) << REM_BITS, Ordering::Relaxed);
        assert!(matches!(seg.alloc(1000), Err(SegmentError::Corrupt(_))));
        seg.small_word().store(word, Ordering::Relaxed);
        seg.release(b.offset).unwrap();
    }
}
