//! Property tests across hosts (feature `net`, on loopback): every path
//! that carries a user value over the network carries it intact, at every
//! length that straddles a boundary the code knows (the owner's and the
//! member's slot payloads and inline limits, the arena's size classes, the
//! move to the large-block heap) and up to several MiB.
//!
//! - Remote pool tasks: a pool with `workers(0)` and `listen`, so that every
//!   task runs on the member process; its argument and its result are byte
//!   vectors of independent lengths whose content follows from the length,
//!   checked byte for byte on the member (the argument) and here (the
//!   result). Single tasks and maps (whose items travel grouped), for the
//!   smallest, the default and the largest slot size. A value one side has
//!   no room for is an error its caller hears, not a hang.
//! - Topics across hosts: a publisher process and a subscriber process in
//!   topic namespaces of their own (two hosts, as in `net_topic.rs`), one
//!   sample at a time, each checked by the subscriber.
//!
//! Every wait is bounded (a child that does not answer fails the test) and
//! every test has a watchdog.
#![cfg(feature = "net")]

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[path = "common/procs.rs"]
mod procs;
#[path = "common/values.rs"]
#[allow(dead_code)]
mod values;
#[path = "common/watchdog.rs"]
mod watchdog;
use procs::{hear, say, Proc};
use watchdog::watchdog;

const KEY: &[u8] = b"the secret of the network property tests";
const WAIT: Duration = Duration::from_secs(60);
const LIMIT: Duration = Duration::from_secs(600);
/// Slot sizes of the owner's pool: the builder's bounds and the default.
const SLOTS: [usize; 3] = [80, 256, 1024];
/// What the arguments, results and samples are salted with.
const ARG: u64 = 0xA;
const RESULT: u64 = 0xB;
const SAMPLE: u64 = 0xC;
/// The probe a publisher sends until the other host hears it.
const PROBE: &[u8] = b"probe";

