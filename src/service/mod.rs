//! Named services (processional's server/client): one process hosts an
//! object in a named segment; any process of the same build connects by
//! name and calls it, many clients at once.
//!
//! Requests travel through one shared request ring; each client has its own
//! response ring. The service header in the segment says who serves
//! (pid, build id, seal key) and whether the serving thread is still
//! serving; every client wait looks at it, so a client learns at once that
//! the server process died ([`ServiceError::ServerDead`]), that the
//! [`Service`] was dropped ([`ServiceError::Stopped`]) or that its serving
//! thread ended ([`ServiceError::ServerGone`]). The server notices clients
//! that died and frees their slots, and lets go of the ring slots they held
//! (every client claim on a ring is recorded in the header); each connect to a slot starts a new
//! generation of it, so a late answer meant for an earlier client of the
//! slot is never taken for a new one's.
//!
//! - `server`: [`Service`], the serving thread and its loop.
//! - `client`: [`Client`], connecting and calling.

mod client;
mod server;

use std::fmt;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::ring::{Ring, RingError};
use crate::segment::{Segment, SegmentError, ShmSafe};
use crate::wire::FrameHeader;
use crate::TaskError;

pub use client::Client;
pub use server::Service;

/// Clients connected at once.
pub const MAX_CLIENTS: usize = 64;
const SLOTS: u32 = 64;
const SLOT_BYTES: u32 = 256;
const KIND_SERVICE: u32 = 20;
const SERVICE_MAGIC: u32 = 0x5356_4346; // "SVCF"
/// How often waiting sides check on each other.
const CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// [`Header::state`]: the serving thread's life, written by the serving
/// process only.
///
/// | value      | meaning                                                  |
/// |------------|----------------------------------------------------------|
/// | `STARTING` | the object is being built; not connectable yet           |
/// | `SERVING`  | calls are answered                                       |
/// | `STOPPED`  | the `Service` was dropped: queued calls were failed      |
/// | `FAILED`   | the serving thread ended otherwise (panic, corrupt ring) |
const STARTING: u32 = 0;
const SERVING: u32 = 1;
const STOPPED: u32 = 2;
const FAILED: u32 = 3;

/// An answer's `func` field when the server refused a request of another
/// build without running it; the body is the server's build id.
const REFUSED_BUILD: i64 = 0x4255_494c_4421; // "BUILD!"

#[repr(C)]
struct Header {
    magic: AtomicU32,
    server_pid: AtomicU32,
    /// Seals requests. It lives in the segment: any process that can map the
    /// segment can call the service (as with a Unix socket's permissions);
    /// the build id below keeps other builds out.
    key: AtomicU64,
    /// [`crate::runtime::build_id`] of the serving binary: code offsets are
    /// meaningful only between processes of the same build.
    build: AtomicU64,
    /// The serving thread's state (`STARTING`..`FAILED`). SYNC: stored with
    /// Release before the rings are closed; read with Acquire by clients.
    state: AtomicU32,
    _pad: AtomicU32,
    /// Pid of each slot's client (0: free).
    clients: [AtomicU32; MAX_CLIENTS],
    /// Each slot's generation, bumped by every connect to it; a request
    /// carries its client's generation in the high half of `seq`, and an
    /// answer for another generation is never delivered.
    generations: [AtomicU32; MAX_CLIENTS],
    /// Ring offsets, written by the server before `magic`.
    requests: AtomicU64,
    responses: [AtomicU64; MAX_CLIENTS],
    /// Each slot's client's claim on the request ring while it pushes,
    /// `(pos << 8) | n` (0: none), written before the claim is made and
    /// cleared once the slots are published (`Ring::push_many_recorded`):
    /// a slot left claimed by a client that died is told from a live one's.
    push_claims: [AtomicU64; MAX_CLIENTS],
    /// Likewise each slot's client's claim on its response ring while it
    /// pops (cleared once the slots are released).
    pop_claims: [AtomicU64; MAX_CLIENTS],
}

// SAFETY: `#[repr(C)]`, atomics only.
unsafe impl ShmSafe for Header {}

impl Header {
    /// What the serving thread's state means to a client, given that the
    /// server process `pid` is (still) the server.
    fn check(&self, pid: u32) -> Result<(), ServiceError> {
        if !crate::sys::process::is_alive(pid) {
            return Err(ServiceError::ServerDead { pid });
        }
        match self.state.load(Ordering::Acquire) {
            SERVING => Ok(()),
            STOPPED => Err(ServiceError::Stopped),
            FAILED => Err(ServiceError::ServerGone { pid }),
            STARTING => Err(ServiceError::Corrupt("service state went back to starting".into())),
            s => Err(ServiceError::Corrupt(format!("unknown service state {s}"))),
        }
    }
}

