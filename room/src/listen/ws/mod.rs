//! WebSocket: `GET /ws` only (anything else gets 404 during the handshake),
//! subprotocol `pushgate.v1.json` (the default) or `pushgate.v1.bin`.
//!
//! Decisions:
//! - Inbound, text frames are always decoded as JSON and binary frames as
//!   binary, whichever subprotocol was negotiated (DESIGN.md: "text frames
//!   carry JSON frames, binary frames carry binary frames"). The server
//!   always replies in the negotiated encoding.
//! - A client that asks for no subprotocol gets JSON (no header in the
//!   reply). One that offers only unknown subprotocols gets HTTP 400 naming
//!   ours: answering without a header would fail in its library anyway, with
//!   a vaguer message.
//! - WebSocket pings and pongs count as life for the heartbeat.
//! - The handshake and the framing are our own (`handshake`, `frame`,
//!   `io`), not a WebSocket library's: an idle connection holds no buffer
//!   and no state beyond a few flags (see [`WsIo`]), where tungstenite kept
//!   its read and write buffers, frame codec and message assembly per
//!   connection. Frames up to `max_frame` are accepted, fragmented or not.
//! - wss:// (`serve_tls`): the TLS handshake and then the WebSocket
//!   handshake, both within `auth_timeout`. [`WsIo`] is generic over the
//!   byte stream, so a plain connection carries nothing for TLS.
//! - The close handshake (RFC 6455 §5.5.1, §7.1.1) runs both ways. A
//!   client's Close is answered with a Close echoing its code (the stream
//!   flushes the reply before it ends), then the server closes TCP. After the server's own Close, [`WsIo::linger`] waits
//!   up to [`LINGER_MAX`] for the client's Close before closing TCP, so
//!   that clients see a clean close (browsers: `wasClean`).
//! - `GET /sse` on the same listener opens a server-sent event stream
//!   instead ([`sse`]): one more framing of the same session.
//! - https:// with ALPN `h2` (browsers negotiate it by themselves) serves
//!   HTTP/2 ([`h2`]): each `GET /sse` stream is one session, many on one
//!   connection. WebSocket over HTTP/2 (RFC 8441) is not offered, so
//!   browsers open WebSockets on HTTP/1.1 connections of their own; a
//!   `/ws` request on HTTP/2 gets 400.

mod frame;
mod h2;
mod handshake;
mod io;
mod sse;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use futures_util::FutureExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::io::ByteStream;
use crate::metrics::Transport;
use crate::session;
use crate::shared::Shared;
pub(crate) use io::WsIo;
use sse::{SseIo, SseStart};

/// The only path served.
pub(crate) const PATH: &str = "/ws";
/// Subprotocol for JSON in text frames (the default).
pub(crate) const PROTO_JSON: &str = "pushgate.v1.json";
/// Subprotocol for binary frames.
pub(crate) const PROTO_BIN: &str = "pushgate.v1.bin";

/// Runs the handshake (within `auth_timeout`), then the session.
///
/// Not an `async fn`: its arguments would stay in the future, unused, for
/// the connection's whole life (rust-lang/rust#62958). The handshake is
/// boxed for the same reason: its state would otherwise size the session.
/// Chained with `then` rather than awaited in an `async` block, which would
/// keep the handshake's box and `peer` beside the session future (40 B:
/// enough to put the task in the next 128-byte class).
pub(crate) fn serve(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    Box::pin(handshake(shared, sock, peer)).then(move |r| session_after(r, peer))
}

/// Runs one wss:// connection: the TLS handshake, the WebSocket handshake
/// (together within `auth_timeout`), then the session.
///
/// Not an `async fn`, for the reason given at [`serve`].
pub(crate) fn serve_tls(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
) -> impl Future<Output = ()> + Send {
    let handshake = Box::pin(async move {
        let deadline = tokio::time::Instant::now() + shared.cfg.auth_timeout;
        let (shared, tls) = crate::tls::handshake(shared, sock, peer, tls).await?;
        if tls.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) {
            return Some((shared, Opened::H2(tls, deadline)));
        }
        handshake_until(shared, tls, peer, deadline).await
    });
    handshake.then(move |r| session_after(r, peer))
}

