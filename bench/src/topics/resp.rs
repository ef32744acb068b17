//! Just enough of Redis for the queue rows: a `redis-server` of our own on
//! a free loopback port, and a client that speaks RESP (the Redis wire
//! format) over a `TcpStream`. Four commands are used (XGROUP, XADD,
//! XREADGROUP, XACK), so a dozen lines of encoding and decoding stand in
//! for a client crate and its dependency tree.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::BoxResult;
use crate::process::Reaped;

/// A RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Int(i64),
    /// A bulk string (`None`: the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// An array (`None`: the null array, e.g. a blocking read that timed out).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn bulk(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }

    pub fn array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(Some(a)) => Some(a),
            _ => None,
        }
    }
}

/// One connection. Commands are queued with [`Client::queue`] and sent
/// together by [`Client::flush`] (pipelining), or sent one by one with
/// [`Client::call`].
pub struct Client {
    reader: BufReader<TcpStream>,
    out: Vec<u8>,
}

impl Client {
    pub fn connect(port: u16) -> BoxResult<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client { reader: BufReader::new(stream), out: Vec::new() })
    }

    /// Appends a command to the output buffer.
    pub fn queue(&mut self, args: &[&[u8]]) {
        self.out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            self.out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            self.out.extend_from_slice(arg);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    /// Sends every queued command.
    pub fn flush(&mut self) -> BoxResult<()> {
        self.reader.get_mut().write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Reads one reply; a Redis error is an error.
    pub fn read(&mut self) -> BoxResult<Reply> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.len() < 3 || !line.ends_with(b"\r\n") {
            return Err("redis: connection closed or a malformed reply".into());
        }
        let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        let number = || text.parse::<i64>().map_err(|_| format!("redis: bad length or integer {text:?}"));
        Ok(match line[0] {
            b'+' => Reply::Simple(text),
            b'-' => return Err(format!("redis: {text}").into()),
            b':' => Reply::Int(number()?),
            b'$' => match number()? {
                n if n < 0 => Reply::Bulk(None),
                n => {
                    let mut bytes = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut bytes)?;
                    bytes.truncate(n as usize);
                    Reply::Bulk(Some(bytes))
                }
            },
            b'*' => match number()? {
                n if n < 0 => Reply::Array(None),
                n => Reply::Array(Some((0..n).map(|_| self.read()).collect::<BoxResult<_>>()?)),
            },
            other => return Err(format!("redis: unknown reply type {:?}", other as char).into()),
        })
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> BoxResult<Reply> {
        self.queue(args);
        self.flush()?;
        self.read()
    }
}

/// A `redis-server` of this run, killed and reaped when dropped.
pub struct Server {
    pub port: u16,
    child: Reaped,
}

impl Server {
    /// Starts `redis-server` on a free loopback port, without persistence;
    /// `None` when it is not installed.
    pub fn start() -> BoxResult<Option<Server>> {
        if !installed() {
            return Ok(None);
        }
        // A port the kernel says is free now (it may be taken again before
        // the server binds it: then the server fails and so does this).
        let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "yes", "--loglevel", "warning", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut child = Reaped::spawn(&mut command, "redis-server")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.has_exited()? {
                return Err(format!("redis-server exited at start ({status})").into());
            }
            if let Ok(mut client) = Client::connect(port) {
                if client.call(&[b"PING"]).is_ok() {
                    return Ok(Some(Server { port, child }));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server did not answer on port {port} within 10 s").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Whether `redis-server` is on the PATH.
fn installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("redis-server").is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replies of every type are read back from a canned byte stream.
    #[test]
    fn replies_decode() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bound");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accepted");
            let mut buf = [0u8; 256];
            let n = conn.read(&mut buf).expect("read");
            assert_eq!(&buf[..n], b"*2\r\n$4\r\nXACK\r\n$1\r\nk\r\n");
            conn.write_all(b"*3\r\n:7\r\n$2\r\nab\r\n*-1\r\n+OK\r\n-ERR no\r\n").expect("written");
        });
        let mut client = Client::connect(port).expect("connected");
        let reply = client.call(&[b"XACK", b"k"]).expect("a reply");
        let items = reply.array().expect("an array");
        assert_eq!(items[0], Reply::Int(7));
        assert_eq!(items[1].bulk(), Some(&b"ab"[..]));
        assert_eq!(items[2], Reply::Array(None));
        assert_eq!(client.read().expect("simple"), Reply::Simple("OK".into()));
        assert!(client.read().is_err_and(|e| e.to_string().contains("ERR no")));
        server.join().expect("server thread");
    }
}
