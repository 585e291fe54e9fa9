//! One connection's life, the same for every transport: auth, registration,
//! replay, then one `select!` loop over the outbound queue, inbound frames
//! and the heartbeat timer; finally the close frames and the hub cleanup.
//!
//! Decisions:
//! - The first frame must be `auth` within `auth_timeout` (4002); any other
//!   frame first is `not_authenticated` + 4001; a refused token is
//!   `auth_failed` + 4001.
//! - The connection is registered in the hub *before* the replay is read,
//!   so nothing pushed meanwhile is missed; live user messages with an id at
//!   or below the highest replayed id are dropped as duplicates.
//! - Any inbound frame (WebSocket pings included) resets the idle deadline
//!   of 2 × heartbeat (4003). No timer per session: a frame records the
//!   tick it arrived in ([`Conn::touch`]) and the room's one coarse idle
//!   wheel wakes a silent session (see `hub::IdleWheel`).
//! - Over the inbound rate limit (token bucket, `rate_limit`/s, burst 2×) a
//!   client gets `rate_limited` + 4004 rather than silently dropped frames:
//!   a dropped `ack` or `sub` would be invisible to it.
//! - Every write is abandoned when the connection is told to close (kick,
//!   slow consumer, drain) or stalls past the idle deadline (4006), so a
//!   client that stops reading cannot pin the session.
//! - Backend failures are reported as a non-fatal `internal` error.
//! - Memory: the session future is most of what an idle connection costs,
//!   and tokio rounds a task up to a multiple of 128 B. So the functions
//!   that stay pending for the whole session are plain `fn`s returning an
//!   `async move` block (an `async fn` keeps its by-value arguments all its
//!   life, rust-lang/rust#62958), values needed only before or after the
//!   main loop are scoped in blocks so they are not kept beside it, and rare
//!   paths are boxed.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use proto::token::{self, Claims};
use proto::{ClientFrame, ErrorCode, MsgFrame, MsgId, ServerFrame, UserId};
use sync_wrapper::SyncWrapper;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, info, warn};

use crate::error::{CloseReason, SendError};
use crate::hub::{Bucket, Conn, Popped, Registration, Signal, Subscribed};
use crate::io::{FrameIo, Inbound, OutFrame};
use crate::metrics::{self, AuthFailure, Drop as DropWhy, Transport};
use crate::shared::Shared;
use crate::{BackendError, ClientMessage, EventKind, MessageError, SessionInfo, Target};

/// Messages per backend replay or history page.
const PAGE: u32 = 500;
/// Replay pages per connection at most (bounds a reconnect to 100 000 messages).
const MAX_REPLAY_PAGES: usize = 200;
/// Queued pushes written per batch before the loop looks at input again.
const MAX_BATCH: usize = 32;
/// Longest a backend call may take before it counts as failed.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a `send` or `pub` waits for the backend (hook, store, delivery).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the final error and close frames may take to write.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Longest accepted device id, in bytes.
const MAX_DEVICE_LEN: usize = 128;
/// Transport keepalives tolerated before the auth frame.
const MAX_PRE_AUTH_KEEPALIVES: usize = 16;

/// Runs one connection to its end. It takes the connection's number in this
/// room (its `ConnId` once authenticated) when first polled.
///
/// Not an `async fn`: those store their by-value arguments twice in the
/// future (rust-lang/rust#62958), and `io` is a few hundred bytes.
#[allow(clippy::manual_async_fn)]
pub(crate) fn run<T: FrameIo>(
    shared: Arc<Shared>,
    mut io: T,
    peer: std::net::SocketAddr,
    transport: Transport,
) -> impl Future<Output = ()> + Send {
    // Kept for the end's log line: 19 bytes instead of a `SocketAddr`'s 32.
    let peer = Peer::from(peer);
    async move {
        metrics::inc(&shared.metrics.sockets);
        let (reason, info) = drive(&shared, &mut io).await;
        // Boxed: a one-time step that would otherwise size the whole session future.
        Box::pin(end(&shared, &mut io, reason, info, peer, transport)).await;
    }
}

/// Sends the final frames, counts and logs the end, and tells the backend.
async fn end<T: FrameIo>(
    shared: &Shared,
    io: &mut T,
    reason: CloseReason,
    info: Option<SessionInfo>,
    peer: Peer,
    transport: Transport,
) {
    let m = &shared.metrics;
    let transport = transport.label();
    finish(shared, io, &reason).await;
    m.closed(reason.label());
    m.sockets.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let conn = info.as_ref().map(|i| i.conn.0);
    let user = info.as_ref().map(|i| i.user.as_str());
    if reason.is_routine() {
        debug!(%peer, transport, ?conn, ?user, %reason, "session ended");
    } else {
        info!(%peer, transport, ?conn, ?user, %reason, "session ended");
    }
    if let Some(info) = info {
        // A session refused at registration never reported a connect.
        if !matches!(reason, CloseReason::TooManyConnections(_)) {
            shared.event(EventKind::Disconnect, &info, None, None);
        }
        let gone = shared.backend.disconnected(&info, now_ms());
        if timeout(BACKEND_TIMEOUT, gone).await.is_err() {
            metrics::inc(&m.backend_errors);
            warn!(conn = info.conn.0, "backend disconnected() timed out");
        }
    }
}

/// A client's address as a session keeps it: the IP and port of a
/// `SocketAddr` in 19 bytes (IPv6 flow info and scope id are dropped; only
/// logs use it).
#[derive(Clone, Copy)]
struct Peer {
    ip: [u8; 16],
    port: [u8; 2],
    v6: bool,
}

