//! The room's half of the membership protocol (the register's half is
//! `register::lease`): take this room id's lease at every register before
//! serving, renew it every second, refill a register that lost this room's
//! connections (it restarted, or the lease expired) and resync the
//! connections of its users, and notice when another instance took the id.
//!
//! It talks to the registers through [`Registers`], which
//! [`ClusterDirectory`] implements over links; the tests run the real
//! register service in process, with tokio's paused time.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use proto::{ConnId, RoomId, UserId};
use register::{ClusterDirectory, ConnInfo, DirError, LeaseOutcome, RoomLease};
use room::Room;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How often the lease is renewed (the registers' TTL is a few times this).
const LEASE_RENEW: Duration = Duration::from_secs(1);
/// Connections per sync frame when a register is refilled.
const SYNC_CHUNK: usize = 5000;
/// Connections younger than this at snapshot time survive a refill even if
/// the snapshot missed them (see [`sync`]).
const SYNC_MARGIN_MS: i64 = 5_000;
/// Every register is refilled about this often even when nothing went
/// wrong (each time at a random point between half and one and a half
/// times this, so that rooms started together do not all send every
/// connection to the registers at the same moment).
const FULL_REFILL: Duration = Duration::from_secs(300);
/// A resync after a fault replays from this long before the fault was first
/// seen: a message may be looked up (and its delivery skipped) up to the
/// center's store timeout (5 s) after its id was taken, and clocks of
/// different hosts differ a little.
const RESYNC_MARGIN: Duration = Duration::from_secs(10);
/// Longest start-up waits for another instance's lease on this id to expire.
const CONFLICT_WAIT: Duration = Duration::from_secs(65);

/// What the membership protocol needs of the registers.
#[async_trait]
pub(crate) trait Registers: Send + Sync + 'static {
    /// How many registers (directory partitions) there are.
    fn partitions(&self) -> usize;
    /// The register that owns `user`.
    fn partition_of(&self, user: &UserId) -> usize;
    /// Renews `lease` at every register; one outcome per register.
    async fn lease(&self, lease: &RoomLease) -> Vec<Result<LeaseOutcome, DirError>>;
    /// One chunk of a refill of register `partition` (see [`ClusterDirectory::sync`]).
    async fn sync(
        &self,
        partition: usize,
        room: RoomId,
        conns: Vec<ConnInfo>,
        first: bool,
        last: bool,
        keep_since: i64,
    ) -> Result<(), DirError>;
    /// Ends a connection at its user's register.
    async fn disconnected(&self, user: &UserId, conn: ConnId, now_ms: i64) -> Result<(), DirError>;
    /// Gives the lease up at every register.
    async fn release(&self, room: RoomId, instance: u64) -> Result<(), DirError>;
}

#[async_trait]
impl Registers for ClusterDirectory {
    fn partitions(&self) -> usize {
        ClusterDirectory::partitions(self)
    }

    fn partition_of(&self, user: &UserId) -> usize {
        ClusterDirectory::partition_of(self, user)
    }

    async fn lease(&self, lease: &RoomLease) -> Vec<Result<LeaseOutcome, DirError>> {
        ClusterDirectory::lease(self, lease).await
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
        ClusterDirectory::sync(self, partition, room, conns, first, last, keep_since).await
    }

    async fn disconnected(&self, user: &UserId, conn: ConnId, now_ms: i64) -> Result<(), DirError> {
        register::Directory::disconnected(self, user, conn, now_ms).await
    }

    async fn release(&self, room: RoomId, instance: u64) -> Result<(), DirError> {
        ClusterDirectory::release(self, room, instance).await
    }
}

