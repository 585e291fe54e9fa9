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
//! - Buffers are small ([`READ_BUFFER`], [`WRITE_BUFFER`]) instead of
//!   tungstenite's 128 KiB each: idle connections must cost little memory.
//!   Frames up to `max_frame` still work; the buffers grow for them.
//! - wss:// (`serve_tls`): the TLS handshake and then the WebSocket
//!   handshake, both within `auth_timeout`. [`WsIo`] is generic over the
//!   byte stream, so a plain connection carries nothing for TLS.
//! - The close handshake (RFC 6455 §5.5.1, §7.1.1) runs both ways. A
//!   client's Close is answered with a Close echoing its code (tungstenite
//!   queues the reply; the stream flushes it before it ends), then the
//!   server closes TCP. After the server's own Close, [`WsIo::linger`] waits
//!   up to [`LINGER_MAX`] for the client's Close before closing TCP, so
//!   that clients see a clean close (browsers: `wasClean`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, Stream, StreamExt};
use proto::DecodeError;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, error::CapacityError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::error::{RecvError, SendError};
use crate::io::{ByteStream, FrameIo, Inbound, OutFrame, LINGER_MAX};
use crate::metrics::Transport;
use crate::room::Shared;
use crate::session;

/// The only path served.
pub(crate) const PATH: &str = "/ws";
/// Subprotocol for JSON in text frames (the default).
pub(crate) const PROTO_JSON: &str = "pushgate.v1.json";
/// Subprotocol for binary frames.
pub(crate) const PROTO_BIN: &str = "pushgate.v1.bin";
/// tungstenite's read buffer (allocated up front, per connection).
const READ_BUFFER: usize = 128;
/// Outgoing bytes buffered before a write to the socket (a flush writes everything).
const WRITE_BUFFER: usize = 1024;
/// Longest close reason a close frame can carry.
const MAX_CLOSE_REASON: usize = 123;
/// Frames read (and dropped) at most while waiting for the client's Close.
const LINGER_FRAMES: usize = 256;
/// Longest the final shutdown (TLS `close_notify`, TCP FIN) may take.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// A WebSocket client connection, over TCP or TLS.
pub(crate) struct WsIo<S = TcpStream> {
    ws: WebSocketStream<S>,
    /// Reply in binary (`pushgate.v1.bin`) rather than JSON text.
    bin: bool,
    /// Where the close handshake stands.
    close: Closing,
}

/// The close handshake, as far as this connection got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    /// No Close frame either way.
    Open,
    /// The client sent a Close: the stream flushes the reply, then ends.
    ByPeer,
    /// The client's Close was answered and TCP shut: the stream has ended.
    Done,
    /// Our Close is queued, not yet flushed.
    Queued,
    /// Our Close went out: the client's reply is awaited in `linger`.
    Sent,
}

impl<S> WsIo<S> {
    fn new(ws: WebSocketStream<S>, bin: bool) -> WsIo<S> {
        WsIo {
            ws,
            bin,
            close: Closing::Open,
        }
    }
}

impl<S> WsIo<S> {
    fn encode(&self, item: OutFrame) -> Result<Message, SendError> {
        Ok(match item {
            OutFrame::Push(p) if self.bin => Message::Binary(p.bin.clone()),
            OutFrame::Push(p) => Message::Text(p.text.clone()),
            OutFrame::Frame(f) if self.bin => {
                let mut out = Vec::with_capacity(64);
                proto::binary::encode_server(&f, &mut out);
                Message::Binary(Bytes::from(out))
            }
            OutFrame::Frame(f) => {
                let mut out = Vec::with_capacity(64);
                proto::json::encode_server(&f, &mut out);
                let text = Utf8Bytes::try_from(out)
                    .map_err(|_| SendError("json encoder produced invalid utf-8".to_owned()))?;
                Message::Text(text)
            }
            OutFrame::Close(code, mut reason) => {
                if reason.len() > MAX_CLOSE_REASON {
                    let mut end = MAX_CLOSE_REASON;
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    reason.truncate(end);
                }
                Message::Close(Some(CloseFrame {
                    code: WsCloseCode::from(code.as_u16()),
                    reason: Utf8Bytes::from(reason),
                }))
            }
        })
    }
}

