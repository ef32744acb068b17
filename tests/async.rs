//! Issue #12: every wait is also a future, on any executor. Each test runs
//! under tokio's multi-thread and current-thread runtimes and under
//! `futures::executor` (no tokio), with real worker processes, and has a
//! watchdog: a hang fails the binary instead of holding up CI.

#[path = "common/exec.rs"]
mod exec;
#[path = "common/watchdog.rs"]
mod watchdog;

use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use exec::{poll_once, sigkill, Exec, ALL};
use futures::future::{join_all, try_join_all};
use futures::StreamExt;
use watchdog::watchdog;

use shmpool::{
    start, Channel, ChannelError, GetError, OnWorkerDeath, Pool, PutError, Remote, RemoteError, Service, ServiceError,
    TaskError, Worker, WorkerPool,
};

/// Far above what any step here takes; reaching it is a hang.
const HANG: Duration = Duration::from_secs(20);

fn square(x: u64) -> u64 {
    x * x
}

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(10));
    x * x
}

fn boom_at_777(x: u64) -> u64 {
    assert!(x != 777, "item 777 refuses");
    x + 1
}

/// A result large enough to live in a large arena block (above 64 KiB):
/// one leaked block shows in `Segment::available`.
const BIG: usize = 100 << 10;

fn big_after(ms: u64) -> Vec<u8> {
    std::thread::sleep(Duration::from_millis(ms));
    vec![ms as u8; BIG]
}

// ---------------------------------------------------------------- item 1

#[test]
fn ten_thousand_concurrent_tickets_from_one_task() {
    let _w = watchdog("ten_thousand_concurrent_tickets_from_one_task", Duration::from_secs(120));
    let pool = Pool::builder().workers(2).build().unwrap();
    let expect: Vec<u64> = (0..10_000u64).map(|x| x * x).collect();
    for exec in ALL {
        // More tickets than the queue holds: submit waits for room (draining
        // results for the tickets already out) before the first await.
        let got = exec.run(try_join_all((0..10_000u64).map(|x| pool.submit(square, x).unwrap())));
        assert_eq!(got.as_ref(), Ok(&expect), "{exec:?}");
    }
}

#[test]
fn a_stream_over_a_map_of_100_000_tasks_is_in_input_order() {
    let _w = watchdog("a_stream_over_a_map_of_100_000_tasks_is_in_input_order", Duration::from_secs(120));
    let pool = Pool::builder().workers(2).build().unwrap();
    for exec in ALL {
        let (n, wrong) = exec.run(async {
            let mut s = pool.map(square, 0..100_000u64).unwrap().into_stream();
            let (mut n, mut wrong) = (0u64, Vec::new());
            while let Some(r) = s.next().await {
                if r != Ok(n * n) && wrong.len() < 10 {
                    wrong.push((n, r));
                }
                n += 1;
            }
            (n, wrong)
        });
        assert_eq!(n, 100_000, "{exec:?}: items");
        assert!(wrong.is_empty(), "{exec:?}: wrong results (index, result): {wrong:?}");
    }
}

#[test]
fn an_unordered_stream_of_100_000_tasks_gives_every_result_once() {
    let _w = watchdog("an_unordered_stream_of_100_000_tasks_gives_every_result_once", Duration::from_secs(120));
    let pool = Pool::builder().workers(2).build().unwrap();
    let expect: Vec<u64> = (0..100_000u64).map(|x| x * x).collect();
    for exec in ALL {
        let got: Result<Vec<u64>, TaskError> = exec
            .run(pool.map_unordered(square, 0..100_000u64).unwrap().into_stream().collect::<Vec<_>>())
            .into_iter()
            .collect();
        let mut got = got.unwrap_or_else(|e| panic!("{exec:?}: {e}"));
        got.sort_unstable();
        assert_eq!(got, expect, "{exec:?}: every result exactly once");
    }
}

#[test]
fn a_panicking_item_fails_only_itself_in_a_stream() {
    let _w = watchdog("a_panicking_item_fails_only_itself_in_a_stream", Duration::from_secs(60));
    let pool = Pool::builder().workers(2).build().unwrap();
    for exec in ALL {
        let out: Vec<Result<u64, TaskError>> =
            exec.run(pool.map(boom_at_777, 0..2000u64).unwrap().into_stream().collect());
        assert_eq!(out.len(), 2000, "{exec:?}");
        for (i, r) in out.iter().enumerate() {
            if i == 777 {
                assert!(matches!(r, Err(TaskError::Panicked { message }) if message.contains("777")), "{r:?}");
            } else {
                assert_eq!(r, &Ok(i as u64 + 1), "{exec:?}: item {i}");
            }
        }
    }
}

