//! A publisher and a subscriber in two separately built programs: this one
//! creates a topic of readings and a work queue by name, starts
//! `topic_sub` (built next to it: `cargo build --example topic_sub`) with
//! `std::process::Command`, publishes, queues jobs, and checks the
//! subscriber's report.

use std::error::Error;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmpool::topic::{Overflow, Queue, Topic};

#[path = "common/topic.rs"]
mod common;
use common::{job, reading, Job, Reading, HISTORY, JOB, JOBS, READING, READINGS};

const WAIT: Duration = Duration::from_secs(10);

fn main() -> Result<(), Box<dyn Error>> {
    // Names of this run only (`/dev/shm/shmpool.topic.<name>`; the last
    // program to let go removes them).
    let temps = format!("example-temps-{}", std::process::id());
    let jobs = format!("example-jobs-{}", std::process::id());

    let topic = Topic::<Reading>::builder(&temps)
        .type_name(READING)
        .max_subscribers(4)
        .depth(64)
        .history(HISTORY)
        .overflow(Overflow::Block)
        .open_or_create()?;
    let publisher = topic.publisher()?;
    // Before anyone subscribed: nobody gets these now; the topic keeps the
    // last HISTORY for late joiners (here, the first HISTORY exactly).
    for i in 0..HISTORY {
        assert_eq!(publisher.send(&reading(i))?, 0);
    }
    let queue = Queue::<Job>::builder(&jobs).type_name(JOB).capacity(16).open_or_create()?;

    let exe = std::env::current_exe()?.with_file_name("topic_sub");
    if !exe.exists() {
        return Err(format!("{} is missing: cargo build --release --example topic_sub", exe.display()).into());
    }
    let mut child = Command::new(&exe).args([&temps, &jobs]).stdout(Stdio::piped()).spawn()?;

    // Wait (bounded) for the subscriber to join, then publish to it.
    let until = Instant::now() + WAIT;
    while topic.subscriber_count() == 0 {
        if Instant::now() > until || child.try_wait()?.is_some() {
            let _ = child.kill();
            let _ = child.wait();
            return Err("topic_sub never subscribed".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in HISTORY..HISTORY + READINGS {
        let reached = publisher.send_timeout(&reading(i), WAIT)?; // waits while its queue is full
        assert_eq!(reached, 1);
    }
    for id in 0..JOBS {
        queue.push_timeout(&job(id), WAIT)?; // waits while the queue is full
    }

    let until = Instant::now() + 3 * WAIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return Err("topic_sub did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut report = String::new();
    child.stdout.take().ok_or("no stdout")?.read_to_string(&mut report)?;
    let want =
        format!("readings {} in order, lost 0, jobs {JOBS}, id sum {}", HISTORY + READINGS, (0..JOBS).sum::<u64>());
    if !status.success() || report.trim() != want {
        return Err(format!("topic_sub: {status}, said {report:?}, expected {want:?}").into());
    }
    println!("topic_pub: {} readings to a separate program, in order; {JOBS} jobs taken", HISTORY + READINGS);
    println!("topic_sub: {}", report.trim());
    Ok(())
}
