//! Offline queues per user and bounded channel history, behind one [`Store`]
//! trait with two backends: embedded (redb, one file in the data dir; the
//! default) and Redis (single node or Redis Cluster).
//!
//! This crate owns durable data; it does not decide who gets what.
//! See docs/STORAGE.md for the layout and the durability guarantees.

mod embedded;
mod live;
mod newest;
mod redis_backend;
pub mod remote;

pub use embedded::{EmbeddedStore, MAX_BATCH, SWEEP_LIMIT};
pub use redis_backend::{acks_key, history_key, queue_key, RedisStore};
pub use remote::{RemoteStore, SaverService};

use async_trait::async_trait;
use bytes::Bytes;
use proto::{MsgId, UserId};
use serde::{Deserialize, Serialize};

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMsg {
    /// Message id.
    pub id: MsgId,
    /// Milliseconds since the epoch when the push was accepted.
    pub ts: i64,
    /// Milliseconds since the epoch after which the message is dropped.
    pub expires_at: i64,
    /// The JSON payload, as text.
    pub data: Bytes,
}

/// Bounds of one queue or history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounds {
    /// Keep at most this many newest messages.
    pub max: u32,
}

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, Redis unreachable, …).
    #[error("store backend: {0}")]
    Backend(String),
    /// The store is closed.
    #[error("store closed")]
    Closed,
}

/// Offline queues and channel history.
///
/// Writes are durable when the call returns: on the embedded backend they are
/// group-committed (many concurrent calls share one fsync).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends `msg` to the queue of every user in `users`, trimming each queue
    /// to `bounds` (newest kept). Durable when it returns.
    ///
    /// # Errors
    /// [`StoreError`] when the write did not happen for every user. On one
    /// node or the embedded store none of it happened then; on a Redis
    /// Cluster some users may have been written (each user's write is atomic;
    /// see docs/STORAGE.md). Either way the caller reports the push as
    /// failed, and a retry with the same id adds nothing twice.
    async fn append_users(
        &self,
        users: &[UserId],
        msg: &StoredMsg,
        bounds: Bounds,
    ) -> Result<(), StoreError>;

    /// Messages of `user` with id greater than `after`, not expired at `now_ms`,
    /// in id order, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError`] when the backend fails.
    async fn read_user(
        &self,
        user: &UserId,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError>;

    /// Records that `device` of `user` has every message up to `id` (never moves back).
    ///
    /// # Errors
    /// [`StoreError`] when the backend fails.
    async fn ack(&self, user: &UserId, device: &str, id: MsgId) -> Result<(), StoreError>;

    /// Whether `user` surely has no stored message with id above `after`,
    /// answered from memory (no round trip); `false` means "unknown, read".
    /// A connect with nothing to replay then costs no store read. The
    /// default knows nothing.
    fn nothing_after(&self, _user: &UserId, _after: MsgId) -> bool {
        false
    }

    /// The highest id acked by `device` of `user`, if any.
    ///
    /// # Errors
    /// [`StoreError`] when the backend fails.
    async fn acked(&self, user: &UserId, device: &str) -> Result<Option<MsgId>, StoreError>;

    /// Appends `msg` to the history of `channel`, trimmed to `bounds`.
    ///
    /// # Errors
    /// [`StoreError`] when the write did not happen.
    async fn append_channel(
        &self,
        channel: &str,
        msg: &StoredMsg,
        bounds: Bounds,
    ) -> Result<(), StoreError>;

    /// History of `channel` after `after`, not expired at `now_ms`, in id order, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError`] when the backend fails.
    async fn read_channel(
        &self,
        channel: &str,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError>;

    /// Flushes anything pending and stops accepting writes.
    ///
    /// # Errors
    /// [`StoreError`] when the final flush fails.
    async fn close(&self) -> Result<(), StoreError>;
}
