//! [`FramedIo`]: length-prefixed binary frames both ways over any byte
//! stream: a plain TCP socket, TLS over one, or a QUIC bidirectional
//! stream, so every stream transport frames bytes the same way (the sans-IO
//! part is [`crate::codec`]).
//!
//! Memory: [`FramedIo`] holds no buffer while the connection is idle. Reads
//! go to a stack chunk and a frame that arrived whole is decoded from there;
//! only a partial frame's bytes are kept. Output is buffered until the
//! flush and released once written. (TLS keeps its own buffers; a plain
//! socket pays nothing for TLS being possible.)

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use futures_util::{Sink, Stream};
use proto::{ClientFrame, ServerFrame};
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

use crate::codec::{BinCodec, Decoded};
use crate::error::{RecvError, SendError};
use crate::io::{poll_write_out, ByteStream, FrameIo, Inbound, OutFrame};
use crate::io::{MAX_READS, READ_CHUNK, WRITE_HIGH};

/// A stream client connection: TCP, TLS over TCP, or a QUIC stream.
pub(crate) struct FramedIo<S = TcpStream> {
    sock: S,
    codec: BinCodec,
    /// Bytes of a frame not yet complete (no allocation while empty).
    rbuf: BytesMut,
    /// Encoded output not yet written (no allocation while empty).
    wbuf: Vec<u8>,
    /// The peer closed its write side.
    eof: bool,
}

impl<S: ByteStream> FramedIo<S> {
    /// Frames `sock`, refusing frames longer than `max_frame` bytes.
    pub(crate) fn new(sock: S, max_frame: usize) -> FramedIo<S> {
        FramedIo {
            sock,
            codec: BinCodec::new(max_frame),
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            eof: false,
        }
    }

    /// Decodes a frame from the kept bytes, releasing them once all used.
    fn decode_kept(&mut self) -> Result<Option<ClientFrame>, RecvError> {
        if self.rbuf.is_empty() {
            return Ok(None);
        }
        match self.codec.decode(&self.rbuf)? {
            Decoded::Frame(f, n) => {
                if n >= self.rbuf.len() {
                    self.rbuf = BytesMut::new();
                } else {
                    self.rbuf.advance(n);
                }
                Ok(Some(f))
            }
            // Grow with what arrives, never to the announced size at once:
            // a 3-byte prefix must not make an idle peer pin `max_frame` bytes.
            Decoded::Partial => Ok(None),
        }
    }
}

impl<S: ByteStream> Stream for FramedIo<S> {
    type Item = Result<Inbound, RecvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // A queued reply (see `queue_reply`): best effort, without waiting
        // for the socket; a failed write is left to the read below, which
        // tells how the client went away.
        if !this.wbuf.is_empty() {
            if let Poll::Ready(Err(_)) = poll_write_out(&mut this.sock, &mut this.wbuf, cx) {
                this.wbuf = Vec::new();
            }
        }
        for _ in 0..MAX_READS {
            match this.decode_kept() {
                Ok(Some(f)) => return Poll::Ready(Some(Ok(Inbound::Frame(f)))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            if this.eof {
                if this.rbuf.is_empty() {
                    return Poll::Ready(None);
                }
                this.rbuf = BytesMut::new();
                let e = RecvError::Gone("connection closed in the middle of a frame");
                return Poll::Ready(Some(Err(e)));
            }
            // Not zeroed: the socket writes it, and only that part is read.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            if let Err(e) = ready!(Pin::new(&mut this.sock).poll_read(cx, &mut rb)) {
                return Poll::Ready(Some(Err(e.into())));
            }
            let got = rb.filled();
            if got.is_empty() {
                this.eof = true;
                continue;
            }
            if !this.rbuf.is_empty() {
                this.rbuf.extend_from_slice(got);
                continue;
            }
            // The usual case: whole frames, decoded straight from the chunk.
            match this.codec.decode(got) {
                Ok(Decoded::Frame(f, n)) => {
                    if n < got.len() {
                        this.rbuf.extend_from_slice(&got[n..]);
                    }
                    return Poll::Ready(Some(Ok(Inbound::Frame(f))));
                }
                Ok(Decoded::Partial) => this.rbuf.extend_from_slice(got),
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
        // A long stream of partial input: let other tasks run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: ByteStream> Sink<OutFrame> for FramedIo<S> {
    type Error = SendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        if self.wbuf.len() >= WRITE_HIGH {
            return self.poll_flush(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: OutFrame) -> Result<(), SendError> {
        let this = &mut *self;
        if let OutFrame::Close(code, reason) = &item {
            this.sock.closing(*code, reason);
        }
        this.codec.encode(item, &mut this.wbuf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let this = &mut *self;
        poll_write_out(&mut this.sock, &mut this.wbuf, cx).map_err(SendError::from)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.sock)
            .poll_shutdown(cx)
            .map_err(SendError::from)
    }
}

impl<S: ByteStream> FrameIo for FramedIo<S> {
    fn linger(&mut self) -> impl Future<Output = ()> + Send + '_ {
        self.sock.linger()
    }

    fn queue_reply(&mut self, frame: &ServerFrame) -> bool {
        if !self.wbuf.is_empty() {
            return false;
        }
        self.codec.encode_frame(frame, &mut self.wbuf);
        true
    }
}
