//! `pushgate room`: a connection server in a cluster.
//!
//! Start-up: connect to the registers and the store, serve centers on the
//! internal link, take this room id's lease at every register (waiting
//! while another live instance holds it; see [`super::membership`]), then
//! serve clients on WebSocket and TCP (TLS with `--tls-cert`), and QUIC
//! with `--quic` (see `crate::tls` for the certificate; SIGHUP reloads it).
//! SIGTERM: stop accepting, drain clients with 4007, release the lease,
//! exit. A room whose id another instance took drains and exits with an
//! error.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proto::RoomId;
use register::{ClusterDirectory, RoomLease};
use room::remote::RoomService;
use room::Room;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::membership::{dir_error_hook, Membership, Refills, Registers};
use super::{addrs, announce, bind, client_config, connect_store, STEP_TIMEOUT};
use crate::backend::LocalBackend;
use crate::health::Health;
use crate::room_node::{Listen, RoomNode};
use crate::settings::room::RoomRole;
use crate::settings::RoomArgs;
use crate::tls::{Fallback, RoomTls};

/// Runs a room until SIGTERM or SIGINT.
///
/// # Errors
/// Start-up failures (binding, store, a room id held by another live room).
pub(crate) async fn run(args: RoomArgs) -> anyhow::Result<()> {
    let shutdown = crate::signal::Shutdown::install().context("install signal handlers")?;
    let key = args.common.cluster_key.clone();
    let link_cfg = client_config(&key);
    let dir = ClusterDirectory::new(addrs(&args.registers, "--registers")?, link_cfg.clone());
    let regs: Arc<dyn Registers> = dir.clone();
    let store = connect_store(&args.store, link_cfg).await?;
    let overlap_us = i64::try_from(args.replay_overlap_ms.saturating_mul(1000)).unwrap_or(i64::MAX);
    let role = RoomRole {
        id: RoomId(args.id),
        reconnect_delay: Duration::from_millis(args.reconnect_delay_ms),
        replay_overlap: idgen::make_id(overlap_us.min(i64::MAX >> 9), 0).0,
    };
    let refills = Refills::new(regs.partitions());
    let backend = LocalBackend::new(
        role.id,
        dir.clone(),
        store,
        Some(dir_error_hook(regs.clone(), refills.clone())),
    );
    let room = Room::new(
        args.room.room_config(role, &args.token_secret),
        Arc::new(backend),
    );

    let internal = bind(args.internal, "internal")?;
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
    let lease = RoomLease {
        room: role.id,
        addr: advertise.clone(),
        instance,
        connections: 0,
    };

    // Serve centers before taking the lease: once listed, the room must answer.
    let link_stop = CancellationToken::new();
    let link_task = tokio::spawn(link::serve(
        internal,
        RoomService::new(room.clone()),
        link::ServerConfig::new(key),
        link_stop.clone(),
    ));
    let membership = Membership::join(regs, room.clone(), lease, refills).await?;

    // TLS: given files for every listener; else, with --quic, an in-memory
    // self-signed certificate for QUIC only.
    let given = crate::tls::given(args.room.tls_cert.clone(), args.room.tls_key.clone())
        .map_err(anyhow::Error::msg)?;
    let fallback = if args.quic.is_some() {
        Fallback::Ephemeral
    } else {
        Fallback::None
    };
    let listen = Listen {
        ws: args.room.ws,
        tcp: args.room.tcp,
        quic: args.quic,
    };
    let node = RoomNode::start(room.clone(), listen, RoomTls::new(given, fallback)?)?;
    let http = bind(args.http, "http")?;
    let http_addr = http.local_addr()?;
    let health = Health::new({
        let room = room.clone();
        Arc::new(move |out: &mut String| room.write_metrics(out))
    });
    let http_stop = CancellationToken::new();
    let http_task = health.serve(http, http_stop.clone());
    health.set_ready(true);

    let mut lines = vec![format!("room {} instance {instance:016x}", role.id)];
    lines.extend(node.lines().iter().cloned());
    lines.push(format!(
        "internal listening on {internal_addr} (advertised as {advertise})"
    ));
    lines.push(format!("http listening on {http_addr}"));
    lines.extend(node.fingerprint().map(|f| format!("tls fingerprint: {f}")));
    announce(&lines)?;
    info!(room = %role.id, listeners = ?node.lines(), internal = %advertise, "room up");

    let lost = membership.lost();
    let lost_id = tokio::select! {
        () = shutdown.wait() => false,
        () = lost.cancelled() => true,
    };
    if lost_id {
        error!(room = %role.id, "this room id now belongs to another instance: draining and exiting");
    }
    info!("shutting down: draining connections");
    health.set_ready(false);
    node.drain(args.room.drain_timeout()).await;
    // Stop answering centers before the lease is released: once released,
    // a new instance may take this id, and a center with an old membership
    // must fail here (and re-read it) rather than deliver to nobody.
    link_stop.cancel();
    membership.leave(STEP_TIMEOUT).await;
    http_stop.cancel();
    let _ = tokio::time::timeout(STEP_TIMEOUT, async {
        let _ = tokio::join!(link_task, http_task);
    })
    .await;
    info!("stopped");
    anyhow::ensure!(
        !lost_id,
        "room id {} was taken over by another instance",
        role.id
    );
    Ok(())
}
