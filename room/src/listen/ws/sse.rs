//! Server-sent events: `GET /sse` on the WebSocket listener, for browsers
//! and networks where WebSocket does not get through. One more framing of
//! the same session ([`crate::session`]), not a second session: the request
//! stands for the client's first frames (`auth` from the token, `last_id`
//! from `Last-Event-ID` or `?last_id=`, one `sub` per channel of
//! `?channels=`, each resumed after the same id), and every server frame goes
//! out as an event.
//!
//! Decisions:
//! - Messages (user and channel) are unnamed events (`onmessage`) with
//!   `id:` = the message id and `data:` = the JSON `msg` frame; other frames
//!   are events named after their op (`auth_ok`, `sub_ok`, `error`); a
//!   session's end is an event `close` with `{"code","reason"}`.
//! - Ids are global and increasing, so the `Last-Event-ID` a browser sends
//!   when it reconnects resumes the user's queue and every channel's
//!   history after it (DESIGN.md, "Browsers and operators").
//! - The token is checked before the response: a bad or expired one gets
//!   401 (and `EventSource` stops reconnecting), not a 200 stream that ends
//!   at once and is reopened every second.
//! - The client cannot send after its request: the server writes a comment
//!   every heartbeat interval (which also finds dead peers) and the stream
//!   counts as alive while it does; no client heartbeat is expected.
//! - Over HTTP/1.1 the response has `Connection: close` and no length: the
//!   stream ends when the connection does. Over HTTP/2 (https:// with ALPN
//!   `h2`, see [`super::h2`]) each request is one stream of a shared
//!   connection, and [`SseIo`] runs on that stream ([`super::h2::H2Stream`])
//!   exactly as it runs on a socket. `Access-Control-Allow-Origin: *`
//!   lets pages on other origins use it (the token is in the URL, no
//!   cookies). `retry: 1000` asks browsers to come back after a second.

use std::collections::VecDeque;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::{Sink, Stream};
use proto::{ClientFrame, MsgId, ServerFrame};
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::handshake::Reject;
use crate::error::{RecvError, SendError};
use crate::io::{poll_write_out, ByteStream, FrameIo, Inbound, OutFrame};
use crate::io::{MAX_READS, READ_CHUNK, WRITE_HIGH};
use crate::metrics::{Http, Metrics};

/// The path served.
pub(crate) const PATH: &str = "/sse";

/// The first event of every stream: the reconnect delay.
pub(crate) const FIRST_EVENT: &[u8] = b"retry: 1000\n\n";

/// The HTTP/1.1 response head and the first event ([`FIRST_EVENT`]).
pub(crate) const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\n\
Connection: close\r\n\
X-Accel-Buffering: no\r\n\
Access-Control-Allow-Origin: *\r\n\
\r\n\
retry: 1000\n\n";

/// Most channels one request may name (the room's `max_channels` may be
/// lower: [`SseStart::check`]).
const MAX_CHANNELS: usize = 256;

const NO_TOKEN: Reject = Reject::new(
    401,
    "missing token: GET /sse?token=JWT (or an Authorization: Bearer header)",
);
const BAD_TOKEN: Reject = Reject::new(401, "invalid or expired token");
const BAD_LAST_ID: Reject = Reject::new(
    400,
    "last_id (or Last-Event-ID) must be a non-negative integer",
);
const BAD_QUERY: Reject = Reject::new(
    400,
    "unknown or repeated query parameter: use token, channels (comma-separated), last_id, device",
);
const TOO_MANY_CHANNELS: Reject = Reject::new(
    400,
    "too many channels for one connection (the room's max_channels)",
);
const BAD_CHANNEL: Reject = Reject::new(
    400,
    "channels must be a comma-separated list of non-empty names",
);

/// What an SSE request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SseStart {
    /// The client token.
    pub(crate) token: String,
    /// Resume user messages after this id.
    pub(crate) last_id: Option<MsgId>,
    /// The device id (as `auth`'s `device`).
    pub(crate) device: Option<String>,
    /// Channels to subscribe, in order.
    pub(crate) channels: Vec<String>,
}

impl SseStart {
    /// Refuses a request the session would refuse anyway, while an HTTP
    /// status can still say so: a bad or expired token (checked with
    /// `secret` at `now`, seconds), more channels than `max_channels`.
    pub(crate) fn check(&self, cfg: &crate::RoomConfig, now: u64) -> Result<(), Reject> {
        if self.channels.len() > cfg.max_channels {
            return Err(TOO_MANY_CHANNELS);
        }
        cfg.verify_token(&self.token, now).map_err(|_| BAD_TOKEN)?;
        Ok(())
    }

