//! `SharedMap<K, V>`: a hash map of archived keys and values in a segment.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{access, decode, fingerprint, fnv1a, Core, Ref, SharedError, KIND_MAP};
use crate::codec::{self, CodecError, Message};
use crate::segment::{Segment, SegmentError, ShmSafe};
use crate::sync::{LockKind, LockOptions};

/// One bucket. `key` is 0 when empty, [`TOMBSTONE`] once removed; the other
/// fields are written before `key` (Release), so a bucket with a key is whole.
/// `key` and `value` are offsets of blocks that carry their own length, so a
/// value is replaced with one atomic store.
#[repr(C)]
struct Bucket {
    hash: AtomicU64,
    key: AtomicU64,
    value: AtomicU64,
}

// SAFETY: `#[repr(C)]`, atomics only.
unsafe impl ShmSafe for Bucket {}

/// Marks a removed bucket (a probe goes on past it). Never a block offset,
/// which are multiples of 16.
const TOMBSTONE: u64 = 1;

/// A key that can be looked up in a `SharedMap<K, _>`: `&K` itself, or for
/// `String` keys a `&str`.
pub trait AsKey<K> {
    /// Archives the key and calls `f` with its bytes.
    fn with_archived<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R, CodecError>;
}

impl<K: Message> AsKey<K> for &K {
    fn with_archived<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R, CodecError> {
        archived(*self, f)
    }
}

impl AsKey<String> for &str {
    fn with_archived<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R, CodecError> {
        LAST_STR_KEY.with(|cell| {
            let Ok(mut last) = cell.try_borrow_mut() else {
                // A lookup inside a lookup (an `update` closure reading a
                // map): archive this one afresh.
                return archived(&self.to_string(), f);
            };
            let LastStrKey { key, bytes, len } = &mut *last;
            if len.is_none() || key != self {
                *len = None;
                key.clear();
                key.push_str(self);
                *len = Some(archived(key, |kb| {
                    bytes.clear();
                    bytes.resize(kb.len().div_ceil(16), 0);
                    aligned_bytes(bytes)[..kb.len()].copy_from_slice(kb);
                    kb.len()
                })?);
            }
            let n = len.expect("archived above");
            Ok(f(&aligned_bytes(bytes)[..n]))
        })
    }
}

/// The archive of the last `&str` key this thread looked up, beside the
/// string itself: a map polled for one key (the common read) compares the
/// string and archives nothing. Keys are compared by their archived bytes,
/// which depend on the string alone, so one entry serves every map.
#[derive(Default)]
struct LastStrKey {
    key: String,
    /// The archive, in 16-byte units (archives must be 16-byte aligned).
    bytes: Vec<u128>,
    /// The archive's length in bytes; `None` while `bytes` is not `key`'s.
    len: Option<usize>,
}

thread_local! {
    static LAST_STR_KEY: std::cell::RefCell<LastStrKey> = std::cell::RefCell::new(LastStrKey::default());
}

/// The bytes of `buf` (16-byte aligned).
fn aligned_bytes(buf: &mut [u128]) -> &mut [u8] {
    // SAFETY: u128 has no padding and any bytes are a valid u128; the view
    // covers the slice exactly and borrows it mutably for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 16) }
}

fn archived<K: Message, R>(key: &K, f: impl FnOnce(&[u8]) -> R) -> Result<R, CodecError> {
    // The thread's scratch buffer: no allocation per lookup for keys that fit.
    crate::wire::with_scratch(|scratch| match codec::encode_into(key, &mut scratch.0) {
        Ok(n) => Ok(f(&scratch.0[..n])),
        Err(CodecError::TooSmall { .. }) => {
            // Long keys: archive into an aligned heap buffer of the exact size.
            let len = codec::encoded_len(key)?;
            let mut buf = vec![0u128; len.div_ceil(16)];
            // SAFETY: u128 has no padding; the view covers the vector exactly.
            let bytes = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 16) };
            let n = codec::encode_into(key, bytes)?;
            Ok(f(&bytes[..n]))
        }
        Err(e) => Err(e),
    })
}

