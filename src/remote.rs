//! `Remote<T>`: one object living in a process of its own (Kkit's remote
//! object proxy), called by `fn(&mut T, A) -> R` and read by `fn(&T) -> R`.
//!
//! The object is built in the child by a creator `fn(A) -> T`; calls run in
//! order, one at a time, through the same rings as pool tasks. A call that
//! panics is an error for that call only: the object lives on. The process
//! is not replaced if it dies: the object's state died with it, and every
//! call then fails with [`RemoteError::Dead`].

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::Message;
use crate::runtime::{submit_to, tramp, Config, Ticket, Workers};
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
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::Panicked { message } => write!(f, "remote call panicked: {message}"),
            RemoteError::Dead { pid } => write!(f, "remote object's process {pid} is gone"),
            RemoteError::Start(e) => write!(f, "remote object could not start: {e}"),
            RemoteError::Codec(e) => write!(f, "remote call's value could not be transferred: {e}"),
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
        let config = Config {
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
        self.call_async(f, arg)?.wait()
    }

    /// Reads from the object: `f(&object)` in the remote process.
    pub fn get<R: Message>(&self, f: fn(&T) -> R) -> Result<R, RemoteError> {
        let ticket = submit_to(&self.inner, f as usize, tramp::read_remote::<T, R>, &()).map_err(|e| self.error(e))?;
        Pending { ticket, pid: self.pid }.wait()
    }

    /// Starts `f(&mut object, arg)` and returns at once; the result (or the
    /// error, as a value) comes from [`Pending::wait`] or [`wait_all`].
    pub fn call_async<A: Message, R: Message>(&self, f: fn(&mut T, A) -> R, arg: A) -> Result<Pending<R>, RemoteError> {
        let ticket =
            submit_to(&self.inner, f as usize, tramp::call_remote::<T, A, R>, &arg).map_err(|e| self.error(e))?;
        Ok(Pending { ticket, pid: self.pid })
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

fn to_remote_error(e: Error, pid: u32) -> RemoteError {
    match e {
        Error::Task(t) => from_task_error(t, pid),
        Error::Closed => RemoteError::Dead { pid },
        other => RemoteError::Codec(other.to_string()),
    }
}

fn from_task_error(e: TaskError, pid: u32) -> RemoteError {
    match e {
        TaskError::Panicked { message } => RemoteError::Panicked { message },
        TaskError::WorkerDied { pid } | TaskError::TimedOut { pid } => RemoteError::Dead { pid },
        TaskError::PoolGone | TaskError::Cancelled => RemoteError::Dead { pid },
        TaskError::Encode(e) | TaskError::Decode(e) => RemoteError::Codec(e),
    }
}

/// The result of a call started with [`Remote::call_async`].
#[must_use = "a pending call does nothing unless waited for"]
pub struct Pending<R> {
    ticket: Ticket<R>,
    pid: u32,
}

impl<R> fmt::Debug for Pending<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending").field("pid", &self.pid).finish()
    }
}

impl<R: Message> Pending<R> {
    /// Waits for the call's result.
    pub fn wait(self) -> Result<R, RemoteError> {
        let pid = self.pid;
        self.ticket.wait().map_err(|e| from_task_error(e, pid))
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
