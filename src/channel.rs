//! Channels between a parent and a child it starts (pprocess's `start`),
//! and an [`Exchange`] that watches many of them at once.
//!
//! `start(f, args)` runs `f(channel, args)` in a new process and returns the
//! parent's end. Both ends send and receive typed messages through two rings
//! in a segment of their own. Messages sent are in shared memory: a child that
//! exits right after sending loses nothing; the parent reads them later. A
//! panic in the child arrives as [`ChannelError::Panicked`] on the parent's
//! `recv` once the messages sent before it are read.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::codec::{Message, Scratch};
use crate::ring::{Ring, RingError};
use crate::runtime::tramp::{Reply, WorkerState};
use crate::runtime::{lock, submit_to, Config, Ticket, Workers};
use crate::segment::Segment;
use crate::sync::SpinPolicy;
use crate::wire::{self, FrameHeader, Status};
use crate::{Error, TaskError};

/// How long a blocked receive sleeps before it checks on its peer.
const PEER_CHECK: Duration = Duration::from_millis(100);
const RING_SLOTS: u32 = 64;
const SLOT: u32 = 256;

/// Why a channel operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelError {
    /// The other end closed (or, for the parent, the child's function returned)
    /// and every message it sent has been received.
    Closed,
    /// The timeout passed with nothing to receive (or no room to send).
    Timeout,
    /// The child's function panicked (after its earlier messages were read).
    Panicked {
        /// The panic message and where it was raised.
        message: String,
    },
    /// The child process died without finishing.
    Dead {
        /// Its pid.
        pid: u32,
    },
    /// The child process could not be started.
    Start(String),
    /// A message could not be archived or read back.
    Codec(String),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Closed => f.write_str("channel closed"),
            ChannelError::Timeout => f.write_str("timed out on the channel"),
            ChannelError::Panicked { message } => write!(f, "channel child panicked: {message}"),
            ChannelError::Dead { pid } => write!(f, "channel child process {pid} died"),
            ChannelError::Start(e) => write!(f, "could not start the channel child: {e}"),
            ChannelError::Codec(e) => write!(f, "channel message could not be transferred: {e}"),
        }
    }
}

impl std::error::Error for ChannelError {}

impl From<ChannelError> for Error {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::Panicked { message } => Error::Task(TaskError::Panicked { message }),
            ChannelError::Dead { pid } => Error::Task(TaskError::WorkerDied { pid }),
            ChannelError::Start(message) => Error::WorkerInit { message },
            ChannelError::Closed => Error::Closed,
            ChannelError::Timeout => Error::Timeout,
            ChannelError::Codec(e) => Error::Task(TaskError::Decode(e)),
        }
    }
}

/// The parent's view of the child: its process and how its function ended.
struct Child {
    inner: Arc<Workers>,
    pid: u32,
    outcome: Mutex<Outcome>,
}

impl Outcome {
    /// Whether a receive has already reported it.
    fn is_reported(&self) -> bool {
        matches!(self, Outcome::Reported)
    }
}

/// How the child's function ended, as far as the parent knows.
enum Outcome {
    /// Not looked at yet.
    Pending(Ticket<()>),
    /// Resolved, not yet reported by a `recv`.
    Known(ChannelError),
    /// Reported (or clean): `recv` now says `Closed`.
    Reported,
}

/// One end of a two-way channel: sends `S`, receives `R`.
pub struct Channel<S, R> {
    seg: Segment,
    tx: Ring,
    rx: Ring,
    /// How this end waits for room or for a message: spin this long, then sleep.
    spin: SpinPolicy,
    /// The parent's end knows its child; the child's end has `None`.
    child: Option<Child>,
    _types: PhantomData<fn(S) -> R>,
}

