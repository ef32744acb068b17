//! Topics and queues by name between any processes on the host: zero-copy
//! publish-subscribe ([`Topic`]) and work queues ([`Queue`]).
//!
//! A topic or queue lives in its own named segment
//! (`/dev/shm/shmpool.topic.<name>` / `shmpool.queue.<name>`), opened by
//! any process of any binary: nothing but archives crosses (no code
//! offsets), and every value is validated (rkyv bytecheck) before a reader
//! sees it. The type is checked at open: by default its full type name and
//! its archived size and alignment, recorded at creation
//! ([`TopicError::TypeMismatch`] otherwise); two programs that cannot share
//! a types crate name the type themselves (`type_name`).
//!
//! - `layout`: the header, member and slot tables, sample blocks.
//! - `members`: joining, leaving (the last member removes the name), and
//!   reclaiming what dead members held.
//! - `publisher`, `subscriber`: [`Publisher`], [`Loan`], [`Subscriber`],
//!   [`Sample`].
//! - `queue`: [`Queue`], [`Item`].
//! - `info`: [`describe`], what `shmpool-admin list` shows.

mod info;
mod layout;
mod members;
mod publisher;
mod queue;
mod subscriber;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{self, Message};
use crate::segment::SegmentError;

pub use info::{describe, Summary};
pub use layout::{MAX_HELD, MAX_LOANS, MAX_MEMBERS, MAX_PUBLISHERS, MAX_SUBSCRIBERS};
pub use publisher::{Loan, Publisher};
pub use queue::{Item, Queue, QueueBuilder};
pub use subscriber::{Sample, Subscriber};

use members::Shared;

/// What a publisher does when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Wait for room (the publisher's `send_timeout` bounds the wait).
    Block,
    /// Drop the subscriber's oldest sample to make room (counted in
    /// [`Subscriber::missed`]).
    DropOldest,
    /// Refuse the sample: `send` returns [`TopicError::Full`] and no
    /// subscriber gets it.
    Refuse,
}

impl Overflow {
    fn code(self) -> u32 {
        match self {
            Overflow::Block => 0,
            Overflow::DropOldest => 1,
            Overflow::Refuse => 2,
        }
    }

    fn from_code(c: u32) -> Overflow {
        match c {
            1 => Overflow::DropOldest,
            2 => Overflow::Refuse,
            _ => Overflow::Block,
        }
    }
}

/// Why a topic or queue operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicError {
    /// No topic or queue of that name exists.
    NotFound(String),
    /// It carries another type.
    TypeMismatch {
        /// The type it was created for (name, archived size and alignment).
        expected: String,
        /// This program's type.
        found: String,
    },
    /// It is a queue, not a topic, or the other way round.
    WrongKind(String),
    /// A subscriber's queue (with [`Overflow::Refuse`]) or the work queue
    /// is full; the value is still the caller's (it was borrowed).
    Full,
    /// The timeout passed first.
    Timeout,
    /// A fixed table is full: which one (subscribers, publishers, members,
    /// held samples, loans).
    TooMany(&'static str),
    /// The value could not be archived, or found no room in the segment.
    Encode(String),
    /// A sample or item failed validation: it is not a valid archive of
    /// the type (a hostile or corrupt writer). It was dropped.
    Invalid(String),
    /// The shared state is inconsistent (says what): a corrupt segment.
    Corrupt(String),
    /// A builder option is out of range (says which).
    Config(&'static str),
    /// The segment could not be created, opened or used (says why).
    Segment(String),
    /// Across hosts (feature `net`): the network failed, or the host that
    /// serves a queue did not answer (says which). An operation that ends
    /// so may still have taken effect there (a push queued, its answer
    /// lost): at least once, never silently lost.
    Network(String),
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::NotFound(n) => write!(f, "no topic or queue named {n:?}"),
            TopicError::TypeMismatch { expected, found } => {
                write!(f, "it carries {expected}, this program's type is {found}")
            }
            TopicError::WrongKind(n) => write!(f, "{n:?} is not that kind of object (a topic opened as a queue?)"),
            TopicError::Full => write!(f, "full: the value was not sent (it is still yours)"),
            TopicError::Timeout => write!(f, "timed out"),
            TopicError::TooMany(what) => write!(f, "too many {what}"),
            TopicError::Encode(e) => write!(f, "value could not be archived: {e}"),
            TopicError::Invalid(e) => write!(f, "a received value failed validation and was dropped: {e}"),
            TopicError::Corrupt(e) => write!(f, "shared state is corrupt: {e}"),
            TopicError::Config(e) => write!(f, "bad option: {e}"),
            TopicError::Segment(e) => write!(f, "segment: {e}"),
            TopicError::Network(e) => write!(f, "network: {e}"),
        }
    }
}

