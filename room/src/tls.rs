//! TLS for the client listeners: the certificate a room serves on wss://,
//! TLS-over-TCP and QUIC, swappable while running.
//!
//! Decisions:
//! - One [`TlsCerts`] per room holds the certificate chain and key behind a
//!   `rustls` certificate resolver. [`TlsCerts::reload`] swaps them: new
//!   handshakes get the new certificate, established connections keep
//!   theirs (a certificate only matters during the handshake). A file that
//!   does not load leaves the current certificate in place.
//! - The crypto provider is `ring`, named explicitly (never the process-wide
//!   default), so that another crate enabling `aws-lc-rs` cannot make the
//!   choice ambiguous.
//! - wss:// and TLS-over-TCP accept TLS 1.2 and 1.3. The WebSocket
//!   listener offers ALPN `h2` and `http/1.1` (in that order of preference):
//!   a browser that negotiates `h2` gets its server-sent event streams as
//!   HTTP/2 streams of one connection (`listen::ws::h2`); a client that
//!   offers no ALPN, or only `http/1.1` (every WebSocket client), gets
//!   HTTP/1.1. TLS-over-TCP negotiates no ALPN. QUIC is TLS 1.3 only and
//!   requires ALPN `pushgate/1`.
//! - Session resumption uses stateless tickets (no per-client state on the
//!   server). 0-RTT data is refused (`max_early_data_size` 0): the first
//!   frame of a session is `auth`, and an auth frame must never be
//!   replayable; see docs/PROTOCOL.md.
//! - Private keys: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) PEM. A key that does
//!   not match the certificate is refused at load time, with the file names.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

/// ALPN protocol id of pushgate over QUIC.
pub const ALPN_QUIC: &[u8] = b"pushgate/1";
/// ALPN protocol id of HTTP/2 over TLS (offered on the WebSocket listener).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1 (offered on the WebSocket listener).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// The certificate served by a room's TLS listeners (cheap to clone; every
/// clone is the same, and a reload through one is seen by all).
#[derive(Clone, Debug)]
pub struct TlsCerts {
    resolver: Arc<SwapResolver>,
    /// For TLS-over-TCP (no ALPN).
    stream: Arc<ServerConfig>,
    /// For the WebSocket listener: ALPN `h2` and `http/1.1`.
    ws: Arc<ServerConfig>,
    /// For QUIC (TLS 1.3, ALPN `pushgate/1`).
    quic: Arc<ServerConfig>,
}

/// Always answers with the current certificate.
#[derive(Debug)]
struct SwapResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SwapResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first) and its private key.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path, what: &str| {
        std::fs::read(p).map_err(|e| TlsError(format!("cannot read {what} {}: {e}", p.display())))
    };
    let cert_pem = read(cert, "tls certificate")?;
    let key_pem = read(key, "tls key")?;
    let names = (cert.display().to_string(), key.display().to_string());
    parse(&cert_pem, &key_pem, &names)
}

/// Parses a PEM certificate chain and key; `names` (certificate, key) say
/// where they came from in errors.
fn parse(
    cert_pem: &[u8],
    key_pem: &[u8],
    names: &(String, String),
) -> Result<CertifiedKey, TlsError> {
    let (cert, key) = names;
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("invalid PEM in {cert}: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "no certificate (-----BEGIN CERTIFICATE-----) in {cert}"
        )));
    }
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        TlsError(format!(
            "no usable private key (PKCS#8, PKCS#1 or SEC1 PEM) in {key}: {e}"
        ))
    })?;
    let ck = CertifiedKey::from_der(chain, der, &provider()).map_err(|e| {
        TlsError(format!(
            "tls key {key} does not fit certificate {cert}: {e}"
        ))
    })?;
    // `from_der` lets an undecidable comparison pass; ring always decides.
    ck.keys_match().map_err(|e| {
        TlsError(format!(
            "tls key {key} does not match certificate {cert}: {e}"
        ))
    })?;
    Ok(ck)
}

