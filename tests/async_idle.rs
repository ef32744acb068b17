//! Issue #12: while futures wait, no thread of the process spins. These
//! tests measure the CPU time of the whole test process (every thread: the
//! executor's, the reactor, the pools' and services' threads), so they live
//! in their own binary and take turns ([`serial`]): nothing else runs in the
//! process while one measures.
//!
//! One test waits on every kind of future at once under each executor; the
//! others wait on one kind each (under one executor each, to keep the file
//! short), so that a failure names the future that spins.

#[path = "common/exec.rs"]
mod exec;
#[path = "common/watchdog.rs"]
mod watchdog;

use std::time::{Duration, Instant};

use exec::{Exec, ALL};
use watchdog::watchdog;

use shmpool::{start, Channel, Pool, Remote, Service, Worker, WorkerPool};

/// Held by each test for its whole run: the tests of this file take turns.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The share of a core the process used while `fut` ran (under `exec`),
/// and `fut`'s output.
fn cpu_share<F: std::future::Future>(exec: Exec, fut: F) -> (f64, F::Output) {
    exec.run(async {
        let (cpu0, t0) = (cpu_time(), Instant::now());
        let out = fut.await;
        let (cpu, wall) = (cpu_time() - cpu0, t0.elapsed());
        eprintln!("{exec:?}: {cpu:?} of CPU over {wall:?} of waiting");
        (cpu.as_secs_f64() / wall.as_secs_f64(), out)
    })
}

/// Under 5% of a core (issue #12).
const MAX_SHARE: f64 = 0.05;

/// How long the awaited work takes.
const TASK_MS: u64 = 1000;

/// CPU time (user + system) of every thread of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes one rusage into the zeroed struct we own.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut u), 0);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn square(x: u64) -> u64 {
    x * x
}

/// Sends `ms` after sleeping that long.
fn late(chan: Channel<u64, ()>, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    let _ = chan.send(&ms);
}

struct Nap;

fn nap(_: ()) -> Nap {
    Nap
}

