//! A network session: one zenoh peer, configured so that nothing listens or
//! is discovered unless asked, and whose every frame is sealed under the
//! shared secret.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zenoh::Wait;

use super::auth::{Key, SenderKey};
use super::envelope::{self, SenderId};
use super::presence::{Token, Watch, WatchHandle};
use super::subscription::{CallbackSubscription, Frame, SubStats, Subscription};
use super::{NetError, Tls};

/// How long `open` tries the `connect` endpoints before failing, unless
/// [`SessionBuilder::connect_timeout`] says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames a [`Subscription`] queues before its callback waits for the
/// reader (and so holds back the network), unless told otherwise.
pub const DEFAULT_QUEUE: usize = 1024;

/// Options of a [`Session`]; see [`Session::builder`].
#[derive(Clone)]
pub struct SessionBuilder {
    listen: Vec<String>,
    connect: Vec<String>,
    secret: Option<Vec<u8>>,
    connect_timeout: Duration,
    tls: Option<Tls>,
}

impl fmt::Debug for SessionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBuilder")
            .field("listen", &self.listen)
            .field("connect", &self.connect)
            .field("secret", &self.secret.as_ref().map(|_| ".."))
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl SessionBuilder {
    /// Listens on `endpoint` (`tcp/127.0.0.1:7447`, `tcp/0.0.0.0:7447`;
    /// port 0 picks a free one; `tls/0.0.0.0:7447` with [`tls`](Self::tls)).
    /// May be given more than once. Without it the session listens nowhere:
    /// it only makes the connections it is told to.
    pub fn listen(mut self, endpoint: impl Into<String>) -> Self {
        self.listen.push(endpoint.into());
        self
    }

    /// Connects to `endpoint` (`tcp/hostA:7447`; `tls/hostA:7447` with
    /// [`tls`](Self::tls)), another session's listen address. May be given
    /// more than once; `open` waits for every one of them, up to the connect
    /// timeout. A connection lost later is retried in the background.
    pub fn connect(mut self, endpoint: impl Into<String>) -> Self {
        self.connect.push(endpoint.into());
        self
    }

    /// The secret shared by every host of the deployment (any length; 32
    /// random bytes are best). Required: frames are sealed under a key
    /// derived from it, and frames sealed under another are dropped.
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(secret.as_ref().to_vec());
        self
    }

    /// How long `open` tries to reach the `connect` endpoints (retrying
    /// every 50 ms, backing off to 1 s) before failing with
    /// [`NetError::Open`]. Default [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// TLS for the `tls/` endpoints: the CA to trust, this host's
    /// certificate, mutual TLS or not (see [`Tls`]). TLS encrypts the links
    /// and authenticates the server (the client too, under mutual TLS); the
    /// frames are still sealed under the [`secret`](Self::secret). A `tls/`
    /// endpoint without it is refused by `open`, and so is a file that
    /// cannot be read ([`NetError::TlsFile`]).
    ///
    /// The server's certificate must name what the client's endpoint names:
    /// `tls/hostA:7447` needs `hostA` among its DNS names,
    /// `tls/10.0.0.5:7447` needs that IP address among its IP addresses.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Opens the session: binds the listen endpoints, then connects.
    pub fn open(self) -> Result<Session, NetError> {
        let secret = self.secret.as_deref().ok_or(NetError::NoSecret)?;
        let key = Key::derive(secret);
        let config = self.config()?;
        let zenoh = zenoh::open(config).wait().map_err(|e| self.open_error(&e.to_string()))?;
        let sender: SenderId = zenoh.zid().to_le_bytes();
        let own = key.for_sender(&sender);
        let sealer = Arc::new(Sealer { key, own, sender, counter: AtomicU64::new(0), order: Mutex::new(()) });
        Ok(Session { zenoh, sealer, dropped: Arc::new(SubStats::default()) })
    }

    /// zenoh's failure to open, typed: [`NetError::Listen`] when a listen
    /// endpoint could not be bound (zenoh names it in its message, or it
    /// is the only kind of endpoint this session has), else
    /// [`NetError::Open`].
    fn open_error(&self, message: &str) -> NetError {
        let reason = tidy(message);
        let named = self.listen.iter().find(|ep| reason.contains(&format!("listener bound to {ep}")));
        let endpoint = match named {
            Some(ep) => ep.clone(),
            None if self.connect.is_empty() && !self.listen.is_empty() => self.listen.join(", "),
            None => return NetError::Open(reason),
        };
        let in_use = reason.contains("Address already in use") || reason.contains("AddrInUse");
        NetError::Listen { endpoint, in_use, reason }
    }

    fn config(&self) -> Result<zenoh::Config, NetError> {
        let mut config = zenoh::Config::default();
        let timeout_ms = i64::try_from(self.connect_timeout.as_millis()).unwrap_or(i64::MAX).max(1);
        let mut settings: Vec<(&str, String)> = vec![
            ("mode", "\"peer\"".into()),
            // No multicast scouting (it listens on UDP 7446 and answers
            // anyone on the LAN) and no gossip (a connected peer could make
            // us dial addresses it chose): connections are exactly the
            // `connect` endpoints, and the peers that dial our `listen` ones.
            ("scouting/multicast/enabled", "false".into()),
            ("scouting/gossip/enabled", "false".into()),
            // zenoh's peer default is `tcp/[::]:0`, a port open on every
            // interface: replaced by the user's list, empty unless asked.
            ("listen/endpoints", endpoint_list(&self.listen)?),
            ("connect/endpoints", endpoint_list(&self.connect)?),
            ("connect/timeout_ms", timeout_ms.to_string()),
            ("connect/exit_on_failure", "true".into()),
            ("connect/retry", "{period_init_ms: 50, period_max_ms: 1000, period_increase_factor: 2}".into()),
            ("adminspace/enabled", "false".into()),
        ];
        let is_tls = |endpoint: &String| endpoint.starts_with("tls/");
        match &self.tls {
            Some(tls) => settings.extend(tls.settings(self.listen.iter().any(is_tls))?),
            None if self.listen.iter().chain(&self.connect).any(is_tls) => {
                return Err(NetError::Config("a tls/ endpoint needs SessionBuilder::tls (the CA to trust)"));
            }
            None => {}
        }
        for (key, value) in settings {
            config
                .insert_json5(key, &value)
                .map_err(|e| NetError::Open(format!("zenoh configuration {key} = {value}: {e}")))?;
        }
        Ok(config)
    }
}

