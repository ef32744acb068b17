//! Values across hosts (feature `net`, on loopback): a value one side of
//! a remote pool has no room for is an error its caller hears, not a hang.
//! Members are this test binary re-executed with a role.
#![cfg(feature = "net")]

use std::time::Duration;

#[path = "common/procs.rs"]
mod procs;
#[path = "common/values.rs"]
#[allow(dead_code)]
mod values;
#[path = "common/watchdog.rs"]
mod watchdog;
use procs::{say, Proc};
use watchdog::watchdog;

const KEY: &[u8] = b"the secret of the network property tests";
const WAIT: Duration = Duration::from_secs(60);
const LIMIT: Duration = Duration::from_secs(600);
/// What the arguments and results are salted with.
const ARG: u64 = 0xA;
const RESULT: u64 = 0xB;

/// `len` bytes whose content follows from `len` and `salt` alone.
fn pattern(len: usize, salt: u64) -> Vec<u8> {
    values::bytes(len, (len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt)
}

/// Where `got` first differs from `pattern(got.len(), salt)`, if anywhere.
fn first_difference(got: &[u8], salt: u64) -> Option<usize> {
    let want = pattern(got.len(), salt);
    got.iter().zip(&want).position(|(a, b)| a != b)
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
        other => panic!("unknown role {other}"),
    }
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
