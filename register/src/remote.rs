//! The directory in cluster mode: the register service served over links
//! ([`RegisterService`]) and the client that partitions users over several
//! register processes ([`ClusterDirectory`]).
//!
//! Partitioning: a user lives on register `ring::partition(user, n)` where `n`
//! is the number of registers and the registers are numbered by their place
//! in the address list. **Every process (rooms and centers) must list the
//! registers in the same order**, or they disagree about where a user lives.
//!
//! Membership: every room holds a lease ([`RoomLease`]) at every register and
//! renews it every [`LEASE_RENEW`]. A register that has not heard from a room
//! for its lease TTL drops the room and every connection it held (the room
//! died). The live rooms are the union of the live leases of the reachable
//! registers; [`ClusterDirectory`] caches it and refreshes it every second,
//! so [`Directory::rooms`] and [`ClusterDirectory::room_addr`] make no network
//! call.
//!
//! Refill: rooms are the source of truth. When a register answers a lease
//! with [`LeaseOutcome::Fresh`] (it restarted empty, the lease had expired, or
//! the room is new), the room sends it a full snapshot of its connections
//! owned by that register ([`ClusterDirectory::sync`], `first = true` then
//! `first = false` chunks). The room should send the snapshot on the same
//! client it uses for `connected`/`disconnected` (one ordered link per
//! register) and take it after the lease answer, so that no later event is
//! overtaken by an older snapshot.
//!
//! This module owns no sockets of its own: the transport is the `link` crate.
//! It gathers the cluster-mode items, defined in private modules: the wire
//! protocol (`wire`), the register's lease table (`lease`) and service
//! (`service`), and the client (`client`).

#[cfg(doc)]
use crate::Directory;

pub use crate::client::ClusterDirectory;
pub use crate::service::RegisterService;
pub use crate::wire::{
    LeaseOutcome, RegisterReq, RegisterResp, RoomLease, DEFAULT_LEASE_TTL, DEFAULT_REFRESH,
    LEASE_CALL_TIMEOUT, LEASE_RENEW, SERVICE,
};
