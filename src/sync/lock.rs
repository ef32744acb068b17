//! The four interprocess locks users take: [`Mutex`], [`RwLock`],
//! [`SpinLock`] and [`AuthLock`], named in a segment or embedded in a shared
//! container, with timeouts that count as deadlock suspicions.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::event::AdaptiveSpin;
use super::raw_mutex::{Acquired, RawMutex};
use super::raw_rwlock::{RawRwLock, RwFailure};
use super::raw_spin::RawSpin;
use crate::segment::{Segment, SegmentError, ShmSafe};
use crate::sys::process;

/// How many processes an [`AuthLock`] can authorise.
pub const MAX_OPERATORS: usize = 32;

/// Which lock guards a shared object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockKind {
    /// A futex mutex: waiters sleep.
    Mutex,
    /// Many readers or one writer; waiters sleep.
    RwLock,
    /// A spin lock: waiters spin and yield, never sleep (short sections only).
    Spin,
    /// A mutex only registered operator processes may take.
    Auth,
}

impl LockKind {
    fn code(self) -> u32 {
        match self {
            LockKind::Mutex => 1,
            LockKind::RwLock => 2,
            LockKind::Spin => 3,
            LockKind::Auth => 4,
        }
    }

    fn from_code(code: u32) -> Option<LockKind> {
        match code {
            1 => Some(LockKind::Mutex),
            2 => Some(LockKind::RwLock),
            3 => Some(LockKind::Spin),
            4 => Some(LockKind::Auth),
            _ => None,
        }
    }
}

/// What a deadlock handler is told when a wait for a lock gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlockInfo {
    /// The lock's name.
    pub name: String,
    /// The pid holding it when the wait gave up (a writer or some reader).
    pub holder: Option<u32>,
    /// How long the wait lasted.
    pub waited: Duration,
}

/// Options for a lock handle, set by each process that opens the lock.
#[derive(Debug, Clone, Copy, Default)]
pub struct LockOptions {
    /// `lock()` gives up after this long and reports a suspected deadlock
    /// (`None`, or a timeout too large to be a deadline such as
    /// `Duration::MAX`: it waits for ever, though a dead holder is still noticed).
    pub deadlock_timeout: Option<Duration>,
    /// Called when any wait on this handle times out, before the error returns.
    pub on_deadlock: Option<fn(&DeadlockInfo)>,
}

/// The shared part of any lock: `#[repr(C)]`, valid when zeroed, one field per
/// kind (only the one named by `kind` is used).
#[repr(C)]
#[derive(Debug, Default)]
pub struct LockCell {
    kind: AtomicU32,
    _pad: u32,
    mutex: RawMutex,
    spin: RawSpin,
    rw: RawRwLock,
    operators: [AtomicU32; MAX_OPERATORS],
}

// SAFETY: `#[repr(C)]`, atomics and ShmSafe raw locks only.
unsafe impl ShmSafe for LockCell {}

impl LockCell {
    /// Prepares a zeroed cell as a lock of `kind`; an `Auth` lock starts with
    /// the calling process as its only operator.
    pub fn init(&self, kind: LockKind) {
        if kind == LockKind::Auth {
            self.operators[0].store(process::current_pid(), Ordering::Relaxed);
        }
        self.kind.store(kind.code(), Ordering::Release);
    }

    /// The kind written in the cell, validated.
    pub fn kind(&self) -> Result<LockKind, SegmentError> {
        LockKind::from_code(self.kind.load(Ordering::Acquire)).ok_or(SegmentError::Corrupt("unknown lock kind"))
    }

    fn is_operator(&self, pid: u32) -> bool {
        self.operators.iter().any(|o| o.load(Ordering::Acquire) == pid)
    }

    fn holder(&self, kind: LockKind) -> Option<u32> {
        match kind {
            LockKind::Mutex | LockKind::Auth => self.mutex.holder(),
            LockKind::Spin => self.spin.holder(),
            LockKind::RwLock => self.rw.writer().or_else(|| self.rw.readers().first().copied()),
        }
    }
}

/// How a guard holds its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    Exclusive,
    Shared(usize),
}

