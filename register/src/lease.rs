//! The register's lease table: which room id is held by which room instance
//! (and at which address) until when, the rooms whose entries outlived
//! their lease, and the refills in progress.
//!
//! The table only keeps the books: every method takes the current time
//! (monotonic, [`tokio::time::Instant`], and the same moment in ms since the
//! epoch) and returns what the caller must do to the directory of
//! connections ([`RoomDrop`]s). [`RegisterService`](crate::RegisterService)
//! applies them to its [`LocalDirectory`](crate::LocalDirectory) under the
//! same lock as the table, so an expiry can not interleave with the lease and
//! refill of the same room.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proto::{ConnId, RoomId};
use tokio::time::Instant;

use crate::wire::{LeaseOutcome, RoomLease};

/// The entries of `room` must be dropped from the directory, their online
/// time counted up to `closed_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RoomDrop {
    /// The room.
    pub(crate) room: RoomId,
    /// When its connections ended, ms since the epoch.
    pub(crate) closed_ms: i64,
}

/// A lease as the register keeps it.
#[derive(Debug)]
struct Held {
    lease: RoomLease,
    /// When it expires (monotonic clock).
    deadline: Instant,
    /// The same moment in ms since the epoch: online time of the room's
    /// connections is counted up to it when the lease expires.
    expires_ms: i64,
}

/// The leases of one register; see the module documentation.
#[derive(Debug)]
pub(crate) struct LeaseTable {
    ttl: Duration,
    held: HashMap<RoomId, Held>,
    /// Since when each room that has entries in the directory has held no
    /// lease (kept by [`LeaseTable::sweep`]).
    orphans: HashMap<RoomId, Instant>,
    /// Connections listed so far by the refill of each room in progress.
    listing: HashMap<RoomId, HashSet<ConnId>>,
}

impl LeaseTable {
    /// An empty table whose leases last `ttl`.
    pub(crate) fn new(ttl: Duration) -> LeaseTable {
        LeaseTable {
            ttl,
            held: HashMap::new(),
            orphans: HashMap::new(),
            listing: HashMap::new(),
        }
    }

    /// How long a lease lasts without renewal.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The leases live at `now`, sorted by room.
    pub(crate) fn members(&self, now: Instant) -> Vec<RoomLease> {
        let mut v: Vec<RoomLease> = self
            .held
            .values()
            .filter(|h| h.deadline > now)
            .map(|h| h.lease.clone())
            .collect();
        v.sort_by_key(|l| l.room);
        v
    }

    /// Takes or renews `lease` at `now` (`now_ms`: the same moment, ms since
    /// the epoch).
    ///
    /// - The instance holding a live lease of the room renews it for another
    ///   TTL ([`LeaseOutcome::Renewed`]; the lease's address and connection
    ///   count are updated).
    /// - Another instance while that lease is live gets
    ///   [`LeaseOutcome::Conflict`] with the holder's address; nothing changes.
    /// - Otherwise (a new room, an expired lease not swept yet, or a room this
    ///   table does not know, e.g. after a restart) the lease is granted
    ///   ([`LeaseOutcome::Fresh`]) and the room's entries must be dropped: the
    ///   room refills them. They close when the old lease expired, or at
    ///   `now_ms` when there was none.
    pub(crate) fn lease(
        &mut self,
        lease: RoomLease,
        now: Instant,
        now_ms: i64,
    ) -> (LeaseOutcome, Option<RoomDrop>) {
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let room = lease.room;
        if let Some(held) = self.held.get_mut(&room) {
            if held.deadline > now {
                if held.lease.instance != lease.instance {
                    let holder_addr = held.lease.addr.clone();
                    return (LeaseOutcome::Conflict { holder_addr }, None);
                }
                held.lease = lease;
                held.deadline = now + self.ttl;
                held.expires_ms = now_ms.saturating_add(ttl_ms);
                return (LeaseOutcome::Renewed, None);
            }
        }
        // New, expired (not swept yet) or unknown after a restart: start clean.
        let closed_ms = self.held.remove(&room).map_or(now_ms, |h| h.expires_ms);
        tracing::info!(%room, addr = %lease.addr, instance = lease.instance, "room lease granted");
        self.held.insert(
            room,
            Held {
                lease,
                deadline: now + self.ttl,
                expires_ms: now_ms.saturating_add(ttl_ms),
            },
        );
        (LeaseOutcome::Fresh, Some(RoomDrop { room, closed_ms }))
    }

