//! `--transport sse`: server-sent events, `GET /sse?token=…` on the room's
//! WebSocket listener, then a `text/event-stream` that only the server
//! writes (docs/PROTOCOL.md, section 1, "SSE").
//!
//! Design:
//! - **The request is the `auth` frame.** [`SseIo::open`] (called by
//!   [`Conn::auth_from`](crate::client::Conn::auth_from)) sends `GET` with
//!   `token=` and `last_id=`, reads the response head, then the events until
//!   `auth_ok`. A refusal before the stream maps to the errors the other
//!   transports give: 401 (missing, invalid or expired token) is
//!   [`ClientError::AuthRefused`], as a WebSocket `auth` answered with
//!   `auth_failed`; any other status (503 room full, 429 per-address limit,
//!   400) is [`ClientError::Handshake`], as a WebSocket upgrade answered with
//!   that status.
//! - **No frames from the client.** Channels would go in the request
//!   (`channels=`), but no command that takes `--transport sse` subscribes
//!   (`bench idle` does not; `c1m`, which does, refuses SSE), so there is
//!   no `sub` path: [`Conn::send`](crate::client::Conn::send) of a `ping` is
//!   a no-op that succeeds (the server's comments keep the stream alive, and
//!   `bench idle` does not even schedule pings, see
//!   [`Conn::sends_pings`](crate::client::Conn::sends_pings)); any other
//!   frame is an error that says so.
//! - **Events are the other transports' [`Event`]s.** Unnamed events
//!   (messages) and named ones (`auth_ok`, `sub_ok`, `pong`, `error`) carry
//!   a JSON server frame, decoded with the WebSocket path's decoder; `close`
//!   (`{"code","reason"}`) becomes [`Closed::Code`]; a block of comments
//!   only (the server's `: ping` every heartbeat interval) becomes a `pong`:
//!   it is the server's sign of life, the SSE counterpart of a pong, so heartbeat
//!   counts and `bench idle`'s CPU per heartbeat work unchanged. Blocks
//!   without data (`retry: 1000`) are skipped, as `EventSource` does. Lines
//!   end with `\n` or `\r\n` (the room writes `\n`; a lone `\r` is not
//!   taken as a line end).
//! - **Small when idle.** Reads wait on the socket's own readiness
//!   (`poll_read_ready`: no waiter in the future) and then copy through a
//!   stack chunk (no buffer lives across an `await`, so none sizes the
//!   client's task), into a `Vec` that holds only a partial event and is
//!   released whenever it empties: an idle connection holds its socket, an
//!   `Arc` to the request target and an empty `Vec`. The request and the
//!   response head live only in [`SseIo::open`], which the caller boxes.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use proto::{MsgId, ServerFrame};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::client::{decoded, ClientError, Closed, Event};

/// Bytes copied per read (on the stack).
const READ_CHUNK: usize = 2048;
/// Largest response head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Most bytes of a refusal's body kept for the error message.
pub(crate) const MAX_BODY: usize = 1024;
/// Largest event accepted: a maximal frame, with room for the `data: `
/// prefixes of the lines its JSON may have been split into.
const MAX_EVENT: usize = 2 * proto::DEFAULT_MAX_FRAME + 1024;

/// Where the event stream is requested: the `Host` header and the path.
#[derive(Debug)]
pub(crate) struct SseTarget {
    pub(crate) host: String,
    pub(crate) path: String,
}

