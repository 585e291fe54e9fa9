//! HTTP/2 on the WebSocket listener (https:// with ALPN `h2`): server-sent
//! event streams, many on one connection. The `h2` crate (hyper's) does the
//! protocol; this module routes its streams.
//!
//! Decisions:
//! - One task drives the connection. Every `GET /sse` stream is decided as
//!   the HTTP/1.1 request is (`handshake::decide_sse`: the same parameters,
//!   token check and refusals with a plain-text body) and then runs the
//!   same session on a task of its own, with [`SseIo`] over the stream
//!   ([`H2Stream`]) instead of a socket: one more framing, not a second
//!   session. A stream is one pushgate connection: its own `ConnId`, resume
//!   by `Last-Event-ID`, heartbeat comments, `close` event.
//! - Limits: at most `h2_max_streams` streams at once, advertised as
//!   `SETTINGS_MAX_CONCURRENT_STREAMS` (h2 refuses one more with
//!   `REFUSED_STREAM`). Each stream also takes a permit of
//!   `max_connections` and a slot of `max_conns_per_ip`, besides the
//!   connection's own (the socket): a full room answers the stream 503, a
//!   full address 429.
//! - Flow control: a stream writes only what the client's window for it
//!   allows, and at most [`SEND_BUFFER`] bytes of it wait in h2 for the
//!   socket. A stream whose reader is slow stops being written; its
//!   session's outbox then fills and it is closed as a slow consumer
//!   (4006), as on HTTP/1.1, while the other streams go on.
//! - A client that resets a stream (`EventSource.close()`) ends that
//!   session (peer closed). The connection's end fails every stream's
//!   handles, which ends their sessions.
//! - A connection without streams is closed (GOAWAY) after one to two
//!   `auth_timeout`s; every connection is when the room stops accepting
//!   (drain), its sessions first writing their `close` events.
//! - No WebSocket over HTTP/2 (RFC 8441's extended CONNECT is not
//!   enabled, so browsers open WebSockets on HTTP/1.1 connections): `/ws`
//!   on HTTP/2 is answered 400, saying so.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

use super::handshake::{self, Reject};
use super::sse::{self, SseIo, SseOpen};
use crate::io::ByteStream;
use crate::listen::Refusal;
use crate::metrics::{self, Http, Metrics, Transport};
use crate::session;
use crate::shared::Shared;

/// Bytes of one stream that may wait in h2 for the socket.
pub(crate) const SEND_BUFFER: usize = 64 * 1024;
/// Largest request header list (HPACK-decoded, 32 bytes per field more).
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Receive window of a stream: requests carry no body.
const STREAM_WINDOW: u32 = 16 * 1024;
/// Request body frames dropped per read before yielding.
const MAX_BODY_READS: usize = 16;

const WS_NEEDS_HTTP1: Reject = Reject::new(
    400,
    "WebSocket needs HTTP/1.1: this HTTP/2 connection serves server-sent events (/sse) only; \
     open the WebSocket on a connection that negotiates http/1.1",
);

/// Counts an open HTTP/2 connection until dropped.
struct ConnOpen(Arc<Metrics>);

