//! Test harness: a room on 127.0.0.1 ports with an in-memory backend, and
//! real clients (the shared `testkit::wire` client: tokio-tungstenite with
//! either subprotocol, raw TCP with proto::binary).
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::large_enum_variant
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use proto::token::Claims;
use proto::{ClientFrame, EncodedMsg, ErrorCode, MsgFrame, MsgId, RoomId, ServerFrame, UserId};
use room::{Backend, BackendError, Listener, Room, RoomConfig, SessionInfo};
use testkit::wire::{self, Unit, WsError};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

pub const SECRET: &[u8] = b"test-secret";
/// Longest any single receive may take in a test.
pub const RECV_LIMIT: Duration = Duration::from_secs(5);

/// In-memory backend double: stored user messages, acks, channel history,
/// and a record of connected/disconnected calls.
#[derive(Default)]
pub struct MemBackend {
    pub state: Mutex<State>,
}

#[derive(Default)]
pub struct State {
    pub user_msgs: HashMap<String, Vec<MsgFrame>>,
    pub acks: HashMap<(String, String), MsgId>,
    pub channel_msgs: HashMap<String, Vec<MsgFrame>>,
    pub connected: Vec<SessionInfo>,
    pub disconnected: Vec<SessionInfo>,
    /// Users whose replay (and ack lookup) fails (the store is "down" for them).
    pub failing_replay: Vec<String>,
    /// When set, every replay read waits for a permit of it first (a slow
    /// store), counted in `replays_in_flight`.
    pub replay_gate: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    /// Replay reads inside the backend now, and the most at once.
    pub replays_in_flight: usize,
    pub most_replays_in_flight: usize,
}

impl MemBackend {
    pub fn store(&self, user: &str, msg: MsgFrame) {
        self.state
            .lock()
            .user_msgs
            .entry(user.to_owned())
            .or_default()
            .push(msg);
    }
    pub fn store_channel(&self, channel: &str, msg: MsgFrame) {
        self.state
            .lock()
            .channel_msgs
            .entry(channel.to_owned())
            .or_default()
            .push(msg);
    }
    pub fn set_ack(&self, user: &str, device: &str, id: i64) {
        self.state
            .lock()
            .acks
            .insert((user.to_owned(), device.to_owned()), MsgId(id));
    }
    pub fn ack_of(&self, user: &str, device: &str) -> Option<MsgId> {
        self.state
            .lock()
            .acks
            .get(&(user.to_owned(), device.to_owned()))
            .copied()
    }
}

#[async_trait]
impl Backend for MemBackend {
    async fn connected(&self, session: &SessionInfo) {
        self.state.lock().connected.push(session.clone());
    }
    async fn disconnected(&self, session: &SessionInfo, _now_ms: i64) {
        self.state.lock().disconnected.push(session.clone());
    }
    async fn acked(&self, user: &UserId, device: &str) -> Result<Option<MsgId>, BackendError> {
        if self
            .state
            .lock()
            .failing_replay
            .iter()
            .any(|u| u == user.as_str())
        {
            return Err(BackendError::Unavailable {
                source: "store unreachable".into(),
            });
        }
        Ok(self.ack_of(user.as_str(), device))
    }
    async fn replay(
        &self,
        user: &UserId,
        after: MsgId,
        limit: u32,
    ) -> Result<Vec<MsgFrame>, BackendError> {
        let gate = self.state.lock().replay_gate.clone();
        if let Some(gate) = gate {
            {
                let mut st = self.state.lock();
                st.replays_in_flight += 1;
                st.most_replays_in_flight = st.most_replays_in_flight.max(st.replays_in_flight);
            }
            let _pass = gate.acquire().await;
            self.state.lock().replays_in_flight -= 1;
        }
        let st = self.state.lock();
        if st.failing_replay.iter().any(|u| u == user.as_str()) {
            return Err(BackendError::Unavailable {
                source: "store unreachable".into(),
            });
        }
        let msgs = st.user_msgs.get(user.as_str()).cloned().unwrap_or_default();
        Ok(msgs
            .into_iter()
            .filter(|m| m.id > after)
            .take(limit as usize)
            .collect())
    }
    async fn ack(&self, user: &UserId, device: &str, id: MsgId) -> Result<(), BackendError> {
        self.set_ack(user.as_str(), device, id.0);
        Ok(())
    }
    async fn channel_history(
        &self,
        channel: &str,
        after: MsgId,
        limit: u32,
    ) -> Result<Vec<MsgFrame>, BackendError> {
        let st = self.state.lock();
        let msgs = st.channel_msgs.get(channel).cloned().unwrap_or_default();
        Ok(msgs
            .into_iter()
            .filter(|m| m.id > after)
            .take(limit as usize)
            .collect())
    }
}

