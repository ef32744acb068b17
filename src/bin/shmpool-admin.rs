//! `shmpool-admin`: shows and removes shmpool segments in `/dev/shm`, and
//! (feature `net`) shows the remote members of a pool.
//!
//! - `shmpool-admin list`: every segment with its size, creator and the
//!   processes that map it; `stale` marks those left behind by a dead creator.
//!   Topics and queues also show their type, members, publishers and
//!   subscribers (consumers).
//! - `shmpool-admin clean`: removes the stale ones (never one in use).
//! - `shmpool-admin members <endpoint> [--secret-file PATH] [--timeout SECS]`
//!   (built with feature `net`): asks the pool listening at `endpoint`
//!   (`tcp/host:port`, as given to `PoolBuilder::listen`) who its members
//!   on other hosts are; one line each. Pools' segments are memfds, not in
//!   `/dev/shm`, so `list` cannot see them: this asks the pool's relay over
//!   the network. The secret comes from the file given with
//!   `--secret-file` (one trailing newline dropped), else from the
//!   environment variable `SHMPOOL_SECRET`; never from the command line,
//!   where `ps` shows it to every user. Exits 1 if no answer came in time
//!   (another secret, or no pool there).

use std::process::ExitCode;

const USAGE: &str = if cfg!(feature = "net") {
    "usage: shmpool-admin list | clean | members <endpoint> [--secret-file PATH] [--timeout SECS]"
} else {
    "usage: shmpool-admin list | clean"
};

