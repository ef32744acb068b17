//! Shared list, map and object: in one process, from several processes at
//! once (no lost update), with type mismatches and a full segment.

use shmpool::sync::LockKind;
use shmpool::{Pool, Segment, SegmentError, SharedError, SharedMap};

const KINDS: [LockKind; 4] = [LockKind::Mutex, LockKind::RwLock, LockKind::Spin, LockKind::Auth];

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Default)]
struct Config {
    name: String,
    workers: u32,
    ratios: Vec<f64>,
}

#[test]
fn list_operations() {
    let seg = Segment::anonymous(4 << 20).unwrap();
    let list = seg.list::<String>("names", LockKind::RwLock).unwrap();
    assert!(list.is_empty());
    for i in 0..100 {
        assert_eq!(list.push(&format!("name-{i}")).unwrap(), i);
    }
    assert_eq!(list.len(), 100);
    assert_eq!(list.get(42).unwrap().as_str(), "name-42");
    list.set(42, &"forty-two".to_string()).unwrap();
    assert_eq!(list.get(42).unwrap().as_str(), "forty-two");
    assert_eq!(list.remove(0).unwrap(), "name-0");
    assert_eq!(list.get(0).unwrap().as_str(), "name-1");
    assert_eq!(list.pop().unwrap(), Some("name-99".to_string()));
    list.update(1, |s| s + "!").unwrap();
    assert_eq!(list.get(1).unwrap().as_str(), "name-2!");
    let all = list.to_vec().unwrap();
    assert_eq!(all.len(), 98);
    assert!(matches!(list.get(98), Err(SharedError::OutOfRange { index: 98, len: 98 })));
    // A second handle by name sees the same list.
    let again = seg.list::<String>("names", LockKind::RwLock).unwrap();
    assert_eq!(again.to_vec().unwrap(), all);
}

#[test]
fn map_operations() {
    let seg = Segment::anonymous(8 << 20).unwrap();
    let map = seg.map::<String, u64>("counts", LockKind::Mutex).unwrap();
    assert!(!map.insert(&"k".to_string(), &1).unwrap());
    assert_eq!(map.get("k").unwrap().unwrap().to_native(), 1);
    assert!(map.insert(&"k".to_string(), &2).unwrap(), "replaced");
    assert_eq!(map.update("k", |old| old.unwrap_or(0) + 1).unwrap(), 3);
    assert_eq!(map.update("new", |old| old.unwrap_or(0) + 1).unwrap(), 1);
    assert_eq!(map.remove("k").unwrap(), Some(3));
    assert_eq!(map.remove("k").unwrap(), None);
    assert!(map.get("k").unwrap().is_none());
    // Growth, tombstones and long keys.
    for i in 0..2000u64 {
        map.insert(&format!("key-{i}-{}", "x".repeat((i % 300) as usize)), &i).unwrap();
    }
    for i in (0..2000u64).step_by(3) {
        assert_eq!(map.remove(&*format!("key-{i}-{}", "x".repeat((i % 300) as usize))).unwrap(), Some(i));
    }
    for i in 0..2000u64 {
        let k = format!("key-{i}-{}", "x".repeat((i % 300) as usize));
        let got = map.get(&*k).unwrap().map(|v| v.to_native());
        assert_eq!(got, (i % 3 != 0).then_some(i), "{k}");
    }
    assert_eq!(map.len(), 1 + 2000 - 667);
    // Snapshot round trip (XME Monitor): bytes any process can read back.
    let bytes = map.to_bytes().unwrap();
    let mut entries = SharedMap::<String, u64>::from_snapshot(&bytes).unwrap();
    entries.sort();
    let mut expect = map.entries().unwrap();
    expect.sort();
    assert_eq!(entries, expect);
    let copy = seg.map::<String, u64>("copy", LockKind::RwLock).unwrap();
    copy.extend_from_snapshot(&bytes).unwrap();
    assert_eq!(copy.len(), map.len());
}

#[test]
fn object_operations() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let init = Config { name: "a".into(), workers: 2, ratios: vec![0.5] };
    let cfg = seg.object::<Config>("cfg", LockKind::Spin, &init).unwrap();
    assert_eq!(cfg.get().unwrap().workers, 2);
    assert_eq!(cfg.load().unwrap(), init);
    cfg.set(&Config { name: "b".into(), workers: 4, ratios: vec![] }).unwrap();
    assert_eq!(cfg.get().unwrap().name.as_str(), "b");
    let new = cfg.update(|mut c| {
        c.workers += 1;
        c
    });
    assert_eq!(new.unwrap().workers, 5);
    // Opening again does not reset it.
    let again = seg.object::<Config>("cfg", LockKind::Spin, &Config::default()).unwrap();
    assert_eq!(again.load().unwrap().workers, 5);
}

#[test]
fn opening_with_another_type_or_lock_is_a_type_mismatch() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    seg.list::<String>("l", LockKind::Mutex).unwrap();
    let mismatch = |r: Result<(), SharedError>| {
        assert!(matches!(r, Err(SharedError::Segment(SegmentError::TypeMismatch { .. }))), "{r:?}")
    };
    mismatch(seg.list::<u64>("l", LockKind::Mutex).map(drop));
    mismatch(seg.list::<String>("l", LockKind::RwLock).map(drop));
    mismatch(seg.map::<String, u64>("l", LockKind::Mutex).map(drop));
    seg.map::<String, u64>("m", LockKind::Mutex).unwrap();
    mismatch(seg.map::<String, u32>("m", LockKind::Mutex).map(drop));
    mismatch(seg.object::<u64>("m", LockKind::Mutex, &0).map(drop));
}

