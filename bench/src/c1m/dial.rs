//! A `c1m` worker's connection without a WebSocket library: connect,
//! upgrade (WebSocket) by hand, authenticate and subscribe on a tokio
//! socket, then hand the bare socket and any bytes already read to the
//! [`super::holder`] thread, which keeps no more per connection than the
//! socket, a few ids and the rest of a frame that arrived in pieces.
//!
//! The framing is the client side of the pushgate protocol: JSON text in
//! masked WebSocket frames (`ws`), or length-prefixed binary frames
//! (`tcp`). Server WebSocket frames are unmasked and, from pushgate, never
//! fragmented; a fragmented one ends the connection as an i/o error.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use proto::{ClientFrame, MsgId, ServerFrame};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

use crate::client::{connect_tcp, decoded, tcp_event, ClientError, Closed, Event};

/// Largest frame accepted from the server.
pub(crate) const MAX_FRAME: usize = proto::DEFAULT_MAX_FRAME;
/// Largest HTTP response head accepted for the upgrade.
const MAX_HEAD: usize = 8 * 1024;
/// Frames read while waiting for `auth_ok` before giving up.
const MAX_FRAMES_BEFORE_AUTH_OK: usize = 16;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// How frames are carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// WebSocket, JSON text frames.
    Ws,
    /// Plain TCP, length-prefixed binary frames.
    Tcp,
}

/// Where one room is, and for WebSocket what to ask it for.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The room's socket address.
    pub(crate) addr: SocketAddr,
    /// `Host` header value (WebSocket).
    host: String,
    /// Request path (WebSocket).
    path: String,
}

impl Target {
    /// A WebSocket target from its `ws://host:port/path` URL.
    pub(crate) fn ws(addr: SocketAddr, url: &str) -> anyhow::Result<Target> {
        let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse()?;
        let host = uri
            .authority()
            .map(ToString::to_string)
            .ok_or_else(|| anyhow::anyhow!("{url:?} has no host"))?;
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), ToString::to_string);
        Ok(Target { addr, host, path })
    }

    /// A TCP target.
    pub(crate) fn tcp(addr: SocketAddr) -> Target {
        Target {
            addr,
            host: String::new(),
            path: String::new(),
        }
    }
}

/// An authenticated, subscribed connection ready to be held.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The socket, non-blocking.
    pub(crate) stream: std::net::TcpStream,
    /// Bytes read after `auth_ok` (the start of a replay, say).
    pub(crate) leftover: Vec<u8>,
    /// The heartbeat interval `auth_ok` asked for, seconds.
    pub(crate) heartbeat: u32,
}

/// What one subscription asks for.
pub(crate) struct Login<'a> {
    /// The client token.
    pub(crate) token: &'a str,
    /// Resume after this id.
    pub(crate) last_id: Option<MsgId>,
    /// Channel to subscribe to.
    pub(crate) channel: Option<&'a str>,
}

/// Connects to `target` (from `source` when given) within `step`, upgrades
/// (WebSocket), then authenticates and subscribes within another `step`.
pub(crate) async fn open(
    target: &Target,
    framing: Framing,
    source: Option<IpAddr>,
    login: &Login<'_>,
    step: Duration,
) -> Result<Opened, ClientError> {
    let mut buf = Vec::with_capacity(512);
    let mut stream = tokio::time::timeout(step, async {
        let stream = connect_tcp(target.addr, source).await?;
        upgrade(stream, target, framing, &mut buf).await
    })
    .await
    .map_err(|_| ClientError::Timeout("connect"))??;
    let heartbeat = tokio::time::timeout(step, auth(&mut stream, framing, login, &mut buf))
        .await
        .map_err(|_| ClientError::Timeout("auth"))??;
    let stream = stream
        .into_std()
        .map_err(|e| ClientError::Send(e.to_string()))?;
    buf.shrink_to_fit();
    Ok(Opened {
        stream,
        leftover: buf,
        heartbeat,
    })
}

/// The WebSocket upgrade; bytes after the response head stay in `buf`.
async fn upgrade(
    mut stream: TcpStream,
    target: &Target,
    framing: Framing,
    buf: &mut Vec<u8>,
) -> Result<TcpStream, ClientError> {
    if framing == Framing::Tcp {
        return Ok(stream);
    }
    let key = generate_key();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.path, target.host
    );
    let handshake = |e: String| ClientError::Handshake(e);
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| handshake(e.to_string()))?;
    let end = loop {
        if let Some(end) = crate::floor::ws::head_end(buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD {
            return Err(handshake("response head too large".into()));
        }
        if read_more(&mut stream, buf)
            .await
            .map_err(|e| handshake(e.to_string()))?
            == 0
        {
            return Err(handshake("closed during the upgrade".into()));
        }
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| handshake("head not UTF-8".into()))?;
    let status = head.split("\r\n").next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("101") {
        return Err(handshake(format!("answered {status:?}")));
    }
    let accept = crate::floor::ws::header(head, "sec-websocket-accept");
    if accept != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(handshake("wrong Sec-WebSocket-Accept".into()));
    }
    buf.drain(..end);
    Ok(stream)
}

