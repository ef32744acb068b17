//! The arena: size classes, their lock-free free lists, and the bump pointer.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::{Block, Segment, SegmentError, ShmSafe};

/// The smallest arena block, header included.
const MIN_BLOCK: u64 = 64;
/// Header in front of every arena block.
const BLOCK_HEADER: u64 = 16;
/// Size classes: four per power of two from 64 bytes up to 2^44.
pub(super) const CLASSES: usize = 4 * 38;
const BLOCK_LIVE: u32 = 0xB10C_0000;
const BLOCK_FREE: u32 = 0xF4EE_0000;
const OFFSET_MASK: u64 = (1 << 40) - 1;
const TAG_ONE: u64 = 1 << 40;

// SAFETY: `#[repr(C)]`, atomics and padding integers only.
unsafe impl ShmSafe for BlockHeader {}

#[repr(C)]
struct BlockHeader {
    /// `BLOCK_LIVE | class` or `BLOCK_FREE | class`.
    tag: AtomicU32,
    _pad: u32,
    /// Next free block (offset / 16) while on a free list.
    next: AtomicU64,
}

impl Segment {
    /// Allocates a block of at least `len` bytes from the arena.
    ///
    /// Lock-free and usable by every process at once. The block's payload is
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

    /// The block and whether it comes fresh from the bump pointer (never used).
    fn alloc_inner(&self, len: u64) -> Result<(Block, bool), SegmentError> {
        let class = size_class(len).ok_or(SegmentError::OutOfMemory { requested: len, available: self.available() })?;
        let block_size = class_size(class);
        let (start, fresh) = match self.pop_free(class)? {
            Some(off) => (off, false),
            None => (self.bump(len, block_size)?, true),
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
        let (start, class) = self.live_block(offset)?;
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
        let (_, class) = self.live_block(offset)?;
        Ok(class_size(class as usize) - BLOCK_HEADER)
    }

    /// Validates that `offset` is the payload of a live arena block.
    fn live_block(&self, offset: u64) -> Result<(u64, u32), SegmentError> {
        let start = offset.checked_sub(BLOCK_HEADER).ok_or(SegmentError::Corrupt("block offset"))?;
        if start < self.arena_start || start % 16 != 0 {
            return Err(SegmentError::Corrupt("block offset outside the arena"));
        }
        let tag = self.get::<BlockHeader>(start)?.tag.load(Ordering::Acquire);
        let class = tag & 0xFFFF;
        if tag & 0xFFFF_0000 != BLOCK_LIVE || class as usize >= CLASSES {
            return Err(SegmentError::Corrupt("not a live arena block"));
        }
        let end = start.checked_add(class_size(class as usize));
        if end.is_none_or(|e| e > self.arena_end) {
            return Err(SegmentError::Corrupt("arena block overruns the arena"));
        }
        Ok((start, class))
    }

    fn free_heads(&self) -> &[AtomicU64; CLASSES] {
        // SAFETY: the header is in bounds (validated at open) and `free` is atomics.
        unsafe { &(*self.header()).free }
    }

    fn bump_word(&self) -> &AtomicU64 {
        // SAFETY: as in free_heads.
        unsafe { &(*self.header()).bump }
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

    fn bump(&self, requested: u64, block_size: u64) -> Result<u64, SegmentError> {
        let bump = self.bump_word();
        let mut cur = bump.load(Ordering::Relaxed);
        loop {
            let end = cur.checked_add(block_size).filter(|&e| e <= self.arena_end);
            let Some(end) = end else {
                return Err(SegmentError::OutOfMemory { requested, available: self.arena_end.saturating_sub(cur) });
            };
            if cur < self.arena_start || cur % 16 != 0 {
                return Err(SegmentError::Corrupt("arena bump pointer"));
            }
            match bump.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(cur),
                Err(c) => cur = c,
            }
        }
    }

    /// Bytes never yet handed out by the arena (freed blocks not counted).
    pub fn available(&self) -> u64 {
        self.arena_end.saturating_sub(self.bump_word().load(Ordering::Relaxed))
    }
}

/// The size of blocks in class `c`: 64 B, 80 B, 96 B, 112 B, 128 B, 160 B, ...
fn class_size(c: usize) -> u64 {
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
        // A misaligned bump pointer is refused rather than handing out
        // misaligned blocks.
        seg.bump_word().fetch_add(8, Ordering::Relaxed);
        assert!(matches!(seg.alloc(1000), Err(SegmentError::Corrupt(_))));
        seg.release(b.offset).unwrap();
    }
}
