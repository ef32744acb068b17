//! Log forwarding: `log` records emitted in a worker (pool worker, remote
//! object, channel child) travel through a log ring in the segment to the
//! parent, where a background thread re-emits them through the parent's
//! logger, tagged with the worker's pid and the time it logged.
//!
//! Records are frames of the one wire format ([`crate::wire`]): a record
//! that fits a slot travels inline, a longer one in an arena block. A
//! message longer than [`MAX_MESSAGE`] bytes (64 KiB) is cut on a character
//! boundary and ends with the marker `…[cut: N bytes]` (N: its full length);
//! so is a long record while [`BLOCK_BUDGET`] bytes of records are already
//! waiting in blocks (cut to fit a slot then).
//!
//! The worker never blocks on logging: when the ring is full the record is
//! dropped and counted. The parent reports every loss through its logger
//! (target `shmpool`): records dropped, records cut, records its own logger
//! panicked on. If the parent's thread stops for any other reason, the
//! logger gets one record saying why, the ring is closed (workers then count
//! their records as dropped, and the count is reported when the pool drops),
//! and nothing waits on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::codec;
use crate::ring::{Ring, RingError};
use crate::segment::{Segment, SegmentError, ShmSafe};
use crate::sync::SpinPolicy;
use crate::sys::process;
use crate::wait::{self, Deadline};
use crate::wire::{self, Body, FrameBuf, FrameHeader};

/// Records the ring holds before workers start dropping.
pub(crate) const LOG_SLOTS: u32 = 1024;
/// Bytes per record slot; a longer record travels in an arena block.
pub(crate) const LOG_SLOT: u32 = 512;
/// Longest message a record carries, in bytes: a longer one is cut (on a
/// character boundary) and marked `…[cut: N bytes]`.
pub(crate) const MAX_MESSAGE: usize = 64 << 10;
/// Longest target or file name a record carries, in bytes (cut, marked `…`).
const MAX_FIELD: usize = 256;
/// Bytes of arena blocks that records waiting in the ring may hold at once:
/// past it, a long record is cut to fit a slot, so that a flood of long
/// records never takes the segment's memory from tasks and messages.
pub(crate) const BLOCK_BUDGET: u64 = 4 << 20;
/// How long the parent's thread sleeps before looking at the counters.
const REPORT_EVERY: Duration = Duration::from_millis(200);

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

/// What workers count for the parent to report, in the segment.
#[repr(C)]
#[derive(Debug, Default)]
struct Counters {
    /// Records lost: the ring was full or closed, or the record could not
    /// be framed at all.
    dropped: AtomicU64,
    /// Records whose message was cut (too long, or over the block budget).
    cut: AtomicU64,
    /// Archive bytes of records now in arena blocks (added by the worker
    /// when it frames one, taken off by the parent once it is read).
    in_blocks: AtomicU64,
}

// SAFETY: `#[repr(C)]`, atomics only: no pointers, no Drop, valid for any
// bit pattern.
unsafe impl ShmSafe for Counters {}

/// Creates the log ring and its counters in `seg`; returns the ring and the
/// counters' offset (the control block's `log_dropped`).
pub(crate) fn create(seg: &Segment) -> Result<(Ring, u64), SegmentError> {
    let ring = Ring::create(seg, LOG_SLOTS, LOG_SLOT)?;
    let counters = seg.alloc_zeroed(std::mem::size_of::<Counters>() as u64)?;
    Ok((ring, counters.offset))
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

/// The marker that ends a cut message of `full` bytes.
fn cut_marker(full: usize) -> String {
    format!("…[cut: {full} bytes]")
}

/// The longest prefix of `s` of at most `max` bytes ending on a char boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut keep = max.min(s.len());
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    &s[..keep]
}

/// Cuts `s` to at most `max` bytes (on a char boundary) and appends `marker`.
fn clip(s: &mut String, max: usize, marker: &str) {
    let keep = prefix(s, max).len();
    s.truncate(keep);
    s.push_str(marker);
}

fn sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.saturating_sub(n)));
}

