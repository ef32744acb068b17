//! The ipc-channel rows, bootstrapped through an `IpcOneShotServer` whose
//! name the child gets on its command line:
//!
//! - the copy path: raw byte channels (`IpcBytesSender`, no serde), the
//!   bytes through a Unix socket;
//! - `IpcSharedMemory`, ipc-channel's own answer for large payloads, used as
//!   its own benchmark uses it: one region passed back and forth, each end
//!   writing its message into it in place (`deref_mut`) before sending it on
//!   (the region's descriptor travels; the receiver maps it).

use ipc_channel::ipc::{
    self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender, IpcSharedMemory,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::link::{self, Echoed, Link, Peer, Plan, Streamed, TIMEOUT};
use crate::common::BoxResult;

pub const ROLE: &str = "oneway-ipc-channel";

/// Which of the two rows a child serves (its second argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bytes,
    SharedMemory,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Bytes => "bytes",
            Kind::SharedMemory => "shm",
        }
    }
}

/// What the child sends through the one-shot server: the parent's sender
/// (to the child) and the parent's receiver (from the child).
type Bootstrap<S, R> = (S, R);

/// The copy path's end. A receive blocks in the kernel: it fails once the
/// other end is gone (every sender closed), and the child's watchdog bounds
/// the rest.
struct BytesLink {
    tx: IpcBytesSender,
    rx: IpcBytesReceiver,
    size: usize,
    payload: Vec<u8>,
}

impl BytesLink {
    fn new((tx, rx): Bootstrap<IpcBytesSender, IpcBytesReceiver>, size: usize) -> Self {
        BytesLink { tx, rx, size, payload: link::template(size) }
    }
}

impl Link for BytesLink {
    fn send(&mut self, seq: u64) -> BoxResult<()> {
        link::stamp(&mut self.payload, seq);
        Ok(self.tx.send(&self.payload)?)
    }

    fn recv(&mut self) -> BoxResult<u64> {
        link::check(&self.rx.recv().map_err(gone)?, self.size)
    }

    fn send_ack(&mut self, n: u64) -> BoxResult<()> {
        Ok(self.tx.send(&n.to_le_bytes())?)
    }

    fn recv_ack(&mut self) -> BoxResult<u64> {
        link::ack_of(&self.rx.recv().map_err(gone)?)
    }
}

/// A message of the shared-memory row: a payload in a region, or an
/// acknowledgement.
#[derive(Serialize, Deserialize)]
enum Shm {
    Payload(IpcSharedMemory),
    Ack(u64),
}

/// The shared-memory row's end. `held` is the region that came in last:
/// the next message is written into it in place and sent on. An end with
/// none (the parent's first message; every message of the streaming phase,
/// where nothing comes back) makes a region with
/// `IpcSharedMemory::from_bytes`, ipc-channel's way to put bytes in one.
struct ShmLink {
    tx: IpcSender<Shm>,
    rx: IpcReceiver<Shm>,
    size: usize,
    template: Vec<u8>,
    held: Option<IpcSharedMemory>,
}

impl ShmLink {
    fn new((tx, rx): Bootstrap<IpcSender<Shm>, IpcReceiver<Shm>>, size: usize) -> Self {
        ShmLink { tx, rx, size, template: link::template(size), held: None }
    }

    fn recv_any(&mut self) -> BoxResult<Shm> {
        self.rx.recv().map_err(|e| gone(e).into())
    }
}

impl Link for ShmLink {
    fn send(&mut self, seq: u64) -> BoxResult<()> {
        let region = match self.held.take() {
            Some(mut region) => {
                // SAFETY: `deref_mut` requires one reader/writer of the data
                // at a time: the region is passed back and forth and only the
                // end holding it touches it (the other end dropped its
                // mapping when it sent it on), never cloned.
                let bytes = unsafe { region.deref_mut() };
                bytes.copy_from_slice(&self.template);
                link::stamp(bytes, seq);
                region
            }
            None => {
                link::stamp(&mut self.template, seq);
                IpcSharedMemory::from_bytes(&self.template)
            }
        };
        Ok(self.tx.send(Shm::Payload(region))?)
    }

