//! A logger for tests that keeps every record it is given: (target, text).

use std::sync::Mutex;

/// The records logged so far.
pub struct Capture(pub Mutex<Vec<(String, String)>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        self.0.lock().unwrap().push((r.target().to_owned(), r.args().to_string()));
    }
    fn flush(&self) {}
}

/// The one capturing logger of a test binary (install it with `log::set_logger`).
pub static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));
