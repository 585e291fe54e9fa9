//! The connection server: WebSocket, TCP and QUIC listeners (TLS optional
//! on the first two, always on QUIC), one session logic for every transport (auth, heartbeats, sub/unsub, acks, bounded outbound
//! queue), and the local index user → connections and channel → connections.
//!
//! A room does not store messages or know other rooms; what it needs from the
//! rest of the system it asks through [`Backend`].
//!
//! Layout, each module depending only on those listed before it:
//! [`config`] (settings), `error` (why a session ended), `metrics`, `hub`
//! (indexes and outbound queues), `per_ip` (connections per address),
//! `shared` (the state every task shares, and the handshake step),
//! [`tls`] (certificates, reloadable, and the TLS handshake), `io` (the
//! transport seam: `FrameIo`), `codec` and `framed` (length-prefixed
//! frames over any byte stream: TCP, TLS, QUIC), `session` (one
//! connection's life), `listen` (accept loops: socket → `FrameIo` →
//! session; WebSocket framing in `listen::ws`, QUIC in `listen::quic`),
//! `room` ([`Room`], the handle).

mod broadcasts;
mod codec;
pub mod config;
mod error;
pub mod events;
mod framed;
mod hub;
mod io;
mod listen;
mod metrics;
mod per_ip;
pub mod remote;
mod room;
mod session;
mod shared;
pub mod tls;

use std::sync::Arc;

use async_trait::async_trait;
use proto::{ConnId, MsgFrame, MsgId, UserId};

pub use config::{RoomConfig, TokenKeys};
pub use events::{EventKind, SessionEvent};
pub use listen::quic::QuicListener;
pub use proto::MembersPage;
pub use room::{Listener, Room};
pub use tls::{TlsCerts, TlsError};

/// What a room needs from the rest of pushgate (register and saver). In
/// standalone mode the root package implements it in process.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A connection authenticated.
    async fn connected(&self, session: &SessionInfo);
    /// A connection that had authenticated ended at `now_ms`.
    async fn disconnected(&self, session: &SessionInfo, now_ms: i64);
    /// Whether [`Backend::event`] wants session events; asked once, when
    /// the room is made (default: no, and none are built).
    fn wants_events(&self) -> bool {
        false
    }
    /// A session event for the application server. Must return at once
    /// (queue it; never wait): it is called on the session's path.
    fn event(&self, _event: SessionEvent) {}
    /// Whether `user` surely has no stored message with id above `after`,
    /// known without a round trip (`false`: unknown). A connect or resync
    /// with nothing to replay then skips the store.
    fn nothing_after(&self, _user: &UserId, _after: MsgId) -> bool {
        false
    }
    /// Highest id acked by this device, if any.
    ///
    /// # Errors
    /// [`BackendError`] when the store is unreachable.
    async fn acked(&self, user: &UserId, device: &str) -> Result<Option<MsgId>, BackendError>;
    /// Stored user messages with id greater than `after`, in id order, at most `limit`.
    ///
    /// # Errors
    /// [`BackendError`] when the store is unreachable.
    async fn replay(
        &self,
        user: &UserId,
        after: MsgId,
        limit: u32,
    ) -> Result<Vec<MsgFrame>, BackendError>;
    /// Records an ack.
    ///
    /// # Errors
    /// [`BackendError`] when the store is unreachable.
    async fn ack(&self, user: &UserId, device: &str, id: MsgId) -> Result<(), BackendError>;
    /// Channel history with id greater than `after`, in id order, at most `limit`.
    ///
    /// # Errors
    /// [`BackendError`] when the store is unreachable.
    async fn channel_history(
        &self,
        channel: &str,
        after: MsgId,
        limit: u32,
    ) -> Result<Vec<MsgFrame>, BackendError>;
    /// A message sent by the client of `from` (`send` or `pub`), already
    /// checked against its token and the room's limits: asks the hook (if
    /// any), stores and delivers it to everyone but `from`'s connection;
    /// returns its id. The same cid from the same user within the queue's
    /// time to live returns the first id and delivers nothing again.
    ///
    /// # Errors
    /// [`MessageError`]: nothing was stored or delivered. The default
    /// refuses every message (a backend that cannot deliver).
    async fn message(&self, from: &SessionInfo, msg: ClientMessage) -> Result<MsgId, MessageError> {
        let _ = (from, msg);
        Err(MessageError::Unavailable(
            "this server does not take messages from clients".into(),
        ))
    }
    /// A connection here joined (`join`) or left a channel with presence;
    /// this room's own watchers already have it. A cluster passes it on to
    /// the other rooms. Must return at once (queue it; never wait): it is
    /// called on the session's path and when a connection ends. Default:
    /// nothing (one room).
    fn presence_changed(&self, join: bool, change: &proto::PresenceChange) {
        let _ = (join, change);
    }
    /// Whether [`Backend::presence_changed`] wants the changes; asked
    /// once, when the room is made (default: no, and none are built).
    fn relays_presence(&self) -> bool {
        false
    }
    /// The members of `channel` over every room after user `after`, at most
    /// `limit`, for a client's `presence` frame. `None` (the default): this
    /// room's own members are all there are.
    ///
    /// # Errors
    /// [`BackendError`] when the other rooms cannot be asked.
    async fn channel_members(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Option<Result<MembersPage, BackendError>> {
        let _ = (channel, after, limit);
        None
    }
}