/// zenoh's error message without the source locations it appends to each
/// part (" at /…/src/tcp.rs:61.").
fn tidy(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(" at ") {
        let after = &rest[at + 4..];
        let end = after.find(|c: char| c.is_whitespace() || c == ']').unwrap_or(after.len());
        out.push_str(&rest[..at]);
        if !after[..end].contains(".rs:") {
            out.push_str(" at ");
            out.push_str(&after[..end]);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Checks an endpoint beyond zenoh's parse (which takes `tcp/host` with no
/// port, or port 99999, and fails only when it binds): the protocol is one
/// built in (TCP, TLS) and the address is `host:port` with a port number.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let parsed = endpoint.parse::<zenoh::config::EndPoint>().map_err(|e| tidy(&e.to_string()))?;
    let protocol = parsed.protocol();
    if !matches!(protocol.as_str(), "tcp" | "tls") {
        return Err(format!("protocol {:?} is not built in (only tcp and tls)", protocol.as_str()));
    }
    let address = parsed.address();
    let (host, port) = address.as_str().rsplit_once(':').ok_or("no port (tcp/<host>:<port>)")?;
    if host.is_empty() || host == "[]" {
        return Err("no host (tcp/<host>:<port>)".into());
    }
    port.parse::<u16>().map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))?;
    Ok(())
}

/// A JSON list of validated endpoints.
fn endpoint_list(endpoints: &[String]) -> Result<String, NetError> {
    let mut out = String::from("[");
    for (i, endpoint) in endpoints.iter().enumerate() {
        let bad = |reason: String| NetError::Endpoint { endpoint: endpoint.clone(), reason };
        if endpoint.contains(['"', '\\']) || endpoint.chars().any(char::is_control) {
            return Err(bad("quotes, backslashes and control characters are not allowed".into()));
        }
        check_endpoint(endpoint).map_err(bad)?;
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(endpoint);
        out.push('"');
    }
    out.push(']');
    Ok(out)
}