    /// The frames this request stands for: `auth`, then one `sub` per
    /// channel, each resumed after the same `last_id` (ids are global).
    fn frames(self) -> VecDeque<ClientFrame> {
        let mut out = VecDeque::with_capacity(1 + self.channels.len());
        let last_id = self.last_id;
        out.push_back(ClientFrame::Auth {
            seq: None,
            token: self.token,
            last_id,
            device: self.device,
        });
        out.extend(self.channels.into_iter().map(|channel| ClientFrame::Sub {
            seq: None,
            channel,
            last_id,
            presence: false,
        }));
        out
    }
}

/// Decides on a `GET /sse` request: its query string (without `?`) and
/// its headers, through `header` (the first value of a header by its
/// lower-case name; HTTP/1.1 and HTTP/2 keep them differently).
pub(crate) fn decide<'h>(
    query: &str,
    header: impl Fn(&str) -> Option<&'h str>,
) -> Result<SseStart, Reject> {
    let header = |name: &str| header(name).map(str::trim);
    let mut token = None;
    let mut last_id = None;
    let mut device = None;
    let mut channels = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let once = |slot: &mut Option<String>| match slot {
            Some(_) => Err(BAD_QUERY),
            None => {
                *slot = Some(v.clone().into_owned());
                Ok(())
            }
        };
        match &*k {
            "token" => once(&mut token)?,
            "last_id" => once(&mut last_id)?,
            "device" => once(&mut device)?,
            "channels" => {
                for name in v.split(',') {
                    if name.is_empty() {
                        return Err(BAD_CHANNEL);
                    }
                    if channels.len() == MAX_CHANNELS {
                        return Err(TOO_MANY_CHANNELS);
                    }
                    channels.push(name.to_owned());
                }
            }
            _ => return Err(BAD_QUERY),
        }
    }
    let bearer = header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let token = token.or(bearer).filter(|t| !t.is_empty()).ok_or(NO_TOKEN)?;
    // A browser's reconnect names the last event it saw; it wins over the
    // `last_id` of the URL it first opened.
    let last_id = match header("last-event-id").or(last_id.as_deref()) {
        None | Some("") => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 0 => Some(MsgId(n)),
            _ => return Err(BAD_LAST_ID),
        },
    };
    Ok(SseStart {
        token,
        last_id,
        device,
        channels,
    })
}

/// Counts an open server-sent event stream (by HTTP version) until dropped.
pub(crate) struct SseOpen {
    metrics: Arc<Metrics>,
    http: Http,
}

impl SseOpen {
    /// Counts one more open stream of `http`.
    pub(crate) fn new(shared: &crate::shared::Shared, http: Http) -> SseOpen {
        shared.metrics.sse_open(http, true);
        SseOpen {
            metrics: Arc::clone(&shared.metrics),
            http,
        }
    }
}

impl Drop for SseOpen {
    fn drop(&mut self) {
        self.metrics.sse_open(self.http, false);
    }
}

/// An SSE client connection, over TCP or TLS, or an HTTP/2 stream.
pub(crate) struct SseIo<S = TcpStream> {
    sock: S,
    /// Encoded output not yet written (no allocation while empty).
    wbuf: Vec<u8>,
    /// The request's frames, until the session has read them (then empty,
    /// its buffer released).
    start: VecDeque<ClientFrame>,
    /// When the next comment is due.
    beat: Pin<Box<Sleep>>,
    /// The heartbeat interval.
    every: Duration,
    /// The client closed its side.
    eof: bool,
}

impl<S: ByteStream> SseIo<S> {
    /// Streams events on `sock` (the response head already sent), with a
    /// comment every `every`; `first` is written before any event (the
    /// HTTP/1.1 head carries [`FIRST_EVENT`] already; HTTP/2 passes it here).
    pub(crate) fn new(sock: S, start: SseStart, every: Duration, first: &[u8]) -> SseIo<S> {
        SseIo {
            sock,
            wbuf: first.to_vec(),
            start: start.frames(),
            beat: Box::pin(tokio::time::sleep(every)),
            every,
            eof: false,
        }
    }

    /// Appends one event: optional `id:` and `event:` fields, then `data`
    /// as `data:` lines (a line break inside `data`, possible in a pushed
    /// payload's JSON whitespace, starts a new `data:` line: the browser
    /// joins them with `\n`).
    fn event(&mut self, id: Option<MsgId>, name: Option<&str>, data: &[u8]) {
        let out = &mut self.wbuf;
        if let Some(id) = id {
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(itoa::Buffer::new().format(id.0).as_bytes());
            out.push(b'\n');
        }
        if let Some(name) = name {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(name.as_bytes());
            out.push(b'\n');
        }
        for line in data.split(|b| *b == b'\n' || *b == b'\r') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.push(b'\n');
    }