impl From<std::net::SocketAddr> for Peer {
    fn from(a: std::net::SocketAddr) -> Peer {
        let (ip, v6) = match a.ip() {
            std::net::IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), false),
            std::net::IpAddr::V6(v6) => (v6.octets(), true),
        };
        Peer {
            ip,
            port: a.port().to_ne_bytes(),
            v6,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v6 = std::net::Ipv6Addr::from(self.ip);
        let ip = match (self.v6, v6.to_ipv4_mapped()) {
            (false, Some(v4)) => std::net::IpAddr::V4(v4),
            _ => std::net::IpAddr::V6(v6),
        };
        std::net::SocketAddr::new(ip, u16::from_ne_bytes(self.port)).fmt(f)
    }
}

/// Authenticates, then runs the live session. Returns why it ended and, for
/// an authenticated session, who it was. The hub registration is already
/// gone when this returns.
///
/// Not an `async fn`, for the reason given at [`run`].
#[allow(clippy::manual_async_fn)]
fn drive<'a, T: FrameIo>(
    shared: &'a Shared,
    io: &'a mut T,
) -> impl Future<Output = (CloseReason, Option<SessionInfo>)> + 'a {
    async move {
        // Boxed: a one-time step that would otherwise size the whole session future.
        // In a block so that `auth` is not kept in the future beside `info`.
        let (info, claims, seq, last_id, expires) = {
            let auth = match Box::pin(authenticate(shared, io)).await {
                Ok(a) => a,
                Err(r) => return (r, None),
            };
            let Authed {
                user,
                claims,
                last_id,
                device,
                seq,
                expires,
            } = auth;
            let info = SessionInfo {
                // Taken here, not passed in: an argument would stay in the future.
                conn: proto::ConnId::new(shared.cfg.room, shared.next_serial()),
                user,
                device,
                since: now_ms(),
            };
            (info, claims, seq, last_id, expires)
        };
        let start = Box::new(Start {
            claims,
            seq,
            last_id,
            expires,
        });
        let reason = match live(shared, io, &info, start).await {
            Err(r) => r,
            Ok(never) => match never {},
        };
        (reason, Some(info))
    }
}

/// What the auth frame established.
struct Authed {
    /// The token's subject.
    user: UserId,
    /// The token's channel grants; `None` when it grants none. Boxed, and
    /// stripped of `sub` and `dev`: only the channel list is used afterwards.
    claims: Option<Box<Claims>>,
    /// Resume point asked by the client.
    last_id: Option<MsgId>,
    /// Effective device id.
    device: Arc<str>,
    /// The auth frame's seq, echoed in `auth_ok`.
    seq: Option<u32>,
    /// When the connection closes unless refreshed (see [`Live::expires`]).
    expires: u32,
}

async fn authenticate<T: FrameIo>(shared: &Shared, io: &mut T) -> Result<Authed, CloseReason> {
    let m = &shared.metrics;
    let deadline = Instant::now() + shared.cfg.auth_timeout;
    for _ in 0..MAX_PRE_AUTH_KEEPALIVES {
        let item = tokio::select! {
            biased;
            () = shared.stop.cancelled() => return Err(shared.draining_reason()),
            () = sleep_until(deadline) => {
                m.auth_failed(AuthFailure::Timeout);
                return Err(CloseReason::AuthTimeout);
            }
            item = io.next() => item,
        };
        let frame = match item {
            None => return Err(CloseReason::PeerClosed),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Inbound::Alive)) => continue,
            Some(Ok(Inbound::Frame(f))) => f,
        };
        metrics::inc(&m.frames_in);
        let ClientFrame::Auth {
            seq,
            token,
            last_id,
            device,
        } = frame
        else {
            m.auth_failed(AuthFailure::NotAuthenticated);
            return Err(CloseReason::NotAuthenticated);
        };
        let mut claims = shared.cfg.verify_token(&token, now_secs()).map_err(|e| {
            m.auth_failed(AuthFailure::Token);
            CloseReason::AuthFailed(e)
        })?;
        let device = claims.dev.take().or(device).filter(|d| !d.is_empty());
        if device.as_ref().is_some_and(|d| d.len() > MAX_DEVICE_LEN) {
            m.auth_failed(AuthFailure::Device);
            return Err(CloseReason::BadDevice("device id longer than 128 bytes"));
        }
        // The default device is one shared string, not one per connection.
        let device = match device {
            Some(d) if d != crate::shared::DEFAULT_DEVICE => Arc::from(d),
            _ => Arc::clone(&shared.default_device),
        };
        let user = UserId::from(std::mem::take(&mut claims.sub));
        let expires = shared.cfg.token_deadline(claims.exp);
        let claims = keeps_claims(&claims).then(|| Box::new(claims));
        return Ok(Authed {
            user,
            claims,
            last_id,
            device,
            seq,
            expires,
        });
    }
    m.auth_failed(AuthFailure::NotAuthenticated);
    Err(CloseReason::NotAuthenticated)
}

/// Whether `u` is a user id a token could carry (1 to [`token::MAX_SUB_LEN`] bytes).
fn valid_user(u: &UserId) -> bool {
    (1..=token::MAX_SUB_LEN).contains(&u.as_str().len())
}

/// Whether a session must keep its token's claims: they grant channels or
/// `pub`, or refuse `send` (a token with none of these keeps nothing).
fn keeps_claims(c: &Claims) -> bool {
    c.channels.is_some() || c.publish.is_some() || !c.allows_send()
}

/// The state of an authenticated session.
/// An ack being recorded: the ack's `seq` and the store's answer.
type AckFuture<'s> =
    Pin<Box<dyn Future<Output = (Option<u32>, Result<(), BackendError>)> + Send + 's>>;

