//! The errors users meet, one small enum per operation.

use std::fmt;
use std::io;

use crate::ring::RingError;
use crate::segment::SegmentError;

/// Why a task produced no result.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked in its worker; the worker goes on with other tasks.
    Panicked {
        /// The panic message and where it was raised.
        message: String,
    },
    /// The worker running the task died (killed, aborted) before finishing it.
    WorkerDied {
        /// The dead worker's pid.
        pid: u32,
    },
    /// The task ran longer than the pool's task timeout; its worker was
    /// killed (and replaced).
    TimedOut {
        /// The killed worker's pid.
        pid: u32,
    },
    /// The task was removed from the queue by `clear_tasks` before it ran.
    Cancelled,
    /// The argument or result could not be archived (too large for the
    /// segment, or a serialisation error).
    Encode(String),
    /// The argument or result archive failed validation.
    Decode(String),
    /// Every worker is gone, or the pool shut down, before the result came.
    PoolGone,
    /// The result was already taken: a ticket (or pending call) polled
    /// again after its future completed.
    AlreadyTaken,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Panicked { message } => write!(f, "task panicked: {message}"),
            TaskError::WorkerDied { pid } => write!(f, "worker process {pid} died while running the task"),
            TaskError::TimedOut { pid } => write!(f, "task exceeded the task timeout; its worker {pid} was killed"),
            TaskError::Cancelled => write!(f, "task was cleared from the queue before it ran"),
            TaskError::Encode(e) => write!(f, "could not archive the task's value: {e}"),
            TaskError::Decode(e) => write!(f, "task's archive is invalid: {e}"),
            TaskError::PoolGone => write!(f, "the pool's workers are gone"),
            TaskError::AlreadyTaken => write!(f, "the result was already taken (polled after it completed)"),
        }
    }
}

impl std::error::Error for TaskError {}

/// The pool-level error: building, submitting, and anything below.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The shared segment could not be created, opened, or is full.
    Segment(SegmentError),
    /// A worker process could not be started.
    Spawn(io::Error),
    /// A worker's initialisation (`Worker::init`) panicked.
    WorkerInit {
        /// The panic message.
        message: String,
    },
    /// A task failed (see [`TaskError`]).
    Task(TaskError),
    /// The pool was closed; no new task is accepted.
    Closed,
    /// A ring in the segment failed.
    Ring(RingError),
    /// The queue stayed full (a `put` that gave up).
    Full,
    /// A timed wait gave up.
    Timeout,
    /// A lock was not acquired (see [`crate::sync::LockError`]).
    Lock(crate::sync::LockError<()>),
    /// A shared container operation failed.
    Shared(crate::shared::SharedError),
    /// `get` was called with no task outstanding.
    NothingPending,
    /// Invalid configuration (says what).
    Config(&'static str),
    /// `join` on a pool that is still open: its workers would never exit.
    /// Call `close` (or `terminate`) first.
    NotClosed,
    /// A worker runs another build of the program than the one that wrote
    /// the pool's segment: the code offsets there would name other code, so
    /// it refused to start.
    BuildMismatch {
        /// The build id the segment records (the parent's).
        expected: u64,
        /// The worker's build id.
        found: u64,
    },
    /// The pool's network side failed (feature `net`): the endpoint given
    /// to [`listen`](crate::PoolBuilder::listen) could not be bound
    /// ([`NetError::Listen`](crate::net::NetError::Listen)) or is malformed
    /// ([`NetError::Endpoint`](crate::net::NetError::Endpoint)), or its
    /// relay could not start.
    #[cfg(feature = "net")]
    Net(crate::net::NetError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Segment(e) => write!(f, "{e}"),
            Error::Spawn(e) => write!(f, "could not start a worker process: {e}"),
            Error::WorkerInit { message } => write!(f, "worker initialisation panicked: {message}"),
            Error::Task(e) => write!(f, "{e}"),
            Error::Closed => write!(f, "the pool is closed"),
            Error::Ring(e) => write!(f, "{e}"),
            Error::Full => write!(f, "the task queue is full"),
            Error::Timeout => write!(f, "timed out"),
            Error::Lock(e) => write!(f, "{e}"),
            Error::Shared(e) => write!(f, "{e}"),
            Error::NothingPending => write!(f, "no task is pending"),
            Error::Config(what) => write!(f, "invalid pool configuration: {what}"),
            Error::NotClosed => write!(f, "join on an open pool would wait for ever: close it first"),
            Error::BuildMismatch { expected, found } => {
                write!(f, "worker runs build {found:016x}, but the pool's segment was written by build {expected:016x}")
            }
            #[cfg(feature = "net")]
            Error::Net(e) => write!(f, "the pool's network side: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Segment(e) => Some(e),
            Error::Spawn(e) => Some(e),
            Error::Task(e) => Some(e),
            Error::Ring(e) => Some(e),
            Error::Lock(e) => Some(e),
            Error::Shared(e) => Some(e),
            #[cfg(feature = "net")]
            Error::Net(e) => Some(e),
            Error::WorkerInit { .. }
            | Error::Closed
            | Error::Full
            | Error::Timeout
            | Error::NothingPending
            | Error::Config(_)
            | Error::NotClosed
            | Error::BuildMismatch { .. } => None,
        }
    }
}