/// What seals a session's frames: the key, the session's sender id and its
/// frame counter.
#[derive(Debug)]
pub(crate) struct Sealer {
    pub(crate) key: Key,
    /// This session's own frame key (`key.for_sender(sender)`).
    own: SenderKey,
    sender: SenderId,
    counter: AtomicU64,
    /// Held from taking a counter to handing the frame to zenoh: frames
    /// leave in counter order. (Threads that numbered frames first and
    /// sent them later could put one more than the replay window behind
    /// its successors: the receiver would drop it as a replay.)
    order: Mutex<()>,
}

impl Sealer {
    /// Seals the payload made of `parts` (concatenated) for `key_expr` with
    /// the next counter and hands the frame to `put`, in counter order.
    fn send(
        &self,
        key_expr: &str,
        parts: &[&[u8]],
        put: impl FnOnce(Vec<u8>) -> Result<(), NetError>,
    ) -> Result<(), NetError> {
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        put(envelope::seal(&self.own, key_expr, &self.sender, counter, parts))
    }
}

/// A network session: a zenoh peer that listens only where asked, connects
/// only where told, and seals every frame it publishes under the shared
/// secret (frames that do not verify are dropped and counted).
///
/// ```no_run
/// use std::time::Duration;
/// # fn main() -> Result<(), shmpool::net::NetError> {
/// let a = shmpool::net::Session::builder().listen("tcp/127.0.0.1:7447").secret(b"k").open()?;
/// let b = shmpool::net::Session::builder().connect("tcp/127.0.0.1:7447").secret(b"k").open()?;
/// let sub = b.subscribe("demo/greeting")?;
/// let publisher = a.publisher("demo/greeting")?;
/// publisher.wait_matched(Duration::from_secs(5))?;
/// publisher.publish(b"hello")?;
/// assert_eq!(sub.recv_timeout(Duration::from_secs(5))?.payload(), b"hello");
/// # Ok(())
/// # }
/// ```
///
/// Dropping the session closes it (its subscriptions, watches and tokens
/// end with it).
#[derive(Clone)]
pub struct Session {
    zenoh: zenoh::Session,
    sealer: Arc<Sealer>,
    /// Frames dropped by every subscription of this session.
    dropped: Arc<SubStats>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("id", &self.id()).finish_non_exhaustive()
    }
}

impl Session {
    /// A builder: at least a [`secret`](SessionBuilder::secret), and
    /// [`listen`](SessionBuilder::listen) and/or
    /// [`connect`](SessionBuilder::connect) endpoints.
    pub fn builder() -> SessionBuilder {
        SessionBuilder {
            listen: Vec::new(),
            connect: Vec::new(),
            secret: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tls: None,
        }
    }

    /// This session's id (zenoh's, in hex): unique per open session.
    pub fn id(&self) -> String {
        self.zenoh.zid().to_string()
    }

    /// The ids of the peers connected to this session now.
    pub fn peers(&self) -> Vec<String> {
        self.zenoh.info().peers_zid().wait().map(|zid| zid.to_string()).collect()
    }

    /// A publisher on `key` (no wildcards).
    pub fn publisher(&self, key: &str) -> Result<Publisher, NetError> {
        let key_expr = key_expr(key)?;
        let inner = self
            .zenoh
            .declare_publisher(key_expr)
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .wait()
            .map_err(zenoh_err)?;
        Ok(Publisher { inner, key: key.to_owned(), sealer: Arc::clone(&self.sealer) })
    }

    /// Seals `payload` and publishes it once on `key`; see
    /// [`Publisher::publish`]. Subscribers whose declaration has not reached
    /// this session yet do not get it: use a [`Publisher`] and
    /// [`Publisher::wait_matched`] when that matters.
    pub fn publish(&self, key: &str, payload: &[u8]) -> Result<(), NetError> {
        let key_expr = key_expr(key)?;
        self.sealer.send(key, &[payload], |frame| {
            self.zenoh
                .put(key_expr, frame)
                .congestion_control(zenoh::qos::CongestionControl::Block)
                .wait()
                .map_err(zenoh_err)
        })
    }

