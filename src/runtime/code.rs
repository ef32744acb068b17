//! Code addressing: functions travel between processes as offsets from an
//! anchor function in this image, sealed with a secret key, and every
//! segment that carries such offsets records the build they belong to.
//!
//! Both ends of a pool run the same binary, so `anchor + offset` is the same
//! function in the child even though ASLR loads the image elsewhere. A
//! process of another build (a service client compiled separately, say)
//! would map the same offset to different code: its build id differs, and it
//! is refused before any offset is used.

use std::sync::OnceLock;

use crate::sys::image;

/// The fixed point function offsets are measured from.
#[inline(never)]
fn anchor() {}

/// The offset of the code at `addr` from the anchor.
pub(crate) fn code_offset(addr: usize) -> i64 {
    (addr as i64).wrapping_sub(anchor as *const () as usize as i64)
}

/// The address in this process of the code at `offset` from the anchor.
pub(crate) fn code_address(offset: i64) -> usize {
    (anchor as *const () as usize as i64).wrapping_add(offset) as usize
}

/// What a seal covers: a task's (function, trampoline) pair, a stateful
/// pool's init record, or a call to the parent. A seal of one kind never
/// validates another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SealKind {
    Task = 0x7a5c,
    Init = 0x1417,
    /// A worker's call to its parent ([`crate::parent_call`]).
    Call = 0x3c11,
}

/// Seals a (function, trampoline) pair of `kind` with `key`.
pub(crate) fn seal(kind: SealKind, func: i64, tramp: i64, key: u64) -> u64 {
    let mut x = (func as u64) ^ (tramp as u64).rotate_left(29) ^ key ^ ((kind as u64) << 48);
    // splitmix64 finaliser: every input bit affects every output bit.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31) ^ key.rotate_left(17)
}

/// This binary's build id, folded to 64 bits (never 0): the linker's GNU
/// build id where there is one, else the executable file's identity.
pub fn build_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let bytes: Vec<u8> = match image::gnu_build_id() {
            Some(id) => id,
            None => image::exe_identity().map_or_else(Vec::new, |w| w.iter().flat_map(|x| x.to_ne_bytes()).collect()),
        };
        // FNV-1a: stable across processes and builds of this crate.
        let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        h.max(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_seal_depends_on_everything() {
        let f = seal as *const () as usize;
        assert_eq!(code_address(code_offset(f)), f);
        let s = seal(SealKind::Task, 10, 20, 30);
        assert_ne!(s, seal(SealKind::Task, 11, 20, 30));
        assert_ne!(s, seal(SealKind::Task, 10, 21, 30));
        assert_ne!(s, seal(SealKind::Task, 10, 20, 31));
        assert_ne!(s, seal(SealKind::Init, 10, 20, 30));
        assert_ne!(s, seal(SealKind::Call, 10, 20, 30));
    }

    #[test]
    fn the_build_id_is_stable_and_not_zero() {
        assert_ne!(build_id(), 0);
        assert_eq!(build_id(), build_id());
    }
}
