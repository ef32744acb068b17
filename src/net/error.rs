//! The network layer's error.

use std::fmt;
use std::path::PathBuf;

/// Why a network operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetError {
    /// `open` was called without a [`secret`](super::SessionBuilder::secret):
    /// every frame is authenticated, so there is no session without one.
    NoSecret,
    /// An endpoint (`tcp/host:port`) could not be parsed.
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A key expression (`plant/temps`, `pool/*/members`) is not valid.
    KeyExpr {
        /// The key expression as given.
        key: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A [`listen`](super::SessionBuilder::listen) endpoint could not be
    /// bound: its port is taken, the address is not this host's, or its
    /// protocol is not built in (TCP only).
    Listen {
        /// The endpoint as given.
        endpoint: String,
        /// The address is already in use (another pool or program listens
        /// there): pick another port, or port 0 for any free one.
        in_use: bool,
        /// What the network layer said.
        reason: String,
    },
    /// The session could not be opened: no `connect` endpoint reachable
    /// within the connect timeout, or zenoh failed to start.
    Open(String),
    /// zenoh failed an operation on an open session.
    Zenoh(String),
    /// The wait ended at its deadline.
    TimedOut,
    /// The subscription or watch was closed: its session is gone.
    Closed,
    /// The pool's owner refused to admit this process: it runs another
    /// build of the program (code offsets would name other code).
    Refused {
        /// The owner's build id.
        owner_build: u64,
    },
    /// A pool or session option is out of range, missing, or at odds with
    /// another (says which).
    Config(&'static str),
    /// A file named by [`Tls`](super::Tls) could not be read, or holds no
    /// PEM block.
    TlsFile {
        /// Which file: `root CA certificate`, `certificate`, `private key`.
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::NoSecret => f.write_str("a network session needs a secret (SessionBuilder::secret)"),
            NetError::Endpoint { endpoint, reason } => write!(f, "bad endpoint {endpoint:?}: {reason}"),
            NetError::KeyExpr { key, reason } => write!(f, "bad key expression {key:?}: {reason}"),
            NetError::Listen { endpoint, in_use: true, .. } => {
                write!(f, "could not listen on {endpoint}: the address is already in use")
            }
            NetError::Listen { endpoint, in_use: false, reason } => {
                write!(f, "could not listen on {endpoint}: {reason}")
            }
            NetError::Open(reason) => write!(f, "could not open the network session: {reason}"),
            NetError::Zenoh(reason) => write!(f, "network operation failed: {reason}"),
            NetError::TimedOut => f.write_str("timed out"),
            NetError::Closed => f.write_str("the network session is closed"),
            NetError::Refused { owner_build } => write!(
                f,
                "the pool's owner runs build {owner_build:#018x} of the program, this is {:#018x}: refused",
                crate::runtime::build_id()
            ),
            NetError::Config(what) => write!(f, "bad network option: {what}"),
            NetError::TlsFile { what, path, reason } => write!(f, "TLS {what} {}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for NetError {}