    /// Subscribes to `key` (wildcards allowed: `pool/*/results`), queueing
    /// up to [`DEFAULT_QUEUE`] verified frames for [`Subscription::recv`].
    pub fn subscribe(&self, key: &str) -> Result<Subscription, NetError> {
        self.subscribe_queued(key, DEFAULT_QUEUE)
    }

    /// [`subscribe`](Self::subscribe) with a queue of `capacity` frames
    /// (at least 1). When it is full, delivery waits for the reader, holding
    /// back frames from the same peer: nothing is dropped.
    pub fn subscribe_queued(&self, key: &str, capacity: usize) -> Result<Subscription, NetError> {
        Subscription::new(self, key, capacity.max(1))
    }

    /// Subscribes to `key`, calling `on_frame` with each frame whose MAC
    /// verifies and which was not seen before; others are dropped and
    /// counted ([`CallbackSubscription::dropped`]).
    ///
    /// The callback runs on zenoh's network threads: keep it short (hand
    /// the frame to a queue). The subscription ends when the handle drops.
    pub fn subscribe_with<F>(&self, key: &str, on_frame: F) -> Result<CallbackSubscription, NetError>
    where
        F: Fn(Frame) + Send + Sync + 'static,
    {
        CallbackSubscription::new(self, key, on_frame)
    }

    /// [`subscribe_with`](Self::subscribe_with), for frames of other
    /// sessions only: this session's own frames on `key` are not delivered,
    /// nor checked (a MAC over every byte) on the way.
    pub(crate) fn subscribe_remote_with<F>(&self, key: &str, on_frame: F) -> Result<CallbackSubscription, NetError>
    where
        F: Fn(Frame) + Send + Sync + 'static,
    {
        CallbackSubscription::with_origin(self, key, zenoh::sample::Locality::Remote, on_frame)
    }

    /// Declares this session's presence on `key` (say
    /// `pool/<name>/members/<id>`) until the token drops or the process
    /// dies: other sessions' [`watch`](Self::watch) see it come and go.
    ///
    /// Liveliness is not authenticated: anyone connected can declare a
    /// token on any key. Use it to learn that a member already admitted by
    /// an authenticated frame has gone, not to admit one.
    pub fn declare_token(&self, key: &str) -> Result<Token, NetError> {
        Token::new(self, key)
    }

    /// Watches the tokens on `key` (wildcards allowed): tokens alive now
    /// are reported first, then each arrival and departure.
    pub fn watch(&self, key: &str) -> Result<Watch, NetError> {
        Watch::new(self, key)
    }

    /// [`watch`](Self::watch) with a callback instead of a queue (run on
    /// zenoh's threads: keep it short).
    pub fn watch_with<F>(&self, key: &str, on_change: F) -> Result<WatchHandle, NetError>
    where
        F: Fn(super::Presence) + Send + Sync + 'static,
    {
        WatchHandle::new(self, key, on_change)
    }

