//! Shared-memory file descriptors: `memfd_create` for private segments,
//! `shm_open` for named ones, and mapping them with memmap2.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use memmap2::{MmapOptions, MmapRaw};

/// Creates an anonymous shared-memory file of `len` bytes (`memfd_create`).
///
/// The descriptor is close-on-exec; [`crate::sys::process`] clears that flag
/// only in the worker it spawns. The kernel frees the memory when the last
/// descriptor and mapping are gone, so a crash never leaks it.
pub fn memfd(name: &str, len: u64) -> io::Result<File> {
    let cname = c_name(name)?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len)?;
    Ok(file)
}

/// Creates the named segment `/dev/shm/<name>` exclusively (fails with
/// `AlreadyExists` if it is there) and sizes it to `len` bytes.
pub fn shm_create(name: &str, len: u64) -> io::Result<File> {
    let file = shm_open(name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL)?;
    if let Err(e) = file.set_len(len) {
        let _ = shm_unlink(name);
        return Err(e);
    }
    Ok(file)
}

/// Opens the existing named segment `/dev/shm/<name>` for reading and writing.
pub fn shm_open_existing(name: &str) -> io::Result<File> {
    shm_open(name, libc::O_RDWR)
}

fn shm_open(name: &str, flags: libc::c_int) -> io::Result<File> {
    let cname = c_name(&format!("/{name}"))?;
    // SAFETY: `cname` is a valid NUL-terminated string; flags and mode are plain ints.
    let fd = unsafe { libc::shm_open(cname.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by shm_open and is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Removes the name `/dev/shm/<name>`; mappings that exist stay valid.
pub fn shm_unlink(name: &str) -> io::Result<()> {
    let cname = c_name(&format!("/{name}"))?;
    // SAFETY: `cname` is a valid NUL-terminated string.
    if unsafe { libc::shm_unlink(cname.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Maps `len` bytes of `file` shared (`MAP_SHARED`), readable and writable.
pub fn map(file: &File, len: usize) -> io::Result<MmapRaw> {
    MmapOptions::new().len(len).map_raw(file)
}

/// Opens `/proc/self/fd/<fd>` style inherited descriptors: takes ownership of
/// the raw descriptor number a parent left open for us.
///
/// Returns an error if `fd` is not an open descriptor.
pub fn file_from_inherited(fd: RawFd) -> io::Result<File> {
    // SAFETY: F_GETFD only queries the descriptor table; an invalid fd gives EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above) and was left to this
    // process by its parent for exactly this purpose; nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // Set close-on-exec again so that processes this worker starts do not inherit it.
    set_cloexec(file.as_raw_fd(), true)?;
    Ok(file)
}

/// Sets or clears `FD_CLOEXEC` on `fd`. Async-signal-safe (used after fork).
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFD/F_SETFD on an integer descriptor touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Fills `buf` from the kernel's random source (`getrandom`).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))
}
