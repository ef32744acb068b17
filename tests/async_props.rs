//! Property tests for the async paths (issue #12): every future that
//! carries a user value (a ticket's result, a map stream's items, a
//! channel's `send_async`/`recv_async`, a service's `call_async`, a worker
//! pool's `put_async`/`get_async`, a remote's pending call) carries it
//! intact at every length that straddles a boundary the code knows (slot
//! payload, inline limit, arena size classes), on each executor.
//!
//! One pool (channel, service) serves all of a test's cases; few cases,
//! so that `cargo test` stays fast. Each test has a watchdog.

#[path = "common/exec.rs"]
mod exec;
#[path = "common/values.rs"]
mod values;
#[path = "common/watchdog.rs"]
mod watchdog;

use std::time::Duration;

use exec::ALL;
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use values::{bytes, lengths, text};
use watchdog::watchdog;

use shmpool::{start, Channel, Pool, Remote, Service, Worker, WorkerPool};

const LIMIT: Duration = Duration::from_secs(120);

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

fn echo_bytes(v: Vec<u8>) -> Vec<u8> {
    v
}

fn echo_text(s: String) -> String {
    s
}

#[test]
fn ticket_results_of_every_length_arrive_intact() {
    let _w = watchdog("ticket_results_of_every_length_arrive_intact", LIMIT);
    let pool = Pool::builder().workers(1).build().unwrap();
    runner(32)
        .run(&(0..ALL.len(), lengths(), any::<u64>()), |(e, len, seed)| {
            let exec = ALL[e];
            let v = bytes(len, seed);
            prop_assert_eq!(exec.run(pool.submit(echo_bytes, v.clone()).unwrap()), Ok(v), "{:?}", exec);
            let s = text(len, seed);
            prop_assert_eq!(exec.run(pool.submit(echo_text, s.clone()).unwrap()), Ok(s), "{:?}", exec);
            Ok(())
        })
        .unwrap();
}

#[test]
fn map_streams_carry_every_length_intact() {
    let _w = watchdog("map_streams_carry_every_length_intact", LIMIT);
    let pool = Pool::builder().workers(2).build().unwrap();
    runner(16)
        .run(&(0..ALL.len(), proptest::collection::vec((lengths(), any::<u64>()), 1..8)), |(e, items)| {
            let exec = ALL[e];
            let input: Vec<Vec<u8>> = items.iter().map(|&(len, seed)| bytes(len, seed)).collect();
            let out: Vec<_> = exec.run(pool.map(echo_bytes, input.clone()).unwrap().into_stream().collect());
            prop_assert_eq!(out, input.into_iter().map(Ok).collect::<Vec<_>>(), "{:?}", exec);
            Ok(())
        })
        .unwrap();
}

/// Echoes every message with its end's async forms.
fn async_echo(chan: Channel<Vec<u8>, Vec<u8>>, _: ()) {
    futures::executor::block_on(async {
        while let Ok(v) = chan.recv_async().await {
            if chan.send_async(&v).await.is_err() {
                return;
            }
        }
    });
}

#[test]
fn channel_async_messages_of_every_length_arrive_intact() {
    let _w = watchdog("channel_async_messages_of_every_length_arrive_intact", LIMIT);
    let chan = start(async_echo, ()).unwrap();
    runner(32)
        .run(&(0..ALL.len(), lengths(), any::<u64>()), |(e, len, seed)| {
            let exec = ALL[e];
            let v = bytes(len, seed);
            let back = exec.run(async {
                chan.send_async(&v).await?;
                chan.recv_async().await
            });
            prop_assert_eq!(back, Ok(v), "{:?}", exec);
            Ok(())
        })
        .unwrap();
}

struct Echo;

fn echo(_: ()) -> Echo {
    Echo
}

fn echo_call(_: &mut Echo, v: Vec<u8>) -> Vec<u8> {
    v
}

#[test]
fn service_call_async_of_every_length_arrives_intact() {
    let _w = watchdog("service_call_async_of_every_length_arrives_intact", LIMIT);
    let name = format!("asyncprops-{}", std::process::id());
    let _service = Service::serve(&name, echo, ()).unwrap();
    let client = Service::<Echo>::connect(&name).unwrap();
    runner(32)
        .run(&(0..ALL.len(), lengths(), any::<u64>()), |(e, len, seed)| {
            let exec = ALL[e];
            let v = bytes(len, seed);
            prop_assert_eq!(exec.run(client.call_async(echo_call, v.clone())), Ok(v), "{:?}", exec);
            Ok(())
        })
        .unwrap();
}

#[test]
fn remote_call_async_of_every_length_arrives_intact() {
    let _w = watchdog("remote_call_async_of_every_length_arrives_intact", LIMIT);
    let remote = Remote::spawn(echo, ()).unwrap();
    runner(16)
        .run(&(0..ALL.len(), lengths(), any::<u64>()), |(e, len, seed)| {
            let exec = ALL[e];
            let v = bytes(len, seed);
            prop_assert_eq!(exec.run(remote.call_async(echo_call, v.clone())), Ok(v), "{:?}", exec);
            Ok(())
        })
        .unwrap();
}

impl Worker for Echo {
    type Init = ();
    type Task = Vec<u8>;
    type Output = Vec<u8>;
    fn init(_: ()) -> Self {
        Echo
    }
    fn run(&mut self, v: Vec<u8>) -> Vec<u8> {
        v
    }
}

#[test]
fn worker_pool_put_and_get_async_of_every_length_arrive_intact() {
    let _w = watchdog("worker_pool_put_and_get_async_of_every_length_arrive_intact", LIMIT);
    let pool = WorkerPool::<Echo>::builder().workers(1).build(()).unwrap();
    runner(32)
        .run(&(0..ALL.len(), lengths(), any::<u64>()), |(e, len, seed)| {
            let exec = ALL[e];
            let v = bytes(len, seed);
            let back = exec.run(async {
                pool.put_async(v.clone()).await.map_err(|e| e.to_string())?;
                pool.get_async().await.map_err(|e| e.to_string())
            });
            prop_assert_eq!(back, Ok(v), "{:?}", exec);
            Ok(())
        })
        .unwrap();
}