// ---------------------------------------------------------------- item 2

/// Tickets dropped while they wait (a 1 ms timeout around a longer task),
/// 1,000 times per executor: no arena byte leaks (the results come after
/// their futures are gone and must be freed), and results still awaited
/// (one submitted before the drops, one after) are right.
#[test]
fn tickets_dropped_mid_wait_leak_nothing_and_lose_no_later_result() {
    let _w = watchdog("tickets_dropped_mid_wait_leak_nothing_and_lose_no_later_result", Duration::from_secs(120));
    // Tasks that sleep use no CPU: eight workers keep 1,000 of them short.
    let pool = Pool::builder().workers(8).queue_capacity(64).build().unwrap();
    assert_eq!(pool.submit(big_after, 0).unwrap().wait(), Ok(vec![0; BIG]));
    let start = pool.segment().available();
    for exec in ALL {
        let (timed_out, answered) = exec.run(async {
            let keeper = pool.submit(big_after, 7).unwrap();
            let (mut timed_out, mut answered) = (0, 0);
            for _batch in 0..20 {
                // Mostly short tasks (many results come after their futures
                // are gone, fast), and a few of 100 ms that no 1 ms wait sees.
                let ms = |i: u64| if i % 10 == 9 { 100 } else { 3 };
                let tickets: Vec<_> = (0..50).map(|i| pool.submit(big_after, ms(i)).unwrap()).collect();
                let waits = tickets.into_iter().map(|t| exec.timeout(Duration::from_millis(1), t));
                for (i, r) in join_all(waits).await.into_iter().enumerate() {
                    match r {
                        None => timed_out += 1,
                        Some(r) => {
                            let ms = ms(i as u64);
                            assert_eq!(r, Ok(vec![ms as u8; BIG]), "{exec:?}: a ticket that made it in time");
                            answered += 1;
                        }
                    }
                }
            }
            assert_eq!(exec.timeout(HANG, keeper).await, Some(Ok(vec![7; BIG])), "{exec:?}: the kept ticket");
            let later = pool.submit(big_after, 9).unwrap();
            assert_eq!(exec.timeout(HANG, later).await, Some(Ok(vec![9; BIG])), "{exec:?}: a later ticket");
            (timed_out, answered)
        });
        assert_eq!(timed_out + answered, 1000);
        assert!(timed_out > 0, "{exec:?}: no wait was cut short, nothing was tested");
        // The results of the dropped tickets come later: each one taken from
        // the ring (by any wait) must be freed. Wait until the pool is idle.
        let mut rounds = 0;
        while pool.segment().available() != start && rounds < 200 {
            assert_eq!(pool.submit(square, 4u64).unwrap().wait(), Ok(16));
            std::thread::sleep(Duration::from_millis(10));
            rounds += 1;
        }
        assert_eq!(pool.segment().available(), start, "{exec:?}: arena bytes leaked by dropped tickets");
    }
}

/// Sends `0..n` in bursts with pauses, and returns.
fn count_up(chan: Channel<u64, ()>, n: u64) {
    for i in 0..n {
        if chan.send(&i).is_err() {
            return;
        }
        // Pauses longer than the receiver's 1 ms timeout, after bursts of
        // an odd length (the receiver alternates two kinds of receive).
        if i % 5 == 0 {
            std::thread::sleep(Duration::from_micros(1500));
        }
    }
}

/// `recv_async` futures dropped mid-wait (polled once and dropped, or cut by
/// a 1 ms timeout) lose no message: later receives get every message exactly
/// once, in order, then `Closed`.
#[test]
fn dropped_recv_futures_lose_no_message() {
    let _w = watchdog("dropped_recv_futures_lose_no_message", Duration::from_secs(120));
    const N: u64 = 1000;
    for exec in ALL {
        let chan = start(count_up, N).unwrap();
        let (got, dropped, timed_out) = exec.run(async {
            let (mut got, mut dropped, mut timed_out) = (Vec::new(), 0u32, 0u32);
            for i in 0..200_000u32 {
                if got.len() as u64 == N {
                    break;
                }
                if i % 2 == 0 {
                    let mut fut = pin!(chan.recv_async());
                    match poll_once(&mut fut) {
                        Poll::Ready(r) => got.push(r.unwrap_or_else(|e| panic!("{exec:?}: {e}"))),
                        Poll::Pending => dropped += 1,
                    }
                } else {
                    match exec.timeout(Duration::from_millis(1), chan.recv_async()).await {
                        Some(r) => got.push(r.unwrap_or_else(|e| panic!("{exec:?}: {e}"))),
                        None => timed_out += 1,
                    }
                }
            }
            assert_eq!(exec.timeout(HANG, chan.recv_async()).await, Some(Err(ChannelError::Closed)), "{exec:?}");
            (got, dropped, timed_out)
        });
        assert_eq!(got, (0..N).collect::<Vec<_>>(), "{exec:?}: every message exactly once, in order");
        assert!(dropped + timed_out > 0, "{exec:?}: no receive was dropped mid-wait, nothing was tested");
    }
}