impl Drop for ConnOpen {
    fn drop(&mut self) {
        self.0
            .h2_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves one HTTP/2 connection (TLS done, ALPN `h2`): its handshake by
/// `deadline`, then its streams until it ends.
pub(crate) async fn serve<S>(shared: Arc<Shared>, io: S, peer: SocketAddr, deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(shared.cfg.h2_max_streams.max(1))
        .max_send_buffer_size(SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_window_size(STREAM_WINDOW);
    let step = builder.handshake::<S, Bytes>(io);
    let Some(mut conn) = shared.handshake_step(peer, "http/2", deadline, step).await else {
        return;
    };
    metrics::inc(&shared.metrics.h2_connections);
    let _open = ConnOpen(Arc::clone(&shared.metrics));
    let idle = shared.cfg.auth_timeout.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(Instant::now() + idle, idle);
    // A new connection has `auth_timeout` to open its first stream.
    let mut was_idle = true;
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.accept() => match r {
                Some(Ok((req, respond))) => {
                    was_idle = false;
                    open_stream(&shared, req, respond, peer);
                }
                Some(Err(e)) => {
                    debug!(%peer, error = %e, "http/2 connection failed");
                    break;
                }
                None => break,
            },
            _ = tick.tick(), if !closing => {
                let idle_now = !conn.has_streams();
                if idle_now && was_idle {
                    debug!(%peer, "http/2 connection idle: closing");
                    conn.graceful_shutdown();
                    closing = true;
                }
                was_idle = idle_now;
            }
            () = shared.stop.cancelled(), if !closing => {
                conn.graceful_shutdown();
                closing = true;
            }
        }
    }
    // Dropping `conn` fails the handles of streams still open, which
    // ends their sessions.
}

/// Answers one request: an event stream on its own session task, or a refusal.
fn open_stream(
    shared: &Arc<Shared>,
    req: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
    peer: SocketAddr,
) {
    let (parts, body) = req.into_parts();
    let start = match decide(shared, &parts) {
        Ok(start) => start,
        Err(r) => return reject(respond, r),
    };
    let slot = match &shared.per_ip {
        None => None,
        Some(p) => match p.acquire(peer.ip()) {
            Some(slot) => Some(slot),
            None => return refuse_stream(shared, respond, Refusal::PerIp),
        },
    };
    let Ok(permit) = Arc::clone(&shared.limit).try_acquire_owned() else {
        return refuse_stream(shared, respond, Refusal::Full);
    };
    let mut respond = respond;
    let send = match respond.send_response(stream_response(), false) {
        Ok(send) => send,
        Err(e) => {
            debug!(%peer, error = %e, "http/2 stream gone before its response");
            return;
        }
    };
    shared.metrics.accepted(Transport::Sse);
    let open = SseOpen::new(shared, Http::H2);
    let stream = H2Stream {
        send,
        recv: body,
        ended: false,
        stalled: false,
    };
    let io = SseIo::new(stream, *start, shared.cfg.heartbeat, sse::FIRST_EVENT);
    let session = session::run(Arc::clone(shared), io, peer, Transport::Sse);
    shared
        .tracker
        .spawn(session.map(move |()| drop((permit, slot, open))));
}

/// Decides on a request: an event stream's parameters (its token checked),
/// or the refusal.
fn decide(shared: &Shared, req: &http::request::Parts) -> Result<Box<sse::SseStart>, Reject> {
    match req.uri.path() {
        sse::PATH => {}
        super::PATH => return Err(WS_NEEDS_HTTP1),
        _ => return Err(handshake::NOT_FOUND),
    }
    let query = req.uri.query().unwrap_or("");
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let start = handshake::decide_sse(Some(req.method.as_str()), query, header)?;
    start.check(&shared.cfg, session::now_secs())?;
    Ok(start)
}

/// The head of an event stream's response (HTTP/2 has no `Connection`).
fn stream_response() -> http::Response<()> {
    let mut r = http::Response::new(());
    let h = r.headers_mut();
    let set = |h: &mut http::HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, http::HeaderValue::from_static(value));
    };
    set(h, "content-type", "text/event-stream");
    set(h, "cache-control", "no-cache");
    set(h, "x-accel-buffering", "no");
    set(h, "access-control-allow-origin", "*");
    r
}

/// Refuses a stream of a full room (503) or address (429), counted as a
/// refused SSE connection.
fn refuse_stream(shared: &Shared, respond: SendResponse<Bytes>, why: Refusal) {
    shared.metrics.refused(Transport::Sse);
    reject(respond, refusal(why));
}

/// The answer to a refused connection or stream.
fn refusal(why: Refusal) -> Reject {
    let status = match why {
        Refusal::Full => 503,
        Refusal::PerIp => 429,
    };
    Reject::new(status, why.text())
}

/// Answers the first stream of a connection refused when it was accepted
/// (a full room, a full address) with 503 or 429, then closes it (the
/// caller bounds the time).
pub(crate) async fn refuse<S>(io: S, why: Refusal)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(1)
        .max_header_list_size(MAX_HEADER_LIST);
    let Ok(mut conn) = builder.handshake::<S, Bytes>(io).await else {
        return;
    };
    if let Some(Ok((_req, respond))) = conn.accept().await {
        reject(respond, refusal(why));
    }
    conn.graceful_shutdown();
    // Drives the answer out; ends when the connection does.
    while let Some(Ok(_)) = conn.accept().await {}
}

