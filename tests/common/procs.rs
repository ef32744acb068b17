//! Real separate processes for cross-process tests: the test binary runs
//! itself again with an environment variable naming a role, through
//! `std::process::Command` (not shmpool's spawn), and talks to the parent
//! in marked lines on its stdout (libtest's own output is ignored).
//!
//! The test binary must have a test named [`ENTRY`] that calls [`role`]
//! first and runs the role it returns, if any. Every wait is bounded: a
//! child that does not say what it should in time fails the test, and a
//! child still running when its [`Proc`] drops is killed and reaped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// The test that runs a child's role.
pub const ENTRY: &str = "child_role";
/// The environment variable that names a child's role and its arguments.
const ROLE_ENV: &str = "SHMPOOL_TEST_CHILD_ROLE";
/// What starts a line meant for the parent.
const MARK: &str = "@@child:";

/// In a child: its role and arguments (`None` in the parent).
pub fn role() -> Option<(String, Vec<String>)> {
    let spec = std::env::var(ROLE_ENV).ok()?;
    let mut parts = spec.split('\u{1f}').map(str::to_owned);
    let role = parts.next()?;
    Some((role, parts.collect()))
}

/// In a child: tells the parent `line` (one line, no newline inside).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A newline first: libtest may have left "test child_role ... " open.
    let _ = writeln!(out, "\n{MARK}{line}");
    let _ = out.flush();
}

/// In a child: the next line the parent wrote to its stdin (`None` after
/// `timeout` or at end of input).
pub fn hear(timeout: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let got = std::io::stdin().lock().read_line(&mut line).ok().filter(|&n| n > 0).map(|_| line);
        let _ = tx.send(got);
    });
    rx.recv_timeout(timeout).ok().flatten().map(|l| l.trim_end().to_owned())
}

/// A line from child `id`.
pub type Line = (usize, String);

/// A child process running a role of this test binary.
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Option<Receiver<Line>>,
    /// Which child it is (in lines sent to a shared receiver).
    pub id: usize,
    what: String,
}

impl Proc {
    /// Starts the role `role` with `args`; its lines come to [`Proc::expect`].
    pub fn spawn(role: &str, args: &[&str]) -> Proc {
        let (tx, rx) = mpsc::channel();
        let mut p = Proc::spawn_into(role, args, 0, tx);
        p.lines = Some(rx);
        p
    }

    /// Starts the role `role` with `args`; its lines go to `tx`, tagged `id`.
    pub fn spawn_into(role: &str, args: &[&str], id: usize, tx: Sender<Line>) -> Proc {
        let mut spec = role.to_owned();
        for a in args {
            spec.push('\u{1f}');
            spec.push_str(a);
        }
        let mut child = Command::new(std::env::current_exe().expect("the test binary's path"))
            .args(["--exact", ENTRY, "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a child process");
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(at) = line.find(MARK) {
                    if tx.send((id, line[at + MARK.len()..].to_owned())).is_err() {
                        return;
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        Proc { child, stdin, lines: None, id, what: format!("child {id} ({role} {args:?})") }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the child says, which must start with `prefix`;
    /// returns the rest. Fails the test after `timeout`.
    pub fn expect(&self, prefix: &str, timeout: Duration) -> String {
        let rx = self.lines.as_ref().expect("this child's lines go to a shared receiver");
        match rx.recv_timeout(timeout) {
            Ok((_, line)) => match line.strip_prefix(prefix) {
                Some(rest) => rest.trim().to_owned(),
                None => panic!("{}: expected {prefix:?}, got {line:?}", self.what),
            },
            Err(RecvTimeoutError::Timeout) => {
                panic!("{}: said nothing within {timeout:?} (expected {prefix:?})", self.what)
            }
            Err(RecvTimeoutError::Disconnected) => panic!("{}: ended before saying {prefix:?}", self.what),
        }
    }

    /// Writes `line` to the child's stdin.
    pub fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to the child");
        stdin.flush().expect("flush to the child");
    }

    /// SIGKILL, then reap (a zombie would still look alive to shmpool).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits at most `timeout` for the child to exit; kills it and fails
    /// the test if it is still running then.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= until {
                self.kill();
                panic!("{}: still running after {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// [`Proc::wait`], failing the test unless the child exited with success.
    pub fn wait_ok(&mut self, timeout: Duration) {
        let status = self.wait(timeout);
        assert!(status.success(), "{}: exited with {status}", self.what);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}
