//! `SharedList<T>`: a growable list of archived values in a segment.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;

use super::{access, decode, fingerprint, Core, Entry, Ref, SharedError, KIND_LIST};
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
        let (off, len) = self.core.store(value)?;
        let result = self.push_stored(off, len);
        if result.is_err() {
            self.core.free(off);
        }
        result
    }

    fn push_stored(&self, off: u64, len: u64) -> Result<usize, SharedError> {
        let _held = self.core.lock(false)?;
        let h = self.core.header();
        let n = h.len.load(Ordering::Relaxed);
        let cap = h.cap.load(Ordering::Relaxed);
        let mut old_table = None;
        if n >= cap {
            let new_cap = (cap * 2).max(8);
            let new = self.core.new_table::<Entry>(new_cap)?;
            let old = self.core.table::<Entry>(h.table.load(Ordering::Relaxed), cap)?;
            let fresh = self.core.table::<Entry>(new, new_cap)?;
            for (dst, src) in fresh.iter().zip(old.iter().take(n as usize)) {
                dst.offset.store(src.offset.load(Ordering::Relaxed), Ordering::Relaxed);
                dst.len.store(src.len.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            old_table = Some(h.table.load(Ordering::Relaxed));
            // SYNC: the table is published before cap grows (Release).
            h.table.store(new, Ordering::Release);
            h.cap.store(new_cap, Ordering::Release);
        }
        let table = self.core.table::<Entry>(h.table.load(Ordering::Relaxed), h.cap.load(Ordering::Relaxed))?;
        let e = &table[n as usize];
        e.len.store(len, Ordering::Relaxed);
        e.offset.store(off, Ordering::Relaxed);
        h.len.store(n + 1, Ordering::Release);
        h.version.fetch_add(1, Ordering::Release);
        drop(_held);
        if let Some(old) = old_table {
            self.core.free(old);
        }
        Ok(n as usize)
    }

    /// Reads element `index` in place (no copy) under the list's lock.
    pub fn get(&self, index: usize) -> Result<Ref<'_, T>, SharedError> {
        let held = self.core.lock(true)?;
        let (off, len) = self.entry(index)?;
        let value = access::<T>(self.core.bytes(off, len)?)?;
        Ok(Ref { _held: held, value })
    }

    /// Replaces element `index` with `value`.
    pub fn set(&self, index: usize, value: &T) -> Result<(), SharedError> {
        let (off, len) = self.core.store(value)?;
        let replaced = (|| {
            let _held = self.core.lock(false)?;
            let e = self.entry_ref(index)?;
            let old = e.offset.swap(off, Ordering::AcqRel);
            e.len.store(len, Ordering::Release);
            self.core.header().version.fetch_add(1, Ordering::Release);
            Ok(old)
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

    /// Removes and returns element `index`, shifting the later ones down.
    pub fn remove(&self, index: usize) -> Result<T, SharedError> {
        let (off, value) = {
            let _held = self.core.lock(false)?;
            let h = self.core.header();
            let n = h.len.load(Ordering::Relaxed);
            let (off, len) = self.entry(index)?;
            let value = decode::<T>(self.core.bytes(off, len)?)?;
            let table = self.core.table::<Entry>(h.table.load(Ordering::Relaxed), h.cap.load(Ordering::Relaxed))?;
            for i in index..(n as usize - 1) {
                table[i].offset.store(table[i + 1].offset.load(Ordering::Relaxed), Ordering::Relaxed);
                table[i].len.store(table[i + 1].len.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            h.len.store(n - 1, Ordering::Release);
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
        let h = self.core.header();
        let n = h.len.load(Ordering::Acquire) as usize;
        (0..n).map(|i| self.entry(i).and_then(|(off, len)| decode::<T>(self.core.bytes(off, len)?))).collect()
    }

    /// Runs `f` on element `index` and stores what it returns, atomically
    /// with respect to every other user of the list.
    pub fn update(&self, index: usize, f: impl FnOnce(T) -> T) -> Result<(), SharedError> {
        let old = {
            let _held = self.core.lock(false)?;
            let (off, len) = self.entry(index)?;
            let new = f(decode::<T>(self.core.bytes(off, len)?)?);
            let (new_off, new_len) = self.core.store(&new)?;
            let e = self.entry_ref(index)?;
            e.offset.store(new_off, Ordering::Release);
            e.len.store(new_len, Ordering::Release);
            self.core.header().version.fetch_add(1, Ordering::Release);
            off
        };
        self.core.free(old);
        Ok(())
    }

    super::container_common!();

    /// The list's name in its segment.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    fn entry_ref(&self, index: usize) -> Result<&Entry, SharedError> {
        let h = self.core.header();
        let n = h.len.load(Ordering::Acquire) as usize;
        if index >= n {
            return Err(SharedError::OutOfRange { index, len: n });
        }
        let cap = h.cap.load(Ordering::Acquire);
        if n as u64 > cap {
            return Err(SegmentError::Corrupt("list longer than its table").into());
        }
        let table = self.core.table::<Entry>(h.table.load(Ordering::Acquire), cap)?;
        Ok(&table[index])
    }

    fn entry(&self, index: usize) -> Result<(u64, u64), SharedError> {
        let e = self.entry_ref(index)?;
        Ok((e.offset.load(Ordering::Acquire), e.len.load(Ordering::Acquire)))
    }
}
