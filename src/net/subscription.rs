//! Subscriptions that deliver only authentic, fresh frames: the callback
//! form, and the queue form built on it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use zenoh::sample::Locality;
use zenoh::Wait;

use super::envelope::{self, Refused, ReplayGuard, SenderId, SenderKeys};
use super::session::{key_expr, zenoh_err, Session};
use super::NetError;

/// A verified frame: its payload, the key it was published on and who sent
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    key: String,
    sender: SenderId,
    counter: u64,
    /// The frame as received, decrypted: the payload is `bytes[start..]`.
    bytes: Vec<u8>,
    start: usize,
}

impl Frame {
    /// The key the frame was published on.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The payload, as published. Its address has no particular alignment:
    /// copy it into an aligned buffer before reading an archive in place.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// The payload, owned.
    pub fn into_payload(mut self) -> Vec<u8> {
        self.bytes.drain(..self.start);
        self.bytes
    }

    /// The publishing session's id (raw, 16 bytes): frames from one session
    /// share it.
    pub fn sender(&self) -> SenderId {
        self.sender
    }

    /// The frame's number among its sender's frames (from 1, increasing).
    pub fn counter(&self) -> u64 {
        self.counter
    }
}

/// Counts of one subscription's (or one session's) frames.
#[derive(Debug, Default)]
pub(crate) struct SubStats {
    delivered: AtomicU64,
    malformed: AtomicU64,
    forged: AtomicU64,
    replayed: AtomicU64,
}

impl SubStats {
    fn count(&self, refused: Refused) {
        let counter = match refused {
            Refused::Malformed => &self.malformed,
            Refused::Forged => &self.forged,
            Refused::Replayed => &self.replayed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
            + self.forged.load(Ordering::Relaxed)
            + self.replayed.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> DropCounts {
        DropCounts {
            delivered: self.delivered.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            forged: self.forged.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
        }
    }
}

/// What a subscription did with the frames it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounts {
    /// Frames handed to the callback or queue.
    pub delivered: u64,
    /// Dropped: too short, or not a sealed frame at all.
    pub malformed: u64,
    /// Dropped: the MAC did not verify (altered, or another secret).
    pub forged: u64,
    /// Dropped: authentic, but already delivered (or too far behind its
    /// sender's newest frame).
    pub replayed: u64,
}

/// A subscription calling back with each verified frame; it ends when this
/// handle drops.
pub struct CallbackSubscription {
    // Declared first, so undeclared first when dropped (fields drop in order).
    _inner: zenoh::pubsub::Subscriber<()>,
    key: String,
    stats: Arc<SubStats>,
}

impl fmt::Debug for CallbackSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackSubscription")
            .field("key", &self.key)
            .field("counts", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl CallbackSubscription {
    pub(crate) fn new<F>(session: &Session, key: &str, on_frame: F) -> Result<Self, NetError>
    where
        F: Fn(Frame) + Send + Sync + 'static,
    {
        Self::with_origin(session, key, Locality::Any, on_frame)
    }

    /// [`new`](Self::new), for frames published by sessions of `origin`
    /// only: with [`Locality::Remote`], this session's own frames never
    /// reach the callback, nor are they checked or copied on the way.
    pub(crate) fn with_origin<F>(session: &Session, key: &str, origin: Locality, on_frame: F) -> Result<Self, NetError>
    where
        F: Fn(Frame) + Send + Sync + 'static,
    {
        let stats = Arc::new(SubStats::default());
        let session_stats = Arc::clone(session.session_stats());
        let sealer = Arc::clone(session.sealer());
        let guard = Mutex::new((SenderKeys::default(), ReplayGuard::default()));
        let sub_stats = Arc::clone(&stats);
        let inner = session
            .zenoh()
            .declare_subscriber(key_expr(key)?)
            .allowed_origin(origin)
            .callback(move |sample: zenoh::sample::Sample| {
                let key = sample.key_expr().as_str();
                // One copy out of zenoh's buffers; decrypted in place.
                let mut bytes = sample.payload().to_bytes().into_owned();
                let verdict = {
                    // A poisoned guard still holds valid keys and windows: keep it.
                    let mut g = guard.lock().unwrap_or_else(|p| p.into_inner());
                    let (keys, replays) = &mut *g;
                    envelope::open(&sealer.key, keys, key, &mut bytes).and_then(|opened| {
                        if replays.accept(&opened.sender, opened.counter) {
                            Ok(opened)
                        } else {
                            Err(Refused::Replayed)
                        }
                    })
                };
                match verdict {
                    Ok(opened) => {
                        sub_stats.delivered.fetch_add(1, Ordering::Relaxed);
                        on_frame(Frame {
                            key: key.to_owned(),
                            sender: opened.sender,
                            counter: opened.counter,
                            bytes,
                            start: envelope::PAYLOAD,
                        });
                    }
                    Err(refused) => {
                        sub_stats.count(refused);
                        session_stats.count(refused);
                        log::debug!("shmpool::net: dropped a frame on {key}: {refused:?}");
                    }
                }
            })
            .wait()
            .map_err(zenoh_err)?;
        Ok(CallbackSubscription { _inner: inner, key: key.to_owned(), stats })
    }

    /// The key expression subscribed to.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Frames dropped so far: malformed, forged or replayed.
    pub fn dropped(&self) -> u64 {
        self.stats.dropped()
    }

    /// Frames delivered and dropped so far, by reason.
    pub fn counts(&self) -> DropCounts {
        self.stats.snapshot()
    }
}

/// A subscription queueing verified frames for [`recv`](Self::recv).
pub struct Subscription {
    // The receiver drops before the subscription: a callback blocked on a
    // full queue then fails its send and returns, so undeclaring never
    // waits on it.
    rx: mpsc::Receiver<Frame>,
    inner: CallbackSubscription,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(session: &Session, key: &str, capacity: usize) -> Result<Self, NetError> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let inner = CallbackSubscription::new(session, key, move |frame| {
            // Fails only when the Subscription is being dropped.
            let _ = tx.send(frame);
        })?;
        Ok(Subscription { rx, inner })
    }

    /// Waits for the next frame.
    pub fn recv(&self) -> Result<Frame, NetError> {
        self.rx.recv().map_err(|_| NetError::Closed)
    }

    /// Waits for the next frame at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Frame, NetError> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => NetError::TimedOut,
            mpsc::RecvTimeoutError::Disconnected => NetError::Closed,
        })
    }

    /// The next frame if one is queued.
    pub fn try_recv(&self) -> Result<Option<Frame>, NetError> {
        match self.rx.try_recv() {
            Ok(frame) => Ok(Some(frame)),
            Err(mpsc::TryRecvError::Empty) => Ok(None),
            Err(mpsc::TryRecvError::Disconnected) => Err(NetError::Closed),
        }
    }

    /// The key expression subscribed to.
    pub fn key(&self) -> &str {
        self.inner.key()
    }

    /// Frames dropped so far: malformed, forged or replayed.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped()
    }

    /// Frames delivered and dropped so far, by reason.
    pub fn counts(&self) -> DropCounts {
        self.inner.counts()
    }
}
