//! Locks: each shmpool lock kind, uncontended and contended between two
//! processes, against a robust process-shared pthread mutex and raw_sync's
//! mutex and read-write lock (plain process-shared pthread locks, no
//! owner-died recovery).

use std::error::Error;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raw_sync::locks::{LockImpl, LockInit};

use crate::common::{median, progress, unique_name, wait_for, BoxResult};
use crate::params::Params;
use crate::report::{verdict, Cell, Column, Section};
use crate::roundtrip::build_pool;

/// Directory kind of the blocks this benchmark names in its own segments.
const BENCH_BLOCK_KIND: u32 = 99;
/// The block of [`LockWords`].
const WORDS_BLOCK: &str = "counter";
/// The block of the pthread mutex.
const PTHREAD_BLOCK: &str = "pthread-mutex";
/// Bytes given to the pthread mutex: its size rounded up to a cache line.
const PTHREAD_BLOCK_LEN: u64 = (std::mem::size_of::<libc::pthread_mutex_t>() as u64).div_ceil(64) * 64;
// Arena blocks are 16-byte aligned, enough for the mutex.
const _: () = assert!(std::mem::align_of::<libc::pthread_mutex_t>() <= 16);

/// The locks of the lock rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LockUnderTest {
    Mutex,
    RwWrite,
    RwRead,
    Spin,
    Auth,
    Pthread,
    RawSyncMutex,
    RawSyncRwWrite,
    RawSyncRwRead,
}

impl LockUnderTest {
    const ALL: [LockUnderTest; 9] = [
        LockUnderTest::Mutex,
        LockUnderTest::RwWrite,
        LockUnderTest::RwRead,
        LockUnderTest::Spin,
        LockUnderTest::Auth,
        LockUnderTest::Pthread,
        LockUnderTest::RawSyncMutex,
        LockUnderTest::RawSyncRwWrite,
        LockUnderTest::RawSyncRwRead,
    ];

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.code() == code)
    }

    fn label(self) -> &'static str {
        match self {
            LockUnderTest::Mutex => "shmpool Mutex",
            LockUnderTest::RwWrite => "shmpool RwLock, write",
            LockUnderTest::RwRead => "shmpool RwLock, read",
            LockUnderTest::Spin => "shmpool SpinLock",
            LockUnderTest::Auth => "shmpool AuthLock",
            LockUnderTest::Pthread => "pthread mutex, robust + pshared",
            LockUnderTest::RawSyncMutex => "raw_sync Mutex (pshared, not robust)",
            LockUnderTest::RawSyncRwWrite => "raw_sync RwLock, write",
            LockUnderTest::RawSyncRwRead => "raw_sync RwLock, read",
        }
    }

    /// Whether a hold excludes other holders: only those have a contended
    /// row, where two processes increment one counter.
    fn exclusive(self) -> bool {
        !matches!(self, LockUnderTest::RwRead | LockUnderTest::RawSyncRwRead)
    }

    fn is_shmpool(self) -> bool {
        self.label().starts_with("shmpool")
    }

    /// The shmpool row this peer row is compared with.
    fn shmpool_counterpart(self) -> Option<LockUnderTest> {
        match self {
            LockUnderTest::Pthread | LockUnderTest::RawSyncMutex => Some(LockUnderTest::Mutex),
            LockUnderTest::RawSyncRwWrite => Some(LockUnderTest::RwWrite),
            LockUnderTest::RawSyncRwRead => Some(LockUnderTest::RwRead),
            _ => None,
        }
    }
}

/// Words shared by the parent and the worker of the lock rows: the counter
/// the locks guard and the start handshake.
struct LockWords<'a> {
    counter: &'a AtomicU64,
    /// Set by the worker once it has opened everything.
    ready: &'a AtomicU64,
    /// Set by the parent to start both loops together.
    go: &'a AtomicU64,
}

impl LockWords<'_> {
    fn open(seg: &shmpool::Segment) -> BoxResult<LockWords<'_>> {
        let (block, _) = seg.named(WORDS_BLOCK, BENCH_BLOCK_KIND, 0, 64, |block| {
            for word in 0..3 {
                seg.get::<AtomicU64>(block.offset + 8 * word)?.store(0, Ordering::Relaxed);
            }
            Ok(())
        })?;
        Ok(LockWords {
            counter: seg.get(block.offset)?,
            ready: seg.get(block.offset + 8)?,
            go: seg.get(block.offset + 16)?,
        })
    }

    fn reset(&self) {
        for word in [self.counter, self.ready, self.go] {
            word.store(0, Ordering::SeqCst);
        }
    }
}

