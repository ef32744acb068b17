//! Calls from workers to their parent (XME's guard process, which executes
//! queued calls on behalf of workers): a task asks the parent to run a
//! function on a thread the pool owns there, and waits for the result.
//!
//! A call is a frame (see [`crate::wire`]) pushed into the pool's call ring:
//! the function and its trampoline as sealed code offsets (like tasks, with
//! a seal of their own kind), the stream naming the caller (worker index and
//! pid), the sequence number naming the call. The parent's call thread runs
//! it and pushes the answer into the caller's reply ring (one per worker
//! slot); an answer for another call (one that timed out, or a dead
//! predecessor's) is discarded by the caller, block and all.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use super::code::{self, SealKind};
use super::control::{self, CALLS_CLOSED, CALLS_FAILED};
use super::executor::run_sealed;
use super::lock;
use super::tramp::{self, Reply, WorkerState};
use crate::codec::{Message, Scratch};
use crate::ring::{Ring, RingError};
use crate::segment::Segment;
use crate::sync::SpinPolicy;
use crate::sys::process;
use crate::wait::{self, Deadline, Step};
use crate::wire::{self, FrameBuf, FrameHeader};
use crate::TaskError;

/// How long a caller waits before it looks at its parent and the call thread.
const CALL_CHECK: Duration = Duration::from_millis(50);
/// Calls the parent's thread takes from the ring at once.
const CALL_BATCH: usize = 8;
/// Answers a reply ring holds: one per call in flight (a worker's threads
/// call one at a time), plus stale ones nobody will read.
pub(crate) const REPLY_SLOTS: u32 = 4;

/// Why [`parent_call`] returned no result.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParentCallError {
    /// Not called from inside a pool's worker process.
    NotInWorker,
    /// The parent refuses calls: its pool was closed or is shutting down.
    Refused,
    /// The parent process is gone.
    ParentGone,
    /// The parent's call thread failed and answers no more (says why).
    Failed(String),
    /// The function panicked in the parent.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The argument or result could not be archived.
    Encode(String),
    /// The argument or result archive failed validation.
    Decode(String),
    /// The timeout passed before the answer came (the call may still run).
    Timeout,
}

impl fmt::Display for ParentCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParentCallError::NotInWorker => f.write_str("parent_call outside a pool's worker process"),
            ParentCallError::Refused => f.write_str("the parent refuses calls: its pool is closed"),
            ParentCallError::ParentGone => f.write_str("the parent process is gone"),
            ParentCallError::Failed(why) => write!(f, "the parent's call thread failed: {why}"),
            ParentCallError::Panicked { message } => write!(f, "the call panicked in the parent: {message}"),
            ParentCallError::Encode(e) => write!(f, "could not archive the call's value: {e}"),
            ParentCallError::Decode(e) => write!(f, "the call's archive is invalid: {e}"),
            ParentCallError::Timeout => f.write_str("timed out waiting for the parent's answer"),
        }
    }
}

impl std::error::Error for ParentCallError {}

impl From<TaskError> for ParentCallError {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::Panicked { message } => ParentCallError::Panicked { message },
            TaskError::Encode(e) => ParentCallError::Encode(e),
            TaskError::Decode(e) => ParentCallError::Decode(e),
            TaskError::Cancelled => ParentCallError::Refused,
            other => ParentCallError::Failed(other.to_string()),
        }
    }
}

/// What a worker process needs to call its parent (set once, at start).
pub(crate) struct CallContext {
    pub seg: Segment,
    pub calls: Ring,
    pub replies: Ring,
    pub control: u64,
    pub index: u32,
    pub parent: u32,
    pub key: u64,
    /// Next call's sequence number.
    pub next: AtomicU64,
    /// A worker's threads call one at a time: one answer in flight per slot.
    pub one_at_a_time: Mutex<()>,
}

static CONTEXT: OnceLock<CallContext> = OnceLock::new();

/// Makes this worker process able to call its parent.
pub(crate) fn install(ctx: CallContext) {
    let _ = CONTEXT.set(ctx);
}

/// From inside a task, runs `f(arg)` in the parent process, on a thread the
/// pool owns there, and returns its result; waits as long as it takes, but
/// a dead parent or a failed call thread ends the wait with an error.
///
/// ```no_run
/// use std::sync::atomic::{AtomicU64, Ordering};
/// static SEEN: AtomicU64 = AtomicU64::new(0);
///
/// fn count(n: u64) -> u64 {
///     SEEN.fetch_add(n, Ordering::Relaxed) + n // runs in the parent
/// }
///
/// fn task(n: u64) -> u64 {
///     shmpool::parent_call(count, n).expect("the parent answers") // runs in a worker
/// }
/// ```
pub fn parent_call<A: Message, R: Message>(f: fn(A) -> R, arg: A) -> Result<R, ParentCallError> {
    call_until(f, &arg, Deadline::NEVER)
}

