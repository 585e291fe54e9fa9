//! The opening handshake (RFC 6455 §4.2): read the HTTP request head,
//! decide, answer 101 or an HTTP error with a text for people.
//!
//! The decision ([`decide`]) is sans-IO and unit-tested; [`read_head`] and
//! [`answer`] do the socket part. The request head is read into a buffer
//! that grows with what arrives (at most [`MAX_HEAD`]) and is dropped with
//! the handshake: an idle connection keeps nothing of it. Bytes a client
//! sent after the head (its first frames) are handed to the framing.

use std::fmt;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::{PATH, PROTO_BIN, PROTO_JSON};

/// Longest request head accepted (request line and headers).
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// Most headers a request may have.
const MAX_HEADERS: usize = 32;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 1024;

/// An accepted request: a WebSocket upgrade, or an SSE stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// `GET /ws` with a valid upgrade.
    Ws(Upgrade),
    /// `GET /sse`: the stream's parameters (see [`super::sse`]).
    Sse(Box<super::sse::SseStart>),
}

/// An accepted upgrade.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Upgrade {
    /// The client chose `pushgate.v1.bin`.
    pub(crate) bin: bool,
    /// The 101 response to send.
    pub(crate) response: Vec<u8>,
}

/// A request answered with an HTTP error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reject {
    /// HTTP status code.
    pub(crate) status: u16,
    /// The response body, for people.
    pub(crate) text: &'static str,
}

impl Reject {
    /// An answer with `status` and the plain-text body `text`.
    pub(crate) const fn new(status: u16, text: &'static str) -> Reject {
        Reject { status, text }
    }

    /// The whole HTTP response.
    pub(crate) fn response(self) -> Vec<u8> {
        if self.status == 204 {
            // The CORS preflight of `GET /sse` (see [`SSE_PREFLIGHT`]).
            return b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\
                Access-Control-Allow-Origin: *\r\n\
                Access-Control-Allow-Methods: GET\r\n\
                Access-Control-Allow-Headers: Authorization, Last-Event-ID, Accept, Cache-Control\r\n\
                Access-Control-Max-Age: 86400\r\n\r\n"
                .to_vec();
        }
        let reason = match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let extra = match self.status {
            405 => "Allow: GET\r\n",
            426 => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            _ => "",
        };
        format!(
            "HTTP/1.1 {} {reason}\r\nConnection: close\r\n{extra}\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{}",
            self.status,
            self.text.len(),
            self.text
        )
        .into_bytes()
    }
}

/// Why a handshake failed.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// Reading or writing the socket failed.
    Io(std::io::Error),
    /// The client closed before its request head was complete.
    Closed,
    /// The request was answered with an HTTP error.
    Rejected(Reject),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "i/o: {e}"),
            HandshakeError::Closed => f.write_str("connection closed during the request"),
            HandshakeError::Rejected(r) => write!(f, "answered {}: {}", r.status, r.text),
        }
    }
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

pub(crate) const NOT_FOUND: Reject = Reject::new(
    404,
    "not found: the WebSocket endpoint is /ws, the server-sent events endpoint /sse",
);
const MALFORMED: Reject = Reject::new(400, "malformed HTTP request");
const TOO_LARGE: Reject = Reject::new(431, "request head larger than 8 KiB");
const NOT_GET: Reject = Reject::new(405, "a WebSocket upgrade is a GET request");
const SSE_NOT_GET: Reject = Reject::new(405, "an event stream is opened with GET /sse");
/// The answer to `OPTIONS /sse`, the CORS preflight a browser sends before a
/// cross-origin `fetch` of the stream with an `Authorization` or
/// `Last-Event-ID` header (an `EventSource` with the token in the URL needs
/// none): 204 allowing GET with those headers from any origin, then the
/// connection closes like any answer that is not a stream.
const SSE_PREFLIGHT: Reject = Reject::new(204, "");
const NOT_UPGRADE: Reject = Reject::new(
    426,
    "this endpoint speaks WebSocket only: send an upgrade request (Upgrade: websocket)",
);
const BAD_VERSION: Reject = Reject::new(426, "unsupported WebSocket version: use 13");
const NO_KEY: Reject = Reject::new(400, "missing or invalid Sec-WebSocket-Key");
const BAD_PROTOCOL: Reject = Reject::new(
    400,
    "unsupported subprotocol: use pushgate.v1.json or pushgate.v1.bin",
);

/// Reads the request head: `(bytes read, head length)`; the bytes after
/// the head are the client's first frames.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    sock: &mut S,
) -> Result<(Vec<u8>, usize), HandshakeError> {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = head_end(&buf) {
            return Ok((buf, end));
        }
        if buf.len() >= MAX_HEAD {
            return Err(HandshakeError::Rejected(TOO_LARGE));
        }
        let room = READ_CHUNK.min(MAX_HEAD - buf.len());
        let at = buf.len();
        buf.resize(at + room, 0);
        let n = sock.read(&mut buf[at..]).await?;
        buf.truncate(at + n);
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
    }
}

