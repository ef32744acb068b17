//! Property tests: service requests and answers of random lengths, from
//! empty through several ring slots to arena blocks of many size classes
//! (~300 KiB), with random content, arrive intact (or as a typed error).

#[path = "common/watchdog.rs"]
mod watchdog;

#[path = "common/values.rs"]
mod values;
use std::time::Duration;
use values::{bytes, lengths, text};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use shmpool::{Service, ServiceError};

use watchdog::watchdog;

struct Echo;

fn echo(_: ()) -> Echo {
    Echo
}

fn echo_bytes(_: &mut Echo, v: Vec<u8>) -> Vec<u8> {
    v
}

fn echo_string(_: &mut Echo, s: String) -> String {
    s
}

/// An answer of another length than the request: `len` bytes from `seed`.
fn make_bytes(_: &mut Echo, (len, seed): (u64, u64)) -> Vec<u8> {
    bytes(len as usize, seed)
}

fn intact<T: PartialEq + std::fmt::Debug>(got: Result<T, ServiceError>, want: T) -> Result<(), TestCaseError> {
    match got {
        Ok(v) => prop_assert_eq!(v, want),
        // Typed errors that say what happened are acceptable; others not.
        Err(ServiceError::Encode(_)) => {}
        Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
    }
    Ok(())
}

#[test]
fn requests_and_answers_of_any_length_arrive_intact() {
    let _w = watchdog("requests_and_answers_of_any_length_arrive_intact", Duration::from_secs(120));
    let name = format!("svcprops-{}", std::process::id());
    let _s = Service::serve(&name, echo, ()).unwrap();
    let c = Service::<Echo>::connect(&name).unwrap();
    let limit = Duration::from_secs(30);
    let mut runner = TestRunner::new(Config { cases: 400, failure_persistence: None, ..Config::default() });
    let cases = (lengths(), lengths(), any::<u64>());
    runner
        .run(&cases, |(a, b, seed)| {
            let v = bytes(a, seed);
            intact(c.call_timeout(echo_bytes, v.clone(), limit), v)?;
            let s = text(b, seed);
            intact(c.call_timeout(echo_string, s.clone(), limit), s)?;
            intact(c.call_timeout(make_bytes, (b as u64, seed), limit), bytes(b, seed))?;
            Ok(())
        })
        .unwrap();
}
