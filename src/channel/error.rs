//! Why a channel operation failed: [`ChannelError`].

use std::fmt;
use std::io;

use crate::ring::RingError;
use crate::segment::SegmentError;
use crate::{Error, TaskError};

/// Why a channel operation failed.
///
/// Errors compare equal when they say the same thing (operating-system
/// errors: same kind, code and message).
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelError {
    /// The other end closed (dropped its end, or the child's function
    /// returned) and every message it sent has been received; or, for a
    /// child, its parent is gone.
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
    /// The child process could not be started (the system refused it).
    Spawn(io::Error),
    /// The channel's segment or rings could not be created.
    Segment(SegmentError),
    /// The child process started but failed before running the function
    /// (it did not come up, or could not open its end); says why.
    ChildFailed {
        /// What went wrong.
        message: String,
    },
    /// A value (a message, or `start`'s argument) could not be archived:
    /// a serialisation error, or no room for it in the channel's segment.
    /// Nothing was sent.
    Encode(String),
    /// A received message is not a valid archive of the expected type (or
    /// its frame is malformed); it was consumed.
    Decode(String),
    /// A channel ring's shared state is corrupt.
    Ring(RingError),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Closed => f.write_str("channel closed"),
            ChannelError::Timeout => f.write_str("timed out on the channel"),
            ChannelError::Panicked { message } => write!(f, "channel child panicked: {message}"),
            ChannelError::Dead { pid } => write!(f, "channel child process {pid} died"),
            ChannelError::Spawn(e) => write!(f, "could not start the channel child: {e}"),
            ChannelError::Segment(e) => write!(f, "could not create the channel's segment: {e}"),
            ChannelError::ChildFailed { message } => write!(f, "the channel child failed to start: {message}"),
            ChannelError::Encode(e) => write!(f, "could not archive the value to send: {e}"),
            ChannelError::Decode(e) => write!(f, "received message is invalid: {e}"),
            ChannelError::Ring(e) => write!(f, "channel ring failed: {e}"),
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChannelError::Spawn(e) => Some(e),
            ChannelError::Segment(e) => Some(e),
            ChannelError::Ring(e) => Some(e),
            _ => None,
        }
    }
}

impl PartialEq for ChannelError {
    fn eq(&self, other: &Self) -> bool {
        use ChannelError as E;
        match (self, other) {
            (E::Closed, E::Closed) | (E::Timeout, E::Timeout) => true,
            (E::Panicked { message: a }, E::Panicked { message: b }) => a == b,
            (E::ChildFailed { message: a }, E::ChildFailed { message: b }) => a == b,
            (E::Dead { pid: a }, E::Dead { pid: b }) => a == b,
            (E::Spawn(a), E::Spawn(b)) => {
                a.kind() == b.kind() && a.raw_os_error() == b.raw_os_error() && a.to_string() == b.to_string()
            }
            (E::Segment(a), E::Segment(b)) => a.to_string() == b.to_string(),
            (E::Encode(a), E::Encode(b)) | (E::Decode(a), E::Decode(b)) => a == b,
            (E::Ring(a), E::Ring(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for ChannelError {}

impl From<ChannelError> for Error {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::Panicked { message } => Error::Task(TaskError::Panicked { message }),
            ChannelError::Dead { pid } => Error::Task(TaskError::WorkerDied { pid }),
            ChannelError::Spawn(e) => Error::Spawn(e),
            ChannelError::Segment(e) => Error::Segment(e),
            ChannelError::ChildFailed { message } => Error::WorkerInit { message },
            ChannelError::Closed => Error::Closed,
            ChannelError::Timeout => Error::Timeout,
            ChannelError::Encode(e) => Error::Task(TaskError::Encode(e)),
            ChannelError::Decode(e) => Error::Task(TaskError::Decode(e)),
            ChannelError::Ring(e) => Error::Ring(e),
        }
    }
}

/// The message a wire error carries, without the task wording around it.
pub(super) fn wire_text(e: TaskError) -> String {
    match e {
        TaskError::Encode(m) | TaskError::Decode(m) => m,
        e => e.to_string(),
    }
}

/// Why `start` failed, from the runtime's error.
pub(super) fn start_error(e: Error) -> ChannelError {
    match e {
        Error::Spawn(e) => ChannelError::Spawn(e),
        Error::Segment(e) => ChannelError::Segment(e),
        Error::Ring(e) => ChannelError::Ring(e),
        Error::WorkerInit { message } => ChannelError::ChildFailed { message },
        Error::Task(TaskError::Encode(m)) => ChannelError::Encode(m),
        Error::Task(TaskError::PoolGone) | Error::Closed => {
            ChannelError::ChildFailed { message: "the child process exited before it took its function".into() }
        }
        e => ChannelError::ChildFailed { message: e.to_string() },
    }
}
