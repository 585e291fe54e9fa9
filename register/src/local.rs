//! The in-process directory: a sharded map user → live connections, a room
//! table with connection counts, and accumulated online time per user.
//!
//! Memory: a connection is stored compactly ([`Stored`]: no copy of the
//! user id, which is the map key, and the usual device id `"default"` shared
//! rather than allocated per connection); [`ConnInfo`] is rebuilt on lookup.
//!
//! Every method is synchronous inside (no `.await` while a map shard is
//! locked); the async trait methods just wrap them. Counters (`connections`,
//! `users`) are updated while the user's shard is locked, so they stay
//! consistent with the map.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use proto::{ConnId, RoomId, UserId};
use smallvec::SmallVec;

use crate::{ConnInfo, DirError, DirStats, Directory, RoomInfo};

/// The device id most connections have (the room's default).
const DEFAULT_DEVICE: &str = "default";

/// One live connection as kept: [`ConnInfo`] without the user (the key).
#[derive(Debug)]
struct Stored {
    conn: ConnId,
    since: i64,
    /// Shared with every connection of the same common device id.
    device: Option<Arc<str>>,
    room: RoomId,
}

impl Stored {
    fn info(&self, user: &UserId) -> ConnInfo {
        ConnInfo {
            user: user.clone(),
            conn: self.conn,
            room: self.room,
            device: self.device.as_deref().map(str::to_owned),
            since: self.since,
        }
    }
}

/// What the directory keeps per user.
#[derive(Debug, Default)]
struct UserEntry {
    /// Live connections (most users have one).
    conns: SmallVec<[Stored; 1]>,
    /// Online time of connections that already ended, in milliseconds.
    closed_ms: u64,
    /// When the last connection ended (ms since the epoch); entries of users
    /// offline for long are dropped by [`LocalDirectory::prune_offline`].
    last_seen: i64,
}

/// The in-process [`crate::Directory`].
#[derive(Debug)]
pub struct LocalDirectory {
    users: DashMap<UserId, UserEntry>,
    /// [`DEFAULT_DEVICE`], shared by every connection that has it.
    default_device: Arc<str>,
    /// Live rooms and, for each, its connections and their users: an
    /// index so that dropping or refilling a room visits that room's
    /// connections, not every user of the directory.
    rooms: DashMap<RoomId, HashMap<ConnId, UserId>>,
    connections: AtomicU64,
    online_users: AtomicU64,
}

fn now_ms() -> i64 {
    proto::unix_ms(std::time::SystemTime::now())
}

/// Milliseconds between `since` and `now`, zero when the clock went back.
fn span(since: i64, now: i64) -> u64 {
    u64::try_from(now.saturating_sub(since)).unwrap_or(0)
}

impl Default for LocalDirectory {
    fn default() -> LocalDirectory {
        LocalDirectory::new()
    }
}

impl LocalDirectory {
    /// An empty directory.
    pub fn new() -> LocalDirectory {
        LocalDirectory {
            users: DashMap::new(),
            default_device: Arc::from(DEFAULT_DEVICE),
            rooms: DashMap::new(),
            connections: AtomicU64::new(0),
            online_users: AtomicU64::new(0),
        }
    }

    fn device(&self, device: Option<String>) -> Option<Arc<str>> {
        device.map(|d| {
            if d == DEFAULT_DEVICE {
                Arc::clone(&self.default_device)
            } else {
                Arc::from(d)
            }
        })
    }

    /// Records a connection (replaces a connection with the same id).
    pub fn add(&self, conn: ConnInfo) {
        let room = conn.room;
        let ConnInfo {
            user,
            conn: id,
            room: _,
            device,
            since,
        } = conn;
        let conn = Stored {
            conn: id,
            since,
            device: self.device(device),
            room,
        };
        let key = user.clone();
        // The user's entry is released before the room index is touched:
        // the two maps are never locked in the opposite order elsewhere.
        let mut entry = self.users.entry(user).or_default();
        if let Some(old) = entry.conns.iter_mut().find(|c| c.conn == conn.conn) {
            let old_room = old.room;
            *old = conn;
            drop(entry);
            if old_room != room {
                self.index_remove(old_room, id);
                self.index_add(room, id, key);
            }
            return;
        }
        if entry.conns.is_empty() {
            self.online_users.fetch_add(1, Ordering::Relaxed);
        }
        entry.conns.push(conn);
        drop(entry);
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.index_add(room, id, key);
    }

