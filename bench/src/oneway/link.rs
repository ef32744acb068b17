//! What every transport of the one-way rows shares: the messages (a pattern
//! stamped with its sequence number at both ends), the protocol both
//! processes speak over a [`Link`], and the child process guard.
//!
//! Protocol, over one link per (transport, size), in two phases:
//!
//! 1. Echo (latency): the parent sends payload `seq`, the child checks it and
//!    sends back a payload of the same size stamped `seq`. `QUIT` ends it; the
//!    child acknowledges it with `QUIT`, so that the parent knows every
//!    message it sent was received and let go of.
//! 2. Sink (throughput): the parent streams payloads `0, 1, ...`; the child
//!    checks each one's number and acknowledges every `batch` of them with
//!    the count received; at most `window` go unacknowledged, so no
//!    transport's buffer overflows. `FLUSH` asks for an acknowledgement
//!    flagged [`FLUSHED`] (every earlier one arrives before it); `QUIT` ends.

use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::affinity;
use crate::common::{self, BoxResult, Mode};
use crate::process::Reaped;

/// Sentinel sequence numbers, sent as full-size payloads.
pub const QUIT: u64 = u64::MAX;
pub const FLUSH: u64 = u64::MAX - 1;
/// The acknowledgement a child sends once its end is ready (iceoryx2).
pub const READY: u64 = u64::MAX - 2;
/// Flag of the acknowledgement that answers a `FLUSH`.
pub const FLUSHED: u64 = 1 << 63;
/// How long a receive waits before it declares the peer lost.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child process may live at most (its watchdog kills it then).
const LIFETIME: Duration = Duration::from_secs(60);

/// One end of a transport, carrying payloads of one size and small
/// acknowledgements. Every receive fails (never hangs) once [`TIMEOUT`]
/// passes, or earlier when the transport sees its peer gone.
pub trait Link {
    /// Sends payload number `seq`: the pattern of the link's size, stamped.
    fn send(&mut self, seq: u64) -> BoxResult<()>;
    /// Receives the next payload, checks its length and stamps, and returns
    /// its number.
    fn recv(&mut self) -> BoxResult<u64>;
    /// Sends an 8-byte acknowledgement carrying `n`.
    fn send_ack(&mut self, n: u64) -> BoxResult<()>;
    /// Receives the next acknowledgement.
    fn recv_ack(&mut self) -> BoxResult<u64>;
}

// ---------------------------------------------------------------------------
// Messages

fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(7)
}

/// The bytes of every payload of `size` before stamping.
pub fn template(size: usize) -> Vec<u8> {
    (0..size).map(pattern).collect()
}

/// Writes `seq` into the first and the last 8 bytes of `bytes` (at least 8).
pub fn stamp(bytes: &mut [u8], seq: u64) {
    let n = bytes.len();
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    bytes[n - 8..].copy_from_slice(&seq.to_le_bytes());
}