/// This room's membership: its lease at every register, renewed and
/// refilled by two tasks until [`Membership::leave`].
pub(crate) struct Membership {
    regs: Arc<dyn Registers>,
    lease: RoomLease,
    stop: CancellationToken,
    lost: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// The hook a room's backend calls with the user whose connect or
/// disconnect report failed: that user's register is refilled, and its
/// users' connections resynced.
pub(crate) fn dir_error_hook(
    regs: Arc<dyn Registers>,
    refills: Arc<Refills>,
) -> crate::backend::DirErrorHook {
    Arc::new(move |user: &UserId| {
        refills.mark_fault(
            regs.partition_of(user),
            unix_us(std::time::SystemTime::now()),
        )
    })
}

/// Builds, on the lease thread, the registers client that renews the lease
/// (see [`RenewOn::Thread`]).
pub(crate) type RegistersFactory = Box<dyn FnOnce() -> Arc<dyn Registers> + Send>;

/// Where the lease renewals run.
pub(crate) enum RenewOn {
    /// On the caller's runtime, over the same registers client (tests, with
    /// tokio's paused time).
    #[cfg_attr(not(test), allow(dead_code))]
    Runtime,
    /// On a thread of its own, with a runtime and registers links of its
    /// own: a room busy writing a broadcast to thousands of connections
    /// queues thousands of session tasks on its runtime, and a renewal
    /// queued behind them (on a machine shared by dozens of rooms) could
    /// wait past the lease. A thread that sleeps between renewals is woken
    /// at once by the kernel's scheduler instead.
    Thread(RegistersFactory),
}

impl Membership {
    /// Takes `lease` at every register (waiting while another live
    /// instance holds the id, see [`acquire`]), then renews (where
    /// `renew_on` says) and refills.
    ///
    /// # Errors
    /// When another instance still holds the id after [`CONFLICT_WAIT`].
    pub(crate) async fn join(
        regs: Arc<dyn Registers>,
        room: Room,
        lease: RoomLease,
        refills: Arc<Refills>,
        renew_on: RenewOn,
    ) -> anyhow::Result<Membership> {
        let pending = acquire(regs.as_ref(), &lease).await?;
        for (p, due) in pending.into_iter().enumerate() {
            if due {
                refills.mark(p);
            }
        }
        let (stop, lost) = (CancellationToken::new(), CancellationToken::new());
        let renewals = {
            let (room, lease, refills, lost, stop) = (
                room.clone(),
                lease.clone(),
                refills.clone(),
                lost.clone(),
                stop.clone(),
            );
            match renew_on {
                RenewOn::Runtime => {
                    tokio::spawn(renew(regs.clone(), room, lease, refills, lost, stop))
                }
                RenewOn::Thread(make) => tokio::task::spawn_blocking(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .thread_name("pushgate-lease")
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            error!(error = %e, "cannot start the lease thread's runtime");
                            lost.cancel();
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let regs = make();
                        renew(regs, room, lease, refills, lost, stop).await;
                    });
                }),
            }
        };
        let tasks = vec![
            renewals,
            tokio::spawn(refill(
                regs.clone(),
                room,
                lease.room,
                refills.clone(),
                stop.clone(),
            )),
        ];
        Ok(Membership {
            regs,
            lease,
            stop,
            lost,
            tasks,
        })
    }

    /// Cancelled when another instance took this room id.
    pub(crate) fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Stops renewing and refilling, and releases the lease (bounded by
    /// `limit`; registers drop the room anyway when the lease expires).
    pub(crate) async fn leave(self, limit: Duration) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let release = self.regs.release(self.lease.room, self.lease.instance);
        match tokio::time::timeout(limit, release).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "lease release failed; registers drop the room when it expires")
            }
            Err(_) => warn!("lease release timed out; registers drop the room when it expires"),
        }
    }
}

/// Takes the lease at every register before serving clients. Waits while
/// another live instance holds this id (its lease expires when it is gone);
/// a register that cannot be reached does not block start-up (the lease
/// task keeps trying and refills it when it answers). Returns, per register,
/// whether it must be sent this room's connections.
async fn acquire(dir: &dyn Registers, lease: &RoomLease) -> anyhow::Result<Vec<bool>> {
    let started = Instant::now();
    let mut said = false;
    loop {
        let outcomes = dir.lease(lease).await;
        let conflict = outcomes.iter().find_map(|o| match o {
            Ok(LeaseOutcome::Conflict { holder_addr }) => Some(holder_addr.clone()),
            _ => None,
        });
        let Some(holder) = conflict else {
            let mut pending = Vec::with_capacity(outcomes.len());
            for (p, o) in outcomes.iter().enumerate() {
                if let Err(e) = o {
                    warn!(register = p, error = %e, "register unreachable at start-up; will retry");
                }
                pending.push(matches!(o, Ok(LeaseOutcome::Fresh)));
            }
            return Ok(pending);
        };
        anyhow::ensure!(
            started.elapsed() < CONFLICT_WAIT,
            "room id {} is held by another live room at {holder}; give each room its own --id",
            lease.room
        );
        if !said {
            warn!(room = %lease.room, %holder, "room id held by another instance; waiting for its lease to expire");
            said = true;
        }
        tokio::time::sleep(LEASE_RENEW).await;
    }
}

/// A register's refill that is due.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Due {
    due: bool,
    /// After a fault: the earliest time (unix µs) live delivery to this
    /// register's users may have been skipped; its connections resync from
    /// there once the refill is done.
    fault_since_us: Option<i64>,
}

/// Registers due for a refill, shared by the lease task (which learns of
/// `Fresh` leases), failed directory reports, and the refill task.
pub(crate) struct Refills {
    due: parking_lot::Mutex<Vec<Due>>,
    wake: tokio::sync::Notify,
    /// What the lease and refill tasks did, for `/metrics`.
    pub(crate) stats: MembershipStats,
}

