//! procspawn's process pool: each task is a `Pool::spawn` of a function
//! pointer and its arguments (serialized through fresh ipc-channel channels
//! for every call), joined with a deadline.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use procspawn::{JoinHandle, Pool};

use super::PEER_REPLY;
use crate::common::{square, BoxResult, Run};

/// The batched task: squares every element of a chunk.
fn square_chunk(mut chunk: Vec<u64>) -> Vec<u64> {
    chunk.iter_mut().for_each(|x| *x = square(*x));
    chunk
}

/// Which process ran the task: the worker of a one-worker pool.
fn worker_pid((): ()) -> u32 {
    std::process::id()
}

/// A pool of `workers` processes.
pub fn pool(workers: usize) -> BoxResult<Pool> {
    Ok(Pool::new(workers).map_err(|error| format!("procspawn pool: {error}"))?)
}

/// Waits (with a deadline) for the result of `handle`; a worker that died
/// or hangs is an error (dropping the pool then kills its workers).
fn join<R>(mut handle: JoinHandle<R>) -> BoxResult<R>
where
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    Ok(handle.join_timeout(PEER_REPLY).map_err(|error| format!("procspawn task: {error}"))?)
}

/// `pool.spawn(args, f)`: procspawn panics when the worker it hands the
/// call to has died; that is an error here.
fn spawn<A, R>(pool: &Pool, args: A, f: fn(A) -> R) -> BoxResult<JoinHandle<R>>
where
    A: serde::Serialize + serde::de::DeserializeOwned,
    R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    panic::catch_unwind(AssertUnwindSafe(|| pool.spawn(args, f)))
        .map_err(|_| "procspawn Pool::spawn panicked (a worker died?)".into())
}

/// The process id of the worker of a one-worker pool.
pub fn pid(pool: &Pool) -> BoxResult<u32> {
    join(spawn(pool, (), worker_pid)?)
}

/// One round trip: `square(x)` in a worker.
pub fn call(pool: &Pool, x: u64) -> BoxResult<u64> {
    join(spawn(pool, x, square)?)
}

/// Squares `0..tasks`, one spawn per task, with up to `window` of them in
/// flight; the replies in order.
pub fn stream_one(pool: &Pool, tasks: u64, window: usize) -> BoxResult<Run> {
    let start = Instant::now();
    let mut pending = VecDeque::with_capacity(window);
    let mut replies = Vec::with_capacity(tasks as usize);
    for x in 0..tasks {
        if pending.len() >= window {
            replies.push(join(pending.pop_front().expect("the window is not empty"))?);
        }
        pending.push_back(spawn(pool, x, square)?);
    }
    for handle in pending {
        replies.push(join(handle)?);
    }
    Ok((start.elapsed(), replies))
}

/// Squares `0..tasks`, one spawn per chunk of `per_spawn` tasks, with up to
/// `window` chunks in flight; the replies in order.
pub fn stream_chunks(pool: &Pool, tasks: u64, per_spawn: u64, window: usize) -> BoxResult<Run> {
    let start = Instant::now();
    let mut pending = VecDeque::with_capacity(window);
    let mut replies = Vec::with_capacity(tasks as usize);
    let mut next = 0;
    while next < tasks {
        if pending.len() >= window {
            replies.extend(join(pending.pop_front().expect("the window is not empty"))?);
        }
        let end = tasks.min(next + per_spawn);
        pending.push_back(spawn(pool, (next..end).collect::<Vec<u64>>(), square_chunk)?);
        next = end;
    }
    for handle in pending {
        replies.extend(join(handle)?);
    }
    Ok((start.elapsed(), replies))
}