/// [`parent_call`], waiting at most `timeout` for the answer
/// (`Duration::MAX`: no limit): [`ParentCallError::Timeout`] then (the call
/// may still run in the parent; its late answer is discarded).
pub fn parent_call_timeout<A: Message, R: Message>(
    f: fn(A) -> R,
    arg: A,
    timeout: Duration,
) -> Result<R, ParentCallError> {
    call_until(f, &arg, Deadline::after(timeout))
}

fn call_until<A: Message, R: Message>(f: fn(A) -> R, arg: &A, deadline: Deadline) -> Result<R, ParentCallError> {
    let ctx = CONTEXT.get().ok_or(ParentCallError::NotInWorker)?;
    let signals = ctx.seg_signals()?;
    let _one = lock(&ctx.one_at_a_time);
    match signals.calls.load(Ordering::Acquire) {
        CALLS_CLOSED => return Err(ParentCallError::Refused),
        CALLS_FAILED => return Err(ParentCallError::Failed("the call thread stopped".into())),
        _ => {}
    }
    let seq = ctx.next.fetch_add(1, Ordering::Relaxed);
    let stream = (u64::from(ctx.index) << 32) | u64::from(process::current_pid());
    let mut hdr = FrameHeader { stream, seq, ..Default::default() };
    hdr.func = code::code_offset(f as usize);
    hdr.tramp = code::code_offset(tramp::call_owned::<A, R> as tramp::Trampoline as usize);
    hdr.check = code::seal(SealKind::Call, hdr.func, hdr.tramp, ctx.key);
    let mut scratch = Scratch::new();
    let frame =
        wire::encode(&ctx.seg, hdr, arg, &mut scratch, ctx.calls.payload_capacity()).map_err(ParentCallError::from)?;
    let check = || ctx.peer_check();
    let pushed = wait::in_slices(
        deadline,
        CALL_CHECK,
        |until| match ctx.calls.push_many_with(1, Some(until), SpinPolicy::DEFAULT, |_, dst| frame.write(dst)) {
            Err(RingError::Timeout) => Step::Again,
            Ok(_) => Step::Done(Ok(())),
            Err(RingError::Closed) => Step::Done(Err(ParentCallError::Refused)),
            Err(e) => Step::Done(Err(ParentCallError::Failed(e.to_string()))),
        },
        check,
    );
    let pushed = match pushed {
        Ok(r) => r,
        Err(wait::Waited::TimedOut) => Err(ParentCallError::Timeout),
        Err(wait::Waited::Peer(e)) => Err(e),
    };
    if let Err(e) = pushed {
        // Never sent: its block is ours to give back.
        frame.body.discard(&ctx.seg);
        return Err(e);
    }
    let mut answer: Option<Result<R, ParentCallError>> = None;
    let got = wait::in_slices(
        deadline,
        CALL_CHECK,
        |until| {
            let popped = ctx.replies.pop_many_with(1, Some(until), SpinPolicy::DEFAULT, |bytes| {
                let Some(h) = FrameHeader::read(bytes) else { return };
                if (h.stream, h.seq) != (stream, seq) {
                    // Another call's answer (timed out, or a predecessor's).
                    wire::discard(&ctx.seg, &h);
                    return;
                }
                let decoded = wire::with_body(&ctx.seg, &h, bytes, true, |b| wire::decode_result::<R>(h.status, b));
                answer = Some(match decoded {
                    Ok(r) => r.map_err(ParentCallError::from),
                    Err(e) => Err(e.into()),
                });
            });
            match popped {
                _ if answer.is_some() => Step::Done(Ok(())),
                Ok(_) | Err(RingError::Timeout) => Step::Again,
                Err(e) => Step::Done(Err(ParentCallError::Failed(e.to_string()))),
            }
        },
        || ctx.peer_check(),
    );
    match got {
        Ok(Ok(())) => answer.unwrap_or(Err(ParentCallError::Failed("no answer".into()))),
        Ok(Err(e)) => Err(e),
        Err(wait::Waited::TimedOut) => Err(ParentCallError::Timeout),
        Err(wait::Waited::Peer(e)) => Err(e),
    }
}

impl CallContext {
    fn seg_signals(&self) -> Result<&control::Signals, ParentCallError> {
        control::signals(&self.seg, self.control).map_err(|e| ParentCallError::Failed(e.to_string()))
    }

    /// Between slices of a wait: the parent must live and its call thread
    /// must not have failed.
    fn peer_check(&self) -> Result<(), ParentCallError> {
        if process::parent_pid() != self.parent {
            return Err(ParentCallError::ParentGone);
        }
        match self.seg_signals()?.calls.load(Ordering::Acquire) {
            CALLS_FAILED => Err(ParentCallError::Failed("the call thread stopped".into())),
            _ => Ok(()),
        }
    }
}

/// The parent's side: a thread that runs workers' calls.
pub(crate) struct CallServer {
    seg: Segment,
    control: u64,
    calls: Ring,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for CallServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallServer").field("running", &self.thread.is_some()).finish()
    }
}

