//! Zero-copy buffers: handed to workers by a 48-byte handle, read and written
//! where they lie, freed with their last holder, also when a holder dies.

use std::time::Duration;

use shmpool::{BufferHandle, Pool, Segment, SharedError, TaskError};

fn sum(handle: BufferHandle) -> u64 {
    let seg = shmpool::pool_segment().unwrap();
    let buf = handle.open(&seg).unwrap();
    assert!(!buf.is_writable());
    buf.as_slice().iter().map(|&b| b as u64).sum()
}

/// Receives ownership, writes in place, and gives the buffer back.
fn fill(args: (BufferHandle, u8)) -> BufferHandle {
    let seg = shmpool::pool_segment().unwrap();
    let mut buf = args.0.open(&seg).unwrap();
    buf.as_mut_slice().expect("ownership moved with the handle").fill(args.1);
    buf.into_handle().unwrap()
}

/// Opens the buffer and keeps it until the process is killed.
fn hold_and_die(handle: BufferHandle) -> u64 {
    let seg = shmpool::pool_segment().unwrap();
    let buf = handle.open(&seg).unwrap();
    std::mem::forget(buf);
    // SAFETY: sending a signal to ourselves.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!()
}

#[test]
fn a_handoff_sends_a_handle_not_the_bytes() {
    let pool = Pool::builder().workers(1).on_worker_death(shmpool::OnWorkerDeath::Report).build().unwrap();
    let seg = pool.segment().clone();
    let mut buf = seg.buffer(64 << 20).unwrap();
    for (i, b) in buf.as_mut_slice().unwrap().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let expect: u64 = buf.as_slice().iter().map(|&b| b as u64).sum();
    let handle = buf.share().unwrap();
    assert!(!buf.is_writable(), "sharing gives up the right to write");
    // What travels is this small archive, whatever the buffer's size.
    let archived = rkyv::to_bytes::<rkyv::rancor::Error>(&handle).unwrap();
    assert!(archived.len() <= 48, "handle archive is {} bytes", archived.len());
    assert_eq!(pool.submit(sum, handle).unwrap().wait(), Ok(expect));

    // Ownership moves to the worker, which writes in place; we see its writes
    // in the very same memory.
    let address = buf.as_slice().as_ptr();
    drop(buf);
    let mut owned = seg.buffer(1 << 20).unwrap();
    owned.as_mut_slice().unwrap().fill(1);
    let back = pool.submit(fill, (owned.into_handle().unwrap(), 7u8)).unwrap().wait().unwrap();
    let mine = back.open(&seg).unwrap();
    assert!(mine.is_writable());
    assert!(mine.as_slice().iter().all(|&b| b == 7));
    let _ = address;
}

#[test]
fn a_buffer_is_freed_with_its_last_holder() {
    let pool = Pool::builder().workers(1).on_worker_death(shmpool::OnWorkerDeath::Report).build().unwrap();
    let seg = pool.segment().clone();
    let before = seg.live_buffers().unwrap();
    let mut buf = seg.buffer(1 << 20).unwrap();
    let h1 = buf.share().unwrap();
    let h2 = buf.share().unwrap();
    assert_eq!(seg.live_buffers().unwrap(), before + 1);
    assert_eq!(pool.submit(sum, h1).unwrap().wait(), Ok(0));
    drop(buf);
    // One handle is still in flight: the buffer lives until it is opened.
    assert_eq!(seg.live_buffers().unwrap(), before + 1);
    assert_eq!(pool.submit(sum, h2).unwrap().wait(), Ok(0));
    assert_eq!(seg.live_buffers().unwrap(), before, "freed when the last holder dropped it");
    // Its memory is reused.
    let again = seg.buffer(1 << 20).unwrap();
    drop(again);
    assert_eq!(seg.live_buffers().unwrap(), before);
}

#[test]
fn a_buffer_held_by_a_killed_process_is_reclaimed() {
    let pool = Pool::builder().workers(1).on_worker_death(shmpool::OnWorkerDeath::Report).build().unwrap();
    let seg = pool.segment().clone();
    let before = seg.live_buffers().unwrap();
    let mut buf = seg.buffer(4 << 20).unwrap();
    let handle = buf.share().unwrap();
    drop(buf);
    match pool.submit(hold_and_die, handle).unwrap().wait() {
        Err(TaskError::WorkerDied { .. }) => {}
        other => panic!("expected the holder to die, got {other:?}"),
    }
    // The pool reclaimed the dead worker's references when it reaped it.
    let mut left = seg.live_buffers().unwrap();
    for _ in 0..100 {
        if left == before {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        seg.reclaim_buffers().unwrap();
        left = seg.live_buffers().unwrap();
    }
    assert_eq!(left, before, "the dead holder's buffer was not freed");
}

#[test]
fn a_stale_handle_is_refused() {
    let seg = shmpool::Segment::anonymous(8 << 20).unwrap();
    let buf = seg.buffer(1000).unwrap();
    let handle = buf.into_handle().unwrap();
    let opened = handle.open(&seg).unwrap();
    drop(opened);
    assert_eq!(seg.live_buffers().unwrap(), 0);
    assert!(handle.open(&seg).is_err(), "a handle to a freed buffer must not open");
}

#[test]
fn the_owner_writes_again_once_every_reader_is_done() {
    let pool = Pool::builder().workers(1).on_worker_death(shmpool::OnWorkerDeath::Report).build().unwrap();
    let seg = pool.segment().clone();
    let mut buf = seg.buffer(4096).unwrap();
    buf.as_mut_slice().unwrap().fill(2);
    let handle = buf.share().unwrap();
    assert!(!buf.reclaim_write(), "a shared copy is still out");
    assert_eq!(pool.submit(sum, handle).unwrap().wait(), Ok(2 * 4096));
    assert!(buf.reclaim_write(), "the reader dropped its handle");
    buf.as_mut_slice().unwrap().fill(3);
    assert_eq!(pool.submit(sum, buf.share().unwrap()).unwrap().wait(), Ok(3 * 4096));
}

/// Compiles only if `T` is not `Clone` (the second impl makes the call
/// ambiguous when it is).
trait NotClone<A> {
    fn check() {}
}
impl<T> NotClone<()> for T {}
impl<T: Clone> NotClone<u8> for T {}

#[test]
fn a_handle_is_not_copied() {
    <BufferHandle as NotClone<_>>::check();
}

#[test]
fn hand_offs_in_flight_are_bounded_with_a_typed_error() {
    let seg = Segment::anonymous(8 << 20).unwrap();
    let mut buf = seg.buffer(64).unwrap();
    let mut handles = Vec::new();
    let limit = loop {
        match buf.share() {
            Ok(h) => handles.push(h),
            Err(SharedError::TooManyHandoffs { limit }) => break limit,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(handles.len(), limit);
    // Opening one frees its place for another.
    let r = handles.pop().unwrap().open(&seg).unwrap();
    handles.push(buf.share().unwrap());
    drop(r);
    for h in handles {
        drop(h.open(&seg).unwrap());
    }
    assert!(buf.reclaim_write());
}