impl std::error::Error for TopicError {}

impl From<SegmentError> for TopicError {
    fn from(e: SegmentError) -> Self {
        TopicError::Segment(e.to_string())
    }
}

/// Raw bytes as a topic's payload: written in place through a [`Loan`]
/// (no serialisation), read as `[u8]`. `Topic::<Bytes>` carries frames,
/// images, anything already laid out.
#[derive(Debug)]
pub enum Bytes {}

/// What a topic or queue carries: any [`Message`] (sent as its rkyv
/// archive, read in place as `Archived<T>` after validation), or
/// [`Bytes`]. Sealed.
pub trait Payload: sealed::Sealed + 'static {
    /// What a sender passes.
    type Input: ?Sized;
    /// What a received sample reads as.
    type View: ?Sized;
    #[doc(hidden)]
    fn describe() -> (String, u32, u32);
    #[doc(hidden)]
    fn encoded_len(input: &Self::Input) -> Result<usize, String>;
    /// Writes `input` into `dst` (exactly `encoded_len` bytes, 16-aligned).
    #[doc(hidden)]
    fn encode(input: &Self::Input, dst: &mut [u8]) -> Result<usize, String>;
    /// Validates received bytes.
    #[doc(hidden)]
    fn check(bytes: &[u8]) -> Result<(), String>;
    /// # Safety
    /// `bytes` passed [`Payload::check`].
    #[doc(hidden)]
    unsafe fn view(bytes: &[u8]) -> &Self::View;
}

mod sealed {
    pub trait Sealed {}
    impl<T: crate::codec::Message + 'static> Sealed for T {}
    impl Sealed for super::Bytes {}
}

impl<T: Message + 'static> Payload for T {
    type Input = T;
    type View = T::Archive;

    fn describe() -> (String, u32, u32) {
        let t = std::any::type_name::<T>().to_owned();
        (t, std::mem::size_of::<T::Archive>() as u32, std::mem::align_of::<T::Archive>() as u32)
    }

    fn encoded_len(input: &T) -> Result<usize, String> {
        codec::encoded_len(input).map_err(|e| e.to_string())
    }

    fn encode(input: &T, dst: &mut [u8]) -> Result<usize, String> {
        codec::encode_into(input, dst).map_err(|e| e.to_string())
    }

    fn check(bytes: &[u8]) -> Result<(), String> {
        codec::access::<T>(bytes).map(|_| ()).map_err(|e| e.to_string())
    }

    unsafe fn view(bytes: &[u8]) -> &T::Archive {
        // SAFETY: the caller validated `bytes` as an archived `T` (check).
        unsafe { rkyv::access_unchecked::<T::Archive>(bytes) }
    }
}

impl Payload for Bytes {
    type Input = [u8];
    type View = [u8];

    fn describe() -> (String, u32, u32) {
        ("shmpool::topic::Bytes".to_owned(), 1, 1)
    }

    fn encoded_len(input: &[u8]) -> Result<usize, String> {
        Ok(input.len())
    }

    fn encode(input: &[u8], dst: &mut [u8]) -> Result<usize, String> {
        dst[..input.len()].copy_from_slice(input);
        Ok(input.len())
    }

    fn check(_: &[u8]) -> Result<(), String> {
        Ok(())
    }

    unsafe fn view(bytes: &[u8]) -> &[u8] {
        bytes
    }
}

/// How a type is named in a topic's header: "name (size N, align A)".
fn type_label(name: &str, size: u32, align: u32) -> String {
    format!("{name} (archived size {size}, align {align})")
}

/// A named topic: many publishers, up to `max_subscribers` subscribers,
/// each subscriber its own queue of references to shared samples.
///
/// ```no_run
/// use shmpool::topic::{Overflow, Topic};
/// # fn main() -> Result<(), shmpool::topic::TopicError> {
/// let topic = Topic::<u64>::builder("plant/temps").depth(64).history(8).overflow(Overflow::Block).open_or_create()?;
/// let publisher = topic.publisher()?;
/// let sub = topic.subscriber()?;
/// let reached = publisher.send(&21)?;
/// assert_eq!(reached, 1);
/// assert_eq!(*sub.recv()?, 21);
/// # Ok(()) }
/// ```
pub struct Topic<T: Payload> {
    shared: Arc<Shared>,
    /// This process's bridge to the network, if the builder was given one
    /// (feature `net`).
    #[cfg(feature = "net")]
    bridge: Option<Arc<crate::net::TopicBridge>>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Payload> fmt::Debug for Topic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic").field("name", &self.shared.name).finish()
    }
}