/// A robust, process-shared pthread mutex in a segment block.
struct PthreadMutex {
    /// Keeps the mapping that `mutex` points into alive.
    _seg: shmpool::Segment,
    mutex: *mut libc::pthread_mutex_t,
}

/// A held [`PthreadMutex`]; unlocks when dropped.
struct PthreadGuard<'a>(&'a PthreadMutex);

impl PthreadMutex {
    /// Creates the mutex in `seg` (initialising it), or opens the one there.
    fn open(seg: &shmpool::Segment) -> BoxResult<PthreadMutex> {
        let (block, _) = seg.named(PTHREAD_BLOCK, BENCH_BLOCK_KIND, 1, PTHREAD_BLOCK_LEN, |block| {
            let mutex = seg.ptr(block.offset, PTHREAD_BLOCK_LEN)?.cast::<libc::pthread_mutex_t>();
            Ok(init_robust_mutex(mutex)?)
        })?;
        let mutex = seg.ptr(block.offset, PTHREAD_BLOCK_LEN)?.cast::<libc::pthread_mutex_t>();
        Ok(PthreadMutex { _seg: seg.clone(), mutex })
    }

    fn lock(&self) -> io::Result<PthreadGuard<'_>> {
        // SAFETY: `mutex` points to a mutex initialised by `init_robust_mutex`
        // in a block that `_seg` keeps mapped; a process-shared mutex may be
        // used through any mapping of its memory.
        match unsafe { libc::pthread_mutex_lock(self.mutex) } {
            0 => Ok(PthreadGuard(self)),
            libc::EOWNERDEAD => {
                // SAFETY: as above; EOWNERDEAD means we hold the lock, so we may
                // mark it consistent and release it.
                unsafe {
                    libc::pthread_mutex_consistent(self.mutex);
                    libc::pthread_mutex_unlock(self.mutex);
                }
                Err(io::Error::other("pthread mutex holder died"))
            }
            code => Err(io::Error::from_raw_os_error(code)),
        }
    }
}

impl Drop for PthreadGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: the guard exists only while this thread holds the mutex,
        // which is initialised and mapped (see `PthreadMutex::lock`).
        unsafe { libc::pthread_mutex_unlock(self.0.mutex) };
    }
}

/// Initialises the memory at `mutex` as a robust, process-shared mutex.
fn init_robust_mutex(mutex: *mut libc::pthread_mutex_t) -> io::Result<()> {
    let check = |code: libc::c_int| if code == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(code)) };
    let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    // SAFETY: `attr` is initialised by pthread_mutexattr_init before any other
    // use and destroyed once; `mutex` is the start of a writable arena block
    // of at least its size, 16-byte aligned (asserted enough above), that
    // nobody else can see yet (the segment directory publishes it only after
    // this returns).
    unsafe {
        check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
        let result = check(libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED))
            .and_then(|()| check(libc::pthread_mutexattr_setrobust(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST)))
            .and_then(|()| check(libc::pthread_mutex_init(mutex, attr.as_ptr())));
        libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
        result
    }
}

/// Bytes given to each raw_sync lock (a pthread rwlock is 56 bytes).
const RAW_SYNC_BLOCK_LEN: u64 = 128;

/// A raw_sync mutex or read-write lock in a segment block.
struct RawSyncLock {
    lock: Box<dyn LockImpl>,
    /// Take it for reading (the read-write lock's read row).
    read: bool,
    /// Keeps the mapping that `lock` points into alive.
    _seg: shmpool::Segment,
}