impl TlsCerts {
    /// Loads the PEM certificate chain `cert` (leaf first, then
    /// intermediates) and the PEM private key `key`.
    ///
    /// # Errors
    /// [`TlsError`] naming the file when either cannot be read or parsed, or
    /// when the key does not belong to the certificate.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsCerts, TlsError> {
        TlsCerts::new(load(cert, key)?)
    }

    /// Like [`TlsCerts::load`], from PEM text in memory (a certificate
    /// generated at start-up and never written).
    ///
    /// # Errors
    /// [`TlsError`] when either does not parse or they do not match.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsCerts, TlsError> {
        let names = ("certificate".to_owned(), "key".to_owned());
        TlsCerts::new(parse(cert_pem, key_pem, &names)?)
    }

    fn new(ck: CertifiedKey) -> Result<TlsCerts, TlsError> {
        let resolver = Arc::new(SwapResolver {
            current: RwLock::new(Arc::new(ck)),
        });
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError(format!("tls session tickets: {e}")))?;
        let build = |versions: &[&'static rustls::SupportedProtocolVersion]| {
            ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)
                .map(|b| {
                    let mut c = b
                        .with_no_client_auth()
                        .with_cert_resolver(resolver.clone() as Arc<dyn ResolvesServerCert>);
                    c.ticketer = Arc::clone(&ticketer);
                    // 0-RTT refused: see the module docs.
                    c.max_early_data_size = 0;
                    c
                })
                .map_err(|e| TlsError(format!("tls configuration: {e}")))
        };
        let stream = build(rustls::DEFAULT_VERSIONS)?;
        let mut ws = build(rustls::DEFAULT_VERSIONS)?;
        ws.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        let mut quic = build(&[&rustls::version::TLS13])?;
        quic.alpn_protocols = vec![ALPN_QUIC.to_vec()];
        Ok(TlsCerts {
            resolver,
            stream: Arc::new(stream),
            ws: Arc::new(ws),
            quic: Arc::new(quic),
        })
    }

    /// Loads `cert` and `key` again and serves them to new handshakes.
    /// Established connections are not touched.
    ///
    /// # Errors
    /// [`TlsError`] as for [`TlsCerts::load`]; the current certificate stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let ck = load(cert, key)?;
        *self.resolver.current.write() = Arc::new(ck);
        Ok(())
    }

    /// SHA-256 of the leaf certificate (DER), as `sha256:<64 hex digits>`:
    /// what a client that pins the certificate compares.
    pub fn fingerprint(&self) -> String {
        let ck = Arc::clone(&self.resolver.current.read());
        let leaf: &[u8] = ck.cert.first().map_or(&[], |c| c.as_ref());
        let digest = Sha256::digest(leaf);
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256:");
        for b in digest {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// The configuration of the TLS-over-TCP listener.
    pub(crate) fn stream_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.stream)
    }

    /// The configuration of the wss:// (and https:// server-sent events)
    /// listener: ALPN `h2`, then `http/1.1`.
    pub(crate) fn ws_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.ws)
    }

    /// The configuration of the QUIC listener.
    pub(crate) fn quic_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.quic)
    }
}

/// The server side of a TLS handshake, within `auth_timeout`; `None` when it
/// failed, timed out, or the room stopped.
pub(crate) async fn handshake(
    shared: Arc<crate::shared::Shared>,
    sock: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    tls: tokio_rustls::TlsAcceptor,
) -> Option<(
    Arc<crate::shared::Shared>,
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
)> {
    let deadline = tokio::time::Instant::now() + shared.cfg.auth_timeout;
    let stream = shared
        .handshake_step(peer, "tls", deadline, tls.accept(sock))
        .await?;
    Some((shared, stream))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Writes a fresh self-signed certificate and key into `dir`.
    fn write_cert(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn configs_refuse_0rtt_and_quic_needs_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_cert(dir.path(), "a");
        let certs = TlsCerts::load(&c, &k).unwrap();
        let stream = certs.stream_config();
        assert_eq!(stream.max_early_data_size, 0);
        assert!(stream.alpn_protocols.is_empty());
        let ws = certs.ws_config();
        assert_eq!(ws.max_early_data_size, 0);
        assert_eq!(
            ws.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let quic = certs.quic_config();
        assert_eq!(quic.max_early_data_size, 0, "0-RTT must stay refused");
        assert_eq!(quic.alpn_protocols, vec![ALPN_QUIC.to_vec()]);
        assert!(certs.fingerprint().starts_with("sha256:"));
        assert_eq!(certs.fingerprint().len(), 7 + 64);
    }

    #[test]
    fn reload_swaps_and_a_bad_file_keeps_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = write_cert(dir.path(), "a");
        let (c2, k2) = write_cert(dir.path(), "b");
        let certs = TlsCerts::load(&c1, &k1).unwrap();
        let fp1 = certs.fingerprint();
        let clone = certs.clone();
        certs.reload(&c2, &k2).unwrap();
        let fp2 = clone.fingerprint();
        assert_ne!(fp1, fp2, "every clone sees the reload");
        let e = certs.reload(&c1, &k2).unwrap_err().to_string();
        assert!(e.contains("b.key") && e.contains("a.crt"), "{e}");
        let bad = dir.path().join("bad.crt");
        std::fs::write(&bad, "not pem").unwrap();
        assert!(certs.reload(&bad, &k1).is_err());
        assert!(certs.reload(&dir.path().join("missing"), &k1).is_err());
        assert_eq!(certs.fingerprint(), fp2, "a failed reload changes nothing");
    }
}
