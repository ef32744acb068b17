//! Queues across hosts (feature `net`), on loopback: one host serves a
//! queue, another pushes and pops through it. Every item goes to exactly
//! one consumer, local or remote; an item a remote consumer held unacked
//! when it was killed is delivered again; values of every size cross
//! byte for byte; type, secret and timeout failures are typed errors.
#![cfg(feature = "net")]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rkyv::{Archive, Deserialize, Serialize};
use shmpool::net::Session;
use shmpool::topic::{Bytes, Queue, TopicError};

#[path = "common/net.rs"]
mod net;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/watchdog.rs"]
mod watchdog;
use procs::{hear, say, Proc};
use watchdog::watchdog;

const KEY: &[u8] = b"the secret of the queue tests";
const WAIT: Duration = Duration::from_secs(30);

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
struct Job {
    n: u64,
    label: String,
}

/// A serving session and a connected one (two "hosts" in this process).
fn sessions() -> (Session, Session, String) {
    net::pair(KEY)
}

fn name(what: &str) -> String {
    format!("{what}-{}", std::process::id())
}

#[test]
fn child_role() {
    let Some((role, args)) = procs::role() else { return };
    // args: endpoint, queue name
    let net = Session::builder().connect(&args[0]).secret(KEY).open().unwrap();
    let q = Queue::<Job>::builder(&args[1]).network(&net).open_or_create().unwrap();
    match role.as_str() {
        "consumer" => {
            // Pops until told to stop; pushes its own items meanwhile.
            say("READY");
            let n: u64 = hear(WAIT).expect("how many to push").parse().unwrap();
            for i in 0..n {
                q.push(&Job { n: 1_000_000 + i, label: format!("from away {i}") }).unwrap();
            }
            let mut got = Vec::new();
            let until = Instant::now() + WAIT;
            loop {
                assert!(Instant::now() < until, "the consumer never ran dry");
                match q.pop_timeout(Duration::from_millis(500)) {
                    Ok(item) => {
                        let n = item.n.to_native();
                        let label =
                            if n >= 1_000_000 { format!("from away {}", n - 1_000_000) } else { format!("job {n}") };
                        assert_eq!(item.label.as_str(), label);
                        got.push(item.n.to_native());
                        item.ack();
                    }
                    Err(TopicError::Timeout) => break,
                    Err(e) => panic!("pop: {e}"),
                }
            }
            let list: Vec<String> = got.iter().map(u64::to_string).collect();
            say(&format!("GOT {}", list.join(",")));
        }
        "holder" => {
            let item = q.pop_timeout(WAIT).unwrap();
            say(&format!("HOLDING {}", item.n));
            // Killed while it holds the item, never acked.
            std::thread::sleep(WAIT);
            drop(item);
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn every_item_goes_to_exactly_one_consumer_local_or_remote() {
    let _w = watchdog("net: a queue served to another host", Duration::from_secs(120));
    let ep = net::endpoint();
    let net = Session::builder().listen(&ep).secret(KEY).open().unwrap();
    let qname = name("jobs");
    let q = Queue::<Job>::builder(&qname).capacity(4096).serve(&net).open_or_create().unwrap();
    const N: u64 = 600;
    const AWAY: u64 = 150;
    let mut child = Proc::spawn("consumer", &[&ep, &qname]);
    child.expect("READY", WAIT);
    for n in 0..N {
        q.push(&Job { n, label: format!("job {n}") }).unwrap();
    }
    child.tell(&AWAY.to_string());
    // A local consumer competes with the remote one.
    let mut mine = Vec::new();
    let mut theirs_pushed = Vec::new();
    let until = Instant::now() + WAIT;
    while (mine.len() as u64) < N / 3 && Instant::now() < until {
        if let Ok(item) = q.pop_timeout(Duration::from_millis(100)) {
            let n = item.n.to_native();
            if n >= 1_000_000 {
                assert_eq!(item.label.as_str(), format!("from away {}", n - 1_000_000));
                theirs_pushed.push(n);
            } else {
                mine.push(n);
            }
            item.ack();
        }
    }
    let got = child.expect("GOT", WAIT);
    child.wait_ok(WAIT);
    let theirs: Vec<u64> = got.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    // What is left after both stopped: the remote's pushes not yet popped.
    while let Ok(item) = q.try_pop() {
        let n = item.n.to_native();
        assert!(n >= 1_000_000, "item {n} was left behind by both consumers");
        theirs_pushed.push(n);
        item.ack();
    }
    let local: BTreeSet<u64> = mine.iter().copied().collect();
    let remote: BTreeSet<u64> = theirs.iter().filter(|&&n| n < 1_000_000).copied().collect();
    assert_eq!(local.len(), mine.len(), "an item came twice to the local consumer");
    assert!(local.is_disjoint(&remote), "an item went to both consumers");
    let all: BTreeSet<u64> = local.union(&remote).copied().collect();
    assert_eq!(all, (0..N).collect(), "items lost");
    assert!(!remote.is_empty(), "the remote consumer got nothing");
    // Its own pushes reached the serving host, each once (or it popped them).
    let popped_back: Vec<u64> = theirs.iter().filter(|&&n| n >= 1_000_000).copied().collect();
    let mut pushed: Vec<u64> = theirs_pushed.into_iter().chain(popped_back).collect();
    pushed.sort_unstable();
    assert_eq!(pushed, (1_000_000..1_000_000 + AWAY).collect::<Vec<_>>());
}

#[test]
fn a_remote_consumer_killed_holding_an_item_has_it_delivered_again() {
    let _w = watchdog("net: a remote consumer killed with an unacked item", Duration::from_secs(120));
    let ep = net::endpoint();
    let net = Session::builder().listen(&ep).secret(KEY).open().unwrap();
    let qname = name("held");
    let q = Queue::<Job>::builder(&qname).serve(&net).open_or_create().unwrap();
    q.push(&Job { n: 42, label: "job 42".into() }).unwrap();
    let mut child = Proc::spawn("holder", &[&ep, &qname]);
    assert_eq!(child.expect("HOLDING", WAIT), "42");
    assert!(q.try_pop().is_err(), "the held item was also queued");
    child.kill();
    let again = q.pop_timeout(WAIT).expect("the killed consumer's item came back");
    assert_eq!(again.n, 42);
    assert_eq!(again.label.as_str(), "job 42");
    again.ack();
    assert!(matches!(q.pop_timeout(Duration::from_millis(300)), Err(TopicError::Timeout)), "delivered twice");
}

#[test]
fn nack_and_drop_give_a_remote_item_back_and_ack_frees_it() {
    let _w = watchdog("net: nack, drop and ack of remote items", Duration::from_secs(60));
    let (home, away, _) = sessions();
    let qname = name("acks");
    let q = Queue::<Job>::builder(&qname).serve(&home).open_or_create().unwrap();
    let r = Queue::<Job>::builder(&qname).network(&away).open().unwrap();
    r.push(&Job { n: 7, label: "seven".into() }).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(r.len(), 1, "the remote handle's count is the serving host's");
    let first = r.pop_timeout(WAIT).unwrap();
    assert_eq!(first.n, 7);
    let seq = first.seq();
    first.nack();
    let second = r.pop_timeout(WAIT).unwrap();
    assert_eq!((second.n.to_native(), second.seq()), (7, seq), "nacked item not given back");
    drop(second);
    let third = r.pop_timeout(WAIT).unwrap();
    assert_eq!(third.label.as_str(), "seven", "dropped item not given back");
    third.ack();
    assert!(matches!(r.pop_timeout(Duration::from_millis(300)), Err(TopicError::Timeout)));
    assert!(matches!(q.try_pop(), Err(TopicError::Timeout)), "an acked item is still queued");
}

#[test]
fn remote_waits_end_at_their_deadlines_with_typed_errors() {
    let _w = watchdog("net: remote timeouts", Duration::from_secs(60));
    let (home, away, _) = sessions();
    let qname = name("bounds");
    let _q = Queue::<u64>::builder(&qname).capacity(2).serve(&home).open_or_create().unwrap();
    let r = Queue::<u64>::builder(&qname).network(&away).open().unwrap();
    assert!(matches!(r.try_pop(), Err(TopicError::Timeout)));
    assert!(matches!(r.pop_timeout(Duration::from_millis(200)), Err(TopicError::Timeout)));
    r.push(&1).unwrap();
    r.push(&2).unwrap();
    assert!(matches!(r.try_push(&3), Err(TopicError::Full)), "a full queue took a third item");
    assert!(matches!(r.push_timeout(&3, Duration::from_millis(200)), Err(TopicError::Full)));
    let a = r.pop_timeout(WAIT).unwrap();
    a.ack();
    r.push_timeout(&3, WAIT).expect("room after a pop");
    let got: Vec<u64> = (0..2)
        .map(|_| {
            let item = r.pop_timeout(WAIT).unwrap();
            let v = item.to_native();
            item.ack();
            v
        })
        .collect();
    assert_eq!(got, vec![2, 3]);
}

#[test]
fn a_remote_queue_of_another_type_is_refused_at_open() {
    let _w = watchdog("net: type check of a remote queue", Duration::from_secs(60));
    let (home, away, _) = sessions();
    let qname = name("typed");
    let _q = Queue::<u64>::builder(&qname).serve(&home).open_or_create().unwrap();
    match Queue::<Job>::builder(&qname).network(&away).open() {
        Err(TopicError::TypeMismatch { expected, found }) => {
            assert!(expected.contains("u64"), "{expected}");
            assert!(found.contains("Job"), "{found}");
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
}

#[test]
fn a_host_with_another_secret_gets_no_answer() {
    let _w = watchdog("net: a remote queue with another secret", Duration::from_secs(60));
    let ep = net::endpoint();
    let home = Session::builder().listen(&ep).secret(KEY).open().unwrap();
    let qname = name("secret");
    let q = Queue::<u64>::builder(&qname).serve(&home).open_or_create().unwrap();
    q.push(&5).unwrap();
    let other = Session::builder().connect(&ep).secret(b"another secret").open().unwrap();
    match Queue::<u64>::builder(&qname).network(&other).open() {
        Err(TopicError::Network(why)) => assert!(why.contains("answered"), "{why}"),
        other => panic!("expected a Network error, got {other:?}"),
    }
    assert_eq!(q.len(), 1, "the item is still there");
}

#[test]
fn async_push_and_pop_cross_hosts() {
    let _w = watchdog("net: async remote queue", Duration::from_secs(60));
    let (home, away, _) = sessions();
    let qname = name("async");
    let q = Queue::<u64>::builder(&qname).serve(&home).open_or_create().unwrap();
    let r = Queue::<u64>::builder(&qname).network(&away).open().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // A pop parked before anything is queued.
        let pop = r.pop_async();
        let push = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            r.push_async(&99).await
        };
        let (item, pushed) = tokio::join!(pop, push);
        pushed.unwrap();
        let item = item.unwrap();
        assert_eq!(*item, 99);
        item.ack();
    });
    assert!(q.is_empty());
}

/// Sizes from empty through the ring's slot and the arena's size classes
/// to a few MiB.
fn sizes() -> Vec<usize> {
    let mut v = vec![0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256, 257];
    for k in [10usize, 12, 14, 16, 18, 20, 22] {
        v.extend([(1 << k) - 1, 1 << k, (1 << k) + 1]);
    }
    v
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ len) as u8).collect()
}

