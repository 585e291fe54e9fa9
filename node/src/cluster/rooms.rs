//! [`center::Rooms`] over internal links: one link per live room, found
//! through the registers' membership (no static list of rooms).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use center::{RoomCall, Rooms, RoomsError};
use dashmap::DashMap;
use link::{Client, LinkError};
use proto::{BroadcastProgress, EncodedMsg, MsgId, RoomId, UserId};
use register::ClusterDirectory;
use room::remote::{Delivery, RoomReq, RoomResp, SERVICE};

type RoomClient = Client<RoomReq, RoomResp>;

/// Bytes of deliveries sent in one [`RoomReq::Deliveries`] at most (well
/// under the link's frame limit); a larger batch takes several calls, in
/// order.
const DELIVERIES_BYTES: usize = 1024 * 1024;

/// Links to the live rooms.
pub(crate) struct ClusterRooms {
    dir: Arc<ClusterDirectory>,
    cfg: link::ClientConfig,
    /// Per room: the address and instance the link was opened for. A room
    /// restarted on the same address is a new instance: its link is new too,
    /// instead of one still backing off from the old process.
    links: DashMap<RoomId, (String, u64, RoomClient)>,
}

impl ClusterRooms {
    /// Rooms as `dir`'s membership lists them; links are opened on first use
    /// and closed when their room leaves the membership.
    pub(crate) fn new(dir: Arc<ClusterDirectory>, key: &str) -> Arc<ClusterRooms> {
        let mut cfg = link::ClientConfig::new(key);
        // A room that does not answer in 2 s is treated as failed for this
        // call; a dead room fails at once (its link is down).
        cfg.call_timeout = Duration::from_secs(2);
        cfg.first_connect_wait = Duration::from_secs(1);
        let rooms = Arc::new(ClusterRooms {
            dir,
            cfg,
            links: DashMap::new(),
        });
        tokio::spawn(prune(Arc::downgrade(&rooms)));
        rooms
    }

    fn link(&self, room: RoomId) -> Result<RoomClient, RoomsError> {
        let Some((addr, instance)) = self.dir.room_endpoint(room) else {
            return Err(RoomsError::Unknown {
                room,
                detail: "not a live room",
            });
        };
        if let Some(l) = self.links.get(&room) {
            if l.0 == addr && l.1 == instance {
                return Ok(l.2.clone());
            }
        }
        // New room, or the id restarted (elsewhere or on the same address).
        let client = Client::new(addr.clone(), SERVICE, self.cfg.clone());
        self.links.insert(room, (addr, instance, client.clone()));
        Ok(client)
    }

    async fn count(&self, room: RoomId, req: RoomReq) -> Result<u64, RoomsError> {
        match self.call_again(room, req).await? {
            RoomResp::Count(n) => Ok(n),
            other => Err(bad_answer(room, &other)),
        }
    }

    /// One call to `room`, tried once more after a membership refresh when
    /// the room was unknown or its link down.
    async fn call_again(&self, room: RoomId, req: RoomReq) -> Result<RoomResp, RoomsError> {
        match self.try_call(room, req.clone()).await {
            Err(first) if after_refresh(&first) => {
                // The membership may be a second old: the room may have just
                // started, or restarted on another address. Read it now and
                // try once more (a message sent twice is dropped by id).
                if let Err(e) = self.dir.refresh().await {
                    tracing::debug!(error = %e, "membership refresh failed");
                }
                self.try_call(room, req).await.inspect_err(
                    |_| tracing::debug!(%room, first = %first, "room call failed twice"),
                )
            }
            r => r,
        }
    }

    async fn try_count(&self, room: RoomId, req: &RoomReq) -> Result<u64, RoomsError> {
        match self.try_call(room, req.clone()).await? {
            RoomResp::Count(n) => Ok(n),
            other => Err(bad_answer(room, &other)),
        }
    }