// ---------------------------------------------------------------- item 3

/// A worker SIGKILLed while 100 futures wait on the pool (no thread blocks
/// in a wait: only the reactor can notice the death): every future resolves,
/// re-run (the default) or with `WorkerDied` (`Report`).
#[test]
fn a_worker_killed_while_100_futures_wait_resolves_every_one() {
    let _w = watchdog("a_worker_killed_while_100_futures_wait_resolves_every_one", Duration::from_secs(120));
    for report in [false, true] {
        for exec in ALL {
            let policy = if report { OnWorkerDeath::Report } else { OnWorkerDeath::Requeue { max_attempts: 3 } };
            let pool = Pool::builder().workers(2).on_worker_death(policy).build().unwrap();
            let victim = pool.worker_pids()[0];
            let tickets: Vec<_> = (0..100u64).map(|x| pool.submit(slow_square, x).unwrap()).collect();
            let killer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(60));
                sigkill(victim);
            });
            let out = exec.run(exec.timeout(HANG, join_all(tickets)));
            killer.join().unwrap();
            let out = out.unwrap_or_else(|| panic!("{exec:?}, report {report}: futures still pending after {HANG:?}"));
            let mut died = 0;
            for (x, r) in out.iter().enumerate() {
                match r {
                    Ok(v) => assert_eq!(*v, (x * x) as u64, "{exec:?}: task {x}"),
                    Err(TaskError::WorkerDied { pid }) if report => {
                        assert_eq!(*pid, victim);
                        died += 1;
                    }
                    Err(e) => panic!("{exec:?}, report {report}: task {x}: {e:?}"),
                }
            }
            if report {
                assert!(died >= 1, "{exec:?}: the killed worker's task was not reported");
            } else {
                assert!(pool.requeued() >= 1, "{exec:?}: the killed worker's task was not re-run");
            }
            assert!(pool.respawns() >= 1, "{exec:?}: the killed worker was not replaced");
            assert_eq!(exec.run(pool.submit(square, 12u64).unwrap()), Ok(144), "{exec:?}: the pool works on");
        }
    }
}

// ---------------------------------------------------------------- item 5: Ticket, Pending

#[test]
fn a_ticket_polled_after_it_completed_is_already_taken() {
    let _w = watchdog("a_ticket_polled_after_it_completed_is_already_taken", Duration::from_secs(60));
    let pool = Pool::builder().workers(1).build().unwrap();
    let remote = Remote::spawn(make_counter, 0u64).unwrap();
    for exec in ALL {
        exec.run(async {
            let mut t = pool.submit(square, 3u64).unwrap();
            assert_eq!((&mut t).await, Ok(9), "{exec:?}");
            assert_eq!(futures::poll!(&mut t), Poll::Ready(Err(TaskError::AlreadyTaken)), "{exec:?}");
            // Not a hang or a panic either on a failed task.
            let mut t = pool.submit(boom_at_777, 777u64).unwrap();
            assert!(matches!((&mut t).await, Err(TaskError::Panicked { .. })), "{exec:?}");
            assert_eq!(poll_once(&mut t), Poll::Ready(Err(TaskError::AlreadyTaken)), "{exec:?}");
            let mut p = remote.call_async(add, 2);
            assert!(matches!((&mut p).await, Ok(n) if n % 2 == 0), "{exec:?}");
            assert_eq!(futures::poll!(&mut p), Poll::Ready(Err(RemoteError::AlreadyTaken)), "{exec:?}");
        });
    }
}

