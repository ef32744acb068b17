//! The runtime: processes that run code for other processes.
//!
//! - [`bootstrap`]: how a re-executed copy of the binary becomes a worker
//!   (environment variable, load-time hook, [`crate::init`]).
//! - [`code`]: functions as sealed offsets from an anchor; the build id.
//! - [`workers`]: a group of worker processes around one segment: the task
//!   and result rings, the in-flight bound, start and shutdown.
//! - [`router`]: results to their waiters; [`ticket`]: one task's result;
//!   [`awaits`]: tasks parked on results, and the reactor source that
//!   drains the result ring for them.
//! - [`supervisor`]: reaping, respawning, requeueing, task timeouts.
//! - [`executor`]: the loop a worker runs; [`tramp`]: typed trampolines.
//! - [`control`]: the group's control block and worker table in the segment.
//! - [`logs`]: `log` records from workers to the parent's logger.
//! - [`calls`]: workers' calls to their parent ([`crate::parent_call`]).
//!
//! Nothing here knows the user APIs: `Pool`, `WorkerPool`, `Remote` and
//! `Channel` are peers built on [`Workers`] and [`Ticket`].

pub(crate) mod awaits;
pub(crate) mod bootstrap;
pub(crate) mod calls;
pub(crate) mod code;
pub(crate) mod control;
pub(crate) mod executor;
pub(crate) mod logs;
#[cfg(feature = "net")]
pub(crate) mod relay;
pub(crate) mod router;
pub(crate) mod supervisor;
pub(crate) mod ticket;
pub(crate) mod tramp;
pub(crate) mod workers;

use std::sync::{Mutex, MutexGuard};

pub(crate) use awaits::ParkOn;
pub use calls::{parent_call, parent_call_timeout, ParentCallError};
pub use code::build_id;
pub(crate) use router::RecvError;
pub use ticket::Ticket;
pub(crate) use ticket::{submit_to, submit_until};
pub use workers::OnWorkerDeath;
pub(crate) use workers::{Config, Reservation, Workers};

/// Locks a process-local mutex, going on past a panic of another holder
/// (the state it guards is kept consistent at every step).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
