//! Dropping a pool leaves no process and no shared-memory entry behind.
//! (Its own test binary, so no other test creates segments meanwhile.)

use shmpool::Pool;

fn square(x: u64) -> u64 {
    x * x
}

fn shmpool_entries() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("shmpool"))
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
