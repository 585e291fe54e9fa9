//! A transport-level wire client for tests: one connection to a pushgate
//! WebSocket listener (either subprotocol, or none) or TCP listener
//! (length-prefixed binary frames), frame by frame.
//!
//! It only moves units: it sends [`ClientFrame`]s in the transport's
//! encoding (or raw text / bytes), and reads the next server unit
//! ([`Unit`]: a WebSocket text or binary message, a TCP frame body with its
//! length prefix stripped, a close, EOF or a read error). What a test makes
//! of them (JSON values, [`ServerFrame`]s, close-code bookkeeping, checks
//! that a binary connection never gets text) is the test harness's business;
//! [`Unit::frame`] decodes one with `proto`.
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr) {
//! use testkit::wire::{Client, Transport, Unit};
//! let mut c = Client::connect(addr, Transport::WsBin).await;
//! c.send(&proto::ClientFrame::Ping { seq: Some(1) }).await.unwrap();
//! match c.next_unit().await {
//!     Unit::Binary(b) => println!("{:?}", proto::binary::decode_server(&b)),
//!     other => println!("{other:?}"),
//! }
//! # }
//! ```

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use proto::{ClientFrame, ServerFrame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The buffer types of [`Unit::Binary`] and [`read_frame`].
pub use bytes::{Bytes, BytesMut};
/// The WebSocket error of [`ws_handshake`].
pub use tokio_tungstenite::tungstenite::Error as WsError;

/// Largest message, WebSocket frame or TCP frame body the client accepts
/// from the server (64 MiB).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// WebSocket subprotocol of the JSON encoding.
pub const JSON_SUBPROTOCOL: &str = "pushgate.v1.json";

/// WebSocket subprotocol of the binary encoding.
pub const BIN_SUBPROTOCOL: &str = "pushgate.v1.bin";

/// How a client connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket, subprotocol `pushgate.v1.json`.
    WsJson,
    /// WebSocket, subprotocol `pushgate.v1.bin`.
    WsBin,
    /// WebSocket with no subprotocol asked (JSON is the default).
    WsDefault,
    /// TCP, length-prefixed binary frames.
    Tcp,
}

impl Transport {
    /// The subprotocol a WebSocket transport asks for (None for
    /// [`Transport::WsDefault`] and [`Transport::Tcp`]).
    #[must_use]
    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            Transport::WsJson => Some(JSON_SUBPROTOCOL),
            Transport::WsBin => Some(BIN_SUBPROTOCOL),
            Transport::WsDefault | Transport::Tcp => None,
        }
    }

    /// Whether frames travel in the binary encoding (WebSocket-bin, TCP).
    #[must_use]
    pub fn is_binary(self) -> bool {
        matches!(self, Transport::WsBin | Transport::Tcp)
    }

    /// Whether this is a WebSocket transport.
    #[must_use]
    pub fn is_ws(self) -> bool {
        self != Transport::Tcp
    }
}

/// One unit read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// A WebSocket text message.
    Text(String),
    /// A WebSocket binary message, or a TCP frame body (length prefix stripped).
    Binary(Bytes),
    /// A WebSocket close frame (`code` None for a close without a payload).
    Close {
        /// The close code.
        code: Option<u16>,
        /// The close reason (empty without a payload).
        reason: String,
    },
    /// The stream ended (no close frame on WebSocket; EOF on TCP).
    Eof,
    /// A read error (WebSocket protocol or socket error); the connection is
    /// unusable afterwards.
    Error(String),
}

impl Unit {
    /// Decodes a text unit with `proto::json`, a binary one with
    /// `proto::binary`; None for the other units.
    #[must_use]
    pub fn frame(&self) -> Option<Result<ServerFrame, String>> {
        match self {
            Unit::Text(t) => Some(decode_text(t)),
            Unit::Binary(b) => Some(decode_binary(b)),
            _ => None,
        }
    }
}

/// Decodes a JSON server frame with `proto::json`.
///
/// # Errors
/// The decoder's error, as text.
pub fn decode_text(text: &str) -> Result<ServerFrame, String> {
    proto::json::decode_server(text.as_bytes()).map_err(|e| e.to_string())
}

/// Decodes a binary server frame with `proto::binary`.
///
/// # Errors
/// The decoder's error, as text.
pub fn decode_binary(body: &[u8]) -> Result<ServerFrame, String> {
    proto::binary::decode_server(body).map_err(|e| e.to_string())
}

/// `f` in the binary encoding with its length prefix: one TCP frame.
#[must_use]
pub fn tcp_frame(f: &ClientFrame) -> Vec<u8> {
    let mut out = Vec::new();
    proto::binary::encode_client_framed(f, &mut out);
    out
}