/// Counters of the membership protocol (see [`MembershipStats::write_metrics`]).
#[derive(Debug, Default)]
pub(crate) struct MembershipStats {
    renewals: std::sync::atomic::AtomicU64,
    renewal_failures: std::sync::atomic::AtomicU64,
    fresh: std::sync::atomic::AtomicU64,
    refills: std::sync::atomic::AtomicU64,
    fault_refills: std::sync::atomic::AtomicU64,
}

impl MembershipStats {
    fn inc(c: &std::sync::atomic::AtomicU64) {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Appends the counters in the Prometheus text format.
    pub(crate) fn write_metrics(&self, out: &mut String) {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        crate::events::write_rows(
            out,
            &[
                (
                    "pushgate_room_lease_renewals_total",
                    "counter",
                    "Lease renewals a register granted (one per register per second).",
                    get(&self.renewals),
                ),
                (
                    "pushgate_room_lease_failures_total",
                    "counter",
                    "Lease renewals that failed or timed out at a register.",
                    get(&self.renewal_failures),
                ),
                (
                    "pushgate_room_lease_fresh_total",
                    "counter",
                    "Renewals a register granted as new: it had lost this room (restart, or the lease expired), so it is refilled.",
                    get(&self.fresh),
                ),
                (
                    "pushgate_room_refills_total",
                    "counter",
                    "Registers sent this room's connections (start-up, anti-entropy every 5 minutes, after a fault).",
                    get(&self.refills),
                ),
                (
                    "pushgate_room_fault_refills_total",
                    "counter",
                    "Refills after a fault (a lost lease, a failed connect or disconnect report), followed by a resync.",
                    get(&self.fault_refills),
                ),
            ],
        );
    }
}

impl Refills {
    /// Nothing due yet, for `partitions` registers.
    pub(crate) fn new(partitions: usize) -> Arc<Refills> {
        Arc::new(Refills {
            due: parking_lot::Mutex::new(vec![Due::default(); partitions]),
            wake: tokio::sync::Notify::new(),
            stats: MembershipStats::default(),
        })
    }

    /// A refill with nothing missed (start-up, anti-entropy).
    fn mark(&self, partition: usize) {
        self.mark_due(partition, None);
    }

    /// A refill after a fault that began at `since_us` (unix µs).
    fn mark_fault(&self, partition: usize, since_us: i64) {
        self.mark_due(partition, Some(since_us));
    }

    fn mark_due(&self, partition: usize, fault_since_us: Option<i64>) {
        self.keep_due(partition, fault_since_us);
        self.wake.notify_one();
    }

