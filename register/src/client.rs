//! The client side of the register: [`ClusterDirectory`] partitions users
//! over the register processes and caches the room membership, refreshed in
//! the background.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use parking_lot::Mutex;
use proto::{ConnId, RoomId, UserId};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::wire::{
    LeaseOutcome, RegisterReq, RegisterResp, RoomLease, DEFAULT_REFRESH, LEASE_CALL_TIMEOUT,
    SERVICE,
};
use crate::{ring, ConnInfo, DirError, DirStats, Directory, RoomInfo};

type RegClient = link::Client<RegisterReq, RegisterResp>;

/// A release remembered until a refresh that started after it installs, so
/// a refresh already in flight does not bring the released room back.
#[derive(Debug)]
struct Tomb {
    room: RoomId,
    instance: Option<u64>,
    gen: u64,
}

impl Tomb {
    fn hides(&self, l: &RoomLease) -> bool {
        self.room == l.room && self.instance.is_none_or(|i| i == l.instance)
    }
}

#[derive(Debug, Default)]
struct Membership {
    rooms: Arc<HashMap<RoomId, RoomLease>>,
    /// The generation of the refresh installed last.
    installed: u64,
    tombs: Vec<Tomb>,
}

/// Client side: users partitioned over the registers by
/// `ring::partition(user, n)`, `n` = number of addresses. The order of the
/// addresses matters: every process must list the registers in the same
/// order.
///
/// Failure of one register: calls for its users fail fast with
/// [`DirError::Link`] (the link reports it at once while the peer is
/// down), lookups answer empty lists for its users (they get no live
/// delivery; stored messages are replayed when they reconnect), stats and
/// membership come from the registers that answer.
pub struct ClusterDirectory {
    clients: Vec<RegClient>,
    members: Mutex<Membership>,
    /// Orders refreshes and releases (see [`Tomb`]).
    gen: AtomicU64,
    /// Stops the membership refresher when the directory is dropped.
    _stop: DropGuard,
}

