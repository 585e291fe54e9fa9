//! One connection to a server over any transport: connect (TCP, TLS,
//! WebSocket handshake, QUIC handshake), send a client frame, receive a server
//! frame. Frames are encoded and decoded by `proto` only; this module only
//! delimits them (WebSocket messages, or the varint length prefix of
//! `proto::binary` on TCP, TLS and QUIC).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use proto::{ClientFrame, ServerFrame};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::io::Io;
use crate::quic::QuicEndpoints;
use crate::url::{Scheme, ServerUrl};
use crate::Encoding;

/// WebSocket subprotocol of the JSON encoding.
const SUBPROTOCOL_JSON: &str = "pushgate.v1.json";
/// WebSocket subprotocol of the binary encoding.
const SUBPROTOCOL_BIN: &str = "pushgate.v1.bin";

/// Everything a connection attempt needs besides the URL.
pub(crate) struct Dialer {
    /// WebSocket encoding.
    pub(crate) encoding: Encoding,
    /// Largest frame accepted from the server.
    pub(crate) max_frame: usize,
    /// TLS for `tls://` (no ALPN).
    pub(crate) tls_stream: Arc<rustls::ClientConfig>,
    /// TLS for `wss://` (ALPN `http/1.1`).
    pub(crate) tls_ws: Arc<rustls::ClientConfig>,
    /// The QUIC endpoint(s) and configuration.
    pub(crate) quic: QuicEndpoints,
}

/// How a connection ended, as far as the client could tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Closed {
    /// The close code (WebSocket close code, the `close` of a final error
    /// frame, or the application error code of a QUIC close), when there was one.
    pub(crate) code: Option<u16>,
    /// The close reason or what failed.
    pub(crate) reason: String,
}

impl Closed {
    fn io(what: &str, e: impl std::fmt::Display) -> Closed {
        Closed {
            code: None,
            reason: format!("{what}: {e}"),
        }
    }
}

/// An open connection, before or after auth.
pub(crate) enum Conn {
    /// WebSocket over TCP or TLS.
    Ws {
        ws: Box<WebSocketStream<Box<dyn Io>>>,
        binary: bool,
    },
    /// Length-prefixed binary frames over TCP, TLS or a QUIC stream.
    Stream {
        io: Box<dyn Io>,
        buf: BytesMut,
        max_frame: usize,
        /// The QUIC connection carrying the stream, to read its close reason
        /// and to close it.
        quic: Option<quinn::Connection>,
    },
}

impl Dialer {
    /// Opens a connection to `url` (no timeout here: the caller bounds it).
    pub(crate) async fn connect(&self, url: &ServerUrl) -> Result<Conn, String> {
        match url.scheme() {
            Scheme::Ws | Scheme::Wss => self.connect_ws(url).await,
            Scheme::Tcp | Scheme::Tls => {
                let io = self.connect_stream(url).await?;
                Ok(Conn::Stream {
                    io,
                    buf: BytesMut::new(),
                    max_frame: self.max_frame,
                    quic: None,
                })
            }
            Scheme::Quic => {
                let (conn, io) = self.quic.connect(url).await?;
                Ok(Conn::Stream {
                    io,
                    buf: BytesMut::new(),
                    max_frame: self.max_frame,
                    quic: Some(conn),
                })
            }
        }
    }

    /// TCP, then TLS for the TLS schemes.
    async fn connect_stream(&self, url: &ServerUrl) -> Result<Box<dyn Io>, String> {
        let tcp = TcpStream::connect((url.host(), url.port()))
            .await
            .map_err(|e| format!("connect {}: {e}", url.authority()))?;
        let _ = tcp.set_nodelay(true);
        if !url.scheme().is_tls() {
            return Ok(Box::new(tcp));
        }
        let config = if url.scheme().is_ws() {
            self.tls_ws.clone()
        } else {
            self.tls_stream.clone()
        };
        let name = ServerName::try_from(url.host().to_string())
            .map_err(|e| format!("tls server name {:?}: {e}", url.host()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls handshake with {}: {e}", url.authority()))?;
        Ok(Box::new(tls))
    }

    async fn connect_ws(&self, url: &ServerUrl) -> Result<Conn, String> {
        let io = self.connect_stream(url).await?;
        let binary = self.encoding == Encoding::Binary;
        let mut req = url
            .to_string()
            .into_client_request()
            .map_err(|e| format!("websocket request for {url}: {e}"))?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(if binary {
                SUBPROTOCOL_BIN
            } else {
                SUBPROTOCOL_JSON
            }),
        );
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.max_frame))
            .max_frame_size(Some(self.max_frame));
        let (ws, _resp) = tokio_tungstenite::client_async_with_config(req, io, Some(config))
            .await
            .map_err(|e| format!("websocket handshake with {url}: {e}"))?;
        Ok(Conn::Ws {
            ws: Box::new(ws),
            binary,
        })
    }
}

