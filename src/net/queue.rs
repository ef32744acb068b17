//! Queues across hosts: one host serves a queue (its items live in that
//! host's segment); other hosts push and pop through it over the network.
//!
//! The serving host runs a server (one process per host: elected in the
//! queue's header, as a topic's bridge is). It answers requests sent to its
//! own session's key, so each request is handled once: a push is queued
//! locally (after the type's fingerprint and the archive are checked), a
//! pop takes an item as a local consumer would and *leases* it to the
//! remote consumer until that one acks (freed) or returns it (queued
//! again). When a consumer's presence token goes (its process died, its
//! link dropped), everything leased to it is queued again: at least once,
//! as a dead local consumer's items are.
//!
//! Key expressions, under `shmpool/queue/<name>`: `home/<zid>` (the
//! server's presence), `h/<zid>` (requests to that server), `c/<client>`
//! (its answers to one client handle), `alive/<client>` (the client's
//! presence).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rkyv::{Archive, Deserialize, Serialize};

use super::pool::{decode, encode};
use super::{CallbackSubscription, NetError, Presence, Session, Token, WatchHandle};
use crate::topic::{Item, Payload, Queue, TopicError, MAX_HELD};
use crate::wait::reactor::WakeAt;
use crate::wait::{Changed, Deadline};

/// How long opening a queue served elsewhere waits for its server.
const OPEN_WAIT: Duration = Duration::from_secs(10);
/// The longest a pop or push waits at the server per request: a longer
/// wait is several requests, so that a server that vanished is noticed.
const HOLD: Duration = Duration::from_secs(5);
/// How long past its wait a request's answer may take to come back.
const GRACE: Duration = Duration::from_secs(5);
/// How long a hello to one server waits for its answer.
const HELLO_WAIT: Duration = Duration::from_secs(2);
/// How long a `len` waits for its answer.
const LEN_WAIT: Duration = Duration::from_secs(1);
/// Items leased at once by a server: its consumer slot's records (one kept
/// for the pop in progress).
const MAX_LEASES: usize = MAX_HELD - 1;
/// A lease to a client whose presence was never seen is taken back after
/// this long (its token may not have arrived yet; past that, it is gone).
const UNSEEN_LEASE: Duration = Duration::from_secs(10);
/// How often the server looks up with nothing to do.
const IDLE: Duration = Duration::from_millis(100);

/// A request to the server.
#[derive(Archive, Serialize, Deserialize, Debug)]
enum Request {
    Hello { client: u64, id: u64, fingerprint: u64 },
    Push { client: u64, id: u64, fingerprint: u64, wait_ms: u64, value: Vec<u8> },
    Pop { client: u64, id: u64, wait_ms: u64 },
    Finish { client: u64, lease: u64, ack: bool },
    Len { client: u64, id: u64 },
}

/// Why a request failed, as the server says it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
enum Failure {
    Full,
    Timeout,
    TypeMismatch { expected: String },
    Invalid(String),
    Encode(String),
    Other(String),
}

/// The server's answer to one request.
#[derive(Archive, Serialize, Deserialize, Debug)]
enum Reply {
    Done { id: u64 },
    Item { id: u64, lease: u64, seq: u64, value: Vec<u8> },
    Len { id: u64, n: u64 },
    Failed { id: u64, why: Failure },
}

impl Reply {
    fn id(&self) -> u64 {
        match self {
            Reply::Done { id } | Reply::Item { id, .. } | Reply::Len { id, .. } | Reply::Failed { id, .. } => *id,
        }
    }
}

fn wait_ms(d: Deadline) -> u64 {
    match d.instant() {
        None => u64::MAX,
        Some(t) => t.saturating_duration_since(Instant::now()).as_millis().min(u128::from(u64::MAX - 1)) as u64,
    }
}

fn net_err(what: &str, e: NetError) -> TopicError {
    TopicError::Network(format!("{what}: {e}"))
}

// ---------------------------------------------------------------------------
// The client side.

/// An item a server leased to this client: its bytes, copied into an
/// aligned buffer.
pub(crate) struct Leased {
    lease: u64,
    seq: u64,
    home: String,
    bytes: rkyv::util::AlignedVec<16>,
}

