//! The transport seam: what a session reads and writes, whatever carries it.
//!
//! Every listener turns its socket into a [`FrameIo`]: a `Stream` of decoded
//! client frames and a `Sink` of [`OutFrame`]s. The transport owns the
//! encoding (JSON text or binary, with or without a length prefix); the
//! session never sees bytes. Shared pushes arrive already encoded in both
//! encodings ([`Push`]), so fan-out never re-encodes per connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, Stream};
use proto::{ClientFrame, CloseCode, ServerFrame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{RecvError, SendError};
use crate::hub::Push;

/// One thing read from a client.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A protocol frame.
    Frame(ClientFrame),
    /// A transport-level keepalive (WebSocket ping or pong): counts as life.
    Alive,
}

/// One thing written to a client.
#[derive(Debug)]
pub(crate) enum OutFrame {
    /// A pushed message, encoded once for every connection.
    Push(Arc<Push>),
    /// A frame for this connection only (replies, replayed messages, errors);
    /// boxed so that write futures, which hold one `OutFrame`, stay small.
    Frame(Box<ServerFrame>),
    /// End of stream with a close code and reason: a WebSocket close frame;
    /// nothing on stream transports, where the final error frame carries it.
    Close(CloseCode, String),
}

/// A client connection as the session sees it.
pub(crate) trait FrameIo:
    Stream<Item = Result<Inbound, RecvError>> + Sink<OutFrame, Error = SendError> + Unpin + Send
{
    /// After the final frames: shuts the write side and reads and discards
    /// what the peer still sends for a short while, so that closing the
    /// socket with unread input does not reset the connection and destroy
    /// the final frames before the client reads them.
    fn linger(&mut self) -> impl Future<Output = ()> + Send + '_;

    /// Queues a small frame of this connection's own (the `pong` to a
    /// `ping`) to be written by the connection's next read or write,
    /// without a write of its own: the heartbeat's fast path. `false` when
    /// output is already waiting (the caller then sends it the usual way,
    /// so order and back-pressure stay those of the sink).
    fn queue_reply(&mut self, _frame: &ServerFrame) -> bool {
        false
    }
}

/// A byte stream a connection runs on: a TCP socket, TLS over one, or a
/// QUIC stream. Framing (WebSocket or length prefix) sits on top of it.
pub(crate) trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// The session is about to write its final frames and end with `code`
    /// (QUIC closes the connection with it as the application error code).
    fn closing(&mut self, _code: CloseCode, _reason: &str) {}

    /// See [`FrameIo::linger`].
    fn linger(&mut self) -> impl Future<Output = ()> + Send + '_ {
        linger_stream(self)
    }
}

impl ByteStream for TcpStream {}

impl ByteStream for tokio_rustls::server::TlsStream<TcpStream> {}

/// In-memory pipes, for the transports' tests.
#[cfg(test)]
impl ByteStream for tokio::io::DuplexStream {}

/// Bytes a transport asks of its socket per read, into a stack chunk (left
/// uninitialised: the socket writes it, and only what it wrote is read).
pub(crate) const READ_CHUNK: usize = 1024;
/// Buffered output above which a transport's `poll_ready` flushes first.
pub(crate) const WRITE_HIGH: usize = 4096;
/// Socket reads per `poll_next` before a transport yields to other tasks.
pub(crate) const MAX_READS: usize = 64;

/// Writes all of `out` to `sock`, then flushes it. Written bytes leave
/// `out` as they go; once all are written the buffer is released, so an
/// idle connection holds none.
pub(crate) fn poll_write_out<S: AsyncWrite + Unpin + ?Sized>(
    sock: &mut S,
    out: &mut Vec<u8>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<std::io::Result<()>> {
    use std::task::Poll;
    let mut done = 0;
    // Bounded: every turn writes at least one byte of a finite buffer.
    while done < out.len() {
        match std::pin::Pin::new(&mut *sock).poll_write(cx, &out[done..]) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            Poll::Ready(Ok(n)) => done += n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                out.drain(..done);
                return Poll::Pending;
            }
        }
    }
    *out = Vec::new();
    std::pin::Pin::new(sock).poll_flush(cx)
}

/// Body first, header after (a WebSocket header is at most 10 bytes, as
/// the longest varint is).
pub(crate) use proto::binary::append_with_head;

/// Longest a closing connection lingers.
pub(crate) const LINGER_MAX: Duration = Duration::from_secs(1);
/// A lingering connection quiet this long is dropped.
const LINGER_IDLE: Duration = Duration::from_millis(100);

/// Shuts the write side of `sock` (TLS: after `close_notify`), then discards
/// input until EOF, a quiet spell of [`LINGER_IDLE`], or [`LINGER_MAX`].
pub(crate) async fn linger_stream<S>(sock: &mut S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
{
    let _ = sock.shutdown().await;
    let end = tokio::time::Instant::now() + LINGER_MAX;
    let mut buf = vec![0u8; 2048];
    // Bounded: at most 512 reads of up to 2 KiB (1 MiB), and LINGER_MAX.
    for _ in 0..512 {
        match tokio::time::timeout(LINGER_IDLE, sock.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                if tokio::time::Instant::now() >= end {
                    break;
                }
            }
            _ => break,
        }
    }
}