impl CallServer {
    /// Starts the call thread of the pool whose control block is at `control`.
    pub fn start(seg: &Segment, calls: Ring, control: u64, workers: u32, key: u64) -> std::io::Result<CallServer> {
        let (s, c) = (seg.clone(), calls.clone());
        let thread = std::thread::Builder::new()
            .name("shmpool-calls".into())
            .spawn(move || serve(&s, &c, control, workers, key))?;
        Ok(CallServer { seg: seg.clone(), control, calls, thread: Some(thread) })
    }

    /// Refuses calls from now on (those already sent are still answered).
    pub fn close(&self) {
        if let Ok(sig) = control::signals(&self.seg, self.control) {
            // FAILED stays FAILED: it says more.
            let _ = sig.calls.compare_exchange(control::CALLS_OPEN, CALLS_CLOSED, Ordering::AcqRel, Ordering::Relaxed);
        }
        self.calls.close();
    }

    /// Refuses calls, answers those already sent, and ends the thread.
    pub fn stop(&mut self) {
        self.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for CallServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Marks the call thread failed if it ends by unwinding: callers waiting
/// for it get an error instead of waiting for ever.
struct FailOnUnwind<'a>(&'a control::Signals);

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.calls.store(CALLS_FAILED, Ordering::Release);
        }
    }
}

/// The call thread: takes calls until the ring is closed and drained.
fn serve(seg: &Segment, calls: &Ring, control: u64, workers: u32, key: u64) {
    let Ok(signals) = control::signals(seg, control) else {
        log::error!("shmpool: the call thread found no control block; calls from workers fail");
        return;
    };
    let _fail = FailOnUnwind(signals);
    let mut replies: Vec<Option<Ring>> = (0..workers).map(|_| None).collect();
    let mut buf = FrameBuf::for_ring(calls, CALL_BATCH);
    let mut lens = [0usize; CALL_BATCH];
    let mut scratch = Scratch::new();
    loop {
        let mut n = 0;
        let popped = calls.pop_many_with(CALL_BATCH, None, SpinPolicy::SLEEP, |bytes| {
            lens[n] = buf.fill(n, bytes);
            n += 1;
        });
        match popped {
            Ok(_) => {}
            // Closed and drained: the pool is shutting down.
            Err(RingError::Closed) => return,
            Err(RingError::Timeout) => continue,
            Err(e) => {
                log::error!("shmpool: the call thread failed: {e}; calls from workers fail");
                signals.calls.store(CALLS_FAILED, Ordering::Release);
                return;
            }
        }
        for (i, &len) in lens.iter().enumerate().take(n) {
            answer(seg, &buf.slot(i)[..len], control, workers, key, &mut replies, &mut scratch);
        }
    }
}

/// Runs one call frame and pushes its answer to the caller's reply ring.
fn answer(
    seg: &Segment,
    frame: &[u8],
    control: u64,
    workers: u32,
    key: u64,
    replies: &mut [Option<Ring>],
    scratch: &mut Scratch,
) {
    let Some(hdr) = FrameHeader::read(frame) else { return };
    // The caller's slot, from hostile bytes: checked before use.
    let index = (hdr.stream >> 32) as u32;
    if index >= workers {
        wire::discard(seg, &hdr);
        return;
    }
    let ring = match &replies[index as usize] {
        Some(r) => r.clone(),
        None => {
            let opened = control::slot(seg, control, workers, index)
                .and_then(|s| Ring::open(seg, s.reply_ring.load(Ordering::Acquire)));
            match opened {
                Ok(r) => {
                    replies[index as usize] = Some(r.clone());
                    r
                }
                Err(_) => {
                    wire::discard(seg, &hdr);
                    return;
                }
            }
        }
    };
    let mut state: WorkerState = None;
    let mut reply = Reply::new(seg, scratch, ring.payload_capacity());
    run_sealed(SealKind::Call, seg, frame, key, &mut state, &mut reply);
    // The argument's block came with the call.
    wire::discard(seg, &hdr);
    let out = reply.header(&hdr, 0);
    // Bounded: a ring wedged by a consumer that died mid-pop must not take
    // the call thread with it.
    for _ in 0..=REPLY_SLOTS {
        match ring.try_push_many(1, |_, dst| out.write(dst, reply.inline())) {
            Ok(_) => return,
            Err(RingError::WouldBlock) => {
                // Full of answers nobody will read (calls that timed out,
                // callers that died): the oldest goes.
                let _ = ring.try_pop_many(1, |bytes| {
                    if let Some(h) = FrameHeader::read(bytes) {
                        wire::discard(seg, &h);
                    }
                });
            }
            Err(_) => break,
        }
    }
    log::warn!("shmpool: worker slot {index}'s reply ring takes no answer; the answer to call {} is dropped", hdr.seq);
    reply.body.discard(seg);
}
