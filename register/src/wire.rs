//! The register's wire protocol: the requests and answers served over a
//! link (postcard), the room lease, and the timing constants shared by the
//! registers and their clients.

use std::time::Duration;

use proto::{ConnId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use crate::{ConnInfo, DirStats};

/// The link service name of a register.
pub const SERVICE: &str = "register";

/// How often a room renews its lease at every register.
pub const LEASE_RENEW: Duration = Duration::from_secs(1);

/// A sensible lease TTL: three renewals, so a room survives two lost ones.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);

/// How often [`ClusterDirectory`](crate::ClusterDirectory) refreshes its cached
/// membership by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(1);

/// Longest one register may take to answer a lease renewal.
pub const LEASE_CALL_TIMEOUT: Duration = Duration::from_millis(800);

/// A room's lease, renewed by the room every [`LEASE_RENEW`] (1 s).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomLease {
    /// The room.
    pub room: RoomId,
    /// The room's internal link address (where centers reach it).
    pub addr: String,
    /// Random per room process start: tells a restarted room (or a second
    /// process configured with the same room id) from the one that holds the lease.
    pub instance: u64,
    /// Connections the room holds (all of them, not only this register's users).
    pub connections: u64,
}

/// What a register answered to a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOutcome {
    /// Renewed a lease this register already had (same instance).
    Renewed,
    /// This register did not know this room instance (it restarted, the
    /// lease had expired, or the room is new): it dropped any entries of the
    /// room and the room must send a full sync of its connections owned by
    /// this register.
    Fresh,
    /// Another live instance holds this room id; the lease was not granted.
    Conflict {
        /// The internal address of the instance holding the lease.
        holder_addr: String,
    },
}

/// A request to a register (the wire protocol, postcard over a link).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterReq {
    /// A connection authenticated. Answer: [`RegisterResp::Done`].
    Connected(ConnInfo),
    /// A connection ended at `now_ms`. Answer: [`RegisterResp::Done`].
    Disconnected {
        /// The user.
        user: UserId,
        /// The connection.
        conn: ConnId,
        /// When it ended, ms since the epoch.
        now_ms: i64,
    },
    /// The live connections of each user, in order. Answer: [`RegisterResp::Lookup`].
    Lookup(Vec<UserId>),
    /// A user's total online time up to `now_ms`. Answer: [`RegisterResp::OnlineMs`].
    OnlineMs {
        /// The user.
        user: UserId,
        /// Count live connections up to this time, ms since the epoch.
        now_ms: i64,
    },
    /// Takes or renews a room's lease. Answer: [`RegisterResp::Lease`].
    Lease(RoomLease),
    /// Connections of `room` owned by this register: replaces every entry of
    /// the room when `first`, else adds to them. Every connection must belong
    /// to `room`. Answer: [`RegisterResp::Done`] or [`RegisterResp::Err`].
    Sync {
        /// The room.
        room: RoomId,
        /// Its connections (a chunk of them).
        conns: Vec<ConnInfo>,
        /// The first chunk of a snapshot.
        first: bool,
        /// The last chunk: entries of the room listed in no chunk of this
        /// snapshot are then removed (before, every chunk only adds, so a
        /// large room never disappears half-way through a refill).
        last: bool,
        /// When replacing, entries of the room that authenticated at or after
        /// this time (ms since the epoch) are kept even if not listed: they
        /// connected while the snapshot was taken and sent, and their
        /// `Connected` may have arrived before this `Sync`. (A stale one is
        /// removed by its own `Disconnected`, which follows on the same link.)
        keep_since: i64,
    },
    /// Drops the lease of `room` and its entries: only if `instance` holds
    /// the lease (or no live lease exists) when given, whoever holds it when
    /// `None`. Answer: [`RegisterResp::Done`].
    Release {
        /// The room.
        room: RoomId,
        /// The instance shutting down; `None`: any.
        instance: Option<u64>,
    },
    /// The live leases. Answer: [`RegisterResp::Members`].
    Members,
    /// Totals of this register's partition. Answer: [`RegisterResp::Stats`].
    Stats,
}

/// A register's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterResp {
    /// Applied (`Connected`, `Disconnected`, `Sync`, `Release`).
    Done,
    /// One list per user asked, in the same order.
    Lookup(Vec<Vec<ConnInfo>>),
    /// Online time in milliseconds.
    OnlineMs(u64),
    /// The outcome of a lease.
    Lease(LeaseOutcome),
    /// The live leases.
    Members(Vec<RoomLease>),
    /// Totals.
    Stats(DirStats),
    /// The request was refused (nothing was changed).
    Err(String),
}