fn nap_for(_: &mut Nap, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

impl Worker for Nap {
    type Init = ();
    type Task = u64;
    type Output = u64;
    fn init(_: ()) -> Self {
        Nap
    }
    fn run(&mut self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
}

/// While futures of every kind wait about a second (tickets on a sleeping
/// task and queued behind it, a `recv_async`, a worker pool's `get_async`,
/// a remote's pending call, a service's `call_async`), the whole process
/// uses under 5% of a core: nothing spins, the reactor sleeps.
#[test]
fn futures_waiting_on_a_one_second_task_use_no_cpu() {
    let _serial = serial();
    let _w = watchdog("futures_waiting_on_a_one_second_task_use_no_cpu", Duration::from_secs(120));
    let pool = Pool::builder().workers(1).build().unwrap();
    let workers = WorkerPool::<Nap>::builder().workers(1).build(()).unwrap();
    let remote = Remote::spawn(nap, ()).unwrap();
    let name = format!("asyncidle-{}", std::process::id());
    let _service = Service::serve(&name, nap, ()).unwrap();
    let client = Service::<Nap>::connect(&name).unwrap();
    // Everything warmed up once (first-use costs are not waiting).
    assert_eq!(pool.submit(square, 3u64).unwrap().wait(), Ok(9));
    assert_eq!(remote.call(nap_for, 0), Ok(0));
    assert_eq!(client.call(nap_for, 0), Ok(0));
    for exec in ALL {
        let chan = start(late, TASK_MS).unwrap();
        let (cpu, wall, results) = exec.run(async {
            let long = pool.submit(sleepy, TASK_MS).unwrap();
            let behind: Vec<_> = (0..50u64).map(|x| pool.submit(square, x).unwrap()).collect();
            workers.put_async(TASK_MS).await.unwrap();
            let (cpu0, t0) = (cpu_time(), Instant::now());
            let results = futures::join!(
                long,
                futures::future::join_all(behind),
                chan.recv_async(),
                workers.get_async(),
                remote.call_async(nap_for, TASK_MS),
                client.call_async(nap_for, TASK_MS),
            );
            (cpu_time() - cpu0, t0.elapsed(), results)
        });
        let (long, behind, message, got, called, served) = results;
        assert_eq!(long, Ok(TASK_MS), "{exec:?}");
        assert_eq!(behind, (0..50u64).map(|x| Ok(x * x)).collect::<Vec<_>>(), "{exec:?}");
        assert_eq!(message, Ok(TASK_MS), "{exec:?}");
        assert_eq!(got, Ok(TASK_MS), "{exec:?}");
        assert_eq!(called, Ok(TASK_MS), "{exec:?}");
        assert_eq!(served, Ok(TASK_MS), "{exec:?}");
        let share = cpu.as_secs_f64() / wall.as_secs_f64();
        eprintln!("{exec:?}: {cpu:?} of CPU over {wall:?} of waiting ({:.2}% of a core)", share * 100.0);
        assert!(share < 0.05, "{exec:?}: the process used {cpu:?} of CPU over {wall:?} of waiting");
    }
}

#[test]
fn a_ticket_waiting_a_second_uses_no_cpu() {
    let _serial = serial();
    let _w = watchdog("a_ticket_waiting_a_second_uses_no_cpu", Duration::from_secs(60));
    let pool = Pool::builder().workers(1).build().unwrap();
    assert_eq!(pool.submit(square, 3u64).unwrap().wait(), Ok(9));
    let (share, r) = cpu_share(Exec::TokioMulti, pool.submit(sleepy, TASK_MS).unwrap());
    assert_eq!(r, Ok(TASK_MS));
    assert!(share < MAX_SHARE, "{:.1}% of a core", share * 100.0);
}

#[test]
fn a_map_stream_waiting_a_second_uses_no_cpu() {
    let _serial = serial();
    let _w = watchdog("a_map_stream_waiting_a_second_uses_no_cpu", Duration::from_secs(60));
    let pool = Pool::builder().workers(1).build().unwrap();
    assert_eq!(pool.submit(square, 3u64).unwrap().wait(), Ok(9));
    let stream = pool.map(sleepy, [TASK_MS / 2, TASK_MS / 2]).unwrap().into_stream();
    let (share, r) = cpu_share(Exec::BlockOn, futures::StreamExt::collect::<Vec<_>>(stream));
    assert_eq!(r, vec![Ok(TASK_MS / 2); 2]);
    assert!(share < MAX_SHARE, "{:.1}% of a core", share * 100.0);
}

#[test]
fn a_worker_pool_get_async_waiting_a_second_uses_no_cpu() {
    let _serial = serial();
    let _w = watchdog("a_worker_pool_get_async_waiting_a_second_uses_no_cpu", Duration::from_secs(60));
    let workers = WorkerPool::<Nap>::builder().workers(1).build(()).unwrap();
    workers.put(0).unwrap();
    assert_eq!(workers.get(), Ok(0));
    workers.put(TASK_MS).unwrap();
    let (share, r) = cpu_share(Exec::TokioCurrent, workers.get_async());
    assert_eq!(r, Ok(TASK_MS));
    assert!(share < MAX_SHARE, "{:.1}% of a core", share * 100.0);
}

#[test]
fn a_remote_pending_call_waiting_a_second_uses_no_cpu() {
    let _serial = serial();
    let _w = watchdog("a_remote_pending_call_waiting_a_second_uses_no_cpu", Duration::from_secs(60));
    let remote = Remote::spawn(nap, ()).unwrap();
    assert_eq!(remote.call(nap_for, 0), Ok(0));
    let (share, r) = cpu_share(Exec::BlockOn, remote.call_async(nap_for, TASK_MS));
    assert_eq!(r, Ok(TASK_MS));
    assert!(share < MAX_SHARE, "{:.1}% of a core", share * 100.0);
}

#[test]
fn a_channel_recv_async_waiting_a_second_uses_no_cpu() {
    let _serial = serial();
    let _w = watchdog("a_channel_recv_async_waiting_a_second_uses_no_cpu", Duration::from_secs(60));
    let chan = start(late, TASK_MS).unwrap();
    let (share, r) = cpu_share(Exec::TokioMulti, chan.recv_async());
    assert_eq!(r, Ok(TASK_MS));
    assert!(share < MAX_SHARE, "{:.1}% of a core", share * 100.0);
}

/// Reads nothing for `ms`, then everything until the channel closes.
fn read_after(chan: Channel<(), u64>, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    while chan.recv().is_ok() {}
}

#[test]
fn a_channel_send_async_waiting_a_second_for_room_uses_no_cpu() {
    let _serial = serial();
    let _w = watchdog("a_channel_send_async_waiting_a_second_for_room_uses_no_cpu", Duration::from_secs(60));
    let chan = start(read_after, TASK_MS).unwrap();
    let mut full_at = None;
    for i in 0..10_000u64 {
        let mut send = std::pin::pin!(chan.send_async(&i));
        if exec::poll_once(&mut send).is_pending() {
            full_at = Some(i);
            break;
        }
    }
    let full_at = full_at.expect("10,000 sends and the channel never filled");
    let (share, r) = cpu_share(Exec::TokioCurrent, chan.send_async(&full_at));
    assert_eq!(r, Ok(()));
    assert!(share < MAX_SHARE, "{:.1}% of a core", share * 100.0);
}

#[test]
fn a_service_call_async_waiting_a_second_uses_no_cpu() {
    let _serial = serial();
    let _w = watchdog("a_service_call_async_waiting_a_second_uses_no_cpu", Duration::from_secs(60));
    let name = format!("asyncidle-svc-{}", std::process::id());
    let _service = Service::serve(&name, nap, ()).unwrap();
    let client = Service::<Nap>::connect(&name).unwrap();
    assert_eq!(client.call(nap_for, 0), Ok(0));
    let (share, r) = cpu_share(Exec::BlockOn, client.call_async(nap_for, TASK_MS));
    assert_eq!(r, Ok(TASK_MS));
    assert!(share < MAX_SHARE, "{:.1}% of a core", share * 100.0);
}
