//! Arbitrary bytes validated and deserialised as the archive of a few
//! message types: an error or a value, never a crash. A value that comes
//! out must survive an encode/decode round trip unchanged.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use shmpool::codec::{self, Scratch};
use shmpool::fuzzing::access_archive;
use shmpool::Message;

fn check<T: Message + PartialEq + Debug>(bytes: &[u8], scratch: &mut Scratch) {
    let Ok(value) = access_archive::<T>(bytes) else { return };
    // Inputs are at most a few KiB, but a value may not fit the scratch
    // buffer (e.g. a long string): only round-trip what fits.
    if let Ok(n) = codec::encode_into(&value, &mut scratch.0) {
        let again = access_archive::<T>(&scratch.0[..n]).expect("re-encoded archive is invalid");
        assert_eq!(again, value, "archive round trip changed the value");
    }
}

fuzz_target!(|data: &[u8]| {
    // u128 storage: archives are read from 16-byte aligned buffers.
    let mut storage = vec![0u128; data.len().div_ceil(16)];
    // SAFETY: `storage` owns at least `data.len()` initialised bytes; u8 has
    // no alignment requirement and every bit pattern is valid for both types.
    let bytes = unsafe { std::slice::from_raw_parts_mut(storage.as_mut_ptr().cast::<u8>(), data.len()) };
    bytes.copy_from_slice(data);

    let mut scratch = Scratch::new();
    check::<String>(bytes, &mut scratch);
    check::<Vec<u32>>(bytes, &mut scratch);
    check::<(u64, String)>(bytes, &mut scratch);
    check::<Option<Vec<u8>>>(bytes, &mut scratch);
});