    /// The keys of the tokens alive on `key` now, as far as the network
    /// answers within `timeout`.
    pub fn alive(&self, key: &str, timeout: Duration) -> Result<Vec<String>, NetError> {
        // A timeout too long to add (`Duration::MAX`) is a day: zenoh ends
        // the stream once every peer answered anyway.
        let timeout = timeout.min(Duration::from_secs(24 * 3600));
        let replies = self.zenoh.liveliness().get(key_expr(key)?).timeout(timeout).wait().map_err(zenoh_err)?;
        let deadline = Instant::now() + timeout;
        let mut keys = Vec::new();
        // Bounded twice: by the deadline and by zenoh ending the stream.
        while let Ok(Some(reply)) = replies.recv_deadline(deadline) {
            if let Ok(sample) = reply.result() {
                keys.push(sample.key_expr().as_str().to_owned());
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// This session's sender id, as [`Frame::sender`](super::Frame::sender)
    /// gives it on frames it published.
    pub fn sender(&self) -> SenderId {
        self.sealer.sender
    }

    /// Frames dropped so far by all of this session's subscriptions
    /// (malformed, forged or replayed).
    pub fn dropped(&self) -> u64 {
        self.dropped.dropped()
    }

    pub(crate) fn zenoh(&self) -> &zenoh::Session {
        &self.zenoh
    }

    pub(crate) fn sealer(&self) -> &Arc<Sealer> {
        &self.sealer
    }

    pub(crate) fn session_stats(&self) -> &Arc<SubStats> {
        &self.dropped
    }
}

/// Publishes sealed frames on one key.
pub struct Publisher {
    inner: zenoh::pubsub::Publisher<'static>,
    key: String,
    sealer: Arc<Sealer>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher").field("key", &self.key).finish_non_exhaustive()
    }
}

impl Publisher {
    /// The key this publisher publishes on.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Seals `payload` (a copy: [`OVERHEAD`](super::OVERHEAD) bytes more) and
    /// publishes it to every matching subscriber known now, reliably and in
    /// order per subscriber.
    ///
    /// When a link's send queue is full this waits for room (zenoh's
    /// `Block` congestion control), which zenoh bounds by closing a link
    /// stuck longer than its `wait_before_close` (5 s by default).
    pub fn publish(&self, payload: &[u8]) -> Result<(), NetError> {
        self.publish_parts(&[payload])
    }

    /// [`publish`](Self::publish) of the payload made of `parts`,
    /// concatenated: copied once, into the sealed frame.
    pub(crate) fn publish_parts(&self, parts: &[&[u8]]) -> Result<(), NetError> {
        self.sealer.send(&self.key, parts, |frame| self.inner.put(frame).wait().map_err(zenoh_err))
    }

    /// Whether at least one subscriber (local or remote) matches now.
    pub fn matched(&self) -> Result<bool, NetError> {
        Ok(self.inner.matching_status().wait().map_err(zenoh_err)?.matching())
    }

    /// Waits until at least one subscriber matches, or `timeout` passes
    /// ([`NetError::TimedOut`]; `Duration::MAX`: no limit). Polls every few
    /// milliseconds, sleeping.
    pub fn wait_matched(&self, timeout: Duration) -> Result<(), NetError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut pause = Duration::from_millis(1);
        loop {
            if self.matched()? {
                return Ok(());
            }
            let left = deadline.map_or(pause, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return Err(NetError::TimedOut);
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// `key` as a zenoh key expression, or a typed error.
pub(crate) fn key_expr(key: &str) -> Result<zenoh::key_expr::KeyExpr<'static>, NetError> {
    zenoh::key_expr::KeyExpr::try_from(key.to_owned())
        .map_err(|e| NetError::KeyExpr { key: key.to_owned(), reason: e.to_string() })
}

pub(crate) fn zenoh_err(e: zenoh::Error) -> NetError {
    NetError::Zenoh(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The topic bridge's inbound subscription: a session's own frames,
    /// which zenoh hands back to its own subscribers, reach a plain
    /// subscription but not a remote-only one, which does not even check
    /// them (its counts stay empty).
    #[test]
    fn a_remote_only_subscription_skips_its_own_sessions_frames() {
        let session = Session::builder().secret(b"k").open().expect("a session listening nowhere");
        let counted = |count: &Arc<AtomicU64>| {
            let count = Arc::clone(count);
            move |_| {
                count.fetch_add(1, Ordering::Relaxed);
            }
        };
        let (all, remote) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let _plain = session.subscribe_with("own/frames", counted(&all)).unwrap();
        let remote_only = session.subscribe_remote_with("own/frames", counted(&remote)).unwrap();
        let publisher = session.publisher("own/frames").unwrap();
        publisher.wait_matched(Duration::from_secs(20)).unwrap();
        for _ in 0..3 {
            publisher.publish(b"mine").unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while all.load(Ordering::Relaxed) < 3 {
            assert!(Instant::now() < deadline, "the plain subscription got {} of 3", all.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(remote.load(Ordering::Relaxed), 0, "the remote-only subscription got its own session's frames");
        assert_eq!(remote_only.counts(), crate::net::DropCounts::default(), "its own frames were checked");
    }
}