impl SseTarget {
    /// The stream next to a WebSocket endpoint: the URL's authority, and its
    /// path with a final `/ws` replaced by `/sse` (`ws://h:p/ws` →
    /// `http://h:p/sse`; a URL without a path gives `/sse`).
    pub(crate) fn from_ws_url(uri: &Uri) -> anyhow::Result<SseTarget> {
        let host = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| anyhow::anyhow!("websocket url {uri} has no host"))?;
        let p = uri.path();
        let prefix = if p.is_empty() || p == "/" {
            ""
        } else if let Some(prefix) = p.strip_suffix("/ws") {
            prefix
        } else {
            anyhow::bail!(
                "with --transport sse the --ws url's path must end in /ws (the stream is \
                 requested at the same place with /sse): got {p:?}"
            );
        };
        Ok(SseTarget {
            host,
            path: format!("{prefix}/sse"),
        })
    }

    /// The request for `token`, resuming after `last_id`.
    fn request(&self, token: &str, last_id: Option<MsgId>) -> String {
        let mut r = String::with_capacity(128 + token.len());
        r.push_str("GET ");
        r.push_str(&self.path);
        r.push_str("?token=");
        push_query_value(&mut r, token);
        if let Some(id) = last_id {
            let _ = write!(r, "&last_id={}", id.0);
        }
        let _ = write!(
            r,
            " HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
            self.host
        );
        r
    }
}

/// Appends `v` percent-encoded for a query string (everything but RFC 3986
/// unreserved characters; a JWT needs none).
pub(crate) fn push_query_value(out: &mut String, v: &str) {
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// One event stream connection.
pub(crate) struct SseIo {
    stream: TcpStream,
    target: Arc<SseTarget>,
    reader: SseReader,
}

impl SseIo {
    /// A connected socket; nothing is sent until [`open`](SseIo::open).
    pub(crate) fn new(stream: TcpStream, target: Arc<SseTarget>) -> SseIo {
        SseIo {
            stream,
            target,
            reader: SseReader::default(),
        }
    }

    /// Sends the request and reads the response head; the events that came
    /// with it are kept for [`recv`](SseIo::recv).
    pub(crate) async fn open(
        &mut self,
        token: &str,
        last_id: Option<MsgId>,
    ) -> Result<(), ClientError> {
        let req = self.target.request(token, last_id);
        self.stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| ClientError::Send(e.to_string()))?;
        drop(req);
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err(ClientError::Protocol(format!(
                    "sse response head over {MAX_HEAD} bytes"
                )));
            }
            match read_some(&self.stream, Some(&mut buf)).await {
                Ok(0) => return Err(ClientError::ClosedDuringAuth(Closed::Eof)),
                Ok(_) => {}
                Err(e) => return Err(ClientError::ClosedDuringAuth(Closed::Io(e.to_string()))),
            }
        };
        let head = parse_head(&buf[..end])?;
        if head.status == 200 {
            if !head
                .content_type
                .as_deref()
                .is_some_and(|t| t.starts_with("text/event-stream"))
            {
                return Err(ClientError::Protocol(format!(
                    "sse answered 200 with content type {:?}, not text/event-stream",
                    head.content_type.as_deref().unwrap_or("")
                )));
            }
            buf.drain(..end);
            self.reader.push(&buf);
            return Ok(());
        }
        // A refusal: its plain-text body says why (the server closes after it).
        let want = head.content_length.unwrap_or(MAX_BODY).min(MAX_BODY);
        buf.drain(..end);
        while buf.len() < want {
            match read_some(&self.stream, Some(&mut buf)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        buf.truncate(want);
        let body = String::from_utf8_lossy(&buf);
        let body = body.trim();
        Err(match head.status {
            401 => ClientError::AuthRefused(format!("HTTP 401: {body}")),
            s => ClientError::Handshake(format!("HTTP error: {s} {}: {body}", head.reason)),
        })
    }

    /// The next event. Cancel-safe: the only `await` is the wait for
    /// readiness; bytes read are in the reader before anything can cancel.
    pub(crate) async fn recv(&mut self) -> Event {
        loop {
            if let Some(ev) = self.reader.next_event() {
                return ev;
            }
            match read_some(&self.stream, Some(&mut self.reader.buf)).await {
                Ok(0) => return Event::Closed(Closed::Eof),
                Ok(_) => {}
                Err(e) => return Event::Closed(Closed::Io(e.to_string())),
            }
        }
    }

    /// Shuts the write side (the room ends the session at the client's
    /// end of stream) and waits up to `wait` for the room to close.
    pub(crate) async fn close(&mut self, wait: Duration) {
        let _ = tokio::time::timeout(wait, async {
            if self.stream.shutdown().await.is_err() {
                return;
            }
            while let Ok(n) = read_some(&self.stream, None).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

/// Waits until `stream` is readable and reads once through a stack chunk,
/// appending to `into` (or dropping the bytes): the number read, 0 at the
/// end of the stream. Polled with the socket's own readiness
/// (`poll_read_ready`), so the future holds no waiter and no buffer: a few
/// pointers in the task that awaits it.
async fn read_some(stream: &TcpStream, mut into: Option<&mut Vec<u8>>) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_some(stream, cx, into.as_deref_mut())).await
}

fn poll_read_some(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    mut into: Option<&mut Vec<u8>>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        match try_read_into(stream, into.as_deref_mut()) {
            // The readiness was stale: `try_read` cleared it, poll again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}

/// One non-blocking read (synchronous: the chunk never lives in a future).
fn try_read_into(stream: &TcpStream, into: Option<&mut Vec<u8>>) -> io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = stream.try_read(&mut chunk)?;
    if let Some(v) = into {
        v.extend_from_slice(&chunk[..n]);
    }
    Ok(n)
}

/// What the response head says.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    reason: String,
    content_type: Option<String>,
    content_length: Option<usize>,
}

/// Parses an HTTP/1.x response head (through its blank line).
fn parse_head(head: &[u8]) -> Result<Head, ClientError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| ClientError::Protocol("sse response head is not utf-8".to_string()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let bad = || ClientError::Protocol(format!("bad sse status line {status_line:?}"));
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(bad());
    }
    let status = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(bad)?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut h = Head {
        status,
        reason,
        content_type: None,
        content_length: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            h.content_type = Some(value.to_ascii_lowercase());
        } else if name.eq_ignore_ascii_case("content-length") {
            h.content_length = value.parse().ok();
        }
    }
    Ok(h)
}

