//! The one frame format: every user value that crosses a ring (a task, a
//! result, a call, a message, a log record) travels as a fixed
//! [`FrameHeader`] followed by its rkyv archive, inline in the slot or in an
//! arena block named by offset.
//!
//! One encoder ([`encode`]), one decoder ([`with_body`]), one way to give a
//! body back ([`discard`]). Receive buffers ([`FrameBuf`]) are sized from the
//! ring's real payload capacity, never from a literal.

use std::mem::size_of;

use crate::codec::{self, CodecError, Message, Scratch};
use crate::ring::Ring;
use crate::segment::Segment;
use crate::TaskError;

/// Bytes of [`FrameHeader`] at the start of every slot payload; the inline
/// archive follows, 16-byte aligned.
pub(crate) const HEADER: usize = 64;

/// Body kinds.
pub(crate) const BODY_NONE: u32 = 0;
pub(crate) const BODY_INLINE: u32 = 1;
pub(crate) const BODY_BLOCK: u32 = 2;

/// What a result frame says of its task (`FrameHeader::status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Status {
    /// The body is the value.
    Ok = 0,
    /// The task panicked; the body is the message.
    Panicked = 1,
    /// The argument was unreadable or the frame refused; the body says why.
    BadInput = 2,
    /// The result could not be archived; the body says why.
    Encode = 3,
    /// Cleared from the queue before it ran.
    Cancelled = 4,
    /// Its worker died; the body is the pid.
    WorkerDied = 5,
    /// It exceeded the task timeout; the body is the killed worker's pid.
    TimedOut = 6,
}

impl Status {
    fn from_u32(v: u32) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::Panicked,
            2 => Status::BadInput,
            3 => Status::Encode,
            4 => Status::Cancelled,
            5 => Status::WorkerDied,
            6 => Status::TimedOut,
            _ => return None,
        })
    }
}

/// The fixed part of every frame.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Which waiter the frame belongs to (a ticket, a map, a client slot).
    pub stream: u64,
    /// Position within the stream (submission order).
    pub seq: u64,
    /// Tasks: the user function, as a code offset. Results: the answering
    /// worker's index + 1.
    pub func: i64,
    /// The trampoline that decodes, calls and encodes, as an offset (tasks only).
    pub tramp: i64,
    /// Tasks: the seal over `func` and `tramp`. Results: nanoseconds the
    /// task ran (what a map's grouping learns the cost of an item from).
    pub check: u64,
    /// A result's [`Status`]; a task's count of earlier attempts.
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

    /// Writes the header and `inline` archive bytes into `slot`; returns the
    /// length used. `slot` must hold both (callers size it from the ring).
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

    /// The inline bytes of this body in `scratch` (empty for other kinds).
    pub fn inline<'s>(&self, scratch: &'s Scratch) -> &'s [u8] {
        match *self {
            Body::Inline(n) => &scratch.0[..n],
            _ => &[],
        }
    }

    /// Returns a block body's memory to the arena (a message never sent).
    pub fn discard(&self, seg: &Segment) {
        if let Body::Block { offset, .. } = *self {
            let _ = seg.release(offset);
        }
    }
}

/// Frees the arena block a frame names, if any (a frame that will not be
/// delivered, or whose body was copied out).
pub(crate) fn discard(seg: &Segment, hdr: &FrameHeader) {
    if hdr.body == BODY_BLOCK {
        let _ = seg.release(hdr.block);
    }
}

/// Largest archive a frame carries inline in a slot of `payload` bytes (and
/// in a [`Scratch`]).
pub(crate) fn inline_max(payload: usize) -> usize {
    payload.saturating_sub(HEADER).min(codec::SCRATCH)
}

/// A frame ready to be written into a slot: the header (body fields filled)
/// and its inline bytes in the scratch it was encoded into.
#[derive(Debug)]
pub(crate) struct Frame<'s> {
    pub hdr: FrameHeader,
    pub body: Body,
    scratch: &'s Scratch,
}

