//! QUIC (quinn): ALPN `pushgate/1`; the client opens one bidirectional
//! stream and speaks on it exactly as on TCP: length-prefixed binary frames,
//! through the same [`FramedIo`] framing and the same session.
//!
//! Decisions:
//! - The TLS handshake and the client's stream must both arrive within
//!   `auth_timeout`; then the session gives `auth` its own `auth_timeout`,
//!   as after a WebSocket handshake. No stream in time: the connection is
//!   closed with application code 4002.
//! - At most one bidirectional stream per connection, no unidirectional
//!   streams, no datagrams. A second stream is never accepted.
//! - The session's final `error` frame is sent on the stream, the stream is
//!   finished, and once the peer has acknowledged it (or after one second)
//!   the connection is closed with the application error code equal to the
//!   frame's close code (4001–4007) and its message as the reason. A session
//!   that ends without a close code (the client left) closes with code 0.
//! - Connection migration is on (quinn's server default, set explicitly): a
//!   client whose address changes, or that rebinds its socket, keeps its
//!   connection and its session; the server validates the new path.
//! - Idle timeout: `max(2 × heartbeat, auth_timeout)` plus [`IDLE_MARGIN`],
//!   so the session's own heartbeat timeout (4003, with its error frame)
//!   always comes first; the client's pings keep the connection alive. The
//!   server sends no QUIC keep-alives of its own.
//! - 0-RTT is refused (see `crate::tls`); resumption without 0-RTT works.
//! - Address validation (RFC 9000 §8.1), off by default: while at least
//!   [`RoomConfig::quic_retry_above`] handshakes are in progress, an attempt
//!   from an address not yet validated is answered with a Retry, so that a
//!   flood from spoofed addresses costs the room one stateless packet each,
//!   not a handshake. Real clients answer the Retry at once (one round trip
//!   more) and are then served; that round trip is why it is off by
//!   default. Under a burst of connects it also helped: the stateless Retry
//!   absorbs the clients' retransmitted first packets. Counted in
//!   `pushgate_room_quic_retries_total`.
//! - Connection ids are 64 random bits (quinn-proto's
//!   `RandomConnectionIdGenerator`), not quinn's default hashed ids, which
//!   carry only 24 random bits: the source id of a Retry is not checked
//!   against the ids in use, and packets are routed by the ids of
//!   established connections first. With about 30,000 ids in use, roughly
//!   one Retry in 600 collided, and that client's packets went to another
//!   connection until it timed out (3 to 8 of 5,000 connects in every
//!   ramp with Retry for all; none after the change).
//! - A full room refuses the connection attempt (`CONNECTION_REFUSED`)
//!   before any handshake work.
//! - The UDP socket asks the kernel for [`SOCKET_BUFFER`] bytes in each
//!   direction. With the default (about 208 KiB on Linux) a burst of
//!   handshakes overflows the receive buffer: at 5,000 connections opened
//!   at once, 17,000 datagrams were dropped, handshakes waited for
//!   retransmission timers, and the odd one timed out. The kernel caps the
//!   request at `net.core.rmem_max`/`wmem_max`; when it does, the room warns
//!   once at start (docs/OPERATIONS.md says how to raise them).
//! - No path MTU discovery: packets stay at 1,200 bytes, which every QUIC
//!   path carries. Pushes are small; probing would cost one packet per
//!   connection every 10 minutes and about 1.1 KB per connection (larger
//!   packets grow quinn's send buffer): 30.8 KB instead of 31.9 KB per idle
//!   connection, measured with `bench/scripts/idle-rss.sh`.
//! - Flow control bounds memory: the stream's receive window is about one
//!   maximum frame, the send buffer [`SEND_WINDOW`]. A client that stops
//!   reading stalls the session's writes, which ends as a slow consumer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use proto::CloseCode;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{
    Connection, Endpoint, EndpointConfig, IdleTimeout, Incoming, RecvStream, SendStream,
    ServerConfig, TransportConfig, VarInt,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::framed::FramedIo;
use crate::io::{ByteStream, LINGER_MAX};
use crate::metrics::{self, Transport};
use crate::session;
use crate::shared::Shared;
use crate::tls::TlsCerts;
use crate::RoomConfig;

/// Added to the session's own silence limit to get the QUIC idle timeout.
pub(crate) const IDLE_MARGIN: Duration = Duration::from_secs(10);
/// Longest QUIC idle timeout (the heartbeat may be up to a day).
const IDLE_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Bytes a connection may have queued for sending (QUIC send window).
pub(crate) const SEND_WINDOW: u64 = 1024 * 1024;
/// Smallest receive window, bytes.
const MIN_RECEIVE_WINDOW: usize = 16 * 1024;
/// Kernel buffer asked for the QUIC socket, each direction, in bytes.
pub(crate) const SOCKET_BUFFER: usize = 8 * 1024 * 1024;
/// Length of the room's QUIC connection ids, bytes (all random).
const CID_LEN: usize = 8;
/// Longest reason text sent in a CONNECTION_CLOSE frame.
const MAX_REASON: usize = 200;

