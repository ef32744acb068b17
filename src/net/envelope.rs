//! The one sealed frame format on the network, and the replay guard.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "SPN2" (format version)
//! 4       16    sender: the publishing session's id (random per session)
//! 20      8     counter: u64 LE, per sender, strictly increasing from 1
//! 28      n     payload, encrypted: AES-256-GCM under the sender's key
//!               (derived from the shared secret and the sender's id),
//!               nonce: the counter
//! 28+n    16    tag: over DOMAIN ‖ len(key) u32 LE ‖ key ‖ bytes 0..28 (the
//!               associated data) and the encrypted payload
//! ```
//!
//! The tag binds the key expression the frame was published on, so a frame
//! captured on one key cannot be replayed onto another; the counter, checked
//! by [`ReplayGuard`], refuses a frame seen before by the same receiver. A
//! peer without the secret sees key expressions, sizes and sender ids, not
//! payloads.

use std::collections::HashMap;

use super::auth::{Key, SenderKey, AEAD_TAG_LEN};

const MAGIC: [u8; 4] = *b"SPN2";
const DOMAIN: &[u8] = b"shmpool/net/frame/v2\0";
const HEADER_LEN: usize = 4 + 16 + 8;

/// Bytes a sealed frame adds to its payload.
pub const OVERHEAD: usize = HEADER_LEN + AEAD_TAG_LEN;

/// A publishing session's id, carried in every frame it seals.
pub type SenderId = [u8; 16];

/// Why a frame from the network was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Too short, or not this format.
    Malformed,
    /// The tag does not verify: altered, or sealed under another secret.
    Forged,
    /// Authentic, but seen before (or too far behind its sender's newest).
    Replayed,
}

/// The associated data of a frame: the domain, its key expression and its
/// header.
fn associated(key_expr: &str, header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DOMAIN.len() + 4 + key_expr.len() + HEADER_LEN);
    aad.extend_from_slice(DOMAIN);
    aad.extend_from_slice(&key_len(key_expr));
    aad.extend_from_slice(key_expr.as_bytes());
    aad.extend_from_slice(header);
    aad
}

/// Seals the payload made of `parts`, concatenated (copied once, into the
/// frame, and encrypted there), for publication on `key_expr` by `sender`,
/// whose key is `key`.
pub(crate) fn seal(key: &SenderKey, key_expr: &str, sender: &SenderId, counter: u64, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let mut frame = Vec::with_capacity(OVERHEAD + len);
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(sender);
    frame.extend_from_slice(&counter.to_le_bytes());
    for part in parts {
        frame.extend_from_slice(part);
    }
    let (header, payload) = frame.split_at_mut(HEADER_LEN);
    let tag = key.seal(counter, &associated(key_expr, header), payload);
    frame.extend_from_slice(&tag);
    frame
}

/// An authentic frame, before the replay check: its payload is
/// `frame[PAYLOAD..]` (decrypted, the tag cut off).
#[derive(Debug)]
pub(crate) struct Opened {
    pub sender: SenderId,
    pub counter: u64,
}

/// Where an opened frame's payload starts.
pub(crate) const PAYLOAD: usize = HEADER_LEN;

/// Checks the format and the tag of a frame received on `key_expr` and
/// decrypts its payload in place (see [`Opened`]); `keys` remembers the
/// keys of senders whose frames verified.
pub(crate) fn open(key: &Key, keys: &mut SenderKeys, key_expr: &str, frame: &mut Vec<u8>) -> Result<Opened, Refused> {
    if frame.len() < OVERHEAD || frame[..4] != MAGIC {
        return Err(Refused::Malformed);
    }
    let sender: SenderId = frame[4..20].try_into().expect("16 bytes");
    let counter = u64::from_le_bytes(frame[20..28].try_into().expect("8 bytes"));
    let tag_at = frame.len() - AEAD_TAG_LEN;
    let (body, tag) = frame.split_at_mut(tag_at);
    let (header, payload) = body.split_at_mut(HEADER_LEN);
    let aad = associated(key_expr, header);
    let opened = match keys.known.get(&sender) {
        Some(k) => k.open(counter, &aad, payload, tag).is_ok(),
        None => {
            let k = key.for_sender(&sender);
            let ok = k.open(counter, &aad, payload, tag).is_ok();
            if ok {
                // Only senders holding the secret are remembered.
                keys.remember(sender, k);
            }
            ok
        }
    };
    if !opened {
        return Err(Refused::Forged);
    }
    frame.truncate(tag_at);
    Ok(Opened { sender, counter })
}