    /// Notes the connections of one chunk of a refill of `room`; `first`
    /// starts a new listing (forgetting one left unfinished).
    pub(crate) fn list(
        &mut self,
        room: RoomId,
        conns: impl IntoIterator<Item = ConnId>,
        first: bool,
    ) {
        if first {
            self.listing.insert(room, HashSet::new());
        }
        self.listing.entry(room).or_default().extend(conns);
    }

    /// Ends the refill of `room`: the connections its chunks listed (none
    /// when no refill was in progress).
    pub(crate) fn end_listing(&mut self, room: RoomId) -> HashSet<ConnId> {
        self.listing.remove(&room).unwrap_or_default()
    }

    /// Drops the lease of `room` at `now`. With `instance`, only when that
    /// instance holds it or no live lease exists; a live lease of another
    /// instance is kept and `None` returned. Otherwise the room's entries must
    /// be dropped (closed at `now_ms`), whether or not a lease was held.
    pub(crate) fn release(
        &mut self,
        room: RoomId,
        instance: Option<u64>,
        now: Instant,
        now_ms: i64,
    ) -> Option<RoomDrop> {
        if let (Some(held), Some(instance)) = (self.held.get(&room), instance) {
            if held.lease.instance != instance && held.deadline > now {
                tracing::debug!(%room, instance, holder = held.lease.instance, "release by a non-holder ignored");
                return None;
            }
        }
        self.held.remove(&room);
        tracing::info!(%room, "room released");
        Some(RoomDrop {
            room,
            closed_ms: now_ms,
        })
    }

    /// One pass of the expiry sweep at `now`. `with_entries`: the rooms that
    /// have connections in the directory.
    ///
    /// Returns, in this order: the rooms whose lease expired (their entries
    /// close when the lease expired), then the rooms of `with_entries` that
    /// have held no lease for a whole TTL of sweeps (a `Connected` that
    /// arrived after its room's lease had expired; they close at `now_ms`).
    /// A room is counted as holding no lease from the first sweep that sees it
    /// so, until a sweep sees it leased or without entries.
    pub(crate) fn sweep(
        &mut self,
        now: Instant,
        now_ms: i64,
        with_entries: &[RoomId],
    ) -> Vec<RoomDrop> {
        let mut drops = Vec::new();
        self.held.retain(|&room, h| {
            let live = h.deadline > now;
            if !live {
                tracing::info!(%room, addr = %h.lease.addr, "room lease expired; dropping its connections");
                drops.push(RoomDrop {
                    room,
                    closed_ms: h.expires_ms,
                });
            }
            live
        });
        // The rooms just expired lose their entries now: not orphans.
        let unleased: HashSet<RoomId> = with_entries
            .iter()
            .copied()
            .filter(|r| !self.held.contains_key(r) && !drops.iter().any(|d| d.room == *r))
            .collect();
        self.orphans.retain(|r, _| unleased.contains(r));
        for room in unleased {
            let since = *self.orphans.entry(room).or_insert(now);
            if now.saturating_duration_since(since) >= self.ttl {
                tracing::info!(%room, "dropping connections of a room that holds no lease");
                self.orphans.remove(&room);
                drops.push(RoomDrop {
                    room,
                    closed_ms: now_ms,
                });
            }
        }
        drops
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);
    const MS: Duration = Duration::from_millis(1);
    /// The wall clock (ms since the epoch) at the start of every test.
    const T0: i64 = 1_700_000_000_000;

    fn lease(room: u32, instance: u64) -> RoomLease {
        RoomLease {
            room: RoomId(room),
            addr: format!("10.0.0.{instance}:7000"),
            instance,
            connections: 0,
        }
    }

    /// The monotonic and wall time of a test that started at `start`: the
    /// wall clock follows tokio's (paused) clock.
    fn at(start: Instant) -> (Instant, i64) {
        let now = Instant::now();
        let since = i64::try_from((now - start).as_millis()).unwrap();
        (now, T0 + since)
    }

    fn drop_of(room: u32, closed_ms: i64) -> RoomDrop {
        RoomDrop {
            room: RoomId(room),
            closed_ms,
        }
    }

