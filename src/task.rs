//! What travels through the task and result rings: a fixed frame header,
//! then the argument's or result's archive, inline in the slot or in an arena
//! block named by offset. Also the trampolines that run a task in a worker.

use std::any::Any;
use std::mem::size_of;

use crate::codec::{self, CodecError, Message, Scratch};
use crate::segment::Segment;
use crate::TaskError;

/// Bytes of [`FrameHeader`] at the start of every slot payload; the inline
/// archive follows, 16-byte aligned.
pub(crate) const HEADER: usize = 64;

/// Body kinds.
pub(crate) const BODY_NONE: u32 = 0;
pub(crate) const BODY_INLINE: u32 = 1;
pub(crate) const BODY_BLOCK: u32 = 2;

/// Result statuses.
pub(crate) const ST_OK: u32 = 0;
pub(crate) const ST_PANICKED: u32 = 1;
pub(crate) const ST_BAD_INPUT: u32 = 2;
pub(crate) const ST_ENCODE: u32 = 3;
pub(crate) const ST_CANCELLED: u32 = 4;
pub(crate) const ST_WORKER_DIED: u32 = 5;
pub(crate) const ST_TIMED_OUT: u32 = 6;

/// The fixed part of a task or result message.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Which waiter the result belongs to (a ticket, a map, the put/get queue).
    pub stream: u64,
    /// Position within the stream (submission order).
    pub seq: u64,
    /// The user function, as an offset from the anchor (tasks only).
    pub func: i64,
    /// The trampoline that decodes, calls and encodes, as an offset (tasks only).
    pub tramp: i64,
    /// Seal over `func` and `tramp` with the pool's secret key (tasks only).
    pub check: u64,
    /// A result's `ST_*` status; a task's pid of the worker that died (synthesised results).
    pub status: u32,
    /// `BODY_*`.
    pub body: u32,
    /// Archive length.
    pub len: u64,
    /// Arena block offset when `body == BODY_BLOCK`.
    pub block: u64,
}

const _: () = assert!(size_of::<FrameHeader>() == HEADER);

impl FrameHeader {
    /// Reads a header from the start of a slot payload (hostile bytes).
    pub fn read(bytes: &[u8]) -> Option<FrameHeader> {
        if bytes.len() < HEADER {
            return None;
        }
        // SAFETY: at least HEADER bytes are there (checked); FrameHeader is
        // plain integers, valid for any bit pattern; read_unaligned has no
        // alignment requirement.
        Some(unsafe { bytes.as_ptr().cast::<FrameHeader>().read_unaligned() })
    }

    /// Writes the header and `inline` archive bytes into a slot; returns the length used.
    pub fn write(&self, slot: &mut [u8], inline: &[u8]) -> usize {
        let total = HEADER + inline.len();
        // SAFETY: FrameHeader is `#[repr(C)]` plain integers with no padding
        // (64 bytes, asserted above), so viewing it as bytes is sound.
        let hdr = unsafe { std::slice::from_raw_parts((self as *const FrameHeader).cast::<u8>(), HEADER) };
        slot[..HEADER].copy_from_slice(hdr);
        slot[HEADER..total].copy_from_slice(inline);
        total
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<Scratch>> = std::cell::RefCell::new(Scratch::new());
}

/// Runs `f` with this thread's scratch buffer (a fresh one if it is in use).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::new()),
    })
}

/// An encoded body, ready to go into a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// Nothing.
    None,
    /// `len` bytes at the start of the scratch buffer it was encoded into.
    Inline(usize),
    /// An arena block at `offset` holding `len` archive bytes.
    Block { offset: u64, len: u64 },
}

impl Body {
    /// Fills the body fields of `hdr`.
    pub fn describe(&self, hdr: &mut FrameHeader) {
        match *self {
            Body::None => (hdr.body, hdr.len, hdr.block) = (BODY_NONE, 0, 0),
            Body::Inline(n) => (hdr.body, hdr.len, hdr.block) = (BODY_INLINE, n as u64, 0),
            Body::Block { offset, len } => (hdr.body, hdr.len, hdr.block) = (BODY_BLOCK, len, offset),
        }
    }