impl From<SegmentError> for Error {
    fn from(e: SegmentError) -> Self {
        Error::Segment(e)
    }
}

/// Lets `?` carry a lock error up (a guard it held is dropped, releasing the lock).
impl<G> From<crate::sync::LockError<G>> for Error {
    fn from(e: crate::sync::LockError<G>) -> Self {
        Error::Lock(e.without_guard())
    }
}

impl From<crate::shared::SharedError> for Error {
    fn from(e: crate::shared::SharedError) -> Self {
        Error::Shared(e)
    }
}

impl From<TaskError> for Error {
    fn from(e: TaskError) -> Self {
        Error::Task(e)
    }
}

#[cfg(feature = "net")]
impl From<crate::net::NetError> for Error {
    fn from(e: crate::net::NetError) -> Self {
        Error::Net(e)
    }
}

impl From<RingError> for Error {
    fn from(e: RingError) -> Self {
        Error::Ring(e)
    }
}

/// Why [`crate::WorkerPool::put`] did not queue a task; the task comes back.
#[derive(PartialEq, Eq)]
pub enum PutError<T> {
    /// The queue stayed full until the timeout (or at once, for `try_put`).
    Full(T),
    /// The pool is closed.
    Closed(T),
    /// The task could not be archived into the segment (says why).
    Encode(T, String),
}

impl<T> PutError<T> {
    /// The task that was not queued.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(t) | PutError::Closed(t) | PutError::Encode(t, _) => t,
        }
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::Encode(_, e) => write!(f, "Encode(.., {e:?})"),
        }
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("task queue is full"),
            PutError::Closed(_) => f.write_str("pool is closed"),
            PutError::Encode(_, e) => write!(f, "could not archive the task: {e}"),
        }
    }
}

impl<T> std::error::Error for PutError<T> {}

impl<T> From<PutError<T>> for Error {
    fn from(e: PutError<T>) -> Self {
        match e {
            PutError::Full(_) => Error::Full,
            PutError::Closed(_) => Error::Closed,
            PutError::Encode(_, e) => Error::Task(TaskError::Encode(e)),
        }
    }
}

/// Why [`crate::WorkerPool::get`] returned no result.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GetError {
    /// No task is outstanding: every put has been answered.
    NothingPending,
    /// The timeout passed before a result arrived.
    Timeout,
    /// The next result is a failed task.
    Task(TaskError),
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetError::NothingPending => f.write_str("no task is pending"),
            GetError::Timeout => f.write_str("timed out waiting for a result"),
            GetError::Task(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GetError {}

impl From<GetError> for Error {
    fn from(e: GetError) -> Self {
        match e {
            GetError::Task(t) => Error::Task(t),
            GetError::NothingPending => Error::NothingPending,
            GetError::Timeout => Error::Timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    // Issue #10, finding 7: `source` dropped the lock and container errors.
    #[test]
    fn source_keeps_every_wrapped_error() {
        let lock = Error::Lock(crate::sync::LockError::WouldBlock);
        assert_eq!(lock.source().map(|e| e.to_string()), Some(crate::sync::LockError::<()>::WouldBlock.to_string()));
        let shared = Error::Shared(crate::shared::SharedError::OutOfRange { index: 3, len: 1 });
        assert!(shared.source().is_some());
        assert!(Error::Task(TaskError::PoolGone).source().is_some());
        assert!(Error::NotClosed.source().is_none());
    }
}
