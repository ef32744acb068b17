//! Property tests: values of every size class cross a topic and a queue
//! intact (or fail with a typed error), never a crash or a hang.
//!
//! Lengths come from `common/values.rs`: dense below a few KiB, every arena
//! size class (including the move to the large-block heap at 64 KiB) and
//! anything up to ~300 KiB. Few cases: each one is a real round trip
//! through a named segment.

#[path = "common/values.rs"]
mod values;
#[path = "common/watchdog.rs"]
mod watchdog;

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shmpool::topic::{Bytes, Queue, Topic, TopicError};
use values::{bytes, lengths, text};
use watchdog::watchdog;

const CASES: u32 = 48;
const LIMIT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(20);

fn unique(tag: &str) -> String {
    format!("tp-{}-{tag}", std::process::id())
}

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() })
}

fn fail(e: TopicError) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Checks the name is gone from `/dev/shm` (the last member left).
fn assert_gone(kind: &str, name: &str) {
    let path = format!("/dev/shm/shmpool.{kind}.{name}");
    let left = std::path::Path::new(&path).exists();
    let _ = std::fs::remove_file(&path);
    assert!(!left, "{path} is left in /dev/shm");
}

#[test]
fn topic_bytes_of_every_size_class_arrive_intact() {
    let _w = watchdog("topic_props: Vec<u8>", LIMIT);
    let name = unique("vec");
    {
        let topic = Topic::<Vec<u8>>::builder(&name).depth(4).open_or_create().unwrap();
        let publisher = topic.publisher().unwrap();
        let sub = topic.subscriber().unwrap();
        let intact = std::cell::Cell::new(0u32);
        runner()
            .run(&(lengths(), any::<u64>()), |(len, seed)| {
                let v = bytes(len, seed);
                match publisher.send_timeout(&v, WAIT) {
                    Ok(n) => prop_assert_eq!(n, 1),
                    Err(TopicError::Encode(_)) => return Ok(()),
                    Err(e) => return Err(fail(e)),
                }
                let s = sub.recv_timeout(WAIT).map_err(fail)?;
                prop_assert_eq!(s.len(), len);
                prop_assert!(s.as_slice() == v.as_slice(), "content of {} bytes differs", len);
                prop_assert_eq!(sub.pending(), 0);
                intact.set(intact.get() + 1);
                Ok(())
            })
            .unwrap();
        assert!(intact.get() >= CASES, "only {} cases went through", intact.get());
    }
    assert_gone("topic", &name);
}

#[test]
fn topic_text_of_every_size_class_arrives_intact() {
    let _w = watchdog("topic_props: String", LIMIT);
    let name = unique("text");
    {
        let topic = Topic::<String>::builder(&name).depth(4).history(1).open_or_create().unwrap();
        let publisher = topic.publisher().unwrap();
        let sub = topic.subscriber().unwrap();
        let intact = std::cell::Cell::new(0u32);
        runner()
            .run(&(lengths(), any::<u64>()), |(len, seed)| {
                let s = text(len, seed);
                match publisher.send_timeout(&s, WAIT) {
                    Ok(n) => prop_assert_eq!(n, 1),
                    Err(TopicError::Encode(_)) => return Ok(()),
                    Err(e) => return Err(fail(e)),
                }
                let got = sub.recv_timeout(WAIT).map_err(fail)?;
                prop_assert_eq!(got.as_str(), s.as_str());
                // A late joiner gets the same sample from the history.
                let late = topic.subscriber().map_err(fail)?;
                let again = late.try_recv().map_err(fail)?;
                prop_assert_eq!(again.as_str(), s.as_str());
                intact.set(intact.get() + 1);
                Ok(())
            })
            .unwrap();
        assert!(intact.get() >= CASES, "only {} cases went through", intact.get());
    }
    assert_gone("topic", &name);
}

#[test]
fn topic_raw_loans_of_every_size_class_arrive_intact() {
    let _w = watchdog("topic_props: Bytes loans", LIMIT);
    let name = unique("raw");
    {
        let topic = Topic::<Bytes>::builder(&name).depth(2).open_or_create().unwrap();
        let publisher = topic.publisher().unwrap();
        let sub = topic.subscriber().unwrap();
        let intact = std::cell::Cell::new(0u32);
        runner()
            .run(&(lengths(), any::<u64>()), |(len, seed)| {
                let v = bytes(len, seed);
                let mut loan = publisher.loan(len).map_err(fail)?;
                prop_assert_eq!(loan.len(), len);
                loan.copy_from_slice(&v);
                prop_assert_eq!(loan.send_timeout(WAIT).map_err(fail)?, 1);
                let s = sub.recv_timeout(WAIT).map_err(fail)?;
                prop_assert_eq!(s.len(), len);
                prop_assert!(&s[..] == v.as_slice(), "content of {} bytes differs", len);
                intact.set(intact.get() + 1);
                Ok(())
            })
            .unwrap();
        assert!(intact.get() >= CASES, "only {} cases went through", intact.get());
    }
    assert_gone("topic", &name);
}

#[test]
fn queue_items_of_every_size_class_arrive_intact() {
    let _w = watchdog("topic_props: queue", LIMIT);
    let name = unique("queue");
    {
        let queue = Queue::<Vec<u8>>::builder(&name).capacity(4).open_or_create().unwrap();
        let intact = std::cell::Cell::new(0u32);
        runner()
            .run(&(lengths(), any::<u64>(), any::<bool>()), |(len, seed, requeue)| {
                let v = bytes(len, seed);
                match queue.push_timeout(&v, WAIT) {
                    Ok(()) => {}
                    Err(TopicError::Encode(_)) => return Ok(()),
                    Err(e) => return Err(fail(e)),
                }
                let mut item = queue.pop_timeout(WAIT).map_err(fail)?;
                if requeue {
                    // Given back unacked, it comes again, unchanged.
                    item.nack();
                    item = queue.pop_timeout(WAIT).map_err(fail)?;
                }
                prop_assert_eq!(item.len(), len);
                prop_assert!(item.as_slice() == v.as_slice(), "content of {} bytes differs", len);
                item.ack();
                prop_assert!(queue.is_empty());
                intact.set(intact.get() + 1);
                Ok(())
            })
            .unwrap();
        assert!(intact.get() >= CASES, "only {} cases went through", intact.get());
    }
    assert_gone("queue", &name);
}