struct Live<'s> {
    shared: &'s Shared,
    conn: Arc<Conn>,
    info: &'s SessionInfo,
    /// The token's grants and the send rate's bucket; boxed and present
    /// only when the token grants something or the connection has sent.
    grants: Option<Box<Grants>>,
    /// Highest user message id sent by the replay; live duplicates are dropped.
    replayed: MsgId,
    /// Highest stored user message id this connection has been sent (or the
    /// point its first replay started from): where a resync replays from.
    high: MsgId,
    /// Replays of this connection that failed on the store and were put
    /// off (see [`Live::put_off_replay`]).
    replay_retries: u8,
    bucket: Bucket,
    /// Unix second from which the connection is closed with 4008: the
    /// token's `exp` plus the grace period, moved by each `refresh`.
    /// Checked on every inbound item (O(1), no timer): a live client sends
    /// one at least every heartbeat.
    expires: u32,
    /// Acks are recorded off the main loop, one at a time per connection,
    /// the newest waiting one replacing older ones: a client that acks every
    /// message must not stall its own deliveries on the store's fsync, and a
    /// lost ack only means a message may be delivered again.
    ///
    /// Boxed and present only while an ack is being recorded: most
    /// connections never ack, and none of them should carry the state.
    /// In a `SyncWrapper` only to make `Live` `Sync` (the future is `Send`
    /// but not `Sync`): it is reached through `get_mut`, and costs no byte
    /// (a `Mutex` here cost every session 8).
    acks: SyncWrapper<Option<Box<Acks<'s>>>>,
}

/// See [`Live::grants`].
#[derive(Default)]
struct Grants {
    /// Channel, `pub` and `send` grants (see [`Authed::claims`]).
    claims: Option<Claims>,
    /// `send` and `pub` frames ([`crate::RoomConfig::send_rate`]), from the
    /// first one on.
    send: Option<Bucket>,
}

impl Grants {
    /// The box for `claims`, or none when they grant nothing.
    fn of(claims: Option<Box<Claims>>) -> Option<Box<Grants>> {
        claims.map(|c| {
            Box::new(Grants {
                claims: Some(*c),
                send: None,
            })
        })
    }
}

/// Acks being recorded (see [`Live::acks`]).
struct Acks<'s> {
    /// The ack being recorded.
    inflight: AckFuture<'s>,
    /// The newest ack received meanwhile, with its seq.
    waiting: Option<(Option<u32>, MsgId)>,
}

/// What the auth frame asked for that only `setup` needs; boxed so that the
/// session future does not keep it for the connection's whole life.
struct Start {
    /// Channel grants (moved into [`Live::claims`]).
    claims: Option<Box<Claims>>,
    /// The auth frame's seq, echoed in `auth_ok`.
    seq: Option<u32>,
    /// Resume point asked by the client.
    last_id: Option<MsgId>,
    /// See [`Live::expires`].
    expires: u32,
}

/// Registers the connection, then runs `setup` and the main loop. Not an
/// `async fn`, for the reason given at [`run`].
#[allow(clippy::manual_async_fn)]
fn live<'a, T: FrameIo>(
    shared: &'a Shared,
    io: &'a mut T,
    info: &'a SessionInfo,
    start: Box<Start>,
) -> impl Future<Output = Result<std::convert::Infallible, CloseReason>> + 'a {
    async move {
        let conn = Arc::new(Conn::new(info.conn).with_meta(&info.device, info.since));
        let cap = shared.cfg.max_user_connections;
        let mut reg = shared
            .hub
            .register(&info.user, Arc::clone(&conn), cap)
            .map_err(CloseReason::TooManyConnections)?;
        // Either drain() finds this connection in the hub, or we see its flag.
        if shared.is_draining() {
            conn.signal(Signal::Draining);
        }
        shared.hub.watch_idle(&conn, shared.cfg.idle_limit());
        let Start {
            claims,
            seq,
            last_id,
            expires,
        } = *start;
        let mut s = Live {
            shared,
            conn,
            info,
            grants: Grants::of(claims),
            replayed: MsgId(0),
            high: MsgId(0),
            replay_retries: 0,
            bucket: Bucket::new(shared.cfg.rate_limit, shared.clock_ms()),
            expires,
            acks: SyncWrapper::new(None),
        };
        // One-time steps are boxed so they do not size the long-lived future.
        Box::pin(s.setup(io, seq, last_id)).await?;
        // In a block so that `end` is not kept in the future beside `run`'s.
        let finish = {
            let end = s.run(io, &mut reg).await;
            Box::pin(s.finish_acks(end))
        };
        finish.await
    }
}

impl<'s> Live<'s> {
    /// `auth_ok`, `Backend::connected`, then the replay.
    async fn setup<T: FrameIo>(
        &mut self,
        io: &mut T,
        seq: Option<u32>,
        last_id: Option<MsgId>,
    ) -> Result<(), CloseReason> {
        let (shared, info) = (self.shared, self.info);
        let ok = ServerFrame::AuthOk {
            seq,
            conn: info.conn,
            user: info.user.clone(),
            room: shared.cfg.room,
            heartbeat: shared.cfg.heartbeat_secs(),
        };
        // The directory learns of the connection before the client does, so
        // a push or kick sent right after `auth_ok` finds it.
        if timeout(BACKEND_TIMEOUT, shared.backend.connected(info))
            .await
            .is_err()
        {
            metrics::inc(&shared.metrics.backend_errors);
        }
        // Before the reply, so that every session that reaches `end` past
        // this point has reported its connect (a failed write included).
        shared.event(EventKind::Connect, info, None, None);
        self.reply(io, ok).await?;
        self.replay(io, last_id).await
    }

