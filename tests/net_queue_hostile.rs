//! Queues across hosts under hostile and racy conditions (feature `net`):
//! two serving handles in one process, a dead local consumer, forged
//! presence and replayed frames from a peer without the secret, a server
//! that never answers, many threads on one session, lost returns, an ack
//! meant for an earlier server.
#![cfg(feature = "net")]

use std::time::Duration;

use rkyv::{Archive, Deserialize, Serialize};
use shmpool::net::Session;
use shmpool::topic::{Queue, TopicError};

const KEY: &[u8] = b"the secret of the queue tests";

#[path = "common/net.rs"]
mod net;
#[path = "common/procs.rs"]
mod procs;

#[test]
fn child_role() {
    let Some((role, args)) = procs::role() else { return };
    assert_eq!(role, "local-holder");
    let q = Queue::<u64>::open(&args[0]).unwrap();
    let item = q.pop_timeout(Duration::from_secs(10)).unwrap();
    procs::say(&format!("HOLDING {}", *item));
    std::thread::sleep(Duration::from_secs(60));
}

/// A local consumer killed holding an item, with only a remote consumer
/// left: the server's waiting pop reaps the dead slot, and the item reaches
/// the remote consumer.
#[test]
fn a_dead_local_consumers_item_reaches_a_remote_consumer() {
    let (home, away, _) = sessions();
    let qname = name("dead-local");
    let q = Queue::<u64>::builder(&qname).serve(&home).open_or_create().unwrap();
    let r = Queue::<u64>::builder(&qname).network(&away).open().unwrap();
    // The server's own consumer slot is claimed now (its first pop).
    assert!(matches!(r.try_pop(), Err(TopicError::Timeout)));
    q.push(&9).unwrap();
    let mut child = procs::Proc::spawn("local-holder", &[&qname]);
    assert_eq!(child.expect("HOLDING", Duration::from_secs(20)), "9");
    child.kill();
    match r.pop_timeout(Duration::from_secs(20)) {
        Ok(i) => assert_eq!(*i, 9),
        Err(e) => {
            // A blocking local pop reaps between its slices: the item is there.
            let local = q.pop_timeout(Duration::from_secs(2)).map(|i| *i);
            panic!("the dead local consumer's item never reached the remote one: {e} (a local blocking pop then got {local:?})")
        }
    }
}

fn sessions() -> (Session, Session, String) {
    net::pair(KEY)
}

fn name(what: &str) -> String {
    format!("rq-{what}-{}", std::process::id())
}

/// A peer WITHOUT the secret (raw zenoh, no shmpool key): learns a client's
/// id from the key of the server's answers to it (`c/<client>`, routed to
/// any subscriber), then declares and drops a token on that client's
/// presence key.
fn forge_gone_of_a_client(ep: &str, qname: &str, provoke: impl FnOnce()) {
    use zenoh::Wait;
    let mut c = zenoh::Config::default();
    c.insert_json5("mode", "\"peer\"").unwrap();
    c.insert_json5("scouting/multicast/enabled", "false").unwrap();
    c.insert_json5("connect/endpoints", &format!("[\"{ep}\"]")).unwrap();
    let z = zenoh::open(c).wait().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx = std::sync::Mutex::new(tx);
    let _sub = z
        .declare_subscriber(format!("shmpool/queue/{qname}/c/*"))
        .callback(move |s| {
            let _ = tx.lock().unwrap().send(s.key_expr().as_str().to_owned());
        })
        .wait()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    provoke();
    let key = rx.recv_timeout(Duration::from_secs(5)).expect("an answer's key");
    let client = key.rsplit('/').next().unwrap().to_owned();
    let t = z.liveliness().declare_token(format!("shmpool/queue/{qname}/alive/{client}")).wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(t);
    std::thread::sleep(Duration::from_millis(500));
}

/// Two `serve` handles in one process over one session: one serves, the
/// other stands by; a request is handled once.
#[test]
fn one_remote_push_is_queued_once_even_with_two_serving_handles_in_one_process() {
    let (home, away, _) = sessions();
    let qname = name("twice");
    let q1 = Queue::<u64>::builder(&qname).serve(&home).open_or_create().unwrap();
    let _q2 = Queue::<u64>::builder(&qname).serve(&home).open_or_create().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let r = Queue::<u64>::builder(&qname).network(&away).open().unwrap();
    r.push(&7).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(q1.len(), 1, "one remote push queued {} items", q1.len());
}