/// Reads what is there into `buf` (at least one byte unless the stream ended).
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let start = buf.len();
    buf.resize(start + 512, 0);
    let r = stream.read(&mut buf[start..]).await;
    buf.truncate(start + *r.as_ref().unwrap_or(&0));
    r
}

/// Sends `auth`, waits for `auth_ok` (the heartbeat it asks for), sends `sub`.
async fn auth(
    stream: &mut TcpStream,
    framing: Framing,
    login: &Login<'_>,
    buf: &mut Vec<u8>,
) -> Result<u32, ClientError> {
    let send = |e: io::Error| ClientError::Send(e.to_string());
    let mut out = Vec::with_capacity(256);
    encode(
        &ClientFrame::Auth {
            seq: Some(1),
            token: login.token.to_string(),
            last_id: login.last_id,
            device: None,
        },
        framing,
        &mut out,
    );
    stream.write_all(&out).await.map_err(send)?;
    let mut frames = 0;
    let heartbeat = loop {
        match next(buf, framing) {
            Err(e) => return Err(ClientError::Protocol(e)),
            Ok(None) => match read_more(stream, buf).await {
                Ok(0) => return Err(ClientError::ClosedDuringAuth(Closed::Eof)),
                Ok(_) => continue,
                Err(e) => return Err(ClientError::ClosedDuringAuth(Closed::Io(e.to_string()))),
            },
            Ok(Some((item, used))) => {
                buf.drain(..used);
                frames += 1;
                if frames > MAX_FRAMES_BEFORE_AUTH_OK {
                    return Err(ClientError::Protocol("no auth_ok".to_string()));
                }
                match item {
                    Item::Event(Event::Frame(ServerFrame::AuthOk { heartbeat, .. })) => {
                        break heartbeat
                    }
                    Item::Event(Event::Frame(ServerFrame::Error { code, message, .. })) => {
                        return Err(ClientError::AuthRefused(format!(
                            "{}: {message}",
                            code.as_str()
                        )))
                    }
                    Item::Event(Event::Undecodable(e)) => return Err(ClientError::Protocol(e)),
                    Item::Event(Event::Closed(Closed::Code(4001, reason))) => {
                        return Err(ClientError::AuthRefused(format!("close 4001 {reason}")))
                    }
                    Item::Event(Event::Closed(c)) => return Err(ClientError::ClosedDuringAuth(c)),
                    Item::Event(Event::Frame(_)) | Item::Pong | Item::Ping(_) => {}
                }
            }
        }
    };
    if let Some(channel) = login.channel {
        out.clear();
        encode(
            &ClientFrame::Sub {
                seq: None,
                channel: channel.to_string(),
                last_id: None,
                presence: false,
            },
            framing,
            &mut out,
        );
        stream.write_all(&out).await.map_err(send)?;
    }
    Ok(heartbeat)
}

/// Appends `frame` as the client sends it: a masked WebSocket text frame
/// carrying JSON, or a length-prefixed binary frame.
pub(crate) fn encode(frame: &ClientFrame, framing: Framing, out: &mut Vec<u8>) {
    match framing {
        Framing::Tcp => proto::binary::encode_client_framed(frame, out),
        Framing::Ws => {
            let mut json = Vec::with_capacity(64);
            proto::json::encode_client(frame, &mut json);
            masked(OP_TEXT, &json, out);
        }
    }
}