/// A bound QUIC endpoint, not yet serving (see [`crate::Room::serve`] and [`crate::Listener::Quic`]).
/// Cheap to clone; every clone is the same endpoint.
#[derive(Clone, Debug)]
pub struct QuicListener {
    endpoint: Endpoint,
}

/// The QUIC transport settings derived from the room's settings.
fn transport(cfg: &RoomConfig) -> TransportConfig {
    let mut t = TransportConfig::default();
    let idle = (cfg.idle_limit().max(cfg.auth_timeout) + IDLE_MARGIN).min(IDLE_MAX);
    // IDLE_MAX is far below the limit of 2^62 ms, so the conversion succeeds.
    t.max_idle_timeout(IdleTimeout::try_from(idle).ok());
    t.keep_alive_interval(None);
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    let window = cfg.max_frame.saturating_add(16).max(MIN_RECEIVE_WINDOW);
    let window = VarInt::from_u64(window as u64).unwrap_or(VarInt::MAX);
    t.stream_receive_window(window);
    t.receive_window(window);
    t.send_window(SEND_WINDOW);
    t.datagram_receive_buffer_size(None);
    // No path MTU discovery: see the module docs.
    t.mtu_discovery_config(None);
    t
}

impl QuicListener {
    /// Binds UDP `addr` and serves `certs` (ALPN `pushgate/1`), with
    /// timeouts and windows derived from `cfg`. Must be called within a
    /// tokio runtime.
    ///
    /// # Errors
    /// When the socket cannot be bound or the TLS configuration is unusable for QUIC.
    pub fn bind(addr: SocketAddr, certs: &TlsCerts, cfg: &RoomConfig) -> io::Result<QuicListener> {
        let crypto = QuicServerConfig::try_from(certs.quic_config())
            .map_err(|e| io::Error::other(format!("quic tls configuration: {e}")))?;
        let mut server = ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport(cfg)));
        server.migration(true);
        let socket = std::net::UdpSocket::bind(addr)?;
        size_buffers(&socket, SOCKET_BUFFER);
        let mut endpoint_config = EndpointConfig::default();
        // Connection ids of 64 random bits: see the module docs.
        endpoint_config.cid_generator(cid_generator);
        let endpoint = Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(QuicListener { endpoint })
    }

    /// The bound UDP address.
    ///
    /// # Errors
    /// When the socket cannot say.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// After the room's drain: waits (at most `limit`) until every closed
    /// connection has told its peer, so that clients see the close code
    /// rather than an idle timeout.
    pub async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.endpoint.wait_idle()).await;
    }
}

/// The room's connection id generator: [`CID_LEN`] random bytes.
fn cid_generator() -> Box<dyn quinn::ConnectionIdGenerator> {
    Box::new(quinn_proto::RandomConnectionIdGenerator::new(CID_LEN))
}

/// Asks for `bytes` of kernel buffer in each direction; warns when the
/// kernel grants less (Linux reports twice what it grants, the
/// bookkeeping overhead included, so half the asked size passes).
fn size_buffers(socket: &std::net::UdpSocket, bytes: usize) {
    let sock = socket2::SockRef::from(socket);
    // Failures show up as a small size below.
    let _ = sock.set_recv_buffer_size(bytes);
    let _ = sock.set_send_buffer_size(bytes);
    let recv = sock.recv_buffer_size().unwrap_or(0);
    let send = sock.send_buffer_size().unwrap_or(0);
    if recv < bytes / 2 || send < bytes / 2 {
        warn!(
            wanted = bytes,
            recv,
            send,
            "the kernel capped the QUIC socket buffers; bursts of handshakes will lose \
             datagrams and wait for retransmission: raise net.core.rmem_max and \
             net.core.wmem_max (docs/OPERATIONS.md)"
        );
    }
}