/// Answers a stream with `r`: its status and plain-text body (the CORS
/// preflight: 204 and its headers).
fn reject(mut respond: SendResponse<Bytes>, r: Reject) {
    let mut resp = http::Response::new(());
    *resp.status_mut() =
        http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::BAD_REQUEST);
    let h = resp.headers_mut();
    let set = |h: &mut http::HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, http::HeaderValue::from_static(value));
    };
    set(h, "access-control-allow-origin", "*");
    if r.status == 204 {
        set(h, "access-control-allow-methods", "GET");
        set(
            h,
            "access-control-allow-headers",
            "Authorization, Last-Event-ID, Accept, Cache-Control",
        );
        set(h, "access-control-max-age", "86400");
        let _ = respond.send_response(resp, true);
        return;
    }
    if r.status == 405 {
        set(h, "allow", "GET");
    }
    set(h, "content-type", "text/plain; charset=utf-8");
    h.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(r.text.len()),
    );
    // Small and sent once: h2 buffers it whatever the window (a stream
    // gone meanwhile is no error of ours).
    if let Ok(mut send) = respond.send_response(resp, false) {
        let _ = send.send_data(Bytes::from_static(r.text.as_bytes()), true);
    }
}

/// One HTTP/2 stream as the byte stream an event stream runs on: writes go
/// out as DATA frames within the stream's flow-control window; reads drop
/// the request body and end when the client resets the stream.
pub(crate) struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// `END_STREAM` sent.
    ended: bool,
    /// The last write waited for the client's window: output is stuck.
    stalled: bool,
}

/// An h2 error as an I/O error.
fn io_error(e: h2::Error) -> std::io::Error {
    if e.is_io() {
        if let Some(io) = e.into_io() {
            return io;
        }
        return std::io::ErrorKind::BrokenPipe.into();
    }
    std::io::Error::other(e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        // A body (a GET has none) is dropped and its window given back.
        for _ in 0..MAX_BODY_READS {
            match this.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                }
                // A reset shows here too; `poll_reset` below tells which.
                Poll::Ready(Some(Err(_)) | None) | Poll::Pending => break,
            }
        }
        // The client's side of the stream ends with the request; the
        // stream ends when it resets it (or the connection goes).
        match this.send.poll_reset(cx) {
            Poll::Ready(Ok(_reason)) => Poll::Ready(Ok(())), // EOF: the peer closed
            Poll::Ready(Err(e)) => Poll::Ready(Err(io_error(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        // Bounded: `poll_capacity` is ready only after the capacity grew.
        for _ in 0..4 {
            let cap = this.send.capacity();
            if cap > 0 {
                let n = cap.min(buf.len());
                let data = Bytes::copy_from_slice(&buf[..n]);
                this.send.send_data(data, false).map_err(io_error)?;
                this.stalled = false;
                return Poll::Ready(Ok(n));
            }
            this.send.reserve_capacity(buf.len());
            match this.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io_error(e))),
                Poll::Ready(None) => {
                    return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
                }
                Poll::Pending => {
                    this.stalled = true;
                    return Poll::Pending;
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The connection task writes what the stream buffered (at most
        // SEND_BUFFER bytes).
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.ended {
            self.ended = true;
            self.send.send_data(Bytes::new(), true).map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl ByteStream for H2Stream {
    /// Ends the stream: `END_STREAM` after what is buffered (unlike a
    /// socket's close, nothing the client still sends can destroy it), or
    /// `RST_STREAM` when the client's window held the last write back (a
    /// slow consumer): its buffered data is dropped at once, and the client
    /// sees an error rather than a clean end without the `close` event.
    fn linger(&mut self) -> impl Future<Output = ()> + Send + '_ {
        if self.stalled && !self.ended {
            self.ended = true;
            self.send.send_reset(h2::Reason::CANCEL);
        }
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_shutdown(cx)).map(|_| ())
    }
}