/// A request's slot and build id, stamped into its frame header: the slot
/// in the low half of `stream`, the build id in the high half of `stream`
/// and in `status` (a task's retry count, unused by services).
fn stamp(hdr: &mut FrameHeader, slot: usize, build: u64) {
    hdr.stream = slot as u64 | (build << 32);
    hdr.status = (build >> 32) as u32;
}

/// The (slot, build id) a request was stamped with.
fn stamped(hdr: &FrameHeader) -> (usize, u64) {
    ((hdr.stream & 0xffff_ffff) as usize, (hdr.stream >> 32) | ((hdr.status as u64) << 32))
}

/// Why a service operation failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServiceError {
    /// No service of that name is being served.
    NotFound(String),
    /// The service holds another type of object.
    TypeMismatch(String),
    /// A service of that name is already served by a live process.
    AlreadyServed(String),
    /// The serving process runs another build of the program: code offsets
    /// would name other code, so nothing is called.
    BuildMismatch {
        /// The serving binary's build id.
        expected: u64,
        /// This (the calling) binary's build id.
        found: u64,
    },
    /// All client slots are taken.
    Full,
    /// The serving process is gone.
    ServerDead {
        /// Its pid.
        pid: u32,
    },
    /// The serving process lives but its serving thread ended (it panicked
    /// or found the service's shared state corrupt); its log says why.
    ServerGone {
        /// The serving process.
        pid: u32,
    },
    /// The [`Service`] was dropped: calls queued or made since are not run.
    Stopped,
    /// The call panicked in the server; the object lives on.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The timeout passed before the answer came.
    Timeout,
    /// The argument (client side) or the answer (server side) could not be
    /// archived, or found no room in the segment: says why.
    Encode(String),
    /// The argument (server side) or the answer (client side) could not be
    /// read as the function's type: says why.
    Decode(String),
    /// The service's shared state is inconsistent (says what): a corrupt
    /// or hostile segment.
    Corrupt(String),
    /// The segment could not be created, opened or used.
    Segment(Arc<SegmentError>),
    /// The operating system refused something the service needs (what, why).
    Os {
        /// What was being done.
        what: &'static str,
        /// The system's message.
        message: String,
    },
}

impl PartialEq for ServiceError {
    /// Equal variants with equal fields; segment errors (which hold OS
    /// errors) compare by their message.
    fn eq(&self, other: &Self) -> bool {
        use ServiceError::*;
        match (self, other) {
            (NotFound(a), NotFound(b))
            | (TypeMismatch(a), TypeMismatch(b))
            | (AlreadyServed(a), AlreadyServed(b))
            | (Encode(a), Encode(b))
            | (Decode(a), Decode(b))
            | (Corrupt(a), Corrupt(b)) => a == b,
            (BuildMismatch { expected: a, found: b }, BuildMismatch { expected: c, found: d }) => (a, b) == (c, d),
            (ServerDead { pid: a }, ServerDead { pid: b }) | (ServerGone { pid: a }, ServerGone { pid: b }) => a == b,
            (Panicked { message: a }, Panicked { message: b }) => a == b,
            (Segment(a), Segment(b)) => a.to_string() == b.to_string(),
            (Os { what: a, message: b }, Os { what: c, message: d }) => (a, b) == (c, d),
            (Full, Full) | (Stopped, Stopped) | (Timeout, Timeout) => true,
            _ => false,
        }
    }
}

impl Eq for ServiceError {}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::NotFound(n) => write!(f, "no service named {n:?} is being served"),
            ServiceError::TypeMismatch(n) => write!(f, "service {n:?} serves another type"),
            ServiceError::AlreadyServed(n) => write!(f, "service {n:?} is already served by a live process"),
            ServiceError::BuildMismatch { expected, found } => write!(
                f,
                "service is served by build {expected:#018x} of the program, this is build {found:#018x}: refused"
            ),
            ServiceError::Full => write!(f, "service has {MAX_CLIENTS} clients already"),
            ServiceError::ServerDead { pid } => write!(f, "service process {pid} is gone"),
            ServiceError::ServerGone { pid } => {
                write!(f, "the serving thread of process {pid} ended (its log says why)")
            }
            ServiceError::Stopped => write!(f, "the service was stopped (its Service was dropped)"),
            ServiceError::Panicked { message } => write!(f, "service call panicked: {message}"),
            ServiceError::Timeout => write!(f, "service call timed out"),
            ServiceError::Encode(e) => write!(f, "service value could not be archived: {e}"),
            ServiceError::Decode(e) => write!(f, "service value could not be read: {e}"),
            ServiceError::Corrupt(e) => write!(f, "service shared state is corrupt: {e}"),
            ServiceError::Segment(e) => write!(f, "service segment: {e}"),
            ServiceError::Os { what, message } => write!(f, "service: {what}: {message}"),
        }
    }
}