    /// Removes a connection, adding its online time up to `now_ms`; returns
    /// whether it was known.
    pub fn remove(&self, user: &UserId, conn: ConnId, now_ms: i64) -> bool {
        match self.end_where(user, now_ms, |c| c.conn == conn) {
            Some(room) => {
                self.index_remove(room, conn);
                true
            }
            None => false,
        }
    }

    /// Ends the first connection of `user` that `pick` selects, counting its
    /// online time to `now_ms`; returns its room. Does not touch the room
    /// index (the user's entry is released before the caller does).
    fn end_where(
        &self,
        user: &UserId,
        now_ms: i64,
        pick: impl Fn(&Stored) -> bool,
    ) -> Option<RoomId> {
        let mut entry = self.users.get_mut(user)?;
        let pos = entry.conns.iter().position(pick)?;
        let gone = entry.conns.swap_remove(pos);
        entry.closed_ms = entry.closed_ms.saturating_add(span(gone.since, now_ms));
        entry.last_seen = now_ms;
        self.connections.fetch_sub(1, Ordering::Relaxed);
        if entry.conns.is_empty() {
            self.online_users.fetch_sub(1, Ordering::Relaxed);
        }
        Some(gone.room)
    }

    /// Forgets users with no live connection whose last one ended before
    /// `before_ms` (their online time included), so the map does not grow
    /// with every user ever seen. Visits every entry: call it rarely (the
    /// binary does once a minute). Returns how many were dropped.
    pub fn prune_offline(&self, before_ms: i64) -> usize {
        let before = self.users.len();
        self.users
            .retain(|_, e| !e.conns.is_empty() || e.last_seen >= before_ms);
        before.saturating_sub(self.users.len())
    }

    /// The live connections of `user`.
    pub fn get(&self, user: &UserId) -> Vec<ConnInfo> {
        self.users
            .get(user)
            .map(|e| e.conns.iter().map(|c| c.info(e.key())).collect())
            .unwrap_or_default()
    }

    /// Online time of `user` up to `now_ms`, live connections included.
    pub fn online(&self, user: &UserId, now_ms: i64) -> u64 {
        self.users.get(user).map_or(0, |e| {
            e.conns.iter().fold(e.closed_ms, |acc, c| {
                acc.saturating_add(span(c.since, now_ms))
            })
        })
    }

    /// Removes `room` and every connection it held, closing them at `now_ms`.
    /// Visits the room's connections only (through the room index).
    pub fn drop_room(&self, room: RoomId, now_ms: i64) {
        let Some((_, index)) = self.rooms.remove(&room) else {
            return;
        };
        for (conn, user) in index {
            self.end_conn(&user, conn, room, None, now_ms);
        }
    }

    /// Ends connection `conn` of `user` if it is on `room` (and, with
    /// `before`, authenticated before that time). Returns whether it ended.
    fn end_conn(
        &self,
        user: &UserId,
        conn: ConnId,
        room: RoomId,
        before: Option<i64>,
        now_ms: i64,
    ) -> bool {
        self.end_where(user, now_ms, |c| {
            c.conn == conn && c.room == room && before.is_none_or(|b| c.since < b)
        })
        .is_some()
    }

    /// How many live connections `room` holds here (0 when unknown).
    pub fn room_connections(&self, room: RoomId) -> u64 {
        self.rooms.get(&room).map_or(0, |m| m.len() as u64)
    }

    /// Removes `room` and its connections (see [`LocalDirectory::drop_room`]).
    pub fn clear_room(&self, room: RoomId, now_ms: i64) {
        self.drop_room(room, now_ms);
    }

    /// Replaces every connection of `room` with `conns` (all of `room`):
    /// connections of the room missing from `conns` end at `now_ms`, the
    /// others are kept (their online time is not cut) or added.
    pub fn replace_room(&self, room: RoomId, conns: Vec<ConnInfo>, keep_since: i64, now_ms: i64) {
        let keep: std::collections::HashSet<ConnId> = conns.iter().map(|c| c.conn).collect();
        self.prune_room(room, &keep, keep_since, now_ms);
        for c in conns {
            self.add(c);
        }
    }

