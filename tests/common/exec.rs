//! The executors the async tests run under: tokio's multi-thread and
//! current-thread runtimes, and `futures::executor` (no tokio at all), with
//! what each test needs from them (a timeout that drops the future it
//! wraps, and spawning several tasks) in a form that works on all three.

#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

thread_local! {
    /// The `LocalPool` that `Exec::BlockOn.run` is running on this thread.
    static SPAWNER: std::cell::RefCell<Option<futures::executor::LocalSpawner>> =
        const { std::cell::RefCell::new(None) };
}

/// One of the executors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// tokio, multi-thread runtime with two workers.
    TokioMulti,
    /// tokio, current-thread runtime.
    TokioCurrent,
    /// `futures::executor` (a `LocalPool`, the executor behind its
    /// `block_on`, so that tests can spawn tasks on it): no tokio anywhere.
    BlockOn,
}

/// Every executor, in the order the tests run them.
pub const ALL: [Exec; 3] = [Exec::TokioMulti, Exec::TokioCurrent, Exec::BlockOn];

impl Exec {
    /// Runs `fut` to completion on this executor (a new runtime each time).
    pub fn run<F: Future>(self, fut: F) -> F::Output {
        match self {
            Exec::TokioMulti => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_time()
                .build()
                .expect("a tokio multi-thread runtime")
                .block_on(fut),
            Exec::TokioCurrent => tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a tokio current-thread runtime")
                .block_on(fut),
            Exec::BlockOn => {
                let mut pool = futures::executor::LocalPool::new();
                let spawner = pool.spawner();
                SPAWNER.with(|s| *s.borrow_mut() = Some(spawner));
                let out = pool.run_until(fut);
                SPAWNER.with(|s| *s.borrow_mut() = None);
                out
            }
        }
    }

    /// `fut`, given up (and dropped) after `limit`: `None` then. Under tokio
    /// this is `tokio::time::timeout`; under `futures::executor` a delay
    /// woken by a thread of its own.
    pub async fn timeout<F: Future>(self, limit: Duration, fut: F) -> Option<F::Output> {
        match self {
            Exec::TokioMulti | Exec::TokioCurrent => tokio::time::timeout(limit, fut).await.ok(),
            Exec::BlockOn => {
                let fut = std::pin::pin!(fut);
                match futures::future::select(fut, Delay::new(limit)).await {
                    futures::future::Either::Left((out, _)) => Some(out),
                    futures::future::Either::Right(((), _)) => None,
                }
            }
        }
    }

    /// Runs every future as a task of its own (tokio: `tokio::spawn`, so on
    /// the multi-thread runtime they run in parallel; `futures`: tasks of a
    /// `LocalPool`) and returns their outputs in the order given. Must be
    /// called from a future this executor runs.
    pub async fn spawn_all<T: Send + 'static>(
        self,
        tasks: Vec<Pin<Box<dyn Future<Output = T> + Send + 'static>>>,
    ) -> Vec<T> {
        match self {
            Exec::TokioMulti | Exec::TokioCurrent => {
                let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
                let mut out = Vec::with_capacity(handles.len());
                for h in handles {
                    out.push(h.await.expect("a spawned task panicked"));
                }
                out
            }
            Exec::BlockOn => {
                use futures::task::LocalSpawnExt;
                let spawner = SPAWNER.with(|s| s.borrow().clone()).expect("spawn_all outside Exec::run");
                let handles: Vec<_> =
                    tasks.into_iter().map(|t| spawner.spawn_local_with_handle(t).expect("spawn")).collect();
                futures::future::join_all(handles).await
            }
        }
    }
}

/// A [`Delay`]'s timer: whether it went off, and the task to wake when it does.
type Timer = (bool, Option<Waker>);

/// A future that is ready once `limit` has passed since its first poll,
/// woken by a thread that sleeps that long (no runtime needed).
pub struct Delay {
    limit: Duration,
    state: Option<Arc<Mutex<Timer>>>,
}

impl Delay {
    /// Ready `limit` after its first poll.
    pub fn new(limit: Duration) -> Delay {
        Delay { limit, state: None }
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let limit = self.limit;
        let state = self.state.get_or_insert_with(|| {
            let state: Arc<Mutex<Timer>> = Arc::new(Mutex::new((false, None)));
            let timer = Arc::clone(&state);
            std::thread::spawn(move || {
                std::thread::sleep(limit);
                let mut s = timer.lock().unwrap();
                s.0 = true;
                if let Some(w) = s.1.take() {
                    w.wake();
                }
            });
            state
        });
        let mut s = state.lock().unwrap();
        if s.0 {
            return Poll::Ready(());
        }
        s.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Polls `fut` once with a waker that does nothing: what a future does on
/// its first poll, without an executor.
pub fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(fut).poll(&mut cx)
}

/// Sends SIGKILL to `pid` (a worker or child of this test).
pub fn sigkill(pid: u32) {
    // SAFETY: kill(2) with a pid and a signal number touches no memory.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}");
}
