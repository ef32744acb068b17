//! Entry points for the fuzz targets in `fuzz/`: the decoders of bytes that
//! come from shared memory, reachable from outside the crate. Not API.

use crate::codec::{Message, Scratch};
use crate::runtime::tramp::Reply;
use crate::segment::Segment;
use crate::wire::{self, FrameHeader};
use crate::TaskError;

/// Decodes a result frame as the pool's receive path does: header, body
/// (inline or arena block), status and archive of an `R`.
pub fn decode_result_slot<R: Message>(seg: &Segment, slot: &[u8]) -> Result<Result<R, TaskError>, TaskError> {
    let hdr = FrameHeader::read(slot).ok_or_else(|| TaskError::Decode("short frame".into()))?;
    wire::with_body(seg, &hdr, slot, false, |bytes| wire::decode_result::<R>(hdr.status, bytes))
}

/// Runs a task frame as a worker does, sealed with `key`: a forged or
/// corrupt frame must be refused, never executed. Returns the reply status.
pub fn run_task_slot(seg: &Segment, slot: &[u8], key: u64) -> u32 {
    let mut scratch = Scratch::new();
    let mut reply = Reply::new(seg, &mut scratch, 128 + wire::HEADER);
    let mut state = None;
    crate::runtime::executor::run_one(seg, slot, key, &mut state, &mut reply);
    let status = reply.status as u32;
    reply.body.discard(seg);
    status
}

/// Validates `bytes` as an archived `T` and deserialises it.
pub fn access_archive<T: Message>(bytes: &[u8]) -> Result<T, crate::codec::CodecError> {
    crate::codec::decode::<T>(bytes)
}
