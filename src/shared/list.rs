//! `SharedList<T>`: a growable list of archived values in a segment.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{access, decode, fingerprint, Core, Ref, SharedError, KIND_LIST};
use crate::codec::Message;
use crate::segment::{Segment, SegmentError};
use crate::sync::{LockKind, LockOptions};

/// A list of `T` in a segment, shared by every process that opens it by name.
///
/// Elements are archives in arena blocks; `get` reads one in place under the
/// list's lock. `push` is amortised O(1) (the table of element offsets
/// doubles when full); `remove` shifts offsets, not values.
pub struct SharedList<T: Message> {
    core: Core,
    _t: PhantomData<fn() -> T>,
}

impl<T: Message> Clone for SharedList<T> {
    fn clone(&self) -> Self {
        SharedList { core: self.core.clone(), _t: PhantomData }
    }
}

impl<T: Message> std::fmt::Debug for SharedList<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.fmt(f)
    }
}

impl Segment {
    /// Creates the list `name` guarded by a `lock` lock, or opens it.
    ///
    /// Opening it with another element type or lock kind is
    /// [`SegmentError::TypeMismatch`].
    pub fn list<T: Message>(&self, name: &str, lock: LockKind) -> Result<SharedList<T>, SharedError> {
        self.list_with(name, lock, LockOptions::default())
    }

    /// [`Segment::list`] with a deadlock timeout and handler for its lock.
    pub fn list_with<T: Message>(
        &self,
        name: &str,
        lock: LockKind,
        options: LockOptions,
    ) -> Result<SharedList<T>, SharedError> {
        let core = Core::open(self, name, KIND_LIST, fingerprint::<Vec<T>>(), lock, options, |_| Ok(()))?;
        Ok(SharedList { core, _t: PhantomData })
    }
}

