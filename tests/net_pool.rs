//! Pools across hosts (feature `net`), on loopback: members that join a
//! listening pool run its tasks; a member killed mid-map loses nothing and
//! a new one takes over; a member with the wrong secret is never admitted;
//! a pool without local workers waits for a member; a member's `join`
//! returns when the pool closes; the members are listed by the pool, by a
//! status request from another process (only under the pool's secret) and
//! by `shmpool-admin members`; a listen that cannot bind is a typed error.
//! Members are this test binary re-executed (std::process::Command) with a
//! role, as a program on another host would be the same binary.
#![cfg(feature = "net")]

use std::collections::HashSet;
use std::time::{Duration, Instant};

#[path = "common/procs.rs"]
mod procs;
#[path = "common/watchdog.rs"]
mod watchdog;
use procs::{say, Proc};
use watchdog::watchdog;

const KEY: &[u8] = b"the shared secret of these tests";
const WAIT: Duration = Duration::from_secs(20);
const LIMIT: Duration = Duration::from_secs(120);

/// The square of `x`, and the pid of the process that computed it.
fn square_where(x: u64) -> (u64, u32) {
    (x * x, std::process::id())
}

/// `square_where`, a millisecond a task (so that a map is still running
/// when a member is killed).
fn slow_square_where(x: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(1));
    square_where(x)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn endpoint(port: u16) -> String {
    format!("tcp/127.0.0.1:{port}")
}

#[test]
fn child_role() {
    let Some((role, args)) = procs::role() else { return };
    match role.as_str() {
        "member" => {
            // args: endpoint, [secret], [workers]
            let secret = args.get(1).map_or(KEY.to_vec(), |s| s.as_bytes().to_vec());
            let workers = args.get(2).map_or(1, |n| n.parse().unwrap());
            say("STARTED");
            match shmpool::net::join(&args[0], workers, secret) {
                Ok(r) => say(&format!("DONE {}", r.tasks)),
                Err(e) => say(&format!("ERR {e:?}")),
            }
        }
        "listen-errors" => listen_errors(),
        other => panic!("unknown role {other}"),
    }
}

