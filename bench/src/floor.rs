//! The raw floors: what the hardware allows between two processes, measured
//! in the same run as everything else.

use std::time::Duration;

use crate::common::Latency;

/// The floors of one run.
pub struct Floor {
    /// A bare cache-line ping-pong between two processes (both spinning on
    /// one shared line): the round trip no transport can beat.
    pub round_trip: Latency,
    /// One `memcpy` of each size in this process: (bytes, median time).
    pub memcpy: Vec<(usize, Duration)>,
}

impl Floor {
    /// The median time of one memcpy of `bytes`, when measured.
    pub fn memcpy_of(&self, bytes: usize) -> Option<Duration> {
        self.memcpy.iter().find(|(b, _)| *b == bytes).map(|(_, d)| *d)
    }
}