/// Appends a masked (client) WebSocket frame.
pub(crate) fn masked(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// The pong answering a WebSocket ping with `payload`.
pub(crate) fn pong(payload: &[u8], out: &mut Vec<u8>) {
    masked(OP_PONG, payload, out);
}

/// One thing read off the connection.
#[derive(Debug)]
pub(crate) enum Item {
    /// A frame, an undecodable one, or the end.
    Event(Event),
    /// A WebSocket ping: answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// A WebSocket pong (ignored).
    Pong,
}

/// The first complete item at the start of `buf` and the bytes it took;
/// `Ok(None)` while it is not all there; `Err` when the stream is broken.
pub(crate) fn next(buf: &[u8], framing: Framing) -> Result<Option<(Item, usize)>, String> {
    match framing {
        Framing::Tcp => next_tcp(buf),
        Framing::Ws => next_ws(buf),
    }
}

fn next_tcp(buf: &[u8]) -> Result<Option<(Item, usize)>, String> {
    let Some((head, len)) =
        proto::binary::frame_len(buf, MAX_FRAME).map_err(|e| format!("bad frame length: {e}"))?
    else {
        return Ok(None);
    };
    let Some(body) = buf.get(head..head + len) else {
        return Ok(None);
    };
    Ok(Some((Item::Event(tcp_event(body)), head + len)))
}

fn next_ws(buf: &[u8]) -> Result<Option<(Item, usize)>, String> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err("reserved bits set".into());
    }
    if b1 & 0x80 != 0 {
        return Err("server frame masked".into());
    }
    let (head, len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (4, usize::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                (
                    10,
                    usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX),
                )
            }
            None => return Ok(None),
        },
        n => (2, usize::from(n)),
    };
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes"));
    }
    let Some(payload) = buf.get(head..head + len) else {
        return Ok(None);
    };
    if b0 & 0x80 == 0 {
        return Err("fragmented message".into());
    }
    let item = match b0 & 0x0f {
        OP_TEXT => Item::Event(decoded(proto::json::decode_server(payload))),
        OP_BINARY => Item::Event(decoded(proto::binary::decode_server(payload))),
        OP_CLOSE => Item::Event(Event::Closed(match payload {
            [a, b, reason @ ..] => Closed::Code(
                u16::from_be_bytes([*a, *b]),
                String::from_utf8_lossy(reason).into_owned(),
            ),
            _ => Closed::NoCode,
        })),
        OP_PING => Item::Ping(payload.to_vec()),
        OP_PONG => Item::Pong,
        op => return Err(format!("opcode {op}")),
    };
    Ok(Some((item, head + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::floor::ws;

    #[test]
    fn masked_frames_unmask_to_their_payload() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            masked(OP_TEXT, &payload, &mut out);
            let ws::Parsed::Frame(h) = ws::parse_header(&out, 1 << 20) else {
                panic!("{len}: no header");
            };
            assert!(h.fin);
            assert_eq!((h.opcode, h.payload_len), (OP_TEXT, len));
            let mut body = out[h.header_len..].to_vec();
            ws::unmask(&mut body, h.mask);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn server_ws_frames_come_out_whole_or_not_at_all() {
        let msg = br#"{"op":"pong"}"#;
        let frame = ws::server_frame(OP_TEXT, msg);
        for cut in 0..frame.len() {
            assert!(next_ws(&frame[..cut]).unwrap().is_none(), "cut {cut}");
        }
        let mut two = frame.clone();
        two.extend_from_slice(&ws::close_frame(4007));
        let (item, used) = next_ws(&two).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert!(matches!(
            item,
            Item::Event(Event::Frame(ServerFrame::Pong { .. }))
        ));
        let (item, _) = next_ws(&two[used..]).unwrap().unwrap();
        assert!(matches!(
            item,
            Item::Event(Event::Closed(Closed::Code(4007, _)))
        ));
        let (item, _) = next_ws(&ws::server_frame(OP_PING, b"hi")).unwrap().unwrap();
        assert!(matches!(item, Item::Ping(p) if p == b"hi"));
        // A fragment, a masked frame, a frame over the limit: broken.
        let mut frag = frame.clone();
        frag[0] &= 0x7f;
        assert!(next_ws(&frag).is_err());
        let mut m = Vec::new();
        masked(OP_TEXT, msg, &mut m);
        assert!(next_ws(&m).is_err());
        let mut big = Vec::new();
        ws::server_header(OP_TEXT, MAX_FRAME + 1, &mut big);
        assert!(next_ws(&big).is_err());
    }

    #[test]
    fn tcp_frames_come_out_whole_and_carry_the_close_code() {
        let mut out = Vec::new();
        proto::binary::encode_server_framed(&ServerFrame::Pong { seq: Some(3) }, &mut out);
        let one = out.len();
        proto::binary::encode_server_framed(
            &ServerFrame::Error {
                seq: None,
                code: proto::ErrorCode::SlowConsumer,
                message: "slow".into(),
                close: Some(proto::CloseCode::SlowConsumer),
            },
            &mut out,
        );
        for cut in 0..one {
            assert!(next_tcp(&out[..cut]).unwrap().is_none(), "cut {cut}");
        }
        let (item, used) = next_tcp(&out).unwrap().unwrap();
        assert_eq!(used, one);
        assert!(matches!(
            item,
            Item::Event(Event::Frame(ServerFrame::Pong { seq: Some(3) }))
        ));
        let (item, used2) = next_tcp(&out[one..]).unwrap().unwrap();
        assert_eq!(one + used2, out.len());
        assert!(
            matches!(item, Item::Event(Event::Closed(Closed::Code(c, _))) if c == proto::CloseCode::SlowConsumer.as_u16())
        );
    }
}