    fn encode(&mut self, item: OutFrame) {
        match item {
            OutFrame::Push(p) => self.event(Some(p.id), None, p.text.as_bytes()),
            OutFrame::Frame(f) => {
                let (id, name) = match &*f {
                    ServerFrame::Msg(m) => (Some(m.id), None),
                    ServerFrame::AuthOk { .. } => (None, Some("auth_ok")),
                    ServerFrame::Pong { .. } => (None, Some("pong")),
                    ServerFrame::SubOk { .. } => (None, Some("sub_ok")),
                    ServerFrame::UnsubOk { .. } => (None, Some("unsub_ok")),
                    // SSE clients send nothing, so never a refresh.
                    ServerFrame::RefreshOk { .. } => (None, Some("refresh_ok")),
                    ServerFrame::SendOk { .. } => (None, Some("send_ok")),
                    ServerFrame::PubOk { .. } => (None, Some("pub_ok")),
                    ServerFrame::Error { .. } => (None, Some("error")),
                    // SSE subscribes without presence events and cannot
                    // ask `presence`: named, should one ever come.
                    ServerFrame::Join(_) => (None, Some("join")),
                    ServerFrame::Leave(_) => (None, Some("leave")),
                    ServerFrame::PresenceOk { .. } => (None, Some("presence_ok")),
                };
                let mut json = Vec::with_capacity(96);
                proto::json::encode_server(&f, &mut json);
                self.event(id, name, &json);
            }
            OutFrame::Close(code, reason) => {
                let body = serde_json::json!({ "code": code.as_u16(), "reason": reason });
                self.event(None, Some("close"), body.to_string().as_bytes());
            }
        }
    }
}