/// A peer without the secret declaring and dropping a token on a live
/// client's key does not produce a Gone (zenoh reports a key gone only when
/// its last token goes): a stranger cannot take back a live client's item.
#[test]
fn a_peer_without_the_secret_cannot_take_back_a_live_clients_item() {
    let (home, away, ep) = sessions();
    let qname = name("forged-gone");
    let q = Queue::<u64>::builder(&qname).serve(&home).open_or_create().unwrap();
    let r = Queue::<u64>::builder(&qname).network(&away).open().unwrap();
    q.push(&42).unwrap();
    let held = r.pop_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(*held, 42);
    forge_gone_of_a_client(&ep, &qname, || {
        let _ = r.len();
    });
    match q.pop_timeout(Duration::from_millis(500)) {
        Err(TopicError::Timeout) => {}
        Ok(dup) => panic!("item {} delivered again while its remote holder lives", *dup),
        Err(e) => panic!("{e}"),
    }
    held.ack();
}

/// A forged home token (no server behind it) does not stop clients: they
/// use a server only once it answered a sealed hello.
#[test]
fn a_forged_home_token_does_not_stop_clients_from_opening() {
    let ep = net::endpoint();
    let ep2 = net::endpoint();
    let home = Session::builder().listen(&ep).secret(KEY).open().unwrap();
    let qname = name("forged-home");
    let _q = Queue::<u64>::builder(&qname).serve(&home).open_or_create().unwrap();
    // A peer without the secret in the mesh (or behind a router).
    let attacker = Session::builder().listen(&ep2).secret(b"not the secret").open().unwrap();
    let _fake = attacker.declare_token(&format!("shmpool/queue/{qname}/home/00")).unwrap();
    let away = Session::builder().connect(&ep).connect(&ep2).secret(KEY).open().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut failed = Vec::new();
    for _ in 0..4 {
        if let Err(e) = Queue::<u64>::builder(&qname).network(&away).open() {
            failed.push(e.to_string());
        }
    }
    assert!(failed.is_empty(), "{} of 4 opens failed because of a forged home token: {failed:?}", failed.len());
}

