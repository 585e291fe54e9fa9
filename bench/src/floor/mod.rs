//! `bench floor`: the floor under pushgate's per-operation cost. One thread,
//! one epoll set (mio), no runtime, no task or timer per connection, no
//! routing index: a connection is a socket, two byte buffers (empty unless a
//! frame arrived in pieces or the socket would block) and a flag.
//!
//! It speaks just enough of the client protocol for bench's clients:
//! - WebSocket: the HTTP/1.1 upgrade, masked text frames with JSON client
//!   frames; `auth` is answered `auth_ok` (the token verified with HS256 as
//!   pushgate does, when `--token-secret` is given), `ping` is answered
//!   `pong` (`{"op":"ping"}` by comparing bytes, without decoding), WebSocket
//!   ping control frames with pong control frames, close with close.
//! - TCP: length-prefixed binary frames, the same frames.
//! - HTTP control port: `POST /api/v1/push/broadcast` with `{"data":…}`
//!   (as pushgate's REST API) encodes one `msg` frame once per encoding and
//!   writes it to every authenticated connection, one `write()` each;
//!   `GET /stats` answers the counters and this process's CPU time as JSON;
//!   `POST /quit` stops the server.
//!
//! What it leaves out, and pushgate does: heartbeat timeouts, the per-user
//! and per-channel directory, send queues and slow-consumer handling, rate
//! limits, stored messages, metrics, draining. The difference in CPU per
//! operation between the two is what those (and the runtime) cost.

pub(crate) mod ws;

use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use proto::{ClientFrame, CloseCode, ConnId, ErrorCode, MsgFrame, MsgId, RoomId, ServerFrame};
use serde::Serialize;

use crate::args::parse_duration;

const WS_LISTENER: Token = Token(0);
const TCP_LISTENER: Token = Token(1);
const HTTP_LISTENER: Token = Token(2);
const WAKER: Token = Token(3);
/// Token of connection slot `i` is `FIRST_CONN + i`.
const FIRST_CONN: usize = 4;

/// One read() takes at most this much (into a buffer shared by all connections).
const READ_CHUNK: usize = 64 * 1024;
/// Unsent bytes a connection may hold before it is closed as a slow reader.
const MAX_OUT: usize = 1 << 20;
/// Largest control request body.
const MAX_HTTP_BODY: usize = 1 << 20;
/// Longest wait in one poll, so the deadline and stop flag are seen.
const MAX_WAIT: Duration = Duration::from_millis(200);

/// Arguments of `bench floor`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct FloorArgs {
    /// WebSocket listen address.
    #[arg(long, default_value = "127.0.0.1:7800")]
    ws: SocketAddr,
    /// TCP listen address (length-prefixed binary frames).
    #[arg(long, default_value = "127.0.0.1:7801")]
    tcp: SocketAddr,
    /// HTTP control address: `POST /api/v1/push/broadcast`, `GET /stats`,
    /// `POST /quit`.
    #[arg(long, default_value = "127.0.0.1:7880")]
    http: SocketAddr,
    /// Verify auth tokens with this secret (HS256, as pushgate does); without
    /// it every token is accepted unread.
    #[arg(long, env = "PUSHGATE_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
    /// Heartbeat interval told to clients in `auth_ok`, seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=86400))]
    heartbeat: u32,
    /// Also broadcast by itself this often (`{"k":"b","n":N,"t":<unix ns>}`).
    #[arg(long, value_parser = parse_duration)]
    broadcast_every: Option<Duration>,
    /// Exit after this long.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    duration: Duration,
    /// Connections held at most; more are closed as soon as accepted.
    #[arg(long, default_value_t = 1_000_000)]
    max_connections: u64,
    /// Largest client frame, bytes.
    #[arg(long, default_value_t = proto::DEFAULT_MAX_FRAME)]
    max_frame: usize,
}

/// How the floor server behaves.
#[derive(Clone, Debug)]
pub(crate) struct FloorConfig {
    /// Token secret; `None` accepts every token.
    pub(crate) secret: Option<Vec<u8>>,
    /// Heartbeat told to clients, seconds.
    pub(crate) heartbeat: u32,
    /// Broadcast by itself this often.
    pub(crate) broadcast_every: Option<Duration>,
    /// Run at most this long.
    pub(crate) duration: Duration,
    /// Most connections at once.
    pub(crate) max_connections: u64,
    /// Largest client frame.
    pub(crate) max_frame: usize,
}

