//! The serving side: [`Service`] builds the object on a thread of its own
//! and answers every client's calls there.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::{
    covers, drain, fingerprint, segment_name, stamped, Header, Layout, ServiceError, CHECK, FAILED, REFUSED_BUILD,
    SERVICE_MAGIC, SERVING, STOPPED,
};
use crate::codec::Scratch;
use crate::ring::{Ring, RingError};
use crate::runtime::code;
use crate::runtime::executor::{payload_text, run_one};
use crate::runtime::tramp::{Reply, WorkerState};
use crate::segment::{Segment, SegmentError};
use crate::sync::SpinPolicy;
use crate::sys::{process, shm};
use crate::wait::{self, Deadline};
use crate::wire::{self, FrameBuf, FrameHeader, Status};

/// A served object: a thread of this process answers the calls of every
/// client. Dropping it stops serving (calls still queued are failed with
/// [`ServiceError::Stopped`]) and removes the name.
pub struct Service<T> {
    seg: Segment,
    header: u64,
    requests: Ring,
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
            SegmentError::AlreadyExists(_) => ServiceError::AlreadyServed(name.to_owned()),
            e => e.into(),
        })?;
        let Layout { header, requests, responses } = Layout::open(&seg, name, fingerprint::<T>(), true)?;
        let h = seg.get::<Header>(header)?;
        let mut key = [0u8; 8];
        shm::random_bytes(&mut key)
            .map_err(|e| ServiceError::Os { what: "drawing the seal key", message: e.to_string() })?;
        h.key.store(u64::from_ne_bytes(key), Ordering::Relaxed);
        h.build.store(code::build_id(), Ordering::Relaxed);
        h.server_pid.store(process::current_pid(), Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let (built_tx, built_rx) = std::sync::mpsc::channel();
        let thread = {
            let (seg, stop, requests, name) = (seg.clone(), stop.clone(), requests.clone(), name.to_owned());
            std::thread::Builder::new()
                .name(format!("shmpool-service-{name}"))
                .spawn(move || {
                    let object = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| creator(init)));
                    match object {
                        Ok(object) => {
                            let Ok(h) = seg.get::<Header>(header) else { return };
                            // From here on, however this thread ends, the
                            // header says so and the rings are closed.
                            let mut serving = Serving {
                                seg: &seg,
                                h,
                                requests: &requests,
                                responses: &responses,
                                stop: &stop,
                                name,
                                ended: None,
                            };
                            h.state.store(SERVING, Ordering::Release);
                            let _ = built_tx.send(Ok(()));
                            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                serve_loop(&serving, Box::new(object))
                            }));
                            serving.ended = match ran {
                                Ok(r) => r.err(),
                                Err(p) => Some(format!("it panicked: {}", payload_text(&*p))),
                            };
                        }
                        Err(p) => {
                            let _ = built_tx.send(Err(payload_text(&*p)));
                        }
                    }
                })
                .map_err(|e| ServiceError::Os { what: "starting the serving thread", message: e.to_string() })?
        };
        match built_rx.recv() {
            Ok(Ok(())) => h.magic.store(SERVICE_MAGIC, Ordering::Release),
            Ok(Err(message)) => {
                let _ = thread.join();
                return Err(ServiceError::Panicked { message });
            }
            Err(_) => {
                let _ = thread.join();
                return Err(ServiceError::ServerGone { pid: process::current_pid() });
            }
        }
        Ok(Service { seg, header, requests, stop, thread: Some(thread), _object: PhantomData })
    }
}

impl<T> Service<T> {
    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.seg
            .get::<Header>(self.header)
            .map_or(0, |h| h.clients.iter().filter(|c| c.load(Ordering::Acquire) != 0).count())
    }
}

impl<T> Drop for Service<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the serving thread; it finishes the call it is in, fails
        // what is queued and marks the service stopped (see `Serving`).
        self.requests.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The serving thread's hold on the service: when dropped (the loop ended,
