//! Named containers in a segment: [`SharedList`], [`SharedMap`] and
//! [`SharedObject`], each guarded by a lock of the caller's choice, with
//! values stored as rkyv archives in arena blocks and read in place.
//!
//! Every write archives the new value into a fresh block *before* taking the
//! lock, then publishes it with single atomic stores and frees what it
//! replaced after releasing the lock. So a writer killed at any point leaves
//! the container consistent (at worst a block leaks), a full segment leaves
//! it unchanged, and readers only ever see whole values.

mod buffer;
mod list;
mod map;
mod object;

use std::fmt;
use std::mem::size_of;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::codec::{self, CodecError, Message};
use crate::segment::{Segment, SegmentError, ShmSafe};
use crate::sync::{Hold, LockCell, LockError, LockKind, LockOptions, LockRef, Wait};

pub use buffer::{BufferHandle, SharedBuffer};
pub use list::SharedList;
pub use map::{AsKey, SharedMap};
pub use object::SharedObject;

/// Why a container operation failed. The container is unchanged.
#[derive(Debug)]
#[non_exhaustive]
pub enum SharedError {
    /// The segment refused: out of memory, type mismatch, corrupt, ...
    Segment(SegmentError),
    /// The container's lock was not acquired (timeout, not authorised).
    Lock(LockError<()>),
    /// A value could not be archived, or a stored archive failed validation.
    Codec(CodecError),
    /// An index past the end of a list.
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// The list's length.
        len: usize,
    },
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharedError::Segment(e) => write!(f, "{e}"),
            SharedError::Lock(e) => write!(f, "{e}"),
            SharedError::Codec(e) => write!(f, "{e}"),
            SharedError::OutOfRange { index, len } => write!(f, "index {index} out of range for length {len}"),
        }
    }
}

impl std::error::Error for SharedError {}

impl From<SegmentError> for SharedError {
    fn from(e: SegmentError) -> Self {
        SharedError::Segment(e)
    }
}

impl From<CodecError> for SharedError {
    fn from(e: CodecError) -> Self {
        SharedError::Codec(e)
    }
}

/// Container kinds in the segment directory.
const KIND_LIST: u32 = 10;
const KIND_MAP: u32 = 11;
const KIND_OBJECT: u32 = 12;
const HEADER_MAGIC: u32 = 0x5348_4152; // "SHAR"

/// The header of every container, in its directory block.
#[repr(C)]
struct Header {
    magic: AtomicU32,
    kind: AtomicU32,
    lock: LockCell,
    /// Elements (list) or live entries (map).
    len: AtomicU64,
    /// Entries the table holds (list: slots; map: buckets, a power of two).
    cap: AtomicU64,
    /// Offset of the table block (0: none yet).
    table: AtomicU64,
    /// Bumped by every write, so readers can tell a change.
    version: AtomicU64,
}

// SAFETY: `#[repr(C)]`, atomics and a ShmSafe LockCell only.
unsafe impl ShmSafe for Header {}

/// Where one archived value lives: an arena block offset and the archive length.
#[repr(C)]
struct Entry {
    offset: AtomicU64,
    len: AtomicU64,
}

// SAFETY: `#[repr(C)]`, atomics only.
unsafe impl ShmSafe for Entry {}

/// A type's fingerprint, stored with a container so that opening it with
/// another element type is an error, not a misread.
pub(crate) fn type_fingerprint<T: ?Sized>() -> u64 {
    fingerprint::<T>()
}

fn fingerprint<T: ?Sized>() -> u64 {
    fnv1a(std::any::type_name::<T>().as_bytes()) ^ (size_of::<usize>() as u64).rotate_left(56)
}

/// FNV-1a, 64 bit: the map's hash of archived key bytes (stable across
/// processes and builds, unlike std's randomised hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What every container handle holds: its segment, header and lock.
#[derive(Clone)]
struct Core {
    seg: Segment,
    header: u64,
    lock: LockRef,
    name: String,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("name", &self.name).field("lock", &self.lock).finish()
    }
}

impl Core {
    /// Creates or opens the container `name` of directory kind `kind`.
    fn open(
        seg: &Segment,
        name: &str,
        kind: u32,
        fingerprint: u64,
        lock: LockKind,
        options: LockOptions,
        init: impl FnOnce(&Header) -> Result<(), SegmentError>,
    ) -> Result<Core, SharedError> {
        let size = size_of::<Header>() as u64;
        let (block, _) = seg.named(name, kind, fingerprint, size, |b| {
            let p = seg.ptr(b.offset, size)?;
            // SAFETY: a block this process just allocated and has not yet
            // published; zero bytes are a valid Header.
            unsafe { std::ptr::write_bytes(p, 0, size as usize) };
            let h = seg.get::<Header>(b.offset)?;
            h.lock.init(lock);
            h.kind.store(kind, Ordering::Relaxed);
            init(h)?;
            h.magic.store(HEADER_MAGIC, Ordering::Release);
            Ok(())
        })?;
        let h = seg.get::<Header>(block.offset)?;
        if h.magic.load(Ordering::Acquire) != HEADER_MAGIC || h.kind.load(Ordering::Relaxed) != kind {
            return Err(SegmentError::Corrupt("container header").into());
        }
        let lock = LockRef::open(seg, block.offset + std::mem::offset_of!(Header, lock) as u64, lock, name, options)?;
        Ok(Core { seg: seg.clone(), header: block.offset, lock, name: name.to_owned() })
    }

    fn header(&self) -> &Header {
        self.seg.get::<Header>(self.header).expect("container header validated at open")
    }

