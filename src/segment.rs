//! One mapped shared-memory region: a header, a directory of named objects,
//! and an arena allocator that every process mapping the region can use.
//!
//! Layout (offsets from the start of the mapping, which differs per process):
//!
//! ```text
//! [ Header | directory (64 entries) | arena ........................... ]
//! ```
//!
//! Everything in the segment is addressed by offsets, never pointers. The
//! segment is hostile input: the header is validated on open, and every
//! offset read from it is bounds-checked before use.

use std::fmt;
use std::fs::File;
use std::io;
use std::mem::{align_of, size_of};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use memmap2::MmapRaw;

use crate::sync::RawMutex;
use crate::sys::{process, shm};

/// Types that may be placed in a segment and viewed from several processes.
///
/// # Safety
///
/// An implementor must be `#[repr(C)]` (or a primitive/atomic), contain no
/// pointers or references, have no `Drop` glue, and be valid for every bit
/// pattern (the memory is written by other processes). State shared between
/// processes must be held in atomics.
pub unsafe trait ShmSafe: Sized {}

// SAFETY: atomics and integers are valid for every bit pattern and hold no pointers.
unsafe impl ShmSafe for AtomicU32 {}
// SAFETY: as above.
unsafe impl ShmSafe for AtomicU64 {}
// SAFETY: CachePadded<T> is T plus alignment padding.
unsafe impl<T: ShmSafe> ShmSafe for CachePadded<T> {}
// SAFETY: an array of ShmSafe elements is ShmSafe.
unsafe impl<T: ShmSafe, const N: usize> ShmSafe for [T; N] {}

const MAGIC: [u8; 8] = *b"shmpool\0";
/// The layout version this build writes and accepts.
pub const LAYOUT_VERSION: u32 = 1;
/// How many named objects a segment's directory holds.
pub const DIRECTORY_ENTRIES: usize = 64;
/// The longest name of a directory entry, in bytes.
pub const MAX_NAME: usize = 64;
/// The smallest arena block, header included.
const MIN_BLOCK: u64 = 64;
/// Header in front of every arena block.
const BLOCK_HEADER: u64 = 16;
/// Size classes: four per power of two from 64 bytes up to 2^44.
const CLASSES: usize = 4 * 38;
const BLOCK_LIVE: u32 = 0xB10C_0000;
const BLOCK_FREE: u32 = 0xF4EE_0000;
/// Prefix of named segments in `/dev/shm`.
pub const NAME_PREFIX: &str = "shmpool.";

const STATE_READY: u32 = 1;

#[repr(C)]
struct Header {
    magic: [u8; 8],
    version: u32,
    header_len: u32,
    size: u64,
    creator_pid: u32,
    /// Zero until the creator has written the rest, then `STATE_READY`.
    /// SYNC: Release by the creator, Acquire by openers.
    state: AtomicU32,
    arena_start: u64,
    arena_end: u64,
    /// Next unallocated arena byte. Only grows (CAS), never past `arena_end`.
    bump: CachePadded<AtomicU64>,
    /// Free list heads per size class: `(tag << 40) | (block offset / 16)`.
    /// The tag changes on every pop, which defeats ABA.
    free: [AtomicU64; CLASSES],
    /// Guards `dir` writes.
    dir_lock: RawMutex,
    _pad: u32,
    dir: [DirEntry; DIRECTORY_ENTRIES],
}

/// A directory slot. `state` is zero (empty) or `DIR_READY`; the other fields
/// are written under the directory lock before `state` becomes ready.
#[repr(C)]
struct DirEntry {
    state: AtomicU32,
    name_len: AtomicU32,
    kind: AtomicU32,
    _pad: u32,
    fingerprint: AtomicU64,
    offset: AtomicU64,
    len: AtomicU64,
    name: [AtomicU64; MAX_NAME / 8],
}

const DIR_READY: u32 = 1;

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