thread_local! {
    /// Set while this thread forwards a record: a record logged from inside
    /// the forwarding (by code it calls) is dropped and counted, not recursed on.
    static FORWARDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Why a record did not go into the ring.
enum Lost {
    /// The ring was full or closed.
    Full,
    /// It could not be framed (no arena block for it).
    Unframed,
}

/// The logger a worker installs: records go into the log ring.
struct Forwarder {
    seg: Segment,
    ring: Ring,
    counters: u64,
}

impl Forwarder {
    fn count(&self, f: impl FnOnce(&Counters)) {
        if let Ok(c) = self.seg.get::<Counters>(self.counters) {
            f(c);
        }
    }

    /// Frames `r` and pushes it without waiting.
    fn push(&self, r: &Record) -> Result<(), Lost> {
        wire::with_scratch(|scratch| {
            let frame = wire::encode(&self.seg, FrameHeader::default(), r, scratch, self.ring.payload_capacity())
                .map_err(|_| Lost::Unframed)?;
            let in_block = match frame.body {
                Body::Block { len, .. } => len,
                _ => 0,
            };
            self.count(|c| {
                c.in_blocks.fetch_add(in_block, Ordering::Relaxed);
            });
            match self.ring.try_push_many(1, |_, dst| frame.write(dst)) {
                Ok(_) => Ok(()),
                Err(_) => {
                    frame.body.discard(&self.seg);
                    self.count(|c| sub(&c.in_blocks, in_block));
                    Err(Lost::Full)
                }
            }
        })
    }

    /// Whether `bytes` more of records in blocks stay within the budget.
    fn within_budget(&self, bytes: u64) -> bool {
        self.seg
            .get::<Counters>(self.counters)
            .is_ok_and(|c| c.in_blocks.load(Ordering::Relaxed).saturating_add(bytes) <= BLOCK_BUDGET)
    }

    fn forward(&self, mut r: Record) {
        for field in [&mut r.target, &mut r.file] {
            if field.len() > MAX_FIELD {
                clip(field, MAX_FIELD, "…");
            }
        }
        let full = r.message.len();
        let mut cut = full > MAX_MESSAGE;
        if cut {
            clip(&mut r.message, MAX_MESSAGE, &cut_marker(full));
        }
        let inline = wire::inline_max(self.ring.payload_capacity());
        // An upper bound on the archive's size: the strings and the fields.
        let estimate = (r.message.len() + r.target.len() + r.file.len() + 64) as u64;
        let long = estimate > inline as u64;
        if long && !self.within_budget(estimate) {
            fit_inline(&mut r, inline, full, cut);
            cut = true;
        }
        let mut sent = self.push(&r);
        if matches!(sent, Err(Lost::Unframed)) && long {
            // No block to be had (the arena is full): what fits a slot goes.
            fit_inline(&mut r, inline, full, cut);
            cut = true;
            sent = self.push(&r);
        }
        match sent {
            Ok(()) if cut => self.count(|c| {
                c.cut.fetch_add(1, Ordering::Relaxed);
            }),
            Ok(()) => {}
            Err(_) => self.count(|c| {
                c.dropped.fetch_add(1, Ordering::Relaxed);
            }),
        }
    }
}

/// Cuts `r`'s message (of `full` bytes originally; already cut and marked
/// if `cut`) so that the record's archive fits `inline` bytes.
fn fit_inline(r: &mut Record, inline: usize, full: usize, cut: bool) {
    let marker = cut_marker(full);
    if cut {
        let n = r.message.len().saturating_sub(marker.len());
        r.message.truncate(n);
    }
    if r.target.len() + r.file.len() > inline / 2 {
        clip(&mut r.target, 32, "…");
        clip(&mut r.file, 32, "…");
    }
    let message = std::mem::take(&mut r.message);
    let base = codec::encoded_len(&*r).unwrap_or(inline);
    let mut keep = inline.saturating_sub(base + marker.len() + 16);
    loop {
        r.message.clear();
        r.message.push_str(prefix(&message, keep));
        r.message.push_str(&marker);
        if keep == 0 || codec::encoded_len(&*r).is_ok_and(|n| n <= inline) {
            return;
        }
        keep = keep.saturating_sub(32);
    }
}

impl log::Log for Forwarder {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if FORWARDING.with(|f| f.replace(true)) {
            self.count(|c| {
                c.dropped.fetch_add(1, Ordering::Relaxed);
            });
            return;
        }
        /// Clears `FORWARDING` however forwarding ends (a `Display` impl
        /// of the message may panic).
        struct Forwarding;
        impl Drop for Forwarding {
            fn drop(&mut self) {
                FORWARDING.with(|f| f.set(false));
            }
        }
        let _forwarding = Forwarding;
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        self.forward(Record {
            level: level_code(record.level()),
            pid: process::current_pid(),
            micros,
            line: record.line().unwrap_or(0),
            target: record.target().to_owned(),
            file: record.file().unwrap_or("").to_owned(),
            message: record.args().to_string(),
        });
    }

    fn flush(&self) {}
}

