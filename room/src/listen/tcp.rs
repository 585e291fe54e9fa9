//! TCP: a stream of length-prefixed binary frames both ways
//! ([`FramedIo`]), plain or over TLS. The final error frame carries the
//! close code, then the socket closes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proto::{CloseCode, ErrorCode, ServerFrame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::framed::FramedIo;
use crate::io::ByteStream;
use crate::metrics::Transport;
use crate::session;
use crate::shared::Shared;

/// Runs one TCP connection.
///
/// Not an `async fn`: its arguments would stay in the future, unused, for
/// the connection's whole life (rust-lang/rust#62958).
pub(crate) fn serve(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    let io = FramedIo::new(sock, shared.cfg.max_frame);
    session::run(shared, io, peer, Transport::Tcp)
}

/// Runs one TLS-over-TCP connection: the TLS handshake (within the auth
/// timeout), then the session.
///
/// Not an `async fn`, for the reason given at [`serve`]; the handshake is
/// boxed so that its state does not size the session.
pub(crate) fn serve_tls(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
) -> impl Future<Output = ()> + Send {
    let handshake = Box::pin(crate::tls::handshake(shared, sock, peer, tls));
    async move {
        let Some((shared, tls)) = handshake.await else {
            return;
        };
        let io = FramedIo::new(tls, shared.cfg.max_frame);
        session::run(shared, io, peer, Transport::Tcp).await;
    }
}

/// Answers a refused connection: error `overloaded` with close 4007 and
/// the refusal's text.
pub(crate) async fn refuse<S: ByteStream>(mut sock: S, why: super::Refusal) {
    let frame = ServerFrame::Error {
        seq: None,
        code: ErrorCode::Overloaded,
        message: why.text().to_owned(),
        close: Some(CloseCode::Draining),
    };
    let mut out = Vec::with_capacity(64);
    proto::binary::encode_server_framed(&frame, &mut out);
    sock.closing(CloseCode::Draining, why.text());
    let _ = tokio::time::timeout(Duration::from_secs(1), sock.write_all(&out)).await;
    sock.linger().await;
}
