//! rkyv archives written straight into ring slots or arena blocks, and read
//! in place, validated by default.
//!
//! [`Message`] names what can travel: any type rkyv can archive, serialise
//! with the high-level serializer, check and deserialise.

use std::fmt;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::{Positional, Writer};
use rkyv::{Archive, Deserialize, Portable, Serialize};

/// The serializer messages are written with.
pub type Ser<'a> = HighSerializer<ArchiveWriter<'a>, ArenaHandle<'a>, rancor::Error>;

/// A value that can travel between processes: archived with rkyv, accessed
/// in place after validation, deserialised on demand.
///
/// Implemented for every type with `#[derive(rkyv::Archive, rkyv::Serialize,
/// rkyv::Deserialize)]` and for the standard types rkyv supports (integers,
/// `String`, `Vec<T>`, tuples, `Option`, ...).
pub trait Message: Archive<Archived = <Self as Message>::Archive> + for<'a> Serialize<Ser<'a>> + Sized {
    /// The archived form (`rkyv::Archived<Self>`), with the bounds that let it
    /// be validated and deserialised.
    type Archive: Portable
        + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<Self, HighDeserializer<rancor::Error>>;
}

impl<T> Message for T
where
    T: Archive + for<'a> Serialize<Ser<'a>>,
    T::Archived: Portable
        + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    type Archive = T::Archived;
}

/// Why a value could not be archived or read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The destination is smaller than the archive.
    TooSmall {
        /// Bytes available.
        capacity: usize,
    },
    /// Serialisation failed (says why).
    Serialize(String),
    /// The bytes are not a valid archive of the expected type.
    Invalid(String),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::TooSmall { capacity } => write!(f, "archive does not fit in {capacity} bytes"),
            CodecError::Serialize(e) => write!(f, "serialisation failed: {e}"),
            CodecError::Invalid(e) => write!(f, "invalid archive: {e}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// An rkyv writer over a caller's byte slice, or a counter when there is none.
///
/// Writing past the end fails cleanly (the serializer stops); counting mode
/// lets a caller learn an archive's exact size without copying anything.
#[derive(Debug)]
pub struct ArchiveWriter<'a> {
    buf: Option<&'a mut [u8]>,
    pos: usize,
}

impl Positional for ArchiveWriter<'_> {
    #[inline]
    fn pos(&self) -> usize {
        self.pos
    }
}

thread_local! {
    /// Set by [`ArchiveWriter`] when a write did not fit: tells a full buffer
    /// apart from a serialisation error after the serializer gives up.
    static OVERFLOWED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl<E: rancor::Source> Writer<E> for ArchiveWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self.pos + bytes.len();
        if let Some(buf) = self.buf.as_deref_mut() {
            let Some(dst) = buf.get_mut(self.pos..end) else {
                OVERFLOWED.with(|o| o.set(true));
                return Err(E::new(Overflow));
            };
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
        Ok(())
    }
}

#[derive(Debug)]
struct Overflow;

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("archive overflows its buffer")
    }
}

impl std::error::Error for Overflow {}

/// Archives `value` into `buf` (which must be 16-byte aligned); returns the length.
pub fn encode_into<T: Message>(value: &T, buf: &mut [u8]) -> Result<usize, CodecError> {
    debug_assert_eq!(buf.as_ptr() as usize % 16, 0, "archive buffers must be 16-byte aligned");
    let capacity = buf.len();
    let writer = ArchiveWriter { buf: Some(buf), pos: 0 };
    OVERFLOWED.with(|o| o.set(false));
    rkyv::util::with_arena(|arena| {
        match rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(value, writer, arena.acquire()) {
            Ok(w) => Ok(w.pos),
            Err(e) => {
                if OVERFLOWED.with(|o| o.get()) {
                    Err(CodecError::TooSmall { capacity })
                } else {
                    Err(CodecError::Serialize(e.to_string()))
                }
            }
        }
    })
}

/// The exact length of `value`'s archive, computed without writing it.
pub fn encoded_len<T: Message>(value: &T) -> Result<usize, CodecError> {
    let writer = ArchiveWriter { buf: None, pos: 0 };
    rkyv::util::with_arena(|arena| {
        rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(value, writer, arena.acquire())
            .map(|w| w.pos)
            .map_err(|e| CodecError::Serialize(e.to_string()))
    })
}

/// Validates `bytes` as an archived `T` and borrows it in place.
pub fn access<T: Message>(bytes: &[u8]) -> Result<&T::Archive, CodecError> {
    rkyv::access::<T::Archive, rancor::Error>(bytes).map_err(|e| CodecError::Invalid(e.to_string()))
}

/// Validates `bytes` as an archived `T` and deserialises it.
pub fn decode<T: Message>(bytes: &[u8]) -> Result<T, CodecError> {
    let archived = access::<T>(bytes)?;
    rkyv::deserialize::<T, rancor::Error>(archived).map_err(|e| CodecError::Invalid(e.to_string()))
}

/// A 16-byte aligned scratch buffer for archives that fit in a ring slot.
#[repr(C, align(16))]
#[derive(Clone)]
pub struct Scratch(pub [u8; SCRATCH]);

/// The size of [`Scratch`]: the largest inline payload any slot can carry.
pub const SCRATCH: usize = 1024;

impl Scratch {
    /// A zeroed buffer.
    pub fn new() -> Box<Scratch> {
        Box::new(Scratch([0; SCRATCH]))
    }
}

impl fmt::Debug for Scratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scratch")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sizes() {
        let mut s = Scratch::new();
        let v = vec![1u32, 2, 3];
        let n = encode_into(&v, &mut s.0).unwrap();
        assert_eq!(n, encoded_len(&v).unwrap());
        assert_eq!(decode::<Vec<u32>>(&s.0[..n]).unwrap(), v);
        assert_eq!(access::<Vec<u32>>(&s.0[..n]).unwrap().len(), 3);
    }

    #[test]
    fn too_small_is_reported() {
        let mut s = Scratch::new();
        let big = vec![7u8; 5000];
        assert_eq!(encode_into(&big, &mut s.0), Err(CodecError::TooSmall { capacity: SCRATCH }));
        assert!(encoded_len(&big).unwrap() >= 5000);
    }

    #[test]
    fn corrupt_bytes_are_rejected() {
        let mut s = Scratch::new();
        let n = encode_into(&"a string longer than the inline form".to_string(), &mut s.0).unwrap();
        // Point the string's relative pointer somewhere absurd.
        for b in &mut s.0[n - 4..n] {
            *b = 0x7f;
        }
        assert!(matches!(decode::<String>(&s.0[..n]), Err(CodecError::Invalid(_))));
    }
}
