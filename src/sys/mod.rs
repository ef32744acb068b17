//! The operating system, and nothing else.
//!
//! Every call into libc lives below this module; the layers above see safe
//! functions with `io::Result`. Linux only for now: another OS gets its own
//! files here.

pub mod futex;
pub mod image;
pub mod process;
pub mod shm;