fn recv_error(e: tungstenite::Error) -> RecvError {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            RecvError::Decode(DecodeError::TooLarge {
                len: size,
                max: max_size,
            })
        }
        tungstenite::Error::Capacity(c) => RecvError::WsProtocol(c.to_string()),
        tungstenite::Error::Utf8(_) => {
            RecvError::Decode(DecodeError::Json("text frame is not utf-8".to_owned()))
        }
        // TCP closed (or reset) without a close frame: the client went away,
        // its frames were not malformed.
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            RecvError::Gone("connection closed without a close frame")
        }
        tungstenite::Error::Protocol(p) => RecvError::WsProtocol(p.to_string()),
        tungstenite::Error::Io(io) => RecvError::from(io),
        other => RecvError::Io(other.to_string()),
    }
}

fn send_error(e: tungstenite::Error) -> SendError {
    SendError(e.to_string())
}

impl<S: ByteStream> Stream for WsIo<S> {
    type Item = Result<Inbound, RecvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Bounded: each turn consumes one message; only raw frames (never
        // produced when reading) and a Close (once) loop.
        loop {
            if self.close == Closing::Done {
                return Poll::Ready(None);
            }
            if self.close == Closing::ByPeer {
                // Send the Close reply tungstenite queued, then the TCP FIN
                // (the server closes TCP first, RFC 6455 §7.1.1). Failures
                // change nothing: the connection ends either way.
                let _ = ready!(Pin::new(&mut self.ws).poll_flush(cx));
                let _ = ready!(Pin::new(self.ws.get_mut()).poll_shutdown(cx));
                self.close = Closing::Done;
                return Poll::Ready(None);
            }
            let msg = match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(recv_error(e)))),
                Some(Ok(m)) => m,
            };
            let item = match msg {
                Message::Text(t) => proto::json::decode_client(t.as_bytes())
                    .map(Inbound::Frame)
                    .map_err(RecvError::from),
                Message::Binary(b) => proto::binary::decode_client(&b)
                    .map(Inbound::Frame)
                    .map_err(RecvError::from),
                Message::Ping(_) | Message::Pong(_) => Ok(Inbound::Alive),
                Message::Close(_) => {
                    self.close = Closing::ByPeer;
                    continue;
                }
                Message::Frame(_) => continue,
            };
            return Poll::Ready(Some(item));
        }
    }
}

impl<S: ByteStream> Sink<OutFrame> for WsIo<S> {
    type Error = SendError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Pin::new(&mut self.ws).poll_ready(cx).map_err(send_error)
    }

    fn start_send(mut self: Pin<&mut Self>, item: OutFrame) -> Result<(), SendError> {
        let close = matches!(item, OutFrame::Close(..));
        let msg = self.encode(item)?;
        Pin::new(&mut self.ws).start_send(msg).map_err(send_error)?;
        if close && self.close == Closing::Open {
            self.close = Closing::Queued;
        }
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(send_error)?;
        if self.close == Closing::Queued {
            self.close = Closing::Sent;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(send_error)
    }
}