impl<'s> Frame<'s> {
    /// A frame from the parts an earlier [`encode`] into `scratch` made
    /// (for a sender that keeps them across attempts).
    pub fn from_parts(hdr: FrameHeader, body: Body, scratch: &'s Scratch) -> Frame<'s> {
        Frame { hdr, body, scratch }
    }

    /// Writes the frame into a slot payload; returns the bytes used.
    pub fn write(&self, slot: &mut [u8]) -> usize {
        self.hdr.write(slot, self.body.inline(self.scratch))
    }

    /// The inline archive bytes (empty for a block body).
    pub fn inline(&self) -> &[u8] {
        self.body.inline(self.scratch)
    }
}

/// Frames `value` behind `hdr` for a ring of `payload`-byte slots: inline if
/// header and archive fit the slot, otherwise in an arena block of exactly
/// its size (one copy either way).
pub(crate) fn encode<'s, T: Message>(
    seg: &Segment,
    mut hdr: FrameHeader,
    value: &T,
    scratch: &'s mut Scratch,
    payload: usize,
) -> Result<Frame<'s>, TaskError> {
    let body = encode_body(seg, value, scratch, inline_max(payload))?;
    body.describe(&mut hdr);
    Ok(Frame { hdr, body, scratch })
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
    let (offset, p) = new_block(seg, len)?;
    // SAFETY: the block was just allocated by this process, so nobody else
    // reads or writes it; the range was bounds-checked by `new_block`.
    let dst = unsafe { std::slice::from_raw_parts_mut(p, len) };
    match codec::encode_into(value, dst) {
        Ok(n) => Ok(Body::Block { offset, len: n as u64 }),
        Err(e) => {
            let _ = seg.release(offset);
            Err(TaskError::Encode(e.to_string()))
        }
    }
}

/// A new arena block of `len` bytes for this process to fill: its offset
/// and its address (the block is freed again if the segment cannot give
/// its address: nothing leaks on a corrupt segment).
fn new_block(seg: &Segment, len: usize) -> Result<(u64, *mut u8), TaskError> {
    let block = seg.alloc(len as u64).map_err(|e| TaskError::Encode(e.to_string()))?;
    match seg.ptr(block.offset, len as u64) {
        Ok(p) => Ok((block.offset, p)),
        Err(e) => {
            let _ = seg.release(block.offset);
            Err(TaskError::Encode(e.to_string()))
        }
    }
}

/// Frames archive bytes made elsewhere (a relayed task or result, already
/// archived by a process of the same build) behind `hdr`: inline in
/// `scratch` if they fit a slot of `payload` bytes, else in a new block.
/// The bytes are copied to a 16-byte aligned place either way.
#[cfg(feature = "net")]
pub(crate) fn encode_raw<'s>(
    seg: &Segment,
    mut hdr: FrameHeader,
    bytes: &[u8],
    scratch: &'s mut Scratch,
    payload: usize,
) -> Result<Frame<'s>, TaskError> {
    let body = if bytes.len() <= inline_max(payload).min(scratch.0.len()) {
        scratch.0[..bytes.len()].copy_from_slice(bytes);
        Body::Inline(bytes.len())
    } else {
        let (offset, dst) = new_block(seg, bytes.len())?;
        // SAFETY: a block this process just allocated, in bounds (checked).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
        Body::Block { offset, len: bytes.len() as u64 }
    };
    body.describe(&mut hdr);
    Ok(Frame { hdr, body, scratch })
}

/// Archives `value` into a new arena block, however small (for records that
/// live outside any ring slot).
pub(crate) fn encode_block<T: Message>(seg: &Segment, value: &T) -> Result<Body, TaskError> {
    with_scratch(|scratch| match encode_body(seg, value, scratch, codec::SCRATCH)? {
        Body::Inline(n) => {
            let (offset, dst) = new_block(seg, n.max(1))?;
            // SAFETY: a block this process just allocated, in bounds (checked).
            unsafe { std::ptr::copy_nonoverlapping(scratch.0.as_ptr(), dst, n) };
            Ok(Body::Block { offset, len: n as u64 })
        }
        other => Ok(other),
    })
}

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

