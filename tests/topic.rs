//! Topics and queues between real separate processes: this test binary runs
//! itself again in a role (`common/procs.rs`), opens the topic or queue by
//! name like any other program would, and reports what it saw in marked
//! lines. Every wait is bounded and every test has a watchdog; every test
//! checks that its `/dev/shm` names are gone at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmpool::topic::{Bytes, Overflow, Queue, Topic, TopicError};
use shmpool::Segment;

#[path = "common/procs.rs"]
mod procs;
#[path = "common/watchdog.rs"]
mod watchdog;
use procs::{hear, say, Proc};
use watchdog::watchdog;

/// A hang guard per test (never a performance bound).
const LIMIT: Duration = Duration::from_secs(60);
/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(20);

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
struct Reading {
    seq: u64,
    sensor: u32,
    celsius: f32,
    note: String,
}

fn reading(seq: u64) -> Reading {
    // Notes of varying length, so samples are of several sizes.
    let note = format!("reading {seq} {}", "x".repeat((seq % 97) as usize * 3));
    Reading { seq, sensor: (seq % 7) as u32, celsius: seq as f32 / 4.0, note }
}

/// Checks a received reading is `reading(seq)`, field by field.
fn check_reading(r: &ArchivedReading, seq: u64) {
    let want = reading(seq);
    assert_eq!(r.seq.to_native(), seq, "readings out of order");
    assert_eq!(r.sensor.to_native(), want.sensor);
    assert_eq!(r.celsius.to_native(), want.celsius);
    assert_eq!(r.note.as_str(), want.note);
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
struct Job {
    id: u64,
    payload: Vec<u8>,
}

/// The job that tells a consumer to stop.
const STOP: u64 = u64::MAX;

fn job(id: u64) -> Job {
    Job { id, payload: (0..(id % 50) as u8).collect() }
}

/// Byte `j` of raw sample `i`.
fn pattern(i: usize, j: usize) -> u8 {
    ((i * 31 + j * 7) % 251) as u8
}

/// A name no other test (or test run) uses.
fn unique(tag: &str) -> String {
    format!("tt-{}-{tag}", std::process::id())
}

/// A topic's or queue's file in `/dev/shm`: `assert_gone` checks the last
/// member removed it; if the test fails first, the drop removes it.
struct ShmName(String, bool);

impl ShmName {
    fn topic(name: &str) -> ShmName {
        ShmName(format!("/dev/shm/shmpool.topic.{name}"), true)
    }

    fn queue(name: &str) -> ShmName {
        ShmName(format!("/dev/shm/shmpool.queue.{name}"), true)
    }

    fn assert_gone(mut self) {
        self.1 = false;
        assert!(!std::path::Path::new(&self.0).exists(), "{} is left in /dev/shm", self.0);
    }
}

impl Drop for ShmName {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Sizes as a child's argument: "a,b,c" or "size*count".
fn parse_sizes(s: &str) -> Vec<usize> {
    match s.split_once('*') {
        Some((size, n)) => vec![size.parse().unwrap(); n.parse().unwrap()],
        None => s.split(',').filter(|x| !x.is_empty()).map(|x| x.parse().unwrap()).collect(),
    }
}

fn variant(e: &TopicError) -> &'static str {
    match e {
        TopicError::NotFound(_) => "NotFound",
        TopicError::TypeMismatch { .. } => "TypeMismatch",
        TopicError::WrongKind(_) => "WrongKind",
        TopicError::Full => "Full",
        TopicError::Timeout => "Timeout",
        TopicError::TooMany(_) => "TooMany",
        TopicError::Encode(_) => "Encode",
        TopicError::Invalid(_) => "Invalid",
        TopicError::Corrupt(_) => "Corrupt",
        TopicError::Config(_) => "Config",
        TopicError::Segment(_) => "Segment",
        _ => "other",
    }
}

fn outcome<T>(r: Result<T, TopicError>) -> String {
    match r {
        Ok(_) => "Ok".to_owned(),
        Err(e) => variant(&e).to_owned(),
    }
}

// ---------------------------------------------------------------- children

/// Runs a child's role when this binary was started as one (a no-op test
/// otherwise).
#[test]
fn child_role() {
    let Some((role, args)) = procs::role() else { return };
    let _w = watchdog("a child role", LIMIT);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match role.as_str() {
        "sub" => role_sub(a[0], a[1].parse().unwrap()),
        "drop_sub" => role_drop_sub(a[0]),
        "jitter_sub" => role_jitter_sub(a[0], a[1].parse().unwrap()),
        "holder" => role_holder(a[0], a[1].parse().unwrap()),
        "bytes_sub" => role_bytes_sub(a[0], &parse_sizes(a[1])),
        "history_sub" => role_history_sub(a[0], a[1].parse().unwrap()),
        "open_wrong" => role_open_wrong(a[0]),
        "consumer" => role_consumer(a[0], a[1].parse().unwrap(), a[2].parse().unwrap(), a.get(3).is_some()),
        "publisher" => role_publisher(a[0], a[1].parse().unwrap()),
        "pusher" => role_pusher(a[0], a[1].parse().unwrap()),
        other => panic!("unknown role {other}"),
    }
}

/// Receives `n` readings, each in order.
fn role_sub(name: &str, n: u64) {
    let topic = Topic::<Reading>::open(name).unwrap();
    let sub = topic.subscriber().unwrap();
    say("READY");
    for i in 0..n {
        let s = sub.recv_timeout(WAIT).unwrap_or_else(|e| panic!("reading {i}: {e}"));
        check_reading(&s, i);
    }
    assert_eq!(sub.missed(), 0);
    assert!(matches!(sub.try_recv(), Err(TopicError::Timeout)), "a reading beyond the last");
    say(&format!("DONE {n}"));
}

/// Subscribes (the topic's policy), waits for "go", then takes what is queued.
fn role_drop_sub(name: &str) {
    let topic = Topic::<u64>::open(name).unwrap();
    let sub = topic.subscriber().unwrap();
    say("READY");
    assert_eq!(hear(WAIT).as_deref(), Some("go"));
    let mut got = Vec::new();
    loop {
        match sub.try_recv() {
            Ok(s) => got.push(s.to_native()),
            Err(TopicError::Timeout) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(got.len() <= 1 << 16, "endless queue");
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    let list: Vec<String> = got.iter().map(u64::to_string).collect();
    say(&format!("DONE {} {}", sub.missed(), list.join(",")));
}

/// Receives until the last of `n`, slowly now and then; in order.
fn role_jitter_sub(name: &str, n: u64) {
    let topic = Topic::<u64>::open(name).unwrap();
    let sub = topic.subscriber_with(Overflow::DropOldest).unwrap();
    say("READY");
    let (mut received, mut last) = (0u64, None::<u64>);
    while last != Some(n - 1) {
        let v = sub.recv_timeout(WAIT).unwrap().to_native();
        assert!(last.is_none_or(|l| v > l), "{v} after {last:?}");
        last = Some(v);
        received += 1;
        if received % 64 == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    say(&format!("DONE {received} {}", sub.missed()));
}

/// Receives `k` raw samples and holds them until killed.
fn role_holder(name: &str, k: usize) {
    let topic = Topic::<Bytes>::open(name).unwrap();
    let sub = topic.subscriber().unwrap();
    say("READY");
    let held: Vec<_> = (0..k).map(|_| sub.recv_timeout(WAIT).unwrap()).collect();
    say("HELD");
    std::thread::sleep(WAIT);
    drop(held);
    panic!("the holder was not killed");
}

/// Receives raw samples of `sizes`, checking every byte.
fn role_bytes_sub(name: &str, sizes: &[usize]) {
    let topic = Topic::<Bytes>::open(name).unwrap();
    let sub = topic.subscriber().unwrap();
    say("READY");
    for (i, &len) in sizes.iter().enumerate() {
        let s = sub.recv_timeout(WAIT).unwrap_or_else(|e| panic!("sample {i}: {e}"));
        assert_eq!(s.len(), len, "sample {i}'s length");
        if let Some(j) = (0..len).find(|&j| s[j] != pattern(i, j)) {
            panic!("sample {i} (of {len} bytes) differs at byte {j}");
        }
    }
    assert_eq!(sub.missed(), 0);
    say(&format!("DONE {}", sizes.len()));
}

/// Joins late: reports the history it got, then receives `n` more.
fn role_history_sub(name: &str, n: usize) {
    let topic = Topic::<Reading>::open(name).unwrap();
    let sub = topic.subscriber().unwrap();
    let mut hist = Vec::new();
    while let Ok(s) = sub.try_recv() {
        hist.push(s.seq.to_native().to_string());
        assert!(hist.len() < 10_000);
    }
    say(&format!("HIST {}", hist.join(",")));
    say("READY");
    let more: Vec<String> = (0..n).map(|_| sub.recv_timeout(WAIT).unwrap().seq.to_native().to_string()).collect();
    say(&format!("DONE {}", more.join(",")));
}

/// Opens a topic of `Reading`s in wrong ways, and once rightly.
fn role_open_wrong(name: &str) {
    say(&format!("u64 {}", outcome(Topic::<u64>::open(name))));
    say(&format!("bytes {}", outcome(Topic::<Bytes>::open(name))));
    say(&format!("renamed {}", outcome(Topic::<Reading>::builder(name).type_name("Reading").open())));
    say(&format!("queue {}", outcome(Queue::<Reading>::open(name))));
    say(&format!("right {}", outcome(Topic::<Reading>::open(name).and_then(|t| t.subscriber()))));
}

/// Pops jobs, acking each (says "ACK id"), until a `STOP`. With
/// `hold_after > 0`, after that many acks it takes `hold` more, keeps them
/// unacked, says "HOLDING ids" and waits to be killed.
fn role_consumer(name: &str, hold_after: usize, hold: usize, wait_for_go: bool) {
    let queue = Queue::<Job>::open(name).unwrap();
    say("READY");
    if wait_for_go {
        assert_eq!(hear(WAIT).as_deref(), Some("go"));
    }
    let mut acked = 0;
    loop {
        let item = queue.pop_timeout(WAIT).unwrap();
        let id = item.id.to_native();
        if id == STOP {
            item.ack();
            say("BYE");
            return;
        }
        assert_eq!(item.payload.as_slice(), job(id).payload.as_slice(), "job {id}'s payload");
        if hold_after > 0 && acked == hold_after {
            let mut held = vec![item];
            while held.len() < hold {
                held.push(queue.pop_timeout(WAIT).unwrap());
            }
            let ids: Vec<String> = held.iter().map(|i| i.id.to_native().to_string()).collect();
            say(&format!("HOLDING {}", ids.join(",")));
            std::thread::sleep(WAIT);
            panic!("the consumer was not killed");
        }
        item.ack();
        acked += 1;
        say(&format!("ACK {id}"));
    }
}

/// Sends 0..n to the topic once it has a subscriber.
fn role_publisher(name: &str, n: u64) {
    let topic = Topic::<u64>::open(name).unwrap();
    let publisher = topic.publisher().unwrap();
    let until = Instant::now() + WAIT;
    while topic.subscriber_count() == 0 {
        assert!(Instant::now() < until, "no subscriber came");
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in 0..n {
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(publisher.send_timeout(&i, WAIT).unwrap(), 1);
    }
    say("SENT");
}

/// Pushes 0..n to the queue.
fn role_pusher(name: &str, n: u64) {
    let queue = Queue::<u64>::open(name).unwrap();
    for i in 0..n {
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        queue.push_timeout(&i, WAIT).unwrap();
    }
    say("PUSHED");
}

// ---------------------------------------------------------------- tests

#[test]
fn block_one_publisher_four_subscriber_processes_get_every_message_in_order() {
    const N: u64 = 3000;
    let _w = watchdog("block: 1 publisher, 4 subscriber processes", LIMIT);
    let name = unique("block4");
    let shm = ShmName::topic(&name);
    {
        let topic = Topic::<Reading>::builder(&name)
            .max_subscribers(8)
            .depth(8)
            .overflow(Overflow::Block)
            .open_or_create()
            .unwrap();
        let mut subs: Vec<Proc> = (0..4).map(|_| Proc::spawn("sub", &[&name, &N.to_string()])).collect();
        for s in &subs {
            s.expect("READY", WAIT);
        }
        assert_eq!(topic.subscriber_count(), 4);
        let publisher = topic.publisher().unwrap();
        for i in 0..N {
            let reached = publisher.send_timeout(&reading(i), WAIT).unwrap_or_else(|e| panic!("send {i}: {e}"));
            assert_eq!(reached, 4, "reading {i} reached {reached} subscribers");
        }
        for s in &mut subs {
            assert_eq!(s.expect("DONE", WAIT), N.to_string());
            s.wait_ok(WAIT);
        }
    }
    shm.assert_gone();
}

#[test]
fn drop_oldest_counts_exactly_what_was_lost() {
    const N: u64 = 1000;
    let _w = watchdog("drop oldest, a subscriber that reads after the sends", LIMIT);
    let name = unique("dropoldest");
    let shm = ShmName::topic(&name);
    {
        let topic = Topic::<u64>::builder(&name).depth(4).overflow(Overflow::DropOldest).open_or_create().unwrap();
        let mut sub = Proc::spawn("drop_sub", &[&name]);
        sub.expect("READY", WAIT);
        let publisher = topic.publisher().unwrap();
        for i in 0..N {
            assert_eq!(publisher.try_send(&i).unwrap(), 1, "a DropOldest subscriber never refuses");
        }
        sub.tell("go");
        let done = sub.expect("DONE", WAIT);
        let (missed, got) = done.split_once(' ').unwrap();
        let got: Vec<u64> = got.split(',').map(|x| x.parse().unwrap()).collect();
        assert_eq!(got, vec![N - 4, N - 3, N - 2, N - 1], "the newest `depth` samples stay");
        assert_eq!(missed.parse::<u64>().unwrap(), N - 4, "missed counts every dropped sample");
        sub.wait_ok(WAIT);
    }
    shm.assert_gone();
}

#[test]
fn drop_oldest_counts_exactly_what_was_lost_while_reading() {
    const N: u64 = 60_000;
    let _w = watchdog("drop oldest, a subscriber that reads while sends go on", LIMIT);
    let name = unique("dropjitter");
    let shm = ShmName::topic(&name);
    {
        let topic = Topic::<u64>::builder(&name).depth(4).open_or_create().unwrap();
        // Three at once: three chances to race with the publisher.
        let mut subs: Vec<Proc> = (0..3).map(|_| Proc::spawn("jitter_sub", &[&name, &N.to_string()])).collect();
        for sub in &subs {
            sub.expect("READY", WAIT);
        }
        let publisher = topic.publisher().unwrap();
        for i in 0..N {
            // Normally all three; a subscriber preempted mid-pop for longer
            // than the publisher's drop tries loses this sample (counted in
            // its `missed`, checked below), as documented.
            let reached = publisher.try_send(&i).unwrap();
            assert!((1..=3).contains(&reached), "sample {i} reached {reached} of 3");
        }
        for sub in &mut subs {
            let done = sub.expect("DONE", WAIT);
            let (received, missed) = done.split_once(' ').unwrap();
            let (received, missed): (u64, u64) = (received.parse().unwrap(), missed.parse().unwrap());
            assert_eq!(received + missed, N, "received {received} + missed {missed} != sent {N}");
            sub.wait_ok(WAIT);
        }
    }
    shm.assert_gone();
}

#[test]
fn a_killed_subscriber_never_blocks_the_publisher_and_its_samples_are_freed() {
    // Large samples (over the arena's 64 KiB small-block limit): a freed one
    // is counted in `available()` again, so a leak shows.
    const SIZE: usize = 100_000;
    const TOTAL: usize = 40;
    let _w = watchdog("a subscriber killed while holding samples", LIMIT);
    let name = unique("killsub");
    let shm = ShmName::topic(&name);
    {
        let topic = Topic::<Bytes>::builder(&name)
            .max_subscribers(4)
            .depth(4)
            .overflow(Overflow::Block)
            .open_or_create()
            .unwrap();
        let seg = Segment::open(&format!("topic.{name}")).unwrap();
        let mut holder = Proc::spawn("holder", &[&name, "3"]);
        let mut reader = Proc::spawn("bytes_sub", &[&name, &format!("{SIZE}*{TOTAL}")]);
        holder.expect("READY", WAIT);
        reader.expect("READY", WAIT);
        let start = seg.available();
        let publisher = topic.publisher().unwrap();
        let send = |i: usize| {
            let mut loan = publisher.loan(SIZE).unwrap();
            for (j, b) in loan.iter_mut().enumerate() {
                *b = pattern(i, j);
            }
            loan.send_timeout(WAIT).unwrap_or_else(|e| panic!("sample {i}: {e}"))
        };
        // 3 held by the holder, 4 more fill its queue.
        for i in 0..7 {
            assert_eq!(send(i), 2);
        }
        holder.expect("HELD", WAIT);
        let holder_pid = holder.pid();
        // The next send blocks on the holder's full queue until it dies.
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            holder.kill();
        });
        assert_eq!(send(7), 1, "the sample blocked on the dead subscriber reaches the live one");
        for i in 8..TOTAL {
            assert_eq!(send(i), 1, "sample {i}");
        }
        killer.join().unwrap();
        assert_eq!(reader.expect("DONE", WAIT), TOTAL.to_string());
        reader.wait_ok(WAIT);
        assert_eq!(topic.subscriber_count(), 0, "the dead subscriber's slot (pid {holder_pid}) is free");
        assert_eq!(seg.available(), start, "every sample is freed, the dead subscriber's too");

        // Killed while holding samples, with the publisher not waiting on it:
        // the next member to join reclaims them.
        let mut holder = Proc::spawn("holder", &[&name, "2"]);
        holder.expect("READY", WAIT);
        for i in 0..3 {
            assert_eq!(send(i), 1);
        }
        holder.expect("HELD", WAIT);
        holder.kill();
        assert_ne!(seg.available(), start, "the dead subscriber still holds samples");
        let sub = topic.subscriber().unwrap();
        assert_eq!(topic.subscriber_count(), 1, "only the new subscriber");
        assert_eq!(seg.available(), start, "the dead subscriber's samples are freed when a member joins");
        drop(sub);
    }
    shm.assert_gone();
}

#[test]
fn a_late_joiner_gets_exactly_the_history() {
    let _w = watchdog("late joiner", LIMIT);
    let name = unique("history");
    let shm = ShmName::topic(&name);
    {
        // 5: not a power of two (the history ring's size is rounded up).
        let topic = Topic::<Reading>::builder(&name).history(5).open_or_create().unwrap();
        let publisher = topic.publisher().unwrap();
        for i in 0..20 {
            assert_eq!(publisher.send(&reading(i)).unwrap(), 0, "nobody subscribed yet");
        }
        let mut sub = Proc::spawn("history_sub", &[&name, "4"]);
        assert_eq!(sub.expect("HIST", WAIT), "15,16,17,18,19", "the last 5 samples");
        sub.expect("READY", WAIT);
        for i in 20..24 {
            assert_eq!(publisher.send(&reading(i)).unwrap(), 1);
        }
        assert_eq!(sub.expect("DONE", WAIT), "20,21,22,23");
        sub.wait_ok(WAIT);

        // Fewer sent than the history keeps: all of them, once.
        let few = unique("history-few");
        let shm_few = ShmName::topic(&few);
        let topic = Topic::<u64>::builder(&few).history(8).open_or_create().unwrap();
        let publisher = topic.publisher().unwrap();
        for i in 0..3u64 {
            publisher.send(&i).unwrap();
        }
        let sub = topic.subscriber().unwrap();
        let got: Vec<u64> = std::iter::from_fn(|| sub.try_recv().ok().map(|s| s.to_native())).take(100).collect();
        assert_eq!(got, [0, 1, 2]);
        drop((sub, publisher, topic));
        shm_few.assert_gone();
    }
    shm.assert_gone();
}

#[test]
fn another_type_is_refused() {
    let _w = watchdog("type mismatch", LIMIT);
    let name = unique("types");
    let shm = ShmName::topic(&name);
    {
        let _topic = Topic::<Reading>::builder(&name).open_or_create().unwrap();
        let mut child = Proc::spawn("open_wrong", &[&name]);
        assert_eq!(child.expect("u64", WAIT), "TypeMismatch");
        assert_eq!(child.expect("bytes", WAIT), "TypeMismatch");
        assert_eq!(child.expect("renamed", WAIT), "TypeMismatch", "another type name, same layout");
        // A topic opened as a queue is the wrong kind of object.
        assert_eq!(child.expect("queue", WAIT), "WrongKind");
        assert_eq!(child.expect("right", WAIT), "Ok");
        child.wait_ok(WAIT);

        // The error says both types.
        match Topic::<u64>::open(&name) {
            Err(TopicError::TypeMismatch { expected, found }) => {
                assert!(expected.contains("Reading"), "{expected}");
                assert!(found.contains("u64"), "{found}");
            }
            other => panic!("{other:?}"),
        }
    }
    shm.assert_gone();

    // An explicit type name: any type with the same archived layout agrees;
    // another layout does not.
    let name = unique("typename");
    let shm = ShmName::queue(&name);
    {
        let q = Queue::<u64>::builder(&name).type_name("counter").open_or_create().unwrap();
        let same = Queue::<i64>::builder(&name).type_name("counter").open().unwrap();
        q.push(&7).unwrap();
        assert_eq!(same.pop_timeout(WAIT).unwrap().to_native(), 7);
        let err = Queue::<u32>::builder(&name).type_name("counter").open().unwrap_err();
        assert!(matches!(err, TopicError::TypeMismatch { .. }), "{err:?}");
        let err = Queue::<u64>::open(&name).unwrap_err();
        assert!(matches!(err, TopicError::TypeMismatch { .. }), "the default name is not \"counter\": {err:?}");
    }
    shm.assert_gone();
}

#[test]
fn a_segment_of_the_other_kind_is_wrong_kind() {
    // Topics and queues live under names of their own, so the only way to
    // meet the other kind is a file under the wrong name: a hard link here.
    let _w = watchdog("wrong kind", LIMIT);
    let name = unique("kind");
    let shm = ShmName::topic(&name);
    let link = ShmName::queue(&name);
    {
        let _topic = Topic::<u64>::builder(&name).open_or_create().unwrap();
        std::fs::hard_link(&shm.0, &link.0).unwrap();
        let err = Queue::<u64>::open(&name).unwrap_err();
        assert!(matches!(err, TopicError::WrongKind(_)), "{err:?}");
        let err = Queue::<u64>::builder(&name).open_or_create().unwrap_err();
        assert!(matches!(err, TopicError::WrongKind(_)), "{err:?}");
        std::fs::remove_file(&link.0).unwrap();
    }
    link.assert_gone();
    shm.assert_gone();
}

#[test]
fn a_topic_opened_as_a_queue_is_wrong_kind() {
    let name = unique("kind2");
    let shm = ShmName::topic(&name);
    {
        let _topic = Topic::<u64>::builder(&name).open_or_create().unwrap();
        let err = Queue::<u64>::open(&name).unwrap_err();
        assert!(matches!(err, TopicError::WrongKind(_)), "{err:?}");
    }
    shm.assert_gone();
}

#[test]
fn names_as_in_the_issue_shape_work() {
    let _w = watchdog("names with slashes", LIMIT);
    let name = format!("tt-{}/plant/temps", std::process::id());
    let r = Topic::<u64>::builder(&name).open_or_create();
    let path = format!("/dev/shm/shmpool.topic.{name}");
    assert!(r.is_ok(), "{name:?}: {:?}", r.err());
    drop(r);
    assert!(!std::path::Path::new(&path).exists());
}

#[test]
fn a_queue_with_three_consumer_processes_loses_nothing_when_one_is_killed() {
    const N: u64 = 3000;
    const HOLD: usize = 3;
    let _w = watchdog("queue, 3 consumer processes, one killed", LIMIT);
    let name = unique("queue3");
    let shm = ShmName::queue(&name);
    {
        let queue = Queue::<Job>::builder(&name).capacity(64).open_or_create().unwrap();
        let (tx, rx) = mpsc::channel();
        let mut victim = Proc::spawn_into("consumer", &[&name, "10", &HOLD.to_string()], 0, tx.clone());
        // The survivors start once the victim holds its jobs: on a loaded
        // machine they could otherwise take every job before it gets any.
        let mut survivors: Vec<Proc> =
            (1..3).map(|id| Proc::spawn_into("consumer", &[&name, "0", "0", "go"], id, tx.clone())).collect();
        drop(tx);
        let next = |what: &str| -> (usize, String) {
            rx.recv_timeout(WAIT).unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
        };
        for _ in 0..3 {
            let (id, line) = next("READY");
            assert_eq!(line, "READY", "child {id}");
        }
        let mut acks: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let mut held = Vec::new();
        std::thread::scope(|s| {
            let pusher = s.spawn(|| {
                for i in 0..N {
                    queue.push_timeout(&job(i), WAIT).unwrap_or_else(|e| panic!("push {i}: {e}"));
                }
            });
            let until = Instant::now() + WAIT;
            while acks.len() < N as usize {
                assert!(Instant::now() < until, "{} of {N} jobs acked, held: {held:?}", acks.len());
                let (id, line) = next("ACK");
                if let Some(ids) = line.strip_prefix("HOLDING ") {
                    assert_eq!(id, 0);
                    held = ids.split(',').map(|x| x.parse::<u64>().unwrap()).collect();
                    victim.kill();
                    for s in survivors.iter_mut() {
                        s.tell("go");
                    }
                } else {
                    let job: u64 = line.strip_prefix("ACK ").unwrap_or_else(|| panic!("{line}")).parse().unwrap();
                    acks.entry(job).or_default().push(id);
                }
            }
            pusher.join().unwrap();
        });
        assert_eq!(held.len(), HOLD, "the victim held jobs when it was killed");
        for _ in 0..2 {
            queue.push_timeout(&job(STOP), WAIT).unwrap();
        }
        for _ in 0..2 {
            let (id, line) = next("BYE");
            assert_eq!(line, "BYE", "child {id}");
        }
        for s in &mut survivors {
            s.wait_ok(WAIT);
        }
        let ids: BTreeSet<u64> = acks.keys().copied().collect();
        assert_eq!(ids, (0..N).collect::<BTreeSet<_>>(), "every job processed");
        for h in &held {
            assert!(acks[h].iter().all(|&by| by != 0), "held job {h} acked by the victim?");
        }
        let twice: Vec<_> = acks.iter().filter(|(_, by)| by.len() > 1).collect();
        assert!(twice.is_empty(), "acked more than once (the victim died idle): {twice:?}");
        assert!(queue.is_empty());
    }
    shm.assert_gone();
}

#[test]
fn bytes_loans_cross_processes_intact() {
    let _w = watchdog("raw loans", LIMIT);
    let name = unique("bytes");
    let shm = ShmName::topic(&name);
    let sizes = [0usize, 1, 15, 16, 17, 100, 4096, 65_535, 65_536, 100_000, 1 << 20, 3 * 1920 * 1080];
    {
        let topic = Topic::<Bytes>::builder(&name).depth(2).open_or_create().unwrap();
        let list: Vec<String> = sizes.iter().map(usize::to_string).collect();
        let mut sub = Proc::spawn("bytes_sub", &[&name, &list.join(",")]);
        sub.expect("READY", WAIT);
        let publisher = topic.publisher().unwrap();
        for (i, &len) in sizes.iter().enumerate() {
            let mut loan = publisher.loan(len).unwrap();
            assert_eq!(loan.len(), len);
            for (j, b) in loan.iter_mut().enumerate() {
                *b = pattern(i, j);
            }
            assert_eq!(loan.send_timeout(WAIT).unwrap(), 1, "sample {i}");
        }
        assert_eq!(sub.expect("DONE", WAIT), sizes.len().to_string());
        sub.wait_ok(WAIT);

        // Sent by `send` (a copy) reads the same.
        let sub = topic.subscriber().unwrap();
        publisher.send(&[1, 2, 3][..]).unwrap();
        assert_eq!(&*sub.recv_timeout(WAIT).unwrap(), &[1, 2, 3]);

        // At most MAX_LOANS loans at once; one dropped unsent is freed.
        let seg = Segment::open(&format!("topic.{name}")).unwrap();
        let start = seg.available();
        let loans: Vec<_> = (0..shmpool::topic::MAX_LOANS).map(|_| publisher.loan(200_000).unwrap()).collect();
        assert!(matches!(publisher.loan(1), Err(TopicError::TooMany(_))));
        assert!(seg.available() < start);
        drop(loans);
        assert_eq!(seg.available(), start, "loans dropped unsent are freed");
        assert!(matches!(sub.try_recv(), Err(TopicError::Timeout)), "a dropped loan is not sent");
    }
    shm.assert_gone();
}

#[test]
fn refuse_returns_full_and_nobody_gets_it() {
    let _w = watchdog("refuse", LIMIT);
    let name = unique("refuse");
    let shm = ShmName::topic(&name);
    {
        let topic = Topic::<u64>::builder(&name).depth(2).overflow(Overflow::Refuse).open_or_create().unwrap();
        let strict = topic.subscriber().unwrap();
        let other = topic.subscriber_with(Overflow::Block).unwrap();
        let publisher = topic.publisher().unwrap();
        assert_eq!(publisher.send(&1).unwrap(), 2);
        assert_eq!(publisher.send(&2).unwrap(), 2);
        assert_eq!(other.recv_timeout(WAIT).unwrap().to_native(), 1);
        assert_eq!(other.recv_timeout(WAIT).unwrap().to_native(), 2);
        // `strict`'s queue is full: refused, for everyone.
        assert_eq!(publisher.send(&3), Err(TopicError::Full));
        assert_eq!(publisher.try_send(&3), Err(TopicError::Full));
        assert!(matches!(other.try_recv(), Err(TopicError::Timeout)), "the other subscriber got a refused sample");
        assert_eq!(strict.pending(), 2);
        // Received and held samples do not count against the depth.
        let held: Vec<_> = (0..2).map(|_| strict.recv_timeout(WAIT).unwrap()).collect();
        assert_eq!(held.iter().map(|s| s.to_native()).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(publisher.send(&4).unwrap(), 2);
        assert_eq!(publisher.send(&5).unwrap(), 2, "the two held samples do not count");
        assert_eq!(publisher.send(&6), Err(TopicError::Full));
        drop(held);
        assert_eq!(publisher.send(&6), Err(TopicError::Full), "dropping held samples makes no queue room");
        let rest: Vec<u64> = std::iter::from_fn(|| strict.try_recv().ok().map(|s| s.to_native())).take(10).collect();
        assert_eq!(rest, [4, 5]);
        let rest: Vec<u64> = std::iter::from_fn(|| other.try_recv().ok().map(|s| s.to_native())).take(10).collect();
        assert_eq!(rest, [4, 5]);
        assert_eq!(strict.missed(), 0);
    }
    shm.assert_gone();
}

#[test]
fn async_recv_and_pop_under_tokio_across_processes() {
    const N: u64 = 200;
    let _w = watchdog("async recv and pop", LIMIT);
    let topic_name = unique("async-topic");
    let queue_name = unique("async-queue");
    let shm_t = ShmName::topic(&topic_name);
    let shm_q = ShmName::queue(&queue_name);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    rt.block_on(async {
        let topic = Topic::<u64>::builder(&topic_name).depth(4).open_or_create().unwrap();
        let queue = Queue::<u64>::builder(&queue_name).capacity(4).open_or_create().unwrap();
        let sub = topic.subscriber().unwrap();
        // Dropping a pending future loses nothing.
        assert!(tokio::time::timeout(Duration::from_millis(20), sub.recv_async()).await.is_err());
        assert!(tokio::time::timeout(Duration::from_millis(20), queue.pop_async()).await.is_err());

        let mut publisher = Proc::spawn("publisher", &[&topic_name, &N.to_string()]);
        let mut pusher = Proc::spawn("pusher", &[&queue_name, &N.to_string()]);
        let (mut next_sample, mut next_item) = (0, 0);
        while next_sample < N || next_item < N {
            tokio::select! {
                s = sub.recv_async(), if next_sample < N => {
                    assert_eq!(s.unwrap().to_native(), next_sample);
                    next_sample += 1;
                }
                i = queue.pop_async(), if next_item < N => {
                    let item = i.unwrap();
                    assert_eq!(item.to_native(), next_item);
                    item.ack();
                    next_item += 1;
                }
                _ = tokio::time::sleep(WAIT) => panic!("stuck at sample {next_sample}, item {next_item}"),
            }
        }
        publisher.expect("SENT", WAIT);
        pusher.expect("PUSHED", WAIT);
        publisher.wait_ok(WAIT);
        pusher.wait_ok(WAIT);

        // push_async waits for room, which a pop on another task makes.
        for i in 0..4u64 {
            queue.try_push(&i).unwrap();
        }
        assert_eq!(queue.try_push(&9), Err(TopicError::Full));
        let (pushed, popped) = tokio::join!(tokio::time::timeout(WAIT, queue.push_async(&4)), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let item = queue.pop_async().await.unwrap();
            let v = item.to_native();
            item.ack();
            v
        });
        pushed.expect("push_async never completed").unwrap();
        assert_eq!(popped, 0);
        for want in 1..5u64 {
            let item = tokio::time::timeout(WAIT, queue.pop_async()).await.unwrap().unwrap();
            assert_eq!(item.to_native(), want);
            item.ack();
        }
        assert!(queue.is_empty());
    });
    drop(rt);
    shm_t.assert_gone();
    shm_q.assert_gone();
}

#[test]
fn an_item_dropped_unacked_goes_back_and_nack_requeues() {
    let _w = watchdog("requeue", LIMIT);
    let name = unique("requeue");
    let shm = ShmName::queue(&name);
    {
        let queue = Queue::<u64>::builder(&name).capacity(2).open_or_create().unwrap();
        queue.push(&1).unwrap();
        queue.push(&2).unwrap();
        assert_eq!(queue.try_push(&3), Err(TopicError::Full));
        assert!(matches!(queue.push_timeout(&3, Duration::from_millis(20)), Err(TopicError::Full)));
        let first = queue.pop_timeout(WAIT).unwrap();
        assert_eq!(first.to_native(), 1);
        drop(first);
        let second = queue.pop_timeout(WAIT).unwrap();
        second.nack();
        let mut got: Vec<u64> = Vec::new();
        while let Ok(item) = queue.try_pop() {
            got.push(item.to_native());
            item.ack();
            assert!(got.len() < 10);
        }
        got.sort_unstable();
        assert_eq!(got, [1, 2], "each item once more after a drop or a nack, then acked");
        assert!(matches!(queue.try_pop(), Err(TopicError::Timeout)));
    }
    shm.assert_gone();
}

#[test]
fn a_stuck_subscriber_times_sends_out_and_a_killed_one_is_passed_over() {
    let _w = watchdog("a subscriber that stops reading", LIMIT);
    let name = unique("stuck");
    let shm = ShmName::topic(&name);
    {
        let topic = Topic::<Bytes>::builder(&name).depth(2).overflow(Overflow::Block).open_or_create().unwrap();
        // Slot order is join order: the live reader is reached first.
        let reader = topic.subscriber().unwrap();
        let mut stuck = Proc::spawn("holder", &[&name, "0"]);
        stuck.expect("READY", WAIT);
        stuck.expect("HELD", WAIT);
        let publisher = topic.publisher().unwrap();
        assert_eq!(publisher.send(&[1][..]).unwrap(), 2);
        assert_eq!(publisher.send(&[2][..]).unwrap(), 2);
        let mut got: Vec<u8> = std::iter::from_fn(|| reader.try_recv().ok().map(|s| s[0])).take(10).collect();
        let t = Instant::now();
        assert_eq!(publisher.send_timeout(&[3][..], Duration::from_millis(100)), Err(TopicError::Timeout));
        assert!(t.elapsed() >= Duration::from_millis(100), "it waited for room");
        got.extend(std::iter::from_fn(|| reader.try_recv().ok().map(|s| s[0])).take(10));
        assert_eq!(got, [1, 2, 3], "a subscriber the timed-out send had reached keeps the sample");
        stuck.kill();
        assert_eq!(publisher.send_timeout(&[4][..], WAIT).unwrap(), 1, "the dead subscriber is passed over");
        assert_eq!(topic.subscriber_count(), 1);
        assert_eq!(reader.try_recv().unwrap()[0], 4);
    }
    shm.assert_gone();
}

#[test]
fn try_send_sends_nothing_when_a_blocking_queue_is_full() {
    let name = unique("trysend");
    let shm = ShmName::topic(&name);
    {
        let topic = Topic::<u64>::builder(&name).depth(2).overflow(Overflow::Block).open_or_create().unwrap();
        let reader = topic.subscriber().unwrap();
        let full = topic.subscriber().unwrap();
        let publisher = topic.publisher().unwrap();
        publisher.send(&1).unwrap();
        publisher.send(&2).unwrap();
        assert_eq!(reader.try_recv().unwrap().to_native(), 1);
        assert_eq!(reader.try_recv().unwrap().to_native(), 2);
        // `full`'s queue is full: try_send "sends only if no queue it would
        // wait for is full".
        assert_eq!(publisher.try_send(&3), Err(TopicError::Timeout));
        assert!(reader.try_recv().is_err(), "try_send reported Timeout but the reader got the sample");
        drop(full);
    }
    shm.assert_gone();
}

#[test]
fn consumer_slots_are_not_leaked_by_a_queue_dropped_before_its_items() {
    let _w = watchdog("consumer slots", LIMIT);
    let name = unique("slots");
    let shm = ShmName::queue(&name);
    {
        let keep = Queue::<u64>::builder(&name).capacity(4).open_or_create().unwrap();
        // More rounds than there are consumer slots.
        for round in 0..(shmpool::topic::MAX_SUBSCRIBERS as u64 + 8) {
            keep.push(&round).unwrap();
            let queue = Queue::<u64>::open(&name).unwrap();
            let item = queue.pop_timeout(WAIT).unwrap_or_else(|e| panic!("round {round}: {e}"));
            drop(queue);
            item.ack();
        }
    }
    shm.assert_gone();
}

#[test]
fn the_name_goes_once_the_last_member_was_killed_and_someone_looks() {
    let _w = watchdog("last member killed", LIMIT);
    let name = unique("lastkilled");
    let shm = ShmName::topic(&name);
    let topic = Topic::<Bytes>::builder(&name).open_or_create().unwrap();
    let mut member = Proc::spawn("holder", &[&name, "0"]);
    member.expect("READY", WAIT);
    drop(topic);
    assert!(std::path::Path::new(&shm.0).exists(), "a member is still there");
    member.kill();
    // Nobody left it, and nobody maps it any more: the next look removes it.
    assert!(matches!(Topic::<Bytes>::open(&name), Err(TopicError::NotFound(_))));
    shm.assert_gone();
}

#[test]
fn send_async_waits_for_room_in_a_block_queue_and_completes_when_it_is_drained() {
    let _w = watchdog("send_async on a full Block queue", LIMIT);
    let name = unique("sendasync");
    let shm = ShmName::topic(&name);
    {
        let topic = Topic::<u64>::builder(&name).depth(2).overflow(Overflow::Block).open_or_create().unwrap();
        let sub = topic.subscriber().unwrap();
        let publisher = topic.publisher().unwrap();
        publisher.send(&1).unwrap();
        publisher.send(&2).unwrap();
        let mut send = Box::pin(publisher.send_async(&3));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(send.as_mut().poll(&mut cx).is_pending(), "the queue is full: the send waits");
        assert_eq!(sub.try_recv().unwrap().to_native(), 1);
        assert!(sub.try_recv().is_ok());
        // Room now: the same future completes, and the sample is sent once.
        let reached = futures::executor::block_on(send).unwrap();
        assert_eq!(reached, 1);
        assert_eq!(sub.try_recv().unwrap().to_native(), 3);
        assert!(matches!(sub.try_recv(), Err(TopicError::Timeout)));
        // A dropped pending send sends nothing.
        publisher.send(&4).unwrap();
        publisher.send(&5).unwrap();
        let mut dropped = Box::pin(publisher.send_async(&6));
        assert!(dropped.as_mut().poll(&mut cx).is_pending());
        drop(dropped);
        let got: Vec<u64> = std::iter::from_fn(|| sub.try_recv().ok().map(|s| s.to_native())).collect();
        assert_eq!(got, vec![4, 5]);
    }
    shm.assert_gone();
}
