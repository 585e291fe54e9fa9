//! Why a session ended ([`CloseReason`]), and the transport errors that feed it.
//!
//! A session returns exactly one `CloseReason`; the task boundary turns it
//! into the final error frame and close code, counts it, and logs it once
//! (peer/io/timeouts at `debug`, protocol violations at `info`).

use proto::token::TokenError;
use proto::{CloseCode, DecodeError, ErrorCode};
use thiserror::Error;

/// A failure reading from a client transport.
#[derive(Debug, Error)]
pub(crate) enum RecvError {
    /// The bytes did not decode into a client frame (4004).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The client broke the WebSocket protocol (4004): the text says how.
    #[error("websocket protocol violation: {0}")]
    WsProtocol(String),
    /// The client went away without closing properly (reset, or EOF without
    /// a WebSocket close frame or in the middle of a frame): the text says how.
    #[error("{0}")]
    Gone(&'static str),
    /// The socket or the WebSocket layer failed.
    #[error("transport: {0}")]
    Io(String),
}

impl From<std::io::Error> for RecvError {
    fn from(e: std::io::Error) -> Self {
        match gone(&e) {
            Some(how) => RecvError::Gone(how),
            None => RecvError::Io(e.to_string()),
        }
    }
}

/// How the client went away, when `e` says it did.
pub(crate) fn gone(e: &std::io::Error) -> Option<&'static str> {
    use std::io::ErrorKind;
    Some(match e.kind() {
        ErrorKind::ConnectionReset => "connection reset by the client",
        ErrorKind::ConnectionAborted => "connection aborted",
        ErrorKind::BrokenPipe => "connection closed by the client",
        ErrorKind::UnexpectedEof => "connection closed in the middle of a frame",
        _ => return None,
    })
}

/// A failure writing to a client transport.
#[derive(Debug, Error)]
#[error("send: {0}")]
pub(crate) struct SendError(pub(crate) String);

impl From<std::io::Error> for SendError {
    fn from(e: std::io::Error) -> Self {
        SendError(e.to_string())
    }
}