/// A hash map from `K` to `V` in a segment, shared by every process that opens
/// it by name.
///
/// Keys are compared by their archived bytes (equal values archive to equal
/// bytes) and hashed with FNV-1a, the same in every process. Open addressing
/// with linear probing; the table doubles past 70% load. `get` reads the value
/// in place under the map's lock.
pub struct SharedMap<K: Message, V: Message> {
    core: Core,
    _kv: PhantomData<fn() -> (K, V)>,
}

impl<K: Message, V: Message> Clone for SharedMap<K, V> {
    fn clone(&self) -> Self {
        SharedMap { core: self.core.clone(), _kv: PhantomData }
    }
}

impl<K: Message, V: Message> std::fmt::Debug for SharedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.fmt(f)
    }
}

impl Segment {
    /// Creates the map `name` guarded by a `lock` lock, or opens it.
    ///
    /// Opening it with other key or value types, or another lock kind, is
    /// [`SegmentError::TypeMismatch`].
    pub fn map<K: Message, V: Message>(&self, name: &str, lock: LockKind) -> Result<SharedMap<K, V>, SharedError> {
        self.map_with(name, lock, LockOptions::default())
    }

    /// [`Segment::map`] with a deadlock timeout and handler for its lock.
    pub fn map_with<K: Message, V: Message>(
        &self,
        name: &str,
        lock: LockKind,
        options: LockOptions,
    ) -> Result<SharedMap<K, V>, SharedError> {
        let core = Core::open(self, name, KIND_MAP, fingerprint::<(K, V)>(), lock, options, |_| Ok(()))?;
        Ok(SharedMap { core, _kv: PhantomData })
    }
}

/// Where a probe for a key ended.
enum Probe {
    Found(usize),
    /// Not there; the first free (empty or tombstone) bucket seen, if any.
    Vacant(Option<usize>),
}

