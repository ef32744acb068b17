//! Buffer handles used as an attacker would: opened twice (the same
//! handle, a deserialised copy, from two processes), or in another segment.
//! A writable handle is a move: safe code never gets two writers.

use shmpool::{BufferHandle, Pool, Segment, SharedError};

/// Opens a handle in a worker: "writable", "read-only", or the error.
fn try_open(handle: BufferHandle) -> String {
    let seg = shmpool::pool_segment().unwrap();
    match handle.open(&seg) {
        Ok(buf) if buf.is_writable() => "writable".into(),
        Ok(_) => "read-only".into(),
        Err(SharedError::HandleUsed) => "used".into(),
        Err(e) => e.to_string(),
    }
}

/// A copy of `handle` as another process gets it: archived and deserialised.
fn copy_of(handle: &BufferHandle) -> BufferHandle {
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(handle).unwrap();
    rkyv::from_bytes::<BufferHandle, rkyv::rancor::Error>(&bytes).unwrap()
}

#[test]
fn a_writable_handle_opens_once() {
    let seg = Segment::anonymous(8 << 20).unwrap();
    let buf = seg.buffer(4096).unwrap();
    let handle = buf.into_handle().unwrap();
    assert!(handle.is_writable());
    let copy = copy_of(&handle);
    let mut first = handle.open(&seg).unwrap();
    assert!(first.is_writable());
    first.as_mut_slice().unwrap().fill(9);
    assert!(matches!(handle.open(&seg), Err(SharedError::HandleUsed)), "the same handle twice");
    assert!(matches!(copy.open(&seg), Err(SharedError::HandleUsed)), "a deserialised copy of it");
    // The refused opens took no reference: the buffer goes with its one holder.
    drop(first);
    assert_eq!(seg.live_buffers().unwrap(), 0);
}

#[test]
fn a_read_only_handle_opens_once_and_each_share_is_its_own() {
    let seg = Segment::anonymous(8 << 20).unwrap();
    let mut buf = seg.buffer(4096).unwrap();
    let h1 = buf.share().unwrap();
    let h2 = buf.share().unwrap();
    assert!(!h1.is_writable());
    let copy = copy_of(&h1);
    let r1 = h1.open(&seg).unwrap();
    assert!(!r1.is_writable());
    assert!(matches!(h1.open(&seg), Err(SharedError::HandleUsed)));
    assert!(matches!(copy.open(&seg), Err(SharedError::HandleUsed)));
    let r2 = h2.open(&seg).unwrap();
    assert!(!buf.reclaim_write(), "two readers are out");
    drop((r1, r2));
    assert!(buf.reclaim_write(), "both readers are done and no hand-off is in flight");
}

#[test]
fn two_processes_cannot_both_open_one_handoff() {
    let pool = Pool::builder().workers(1).on_worker_death(shmpool::OnWorkerDeath::Report).build().unwrap();
    let seg = pool.segment().clone();
    let mut buf = seg.buffer(1 << 16).unwrap();
    let handle = buf.share().unwrap();
    let copy = copy_of(&handle);
    assert_eq!(pool.submit(try_open, handle).unwrap().wait().unwrap(), "read-only");
    // The buffer is still live (we hold it): the copy is refused as used.
    assert_eq!(pool.submit(try_open, copy).unwrap().wait().unwrap(), "used");
    assert!(buf.reclaim_write(), "the refused open left no reference behind");
}

#[test]
fn a_handle_from_another_segment_is_refused() {
    let a = Segment::anonymous(8 << 20).unwrap();
    let b = Segment::anonymous(8 << 20).unwrap();
    // Same layout, same allocation order: the same offset and generation.
    let in_a = a.buffer(1000).unwrap();
    let in_b = b.buffer(1000).unwrap();
    let from_a = in_a.into_handle().unwrap();
    assert!(matches!(from_a.open(&b), Err(SharedError::ForeignHandle)));
    let empty = Segment::anonymous(8 << 20).unwrap();
    assert!(matches!(from_a.open(&empty), Err(SharedError::ForeignHandle)));
    // Still opens where it belongs.
    assert!(from_a.open(&a).unwrap().is_writable());
    drop(in_b);
}
