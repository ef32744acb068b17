//! A sequence of operations on a ring, the arena and the locks of a fresh
//! segment, checked step by step against a simple in-memory model:
//!
//! * ring (capacity 8, payload 48): a FIFO `VecDeque` of the same capacity.
//!   A push succeeds iff the model is not full (and the message fits); a pop
//!   returns the model's front byte for byte; after `close`, pushes fail and
//!   pops drain what is queued, then report `Closed`.
//! * arena: live blocks are 16-byte aligned, at least as large as asked,
//!   inside the segment, disjoint from each other and from the ring; each is
//!   filled with its own byte, checked intact before it is freed. Only live
//!   blocks are freed, each once.
//! * locks (one process): a held mutex or spin lock makes `try_lock` fail;
//!   the read-write lock admits readers iff no writer (up to its reader
//!   slots), and a writer iff nobody holds it. Guards are kept in `Vec`s and
//!   dropped on request.
//!
//! Input: a stream of op bytes (`op % 16`), some followed by argument bytes;
//! a missing argument reads as 0. Any mismatch panics.
#![no_main]

use std::collections::{BTreeMap, VecDeque};

use libfuzzer_sys::fuzz_target;
use shmpool::ring::{self, Ring, RingError};
use shmpool::sync::{LockError, LockGuard, READER_SLOTS};
use shmpool::{Segment, SegmentError};

const SEG_SIZE: u64 = 1 << 20;
const CAP: u32 = 8;
const PAYLOAD: u32 = 48;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn byte(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
}

/// The content of the `seq`-th message pushed: distinct from its neighbours.
fn message_byte(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_mul(37).wrapping_add(i as u8).wrapping_add((seq >> 8) as u8)
}

fn expect_would_block<G>(r: Result<G, LockError<G>>, what: &str) {
    match r {
        Err(LockError::WouldBlock) => {}
        Err(e) => panic!("{what}: expected WouldBlock, got {e:?}"),
        Ok(_) => panic!("{what}: succeeded, but the model says it is held"),
    }
}

fn expect_guard<'a>(r: Result<LockGuard<'a>, LockError<LockGuard<'a>>>, what: &str) -> LockGuard<'a> {
    match r {
        Ok(g) => g,
        Err(e) => panic!("{what}: expected success, got {e:?}"),
    }
}

struct LiveBlock {
    capacity: u64,
    fill: u8,
}

fn block_bytes(seg: &Segment, offset: u64, capacity: u64) -> &mut [u8] {
    let p = seg.ptr(offset, capacity).expect("live block out of the segment");
    // SAFETY: a block this process allocated and has not freed, in bounds
    // (checked by ptr); single-threaded, and the slice is dropped before the
    // block is freed or the segment unmapped (the borrow of `seg`).
    unsafe { std::slice::from_raw_parts_mut(p, capacity as usize) }
}

