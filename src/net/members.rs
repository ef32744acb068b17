//! Who a listening pool's members are: the relay's view of each one
//! ([`MemberInfo`], from [`Pool::members`](crate::Pool::members) in the
//! owner's process), and the status request that asks a relay for it from
//! anywhere ([`members`], what `shmpool-admin members` calls).
//!
//! The request is a sealed frame like every other: the asker publishes a
//! random nonce on `shmpool/pool/status`, having subscribed to
//! `shmpool/pool/status/<nonce>`, and the relay publishes its list there.
//! A request sealed under another secret does not verify at the relay and
//! is dropped unanswered, so only holders of the pool's secret learn who
//! its members are (the asker then times out: [`NetError::TimedOut`]).
//! The answer is bound to its key by its MAC, so an old answer replayed
//! onto a new request's key does not verify either.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rkyv::{Archive, Deserialize, Serialize};

use super::pool::{decode, encode, PREFIX};
use super::{NetError, Session};

/// How often an unanswered status request is sent again (the relay may
/// not have heard of the asker's reply subscription when the first came).
const RETRY: Duration = Duration::from_millis(250);

/// A member of a listening pool, as its owner's relay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberInfo {
    /// The member's id, drawn at random by [`join`](super::join) (its log
    /// records reach the owner as `[member <id in hex>]`).
    pub id: u64,
    /// Worker processes it runs.
    pub workers: usize,
    /// Tasks it holds now: sent to it and not answered yet.
    pub held: usize,
    /// Tasks it has answered since it joined (a map sends its items in
    /// groups: a group is one task).
    pub answered: u64,
    /// When the owner admitted it, by the owner's clock.
    pub joined: SystemTime,
    /// How long it has been a member, as the owner measured when asked
    /// (free of any difference between the hosts' clocks).
    pub member_for: Duration,
    /// Its network session's id, as [`Session::id`] says on its host and
    /// [`Session::peers`] lists it on others.
    pub session: String,
}

/// A status request: where to answer.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(super) struct StatusRequest {
    pub nonce: u64,
}

/// A relay's answer: every member.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(super) struct StatusReply {
    pub nonce: u64,
    pub members: Vec<MemberRecord>,
}

/// [`MemberInfo`] on the wire.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(super) struct MemberRecord {
    id: u64,
    workers: u64,
    held: u64,
    answered: u64,
    joined_unix_ns: u64,
    member_for_ns: u64,
    session: String,
}

impl From<&MemberInfo> for MemberRecord {
    fn from(m: &MemberInfo) -> Self {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        MemberRecord {
            id: m.id,
            workers: m.workers as u64,
            held: m.held as u64,
            answered: m.answered,
            joined_unix_ns: ns(m.joined.duration_since(UNIX_EPOCH).unwrap_or_default()),
            member_for_ns: ns(m.member_for),
            session: m.session.clone(),
        }
    }
}

impl From<MemberRecord> for MemberInfo {
    fn from(r: MemberRecord) -> Self {
        MemberInfo {
            id: r.id,
            workers: usize::try_from(r.workers).unwrap_or(usize::MAX),
            held: usize::try_from(r.held).unwrap_or(usize::MAX),
            answered: r.answered,
            joined: UNIX_EPOCH + Duration::from_nanos(r.joined_unix_ns),
            member_for: Duration::from_nanos(r.member_for_ns),
            session: r.session,
        }
    }
}

/// The key status requests are published on.
pub(super) fn request_key() -> String {
    format!("{PREFIX}/status")
}

/// The key the answer to request `nonce` is published on.
pub(super) fn reply_key(nonce: u64) -> String {
    format!("{PREFIX}/status/{nonce:016x}")
}

/// Answers a verified status request with `members` (the relay's side).
pub(super) fn answer(session: &Session, request: &StatusRequest, members: &[MemberInfo]) {
    let reply = StatusReply { nonce: request.nonce, members: members.iter().map(MemberRecord::from).collect() };
    match encode(&reply) {
        Ok(bytes) => {
            if let Err(e) = session.publish(&reply_key(request.nonce), &bytes) {
                log::debug!("shmpool: a status answer could not be sent: {e}");
            }
        }
        Err(e) => log::warn!("shmpool: a status answer could not be archived: {e}"),
    }
}

/// Asks the pool listening at `endpoint` for its members (from any host;
/// what `shmpool-admin members` does), waiting at most `timeout` in all.
///
/// Connects a session of its own under `secret`, which must be the pool's:
/// the request is sealed under it, and a relay drops a request that does
/// not verify without answering. Errors: [`NetError::Open`] if nothing
/// listens at `endpoint` within the timeout; [`NetError::TimedOut`] if
/// something listens but no answer came: another secret (the usual
/// cause), or no shmpool pool there.
///
/// ```no_run
/// # fn main() -> Result<(), shmpool::net::NetError> {
/// let secret = std::env::var("SHMPOOL_SECRET").unwrap_or_default();
/// let timeout = std::time::Duration::from_secs(5);
/// for m in shmpool::net::members("tcp/hosta:7447", secret, timeout)? {
///     println!("{:016x}: {} workers, {} tasks held", m.id, m.workers, m.held);
/// }
/// # Ok(())
/// # }
/// ```
pub fn members(endpoint: &str, secret: impl AsRef<[u8]>, timeout: Duration) -> Result<Vec<MemberInfo>, NetError> {
    let deadline = Instant::now().checked_add(timeout);
    let left = || deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
    let session = Session::builder().connect(endpoint).secret(secret).connect_timeout(timeout).open()?;
    let nonce = {
        let mut b = [0u8; 8];
        crate::sys::shm::random_bytes(&mut b).map_err(|e| NetError::Open(format!("drawing a nonce: {e}")))?;
        u64::from_ne_bytes(b)
    };
    let replies = session.subscribe_queued(&reply_key(nonce), 16)?;
    let requests = session.publisher(&request_key())?;
    requests.wait_matched(left())?;
    let ask = encode(&StatusRequest { nonce })?;
    loop {
        requests.publish(&ask)?;
        match replies.recv_timeout(left().min(RETRY)) {
            Ok(frame) => {
                if let Some(reply) = decode::<StatusReply>(frame.payload()).filter(|r| r.nonce == nonce) {
                    return Ok(reply.members.into_iter().map(MemberInfo::from).collect());
                }
            }
            Err(NetError::TimedOut) if !left().is_zero() => {}
            Err(e) => return Err(e),
        }
    }
}