    /// Returns a block body's memory to the arena (a message never sent).
    pub fn discard(&self, seg: &Segment) {
        if let Body::Block { offset, .. } = *self {
            let _ = seg.release(offset);
        }
    }
}

/// Archives `value` into `scratch` if it fits in `inline_max` bytes, otherwise
/// into a new arena block of exactly its size (one copy either way).
pub(crate) fn encode_body<T: Message>(
    seg: &Segment,
    value: &T,
    scratch: &mut Scratch,
    inline_max: usize,
) -> Result<Body, TaskError> {
    let inline_max = inline_max.min(scratch.0.len());
    match codec::encode_into(value, &mut scratch.0[..inline_max]) {
        Ok(n) => return Ok(Body::Inline(n)),
        Err(CodecError::TooSmall { .. }) => {}
        Err(e) => return Err(TaskError::Encode(e.to_string())),
    }
    let len = codec::encoded_len(value).map_err(|e| TaskError::Encode(e.to_string()))?;
    let block = seg.alloc(len as u64).map_err(|e| TaskError::Encode(e.to_string()))?;
    let dst = match seg.ptr(block.offset, len as u64) {
        // SAFETY: the block was just allocated by this process, so nobody else
        // reads or writes it; the range was bounds-checked by ptr().
        Ok(p) => unsafe { std::slice::from_raw_parts_mut(p, len) },
        Err(e) => {
            let _ = seg.release(block.offset);
            return Err(TaskError::Encode(e.to_string()));
        }
    };
    match codec::encode_into(value, dst) {
        Ok(n) => Ok(Body::Block { offset: block.offset, len: n as u64 }),
        Err(e) => {
            let _ = seg.release(block.offset);
            Err(TaskError::Encode(e.to_string()))
        }
    }
}

/// Archives `value` into a new arena block, however small (for records that
/// live outside any ring slot).
pub(crate) fn encode_block<T: Message>(seg: &Segment, value: &T) -> Result<Body, TaskError> {
    with_scratch(|scratch| match encode_body(seg, value, scratch, SCRATCH_INLINE_NEVER)? {
        Body::Inline(n) => {
            let block = seg.alloc(n.max(1) as u64).map_err(|e| TaskError::Encode(e.to_string()))?;
            let dst = seg.ptr(block.offset, n as u64).map_err(|e| TaskError::Encode(e.to_string()))?;
            // SAFETY: a block this process just allocated, in bounds (checked).
            unsafe { std::ptr::copy_nonoverlapping(scratch.0.as_ptr(), dst, n) };
            Ok(Body::Block { offset: block.offset, len: n as u64 })
        }
        other => Ok(other),
    })
}

const SCRATCH_INLINE_NEVER: usize = codec::SCRATCH;

/// Calls `f` with the archive bytes of the frame `hdr` whose slot payload is
/// `slot`. With `consume`, a block body is freed afterwards (its ownership
/// came with the message).
pub(crate) fn with_body<R>(
    seg: &Segment,
    hdr: &FrameHeader,
    slot: &[u8],
    consume: bool,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, TaskError> {
    match hdr.body {
        BODY_NONE => Ok(f(&[])),
        BODY_INLINE => {
            let end = usize::try_from(hdr.len).ok().and_then(|l| l.checked_add(HEADER));
            let bytes = end
                .and_then(|end| slot.get(HEADER..end))
                .ok_or_else(|| TaskError::Decode("inline length exceeds the slot".into()))?;
            Ok(f(bytes))
        }
        BODY_BLOCK => {
            let cap = seg.block_capacity(hdr.block).map_err(|e| TaskError::Decode(e.to_string()))?;
            if hdr.len > cap {
                return Err(TaskError::Decode("archive length exceeds its block".into()));
            }
            let p = seg.ptr(hdr.block, hdr.len).map_err(|e| TaskError::Decode(e.to_string()))?;
            // SAFETY: the block is live (validated), the range is in bounds,
            // and the message that named it gave this process sole ownership.
            let bytes = unsafe { std::slice::from_raw_parts(p, hdr.len as usize) };
            let r = f(bytes);
            if consume {
                let _ = seg.release(hdr.block);
            }
            Ok(r)
        }
        _ => Err(TaskError::Decode("unknown body kind".into())),
    }
}

/// Where a trampoline leaves the task's result.
pub(crate) struct Reply<'a> {
    pub seg: &'a Segment,
    pub scratch: &'a mut Scratch,
    pub inline_max: usize,
    pub status: u32,
    pub body: Body,
}