impl<T: Payload> Clone for Topic<T> {
    fn clone(&self) -> Self {
        Topic {
            shared: Arc::clone(&self.shared),
            #[cfg(feature = "net")]
            bridge: self.bridge.clone(),
            _type: PhantomData,
        }
    }
}

/// Options for a new topic; they apply when this call creates it (an
/// existing topic keeps its own, which `open_or_create` adopts).
#[derive(Debug, Clone)]
pub struct TopicBuilder<T: Payload> {
    name: String,
    shape: Shape,
    overflow: Overflow,
    #[cfg(feature = "net")]
    network: Option<crate::net::Session>,
    _type: PhantomData<fn() -> T>,
}

/// The shape of a topic or queue, fixed at creation.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    pub max_subscribers: u32,
    pub depth: u32,
    pub history: u32,
    pub capacity: u32,
    pub segment_size: u64,
    pub type_name: Option<String>,
}

impl Shape {
    /// The fingerprint of `T` as a topic or queue of this shape records
    /// it (what the network compares), and its label.
    #[cfg(feature = "net")]
    pub(crate) fn type_fingerprint<T: Payload>(&self) -> (u64, String) {
        let (name, size, align) = T::describe();
        let label = type_label(self.type_name.as_deref().unwrap_or(&name), size, align);
        (crate::shared::type_fingerprint_of(&label), label)
    }
}

impl Default for Shape {
    fn default() -> Self {
        Shape { max_subscribers: 16, depth: 64, history: 0, capacity: 1024, segment_size: 64 << 20, type_name: None }
    }
}

impl<T: Payload> Topic<T> {
    /// Options for the topic `name`.
    pub fn builder(name: &str) -> TopicBuilder<T> {
        TopicBuilder {
            name: name.to_owned(),
            shape: Shape::default(),
            overflow: Overflow::Block,
            #[cfg(feature = "net")]
            network: None,
            _type: PhantomData,
        }
    }

    /// Opens the existing topic `name` (`NotFound` if there is none).
    pub fn open(name: &str) -> Result<Topic<T>, TopicError> {
        Topic::builder(name).open()
    }

    /// A new publisher (up to [`MAX_PUBLISHERS`] at once per topic).
    pub fn publisher(&self) -> Result<Publisher<T>, TopicError> {
        Publisher::new(Arc::clone(&self.shared))
    }

    /// A new subscriber with the topic's overflow policy: it receives the
    /// topic's history first, then every sample sent from now on.
    pub fn subscriber(&self) -> Result<Subscriber<T>, TopicError> {
        let overflow = Overflow::from_code(self.shared.header().capacity.load(std::sync::atomic::Ordering::Relaxed));
        Subscriber::new(Arc::clone(&self.shared), overflow)
    }

    /// A new subscriber with its own overflow policy.
    pub fn subscriber_with(&self, overflow: Overflow) -> Result<Subscriber<T>, TopicError> {
        Subscriber::new(Arc::clone(&self.shared), overflow)
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Subscribers now attached (live or not yet reclaimed).
    pub fn subscriber_count(&self) -> usize {
        self.shared.subscriber_count()
    }

    /// Claims being this host's bridge (free, or its bridge died).
    #[cfg(feature = "net")]
    pub(crate) fn claim_bridge(&self) -> bool {
        self.shared.claim_bridge()
    }

    /// Gives up being this host's bridge.
    #[cfg(feature = "net")]
    pub(crate) fn release_bridge(&self) {
        self.shared.release_bridge()
    }

    /// The fingerprint of the topic's type, as the network carries it.
    #[cfg(feature = "net")]
    pub(crate) fn type_fingerprint(&self) -> u64 {
        self.shared.type_fingerprint()
    }
}

impl<T: Payload> TopicBuilder<T> {
    /// The most subscribers at once (1..=64; default 16).
    pub fn max_subscribers(mut self, n: u32) -> Self {
        self.shape.max_subscribers = n;
        self
    }

    /// Each subscriber's queue length, rounded up to a power of two
    /// (1..=65536; default 64). Samples a subscriber received and still
    /// holds do not count against it.
    pub fn depth(mut self, n: u32) -> Self {
        self.shape.depth = n;
        self
    }

