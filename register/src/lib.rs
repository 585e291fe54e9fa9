//! The directory: which user is connected where (room, connection, device,
//! since when), online durations, and the list of live rooms.
//!
//! Rooms are the source of truth for who is connected; the directory is a
//! cache of what they report. Users are partitioned across register
//! processes by a hash of the user id (cluster mode: [`remote`], served
//! over links by [`RegisterService`], used through [`ClusterDirectory`]); in
//! standalone mode [`LocalDirectory`] serves everything in process.

use async_trait::async_trait;
use proto::{ConnId, RoomId, UserId};
use serde::{Deserialize, Serialize};

mod client;
mod lease;
mod local;
pub mod remote;
pub mod ring;
mod service;
mod wire;
pub use local::LocalDirectory;
pub use remote::{
    ClusterDirectory, LeaseOutcome, RegisterReq, RegisterResp, RegisterService, RoomLease,
};

/// One live connection as the directory knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnInfo {
    /// The user.
    pub user: UserId,
    /// The connection.
    pub conn: ConnId,
    /// The room holding it.
    pub room: RoomId,
    /// Device id, if the client gave one.
    pub device: Option<String>,
    /// Milliseconds since the epoch when it authenticated.
    pub since: i64,
}

/// A live room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// Room id.
    pub room: RoomId,
    /// Connections it holds.
    pub connections: u64,
}

/// Totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirStats {
    /// Live connections.
    pub connections: u64,
    /// Distinct users with at least one live connection.
    pub users: u64,
}

/// Errors from the directory.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// The directory could not be reached.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
}

/// The directory service.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Records a connection that authenticated.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn connected(&self, conn: ConnInfo) -> Result<(), DirError>;

    /// Records that a connection ended at `now_ms` (adds to the user's online time).
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn disconnected(&self, user: &UserId, conn: ConnId, now_ms: i64) -> Result<(), DirError>;

    /// The live connections of each user in `users` (batched lookup), in the
    /// same order; users with none get an empty list.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn lookup(&self, users: &[UserId]) -> Result<Vec<Vec<ConnInfo>>, DirError>;

    /// Like [`Directory::lookup`], but tells "not known" from "offline": a
    /// user whose part of the directory could not answer gets `None`, so
    /// the caller can ask the rooms themselves (they are the source of
    /// truth) instead of skipping live delivery. The default: every user known.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable as a whole.
    async fn locate(&self, users: &[UserId]) -> Result<Vec<Option<Vec<ConnInfo>>>, DirError> {
        Ok(self.lookup(users).await?.into_iter().map(Some).collect())
    }

    /// Total time `user` has been online, in milliseconds, counting live
    /// connections up to `now_ms`.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn online_ms(&self, user: &UserId, now_ms: i64) -> Result<u64, DirError>;

    /// Announces (or renews) a live room.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn room_up(&self, room: RoomId) -> Result<(), DirError>;

    /// Removes a room and every connection it held.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn room_down(&self, room: RoomId) -> Result<(), DirError>;

    /// The live rooms, with their connection counts.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn rooms(&self) -> Result<Vec<RoomInfo>, DirError>;

    /// Totals.
    ///
    /// # Errors
    /// [`DirError`] when the directory is unreachable.
    async fn stats(&self) -> Result<DirStats, DirError>;
}
