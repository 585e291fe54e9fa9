//! A room with its client listeners: [`RoomNode::start`] binds and serves
//! WebSocket, TCP and (optionally) QUIC, and [`RoomNode::drain`] stops
//! accepting, closes clients with 4007 and waits for the listeners to end.
//! Standalone and `pushgate room` both run their room through it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use room::{Listener, QuicListener, Room};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::tls::{Reloader, RoomTls};

/// Longest wait after the drain for QUIC close frames to reach clients.
const QUIC_CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for the listeners' tasks once the drain is over.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Where a room's client listeners bind.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Listen {
    /// WebSocket.
    pub(crate) ws: SocketAddr,
    /// TCP.
    pub(crate) tcp: SocketAddr,
    /// QUIC (UDP), when served.
    pub(crate) quic: Option<SocketAddr>,
}

/// A room serving its client listeners.
pub(crate) struct RoomNode {
    room: Room,
    stop: CancellationToken,
    serving: Vec<JoinHandle<()>>,
    quic: Option<QuicListener>,
    reload: Option<JoinHandle<()>>,
    lines: Vec<String>,
    fingerprint: Option<String>,
}

impl RoomNode {
    /// Binds every listener of `listen` (with the process's backlog), then
    /// serves them. QUIC needs a certificate in `tls`.
    ///
    /// # Errors
    /// A listener that cannot be bound, or QUIC without a certificate.
    pub(crate) fn start(room: Room, listen: Listen, tls: RoomTls) -> anyhow::Result<RoomNode> {
        let backlog = crate::net::settings().backlog;
        let ws = crate::net::bind(listen.ws, backlog)
            .with_context(|| format!("bind websocket listener {}", listen.ws))?;
        let tcp = crate::net::bind(listen.tcp, backlog)
            .with_context(|| format!("bind tcp listener {}", listen.tcp))?;
        let quic = match (listen.quic, &tls.certs) {
            (None, _) => None,
            (Some(addr), Some(certs)) => Some(
                QuicListener::bind(addr, certs, room.config())
                    .with_context(|| format!("bind quic listener {addr} (udp)"))?,
            ),
            (Some(addr), None) => anyhow::bail!("quic listener {addr} needs a tls certificate"),
        };
        let mut lines = vec![
            format!("ws listening on {}", ws.local_addr()?),
            format!("tcp listening on {}", tcp.local_addr()?),
        ];
        if let Some(q) = &quic {
            lines.push(format!("quic listening on {}", q.local_addr()?));
        }
        let stream_certs = tls.stream_certs();
        let mut listeners = vec![
            Listener::Ws(ws, stream_certs.clone()),
            Listener::Tcp(tcp, stream_certs),
        ];
        listeners.extend(quic.clone().map(Listener::Quic));
        let stop = CancellationToken::new();
        let serving = listeners
            .into_iter()
            .map(|l| {
                let (room, stop) = (room.clone(), stop.clone());
                tokio::spawn(async move { room.serve(l, stop).await })
            })
            .collect();
        Ok(RoomNode {
            fingerprint: tls.certs.as_ref().map(room::TlsCerts::fingerprint),
            reload: tls.reloader.map(Reloader::spawn),
            room,
            stop,
            serving,
            quic,
            lines,
        })
    }

    /// `ws listening on ADDR` and the like, one per listener, for `ready`.
    pub(crate) fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The certificate's fingerprint, when there is one.
    pub(crate) fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// Stops accepting, closes every client with 4007 within `timeout`
    /// (QUIC: lets the close frames go out), and waits for the listeners.
    /// False when some connections were still open at the timeout.
    pub(crate) async fn drain(self, timeout: Duration) -> bool {
        self.stop.cancel();
        let drained = self.room.drain(timeout).await;
        if !drained {
            tracing::warn!("drain timeout: some connections were still open");
        }
        if let Some(q) = &self.quic {
            q.wait_idle(QUIC_CLOSE_WAIT).await;
        }
        if let Some(r) = self.reload {
            r.abort();
        }
        // A listener task's panic was logged by tokio; its result is `()`.
        let all = async {
            for t in self.serving {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(STOP_WAIT, all).await.is_err() {
            tracing::warn!("client listeners did not stop in time");
        }
        drained
    }
}
