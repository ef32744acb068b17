//! A result or task frame made of arbitrary bytes, as a ring slot payload:
//! decoding gives a value or an error, never a crash; running it as a task
//! is refused (the frame is not sealed with the pool key), never executed.
//!
//! The key: with one fixed key, the seal check `seal(func, tramp, key) !=
//! check` is a pure function of the input, and libFuzzer's comparison
//! tracing hands the expected value back to the mutator, which writes it into
//! `check` within seconds (then the worker jumps to a forged trampoline). That
//! tests libFuzzer, not the seal: a process writing a frame into the segment
//! never sees the worker's comparison. So the key is fixed per input but
//! derived from all of it, `check` included: copying the observed seal into
//! `check` changes the key, and a forgery needs a 64-bit fixed point.
//!
//! The bytes are decoded from a 16-byte aligned copy (as a slot payload is
//! aligned), and also copied into two arena blocks of a persistent segment
//! (the whole frame, and the part after the 64-byte header) so that a
//! `BODY_BLOCK` frame can name a real, live block (block field 1 or 2 is
//! replaced by their offsets).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shmpool::segment::Block;
use shmpool::{fuzzing, Segment};

/// Mixed into every per-input pool key.
const KEY: u64 = 0x243f_6a88_85a3_08d3;
/// Bytes of the frame header before the inline archive.
const HEADER: usize = 64;
/// Byte offset of the header's `block` field (stream, seq, func, tramp,
/// check: 8 bytes each; status, body: 4; len: 8).
const BLOCK_FIELD: usize = 56;
/// Capacity requested for each data block (inputs are 4 KiB by default).
const BLOCK_LEN: u64 = 16 << 10;

struct Arena {
    seg: Segment,
    /// Holds the whole input.
    whole: Block,
    /// Holds the input after the frame header (the body of an inline frame).
    body: Block,
}

fn arena() -> &'static Arena {
    static ARENA: OnceLock<Arena> = OnceLock::new();
    ARENA.get_or_init(|| {
        let seg = Segment::anonymous(1 << 20).unwrap();
        let whole = seg.alloc(BLOCK_LEN).unwrap();
        let body = seg.alloc(BLOCK_LEN).unwrap();
        Arena { seg, whole, body }
    })
}

/// Overwrites `block` with `bytes` (clipped), zeroing the rest so that
/// nothing from an earlier input is left behind.
fn fill(seg: &Segment, block: Block, bytes: &[u8]) {
    let cap = block.capacity as usize;
    let n = bytes.len().min(cap);
    let p = seg.ptr(block.offset, block.capacity).unwrap();
    // SAFETY: a block this process allocated and never shared, in bounds
    // (checked by ptr); the decoders only read it, and not concurrently.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n);
        std::ptr::write_bytes(p.add(n), 0, cap - n);
    }
}

/// The pool key for this input: FNV-1a over every byte, then a
/// splitmix-style finaliser so each input bit moves every key bit.
fn key_for(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ KEY;
    for &b in data {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fuzz_target!(|data: &[u8]| {
    let a = arena();
    fill(&a.seg, a.whole, data);
    fill(&a.seg, a.body, data.get(HEADER..).unwrap_or(&[]));

    // u128 storage: the frame starts 16-byte aligned, like a slot payload.
    let mut storage = vec![0u128; data.len().div_ceil(16)];
    // SAFETY: `storage` owns at least `data.len()` initialised bytes; u8 has
    // no alignment requirement and every bit pattern is valid for both types.
    let slot = unsafe { std::slice::from_raw_parts_mut(storage.as_mut_ptr().cast::<u8>(), data.len()) };
    slot.copy_from_slice(data);
    // Arena offsets are hard to guess: a block field of 1 or 2 names the
    // block holding the whole input or its body (other values stay as they are).
    if let Some(field) = slot.get_mut(BLOCK_FIELD..BLOCK_FIELD + 8) {
        let real = match u64::from_le_bytes(field.try_into().unwrap()) {
            1 => Some(a.whole.offset),
            2 => Some(a.body.offset),
            _ => None,
        };
        if let Some(off) = real {
            field.copy_from_slice(&off.to_le_bytes());
        }
    }

    let _ = fuzzing::decode_result_slot::<String>(&a.seg, slot);
    let _ = fuzzing::decode_result_slot::<Vec<u64>>(&a.seg, slot);

    let status = fuzzing::run_task_slot(&a.seg, slot, key_for(data));
    assert_ne!(status, 0, "a frame not sealed by the pool ran with status OK");
});
