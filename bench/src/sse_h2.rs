//! `--transport sse-h2`: server-sent events over HTTP/2 over TLS (ALPN
//! `h2`) on the room's WebSocket listener started with `--tls-cert`
//! (docs/PROTOCOL.md, "SSE over HTTP/2").
//!
//! Design:
//! - **A stream is a connection.** Each [`Conn`](crate::client::Conn) is
//!   one `GET /sse?token=…` stream; the [`H2Dialer`] shared by all of them
//!   puts `--h2-streams` streams (100 by default, the room's
//!   `--h2-max-streams`) on each TLS connection, opening the next
//!   connection when the current one has had its share. So `bench idle
//!   --connections 10000 --h2-streams 100` opens 100 TLS connections of
//!   100 sessions each, and the room's RSS per connection is per stream.
//! - **The request is the `auth` frame**, as on HTTP/1.1 ([`crate::sse`]):
//!   the token (and `last_id`) go in the query; 401 is
//!   [`ClientError::AuthRefused`], any other refusal
//!   [`ClientError::Handshake`]; the events (the same stream format) are
//!   parsed by the HTTP/1.1 client's [`SseReader`], so `auth_ok`, the
//!   heartbeat comments (counted as pongs), messages and the `close` event
//!   are what `--transport sse` sees. Nothing is sent after the request
//!   (the server's comments keep the stream alive): no pings.
//! - **Flow control.** Every DATA frame's bytes are given back to the
//!   stream's window at once, so a stream never stalls on the client; the
//!   h2 crate's budget for small DATA frames is raised (see
//!   [`DATA_FRAME_BUDGET`]), as the room sends one per event.
//! - **Closing** a stream resets it (`RST_STREAM CANCEL`): the room ends
//!   that session; the connection stays for its other streams, and ends
//!   when the dialer and its last stream are gone.
//! - **Trust** is `--tls-fingerprint` or `--tls-ca`, as for QUIC; the
//!   `--ws` URL is `wss://host:port/ws` (or `https://`), its path's final
//!   `/ws` replaced by `/sse`, its host the TLS server name.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use proto::MsgId;
use rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::client::{ClientError, Closed, Event};
use crate::quic::{tls_client_config, QuicArgs};
use crate::sse::{push_query_value, SseReader, SseTarget, MAX_BODY};

/// Framing overhead of small DATA frames a connection may have unread
/// (h2's `data_frame_budget`). The room writes every SSE event as a DATA
/// frame of its own, most under h2's 256-byte threshold (`retry`, `auth_ok`,
/// `: ping`), and 100 streams authenticating at once overrun h2's default
/// (25,600 bytes: about 60 such frames) before bench has read them: the
/// client then closes the connection (`ENHANCE_YOUR_CALM`,
/// `too_many_data_frames`) and all its streams with it. 1 MiB is 16 KiB
/// per stream at 64 streams and 10 KiB at 100, far above what they hold.
const DATA_FRAME_BUDGET: usize = 1024 * 1024;
/// Streams per connection when `--h2-streams` is 0.
const DEFAULT_STREAMS: usize = 100;

/// Opens HTTP/2 connections to one server and hands out their streams.
pub(crate) struct H2Dialer {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    /// `https://host:port` (the request's scheme and authority).
    origin: String,
    /// The stream's path (`/sse`).
    path: String,
    streams_per_conn: usize,
    /// The connection now handing out streams, and how many it has had.
    current: tokio::sync::Mutex<Option<(h2::client::SendRequest<Bytes>, usize)>>,
}

impl std::fmt::Debug for H2Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Dialer")
            .field("addr", &self.addr)
            .field("origin", &self.origin)
            .field("path", &self.path)
            .field("streams_per_conn", &self.streams_per_conn)
            .finish_non_exhaustive()
    }
}