fn main() -> ExitCode {
    shmpool::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("list") => list(),
        Some("clean") => clean(),
        #[cfg(feature = "net")]
        Some("members") => return net::members(&args[1..]),
        #[cfg(not(feature = "net"))]
        Some("members") => {
            eprintln!("shmpool-admin: this build has no network support (build it with `--features net`)");
            return ExitCode::from(2);
        }
        _ => {
            eprintln!("{USAGE}");
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

/// `members`: a pool's remote members, asked of its relay over the network.
#[cfg(feature = "net")]
mod net {
    use std::process::ExitCode;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use shmpool::net::NetError;

    /// The environment variable the secret is read from.
    const SECRET_ENV: &str = "SHMPOOL_SECRET";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// What the command line asked for.
    #[derive(Debug)]
    struct Request {
        endpoint: String,
        secret_file: Option<String>,
        timeout: Duration,
    }

    fn parse(args: &[String]) -> Result<Request, String> {
        let mut endpoint = None;
        let mut secret_file = None;
        let mut timeout = DEFAULT_TIMEOUT;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--secret-file" => secret_file = Some(args.next().ok_or("--secret-file needs a path")?.clone()),
                "--timeout" => {
                    let secs = args.next().ok_or("--timeout needs a number of seconds")?;
                    let secs: f64 = secs.parse().map_err(|_| format!("--timeout {secs:?}: not a number of seconds"))?;
                    timeout =
                        Duration::try_from_secs_f64(secs).map_err(|_| format!("--timeout {secs}: not a duration"))?;
                }
                s if s == "--secret" || s.starts_with("--secret=") => {
                    return Err(format!(
                        "the secret is never taken on the command line (ps shows it to every user): \
                         set {SECRET_ENV} or use --secret-file"
                    ))
                }
                s if s.starts_with('-') => return Err(format!("unknown option {s}")),
                s if endpoint.is_none() => endpoint = Some(s.to_owned()),
                s => return Err(format!("unexpected argument {s:?}")),
            }
        }
        let endpoint = endpoint.ok_or("members needs the pool's endpoint (tcp/host:port)")?;
        Ok(Request { endpoint, secret_file, timeout })
    }

    /// The secret: the file's bytes (one trailing newline dropped), else
    /// the environment variable's.
    fn secret(file: Option<&str>) -> Result<Vec<u8>, String> {
        let mut secret = match file {
            Some(path) => std::fs::read(path).map_err(|e| format!("reading the secret from {path}: {e}"))?,
            None => {
                use std::os::unix::ffi::OsStringExt;
                std::env::var_os(SECRET_ENV)
                    .ok_or(format!("no secret: set {SECRET_ENV} or use --secret-file PATH"))?
                    .into_vec()
            }
        };
        if secret.last() == Some(&b'\n') {
            secret.pop();
            if secret.last() == Some(&b'\r') {
                secret.pop();
            }
        }
        if secret.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(secret)
    }

    pub(super) fn members(args: &[String]) -> ExitCode {
        let request = match parse(args) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("shmpool-admin members: {e}\n{}", super::USAGE);
                return ExitCode::from(2);
            }
        };
        let secret = match secret(request.secret_file.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("shmpool-admin members: {e}");
                return ExitCode::from(2);
            }
        };
        let members = match shmpool::net::members(&request.endpoint, secret, request.timeout) {
            Ok(m) => m,
            Err(e) => {
                let why = match e {
                    NetError::TimedOut => format!(
                        "no answer from {} within {:?}: the pool there has another secret, or no shmpool pool \
                         listens there",
                        request.endpoint, request.timeout
                    ),
                    other => format!("{}: {other}", request.endpoint),
                };
                eprintln!("shmpool-admin members: {why}");
                return ExitCode::FAILURE;
            }
        };
        let n = members.len();
        println!("pool at {}: {n} member{}", request.endpoint, if n == 1 { "" } else { "s" });
        if n > 0 {
            println!(
                "{:<16} {:>7} {:>6} {:>10}  {:<23} {:>10}  session",
                "member", "workers", "held", "answered", "joined (owner's clock)", "for"
            );
        }
        for m in members {
            println!(
                "{:016x} {:>7} {:>6} {:>10}  {:<23} {:>10}  {}",
                m.id,
                m.workers,
                m.held,
                m.answered,
                utc(m.joined),
                format!("{:.1}s", m.member_for.as_secs_f64()),
                m.session
            );
        }
        ExitCode::SUCCESS
    }

    /// `t` as `YYYY-MM-DD hh:mm:ss UTC`.
    fn utc(t: SystemTime) -> String {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (days, rest) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil(days);
        format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest / 60 % 60, rest % 60)
    }

    /// The proleptic Gregorian date `days` days after 1970-01-01: counted
    /// in 400-year eras of 146,097 days from 0000-03-01, with years that
    /// start in March so that the leap day falls at a year's end.
    fn civil(days: u64) -> (u64, u64, u64) {
        let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
        let era = z / 146_097;
        let day_of_era = z % 146_097;
        let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_from_march = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
        let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
        let year = era * 400 + year_of_era + u64::from(month <= 2);
        (year, month, day)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn dates_are_gregorian() {
            assert_eq!(civil(0), (1970, 1, 1));
            assert_eq!(civil(59), (1970, 3, 1));
            assert_eq!(civil(10_957), (2000, 1, 1));
            assert_eq!(civil(11_016), (2000, 2, 29));
            assert_eq!(civil(19_782), (2024, 2, 29));
            assert_eq!(civil(19_783), (2024, 3, 1));
            assert_eq!(utc(UNIX_EPOCH + Duration::from_secs(1_700_000_000)), "2023-11-14 22:13:20 UTC");
        }

        #[test]
        fn the_secret_is_refused_on_the_command_line() {
            let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
            assert!(parse(&args(&["tcp/h:1", "--secret", "x"])).unwrap_err().contains("never"));
            assert!(parse(&args(&["tcp/h:1", "--secret=x"])).unwrap_err().contains("never"));
            let r = parse(&args(&["tcp/h:1", "--timeout", "0.5", "--secret-file", "/f"])).unwrap();
            assert_eq!(
                (r.endpoint.as_str(), r.timeout, r.secret_file.as_deref()),
                ("tcp/h:1", Duration::from_millis(500), Some("/f"))
            );
            assert!(parse(&args(&[])).is_err());
        }
    }
}