impl RawSyncLock {
    /// Creates the lock in `seg` (initialising it), or opens the one there.
    fn open(seg: &shmpool::Segment, rw: bool, read: bool) -> BoxResult<RawSyncLock> {
        let name = if rw { "raw-sync-rwlock" } else { "raw-sync-mutex" };
        let size = |mem: *mut u8| {
            if rw {
                raw_sync::locks::RwLock::size_of(Some(mem))
            } else {
                raw_sync::locks::Mutex::size_of(Some(mem))
            }
        };
        let (block, _) = seg.named(name, BENCH_BLOCK_KIND, 1, RAW_SYNC_BLOCK_LEN, |block| {
            let mem = seg.ptr(block.offset, RAW_SYNC_BLOCK_LEN)?;
            assert!(size(mem) as u64 <= RAW_SYNC_BLOCK_LEN, "raw_sync needs more than {RAW_SYNC_BLOCK_LEN} bytes");
            // SAFETY: `mem` is the start of a writable arena block big enough
            // for the lock and its alignment padding (asserted), which nobody
            // else can see yet: the directory publishes it after this returns.
            // raw_sync never dereferences the data pointer we give it.
            let created = unsafe {
                if rw {
                    raw_sync::locks::RwLock::new(mem, mem)
                } else {
                    raw_sync::locks::Mutex::new(mem, mem)
                }
            };
            // The handle is dropped at once (dropping it leaves the lock as
            // it is); every user opens it with `from_existing` below.
            created.map(drop).map_err(|_| shmpool::SegmentError::Corrupt("raw_sync could not initialise its lock"))
        })?;
        let mem = seg.ptr(block.offset, RAW_SYNC_BLOCK_LEN)?;
        // SAFETY: the block holds a lock of this kind, initialised by the
        // init closure above (in whichever process created the block), and
        // `_seg` keeps it mapped for as long as the handle lives.
        let opened = unsafe {
            if rw {
                raw_sync::locks::RwLock::from_existing(mem, mem)
            } else {
                raw_sync::locks::Mutex::from_existing(mem, mem)
            }
        };
        let (lock, _) = opened.map_err(|e| format!("raw_sync: {e}"))?;
        Ok(RawSyncLock { lock, read, _seg: seg.clone() })
    }
}

/// raw_sync's boxed error, made `Send + Sync`-free and `Error` again.
#[derive(Debug)]
struct RawSyncError(Box<dyn Error>);

impl std::fmt::Display for RawSyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "raw_sync: {}", self.0)
    }
}

impl Error for RawSyncError {}

/// One lock of [`LockUnderTest`], opened in this process.
enum OpenLock {
    Mutex(shmpool::sync::Mutex),
    RwLock { lock: shmpool::sync::RwLock, read: bool },
    Spin(shmpool::sync::SpinLock),
    Auth(shmpool::sync::AuthLock),
    Pthread(PthreadMutex),
    RawSync(RawSyncLock),
}

impl OpenLock {
    /// Creates or opens the lock of `kind` in `seg` (the two read-write rows
    /// share one lock).
    fn open(seg: &shmpool::Segment, kind: LockUnderTest) -> BoxResult<OpenLock> {
        Ok(match kind {
            LockUnderTest::Mutex => OpenLock::Mutex(seg.mutex("m")?),
            LockUnderTest::RwWrite => OpenLock::RwLock { lock: seg.rwlock("rw")?, read: false },
            LockUnderTest::RwRead => OpenLock::RwLock { lock: seg.rwlock("rw")?, read: true },
            LockUnderTest::Spin => OpenLock::Spin(seg.spin_lock("s")?),
            LockUnderTest::Auth => OpenLock::Auth(seg.auth_lock("a")?),
            LockUnderTest::Pthread => OpenLock::Pthread(PthreadMutex::open(seg)?),
            LockUnderTest::RawSyncMutex => OpenLock::RawSync(RawSyncLock::open(seg, false, false)?),
            LockUnderTest::RawSyncRwWrite => OpenLock::RawSync(RawSyncLock::open(seg, true, false)?),
            LockUnderTest::RawSyncRwRead => OpenLock::RawSync(RawSyncLock::open(seg, true, true)?),
        })
    }

