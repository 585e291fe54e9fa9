//! The room's half of the membership protocol against real register
//! services, in process (their link `Service::call`, no sockets), with
//! tokio's paused time: lease expiry, renewal under delay, refill after a
//! register restart, a room id held by another instance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use link::Service;
use parking_lot::Mutex;
use proto::{ConnId, RoomId, UserId};
use register::{
    ConnInfo, DirError, LeaseOutcome, RegisterReq, RegisterResp, RegisterService, RoomLease,
};
use room::{Room, RoomConfig};

use super::{Membership, Refills, Registers, RenewOn};

const TTL: Duration = Duration::from_secs(3);

/// Register services in process: restartable, reachable or not, slow or not.
struct InProcess {
    regs: Mutex<Vec<Arc<RegisterService>>>,
    down: Vec<AtomicBool>,
    delay: Mutex<Duration>,
    /// Every sync chunk sent: (register, connections, first, last).
    syncs: Mutex<Vec<(usize, usize, bool, bool)>>,
}

impl InProcess {
    fn new(n: usize) -> Arc<InProcess> {
        Arc::new(InProcess {
            regs: Mutex::new((0..n).map(|_| RegisterService::new(TTL)).collect()),
            down: (0..n).map(|_| AtomicBool::new(false)).collect(),
            delay: Mutex::new(Duration::ZERO),
            syncs: Mutex::new(Vec::new()),
        })
    }

    fn reg(&self, p: usize) -> Arc<RegisterService> {
        self.regs.lock()[p].clone()
    }

    /// Register `p` restarts empty.
    fn restart(&self, p: usize) {
        self.regs.lock()[p] = RegisterService::new(TTL);
    }

    fn syncs_of(&self, p: usize) -> usize {
        self.syncs.lock().iter().filter(|s| s.0 == p && s.3).count()
    }

    async fn call(&self, p: usize, req: RegisterReq) -> Result<RegisterResp, DirError> {
        if self.down[p].load(Ordering::SeqCst) {
            return Err(DirError::Link {
                partition: p,
                source: link::LinkError::Unavailable {
                    service: "register",
                    addr: format!("register {p} (down)"),
                },
            });
        }
        let delay = *self.delay.lock();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(self.reg(p).call(req).await)
    }
}

#[async_trait]
impl Registers for InProcess {
    fn partitions(&self) -> usize {
        self.down.len()
    }

    fn partition_of(&self, user: &UserId) -> usize {
        let n = u32::try_from(self.down.len()).unwrap_or(1);
        register::ring::partition(user, n) as usize
    }

    async fn lease(&self, lease: &RoomLease) -> Vec<Result<LeaseOutcome, DirError>> {
        let calls = (0..self.down.len()).map(|p| async move {
            match self.call(p, RegisterReq::Lease(lease.clone())).await? {
                RegisterResp::Lease(o) => Ok(o),
                other => Err(DirError::BadAnswer {
                    partition: p,
                    addr: "test".to_owned(),
                    answer: format!("{other:?}"),
                }),
            }
        });
        futures_util::future::join_all(calls).await
    }

    async fn sync(
        &self,
        partition: usize,
        room: RoomId,
        conns: Vec<ConnInfo>,
        first: bool,
        last: bool,
        keep_since: i64,
    ) -> Result<(), DirError> {
        let n = conns.len();
        let req = RegisterReq::Sync {
            room,
            conns,
            first,
            last,
            keep_since,
        };
        self.call(partition, req).await?;
        self.syncs.lock().push((partition, n, first, last));
        Ok(())
    }

    async fn disconnected(&self, user: &UserId, conn: ConnId, now_ms: i64) -> Result<(), DirError> {
        let req = RegisterReq::Disconnected {
            user: user.clone(),
            conn,
            now_ms,
        };
        self.call(self.partition_of(user), req).await.map(|_| ())
    }

    async fn release(&self, room: RoomId, instance: u64) -> Result<(), DirError> {
        for p in 0..self.down.len() {
            let req = RegisterReq::Release {
                room,
                instance: Some(instance),
            };
            self.call(p, req).await?;
        }
        Ok(())
    }
}

/// A room on an embedded store in `data`.
fn room(id: u32, data: &tempfile::TempDir) -> Room {
    let store = saver::EmbeddedStore::open(&data.path().join("s.redb")).expect("store");
    let dir = Arc::new(register::LocalDirectory::new());
    let backend = crate::backend::LocalBackend::new(
        RoomId(id),
        crate::backend::Presence::directory(dir, None),
        Arc::new(store),
    );
    Room::new(
        RoomConfig::new(RoomId(id), Arc::from(&b"0123456789abcdef"[..])),
        Arc::new(backend),
    )
}

