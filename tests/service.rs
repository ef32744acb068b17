//! Named services: one process serves an object, other processes connect by
//! name; client deaths free their slots, a server death is an error.

mod common;
#[path = "common/watchdog.rs"]
mod watchdog;

use common::wait_for;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use watchdog::watchdog;

use shmpool::{Pool, Segment, Service, ServiceError};

struct Tally {
    total: u64,
}

fn tally(start: u64) -> Tally {
    Tally { total: start }
}

fn add(t: &mut Tally, n: u64) -> u64 {
    t.total += n;
    t.total
}

fn total(t: &Tally) -> u64 {
    t.total
}

fn boom(_: &mut Tally, _: ()) -> u64 {
    panic!("service call failed")
}

/// In a worker: connect and add 1 `times` times.
fn client(args: (String, u64)) -> u64 {
    let c = Service::<Tally>::connect(&args.0).unwrap();
    for _ in 0..args.1 {
        c.call(add, 1).unwrap();
    }
    args.1
}

/// In a worker: connect, then die without a goodbye.
fn connect_and_die(name: String) -> u64 {
    let c = Service::<Tally>::connect(&name).unwrap();
    std::mem::forget(c);
    std::process::exit(0)
}

/// In a worker: serve, then wait to be killed.
fn serve_forever(name: String) -> u64 {
    let _s = Service::serve(&name, tally, 100u64).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn many_client_processes_call_one_served_object() {
    let name = format!("svctest-many-{}", std::process::id());
    let service = Service::serve(&name, tally, 0u64).unwrap();
    let pool = Pool::builder().workers(3).build().unwrap();
    let tickets: Vec<_> = (0..3).map(|_| pool.submit(client, (name.clone(), 500)).unwrap()).collect();
    for t in tickets {
        assert_eq!(t.wait(), Ok(500));
    }
    let me = Service::<Tally>::connect(&name).unwrap();
    assert_eq!(me.get(total), Ok(1500));
    assert!(matches!(me.call(boom, ()), Err(ServiceError::Panicked { .. })));
    assert_eq!(me.call(add, 1), Ok(1501), "the object lives on after a panicking call");
    drop(me);
    drop(service);
    assert!(matches!(Service::<Tally>::connect(&name), Err(ServiceError::NotFound(_))));
}

#[test]
fn a_dead_client_frees_its_slot() {
    let name = format!("svctest-client-{}", std::process::id());
    let service = Service::serve(&name, tally, 0u64).unwrap();
    let pool = Pool::builder().workers(1).build().unwrap();
    let _ = pool.submit(connect_and_die, name.clone()).unwrap().wait();
    assert!(wait_for(|| service.clients() == 0), "the dead client's slot was not freed");
}

#[test]
fn a_dead_server_is_an_error_for_its_clients() {
    let name = format!("svctest-server-{}", std::process::id());
    let pool = Pool::builder().workers(1).build().unwrap();
    let _serving = pool.submit(serve_forever, name.clone()).unwrap();
    let mut connected = None;
    assert!(wait_for(|| {
        connected = Service::<Tally>::connect(&name).ok();
        connected.is_some()
    }));
    let c = connected.unwrap();
    assert_eq!(c.call(add, 1), Ok(101));
    pool.terminate(); // kill -9 the server
    assert!(matches!(c.call(add, 1), Err(ServiceError::ServerDead { .. })));
    drop(c);
    // The killed server could not remove its name: creating it again finds
    // the stale segment (dead creator), replaces it, and drops it.
    drop(Segment::create(&format!("svc.{name}"), 1 << 20).unwrap());
}

#[test]
fn wrong_names_and_types_are_errors() {
    let name = format!("svctest-types-{}", std::process::id());
    assert!(matches!(Service::<Tally>::connect(&name), Err(ServiceError::NotFound(_))));
    let _s = Service::serve(&name, tally, 0u64).unwrap();
    assert!(matches!(Service::<String>::connect(&name), Err(ServiceError::TypeMismatch(_))));
    let again = Service::serve(&name, tally, 0u64);
    assert!(matches!(again, Err(ServiceError::AlreadyServed(n)) if n == name), "a name is served once");
}

struct Echo;

fn echo(_: ()) -> Echo {
    Echo
}

fn echo_string(_: &mut Echo, s: String) -> String {
    s
}

fn echo_bytes(_: &mut Echo, v: Vec<u8>) -> Vec<u8> {
    v
}

fn string_of(_: &mut Echo, len: u64) -> String {
    text(len as usize)
}

fn text(len: usize) -> String {
    (0..len).map(|i| (b'a' + ((i * 7 + len) % 26) as u8) as char).collect()
}

/// Issue #10: a value archiving to a little under the slot's payload
/// panicked the serving thread (its receive buffer was a literal size).
#[test]
fn values_of_every_length_around_the_slot_arrive_intact() {
    let _w = watchdog("values_of_every_length_around_the_slot_arrive_intact", Duration::from_secs(240));
    let name = format!("svctest-lengths-{}", std::process::id());
    let _s = Service::serve(&name, echo, ()).unwrap();
    let c = Service::<Echo>::connect(&name).unwrap();
    let limit = Duration::from_secs(20);
    let lengths = (0..=2000usize).chain([100 << 10, (100 << 10) + 1, 100 * 1000]);
    for len in lengths {
        let s = text(len);
        assert_eq!(c.call_timeout(echo_string, s.clone(), limit), Ok(s), "String of {len} bytes");
        let v: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        assert_eq!(c.call_timeout(echo_bytes, v.clone(), limit), Ok(v), "Vec<u8> of {len} bytes");
        assert_eq!(c.call_timeout(string_of, len as u64, limit), Ok(text(len)), "answer of {len} bytes");
    }
}

fn slow(_: &mut Tally, n: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    n
}

fn fast(_: &mut Tally, n: u64) -> u64 {
    n
}

/// Finding 6: a slot reused after a timed-out call restarted its sequence,
/// so the new client took the old client's late answer for its own.
#[test]
fn a_reused_slot_never_takes_a_late_answer_for_its_own() {
    let _w = watchdog("a_reused_slot_never_takes_a_late_answer_for_its_own", Duration::from_secs(60));
    let name = format!("svctest-reuse-{}", std::process::id());
    let _s = Service::serve(&name, tally, 0u64).unwrap();
    let old = Service::<Tally>::connect(&name).unwrap();
    assert_eq!(old.call_timeout(slow, 111, Duration::from_millis(20)), Err(ServiceError::Timeout));
    drop(old);
    let new = Service::<Tally>::connect(&name).unwrap();
    assert_eq!(new.call(fast, 222), Ok(222));
    assert_eq!(new.call(fast, 333), Ok(333));
}

static HOLDING: AtomicBool = AtomicBool::new(false);
static RELEASE: AtomicBool = AtomicBool::new(false);

fn hold(_: &mut Tally, n: u64) -> u64 {
    HOLDING.store(true, Ordering::SeqCst);
    while !RELEASE.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    n
}

/// Finding 7: a request still queued when its `Service` was dropped was
/// never answered: `call` waited for ever (the server process lived on).
#[test]
fn a_request_queued_when_the_service_is_dropped_gets_an_error() {
    let _w = watchdog("a_request_queued_when_the_service_is_dropped_gets_an_error", Duration::from_secs(120));
    let name = format!("svctest-dropped-{}", std::process::id());
    let service = Service::serve(&name, tally, 0u64).unwrap();
    let busy = Service::<Tally>::connect(&name).unwrap();
    let queued = Service::<Tally>::connect(&name).unwrap();
    std::thread::scope(|scope| {
        let running = scope.spawn(|| busy.call(hold, 7));
        assert!(wait_for(|| HOLDING.load(Ordering::SeqCst)));
        let waiting = scope.spawn(|| queued.call_timeout(fast, 8, Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(200)); // let it queue (either way it must fail)
        let releaser = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            RELEASE.store(true, Ordering::SeqCst);
        });
        drop(service);
        releaser.join().unwrap();
        assert_eq!(running.join().unwrap(), Ok(7), "the running call is answered");
        let r = waiting.join().unwrap();
        assert!(matches!(r, Err(ServiceError::Stopped)), "a queued call fails at once: {r:?}");
    });
    assert!(matches!(queued.call(fast, 9), Err(ServiceError::Stopped)));
}

#[test]
fn a_timeout_of_duration_max_means_no_deadline() {
    let _w = watchdog("a_timeout_of_duration_max_means_no_deadline", Duration::from_secs(60));
    let name = format!("svctest-max-{}", std::process::id());
    let _s = Service::serve(&name, tally, 5u64).unwrap();
    let c = Service::<Tally>::connect(&name).unwrap();
    assert_eq!(c.call_timeout(add, 1, Duration::MAX), Ok(6));
}

#[test]
fn reads_have_a_timed_form() {
    let _w = watchdog("reads_have_a_timed_form", Duration::from_secs(60));
    let name = format!("svctest-get-{}", std::process::id());
    let _s = Service::serve(&name, tally, 3u64).unwrap();
    let c = Service::<Tally>::connect(&name).unwrap();
    assert_eq!(c.get_timeout(total, Duration::from_secs(30)), Ok(3));
    assert_eq!(c.get_timeout(total, Duration::MAX), Ok(3));
}