    /// The main loop: outbound queue (and the idle wheel's wake-up), inbound frames.
    async fn run<T: FrameIo>(
        &mut self,
        io: &mut T,
        reg: &mut Registration<'_>,
    ) -> Result<std::convert::Infallible, CloseReason> {
        let conn = Arc::clone(&self.conn);
        loop {
            let queued = conn.has_queued();
            // A frame for `on_frame`, awaited after the `select!` so that the
            // select's output is not kept beside it in the future.
            let other = tokio::select! {
                (seq, r) = async {
                    match self.acks.get_mut().as_mut() {
                        Some(a) => (&mut a.inflight).await,
                        None => std::future::pending().await,
                    }
                } => {
                    // The next waiting ack, or no ack state at all.
                    let next = self.acks.get_mut().as_mut().and_then(|a| a.waiting.take());
                    match next {
                        Some((seq, id)) => {
                            let f = self.start_ack(seq, id);
                            if let Some(a) = self.acks.get_mut().as_mut() {
                                a.inflight = f;
                            }
                        }
                        None => *self.acks.get_mut() = None,
                    }
                    if let Err(e) = r {
                        debug!(error = %e, "ack() failed");
                        let text = "ack not recorded";
                        // Boxed, like every rare path: see `on_frame`.
                        Box::pin(self.error(io, seq, ErrorCode::Internal, text)).await?;
                    }
                    None
                }
                () = async {
                    if !queued {
                        conn.woken().await;
                    }
                } => {
                    if conn.idle_expired() {
                        return Err(CloseReason::HeartbeatTimeout);
                    }
                    // Boxed: a write in progress is a few hundred bytes that
                    // an idle session would otherwise carry all its life.
                    Box::pin(self.write_queued(io)).await?;
                    None
                }
                item = io.next() => {
                    let frame = match item {
                        None => return Err(CloseReason::PeerClosed),
                        Some(Err(e)) => return Err(e.into()),
                        Some(Ok(f)) => f,
                    };
                    conn.touch(self.shared.hub.idle_now());
                    if now_secs() >= u64::from(self.expires) {
                        return Err(CloseReason::TokenExpired);
                    }
                    if !self.bucket.allow(self.shared.cfg.rate_limit, self.shared.clock_ms()) {
                        return Err(CloseReason::RateLimited);
                    }
                    match frame {
                        // The heartbeat's fast path: the pong is queued and
                        // goes out with the next read or write of the loop,
                        // without a boxed `on_frame` and a write of its own.
                        Inbound::Frame(ClientFrame::Ping { seq })
                            if io.queue_reply(&ServerFrame::Pong { seq }) =>
                        {
                            let m = &self.shared.metrics;
                            metrics::inc(&m.frames_in);
                            metrics::inc(&m.frames_out);
                            None
                        }
                        Inbound::Frame(ClientFrame::Ack { seq, id }) => {
                            metrics::inc(&self.shared.metrics.frames_in);
                            self.shared.event(EventKind::Ack, self.info, None, Some(id));
                            if let Some(a) = self.acks.get_mut().as_mut() {
                                if a.waiting.is_none_or(|(_, w)| id > w) {
                                    a.waiting = Some((seq, id));
                                }
                            } else {
                                let inflight = self.start_ack(seq, id);
                                let waiting = None;
                                *self.acks.get_mut() = Some(Box::new(Acks { inflight, waiting }));
                            }
                            None
                        }
                        Inbound::Frame(f) => {
                            metrics::inc(&self.shared.metrics.frames_in);
                            Some(f)
                        }
                        Inbound::Alive => None,
                    }
                }
            };
            if let Some(f) = other {
                // Boxed: the rarely used paths (sub, ping) would otherwise
                // size every session's future.
                Box::pin(self.on_frame(io, reg, f)).await?;
            }
        }
    }

    /// Records the acks still in flight or waiting when the session ends, so
    /// a client that acks and then closes at once is not replayed what it
    /// acked (each call is bounded by the backend timeout).
    /// Returns `end`, why the session ended.
    async fn finish_acks<E>(&mut self, end: E) -> E {
        if let Some(a) = self.acks.get_mut().take() {
            let Acks { inflight, waiting } = *a;
            let _ = inflight.await;
            if let Some((seq, id)) = waiting {
                let _ = self.start_ack(seq, id).await;
            }
        }
        end
    }