    /// How many of the last samples a late subscriber receives first
    /// (0..=4096; default 0).
    pub fn history(mut self, n: u32) -> Self {
        self.shape.history = n;
        self
    }

    /// The default overflow policy of subscribers (default `Block`).
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// The segment's size (default 64 MiB; pages are only used as touched).
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.shape.segment_size = bytes;
        self
    }

    /// Names the type explicitly, for programs that cannot share a types
    /// crate (the archived size and alignment are still checked).
    pub fn type_name(mut self, name: &str) -> Self {
        self.shape.type_name = Some(name.to_owned());
        self
    }

    /// Also carries the topic across hosts through `session` (feature
    /// `net`): samples published here reach this topic on every connected
    /// host, and theirs reach this host's subscribers (see
    /// [`crate::net::bridge`]).
    #[cfg(feature = "net")]
    pub fn network(mut self, session: &crate::net::Session) -> Self {
        self.network = Some(session.clone());
        self
    }

    /// Opens the topic, creating it if it does not exist.
    pub fn open_or_create(self) -> Result<Topic<T>, TopicError> {
        self.attach(true)
    }

    /// Opens the existing topic (`NotFound` if there is none).
    pub fn open(self) -> Result<Topic<T>, TopicError> {
        self.attach(false)
    }

    fn attach(mut self, create: bool) -> Result<Topic<T>, TopicError> {
        let s = &mut self.shape;
        if !(1..=MAX_SUBSCRIBERS as u32).contains(&s.max_subscribers) {
            return Err(TopicError::Config("max_subscribers must be between 1 and 64"));
        }
        if !(1..=65536).contains(&s.depth) || s.history > 4096 {
            return Err(TopicError::Config("depth must be between 1 and 65536, history at most 4096"));
        }
        s.depth = s.depth.next_power_of_two();
        // The default overflow policy rides in `capacity`, unused by topics.
        s.capacity = self.overflow.code();
        let seg_name = segment_name("topic", &self.name)?;
        check_kind("queue", &self.name)?;
        let shared = Shared::attach::<T>(&seg_name, &self.name, layout::KIND_TOPIC, &self.shape, create)?;
        #[allow(unused_mut)]
        let mut topic = Topic {
            shared: Arc::new(shared),
            #[cfg(feature = "net")]
            bridge: None,
            _type: PhantomData,
        };
        #[cfg(feature = "net")]
        if let Some(session) = &self.network {
            let bridge = crate::net::bridge(&topic, session).map_err(|e| TopicError::Segment(e.to_string()))?;
            topic.bridge = Some(Arc::new(bridge));
        }
        Ok(topic)
    }
}

/// The segment name of the topic or queue `name`: `<kind>.<name>`, with
/// `/` (allowed in topic names: "plant/temps") spelt `._` and `.` spelt
/// `..` (segment names allow letters, digits, `.`, `_` and `-` only).
pub(crate) fn segment_name(kind: &str, name: &str) -> Result<String, TopicError> {
    let mut out = format!("{kind}.");
    if name.is_empty() {
        return Err(TopicError::Config("a topic or queue name is 1 to about 58 characters"));
    }
    // `SHMPOOL_TOPIC_NAMESPACE` keeps sets of topics apart on one host (as
    // separate hosts would be: tests of bridges, containers sharing
    // /dev/shm): it is a leading path of every name.
    let name = match std::env::var(NAMESPACE_ENV) {
        Ok(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    };
    for c in name.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => out.push(c),
            '.' => out.push_str(".."),
            '/' => out.push_str("._"),
            _ => return Err(TopicError::Config("a topic or queue name is letters, digits, '.', '_', '-' and '/'")),
        }
    }
    if out.len() > 64 {
        return Err(TopicError::Config("a topic or queue name is 1 to about 58 characters"));
    }
    Ok(out)
}

/// The environment variable that namespaces topic and queue names.
pub const NAMESPACE_ENV: &str = "SHMPOOL_TOPIC_NAMESPACE";

/// `WrongKind` if `name` exists as the other kind of object.
pub(crate) fn check_kind(other: &str, name: &str) -> Result<(), TopicError> {
    let seg = segment_name(other, name)?;
    if std::path::Path::new(&format!("/dev/shm/shmpool.{seg}")).exists() {
        return Err(TopicError::WrongKind(name.to_owned()));
    }
    Ok(())
}

/// The timeout form's deadline (`Duration::MAX`: none).
fn deadline(timeout: Duration) -> crate::wait::Deadline {
    crate::wait::Deadline::after(timeout)
}
