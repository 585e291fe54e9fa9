//! `pushgate room`: a connection server in a cluster.
//!
//! Start-up: connect to the registers and the store, take this room id's
//! lease at every register (waiting while another live instance holds it),
//! then serve centers on the internal link and clients on WebSocket and TCP
//! (TLS with `--tls-cert`), and QUIC with `--quic` (see `crate::tls` for
//! the certificate; SIGHUP reloads it).
//! A lease task renews the lease every second; a register that answers
//! `Fresh` (it restarted, or the lease expired) gets this room's connections
//! again, so registers are refilled by the rooms. While a register did not
//! know a connection, centers may have skipped live delivery of stored
//! messages to it; so once a register is refilled after a fault, the
//! connections of its users replay their queues in place from shortly
//! before the fault began (see [`RESYNC_MARGIN`]) before anything newer. SIGTERM: stop accepting,
//! drain clients with 4007, release the lease, exit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use proto::RoomId;
use register::{ClusterDirectory, ConnInfo, Directory, LeaseOutcome, RoomLease};
use room::remote::RoomService;
use room::{Listener, QuicListener, Room, RoomConfig};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::args::RoomArgs;
use super::{addrs, announce, bind, client_config, connect_store, Health, STEP_TIMEOUT};
use crate::adapters::LocalBackend;

/// How often the lease is renewed (the registers' TTL is a few times this).
const LEASE_RENEW: Duration = Duration::from_secs(1);
/// Connections per sync frame when a register is refilled.
const SYNC_CHUNK: usize = 5000;
/// Connections younger than this at snapshot time survive a refill even if
/// the snapshot missed them (see [`sync`]).
const SYNC_MARGIN_MS: i64 = 5_000;
/// Every register is refilled this often even when nothing went wrong.
const FULL_REFILL: Duration = Duration::from_secs(300);
/// A resync after a fault replays from this long before the fault was first
/// seen: a message may be looked up (and its delivery skipped) up to the
/// center's store timeout (5 s) after its id was taken, and clocks of
/// different hosts differ a little.
const RESYNC_MARGIN: Duration = Duration::from_secs(10);
/// Longest start-up waits for another instance's lease on this id to expire.
const CONFLICT_WAIT: Duration = Duration::from_secs(65);