/// Errors from creating, opening or using a segment.
#[derive(Debug)]
#[non_exhaustive]
pub enum SegmentError {
    /// The operating system refused (create, open, map, resize).
    Io(io::Error),
    /// No segment of that name exists.
    NotFound(String),
    /// A segment of that name already exists and its creator is alive.
    AlreadyExists(String),
    /// The name is empty, too long, or has characters other than
    /// `A-Z a-z 0-9 . _ -`.
    InvalidName(String),
    /// The bytes are not a shmpool segment (wrong magic).
    NotASegment,
    /// The segment was written by another layout version.
    VersionMismatch {
        /// The version in the segment.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// The mapping is shorter than the header says, or too short for a header.
    Truncated {
        /// Bytes the header claims.
        expected: u64,
        /// Bytes actually there.
        actual: u64,
    },
    /// A field of the segment is inconsistent; says which.
    Corrupt(&'static str),
    /// The creator has not finished initialising the segment in time.
    NotReady,
    /// The arena cannot satisfy an allocation.
    OutOfMemory {
        /// Bytes asked for.
        requested: u64,
        /// Bytes left unallocated in the arena (free lists not counted).
        available: u64,
    },
    /// An offset and length fall outside the segment.
    OutOfBounds {
        /// The offset asked for.
        offset: u64,
        /// The length asked for.
        len: u64,
        /// The segment's size.
        size: u64,
    },
    /// All directory entries are taken.
    DirectoryFull,
    /// A named object exists with another kind or element type.
    TypeMismatch {
        /// The object's name.
        name: String,
    },
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegmentError::Io(e) => write!(f, "shared memory system call failed: {e}"),
            SegmentError::NotFound(n) => write!(f, "no shared segment named {n:?}"),
            SegmentError::AlreadyExists(n) => write!(f, "a live shared segment named {n:?} already exists"),
            SegmentError::InvalidName(n) => {
                write!(f, "invalid segment or object name {n:?} (use 1-{MAX_NAME} of A-Z a-z 0-9 . _ -)")
            }
            SegmentError::NotASegment => write!(f, "not a shmpool segment (bad magic)"),
            SegmentError::VersionMismatch { found, expected } => {
                write!(f, "segment layout version {found}, this build reads version {expected}")
            }
            SegmentError::Truncated { expected, actual } => {
                write!(f, "segment truncated: header says {expected} bytes, {actual} are mapped")
            }
            SegmentError::Corrupt(what) => write!(f, "corrupt segment: {what}"),
            SegmentError::NotReady => write!(f, "segment creator did not finish initialising it"),
            SegmentError::OutOfMemory { requested, available } => {
                write!(f, "segment out of memory: requested {requested} bytes, {available} available")
            }
            SegmentError::OutOfBounds { offset, len, size } => {
                write!(f, "range {offset}+{len} lies outside the {size}-byte segment")
            }
            SegmentError::DirectoryFull => {
                write!(f, "segment directory full ({DIRECTORY_ENTRIES} named objects)")
            }
            SegmentError::TypeMismatch { name } => {
                write!(f, "object {name:?} exists in the segment with another kind or type")
            }
        }
    }
}

impl std::error::Error for SegmentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SegmentError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for SegmentError {
    fn from(e: io::Error) -> Self {
        SegmentError::Io(e)
    }
}

/// An arena block: its payload offset (16-byte aligned) and capacity in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Offset of the first payload byte from the segment base.
    pub offset: u64,
    /// Usable bytes from `offset`.
    pub capacity: u64,
}

/// A mapped shared-memory segment: a cheap handle, cloned freely; the mapping
/// goes away with the last clone.
///
/// Private segments ([`Segment::anonymous`]) are memfd-backed and vanish with
/// the last process that maps them. Named ones ([`Segment::create`]) live in
/// `/dev/shm/shmpool.<name>` and are unlinked when their creator's last handle
/// is dropped.
#[derive(Clone)]
pub struct Segment {
    mapped: Arc<Mapped>,
    /// Copied from `mapped` (and from the validated header) for fast access.
    base: NonNull<u8>,
    size: u64,
    arena_start: u64,
    arena_end: u64,
}

/// The mapping itself, shared by every clone of a [`Segment`].
struct Mapped {
    map: MmapRaw,
    file: File,
    name: Option<String>,
    owner: bool,
}

// SAFETY: the mapping is shared memory that every process and thread accesses
// only through atomics or through byte ranges whose ownership the protocols
// above hand over (ring slots, arena blocks); `Segment` holds no thread-bound state.
unsafe impl Send for Segment {}
// SAFETY: as above; all methods take `&self` and synchronise through atomics.
unsafe impl Sync for Segment {}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.mapped.name)
            .field("size", &self.size)
            .field("owner", &self.mapped.owner)
            .finish()
    }
}

impl Segment {
    /// Creates a private, memfd-backed segment of `size` bytes.
    pub fn anonymous(size: u64) -> Result<Segment, SegmentError> {
        let size = size.max(min_size());
        let file = shm::memfd("shmpool", size)?;
        Segment::init(file, size, None)
    }