impl<S: ByteStream> FrameIo for WsIo<S> {
    /// After our Close went out: reads (and drops) frames until the
    /// client's Close, its EOF, [`LINGER_FRAMES`] frames or [`LINGER_MAX`],
    /// then closes the write side. When our Close could not be sent, the
    /// byte stream's linger instead.
    async fn linger(&mut self) {
        if self.close != Closing::Sent {
            return self.ws.get_mut().linger().await;
        }
        let reply = async {
            for _ in 0..LINGER_FRAMES {
                match self.ws.next().await {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_MAX, reply).await;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.ws.get_mut().shutdown()).await;
    }
}

/// What the client asked for.
enum Offer {
    /// No `Sec-WebSocket-Protocol` header: JSON, no header in the reply.
    Nothing,
    /// The first of ours in the client's order.
    Ours(&'static str),
    /// Only subprotocols we do not speak.
    Unknown,
}

fn choose_protocol(req: &Request) -> Offer {
    let mut offered = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .peekable();
    if offered.peek().is_none() {
        return Offer::Nothing;
    }
    offered
        .find_map(|p| match p {
            PROTO_JSON => Some(Offer::Ours(PROTO_JSON)),
            PROTO_BIN => Some(Offer::Ours(PROTO_BIN)),
            _ => None,
        })
        .unwrap_or(Offer::Unknown)
}

fn http_error(status: StatusCode, text: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(text.to_owned()));
    *r.status_mut() = status;
    r
}

/// Runs the handshake (within `auth_timeout`), then the session.
///
/// Not an `async fn`: its arguments would stay in the future, unused, for
/// the connection's whole life (rust-lang/rust#62958). The handshake is
/// boxed for the same reason: its state would otherwise size the session.
pub(crate) fn serve(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    let handshake = Box::pin(handshake(shared, sock, peer));
    async move {
        let Some((shared, io)) = handshake.await else {
            return;
        };
        session::run(shared, io, peer, Transport::Ws).await;
    }
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
        let (shared, tls) = super::tcp::tls_handshake(shared, sock, peer, tls).await?;
        handshake_until(shared, tls, peer, deadline).await
    });
    async move {
        let Some((shared, io)) = handshake.await else {
            return;
        };
        session::run(shared, io, peer, Transport::Ws).await;
    }
}

/// The handshake, within `auth_timeout`; `None` when it failed or the room stopped.
async fn handshake(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
) -> Option<(Arc<Shared>, WsIo)> {
    let deadline = tokio::time::Instant::now() + shared.cfg.auth_timeout;
    handshake_until(shared, sock, peer, deadline).await
}

/// The WebSocket handshake on `sock`, until `deadline`.
// The callback's error type is tungstenite's `ErrorResponse`.
#[allow(clippy::result_large_err)]
async fn handshake_until<S: ByteStream>(
    shared: Arc<Shared>,
    sock: S,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) -> Option<(Arc<Shared>, WsIo<S>)> {
    let mut bin = false;
    let callback = |req: &Request, mut resp: Response| {
        if req.uri().path() != PATH {
            return Err(http_error(StatusCode::NOT_FOUND, "not found"));
        }
        match choose_protocol(req) {
            Offer::Nothing => {}
            Offer::Ours(p) => {
                bin = p == PROTO_BIN;
                resp.headers_mut()
                    .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
            }
            Offer::Unknown => {
                let text = "unsupported subprotocol: use pushgate.v1.json or pushgate.v1.bin";
                return Err(http_error(StatusCode::BAD_REQUEST, text));
            }
        }
        Ok(resp)
    };
    let cfg = ws_config(shared.cfg.max_frame);
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(sock, callback, Some(cfg));
    let ws = super::handshake_step(&shared, peer, "websocket", deadline, handshake).await?;
    Some((shared, WsIo::new(ws, bin)))
}

/// Answers the handshake of a refused connection: HTTP 503 for a full
/// room, 429 for too many connections from the address.
#[allow(clippy::result_large_err)]
pub(crate) async fn refuse<S: ByteStream>(shared: &Shared, sock: S, why: super::Refusal) {
    let status = match why {
        super::Refusal::Full => StatusCode::SERVICE_UNAVAILABLE,
        super::Refusal::PerIp => StatusCode::TOO_MANY_REQUESTS,
    };
    let callback = |_: &Request, _: Response| Err(http_error(status, why.text()));
    let limit = shared.cfg.auth_timeout.min(Duration::from_secs(2));
    let handshake = tokio_tungstenite::accept_hdr_async(sock, callback);
    let _ = tokio::time::timeout(limit, handshake).await;
}
