//! What the client reports to the application: messages, connection changes
//! and non-fatal server errors, through a bounded channel ([`Events`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use proto::ErrorCode;
use tokio::sync::mpsc;

/// Something that happened on the client's connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// The client connected and authenticated (the server's `auth_ok`).
    /// Stored messages replayed after `last_id` follow.
    Connected(Connected),
    /// A pushed message, never one whose id was already delivered recently.
    Message(Message),
    /// The server confirmed a subscription (`sub_ok`); also sent again for
    /// every channel re-subscribed after a reconnect.
    Subscribed {
        /// The channel.
        channel: String,
    },
    /// The server confirmed an unsubscription (`unsub_ok`).
    Unsubscribed {
        /// The channel.
        channel: String,
    },
    /// The server refused a subscription (`channel_forbidden`,
    /// `too_many_channels`, `bad_channel`); the client forgets the channel
    /// and does not subscribe to it again after a reconnect.
    SubscribeFailed {
        /// The channel.
        channel: String,
        /// The error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// A non-fatal `error` frame that answers no subscription.
    ServerError {
        /// The error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server accepted a new token for the live connection
    /// (`refresh_ok`): the client asks its token provider for one when 90 %
    /// of the current token's lifetime has passed and sends it with
    /// `refresh`, so the connection is not closed with 4008.
    TokenRefreshed {
        /// The new token's expiry, seconds since the Unix epoch.
        exp: u64,
    },
    /// Another member subscribed to a channel this client subscribed to
    /// with [`Client::subscribe_with_presence`](crate::Client::subscribe_with_presence).
    Join(proto::PresenceChange),
    /// A member of such a channel unsubscribed or disconnected.
    Leave(proto::PresenceChange),
    /// A connection ended (after it was established, whether or not the
    /// `auth` succeeded). The client reconnects by itself after `retry_in`.
    Disconnected(Disconnected),
    /// A connection attempt failed before a connection was established
    /// (name resolution, TCP or QUIC connect, TLS or WebSocket handshake, or
    /// the token provider). The client tries again after `retry_in`.
    ConnectFailed {
        /// The server URL tried.
        url: String,
        /// What failed.
        error: String,
        /// When the client tries again (with the next URL of its list).
        retry_in: Duration,
    },
}

/// The server's `auth_ok`, and where the client is connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    /// The server URL the client connected to.
    pub url: String,
    /// The connection id.
    pub conn: u64,
    /// The authenticated user (the token's `sub`).
    pub user: String,
    /// The id of the room (server) holding the connection.
    pub room: u32,
    /// The heartbeat interval in seconds; the client pings at this interval.
    pub heartbeat: u32,
    /// The `last_id` the client resumed from, if any: stored messages with
    /// a greater id are replayed first.
    pub resumed_from: Option<i64>,
}

/// A pushed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The message id: unique, and increasing per user in delivery order.
    pub id: i64,
    /// Milliseconds since the Unix epoch when the push was accepted.
    pub ts: i64,
    /// The channel, for a channel message; None for a user message or a broadcast.
    pub channel: Option<String>,
    /// The pushed JSON value, as UTF-8 JSON text.
    pub data: Bytes,
    /// The sending user, for a message a client sent (`send`, `pub`).
    pub from: Option<String>,
    /// The sender's message id, with `from`.
    pub cid: Option<String>,
}

impl Message {
    /// Deserializes the pushed JSON value.
    ///
    /// # Errors
    /// When `data` does not deserialize into `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.data)
    }

    /// The pushed JSON value as text (empty if the server sent invalid UTF-8,
    /// which it never does).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.data).unwrap_or_default()
    }
}

/// Why a connection ended, and when the client reconnects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnected {
    /// The server URL of the connection.
    pub url: String,
    /// The close code when the server gave one: 4001 auth failed, 4002 auth
    /// timeout, 4003 heartbeat timeout, 4004 protocol error, 4005 kicked,
    /// 4006 slow consumer, 4007 draining (or a WebSocket code such as 1000).
    /// None when the connection was lost (EOF, I/O error, no frame for two
    /// heartbeats).
    pub code: Option<u16>,
    /// The close reason, the fatal error's message, or what failed.
    pub reason: String,
    /// When the client reconnects: the delay a 4007 asks for
    /// (`reconnect_after_ms`), else the jittered backoff.
    pub retry_in: Duration,
}

/// The stream of [`Event`]s of one client, in order. Bounded: a client whose
/// application does not read stops reading from the server (pings and acks
/// go on), so the server's slow-consumer limit applies, and after a
/// reconnect nothing is lost (it resumes with `last_id`).
///
/// Ends (`None`) when the client has stopped.
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; None once the client has stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
