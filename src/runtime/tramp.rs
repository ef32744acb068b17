//! Trampolines: the typed glue a worker calls through a sealed code offset.
//! Each decodes its argument, calls the user function and leaves the
//! encoded result in a [`Reply`].

use std::any::Any;

use crate::codec::{self, Message, Scratch};
use crate::segment::Segment;
use crate::wire::{self, Body, FrameHeader, Status};

/// Where a trampoline leaves the task's result.
pub(crate) struct Reply<'a> {
    pub seg: &'a Segment,
    pub scratch: &'a mut Scratch,
    pub inline_max: usize,
    pub status: Status,
    pub body: Body,
    /// Nanoseconds the work took, for trampolines that measure it (a
    /// group's): it travels in the result header's `check`.
    pub ran_ns: u64,
}

impl<'a> Reply<'a> {
    /// An empty reply (no body yet) for a ring of `payload`-byte slots.
    pub fn new(seg: &'a Segment, scratch: &'a mut Scratch, payload: usize) -> Reply<'a> {
        Reply { seg, scratch, inline_max: wire::inline_max(payload), status: Status::Ok, body: Body::None, ran_ns: 0 }
    }

    /// The result frame answering `task`, from the worker `answerer` names
    /// (its index + 1; 0 where nobody needs to know).
    pub fn header(&self, task: &FrameHeader, answerer: i64) -> FrameHeader {
        let mut out = FrameHeader {
            stream: task.stream,
            seq: task.seq,
            status: self.status as u32,
            func: answerer,
            check: self.ran_ns,
            ..Default::default()
        };
        self.body.describe(&mut out);
        out
    }

    /// The reply's inline archive bytes (empty for a block body).
    pub fn inline(&self) -> &[u8] {
        self.body.inline(self.scratch)
    }

    /// Encodes `value` as the reply body with `status`.
    pub fn set<T: Message>(&mut self, status: Status, value: &T) {
        match wire::encode_body(self.seg, value, self.scratch, self.inline_max) {
            Ok(body) => (self.status, self.body) = (status, body),
            Err(e) => self.fail(Status::Encode, &e.to_string()),
        }
    }

    /// Sets an error reply carrying `message`.
    pub fn fail(&mut self, status: Status, message: &str) {
        let message = message.to_owned();
        match wire::encode_body(self.seg, &message, self.scratch, self.inline_max) {
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
        Ok(a) => out.set(Status::Ok, &f(a)),
        Err(e) => out.fail(Status::BadInput, &e.to_string()),
    }
}

/// One item's outcome in a group's answer: the value, or the message of the
/// panic it raised.
pub(crate) type GroupItem<R> = Result<R, String>;

/// Trampoline for a group of calls of `fn(A) -> R` (many items of a map in
/// one frame): the argument is an archived `Vec<A>`, the answer a
/// `Vec<GroupItem<R>>` in the same order. Each item runs under its own
/// `catch_unwind`: a panic fails that item only.
///
/// # Safety
///
/// `func` must be a `fn(A) -> R` cast to `usize`.
pub(crate) unsafe fn call_group<A: Message, R: Message>(
    func: usize,
    _state: &mut WorkerState,
    arg: &[u8],
    out: &mut Reply<'_>,
) {
    // SAFETY: per this function's contract, `func` came from a `fn(A) -> R`.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    let items = match codec::access::<Vec<A>>(arg) {
        Ok(items) => items,
        Err(e) => return out.fail(Status::BadInput, &e.to_string()),
    };
    let started = std::time::Instant::now();
    let answers: Vec<GroupItem<R>> = items
        .iter()
        .map(|item| {
            let a = rkyv::deserialize::<A, rkyv::rancor::Error>(item).map_err(|e| format!("invalid argument: {e}"))?;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(a)))
                .map_err(|p| crate::runtime::executor::take_panic_message(&*p))
        })
        .collect();
    out.ran_ns = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
    out.set(Status::Ok, &answers);
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
        Ok(a) => out.set(Status::Ok, &f(a)),
        Err(e) => out.fail(Status::BadInput, &e.to_string()),
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
        out.fail(Status::BadInput, "task for a stateful worker reached a worker without that state");
        return;
    };
    match codec::decode::<W::Task>(arg) {
        Ok(task) => out.set(Status::Ok, &worker.run(task)),
        Err(e) => out.fail(Status::BadInput, &e.to_string()),
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
        out.fail(Status::BadInput, "call for a remote object of another type");
        return;
    };
    match codec::decode::<A>(arg) {
        Ok(a) => out.set(Status::Ok, &f(object, a)),
        Err(e) => out.fail(Status::BadInput, &e.to_string()),
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
        Some(object) => out.set(Status::Ok, &f(object)),
        None => out.fail(Status::BadInput, "read of a remote object of another type"),
    }
}
