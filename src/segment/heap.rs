//! The heap under the arena: boundary-tagged blocks that merge with free
//! neighbours, under one robust lock.
//!
//! The whole arena is one heap, `[arena_start, top)`, walked block by block
//! from `arena_start` by each block's `size`; `[top, arena_end)` was never
//! handed out (and is still zero). A heap block is
//!
//! - *live*: a large allocation (payload above the small size classes),
//! - *chunk*: memory the small size classes carve their blocks from (never
//!   given back: freed small blocks stay on their class's free list), or
//! - *free*: on the free list of the class of its size, merged with free
//!   neighbours as soon as it is freed.
//!
//! # Crash safety
//!
//! The *primary* state is `top` and each block's `size` and `tag`: the walk.
//! Everything else (free lists, `prev_size`, `last`, `free_bytes`) is
//! *derived* and rebuilt from the walk. Every operation runs under `lock` (a
//! [`RawMutex`] that detects a dead holder) with `dirty` set; the next
//! holder after a death or an unwind finds `dirty` (or `OwnerDied`) and
//! rebuilds before doing anything else.
//!
//! Each operation changes the walk only by single stores, each leaving a
//! valid walk: a new block's header is written before `top` or the `size`
//! that makes it reachable, and a block turns live (its `tag`) only after it
//! has been cut to size. So a process killed anywhere leaves blocks that are
//! free (found again by the rebuild, merged with their neighbours) or live
//! (at worst leaked, if it died before handing the block on); a live block is
//! never on a free list, so it is never handed out twice. These commit
//! stores are Release, so neither the compiler nor the CPU moves the header
//! writes they make reachable after them.
//!
//! Every size and offset read from the segment is checked before use; an
//! inconsistency is [`SegmentError::Corrupt`] and leaves `dirty` set, so the
//! next operation tries a rebuild (which fails again, with `Corrupt`, if the
//! walk itself is broken).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use crate::sync::{Acquired, RawMutex};

use super::arena::{class_size, CLASSES};
use super::{Segment, SegmentError, ShmSafe, Unlock, LOCK_WAIT};

/// Bytes of [`HeapHeader`] in front of each heap block's payload.
pub(super) const HDR: u64 = 48;
/// Heap block sizes are multiples of this.
const GRAIN: u64 = 64;
/// The smallest heap block: a header and one grain.
const MIN_HEAP_BLOCK: u64 = HDR + 16;
/// A free remainder smaller than this stays with the block it was cut from.
const MIN_SPLIT: u64 = 4096;
/// `tag` of a live large block. Sits where a small block's tag does (16 bytes
/// before the payload) and differs from every small tag.
pub(super) const LARGE_LIVE: u32 = 0x1A46_0001;
const LARGE_FREE: u32 = 0x1A46_0002;
const LARGE_CHUNK: u32 = 0x1A46_0003;

/// The heap's shared state in the segment header.
#[repr(C)]
pub(super) struct HeapState {
    /// Guards everything here and every heap block's header.
    lock: RawMutex,
    /// Nonzero while an operation is under way (see the module docs).
    /// SYNC: set with AcqRel before an operation's first write, cleared with
    /// Release after its last; the lock's own Acquire/Release publishes it.
    dirty: AtomicU32,
    /// Start of the last block (the one ending at `top`), 0 when the heap is
    /// empty. Derived.
    last: AtomicU64,
    /// Bytes in free blocks. Derived.
    free_bytes: AtomicU64,
    /// Free list heads by the (floor) class of a block's size: the offset of
    /// its first block, or 0. Doubly linked through `next_free`/`prev_free`.
    /// Derived.
    heads: [AtomicU64; CLASSES],
}

/// In front of every heap block; a small block's [`super::arena`] header
/// overlays its last 16 bytes (`tag`, `_pad`, `_spare`).
#[repr(C)]
struct HeapHeader {
    /// The size of the block before this one (0 for the first). Derived.
    prev_size: AtomicU64,
    /// This block's size, header included. Primary.
    size: AtomicU64,
    /// Next and previous block on the free list, while free. Derived.
    next_free: AtomicU64,
    prev_free: AtomicU64,
    /// `LARGE_LIVE`, `LARGE_FREE` or `LARGE_CHUNK`. Primary.
    tag: AtomicU32,
    _pad: u32,
    _spare: u64,
}