/// Accepts until `shutdown` or the room's drain; then refuses new attempts.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: QuicListener,
    shutdown: CancellationToken,
) {
    let endpoint = listener.endpoint;
    let handshaking = Arc::new(AtomicUsize::new(0));
    let addr = endpoint.local_addr().ok();
    info!(?addr, kind = "quic", "accepting");
    loop {
        let incoming = tokio::select! {
            () = shutdown.cancelled() => break,
            () = shared.stop.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break, // the endpoint was closed
            },
        };
        let slot = match &shared.per_ip {
            None => None,
            Some(p) => match p.acquire(incoming.remote_address().ip()) {
                Some(slot) => Some(slot),
                None => {
                    shared.metrics.refused(Transport::Quic);
                    incoming.refuse();
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&shared.limit).try_acquire_owned() else {
            shared.metrics.refused(Transport::Quic);
            incoming.refuse();
            continue;
        };
        if shared
            .cfg
            .quic_retry_above
            .is_some_and(|n| handshaking.load(Ordering::Relaxed) >= n)
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            metrics::inc(&shared.metrics.quic_retries);
            // Fails only when a Retry is not allowed, checked just above.
            let _ = incoming.retry();
            continue;
        }
        shared.metrics.accepted(Transport::Quic);
        let peer = incoming.remote_address();
        let release = move |()| drop((permit, slot));
        let counted = Handshaking::start(&handshaking);
        shared
            .tracker
            .spawn(serve(Arc::clone(&shared), incoming, peer, counted).map(release));
    }
    // Connections already up keep running (the room's drain ends them);
    // new attempts are answered CONNECTION_REFUSED from now on.
    endpoint.set_server_config(None);
    info!(?addr, kind = "quic", "stopped accepting");
}

/// Runs one QUIC connection: handshake and stream (boxed, so their state
/// does not size the session), then the session.
///
/// Not an `async fn`: its arguments would stay in the future, unused, for
/// the connection's whole life (rust-lang/rust#62958).
fn serve(
    shared: Arc<Shared>,
    incoming: Incoming,
    peer: SocketAddr,
    counted: Handshaking,
) -> impl Future<Output = ()> + Send {
    let handshake = Box::pin(async move {
        let done = handshake(shared, incoming, peer).await;
        drop(counted);
        done
    });
    async move {
        let Some((shared, io)) = handshake.await else {
            return;
        };
        session::run(shared, io, peer, Transport::Quic).await;
    }
}

/// One handshake in progress, counted until dropped.
struct Handshaking(Arc<AtomicUsize>);

impl Handshaking {
    fn start(count: &Arc<AtomicUsize>) -> Handshaking {
        count.fetch_add(1, Ordering::Relaxed);
        Handshaking(Arc::clone(count))
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn code(c: CloseCode) -> VarInt {
    VarInt::from_u32(u32::from(c.as_u16()))
}

/// The QUIC handshake and the client's stream, within `auth_timeout`.
async fn handshake(
    shared: Arc<Shared>,
    incoming: Incoming,
    peer: SocketAddr,
) -> Option<(Arc<Shared>, FramedIo<QuicStream>)> {
    let deadline = Instant::now() + shared.cfg.auth_timeout;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        metrics::inc(&shared.metrics.handshake_failures);
        debug!(%peer, error = %e, "quic {what} failed");
    };
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            failed("accept", &e);
            return None;
        }
    };
    let conn = shared
        .handshake_step(peer, "quic", deadline, connecting)
        .await?;
    let (send, recv) = tokio::select! {
        () = shared.stop.cancelled() => {
            let r = shared.draining_reason();
            conn.close(code(CloseCode::Draining), r.message().as_bytes());
            return None;
        }
        r = timeout_at(deadline, conn.accept_bi()) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "quic connection ended before its stream");
                return None;
            }
            Err(_) => {
                failed("stream", &"no stream opened in time");
                conn.close(code(CloseCode::AuthTimeout), b"no stream and auth frame in time");
                return None;
            }
        },
    };
    let stream = QuicStream {
        send,
        recv,
        conn,
        close: None,
    };
    Some((
        Arc::clone(&shared),
        FramedIo::new(stream, shared.cfg.max_frame),
    ))
}

/// The client's bidirectional stream, with the connection it belongs to.
pub(crate) struct QuicStream {
    send: SendStream,
    recv: RecvStream,
    conn: Connection,
    /// The close code and reason of the session's final error frame.
    close: Option<(CloseCode, String)>,
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

impl ByteStream for QuicStream {
    fn closing(&mut self, code: CloseCode, reason: &str) {
        let mut reason = reason.to_owned();
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        self.close = Some((code, reason));
    }

    /// Finishes the stream, waits until the peer has acknowledged all of it
    /// (at most [`LINGER_MAX`]), then closes the connection with the close
    /// code: closing at once would discard the final error frame.
    async fn linger(&mut self) {
        if self.send.finish().is_ok() {
            let _ = tokio::time::timeout(LINGER_MAX, self.send.stopped()).await;
        }
        match self.close.take() {
            Some((c, reason)) => self.conn.close(code(c), reason.as_bytes()),
            None => self.conn.close(VarInt::from_u32(0), b""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Retry source ids are not checked against the ids in use, so ids
    /// must not collide: among 200,000 there is no duplicate (quinn's
    /// default generator, 24 random bits, gives about 1,200 here).
    #[test]
    fn connection_ids_do_not_collide() {
        let mut g = cid_generator();
        assert_eq!(g.cid_len(), CID_LEN);
        let ids: HashSet<Vec<u8>> = (0..200_000).map(|_| g.generate_cid().to_vec()).collect();
        assert_eq!(ids.len(), 200_000);
    }
}