/// Runs a room until SIGTERM or SIGINT.
///
/// # Errors
/// Start-up failures (binding, store, a room id held by another live room).
pub(crate) async fn run_room(args: RoomArgs) -> anyhow::Result<()> {
    let shutdown = crate::signal::Shutdown::install().context("install signal handlers")?;
    let key = args.common.cluster_key.clone();
    let link_cfg = client_config(&key);
    let dir = ClusterDirectory::new(addrs(&args.registers, "--registers")?, link_cfg.clone());
    let store = connect_store(&args.store, link_cfg).await?;
    let room_id = RoomId(args.id);
    let overlap_us = i64::try_from(args.replay_overlap_ms.saturating_mul(1000)).unwrap_or(i64::MAX);
    let refills = Refills::new(dir.partitions());
    let on_dir_error: crate::adapters::DirErrorHook = {
        let (dir, refills) = (dir.clone(), refills.clone());
        // A connect or disconnect report that failed is repaired by
        // refilling that user's register (and resyncing its users).
        Arc::new(move |user: &proto::UserId| {
            refills.mark_fault(
                dir.partition_of(user),
                unix_us(std::time::SystemTime::now()),
            )
        })
    };

    let room = Room::new(
        RoomConfig {
            room: room_id,
            token_secret: Arc::from(args.token_secret.as_bytes()),
            heartbeat: Duration::from_secs(args.heartbeat),
            auth_timeout: Duration::from_secs(args.auth_timeout),
            max_frame: args.max_frame,
            send_queue: args.send_queue,
            send_queue_bytes: args.send_queue_bytes,
            max_user_connections: args.max_user_connections,
            max_channels: args.max_channels,
            max_connections: crate::standalone::effective_max_connections(args.max_connections),
            rate_limit: args.rate_limit,
            drain_reconnect_delay: Duration::from_millis(args.reconnect_delay_ms),
            replay_overlap: idgen::make_id(overlap_us.min(i64::MAX >> 9), 0).0,
            quic_retry_above: args.quic_retry_above,
            max_conns_per_ip: args.max_conns_per_ip,
        },
        Arc::new(LocalBackend {
            room: room_id,
            dir: dir.clone(),
            store,
            dir_errors: Default::default(),
            on_dir_error: Some(on_dir_error),
        }),
    );

    let internal = bind(args.internal, "internal").await?;
    let internal_addr = internal.local_addr()?;
    args.common.warn_if_open(internal_addr);
    let advertise = match &args.advertise {
        Some(a) => a.clone(),
        None if internal_addr.ip().is_unspecified() => anyhow::bail!(
            "--internal {internal_addr} is a wildcard address: give --advertise HOST:PORT (how centers reach this room)"
        ),
        None => internal_addr.to_string(),
    };
    let instance = rand::random::<u64>() | 1;
    let lease = |connections| RoomLease {
        room: room_id,
        addr: advertise.clone(),
        instance,
        connections,
    };

    // Serve centers before taking the lease: once listed, the room must answer.
    let link_stop = CancellationToken::new();
    let link_task = tokio::spawn(link::serve(
        internal,
        RoomService::new(room.clone()),
        link::ServerConfig::new(key),
        link_stop.clone(),
    ));
    let pending = acquire(&dir, &lease(0)).await?;

    // TLS: given files for every listener; else, with --quic, an in-memory
    // self-signed certificate for QUIC only.
    let given = crate::tls::given(args.tls_cert.clone(), args.tls_key.clone())
        .map_err(anyhow::Error::msg)?;
    let stream_tls = given.as_ref().map(|g| g.certs.clone());
    let (certs, reloader) = match (given, args.quic) {
        (Some(g), _) => {
            let r = crate::tls::Reloader::install(g.certs.clone(), Some((g.cert, g.key)))
                .context("install SIGHUP handler")?;
            (Some(g.certs), Some(r))
        }
        (None, Some(_)) => {
            let certs = crate::tls::ephemeral()?;
            let r = crate::tls::Reloader::install(certs.clone(), None)
                .context("install SIGHUP handler")?;
            (Some(certs), Some(r))
        }
        (None, None) => (None, None),
    };

    let ws = bind(args.ws, "websocket").await?;
    let tcp = bind(args.tcp, "tcp").await?;
    let quic = match (args.quic, &certs) {
        (Some(addr), Some(certs)) => Some(
            QuicListener::bind(addr, certs, room.config())
                .with_context(|| format!("bind quic listener {addr} (udp)"))?,
        ),
        _ => None,
    };
    let http = bind(args.http, "http").await?;
    let (ws_addr, tcp_addr, http_addr) = (ws.local_addr()?, tcp.local_addr()?, http.local_addr()?);

    let accept_stop = CancellationToken::new();
    let ws_task = tokio::spawn({
        let (room, stop, tls) = (room.clone(), accept_stop.clone(), stream_tls.clone());
        async move { room.serve(Listener::Ws(ws, tls), stop).await }
    });
    let tcp_task = tokio::spawn({
        let (room, stop, tls) = (room.clone(), accept_stop.clone(), stream_tls);
        async move { room.serve(Listener::Tcp(tcp, tls), stop).await }
    });
    let quic_task = quic.clone().map(|q| {
        let (room, stop) = (room.clone(), accept_stop.clone());
        tokio::spawn(async move { room.serve(Listener::Quic(q), stop).await })
    });
    let reload_task = reloader.map(crate::tls::Reloader::spawn);
    let health = Health::new({
        let room = room.clone();
        Arc::new(move |out: &mut String| room.write_metrics(out))
    });
    let http_stop = CancellationToken::new();
    let http_task = health.serve(http, http_stop.clone());
    for (p, due) in pending.into_iter().enumerate() {
        if due {
            refills.mark(p);
        }
    }
    let lease_stop = CancellationToken::new();
    // Cancelled when another instance took this room id (see `renew`).
    let lost = CancellationToken::new();
    let lease_task = tokio::spawn(renew(
        dir.clone(),
        room.clone(),
        lease(0),
        refills.clone(),
        lost.clone(),
        lease_stop.clone(),
    ));
    let refill_task = tokio::spawn(refill(
        dir.clone(),
        room.clone(),
        room_id,
        refills,
        lease_stop.clone(),
    ));
    health.set_ready(true);

    let mut lines = vec![
        format!("room {room_id} instance {instance:016x}"),
        format!("ws listening on {ws_addr}"),
        format!("tcp listening on {tcp_addr}"),
    ];
    if let Some(q) = &quic {
        lines.push(format!("quic listening on {}", q.local_addr()?));
    }
    lines.push(format!(
        "internal listening on {internal_addr} (advertised as {advertise})"
    ));
    lines.push(format!("http listening on {http_addr}"));
    if let Some(c) = &certs {
        lines.push(format!("tls fingerprint: {}", c.fingerprint()));
    }
    announce(&lines)?;
    info!(room = %room_id, ws = %ws_addr, tcp = %tcp_addr, internal = %advertise, "room up");

    let lost_id = tokio::select! {
        () = shutdown.wait() => false,
        () = lost.cancelled() => true,
    };
    if lost_id {
        error!(room = %room_id, "this room id now belongs to another instance: draining and exiting");
    }
    info!("shutting down: draining connections");
    health.set_ready(false);
    accept_stop.cancel();
    if !room.drain(Duration::from_secs(args.drain_timeout)).await {
        warn!("drain timeout: some connections were still open");
    }
    if let Some(q) = &quic {
        q.wait_idle(crate::standalone::QUIC_CLOSE_WAIT).await;
    }
    if let Some(t) = reload_task {
        t.abort();
    }
    lease_stop.cancel();
    let _ = tokio::join!(lease_task, refill_task);
    // Stop answering centers before the lease is released: once released,
    // a new instance may take this id, and a center with an old membership
    // must fail here (and re-read it) rather than deliver to nobody.
    link_stop.cancel();
    match tokio::time::timeout(STEP_TIMEOUT, dir.release(room_id, instance)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(error = %e, "lease release failed; registers drop the room when it expires")
        }
        Err(_) => warn!("lease release timed out; registers drop the room when it expires"),
    }
    http_stop.cancel();
    let _ = tokio::time::timeout(STEP_TIMEOUT, async {
        let _ = tokio::join!(ws_task, tcp_task, link_task, http_task);
        if let Some(t) = quic_task {
            let _ = t.await;
        }
    })
    .await;
    info!("stopped");
    anyhow::ensure!(
        !lost_id,
        "room id {room_id} was taken over by another instance"
    );
    Ok(())
}

