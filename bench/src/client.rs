//! One client connection, spoken like an outsider would: connect (optionally
//! from a chosen source address), authenticate, send frames, receive frames,
//! close. WebSocket connections carry JSON text frames; TCP connections carry
//! length-prefixed binary frames, and so does the one stream of a QUIC
//! connection (see [`crate::quic`]); server-sent events connections carry a
//! request and then events one way (see [`crate::sse`]). All are kept small:
//! a few KiB of buffers each, so one bench process can hold tens of
//! thousands.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::BytesMut;
use futures_util::{SinkExt as _, StreamExt as _};
use proto::{ClientFrame, ConnId, MsgId, ServerFrame};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::args::Transport;
use crate::quic::{DialError, Dialer, QuicArgs};
use crate::sse::{SseIo, SseTarget};
use crate::sse_h2::{H2Dialer, SseH2Io};

/// Largest frame accepted from the server.
const MAX_FRAME: usize = proto::DEFAULT_MAX_FRAME;
/// Initial read buffer of a TCP connection; it grows only for larger frames.
const TCP_READ_BUF: usize = 512;
/// Frames read while waiting for `auth_ok` before giving up.
const MAX_FRAMES_BEFORE_AUTH_OK: usize = 16;

/// WebSocket settings for many small, mostly idle connections.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    transport: Transport,
    addr: SocketAddr,
    url: Arc<str>,
    /// The QUIC dialer (shared endpoints), with `--transport quic` only.
    quic: Option<Arc<Dialer>>,
    /// Where the event stream is requested, with `--transport sse` only.
    sse: Option<Arc<SseTarget>>,
    /// The HTTP/2 dialer, with `--transport sse-h2` only.
    h2: Option<Arc<H2Dialer>>,
}