    fn conflict_of(instance: u64) -> LeaseOutcome {
        LeaseOutcome::Conflict {
            holder_addr: format!("10.0.0.{instance}:7000"),
        }
    }

    fn ttl_ms() -> i64 {
        i64::try_from(TTL.as_millis()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn first_lease_is_fresh_and_a_renewal_within_the_ttl_is_renewed() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        // Fresh: any entries the room had here are dropped (closed now).
        assert_eq!(
            t.lease(lease(1, 7), now, ms),
            (LeaseOutcome::Fresh, Some(drop_of(1, T0)))
        );
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let (now, ms) = at(start);
            assert_eq!(t.lease(lease(1, 7), now, ms), (LeaseOutcome::Renewed, None));
        }
        let (now, _) = at(start);
        assert_eq!(t.members(now), vec![lease(1, 7)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_updates_the_lease() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        t.lease(lease(1, 7), now, ms);
        let moved = RoomLease {
            addr: "10.9.9.9:7000".to_owned(),
            connections: 42,
            ..lease(1, 7)
        };
        assert_eq!(t.lease(moved.clone(), now, ms).0, LeaseOutcome::Renewed);
        assert_eq!(t.members(now), vec![moved]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_not_renewed_for_the_ttl_expires_at_the_sweep() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        t.lease(lease(1, 7), now, ms);
        t.lease(lease(2, 8), now, ms);
        tokio::time::advance(Duration::from_secs(1)).await;
        let (now, ms) = at(start);
        t.lease(lease(2, 8), now, ms); // room 2 renews, room 1 does not

        tokio::time::advance(TTL - Duration::from_secs(1) - MS).await;
        let (now, ms) = at(start);
        assert_eq!(t.members(now).len(), 2, "live up to the ttl");
        assert_eq!(t.sweep(now, ms, &[RoomId(1), RoomId(2)]), vec![]);

        tokio::time::advance(MS).await;
        let (now, ms) = at(start);
        assert_eq!(t.members(now), vec![lease(2, 8)], "expired at the ttl");
        // Its entries close when the lease expired.
        assert_eq!(
            t.sweep(now, ms, &[RoomId(1), RoomId(2)]),
            vec![drop_of(1, T0 + ttl_ms())]
        );
        // Gone from the table: the next sweep has nothing left to drop.
        assert_eq!(t.sweep(now, ms, &[RoomId(2)]), vec![]);
        assert_eq!(t.members(now), vec![lease(2, 8)]);
    }

    #[tokio::test(start_paused = true)]
    async fn renewed_just_before_expiry_it_is_kept() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        t.lease(lease(1, 7), now, ms);
        tokio::time::advance(TTL - MS).await;
        let (now, ms) = at(start);
        assert_eq!(t.lease(lease(1, 7), now, ms), (LeaseOutcome::Renewed, None));
        // The renewal counts from now: a sweep one full TTL after the first
        // lease finds it live.
        tokio::time::advance(Duration::from_secs(2)).await;
        let (now, ms) = at(start);
        assert_eq!(t.sweep(now, ms, &[RoomId(1)]), vec![]);
        assert_eq!(t.members(now), vec![lease(1, 7)]);
        // And it expires a TTL after the renewal.
        tokio::time::advance(TTL - Duration::from_secs(2)).await;
        let (now, ms) = at(start);
        assert_eq!(
            t.sweep(now, ms, &[RoomId(1)]),
            vec![drop_of(1, T0 + 2 * ttl_ms() - 1)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn renewed_just_after_expiry_it_is_fresh_and_the_old_entries_go() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        t.lease(lease(1, 7), now, ms);
        tokio::time::advance(TTL + MS).await;
        let (now, ms) = at(start);
        // Not swept yet: the renewal itself finds it expired and starts clean,
        // closing the old entries when the old lease expired (not now).
        assert_eq!(
            t.lease(lease(1, 7), now, ms),
            (LeaseOutcome::Fresh, Some(drop_of(1, T0 + ttl_ms())))
        );
        tokio::time::advance(MS).await;
        let (now, ms) = at(start);
        assert_eq!(t.lease(lease(1, 7), now, ms), (LeaseOutcome::Renewed, None));
        assert_eq!(t.sweep(now, ms, &[RoomId(1)]), vec![]);
    }

    #[tokio::test(start_paused = true)]
    async fn another_instance_conflicts_until_the_holder_expires() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        t.lease(lease(1, 7), now, ms);
        assert_eq!(t.lease(lease(1, 8), now, ms), (conflict_of(7), None));
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(900)).await;
            let (now, ms) = at(start);
            assert_eq!(t.lease(lease(1, 8), now, ms), (conflict_of(7), None));
        }
        // The newcomer's tries neither extended nor took the lease.
        let (now, _) = at(start);
        assert_eq!(t.members(now), vec![lease(1, 7)]);
        tokio::time::advance(TTL - Duration::from_millis(2700)).await;
        let (now, ms) = at(start);
        assert_eq!(
            t.lease(lease(1, 8), now, ms),
            (LeaseOutcome::Fresh, Some(drop_of(1, T0 + ttl_ms())))
        );
        assert_eq!(t.members(now), vec![lease(1, 8)]);
        // Now the old holder is the one refused.
        assert_eq!(t.lease(lease(1, 7), now, ms), (conflict_of(8), None));
    }

    #[tokio::test(start_paused = true)]
    async fn release_by_the_holder_frees_the_room_at_once() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        t.lease(lease(1, 7), now, ms);
        tokio::time::advance(Duration::from_secs(1)).await;
        let (now, ms) = at(start);
        assert_eq!(
            t.release(RoomId(1), Some(7), now, ms),
            Some(drop_of(1, T0 + 1000))
        );
        assert_eq!(t.members(now), vec![]);
        assert_eq!(t.sweep(now, ms, &[]), vec![]);
        // Another instance takes it without waiting for the TTL.
        assert_eq!(t.lease(lease(1, 8), now, ms).0, LeaseOutcome::Fresh);
    }

