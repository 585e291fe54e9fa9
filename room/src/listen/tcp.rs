//! TCP: a stream of length-prefixed binary frames both ways. The final
//! error frame carries the close code, then the socket closes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proto::{CloseCode, ErrorCode, ServerFrame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::codec::{BinCodec, INITIAL_BUFFER};
use crate::io::{linger_tcp, FrameIo};
use crate::room::Shared;
use crate::session;

/// A TCP client connection.
pub(crate) type TcpIo = Framed<TcpStream, BinCodec>;

impl FrameIo for TcpIo {
    fn linger(&mut self) -> impl Future<Output = ()> + Send + '_ {
        linger_tcp(self.get_mut())
    }
}

/// Runs one TCP connection.
pub(crate) async fn serve(shared: Arc<Shared>, sock: TcpStream, peer: SocketAddr) {
    let io = Framed::with_capacity(sock, BinCodec::new(shared.cfg.max_frame), INITIAL_BUFFER);
    let serial = shared.next_serial();
    session::run(shared, io, serial, peer, "tcp").await;
}

/// Answers a connection to a full room: error `overloaded` with close 4007.
pub(crate) async fn refuse(mut sock: TcpStream) {
    let frame = ServerFrame::Error {
        seq: None,
        code: ErrorCode::Overloaded,
        message: "room full, reconnect elsewhere".to_owned(),
        close: Some(CloseCode::Draining),
    };
    let mut body = Vec::with_capacity(64);
    proto::binary::encode_server(&frame, &mut body);
    let mut out = Vec::with_capacity(body.len() + 8);
    proto::binary::write_len(body.len(), &mut out);
    out.extend_from_slice(&body);
    let _ = tokio::time::timeout(Duration::from_secs(1), sock.write_all(&out)).await;
    linger_tcp(&mut sock).await;
}
