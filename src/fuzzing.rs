//! Entry points for the fuzz targets in `fuzz/`: the decoders of bytes that
//! come from shared memory, reachable from outside the crate. Not API.

use crate::codec::{Message, Scratch};
use crate::segment::Segment;
use crate::task::{self, Body, FrameHeader, Reply};
use crate::TaskError;

/// Decodes a result frame as the pool's receive path does: header, body
/// (inline or arena block), status and archive of an `R`.
pub fn decode_result_slot<R: Message>(seg: &Segment, slot: &[u8]) -> Result<Result<R, TaskError>, TaskError> {
    let hdr = FrameHeader::read(slot).ok_or_else(|| TaskError::Decode("short frame".into()))?;
    task::with_body(seg, &hdr, slot, false, |bytes| task::decode_result::<R>(hdr.status, bytes))
}

/// Runs a task frame as a worker does, sealed with `key`: a forged or
/// corrupt frame must be refused, never executed. Returns the reply status.
pub fn run_task_slot(seg: &Segment, slot: &[u8], key: u64) -> u32 {
    let mut scratch = Scratch::new();
    let mut reply = Reply { seg, scratch: &mut scratch, inline_max: 128, status: 0, body: Body::None };
    let mut state = None;
    crate::pool::worker::run_one(seg, slot, key, &mut state, &mut reply);
    let status = reply.status;
    reply.body.discard(seg);
    status
}

/// Validates `bytes` as an archived `T` and deserialises it.
pub fn access_archive<T: Message>(bytes: &[u8]) -> Result<T, crate::codec::CodecError> {
    crate::codec::decode::<T>(bytes)
}
