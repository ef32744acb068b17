//! Loopback sessions for the network tests (feature `net`).

#![allow(dead_code)]

use shmpool::net::Session;

/// A TCP port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh loopback endpoint.
pub fn endpoint() -> String {
    format!("tcp/127.0.0.1:{}", free_port())
}

/// Two sessions under `secret`, one listening and one connected to it (two
/// "hosts" in this process), and the endpoint.
pub fn pair(secret: &[u8]) -> (Session, Session, String) {
    let ep = endpoint();
    let home = Session::builder().listen(&ep).secret(secret).open().unwrap();
    let away = Session::builder().connect(&ep).secret(secret).open().unwrap();
    (home, away, ep)
}
