//! The four interprocess locks, across real processes: mutual exclusion,
//! timeouts and the deadlock handler, holders killed with SIGKILL, and the
//! authorisation lock's refusals.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use shmpool::sync::{DeadlockInfo, LockError, LockKind, LockOptions};
use shmpool::{Pool, Segment, TaskError};

const KINDS: [LockKind; 4] = [LockKind::Mutex, LockKind::RwLock, LockKind::Spin, LockKind::Auth];

fn code(kind: LockKind) -> u8 {
    KINDS.iter().position(|&k| k == kind).unwrap() as u8
}

fn kind(code: u8) -> LockKind {
    KINDS[code as usize]
}

/// Opens a lock of `kind` named `lock` in segment `seg` and runs `f` with a
/// closure that takes it exclusively for `timeout` (or for ever).
macro_rules! with_lock {
    ($seg:expr, $kind:expr, $opts:expr, |$take:ident| $body:expr) => {{
        match $kind {
            LockKind::Mutex => {
                let l = $seg.mutex_with("lock", $opts).unwrap();
                let $take = |t: Option<Duration>| match t {
                    Some(t) => l.lock_for(t).map(drop).map_err(LockError::without_guard),
                    None => l.lock().map(std::mem::forget).map_err(LockError::without_guard),
                };
                $body
            }
            LockKind::RwLock => {
                let l = $seg.rwlock_with("lock", $opts).unwrap();
                let $take = |t: Option<Duration>| match t {
                    Some(t) => l.lock_for(t).map(drop).map_err(LockError::without_guard),
                    None => l.lock().map(std::mem::forget).map_err(LockError::without_guard),
                };
                $body
            }
            LockKind::Spin => {
                let l = $seg.spin_lock_with("lock", $opts).unwrap();
                let $take = |t: Option<Duration>| match t {
                    Some(t) => l.lock_for(t).map(drop).map_err(LockError::without_guard),
                    None => l.lock().map(std::mem::forget).map_err(LockError::without_guard),
                };
                $body
            }
            LockKind::Auth => {
                let l = $seg.auth_lock_with("lock", $opts).unwrap();
                let $take = |t: Option<Duration>| match t {
                    Some(t) => l.lock_for(t).map(drop).map_err(LockError::without_guard),
                    None => l.lock().map(std::mem::forget).map_err(LockError::without_guard),
                };
                $body
            }
        }
    }};
}

/// The counter every process increments under the lock, without atomicity
/// of its own (load, yield, store), so that any overlap loses an update.
fn counter(seg: &Segment) -> &AtomicU64 {
    let (block, _) = seg.named("counter", 99, 0, 8, |_| Ok(())).unwrap();
    seg.get::<AtomicU64>(block.offset).unwrap()
}

/// Reads, yields, writes: loses updates unless the caller excludes others.
fn bump(c: &AtomicU64) {
    let v = c.load(Ordering::Relaxed);
    std::thread::yield_now();
    c.store(v + 1, Ordering::Relaxed);
}

fn increment_many(args: (String, u8, u64)) -> u64 {
    let (name, k, times) = args;
    let seg = Segment::open(&name).unwrap();
    let c = counter(&seg);
    for _ in 0..times {
        match kind(k) {
            LockKind::Mutex => {
                let l = seg.mutex("lock").unwrap();
                let _g = l.lock().unwrap();
                bump(c);
            }
            LockKind::RwLock => {
                let l = seg.rwlock("lock").unwrap();
                let _g = l.write().unwrap();
                bump(c);
            }
            LockKind::Spin => {
                let l = seg.spin_lock("lock").unwrap();
                let _g = l.lock().unwrap();
                bump(c);
            }
            LockKind::Auth => {
                let l = seg.auth_lock("lock").unwrap();
                let _g = l.lock().unwrap();
                bump(c);
            }
        }
    }
    times
}

fn pid_of(_: ()) -> u32 {
    std::process::id()
}