impl Default for FloorConfig {
    fn default() -> Self {
        FloorConfig {
            secret: None,
            heartbeat: 30,
            broadcast_every: None,
            duration: Duration::from_secs(3600),
            max_connections: 1_000_000,
            max_frame: proto::DEFAULT_MAX_FRAME,
        }
    }
}

/// What the floor did (also the `GET /stats` answer).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct FloorStats {
    /// Connections accepted, all listeners.
    pub(crate) accepted: u64,
    /// Connections open now.
    pub(crate) live: u64,
    /// WebSocket upgrades answered.
    pub(crate) upgraded: u64,
    /// `auth_ok` sent.
    pub(crate) authenticated: u64,
    /// Tokens refused.
    pub(crate) auth_failed: u64,
    /// Protocol `ping` frames answered.
    pub(crate) pings: u64,
    /// WebSocket ping control frames answered.
    pub(crate) ws_pings: u64,
    /// Broadcasts sent.
    pub(crate) broadcasts: u64,
    /// Broadcast frames written or queued, one per connection per broadcast.
    pub(crate) deliveries: u64,
    /// Wall time spent in broadcast loops (one thread, so about its CPU).
    pub(crate) broadcast_loop_ns: u64,
    /// Connections closed by a close frame (WebSocket) or end of stream (TCP).
    pub(crate) clean_closes: u64,
    /// Connections closed otherwise (errors, protocol violations, slow readers).
    pub(crate) other_closes: u64,
    /// Accepts refused above `--max-connections`.
    pub(crate) refused: u64,
    /// accept() failures (e.g. out of file descriptors).
    pub(crate) accept_errors: u64,
    /// User CPU of this process, seconds.
    pub(crate) cpu_user_s: Option<f64>,
    /// System CPU of this process, seconds.
    pub(crate) cpu_system_s: Option<f64>,
}

/// What kind of socket a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ws,
    Tcp,
    Http,
}

/// One connection.
struct Conn {
    sock: TcpStream,
    kind: Kind,
    /// WebSocket only: the upgrade was answered.
    upgraded: bool,
    authed: bool,
    /// Close once `out` is empty; read nothing more.
    closing: bool,
    /// Bytes received but not yet a whole frame.
    inbuf: Vec<u8>,
    /// Bytes the socket did not take yet.
    out: Vec<u8>,
}

/// What handling received bytes asks of the loop.
#[derive(Debug)]
enum Action {
    Keep,
    /// Close once the pending output is written (any close frame is queued).
    Close,
    /// The peer ended the stream (`clean`: a TCP client's shutdown).
    Eof {
        clean: bool,
    },
    /// A read failed.
    Failed,
    /// Broadcast this `data` (one JSON value), then answer the HTTP request.
    Broadcast(Box<serde_json::value::RawValue>),
    /// Answer the HTTP request, then stop the server.
    Quit,
}

/// Everything the frame handlers need besides the connection.
struct State {
    cfg: FloorConfig,
    stats: FloorStats,
    next_conn: u64,
    next_msg: i64,
    /// `{"op":"pong"}` in a WebSocket text frame.
    pong_ws: Vec<u8>,
    /// A seq-less binary pong with its length prefix.
    pong_tcp: Vec<u8>,
}

/// Stops a running floor server from another thread.
#[cfg_attr(not(test), allow(dead_code))] // the CLI stops by deadline or POST /quit
#[derive(Clone)]
pub(crate) struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

#[cfg_attr(not(test), allow(dead_code))]
impl Stopper {
    /// Asks the server loop to end (it returns within one poll).
    pub(crate) fn stop(&self) {
        self.flag.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
    }
}

/// The floor server, bound and ready to [`run`](Floor::run).
pub(crate) struct Floor {
    poll: Poll,
    ws: TcpListener,
    tcp: TcpListener,
    http: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    scratch: Vec<u8>,
    st: State,
    stop: Arc<AtomicBool>,
    #[cfg_attr(not(test), allow(dead_code))]
    waker: Arc<Waker>,
    /// An accept failed (e.g. EMFILE): try again after the next poll.
    accept_retry: bool,
}

/// The bound addresses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Addrs {
    /// WebSocket.
    pub(crate) ws: SocketAddr,
    /// TCP.
    pub(crate) tcp: SocketAddr,
    /// HTTP control.
    pub(crate) http: SocketAddr,
}

fn encode(frame: &ServerFrame, kind: Kind) -> Vec<u8> {
    let mut body = Vec::with_capacity(96);
    match kind {
        Kind::Tcp => {
            proto::binary::encode_server_framed(frame, &mut body);
            body
        }
        Kind::Ws | Kind::Http => {
            proto::json::encode_server(frame, &mut body);
            ws::server_frame(ws::OP_TEXT, &body)
        }
    }
}