    /// Due again, without waking the refill task: a refill that failed is
    /// retried at its next tick, a second later. (Waking it at once would
    /// spin a core while a register is down: a link to it fails at once.)
    fn keep_due(&self, partition: usize, fault_since_us: Option<i64>) {
        if let Some(d) = self.lock().get_mut(partition) {
            d.due = true;
            d.fault_since_us = match (d.fault_since_us, fault_since_us) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Vec<Due>> {
        // Never held across an await.
        self.due.lock()
    }

    fn take(&self) -> Vec<(usize, Option<i64>)> {
        let mut due = self.lock();
        let list = due
            .iter()
            .enumerate()
            .filter_map(|(p, d)| d.due.then_some((p, d.fault_since_us)))
            .collect();
        due.iter_mut().for_each(|d| *d = Due::default());
        list
    }
}

/// A random time between half and one and a half times `d`.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>())
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn unix_us(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Renews the lease every second until `stop`. A register that answers
/// `Fresh` is marked for a refill (done by [`refill`], so a large refill
/// never delays a renewal); `Conflict` (another instance holds the id now)
/// cancels `lost`.
async fn renew(
    dir: Arc<dyn Registers>,
    room: Room,
    mut lease: RoomLease,
    refills: Arc<Refills>,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let n = dir.partitions();
    let mut failing = vec![false; n];
    // When each register last confirmed it knew this room (unix µs): a
    // register that answers `Fresh` may have lost our entries any time after.
    let mut known_at = vec![unix_us(std::time::SystemTime::now()); n];
    let mut tick = tokio::time::interval(LEASE_RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        lease.connections = room.connections();
        let outcomes = dir.lease(&lease).await;
        let asked_at = unix_us(std::time::SystemTime::now());
        for (p, o) in outcomes.into_iter().enumerate().take(n) {
            match o {
                Ok(LeaseOutcome::Renewed) => {
                    MembershipStats::inc(&refills.stats.renewals);
                    if failing[p] {
                        // A renewal whose answer was lost may have reached
                        // the register after the lease expired and been
                        // granted `Fresh` there (entries dropped) without
                        // our seeing it: refill and resync to be safe.
                        info!(register = p, "lease renewed after failures: refilling it and resyncing its users' connections");
                        refills.mark_fault(p, known_at[p]);
                    }
                    known_at[p] = asked_at;
                }
                Ok(LeaseOutcome::Fresh) => {
                    MembershipStats::inc(&refills.stats.fresh);
                    info!(register = p, "register did not know this room (restarted or lease expired): refilling it and resyncing its users' connections");
                    refills.mark_fault(p, known_at[p]);
                    known_at[p] = asked_at;
                }
                Ok(LeaseOutcome::Conflict { holder_addr }) => {
                    error!(register = p, holder = %holder_addr, "another room took this room id after our lease expired");
                    lost.cancel();
                    return;
                }
                Err(e) => {
                    MembershipStats::inc(&refills.stats.renewal_failures);
                    if !failing[p] {
                        warn!(register = p, error = %e, "lease renewal failed; retrying every second");
                    }
                    failing[p] = true;
                    continue;
                }
            }
            failing[p] = false;
        }
    }
}

/// Refills the registers marked due, retrying failures every second, and
/// every register every [`FULL_REFILL`] (anti-entropy).
async fn refill(
    dir: Arc<dyn Registers>,
    room: Room,
    room_id: RoomId,
    refills: Arc<Refills>,
    stop: CancellationToken,
) {
    let mut next_full = Instant::now() + jittered(FULL_REFILL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = refills.wake.notified() => {}
            () = tokio::time::sleep(LEASE_RENEW) => {}
        }
        if Instant::now() >= next_full {
            next_full = Instant::now() + jittered(FULL_REFILL);
            (0..dir.partitions()).for_each(|p| refills.mark(p));
        }
        for (p, fault_since_us) in refills.take() {
            if !sync(&dir, &room, room_id, p).await {
                refills.keep_due(p, fault_since_us);
                continue;
            }
            MembershipStats::inc(&refills.stats.refills);
            if let Some(since) = fault_since_us {
                MembershipStats::inc(&refills.stats.fault_refills);
                // The register knows every connection again: from now on
                // nothing is skipped, so a replay from before the fault
                // (started now, ahead of anything newer) closes the gap.
                let from = since.saturating_sub(micros(RESYNC_MARGIN)).max(0);
                let after = proto::MsgId(idgen::make_id(from, 0).0.saturating_sub(1));
                let n = room.resync_where(|u| dir.partition_of(u) == p, after);
                info!(
                    register = p,
                    connections = n,
                    "connections resynced after the register was refilled"
                );
            }
        }
    }
}

/// Sends register `partition` every connection of its users in chunks;
/// after the last one it drops this room's entries that no chunk listed.
/// False when it failed (retried by the caller).
async fn sync(dir: &Arc<dyn Registers>, room: &Room, room_id: RoomId, partition: usize) -> bool {
    // Connections that authenticate while the snapshot is taken and sent
    // may have their `Connected` arrive before the last chunk: the register
    // keeps unlisted entries from this time on (a margin covers auth-to-register).
    let keep_since = crate::backend::now_ms() - SYNC_MARGIN_MS;
    let mine = |u: &proto::UserId| dir.partition_of(u) == partition;
    let sessions = room.snapshot(mine);
    let total = sessions.len();
    let conns: Vec<ConnInfo> = sessions
        .into_iter()
        .map(|s| ConnInfo {
            user: s.user,
            conn: s.conn,
            room: room_id,
            device: Some(s.device.to_string()),
            since: s.since,
        })
        .collect();
    // An empty room still sends one (empty) chunk: it clears stale entries.
    let mut chunks: Vec<&[ConnInfo]> = conns.chunks(SYNC_CHUNK).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        if let Err(e) = dir
            .sync(
                partition,
                room_id,
                chunk.to_vec(),
                i == 0,
                i == last,
                keep_since,
            )
            .await
        {
            warn!(register = partition, error = %e, "refill failed; retrying in a second");
            return false;
        }
    }
    // A connection that closed after the snapshot may have had its
    // `Disconnected` handled before the chunk that listed it: end those again.
    let now: std::collections::HashSet<proto::ConnId> =
        room.snapshot(mine).into_iter().map(|s| s.conn).collect();
    for c in conns.iter().filter(|c| !now.contains(&c.conn)) {
        let _ = dir
            .disconnected(&c.user, c.conn, crate::backend::now_ms())
            .await;
    }
    info!(
        register = partition,
        connections = total,
        "register refilled"
    );
    true
}

#[cfg(test)]
mod tests;
