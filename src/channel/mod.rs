//! Channels between a parent and a child it starts (pprocess's `start`),
//! and an [`Exchange`] that watches many of them at once.
//!
//! `start(f, args)` runs `f(channel, args)` in a new process and returns the
//! parent's end. Both ends send and receive typed messages through two rings
//! in a segment of their own, as frames of the crate's one wire format
//! (inline in a slot, or in an arena block when larger).
//!
//! What each end sees of the other:
//!
//! - Messages sent are in shared memory: a child that exits right after
//!   sending loses nothing; the parent reads them later.
//! - When an end is dropped (the child's is dropped when `f` returns, or
//!   earlier if `f` drops it), the other end's `recv` says
//!   [`ChannelError::Closed`] once it has read everything sent before, and
//!   its `send` says `Closed` at once. `send` borrows the value, so a send
//!   that fails leaves it with the caller: nothing is lost silently. A
//!   message sent before the peer dropped its end and never read by it is
//!   gone with that end.
//! - A panic in the child arrives as [`ChannelError::Panicked`] on the
//!   parent's `recv`, after the messages sent before it. A child that keeps
//!   running after dropping its end is `Closed` at once; if its function
//!   later panics, a later `recv` reports that (the outcome is reported when
//!   it is known, never waited for past the caller's deadline).
//! - A child that dies (killed, `exit`) is [`ChannelError::Dead`] once its
//!   messages are read; a send to it says `Dead` as soon as the sender looks
//!   (a send finding earlier messages still unread checks the peer first).
//! - A child whose parent dies sees `Closed` (it compares its parent's pid
//!   with the one it was started by, so a subreaper does not hide the death).
//!
//! Every timeout of this module may be `Duration::MAX`: no deadline.

mod error;
mod exchange;

pub use error::ChannelError;
use error::{start_error, wire_text};
pub use exchange::{ChannelId, Exchange};

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::codec::{self, Message};
use crate::ring::{Ring, RingError};
use crate::runtime::tramp::{Reply, WorkerState};
use crate::runtime::{lock, submit_to, Config, Ticket, Workers};
use crate::segment::Segment;
use crate::sync::SpinPolicy;
use crate::sys::process;
use crate::wait::reactor::Parked;
use crate::wait::{self, Deadline, Step, Waited};
use crate::wire::{self, FrameHeader, Status};
use crate::TaskError;

/// How long a blocked send or receive sleeps before it checks on its peer.
const PEER_CHECK: Duration = Duration::from_millis(100);
/// A send into a ring its peer has not emptied looks at the peer once in
/// this many sends.
const PEER_EVERY: u32 = 64;
const RING_SLOTS: u32 = 64;
const SLOT: u32 = 256;

/// The child's state word (in the channel's segment), written by the
/// child's end when it is dropped, read by the parent once the ring closed.
const CHILD_RUNNING: u32 = 0;
/// The child dropped its end (or its function returned).
const CHILD_DROPPED: u32 = 1;
/// The child's end was dropped while its thread was panicking: the panic's
/// outcome is on its way to the parent.
const CHILD_UNWINDING: u32 = 2;

/// How the child's function ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// It returned (or this was already reported).
    Clean,
    Panicked(String),
    Dead(u32),
    /// It could not run (its end could not be built).
    Failed(String),
}

impl Ended {
    fn of(result: Result<(), TaskError>, pid: u32) -> Ended {
        match result {
            Ok(()) => Ended::Clean,
            Err(TaskError::Panicked { message }) => Ended::Panicked(message),
            Err(TaskError::WorkerDied { pid } | TaskError::TimedOut { pid }) => Ended::Dead(pid),
            Err(TaskError::PoolGone) => Ended::Dead(pid),
            Err(e) => Ended::Failed(wire_text(e)),
        }
    }
}

/// How the child's function ended, as far as the parent knows.
enum Outcome {
    /// Not known yet.
    Pending(Ticket<()>),
    /// A thread is waiting for it (others treat it as not known yet).
    Waiting,
    /// Known; `Clean` once reported.
    Known(Ended),
}

/// The parent's view of the child: its process and how its function ended.
struct Child {
    inner: Arc<Workers>,
    pid: u32,
    outcome: Mutex<Outcome>,
    /// Seen dead (exited without closing its end): sends fail at once.
    dead: AtomicBool,
}