    #[tokio::test(start_paused = true)]
    async fn release_by_another_instance_does_nothing_while_the_lease_is_live() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        t.lease(lease(1, 7), now, ms);
        tokio::time::advance(TTL - MS).await;
        let (now, ms) = at(start);
        assert_eq!(t.release(RoomId(1), Some(8), now, ms), None);
        assert_eq!(t.members(now), vec![lease(1, 7)]);
        assert_eq!(t.lease(lease(1, 7), now, ms).0, LeaseOutcome::Renewed);
        assert_eq!(t.lease(lease(1, 8), now, ms).0, conflict_of(7));
    }

    #[tokio::test(start_paused = true)]
    async fn release_by_another_instance_frees_an_expired_lease() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        t.lease(lease(1, 7), now, ms);
        tokio::time::advance(TTL).await;
        let (now, ms) = at(start);
        assert_eq!(t.release(RoomId(1), Some(8), now, ms), Some(drop_of(1, ms)));
        // Removed, not merely expired: the sweep finds nothing.
        assert_eq!(t.sweep(now, ms, &[]), vec![]);
    }

    #[tokio::test(start_paused = true)]
    async fn release_without_instance_frees_whoever_holds_it() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        t.lease(lease(1, 7), now, ms);
        assert_eq!(t.release(RoomId(1), None, now, ms), Some(drop_of(1, ms)));
        assert_eq!(t.members(now), vec![]);
        // A room with no lease at all: its entries are dropped all the same.
        assert_eq!(t.release(RoomId(2), Some(9), now, ms), Some(drop_of(2, ms)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_register_answers_fresh_to_a_renewal() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        t.lease(lease(1, 7), now, ms);
        tokio::time::advance(Duration::from_secs(1)).await;
        let (now, ms) = at(start);
        assert_eq!(t.lease(lease(1, 7), now, ms).0, LeaseOutcome::Renewed);
        // The register restarts: a new, empty table.
        let mut t = LeaseTable::new(TTL);
        tokio::time::advance(Duration::from_secs(1)).await;
        let (now, ms) = at(start);
        assert_eq!(
            t.lease(lease(1, 7), now, ms),
            (LeaseOutcome::Fresh, Some(drop_of(1, ms))),
            "the room must learn to refill"
        );
        assert_eq!(t.lease(lease(1, 7), now, ms).0, LeaseOutcome::Renewed);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_without_a_lease_are_dropped_after_a_ttl_of_sweeps() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        t.lease(lease(1, 7), now, ms);
        // Room 1 is leased: never an orphan. Room 2 has entries, no lease.
        let rooms = [RoomId(1), RoomId(2)];
        assert_eq!(t.sweep(now, ms, &rooms), vec![]);
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let (now, ms) = at(start);
            t.lease(lease(1, 7), now, ms);
            assert_eq!(t.sweep(now, ms, &rooms), vec![]);
        }
        tokio::time::advance(Duration::from_secs(1) - MS).await;
        let (now, ms) = at(start);
        t.lease(lease(1, 7), now, ms);
        assert_eq!(t.sweep(now, ms, &rooms), vec![], "not yet a whole ttl");
        tokio::time::advance(MS).await;
        let (now, ms) = at(start);
        assert_eq!(t.sweep(now, ms, &rooms), vec![drop_of(2, ms)]);
        // Forgotten once dropped: if it shows entries again, a new TTL starts.
        assert_eq!(t.sweep(now, ms, &rooms), vec![]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_orphan_that_takes_a_lease_or_loses_its_entries_starts_over() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        assert_eq!(t.sweep(now, ms, &[RoomId(1), RoomId(2)]), vec![]);
        tokio::time::advance(Duration::from_secs(2)).await;
        let (now, ms) = at(start);
        // Room 1 takes a lease, room 2's entries went away.
        t.lease(lease(1, 7), now, ms);
        assert_eq!(t.sweep(now, ms, &[RoomId(1)]), vec![]);
        assert_eq!(t.release(RoomId(1), Some(7), now, ms), Some(drop_of(1, ms)));
        // Both have entries again and no lease: counted from this sweep.
        tokio::time::advance(Duration::from_secs(1)).await;
        let (now, ms) = at(start);
        assert_eq!(t.sweep(now, ms, &[RoomId(1), RoomId(2)]), vec![]);
        tokio::time::advance(TTL - MS).await;
        let (now, ms) = at(start);
        assert_eq!(t.sweep(now, ms, &[RoomId(1), RoomId(2)]), vec![]);
        tokio::time::advance(MS).await;
        let (now, ms) = at(start);
        let mut dropped = t.sweep(now, ms, &[RoomId(1), RoomId(2)]);
        dropped.sort_by_key(|d| d.room);
        assert_eq!(dropped, vec![drop_of(1, ms), drop_of(2, ms)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_room_just_expired_is_not_counted_as_an_orphan() {
        let start = Instant::now();
        let mut t = LeaseTable::new(TTL);
        let (now, ms) = at(start);
        t.lease(lease(1, 7), now, ms);
        tokio::time::advance(TTL).await;
        let (now, ms) = at(start);
        // The expiry drops its entries; it is no orphan of this sweep.
        assert_eq!(
            t.sweep(now, ms, &[RoomId(1)]),
            vec![drop_of(1, T0 + ttl_ms())]
        );
        // Entries that show up afterwards (a late `Connected`) wait a whole
        // TTL from the next sweep that sees them.
        tokio::time::advance(Duration::from_secs(1)).await;
        let (now, ms) = at(start);
        assert_eq!(t.sweep(now, ms, &[RoomId(1)]), vec![]);
        tokio::time::advance(TTL - MS).await;
        let (now, ms) = at(start);
        assert_eq!(t.sweep(now, ms, &[RoomId(1)]), vec![]);
        tokio::time::advance(MS).await;
        let (now, ms) = at(start);
        assert_eq!(t.sweep(now, ms, &[RoomId(1)]), vec![drop_of(1, ms)]);
    }

    #[test]
    fn a_refill_lists_its_chunks_until_the_last() {
        let mut t = LeaseTable::new(TTL);
        let c = |n| ConnId::new(RoomId(1), n);
        t.list(RoomId(1), [c(1), c(2)], true);
        t.list(RoomId(1), [c(3)], false);
        t.list(RoomId(2), [ConnId::new(RoomId(2), 1)], true);
        assert_eq!(t.end_listing(RoomId(1)), HashSet::from([c(1), c(2), c(3)]));
        // Ended: a second end finds nothing.
        assert_eq!(t.end_listing(RoomId(1)), HashSet::new());
        // A new `first` forgets an unfinished listing.
        t.list(RoomId(1), [c(1)], true);
        t.list(RoomId(1), [c(4)], true);
        assert_eq!(t.end_listing(RoomId(1)), HashSet::from([c(4)]));
        assert_eq!(
            t.end_listing(RoomId(2)),
            HashSet::from([ConnId::new(RoomId(2), 1)])
        );
    }
}
