//! The REST API (axum) and the routing of a push: id → store → look up → fan
//! out to rooms. Broadcasts run as tasks with progress. Centers hold no
//! durable state.

use std::sync::Arc;

use async_trait::async_trait;
use proto::{EncodedMsg, RoomId, UserId};

/// How a center reaches rooms (in process in standalone mode, over links in cluster mode).
#[async_trait]
pub trait Rooms: Send + Sync + 'static {
    /// Queues `msg` to every connection of `users` held by `room`; returns connections written.
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn deliver_users(&self, room: RoomId, users: &[UserId], msg: &Arc<EncodedMsg>) -> Result<u64, RoomsError>;
    /// Queues `msg` to every subscriber of `channel` in `room`.
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn publish_channel(&self, room: RoomId, channel: &str, msg: &Arc<EncodedMsg>) -> Result<u64, RoomsError>;
    /// Queues `msg` to every connection of `room`.
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn broadcast(&self, room: RoomId, msg: &Arc<EncodedMsg>) -> Result<u64, RoomsError>;
    /// Closes every connection of `user` in `room` (4005); returns how many.
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn kick_user(&self, room: RoomId, user: &UserId) -> Result<u64, RoomsError>;
}

/// A room could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("room {room} unreachable: {reason}")]
pub struct RoomsError {
    /// The room.
    pub room: RoomId,
    /// Why.
    pub reason: String,
}