/// In a worker: routes `log` records to the parent. Returns false if the
/// program already installed a logger of its own (which then stays).
pub(crate) fn install_forwarder(seg: &Segment, ring: u64, counters: u64, level: u64) -> bool {
    let Ok(ring) = Ring::open(seg, ring) else { return false };
    let forwarder = Forwarder { seg: seg.clone(), ring, counters };
    // Leaked on purpose: a logger lives as long as the process.
    if log::set_logger(Box::leak(Box::new(forwarder))).is_err() {
        return false;
    }
    log::set_max_level(filter_from(level));
    true
}

/// What the parent's thread has reported, and why it stopped if it did.
#[derive(Debug, Default)]
struct Reported {
    dropped: AtomicU64,
    cut: AtomicU64,
    /// Records the parent's own logger panicked on (each one lost).
    logger_panics: AtomicU64,
    /// Records whose frame or archive was unreadable.
    unreadable: AtomicU64,
    /// Why the thread stopped before the ring was closed and drained.
    stopped: Mutex<Option<String>>,
}

/// The parent's side: a thread that re-emits forwarded records until the
/// ring is closed and drained.
pub(crate) struct Receiver {
    seg: Segment,
    ring: Ring,
    counters: u64,
    reported: Arc<Reported>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub(crate) fn start(seg: &Segment, ring: Ring, counters: u64) -> std::io::Result<Receiver> {
        let reported = Arc::new(Reported::default());
        let (s, r, rep) = (seg.clone(), ring.clone(), Arc::clone(&reported));
        let thread = std::thread::Builder::new().name("shmpool-log".into()).spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| receive(&s, &r, counters, &rep)));
            let why = match ran {
                Ok(Ok(())) => return,
                Ok(Err(why)) => why,
                Err(payload) => format!("it panicked: {}", super::executor::payload_text(&*payload)),
            };
            // Workers now count their records as dropped instead of filling
            // a ring nobody reads; the count is reported when the pool drops.
            r.close();
            say(
                log::Level::Error,
                format_args!(
                    "the worker log forwarder stopped ({why}); worker log records from now on are dropped and counted"
                ),
            );
            *super::lock(&rep.stopped) = Some(why);
        })?;
        Ok(Receiver { seg: seg.clone(), ring, counters, reported, thread: Some(thread) })
    }

    /// Why the parent's thread stopped early (`None`: it runs, or ended
    /// because the ring was closed and drained).
    pub(crate) fn failure(&self) -> Option<String> {
        super::lock(&self.reported.stopped).clone()
    }
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("failure", &self.failure()).finish_non_exhaustive()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.ring.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // What was lost after the thread stopped (nothing new otherwise).
        report(&self.seg, self.counters, &self.reported);
        let (panics, unreadable) =
            (self.reported.logger_panics.load(Ordering::Relaxed), self.reported.unreadable.load(Ordering::Relaxed));
        if panics > 1 || unreadable > 1 {
            say(
                log::Level::Warn,
                format_args!(
                    "worker log records lost in all: {panics} the logger panicked on, {unreadable} unreadable"
                ),
            );
        }
    }
}

/// Logs `args` through this process's logger as `shmpool`; a logger that
/// panics on it is ignored (there is nobody else to tell).
fn say(level: log::Level, args: std::fmt::Arguments<'_>) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        log::logger().log(&log::Record::builder().level(level).target("shmpool").args(args).build());
    }));
}