/// The unparsed part of the stream: at most one partial event (plus events
/// not yet asked for), released whenever it empties.
#[derive(Debug, Default)]
pub(crate) struct SseReader {
    buf: Vec<u8>,
}

impl SseReader {
    /// Appends bytes read.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if one has arrived; blocks that are not
    /// events (`retry:`) are consumed and skipped.
    pub(crate) fn next_event(&mut self) -> Option<Event> {
        loop {
            let Some(end) = block_end(&self.buf) else {
                if self.buf.len() > MAX_EVENT {
                    self.buf = Vec::new();
                    return Some(Event::Closed(Closed::Io(format!(
                        "sse event over {MAX_EVENT} bytes"
                    ))));
                }
                return None;
            };
            let ev = to_event(parse_block(&self.buf[..end]));
            if end == self.buf.len() {
                self.buf = Vec::new();
            } else {
                self.buf.drain(..end);
            }
            if ev.is_some() {
                return ev;
            }
        }
    }
}

/// Where the first block ends (after its blank line), if it is complete.
fn block_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
        let line = &buf[start..start + nl];
        if line.is_empty() || line == b"\r" {
            return Some(start + nl + 1);
        }
        start += nl + 1;
    }
    None
}

/// One block of the stream, parsed as `EventSource` does.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Block<'a> {
    /// Comment lines only: the server's heartbeat.
    Comment,
    /// Nothing to dispatch: no `data:` line (e.g. `retry: 1000`).
    Nothing,
    /// An event: its `event:` name (none for a message) and its `data:`
    /// lines joined with `\n`.
    Event {
        name: Option<&'a [u8]>,
        data: Cow<'a, [u8]>,
    },
}

