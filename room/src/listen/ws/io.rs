//! [`WsIo`]: a WebSocket connection as a [`FrameIo`], over any byte stream.
//!
//! Memory: like [`FramedIo`](crate::listen::crate::framed::FramedIo), an idle connection
//! holds no buffer. Reads go to a stack chunk and frames that arrived whole
//! are unmasked and decoded there; only a partial frame's bytes, or the
//! fragments of an unfinished message, are kept. Output is encoded into one
//! buffer (frame headers straight in front of the shared push bytes) and
//! released once written.
//!
//! Control frames: a Ping is answered with a Pong carrying its payload,
//! queued with the output and written at the next chance (the next read or
//! write of the connection); pings and pongs count as life. A client that
//! pings and never reads gets its pongs dropped once [`PONG_LIMIT`] bytes of
//! output wait. The close handshake is described in the parent module.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::{Sink, Stream, StreamExt};
use proto::DecodeError;
use tokio::io::{AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::frame::{self, Head, HeadError};
use crate::error::{RecvError, SendError};
use crate::io::{append_with_head, ByteStream, FrameIo, Inbound, OutFrame, LINGER_MAX};
use crate::io::{MAX_READS, READ_CHUNK, WRITE_HIGH};

/// Output waiting above which a Ping gets no Pong.
const PONG_LIMIT: usize = 4 * WRITE_HIGH;
/// Longest close reason a close frame can carry.
const MAX_CLOSE_REASON: usize = 123;
/// Frames read (and dropped) at most while waiting for the client's Close.
const LINGER_FRAMES: usize = 256;
/// Longest the final shutdown (TLS `close_notify`, TCP FIN) may take.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

/// A WebSocket client connection, over TCP or TLS.
pub(crate) struct WsIo<S = TcpStream> {
    sock: S,
    /// Bytes of a frame not yet complete (no allocation while empty).
    rbuf: Vec<u8>,
    /// Encoded output not yet written (no allocation while empty).
    wbuf: Vec<u8>,
    /// A fragmented message being assembled (rare: boxed).
    frag: Option<Box<Fragments>>,
    /// Longest message accepted (`max_frame`).
    max: usize,
    /// Reply in binary (`pushgate.v1.bin`) rather than JSON text.
    bin: bool,
    /// Where the close handshake stands.
    close: Closing,
    /// The peer closed its write side.
    eof: bool,
}

/// A message whose first fragment arrived.
struct Fragments {
    /// Text (else binary).
    text: bool,
    /// The payload so far, unmasked.
    data: Vec<u8>,
}

/// The close handshake, as far as this connection got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    /// No Close frame either way.
    Open,
    /// The client sent a Close: the reply is queued; the stream flushes it,
    /// closes TCP and ends.
    ByPeer,
    /// The close handshake is over (or the connection is): the stream has ended.
    Done,
    /// Our Close is queued, not yet flushed.
    Queued,
    /// Our Close went out: the client's reply is awaited in `linger`.
    Sent,
}

/// What one complete frame meant.
enum Step {
    /// Something for the session.
    Item(Inbound),
    /// Nothing yet (a fragment).
    Nothing,
    /// The client's Close arrived.
    Closed,
}

impl<S: ByteStream> WsIo<S> {
    /// Frames `sock` after the handshake; `rest` holds bytes the client sent
    /// after its request head.
    pub(crate) fn new(sock: S, max: usize, bin: bool, rest: Vec<u8>) -> WsIo<S> {
        WsIo {
            sock,
            rbuf: rest,
            wbuf: Vec::new(),
            frag: None,
            max,
            bin,
            close: Closing::Open,
            eof: false,
        }
    }