/// Reports what the counters gained since the last report.
fn report(seg: &Segment, counters: u64, reported: &Reported) {
    let Ok(c) = seg.get::<Counters>(counters) else { return };
    // One reporter at a time (the thread, then the drop after joining it).
    let gained = |now: u64, seen: &AtomicU64| now.saturating_sub(seen.swap(now, Ordering::Relaxed));
    let dropped = gained(c.dropped.load(Ordering::Relaxed), &reported.dropped);
    if dropped > 0 {
        say(
            log::Level::Warn,
            format_args!(
                "{dropped} log records from workers were dropped: the log ring was full (or its reader had stopped)"
            ),
        );
    }
    let cut = gained(c.cut.load(Ordering::Relaxed), &reported.cut);
    if cut > 0 {
        say(
            log::Level::Warn,
            format_args!(
                "{cut} log records from workers were cut (longer than {} KiB, or too many long records at once); each ends with its marker",
                MAX_MESSAGE >> 10
            ),
        );
    }
}

fn receive(seg: &Segment, ring: &Ring, counters: u64, reported: &Reported) -> Result<(), String> {
    let mut buf = FrameBuf::for_ring(ring, 1);
    loop {
        let mut len = 0;
        let popped = wait::ring_in_slices(
            Deadline::NEVER,
            REPORT_EVERY,
            |until| ring.pop_many_with(1, Some(until), SpinPolicy::SLEEP, |b| len = buf.fill(0, b)),
            || {
                report(seg, counters, reported);
                Ok::<(), ()>(())
            },
        );
        match popped {
            Ok(Ok(_)) => deliver(seg, counters, &buf.slot(0)[..len], reported),
            Ok(Err(RingError::Closed)) => {
                report(seg, counters, reported);
                return Ok(());
            }
            Ok(Err(e)) => return Err(format!("the log ring failed: {e}")),
            Err(_) => return Err("its wait ended without a record".into()),
        }
        report(seg, counters, reported);
    }
}

/// Decodes one frame and re-emits its record.
fn deliver(seg: &Segment, counters: u64, frame: &[u8], reported: &Reported) {
    let record = FrameHeader::read(frame).and_then(|hdr| {
        let r = wire::with_body(seg, &hdr, frame, true, codec::decode::<Record>);
        if hdr.body == wire::BODY_BLOCK {
            if let Ok(c) = seg.get::<Counters>(counters) {
                sub(&c.in_blocks, hdr.len);
            }
        }
        r.ok().and_then(Result::ok)
    });
    let Some(record) = record else {
        if reported.unreadable.fetch_add(1, Ordering::Relaxed) == 0 {
            say(
                log::Level::Warn,
                format_args!("a log record from a worker was unreadable and is lost (later ones are counted)"),
            );
        }
        return;
    };
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| emit(&record))).is_err()
        && reported.logger_panics.fetch_add(1, Ordering::Relaxed) == 0
    {
        say(
            log::Level::Error,
            format_args!("this process's logger panicked on a log record from worker {}: that record is lost; forwarding goes on", record.pid),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(message: String, target_len: usize) -> Record {
        Record {
            level: 3,
            pid: 1,
            micros: 0,
            line: 7,
            target: "t".repeat(target_len),
            file: "src/x.rs".into(),
            message,
        }
    }

    #[test]
    fn a_record_cut_to_fit_a_slot_fits_and_keeps_a_marked_prefix() {
        let inline = wire::inline_max(LOG_SLOT as usize);
        for len in (0..3000).step_by(7).chain([MAX_MESSAGE, MAX_MESSAGE + 1]) {
            for target_len in [0, 40, MAX_FIELD] {
                let message: String = "aé€🦀"
                    .chars()
                    .cycle()
                    .scan(0, |n, c| {
                        *n += c.len_utf8();
                        (*n <= len).then_some(c)
                    })
                    .collect();
                let mut r = record(message.clone(), target_len);
                fit_inline(&mut r, inline, message.len(), false);
                assert!(codec::encoded_len(&r).unwrap() <= inline, "len {len}, target {target_len}");
                let marker = cut_marker(message.len());
                let kept = r.message.strip_suffix(&marker).expect("marked");
                assert!(message.starts_with(kept), "a prefix on a char boundary");
                assert!(!kept.is_empty() || len < 8, "something kept of {len} bytes");
            }
        }
    }

    #[test]
    fn clip_cuts_on_char_boundaries() {
        for max in 0..12 {
            let mut s = "é€🦀é€🦀".to_string();
            clip(&mut s, max, "|");
            let kept = s.strip_suffix('|').unwrap();
            assert!(kept.len() <= max && "é€🦀é€🦀".starts_with(kept));
        }
    }
}
