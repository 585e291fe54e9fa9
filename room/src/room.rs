//! [`Room`]: the handle the rest of pushgate holds (the state its accept
//! loops and sessions share is [`crate::shared::Shared`]).

use std::sync::Arc;
use std::time::Duration;

use proto::{BroadcastProgress, EncodedMsg, MsgId, UserId};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::broadcasts;
use crate::hub::{Push, Signal};
use crate::shared::Shared;
use crate::{listen, Backend, QuicListener, RoomConfig, TlsCerts};

/// What a room accepts connections on (see [`Room::serve`]).
#[derive(Debug)]
pub enum Listener {
    /// WebSocket (`GET /ws`) on a bound TCP listener; wss:// with certificates.
    Ws(TcpListener, Option<TlsCerts>),
    /// Length-prefixed binary frames on a bound TCP listener; TLS with certificates.
    Tcp(TcpListener, Option<TlsCerts>),
    /// QUIC (always TLS 1.3, ALPN `pushgate/1`).
    Quic(QuicListener),
}

/// A running room: cheap to clone, every clone is the same room.
#[derive(Clone)]
pub struct Room {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("room", &self.shared.cfg.room)
            .field("connections", &self.connections())
            .finish()
    }
}

impl Room {
    /// Creates a room. Nothing listens until [`Room::serve`].
    pub fn new(cfg: RoomConfig, backend: Arc<dyn Backend>) -> Room {
        Room {
            shared: Arc::new(Shared::new(cfg, backend)),
        }
    }

    /// This room's settings.
    pub fn config(&self) -> &RoomConfig {
        &self.shared.cfg
    }

    /// Accepts connections on `listener` until `shutdown` is cancelled or
    /// [`Room::drain`] starts. Stopping accepting does not end the
    /// sessions: [`Room::drain`] does. With certificates, every WebSocket
    /// or TCP connection starts with a TLS handshake (reloads of the
    /// certificates apply to new connections). QUIC refuses new attempts
    /// once it stops accepting; after the drain,
    /// [`QuicListener::wait_idle`] lets the last close frames go out.
    pub async fn serve(&self, listener: Listener, shutdown: CancellationToken) {
        let shared = Arc::clone(&self.shared);
        match listener {
            Listener::Ws(l, certs) => {
                // ALPN h2 and http/1.1: server-sent events over HTTP/2.
                let tls = certs.map(|c| TlsAcceptor::from(c.ws_config()));
                listen::accept_loop(shared, l, shutdown, listen::Kind::Ws, tls).await;
            }
            Listener::Tcp(l, certs) => {
                let tls = certs.map(|c| TlsAcceptor::from(c.stream_config()));
                listen::accept_loop(shared, l, shutdown, listen::Kind::Tcp, tls).await;
            }
            Listener::Quic(l) => listen::quic::accept_loop(shared, l, shutdown).await,
        }
    }

    fn prepare(msg: &EncodedMsg) -> Option<Arc<Push>> {
        let p = Push::new(msg);
        if p.is_none() {
            error!(id = msg.id.0, "pushed message json is not utf-8; dropped");
        }
        p
    }

    /// Queues `msg` to every connection of each user; returns connections written.
    /// Never blocks: a connection whose queue is full is closed (4006) instead.
    pub fn deliver_users(&self, users: &[UserId], msg: &Arc<EncodedMsg>) -> u64 {
        let Some(p) = Self::prepare(msg) else {
            return 0;
        };
        self.shared
            .hub
            .deliver_users(users, &p, &self.shared.metrics)
    }

    /// Queues `msg` to every subscriber of `channel`; returns connections written.
    pub fn publish_channel(&self, channel: &str, msg: &Arc<EncodedMsg>) -> u64 {
        let Some(p) = Self::prepare(msg) else {
            return 0;
        };
        self.shared.hub.publish(channel, &p, &self.shared.metrics)
    }