/// Turns a result frame's status and body into the caller's value.
pub(crate) fn decode_result<R: Message>(status: u32, bytes: &[u8]) -> Result<R, TaskError> {
    let message = || codec::decode::<String>(bytes).unwrap_or_else(|e| format!("<unreadable message: {e}>"));
    let pid = || codec::decode::<u32>(bytes).unwrap_or(0);
    match Status::from_u32(status) {
        Some(Status::Ok) => codec::decode::<R>(bytes).map_err(|e| TaskError::Decode(e.to_string())),
        Some(Status::Panicked) => Err(TaskError::Panicked { message: message() }),
        Some(Status::BadInput) => Err(TaskError::Decode(message())),
        Some(Status::Encode) => Err(TaskError::Encode(message())),
        Some(Status::Cancelled) => Err(TaskError::Cancelled),
        Some(Status::WorkerDied) => Err(TaskError::WorkerDied { pid: pid() }),
        Some(Status::TimedOut) => Err(TaskError::TimedOut { pid: pid() }),
        None => Err(TaskError::Decode(format!("unknown result status {status}"))),
    }
}

/// A 16-byte aligned buffer holding whole frames copied out of a ring's
/// slots (or staged for one): `slots` frames of the ring's payload capacity.
///
/// Sized from [`Ring::payload_capacity`], so whatever fits a slot fits here.
#[derive(Debug, Clone)]
pub(crate) struct FrameBuf {
    words: Vec<u128>,
    stride: usize,
}

impl FrameBuf {
    /// Room for `slots` frames of `payload` bytes each.
    pub fn new(payload: usize, slots: usize) -> FrameBuf {
        let stride = payload.div_ceil(16) * 16;
        FrameBuf { words: vec![0u128; (stride * slots.max(1)) / 16], stride }
    }

    /// Room for `slots` frames of `ring`'s slots.
    pub fn for_ring(ring: &Ring, slots: usize) -> FrameBuf {
        FrameBuf::new(ring.payload_capacity(), slots)
    }

    /// Frame `i`'s whole area.
    pub fn slot(&self, i: usize) -> &[u8] {
        &as_bytes(&self.words)[i * self.stride..(i + 1) * self.stride]
    }

    /// Frame `i`'s whole area, writable.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let stride = self.stride;
        &mut as_bytes_mut(&mut self.words)[i * stride..(i + 1) * stride]
    }

    /// Copies `bytes` (at most a slot's worth: longer input is cut, which a
    /// slot never produces) into frame `i`; returns the length kept.
    pub fn fill(&mut self, i: usize, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.stride);
        self.slot_mut(i)[..n].copy_from_slice(&bytes[..n]);
        n
    }
}

/// A frame copied out of its slot (16-byte aligned inline archive), for a
/// receiver that is not its owner.
#[derive(Debug, Clone)]
pub(crate) struct OwnedFrame {
    pub hdr: FrameHeader,
    /// The inline archive; empty for block bodies.
    inline: Words,
}

/// Whole 16-byte words of an inline archive: a small one (most results)
/// kept in place, a larger one on the heap.
#[derive(Debug, Clone)]
enum Words {
    Small([u128; SMALL_WORDS]),
    Large(Vec<u128>),
}

/// Archives of up to this many words travel in an `OwnedFrame` without an
/// allocation.
const SMALL_WORDS: usize = 2;

impl Words {
    /// `n` zeroed words.
    fn zeroed(n: usize) -> Words {
        if n <= SMALL_WORDS {
            Words::Small([0; SMALL_WORDS])
        } else {
            Words::Large(vec![0; n])
        }
    }

