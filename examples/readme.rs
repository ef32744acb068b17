//! The README's example: a pool of worker processes, one function, three ways to call it.

use std::time::Duration;

fn square(x: u64) -> u64 {
    x * x
}

/// A stateful worker: built once per process from a static argument.
struct Scale {
    factor: u64,
}

impl shmpool::Worker for Scale {
    type Init = u64;
    type Task = u64;
    type Output = u64;
    fn init(factor: u64) -> Self {
        Scale { factor }
    }
    fn run(&mut self, task: u64) -> u64 {
        task * self.factor
    }
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init(); // a re-executed copy of this binary becomes a worker here
    let pool = shmpool::Pool::builder().workers(4).queue_capacity(64).build()?;

    let ticket = pool.submit(square, 7u64)?; // runs in another process
    assert_eq!(ticket.wait()?, 49);

    let ordered: Vec<u64> = pool.map(square, 0..1000u64)?.collect::<Result<_, _>>()?;
    assert_eq!(ordered[999], 999 * 999);

    let mut unordered: Vec<u64> = pool.map_unordered(square, 0..1000u64)?.collect::<Result<_, _>>()?;
    unordered.sort_unstable();
    assert_eq!(unordered, ordered);

    let scaled = shmpool::WorkerPool::<Scale>::builder().workers(2).queue_capacity(4).build(10)?;
    scaled.put(5)?; // waits while the queue is full
    scaled.put_timeout(6, Duration::from_millis(10))?; // Err(PutError::Full(6)) if still full
    assert_eq!(scaled.get()?, 50);
    assert_eq!(scaled.get()?, 60);
    println!("ok: 7² = 49, 1000 squares in order and out of order, 5×10 and 6×10");
    Ok(())
}
