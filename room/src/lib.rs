//! The connection server: WebSocket and TCP listeners, one session logic for
//! every transport (auth, heartbeats, sub/unsub, acks, bounded outbound
//! queue), and the local index user → connections and channel → connections.
//!
//! A room does not store messages or know other rooms; what it needs from the
//! rest of the system it asks through [`Backend`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use proto::{EncodedMsg, MsgFrame, MsgId, RoomId, UserId, ConnId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a room needs from the rest of pushgate (register and saver). In
/// standalone mode the root package implements it in process.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A connection authenticated.
    async fn connected(&self, session: &SessionInfo);
    /// A connection that had authenticated ended at `now_ms`.
    async fn disconnected(&self, session: &SessionInfo, now_ms: i64);
    /// Highest id acked by this device, if any.
    ///
    /// # Errors
    /// [`BackendError`] when the store is unreachable.
    async fn acked(&self, user: &UserId, device: &str) -> Result<Option<MsgId>, BackendError>;
    /// Stored user messages with id greater than `after`, in id order, at most `limit`.
    ///
    /// # Errors
    /// [`BackendError`] when the store is unreachable.
    async fn replay(&self, user: &UserId, after: MsgId, limit: u32) -> Result<Vec<MsgFrame>, BackendError>;
    /// Records an ack.
    ///
    /// # Errors
    /// [`BackendError`] when the store is unreachable.
    async fn ack(&self, user: &UserId, device: &str, id: MsgId) -> Result<(), BackendError>;
    /// Channel history with id greater than `after`, in id order, at most `limit`.
    ///
    /// # Errors
    /// [`BackendError`] when the store is unreachable.
    async fn channel_history(&self, channel: &str, after: MsgId, limit: u32) -> Result<Vec<MsgFrame>, BackendError>;
}

/// Backend failure (reported to the client as `internal`).
#[derive(Debug, thiserror::Error)]
#[error("backend: {0}")]
pub struct BackendError(pub String);

/// Who an authenticated connection is.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// Connection id.
    pub conn: ConnId,
    /// User id.
    pub user: UserId,
    /// Device id (`"default"` when neither token nor auth frame names one).
    pub device: String,
    /// Milliseconds since the epoch when it authenticated.
    pub since: i64,
}

/// Room settings.
#[derive(Clone, Debug)]
pub struct RoomConfig {
    /// This room's id.
    pub room: RoomId,
    /// HS256 secret for client tokens.
    pub token_secret: Arc<[u8]>,
    /// Heartbeat interval told to clients; a connection silent for twice this long is closed (4003).
    pub heartbeat: Duration,
    /// Time allowed for the first (auth) frame.
    pub auth_timeout: Duration,
    /// Maximum frame size in bytes.
    pub max_frame: usize,
    /// Outbound queue length per connection; full = slow consumer (4006).
    pub send_queue: usize,
    /// Channels one connection may hold.
    pub max_channels: usize,
    /// Connections this room accepts before refusing new ones.
    pub max_connections: usize,
    /// Inbound frames per second allowed per connection (burst = 2×).
    pub rate_limit: u32,
    /// Suggested reconnect delay sent with 4007 when draining.
    pub drain_reconnect_delay: Duration,
}

/// A running room.
#[derive(Clone)]
pub struct Room {}

impl Room {
    /// Creates a room.
    pub fn new(cfg: RoomConfig, backend: Arc<dyn Backend>) -> Room {
        let _ = (cfg, backend);
        unimplemented!()
    }
    /// Accepts WebSocket connections (`GET /ws`) until `shutdown`.
    pub async fn serve_ws(&self, listener: TcpListener, shutdown: CancellationToken) {
        let _ = (listener, shutdown);
        unimplemented!()
    }
    /// Accepts TCP connections (length-prefixed binary frames) until `shutdown`.
    pub async fn serve_tcp(&self, listener: TcpListener, shutdown: CancellationToken) {
        let _ = (listener, shutdown);
        unimplemented!()
    }
    /// Queues `msg` to every connection of each user; returns connections written.
    pub fn deliver_users(&self, users: &[UserId], msg: &Arc<EncodedMsg>) -> u64 {
        let _ = (users, msg);
        unimplemented!()
    }
    /// Queues `msg` to every subscriber of `channel`; returns connections written.
    pub fn publish_channel(&self, channel: &str, msg: &Arc<EncodedMsg>) -> u64 {
        let _ = (channel, msg);
        unimplemented!()
    }
    /// Queues `msg` to every authenticated connection; returns connections written.
    pub fn broadcast(&self, msg: &Arc<EncodedMsg>) -> u64 {
        let _ = msg;
        unimplemented!()
    }
    /// Closes every connection of `user` with 4005; returns how many.
    pub fn kick_user(&self, user: &UserId) -> u64 {
        let _ = user;
        unimplemented!()
    }
    /// Authenticated connections held now.
    pub fn connections(&self) -> u64 {
        unimplemented!()
    }
    /// Tells every client to reconnect elsewhere (4007), then waits up to
    /// `timeout` for all sessions to end. Returns whether all ended.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let _ = timeout;
        unimplemented!()
    }
}
