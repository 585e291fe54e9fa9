//! A room served over an internal link (cluster mode): centers call
//! [`RoomService`] to deliver, publish, broadcast and kick.
//!
//! The service is ordered: a center's calls to one room are handled in the
//! order it sent them, so one center's pushes to a user arrive in id order.
//! Messages travel already encoded ([`EncodedMsg`], both encodings), so a
//! room copies bytes into queues and never re-encodes.

use std::sync::Arc;

use async_trait::async_trait;
use proto::{BroadcastProgress, EncodedMsg, MsgId, PresenceChange, PresentUser, RoomId, UserId};
use serde::{Deserialize, Serialize};

use crate::Room;

/// Service name in the link hello.
pub const SERVICE: &str = "room";

/// Most members a room answers in one [`RoomReq::Members`].
pub const MAX_MEMBERS_PAGE: usize = 10_000;

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
    /// Presence changes on another room (`true`: join), for the watchers
    /// here (see [`Room::presence_changes`]).
    Presence {
        /// The changes, in the order they happened.
        changes: Vec<(bool, PresenceChange)>,
    },
    /// The members of a channel here (see [`Room::channel_members`]).
    Members {
        /// The channel.
        channel: String,
        /// Members after this user; from the first when `None`.
        after: Option<String>,
        /// At most this many.
        limit: u32,
    },
    /// Queue `msg` to every connection here and follow it (answered with
    /// [`RoomResp::Progress`] right after the fan-out; see
    /// [`Room::broadcast`]).
    BroadcastTracked {
        /// The message.
        msg: EncodedMsg,
    },
    /// How far broadcast `id` got here ([`RoomResp::Progress`]).
    BroadcastProgress {
        /// The broadcast's message id.
        id: MsgId,
    },
    /// Several deliveries in one call, queued in this order and answered
    /// with [`RoomResp::Counts`], a count for each: a center's batch costs
    /// a room one round trip instead of one per push (on a busy host each
    /// round trip waits for four threads to be scheduled).
    Deliveries {
        /// The deliveries, in id order.
        calls: Vec<Delivery>,
    },
}

/// One delivery of a [`RoomReq::Deliveries`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Delivery {
    /// Like [`RoomReq::DeliverUsers`].
    Users {
        /// The users.
        users: Vec<UserId>,
        /// The message.
        msg: EncodedMsg,
    },
    /// Like [`RoomReq::PublishChannel`].
    Channel {
        /// The channel.
        channel: String,
        /// The message.
        msg: EncodedMsg,
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
    /// The answer to [`RoomReq::Members`].
    Members {
        /// Members in user order, with their subscribed connections here.
        users: Vec<PresentUser>,
        /// Whether more follow.
        more: bool,
    },
    /// The answer to [`RoomReq::BroadcastTracked`] and
    /// [`RoomReq::BroadcastProgress`]; `None`: this room does not know the
    /// broadcast (never fanned out here, or forgotten).
    Progress(Option<BroadcastProgress>),
    /// The answer to [`RoomReq::Deliveries`]: connections written by each
    /// delivery, in order.
    Counts(Vec<u64>),
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

    /// Queues one delivery; returns connections written.
    fn deliver(&self, d: Delivery) -> u64 {
        match d {
            Delivery::Users { users, msg } => self.room.deliver_users(&users, &Arc::new(msg)),
            Delivery::Channel { channel, msg } => {
                self.room.publish_channel(&channel, &Arc::new(msg))
            }
        }
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
                RoomResp::Count(self.deliver(Delivery::Users { users, msg }))
            }
            RoomReq::PublishChannel { channel, msg } => {
                RoomResp::Count(self.deliver(Delivery::Channel { channel, msg }))
            }
            // Older centers: the connections that queued it.
            RoomReq::Broadcast { msg } => {
                RoomResp::Count(self.room.broadcast(&Arc::new(msg)).pending)
            }
            RoomReq::BroadcastTracked { msg } => {
                RoomResp::Progress(Some(self.room.broadcast(&Arc::new(msg))))
            }
            RoomReq::BroadcastProgress { id } => {
                RoomResp::Progress(self.room.broadcast_progress(id))
            }
            RoomReq::Deliveries { calls } => {
                RoomResp::Counts(calls.into_iter().map(|d| self.deliver(d)).collect())
            }
            RoomReq::KickUser { user } => RoomResp::Count(self.room.kick_user(&user)),
            RoomReq::Resync { users, after } => {
                RoomResp::Count(self.room.resync(users.as_deref(), after))
            }
            RoomReq::Presence { changes } => RoomResp::Count(self.room.presence_changes(&changes)),
            RoomReq::Members {
                channel,
                after,
                limit,
            } => {
                let limit = usize::try_from(limit)
                    .unwrap_or(usize::MAX)
                    .min(MAX_MEMBERS_PAGE);
                let page = self.room.channel_members(&channel, after.as_deref(), limit);
                RoomResp::Members {
                    users: page.users,
                    more: page.more,
                }
            }
            RoomReq::Info => RoomResp::Info {
                room: self.room.config().room,
                connections: self.room.connections(),
                users: self.room.users(),
            },
        }
    }
}