impl H2Dialer {
    /// A dialer for `uri` (`wss://` or `https://`), whose address is `addr`.
    pub(crate) fn new(uri: &Uri, addr: SocketAddr, args: &QuicArgs) -> anyhow::Result<H2Dialer> {
        let mut tls = tls_client_config(args, "sse-h2")?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let host = uri
            .host()
            .with_context(|| format!("url {uri} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let server_name = ServerName::try_from(host)
            .map_err(|e| anyhow::anyhow!("url {uri}: not a tls server name: {e}"))?;
        // The same authority and path as HTTP/1.1 SSE, on https.
        let target = SseTarget::from_ws_url(uri)?;
        Ok(H2Dialer {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            server_name,
            origin: format!("https://{}", target.host),
            path: target.path,
            streams_per_conn: if args.h2_streams == 0 {
                DEFAULT_STREAMS
            } else {
                args.h2_streams
            },
            current: tokio::sync::Mutex::new(None),
        })
    }

    /// A handle to open one stream on: the current connection's, or a new
    /// connection's (from `source` when given) once the current one has had
    /// its `--h2-streams` or has closed.
    async fn stream_handle(
        &self,
        source: Option<IpAddr>,
    ) -> Result<h2::client::SendRequest<Bytes>, ClientError> {
        let mut cur = self.current.lock().await;
        if let Some((send, used)) = cur.as_mut() {
            if *used < self.streams_per_conn {
                *used += 1;
                return Ok(send.clone());
            }
        }
        *cur = None;
        let send = self.dial(source).await?;
        *cur = Some((send.clone(), 1));
        Ok(send)
    }

    /// Opens a TLS connection with ALPN `h2` and starts HTTP/2 on it (its
    /// driver is a task of its own).
    async fn dial(
        &self,
        source: Option<IpAddr>,
    ) -> Result<h2::client::SendRequest<Bytes>, ClientError> {
        let tcp = crate::client::connect_tcp(self.addr, source).await?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| ClientError::Handshake(format!("tls: {e}")))?;
        if tls.get_ref().1.alpn_protocol() != Some(&b"h2"[..]) {
            return Err(ClientError::Handshake(
                "the server did not choose ALPN h2 (is --tls-cert set on its ws listener?)"
                    .to_string(),
            ));
        }
        let (send, conn) = h2::client::Builder::new()
            .data_frame_budget(DATA_FRAME_BUDGET)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| ClientError::Handshake(format!("h2: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    /// The request for `token`, resuming after `last_id`.
    fn request(
        &self,
        token: &str,
        last_id: Option<MsgId>,
    ) -> Result<http::Request<()>, ClientError> {
        let mut uri = String::with_capacity(self.origin.len() + 64 + token.len());
        uri.push_str(&self.origin);
        uri.push_str(&self.path);
        uri.push_str("?token=");
        push_query_value(&mut uri, token);
        if let Some(id) = last_id {
            let _ = write!(uri, "&last_id={}", id.0);
        }
        http::Request::get(uri)
            .header("accept", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(())
            .map_err(|e| ClientError::Protocol(format!("sse-h2 request: {e}")))
    }
}

/// One SSE stream of an HTTP/2 connection.
pub(crate) struct SseH2Io {
    dialer: Arc<H2Dialer>,
    /// Until [`open`](SseH2Io::open): the connection to open the stream on.
    send: Option<h2::client::SendRequest<Bytes>>,
    /// After it: the response body.
    body: Option<h2::RecvStream>,
    reader: SseReader,
}

impl SseH2Io {
    /// A stream slot on the dialer's current connection (opening one when
    /// needed); nothing is requested until [`open`](SseH2Io::open).
    pub(crate) async fn connect(
        dialer: Arc<H2Dialer>,
        source: Option<IpAddr>,
    ) -> Result<SseH2Io, ClientError> {
        let send = dialer.stream_handle(source).await?;
        Ok(SseH2Io {
            dialer,
            send: Some(send),
            body: None,
            reader: SseReader::default(),
        })
    }

    /// Sends the request and reads the response head; a refusal maps as
    /// on HTTP/1.1 (401: [`ClientError::AuthRefused`]).
    pub(crate) async fn open(
        &mut self,
        token: &str,
        last_id: Option<MsgId>,
    ) -> Result<(), ClientError> {
        let send = self
            .send
            .take()
            .ok_or_else(|| ClientError::Protocol("sse-h2 stream opened twice".to_string()))?;
        let req = self.dialer.request(token, last_id)?;
        let mut send = send
            .ready()
            .await
            .map_err(|e| ClientError::ClosedDuringAuth(Closed::Io(format!("h2: {e}"))))?;
        let (response, _) = send
            .send_request(req, true)
            .map_err(|e| ClientError::Send(format!("h2: {e}")))?;
        drop(send);
        let response = response
            .await
            .map_err(|e| ClientError::ClosedDuringAuth(Closed::Io(format!("h2: {e}"))))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        let mut body = response.into_body();
        if status.as_u16() == 200 {
            if !content_type
                .as_deref()
                .is_some_and(|t| t.starts_with("text/event-stream"))
            {
                return Err(ClientError::Protocol(format!(
                    "sse-h2 answered 200 with content type {:?}, not text/event-stream",
                    content_type.as_deref().unwrap_or("")
                )));
            }
            self.body = Some(body);
            return Ok(());
        }
        // A refusal: its plain-text body says why.
        let mut text = Vec::new();
        while text.len() < MAX_BODY {
            match body.data().await {
                Some(Ok(b)) => {
                    let _ = body.flow_control().release_capacity(b.len());
                    text.extend_from_slice(&b);
                }
                _ => break,
            }
        }
        text.truncate(MAX_BODY);
        let text = String::from_utf8_lossy(&text);
        let text = text.trim();
        Err(match status.as_u16() {
            401 => ClientError::AuthRefused(format!("HTTP 401: {text}")),
            s => ClientError::Handshake(format!(
                "HTTP error: {s} {}: {text}",
                status.canonical_reason().unwrap_or("")
            )),
        })
    }

    /// The next event. Cancel-safe: the only `await` is the body's next
    /// DATA frame, which is in the reader before anything can cancel.
    pub(crate) async fn recv(&mut self) -> Event {
        loop {
            if let Some(ev) = self.reader.next_event() {
                return ev;
            }
            let Some(body) = self.body.as_mut() else {
                return Event::Closed(Closed::Io("sse-h2 stream not open".to_string()));
            };
            match body.data().await {
                Some(Ok(b)) => {
                    // Give the bytes back to the window: never stall.
                    let _ = body.flow_control().release_capacity(b.len());
                    self.reader.push(&b);
                }
                Some(Err(e)) => return Event::Closed(Closed::Io(format!("h2: {e}"))),
                None => return Event::Closed(Closed::Eof),
            }
        }
    }

    /// Resets the stream (the room ends the session); the connection stays
    /// for its other streams.
    pub(crate) fn close(self) {
        drop(self);
    }
}