impl Endpoint {
    /// Resolves the server address: `ws_url` (`ws://host:port/path`) for
    /// WebSocket, `tcp_addr` (`host:port`) for TCP, `quic.quic` (`host:port`)
    /// and the trusted certificate for QUIC; for SSE, `ws_url`'s host and
    /// port, and its path with a final `/ws` replaced by `/sse`.
    pub(crate) async fn resolve(
        transport: Transport,
        ws_url: &str,
        tcp_addr: &str,
        quic: &QuicArgs,
    ) -> anyhow::Result<Endpoint> {
        match transport {
            Transport::Ws | Transport::Sse => {
                let uri: Uri = ws_url
                    .parse()
                    .with_context(|| format!("invalid websocket url {ws_url:?}"))?;
                if uri.scheme_str() != Some("ws") {
                    anyhow::bail!(
                        "websocket url {ws_url:?} must start with ws:// (wss is not supported)"
                    );
                }
                let host = uri
                    .host()
                    .with_context(|| format!("websocket url {ws_url:?} has no host"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port = uri.port_u16().unwrap_or(80);
                let addr = tokio::net::lookup_host((host, port))
                    .await
                    .with_context(|| format!("resolving {host}"))?
                    .next()
                    .with_context(|| format!("{host} resolves to no address"))?;
                let sse = match transport {
                    Transport::Sse => Some(Arc::new(SseTarget::from_ws_url(&uri)?)),
                    _ => None,
                };
                Ok(Endpoint {
                    transport,
                    addr,
                    url: Arc::from(ws_url),
                    quic: None,
                    sse,
                    h2: None,
                })
            }
            Transport::Tcp => {
                let addr = tokio::net::lookup_host(tcp_addr)
                    .await
                    .with_context(|| format!("resolving {tcp_addr}"))?
                    .next()
                    .with_context(|| format!("{tcp_addr} resolves to no address"))?;
                Ok(Endpoint {
                    transport,
                    addr,
                    url: Arc::from(""),
                    quic: None,
                    sse: None,
                    h2: None,
                })
            }
            Transport::Quic => {
                let qa = &quic.quic;
                let addr = tokio::net::lookup_host(qa.as_str())
                    .await
                    .with_context(|| format!("resolving {qa}"))?
                    .next()
                    .with_context(|| format!("{qa} resolves to no address"))?;
                // The host part names the server for a --tls-ca check.
                let host = qa
                    .rsplit_once(':')
                    .map_or(qa.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                Ok(Endpoint {
                    transport,
                    addr,
                    url: Arc::from(""),
                    quic: Some(Arc::new(Dialer::new(quic, host)?)),
                    sse: None,
                    h2: None,
                })
            }
            Transport::SseH2 => {
                let uri: Uri = ws_url
                    .parse()
                    .with_context(|| format!("invalid url {ws_url:?}"))?;
                if !matches!(uri.scheme_str(), Some("wss" | "https")) {
                    anyhow::bail!(
                        "with --transport sse-h2 the --ws url must start with wss:// or https:// \
                         (HTTP/2 is offered over TLS only): got {ws_url:?}"
                    );
                }
                let host = uri
                    .host()
                    .with_context(|| format!("url {ws_url:?} has no host"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port = uri.port_u16().unwrap_or(443);
                let addr = tokio::net::lookup_host((host, port))
                    .await
                    .with_context(|| format!("resolving {host}"))?
                    .next()
                    .with_context(|| format!("{host} resolves to no address"))?;
                Ok(Endpoint {
                    transport,
                    addr,
                    url: Arc::from(ws_url),
                    quic: None,
                    sse: None,
                    h2: Some(Arc::new(H2Dialer::new(&uri, addr, quic)?)),
                })
            }
        }
    }

    /// The server's socket address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The same server with `suffix` appended to the WebSocket URL's path
    /// (a per-user subscriber location, e.g. Nchan's `/sub/<user>`).
    pub(crate) fn with_url_suffix(&self, suffix: &str) -> Endpoint {
        Endpoint {
            url: format!("{}{suffix}", self.url).into(),
            ..self.clone()
        }
    }
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The server closed with a code: a WebSocket close frame, or on TCP the
    /// close code carried by the final error frame.
    Code(u16, String),
    /// A WebSocket close frame without a code.
    NoCode,
    /// The stream ended without a close frame.
    Eof,
    /// A read or write failed.
    Io(String),
}

impl Closed {
    /// A short key for tallies: the close code, or `eof`, `no_code`, `io_error`.
    pub(crate) fn key(&self) -> String {
        match self {
            Closed::Code(c, _) => c.to_string(),
            Closed::NoCode => "no_code".to_string(),
            Closed::Eof => "eof".to_string(),
            Closed::Io(_) => "io_error".to_string(),
        }
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::Code(c, r) if r.is_empty() => write!(f, "close {c}"),
            Closed::Code(c, r) => write!(f, "close {c} ({r})"),
            Closed::NoCode => f.write_str("close without code"),
            Closed::Eof => f.write_str("connection ended without close"),
            Closed::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

/// What [`Conn::recv`] yields.
#[derive(Debug)]
pub(crate) enum Event {
    /// A server frame.
    Frame(ServerFrame),
    /// A frame that did not decode (the connection goes on).
    Undecodable(String),
    /// The connection is over.
    Closed(Closed),
}

/// Why connecting or authenticating failed.
#[derive(Debug)]
pub(crate) enum ClientError {
    /// Binding the source address failed.
    Bind(io::Error),
    /// The TCP connect failed.
    Connect(io::Error),
    /// The WebSocket upgrade, or the QUIC/TLS handshake, failed.
    Handshake(String),
    /// A step did not finish in time.
    Timeout(&'static str),
    /// The server refused the token.
    AuthRefused(String),
    /// The connection ended before `auth_ok`.
    ClosedDuringAuth(Closed),
    /// Sending a frame failed.
    Send(String),
    /// The server answered something unexpected.
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Bind(e) => write!(f, "bind: {e}"),
            ClientError::Connect(e) => write!(f, "connect: {e}"),
            ClientError::Handshake(e) => write!(f, "handshake (websocket or quic): {e}"),
            ClientError::Timeout(step) => write!(f, "timed out during {step}"),
            ClientError::AuthRefused(e) => write!(f, "auth refused: {e}"),
            ClientError::ClosedDuringAuth(c) => write!(f, "closed during auth: {c}"),
            ClientError::Send(e) => write!(f, "send: {e}"),
            ClientError::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// Whether the failure happened at or after the auth step (the socket was
    /// open), as opposed to while connecting.
    pub(crate) fn is_auth(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout("auth")
                | ClientError::AuthRefused(_)
                | ClientError::ClosedDuringAuth(_)
                | ClientError::Protocol(_)
        )
    }

    /// A short key for tallies.
    pub(crate) fn key(&self) -> String {
        match self {
            ClientError::Bind(e) => format!("bind: {}", e.kind()),
            ClientError::Connect(e) => format!("connect: {}", e.kind()),
            ClientError::Handshake(_) => "handshake".to_string(),
            ClientError::Timeout(step) => format!("timeout: {step}"),
            ClientError::AuthRefused(_) => "auth refused".to_string(),
            ClientError::ClosedDuringAuth(c) => format!("closed during auth: {}", c.key()),
            ClientError::Send(_) => "send".to_string(),
            ClientError::Protocol(_) => "protocol".to_string(),
        }
    }
}

/// What `auth_ok` said.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AuthOk {
    /// The connection id the server gave.
    #[allow(dead_code)] // kept for reports of a later issue (per-connection traces)
    pub(crate) conn: ConnId,
    /// The heartbeat interval the server asks for, in seconds.
    pub(crate) heartbeat: u32,
}

/// One open connection.
pub(crate) struct Conn {
    io: Io,
}

enum Io {
    Ws(Box<WebSocketStream<TcpStream>>),
    Tcp(TcpIo),
    Quic(Box<QuicIo>),
    Sse(SseIo),
    SseH2(Box<SseH2Io>),
}

/// A byte stream carrying length-prefixed binary frames (TCP, or the QUIC
/// stream).
struct TcpIo<S = TcpStream> {
    stream: S,
    buf: BytesMut,
}

/// A QUIC connection and its framed stream.
struct QuicIo {
    conn: quinn::Connection,
    framed: TcpIo<tokio::io::Join<quinn::RecvStream, quinn::SendStream>>,
}

/// A client token for `user`, valid until `exp` (Unix seconds), with no
/// device and no channel list.
pub(crate) fn mint_token(
    secret: &[u8],
    user: String,
    exp: u64,
) -> Result<String, proto::token::TokenError> {
    let claims = proto::token::Claims {
        sub: user,
        exp,
        dev: None,
        channels: None,
        send: None,
        publish: None,
    };
    proto::token::mint(&claims, secret)
}

/// Connects to `ep` (from `source` when given) and authenticates with `token`,
/// each step within `step_timeout`.
pub(crate) async fn connect_and_auth(
    ep: &Endpoint,
    source: Option<IpAddr>,
    token: &str,
    step_timeout: Duration,
) -> Result<(Conn, AuthOk), ClientError> {
    let mut conn = tokio::time::timeout(step_timeout, Conn::connect(ep, source))
        .await
        .map_err(|_| ClientError::Timeout("connect"))??;
    let ok = tokio::time::timeout(step_timeout, conn.auth(token))
        .await
        .map_err(|_| ClientError::Timeout("auth"))??;
    Ok((conn, ok))
}

impl Conn {
    /// Opens the socket and, for WebSocket, performs the upgrade (for SSE
    /// the request is sent by [`auth_from`](Conn::auth_from): it carries the
    /// token).
    pub(crate) async fn connect(
        ep: &Endpoint,
        source: Option<IpAddr>,
    ) -> Result<Conn, ClientError> {
        if let Some(dialer) = &ep.quic {
            let q = dialer.connect(ep.addr, source).await.map_err(|e| match e {
                DialError::Bind(e) => ClientError::Bind(e),
                DialError::Connect(e) => ClientError::Connect(io::Error::other(e)),
                DialError::Handshake(e) => ClientError::Handshake(e),
            })?;
            let io = Io::Quic(Box::new(QuicIo {
                conn: q.conn,
                framed: TcpIo {
                    stream: q.io,
                    buf: BytesMut::with_capacity(TCP_READ_BUF),
                },
            }));
            return Ok(Conn { io });
        }
        if let Some(dialer) = &ep.h2 {
            let io = SseH2Io::connect(dialer.clone(), source).await?;
            return Ok(Conn {
                io: Io::SseH2(Box::new(io)),
            });
        }
        let stream = connect_tcp(ep.addr, source).await?;
        let io = match ep.transport {
            Transport::Ws => {
                let (ws, _response) = tokio_tungstenite::client_async_with_config(
                    &*ep.url,
                    stream,
                    Some(ws_config()),
                )
                .await
                .map_err(|e| ClientError::Handshake(e.to_string()))?;
                Io::Ws(Box::new(ws))
            }
            Transport::Sse => {
                let target = ep.sse.clone().ok_or_else(|| {
                    ClientError::Handshake("sse endpoint without a target".to_string())
                })?;
                Io::Sse(SseIo::new(stream, target))
            }
            Transport::SseH2 => {
                return Err(ClientError::Handshake(
                    "sse-h2 endpoint without a dialer".to_string(),
                ))
            }
            Transport::Tcp | Transport::Quic => Io::Tcp(TcpIo {
                stream,
                buf: BytesMut::with_capacity(TCP_READ_BUF),
            }),
        };
        Ok(Conn { io })
    }

    /// Sends the auth frame and waits for `auth_ok`.
    pub(crate) async fn auth(&mut self, token: &str) -> Result<AuthOk, ClientError> {
        self.auth_from(token, None).await
    }

    /// Sends the auth frame, resuming after `last_id` when given (the server
    /// replays stored messages after it), and waits for `auth_ok`. On SSE the
    /// request is the auth frame: it is sent now, with the token and
    /// `last_id` in its query, and a refusal before the stream is mapped as
    /// [`crate::sse`] says (401: [`ClientError::AuthRefused`]).
    pub(crate) async fn auth_from(
        &mut self,
        token: &str,
        last_id: Option<MsgId>,
    ) -> Result<AuthOk, ClientError> {
        if let Io::Sse(s) = &mut self.io {
            // Boxed: it runs once, and must not size every connection's task.
            Box::pin(s.open(token, last_id)).await?;
        } else if let Io::SseH2(s) = &mut self.io {
            Box::pin(s.open(token, last_id)).await?;
        } else {
            self.send(&ClientFrame::Auth {
                seq: Some(1),
                token: token.to_string(),
                last_id,
                device: None,
            })
            .await?;
        }
        for _ in 0..MAX_FRAMES_BEFORE_AUTH_OK {
            match self.recv().await {
                Event::Frame(ServerFrame::AuthOk {
                    conn, heartbeat, ..
                }) => return Ok(AuthOk { conn, heartbeat }),
                Event::Frame(ServerFrame::Error { code, message, .. }) => {
                    return Err(ClientError::AuthRefused(format!(
                        "{}: {message}",
                        code.as_str()
                    )))
                }
                Event::Frame(_) => {}
                Event::Undecodable(e) => return Err(ClientError::Protocol(e)),
                Event::Closed(Closed::Code(4001, reason)) => {
                    return Err(ClientError::AuthRefused(format!("close 4001 {reason}")))
                }
                Event::Closed(c) => return Err(ClientError::ClosedDuringAuth(c)),
            }
        }
        Err(ClientError::Protocol("no auth_ok".to_string()))
    }

    /// Whether the transport carries the client's `ping`s. An SSE client
    /// cannot send after its request: the server's comments keep the stream
    /// alive, and a `ping` sent there is a no-op.
    pub(crate) fn sends_pings(&self) -> bool {
        !matches!(self.io, Io::Sse(_) | Io::SseH2(_))
    }

    /// Sends one frame (JSON text on WebSocket, length-prefixed binary on
    /// TCP). On SSE nothing can be sent: a `ping` succeeds without sending
    /// (the server keeps the stream alive), any other frame is an error.
    pub(crate) async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        match &mut self.io {
            Io::Sse(_) | Io::SseH2(_) => match frame {
                ClientFrame::Ping { .. } => Ok(()),
                other => Err(ClientError::Send(format!(
                    "server-sent events carry nothing from the client after its request: \
                     cannot send {} (the token, channels and last_id go in the request)",
                    client_op(other)
                ))),
            },
            Io::Ws(ws) => {
                let mut out = Vec::with_capacity(64);
                proto::json::encode_client(frame, &mut out);
                let text = String::from_utf8(out)
                    .map_err(|_| ClientError::Send("json encoder produced invalid utf-8".into()))?;
                ws.send(Message::text(text))
                    .await
                    .map_err(|e| ClientError::Send(e.to_string()))
            }
            Io::Tcp(t) => t.send(frame).await,
            Io::Quic(q) => q.framed.send(frame).await,
        }
    }

    /// Waits for the next frame. Cancel-safe: a `recv` dropped in a
    /// `select!` loses nothing.
    pub(crate) async fn recv(&mut self) -> Event {
        match &mut self.io {
            Io::Ws(ws) => recv_ws(ws).await,
            Io::Tcp(t) => t.recv().await,
            Io::Quic(q) => match q.framed.recv().await {
                Event::Closed(Closed::Io(e)) => Event::Closed(quic_closed(&q.conn, e)),
                ev => ev,
            },
            Io::Sse(s) => s.recv().await,
            Io::SseH2(s) => s.recv().await,
        }
    }

    /// Closes cleanly (WebSocket close 1000 / TCP, SSE or QUIC stream
    /// shutdown, then a QUIC close 0) and waits up to `wait` for the
    /// server's side of the close.
    pub(crate) async fn close(self, wait: Duration) {
        match self.io {
            Io::Ws(mut ws) => {
                let _ = tokio::time::timeout(wait, async {
                    let frame = CloseFrame {
                        code: WsCloseCode::Normal,
                        reason: "bench done".into(),
                    };
                    if ws.send(Message::Close(Some(frame))).await.is_err() {
                        return;
                    }
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
            Io::Tcp(mut t) => t.close(wait).await,
            Io::Sse(mut s) => s.close(wait).await,
            Io::SseH2(s) => s.close(),
            Io::Quic(mut q) => {
                q.framed.close(wait).await;
                q.conn.close(0u32.into(), b"bench done");
            }
        }
    }
}

/// Why a QUIC stream ended with an I/O error: the room's close code when
/// it closed the connection with one (a close code that came before its
/// final error frame could be read), otherwise the error.
fn quic_closed(conn: &quinn::Connection, error: String) -> Closed {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(ac)) => {
            match u16::try_from(ac.error_code.into_inner()) {
                Ok(0) => Closed::NoCode,
                Ok(code) => Closed::Code(code, String::from_utf8_lossy(&ac.reason).into_owned()),
                Err(_) => Closed::Io(error),
            }
        }
        Some(quinn::ConnectionError::TimedOut) => Closed::Io("quic idle timeout".to_string()),
        _ => Closed::Io(error),
    }
}

async fn recv_ws(ws: &mut WebSocketStream<TcpStream>) -> Event {
    loop {
        let msg = match ws.next().await {
            None => return Event::Closed(Closed::Eof),
            Some(Ok(m)) => m,
            Some(Err(
                WsError::ConnectionClosed
                | WsError::AlreadyClosed
                | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
            )) => return Event::Closed(Closed::Eof),
            Some(Err(e)) => return Event::Closed(Closed::Io(e.to_string())),
        };
        return match msg {
            Message::Text(t) => decoded(proto::json::decode_server(t.as_bytes())),
            Message::Binary(b) => decoded(proto::binary::decode_server(&b)),
            Message::Close(Some(cf)) => {
                Event::Closed(Closed::Code(u16::from(cf.code), cf.reason.to_string()))
            }
            Message::Close(None) => Event::Closed(Closed::NoCode),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
    }
}

/// A client frame's `op`, for messages.
fn client_op(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Auth { .. } => "auth",
        ClientFrame::Ping { .. } => "ping",
        ClientFrame::Sub { .. } => "sub",
        ClientFrame::Unsub { .. } => "unsub",
        ClientFrame::Ack { .. } => "ack",
        ClientFrame::Refresh { .. } => "refresh",
        ClientFrame::Send { .. } => "send",
        ClientFrame::Pub { .. } => "pub",
        ClientFrame::Presence { .. } => "presence",
    }
}

/// A TCP connection to `addr` from `source` (any local address when
/// `None`), with Nagle off: frames are small and latency is what we measure.
pub(crate) async fn connect_tcp(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> Result<TcpStream, ClientError> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(ClientError::Connect)?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(ClientError::Bind)?;
    }
    let stream = sock.connect(addr).await.map_err(ClientError::Connect)?;
    stream.set_nodelay(true).map_err(ClientError::Connect)?;
    Ok(stream)
}

/// The event of one binary frame's body from a TCP connection; the close
/// code rides on the final error frame.
pub(crate) fn tcp_event(body: &[u8]) -> Event {
    match proto::binary::decode_server(body) {
        Ok(ServerFrame::Error {
            close: Some(code),
            code: err,
            message,
            ..
        }) => Event::Closed(Closed::Code(
            code.as_u16(),
            format!("{}: {message}", err.as_str()),
        )),
        other => decoded(other),
    }
}

/// A decoded frame, or why it did not decode.
pub(crate) fn decoded(r: Result<ServerFrame, proto::DecodeError>) -> Event {
    match r {
        Ok(f) => Event::Frame(f),
        Err(e) => Event::Undecodable(e.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TcpIo<S> {
    async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(64);
        proto::binary::encode_client_framed(frame, &mut out);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| ClientError::Send(e.to_string()))
    }

    /// Shuts the write side and waits up to `wait` for the server's end.
    async fn close(&mut self, wait: Duration) {
        let _ = tokio::time::timeout(wait, async {
            if self.stream.shutdown().await.is_err() {
                return;
            }
            let mut scratch = [0u8; 512];
            while let Ok(n) = self.stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    async fn recv(&mut self) -> Event {
        loop {
            if let Some(ev) = self.take_frame() {
                return ev;
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return Event::Closed(Closed::Eof),
                Ok(_) => {}
                Err(e) => return Event::Closed(Closed::Io(e.to_string())),
            }
        }
    }

    /// One complete frame from the buffer, if there is one; reserves room
    /// for the rest otherwise.
    fn take_frame(&mut self) -> Option<Event> {
        let body = match proto::binary::split_frame(&mut self.buf, MAX_FRAME) {
            Err(e) => return Some(Event::Closed(Closed::Io(format!("bad frame length: {e}")))),
            Ok(None) => {
                self.buf.reserve(64);
                return None;
            }
            Ok(Some(body)) => body,
        };
        Some(tcp_event(&body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testsrv::{self, Behavior, SECRET};
    use std::sync::atomic::Ordering::Relaxed;

    fn token(user: &str, secret: &str) -> String {
        let claims = proto::token::Claims {
            sub: user.to_string(),
            exp: crate::now_unix_ns() / 1_000_000_000 + 600,
            dev: None,
            channels: None,
            send: None,
            publish: None,
        };
        proto::token::mint(&claims, secret.as_bytes()).unwrap()
    }

    async fn endpoint(fake: &testsrv::Fake, t: Transport) -> Endpoint {
        Endpoint::resolve(t, &fake.ws_url, &fake.tcp_addr, &QuicArgs::default())
            .await
            .unwrap()
    }

    /// Waits (bounded) until `f` holds.
    async fn eventually(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..250 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    async fn auth_ping_close(t: Transport) {
        let fake = testsrv::start(Behavior::default()).await;
        let ep = endpoint(&fake, t).await;
        let (mut conn, ok) =
            connect_and_auth(&ep, None, &token("u1", SECRET), Duration::from_secs(5))
                .await
                .unwrap();
        assert_eq!(ok.heartbeat, 1);
        assert_eq!(ok.conn, ConnId(7));
        conn.send(&ClientFrame::Ping { seq: Some(9) })
            .await
            .unwrap();
        match conn.recv().await {
            Event::Frame(ServerFrame::Pong { seq: Some(9) }) => {}
            other => panic!("expected pong, got {other:?}"),
        }
        conn.close(Duration::from_secs(5)).await;
        assert!(eventually(|| fake.clean_closes.load(Relaxed) == 1).await);
    }

    #[tokio::test]
    async fn ws_auth_ping_close() {
        auth_ping_close(Transport::Ws).await;
    }

    #[tokio::test]
    async fn tcp_auth_ping_close() {
        auth_ping_close(Transport::Tcp).await;
    }

    async fn bad_token_is_auth_failure(t: Transport) {
        let fake = testsrv::start(Behavior::default()).await;
        let ep = endpoint(&fake, t).await;
        let err = connect_and_auth(&ep, None, &token("u1", "wrong"), Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::AuthRefused(_)), "{err}");
        assert!(err.is_auth());
        assert_eq!(err.key(), "auth refused");
    }

    #[tokio::test]
    async fn ws_bad_token() {
        bad_token_is_auth_failure(Transport::Ws).await;
    }

    #[tokio::test]
    async fn tcp_bad_token() {
        bad_token_is_auth_failure(Transport::Tcp).await;
    }

    #[tokio::test]
    async fn sse_bad_token() {
        // 401 before the stream: the same failure as a refused `auth`.
        bad_token_is_auth_failure(Transport::Sse).await;
    }

    #[tokio::test]
    async fn sse_auth_events_close() {
        let fake = testsrv::start(Behavior::default()).await;
        let ep = endpoint(&fake, Transport::Sse).await;
        let (mut conn, ok) =
            connect_and_auth(&ep, None, &token("u1", SECRET), Duration::from_secs(5))
                .await
                .unwrap();
        assert_eq!((ok.conn, ok.heartbeat), (ConnId(7), 1));
        assert!(!conn.sends_pings());
        // A ping is a no-op; anything else cannot be sent.
        conn.send(&ClientFrame::Ping { seq: Some(1) })
            .await
            .unwrap();
        let err = conn
            .send(&ClientFrame::Ack {
                seq: None,
                id: MsgId(1),
            })
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("cannot send ack"), "{err}");
        assert_eq!(fake.pings.load(Relaxed), 0);
        // The server's comment arrives as a pong.
        match conn.recv().await {
            Event::Frame(ServerFrame::Pong { seq: None }) => {}
            other => panic!("expected the comment, got {other:?}"),
        }
        let msg = ServerFrame::Msg(proto::MsgFrame {
            id: MsgId(41),
            ts: 5,
            channel: None,
            data: bytes::Bytes::from_static(b"{\n\"k\": [1,\n2]}"),
            sender: None,
        });
        assert_eq!(fake.deliver("u1", &msg), 1);
        let got = loop {
            match conn.recv().await {
                Event::Frame(ServerFrame::Pong { .. }) => continue,
                Event::Frame(ServerFrame::Msg(m)) => break m,
                other => panic!("expected the message, got {other:?}"),
            }
        };
        assert_eq!((got.id, got.ts), (MsgId(41), 5));
        assert_eq!(&got.data[..], b"{\n\"k\": [1,\n2]}");
        conn.close(Duration::from_secs(5)).await;
        assert!(eventually(|| fake.clean_closes.load(Relaxed) == 1).await);
    }

    #[tokio::test]
    async fn sse_refusals_are_handshake_failures() {
        for status in [503, 429] {
            let fake = testsrv::start(Behavior {
                sse_refuse: Some(status),
                ..Behavior::default()
            })
            .await;
            let ep = endpoint(&fake, Transport::Sse).await;
            let err = connect_and_auth(&ep, None, &token("u1", SECRET), Duration::from_secs(5))
                .await
                .err()
                .unwrap();
            assert!(matches!(err, ClientError::Handshake(_)), "{err}");
            assert!(!err.is_auth());
            let text = err.to_string();
            assert!(text.contains(&status.to_string()), "{text}");
            assert!(text.contains("refused by the test"), "{text}");
        }
    }

    #[tokio::test]
    async fn server_close_code_is_reported() {
        let fake = testsrv::start(Behavior {
            kick_after: Some(Duration::from_millis(50)),
            ..Behavior::default()
        })
        .await;
        for t in [Transport::Ws, Transport::Tcp, Transport::Sse] {
            let ep = endpoint(&fake, t).await;
            let (mut conn, _) =
                connect_and_auth(&ep, None, &token("u1", SECRET), Duration::from_secs(5))
                    .await
                    .unwrap();
            // WebSocket: the error frame, then the close frame. TCP: the
            // error frame carries the close code. SSE: an error event, then
            // a close event (comments may come before).
            let closed = loop {
                match conn.recv().await {
                    Event::Frame(ServerFrame::Error { .. } | ServerFrame::Pong { .. }) => continue,
                    Event::Closed(c) => break c,
                    other => panic!("unexpected {other:?}"),
                }
            };
            match &closed {
                Closed::Code(4003, _) => {}
                other => panic!("{t:?}: expected close 4003, got {other:?}"),
            }
            assert_eq!(closed.key(), "4003");
        }
    }

    #[tokio::test]
    async fn refused_connect_is_connect_failure() {
        // A port that is bound but not listening: connects are refused, and
        // no other test can be handed the port while this socket holds it
        // (binding and dropping a listener let a parallel test reuse it).
        let holder = tokio::net::TcpSocket::new_v4().unwrap();
        holder.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = holder.local_addr().unwrap().port();
        let ep = Endpoint::resolve(
            Transport::Ws,
            &format!("ws://127.0.0.1:{port}/ws"),
            "",
            &QuicArgs::default(),
        )
        .await
        .unwrap();
        let err = connect_and_auth(&ep, None, "t", Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::Connect(_)), "{err}");
        assert!(!err.is_auth());
    }

    #[tokio::test]
    async fn binds_the_source_address() {
        let fake = testsrv::start(Behavior::default()).await;
        let ep = endpoint(&fake, Transport::Ws).await;
        let src: IpAddr = [127, 0, 0, 2].into();
        let (conn, _) =
            connect_and_auth(&ep, Some(src), &token("u1", SECRET), Duration::from_secs(5))
                .await
                .unwrap();
        assert_eq!(fake.peers.lock().first().map(SocketAddr::ip), Some(src));
        conn.close(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn resolve_refuses_other_schemes() {
        for bad in [
            "wss://127.0.0.1:1/ws",
            "http://127.0.0.1:1/",
            "not a url",
            "ws:///ws",
        ] {
            assert!(
                Endpoint::resolve(Transport::Ws, bad, "", &QuicArgs::default())
                    .await
                    .is_err(),
                "{bad}"
            );
        }
        assert!(
            Endpoint::resolve(Transport::Tcp, "", "nope", &QuicArgs::default())
                .await
                .is_err()
        );
        // SSE takes the --ws url, whose path must end in /ws.
        for bad in ["http://127.0.0.1:1/ws", "ws://127.0.0.1:1/sub/x"] {
            assert!(
                Endpoint::resolve(Transport::Sse, bad, "", &QuicArgs::default())
                    .await
                    .is_err(),
                "{bad}"
            );
        }
        let ep = Endpoint::resolve(Transport::Ws, "ws://127.0.0.1/ws", "", &QuicArgs::default())
            .await
            .unwrap();
        assert_eq!(ep.addr().port(), 80);
    }
}
