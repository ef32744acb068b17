//! Network sessions between real processes on loopback: this test binary
//! re-executed as the other peer, its role in an environment variable.
//!
//! Every wait is bounded; the parent kills its children when a test ends
//! (or fails), and a child exits by itself after a minute (watchdog) or
//! when its stdin closes (the parent gone).
#![cfg(feature = "net")]

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shmpool::net::{NetError, Presence, Session};

const ROLE: &str = "SHMPOOL_NET_TEST_ROLE";
const PORT: &str = "SHMPOOL_NET_TEST_PORT";
const BASE: &str = "SHMPOOL_NET_TEST_KEY";
const SECRET: &[u8] = b"shmpool net_session test secret";
const WRONG_SECRET: &[u8] = b"shmpool net_session test secreT";

/// Generous bound on any single wait: a hang guard, not a timing claim.
const BOUND: Duration = Duration::from_secs(20);

/// Frames the honest child publishes, and the liar.
const FRAMES: u64 = 200;
const LIES: u64 = 20;

fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 3000) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// The role this process was started in, if it is a child.
fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// Runs a child role, then returns (the test function returns, the
/// harness exits 0).
fn run_child(role: &str) {
    // Watchdog: a child never outlives a minute.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        std::process::exit(3);
    });
    if role == "quiet" {
        return quiet_child();
    }
    let port: u16 = std::env::var(PORT).expect("port").parse().expect("port number");
    let base = std::env::var(BASE).expect("base key");
    let secret = if role == "liar" { WRONG_SECRET } else { SECRET };
    let session = Session::builder()
        .connect(format!("tcp/127.0.0.1:{port}"))
        .secret(secret)
        .connect_timeout(BOUND)
        .open()
        .expect("child session");
    match role {
        "publisher" | "liar" => {
            let count = if role == "liar" { LIES } else { FRAMES };
            let publisher = session.publisher(&format!("{base}/frames")).unwrap();
            publisher.wait_matched(BOUND).expect("the parent's subscription");
            for i in 0..count {
                publisher.publish(&payload(i)).unwrap();
            }
            wait_for_parent();
        }
        "member" => {
            let _token = session.declare_token(&format!("{base}/members/child")).unwrap();
            wait_for_parent();
        }
        other => panic!("unknown role {other}"),
    }
}

/// Blocks until stdin closes: the parent dropped its end, or died.
fn wait_for_parent() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

/// A child process, killed and reaped when dropped.
struct Kid(Child);

