//! Channels to child processes, and an exchange over many of them.

use std::time::Duration;

use shmpool::{start, Channel, ChannelError, Exchange};

fn doubler(chan: Channel<u64, u64>, _: ()) {
    while let Ok(x) = chan.recv() {
        chan.send(&(x * 2)).unwrap();
    }
}

fn burst(chan: Channel<String, ()>, n: u32) {
    for i in 0..n {
        chan.send(&format!("message {i}")).unwrap();
    }
    // Returns at once: what it sent must not be lost.
}

fn send_then_panic(chan: Channel<u32, ()>, _: ()) {
    chan.send(&1).unwrap();
    panic!("child gave up");
}

fn silent(chan: Channel<u32, ()>, _: ()) {
    let _ = chan.recv();
}

fn die(_chan: Channel<u32, ()>, code: i32) {
    std::process::exit(code);
}

fn big(chan: Channel<Vec<u8>, ()>, len: u64) {
    chan.send(&vec![7u8; len as usize]).unwrap();
}

#[test]
fn messages_go_both_ways() {
    let chan = start(doubler, ()).unwrap();
    for i in 0..50u64 {
        chan.send(&i).unwrap();
        assert_eq!(chan.recv(), Ok(i * 2));
    }
    let pid = chan.pid().unwrap();
    drop(chan);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "child left behind");
}

#[test]
fn a_child_that_exits_at_once_loses_nothing() {
    let chan = start(burst, 50u32).unwrap(); // fits the ring: the child need not wait for us
    chan.join(); // the child is gone before we read anything
    for i in 0..50 {
        assert_eq!(chan.recv(), Ok(format!("message {i}")));
    }
    assert_eq!(chan.recv(), Err(ChannelError::Closed));
}

#[test]
fn a_panic_in_the_child_arrives_after_its_messages() {
    let chan = start(send_then_panic, ()).unwrap();
    assert_eq!(chan.recv(), Ok(1));
    match chan.recv() {
        Err(ChannelError::Panicked { message }) => assert!(message.contains("child gave up"), "{message}"),
        other => panic!("expected Panicked, got {other:?}"),
    }
}

#[test]
fn recv_timeout_and_dead_children() {
    let chan = start(silent, ()).unwrap();
    assert_eq!(chan.recv_timeout(Duration::from_millis(30)), Err(ChannelError::Timeout));
    assert_eq!(chan.try_recv(), Err(ChannelError::Timeout));
    let dead = start(die, 3).unwrap();
    let pid = dead.pid().unwrap();
    assert_eq!(dead.recv(), Err(ChannelError::Dead { pid }));
}

#[test]
fn large_messages_travel_through_the_arena() {
    let chan = start(big, 4u64 << 20).unwrap();
    let v = chan.recv().unwrap();
    assert_eq!(v.len(), 4 << 20);
    assert!(v.iter().all(|&b| b == 7));
}

fn worker(chan: Channel<(u32, u32), ()>, id: u32) {
    for k in 0..5 {
        chan.send(&(id, k)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn an_exchange_of_twenty_children_with_a_limit_of_four() {
    let mut ex = Exchange::with_limit(4);
    let mut got = Vec::new();
    let mut most_active = 0;
    for id in 0..20u32 {
        let chan = start(worker, id).unwrap();
        ex.add_wait(chan, |_, m| got.push(m.unwrap()));
        most_active = most_active.max(ex.active());
    }
    ex.finish(|_, m| got.push(m.unwrap()));
    assert!(most_active <= 4, "{most_active} channels active at once");
    assert_eq!(ex.active(), 0);
    got.sort_unstable();
    let expect: Vec<(u32, u32)> = (0..20).flat_map(|id| (0..5).map(move |k| (id, k))).collect();
    assert_eq!(got, expect, "every message exactly once");
}

#[test]
fn exchange_ready_polls_and_reports_failures() {
    let mut ex = Exchange::new();
    let quiet = ex.add(start(silent, ()).unwrap());
    assert!(ex.ready(Some(Duration::ZERO)).is_empty(), "nothing to read yet");
    let failing = ex.add(start(send_then_panic, ()).unwrap());
    let mut seen = Vec::new();
    while seen.len() < 2 {
        for id in ex.ready(Some(Duration::from_secs(30))) {
            seen.push((id, ex.channel(id).unwrap().recv()));
        }
    }
    assert_eq!(seen[0], (failing, Ok(1)));
    assert!(matches!(&seen[1], (id, Err(ChannelError::Panicked { .. })) if *id == failing));
    assert!(ex.channel(quiet).is_some());
}

fn sleepy_doubler(chan: Channel<u64, u64>, _: ()) {
    let chan = chan.with_spin(Duration::ZERO);
    while let Ok(x) = chan.recv() {
        chan.send(&(x * 2)).unwrap();
    }
}

#[test]
fn ends_that_never_spin_still_deliver() {
    let chan = start(sleepy_doubler, ()).unwrap().with_spin(Duration::ZERO);
    for i in 0..200u64 {
        chan.send(&i).unwrap();
        assert_eq!(chan.recv_timeout(Duration::from_secs(10)), Ok(i * 2));
    }
    // Nothing to receive: a sleeping receive still times out.
    assert_eq!(chan.recv_timeout(Duration::from_millis(20)), Err(ChannelError::Timeout));
}

/// Opens each buffer handle in the channel's segment and answers its length
/// and byte sum, dropping the buffer first.
fn buffer_reader(chan: Channel<(u64, u64), shmpool::BufferHandle>, _: ()) {
    while let Ok(handle) = chan.recv() {
        let buffer = handle.open(chan.segment()).unwrap();
        let sum = buffer.as_slice().iter().map(|&b| b as u64).sum();
        let len = buffer.len() as u64;
        drop(buffer);
        chan.send(&(len, sum)).unwrap();
    }
}

#[test]
fn buffers_travel_by_handle_in_the_channel_segment() {
    let chan = start(buffer_reader, ()).unwrap();
    let mut buffer = chan.segment().buffer(1 << 20).unwrap();
    for round in 1..=3u8 {
        assert!(buffer.reclaim_write(), "the child dropped its copy before answering");
        buffer.as_mut_slice().unwrap().fill(round);
        chan.send(&buffer.share().unwrap()).unwrap();
        assert_eq!(chan.recv_timeout(Duration::from_secs(10)), Ok((1 << 20, (1u64 << 20) * round as u64)));
    }
}
