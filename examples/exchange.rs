//! pprocess's exchange: twenty children, at most four running at once, each
//! computing a few values and sending them back over its channel.

use std::time::Instant;

use shmpool::{start, Channel, Exchange};

/// A child: sums of squares up to `n`, sent as they are computed.
fn compute(chan: Channel<(u32, u64), ()>, id: u32) {
    let mut total = 0u64;
    for i in 0..=1000u64 * (id as u64 + 1) {
        total += i * i;
        if i % 1000 == 0 {
            chan.send(&(id, total)).unwrap();
        }
    }
}

fn main() -> Result<(), shmpool::Error> {
    shmpool::init();
    let start_time = Instant::now();
    let mut exchange = Exchange::with_limit(4);
    let mut results = [0u64; 20];
    let mut messages = 0;
    let mut store = |_, message: Result<(u32, u64), shmpool::ChannelError>| {
        let (id, total) = message.expect("child failed");
        results[id as usize] = results[id as usize].max(total);
        messages += 1;
    };
    for id in 0..20 {
        exchange.add_wait(start(compute, id)?, &mut store);
    }
    exchange.finish(&mut store);
    let expect = |id: u64| (0..=1000 * (id + 1)).map(|i| i * i).sum::<u64>();
    assert!(results.iter().enumerate().all(|(id, &t)| t == expect(id as u64)));
    println!("20 children, limit 4: {messages} messages in {:.2?}", start_time.elapsed());
    Ok(())
}
