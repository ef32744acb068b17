//! A watchdog for tests that could hang: if the guard is not dropped within
//! the limit, the whole test binary exits with a message saying which test
//! hung (a hang is a failure, never a stuck CI job).

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

/// Cancels the watchdog when dropped.
pub struct Watchdog(#[allow(dead_code)] mpsc::Sender<()>);

/// Exits the process if the returned guard still lives after `limit`.
pub fn watchdog(what: &'static str, limit: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            // Not eprintln!: the harness captures that, and the exit would lose it.
            let _ = writeln!(std::io::stderr(), "watchdog: {what} still running after {limit:?}: exiting");
            std::process::exit(99);
        }
    });
    Watchdog(tx)
}