    /// `rounds` times: take the lock, add one to `counter` with a plain load
    /// and store (an increment is lost if exclusion fails), release. A read
    /// hold only loads the counter.
    fn rounds(&self, rounds: u64, counter: &AtomicU64) -> BoxResult<()> {
        use shmpool::sync::LockError;
        match self {
            OpenLock::Mutex(lock) => {
                hold_rounds(rounds, counter, true, || lock.lock().map_err(LockError::without_guard))
            }
            OpenLock::RwLock { lock, read: true } => {
                hold_rounds(rounds, counter, false, || lock.read().map_err(LockError::without_guard))
            }
            OpenLock::RwLock { lock, read: false } => {
                hold_rounds(rounds, counter, true, || lock.write().map_err(LockError::without_guard))
            }
            OpenLock::Spin(lock) => {
                hold_rounds(rounds, counter, true, || lock.lock().map_err(LockError::without_guard))
            }
            OpenLock::Auth(lock) => {
                hold_rounds(rounds, counter, true, || lock.lock().map_err(LockError::without_guard))
            }
            OpenLock::Pthread(lock) => hold_rounds(rounds, counter, true, || lock.lock()),
            OpenLock::RawSync(RawSyncLock { lock, read: true, .. }) => {
                hold_rounds(rounds, counter, false, || lock.rlock().map_err(RawSyncError))
            }
            OpenLock::RawSync(RawSyncLock { lock, read: false, .. }) => {
                hold_rounds(rounds, counter, true, || lock.lock().map_err(RawSyncError))
            }
        }
    }
}