    /// Takes the container's lock (shared for reads where the kind allows).
    /// A holder that died is not an error here: every write publishes with
    /// single atomic stores, so the container is consistent anyway.
    fn lock(&self, shared: bool) -> Result<Held<'_>, SharedError> {
        match self.lock.acquire(shared, Wait::Default) {
            Ok((hold, _died)) => Ok(Held { core: self, hold }),
            Err(e) => Err(SharedError::Lock(e)),
        }
    }

    /// Archives `value` into a new block of its own.
    fn store<T: Message>(&self, value: &T) -> Result<(u64, u64), SharedError> {
        store(&self.seg, value)
    }

    /// The archive bytes of the value at (`offset`, `len`), validated against
    /// the arena (the caller holds the lock, so the block stays live).
    fn bytes(&self, offset: u64, len: u64) -> Result<&[u8], SharedError> {
        let cap = self.seg.block_capacity(offset)?;
        if len > cap {
            return Err(SegmentError::Corrupt("archive longer than its block").into());
        }
        let p = self.seg.ptr(offset, len)?;
        // SAFETY: a live block (validated), in bounds; the container lock held
        // by the caller keeps writers from freeing or reusing it meanwhile.
        Ok(unsafe { std::slice::from_raw_parts(p, len as usize) })
    }

    fn free(&self, offset: u64) {
        if offset != 0 {
            let _ = self.seg.release(offset);
        }
    }

    /// The table of `cap` entries of type `E` at `offset`.
    fn table<E: ShmSafe>(&self, offset: u64, cap: u64) -> Result<&[E], SharedError> {
        if offset == 0 || cap == 0 {
            return Ok(&[]);
        }
        let bytes = cap.checked_mul(size_of::<E>() as u64).ok_or(SegmentError::Corrupt("table size"))?;
        if self.seg.block_capacity(offset)? < bytes {
            return Err(SegmentError::Corrupt("table larger than its block").into());
        }
        let first = self.seg.get::<E>(offset)?;
        // SAFETY: `cap` entries fit in the live block at `offset` (checked),
        // which is aligned for E (get() checked the first); E is ShmSafe.
        Ok(unsafe { std::slice::from_raw_parts(first as *const E, cap as usize) })
    }

    /// Allocates a zeroed table of `cap` entries of type `E`.
    fn new_table<E: ShmSafe>(&self, cap: u64) -> Result<u64, SharedError> {
        let bytes = cap * size_of::<E>() as u64;
        let block = self.seg.alloc(bytes)?;
        let p = self.seg.ptr(block.offset, bytes)?;
        // SAFETY: a block this process just allocated; zero is valid for E.
        unsafe { std::ptr::write_bytes(p, 0, bytes as usize) };
        Ok(block.offset)
    }
}

/// Methods every container has, delegated to its [`Core`].
macro_rules! container_common {
    () => {
        /// For a container guarded by [`LockKind::Auth`](crate::LockKind::Auth):
        /// lets process `pid` use it (only an operator may add others).
        pub fn add_operator(&self, pid: u32) -> Result<(), SharedError> {
            self.core.lock.add_operator(pid).map_err(SharedError::Lock)
        }

        /// For an `Auth` container: stops process `pid` from using it.
        pub fn remove_operator(&self, pid: u32) -> Result<(), SharedError> {
            self.core.lock.remove_operator(pid).map_err(SharedError::Lock)
        }

        /// A counter bumped by every write: readers can tell whether the
        /// container changed since they last looked.
        pub fn version(&self) -> u64 {
            self.core.header().version.load(std::sync::atomic::Ordering::Acquire)
        }
    };
}
pub(crate) use container_common;

/// Archives `value` into a new block of its own in `seg`: (offset, length).
fn store<T: Message>(seg: &Segment, value: &T) -> Result<(u64, u64), SharedError> {
    let len = codec::encoded_len(value)? as u64;
    let block = seg.alloc(len.max(1))?;
    let p = seg.ptr(block.offset, len)?;
    // SAFETY: a block this process just allocated and has not published; in bounds.
    let dst = unsafe { std::slice::from_raw_parts_mut(p, len as usize) };
    match codec::encode_into(value, dst) {
        Ok(n) => Ok((block.offset, n as u64)),
        Err(e) => {
            let _ = seg.release(block.offset);
            Err(e.into())
        }
    }
}

/// The container's lock, held.
struct Held<'a> {
    core: &'a Core,
    hold: Hold,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.core.lock.release(self.hold);
    }
}

/// A value read in place under the container's lock; derefs to the archive.
///
/// The lock (a read hold for `RwLock` containers) is held until it is dropped.
pub struct Ref<'a, T: Message> {
    _held: Held<'a>,
    value: &'a T::Archive,
}

impl<T: Message> std::ops::Deref for Ref<'_, T> {
    type Target = T::Archive;
    fn deref(&self) -> &T::Archive {
        self.value
    }
}

impl<T: Message> Ref<'_, T> {
    /// Deserialises the value (a copy out of shared memory).
    pub fn to_owned(&self) -> Result<T, SharedError> {
        rkyv::deserialize::<T, rkyv::rancor::Error>(self.value)
            .map_err(|e| SharedError::Codec(CodecError::Invalid(e.to_string())))
    }
}

impl<T: Message> fmt::Debug for Ref<'_, T>
where
    T::Archive: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

/// Validates `bytes` as an archived `T`.
fn access<T: Message>(bytes: &[u8]) -> Result<&T::Archive, SharedError> {
    codec::access::<T>(bytes).map_err(SharedError::Codec)
}

/// Deserialises `bytes` as a `T`.
fn decode<T: Message>(bytes: &[u8]) -> Result<T, SharedError> {
    codec::decode::<T>(bytes).map_err(SharedError::Codec)
}