    /// Creates the named segment `name` (`/dev/shm/shmpool.<name>`) of `size` bytes.
    ///
    /// A leftover segment of that name whose creator is dead is removed first;
    /// one whose creator is alive gives [`SegmentError::AlreadyExists`].
    pub fn create(name: &str, size: u64) -> Result<Segment, SegmentError> {
        check_name(name)?;
        let size = size.max(min_size());
        let path = format!("{NAME_PREFIX}{name}");
        let file = match shm::shm_create(&path, size) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !remove_if_stale(name)? {
                    return Err(SegmentError::AlreadyExists(name.to_owned()));
                }
                shm::shm_create(&path, size)?
            }
            Err(e) => return Err(e.into()),
        };
        match Segment::init(file, size, Some(name.to_owned())) {
            Ok(seg) => Ok(seg),
            Err(e) => {
                let _ = shm::shm_unlink(&path);
                Err(e)
            }
        }
    }

    /// Opens the named segment `name` created by another process.
    pub fn open(name: &str) -> Result<Segment, SegmentError> {
        check_name(name)?;
        // A segment left behind by a dead creator that nobody maps is not
        // there to be opened: remove it.
        if remove_if_stale(name)? {
            return Err(SegmentError::NotFound(name.to_owned()));
        }
        let file = shm::shm_open_existing(&format!("{NAME_PREFIX}{name}")).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                SegmentError::NotFound(name.to_owned())
            } else {
                SegmentError::Io(e)
            }
        })?;
        Segment::from_file_named(file, Some(name.to_owned()))
    }

    /// Maps and validates a segment from an open descriptor (a memfd handed
    /// down by a parent, or a named segment's file).
    pub fn from_file(file: File) -> Result<Segment, SegmentError> {
        Segment::from_file_named(file, None)
    }

    fn from_file_named(file: File, name: Option<String>) -> Result<Segment, SegmentError> {
        let actual = file.metadata()?.len();
        if actual < size_of::<Header>() as u64 {
            return Err(SegmentError::Truncated { expected: size_of::<Header>() as u64, actual });
        }
        let len = usize::try_from(actual).map_err(|_| SegmentError::Corrupt("size"))?;
        let map = shm::map(&file, len)?;
        let base = NonNull::new(map.as_mut_ptr()).ok_or(SegmentError::Corrupt("null mapping"))?;
        let mut seg = Segment {
            mapped: Arc::new(Mapped { map, file, name, owner: false }),
            base,
            size: actual,
            arena_start: 0,
            arena_end: 0,
        };
        let (start, end) = seg.validate()?;
        seg.arena_start = start;
        seg.arena_end = end;
        Ok(seg)
    }

    /// Takes over an inherited descriptor number and opens the segment on it.
    pub(crate) fn from_inherited_fd(fd: RawFd) -> Result<Segment, SegmentError> {
        Segment::from_file(shm::file_from_inherited(fd)?)
    }

    /// Writes a fresh header into `file` (already sized to `size`) and maps it.
    fn init(file: File, size: u64, name: Option<String>) -> Result<Segment, SegmentError> {
        let len = usize::try_from(size).map_err(|_| SegmentError::Corrupt("size"))?;
        let map = shm::map(&file, len)?;
        let base = NonNull::new(map.as_mut_ptr()).ok_or(SegmentError::Corrupt("null mapping"))?;
        let arena_start = round_up(size_of::<Header>() as u64, 4096);
        let hdr = base.as_ptr().cast::<Header>();
        // SAFETY: the mapping is at least `min_size()` bytes, page aligned, and
        // freshly created and zeroed: no other process can have it yet (memfd
        // not yet shared; named file created with O_EXCL and not READY), so
        // these plain writes race with nobody. Zero is a valid Header.
        unsafe {
            (*hdr).magic = MAGIC;
            (*hdr).version = LAYOUT_VERSION;
            (*hdr).header_len = size_of::<Header>() as u32;
            (*hdr).size = size;
            (*hdr).creator_pid = process::current_pid();
            (*hdr).arena_start = arena_start;
            (*hdr).arena_end = size;
            (*hdr).bump.store(arena_start, Ordering::Relaxed);
            // SYNC: Release publishes the fields above to openers (Acquire in validate).
            (*hdr).state.store(STATE_READY, Ordering::Release);
        }
        Ok(Segment {
            mapped: Arc::new(Mapped { map, file, owner: name.is_some(), name }),
            base,
            size,
            arena_start,
            arena_end: size,
        })
    }

    /// Checks the header and returns the arena bounds.
    fn validate(&self) -> Result<(u64, u64), SegmentError> {
        let hdr = self.base.as_ptr().cast::<Header>();
        // SAFETY: the mapping holds at least size_of::<Header>() bytes (checked
        // by the caller) and is page aligned; `state` is an atomic.
        let state = unsafe { &(*hdr).state };
        let deadline = Instant::now() + Duration::from_secs(2);
        while state.load(Ordering::Acquire) != STATE_READY {
            if read_magic(hdr) != MAGIC {
                return Err(SegmentError::NotASegment);
            }
            if Instant::now() > deadline {
                return Err(SegmentError::NotReady);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if read_magic(hdr) != MAGIC {
            return Err(SegmentError::NotASegment);
        }
        // SAFETY: in bounds as above. Volatile: another process may scribble on
        // these fields; we read each once into a local and check it.
        let (version, header_len, size, start, end) = unsafe {
            (
                std::ptr::addr_of!((*hdr).version).read_volatile(),
                std::ptr::addr_of!((*hdr).header_len).read_volatile(),
                std::ptr::addr_of!((*hdr).size).read_volatile(),
                std::ptr::addr_of!((*hdr).arena_start).read_volatile(),
                std::ptr::addr_of!((*hdr).arena_end).read_volatile(),
            )
        };
        if version != LAYOUT_VERSION {
            return Err(SegmentError::VersionMismatch { found: version, expected: LAYOUT_VERSION });
        }
        if header_len as usize != size_of::<Header>() {
            return Err(SegmentError::Corrupt("header length"));
        }
        if size > self.size {
            return Err(SegmentError::Truncated { expected: size, actual: self.size });
        }
        if start < size_of::<Header>() as u64 || start % 16 != 0 || start > end || end > size {
            return Err(SegmentError::Corrupt("arena bounds"));
        }
        Ok((start, end))
    }

    /// The segment's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The segment's name, for named segments.
    pub fn name(&self) -> Option<&str> {
        self.mapped.name.as_deref()
    }

    /// The pid of the process that created the segment.
    pub fn creator_pid(&self) -> u32 {
        // SAFETY: in bounds (validated); a volatile read of a plain u32.
        unsafe { std::ptr::addr_of!((*self.header()).creator_pid).read_volatile() }
    }

    /// The descriptor behind the mapping (for handing down to workers).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.mapped.file.as_raw_fd()
    }

    fn header(&self) -> *const Header {
        self.base.as_ptr().cast::<Header>()
    }

    /// Checks that `offset..offset+len` lies inside the segment.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), SegmentError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(SegmentError::OutOfBounds { offset, len, size: self.size }),
        }
    }

    /// A raw pointer to `len` bytes at `offset`, after a bounds check.
    ///
    /// Reading or writing through it is the caller's business: the bytes are
    /// shared with other processes, and only a protocol (a claimed ring slot,
    /// an owned arena block) makes a plain access race-free.
    pub fn ptr(&self, offset: u64, len: u64) -> Result<*mut u8, SegmentError> {
        self.check_range(offset, len)?;
        // SAFETY: offset + len <= size (checked), so the result is in the mapping.
        Ok(unsafe { self.base.as_ptr().add(offset as usize) })
    }

    /// A shared reference to the `T` at `offset`, after bounds and alignment checks.
    pub fn get<T: ShmSafe>(&self, offset: u64) -> Result<&T, SegmentError> {
        let p = self.ptr(offset, size_of::<T>() as u64)?;
        if (p as usize) % align_of::<T>() != 0 {
            return Err(SegmentError::Corrupt("misaligned offset"));
        }
        // SAFETY: in bounds and aligned (checked); `T: ShmSafe` is valid for any
        // bytes and keeps shared state in atomics, so a shared reference is sound
        // while the mapping (tied to `&self`) lives.
        Ok(unsafe { &*p.cast::<T>() })
    }

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

    /// Finds the directory entry `name`, or creates it with a fresh arena
    /// block of `len` bytes that `init` fills before anyone else can see it.
    ///
    /// `kind` and `fingerprint` identify what the object is; opening it with
    /// others is [`SegmentError::TypeMismatch`]. Returns the block and whether
    /// it was created by this call.
    pub fn named(
        &self,
        name: &str,
        kind: u32,
        fingerprint: u64,
        len: u64,
        init: impl FnOnce(Block) -> Result<(), SegmentError>,
    ) -> Result<(Block, bool), SegmentError> {
        check_name(name)?;
        // SAFETY: header in bounds (validated at open).
        let hdr = unsafe { &*self.header() };
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        hdr.dir_lock.lock(deadline).map_err(|_| SegmentError::Corrupt("directory lock held too long"))?;
        let result = self.named_locked(hdr, name, kind, fingerprint, len, init);
        hdr.dir_lock.unlock();
        result
    }

    fn named_locked(
        &self,
        hdr: &Header,
        name: &str,
        kind: u32,
        fingerprint: u64,
        len: u64,
        init: impl FnOnce(Block) -> Result<(), SegmentError>,
    ) -> Result<(Block, bool), SegmentError> {
        let mut free_slot = None;
        for entry in &hdr.dir {
            if entry.state.load(Ordering::Acquire) != DIR_READY {
                free_slot = free_slot.or(Some(entry));
                continue;
            }
            if entry_name_eq(entry, name) {
                if entry.kind.load(Ordering::Relaxed) != kind
                    || entry.fingerprint.load(Ordering::Relaxed) != fingerprint
                {
                    return Err(SegmentError::TypeMismatch { name: name.to_owned() });
                }
                let offset = entry.offset.load(Ordering::Relaxed);
                let capacity = self.block_capacity(offset)?;
                if capacity < entry.len.load(Ordering::Relaxed) {
                    return Err(SegmentError::Corrupt("directory entry larger than its block"));
                }
                return Ok((Block { offset, capacity }, false));
            }
        }
        let entry = free_slot.ok_or(SegmentError::DirectoryFull)?;
        let block = self.alloc(len)?;
        if let Err(e) = init(block) {
            let _ = self.release(block.offset);
            return Err(e);
        }
        let mut words = [0u64; MAX_NAME / 8];
        for (i, b) in name.bytes().enumerate() {
            words[i / 8] |= (b as u64) << (8 * (i % 8));
        }
        for (w, v) in entry.name.iter().zip(words) {
            w.store(v, Ordering::Relaxed);
        }
        entry.name_len.store(name.len() as u32, Ordering::Relaxed);
        entry.kind.store(kind, Ordering::Relaxed);
        entry.fingerprint.store(fingerprint, Ordering::Relaxed);
        entry.offset.store(block.offset, Ordering::Relaxed);
        entry.len.store(len, Ordering::Relaxed);
        // SYNC: Release publishes the entry (and what `init` wrote) to readers' Acquire.
        entry.state.store(DIR_READY, Ordering::Release);
        Ok((block, true))
    }

    /// Looks up the directory entry `name`: its block and its kind.
    pub fn lookup(&self, name: &str) -> Result<Option<(Block, u32, u64)>, SegmentError> {
        check_name(name)?;
        // SAFETY: header in bounds (validated at open).
        let hdr = unsafe { &*self.header() };
        for entry in &hdr.dir {
            if entry.state.load(Ordering::Acquire) == DIR_READY && entry_name_eq(entry, name) {
                let offset = entry.offset.load(Ordering::Relaxed);
                let capacity = self.block_capacity(offset)?;
                let kind = entry.kind.load(Ordering::Relaxed);
                let fp = entry.fingerprint.load(Ordering::Relaxed);
                return Ok(Some((Block { offset, capacity }, kind, fp)));
            }
        }
        Ok(None)
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.owner {
            if let Some(name) = &self.name {
                let _ = shm::shm_unlink(&format!("{NAME_PREFIX}{name}"));
            }
        }
        // `map` and `file` unmap and close on their own drop.
        let _ = &self.map;
    }
}

