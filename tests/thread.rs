//! Threads with shmpool's error types: values, panics as errors, order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shmpool::{thread, SlaveThread, TaskError};

#[test]
fn a_thread_gives_its_value_or_its_panic_as_an_error() {
    assert_eq!(thread(|| 6 * 7).wait(), Ok(42));
    let r: Result<(), TaskError> = thread(|| panic!("no luck")).wait();
    assert!(matches!(r, Err(TaskError::Panicked { ref message }) if message.contains("no luck")), "{r:?}");
    // A timed wait hands the handle back while the closure runs, and takes
    // Duration::MAX as no limit.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let h = thread(move || rx.recv().map(|_| 1));
    let h = h.wait_timeout(Duration::from_millis(20)).expect_err("still running");
    tx.send(()).unwrap();
    assert_eq!(h.wait_timeout(Duration::MAX).unwrap(), Ok(Ok(1)));
}

#[test]
fn a_slave_thread_runs_closures_in_order_and_survives_panics() {
    let slave = SlaveThread::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let seen = seen.clone();
            slave.schedule(move || {
                seen.lock().unwrap().push(i);
                i * 2
            })
        })
        .collect();
    let bad = slave.schedule(|| -> u32 { panic!("scheduled failure") });
    assert_eq!(slave.invoke(|| "after"), Ok("after"));
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.wait(), Ok(i * 2));
    }
    assert!(matches!(bad.wait(), Err(TaskError::Panicked { .. })));
    assert_eq!(*seen.lock().unwrap(), (0..50).collect::<Vec<_>>());
    // Dropping it runs what was scheduled first.
    let late = {
        let s = SlaveThread::new();
        let _first = s.schedule(|| std::thread::sleep(Duration::from_millis(20)));
        s.schedule(|| 9)
    };
    assert_eq!(late.wait(), Ok(9));
}