impl std::fmt::Debug for ClusterDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterDirectory")
            .field(
                "registers",
                &self
                    .clients
                    .iter()
                    .map(link::Client::addr)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ClusterDirectory {
    /// Starts the clients and a membership refresher (every
    /// [`DEFAULT_REFRESH`], 1 s: union of live leases from all reachable
    /// registers).
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn new(addrs: Vec<String>, cfg: link::ClientConfig) -> Arc<ClusterDirectory> {
        ClusterDirectory::with_refresh(addrs, cfg, DEFAULT_REFRESH)
    }

    /// Like [`ClusterDirectory::new`] with another refresh period.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn with_refresh(
        addrs: Vec<String>,
        cfg: link::ClientConfig,
        refresh: Duration,
    ) -> Arc<ClusterDirectory> {
        let clients = addrs
            .into_iter()
            .map(|a| link::Client::new(a, SERVICE, cfg.clone()))
            .collect();
        let stop = CancellationToken::new();
        let dir = Arc::new(ClusterDirectory {
            clients,
            members: Mutex::new(Membership::default()),
            gen: AtomicU64::new(0),
            _stop: stop.clone().drop_guard(),
        });
        tokio::spawn(refresher(Arc::downgrade(&dir), refresh, stop));
        dir
    }

    /// Number of registers (partitions).
    pub fn partitions(&self) -> usize {
        self.clients.len()
    }

    /// The partition (index into the address list) that owns `user`.
    pub fn partition_of(&self, user: &UserId) -> usize {
        let n = u32::try_from(self.clients.len()).unwrap_or(u32::MAX);
        ring::partition(user, n) as usize
    }

    /// The address of register `partition`.
    pub fn addr(&self, partition: usize) -> Option<&str> {
        self.clients.get(partition).map(link::Client::addr)
    }

    /// Renews `lease` at every register, concurrently; one outcome per
    /// register, in order.
    pub async fn lease(&self, lease: &RoomLease) -> Vec<Result<LeaseOutcome, DirError>> {
        let calls = (0..self.clients.len()).map(|p| async move {
            // Bounded well below a lease's lifetime: a register that hangs
            // must not delay the renewal at the healthy ones.
            let call = self.call(p, RegisterReq::Lease(lease.clone()));
            let answer = tokio::time::timeout(LEASE_CALL_TIMEOUT, call)
                .await
                .map_err(|_| DirError::Timeout {
                    partition: p,
                    call: "lease",
                    timeout: LEASE_CALL_TIMEOUT,
                })??;
            match answer {
                RegisterResp::Lease(o) => Ok(o),
                other => Err(self.unexpected(p, &other)),
            }
        });
        join_all(calls).await
    }

    /// Sends one chunk of a refill of `room` to register `partition`: every
    /// chunk adds its connections; after the `last` one, the register removes
    /// the room's entries that no chunk listed, except those that
    /// authenticated at or after `keep_since` (ms since the epoch; pass the
    /// time taken just before the snapshot, minus a margin). A single chunk
    /// is both `first` and `last`.
    ///
    /// # Errors
    /// [`DirError::Link`] when the register is unreachable, [`DirError::Remote`]
    /// when it refused the sync (a connection of another room in `conns`).
    pub async fn sync(
        &self,
        partition: usize,
        room: RoomId,
        conns: Vec<ConnInfo>,
        first: bool,
        last: bool,
        keep_since: i64,
    ) -> Result<(), DirError> {
        let req = RegisterReq::Sync {
            room,
            conns,
            first,
            last,
            keep_since,
        };
        let resp = self.call(partition, req).await?;
        self.done(partition, &resp)
    }

    /// Releases the lease of `room` (only if `instance` holds it) at every
    /// register, dropping its entries (room shutting down). The room leaves
    /// this directory's cached membership at once.
    ///
    /// # Errors
    /// [`DirError`] when a register could not be reached (the
    /// others released it; the unreachable one drops it when the lease expires).
    pub async fn release(&self, room: RoomId, instance: u64) -> Result<(), DirError> {
        self.release_any(room, Some(instance)).await
    }

    async fn release_any(&self, room: RoomId, instance: Option<u64>) -> Result<(), DirError> {
        self.forget(room, instance);
        let calls = (0..self.clients.len()).map(|p| async move {
            let resp = self
                .call(p, RegisterReq::Release { room, instance })
                .await?;
            self.done(p, &resp)
        });
        let answers = join_all(calls).await;
        // Refreshes that started before every register had released may
        // still report the lease: hide it from them.
        let gen = self.gen.fetch_add(1, Ordering::SeqCst) + 1;
        self.members.lock().tombs.push(Tomb {
            room,
            instance,
            gen,
        });
        self.forget(room, instance);
        answers.into_iter().collect::<Result<Vec<()>, DirError>>()?;
        Ok(())
    }

    /// Removes `room` from the cached membership.
    fn forget(&self, room: RoomId, instance: Option<u64>) {
        let mut m = self.members.lock();
        let held = m
            .rooms
            .get(&room)
            .is_some_and(|l| instance.is_none_or(|i| i == l.instance));
        if held {
            Arc::make_mut(&mut m.rooms).remove(&room);
        }
    }

    /// The internal address of a live room, from the cached membership.
    pub fn room_addr(&self, room: RoomId) -> Option<String> {
        self.members.lock().rooms.get(&room).map(|l| l.addr.clone())
    }

    /// The internal address and instance of a live room, from the cached
    /// membership (the instance changes when the room restarts, even on the
    /// same address).
    pub fn room_endpoint(&self, room: RoomId) -> Option<(String, u64)> {
        self.members
            .lock()
            .rooms
            .get(&room)
            .map(|l| (l.addr.clone(), l.instance))
    }

    /// The live leases (one per room), from the cached membership, sorted by room.
    pub fn members(&self) -> Vec<RoomLease> {
        let rooms = Arc::clone(&self.members.lock().rooms);
        let mut v: Vec<RoomLease> = rooms.values().cloned().collect();
        v.sort_by_key(|l| l.room);
        v
    }

    /// Fetches membership now (instead of waiting for the next refresh).
    ///
    /// # Errors
    /// [`DirError`] when no register answered (the cached
    /// membership is kept as it was).
    pub async fn refresh(&self) -> Result<(), DirError> {
        let started = self.gen.fetch_add(1, Ordering::SeqCst) + 1;
        let calls = (0..self.clients.len()).map(|p| async move {
            match self.call(p, RegisterReq::Members).await? {
                RegisterResp::Members(v) => Ok(v),
                other => Err(self.unexpected(p, &other)),
            }
        });
        let answers = join_all(calls).await;
        // Per room: the instance most registers report, ties to the first register.
        let mut votes: HashMap<RoomId, Vec<(RoomLease, usize)>> = HashMap::new();
        let mut answered = 0usize;
        let mut last_err = None;
        for answer in answers {
            match answer {
                Ok(leases) => {
                    answered += 1;
                    for l in leases {
                        let v = votes.entry(l.room).or_default();
                        match v.iter_mut().find(|(x, _)| x.instance == l.instance) {
                            Some((_, n)) => *n += 1,
                            None => v.push((l, 1)),
                        }
                    }
                }
                Err(e) => last_err = Some(e),
            }
        }
        if answered == 0 {
            return Err(last_err.unwrap_or(DirError::NoRegister));
        }
        let mut rooms: HashMap<RoomId, RoomLease> = votes
            .into_iter()
            .filter_map(|(room, mut v)| {
                // Stable sort: among equal counts the first register's stays first.
                v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
                v.into_iter().next().map(|(l, _)| (room, l))
            })
            .collect();
        let mut m = self.members.lock();
        if started < m.installed {
            return Ok(()); // a refresh that started later already installed
        }
        rooms.retain(|_, l| !m.tombs.iter().any(|t| t.gen > started && t.hides(l)));
        m.tombs.retain(|t| t.gen > started);
        m.installed = started;
        m.rooms = Arc::new(rooms);
        Ok(())
    }

    async fn call(&self, partition: usize, req: RegisterReq) -> Result<RegisterResp, DirError> {
        let Some(client) = self.clients.get(partition) else {
            return Err(DirError::NoPartition {
                partition,
                configured: self.clients.len(),
            });
        };
        match client.call(req).await {
            Ok(RegisterResp::Err(message)) => Err(DirError::Remote {
                partition,
                addr: client.addr().to_owned(),
                message,
            }),
            Ok(resp) => Ok(resp),
            Err(source) => Err(DirError::Link { partition, source }),
        }
    }

    fn done(&self, partition: usize, resp: &RegisterResp) -> Result<(), DirError> {
        match resp {
            RegisterResp::Done => Ok(()),
            other => Err(self.unexpected(partition, other)),
        }
    }

    fn unexpected(&self, partition: usize, resp: &RegisterResp) -> DirError {
        DirError::BadAnswer {
            partition,
            addr: self.addr(partition).unwrap_or("?").to_owned(),
            answer: format!("{resp:?}"),
        }
    }
}