impl Child {
    /// How the child's function ended, waiting for it until `deadline` at
    /// most; `None` if not known by then.
    fn poll(&self, deadline: Deadline) -> Option<Ended> {
        let ticket = {
            let mut o = lock(&self.outcome);
            match std::mem::replace(&mut *o, Outcome::Waiting) {
                Outcome::Pending(t) => t,
                Outcome::Waiting => return None,
                Outcome::Known(e) => {
                    *o = Outcome::Known(e.clone());
                    return Some(e);
                }
            }
        };
        // Waited for without the lock: other callers keep their own deadlines.
        let waited = match deadline.remaining() {
            None => Ok(ticket.wait()),
            Some(left) => ticket.wait_timeout(left),
        };
        let mut o = lock(&self.outcome);
        match waited {
            Ok(result) => {
                let e = Ended::of(result, self.pid);
                *o = Outcome::Known(e.clone());
                Some(e)
            }
            Err(ticket) => {
                *o = Outcome::Pending(ticket);
                None
            }
        }
    }

    /// Reports `e` (once: later calls see `Closed`).
    fn report(&self, e: Ended) -> ChannelError {
        *lock(&self.outcome) = Outcome::Known(Ended::Clean);
        match e {
            Ended::Clean => ChannelError::Closed,
            Ended::Panicked(message) => ChannelError::Panicked { message },
            Ended::Dead(pid) => ChannelError::Dead { pid },
            Ended::Failed(message) => ChannelError::ChildFailed { message },
        }
    }

    fn exited(&self) -> bool {
        self.inner.alive_workers() == 0
    }
}

/// Who is at the other end.
enum Peer {
    /// The parent's end: the child process.
    Child(Child),
    /// The child's end: the parent, by the pid that started it, and
    /// whether it was seen gone.
    Parent { pid: u32, gone: AtomicBool },
}

/// One end of a two-way channel: sends `S`, receives `R`.
pub struct Channel<S, R> {
    seg: Segment,
    tx: Ring,
    rx: Ring,
    /// How this end waits for room or for a message: spin this long, then sleep.
    spin: SpinPolicy,
    /// Offset of the child's state word (`CHILD_*`).
    state: u64,
    peer: Peer,
    /// Sends so far: every `PEER_EVERY`-th send into a ring its peer has
    /// not emptied looks at the peer (a system call) before queueing more.
    sends: AtomicU32,
    _types: PhantomData<fn(S) -> R>,
}

impl<S, R> fmt::Debug for Channel<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel").field("child", &self.pid()).finish()
    }
}