impl<T: Message> SharedList<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.core.header().len.load(Ordering::Acquire) as usize
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `value`; returns its index.
    pub fn push(&self, value: &T) -> Result<usize, SharedError> {
        let off = self.core.store(value)?;
        let result = self.push_stored(off);
        if result.is_err() {
            self.core.free(off);
        }
        result
    }

    fn push_stored(&self, off: u64) -> Result<usize, SharedError> {
        let held = self.lock_write()?;
        let h = self.core.header();
        let n = h.len.load(Ordering::Relaxed);
        let table_at = h.table.load(Ordering::Relaxed);
        let mut table = self.core.table::<AtomicU64>(table_at)?;
        if n > table.len() as u64 {
            return Err(SegmentError::Corrupt("list longer than its table").into());
        }
        let mut old_table = None;
        if n == table.len() as u64 {
            let new_cap = (n * 2).max(8);
            let new = self.core.new_table::<AtomicU64>(new_cap)?;
            let fresh = self.core.table::<AtomicU64>(new)?;
            for (dst, src) in fresh.iter().zip(table) {
                dst.store(src.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            super::pause_point("list-grow");
            // SYNC: Release publishes the new table (its capacity word and
            // entries, written before); a reader loads it with Acquire. One
            // store: the table carries its capacity.
            h.table.store(new, Ordering::Release);
            old_table = Some(table_at);
            table = fresh;
        }
        table[n as usize].store(off, Ordering::Relaxed);
        super::pause_point("list-push");
        // SYNC: the length is the publish point of a push: Release makes the
        // entry (and the value block it names) visible with it.
        h.len.store(n + 1, Ordering::Release);
        h.version.fetch_add(1, Ordering::Release);
        drop(held);
        if let Some(old) = old_table {
            self.core.free(old);
        }
        Ok(n as usize)
    }

    /// Reads element `index` in place (no copy) under the list's lock.
    pub fn get(&self, index: usize) -> Result<Ref<'_, T>, SharedError> {
        let held = self.core.lock(true)?;
        let off = self.entry(index)?;
        let value = access::<T>(self.core.bytes(off)?)?;
        Ok(Ref { _held: held, value })
    }

    /// Replaces element `index` with `value`.
    pub fn set(&self, index: usize, value: &T) -> Result<(), SharedError> {
        let off = self.core.store(value)?;
        let replaced = (|| {
            let _held = self.lock_write()?;
            self.publish(index, off)
        })();
        match replaced {
            Ok(old) => {
                self.core.free(old);
                Ok(())
            }
            Err(e) => {
                self.core.free(off);
                Err(e)
            }
        }
    }

    /// Publishes the value block `off` as element `index` with one atomic
    /// store (lock held); returns the block it replaced.
    fn publish(&self, index: usize, off: u64) -> Result<u64, SharedError> {
        let e = self.entry_ref(index)?;
        super::pause_point("list");
        // SYNC: Release publishes the block's length and archive, written
        // before; readers load the entry with Acquire.
        let old = e.swap(off, Ordering::AcqRel);
        self.core.header().version.fetch_add(1, Ordering::Release);
        Ok(old)
    }

    /// Removes and returns element `index`, shifting the later ones down.
    ///
    /// Removing the last element is one atomic store (the length). Removing
    /// another shifts the later offsets one store at a time: a process killed
    /// in the middle of that leaves one element twice (its block leaks),
    /// which the next writer to take the lock sees and finishes (readers
    /// before it see the element twice; no read fails).
    pub fn remove(&self, index: usize) -> Result<T, SharedError> {
        let (off, value) = {
            let _held = self.lock_write()?;
            let h = self.core.header();
            let n = h.len.load(Ordering::Relaxed);
            let table = self.core.table::<AtomicU64>(h.table.load(Ordering::Relaxed))?;
            // Shared memory is hostile: the shift below reads up to entry
            // `n - 1`, so the length must fit the table (as in `push_stored`).
            if n > table.len() as u64 {
                return Err(SegmentError::Corrupt("list longer than its table").into());
            }
            let n = n as usize;
            if index >= n {
                return Err(SharedError::OutOfRange { index, len: n });
            }
            let off = table[index].load(Ordering::Acquire);
            let value = decode::<T>(self.core.bytes(off)?)?;
            let last = n - 1;
            if index < last {
                h.pending.store(1, Ordering::Relaxed);
                for i in index..last {
                    table[i].store(table[i + 1].load(Ordering::Relaxed), Ordering::Release);
                    if i == index {
                        super::pause_point("list-remove");
                    }
                }
            }
            h.len.store(last as u64, Ordering::Release);
            h.pending.store(0, Ordering::Release);
            h.version.fetch_add(1, Ordering::Release);
            (off, value)
        };
        self.core.free(off);
        Ok(value)
    }

    /// Removes and returns the last element, if any.
    pub fn pop(&self) -> Result<Option<T>, SharedError> {
        loop {
            let n = self.len();
            if n == 0 {
                return Ok(None);
            }
            match self.remove(n - 1) {
                Ok(v) => return Ok(Some(v)),
                // Another process shortened the list meanwhile: look again.
                Err(SharedError::OutOfRange { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Copies every element out, in order, under one hold of the lock.
    pub fn to_vec(&self) -> Result<Vec<T>, SharedError> {
        let _held = self.core.lock(true)?;
        let n = self.core.header().len.load(Ordering::Acquire) as usize;
        (0..n).map(|i| self.entry(i).and_then(|off| decode::<T>(self.core.bytes(off)?))).collect()
    }

    /// Runs `f` on element `index` and stores what it returns, atomically
    /// with respect to every other user of the list.
    pub fn update(&self, index: usize, f: impl FnOnce(T) -> T) -> Result<(), SharedError> {
        let old = {
            let _held = self.lock_write()?;
            let new = f(decode::<T>(self.core.bytes(self.entry(index)?)?)?);
            let new_off = self.core.store(&new)?;
            match self.publish(index, new_off) {
                Ok(old) => old,
                Err(e) => {
                    self.core.free(new_off);
                    return Err(e);
                }
            }
        };
        self.core.free(old);
        Ok(())
    }

    super::container_common!();

    /// The list's name in its segment.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// Takes the lock to write, first finishing the one write that is not a
    /// single store if a writer died in it: a remove killed while shifting.
    fn lock_write(&self) -> Result<super::Held<'_>, SharedError> {
        let held = self.core.lock(false)?;
        if self.core.header().pending.load(Ordering::Acquire) != 0 {
            self.finish_remove()?;
        }
        Ok(held)
    }

    /// A remove killed mid-shift left entries `k-1` and `k` naming the same
    /// block (every live element has a block of its own): shift the rest
    /// down and shorten the list, as the remove would have (lock held).
    fn finish_remove(&self) -> Result<(), SharedError> {
        let h = self.core.header();
        let n = h.len.load(Ordering::Relaxed) as usize;
        let table = self.core.table::<AtomicU64>(h.table.load(Ordering::Relaxed))?;
        if n > table.len() {
            return Err(SegmentError::Corrupt("list longer than its table").into());
        }
        let twice = (1..n).find(|&k| table[k - 1].load(Ordering::Relaxed) == table[k].load(Ordering::Relaxed));
        if let Some(k) = twice {
            for i in k..n - 1 {
                table[i].store(table[i + 1].load(Ordering::Relaxed), Ordering::Release);
            }
            h.len.store(n as u64 - 1, Ordering::Release);
            h.version.fetch_add(1, Ordering::Release);
        }
        h.pending.store(0, Ordering::Release);
        Ok(())
    }

    fn entry_ref(&self, index: usize) -> Result<&AtomicU64, SharedError> {
        let h = self.core.header();
        let n = h.len.load(Ordering::Acquire) as usize;
        if index >= n {
            return Err(SharedError::OutOfRange { index, len: n });
        }
        let table = self.core.table::<AtomicU64>(h.table.load(Ordering::Acquire))?;
        table.get(index).ok_or_else(|| SegmentError::Corrupt("list longer than its table").into())
    }

    /// The value block of element `index` (lock held).
    fn entry(&self, index: usize) -> Result<u64, SharedError> {
        Ok(self.entry_ref(index)?.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A corrupt length larger than the table: `remove` read past the table
    /// (and panicked) while shifting; now it is a typed error.
    #[test]
    fn remove_with_a_length_beyond_the_table_is_a_corrupt_segment() {
        let seg = Segment::anonymous(1 << 20).unwrap();
        let list = seg.list::<u64>("corrupt-len", LockKind::Mutex).unwrap();
        for v in 0..3u64 {
            list.push(&v).unwrap();
        }
        let h = list.core.header();
        let table = list.core.table::<AtomicU64>(h.table.load(Ordering::Acquire)).unwrap().len() as u64;
        h.len.store(table + 5, Ordering::Release);
        let r = list.remove(1);
        assert!(matches!(r, Err(SharedError::Segment(SegmentError::Corrupt(_)))), "{r:?}");
        // The list is left as it was: its length is the corrupt one still.
        assert_eq!(list.len() as u64, table + 5);
        h.len.store(3, Ordering::Release);
        assert_eq!(list.remove(1).unwrap(), 1);
        assert_eq!(list.to_vec().unwrap(), vec![0, 2]);
        assert!(matches!(list.remove(2), Err(SharedError::OutOfRange { index: 2, len: 2 })));
    }
}