/// Takes the lease at every register before serving clients. Waits while
/// another live instance holds this id (its lease expires when it is gone);
/// a register that cannot be reached does not block start-up (the lease
/// task keeps trying and refills it when it answers). Returns, per register,
/// whether it must be sent this room's connections.
async fn acquire(dir: &Arc<ClusterDirectory>, lease: &RoomLease) -> anyhow::Result<Vec<bool>> {
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
struct Refills {
    due: parking_lot::Mutex<Vec<Due>>,
    wake: tokio::sync::Notify,
}

impl Refills {
    fn new(partitions: usize) -> Arc<Refills> {
        Arc::new(Refills {
            due: parking_lot::Mutex::new(vec![Due::default(); partitions]),
            wake: tokio::sync::Notify::new(),
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
        if let Some(d) = self.lock().get_mut(partition) {
            d.due = true;
            d.fault_since_us = match (d.fault_since_us, fault_since_us) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.wake.notify_one();
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
    dir: Arc<ClusterDirectory>,
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
    dir: Arc<ClusterDirectory>,
    room: Room,
    room_id: RoomId,
    refills: Arc<Refills>,
    stop: CancellationToken,
) {
    let mut last_full = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = refills.wake.notified() => {}
            () = tokio::time::sleep(LEASE_RENEW) => {}
        }
        if last_full.elapsed() >= FULL_REFILL {
            last_full = Instant::now();
            (0..dir.partitions()).for_each(|p| refills.mark(p));
        }
        for (p, fault_since_us) in refills.take() {
            if !sync(&dir, &room, room_id, p).await {
                refills.mark_due(p, fault_since_us);
                continue;
            }
            if let Some(since) = fault_since_us {
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
async fn sync(dir: &Arc<ClusterDirectory>, room: &Room, room_id: RoomId, partition: usize) -> bool {
    // Connections that authenticate while the snapshot is taken and sent
    // may have their `Connected` arrive before the last chunk: the register
    // keeps unlisted entries from this time on (a margin covers auth-to-register).
    let keep_since = crate::adapters::now_ms() - SYNC_MARGIN_MS;
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
            .disconnected(&c.user, c.conn, crate::adapters::now_ms())
            .await;
    }
    info!(
        register = partition,
        connections = total,
        "register refilled"
    );
    true
}
