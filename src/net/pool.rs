//! Remote members of a pool: processes of the same build on other hosts
//! that join a pool over the network and run its tasks.
//!
//! The owner (a [`Pool`](crate::Pool) built with `listen`) runs a relay:
//! it admits a joiner whose join frame verifies under the shared secret
//! and carries the owner's build id, takes tasks from the pool's task ring
//! as a local worker does, and sends each to exactly one member (each
//! member has its own key: never a key many subscribers share), at most
//! the member's credit at a time. A member runs them in a local pool of its
//! own and sends the results back; the relay puts them into the result
//! ring, where the router hands them to their waiters as any other. When a
//! member's presence token goes (its process died, its link dropped), the
//! tasks it held are queued again, so they run elsewhere (at least once, as
//! a dead local worker's are; a late duplicate is dropped by the router).
//!
//! Key expressions, under `shmpool/pool`: `join` (members announce
//! themselves), `m/<id>/ctl` (the owner's answer: admitted, refused, closed),
//! `m/<id>/task` (the member's tasks), `result` (every member's results),
//! `alive/<id>` (each member's presence token), `owner` (the owner's),
//! `status` and `status/<nonce>` (who the members are: see `members.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rkyv::{Archive, Deserialize, Serialize};

use super::envelope::SenderId;
use super::members::{self, MemberInfo, StatusRequest};
use super::{NetError, Presence, Session};
use crate::codec;
use crate::runtime::relay::{RelayedResult, RelayedTask};
use crate::runtime::{Config, Workers};
use crate::wait::Deadline;
use crate::wire::{FrameHeader, Status};

pub(super) const PREFIX: &str = "shmpool/pool";
/// How long a joiner waits for the owner's answer.
const ADMIT_WAIT: Duration = Duration::from_secs(10);
/// How often the relay's dispatcher looks up from an empty queue.
const SLICE: Duration = Duration::from_millis(50);
/// Tasks a member may hold per worker it runs.
const CREDIT_PER_WORKER: u32 = 8;

/// A joiner's announcement.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct Join {
    member: u64,
    build: u64,
    workers: u32,
}

/// The owner's answer on a member's `ctl` key.
#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
enum Ctl {
    Admitted,
    Refused { build: u64 },
    Closed,
}

/// A task on the wire: the relay's id for it, and the task.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct Task {
    id: u64,
    stream: u64,
    seq: u64,
    func: i64,
    tramp: i64,
    status: u32,
    body: Vec<u8>,
}

/// A log record of a member (its own, and its workers' it re-emits).
#[derive(Archive, Serialize, Deserialize, Debug)]
struct LogLine {
    member: u64,
    level: u8,
    target: String,
    message: String,
}

/// A result on the wire.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct Outcome {
    member: u64,
    id: u64,
    status: u32,
    ran_ns: u64,
    body: Vec<u8>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A frame's payload: the archive of `value`.
pub(super) fn encode<T: codec::Message>(value: &T) -> Result<Vec<u8>, NetError> {
    let fail = |e: codec::CodecError| NetError::Zenoh(format!("archiving a frame: {e}"));
    let n = codec::encoded_len(value).map_err(fail)?;
    let mut buf = rkyv::util::AlignedVec::<16>::with_capacity(n);
    buf.extend_from_slice(&vec![0u8; n]);
    let written = codec::encode_into(value, &mut buf[..n]).map_err(fail)?;
    Ok(buf[..written].to_vec())
}

/// Network payloads arrive unaligned: copied into an aligned buffer, then
/// validated and read.
pub(super) fn decode<T: codec::Message>(payload: &[u8]) -> Option<T> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    codec::decode::<T>(&aligned).ok()
}

/// A member of the owner's pool, as the relay knows it.
struct Member {
    credit: usize,
    /// Tasks sent and not answered, by the relay's id.
    held: HashMap<u64, RelayedTask>,
    /// Worker processes it said it runs.
    workers: u32,
    /// Tasks it answered so far.
    answered: u64,
    /// When it was admitted: the wall clock (to show) and the monotonic
    /// one (to measure how long since).
    joined: (SystemTime, Instant),
    /// The session its join frame came from.
    session: SenderId,
}

#[derive(Default)]
struct Members {
    by_id: HashMap<u64, Member>,
    next_task: u64,
}

struct Shared {
    workers: Arc<Workers>,
    session: Session,
    members: Mutex<Members>,
    /// A member joined, left, or got credit back.
    changed: Condvar,
    stop: AtomicBool,
}

