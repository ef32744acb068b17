//! A child process that is always reaped: waited for with a deadline when it
//! should be finishing, killed and waited for when dropped unfinished.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::BoxResult;

/// A spawned child process, reaped on every path.
#[derive(Debug)]
pub struct Reaped {
    /// `None` once the child has been waited for.
    child: Option<Child>,
    /// What the child is, for error messages.
    what: String,
    /// The child leads its own process group, and everything in it (its own
    /// children: a Python pool's workers) is killed with it.
    group: bool,
}

impl Reaped {
    /// Spawns `command`.
    pub fn spawn(command: &mut Command, what: impl Into<String>) -> io::Result<Self> {
        Ok(Reaped { child: Some(command.spawn()?), what: what.into(), group: false })
    }

    /// Spawns `command` as the leader of a new process group, so that its
    /// own children die with it when it has to be killed.
    pub fn spawn_group(command: &mut Command, what: impl Into<String>) -> io::Result<Self> {
        let child = command.process_group(0).spawn()?;
        Ok(Reaped { child: Some(child), what: what.into(), group: true })
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The child's stdin, when it was piped (once).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.as_mut().and_then(|child| child.stdin.take())
    }

    /// The child's stdout and stderr, when they were piped (once).
    pub fn take_output(&mut self) -> (Option<ChildStdout>, Option<ChildStderr>) {
        match self.child.as_mut() {
            Some(child) => (child.stdout.take(), child.stderr.take()),
            None => (None, None),
        }
    }

    /// Whether the child has exited (and then reaps it), without waiting.
    pub fn has_exited(&mut self) -> io::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if let Some(status) = status {
            self.reaped(status);
        }
        Ok(status)
    }

    /// Kills the child (and its group) now; it is reaped by the next wait or
    /// on drop.
    pub fn kill(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if self.group {
            kill_group(child.id());
        } else {
            let _ = child.kill();
        }
    }

    /// Waits up to `timeout` for the child to exit; kills and reaps it, and
    /// fails, when it has not by then.
    pub fn wait_for(&mut self, timeout: Duration) -> BoxResult<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(100);
        loop {
            if let Some(status) = self.has_exited()? {
                return Ok(status);
            }
            if self.child.is_none() {
                return Err(format!("{} was already reaped", self.what).into());
            }
            if Instant::now() >= deadline {
                self.kill();
                if let Some(mut child) = self.child.take() {
                    let _ = child.wait();
                }
                return Err(format!("{} did not exit within {timeout:?}: killed", self.what).into());
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` for the child to exit, and fails unless it
    /// exited successfully.
    pub fn finish(mut self, timeout: Duration) -> BoxResult<()> {
        let status = self.wait_for(timeout)?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{} exited with {status}", self.what).into())
        }
    }

    /// Records that the child was reaped with `status`: a group whose leader
    /// failed may still hold its children, which are killed.
    fn reaped(&mut self, status: ExitStatus) {
        if let Some(child) = self.child.take() {
            // A group outlives its leader while any member lives, so its id
            // is not free for reuse then; with no member left the kill finds
            // nothing (a new group under the id would need the pid counter
            // to wrap around since the leader's exit, microseconds ago).
            if self.group && !status.success() {
                kill_group(child.id());
            }
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

/// Sends SIGKILL to every process of the group `leader` leads.
fn kill_group(leader: u32) {
    let Ok(pgid) = i32::try_from(leader) else {
        return;
    };
    // SAFETY: kill(2) takes no pointers; a negative pid addresses the
    // process group, which is ours (spawned with `process_group(0)`) and
    // still exists (its leader is not reaped, or members remain). Failure
    // (ESRCH: the group is gone) is harmless and ignored.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group that overruns its deadline is killed whole: the leader and
    /// the child it started.
    #[test]
    fn overdue_group_is_killed_whole() {
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 60 & echo $!; wait"]).stdout(std::process::Stdio::piped());
        let mut child = Reaped::spawn_group(&mut command, "sh").expect("sh starts");
        let (stdout, _) = child.take_output();
        let mut line = String::new();
        io::BufRead::read_line(&mut io::BufReader::new(stdout.expect("piped")), &mut line).expect("reads");
        let grandchild: u32 = line.trim().parse().expect("a pid");
        let error = child.wait_for(Duration::from_millis(200)).expect_err("sh overruns");
        assert!(error.to_string().contains("did not exit"), "{error}");
        // The grandchild (reparented, reaped by init) is gone or a zombie.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            let state = state.rsplit(')').next().and_then(|rest| rest.split_whitespace().next());
            if matches!(state, None | Some("Z") | Some("X")) {
                break;
            }
            assert!(Instant::now() < deadline, "the grandchild {grandchild} survived its group");
            thread::sleep(Duration::from_millis(10));
        }
    }
}
