//! Named containers in a segment: [`SharedList`], [`SharedMap`] and
//! [`SharedObject`], each guarded by a lock of the caller's choice, with
//! values stored as rkyv archives in arena blocks and read in place.
//!
//! Every write archives the new value into a fresh block *before* taking the
//! lock, then publishes it with one atomic store of the block's offset and
//! frees what it replaced after releasing the lock. A block carries its own
//! length (a value block its archive's, a table block its entry count), so an
//! offset is the whole of what is published: a writer killed at any point
//! leaves the container consistent (at worst a block leaks), a full segment
//! leaves it unchanged, and readers only ever see whole values.
//!
//! The one exception is [`SharedList::remove`] of an element other than the
//! last, which shifts the later offsets one store at a time.

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

/// A test-only hook called at every publish point of the containers (see
/// [`set_pause_hook`]); unset in every real program.
static PAUSE_HOOK: std::sync::OnceLock<fn(&'static str)> = std::sync::OnceLock::new();

/// Installs a hook the containers call at their publish points with the
/// point's name (`"object"`, `"list"`, `"map"`, `"map-grow"`), lock held: a
/// kill test stops a writer there and kills it. For tests only; set once
/// per process. Costs one atomic load per write when unset.
#[doc(hidden)]
pub fn set_pause_hook(hook: fn(&'static str)) {
    let _ = PAUSE_HOOK.set(hook);
}

/// Calls the test hook, if one is installed, at publish point `point`.
#[inline]
fn pause_point(point: &'static str) {
    if let Some(hook) = PAUSE_HOOK.get() {
        hook(point);
    }
}

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
    /// A [`BufferHandle`] was opened already: each hand-off opens once.
    HandleUsed,
    /// A [`BufferHandle`] from another segment: it names no buffer here.
    ForeignHandle,
    /// A buffer has as many hand-offs in flight as it can track; open some first.
    TooManyHandoffs {
        /// The most hand-offs one buffer can have in flight.
        limit: usize,
    },
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
            SharedError::HandleUsed => write!(f, "buffer handle already opened (a hand-off opens once)"),
            SharedError::ForeignHandle => write!(f, "buffer handle from another segment"),
            SharedError::TooManyHandoffs { limit } => write!(f, "buffer has {limit} hand-offs in flight already"),
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
    /// Elements (list: the publish point of a push or remove) or live
    /// entries (map: a count, recounted after a writer died).
    len: AtomicU64,
    /// Offset of the table block (list, map; 0: none yet), or of the value
    /// block (object). Replaced with one atomic store.
    table: AtomicU64,
    /// Bumped by every write, so readers can tell a change.
    version: AtomicU64,
    /// Nonzero while a writer does the one thing that is not a single store
    /// (a list's remove shifting entries, a map's count changing beside its
    /// entry); a writer that finds it set when it takes the lock finishes or
    /// redoes that, since the one that set it died.
    pending: AtomicU64,
}

// SAFETY: `#[repr(C)]`, atomics and a ShmSafe LockCell only.
unsafe impl ShmSafe for Header {}

/// Where the payload of a value, key or table block starts: after the
/// block's own length word (archive bytes, or table entries), padded to the
/// 16-byte alignment archives need.
///
/// ```text
/// value/key block: [ len: u64 | pad | archive (len bytes) ... ]
/// table block:     [ cap: u64 | pad | entry 0 | entry 1 | ... entry cap-1 ]
/// ```
///
/// The length word is written before the block's offset is published
/// (Release) and never changes afterwards, so one offset names a whole value.
const PAYLOAD_AT: u64 = 16;

/// A type's fingerprint, stored with a container so that opening it with
/// another element type is an error, not a misread.
/// The fingerprint of a type's label (name, size, alignment), as the
/// network carries it beside a topic's samples.
#[cfg(feature = "net")]
pub(crate) fn type_fingerprint_of(label: &str) -> u64 {
    fnv1a(label.as_bytes())
}

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
    /// one atomic store, so the container is consistent anyway (see
    /// [`Header::pending`] for the rest).
    fn lock(&self, shared: bool) -> Result<Held<'_>, SharedError> {
        match self.lock.acquire(shared, Wait::Default) {
            Ok((hold, _died)) => Ok(Held { core: self, hold }),
            Err(e) => Err(SharedError::Lock(e)),
        }
    }

    /// Archives `value` into a new block of its own; returns its offset.
    fn store<T: Message>(&self, value: &T) -> Result<u64, SharedError> {
        store(&self.seg, value)
    }

    /// The archive bytes of the value block at `offset`, validated against
    /// the arena (the caller holds the lock, so the block stays live).
    fn bytes(&self, offset: u64) -> Result<&[u8], SharedError> {
        let cap = self.seg.block_capacity(offset)?;
        let len = self.seg.get::<AtomicU64>(offset)?.load(Ordering::Acquire);
        if cap < PAYLOAD_AT || len > cap - PAYLOAD_AT {
            return Err(SegmentError::Corrupt("archive longer than its block").into());
        }
        let p = self.seg.ptr(offset + PAYLOAD_AT, len)?;
        // SAFETY: in bounds of a live block (validated); the container lock
        // held by the caller keeps writers from freeing or reusing it meanwhile.
        Ok(unsafe { std::slice::from_raw_parts(p, len as usize) })
    }

    fn free(&self, offset: u64) {
        if offset != 0 {
            let _ = self.seg.release(offset);
        }
    }

    /// The entries of the table block at `offset` (none for 0), as many as
    /// the block says it holds.
    fn table<E: ShmSafe>(&self, offset: u64) -> Result<&[E], SharedError> {
        if offset == 0 {
            return Ok(&[]);
        }
        let cap = self.seg.get::<AtomicU64>(offset)?.load(Ordering::Acquire);
        let bytes = cap
            .checked_mul(size_of::<E>() as u64)
            .and_then(|b| b.checked_add(PAYLOAD_AT))
            .ok_or(SegmentError::Corrupt("table size"))?;
        if self.seg.block_capacity(offset)? < bytes {
            return Err(SegmentError::Corrupt("table larger than its block").into());
        }
        if cap == 0 {
            return Ok(&[]);
        }
        let first = self.seg.get::<E>(offset + PAYLOAD_AT)?;
        // SAFETY: `cap` entries fit in the live block at `offset` (checked),
        // the first is aligned for E (get() checked it); E is ShmSafe.
        Ok(unsafe { std::slice::from_raw_parts(first as *const E, cap as usize) })
    }

    /// Allocates a zeroed table block of `cap` entries of type `E`; it is
    /// not published until its offset is stored.
    fn new_table<E: ShmSafe>(&self, cap: u64) -> Result<u64, SharedError> {
        let bytes = cap
            .checked_mul(size_of::<E>() as u64)
            .and_then(|b| b.checked_add(PAYLOAD_AT))
            .ok_or(SegmentError::OutOfMemory { requested: u64::MAX, available: 0 })?;
        let block = self.seg.alloc(bytes)?;
        let p = self.seg.ptr(block.offset, bytes)?;
        // SAFETY: a block this process just allocated; zero is valid for E.
        unsafe { std::ptr::write_bytes(p, 0, bytes as usize) };
        // SYNC: published by the caller's Release store of the offset.
        self.seg.get::<AtomicU64>(block.offset)?.store(cap, Ordering::Relaxed);
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

/// Archives `value` into a new block of its own in `seg`, its length first
/// (see [`PAYLOAD_AT`]); returns the block's offset.
fn store<T: Message>(seg: &Segment, value: &T) -> Result<u64, SharedError> {
    let len = codec::encoded_len(value)? as u64;
    write_block(seg, len, |dst| Ok(codec::encode_into(value, dst)?))
}

/// Copies `bytes` (an archive) into a new block of its own in `seg`, its
/// length first; returns the block's offset.
fn store_bytes(seg: &Segment, bytes: &[u8]) -> Result<u64, SharedError> {
    write_block(seg, bytes.len() as u64, |dst| {
        dst.copy_from_slice(bytes);
        Ok(bytes.len())
    })
}

/// Allocates a block for `len` payload bytes, lets `fill` write them and
/// records how many it wrote in the block's length word. The block is freed
/// again on failure.
fn write_block(
    seg: &Segment,
    len: u64,
    fill: impl FnOnce(&mut [u8]) -> Result<usize, SharedError>,
) -> Result<u64, SharedError> {
    let total = len.checked_add(PAYLOAD_AT).ok_or(SegmentError::OutOfMemory { requested: u64::MAX, available: 0 })?;
    let block = seg.alloc(total)?;
    let written = (|| {
        let p = seg.ptr(block.offset + PAYLOAD_AT, len)?;
        // SAFETY: a block this process just allocated and has not published;
        // `len` bytes from PAYLOAD_AT are in bounds (ptr() checked them).
        let dst = unsafe { std::slice::from_raw_parts_mut(p, len as usize) };
        let n = fill(dst)?;
        // SYNC: published by the caller's Release store of the block's offset.
        seg.get::<AtomicU64>(block.offset)?.store(n as u64, Ordering::Relaxed);
        Ok(())
    })();
    match written {
        Ok(()) => Ok(block.offset),
        Err(e) => {
            let _ = seg.release(block.offset);
            Err(e)
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
