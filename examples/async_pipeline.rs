//! One tokio program awaiting a pool (tickets and a map stream), a remote
//! object, a channel child, a named service and a topic, with no thread
//! blocked while they wait.
//!
//! `cargo run --release --example async_pipeline`

use futures::StreamExt;
use shmpool::Channel;

fn square(x: u64) -> u64 {
    x * x
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(ms));
    ms
}

struct Counter {
    n: u64,
}

fn make_counter(start: u64) -> Counter {
    Counter { n: start }
}

fn add(c: &mut Counter, by: u64) -> u64 {
    c.n += by;
    c.n
}

/// A served counter (the service's object).
struct Tally {
    total: u64,
}

fn open_tally(_: ()) -> Tally {
    Tally { total: 0 }
}

fn tally(t: &mut Tally, by: u64) -> u64 {
    t.total += by;
    t.total
}

/// A channel child: answers every number with its double, until the parent hangs up.
fn doubler(chan: Channel<u64, u64>, _: ()) {
    while let Ok(x) = chan.recv() {
        if chan.send(&(2 * x)).is_err() {
            break;
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    shmpool::init();
    let pool = shmpool::Pool::builder().workers(2).build()?;
    let remote = shmpool::Remote::spawn(make_counter, 40u64)?;
    let chan: Channel<u64, u64> = shmpool::start(doubler, ())?;
    let name = format!("async-pipeline-{}", std::process::id());
    let service = shmpool::Service::serve(&name, open_tally, ())?;
    let client = shmpool::Service::<Tally>::connect(&name)?;
    let topic = shmpool::Topic::<u64>::builder(&name).depth(16).open_or_create()?;
    let (publisher, subscriber) = (topic.publisher()?, topic.subscriber()?);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        assert_eq!(pool.submit(square, 7u64)?.await?, 49);

        // A thousand tickets at once, awaited together.
        let tickets = (0..1000u64).map(|x| pool.submit(square, x)).collect::<Result<Vec<_>, _>>()?;
        let squares = futures::future::try_join_all(tickets).await?;
        assert_eq!(squares[999], 999 * 999);

        // A ticket is Send + 'static: spawn it.
        let slow = tokio::spawn(pool.submit(nap, 50u64)?);

        // A map as a stream, in input order.
        let mut stream = pool.map(square, 0..10_000u64)?.into_stream();
        let mut n = 0u64;
        while let Some(r) = stream.next().await {
            assert_eq!(r?, n * n);
            n += 1;
        }
        assert_eq!(n, 10_000);

        assert_eq!(remote.call_async(add, 2).await?, 42);
        chan.send_async(&21).await?;
        assert_eq!(chan.recv_async().await?, 42);

        // The service: calls from several tasks at once, each answered.
        let calls = (1..=10u64).map(|i| client.call_async(tally, i));
        let totals = futures::future::try_join_all(calls).await?;
        assert_eq!(totals.iter().max(), Some(&55));

        // A topic: the subscriber awaits what the publisher sends.
        let (sent, got) = tokio::join!(
            async {
                for i in 0..100u64 {
                    publisher.send_async(&i).await?;
                }
                Ok::<(), shmpool::TopicError>(())
            },
            async {
                let mut sum = 0u64;
                for _ in 0..100 {
                    sum += subscriber.recv_async().await?.to_native();
                }
                Ok::<u64, shmpool::TopicError>(sum)
            }
        );
        sent?;
        assert_eq!(got?, 4950);

        // A timeout is the executor's: the dropped ticket frees its result when it comes.
        let late = tokio::time::timeout(std::time::Duration::from_millis(1), pool.submit(nap, 100u64)?).await;
        assert!(late.is_err());
        assert_eq!(slow.await??, 50);
        println!(
            "async_pipeline: 1000 tickets, a 10,000-item map stream, a remote call, a channel round trip, \
             10 service calls and 100 topic samples, awaited on tokio: all right"
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    drop(service);
    Ok(())
}
