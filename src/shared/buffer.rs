//! `SharedBuffer`: a large byte buffer in a segment, handed to other
//! processes by a small handle and read or written where it lies.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::SharedError;
use crate::segment::{Segment, SegmentError, ShmSafe};
use crate::sys::process;

const BUFFER_MAGIC: u32 = 0x4255_4646; // "BUFF"
const FREEING: u32 = 0xDEAD_B0FF;
/// Processes that can hold one buffer at once.
const HOLDERS: usize = 16;
/// Buffers that can be live in one segment at once.
const REGISTRY: usize = 1024;
const REGISTRY_NAME: &str = "shmpool.buffers";
const KIND_REGISTRY: u32 = 13;

#[repr(C)]
struct BufferHeader {
    magic: AtomicU32,
    _pad: u32,
    /// Unique per allocation: a handle to a freed and reused block is refused.
    generation: AtomicU64,
    len: AtomicU64,
    data: AtomicU64,
    /// `(pid << 32) | references` per holding process; 0 when free.
    holders: [AtomicU64; HOLDERS],
}

// SAFETY: `#[repr(C)]`, atomics only.
unsafe impl ShmSafe for BufferHeader {}

#[repr(C)]
struct Registry {
    next_generation: AtomicU64,
    buffers: [AtomicU64; REGISTRY],
}

// SAFETY: `#[repr(C)]`, atomics only.
unsafe impl ShmSafe for Registry {}

/// What travels to another process instead of the bytes: 40 bytes whatever
/// the buffer's size. Open it with [`BufferHandle::open`] in the receiver.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferHandle {
    header: u64,
    generation: u64,
    len: u64,
    sender: u32,
    writable: bool,
}

/// A byte buffer in shared memory. The handle that may write is the only one
/// (its owner); [`SharedBuffer::share`] makes read-only copies for other
/// processes, [`SharedBuffer::into_handle`] moves ownership to one.
///
/// The buffer is freed when the last handle in any process is dropped; the
/// references of a process that died are reclaimed by
/// [`Segment::reclaim_buffers`] (pools run it when they reap a dead worker).
pub struct SharedBuffer {
    seg: Segment,
    header: u64,
    data: u64,
    len: u64,
    generation: u64,
    writable: bool,
}

impl fmt::Debug for SharedBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBuffer").field("len", &self.len).field("writable", &self.writable).finish()
    }
}

impl Segment {
    /// Allocates a zero-filled buffer of `len` bytes, owned (writable) by this handle.
    pub fn buffer(&self, len: u64) -> Result<SharedBuffer, SharedError> {
        match SharedBuffer::allocate(self, len) {
            Err(SharedError::Segment(SegmentError::OutOfMemory { .. })) if self.reclaim_buffers()? > 0 => {
                SharedBuffer::allocate(self, len)
            }
            other => other,
        }
    }

    /// Frees the references of dead processes to buffers in this segment, and
    /// every buffer left with none. Returns how many buffers were freed.
    pub fn reclaim_buffers(&self) -> Result<usize, SharedError> {
        let registry = registry(self)?;
        let mut freed = 0;
        for slot in &registry.buffers {
            let header = slot.load(Ordering::Acquire);
            if header == 0 {
                continue;
            }
            let Ok(h) = self.get::<BufferHeader>(header) else { continue };
            for holder in &h.holders {
                let v = holder.load(Ordering::Acquire);
                if v != 0 && !process::is_alive((v >> 32) as u32) {
                    let _ = holder.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed);
                }
            }
            if release_if_unheld(self, header, h) {
                freed += 1;
            }
        }
        Ok(freed)
    }

    /// Buffers currently live in this segment.
    pub fn live_buffers(&self) -> Result<usize, SharedError> {
        Ok(registry(self)?.buffers.iter().filter(|b| b.load(Ordering::Acquire) != 0).count())
    }
}

