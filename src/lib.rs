//! Shared-memory, zero-copy worker pools between processes.
//!
//! Workers are copies of the running binary that map one shared segment with
//! their parent. Tasks and results travel through lock-free rings in that
//! segment as [rkyv] archives, written once and read in place.
//!
//! ```no_run
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), shmpool::Error> {
//!     shmpool::init();
//!     let pool = shmpool::Pool::builder().workers(2).build()?;
//!     assert_eq!(pool.submit(square, 7u64)?.wait()?, 49);
//!     let squares: Vec<u64> = pool.map(square, 0..100u64)?.collect::<Result<_, _>>()?;
//!     assert_eq!(squares[9], 81);
//!     Ok(())
//! }
//! ```
//!
//! See the README for the layers and the guarantees.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod codec;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod primitive;
pub mod ring;
mod runtime;
pub mod segment;
pub mod shared;
mod split;
pub mod sync;
pub mod sys;
mod thread;
pub mod wait;
mod wire;

pub mod channel;
mod pool;
mod remote;
pub mod service;
pub mod topic;

#[cfg(feature = "net")]
pub mod net;

pub use channel::{start, Channel, ChannelError, ChannelId, Exchange};
pub use codec::Message;
pub use error::{Error, GetError, PutError, TaskError};
pub use pool::{FeedError, FeedHandle, MapIter, MapStream, Pool, PoolBuilder, Worker, WorkerPool, WorkerPoolBuilder};
pub use remote::{wait_all, Pending, Remote, RemoteError};
pub use runtime::bootstrap::init;
pub use runtime::executor::pool_segment;
pub use runtime::Ticket;
pub use runtime::{build_id, OnWorkerDeath};
pub use runtime::{parent_call, parent_call_timeout, ParentCallError};
pub use segment::{cleanup_stale, list_named, NamedSegment, Segment, SegmentError};
pub use service::{Client, Service, ServiceError};
pub use shared::{BufferHandle, SharedBuffer, SharedError, SharedList, SharedMap, SharedObject};
pub use split::{split, Split, SplitArgs, SplitError};
pub use sync::LockKind;
pub use thread::{thread, SlaveThread, ThreadHandle};
pub use topic::{Bytes, Queue, Topic, TopicError};

/// The archived form of `T`: what a task that takes its argument in place sees.
pub type Archived<T> = rkyv::Archived<T>;
