//! Helpers shared by the integration tests.

use std::time::{Duration, Instant};

/// Polls `done` every 10 ms until it holds (true) or 30 s pass (false).
pub fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