/// Where the head ends (after its blank line), if it has arrived.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Decides on a complete request head.
pub(crate) fn decide(head: &[u8]) -> Result<Accepted, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
        Ok(httparse::Status::Partial) | Err(_) => return Err(MALFORMED),
    }
    let path = req.path.unwrap_or("");
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    if route == super::sse::PATH {
        let headers = &*req.headers;
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
        };
        return decide_sse(req.method, query, header).map(Accepted::Sse);
    }
    if route != PATH {
        return Err(NOT_FOUND);
    }
    if req.method != Some("GET") {
        return Err(NOT_GET);
    }
    if req.version != Some(1) {
        return Err(MALFORMED);
    }
    let values = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    };
    let tokens = |name: &'static str| {
        values(name)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    };
    let has_token =
        |name: &'static str, want: &str| tokens(name).any(|t| t.eq_ignore_ascii_case(want));
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(NOT_UPGRADE);
    }
    if !values("sec-websocket-version").any(|v| v.trim() == "13") {
        return Err(BAD_VERSION);
    }
    let key = match values("sec-websocket-key").next().map(str::trim) {
        Some(k) if k.len() == 24 => k,
        _ => return Err(NO_KEY),
    };
    // The first of ours in the client's order; JSON without a header when it
    // offers none; 400 when it offers only others (its library would fail
    // on a reply without one anyway, with a vaguer message).
    let mut offered = tokens("sec-websocket-protocol").peekable();
    let protocol = match offered.peek() {
        None => None,
        Some(_) => match offered.find(|p| *p == PROTO_JSON || *p == PROTO_BIN) {
            Some(p) if p == PROTO_BIN => Some(PROTO_BIN),
            Some(_) => Some(PROTO_JSON),
            None => return Err(BAD_PROTOCOL),
        },
    };
    let mut response = Vec::with_capacity(160);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    response.extend_from_slice(derive_accept_key(key.as_bytes()).as_bytes());
    response.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        response.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        response.extend_from_slice(p.as_bytes());
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"\r\n");
    Ok(Accepted::Ws(Upgrade {
        bin: protocol == Some(PROTO_BIN),
        response,
    }))
}

/// Decides on a request for the SSE path, over HTTP/1.1 or HTTP/2: its
/// method, query string (without `?`) and headers (see [`super::sse::decide`]).
pub(crate) fn decide_sse<'h>(
    method: Option<&str>,
    query: &str,
    header: impl Fn(&str) -> Option<&'h str>,
) -> Result<Box<super::sse::SseStart>, Reject> {
    if method == Some("OPTIONS") {
        return Err(SSE_PREFLIGHT);
    }
    if method != Some("GET") {
        return Err(SSE_NOT_GET);
    }
    super::sse::decide(query, header).map(Box::new)
}

/// What a successful [`accept`] leads to.
#[derive(Debug)]
pub(crate) enum Opened {
    /// A WebSocket: whether the client chose binary, and the bytes it sent
    /// after the head.
    Ws(bool, Vec<u8>),
    /// An SSE stream (its response head already sent).
    Sse(Box<super::sse::SseStart>),
}

/// Runs the server side: reads the request, answers it. An SSE request is
/// answered 200 only when `check_sse` lets it through, else with its error.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    sock: &mut S,
    check_sse: impl FnOnce(&super::sse::SseStart) -> Result<(), Reject>,
) -> Result<Opened, HandshakeError> {
    let (mut buf, end) = match read_head(sock).await {
        Ok(x) => x,
        Err(HandshakeError::Rejected(r)) => return Err(reject(sock, r).await),
        Err(e) => return Err(e),
    };
    match decide(&buf[..end]) {
        Ok(Accepted::Sse(start)) => {
            if let Err(r) = check_sse(&start) {
                return Err(reject(sock, r).await);
            }
            sock.write_all(super::sse::RESPONSE).await?;
            sock.flush().await?;
            Ok(Opened::Sse(start))
        }
        Ok(Accepted::Ws(up)) => {
            sock.write_all(&up.response).await?;
            sock.flush().await?;
            let rest = if end == buf.len() {
                Vec::new()
            } else {
                buf.drain(..end);
                buf.shrink_to_fit();
                buf
            };
            Ok(Opened::Ws(up.bin, rest))
        }
        Err(r) => Err(reject(sock, r).await),
    }
}

/// Reads the request and answers it with `r` (a refused connection).
pub(crate) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(sock: &mut S, r: Reject) {
    if read_head(sock).await.is_ok() {
        let _ = reject(sock, r).await;
    }
}