    /// The first complete frame at the start of `buf`, handled; `Ok(None)`
    /// when `buf` holds no whole frame yet. Else the bytes used and what the
    /// frame meant.
    fn take_frame(&mut self, buf: &mut [u8]) -> Result<Option<(usize, Step)>, RecvError> {
        let head = match frame::parse_head(buf, self.max) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(HeadError::Protocol(why)) => return Err(RecvError::WsProtocol(why.to_owned())),
            Err(HeadError::TooLarge { len, max }) => {
                return Err(RecvError::Decode(DecodeError::TooLarge { len, max }))
            }
        };
        let Some(payload) = buf.get_mut(head.head_len..head.frame_len()) else {
            return Ok(None);
        };
        frame::unmask(payload, head.mask, 0);
        let step = self.on_frame(head, payload)?;
        Ok(Some((head.frame_len(), step)))
    }

    /// Handles one complete, unmasked frame.
    fn on_frame(&mut self, head: Head, payload: &[u8]) -> Result<Step, RecvError> {
        let protocol = |why: &str| Err(RecvError::WsProtocol(why.to_owned()));
        match head.opcode {
            frame::OP_TEXT | frame::OP_BINARY => {
                if self.frag.is_some() {
                    return protocol("new message before the fragmented one ended");
                }
                let text = head.opcode == frame::OP_TEXT;
                if head.fin {
                    return decode(text, payload).map(Step::Item);
                }
                self.frag = Some(Box::new(Fragments {
                    text,
                    data: payload.to_vec(),
                }));
                Ok(Step::Nothing)
            }
            frame::OP_CONTINUATION => {
                let Some(frag) = self.frag.as_mut() else {
                    return protocol("continuation frame outside a fragmented message");
                };
                let len = frag.data.len().saturating_add(payload.len());
                if len > self.max {
                    let max = self.max;
                    return Err(RecvError::Decode(DecodeError::TooLarge { len, max }));
                }
                frag.data.extend_from_slice(payload);
                if !head.fin {
                    return Ok(Step::Nothing);
                }
                let Some(frag) = self.frag.take() else {
                    return Ok(Step::Nothing);
                };
                decode(frag.text, &frag.data).map(Step::Item)
            }
            frame::OP_PING => {
                if self.close == Closing::Open && self.wbuf.len() < PONG_LIMIT {
                    frame::write_head(&mut self.wbuf, frame::OP_PONG, payload.len());
                    self.wbuf.extend_from_slice(payload);
                }
                Ok(Step::Item(Inbound::Alive))
            }
            frame::OP_PONG => Ok(Step::Item(Inbound::Alive)),
            frame::OP_CLOSE => {
                let close = frame::parse_close(payload)
                    .map_err(|why| RecvError::WsProtocol(why.to_owned()))?;
                if self.close == Closing::Open {
                    // Echo the code and reason (§5.5.1); an empty Close gets
                    // an empty one.
                    match close {
                        Some((code, why)) => frame::write_close(&mut self.wbuf, code, why),
                        None => frame::write_head(&mut self.wbuf, frame::OP_CLOSE, 0),
                    }
                    self.close = Closing::ByPeer;
                } else {
                    self.close = Closing::Done;
                }
                Ok(Step::Closed)
            }
            _ => protocol("unknown opcode"),
        }
    }

    /// Handles the frames at the start of the kept bytes; `Ok(None)` when
    /// they hold no more whole frame.
    fn take_kept(&mut self) -> Result<Option<Step>, RecvError> {
        loop {
            if self.rbuf.is_empty() {
                return Ok(None);
            }
            let mut kept = std::mem::take(&mut self.rbuf);
            let taken = self.take_frame(&mut kept);
            match taken {
                Ok(Some((n, step))) => {
                    if n < kept.len() {
                        kept.drain(..n);
                        self.rbuf = kept;
                    }
                    match step {
                        Step::Nothing => continue,
                        step => return Ok(Some(step)),
                    }
                }
                Ok(None) => {
                    self.rbuf = kept;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes what waits in `wbuf`; releases the buffer once written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        crate::io::poll_write_out(&mut self.sock, &mut self.wbuf, cx).map_err(SendError::from)
    }

    /// Appends the encoding of `item` to the output.
    fn encode(&mut self, item: OutFrame) {
        match item {
            OutFrame::Push(p) => {
                let (op, body) = if self.bin {
                    (frame::OP_BINARY, &p.bin[..])
                } else {
                    (frame::OP_TEXT, p.text.as_bytes())
                };
                let out = &mut self.wbuf;
                out.reserve(frame::MAX_SERVER_HEAD + body.len());
                frame::write_head(out, op, body.len());
                out.extend_from_slice(body);
            }
            OutFrame::Frame(f) => self.encode_frame(&f),
            OutFrame::Close(code, mut reason) => {
                if reason.len() > MAX_CLOSE_REASON {
                    let mut end = MAX_CLOSE_REASON;
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    reason.truncate(end);
                }
                frame::write_close(&mut self.wbuf, code.as_u16(), &reason);
            }
        }
    }

    /// Appends `f` in the negotiated encoding, as one frame.
    fn encode_frame(&mut self, f: &proto::ServerFrame) {
        let (op, body): (u8, fn(&proto::ServerFrame, &mut Vec<u8>)) = if self.bin {
            (frame::OP_BINARY, proto::binary::encode_server)
        } else {
            (frame::OP_TEXT, proto::json::encode_server)
        };
        append_with_head(
            &mut self.wbuf,
            |out| body(f, out),
            |len| frame::server_head(op, len),
        );
    }
}

/// Decodes a complete message: text frames as JSON, binary frames as binary,
/// whichever subprotocol was negotiated.
fn decode(text: bool, payload: &[u8]) -> Result<Inbound, RecvError> {
    let frame = if text {
        if std::str::from_utf8(payload).is_err() {
            return Err(RecvError::Decode(DecodeError::Json(
                "text frame is not utf-8".to_owned(),
            )));
        }
        proto::json::decode_client(payload)?
    } else {
        proto::binary::decode_client(payload)?
    };
    Ok(Inbound::Frame(frame))
}

impl<S: ByteStream> Stream for WsIo<S> {
    type Item = Result<Inbound, RecvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        for _ in 0..MAX_READS {
            match this.close {
                Closing::Done => return Poll::Ready(None),
                Closing::ByPeer => {
                    // Send the Close reply, then the TCP FIN (the server
                    // closes TCP first, RFC 6455 §7.1.1). Failures change
                    // nothing: the connection ends either way.
                    let _ = ready!(this.poll_write_out(cx));
                    let _ = ready!(Pin::new(&mut this.sock).poll_shutdown(cx));
                    this.close = Closing::Done;
                    return Poll::Ready(None);
                }
                Closing::Open | Closing::Queued | Closing::Sent => {}
            }
            // Pongs waiting: best effort, without waiting for the socket
            // (a write the session makes flushes them too).
            // A failed write is left to the read below, which tells how
            // the client went away.
            if this.close == Closing::Open && !this.wbuf.is_empty() {
                if let Poll::Ready(Err(_)) = this.poll_write_out(cx) {
                    this.wbuf = Vec::new();
                }
            }
            match this.take_kept() {
                Ok(Some(Step::Item(i))) => return Poll::Ready(Some(Ok(i))),
                Ok(Some(Step::Closed)) => continue,
                Ok(Some(Step::Nothing)) | Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            if this.eof {
                this.close = Closing::Done;
                this.rbuf = Vec::new();
                return Poll::Ready(Some(Err(RecvError::Gone(
                    "connection closed without a close frame",
                ))));
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            if let Err(e) = ready!(Pin::new(&mut this.sock).poll_read(cx, &mut rb)) {
                return Poll::Ready(Some(Err(e.into())));
            }
            // What the socket wrote (the rest of the chunk is never read).
            let chunk = rb.filled_mut();
            let n = chunk.len();
            if n == 0 {
                this.eof = true;
                continue;
            }
            if !this.rbuf.is_empty() {
                this.rbuf.extend_from_slice(&chunk[..n]);
                continue;
            }
            // The usual case: whole frames, handled straight from the chunk.
            let mut at = 0;
            while at < n {
                match this.take_frame(&mut chunk[at..n]) {
                    Ok(Some((used, step))) => {
                        at += used;
                        match step {
                            Step::Nothing => {}
                            Step::Closed => break,
                            Step::Item(i) => {
                                this.rbuf.extend_from_slice(&chunk[at..n]);
                                return Poll::Ready(Some(Ok(i)));
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
            this.rbuf.extend_from_slice(&chunk[at..n]);
        }
        // A long stream of partial input: let other tasks run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: ByteStream> Sink<OutFrame> for WsIo<S> {
    type Error = SendError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        if self.wbuf.len() >= WRITE_HIGH {
            return self.poll_write_out(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: OutFrame) -> Result<(), SendError> {
        match self.close {
            Closing::Open => {}
            Closing::ByPeer | Closing::Done => {
                return Err(SendError("the client closed the connection".to_owned()))
            }
            // After our Close nothing more goes out (§5.5.1).
            Closing::Queued | Closing::Sent => return Ok(()),
        }
        if let OutFrame::Close(code, reason) = &item {
            self.sock.closing(*code, reason);
            self.close = Closing::Queued;
        }
        self.encode(item);
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        ready!(self.poll_write_out(cx))?;
        if self.close == Closing::Queued {
            self.close = Closing::Sent;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.sock)
            .poll_shutdown(cx)
            .map_err(SendError::from)
    }
}

impl<S: ByteStream> FrameIo for WsIo<S> {
    fn queue_reply(&mut self, frame: &proto::ServerFrame) -> bool {
        if self.close != Closing::Open || !self.wbuf.is_empty() {
            return false;
        }
        self.encode_frame(frame);
        true
    }

    /// After our Close went out: reads (and drops) frames until the
    /// client's Close, its EOF, [`LINGER_FRAMES`] frames or [`LINGER_MAX`],
    /// then closes the write side. When our Close could not be sent, the
    /// byte stream's linger instead.
    async fn linger(&mut self) {
        if self.close != Closing::Sent {
            return self.sock.linger().await;
        }
        let reply = async {
            for _ in 0..LINGER_FRAMES {
                match self.next().await {
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_MAX, reply).await;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.sock.shutdown()).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures_util::StreamExt;
    use proptest::prelude::*;
    use proto::ClientFrame;
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        frame::unmask(&mut body, mask, 0);
        out.extend_from_slice(&body);
        out
    }

    /// Writes `writes` one by one into a fresh `WsIo`, closes the client
    /// side, and returns everything the stream yielded until it ended
    /// (`None` or an error); panics if it does not end.
    fn run(writes: Vec<Vec<u8>>) -> Vec<Result<Inbound, RecvError>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut io = WsIo::new(server, 4096, false, Vec::new());
            let writer = tokio::spawn(async move {
                for w in writes {
                    if client.write_all(&w).await.is_err() {
                        break;
                    }
                }
                // Keep reading what the server writes (pongs, close
                // replies), so that it never blocks on a full pipe.
                let mut sink = tokio::io::sink();
                let _ = client.shutdown().await;
                let _ = tokio::io::copy(&mut client, &mut sink).await;
            });
            let mut out = Vec::new();
            // Bounded: every item consumes input; these streams of a few
            // KiB yield far fewer than 10,000 items.
            let mut ended = false;
            for _ in 0..10_000 {
                match io.next().await {
                    None => ended = true,
                    Some(r) => {
                        ended = r.is_err();
                        out.push(r);
                    }
                }
                if ended {
                    break;
                }
            }
            assert!(ended, "the stream did not end: {out:?}");
            drop(io);
            let _ = writer.await;
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Arbitrary bytes in arbitrary pieces: the framing never panics
        /// and always ends (an error, or the end of the stream).
        #[test]
        fn arbitrary_input_ends_cleanly(
            writes in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 0..8)
        ) {
            let out = run(writes);
            // Only the last item may be an error.
            let n = out.len().saturating_sub(1);
            prop_assert!(out[..n].iter().all(Result::is_ok), "{:?}", out);
        }

        /// Valid frames, some messages fragmented, cut at arbitrary points:
        /// the same messages come out, in order, whatever the cuts.
        #[test]
        fn frames_cut_anywhere_decode_the_same(
            msgs in prop::collection::vec((0u32..1000, 1usize..4, any::<[u8; 4]>(), 0usize..300), 1..12),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut bytes = Vec::new();
            for (seq, pieces, mask, pad) in &msgs {
                let text = format!("{{\"op\":\"ping\",\"seq\":{seq}{}}}", " ".repeat(*pad));
                let t = text.as_bytes();
                let step = t.len().div_ceil(*pieces);
                let parts: Vec<&[u8]> = t.chunks(step).collect();
                for (i, part) in parts.iter().enumerate() {
                    let opcode = if i == 0 { frame::OP_TEXT } else { frame::OP_CONTINUATION };
                    bytes.extend(client_frame(i + 1 == parts.len(), opcode, part, *mask));
                }
                // A ping control frame between messages counts as life.
                bytes.extend(client_frame(true, frame::OP_PING, b"x", *mask));
            }
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            at.push(0);
            at.push(bytes.len());
            at.sort_unstable();
            let writes: Vec<Vec<u8>> = at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect();
            let out = run(writes);
            let mut seqs = Vec::new();
            let mut alive = 0;
            for r in &out[..out.len() - 1] {
                match r {
                    Ok(Inbound::Frame(ClientFrame::Ping { seq })) => seqs.push(seq.unwrap()),
                    Ok(Inbound::Alive) => alive += 1,
                    other => prop_assert!(false, "unexpected {other:?}"),
                }
            }
            let want: Vec<u32> = msgs.iter().map(|m| m.0).collect();
            prop_assert_eq!(seqs, want);
            prop_assert_eq!(alive, msgs.len());
            // The end: TCP closed without a Close frame.
            prop_assert!(matches!(out.last(), Some(Err(RecvError::Gone(_)))), "{:?}", out.last());
        }
    }
}
