//! The ring across real processes: several producers and consumers, each a
//! separate worker process mapping one named segment; every message must be
//! delivered exactly once.

use std::time::{Duration, Instant};

use shmpool::ring::{Ring, RingError};
use shmpool::sync::SpinPolicy;
use shmpool::{Pool, Segment};

const PRODUCERS: u64 = 3;
const CONSUMERS: u64 = 3;
const PER_PRODUCER: u64 = 20_000;
/// Generous bound on how long any one process may take: a hang guard, not a
/// performance assertion.
const WATCHDOG: Duration = Duration::from_secs(120);

fn checksum(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
}

fn open_ring(name: &str) -> Ring {
    let seg = Segment::open(name).expect("open segment");
    Ring::named(&seg, "stress", 64, 48).expect("open ring")
}

/// Pushes `PER_PRODUCER` messages tagged with `id`, some one by one and some
/// in batches; returns the sum of their checksums.
fn produce(args: (String, u64)) -> u64 {
    let (name, id) = args;
    let ring = open_ring(&name);
    let mut sum = 0u64;
    let mut i = 0;
    while i < PER_PRODUCER {
        let batch = ((i % 7) + 1).min(PER_PRODUCER - i) as usize;
        let base = i;
        let pushed = ring
            .push_many_with(batch, None, SpinPolicy::DEFAULT, |j, buf| {
                let v = (id << 32) | (base + j as u64);
                buf[..8].copy_from_slice(&v.to_le_bytes());
                buf[8..16].copy_from_slice(&checksum(v).to_le_bytes());
                16
            })
            .expect("push");
        for j in 0..pushed as u64 {
            sum = sum.wrapping_add(checksum((id << 32) | (base + j)));
        }
        i += pushed as u64;
    }
    sum
}

/// Pops until the ring is closed and drained; returns (count, checksum sum,
/// xor of values) and fails on any corrupted message.
fn consume(name: String) -> (u64, u64, u64) {
    let ring = open_ring(&name);
    let (mut count, mut sum, mut xor) = (0u64, 0u64, 0u64);
    loop {
        let got = ring.pop_many_with(5, None, SpinPolicy::DEFAULT, |b| {
            let v = u64::from_le_bytes(b[..8].try_into().unwrap());
            let c = u64::from_le_bytes(b[8..16].try_into().unwrap());
            assert_eq!(c, checksum(v), "message corrupted in transit");
            count += 1;
            sum = sum.wrapping_add(c);
            xor ^= v;
        });
        match got {
            Ok(_) => {}
            Err(RingError::Closed) => return (count, sum, xor),
            Err(e) => panic!("pop failed: {e}"),
        }
    }
}

#[test]
fn every_message_is_delivered_exactly_once_across_processes() {
    let name = format!("ringtest-{}", std::process::id());
    let seg = Segment::create(&name, 8 << 20).unwrap();
    let ring = Ring::named(&seg, "stress", 64, 48).unwrap();
    let pool = Pool::builder().workers((PRODUCERS + CONSUMERS) as usize).build().unwrap();

    let consumers: Vec<_> = (0..CONSUMERS).map(|_| pool.submit(consume, name.clone()).unwrap()).collect();
    let producers: Vec<_> = (0..PRODUCERS).map(|id| pool.submit(produce, (name.clone(), id)).unwrap()).collect();

    let deadline = Instant::now() + WATCHDOG;
    let mut sent_sum = 0u64;
    for p in producers {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = p.wait_timeout(left).expect("watchdog: a producer hung").expect("producer failed");
        sent_sum = sent_sum.wrapping_add(r);
    }
    ring.close();
    let (mut count, mut sum, mut xor) = (0u64, 0u64, 0u64);
    let mut per_consumer = Vec::new();
    for c in consumers {
        let left = deadline.saturating_duration_since(Instant::now());
        let (n, s, x) = c.wait_timeout(left).expect("watchdog: a consumer hung").expect("consumer failed");
        per_consumer.push(n);
        count += n;
        sum = sum.wrapping_add(s);
        xor ^= x;
    }
    let mut expect_xor = 0;
    for id in 0..PRODUCERS {
        for i in 0..PER_PRODUCER {
            expect_xor ^= (id << 32) | i;
        }
    }
    assert_eq!(count, PRODUCERS * PER_PRODUCER, "count (per consumer: {per_consumer:?})");
    assert_eq!(sum, sent_sum, "checksum of delivered messages");
    assert_eq!(xor, expect_xor, "every message exactly once");
    assert!(ring.is_empty());
}