/// Parses one block (its lines, with or without the blank line ending it).
pub(crate) fn parse_block(block: &[u8]) -> Block<'_> {
    let mut comment = false;
    let mut name = None;
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in block.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.first() == Some(&b':') {
            comment = true;
            continue;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => name = Some(value),
            b"data" => match &mut data {
                None => data = Some(Cow::Borrowed(value)),
                Some(d) => {
                    let d = d.to_mut();
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
            },
            // `id` (the msg frame has its id), `retry`, unknown fields.
            _ => {}
        }
    }
    match data {
        Some(data) => Block::Event { name, data },
        None if comment => Block::Comment,
        None => Block::Nothing,
    }
}

/// The [`Event`] a block stands for; `None` for a block without one.
pub(crate) fn to_event(block: Block<'_>) -> Option<Event> {
    match block {
        Block::Nothing => None,
        Block::Comment => Some(Event::Frame(ServerFrame::Pong { seq: None })),
        Block::Event {
            name: Some(b"close"),
            data,
        } => Some(close_event(&data)),
        // `message` is what an unnamed event is called.
        Block::Event { data, .. } => Some(decoded(proto::json::decode_server(&data))),
    }
}

/// `event: close`, `data: {"code":4005,"reason":"kicked"}`.
fn close_event(data: &[u8]) -> Event {
    #[derive(serde::Deserialize)]
    struct CloseData {
        code: u16,
        #[serde(default)]
        reason: String,
    }
    match serde_json::from_slice::<CloseData>(data) {
        Ok(c) => Event::Closed(Closed::Code(c.code, c.reason)),
        Err(e) => Event::Undecodable(format!("close event: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{ConnId, ErrorCode};

    fn events(stream: &[u8], chunk: usize) -> Vec<Event> {
        let mut r = SseReader::default();
        let mut out = Vec::new();
        for c in stream.chunks(chunk) {
            r.push(c);
            while let Some(ev) = r.next_event() {
                out.push(ev);
            }
        }
        assert!(r.buf.is_empty(), "left over: {:?}", r.buf);
        // Released once empty: an idle connection holds no buffer.
        assert_eq!(r.buf.capacity(), 0);
        out
    }

    const STREAM: &[u8] = b"retry: 1000\n\n\
        event: auth_ok\ndata: {\"op\":\"auth_ok\",\"conn\":\"7\",\"user\":\"u1\",\"room\":\"1\",\"heartbeat\":30}\n\n\
        event: sub_ok\ndata: {\"op\":\"sub_ok\",\"channel\":\"news\"}\n\n\
        : ping\n\n\
        id: 5\ndata: {\"op\":\"msg\",\"id\":5,\"data\":{\ndata: \"a\":1},\"ts\":1}\n\n\
        event: error\ndata: {\"op\":\"error\",\"code\":\"kicked\",\"message\":\"bye\",\"close\":4005}\n\n\
        event: close\ndata: {\"code\":4005,\"reason\":\"kicked\"}\n\n";

    fn check(evs: &[Event]) {
        assert_eq!(evs.len(), 6, "{evs:?}");
        match &evs[0] {
            Event::Frame(ServerFrame::AuthOk {
                conn, heartbeat, ..
            }) => assert_eq!((*conn, *heartbeat), (ConnId(7), 30)),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&evs[1], Event::Frame(ServerFrame::SubOk { channel, .. }) if channel == "news")
        );
        assert!(matches!(
            &evs[2],
            Event::Frame(ServerFrame::Pong { seq: None })
        ));
        match &evs[3] {
            Event::Frame(ServerFrame::Msg(m)) => {
                assert_eq!(m.id, MsgId(5));
                // The two data lines are joined with \n: valid JSON again.
                assert_eq!(&m.data[..], b"{\n\"a\":1}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &evs[4],
            Event::Frame(ServerFrame::Error {
                code: ErrorCode::Kicked,
                ..
            })
        ));
        assert!(
            matches!(&evs[5], Event::Closed(Closed::Code(4005, r)) if r == "kicked"),
            "{:?}",
            evs[5]
        );
    }

    #[test]
    fn a_stream_becomes_events() {
        check(&events(STREAM, STREAM.len()));
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_events() {
        for chunk in [1, 2, 3, 7, 64] {
            check(&events(STREAM, chunk));
        }
    }

    #[test]
    fn crlf_line_ends_are_accepted() {
        let crlf: Vec<u8> = String::from_utf8(STREAM.to_vec())
            .unwrap()
            .replace('\n', "\r\n")
            .into_bytes();
        check(&events(&crlf, 5));
    }

    #[test]
    fn blocks_parse_as_event_source_does() {
        assert_eq!(parse_block(b": ping\n\n"), Block::Comment);
        assert_eq!(parse_block(b"retry: 1000\n\n"), Block::Nothing);
        assert_eq!(parse_block(b"event: x\n\n"), Block::Nothing);
        assert_eq!(parse_block(b"\n"), Block::Nothing);
        // No space after the colon; a second data line; comments among fields.
        assert_eq!(
            parse_block(b"data:a\n: c\ndata:  b\nid: 3\n\n"),
            Block::Event {
                name: None,
                data: Cow::Owned(b"a\n b".to_vec())
            }
        );
        // A field without a colon is a field with an empty value.
        assert_eq!(
            parse_block(b"event: n\ndata\n\n"),
            Block::Event {
                name: Some(&b"n"[..]),
                data: Cow::Borrowed(&b""[..])
            }
        );
        assert_eq!(block_end(b"data: x\n"), None);
        assert_eq!(block_end(b"data: x\n\ndata: y"), Some(9));
        assert_eq!(block_end(b"data: x\r\n\r\n"), Some(11));
    }

    #[test]
    fn bad_events_are_undecodable_not_fatal() {
        let evs = events(b"data: nope\n\nevent: close\ndata: {}\n\n: ping\n\n", 4);
        assert!(matches!(&evs[0], Event::Undecodable(_)), "{evs:?}");
        assert!(matches!(&evs[1], Event::Undecodable(_)), "{evs:?}");
        assert!(matches!(&evs[2], Event::Frame(ServerFrame::Pong { .. })));
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut r = SseReader::default();
        let line = vec![b'x'; MAX_EVENT + 1];
        r.push(b"data: ");
        r.push(&line);
        assert!(matches!(r.next_event(), Some(Event::Closed(Closed::Io(_)))));
        assert_eq!(r.buf.capacity(), 0);
    }

    #[test]
    fn request_and_target() {
        let t = SseTarget::from_ws_url(&"ws://127.0.0.1:7700/ws".parse().unwrap()).unwrap();
        assert_eq!(t.path, "/sse");
        assert_eq!(t.host, "127.0.0.1:7700");
        assert_eq!(
            t.request("a.b-_c", Some(MsgId(42))),
            "GET /sse?token=a.b-_c&last_id=42 HTTP/1.1\r\nHost: 127.0.0.1:7700\r\n\
             Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        );
        assert!(t
            .request("a+b/c=", None)
            .starts_with("GET /sse?token=a%2Bb%2Fc%3D HTTP/1.1\r\n"));
        let t = SseTarget::from_ws_url(&"ws://[::1]:80/push/ws".parse().unwrap()).unwrap();
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("[::1]:80", "/push/sse")
        );
        let t = SseTarget::from_ws_url(&"ws://h".parse().unwrap()).unwrap();
        assert_eq!((t.host.as_str(), t.path.as_str()), ("h", "/sse"));
        assert!(SseTarget::from_ws_url(&"ws://h/sub/x".parse().unwrap()).is_err());
    }

    #[test]
    fn response_heads() {
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.content_type.as_deref(), Some("text/event-stream"));
        let h =
            parse_head(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!((h.status, h.reason.as_str()), (503, "Service Unavailable"));
        assert_eq!(h.content_length, Some(12));
        for bad in [
            &b"SSH-2.0\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{bad:?}");
        }
    }
}
