//! The running program's image: what identifies the build of the code.

use std::os::unix::fs::MetadataExt;

/// The GNU build id of the main executable (`.note.gnu.build-id`, written
/// by the linker), read from this process's own program headers; `None`
/// if the executable carries none.
pub fn gnu_build_id() -> Option<Vec<u8>> {
    let mut found: Option<Vec<u8>> = None;
    // SAFETY: dl_iterate_phdr calls `callback` with valid `dl_phdr_info`
    // pointers for each loaded object, one at a time, on this thread;
    // `data` is our `&mut Option<Vec<u8>>`, alive for the whole call.
    unsafe { libc::dl_iterate_phdr(Some(callback), (&mut found as *mut Option<Vec<u8>>).cast()) };
    found
}

unsafe extern "C" fn callback(info: *mut libc::dl_phdr_info, _size: libc::size_t, data: *mut libc::c_void) -> i32 {
    // SAFETY: per dl_iterate_phdr's contract (see `gnu_build_id`): `info` is
    // valid for this call and `data` is the `Option<Vec<u8>>` we passed.
    let (info, found) = unsafe { (&*info, &mut *data.cast::<Option<Vec<u8>>>()) };
    // The first object reported is the main executable; stop after it.
    if !info.dlpi_phdr.is_null() {
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type != libc::PT_NOTE {
                continue;
            }
            let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
            // SAFETY: a PT_NOTE segment is loaded (PT_LOAD covers it) at
            // `dlpi_addr + p_vaddr`, `p_memsz` bytes, readable for the life
            // of the process.
            let notes = unsafe { std::slice::from_raw_parts(start as *const u8, ph.p_memsz as usize) };
            if let Some(id) = find_build_id(notes) {
                *found = Some(id.to_vec());
                return 1;
            }
        }
    }
    1
}

/// Walks ELF notes (4-byte aligned `namesz, descsz, type, name, desc`) for
/// the GNU build id (type 3, name "GNU\0").
fn find_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], i: usize| -> Option<u32> { Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?)) };
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (word(notes, 0)? as usize, word(notes, 4)? as usize, word(notes, 8)?);
        let name_end = 12usize.checked_add(namesz.checked_next_multiple_of(4)?)?;
        let desc_end = name_end.checked_add(descsz.checked_next_multiple_of(4)?)?;
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && notes.get(12..12 + namesz)? == b"GNU\0" {
            return notes.get(name_end..name_end + descsz);
        }
        notes = &notes[desc_end..];
    }
    None
}

/// What identifies the executable file when it has no build id: device,
/// inode, size and modification time of `/proc/self/exe`.
pub fn exe_identity() -> Option<[u64; 4]> {
    let m = std::fs::metadata("/proc/self/exe").ok()?;
    Some([m.dev(), m.ino(), m.size(), m.mtime_nsec() as u64 ^ (m.mtime() as u64).rotate_left(32)])
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_test_binary_has_a_stable_build_id() {
        let a = super::gnu_build_id().expect("the linker here writes .note.gnu.build-id");
        assert!(a.len() >= 8);
        assert_eq!(super::gnu_build_id(), Some(a));
        assert!(super::exe_identity().is_some());
    }
}