/// returned an error or unwound), it publishes why in the header, fails the
/// calls still queued and closes every ring, so that no client waits on a
/// thread that is gone; an unexpected end is logged once.
struct Serving<'a> {
    seg: &'a Segment,
    h: &'a Header,
    requests: &'a Ring,
    responses: &'a [Ring],
    stop: &'a AtomicBool,
    name: String,
    /// Why the loop ended, if not because it was asked to.
    ended: Option<String>,
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        let reason = if std::thread::panicking() {
            Some("it panicked".to_owned())
        } else if self.stop.load(Ordering::Acquire) && self.ended.is_none() {
            None
        } else {
            Some(self.ended.take().unwrap_or_else(|| "it returned".into()))
        };
        // SYNC: Release, before the closes below: a client that finds a ring
        // closed reads this state with Acquire.
        self.h.state.store(if reason.is_none() { STOPPED } else { FAILED }, Ordering::Release);
        self.requests.close();
        // Fail what is queued; each client also sees the state and its ring closed.
        let mut frame = FrameBuf::for_ring(self.requests, 1);
        let mut scratch = Scratch::new();
        // WouldBlock also means "only a poisoned slot": look a bounded
        // number of times more.
        let mut empty = 0;
        loop {
            // The length of this frame, not of the slot area: what lies
            // past it is an earlier frame's, whose header names its block.
            let mut len = 0;
            match self.requests.try_pop_many(1, |bytes| len = frame.fill(0, bytes)) {
                Ok(n) if n > 0 => {}
                Err(RingError::WouldBlock) if empty < self.requests.capacity() => {
                    empty += 1;
                    continue;
                }
                _ => break,
            }
            let Some(req) = FrameHeader::read(&frame.slot(0)[..len]) else {
                // Refused without touching any block: it names none we can trust.
                log::warn!(target: "shmpool", "service {:?}: dropped a request frame shorter than its header", self.name);
                continue;
            };
            let (slot, _) = stamped(&req);
            let Some(ring) = self.responses.get(slot) else {
                wire::discard(self.seg, &req);
                continue;
            };
            wire::discard(self.seg, &req);
            // Sized from the ring the answer goes to.
            let mut reply = Reply::new(self.seg, &mut scratch, ring.payload_capacity());
            reply.fail(Status::Cancelled, "the service stopped before running the call");
            let out = FrameHeader { stream: slot as u64, ..reply.header(&req, 0) };
            let delivered = self.generation_of(slot) == Some(generation(&req))
                && ring.try_push_many(1, |_, dst| out.write(dst, reply.inline())).is_ok();
            if !delivered {
                reply.body.discard(self.seg);
            }
        }
        for r in self.responses {
            r.close();
        }
        if let Some(reason) = reason {
            log::error!(
                target: "shmpool",
                "service {:?}: the serving thread ended ({reason}); its clients get ServiceError::ServerGone",
                self.name
            );
        }
    }
}

impl Serving<'_> {
    /// The current generation of `slot`, if it is a slot.
    fn generation_of(&self, slot: usize) -> Option<u32> {
        self.h.generations.get(slot).map(|g| g.load(Ordering::Acquire))
    }
}

/// The generation of the client that sent `req` (high half of `seq`).
fn generation(req: &FrameHeader) -> u32 {
    (req.seq >> 32) as u32
}

