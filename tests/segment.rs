//! Opening segments: named create/open, and corrupt, foreign, truncated or
//! other-version segments giving typed errors.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

use shmpool::{Segment, SegmentError};

fn shm_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/shmpool.{name}"))
}

fn unique(tag: &str) -> String {
    format!("segtest-{tag}-{}", std::process::id())
}

#[test]
fn named_segment_is_shared_and_unlinked_by_its_creator() {
    let name = unique("shared");
    let a = Segment::create(&name, 1 << 20).unwrap();
    assert!(shm_path(&name).exists());
    assert!(matches!(Segment::create(&name, 1 << 20), Err(SegmentError::AlreadyExists(_))));
    let b = Segment::open(&name).unwrap();
    let block = a.alloc(64).unwrap();
    let (named, created) = a.named("cell", 9, 1, 8, |_| Ok(())).unwrap();
    assert!(created);
    let (seen, created) = b.named("cell", 9, 1, 8, |_| Ok(())).unwrap();
    assert!(!created);
    assert_eq!(named, seen);
    assert_ne!(block.offset, named.offset);
    assert_eq!(b.creator_pid(), std::process::id());
    drop(b);
    drop(a);
    assert!(!shm_path(&name).exists(), "creator's drop unlinks the name");
    assert!(matches!(Segment::open(&name), Err(SegmentError::NotFound(_))));
}

/// Writes `bytes` at `at` into an existing named segment's file.
fn scribble(name: &str, at: u64, bytes: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(shm_path(name)).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn corrupt_magic_is_not_a_segment() {
    let name = unique("magic");
    let _owner = Segment::create(&name, 1 << 20).unwrap();
    scribble(&name, 0, b"garbage!");
    assert!(matches!(Segment::open(&name), Err(SegmentError::NotASegment)));
}

#[test]
fn other_layout_version_is_refused() {
    let name = unique("version");
    let _owner = Segment::create(&name, 1 << 20).unwrap();
    scribble(&name, 8, &99u32.to_ne_bytes());
    match Segment::open(&name) {
        Err(SegmentError::VersionMismatch { found: 99, expected }) => {
            assert_eq!(expected, shmpool::segment::LAYOUT_VERSION)
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
}

#[test]
fn truncated_segment_is_refused() {
    let name = unique("trunc");
    let _owner = Segment::create(&name, 1 << 20).unwrap();
    let f = OpenOptions::new().write(true).open(shm_path(&name)).unwrap();
    f.set_len(100 << 10).unwrap();
    assert!(
        matches!(Segment::open(&name), Err(SegmentError::Truncated { expected, actual }) if expected == 1 << 20 && actual == 100 << 10)
    );
    f.set_len(16).unwrap();
    assert!(matches!(Segment::open(&name), Err(SegmentError::Truncated { .. })));
}

#[test]
fn corrupt_arena_bounds_are_refused() {
    let name = unique("arena");
    let _owner = Segment::create(&name, 1 << 20).unwrap();
    // arena_end lies at byte 40 of the header (magic 8, version 4, header_len 4,
    // size 8, creator 4, state 4, arena_start 8).
    scribble(&name, 40, &u64::MAX.to_ne_bytes());
    assert!(matches!(Segment::open(&name), Err(SegmentError::Corrupt(_))));
}

#[test]
fn a_foreign_file_is_not_a_segment() {
    let name = unique("foreign");
    let path = shm_path(&name);
    std::fs::write(&path, vec![0xAB; 64 << 10]).unwrap();
    let r = Segment::open(&name);
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(r, Err(SegmentError::NotASegment)), "{r:?}");
}

#[test]
fn invalid_names_are_refused() {
    for bad in ["", "a/b", "white space", &"x".repeat(65)] {
        assert!(matches!(Segment::create(bad, 1 << 20), Err(SegmentError::InvalidName(_))), "{bad:?}");
    }
}

#[test]
fn a_panicking_init_releases_the_directory_lock() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let given = std::cell::Cell::new(None);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        seg.named("boom", 1, 1, 64, |b| {
            given.set(Some(b));
            panic!("init fails")
        })
        .unwrap();
    }));
    assert!(panicked.is_err(), "init's panic reaches the caller");
    // The lock is free again: the same name is created afresh, and another
    // name alongside it, each returning rather than timing out.
    let (block, created) = seg.named("boom", 1, 1, 64, |_| Ok(())).unwrap();
    assert!(created, "the panicking init published nothing");
    assert!(block.capacity >= 64);
    // The block the panicking init was given went back to the arena and was
    // reused.
    assert_eq!(Some(block), given.get());
    let (_, created) = seg.named("other", 2, 2, 8, |_| Ok(())).unwrap();
    assert!(created);
    assert!(seg.lookup("boom").unwrap().is_some());
}
