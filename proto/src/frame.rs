//! The frames of client protocol v1, independent of their encoding.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::{ConnId, MsgId, RoomId, UserId};

/// A frame sent by a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// First frame: authenticate with a JWT; optionally resume after `last_id`.
    Auth {
        /// Echoed in the reply.
        seq: Option<u32>,
        /// The JWT (HS256).
        token: String,
        /// Replay every stored message with a greater id.
        last_id: Option<MsgId>,
        /// Device id; overrides the token's `dev` claim when the token has none.
        device: Option<String>,
    },
    /// Heartbeat; answered with [`ServerFrame::Pong`].
    Ping {
        /// Echoed in the reply.
        seq: Option<u32>,
    },
    /// Subscribe to a channel, optionally recovering history after `last_id`.
    Sub {
        /// Echoed in the reply.
        seq: Option<u32>,
        /// Channel name.
        channel: String,
        /// Recover channel history with a greater id (channels with history only).
        last_id: Option<MsgId>,
        /// Receive `join`/`leave` events of the channel's other members
        /// (channels with presence only).
        presence: bool,
    },
    /// Unsubscribe from a channel.
    Unsub {
        /// Echoed in the reply.
        seq: Option<u32>,
        /// Channel name.
        channel: String,
    },
    /// The client has every user message up to `id`.
    Ack {
        /// Echoed if the server replies (it does not, except with an error).
        seq: Option<u32>,
        /// Highest id received.
        id: MsgId,
    },
    /// A new token for this connection, before the current one expires;
    /// answered with [`ServerFrame::RefreshOk`].
    Refresh {
        /// Echoed in the reply.
        seq: Option<u32>,
        /// The new JWT: same user, later `exp`.
        token: String,
    },
    /// A 1:1 message, stored like a REST push with `store: true`;
    /// answered with [`ServerFrame::SendOk`]. Boxed: the frame is rare and
    /// every session holds a frame-sized slot.
    Send {
        /// Echoed in the reply.
        seq: Option<u32>,
        /// The message.
        msg: Box<SendMsg>,
    },
    /// A group message to a channel's subscribers; answered with
    /// [`ServerFrame::PubOk`].
    Pub {
        /// Echoed in the reply.
        seq: Option<u32>,
        /// The message.
        msg: Box<PubMsg>,
    },
    /// Who is in a channel with presence (the connection must be
    /// subscribed to it); answered with [`ServerFrame::PresenceOk`].
    Presence {
        /// Echoed in the reply.
        seq: Option<u32>,
        /// Channel name.
        channel: String,
    },
}

/// The body of a `send`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendMsg {
    /// The recipient.
    pub to: UserId,
    /// The payload: one JSON value, as UTF-8 JSON text.
    pub data: Bytes,
    /// The client's id for this message (1 to [`MAX_CID_LEN`] bytes): the
    /// same cid from the same user is accepted once.
    pub cid: String,
}

/// The body of a `pub`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubMsg {
    /// The channel.
    pub channel: String,
    /// The payload: one JSON value, as UTF-8 JSON text.
    pub data: Bytes,
    /// The client's id for this message, as for [`SendMsg::cid`].
    pub cid: String,
}

impl ClientFrame {
    /// A `send` frame.
    pub fn send(seq: Option<u32>, to: UserId, data: Bytes, cid: String) -> ClientFrame {
        ClientFrame::Send {
            seq,
            msg: Box::new(SendMsg { to, data, cid }),
        }
    }

    /// A `pub` frame.
    pub fn publish(seq: Option<u32>, channel: String, data: Bytes, cid: String) -> ClientFrame {
        ClientFrame::Pub {
            seq,
            msg: Box::new(PubMsg { channel, data, cid }),
        }
    }
}

/// Longest `cid` of a `send` or `pub`, in bytes.
pub const MAX_CID_LEN: usize = 64;

/// Whether `cid` is a valid client message id: 1 to [`MAX_CID_LEN`] bytes.
pub fn valid_cid(cid: &str) -> bool {
    (1..=MAX_CID_LEN).contains(&cid.len())
}

impl ClientFrame {
    /// The frame's `seq`, if any.
    pub fn seq(&self) -> Option<u32> {
        match self {
            ClientFrame::Auth { seq, .. }
            | ClientFrame::Ping { seq }
            | ClientFrame::Sub { seq, .. }
            | ClientFrame::Unsub { seq, .. }
            | ClientFrame::Ack { seq, .. }
            | ClientFrame::Refresh { seq, .. }
            | ClientFrame::Send { seq, .. }
            | ClientFrame::Pub { seq, .. }
            | ClientFrame::Presence { seq, .. } => *seq,
        }
    }
}

/// A message pushed to a client: a user message, or a channel message when
/// `channel` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgFrame {
    /// Message id.
    pub id: MsgId,
    /// Milliseconds since the Unix epoch when the push was accepted.
    pub ts: i64,
    /// The channel, for channel messages.
    pub channel: Option<String>,
    /// The payload: one JSON value, as UTF-8 JSON text (already validated).
    pub data: Bytes,
    /// Who sent it, for messages sent by a client (`send`, `pub`); `None`
    /// for pushes from the REST API.
    pub sender: Option<Sender>,
}

