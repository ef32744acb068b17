//! The ipc-channel rows: raw byte channels (`IpcBytesSender`, no serde),
//! bootstrapped through an `IpcOneShotServer` whose name the child gets on
//! its command line.

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};

use super::link::{self, Echoed, Link, Peer, Plan, Streamed, TIMEOUT};
use crate::common::BoxResult;

pub const ROLE: &str = "oneway-ipc-channel";

/// What the child sends through the one-shot server: the parent's sender
/// (to the child) and the parent's receiver (from the child).
type Bootstrap = (IpcBytesSender, IpcBytesReceiver);

/// One end. A receive blocks in the kernel: it fails once the other end is
/// gone (every sender closed), and the child's watchdog bounds the rest.
struct IpcLink {
    tx: IpcBytesSender,
    rx: IpcBytesReceiver,
    size: usize,
    payload: Vec<u8>,
}

impl IpcLink {
    fn new((tx, rx): Bootstrap, size: usize) -> Self {
        IpcLink { tx, rx, size, payload: link::template(size) }
    }
}

impl Link for IpcLink {
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

/// A receive failed: the other end closed, died, or was killed by its watchdog.
fn gone(e: ipc_channel::IpcError) -> String {
    format!("ipc-channel receive failed (peer gone, or stuck and killed by its watchdog): {e}")
}

/// Both phases with a child process (this binary as `--peer oneway-ipc-channel`).
pub fn rows(size: usize, plan: &Plan) -> BoxResult<(Echoed, Streamed)> {
    let (server, name) = IpcOneShotServer::<Bootstrap>::new()?;
    let peer = Peer::spawn(ROLE, &[size.to_string(), name])?;
    // `accept` has no timeout: wait for it on a thread, and give up (killing
    // the child) if the child never connects.
    let (done, accepted) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = done.send(server.accept().map_err(|e| e.to_string()));
    });
    let (_, ends) = match accepted.recv_timeout(TIMEOUT) {
        Ok(result) => result?,
        Err(_) => return Err("the ipc-channel child never connected".into()),
    };
    let pids = [0, peer.pid()];
    let mut link = IpcLink::new(ends, size);
    let latency = link::ping_pong(&mut link, plan, &pids)?;
    let rate = link::stream(&mut link, plan, size, &pids)?;
    peer.finish()?;
    Ok((latency, rate))
}

/// The child: `SIZE SERVER_NAME`.
pub fn run_child(args: &[String]) -> BoxResult<()> {
    let size: usize = link::arg(args, 0, "size")?;
    let name: String = link::arg(args, 1, "server name")?;
    let (to_child, from_parent) = ipc::bytes_channel()?;
    let (to_parent, from_child) = ipc::bytes_channel()?;
    IpcSender::<Bootstrap>::connect(name)?.send((to_child, from_child))?;
    let mut link = IpcLink::new((to_parent, from_parent), size);
    link::serve(&mut link, link::window(size).1)
}
