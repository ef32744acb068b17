//! Worker logs under hostile use: a 1 MiB record, and a flood of them. The
//! worker never blocks, the pool stays usable and its segment is not eaten
//! by records waiting in the log ring, and the pool still shuts down.
//!
//! This binary's logger is installed here if nobody else installed one;
//! what arrives is checked only then.

use std::time::Duration;

use shmpool::Pool;

use crate::capture::CAPTURE;

fn flood(n: u32) -> u32 {
    let huge = "ü".repeat(1 << 19); // 1 MiB of two-byte characters
    for _ in 0..n {
        log::warn!(target: "flood", "{huge}");
    }
    log::info!(target: "flood-done", "done");
    n
}

fn len_of(v: Vec<u8>) -> u64 {
    v.len() as u64
}

#[test]
fn a_flood_of_1_mib_records_neither_blocks_nor_eats_the_segment() {
    let captured = log::set_logger(&CAPTURE).is_ok();
    if captured {
        log::set_max_level(log::LevelFilter::Info);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let pool = Pool::builder().workers(1).segment_size(64 << 20).build().unwrap();
        assert_eq!(pool.submit(flood, 300u32).unwrap().wait(), Ok(300));
        // 300 MiB of records went through a 64 MiB segment: it still has
        // room for a 16 MiB argument.
        assert_eq!(pool.submit(len_of, vec![5u8; 16 << 20]).unwrap().wait(), Ok(16 << 20));
        if captured {
            assert!(super::common::wait_for(|| CAPTURE.0.lock().unwrap().iter().any(|(t, _)| t == "flood-done")));
            let lines = CAPTURE.0.lock().unwrap().clone();
            let floods: Vec<&String> = lines.iter().filter(|(t, _)| t == "flood").map(|(_, m)| m).collect();
            assert!(!floods.is_empty(), "no flood record arrived");
            for m in &floods {
                assert!(m.ends_with("…[cut: 1048576 bytes]"), "a cut record ends with its marker");
                assert!(m.len() <= (64 << 10) + 200, "{} bytes", m.len());
            }
            drop(pool);
            let lines = CAPTURE.0.lock().unwrap().clone();
            let dropped: u64 = lines
                .iter()
                .filter(|(t, m)| t == "shmpool" && m.contains("were dropped"))
                .map(|(_, m)| m.split_whitespace().next().unwrap().parse::<u64>().unwrap())
                .sum();
            let floods = lines.iter().filter(|(t, _)| t == "flood").count() as u64;
            assert_eq!(floods + dropped, 300, "every record delivered (cut) or counted");
        }
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("hung"),
        Err(_) => panic!("failed (see the panic above)"),
    }
}