    fn recv(&mut self) -> BoxResult<u64> {
        match self.recv_any()? {
            Shm::Payload(region) => {
                let seq = link::check(&region, self.size)?;
                self.held = Some(region);
                Ok(seq)
            }
            Shm::Ack(_) => Err("an acknowledgement arrived where a payload was due".into()),
        }
    }

    fn send_ack(&mut self, n: u64) -> BoxResult<()> {
        Ok(self.tx.send(Shm::Ack(n))?)
    }

    fn recv_ack(&mut self) -> BoxResult<u64> {
        match self.recv_any()? {
            Shm::Ack(n) => Ok(n),
            Shm::Payload(_) => Err("a payload arrived where an acknowledgement was due".into()),
        }
    }
}

/// A receive failed: the other end closed, died, or was killed by its watchdog.
fn gone(e: ipc_channel::IpcError) -> String {
    format!("ipc-channel receive failed (peer gone, or stuck and killed by its watchdog): {e}")
}

/// Starts the child and takes the channel ends it sends back.
fn connect<B: Serialize + DeserializeOwned + Send + 'static>(size: usize, kind: Kind) -> BoxResult<(Peer, B)> {
    let (server, name) = IpcOneShotServer::<B>::new()?;
    let peer = Peer::spawn(ROLE, &[size.to_string(), kind.arg().to_owned(), name])?;
    // `accept` has no timeout: wait for it on a thread, and give up (killing
    // the child) if the child never connects.
    let (done, accepted) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = done.send(server.accept().map_err(|e| e.to_string()));
    });
    match accepted.recv_timeout(TIMEOUT) {
        Ok(result) => Ok((peer, result?.1)),
        Err(_) => Err("the ipc-channel child never connected".into()),
    }
}

/// The echo phase, and the streaming one when `stream`, with a child
/// process (this binary as `--peer oneway-ipc-channel`).
pub fn rows(size: usize, kind: Kind, plan: &Plan, stream: bool) -> BoxResult<(Echoed, Option<Streamed>)> {
    let (peer, measured) = match kind {
        Kind::Bytes => {
            let (peer, ends) = connect(size, kind)?;
            let measured = link::phases(&mut BytesLink::new(ends, size), plan, size, peer.pid(), stream)?;
            (peer, measured)
        }
        Kind::SharedMemory => {
            let (peer, ends) = connect(size, kind)?;
            let measured = link::phases(&mut ShmLink::new(ends, size), plan, size, peer.pid(), stream)?;
            (peer, measured)
        }
    };
    peer.finish()?;
    Ok(measured)
}

/// The child: `SIZE KIND SERVER_NAME`.
pub fn run_child(args: &[String]) -> BoxResult<()> {
    let size: usize = link::arg(args, 0, "size")?;
    let kind: String = link::arg(args, 1, "kind")?;
    let name: String = link::arg(args, 2, "server name")?;
    let batch = link::window(size).1;
    if kind == Kind::Bytes.arg() {
        let (to_child, from_parent) = ipc::bytes_channel()?;
        let (to_parent, from_child) = ipc::bytes_channel()?;
        IpcSender::<Bootstrap<_, _>>::connect(name)?.send((to_child, from_child))?;
        link::serve(&mut BytesLink::new((to_parent, from_parent), size), batch)
    } else if kind == Kind::SharedMemory.arg() {
        let (to_child, from_parent) = ipc::channel()?;
        let (to_parent, from_child) = ipc::channel()?;
        IpcSender::<Bootstrap<_, _>>::connect(name)?.send((to_child, from_child))?;
        link::serve(&mut ShmLink::new((to_parent, from_parent), size), batch)
    } else {
        Err(format!("unknown ipc-channel row kind {kind}").into())
    }
}