#[test]
fn each_kind_excludes_across_processes() {
    let pool = Pool::builder().workers(3).build().unwrap();
    let pids = pool.worker_pids();
    for kind in KINDS {
        let name = format!("locktest-excl-{}-{}", code(kind), std::process::id());
        let seg = Segment::create(&name, 1 << 20).unwrap();
        if kind == LockKind::Auth {
            let l = seg.auth_lock("lock").unwrap();
            for &p in &pids {
                l.add_operator(p).unwrap();
            }
        } else {
            with_lock!(seg, kind, LockOptions::default(), |_take| ());
        }
        let tickets: Vec<_> =
            (0..3).map(|_| pool.submit(increment_many, (name.clone(), code(kind), 2000)).unwrap()).collect();
        for t in tickets {
            assert_eq!(t.wait(), Ok(2000));
        }
        assert_eq!(counter(&seg).load(Ordering::Relaxed), 6000, "{kind:?} lost an update");
    }
}

static HANDLER_CALLED: AtomicBool = AtomicBool::new(false);

fn record_deadlock(info: &DeadlockInfo) {
    assert_eq!(info.name, "lock");
    HANDLER_CALLED.store(true, Ordering::SeqCst);
}

/// In another process: try_lock, then lock_for 50 ms, then lock() with a
/// 50 ms deadlock timeout; reports (would_block, timed out with holder,
/// handler called, default-timeout fired).
fn contend(args: (String, u8)) -> (bool, Option<u32>, bool, bool) {
    let (name, k) = args;
    let seg = Segment::open(&name).unwrap();
    let opts = LockOptions { deadlock_timeout: Some(Duration::from_millis(50)), on_deadlock: Some(record_deadlock) };
    with_lock!(seg, kind(k), opts, |take| {
        let would_block = match kind(k) {
            LockKind::Mutex => matches!(seg.mutex("lock").unwrap().try_lock(), Err(LockError::WouldBlock)),
            LockKind::RwLock => {
                let l = seg.rwlock("lock").unwrap();
                matches!(l.try_lock(), Err(LockError::WouldBlock))
                    && matches!(l.try_read(), Err(LockError::WouldBlock))
                    && matches!(l.read_for(Duration::from_millis(30)), Err(LockError::Timeout(_)))
            }
            LockKind::Spin => matches!(seg.spin_lock("lock").unwrap().try_lock(), Err(LockError::WouldBlock)),
            LockKind::Auth => matches!(seg.auth_lock("lock").unwrap().try_lock(), Err(LockError::WouldBlock)),
        };
        let holder = match take(Some(Duration::from_millis(50))) {
            Err(LockError::Timeout(info)) => info.holder,
            other => panic!("expected Timeout, got {other:?}"),
        };
        let handler = HANDLER_CALLED.swap(false, Ordering::SeqCst);
        let default_fired = matches!(take(None), Err(LockError::Timeout(_))) && HANDLER_CALLED.load(Ordering::SeqCst);
        (would_block, holder, handler, default_fired)
    })
}

#[test]
fn timeouts_report_the_holder_and_call_the_deadlock_handler() {
    let pool = Pool::builder().workers(1).on_worker_death(shmpool::OnWorkerDeath::Report).build().unwrap();
    let worker = pool.submit(pid_of, ()).unwrap().wait().unwrap();
    for kind in KINDS {
        let name = format!("locktest-timeout-{}-{}", code(kind), std::process::id());
        let seg = Segment::create(&name, 1 << 20).unwrap();
        let (would_block, holder, handler, default_fired) = with_lock!(seg, kind, LockOptions::default(), |take| {
            if kind == LockKind::Auth {
                seg.auth_lock("lock").unwrap().add_operator(worker).unwrap();
            }
            take(None).unwrap(); // held by this process until the segment goes
            pool.submit(contend, (name.clone(), code(kind))).unwrap().wait().unwrap()
        });
        assert!(would_block, "{kind:?}: try_lock did not see the lock held");
        assert_eq!(holder, Some(std::process::id()), "{kind:?}: timeout names the holder");
        assert!(handler, "{kind:?}: deadlock handler not called");
        assert!(default_fired, "{kind:?}: lock() with a deadlock timeout did not time out");
    }
}