/// Runs `f(channel, args)` in a new process; returns this side's end.
///
/// `f` gets the child's end (`Channel<R, S>`: it receives what we send).
pub fn start<S: Message, R: Message, A: Message>(
    f: fn(Channel<R, S>, A),
    args: A,
) -> Result<Channel<S, R>, ChannelError> {
    let config = Config {
        workers: 1,
        queue_capacity: 4,
        segment_size: 64 << 20,
        respawn: false,
        on_death: crate::OnWorkerDeath::Report,
        shutdown_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let inner = Workers::start::<()>(config, None).map_err(start_error)?;
    let seg = inner.seg.clone();
    let open = |name| Ring::named(&seg, name, RING_SLOTS, SLOT).map_err(ChannelError::Segment);
    let (down, up) = (open("channel.down")?, open("channel.up")?);
    let state = seg.alloc_zeroed(8).map_err(ChannelError::Segment)?.offset;
    // The child learns who started it (and where its state word is) with its arguments.
    let start = (process::current_pid(), state, args);
    let ticket =
        submit_to::<(u32, u64, A), ()>(&inner, f as usize, run_child::<R, S, A>, &start).map_err(start_error)?;
    // One task only: the worker exits when it returns.
    inner.close();
    let pid = inner.worker_pids().first().copied().unwrap_or(0);
    Ok(Channel {
        seg,
        tx: down,
        rx: up,
        spin: SpinPolicy::DEFAULT,
        state,
        peer: Peer::Child(Child {
            inner,
            pid,
            outcome: Mutex::new(Outcome::Pending(ticket)),
            dead: AtomicBool::new(false),
        }),
        sends: AtomicU32::new(0),
        _types: PhantomData,
    })
}

/// The child's side: builds its end from the pool segment and calls `f`.
///
/// # Safety
///
/// `func` must be a `fn(Channel<S, R>, A)` cast to `usize`.
unsafe fn run_child<S: Message, R: Message, A: Message>(
    func: usize,
    _state: &mut WorkerState,
    arg: &[u8],
    out: &mut Reply<'_>,
) {
    // SAFETY: per this function's contract.
    let f = unsafe { std::mem::transmute::<usize, fn(Channel<S, R>, A)>(func) };
    let Some(seg) = crate::pool_segment() else {
        out.fail(Status::BadInput, "channel child without a segment");
        return;
    };
    let rings =
        (Ring::named(&seg, "channel.up", RING_SLOTS, SLOT), Ring::named(&seg, "channel.down", RING_SLOTS, SLOT));
    let (Ok(up), Ok(down)) = rings else {
        out.fail(Status::BadInput, "channel rings missing");
        return;
    };
    let (parent, state, args) = match codec::decode::<(u32, u64, A)>(arg) {
        Ok(a) => a,
        Err(e) => return out.fail(Status::BadInput, &e.to_string()),
    };
    if seg.get::<AtomicU32>(state).is_err() {
        return out.fail(Status::BadInput, "channel state word out of bounds");
    }
    // Dropped (closing both rings) when `f` returns or unwinds, or earlier.
    let end = Channel {
        seg,
        tx: up,
        rx: down,
        spin: SpinPolicy::DEFAULT,
        state,
        peer: Peer::Parent { pid: parent, gone: AtomicBool::new(false) },
        sends: AtomicU32::new(0),
        _types: PhantomData,
    };
    f(end, args);
    out.set(Status::Ok, &());
}

impl<S, R> Channel<S, R> {
    /// This end, waiting at most `spin` (spinning, then yielding) for a
    /// message or for room before it sleeps on a futex; `Duration::ZERO`
    /// sleeps at once (no busy waiting: the lowest CPU use, the slowest
    /// wake-up). The default spins up to 50 µs, adaptively.
    ///
    /// Each end chooses for itself: a child that should not spin either calls
    /// this on the end its function receives.
    ///
    /// Replaces [`Channel::busy_poll`].
    pub fn with_spin(mut self, spin: Duration) -> Self {
        self.spin = SpinPolicy::spin_for(spin);
        self
    }

    /// This end busy-polls: it waits for a message or for room by spinning
    /// without ever sleeping (as iceoryx2's polling subscriber does), the
    /// lowest latency at the cost of a whole core while it waits. Timeouts
    /// still end the wait, and a dead peer is still noticed (it is looked
    /// at every 100 ms of waiting, as always).
    ///
    /// Each end chooses for itself. Two ends that both busy-poll need a
    /// core each: on a 2-core machine with anything else running, one
    /// takes the core the other needs to answer, and a hand-off costs a
    /// scheduler time slice (milliseconds) instead of nanoseconds (see
    /// [`SpinPolicy::BUSY_POLL`](crate::sync::SpinPolicy::BUSY_POLL)).
    /// Replaces [`Channel::with_spin`].
    pub fn busy_poll(mut self) -> Self {
        self.spin = SpinPolicy::BUSY_POLL;
        self
    }

    /// The segment the channel lives in: allocate a
    /// [`SharedBuffer`](crate::SharedBuffer) here and send its
    /// [`BufferHandle`](crate::BufferHandle) to hand over bytes without
    /// copying them; the other end opens the handle with its own end's
    /// segment (the child's end is in the same segment as the parent's).
    pub fn segment(&self) -> &Segment {
        &self.seg
    }

    /// The child's pid (on the parent's end).
    pub fn pid(&self) -> Option<u32> {
        match &self.peer {
            Peer::Child(c) => Some(c.pid),
            Peer::Parent { .. } => None,
        }
    }

    /// Whether the child process has exited (on the parent's end).
    pub fn child_exited(&self) -> bool {
        matches!(&self.peer, Peer::Child(c) if c.exited())
    }

    /// Waits until the child process has exited (on the parent's end).
    ///
    /// A child blocked sending into a full channel exits only once we
    /// receive: receive (or use an [`Exchange`]) rather than join first.
    pub fn join(&self) {
        self.join_timeout(Duration::MAX);
    }

    /// Waits up to `timeout` (`Duration::MAX`: no deadline) for the child
    /// process to exit; says whether it has (the child's end: `true`).
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        let Peer::Child(c) = &self.peer else { return true };
        let poll = |until: Instant| {
            if c.exited() {
                return Step::Done(());
            }
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            Step::Again
        };
        wait::in_slices(Deadline::after(timeout), Duration::from_millis(1), poll, || Ok::<(), ()>(())).is_ok()
    }

    pub(crate) fn rx(&self) -> &Ring {
        &self.rx
    }

    fn child_state(&self) -> u32 {
        // SYNC: Acquire pairs with the child's Release store in `drop`, made
        // before it closed the ring this end has seen closed.
        self.seg.get::<AtomicU32>(self.state).map_or(CHILD_RUNNING, |w| w.load(Ordering::Acquire))
    }

    /// The error to report if the peer is gone for good without closing its
    /// end (`None`: alive, or it closed, which the rings say themselves).
    fn peer_gone(&self) -> Option<ChannelError> {
        match &self.peer {
            Peer::Child(c) if c.dead.load(Ordering::Relaxed) => Some(ChannelError::Dead { pid: c.pid }),
            Peer::Child(c) => {
                let dead = !self.rx.is_closed() && c.exited();
                if dead {
                    c.dead.store(true, Ordering::Relaxed);
                }
                dead.then_some(ChannelError::Dead { pid: c.pid })
            }
            Peer::Parent { pid, gone } => {
                // Once gone, always gone: the parent's pid is not looked up again.
                let now_gone = gone.load(Ordering::Relaxed) || process::parent_pid() != *pid;
                if now_gone {
                    gone.store(true, Ordering::Relaxed);
                }
                now_gone.then_some(ChannelError::Closed)
            }
        }
    }

    /// What `peer_gone` found before (no system call): the child seen
    /// dead, or the parent seen gone.
    fn known_gone(&self) -> Option<ChannelError> {
        match &self.peer {
            Peer::Child(c) => c.dead.load(Ordering::Relaxed).then_some(ChannelError::Dead { pid: c.pid }),
            Peer::Parent { gone, .. } => gone.load(Ordering::Relaxed).then_some(ChannelError::Closed),
        }
    }

    /// The receive ring is closed and drained: how the peer ended, waiting
    /// for it until `deadline` at most (and only if it is on its way).
    fn ended(&self, deadline: Deadline) -> ChannelError {
        let Peer::Child(c) = &self.peer else { return ChannelError::Closed };
        // Closed while unwinding: the panic's outcome follows; otherwise the
        // child dropped its end (and may still run): `Closed` unless its
        // outcome is already known.
        let unwinding = self.child_state() == CHILD_UNWINDING;
        match c.poll(if unwinding { deadline } else { Deadline::now() }) {
            Some(e) => c.report(e),
            None if unwinding => ChannelError::Timeout,
            None => ChannelError::Closed,
        }
    }

    /// Whether a `recv` would return at once (a message, or the end).
    pub fn is_ready(&self) -> bool {
        if self.rx.can_pop() {
            return true;
        }
        if !self.rx.is_empty() {
            return false;
        }
        match &self.peer {
            Peer::Parent { .. } => self.rx.is_closed() || self.peer_gone().is_some(),
            Peer::Child(c) if self.rx.is_closed() => {
                self.child_state() != CHILD_UNWINDING || c.poll(Deadline::now()).is_some()
            }
            Peer::Child(_) => self.peer_gone().is_some(),
        }
    }

    /// Whether the child ended cleanly and everything it sent was received:
    /// nothing more to report (the parent's end).
    pub(crate) fn finished_cleanly(&self) -> bool {
        match &self.peer {
            Peer::Child(c) => {
                self.rx.is_closed()
                    && self.rx.is_empty()
                    && c.exited()
                    && c.poll(Deadline::now()).is_some_and(|e| e == Ended::Clean)
            }
            Peer::Parent { .. } => false,
        }
    }
}

