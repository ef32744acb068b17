//! The calling side: [`Client`], connected to a [`Service`] by name.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
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
use crate::wait::reactor::Parked;
use crate::wait::{self, Changed, Deadline, Step, Waited};
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

    /// [`Client::call`] as a future, for async code: the same call, polled
    /// (each step, taking the client's turn, sending the request, taking
    /// the answer, parks its task with the process's reactor when it would
    /// block, and the server is looked at every 100 ms as a blocking call
    /// does; see [`Ticket`](crate::Ticket)'s "As a future"). Dropping it
    /// cancels the call: a request already sent may still run, and its late
    /// answer is dropped.
    pub fn call_async<'a, A: Message + 'a, R: Message + 'a>(
        &'a self,
        f: fn(&mut T, A) -> R,
        arg: A,
    ) -> impl Future<Output = Result<R, ServiceError>> + 'a {
        let (func, tramp) = (f as usize, tramp::call_remote::<T, A, R> as Trampoline);
        let mut call: Option<Call<'_>> = None;
        let mut parked = Parked::default();
        std::future::poll_fn(move |cx| {
            let c = match &mut call {
                Some(c) => c,
                None => match self.begin(func, tramp, &arg, Deadline::now(), Some(cx.waker())) {
                    Ok(c) => call.insert(c),
                    // Another call of this client holds the turn; its end wakes us.
                    Err(ServiceError::Timeout) => return Poll::Pending,
                    Err(e) => return Poll::Ready(Err(e)),
                },
            };
            let done = self.poll_call::<R>(c, &mut parked, cx);
            if done.is_ready() {
                call = None;
            }
            done
        })
    }

    /// One poll of an async call that has its turn: sends the request if
    /// it is not sent yet, then takes the answer; parks when a step would block.
    fn poll_call<R: Message>(
        &self,
        c: &mut Call<'_>,
        parked: &mut Parked,
        cx: &mut Context<'_>,
    ) -> Poll<Result<R, ServiceError>> {
        // A step's timeout is "nothing yet": on the first try of each poll
        // the server is looked at too (the reactor re-polls a quiet wait).
        if !c.pushed {
            let push = |c: &mut Call<'_>, look: bool| match self.push_request(c, Deadline::now()) {
                Err(ServiceError::Timeout) if look => c.h.check(self.server).err().map(Err),
                Err(ServiceError::Timeout) => None,
                done => Some(done),
            };
            let pushed = match push(c, true) {
                Some(done) => done,
                None => match parked.park(
                    cx,
                    &self.seg,
                    self.requests.writable(),
                    Some(CHECK),
                    {
                        let r = self.requests.clone();
                        move || r.can_push()
                    },
                    || push(c, false),
                ) {
                    Poll::Ready(done) => done,
                    Poll::Pending => return Poll::Pending,
                },
            };
            if let Err(e) = pushed {
                return Poll::Ready(Err(e));
            }
        }
        let answer = |c: &mut Call<'_>, look: bool| match self.take_answer::<R>(c, Deadline::now()) {
            Err(ServiceError::Timeout) if look => match c.h.check(self.server) {
                // One last look: the answer may have come just before the
                // server stopped.
                Err(e) => {
                    c.last_look = true;
                    Some(self.take_answer::<R>(c, Deadline::now()).or(Err(e)))
                }
                Ok(()) => None,
            },
            Err(ServiceError::Timeout) => None,
            done => Some(done),
        };
        if let Some(done) = answer(c, true) {
            return Poll::Ready(done);
        }
        let (ring, policy) = (&self.responses, SpinPolicy::DEFAULT.for_poll());
        if ring.readable().spin(|| ring.can_pop(), None, policy, ring.pop_spin()) {
            if let Some(done) = answer(c, false) {
                return Poll::Ready(done);
            }
        }
        let r = ring.clone();
        parked.park(cx, &self.seg, ring.readable(), Some(CHECK), move || r.can_pop(), || answer(c, false))
    }

    fn request<A: Message, R: Message>(
        &self,
        func: usize,
        tramp: Trampoline,
        arg: &A,
        deadline: Deadline,
    ) -> Result<R, ServiceError> {
        let mut call = self.begin(func, tramp, arg, deadline, None)?;
        let h = call.h;
        let pushed = wait::in_slices(
            deadline,
            CHECK,
            |until| match self.push_request(&mut call, Some(until).into()) {
                Err(ServiceError::Timeout) => Step::Again,
                done => Step::Done(done),
            },
            || h.check(self.server),
        );
        pushed.unwrap_or_else(|w| Err(waited(w)))?;
        // After the peer check fails, one last look: the answer may have
        // come just before the server stopped.
        let last_look = Cell::new(false);
        let got = wait::in_slices(
            deadline,
            CHECK,
            |until| {
                call.last_look = last_look.get();
                match self.take_answer::<R>(&mut call, Some(until).into()) {
                    Err(ServiceError::Timeout) => Step::Again,
                    done => Step::Done(done),
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

    /// A call's first step: takes this client's turn (waiting until
    /// `deadline`; with `park`, a turn still busy then parks that task
    /// until it is free) and frames the request.
    fn begin<A: Message>(
        &self,
        func: usize,
        tramp: Trampoline,
        arg: &A,
        deadline: Deadline,
        park: Option<&Waker>,
    ) -> Result<Call<'_>, ServiceError> {
        let h = self.seg.get::<Header>(self.header)?;
        let turn = match park {
            Some(waker) => self.turn.try_take(waker).ok_or(ServiceError::Timeout)?,
            None => self.turn.take(deadline, || h.check(self.server))?,
        };
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
        let (hdr, body) = (frame.hdr, frame.body);
        Ok(Call { _turn: turn, seg: &self.seg, h, seq, hdr, body, scratch, pushed: false, last_look: false })
    }

    /// Pushes the call's request, waiting for room until `deadline`
    /// (`Timeout` if there was none).
    fn push_request(&self, c: &mut Call<'_>, deadline: Deadline) -> Result<(), ServiceError> {
        // Claims are recorded in the header, so that the server can let go
        // of what this process holds in the rings if it dies holding it.
        let push_claim = Some(&c.h.push_claims[self.slot]);
        let frame = wire::Frame::from_parts(c.hdr, c.body, &c.scratch);
        let write = |_: usize, dst: &mut [u8]| {
            super::pause_point("service-request");
            frame.write(dst)
        };
        let pushed = if deadline.passed() {
            self.requests.try_push_many_recorded(1, push_claim, write)
        } else {
            self.requests.push_many_recorded(1, deadline.instant(), SpinPolicy::DEFAULT, push_claim, write)
        };
        match pushed {
            Ok(_) => {
                c.pushed = true;
                Ok(())
            }
            Err(RingError::Timeout | RingError::WouldBlock) => Err(ServiceError::Timeout),
            Err(RingError::Closed) => Err(self.gone(c.h)),
            Err(e) => Err(ServiceError::ring(e)),
        }
    }

    /// Takes the call's answer, waiting until `deadline` (`Timeout` if it
    /// has not come); answers to earlier calls that timed out are dropped.
    fn take_answer<R: Message>(&self, c: &mut Call<'_>, deadline: Deadline) -> Result<R, ServiceError> {
        let pop_claim = Some(&c.h.pop_claims[self.slot]);
        let mut answer = None;
        let read = |_: u64, bytes: &[u8]| {
            super::pause_point("service-answer");
            let Some(r) = FrameHeader::read(bytes) else { return };
            if r.seq == c.seq && answer.is_none() {
                answer = Some(self.answer::<R>(c.h, &r, bytes));
            } else {
                // An answer to a call that timed out earlier.
                wire::discard(&self.seg, &r);
            }
        };
        let max = super::SLOTS as usize;
        let popped = if c.last_look || deadline.passed() {
            self.responses.try_pop_many_recorded(max, pop_claim, read)
        } else {
            self.responses.pop_many_recorded(max, deadline.instant(), SpinPolicy::DEFAULT, pop_claim, read)
        };
        match (popped, answer) {
            (_, Some(r)) => r,
            (Ok(_) | Err(RingError::Timeout | RingError::WouldBlock), None) => Err(ServiceError::Timeout),
            (Err(RingError::Closed), None) => Err(self.gone(c.h)),
            (Err(e), None) => Err(ServiceError::ring(e)),
        }
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
/// thread waiting for its turn waits with its call's deadline, a task parks.
#[derive(Debug, Default)]
struct Turn {
    busy: Mutex<bool>,
    free: Changed,
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
                    busy = self.free.wait_timeout(busy, left);
                }
            },
            check,
        )
        .map_err(waited)?;
        Ok(TurnGuard(self))
    }

    /// Takes the turn if it is free; else parks `waker` until it is.
    fn try_take(&self, waker: &Waker) -> Option<TurnGuard<'_>> {
        let mut busy = lock(&self.busy);
        if *busy {
            self.free.park(waker);
            return None;
        }
        *busy = true;
        Some(TurnGuard(self))
    }
}

struct TurnGuard<'a>(&'a Turn);

/// A call on its way: its turn taken, its request framed (the body's block,
/// if any, is freed if the request is never sent).
struct Call<'a> {
    _turn: TurnGuard<'a>,
    seg: &'a Segment,
    h: &'a Header,
    seq: u64,
    hdr: FrameHeader,
    body: wire::Body,
    scratch: Box<Scratch>,
    pushed: bool,
    /// The server was found gone: take what is there, do not wait.
    last_look: bool,
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.pushed {
            self.body.discard(self.seg);
        }
    }
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.0.busy) = false;
        self.0.free.notify_all();
    }
}