fn registry(seg: &Segment) -> Result<&Registry, SharedError> {
    let size = std::mem::size_of::<Registry>() as u64;
    let (block, _) = seg.named(REGISTRY_NAME, KIND_REGISTRY, 0, size, |b| {
        let p = seg.ptr(b.offset, size)?;
        // SAFETY: a block this process just allocated and has not published.
        unsafe { std::ptr::write_bytes(p, 0, size as usize) };
        Ok(())
    })?;
    Ok(seg.get::<Registry>(block.offset)?)
}

/// Frees the buffer at `header` if no process holds it; says whether it did.
fn release_if_unheld(seg: &Segment, header: u64, h: &BufferHeader) -> bool {
    if h.holders.iter().any(|x| x.load(Ordering::Acquire) != 0) {
        return false;
    }
    // Exactly one releaser wins.
    if h.magic.compare_exchange(BUFFER_MAGIC, FREEING, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return false;
    }
    if let Ok(registry) = registry(seg) {
        for slot in &registry.buffers {
            let _ = slot.compare_exchange(header, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
    let _ = seg.release(header);
    true
}

impl SharedBuffer {
    fn allocate(seg: &Segment, len: u64) -> Result<SharedBuffer, SharedError> {
        let hsize = std::mem::size_of::<BufferHeader>() as u64;
        let data_at = hsize.div_ceil(64) * 64;
        let total = data_at.checked_add(len).ok_or(SegmentError::OutOfMemory { requested: len, available: 0 })?;
        let registry = registry(seg)?;
        // Zeroed lazily: a fresh block is zero already and commits no memory
        // until written (a 1 GiB buffer costs nothing up front).
        let block = seg.alloc_zeroed(total)?;
        let header = block.offset;
        let h = seg.get::<BufferHeader>(header)?;
        let generation = registry.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        h.generation.store(generation, Ordering::Relaxed);
        h.len.store(len, Ordering::Relaxed);
        h.data.store(header + data_at, Ordering::Relaxed);
        h.holders[0].store(holder_word(process::current_pid(), 1), Ordering::Relaxed);
        h.magic.store(BUFFER_MAGIC, Ordering::Release);
        if !registry.buffers.iter().any(|s| s.compare_exchange(0, header, Ordering::AcqRel, Ordering::Relaxed).is_ok())
        {
            let _ = seg.release(header);
            return Err(SegmentError::DirectoryFull.into());
        }
        Ok(SharedBuffer { seg: seg.clone(), header, data: header + data_at, len, generation, writable: true })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether this handle may write.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The bytes, where they lie in shared memory.
    pub fn as_slice(&self) -> &[u8] {
        let p = self.seg.ptr(self.data, self.len).expect("buffer bounds validated when opened");
        // SAFETY: in bounds (checked); the buffer lives while this handle
        // holds a reference; only a writable handle writes, and a writable
        // handle exists only where no other handle does (see `share`).
        unsafe { std::slice::from_raw_parts(p, self.len as usize) }
    }

    /// The bytes, writable, if this handle owns the buffer.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        let p = self.seg.ptr(self.data, self.len).expect("buffer bounds validated when opened");
        // SAFETY: as in as_slice; a writable handle is the only handle to the
        // buffer in any process, and `&mut self` makes it the only user here.
        Some(unsafe { std::slice::from_raw_parts_mut(p, self.len as usize) })
    }

    /// Makes this handle writable again if it is the only reference left in
    /// any process (every shared copy was dropped); says whether it is now.
    pub fn reclaim_write(&mut self) -> bool {
        if self.writable {
            return true;
        }
        let Ok(h) = self.seg.get::<BufferHeader>(self.header) else { return false };
        let me = holder_word(process::current_pid(), 1);
        let only_me = h.holders.iter().all(|x| {
            let v = x.load(Ordering::Acquire);
            v == 0 || v == me
        }) && h.holders.iter().any(|x| x.load(Ordering::Acquire) == me);
        self.writable = only_me;
        only_me
    }

    /// A read-only handle for another process. This handle stops being
    /// writable: from now on several processes may read the bytes (see
    /// [`SharedBuffer::reclaim_write`] once they are done).
    pub fn share(&mut self) -> Result<BufferHandle, SharedError> {
        self.writable = false;
        self.adjust(process::current_pid(), 1)?;
        Ok(BufferHandle {
            header: self.header,
            generation: self.generation,
            len: self.len,
            sender: process::current_pid(),
            writable: false,
        })
    }

    /// Moves this handle (and the right to write, if it had it) to another
    /// process: the receiver opens the returned handle.
    pub fn into_handle(self) -> BufferHandle {
        let handle = BufferHandle {
            header: self.header,
            generation: self.generation,
            len: self.len,
            sender: process::current_pid(),
            writable: self.writable,
        };
        // Our reference travels with the handle: do not drop it here.
        std::mem::forget(self);
        handle
    }

    /// Adds `delta` references for process `pid`.
    fn adjust(&self, pid: u32, delta: i64) -> Result<(), SharedError> {
        adjust(self.seg.get::<BufferHeader>(self.header)?, pid, delta)
    }
}

fn holder_word(pid: u32, count: u32) -> u64 {
    ((pid as u64) << 32) | count as u64
}

/// Adds `delta` (±1) references for `pid` in the holder table.
fn adjust(h: &BufferHeader, pid: u32, delta: i64) -> Result<(), SharedError> {
    loop {
        let mine = h.holders.iter().find(|x| (x.load(Ordering::Acquire) >> 32) as u32 == pid);
        match mine {
            Some(slot) => {
                let v = slot.load(Ordering::Acquire);
                if (v >> 32) as u32 != pid {
                    continue;
                }
                let count = (v & 0xFFFF_FFFF) as i64 + delta;
                let new = if count <= 0 { 0 } else { holder_word(pid, count as u32) };
                if slot.compare_exchange(v, new, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                    return Ok(());
                }
            }
            None if delta > 0 => {
                if h.holders.iter().any(|x| {
                    x.compare_exchange(0, holder_word(pid, delta as u32), Ordering::AcqRel, Ordering::Relaxed).is_ok()
                }) {
                    return Ok(());
                }
                return Err(SegmentError::Corrupt("buffer held by too many processes").into());
            }
            None => return Ok(()),
        }
    }
}

impl BufferHandle {
    /// Opens the buffer in this process (the receiver's side of a hand-off).
    pub fn open(&self, seg: &Segment) -> Result<SharedBuffer, SharedError> {
        let h = seg.get::<BufferHeader>(self.header)?;
        let stale = || SharedError::Segment(SegmentError::Corrupt("buffer handle names a freed buffer"));
        if h.magic.load(Ordering::Acquire) != BUFFER_MAGIC || h.generation.load(Ordering::Acquire) != self.generation {
            return Err(stale());
        }
        let me = process::current_pid();
        adjust(h, me, 1)?;
        // Re-check after taking our reference: it may have been freed meanwhile.
        if h.magic.load(Ordering::Acquire) != BUFFER_MAGIC || h.generation.load(Ordering::Acquire) != self.generation {
            let _ = adjust(h, me, -1);
            return Err(stale());
        }
        // The sender's reference travelled with the handle: it is ours now.
        adjust(h, self.sender, -1)?;
        let data = h.data.load(Ordering::Acquire);
        let len = h.len.load(Ordering::Acquire);
        if len != self.len || data < self.header || data.checked_add(len).is_none_or(|e| e > seg.size()) {
            return Err(SegmentError::Corrupt("buffer header").into());
        }
        seg.check_range(data, len)?;
        Ok(SharedBuffer {
            seg: seg.clone(),
            header: self.header,
            data,
            len,
            generation: self.generation,
            writable: self.writable,
        })
    }

    /// Length of the buffer in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedBuffer {
    fn drop(&mut self) {
        if let Ok(h) = self.seg.get::<BufferHeader>(self.header) {
            if h.generation.load(Ordering::Acquire) == self.generation {
                let _ = adjust(h, process::current_pid(), -1);
                release_if_unheld(&self.seg, self.header, h);
            }
        }
    }
}