/// Issue #12: `tokio::spawn(pool.submit(f, x)?)` on a multi-thread runtime
/// (a `Ticket` and a `Pending` are `Send + 'static`).
#[test]
fn tickets_and_pending_calls_can_be_spawned_on_a_multi_thread_runtime() {
    fn send_static<T: Send + 'static>(t: T) -> T {
        t
    }
    let _w = watchdog("tickets_and_pending_calls_can_be_spawned_on_a_multi_thread_runtime", Duration::from_secs(60));
    let pool = Pool::builder().workers(2).build().unwrap();
    let remote = Remote::spawn(make_counter, 0u64).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    rt.block_on(async {
        let handles: Vec<_> = (0..500u64).map(|x| tokio::spawn(send_static(pool.submit(square, x).unwrap()))).collect();
        for (x, h) in handles.into_iter().enumerate() {
            assert_eq!(h.await.unwrap(), Ok((x * x) as u64));
        }
        let calls: Vec<_> = (0..20).map(|_| tokio::spawn(send_static(remote.call_async(add, 1)))).collect();
        let mut totals = Vec::new();
        for h in calls {
            totals.push(h.await.unwrap().unwrap());
        }
        // Calls on one object run in the order they were made.
        assert_eq!(totals, (1..=20).collect::<Vec<u64>>());
    });
}

struct Counter {
    n: u64,
}

fn make_counter(start: u64) -> Counter {
    Counter { n: start }
}

fn add(c: &mut Counter, by: u64) -> u64 {
    c.n += by;
    c.n
}

fn slow_add(c: &mut Counter, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    c.n += ms;
    c.n
}

fn explode(_: &mut Counter, _: ()) -> u64 {
    panic!("boom in the remote")
}

fn die(_: &mut Counter, code: i32) -> u64 {
    std::process::exit(code)
}

#[test]
fn remote_pending_calls_await_values_panics_and_deaths() {
    let _w = watchdog("remote_pending_calls_await_values_panics_and_deaths", Duration::from_secs(120));
    for exec in ALL {
        let c = Remote::spawn(make_counter, 5u64).unwrap();
        let pid = c.pid();
        exec.run(async {
            assert_eq!(c.call_async(add, 2).await, Ok(7), "{exec:?}");
            // Several at once from one task: they run in order, each right.
            let totals = join_all((1..=10).map(|i| c.call_async(add, i))).await;
            let expect: Vec<_> = (1..=10u64).map(|i| Ok(7 + i * (i + 1) / 2)).collect();
            assert_eq!(totals, expect, "{exec:?}");
            match c.call_async(explode, ()).await {
                Err(RemoteError::Panicked { message }) => assert!(message.contains("boom in the remote"), "{message}"),
                other => panic!("{exec:?}: expected Panicked, got {other:?}"),
            }
            assert_eq!(c.call_async(add, 1).await, Ok(63), "{exec:?}: the object lives on after a panic");
            // A call that kills the remote, and calls waiting behind it.
            let first = c.call_async(die, 3);
            let behind: Vec<_> = (0..10).map(|_| c.call_async(add, 1)).collect();
            assert_eq!(exec.timeout(HANG, first).await, Some(Err(RemoteError::Dead { pid })), "{exec:?}");
            for r in exec.timeout(HANG, join_all(behind)).await.expect("calls behind a death hung") {
                assert_eq!(r, Err(RemoteError::Dead { pid }), "{exec:?}");
            }
            // A call made after the death fails as a value, without waiting.
            assert_eq!(exec.timeout(HANG, c.call_async(add, 1)).await, Some(Err(RemoteError::Dead { pid })));
        });
    }
}

#[test]
fn a_remote_killed_while_a_future_waits_on_it_is_dead() {
    let _w = watchdog("a_remote_killed_while_a_future_waits_on_it_is_dead", Duration::from_secs(60));
    for exec in ALL {
        let c = Remote::spawn(make_counter, 0u64).unwrap();
        let pid = c.pid();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            sigkill(pid);
        });
        let r = exec.run(exec.timeout(HANG, c.call_async(slow_add, 30_000)));
        killer.join().unwrap();
        assert_eq!(r, Some(Err(RemoteError::Dead { pid })), "{exec:?}");
    }
}

// ---------------------------------------------------------------- item 5: Channel

/// Answers `x * 2` to every `x`, with its own end's async forms.
fn async_doubler(chan: Channel<u64, u64>, _: ()) {
    futures::executor::block_on(async {
        while let Ok(x) = chan.recv_async().await {
            if chan.send_async(&(x * 2)).await.is_err() {
                return;
            }
        }
    });
}

