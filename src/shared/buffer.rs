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
/// Hand-offs (handles made and not yet opened) one buffer can have in flight.
const TICKETS: usize = 32;
/// Buffers that can be live in one segment at once.
const REGISTRY: usize = 1024;
const REGISTRY_NAME: &str = "shmpool.buffers";
const KIND_REGISTRY: u32 = 13;
/// The registry's layout version, its directory fingerprint.
const REGISTRY_LAYOUT: u64 = 2;

#[repr(C)]
struct BufferHeader {
    magic: AtomicU32,
    _pad: u32,
    /// Unique per allocation: a handle to a freed and reused block is refused.
    generation: AtomicU64,
    len: AtomicU64,
    data: AtomicU64,
    /// The segment id of the registry the buffer was made in (copied at
    /// allocation): a hand-off names it without a directory look-up, and an
    /// open compares it with the handle's.
    segment: AtomicU64,
    /// `(pid << 32) | references` per holding process; 0 when free. A handle
    /// in flight counts as a reference of the process that made it.
    holders: [AtomicU64; HOLDERS],
    /// Tickets handed out so far (see [`ticket`]).
    issued: AtomicU64,
    /// The tickets of the handles in flight, 0 for a free slot:
    ///
    /// | value             | meaning                                          |
    /// |-------------------|--------------------------------------------------|
    /// | 0                 | free                                             |
    /// | `ticket(g, s, false)` | a read-only handle was made, not yet opened   |
    /// | `ticket(g, s, true)`  | the writable handle was made, not yet opened  |
    ///
    /// A ticket is not issued twice for one buffer (`seq` counts up; it
    /// would take 2^31 hand-offs of one buffer to wrap), nor matches one of
    /// an earlier buffer in the same block (the generation is in it), and
    /// opening a handle swaps its ticket out (CAS to 0): of every copy of one
    /// handle, deserialised as often as anyone likes, exactly one opens.
    tickets: [AtomicU64; TICKETS],
}

// SAFETY: `#[repr(C)]`, atomics only.
unsafe impl ShmSafe for BufferHeader {}

#[repr(C)]
struct Registry {
    /// Random, nonzero, fixed at creation: tells this segment's buffers from
    /// another's (both may have generation 1 at the same offset).
    segment_id: AtomicU64,
    next_generation: AtomicU64,
    buffers: [AtomicU64; REGISTRY],
}

// SAFETY: `#[repr(C)]`, atomics only.
unsafe impl ShmSafe for Registry {}

/// What travels to another process instead of the bytes: 48 bytes whatever
/// the buffer's size. Open it with [`BufferHandle::open`] in the receiver.
///
/// A handle is one hand-off: it is neither `Copy` nor `Clone`, and it opens
/// once. Every copy of it (an archive can be deserialised many times) names
/// the same ticket in the buffer's header, and the first open takes that
/// ticket; a second open of the same hand-off, read-only or writable, is
/// [`SharedError::HandleUsed`]. So the writable handle moves the one right to
/// write, and two `&mut [u8]` to one buffer cannot be made from safe code.
/// A handle opened in another segment is [`SharedError::ForeignHandle`].
///
/// ```compile_fail
/// fn twice(h: shmpool::BufferHandle) -> (shmpool::BufferHandle, shmpool::BufferHandle) {
///     (h.clone(), h) // a hand-off is not copied
/// }
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Eq)]
pub struct BufferHandle {
    header: u64,
    generation: u64,
    len: u64,
    /// The registry's `segment_id` of the segment the buffer lives in.
    segment: u64,
    /// This hand-off's ticket (see [`BufferHeader::tickets`]); its low bit
    /// says whether the handle carries the right to write.
    ticket: u64,
    sender: u32,
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
    let (block, _) = seg.named(REGISTRY_NAME, KIND_REGISTRY, REGISTRY_LAYOUT, size, |b| {
        let p = seg.ptr(b.offset, size)?;
        // SAFETY: a block this process just allocated and has not published.
        unsafe { std::ptr::write_bytes(p, 0, size as usize) };
        // SYNC: published with the directory entry (under its lock).
        seg.get::<Registry>(b.offset)?.segment_id.store(new_segment_id(), Ordering::Relaxed);
        Ok(())
    })?;
    Ok(seg.get::<Registry>(block.offset)?)
}