/// Why a lock was not acquired. `G` is the guard type, handed over when the
/// lock was taken from a dead holder.
pub enum LockError<G> {
    /// `try_*` found the lock held.
    WouldBlock,
    /// The wait gave up: a suspected deadlock (the handler, if any, was called).
    Timeout(DeadlockInfo),
    /// This process is not an operator of the [`AuthLock`].
    NotAuthorised {
        /// The refused process.
        pid: u32,
    },
    /// The lock was taken over from a holder that died while holding it: what
    /// it guards may be half-written. The lock is held: use or drop `guard`.
    OwnerDied {
        /// The held lock.
        guard: G,
        /// The dead holder.
        pid: u32,
    },
    /// The lock's shared state is corrupt.
    Corrupt(&'static str),
    /// The operation does not apply to this kind of lock.
    Unsupported(&'static str),
}

impl<G> LockError<G> {
    /// The guard of an `OwnerDied` error: the lock is held all the same.
    pub fn into_guard(self) -> Option<G> {
        match self {
            LockError::OwnerDied { guard, .. } => Some(guard),
            _ => None,
        }
    }

    /// The same error without the guard (dropping it releases the lock).
    pub fn without_guard(self) -> LockError<()> {
        match self {
            LockError::WouldBlock => LockError::WouldBlock,
            LockError::Timeout(i) => LockError::Timeout(i),
            LockError::NotAuthorised { pid } => LockError::NotAuthorised { pid },
            LockError::OwnerDied { pid, .. } => LockError::OwnerDied { guard: (), pid },
            LockError::Corrupt(w) => LockError::Corrupt(w),
            LockError::Unsupported(w) => LockError::Unsupported(w),
        }
    }
}

impl<G> fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::WouldBlock => f.write_str("WouldBlock"),
            LockError::Timeout(i) => f.debug_tuple("Timeout").field(i).finish(),
            LockError::NotAuthorised { pid } => f.debug_struct("NotAuthorised").field("pid", pid).finish(),
            LockError::OwnerDied { pid, .. } => f.debug_struct("OwnerDied").field("pid", pid).finish_non_exhaustive(),
            LockError::Corrupt(w) => f.debug_tuple("Corrupt").field(w).finish(),
            LockError::Unsupported(w) => f.debug_tuple("Unsupported").field(w).finish(),
        }
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::WouldBlock => f.write_str("lock is held"),
            LockError::Timeout(i) => write!(
                f,
                "suspected deadlock: lock {:?} still held by {} after {:?}",
                i.name,
                i.holder.map_or("nobody known".to_owned(), |p| format!("pid {p}")),
                i.waited
            ),
            LockError::NotAuthorised { pid } => write!(f, "process {pid} is not an operator of this lock"),
            LockError::OwnerDied { pid, .. } => {
                write!(f, "lock holder {pid} died holding the lock; the guarded data may be half-written")
            }
            LockError::Corrupt(w) => write!(f, "corrupt lock: {w}"),
            LockError::Unsupported(w) => write!(f, "unsupported: {w}"),
        }
    }
}

impl<G> std::error::Error for LockError<G> {}

/// A lock cell in a segment, as seen by one process.
#[derive(Clone)]
pub(crate) struct LockRef {
    /// Keeps the mapping that `cell` points into alive.
    _seg: Segment,
    /// The lock's cell, validated (bounds, alignment) once at open: the hot
    /// paths use it without going through the segment again.
    cell: std::ptr::NonNull<LockCell>,
    kind: LockKind,
    name: String,
    options: LockOptions,
    spin: std::sync::Arc<AdaptiveSpin>,
}

// SAFETY: the only non-Send/Sync field is `cell`, a pointer into the mapping
// that `_seg` (itself Send + Sync) keeps alive; `LockCell` holds only atomics,
// which any thread of any process may use through a shared reference.
unsafe impl Send for LockRef {}
// SAFETY: as for Send.
unsafe impl Sync for LockRef {}

impl fmt::Debug for LockRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock").field("name", &self.name).field("kind", &self.kind).finish()
    }
}

impl LockRef {
    /// Opens the cell at `offset`, which must hold a lock of `kind`.
    pub(crate) fn open(
        seg: &Segment,
        offset: u64,
        kind: LockKind,
        name: &str,
        options: LockOptions,
    ) -> Result<LockRef, SegmentError> {
        let cell = seg.get::<LockCell>(offset)?;
        if cell.kind()? != kind {
            return Err(SegmentError::TypeMismatch { name: name.to_owned() });
        }
        Ok(LockRef {
            _seg: seg.clone(),
            cell: std::ptr::NonNull::from(cell),
            kind,
            name: name.to_owned(),
            options,
            spin: std::sync::Arc::new(AdaptiveSpin::new()),
        })
    }