/// Why a session ended. Every variant but the first two sends a final error
/// frame and a close code to the client.
#[derive(Debug, Error)]
pub(crate) enum CloseReason {
    /// The client closed the connection (WebSocket: with a close frame).
    #[error("client closed the connection")]
    PeerClosed,
    /// The client went away without closing properly (reset, EOF without a
    /// WebSocket close frame, EOF in the middle of a frame): the text says how.
    #[error("client went away: {0}")]
    Gone(&'static str),
    /// Reading or writing the socket failed.
    #[error("io: {0}")]
    Io(String),
    /// The token was refused (4001).
    #[error("auth failed: {0}")]
    AuthFailed(#[from] TokenError),
    /// The auth frame named an unusable device id (4001).
    #[error("auth failed: {0}")]
    BadDevice(&'static str),
    /// The user already holds the most connections allowed per user in
    /// this room (4001: refused like a bad token; reconnecting at once
    /// would be refused again).
    #[error("this user already has {0} connections here, the most allowed")]
    TooManyConnections(usize),
    /// The first frame was not `auth` (4001).
    #[error("first frame was not auth")]
    NotAuthenticated,
    /// No auth frame within the auth timeout (4002).
    #[error("no auth frame in time")]
    AuthTimeout,
    /// No frame within twice the heartbeat interval (4003).
    #[error("no frame within the heartbeat timeout")]
    HeartbeatTimeout,
    /// A malformed or oversized frame (4004).
    #[error("bad frame: {0}")]
    BadFrame(DecodeError),
    /// A WebSocket protocol violation (4004): the text says which.
    #[error("websocket protocol violation: {0}")]
    WsProtocol(String),
    /// More inbound frames than the rate limit allows (4004).
    #[error("inbound rate limit exceeded")]
    RateLimited,
    /// Kicked through the API (4005).
    #[error("kicked")]
    Kicked,
    /// The outbound queue overflowed, or a write stalled past the idle limit (4006).
    #[error("slow consumer")]
    SlowConsumer,
    /// The token expired and no `refresh` replaced it within the grace period (4008).
    #[error("token expired")]
    TokenExpired,
    /// The room is draining (4007); the client should reconnect after `reconnect_after_ms`.
    #[error("draining")]
    Draining {
        /// Suggested reconnect delay, jittered per connection.
        reconnect_after_ms: u64,
    },
    /// The stored messages could not be replayed (store unreachable or too
    /// slow) (4007). The session must not go on to live messages: the client
    /// would ack past the gap and lose what was not replayed. It reconnects
    /// with `last_id` after `reconnect_after_ms` instead.
    #[error("replay unavailable")]
    ReplayUnavailable {
        /// Suggested reconnect delay.
        reconnect_after_ms: u64,
    },
}

impl CloseReason {
    /// The close code sent to the client, if any.
    pub(crate) fn close_code(&self) -> Option<CloseCode> {
        Some(match self {
            CloseReason::PeerClosed | CloseReason::Gone(_) | CloseReason::Io(_) => return None,
            CloseReason::AuthFailed(_)
            | CloseReason::BadDevice(_)
            | CloseReason::TooManyConnections(_)
            | CloseReason::NotAuthenticated => CloseCode::AuthFailed,
            CloseReason::AuthTimeout => CloseCode::AuthTimeout,
            CloseReason::HeartbeatTimeout => CloseCode::HeartbeatTimeout,
            CloseReason::BadFrame(_) | CloseReason::WsProtocol(_) | CloseReason::RateLimited => {
                CloseCode::ProtocolError
            }
            CloseReason::Kicked => CloseCode::Kicked,
            CloseReason::SlowConsumer => CloseCode::SlowConsumer,
            CloseReason::TokenExpired => CloseCode::TokenExpired,
            CloseReason::Draining { .. } | CloseReason::ReplayUnavailable { .. } => {
                CloseCode::Draining
            }
        })
    }

    /// The error code of the final error frame.
    pub(crate) fn error_code(&self) -> ErrorCode {
        match self {
            CloseReason::PeerClosed | CloseReason::Gone(_) | CloseReason::Io(_) => {
                ErrorCode::Internal
            }
            CloseReason::AuthFailed(_) | CloseReason::BadDevice(_) => ErrorCode::AuthFailed,
            CloseReason::NotAuthenticated => ErrorCode::NotAuthenticated,
            CloseReason::TooManyConnections(_) => ErrorCode::TooManyConnections,
            CloseReason::AuthTimeout => ErrorCode::AuthTimeout,
            CloseReason::HeartbeatTimeout => ErrorCode::HeartbeatTimeout,
            CloseReason::BadFrame(DecodeError::TooLarge { .. }) => ErrorCode::FrameTooLarge,
            CloseReason::BadFrame(_) | CloseReason::WsProtocol(_) => ErrorCode::BadFrame,
            CloseReason::RateLimited => ErrorCode::RateLimited,
            CloseReason::Kicked => ErrorCode::Kicked,
            CloseReason::SlowConsumer => ErrorCode::SlowConsumer,
            CloseReason::TokenExpired => ErrorCode::TokenExpired,
            CloseReason::Draining { .. } => ErrorCode::Draining,
            CloseReason::ReplayUnavailable { .. } => ErrorCode::Internal,
        }
    }

    /// The text of the final error frame and of the WebSocket close frame.
    /// For 4007 it is exactly `draining reconnect_after_ms=<N>` (or
    /// `unavailable reconnect_after_ms=<N>`), so TCP clients get the
    /// suggested delay too.
    pub(crate) fn message(&self) -> String {
        match self {
            CloseReason::Draining { reconnect_after_ms } => {
                format!("draining reconnect_after_ms={reconnect_after_ms}")
            }
            CloseReason::ReplayUnavailable { reconnect_after_ms } => {
                format!("unavailable reconnect_after_ms={reconnect_after_ms}")
            }
            other => other.to_string(),
        }
    }

    /// Metric label: the close code, or `peer` / `io`.
    pub(crate) fn label(&self) -> &'static str {
        match self.close_code() {
            None if matches!(self, CloseReason::PeerClosed | CloseReason::Gone(_)) => "peer",
            None => "io",
            Some(CloseCode::AuthFailed) => "4001",
            Some(CloseCode::AuthTimeout) => "4002",
            Some(CloseCode::HeartbeatTimeout) => "4003",
            Some(CloseCode::ProtocolError) => "4004",
            Some(CloseCode::Kicked) => "4005",
            Some(CloseCode::SlowConsumer) => "4006",
            Some(CloseCode::Draining) => "4007",
            Some(CloseCode::TokenExpired) => "4008",
        }
    }

    /// Whether this ending is routine (logged at `debug`) rather than a client misbehaving.
    pub(crate) fn is_routine(&self) -> bool {
        matches!(
            self,
            CloseReason::PeerClosed
                | CloseReason::Gone(_)
                | CloseReason::Io(_)
                | CloseReason::AuthTimeout
                | CloseReason::HeartbeatTimeout
                | CloseReason::Kicked
                | CloseReason::TokenExpired
                | CloseReason::Draining { .. }
        )
    }
}

impl From<RecvError> for CloseReason {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Decode(d) => CloseReason::BadFrame(d),
            RecvError::WsProtocol(s) => CloseReason::WsProtocol(s),
            RecvError::Gone(how) => CloseReason::Gone(how),
            RecvError::Io(s) => CloseReason::Io(s),
        }
    }
}

