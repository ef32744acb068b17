//! Property tests over sizes for every path that carries a user value through
//! the shared containers and buffers: lengths from 0 past the ring slot sizes
//! (256, 1024) and across the arena's size classes (64 B to a few hundred KiB,
//! each straddled by a few bytes either way), random bytes and strings, every
//! lock kind. A value comes back intact, or the call fails with a typed error
//! and the container is unchanged; nothing panics.

#[path = "common/values.rs"]
mod values;
use proptest::prelude::*;
use shmpool::{LockKind, Segment, SegmentError, SharedError};
use values::{bytes, lengths, text};

const KINDS: [LockKind; 4] = [LockKind::Mutex, LockKind::RwLock, LockKind::Spin, LockKind::Auth];

fn segment() -> Segment {
    Segment::anonymous(48 << 20).unwrap()
}

/// A failed write is acceptable only as a typed refusal for lack of room.
fn refused(e: &SharedError) -> bool {
    matches!(e, SharedError::Segment(SegmentError::OutOfMemory { .. }))
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_object_gives_back_what_was_set(lens in prop::collection::vec(lengths(), 1..4), seed: u64) {
        let seg = segment();
        for kind in KINDS {
            let name = format!("bytes-{kind:?}");
            let first = bytes(lens[0], seed);
            let obj = seg.object::<Vec<u8>>(&name, kind, &first).unwrap();
            prop_assert_eq!(obj.load().unwrap(), first.clone());
            let mut current = first;
            for (i, &len) in lens.iter().enumerate().skip(1) {
                let v = bytes(len, seed.wrapping_add(i as u64));
                match obj.set(&v) {
                    Ok(()) => current = v,
                    Err(e) => prop_assert!(refused(&e), "{kind:?}: {e}"),
                }
                let got = obj.get().unwrap();
                prop_assert_eq!(got.as_slice(), current.as_slice());
                drop(got);
                prop_assert_eq!(obj.load().unwrap(), current.clone());
            }
            let text = text(*lens.last().unwrap(), seed);
            let sobj = seg.object::<String>(&format!("text-{kind:?}"), kind, &String::new()).unwrap();
            sobj.set(&text).unwrap();
            let got = sobj.get().unwrap();
            prop_assert_eq!(got.as_str(), text.as_str());
            drop(got);
            let updated = sobj.update(|mut s| { s.push('!'); s }).unwrap();
            prop_assert_eq!(sobj.load().unwrap(), updated);
        }
    }

    #[test]
    fn a_list_gives_back_what_was_pushed_and_set(
        lens in prop::collection::vec(lengths(), 1..6),
        set_at in any::<prop::sample::Index>(),
        set_len in lengths(),
        seed: u64,
    ) {
        let seg = segment();
        for kind in KINDS {
            let list = seg.list::<Vec<u8>>(&format!("bytes-{kind:?}"), kind).unwrap();
            let mut expect: Vec<Vec<u8>> = Vec::new();
            for (i, &len) in lens.iter().enumerate() {
                let v = bytes(len, seed.wrapping_add(i as u64));
                match list.push(&v) {
                    Ok(at) => {
                        prop_assert_eq!(at, expect.len());
                        expect.push(v);
                    }
                    Err(e) => prop_assert!(refused(&e), "{kind:?}: {e}"),
                }
            }
            if !expect.is_empty() {
                let i = set_at.index(expect.len());
                let v = bytes(set_len, !seed);
                match list.set(i, &v) {
                    Ok(()) => expect[i] = v,
                    Err(e) => prop_assert!(refused(&e), "{kind:?}: {e}"),
                }
            }
            prop_assert_eq!(list.len(), expect.len());
            for (i, v) in expect.iter().enumerate() {
                let got = list.get(i).unwrap();
                prop_assert_eq!(got.as_slice(), v.as_slice());
                drop(got);
            }
            let past = list.get(expect.len()).map(|_| ());
            let out_of_range = matches!(past, Err(SharedError::OutOfRange { .. }));
            prop_assert!(out_of_range, "get past the end: {:?}", past);
            prop_assert_eq!(list.to_vec().unwrap(), expect.clone());
            if !expect.is_empty() {
                let i = set_at.index(expect.len());
                prop_assert_eq!(list.remove(i).unwrap(), expect.remove(i));
                prop_assert_eq!(list.to_vec().unwrap(), expect.clone());
            }

            let texts = seg.list::<String>(&format!("text-{kind:?}"), kind).unwrap();
            let words: Vec<String> = lens.iter().enumerate().map(|(i, &l)| text(l, seed ^ i as u64)).collect();
            for w in &words {
                texts.push(w).unwrap();
            }
            prop_assert_eq!(texts.to_vec().unwrap(), words);
        }
    }

    #[test]
    fn a_map_gives_back_what_was_inserted(
        entries in prop::collection::vec((0usize..300, lengths()), 1..6),
        seed: u64,
    ) {
        let seg = segment();
        for kind in KINDS {
            let map = seg.map::<String, Vec<u8>>(&format!("map-{kind:?}"), kind).unwrap();
            let mut expect = std::collections::HashMap::new();
            for (i, &(key_len, len)) in entries.iter().enumerate() {
                let key = text(key_len, seed ^ (i as u64 % 3)); // some keys repeat
                let v = bytes(len, seed.wrapping_add(i as u64));
                match map.insert(&key, &v) {
                    Ok(replaced) => prop_assert_eq!(replaced, expect.insert(key, v).is_some()),
                    Err(e) => prop_assert!(refused(&e), "{kind:?}: {e}"),
                }
            }
            prop_assert_eq!(map.len(), expect.len());
            for (k, v) in &expect {
                let got = map.get(k.as_str()).unwrap();
                prop_assert_eq!(got.as_ref().map(|r| r.as_slice()), Some(v.as_slice()));
            }
            let mut all = map.entries().unwrap();
            all.sort();
            let mut want: Vec<_> = expect.clone().into_iter().collect();
            want.sort();
            prop_assert_eq!(all, want);
            for (k, v) in &expect {
                let removed = map.remove(k.as_str()).unwrap();
                prop_assert_eq!(removed.as_ref(), Some(v));
                prop_assert!(map.get(k.as_str()).unwrap().is_none());
            }
            prop_assert!(map.is_empty());
        }
    }

    #[test]
    fn a_buffer_gives_back_what_was_written(len in lengths(), seed: u64) {
        let seg = segment();
        let content = bytes(len, seed);
        let mut buf = seg.buffer(len as u64).unwrap();
        prop_assert_eq!(buf.len(), len);
        prop_assert!(buf.as_slice().iter().all(|&b| b == 0), "a new buffer is zeroed");
        buf.as_mut_slice().unwrap().copy_from_slice(&content);

        // Read-only hand-off: the reader sees the bytes where they lie.
        let handle = buf.share().unwrap();
        prop_assert_eq!(handle.len(), len);
        let reader = handle.open(&seg).unwrap();
        prop_assert!(!reader.is_writable());
        prop_assert_eq!(reader.as_slice(), content.as_slice());
        prop_assert!(matches!(handle.open(&seg), Err(SharedError::HandleUsed)));
        drop(reader);

        // Ownership moves: the receiver writes, the bytes are the same memory.
        prop_assert!(buf.reclaim_write());
        let moved = buf.into_handle().unwrap();
        let mut owner = moved.open(&seg).unwrap();
        prop_assert_eq!(owner.as_slice(), content.as_slice());
        let flipped: Vec<u8> = content.iter().map(|b| !b).collect();
        owner.as_mut_slice().unwrap().copy_from_slice(&flipped);
        let back = owner.into_handle().unwrap().open(&seg).unwrap();
        prop_assert_eq!(back.as_slice(), flipped.as_slice());
        drop(back);
        prop_assert_eq!(seg.live_buffers().unwrap(), 0);
    }
}