/// A wait's result as the channel's error.
fn settle<T>(r: Result<Result<T, ChannelError>, Waited<ChannelError>>) -> Result<T, ChannelError> {
    match r {
        Ok(r) => r,
        Err(Waited::TimedOut) => Err(ChannelError::Timeout),
        Err(Waited::Peer(e)) => Err(e),
    }
}

impl<S: Message, R: Message> Channel<S, R> {
    /// Sends `value`, waiting while the channel is full.
    ///
    /// `Closed` at once if the peer dropped its end (or, on the child's
    /// end, the parent is gone); `Dead` if the child died. The value is
    /// borrowed: on any error it is still the caller's.
    pub fn send(&self, value: &S) -> Result<(), ChannelError> {
        self.send_by(value, Deadline::NEVER)
    }

    /// Sends `value`, waiting at most `timeout` for room (`Duration::MAX`:
    /// no deadline).
    pub fn send_timeout(&self, value: &S, timeout: Duration) -> Result<(), ChannelError> {
        self.send_by(value, Deadline::after(timeout))
    }

    /// Sends `value` if there is room now (`Timeout` if not).
    pub fn try_send(&self, value: &S) -> Result<(), ChannelError> {
        self.send_by(value, Deadline::now())
    }

    fn send_by(&self, value: &S, deadline: Deadline) -> Result<(), ChannelError> {
        if self.tx.is_closed() {
            return Err(ChannelError::Closed);
        }
        // A peer that has not taken what was sent before may be gone (a dead
        // one never does): now and then, look before queueing more for it.
        // Not at every send: a liveness check is a system call, several
        // times the cost of a send; a full ring looks at once (below), and a
        // message queued for a peer that has just died is lost with it, as
        // one in flight over a socket would be.
        let look = self.sends.fetch_add(1, Ordering::Relaxed) % PEER_EVERY == 0 && !self.tx.is_empty();
        if let Some(e) = if look { self.peer_gone() } else { self.known_gone() } {
            return Err(e);
        }
        wire::with_scratch(|scratch| {
            let frame = wire::encode(&self.seg, FrameHeader::default(), value, scratch, self.tx.payload_capacity())
                .map_err(|e| ChannelError::Encode(wire_text(e)))?;
            let sent = settle(wait::in_slices(
                deadline,
                PEER_CHECK,
                |until| match self.tx.push_many_with(1, Some(until), self.spin, |_, dst| frame.write(dst)) {
                    Ok(_) => Step::Done(Ok(())),
                    Err(RingError::Timeout) => Step::Again,
                    Err(RingError::Closed) => Step::Done(Err(ChannelError::Closed)),
                    Err(e) => Step::Done(Err(ChannelError::Ring(e))),
                },
                || self.peer_gone().map_or(Ok(()), Err),
            ));
            if sent.is_err() {
                frame.body.discard(&self.seg);
            }
            sent
        })
    }

