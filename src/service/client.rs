//! The calling side: [`Client`], connected to a [`Service`] by name.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{
    drain, fingerprint, segment_name, stamp, Header, Layout, Service, ServiceError, CHECK, REFUSED_BUILD,
    SERVICE_MAGIC, SERVING,
};
use crate::codec::{self, Message, Scratch};
use crate::ring::{Ring, RingError};
use crate::runtime::code::{self, SealKind};
use crate::runtime::lock;
use crate::runtime::tramp::{self, Trampoline};
use crate::segment::{Segment, SegmentError};
use crate::sync::SpinPolicy;
use crate::sys::process;
use crate::wait::{self, Deadline, Step, Waited};
use crate::wire::{self, FrameHeader, Status};
use crate::TaskError;

/// A connection to a served object.
///
/// Calls from several threads through one client take turns; every
/// blocking call has a timed form, and `Duration::MAX` means no deadline.
pub struct Client<T> {
    seg: Segment,
    header: u64,
    requests: Ring,
    responses: Ring,
    slot: usize,
    /// This connection's generation of the slot (see `Header::generations`).
    generation: u32,
    key: u64,
    /// The build id requests carry: this binary's.
    build: u64,
    server: u32,
    /// Sequence numbers within this generation.
    next_seq: AtomicU32,
    turn: Turn,
    _object: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Client<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("slot", &self.slot).field("server", &self.server).finish()
    }
}

impl<T: 'static> Service<T> {
    /// Connects to the service `name`, which must serve a `T` from a process
    /// of this same build ([`ServiceError::BuildMismatch`] otherwise).
    pub fn connect(name: &str) -> Result<Client<T>, ServiceError> {
        let seg = Segment::open(&segment_name(name)).map_err(|e| match e {
            SegmentError::NotFound(_) => ServiceError::NotFound(name.to_owned()),
            e => e.into(),
        })?;
        let Layout { header, requests, responses } = Layout::open(&seg, name, fingerprint::<T>(), false)?;
        let h = seg.get::<Header>(header)?;
        if h.magic.load(Ordering::Acquire) != SERVICE_MAGIC {
            return Err(ServiceError::NotFound(name.to_owned()));
        }
        let (expected, found) = (h.build.load(Ordering::Relaxed), code::build_id());
        if expected != found {
            return Err(ServiceError::BuildMismatch { expected, found });
        }
        let server = h.server_pid.load(Ordering::Relaxed);
        h.check(server)?;
        let me = process::current_pid();
        let slot = h
            .clients
            .iter()
            .position(|c| c.compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed).is_ok())
            .ok_or(ServiceError::Full)?;
        // A new generation first: from here on, answers meant for an
        // earlier client of this slot are neither pushed nor taken.
        let generation = h.generations[slot].fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        let responses = responses.into_iter().nth(slot).ok_or(ServiceError::Full)?;
        drain(&seg, &responses, Some(&h.pop_claims[slot]));
        let key = h.key.load(Ordering::Relaxed);
        Ok(Client {
            seg,
            header,
            requests,
            responses,
            slot,
            generation,
            key,
            build: found,
            server,
            next_seq: AtomicU32::new(1),
            turn: Turn::default(),
            _object: PhantomData,
        })
    }
}