#[test]
fn channel_send_and_recv_async_both_ways() {
    let _w = watchdog("channel_send_and_recv_async_both_ways", Duration::from_secs(60));
    for exec in ALL {
        let chan = start(async_doubler, ()).unwrap();
        exec.run(async {
            for i in 0..200u64 {
                assert_eq!(chan.send_async(&i).await, Ok(()), "{exec:?}");
                assert_eq!(chan.recv_async().await, Ok(i * 2), "{exec:?}");
            }
            // A burst larger than the channel: sends and receives interleave.
            let sends = async {
                for i in 0..1000u64 {
                    chan.send_async(&i).await.unwrap();
                }
            };
            let recvs = async {
                let mut got = Vec::new();
                for _ in 0..1000 {
                    got.push(chan.recv_async().await.unwrap());
                }
                got
            };
            let ((), got) = exec.timeout(HANG, futures::future::join(sends, recvs)).await.expect("a burst hung");
            assert_eq!(got, (0..1000u64).map(|i| i * 2).collect::<Vec<_>>(), "{exec:?}");
        });
    }
}

fn marker(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("shmpool-asynctest-{tag}-{}", std::process::id()))
}

/// Waits (bounded) for `path` to exist.
fn await_file(path: &std::path::Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// The last message to a summing child: send the sum.
const END: u64 = u64::MAX;

/// Reads nothing until the marker file named by `gate` exists, then sums
/// what it receives up to [`END`] and sends the sum.
fn gated_summer(chan: Channel<u64, u64>, gate: String) {
    if !await_file(std::path::Path::new(&gate)) {
        return;
    }
    let mut sum = 0;
    while let Ok(x) = chan.recv() {
        if x == END {
            break;
        }
        sum += x;
    }
    let _ = chan.send(&sum);
}

/// Issue #12: `send_async` on a full channel waits (parks) and completes
/// when the peer drains it; nothing sent is lost.
#[test]
fn send_async_on_a_full_channel_completes_when_the_peer_drains() {
    let _w = watchdog("send_async_on_a_full_channel_completes_when_the_peer_drains", Duration::from_secs(60));
    for exec in ALL {
        let gate = marker(&format!("full-{exec:?}"));
        let _ = std::fs::remove_file(&gate);
        let chan = start(gated_summer, gate.to_string_lossy().into_owned()).unwrap();
        let sent = exec.run(async {
            let mut sent = 0u64;
            for i in 1..=10_000u64 {
                let mut fut = pin!(chan.send_async(&i));
                if poll_once(&mut fut).is_ready() {
                    sent += i;
                    continue;
                }
                // Full: the future waits for room; open the gate, and it completes.
                std::fs::write(&gate, b"open").unwrap();
                assert_eq!(exec.timeout(HANG, fut).await, Some(Ok(())), "{exec:?}: a send on a full channel");
                sent += i;
                assert!(i > 1, "{exec:?}: the first send found the channel full");
                return Some(sent);
            }
            None
        });
        let _ = std::fs::remove_file(&gate);
        let sent = sent.unwrap_or_else(|| panic!("{exec:?}: 10,000 sends and the channel never filled"));
        let sum = exec.run(async {
            chan.send_async(&END).await.unwrap();
            exec.timeout(HANG, chan.recv_async()).await
        });
        assert_eq!(sum, Some(Ok(sent)), "{exec:?}: every message sent on the full channel arrived once");
    }
}

/// Sends `0..n` with its end's `send_async`; the first time a send finds
/// the channel full (its first poll pending), creates the marker file
/// `gate`, then waits for room as the future does.
fn async_flooder(chan: Channel<u64, ()>, (gate, n): (String, u64)) {
    futures::executor::block_on(async {
        let mut told = false;
        for i in 0..n {
            let mut fut = pin!(chan.send_async(&i));
            if poll_once(&mut fut).is_pending() {
                if !told {
                    std::fs::write(&gate, b"full").unwrap();
                    told = true;
                }
                if fut.await.is_err() {
                    return;
                }
            }
        }
    });
}

/// The other direction: the child's `send_async` waits on a full channel
/// and completes as the parent's `recv_async` drains it.
#[test]
fn a_child_send_async_on_a_full_channel_completes_as_the_parent_drains() {
    let _w = watchdog("a_child_send_async_on_a_full_channel_completes_as_the_parent_drains", Duration::from_secs(60));
    const N: u64 = 1000;
    for exec in ALL {
        let gate = marker(&format!("flood-{exec:?}"));
        let _ = std::fs::remove_file(&gate);
        let chan = start(async_flooder, (gate.to_string_lossy().into_owned(), N)).unwrap();
        assert!(await_file(&gate), "{exec:?}: the child never found the channel full");
        let _ = std::fs::remove_file(&gate);
        let got = exec.run(async {
            let mut got = Vec::new();
            for _ in 0..N {
                match exec.timeout(HANG, chan.recv_async()).await {
                    Some(Ok(m)) => got.push(m),
                    other => panic!("{exec:?}: after {} messages: {other:?}", got.len()),
                }
            }
            assert_eq!(exec.timeout(HANG, chan.recv_async()).await, Some(Err(ChannelError::Closed)), "{exec:?}");
            got
        });
        assert_eq!(got, (0..N).collect::<Vec<_>>(), "{exec:?}: every message once, in order");
    }
}

fn exit_with(_chan: Channel<u64, u64>, code: i32) {
    std::process::exit(code);
}

/// Receives one message, then sleeps (reads nothing more) until killed.
fn wait_forever(chan: Channel<u64, u64>, _: ()) {
    let _ = chan.recv();
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn channel_futures_on_a_dead_peer_end_in_dead_not_a_hang() {
    let _w = watchdog("channel_futures_on_a_dead_peer_end_in_dead_not_a_hang", Duration::from_secs(120));
    for exec in ALL {
        // A child that exits without sending.
        let chan = start(exit_with, 3).unwrap();
        let pid = chan.pid().unwrap();
        let r = exec.run(exec.timeout(HANG, chan.recv_async()));
        assert_eq!(r, Some(Err(ChannelError::Dead { pid })), "{exec:?}: recv_async from an exited child");

        // A child killed while a recv_async waits on it.
        let chan = start(wait_forever, ()).unwrap();
        let pid = chan.pid().unwrap();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            sigkill(pid);
        });
        let r = exec.run(exec.timeout(HANG, chan.recv_async()));
        killer.join().unwrap();
        assert_eq!(r, Some(Err(ChannelError::Dead { pid })), "{exec:?}: recv_async while the child is killed");

        // Sends to a killed child: the channel fills (nobody reads), and the
        // send that waits for room learns the peer is dead.
        let chan = start(wait_forever, ()).unwrap();
        let pid = chan.pid().unwrap();
        sigkill(pid);
        let outcome = exec.run(async {
            for i in 0..1000u64 {
                match exec.timeout(HANG, chan.send_async(&i)).await {
                    Some(Ok(())) => {}
                    other => return other,
                }
            }
            None
        });
        assert_eq!(outcome, Some(Err(ChannelError::Dead { pid })), "{exec:?}: send_async to a killed child");
    }
}

