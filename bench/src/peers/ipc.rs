//! ipc-channel request/reply: a child process (this binary, `--peer rt-ipc`)
//! bootstrapped through an `IpcOneShotServer`, requests on one `IpcSender`,
//! replies on another.

use std::ops::Range;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender, IpcSharedMemory};
use ipc_channel::IpcError;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{PEER_EXIT, PEER_FLAG, PEER_START};
use crate::common::{square, BoxResult, Run};
use crate::process::Reaped;

/// Peer role (after `--peer`) of the ipc-channel child.
pub const ROLE: &str = "rt-ipc";

/// What the child sends through the one-shot server: the sender of its
/// requests and the receiver of its replies (it keeps the other ends).
type Bootstrap<T> = (IpcSender<T>, IpcReceiver<T>);

/// A message of the request/reply channels: one task or a batch of them.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {
    /// How the child is told which message type it serves.
    const KIND: &'static str;

    /// The request for the tasks `range`.
    fn request(range: Range<u64>) -> Self;

    /// The child's reply to this request.
    fn answer(self) -> Self;

    /// Appends the replies this message carries to `out`.
    fn append_to(self, out: &mut Vec<u64>);
}

impl Message for u64 {
    const KIND: &'static str = "one";

    fn request(range: Range<u64>) -> Self {
        range.start
    }

    fn answer(self) -> Self {
        square(self)
    }

    fn append_to(self, out: &mut Vec<u64>) {
        out.push(self);
    }
}

impl Message for Vec<u64> {
    const KIND: &'static str = "batch";

    fn request(range: Range<u64>) -> Self {
        range.collect()
    }

    fn answer(mut self) -> Self {
        self.iter_mut().for_each(|x| *x = square(*x));
        self
    }

    fn append_to(self, out: &mut Vec<u64>) {
        out.extend(self);
    }
}

/// ipc-channel's own answer for large payloads, as its own benchmark uses
/// it: one region passed back and forth (its descriptor travels, the
/// receiver maps it), read in place. The child reads the length and the
/// first byte, checks it, and sends the region back.
impl Message for IpcSharedMemory {
    const KIND: &'static str = "shm";

    fn request(range: Range<u64>) -> Self {
        IpcSharedMemory::from_byte(SHM_FILL, (range.end - range.start) as usize)
    }

    fn answer(self) -> Self {
        // The parent fills every region with SHM_FILL: anything else is a
        // torn or foreign mapping, and the child stops (the parent sees its
        // channel close: an error, not a wrong figure).
        if self.first() != Some(&SHM_FILL) {
            eprintln!("ipc-channel shm peer: the region's first byte is not {SHM_FILL:#x}");
            std::process::exit(1);
        }
        self
    }

    fn append_to(self, out: &mut Vec<u64>) {
        out.push(self.len() as u64 + self.first().copied().unwrap_or(0) as u64);
    }
}

/// The byte the regions of [`IpcSharedMemory`] requests are filled with.
pub const SHM_FILL: u8 = 0xA5;

/// The parent's side: the channels to a child and the child itself.
pub struct IpcPeer<T: Message> {
    requests: IpcSender<T>,
    replies: IpcReceiver<T>,
    child: Reaped,
}

