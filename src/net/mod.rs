//! Across hosts (cargo feature `net`): a network session over
//! [zenoh](https://zenoh.io) whose frames are authenticated under a shared
//! secret.
//!
//! - [`Session`]: a zenoh peer. It listens only on the endpoints given to
//!   [`SessionBuilder::listen`], connects only to those given to
//!   [`SessionBuilder::connect`], and neither scouts nor gossips (no
//!   multicast discovery, no connection to an address another peer names).
//! - Frames: [`Publisher::publish`] seals a payload with HMAC-SHA3-256 under
//!   a key derived from the secret ([`auth`]), binding the key expression and
//!   a per-sender counter; a [`Subscription`] delivers only frames that
//!   verify and were not seen before, and counts the others
//!   ([`DropCounts`]).
//! - Presence: [`Token`] and [`Watch`], zenoh liveliness. A member that dies
//!   takes its token with it (its TCP link closes with the process).
//! - Pools across hosts: [`PoolBuilder::listen`](crate::PoolBuilder::listen)
//!   on the owner, [`join`] on each member; who the members are:
//!   [`Pool::members`](crate::Pool::members) in the owner's process,
//!   [`members`] from anywhere that holds the secret (`shmpool-admin
//!   members <endpoint>`).
//!
//! What an open port exposes: anyone who can reach a `listen` endpoint can
//! connect, see key expressions and payloads (TCP is not encrypted: use
//! zenoh's TLS transport across untrusted networks), and declare presence
//! tokens; without the secret they cannot produce a frame any subscription
//! delivers.

pub mod auth;
mod envelope;
mod error;
mod members;
mod pool;
mod presence;
mod session;
mod subscription;
mod topic;

pub use envelope::{SenderId, OVERHEAD, REPLAY_WINDOW};
pub use error::NetError;
pub use members::{members, MemberInfo};
pub(crate) use pool::Relay;
pub use pool::{join, JoinReport};
pub use presence::{Presence, Token, Watch, WatchHandle};
pub use session::{Publisher, Session, SessionBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_QUEUE};
pub use subscription::{CallbackSubscription, DropCounts, Frame, Subscription};
pub use topic::{bridge, TopicBridge};