// ---------------------------------------------------------------- item 5: WorkerPool

/// Multiplies by ten after sleeping `ms`; `ms == u64::MAX` kills its process.
struct Slow;

impl Worker for Slow {
    type Init = ();
    type Task = (u64, u64);
    type Output = u64;
    fn init(_: ()) -> Self {
        Slow
    }
    fn run(&mut self, (ms, v): (u64, u64)) -> u64 {
        if ms == u64::MAX {
            std::process::exit(3);
        }
        std::thread::sleep(Duration::from_millis(ms));
        v * 10
    }
}

/// Multiplies by ten; task 0 first waits for the marker file named by its
/// init argument.
struct Gated {
    gate: String,
}

impl Worker for Gated {
    type Init = String;
    type Task = u64;
    type Output = u64;
    fn init(gate: String) -> Self {
        Gated { gate }
    }
    fn run(&mut self, v: u64) -> u64 {
        if v == 0 {
            await_file(std::path::Path::new(&self.gate));
        }
        v * 10
    }
}

#[test]
fn worker_pool_get_async_is_in_put_order() {
    let _w = watchdog("worker_pool_get_async_is_in_put_order", Duration::from_secs(60));
    let pool = WorkerPool::<Slow>::builder().workers(2).build(()).unwrap();
    for exec in ALL {
        let got = exec.run(async {
            assert_eq!(pool.get_async().await, Err(GetError::NothingPending), "{exec:?}: nothing put yet");
            // Early tasks sleep longest: they finish last, and come first.
            for i in 0..10u64 {
                assert!(pool.put_async((30 - 3 * i, i)).await.is_ok(), "{exec:?}");
            }
            let mut got = Vec::new();
            for _ in 0..10 {
                got.push(exec.timeout(HANG, pool.get_async()).await.expect("get_async hung"));
            }
            assert_eq!(pool.get_async().await, Err(GetError::NothingPending), "{exec:?}: all taken");
            got
        });
        assert_eq!(got, (0..10u64).map(|i| Ok(i * 10)).collect::<Vec<_>>(), "{exec:?}");
    }
}

