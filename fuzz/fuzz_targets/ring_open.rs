//! A ring header and slots made of arbitrary bytes inside a valid segment:
//! opening and popping give errors or bounded results, never a crash or hang.
#![no_main]


use libfuzzer_sys::fuzz_target;
use shmpool::ring::Ring;
use shmpool::Segment;

fuzz_target!(|data: &[u8]| {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let block = seg.alloc(64 << 10).unwrap();
    let off = block.offset.div_ceil(128) * 128;
    let n = data.len().min((block.offset + block.capacity - off) as usize);
    let p = seg.ptr(off, n as u64).unwrap();
    // SAFETY: a block this process owns, in bounds (checked by ptr).
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, n) };
    if let Ok(ring) = Ring::open(&seg, off) {
        let mut out = Vec::new();
        for _ in 0..4 {
            if ring.try_pop(&mut out).is_ok() {
                assert!(out.len() <= ring.payload_capacity());
            }
            let _ = ring.try_push(&[1, 2, 3]);
        }
    }
});
