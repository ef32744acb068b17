//! Kkit's parallel example, with tenths of seconds for seconds: ten remote
//! objects, object `i` sleeping `(i + 2) / 10` s, run in parallel and
//! collected with `wait_all`. Sequentially that is 6.5 s; in parallel it takes
//! as long as the slowest object, about 1.1 s.

use std::time::{Duration, Instant};

struct Sleeper {
    id: u64,
}

fn make(id: u64) -> Sleeper {
    Sleeper { id }
}

fn nap(s: &mut Sleeper, tenths: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(tenths * 100));
    s.id
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let objects: Vec<_> = (0..10).map(|i| shmpool::Remote::spawn(make, i)).collect::<Result<_, _>>()?;
    let start = Instant::now();
    let pending: Vec<_> = objects.iter().zip(0..).map(|(o, i)| o.call_async(nap, i + 2)).collect();
    let ids = shmpool::wait_all(pending)?;
    let elapsed = start.elapsed();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    println!("10 remote objects napping 0.2..1.1 s in parallel: {elapsed:.2?} (sequential: 6.5 s)");
    Ok(())
}