#[test]
fn a_full_segment_is_out_of_memory_and_leaves_the_container_unchanged() {
    let seg = Segment::anonymous(512 << 10).unwrap();
    let map = seg.map::<String, Vec<u8>>("m", LockKind::Mutex).unwrap();
    map.insert(&"a".to_string(), &vec![1u8; 1000]).unwrap();
    let list = seg.list::<Vec<u8>>("l", LockKind::RwLock).unwrap();
    list.push(&vec![2u8; 10]).unwrap();
    let big = vec![0u8; 1 << 20];
    let oom = |r: Result<(), SharedError>| {
        assert!(matches!(r, Err(SharedError::Segment(SegmentError::OutOfMemory { .. }))), "{r:?}")
    };
    oom(map.insert(&"a".to_string(), &big).map(drop));
    oom(map.insert(&"b".to_string(), &big).map(drop));
    oom(list.push(&big).map(drop));
    oom(list.set(0, &big));
    assert_eq!(map.len(), 1);
    assert_eq!(map.get("a").unwrap().unwrap().len(), 1000);
    assert!(map.get("b").unwrap().is_none());
    assert_eq!(list.to_vec().unwrap(), vec![vec![2u8; 10]]);
}

fn kind(code: u8) -> LockKind {
    KINDS[code as usize]
}

/// In a worker: add `times` to counter "k" of the map, push `times` entries
/// to the list and bump the object, each op atomic under the container lock.
fn hammer(args: (String, u8, u32, u32)) -> u32 {
    let (name, k, id, times) = args;
    let seg = if name.is_empty() { shmpool::pool_segment().unwrap() } else { Segment::open(&name).unwrap() };
    let map = seg.map::<String, u64>("counts", kind(k)).unwrap();
    let list = seg.list::<u32>("log", kind(k)).unwrap();
    let obj = seg.object::<u64>("total", kind(k), &0).unwrap();
    for i in 0..times {
        map.update("k", |old| old.unwrap_or(0) + 1).unwrap();
        list.push(&(id * 1_000_000 + i)).unwrap();
        obj.update(|n| n + 1).unwrap();
    }
    times
}

fn check(seg: &Segment, k: LockKind, procs: u32, times: u32) {
    let map = seg.map::<String, u64>("counts", k).unwrap();
    assert_eq!(map.get("k").unwrap().unwrap().to_native(), (procs * times) as u64, "{k:?}: map lost an update");
    let mut log = seg.list::<u32>("log", k).unwrap().to_vec().unwrap();
    log.sort_unstable();
    let mut expect: Vec<u32> = (0..procs).flat_map(|p| (0..times).map(move |i| p * 1_000_000 + i)).collect();
    expect.sort_unstable();
    assert_eq!(log, expect, "{k:?}: list lost or duplicated an element");
    assert_eq!(seg.object::<u64>("total", k, &0).unwrap().load().unwrap(), (procs * times) as u64);
}

#[test]
fn three_processes_update_every_container_kind_without_losing_updates() {
    const PROCS: u32 = 3;
    const TIMES: u32 = 300;
    let pool = Pool::builder().workers(PROCS as usize).build().unwrap();
    for (code, &k) in KINDS.iter().enumerate() {
        // A named segment, opened by name in each worker.
        let name = format!("sharedtest-{code}-{}", std::process::id());
        let seg = Segment::create(&name, 16 << 20).unwrap();
        if k == LockKind::Auth {
            // Create the containers here, then authorise the workers.
            seg.map::<String, u64>("counts", k).unwrap();
            seg.list::<u32>("log", k).unwrap();
            seg.object::<u64>("total", k, &0).unwrap();
            authorise(&seg, &pool.worker_pids());
        }
        let tickets: Vec<_> =
            (0..PROCS).map(|id| pool.submit(hammer, (name.clone(), code as u8, id, TIMES)).unwrap()).collect();
        for t in tickets {
            assert_eq!(t.wait(), Ok(TIMES));
        }
        check(&seg, k, PROCS, TIMES);
    }
}

#[test]
fn containers_in_the_pool_segment_are_reachable_from_tasks() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let tickets: Vec<_> = (0..2).map(|id| pool.submit(hammer, (String::new(), 0u8, id, 200)).unwrap()).collect();
    for t in tickets {
        assert_eq!(t.wait(), Ok(200));
    }
    check(pool.segment(), LockKind::Mutex, 2, 200);
}

/// Adds `pids` as operators of the auth locks of the three containers.
fn authorise(seg: &Segment, pids: &[u32]) {
    // The containers' locks are not named locks; reach them through a helper
    // that every container exposes.
    for pid in pids {
        seg.map::<String, u64>("counts", LockKind::Auth).unwrap().add_operator(*pid).unwrap();
        seg.list::<u32>("log", LockKind::Auth).unwrap().add_operator(*pid).unwrap();
        seg.object::<u64>("total", LockKind::Auth, &0).unwrap().add_operator(*pid).unwrap();
    }
}