impl Kid {
    fn spawn(test: &str, role: &str, port: u16, base: &str) -> Kid {
        let exe = std::env::current_exe().expect("test binary");
        let child = Command::new(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(PORT, port.to_string())
            .env(BASE, base)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the child");
        Kid(child)
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A key prefix of this test run alone.
fn base(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("shmpool-test/{test}/{}-{nanos}", std::process::id())
}

/// A session listening on a free loopback port: the port is found by
/// binding port 0, then released for zenoh; another process may take it in
/// between, so a few ports are tried.
fn listening_session() -> (Session, u16) {
    let mut last = None;
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        match Session::builder().listen(format!("tcp/127.0.0.1:{port}")).secret(SECRET).open() {
            Ok(session) => return (session, port),
            Err(e) => last = Some(e),
        }
    }
    panic!("no free port to listen on: {last:?}");
}

/// Polls `done` every 5 ms until it holds or `bound` passes.
fn wait_until(bound: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

#[test]
fn a_frame_published_by_one_process_is_received_by_the_other() {
    if let Some(role) = role() {
        return run_child(&role);
    }
    let (session, port) = listening_session();
    let base = base("frames");
    let sub = session.subscribe(&format!("{base}/frames")).unwrap();
    let _kid = Kid::spawn("a_frame_published_by_one_process_is_received_by_the_other", "publisher", port, &base);
    let mut sender = None;
    for i in 0..FRAMES {
        let frame = sub.recv_timeout(BOUND).unwrap_or_else(|e| panic!("frame {i}: {e}"));
        assert_eq!(frame.key(), format!("{base}/frames"));
        assert_eq!(frame.payload(), payload(i), "frame {i}: in order and intact");
        assert_eq!(*sender.get_or_insert(frame.sender()), frame.sender(), "one sender");
    }
    let counts = sub.counts();
    assert_eq!((counts.delivered, sub.dropped()), (FRAMES, 0));
}

#[test]
fn frames_sealed_under_another_secret_are_dropped_and_counted() {
    if let Some(role) = role() {
        return run_child(&role);
    }
    let test = "frames_sealed_under_another_secret_are_dropped_and_counted";
    let (session, port) = listening_session();
    let base = base("liar");
    let sub = session.subscribe(&format!("{base}/frames")).unwrap();
    let liar = Kid::spawn(test, "liar", port, &base);
    assert!(wait_until(BOUND, || sub.dropped() >= LIES), "the liar's frames arrive: {:?}", sub.counts());
    // An honest peer on the same key after the liar: its frames, and only
    // those, are delivered.
    let _honest = Kid::spawn(test, "publisher", port, &base);
    for i in 0..FRAMES {
        let frame = sub.recv_timeout(BOUND).unwrap_or_else(|e| panic!("frame {i}: {e}"));
        assert_eq!(frame.payload(), payload(i), "frame {i}");
    }
    drop(liar);
    let counts = sub.counts();
    assert_eq!(counts.forged, LIES, "{counts:?}");
    assert_eq!((counts.delivered, counts.malformed, counts.replayed), (FRAMES, 0, 0), "{counts:?}");
    assert_eq!(session.dropped(), LIES);
    assert!(matches!(sub.try_recv(), Ok(None)), "nothing else delivered");
}

#[test]
fn the_token_of_a_sigkilled_peer_disappears() {
    if let Some(role) = role() {
        return run_child(&role);
    }
    let (session, port) = listening_session();
    let base = base("member");
    let watch = session.watch(&format!("{base}/members/*")).unwrap();
    let member = format!("{base}/members/child");
    let mut kid = Kid::spawn("the_token_of_a_sigkilled_peer_disappears", "member", port, &base);
    watch.wait_for(&Presence::Alive(member.clone()), BOUND).expect("the child's token");
    assert_eq!(session.alive(&format!("{base}/members/*"), Duration::from_secs(5)).unwrap(), vec![member.clone()]);

    kid.0.kill().expect("SIGKILL the child"); // Child::kill is SIGKILL on Unix
    let killed = Instant::now();
    kid.0.wait().unwrap();
    // Hang guard only: ARCHITECTURE measured ~2 ms over TCP.
    match watch.wait_for(&Presence::Gone(member.clone()), Duration::from_secs(5)) {
        Ok(()) => eprintln!("token gone {:?} after SIGKILL", killed.elapsed()),
        Err(NetError::TimedOut) => panic!("the dead child's token still alive after 5 s"),
        Err(e) => panic!("watch: {e}"),
    }
    assert!(session.alive(&format!("{base}/members/*"), Duration::from_secs(2)).unwrap().is_empty());
}

#[test]
fn open_refuses_without_secret_and_bad_endpoints() {
    if role().is_some() {
        return;
    }
    assert_eq!(Session::builder().listen("tcp/127.0.0.1:0").open().unwrap_err(), NetError::NoSecret);
    let err = Session::builder().connect("nonsense").secret(SECRET).open().unwrap_err();
    assert!(matches!(err, NetError::Endpoint { .. }), "{err:?}");
    let err = Session::builder().listen("tcp/\"x").secret(SECRET).open().unwrap_err();
    assert!(matches!(err, NetError::Endpoint { .. }), "{err:?}");
    // zenoh's own parse takes these; they would fail only when bound.
    for bad in ["tcp/127.0.0.1", "tcp/127.0.0.1:65536", "tcp/:7447", "udp/127.0.0.1:7447"] {
        let err = Session::builder().listen(bad).secret(SECRET).open().unwrap_err();
        assert!(matches!(&err, NetError::Endpoint { endpoint, .. } if endpoint == bad), "{bad}: {err:?}");
        let err = Session::builder().connect(bad).secret(SECRET).open().unwrap_err();
        assert!(matches!(&err, NetError::Endpoint { endpoint, .. } if endpoint == bad), "{bad}: {err:?}");
    }
}

#[test]
fn listening_on_a_port_in_use_is_a_typed_error() {
    if role().is_some() {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("tcp/127.0.0.1:{}", taken.local_addr().unwrap().port());
    match Session::builder().listen(&endpoint).secret(SECRET).open() {
        Err(NetError::Listen { endpoint: e, in_use: true, reason }) => {
            assert_eq!(e, endpoint);
            assert!(!reason.contains(".rs:"), "zenoh's source locations are left out: {reason}");
        }
        other => panic!("{other:?}"),
    }
    // Listening on another endpoint beside it, the failing one is named.
    let free = format!("tcp/127.0.0.1:{}", TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    match Session::builder().listen(&free).listen(&endpoint).secret(SECRET).open() {
        Err(NetError::Listen { endpoint: e, in_use: true, .. }) => assert_eq!(e, endpoint),
        other => panic!("{other:?}"),
    }
}

#[test]
fn connecting_to_nothing_fails_at_the_timeout() {
    if role().is_some() {
        return;
    }
    // A port nobody listens on (bound, then released).
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = Session::builder()
        .connect(format!("tcp/127.0.0.1:{port}"))
        .secret(SECRET)
        .connect_timeout(Duration::from_millis(300))
        .open()
        .unwrap_err();
    assert!(matches!(err, NetError::Open(_)), "{err:?}");
}

#[test]
fn without_listen_nothing_listens() {
    if let Some(role) = role() {
        return run_child(&role);
    }
    // In a child process of its own: other tests' sessions listen in this one.
    let mut kid = Kid::spawn("without_listen_nothing_listens", "quiet", 0, "unused");
    drop(kid.0.stdin.take());
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = kid.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the quiet child hangs");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "the quiet child failed: {status}");
}

/// Opens a session without `listen` and checks that this process then has
/// no listening TCP socket and no UDP socket (multicast scouting would bind
/// one), from /proc.
fn quiet_child() {
    assert!(listening_sockets().is_empty(), "before: {:?}", listening_sockets());
    let session = Session::builder().secret(SECRET).open().unwrap();
    // A session with no endpoints publishes and subscribes locally only.
    let sub = session.subscribe("shmpool-test/local/*").unwrap();
    session.publish("shmpool-test/local/x", b"here").unwrap();
    assert_eq!(sub.recv_timeout(BOUND).unwrap().payload(), b"here");
    assert!(session.peers().is_empty());
    let err = session.subscribe("bad//key").unwrap_err();
    assert!(matches!(err, NetError::KeyExpr { .. }), "{err:?}");
    assert!(listening_sockets().is_empty(), "after: {:?}", listening_sockets());
}

/// This process's listening TCP sockets and bound UDP sockets, as lines of
/// /proc/net/{tcp,tcp6,udp,udp6}.
fn listening_sockets() -> Vec<String> {
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut found = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(state), Some(inode)) = (fields.get(3), fields.get(9)) else { continue };
            let listening = table.starts_with("udp") || *state == "0A";
            if listening && inodes.contains(*inode) {
                found.push(format!("{table}: {line}"));
            }
        }
    }
    found
}
