//! `pushgate standalone`: every component in one process, wired in memory.
//!
//! Start-up order: data dir, secrets, TLS certificate, store, ids,
//! directory, room, center; then bind every listener before printing
//! `ready`. Shutdown (SIGTERM/SIGINT) runs the other way: stop accepting and
//! turn not-ready, drain clients with 4007 (QUIC: let the close frames go
//! out), stop HTTP, flush the dispatcher, close the store and checkpoint ids.
//! SIGHUP reloads the TLS certificate (see `crate::tls`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proto::RoomId;
use register::{Directory, LocalDirectory};
use room::Room;
use saver::{EmbeddedStore, Store};
use tracing::{info, warn};

use crate::api::ApiNode;
use crate::backend::LocalBackend;
use crate::local_rooms::LocalRooms;
use crate::room_node::{Listen, RoomNode};
use crate::secrets::{self, Origin};
use crate::settings::room::RoomRole;
use crate::settings::StandaloneArgs;
use crate::tls::{Fallback, RoomTls};

/// Upper bound of each shutdown step after the drain.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the directory remembers a user after their last connection ended.
const DIRECTORY_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// Reconnect delay suggested to clients drained by a standalone server,
/// which is about to be gone for a restart.
const RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Runs standalone mode until SIGTERM or SIGINT.
///
/// # Errors
/// Anything that prevents start-up (data dir, store, binding a port).
pub(crate) async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    // First of all, so that a SIGTERM during start-up is answered with an
    // orderly drain once everything is up, never with a hard kill.
    let shutdown = crate::signal::Shutdown::install().context("install signal handlers")?;
    let data = &args.data;
    std::fs::create_dir_all(data).with_context(|| format!("create data dir {}", data.display()))?;
    let (api_key, key_origin) =
        secrets::load_or_generate(data, "api_key", args.api_key.as_deref()).context("api key")?;
    let (token_secret, secret_origin) =
        secrets::load_or_generate(data, "token_secret", args.token_secret.as_deref())
            .context("token secret")?;
    let given = crate::tls::given(args.room.tls_cert.clone(), args.room.tls_key.clone())
        .map_err(anyhow::Error::msg)?;
    let tls = RoomTls::new(given, Fallback::KeptIn(data))?;
    let tls_origin = tls.origin.clone();

    let store: Arc<dyn Store> = match crate::cluster::connect_redis(&args.store).await? {
        Some(s) => s,
        None => Arc::new(
            EmbeddedStore::open(&data.join("pushgate.redb")).context("open embedded store")?,
        ),
    };
    let ids = Arc::new(idgen::FileIdGen::open(data, args.node_id).context("open idgen")?);
    let local_dir = Arc::new(LocalDirectory::new());
    let dir: Arc<dyn Directory> = local_dir.clone();
    let role = RoomRole {
        id: RoomId(u32::from(args.node_id)),
        reconnect_delay: RECONNECT_DELAY,
        replay_overlap: 0,
    };
    let room = Room::new(
        args.room.room_config(role, &token_secret),
        Arc::new(LocalBackend::new(role.id, dir.clone(), store.clone(), None)),
    );
    let center = center::Center::new(
        args.center.center_config(api_key.clone()),
        center::CenterDeps {
            dir: dir.clone(),
            store: store.clone(),
            ids: ids.clone(),
            rooms: Arc::new(LocalRooms {
                id: role.id,
                room: room.clone(),
            }),
        },
    );
    {
        let room = room.clone();
        center.add_metrics_source(Arc::new(move |out: &mut String| room.write_metrics(out)));
    }

    dir.room_up(role.id).await.context("register room")?;
    let listen = Listen {
        ws: args.room.ws,
        tcp: args.room.tcp,
        quic: Some(args.quic),
    };
    let node = RoomNode::start(room, listen, tls)?;
    let api = ApiNode::start(center, args.http)?;
    let prune_task = tokio::spawn(prune_directory(local_dir));

    let mut lines = node.lines().to_vec();
    lines.push(format!("http listening on {}", api.addr()));
    lines.extend(node.fingerprint().map(|f| format!("tls fingerprint: {f}")));
    if key_origin != Origin::Given {
        lines.push(format!("api key: {api_key}"));
    }
    if secret_origin != Origin::Given {
        lines.push(format!("token secret: {token_secret}"));
    }
    crate::cluster::announce(&lines)?;
    let describe = |o: Origin, name: &str| match o {
        Origin::Given => format!("{name}: (given by configuration)"),
        Origin::Kept => format!("{name} kept in {}", data.display()),
        Origin::Generated => format!("{name} generated and kept in {}", data.display()),
    };
    info!(
        listeners = ?node.lines(), http = %api.addr(),
        store = if args.store.redis.is_some() || args.store.redis_cluster.is_some() { "redis" } else { "embedded" },
        "{}; {}; {tls_origin}",
        describe(key_origin, "api key"),
        describe(secret_origin, "token secret"),
    );

    shutdown.wait().await;
    info!("shutting down: draining connections");
    api.not_ready();
    node.drain(args.room.drain_timeout()).await;
    // Pushes already accepted are stored and delivered before the store
    // closes; every step is bounded so a hung dependency cannot keep the
    // process from exiting.
    api.stop().await;
    prune_task.abort();
    if let Err(e) = dir.room_down(role.id).await {
        warn!(error = %e, "deregister room");
    }
    tokio::time::timeout(STEP_TIMEOUT, store.close())
        .await
        .context("close store: timed out")?
        .context("close store")?;
    tokio::time::timeout(STEP_TIMEOUT, ids.close())
        .await
        .context("checkpoint ids: timed out")?
        .context("checkpoint ids")?;
    info!("stopped");
    Ok(())
}

/// Forgets long-offline users once a minute (see [`LocalDirectory::prune_offline`]).
async fn prune_directory(dir: Arc<LocalDirectory>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cutoff = crate::backend::now_ms()
            .saturating_sub(i64::try_from(DIRECTORY_MEMORY.as_millis()).unwrap_or(i64::MAX));
        // The O(users) prune runs off the async workers.
        let d = Arc::clone(&dir);
        let dropped = tokio::task::spawn_blocking(move || d.prune_offline(cutoff))
            .await
            .unwrap_or(0);
        tracing::debug!(dropped, "directory pruned");
    }
}