    /// Queues `msg` to every authenticated connection and follows it until
    /// every one of them wrote it or dropped it (see
    /// [`Room::broadcast_progress`]). Returns at once, before anything is
    /// queued, with every connection live now as `pending`; a task queues
    /// it to them a batch at a time behind the answer (see
    /// `room/src/broadcasts.rs`). A broadcast this room already fanned out
    /// (a retried call) is not sent again: its progress is returned.
    pub fn broadcast(&self, msg: &Arc<EncodedMsg>) -> BroadcastProgress {
        let tracked = &self.shared.broadcasts;
        if let Some(p) = tracked.progress(msg.id) {
            return p;
        }
        let Some((push, gone)) = Push::tracked(msg) else {
            error!(id = msg.id.0, "broadcast json is not utf-8; dropped");
            return BroadcastProgress::default();
        };
        let conns = self.shared.hub.all_conns();
        let live = conns.len() as u64;
        let fan = match tracked.start(msg.id, &push, gone, live) {
            Ok(fan) => fan,
            // Started by a call that came in meanwhile.
            Err(p) => return p,
        };
        // Answered before anything is queued: the queueing and the writes
        // go on in a task of their own, a batch at a time.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let shared = Arc::clone(&self.shared);
                rt.spawn(async move {
                    let Shared { hub, metrics, .. } = &*shared;
                    broadcasts::fan_out(hub, metrics, conns, push, &fan).await;
                });
            }
            Err(_) => {
                let Shared { hub, metrics, .. } = &*self.shared;
                broadcasts::fan_out_now(hub, metrics, conns, push, &fan);
                return tracked.progress(msg.id).unwrap_or_default();
            }
        }
        BroadcastProgress {
            delivered: 0,
            skipped: 0,
            pending: live,
        }
    }

    /// How far broadcast `id` got here: connections that were written,
    /// skipped (slow consumer, closed first) and that still have it
    /// queued. `None` when this room never fanned it out, or forgot it (it
    /// keeps the last 256 broadcasts, for 10 minutes).
    pub fn broadcast_progress(&self, id: MsgId) -> Option<BroadcastProgress> {
        self.shared.broadcasts.progress(id)
    }

    /// Asks every connection of `users` held here (every connection when
    /// `None`) to replay its user's stored messages after `after` (or after
    /// the last stored id it sent, whichever is lower) before any message
    /// queued from now on; returns how many were asked. For a center that
    /// could not deliver stored messages here (see docs/PROTOCOL.md,
    /// "Resync in place after a fault").
    pub fn resync(&self, users: Option<&[UserId]>, after: proto::MsgId) -> u64 {
        let n = match users {
            Some(users) => self.shared.hub.resync_users(users, after),
            None => self.shared.hub.resync_where(|_| true, after),
        };
        crate::metrics::add(&self.shared.metrics.resyncs, n);
        n
    }

    /// Like [`Room::resync`] for every connection whose user passes
    /// `pick`: for a register that lost its entries of these users and was
    /// refilled (visits every user).
    pub fn resync_where(&self, pick: impl FnMut(&UserId) -> bool, after: proto::MsgId) -> u64 {
        let n = self.shared.hub.resync_where(pick, after);
        crate::metrics::add(&self.shared.metrics.resyncs, n);
        n
    }

    /// Queues presence changes that happened on another room (a `join`
    /// when the flag is set, else a `leave`) to the connections here that
    /// watch their channels; returns connections written.
    pub fn presence_changes(&self, changes: &[(bool, proto::PresenceChange)]) -> u64 {
        changes
            .iter()
            .map(|(join, c)| self.shared.hub.presence_event(*join, c, None))
            .sum()
    }

    /// The members of `channel` (a channel with presence) held here, after
    /// user `after` (from the first when `None`), at most `limit`, in byte
    /// order of the user id.
    pub fn channel_members(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> crate::MembersPage {
        self.shared.hub.members(channel, after, limit)
    }

    /// Closes every connection of `user` with 4005; returns how many.
    pub fn kick_user(&self, user: &UserId) -> u64 {
        self.shared.hub.signal_user(user, Signal::Kicked)
    }

    /// Authenticated connections held now.
    pub fn connections(&self) -> u64 {
        self.shared.hub.connections()
    }

    /// Every authenticated connection whose user passes `keep` (for a
    /// register that must be refilled in cluster mode).
    pub fn snapshot(&self, keep: impl FnMut(&UserId) -> bool) -> Vec<crate::SessionInfo> {
        self.shared.hub.snapshot(keep)
    }

    /// Calls `f` with each authenticated connection of `user` (a
    /// standalone process answers directory lookups with it). `f` runs
    /// under a lock of the room's index: it must not block.
    pub fn each_session(&self, user: &UserId, f: impl FnMut(crate::SessionInfo)) {
        self.shared.hub.each_session(user, f);
    }

    /// Whether `user` has an authenticated connection here now.
    pub fn is_online(&self, user: &UserId) -> bool {
        self.shared.hub.is_online(user)
    }

    /// Distinct users with at least one authenticated connection now.
    pub fn users(&self) -> u64 {
        self.shared.hub.users()
    }

    /// Appends this room's metrics in the Prometheus text format (names
    /// prefixed `pushgate_room_`).
    pub fn write_metrics(&self, out: &mut String) {
        let hub = &self.shared.hub;
        self.shared
            .metrics
            .write(out, hub.connections(), hub.users(), hub.channels());
    }

    /// Stops accepting, tells every client to reconnect elsewhere (error
    /// `draining` + close 4007 with reason `draining reconnect_after_ms=<N>`,
    /// N jittered per connection in `[0, drain_reconnect_delay]`), then waits
    /// up to `timeout` for all sessions to end. Returns whether all ended.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let s = &self.shared;
        s.start_draining();
        s.stop.cancel();
        let told = s.hub.signal_all(Signal::Draining);
        info!(room = %s.cfg.room, connections = told, "draining");
        s.tracker.close();
        let done = tokio::time::timeout(timeout, s.tracker.wait())
            .await
            .is_ok();
        if !done {
            info!(left = s.tracker.len(), "drain timed out");
        }
        done
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::{BackendError, SessionInfo};
    use async_trait::async_trait;
    use proto::{MsgFrame, MsgId};

    pub(crate) struct Null;

    #[async_trait]
    impl Backend for Null {
        async fn connected(&self, _: &SessionInfo) {}
        async fn disconnected(&self, _: &SessionInfo, _: i64) {}
        async fn acked(&self, _: &UserId, _: &str) -> Result<Option<MsgId>, BackendError> {
            Ok(None)
        }
        async fn replay(
            &self,
            _: &UserId,
            _: MsgId,
            _: u32,
        ) -> Result<Vec<MsgFrame>, BackendError> {
            Ok(Vec::new())
        }
        async fn ack(&self, _: &UserId, _: &str, _: MsgId) -> Result<(), BackendError> {
            Ok(())
        }
        async fn channel_history(
            &self,
            _: &str,
            _: MsgId,
            _: u32,
        ) -> Result<Vec<MsgFrame>, BackendError> {
            Ok(Vec::new())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Memory budget: the per-connection task future and hub entries must stay
    //! small; these bounds fail loudly when a change bloats them.
    use super::tests_support::Null;
    use super::*;
    use crate::error::CloseReason;
    use crate::hub::Conn;
    use crate::listen::{tcp, ws};
    use proto::{ConnId, RoomId};
    use smallvec::SmallVec;
    use std::mem::size_of;

    #[tokio::test]
    async fn drain_jitter_stays_in_range() {
        let mut cfg = RoomConfig::new(RoomId(1), Arc::from(&b"k"[..]));
        cfg.drain_reconnect_delay = Duration::from_millis(50);
        let room = Room::new(cfg, Arc::new(Null));
        for _ in 0..200 {
            match room.shared.draining_reason() {
                CloseReason::Draining { reconnect_after_ms } => assert!(reconnect_after_ms <= 50),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn per_connection_sizes() {
        let room = Room::new(
            RoomConfig::new(RoomId(1), Arc::from(&b"k"[..])),
            Arc::new(Null),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sock, peer) = listener.accept().await.unwrap();
        let _client2 = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sock2, _) = listener.accept().await.unwrap();

        let shared = Arc::clone(&room.shared);
        let ws_task = ws::serve(Arc::clone(&shared), sock, peer);
        let tcp_task = tcp::serve(Arc::clone(&shared), sock2, peer);
        let ws_size = std::mem::size_of_val(&ws_task);
        let tcp_size = std::mem::size_of_val(&tcp_task);
        drop((ws_task, tcp_task));

        let conn = size_of::<Conn>() + 2 * size_of::<usize>(); // Arc header
        let conns_entry = size_of::<(ConnId, Arc<Conn>)>();
        let users_entry = size_of::<(UserId, SmallVec<[Arc<Conn>; 2]>)>();
        let channel_entry = size_of::<(ConnId, Arc<Conn>)>();
        let push = size_of::<Push>();
        let ws_io = size_of::<ws::WsIo>();
        let tcp_io = size_of::<crate::framed::FramedIo>();
        println!(
            "sizes: WsIo {ws_io} B, FramedIo {tcp_io} B, ClientFrame {} B",
            size_of::<proto::ClientFrame>()
        );
        println!(
            "sizes: ws task future {ws_size} B, tcp task future {tcp_size} B, \
             Arc<Conn> {conn} B, conns entry {conns_entry} B, users entry {users_entry} B, \
             channel subscriber entry {channel_entry} B, Push {push} B"
        );
        // History: before the shared idle wheel ws 1152 / tcp 896 (debug);
        // the idle deadline now costs the session no timer (one
        // `Weak<Conn>` in the room's wheel and 4 B in `Conn`).
        // Debug-build figures. A tokio task is the future plus 104 B
        // (header, scheduler, id, trailer), rounded up to 128 B; the
        // spawned future adds 32 B to these (the permit and the boxed
        // per-address slot released at the end, the tracker's token). In
        // release the session futures are now 600 B (ws; 608 with the
        // handshake's `then`) and 608 B (tcp): tasks of 768 B, which hold
        // at most 664 B of future. 2026-12-05: ws 776 → 616 (own framing,
        // handshake chained with `then`, 8-byte rate-limit bucket, 19-byte
        // peer, start values and ack state boxed, registration without a
        // copy of the user or the channel list, shared device id), tcp
        // 736 → 608 (its output buffer a `Vec`). Growing past these numbers may cost every connection
        // 128 B: check the release sizes
        // (`cargo +nightly rustc -p pushgate-room --lib --release -- -Zprint-type-sizes`).
        // 2026-12-06: `send`/`pub` frames are boxed in `ClientFrame` (a frame
        // slot is kept in the session) and the send-rate bucket lives in the
        // lazily boxed grants: unchanged at 616 / 608.
        let frame = size_of::<proto::ClientFrame>();
        assert!(frame <= 72, "ClientFrame is {frame} bytes");
        assert!(ws_size <= 616, "ws session future is {ws_size} bytes");
        assert!(tcp_size <= 616, "tcp session future is {tcp_size} bytes");
        assert!(conn <= 128, "Arc<Conn> is {conn} bytes");
        assert!(conns_entry <= 16);
        assert!(users_entry <= 48, "users entry is {users_entry} bytes");
    }
}