impl<T: 'static> Client<T> {
    /// Calls `f(&mut object, arg)` in the serving process.
    pub fn call<A: Message, R: Message>(&self, f: fn(&mut T, A) -> R, arg: A) -> Result<R, ServiceError> {
        self.request(f as usize, tramp::call_remote::<T, A, R>, &arg, Deadline::NEVER)
    }

    /// [`Client::call`], giving up after `timeout` ([`ServiceError::Timeout`]).
    /// The call may still run in the server; its late answer is dropped.
    pub fn call_timeout<A: Message, R: Message>(
        &self,
        f: fn(&mut T, A) -> R,
        arg: A,
        timeout: Duration,
    ) -> Result<R, ServiceError> {
        self.request(f as usize, tramp::call_remote::<T, A, R>, &arg, Deadline::after(timeout))
    }

    /// Reads from the object: `f(&object)` in the serving process.
    pub fn get<R: Message>(&self, f: fn(&T) -> R) -> Result<R, ServiceError> {
        self.request(f as usize, tramp::read_remote::<T, R>, &(), Deadline::NEVER)
    }

    /// [`Client::get`], giving up after `timeout` ([`ServiceError::Timeout`]).
    pub fn get_timeout<R: Message>(&self, f: fn(&T) -> R, timeout: Duration) -> Result<R, ServiceError> {
        self.request(f as usize, tramp::read_remote::<T, R>, &(), Deadline::after(timeout))
    }

    fn request<A: Message, R: Message>(
        &self,
        func: usize,
        tramp: Trampoline,
        arg: &A,
        deadline: Deadline,
    ) -> Result<R, ServiceError> {
        let h = self.seg.get::<Header>(self.header)?;
        let _turn = self.turn.take(deadline, || h.check(self.server))?;
        if h.state.load(Ordering::Acquire) != SERVING {
            h.check(self.server)?;
        }
        let n = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let seq = (u64::from(self.generation) << 32) | u64::from(n);
        let mut hdr = FrameHeader { seq, ..Default::default() };
        stamp(&mut hdr, self.slot, self.build);
        hdr.func = code::code_offset(func);
        hdr.tramp = code::code_offset(tramp as usize);
        hdr.check = code::seal(SealKind::Task, hdr.func, hdr.tramp, self.key);
        let mut scratch = Scratch::new();
        let frame = wire::encode(&self.seg, hdr, arg, &mut scratch, self.requests.payload_capacity())
            .map_err(ServiceError::task)?;
        // Claims are recorded in the header, so that the server can let go
        // of what this process holds in the rings if it dies holding it.
        let push_claim = &h.push_claims[self.slot];
        let write = |_: usize, dst: &mut [u8]| {
            super::pause_point("service-request");
            frame.write(dst)
        };
        let pushed = wait::ring_in_slices(
            deadline,
            CHECK,
            |until| self.requests.push_many_recorded(1, Some(until), SpinPolicy::DEFAULT, Some(push_claim), &write),
            || h.check(self.server),
        );
        let pushed = match pushed {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RingError::Closed)) => Err(self.gone(h)),
            Ok(Err(e)) => Err(ServiceError::ring(e)),
            Err(w) => Err(waited(w)),
        };
        if let Err(e) = pushed {
            frame.body.discard(&self.seg);
            return Err(e);
        }
        // After the peer check fails, one last look: the answer may have
        // come just before the server stopped.
        let last_look = Cell::new(false);
        let pop_claim = Some(&h.pop_claims[self.slot]);
        let got = wait::in_slices(
            deadline,
            CHECK,
            |until| {
                let mut answer = None;
                let read = |_: u64, bytes: &[u8]| {
                    super::pause_point("service-answer");
                    let Some(r) = FrameHeader::read(bytes) else { return };
                    if r.seq == seq && answer.is_none() {
                        answer = Some(self.answer::<R>(h, &r, bytes));
                    } else {
                        // An answer to a call that timed out earlier.
                        wire::discard(&self.seg, &r);
                    }
                };
                let popped = if last_look.get() {
                    self.responses.try_pop_many_recorded(super::SLOTS as usize, pop_claim, read)
                } else {
                    let (max, spin) = (super::SLOTS as usize, SpinPolicy::DEFAULT);
                    self.responses.pop_many_recorded(max, Some(until), spin, pop_claim, read)
                };
                match (popped, answer) {
                    (_, Some(r)) => Step::Done(r),
                    (Ok(_) | Err(RingError::Timeout | RingError::WouldBlock), None) => Step::Again,
                    (Err(RingError::Closed), None) => Step::Done(Err(self.gone(h))),
                    (Err(e), None) => Step::Done(Err(ServiceError::ring(e))),
                }
            },
            || match h.check(self.server) {
                Err(_) if !last_look.get() => {
                    last_look.set(true);
                    Ok(())
                }
                other => other,
            },
        );
        got.unwrap_or_else(|w| Err(waited(w)))
    }

    /// Turns the answer frame `r` (read from `bytes`) into the call's result.
    fn answer<R: Message>(&self, h: &Header, r: &FrameHeader, bytes: &[u8]) -> Result<R, ServiceError> {
        let refused = r.func == REFUSED_BUILD && r.status == Status::BadInput as u32;
        wire::with_body(&self.seg, r, bytes, true, |b| {
            if refused {
                let expected = codec::decode::<u64>(b).map_err(|e| ServiceError::Corrupt(e.to_string()))?;
                return Err(ServiceError::BuildMismatch { expected, found: self.build });
            }
            wire::decode_result::<R>(r.status, b).map_err(|e| match e {
                TaskError::Cancelled => self.gone(h),
                e => ServiceError::task(e),
            })
        })
        .unwrap_or_else(|e| Err(ServiceError::Corrupt(format!("answer frame: {e}"))))
    }

    /// Why the service closed its rings: the state the header gives.
    fn gone(&self, h: &Header) -> ServiceError {
        match h.check(self.server) {
            Err(e) => e,
            Ok(()) => ServiceError::Corrupt("a ring was closed while the service was serving".into()),
        }
    }

    /// Makes this client send requests stamped with another build id (the
    /// server's defence in depth against clients that skip `connect`).
    #[cfg(test)]
    pub(super) fn forge_build(&mut self, build: u64) {
        self.build = build;
    }
}

fn waited(w: Waited<ServiceError>) -> ServiceError {
    match w {
        Waited::TimedOut => ServiceError::Timeout,
        Waited::Peer(e) => e,
    }
}

impl<T> Drop for Client<T> {
    fn drop(&mut self) {
        if let Ok(h) = self.seg.get::<Header>(self.header) {
            // A new generation: the server drops answers still due to us.
            h.generations[self.slot].fetch_add(1, Ordering::AcqRel);
            drain(&self.seg, &self.responses, Some(&h.pop_claims[self.slot]));
            let _ =
                h.clients[self.slot].compare_exchange(process::current_pid(), 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// One call at a time per client (its response ring has one reader); a
/// thread waiting for its turn waits with its call's deadline.
#[derive(Debug, Default)]
struct Turn {
    busy: Mutex<bool>,
    free: Condvar,
}

impl Turn {
    fn take(
        &self,
        deadline: Deadline,
        check: impl FnMut() -> Result<(), ServiceError>,
    ) -> Result<TurnGuard<'_>, ServiceError> {
        wait::in_slices(
            deadline,
            CHECK,
            |until| {
                let mut busy = lock(&self.busy);
                loop {
                    if !*busy {
                        *busy = true;
                        return Step::Done(());
                    }
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Step::Again;
                    }
                    busy = self.free.wait_timeout(busy, left).unwrap_or_else(|e| e.into_inner()).0;
                }
            },
            check,
        )
        .map_err(waited)?;
        Ok(TurnGuard(self))
    }
}

struct TurnGuard<'a>(&'a Turn);

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.0.busy) = false;
        self.0.free.notify_one();
    }
}
