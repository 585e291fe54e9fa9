//! The QUIC transport: one `quinn` endpoint per client, kept across
//! reconnects (so a rebound socket stays rebound, and TLS sessions resume),
//! and one bidirectional stream per connection carrying the same
//! length-prefixed binary frames as TCP.
//!
//! Connection migration: [`Client::rebind`](crate::Client::rebind) moves the
//! endpoint to a new UDP socket (`Endpoint::rebind`); the connection follows
//! and the session goes on with no reconnect and no new `auth`.
//!
//! The client never sends 0-RTT data: the first frame is `auth`, and a
//! replayable `auth` is exactly what must not happen.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::io::Io;
use crate::url::ServerUrl;

/// The client's QUIC endpoint (shared with the [`Client`](crate::Client)
/// handle for rebinding) and the configuration of its connections.
#[derive(Clone)]
pub(crate) struct QuicEndpoints {
    config: quinn::ClientConfig,
    endpoint: Arc<Mutex<Option<quinn::Endpoint>>>,
}

impl QuicEndpoints {
    /// Connections made with `tls` (ALPN `pushgate/1`, TLS 1.3), sending a QUIC
    /// keep-alive every `keep_alive` (None: never). The idle timeout is left to
    /// the server, which sets it from its heartbeat.
    pub(crate) fn new(
        tls: Arc<rustls::ClientConfig>,
        keep_alive: Option<Duration>,
        endpoint: Arc<Mutex<Option<quinn::Endpoint>>>,
    ) -> Result<QuicEndpoints, String> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| format!("quic tls configuration: {e}"))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(keep_alive);
        transport.max_idle_timeout(None);
        config.transport_config(Arc::new(transport));
        Ok(QuicEndpoints { config, endpoint })
    }

    /// Connects to `url` and opens the stream.
    pub(crate) async fn connect(
        &self,
        url: &ServerUrl,
    ) -> Result<(quinn::Connection, Box<dyn Io>), String> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.host(), url.port()))
            .await
            .map_err(|e| format!("resolve {}: {e}", url.authority()))?
            .collect();
        let current_v4 = self
            .current()
            .and_then(|e| e.local_addr().ok())
            .map(|a| a.is_ipv4());
        let remote = addrs
            .iter()
            .find(|a| Some(a.is_ipv4()) == current_v4)
            .or(addrs.first())
            .copied()
            .ok_or_else(|| format!("resolve {}: no address", url.authority()))?;
        let endpoint = self.endpoint_for(remote)?;
        let conn = endpoint
            .connect_with(self.config.clone(), remote, url.host())
            .map_err(|e| format!("quic connect {}: {e}", url.authority()))?
            .await
            .map_err(|e| format!("quic handshake with {}: {e}", url.authority()))?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("quic open stream to {}: {e}", url.authority()))?;
        Ok((conn, Box::new(tokio::io::join(recv, send))))
    }

    fn current(&self) -> Option<quinn::Endpoint> {
        self.endpoint.lock().clone()
    }

    /// The endpoint to reach `remote`: the current one when it has the same
    /// address family, else a new one bound to the wildcard address.
    fn endpoint_for(&self, remote: SocketAddr) -> Result<quinn::Endpoint, String> {
        let mut slot = self.endpoint.lock();
        if let Some(ep) = slot.as_ref() {
            if ep
                .local_addr()
                .is_ok_and(|l| l.is_ipv4() == remote.is_ipv4())
            {
                return Ok(ep.clone());
            }
        }
        let bind: SocketAddr = if remote.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let ep = quinn::Endpoint::client(bind).map_err(|e| format!("quic bind {bind}: {e}"))?;
        *slot = Some(ep.clone());
        Ok(ep)
    }
}
