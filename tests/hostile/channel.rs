//! Channels under hostile use: values larger than the channel's segment,
//! garbage frames in its ring, peers killed mid-conversation. Every call
//! ends in a value or a typed error, and the channel stays usable.

use std::time::Duration;

use shmpool::ring::Ring;
use shmpool::{start, Channel, ChannelError, Exchange};

/// Runs `f` on its own thread; a hang past `secs` fails the test (no time
/// is asserted otherwise).
fn watchdog<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(t) => t,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("hung"),
        Err(_) => panic!("failed (see the panic above)"),
    }
}

fn sigkill(pid: u32) {
    // SAFETY: signalling a child process of ours by pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// Answers each length `n` with a vector of `n` bytes, or the error of
/// sending it.
fn make_vectors(chan: Channel<Result<Vec<u8>, String>, u64>, _: ()) {
    while let Ok(n) = chan.recv() {
        if let Err(e) = chan.send(&Ok(vec![3u8; n as usize])) {
            chan.send(&Err(e.to_string())).unwrap();
        }
    }
}

fn echo(chan: Channel<Vec<u8>, Vec<u8>>, _: ()) {
    while let Ok(v) = chan.recv() {
        if chan.send(&v).is_err() {
            return;
        }
    }
}

#[test]
fn values_larger_than_the_segment_are_a_typed_error_both_ways() {
    watchdog(60, || {
        // The channel's segment is 64 MiB: 100 MiB cannot be archived in it.
        let chan = start(echo, ()).unwrap();
        match chan.send(&vec![1u8; 100 << 20]) {
            Err(ChannelError::Encode(_)) => {}
            other => panic!("expected Encode, got {other:?}"),
        }
        assert_eq!(chan.send(&vec![9u8; 1000]), Ok(()));
        assert_eq!(chan.recv(), Ok(vec![9u8; 1000]), "the channel goes on");

        let chan = start(make_vectors, ()).unwrap();
        chan.send(&(100u64 << 20)).unwrap();
        match chan.recv() {
            Ok(Err(e)) => assert!(e.contains("archive"), "{e}"),
            other => panic!("expected the child's typed error, got {:?}", other.map(|r| r.map(|v| v.len()))),
        }
        chan.send(&(1u64 << 20)).unwrap();
        assert_eq!(chan.recv().map(|r| r.map(|v| v.len())), Ok(Ok(1 << 20)));
    });
}

fn wait_then_send(chan: Channel<u32, ()>, _: ()) {
    if chan.recv().is_ok() {
        chan.send(&42).unwrap();
    }
}

/// A frame header: body kind, length and block fields set, the rest zero.
fn frame(body: u32, len: u64, block: u64) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[44..48].copy_from_slice(&body.to_ne_bytes());
    f[48..56].copy_from_slice(&len.to_ne_bytes());
    f[56..64].copy_from_slice(&block.to_ne_bytes());
    f
}

#[test]
fn garbage_frames_in_the_ring_are_decode_errors_and_later_messages_arrive() {
    watchdog(60, || {
        let chan = start(wait_then_send, ()).unwrap();
        // What the child sends us, scribbled on as a hostile child would.
        let up = Ring::named(chan.segment(), "channel.up", 64, 256).unwrap();
        up.try_push(&[1, 2, 3]).unwrap();
        up.try_push(&frame(2, 100, 0xdead_bee0)).unwrap();
        up.try_push(&frame(2, u64::MAX, 64)).unwrap();
        up.try_push(&frame(1, 10_000, 0)).unwrap();
        up.try_push(&frame(7, 0, 0)).unwrap();
        up.try_push(&frame(1, 0, 0)).unwrap();
        for i in 0..6 {
            match chan.try_recv() {
                Err(ChannelError::Decode(_)) => {}
                other => panic!("garbage frame {i}: expected Decode, got {other:?}"),
            }
        }
        chan.send(&()).unwrap();
        assert_eq!(chan.recv(), Ok(42));
        assert_eq!(chan.recv(), Err(ChannelError::Closed));
    });
}

fn send_three_then_wait(chan: Channel<u32, u32>, _: ()) {
    for i in 0..3 {
        chan.send(&i).unwrap();
    }
    let _ = chan.recv();
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn send_and_recv_after_the_child_was_killed() {
    watchdog(60, || {
        let chan = start(send_three_then_wait, ()).unwrap();
        let pid = chan.pid().unwrap();
        // Killed once its three messages are in the ring (looked at from outside).
        let up = Ring::named(chan.segment(), "channel.up", 64, 256).unwrap();
        assert!(super::common::wait_for(|| up.len() == 3));
        sigkill(pid);
        assert!(chan.join_timeout(Duration::from_secs(30)), "the killed child was not reaped");
        // What it sent before dying is still read, then its death.
        assert_eq!(chan.recv(), Ok(0));
        assert_eq!(chan.recv(), Ok(1));
        assert_eq!(chan.recv(), Ok(2));
        assert_eq!(chan.recv(), Err(ChannelError::Dead { pid }));
        assert_eq!(chan.try_recv(), Err(ChannelError::Dead { pid }));
        // Known dead: sends fail at once, however empty the ring.
        assert_eq!(chan.send(&7), Err(ChannelError::Dead { pid }));
        assert_eq!(chan.try_send(&7), Err(ChannelError::Dead { pid }));
        assert_eq!(chan.send_timeout(&7, Duration::MAX), Err(ChannelError::Dead { pid }));
    });
}

fn drip(chan: Channel<u32, u32>, id: u32) {
    for k in 0..3 {
        chan.send(&(id * 10 + k)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_exchange_reports_a_killed_child_and_finishes_the_others() {
    watchdog(60, || {
        let mut ex = Exchange::new();
        let victim = start(send_three_then_wait, ()).unwrap();
        let victim_pid = victim.pid().unwrap();
        let victim = ex.add(victim);
        let others: Vec<_> = (1..=3).map(|id| ex.add(start(drip, id).unwrap())).collect();
        sigkill(victim_pid);
        let mut got = Vec::new();
        let mut died = Vec::new();
        ex.finish(|id, m| match m {
            Ok(v) => got.push((id, v)),
            Err(e) => died.push((id, e)),
        });
        assert_eq!(died, vec![(victim, ChannelError::Dead { pid: victim_pid })]);
        for (n, id) in others.iter().enumerate() {
            let mine: Vec<u32> = got.iter().filter(|(i, _)| i == id).map(|&(_, v)| v).collect();
            let n = n as u32 + 1;
            assert_eq!(mine, vec![n * 10, n * 10 + 1, n * 10 + 2]);
        }
    });
}