/// Submits tasks until one is answered by a process that is neither this
/// one nor a local worker: a member has joined.
fn wait_for_a_member(pool: &shmpool::Pool) -> u32 {
    let local: HashSet<u32> = pool.worker_pids().into_iter().chain([std::process::id()]).collect();
    let until = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < until, "no member joined within {WAIT:?}");
        let pids: Vec<u32> = pool.map(square_where, 0..64u64).unwrap().map(|r| r.unwrap().1).collect();
        if let Some(p) = pids.into_iter().find(|p| !local.contains(p)) {
            return p;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_map_runs_across_local_and_remote_workers_in_order() {
    let _w = watchdog("net: map across local and remote workers", LIMIT);
    let port = free_port();
    let pool = shmpool::Pool::builder().workers(1).listen(&endpoint(port)).secret(KEY).build().unwrap();
    let mut member = Proc::spawn("member", &[&endpoint(port)]);
    member.expect("STARTED", WAIT);
    let remote = wait_for_a_member(&pool);
    let mut by_remote = 0u64;
    for (x, r) in pool.map(square_where, 0..100_000u64).unwrap().enumerate() {
        let (sq, pid) = r.unwrap();
        assert_eq!(sq, (x as u64) * (x as u64), "result {x}");
        by_remote += u64::from(pid == remote);
    }
    assert!(by_remote > 0, "the member ran none of the 100,000 tasks");
    drop(pool);
    let done = member.expect("DONE", WAIT);
    let ran: u64 = done.parse().unwrap();
    // It counts tasks (a map sends items in groups), the results count items.
    assert!(ran > 0 && ran <= by_remote, "the member says it ran {ran} tasks, {by_remote} results came from it");
    member.wait_ok(WAIT);
}

#[test]
fn a_member_killed_mid_map_loses_nothing() {
    let _w = watchdog("net: a member killed mid-map", LIMIT);
    let port = free_port();
    let pool = shmpool::Pool::builder().workers(1).listen(&endpoint(port)).secret(KEY).build().unwrap();
    let mut member = Proc::spawn("member", &[&endpoint(port)]);
    member.expect("STARTED", WAIT);
    let remote = wait_for_a_member(&pool);
    let mut killed = false;
    let mut seen_remote = 0;
    for (x, r) in pool.map(slow_square_where, 0..3000u64).unwrap().enumerate() {
        let (sq, pid) = r.unwrap_or_else(|e| panic!("task {x}: {e}"));
        assert_eq!(sq, (x as u64) * (x as u64), "result {x}");
        if pid == remote {
            seen_remote += 1;
            if seen_remote == 20 && !killed {
                member.kill();
                killed = true;
            }
        }
    }
    assert!(killed, "the member answered fewer than 20 tasks before the map ended");
    // The dead one is no longer a member.
    let until = Instant::now() + WAIT;
    while !pool.members().is_empty() {
        assert!(Instant::now() < until, "the killed member is still listed: {:?}", pool.members());
        std::thread::sleep(Duration::from_millis(10));
    }
    // A new member joins and works.
    let again = Proc::spawn("member", &[&endpoint(port)]);
    again.expect("STARTED", WAIT);
    let newcomer = wait_for_a_member(&pool);
    assert_ne!(newcomer, remote);
    let mut by_newcomer = 0u64;
    for (x, r) in pool.map(slow_square_where, 0..2000u64).unwrap().enumerate() {
        let (sq, pid) = r.unwrap_or_else(|e| panic!("task {x} after the newcomer joined: {e}"));
        assert_eq!(sq, (x as u64) * (x as u64), "result {x}");
        by_newcomer += u64::from(pid == newcomer);
    }
    assert!(by_newcomer > 0, "the new member ran none of 2000 tasks");
    let members = pool.members();
    assert_eq!(members.len(), 1, "{members:?}");
    assert!(members[0].answered > 0, "{members:?}");
    drop(pool);
    let ran: u64 = again.expect("DONE", WAIT).parse().unwrap();
    assert!(ran > 0, "the new member says it ran no task");
}

#[test]
fn a_member_with_another_secret_is_never_admitted() {
    let _w = watchdog("net: wrong secret", LIMIT);
    let port = free_port();
    let pool = shmpool::Pool::builder().workers(1).listen(&endpoint(port)).secret(KEY).build().unwrap();
    let mut member = Proc::spawn("member", &[&endpoint(port), "not the secret"]);
    member.expect("STARTED", WAIT);
    let answer = member.expect("ERR", Duration::from_secs(30));
    assert!(answer.contains("TimedOut"), "{answer}");
    // Meanwhile every task ran here.
    let local: HashSet<u32> = pool.worker_pids().into_iter().collect();
    for r in pool.map(square_where, 0..1000u64).unwrap() {
        assert!(local.contains(&r.unwrap().1));
    }
    member.wait_ok(WAIT);
}

#[test]
fn a_pool_without_local_workers_waits_for_a_member() {
    let _w = watchdog("net: workers(0)", LIMIT);
    let port = free_port();
    let pool = shmpool::Pool::builder().workers(0).listen(&endpoint(port)).secret(KEY).build().unwrap();
    assert!(shmpool::Pool::builder().workers(0).build().is_err(), "workers(0) without listen stays an error");
    let ticket = pool.submit(square_where, 12u64).unwrap();
    // Nobody to run it yet: it waits, it does not fail.
    let ticket = match ticket.wait_timeout(Duration::from_millis(300)) {
        Ok(r) => panic!("answered with no worker anywhere: {r:?}"),
        Err(t) => t,
    };
    let mut member = Proc::spawn("member", &[&endpoint(port)]);
    member.expect("STARTED", WAIT);
    let (sq, pid) = ticket.wait().unwrap();
    assert_eq!(sq, 144);
    assert_ne!(pid, std::process::id());
    let squares: Vec<u64> = pool.map(square_where, 0..10_000u64).unwrap().map(|r| r.unwrap().0).collect();
    assert_eq!(squares, (0..10_000u64).map(|x| x * x).collect::<Vec<_>>());
    drop(pool);
    member.expect("DONE", WAIT);
    member.wait_ok(WAIT);
}

/// A member of another build (a copy of this test binary with one byte of
/// its GNU build id flipped) is refused with a typed error: code offsets
/// would name other code there.
#[test]
fn a_member_of_another_build_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let _w = watchdog("net: another build", LIMIT);
    let port = free_port();
    let _pool = shmpool::Pool::builder().workers(1).listen(&endpoint(port)).secret(KEY).build().unwrap();
    let id = shmpool::service::gnu_build_id_bytes().expect("the linker here writes a GNU build id");
    let mut image = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let mut flipped = 0;
    let mut i = 0;
    while let Some(at) = image[i..].windows(id.len()).position(|w| w == id.as_slice()) {
        image[i + at + id.len() - 1] ^= 0xff;
        flipped += 1;
        i += at + id.len();
    }
    assert!(flipped >= 1, "the build id was not found in the binary");
    let copy = std::env::temp_dir().join(format!("shmpool-net-other-build-{}", std::process::id()));
    std::fs::write(&copy, &image).unwrap();
    drop(image);
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut tries = 0;
    let out = loop {
        let run = std::process::Command::new(&copy)
            .args(["--exact", procs::ENTRY, "--nocapture", "--test-threads=1"])
            .env("SHMPOOL_TEST_CHILD_ROLE", format!("member\u{1f}{}", endpoint(port)))
            .stdin(std::process::Stdio::null())
            .output();
        match run {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    let _ = std::fs::remove_file(&copy);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ERR Refused"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("owner_build: {}", shmpool::build_id())), "{stdout}");
}

#[path = "common/capture.rs"]
mod capture;

/// A task that logs where it ran.
fn loud(x: u64) -> u64 {
    log::warn!(target: "netlog", "task {x} in process {}", std::process::id());
    x
}

#[test]
fn a_members_log_records_reach_the_owners_logger() {
    let _w = watchdog("net: members' logs", LIMIT);
    let _ = log::set_logger(&capture::CAPTURE);
    log::set_max_level(log::LevelFilter::Info);
    let port = free_port();
    // No local worker: every task runs on the member.
    let pool = shmpool::Pool::builder().workers(0).listen(&endpoint(port)).secret(KEY).build().unwrap();
    let member = Proc::spawn("member", &[&endpoint(port)]);
    member.expect("STARTED", WAIT);
    let got: Vec<u64> = pool.map(loud, 0..20u64).unwrap().map(Result::unwrap).collect();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    let until = Instant::now() + WAIT;
    loop {
        let remote: Vec<String> = capture::CAPTURE
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(target, message)| target == "netlog" && message.contains("[member "))
            .map(|(_, m)| m.clone())
            .collect();
        if remote.len() >= 20 {
            assert!(remote.iter().any(|m| m.contains("task 7 in process")), "{remote:?}");
            break;
        }
        assert!(Instant::now() < until, "only {} of 20 records of the member's tasks came: {remote:?}", remote.len());
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(pool);
    member.expect("DONE", WAIT);
}

/// Waits until `pool` lists `n` members.
fn wait_for_members(pool: &shmpool::Pool, n: usize) -> Vec<shmpool::net::MemberInfo> {
    let until = Instant::now() + WAIT;
    loop {
        let members = pool.members();
        if members.len() == n {
            return members;
        }
        assert!(Instant::now() < until, "{} members listed, not {n}: {members:?}", members.len());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn members_are_listed_by_the_pool_and_by_a_status_request() {
    let _w = watchdog("net: members listed", LIMIT);
    let port = free_port();
    let ep = endpoint(port);
    let pool = shmpool::Pool::builder().workers(1).listen(&ep).secret(KEY).build().unwrap();
    assert!(pool.members().is_empty());
    assert!(shmpool::net::members(&ep, KEY, WAIT).unwrap().is_empty(), "members before any joined");
    let started = std::time::SystemTime::now();
    let mut member = Proc::spawn("member", &[&ep, std::str::from_utf8(KEY).unwrap(), "2"]);
    member.expect("STARTED", WAIT);
    wait_for_a_member(&pool);
    let here = wait_for_members(&pool, 1);
    let m = &here[0];
    assert_eq!(m.workers, 2, "{m:?}");
    assert!(m.answered > 0, "{m:?}");
    assert!(m.joined >= started - Duration::from_secs(1), "{m:?}");
    assert!(!m.session.is_empty() && m.session.chars().all(|c| c.is_ascii_hexdigit()), "{m:?}");
    // The same list through the relay, as another process would ask.
    let asked = shmpool::net::members(&ep, KEY, WAIT).unwrap();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let a = &asked[0];
    assert_eq!((a.id, a.workers, &a.session, a.joined), (m.id, 2, &m.session, m.joined), "{a:?} vs {m:?}");
    assert!(a.answered >= m.answered && a.member_for >= m.member_for, "{a:?} vs {m:?}");
    // Another secret: the request does not verify, nothing answers.
    let t = Instant::now();
    let wrong = shmpool::net::members(&ep, b"not the secret", Duration::from_secs(2));
    assert_eq!(wrong, Err(shmpool::net::NetError::TimedOut));
    assert!(t.elapsed() >= Duration::from_secs(2) - Duration::from_millis(50), "gave up early: {:?}", t.elapsed());
    // Nothing listening there: the session cannot connect.
    let nowhere = shmpool::net::members(&endpoint(free_port()), KEY, Duration::from_millis(500));
    assert!(matches!(nowhere, Err(shmpool::net::NetError::Open(_))), "{nowhere:?}");
    // The member goes: the list empties.
    member.kill();
    wait_for_members(&pool, 0);
    assert!(shmpool::net::members(&ep, KEY, WAIT).unwrap().is_empty());
}

/// `shmpool-admin members` (built with this feature): one line per member
/// under the right secret, from the environment or a file; a clear error
/// and a failing exit status under another; never a secret argument.
#[test]
fn shmpool_admin_lists_the_members() {
    let _w = watchdog("net: shmpool-admin members", LIMIT);
    let admin = env!("CARGO_BIN_EXE_shmpool-admin");
    let port = free_port();
    let ep = endpoint(port);
    let pool = shmpool::Pool::builder().workers(0).listen(&ep).secret(KEY).build().unwrap();
    let member = Proc::spawn("member", &[&ep]);
    member.expect("STARTED", WAIT);
    let id = wait_for_members(&pool, 1)[0].id;
    let run = |env: Option<&[u8]>, extra: &[&str]| {
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = std::process::Command::new(admin);
        cmd.args(["members", &ep, "--timeout", "10"]).args(extra).env_remove("SHMPOOL_SECRET");
        if let Some(secret) = env {
            cmd.env("SHMPOOL_SECRET", std::ffi::OsStr::from_bytes(secret));
        }
        let out = cmd.output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, stdout, stderr) = run(Some(KEY), &[]);
    assert!(status.success(), "{status}: {stdout}{stderr}");
    assert!(stdout.contains("1 member"), "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with(&format!("{id:016x}"))).unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(line.split_whitespace().nth(1), Some("1"), "workers column: {line}");
    // From a file, with the newline an editor leaves.
    let file = std::env::temp_dir().join(format!("shmpool-admin-secret-{}", std::process::id()));
    std::fs::write(&file, [KEY, b"\n"].concat()).unwrap();
    let (status, stdout, stderr) = run(None, &["--secret-file", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(status.success(), "{status}: {stdout}{stderr}");
    assert!(stdout.contains(&format!("{id:016x}")), "{stdout}");
    // Another secret: no answer, said plainly, exit status 1.
    let (status, stdout, stderr) = run(Some(b"not the secret"), &["--timeout", "1"]);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("no answer") && stderr.contains("another secret"), "{stderr}");
    // No secret at all, or one on the command line: refused, exit status 2.
    let (status, _, stderr) = run(None, &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("SHMPOOL_SECRET"), "{stderr}");
    let (status, _, stderr) = run(None, &["--secret", "x"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("never taken on the command line"), "{stderr}");
    drop(pool);
    member.expect("DONE", WAIT);
}

/// Threads of this process now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Child processes of this process now.
fn children() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("children")).unwrap_or_default())
        .map(|c| c.split_whitespace().count())
        .sum()
}

/// A listen that cannot bind fails `build` with a typed error, spawning
/// no worker and leaving no thread behind. Run in a child process of its
/// own (the role below), where no other test's threads come and go.
#[test]
fn a_listen_that_cannot_bind_is_a_typed_error() {
    let _w = watchdog("net: listen errors", LIMIT);
    let mut child = Proc::spawn("listen-errors", &[]);
    child.expect("OK", LIMIT);
    child.wait_ok(WAIT);
}

fn listen_errors() {
    use shmpool::net::NetError;
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = endpoint(holder.local_addr().unwrap().port());
    let build = |ep: &str| shmpool::Pool::builder().workers(1).listen(ep).secret(KEY).build();
    let attempt = || {
        match build(&taken) {
            Err(shmpool::Error::Net(NetError::Listen { endpoint, in_use: true, .. })) => assert_eq!(endpoint, taken),
            other => panic!("listen on a port in use: {other:?}"),
        }
        for bad in
            ["127.0.0.1:7447", "tcp/127.0.0.1", "tcp/127.0.0.1:99999", "tcp/:7447", "udp/127.0.0.1:7447", "tcp/\"x:1"]
        {
            match build(bad) {
                Err(shmpool::Error::Net(NetError::Endpoint { endpoint, .. })) => assert_eq!(endpoint, bad),
                other => panic!("listen on {bad:?}: {other:?}"),
            }
        }
        // An address of no interface here (TEST-NET-1, RFC 5737).
        match build("tcp/192.0.2.1:7447") {
            Err(shmpool::Error::Net(NetError::Listen { in_use: false, .. })) => {}
            other => panic!("listen on another host's address: {other:?}"),
        }
    };
    // The first failure starts zenoh's runtime (its threads live as long
    // as the process); later ones must add nothing to it.
    attempt();
    std::thread::sleep(Duration::from_millis(200));
    let before = threads();
    for _ in 0..5 {
        attempt();
        assert_eq!(children(), 0, "a failed build started a worker");
    }
    let until = Instant::now() + Duration::from_secs(30);
    while threads() > before {
        assert!(Instant::now() < until, "{} threads before, {} after five more failed builds", before, threads());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The error says what happened.
    let err = build(&taken).unwrap_err().to_string();
    assert!(err.contains("already in use") && err.contains(&taken), "{err}");
    drop(holder);
    say("OK");
}