/// Tests only: the service whose serving thread panics on its next request.
#[cfg(test)]
pub(super) static FAIL_NEXT_REQUEST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Answers requests until asked to stop; an error says why it ended otherwise.
fn serve_loop(s: &Serving<'_>, object: Box<dyn std::any::Any>) -> Result<(), String> {
    let (seg, h, requests, responses) = (s.seg, s.h, s.requests, s.responses);
    let key = h.key.load(Ordering::Relaxed);
    let build = h.build.load(Ordering::Relaxed);
    let mut state: WorkerState = Some(object);
    let mut scratch = Scratch::new();
    // Sized from the ring: whatever a client could put in a slot fits.
    let mut frame = FrameBuf::for_ring(requests, 1);
    let mut next_check = Instant::now() + CHECK;
    while !s.stop.load(Ordering::Acquire) {
        if Instant::now() >= next_check {
            next_check = Instant::now() + CHECK;
            free_dead_clients(seg, h, requests, responses);
        }
        let mut len = 0;
        let got = wait::ring_in_slices(
            Deadline::NEVER,
            CHECK,
            |until| requests.pop_many_with(1, Some(until), SpinPolicy::DEFAULT, |b| len = frame.fill(0, b)),
            || {
                free_dead_clients(seg, h, requests, responses);
                if s.stop.load(Ordering::Acquire) {
                    Err(())
                } else {
                    Ok(())
                }
            },
        );
        match got {
            Ok(Ok(_)) => {}
            Err(_) => return Ok(()),
            Ok(Err(RingError::Closed)) if s.stop.load(Ordering::Acquire) => return Ok(()),
            Ok(Err(RingError::Closed)) => return Err("its request ring was closed by another process".into()),
            Ok(Err(e)) => return Err(format!("its request ring failed: {e}")),
        }
        #[cfg(test)]
        if crate::runtime::lock(&FAIL_NEXT_REQUEST).take_if(|n| *n == s.name).is_some() {
            panic!("injected failure of the serving thread");
        }
        let bytes = &frame.slot(0)[..len];
        let Some(req) = FrameHeader::read(bytes) else {
            log::warn!(target: "shmpool", "service {:?}: dropped a request frame shorter than its header", s.name);
            continue;
        };
        let (slot, their_build) = stamped(&req);
        let Some(ring) = responses.get(slot) else {
            wire::discard(seg, &req);
            log::warn!(target: "shmpool", "service {:?}: dropped a request for client slot {slot}", s.name);
            continue;
        };
        let mut reply = Reply::new(seg, &mut scratch, ring.payload_capacity());
        let mut out = if their_build != build {
            // Another build's offsets would name other code: run nothing.
            wire::discard(seg, &req);
            reply.set(Status::BadInput, &build);
            FrameHeader { func: REFUSED_BUILD, ..reply.header(&req, 0) }
        } else {
            let ran = run_one(seg, bytes, key, &mut state, &mut reply);
            wire::discard(seg, &ran);
            reply.header(&req, 0)
        };
        out.stream = slot as u64;
        // Only the client that asked gets the answer; a client that stopped
        // reading must not stall the others.
        let asker = generation(&req);
        if s.generation_of(slot) != Some(asker) {
            // Its client left (timed out and disconnected, or died).
            reply.body.discard(seg);
            continue;
        }
        let pushed = wait::ring_in_slices(
            Deadline::after(CHECK),
            CHECK,
            |until| {
                let write = |_: usize, dst: &mut [u8]| out.write(dst, reply.inline());
                ring.push_many_with(1, Some(until), SpinPolicy::DEFAULT, write)
            },
            || if s.generation_of(slot) == Some(asker) { Ok(()) } else { Err(()) },
        );
        if !matches!(pushed, Ok(Ok(_))) {
            reply.body.discard(seg);
            if s.generation_of(slot) == Some(asker) && h.clients[slot].load(Ordering::Acquire) != 0 {
                log::warn!(
                    target: "shmpool",
                    "service {:?}: client slot {slot} does not read its answers: one was dropped",
                    s.name
                );
            }
        }
    }
    Ok(())
}

