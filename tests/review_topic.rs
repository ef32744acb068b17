//! Review findings in `src/topic/`: each test fails on the bug it names
//! (marked `#[ignore = "bug: ..."]` until it is fixed).
//!
//! Some tests put the segment in the state a process SIGKILLed at a given
//! instruction leaves (a dead pid in a slot, a count not yet updated) by
//! writing the `/dev/shm` file directly: that is exactly what a kill at that
//! point leaves behind, made deterministic.

#[path = "common/watchdog.rs"]
mod watchdog;

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use shmpool::topic::{Bytes, Queue, Topic, TopicError};
use watchdog::watchdog;

const LIMIT: Duration = Duration::from_secs(60);

fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("rv-{tag}-{}-{n}", std::process::id())
}

/// The segment file of a topic or queue, removed at the end of the test.
struct ShmFile(String);

impl ShmFile {
    fn new(kind: &str, name: &str) -> ShmFile {
        ShmFile(format!("/dev/shm/shmpool.{kind}.{name}"))
    }
    fn file(&self) -> std::fs::File {
        std::fs::OpenOptions::new().read(true).write(true).open(&self.0).unwrap()
    }
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
    fn read_u32(&self, at: u64) -> u32 {
        let mut b = [0u8; 4];
        self.file().read_exact_at(&mut b, at).unwrap();
        u32::from_le_bytes(b)
    }
    fn read_u64(&self, at: u64) -> u64 {
        let mut b = [0u8; 8];
        self.file().read_exact_at(&mut b, at).unwrap();
        u64::from_le_bytes(b)
    }
    fn write_u32(&self, at: u64, v: u32) {
        self.file().write_all_at(&v.to_le_bytes(), at).unwrap();
    }
    /// 8-aligned offsets where the two u32 words `a, b` sit side by side.
    fn find_pair(&self, a: u32, b: u32) -> Vec<u64> {
        let bytes = self.bytes();
        let mut pat = a.to_le_bytes().to_vec();
        pat.extend_from_slice(&b.to_le_bytes());
        (0..bytes.len().saturating_sub(8))
            .step_by(8)
            .filter(|&i| bytes[i..i + 8] == pat[..])
            .map(|i| i as u64)
            .collect()
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A pid that is certainly dead (a child that exited and was reaped).
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

const ACTIVE: u32 = 2;
const CLEANING: u32 = 3;
/// `layout::MAGIC` ("TPC1") and `KIND_QUEUE`.
const MAGIC: u32 = 0x5450_4331;
const KIND_QUEUE: u32 = 2;
/// Offset of `Header::queued` from the header (magic .. type_name .. next_seq).
const QUEUED_AT: u64 = 176;

/// members.rs:223-230 with subscriber.rs (no recovery from CLEANING): a
/// cleaner SIGKILLed inside `clean_subscriber` (after its CAS to CLEANING,
/// before `state = FREE`) leaves the slot CLEANING with a dead pid forever:
/// `clean_subscriber` returns early on CLEANING, nobody else resets it, the
/// slot counts as used and new subscribers get `TooMany("subscribers")`.
#[test]
fn review_a_cleaner_killed_mid_clean_never_leaves_a_slot_stuck_in_cleaning() {
    let _w = watchdog("review cleaning stuck", LIMIT);
    let name = unique("cleaning");
    let file = ShmFile::new("topic", &name);
    let topic = Topic::<u64>::builder(&name).max_subscribers(1).segment_size(4 << 20).open_or_create().unwrap();
    let sub = topic.subscriber().unwrap();
    let me = std::process::id();
    let at = file.find_pair(me, ACTIVE);
    assert_eq!(at.len(), 1, "the subscriber slot (pid, ACTIVE) should be found once");
    let at = at[0];
    drop(sub);
    assert_eq!(file.read_u32(at), 0, "the slot is free after the drop");
    // What a cleaner killed mid-clean of a dead subscriber leaves behind.
    file.write_u32(at, dead_pid());
    file.write_u32(at + 4, CLEANING);
    let until = Instant::now() + Duration::from_secs(3);
    let mut last = None;
    while Instant::now() < until {
        match topic.subscriber() {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the slot of a dead process stayed CLEANING: subscriber() kept failing with {last:?}");
}

/// queue.rs:288-312 with members.rs:260-266: a consumer SIGKILLed after
/// its pop recorded the item in `held` and before `queued.fetch_sub` (the
/// slot release, the claim clear and a futex wake lie in between) leaves
/// `queued` counting the item; the cleaner requeues the held item and adds
/// one more. The count then stays one too high for good: a unit of
/// capacity is lost per such kill, and a queue of capacity 1 refuses every
/// push from then on while empty.
#[test]
fn review_a_consumer_killed_right_after_its_pop_does_not_leak_queue_capacity() {
    let _w = watchdog("review queued leak", LIMIT);
    let name = unique("queued");
    let file = ShmFile::new("queue", &name);
    let q = Queue::<u64>::builder(&name).capacity(1).segment_size(4 << 20).open_or_create().unwrap();
    q.push(&7).unwrap();
    let item = q.pop().unwrap();
    assert_eq!(*item, 7);
    let me = std::process::id();
    let slot = file.find_pair(me, ACTIVE);
    assert_eq!(slot.len(), 1, "the consumer slot (pid, ACTIVE) should be found once");
    let header = file.find_pair(MAGIC, KIND_QUEUE);
    assert_eq!(header.len(), 1, "the queue header should be found once");
    let queued = header[0] + QUEUED_AT;
    assert_eq!(file.read_u64(queued), 0, "layout check: `queued` is 0 after the pop");
    // The consumer dies holding the item. (Its pop counts the item out of
    // `queued` before it records it as held, so that is the state a kill
    // after the record leaves; one before it leaves the slot claimed, and
    // the cleaner requeues from there.)
    std::mem::forget(item);
    std::mem::forget(q);
    file.write_u32(slot[0], dead_pid());

    let q2 = Queue::<u64>::open(&name).unwrap();
    let again = q2.pop_timeout(Duration::from_secs(5)).expect("the dead consumer's item comes back");
    assert_eq!(*again, 7);
    again.ack();
    assert_eq!(q2.len(), 0, "the queue is empty, yet `queued` still counts an item");
    q2.push_timeout(&8, Duration::from_secs(2)).expect("an empty queue of capacity 1 takes a push");
}

/// queue.rs:237-254: `producer_slot` / `consumer_slot` claim a shared slot
/// before `OnceLock::get_or_init`; threads racing on the first push or pop
/// of one `Queue` each claim a slot and all but one are never given back
/// (pid alive, state ACTIVE: `reap` never takes them). Repeat and the
/// tables fill: `TooMany("consumers")` / `TooMany("producers")` while no
/// queue handle is open.
#[test]
fn review_racing_first_pops_and_pushes_leak_no_slots() {
    let _w = watchdog("review slot race", LIMIT);
    let name = unique("slots");
    let file = ShmFile::new("queue", &name);
    let keep = Queue::<u64>::builder(&name).capacity(1 << 16).segment_size(16 << 20).open_or_create().unwrap();
    const THREADS: usize = 4;
    for _ in 0..300 {
        let q = Arc::new(Queue::<u64>::open(&name).unwrap());
        let b = Arc::new(Barrier::new(THREADS));
        let hs: Vec<_> = (0..THREADS)
            .map(|i| {
                let (q, b) = (Arc::clone(&q), Arc::clone(&b));
                std::thread::spawn(move || {
                    b.wait();
                    if i % 2 == 0 {
                        let _ = q.try_pop().map(|it| it.ack());
                    } else {
                        let _ = q.push(&1);
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        drop(q);
    }
    // Every handle above is gone: no consumer slot may still be ours.
    let leaked = file.find_pair(std::process::id(), ACTIVE).len();
    assert_eq!(leaked, 0, "{leaked} consumer slots are still ACTIVE for this process with no queue handle using them");
    // And the tables must have room.
    let fresh = Queue::<u64>::open(&name).unwrap();
    match fresh.push(&1) {
        Err(TopicError::TooMany(w)) => panic!("producer slots leaked: TooMany({w})"),
        r => r.unwrap(),
    }
    match fresh.try_pop() {
        Err(TopicError::TooMany(w)) => panic!("consumer slots leaked: TooMany({w})"),
        r => drop(r),
    }
    drop(keep);
}

/// queue.rs:193-197 (and members.rs:295): a push that reserved a place
/// and then failed gives the place back with `queued.fetch_sub` but does
/// not notify the ring's `writable` event, on which blocked pushers sleep
/// (a futex wait with no periodic re-check): a pusher that went to sleep
/// while the failing push held the last place sleeps until its deadline
/// (or forever, with `push`), although the queue is empty.
#[test]
fn review_a_failed_push_wakes_a_pusher_waiting_for_its_place() {
    let _w = watchdog("review failed push wake", LIMIT);
    let name = unique("wake");
    let _file = ShmFile::new("queue", &name);
    // A 1 MiB segment: the big value below cannot be stored, but finding
    // its length takes a while (the place is held meanwhile).
    let q = Arc::new(Queue::<Vec<String>>::builder(&name).capacity(1).segment_size(1 << 20).open_or_create().unwrap());
    let big: Vec<String> = (0..2_000_000).map(|i| format!("{i:0>24}")).collect();
    let q1 = Arc::clone(&q);
    let failing = std::thread::spawn(move || q1.push(&big));
    // The big push holds the only place (nothing is in the ring yet).
    while q.is_empty() {
        std::hint::spin_loop();
    }
    // `push`, no deadline: it must be woken (a timed push would only find
    // the room at its deadline's last look).
    let (tx, rx) = std::sync::mpsc::channel();
    let q2 = Arc::clone(&q);
    std::thread::spawn(move || {
        let _ = tx.send(q2.push(&Vec::new()));
    });
    let failed = failing.join().unwrap();
    assert!(matches!(failed, Err(TopicError::Encode(_))), "the big push cannot fit: {failed:?}");
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(r) => r.unwrap(),
        Err(_) => panic!("the queue has been empty for 20 s and the blocked push never woke"),
    }
    assert_eq!(q.len(), 1, "the failed push gave its place back, and the woken one took it");
}

/// publisher.rs:138: the error says "at most 4" loans while `MAX_LOANS`
/// is 16 (and queue.rs:211 says 4 concurrent pushes): a misleading limit.
#[test]
fn review_the_loan_limit_message_names_the_real_limit() {
    let name = unique("loans");
    let _file = ShmFile::new("topic", &name);
    let topic = Topic::<Bytes>::builder(&name).segment_size(4 << 20).open_or_create().unwrap();
    let p = topic.publisher().unwrap();
    let loans: Vec<_> = (0..shmpool::topic::MAX_LOANS).map(|_| p.loan(8).unwrap()).collect();
    match p.loan(8) {
        Err(TopicError::TooMany(what)) => {
            assert!(what.contains(&shmpool::topic::MAX_LOANS.to_string()), "message {what:?} names another limit")
        }
        other => panic!("expected TooMany, got {other:?}"),
    }
    drop(loans);
}