    /// Receives the next message, waiting for it.
    pub fn recv(&self) -> Result<R, ChannelError> {
        self.recv_by(Deadline::NEVER)
    }

    /// Receives the next message, waiting at most `timeout` (`Duration::MAX`:
    /// no deadline).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<R, ChannelError> {
        self.recv_by(Deadline::after(timeout))
    }

    /// Receives a message if one is there now.
    pub fn try_recv(&self) -> Result<R, ChannelError> {
        self.recv_by(Deadline::now())
    }

    fn recv_by(&self, deadline: Deadline) -> Result<R, ChannelError> {
        settle(wait::in_slices(
            deadline,
            PEER_CHECK,
            |until| {
                let mut got = None;
                match self.rx.pop_many_with(1, Some(until), self.spin, |bytes| got = Some(self.decode(bytes))) {
                    Ok(_) => {
                        Step::Done(got.unwrap_or_else(|| Err(ChannelError::Decode("no message in the slot".into()))))
                    }
                    // Nothing, and a peer already seen gone: say so even to a `try_recv`.
                    Err(RingError::Timeout) => match self.known_gone() {
                        Some(e) if self.rx.is_empty() => Step::Done(Err(e)),
                        _ => Step::Again,
                    },
                    Err(RingError::Closed) => Step::Done(Err(self.ended(deadline))),
                    Err(e) => Step::Done(Err(ChannelError::Ring(e))),
                }
            },
            // Messages a dead peer sent before dying are still read first.
            || match self.peer_gone() {
                Some(e) if self.rx.is_empty() => Err(e),
                _ => Ok(()),
            },
        ))
    }

    /// [`Channel::recv`] as a future, for async code: the same wait, polled
    /// (a poll takes a message if one is there, spins as `recv` would, then
    /// parks its task with the process's reactor until a message comes or
    /// the peer is found gone; see [`Ticket`]'s "As a
    /// future"). Dropping it cancels the wait and loses no message.
    pub fn recv_async(&self) -> impl Future<Output = Result<R, ChannelError>> + '_ {
        let mut parked = Parked::default();
        std::future::poll_fn(move |cx| {
            // A timeout here is "nothing yet": the peer is looked at on the
            // first try of each poll, and the reactor re-polls a quiet wait.
            let attempt = |look: bool| match self.recv_by(Deadline::now()) {
                Err(ChannelError::Timeout) => match look.then(|| self.peer_gone()).flatten() {
                    Some(e) if self.rx.is_empty() => Some(Err(e)),
                    _ => None,
                },
                done => Some(done),
            };
            if let Some(done) = attempt(true) {
                return Poll::Ready(done);
            }
            let (ring, policy) = (&self.rx, self.spin.for_poll());
            if ring.readable().spin(|| ring.can_pop(), None, policy, ring.pop_spin()) {
                if let Some(done) = attempt(false) {
                    return Poll::Ready(done);
                }
            }
            let r = ring.clone();
            parked.park(cx, &self.seg, ring.readable(), Some(PEER_CHECK), move || r.can_pop(), || attempt(false))
        })
    }

    /// [`Channel::send`] as a future, for async code: resolves once `value`
    /// is in the channel (or with why it cannot be), parking its task while
    /// the channel is full. Dropping it before then sends nothing.
    pub fn send_async<'a>(&'a self, value: &'a S) -> impl Future<Output = Result<(), ChannelError>> + 'a {
        let mut parked = Parked::default();
        std::future::poll_fn(move |cx| {
            // Full: the peer is looked at on the first try of each poll (a
            // dead one never makes room), and the reactor re-polls a quiet wait.
            let attempt = |look: bool| match self.send_by(value, Deadline::now()) {
                Err(ChannelError::Timeout) => look.then(|| self.peer_gone()).flatten().map(Err),
                done => Some(done),
            };
            if let Some(done) = attempt(true) {
                return Poll::Ready(done);
            }
            let (ring, policy) = (&self.tx, self.spin.for_poll());
            if ring.writable().spin(|| ring.can_push(), None, policy, ring.push_spin()) {
                if let Some(done) = attempt(false) {
                    return Poll::Ready(done);
                }
            }
            let r = ring.clone();
            parked.park(cx, &self.seg, ring.writable(), Some(PEER_CHECK), move || r.can_push(), || attempt(false))
        })
    }

    /// Reads one frame's message (consuming its block, if any).
    fn decode(&self, bytes: &[u8]) -> Result<R, ChannelError> {
        let hdr = FrameHeader::read(bytes)
            .ok_or_else(|| ChannelError::Decode("message shorter than its frame header".into()))?;
        wire::with_body(&self.seg, &hdr, bytes, true, codec::decode::<R>)
            .map_err(|e| ChannelError::Decode(wire_text(e)))?
            .map_err(|e| ChannelError::Decode(e.to_string()))
    }
}

impl<S, R> Drop for Channel<S, R> {
    fn drop(&mut self) {
        if let Peer::Parent { .. } = self.peer {
            let state = if std::thread::panicking() { CHILD_UNWINDING } else { CHILD_DROPPED };
            if let Ok(w) = self.seg.get::<AtomicU32>(self.state) {
                // SYNC: Release, before the rings are closed (AcqRel): the
                // parent reads it after it has seen them closed.
                w.store(state, Ordering::Release);
            }
        }
        // The peer's recv sees Closed once it has read what we sent; its
        // send sees Closed at once. The ring it sends into first: a peer
        // that saw its receive end closed then finds its send end closed
        // too (closed the other way round, a send right after that recv
        // could slip in between the two).
        self.rx.close();
        self.tx.close();
        if let Peer::Parent { .. } = self.peer {
            // What the parent sent that this end will never read: give the
            // blocks back (the parent's segment outlives us).
            while let Ok(n) = self.rx.try_pop_many(RING_SLOTS as usize, |bytes| {
                if let Some(hdr) = FrameHeader::read(bytes) {
                    wire::discard(&self.seg, &hdr);
                }
            }) {
                if n == 0 {
                    break;
                }
            }
        }
    }
}