    #[inline]
    fn cell(&self) -> &LockCell {
        // SAFETY: `cell` came from `Segment::get` at open (in bounds, aligned,
        // and `LockCell: ShmSafe`, valid for any bytes), and `self._seg` keeps
        // that mapping alive for as long as `self` lives.
        unsafe { self.cell.as_ref() }
    }

    /// Acquires in `hold` mode (shared falls back to exclusive for kinds
    /// without readers), waiting as `wait` says.
    ///
    /// The fast path is the raw lock's first try and nothing else: no clock,
    /// no deadline, no deadlock bookkeeping. All that is in
    /// [`LockRef::acquire_contended`], only when the first try fails.
    #[inline]
    pub(crate) fn acquire(&self, shared: bool, wait: Wait) -> Result<(Hold, Option<u32>), LockError<()>> {
        match self.try_fast(self.kind, shared) {
            Some(hold) => Ok((hold, None)),
            None => self.acquire_contended(shared, wait),
        }
    }

    /// One try at the lock, without waiting; `None` also when an
    /// [`AuthLock`] refuses this process (the slow path says so).
    ///
    /// `kind` is `self.kind`, passed in so that the typed locks, which know
    /// it, get the one branch of the match inlined.
    #[inline(always)]
    fn try_fast(&self, kind: LockKind, shared: bool) -> Option<Hold> {
        debug_assert_eq!(kind, self.kind);
        let cell = self.cell();
        let took = match kind {
            LockKind::Mutex => cell.mutex.try_lock(),
            LockKind::Auth => cell.is_operator(process::current_pid()) && cell.mutex.try_lock(),
            LockKind::Spin => cell.spin.try_lock(),
            LockKind::RwLock if shared => return cell.rw.try_read().map(Hold::Shared),
            LockKind::RwLock => cell.rw.try_write(),
        };
        took.then_some(Hold::Exclusive)
    }

    /// The first try failed: wait as `wait` says (with the clock, deadlines
    /// and the deadlock report), or report why not.
    #[cold]
    #[inline(never)]
    fn acquire_contended(&self, shared: bool, wait: Wait) -> Result<(Hold, Option<u32>), LockError<()>> {
        let cell = self.cell();
        let me = process::current_pid();
        if self.kind == LockKind::Auth && !cell.is_operator(me) {
            return Err(LockError::NotAuthorised { pid: me });
        }
        let timeout = match wait {
            Wait::Try => return Err(LockError::WouldBlock),
            Wait::Default => self.options.deadlock_timeout,
            Wait::For(t) => Some(t),
        };
        // The clock is read only when a deadline or a report needs it.
        let start = timeout.map(|_| Instant::now());
        // A timeout too large to add to the clock (`Duration::MAX`) is no deadline.
        let deadline = start.zip(timeout).and_then(|(s, t)| s.checked_add(t));
        let timeout = |holder: Option<u32>| {
            let waited = start.map_or(Duration::ZERO, |s| s.elapsed());
            let info = DeadlockInfo { name: self.name.clone(), holder, waited };
            if let Some(handler) = self.options.on_deadlock {
                handler(&info);
            }
            LockError::Timeout(info)
        };
        match self.kind {
            LockKind::Mutex | LockKind::Auth => match cell.mutex.lock(deadline) {
                Ok(Acquired::Clean) => Ok((Hold::Exclusive, None)),
                Ok(Acquired::OwnerDied(pid)) => Ok((Hold::Exclusive, Some(pid))),
                Err(t) => Err(timeout(Some(t.holder))),
            },
            LockKind::Spin => {
                cell.spin.lock(deadline).map(|died| (Hold::Exclusive, died)).map_err(|h| timeout(Some(h)))
            }
            LockKind::RwLock if shared => match cell.rw.read(deadline, &self.spin) {
                Ok((slot, died)) => Ok((Hold::Shared(slot), died)),
                Err(RwFailure::Timeout { holder }) => Err(timeout(holder)),
            },
            LockKind::RwLock => match cell.rw.write(deadline, &self.spin) {
                Ok(died) => Ok((Hold::Exclusive, died)),
                Err(RwFailure::Timeout { holder }) => Err(timeout(holder)),
            },
        }
    }

