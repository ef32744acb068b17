//! The one sealed frame format on the network, and the replay guard.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "SPN1" (format version)
//! 4       16    sender: the publishing session's id (random per session)
//! 20      8     counter: u64 LE, per sender, strictly increasing from 1
//! 28      n     payload (the caller's bytes, copied as they are)
//! 28+n    32    tag: HMAC-SHA3-256 over DOMAIN ‖ len(key) u32 LE ‖ key ‖ bytes 0..28+n
//! ```
//!
//! The tag binds the key expression the frame was published on, so a frame
//! captured on one key cannot be replayed onto another; the counter, checked
//! by [`ReplayGuard`], refuses a frame seen before by the same receiver.

use std::collections::HashMap;

use super::auth::{Key, TAG_LEN};

const MAGIC: [u8; 4] = *b"SPN1";
const DOMAIN: &[u8] = b"shmpool/net/frame/v1\0";
const HEADER_LEN: usize = 4 + 16 + 8;

/// Bytes a sealed frame adds to its payload.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

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

/// Seals the payload made of `parts`, concatenated (copied once, into the
/// frame), for publication on `key_expr`.
pub(crate) fn seal(key: &Key, key_expr: &str, sender: &SenderId, counter: u64, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let mut frame = Vec::with_capacity(OVERHEAD + len);
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(sender);
    frame.extend_from_slice(&counter.to_le_bytes());
    for part in parts {
        frame.extend_from_slice(part);
    }
    let tag = key.seal_parts(&[DOMAIN, &key_len(key_expr), key_expr.as_bytes(), &frame]);
    frame.extend_from_slice(&tag);
    frame
}

/// An authentic frame, before the replay check.
#[derive(Debug)]
pub(crate) struct Opened<'a> {
    pub sender: SenderId,
    pub counter: u64,
    pub payload: &'a [u8],
}

/// Checks the format and the tag of a frame received on `key_expr`.
pub(crate) fn open<'a>(key: &Key, key_expr: &str, frame: &'a [u8]) -> Result<Opened<'a>, Refused> {
    if frame.len() < OVERHEAD || frame[..4] != MAGIC {
        return Err(Refused::Malformed);
    }
    let (body, tag) = frame.split_at(frame.len() - TAG_LEN);
    key.open_parts(&[DOMAIN, &key_len(key_expr), key_expr.as_bytes(), body], tag).map_err(|_| Refused::Forged)?;
    let sender: SenderId = body[4..20].try_into().expect("16 bytes");
    let counter = u64::from_le_bytes(body[20..28].try_into().expect("8 bytes"));
    Ok(Opened { sender, counter, payload: &body[HEADER_LEN..] })
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

    #[test]
    fn a_sealed_frame_opens_on_its_key_only() {
        let key = Key::derive(b"secret");
        let frame = seal(&key, "a/b", &A, 7, &[b"hello"]);
        assert_eq!(frame.len(), OVERHEAD + 5);
        assert_eq!(seal(&key, "a/b", &A, 7, &[b"he", b"", b"llo"]), frame, "parts seal as their concatenation");
        let opened = open(&key, "a/b", &frame).unwrap();
        assert_eq!((opened.sender, opened.counter, opened.payload), (A, 7, &b"hello"[..]));
        assert_eq!(open(&key, "a/c", &frame).unwrap_err(), Refused::Forged);
        assert_eq!(open(&Key::derive(b"other"), "a/b", &frame).unwrap_err(), Refused::Forged);
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let key = Key::derive(b"secret");
        let frame = seal(&key, "k", &A, 1, &[&[0xAB; 40]]);
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x10;
            let err = open(&key, "k", &bad).unwrap_err();
            assert!(matches!(err, Refused::Forged | Refused::Malformed), "byte {i}: {err:?}");
        }
    }

    #[test]
    fn short_and_foreign_frames_are_malformed() {
        let key = Key::derive(b"secret");
        for len in 0..OVERHEAD {
            assert_eq!(open(&key, "k", &vec![0u8; len]).unwrap_err(), Refused::Malformed);
        }
        let mut frame = seal(&key, "k", &A, 1, &[]);
        assert_eq!(frame.len(), OVERHEAD);
        assert!(open(&key, "k", &frame).is_ok());
        frame[0] = b'X';
        assert_eq!(open(&key, "k", &frame).unwrap_err(), Refused::Malformed);
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
