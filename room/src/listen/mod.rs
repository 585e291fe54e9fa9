//! Accept loops: socket → [`FrameIo`](crate::io::FrameIo) → session task.
//!
//! The loop never exits on an accept error (it backs off, 5 ms doubling to
//! 1 s), only when the caller's shutdown token or the room's drain fires.
//! `max_connections` is enforced with a semaphore, one permit per socket
//! (authenticated or not). A full room refuses fast so the client can try
//! another: WebSocket gets HTTP 503 during the handshake, TCP gets a final
//! error frame `overloaded` with close code 4007 ("reconnect elsewhere"),
//! after the TLS handshake where the listener is TLS; QUIC refuses the
//! connection attempt (`CONNECTION_REFUSED`, see `quic`).
//! Refusals run on small tracked tasks, at most 64 at once; beyond that the
//! socket is just dropped.
//!
//! `max_conns_per_ip` limits the connections of one client address over
//! every listener of the room together (see `crate::per_ip`); over it a connection is refused the same way,
//! with its own text (WebSocket: HTTP 429).
//!
//! The loop drains the listen backlog: it only spawns per connection, and
//! tokio's `accept` keeps taking connections from the kernel until it
//! reports `WouldBlock` (the listeners are bound by the caller, with
//! `--listen-backlog`).

pub(crate) mod quic;
pub(crate) mod tcp;
pub(crate) mod ws;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Transport;
use crate::shared::Shared;

/// Why a connection is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The room holds `max_connections`.
    Full,
    /// The client's address holds `max_conns_per_ip` in this room.
    PerIp,
}

impl Refusal {
    /// The text the client gets.
    pub(crate) fn text(self) -> &'static str {
        match self {
            Refusal::Full => "room full, reconnect elsewhere",
            Refusal::PerIp => "too many connections from this address",
        }
    }
}

/// Which protocol a listener speaks.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// WebSocket on `GET /ws`.
    Ws,
    /// Length-prefixed binary frames.
    Tcp,
}

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts until `shutdown` or the room's drain; with `tls`, every
/// connection starts with a TLS handshake (wss://, TLS over TCP).
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: CancellationToken,
    kind: Kind,
    tls: Option<TlsAcceptor>,
) {
    let transport = match kind {
        Kind::Ws => Transport::Ws,
        Kind::Tcp => Transport::Tcp,
    };
    let addr = listener.local_addr().ok();
    let secure = tls.is_some();
    info!(?addr, ?kind, tls = secure, "accepting");
    let mut backoff = BACKOFF_MIN;
    loop {
        let (sock, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            () = shared.stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff = BACKOFF_MIN;
                    x
                }
                Err(e) => {
                    // EMFILE and friends: wait, never exit.
                    warn!(error = %e, ?kind, "accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = shared.stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        let _ = sock.set_nodelay(true);
        let slot = match &shared.per_ip {
            None => None,
            // Boxed: the slot is kept beside the session all its life, and
            // 24 inline bytes could put every task in the next size class.
            Some(p) => match p.acquire(peer.ip()) {
                Some(slot) => Some(Box::new(slot)),
                None => {
                    spawn_refusal(&shared, sock, peer, kind, &tls, Refusal::PerIp);
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&shared.limit).try_acquire_owned() else {
            spawn_refusal(&shared, sock, peer, kind, &tls, Refusal::Full);
            continue;
        };
        shared.metrics.accepted(transport);
        let s = Arc::clone(&shared);
        // `map`, not an `async` block: that would keep `sock` and `peer`
        // in the task beside the session future (rust-lang/rust#62958).
        let release = move |()| drop((permit, slot));
        match (kind, &tls) {
            (Kind::Ws, None) => shared.tracker.spawn(ws::serve(s, sock, peer).map(release)),
            (Kind::Tcp, None) => shared.tracker.spawn(tcp::serve(s, sock, peer).map(release)),
            (Kind::Ws, Some(t)) => {
                let t = t.clone();
                shared
                    .tracker
                    .spawn(ws::serve_tls(s, sock, peer, t).map(release))
            }
            (Kind::Tcp, Some(t)) => {
                let t = t.clone();
                shared
                    .tracker
                    .spawn(tcp::serve_tls(s, sock, peer, t).map(release))
            }
        };
    }
    info!(?addr, ?kind, tls = secure, "stopped accepting");
}

/// Counts a refusal and answers it on a small tracked task (at most 64 at
/// once; beyond that the socket is just dropped).
fn spawn_refusal(
    shared: &Arc<Shared>,
    sock: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    kind: Kind,
    tls: &Option<TlsAcceptor>,
    why: Refusal,
) {
    shared.metrics.refused(match kind {
        Kind::Ws => Transport::Ws,
        Kind::Tcp => Transport::Tcp,
    });
    if why == Refusal::PerIp {
        tracing::debug!(%peer, ?kind, "refused: too many connections from this address");
    }
    if let Ok(p) = Arc::clone(&shared.refusals).try_acquire_owned() {
        let shared2 = Arc::clone(shared);
        let tls = tls.clone();
        shared.tracker.spawn(async move {
            let _p = p;
            refuse(shared2, sock, peer, kind, tls, why).await;
        });
    }
}

/// Longest a refusal may take over TLS (handshake included).
const REFUSE_TLS_LIMIT: Duration = Duration::from_secs(2);

/// Tells a refused client why (a full room: go elsewhere), after the TLS
/// handshake where the listener is TLS.
async fn refuse(
    shared: Arc<Shared>,
    sock: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    kind: Kind,
    tls: Option<TlsAcceptor>,
    why: Refusal,
) {
    let Some(tls) = tls else {
        match kind {
            Kind::Ws => ws::refuse(&shared, sock, why).await,
            Kind::Tcp => tcp::refuse(sock, why).await,
        }
        return;
    };
    let stream = match tokio::time::timeout(REFUSE_TLS_LIMIT, tls.accept(sock)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "tls handshake failed (refusing)");
            return;
        }
        Err(_) => return,
    };
    match kind {
        Kind::Ws => ws::refuse_tls(&shared, stream, why).await,
        Kind::Tcp => tcp::refuse(stream, why).await,
    }
}