    fn as_slice(&self) -> &[u128] {
        match self {
            Words::Small(w) => w,
            Words::Large(w) => w,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u128] {
        match self {
            Words::Small(w) => w,
            Words::Large(w) => w,
        }
    }
}

impl OwnedFrame {
    /// Copies the frame `hdr` read from `slot`.
    pub fn copy(hdr: FrameHeader, slot: &[u8]) -> OwnedFrame {
        let mut inline = Words::zeroed(0);
        let mut hdr = hdr;
        if hdr.body == BODY_INLINE {
            let len = (hdr.len as usize).min(slot.len().saturating_sub(HEADER));
            inline = Words::zeroed(len.div_ceil(16));
            as_bytes_mut(inline.as_mut_slice())[..len].copy_from_slice(&slot[HEADER..HEADER + len]);
            hdr.len = len as u64;
        }
        OwnedFrame { hdr, inline }
    }

    /// A frame carrying `value` inline (small values only: a pid, nothing).
    pub fn inline<T: Message>(hdr: FrameHeader, value: &T) -> OwnedFrame {
        let mut s = Scratch::new();
        let n = codec::encode_into(value, &mut s.0).unwrap_or(0);
        let mut words = Words::zeroed(n.div_ceil(16));
        as_bytes_mut(words.as_mut_slice())[..n].copy_from_slice(&s.0[..n]);
        OwnedFrame { hdr: FrameHeader { body: BODY_INLINE, len: n as u64, block: 0, ..hdr }, inline: words }
    }

    /// Calls `f` with the archive; a block body is consumed (freed after).
    pub fn with_body<R>(&self, seg: &Segment, f: impl FnOnce(&[u8]) -> R) -> Result<R, TaskError> {
        if self.hdr.body == BODY_INLINE {
            return Ok(f(&as_bytes(self.inline.as_slice())[..self.hdr.len as usize]));
        }
        with_body(seg, &self.hdr, &[], true, f)
    }

    /// Frees the body's block, if any (the frame will not be delivered).
    pub fn discard(&self, seg: &Segment) {
        discard(seg, &self.hdr);
    }
}

fn as_bytes(v: &[u128]) -> &[u8] {
    // SAFETY: u128 has no padding and every byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * 16) }
}

fn as_bytes_mut(v: &mut [u128]) -> &mut [u8] {
    // SAFETY: as above; the mutable borrow of `v` is carried over.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 16) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_buffer_holds_whatever_fits_a_slot() {
        let seg = Segment::anonymous(1 << 20).unwrap();
        for payload in [48u32, 80, 200, 256, 300, 1000, 1024] {
            let ring = Ring::create(&seg, 4, payload).unwrap();
            let mut buf = FrameBuf::for_ring(&ring, 2);
            let full = vec![7u8; ring.payload_capacity()];
            assert_eq!(buf.fill(1, &full), full.len(), "payload {payload}");
            assert_eq!(&buf.slot(1)[..full.len()], &full[..]);
        }
    }

    #[test]
    fn encode_goes_inline_or_to_a_block_at_the_slot_boundary() {
        let seg = Segment::anonymous(1 << 20).unwrap();
        let ring = Ring::create(&seg, 4, 256).unwrap();
        let payload = ring.payload_capacity();
        let mut scratch = Scratch::new();
        let mut saw = (false, false);
        for len in 0..payload + 64 {
            let value = vec![0xA5u8; len];
            let frame = encode(&seg, FrameHeader::default(), &value, &mut scratch, payload).unwrap();
            let mut slot = vec![0u128; payload.div_ceil(16)];
            let n = frame.write(&mut as_bytes_mut(&mut slot)[..payload]);
            assert!(n <= payload);
            match frame.body {
                Body::Inline(_) => saw.0 = true,
                Body::Block { .. } => saw.1 = true,
                Body::None => unreachable!(),
            }
            let hdr = frame.hdr;
            let back = with_body(&seg, &hdr, as_bytes(&slot), true, codec::decode::<Vec<u8>>).unwrap().unwrap();
            assert_eq!(back, value);
        }
        assert_eq!(saw, (true, true));
    }
}
