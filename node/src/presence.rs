//! Presence across a cluster's rooms, for one room's backend: the joins
//! and leaves of this room's connections go to the other rooms (whose
//! watchers get them), and a client's `presence` counts every room's
//! members ([`center::presence`] does both over the room links).
//!
//! A session must never wait for another room, so a change is put on a
//! bounded queue and one task sends them, in order, in batches of up to
//! [`BATCH`]; a full queue drops the change and counts it (presence events
//! are best effort: a client can always ask `presence` again).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use center::Rooms;
use proto::{MembersPage, PresenceChange, RoomId};
use register::Directory;
use tokio::sync::mpsc;

/// Changes waiting to be sent at most.
const QUEUE: usize = 65_536;
/// Changes sent in one call to each room at most.
const BATCH: usize = 1_000;

/// One room's view of the cluster's presence.
pub(crate) struct ClusterPresence {
    dir: Arc<dyn Directory>,
    rooms: Arc<dyn Rooms>,
    tx: mpsc::Sender<(bool, PresenceChange)>,
    /// Changes dropped because the queue was full.
    dropped: AtomicU64,
    /// Changes handed to the sender task.
    queued: AtomicU64,
    /// This room, once made: its own members are read here, not over its
    /// link (and count before the room list shows this room).
    local: std::sync::OnceLock<(RoomId, room::Room)>,
}

impl ClusterPresence {
    /// Starts the sender task of room `me` on the current runtime; it ends
    /// when the returned value is dropped.
    pub(crate) fn start(
        me: RoomId,
        dir: Arc<dyn Directory>,
        rooms: Arc<dyn Rooms>,
    ) -> Arc<ClusterPresence> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_loop(me, Arc::clone(&dir), Arc::clone(&rooms), rx));
        Arc::new(ClusterPresence {
            dir,
            rooms,
            tx,
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            local: std::sync::OnceLock::new(),
        })
    }

    /// The room this backend serves (set once, after it is made).
    pub(crate) fn set_room(&self, id: RoomId, room: room::Room) {
        let _ = self.local.set((id, room));
    }

    /// Queues a change of this room for the others; never waits.
    pub(crate) fn changed(&self, join: bool, change: &PresenceChange) {
        match self.tx.try_send((join, change.clone())) {
            Ok(()) => self.queued.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// The members of `channel` over every room.
    ///
    /// # Errors
    /// [`center::presence::PresenceError`] when the room list or a room is unavailable.
    pub(crate) async fn members(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<MembersPage, center::presence::PresenceError> {
        let local = self.local.get().map(|(id, room)| {
            let n = usize::try_from(limit).unwrap_or(usize::MAX);
            (*id, room.channel_members(channel, after, n))
        });
        center::presence::members_with(&*self.dir, &*self.rooms, channel, after, limit, local).await
    }

    /// Writes the relay's counters (Prometheus text).
    pub(crate) fn write_metrics(&self, out: &mut String) {
        crate::events::write_rows(
            out,
            &[
                (
                    "pushgate_room_presence_relayed_total",
                    "counter",
                    "Presence changes of this room queued for the other rooms.",
                    self.queued.load(Ordering::Relaxed),
                ),
                (
                    "pushgate_room_presence_relay_dropped_total",
                    "counter",
                    "Presence changes not relayed: the queue to the other rooms was full.",
                    self.dropped.load(Ordering::Relaxed),
                ),
            ],
        );
    }
}

/// Sends queued changes to the other rooms, a batch at a time, until the
/// queue's sender is gone.
async fn send_loop(
    me: RoomId,
    dir: Arc<dyn Directory>,
    rooms: Arc<dyn Rooms>,
    mut rx: mpsc::Receiver<(bool, PresenceChange)>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        center::presence::relay(&*dir, &*rooms, me, &batch).await;
        batch.clear();
    }
}