/// The registry of `seg` if it has one (a segment without one has no buffers).
fn existing_registry(seg: &Segment) -> Result<Option<&Registry>, SharedError> {
    match seg.lookup(REGISTRY_NAME)? {
        None => Ok(None),
        Some(_) => registry(seg).map(Some),
    }
}

/// A random nonzero id for a new registry (the kernel's random source; the
/// clock and pid if that fails, which is still unique enough per machine).
fn new_segment_id() -> u64 {
    let mut bytes = [0u8; 8];
    let id = match crate::sys::shm::random_bytes(&mut bytes) {
        Ok(()) => u64::from_ne_bytes(bytes),
        Err(_) => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            (t.as_nanos() as u64).rotate_left(17) ^ ((process::current_pid() as u64) << 40)
        }
    };
    id.max(1)
}

/// Frees the buffer at `header` if no process holds it; says whether it did.
///
/// SYNC: a Dekker pair with [`BufferHandle::open`], which adds its holder
/// word first and checks `magic` after. Here `magic` is set to `FREEING`
/// (the CAS) before the holders are looked at again; a SeqCst fence sits
/// between the store and the loads on both sides. The two fences are
/// ordered one way or the other in the single total order of SeqCst
/// operations: if the opener's comes first, the loads after ours see its
/// holder word, and we put the magic back and free nothing; if ours comes
/// first, its load of `magic` after its fence sees `FREEING` or a later
/// value (the magic put back by a releaser that then frees nothing, or a
/// reused block's, of another generation), and it backs out. So no open
/// succeeds over a buffer that is freed.
fn release_if_unheld(seg: &Segment, header: u64, h: &BufferHeader) -> bool {
    loop {
        if h.holders.iter().any(|x| x.load(Ordering::Acquire) != 0) {
            return false;
        }
        #[cfg(test)]
        tests::widen_release_window();
        // Exactly one releaser wins.
        if h.magic.compare_exchange(BUFFER_MAGIC, FREEING, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return false;
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        if h.holders.iter().all(|x| x.load(Ordering::Relaxed) == 0) {
            break;
        }
        // An opener took a reference meanwhile: the buffer lives on.
        h.magic.store(BUFFER_MAGIC, Ordering::Release);
        // A holder that let go while the magic said FREEING found our CAS
        // taken and left the freeing to us: look again.
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
        h.segment.store(registry.segment_id.load(Ordering::Acquire), Ordering::Relaxed);
        h.holders[0].store(holder_word(process::current_pid(), 1), Ordering::Relaxed);
        h.issued.store(0, Ordering::Relaxed);
        for t in &h.tickets {
            t.store(0, Ordering::Relaxed);
        }
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
        // holds a reference. Only a writable `SharedBuffer` writes, and while
        // one exists no other `SharedBuffer` of this buffer does in any
        // process: it is made by `allocate` (the only reference), by opening
        // the writable hand-off (whose ticket opens once; `into_handle`
        // consumed the writer that made it), or by `reclaim_write` (no other
        // reference and no hand-off in flight); and `share` gives the right to
        // write up before another reference can exist. While this handle is
        // read-only, a writer can only be made by `reclaim_write` on the last
        // reference, which is not this one. So no `&mut [u8]` overlaps this.
        unsafe { std::slice::from_raw_parts(p, self.len as usize) }
    }

    /// The bytes, writable, if this handle owns the buffer.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        let p = self.seg.ptr(self.data, self.len).expect("buffer bounds validated when opened");
        // SAFETY: as in as_slice: a writable SharedBuffer is the only one of
        // this buffer in any process, and `&mut self` makes it the only user.
        Some(unsafe { std::slice::from_raw_parts_mut(p, self.len as usize) })
    }

    /// Makes this handle writable again if it is the only reference left in
    /// any process (every shared copy was dropped); says whether it is now.
    pub fn reclaim_write(&mut self) -> bool {
        if self.writable {
            return true;
        }
        let Ok(h) = self.seg.get::<BufferHeader>(self.header) else { return false };
        // Tickets first: a handle in flight whose maker died no longer counts
        // in the holders; an opener takes its reference before its ticket
        // (AcqRel), so once the ticket is seen gone the opener is seen below.
        if h.tickets.iter().any(|t| t.load(Ordering::Acquire) != 0) {
            return false;
        }
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
    ///
    /// Each call is one hand-off, opened once; at most 32 can be in flight
    /// for one buffer ([`SharedError::TooManyHandoffs`] beyond that).
    pub fn share(&mut self) -> Result<BufferHandle, SharedError> {
        let me = process::current_pid();
        // Writable no more from before the reference exists on.
        self.writable = false;
        self.adjust(me, 1)?;
        match self.handoff(false) {
            Ok(handle) => Ok(handle),
            Err(e) => {
                let _ = self.adjust(me, -1);
                Err(e)
            }
        }
    }

    /// Moves this handle (and the right to write, if it had it) to another
    /// process: the receiver opens the returned handle, once.
    ///
    /// Fails only when the buffer has 32 hand-offs in flight already
    /// ([`SharedError::TooManyHandoffs`]); the reference is then dropped.
    pub fn into_handle(self) -> Result<BufferHandle, SharedError> {
        let handle = self.handoff(self.writable)?;
        // Our reference travels with the handle: do not drop it here.
        std::mem::forget(self);
        Ok(handle)
    }

    /// Issues a ticket for a hand-off and the handle that carries it.
    fn handoff(&self, writable: bool) -> Result<BufferHandle, SharedError> {
        let h = self.seg.get::<BufferHeader>(self.header)?;
        let segment = h.segment.load(Ordering::Acquire);
        let seq = h.issued.fetch_add(1, Ordering::Relaxed) + 1;
        let ticket = ticket(self.generation, seq, writable);
        // SYNC: the ticket's Release CAS pairs with the opener's AcqRel CAS.
        if !h.tickets.iter().any(|t| t.compare_exchange(0, ticket, Ordering::AcqRel, Ordering::Relaxed).is_ok()) {
            return Err(SharedError::TooManyHandoffs { limit: TICKETS });
        }
        Ok(BufferHandle {
            header: self.header,
            generation: self.generation,
            len: self.len,
            segment,
            ticket,
            sender: process::current_pid(),
        })
    }

    /// Adds `delta` references for process `pid`.
    fn adjust(&self, pid: u32, delta: i64) -> Result<(), SharedError> {
        adjust(self.seg.get::<BufferHeader>(self.header)?, pid, delta)
    }
}

/// The ticket of hand-off number `seq` of the buffer of generation
/// `generation`: `generation` (low 32 bits) | `seq` (31 bits) | writable
/// (the low bit). Never 0.
fn ticket(generation: u64, seq: u64, writable: bool) -> u64 {
    // seq & 0x7FFF_FFFF is 0 once every 2^31 hand-offs: then bit 1 is set,
    // so that no ticket is the "free" value 0.
    let seq = match seq & 0x7FFF_FFFF {
        0 => 1,
        s => s,
    };
    ((generation & 0xFFFF_FFFF) << 32) | (seq << 1) | writable as u64
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
    ///
    /// A hand-off opens once: opening this handle again, or any other copy
    /// of it (a deserialised archive, say), is [`SharedError::HandleUsed`].
    /// A handle from another segment is [`SharedError::ForeignHandle`].
    pub fn open(&self, seg: &Segment) -> Result<SharedBuffer, SharedError> {
        if self.ticket == 0 {
            return Err(SharedError::HandleUsed);
        }
        // Not a live buffer of this segment: the handle is foreign (its
        // segment id is not this segment's) or names a freed buffer. The
        // directory is looked at only then: the hand-off's path needs none.
        let stale = || match existing_registry(seg) {
            Ok(Some(r)) if r.segment_id.load(Ordering::Acquire) == self.segment => {
                SharedError::Segment(SegmentError::Corrupt("buffer handle names a freed buffer"))
            }
            Ok(_) => SharedError::ForeignHandle,
            Err(e) => e,
        };
        let Ok(h) = seg.get::<BufferHeader>(self.header) else { return Err(stale()) };
        let live = || {
            h.magic.load(Ordering::Acquire) == BUFFER_MAGIC
                && h.generation.load(Ordering::Acquire) == self.generation
                && h.segment.load(Ordering::Acquire) == self.segment
        };
        if !live() {
            return Err(stale());
        }
        let data = h.data.load(Ordering::Acquire);
        let len = h.len.load(Ordering::Acquire);
        // Hostile input: the bytes must lie after the header and inside the
        // buffer's own block, or the slice made over them would cover other
        // blocks (writable, for a writable handle).
        let block_end = self.header.checked_add(seg.block_capacity(self.header)?);
        let data_start = self.header.checked_add(std::mem::size_of::<BufferHeader>() as u64);
        let inside = match (data_start, data.checked_add(len), block_end) {
            (Some(first), Some(end), Some(last)) => data >= first && end <= last,
            _ => false,
        };
        if len != self.len || !inside {
            return Err(SegmentError::Corrupt("buffer header").into());
        }
        seg.check_range(data, len)?;
        let me = process::current_pid();
        adjust(h, me, 1)?;
        // Re-check after taking our reference: it may have been freed, or be
        // being freed, meanwhile.
        // SYNC: SeqCst fence between our holder word (stored by `adjust`)
        // and the load of `magic` in `live`: our half of the Dekker pair
        // with `release_if_unheld` (see there).
        std::sync::atomic::fence(Ordering::SeqCst);
        if !live() {
            let _ = adjust(h, me, -1);
            // A releaser that saw our reference put the magic back and may
            // have left before we let go: the buffer may be unheld now.
            if h.generation.load(Ordering::Acquire) == self.generation {
                release_if_unheld(seg, self.header, h);
            }
            return Err(stale());
        }
        // Take this hand-off's ticket: only one opener of all copies does.
        // SYNC: AcqRel, after our reference (see reclaim_write).
        let took =
            h.tickets.iter().any(|t| t.compare_exchange(self.ticket, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok());
        if !took {
            let _ = adjust(h, me, -1);
            return Err(SharedError::HandleUsed);
        }
        // The sender's reference travelled with the handle: it is ours now.
        adjust(h, self.sender, -1)?;
        Ok(SharedBuffer {
            seg: seg.clone(),
            header: self.header,
            data,
            len,
            generation: self.generation,
            writable: self.ticket & 1 == 1,
        })
    }

    /// Whether the handle carries the right to write.
    pub fn is_writable(&self) -> bool {
        self.ticket & 1 == 1
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::Barrier;
    use std::time::Duration;

    thread_local! {
        /// Set on a releasing thread: it sleeps between its first look at
        /// the holders and its CAS on the magic, so that an opener runs there.
        static WIDEN: Cell<bool> = const { Cell::new(false) };
    }

    pub(super) fn widen_release_window() {
        if WIDEN.with(Cell::get) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn is_corrupt(r: &Result<SharedBuffer, SharedError>) -> bool {
        matches!(r, Err(SharedError::Segment(SegmentError::Corrupt(_) | SegmentError::OutOfBounds { .. })))
    }

    /// Finding: `release_if_unheld` looked at the holders and then took the
    /// magic, while an opener adds itself and then looks at the magic: an
    /// open in between succeeded over a buffer that was then freed.
    #[test]
    fn an_open_racing_a_release_never_gets_a_freed_buffer() {
        let seg = Segment::anonymous(8 << 20).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let dead = child.id();
        let mut opened = 0;
        for round in 0..40 {
            let b = seg.buffer(256).unwrap();
            let header = b.header;
            let mut handle = b.into_handle().unwrap();
            let h = seg.get::<BufferHeader>(header).unwrap();
            // A hand-off in flight from a process that died: its reference
            // (the only one) is reclaimed by the releaser below.
            handle.sender = dead;
            h.holders[0].store(holder_word(dead, 1), Ordering::SeqCst);
            let barrier = Barrier::new(2);
            let (got, freed) = std::thread::scope(|s| {
                let releaser = s.spawn(|| {
                    WIDEN.with(|w| w.set(true));
                    barrier.wait();
                    seg.reclaim_buffers().unwrap()
                });
                barrier.wait();
                // Let the releaser look at the holders first (it then sleeps).
                std::thread::sleep(Duration::from_micros(300));
                let got = handle.open(&seg);
                (got, releaser.join().unwrap())
            });
            match got {
                Ok(mut buf) => {
                    opened += 1;
                    assert_eq!(freed, 0, "round {round}: the buffer was freed while open");
                    assert_eq!(h.magic.load(Ordering::SeqCst), BUFFER_MAGIC, "round {round}");
                    assert!(seg.block_capacity(header).is_ok(), "round {round}: its block is free");
                    assert_eq!(seg.live_buffers().unwrap(), 1, "round {round}");
                    buf.as_mut_slice().expect("the writable hand-off")[0] = round as u8;
                    drop(buf);
                }
                Err(e) => assert!(matches!(e, SharedError::Segment(SegmentError::Corrupt(_))), "{e}"),
            }
            // Whichever won, the buffer is gone once nobody holds it.
            assert_eq!(seg.live_buffers().unwrap(), 0, "round {round}");
        }
        assert!(opened > 0, "no open won a race");
    }

    /// Finding: `data` and `len` were checked against the segment only: a
    /// corrupt header made a slice over other blocks.
    #[test]
    fn a_buffer_header_pointing_outside_its_block_is_refused() {
        let seg = Segment::anonymous(8 << 20).unwrap();
        let mut b = seg.buffer(100).unwrap();
        let neighbour = seg.buffer(100).unwrap();
        let h = seg.get::<BufferHeader>(b.header).unwrap();
        let data = h.data.load(Ordering::Relaxed);
        let cap = seg.block_capacity(b.header).unwrap();
        let hsize = std::mem::size_of::<BufferHeader>() as u64;
        let bad = [
            b.header,             // over its own header
            b.header + hsize - 8, // overlapping its end
            b.header + cap - 99,  // running past the block
            neighbour.header,     // another buffer's block
            neighbour.data,       // another buffer's bytes
            u64::MAX - 50,        // wrapping around
        ];
        for at in bad {
            let handle = b.share().unwrap();
            h.data.store(at, Ordering::Relaxed);
            let r = handle.open(&seg);
            assert!(is_corrupt(&r), "data at {at:#x}: {r:?}");
            h.data.store(data, Ordering::Relaxed);
        }
        // A length beyond the block, which a handle agrees with.
        let mut handle = b.share().unwrap();
        handle.len = cap;
        h.len.store(cap, Ordering::Relaxed);
        let r = handle.open(&seg);
        assert!(is_corrupt(&r), "len {cap}: {r:?}");
        h.len.store(100, Ordering::Relaxed);
        // Put back, the header opens again.
        let handle = b.share().unwrap();
        assert_eq!(handle.open(&seg).unwrap().len(), 100);
    }
}
