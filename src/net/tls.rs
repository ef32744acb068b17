//! TLS for a session's `tls/` endpoints: which CA it trusts, which
//! certificate it shows, and whether it demands one from its peers; mapped
//! onto zenoh's `transport/link/tls` configuration.
//!
//! zenoh reads the files each time it opens a link (so a certificate
//! replaced on disk is used by the next connection); `open` reads them once
//! first, so that a missing or unreadable file is a typed error there and not
//! a connection that never comes.

use std::path::{Path, PathBuf};

use super::NetError;

/// The TLS files of a session: the CA that signs the deployment's
/// certificates and, for a session that listens on a `tls/` endpoint or
/// takes part in mutual TLS, this host's certificate and key. All PEM files
/// (keys: PKCS#8, PKCS#1 RSA or SEC1 EC).
///
/// Mutual TLS, where each host has a certificate of the deployment's CA
/// (host A's names `hostA`):
///
/// ```no_run
/// use shmpool::net::{Session, Tls};
/// # fn main() -> Result<(), shmpool::net::NetError> {
/// let a = Session::builder()
///     .listen("tls/0.0.0.0:7447")
///     .tls(Tls::new("ca.pem").identity("hostA.pem", "hostA.key").mutual())
///     .secret(b"k")
///     .open()?;
/// // On host B:
/// let b = Session::builder()
///     .connect("tls/hostA:7447")
///     .tls(Tls::new("ca.pem").identity("hostB.pem", "hostB.key").mutual())
///     .secret(b"k")
///     .open()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    root_ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    mutual: bool,
}

impl Tls {
    /// Trusts the CA certificate(s) in `root_ca` to sign the certificates of
    /// the servers this session connects to (and, with
    /// [`mutual`](Self::mutual), of the clients that connect to it).
    ///
    /// zenoh's client also trusts the public Web PKI roots it ships with: a
    /// server holding a publicly issued certificate for the name being
    /// connected to is accepted too.
    pub fn new(root_ca: impl Into<PathBuf>) -> Tls {
        Tls { root_ca: root_ca.into(), identity: None, mutual: false }
    }

    /// This host's certificate chain (`cert`, leaf first) and its private
    /// key: shown to clients when listening on a `tls/` endpoint, and to
    /// servers under [`mutual`](Self::mutual) TLS. Required for either.
    pub fn identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Tls {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Mutual TLS: a client must show a certificate signed by the root CA,
    /// or the server ends the connection; and this session shows its own
    /// [`identity`](Self::identity) when it connects. Set it on every host of
    /// the deployment (a client without it shows no certificate).
    pub fn mutual(mut self) -> Tls {
        self.mutual = true;
        self
    }

    /// zenoh's configuration entries (key, JSON5 value) for these files,
    /// after checking that each is readable and holds a PEM block.
    /// `listens` says whether the session listens on a `tls/` endpoint.
    pub(crate) fn settings(&self, listens: bool) -> Result<Vec<(&'static str, String)>, NetError> {
        if self.identity.is_none() && listens {
            return Err(NetError::Config("listening on a tls/ endpoint needs Tls::identity (a certificate and key)"));
        }
        if self.identity.is_none() && self.mutual {
            return Err(NetError::Config("mutual TLS needs Tls::identity: every host shows a certificate"));
        }
        let mut settings = vec![
            ("transport/link/tls/root_ca_certificate", pem_file("root CA certificate", &self.root_ca)?),
            ("transport/link/tls/enable_mtls", self.mutual.to_string()),
            // zenoh's default, pinned: the server's certificate must name
            // the host or address the endpoint names.
            ("transport/link/tls/verify_name_on_connect", "true".into()),
        ];
        if let Some((cert, key)) = &self.identity {
            let cert = pem_file("certificate", cert)?;
            let key = pem_file("private key", key)?;
            settings.extend([
                ("transport/link/tls/listen_certificate", cert.clone()),
                ("transport/link/tls/listen_private_key", key.clone()),
                ("transport/link/tls/connect_certificate", cert),
                ("transport/link/tls/connect_private_key", key),
            ]);
        }
        Ok(settings)
    }
}

/// `path`, made absolute (zenoh reads it later, maybe after a change of
/// directory) and quoted for JSON5, once it was read and found to hold a
/// PEM block.
fn pem_file(what: &'static str, path: &Path) -> Result<String, NetError> {
    let bad = |reason: String| NetError::TlsFile { what, path: path.to_owned(), reason };
    let absolute = std::path::absolute(path).map_err(|e| bad(e.to_string()))?;
    let text = absolute.to_str().ok_or_else(|| bad("the path is not UTF-8 (zenoh takes paths as strings)".into()))?;
    let bytes = std::fs::read(&absolute).map_err(|e| bad(e.to_string()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(bad("not a PEM file (no -----BEGIN line)".into()));
    }
    Ok(json_string(text))
}

/// `s` as a JSON string literal (valid JSON5).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(json_string(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
        assert_eq!(json_string("x\ny\u{7f}"), r#""x\u000ay\u007f""#);
    }

    #[test]
    fn a_missing_file_is_a_typed_error() {
        let err = Tls::new("/nonexistent/shmpool/ca.pem").settings(false).unwrap_err();
        assert!(matches!(err, NetError::TlsFile { what: "root CA certificate", .. }), "{err:?}");
    }

    #[test]
    fn listening_or_mutual_needs_an_identity() {
        let tls = Tls::new("ca.pem");
        assert!(matches!(tls.settings(true), Err(NetError::Config(_))));
        assert!(matches!(tls.clone().mutual().settings(false), Err(NetError::Config(_))));
    }
}