impl Reply<'_> {
    /// Encodes `value` as the reply body with `status`.
    pub fn set<T: Message>(&mut self, status: u32, value: &T) {
        match encode_body(self.seg, value, self.scratch, self.inline_max) {
            Ok(body) => (self.status, self.body) = (status, body),
            Err(e) => self.fail(ST_ENCODE, &e.to_string()),
        }
    }

    /// Sets an error reply carrying `message`.
    pub fn fail(&mut self, status: u32, message: &str) {
        let message = message.to_owned();
        match encode_body(self.seg, &message, self.scratch, self.inline_max) {
            Ok(body) => (self.status, self.body) = (status, body),
            Err(_) => (self.status, self.body) = (status, Body::None),
        }
    }
}

/// Per-worker state of a stateful pool (`Worker::init`'s value).
pub(crate) type WorkerState = Option<Box<dyn Any>>;

/// Decodes the argument, calls the user function, encodes the result.
///
/// # Safety
///
/// `func` must be the address of a `fn` whose type matches the trampoline's
/// type parameters exactly (the pair is sealed with the pool key at submission).
pub(crate) type Trampoline = unsafe fn(func: usize, state: &mut WorkerState, arg: &[u8], out: &mut Reply<'_>);

/// Builds a worker's state from its archived init argument.
///
/// # Safety
///
/// None beyond the types: kept `unsafe fn` so every table entry has one shape.
pub(crate) type InitTrampoline = unsafe fn(func: usize, arg: &[u8]) -> Result<Box<dyn Any>, String>;

/// Trampoline for `fn(A) -> R`.
///
/// # Safety
///
/// `func` must be a `fn(A) -> R` cast to `usize`.
pub(crate) unsafe fn call_owned<A: Message, R: Message>(
    func: usize,
    _state: &mut WorkerState,
    arg: &[u8],
    out: &mut Reply<'_>,
) {
    // SAFETY: per this function's contract, `func` came from a `fn(A) -> R`.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    match codec::decode::<A>(arg) {
        Ok(a) => out.set(ST_OK, &f(a)),
        Err(e) => out.fail(ST_BAD_INPUT, &e.to_string()),
    }
}

/// Trampoline for `fn(&Archived<A>) -> R`: the argument is read in place.
///
/// # Safety
///
/// `func` must be a `fn(&A::Archive) -> R` cast to `usize`.
pub(crate) unsafe fn call_archived<A: Message, R: Message>(
    func: usize,
    _state: &mut WorkerState,
    arg: &[u8],
    out: &mut Reply<'_>,
) {
    // SAFETY: per this function's contract, `func` came from a `fn(&A::Archive) -> R`.
    let f = unsafe { std::mem::transmute::<usize, fn(&A::Archive) -> R>(func) };
    match codec::access::<A>(arg) {
        Ok(a) => out.set(ST_OK, &f(a)),
        Err(e) => out.fail(ST_BAD_INPUT, &e.to_string()),
    }
}

/// Trampoline for a stateful worker's `run`.
///
/// # Safety
///
/// `state` must hold the `W` built by [`init_worker::<W>`] (checked by downcast).
pub(crate) unsafe fn call_worker<W: crate::Worker>(
    _func: usize,
    state: &mut WorkerState,
    arg: &[u8],
    out: &mut Reply<'_>,
) {
    let Some(worker) = state.as_mut().and_then(|s| s.downcast_mut::<W>()) else {
        out.fail(ST_BAD_INPUT, "task for a stateful worker reached a worker without that state");
        return;
    };
    match codec::decode::<W::Task>(arg) {
        Ok(task) => out.set(ST_OK, &worker.run(task)),
        Err(e) => out.fail(ST_BAD_INPUT, &e.to_string()),
    }
}