fn lease(id: u32, instance: u64) -> RoomLease {
    RoomLease {
        room: RoomId(id),
        addr: format!("10.0.0.{instance}:7790"),
        instance,
        connections: 0,
    }
}

/// A membership and the data directory its room's store lives in.
struct Joined {
    m: Membership,
    _data: tempfile::TempDir,
}

async fn join(regs: &Arc<InProcess>, id: u32, instance: u64) -> anyhow::Result<Joined> {
    let data = tempfile::tempdir()?;
    let r: Arc<dyn Registers> = regs.clone();
    let refills = Refills::new(r.partitions());
    let m = Membership::join(
        r,
        room(id, &data),
        lease(id, instance),
        refills,
        RenewOn::Runtime,
    )
    .await?;
    Ok(Joined { m, _data: data })
}

/// Who holds `id` at register `p`, by instance.
fn holder(regs: &InProcess, p: usize, id: u32) -> Option<u64> {
    regs.reg(p)
        .members()
        .into_iter()
        .find(|l| l.room == RoomId(id))
        .map(|l| l.instance)
}

async fn settle(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn join_takes_the_lease_and_refills_every_register() {
    let regs = InProcess::new(2);
    let m = join(&regs, 5, 11).await.expect("join");
    settle(Duration::from_millis(1500)).await;
    for p in 0..2 {
        assert_eq!(holder(&regs, p, 5), Some(11), "register {p}");
        assert_eq!(regs.syncs_of(p), 1, "register {p} refilled once at start");
    }
    m.m.leave(Duration::from_secs(1)).await;
    for p in 0..2 {
        assert_eq!(holder(&regs, p, 5), None, "released at register {p}");
    }
}

#[tokio::test(start_paused = true)]
async fn renewals_keep_the_lease_without_refills() {
    let regs = InProcess::new(2);
    let m = join(&regs, 5, 11).await.expect("join");
    settle(Duration::from_secs(20)).await;
    for p in 0..2 {
        assert_eq!(holder(&regs, p, 5), Some(11));
        assert_eq!(regs.syncs_of(p), 1, "no refill while renewals arrive");
    }
    m.m.leave(Duration::from_secs(1)).await;
}

/// Answers slower than the renewal period but within the TTL keep the
/// lease; answers slower than the TTL let it expire, and the renewal that
/// finally arrives is granted fresh: the room refills that register.
#[tokio::test(start_paused = true)]
async fn renewal_under_delay() {
    let regs = InProcess::new(1);
    let m = join(&regs, 5, 11).await.expect("join");
    settle(Duration::from_secs(2)).await;
    assert_eq!(regs.syncs_of(0), 1);
    *regs.delay.lock() = Duration::from_millis(1500);
    settle(Duration::from_secs(15)).await;
    assert_eq!(
        regs.syncs_of(0),
        1,
        "1.5 s answers within a 3 s TTL: no expiry"
    );
    assert_eq!(holder(&regs, 0, 5), Some(11));
    *regs.delay.lock() = Duration::from_secs(4);
    settle(Duration::from_secs(12)).await;
    *regs.delay.lock() = Duration::ZERO;
    settle(Duration::from_secs(3)).await;
    assert!(
        regs.syncs_of(0) >= 2,
        "an expired lease renewed fresh is refilled"
    );
    assert_eq!(holder(&regs, 0, 5), Some(11));
    m.m.leave(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_register_is_refilled() {
    let regs = InProcess::new(2);
    let m = join(&regs, 5, 11).await.expect("join");
    settle(Duration::from_secs(2)).await;
    regs.restart(1);
    assert_eq!(
        holder(&regs, 1, 5),
        None,
        "a restarted register knows nothing"
    );
    settle(Duration::from_secs(2)).await;
    assert_eq!(holder(&regs, 1, 5), Some(11), "the renewal leased it again");
    assert_eq!(regs.syncs_of(1), 2, "and the room refilled it");
    assert_eq!(regs.syncs_of(0), 1, "the other register was left alone");
    m.m.leave(Duration::from_secs(1)).await;
}

/// A register that cannot be reached for a while is refilled when it
/// answers again (its lease may have expired meanwhile).
#[tokio::test(start_paused = true)]
async fn an_unreachable_register_is_refilled_when_back() {
    let regs = InProcess::new(2);
    let m = join(&regs, 5, 11).await.expect("join");
    settle(Duration::from_secs(2)).await;
    regs.down[0].store(true, Ordering::SeqCst);
    settle(Duration::from_secs(5)).await;
    regs.down[0].store(false, Ordering::SeqCst);
    settle(Duration::from_secs(3)).await;
    assert_eq!(holder(&regs, 0, 5), Some(11));
    assert!(regs.syncs_of(0) >= 2, "refilled after the outage");
    m.m.leave(Duration::from_secs(1)).await;
}

/// A room id held by a live instance: the newcomer waits for its lease to
/// expire, then takes the id.
#[tokio::test(start_paused = true)]
async fn a_taken_id_is_waited_for() {
    let regs = InProcess::new(1);
    let old = lease(5, 7);
    assert!(matches!(
        regs.reg(0).call(RegisterReq::Lease(old)).await,
        RegisterResp::Lease(LeaseOutcome::Fresh)
    ));
    let started = tokio::time::Instant::now();
    let m = join(&regs, 5, 11)
        .await
        .expect("join once the old lease expired");
    let waited = started.elapsed();
    assert!(
        waited >= TTL - Duration::from_millis(1),
        "joined after {waited:?}"
    );
    assert!(
        waited < TTL + Duration::from_secs(2),
        "joined after {waited:?}"
    );
    assert_eq!(holder(&regs, 0, 5), Some(11));
    m.m.leave(Duration::from_secs(1)).await;
}

/// An id another live instance keeps renewing is refused at start-up.
#[tokio::test(start_paused = true)]
async fn an_id_kept_by_another_room_fails_the_start() {
    let regs = InProcess::new(1);
    let other = regs.reg(0);
    assert!(matches!(
        other.call(RegisterReq::Lease(lease(5, 7))).await,
        RegisterResp::Lease(LeaseOutcome::Fresh)
    ));
    let keeper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = other.call(RegisterReq::Lease(lease(5, 7))).await;
        }
    });
    let e = join(&regs, 5, 11).await.err().expect("refused");
    assert!(e.to_string().contains("held by another live room"), "{e}");
    keeper.abort();
}