    /// Starts recording an ack (see `run`).
    fn start_ack(&self, seq: Option<u32>, id: MsgId) -> AckFuture<'s> {
        let (shared, info) = (self.shared, self.info);
        Box::pin(async move {
            let r = call(shared, shared.backend.ack(&info.user, &info.device, id)).await;
            (seq, r)
        })
    }

    /// Writes up to [`MAX_BATCH`] queued pushes with one flush, or returns the
    /// close signal. Pops one message at a time so nothing but the message
    /// in flight is held across an await.
    async fn write_queued<T: FrameIo>(&mut self, io: &mut T) -> Result<(), CloseReason> {
        let m = &self.shared.metrics;
        let mut n = 0u64;
        for _ in 0..MAX_BATCH {
            let p = match self.conn.pop() {
                Popped::Signal(sig) => return Err(self.shared.signal_reason(sig)),
                Popped::Empty => break,
                Popped::Resync => {
                    // What was fed so far goes first; the replay flushes its own.
                    if n > 0 {
                        guarded(self.shared, &self.conn, io.flush()).await?;
                        metrics::add(&m.frames_out, n);
                        n = 0;
                    }
                    let asked = self.shared.hub.take_resync(self.conn.id);
                    if asked == Some(FROM_ACK) {
                        // A replay put off before it knew the device's ack.
                        debug!(conn = self.info.conn.0, "replaying from the ack");
                        self.replay(io, None).await?;
                        continue;
                    }
                    let from = asked.map_or(self.high, |a| a.min(self.high));
                    debug!(
                        conn = self.info.conn.0,
                        from = from.0,
                        "resync: replaying in place"
                    );
                    self.replay(io, Some(from)).await?;
                    continue;
                }
                Popped::Msg(p) => p,
            };
            if p.replayable {
                if p.id <= self.replayed {
                    m.dropped(DropWhy::Duplicate);
                    continue;
                }
                self.high = self.high.max(p.id);
            }
            guarded(self.shared, &self.conn, io.feed(OutFrame::Push(p))).await?;
            n += 1;
        }
        if n > 0 {
            guarded(self.shared, &self.conn, io.flush()).await?;
            metrics::add(&m.frames_out, n);
        }
        Ok(())
    }

    /// Sends one frame of this connection's own and flushes.
    async fn reply<T: FrameIo>(&self, io: &mut T, frame: ServerFrame) -> Result<(), CloseReason> {
        guarded(
            self.shared,
            &self.conn,
            io.send(OutFrame::Frame(Box::new(frame))),
        )
        .await?;
        metrics::inc(&self.shared.metrics.frames_out);
        Ok(())
    }

    /// Sends a non-fatal error.
    async fn error<T: FrameIo>(
        &self,
        io: &mut T,
        seq: Option<u32>,
        code: ErrorCode,
        message: &str,
    ) -> Result<(), CloseReason> {
        let frame = ServerFrame::Error {
            seq,
            code,
            message: message.to_owned(),
            close: None,
        };
        self.reply(io, frame).await
    }

    /// Sends stored messages with one flush.
    async fn send_msgs<T: FrameIo>(
        &self,
        io: &mut T,
        msgs: Vec<MsgFrame>,
    ) -> Result<(), CloseReason> {
        let n = msgs.len() as u64;
        let write = async {
            for msg in msgs {
                io.feed(OutFrame::Frame(Box::new(ServerFrame::Msg(msg))))
                    .await?;
            }
            io.flush().await
        };
        guarded(self.shared, &self.conn, write).await?;
        metrics::add(&self.shared.metrics.frames_out, n);
        Ok(())
    }

    /// Replays stored user messages after `last_id`, or after what this
    /// device acked, in id order, before any live message. Also the resync
    /// after a fault (see [`Popped::Resync`]): the same replay from the last
    /// stored id sent, while live messages wait in the queue.
    async fn replay<T: FrameIo>(
        &mut self,
        io: &mut T,
        last_id: Option<MsgId>,
    ) -> Result<(), CloseReason> {
        let backend = &self.shared.backend;
        let (user, device) = (&self.info.user, &*self.info.device);
        // Nothing stored after the earliest point this replay could start
        // from (the device's ack is at least 0): no store call at all.
        let start = last_id.unwrap_or_default();
        if backend.nothing_after(user, self.shared.cfg.look_back(start)) {
            self.high = self.high.max(start);
            metrics::inc(&self.shared.metrics.replays_skipped);
            return Ok(());
        }
        // The whole replay waits in line for at most half a heartbeat.
        let deadline = tokio::time::Instant::now() + self.shared.cfg.heartbeat / 2;
        let mut after = match last_id {
            Some(id) => id,
            None => {
                let Some(turn) = replay_turn(self.shared, deadline).await else {
                    self.miss_turn(FROM_ACK);
                    return Ok(());
                };
                let acked = call(self.shared, backend.acked(user, device)).await;
                drop(turn);
                match acked {
                    Ok(id) => id.unwrap_or_default(),
                    Err(e) => {
                        warn!(error = %e, "acked() failed; replaying later");
                        return self.put_off_replay(FROM_ACK);
                    }
                }
            }
        };
        self.high = self.high.max(after);
        // Where a replay put off goes on from: not moved back by the
        // overlap (the next try moves it back once more), then the last id
        // sent.
        let mut resume = after;
        let cfg = &self.shared.cfg;
        after = cfg.look_back(after);
        // With an overlap, ids are not stored in strict order across
        // centers: a live message below the replayed ids may be new, so
        // nothing live is dropped (the client de-duplicates by id).
        let dedupe = cfg.replay_overlap <= 0;
        if dedupe {
            self.replayed = self.replayed.max(after);
        }
        for _ in 0..MAX_REPLAY_PAGES {
            let Some(turn) = replay_turn(self.shared, deadline).await else {
                self.miss_turn(resume);
                return Ok(());
            };
            let page = call(self.shared, backend.replay(user, after, PAGE)).await;
            drop(turn);
            let page = match page {
                Ok(p) => {
                    // The store answers again: a later failure starts over.
                    self.replay_retries = 0;
                    p
                }
                Err(e) => {
                    warn!(error = %e, "replay() failed; replaying later");
                    return self.put_off_replay(resume);
                }
            };
            let full = page.len() >= PAGE as usize;
            // Defensive: keep the order strictly increasing even if a backend does not.
            let page: Vec<MsgFrame> = page.into_iter().filter(|m| m.id > after).collect();
            let Some(last) = page.last().map(|m| m.id) else {
                return Ok(());
            };
            metrics::add(&self.shared.metrics.replayed, page.len() as u64);
            self.send_msgs(io, page).await?;
            after = last;
            resume = last;
            self.high = self.high.max(last);
            if dedupe {
                self.replayed = self.replayed.max(after);
            }
            if !full {
                return Ok(());
            }
        }
        // Still more after MAX_REPLAY_PAGES pages: rather than go live over
        // a gap, let the client come back with `last_id` and continue.
        Err(replay_unavailable())
    }

    /// After a replay failed on the store: keeps the connection, holds its
    /// queued messages back (nothing newer may reach the client before
    /// the replay: it would resume past the gap) and asks for the replay
    /// again from `from` ([`FROM_ACK`]: from the device's ack) after 0.25
    /// to 1.25 s, then 0.5 to 2.5 s. Closing at once (4007, as after
    /// [`MAX_REPLAY_RETRIES`] tries) turns a store that is slow for a
    /// moment into a reconnect storm: every client comes back,
    /// authenticates and asks for its replay again, which makes the store
    /// slower still.
    fn put_off_replay(&mut self, from: MsgId) -> Result<(), CloseReason> {
        if self.replay_retries >= MAX_REPLAY_RETRIES {
            warn!(
                tries = self.replay_retries,
                "replay still failing; closing so the client resumes later"
            );
            return Err(replay_unavailable());
        }
        self.replay_retries += 1;
        metrics::inc(&self.shared.metrics.replay_retries);
        let delay = Duration::from_millis(jitter_ms(250, 1000) * u64::from(self.replay_retries));
        self.replay_later(from, delay);
        Ok(())
    }

    /// After a replay waited a heartbeat for a turn at the store without
    /// getting one: the store is busy, not failing, so the replay is put
    /// off in place like [`Session::put_off_replay`] (0.25 to 1.25 s, live
    /// messages held) without counting as a failure; it comes back at the
    /// end of the line.
    fn miss_turn(&mut self, from: MsgId) {
        metrics::inc(&self.shared.metrics.replay_turns_missed);
        self.replay_later(from, Duration::from_millis(jitter_ms(250, 1000)));
    }

    /// Holds the queued messages and asks for the replay from `from` again
    /// after `delay`.
    fn replay_later(&self, from: MsgId, delay: Duration) {
        self.shared.hub.resync_later(self.conn.id, from);
        self.conn.hold();
        let conn = Arc::clone(&self.conn);
        // Bounded by the delay; a connection closed meanwhile refuses the
        // request (and its resync entry goes with its registration).
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            conn.request_resync();
        });
    }

    async fn on_frame<T: FrameIo>(
        &mut self,
        io: &mut T,
        reg: &mut Registration<'_>,
        frame: ClientFrame,
    ) -> Result<(), CloseReason> {
        match frame {
            ClientFrame::Ping { seq } => self.reply(io, ServerFrame::Pong { seq }).await,
            ClientFrame::Auth { seq, .. } => {
                let text = "already authenticated";
                self.error(io, seq, ErrorCode::BadFrame, text).await
            }
            ClientFrame::Sub {
                seq,
                channel,
                last_id,
                presence,
            } => {
                self.subscribe(io, reg, seq, channel, last_id, presence)
                    .await
            }
            ClientFrame::Presence { seq, channel } => self.presence(io, reg, seq, channel).await,
            ClientFrame::Unsub { seq, channel } => {
                reg.unsubscribe(&channel);
                self.shared
                    .event(EventKind::Unsub, self.info, Some(&channel), None);
                self.reply(io, ServerFrame::UnsubOk { seq, channel }).await
            }
            // Handled by the main loop (see `run`); kept here so the match
            // stays exhaustive.
            ClientFrame::Ack { .. } => Ok(()),
            ClientFrame::Refresh { seq, token } => self.refresh(io, seq, &token).await,
            ClientFrame::Send { seq, msg } => {
                let proto::SendMsg { to, data, cid } = *msg;
                let msg = ClientMessage {
                    to: Target::User(to),
                    data,
                    cid,
                };
                self.message(io, seq, msg).await
            }
            ClientFrame::Pub { seq, msg } => {
                let proto::PubMsg { channel, data, cid } = *msg;
                let msg = ClientMessage {
                    to: Target::Channel(channel),
                    data,
                    cid,
                };
                self.message(io, seq, msg).await
            }
        }
    }

    /// A `send` or `pub`: checked here (grants, cid, size, rate), then
    /// handed to the backend, which stores and delivers it; answered with
    /// `send_ok`/`pub_ok` or a non-fatal error. One at a time per
    /// connection: the session waits for the backend's answer.
    async fn message<T: FrameIo>(
        &mut self,
        io: &mut T,
        seq: Option<u32>,
        msg: ClientMessage,
    ) -> Result<(), CloseReason> {
        let shared = self.shared;
        let claims = self.grants.as_ref().and_then(|g| g.claims.as_ref());
        let refused = match &msg.to {
            Target::User(to) if !valid_user(to) => {
                Some((ErrorCode::BadFrame, "to: a user id of 1 to 256 bytes"))
            }
            Target::User(_) if claims.is_some_and(|c| !c.allows_send()) => {
                Some((ErrorCode::Forbidden, "the token does not allow send"))
            }
            Target::Channel(ch) if !token::valid_channel(ch) => {
                Some((ErrorCode::BadChannel, "invalid channel name"))
            }
            Target::Channel(ch) if !claims.is_some_and(|c| c.allows_pub(ch)) => Some((
                ErrorCode::Forbidden,
                "the token does not allow pub to this channel",
            )),
            _ if !proto::valid_cid(&msg.cid) => Some((ErrorCode::BadFrame, "cid: 1 to 64 bytes")),
            _ if msg.data.len() > shared.cfg.max_send_bytes => {
                Some((ErrorCode::TooLarge, "data is larger than the server allows"))
            }
            _ => None,
        };
        let refused = refused.or_else(|| {
            let (rate, now) = (shared.cfg.send_rate, shared.clock_ms());
            let grants = self.grants.get_or_insert_with(Box::default);
            let bucket = grants.send.get_or_insert_with(|| Bucket::new(rate, now));
            (!bucket.allow(rate, now))
                .then_some((ErrorCode::RateLimited, "too many messages: slow down"))
        });
        let refused = refused.or_else(|| {
            let (rate, now) = (shared.cfg.user_send_rate, shared.clock_ms());
            (!shared.hub.allow_user_send(&self.info.user, rate, now)).then_some((
                ErrorCode::RateLimited,
                "too many messages from this user: slow down",
            ))
        });
        if let Some((code, text)) = refused {
            shared.metrics.message(false);
            return self.error(io, seq, code, text).await;
        }
        let channel = matches!(msg.to, Target::Channel(_));
        let cid = msg.cid.clone();
        let answer = timeout(MESSAGE_TIMEOUT, shared.backend.message(self.info, msg)).await;
        let answer = answer.unwrap_or_else(|_| {
            Err(MessageError::Unavailable(
                "timed out: the message may or may not have been accepted; retry with the same cid"
                    .into(),
            ))
        });
        shared.metrics.message(answer.is_ok());
        match answer {
            Ok(id) if channel => self.reply(io, ServerFrame::PubOk { seq, cid, id }).await,
            Ok(id) => self.reply(io, ServerFrame::SendOk { seq, cid, id }).await,
            Err(e) => {
                let text = e.to_string();
                self.error(io, seq, e.code(), &text).await
            }
        }
    }

    /// Replaces the connection's token with `token` when it is valid and
    /// names the same user: its `exp` and channel grants apply from now on.
    /// Anything else is refused with a non-fatal `forbidden` and changes
    /// nothing.
    async fn refresh<T: FrameIo>(
        &mut self,
        io: &mut T,
        seq: Option<u32>,
        token: &str,
    ) -> Result<(), CloseReason> {
        let shared = self.shared;
        let mut claims = match shared.cfg.verify_token(token, now_secs()) {
            Ok(c) if c.sub == self.info.user.as_str() => c,
            Ok(_) => {
                shared.metrics.refreshed(false);
                let text = "refresh refused: the token names another user";
                return self.error(io, seq, ErrorCode::Forbidden, text).await;
            }
            Err(e) => {
                shared.metrics.refreshed(false);
                let text = format!("refresh refused: {e}");
                return self.error(io, seq, ErrorCode::Forbidden, &text).await;
            }
        };
        shared.metrics.refreshed(true);
        let exp = claims.exp;
        self.expires = shared.cfg.token_deadline(exp);
        claims.sub = String::new();
        claims.dev = None;
        let claims = keeps_claims(&claims).then_some(claims);
        match self.grants.as_mut() {
            Some(g) => g.claims = claims,
            None => self.grants = Grants::of(claims.map(Box::new)),
        }
        self.reply(io, ServerFrame::RefreshOk { seq, exp }).await
    }

    async fn subscribe<T: FrameIo>(
        &mut self,
        io: &mut T,
        reg: &mut Registration<'_>,
        seq: Option<u32>,
        channel: String,
        last_id: Option<MsgId>,
        presence: bool,
    ) -> Result<(), CloseReason> {
        if !token::valid_channel(&channel) {
            let text = "invalid channel name";
            return self.error(io, seq, ErrorCode::BadChannel, text).await;
        }
        let allowed = self
            .grants
            .as_ref()
            .and_then(|g| g.claims.as_ref())
            .is_some_and(|c| c.allows_channel(&channel));
        if !allowed {
            let text = "token does not allow this channel";
            return self.error(io, seq, ErrorCode::ChannelForbidden, text).await;
        }
        let max = self.shared.cfg.max_channels;
        if reg.subscribe(&channel, max, presence) == Subscribed::TooMany {
            let text = "channel limit reached";
            return self.error(io, seq, ErrorCode::TooManyChannels, text).await;
        }
        let history = match last_id {
            Some(after) => {
                let after = self.shared.cfg.look_back(after);
                let fut = self.shared.backend.channel_history(&channel, after, PAGE);
                Some(call(self.shared, fut).await)
            }
            None => None,
        };
        self.shared
            .event(EventKind::Sub, self.info, Some(&channel), None);
        self.reply(io, ServerFrame::SubOk { seq, channel }).await?;
        match history {
            Some(Ok(msgs)) if !msgs.is_empty() => self.send_msgs(io, msgs).await,
            Some(Err(e)) => {
                debug!(error = %e, "channel_history() failed");
                let text = "channel history unavailable";
                self.error(io, seq, ErrorCode::Internal, text).await
            }
            _ => Ok(()),
        }
    }
}