/// The keys of senders seen by one receiver (deriving one costs two HMACs
/// and an AES key schedule: a frame of a known sender skips that).
#[derive(Debug, Default)]
pub(crate) struct SenderKeys {
    known: HashMap<SenderId, SenderKey>,
}

impl SenderKeys {
    fn remember(&mut self, sender: SenderId, key: SenderKey) {
        if self.known.len() >= MAX_SENDERS {
            // Rarely reached (only senders holding the secret get here):
            // start over rather than track recency.
            self.known.clear();
        }
        self.known.insert(sender, key);
    }
}

fn key_len(key_expr: &str) -> [u8; 4] {
    // Key expressions are far below 4 GiB; saturate rather than wrap.
    u32::try_from(key_expr.len()).unwrap_or(u32::MAX).to_le_bytes()
}

/// How far behind its sender's newest counter a frame may arrive and still
/// be accepted (once): frames published by several threads of one session
/// may reach the network in a slightly different order than their counters.
pub const REPLAY_WINDOW: u64 = 64;

/// Senders remembered by one guard; past this the least recently heard one
/// is forgotten (only senders holding the secret get this far).
const MAX_SENDERS: usize = 4096;

/// Per sender: the highest counter accepted and a bitmap of the
/// [`REPLAY_WINDOW`] counters below it (bit `i` set: `top - i` accepted).
#[derive(Debug, Clone, Copy)]
struct Window {
    top: u64,
    seen: u64,
    last_use: u64,
}

/// Refuses a frame whose (sender, counter) it accepted before, and one more
/// than [`REPLAY_WINDOW`] behind its sender's newest: the sliding window of
/// IPsec and DTLS.
///
/// The guard lives as long as the subscription holding it: a frame replayed
/// to a later subscription, or to a restarted process, is not caught here
/// (a new session has a new sender id, so its own frames restart at 1).
#[derive(Debug, Default)]
pub(crate) struct ReplayGuard {
    senders: HashMap<SenderId, Window>,
    tick: u64,
}

impl ReplayGuard {
    /// Records (sender, counter) and says whether it is new.
    pub(crate) fn accept(&mut self, sender: &SenderId, counter: u64) -> bool {
        self.tick += 1;
        let tick = self.tick;
        if let Some(w) = self.senders.get_mut(sender) {
            w.last_use = tick;
            if counter > w.top {
                let shift = counter - w.top;
                w.seen = if shift >= REPLAY_WINDOW { 0 } else { w.seen << shift };
                w.seen |= 1;
                w.top = counter;
                return true;
            }
            let behind = w.top - counter;
            if behind >= REPLAY_WINDOW || w.seen & (1 << behind) != 0 {
                return false;
            }
            w.seen |= 1 << behind;
            return true;
        }
        if self.senders.len() >= MAX_SENDERS {
            let oldest = self.senders.iter().min_by_key(|(_, w)| w.last_use).map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.senders.remove(&id);
            }
        }
        self.senders.insert(*sender, Window { top: counter, seen: 1, last_use: tick });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: SenderId = [1; 16];
    const B: SenderId = [2; 16];

    fn sealed(secret: &[u8], key_expr: &str, sender: &SenderId, counter: u64, parts: &[&[u8]]) -> Vec<u8> {
        seal(&Key::derive(secret).for_sender(sender), key_expr, sender, counter, parts)
    }

    fn opened(secret: &[u8], key_expr: &str, frame: &[u8]) -> Result<(Opened, Vec<u8>), Refused> {
        let mut frame = frame.to_vec();
        let o = open(&Key::derive(secret), &mut SenderKeys::default(), key_expr, &mut frame)?;
        Ok((o, frame[PAYLOAD..].to_vec()))
    }

