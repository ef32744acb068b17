//! Across hosts (cargo feature `net`): a network session over
//! [zenoh](https://zenoh.io) whose frames are authenticated under a shared
//! secret.
//!
//! - [`Session`]: a zenoh peer. It listens only on the endpoints given to
//!   [`SessionBuilder::listen`], connects only to those given to
//!   [`SessionBuilder::connect`], and neither scouts nor gossips (no
//!   multicast discovery, no connection to an address another peer names).
//! - Frames: [`Publisher::publish`] seals a payload with AES-256-GCM under
//!   a key derived from the secret and the sender's id ([`auth`]): the
//!   payload is encrypted, and the tag binds it to the key expression and a
//!   per-sender counter; a [`Subscription`] delivers only frames that
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
//! What an open port exposes: anyone who can reach a `tcp/` endpoint can
//! connect, see key expressions, frame sizes and sender ids (payloads are
//! encrypted under the secret), and declare presence tokens (liveliness is
//! not authenticated: they can make a member look present, never make one
//! look gone); without the secret they cannot produce a frame any
//! subscription delivers.
//!
//! Across untrusted networks, use `tls/` endpoints with [`Tls`] files
//! ([`SessionBuilder::tls`]): zenoh's TLS transport (rustls) encrypts each
//! link, and a client connects only to a server whose certificate is signed
//! by a CA it trusts and names the host or address it dialled, so that no one
//! on the path reads the traffic or poses as the server. The server still
//! accepts any client, which then sees what an open `tcp/` port shows; with
//! [`Tls::mutual`] it demands a certificate of its CA from each client, and a
//! host without one gets no link at all (no key expressions, payloads or
//! tokens, in either direction). TLS does not replace the MAC: frames are
//! still sealed under the secret, end to end, whatever links carry them.
//!
//! ```no_run
//! use shmpool::net::{Session, Tls};
//! # fn main() -> Result<(), shmpool::net::NetError> {
//! # let key = b"k";
//! // host A (its certificate names `hostA`):
//! let a = Session::builder()
//!     .listen("tls/0.0.0.0:7447")
//!     .tls(Tls::new("ca.pem").identity("hostA.pem", "hostA.key"))
//!     .secret(key)
//!     .open()?;
//! // host B:
//! let b = Session::builder().connect("tls/hostA:7447").tls(Tls::new("ca.pem")).secret(key).open()?;
//! # Ok(())
//! # }
//! ```

pub mod auth;
mod envelope;
mod error;
mod members;
mod pool;
mod presence;
mod queue;
mod session;
mod subscription;
mod tls;
mod topic;

pub use envelope::{SenderId, OVERHEAD, REPLAY_WINDOW};
pub use error::NetError;
pub use members::{members, MemberInfo};
pub(crate) use pool::Relay;
pub use pool::{join, join_via, JoinReport};
pub use presence::{Presence, Token, Watch, WatchHandle};
pub(crate) use queue::{poll_call, serve_queue, Leased, QueueHome, QueueProxy};
pub use session::{Publisher, Session, SessionBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_QUEUE};
pub use subscription::{CallbackSubscription, DropCounts, Frame, Subscription};
pub use tls::Tls;
pub use topic::{bridge, TopicBridge};