impl<S, R> fmt::Debug for Channel<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel").field("child", &self.child.as_ref().map(|c| c.pid)).finish()
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
    let inner = Workers::start::<()>(config, None).map_err(|e| ChannelError::Start(e.to_string()))?;
    let seg = inner.seg.clone();
    let open = |name| Ring::named(&seg, name, RING_SLOTS, SLOT).map_err(|e| ChannelError::Start(e.to_string()));
    let (down, up) = (open("channel.down")?, open("channel.up")?);
    let ticket = submit_to::<A, ()>(&inner, f as usize, run_child::<R, S, A>, &args)
        .map_err(|e| ChannelError::Start(e.to_string()))?;
    // One task only: the worker exits when it returns.
    inner.close();
    let pid = inner.worker_pids().first().copied().unwrap_or(0);
    Ok(Channel {
        seg,
        tx: down,
        rx: up,
        spin: SpinPolicy::DEFAULT,
        child: Some(Child { inner, pid, outcome: Mutex::new(Outcome::Pending(ticket)) }),
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
    let args = match crate::codec::decode::<A>(arg) {
        Ok(a) => a,
        Err(e) => return out.fail(Status::BadInput, &e.to_string()),
    };
    // Dropped (closing `up`) when `f` returns or unwinds.
    let end = Channel { seg, tx: up, rx: down, spin: SpinPolicy::DEFAULT, child: None, _types: PhantomData };
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
    pub fn with_spin(mut self, spin: Duration) -> Self {
        self.spin = SpinPolicy { spin };
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
}

impl<S: Message, R: Message> Channel<S, R> {
    /// Sends `value`, waiting while the channel is full.
    pub fn send(&self, value: &S) -> Result<(), ChannelError> {
        self.send_until(value, None)
    }

    /// Sends `value`, waiting at most `timeout` for room.
    pub fn send_timeout(&self, value: &S, timeout: Duration) -> Result<(), ChannelError> {
        self.send_until(value, Some(Instant::now() + timeout))
    }

    fn send_until(&self, value: &S, deadline: Option<Instant>) -> Result<(), ChannelError> {
        let mut scratch = Scratch::new();
        let frame = wire::encode(&self.seg, FrameHeader::default(), value, &mut scratch, self.tx.payload_capacity())
            .map_err(|e| ChannelError::Codec(e.to_string()))?;
        let body = frame.body;
        loop {
            let chunk = Instant::now() + PEER_CHECK;
            let until = deadline.map_or(chunk, |d| d.min(chunk));
            match self.tx.push_many_with(1, Some(until), self.spin, |_, dst| frame.write(dst)) {
                Ok(_) => return Ok(()),
                Err(RingError::Timeout) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        body.discard(&self.seg);
                        return Err(ChannelError::Timeout);
                    }
                    if let Some(e) = self.peer_gone() {
                        body.discard(&self.seg);
                        return Err(e);
                    }
                }
                Err(RingError::Closed) => {
                    body.discard(&self.seg);
                    return Err(ChannelError::Closed);
                }
                Err(e) => {
                    body.discard(&self.seg);
                    return Err(ChannelError::Codec(e.to_string()));
                }
            }
        }
    }

    /// Receives the next message, waiting for it.
    pub fn recv(&self) -> Result<R, ChannelError> {
        self.recv_until(None)
    }

    /// Receives the next message, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<R, ChannelError> {
        self.recv_until(Some(Instant::now() + timeout))
    }

    /// Receives a message if one is there now.
    pub fn try_recv(&self) -> Result<R, ChannelError> {
        self.recv_until(Some(Instant::now()))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<R, ChannelError> {
        loop {
            let chunk = Instant::now() + PEER_CHECK;
            let until = deadline.map_or(chunk, |d| d.min(chunk));
            let mut got = None;
            let popped = self.rx.pop_many_with(1, Some(until), self.spin, |bytes| {
                got = Some(match FrameHeader::read(bytes) {
                    Some(h) => wire::with_body(&self.seg, &h, bytes, true, crate::codec::decode::<R>)
                        .map_err(|e| ChannelError::Codec(e.to_string()))
                        .and_then(|r| r.map_err(|e| ChannelError::Codec(e.to_string()))),
                    None => Err(ChannelError::Codec("message shorter than its header".into())),
                });
            });
            match popped {
                Ok(_) => return got.unwrap_or(Err(ChannelError::Closed)),
                Err(RingError::Closed) => return Err(self.ended()),
                Err(RingError::Timeout) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(ChannelError::Timeout);
                    }
                    if let Some(e) = self.peer_gone() {
                        // Messages it sent before dying are still there.
                        if self.rx.is_empty() {
                            return Err(e);
                        }
                    }
                }
                Err(e) => return Err(ChannelError::Codec(e.to_string())),
            }
        }
    }

    /// Whether a `recv` would return at once (a message, or the end).
    pub fn is_ready(&self) -> bool {
        self.rx.can_pop() || (self.rx.is_empty() && self.peer_gone().is_some())
    }

    /// The child's pid (on the parent's end).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.pid)
    }

    /// Whether the child process has exited (on the parent's end).
    pub fn child_exited(&self) -> bool {
        self.child.as_ref().is_some_and(|c| c.inner.alive_workers() == 0)
    }

    /// Waits until the child process has exited (on the parent's end).
    ///
    /// A child blocked sending into a full channel exits only once we
    /// receive: receive (or use an [`Exchange`]) rather than join first.
    pub fn join(&self) {
        if let Some(c) = &self.child {
            c.inner.join(None);
        }
    }

    pub(crate) fn rx(&self) -> &Ring {
        &self.rx
    }

    /// How the child ended, once its messages are read (parent's end); for
    /// the child's end, the parent closed.
    fn ended(&self) -> ChannelError {
        let Some(c) = &self.child else { return ChannelError::Closed };
        let outcome = self.outcome(c);
        *lock(&c.outcome) = Outcome::Reported;
        outcome
    }

    /// Resolves how the child ended (waiting for its function's result)
    /// without reporting it.
    fn outcome(&self, c: &Child) -> ChannelError {
        let mut o = lock(&c.outcome);
        let known = match std::mem::replace(&mut *o, Outcome::Reported) {
            Outcome::Reported => ChannelError::Closed,
            Outcome::Known(e) => e,
            Outcome::Pending(ticket) => match ticket.wait() {
                Ok(()) => ChannelError::Closed,
                Err(TaskError::Panicked { message }) => ChannelError::Panicked { message },
                Err(TaskError::WorkerDied { pid }) | Err(TaskError::TimedOut { pid }) => ChannelError::Dead { pid },
                Err(TaskError::PoolGone) => ChannelError::Dead { pid: c.pid },
                Err(e) => ChannelError::Codec(e.to_string()),
            },
        };
        *o = Outcome::Known(known.clone());
        known
    }

    /// Whether the child ended cleanly and everything it sent was received:
    /// nothing more to report.
    fn finished_cleanly(&self) -> bool {
        match &self.child {
            Some(c) if self.rx.is_closed() && self.rx.is_empty() && self.child_exited() => {
                lock(&c.outcome).is_reported() || self.outcome(c) == ChannelError::Closed
            }
            _ => false,
        }
    }

    /// The error to report if the peer is gone for good.
    fn peer_gone(&self) -> Option<ChannelError> {
        match &self.child {
            Some(c) if c.inner.alive_workers() == 0 => {
                // It exited without closing: died, or its outcome says how.
                if self.rx.is_closed() {
                    return None;
                }
                Some(self.ended_or_dead(c))
            }
            Some(_) => None,
            None => (crate::sys::process::parent_pid() == 1).then_some(ChannelError::Closed),
        }
    }

    fn ended_or_dead(&self, c: &Child) -> ChannelError {
        match self.ended() {
            ChannelError::Closed => ChannelError::Dead { pid: c.pid },
            e => e,
        }
    }
}

