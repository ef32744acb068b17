//! The directory: named objects in a segment, created once under a lock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::{check_name, Block, Header, Segment, SegmentError, Unlock, LOCK_WAIT, MAX_NAME};

/// A directory slot. `state` is zero (empty) or `DIR_READY`; the other fields
/// are written under the directory lock before `state` becomes ready.
#[repr(C)]
pub(super) struct DirEntry {
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

/// Releases a block not yet published when dropped (an `init` that failed or
/// panicked); forgotten once the block is handed on.
struct ReleaseUnused<'a> {
    seg: &'a Segment,
    offset: u64,
}

impl Drop for ReleaseUnused<'_> {
    fn drop(&mut self) {
        let _ = self.seg.release(self.offset);
    }
}

impl Segment {
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
        let deadline = Some(Instant::now() + LOCK_WAIT);
        // A holder that died mid-`named` left at worst an entry not yet
        // marked ready (overwritten now) and a leaked block: go on either way.
        hdr.dir_lock.lock(deadline).map_err(|t| SegmentError::LockTimeout { lock: "directory", holder: t.holder })?;
        let _unlock = Unlock(&hdr.dir_lock);
        self.named_locked(hdr, name, kind, fingerprint, len, init)
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
        // `init` may fail or panic: either way the block goes back.
        let unused = ReleaseUnused { seg: self, offset: block.offset };
        init(block)?;
        std::mem::forget(unused);
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

fn entry_name_eq(entry: &DirEntry, name: &str) -> bool {
    if entry.name_len.load(Ordering::Relaxed) as usize != name.len() {
        return false;
    }
    name.bytes().enumerate().all(|(i, b)| {
        let w = entry.name[i / 8].load(Ordering::Relaxed);
        (w >> (8 * (i % 8))) as u8 == b
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_held_directory_lock_times_out_with_a_typed_error() {
        let seg = Segment::anonymous(1 << 20).unwrap();
        // SAFETY: header in bounds (validated at creation).
        let hdr = unsafe { &*seg.header() };
        assert!(hdr.dir_lock.try_lock());
        match seg.named("x", 1, 1, 8, |_| Ok(())) {
            Err(SegmentError::LockTimeout { lock: "directory", holder }) => assert_eq!(holder, std::process::id()),
            other => panic!("expected LockTimeout, got {other:?}"),
        }
        hdr.dir_lock.unlock();
        assert!(seg.named("x", 1, 1, 8, |_| Ok(())).unwrap().1);
    }
}