/// A queue served again over the same session: an ack meant for the
/// earlier server's lease does not free the new server's item (each serving
/// has its own epoch in its keys).
#[test]
fn an_ack_for_an_item_of_a_previous_server_does_not_free_another_item() {
    let (home, away, _) = sessions();
    let qname = name("lease-reuse");
    let keep = Queue::<u64>::builder(&qname).open_or_create().unwrap();
    let q = Queue::<u64>::builder(&qname).serve(&home).open().unwrap();
    let r = Queue::<u64>::builder(&qname).network(&away).open().unwrap();
    keep.push(&1).unwrap();
    keep.push(&2).unwrap();
    let x = r.pop_timeout(Duration::from_secs(10)).unwrap(); // item 1, lease 1
    assert_eq!(*x, 1);
    drop(q); // the server stops: item 1 is queued again (behind 2)
    let _q = Queue::<u64>::builder(&qname).serve(&home).open().unwrap();
    // Wait for the client to see the server again.
    let mut y = None;
    for _ in 0..100 {
        match r.pop_timeout(Duration::from_secs(1)) {
            Ok(i) => {
                y = Some(i);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let y = y.expect("the new server answers");
    assert_eq!(*y, 2); // item 2, lease 1 of the new server
    x.ack(); // Finish{lease 1, ack} -> the new server acks item 2
    std::thread::sleep(Duration::from_millis(300));
    y.nack(); // meant to give item 2 back
    std::thread::sleep(Duration::from_millis(300));
    let mut left = Vec::new();
    while let Ok(i) = keep.try_pop() {
        left.push(*i);
        i.ack();
    }
    left.sort_unstable();
    assert_eq!(left, vec![1, 2], "item 2 was nacked by its holder but is gone");
}

#[derive(Archive, Serialize, Deserialize, Debug)]
#[allow(dead_code)]
enum Request {
    Hello { client: u64, id: u64, fingerprint: u64 },
    Push { client: u64, id: u64, fingerprint: u64, wait_ms: u64, value: Vec<u8> },
    Pop { client: u64, id: u64, wait_ms: u64 },
    Finish { client: u64, lease: u64, ack: bool },
    Len { client: u64, id: u64 },
}

/// Many threads pushing through one session: no frame is dropped as a
/// replay, every push is answered.
#[test]
fn concurrent_requests_from_one_session_are_not_dropped_as_replays() {
    let (home, away, _) = sessions();
    let qname = name("window");
    let _q = Queue::<u64>::builder(&qname).capacity(1 << 16).serve(&home).open_or_create().unwrap();
    let r = Queue::<u64>::builder(&qname).network(&away).open().unwrap();
    let failed = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..200u64 {
            let (r, failed) = (&r, &failed);
            s.spawn(move || {
                for i in 0..30 {
                    if let Err(e) = r.push(&(t * 1000 + i)) {
                        eprintln!("push: {e}");
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let dropped = home.dropped();
    assert_eq!((dropped, failed.into_inner()), (0, 0), "frames dropped by the server / pushes failed");
}

/// Many async pushes at once from one session: every frame arrives (frames
/// leave a session in counter order, so none falls behind the receiver's
/// replay window) and every push is answered.
#[test]
fn concurrent_async_pushes_from_one_session_all_succeed() {
    let (home, away, _) = sessions();
    let qname = name("async-lost");
    let _q = Queue::<u64>::builder(&qname).capacity(1 << 16).serve(&home).open_or_create().unwrap();
    let r = std::sync::Arc::new(Queue::<u64>::builder(&qname).network(&away).open().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(16).enable_all().build().unwrap();
    let tasks: Vec<_> = (0..400u64)
        .map(|t| {
            let r = std::sync::Arc::clone(&r);
            rt.spawn(async move {
                let mut hung = 0;
                for i in 0..10 {
                    match tokio::time::timeout(Duration::from_secs(30), r.push_async(&(t * 100 + i))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            eprintln!("async push failed: {e}");
                            hung += 1
                        }
                        Err(_) => hung += 1,
                    }
                }
                hung
            })
        })
        .collect();
    std::thread::scope(|s| {
        for t in 0..100u64 {
            let r = &r;
            s.spawn(move || {
                for i in 0..20 {
                    let _ = r.push(&((1 << 40) | (t * 1000 + i)));
                }
            });
        }
    });
    let hung: u32 = tasks.into_iter().map(|h| rt.block_on(h).unwrap()).sum();
    eprintln!("frames dropped by the server: {}", home.dropped());
    assert_eq!(hung, 0, "{hung} async pushes still pending after 30 s");
}

#[derive(Archive, Serialize, Deserialize, Debug)]
#[allow(dead_code)]
enum Failure {
    Full,
    Timeout,
    TypeMismatch { expected: String },
    Invalid(String),
    Other(String),
}

#[derive(Archive, Serialize, Deserialize, Debug)]
#[allow(dead_code)]
enum Reply {
    Done { id: u64 },
    Item { id: u64, lease: u64, seq: u64, value: Vec<u8> },
    Len { id: u64, n: u64 },
    Failed { id: u64, why: Failure },
}

/// A server whose token stays but that stops answering (here: one that
/// answers only the hello): the blocking pop and the async pop both end
/// with a Network error when the answer is overdue.
#[test]
fn an_async_pop_ends_like_the_blocking_one_when_the_server_never_answers() {
    let ep = net::endpoint();
    let fake = Session::builder().listen(&ep).secret(KEY).open().unwrap();
    let qname = name("mute");
    let base = format!("shmpool/queue/{qname}");
    let f2 = fake.clone();
    let b2 = base.clone();
    let _sub = fake
        .subscribe_with(&format!("{base}/h/{}", fake.id()), move |frame| {
            let mut a = rkyv::util::AlignedVec::<16>::new();
            a.extend_from_slice(frame.payload());
            if let Ok(Request::Hello { client, id, .. }) = rkyv::from_bytes::<Request, rkyv::rancor::Error>(&a) {
                let b = rkyv::to_bytes::<rkyv::rancor::Error>(&Reply::Done { id }).unwrap();
                f2.publish(&format!("{b2}/c/{client:016x}"), &b).unwrap();
            }
        })
        .unwrap();
    let _home = fake.declare_token(&format!("{base}/home/{}", fake.id())).unwrap();
    let away = Session::builder().connect(&ep).secret(KEY).open().unwrap();
    let r = Queue::<u64>::builder(&qname).network(&away).open().unwrap();
    let t = std::time::Instant::now();
    let blocking = r.pop_timeout(Duration::from_secs(60));
    eprintln!("blocking pop: {:?} after {:?}", blocking.map(|i| *i), t.elapsed());
    // The pop in a task of its own (a `timeout` around it would poll it
    // at the deadline and so wake it: what hides the bug).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let r = std::sync::Arc::new(r);
    let r2 = std::sync::Arc::clone(&r);
    let task = rt.spawn(async move { r2.pop_async().await.map(|i| *i) });
    std::thread::sleep(Duration::from_secs(30));
    assert!(task.is_finished(), "async pop still pending after 30 s (answer_by was 10 s)");
}

/// Many threads popping, returning and acking through one session: no
/// return is lost on the way (a lost one would pin its item at the server
/// for as long as the client lives).
#[test]
fn lost_returns_do_not_pin_items() {
    let (home, away, _) = sessions();
    let qname = name("pinned");
    let q = Queue::<u64>::builder(&qname).capacity(1 << 16).serve(&home).open_or_create().unwrap();
    let r = Queue::<u64>::builder(&qname).network(&away).open().unwrap();
    const N: u64 = 3000;
    for i in 0..N {
        q.push(&i).unwrap();
    }
    let seen = std::sync::Mutex::new(std::collections::HashSet::new());
    let done = std::sync::Mutex::new(std::collections::BTreeSet::new());
    std::thread::scope(|s| {
        for _ in 0..200 {
            let (r, seen, done) = (&r, &seen, &done);
            s.spawn(move || {
                while let Ok(item) = r.pop_timeout(Duration::from_secs(3)) {
                    let v: u64 = item.to_native();
                    if seen.lock().unwrap().insert(v) {
                        item.nack(); // first time: give it back
                    } else {
                        done.lock().unwrap().insert(v);
                        item.ack();
                    }
                }
            });
        }
    });
    let done = done.into_inner().unwrap();
    let missing: Vec<u64> = (0..N).filter(|v| !done.contains(v)).collect();
    eprintln!("frames dropped by the server: {}; queued now: {}", home.dropped(), q.len());
    if !missing.is_empty() {
        drop(r); // the client's token goes: its leases come back
        std::thread::sleep(Duration::from_secs(1));
        eprintln!("queued once the client is gone: {}", q.len());
    }
    assert!(missing.is_empty(), "{} items returned by a live client never came back: {:?}", missing.len(), missing);
}

/// A stranger (no secret) records a client's sealed Push frame (zenoh
/// routes a publication to every matching subscriber) and replays it after
/// the queue is served again over the same session: the new serving's keys
/// carry a new epoch, so the replay reaches nobody.
#[test]
fn a_stranger_cannot_replay_a_push_into_a_queue_served_again() {
    use zenoh::Wait;
    let ep = net::endpoint();
    let ep2 = net::endpoint();
    let home = Session::builder().listen(&ep).secret(KEY).open().unwrap();
    let away = Session::builder().listen(&ep2).connect(&ep).secret(KEY).open().unwrap();
    let mut c = zenoh::Config::default();
    c.insert_json5("mode", "\"peer\"").unwrap();
    c.insert_json5("scouting/multicast/enabled", "false").unwrap();
    c.insert_json5("connect/endpoints", &format!("[\"{ep}\", \"{ep2}\"]")).unwrap();
    let stranger = zenoh::open(c).wait().unwrap();
    let qname = name("replay");
    let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let cap2 = std::sync::Arc::clone(&captured);
    let _spy = stranger
        .declare_subscriber(format!("shmpool/queue/{qname}/h/*"))
        .callback(move |s| {
            cap2.lock().unwrap().push((s.key_expr().as_str().to_owned(), s.payload().to_bytes().to_vec()));
        })
        .wait()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let keep = Queue::<u64>::builder(&qname).open_or_create().unwrap();
    let q = Queue::<u64>::builder(&qname).serve(&home).open().unwrap();
    let r = Queue::<u64>::builder(&qname).network(&away).open().unwrap();
    r.push(&5).unwrap();
    let i = keep.try_pop().unwrap();
    assert_eq!(*i, 5);
    i.ack();
    drop(q);
    let _q = Queue::<u64>::builder(&qname).serve(&home).open().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let frames = captured.lock().unwrap().clone();
    assert!(!frames.is_empty(), "nothing captured");
    for (k, f) in frames {
        stranger.put(k, f).wait().unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(keep.len(), 0, "a stranger's replayed frame queued the item again");
}