    /// Ends every connection of `room` that is not in `keep` and
    /// authenticated before `keep_since` (online time counted to `now_ms`).
    pub fn prune_room(
        &self,
        room: RoomId,
        keep: &std::collections::HashSet<ConnId>,
        keep_since: i64,
        now_ms: i64,
    ) {
        // The candidates are copied out so no room-index lock is held
        // while user entries are locked.
        let candidates: Vec<(ConnId, UserId)> = match self.rooms.get(&room) {
            Some(index) => index
                .iter()
                .filter(|(c, _)| !keep.contains(c))
                .map(|(c, u)| (*c, u.clone()))
                .collect(),
            None => return,
        };
        for (conn, user) in candidates {
            if self.end_conn(&user, conn, room, Some(keep_since), now_ms) {
                self.index_remove(room, conn);
            }
        }
    }

    fn index_add(&self, room: RoomId, conn: ConnId, user: UserId) {
        self.rooms.entry(room).or_default().insert(conn, user);
    }

    fn index_remove(&self, room: RoomId, conn: ConnId) {
        if let Some(mut index) = self.rooms.get_mut(&room) {
            index.remove(&conn);
        }
    }

    /// The live rooms, sorted by id.
    pub fn room_list(&self) -> Vec<RoomInfo> {
        let mut v: Vec<RoomInfo> = self
            .rooms
            .iter()
            .map(|r| RoomInfo {
                room: *r.key(),
                connections: r.value().len() as u64,
            })
            .collect();
        v.sort_by_key(|r| r.room);
        v
    }

