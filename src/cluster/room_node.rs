//! `pushgate room`: a connection server in a cluster.
//!
//! Start-up: connect to the registers and the store, take this room id's
//! lease at every register (waiting while another live instance holds it),
//! then serve centers on the internal link and clients on WebSocket and TCP.
//! A lease task renews the lease every second; a register that answers
//! `Fresh` (it restarted, or the lease expired) gets this room's connections
//! again, so registers are refilled by the rooms. SIGTERM: stop accepting,
//! drain clients with 4007, release the lease, exit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use proto::RoomId;
use register::{ClusterDirectory, ConnInfo, LeaseOutcome, RoomLease};
use room::remote::RoomService;
use room::{Room, RoomConfig};
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

    let room = Room::new(
        RoomConfig {
            room: room_id,
            token_secret: Arc::from(args.token_secret.as_bytes()),
            heartbeat: Duration::from_secs(args.heartbeat),
            auth_timeout: Duration::from_secs(args.auth_timeout),
            max_frame: args.max_frame,
            send_queue: args.send_queue,
            max_channels: args.max_channels,
            max_connections: crate::standalone::effective_max_connections(args.max_connections),
            rate_limit: args.rate_limit,
            drain_reconnect_delay: Duration::from_millis(args.reconnect_delay_ms),
            replay_overlap: idgen::make_id(overlap_us.min(i64::MAX >> 9), 0).0,
        },
        Arc::new(LocalBackend {
            room: room_id,
            dir: dir.clone(),
            store,
            dir_errors: Default::default(),
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

    let ws = bind(args.ws, "websocket").await?;
    let tcp = bind(args.tcp, "tcp").await?;
    let http = bind(args.http, "http").await?;
    let (ws_addr, tcp_addr, http_addr) = (ws.local_addr()?, tcp.local_addr()?, http.local_addr()?);

    let accept_stop = CancellationToken::new();
    let ws_task = tokio::spawn({
        let (room, stop) = (room.clone(), accept_stop.clone());
        async move { room.serve_ws(ws, stop).await }
    });
    let tcp_task = tokio::spawn({
        let (room, stop) = (room.clone(), accept_stop.clone());
        async move { room.serve_tcp(tcp, stop).await }
    });
    let health = Health::new({
        let room = room.clone();
        Arc::new(move |out: &mut String| room.write_metrics(out))
    });
    let http_stop = CancellationToken::new();
    let http_task = health.serve(http, http_stop.clone());
    let lease_stop = CancellationToken::new();
    let lease_task = tokio::spawn(renew(
        dir.clone(),
        room.clone(),
        lease(0),
        pending,
        lease_stop.clone(),
    ));
    health.set_ready(true);

    announce(&[
        format!("room {room_id} instance {instance:016x}"),
        format!("ws listening on {ws_addr}"),
        format!("tcp listening on {tcp_addr}"),
        format!("internal listening on {internal_addr} (advertised as {advertise})"),
        format!("http listening on {http_addr}"),
    ])?;
    info!(room = %room_id, ws = %ws_addr, tcp = %tcp_addr, internal = %advertise, "room up");

    shutdown.wait().await;
    info!("shutting down: draining connections");
    health.set_ready(false);
    accept_stop.cancel();
    if !room.drain(Duration::from_secs(args.drain_timeout)).await {
        warn!("drain timeout: some connections were still open");
    }
    lease_stop.cancel();
    let _ = lease_task.await;
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
    })
    .await;
    info!("stopped");
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

/// Renews the lease every second until `stop`; refills registers that
/// answer `Fresh` (and retries a refill that failed at the next tick).
async fn renew(
    dir: Arc<ClusterDirectory>,
    room: Room,
    mut lease: RoomLease,
    mut pending: Vec<bool>,
    stop: CancellationToken,
) {
    let n = dir.partitions();
    pending.resize(n, false);
    let mut failing = vec![false; n];
    let mut tick = tokio::time::interval(LEASE_RENEW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_full = Instant::now();
    loop {
        // Anti-entropy: a `Connected` or `Disconnected` lost to a transient
        // error (the register stayed up) is repaired by a periodic refill.
        if last_full.elapsed() >= FULL_REFILL {
            last_full = Instant::now();
            pending.iter_mut().for_each(|p| *p = true);
        }
        // Refill first: the lease was already granted as Fresh.
        for (p, due) in pending.iter_mut().enumerate() {
            if *due {
                *due = !sync(&dir, &room, lease.room, p).await;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        lease.connections = room.connections();
        let outcomes = dir.lease(&lease).await;
        for (p, o) in outcomes.into_iter().enumerate().take(n) {
            match o {
                Ok(LeaseOutcome::Renewed) => {}
                Ok(LeaseOutcome::Fresh) => {
                    info!(register = p, "register did not know this room (restarted or lease expired): refilling it");
                    pending[p] = true;
                }
                Ok(LeaseOutcome::Conflict { holder_addr }) => {
                    error!(register = p, holder = %holder_addr, "another room took this room id after our lease expired; pushes to it are routed there");
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

/// Sends register `partition` every connection of its users, replacing
/// what it had of this room; false when it failed (retried later).
async fn sync(dir: &Arc<ClusterDirectory>, room: &Room, room_id: RoomId, partition: usize) -> bool {
    // Connections that authenticate while the snapshot is taken and sent
    // may have their `Connected` arrive before the `Sync`: the register keeps
    // unlisted entries from this time on (a margin covers auth-to-register).
    let keep_since = crate::adapters::now_ms() - SYNC_MARGIN_MS;
    let sessions = room.snapshot(|u| dir.partition_of(u) == partition);
    let total = sessions.len();
    let conns: Vec<ConnInfo> = sessions
        .into_iter()
        .map(|s| ConnInfo {
            user: s.user,
            conn: s.conn,
            room: room_id,
            device: Some(s.device),
            since: s.since,
        })
        .collect();
    // An empty room still sends one (empty, first) chunk: it clears stale entries.
    let mut chunks: Vec<Vec<ConnInfo>> =
        conns.chunks(SYNC_CHUNK).map(<[ConnInfo]>::to_vec).collect();
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    for (i, chunk) in chunks.into_iter().enumerate() {
        if let Err(e) = dir
            .sync(partition, room_id, chunk, i == 0, keep_since)
            .await
        {
            warn!(register = partition, error = %e, "refill failed; retrying in a second");
            return false;
        }
    }
    info!(
        register = partition,
        connections = total,
        "register refilled"
    );
    true
}
