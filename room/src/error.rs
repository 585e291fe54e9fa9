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
    /// The socket or the WebSocket layer failed.
    #[error("transport: {0}")]
    Io(String),
}

impl From<std::io::Error> for RecvError {
    fn from(e: std::io::Error) -> Self {
        RecvError::Io(e.to_string())
    }
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
    /// The client closed the connection.
    #[error("peer closed")]
    PeerClosed,
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
    /// More inbound frames than the rate limit allows (4004).
    #[error("inbound rate limit exceeded")]
    RateLimited,
    /// Kicked through the API (4005).
    #[error("kicked")]
    Kicked,
    /// The outbound queue overflowed, or a write stalled past the idle limit (4006).
    #[error("slow consumer")]
    SlowConsumer,
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
            CloseReason::PeerClosed | CloseReason::Io(_) => return None,
            CloseReason::AuthFailed(_)
            | CloseReason::BadDevice(_)
            | CloseReason::TooManyConnections(_)
            | CloseReason::NotAuthenticated => CloseCode::AuthFailed,
            CloseReason::AuthTimeout => CloseCode::AuthTimeout,
            CloseReason::HeartbeatTimeout => CloseCode::HeartbeatTimeout,
            CloseReason::BadFrame(_) | CloseReason::RateLimited => CloseCode::ProtocolError,
            CloseReason::Kicked => CloseCode::Kicked,
            CloseReason::SlowConsumer => CloseCode::SlowConsumer,
            CloseReason::Draining { .. } | CloseReason::ReplayUnavailable { .. } => {
                CloseCode::Draining
            }
        })
    }

    /// The error code of the final error frame.
    pub(crate) fn error_code(&self) -> ErrorCode {
        match self {
            CloseReason::PeerClosed | CloseReason::Io(_) => ErrorCode::Internal,
            CloseReason::AuthFailed(_) | CloseReason::BadDevice(_) => ErrorCode::AuthFailed,
            CloseReason::NotAuthenticated => ErrorCode::NotAuthenticated,
            CloseReason::TooManyConnections(_) => ErrorCode::TooManyConnections,
            CloseReason::AuthTimeout => ErrorCode::AuthTimeout,
            CloseReason::HeartbeatTimeout => ErrorCode::HeartbeatTimeout,
            CloseReason::BadFrame(DecodeError::TooLarge { .. }) => ErrorCode::FrameTooLarge,
            CloseReason::BadFrame(_) => ErrorCode::BadFrame,
            CloseReason::RateLimited => ErrorCode::RateLimited,
            CloseReason::Kicked => ErrorCode::Kicked,
            CloseReason::SlowConsumer => ErrorCode::SlowConsumer,
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
            None if matches!(self, CloseReason::PeerClosed) => "peer",
            None => "io",
            Some(CloseCode::AuthFailed) => "4001",
            Some(CloseCode::AuthTimeout) => "4002",
            Some(CloseCode::HeartbeatTimeout) => "4003",
            Some(CloseCode::ProtocolError) => "4004",
            Some(CloseCode::Kicked) => "4005",
            Some(CloseCode::SlowConsumer) => "4006",
            Some(CloseCode::Draining) => "4007",
        }
    }

    /// Whether this ending is routine (logged at `debug`) rather than a client misbehaving.
    pub(crate) fn is_routine(&self) -> bool {
        matches!(
            self,
            CloseReason::PeerClosed
                | CloseReason::Io(_)
                | CloseReason::AuthTimeout
                | CloseReason::HeartbeatTimeout
                | CloseReason::Kicked
                | CloseReason::Draining { .. }
        )
    }
}

impl From<RecvError> for CloseReason {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Decode(d) => CloseReason::BadFrame(d),
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
    fn peer_and_io_send_nothing() {
        assert_eq!(CloseReason::PeerClosed.close_code(), None);
        assert_eq!(CloseReason::PeerClosed.label(), "peer");
        assert_eq!(CloseReason::Io("x".into()).label(), "io");
    }
}