#[test]
fn worker_pool_put_async_on_a_full_queue_completes_once_there_is_room() {
    let _w = watchdog("worker_pool_put_async_on_a_full_queue_completes_once_there_is_room", Duration::from_secs(60));
    for exec in ALL {
        let gate = marker(&format!("put-{exec:?}"));
        let _ = std::fs::remove_file(&gate);
        let pool = WorkerPool::<Gated>::builder()
            .workers(1)
            .queue_capacity(2)
            .build(gate.to_string_lossy().into_owned())
            .unwrap();
        pool.put(0).unwrap(); // runs until the gate opens
        let mut accepted = vec![0u64];
        for v in 1..=10u64 {
            match pool.try_put(v) {
                Ok(()) => accepted.push(v),
                Err(PutError::Full(back)) => {
                    assert_eq!(back, v);
                    break;
                }
                Err(e) => panic!("{exec:?}: {e:?}"),
            }
        }
        assert!(accepted.len() < 10, "{exec:?}: the queue never filled: {accepted:?}");
        let got = exec.run(async {
            let mut put = pin!(pool.put_async(99));
            assert!(poll_once(&mut put).is_pending(), "{exec:?}: put_async on a full queue did not wait");
            std::fs::write(&gate, b"open").unwrap();
            // Nobody calls get: the room is made by the reactor's drainer.
            assert_eq!(exec.timeout(HANG, put).await, Some(Ok(())), "{exec:?}: put_async once there is room");
            let mut got = Vec::new();
            for _ in 0..accepted.len() + 1 {
                got.push(exec.timeout(HANG, pool.get_async()).await.expect("get_async hung").unwrap());
            }
            got
        });
        let _ = std::fs::remove_file(&gate);
        accepted.push(99);
        assert_eq!(got, accepted.iter().map(|v| v * 10).collect::<Vec<_>>(), "{exec:?}");
    }
}

#[test]
fn worker_pool_async_errors_closed_and_worker_died() {
    let _w = watchdog("worker_pool_async_errors_closed_and_worker_died", Duration::from_secs(60));
    for exec in ALL {
        let pool = WorkerPool::<Slow>::builder().workers(1).on_worker_death(OnWorkerDeath::Report).build(()).unwrap();
        exec.run(async {
            pool.put_async((u64::MAX, 1)).await.unwrap();
            match exec.timeout(HANG, pool.get_async()).await {
                Some(Err(GetError::Task(TaskError::WorkerDied { .. }))) => {}
                other => panic!("{exec:?}: expected WorkerDied, got {other:?}"),
            }
            // The replacement works.
            pool.put_async((0, 4)).await.unwrap();
            assert_eq!(exec.timeout(HANG, pool.get_async()).await, Some(Ok(40)), "{exec:?}");
            pool.close();
            match pool.put_async((0, 5)).await {
                Err(PutError::Closed(t)) => assert_eq!(t, (0, 5), "{exec:?}: the task is given back"),
                other => panic!("{exec:?}: expected Closed, got {other:?}"),
            }
            assert_eq!(pool.get_async().await, Err(GetError::NothingPending), "{exec:?}");
        });
    }
}

// ---------------------------------------------------------------- item 5: service Client

struct Tally {
    total: u64,
}

fn tally(start: u64) -> Tally {
    Tally { total: start }
}

fn tally_add(t: &mut Tally, n: u64) -> u64 {
    t.total += n;
    t.total
}

/// Adds `x` to the total and answers something only `x` gives.
fn tally_mark(t: &mut Tally, x: u64) -> (u64, u64) {
    t.total += x;
    (x, x * 3 + 1)
}

