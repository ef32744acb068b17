//! Opening a segment from arbitrary bytes: an error or a usable segment, never a crash.
//!
//! The header alone is larger than libFuzzer's default 4096-byte input limit,
//! so raw inputs could only ever hit `Truncated`. Instead each input edits a
//! valid segment image (allocated blocks, a freed block, a directory entry):
//!   byte 0:   file length = image length + (byte0 as i8) * 256 (clamped at 0)
//!   then patches: [offset u16 LE][n u8][n bytes], overwriting the image
//!             at offset % file length (clipped at the end of the file).
#![no_main]

use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shmpool::Segment;

/// Byte offset of `Header::state` (magic 8, version 4, header_len 4, size 8, pid 4).
const STATE_OFFSET: usize = 28;

fn template() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let seg = Segment::anonymous(32 << 10).unwrap();
        let _a = seg.alloc(0).unwrap();
        let b = seg.alloc(200).unwrap();
        let _c = seg.alloc(1000).unwrap();
        // SAFETY: `b` was never written or referenced.
        unsafe { seg.free(b.offset) }.unwrap();
        seg.named("x", 7, 0xfeed, 48, |_| Ok(())).unwrap();
        let n = seg.size() as usize;
        let p = seg.ptr(0, n as u64).unwrap();
        // SAFETY: in bounds (checked by ptr); single-threaded, nobody else has the memfd.
        let image = unsafe { std::slice::from_raw_parts(p, n) }.to_vec();
        assert_eq!(image[STATE_OFFSET..STATE_OFFSET + 4], 1u32.to_ne_bytes(), "Header layout changed");
        image
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&len_sel, mut patches)) = data.split_first() else { return };
    let image = template();
    let len = (image.len() as i64 + (len_sel as i8 as i64) * 256).max(0) as usize;
    let mut bytes = image.to_vec();
    bytes.resize(len, 0);
    while len > 0 && patches.len() >= 3 {
        let off = u16::from_le_bytes([patches[0], patches[1]]) as usize % len;
        let n = (patches[2] as usize).min(patches.len() - 3).min(len - off);
        bytes[off..off + n].copy_from_slice(&patches[3..3 + n]);
        patches = &patches[3 + n..];
    }
    // A state other than READY makes from_file poll for 2 s (by design: a
    // creator still initialising); keep it READY so the fuzzer stays fast.
    if len >= STATE_OFFSET + 4 {
        bytes[STATE_OFFSET..STATE_OFFSET + 4].copy_from_slice(&1u32.to_ne_bytes());
    }

    // SAFETY: memfd_create returns a fresh descriptor that we own.
    let fd = unsafe { libc_memfd() };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: `fd` is open (checked) and owned by nobody else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(&bytes).unwrap();
    if let Ok(seg) = Segment::from_file(file) {
        // Whatever the header said, using the arena must stay in bounds.
        for len in [0u64, 1, 100, 5000] {
            if let Ok(b) = seg.alloc(len) {
                assert!(b.offset + b.capacity <= seg.size());
                // SAFETY: the block was never handed to anyone or referenced.
                let _ = unsafe { seg.free(b.offset) };
            }
        }
        let _ = seg.lookup("x");
        // SAFETY: single process, no references into the segment are held.
        let _ = unsafe { seg.free(64) };
    }
});

/// # Safety
///
/// None: a plain system call; `unsafe` because it is foreign.
unsafe fn libc_memfd() -> i32 {
    extern "C" {
        fn memfd_create(name: *const std::ffi::c_char, flags: u32) -> i32;
    }
    // SAFETY: the name is a valid C string; flags 1 is MFD_CLOEXEC.
    unsafe { memfd_create(c"fuzz".as_ptr(), 1) }
}
