//! One-way messages at 8 B, 4 KiB and 1 MiB: shmpool channel vs iceoryx2
//! publish-subscribe vs ipc-channel, latency and throughput.

use std::time::Duration;

use crate::common::{BoxResult, Latency, Mode};
use crate::floor::Floor;
use crate::report::Section;

/// Message sizes of the one-way rows.
pub const SIZES: [usize; 3] = [8, 4 << 10, 1 << 20];

/// One-way latency of one transport at one size.
pub struct OneWayLatency {
    pub transport: String,
    pub bytes: usize,
    pub latency: Latency,
}

/// One-way throughput of one transport at one size.
pub struct OneWayRate {
    pub transport: String,
    pub bytes: usize,
    pub messages_per_second: f64,
    pub cpu_per_message: Option<Duration>,
}

/// Everything the one-way section measured.
pub struct OneWay {
    pub latency: Vec<OneWayLatency>,
    pub throughput: Vec<OneWayRate>,
}

pub fn measure(_mode: Mode) -> BoxResult<OneWay> {
    Ok(OneWay { latency: Vec::new(), throughput: Vec::new() })
}

pub fn sections(_result: &OneWay, _floor: &Floor) -> Vec<Section> {
    Vec::new()
}

/// Entry point of this module's child processes (`--peer oneway-...`).
pub fn run_peer(role: &str, _args: &[String]) -> BoxResult<()> {
    Err(format!("unknown peer role {role}").into())
}
