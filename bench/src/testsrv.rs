//! Test-only stand-in for a pushgate server, on real 127.0.0.1 sockets: a
//! room (WebSocket with JSON frames, TCP with length-prefixed binary frames,
//! and server-sent events on `GET /sse` of the WebSocket listener) that
//! checks tokens, answers pings and delivers pushes, and a minimal HTTP/1.1
//! `POST /api/v1/push/users` and `/api/v1/push/broadcast`. Just enough
//! protocol to exercise bench's clients and commands end to end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use parking_lot::Mutex;
use proto::{ClientFrame, CloseCode, ConnId, ErrorCode, MsgFrame, MsgId, RoomId, ServerFrame};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// The API key the fake HTTP endpoint accepts.
pub(crate) const API_KEY: &str = "test-key";
/// The token secret the fake room accepts.
pub(crate) const SECRET: &str = "test-secret";

/// How the fake behaves.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Behavior {
    /// Close every connection with 4003 this long after auth.
    pub(crate) kick_after: Option<Duration>,
    /// Deliver only every n-th push (to make losses).
    pub(crate) drop_every: Option<u64>,
    /// Answer every `GET /sse` with this HTTP status (e.g. 503, room full).
    pub(crate) sse_refuse: Option<u16>,
}

/// How often the fake writes an SSE comment.
const SSE_BEAT: Duration = Duration::from_millis(250);

/// A running fake server.
pub(crate) struct Fake {
    pub(crate) ws_url: String,
    pub(crate) tcp_addr: String,
    pub(crate) http_url: String,
    /// Peer addresses of accepted room connections.
    pub(crate) peers: Mutex<Vec<SocketAddr>>,
    /// Pings answered.
    pub(crate) pings: AtomicU64,
    /// Client close frames / clean shutdowns seen.
    pub(crate) clean_closes: AtomicU64,
    /// Acks received (highest id).
    pub(crate) acked: AtomicI64,
    behavior: Behavior,
    next_id: AtomicI64,
    pushes: AtomicU64,
    users: Mutex<HashMap<String, Vec<mpsc::Sender<ServerFrame>>>>,
}

/// Reads a report that a run wrote with `--json-out`.
pub(crate) fn read_report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Starts the fake on ephemeral ports.
pub(crate) async fn start(behavior: Behavior) -> Arc<Fake> {
    let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = Arc::new(Fake {
        ws_url: format!("ws://{}/ws", ws.local_addr().unwrap()),
        tcp_addr: tcp.local_addr().unwrap().to_string(),
        http_url: format!("http://{}", http.local_addr().unwrap()),
        peers: Mutex::new(Vec::new()),
        pings: AtomicU64::new(0),
        clean_closes: AtomicU64::new(0),
        acked: AtomicI64::new(0),
        behavior,
        next_id: AtomicI64::new(1),
        pushes: AtomicU64::new(0),
        users: Mutex::new(HashMap::new()),
    });
    let f = fake.clone();
    tokio::spawn(async move {
        while let Ok((s, peer)) = ws.accept().await {
            f.peers.lock().push(peer);
            let f = f.clone();
            tokio::spawn(async move {
                if is_sse(&s).await {
                    serve_sse(f, s).await;
                } else {
                    serve_ws(f, s).await;
                }
            });
        }
    });
    let f = fake.clone();
    tokio::spawn(async move {
        while let Ok((s, peer)) = tcp.accept().await {
            f.peers.lock().push(peer);
            tokio::spawn(serve_tcp(f.clone(), s));
        }
    });
    let f = fake.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = http.accept().await {
            tokio::spawn(serve_http(f.clone(), s));
        }
    });
    fake
}

/// The answer to one client frame; `Err` = close with this code.
fn answer(
    fake: &Fake,
    frame: ClientFrame,
    rx_slot: &mut Option<mpsc::Receiver<ServerFrame>>,
) -> Result<Option<ServerFrame>, (ServerFrame, CloseCode)> {
    match frame {
        ClientFrame::Auth { seq, token, .. } => {
            match proto::token::verify(
                &token,
                SECRET.as_bytes(),
                crate::now_unix_ns() / 1_000_000_000,
            ) {
                Ok(claims) => {
                    let (tx, rx) = mpsc::channel(1024);
                    fake.users
                        .lock()
                        .entry(claims.sub.clone())
                        .or_default()
                        .push(tx);
                    *rx_slot = Some(rx);
                    Ok(Some(ServerFrame::AuthOk {
                        seq,
                        conn: ConnId(7),
                        user: claims.sub.as_str().into(),
                        room: RoomId(1),
                        heartbeat: 1,
                    }))
                }
                Err(e) => Err((
                    ServerFrame::Error {
                        seq,
                        code: ErrorCode::AuthFailed,
                        message: e.to_string(),
                        close: Some(CloseCode::AuthFailed),
                    },
                    CloseCode::AuthFailed,
                )),
            }
        }
        ClientFrame::Ping { seq } => {
            fake.pings.fetch_add(1, Relaxed);
            Ok(Some(ServerFrame::Pong { seq }))
        }
        ClientFrame::Ack { id, .. } => {
            fake.acked.fetch_max(id.0, Relaxed);
            Ok(None)
        }
        _ => Ok(None),
    }
}

