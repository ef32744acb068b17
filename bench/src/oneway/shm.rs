//! The shmpool rows: a [`shmpool::Channel`] carrying `Vec<u8>` (copied in
//! and out), or [`SharedBuffer`] handles (written once in place, read in
//! place), spinning, sleeping at once, or busy-polling.

use std::collections::VecDeque;
use std::time::Duration;

use shmpool::{BufferHandle, Channel, ChannelError, SharedBuffer};

use super::link::{self, Echoed, Link, Plan, Streamed, TIMEOUT};
use crate::common::BoxResult;

/// What the child is told: the payload size and how to wait ([`Wait`]).
type Args = (u64, u8);

/// A message of the buffer rows: a sequence number (or acknowledgement) and
/// the handle of the buffer holding the payload (none for acknowledgements).
type Handoff = (u64, Option<BufferHandle>);

/// Payloads as `Vec<u8>`: `send` archives the vector into the channel's
/// segment, `recv` deserialises it into a new vector.
struct VecLink<'a> {
    chan: &'a Channel<Vec<u8>, Vec<u8>>,
    size: usize,
    payload: Vec<u8>,
}

impl<'a> VecLink<'a> {
    fn new(chan: &'a Channel<Vec<u8>, Vec<u8>>, size: usize) -> Self {
        VecLink { chan, size, payload: link::template(size) }
    }
}

impl Link for VecLink<'_> {
    fn send(&mut self, seq: u64) -> BoxResult<()> {
        link::stamp(&mut self.payload, seq);
        Ok(self.chan.send(&self.payload)?)
    }

    fn recv(&mut self) -> BoxResult<u64> {
        link::check(&self.chan.recv_timeout(TIMEOUT)?, self.size)
    }

    fn send_ack(&mut self, n: u64) -> BoxResult<()> {
        Ok(self.chan.send(&n.to_le_bytes().to_vec())?)
    }

    fn recv_ack(&mut self) -> BoxResult<u64> {
        link::ack_of(&self.chan.recv_timeout(TIMEOUT)?)
    }
}

/// Payloads in shared buffers of the channel's segment: the sender copies
/// the pattern into one of its buffers, stamps it and sends a read-only
/// handle; the receiver opens the handle, checks the bytes where they lie
/// and drops it, which lets the sender write that buffer again.
struct BufferLink<'a> {
    chan: &'a Channel<Handoff, Handoff>,
    size: usize,
    template: Vec<u8>,
    /// Buffers this end may write, the one freed last on top: it is reused
    /// first, while it is still in the cache.
    free: Vec<SharedBuffer>,
    /// Buffers sent, oldest first: the receiver lets go of them in order.
    in_flight: VecDeque<SharedBuffer>,
}

impl<'a> BufferLink<'a> {
    fn new(chan: &'a Channel<Handoff, Handoff>, size: usize, buffers: u64) -> BoxResult<Self> {
        let free = (0..buffers).map(|_| chan.segment().buffer(size as u64)).collect::<Result<_, _>>()?;
        Ok(BufferLink { chan, size, template: link::template(size), free, in_flight: VecDeque::new() })
    }
}

impl Link for BufferLink<'_> {
    fn send(&mut self, seq: u64) -> BoxResult<()> {
        while self.in_flight.front_mut().is_some_and(SharedBuffer::reclaim_write) {
            self.free.extend(self.in_flight.pop_front());
        }
        // The window of unacknowledged messages is shorter than the buffers.
        let in_flight = self.in_flight.len();
        let mut buffer =
            self.free.pop().ok_or_else(|| format!("all {in_flight} shared buffers are still held by the receiver"))?;
        let bytes = buffer.as_mut_slice().ok_or("a reclaimed buffer is not writable")?;
        bytes.copy_from_slice(&self.template);
        link::stamp(bytes, seq);
        let handle = buffer.share()?;
        self.in_flight.push_back(buffer);
        Ok(self.chan.send(&(seq, Some(handle)))?)
    }

    fn recv(&mut self) -> BoxResult<u64> {
        let (seq, handle) = self.chan.recv_timeout(TIMEOUT)?;
        let handle = handle.ok_or("an acknowledgement arrived where a buffer was due")?;
        let buffer = handle.open(self.chan.segment())?;
        let stamped = link::check(buffer.as_slice(), self.size)?;
        drop(buffer);
        if stamped != seq {
            return Err(format!("buffer stamped {stamped} arrived as message {seq}").into());
        }
        Ok(seq)
    }

    fn send_ack(&mut self, n: u64) -> BoxResult<()> {
        Ok(self.chan.send(&(n, None))?)
    }

    fn recv_ack(&mut self) -> BoxResult<u64> {
        match self.chan.recv_timeout(TIMEOUT)? {
            (n, None) => Ok(n),
            (_, Some(_)) => Err("a buffer arrived where an acknowledgement was due".into()),
        }
    }
}