/// Checks that `bytes` is a payload of `size`: its length, the two stamps
/// (equal) and the pattern byte in the middle; returns its number.
pub fn check(bytes: &[u8], size: usize) -> BoxResult<u64> {
    if bytes.len() != size {
        return Err(format!("a {}-byte message arrived where {size} bytes were due", bytes.len()).into());
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let (head, tail) = (word(0), word(size - 8));
    if head != tail {
        return Err(format!("corrupt message: stamped {head} at its head, {tail} at its tail").into());
    }
    let mid = size / 2;
    if size >= 24 && bytes[mid] != pattern(mid) {
        return Err(format!("corrupt message {head}: byte {mid} is {}", bytes[mid]).into());
    }
    Ok(head)
}

/// Reads an acknowledgement (exactly 8 bytes).
pub fn ack_of(bytes: &[u8]) -> BoxResult<u64> {
    let word: [u8; 8] = bytes.try_into().map_err(|_| format!("a {}-byte acknowledgement (8 were due)", bytes.len()))?;
    Ok(u64::from_le_bytes(word))
}

fn expect_seq(got: u64, due: u64) -> BoxResult<()> {
    if got == due {
        Ok(())
    } else {
        Err(format!("message {got} arrived where {due} was due (lost, repeated or reordered)").into())
    }
}

// ---------------------------------------------------------------------------
// The child's side

/// Runs both phases of the protocol in the child: echo until `QUIT`, then
/// sink (acknowledging every `batch`) until `QUIT`.
pub fn serve(link: &mut dyn Link, batch: u64) -> BoxResult<()> {
    let mut due = 0;
    loop {
        match link.recv()? {
            QUIT => {
                link.send_ack(QUIT)?;
                break;
            }
            seq => {
                expect_seq(seq, due)?;
                due += 1;
                link.send(seq)?;
            }
        }
    }
    let mut due = 0;
    loop {
        match link.recv()? {
            QUIT => return Ok(()),
            FLUSH => link.send_ack(due | FLUSHED)?,
            seq => {
                expect_seq(seq, due)?;
                due += 1;
                if due % batch.max(1) == 0 {
                    link.send_ack(due)?;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The parent's side

/// Iteration counts and time budgets of one row.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub warm_up: usize,
    pub round_trips: usize,
    /// The echo phase's timed round trips stop once they took this long.
    pub echo_budget: Duration,
    /// The same for the streaming phase.
    pub budget: Duration,
    pub messages: u64,
}

impl Plan {
    /// The plan of one row in one of `rounds` rounds: the echo phase's
    /// round trips and budget shared out over the rounds (the warm-up is
    /// each round's own); the streaming phase runs in one round only, with
    /// all of its messages and budget.
    pub fn new(mode: Mode, rounds: usize) -> Self {
        let rounds = rounds.max(1);
        Plan {
            warm_up: mode.pick(300, 3_000),
            round_trips: mode.pick(20_000, 200_000) / rounds,
            echo_budget: mode.pick(Duration::from_millis(500), Duration::from_secs(3)) / rounds as u32,
            budget: mode.pick(Duration::from_millis(500), Duration::from_secs(3)),
            messages: mode.pick(200_000, 2_000_000),
        }
    }
}

/// Messages in flight at most and messages per acknowledgement, by size:
/// 16 MiB in flight, 8 to 256 messages, 8 acknowledgements per window.
pub fn window(size: usize) -> (u64, u64) {
    let window = ((16 << 20) / size.max(1)).clamp(8, 256) as u64;
    (window, window / 8)
}

/// What the echo phase measured.
pub struct Echoed {
    /// One-way times: half of each round trip.
    pub samples: Histogram<u64>,
    pub round_trips: usize,
    /// CPU time of both processes over the timed round trips.
    pub cpu: Duration,
}

/// The echo phase: a warm-up, then timed round trips (within the budget),
/// each recorded as half its time; then `QUIT`.
pub fn ping_pong(link: &mut dyn Link, plan: &Plan, pids: &[u32]) -> BoxResult<Echoed> {
    let mut seq = 0;
    let mut round_trip = |link: &mut dyn Link| -> BoxResult<Duration> {
        let start = Instant::now();
        link.send(seq)?;
        let echoed = link.recv()?;
        let took = start.elapsed();
        expect_seq(echoed, seq)?;
        seq += 1;
        Ok(took)
    };
    let warm_up_end = Instant::now() + plan.echo_budget / 4;
    for _ in 0..plan.warm_up {
        round_trip(link)?;
        if Instant::now() > warm_up_end {
            break;
        }
    }
    let (timed, cpu) = common::measure_cpu(pids, || -> BoxResult<(Histogram<u64>, usize)> {
        let mut samples = common::histogram();
        let mut spent = Duration::ZERO;
        let mut done = 0;
        while done < plan.round_trips && (done < 10 || spent < plan.echo_budget) {
            let took = round_trip(link)?;
            spent += took;
            common::record(&mut samples, took / 2);
            done += 1;
        }
        Ok((samples, done))
    });
    let (samples, round_trips) = timed?;
    link.send(QUIT)?;
    // Everything sent so far was received (and let go of) once this arrives.
    let ack = link.recv_ack()?;
    if ack != QUIT {
        return Err(format!("acknowledgement {ack} where the end of the echo phase was due").into());
    }
    Ok(Echoed { samples, round_trips, cpu })
}

/// One row's phases in one round, with its child `child` (pinned here to
/// the child's core; the caller pins itself): echo, then the sink phase
/// when `stream`, else `QUIT` at once (the child's sink ends on it).
pub fn phases(
    link: &mut dyn Link,
    plan: &Plan,
    size: usize,
    child: u32,
    stream: bool,
) -> BoxResult<(Echoed, Option<Streamed>)> {
    affinity::pin_process(child, affinity::pair().1)?;
    let pids = [0, child];
    let echoed = ping_pong(link, plan, &pids)?;
    let streamed = if stream {
        Some(self::stream(link, plan, size, &pids)?)
    } else {
        link.send(QUIT)?;
        None
    };
    Ok((echoed, streamed))
}

/// What the sink phase measured.
pub struct Streamed {
    pub messages: u64,
    pub elapsed: Duration,
    pub cpu: Duration,
}

/// The sink phase: a warm-up round, then a timed round of up to
/// `plan.messages` (within the budget), each ended by a flush so that every
/// message was received and checked when the clock stops; then `QUIT`.
pub fn stream(link: &mut dyn Link, plan: &Plan, size: usize, pids: &[u32]) -> BoxResult<Streamed> {
    let (window, _) = window(size);
    let mut sender = Sender { sent: 0, acked: 0, window };
    sender.round(link, plan.messages / 10, plan.budget / 4)?;
    let (timed, cpu) = common::measure_cpu(pids, || -> BoxResult<(u64, Duration)> {
        let start = Instant::now();
        let messages = sender.round(link, plan.messages, plan.budget)?;
        Ok((messages, start.elapsed()))
    });
    let (messages, elapsed) = timed?;
    link.send(QUIT)?;
    Ok(Streamed { messages, elapsed, cpu })
}

struct Sender {
    sent: u64,
    acked: u64,
    window: u64,
}

impl Sender {
    /// Sends up to `count` messages (fewer once `budget` is used, `window`
    /// at least), then flushes; returns how many it sent.
    fn round(&mut self, link: &mut dyn Link, count: u64, budget: Duration) -> BoxResult<u64> {
        let start = Instant::now();
        let first = self.sent;
        while self.sent - first < count {
            if (self.sent - first) % 64 == 0 && self.sent - first >= self.window && start.elapsed() > budget {
                break;
            }
            self.wait_for_room(link)?;
            link.send(self.sent)?;
            self.sent += 1;
        }
        // The flush is a message too: it needs room in the window.
        self.wait_for_room(link)?;
        link.send(FLUSH)?;
        loop {
            let ack = link.recv_ack()?;
            if ack & FLUSHED != 0 {
                expect_seq(ack & !FLUSHED, self.sent).map_err(|e| format!("after a flush: {e}"))?;
                self.acked = self.sent;
                return Ok(self.sent - first);
            }
            self.take_ack(ack)?;
        }
    }

    /// Waits until fewer than `window` messages are unacknowledged.
    fn wait_for_room(&mut self, link: &mut dyn Link) -> BoxResult<()> {
        while self.sent - self.acked >= self.window {
            let ack = link.recv_ack()?;
            self.take_ack(ack)?;
        }
        Ok(())
    }

    fn take_ack(&mut self, ack: u64) -> BoxResult<()> {
        if ack > self.sent || ack < self.acked {
            return Err(format!(
                "acknowledgement of {ack} messages after {} were sent, {} acknowledged",
                self.sent, self.acked
            )
            .into());
        }
        self.acked = ack;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Child processes of this binary

/// A copy of this binary started as `--peer ROLE ARGS`: killed and reaped
/// when dropped unless it finished; a watchdog kills it after [`LIFETIME`]
/// so that a receive blocked on it (ipc-channel has no timed receive for
/// bytes) fails instead of hanging.
pub struct Peer {
    child: Reaped,
    role: String,
    watchdog: Option<Watchdog>,
}

/// The flag that cancels a watchdog, and its thread.
struct Watchdog {
    cancel: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

impl Peer {
    pub fn spawn(role: &str, args: &[String]) -> BoxResult<Peer> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command.arg("--peer").arg(role).args(args).stdin(Stdio::null());
        let child = Reaped::spawn(&mut command, format!("the {role} child"))?;
        let pid = child.id();
        let cancel = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&cancel);
        let thread = thread::spawn(move || {
            let (lock, wake) = &*flag;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (cancelled, _) =
                wake.wait_timeout_while(guard, LIFETIME, |cancelled| !*cancelled).unwrap_or_else(|e| e.into_inner());
            if !*cancelled {
                // SAFETY: kill(2) with a pid we started and have not reaped
                // (the watchdog is cancelled before the child is reaped), so
                // the pid is still that child's.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        });
        Ok(Peer { child, role: role.to_owned(), watchdog: Some(Watchdog { cancel, thread }) })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the child has exited (for receive loops that poll).
    pub fn check_alive(&mut self) -> BoxResult<()> {
        match self.child.has_exited()? {
            None => Ok(()),
            Some(status) => {
                // Reaped now: its pid may be reused, so the watchdog must not
                // fire at it any more.
                self.cancel_watchdog();
                Err(format!("the {} child exited early ({status})", self.role).into())
            }
        }
    }

    /// Waits for the child to exit by itself (it was told to quit) and
    /// checks that it succeeded.
    pub fn finish(mut self) -> BoxResult<()> {
        self.cancel_watchdog();
        let status = self.child.wait_for(TIMEOUT)?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("the {} child failed ({status})", self.role).into())
        }
    }

    fn cancel_watchdog(&mut self) {
        if let Some(Watchdog { cancel, thread }) = self.watchdog.take() {
            *cancel.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cancel.1.notify_all();
            let _ = thread.join();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Before `child` (a `Reaped`) kills and reaps the child, if unfinished.
        self.cancel_watchdog();
    }
}

/// Parses argument `i` of a child's command line.
pub fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> BoxResult<T> {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("child argument {i} ({what}) missing or invalid").into())
}
