//! The byte stream a connection runs over.

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream: TCP, TLS over TCP, or a QUIC bidirectional stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
