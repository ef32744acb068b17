//! A pool across hosts (feature `net`), on loopback: this program is both
//! sides, selected by argument, as the same binary would run on two hosts.
//!
//! `cargo run --release --features net --example net_pool` starts the owner,
//! which starts a joiner (this same executable, `join ENDPOINT`), maps
//! 100,000 tasks across its own worker and the joiner's, and checks every
//! result and that the joiner ran some.
//!
//! By hand, on two hosts sharing a secret:
//! `net_pool owner tcp/0.0.0.0:7447` and `net_pool join tcp/HOST_A:7447`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Shared by both hosts (in a real deployment: from a secret store).
const SECRET: &[u8] = b"example secret: use a long random one";

/// The square of `x`, and which process computed it.
fn square_where(x: u64) -> (u64, u32) {
    (x * x, std::process::id())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    shmpool::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["join", endpoint] => {
            let report = shmpool::net::join(endpoint, 2, SECRET)?;
            println!("joiner: the pool closed after I ran {} tasks", report.tasks);
            Ok(())
        }
        ["owner", endpoint] => owner(endpoint, false),
        [] => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            owner(&format!("tcp/127.0.0.1:{port}"), true)
        }
        _ => Err("usage: net_pool [owner ENDPOINT | join ENDPOINT]".into()),
    }
}

fn owner(endpoint: &str, start_joiner: bool) -> Result<(), Box<dyn std::error::Error>> {
    let pool = shmpool::Pool::builder().workers(1).listen(endpoint).secret(SECRET).build()?;
    let local: Vec<u32> = pool.worker_pids();
    let mut joiner = if start_joiner {
        Some(Command::new(std::env::current_exe()?).args(["join", endpoint]).stdout(Stdio::inherit()).spawn()?)
    } else {
        println!("owner: listening on {endpoint}; start joiners with `net_pool join <this host's endpoint>`");
        None
    };
    // Wait until a member answers a task.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let remote = pool.map(square_where, 0..64u64)?.filter_map(Result::ok).any(|(_, pid)| !local.contains(&pid));
        if remote {
            break;
        }
        if Instant::now() > until {
            return Err("no member joined within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let mut remote = 0u64;
    for (x, r) in pool.map(square_where, 0..100_000u64)?.enumerate() {
        let (sq, pid) = r?;
        if sq != (x as u64) * (x as u64) {
            return Err(format!("result {x} is wrong: {sq}").into());
        }
        remote += u64::from(!local.contains(&pid));
    }
    let took = started.elapsed();
    if remote == 0 {
        return Err("the joiner ran none of the tasks".into());
    }
    println!("owner: 100,000 tasks in {took:?}, {remote} of them run by the joiner, every result right");
    drop(pool);
    if let Some(j) = joiner.as_mut() {
        let status = j.wait()?;
        if !status.success() {
            return Err(format!("the joiner ended with {status}").into());
        }
    }
    Ok(())
}
