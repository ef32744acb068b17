//! Synchronisation that lives in shared memory and works across processes.
//!
//! - [`RawMutex`]: a futex mutex whose word records the holder's pid, so a
//!   holder that died is noticed and its lock recovered (`OwnerDied`).
//! - [`Event`]: the doorbell rings sleep on: waiters spin briefly, then sleep
//!   on a futex; a notifier makes a system call only when someone sleeps.

mod event;
mod raw_mutex;

pub use event::{AdaptiveSpin, Event, SpinPolicy, MIN_SPIN, PROBE_EVERY};
pub use raw_mutex::{Acquired, LockTimeout, RawMutex};