fn check_fill(seg: &Segment, offset: u64, b: &LiveBlock) {
    if let Some(i) = block_bytes(seg, offset, b.capacity).iter().position(|&x| x != b.fill) {
        panic!("block at {offset} (capacity {}) was overwritten at +{i}", b.capacity);
    }
}

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let seg = Segment::anonymous(SEG_SIZE).unwrap();
    let ring = Ring::create(&seg, CAP, PAYLOAD).unwrap();
    assert_eq!(ring.capacity(), CAP as usize);
    let payload = ring.payload_capacity();
    assert!(payload >= PAYLOAD as usize);
    // The ring's header and slots, which no arena block may overlap.
    let ring_area = (ring.offset(), ring.offset() + ring::footprint(CAP, PAYLOAD) - 128);
    let mutex = seg.mutex("m").unwrap();
    let rw = seg.rwlock("r").unwrap();
    let spin = seg.spin_lock("s").unwrap();
    let me = std::process::id();

    let mut queue: VecDeque<Vec<u8>> = VecDeque::new();
    let mut closed = false;
    let mut pushed: u64 = 0;
    let mut out = Vec::new();

    let mut blocks: BTreeMap<u64, LiveBlock> = BTreeMap::new();
    let mut allocs: u64 = 0;

    let mut mutex_guards: Vec<LockGuard<'_>> = Vec::new();
    let mut spin_guards: Vec<LockGuard<'_>> = Vec::new();
    let mut readers: Vec<LockGuard<'_>> = Vec::new();
    let mut writer: Vec<LockGuard<'_>> = Vec::new();

    let mut input = Input(data);
    while let Some(op) = input.next() {
        match op % 16 {
            // Push one message; ~1 in 7 lengths is too large for a slot.
            0 => {
                let len = input.byte() as usize % (payload + 8);
                let msg: Vec<u8> = (0..len).map(|i| message_byte(pushed, i)).collect();
                let r = ring.try_push(&msg);
                if len > payload {
                    assert_eq!(r, Err(RingError::TooLarge { len, max: payload }));
                } else if closed {
                    assert_eq!(r, Err(RingError::Closed), "push after close");
                } else if queue.len() == CAP as usize {
                    assert_eq!(r, Err(RingError::WouldBlock), "push into a full ring");
                } else {
                    assert_eq!(r, Ok(()), "push into a ring with {} of {CAP} queued", queue.len());
                    queue.push_back(msg);
                    pushed += 1;
                }
            }
            // Pop one message.
            1 => {
                let r = ring.try_pop(&mut out);
                match queue.pop_front() {
                    Some(front) => {
                        assert_eq!(r, Ok(()), "pop from a ring with {} queued", queue.len() + 1);
                        assert_eq!(out, front, "popped message differs from the model's front");
                    }
                    None if closed => assert_eq!(r, Err(RingError::Closed), "pop from a closed, drained ring"),
                    None => assert_eq!(r, Err(RingError::WouldBlock), "pop from an empty ring"),
                }
            }
            // Push up to `max` messages in one claim, lengths from the input.
            2 => {
                let max = 1 + input.byte() as usize % 11;
                let mut written: Vec<Vec<u8>> = Vec::new();
                let r = ring.try_push_many(max, |i, buf| {
                    assert_eq!(i, written.len(), "push_many slots out of order");
                    assert_eq!(buf.len(), payload, "push_many slot buffer size");
                    let len = input.byte() as usize % (payload + 1);
                    let seq = pushed + i as u64;
                    for (j, b) in buf[..len].iter_mut().enumerate() {
                        *b = message_byte(seq, j);
                    }
                    written.push(buf[..len].to_vec());
                    len
                });
                let free = CAP as usize - queue.len();
                if closed {
                    assert_eq!(r, Err(RingError::Closed), "push_many after close");
                } else if free == 0 {
                    assert_eq!(r, Err(RingError::WouldBlock), "push_many into a full ring");
                } else {
                    let n = max.min(free);
                    assert_eq!(r, Ok(n), "push_many(max {max}) with {free} free slots");
                }
                assert_eq!(written.len(), r.unwrap_or(0), "push_many wrote a different count than it reported");
                pushed += written.len() as u64;
                queue.extend(written);
            }
            // Pop up to `max` messages in one claim.
            3 => {
                let max = 1 + input.byte() as usize % 11;
                let mut got: Vec<Vec<u8>> = Vec::new();
                let r = ring.try_pop_many(max, |bytes| got.push(bytes.to_vec()));
                if queue.is_empty() {
                    let want = if closed { RingError::Closed } else { RingError::WouldBlock };
                    assert_eq!(r, Err(want), "pop_many from an empty ring (closed: {closed})");
                } else {
                    let n = max.min(queue.len());
                    assert_eq!(r, Ok(n), "pop_many(max {max}) with {} queued", queue.len());
                }
                assert_eq!(got.len(), r.unwrap_or(0), "pop_many handed over a different count than it reported");
                for (k, m) in got.into_iter().enumerate() {
                    let front = queue.pop_front().unwrap();
                    assert_eq!(m, front, "pop_many message {k} differs from the model");
                }
            }
            // Close (one time in four: a closed ring ends the ring's story).
            4 => {
                if input.byte() % 4 == 0 {
                    ring.close();
                    closed = true;
                }
            }
            // Allocate: small, or large enough to run the arena dry.
            5 | 6 => {
                let len = if op % 16 == 5 { input.byte() as u64 } else { input.u16() as u64 * 4 };
                match seg.alloc(len) {
                    Ok(b) => {
                        assert_eq!(b.offset % 16, 0, "block payload not 16-byte aligned");
                        assert!(b.capacity >= len, "block of {} bytes for a request of {len}", b.capacity);
                        let end = b.offset.checked_add(b.capacity).expect("block end overflows");
                        assert!(end <= seg.size(), "block [{}, {end}) beyond the segment", b.offset);
                        assert!(
                            end <= ring_area.0 || b.offset >= ring_area.1,
                            "block [{}, {end}) overlaps the ring {ring_area:?}",
                            b.offset
                        );
                        if let Some((&o, prev)) = blocks.range(..=b.offset).next_back() {
                            assert!(o + prev.capacity <= b.offset, "block at {} overlaps live block at {o}", b.offset);
                        }
                        if let Some((&o, _)) = blocks.range(b.offset..).next() {
                            assert!(end <= o, "block [{}, {end}) overlaps live block at {o}", b.offset);
                        }
                        let fill = (allocs as u8).wrapping_mul(101) ^ 0x5a;
                        allocs += 1;
                        block_bytes(&seg, b.offset, b.capacity).fill(fill);
                        blocks.insert(b.offset, LiveBlock { capacity: b.capacity, fill });
                    }
                    Err(SegmentError::OutOfMemory { .. }) => {}
                    Err(e) => panic!("alloc({len}) failed: {e:?}"),
                }
            }
            // Free a live block, chosen by index.
            7 => {
                let k = input.byte() as usize;
                if !blocks.is_empty() {
                    let offset = *blocks.keys().nth(k % blocks.len()).unwrap();
                    let b = blocks.remove(&offset).unwrap();
                    check_fill(&seg, offset, &b);
                    // SAFETY: a live block of this process (the model says
                    // so), freed once; no reference into it is held.
                    let r = unsafe { seg.free(offset) };
                    assert!(r.is_ok(), "free of live block {offset}: {r:?}");
                }
            }
            8 => {
                if mutex_guards.is_empty() {
                    mutex_guards.push(expect_guard(mutex.try_lock(), "mutex try_lock"));
                } else {
                    expect_would_block(mutex.try_lock(), "mutex try_lock while held");
                }
            }
            9 => {
                mutex_guards.pop();
            }
            10 => {
                if writer.is_empty() && readers.len() < READER_SLOTS {
                    readers.push(expect_guard(rw.try_read(), "rwlock try_read"));
                } else {
                    expect_would_block(rw.try_read(), "rwlock try_read");
                }
            }
            11 => {
                if writer.is_empty() && readers.is_empty() {
                    writer.push(expect_guard(rw.try_lock(), "rwlock try_lock"));
                } else {
                    expect_would_block(rw.try_lock(), "rwlock try_lock");
                }
            }
            12 => {
                let k = input.byte() as usize;
                if !readers.is_empty() {
                    let i = k % readers.len();
                    drop(readers.swap_remove(i));
                }
            }
            13 => {
                writer.pop();
            }
            14 => {
                if spin_guards.is_empty() {
                    spin_guards.push(expect_guard(spin.try_lock(), "spin try_lock"));
                } else {
                    expect_would_block(spin.try_lock(), "spin try_lock while held");
                }
            }
            _ => {
                spin_guards.pop();
            }
        }

        // After every step.
        assert_eq!(ring.len(), queue.len(), "ring length differs from the model");
        assert_eq!(ring.is_closed(), closed, "ring closed flag differs from the model");
        let want = |held: bool| held.then_some(me);
        assert_eq!(mutex.holder(), want(!mutex_guards.is_empty()), "mutex holder");
        assert_eq!(spin.holder(), want(!spin_guards.is_empty()), "spin lock holder");
        assert_eq!(rw.holder(), want(!writer.is_empty() || !readers.is_empty()), "rwlock holder");
    }

    // Drain the ring against the model.
    while let Some(front) = queue.pop_front() {
        assert_eq!(ring.try_pop(&mut out), Ok(()), "final drain");
        assert_eq!(out, front, "final drain: message differs from the model");
    }
    let want = if closed { RingError::Closed } else { RingError::WouldBlock };
    assert_eq!(ring.try_pop(&mut out), Err(want), "pop from the drained ring");

    // Every block still holds its own fill, and frees cleanly.
    for (offset, b) in std::mem::take(&mut blocks) {
        check_fill(&seg, offset, &b);
        // SAFETY: live, freed once, no reference held.
        let r = unsafe { seg.free(offset) };
        assert!(r.is_ok(), "final free of live block {offset}: {r:?}");
    }

    // With every guard dropped, every lock is free again.
    drop((mutex_guards, spin_guards, readers, writer));
    assert!(mutex.try_lock().is_ok(), "mutex not free after all guards dropped");
    assert!(spin.try_lock().is_ok(), "spin lock not free after all guards dropped");
    assert!(rw.try_lock().is_ok(), "rwlock not free after all guards dropped");
}