/// Builds the state of a stateful worker from its archived `Init`.
///
/// # Safety
///
/// Always safe to call; `unsafe` only to match [`InitTrampoline`].
pub(crate) unsafe fn init_worker<W: crate::Worker>(_func: usize, arg: &[u8]) -> Result<Box<dyn Any>, String> {
    let init = codec::decode::<W::Init>(arg).map_err(|e| e.to_string())?;
    Ok(Box::new(W::init(init)))
}

/// Turns a result frame's status and body into the caller's value.
pub(crate) fn decode_result<R: Message>(status: u32, bytes: &[u8]) -> Result<R, TaskError> {
    let message = || codec::decode::<String>(bytes).unwrap_or_else(|e| format!("<unreadable message: {e}>"));
    match status {
        ST_OK => codec::decode::<R>(bytes).map_err(|e| TaskError::Decode(e.to_string())),
        ST_PANICKED => Err(TaskError::Panicked { message: message() }),
        ST_BAD_INPUT => Err(TaskError::Decode(message())),
        ST_ENCODE => Err(TaskError::Encode(message())),
        ST_CANCELLED => Err(TaskError::Cancelled),
        ST_WORKER_DIED => Err(TaskError::WorkerDied { pid: codec::decode::<u32>(bytes).unwrap_or(0) }),
        ST_TIMED_OUT => Err(TaskError::TimedOut { pid: codec::decode::<u32>(bytes).unwrap_or(0) }),
        _ => Err(TaskError::Decode(format!("unknown result status {status}"))),
    }
}

/// Builds a remote object: `func` is its creator, a `fn(A) -> T`.
///
/// # Safety
///
/// `func` must be a `fn(A) -> T` cast to `usize`.
pub(crate) unsafe fn init_remote<A: Message, T: 'static>(func: usize, arg: &[u8]) -> Result<Box<dyn Any>, String> {
    // SAFETY: per this function's contract, `func` came from a `fn(A) -> T`.
    let creator = unsafe { std::mem::transmute::<usize, fn(A) -> T>(func) };
    let args = codec::decode::<A>(arg).map_err(|e| e.to_string())?;
    Ok(Box::new(creator(args)))
}

/// Trampoline for a call on a remote object: `fn(&mut T, A) -> R`.
///
/// # Safety
///
/// `func` must be a `fn(&mut T, A) -> R` cast to `usize`.
pub(crate) unsafe fn call_remote<T: 'static, A: Message, R: Message>(
    func: usize,
    state: &mut WorkerState,
    arg: &[u8],
    out: &mut Reply<'_>,
) {
    // SAFETY: per this function's contract.
    let f = unsafe { std::mem::transmute::<usize, fn(&mut T, A) -> R>(func) };
    let Some(object) = state.as_mut().and_then(|s| s.downcast_mut::<T>()) else {
        out.fail(ST_BAD_INPUT, "call for a remote object of another type");
        return;
    };
    match codec::decode::<A>(arg) {
        Ok(a) => out.set(ST_OK, &f(object, a)),
        Err(e) => out.fail(ST_BAD_INPUT, &e.to_string()),
    }
}

/// Trampoline for reading a remote object: `fn(&T) -> R`.
///
/// # Safety
///
/// `func` must be a `fn(&T) -> R` cast to `usize`.
pub(crate) unsafe fn read_remote<T: 'static, R: Message>(
    func: usize,
    state: &mut WorkerState,
    _arg: &[u8],
    out: &mut Reply<'_>,
) {
    // SAFETY: per this function's contract.
    let f = unsafe { std::mem::transmute::<usize, fn(&T) -> R>(func) };
    match state.as_ref().and_then(|s| s.downcast_ref::<T>()) {
        Some(object) => out.set(ST_OK, &f(object)),
        None => out.fail(ST_BAD_INPUT, "read of a remote object of another type"),
    }
}
