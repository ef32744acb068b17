//! Property tests: values of every size class cross a channel both ways
//! intact (or fail with a typed error), never a crash or a hang.
//!
//! Lengths straddle what the code knows: the slot payload (256 bytes, 192 of
//! archive inline), up to four slots, and powers of two up to ~300 KiB
//! (arena size classes). Content is random (from a seed, to keep the
//! generator fast at 300 KiB).

#[path = "common/values.rs"]
mod values;
use std::time::Duration;
use values::{bytes, lengths, text};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shmpool::{start, Channel, ChannelError};

fn echo_bytes(chan: Channel<Vec<u8>, Vec<u8>>, _: ()) {
    while let Ok(v) = chan.recv() {
        if chan.send(&v).is_err() {
            return;
        }
    }
}

fn echo_text(chan: Channel<String, String>, _: ()) {
    while let Ok(v) = chan.recv() {
        if chan.send(&v).is_err() {
            return;
        }
    }
}

/// Runs `f` with a 60 s watchdog (a hang fails the test; no time is asserted).
fn watchdog(f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("hung"),
        Err(_) => panic!("failed (see the panic above)"),
    }
}

/// Intact, or a typed error that says the value could not be archived.
fn check<T: PartialEq + std::fmt::Debug>(
    sent: Result<(), ChannelError>,
    back: impl FnOnce() -> Result<T, ChannelError>,
    value: &T,
) -> Result<(), TestCaseError> {
    match sent {
        Ok(()) => prop_assert_eq!(&back().map_err(|e| TestCaseError::fail(e.to_string()))?, value),
        Err(ChannelError::Encode(_)) => {}
        Err(e) => return Err(TestCaseError::fail(format!("untyped failure: {e}"))),
    }
    Ok(())
}

#[test]
fn bytes_of_every_size_class_round_trip() {
    watchdog(|| {
        let chan = start(echo_bytes, ()).unwrap();
        let cases = std::cell::Cell::new(0);
        let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
        runner
            .run(&(lengths(), any::<u64>()), |(len, seed)| {
                cases.set(cases.get() + 1);
                let v = bytes(len, seed);
                let sent = chan.send_timeout(&v, Duration::from_secs(20));
                check(sent, || chan.recv_timeout(Duration::from_secs(20)), &v)
            })
            .unwrap();
        assert!(cases.get() >= 256, "{} cases ran", cases.get());
    });
}

#[test]
fn text_of_every_size_class_round_trips() {
    watchdog(|| {
        let chan = start(echo_text, ()).unwrap();
        let cases = std::cell::Cell::new(0);
        let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
        runner
            .run(&(lengths(), any::<u64>()), |(len, seed)| {
                cases.set(cases.get() + 1);
                let s = text(len, seed);
                let sent = chan.send_timeout(&s, Duration::from_secs(20));
                check(sent, || chan.recv_timeout(Duration::from_secs(20)), &s)
            })
            .unwrap();
        assert!(cases.get() >= 256, "{} cases ran", cases.get());
    });
}