/// Takes the lock of `kind` (a read hold when `read`) and dies with SIGKILL.
fn hold_and_die(args: (String, u8, bool)) -> u32 {
    let (name, k, read) = args;
    let seg = Segment::open(&name).unwrap();
    match (kind(k), read) {
        (LockKind::RwLock, true) => std::mem::forget(seg.rwlock("lock").unwrap().read().unwrap()),
        _ => with_lock!(seg, kind(k), LockOptions::default(), |take| take(None).unwrap()),
    }
    // SAFETY: sending a signal to ourselves.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL does not return")
}

#[test]
fn a_holder_killed_with_sigkill_hands_the_lock_on_with_owner_died() {
    let pool = Pool::builder().workers(1).on_worker_death(shmpool::OnWorkerDeath::Report).build().unwrap();
    for kind in KINDS {
        let name = format!("locktest-kill-{}-{}", code(kind), std::process::id());
        let seg = Segment::create(&name, 1 << 20).unwrap();
        let worker = pool.submit(pid_of, ()).unwrap().wait().unwrap();
        with_lock!(seg, kind, LockOptions::default(), |_take| ());
        if kind == LockKind::Auth {
            seg.auth_lock("lock").unwrap().add_operator(worker).unwrap();
        }
        match pool.submit(hold_and_die, (name.clone(), code(kind), false)).unwrap().wait() {
            Err(TaskError::WorkerDied { pid }) => assert_eq!(pid, worker),
            other => panic!("expected the holder to die, got {other:?}"),
        }
        // The next taker gets the lock, told that its holder died.
        let died = with_lock!(seg, kind, LockOptions::default(), |take| take(Some(Duration::from_secs(30))));
        match died {
            Err(LockError::OwnerDied { pid, .. }) => assert_eq!(pid, worker, "{kind:?}"),
            other => panic!("{kind:?}: expected OwnerDied, got {other:?}"),
        }
    }
}

#[test]
fn a_reader_killed_with_sigkill_does_not_block_writers() {
    let pool = Pool::builder().workers(1).on_worker_death(shmpool::OnWorkerDeath::Report).build().unwrap();
    let name = format!("locktest-reader-{}", std::process::id());
    let seg = Segment::create(&name, 1 << 20).unwrap();
    let l = seg.rwlock("lock").unwrap();
    assert!(matches!(
        pool.submit(hold_and_die, (name.clone(), code(LockKind::RwLock), true)).unwrap().wait(),
        Err(TaskError::WorkerDied { .. })
    ));
    // A dead reader wrote nothing: the writer gets the lock cleanly.
    let g = l.write_for(Duration::from_secs(30)).expect("writer acquires after the reader died");
    drop(g);
    let r1 = l.read().unwrap();
    let r2 = l.read().unwrap();
    assert!(matches!(l.try_lock(), Err(LockError::WouldBlock)));
    drop((r1, r2));
    assert!(l.try_lock().is_ok());
}

fn try_auth(name: String) -> String {
    let seg = Segment::open(&name).unwrap();
    let l = seg.auth_lock("lock").unwrap();
    let result = match l.lock_for(Duration::from_secs(10)) {
        Ok(_) => "ok".into(),
        Err(LockError::NotAuthorised { pid }) => {
            assert_eq!(pid, std::process::id());
            assert!(l.add_operator(pid).is_err(), "a non-operator cannot make itself one");
            "refused".into()
        }
        Err(e) => format!("{e}"),
    };
    result
}

