//! The arena allocator: freed large blocks merge and are reused, random
//! workloads over every size class never run out below 40% occupancy nor
//! hand a block out twice, from many threads, and a process SIGKILLed in the
//! middle of allocating leaves the arena usable.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmpool::segment::Block;
use shmpool::{Segment, SegmentError};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// splitmix64: a deterministic generator, no dependency needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Log-uniform in `lo..hi`.
    fn log_between(&mut self, lo: u64, hi: u64) -> u64 {
        let (a, b) = ((lo.max(1) as f64).ln(), (hi as f64).ln());
        let x = a + (b - a) * (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (x.exp() as u64).clamp(lo, hi - 1)
    }

    /// A length from 0 B to `max`: tiny, small-class, large, or one that
    /// straddles a boundary the allocator knows (class edges, the small
    /// limit of 64 KiB with its 16-byte header, the chunk size).
    fn size(&mut self, max: u64) -> u64 {
        const EDGES: [u64; 8] = [0, 48, 64 * KIB - 16, 64 * KIB, MIB - 48, MIB, 80 * KIB - 16, 4096];
        match self.below(8) {
            0 => self.below(256),
            1 | 2 => self.log_between(256, 64 * KIB),
            3 => {
                let e = EDGES[self.below(EDGES.len() as u64) as usize];
                (e + self.below(3)).saturating_sub(1)
            }
            _ => self.log_between(64 * KIB, max),
        }
    }
}

/// The block's payload as words. Mutable from a shared segment: what is
/// borrowed is the block, which the calling test owns.
#[allow(clippy::mut_from_ref)]
fn words(seg: &Segment, b: Block) -> &mut [u64] {
    let p = seg.ptr(b.offset, b.capacity).unwrap();
    // SAFETY: the test owns the block (allocated, not yet freed); 16-byte
    // aligned, in bounds (checked by ptr). One such slice exists at a time.
    unsafe { std::slice::from_raw_parts_mut(p.cast::<u64>(), (b.capacity / 8) as usize) }
}

