//! Values for property tests: lengths that straddle every boundary the code
//! knows, and cheap pseudo-random content of any length.

use proptest::prelude::*;

/// Lengths: dense up to a few slots' worth (every inline limit of the slot
/// sizes the builders accept lies below 1100), every arena size class
/// (powers of two from 64 B to 256 KiB and the quarter steps between them,
/// give or take 48 bytes for block and archive headers; 64 KiB is where
/// blocks move to the large-block heap), and anything up to 300 KiB.
pub fn lengths() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..1300,
        4 => (6u32..=18, 0u64..4, -48i64..=48)
            .prop_map(|(pow, quarter, delta)| {
                let base = 1u64 << pow;
                (base + base / 4 * quarter) as i64 + delta
            })
            .prop_map(|n| n.max(0) as usize),
        1 => 0usize..300_000,
    ]
}

/// `len` pseudo-random bytes from `seed` (xorshift: fast for large values,
/// where a generated `Vec` would make proptest slow).
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A string of about `len` bytes from `seed`, with one-, two-, three- and
/// four-byte characters (and a newline).
pub fn text(len: usize, seed: u64) -> String {
    const CHARS: [char; 9] = ['a', 'Z', '0', ' ', '\n', 'é', 'ß', '語', '🦀'];
    let mut s = String::with_capacity(len + 4);
    for b in bytes(len, seed) {
        if s.len() >= len {
            break;
        }
        s.push(CHARS[b as usize % CHARS.len()]);
    }
    s
}
