//! `Remote<T>`: one object living in a process of its own (Kkit's remote
//! object proxy), called by `fn(&mut T, A) -> R` and read by `fn(&T) -> R`.
//!
//! The object is built in the child by a creator `fn(A) -> T`; calls run in
//! order, one at a time, through the same rings as pool tasks. A call that
//! panics is an error for that call only: the object lives on. The process
//! is not replaced if it dies: the object's state died with it, and every
//! call then fails with [`RemoteError::Dead`].

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::codec::Message;
use crate::ring::RingError;
use crate::runtime::{submit_until, tramp, Config, Ticket, Workers};
use crate::sync::SpinPolicy;
use crate::wait::Deadline;
use crate::{Error, TaskError};

/// Why a call on a remote object failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteError {
    /// The call panicked in the remote process; the object lives on.
    Panicked {
        /// The panic message and where it was raised.
        message: String,
    },
    /// The remote process is gone (it died, or the remote was closed).
    Dead {
        /// Its pid.
        pid: u32,
    },
    /// The remote process could not be started, or its creator panicked.
    Start(String),
    /// An argument or result could not be archived or read back.
    Codec(String),
    /// The shared segment failed (full, or corrupt): says how.
    Segment(String),
    /// A ring in the segment failed.
    Ring(RingError),
    /// A timed call gave up: the queue stayed full, or the result had not
    /// come by the deadline (the call may still run; its result is discarded).
    Timeout,
    /// The result was already taken: a [`Pending`] polled again after its
    /// future completed.
    AlreadyTaken,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::Panicked { message } => write!(f, "remote call panicked: {message}"),
            RemoteError::Dead { pid } => write!(f, "remote object's process {pid} is gone"),
            RemoteError::Start(e) => write!(f, "remote object could not start: {e}"),
            RemoteError::Codec(e) => write!(f, "remote call's value could not be transferred: {e}"),
            RemoteError::Segment(e) => write!(f, "remote object's shared segment failed: {e}"),
            RemoteError::Ring(e) => write!(f, "remote object's ring failed: {e}"),
            RemoteError::Timeout => write!(f, "remote call timed out"),
            RemoteError::AlreadyTaken => write!(f, "the call's result was already taken (polled after it completed)"),
        }
    }
}

impl std::error::Error for RemoteError {}

impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Panicked { message } => Error::Task(TaskError::Panicked { message }),
            RemoteError::Dead { pid } => Error::Task(TaskError::WorkerDied { pid }),
            RemoteError::Start(message) => Error::WorkerInit { message },
            RemoteError::Codec(e) => Error::Task(TaskError::Decode(e)),
            RemoteError::Segment(e) => Error::Task(TaskError::Encode(e)),
            RemoteError::Ring(e) => Error::Ring(e),
            RemoteError::Timeout => Error::Timeout,
            RemoteError::AlreadyTaken => Error::Task(TaskError::AlreadyTaken),
        }
    }
}

/// An object of type `T` living in a child process.
///
/// Dropping the handle (or [`Remote::close`]) stops the process.
pub struct Remote<T> {
    inner: Arc<Workers>,
    pid: u32,
    _object: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Remote<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("type", &std::any::type_name::<T>()).field("pid", &self.pid).finish()
    }
}

