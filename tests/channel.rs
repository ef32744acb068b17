//! Channels to child processes, and an exchange over many of them.

mod common;

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

// ---- regressions (issue #10) -------------------------------------------

/// Runs `f` on its own thread and fails the test if it has not returned
/// within `secs` seconds (a hang, not a slow run: generous on purpose).
fn watchdog<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(t) => t,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("hung: {what}"),
        Err(_) => panic!("failed (see the panic above): {what}"),
    }
}

fn sigkill(pid: u32) {
    // SAFETY: signalling a process of ours by pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// Sends one message, drops its end and keeps running for two minutes.
fn drop_and_linger(chan: Channel<u32, ()>, _: ()) {
    chan.send(&1).unwrap();
    drop(chan);
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn a_child_that_drops_its_end_and_keeps_running_is_closed_at_once() {
    let chan = start(drop_and_linger, ()).unwrap();
    let pid = chan.pid().unwrap();
    let results = watchdog(30, "recv after the child dropped its end", move || {
        let first = chan.recv();
        let timed = chan.recv_timeout(Duration::from_millis(100));
        let tried = chan.try_recv();
        let sent = chan.send_timeout(&(), Duration::from_millis(100));
        (first, timed, tried, sent, chan)
    });
    sigkill(pid);
    assert_eq!(results.0, Ok(1));
    assert_eq!(results.1, Err(ChannelError::Closed));
    assert_eq!(results.2, Err(ChannelError::Closed));
    assert_eq!(results.3, Err(ChannelError::Closed));
}

fn returns_at_once(_chan: Channel<u32, u32>, _: ()) {}

#[test]
fn sends_to_an_ended_child_are_closed_not_lost() {
    let chan = start(returns_at_once, ()).unwrap();
    let chan = watchdog(30, "sends to an ended child", move || {
        assert_eq!(chan.recv(), Err(ChannelError::Closed));
        for i in 0..100u32 {
            assert_eq!(chan.send(&i), Err(ChannelError::Closed), "send {i}");
            assert_eq!(chan.send_timeout(&i, Duration::from_millis(10)), Err(ChannelError::Closed), "send {i}");
        }
        chan
    });
    drop(chan);
}

fn wait_forever(chan: Channel<u32, u32>, _: ()) {
    let _ = chan.recv();
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn sends_to_a_killed_child_end_in_dead() {
    let chan = start(wait_forever, ()).unwrap();
    let pid = chan.pid().unwrap();
    sigkill(pid);
    watchdog(30, "sends to a killed child", move || {
        // The kill may not have landed for the first sends; it must show
        // up before the ring is full, never as a hang.
        let mut outcome = Ok(());
        for i in 0..200u32 {
            outcome = chan.send(&i);
            if outcome.is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(outcome, Err(ChannelError::Dead { pid }));
        assert_eq!(chan.send_timeout(&0, Duration::from_millis(10)), Err(ChannelError::Dead { pid }));
    });
}

fn echo(chan: Channel<u64, u64>, _: ()) {
    while let Ok(x) = chan.recv() {
        if chan.send(&x).is_err() {
            return;
        }
    }
}

#[test]
fn duration_max_means_no_deadline() {
    let chan = start(echo, ()).unwrap();
    watchdog(30, "Duration::MAX timeouts", move || {
        assert_eq!(chan.send_timeout(&5, Duration::MAX), Ok(()));
        assert_eq!(chan.recv_timeout(Duration::MAX), Ok(5));
        let mut ex = Exchange::new();
        let id = ex.add(chan);
        ex.channel(id).unwrap().send(&6).unwrap();
        assert_eq!(ex.ready(Some(Duration::MAX)), vec![id]);
        assert_eq!(ex.channel(id).unwrap().recv(), Ok(6));
    });
}

/// Starts a channel child of its own, sends its pid up, and waits.
fn middle(chan: Channel<u32, ()>, _: ()) {
    let grandchild = start(grandchild, ()).unwrap();
    chan.send(&grandchild.pid().unwrap()).unwrap();
    let _ = chan.recv();
    std::thread::sleep(Duration::from_secs(120));
}

fn grandchild(chan: Channel<(), ()>, _: ()) {
    let _ = chan.recv();
}

#[test]
fn a_channel_child_under_a_subreaper_exits_when_its_parent_is_killed() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
    let chan = start(middle, ()).unwrap();
    let gc = chan.recv_timeout(Duration::from_secs(30)).expect("the grandchild's pid");
    sigkill(chan.pid().unwrap());
    // Orphaned, the grandchild becomes our child (we are its subreaper):
    // reap it once it exits.
    let exited = common::wait_for(|| {
        let mut status = 0;
        // SAFETY: waitpid on a pid, with a valid status pointer.
        unsafe { libc::waitpid(gc as libc::pid_t, &mut status, libc::WNOHANG) == gc as libc::pid_t }
    });
    if !exited {
        sigkill(gc);
    }
    assert!(exited, "the channel child {gc} outlived its killed parent");
}

fn drip(chan: Channel<u32, ()>, n: u32) {
    for i in 0..n {
        chan.send(&i).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exchange_waits_have_timed_forms() {
    watchdog(60, "timed exchange waits", || {
        let mut ex = Exchange::with_limit(1);
        let mut got = Vec::new();
        ex.add(start(silent, ()).unwrap());
        // The one place is taken by a child that never ends: a timed add gives the channel back.
        let extra = start(drip, 3u32).unwrap();
        let extra = match ex.add_wait_timeout(extra, Duration::from_millis(50), |_, m| got.push(m)) {
            Err(chan) => chan,
            Ok(id) => panic!("added as {id} past the limit"),
        };
        assert_eq!(ex.finish_timeout(Duration::from_millis(50), |_, m| got.push(m)), Err(ChannelError::Timeout));
        assert_eq!(ex.active(), 1, "still watched after a timed-out finish");
        // With the silent one gone, the other goes in and finishes.
        let mut ex2 = Exchange::new();
        let id = ex2.add(extra);
        assert_eq!(ex2.finish_timeout(Duration::MAX, |i, m| got.push(m.map(|v| v + 100 * i as u32))), Ok(()));
        assert_eq!(got, vec![Ok(100 * id as u32), Ok(100 * id as u32 + 1), Ok(100 * id as u32 + 2)]);
        drop(ex);
    });
}

fn busy_doubler(chan: Channel<u64, u64>, _: ()) {
    let chan = chan.busy_poll();
    while let Ok(x) = chan.recv() {
        chan.send(&(x * 2)).unwrap();
    }
}

// Issue 11 item 1: busy-polling ends still time out and notice a dead peer.
#[test]
fn busy_polling_ends_answer_time_out_and_notice_a_dead_child() {
    let chan = start(busy_doubler, ()).unwrap().busy_poll();
    for x in 0..1000u64 {
        chan.send(&x).unwrap();
        assert_eq!(chan.recv(), Ok(x * 2));
    }
    assert_eq!(chan.recv_timeout(Duration::from_millis(30)), Err(ChannelError::Timeout));
    let dead = start(die, 3).unwrap().busy_poll();
    let pid = dead.pid().unwrap();
    assert_eq!(dead.recv(), Err(ChannelError::Dead { pid }));
}
