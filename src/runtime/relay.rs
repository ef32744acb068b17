//! Relaying a group's tasks to processes elsewhere, and their results back:
//! the seams the `net` layer's remote members use. Nothing here knows the
//! network: a relayed task is the frame a local worker would have taken,
//! as plain data, and a relayed result the frame it would have answered.
//!
//! On the owner's side a relay takes tasks from the group's task ring as a
//! worker does ([`Workers::take_task`]) and puts the results it gets back
//! into the result ring ([`Workers::put_result`]), where the router hands
//! them to their waiters as any other; a task whose remote member left is
//! queued again ([`Workers::requeue_task`]). On the member's side a relayed
//! task is run by its own group ([`Workers::push_task`]) under its own seal.

use std::time::Instant;

use super::code;
use super::workers::{Reservation, Workers, HEALTH_CHECK};
use crate::codec::Scratch;
use crate::ring::RingError;
use crate::wait::Deadline;
use crate::wire::{self, FrameHeader, Status};
use crate::Error;

/// A task as it crosses to another process: code offsets (meaningful only
/// to a process of the same build), its retry count, and the archive of its
/// argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayedTask {
    pub stream: u64,
    pub seq: u64,
    pub func: i64,
    pub tramp: i64,
    pub status: u32,
    pub body: Vec<u8>,
}

/// A result as it comes back: its task's stream and sequence number, the
/// status, the nanoseconds the task ran, and the archive of its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayedResult {
    pub stream: u64,
    pub seq: u64,
    pub status: u32,
    pub ran_ns: u64,
    pub body: Vec<u8>,
}

impl Workers {
    /// Takes one queued task for a remote member, waiting until `deadline`
    /// (`Ok(None)`: none came). `Err(Closed)` once the group is closed and
    /// its queue empty. A task whose seal is not this group's (a forged
    /// frame) is answered `BadInput` here and never relayed.
    pub(crate) fn take_task(&self, deadline: Deadline) -> Result<Option<RelayedTask>, Error> {
        let mut got = None;
        let popped = self.tasks.pop_many_with(1, deadline.instant(), self.config.spin, |bytes| {
            let Some(hdr) = FrameHeader::read(bytes) else { return };
            let sealed = code::seal(code::SealKind::Task, hdr.func, hdr.tramp, self.key);
            let body = wire::with_body(&self.seg, &hdr, bytes, true, <[u8]>::to_vec);
            got = Some((hdr, sealed == hdr.check, body));
        });
        match popped {
            Ok(_) => {}
            Err(RingError::Timeout | RingError::WouldBlock) => return Ok(None),
            Err(RingError::Closed) => return Err(Error::Closed),
            Err(e) => return Err(e.into()),
        }
        let Some((hdr, sealed, body)) = got else { return Ok(None) };
        match body {
            Ok(body) if sealed => Ok(Some(RelayedTask {
                stream: hdr.stream,
                seq: hdr.seq,
                func: hdr.func,
                tramp: hdr.tramp,
                status: hdr.status,
                body,
            })),
            // Unreadable, or not sealed by this group: its waiter hears so.
            _ => {
                self.synthesize(hdr.stream, hdr.seq, Status::BadInput, 0);
                self.land(1);
                Ok(None)
            }
        }
    }

    /// Puts a remote member's result where its task's waiter finds it.
    ///
    /// A result this segment has no room for (the member's host had it)
    /// reaches its waiter as `TaskError::Encode` saying so, as a local
    /// worker's result too large to archive does: never nothing.
    pub(crate) fn put_result(&self, r: &RelayedResult) -> Result<(), Error> {
        // `func` 0: no local worker answered (the router's per-worker
        // records are for local workers only); `check`: what it ran.
        let hdr = FrameHeader { stream: r.stream, seq: r.seq, status: r.status, check: r.ran_ns, ..Default::default() };
        let mut scratch = Scratch::new();
        let frame = match wire::encode_raw(&self.seg, hdr, &r.body, &mut scratch, self.results.payload_capacity()) {
            Ok(frame) => frame,
            Err(e) => {
                let why = format!(
                    "a remote member's result of {} bytes has no room in this pool's segment: {e}",
                    r.body.len()
                );
                self.synthesize_with(r.stream, r.seq, Status::Encode, &why);
                self.land(1);
                return Ok(());
            }
        };
        // The result ring has room for every task in flight: a push waits
        // only for a slot a dead local worker holds, until it is reaped.
        loop {
            let chunk = Instant::now() + HEALTH_CHECK;
            match self.results.push_many_with(1, Some(chunk), self.config.spin, |_, dst| frame.write(dst)) {
                Ok(_) => return Ok(()),
                Err(RingError::Timeout) => {
                    if self.supervision_due() {
                        self.supervise();
                    }
                }
                Err(e) => {
                    frame.body.discard(&self.seg);
                    return Err(if e == RingError::Closed { Error::Closed } else { e.into() });
                }
            }
        }
    }

    /// Queues again a task a remote member took and never answered (it left
    /// or died): a local worker or another member runs it. It stays in
    /// flight meanwhile, as a dead local worker's task does.
    pub(crate) fn requeue_task(&self, t: &RelayedTask) -> Result<(), Error> {
        let hdr = FrameHeader {
            stream: t.stream,
            seq: t.seq,
            func: t.func,
            tramp: t.tramp,
            check: code::seal(code::SealKind::Task, t.func, t.tramp, self.key),
            status: t.status.saturating_add(1),
            ..Default::default()
        };
        let mut scratch = Scratch::new();
        let frame = wire::encode_raw(&self.seg, hdr, &t.body, &mut scratch, self.payload()).map_err(Error::Task)?;
        self.push_frames(&[frame.hdr], |_| frame.inline()).map_err(|(_, e)| e)
    }

    /// Runs a relayed task in this group, as task `seq` of `stream` (the
    /// relay's own numbering), sealed with this group's key: waits for room
    /// in the queue as a submission does.
    pub(crate) fn push_task(&self, stream: u64, seq: u64, t: &RelayedTask) -> Result<(), Error> {
        let reserved = self.reserve(1, Deadline::NEVER)?;
        let mut reservation = Reservation::new(self, reserved);
        let hdr = FrameHeader {
            stream,
            seq,
            func: t.func,
            tramp: t.tramp,
            check: code::seal(code::SealKind::Task, t.func, t.tramp, self.key),
            status: t.status,
            ..Default::default()
        };
        let mut scratch = Scratch::new();
        let frame = wire::encode_raw(&self.seg, hdr, &t.body, &mut scratch, self.payload()).map_err(Error::Task)?;
        self.push_frames(&[frame.hdr], |_| frame.inline()).map_err(|(_, e)| e)?;
        reservation.left = 0;
        Ok(())
    }
}