/// A connection after its handshake: a WebSocket, an event stream, or an
/// HTTP/2 connection (its own handshake still to come, by the deadline).
enum Opened<S> {
    Ws(WsIo<S>),
    Sse(SseIo<S>),
    H2(S, tokio::time::Instant),
}

/// What a rare connection (an event stream, an HTTP/2 connection) runs:
/// boxed, so that it does not size every WebSocket task.
type Boxed = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The session after a successful handshake; nothing after a failed one.
fn session_after<S: ByteStream + 'static>(
    handshake: Option<(Arc<Shared>, Opened<S>)>,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    match handshake {
        Some((shared, Opened::Ws(io))) => {
            Either::Left(session::run(shared, io, peer, Transport::Ws))
        }
        Some((shared, Opened::Sse(io))) => {
            shared.metrics.accepted(Transport::Sse);
            let open = sse::SseOpen::new(&shared, crate::metrics::Http::H1);
            let session = session::run(shared, io, peer, Transport::Sse).map(move |()| drop(open));
            Either::Right(Either::Left(Box::pin(session) as Boxed))
        }
        Some((shared, Opened::H2(io, deadline))) => Either::Right(Either::Left(
            Box::pin(h2::serve(shared, io, peer, deadline)) as Boxed,
        )),
        None => Either::Right(Either::Right(std::future::ready(()))),
    }
}

/// The handshake, within `auth_timeout`; `None` when it failed or the room stopped.
async fn handshake(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
) -> Option<(Arc<Shared>, Opened<TcpStream>)> {
    let deadline = tokio::time::Instant::now() + shared.cfg.auth_timeout;
    handshake_until(shared, sock, peer, deadline).await
}

/// The WebSocket (or SSE) handshake on `sock`, until `deadline`.
async fn handshake_until<S: ByteStream>(
    shared: Arc<Shared>,
    mut sock: S,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) -> Option<(Arc<Shared>, Opened<S>)> {
    let cfg = &shared.cfg;
    let check = |start: &SseStart| start.check(cfg, session::now_secs());
    let step = handshake::accept(&mut sock, check);
    let opened = shared
        .handshake_step(peer, "websocket", deadline, step)
        .await?;
    let io = match opened {
        handshake::Opened::Ws(bin, rest) => {
            Opened::Ws(WsIo::new(sock, shared.cfg.max_frame, bin, rest))
        }
        handshake::Opened::Sse(start) => {
            Opened::Sse(SseIo::new(sock, *start, shared.cfg.heartbeat, &[]))
        }
    };
    Some((shared, io))
}

/// Answers the handshake of a refused connection: HTTP 503 for a full
/// room, 429 for too many connections from the address.
pub(crate) async fn refuse<S: ByteStream>(shared: &Shared, mut sock: S, why: super::Refusal) {
    let status = match why {
        super::Refusal::Full => 503,
        super::Refusal::PerIp => 429,
    };
    let answer = handshake::Reject {
        status,
        text: why.text(),
    };
    let limit = shared.cfg.auth_timeout.min(Duration::from_secs(2));
    let _ = tokio::time::timeout(limit, handshake::refuse(&mut sock, answer)).await;
}

/// [`refuse`] after the TLS handshake: an HTTP/2 connection (ALPN `h2`)
/// gets the answer on its first stream, in HTTP/2.
pub(crate) async fn refuse_tls(
    shared: &Shared,
    sock: tokio_rustls::server::TlsStream<TcpStream>,
    why: super::Refusal,
) {
    if sock.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) {
        let limit = shared.cfg.auth_timeout.min(Duration::from_secs(2));
        let _ = tokio::time::timeout(limit, h2::refuse(sock, why)).await;
        return;
    }
    refuse(shared, sock, why).await;
}
