//! `--transport quic`: the QUIC client side of the bench. Connections share a
//! few `quinn` endpoints (one UDP socket per source address; quinn
//! multiplexes all connections of an endpoint on its socket), trust the
//! server's certificate by SHA-256 fingerprint (`--tls-fingerprint`) or by a
//! PEM file (`--tls-ca`), and carry the TCP framing on one bidirectional
//! stream, as the room's QUIC listener expects.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use parking_lot::Mutex;
use pushgate_client::Fingerprint;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// ALPN of pushgate's QUIC transport.
const ALPN: &[u8] = b"pushgate/1";

/// Kernel buffer asked for each client UDP socket, each direction (the
/// room asks for the same).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// QUIC options shared by the subcommands.
#[derive(Clone, Debug, Default, clap::Args)]
pub(crate) struct QuicArgs {
    /// QUIC (UDP) address of the room (with `--transport quic`).
    #[arg(long, default_value = "127.0.0.1:7702")]
    pub(crate) quic: String,
    /// Trust exactly the server certificate with this fingerprint
    /// (`sha256:<hex>`, as standalone prints it).
    #[arg(long)]
    pub(crate) tls_fingerprint: Option<String>,
    /// Trust the certificates of this PEM file (e.g. DATA/tls_cert.pem).
    #[arg(long)]
    pub(crate) tls_ca: Option<PathBuf>,
    /// SSE streams per HTTP/2 connection (with `--transport sse-h2`; the
    /// room's `--h2-max-streams` is 100 by default). 0 means 100.
    #[arg(long, default_value_t = 100)]
    pub(crate) h2_streams: usize,
}

/// Opens QUIC connections to one server.
pub(crate) struct Dialer {
    config: quinn::ClientConfig,
    server_name: String,
    /// One endpoint (UDP socket) per source address (`None`: the wildcard).
    endpoints: Mutex<HashMap<Option<IpAddr>, quinn::Endpoint>>,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// A dialer for the server named `server_name` (the host part of
    /// `--quic`; checked against the certificate with `--tls-ca` only).
    pub(crate) fn new(args: &QuicArgs, server_name: &str) -> anyhow::Result<Dialer> {
        let mut tls = tls_client_config(args, "quic")?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
            .context("quic tls configuration")?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // The bench's own heartbeats keep connections alive; the idle
        // timeout is the server's.
        transport.keep_alive_interval(None);
        transport.max_idle_timeout(None);
        config.transport_config(Arc::new(transport));
        Ok(Dialer {
            config,
            server_name: server_name.to_string(),
            endpoints: Mutex::new(HashMap::new()),
        })
    }

    /// The endpoint for `source` toward `remote`, created on first use.
    fn endpoint(
        &self,
        source: Option<IpAddr>,
        remote: SocketAddr,
    ) -> std::io::Result<quinn::Endpoint> {
        let mut map = self.endpoints.lock();
        if let Some(ep) = map.get(&source) {
            return Ok(ep.clone());
        }
        let ip = source.unwrap_or(if remote.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        });
        let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        // Bursts of handshakes overflow the default ~208 KiB receive
        // buffer; lost datagrams then wait for retransmission timers and
        // the ramp measures those. The kernel caps this at rmem_max.
        let sock = socket2::SockRef::from(&socket);
        sock.set_recv_buffer_size(SOCKET_BUFFER)?;
        sock.set_send_buffer_size(SOCKET_BUFFER)?;
        let ep = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        map.insert(source, ep.clone());
        Ok(ep)
    }

    /// Connects to `remote` (from `source` when given) and opens the stream.
    pub(crate) async fn connect(
        &self,
        remote: SocketAddr,
        source: Option<IpAddr>,
    ) -> Result<QuicStream, DialError> {
        let ep = self.endpoint(source, remote).map_err(DialError::Bind)?;
        let conn = ep
            .connect_with(self.config.clone(), remote, &self.server_name)
            .map_err(|e| DialError::Connect(e.to_string()))?
            .await
            .map_err(|e| DialError::Handshake(e.to_string()))?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| DialError::Handshake(format!("open stream: {e}")))?;
        Ok(QuicStream {
            conn,
            io: tokio::io::join(recv, send),
        })
    }
}

/// Why a QUIC connect failed.
#[derive(Debug)]
pub(crate) enum DialError {
    /// Binding the UDP socket failed.
    Bind(std::io::Error),
    /// The connect was refused before sending (bad address, endpoint closed).
    Connect(String),
    /// The QUIC/TLS handshake or opening the stream failed.
    Handshake(String),
}

/// An open QUIC connection and its one stream.
pub(crate) struct QuicStream {
    /// Kept so the connection lives as long as the stream, and for the close.
    pub(crate) conn: quinn::Connection,
    /// The stream, read and write halves joined.
    pub(crate) io: tokio::io::Join<quinn::RecvStream, quinn::SendStream>,
}

/// The TLS client configuration (TLS 1.3, ring) that trusts what
/// `--tls-fingerprint` or `--tls-ca` says, without ALPN (the caller sets
/// it); `transport` names the transport in the error when neither is given.
pub(crate) fn tls_client_config(
    args: &QuicArgs,
    transport: &str,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("tls 1.3 with the ring provider")?;
    let tls = match (&args.tls_fingerprint, &args.tls_ca) {
        (Some(fp), None) => {
            let pin =
                Fingerprint::parse(fp).map_err(|e| anyhow::anyhow!("--tls-fingerprint: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(pushgate_client::pin_verifier(pin, provider))
                .with_no_client_auth()
        }
        (None, Some(path)) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --tls-ca {}", path.display()))?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.with_context(|| format!("parsing --tls-ca {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("using --tls-ca {}", path.display()))?;
            }
            if roots.is_empty() {
                anyhow::bail!("--tls-ca {} holds no certificate", path.display());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (Some(_), Some(_)) => {
            anyhow::bail!("--tls-fingerprint and --tls-ca exclude each other")
        }
        (None, None) => anyhow::bail!(
            "--transport {transport} needs --tls-fingerprint sha256:<hex> or --tls-ca FILE \
             (standalone prints `tls fingerprint: ...`; its certificate is DATA/tls_cert.pem)"
        ),
    };
    Ok(tls)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[tokio::test]
    async fn trust_options() {
        let none = QuicArgs::default();
        assert!(Dialer::new(&none, "localhost").is_err());
        let pinned = QuicArgs {
            tls_fingerprint: Some(format!("sha256:{HEX}")),
            ..QuicArgs::default()
        };
        assert!(Dialer::new(&pinned, "localhost").is_ok());
        let both = QuicArgs {
            tls_ca: Some("/nonexistent.pem".into()),
            ..pinned
        };
        assert!(Dialer::new(&both, "localhost").is_err());
        let empty = tempfile::NamedTempFile::new().unwrap();
        let ca = QuicArgs {
            tls_ca: Some(empty.path().to_path_buf()),
            ..QuicArgs::default()
        };
        assert!(Dialer::new(&ca, "localhost").is_err());
    }
}
