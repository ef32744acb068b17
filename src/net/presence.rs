//! Presence through zenoh liveliness: a token says "this session is here",
//! a watch sees tokens come and go. A token disappears when its session
//! drops it, closes, or its process dies (the TCP link closes with the
//! process; over a link that goes silent instead, zenoh notices at the
//! link's lease, 10 s by default).

use std::fmt;
use std::sync::mpsc;
use std::time::Duration;

use zenoh::Wait;

use super::session::{key_expr, zenoh_err, Session};
use super::NetError;

/// A change seen by a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// A token on this key is alive (already there when the watch began,
    /// or declared since).
    Alive(String),
    /// The token on this key is gone: dropped, its session closed, or its
    /// process dead or unreachable.
    Gone(String),
}

impl Presence {
    /// The token's key.
    pub fn key(&self) -> &str {
        match self {
            Presence::Alive(key) | Presence::Gone(key) => key,
        }
    }
}

/// A presence token, alive until dropped (or its process dies).
pub struct Token {
    _inner: zenoh::liveliness::LivelinessToken,
    key: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("key", &self.key).finish_non_exhaustive()
    }
}

impl Token {
    pub(crate) fn new(session: &Session, key: &str) -> Result<Self, NetError> {
        let inner = session.zenoh().liveliness().declare_token(key_expr(key)?).wait().map_err(zenoh_err)?;
        Ok(Token { _inner: inner, key: key.to_owned() })
    }

    /// The token's key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A watch calling back on each change; it ends when this handle drops.
pub struct WatchHandle {
    _inner: zenoh::pubsub::Subscriber<()>,
    key: String,
}

impl fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchHandle").field("key", &self.key).finish_non_exhaustive()
    }
}

impl WatchHandle {
    pub(crate) fn new<F>(session: &Session, key: &str, on_change: F) -> Result<Self, NetError>
    where
        F: Fn(Presence) + Send + Sync + 'static,
    {
        let inner = session
            .zenoh()
            .liveliness()
            .declare_subscriber(key_expr(key)?)
            .history(true)
            .callback(move |sample: zenoh::sample::Sample| {
                let key = sample.key_expr().as_str().to_owned();
                on_change(match sample.kind() {
                    zenoh::sample::SampleKind::Put => Presence::Alive(key),
                    zenoh::sample::SampleKind::Delete => Presence::Gone(key),
                });
            })
            .wait()
            .map_err(zenoh_err)?;
        Ok(WatchHandle { _inner: inner, key: key.to_owned() })
    }

    /// The key expression watched.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A watch queueing each change for [`recv`](Self::recv).
pub struct Watch {
    rx: mpsc::Receiver<Presence>,
    inner: WatchHandle,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").field("key", &self.inner.key).finish_non_exhaustive()
    }
}

impl Watch {
    pub(crate) fn new(session: &Session, key: &str) -> Result<Self, NetError> {
        // Unbounded: changes are few (one per arrival or departure), and a
        // callback on zenoh's threads must not wait on a slow reader.
        let (tx, rx) = mpsc::channel();
        let inner = WatchHandle::new(session, key, move |change| {
            let _ = tx.send(change);
        })?;
        Ok(Watch { rx, inner })
    }

    /// Waits for the next change.
    pub fn recv(&self) -> Result<Presence, NetError> {
        self.rx.recv().map_err(|_| NetError::Closed)
    }

    /// Waits for the next change at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Presence, NetError> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => NetError::TimedOut,
            mpsc::RecvTimeoutError::Disconnected => NetError::Closed,
        })
    }

    /// The next change if one is queued.
    pub fn try_recv(&self) -> Result<Option<Presence>, NetError> {
        match self.rx.try_recv() {
            Ok(change) => Ok(Some(change)),
            Err(mpsc::TryRecvError::Empty) => Ok(None),
            Err(mpsc::TryRecvError::Disconnected) => Err(NetError::Closed),
        }
    }

    /// Waits until `change` is seen, skipping other changes, at most
    /// `timeout` in all.
    pub fn wait_for(&self, change: &Presence, timeout: Duration) -> Result<(), NetError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self.recv_timeout(left)? == *change {
                return Ok(());
            }
        }
    }

    /// The key expression watched.
    pub fn key(&self) -> &str {
        self.inner.key()
    }
}
