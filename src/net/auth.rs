//! The keys of the network: a [`Key`] derived from the secret the hosts
//! share (HMAC-SHA-256, for derivations and tags), and per sender a key
//! that seals its frames: AES-256-GCM, which encrypts the payload and
//! authenticates it with the frame's header (ring's, on the CPU's AES and
//! carry-less multiply instructions: ~0.1 ms a MiB, where the
//! HMAC-SHA3-256 of the first frame format took ~2 ms each way).
//!
//! This is not the local seal (`runtime::code`), which only guards against
//! accidents between processes of one build on one host: a network peer is
//! hostile, so a frame it sends is refused unless it was sealed under the
//! shared secret. The tag covers every byte it is given; what those bytes are
//! (header, counter, key expression, payload) is `envelope`'s business.

use std::fmt;

use ring::{aead, hmac};

/// Length of a tag in bytes.
pub const TAG_LEN: usize = 32;

/// Length of a frame's seal: the AES-GCM tag.
pub const AEAD_TAG_LEN: usize = 16;

/// Domain label of a sender's key.
const SENDER_LABEL: &[u8] = b"shmpool/net/sender/v2\0";

/// Domain label of the key derivation: the same secret used elsewhere by the
/// user (or by another version of this protocol) gives a different key.
const KDF_LABEL: &[u8] = b"shmpool/net/key/v2";

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
    key: hmac::Key,
}

impl Key {
    /// Derives the key from a secret of any length: HMAC-SHA-256 keyed by a
    /// fixed domain label over the secret (the extract step of HKDF), so
    /// every secret, short or long, gives a uniform 32-byte key.
    ///
    /// The secret's strength is the key's: a short password gives a weak
    /// key. Use 32 random bytes where you can.
    pub fn derive(secret: &[u8]) -> Key {
        let extracted = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, KDF_LABEL), secret);
        Key { key: hmac::Key::new(hmac::HMAC_SHA256, extracted.as_ref()) }
    }

    /// The tag of `parts`, concatenated (no copy into one buffer).
    pub fn seal_parts(&self, parts: &[&[u8]]) -> Tag {
        let mut mac = hmac::Context::with_key(&self.key);
        for part in parts {
            mac.update(part);
        }
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(mac.sign().as_ref());
        tag
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
        let expected = self.seal_parts(parts);
        // Every byte compared, differences folded together: no early exit.
        let diff = expected.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if std::hint::black_box(diff) == 0 {
            Ok(())
        } else {
            Err(AuthError::BadTag)
        }
    }

    /// Checks that `tag` is the tag of `frame` under this key, in constant
    /// time.
    pub fn open(&self, frame: &[u8], tag: &[u8]) -> Result<(), AuthError> {
        self.open_parts(&[frame], tag)
    }
}

impl Key {
    /// The key that seals one sender's frames: HMAC-SHA-256 of the
    /// sender's id under this key, as an AES-256-GCM key. One per sender,
    /// so that nonces made of a sender's counter never repeat under a key.
    pub(crate) fn for_sender(&self, sender: &[u8]) -> SenderKey {
        let mut mac = hmac::Context::with_key(&self.key);
        mac.update(SENDER_LABEL);
        mac.update(sender);
        let bytes = mac.sign();
        let key = aead::UnboundKey::new(&aead::AES_256_GCM, bytes.as_ref()).expect("HMAC-SHA-256 gives 32 bytes");
        SenderKey(aead::LessSafeKey::new(key))
    }
}

/// Seals and opens one sender's frames (see [`Key::for_sender`]).
pub(crate) struct SenderKey(aead::LessSafeKey);

impl fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SenderKey(..)")
    }
}

impl SenderKey {
    /// The nonce of the frame numbered `counter` (unique per sender).
    fn nonce(counter: u64) -> aead::Nonce {
        let mut n = [0u8; aead::NONCE_LEN];
        n[..8].copy_from_slice(&counter.to_le_bytes());
        aead::Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `in_out` in place and returns the tag over it and `aad`.
    /// `counter` must never repeat for this sender (the envelope's counter
    /// rises strictly, and a session's sender id is new each time).
    pub(crate) fn seal(&self, counter: u64, aad: &[u8], in_out: &mut [u8]) -> [u8; AEAD_TAG_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(Self::nonce(counter), aead::Aad::from(aad), in_out)
            .expect("AES-GCM seals any length a frame can have");
        let mut out = [0u8; AEAD_TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Checks `tag` over `aad` and `in_out` and decrypts `in_out` in place;
    /// on failure `in_out` is garbage.
    pub(crate) fn open(&self, counter: u64, aad: &[u8], in_out: &mut [u8], tag: &[u8]) -> Result<(), AuthError> {
        let tag = aead::Tag::try_from(tag).map_err(|_| AuthError::BadLength)?;
        self.0
            .open_in_place_separate_tag(Self::nonce(counter), aead::Aad::from(aad), tag, in_out, 0..)
            .map(|_| ())
            .map_err(|_| AuthError::BadTag)
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
