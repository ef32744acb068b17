//! Property test: `log` records of random lengths and contents from a pool
//! worker reach the parent's logger whole, or cut to the 64 KiB cap on a
//! character boundary with the marker `…[cut: N bytes]`.
//! (Its own test binary: it installs the process's logger.)

mod common;

#[path = "common/values.rs"]
#[allow(dead_code)]
mod values;
use values::text;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shmpool::Pool;

const CAP: usize = 64 << 10;

#[path = "common/capture.rs"]
mod capture;
use capture::CAPTURE;

fn log_text((seed, len): (u64, u64)) -> u64 {
    log::info!(target: "prop", "{}", text(len as usize, seed));
    seed
}

/// What the parent should receive for `message`.
fn expected(message: &str) -> String {
    if message.len() <= CAP {
        return message.to_owned();
    }
    let mut keep = CAP;
    while !message.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}…[cut: {} bytes]", &message[..keep], message.len())
}

fn length() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..1200, 400usize..520, (CAP - 64)..(CAP + 64), 0usize..(200 << 10)]
}

#[test]
fn records_of_random_lengths_and_contents_arrive() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let pool = Pool::builder().workers(1).build().unwrap();
        let mut runner = TestRunner::new(Config { cases: 128, failure_persistence: None, ..Config::default() });
        let result = runner.run(&(any::<u64>(), length()), |(seed, len)| {
            CAPTURE.0.lock().unwrap().retain(|(t, _)| t != "prop");
            prop_assert_eq!(pool.submit(log_text, (seed, len as u64)).unwrap().wait(), Ok(seed));
            prop_assert!(common::wait_for(|| CAPTURE.0.lock().unwrap().iter().any(|(t, _)| t == "prop")), "no record");
            let got = CAPTURE.0.lock().unwrap().iter().find(|(t, _)| t == "prop").unwrap().1.clone();
            let body = got.split_once(" UTC] ").map_or(got.as_str(), |(_, b)| b);
            prop_assert_eq!(body, expected(&text(len, seed)));
            Ok(())
        });
        let _ = tx.send(result.map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(r) => r.unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("hung"),
        Err(_) => panic!("failed (see the panic above)"),
    }
}