/// `len` bytes whose content follows from `len` and `salt` alone.
fn pattern(len: usize, salt: u64) -> Vec<u8> {
    values::bytes(len, (len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt)
}

/// Where `got` first differs from `pattern(got.len(), salt)`, if anywhere.
fn first_difference(got: &[u8], salt: u64) -> Option<usize> {
    let want = pattern(got.len(), salt);
    got.iter().zip(&want).position(|(a, b)| a != b)
}

/// Lengths: `values::lengths` (dense below a few slots, every arena size
/// class, anything up to 300 KiB), and now and then up to 6 MiB.
fn lengths() -> impl Strategy<Value = usize> {
    prop_oneof![12 => values::lengths(), 1 => 300_000usize..(6 << 20)]
}

/// Lengths every run goes through, not left to chance: every length up to
/// past the largest slot's inline limit, and each size class from 64 B to
/// 128 KiB and its quarter steps, give or take a block or archive header.
fn boundaries() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=1100).collect();
    for pow in 6..=17 {
        let base = 1usize << pow;
        for q in 0..4 {
            for d in [-48, -17, -1, 0, 1, 17, 48] {
                v.push((base + base / 4 * q).saturating_add_signed(d));
            }
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Larger lengths, in the large-block heap: from 256 KiB to 7 MiB, each
/// power of two and its quarter steps, give or take a byte.
fn large() -> Vec<usize> {
    let mut v = Vec::new();
    for pow in 18..=22 {
        let base = 1usize << pow;
        for q in 0..4 {
            for d in [-1, 0, 1] {
                v.push((base + base / 4 * q).saturating_add_signed(d));
            }
        }
    }
    v
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn endpoint(port: u16) -> String {
    format!("tcp/127.0.0.1:{port}")
}

/// Run on the member: checks the argument, answers `want` bytes.
fn answer((arg, want): (Vec<u8>, u64)) -> Vec<u8> {
    if let Some(at) = first_difference(&arg, ARG) {
        panic!("the argument of {} bytes differs at byte {at}", arg.len());
    }
    pattern(want as usize, RESULT)
}

/// Checks a result of `want` bytes.
fn check_result(got: Result<Vec<u8>, shmpool::TaskError>, arg: usize, want: usize) -> Result<(), String> {
    let got = got.map_err(|e| format!("argument {arg} bytes, result {want} bytes: {e}"))?;
    if got.len() != want {
        return Err(format!("argument {arg} bytes: a result of {} bytes, not {want}", got.len()));
    }
    match first_difference(&got, RESULT) {
        Some(at) => Err(format!("argument {arg} bytes: the result of {want} bytes differs at byte {at}")),
        None => Ok(()),
    }
}

#[test]
fn child_role() {
    let Some((role, args)) = procs::role() else { return };
    match role.as_str() {
        "member" => {
            say("STARTED");
            match shmpool::net::join(&args[0], 1, KEY) {
                Ok(r) => say(&format!("DONE {}", r.tasks)),
                Err(e) => say(&format!("ERR {e:?}")),
            }
        }
        "publisher" | "subscriber" => topic_role(&role, &args),
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn remote_task_values_of_every_size_arrive_intact() {
    let _w = watchdog("net_props: remote tasks", LIMIT);
    let sweep = boundaries();
    for slot in SLOTS {
        let ep = endpoint(free_port());
        let pool = shmpool::Pool::builder().workers(0).slot_size(slot).listen(&ep).secret(KEY).build().unwrap();
        let member = Proc::spawn("member", &[&ep]);
        member.expect("STARTED", WAIT);
        // Every boundary, argument and result of the same length; the
        // large ones once (past a slot, the slot size changes nothing).
        let large = if slot == 256 { large() } else { Vec::new() };
        for &len in sweep.iter().chain(&large) {
            let got = pool.submit(answer, (pattern(len, ARG), len as u64)).unwrap().wait();
            check_result(got, len, len).unwrap_or_else(|e| panic!("slot {slot}: {e}"));
        }
        // Lengths drawn independently for the argument and the result.
        runner(150)
            .run(&(lengths(), lengths()), |(arg, want)| {
                let got = pool.submit(answer, (pattern(arg, ARG), want as u64)).unwrap().wait();
                check_result(got, arg, want).map_err(|e| TestCaseError::fail(format!("slot {slot}: {e}")))
            })
            .unwrap();
        // Maps: the items travel grouped, several to a task.
        runner(40)
            .run(&proptest::collection::vec((values::lengths(), values::lengths()), 1..10), |items| {
                let input: Vec<(Vec<u8>, u64)> = items.iter().map(|&(a, w)| (pattern(a, ARG), w as u64)).collect();
                let out: Vec<_> = pool.map(answer, input).unwrap().collect();
                prop_assert_eq!(out.len(), items.len(), "slot {}: results of a map", slot);
                for (r, &(arg, want)) in out.into_iter().zip(&items) {
                    check_result(r, arg, want).map_err(|e| TestCaseError::fail(format!("slot {slot}, map: {e}")))?;
                }
                Ok(())
            })
            .unwrap();
        drop(pool);
        let ran: u64 = member.expect("DONE", WAIT).parse().unwrap();
        assert!(ran > 0, "slot {slot}: the member ran nothing");
    }
}

/// A topic on one "host" (its own namespace), bridged over a session.
/// args: namespace, listen|connect, endpoint, topic name.
fn topic_role(role: &str, args: &[String]) {
    std::env::set_var(shmpool::topic::NAMESPACE_ENV, &args[0]);
    let b = shmpool::net::Session::builder().secret(KEY);
    let net = if args[1] == "listen" { b.listen(&args[2]) } else { b.connect(&args[2]) }.open().unwrap();
    let topic = shmpool::Topic::<Vec<u8>>::builder(&args[3]).depth(16).network(&net).open_or_create().unwrap();
    // One reader of stdin for the whole run.
    let (tx, commands) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Some(line) = hear(Duration::from_secs(3600)) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    if role == "publisher" {
        let p = topic.publisher().unwrap();
        say("READY");
        // Probes until told the other host heard one: samples published
        // before its bridge is known to this session do not reach it.
        let until = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < until, "the other host never heard a probe");
            p.send(&PROBE.to_vec()).unwrap();
            if commands.recv_timeout(Duration::from_millis(50)).as_deref() == Ok("go") {
                break;
            }
        }
        say("GOING");
        loop {
            let line = commands.recv_timeout(WAIT).expect("no command from the test");
            let Some(len) = line.strip_prefix("send ") else { break };
            let len: usize = len.parse().unwrap();
            p.send_timeout(&pattern(len, SAMPLE), WAIT).unwrap();
            say(&format!("SENT {len}"));
        }
    } else {
        let sub = topic.subscriber().unwrap();
        say("READY");
        let mut heard_probe = false;
        let until = Instant::now() + LIMIT;
        while Instant::now() < until {
            if commands.try_recv().as_deref() == Ok("bye") {
                say("BYE");
                return;
            }
            let Ok(s) = sub.recv_timeout(Duration::from_millis(50)) else { continue };
            if s.as_slice() == PROBE {
                if !heard_probe {
                    heard_probe = true;
                    say("PROBE");
                }
                continue;
            }
            match first_difference(s.as_slice(), SAMPLE) {
                None => say(&format!("GOT {}", s.len())),
                Some(at) => say(&format!("BAD {} bytes differ at byte {at}", s.len())),
            }
        }
        panic!("the subscriber ran past its limit");
    }
}

#[test]
fn topic_samples_of_every_size_cross_hosts_intact() {
    let _w = watchdog("net_props: topics across hosts", LIMIT);
    assert_ne!(pattern(PROBE.len(), SAMPLE), PROBE, "a sample would pass for a probe");
    let ep = endpoint(free_port());
    let name = format!("netprops-{}", std::process::id());
    let (ns_a, ns_b) = (format!("propa{}", std::process::id()), format!("propb{}", std::process::id()));
    let mut publisher = Proc::spawn("publisher", &[&ns_a, "listen", &ep, &name]);
    publisher.expect("READY", WAIT);
    let subscriber = Proc::spawn("subscriber", &[&ns_b, "connect", &ep, &name]);
    subscriber.expect("READY", WAIT);
    subscriber.expect("PROBE", WAIT);
    publisher.tell("go");
    publisher.expect("GOING", WAIT);
    // One sample at a time: the publisher's bridge may drop its oldest
    // sample when the network falls behind; this tests values, not that.
    let procs = std::cell::RefCell::new((publisher, subscriber));
    let cross = |len: usize| -> Result<(), String> {
        let (publisher, subscriber) = &mut *procs.borrow_mut();
        publisher.tell(&format!("send {len}"));
        let sent = publisher.expect("SENT", WAIT);
        if sent != len.to_string() {
            return Err(format!("the publisher sent {sent}, not {len}"));
        }
        match subscriber.expect("", WAIT) {
            got if got == format!("GOT {len}") => Ok(()),
            other => Err(format!("a sample of {len} bytes: the other host says {other:?}")),
        }
    };
    for len in boundaries().into_iter().chain(large()) {
        cross(len).unwrap();
    }
    runner(150).run(&lengths(), |len| cross(len).map_err(TestCaseError::fail)).unwrap();
    let (mut publisher, mut subscriber) = procs.into_inner();
    publisher.tell("bye");
    subscriber.tell("bye");
    subscriber.expect("BYE", WAIT);
    publisher.wait_ok(WAIT);
    subscriber.wait_ok(WAIT);
    let left = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(&name))
        .collect::<Vec<_>>();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

/// Waits for `ticket`, which must fail with `TaskError::Encode` saying
/// `says`, within `WAIT`: a value with no room on one side is an error
/// its caller hears, as in a local pool, never a ticket that waits for
/// ever.
fn expect_no_room(ticket: shmpool::Ticket<Vec<u8>>, says: &str) {
    match ticket.wait_timeout(WAIT) {
        Ok(Err(shmpool::TaskError::Encode(why))) => assert!(why.contains(says), "{why}"),
        Ok(other) => panic!("expected an Encode error saying {says:?}, got {:?}", other.map(|v| v.len())),
        Err(_) => panic!("no answer within {WAIT:?} (expected an Encode error saying {says:?})"),
    }
}

#[test]
fn a_value_with_no_room_on_the_other_host_is_an_error_not_a_hang() {
    let _w = watchdog("net_props: no room on the other host", LIMIT);
    let small = |pool: &shmpool::Pool| {
        let got = pool.submit(answer, (pattern(100, ARG), 100)).unwrap().wait();
        check_result(got, 100, 100).unwrap();
    };
    // A result the member made (its segment is 256 MiB) that the owner's
    // 4 MiB segment has no room for.
    let ep = endpoint(free_port());
    let pool = shmpool::Pool::builder().workers(0).segment_size(4 << 20).listen(&ep).secret(KEY).build().unwrap();
    let member = Proc::spawn("member", &[&ep]);
    member.expect("STARTED", WAIT);
    small(&pool);
    expect_no_room(pool.submit(answer, (pattern(10, ARG), 5 << 20)).unwrap(), "has no room in this pool's segment");
    small(&pool);
    drop(pool);
    member.expect("DONE", WAIT);
    // An argument the owner's 1 GiB segment holds and the member's 256 MiB
    // one does not.
    let ep = endpoint(free_port());
    let pool = shmpool::Pool::builder().workers(0).segment_size(1 << 30).listen(&ep).secret(KEY).build().unwrap();
    let member = Proc::spawn("member", &[&ep]);
    member.expect("STARTED", WAIT);
    small(&pool);
    expect_no_room(pool.submit(answer, (pattern(260 << 20, ARG), 10)).unwrap(), "could not take the task's argument");
    small(&pool);
    drop(pool);
    member.expect("DONE", WAIT);
}