impl Live<'_> {
    /// A `presence` frame: the first [`PRESENCE_PAGE`] members of a
    /// channel with presence this connection is subscribed to, over every
    /// room; anything else is a non-fatal `forbidden`.
    async fn presence<T: FrameIo>(
        &mut self,
        io: &mut T,
        reg: &Registration<'_>,
        seq: Option<u32>,
        channel: String,
    ) -> Result<(), CloseReason> {
        let shared = self.shared;
        if !shared.hub.has_presence(&channel) {
            let text = "this channel has no presence";
            return self.error(io, seq, ErrorCode::Forbidden, text).await;
        }
        if !reg.is_subscribed(&channel) {
            let text = "subscribe to the channel first";
            return self.error(io, seq, ErrorCode::Forbidden, text).await;
        }
        let fut = shared
            .backend
            .channel_members(&channel, None, PRESENCE_PAGE as u32);
        let page = match timeout(MESSAGE_TIMEOUT, fut).await {
            Ok(None) => Ok(shared.hub.members(&channel, None, PRESENCE_PAGE)),
            Ok(Some(r)) => r.map_err(|e| e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        };
        match page {
            Ok(p) => {
                let page = Box::new(proto::PresencePage {
                    channel,
                    users: p.users,
                    more: p.more,
                });
                self.reply(io, ServerFrame::PresenceOk { seq, page }).await
            }
            Err(e) => {
                debug!(error = %e, "channel_members() failed");
                let text = "presence unavailable: try again";
                self.error(io, seq, ErrorCode::Unavailable, text).await
            }
        }
    }
}