impl<K: Message, V: Message> SharedMap<K, V> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.core.header().len.load(Ordering::Acquire) as usize
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts or replaces the value of `key`; says whether it replaced one.
    pub fn insert(&self, key: &K, value: &V) -> Result<bool, SharedError> {
        let val_off = self.core.store(value)?;
        let result = self.insert_stored(key, val_off);
        if result.is_err() {
            self.core.free(val_off);
        }
        result
    }

    fn insert_stored(&self, key: &K, val_off: u64) -> Result<bool, SharedError> {
        (&key).with_archived(|kb| {
            let _held = self.lock_write()?;
            let hash = fnv1a(kb);
            let old = self.place(kb, hash, val_off)?;
            drop(_held);
            if let Some(old) = old {
                self.core.free(old);
            }
            Ok(old.is_some())
        })?
    }

    /// Puts the value into `kb`'s bucket (lock held); returns the replaced
    /// value block, if any.
    fn place(&self, kb: &[u8], hash: u64, val_off: u64) -> Result<Option<u64>, SharedError> {
        let h = self.core.header();
        match self.probe(kb, hash)? {
            Probe::Found(i) => {
                let b = &self.buckets()?[i];
                super::pause_point("map");
                // SYNC: Release publishes the value block (length and
                // archive, written before); readers load it with Acquire.
                let old = b.value.swap(val_off, Ordering::AcqRel);
                h.version.fetch_add(1, Ordering::Release);
                Ok(Some(old))
            }
            Probe::Vacant(slot) => {
                let n = h.len.load(Ordering::Relaxed);
                let cap = self.buckets()?.len() as u64;
                let slot = match slot {
                    Some(i) if (n + 1) * 10 <= cap * 7 => i,
                    _ => {
                        self.grow()?;
                        match self.probe(kb, hash)? {
                            Probe::Vacant(Some(i)) => i,
                            _ => return Err(SegmentError::Corrupt("map table full after growing").into()),
                        }
                    }
                };
                let key_block = super::store_bytes(&self.core.seg, kb)?;
                let b = &self.buckets()?[slot];
                b.hash.store(hash, Ordering::Relaxed);
                b.value.store(val_off, Ordering::Relaxed);
                // The count changes beside the entry: redone if we die here.
                h.pending.store(1, Ordering::Relaxed);
                // SYNC: the key is published last (Release): a bucket with a
                // key is whole, its key and value blocks included.
                b.key.store(key_block, Ordering::Release);
                super::pause_point("map-insert");
                h.len.store(n + 1, Ordering::Release);
                h.pending.store(0, Ordering::Release);
                h.version.fetch_add(1, Ordering::Release);
                Ok(None)
            }
        }
    }

    /// Reads the value of `key` in place (no copy) under the map's lock.
    pub fn get<'k>(&self, key: impl AsKey<K> + 'k) -> Result<Option<Ref<'_, V>>, SharedError> {
        key.with_archived(|kb| {
            let held = self.core.lock(true)?;
            let buckets = self.buckets()?;
            match Self::probe_in(&self.core, buckets, kb, fnv1a(kb))? {
                Probe::Found(i) => {
                    let bytes = self.core.bytes(buckets[i].value.load(Ordering::Acquire))?;
                    Ok(Some(Ref { _held: held, value: access::<V>(bytes)? }))
                }
                Probe::Vacant(_) => Ok(None),
            }
        })?
    }

    /// Whether `key` has a value.
    pub fn contains_key<'k>(&self, key: impl AsKey<K> + 'k) -> Result<bool, SharedError> {
        key.with_archived(|kb| {
            let _held = self.core.lock(true)?;
            Ok(matches!(Self::probe_in(&self.core, self.buckets()?, kb, fnv1a(kb))?, Probe::Found(_)))
        })?
    }

    /// Removes `key`; returns its value, if it had one.
    pub fn remove<'k>(&self, key: impl AsKey<K> + 'k) -> Result<Option<V>, SharedError> {
        key.with_archived(|kb| {
            let (value, blocks) = {
                let _held = self.lock_write()?;
                let Probe::Found(i) = self.probe(kb, fnv1a(kb))? else { return Ok(None) };
                let b = &self.buckets()?[i];
                let val_off = b.value.load(Ordering::Acquire);
                let value = decode::<V>(self.core.bytes(val_off)?)?;
                let h = self.core.header();
                h.pending.store(1, Ordering::Relaxed);
                // The one store that removes the entry.
                let key_off = b.key.swap(TOMBSTONE, Ordering::AcqRel);
                h.len.fetch_sub(1, Ordering::AcqRel);
                h.pending.store(0, Ordering::Release);
                h.version.fetch_add(1, Ordering::Release);
                (value, [key_off, val_off])
            };
            for off in blocks {
                self.core.free(off);
            }
            Ok(Some(value))
        })?
    }

    /// Atomically replaces the value of `key` with `f(old value)` (`None` when
    /// absent) and returns the new value. No other process reads or writes the
    /// map while `f` runs.
    pub fn update<'k>(&self, key: impl AsKey<K> + 'k, f: impl FnOnce(Option<V>) -> V) -> Result<V, SharedError>
    where
        V: Clone,
    {
        key.with_archived(|kb| {
            let held = self.lock_write()?;
            let hash = fnv1a(kb);
            let old = match self.probe(kb, hash)? {
                Probe::Found(i) => {
                    let b = &self.buckets()?[i];
                    Some(decode::<V>(self.core.bytes(b.value.load(Ordering::Acquire))?)?)
                }
                Probe::Vacant(_) => None,
            };
            let new = f(old);
            let val_off = self.core.store(&new)?;
            match self.place(kb, hash, val_off) {
                Ok(replaced) => {
                    drop(held);
                    if let Some(old) = replaced {
                        self.core.free(old);
                    }
                    Ok(new)
                }
                Err(e) => {
                    drop(held);
                    self.core.free(val_off);
                    Err(e)
                }
            }
        })?
    }

    /// Copies every entry out (in table order) under one hold of the lock.
    pub fn entries(&self) -> Result<Vec<(K, V)>, SharedError> {
        let _held = self.core.lock(true)?;
        let mut out = Vec::with_capacity(self.len());
        for b in self.buckets()? {
            let key = b.key.load(Ordering::Acquire);
            if key == 0 || key == TOMBSTONE {
                continue;
            }
            let k = decode::<K>(self.core.bytes(key)?)?;
            let v = decode::<V>(self.core.bytes(b.value.load(Ordering::Acquire))?)?;
            out.push((k, v));
        }
        Ok(out)
    }

    /// The keys, copied out.
    pub fn keys(&self) -> Result<Vec<K>, SharedError> {
        Ok(self.entries()?.into_iter().map(|(k, _)| k).collect())
    }

    /// A snapshot of the whole map as one archive of `Vec<(K, V)>`: bytes any
    /// process or host can read back with [`SharedMap::from_snapshot`] or
    /// `shmpool::codec::decode` (XME's Monitor marshalling).
    pub fn to_bytes(&self) -> Result<Vec<u8>, SharedError>
    where
        Vec<(K, V)>: Message,
    {
        let entries = self.entries()?;
        let len = codec::encoded_len(&entries)?;
        let mut buf = vec![0u128; len.div_ceil(16)];
        // SAFETY: u128 has no padding; the view covers the vector exactly.
        let bytes = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 16) };
        let n = codec::encode_into(&entries, bytes)?;
        Ok(bytes[..n].to_vec())
    }

    /// Reads back a [`SharedMap::to_bytes`] snapshot (any alignment).
    pub fn from_snapshot(bytes: &[u8]) -> Result<Vec<(K, V)>, SharedError>
    where
        Vec<(K, V)>: Message,
    {
        let mut buf = vec![0u128; bytes.len().div_ceil(16)];
        // SAFETY: u128 has no padding; the view covers the vector exactly.
        let aligned = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 16) };
        aligned[..bytes.len()].copy_from_slice(bytes);
        decode::<Vec<(K, V)>>(&aligned[..bytes.len()])
    }

    /// Inserts every entry of a snapshot.
    pub fn extend_from_snapshot(&self, bytes: &[u8]) -> Result<(), SharedError>
    where
        Vec<(K, V)>: Message,
    {
        for (k, v) in Self::from_snapshot(bytes)? {
            self.insert(&k, &v)?;
        }
        Ok(())
    }

    super::container_common!();

    /// The map's name in its segment.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// Takes the lock to write, first recounting the entries if a writer
    /// died between an entry's store and the count's.
    fn lock_write(&self) -> Result<super::Held<'_>, SharedError> {
        let held = self.core.lock(false)?;
        let h = self.core.header();
        if h.pending.load(Ordering::Acquire) != 0 {
            let live =
                self.buckets()?.iter().filter(|b| !matches!(b.key.load(Ordering::Relaxed), 0 | TOMBSTONE)).count();
            h.len.store(live as u64, Ordering::Release);
            h.pending.store(0, Ordering::Release);
            h.version.fetch_add(1, Ordering::Release);
        }
        Ok(held)
    }

    /// The buckets of the current table (lock held); their number is kept in
    /// the table block, so a table and its capacity are published together.
    fn buckets(&self) -> Result<&[Bucket], SharedError> {
        let buckets = self.core.table::<Bucket>(self.core.header().table.load(Ordering::Acquire))?;
        if !buckets.is_empty() && !buckets.len().is_power_of_two() {
            return Err(SegmentError::Corrupt("map capacity").into());
        }
        Ok(buckets)
    }

    /// Looks for `kb` (lock held).
    fn probe(&self, kb: &[u8], hash: u64) -> Result<Probe, SharedError> {
        Self::probe_in(&self.core, self.buckets()?, kb, hash)
    }

    /// Looks for `kb` in `buckets`, the current table (lock held).
    fn probe_in(core: &Core, buckets: &[Bucket], kb: &[u8], hash: u64) -> Result<Probe, SharedError> {
        if buckets.is_empty() {
            return Ok(Probe::Vacant(None));
        }
        let mask = buckets.len() - 1;
        let mut free = None;
        for step in 0..buckets.len() {
            let i = (hash as usize).wrapping_add(step) & mask;
            let b = &buckets[i];
            match b.key.load(Ordering::Acquire) {
                0 => return Ok(Probe::Vacant(free.or(Some(i)))),
                TOMBSTONE => free = free.or(Some(i)),
                key => {
                    if b.hash.load(Ordering::Relaxed) == hash && core.bytes(key)? == kb {
                        return Ok(Probe::Found(i));
                    }
                }
            }
        }
        Ok(Probe::Vacant(free))
    }

    /// Doubles the table (lock held), dropping tombstones.
    fn grow(&self) -> Result<(), SharedError> {
        let h = self.core.header();
        let old = self.buckets()?;
        let new_cap = (old.len() as u64 * 2).max(16);
        let new = self.core.new_table::<Bucket>(new_cap)?;
        let fresh = self.core.table::<Bucket>(new)?;
        let mask = new_cap as usize - 1;
        for b in old {
            let key = b.key.load(Ordering::Relaxed);
            if key == 0 || key == TOMBSTONE {
                continue;
            }
            let hash = b.hash.load(Ordering::Relaxed);
            let mut i = hash as usize & mask;
            while fresh[i].key.load(Ordering::Relaxed) != 0 {
                i = (i + 1) & mask;
            }
            let d = &fresh[i];
            d.hash.store(hash, Ordering::Relaxed);
            d.value.store(b.value.load(Ordering::Relaxed), Ordering::Relaxed);
            d.key.store(key, Ordering::Relaxed);
        }
        super::pause_point("map-grow");
        // SYNC: one Release store publishes the new table with its capacity
        // (in the block) and every bucket written above.
        let old = h.table.swap(new, Ordering::AcqRel);
        self.core.free(old);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `&str` key cache: alternating keys, a key longer than the
    /// scratch buffer, and a lookup inside an `update` closure (which finds
    /// the cache busy and archives its key afresh) all find the right entry.
    #[test]
    fn str_lookups_through_the_key_cache() {
        let seg = Segment::anonymous(4 << 20).unwrap();
        let map = seg.map::<String, u64>("cache", LockKind::RwLock).unwrap();
        let long = "x".repeat(3000);
        for (i, k) in ["a", "b", long.as_str()].into_iter().enumerate() {
            map.insert(&k.to_owned(), &(i as u64)).unwrap();
        }
        for _ in 0..3 {
            for (i, k) in ["a", "b", long.as_str(), "a", "a", "missing"].into_iter().enumerate() {
                let want = [Some(0), Some(1), Some(2), Some(0), Some(0), None][i];
                assert_eq!(map.get(k).unwrap().map(|v| v.to_native()), want, "key {}", &k[..k.len().min(8)]);
            }
        }
        let other = seg.map::<String, u64>("other", LockKind::Mutex).unwrap();
        other.insert(&"b".to_owned(), &40).unwrap();
        let new = map.update("a", |old| old.unwrap() + other.get("b").unwrap().unwrap().to_native() + 2).unwrap();
        assert_eq!(new, 42);
        assert_eq!(map.get("a").unwrap().unwrap().to_native(), 42);
        assert!(map.contains_key("b").unwrap());
        assert!(!map.contains_key("c").unwrap());
    }
}