    #[inline]
    pub(crate) fn release(&self, hold: Hold) {
        let cell = self.cell();
        match (self.kind, hold) {
            (LockKind::Mutex | LockKind::Auth, _) => cell.mutex.unlock(),
            (LockKind::Spin, _) => cell.spin.unlock(),
            (LockKind::RwLock, Hold::Shared(slot)) => cell.rw.unlock_read(slot),
            (LockKind::RwLock, Hold::Exclusive) => cell.rw.unlock_write(),
        }
    }

    /// Acquires a lock of `kind` (`self.kind`, known to the typed lock
    /// calling) and wraps the hold in a guard.
    #[inline(always)]
    fn guard(&self, kind: LockKind, shared: bool, wait: Wait) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
        match self.try_fast(kind, shared) {
            Some(hold) => Ok(LockGuard { lock: self, hold }),
            None => self.guard_contended(shared, wait),
        }
    }

    #[cold]
    #[inline(never)]
    fn guard_contended(&self, shared: bool, wait: Wait) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
        match self.acquire_contended(shared, wait) {
            Ok((hold, None)) => Ok(LockGuard { lock: self, hold }),
            Ok((hold, Some(pid))) => Err(LockError::OwnerDied { guard: LockGuard { lock: self, hold }, pid }),
            Err(e) => Err(match e {
                LockError::WouldBlock => LockError::WouldBlock,
                LockError::Timeout(i) => LockError::Timeout(i),
                LockError::NotAuthorised { pid } => LockError::NotAuthorised { pid },
                LockError::Corrupt(w) => LockError::Corrupt(w),
                LockError::Unsupported(w) => LockError::Unsupported(w),
                LockError::OwnerDied { .. } => unreachable!("acquire reports owner death as Ok"),
            }),
        }
    }
}

/// How long an acquisition may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Do not wait.
    Try,
    /// Until the handle's deadlock timeout, if any.
    Default,
    /// At most this long from the call; a timeout too large to add to the
    /// clock (such as `Duration::MAX`) means for ever. The clock is read only
    /// if the first try fails.
    For(Duration),
}

/// A held lock; released when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a LockRef,
    hold: Hold,
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("lock", &self.lock.name)
            .field("shared", &(self.hold != Hold::Exclusive))
            .finish()
    }
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.lock.release(self.hold);
    }
}

macro_rules! exclusive_methods {
    ($kind:expr) => {
        /// Takes the lock, waiting (up to the handle's deadlock timeout, if set).
        #[inline]
        pub fn lock(&self) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
            self.inner.guard($kind, false, Wait::Default)
        }

        /// Takes the lock only if it is free now.
        #[inline]
        pub fn try_lock(&self) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
            self.inner.guard($kind, false, Wait::Try)
        }

        /// Takes the lock, waiting at most `timeout`; a timeout is a suspected
        /// deadlock: the handler is called and `LockError::Timeout` returned.
        /// A timeout too large to be a deadline (`Duration::MAX`) waits for ever.
        #[inline]
        pub fn lock_for(&self, timeout: Duration) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
            self.inner.guard($kind, false, Wait::For(timeout))
        }

        /// The pid holding the lock (for a read-write lock, the writer or a reader).
        pub fn holder(&self) -> Option<u32> {
            self.inner.cell().holder(self.inner.kind)
        }

        /// The lock's name in its segment.
        pub fn name(&self) -> &str {
            &self.inner.name
        }
    };
}

macro_rules! lock_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $ctor:ident, $ctor_with:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            inner: LockRef,
        }

        impl $name {
            exclusive_methods!($kind);
        }

        impl Segment {
            #[doc = concat!("Creates the [`", stringify!($name), "`] named `name` in this segment, or opens it.")]
            pub fn $ctor(&self, name: &str) -> Result<$name, SegmentError> {
                self.$ctor_with(name, LockOptions::default())
            }

            #[doc = concat!("[`Segment::", stringify!($ctor), "`] with a deadlock timeout and handler for this handle.")]
            pub fn $ctor_with(&self, name: &str, options: LockOptions) -> Result<$name, SegmentError> {
                Ok($name { inner: named_lock(self, name, $kind, options)? })
            }
        }
    };
}

