//! The pipe and Unix-socket peers: this binary re-executed with `--peer pipe`,
//! `--peer unix` or `--peer sink BYTES`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{check_reply, square, BoxResult, Run};
use crate::process::Reaped;

/// Hidden first argument that turns this binary into a peer.
pub const PEER_FLAG: &str = "--peer";
/// Peer kind (after [`PEER_FLAG`]) of the pipe copies of the hand-off rows.
pub const SINK: &str = "sink";
/// Size of one request or reply on the pipe and socket baselines.
const MESSAGE: usize = 8;
/// Size of the read buffers of the peers and of the parent's reply readers.
const READ_BUFFER: usize = 64 * 1024;
/// How long a peer may take to exit once its input is closed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the parent talks to a peer child process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Requests on the child's stdin pipe, replies on its stdout pipe.
    Pipe,
    /// One Unix stream socket, the child's end passed as its stdin.
    Unix,
}

impl Transport {
    pub fn arg(self) -> &'static str {
        match self {
            Transport::Pipe => "pipe",
            Transport::Unix => "unix",
        }
    }

    fn from_arg(arg: &str) -> Option<Self> {
        [Transport::Pipe, Transport::Unix].into_iter().find(|transport| transport.arg() == arg)
    }

    pub fn label(self) -> &'static str {
        match self {
            Transport::Pipe => "pipe, child process",
            Transport::Unix => "unix socket, child process",
        }
    }
}

/// A child process running [`run_peer`], seen from the parent.
pub struct Peer {
    child: Reaped,
    reader: Box<dyn Read + Send>,
    writer: Box<dyn Write + Send>,
}

impl Peer {
    pub fn spawn(transport: Transport) -> io::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args([PEER_FLAG, transport.arg()]);
        match transport {
            Transport::Pipe => {
                let mut child = Reaped::spawn(command.stdin(Stdio::piped()).stdout(Stdio::piped()), transport.label())?;
                let (Some(stdin), (Some(stdout), _)) = (child.take_stdin(), child.take_output()) else {
                    return Err(io::Error::other("child pipes missing"));
                };
                Ok(Peer { child, reader: Box::new(stdout), writer: Box::new(stdin) })
            }
            Transport::Unix => {
                let (ours, theirs) = UnixStream::pair()?;
                let child = Reaped::spawn(command.stdin(Stdio::from(OwnedFd::from(theirs))), transport.label())?;
                // The command holds our copy of the child's end; close it.
                drop(command);
                Ok(Peer { child, writer: Box::new(ours.try_clone()?), reader: Box::new(ours) })
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one request and waits for its reply.
    pub fn round_trip(&mut self, request: u64) -> io::Result<()> {
        self.writer.write_all(&request.to_le_bytes())?;
        let mut reply = [0; MESSAGE];
        self.reader.read_exact(&mut reply)?;
        check_reply(request, u64::from_le_bytes(reply))
    }

    /// Streams the requests `0..tasks`, `batch` per write, while a second
    /// thread reads the replies.
    pub fn stream(&mut self, tasks: u64, batch: usize) -> io::Result<Run> {
        let start = Instant::now();
        let replies = thread::scope(|s| {
            let reader = s.spawn(|| read_replies(&mut self.reader, tasks));
            let written = write_requests(&mut self.writer, tasks, batch);
            let replies = reader.join().map_err(|_| io::Error::other("reply reader panicked"))?;
            written.and(replies)
        })?;
        Ok((start.elapsed(), replies))
    }

    /// Closes the connection, which ends the child, and checks its exit.
    pub fn finish(self) -> BoxResult<()> {
        let Peer { child, reader, writer } = self;
        // Both ends must go: with a socket, they are the same connection.
        drop((reader, writer));
        child.finish(EXIT_TIMEOUT)
    }
}

fn write_requests(writer: &mut impl Write, tasks: u64, batch: usize) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(batch * MESSAGE);
    let mut next = 0;
    while next < tasks {
        let end = tasks.min(next + batch as u64);
        buffer.clear();
        (next..end).for_each(|x| buffer.extend_from_slice(&x.to_le_bytes()));
        writer.write_all(&buffer)?;
        next = end;
    }
    Ok(())
}

fn read_replies(reader: impl Read, tasks: u64) -> io::Result<Vec<u64>> {
    let mut words = WordReader::new(reader);
    let mut replies = Vec::with_capacity(tasks as usize);
    while (replies.len() as u64) < tasks {
        if words.read_words(&mut replies)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection early"));
        }
    }
    Ok(replies)
}