/// Refreshes the membership of `dir` every `every` until it is dropped.
async fn refresher(dir: Weak<ClusterDirectory>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(dir) = dir.upgrade() else { return };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            r = dir.refresh() => r,
        };
        drop(dir);
        match outcome {
            Ok(()) if failing => {
                tracing::info!("room membership refreshed again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "room membership refresh failed: no register answered; keeping the last known rooms");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

#[async_trait]
impl Directory for ClusterDirectory {
    async fn connected(&self, conn: ConnInfo) -> Result<(), DirError> {
        let p = self.partition_of(&conn.user);
        let resp = self.call(p, RegisterReq::Connected(conn)).await?;
        self.done(p, &resp)
    }

    async fn disconnected(&self, user: &UserId, conn: ConnId, now_ms: i64) -> Result<(), DirError> {
        let p = self.partition_of(user);
        let req = RegisterReq::Disconnected {
            user: user.clone(),
            conn,
            now_ms,
        };
        let resp = self.call(p, req).await?;
        self.done(p, &resp)
    }

    /// Batched: one call per partition, concurrently, answers in input
    /// order. A partition that fails answers empty lists for its users (and
    /// logs a warning) so that the other users still get live delivery.
    /// [`Directory::locate`] tells those users apart.
    async fn lookup(&self, users: &[UserId]) -> Result<Vec<Vec<ConnInfo>>, DirError> {
        Ok(self
            .locate(users)
            .await?
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    }

    /// Batched like [`Directory::lookup`]; the users of a partition that
    /// fails get `None`.
    async fn locate(&self, users: &[UserId]) -> Result<Vec<Option<Vec<ConnInfo>>>, DirError> {
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.clients.len()];
        for (i, u) in users.iter().enumerate() {
            if let Some(g) = groups.get_mut(self.partition_of(u)) {
                g.push(i);
            }
        }
        let calls = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .map(|(p, g)| async move {
                let asked: Vec<UserId> = g.iter().map(|&i| users[i].clone()).collect();
                (p, self.call(p, RegisterReq::Lookup(asked)).await)
            });
        let answers = join_all(calls).await;
        let mut out = vec![None; users.len()];
        for (p, answer) in answers {
            let group = &groups[p];
            match answer {
                Ok(RegisterResp::Lookup(lists)) if lists.len() == group.len() => {
                    for (&i, list) in group.iter().zip(lists) {
                        out[i] = Some(list);
                    }
                }
                Ok(other) => {
                    let e = self.unexpected(p, &other);
                    tracing::warn!(partition = p, users = group.len(), error = %e, "lookup failed for a register partition; its users are unknown");
                }
                Err(e) => {
                    tracing::warn!(partition = p, users = group.len(), error = %e, "lookup failed for a register partition; its users are unknown");
                }
            }
        }
        Ok(out)
    }

    async fn online_ms(&self, user: &UserId, now_ms: i64) -> Result<u64, DirError> {
        let p = self.partition_of(user);
        let req = RegisterReq::OnlineMs {
            user: user.clone(),
            now_ms,
        };
        match self.call(p, req).await? {
            RegisterResp::OnlineMs(ms) => Ok(ms),
            other => Err(self.unexpected(p, &other)),
        }
    }

    /// Cluster rooms announce themselves with [`ClusterDirectory::lease`]: nothing to do.
    async fn room_up(&self, _room: RoomId) -> Result<(), DirError> {
        Ok(())
    }

    /// Releases the room whatever instance holds it, at every register.
    async fn room_down(&self, room: RoomId) -> Result<(), DirError> {
        self.release_any(room, None).await
    }

    /// From the cached membership (no network call); the connection counts
    /// are the ones the rooms reported with their last lease.
    async fn rooms(&self) -> Result<Vec<RoomInfo>, DirError> {
        Ok(self
            .members()
            .into_iter()
            .map(|l| RoomInfo {
                room: l.room,
                connections: l.connections,
            })
            .collect())
    }

    /// The sum over the partitions that answer (users are partitioned, so
    /// the sums are exact when all do).
    ///
    /// # Errors
    /// [`DirError`] only when no register answers.
    async fn stats(&self) -> Result<DirStats, DirError> {
        let calls = (0..self.clients.len()).map(|p| async move {
            match self.call(p, RegisterReq::Stats).await? {
                RegisterResp::Stats(s) => Ok(s),
                other => Err(self.unexpected(p, &other)),
            }
        });
        let mut total = DirStats::default();
        let mut answered = 0usize;
        let mut last_err = None;
        for (p, answer) in join_all(calls).await.into_iter().enumerate() {
            match answer {
                Ok(s) => {
                    answered += 1;
                    total.connections = total.connections.saturating_add(s.connections);
                    total.users = total.users.saturating_add(s.users);
                }
                Err(e) => {
                    tracing::debug!(partition = p, error = %e, "stats: register partition did not answer");
                    last_err = Some(e);
                }
            }
        }
        if answered == 0 {
            return Err(last_err.unwrap_or(DirError::NoRegister));
        }
        Ok(total)
    }
}