impl<T: 'static> Remote<T> {
    /// Starts a process that builds `creator(args)` and keeps it; returns once
    /// the object exists.
    pub fn spawn<A: Message>(creator: fn(A) -> T, args: A) -> Result<Remote<T>, RemoteError> {
        Remote::spawn_with_policy(creator, args, SpinPolicy::DEFAULT)
    }

    /// [`Remote::spawn`], with both sides waiting under `policy`: the
    /// process waiting for calls and this one waiting for their results.
    /// [`SpinPolicy::BUSY_POLL`] spins without ever sleeping for the lowest
    /// call latency, and takes a core on each side while it waits (see its
    /// doc for when that starves); calls still time out and a dead process
    /// is still noticed.
    pub fn spawn_with_policy<A: Message>(
        creator: fn(A) -> T,
        args: A,
        policy: SpinPolicy,
    ) -> Result<Remote<T>, RemoteError> {
        let config = Config {
            spin: policy,
            workers: 1,
            queue_capacity: 64,
            segment_size: 64 << 20,
            respawn: false,
            on_death: crate::OnWorkerDeath::Report,
            shutdown_timeout: Duration::from_secs(2),
            ..Config::default()
        };
        let tramp = tramp::init_remote::<A, T> as tramp::InitTrampoline as usize;
        let inner = Workers::start(config, Some((tramp, creator as usize, &args))).map_err(|e| match e {
            Error::WorkerInit { message } => RemoteError::Start(message),
            other => RemoteError::Start(other.to_string()),
        })?;
        let pid = inner.worker_pids().first().copied().unwrap_or(0);
        Ok(Remote { inner, pid, _object: PhantomData })
    }

    /// Calls `f(&mut object, arg)` in the remote process and waits for the result.
    pub fn call<A: Message, R: Message>(&self, f: fn(&mut T, A) -> R, arg: A) -> Result<R, RemoteError> {
        self.call_async(f, arg).wait()
    }

    /// [`Remote::call`], giving up after `timeout` in all (`Duration::MAX`:
    /// no limit) with [`RemoteError::Timeout`]. A call that was sent may
    /// still run after that; its result is discarded.
    pub fn call_timeout<A: Message, R: Message>(
        &self,
        f: fn(&mut T, A) -> R,
        arg: A,
        timeout: Duration,
    ) -> Result<R, RemoteError> {
        let deadline = Deadline::after(timeout);
        let pending = self.start(f as usize, tramp::call_remote::<T, A, R>, &arg, deadline)?;
        pending.wait_until(deadline)
    }

    /// Reads from the object: `f(&object)` in the remote process.
    pub fn get<R: Message>(&self, f: fn(&T) -> R) -> Result<R, RemoteError> {
        self.get_timeout(f, Duration::MAX)
    }

    /// [`Remote::get`], giving up after `timeout` in all (`Duration::MAX`:
    /// no limit) with [`RemoteError::Timeout`].
    pub fn get_timeout<R: Message>(&self, f: fn(&T) -> R, timeout: Duration) -> Result<R, RemoteError> {
        let deadline = Deadline::after(timeout);
        self.start(f as usize, tramp::read_remote::<T, R>, &(), deadline)?.wait_until(deadline)
    }

    /// Starts `f(&mut object, arg)` and returns at once; the result (or the
    /// error, a failure to send the call included, as a value) comes from
    /// [`Pending::wait`], [`wait_all`], or `.await` on the [`Pending`].
    pub fn call_async<A: Message, R: Message>(&self, f: fn(&mut T, A) -> R, arg: A) -> Pending<R> {
        let started = self.start(f as usize, tramp::call_remote::<T, A, R>, &arg, Deadline::NEVER);
        started.unwrap_or_else(|e| Pending { ticket: Err(Some(e)), pid: self.pid })
    }

    /// Sends one call, waiting for room in the queue until `deadline`.
    fn start<A: Message, R: Message>(
        &self,
        func: usize,
        tramp: tramp::Trampoline,
        arg: &A,
        deadline: Deadline,
    ) -> Result<Pending<R>, RemoteError> {
        match submit_until(&self.inner, func, tramp, arg, deadline) {
            Ok(Some(ticket)) => Ok(Pending { ticket: Ok(ticket), pid: self.pid }),
            Ok(None) => Err(RemoteError::Timeout),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The remote process's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the remote process is still running.
    pub fn is_alive(&self) -> bool {
        self.inner.alive_workers() > 0
    }

    /// Stops the remote process: calls already queued run first (up to the
    /// shutdown timeout), then it exits.
    pub fn close(self) {
        drop(self);
    }

    fn error(&self, e: Error) -> RemoteError {
        to_remote_error(e, self.pid)
    }
}

impl<T> Drop for Remote<T> {
    fn drop(&mut self) {
        self.inner.close();
    }
}

/// What a failure to send a call means for the caller. Every kind is
/// named: a new one must be placed here, not fall into another's bucket.
fn to_remote_error(e: Error, pid: u32) -> RemoteError {
    match e {
        Error::Task(t) => from_task_error(t, pid),
        Error::Closed => RemoteError::Dead { pid },
        Error::Segment(e) => RemoteError::Segment(e.to_string()),
        Error::Ring(e) => RemoteError::Ring(e),
        Error::Full | Error::Timeout => RemoteError::Timeout,
        Error::Spawn(e) => RemoteError::Start(e.to_string()),
        e @ (Error::WorkerInit { .. } | Error::Config(_) | Error::BuildMismatch { .. }) => {
            RemoteError::Start(e.to_string())
        }
        // Not produced by sending a call; kept apart all the same.
        e @ (Error::Lock(_) | Error::Shared(_)) => RemoteError::Segment(e.to_string()),
        Error::NothingPending | Error::NotClosed => RemoteError::Dead { pid },
        // Only a pool that listens meets the network; kept apart all the same.
        #[cfg(feature = "net")]
        e @ Error::Net(_) => RemoteError::Start(e.to_string()),
    }
}

fn from_task_error(e: TaskError, pid: u32) -> RemoteError {
    match e {
        TaskError::Panicked { message } => RemoteError::Panicked { message },
        TaskError::WorkerDied { pid } | TaskError::TimedOut { pid } => RemoteError::Dead { pid },
        TaskError::PoolGone | TaskError::Cancelled => RemoteError::Dead { pid },
        TaskError::Encode(e) | TaskError::Decode(e) => RemoteError::Codec(e),
        TaskError::AlreadyTaken => RemoteError::AlreadyTaken,
    }
}

/// The result of a call started with [`Remote::call_async`]: wait for it
/// with [`Pending::wait`], or `.await` it on any executor (the same wait,
/// polled: see [`Ticket`]'s "As a future").
///
/// Dropping it discards the result when it comes.
#[must_use = "a pending call does nothing unless waited for"]
pub struct Pending<R> {
    /// The call's ticket, or why the call could not be sent (taken by the
    /// first wait or poll that reports it).
    ticket: Result<Ticket<R>, Option<RemoteError>>,
    pid: u32,
}

impl<R> fmt::Debug for Pending<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending").field("pid", &self.pid).field("sent", &self.ticket.is_ok()).finish()
    }
}