/// Test defaults: short timeouts, small limits.
pub fn config() -> RoomConfig {
    let mut c = RoomConfig::new(RoomId(7), Arc::from(SECRET));
    c.heartbeat = Duration::from_secs(5);
    c.auth_timeout = Duration::from_secs(3);
    c.max_frame = 4096;
    c.send_queue = 64;
    c.max_channels = 4;
    c.max_connections = 100;
    c.rate_limit = 1000;
    c.drain_reconnect_delay = Duration::from_millis(1000);
    c
}

pub struct TestRoom {
    pub room: Room,
    pub ws: SocketAddr,
    pub tcp: SocketAddr,
    pub backend: Arc<MemBackend>,
    pub shutdown: CancellationToken,
}

pub async fn start(cfg: RoomConfig) -> TestRoom {
    let backend = Arc::new(MemBackend::default());
    let room = Room::new(cfg, backend.clone());
    let ws_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ws, tcp) = (ws_l.local_addr().unwrap(), tcp_l.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let (r1, s1) = (room.clone(), shutdown.clone());
    tokio::spawn(async move { r1.serve(Listener::Ws(ws_l, None), s1).await });
    let (r2, s2) = (room.clone(), shutdown.clone());
    tokio::spawn(async move { r2.serve(Listener::Tcp(tcp_l, None), s2).await });
    TestRoom {
        room,
        ws,
        tcp,
        backend,
        shutdown,
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn claims(user: &str) -> Claims {
    Claims {
        sub: user.to_owned(),
        exp: now_secs() + 600,
        dev: None,
        channels: None,
        send: None,
        publish: None,
    }
}

pub fn mint(c: &Claims) -> String {
    proto::token::mint(c, SECRET).unwrap()
}

pub fn token(user: &str) -> String {
    mint(&claims(user))
}

pub fn msg(id: i64, channel: Option<&str>) -> MsgFrame {
    MsgFrame {
        id: MsgId(id),
        ts: 1_700_000_000_000 + id,
        channel: channel.map(str::to_owned),
        data: Bytes::from(format!("{{\"n\":{id}}}")),
        sender: None,
    }
}

/// A pushed message as the center builds it: user messages are stored ones
/// (in the user's queue), channel messages are not.
pub fn encoded(id: i64, channel: Option<&str>) -> Arc<EncodedMsg> {
    let mut m = EncodedMsg::new(&msg(id, channel));
    m.stored = channel.is_none();
    Arc::new(m)
}

/// A user message that is not in the user's queue (`store: false`, or a broadcast).
pub fn unstored(id: i64) -> Arc<EncodedMsg> {
    Arc::new(EncodedMsg::new(&msg(id, None)))
}

/// A message with a large payload (`size` bytes of data).
pub fn big(id: i64, size: usize) -> Arc<EncodedMsg> {
    let data = format!("\"{}\"", "x".repeat(size));
    Arc::new(EncodedMsg::new(&MsgFrame {
        id: MsgId(id),
        ts: 1,
        channel: None,
        data: Bytes::from(data),
        sender: None,
    }))
}

pub fn auth(token: String) -> ClientFrame {
    ClientFrame::Auth {
        seq: Some(1),
        token,
        last_id: None,
        device: None,
    }
}

pub fn ping(seq: u32) -> ClientFrame {
    ClientFrame::Ping { seq: Some(seq) }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    WsJson,
    WsBin,
    Tcp,
}

impl Transport {
    fn wire(self) -> wire::Transport {
        match self {
            Transport::WsJson => wire::Transport::WsJson,
            Transport::WsBin => wire::Transport::WsBin,
            Transport::Tcp => wire::Transport::Tcp,
        }
    }
}

pub const ALL: [Transport; 3] = [Transport::WsJson, Transport::WsBin, Transport::Tcp];

/// What a client saw.
#[derive(Debug)]
pub enum Event {
    Frame(ServerFrame),
    /// WebSocket close frame.
    Close {
        code: u16,
        reason: String,
    },
    /// The connection ended without (further) frames.
    Eof,
}

type Ws = WebSocketStream<TcpStream>;

/// A client over the shared test wire client ([`testkit::wire`]).
pub struct Client(wire::Client);

/// Opens a WebSocket to `path` asking for `protocol`; returns the stream and
/// the protocol the server chose.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    protocol: Option<&str>,
) -> Result<(Ws, Option<String>), WsError> {
    let stream = TcpStream::connect(addr).await?;
    wire::ws_handshake(stream, addr, path, protocol).await
}

impl TestRoom {
    pub async fn client(&self, t: Transport) -> Client {
        let addr = if t == Transport::Tcp {
            self.tcp
        } else {
            self.ws
        };
        let stream = TcpStream::connect(addr).await.unwrap();
        let c = wire::Client::on_stream(stream, addr, t.wire()).await;
        assert_eq!(c.protocol(), t.wire().subprotocol());
        Client(c)
    }

    /// A client authenticated as `user` (device from the token or `device`).
    pub async fn authed(&self, t: Transport, user: &str, device: Option<&str>) -> Client {
        let mut c = self.client(t).await;
        c.send(&ClientFrame::Auth {
            seq: None,
            token: token(user),
            last_id: None,
            device: device.map(str::to_owned),
        })
        .await;
        match c.frame().await {
            ServerFrame::AuthOk { .. } => c,
            other => panic!("expected auth_ok, got {other:?}"),
        }
    }

    pub fn metrics(&self) -> String {
        let mut s = String::new();
        self.room.write_metrics(&mut s);
        s
    }

    /// Value of one metric line (`name` with its labels), 0 if absent.
    pub fn metric(&self, series: &str) -> u64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0, |v| v.parse().unwrap())
    }

    /// Waits (bounded) until `f` holds.
    pub async fn wait_until(&self, what: &str, mut f: impl FnMut(&TestRoom) -> bool) {
        for _ in 0..500 {
            if f(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

impl Client {
    /// Wraps an open WebSocket speaking JSON, or binary when `bin`.
    pub fn from_ws(ws: Ws, bin: bool) -> Client {
        Client(wire::Client::from_ws(ws, bin))
    }

    fn is_tcp(&self) -> bool {
        self.0.transport() == wire::Transport::Tcp
    }

    pub async fn send(&mut self, f: &ClientFrame) {
        self.0.send(f).await.unwrap();
    }

    /// Sends a WebSocket text frame (panics on TCP).
    pub async fn send_text(&mut self, text: &str) {
        self.0.send_text(text).await.unwrap();
    }

    /// Sends raw bytes: a text frame on WebSocket-JSON, a binary frame on
    /// WebSocket-bin, the bytes as they are on TCP. Errors are ignored (the
    /// server may already have closed).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        if self.0.transport().is_binary() {
            let _ = self.0.send_raw(bytes).await;
        } else {
            let _ = self.0.send_text(&String::from_utf8_lossy(bytes)).await;
        }
    }

    /// The next event, within [`RECV_LIMIT`].
    pub async fn recv(&mut self) -> Event {
        tokio::time::timeout(RECV_LIMIT, self.0.next_unit())
            .await
            .map(|u| match u {
                Unit::Text(_) | Unit::Binary(_) => Event::Frame(u.frame().unwrap().unwrap()),
                Unit::Close {
                    code: Some(code),
                    reason,
                } => Event::Close { code, reason },
                Unit::Close { code: None, .. } | Unit::Eof | Unit::Error(_) => Event::Eof,
            })
            .expect("no event within the receive limit")
    }

    /// The next frame; panics on close/EOF.
    pub async fn frame(&mut self) -> ServerFrame {
        match self.recv().await {
            Event::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next message frame, skipping nothing.
    pub async fn msg(&mut self) -> MsgFrame {
        match self.frame().await {
            ServerFrame::Msg(m) => m,
            other => panic!("expected msg, got {other:?}"),
        }
    }

    /// Reads until the final error frame and, on WebSocket, the close frame.
    /// Skips pushed messages and other frames on the way (bounded). Returns
    /// the error code, the close code, and the close reason (the error
    /// message on TCP).
    pub async fn closed(&mut self) -> (ErrorCode, u16, String) {
        for _ in 0..100_000 {
            match self.recv().await {
                Event::Frame(ServerFrame::Error {
                    code,
                    message,
                    close: Some(close),
                    ..
                }) => {
                    if self.is_tcp() {
                        assert!(matches!(self.recv().await, Event::Eof), "eof after close");
                        return (code, close.as_u16(), message);
                    }
                    return match self.recv().await {
                        Event::Close { code: c, reason } => {
                            assert_eq!(c, close.as_u16(), "close frame code");
                            assert_eq!(reason, message, "close reason = error message");
                            (code, c, reason)
                        }
                        other => panic!("expected close frame, got {other:?}"),
                    };
                }
                Event::Frame(_) => continue,
                other => panic!("expected a final error frame, got {other:?}"),
            }
        }
        panic!("no final error frame");
    }

    /// Whether the server ends this connection with `close` and error `code`.
    pub async fn expect_close(&mut self, code: ErrorCode, close: u16) -> String {
        let (c, cc, reason) = self.closed().await;
        assert_eq!((c, cc), (code, close), "reason: {reason}");
        reason
    }

    /// Sends a ping and expects its pong (skipping messages).
    pub async fn roundtrip(&mut self, seq: u32) {
        self.send(&ping(seq)).await;
        for _ in 0..1000 {
            match self.frame().await {
                ServerFrame::Pong { seq: s } => {
                    assert_eq!(s, Some(seq));
                    return;
                }
                _ => continue,
            }
        }
        panic!("no pong");
    }
}
