//! `SharedObject<T>`: one archived value in a segment (XME's shared object).

use std::marker::PhantomData;
use std::sync::atomic::Ordering;

use super::{access, decode, fingerprint, Core, Ref, SharedError, KIND_OBJECT};
use crate::codec::Message;
use crate::segment::Segment;
use crate::sync::{LockKind, LockOptions};

/// One value of type `T` in a segment, read in place and replaced whole.
pub struct SharedObject<T: Message> {
    core: Core,
    _t: PhantomData<fn() -> T>,
}

impl<T: Message> Clone for SharedObject<T> {
    fn clone(&self) -> Self {
        SharedObject { core: self.core.clone(), _t: PhantomData }
    }
}

impl<T: Message> std::fmt::Debug for SharedObject<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.fmt(f)
    }
}

impl Segment {
    /// Creates the object `name` holding `initial`, guarded by a `lock` lock;
    /// or opens it as it is (then `initial` is not used).
    pub fn object<T: Message>(&self, name: &str, lock: LockKind, initial: &T) -> Result<SharedObject<T>, SharedError> {
        self.object_with(name, lock, initial, LockOptions::default())
    }

    /// [`Segment::object`] with a deadlock timeout and handler for its lock.
    pub fn object_with<T: Message>(
        &self,
        name: &str,
        lock: LockKind,
        initial: &T,
        options: LockOptions,
    ) -> Result<SharedObject<T>, SharedError> {
        // Archived before the directory lock is taken; freed if unused.
        let offset = super::store(self, initial)?;
        let mut used = false;
        let core = Core::open(self, name, KIND_OBJECT, fingerprint::<T>(), lock, options, |h| {
            // SYNC: published with the header (its magic's Release store).
            h.table.store(offset, Ordering::Relaxed);
            used = true;
            Ok(())
        });
        if !used {
            let _ = self.release(offset);
        }
        let core = core?;
        Ok(SharedObject { core, _t: PhantomData })
    }
}

impl<T: Message> SharedObject<T> {
    /// Reads the value in place (no copy) under the object's lock.
    pub fn get(&self) -> Result<Ref<'_, T>, SharedError> {
        let held = self.core.lock(true)?;
        let value = access::<T>(self.core.bytes(self.current())?)?;
        Ok(Ref { _held: held, value })
    }

    /// Copies the value out.
    pub fn load(&self) -> Result<T, SharedError> {
        let _held = self.core.lock(true)?;
        decode::<T>(self.core.bytes(self.current())?)
    }

    /// Replaces the value.
    pub fn set(&self, value: &T) -> Result<(), SharedError> {
        let off = self.core.store(value)?;
        let old = {
            let _held = match self.core.lock(false) {
                Ok(h) => h,
                Err(e) => {
                    self.core.free(off);
                    return Err(e);
                }
            };
            self.publish(off)
        };
        self.core.free(old);
        Ok(())
    }

    /// Atomically replaces the value with `f(value)`; returns the new value.
    pub fn update(&self, f: impl FnOnce(T) -> T) -> Result<T, SharedError>
    where
        T: Clone,
    {
        let held = self.core.lock(false)?;
        let new = f(decode::<T>(self.core.bytes(self.current())?)?);
        let new_off = self.core.store(&new)?;
        let old = self.publish(new_off);
        drop(held);
        self.core.free(old);
        Ok(new)
    }

    super::container_common!();

    /// The object's name in its segment.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The current value block (lock held).
    fn current(&self) -> u64 {
        self.core.header().table.load(Ordering::Acquire)
    }

    /// Publishes the value block at `off` (lock held) with one atomic store;
    /// returns the block it replaced.
    fn publish(&self, off: u64) -> u64 {
        let h = self.core.header();
        super::pause_point("object");
        // SYNC: Release publishes the block's length and archive, written
        // before; readers load the offset with Acquire.
        let old = h.table.swap(off, Ordering::AcqRel);
        h.version.fetch_add(1, Ordering::Release);
        old
    }
}