    /// Totals.
    pub fn totals(&self) -> DirStats {
        DirStats {
            connections: self.connections.load(Ordering::Relaxed),
            users: self.online_users.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl Directory for LocalDirectory {
    async fn connected(&self, conn: ConnInfo) -> Result<(), DirError> {
        self.add(conn);
        Ok(())
    }

    async fn disconnected(&self, user: &UserId, conn: ConnId, now_ms: i64) -> Result<(), DirError> {
        self.remove(user, conn, now_ms);
        Ok(())
    }

    async fn lookup(&self, users: &[UserId]) -> Result<Vec<Vec<ConnInfo>>, DirError> {
        Ok(users.iter().map(|u| self.get(u)).collect())
    }

    async fn online_ms(&self, user: &UserId, now_ms: i64) -> Result<u64, DirError> {
        Ok(self.online(user, now_ms))
    }

    async fn room_up(&self, room: RoomId) -> Result<(), DirError> {
        self.rooms.entry(room).or_default();
        Ok(())
    }

    async fn room_down(&self, room: RoomId) -> Result<(), DirError> {
        self.drop_room(room, now_ms());
        Ok(())
    }

    async fn rooms(&self) -> Result<Vec<RoomInfo>, DirError> {
        Ok(self.room_list())
    }

    async fn stats(&self) -> Result<DirStats, DirError> {
        Ok(self.totals())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    #[test]
    fn prune_offline_forgets_only_long_offline_users() {
        let d = LocalDirectory::new();
        let (a, b, c) = (UserId::new("a"), UserId::new("b"), UserId::new("c"));
        for (u, n) in [(&a, 1), (&b, 2), (&c, 3)] {
            d.add(ConnInfo {
                user: u.clone(),
                conn: ConnId(n),
                room: RoomId(0),
                device: None,
                since: 0,
            });
        }
        d.remove(&a, ConnId(1), 1_000);
        d.remove(&b, ConnId(2), 5_000);
        assert_eq!(d.prune_offline(2_000), 1, "only a ended before 2000");
        assert_eq!(d.get(&c).len(), 1);
        assert_eq!(d.prune_offline(10_000), 1, "then b; c is still online");
        assert_eq!(d.get(&c).len(), 1);
    }
    use super::*;

    fn ci(user: &str, room: u32, n: u64, since: i64) -> ConnInfo {
        ConnInfo {
            user: UserId::new(user),
            conn: ConnId::new(RoomId(room), n),
            room: RoomId(room),
            device: Some(format!("d{n}")),
            since,
        }
    }

    /// The room index: dropping or pruning a room touches only its own
    /// connections, counts stay right, a connection that moved rooms is
    /// indexed under its new room only.
    #[test]
    fn room_index_follows_connections() {
        let d = LocalDirectory::new();
        for i in 0..100u64 {
            d.add(ci(&format!("u{i}"), 1 + (i % 2) as u32, i, 10));
        }
        // u0 also on room 3.
        d.add(ci("u0", 3, 1000, 10));
        assert_eq!(d.room_connections(RoomId(1)), 50);
        assert_eq!(d.room_connections(RoomId(2)), 50);
        assert_eq!(d.totals().connections, 101);
        // Prune room 2 to ten kept connections; one young one survives too.
        d.add(ci("young", 2, 500, 1_000));
        let keep: std::collections::HashSet<ConnId> = (1..20u64)
            .step_by(2)
            .map(|i| ConnId::new(RoomId(2), i))
            .collect();
        d.prune_room(RoomId(2), &keep, 100, 2_000);
        assert_eq!(d.room_connections(RoomId(2)), 11);
        assert_eq!(d.get(&UserId::new("young")).len(), 1);
        assert!(d.get(&UserId::new("u21")).is_empty());
        assert_eq!(d.get(&UserId::new("u19")).len(), 1);
        assert_eq!(d.online(&UserId::new("u21"), 2_000), 1_990);
        // Drop room 1: room 3's connection of u0 stays.
        d.drop_room(RoomId(1), 3_000);
        assert_eq!(d.room_connections(RoomId(1)), 0);
        assert_eq!(d.get(&UserId::new("u0")).len(), 1);
        assert_eq!(d.totals().connections, 12);
        assert_eq!(d.totals().users, 12);
        // A connection re-reported on another room moves in the index.
        d.add(ci("u1", 2, 1, 10));
        let moved = ConnInfo {
            room: RoomId(3),
            ..ci("u1", 2, 1, 10)
        };
        d.add(moved);
        assert_eq!(d.room_connections(RoomId(2)), 10);
        assert_eq!(d.room_connections(RoomId(3)), 2);
        d.drop_room(RoomId(3), 4_000);
        assert!(d.get(&UserId::new("u1")).is_empty());
        assert!(d.get(&UserId::new("u0")).is_empty());
        assert_eq!(d.totals().connections, 10);
    }

    #[tokio::test]
    async fn connect_lookup_disconnect() {
        let d = LocalDirectory::new();
        d.room_up(RoomId(1)).await.unwrap();
        d.connected(ci("a", 1, 1, 0)).await.unwrap();
        d.connected(ci("a", 1, 2, 0)).await.unwrap();
        d.connected(ci("b", 1, 3, 0)).await.unwrap();
        let got = d
            .lookup(&[UserId::new("a"), UserId::new("nobody"), UserId::new("b")])
            .await
            .unwrap();
        assert_eq!(got[0].len(), 2);
        assert!(got[1].is_empty());
        assert_eq!(got[2], vec![ci("b", 1, 3, 0)]);
        assert_eq!(
            d.stats().await.unwrap(),
            DirStats {
                connections: 3,
                users: 2
            }
        );
        d.disconnected(&UserId::new("a"), ConnId::new(RoomId(1), 1), 10)
            .await
            .unwrap();
        assert_eq!(
            d.stats().await.unwrap(),
            DirStats {
                connections: 2,
                users: 2
            }
        );
        d.disconnected(&UserId::new("a"), ConnId::new(RoomId(1), 2), 10)
            .await
            .unwrap();
        assert_eq!(
            d.stats().await.unwrap(),
            DirStats {
                connections: 1,
                users: 1
            }
        );
        assert!(d.lookup(&[UserId::new("a")]).await.unwrap()[0].is_empty());
        assert_eq!(
            d.rooms().await.unwrap(),
            vec![RoomInfo {
                room: RoomId(1),
                connections: 1
            }]
        );
    }

    #[tokio::test]
    async fn duplicate_connect_is_idempotent_and_unknown_disconnect_ignored() {
        let d = LocalDirectory::new();
        d.connected(ci("a", 1, 1, 0)).await.unwrap();
        d.connected(ci("a", 1, 1, 5)).await.unwrap();
        assert_eq!(d.totals().connections, 1);
        assert_eq!(d.get(&UserId::new("a"))[0].since, 5);
        assert!(!d.remove(&UserId::new("a"), ConnId::new(RoomId(1), 9), 10));
        assert!(!d.remove(&UserId::new("zz"), ConnId::new(RoomId(1), 1), 10));
        assert_eq!(d.totals().connections, 1);
        // A room that reports a connection becomes live.
        assert_eq!(d.room_list()[0].connections, 1);
    }

    #[tokio::test]
    async fn online_time_accumulates() {
        let d = LocalDirectory::new();
        let a = UserId::new("a");
        assert_eq!(d.online_ms(&a, 100).await.unwrap(), 0);
        d.connected(ci("a", 1, 1, 1_000)).await.unwrap();
        assert_eq!(d.online_ms(&a, 1_500).await.unwrap(), 500);
        d.disconnected(&a, ConnId::new(RoomId(1), 1), 2_000)
            .await
            .unwrap();
        assert_eq!(d.online_ms(&a, 9_000).await.unwrap(), 1_000);
        d.connected(ci("a", 2, 7, 10_000)).await.unwrap();
        assert_eq!(d.online_ms(&a, 10_250).await.unwrap(), 1_250);
        // Clock going back never subtracts.
        assert_eq!(d.online_ms(&a, 0).await.unwrap(), 1_000);
    }

    #[tokio::test]
    async fn room_down_removes_its_connections() {
        let d = LocalDirectory::new();
        d.room_up(RoomId(1)).await.unwrap();
        d.room_up(RoomId(2)).await.unwrap();
        d.connected(ci("a", 1, 1, 0)).await.unwrap();
        d.connected(ci("a", 2, 2, 0)).await.unwrap();
        d.connected(ci("b", 2, 3, 0)).await.unwrap();
        d.drop_room(RoomId(2), 100);
        assert_eq!(
            d.totals(),
            DirStats {
                connections: 1,
                users: 1
            }
        );
        assert_eq!(d.get(&UserId::new("a")).len(), 1);
        assert!(d.get(&UserId::new("b")).is_empty());
        assert_eq!(d.online(&UserId::new("b"), 100), 100);
        assert_eq!(
            d.room_list(),
            vec![RoomInfo {
                room: RoomId(1),
                connections: 1
            }]
        );
    }

    #[test]
    fn replace_room_keeps_listed_connections_and_ends_the_rest() {
        let d = LocalDirectory::new();
        d.add(ci("a", 1, 1, 0));
        d.add(ci("a", 2, 2, 0));
        d.add(ci("b", 1, 3, 0));
        d.replace_room(
            RoomId(1),
            vec![ci("a", 1, 1, 0), ci("c", 1, 4, 50)],
            i64::MAX,
            100,
        );
        assert_eq!(d.get(&UserId::new("a")).len(), 2);
        assert!(d.get(&UserId::new("b")).is_empty());
        assert_eq!(d.get(&UserId::new("c")).len(), 1);
        assert_eq!(
            d.totals(),
            DirStats {
                connections: 3,
                users: 2
            }
        );
        assert_eq!(d.room_connections(RoomId(1)), 2);
        assert_eq!(d.room_connections(RoomId(2)), 1);
        // a's kept connection is not closed: online counts once.
        assert_eq!(d.online(&UserId::new("a"), 100), 200);
        assert_eq!(d.online(&UserId::new("b"), 1_000), 100);
        d.clear_room(RoomId(1), 200);
        d.clear_room(RoomId(9), 200);
        assert_eq!(d.totals().connections, 1);
        assert_eq!(d.room_connections(RoomId(1)), 0);
        assert_eq!(d.room_list().len(), 1);
    }

    #[tokio::test]
    async fn concurrent_connects_keep_counts() {
        let d = std::sync::Arc::new(LocalDirectory::new());
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..100u64 {
                    let n = t * 1000 + i;
                    d.connected(ci(&format!("u{}", n % 50), 1, n, 0))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            d.totals(),
            DirStats {
                connections: 800,
                users: 50
            }
        );
        assert_eq!(d.room_list()[0].connections, 800);
    }
}
