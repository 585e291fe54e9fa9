//! A raw server-sent events client for the tests: the HTTP response head,
//! then events parsed as `EventSource` parses them. Over HTTP/1.1 (a socket
//! of its own) or as one stream of an HTTP/2 connection (the `h2` crate's
//! client, independent of the server's code).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A byte stream an SSE request can run on: TCP, or TLS over it.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for S {}

/// One event of the stream: its fields (`id`, `event`, `data` joined by
/// `\n`), or a comment.
#[derive(Debug, Default, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub comment: bool,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{self:?}: {e}"))
    }
}

/// A raw SSE client: the HTTP response head, then events as an
/// `EventSource` parses them (fields per line, a blank line ends an event).
pub struct Sse {
    sock: Box<dyn Stream>,
    buf: Vec<u8>,
    pub status: u16,
    pub head: String,
}

impl Sse {
    /// Sends `GET target` with `headers` to the WebSocket listener at `ws`
    /// and reads the response head.
    pub async fn open(ws: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Sse {
        let sock = TcpStream::connect(ws).await.unwrap();
        Sse::open_on(Box::new(sock), ws, target, headers).await
    }

    /// The same over an established stream (e.g. TLS) to `ws`.
    pub async fn open_on(
        mut sock: Box<dyn Stream>,
        ws: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Sse {
        let mut req =
            format!("GET {target} HTTP/1.1\r\nHost: {ws}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = timeout(Duration::from_secs(5), sock.read(&mut chunk))
                .await
                .expect("response head within 5 s")
                .unwrap();
            assert!(n > 0, "closed before the response head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        let status = head[9..12].parse().unwrap();
        buf.drain(..end);
        Sse {
            sock,
            buf,
            status,
            head,
        }
    }

    /// Sends `GET target` (or `method`) with `headers` as a new stream of the
    /// HTTP/2 connection `h2`, and reads the response head (within 5 s).
    pub async fn open_h2(
        h2: &h2::client::SendRequest<bytes::Bytes>,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Sse {
        let resp = Sse::request_h2(h2, method, target, headers).await;
        timeout(Duration::from_secs(5), Sse::head_h2(resp))
            .await
            .expect("response head within 5 s")
    }

    /// Sends the request of [`Sse::open_h2`]; the response is still to come.
    pub async fn request_h2(
        h2: &h2::client::SendRequest<bytes::Bytes>,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> h2::client::ResponseFuture {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost{target}"))
            .header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).unwrap();
        let mut h2 = timeout(Duration::from_secs(5), h2.clone().ready())
            .await
            .expect("h2 connection ready within 5 s")
            .unwrap();
        let (resp, _) = h2.send_request(req, true).unwrap();
        resp
    }

    /// The response to [`Sse::request_h2`]: status, head and body.
    pub async fn head_h2(resp: h2::client::ResponseFuture) -> Sse {
        let resp = resp.await.unwrap();
        let status = resp.status().as_u16();
        let mut head = String::new();
        for (k, v) in resp.headers() {
            head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
        }
        Sse {
            sock: Box::new(H2Body {
                recv: resp.into_body(),
                chunk: bytes::Bytes::new(),
            }),
            buf: Vec::new(),
            status,
            head,
        }
    }

    /// The response body until the server closes (for refusals).
    pub async fn body(mut self) -> String {
        let mut rest = Vec::new();
        let _ = timeout(Duration::from_secs(5), self.sock.read_to_end(&mut rest)).await;
        self.buf.extend_from_slice(&rest);
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The next event or comment; `None` at the end of the stream.
    pub async fn next(&mut self, limit: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buf[..i].to_vec()).unwrap();
                self.buf.drain(..i + 2);
                let mut ev = Event::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if line.starts_with(':') {
                        ev.comment = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v.to_owned());
                    } else if line.starts_with("retry: ") {
                        ev.event = Some("retry".into());
                    } else {
                        panic!("not an SSE line: {line:?}");
                    }
                }
                ev.data = data.join("\n");
                return Some(ev);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.sock.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no event within {limit:?}; buffered {:?}", self.buf))
                .unwrap();
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next event that is not a comment.
    pub async fn event(&mut self) -> Event {
        loop {
            let ev = self
                .next(Duration::from_secs(5))
                .await
                .expect("stream ended");
            if !ev.comment {
                return ev;
            }
        }
    }

    /// Skips `retry`, `auth_ok` and `sub_ok`; returns the `auth_ok` frame.
    pub async fn opened(&mut self, subs: usize) -> Value {
        assert_eq!(self.event().await.event.as_deref(), Some("retry"));
        let ok = self.event().await;
        assert_eq!(ok.event.as_deref(), Some("auth_ok"), "{ok:?}");
        for _ in 0..subs {
            let sub = self.event().await;
            assert_eq!(sub.event.as_deref(), Some("sub_ok"), "{sub:?}");
        }
        ok.json()
    }
}

/// An HTTP/2 response body read as a byte stream (its window given back
/// as it is read; dropping it resets the stream, as `EventSource.close()`
/// does); writes go nowhere.
struct H2Body {
    recv: h2::RecvStream,
    chunk: bytes::Bytes,
}

impl tokio::io::AsyncRead for H2Body {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        while this.chunk.is_empty() {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(b)) => {
                    let _ = this.recv.flow_control().release_capacity(b.len());
                    this.chunk = b;
                }
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.chunk.len().min(buf.remaining());
        buf.put_slice(&this.chunk.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for H2Body {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
