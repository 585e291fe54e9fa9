//! A room served over an internal link (cluster mode): centers call
//! [`RoomService`] to deliver, publish, broadcast and kick.
//!
//! The service is ordered: a center's calls to one room are handled in the
//! order it sent them, so one center's pushes to a user arrive in id order.
//! Messages travel already encoded ([`EncodedMsg`], both encodings), so a
//! room copies bytes into queues and never re-encodes.

use std::sync::Arc;

use async_trait::async_trait;
use proto::{EncodedMsg, RoomId, UserId};
use serde::{Deserialize, Serialize};

use crate::Room;

/// Service name in the link hello.
pub const SERVICE: &str = "room";

/// What a center asks a room.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RoomReq {
    /// Queue `msg` to every connection of these users held here.
    DeliverUsers {
        /// The users.
        users: Vec<UserId>,
        /// The message.
        msg: EncodedMsg,
    },
    /// Queue `msg` to every subscriber of `channel` here.
    PublishChannel {
        /// The channel.
        channel: String,
        /// The message.
        msg: EncodedMsg,
    },
    /// Queue `msg` to every connection here.
    Broadcast {
        /// The message.
        msg: EncodedMsg,
    },
    /// Close every connection of `user` here (4005).
    KickUser {
        /// The user.
        user: UserId,
    },
    /// Which room this is and what it holds.
    Info,
    /// Replay the stored messages of these users' connections here after
    /// `after` before anything delivered later (a center could not deliver
    /// stored messages to this room; see [`Room::resync`]).
    // Last, so that older nodes keep their variant numbers (postcard).
    Resync {
        /// The users; `None`: every connection here.
        users: Option<Vec<UserId>>,
        /// The lowest id that may have been missed, minus one.
        after: proto::MsgId,
    },
}

/// A room's answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum RoomResp {
    /// Connections written (or kicked).
    Count(u64),
    /// The answer to [`RoomReq::Info`].
    Info {
        /// Room id.
        room: RoomId,
        /// Authenticated connections.
        connections: u64,
        /// Distinct users.
        users: u64,
    },
}

/// Serves a [`Room`] to centers.
pub struct RoomService {
    room: Room,
}

impl RoomService {
    /// Wraps `room`.
    pub fn new(room: Room) -> Arc<RoomService> {
        Arc::new(RoomService { room })
    }
}

#[async_trait]
impl link::Service for RoomService {
    type Req = RoomReq;
    type Resp = RoomResp;
    const NAME: &'static str = SERVICE;
    const ORDERED: bool = true;

    async fn call(&self, req: RoomReq) -> RoomResp {
        match req {
            RoomReq::DeliverUsers { users, msg } => {
                RoomResp::Count(self.room.deliver_users(&users, &Arc::new(msg)))
            }
            RoomReq::PublishChannel { channel, msg } => {
                RoomResp::Count(self.room.publish_channel(&channel, &Arc::new(msg)))
            }
            RoomReq::Broadcast { msg } => RoomResp::Count(self.room.broadcast(&Arc::new(msg))),
            RoomReq::KickUser { user } => RoomResp::Count(self.room.kick_user(&user)),
            RoomReq::Resync { users, after } => {
                RoomResp::Count(self.room.resync(users.as_deref(), after))
            }
            RoomReq::Info => RoomResp::Info {
                room: self.room.config().room,
                connections: self.room.connections(),
                users: self.room.users(),
            },
        }
    }
}
