//! The directory of a standalone process. Its one room already indexes
//! every connection by user (the hub), so the directory answers from that
//! index instead of keeping a second copy of every connection (which cost
//! 187 B per idle connection, bench/results/2026-12-05-cost.md). What only
//! a directory keeps, the online time of connections that ended, is kept
//! per user once the user's first connection ends, and dropped a day after
//! the user was last seen ([`OnlineTimes::prune`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use proto::{ConnId, RoomId, UserId};
use register::{ConnInfo, DirError, DirStats, Directory, RoomInfo};
use room::{Room, SessionInfo};

/// Milliseconds between `since` and `now`, zero when the clock went back.
fn span(since: i64, now: i64) -> u64 {
    u64::try_from(now.saturating_sub(since)).unwrap_or(0)
}

/// Online time of connections that ended, per user.
#[derive(Debug, Default)]
pub(crate) struct OnlineTimes {
    users: DashMap<UserId, Ended>,
}

/// What is kept of a user's ended connections.
#[derive(Debug, Default, Clone, Copy)]
struct Ended {
    /// Their online time, milliseconds.
    closed_ms: u64,
    /// When the last one ended (ms since the epoch).
    last_seen: i64,
}

impl OnlineTimes {
    /// Nothing recorded yet.
    pub(crate) fn new() -> Arc<OnlineTimes> {
        Arc::new(OnlineTimes::default())
    }

    /// A connection of `user` that authenticated at `since` ended at `now`.
    pub(crate) fn ended(&self, user: &UserId, since: i64, now: i64) {
        let mut e = self.users.entry(user.clone()).or_default();
        e.closed_ms = e.closed_ms.saturating_add(span(since, now));
        e.last_seen = e.last_seen.max(now);
    }

    fn closed_ms(&self, user: &UserId) -> u64 {
        self.users.get(user).map_or(0, |e| e.closed_ms)
    }

    /// Forgets users last seen before `before_ms` who are not online now;
    /// returns how many.
    pub(crate) fn prune(&self, before_ms: i64, online: impl Fn(&UserId) -> bool) -> usize {
        let n = self.users.len();
        self.users
            .retain(|u, e| e.last_seen >= before_ms || online(u));
        n.saturating_sub(self.users.len())
    }

    /// Users with a record.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.users.len()
    }
}

/// [`Directory`] over the room of a standalone process.
pub(crate) struct RoomDirectory {
    id: RoomId,
    room: Room,
    times: Arc<OnlineTimes>,
    up: AtomicBool,
}

impl RoomDirectory {
    /// The directory of `room` (id `id`), with the online times its backend records.
    pub(crate) fn new(id: RoomId, room: Room, times: Arc<OnlineTimes>) -> RoomDirectory {
        RoomDirectory {
            id,
            room,
            times,
            up: AtomicBool::new(false),
        }
    }

    fn info(&self, s: SessionInfo) -> ConnInfo {
        ConnInfo {
            user: s.user,
            conn: s.conn,
            room: self.id,
            device: Some(s.device.to_string()),
            since: s.since,
        }
    }

    /// Forgets users offline since before `before_ms` (see [`OnlineTimes::prune`]).
    pub(crate) fn prune_offline(&self, before_ms: i64) -> usize {
        self.times.prune(before_ms, |u| self.room.is_online(u))
    }
}

#[async_trait]
impl Directory for RoomDirectory {
    /// The room's index already has it.
    async fn connected(&self, _conn: ConnInfo) -> Result<(), DirError> {
        Ok(())
    }

    /// The backend records ended connections in [`OnlineTimes`] with their
    /// start (which this call does not carry); nothing to do here.
    async fn disconnected(
        &self,
        _user: &UserId,
        _conn: ConnId,
        _now_ms: i64,
    ) -> Result<(), DirError> {
        Ok(())
    }

    async fn lookup(&self, users: &[UserId]) -> Result<Vec<Vec<ConnInfo>>, DirError> {
        Ok(users
            .iter()
            .map(|u| {
                let mut conns = Vec::new();
                self.room.each_session(u, |s| conns.push(self.info(s)));
                conns
            })
            .collect())
    }

    async fn online_ms(&self, user: &UserId, now_ms: i64) -> Result<u64, DirError> {
        let mut live = 0u64;
        self.room
            .each_session(user, |s| live = live.saturating_add(span(s.since, now_ms)));
        Ok(self.times.closed_ms(user).saturating_add(live))
    }

    async fn room_up(&self, _room: RoomId) -> Result<(), DirError> {
        self.up.store(true, Ordering::Release);
        Ok(())
    }

    async fn room_down(&self, _room: RoomId) -> Result<(), DirError> {
        self.up.store(false, Ordering::Release);
        Ok(())
    }

    async fn rooms(&self) -> Result<Vec<RoomInfo>, DirError> {
        if !self.up.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        Ok(vec![RoomInfo {
            room: self.id,
            connections: self.room.connections(),
        }])
    }

    async fn stats(&self) -> Result<DirStats, DirError> {
        Ok(DirStats {
            connections: self.room.connections(),
            users: self.room.users(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_time_adds_up_and_old_offline_users_are_forgotten() {
        let t = OnlineTimes::new();
        let (a, b) = (UserId::new("a"), UserId::new("b"));
        t.ended(&a, 1_000, 4_000);
        t.ended(&a, 5_000, 6_000);
        t.ended(&b, 1_000, 2_000);
        t.ended(&b, 3_000, 1_000); // the clock went back: nothing added
        assert_eq!(t.closed_ms(&a), 4_000);
        assert_eq!(t.closed_ms(&b), 1_000);
        assert_eq!(t.closed_ms(&UserId::new("c")), 0);
        // b was last seen at 2,000 and is offline: forgotten; a was seen
        // at 6,000.
        assert_eq!(t.prune(5_000, |_| false), 1);
        assert_eq!((t.len(), t.closed_ms(&b)), (1, 0));
        // Online users are kept however long ago their last connection ended.
        assert_eq!(t.prune(10_000, |u| u == &a), 0);
        assert_eq!(t.prune(10_000, |_| false), 1);
    }
}
