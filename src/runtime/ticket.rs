//! Tickets: one submitted task's result, to be waited for, and the one
//! submission path every API's single calls go through.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::awaits::ParkOn;
use super::router::RecvError;
use super::tramp::Trampoline;
use super::workers::{Reservation, Workers};
use crate::codec::Message;
use crate::wait::Deadline;
use crate::wire::{self, FrameHeader};
use crate::{Error, TaskError};

/// Frames and pushes one task for `func` run by `tramp`, waiting while the
/// queue is full; the ticket receives its result.
pub(crate) fn submit_to<A: Message, R: Message>(
    inner: &Arc<Workers>,
    func: usize,
    tramp: Trampoline,
    arg: &A,
) -> Result<Ticket<R>, Error> {
    submit_until(inner, func, tramp, arg, Deadline::NEVER)?.ok_or(Error::Full)
}

/// [`submit_to`], waiting for room in the queue only until `deadline`:
/// `Ok(None)` if the queue stayed full.
pub(crate) fn submit_until<A: Message, R: Message>(
    inner: &Arc<Workers>,
    func: usize,
    tramp: Trampoline,
    arg: &A,
    deadline: Deadline,
) -> Result<Option<Ticket<R>>, Error> {
    let reserved = inner.reserve(1, deadline)?;
    if reserved == 0 {
        return Ok(None);
    }
    // Given back on every way out but a pushed task, panics included.
    let mut reservation = Reservation::new(inner, reserved);
    let stream = inner.new_stream();
    let pushed = wire::with_scratch(|scratch| {
        let frame = inner.frame(stream, 0, func, tramp, arg, scratch).map_err(Error::Task)?;
        inner.push_frames(&[frame.hdr], |_| frame.inline()).map_err(|(_, e)| e)
    });
    if let Err(e) = pushed {
        inner.abandon(stream);
        return Err(e);
    }
    reservation.left = 0;
    Ok(Some(Ticket { inner: Arc::clone(inner), stream, done: false, spun: false, _result: PhantomData }))
}

/// The result of one submitted task, to be waited for: with
/// [`Ticket::wait`] (blocking), or as a [`Future`] on any executor.
///
/// Dropping a ticket without waiting (a future dropped mid-wait included)
/// discards the result when it arrives, arena block and all.
///
/// # As a future
///
/// `ticket.await` is the same wait, polled: a poll takes the result if it
/// is there, else spins for the pool's spin budget as a blocking wait does
/// (adaptive, capped at [`SpinPolicy::DEFAULT`](crate::sync::SpinPolicy::DEFAULT)'s,
/// none under [`SpinPolicy::SLEEP`](crate::sync::SpinPolicy::SLEEP)), then
/// parks the task. While tasks are parked on a pool, the process's reactor
/// thread sleeps on the pool's result ring for them, routes each result to
/// its ticket's task, and supervises the workers every 50 ms (a dead
/// worker's task is re-run or answered with [`TaskError::WorkerDied`]), so
/// no thread blocks and none spins. Dropping the future cancels the wait.
/// A ticket polled again after it completed gives
/// [`TaskError::AlreadyTaken`].
#[must_use = "a ticket does nothing unless waited for"]
pub struct Ticket<R> {
    inner: Arc<Workers>,
    stream: u64,
    done: bool,
    /// A poll has spun once already: later polls of a wait that is taking
    /// long park at once.
    spun: bool,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Ticket<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket").field("stream", &self.stream).field("done", &self.done).finish()
    }
}

impl<R: Message> Ticket<R> {
    /// Waits for the result.
    pub fn wait(mut self) -> Result<R, TaskError> {
        self.wait_until(Deadline::NEVER).unwrap_or(Err(TaskError::PoolGone))
    }

    /// Waits up to `timeout` (`Duration::MAX`: no limit); `Err(self)` gives
    /// the ticket back if no result came.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<Result<R, TaskError>, Ticket<R>> {
        match self.wait_until(Deadline::after(timeout)) {
            Some(r) => Ok(r),
            None => Err(self),
        }
    }

    fn wait_until(&mut self, deadline: Deadline) -> Option<Result<R, TaskError>> {
        let mut out = None;
        loop {
            let got = self.inner.recv(Some(self.stream), deadline, &mut |hdr: &FrameHeader, bytes: &[u8]| {
                out = Some(wire::decode_result::<R>(hdr.status, bytes));
            });
            match got {
                Ok(_) if out.is_some() => {
                    self.done = true;
                    return out;
                }
                Ok(_) => {}
                Err(RecvError::Timeout) => return None,
                Err(RecvError::Gone) => {
                    self.done = true;
                    return Some(Err(TaskError::PoolGone));
                }
            }
        }
    }
}

impl<R: Message> Future for Ticket<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Err(TaskError::AlreadyTaken));
        }
        loop {
            if let Some(r) = this.wait_until(Deadline::now()) {
                return Poll::Ready(r);
            }
            if !this.spun {
                this.spun = true;
                if this.inner.spin_for_results() {
                    continue;
                }
            }
            if this.inner.park(ParkOn::Stream(this.stream), cx.waker()) {
                return Poll::Pending;
            }
        }
    }
}

impl<R> Drop for Ticket<R> {
    fn drop(&mut self) {
        // Waited for or not, nobody reads this stream any more: a result
        // still to come, or a duplicate of the one taken, is discarded.
        self.inner.abandon(self.stream);
    }
}
