//! [`Rooms`] for standalone mode: the center delivers to the one room of
//! this process directly (cluster centers use `cluster::rooms` instead).

use std::sync::Arc;

use async_trait::async_trait;
use center::{Rooms, RoomsError};
use proto::{BroadcastProgress, EncodedMsg, MsgId, RoomId, UserId};
use room::Room;

/// [`Rooms`] served by the one room of this process.
pub(crate) struct LocalRooms {
    pub(crate) id: RoomId,
    pub(crate) room: Room,
}

impl LocalRooms {
    fn check(&self, room: RoomId) -> Result<&Room, RoomsError> {
        if room == self.id {
            Ok(&self.room)
        } else {
            Err(RoomsError::Unknown {
                room,
                detail: "no such room in this process",
            })
        }
    }
}

#[async_trait]
impl Rooms for LocalRooms {
    async fn deliver_users(
        &self,
        room: RoomId,
        users: &[UserId],
        msg: &Arc<EncodedMsg>,
    ) -> Result<u64, RoomsError> {
        Ok(self.check(room)?.deliver_users(users, msg))
    }

    async fn publish_channel(
        &self,
        room: RoomId,
        channel: &str,
        msg: &Arc<EncodedMsg>,
    ) -> Result<u64, RoomsError> {
        Ok(self.check(room)?.publish_channel(channel, msg))
    }

    async fn broadcast(
        &self,
        room: RoomId,
        msg: &Arc<EncodedMsg>,
    ) -> Result<BroadcastProgress, RoomsError> {
        Ok(self.check(room)?.broadcast(msg))
    }

    async fn broadcast_progress(
        &self,
        room: RoomId,
        id: MsgId,
    ) -> Result<Option<BroadcastProgress>, RoomsError> {
        Ok(self.check(room)?.broadcast_progress(id))
    }

    async fn kick_user(&self, room: RoomId, user: &UserId) -> Result<u64, RoomsError> {
        Ok(self.check(room)?.kick_user(user))
    }

    async fn resync(
        &self,
        room: RoomId,
        users: Option<&[UserId]>,
        after: MsgId,
    ) -> Result<u64, RoomsError> {
        Ok(self.check(room)?.resync(users, after))
    }

    async fn presence_changes(
        &self,
        room: RoomId,
        changes: &[(bool, proto::PresenceChange)],
    ) -> Result<u64, RoomsError> {
        Ok(self.check(room)?.presence_changes(changes))
    }

    async fn channel_members(
        &self,
        room: RoomId,
        channel: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<proto::MembersPage, RoomsError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(self.check(room)?.channel_members(channel, after, limit))
    }
}
