//! Named services: one process serves an object, other processes connect by
//! name; client deaths free their slots, a server death is an error.

mod common;

use common::wait_for;
use std::time::Duration;

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
    assert!(Service::serve(&name, tally, 0u64).is_err(), "a name is served once");
}
