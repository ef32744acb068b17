//! Services under hostile conditions: a client of another build, a service
//! dropped while a client of another process waits, oversize values,
//! clients killed while they hold a ring slot.

use std::io::{BufRead, BufReader, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shmpool::{Pool, Service, ServiceError};

use crate::common::wait_for;
use crate::watchdog::watchdog;

struct Tally(u64);

fn tally(start: u64) -> Tally {
    Tally(start)
}

fn add(t: &mut Tally, n: u64) -> u64 {
    t.0 += n;
    t.0
}

fn total(t: &Tally) -> u64 {
    t.0
}

fn echo(_: &mut Tally, v: Vec<u8>) -> Vec<u8> {
    v
}

fn zeros(_: &mut Tally, len: u64) -> Vec<u8> {
    vec![0; len as usize]
}

const CHILD_ENV: &str = "SHMPOOL_HOSTILE_SERVICE";

/// The other build's side of `a_client_of_another_build_is_refused`: a
/// no-op unless run by it.
#[test]
fn another_build_child() {
    let Ok(name) = std::env::var(CHILD_ENV) else { return };
    match Service::<Tally>::connect(&name) {
        Err(ServiceError::BuildMismatch { expected, found }) if expected != found => {
            println!("REFUSED expected={expected:#x} found={found:#x}");
        }
        other => panic!("a client of another build was not refused: {other:?}"),
    }
}

/// Finding 9: code offsets from a client of another build would make the
/// server jump to the wrong code. A copy of this test binary with one byte
/// of its GNU build id flipped is such a client: `connect` refuses it.
#[test]
fn a_client_of_another_build_is_refused() {
    let _w = watchdog("a_client_of_another_build_is_refused", Duration::from_secs(120));
    let name = format!("svchostile-build-{}", std::process::id());
    let service = Service::serve(&name, tally, 40u64).unwrap();

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
    let copy = std::env::temp_dir().join(format!("shmpool-other-build-{}", std::process::id()));
    std::fs::write(&copy, &image).unwrap();
    drop(image);
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut tries = 0;
    let out = loop {
        let run = Command::new(&copy)
            .args(["service::another_build_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &name)
            .output();
        match run {
            // Another thread of this process may be forking while it holds
            // the copy open for writing; it closes it at its exec.
            Err(e) if e.kind() == ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    let _ = std::fs::remove_file(&copy);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("REFUSED"),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("expected={:#x}", shmpool::build_id())), "{stdout}");
    // The server is unaffected.
    assert_eq!(service.clients(), 0, "the refused client holds no slot");
    let c = Service::<Tally>::connect(&name).unwrap();
    assert_eq!(c.call(add, 2), Ok(42));
}

static HOLDING: AtomicBool = AtomicBool::new(false);
static RELEASE: AtomicBool = AtomicBool::new(false);

fn hold(t: &mut Tally, n: u64) -> u64 {
    HOLDING.store(true, Ordering::SeqCst);
    while !RELEASE.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    t.0 += n;
    t.0
}

/// In a worker: connect, then call without a timeout; the outcome, printed.
fn call_once(name: String) -> String {
    let c = match Service::<Tally>::connect(&name) {
        Ok(c) => c,
        Err(e) => return format!("connect: {e:?}"),
    };
    format!("{:?}", c.call(add, 1))
}

/// A service dropped while a client of another process waits (its serving
/// thread ends): the client gets `Stopped`, not a wait for ever.
#[test]
fn a_service_dropped_while_another_process_waits() {
    let _w = watchdog("a_service_dropped_while_another_process_waits", Duration::from_secs(120));
    let name = format!("svchostile-dropped-{}", std::process::id());
    let service = Service::serve(&name, tally, 0u64).unwrap();
    let pool = Pool::builder().workers(1).build().unwrap();
    let busy = Service::<Tally>::connect(&name).unwrap();
    std::thread::scope(|scope| {
        let running = scope.spawn(|| busy.call(hold, 5));
        assert!(wait_for(|| HOLDING.load(Ordering::SeqCst)));
        let waiting = pool.submit(call_once, name.clone()).unwrap();
        assert!(wait_for(|| service.clients() == 2), "the worker did not connect");
        std::thread::sleep(Duration::from_millis(300)); // let its call queue
        let releaser = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            RELEASE.store(true, Ordering::SeqCst);
        });
        drop(service);
        releaser.join().unwrap();
        assert_eq!(running.join().unwrap(), Ok(5));
        assert_eq!(waiting.wait().unwrap(), "Err(Stopped)");
    });
    assert_eq!(busy.get(total), Err(ServiceError::Stopped));
    assert_eq!(Service::<Tally>::connect(&name).unwrap_err(), ServiceError::NotFound(name.clone()));
}

/// Values larger than the whole segment: a typed error on the side that
/// could not archive them, and the service goes on.
#[test]
fn oversize_values_are_typed_errors() {
    let _w = watchdog("oversize_values_are_typed_errors", Duration::from_secs(120));
    let name = format!("svchostile-oversize-{}", std::process::id());
    let _s = Service::serve(&name, tally, 0u64).unwrap();
    let c = Service::<Tally>::connect(&name).unwrap();
    let huge = 80usize << 20;
    let r = c.call(echo, vec![7u8; huge]);
    assert!(matches!(r, Err(ServiceError::Encode(_))), "{:?}", r.map(|v| v.len()));
    let r = c.call(zeros, huge as u64);
    assert!(matches!(r, Err(ServiceError::Encode(_))), "{:?}", r.map(|v| v.len()));
    let big = vec![3u8; 8 << 20];
    assert_eq!(c.call(echo, big.clone()), Ok(big), "the service goes on");
    assert_eq!(c.call(add, 1), Ok(1));
}

const PAUSE_ENV: &str = "SHMPOOL_HOSTILE_SERVICE_PAUSE";

/// The pause hook of `paused_client_child`: at the point named in its
/// environment (`name/point`), say so and sleep until killed.
fn pause_forever(point: &'static str) {
    if std::env::var(PAUSE_ENV).is_ok_and(|v| v.rsplit('/').next() == Some(point)) {
        println!("PAUSED {point}");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The client side of the kill tests below: a no-op unless run by them.
/// It connects and calls, and stops (for good) at the pause point.
#[test]
fn paused_client_child() {
    let Ok(v) = std::env::var(PAUSE_ENV) else { return };
    let (name, _) = v.rsplit_once('/').unwrap();
    shmpool::service::set_pause_hook(pause_forever);
    let c = Service::<Tally>::connect(name).unwrap();
    let r = c.call(add, 1);
    panic!("the client did not stop at its pause point: {r:?}");
}

/// Runs a client process of the service `name` that stops at `point`
/// holding a ring claim, and SIGKILLs it there.
fn kill_client_at(name: &str, point: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["service::paused_client_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(PAUSE_ENV, format!("{name}/{point}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let paused = out.lines().any(|l| l.is_ok_and(|l| l.contains(&format!("PAUSED {point}"))));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(paused, "the client never reached {point}");
}

/// Finding: a client killed between claiming a request slot and publishing
/// it left the slot claimed for ever, and the server's pop waited on it:
/// no other client's call was answered again.
#[test]
fn a_client_killed_holding_a_request_slot_does_not_wedge_the_service() {
    let _w = watchdog("a_client_killed_holding_a_request_slot_does_not_wedge_the_service", Duration::from_secs(120));
    let name = format!("svchostile-killreq-{}", std::process::id());
    let service = Service::serve(&name, tally, 0u64).unwrap();
    kill_client_at(&name, "service-request");
    let c = Service::<Tally>::connect(&name).unwrap();
    for i in 1..=3 {
        // The killed client's call never ran: its slot was published empty.
        assert_eq!(c.call_timeout(add, 1, Duration::from_secs(20)), Ok(i));
    }
    assert!(wait_for(|| service.clients() == 1), "the dead client's slot was not freed");
}

/// Finding: a client killed while taking an answer left that slot of its
/// response ring claimed for ever: the next client of the slot got no
/// answer once the server came round to it again (a lap of the ring later).
#[test]
fn a_client_killed_holding_an_answer_slot_does_not_wedge_its_slot() {
    let _w = watchdog("a_client_killed_holding_an_answer_slot_does_not_wedge_its_slot", Duration::from_secs(120));
    let name = format!("svchostile-killans-{}", std::process::id());
    let service = Service::serve(&name, tally, 0u64).unwrap();
    kill_client_at(&name, "service-answer");
    assert!(wait_for(|| service.clients() == 0), "the dead client's slot was not freed");
    // The first free slot, the dead client's: more than two laps of its ring.
    let c = Service::<Tally>::connect(&name).unwrap();
    for i in 2..=150 {
        assert_eq!(c.call_timeout(add, 1, Duration::from_secs(20)), Ok(i));
    }
}