/// Writes `bytes` now, or queues what the socket does not take. `false`:
/// the connection is broken or too far behind; close it.
fn send(conn: &mut Conn, bytes: &[u8]) -> bool {
    if !conn.out.is_empty() {
        conn.out.extend_from_slice(bytes);
        return conn.out.len() <= MAX_OUT;
    }
    let mut at = 0;
    while at < bytes.len() {
        match conn.sock.write(&bytes[at..]) {
            Ok(0) => return false,
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.out.extend_from_slice(&bytes[at..]);
                return conn.out.len() <= MAX_OUT;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Writes queued bytes; `false` when the connection broke.
fn flush(conn: &mut Conn) -> bool {
    let mut at = 0;
    while at < conn.out.len() {
        match conn.sock.write(&conn.out[at..]) {
            Ok(0) => return false,
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    conn.out.drain(..at);
    if conn.out.is_empty() {
        conn.out = Vec::new();
    }
    true
}

fn unix_secs() -> u64 {
    crate::now_unix_ns() / 1_000_000_000
}

/// Answers one decoded client frame; `false`: close the connection.
fn on_frame(conn: &mut Conn, frame: ClientFrame, st: &mut State) -> bool {
    match frame {
        ClientFrame::Auth { seq, token, .. } => {
            if conn.authed {
                return true;
            }
            let user = match &st.cfg.secret {
                None => "floor".to_string(),
                Some(secret) => match proto::token::verify(&token, secret, unix_secs()) {
                    Ok(claims) => claims.sub,
                    Err(e) => {
                        st.stats.auth_failed += 1;
                        let err = ServerFrame::Error {
                            seq,
                            code: ErrorCode::AuthFailed,
                            message: e.to_string(),
                            close: Some(CloseCode::AuthFailed),
                        };
                        let _ = send(conn, &encode(&err, conn.kind));
                        if conn.kind == Kind::Ws {
                            let _ = send(conn, &ws::close_frame(CloseCode::AuthFailed.as_u16()));
                        }
                        return false;
                    }
                },
            };
            st.next_conn += 1;
            conn.authed = true;
            st.stats.authenticated += 1;
            let ok = ServerFrame::AuthOk {
                seq,
                conn: ConnId(st.next_conn),
                user: user.as_str().into(),
                room: RoomId(1),
                heartbeat: st.cfg.heartbeat,
            };
            send(conn, &encode(&ok, conn.kind))
        }
        ClientFrame::Ping { seq } => {
            st.stats.pings += 1;
            send(conn, &encode(&ServerFrame::Pong { seq }, conn.kind))
        }
        // Subscriptions and acks need a directory and a store: not the floor's.
        _ => true,
    }
}

/// A protocol violation: the error frame, then (WebSocket) a close frame.
fn refuse(conn: &mut Conn, message: &str) -> Action {
    let err = ServerFrame::Error {
        seq: None,
        code: ErrorCode::BadFrame,
        message: message.to_string(),
        close: Some(CloseCode::ProtocolError),
    };
    let _ = send(conn, &encode(&err, conn.kind));
    if conn.kind == Kind::Ws {
        let _ = send(conn, &ws::close_frame(CloseCode::ProtocolError.as_u16()));
    }
    Action::Close
}

/// Handles the bytes of a WebSocket connection; returns the bytes used
/// (whole frames; a partial frame stays masked for next time).
fn process_ws(conn: &mut Conn, buf: &mut [u8], st: &mut State) -> (usize, Action) {
    let mut at = 0;
    if !conn.upgraded {
        let Some(end) = ws::head_end(buf) else {
            if buf.len() > ws::MAX_HEAD {
                return (buf.len(), Action::Close);
            }
            return (0, Action::Keep);
        };
        match ws::upgrade_response(&buf[..end]) {
            Ok(resp) => {
                if !send(conn, &resp) {
                    return (buf.len(), Action::Close);
                }
                conn.upgraded = true;
                st.stats.upgraded += 1;
            }
            Err(_) => {
                let _ = send(
                    conn,
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                return (buf.len(), Action::Close);
            }
        }
        at = end;
    }
    loop {
        let rest = &mut buf[at..];
        let h = match ws::parse_header(rest, st.cfg.max_frame) {
            ws::Parsed::Need => return (at, Action::Keep),
            ws::Parsed::Bad(why) => return (buf.len(), refuse(conn, why)),
            ws::Parsed::Frame(h) => h,
        };
        let total = h.header_len + h.payload_len;
        let Some(payload) = rest.get_mut(h.header_len..total) else {
            return (at, Action::Keep);
        };
        ws::unmask(payload, h.mask);
        at += total;
        let ok = match (h.fin, h.opcode) {
            (true, ws::OP_TEXT) => {
                if payload == b"{\"op\":\"ping\"}" {
                    st.stats.pings += 1;
                    send(conn, &st.pong_ws)
                } else {
                    match proto::json::decode_client(payload) {
                        Ok(frame) => on_frame(conn, frame, st),
                        Err(e) => return (buf.len(), refuse(conn, &e.to_string())),
                    }
                }
            }
            (_, ws::OP_PING) => {
                st.stats.ws_pings += 1;
                send(conn, &ws::server_frame(ws::OP_PONG, payload))
            }
            (_, ws::OP_PONG) => true,
            (_, ws::OP_CLOSE) => {
                st.stats.clean_closes += 1;
                // Echo the code (RFC 6455 5.5.1), then close.
                let code = payload.get(..2).map_or(&[][..], |c| c);
                let _ = send(conn, &ws::server_frame(ws::OP_CLOSE, code));
                return (buf.len(), Action::Close);
            }
            // Binary messages (pushgate.v1.bin) and fragments: not spoken.
            (_, ws::OP_BINARY | ws::OP_CONT) | (false, ws::OP_TEXT) => {
                return (
                    buf.len(),
                    refuse(conn, "binary and fragmented messages are not supported"),
                )
            }
            _ => return (buf.len(), refuse(conn, "unknown opcode")),
        };
        if !ok {
            return (buf.len(), Action::Failed);
        }
    }
}

/// Handles the bytes of a TCP connection (length-prefixed binary frames).
fn process_tcp(conn: &mut Conn, buf: &[u8], st: &mut State) -> (usize, Action) {
    let mut at = 0;
    loop {
        let (h, n) = match proto::binary::frame_len(&buf[at..], st.cfg.max_frame) {
            Ok(None) => return (at, Action::Keep),
            Ok(Some(x)) => x,
            Err(e) => return (buf.len(), refuse(conn, &e.to_string())),
        };
        let Some(body) = buf.get(at + h..at + h + n) else {
            return (at, Action::Keep);
        };
        at += h + n;
        let ok = if body == [proto::binary::OP_PING, 0] {
            st.stats.pings += 1;
            send(conn, &st.pong_tcp)
        } else {
            match proto::binary::decode_client(body) {
                Ok(frame) => on_frame(conn, frame, st),
                Err(e) => return (buf.len(), refuse(conn, &e.to_string())),
            }
        };
        if !ok {
            return (buf.len(), Action::Failed);
        }
    }
}

fn http_response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The push request body: only `data` is used.
#[derive(serde::Deserialize)]
struct PushBody {
    data: Box<serde_json::value::RawValue>,
}

/// Handles one HTTP control request (one per connection).
fn process_http(conn: &mut Conn, buf: &[u8], st: &mut State) -> (usize, Action) {
    let Some(end) = ws::head_end(buf) else {
        if buf.len() > ws::MAX_HEAD {
            return (buf.len(), Action::Close);
        }
        return (0, Action::Keep);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let len = ws::header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if len > MAX_HTTP_BODY {
        let _ = send(conn, &http_response("413 Payload Too Large", "{}"));
        return (buf.len(), Action::Close);
    }
    let Some(body) = buf.get(end..end + len) else {
        return (0, Action::Keep);
    };
    let mut line = head.split_whitespace();
    let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
    let action = match (method, path) {
        ("POST", "/api/v1/push/broadcast") => match serde_json::from_slice::<PushBody>(body) {
            Ok(p) => return (end + len, Action::Broadcast(p.data)),
            Err(e) => {
                let msg =
                    serde_json::json!({"error": {"code": "bad_request", "message": e.to_string()}});
                let _ = send(conn, &http_response("400 Bad Request", &msg.to_string()));
                Action::Close
            }
        },
        ("GET", "/stats") => {
            let body = serde_json::to_string(&stats_now(&st.stats)).unwrap_or_default();
            let _ = send(conn, &http_response("200 OK", &body));
            Action::Close
        }
        ("POST", "/quit") => {
            let _ = send(conn, &http_response("200 OK", "{}"));
            Action::Quit
        }
        _ => {
            let _ = send(conn, &http_response("404 Not Found", "{}"));
            Action::Close
        }
    };
    (end + len, action)
}

/// The counters with this process's CPU time filled in.
fn stats_now(stats: &FloorStats) -> FloorStats {
    let mut s = stats.clone();
    if let Some(cpu) = crate::proc::cpu(std::process::id()) {
        let tps = crate::proc::CLOCK_TICKS_PER_SEC as f64;
        s.cpu_user_s = Some(cpu.user as f64 / tps);
        s.cpu_system_s = Some(cpu.system as f64 / tps);
    }
    s
}

impl Floor {
    /// Binds the three listeners (port 0 picks a free port).
    pub(crate) fn bind(
        cfg: FloorConfig,
        ws: SocketAddr,
        tcp: SocketAddr,
        http: SocketAddr,
    ) -> io::Result<Floor> {
        let poll = Poll::new()?;
        let mut ws = TcpListener::bind(ws)?;
        let mut tcp = TcpListener::bind(tcp)?;
        let mut http = TcpListener::bind(http)?;
        let reg = poll.registry();
        reg.register(&mut ws, WS_LISTENER, Interest::READABLE)?;
        reg.register(&mut tcp, TCP_LISTENER, Interest::READABLE)?;
        reg.register(&mut http, HTTP_LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(reg, WAKER)?);
        let pong_ws = encode(&ServerFrame::Pong { seq: None }, Kind::Ws);
        let pong_tcp = encode(&ServerFrame::Pong { seq: None }, Kind::Tcp);
        Ok(Floor {
            poll,
            ws,
            tcp,
            http,
            conns: Vec::new(),
            free: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            st: State {
                cfg,
                stats: FloorStats::default(),
                next_conn: 0,
                next_msg: 0,
                pong_ws,
                pong_tcp,
            },
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            accept_retry: false,
        })
    }

    /// The bound addresses.
    pub(crate) fn addrs(&self) -> io::Result<Addrs> {
        Ok(Addrs {
            ws: self.ws.local_addr()?,
            tcp: self.tcp.local_addr()?,
            http: self.http.local_addr()?,
        })
    }

    /// A handle that stops [`run`](Floor::run) from another thread.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn stopper(&self) -> Stopper {
        Stopper {
            flag: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Serves until stopped, `POST /quit`, or the configured duration ends;
    /// returns the counters.
    pub(crate) fn run(mut self) -> FloorStats {
        let mut events = Events::with_capacity(1024);
        let start = Instant::now();
        let deadline = start + self.st.cfg.duration;
        let every = self.st.cfg.broadcast_every.filter(|d| !d.is_zero());
        let mut next_broadcast = every.map(|d| start + d);
        let mut auto = 0u64;
        // Started by `bench compare`: stop when it is gone.
        let parent = std::env::var("PUSHGATE_PARENT_PID")
            .ok()
            .and_then(|v| v.parse::<i32>().ok());
        let mut parent_checked = start;
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if let Some(p) = parent {
                if now.duration_since(parent_checked) >= Duration::from_secs(1) {
                    parent_checked = now;
                    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
                    if ppid != p {
                        eprintln!("floor: parent process gone; stopping");
                        break;
                    }
                }
            }
            let mut wait = (deadline - now).min(MAX_WAIT);
            if let Some(due) = next_broadcast {
                wait = wait.min(due.saturating_duration_since(now));
            }
            if self.accept_retry {
                wait = wait.min(Duration::from_millis(10));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                eprintln!("floor: poll failed: {e}");
                break;
            }
            for ev in &events {
                match ev.token() {
                    WS_LISTENER => self.accept(Kind::Ws),
                    TCP_LISTENER => self.accept(Kind::Tcp),
                    HTTP_LISTENER => self.accept(Kind::Http),
                    WAKER => {}
                    Token(t) => self.on_event(
                        t - FIRST_CONN,
                        ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                        ev.is_read_closed() || ev.is_error(),
                        ev.is_writable(),
                    ),
                }
            }
            if self.accept_retry {
                self.accept_retry = false;
                for kind in [Kind::Ws, Kind::Tcp, Kind::Http] {
                    self.accept(kind);
                }
            }
            if let (Some(due), Some(d)) = (next_broadcast, every) {
                if Instant::now() >= due {
                    auto += 1;
                    let data = format!(r#"{{"k":"b","n":{auto},"t":{}}}"#, crate::now_unix_ns());
                    if let Ok(raw) = serde_json::value::RawValue::from_string(data) {
                        self.broadcast(&raw);
                    }
                    next_broadcast = Some(due + d);
                }
            }
        }
        stats_now(&self.st.stats)
    }

    fn accept(&mut self, kind: Kind) {
        let listener = match kind {
            Kind::Ws => &self.ws,
            Kind::Tcp => &self.tcp,
            Kind::Http => &self.http,
        };
        loop {
            let mut sock = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or memory: the pending connections
                    // wait in the backlog; try again shortly.
                    if self.st.stats.accept_errors == 0 {
                        eprintln!("floor: accept failed: {e}");
                    }
                    self.st.stats.accept_errors += 1;
                    self.accept_retry = true;
                    break;
                }
            };
            self.st.stats.accepted += 1;
            if kind != Kind::Http && self.st.stats.live >= self.st.cfg.max_connections {
                self.st.stats.refused += 1;
                continue;
            }
            let _ = sock.set_nodelay(true);
            let idx = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if self
                .poll
                .registry()
                .register(
                    &mut sock,
                    Token(FIRST_CONN + idx),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                self.free.push(idx);
                continue;
            }
            if let Some(slot) = self.conns.get_mut(idx) {
                *slot = Some(Conn {
                    sock,
                    kind,
                    upgraded: false,
                    authed: false,
                    closing: false,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                });
                self.st.stats.live += 1;
            }
        }
    }

    fn close(&mut self, idx: usize, clean: bool) {
        if let Some(slot) = self.conns.get_mut(idx) {
            if slot.take().is_some() {
                self.free.push(idx);
                self.st.stats.live -= 1;
                if !clean {
                    self.st.stats.other_closes += 1;
                }
            }
        }
    }

    fn on_event(&mut self, idx: usize, readable: bool, read_closed: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if writable && !conn.out.is_empty() && !flush(conn) {
            self.close(idx, false);
            return;
        }
        if readable {
            match self.on_readable(idx, read_closed) {
                Action::Keep => {}
                Action::Close => {
                    if let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) {
                        c.closing = true;
                    }
                }
                Action::Eof { clean } => {
                    if clean {
                        self.st.stats.clean_closes += 1;
                    }
                    self.close(idx, clean);
                    return;
                }
                Action::Failed => {
                    self.close(idx, false);
                    return;
                }
                Action::Broadcast(data) => {
                    let delivered = self.broadcast(&data);
                    let body = format!(r#"{{"id":{},"delivered":{delivered}}}"#, self.st.next_msg);
                    if let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) {
                        let _ = send(c, &http_response("200 OK", &body));
                        c.closing = true;
                    }
                }
                Action::Quit => {
                    self.stop.store(true, Ordering::Relaxed);
                    if let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) {
                        c.closing = true;
                    }
                }
            }
        }
        if let Some(c) = self.conns.get(idx).and_then(Option::as_ref) {
            if c.closing && c.out.is_empty() {
                // A WebSocket close handshake or an HTTP answer: clean.
                self.close(idx, true);
            }
        }
    }

    /// Reads until the socket is drained, handling whole frames as they come.
    /// A read shorter than the buffer drained it (a stream socket returns
    /// what it has), so no second read() is spent on `WouldBlock`: data
    /// arriving later raises a new edge. Unless the peer also closed its
    /// side (`read_closed`): then read on to the end of the stream.
    fn on_readable(&mut self, idx: usize, read_closed: bool) -> Action {
        loop {
            let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                return Action::Keep;
            };
            let n = match conn.sock.read(&mut self.scratch) {
                Ok(0) => {
                    return Action::Eof {
                        clean: conn.kind == Kind::Tcp || conn.closing,
                    }
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Action::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Action::Failed,
            };
            if conn.closing {
                continue;
            }
            let action = if conn.inbuf.is_empty() {
                let buf = &mut self.scratch[..n];
                let (used, action) = process(conn, buf, &mut self.st);
                if used < n {
                    conn.inbuf.extend_from_slice(&buf[used..]);
                }
                action
            } else {
                let mut buf = std::mem::take(&mut conn.inbuf);
                buf.extend_from_slice(&self.scratch[..n]);
                let (used, action) = process(conn, &mut buf, &mut self.st);
                buf.drain(..used.min(buf.len()));
                if !buf.is_empty() {
                    conn.inbuf = buf;
                }
                action
            };
            if conn.inbuf.len() > self.st.cfg.max_frame + ws::MAX_HEAD + 16 {
                return Action::Failed;
            }
            if !matches!(action, Action::Keep) || (n < READ_CHUNK && !read_closed) {
                return action;
            }
        }
    }

    /// Writes one `msg` frame carrying `data` to every authenticated
    /// connection; returns how many took it.
    fn broadcast(&mut self, data: &serde_json::value::RawValue) -> u64 {
        self.st.next_msg += 1;
        let ts = i64::try_from(crate::now_unix_ns() / 1_000_000).unwrap_or(i64::MAX);
        let msg = ServerFrame::Msg(MsgFrame {
            id: MsgId(self.st.next_msg),
            ts,
            channel: None,
            data: bytes::Bytes::copy_from_slice(data.get().as_bytes()),
            sender: None,
        });
        let ws_frame = encode(&msg, Kind::Ws);
        let tcp_frame = encode(&msg, Kind::Tcp);
        let started = Instant::now();
        let mut delivered = 0;
        let mut broken = Vec::new();
        for (i, slot) in self.conns.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            if !c.authed || c.closing {
                continue;
            }
            let frame = if c.kind == Kind::Tcp {
                &tcp_frame
            } else {
                &ws_frame
            };
            if send(c, frame) {
                delivered += 1;
            } else {
                broken.push(i);
            }
        }
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.st.stats.broadcast_loop_ns += ns;
        self.st.stats.broadcasts += 1;
        self.st.stats.deliveries += delivered;
        for i in broken {
            self.close(i, false);
        }
        delivered
    }
}

fn process(conn: &mut Conn, buf: &mut [u8], st: &mut State) -> (usize, Action) {
    match conn.kind {
        Kind::Ws => process_ws(conn, buf, st),
        Kind::Tcp => process_tcp(conn, buf, st),
        Kind::Http => process_http(conn, buf, st),
    }
}

/// Runs `bench floor` (no async runtime).
pub(crate) fn main(args: FloorArgs) -> ExitCode {
    let cfg = FloorConfig {
        secret: args.token_secret.map(String::into_bytes),
        heartbeat: args.heartbeat,
        broadcast_every: args.broadcast_every,
        duration: args.duration,
        max_connections: args.max_connections,
        max_frame: args.max_frame,
    };
    let verifying = cfg.secret.is_some();
    let floor = match Floor::bind(cfg, args.ws, args.tcp, args.http) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("bench floor: error: binding the listeners: {e}");
            return ExitCode::from(2);
        }
    };
    let addrs = match floor.addrs() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench floor: error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "ws listening on {}", addrs.ws);
    let _ = writeln!(out, "tcp listening on {}", addrs.tcp);
    let _ = writeln!(out, "http listening on {}", addrs.http);
    let _ = writeln!(
        out,
        "pid {}, tokens {}",
        std::process::id(),
        if verifying {
            "verified (HS256)"
        } else {
            "not verified"
        }
    );
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    drop(out);
    let s = floor.run();
    println!(
        "floor: accepted {} authenticated {} (refused tokens {}), pings {} ws pings {}, \
         broadcasts {} deliveries {} (loop {:.1} ms), closes clean {} other {}, \
         cpu user {:.2} s system {:.2} s",
        s.accepted,
        s.authenticated,
        s.auth_failed,
        s.pings,
        s.ws_pings,
        s.broadcasts,
        s.deliveries,
        s.broadcast_loop_ns as f64 / 1e6,
        s.clean_closes,
        s.other_closes,
        s.cpu_user_s.unwrap_or(0.0),
        s.cpu_system_s.unwrap_or(0.0),
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Transport;
    use crate::client::{connect_and_auth, mint_token, ClientError, Endpoint, Event};
    use crate::quic::QuicArgs;
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    const SECRET: &str = "floor-secret";

    fn start(cfg: FloorConfig) -> (Addrs, Stopper, std::thread::JoinHandle<FloorStats>) {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let floor = Floor::bind(cfg, any, any, any).unwrap();
        let (addrs, stopper) = (floor.addrs().unwrap(), floor.stopper());
        (addrs, stopper, std::thread::spawn(move || floor.run()))
    }

    fn token(i: u32, secret: &str) -> String {
        mint_token(secret.as_bytes(), format!("u{i}"), unix_secs() + 600).unwrap()
    }

    async fn next_frame(conn: &mut crate::client::Conn) -> ServerFrame {
        match tokio::time::timeout(Duration::from_secs(5), conn.recv()).await {
            Ok(Event::Frame(f)) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    async fn stats(http: SocketAddr) -> serde_json::Value {
        let body = reqwest::get(format!("http://{http}/stats"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&body).unwrap()
    }

    #[tokio::test]
    async fn auth_ping_broadcast_close_over_ws_and_tcp() {
        let (addrs, stopper, thread) = start(FloorConfig {
            secret: Some(SECRET.as_bytes().to_vec()),
            heartbeat: 7,
            ..FloorConfig::default()
        });
        let q = QuicArgs::default();
        let ws_url = format!("ws://{}/ws", addrs.ws);
        let tcp = addrs.tcp.to_string();
        let ws_ep = Endpoint::resolve(Transport::Ws, &ws_url, "", &q)
            .await
            .unwrap();
        let tcp_ep = Endpoint::resolve(Transport::Tcp, "", &tcp, &q)
            .await
            .unwrap();
        let step = Duration::from_secs(5);
        let mut conns = Vec::new();
        for i in 0..6 {
            let ep = if i % 2 == 0 { &ws_ep } else { &tcp_ep };
            let (mut conn, ok) = connect_and_auth(ep, None, &token(i, SECRET), step)
                .await
                .unwrap();
            assert_eq!(ok.heartbeat, 7);
            // A seq-less ping (the byte-compare path) and one with a seq.
            conn.send(&ClientFrame::Ping { seq: None }).await.unwrap();
            assert_eq!(next_frame(&mut conn).await, ServerFrame::Pong { seq: None });
            conn.send(&ClientFrame::Ping { seq: Some(5) })
                .await
                .unwrap();
            assert_eq!(
                next_frame(&mut conn).await,
                ServerFrame::Pong { seq: Some(5) }
            );
            conns.push(conn);
        }
        // A wrong token is refused, over both transports.
        for ep in [&ws_ep, &tcp_ep] {
            let err = connect_and_auth(ep, None, &token(99, "wrong"), step)
                .await
                .err()
                .unwrap();
            assert!(matches!(err, ClientError::AuthRefused(_)), "{err}");
        }
        // WebSocket ping control frames get pong control frames (raw client).
        let (mut raw, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
        raw.send(Message::Ping(b"hi".to_vec().into()))
            .await
            .unwrap();
        match tokio::time::timeout(step, raw.next()).await.unwrap() {
            Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"hi"),
            other => panic!("expected a pong, got {other:?}"),
        }

        // A broadcast through the REST-shaped control port reaches all six.
        let resp = reqwest::Client::new()
            .post(format!("http://{}/api/v1/push/broadcast", addrs.http))
            .body(r#"{"data":{"k":"b","n":1}}"#)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        let answer: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        assert_eq!(answer["delivered"], 6, "{answer}");
        for conn in &mut conns {
            match next_frame(conn).await {
                ServerFrame::Msg(m) => {
                    assert_eq!(m.id, MsgId(1));
                    assert_eq!(&m.data[..], br#"{"k":"b","n":1}"#);
                }
                other => panic!("expected the broadcast, got {other:?}"),
            }
        }
        let s = stats(addrs.http).await;
        assert_eq!(s["authenticated"], 6, "{s}");
        assert_eq!(s["auth_failed"], 2, "{s}");
        assert_eq!(s["pings"], 12, "{s}");
        assert_eq!(s["ws_pings"], 1, "{s}");
        assert_eq!(s["broadcasts"], 1, "{s}");
        assert_eq!(s["deliveries"], 6, "{s}");
        assert!(s["cpu_user_s"].is_number(), "{s}");

        // Clean closes: WebSocket close handshakes and TCP shutdowns.
        for conn in conns {
            conn.close(step).await;
        }
        drop(raw);
        let mut clean = 0;
        for _ in 0..100 {
            clean = stats(addrs.http).await["clean_closes"].as_u64().unwrap();
            if clean >= 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(clean >= 6, "clean closes {clean}");
        stopper.stop();
        let end = thread.join().unwrap();
        assert_eq!(end.deliveries, 6);
    }

    #[tokio::test]
    async fn broadcasts_by_itself_and_quits_on_request() {
        let (addrs, _stopper, thread) = start(FloorConfig {
            broadcast_every: Some(Duration::from_millis(100)),
            ..FloorConfig::default()
        });
        let ep = Endpoint::resolve(
            Transport::Ws,
            &format!("ws://{}/ws", addrs.ws),
            "",
            &QuicArgs::default(),
        )
        .await
        .unwrap();
        // Without a secret any token is accepted.
        let (mut conn, _) = connect_and_auth(&ep, None, "anything", Duration::from_secs(5))
            .await
            .unwrap();
        for _ in 0..2 {
            assert!(matches!(next_frame(&mut conn).await, ServerFrame::Msg(_)));
        }
        let resp = reqwest::Client::new()
            .post(format!("http://{}/quit", addrs.http))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        let end = thread.join().unwrap();
        assert!(end.broadcasts >= 2);
    }
}