// SAFETY: `#[repr(C)]`, atomics and padding integers only, no pointers, no Drop.
unsafe impl ShmSafe for HeapHeader {}

/// A heap block handed out: its start, its size and whether all of it was
/// never used before (so it is still zero).
#[derive(Debug, Clone, Copy)]
pub(super) struct Taken {
    pub(super) start: u64,
    pub(super) size: u64,
    pub(super) fresh: bool,
}

/// What to make of a heap block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Use {
    /// A large block for a caller.
    Large,
    /// A chunk for the small size classes.
    Chunk,
}

/// The heap of one segment, borrowed while its lock is held.
pub(super) struct Heap<'a> {
    seg: &'a Segment,
    st: &'a HeapState,
    top: &'a AtomicU64,
}

/// The largest class whose size is at most `size` (0 below the smallest).
fn floor_class(size: u64) -> usize {
    let Some(pow) = (size / class_size(0)).checked_ilog2() else { return 0 };
    let base = class_size(0) << pow;
    let c = pow as usize * 4 + ((size - base) / (base / 4)).min(3) as usize;
    c.min(CLASSES - 1)
}

/// The heap block size for `len` payload bytes.
pub(super) fn block_size(len: u64) -> Option<u64> {
    Some(len.checked_add(HDR + GRAIN - 1)? / GRAIN * GRAIN)
}

fn corrupt(what: &'static str) -> SegmentError {
    SegmentError::Corrupt(what)
}

impl Segment {
    fn heap_state(&self) -> &HeapState {
        // SAFETY: the header is in bounds (validated at open); `heap` holds atomics only.
        unsafe { &(*self.header()).heap }
    }

    /// Runs `f` on the heap under its lock, rebuilding the derived state
    /// first if the last holder died or stopped midway.
    pub(super) fn with_heap<R>(&self, f: impl FnOnce(&Heap<'_>) -> Result<R, SegmentError>) -> Result<R, SegmentError> {
        let st = self.heap_state();
        let how = st
            .lock
            .lock(Some(Instant::now() + LOCK_WAIT))
            .map_err(|t| SegmentError::LockTimeout { lock: "arena", holder: t.holder })?;
        let _unlock = Unlock(&st.lock);
        // SAFETY: as in heap_state.
        let heap = Heap { seg: self, st, top: unsafe { &(*self.header()).top } };
        // SYNC: the Acquire half keeps this operation's writes after the mark
        // (a process killed midway leaves it set); the Release clear below
        // keeps them before.
        let was_dirty = st.dirty.swap(1, Ordering::AcqRel) != 0;
        if was_dirty || matches!(how, Acquired::OwnerDied(_)) {
            heap.rebuild()?;
        }
        let result = f(&heap);
        if matches!(result, Ok(_) | Err(SegmentError::OutOfMemory { .. })) {
            st.dirty.store(0, Ordering::Release);
        }
        result
    }

    /// The payload capacity of the live large block whose header starts at
    /// `start` (its tag already checked by the caller). Lock-free: the
    /// caller owns the block, so its size does not change under it.
    pub(super) fn large_capacity(&self, start: u64) -> Result<u64, SegmentError> {
        let size = self.get::<HeapHeader>(start)?.size.load(Ordering::Relaxed);
        if size < MIN_HEAP_BLOCK || size % 16 != 0 || start.checked_add(size).is_none_or(|e| e > self.arena_end) {
            return Err(corrupt("large block size"));
        }
        Ok(size - HDR)
    }

    /// Bytes the heap can still hand out: never used, plus free blocks
    /// (which may be fragmented). Read without the lock: a snapshot.
    pub(super) fn heap_available(&self) -> u64 {
        // SAFETY: as in heap_state.
        let top = unsafe { &(*self.header()).top }.load(Ordering::Relaxed);
        let free = self.heap_state().free_bytes.load(Ordering::Relaxed);
        self.arena_end.saturating_sub(top).saturating_add(free)
    }
}

impl Heap<'_> {
    fn start(&self) -> u64 {
        self.seg.arena_start
    }

