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

use super::membership::{
    dir_error_hook, Membership, Refills, Registers, RegistersFactory, RenewOn,
};
use super::{announce, bind, client_config, connect_store, STEP_TIMEOUT};
use crate::backend::{LocalBackend, Presence};
use crate::health::Health;
use crate::net::HttpServer;
use crate::presence::ClusterPresence;
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
    let dir = ClusterDirectory::new(link::split_addrs(&args.registers), link_cfg.clone());
    let regs: Arc<dyn Registers> = dir.clone();
    let store = connect_store(&args.store, link_cfg.clone()).await?;
    let role = role(&args);
    let refills = Refills::new(regs.partitions());
    let hook = dir_error_hook(regs.clone(), refills.clone());
    let events = args.room.events().context("start posting session events")?;
    let known = args.room.known_users(&store);
    let messages = args
        .room
        .messages(known.clone())
        .context("set up the hook")?;
    // Clients' messages go through this room's own dispatcher (ids from
    // the idgens, the shared store, delivery through the registers), as a
    // center's pushes do; without --idgens they are refused.
    let rooms = super::rooms::ClusterRooms::new(dir.clone(), &key);
    let dispatcher = args.idgens.as_deref().map(|idgens| {
        let ids = idgen::LeasedIds::new(
            link::split_addrs(idgens),
            link_cfg.clone(),
            super::center::ID_BLOCK,
            super::center::ID_BLOCK_AGE,
        );
        center::Center::new(
            center::CenterConfig::default(),
            center::CenterDeps {
                dir: dir.clone(),
                store: store.clone(),
                ids,
                rooms: rooms.clone(),
            },
        )
    });
    if let Some(c) = &dispatcher {
        messages.set_center(c.clone());
    }
    // Presence of this room's channels goes to the other rooms, and their
    // members count in a client's `presence`.
    let cluster_presence = (!args.room.presence_channels.is_empty())
        .then(|| ClusterPresence::start(role.id, dir.clone(), rooms.clone()));
    let backend = LocalBackend::new(role.id, Presence::directory(dir.clone(), Some(hook)), store)
        .with_events(events.clone())
        .with_messages(messages.clone())
        .with_known_users(known)
        .with_cluster_presence(cluster_presence.clone());
    let room = Room::new(
        args.room.room_config(
            role,
            &args.token_secret,
            args.room.token_keys().map_err(anyhow::Error::msg)?,
        ),
        Arc::new(backend),
    );
    args.room
        .refresh_jwks(&room.config().token_keys)
        .map_err(anyhow::Error::msg)?;
    if let Some(p) = &cluster_presence {
        p.set_room(role.id, room.clone());
    }

    let internal = bind(args.internal, "internal")?;
    let internal_addr = internal.local_addr()?;
    args.common.warn_if_open(internal_addr);
    let advertise = advertised(&args, internal_addr)?;
    let instance = rand::random::<u64>() | 1;
    let lease = RoomLease {
        room: role.id,
        addr: advertise.clone(),
        instance,
        connections: 0,
    };

    // Serve centers before taking the lease: once listed, the room must answer.
    let (link_stop, link_task) = serve_centers(internal, &room, key);
    let lease_regs: RegistersFactory = {
        let (addrs, cfg) = (link::split_addrs(&args.registers), link_cfg.clone());
        Box::new(move || -> Arc<dyn Registers> { ClusterDirectory::new(addrs, cfg) })
    };
    let renew_on = RenewOn::Thread(lease_regs);
    let membership = Membership::join(regs, room.clone(), lease, refills.clone(), renew_on).await?;

    let node = client_listeners(&args, room.clone())?;
    let (health, http) = health_server(
        &args,
        &room,
        events.clone(),
        messages,
        cluster_presence,
        refills,
    )?;
    health.set_ready(true);

    let mut lines = vec![format!("room {} instance {instance:016x}", role.id)];
    lines.extend(node.lines().iter().cloned());
    lines.extend([
        format!("internal listening on {internal_addr} (advertised as {advertise})"),
        format!("http listening on {}", http.addr()),
    ]);
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
    health.set_ready(false);
    node.drain(args.room.drain_timeout()).await;
    // Messages already accepted from clients are stored and delivered.
    if let Some(c) = &dispatcher {
        c.shutdown().await;
    }
    // The drained sessions' disconnect events are queued: post them.
    if let Some(e) = &events {
        e.close().await;
    }
    // Stop answering centers before the lease is released: once released,
    // a new instance may take this id, and a center with an old membership
    // must fail here (and re-read it) rather than deliver to nobody.
    link_stop.cancel();
    membership.leave(STEP_TIMEOUT).await;
    let _ = tokio::join!(
        http.stop(STEP_TIMEOUT),
        tokio::time::timeout(STEP_TIMEOUT, link_task)
    );
    info!("stopped");
    anyhow::ensure!(
        !lost_id,
        "room id {} was taken over by another instance",
        role.id
    );
    Ok(())
}

/// What makes this room a cluster room: its id, the drain's reconnect
/// delay, and the replay look-back (`--replay-overlap-ms` in id units).
fn role(args: &RoomArgs) -> RoomRole {
    let overlap_us = i64::try_from(args.replay_overlap_ms.saturating_mul(1000)).unwrap_or(i64::MAX);
    RoomRole {
        id: RoomId(args.id),
        reconnect_delay: Duration::from_millis(args.reconnect_delay_ms),
        replay_overlap: idgen::make_id(overlap_us.min(i64::MAX >> 9), 0).0,
    }
}

/// The address centers reach the internal listener at.
fn advertised(args: &RoomArgs, internal: std::net::SocketAddr) -> anyhow::Result<String> {
    match &args.advertise {
        Some(a) => Ok(a.clone()),
        None if internal.ip().is_unspecified() => anyhow::bail!(
            "--internal {internal} is a wildcard address: give --advertise HOST:PORT (how centers reach this room)"
        ),
        None => Ok(internal.to_string()),
    }
}

/// Serves clients. TLS: given files for every listener; else, with
/// `--quic`, an in-memory self-signed certificate for QUIC only.
fn client_listeners(args: &RoomArgs, room: Room) -> anyhow::Result<RoomNode> {
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
    RoomNode::start(room, listen, RoomTls::new(given, fallback)?)
}

/// `/healthz`, `/readyz` and `/metrics` of this room on `--http`.
fn health_server(
    args: &RoomArgs,
    room: &Room,
    events: Option<Arc<crate::events::Events>>,
    messages: Arc<crate::messages::Messages>,
    presence: Option<Arc<ClusterPresence>>,
    membership_stats: Arc<Refills>,
) -> anyhow::Result<(Health, HttpServer)> {
    let listener = bind(args.http, "http")?;
    let metrics_room = room.clone();
    let health = Health::new(Arc::new(move |out: &mut String| {
        metrics_room.write_metrics(out);
        if let Some(e) = &events {
            e.write_metrics(out);
        }
        messages.write_metrics(out);
        if let Some(p) = &presence {
            p.write_metrics(out);
        }
        membership_stats.stats.write_metrics(out);
        // Calls to registers, the store and idgens (and other rooms).
        link::stats::render(out);
    }));
    let http = HttpServer::start(listener, health.router())?;
    Ok((health, http))
}

/// Serves centers on the internal link until the token is cancelled.
fn serve_centers(
    internal: tokio::net::TcpListener,
    room: &Room,
    key: String,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(link::serve(
        internal,
        RoomService::new(room.clone()),
        link::ServerConfig::new(key),
        stop.clone(),
    ));
    (stop, task)
}
