//! Threads with the rest of shmpool's error types (processional's `thread`
//! and `SlaveThread`): [`thread`] runs one closure and [`ThreadHandle::wait`]
//! gives its value or its panic as [`TaskError::Panicked`]; a [`SlaveThread`]
//! runs closures one after another, in the order they were given.

use std::fmt;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::runtime::executor::payload_text;
use crate::wait::Deadline;
use crate::TaskError;

/// The result of a closure running on another thread.
#[must_use = "the value or panic is lost unless the handle is waited for"]
pub struct ThreadHandle<T> {
    rx: mpsc::Receiver<Result<T, TaskError>>,
}

impl<T> fmt::Debug for ThreadHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadHandle").finish_non_exhaustive()
    }
}

impl<T> ThreadHandle<T> {
    /// Waits for the value; a panic is [`TaskError::Panicked`] with its
    /// message; a closure that can never run (its thread is gone) is
    /// [`TaskError::PoolGone`].
    pub fn wait(self) -> Result<T, TaskError> {
        self.rx.recv().unwrap_or(Err(TaskError::PoolGone))
    }

    /// Waits at most `timeout` (`Duration::MAX`: no limit); `Err(self)`
    /// gives the handle back if the closure has not finished.
    pub fn wait_timeout(self, timeout: Duration) -> Result<Result<T, TaskError>, ThreadHandle<T>> {
        let Some(left) = Deadline::after(timeout).remaining() else { return Ok(self.wait()) };
        match self.rx.recv_timeout(left) {
            Ok(r) => Ok(r),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(Err(TaskError::PoolGone)),
        }
    }
}

/// Runs `f` on a new thread; its value (or panic) comes from the handle.
pub fn thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ThreadHandle<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run_caught(f));
    });
    ThreadHandle { rx }
}

fn run_caught<T>(f: impl FnOnce() -> T) -> Result<T, TaskError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|p| TaskError::Panicked { message: payload_text(&*p) })
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread that runs closures in the order they are given: [`invoke`]
/// waits for the value, [`schedule`] returns a handle at once. A closure
/// that panics is an error for that closure only; the thread goes on.
/// Dropping it runs what was scheduled, then ends the thread.
///
/// [`invoke`]: SlaveThread::invoke
/// [`schedule`]: SlaveThread::schedule
pub struct SlaveThread {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for SlaveThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlaveThread").finish_non_exhaustive()
    }
}

impl Default for SlaveThread {
    fn default() -> Self {
        SlaveThread::new()
    }
}

impl SlaveThread {
    /// Starts the thread.
    pub fn new() -> SlaveThread {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("shmpool-slave".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawning a thread");
        SlaveThread { jobs: Some(tx), thread: Some(thread) }
    }

    /// Queues `f` behind what was scheduled before; returns its handle.
    pub fn schedule<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> ThreadHandle<T> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(run_caught(f));
        });
        // The receiving thread only ends when we drop the sender; a send
        // that fails leaves the handle disconnected: `PoolGone`.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
        ThreadHandle { rx }
    }

    /// Runs `f` after what was scheduled before and waits for its value.
    pub fn invoke<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, TaskError> {
        self.schedule(f).wait()
    }
}

impl Drop for SlaveThread {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