fn tally_slow(_: &mut Tally, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn tally_boom(_: &mut Tally, _: ()) -> u64 {
    panic!("service call failed")
}

/// What one task's calls gave: (argument, answer) pairs.
type Calls = Vec<(u64, Result<(u64, u64), ServiceError>)>;

fn service_name(tag: &str, exec: Exec) -> String {
    format!("asynctest-{tag}-{}-{exec:?}", std::process::id())
}

/// Concurrent `call_async`s from several tasks on one client: every one
/// answered with its own answer, every call run once.
#[test]
fn service_call_async_from_several_tasks_on_one_client() {
    let _w = watchdog("service_call_async_from_several_tasks_on_one_client", Duration::from_secs(120));
    for exec in ALL {
        let name = service_name("many", exec);
        let _service = Service::serve(&name, tally, 0u64).unwrap();
        let client = Arc::new(Service::<Tally>::connect(&name).unwrap());
        let answers = exec.run(async {
            assert_eq!(client.call_async(tally_add, 0).await, Ok(0), "{exec:?}");
            match client.call_async(tally_boom, ()).await {
                Err(ServiceError::Panicked { message }) => {
                    assert!(message.contains("service call failed"), "{message}")
                }
                other => panic!("{exec:?}: expected Panicked, got {other:?}"),
            }
            let tasks = (0..8u64)
                .map(|t| {
                    let c = Arc::clone(&client);
                    Box::pin(async move {
                        let mut out = Vec::new();
                        for k in 0..25u64 {
                            let x = t * 1000 + k;
                            out.push((x, c.call_async(tally_mark, x).await));
                        }
                        out
                    }) as std::pin::Pin<Box<dyn std::future::Future<Output = Calls> + Send>>
                })
                .collect();
            let per_task = exec.timeout(HANG, exec.spawn_all(tasks)).await.expect("concurrent calls hung");
            // Several futures of one task at once too.
            let joined = join_all((0..25u64).map(|k| client.call_async(tally_mark, 9000 + k))).await;
            (per_task, joined)
        });
        let (per_task, joined) = answers;
        let mut sum = 0;
        for (x, r) in per_task.into_iter().flatten() {
            assert_eq!(r, Ok((x, x * 3 + 1)), "{exec:?}: call {x}");
            sum += x;
        }
        for (k, r) in joined.into_iter().enumerate() {
            let x = 9000 + k as u64;
            assert_eq!(r, Ok((x, x * 3 + 1)), "{exec:?}: call {x}");
            sum += x;
        }
        assert_eq!(client.call(tally_add, 0), Ok(sum), "{exec:?}: every call ran exactly once");
    }
}

/// In a worker: serves a tally under `name` until killed.
fn serve_forever(name: String) -> u64 {
    let _s = Service::serve(&name, tally, 100u64).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn service_call_async_after_the_server_stopped_or_died_is_an_error() {
    let _w = watchdog("service_call_async_after_the_server_stopped_or_died_is_an_error", Duration::from_secs(120));
    for exec in ALL {
        // Dropped in this process: `Stopped`.
        let name = service_name("stopped", exec);
        let service = Service::serve(&name, tally, 5u64).unwrap();
        let client = Service::<Tally>::connect(&name).unwrap();
        assert_eq!(exec.run(client.call_async(tally_add, 1)), Ok(6), "{exec:?}");
        drop(service);
        let r = exec.run(exec.timeout(HANG, client.call_async(tally_add, 1)));
        assert_eq!(r, Some(Err(ServiceError::Stopped)), "{exec:?}: a call after the service was dropped");

        // Served by a process killed while a call waits: `ServerDead`.
        let name = service_name("killed", exec);
        let pool = Pool::builder().workers(1).on_worker_death(OnWorkerDeath::Report).build().unwrap();
        let server = pool.worker_pids()[0];
        let _serving = pool.submit(serve_forever, name.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            if let Ok(c) = Service::<Tally>::connect(&name) {
                break c;
            }
            assert!(Instant::now() < deadline, "{exec:?}: the service never came up");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(exec.run(client.call_async(tally_add, 1)), Ok(101), "{exec:?}");
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            sigkill(server);
        });
        let r = exec.run(exec.timeout(HANG, client.call_async(tally_slow, 30_000)));
        killer.join().unwrap();
        assert_eq!(
            r,
            Some(Err(ServiceError::ServerDead { pid: server })),
            "{exec:?}: a call waiting on a killed server"
        );
        drop(client);
        // The killed server left its name behind: once it is reaped (the
        // pool's drop), creating the name again replaces the stale segment,
        // and dropping that removes it.
        drop(_serving);
        drop(pool);
        let stale = shmpool::Segment::create(&format!("svc.{name}"), 1 << 20);
        assert!(stale.is_ok(), "{exec:?}: the dead server's segment could not be replaced: {stale:?}");
    }
}
