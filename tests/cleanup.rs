//! Dropping a pool leaves no process and no shared-memory entry behind.
//! (Its own test binary, so no other test creates segments meanwhile.)

use shmpool::{OnWorkerDeath, Pool, Segment, SegmentError};

fn square(x: u64) -> u64 {
    x * x
}

fn shmpool_entries() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("shmpool"))
                // The other tests here create and remove named segments of their own.
                .filter(|n| !n.contains("crashtest-") && !n.contains("livetest-"))
                .collect()
        })
        .unwrap_or_default()
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn dropping_a_pool_reaps_workers_and_leaves_no_segment() {
    let before = shmpool_entries();
    let pool = Pool::builder().workers(3).build().unwrap();
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| process_exists(p)));
    let out: Vec<u64> = pool.map(square, 0..100u64).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(out[10], 100);
    // A ticket that is never waited for must not hold shutdown up.
    let _pending = pool.submit(square, 5u64).unwrap();
    drop(_pending);
    drop(pool);
    for pid in pids {
        // Reaped, not zombies: /proc/<pid> is gone.
        assert!(!process_exists(pid), "worker {pid} still exists after drop");
    }
    assert_eq!(shmpool_entries(), before, "a /dev/shm entry was left behind");
}

#[test]
fn terminate_kills_at_once() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let pids = pool.worker_pids();
    pool.terminate();
    assert!(!pool.is_alive());
    assert!(pids.iter().all(|&p| !process_exists(p)));
    assert!(matches!(pool.submit(square, 1u64), Err(shmpool::Error::Closed)));
}

/// In a worker: creates the named segment `name` and dies with SIGKILL,
/// leaving it behind as a crash would.
fn create_and_die(name: String) -> u64 {
    let seg = Segment::create(&name, 1 << 20).unwrap();
    std::mem::forget(seg);
    // SAFETY: sending a signal to ourselves.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!()
}

#[test]
fn segments_left_by_a_killed_creator_are_found_and_removed() {
    let pool = Pool::builder().workers(1).on_worker_death(OnWorkerDeath::Report).build().unwrap();
    let names: Vec<String> = (0..3).map(|i| format!("crashtest-{i}-{}", std::process::id())).collect();
    for name in &names {
        assert!(pool.submit(create_and_die, name.clone()).unwrap().wait().is_err());
        assert!(std::path::Path::new(&format!("/dev/shm/shmpool.{name}")).exists(), "the crash left it behind");
    }
    let listed = shmpool::list_named().unwrap();
    for name in &names {
        let info = listed.iter().find(|s| &s.name == name).expect("listed");
        assert!(info.is_stale(), "{info:?}");
        assert!(!info.creator_alive);
    }
    // 1. Creating the name again replaces the stale segment.
    let again = Segment::create(&names[0], 1 << 20).unwrap();
    assert_eq!(again.creator_pid(), std::process::id());
    drop(again);
    // 2. Opening a stale one finds nothing (and removes it).
    assert!(matches!(Segment::open(&names[1]), Err(SegmentError::NotFound(_))));
    // 3. cleanup_stale() removes the rest, and nothing of ours is left.
    let removed = shmpool::cleanup_stale().unwrap();
    assert!(removed.contains(&names[2]), "{removed:?}");
    for name in &names {
        assert!(!std::path::Path::new(&format!("/dev/shm/shmpool.{name}")).exists(), "{name} left behind");
    }
}

#[test]
fn a_live_segment_is_never_removed_as_stale() {
    let name = format!("livetest-{}", std::process::id());
    let seg = Segment::create(&name, 1 << 20).unwrap();
    assert!(!shmpool::cleanup_stale().unwrap().contains(&name));
    assert!(matches!(Segment::create(&name, 1 << 20), Err(SegmentError::AlreadyExists(_))));
    assert!(Segment::open(&name).is_ok());
    drop(seg);
}