impl<S, R> Drop for Channel<S, R> {
    fn drop(&mut self) {
        // The peer's recv sees Closed once it has read what we sent.
        self.tx.close();
        if self.child.is_some() {
            self.rx.close();
        }
    }
}

/// Watches many channels at once (pprocess's `Exchange`), optionally keeping
/// at most `limit` of them active.
///
/// Waiting sleeps on all the channels' rings together (`futex_waitv`): idle
/// channels cost nothing. Channels whose child has ended and whose messages
/// were all received are removed (and their processes reaped).
pub struct Exchange<S, R> {
    channels: Vec<Option<Channel<S, R>>>,
    limit: Option<usize>,
}

impl<S, R> fmt::Debug for Exchange<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchange").field("active", &self.active()).field("limit", &self.limit).finish()
    }
}

impl<S, R> Default for Exchange<S, R> {
    fn default() -> Self {
        Exchange { channels: Vec::new(), limit: None }
    }
}

/// Identifies a channel in an [`Exchange`].
pub type ChannelId = usize;

impl<S, R> Exchange<S, R> {
    /// An exchange with no limit on active channels.
    pub fn new() -> Self {
        Exchange::default()
    }

    /// An exchange that keeps at most `limit` channels active ([`Exchange::add_wait`]).
    pub fn with_limit(limit: usize) -> Self {
        Exchange { channels: Vec::new(), limit: Some(limit.max(1)) }
    }

