//! Opening a segment from arbitrary bytes: an error or a usable segment, never a crash.
#![no_main]

use std::io::Write;
use std::os::fd::FromRawFd;

use libfuzzer_sys::fuzz_target;
use shmpool::Segment;

fuzz_target!(|data: &[u8]| {
    // SAFETY: memfd_create returns a fresh descriptor that we own.
    let fd = unsafe { libc_memfd() };
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(data).unwrap();
    if let Ok(seg) = Segment::from_file(file) {
        // Whatever the header said, using the arena must stay in bounds.
        for len in [0u64, 1, 100, 5000] {
            if let Ok(b) = seg.alloc(len) {
                assert!(b.offset + b.capacity <= seg.size());
                let _ = seg.free(b.offset);
            }
        }
        let _ = seg.lookup("x");
        let _ = seg.free(64);
    }
});

unsafe fn libc_memfd() -> i32 {
    extern "C" {
        fn memfd_create(name: *const std::ffi::c_char, flags: u32) -> i32;
    }
    unsafe { memfd_create(c"fuzz".as_ptr(), 1) }
}
