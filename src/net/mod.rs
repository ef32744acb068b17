//! Across hosts (cargo feature `net`): frames authenticated under a shared
//! secret, for a network session over [zenoh](https://zenoh.io).

pub mod auth;
#[allow(dead_code)] // used by the session, next
mod envelope;

pub use envelope::{SenderId, OVERHEAD, REPLAY_WINDOW};