/// The client that sent a message, and its id for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sender {
    /// The sending user.
    pub user: UserId,
    /// The client's message id (`cid`).
    pub cid: String,
}

/// A member joining or leaving a channel with presence: one connection
/// (a user's device) subscribing or unsubscribing (or going away).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PresenceChange {
    /// The channel.
    pub channel: String,
    /// The member's user.
    pub user: UserId,
    /// The member connection's device id.
    pub device: String,
}

/// One user present in a channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PresentUser {
    /// The user.
    pub user: UserId,
    /// Their connections subscribed to the channel.
    pub connections: u32,
}

/// A page of a channel's members (one room's, or the whole cluster's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersPage {
    /// Members in byte order of the user id, with their subscribed connections.
    pub users: Vec<PresentUser>,
    /// Whether more members follow the last one.
    pub more: bool,
}

/// How far one room got with one broadcast: every connection that was live
/// when the broadcast reached the room is counted once, in exactly one of
/// the three.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastProgress {
    /// Connections the message was written to (handed to the socket).
    pub delivered: u64,
    /// Connections that did not get it: their queue was full (closed as a
    /// slow consumer, 4006), or they closed before it was written.
    pub skipped: u64,
    /// Connections that still have it queued.
    pub pending: u64,
}

impl BroadcastProgress {
    /// Connections the broadcast reached in the room (all three counts).
    pub fn total(&self) -> u64 {
        self.delivered + self.skipped + self.pending
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &BroadcastProgress) {
        self.delivered += other.delivered;
        self.skipped += other.skipped;
        self.pending += other.pending;
    }
}

/// The answer to a `presence` frame: the channel's members in user order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresencePage {
    /// The channel.
    pub channel: String,
    /// The first members, in byte order of the user id.
    pub users: Vec<PresentUser>,
    /// Whether more members follow (the REST API pages through them).
    pub more: bool,
}

/// A frame sent by the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFrame {
    /// Authentication succeeded.
    AuthOk {
        /// Echo of the auth frame's seq.
        seq: Option<u32>,
        /// This connection's id.
        conn: ConnId,
        /// The authenticated user.
        user: UserId,
        /// The room holding the connection.
        room: RoomId,
        /// Heartbeat interval the client should keep, in seconds.
        heartbeat: u32,
    },
    /// Reply to a ping.
    Pong {
        /// Echo of the ping's seq.
        seq: Option<u32>,
    },
    /// Subscribed.
    SubOk {
        /// Echo of the sub frame's seq.
        seq: Option<u32>,
        /// Channel name.
        channel: String,
    },
    /// Unsubscribed.
    UnsubOk {
        /// Echo of the unsub frame's seq.
        seq: Option<u32>,
        /// Channel name.
        channel: String,
    },
    /// The connection's token was replaced.
    RefreshOk {
        /// Echo of the refresh frame's seq.
        seq: Option<u32>,
        /// The new token's `exp` (seconds since the Unix epoch).
        exp: u64,
    },
    /// A `send` was stored (or had been, under the same cid).
    SendOk {
        /// Echo of the send frame's seq.
        seq: Option<u32>,
        /// The send's cid.
        cid: String,
        /// The message's id.
        id: MsgId,
    },
    /// A `pub` was accepted (or had been, under the same cid).
    PubOk {
        /// Echo of the pub frame's seq.
        seq: Option<u32>,
        /// The pub's cid.
        cid: String,
        /// The message's id.
        id: MsgId,
    },
    /// A pushed message.
    Msg(MsgFrame),
    /// Another member subscribed to a channel this connection watches
    /// with `presence`. Boxed, as every presence frame: rare, and a frame
    /// slot is kept per session.
    Join(Box<PresenceChange>),
    /// A member of a watched channel unsubscribed or disconnected.
    Leave(Box<PresenceChange>),
    /// The answer to a `presence` frame.
    PresenceOk {
        /// Echo of the presence frame's seq.
        seq: Option<u32>,
        /// The members.
        page: Box<PresencePage>,
    },
    /// An error; when `close` is set the server closes the connection after it.
    Error {
        /// Echo of the offending frame's seq, when known.
        seq: Option<u32>,
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable text.
        message: String,
        /// The close code that follows, for fatal errors.
        close: Option<CloseCode>,
    },
}