fn kick_frame() -> ServerFrame {
    ServerFrame::Error {
        seq: None,
        code: ErrorCode::HeartbeatTimeout,
        message: "test kick".into(),
        close: Some(CloseCode::HeartbeatTimeout),
    }
}

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn recv_or_never(rx: &mut Option<mpsc::Receiver<ServerFrame>>) -> Option<ServerFrame> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn json(frame: &ServerFrame) -> Message {
    let mut out = Vec::new();
    proto::json::encode_server(frame, &mut out);
    Message::text(String::from_utf8(out).unwrap())
}

async fn serve_ws(fake: Arc<Fake>, s: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
        return;
    };
    let mut rx = None;
    let kick = sleep_or_never(None);
    tokio::pin!(kick);
    loop {
        tokio::select! {
            m = ws.next() => {
                let Some(Ok(m)) = m else { return };
                match m {
                    Message::Text(t) => {
                        let frame = proto::json::decode_client(t.as_bytes()).unwrap();
                        let authed = matches!(frame, ClientFrame::Auth { .. });
                        match answer(&fake, frame, &mut rx) {
                            Ok(Some(reply)) => {
                                if ws.send(json(&reply)).await.is_err() { return }
                                if authed {
                                    kick.set(sleep_or_never(fake.behavior.kick_after));
                                }
                            }
                            Ok(None) => {}
                            Err((err, code)) => {
                                let _ = ws.send(json(&err)).await;
                                let _ = ws.send(Message::Close(Some(CloseFrame { code: WsCloseCode::from(code.as_u16()), reason: "".into() }))).await;
                                return;
                            }
                        }
                    }
                    Message::Close(_) => {
                        fake.clean_closes.fetch_add(1, Relaxed);
                        // tungstenite answers the close; drain to the end.
                        while let Some(Ok(_)) = ws.next().await {}
                        return;
                    }
                    _ => {}
                }
            }
            Some(f) = recv_or_never(&mut rx) => {
                if ws.send(json(&f)).await.is_err() { return }
            }
            _ = &mut kick => {
                let _ = ws.send(json(&kick_frame())).await;
                let _ = ws.send(Message::Close(Some(CloseFrame { code: WsCloseCode::from(4003), reason: "".into() }))).await;
                return;
            }
        }
    }
}

impl Fake {
    /// Hands `frame` to every connection of `user`; how many took it.
    pub(crate) fn deliver(&self, user: &str, frame: &ServerFrame) -> usize {
        let users = self.users.lock();
        users
            .get(user)
            .into_iter()
            .flatten()
            .filter(|tx| tx.try_send(frame.clone()).is_ok())
            .count()
    }
}

