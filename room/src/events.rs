//! Session events for the application server (`--events-url` in the node):
//! a connection authenticated or ended, subscribed or unsubscribed, acked a
//! message. The room reports them through [`crate::Backend::event`], which
//! must return at once; it builds none when the backend does not want them
//! ([`crate::Backend::wants_events`]), so they cost nothing by default.

use std::sync::Arc;

use proto::{ConnId, MsgId, RoomId, UserId};
use serde::Serialize;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The connection authenticated (`auth_ok` was sent).
    Connect,
    /// An authenticated connection ended.
    Disconnect,
    /// The connection subscribed to `channel` (`sub_ok` was sent).
    Sub,
    /// The connection unsubscribed from `channel`.
    Unsub,
    /// The client acked every user message up to `id`: a delivery receipt.
    Ack,
}

/// One session event, as it is posted (fields that do not apply are left out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionEvent {
    /// What happened.
    pub event: EventKind,
    /// The connection's user.
    pub user: UserId,
    /// The connection's device id.
    pub device: Arc<str>,
    /// The connection id (a decimal string on the wire, like in `auth_ok`).
    #[serde(serialize_with = "decimal")]
    pub conn: ConnId,
    /// The room holding the connection (a decimal string on the wire).
    #[serde(serialize_with = "decimal")]
    pub room: RoomId,
    /// The channel of `sub` and `unsub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The acked id of `ack`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<MsgId>,
    /// When it happened, milliseconds since the Unix epoch.
    pub ts: i64,
}

fn decimal<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_documented() {
        let e = SessionEvent {
            event: EventKind::Ack,
            user: UserId::new("alice"),
            device: Arc::from("phone"),
            conn: ConnId(1_099_511_627_781),
            room: RoomId(1),
            channel: None,
            id: Some(MsgId(1234)),
            ts: 1_700_000_000_000,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap_or_default(),
            r#"{"event":"ack","user":"alice","device":"phone","conn":"1099511627781","room":"1","id":1234,"ts":1700000000000}"#
        );
        let sub = SessionEvent {
            event: EventKind::Sub,
            channel: Some("news".into()),
            id: None,
            ..e
        };
        assert_eq!(
            serde_json::to_string(&sub).unwrap_or_default(),
            r#"{"event":"sub","user":"alice","device":"phone","conn":"1099511627781","room":"1","channel":"news","ts":1700000000000}"#
        );
    }
}