/// Members a `presence` frame answers at most.
const PRESENCE_PAGE: usize = 1_000;

/// Runs a write, abandoning it when the connection is told to close or
/// stalls past the idle deadline.
async fn guarded<F>(shared: &Shared, conn: &Conn, write: F) -> Result<(), CloseReason>
where
    F: Future<Output = Result<(), SendError>>,
{
    let mut write = pin!(write);
    // Bounded by the idle deadline: each turn either finishes, fails, or
    // was a push's wake-up; the idle wheel wakes the session once the
    // deadline passes (only inbound frames move it, and none are read here).
    loop {
        tokio::select! {
            biased;
            r = &mut write => return r.map_err(CloseReason::from),
            () = conn.woken() => {
                if let Some(sig) = conn.closing() {
                    return Err(shared.signal_reason(sig));
                }
                if conn.idle_expired() {
                    return Err(CloseReason::SlowConsumer);
                }
                // A new push woke us; the main loop sees the queue afterwards.
            }
        }
    }
}

/// Waits for a turn at the store for one replay read (`replays_at_once`
/// in flight per room, first come first served); `None` once `deadline`
/// passed (half a heartbeat after the replay began: a session waiting in
/// line reads no frame, and its client's pings must be read within the
/// idle limit of two heartbeats).
async fn replay_turn(
    shared: &Shared,
    deadline: tokio::time::Instant,
) -> Option<tokio::sync::SemaphorePermit<'_>> {
    if let Ok(turn) = shared.replays.try_acquire() {
        return Some(turn);
    }
    /// Counts one waiting replay for as long as it lives, so that a
    /// session that ends while it waits (its future dropped) uncounts it.
    struct Waiting<'a>(&'a std::sync::atomic::AtomicU64);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let waiting = &shared.metrics.replays_waiting;
    waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _counted = Waiting(waiting);
    tokio::time::timeout_at(deadline, shared.replays.acquire())
        .await
        .ok()?
        .ok()
}

