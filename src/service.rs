//! Named services (processional's server/client): one process hosts an
//! object in a named segment; any process of the same binary connects by
//! name and calls it, many clients at once.
//!
//! Requests travel through one shared request ring; each client has its own
//! response ring. The server notices clients that died and frees their
//! slots; a client whose server died gets [`ServiceError::ServerDead`].

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::codec::{Message, Scratch};
use crate::ring::{Ring, RingError};
use crate::runtime::code::{self, SealKind};
use crate::runtime::executor::run_one;
use crate::runtime::lock;
use crate::runtime::tramp::{self, Reply, Trampoline, WorkerState};
use crate::segment::{Segment, SegmentError, ShmSafe};
use crate::sync::SpinPolicy;
use crate::sys::{process, shm};
use crate::wait::Deadline;
use crate::wire::{self, FrameBuf, FrameHeader};
use crate::TaskError;

/// Clients connected at once.
pub const MAX_CLIENTS: usize = 64;
const SLOTS: u32 = 64;
const SLOT_BYTES: u32 = 256;
const KIND_SERVICE: u32 = 20;
const SERVICE_MAGIC: u32 = 0x5356_4346; // "SVCF"
/// How often waiting sides check on each other.
const CHECK: Duration = Duration::from_millis(100);

#[repr(C)]
struct Header {
    magic: AtomicU32,
    server_pid: AtomicU32,
    /// Seals requests. It lives in the segment: any process that can map the
    /// segment can call the service (as with a Unix socket's permissions).
    key: AtomicU64,
    clients: [AtomicU32; MAX_CLIENTS],
    /// Ring offsets, written by the server before `magic`.
    requests: AtomicU64,
    responses: [AtomicU64; MAX_CLIENTS],
}

// SAFETY: `#[repr(C)]`, atomics only.
unsafe impl ShmSafe for Header {}

/// Why a service operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceError {
    /// No service of that name is being served.
    NotFound(String),
    /// The service holds another type of object.
    TypeMismatch(String),
    /// All client slots are taken.
    Full,
    /// The serving process is gone.
    ServerDead {
        /// Its pid.
        pid: u32,
    },
    /// The call panicked in the server; the object lives on.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The timeout passed before the answer came.
    Timeout,
    /// The segment or a value could not be used (says what).
    Failed(String),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::NotFound(n) => write!(f, "no service named {n:?} is being served"),
            ServiceError::TypeMismatch(n) => write!(f, "service {n:?} serves another type"),
            ServiceError::Full => write!(f, "service has {MAX_CLIENTS} clients already"),
            ServiceError::ServerDead { pid } => write!(f, "service process {pid} is gone"),
            ServiceError::Panicked { message } => write!(f, "service call panicked: {message}"),
            ServiceError::Timeout => write!(f, "service call timed out"),
            ServiceError::Failed(e) => write!(f, "service: {e}"),
        }
    }
}

impl std::error::Error for ServiceError {}

fn failed(e: impl fmt::Display) -> ServiceError {
    ServiceError::Failed(e.to_string())
}

fn segment_name(name: &str) -> String {
    format!("svc.{name}")
}

fn fingerprint<T>() -> u64 {
    crate::shared::type_fingerprint::<T>()
}