    /// `calls` (a run of a batch) in one [`RoomReq::Deliveries`]. A room
    /// that does not know that request (an older version, during a rolling
    /// upgrade) is asked one call at a time instead.
    async fn deliveries(
        &self,
        room: RoomId,
        calls: &[RoomCall<'_>],
    ) -> Result<Vec<u64>, RoomsError> {
        let req = RoomReq::Deliveries {
            calls: calls.iter().map(|c| delivery(*c)).collect(),
        };
        match self.call_again(room, req).await {
            Ok(RoomResp::Counts(counts)) => Ok(counts),
            Ok(other) => Err(bad_answer(room, &other)),
            Err(RoomsError::Link { source, .. }) if source.is_unknown_request() => {
                tracing::debug!(%room, "room takes no batched deliveries; calling it once per push");
                let mut counts = Vec::with_capacity(calls.len());
                for call in calls {
                    counts.push(self.deliver(room, *call).await?);
                }
                Ok(counts)
            }
            Err(e) => Err(e),
        }
    }

    /// One call to `room`, once.
    async fn try_call(&self, room: RoomId, req: RoomReq) -> Result<RoomResp, RoomsError> {
        let link = self.link(room)?;
        link.call(req)
            .await
            .map_err(|source| RoomsError::Link { room, source })
    }
}

/// The wire form of one delivery.
fn delivery(call: RoomCall<'_>) -> Delivery {
    match call {
        RoomCall::Users { users, msg } => Delivery::Users {
            users: users.to_vec(),
            msg: EncodedMsg::clone(msg),
        },
        RoomCall::Channel { channel, msg } => Delivery::Channel {
            channel: channel.to_owned(),
            msg: EncodedMsg::clone(msg),
        },
    }
}

/// Roughly how many bytes `call` takes on the wire.
fn wire_size(call: &RoomCall<'_>) -> usize {
    let (head, msg) = match call {
        RoomCall::Users { users, msg } => (users.iter().map(|u| u.as_str().len() + 2).sum(), msg),
        RoomCall::Channel { channel, msg } => (channel.len() + 2, msg),
    };
    head + msg.json.len() + msg.bin.len() + 32
}

fn bad_answer(room: RoomId, answer: &RoomResp) -> RoomsError {
    RoomsError::BadAnswer {
        room,
        answer: format!("{answer:?}"),
    }
}

/// Whether a failed room call is worth one more try after a membership
/// refresh: the room is unknown or its link is down, so the membership may be
/// stale. A room that answered wrongly or too late is not retried (unlike
/// [`RoomsError::is_retryable`], a timeout does not count: the room is there).
fn after_refresh(e: &RoomsError) -> bool {
    matches!(
        e,
        RoomsError::Unknown { .. }
            | RoomsError::Link {
                source: LinkError::Unavailable { .. } | LinkError::Disconnected { .. },
                ..
            }
    )
}

/// Closes links of rooms that left the membership, every 5 s.
async fn prune(rooms: std::sync::Weak<ClusterRooms>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Some(rooms) = rooms.upgrade() else {
            return;
        };
        rooms.links.retain(|room, (addr, instance, _)| {
            rooms.dir.room_endpoint(*room) == Some((addr.clone(), *instance))
        });
    }
}