#[test]
fn only_operators_may_take_an_auth_lock() {
    let pool = Pool::builder().workers(1).on_worker_death(shmpool::OnWorkerDeath::Report).build().unwrap();
    let name = format!("locktest-auth-{}", std::process::id());
    let seg = Segment::create(&name, 1 << 20).unwrap();
    let l = seg.auth_lock("lock").unwrap();
    assert!(l.is_operator(std::process::id()), "the creator is an operator");
    let worker = pool.submit(pid_of, ()).unwrap().wait().unwrap();
    assert_eq!(pool.submit(try_auth, name.clone()).unwrap().wait().unwrap(), "refused");
    l.add_operator(worker).unwrap();
    assert_eq!(pool.submit(try_auth, name.clone()).unwrap().wait().unwrap(), "ok");
    l.remove_operator(worker).unwrap();
    assert_eq!(pool.submit(try_auth, name.clone()).unwrap().wait().unwrap(), "refused");
}

#[test]
fn a_lock_opened_as_another_kind_is_a_type_mismatch() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    seg.mutex("m").unwrap();
    assert!(matches!(seg.rwlock("m"), Err(shmpool::SegmentError::TypeMismatch { .. })));
}

/// Holds the lock with `$hold` in another thread, which releases it after a
/// short sleep; meanwhile this thread waits with `$take`, whose result is
/// returned.
macro_rules! held_elsewhere {
    ($lock:expr, |$l:ident| $hold:expr, $take:expr) => {{
        let lock = &$lock;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(move || {
                let $l = lock;
                let guard = $hold;
                tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                drop(guard);
            });
            rx.recv().unwrap();
            let $l = lock;
            $take
        })
    }};
}

/// Regression (finding 13): `Instant::now() + Duration::MAX` panicked. A
/// timeout too large to be a deadline waits for ever: here until the holder
/// (another thread) releases the lock.
#[test]
fn lock_for_duration_max_waits_for_the_holder() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let m = seg.mutex("m").unwrap();
    assert!(held_elsewhere!(m, |l| l.lock().unwrap(), l.lock_for(Duration::MAX).is_ok()));
    let s = seg.spin_lock("s").unwrap();
    assert!(held_elsewhere!(s, |l| l.lock().unwrap(), l.lock_for(Duration::MAX).is_ok()));
    let a = seg.auth_lock("a").unwrap();
    assert!(held_elsewhere!(a, |l| l.lock().unwrap(), l.lock_for(Duration::MAX).is_ok()));
    let rw = seg.rwlock("rw").unwrap();
    assert!(held_elsewhere!(rw, |l| l.read().unwrap(), l.lock_for(Duration::MAX).is_ok()));
    assert!(held_elsewhere!(rw, |l| l.read().unwrap(), l.write_for(Duration::MAX).is_ok()));
}

#[test]
fn read_for_duration_max_waits_for_the_writer() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let rw = seg.rwlock("rw").unwrap();
    assert!(held_elsewhere!(rw, |l| l.write().unwrap(), l.read_for(Duration::MAX).is_ok()));
}

/// A deadlock timeout of `Duration::MAX` is no timeout: `lock()` waits.
#[test]
fn a_deadlock_timeout_of_duration_max_waits_for_the_holder() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let opts = LockOptions { deadlock_timeout: Some(Duration::MAX), on_deadlock: None };
    let m = seg.mutex_with("m", opts).unwrap();
    assert!(held_elsewhere!(m, |l| l.lock().unwrap(), l.lock().is_ok()));
    let s = seg.spin_lock_with("s", opts).unwrap();
    assert!(held_elsewhere!(s, |l| l.lock().unwrap(), l.lock().is_ok()));
    let a = seg.auth_lock_with("a", opts).unwrap();
    assert!(held_elsewhere!(a, |l| l.lock().unwrap(), l.lock().is_ok()));
    let rw = seg.rwlock_with("rw", opts).unwrap();
    assert!(held_elsewhere!(rw, |l| l.write().unwrap(), l.read().is_ok()));
    assert!(held_elsewhere!(rw, |l| l.read().unwrap(), l.write().is_ok()));
}
