//! Log forwarding: `log` records emitted in a worker (pool worker, remote
//! object, channel child) travel through a log ring in the segment to the
//! parent, where a background thread re-emits them through the parent's
//! logger, tagged with the worker's pid and the time it logged.
//!
//! The worker never blocks on logging: when the ring is full the record is
//! dropped and counted, and the parent reports how many were lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::codec::{self, Scratch};
use crate::ring::{Ring, RingError};
use crate::segment::{Segment, SegmentError};
use crate::sync::SpinPolicy;
use crate::sys::process;
use crate::wait::Deadline;
use crate::wire::FrameBuf;

/// Records the ring holds before workers start dropping.
pub(crate) const LOG_SLOTS: u32 = 1024;
/// Bytes per record slot; a longer message is cut to fit.
pub(crate) const LOG_SLOT: u32 = 512;

/// One forwarded record.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    level: u8,
    pid: u32,
    /// Microseconds since the Unix epoch, when the worker logged it.
    micros: u64,
    line: u32,
    target: String,
    file: String,
    message: String,
}

/// Creates the log ring and its dropped-records counter in `seg`.
pub(crate) fn create(seg: &Segment) -> Result<(Ring, u64), SegmentError> {
    let ring = Ring::create(seg, LOG_SLOTS, LOG_SLOT)?;
    let dropped = seg.alloc_zeroed(8)?;
    Ok((ring, dropped.offset))
}

fn level_code(l: log::Level) -> u8 {
    l as u8
}

fn level_from(code: u8) -> log::Level {
    match code {
        1 => log::Level::Error,
        2 => log::Level::Warn,
        3 => log::Level::Info,
        4 => log::Level::Debug,
        _ => log::Level::Trace,
    }
}

/// Encodes `filter` (a `LevelFilter`) for the control block.
pub(crate) fn filter_code(filter: log::LevelFilter) -> u64 {
    filter as u64
}

fn filter_from(code: u64) -> log::LevelFilter {
    match code {
        0 => log::LevelFilter::Off,
        1 => log::LevelFilter::Error,
        2 => log::LevelFilter::Warn,
        3 => log::LevelFilter::Info,
        4 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// The logger a worker installs: records go into the log ring.
struct Forwarder {
    seg: Segment,
    ring: Ring,
    dropped: u64,
}

impl log::Log for Forwarder {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let mut r = Record {
            level: level_code(record.level()),
            pid: process::current_pid(),
            micros,
            line: record.line().unwrap_or(0),
            target: record.target().to_owned(),
            file: record.file().unwrap_or("").to_owned(),
            message: record.args().to_string(),
        };
        let mut scratch = Scratch::new();
        let cap = self.ring.payload_capacity();
        let len = loop {
            match codec::encode_into(&r, &mut scratch.0[..cap]) {
                Ok(n) => break Some(n),
                Err(codec::CodecError::TooSmall { .. }) if !r.message.is_empty() => {
                    // Cut the message (on a char boundary) until it fits.
                    let mut keep = r.message.len().saturating_sub(r.message.len() / 4 + 16);
                    while !r.message.is_char_boundary(keep) {
                        keep -= 1;
                    }
                    r.message.truncate(keep);
                    r.message.push('…');
                    if keep == 0 {
                        r.message.clear();
                    }
                }
                Err(_) => break None,
            }
        };
        let pushed = len.is_some_and(|n| self.ring.try_push(&scratch.0[..n]).is_ok());
        if !pushed {
            if let Ok(c) = self.seg.get::<AtomicU64>(self.dropped) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {}
}

/// In a worker: routes `log` records to the parent. Returns false if the
/// program already installed a logger of its own (which then stays).
pub(crate) fn install_forwarder(seg: &Segment, ring: u64, dropped: u64, level: u64) -> bool {
    let Ok(ring) = Ring::open(seg, ring) else { return false };
    let forwarder = Forwarder { seg: seg.clone(), ring, dropped };
    // Leaked on purpose: a logger lives as long as the process.
    if log::set_logger(Box::leak(Box::new(forwarder))).is_err() {
        return false;
    }
    log::set_max_level(filter_from(level));
    true
}

/// The parent's side: a thread that re-emits forwarded records until the
/// ring is closed and drained.
pub(crate) struct Receiver {
    ring: Ring,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub(crate) fn start(seg: &Segment, ring: Ring, dropped: u64) -> std::io::Result<Receiver> {
        let (seg, r) = (seg.clone(), ring.clone());
        let thread =
            std::thread::Builder::new().name("shmpool-log".into()).spawn(move || receive(&seg, &r, dropped))?;
        Ok(Receiver { ring, thread: Some(thread) })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.ring.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn receive(seg: &Segment, ring: &Ring, dropped: u64) {
    let mut reported = 0u64;
    let mut buf = FrameBuf::for_ring(ring, 1);
    loop {
        let mut len = 0;
        let got =
            ring.pop_many_with(1, Deadline::after(Duration::from_millis(200)).instant(), SpinPolicy::SLEEP, |b| {
                len = buf.fill(0, b);
            });
        if got.is_ok() {
            if let Ok(r) = codec::decode::<Record>(&buf.slot(0)[..len]) {
                emit(&r);
            }
        }
        let lost = seg.get::<AtomicU64>(dropped).map_or(0, |c| c.load(Ordering::Relaxed));
        if lost > reported {
            log::warn!(target: "shmpool", "{} log records from workers were dropped: the log ring was full", lost - reported);
            reported = lost;
        }
        if !matches!(got, Ok(_) | Err(RingError::Timeout)) {
            return;
        }
    }
}

/// Re-emits `r` through this process's logger.
fn emit(r: &Record) {
    let secs = r.micros / 1_000_000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let when = format!("{h:02}:{m:02}:{s:02}.{:06}", r.micros % 1_000_000);
    log::logger().log(
        &log::Record::builder()
            .level(level_from(r.level))
            .target(&r.target)
            .file(Some(&r.file).filter(|f| !f.is_empty()).map(String::as_str))
            .line(Some(r.line).filter(|&l| l != 0))
            .args(format_args!("[worker {} at {when} UTC] {}", r.pid, r.message))
            .build(),
    );
}