impl<S: ByteStream> Stream for SseIo<S> {
    type Item = Result<Inbound, RecvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if !this.wbuf.is_empty() {
            if let Poll::Ready(Err(_)) = poll_write_out(&mut this.sock, &mut this.wbuf, cx) {
                this.wbuf = Vec::new();
            }
        }
        if let Some(f) = this.start.pop_front() {
            if this.start.is_empty() {
                this.start = VecDeque::new();
            }
            return Poll::Ready(Some(Ok(Inbound::Frame(f))));
        }
        if this.eof {
            return Poll::Ready(None);
        }
        if this.beat.as_mut().poll(cx).is_ready() {
            this.wbuf.extend_from_slice(b": ping\n\n");
            let next = Instant::now() + this.every;
            this.beat.as_mut().reset(next);
            if let Poll::Ready(Err(e)) = poll_write_out(&mut this.sock, &mut this.wbuf, cx) {
                return Poll::Ready(Some(Err(e.into())));
            }
            return Poll::Ready(Some(Ok(Inbound::Alive)));
        }
        // The client has nothing to say after its request: what it sends is
        // read and dropped; its end of the connection ends the stream.
        for _ in 0..MAX_READS {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            if let Err(e) = ready!(Pin::new(&mut this.sock).poll_read(cx, &mut rb)) {
                return Poll::Ready(Some(Err(e.into())));
            }
            if rb.filled().is_empty() {
                this.eof = true;
                return Poll::Ready(None);
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: ByteStream> Sink<OutFrame> for SseIo<S> {
    type Error = SendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        if self.wbuf.len() >= WRITE_HIGH {
            return self.poll_flush(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: OutFrame) -> Result<(), SendError> {
        self.encode(item);
        Ok(())
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

impl<S: ByteStream> FrameIo for SseIo<S> {
    fn linger(&mut self) -> impl Future<Output = ()> + Send + '_ {
        self.sock.linger()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(query: &str, headers: &[(&str, &str)]) -> Result<SseStart, Reject> {
        decide(query, |name| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        })
    }

    #[test]
    fn the_http1_head_ends_with_the_first_event() {
        assert!(RESPONSE.ends_with(FIRST_EVENT));
        assert!(RESPONSE.ends_with(b"\r\n\r\nretry: 1000\n\n"));
    }

    #[test]
    fn the_request_stands_for_auth_and_subs() {
        let s = parse(
            "token=a.b.c&channels=news,chat%3A42&last_id=7&device=tab",
            &[],
        )
        .unwrap();
        assert_eq!(s.token, "a.b.c");
        assert_eq!(s.channels, ["news", "chat:42"]);
        assert_eq!(s.last_id, Some(MsgId(7)));
        assert_eq!(s.device.as_deref(), Some("tab"));
        let frames: Vec<ClientFrame> = s.frames().into_iter().collect();
        assert_eq!(frames.len(), 3);
        assert!(
            matches!(&frames[0], ClientFrame::Auth { token, last_id: Some(MsgId(7)), .. } if token == "a.b.c")
        );
        // Every channel resumes after the same id.
        assert!(
            matches!(&frames[2], ClientFrame::Sub { channel, last_id: Some(MsgId(7)), .. } if channel == "chat:42")
        );
        // A reconnecting browser's Last-Event-ID wins; a bearer header is a
        // token; `channels` may be repeated.
        let s = parse(
            "last_id=7&channels=a&channels=b",
            &[("Last-Event-ID", " 99 "), ("Authorization", "Bearer t")],
        )
        .unwrap();
        assert_eq!((s.token.as_str(), s.last_id), ("t", Some(MsgId(99))));
        assert_eq!(s.channels, ["a", "b"]);
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert_eq!(parse("", &[]), Err(NO_TOKEN));
        assert_eq!(parse("token=", &[]), Err(NO_TOKEN));
        assert_eq!(parse("token=t&last_id=-1", &[]), Err(BAD_LAST_ID));
        assert_eq!(
            parse("token=t", &[("Last-Event-ID", "x")]),
            Err(BAD_LAST_ID)
        );
        assert_eq!(parse("token=t&token=u", &[]), Err(BAD_QUERY));
        assert_eq!(parse("token=t&page=2", &[]), Err(BAD_QUERY));
        assert_eq!(parse("token=t&channels=a,,b", &[]), Err(BAD_CHANNEL));
        assert_eq!(parse("token=t&channels=", &[]), Err(BAD_CHANNEL));
        let many: Vec<String> = (0..257).map(|i| format!("c{i}")).collect();
        let query = format!("token=t&channels={}", many.join(","));
        assert_eq!(parse(&query, &[]), Err(TOO_MANY_CHANNELS));
    }

    #[test]
    fn check_refuses_bad_tokens_and_too_many_channels() {
        let secret = b"s3cret";
        let claims = proto::token::Claims {
            sub: "alice".into(),
            exp: 100,
            dev: None,
            channels: None,
            send: None,
            publish: None,
        };
        let good = proto::token::mint(&claims, secret).unwrap();
        let start = |token: &str, channels: &[&str]| SseStart {
            token: token.to_owned(),
            last_id: None,
            device: None,
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
        };
        let cfg = |secret: &[u8]| {
            let mut c = crate::RoomConfig::new(proto::RoomId(1), std::sync::Arc::from(secret));
            c.max_channels = 1;
            c
        };
        let ours = cfg(secret);
        assert_eq!(start(&good, &["a"]).check(&ours, 50), Ok(()));
        assert_eq!(
            start(&good, &["a", "b"]).check(&ours, 50),
            Err(TOO_MANY_CHANNELS)
        );
        // Expired, signed with another secret, not a token at all.
        assert_eq!(start(&good, &[]).check(&ours, 100), Err(BAD_TOKEN));
        assert_eq!(start(&good, &[]).check(&cfg(b"other"), 50), Err(BAD_TOKEN));
        assert_eq!(start("x.y.z", &[]).check(&ours, 50), Err(BAD_TOKEN));
    }

    #[tokio::test]
    async fn frames_become_events() {
        let (a, _b) = tokio::io::duplex(64);
        let start = parse("token=t", &[]).unwrap();
        let mut io = SseIo::new(a, start, Duration::from_secs(30), &[]);
        let msg = proto::MsgFrame {
            id: MsgId(5),
            ts: 1,
            channel: None,
            data: bytes::Bytes::from_static(b"{\n\"a\":1}"),
            sender: None,
        };
        io.encode(OutFrame::Frame(Box::new(ServerFrame::Msg(msg))));
        io.encode(OutFrame::Frame(Box::new(ServerFrame::SubOk {
            seq: None,
            channel: "news".into(),
        })));
        io.encode(OutFrame::Close(proto::CloseCode::Kicked, "kicked".into()));
        let text = String::from_utf8(io.wbuf.clone()).unwrap();
        assert_eq!(
            text,
            "id: 5\ndata: {\"op\":\"msg\",\"id\":5,\"data\":{\ndata: \"a\":1},\"ts\":1}\n\n\
             event: sub_ok\ndata: {\"op\":\"sub_ok\",\"channel\":\"news\"}\n\n\
             event: close\ndata: {\"code\":4005,\"reason\":\"kicked\"}\n\n"
        );
    }
}