const OFFSET_MASK: u64 = (1 << 40) - 1;
const TAG_ONE: u64 = 1 << 40;

fn entry_name_eq(entry: &DirEntry, name: &str) -> bool {
    if entry.name_len.load(Ordering::Relaxed) as usize != name.len() {
        return false;
    }
    name.bytes().enumerate().all(|(i, b)| {
        let w = entry.name[i / 8].load(Ordering::Relaxed);
        (w >> (8 * (i % 8))) as u8 == b
    })
}

fn read_magic(hdr: *const Header) -> [u8; 8] {
    // SAFETY: callers pass the base of a mapping at least a Header long.
    unsafe { std::ptr::addr_of!((*hdr).magic).read_volatile() }
}

fn check_name(name: &str) -> Result<(), SegmentError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SegmentError::InvalidName(name.to_owned()))
    }
}

/// What is known of a named segment in `/dev/shm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedSegment {
    /// Its name (without the `shmpool.` prefix).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The pid that created it, if its header is readable.
    pub creator: Option<u32>,
    /// Whether that creator is alive.
    pub creator_alive: bool,
    /// Processes that map it now.
    pub attached: Vec<u32>,
}

impl NamedSegment {
    /// Left behind: its creator is dead (or its header unreadable) and no
    /// process maps it.
    pub fn is_stale(&self) -> bool {
        !self.creator_alive && self.attached.is_empty()
    }
}