/// How both ends of a shmpool row wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The default: spin up to 50 µs (adaptively), then sleep on a futex.
    Spin,
    /// Sleep at once: no spinning.
    Sleep,
    /// `Channel::busy_poll`: spin, never sleep.
    BusyPoll,
}

impl Wait {
    fn code(self) -> u8 {
        self as u8
    }

    fn of(code: u8) -> Wait {
        match code {
            1 => Wait::Sleep,
            2 => Wait::BusyPoll,
            _ => Wait::Spin,
        }
    }

    fn apply<S, R>(self, chan: Channel<S, R>) -> Channel<S, R> {
        match self {
            Wait::Spin => chan.with_spin(Duration::from_micros(50)),
            Wait::Sleep => chan.with_spin(Duration::ZERO),
            Wait::BusyPoll => chan.busy_poll(),
        }
    }
}

/// The child of the `Vec<u8>` rows. A failure panics: the parent's next
/// receive reports it as [`ChannelError::Panicked`].
fn vec_child(chan: Channel<Vec<u8>, Vec<u8>>, (size, wait): Args) {
    let chan = Wait::of(wait).apply(chan);
    let size = size as usize;
    if let Err(e) = link::serve(&mut VecLink::new(&chan, size), link::window(size).1) {
        panic!("one-way child (Vec<u8>): {e}");
    }
}

/// The child of the buffer rows: one buffer of its own is enough to echo.
fn buffer_child(chan: Channel<Handoff, Handoff>, (size, wait): Args) {
    let chan = Wait::of(wait).apply(chan);
    let size = size as usize;
    let served = BufferLink::new(&chan, size, 1).and_then(|mut l| link::serve(&mut l, link::window(size).1));
    if let Err(e) = served {
        panic!("one-way child (SharedBuffer): {e}");
    }
}

/// After the last `QUIT`: the child's function must end cleanly.
fn finish<S: shmpool::Message, R: shmpool::Message>(chan: Channel<S, R>) -> BoxResult<()> {
    match chan.recv_timeout(TIMEOUT) {
        Err(ChannelError::Closed) => {
            chan.join();
            Ok(())
        }
        Err(e) => Err(e.into()),
        Ok(_) => Err("the child sent a message after it was told to quit".into()),
    }
}

/// One round over a channel of `Vec<u8>` (see [`link::phases`]).
pub fn vec_rows(size: usize, wait: Wait, plan: &Plan, stream: bool) -> BoxResult<(Echoed, Option<Streamed>)> {
    let chan = wait.apply(shmpool::start(vec_child, (size as u64, wait.code()))?);
    let child = chan.pid().ok_or("channel without a child pid")?;
    let measured = link::phases(&mut VecLink::new(&chan, size), plan, size, child, stream)?;
    finish(chan)?;
    Ok(measured)
}

/// One round over a channel of buffer handles (see [`link::phases`]).
pub fn buffer_rows(size: usize, wait: Wait, plan: &Plan, stream: bool) -> BoxResult<(Echoed, Option<Streamed>)> {
    let chan = wait.apply(shmpool::start(buffer_child, (size as u64, wait.code()))?);
    let child = chan.pid().ok_or("channel without a child pid")?;
    let mut link = BufferLink::new(&chan, size, link::window(size).0)?;
    let measured = link::phases(&mut link, plan, size, child, stream)?;
    drop(link);
    finish(chan)?;
    Ok(measured)
}