/// The loop of [`OpenLock::rounds`], for one kind of guard.
fn hold_rounds<G, E: Error + 'static>(
    rounds: u64,
    counter: &AtomicU64,
    increment: bool,
    mut acquire: impl FnMut() -> Result<G, E>,
) -> BoxResult<()> {
    for _ in 0..rounds {
        let guard = acquire()?;
        if increment {
            counter.store(counter.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        } else {
            std::hint::black_box(counter.load(Ordering::Relaxed));
        }
        drop(guard);
    }
    Ok(())
}

/// Task of the contended lock rows, run in a pool worker: opens the named
/// segment, says it is ready, waits for the parent's go and runs `rounds`
/// rounds on the lock of kind `kind`. Returns the nanoseconds they took.
fn hammer_lock((segment, kind, rounds): (String, u8, u64)) -> u64 {
    match hammer_lock_in_worker(&segment, kind, rounds) {
        Ok(nanos) => nanos,
        Err(error) => panic!("contended lock worker: {error}"),
    }
}

fn hammer_lock_in_worker(segment: &str, kind: u8, rounds: u64) -> BoxResult<u64> {
    let kind = LockUnderTest::from_code(kind).ok_or("unknown lock kind")?;
    let seg = shmpool::Segment::open(segment)?;
    let lock = OpenLock::open(&seg, kind)?;
    let words = LockWords::open(&seg)?;
    words.ready.store(1, Ordering::SeqCst);
    wait_for("the parent's go", || words.go.load(Ordering::SeqCst) == 1)?;
    let start = Instant::now();
    lock.rounds(rounds, words.counter)?;
    Ok(start.elapsed().as_nanos() as u64)
}

/// Two processes taking one lock in turn, as fast as they can.
struct Contended {
    /// Lock acquisitions by both processes together.
    pairs: u64,
    /// From the go to the end of the slower process.
    elapsed: Duration,
}

impl Contended {
    fn pairs_per_second(&self) -> f64 {
        self.pairs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn nanos_per_acquisition(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e9 / self.pairs.max(1) as f64
    }
}

/// One lock's figures.
struct LockRow {
    kind: LockUnderTest,
    /// Nanoseconds per lock, increment, unlock in one process.
    uncontended_ns: f64,
    contended: Option<Contended>,
}

pub fn measure_locks(params: &Params) -> BoxResult<Section> {
    progress("locks");
    let pool = build_pool(1)?;
    let name = unique_name("locks");
    let seg = shmpool::Segment::create(&name, 1 << 20)?;
    let words = LockWords::open(&seg)?;
    let locks = LockUnderTest::ALL.map(|kind| OpenLock::open(&seg, kind).map(|lock| (kind, lock)));
    let mut rows = Vec::new();
    for opened in locks {
        let (kind, lock) = opened?;
        if let OpenLock::Auth(auth) = &lock {
            for pid in pool.worker_pids() {
                auth.add_operator(pid)?;
            }
        }
        progress(&format!("locks: {}", kind.label()));
        let uncontended_ns = uncontended_lock(params, kind, &lock, &words)?;
        let contended = match kind.exclusive() {
            true => Some(contended_lock(params, &pool, &name, kind, &lock, &words)?),
            false => None,
        };
        rows.push(LockRow { kind, uncontended_ns, contended });
    }
    // The segment is unlinked when `seg`, its creator's handle, goes.
    drop(seg);
    Ok(locks_section(params, &rows))
}

fn locks_section(params: &Params, rows: &[LockRow]) -> Section {
    let mut section = Section::new(
        "locks",
        format!(
            "Locks: lock, increment a counter in the segment, unlock. Uncontended: {} rounds in one process; \
             contended: this process and a worker, {} rounds each on one lock; median of {} runs",
            params.lock_pairs, params.contended_rounds, params.lock_runs
        ),
        vec![
            Column::new("uncontended", "uncontended_ns_per_round"),
            Column::new("vs shmpool", "uncontended_vs_shmpool"),
            Column::new("contended/s", "contended_rounds_per_second"),
            Column::new("per acquire", "contended_ns_per_acquisition"),
            Column::new("vs shmpool", "contended_vs_shmpool"),
        ],
    );
    let find = |kind: Option<LockUnderTest>| rows.iter().find(|row| Some(row.kind) == kind);
    let mut lost = Vec::new();
    for row in rows {
        let reference = find(row.kind.shmpool_counterpart());
        let per_acquire = row.contended.as_ref().map(Contended::nanos_per_acquisition);
        let reference_per_acquire = reference.and_then(|r| r.contended.as_ref()).map(Contended::nanos_per_acquisition);
        let uncontended = Cell::slower(Some(row.uncontended_ns), reference.map(|r| r.uncontended_ns));
        let contended = Cell::slower(per_acquire, reference_per_acquire);
        for (what, cell) in [("uncontended", &uncontended), ("contended", &contended)] {
            if let (Cell::Slower(ratio), Some(reference)) = (cell, reference) {
                if *ratio < 1.0 {
                    lost.push(format!("{} {what} ({})", row.kind.label(), reference.kind.label()));
                }
            }
        }
        section.row(
            row.kind.label(),
            vec![
                Cell::Nanos(row.uncontended_ns),
                if row.kind.is_shmpool() { Cell::Empty } else { uncontended },
                row.contended.as_ref().map_or(Cell::Empty, |c| Cell::Rate(c.pairs_per_second())),
                per_acquire.map_or(Cell::Empty, Cell::Nanos),
                if row.kind.is_shmpool() { Cell::Empty } else { contended },
            ],
        );
    }
    section.note("contended/s: rounds per second of both processes together; per acquire: wall time / rounds");
    section.note(
        "the counter ended at the total in every contended row (checked); read holds do not exclude each \
         other, so read rows have no contended run",
    );
    section.note(
        "\"vs shmpool\": a peer's time relative to the matching shmpool lock (pthread and raw_sync mutexes \
         against shmpool Mutex, raw_sync RwLock against shmpool RwLock); \"slower\" means the peer is slower",
    );
    section.note(if lost.is_empty() {
        format!("goal: shmpool ahead of every peer lock: {}", verdict(true))
    } else {
        format!(
            "goal: shmpool ahead of every peer lock: {} where the peer is faster: {}",
            verdict(false),
            lost.join("; ")
        )
    });
    let uncontended = |kind: LockUnderTest| rows.iter().find(|row| row.kind == kind).map(|row| row.uncontended_ns);
    let factor = |ours: LockUnderTest, peer: LockUnderTest| Some(uncontended(ours)? / uncontended(peer)?.max(1e-12));
    section.note(match factor(LockUnderTest::Mutex, LockUnderTest::Pthread) {
        Some(f) => format!(
            "goal: Mutex uncontended within {LOCK_GOAL}x of the robust pshared pthread mutex: {f:.2}x, {}",
            verdict(f <= LOCK_GOAL)
        ),
        None => "goal: Mutex uncontended within 1.2x of the robust pshared pthread mutex: NOT CHECKED".to_owned(),
    });
    let read = factor(LockUnderTest::RwRead, LockUnderTest::RawSyncRwRead);
    let write = factor(LockUnderTest::RwWrite, LockUnderTest::RawSyncRwWrite);
    section.note(match (read, write) {
        (Some(r), Some(w)) => format!(
            "goal: RwLock read / write uncontended within {LOCK_GOAL}x of raw_sync's: read {r:.2}x, write {w:.2}x, {}",
            verdict(r <= LOCK_GOAL && w <= LOCK_GOAL)
        ),
        _ => "goal: RwLock read / write uncontended within 1.2x of raw_sync's: NOT CHECKED".to_owned(),
    });
    section
}

/// The uncontended goal: shmpool's locks within this factor of the peer's time.
const LOCK_GOAL: f64 = 1.2;

/// Median nanoseconds per round over `params.runs` runs in this process alone.
fn uncontended_lock(params: &Params, kind: LockUnderTest, lock: &OpenLock, words: &LockWords) -> BoxResult<f64> {
    let pairs = params.lock_pairs;
    lock.rounds(pairs / 10, words.counter)?;
    let mut times = Vec::with_capacity(params.lock_runs);
    for _ in 0..params.lock_runs {
        words.counter.store(0, Ordering::SeqCst);
        let start = Instant::now();
        lock.rounds(pairs, words.counter)?;
        times.push(start.elapsed());
        let count = words.counter.load(Ordering::SeqCst);
        if kind.exclusive() && count != pairs {
            return Err(format!("{}: counter is {count} after {pairs} increments", kind.label()).into());
        }
    }
    Ok(median(times).as_secs_f64() * 1e9 / pairs.max(1) as f64)
}

/// `params.lock_runs` runs in which the parent and a pool worker each run
/// `params.contended_rounds` rounds on the same lock at once (the counter
/// must end at the total); the median run.
fn contended_lock(
    params: &Params,
    pool: &shmpool::Pool,
    segment: &str,
    kind: LockUnderTest,
    lock: &OpenLock,
    words: &LockWords,
) -> BoxResult<Contended> {
    let rounds = params.contended_rounds;
    let pairs = 2 * rounds;
    let mut times = Vec::with_capacity(params.lock_runs);
    for _ in 0..params.lock_runs {
        words.reset();
        let ticket = pool.submit(hammer_lock, (segment.to_owned(), kind.code(), rounds))?;
        wait_for("the lock worker to start", || words.ready.load(Ordering::SeqCst) == 1)?;
        let start = Instant::now();
        words.go.store(1, Ordering::SeqCst);
        lock.rounds(rounds, words.counter)?;
        ticket.wait()?;
        times.push(start.elapsed());
        let count = words.counter.load(Ordering::SeqCst);
        if count != pairs {
            return Err(format!(
                "{}: MUTUAL EXCLUSION FAILED: the counter is {count} after {pairs} locked increments by two processes",
                kind.label()
            )
            .into());
        }
    }
    Ok(Contended { pairs, elapsed: median(times) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::Mode;

    /// Uncontended rows only: every kind at 10 ns but those given.
    fn rows(times: &[(LockUnderTest, f64)]) -> Vec<LockRow> {
        let time = |kind| times.iter().find(|(k, _)| *k == kind).map_or(10.0, |&(_, ns)| ns);
        LockUnderTest::ALL.map(|kind| LockRow { kind, uncontended_ns: time(kind), contended: None }).into()
    }

    #[test]
    fn the_uncontended_goal_lines_follow_the_figures_shown() {
        let params = Params::new(Mode::Quick);
        let goals = |rows: &[LockRow]| -> Vec<String> {
            let notes = locks_section(&params, rows).notes;
            notes.into_iter().filter(|n| n.contains("within 1.2x")).collect()
        };
        let met = goals(&rows(&[(LockUnderTest::Mutex, 11.0), (LockUnderTest::RwWrite, 12.0)]));
        assert!(met[0].ends_with("mutex: 1.10x, MET"), "{met:?}");
        assert!(met[1].ends_with("read 1.00x, write 1.20x, MET"), "{met:?}");
        let missed = goals(&rows(&[(LockUnderTest::Mutex, 20.0), (LockUnderTest::RwRead, 12.5)]));
        assert!(missed[0].ends_with("mutex: 2.00x, MISSED"), "{missed:?}");
        assert!(missed[1].ends_with("read 1.25x, write 1.00x, MISSED"), "{missed:?}");
    }
}
