//! Identifiers that cross crate boundaries.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A user id: the JWT `sub` claim. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Wraps a user id.
    pub fn new(s: &str) -> Self {
        UserId(Arc::from(s))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for UserId {
    fn from(s: &str) -> Self {
        UserId::new(s)
    }
}

impl From<String> for UserId {
    fn from(s: String) -> Self {
        UserId(Arc::from(s))
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A room (connection server) id, unique in a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomId(pub u32);

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A message id: unique across the cluster and across crashes, increasing per user.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MsgId(pub i64);

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A connection id, unique in a cluster: the room id in the high 24 bits and
/// a per-room counter in the low 40 bits. Shown to clients as a decimal string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl ConnId {
    /// Builds the id of the `n`th connection of `room`.
    pub fn new(room: RoomId, n: u64) -> Self {
        ConnId((u64::from(room.0) << 40) | (n & ((1 << 40) - 1)))
    }

    /// The room that holds this connection.
    pub fn room(self) -> RoomId {
        RoomId((self.0 >> 40) as u32)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for ConnId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(ConnId)
    }
}

/// Milliseconds since the Unix epoch of `t` (the `ts` and `since` fields of
/// the protocol): 0 before the epoch, saturating far after it. The caller
/// reads the clock; this crate never does.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_ms_of_known_instants() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(unix_ms(t), 1_700_000_000_123);
        assert_eq!(unix_ms(UNIX_EPOCH - std::time::Duration::from_secs(1)), 0);
    }

    #[test]
    fn conn_id_keeps_room() {
        let c = ConnId::new(RoomId(7), 12345);
        assert_eq!(c.room(), RoomId(7));
        assert_eq!(c.to_string().parse::<ConnId>().ok(), Some(c));
    }
}
