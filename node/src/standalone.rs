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
use register::Directory;
use room::Room;
use saver::{EmbeddedStore, Store};
use tracing::{info, warn};

use crate::api::ApiNode;
use crate::backend::{LocalBackend, Presence};
use crate::local_rooms::LocalRooms;
use crate::room_directory::{OnlineTimes, RoomDirectory};
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
    let api_key =
        secrets::load_or_generate(data, "api_key", args.api_key.as_deref()).context("api key")?;
    let token_secret =
        secrets::load_or_generate(data, "token_secret", args.token_secret.as_deref())
            .context("token secret")?;
    let given = crate::tls::given(args.room.tls_cert.clone(), args.room.tls_key.clone())
        .map_err(anyhow::Error::msg)?;
    let tls = RoomTls::new(given, Fallback::KeptIn(data))?;
    let tls_origin = tls.origin.clone();
    let parts = Parts::assemble(&args, &api_key.0, &token_secret.0).await?;

    parts
        .dir
        .room_up(parts.room_id)
        .await
        .context("register room")?;
    let listen = Listen {
        ws: args.room.ws,
        tcp: args.room.tcp,
        quic: Some(args.quic),
    };
    let node = RoomNode::start(parts.room.clone(), listen, tls)?;
    let api = ApiNode::start(parts.center.clone(), args.http)?;
    let prune_task = tokio::spawn(prune_directory(parts.local_dir.clone()));

    let mut lines = node.lines().to_vec();
    lines.push(format!("http listening on {}", api.addr()));
    lines.extend(node.fingerprint().map(|f| format!("tls fingerprint: {f}")));
    for ((value, origin), name) in [(&api_key, "api key"), (&token_secret, "token secret")] {
        if *origin != Origin::Given {
            lines.push(format!("{name}: {value}"));
        }
    }
    crate::cluster::announce(&lines)?;
    let describe = |o: Origin, name: &str| match o {
        Origin::Given => format!("{name}: (given by configuration)"),
        Origin::Kept => format!("{name} kept in {}", data.display()),
        Origin::Generated => format!("{name} generated and kept in {}", data.display()),
    };
    let redis = args.store.redis.is_some() || args.store.redis_cluster.is_some();
    info!(
        listeners = ?node.lines(), http = %api.addr(),
        store = if redis { "redis" } else { "embedded" },
        "{}; {}; {tls_origin}",
        describe(api_key.1, "api key"),
        describe(token_secret.1, "token secret"),
    );

    shutdown.wait().await;
    info!("shutting down: draining connections");
    api.not_ready();
    node.drain(args.room.drain_timeout()).await;
    // The drained sessions' disconnect events are queued: post them.
    if let Some(e) = &parts.events {
        e.close().await;
    }
    // Pushes already accepted are stored and delivered before the store
    // closes; every step is bounded so a hung dependency cannot keep the
    // process from exiting.
    api.stop().await;
    prune_task.abort();
    parts.close().await?;
    info!("stopped");
    Ok(())
}

/// The components of a standalone process, wired in memory.
struct Parts {
    room_id: RoomId,
    store: Arc<dyn Store>,
    ids: Arc<idgen::FileIdGen>,
    local_dir: Arc<RoomDirectory>,
    dir: Arc<dyn Directory>,
    room: Room,
    center: center::Center,
    /// Posts session events (`--events-url`).
    events: Option<Arc<crate::events::Events>>,
}

impl Parts {
    /// Opens the store and the ids, and builds the directory, the room and
    /// the center around them.
    async fn assemble(
        args: &StandaloneArgs,
        api_key: &str,
        token_secret: &str,
    ) -> anyhow::Result<Parts> {
        let data = &args.data;
        let store: Arc<dyn Store> = match crate::cluster::connect_redis(&args.store).await? {
            Some(s) => s,
            None => Arc::new(
                EmbeddedStore::open(&data.join("pushgate.redb")).context("open embedded store")?,
            ),
        };
        let ids = Arc::new(idgen::FileIdGen::open(data, args.node_id).context("open idgen")?);
        let times = OnlineTimes::new();
        let role = RoomRole {
            id: RoomId(u32::from(args.node_id)),
            reconnect_delay: RECONNECT_DELAY,
            replay_overlap: 0,
        };
        let events = args.room.events().context("start posting session events")?;
        let known = args.room.known_users(&store);
        let messages = args
            .room
            .messages(known.clone())
            .context("set up the hook")?;
        let room = Room::new(
            args.room.room_config(
                role,
                token_secret,
                args.room.token_keys().map_err(anyhow::Error::msg)?,
            ),
            Arc::new(
                LocalBackend::new(role.id, Presence::Local(times.clone()), store.clone())
                    .with_events(events.clone())
                    .with_messages(messages.clone())
                    .with_known_users(known),
            ),
        );
        args.room
            .refresh_jwks(&room.config().token_keys)
            .map_err(anyhow::Error::msg)?;
        // The room's own index is the directory: no second copy of every
        // connection (see `crate::room_directory`).
        let local_dir = Arc::new(RoomDirectory::new(role.id, room.clone(), times));
        let dir: Arc<dyn Directory> = local_dir.clone();
        let center = center::Center::new(
            args.center.center_config(api_key.to_owned()),
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
        messages.set_center(center.clone());
        let metrics_room = room.clone();
        let metrics_events = events.clone();
        center.add_metrics_source(Arc::new(move |out: &mut String| {
            metrics_room.write_metrics(out);
            if let Some(e) = &metrics_events {
                e.write_metrics(out);
            }
            messages.write_metrics(out);
        }));
        Ok(Parts {
            room_id: role.id,
            store,
            ids,
            local_dir,
            dir,
            room,
            center,
            events,
        })
    }

    /// Deregisters the room, closes the store and checkpoints the ids.
    async fn close(self) -> anyhow::Result<()> {
        if let Err(e) = self.dir.room_down(self.room_id).await {
            warn!(error = %e, "deregister room");
        }
        tokio::time::timeout(STEP_TIMEOUT, self.store.close())
            .await
            .context("close store: timed out")?
            .context("close store")?;
        tokio::time::timeout(STEP_TIMEOUT, self.ids.close())
            .await
            .context("checkpoint ids: timed out")?
            .context("checkpoint ids")?;
        Ok(())
    }
}

/// Forgets long-offline users once a minute (see [`RoomDirectory::prune_offline`]).
async fn prune_directory(dir: Arc<RoomDirectory>) {
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