/// Every shmpool segment in `/dev/shm`, with its creator and who maps it.
pub fn list_named() -> Result<Vec<NamedSegment>, SegmentError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/dev/shm")? {
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_prefix(NAME_PREFIX)) else { continue };
        if let Ok(info) = describe(name) {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn describe(name: &str) -> Result<NamedSegment, SegmentError> {
    let path = format!("{NAME_PREFIX}{name}");
    let file = shm::shm_open_existing(&path)?;
    let size = file.metadata()?.len();
    let creator = match Segment::from_file(file) {
        Ok(seg) => Some(seg.creator_pid()),
        Err(_) => None,
    };
    Ok(NamedSegment {
        name: name.to_owned(),
        size,
        creator,
        creator_alive: creator.is_some_and(process::is_alive),
        attached: process::pids_mapping(&format!("/dev/shm/{path}")),
    })
}

/// Removes every stale shmpool segment (creator dead, mapped by nobody)
/// from `/dev/shm`; returns their names.
pub fn cleanup_stale() -> Result<Vec<String>, SegmentError> {
    let mut removed = Vec::new();
    for seg in list_named()? {
        if seg.is_stale() && remove_if_stale(&seg.name)? {
            removed.push(seg.name);
        }
    }
    Ok(removed)
}

/// Removes `/dev/shm/shmpool.<name>` if it is stale: its creator is dead
/// and no process maps it (a segment still being created, whose header is
/// not readable yet, is left alone unless it is over ten seconds old).
/// Says whether the name is free now.
fn remove_if_stale(name: &str) -> Result<bool, SegmentError> {
    let path = format!("{NAME_PREFIX}{name}");
    let file = match shm::shm_open_existing(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e.into()),
    };
    let old = file
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(10)));
    let checked =
        file.metadata().map(|m| (std::os::unix::fs::MetadataExt::dev(&m), std::os::unix::fs::MetadataExt::ino(&m)))?;
    let creator_dead = match Segment::from_file(file) {
        Ok(seg) => !process::is_alive(seg.creator_pid()),
        Err(SegmentError::NotReady) | Err(SegmentError::Truncated { .. }) => old,
        Err(_) => false,
    };
    let stale = creator_dead && process::pids_mapping(&format!("/dev/shm/{path}")).is_empty();
    // Unlink only the very file that was checked: another process may have
    // replaced the name meanwhile (a service restarting).
    let same = std::fs::metadata(format!("/dev/shm/{path}"))
        .is_ok_and(|m| (std::os::unix::fs::MetadataExt::dev(&m), std::os::unix::fs::MetadataExt::ino(&m)) == checked);
    if stale && !same {
        return Ok(false);
    }
    if stale {
        match shm::shm_unlink(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(stale)
}

fn min_size() -> u64 {
    round_up(size_of::<Header>() as u64, 4096) + 4096
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
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

    #[test]
    fn directory_creates_once_and_checks_type() {
        let seg = Segment::anonymous(1 << 20).unwrap();
        let (a, created) = seg.named("x", 1, 42, 64, |_| Ok(())).unwrap();
        assert!(created);
        let (b, created) = seg.named("x", 1, 42, 64, |_| panic!("must not init twice")).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        assert!(matches!(seg.named("x", 1, 43, 64, |_| Ok(())), Err(SegmentError::TypeMismatch { .. })));
        assert!(matches!(seg.named("bad/name", 1, 1, 8, |_| Ok(())), Err(SegmentError::InvalidName(_))));
        assert_eq!(seg.lookup("x").unwrap(), Some((a, 1, 42)));
        assert!(seg.lookup("y").unwrap().is_none());
    }
}