    #[test]
    fn a_sealed_frame_opens_on_its_key_only() {
        let frame = sealed(b"secret", "a/b", &A, 7, &[b"hello"]);
        assert_eq!(frame.len(), OVERHEAD + 5);
        assert!(!frame.windows(5).any(|w| w == b"hello"), "the payload travels encrypted");
        assert_eq!(sealed(b"secret", "a/b", &A, 7, &[b"he", b"", b"llo"]), frame, "parts seal as their concatenation");
        let (o, payload) = opened(b"secret", "a/b", &frame).unwrap();
        assert_eq!((o.sender, o.counter, &payload[..]), (A, 7, &b"hello"[..]));
        assert_eq!(opened(b"secret", "a/c", &frame).unwrap_err(), Refused::Forged);
        assert_eq!(opened(b"other", "a/b", &frame).unwrap_err(), Refused::Forged);
    }

    #[test]
    fn a_known_senders_key_is_remembered_and_still_checks() {
        let key = Key::derive(b"secret");
        let mut keys = SenderKeys::default();
        for counter in 1..4 {
            let mut frame = sealed(b"secret", "k", &A, counter, &[b"x"]);
            assert!(open(&key, &mut keys, "k", &mut frame).is_ok());
        }
        assert_eq!(keys.known.len(), 1);
        let mut bad = sealed(b"secret", "k", &A, 9, &[b"x"]);
        bad[PAYLOAD] ^= 1;
        assert_eq!(open(&key, &mut keys, "k", &mut bad).unwrap_err(), Refused::Forged);
        let mut forged = sealed(b"another", "k", &B, 1, &[b"x"]);
        assert_eq!(open(&key, &mut keys, "k", &mut forged).unwrap_err(), Refused::Forged);
        assert_eq!(keys.known.len(), 1, "a sender whose frame did not verify is not remembered");
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let frame = sealed(b"secret", "k", &A, 1, &[&[0xAB; 40]]);
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x10;
            let err = opened(b"secret", "k", &bad).unwrap_err();
            assert!(matches!(err, Refused::Forged | Refused::Malformed), "byte {i}: {err:?}");
        }
    }

    #[test]
    fn short_and_foreign_frames_are_malformed() {
        for len in 0..OVERHEAD {
            assert_eq!(opened(b"secret", "k", &vec![0u8; len]).unwrap_err(), Refused::Malformed);
        }
        let mut frame = sealed(b"secret", "k", &A, 1, &[]);
        assert_eq!(frame.len(), OVERHEAD);
        assert!(opened(b"secret", "k", &frame).is_ok());
        frame[0] = b'X';
        assert_eq!(opened(b"secret", "k", &frame).unwrap_err(), Refused::Malformed);
    }

    #[test]
    fn the_guard_refuses_repeats_and_stale_counters() {
        let mut g = ReplayGuard::default();
        assert!(g.accept(&A, 1));
        assert!(!g.accept(&A, 1));
        assert!(g.accept(&A, 3));
        assert!(g.accept(&A, 2), "late but inside the window, once");
        assert!(!g.accept(&A, 2));
        assert!(g.accept(&B, 1), "senders are apart");
        assert!(g.accept(&A, 3 + REPLAY_WINDOW));
        assert!(!g.accept(&A, 3), "a full window behind");
        assert!(g.accept(&A, 5), "62 behind the newest: inside the window, unseen");
        assert!(g.accept(&A, 1_000_000));
        assert!(!g.accept(&A, 1_000_000));
        assert!(!g.accept(&A, 1_000_000 - REPLAY_WINDOW));
        assert!(g.accept(&A, 1_000_000 - REPLAY_WINDOW + 1));
    }

    #[test]
    fn the_guard_forgets_the_least_recent_sender_past_its_bound() {
        let mut g = ReplayGuard::default();
        for i in 0..MAX_SENDERS as u64 + 1 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_le_bytes());
            assert!(g.accept(&id, 1));
        }
        assert_eq!(g.senders.len(), MAX_SENDERS);
        assert!(g.accept(&[0; 16], 1), "sender 0 was forgotten");
    }
}