    fn top(&self) -> Result<u64, SegmentError> {
        // SYNC: Acquire pairs with the Release stores of `top` (by any earlier
        // holder: the lock orders them anyway).
        let top = self.top.load(Ordering::Acquire);
        if top < self.start() || top > self.seg.arena_end || top % 16 != 0 {
            return Err(corrupt("arena heap top"));
        }
        Ok(top)
    }

    /// The header at `at`, which must lie in the arena.
    fn hdr(&self, at: u64) -> Result<&HeapHeader, SegmentError> {
        if at < self.start() || at % 16 != 0 || at.checked_add(HDR).is_none_or(|e| e > self.seg.arena_end) {
            return Err(corrupt("heap block offset"));
        }
        self.seg.get::<HeapHeader>(at)
    }

    /// The block at `at` below `top`: its header, checked size and tag.
    fn block(&self, at: u64, top: u64) -> Result<(&HeapHeader, u64, u32), SegmentError> {
        let h = self.hdr(at)?;
        let size = h.size.load(Ordering::Relaxed);
        if size < MIN_HEAP_BLOCK || size % 16 != 0 || at.checked_add(size).is_none_or(|e| e > top) {
            return Err(corrupt("heap block size"));
        }
        let tag = h.tag.load(Ordering::Relaxed);
        if !matches!(tag, LARGE_LIVE | LARGE_FREE | LARGE_CHUNK) {
            return Err(corrupt("heap block tag"));
        }
        Ok((h, size, tag))
    }