    /// Channels being watched.
    pub fn active(&self) -> usize {
        self.channels.iter().flatten().count()
    }

    /// The channel `id`, while it is watched.
    pub fn channel(&self, id: ChannelId) -> Option<&Channel<S, R>> {
        self.channels.get(id).and_then(Option::as_ref)
    }
}

impl<S: Message, R: Message> Exchange<S, R> {
    /// Watches `channel`; returns its id.
    pub fn add(&mut self, channel: Channel<S, R>) -> ChannelId {
        self.channels.push(Some(channel));
        self.channels.len() - 1
    }

    /// Adds `channel` once fewer than `limit` channels are active, handing
    /// every message received meanwhile to `store(id, message)`.
    pub fn add_wait(
        &mut self,
        channel: Channel<S, R>,
        mut store: impl FnMut(ChannelId, Result<R, ChannelError>),
    ) -> ChannelId {
        if let Some(limit) = self.limit {
            while self.active() >= limit {
                for id in self.ready(None) {
                    self.deliver(id, &mut store);
                }
            }
        }
        self.add(channel)
    }

    /// Receives everything until every channel has ended, handing each
    /// message to `store(id, message)`.
    pub fn finish(&mut self, mut store: impl FnMut(ChannelId, Result<R, ChannelError>)) {
        while self.active() > 0 {
            for id in self.ready(None) {
                self.deliver(id, &mut store);
            }
        }
    }

    /// Ids of the channels with something to receive (a message or their
    /// end), waiting up to `timeout` for one (`Some(ZERO)` polls, `None` waits
    /// as long as needed). Ended channels with nothing left are removed.
    pub fn ready(&mut self, timeout: Option<Duration>) -> Vec<ChannelId> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            self.remove_ended();
            let ready: Vec<ChannelId> = self.watched().filter(|(_, c)| c.is_ready()).map(|(id, _)| id).collect();
            if !ready.is_empty() || self.active() == 0 {
                return ready;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return ready;
            }
            let events: Vec<&crate::sync::Event> = self.watched().map(|(_, c)| c.rx().readable()).collect();
            let chunk = Instant::now() + PEER_CHECK;
            let until = deadline.map_or(chunk, |d| d.min(chunk));
            let channels = &self.channels;
            crate::sync::wait_any(&events, || channels.iter().flatten().any(|c| c.rx().can_pop()), Some(until));
        }
    }

    fn watched(&self) -> impl Iterator<Item = (ChannelId, &Channel<S, R>)> {
        self.channels.iter().enumerate().filter_map(|(id, c)| c.as_ref().map(|c| (id, c)))
    }

    /// Receives from channel `id` once, handing the message (or its end) to `store`.
    fn deliver(&mut self, id: ChannelId, store: &mut impl FnMut(ChannelId, Result<R, ChannelError>)) {
        let Some(c) = self.channels.get(id).and_then(Option::as_ref) else { return };
        match c.try_recv() {
            Ok(m) => store(id, Ok(m)),
            Err(ChannelError::Timeout) => {}
            Err(ChannelError::Closed) => self.channels[id] = None,
            Err(e) => {
                store(id, Err(e));
                self.channels[id] = None;
            }
        }
    }

    /// Drops (and reaps) channels whose child ended cleanly and whose
    /// messages were all received. A child that panicked or died stays until
    /// a receive has reported it.
    fn remove_ended(&mut self) {
        for slot in &mut self.channels {
            if slot.as_ref().is_some_and(Channel::finished_cleanly) {
                if let Some(c) = slot.take() {
                    c.join();
                }
            }
        }
    }
}
