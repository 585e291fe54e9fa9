//! A raw server-sent events client for the tests: the HTTP response head,
//! then events parsed as `EventSource` parses them.

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
