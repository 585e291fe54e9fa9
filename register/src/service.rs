//! The register process: [`RegisterService`], a [`LocalDirectory`] of this
//! partition's users plus the room leases ([`LeaseTable`]), served over
//! links.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use proto::RoomId;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lease::{LeaseTable, RoomDrop};
use crate::wire::{LeaseOutcome, RegisterReq, RegisterResp, RoomLease, SERVICE};
use crate::{ConnInfo, LocalDirectory};

fn now_ms() -> i64 {
    proto::unix_ms(std::time::SystemTime::now())
}

/// The register: a [`LocalDirectory`] for this partition's users plus the
/// room leases, served over links (`NAME = "register"`, ordered so that a
/// room's `Connected` never overtakes its `Disconnected`).
#[derive(Debug)]
pub struct RegisterService {
    dir: LocalDirectory,
    /// Every change of a lease and every drop of a room's entries happens
    /// under this lock, so an expiry sweep can not interleave with a
    /// lease + sync of the same room and wipe the fresh entries.
    table: Mutex<LeaseTable>,
}

impl RegisterService {
    /// A register with an empty directory whose leases last `lease_ttl`.
    pub fn new(lease_ttl: Duration) -> Arc<Self> {
        Arc::new(RegisterService {
            dir: LocalDirectory::new(),
            table: Mutex::new(LeaseTable::new(lease_ttl)),
        })
    }

    /// The directory of this register's users.
    pub fn directory(&self) -> &LocalDirectory {
        &self.dir
    }

    /// The lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        self.table.lock().ttl()
    }

    /// The live leases, sorted by room.
    pub fn members(&self) -> Vec<RoomLease> {
        self.table.lock().members(Instant::now())
    }

    /// Starts the expiry sweep (every lease_ttl/4): drops expired leases and
    /// every connection of those rooms (online time counted to expiry). It
    /// also drops entries of rooms that have held no lease for a whole TTL
    /// (a `Connected` that arrived after its room's lease had expired).
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn spawn_sweeper(self: &Arc<Self>, stop: CancellationToken) -> JoinHandle<()> {
        let svc = Arc::clone(self);
        let period = (self.lease_ttl() / 4).max(Duration::from_millis(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                svc.sweep(Instant::now());
            }
        })
    }

    /// One pass of the sweeper at `now`.
    fn sweep(&self, now: Instant) {
        let mut table = self.table.lock();
        let with_entries: Vec<RoomId> = self
            .dir
            .room_list()
            .into_iter()
            .filter(|r| r.connections > 0)
            .map(|r| r.room)
            .collect();
        for d in table.sweep(now, now_ms(), &with_entries) {
            self.apply(d);
        }
    }

    fn lease(&self, lease: RoomLease) -> LeaseOutcome {
        let mut table = self.table.lock();
        let (outcome, dropped) = table.lease(lease, Instant::now(), now_ms());
        if let Some(d) = dropped {
            self.apply(d);
        }
        outcome
    }

    fn sync(
        &self,
        room: RoomId,
        conns: Vec<ConnInfo>,
        first: bool,
        last: bool,
        keep_since: i64,
    ) -> RegisterResp {
        if let Some(c) = conns.iter().find(|c| c.room != room) {
            return RegisterResp::Err(format!(
                "sync of room {room} carries connection {} of room {}",
                c.conn, c.room
            ));
        }
        let mut table = self.table.lock();
        table.list(room, conns.iter().map(|c| c.conn), first);
        for c in conns {
            self.dir.add(c);
        }
        if last {
            let keep = table.end_listing(room);
            self.dir.prune_room(room, &keep, keep_since, now_ms());
        }
        RegisterResp::Done
    }

    fn release(&self, room: RoomId, instance: Option<u64>) {
        let mut table = self.table.lock();
        if let Some(d) = table.release(room, instance, Instant::now(), now_ms()) {
            self.apply(d);
        }
    }

    /// Drops a room's entries; called with the table locked.
    fn apply(&self, d: RoomDrop) {
        self.dir.clear_room(d.room, d.closed_ms);
    }
}