/// The owner's side: admits members and relays tasks to them; stops when
/// dropped (with its pool).
pub(crate) struct Relay {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    _subs: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("members", &lock(&self.shared.members).by_id.len()).finish()
    }
}

impl Relay {
    /// The session a relay listens on for members: opened before the pool's
    /// workers start, so that a port in use or a malformed endpoint fails
    /// the build before any process is spawned.
    pub(crate) fn listen(endpoint: &str, secret: &[u8], tls: Option<super::Tls>) -> Result<Session, NetError> {
        let builder = Session::builder().listen(endpoint).secret(secret);
        match tls {
            Some(tls) => builder.tls(tls).open(),
            None => builder.open(),
        }
    }

    /// Relays tasks of `workers`'s pool to members that join through
    /// `session` (from [`Relay::listen`]).
    pub(crate) fn start(workers: Arc<Workers>, session: Session) -> Result<Relay, NetError> {
        let shared = Arc::new(Shared {
            workers,
            session,
            members: Mutex::new(Members::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let mut subs: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
        // The owner's presence: a member whose owner died stops.
        subs.push(Box::new(shared.session.declare_token(&format!("{PREFIX}/owner"))?));
        let s = Arc::clone(&shared);
        subs.push(Box::new(shared.session.subscribe_with(&format!("{PREFIX}/join"), move |f| {
            if let Some(j) = decode::<Join>(f.payload()) {
                s.admit(j, f.sender());
            }
        })?));
        // Who the members are, for holders of the secret (shmpool-admin).
        let s = Arc::clone(&shared);
        subs.push(Box::new(shared.session.subscribe_with(&members::request_key(), move |f| {
            if let Some(request) = decode::<StatusRequest>(f.payload()) {
                members::answer(&s.session, &request, &s.snapshot());
            }
        })?));
        let s = Arc::clone(&shared);
        subs.push(Box::new(shared.session.subscribe_with(&format!("{PREFIX}/result"), move |f| {
            if let Some(o) = decode::<Outcome>(f.payload()) {
                s.answered(o);
            }
        })?));
        // Members' log records, re-emitted through this process's logger.
        subs.push(Box::new(shared.session.subscribe_with(&format!("{PREFIX}/log"), |f| {
            if let Some(l) = decode::<LogLine>(f.payload()) {
                let level = match l.level {
                    1 => log::Level::Error,
                    2 => log::Level::Warn,
                    3 => log::Level::Info,
                    4 => log::Level::Debug,
                    _ => log::Level::Trace,
                };
                log::logger().log(
                    &log::Record::builder()
                        .level(level)
                        .target(&l.target)
                        .args(format_args!("[member {:016x}] {}", l.member, l.message))
                        .build(),
                );
            }
        })?));
        let s = Arc::clone(&shared);
        subs.push(Box::new(shared.session.watch_with(&format!("{PREFIX}/alive/*"), move |p| {
            if let Presence::Gone(key) = p {
                if let Some(id) = key.rsplit('/').next().and_then(|id| u64::from_str_radix(id, 16).ok()) {
                    // Confirmed off zenoh's thread (the query waits on it).
                    let s = Arc::clone(&s);
                    let _ = std::thread::Builder::new().name("shmpool-relay-gone".into()).spawn(move || {
                        if really_gone(&s.session, &key) {
                            s.left(id);
                        }
                    });
                }
            }
        })?));
        let s = Arc::clone(&shared);
        let dispatcher = std::thread::Builder::new()
            .name("shmpool-relay".into())
            .spawn(move || s.dispatch())
            .map_err(|e| NetError::Open(format!("starting the relay thread: {e}")))?;
        Ok(Relay { shared, threads: vec![dispatcher], _subs: subs })
    }

    /// The members admitted now, in the order they joined.
    pub(crate) fn members(&self) -> Vec<MemberInfo> {
        self.shared.snapshot()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.changed.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.shared.tell_all(&Ctl::Closed);
        // The members' answers can no longer come back: their tasks are no
        // longer expected of them (waiters learn `PoolGone` if nobody else
        // is left to run them).
        let members = std::mem::take(&mut lock(&self.shared.members).by_id);
        self.shared.workers.remote_members.fetch_sub(members.len(), Ordering::AcqRel);
        for (_, m) in members {
            for (_, t) in m.held {
                let _ = self.shared.workers.requeue_task(&t);
            }
        }
    }
}

impl Shared {
    fn ctl_key(member: u64) -> String {
        format!("{PREFIX}/m/{member:016x}/ctl")
    }

    fn admit(&self, j: Join, session: SenderId) {
        let build = crate::runtime::build_id();
        let answer = if j.build == build {
            let mut m = lock(&self.members);
            if let std::collections::hash_map::Entry::Vacant(slot) = m.by_id.entry(j.member) {
                let workers = j.workers.clamp(1, 1024);
                slot.insert(Member {
                    credit: (workers * CREDIT_PER_WORKER) as usize,
                    held: HashMap::new(),
                    workers,
                    answered: 0,
                    joined: (SystemTime::now(), Instant::now()),
                    session,
                });
                self.workers.remote_members.fetch_add(1, Ordering::AcqRel);
            }
            Ctl::Admitted
        } else {
            log::warn!("shmpool: a member of build {:#018x} was refused (this is {build:#018x})", j.build);
            Ctl::Refused { build }
        };
        if let Ok(bytes) = encode(&answer) {
            let _ = self.session.publish(&Self::ctl_key(j.member), &bytes);
        }
        self.changed.notify_all();
    }

    /// Every member now, in the order they joined.
    fn snapshot(&self) -> Vec<MemberInfo> {
        let now = Instant::now();
        let m = lock(&self.members);
        let mut list: Vec<MemberInfo> = m
            .by_id
            .iter()
            .map(|(&id, mb)| MemberInfo {
                id,
                workers: mb.workers as usize,
                held: mb.held.len(),
                answered: mb.answered,
                joined: mb.joined.0,
                member_for: now.saturating_duration_since(mb.joined.1),
                // As zenoh spells a session id (`Session::id`).
                session: format!("{:x}", u128::from_le_bytes(mb.session)),
            })
            .collect();
        drop(m);
        list.sort_by(|a, b| b.member_for.cmp(&a.member_for).then(a.id.cmp(&b.id)));
        list
    }

    fn answered(&self, o: Outcome) {
        let task = {
            let mut m = lock(&self.members);
            m.by_id.get_mut(&o.member).and_then(|member| {
                let task = member.held.remove(&o.id);
                member.answered += u64::from(task.is_some());
                task
            })
        };
        // A result for a task this member no longer holds (it was queued
        // again after the member was taken for gone) is dropped: the task
        // runs, or ran, elsewhere.
        let Some(task) = task else { return };
        let r = RelayedResult { stream: task.stream, seq: task.seq, status: o.status, ran_ns: o.ran_ns, body: o.body };
        if let Err(e) = self.workers.put_result(&r) {
            log::warn!("shmpool: a remote result could not be delivered: {e}");
        }
        self.changed.notify_all();
    }

    /// A member's presence went: what it held runs again elsewhere.
    fn left(&self, member: u64) {
        let Some(gone) = lock(&self.members).by_id.remove(&member) else { return };
        self.workers.remote_members.fetch_sub(1, Ordering::AcqRel);
        let held = gone.held;
        for (_, t) in held {
            if let Err(e) = self.workers.requeue_task(&t) {
                log::warn!("shmpool: a task of a departed member could not be queued again: {e}");
            }
        }
        self.changed.notify_all();
    }

    fn tell_all(&self, ctl: &Ctl) {
        let ids: Vec<u64> = lock(&self.members).by_id.keys().copied().collect();
        if let Ok(bytes) = encode(ctl) {
            for id in ids {
                let _ = self.session.publish(&Self::ctl_key(id), &bytes);
            }
        }
    }

    /// A member with credit left, if any.
    fn with_credit(&self) -> Option<u64> {
        let m = lock(&self.members);
        m.by_id
            .iter()
            .filter(|(_, mb)| mb.held.len() < mb.credit)
            .min_by_key(|(_, mb)| mb.held.len())
            .map(|(id, _)| *id)
    }

    /// Takes tasks for members while any has credit; tells them when the
    /// pool closes.
    fn dispatch(&self) {
        while !self.stop.load(Ordering::Acquire) {
            let Some(member) = self.with_credit() else {
                let m = lock(&self.members);
                let _ = self.changed.wait_timeout(m, SLICE);
                continue;
            };
            match self.workers.take_task(Deadline::after(SLICE)) {
                Ok(Some(t)) => self.send(member, t),
                Ok(None) => {}
                Err(_) => {
                    // Closed and drained: the members' part is over.
                    self.tell_all(&Ctl::Closed);
                    return;
                }
            }
        }
    }

    fn send(&self, member: u64, t: RelayedTask) {
        let id = {
            let mut m = lock(&self.members);
            let id = m.next_task;
            m.next_task += 1;
            match m.by_id.get_mut(&member) {
                Some(mb) => {
                    mb.held.insert(id, t.clone());
                    id
                }
                None => {
                    // It left since it was picked: the task stays here.
                    drop(m);
                    let _ = self.workers.requeue_task(&t);
                    return;
                }
            }
        };
        let wire =
            Task { id, stream: t.stream, seq: t.seq, func: t.func, tramp: t.tramp, status: t.status, body: t.body };
        let sent = encode(&wire).and_then(|b| self.session.publish(&format!("{PREFIX}/m/{member:016x}/task"), &b));
        if sent.is_err() {
            // Not sent: it is queued again at once, not when the member goes.
            let t = lock(&self.members).by_id.get_mut(&member).and_then(|mb| mb.held.remove(&id));
            if let Some(t) = t {
                let _ = self.workers.requeue_task(&t);
            }
        }
    }
}

/// How often a member repeats its join frame.
const REJOIN: Duration = Duration::from_secs(1);

/// How long a departure is checked by asking for the token again.
const CONFIRM: Duration = Duration::from_secs(2);

/// Whether the token on `key`, reported gone, is really gone: a liveliness
/// departure can be reported while the token is still declared (seen over
/// TLS links: a member left its pool mid-map), so the network is asked.
fn really_gone(session: &Session, key: &str) -> bool {
    session.alive(key, CONFIRM).map_or(true, |alive| alive.is_empty())
}

/// What a member did before its pool closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinReport {
    /// Tasks it ran for the pool.
    pub tasks: u64,
}

/// Joins the pool that listens at `endpoint` (a process of this same build
/// on another host, or this one) as `workers` workers, until that pool
/// closes; returns what it ran.
///
/// The join frame carries this binary's build id; an owner of another
/// build refuses it ([`NetError::Refused`]), and one that does not answer
/// within 10 s (no pool there, or another secret: its frames do not verify
/// and are dropped, unanswered) is [`NetError::TimedOut`].
pub fn join(endpoint: &str, workers: usize, secret: impl AsRef<[u8]>) -> Result<JoinReport, NetError> {
    join_via(Session::builder().connect(endpoint).secret(secret), workers)
}

/// [`join`] through a session of your own making: one that connects to the
/// pool's endpoint with the pool's secret, and whatever else it needs (TLS
/// files for a `tls/` endpoint: [`SessionBuilder::tls`](super::SessionBuilder::tls)).
pub fn join_via(session: super::SessionBuilder, workers: usize) -> Result<JoinReport, NetError> {
    let session = session.open()?;
    let member: u64 = {
        let mut b = [0u8; 8];
        crate::sys::shm::random_bytes(&mut b).map_err(|e| NetError::Open(format!("drawing a member id: {e}")))?;
        u64::from_ne_bytes(b) | 1
    };
    // This process's log records (its workers' included) go to the owner's
    // logger, unless the program installed a logger of its own. Installed
    // before the workers start: they forward at the level set here.
    if log::set_boxed_logger(Box::new(NetLogger { member, session: session.clone(), key: format!("{PREFIX}/log") }))
        .is_ok()
    {
        log::set_max_level(log::LevelFilter::Info);
    }
    let config = Config { workers: workers.max(1), ..Config::default() };
    let local =
        Workers::start::<()>(config, None).map_err(|e| NetError::Open(format!("starting local workers: {e}")))?;
    let ctl = session.subscribe(&Shared::ctl_key(member))?;
    let owner = session.watch(&format!("{PREFIX}/owner"))?;
    let tasks = session.subscribe_queued(&format!("{PREFIX}/m/{member:016x}/task"), 4096)?;
    let _token = session.declare_token(&format!("{PREFIX}/alive/{member:016x}"))?;
    let joins = session.publisher(&format!("{PREFIX}/join"))?;
    joins.wait_matched(ADMIT_WAIT)?;
    let hello = encode(&Join { member, build: crate::runtime::build_id(), workers: workers as u32 })?;
    joins.publish(&hello)?;
    let answer = ctl.recv_timeout(ADMIT_WAIT)?;
    match decode::<Ctl>(answer.payload()) {
        Some(Ctl::Admitted) => {}
        Some(Ctl::Refused { build }) => return Err(NetError::Refused { owner_build: build }),
        _ => return Err(NetError::Closed),
    }
    let results = Arc::new(session.publisher(&format!("{PREFIX}/result"))?);
    // Local task numbers -> the relay's ids, for the results' way back.
    let ids: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let stream = local.new_stream();
    let done = Arc::new(AtomicBool::new(false));
    let answerer = {
        let (local, ids, results, done) =
            (Arc::clone(&local), Arc::clone(&ids), Arc::clone(&results), Arc::clone(&done));
        std::thread::Builder::new()
            .name("shmpool-member".into())
            .spawn(move || answer_loop(&local, stream, member, &ids, &results, &done))
            .map_err(|e| NetError::Open(format!("starting the member's result thread: {e}")))?
    };
    let mut ran = 0u64;
    let mut next = 0u64;
    let mut announced = Instant::now();
    loop {
        // The join again now and then (admission is idempotent): an owner
        // that took this member for gone (a departure reported while its
        // link was being re-made, seen over TLS) admits it again, rather
        // than leave it idle while its pool waits for members.
        if announced.elapsed() >= REJOIN {
            let _ = joins.publish(&hello);
            announced = Instant::now();
        }
        if let Ok(Some(f)) = ctl.try_recv() {
            if decode::<Ctl>(f.payload()) == Some(Ctl::Closed) {
                break;
            }
        }
        if let Ok(Some(Presence::Gone(key))) = owner.try_recv() {
            if really_gone(&session, &key) {
                // The owner died (or its link did): nobody will take results.
                break;
            }
        }
        let frame = match tasks.recv_timeout(SLICE) {
            Ok(f) => f,
            Err(NetError::TimedOut) => continue,
            Err(e) => {
                done.store(true, Ordering::Release);
                let _ = answerer.join();
                return Err(e);
            }
        };
        let Some(t) = decode::<Task>(frame.payload()) else { continue };
        let seq = next;
        next += 1;
        lock(&ids).insert(seq, t.id);
        let (id, len) = (t.id, t.body.len());
        let task =
            RelayedTask { stream: t.stream, seq: t.seq, func: t.func, tramp: t.tramp, status: t.status, body: t.body };
        if let Err(e) = local.push_task(stream, seq, &task) {
            lock(&ids).remove(&seq);
            // Its waiter hears why (an argument this host's segment has no
            // room for), as it would of a local one: never nothing.
            let why = format!("member {member:016x} could not take the task's argument of {len} bytes: {e}");
            let body = encode(&why).unwrap_or_default();
            let o = Outcome { member, id, status: Status::Encode as u32, ran_ns: 0, body };
            if let Err(e) = encode(&o).and_then(|b| results.publish(&b)) {
                log::warn!("shmpool: a relayed task could not run here ({why}), nor could its owner be told: {e}");
            }
            continue;
        }
        ran += 1;
    }
    // The pool closed: what is running here still answers, then we go.
    let until = Instant::now() + Duration::from_secs(5);
    while !lock(&ids).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    done.store(true, Ordering::Release);
    let _ = answerer.join();
    local.close();
    Ok(JoinReport { tasks: ran })
}

/// A member's logger: each record to the owner (Info and above).
struct NetLogger {
    member: u64,
    session: Session,
    key: String,
}

thread_local! {
    /// This thread is inside `NetLogger::log`: whatever the network code
    /// logs meanwhile is not sent (no recursion).
    static LOGGING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl log::Log for NetLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) || LOGGING.with(|l| l.replace(true)) {
            return;
        }
        let line = LogLine {
            member: self.member,
            level: r.level() as u8,
            target: r.target().to_owned(),
            message: r.args().to_string(),
        };
        if let Ok(bytes) = encode(&line) {
            let _ = self.session.publish(&self.key, &bytes);
        }
        LOGGING.with(|l| l.set(false));
    }

    fn flush(&self) {}
}

/// Sends back every result the member's local workers give for `stream`.
fn answer_loop(
    local: &Workers,
    stream: u64,
    member: u64,
    ids: &Mutex<HashMap<u64, u64>>,
    results: &super::Publisher,
    done: &AtomicBool,
) {
    while !done.load(Ordering::Acquire) {
        let mut out = Vec::new();
        let _ = local.recv(Some(stream), Deadline::after(SLICE), &mut |hdr: &FrameHeader, body: &[u8]| {
            out.push((hdr.seq, hdr.status, hdr.check, body.to_vec()));
        });
        for (seq, status, ran_ns, body) in out {
            let Some(id) = lock(ids).remove(&seq) else { continue };
            let o = Outcome { member, id, status, ran_ns, body };
            if let Err(e) = encode(&o).and_then(|b| results.publish(&b)) {
                log::warn!("shmpool: a result could not be sent back: {e}");
            }
        }
    }
}