/// Another instance that takes the id after this room's lease expired
/// (a partition) is noticed at the next renewal: `lost` fires.
#[tokio::test(start_paused = true)]
async fn a_lost_id_is_noticed() {
    let regs = InProcess::new(1);
    let m = join(&regs, 5, 11).await.expect("join");
    let lost = m.m.lost();
    regs.down[0].store(true, Ordering::SeqCst);
    settle(Duration::from_secs(4)).await;
    assert!(matches!(
        regs.reg(0).call(RegisterReq::Lease(lease(5, 7))).await,
        RegisterResp::Lease(LeaseOutcome::Fresh)
    ));
    regs.down[0].store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(3), lost.cancelled())
        .await
        .expect("lost fires at the next renewal");
    m.m.leave(Duration::from_secs(1)).await;
    assert_eq!(
        holder(&regs, 0, 5),
        Some(7),
        "leaving does not free another's lease"
    );
}

/// A refill that fails (its register is down) is retried once a second,
/// not in a loop: with paused time, a retry loop that never sleeps would
/// never let the clock move and this test would hang.
#[tokio::test(start_paused = true)]
async fn a_failed_refill_waits_a_second_before_the_next_try() {
    let regs = InProcess::new(1);
    regs.down[0].store(true, Ordering::SeqCst);
    let data = tempfile::tempdir().expect("tempdir");
    let r: Arc<dyn Registers> = regs.clone();
    let refills = Refills::new(1);
    // The start-up lease fails (unreachable), so nothing is due yet; a
    // fault reported now makes a refill due while the register is down.
    let m = Membership::join(
        r,
        room(5, &data),
        lease(5, 11),
        refills.clone(),
        RenewOn::Runtime,
    )
    .await
    .expect("an unreachable register does not block the start");
    refills.mark_fault(0, 0);
    settle(Duration::from_secs(5)).await;
    assert_eq!(regs.syncs_of(0), 0, "nothing reached a down register");
    regs.down[0].store(false, Ordering::SeqCst);
    settle(Duration::from_secs(3)).await;
    assert!(regs.syncs_of(0) >= 1, "refilled once it answered");
    assert_eq!(holder(&regs, 0, 5), Some(11));
    m.leave(Duration::from_secs(1)).await;
}