impl Leased {
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// What a client handle waits on: answers by request id, and the server.
#[derive(Default)]
struct ClientState {
    /// The servers whose presence is seen (`<zid>-<epoch>`). Presence is
    /// not authenticated: one is used only once it answered a sealed hello.
    candidates: Vec<String>,
    /// The server in use: one of `candidates` that answered.
    home: Option<String>,
    awaited: HashSet<u64>,
    answers: HashMap<u64, Reply>,
}

/// A handle on a queue served by another host.
pub(crate) struct QueueProxy {
    session: Session,
    name: String,
    base: String,
    client: u64,
    fingerprint: u64,
    next: AtomicU64,
    state: Mutex<ClientState>,
    changed: Changed,
    /// This client's presence, its answers' subscription, the watch on the
    /// server: set once open, ended with the handle.
    keep: std::sync::OnceLock<(Token, CallbackSubscription, WatchHandle)>,
}

impl fmt::Debug for QueueProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueProxy").field("queue", &self.base).field("home", &self.lock().home).finish()
    }
}

/// One request in flight; dropping it forgets the request (an item that
/// comes back for it is returned to the server).
pub(crate) struct Call {
    proxy: Arc<QueueProxy>,
    id: u64,
    home: String,
    /// The caller's own deadline (a pop or push is re-sent until it).
    deadline: Deadline,
    /// When the server's answer is overdue.
    answer_by: Instant,
    /// Re-sends the request (same wait rules) under a new id.
    kind: CallKind,
    /// Polled: wakes the task when the answer is overdue.
    timer: Option<WakeAt>,
}

#[derive(Clone)]
enum CallKind {
    Push(Arc<Vec<u8>>),
    Pop,
    Len,
    Hello,
}

impl Drop for Call {
    fn drop(&mut self) {
        self.proxy.forget(self.id, &self.home);
    }
}