impl From<SendError> for CloseReason {
    fn from(e: SendError) -> Self {
        CloseReason::Io(e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_text_is_exact() {
        let r = CloseReason::Draining {
            reconnect_after_ms: 1234,
        };
        assert_eq!(r.message(), "draining reconnect_after_ms=1234");
        assert_eq!(r.close_code(), Some(CloseCode::Draining));
        assert_eq!(r.label(), "4007");
    }

    #[test]
    fn oversized_is_frame_too_large() {
        let r = CloseReason::BadFrame(DecodeError::TooLarge { len: 10, max: 5 });
        assert_eq!(r.error_code(), ErrorCode::FrameTooLarge);
        assert_eq!(r.close_code(), Some(CloseCode::ProtocolError));
        let r = CloseReason::BadFrame(DecodeError::Truncated);
        assert_eq!(r.error_code(), ErrorCode::BadFrame);
    }

    #[test]
    fn going_away_is_not_a_bad_frame() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let r = CloseReason::from(RecvError::from(reset));
        assert_eq!(
            r.to_string(),
            "client went away: connection reset by the client"
        );
        assert_eq!(r.close_code(), None);
        assert_eq!(r.label(), "peer");
        assert!(r.is_routine());
        let other = std::io::Error::other("disk on fire");
        let r = CloseReason::from(RecvError::from(other));
        assert_eq!(r.label(), "io");
        let r = CloseReason::from(RecvError::WsProtocol("reserved bits are non-zero".into()));
        assert_eq!(r.close_code(), Some(CloseCode::ProtocolError));
        assert_eq!(r.error_code(), ErrorCode::BadFrame);
        assert!(!r.is_routine());
        assert_eq!(
            r.message(),
            "websocket protocol violation: reserved bits are non-zero"
        );
    }

    #[test]
    fn peer_and_io_send_nothing() {
        assert_eq!(CloseReason::PeerClosed.close_code(), None);
        assert_eq!(CloseReason::PeerClosed.label(), "peer");
        assert_eq!(CloseReason::Io("x".into()).label(), "io");
    }
}