#[async_trait]
impl link::Service for RegisterService {
    type Req = RegisterReq;
    type Resp = RegisterResp;
    const NAME: &'static str = SERVICE;
    const ORDERED: bool = true;

    async fn call(&self, req: RegisterReq) -> RegisterResp {
        match req {
            RegisterReq::Connected(c) => {
                self.dir.add(c);
                RegisterResp::Done
            }
            RegisterReq::Disconnected { user, conn, now_ms } => {
                self.dir.remove(&user, conn, now_ms);
                RegisterResp::Done
            }
            RegisterReq::Lookup(users) => {
                RegisterResp::Lookup(users.iter().map(|u| self.dir.get(u)).collect())
            }
            RegisterReq::OnlineMs { user, now_ms } => {
                RegisterResp::OnlineMs(self.dir.online(&user, now_ms))
            }
            RegisterReq::Lease(l) => RegisterResp::Lease(self.lease(l)),
            RegisterReq::Sync {
                room,
                conns,
                first,
                last,
                keep_since,
            } => self.sync(room, conns, first, last, keep_since),
            RegisterReq::Release { room, instance } => {
                self.release(room, instance);
                RegisterResp::Done
            }
            RegisterReq::Members => RegisterResp::Members(self.members()),
            RegisterReq::Stats => RegisterResp::Stats(self.dir.totals()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use link::Service as _;
    use proto::{ConnId, UserId};

    use super::*;
    use crate::DirStats;

    const TTL: Duration = Duration::from_secs(3);
    const MS: Duration = Duration::from_millis(1);

    fn lease(room: u32, instance: u64) -> RoomLease {
        RoomLease {
            room: RoomId(room),
            addr: format!("10.0.0.{instance}:7000"),
            instance,
            connections: 1,
        }
    }

    fn conn(user: &str, room: u32, n: u64, since: i64) -> ConnInfo {
        ConnInfo {
            user: UserId::new(user),
            conn: ConnId::new(RoomId(room), n),
            room: RoomId(room),
            device: None,
            since,
        }
    }

    async fn take(svc: &RegisterService, l: RoomLease) -> LeaseOutcome {
        match svc.call(RegisterReq::Lease(l)).await {
            RegisterResp::Lease(o) => o,
            other => panic!("lease answered {other:?}"),
        }
    }

    async fn connect(svc: &RegisterService, c: ConnInfo) {
        assert_eq!(
            svc.call(RegisterReq::Connected(c)).await,
            RegisterResp::Done
        );
    }

    async fn release(svc: &RegisterService, room: u32, instance: Option<u64>) {
        let req = RegisterReq::Release {
            room: RoomId(room),
            instance,
        };
        assert_eq!(svc.call(req).await, RegisterResp::Done);
    }

    /// The connections the register knows of `user`.
    fn conns_of(svc: &RegisterService, user: &str) -> Vec<ConnId> {
        svc.directory()
            .get(&UserId::new(user))
            .into_iter()
            .map(|c| c.conn)
            .collect()
    }

    /// Lets the spawned sweeper run after the paused clock moved.
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_drops_an_expired_room_and_its_connections() {
        let svc = RegisterService::new(TTL);
        let stop = CancellationToken::new();
        let sweeper = svc.spawn_sweeper(stop.clone());
        let since = now_ms() - 1_000;
        assert_eq!(take(&svc, lease(1, 7)).await, LeaseOutcome::Fresh);
        assert_eq!(take(&svc, lease(2, 8)).await, LeaseOutcome::Fresh);
        connect(&svc, conn("ann", 1, 1, since)).await;
        connect(&svc, conn("bob", 1, 2, since)).await;
        connect(&svc, conn("ann", 2, 1, since)).await;

        // Room 2 renews every second, room 1 never does.
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(take(&svc, lease(2, 8)).await, LeaseOutcome::Renewed);
            settle().await;
        }
        tokio::time::advance(Duration::from_secs(1) - MS).await;
        settle().await;
        assert_eq!(svc.members().len(), 2, "live up to the ttl");
        assert_eq!(conns_of(&svc, "bob"), vec![ConnId::new(RoomId(1), 2)]);

        tokio::time::advance(MS).await;
        assert_eq!(svc.members(), vec![lease(2, 8)], "expired at the ttl");
        // The sweeper, every ttl/4, drops its connections by the next tick.
        tokio::time::advance(TTL / 4).await;
        settle().await;
        assert_eq!(svc.members(), vec![lease(2, 8)]);
        assert_eq!(conns_of(&svc, "bob"), vec![]);
        assert_eq!(conns_of(&svc, "ann"), vec![ConnId::new(RoomId(2), 1)]);
        assert_eq!(svc.directory().room_connections(RoomId(1)), 0);
        assert_eq!(
            svc.directory().totals(),
            DirStats {
                connections: 1,
                users: 1
            }
        );
        // Bob's online time ran to the lease's expiry: the second before
        // the lease plus the TTL (the wall clock moves on its own too).
        let online = svc.directory().online(&UserId::new("bob"), now_ms());
        assert!((4_000..5_000).contains(&online), "online {online} ms");

        stop.cancel();
        sweeper.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn renewed_just_before_expiry_the_connections_stay() {
        let svc = RegisterService::new(TTL);
        take(&svc, lease(1, 7)).await;
        connect(&svc, conn("ann", 1, 1, now_ms())).await;
        tokio::time::advance(TTL - MS).await;
        assert_eq!(take(&svc, lease(1, 7)).await, LeaseOutcome::Renewed);
        tokio::time::advance(TTL - MS).await;
        svc.sweep(Instant::now());
        assert_eq!(conns_of(&svc, "ann"), vec![ConnId::new(RoomId(1), 1)]);
        assert_eq!(svc.members(), vec![lease(1, 7)]);
    }

    #[tokio::test(start_paused = true)]
    async fn renewed_just_after_expiry_it_is_fresh_and_the_old_connections_are_gone() {
        let svc = RegisterService::new(TTL);
        take(&svc, lease(1, 7)).await;
        connect(&svc, conn("ann", 1, 1, now_ms())).await;
        tokio::time::advance(TTL).await;
        // No sweep ran: the lease itself finds it expired.
        assert_eq!(take(&svc, lease(1, 7)).await, LeaseOutcome::Fresh);
        assert_eq!(conns_of(&svc, "ann"), vec![]);
        assert_eq!(svc.directory().totals(), DirStats::default());
        // The room refills; the entries stay from then on.
        let sync = RegisterReq::Sync {
            room: RoomId(1),
            conns: vec![conn("ann", 1, 1, now_ms())],
            first: true,
            last: true,
            keep_since: now_ms(),
        };
        assert_eq!(svc.call(sync).await, RegisterResp::Done);
        tokio::time::advance(MS).await;
        assert_eq!(take(&svc, lease(1, 7)).await, LeaseOutcome::Renewed);
        svc.sweep(Instant::now());
        assert_eq!(conns_of(&svc, "ann"), vec![ConnId::new(RoomId(1), 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_instance_conflicts_until_the_holder_expires() {
        let svc = RegisterService::new(TTL);
        take(&svc, lease(1, 7)).await;
        connect(&svc, conn("ann", 1, 1, now_ms())).await;
        let conflict = LeaseOutcome::Conflict {
            holder_addr: "10.0.0.7:7000".to_owned(),
        };
        for _ in 0..2 {
            assert_eq!(take(&svc, lease(1, 8)).await, conflict);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        tokio::time::advance(Duration::from_secs(1) - MS).await;
        assert_eq!(take(&svc, lease(1, 8)).await, conflict);
        // A refused lease leaves the holder's lease and connections alone.
        assert_eq!(svc.members(), vec![lease(1, 7)]);
        assert_eq!(conns_of(&svc, "ann"), vec![ConnId::new(RoomId(1), 1)]);

        tokio::time::advance(MS).await;
        assert_eq!(take(&svc, lease(1, 8)).await, LeaseOutcome::Fresh);
        assert_eq!(svc.members(), vec![lease(1, 8)]);
        assert_eq!(conns_of(&svc, "ann"), vec![], "the old holder's entries");
    }

    #[tokio::test(start_paused = true)]
    async fn release_by_the_holder_frees_the_room_at_once() {
        let svc = RegisterService::new(TTL);
        take(&svc, lease(1, 7)).await;
        connect(&svc, conn("ann", 1, 1, now_ms())).await;
        release(&svc, 1, Some(7)).await;
        assert_eq!(svc.members(), vec![]);
        assert_eq!(conns_of(&svc, "ann"), vec![]);
        assert_eq!(take(&svc, lease(1, 8)).await, LeaseOutcome::Fresh);
    }

    #[tokio::test(start_paused = true)]
    async fn release_by_another_instance_does_nothing() {
        let svc = RegisterService::new(TTL);
        take(&svc, lease(1, 7)).await;
        connect(&svc, conn("ann", 1, 1, now_ms())).await;
        tokio::time::advance(TTL - MS).await;
        release(&svc, 1, Some(8)).await;
        assert_eq!(svc.members(), vec![lease(1, 7)]);
        assert_eq!(conns_of(&svc, "ann"), vec![ConnId::new(RoomId(1), 1)]);
        assert_eq!(take(&svc, lease(1, 7)).await, LeaseOutcome::Renewed);
        // Whoever holds it, without an instance.
        release(&svc, 1, None).await;
        assert_eq!(svc.members(), vec![]);
        assert_eq!(conns_of(&svc, "ann"), vec![]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_register_answers_fresh_to_a_renewal() {
        let svc = RegisterService::new(TTL);
        take(&svc, lease(1, 7)).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(take(&svc, lease(1, 7)).await, LeaseOutcome::Renewed);
        // Restarted: a new, empty register.
        let svc = RegisterService::new(TTL);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(take(&svc, lease(1, 7)).await, LeaseOutcome::Fresh);
        assert_eq!(take(&svc, lease(1, 7)).await, LeaseOutcome::Renewed);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_of_a_room_without_a_lease_go_after_a_ttl() {
        let svc = RegisterService::new(TTL);
        let stop = CancellationToken::new();
        let sweeper = svc.spawn_sweeper(stop.clone());
        // A late `Connected` of a room that holds no lease here.
        connect(&svc, conn("ann", 4, 1, now_ms())).await;
        settle().await; // the first sweep sees it
        tokio::time::advance(TTL - Duration::from_millis(750)).await;
        settle().await;
        assert_eq!(conns_of(&svc, "ann"), vec![ConnId::new(RoomId(4), 1)]);
        // The sweep runs every ttl/4: one after a whole TTL drops it.
        tokio::time::advance(Duration::from_millis(750)).await;
        settle().await;
        assert_eq!(conns_of(&svc, "ann"), vec![]);
        stop.cancel();
        sweeper.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_sync_with_a_connection_of_another_room_is_refused() {
        let svc = RegisterService::new(TTL);
        take(&svc, lease(1, 7)).await;
        let sync = RegisterReq::Sync {
            room: RoomId(1),
            conns: vec![conn("ann", 1, 1, 0), conn("bob", 2, 1, 0)],
            first: true,
            last: true,
            keep_since: 0,
        };
        assert!(matches!(svc.call(sync).await, RegisterResp::Err(_)));
        assert_eq!(svc.directory().totals(), DirStats::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunked_refill_removes_the_unlisted_after_the_last_chunk() {
        let svc = RegisterService::new(TTL);
        take(&svc, lease(1, 7)).await;
        let old = now_ms() - 10_000;
        connect(&svc, conn("gone", 1, 9, old)).await;
        let sync = |conns, first, last| RegisterReq::Sync {
            room: RoomId(1),
            conns,
            first,
            last,
            keep_since: old + 1,
        };
        let first = sync(vec![conn("ann", 1, 1, old)], true, false);
        assert_eq!(svc.call(first).await, RegisterResp::Done);
        assert_eq!(conns_of(&svc, "gone").len(), 1, "kept until the last chunk");
        let last = sync(vec![conn("bob", 1, 2, old)], false, true);
        assert_eq!(svc.call(last).await, RegisterResp::Done);
        assert_eq!(conns_of(&svc, "gone"), vec![]);
        assert_eq!(conns_of(&svc, "ann"), vec![ConnId::new(RoomId(1), 1)]);
        assert_eq!(conns_of(&svc, "bob"), vec![ConnId::new(RoomId(1), 2)]);
    }
}