/// `body` with its length prefix: one TCP frame.
#[must_use]
pub fn tcp_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    proto::binary::write_len(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// Takes one complete length-prefixed frame off the front of `buf` and
/// returns its body; None while `buf` holds no complete frame.
///
/// # Panics
/// On a bad length prefix (over [`MAX_FRAME`], or malformed).
pub fn take_frame(buf: &mut BytesMut) -> Option<Bytes> {
    proto::binary::split_frame(buf, MAX_FRAME)
        .unwrap_or_else(|e| panic!("server sent a bad length prefix: {e}"))
}

/// Reads the next length-prefixed frame body from `io` into `buf`: None at
/// EOF or on a read error.
///
/// # Panics
/// On a bad length prefix (see [`take_frame`]).
pub async fn read_frame<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> Option<Bytes> {
    loop {
        if let Some(body) = take_frame(buf) {
            return Some(body);
        }
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Opens a WebSocket to `ws://{addr}{path}` on an existing TCP stream,
/// asking for `subprotocol` (accepting server messages up to
/// [`MAX_FRAME`]). Returns the stream and the subprotocol the server chose.
///
/// # Errors
/// The handshake's error (an HTTP refusal is [`WsError::Http`]).
///
/// # Panics
/// When `path` or `subprotocol` do not fit in a request.
pub async fn ws_handshake(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
) -> Result<(WebSocketStream<TcpStream>, Option<String>), WsError> {
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .unwrap_or_else(|e| panic!("bad request ws://{addr}{path}: {e}"));
    if let Some(p) = subprotocol {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(p).unwrap_or_else(|e| panic!("bad subprotocol {p:?}: {e}")),
        );
    }
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (ws, resp) = tokio_tungstenite::client_async_with_config(req, stream, Some(cfg)).await?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    Ok((ws, chosen))
}

enum Conn {
    Ws(Box<WebSocketStream<TcpStream>>),
    Tcp { stream: TcpStream, buf: BytesMut },
}

/// One connection to a WebSocket or TCP listener.
pub struct Client {
    conn: Conn,
    transport: Transport,
    protocol: Option<String>,
}

impl Client {
    /// Connects to `addr` (a WebSocket listener, or the TCP one for
    /// [`Transport::Tcp`]) with TCP_NODELAY, and does the WebSocket handshake
    /// on path `/ws`.
    ///
    /// # Panics
    /// When the connection or the handshake fails.
    pub async fn connect(addr: SocketAddr, t: Transport) -> Client {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {t:?} {addr}: {e}"));
        stream
            .set_nodelay(true)
            .unwrap_or_else(|e| panic!("set_nodelay: {e}"));
        Client::on_stream(stream, addr, t).await
    }

    /// [`Client::connect`] that returns the failure instead of panicking:
    /// for a client that reconnects, to whom a refused or reset connection
    /// (a room draining, restarting) is an ordinary event.
    ///
    /// # Errors
    /// The connect's or the handshake's error, as text.
    pub async fn try_connect(addr: SocketAddr, t: Transport) -> Result<Client, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {t:?} {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("set_nodelay: {e}"))?;
        if t == Transport::Tcp {
            return Ok(Client::from_tcp(stream));
        }
        let proto = t.subprotocol();
        let (ws, chosen) = ws_handshake(stream, addr, "/ws", proto)
            .await
            .map_err(|e| format!("websocket handshake ({t:?}): {e}"))?;
        let mut c = Client::from_ws_transport(ws, t);
        c.protocol = chosen;
        Ok(c)
    }

    /// Wraps an open TCP stream to `addr` (socket options as they are),
    /// doing the WebSocket handshake on path `/ws` for a WebSocket transport.
    ///
    /// # Panics
    /// When the handshake fails.
    pub async fn on_stream(stream: TcpStream, addr: SocketAddr, t: Transport) -> Client {
        if t == Transport::Tcp {
            return Client::from_tcp(stream);
        }
        let proto = t.subprotocol();
        let (ws, chosen) = ws_handshake(stream, addr, "/ws", proto)
            .await
            .unwrap_or_else(|e| panic!("websocket handshake ({t:?}, subprotocol {proto:?}): {e}"));
        let mut c = Client::from_ws_transport(ws, t);
        c.protocol = chosen;
        c
    }

    /// Wraps an open TCP stream to the TCP listener.
    #[must_use]
    pub fn from_tcp(stream: TcpStream) -> Client {
        Client {
            conn: Conn::Tcp {
                stream,
                buf: BytesMut::new(),
            },
            transport: Transport::Tcp,
            protocol: None,
        }
    }

    /// Wraps an open WebSocket that speaks the binary encoding (`bin`) or JSON.
    #[must_use]
    pub fn from_ws(ws: WebSocketStream<TcpStream>, bin: bool) -> Client {
        let t = if bin {
            Transport::WsBin
        } else {
            Transport::WsJson
        };
        Client::from_ws_transport(ws, t)
    }

    fn from_ws_transport(ws: WebSocketStream<TcpStream>, t: Transport) -> Client {
        Client {
            conn: Conn::Ws(Box::new(ws)),
            transport: t,
            protocol: t.subprotocol().map(str::to_owned),
        }
    }

    /// The transport.
    #[must_use]
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The subprotocol the server chose in the handshake (for a client made
    /// by [`Client::connect`] / [`Client::on_stream`]; the one implied by the
    /// transport for a wrapped WebSocket).
    #[must_use]
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Sends `f` in the transport's encoding: a text message (`proto::json`)
    /// on a JSON WebSocket, a binary message on WebSocket-bin, a
    /// length-prefixed frame on TCP.
    ///
    /// # Errors
    /// The write error.
    pub async fn send(&mut self, f: &ClientFrame) -> std::io::Result<()> {
        match self.transport {
            Transport::WsJson | Transport::WsDefault => {
                let mut out = Vec::new();
                proto::json::encode_client(f, &mut out);
                let text = String::from_utf8(out).map_err(std::io::Error::other)?;
                self.send_text(&text).await
            }
            Transport::WsBin => {
                let mut out = Vec::new();
                proto::binary::encode_client(f, &mut out);
                self.send_raw(&out).await
            }
            Transport::Tcp => self.send_raw(&tcp_frame(f)).await,
        }
    }

    /// Sends a WebSocket text message.
    ///
    /// # Errors
    /// The write error.
    ///
    /// # Panics
    /// On TCP.
    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        match &mut self.conn {
            Conn::Ws(ws) => ws
                .send(Message::text(text.to_owned()))
                .await
                .map_err(std::io::Error::other),
            Conn::Tcp { .. } => panic!("send_text on TCP"),
        }
    }

    /// Sends raw bytes: a WebSocket binary message, or the bytes as they are
    /// on TCP.
    ///
    /// # Errors
    /// The write error.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.conn {
            Conn::Ws(ws) => ws
                .send(Message::binary(bytes.to_vec()))
                .await
                .map_err(std::io::Error::other),
            Conn::Tcp { stream, .. } => stream.write_all(bytes).await,
        }
    }

    /// Sends `body` with a correct length prefix (on WebSocket, prefix and
    /// body in one binary message).
    ///
    /// # Errors
    /// The write error.
    pub async fn send_tcp_body(&mut self, body: &[u8]) -> std::io::Result<()> {
        self.send_raw(&tcp_body(body)).await
    }

    /// The next unit from the server (WebSocket pings and pongs skipped).
    /// Cancel-safe: a partly read TCP frame stays buffered.
    ///
    /// # Panics
    /// On a bad TCP length prefix.
    pub async fn next_unit(&mut self) -> Unit {
        match &mut self.conn {
            Conn::Ws(ws) => loop {
                return match ws.next().await {
                    None => Unit::Eof,
                    Some(Err(e)) => Unit::Error(e.to_string()),
                    Some(Ok(Message::Text(t))) => Unit::Text(t.as_str().to_owned()),
                    Some(Ok(Message::Binary(b))) => Unit::Binary(b),
                    Some(Ok(Message::Close(cf))) => Unit::Close {
                        code: cf.as_ref().map(|c| u16::from(c.code)),
                        reason: cf.map(|c| c.reason.to_string()).unwrap_or_default(),
                    },
                    Some(Ok(_)) => continue,
                };
            },
            Conn::Tcp { stream, buf } => loop {
                if let Some(body) = take_frame(buf) {
                    return Unit::Binary(body);
                }
                match stream.read_buf(buf).await {
                    Ok(0) => return Unit::Eof,
                    Err(e) => return Unit::Error(e.to_string()),
                    Ok(_) => {}
                }
            },
        }
    }

    /// Closes politely (WebSocket close / TCP shutdown), ignoring errors.
    pub async fn close(&mut self) {
        match &mut self.conn {
            Conn::Ws(ws) => {
                let _ = (**ws).close(None).await;
            }
            Conn::Tcp { stream, .. } => {
                let _ = stream.shutdown().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proto::{ErrorCode, MsgId};

    #[test]
    fn take_frame_waits_for_a_whole_frame() {
        let f = ClientFrame::Ack {
            seq: None,
            id: MsgId(42),
        };
        let whole = tcp_frame(&f);
        let mut buf = BytesMut::from(&whole[..whole.len() - 1]);
        assert_eq!(take_frame(&mut buf), None);
        buf.extend_from_slice(&whole[whole.len() - 1..]);
        buf.extend_from_slice(&tcp_body(b"xy"));
        let mut body = Vec::new();
        proto::binary::encode_client(&f, &mut body);
        assert_eq!(take_frame(&mut buf).unwrap(), body);
        assert_eq!(take_frame(&mut buf).unwrap(), &b"xy"[..]);
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn tcp_units_are_frame_bodies_then_eof() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut out = Vec::new();
            proto::binary::encode_server(
                &ServerFrame::Error {
                    seq: None,
                    code: ErrorCode::Draining,
                    message: "bye".into(),
                    close: None,
                },
                &mut out,
            );
            // Split mid-frame: the client must reassemble it.
            let framed = tcp_body(&out);
            s.write_all(&framed[..2]).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            s.write_all(&framed[2..]).await.unwrap();
        });
        let mut c = Client::connect(addr, Transport::Tcp).await;
        let u = c.next_unit().await;
        match u.frame().unwrap().unwrap() {
            ServerFrame::Error { message, .. } => assert_eq!(message, "bye"),
            other => panic!("{other:?}"),
        }
        server.await.unwrap();
        assert_eq!(c.next_unit().await, Unit::Eof);
    }
}
