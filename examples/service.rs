//! A named service used by three independent client processes
//! (processional's server/client). Run without arguments: it starts a server
//! process and three client processes, siblings of each other, then checks
//! that every call of every client landed.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use shmpool::{Service, ServiceError};

#[derive(Default)]
struct Store {
    counts: HashMap<String, u64>,
    stop: bool,
}

fn open(_: ()) -> Store {
    Store::default()
}

fn incr(s: &mut Store, key: String) -> u64 {
    let n = s.counts.entry(key).or_default();
    *n += 1;
    *n
}

fn count(s: &Store, key: String) -> u64 {
    s.counts.get(&key).copied().unwrap_or(0)
}

fn read(s: &Store, key: String) -> u64 {
    count(s, key)
}

fn stop(s: &mut Store, _: ()) -> bool {
    s.stop = true;
    true
}

fn stopped(s: &Store) -> bool {
    s.stop
}

const CALLS: u64 = 1000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    shmpool::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["server", name] => server(name),
        ["client", name, id] => client(name, id),
        [] => coordinate(),
        _ => Err("usage: service [server NAME | client NAME ID]".into()),
    }
}

/// Hosts the store until a client asks it to stop.
fn server(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let service = Service::serve(name, open, ())?;
    let me = Service::<Store>::connect(name)?;
    while !me.get(stopped)? {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(me);
    drop(service);
    Ok(())
}

/// Calls the store `CALLS` times.
fn client(name: &str, id: &str) -> Result<(), Box<dyn std::error::Error>> {
    let store = connect_retrying(name)?;
    for _ in 0..CALLS {
        store.call(incr, "hits".to_string())?;
        store.call(incr, format!("client-{id}"))?;
    }
    Ok(())
}

fn connect_retrying(name: &str) -> Result<shmpool::Client<Store>, ServiceError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Service::<Store>::connect(name) {
            Err(ServiceError::NotFound(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => return other,
        }
    }
}

fn coordinate() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("example-service-{}", std::process::id());
    let exe = std::env::current_exe()?;
    let mut server = Command::new(&exe).args(["server", &name]).spawn()?;
    let start = Instant::now();
    let clients: Vec<_> =
        (0..3).map(|i| Command::new(&exe).args(["client", &name, &i.to_string()]).spawn()).collect::<Result<_, _>>()?;
    for mut c in clients {
        assert!(c.wait()?.success(), "a client failed");
    }
    let elapsed = start.elapsed();
    let store = connect_retrying(&name)?;
    let hits = store.get(|s: &Store| s.counts.get("hits").copied().unwrap_or(0))?;
    assert_eq!(hits, 3 * CALLS, "every call of every client landed");
    for i in 0..3 {
        assert_eq!(store.call(|s: &mut Store, k: String| read(s, k), format!("client-{i}"))?, CALLS);
    }
    store.call(stop, ())?;
    drop(store);
    assert!(server.wait()?.success());
    println!(
        "3 independent clients made {} calls to one server process in {elapsed:.2?} ({:.1} us per call)",
        6 * CALLS,
        elapsed.as_secs_f64() * 1e6 / (6 * CALLS) as f64
    );
    Ok(())
}