/// Calls the backend with a time limit; failures are counted.
async fn call<R, F>(shared: &Shared, fut: F) -> Result<R, BackendError>
where
    F: Future<Output = Result<R, BackendError>>,
{
    let r = match timeout(BACKEND_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Timeout(BACKEND_TIMEOUT)),
    };
    if r.is_err() {
        metrics::inc(&shared.metrics.backend_errors);
    }
    r
}

/// Sends the final error frame and close, then lingers briefly. Bounded by
/// [`CLOSE_GRACE`] plus the transport's linger.
async fn finish<T: FrameIo>(shared: &Shared, io: &mut T, reason: &CloseReason) {
    let Some(code) = reason.close_code() else {
        return;
    };
    let text = reason.message();
    let frame = ServerFrame::Error {
        seq: None,
        code: reason.error_code(),
        message: text.clone(),
        close: Some(code),
    };
    let write = async {
        io.feed(OutFrame::Frame(Box::new(frame))).await?;
        io.feed(OutFrame::Close(code, text)).await?;
        io.flush().await
    };
    match timeout(CLOSE_GRACE, write).await {
        Ok(Ok(())) => metrics::add(&shared.metrics.frames_out, 1),
        Ok(Err(e)) => debug!(error = %e, "final frames not sent"),
        Err(_) => debug!("final frames timed out"),
    }
    io.linger().await;
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    proto::unix_ms(SystemTime::now())
}

/// Unix time in seconds (token expiry).
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Closes a session whose replay could not complete (4007, reconnect soon).
/// The delay asked for is spread over 1 to 5 s: when the store is overloaded,
/// every session of every room fails alike, and clients told to come back
/// together would bring the same load back at once.
fn replay_unavailable() -> CloseReason {
    CloseReason::ReplayUnavailable {
        reconnect_after_ms: jitter_ms(1000, 4000),
    }
}

/// `base` plus up to `spread` ms, from the clock's nanoseconds (spread
/// enough across connections, and no random state per session).
fn jitter_ms(base: u64, spread: u64) -> u64 {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    base + n % spread.max(1)
}

/// Replays put off after a store failure before the connection is closed
/// (4007) to come back later: a store that fails for a moment is ridden
/// out in place; one that keeps failing sends the client away within a
/// few seconds (maybe to a room whose store answers).
const MAX_REPLAY_RETRIES: u8 = 2;

/// Marks a replay put off before it knew the device's ack: the retry asks
/// for the ack again. The lowest id there is, so a resync request merged
/// with it (the lowest wins) keeps it.
const FROM_ACK: MsgId = MsgId(i64::MIN);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_prints_like_the_socket_address() {
        for a in [
            "127.0.0.1:7701",
            "[::1]:443",
            "[::ffff:10.0.0.1]:9",
            "[2001:db8::2]:65535",
        ] {
            let addr: std::net::SocketAddr = a.parse().expect("a valid address");
            assert_eq!(Peer::from(addr).to_string(), addr.to_string(), "{a}");
        }
        assert_eq!(std::mem::size_of::<Peer>(), 19);
    }

    #[test]
    fn bucket_allows_burst_then_refills() {
        // Also across the clock's wrap.
        for t0 in [1_000, u32::MAX - 100] {
            let mut b = Bucket::new(5, t0);
            for _ in 0..10 {
                assert!(b.allow(5, t0));
            }
            assert!(!b.allow(5, t0), "burst is 2 x rate");
            assert!(b.allow(5, t0.wrapping_add(250)), "refilled one");
            assert!(!b.allow(5, t0.wrapping_add(250)));
            let mut unlimited = Bucket::new(0, t0);
            for _ in 0..1000 {
                assert!(unlimited.allow(0, t0));
            }
        }
    }
}
