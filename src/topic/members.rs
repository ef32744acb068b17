//! Membership: opening or creating a topic's (queue's) segment, the member
//! table (the last member to leave removes the name), and reclaiming what
//! dead publishers, subscribers and consumers held.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::layout::{self, Header, CLEANING, DIR_KIND, FREE, KIND_QUEUE, MAGIC};
use super::{type_label, Payload, Shape, TopicError};
use crate::ring::{Ring, RingError};
use crate::segment::{Segment, SegmentError};
use crate::sync::SpinPolicy;
use crate::sys::process;
use crate::wait::{self, Deadline};

/// How long an opener waits for a creator that is still laying the header out.
const LAYOUT_WAIT: Duration = Duration::from_secs(2);
/// Ring payload: a sample's offset and sequence number.
pub(super) const REF_BYTES: u32 = 16;
/// How often a wait on other members reclaims what dead ones held.
const REAP_EVERY: Duration = Duration::from_millis(50);
/// A publisher's `claim_ring` for the shared ring (history, or a queue's items).
pub(super) const SHARED_RING: u32 = u32::MAX;

/// One process's membership of a topic or queue: the mapping, the header,
/// the rings, and its entry in the member table (cleared on drop).
pub(super) struct Shared {
    pub seg: Segment,
    header: u64,
    pub name: String,
    member: usize,
    /// Per subscriber slot, its queue (topics).
    pub subs: Vec<Ring>,
    /// The history ring (topics with history) or the item ring (queues).
    pub ring: Option<Ring>,
    /// This process's items being given back (`Item::nack`) take turns: a
    /// consumer slot has one push claim record.
    pub nack_turn: std::sync::Mutex<()>,
}