/// Fills the whole block with a pattern unique to `seed`.
fn fill(seg: &Segment, b: Block, seed: u64) {
    for (i, w) in words(seg, b).iter_mut().enumerate() {
        *w = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Checks the pattern `fill` wrote; says where it differs.
fn check(seg: &Segment, b: Block, seed: u64) {
    let bad =
        words(seg, b).iter().enumerate().position(|(i, &w)| w != seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    assert!(bad.is_none(), "block {b:?} (seed {seed:#x}) overwritten at word {bad:?}");
}

/// Frees a block the test owns.
fn free(seg: &Segment, offset: u64) -> Result<(), SegmentError> {
    // SAFETY: the tests free only blocks they allocated and no longer use
    // (or offsets that are not blocks, which must be refused).
    unsafe { seg.free(offset) }
}

/// Records `b` as live; panics if it overlaps a live block.
fn claim(live: &mut BTreeMap<u64, u64>, b: Block) {
    let end = b.offset + b.capacity;
    if let Some((&o, &e)) = live.range(..end).next_back() {
        assert!(e <= b.offset, "block {b:?} overlaps live block {o}..{e}");
    }
    live.insert(b.offset, end);
}

#[test]
fn a_freed_large_block_is_merged_and_reused() {
    // The reported case: 30 MiB out and back, then 33 MiB of a 64 MiB segment.
    let seg = Segment::anonymous(64 * MIB).unwrap();
    let small = seg.alloc(100).unwrap();
    let a = seg.alloc(30 * MIB).unwrap();
    free(&seg, a.offset).unwrap();
    let b = seg.alloc(33 * MIB).unwrap();
    assert!(b.capacity >= 33 * MIB);
    free(&seg, b.offset).unwrap();
    // Three neighbours freed in every order merge into one.
    let parts: Vec<Block> = (0..3).map(|_| seg.alloc(18 * MIB).unwrap()).collect();
    for i in [0, 2, 1] {
        free(&seg, parts[i].offset).unwrap();
    }
    let whole = seg.alloc(56 * MIB).unwrap();
    free(&seg, whole.offset).unwrap();
    free(&seg, small.offset).unwrap();
    assert!(seg.available() >= 60 * MIB, "{}", seg.available());
}

#[test]
fn large_blocks_refuse_double_free_and_foreign_offsets() {
    let seg = Segment::anonymous(16 * MIB).unwrap();
    let a = seg.alloc(MIB).unwrap();
    let b = seg.alloc(MIB).unwrap();
    assert_eq!(seg.block_capacity(a.offset).unwrap(), a.capacity);
    assert!(matches!(free(&seg, a.offset + 64), Err(SegmentError::Corrupt(_))));
    // A forged large-block tag inside a's payload: its neighbours disagree.
    let forged = a.offset + 4096;
    let w = words(&seg, a);
    w[(4096 - 16) / 8] = 0x1A46_0001;
    w[(4096 - 48) / 8] = 4096; // prev_size
    w[(4096 - 40) / 8] = 8192; // size
    assert!(matches!(free(&seg, forged), Err(SegmentError::Corrupt(_))));
    free(&seg, a.offset).unwrap();
    assert!(matches!(free(&seg, a.offset), Err(SegmentError::Corrupt(_))), "double free");
    assert!(matches!(seg.block_capacity(a.offset), Err(SegmentError::Corrupt(_))));
    // The arena still works, and a is reused.
    let c = seg.alloc(MIB).unwrap();
    assert_eq!(c.offset, a.offset);
    let z = seg.alloc_zeroed(MIB).unwrap();
    free(&seg, c.offset).unwrap();
    free(&seg, b.offset).unwrap();
    free(&seg, z.offset).unwrap();
    let z = seg.alloc_zeroed(3 * MIB).unwrap();
    assert!(words(&seg, z).iter().all(|&w| w == 0), "a reused block comes back zeroed");
}

#[test]
fn random_sizes_below_forty_percent_never_run_out() {
    let size = 64 * MIB;
    let seg = Segment::anonymous(size).unwrap();
    let mut rng = Rng(0x5EED);
    let mut live: Vec<(Block, u64)> = Vec::new();
    let mut ranges = BTreeMap::new();
    let mut live_bytes = 0;
    let mut largest = 0;
    for step in 0..6000u64 {
        let len = rng.size(4 * MIB);
        // Free at random, and until the new block keeps us at or below 40%.
        while !live.is_empty() && (rng.below(2) == 0 || live_bytes + len + 64 * KIB > size * 2 / 5) {
            let (b, seed) = live.swap_remove(rng.below(live.len() as u64) as usize);
            check(&seg, b, seed);
            ranges.remove(&b.offset);
            live_bytes -= b.capacity;
            free(&seg, b.offset).unwrap();
            if rng.below(3) > 0 {
                break;
            }
        }
        let zeroed = rng.below(4) == 0;
        let b = match if zeroed { seg.alloc_zeroed(len) } else { seg.alloc(len) } {
            Ok(b) => b,
            Err(e) => panic!("step {step}: {len} bytes with {live_bytes} live: {e}"),
        };
        assert!(b.capacity >= len && b.offset % 16 == 0);
        assert_eq!(seg.block_capacity(b.offset).unwrap(), b.capacity);
        if zeroed {
            assert!(words(&seg, b).iter().all(|&w| w == 0), "step {step}: alloc_zeroed gave dirty bytes");
        }
        claim(&mut ranges, b);
        let seed = rng.next();
        fill(&seg, b, seed);
        live_bytes += b.capacity;
        largest = largest.max(len);
        live.push((b, seed));
    }
    assert!(largest > 3 * MIB);
    for (b, seed) in live {
        check(&seg, b, seed);
        free(&seg, b.offset).unwrap();
    }
    // Everything large merged back: a block of most of the segment fits.
    let big = seg.alloc(size / 2).unwrap();
    free(&seg, big.offset).unwrap();
}

#[test]
fn threads_never_get_the_same_block() {
    let seg = Segment::anonymous(64 * MIB).unwrap();
    let ranges = Arc::new(Mutex::new(BTreeMap::new()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (seg, ranges) = (seg.clone(), ranges.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(t + 1);
                let mut live: Vec<(Block, u64)> = Vec::new();
                for _ in 0..1500 {
                    if live.len() >= 6 || (!live.is_empty() && rng.below(2) == 0) {
                        let (b, seed) = live.swap_remove(rng.below(live.len() as u64) as usize);
                        check(&seg, b, seed);
                        ranges.lock().unwrap().remove(&b.offset);
                        free(&seg, b.offset).unwrap();
                    }
                    let b = seg.alloc(rng.size(MIB)).unwrap();
                    claim(&mut ranges.lock().unwrap(), b);
                    let seed = rng.next();
                    fill(&seg, b, seed);
                    live.push((b, seed));
                }
                for (b, seed) in live {
                    check(&seg, b, seed);
                    ranges.lock().unwrap().remove(&b.offset);
                    free(&seg, b.offset).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

const CHILD_ENV: &str = "SHMPOOL_ARENA_CHILD";

/// Run as a child process by `a_process_killed_while_allocating_...`:
/// allocates and frees in a loop until killed (or for a minute, its own
/// watchdog). A no-op in a normal test run.
#[test]
fn child_churns_the_arena() {
    let Ok(name) = std::env::var(CHILD_ENV) else { return };
    let seg = Segment::open(&name).unwrap();
    let (progress, _) = seg.named("progress", 1, 1, 8, |_| Ok(())).unwrap();
    let progress = seg.get::<AtomicU64>(progress.offset).unwrap();
    let mut rng = Rng(std::process::id() as u64);
    let mut live: Vec<Block> = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if live.len() >= 2 || (!live.is_empty() && rng.below(2) == 0) {
            let b = live.swap_remove(rng.below(live.len() as u64) as usize);
            free(&seg, b.offset).unwrap();
        }
        // Mostly large blocks, which take the heap lock; now and then a new
        // small chunk.
        let len = if rng.below(8) == 0 { rng.below(64 * KIB) } else { rng.log_between(64 * KIB, 256 * KIB) };
        let b = seg.alloc(len).unwrap();
        // Touch the ends only: most of the time goes to the allocator.
        words(&seg, b)[0] = 1;
        live.push(b);
        progress.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn a_process_killed_while_allocating_leaves_the_arena_usable() {
    let name = format!("arenatest-kill-{}", std::process::id());
    let seg = Segment::create(&name, 64 * MIB).unwrap();
    let (progress, _) = seg.named("progress", 1, 1, 8, |_| Ok(())).unwrap();
    let progress = seg.get::<AtomicU64>(progress.offset).unwrap();
    // Watchdog: no child loop may hang the test run.
    let done = Arc::new(AtomicBool::new(false));
    let watch = done.clone();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(300);
        while !watch.load(Ordering::Relaxed) {
            if Instant::now() > until {
                eprintln!("watchdog: the kill test did not finish");
                std::process::exit(101);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let mut rng = Rng(7);
    // The parent's own blocks, which no child may ever be given.
    let mut mine: Vec<(Block, u64)> = Vec::new();
    for round in 0..30 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_churns_the_arena", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &name)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let target = progress.load(Ordering::Relaxed) + 20 + rng.below(300);
        while progress.load(Ordering::Relaxed) < target {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("round {round}: child exited early: {status}");
            }
            // The parent allocates meanwhile, contending for the lock.
            let b = seg.alloc(rng.log_between(64 * KIB, 2 * MIB)).unwrap();
            let seed = rng.next();
            fill(&seg, b, seed);
            mine.push((b, seed));
            if mine.len() > 4 {
                let (b, seed) = mine.remove(0);
                check(&seg, b, seed);
                free(&seg, b.offset).unwrap();
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for &(b, seed) in &mine {
            check(&seg, b, seed);
        }
    }
    // What the children held when killed is lost (at most 2 blocks of
    // 256 KiB each, now and then a chunk); the rest merged back.
    for (b, seed) in mine {
        check(&seg, b, seed);
        free(&seg, b.offset).unwrap();
    }
    let big = seg.alloc(24 * MIB).unwrap();
    fill(&seg, big, 1);
    check(&seg, big, 1);
    free(&seg, big.offset).unwrap();
    done.store(true, Ordering::Relaxed);
}
