//! `shmpool-admin`: shows and removes shmpool segments in `/dev/shm`.
//!
//! - `shmpool-admin list`: every segment with its size, creator and the
//!   processes that map it; `stale` marks those left behind by a dead creator.
//!   Topics and queues also show their type, members, publishers and
//!   subscribers (consumers).
//! - `shmpool-admin clean`: removes the stale ones (never one in use).

use std::process::ExitCode;

fn main() -> ExitCode {
    shmpool::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("list") => list(),
        Some("clean") => clean(),
        _ => {
            eprintln!("usage: shmpool-admin list | clean");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmpool-admin: {e}");
            ExitCode::FAILURE
        }
    }
}

fn list() -> Result<(), shmpool::SegmentError> {
    let segments = shmpool::list_named()?;
    if segments.is_empty() {
        println!("no shmpool segments in /dev/shm");
        return Ok(());
    }
    println!("{:<40} {:>12} {:>10} {:<7} attached", "name", "bytes", "creator", "state");
    for s in segments {
        let creator = s.creator.map_or("?".to_owned(), |p| p.to_string());
        let state = if s.is_stale() {
            "stale"
        } else if s.creator_alive {
            "live"
        } else {
            "orphan"
        };
        let attached: Vec<String> = s.attached.iter().map(u32::to_string).collect();
        println!("{:<40} {:>12} {:>10} {:<7} {}", s.name, s.size, creator, state, attached.join(","));
        if let Some(t) = shmpool::topic::describe(&s.name) {
            let pids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            println!(
                "    {} of {}; members {}; publishers {}",
                t.kind,
                t.type_label,
                pids(&t.members),
                pids(&t.publishers)
            );
            for (pid, pending, missed) in &t.subscribers {
                println!("    subscriber {pid}: {pending} queued, {missed} missed");
            }
            if t.kind == "queue" {
                println!("    {} items queued", t.queued);
            }
        }
    }
    Ok(())
}

fn clean() -> Result<(), shmpool::SegmentError> {
    let removed = shmpool::cleanup_stale()?;
    if removed.is_empty() {
        println!("nothing to clean");
    }
    for name in removed {
        println!("removed /dev/shm/shmpool.{name}");
    }
    Ok(())
}