    fn push(&self, at: u64, size: u64) -> Result<(), SegmentError> {
        let head = &self.st.heads[floor_class(size)];
        let h = self.hdr(at)?;
        let old = head.load(Ordering::Relaxed);
        if old != 0 {
            self.hdr(old)?.prev_free.store(at, Ordering::Relaxed);
        }
        h.next_free.store(old, Ordering::Relaxed);
        h.prev_free.store(0, Ordering::Relaxed);
        head.store(at, Ordering::Relaxed);
        self.st.free_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    fn unlink(&self, at: u64, size: u64) -> Result<(), SegmentError> {
        let head = &self.st.heads[floor_class(size)];
        let h = self.hdr(at)?;
        let next = h.next_free.load(Ordering::Relaxed);
        let prev = h.prev_free.load(Ordering::Relaxed);
        let next_h = if next != 0 { Some(self.hdr(next)?) } else { None };
        if prev == 0 {
            if head.load(Ordering::Relaxed) != at {
                return Err(corrupt("heap free list head"));
            }
            head.store(next, Ordering::Relaxed);
        } else {
            let prev_h = self.hdr(prev)?;
            if prev_h.next_free.load(Ordering::Relaxed) != at {
                return Err(corrupt("heap free list link"));
            }
            prev_h.next_free.store(next, Ordering::Relaxed);
        }
        if let Some(n) = next_h {
            n.prev_free.store(prev, Ordering::Relaxed);
        }
        let free = self.st.free_bytes.load(Ordering::Relaxed);
        self.st.free_bytes.store(free.saturating_sub(size), Ordering::Relaxed);
        Ok(())
    }

    /// A free block of at least `n` bytes, taken off its list.
    fn find(&self, n: u64, top: u64) -> Result<Option<(u64, u64)>, SegmentError> {
        let first = floor_class(n);
        // Every free block lies below `top` and is at least MIN_HEAP_BLOCK
        // long: a longer list is a cycle.
        let mut budget = (top - self.start()) / MIN_HEAP_BLOCK + 1;
        for (c, head) in self.st.heads.iter().enumerate().skip(first) {
            let mut at = head.load(Ordering::Relaxed);
            while at != 0 {
                budget = budget.checked_sub(1).ok_or(corrupt("heap free list cycles"))?;
                let (h, size, tag) = self.block(at, top)?;
                if tag != LARGE_FREE || floor_class(size) != c {
                    return Err(corrupt("heap free list holds a block that is not free"));
                }
                if size >= n {
                    self.unlink(at, size)?;
                    return Ok(Some((at, size)));
                }
                // Only the first class can hold blocks too small: in the
                // others the first block fits.
                at = h.next_free.load(Ordering::Relaxed);
            }
        }
        Ok(None)
    }

    /// Extends the heap at `top` so that a free block of at least `n` bytes
    /// ends there, merged with the last block if that is free.
    fn grow(&self, n: u64, top: u64) -> Result<Taken, SegmentError> {
        let last = self.st.last.load(Ordering::Relaxed);
        let tail = if last == 0 {
            if top != self.start() {
                return Err(corrupt("heap last block"));
            }
            None
        } else {
            let (_, size, tag) = self.block(last, top)?;
            if last + size != top {
                return Err(corrupt("heap last block"));
            }
            Some((last, size, tag == LARGE_FREE))
        };
        let tail_free = tail.filter(|t| t.2).map_or(0, |t| t.1);
        let need = n.saturating_sub(tail_free).max(GRAIN);
        let new_top = top.checked_add(need).filter(|&e| e <= self.seg.arena_end);
        let Some(new_top) = new_top else {
            let available = self.seg.arena_end - top + self.st.free_bytes.load(Ordering::Relaxed);
            return Err(SegmentError::OutOfMemory { requested: n, available });
        };
        // Build the new block beyond `top`, where the walk does not look yet.
        let h = self.hdr(top)?;
        h.prev_size.store(tail.map_or(0, |t| t.1), Ordering::Relaxed);
        h.size.store(need, Ordering::Relaxed);
        h.tag.store(LARGE_FREE, Ordering::Relaxed);
        // SYNC: Release keeps the header writes above before the store that
        // makes the block reachable (crash order; the lock publishes both).
        self.top.store(new_top, Ordering::Release);
        match tail {
            Some((at, size, true)) => {
                self.unlink(at, size)?;
                // SYNC: Release: as above, the merge is one store.
                self.hdr(at)?.size.store(size + need, Ordering::Release);
                Ok(Taken { start: at, size: size + need, fresh: false })
            }
            _ => {
                self.st.last.store(top, Ordering::Relaxed);
                Ok(Taken { start: top, size: need, fresh: true })
            }
        }
    }

    /// Hands out a block of at least `n` bytes (a multiple of [`GRAIN`],
    /// header included) for `what`.
    pub(super) fn alloc(&self, n: u64, what: Use) -> Result<Taken, SegmentError> {
        let top = self.top()?;
        let mut taken = match self.find(n, top)? {
            Some((start, size)) => Taken { start, size, fresh: false },
            None => self.grow(n, top)?,
        };
        let top = self.top()?;
        let h = self.hdr(taken.start)?;
        if taken.size - n >= MIN_SPLIT {
            let (rest, rest_size) = (taken.start + n, taken.size - n);
            let r = self.hdr(rest)?;
            r.prev_size.store(n, Ordering::Relaxed);
            r.size.store(rest_size, Ordering::Relaxed);
            r.tag.store(LARGE_FREE, Ordering::Relaxed);
            // SYNC: Release keeps the remainder's header before the store
            // that makes it reachable.
            h.size.store(n, Ordering::Release);
            if rest + rest_size < top {
                self.hdr(rest + rest_size)?.prev_size.store(rest_size, Ordering::Relaxed);
            } else {
                self.st.last.store(rest, Ordering::Relaxed);
            }
            self.push(rest, rest_size)?;
            taken.size = n;
        }
        let tag = if what == Use::Large { LARGE_LIVE } else { LARGE_CHUNK };
        // SYNC: Release: the block turns live only once cut to size.
        h.tag.store(tag, Ordering::Release);
        Ok(taken)
    }

    /// Frees the live large block at `at`, merging it with free neighbours.
    pub(super) fn free(&self, at: u64) -> Result<(), SegmentError> {
        let top = self.top()?;
        let (h, mut size, tag) = self.block(at, top)?;
        if tag != LARGE_LIVE {
            return Err(corrupt("double free of an arena block"));
        }
        // A forged header inside some block's payload has no neighbours that
        // agree with it.
        let prev_size = h.prev_size.load(Ordering::Relaxed);
        let prev = if at == self.start() {
            None
        } else {
            let p = at.checked_sub(prev_size).filter(|&p| p >= self.start() && prev_size != 0);
            let p = p.ok_or(corrupt("not a live arena block"))?;
            let (ph, ps, ptag) = self.block(p, top)?;
            if ps != prev_size {
                return Err(corrupt("not a live arena block"));
            }
            Some((p, ph, ps, ptag))
        };
        let next = at + size;
        let next = if next < top { Some((next, self.block(next, top)?)) } else { None };
        if next.is_some_and(|(_, (nh, _, _))| nh.prev_size.load(Ordering::Relaxed) != size) {
            return Err(corrupt("not a live arena block"));
        }
        // SYNC: Release: the commit point of the free (crash order).
        h.tag.store(LARGE_FREE, Ordering::Release);
        let mut start = at;
        if let Some((n, (_, ns, LARGE_FREE))) = next {
            self.unlink(n, ns)?;
            size += ns;
            // SYNC: Release: one store merges (crash order).
            h.size.store(size, Ordering::Release);
        }
        if let Some((p, ph, ps, LARGE_FREE)) = prev {
            self.unlink(p, ps)?;
            size += ps;
            start = p;
            // SYNC: Release: as above.
            ph.size.store(size, Ordering::Release);
        }
        if start + size < top {
            self.hdr(start + size)?.prev_size.store(size, Ordering::Relaxed);
        } else {
            self.st.last.store(start, Ordering::Relaxed);
        }
        self.push(start, size)
    }

    /// Rebuilds the derived state from the walk, merging adjacent free blocks.
    fn rebuild(&self) -> Result<(), SegmentError> {
        for head in &self.st.heads {
            head.store(0, Ordering::Relaxed);
        }
        self.st.free_bytes.store(0, Ordering::Relaxed);
        self.st.last.store(0, Ordering::Relaxed);
        let top = self.top()?;
        let mut at = self.start();
        // The block before `at`, its size (grown by merges) and whether it is free.
        let mut prev: Option<(u64, u64, bool)> = None;
        while at < top {
            let (h, size, tag) = self.block(at, top)?;
            let free = tag == LARGE_FREE;
            prev = match prev {
                Some((p, ps, true)) if free => {
                    // SYNC: Release: one store merges (crash order).
                    self.hdr(p)?.size.store(ps + size, Ordering::Release);
                    Some((p, ps + size, true))
                }
                _ => {
                    h.prev_size.store(prev.map_or(0, |p| p.1), Ordering::Relaxed);
                    if let Some((p, ps, true)) = prev {
                        self.push(p, ps)?;
                    }
                    Some((at, size, free))
                }
            };
            at += size;
        }
        if let Some((p, ps, free)) = prev {
            if free {
                self.push(p, ps)?;
            }
            self.st.last.store(p, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_classes_are_floors() {
        for size in [64u64, 65, 79, 80, 4096, 65535, 65536, 1 << 20, (1 << 20) + 1, 33 << 20, 3 << 30] {
            let c = floor_class(size);
            assert!(class_size(c) <= size, "{size}");
            assert!(c + 1 == CLASSES || class_size(c + 1) > size, "{size}");
        }
        assert_eq!(floor_class(0), 0);
        assert_eq!(floor_class(u64::MAX), CLASSES - 1);
    }

    const MIB: u64 = 1 << 20;

    fn header_of(seg: &Segment, b: crate::segment::Block) -> &HeapHeader {
        seg.get::<HeapHeader>(b.offset - HDR).unwrap()
    }

    /// A process killed right after the commit store of a free (tag FREE,
    /// lists not updated) leaves `dirty` set: the next operation rebuilds,
    /// merges the block with its free neighbour and reuses both.
    #[test]
    fn a_free_cut_short_is_finished_by_the_rebuild() {
        let seg = Segment::anonymous(16 * MIB).unwrap();
        let a = seg.alloc(MIB).unwrap();
        let b = seg.alloc(MIB).unwrap();
        let c = seg.alloc(MIB).unwrap();
        seg.release(a.offset).unwrap();
        let st = seg.heap_state();
        st.dirty.store(1, Ordering::Relaxed);
        header_of(&seg, b).tag.store(LARGE_FREE, Ordering::Relaxed);
        // Scribble over the derived state too: the rebuild ignores it.
        for head in &st.heads {
            head.store(8, Ordering::Relaxed);
        }
        let ab = seg.alloc(2 * MIB).unwrap();
        assert_eq!(ab.offset, a.offset, "a and b merged");
        assert_eq!(st.dirty.load(Ordering::Relaxed), 0);
        assert!(matches!(seg.release(b.offset), Err(SegmentError::Corrupt(_))), "b is inside ab now");
        seg.release(c.offset).unwrap();
        seg.release(ab.offset).unwrap();
        let all = seg.alloc(15 * MIB).unwrap();
        assert_eq!(all.offset, a.offset);
    }

    /// A process killed between cutting a block to size and marking it live
    /// leaves two free blocks; one killed after marking it leaks it. Neither
    /// is handed out while live.
    #[test]
    fn a_split_cut_short_leaves_free_or_leaked_blocks() {
        let seg = Segment::anonymous(16 * MIB).unwrap();
        let a = seg.alloc(4 * MIB).unwrap();
        let guard = seg.alloc(MIB).unwrap();
        seg.release(a.offset).unwrap();
        // Redo the split of `alloc(MIB)` by hand, stopping after the size.
        let n = block_size(MIB).unwrap();
        let h = header_of(&seg, a);
        let total = h.size.load(Ordering::Relaxed);
        let rest = seg.get::<HeapHeader>(a.offset - HDR + n).unwrap();
        rest.size.store(total - n, Ordering::Relaxed);
        rest.tag.store(LARGE_FREE, Ordering::Relaxed);
        h.size.store(n, Ordering::Relaxed);
        seg.heap_state().dirty.store(1, Ordering::Relaxed);
        let whole = seg.alloc(4 * MIB).unwrap();
        assert_eq!(whole.offset, a.offset, "the two halves merged again");
        // Now a block marked live but never handed on: leaked, never reused.
        seg.release(whole.offset).unwrap();
        let leaked = seg.alloc(MIB).unwrap();
        seg.heap_state().dirty.store(1, Ordering::Relaxed);
        let next = seg.alloc(MIB).unwrap();
        assert_ne!(next.offset, leaked.offset);
        assert!(next.offset >= leaked.offset + leaked.capacity || next.offset + next.capacity <= leaked.offset);
        for b in [leaked, next, guard] {
            seg.release(b.offset).unwrap();
        }
    }

    /// The heap lock held by a dead process is taken over and the heap
    /// rebuilt; a broken walk is `Corrupt`, every time, not a crash.
    #[test]
    fn a_dead_holder_is_recovered_and_a_broken_walk_refused() {
        let seg = Segment::anonymous(16 * MIB).unwrap();
        let a = seg.alloc(MIB).unwrap();
        let b = seg.alloc(MIB).unwrap();
        seg.release(a.offset).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let st = seg.heap_state();
        // SAFETY: RawMutex is `#[repr(C)]` over one AtomicU32, its lock word.
        let word = unsafe { &*(&st.lock as *const RawMutex).cast::<AtomicU32>() };
        word.store(dead, Ordering::Relaxed);
        st.dirty.store(1, Ordering::Relaxed);
        st.heads[floor_class(block_size(MIB).unwrap())].store(0, Ordering::Relaxed);
        let c = seg.alloc(MIB).unwrap();
        assert_eq!(c.offset, a.offset, "the rebuild found the free block");
        assert_eq!(st.lock.holder(), None);
        // Break the walk: b's size now runs past the top.
        header_of(&seg, b).size.store(u64::MAX - 15, Ordering::Relaxed);
        st.dirty.store(1, Ordering::Relaxed);
        for _ in 0..2 {
            assert!(matches!(seg.alloc(MIB), Err(SegmentError::Corrupt(_))));
        }
        assert_eq!(st.lock.holder(), None, "the lock is released on error");
    }
}