#[test]
fn values_of_every_size_cross_byte_for_byte() {
    let _w = watchdog("net: remote queue sizes", Duration::from_secs(120));
    let (home, away, _) = sessions();
    let qname = name("sizes");
    let q = Queue::<Bytes>::builder(&qname).segment_size(64 << 20).serve(&home).open_or_create().unwrap();
    let r = Queue::<Bytes>::builder(&qname).network(&away).open().unwrap();
    let msgs = Queue::<Vec<u8>>::builder(&name("sizes-rkyv")).serve(&home).open_or_create().unwrap();
    let rm = Queue::<Vec<u8>>::builder(msgs.name()).network(&away).open().unwrap();
    for len in sizes() {
        let value = pattern(len);
        // Away to home, and home to away; raw bytes and an archive.
        r.push_timeout(&value, WAIT).unwrap_or_else(|e| panic!("push of {len} bytes: {e}"));
        let item = q.pop_timeout(WAIT).unwrap();
        assert_eq!(item.bytes(), &value[..], "{len} bytes, away to home");
        item.ack();
        q.push(&value).unwrap();
        let item = r.pop_timeout(WAIT).unwrap();
        assert_eq!(&*item, &value[..], "{len} bytes, home to away");
        item.ack();
        rm.push_timeout(&value, WAIT).unwrap_or_else(|e| panic!("push of a {len}-byte Vec: {e}"));
        let item = rm.pop_timeout(WAIT).unwrap();
        assert_eq!(item.as_slice(), &value[..], "a {len}-byte Vec, there and back");
        item.ack();
    }
    assert!(q.is_empty() && msgs.is_empty());
}