/// Whether the request on `s` is `GET /sse` (peeked, not consumed).
async fn is_sse(s: &TcpStream) -> bool {
    let mut first = [0u8; 8];
    for _ in 0..1000 {
        match s.peek(&mut first).await {
            Ok(n) if n == first.len() => return &first == b"GET /sse",
            Ok(0) | Err(_) => return false,
            Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    false
}

/// One frame as an event, as the room writes it: messages unnamed with
/// `id:`, other frames named after their op; a line break in the JSON
/// starts another `data:` line.
fn sse_event(frame: &ServerFrame) -> Vec<u8> {
    let mut json = Vec::new();
    proto::json::encode_server(frame, &mut json);
    let mut out = Vec::new();
    match frame {
        ServerFrame::Msg(m) => out.extend_from_slice(format!("id: {}\n", m.id.0).as_bytes()),
        ServerFrame::AuthOk { .. } => out.extend_from_slice(b"event: auth_ok\n"),
        ServerFrame::Error { .. } => out.extend_from_slice(b"event: error\n"),
        _ => out.extend_from_slice(b"event: other\n"),
    }
    for line in json.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// An HTTP refusal with a plain-text body, then the end of the stream.
async fn refuse_http(s: &mut TcpStream, status: u16, text: &str) {
    let resp = format!(
        "HTTP/1.1 {status} Refused\r\nConnection: close\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{text}",
        text.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

async fn serve_sse(fake: Arc<Fake>, mut s: TcpStream) {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut chunk = [0u8; 1024];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    if let Some(status) = fake.behavior.sse_refuse {
        return refuse_http(&mut s, status, "refused by the test").await;
    }
    let target = head.split(' ').nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .unwrap_or("");
    let mut rx = None;
    let auth = ClientFrame::Auth {
        seq: None,
        token: token.to_string(),
        last_id: None,
        device: None,
    };
    let Ok(Some(ok)) = answer(&fake, auth, &mut rx) else {
        return refuse_http(&mut s, 401, "invalid or expired token").await;
    };
    let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
        Connection: close\r\n\r\nretry: 1000\n\n"
        .to_vec();
    out.extend_from_slice(&sse_event(&ok));
    if s.write_all(&out).await.is_err() {
        return;
    }
    let kick = sleep_or_never(fake.behavior.kick_after);
    tokio::pin!(kick);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + SSE_BEAT, SSE_BEAT);
    loop {
        let mut scratch = [0u8; 256];
        tokio::select! {
            r = s.read(&mut scratch) => match r {
                Ok(0) => { fake.clean_closes.fetch_add(1, Relaxed); return }
                Ok(_) => {}
                Err(_) => return,
            },
            Some(f) = recv_or_never(&mut rx) => {
                if s.write_all(&sse_event(&f)).await.is_err() { return }
            }
            _ = beat.tick() => {
                if s.write_all(b": ping\n\n").await.is_err() { return }
            }
            _ = &mut kick => {
                let mut out = sse_event(&kick_frame());
                out.extend_from_slice(b"event: close\ndata: {\"code\":4003,\"reason\":\"heartbeat_timeout\"}\n\n");
                let _ = s.write_all(&out).await;
                return;
            }
        }
    }
}

fn bin(frame: &ServerFrame) -> Vec<u8> {
    let mut out = Vec::new();
    proto::binary::encode_server_framed(frame, &mut out);
    out
}

async fn serve_tcp(fake: Arc<Fake>, mut s: TcpStream) {
    let mut buf = bytes::BytesMut::new();
    let mut rx = None;
    let kick = sleep_or_never(None);
    tokio::pin!(kick);
    loop {
        while let Ok(Some(body)) = proto::binary::split_frame(&mut buf, 65536) {
            let frame = proto::binary::decode_client(&body).unwrap();
            let authed = matches!(frame, ClientFrame::Auth { .. });
            match answer(&fake, frame, &mut rx) {
                Ok(Some(reply)) => {
                    if s.write_all(&bin(&reply)).await.is_err() {
                        return;
                    }
                    if authed {
                        kick.set(sleep_or_never(fake.behavior.kick_after));
                    }
                }
                Ok(None) => {}
                Err((err, _)) => {
                    let _ = s.write_all(&bin(&err)).await;
                    return;
                }
            }
        }
        tokio::select! {
            r = s.read_buf(&mut buf) => match r {
                Ok(0) => { fake.clean_closes.fetch_add(1, Relaxed); return }
                Ok(_) => {}
                Err(_) => return,
            },
            Some(f) = recv_or_never(&mut rx) => {
                if s.write_all(&bin(&f)).await.is_err() { return }
            }
            _ = &mut kick => {
                let _ = s.write_all(&bin(&kick_frame())).await;
                return;
            }
        }
    }
}

/// HTTP/1.1 keep-alive: `POST /api/v1/push/users` and
/// `/api/v1/push/broadcast` only.
async fn serve_http(fake: Arc<Fake>, mut s: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
        let authorized = head.contains(&format!("authorization: bearer {API_KEY}"));
        let broadcast = head.starts_with("post /api/v1/push/broadcast ");
        let (status, answer) = if !broadcast && !head.starts_with("post /api/v1/push/users ") {
            (
                "404 Not Found",
                r#"{"error":{"code":"not_found","message":"no"}}"#.to_string(),
            )
        } else if !authorized {
            (
                "401 Unauthorized",
                r#"{"error":{"code":"unauthorized","message":"no"}}"#.to_string(),
            )
        } else {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let id = fake.next_id.fetch_add(1, Relaxed);
            let n = fake.pushes.fetch_add(1, Relaxed) + 1;
            let skip = fake.behavior.drop_every.is_some_and(|k| n % k == 0);
            let mut delivered = 0;
            if !skip {
                let msg = ServerFrame::Msg(MsgFrame {
                    id: MsgId(id),
                    ts: 0,
                    channel: None,
                    data: bytes::Bytes::from(v["data"].to_string()),
                    sender: None,
                });
                let users = fake.users.lock();
                let txs: Vec<&mpsc::Sender<ServerFrame>> = if broadcast {
                    users.values().flatten().collect()
                } else {
                    v["users"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|u| users.get(u.as_str().unwrap()).into_iter().flatten())
                        .collect()
                };
                for tx in txs {
                    if tx.try_send(msg.clone()).is_ok() {
                        delivered += 1;
                    }
                }
            }
            (
                "200 OK",
                format!(r#"{{"id":{id},"delivered":{delivered},"stored":1}}"#),
            )
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}