impl Conn {
    /// Sends one frame and flushes it.
    pub(crate) async fn send(&mut self, frame: &ClientFrame) -> Result<(), Closed> {
        match self {
            Conn::Ws { ws, binary } => {
                let mut body = Vec::with_capacity(64);
                let msg = if *binary {
                    proto::binary::encode_client(frame, &mut body);
                    WsMessage::binary(body)
                } else {
                    proto::json::encode_client(frame, &mut body);
                    let text = String::from_utf8(body)
                        .map_err(|e| Closed::io("json encoder produced invalid utf-8", e))?;
                    WsMessage::text(text)
                };
                ws.send(msg).await.map_err(|e| Closed::io("send", e))
            }
            Conn::Stream { io, .. } => {
                let mut out = Vec::with_capacity(64);
                proto::binary::encode_client_framed(frame, &mut out);
                io.write_all(&out)
                    .await
                    .map_err(|e| Closed::io("send", e))?;
                io.flush().await.map_err(|e| Closed::io("send", e))
            }
        }
    }

    /// Receives the next server frame. Cancel-safe: what was read stays
    /// buffered in `self`.
    pub(crate) async fn recv(&mut self) -> Result<ServerFrame, Closed> {
        match self {
            Conn::Ws { ws, .. } => loop {
                let msg = match ws.next().await {
                    None => {
                        return Err(Closed {
                            code: None,
                            reason: "connection closed".into(),
                        })
                    }
                    Some(Err(e)) => return Err(Closed::io("websocket", e)),
                    Some(Ok(m)) => m,
                };
                let decoded = match msg {
                    WsMessage::Text(t) => proto::json::decode_server(t.as_bytes()),
                    WsMessage::Binary(b) => proto::binary::decode_server(&b),
                    WsMessage::Close(cf) => {
                        return Err(match cf {
                            Some(cf) => Closed {
                                code: Some(u16::from(cf.code)),
                                reason: cf.reason.to_string(),
                            },
                            None => Closed {
                                code: None,
                                reason: "closed without a code".into(),
                            },
                        })
                    }
                    // Control frames: tungstenite answers pings itself.
                    WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
                };
                return decoded.map_err(|e| Closed::io("bad frame from server", e));
            },
            Conn::Stream {
                io,
                buf,
                max_frame,
                quic,
            } => loop {
                if let Some(body) = proto::binary::split_frame(buf, *max_frame)
                    .map_err(|e| Closed::io("bad frame from server", e))?
                {
                    return proto::binary::decode_server(&body)
                        .map_err(|e| Closed::io("bad frame from server", e));
                }
                buf.reserve(512);
                match io.read_buf(buf).await {
                    Ok(0) => return Err(stream_end(quic.as_ref(), None)),
                    Ok(_) => {}
                    Err(e) => return Err(stream_end(quic.as_ref(), Some(e))),
                }
            },
        }
    }

    /// Closes politely, waiting at most `limit`.
    pub(crate) async fn close(self, limit: Duration) {
        match self {
            Conn::Ws { mut ws, .. } => {
                let _ = tokio::time::timeout(limit, (*ws).close(None)).await;
            }
            Conn::Stream { mut io, quic, .. } => {
                let _ = tokio::time::timeout(limit, io.shutdown()).await;
                if let Some(c) = quic {
                    c.close(0u32.into(), b"client closed");
                }
            }
        }
    }
}

/// What ended a byte stream: for QUIC, the application close code (the
/// protocol's close codes are sent that way when the server closes the
/// connection); else EOF or the I/O error.
fn stream_end(quic: Option<&quinn::Connection>, err: Option<io::Error>) -> Closed {
    if let Some(quinn::ConnectionError::ApplicationClosed(ac)) = quic.and_then(|c| c.close_reason())
    {
        let n = ac.error_code.into_inner();
        let code = u16::try_from(n).ok().filter(|c| (4000..5000).contains(c));
        return Closed {
            code,
            reason: String::from_utf8_lossy(&ac.reason).into_owned(),
        };
    }
    match err {
        None => Closed {
            code: None,
            reason: "connection closed".into(),
        },
        Some(e) => Closed::io("read", e),
    }
}