impl Shared {
    /// Opens (or, with `create`, makes if missing) the segment `seg_name`
    /// holding a `kind` object for `T`, and joins its member table.
    pub fn attach<T: Payload>(
        seg_name: &str,
        name: &str,
        kind: u32,
        shape: &Shape,
        create: bool,
    ) -> Result<Shared, TopicError> {
        // A member that finds the name being removed (the last member left
        // as we came) tries again: a few rounds settle it.
        for _ in 0..64 {
            let seg = match Segment::open(seg_name) {
                Ok(seg) => seg,
                Err(SegmentError::NotFound(_)) if create => match Segment::create(seg_name, shape.segment_size) {
                    Ok(seg) => {
                        seg.keep_name();
                        seg
                    }
                    // Another process created it first: open that one.
                    Err(SegmentError::AlreadyExists(_)) => continue,
                    Err(e) => return Err(e.into()),
                },
                Err(SegmentError::NotFound(_)) => return Err(TopicError::NotFound(name.to_owned())),
                // Its creator is still writing the segment's header.
                Err(SegmentError::NotReady) => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            seg.keep_name();
            if let Some(shared) = Shared::join::<T>(seg, name, kind, shape)? {
                return Ok(shared);
            }
        }
        Err(TopicError::Segment(format!("{name:?} kept being removed while this process opened it")))
    }

    /// Lays out (if new) and checks the header, then takes a member entry;
    /// `None` if the last member is removing the name.
    fn join<T: Payload>(seg: Segment, name: &str, kind: u32, shape: &Shape) -> Result<Option<Shared>, TopicError> {
        let (tname, size, align) = T::describe();
        let tname = shape.type_name.clone().unwrap_or(tname);
        let size_of_header = std::mem::size_of::<Header>() as u64;
        let (block, created) = seg.named("topic", DIR_KIND, 0, size_of_header, |b| {
            let p = seg.ptr(b.offset, size_of_header)?;
            // SAFETY: a block this process just allocated and has not published.
            unsafe { std::ptr::write_bytes(p, 0, size_of_header as usize) };
            Ok(())
        })?;
        let h = seg.get::<Header>(block.offset)?;
        if created {
            h.kind.store(kind, Ordering::Relaxed);
            h.set_type_name(&tname);
            h.type_size.store(size, Ordering::Relaxed);
            h.type_align.store(align, Ordering::Relaxed);
            h.max_subscribers.store(shape.max_subscribers, Ordering::Relaxed);
            h.depth.store(shape.depth, Ordering::Relaxed);
            h.history.store(shape.history, Ordering::Relaxed);
            h.capacity.store(shape.capacity, Ordering::Relaxed);
            h.next_seq.store(1, Ordering::Relaxed);
            if kind == KIND_QUEUE {
                // Room for every item: queued ones, and held ones handed
                // back by consumers that die (never a blocked re-push).
                let slots = (shape.capacity as usize + layout::MAX_SUBSCRIBERS * layout::MAX_HELD).next_power_of_two();
                h.ring.store(Ring::create(&seg, slots as u32, REF_BYTES)?.offset(), Ordering::Relaxed);
            } else {
                if shape.history > 0 {
                    let n = shape.history.next_power_of_two();
                    h.ring.store(Ring::create(&seg, n, REF_BYTES)?.offset(), Ordering::Relaxed);
                }
                for slot in &h.subscribers[..shape.max_subscribers as usize] {
                    slot.ring.store(Ring::create(&seg, shape.depth, REF_BYTES)?.offset(), Ordering::Relaxed);
                }
            }
            // SYNC: Release: an opener that reads MAGIC with Acquire sees the layout.
            h.magic.store(MAGIC, Ordering::Release);
        } else {
            let until = Instant::now() + LAYOUT_WAIT;
            while h.magic.load(Ordering::Acquire) != MAGIC {
                if Instant::now() >= until {
                    return Err(TopicError::Corrupt(format!("{name:?}: its creator never finished laying it out")));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if h.kind.load(Ordering::Relaxed) != kind {
            return Err(TopicError::WrongKind(name.to_owned()));
        }
        let theirs = (h.type_name(), h.type_size.load(Ordering::Relaxed), h.type_align.load(Ordering::Relaxed));
        if theirs != (tname.clone(), size, align) {
            return Err(TopicError::TypeMismatch {
                expected: type_label(&theirs.0, theirs.1, theirs.2),
                found: type_label(&tname, size, align),
            });
        }
        let max = (h.max_subscribers.load(Ordering::Relaxed) as usize).min(layout::MAX_SUBSCRIBERS);
        let mut subs = Vec::new();
        if kind != KIND_QUEUE {
            for slot in &h.subscribers[..max] {
                subs.push(Ring::open(&seg, slot.ring.load(Ordering::Relaxed))?);
            }
        }
        let ring = match h.ring.load(Ordering::Relaxed) {
            0 => None,
            off => Some(Ring::open(&seg, off)?),
        };
        let mut shared = Shared {
            seg,
            header: block.offset,
            name: name.to_owned(),
            member: usize::MAX,
            subs,
            ring,
            nack_turn: Default::default(),
        };
        shared.reap();
        let me = process::current_pid();
        let member = shared
            .header()
            .members
            .iter()
            .position(|m| m.compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed).is_ok())
            .ok_or(TopicError::TooMany("members (processes using it)"))?;
        shared.member = member;
        // SYNC: SeqCst with the leaver's in `leave`: either it sees our entry
        // (and keeps the name) or we see its `closing` (and try again).
        fence(Ordering::SeqCst);
        if shared.header().closing.load(Ordering::Relaxed) != 0 {
            return Ok(None);
        }
        Ok(Some(shared))
    }

    /// Becomes this host's bridge to the network (a topic's, or a queue's
    /// home server) if it has none or its bridge died: one per host.
    #[cfg(feature = "net")]
    pub fn claim_bridge(&self) -> bool {
        let b = &self.header().bridge;
        let me = process::current_pid();
        let cur = b.load(Ordering::Acquire);
        if cur == me {
            return true;
        }
        (cur == 0 || !process::is_alive(cur))
            && b.compare_exchange(cur, me, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Gives up being this host's bridge.
    #[cfg(feature = "net")]
    pub fn release_bridge(&self) {
        let me = process::current_pid();
        let _ = self.header().bridge.compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// The fingerprint of the type it carries, as the network names it.
    #[cfg(feature = "net")]
    pub fn type_fingerprint(&self) -> u64 {
        crate::shared::type_fingerprint_of(&self.type_label())
    }

    /// The type it carries: name, archived size and alignment.
    #[cfg(feature = "net")]
    pub fn type_label(&self) -> String {
        let h = self.header();
        type_label(&h.type_name(), h.type_size.load(Ordering::Relaxed), h.type_align.load(Ordering::Relaxed))
    }

    pub fn header(&self) -> &Header {
        // The header's offset and size were checked at join.
        self.seg.get::<Header>(self.header).expect("the topic header was checked at join")
    }

    /// Subscriber (consumer) slots in use.
    pub fn subscriber_count(&self) -> usize {
        self.header().subscribers.iter().filter(|s| s.state.load(Ordering::Relaxed) != FREE).count()
    }

    /// This process's turn at its publisher's, subscriber's or consumer's
    /// ring operations: one operation at a time keeps that slot's one
    /// claim record true when threads share a handle.
    pub fn turn<'a>(m: &'a std::sync::Mutex<()>) -> std::sync::MutexGuard<'a, ()> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives back what dead members held: their member entries, publisher
    /// loans, subscriber queues and held samples (consumers' items go back
    /// to the queue).
    pub fn reap(&self) {
        let h = self.header();
        for m in &h.members {
            let pid = m.load(Ordering::Relaxed);
            if pid != 0 && !process::is_alive(pid) {
                let _ = m.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        // A slot whose owner died, or whose cleaner died mid-clean.
        let dead = |raw: u32| raw != 0 && !process::is_alive(layout::slot_pid(raw));
        for (i, p) in h.publishers.iter().enumerate() {
            let raw = p.pid.load(Ordering::Acquire);
            if dead(raw) {
                self.clean_publisher(i, raw);
            }
        }
        for (i, s) in h.subscribers.iter().enumerate() {
            let raw = s.pid.load(Ordering::Acquire);
            if dead(raw) {
                self.clean_subscriber(i, raw);
            }
        }
    }

    /// Frees a dead publisher's loans (each recorded loan is one reference:
    /// a sample it was sending keeps the references its subscribers hold).
    pub fn clean_publisher(&self, i: usize, pid: u32) {
        let slot = &self.header().publishers[i];
        // The slot is ours to clean only if it still names the dead process
        // we saw: another cleaner, or a new publisher, may have it by now.
        let me = process::current_pid() | layout::CLEANER;
        if slot.pid.compare_exchange(pid, me, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return;
        }
        let push = slot.push_claim.swap(0, Ordering::AcqRel);
        let pop = slot.pop_claim.swap(0, Ordering::AcqRel);
        if let Some(ring) = self.ring_at(slot.claim_ring.load(Ordering::Relaxed)) {
            // A pop (DropOldest, history trim) releases its reference after
            // the slot: a slot it never released still holds one.
            undo_claims(ring, push, pop, |off| layout::release(&self.seg, off));
        }
        for loan in &slot.loans {
            let off = loan.swap(0, Ordering::AcqRel);
            if off != 0 {
                layout::release(&self.seg, off);
            }
        }
        slot.pid.store(0, Ordering::Release);
    }

    /// Reclaims subscriber (consumer) slot `i` of the dead process `pid`:
    /// its queued and held samples are released (a consumer's held items
    /// go back to the queue), and the slot is free again.
    pub fn clean_subscriber(&self, i: usize, pid: u32) {
        let slot = &self.header().subscribers[i];
        // Ours to clean only if it still names the dead process (or dead
        // cleaner) we saw: a new subscriber's slot is never touched.
        let me = process::current_pid() | layout::CLEANER;
        if slot.pid.compare_exchange(pid, me, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return;
        }
        // Publishers deliver only to ACTIVE slots.
        slot.state.store(CLEANING, Ordering::Release);
        let queue = self.header().kind.load(Ordering::Relaxed) == KIND_QUEUE;
        let ring = if queue { self.ring.as_ref() } else { self.subs.get(i) };
        if let Some(ring) = ring {
            // A pop it claimed and never released would wedge the ring: take
            // the slot over. Its reference was recorded in `held` before the
            // release (see the subscriber), or is lost with it (a leak,
            // never a double release).
            let pop = slot.pop_claim.swap(0, Ordering::AcqRel);
            let push = slot.push_claim.swap(0, Ordering::AcqRel);
            let held = |off: u64| slot.held.iter().any(|h| h.load(Ordering::Acquire) == off);
            undo_claims(ring, push, pop, |off| {
                if !held(off) {
                    // Popped, not yet recorded: the queue's reference is ours.
                    if queue {
                        self.requeue(off, None);
                    } else {
                        layout::release(&self.seg, off);
                    }
                }
            });
            if !queue {
                drain_refs(&self.seg, ring, &slot.pop_claim);
            }
        }
        for held in &slot.held {
            let off = held.swap(0, Ordering::AcqRel);
            if off > 1 {
                if queue {
                    // Unacknowledged: another consumer gets it.
                    self.requeue(off, None);
                } else {
                    layout::release(&self.seg, off);
                }
            }
        }
        slot.missed.store(0, Ordering::Relaxed);
        // The state first: a joiner claims the slot by its pid, after this.
        slot.state.store(FREE, Ordering::Release);
        slot.pid.store(0, Ordering::Release);
    }

    /// The ring a claim's `claim_ring` names.
    fn ring_at(&self, idx: u32) -> Option<&Ring> {
        if idx == SHARED_RING {
            self.ring.as_ref()
        } else {
            self.subs.get(idx as usize)
        }
    }

    /// Puts a queue item back in the queue, handing it the caller's
    /// reference (recording the push in `claim`, if given).
    pub fn requeue(&self, off: u64, claim: Option<&AtomicU64>) {
        let h = self.header();
        let seq = layout::sample(&self.seg, off).map_or(0, |s| s.seq.load(Ordering::Relaxed));
        h.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.push_item(claim, encode_ref(off, seq), Deadline::NEVER) {
            // Only a closed or corrupt ring refuses for good: drop the item
            // rather than wedge, and say so.
            h.queued.fetch_sub(1, Ordering::AcqRel);
            if let Some(ring) = &self.ring {
                // A pusher may wait for the place this gave back.
                ring.writable().notify();
            }
            layout::release(&self.seg, off);
            log::error!("shmpool: queue {:?}: an item could not be put back ({e}); dropped", self.name);
        }
    }

    /// Pushes an entry into the item ring, waiting (until `deadline`) for
    /// the slot it laps: the ring has room for every item there can be,
    /// but a consumer stopped between claiming a slot and releasing it
    /// holds that position until it goes on (or, dead, is reclaimed: the
    /// wait reaps every 50 ms).
    pub fn push_item(&self, claim: Option<&AtomicU64>, entry: [u8; 16], deadline: Deadline) -> Result<(), RingError> {
        let Some(ring) = &self.ring else { return Err(RingError::Closed) };
        if push_ref(ring, claim, entry).is_ok() {
            return Ok(());
        }
        let write = |_: usize, dst: &mut [u8]| {
            dst[..16].copy_from_slice(&entry);
            16
        };
        let pushed = wait::ring_in_slices(
            deadline,
            REAP_EVERY,
            |until| ring.push_many_recorded(1, Some(until), SpinPolicy::DEFAULT, claim, write).map(|_| ()),
            || {
                self.reap();
                Ok::<(), ()>(())
            },
        );
        match pushed {
            Ok(r) => r,
            Err(_) => Err(RingError::Timeout),
        }
    }

    /// Leaves the member table; the last member removes the name.
    fn leave(&self) {
        let h = self.header();
        if let Some(m) = h.members.get(self.member) {
            m.store(0, Ordering::Release);
        }
        let alone = |h: &Header| {
            h.members.iter().all(|m| {
                let pid = m.load(Ordering::Relaxed);
                pid == 0 || !process::is_alive(pid)
            })
        };
        if alone(h) {
            h.closing.store(1, Ordering::Relaxed);
            // SYNC: SeqCst, paired with the joiner's fence in `join`.
            fence(Ordering::SeqCst);
            if alone(h) {
                self.seg.unlink_name();
            } else {
                h.closing.store(0, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.member != usize::MAX {
            self.leave();
        }
    }
}

/// A ring entry: a sample's offset and sequence number.
pub(super) fn encode_ref(off: u64, seq: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&off.to_le_bytes());
    b[8..].copy_from_slice(&seq.to_le_bytes());
    b
}

/// Reads a ring entry (hostile bytes: a short one is `None`).
pub(super) fn decode_ref(bytes: &[u8]) -> Option<(u64, u64)> {
    let off = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((off, seq))
}

/// Whether the claim record `claim`, `(pos << 8) | n` (0: none), covers `pos`.
fn covers(claim: u64, pos: u64) -> bool {
    claim != 0 && pos.wrapping_sub(claim >> 8) < (claim & 0xFF)
}

/// Undoes the ring claims of a dead process: slots it claimed to push and
/// never published are poisoned (consumers skip them), slots it claimed to
/// pop and never released are released, their entry handed to `stolen`.
fn undo_claims(ring: &Ring, push: u64, pop: u64, mut stolen: impl FnMut(u64)) {
    if push != 0 {
        for pos in ring.unpublished() {
            if covers(push, pos) {
                ring.poison_unpublished(pos);
            }
        }
    }
    if pop != 0 {
        for pos in ring.unreleased() {
            if covers(pop, pos) {
                ring.steal_unreleased(pos, |b| {
                    if let Some((off, _)) = decode_ref(b) {
                        stolen(off);
                    }
                });
            }
        }
    }
}

/// Pushes one sample reference without waiting (`WouldBlock` if full),
/// recording the claim in `claim` if given.
pub(super) fn push_ref(
    ring: &Ring,
    claim: Option<&std::sync::atomic::AtomicU64>,
    entry: [u8; 16],
) -> Result<(), crate::ring::RingError> {
    ring.try_push_many_recorded(1, claim, |_, dst| {
        dst[..16].copy_from_slice(&entry);
        16
    })
    .map(|_| ())
}

/// Pops one sample reference without waiting, recording the claim in
/// `claim`; the reference is the caller's (released after the slot is).
pub(super) fn pop_ref_now(ring: &Ring, claim: &std::sync::atomic::AtomicU64) -> Option<u64> {
    let mut got = None;
    let _ = ring.try_pop_many_recorded(1, Some(claim), |_, b| got = decode_ref(b).map(|(off, _)| off));
    got
}

/// Empties a ring of sample references, releasing each, the claims
/// recorded in `claim` (a process killed mid-drain leaves no wedged slot).
pub(super) fn drain_refs(seg: &Segment, ring: &Ring, claim: &AtomicU64) {
    while let Ok(n) = ring.try_pop_many_recorded(1, Some(claim), |_, b| {
        if let Some((off, _)) = decode_ref(b) {
            layout::release(seg, off);
        }
    }) {
        if n == 0 {
            break;
        }
    }
}

/// A slot of `slots` (publishers or subscribers) taken for this process.
pub(super) fn claim_slot<'a>(
    slots: impl Iterator<Item = &'a std::sync::atomic::AtomicU32>,
    what: &'static str,
) -> Result<usize, TopicError> {
    let me = process::current_pid();
    let mut slots = slots;
    slots
        .position(|p| p.compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed).is_ok())
        .ok_or(TopicError::TooMany(what))
}