/// A message a client sent: to a user (`send`) or a channel (`pub`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientMessage {
    /// Where it goes.
    pub to: Target,
    /// The payload: one JSON value, as UTF-8 JSON text.
    pub data: bytes::Bytes,
    /// The client's id for it.
    pub cid: String,
}

/// Where a client's message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One user (all their connections; `send`).
    User(UserId),
    /// A channel's subscribers (`pub`).
    Channel(String),
}

/// Why a client's message was not accepted (nothing was stored or
/// delivered). Each is a non-fatal error to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The hook refused it; `message` is the hook's.
    #[error("{message}")]
    Denied {
        /// The hook's code (snake_case), or `hook_denied`.
        code: String,
        /// The hook's message.
        message: String,
    },
    /// The hook did not answer in time, answered a non-2xx or garbage.
    #[error("hook unavailable: {0}")]
    HookUnavailable(String),
    /// Not allowed here (e.g. a token that says `"send": false`).
    #[error("{0}")]
    Forbidden(String),
    /// The recipient of a `send` is not known to the server (with
    /// `--send-known-users-only`).
    #[error("{0}")]
    UnknownUser(String),
    /// The store, ids or dispatcher cannot take it now.
    #[error("{0}")]
    Unavailable(String),
}

impl MessageError {
    /// The error code the client gets.
    pub fn code(&self) -> proto::ErrorCode {
        match self {
            MessageError::Denied { .. } => proto::ErrorCode::HookDenied,
            MessageError::HookUnavailable(_) => proto::ErrorCode::HookUnavailable,
            MessageError::Forbidden(_) => proto::ErrorCode::Forbidden,
            MessageError::UnknownUser(_) => proto::ErrorCode::UnknownUser,
            MessageError::Unavailable(_) => proto::ErrorCode::Unavailable,
        }
    }
}

/// Backend failure (reported to the client as `internal`).
///
/// The room does not know the store's error type: the backend sorts its
/// failures into [`BackendError::Unavailable`] (transient) and
/// [`BackendError::Failed`] (permanent) and keeps them as the source.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend did not answer within the room's time limit.
    #[error("backend: timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The store behind the backend is unreachable, slow or disconnected;
    /// the same call may succeed later.
    #[error("backend: store unavailable: {source}")]
    Unavailable {
        /// The store's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The store failed for good (bad data, bad answer, closed).
    #[error("backend: store failed: {source}")]
    Failed {
        /// The store's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl BackendError {
    /// Whether the same call may succeed later (timeout, store unavailable).
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::Timeout(_) | BackendError::Unavailable { .. } => true,
            BackendError::Failed { .. } => false,
        }
    }
}

#[cfg(test)]
mod error_tests {
    use std::error::Error as _;

    use super::BackendError;

    #[derive(Debug, thiserror::Error)]
    #[error("cause")]
    struct Cause;

    #[test]
    fn retryable_classification() {
        assert!(BackendError::Timeout(std::time::Duration::from_secs(1)).is_retryable());
        assert!(BackendError::Unavailable {
            source: Box::new(Cause)
        }
        .is_retryable());
        assert!(!BackendError::Failed {
            source: Box::new(Cause)
        }
        .is_retryable());
    }

    #[test]
    fn source_is_kept() {
        let e = BackendError::Unavailable {
            source: Box::new(Cause),
        };
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("cause")
        );
        assert!(e.to_string().contains("cause"), "{e}");
        assert!(BackendError::Failed {
            source: Box::new(Cause)
        }
        .source()
        .is_some());
        assert!(BackendError::Timeout(std::time::Duration::from_secs(1))
            .source()
            .is_none());
    }
}

/// Who an authenticated connection is.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// Connection id.
    pub conn: ConnId,
    /// User id.
    pub user: UserId,
    /// Device id (`"default"` when neither token nor auth frame names one).
    /// Shared: every connection with the default device points at one string.
    pub device: Arc<str>,
    /// Milliseconds since the epoch when it authenticated.
    pub since: i64,
}