/// Opens (or with `create`, makes) the service's header and rings; returns
/// the header's offset.
fn layout(seg: &Segment, fp: u64, create: bool) -> Result<(u64, Ring, Vec<Ring>), ServiceError> {
    let size = std::mem::size_of::<Header>() as u64;
    let (block, created) = seg
        .named("service", KIND_SERVICE, fp, size, |b| {
            let p = seg.ptr(b.offset, size)?;
            // SAFETY: a block this process just allocated and has not published.
            unsafe { std::ptr::write_bytes(p, 0, size as usize) };
            Ok(())
        })
        .map_err(|e| match e {
            SegmentError::TypeMismatch { name } => ServiceError::TypeMismatch(name),
            e => failed(e),
        })?;
    if created != create {
        return Err(failed("service segment in an unexpected state"));
    }
    let h = seg.get::<Header>(block.offset).map_err(failed)?;
    if create {
        let requests = Ring::create(seg, SLOTS * 4, SLOT_BYTES).map_err(failed)?;
        h.requests.store(requests.offset(), Ordering::Relaxed);
        for r in &h.responses {
            r.store(Ring::create(seg, SLOTS, SLOT_BYTES).map_err(failed)?.offset(), Ordering::Relaxed);
        }
    } else if h.magic.load(Ordering::Acquire) != SERVICE_MAGIC {
        return Err(ServiceError::NotFound(seg.name().unwrap_or_default().trim_start_matches("svc.").to_owned()));
    }
    let requests = Ring::open(seg, h.requests.load(Ordering::Acquire)).map_err(failed)?;
    let responses = h
        .responses
        .iter()
        .map(|r| Ring::open(seg, r.load(Ordering::Acquire)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    Ok((block.offset, requests, responses))
}

/// A served object: a thread of this process answers the calls of every
/// client. Dropping it stops serving and removes the name.
pub struct Service<T> {
    seg: Segment,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _object: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Service<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service").field("segment", &self.seg).finish()
    }
}

impl<T: 'static> Service<T> {
    /// Builds `creator(init)` and serves it under `name` until dropped.
    ///
    /// The object is built by, and lives on, the serving thread, so `T`
    /// itself need not be `Send`.
    pub fn serve<A: Send + 'static>(name: &str, creator: fn(A) -> T, init: A) -> Result<Service<T>, ServiceError> {
        let seg = Segment::create(&segment_name(name), 64 << 20).map_err(|e| match e {
            SegmentError::AlreadyExists(n) => failed(format!("service {n:?} is already served")),
            e => failed(e),
        })?;
        let (header, requests, responses) = layout(&seg, fingerprint::<T>(), true)?;
        let h = seg.get::<Header>(header).map_err(failed)?;
        let mut key = [0u8; 8];
        shm::random_bytes(&mut key).map_err(failed)?;
        h.key.store(u64::from_ne_bytes(key), Ordering::Relaxed);
        h.server_pid.store(process::current_pid(), Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let (built_tx, built_rx) = std::sync::mpsc::channel();
        let thread = {
            let (seg, stop) = (seg.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("shmpool-service-{name}"))
                .spawn(move || {
                    let object = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| creator(init)));
                    match object {
                        Ok(object) => {
                            let _ = built_tx.send(Ok(()));
                            serve_loop(seg, header, requests, responses, stop, Box::new(object));
                        }
                        Err(p) => {
                            let _ = built_tx.send(Err(crate::runtime::executor::payload_text(&*p)));
                        }
                    }
                })
                .map_err(failed)?
        };
        match built_rx.recv() {
            Ok(Ok(())) => h.magic.store(SERVICE_MAGIC, Ordering::Release),
            Ok(Err(message)) => {
                let _ = thread.join();
                return Err(ServiceError::Panicked { message });
            }
            Err(_) => return Err(failed("service thread ended before building the object")),
        }
        Ok(Service { seg, stop, thread: Some(thread), _object: PhantomData })
    }
}

impl<T> Service<T> {
    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.seg
            .lookup("service")
            .ok()
            .flatten()
            .and_then(|(b, _, _)| self.seg.get::<Header>(b.offset).ok())
            .map_or(0, |h| h.clients.iter().filter(|c| c.load(Ordering::Acquire) != 0).count())
    }
}

