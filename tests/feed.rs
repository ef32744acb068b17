//! `WorkerPool::feed`: putting a whole input from a background thread
//! (better.multiprocessing's `putAsync`) while the caller takes results.

use std::time::Duration;

use shmpool::{FeedError, GetError, Worker, WorkerPool};

#[path = "common/watchdog.rs"]
mod watchdog;
use watchdog::watchdog;

const LIMIT: Duration = Duration::from_secs(120);

struct Double;

impl Worker for Double {
    type Init = ();
    type Task = u64;
    type Output = u64;
    fn init(_: ()) -> Self {
        Double
    }
    fn run(&mut self, task: u64) -> u64 {
        2 * task
    }
}

/// Slow enough that a feed of an endless input is still running when cancelled.
struct Slow;

impl Worker for Slow {
    type Init = ();
    type Task = u64;
    type Output = u64;
    fn init(_: ()) -> Self {
        Slow
    }
    fn run(&mut self, task: u64) -> u64 {
        std::thread::sleep(Duration::from_micros(200));
        task
    }
}

fn small<W: Worker<Init = ()>>(ordered: bool) -> WorkerPool<W> {
    WorkerPool::<W>::builder().workers(2).queue_capacity(16).segment_size(16 << 20).ordered(ordered).build(()).unwrap()
}

#[test]
fn ten_thousand_fed_tasks_come_back_once_each_in_order_while_the_caller_gets() {
    let _w = watchdog("feed 10000", LIMIT);
    let pool = small::<Double>(true);
    let feed = pool.feed(0..10_000u64).unwrap();
    // The caller gets concurrently with the feeder: `get` waits for puts
    // still to come rather than saying nothing is pending.
    for i in 0..10_000u64 {
        assert_eq!(pool.get(), Ok(2 * i));
    }
    assert_eq!(feed.join().unwrap(), 10_000);
    assert_eq!(pool.get(), Err(GetError::NothingPending));
}

#[test]
fn unordered_fed_results_come_back_exactly_once() {
    let _w = watchdog("feed unordered", LIMIT);
    let pool = small::<Double>(false);
    let feed = pool.feed(0..3000u64).unwrap();
    let mut got: Vec<u64> = pool.get_all().into_iter().map(Result::unwrap).collect();
    assert_eq!(feed.join().unwrap(), 3000);
    got.sort_unstable();
    assert_eq!(got, (0..3000u64).map(|i| 2 * i).collect::<Vec<_>>());
}

#[test]
fn a_cancelled_feed_says_how_many_went_in_and_gives_the_rest_back() {
    let _w = watchdog("feed cancel", LIMIT);
    let pool = small::<Slow>(true);
    let feed = pool.feed(0..u64::MAX).unwrap();
    while feed.sent() < 100 {
        std::thread::sleep(Duration::from_millis(1));
    }
    feed.cancel();
    let (sent, task, mut rest) = match feed.join() {
        Err(FeedError::Cancelled { sent, task, rest }) => (sent, task, rest),
        other => panic!("expected Cancelled, got {other:?}"),
    };
    assert!(sent >= 100);
    let results: Vec<u64> = pool.get_all().into_iter().map(Result::unwrap).collect();
    assert_eq!(results.len() as u64, sent, "join's count is what get_all yields");
    assert_eq!(results, (0..sent).collect::<Vec<_>>());
    // Nothing was dropped: the first task not sent is handed back.
    assert_eq!(task.or_else(|| rest.next()), Some(sent));
}

#[test]
fn feeding_a_closed_pool_is_refused_with_the_input_untouched() {
    let pool = small::<Double>(true);
    pool.close();
    match pool.feed(vec![7u64, 8, 9]) {
        Err(e @ FeedError::Closed { .. }) => {
            assert_eq!(e.sent(), 0);
            let (task, rest) = e.into_unsent().unwrap();
            assert_eq!(task, None);
            assert_eq!(rest.collect::<Vec<_>>(), [7, 8, 9]);
        }
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[test]
fn closing_the_pool_stops_a_running_feed_with_a_count() {
    let _w = watchdog("feed close", LIMIT);
    let pool = small::<Slow>(true);
    let feed = pool.feed(0..u64::MAX).unwrap();
    while feed.sent() < 50 {
        std::thread::sleep(Duration::from_millis(1));
    }
    pool.close();
    let err = feed.join().unwrap_err();
    assert!(matches!(err, FeedError::Closed { task: Some(_), .. }), "{err:?}");
    let sent = err.sent();
    let results: Vec<u64> = pool.get_all().into_iter().map(Result::unwrap).collect();
    assert_eq!(results, (0..sent).collect::<Vec<_>>());
}

#[test]
fn join_timeout_gives_the_handle_back_while_the_feed_runs() {
    let _w = watchdog("feed join_timeout", LIMIT);
    let pool = small::<Slow>(true);
    let feed = pool.feed(0..u64::MAX).unwrap();
    let feed = feed.join_timeout(Duration::ZERO).expect_err("an endless feed is still running");
    feed.cancel();
    let sent = match feed.join_timeout(Duration::MAX) {
        Ok(Err(e @ FeedError::Cancelled { .. })) => e.sent(),
        other => panic!("expected Cancelled, got {other:?}"),
    };
    assert_eq!(pool.get_all().len() as u64, sent);
}

#[test]
fn a_feed_and_plain_puts_go_in_together() {
    let _w = watchdog("feed with puts", LIMIT);
    let pool = small::<Double>(false);
    let feed = pool.feed(0..500u64).unwrap();
    for i in 500..600u64 {
        pool.put(i).unwrap();
    }
    assert_eq!(feed.join().unwrap(), 500);
    let mut got: Vec<u64> = pool.get_all().into_iter().map(Result::unwrap).collect();
    got.sort_unstable();
    assert_eq!(got, (0..600u64).map(|i| 2 * i).collect::<Vec<_>>());
}