#[async_trait]
impl Rooms for ClusterRooms {
    /// One round trip for the whole batch (several when it is over
    /// [`DELIVERIES_BYTES`]); a single call goes as itself.
    async fn deliver_many(
        &self,
        room: RoomId,
        calls: &[RoomCall<'_>],
    ) -> Result<Vec<u64>, RoomsError> {
        match calls {
            [] => return Ok(Vec::new()),
            [one] => return Ok(vec![self.deliver(room, *one).await?]),
            _ => {}
        }
        let mut counts = Vec::with_capacity(calls.len());
        for run in link::split_by(calls, wire_size, DELIVERIES_BYTES) {
            counts.extend(self.deliveries(room, run).await?);
        }
        Ok(counts)
    }

    async fn deliver_users(
        &self,
        room: RoomId,
        users: &[UserId],
        msg: &Arc<EncodedMsg>,
    ) -> Result<u64, RoomsError> {
        let req = RoomReq::DeliverUsers {
            users: users.to_vec(),
            msg: EncodedMsg::clone(msg),
        };
        self.count(room, req).await
    }

    async fn publish_channel(
        &self,
        room: RoomId,
        channel: &str,
        msg: &Arc<EncodedMsg>,
    ) -> Result<u64, RoomsError> {
        let req = RoomReq::PublishChannel {
            channel: channel.to_owned(),
            msg: EncodedMsg::clone(msg),
        };
        self.count(room, req).await
    }

    async fn broadcast(
        &self,
        room: RoomId,
        msg: &Arc<EncodedMsg>,
    ) -> Result<BroadcastProgress, RoomsError> {
        let req = RoomReq::BroadcastTracked {
            msg: EncodedMsg::clone(msg),
        };
        // Retried like the other calls: a room that already fanned it out
        // answers its progress instead of sending it twice.
        match self.call_again(room, req).await? {
            RoomResp::Progress(Some(p)) => Ok(p),
            other => Err(bad_answer(room, &other)),
        }
    }

    async fn broadcast_progress(
        &self,
        room: RoomId,
        id: MsgId,
    ) -> Result<Option<BroadcastProgress>, RoomsError> {
        match self
            .try_call(room, RoomReq::BroadcastProgress { id })
            .await?
        {
            RoomResp::Progress(p) => Ok(p),
            other => Err(bad_answer(room, &other)),
        }
    }

    async fn kick_user(&self, room: RoomId, user: &UserId) -> Result<u64, RoomsError> {
        let req = RoomReq::KickUser { user: user.clone() };
        self.count(room, req).await
    }

    async fn resync(
        &self,
        room: RoomId,
        users: Option<&[UserId]>,
        after: MsgId,
    ) -> Result<u64, RoomsError> {
        let req = RoomReq::Resync {
            users: users.map(<[UserId]>::to_vec),
            after,
        };
        self.count(room, req).await
    }

    async fn presence_changes(
        &self,
        room: RoomId,
        changes: &[(bool, proto::PresenceChange)],
    ) -> Result<u64, RoomsError> {
        let req = RoomReq::Presence {
            changes: changes.to_vec(),
        };
        // Once: a batch retried after a lost answer could arrive twice
        // (messages are dropped by id; presence events have none).
        self.try_count(room, &req).await
    }

    async fn channel_members(
        &self,
        room: RoomId,
        channel: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<proto::MembersPage, RoomsError> {
        let req = RoomReq::Members {
            channel: channel.to_owned(),
            after: after.map(str::to_owned),
            limit,
        };
        match self.try_call(room, req).await? {
            RoomResp::Members { users, more } => Ok(proto::MembersPage { users, more }),
            other => Err(bad_answer(room, &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use center::RoomsError;
    use link::LinkError;
    use proto::RoomId;

    use super::after_refresh;

    fn link(source: LinkError) -> RoomsError {
        RoomsError::Link {
            room: RoomId(1),
            source,
        }
    }

    /// Same decisions as the former `Retry::Now` / `Retry::No` split.
    #[test]
    fn only_unknown_or_down_rooms_are_retried_after_a_refresh() {
        let addr = || "10.0.0.3:1".to_owned();
        assert!(after_refresh(&RoomsError::Unknown {
            room: RoomId(1),
            detail: "not a live room",
        }));
        assert!(after_refresh(&link(LinkError::Unavailable {
            service: "room",
            addr: addr(),
        })));
        assert!(after_refresh(&link(LinkError::Disconnected {
            service: "room",
            addr: addr(),
        })));
        assert!(!after_refresh(&link(LinkError::Timeout {
            service: "room",
            addr: addr(),
            timeout: Duration::from_secs(2),
        })));
        assert!(!after_refresh(&link(LinkError::Protocol {
            service: "room",
            reason: "bad".to_owned(),
        })));
        assert!(!after_refresh(&RoomsError::BadAnswer {
            room: RoomId(1),
            answer: "Done".to_owned(),
        }));
    }
}