impl std::error::Error for ServiceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServiceError::Segment(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<SegmentError> for ServiceError {
    fn from(e: SegmentError) -> Self {
        match e {
            SegmentError::TypeMismatch { name } => ServiceError::TypeMismatch(name),
            e => ServiceError::Segment(Arc::new(e)),
        }
    }
}

impl ServiceError {
    /// A ring operation's failure other than a timeout or a close (which
    /// callers turn into the service's state).
    fn ring(e: RingError) -> ServiceError {
        ServiceError::Corrupt(format!("ring: {e}"))
    }

    /// A call's failure as the wire layer reported it.
    fn task(e: TaskError) -> ServiceError {
        match e {
            TaskError::Panicked { message } => ServiceError::Panicked { message },
            TaskError::Encode(m) => ServiceError::Encode(m),
            TaskError::Decode(m) => ServiceError::Decode(m),
            e => ServiceError::Corrupt(format!("unexpected answer: {e}")),
        }
    }
}

fn segment_name(name: &str) -> String {
    format!("svc.{name}")
}

fn fingerprint<T>() -> u64 {
    crate::shared::type_fingerprint::<T>()
}

/// The service's header, rings and (with `create`) fresh layout.
struct Layout {
    header: u64,
    requests: Ring,
    responses: Vec<Ring>,
}

impl Layout {
    /// Opens (or with `create`, makes) the service's header and rings.
    fn open(seg: &Segment, name: &str, fp: u64, create: bool) -> Result<Layout, ServiceError> {
        let size = std::mem::size_of::<Header>() as u64;
        let (block, created) = seg.named("service", KIND_SERVICE, fp, size, |b| {
            let p = seg.ptr(b.offset, size)?;
            // SAFETY: a block this process just allocated and has not published.
            unsafe { std::ptr::write_bytes(p, 0, size as usize) };
            Ok(())
        })?;
        if created != create {
            return Err(if create {
                ServiceError::Corrupt("a new service segment already held a service".into())
            } else {
                ServiceError::NotFound(name.to_owned())
            });
        }
        let h = seg.get::<Header>(block.offset)?;
        if create {
            let requests = Ring::create(seg, SLOTS * 4, SLOT_BYTES)?;
            h.requests.store(requests.offset(), Ordering::Relaxed);
            for r in &h.responses {
                r.store(Ring::create(seg, SLOTS, SLOT_BYTES)?.offset(), Ordering::Relaxed);
            }
        } else if h.magic.load(Ordering::Acquire) != SERVICE_MAGIC {
            return Err(ServiceError::NotFound(name.to_owned()));
        }
        let requests = Ring::open(seg, h.requests.load(Ordering::Acquire))?;
        let responses =
            h.responses.iter().map(|r| Ring::open(seg, r.load(Ordering::Acquire))).collect::<Result<Vec<_>, _>>()?;
        Ok(Layout { header: block.offset, requests, responses })
    }
}

/// Empties `ring`, freeing the arena blocks its frames name (answers nobody
/// will read). A client passes its pop claim record (see
/// [`Header::pop_claims`]), the server none.
fn drain(seg: &Segment, ring: &Ring, record: Option<&AtomicU64>) {
    while ring
        .try_pop_many_recorded(SLOTS as usize, record, |_, bytes| {
            if let Some(h) = FrameHeader::read(bytes) {
                crate::wire::discard(seg, &h);
            }
        })
        .is_ok()
    {}
}

/// Whether the claim record `claim`, `(pos << 8) | n` (0: none), covers
/// ring position `pos`.
fn covers(claim: u64, pos: u64) -> bool {
    claim != 0 && pos.wrapping_sub(claim >> 8) < (claim & 0xFF)
}

/// A test-only hook (see [`set_pause_hook`]): null in every real program,
/// else a `fn(&'static str)`.
static PAUSE_HOOK: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

/// Installs a hook that a client calls with the point's name where it holds
/// a ring claim: `"service-request"` (a request slot claimed, not yet
/// published) and `"service-answer"` (an answer slot claimed, not yet
/// released). A kill test stops a client there and kills it. For tests
/// only; costs one relaxed atomic load per call when unset.
#[doc(hidden)]
pub fn set_pause_hook(hook: fn(&'static str)) {
    // Relaxed: the value is a code address, there is no data to publish.
    PAUSE_HOOK.store(hook as *mut (), Ordering::Relaxed);
}

/// Calls the test hook, if one is installed, at `point`.
#[inline]
fn pause_point(point: &'static str) {
    let hook = PAUSE_HOOK.load(Ordering::Relaxed);
    if !hook.is_null() {
        // SAFETY: the only non-null value ever stored in PAUSE_HOOK is a
        // `fn(&'static str)` cast to a pointer (`set_pause_hook`); function
        // and data pointers have the same size and representation on the
        // platforms this crate builds for (Linux), so it casts back to
        // that same function pointer.
        let hook = unsafe { std::mem::transmute::<*mut (), fn(&'static str)>(hook) };
        hook(point);
    }
}

/// This binary's GNU build id bytes (`.note.gnu.build-id`), for tests that
/// make a copy of the binary with another build id. Not a stable API.
#[doc(hidden)]
pub fn gnu_build_id_bytes() -> Option<Vec<u8>> {
    crate::sys::image::gnu_build_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_round_trips_slot_and_build() {
        for (slot, build) in [(0usize, 1u64), (63, u64::MAX), (5, 0x0123_4567_89ab_cdef)] {
            let mut hdr = FrameHeader::default();
            stamp(&mut hdr, slot, build);
            assert_eq!(stamped(&hdr), (slot, build));
        }
    }

    struct Tally(u64);

    fn tally(start: u64) -> Tally {
        Tally(start)
    }

    fn add(t: &mut Tally, n: u64) -> u64 {
        t.0 += n;
        t.0
    }

    fn total(t: &Tally) -> u64 {
        t.0
    }

    #[test]
    fn a_request_of_another_build_is_refused_without_running() {
        let name = format!("svcunit-build-{}", std::process::id());
        let _s = Service::serve(&name, tally, 10u64).unwrap();
        let mut forged = Service::<Tally>::connect(&name).unwrap();
        let real = crate::runtime::build_id();
        forged.forge_build(real ^ 0x5a5a);
        let r = forged.call(add, 1);
        assert_eq!(r, Err(ServiceError::BuildMismatch { expected: real, found: real ^ 0x5a5a }));
        let c = Service::<Tally>::connect(&name).unwrap();
        assert_eq!(c.get(total), Ok(10), "the refused call did not run");
        assert_eq!(c.call(add, 1), Ok(11), "the server serves on");
    }

    /// Keeps every log record of this test process (installed once).
    struct Capture(std::sync::Mutex<Vec<String>>);

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, r: &log::Record<'_>) {
            crate::runtime::lock(&self.0).push(format!("{} {}", r.level(), r.args()));
        }
        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture(std::sync::Mutex::new(Vec::new()));

    fn records_about(name: &str) -> Vec<String> {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            log::set_logger(&CAPTURE).expect("no other logger in the unit tests");
            log::set_max_level(log::LevelFilter::Trace);
        });
        crate::runtime::lock(&CAPTURE.0).iter().filter(|r| r.contains(name)).cloned().collect()
    }

    #[test]
    fn a_serving_thread_that_ends_is_an_error_for_its_clients_at_once() {
        let name = format!("svcunit-gone-{}", std::process::id());
        assert!(records_about(&name).is_empty());
        let s = Service::serve(&name, tally, 0u64).unwrap();
        let c = Service::<Tally>::connect(&name).unwrap();
        assert_eq!(c.call(add, 1), Ok(1));
        *crate::runtime::lock(&server::FAIL_NEXT_REQUEST) = Some(name.clone());
        let pid = std::process::id();
        assert_eq!(c.call(add, 1), Err(ServiceError::ServerGone { pid }));
        assert_eq!(c.call(add, 1), Err(ServiceError::ServerGone { pid }));
        assert_eq!(c.get_timeout(total, std::time::Duration::MAX), Err(ServiceError::ServerGone { pid }));
        assert_eq!(Service::<Tally>::connect(&name).unwrap_err(), ServiceError::ServerGone { pid });
        drop(s);
        let logged = records_about(&name);
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert!(logged[0].starts_with("ERROR") && logged[0].contains("panicked: injected failure"), "{logged:?}");
    }

    #[test]
    fn errors_say_what_happened_and_keep_their_source() {
        use std::error::Error;
        let e = ServiceError::from(SegmentError::NotReady);
        assert!(e.source().is_some());
        assert_eq!(e, ServiceError::from(SegmentError::NotReady));
        assert_ne!(e, ServiceError::Stopped);
        let e = ServiceError::BuildMismatch { expected: 1, found: 2 };
        assert!(e.to_string().contains("build"), "{e}");
    }
}
