//! The keyed MAC every frame from the network carries: HMAC-SHA3-256 under a
//! key derived from the secret the hosts share.
//!
//! This is not the local seal (`runtime::code`), which only guards against
//! accidents between processes of one build on one host: a network peer is
//! hostile, so a frame it sends is refused unless it was sealed under the
//! shared secret. The tag covers every byte it is given; what those bytes are
//! (header, counter, key expression, payload) is `envelope`'s business.

use std::fmt;

use hmac::{Hmac, Mac};
use sha3::Sha3_256;

type HmacSha3 = Hmac<Sha3_256>;

/// Length of a tag in bytes.
pub const TAG_LEN: usize = 32;

/// Domain label of the key derivation: the same secret used elsewhere by the
/// user (or by another version of this protocol) gives a different key.
const KDF_LABEL: &[u8] = b"shmpool/net/key/v1";

/// A tag: the MAC of some bytes under a [`Key`].
pub type Tag = [u8; TAG_LEN];

/// Why a tag was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// The tag is not the MAC of these bytes under this key: the bytes were
    /// changed, or sealed under another secret.
    BadTag,
    /// The tag has the wrong length.
    BadLength,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::BadTag => f.write_str("frame authentication failed (altered, or another secret)"),
            AuthError::BadLength => write!(f, "frame authentication tag is not {TAG_LEN} bytes"),
        }
    }
}

impl std::error::Error for AuthError {}

/// A 32-byte MAC key derived from the user's secret.
///
/// Its `Debug` form never shows the key.
#[derive(Clone)]
pub struct Key {
    bytes: [u8; 32],
}

impl Key {
    /// Derives the key from a secret of any length: HMAC-SHA3-256 keyed by a
    /// fixed domain label over the secret (the extract step of HKDF), so
    /// every secret, short or long, gives a uniform 32-byte key.
    ///
    /// The secret's strength is the key's: a short password gives a weak
    /// key. Use 32 random bytes where you can.
    pub fn derive(secret: &[u8]) -> Key {
        let mut mac = HmacSha3::new_from_slice(KDF_LABEL).expect("HMAC takes a key of any length");
        mac.update(secret);
        Key { bytes: mac.finalize().into_bytes().into() }
    }

    fn mac(&self) -> HmacSha3 {
        HmacSha3::new_from_slice(&self.bytes).expect("HMAC takes a key of any length")
    }

    /// The tag of `parts`, concatenated (no copy into one buffer).
    pub fn seal_parts(&self, parts: &[&[u8]]) -> Tag {
        let mut mac = self.mac();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The tag of `frame`.
    pub fn seal(&self, frame: &[u8]) -> Tag {
        self.seal_parts(&[frame])
    }

    /// Checks `tag` against `parts`, concatenated, in constant time (the
    /// comparison takes as long wherever the first differing byte is).
    pub fn open_parts(&self, parts: &[&[u8]], tag: &[u8]) -> Result<(), AuthError> {
        if tag.len() != TAG_LEN {
            return Err(AuthError::BadLength);
        }
        let mut mac = self.mac();
        for part in parts {
            mac.update(part);
        }
        // `verify_slice` compares through `subtle`'s constant-time equality.
        mac.verify_slice(tag).map_err(|_| AuthError::BadTag)
    }

    /// Checks that `tag` is the tag of `frame` under this key, in constant
    /// time.
    pub fn open(&self, frame: &[u8], tag: &[u8]) -> Result<(), AuthError> {
        self.open_parts(&[frame], tag)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_frame_opens() {
        let key = Key::derive(b"shared secret");
        let frame = b"a frame from the network".to_vec();
        let tag = key.seal(&frame);
        assert_eq!(key.open(&frame, &tag), Ok(()));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let key = Key::derive(b"shared secret");
        let frame: Vec<u8> = (0..64u8).collect();
        let tag = key.seal(&frame);
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x01;
            assert_eq!(key.open(&bad, &tag), Err(AuthError::BadTag), "byte {i} flipped");
        }
        for i in 0..TAG_LEN {
            let mut bad = tag;
            bad[i] ^= 0x80;
            assert_eq!(key.open(&frame, &bad), Err(AuthError::BadTag), "tag byte {i} flipped");
        }
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let frame = b"payload";
        let tag = Key::derive(b"secret A").seal(frame);
        assert_eq!(Key::derive(b"secret B").open(frame, &tag), Err(AuthError::BadTag));
        // Secrets that differ by length only, and the empty secret.
        let tag = Key::derive(b"ab").seal(frame);
        assert_eq!(Key::derive(b"ab\0").open(frame, &tag), Err(AuthError::BadTag));
        assert_eq!(Key::derive(b"").open(frame, &tag), Err(AuthError::BadTag));
    }

    #[test]
    fn truncated_and_extended_frames_and_tags_are_refused() {
        let key = Key::derive(b"k");
        let frame = b"0123456789";
        let tag = key.seal(frame);
        assert_eq!(key.open(&frame[..9], &tag), Err(AuthError::BadTag));
        assert_eq!(key.open(b"0123456789!", &tag), Err(AuthError::BadTag));
        assert_eq!(key.open(frame, &tag[..31]), Err(AuthError::BadLength));
        assert_eq!(key.open(frame, &[]), Err(AuthError::BadLength));
    }

    #[test]
    fn parts_seal_as_their_concatenation() {
        let key = Key::derive(b"k");
        let tag = key.seal_parts(&[b"ab", b"", b"cd"]);
        assert_eq!(tag, key.seal(b"abcd"));
        assert_eq!(key.open_parts(&[b"a", b"bcd"], &tag), Ok(()));
    }

    #[test]
    fn derivation_is_deterministic_and_hides_the_key() {
        let a = Key::derive(b"same");
        let b = Key::derive(b"same");
        assert_eq!(a.seal(b"x"), b.seal(b"x"));
        assert_eq!(format!("{a:?}"), "Key(..)");
    }
}