/// Sends the error response and closes the write side; returns the error
/// to report.
async fn reject<S: AsyncWrite + Unpin>(sock: &mut S, r: Reject) -> HandshakeError {
    if let Err(e) = sock.write_all(&r.response()).await {
        return HandshakeError::Io(e);
    }
    let _ = sock.shutdown().await;
    HandshakeError::Rejected(r)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(path: &str, extra: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    /// The upgrade `decide` accepted.
    fn upgrade(head: &str) -> Upgrade {
        match decide(head.as_bytes()) {
            Ok(Accepted::Ws(up)) => up,
            other => panic!("not an upgrade: {other:?}"),
        }
    }

    #[test]
    fn rfc_example_gets_its_accept_key() {
        let up = upgrade(&request("/ws", ""));
        let text = String::from_utf8(up.response).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        // RFC 6455 §1.3.
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!text.contains("Sec-WebSocket-Protocol"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
        assert!(!up.bin);
    }

    #[test]
    fn subprotocol_is_the_first_of_ours_in_the_clients_order() {
        let pick = |offer: &str| {
            let up = upgrade(&request("/ws?x=1", offer));
            (up.bin, String::from_utf8(up.response).unwrap())
        };
        let (bin, text) =
            pick("Sec-WebSocket-Protocol: chat, pushgate.v1.bin, pushgate.v1.json\r\n");
        assert!(bin);
        assert!(text.contains("Sec-WebSocket-Protocol: pushgate.v1.bin\r\n"));
        let (bin, text) =
            pick("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: pushgate.v1.json\r\n");
        assert!(!bin);
        assert!(text.contains("Sec-WebSocket-Protocol: pushgate.v1.json\r\n"));
        assert_eq!(
            decide(request("/ws", "Sec-WebSocket-Protocol: chat, mqtt\r\n").as_bytes()),
            Err(BAD_PROTOCOL)
        );
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let req = "GET /ws HTTP/1.1\r\nhost: h\r\nUPGRADE: WebSocket\r\n\
                   connection: keep-alive, upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   sec-websocket-version: 13\r\n\r\n";
        assert!(decide(req.as_bytes()).is_ok());
    }

    #[test]
    fn refusals_name_what_was_wrong() {
        assert_eq!(decide(request("/", "").as_bytes()), Err(NOT_FOUND));
        assert_eq!(decide(request("/wss", "").as_bytes()), Err(NOT_FOUND));
        let post = request("/ws", "").replacen("GET", "POST", 1);
        assert_eq!(decide(post.as_bytes()), Err(NOT_GET));
        let plain = "GET /ws HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(decide(plain.as_bytes()), Err(NOT_UPGRADE));
        let v8 = request("/ws", "").replace("Version: 13", "Version: 8");
        assert_eq!(decide(v8.as_bytes()), Err(BAD_VERSION));
        let nokey =
            request("/ws", "").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        assert_eq!(decide(nokey.as_bytes()), Err(NO_KEY));
        assert_eq!(decide(b"\x16\x03\x01 junk\r\n\r\n"), Err(MALFORMED));
        let http10 = request("/ws", "").replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(decide(http10.as_bytes()), Err(MALFORMED));
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(decide(request("/ws", &many).as_bytes()), Err(TOO_LARGE));
    }

    #[test]
    fn error_responses_are_complete_http() {
        let text = String::from_utf8(BAD_VERSION.response()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert_eq!(body, BAD_VERSION.text);
    }

    #[tokio::test]
    async fn reads_a_head_that_arrives_in_pieces_and_keeps_what_follows() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let req = request("/ws", "Sec-WebSocket-Protocol: pushgate.v1.bin\r\n");
        let task = tokio::spawn(async move {
            for piece in req.as_bytes().chunks(7) {
                client.write_all(piece).await.unwrap();
            }
            client.write_all(&[0x82, 0x80, 1, 2, 3, 4]).await.unwrap();
            let mut reply = Vec::new();
            while head_end(&reply).is_none() {
                let mut chunk = [0; 64];
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "eof before the response ended");
                reply.extend_from_slice(&chunk[..n]);
            }
            String::from_utf8(reply).unwrap()
        });
        let Opened::Ws(bin, rest) = accept(&mut server, |_| Ok(())).await.unwrap() else {
            panic!("not a WebSocket");
        };
        assert!(bin);
        // Whatever followed the head in the last read is kept for the framing.
        assert!([0x82, 0x80, 1, 2, 3, 4].starts_with(&rest), "{rest:?}");
        assert!(task.await.unwrap().starts_with("HTTP/1.1 101 "));
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_refused_with_431() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(async move {
            let big = format!("GET /ws HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
            let _ = client.write_all(big.as_bytes()).await;
            let mut reply = String::new();
            let _ = client.read_to_string(&mut reply).await;
            reply
        });
        match accept(&mut server, |_| Ok(())).await {
            Err(HandshakeError::Rejected(r)) => assert_eq!(r, TOO_LARGE),
            other => panic!("{other:?}"),
        }
        drop(server);
        assert!(task.await.unwrap().starts_with("HTTP/1.1 431 "));
    }
}
