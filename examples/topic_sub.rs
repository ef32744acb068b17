//! The subscriber half of a pair of programs (see `topic_pub`, which starts
//! this one): opens a topic and a queue by name, receives every reading in
//! order (the history first), takes every job, and reports on stdout.
//!
//! ```text
//! topic_sub <topic name> <queue name>
//! ```

use std::error::Error;
use std::time::Duration;

use shmpool::topic::{Queue, Topic, TopicError};

#[path = "common/topic.rs"]
mod common;
use common::{reading, Job, Reading, HISTORY, JOB, JOBS, READING, READINGS};

const WAIT: Duration = Duration::from_secs(10);

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [temps, jobs] = args.as_slice() else {
        eprintln!("usage: topic_sub <topic name> <queue name> (topic_pub starts it)");
        std::process::exit(2);
    };

    // Another type is refused, whatever it is called.
    match Topic::<u64>::builder(temps).type_name(READING).open() {
        Err(TopicError::TypeMismatch { .. }) => {}
        other => return Err(format!("a u64 opened a topic of readings: {other:?}").into()),
    }

    let topic = Topic::<Reading>::builder(temps).type_name(READING).open()?;
    let sub = topic.subscriber()?; // the last HISTORY readings are already queued
    for i in 0..HISTORY + READINGS {
        let r = sub.recv_timeout(WAIT)?; // read in place: an `ArchivedReading`, validated
        let want = reading(i);
        if r.sensor != want.sensor || r.celsius != want.celsius || r.note != want.note {
            return Err(format!("reading {i} is {} {} {:?}", r.sensor, r.celsius, r.note.as_str()).into());
        }
    }
    let lost = sub.missed();

    let queue = Queue::<Job>::builder(jobs).type_name(JOB).open()?;
    let mut sum = 0;
    for _ in 0..JOBS {
        let item = queue.pop_timeout(WAIT)?;
        if item.pixels.len() as u64 != item.id % 64 {
            return Err(format!("job {} has {} pixels", item.id, item.pixels.len()).into());
        }
        sum += item.id.to_native();
        item.ack(); // done: never delivered again
    }
    println!("readings {} in order, lost {lost}, jobs {JOBS}, id sum {sum}", HISTORY + READINGS);
    Ok(())
}