impl<T: Message> IpcPeer<T> {
    /// Starts the child and waits (with a deadline) for it to connect.
    pub fn spawn() -> BoxResult<Self> {
        let (server, name) = IpcOneShotServer::<Bootstrap<T>>::new()?;
        let mut command = Command::new(std::env::current_exe()?);
        command.args([PEER_FLAG, ROLE, &name, T::KIND]).stdin(Stdio::null());
        let mut child = Reaped::spawn(&mut command, format!("ipc-channel peer ({})", T::KIND))?;
        let (sender, accepted) = mpsc::channel();
        let acceptor = thread::spawn(move || {
            let _ = sender.send(server.accept().map_err(|error| error.to_string()));
        });
        let deadline = Instant::now() + PEER_START;
        let accepted = loop {
            match accepted.recv_timeout(Duration::from_millis(10)) {
                Ok(accepted) => break accepted,
                Err(RecvTimeoutError::Disconnected) => break Err("the accepting thread died".to_owned()),
                Err(RecvTimeoutError::Timeout) => {
                    let exited = child.has_exited()?;
                    if exited.is_none() && Instant::now() < deadline {
                        continue;
                    }
                    // Connect ourselves, so that the accepting thread returns.
                    if let Ok(bootstrap) = IpcSender::<Bootstrap<T>>::connect(name.clone()) {
                        let _ = ipc::channel().map(|channel| bootstrap.send(channel));
                    }
                    let _ = acceptor.join();
                    return Err(match exited {
                        Some(status) => format!("the ipc-channel peer exited ({status}) before connecting"),
                        None => format!("the ipc-channel peer did not connect within {PEER_START:?}"),
                    }
                    .into());
                }
            }
        };
        let _ = acceptor.join();
        let (_, (requests, replies)) = accepted.map_err(|error| format!("ipc-channel bootstrap: {error}"))?;
        Ok(IpcPeer { requests, replies, child })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one request and waits for its reply (a dead child closes the
    /// reply channel: an error, not a hang).
    pub fn call(&self, request: T) -> BoxResult<T> {
        self.requests.send(request).map_err(|error| format!("ipc-channel send: {error}"))?;
        Ok(self.replies.recv().map_err(|error| format!("ipc-channel reply: {error}"))?)
    }

    /// Sends the requests `0..tasks`, `per_send` tasks per message, while a
    /// second thread collects the replies.
    pub fn stream(&mut self, tasks: u64, per_send: u64) -> BoxResult<Run> {
        let IpcPeer { requests, replies, child } = self;
        let start = Instant::now();
        let (sent, received) = thread::scope(|s| {
            // The receiver is not Sync: the reader borrows it mutably.
            let replies = &mut *replies;
            let reader = s.spawn(move || -> Result<Vec<u64>, String> {
                let mut out = Vec::with_capacity(tasks as usize);
                while (out.len() as u64) < tasks {
                    let message = replies.recv().map_err(|error| format!("ipc-channel reply: {error}"))?;
                    message.append_to(&mut out);
                }
                Ok(out)
            });
            let mut sent = Ok(());
            let mut next = 0;
            while next < tasks {
                let end = tasks.min(next + per_send);
                if let Err(error) = requests.send(T::request(next..end)) {
                    sent = Err(format!("ipc-channel send: {error}"));
                    // The reader waits for replies that will never come:
                    // the child's death closes its channel.
                    child.kill();
                    break;
                }
                next = end;
            }
            let received = reader.join().unwrap_or_else(|_| Err("the reply reader panicked".to_owned()));
            (sent, received)
        });
        let elapsed = start.elapsed();
        sent?;
        Ok((elapsed, received?))
    }

    /// Closes the request channel, which ends the child, and checks its exit.
    pub fn finish(self) -> BoxResult<()> {
        let IpcPeer { requests, replies, child } = self;
        drop((requests, replies));
        child.finish(PEER_EXIT)
    }
}

/// The child: connects to the server `args[0]` and answers requests of the
/// kind `args[1]` until the parent closes the request channel.
pub fn run_peer(args: &[String]) -> BoxResult<()> {
    let [name, kind] = args else {
        return Err(format!("usage: shmpool-bench {PEER_FLAG} {ROLE} SERVER-NAME one|batch|shm").into());
    };
    match kind.as_str() {
        <u64 as Message>::KIND => serve::<u64>(name),
        <Vec<u64> as Message>::KIND => serve::<Vec<u64>>(name),
        <IpcSharedMemory as Message>::KIND => serve::<IpcSharedMemory>(name),
        other => Err(format!("unknown ipc-channel message kind {other}").into()),
    }
}

fn serve<T: Message>(name: &str) -> BoxResult<()> {
    let bootstrap = IpcSender::<Bootstrap<T>>::connect(name.to_owned())?;
    let (requests, incoming) = ipc::channel::<T>()?;
    let (outgoing, replies) = ipc::channel::<T>()?;
    bootstrap.send((requests, replies))?;
    drop(bootstrap);
    loop {
        match incoming.recv() {
            Ok(request) => outgoing.send(request.answer())?,
            Err(IpcError::Disconnected) => return Ok(()),
            Err(error) => return Err(error.into()),
        }
    }
}