impl<R: Message> Pending<R> {
    /// Waits for the call's result.
    pub fn wait(self) -> Result<R, RemoteError> {
        let pid = self.pid;
        match self.ticket {
            Ok(ticket) => ticket.wait().map_err(|e| from_task_error(e, pid)),
            Err(e) => Err(e.unwrap_or(RemoteError::AlreadyTaken)),
        }
    }

    /// Waits up to `timeout` (`Duration::MAX`: no limit); `Err(self)` gives
    /// the pending call back if its result has not come.
    pub fn wait_timeout(self, timeout: Duration) -> Result<Result<R, RemoteError>, Pending<R>> {
        let pid = self.pid;
        match self.ticket {
            Ok(ticket) => match ticket.wait_timeout(timeout) {
                Ok(r) => Ok(r.map_err(|e| from_task_error(e, pid))),
                Err(ticket) => Err(Pending { ticket: Ok(ticket), pid }),
            },
            Err(e) => Ok(Err(e.unwrap_or(RemoteError::AlreadyTaken))),
        }
    }

    /// Waits until `deadline`; [`RemoteError::Timeout`] then (the result,
    /// if it ever comes, is discarded).
    fn wait_until(self, deadline: Deadline) -> Result<R, RemoteError> {
        match deadline.remaining() {
            None => self.wait(),
            Some(left) => self.wait_timeout(left).unwrap_or(Err(RemoteError::Timeout)),
        }
    }
}

impl<R: Message> Future for Pending<R> {
    type Output = Result<R, RemoteError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let pid = this.pid;
        match &mut this.ticket {
            Ok(ticket) => Pin::new(ticket).poll(cx).map_err(|e| from_task_error(e, pid)),
            Err(e) => Poll::Ready(Err(e.take().unwrap_or(RemoteError::AlreadyTaken))),
        }
    }
}

/// Waits for every pending call (Kkit's `ParallelResultFetcher`): the results
/// in the order given, or the first error met in that order.
pub fn wait_all<R: Message>(pending: Vec<Pending<R>>) -> Result<Vec<R>, RemoteError> {
    // Waiting in order costs nothing extra: the calls run in parallel in
    // their own processes whatever order we collect them in.
    let mut out = Vec::with_capacity(pending.len());
    let mut first_error = None;
    for p in pending {
        match p.wait() {
            Ok(r) => out.push(r),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::SegmentError;

    // Issue #10, finding 7: every failure to send a call came back as
    // `Codec`, segment and spawn failures included.
    #[test]
    fn a_failure_to_send_a_call_says_what_failed() {
        let pid = 7;
        assert!(matches!(to_remote_error(Error::Segment(SegmentError::Corrupt("x")), pid), RemoteError::Segment(_)));
        assert_eq!(
            to_remote_error(Error::Ring(RingError::TooLarge { len: 2, max: 1 }), pid),
            RemoteError::Ring(RingError::TooLarge { len: 2, max: 1 })
        );
        assert!(matches!(to_remote_error(Error::Spawn(std::io::Error::other("no")), pid), RemoteError::Start(_)));
        assert_eq!(to_remote_error(Error::Full, pid), RemoteError::Timeout);
        assert_eq!(to_remote_error(Error::Closed, pid), RemoteError::Dead { pid });
        assert!(matches!(
            to_remote_error(Error::Task(TaskError::Encode("too big".into())), pid),
            RemoteError::Codec(_)
        ));
    }
}