impl<T> Drop for Service<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) =
            self.seg.lookup("service").ok().flatten().and_then(|(b, _, _)| self.seg.get::<Header>(b.offset).ok())
        {
            if let Ok(ring) = Ring::open(&self.seg, h.requests.load(Ordering::Acquire)) {
                ring.close();
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_loop(
    seg: Segment,
    header: u64,
    requests: Ring,
    responses: Vec<Ring>,
    stop: Arc<AtomicBool>,
    object: Box<dyn std::any::Any>,
) {
    let Ok(h) = seg.get::<Header>(header) else { return };
    let key = h.key.load(Ordering::Relaxed);
    let mut state: WorkerState = Some(object);
    let mut scratch = Scratch::new();
    // Sized from the ring: whatever a client could put in a slot fits.
    let mut frame = FrameBuf::for_ring(&requests, 1);
    let mut next_check = Instant::now() + CHECK;
    while !stop.load(Ordering::Acquire) {
        let mut len = 0;
        let got = requests.pop_many_with(1, Some(Instant::now() + CHECK), SpinPolicy::DEFAULT, |bytes| {
            len = frame.fill(0, bytes);
        });
        if Instant::now() >= next_check {
            next_check = Instant::now() + CHECK;
            free_dead_clients(h, &responses);
        }
        match got {
            Ok(_) => {}
            Err(RingError::Timeout) => continue,
            Err(_) => return,
        }
        let bytes = &frame.slot(0)[..len];
        let mut reply = Reply::new(&seg, &mut scratch, responses[0].payload_capacity());
        let hdr = run_one(&seg, bytes, key, &mut state, &mut reply);
        wire::discard(&seg, &hdr);
        let out = reply.header(&hdr, 0);
        let Some(ring) = responses.get(hdr.stream as usize) else {
            reply.body.discard(&seg);
            continue;
        };
        // A client that stopped reading must not stall the others.
        let deadline = Some(Deadline::after(CHECK).slice(CHECK));
        if ring.push_many_with(1, deadline, SpinPolicy::DEFAULT, |_, dst| out.write(dst, reply.inline())).is_err() {
            reply.body.discard(&seg);
        }
    }
}

/// Frees the slots of clients that died (their response rings are emptied).
fn free_dead_clients(h: &Header, responses: &[Ring]) {
    for (i, c) in h.clients.iter().enumerate() {
        let pid = c.load(Ordering::Acquire);
        if pid != 0 && !process::is_alive(pid) {
            drain(&responses[i]);
            let _ = c.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

fn drain(ring: &Ring) {
    while ring.try_pop_many(64, |_| {}).is_ok() {}
}

/// A connection to a served object.
pub struct Client<T> {
    seg: Segment,
    header: u64,
    requests: Ring,
    responses: Ring,
    slot: usize,
    key: u64,
    server: u32,
    next_seq: AtomicU64,
    calling: Mutex<()>,
    _object: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Client<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("slot", &self.slot).field("server", &self.server).finish()
    }
}

impl<T: 'static> Service<T> {
    /// Connects to the service `name`, which must serve a `T`.
    pub fn connect(name: &str) -> Result<Client<T>, ServiceError> {
        let seg = Segment::open(&segment_name(name)).map_err(|e| match e {
            SegmentError::NotFound(_) => ServiceError::NotFound(name.to_owned()),
            e => failed(e),
        })?;
        let (header, requests, responses) = layout(&seg, fingerprint::<T>(), false)?;
        let h = seg.get::<Header>(header).map_err(failed)?;
        if h.magic.load(Ordering::Acquire) != SERVICE_MAGIC {
            return Err(ServiceError::NotFound(name.to_owned()));
        }
        let server = h.server_pid.load(Ordering::Relaxed);
        if !process::is_alive(server) {
            return Err(ServiceError::ServerDead { pid: server });
        }
        let me = process::current_pid();
        let slot = h
            .clients
            .iter()
            .position(|c| c.compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed).is_ok())
            .ok_or(ServiceError::Full)?;
        let responses = responses.into_iter().nth(slot).ok_or(ServiceError::Full)?;
        drain(&responses);
        let key = h.key.load(Ordering::Relaxed);
        Ok(Client {
            seg,
            header,
            requests,
            responses,
            slot,
            key,
            server,
            next_seq: AtomicU64::new(1),
            calling: Mutex::new(()),
            _object: PhantomData,
        })
    }
}

impl<T: 'static> Client<T> {
    /// Calls `f(&mut object, arg)` in the serving process.
    pub fn call<A: Message, R: Message>(&self, f: fn(&mut T, A) -> R, arg: A) -> Result<R, ServiceError> {
        self.request(f as usize, tramp::call_remote::<T, A, R>, &arg, None)
    }

    /// [`Client::call`], giving up after `timeout`.
    pub fn call_timeout<A: Message, R: Message>(
        &self,
        f: fn(&mut T, A) -> R,
        arg: A,
        timeout: Duration,
    ) -> Result<R, ServiceError> {
        self.request(f as usize, tramp::call_remote::<T, A, R>, &arg, Some(Instant::now() + timeout))
    }

    /// Reads from the object: `f(&object)` in the serving process.
    pub fn get<R: Message>(&self, f: fn(&T) -> R) -> Result<R, ServiceError> {
        self.request(f as usize, tramp::read_remote::<T, R>, &(), None)
    }

    fn request<A: Message, R: Message>(
        &self,
        func: usize,
        tramp: Trampoline,
        arg: &A,
        deadline: Option<Instant>,
    ) -> Result<R, ServiceError> {
        let _one_at_a_time = lock(&self.calling);
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut scratch = Scratch::new();
        let mut hdr = FrameHeader { stream: self.slot as u64, seq, ..Default::default() };
        hdr.func = code::code_offset(func);
        hdr.tramp = code::code_offset(tramp as usize);
        hdr.check = code::seal(SealKind::Task, hdr.func, hdr.tramp, self.key);
        let frame =
            wire::encode(&self.seg, hdr, arg, &mut scratch, self.requests.payload_capacity()).map_err(failed)?;
        let body = frame.body;
        if let Err(e) = self.requests.push_many_with(1, deadline, SpinPolicy::DEFAULT, |_, dst| frame.write(dst)) {
            body.discard(&self.seg);
            return Err(match e {
                RingError::Timeout => ServiceError::Timeout,
                RingError::Closed => ServiceError::ServerDead { pid: self.server },
                e => failed(e),
            });
        }
        loop {
            let chunk = Instant::now() + CHECK;
            let until = deadline.map_or(chunk, |d| d.min(chunk));
            let mut answer = None;
            let got = self.responses.pop_many_with(1, Some(until), SpinPolicy::DEFAULT, |bytes| {
                let Some(h) = FrameHeader::read(bytes) else { return };
                if h.seq == seq {
                    answer = Some(
                        wire::with_body(&self.seg, &h, bytes, true, |b| wire::decode_result::<R>(h.status, b))
                            .unwrap_or_else(Err),
                    );
                } else if h.body == wire::BODY_BLOCK {
                    // An answer to a call that timed out earlier: discard it.
                    let _ = self.seg.release(h.block);
                }
            });
            match (got, answer) {
                (Ok(_), Some(r)) => {
                    return r.map_err(|e| match e {
                        TaskError::Panicked { message } => ServiceError::Panicked { message },
                        e => failed(e),
                    })
                }
                (Ok(_), None) => {}
                (Err(RingError::Timeout), _) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(ServiceError::Timeout);
                    }
                    if !process::is_alive(self.server) {
                        return Err(ServiceError::ServerDead { pid: self.server });
                    }
                }
                (Err(e), _) => return Err(failed(e)),
            }
        }
    }
}

impl<T> Drop for Client<T> {
    fn drop(&mut self) {
        drain(&self.responses);
        if let Ok(h) = self.seg.get::<Header>(self.header) {
            let _ =
                h.clients[self.slot].compare_exchange(process::current_pid(), 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}
