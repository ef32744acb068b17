//! Micro-benchmarks of the building blocks, in one process:
//! `cargo bench --features criterion-benches`.
//!
//! The cross-process comparisons are `shmpool-bench`'s job; these isolate the
//! cost of one ring hand-off, one lock round, one arena allocation and one
//! archive access.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shmpool::ring::Ring;
use shmpool::Segment;

fn ring(c: &mut Criterion) {
    let seg = Segment::anonymous(8 << 20).unwrap();
    let ring = Ring::create(&seg, 1024, 64).unwrap();
    let mut out = Vec::with_capacity(64);
    c.bench_function("ring push+pop 16 B", |b| {
        b.iter(|| {
            ring.try_push(black_box(&[7u8; 16])).unwrap();
            ring.try_pop(&mut out).unwrap();
        })
    });
    c.bench_function("ring push+pop batch of 32 x 16 B", |b| {
        b.iter(|| {
            ring.try_push_many(32, |_, buf| {
                buf[..16].copy_from_slice(&[1u8; 16]);
                16
            })
            .unwrap();
            ring.try_pop_many(32, |bytes| {
                black_box(bytes);
            })
            .unwrap();
        })
    });
}

fn locks(c: &mut Criterion) {
    let seg = Segment::anonymous(8 << 20).unwrap();
    let m = seg.mutex("m").unwrap();
    let r = seg.rwlock("r").unwrap();
    let s = seg.spin_lock("s").unwrap();
    let a = seg.auth_lock("a").unwrap();
    c.bench_function("Mutex lock+unlock", |b| b.iter(|| drop(m.lock().unwrap())));
    c.bench_function("RwLock write+unlock", |b| b.iter(|| drop(r.write().unwrap())));
    c.bench_function("RwLock read+unlock", |b| b.iter(|| drop(r.read().unwrap())));
    c.bench_function("SpinLock lock+unlock", |b| b.iter(|| drop(s.lock().unwrap())));
    c.bench_function("AuthLock lock+unlock", |b| b.iter(|| drop(a.lock().unwrap())));
}

fn map(c: &mut Criterion) {
    let seg = Segment::anonymous(8 << 20).unwrap();
    for kind in [shmpool::LockKind::Mutex, shmpool::LockKind::RwLock] {
        let map = seg.map::<String, u64>(&format!("map-{kind:?}"), kind).unwrap();
        map.insert(&"k".to_owned(), &0).unwrap();
        c.bench_function(&format!("SharedMap<String, u64> get, {kind:?}"), |b| {
            b.iter(|| black_box(map.get(black_box("k")).unwrap().unwrap().to_native()))
        });
        c.bench_function(&format!("SharedMap<String, u64> update(+1), {kind:?}"), |b| {
            b.iter(|| black_box(map.update(black_box("k"), |old| old.unwrap_or(0) + 1).unwrap()))
        });
    }
}

fn arena(c: &mut Criterion) {
    let seg = Segment::anonymous(64 << 20).unwrap();
    for len in [64u64, 4096, 1 << 20] {
        c.bench_function(&format!("arena alloc+free {len} B"), |b| {
            b.iter(|| {
                let block = seg.alloc(black_box(len)).unwrap();
                // SAFETY: the block was never shared or referenced.
                unsafe { seg.free(block.offset) }.unwrap();
            })
        });
    }
}

fn archive(c: &mut Criterion) {
    let value: Vec<String> = (0..16).map(|i| format!("value number {i}")).collect();
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&value).unwrap();
    c.bench_function("archive access, validated (16 strings)", |b| {
        b.iter(|| black_box(rkyv::access::<rkyv::Archived<Vec<String>>, rkyv::rancor::Error>(&bytes).unwrap().len()))
    });
    c.bench_function("archive access, unchecked (16 strings)", |b| {
        // SAFETY: `bytes` was just produced by rkyv from a Vec<String>.
        b.iter(|| black_box(unsafe { rkyv::access_unchecked::<rkyv::Archived<Vec<String>>>(&bytes) }.len()))
    });
    c.bench_function("archive decode (16 strings)", |b| {
        b.iter(|| black_box(shmpool::fuzzing::access_archive::<Vec<String>>(&bytes).unwrap().len()))
    });
}

criterion_group!(benches, ring, locks, map, arena, archive);
criterion_main!(benches);