/// Frees the slots of clients that died: what they held in the rings is
/// let go (see [`release_claims`]) and their response rings are emptied.
fn free_dead_clients(seg: &Segment, h: &Header, requests: &Ring, responses: &[Ring]) {
    for (i, c) in h.clients.iter().enumerate() {
        let pid = c.load(Ordering::Acquire);
        if pid != 0 && !process::is_alive(pid) {
            h.generations[i].fetch_add(1, Ordering::AcqRel);
            release_claims(seg, h, i, requests, responses);
            if let Some(ring) = responses.get(i) {
                drain(seg, ring, None);
            }
            let _ = c.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// Times [`release_claims`] looks again at a request slot that a live
/// client's claim record also names (a claim attempt of its that is about
/// to fail: records are written before the claim is tried).
const CLAIM_RETRIES: usize = 100;

/// Lets go of the ring slots the dead client of `slot` held: request slots
/// it claimed and never published are published as poisoned (the server's
/// pop goes past them instead of waiting on them for ever), and answer
/// slots it claimed and never released are taken over, the block an answer
/// names freed, and released. Its claim records are cleared.
fn release_claims(seg: &Segment, h: &Header, slot: usize, requests: &Ring, responses: &[Ring]) {
    let (Some(push_claim), Some(pop_claim)) = (h.push_claims.get(slot), h.pop_claims.get(slot)) else { return };
    let dead = push_claim.load(Ordering::Acquire);
    if dead != 0 {
        for _ in 0..CLAIM_RETRIES {
            // SYNC: `unpublished` loads the ring's head with Acquire; a
            // producer stores its claim record before the Release CAS that
            // moves the head past its claim (`queue::claim_push_with`), so a
            // live claim on a position listed here is seen in the records
            // loaded (Acquire) below, or a later value of its record: the
            // clear, a Release store made after its slots were published
            // (`poison_unpublished` then sees the publish and leaves the
            // slot), or its next claim (a Relaxed store that follows that
            // clear in program order only, as with the supervisor's use of
            // the same records). Only positions the dead client's own
            // record names are candidates at all.
            let stuck: Vec<u64> = requests.unpublished().into_iter().filter(|&p| covers(dead, p)).collect();
            if stuck.is_empty() {
                break;
            }
            let live: Vec<u64> = (0..h.clients.len())
                .filter(|&j| j != slot)
                .filter(|&j| {
                    let pid = h.clients[j].load(Ordering::Acquire);
                    pid != 0 && process::is_alive(pid)
                })
                .filter_map(|j| h.push_claims.get(j).map(|r| r.load(Ordering::Acquire)))
                .filter(|&c| c != 0)
                .collect();
            let mut contested = false;
            for pos in stuck {
                if live.iter().any(|&c| covers(c, pos)) {
                    contested = true;
                } else {
                    requests.poison_unpublished(pos);
                }
            }
            if !contested {
                break;
            }
            std::thread::yield_now();
        }
    }
    push_claim.store(0, Ordering::Release);
    let dead = pop_claim.load(Ordering::Acquire);
    if let Some(ring) = responses.get(slot).filter(|_| dead != 0) {
        // The dead client was this ring's only reader (a slot has one
        // client, and the server drains it only here): every unreleased
        // answer its record covers is its own.
        for pos in ring.unreleased().into_iter().filter(|&p| covers(dead, p)) {
            ring.steal_unreleased(pos, |bytes| {
                if let Some(f) = FrameHeader::read(bytes) {
                    wire::discard(seg, &f);
                }
            });
        }
    }
    pop_claim.store(0, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::stamp;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    struct Held;

    fn held(_: ()) -> Held {
        Held
    }

    static HOLDING: AtomicBool = AtomicBool::new(false);
    static RELEASE: AtomicBool = AtomicBool::new(false);

    fn hold(_: &mut Held, _: ()) -> u64 {
        HOLDING.store(true, Ordering::SeqCst);
        while !RELEASE.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        1
    }

    fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "{what} never happened");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Finding: when the service stopped, a queued request shorter than a
    /// frame header was read with the previous request's header (the slot
    /// area, not the popped length): that request's block was freed a
    /// second time and a second Cancelled answer went to its client.
    #[test]
    fn a_short_request_queued_at_stop_is_refused_without_touching_a_block() {
        let name = format!("svcunit-short-{}", std::process::id());
        let service = Service::serve(&name, held, ()).unwrap();
        let busy = Service::<Held>::connect(&name).unwrap();
        let idle = Service::<Held>::connect(&name).unwrap();
        let seg = Segment::open(&segment_name(&name)).unwrap();
        let layout = Layout::open(&seg, &name, fingerprint::<Held>(), false).unwrap();
        let h = seg.get::<Header>(layout.header).unwrap();
        let slot = h.clients.iter().rposition(|c| c.load(Ordering::Acquire) != 0).unwrap();
        std::thread::scope(|s| {
            let running = s.spawn(|| busy.call(hold, ()));
            until("the hold call", || HOLDING.load(Ordering::SeqCst));
            // A request of `idle` naming a block, then a frame of 8 bytes
            // (the same first 8 bytes as that request's).
            let block = seg.alloc(1000).unwrap();
            let seq = (u64::from(h.generations[slot].load(Ordering::Acquire)) << 32) | 1;
            let mut req =
                FrameHeader { seq, body: wire::BODY_BLOCK, block: block.offset, len: 10, ..Default::default() };
            stamp(&mut req, slot, code::build_id());
            layout.requests.try_push_many(1, |_, dst| req.write(dst, &[])).unwrap();
            layout.requests.try_push(&req.stream.to_ne_bytes()).unwrap();
            let stopping = s.spawn(move || drop(service));
            until("the stop", || layout.requests.is_closed());
            RELEASE.store(true, Ordering::SeqCst);
            stopping.join().unwrap();
            assert_eq!(running.join().unwrap(), Ok(1));
        });
        // One answer, Cancelled, for the one request; none for the short frame.
        let mut answers = Vec::new();
        while layout.responses[slot].try_pop_many(64, |b| answers.extend(FrameHeader::read(b))).is_ok() {}
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0].status, Status::Cancelled as u32);
        drop(idle);
    }
}