lock_type!(
    /// A process-shared mutex: waiters sleep on a futex; a dead holder is
    /// noticed and the next taker gets `LockError::OwnerDied`.
    Mutex,
    LockKind::Mutex,
    mutex,
    mutex_with
);
lock_type!(
    /// A process-shared spin lock for very short critical sections: waiters
    /// spin and yield, never sleep.
    SpinLock,
    LockKind::Spin,
    spin_lock,
    spin_lock_with
);
lock_type!(
    /// A reader-writer lock: [`RwLock::read`] for many readers, `lock` (or
    /// [`RwLock::write`]) for one writer. Up to 32 readers at once.
    RwLock,
    LockKind::RwLock,
    rwlock,
    rwlock_with
);
lock_type!(
    /// XME's authorisation lock: a mutex only operator processes may take;
    /// others get `LockError::NotAuthorised`. Its creator is the first operator.
    AuthLock,
    LockKind::Auth,
    auth_lock,
    auth_lock_with
);

impl RwLock {
    /// Takes a read hold, waiting (up to the handle's deadlock timeout, if set).
    #[inline]
    pub fn read(&self) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
        self.inner.guard(LockKind::RwLock, true, Wait::Default)
    }

    /// Takes a read hold only if no writer holds or waits for the lock.
    #[inline]
    pub fn try_read(&self) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
        self.inner.guard(LockKind::RwLock, true, Wait::Try)
    }

    /// Takes a read hold, waiting at most `timeout`.
    /// A timeout too large to be a deadline (`Duration::MAX`) waits for ever.
    #[inline]
    pub fn read_for(&self, timeout: Duration) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
        self.inner.guard(LockKind::RwLock, true, Wait::For(timeout))
    }

    /// Takes the write hold (same as [`RwLock::lock`]).
    #[inline]
    pub fn write(&self) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
        self.lock()
    }

    /// Takes the write hold, waiting at most `timeout`.
    #[inline]
    pub fn write_for(&self, timeout: Duration) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
        self.lock_for(timeout)
    }
}

impl AuthLock {
    /// Lets process `pid` take the lock. Only an operator may add others.
    pub fn add_operator(&self, pid: u32) -> Result<(), LockError<()>> {
        self.inner.add_operator(pid)
    }

    /// Stops process `pid` from taking the lock. Only an operator may remove.
    pub fn remove_operator(&self, pid: u32) -> Result<(), LockError<()>> {
        self.inner.remove_operator(pid)
    }

    /// Whether process `pid` is an operator.
    pub fn is_operator(&self, pid: u32) -> bool {
        self.inner.cell().is_operator(pid)
    }
}

impl LockRef {
    /// See [`AuthLock::add_operator`]; other kinds refuse.
    pub(crate) fn add_operator(&self, pid: u32) -> Result<(), LockError<()>> {
        if self.kind != LockKind::Auth {
            return Err(LockError::Unsupported("operators exist only on authorisation locks"));
        }
        let cell = self.cell();
        let me = process::current_pid();
        if !cell.is_operator(me) {
            return Err(LockError::NotAuthorised { pid: me });
        }
        if cell.is_operator(pid) {
            return Ok(());
        }
        for slot in &cell.operators {
            if slot.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return Ok(());
            }
        }
        Err(LockError::Corrupt("operator table full"))
    }

    /// See [`AuthLock::remove_operator`]; other kinds refuse.
    pub(crate) fn remove_operator(&self, pid: u32) -> Result<(), LockError<()>> {
        if self.kind != LockKind::Auth {
            return Err(LockError::Unsupported("operators exist only on authorisation locks"));
        }
        let cell = self.cell();
        let me = process::current_pid();
        if !cell.is_operator(me) {
            return Err(LockError::NotAuthorised { pid: me });
        }
        for slot in &cell.operators {
            let _ = slot.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Directory kind of a named lock (the fingerprint is the lock kind).
const KIND_LOCK: u32 = 2;

fn named_lock(seg: &Segment, name: &str, kind: LockKind, options: LockOptions) -> Result<LockRef, SegmentError> {
    let size = std::mem::size_of::<LockCell>() as u64;
    let (block, _) = seg.named(name, KIND_LOCK, kind.code() as u64, size, |b| {
        let p = seg.ptr(b.offset, size)?;
        // SAFETY: a block this process just allocated and has not published;
        // zero bytes are a valid LockCell.
        unsafe { std::ptr::write_bytes(p, 0, size as usize) };
        seg.get::<LockCell>(b.offset)?.init(kind);
        Ok(())
    })?;
    LockRef::open(seg, block.offset, kind, name, options)
}