/// Machine-readable error codes (`snake_case` on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Bad, expired or missing token.
    AuthFailed,
    /// No auth frame within the auth timeout.
    AuthTimeout,
    /// A frame other than auth before auth.
    NotAuthenticated,
    /// No frame within the heartbeat timeout.
    HeartbeatTimeout,
    /// Malformed frame.
    BadFrame,
    /// Frame larger than the maximum.
    FrameTooLarge,
    /// The token does not allow this channel.
    ChannelForbidden,
    /// Too many channels on this connection.
    TooManyChannels,
    /// Invalid channel name.
    BadChannel,
    /// Inbound rate limit exceeded.
    RateLimited,
    /// The connection was kicked through the API.
    Kicked,
    /// The client did not read fast enough.
    SlowConsumer,
    /// The server is shutting down: reconnect elsewhere.
    Draining,
    /// The room is full.
    Overloaded,
    /// Unexpected server-side failure (e.g. storage unavailable).
    Internal,
    /// The user already holds the most connections a room allows per user.
    TooManyConnections,
    /// The frame is not allowed (e.g. a refresh with another user's or an
    /// expired token); not fatal.
    Forbidden,
    /// The token expired and was not refreshed within the grace period.
    TokenExpired,
    /// The application server's hook refused a `send` or `pub` (the
    /// message is the hook's); not fatal.
    HookDenied,
    /// The hook did not answer in time or answered badly; nothing was
    /// delivered; not fatal.
    HookUnavailable,
    /// A `send`'s or `pub`'s data is larger than allowed; not fatal.
    TooLarge,
    /// A `send` or `pub` could not be accepted now (store, ids or
    /// dispatcher unavailable); nothing was delivered; not fatal.
    Unavailable,
    /// A `send` to a user the server does not know (with
    /// `--send-known-users-only`); nothing was stored or delivered; not fatal.
    UnknownUser,
}

impl ErrorCode {
    /// All codes, for tests and docs.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::AuthFailed,
        ErrorCode::AuthTimeout,
        ErrorCode::NotAuthenticated,
        ErrorCode::HeartbeatTimeout,
        ErrorCode::BadFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::ChannelForbidden,
        ErrorCode::TooManyChannels,
        ErrorCode::BadChannel,
        ErrorCode::RateLimited,
        ErrorCode::Kicked,
        ErrorCode::SlowConsumer,
        ErrorCode::Draining,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
        // New codes go last: the binary number is the index plus one.
        ErrorCode::TooManyConnections,
        ErrorCode::Forbidden,
        ErrorCode::TokenExpired,
        ErrorCode::HookDenied,
        ErrorCode::HookUnavailable,
        ErrorCode::TooLarge,
        ErrorCode::Unavailable,
        ErrorCode::UnknownUser,
    ];

    /// The wire name, e.g. `"auth_failed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::AuthTimeout => "auth_timeout",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::HeartbeatTimeout => "heartbeat_timeout",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::ChannelForbidden => "channel_forbidden",
            ErrorCode::TooManyChannels => "too_many_channels",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Kicked => "kicked",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::Draining => "draining",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::HookDenied => "hook_denied",
            ErrorCode::HookUnavailable => "hook_unavailable",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UnknownUser => "unknown_user",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The binary encoding's number for this code (its index in [`ErrorCode::ALL`], plus 1).
    pub fn to_u8(self) -> u8 {
        ErrorCode::ALL
            .iter()
            .position(|c| *c == self)
            .map_or(0, |i| i as u8 + 1)
    }

    /// Inverse of [`ErrorCode::to_u8`].
    pub fn from_u8(n: u8) -> Option<ErrorCode> {
        ErrorCode::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }
}

/// WebSocket close codes of protocol v1 (also carried in the final error frame
/// on TCP and QUIC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// 4001: authentication failed.
    AuthFailed = 4001,
    /// 4002: no auth frame in time.
    AuthTimeout = 4002,
    /// 4003: no frame within the heartbeat timeout.
    HeartbeatTimeout = 4003,
    /// 4004: malformed or oversized frame, or other protocol violation.
    ProtocolError = 4004,
    /// 4005: kicked through the API.
    Kicked = 4005,
    /// 4006: the client did not read fast enough.
    SlowConsumer = 4006,
    /// 4007: the server is draining; reconnect elsewhere after the suggested delay.
    Draining = 4007,
    /// 4008: the token expired and was not refreshed in time.
    TokenExpired = 4008,
}

impl CloseCode {
    /// The numeric code.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Parses a numeric code.
    pub fn from_u16(n: u16) -> Option<CloseCode> {
        Some(match n {
            4001 => CloseCode::AuthFailed,
            4002 => CloseCode::AuthTimeout,
            4003 => CloseCode::HeartbeatTimeout,
            4004 => CloseCode::ProtocolError,
            4005 => CloseCode::Kicked,
            4006 => CloseCode::SlowConsumer,
            4007 => CloseCode::Draining,
            4008 => CloseCode::TokenExpired,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_convert_both_ways() {
        for (i, c) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(c.to_u8() as usize, i + 1);
            assert_eq!(ErrorCode::from_u8(c.to_u8()), Some(c));
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(ErrorCode::from_u8(0), None);
        assert_eq!(ErrorCode::from_u8(23), Some(ErrorCode::UnknownUser));
        assert_eq!(ErrorCode::from_u8(24), None);
        for n in 4001..=4008 {
            assert_eq!(CloseCode::from_u16(n).map(CloseCode::as_u16), Some(n));
        }
        assert_eq!(CloseCode::from_u16(4000), None);
        assert_eq!(CloseCode::from_u16(4009), None);
    }
}