impl QueueProxy {
    /// Opens the queue `name` served by another host: waits for its server
    /// and checks the type.
    pub(crate) fn open(
        session: &Session,
        name: &str,
        fingerprint: u64,
        label: &str,
    ) -> Result<Arc<QueueProxy>, TopicError> {
        let client = {
            let mut b = [0u8; 8];
            crate::sys::shm::random_bytes(&mut b).map_err(|e| TopicError::Network(format!("a client id: {e}")))?;
            u64::from_ne_bytes(b) | 1
        };
        let base = format!("shmpool/queue/{name}");
        let proxy = Arc::new(QueueProxy {
            session: session.clone(),
            name: name.to_owned(),
            base: base.clone(),
            client,
            fingerprint,
            next: AtomicU64::new(1),
            state: Mutex::default(),
            changed: Changed::default(),
            keep: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&proxy);
        let answers = session
            .subscribe_with(&format!("{base}/c/{client:016x}"), move |f| {
                if let (Some(p), Some(reply)) = (weak.upgrade(), decode::<Reply>(f.payload())) {
                    p.answered(reply);
                }
            })
            .map_err(|e| net_err("subscribing to the server's answers", e))?;
        let weak = Arc::downgrade(&proxy);
        let home = session
            .watch_with(&format!("{base}/home/*"), move |change| {
                if let Some(p) = weak.upgrade() {
                    p.home_changed(change);
                }
            })
            .map_err(|e| net_err("watching for the queue's server", e))?;
        let token = session
            .declare_token(&format!("{base}/alive/{client:016x}"))
            .map_err(|e| net_err("declaring this client's presence", e))?;
        let _ = proxy.keep.set((token, answers, home));
        // The server's presence, then its answer to a hello (which also
        // checks the type).
        let until = Instant::now() + OPEN_WAIT;
        {
            let mut st = proxy.lock();
            while st.candidates.is_empty() {
                let now = Instant::now();
                if now >= until {
                    return Err(TopicError::NotFound(format!("{name} (no host serves it within {OPEN_WAIT:?})")));
                }
                st = proxy.changed.wait_timeout(st, until - now);
            }
        }
        match proxy.verify(until) {
            Err(TopicError::TypeMismatch { expected, .. }) => {
                Err(TopicError::TypeMismatch { expected, found: label.to_owned() })
            }
            Err(TopicError::Network(_)) => Err(TopicError::Network(format!(
                "no host serving {name:?} answered (another secret, or another build of the frames?)"
            ))),
            Err(e) => Err(e),
            Ok(_) => Ok(proxy),
        }
    }

    /// Finds a server that answers a sealed hello (and carries our type),
    /// trying each one seen, until `until`; it becomes the one in use.
    fn verify(self: &Arc<Self>, until: Instant) -> Result<String, TopicError> {
        loop {
            let candidates = self.lock().candidates.clone();
            for home in candidates {
                let slice = Instant::now() + HELLO_WAIT;
                let call = self.call_to(&home, CallKind::Hello, Deadline::from(Some(slice.min(until))))?;
                match call.wait() {
                    Ok(_) => {
                        self.lock().home = Some(home.clone());
                        return Ok(home);
                    }
                    Err(e @ TopicError::TypeMismatch { .. }) => return Err(e),
                    Err(_) => {}
                }
                if Instant::now() >= until {
                    break;
                }
            }
            if Instant::now() >= until {
                return Err(TopicError::Network(format!("no host serving {} answered", self.base)));
            }
            // None answered yet: wait for a change, or try again shortly.
            let st = self.lock();
            drop(self.changed.wait_timeout(st, until.saturating_duration_since(Instant::now()).min(HELLO_WAIT)));
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answered(&self, reply: Reply) {
        let mut st = self.lock();
        let id = reply.id();
        if st.awaited.contains(&id) {
            st.answers.insert(id, reply);
            drop(st);
            self.changed.notify_all();
        } else if let Reply::Item { lease, .. } = reply {
            // Nobody waits for it any more (timed out, dropped): it goes
            // back (to the server in use: leases live as long as it does).
            let home = st.home.clone();
            drop(st);
            if let Some(home) = home {
                self.send(&home, &Request::Finish { client: self.client, lease, ack: false });
            }
        }
    }

    fn home_changed(&self, change: Presence) {
        let mut st = self.lock();
        let id = change.key().rsplit('/').next().unwrap_or_default().to_owned();
        match change {
            Presence::Alive(_) => {
                if !st.candidates.contains(&id) {
                    st.candidates.push(id);
                }
            }
            Presence::Gone(_) => {
                st.candidates.retain(|c| *c != id);
                if st.home.as_deref() == Some(id.as_str()) {
                    st.home = None;
                }
            }
        }
        drop(st);
        self.changed.notify_all();
    }

    fn forget(&self, id: u64, home: &str) {
        let mut st = self.lock();
        st.awaited.remove(&id);
        if let Some(Reply::Item { lease, .. }) = st.answers.remove(&id) {
            drop(st);
            self.send(home, &Request::Finish { client: self.client, lease, ack: false });
        }
    }

    /// Seals and sends `req` to the server `home`; `false` if it could not go.
    fn send(&self, home: &str, req: &Request) -> bool {
        let sent = encode(req).and_then(|b| self.session.publish(&format!("{}/h/{home}", self.base), &b));
        if let Err(e) = &sent {
            log::warn!("shmpool: a request to the server of {} could not be sent: {e}", self.base);
        }
        sent.is_ok()
    }

    /// Sends a request of `kind` to the server in use (finding one that
    /// answers first if the last one went), waiting at the server at most
    /// until `deadline` (capped at [`HOLD`]).
    fn start(self: &Arc<Self>, kind: CallKind, deadline: Deadline) -> Result<Call, TopicError> {
        let known = self.lock().home.clone();
        let home = match known {
            Some(home) => home,
            None => self.verify(Instant::now() + HELLO_WAIT)?,
        };
        self.call_to(&home, kind, deadline)
    }

    /// Sends a request of `kind` to the server `home`.
    fn call_to(self: &Arc<Self>, home: &str, kind: CallKind, deadline: Deadline) -> Result<Call, TopicError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().awaited.insert(id);
        let hold = match kind {
            CallKind::Push(_) | CallKind::Pop => Deadline::from(Some(deadline.slice(HOLD))),
            CallKind::Len | CallKind::Hello => Deadline::now(),
        };
        let client = self.client;
        let req = match &kind {
            CallKind::Push(v) => Request::Push {
                client,
                id,
                fingerprint: self.fingerprint,
                wait_ms: wait_ms(hold),
                value: v.as_ref().clone(),
            },
            CallKind::Pop => Request::Pop { client, id, wait_ms: wait_ms(hold) },
            CallKind::Len => Request::Len { client, id },
            CallKind::Hello => Request::Hello { client, id, fingerprint: self.fingerprint },
        };
        let answer_by = match kind {
            CallKind::Push(_) | CallKind::Pop => hold.instant().unwrap_or_else(Instant::now) + GRACE,
            CallKind::Len | CallKind::Hello => deadline.instant().unwrap_or_else(|| Instant::now() + GRACE),
        };
        let call = Call { proxy: Arc::clone(self), id, home: home.to_owned(), deadline, answer_by, kind, timer: None };
        if !self.send(home, &req) {
            return Err(TopicError::Network(format!("a request to the server of {} could not be sent", self.base)));
        }
        Ok(call)
    }

    /// The call's answer if it came, or why none will come.
    fn answer(&self, st: &mut ClientState, call: &Call) -> Option<Result<Reply, TopicError>> {
        if let Some(reply) = st.answers.remove(&call.id) {
            st.awaited.remove(&call.id);
            return Some(Ok(reply));
        }
        if !st.candidates.contains(&call.home) {
            return Some(Err(TopicError::Network(format!("the host serving {} went away", self.base))));
        }
        if Instant::now() >= call.answer_by {
            return Some(Err(TopicError::Network(format!("the host serving {} did not answer in time", self.base))));
        }
        None
    }

    /// A queue's push: sent, then answered; re-sent while the server says
    /// full and the deadline allows.
    pub(crate) fn push(self: &Arc<Self>, archive: &[u8], deadline: Deadline) -> Result<(), TopicError> {
        let value = Arc::new(archive.to_vec());
        self.run(CallKind::Push(value), deadline).map(|_| ())
    }

    /// A queue's pop: an item leased to this client.
    pub(crate) fn pop(self: &Arc<Self>, deadline: Deadline) -> Result<Leased, TopicError> {
        self.run(CallKind::Pop, deadline).and_then(|(reply, home)| leased(reply, home))
    }

    /// The server's count of queued items (0 if it does not answer).
    pub(crate) fn len(self: &Arc<Self>) -> usize {
        match self.run(CallKind::Len, Deadline::after(LEN_WAIT)) {
            Ok((Reply::Len { n, .. }, _)) => n as usize,
            _ => 0,
        }
    }

    /// Sends and waits, blocking, re-sending a pop or push whose wait at
    /// the server ended before the caller's deadline.
    fn run(self: &Arc<Self>, kind: CallKind, deadline: Deadline) -> Result<(Reply, String), TopicError> {
        let mut call = self.start(kind, deadline)?;
        loop {
            match call.wait() {
                Err(TopicError::Timeout | TopicError::Full) if !call.deadline.passed() => {
                    call = self.start(call.kind.clone(), call.deadline)?;
                }
                Ok(reply) => return Ok((reply, call.home.clone())),
                Err(e) => return Err(e),
            }
        }
    }

    /// The same as [`push`](Self::push), polled.
    pub(crate) fn start_push(self: &Arc<Self>, archive: &[u8], deadline: Deadline) -> Result<Call, TopicError> {
        self.start(CallKind::Push(Arc::new(archive.to_vec())), deadline)
    }

    /// The same as [`pop`](Self::pop), polled.
    pub(crate) fn start_pop(self: &Arc<Self>, deadline: Deadline) -> Result<Call, TopicError> {
        self.start(CallKind::Pop, deadline)
    }

    pub(crate) fn poll_push(&self, call: &mut Call, cx: &mut Context<'_>) -> Poll<Result<(), TopicError>> {
        call.poll_again(cx).map(|r| r.map(|_| ()))
    }

    pub(crate) fn poll_pop(&self, call: &mut Call, cx: &mut Context<'_>) -> Poll<Result<Leased, TopicError>> {
        call.poll_again(cx).map(|r| r.and_then(|reply| leased(reply, call.home.clone())))
    }

    /// Acks (frees) or returns a leased item.
    pub(crate) fn finish(&self, item: &Leased, ack: bool) {
        self.send(&item.home, &Request::Finish { client: self.client, lease: item.lease, ack });
    }
}

/// Polls a remote operation whose call is kept in `slot` between polls,
/// started by `start` at the first poll.
pub(crate) fn poll_call<R>(
    slot: &mut Option<Call>,
    cx: &mut Context<'_>,
    start: impl FnOnce() -> Result<Call, TopicError>,
    poll: impl FnOnce(&mut Call, &mut Context<'_>) -> Poll<Result<R, TopicError>>,
) -> Poll<Result<R, TopicError>> {
    let mut call = match slot.take() {
        Some(call) => call,
        None => match start() {
            Ok(call) => call,
            Err(e) => return Poll::Ready(Err(e)),
        },
    };
    let polled = poll(&mut call, cx);
    if polled.is_pending() {
        *slot = Some(call);
    }
    polled
}

fn leased(reply: Reply, home: String) -> Result<Leased, TopicError> {
    match reply {
        Reply::Item { lease, seq, value, .. } => {
            let mut bytes = rkyv::util::AlignedVec::<16>::with_capacity(value.len());
            bytes.extend_from_slice(&value);
            Ok(Leased { lease, seq, home, bytes })
        }
        other => Err(TopicError::Network(format!("an unexpected answer to a pop: {other:?}"))),
    }
}

impl Call {
    /// The answer, as a result: a `Failed` one is its error.
    fn outcome(reply: Reply) -> Result<Reply, TopicError> {
        match reply {
            Reply::Failed { why, .. } => Err(match why {
                Failure::Full => TopicError::Full,
                Failure::Timeout => TopicError::Timeout,
                Failure::TypeMismatch { expected } => TopicError::TypeMismatch { expected, found: String::new() },
                Failure::Invalid(e) => TopicError::Invalid(e),
                Failure::Encode(e) => TopicError::Encode(e),
                // Not a network failure: retrying would not help.
                Failure::Other(e) => TopicError::Segment(format!("at the serving host: {e}")),
            }),
            ok => Ok(ok),
        }
    }

    /// Blocks for the answer.
    fn wait(&self) -> Result<Reply, TopicError> {
        let p = &self.proxy;
        let mut st = p.lock();
        loop {
            if let Some(r) = p.answer(&mut st, self) {
                return r.and_then(Call::outcome);
            }
            let left = self.answer_by.saturating_duration_since(Instant::now());
            st = p.changed.wait_timeout(st, left.min(Duration::from_millis(100)));
        }
    }

    /// Polls for the answer, re-sending a pop or push whose wait at the
    /// server ended before the caller's deadline.
    fn poll_again(&mut self, cx: &mut Context<'_>) -> Poll<Result<Reply, TopicError>> {
        loop {
            let p = Arc::clone(&self.proxy);
            let mut st = p.lock();
            let got = match p.answer(&mut st, self) {
                Some(r) => r.and_then(Call::outcome),
                None => {
                    // Woken by an answer, a change of server, or the time
                    // the answer is overdue (then `answer` says so).
                    p.changed.park(cx.waker());
                    drop(st);
                    self.timer = Some(WakeAt::new(self.answer_by, cx.waker()));
                    return Poll::Pending;
                }
            };
            drop(st);
            match got {
                Err(TopicError::Timeout | TopicError::Full) if !self.deadline.passed() => {
                    match p.start(self.kind.clone(), self.deadline) {
                        Ok(next) => *self = next,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                done => return Poll::Ready(done),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The serving side.

/// This host's server of a queue to other hosts; stops when dropped.
pub(crate) struct QueueHome {
    stop: Arc<AtomicBool>,
    inbox: Arc<Inbox>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for QueueHome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueHome").finish_non_exhaustive()
    }
}

impl Drop for QueueHome {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.inbox.nudge();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What reaches the server thread, in arrival order: requests, clients
/// come and gone; and wake-ups of its parked pops and pushes.
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    changed: Changed,
}

#[derive(Default)]
struct InboxState {
    events: VecDeque<Event>,
    woken: bool,
}

enum Event {
    Request(Request),
    Alive(u64),
    Gone(u64),
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn post(&self, event: Event) {
        self.lock().events.push_back(event);
        self.changed.notify_all();
    }

    fn nudge(&self) {
        self.lock().woken = true;
        self.changed.notify_all();
    }

    /// Sleeps until an event, a wake-up or `timeout`.
    fn nap(&self, timeout: Duration) {
        let st = self.lock();
        let mut st = if st.woken || !st.events.is_empty() { st } else { self.changed.wait_timeout(st, timeout) };
        st.woken = false;
    }
}

/// The server's parked pops and pushes are woken through the inbox: the
/// reactor wakes them as it wakes any task, and the server thread polls
/// them again.
impl Wake for Inbox {
    fn wake(self: Arc<Self>) {
        self.nudge();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.nudge();
    }
}

/// The queues this process serves (one handle each: a second `serve` of
/// the same queue stands by).
static SERVED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Serving a queue: this process's handle is the one (among this process's
/// handles, and among this host's processes, through the queue's header).
struct Claim<'q, T: Payload> {
    queue: &'q Queue<T>,
}

impl<'q, T: Payload> Claim<'q, T> {
    fn take(queue: &'q Queue<T>) -> Option<Claim<'q, T>> {
        let mut served = SERVED.lock().unwrap_or_else(|e| e.into_inner());
        let name = queue.name().to_owned();
        if served.contains(&name) || !queue.claim_home() {
            return None;
        }
        served.push(name);
        Some(Claim { queue })
    }
}

impl<T: Payload> Drop for Claim<'_, T> {
    fn drop(&mut self) {
        self.queue.release_home();
        SERVED.lock().unwrap_or_else(|e| e.into_inner()).retain(|n| n != self.queue.name());
    }
}

/// Starts serving `queue` (a handle of its own on this host's queue) to
/// other hosts through `session`.
pub(crate) fn serve_queue<T: Payload>(queue: Queue<T>, session: &Session) -> Result<QueueHome, TopicError> {
    let (fingerprint, label) = queue.type_of()?;
    let stop = Arc::new(AtomicBool::new(false));
    let inbox = Arc::new(Inbox::default());
    let name = queue.name().to_owned();
    let (session, stop2, inbox2) = (session.clone(), Arc::clone(&stop), Arc::clone(&inbox));
    let thread = std::thread::Builder::new()
        .name("shmpool-queue".into())
        .spawn(move || {
            let server = Server {
                queue: &queue,
                session,
                base: format!("shmpool/queue/{name}"),
                fingerprint,
                label,
                inbox: inbox2,
            };
            server.run(&stop2);
        })
        .map_err(|e| TopicError::Network(format!("starting the queue's server thread: {e}")))?;
    Ok(QueueHome { stop, inbox, thread: Some(thread) })
}

type PendingPop<'q, T> = Pin<Box<dyn Future<Output = Result<Item<T>, TopicError>> + 'q>>;
type PendingPush<'q> = Pin<Box<dyn Future<Output = Result<(), TopicError>> + 'q>>;

/// A request the server holds until it can answer (or its wait ends).
struct Waiting<'q, T: Payload> {
    client: u64,
    id: u64,
    until: Option<Instant>,
    job: Job<'q, T>,
}

enum Job<'q, T: Payload> {
    Pop(PendingPop<'q, T>),
    Push(PendingPush<'q>),
}

/// An item out on lease.
struct Lease<T: Payload> {
    item: Item<T>,
    since: Instant,
}

struct Server<'q, T: Payload> {
    queue: &'q Queue<T>,
    session: Session,
    base: String,
    fingerprint: u64,
    label: String,
    inbox: Arc<Inbox>,
}

/// The server thread's state while it serves. Dropped (on stop, or after a
/// panic of a round) in field order: waits end, leased items go back to the
/// queue, the presence token goes (clients learn it), then the claim.
struct Serving<'q, T: Payload> {
    waiting: Vec<Waiting<'q, T>>,
    leases: HashMap<(u64, u64), Lease<T>>,
    next_lease: u64,
    alive: HashSet<u64>,
    _subs: (Token, CallbackSubscription, WatchHandle),
    _claim: Claim<'q, T>,
}

impl<'q, T: Payload> Server<'q, T> {
    fn run(&self, stop: &AtomicBool) {
        let mut serving: Option<Serving<'q, T>> = None;
        while !stop.load(Ordering::Acquire) {
            let Some(s) = serving.as_mut() else {
                // One handle per process and one process per host serves:
                // the others stand by, and take over when it goes.
                match Claim::take(self.queue).map(|claim| self.declare(claim)) {
                    Some(Ok(s)) => serving = Some(s),
                    Some(Err(e)) => {
                        log::warn!("shmpool: serving queue {} to the network failed: {e}", self.base);
                        self.inbox.nap(Duration::from_secs(1));
                    }
                    None => self.inbox.nap(IDLE),
                }
                continue;
            };
            let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.round(s)));
            if round.is_err() {
                // Not silently: logged, and serving starts over (what was
                // leased goes back to the queue; clients see the server go).
                log::error!("shmpool: the server of queue {} panicked; it starts over", self.base);
                serving = None;
            }
        }
        // Leases and waits end with `serving`: leased items go back.
    }

    fn declare(&self, claim: Claim<'q, T>) -> Result<Serving<'q, T>, NetError> {
        // A fresh epoch each time: requests and acks meant for an earlier
        // serving (replayed, or late) go to a key nobody serves.
        let epoch = {
            let mut b = [0u8; 8];
            crate::sys::shm::random_bytes(&mut b).map_err(|e| NetError::Open(format!("drawing an epoch: {e}")))?;
            u64::from_ne_bytes(b)
        };
        let id = format!("{}-{epoch:016x}", self.session.id());
        let inbox = Arc::clone(&self.inbox);
        let requests = self.session.subscribe_with(&format!("{}/h/{id}", self.base), move |f| {
            if let Some(req) = decode::<Request>(f.payload()) {
                inbox.post(Event::Request(req));
            }
        })?;
        let inbox = Arc::clone(&self.inbox);
        let clients = self.session.watch_with(&format!("{}/alive/*", self.base), move |p| {
            let Some(c) = p.key().rsplit('/').next().and_then(|id| u64::from_str_radix(id, 16).ok()) else { return };
            inbox.post(match p {
                Presence::Alive(_) => Event::Alive(c),
                Presence::Gone(_) => Event::Gone(c),
            });
        })?;
        // Declared last: clients send requests only once they see it.
        let token = self.session.declare_token(&format!("{}/home/{id}", self.base))?;
        Ok(Serving {
            waiting: Vec::new(),
            leases: HashMap::new(),
            next_lease: 1,
            alive: HashSet::new(),
            _subs: (token, requests, clients),
            _claim: claim,
        })
    }

    fn reply(&self, client: u64, reply: &Reply) -> bool {
        let sent = encode(reply).and_then(|b| self.session.publish(&format!("{}/c/{client:016x}", self.base), &b));
        if let Err(e) = &sent {
            log::warn!("shmpool: an answer of the server of {} could not be sent: {e}", self.base);
        }
        sent.is_ok()
    }

    fn failed(&self, client: u64, id: u64, why: Failure) {
        self.reply(client, &Reply::Failed { id, why });
    }

    /// One round: events in arrival order, waits polled; then a nap until
    /// something happens or a wait ends.
    fn round(&self, s: &mut Serving<'q, T>) {
        let events = std::mem::take(&mut self.inbox.lock().events);
        for event in events {
            match event {
                Event::Request(req) => self.handle(s, req),
                Event::Alive(client) => {
                    s.alive.insert(client);
                }
                Event::Gone(client) => {
                    s.alive.remove(&client);
                    // What it held goes back to the queue (dropped items return).
                    s.leases.retain(|(c, _), _| *c != client);
                    s.waiting.retain(|w| w.client != client);
                }
            }
        }
        // A client whose presence never showed: taken for gone after a while.
        s.leases.retain(|(c, _), l| s.alive.contains(c) || l.since.elapsed() < UNSEEN_LEASE);
        self.poll_waiting(s);
        let next = s.waiting.iter().filter_map(|w| w.until).min();
        self.inbox.nap(next.map_or(IDLE, |t| t.saturating_duration_since(Instant::now()).min(IDLE)));
    }

    fn handle(&self, s: &mut Serving<'q, T>, req: Request) {
        let until = |ms: u64| (ms != u64::MAX).then(|| Instant::now() + Duration::from_millis(ms));
        match req {
            Request::Hello { client, id, fingerprint } => {
                if fingerprint == self.fingerprint {
                    self.reply(client, &Reply::Done { id });
                } else {
                    self.failed(client, id, Failure::TypeMismatch { expected: self.label.clone() });
                }
            }
            Request::Len { client, id } => {
                self.reply(client, &Reply::Len { id, n: self.queue.len() as u64 });
            }
            Request::Finish { client, lease, ack } => {
                if let Some(l) = s.leases.remove(&(client, lease)) {
                    if ack {
                        l.item.ack();
                    } else {
                        l.item.nack();
                    }
                }
            }
            Request::Push { client, id, fingerprint, wait_ms, value } => {
                if fingerprint != self.fingerprint {
                    return self.failed(client, id, Failure::TypeMismatch { expected: self.label.clone() });
                }
                // Network payloads arrive unaligned: copied, then checked.
                let mut archive = rkyv::util::AlignedVec::<16>::with_capacity(value.len());
                archive.extend_from_slice(&value);
                if let Err(e) = T::check(&archive) {
                    return self.failed(client, id, Failure::Invalid(e));
                }
                let q = self.queue;
                let job = Job::Push(Box::pin(async move { q.push_archive_async(&archive).await }));
                s.waiting.push(Waiting { client, id, until: until(wait_ms), job });
            }
            Request::Pop { client, id, wait_ms } => {
                let q = self.queue;
                let job = Job::Pop(Box::pin(q.pop_async()));
                s.waiting.push(Waiting { client, id, until: until(wait_ms), job });
            }
        }
    }

    fn poll_waiting(&self, s: &mut Serving<'q, T>) {
        let waker = Waker::from(Arc::clone(&self.inbox));
        let mut cx = Context::from_waker(&waker);
        let now = Instant::now();
        let mut i = 0;
        while i < s.waiting.len() {
            let w = &mut s.waiting[i];
            let room = s.leases.len() < MAX_LEASES;
            let done = match &mut w.job {
                Job::Push(f) => match f.as_mut().poll(&mut cx) {
                    Poll::Ready(Ok(())) => Some(Reply::Done { id: w.id }),
                    Poll::Ready(Err(e)) => Some(failure(w.id, e)),
                    Poll::Pending => None,
                },
                Job::Pop(f) if room => match f.as_mut().poll(&mut cx) {
                    Poll::Ready(Ok(item)) => {
                        let lease = s.next_lease;
                        s.next_lease += 1;
                        let reply = Reply::Item { id: w.id, lease, seq: item.seq(), value: item.bytes().to_vec() };
                        // Leased before it is sent: an ack may come back at once.
                        s.leases.insert((w.client, lease), Lease { item, since: now });
                        Some(reply)
                    }
                    Poll::Ready(Err(e)) => Some(failure(w.id, e)),
                    Poll::Pending => None,
                },
                // Every record of the slot is leased: it waits for one back.
                Job::Pop(_) => None,
            };
            let expired = || w.until.is_some_and(|t| now >= t);
            let reply = match done {
                Some(r) => r,
                None if expired() => {
                    let why = if matches!(w.job, Job::Push(_)) { Failure::Full } else { Failure::Timeout };
                    Reply::Failed { id: w.id, why }
                }
                None => {
                    i += 1;
                    continue;
                }
            };
            let w = s.waiting.swap_remove(i);
            if !self.reply(w.client, &reply) {
                if let Reply::Item { lease, .. } = reply {
                    // Never reached the client: back to the queue now.
                    s.leases.remove(&(w.client, lease));
                }
            }
        }
    }
}

fn failure(id: u64, e: TopicError) -> Reply {
    let why = match e {
        TopicError::Full => Failure::Full,
        TopicError::Timeout => Failure::Timeout,
        TopicError::Invalid(e) => Failure::Invalid(e),
        TopicError::Encode(e) => Failure::Encode(e),
        e => Failure::Other(e.to_string()),
    };
    Reply::Failed { id, why }
}
