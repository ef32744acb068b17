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

mod admin;
mod arena;
mod directory;
mod heap;

use admin::remove_if_stale;
pub use admin::{cleanup_stale, list_named, NamedSegment};
use arena::CLASSES;
use directory::DirEntry;
use heap::HeapState;

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

/// How long the segment's own locks (directory, heap) are waited for before
/// giving up with [`SegmentError::LockTimeout`] (short in unit tests, which
/// provoke the timeout).
const LOCK_WAIT: Duration = if cfg!(test) { Duration::from_millis(100) } else { Duration::from_secs(10) };

/// Unlocks a raw lock when dropped, unwinding included, so that a panic under
/// it does not leave it held by a live process.
struct Unlock<'a>(&'a RawMutex);

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

const MAGIC: [u8; 8] = *b"shmpool\0";
/// The layout version this build writes and accepts.
pub const LAYOUT_VERSION: u32 = 2;
/// How many named objects a segment's directory holds.
pub const DIRECTORY_ENTRIES: usize = 64;
/// The longest name of a directory entry, in bytes.
pub const MAX_NAME: usize = 64;
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
    /// End of the arena heap: `[top, arena_end)` was never handed out.
    /// Moves (up only) under the heap lock; see `heap`.
    top: CachePadded<AtomicU64>,
    /// The chunk small blocks are carved from, lock-free (see `arena`).
    small: CachePadded<AtomicU64>,
    /// Free list heads per small size class: `(tag << 40) | (block offset / 16)`.
    /// The tag changes on every pop, which defeats ABA.
    free: [AtomicU64; CLASSES],
    /// The heap all arena memory comes from: large blocks and small chunks.
    heap: HeapState,
    /// Guards `dir` writes.
    dir_lock: RawMutex,
    _pad: u32,
    dir: [DirEntry; DIRECTORY_ENTRIES],
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
    /// One of the segment's own locks (`lock` names which: the directory,
    /// the large-block arena) stayed held by the live process `holder` past
    /// the deadline: that process is stuck, or holds it for far too long.
    LockTimeout {
        /// Which lock.
        lock: &'static str,
        /// The pid holding it when the wait gave up.
        holder: u32,
    },
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
            SegmentError::LockTimeout { lock, holder } => {
                write!(f, "timed out waiting for the segment's {lock} lock, held by live process {holder}")
            }
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
    /// The creator's drop leaves the name: the segment's users decide
    /// together when it goes (topics and queues: the last one to leave).
    keep_name: std::sync::atomic::AtomicBool,
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
            mapped: Arc::new(Mapped { map, file, name, owner: false, keep_name: Default::default() }),
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
            (*hdr).top.store(arena_start, Ordering::Relaxed);
            // SYNC: Release publishes the fields above to openers (Acquire in validate).
            (*hdr).state.store(STATE_READY, Ordering::Release);
        }
        Ok(Segment {
            mapped: Arc::new(Mapped { map, file, owner: name.is_some(), name, keep_name: Default::default() }),
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

    /// Keeps the name when the creator's last handle goes: the segment's
    /// users remove it together ([`Segment::unlink_name`]).
    pub(crate) fn keep_name(&self) {
        self.mapped.keep_name.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Removes the segment's name (`/dev/shm/shmpool.<name>`): new opens
    /// fail; mappings stay until their last handle goes.
    pub(crate) fn unlink_name(&self) {
        if let Some(name) = &self.mapped.name {
            let _ = shm::shm_unlink(&format!("{NAME_PREFIX}{name}"));
        }
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
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.owner && !self.keep_name.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(name) = &self.name {
                let _ = shm::shm_unlink(&format!("{NAME_PREFIX}{name}"));
            }
        }
        // `map` and `file` unmap and close on their own drop.
        let _ = &self.map;
    }
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

fn min_size() -> u64 {
    round_up(size_of::<Header>() as u64, 4096) + 4096
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}
