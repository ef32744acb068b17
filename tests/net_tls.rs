//! Sessions over zenoh's TLS transport on loopback, with the test-only
//! certificates of tests/data/tls (scripts/make-test-certs.sh): a frame
//! crosses an encrypted link, and a client that cannot verify the server,
//! or a server that cannot verify the client (mutual TLS), gets no link.
//!
//! Both sessions live in this process (what is tested is the link, not a
//! peer's death). Every wait is bounded: a refused `open` ends at its
//! connect timeout; no test asserts a duration.
#![cfg(feature = "net")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use shmpool::net::{NetError, Session, Tls};

const SECRET: &[u8] = b"shmpool net_tls test secret";

/// Generous bound on any single wait that should succeed: a hang guard,
/// not a timing claim.
const BOUND: Duration = Duration::from_secs(20);

/// The connect timeout of a client expected to be refused.
const REFUSED_WITHIN: Duration = Duration::from_secs(2);

fn file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls").join(name)
}

/// The test CA, and the server's certificate (localhost, 127.0.0.1).
fn server_tls() -> Tls {
    Tls::new(file("ca.pem")).identity(file("server.pem"), file("server.key"))
}

/// A key prefix of this test run alone.
fn base(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("shmpool-test/{test}/{}-{nanos}", std::process::id())
}

/// A session listening on `tls/HOST:PORT` for a free port: the port is found
/// by binding port 0, then released for zenoh; another process may take it
/// in between, so a few ports are tried.
fn listening_session(host: &str, tls: Tls) -> (Session, String) {
    let mut last = None;
    for _ in 0..5 {
        let port = TcpListener::bind((host, 0)).unwrap().local_addr().unwrap().port();
        let endpoint = format!("tls/{host}:{port}");
        match Session::builder().listen(&endpoint).tls(tls.clone()).secret(SECRET).open() {
            Ok(session) => return (session, endpoint),
            Err(e) => last = Some(e),
        }
    }
    panic!("no free port to listen on: {last:?}");
}

/// Opens a client of `endpoint` that the server is expected to refuse, or
/// that is expected to refuse the server, and returns its error.
fn refused(endpoint: &str, tls: Tls) -> NetError {
    let opened = Session::builder().connect(endpoint).tls(tls).secret(SECRET).connect_timeout(REFUSED_WITHIN).open();
    match opened {
        Ok(session) => panic!("connected to {endpoint}: peers {:?}", session.peers()),
        Err(e) => e,
    }
}

/// `client` subscribes, `server` publishes: one sealed frame crosses.
fn exchange(server: &Session, client: &Session, test: &str) {
    let key = format!("{}/frames", base(test));
    let sub = client.subscribe(&key).unwrap();
    let publisher = server.publisher(&key).unwrap();
    publisher.wait_matched(BOUND).expect("the client's subscription reaches the server");
    publisher.publish(b"over TLS").unwrap();
    let frame = sub.recv_timeout(BOUND).expect("the frame");
    assert_eq!((frame.key(), frame.payload()), (key.as_str(), &b"over TLS"[..]));
    assert_eq!(frame.sender(), server.sender());
    assert_eq!(sub.dropped(), 0);
}

#[test]
fn two_sessions_exchange_a_frame_over_tls() {
    let (server, endpoint) = listening_session("127.0.0.1", server_tls());
    let client = Session::builder()
        .connect(&endpoint)
        .tls(Tls::new(file("ca.pem")))
        .secret(SECRET)
        .connect_timeout(BOUND)
        .open()
        .expect("a client trusting the test CA connects");
    assert_eq!(client.peers(), vec![server.id()]);
    exchange(&server, &client, "tls");
}

#[test]
fn a_client_trusting_another_ca_cannot_connect() {
    let (server, endpoint) = listening_session("127.0.0.1", server_tls());
    let err = refused(&endpoint, Tls::new(file("other-ca.pem")));
    assert!(matches!(err, NetError::Open(_)), "{err:?}");
    assert!(server.peers().is_empty(), "{:?}", server.peers());
}

#[test]
fn a_server_whose_certificate_does_not_name_the_endpoint_is_refused() {
    // 127.0.0.2 is loopback too, but the certificate names only localhost
    // and 127.0.0.1.
    let (server, endpoint) = listening_session("127.0.0.2", server_tls());
    let err = refused(&endpoint, Tls::new(file("ca.pem")));
    assert!(matches!(err, NetError::Open(_)), "{err:?}");
    assert!(server.peers().is_empty(), "{:?}", server.peers());
}

#[test]
fn mutual_tls_admits_only_clients_with_a_certificate_of_the_ca() {
    let (server, endpoint) = listening_session("127.0.0.1", server_tls().mutual());

    let without_certificate = refused(&endpoint, Tls::new(file("ca.pem")));
    assert!(matches!(without_certificate, NetError::Open(_)), "{without_certificate:?}");
    let other_ca = Tls::new(file("ca.pem")).identity(file("other-client.pem"), file("other-client.key")).mutual();
    let with_another_cas = refused(&endpoint, other_ca);
    assert!(matches!(with_another_cas, NetError::Open(_)), "{with_another_cas:?}");
    assert!(server.peers().is_empty(), "{:?}", server.peers());

    let client = Session::builder()
        .connect(&endpoint)
        .tls(Tls::new(file("ca.pem")).identity(file("client.pem"), file("client.key")).mutual())
        .secret(SECRET)
        .connect_timeout(BOUND)
        .open()
        .expect("a client with a certificate of the test CA connects");
    assert_eq!(client.peers(), vec![server.id()]);
    exchange(&server, &client, "mtls");
}

#[test]
fn open_refuses_missing_files_and_tls_endpoints_without_tls() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("tls/127.0.0.1:{port}");

    let missing = Tls::new(file("ca.pem")).identity(file("server.pem"), file("no-such.key"));
    let err = Session::builder().listen(&endpoint).tls(missing).secret(SECRET).open().unwrap_err();
    assert!(
        matches!(&err, NetError::TlsFile { what: "private key", path, .. } if path == &file("no-such.key")),
        "{err:?}"
    );
    let not_pem = Tls::new(file("README.md"));
    let err = Session::builder().connect(&endpoint).tls(not_pem).secret(SECRET).open().unwrap_err();
    assert!(matches!(err, NetError::TlsFile { what: "root CA certificate", .. }), "{err:?}");

    let err = Session::builder().connect(&endpoint).secret(SECRET).open().unwrap_err();
    assert!(matches!(err, NetError::Config(_)), "{err:?}");
    let err = Session::builder().listen(&endpoint).tls(Tls::new(file("ca.pem"))).secret(SECRET).open().unwrap_err();
    assert!(matches!(err, NetError::Config(_)), "listening without a certificate: {err:?}");
}
