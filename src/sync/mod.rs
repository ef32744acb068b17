//! Synchronisation that lives in shared memory and works across processes.
//!
//! - [`Mutex`], [`RwLock`], [`SpinLock`], [`AuthLock`]: the locks users take,
//!   named in a segment, with `lock`, `try_lock` and `lock_for`; a timeout is
//!   a suspected deadlock (a handler can be set), and a holder that died is
//!   noticed: the next taker gets [`LockError::OwnerDied`].
//! - Their algorithms, apart: [`RawMutex`] (futex word with the holder's pid),
//!   [`RawRwLock`] (writer pid and a table of reader pids), [`RawSpin`].
//! - [`Event`]: the doorbell rings sleep on: waiters spin briefly, then sleep
//!   on a futex; a notifier makes a system call only when a waiter has
//!   announced that it sleeps (a bit in the futex word, which the wake clears).

mod event;
mod lock;
mod os;
mod raw_mutex;
mod raw_rwlock;
mod raw_spin;

pub use event::{wait_any, AdaptiveSpin, Announced, Event, SpinPolicy, BUSY_CLOCK_EVERY, MIN_SPIN, PROBE_EVERY};
pub use lock::{
    AuthLock, DeadlockInfo, LockCell, LockError, LockGuard, LockKind, LockOptions, Mutex, RwLock, SpinLock,
    MAX_OPERATORS,
};
#[allow(unused_imports)] // used by the shared containers
pub(crate) use lock::{Hold, LockRef, Wait};
pub use raw_mutex::{Acquired, LockTimeout, RawMutex};
pub use raw_rwlock::{RawRwLock, RwFailure, READER_SLOTS};
pub use raw_spin::RawSpin;

/// How many futex wake system calls the sync primitives ([`Event`],
/// [`RawMutex`]) of this process have made so far (a relaxed counter, for
/// tests and diagnostics).
#[doc(hidden)]
pub fn wake_calls() -> u64 {
    os::wake_calls()
}
