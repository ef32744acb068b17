//! Topics across hosts (feature `net`), on loopback: two processes, each in
//! its own topic namespace (as two hosts would be), bridge one topic over a
//! session; every sample published on one host reaches the other's
//! subscribers, in order, each once; a session with another secret
//! delivers nothing.
#![cfg(feature = "net")]

use std::time::{Duration, Instant};

use rkyv::{Archive, Deserialize, Serialize};

#[path = "common/procs.rs"]
mod procs;
#[path = "common/watchdog.rs"]
mod watchdog;
use procs::{hear, say, Proc};
use watchdog::watchdog;

const KEY: &[u8] = b"the secret of the topic bridge tests";
const WAIT: Duration = Duration::from_secs(20);
const N: u64 = 500;
const PROBE: u64 = u64::MAX;

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
struct Reading {
    seq: u64,
    note: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn session(role: &str, endpoint: &str, secret: &[u8]) -> shmpool::net::Session {
    let b = shmpool::net::Session::builder().secret(secret);
    let b = if role == "listen" { b.listen(endpoint) } else { b.connect(endpoint) };
    b.open().unwrap()
}

#[test]
fn child_role() {
    let Some((role, args)) = procs::role() else { return };
    // args: namespace, listen|connect, endpoint, topic name, [secret]
    std::env::set_var(shmpool::topic::NAMESPACE_ENV, &args[0]);
    let secret = args.get(4).map_or(KEY.to_vec(), |s| s.as_bytes().to_vec());
    let net = session(&args[1], &args[2], &secret);
    let topic = shmpool::Topic::<Reading>::builder(&args[3]).depth(1024).network(&net).open_or_create().unwrap();
    match role.as_str() {
        "publisher" => {
            // A local subscriber beside the remote one: every reading to both.
            let local = topic.subscriber().unwrap();
            let p = topic.publisher().unwrap();
            // One reader of stdin for the whole run (a reader per wait would
            // leave earlier ones to swallow the line).
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                while let Some(line) = hear(Duration::from_secs(3600)) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            say("READY");
            // Probes until the other side hears one: frames sent before its
            // bridge is known to this session are not delivered.
            let until = Instant::now() + WAIT;
            loop {
                assert!(Instant::now() < until, "the other side never heard a probe");
                p.send(&Reading { seq: PROBE, note: "probe".into() }).unwrap();
                if rx.recv_timeout(Duration::from_millis(50)).as_deref() == Ok("go") {
                    break;
                }
            }
            let mut seen = Vec::new();
            for seq in 0..N {
                p.send(&Reading { seq, note: format!("reading {seq}") }).unwrap();
                while let Ok(s) = local.try_recv() {
                    seen.push(s.seq.to_native());
                }
            }
            let until = Instant::now() + WAIT;
            while seen.iter().filter(|&&s| s != PROBE).count() < N as usize && Instant::now() < until {
                if let Ok(s) = local.recv_timeout(Duration::from_millis(50)) {
                    seen.push(s.seq.to_native());
                }
            }
            let readings: Vec<u64> = seen.into_iter().filter(|&s| s != PROBE).collect();
            assert_eq!(readings, (0..N).collect::<Vec<_>>(), "the local subscriber's readings");
            say("SENT");
            let _ = rx.recv_timeout(WAIT);
        }
        "subscriber" => {
            let sub = topic.subscriber().unwrap();
            say("READY");
            let until = Instant::now() + WAIT;
            let mut next = 0;
            let mut heard_probe = false;
            while next < N {
                assert!(Instant::now() < until, "only {next} of {N} readings came");
                let Ok(s) = sub.recv_timeout(Duration::from_millis(100)) else { continue };
                let seq = s.seq.to_native();
                if seq == PROBE {
                    if !heard_probe {
                        heard_probe = true;
                        say("PROBE");
                    }
                    continue;
                }
                assert_eq!(seq, next, "readings out of order");
                assert_eq!(s.note.as_str(), format!("reading {seq}"));
                next += 1;
            }
            say(&format!("GOT {next}"));
            // Nothing more: every reading came once.
            std::thread::sleep(Duration::from_millis(200));
            while let Ok(s) = sub.try_recv() {
                assert_eq!(s.seq.to_native(), PROBE, "a reading came twice");
            }
            say("DONE");
        }
        "listener" => {
            let sub = topic.subscriber().unwrap();
            say("READY");
            let got = sub.recv_timeout(Duration::from_secs(3)).is_ok();
            say(&format!("HEARD {got}"));
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn a_topic_bridged_across_two_hosts_delivers_every_sample_in_order() {
    let _w = watchdog("net: a topic across two hosts", Duration::from_secs(120));
    let port = free_port();
    let ep = format!("tcp/127.0.0.1:{port}");
    let name = format!("bridge-{}", std::process::id());
    let ns_a = format!("hosta{}", std::process::id());
    let ns_b = format!("hostb{}", std::process::id());
    let mut publisher = Proc::spawn("publisher", &[&ns_a, "listen", &ep, &name]);
    publisher.expect("READY", WAIT);
    let mut subscriber = Proc::spawn("subscriber", &[&ns_b, "connect", &ep, &name]);
    subscriber.expect("READY", WAIT);
    subscriber.expect("PROBE", WAIT);
    publisher.tell("go");
    publisher.expect("SENT", WAIT);
    assert_eq!(subscriber.expect("GOT", WAIT), N.to_string());
    subscriber.expect("DONE", WAIT);
    publisher.tell("bye");
    subscriber.wait_ok(WAIT);
    publisher.wait_ok(WAIT);
}

#[test]
fn a_host_with_another_secret_hears_nothing() {
    let _w = watchdog("net: a topic bridge with another secret", Duration::from_secs(120));
    let port = free_port();
    let ep = format!("tcp/127.0.0.1:{port}");
    let name = format!("bridge2-{}", std::process::id());
    let mut publisher = Proc::spawn("publisher", &[&format!("hostc{}", std::process::id()), "listen", &ep, &name]);
    publisher.expect("READY", WAIT);
    let mut listener =
        Proc::spawn("listener", &[&format!("hostd{}", std::process::id()), "connect", &ep, &name, "another secret"]);
    listener.expect("READY", WAIT);
    assert_eq!(listener.expect("HEARD", WAIT), "false", "samples sealed under another secret were delivered");
    listener.wait_ok(WAIT);
    // The publisher ends cleanly (a killed one would leave its topic's name).
    publisher.tell("go");
    publisher.expect("SENT", WAIT);
    publisher.tell("bye");
    publisher.wait_ok(WAIT);
}
