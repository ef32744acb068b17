//! What the lock algorithms need from the operating system, gathered in one
//! place: the loom model tests (`tests/loom_locks.rs`) compile the same
//! algorithm files against a model of this module.

pub(crate) use crate::sys::futex::{
    wait as futex_wait, wait_any as futex_wait_any, wake as futex_wake, Wake, WAITV_MAX,
};
pub(crate) use crate::sys::process::{current_pid, is_alive};

/// Gives the core to another runnable thread.
pub(crate) fn yield_now() {
    std::thread::yield_now();
}