/// Entry point of a peer child: squares 8-byte requests from stdin until it
/// closes. Replies go to stdout (pipe) or back over stdin (socket).
pub fn run_peer(transport: Option<&str>) -> BoxResult<()> {
    let transport = transport.and_then(Transport::from_arg).ok_or("usage: shmpool-bench --peer pipe|unix")?;
    let stdin = io::stdin().as_fd().try_clone_to_owned()?;
    match transport {
        Transport::Pipe => {
            let stdout = io::stdout().as_fd().try_clone_to_owned()?;
            serve_squares(File::from(stdin), File::from(stdout))?;
        }
        Transport::Unix => {
            let socket = UnixStream::from(stdin);
            serve_squares(&socket, &socket)?;
        }
    }
    Ok(())
}

/// Answers every complete request read so far with one write.
fn serve_squares(reader: impl Read, mut writer: impl Write) -> io::Result<()> {
    let mut words = WordReader::new(reader);
    let mut requests = Vec::new();
    let mut replies = Vec::new();
    while words.read_words(&mut requests)? > 0 {
        replies.clear();
        for x in requests.drain(..) {
            replies.extend_from_slice(&square(x).to_le_bytes());
        }
        writer.write_all(&replies)?;
    }
    Ok(())
}

/// Cuts a byte stream into 8-byte little-endian words, whatever sizes the
/// reads come in.
struct WordReader<R> {
    inner: R,
    buffer: Box<[u8]>,
    /// Bytes of an incomplete word at the start of `buffer`.
    partial: usize,
}

impl<R: Read> WordReader<R> {
    fn new(inner: R) -> Self {
        WordReader { inner, buffer: vec![0; READ_BUFFER].into_boxed_slice(), partial: 0 }
    }

    /// Reads until at least one more word is complete and appends all complete
    /// words to `out`. Returns how many were appended: 0 at a clean end of
    /// stream.
    fn read_words(&mut self, out: &mut Vec<u64>) -> io::Result<usize> {
        loop {
            let read = match self.inner.read(&mut self.buffer[self.partial..]) {
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if read == 0 {
                return match self.partial {
                    0 => Ok(0),
                    _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended inside a message")),
                };
            }
            let filled = self.partial + read;
            let complete = filled / MESSAGE;
            out.extend(self.buffer[..complete * MESSAGE].chunks_exact(MESSAGE).map(decode_word));
            self.buffer.copy_within(complete * MESSAGE..filled, 0);
            self.partial = filled - complete * MESSAGE;
            if complete > 0 {
                return Ok(complete);
            }
        }
    }
}

/// Decodes one little-endian request or reply.
fn decode_word(bytes: &[u8]) -> u64 {
    let mut word = [0; MESSAGE];
    word.copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// A `--peer sink` child: reads messages of a fixed size from its stdin pipe
/// and answers each with its last byte on its stdout pipe.
pub struct Sink {
    child: Reaped,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Sink {
    pub fn spawn(bytes: usize) -> io::Result<Sink> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args([PEER_FLAG, SINK, &bytes.to_string()]).stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = Reaped::spawn(&mut command, "pipe sink")?;
        let (Some(stdin), (Some(stdout), _)) = (child.take_stdin(), child.take_output()) else {
            return Err(io::Error::other("child pipes missing"));
        };
        Ok(Sink { child, stdin, stdout })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Copies `message` through the pipe and waits for the one-byte reply.
    pub fn round_trip(&mut self, message: &[u8]) -> io::Result<()> {
        self.stdin.write_all(message)?;
        let mut reply = [0];
        self.stdout.read_exact(&mut reply)?;
        match message.last() {
            Some(&last) if last != reply[0] => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("sink replied {:#x}, the message ended with {last:#x}", reply[0]),
            )),
            _ => Ok(()),
        }
    }

    pub fn finish(self) -> BoxResult<()> {
        let Sink { child, stdin, stdout } = self;
        drop((stdin, stdout));
        child.finish(EXIT_TIMEOUT)
    }
}

/// Entry point of a sink child: reads messages of `bytes` bytes from stdin
/// until it closes, answering each with its last byte.
pub fn run_sink(bytes: Option<&str>) -> BoxResult<()> {
    let bytes: usize = bytes.ok_or("usage: shmpool-bench --peer sink BYTES")?.parse()?;
    let mut stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let mut stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let mut buffer = vec![0u8; bytes.clamp(1, READ_BUFFER * 16)];
    loop {
        let mut left = bytes;
        let mut last = 0;
        while left > 0 {
            let want = left.min(buffer.len());
            let read = match stdin.read(&mut buffer[..want]) {
                Ok(0) if left == bytes => return Ok(()),
                Ok(0) => return Err("stream ended inside a message".into()),
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error.into()),
            };
            last = buffer[read - 1];
            left -= read;
        }
        stdout.write_all(&[last])?;
    }
}
