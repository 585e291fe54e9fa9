//! `pushgate standalone`: every component in one process, wired in memory.
//!
//! Start-up order: data dir, secrets, TLS certificate, store, ids,
//! directory, room, center; then bind every listener before printing
//! `ready`. Shutdown (SIGTERM/SIGINT) runs the other way: stop accepting and
//! turn not-ready, drain clients with 4007 (QUIC: let the close frames go
//! out), stop HTTP, flush the dispatcher, close the store and checkpoint ids.
//! SIGHUP reloads the TLS certificate (see `crate::tls`).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proto::RoomId;
use register::{Directory, LocalDirectory};
use room::{Listener, QuicListener, Room, RoomConfig};
use saver::{EmbeddedStore, RedisStore, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::adapters::{LocalBackend, LocalRooms};
use crate::config::Config;
use crate::net;
use crate::secrets::{self, Origin};

/// Runs standalone mode until SIGTERM or SIGINT.
///
/// # Errors
/// Anything that prevents start-up (data dir, store, binding a port).
pub(crate) async fn run(cfg: Config) -> anyhow::Result<()> {
    // First of all, so that a SIGTERM during start-up is answered with an
    // orderly drain once everything is up, never with a hard kill.
    let shutdown = crate::signal::Shutdown::install().context("install signal handlers")?;
    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("create data dir {}", cfg.data.display()))?;
    let (api_key, key_origin) =
        secrets::load_or_generate(&cfg.data, "api_key", cfg.api_key.as_deref())
            .context("api key")?;
    let (token_secret, secret_origin) =
        secrets::load_or_generate(&cfg.data, "token_secret", cfg.token_secret.as_deref())
            .context("token secret")?;

    // TLS: given files (wss:// and TLS over TCP, and QUIC), else a
    // self-signed certificate in the data dir for QUIC only.
    let (certs, cert_files, tls_origin) = match &cfg.tls {
        Some(g) => (
            g.certs.clone(),
            (g.cert.clone(), g.key.clone()),
            format!(
                "tls certificate {} (wss:// and tls over tcp on)",
                g.cert.display()
            ),
        ),
        None => {
            let (certs, cert, key, generated) = crate::tls::self_signed_in(&cfg.data)?;
            let how = if generated {
                "generated and kept"
            } else {
                "kept"
            };
            let origin = format!(
                "self-signed tls certificate {how} in {} (quic only; ws and tcp are plain)",
                cfg.data.display()
            );
            (certs, (cert, key), origin)
        }
    };
    let reloader = crate::tls::Reloader::install(certs.clone(), Some(cert_files))
        .context("install SIGHUP handler")?;

    let store: Arc<dyn Store> = match &cfg.redis {
        Some(url) => Arc::new(
            RedisStore::connect(url)
                .await
                .with_context(|| format!("connect to redis {url}"))?,
        ),
        None => Arc::new(
            EmbeddedStore::open(&cfg.data.join("pushgate.redb")).context("open embedded store")?,
        ),
    };
    let ids = Arc::new(idgen::FileIdGen::open(&cfg.data, cfg.node_id).context("open idgen")?);
    let local_dir = Arc::new(LocalDirectory::new());
    let dir: Arc<dyn Directory> = local_dir.clone();
    let room_id = RoomId(u32::from(cfg.node_id));

    let max_connections = effective_max_connections(cfg.max_connections);
    let room = Room::new(
        RoomConfig {
            room: room_id,
            token_secret: Arc::from(token_secret.as_bytes()),
            heartbeat: cfg.heartbeat,
            auth_timeout: cfg.auth_timeout,
            max_frame: cfg.max_frame,
            send_queue: cfg.send_queue,
            send_queue_bytes: cfg.send_queue_bytes,
            max_user_connections: cfg.max_user_connections,
            max_channels: cfg.max_channels,
            max_connections,
            rate_limit: cfg.rate_limit,
            drain_reconnect_delay: Duration::from_secs(5),
            replay_overlap: 0,
            quic_retry_above: cfg.quic_retry_above,
            max_conns_per_ip: cfg.max_conns_per_ip,
        },
        Arc::new(LocalBackend {
            room: room_id,
            dir: dir.clone(),
            store: store.clone(),
            dir_errors: Default::default(),
            on_dir_error: None,
        }),
    );

    let center = center::Center::new(
        center::CenterConfig {
            api_key: api_key.clone(),
            max_body: cfg.max_body,
            max_users: cfg.max_users,
            queue_max: cfg.queue_max,
            queue_ttl: cfg.queue_ttl,
            ..center::CenterConfig::default()
        },
        center::CenterDeps {
            dir: dir.clone(),
            store: store.clone(),
            ids: ids.clone(),
            rooms: Arc::new(LocalRooms {
                id: room_id,
                room: room.clone(),
            }),
        },
    );
    {
        let room = room.clone();
        center.add_metrics_source(Arc::new(move |out: &mut String| room.write_metrics(out)));
    }

    let backlog = cfg.net.backlog;
    let ws = net::bind(cfg.ws, backlog)
        .with_context(|| format!("bind websocket listener {}", cfg.ws))?;
    let tcp =
        net::bind(cfg.tcp, backlog).with_context(|| format!("bind tcp listener {}", cfg.tcp))?;
    let quic = QuicListener::bind(cfg.quic, &certs, room.config())
        .with_context(|| format!("bind quic listener {} (udp)", cfg.quic))?;
    let http =
        net::bind(cfg.http, backlog).with_context(|| format!("bind http listener {}", cfg.http))?;
    let (ws_addr, tcp_addr, http_addr) = (ws.local_addr()?, tcp.local_addr()?, http.local_addr()?);
    let quic_addr = quic.local_addr()?;

    dir.room_up(room_id).await.context("register room")?;

    let accept_stop = CancellationToken::new();
    let http_stop = CancellationToken::new();
    let stream_tls = cfg.tls.is_some();
    let stream_certs = stream_tls.then(|| certs.clone());
    let listeners = [
        Listener::Ws(ws, stream_certs.clone()),
        Listener::Tcp(tcp, stream_certs),
        Listener::Quic(quic.clone()),
    ];
    let [ws_task, tcp_task, quic_task] = listeners.map(|l| {
        let (room, stop) = (room.clone(), accept_stop.clone());
        tokio::spawn(async move { room.serve(l, stop).await })
    });
    let reload_task = reloader.spawn();
    let http_task = net::spawn_http(http, center.router(), cfg.net.http, http_stop.clone());
    center.set_ready(true);
    let prune_task = tokio::spawn(prune_directory(local_dir));

    let mut out = std::io::stdout().lock();
    writeln!(out, "ws listening on {ws_addr}")?;
    writeln!(out, "tcp listening on {tcp_addr}")?;
    writeln!(out, "quic listening on {quic_addr}")?;
    writeln!(out, "http listening on {http_addr}")?;
    writeln!(out, "tls fingerprint: {}", certs.fingerprint())?;
    let describe = |o: Origin, name: &str| match o {
        Origin::Given => format!("{name}: (given by configuration)"),
        Origin::Kept => format!("{name} kept in {}", cfg.data.display()),
        Origin::Generated => format!("{name} generated and kept in {}", cfg.data.display()),
    };
    if key_origin != Origin::Given {
        writeln!(out, "api key: {api_key}")?;
    }
    if secret_origin != Origin::Given {
        writeln!(out, "token secret: {token_secret}")?;
    }
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    info!(
        ws = %ws_addr, tcp = %tcp_addr, quic = %quic_addr, http = %http_addr,
        store = if cfg.redis.is_some() { "redis" } else { "embedded" },
        "{}; {}; {tls_origin}",
        describe(key_origin, "api key"),
        describe(secret_origin, "token secret"),
    );

    shutdown.wait().await;
    info!("shutting down: draining connections");
    center.set_ready(false);
    accept_stop.cancel();
    let drained = room.drain(cfg.drain_timeout).await;
    if !drained {
        warn!("drain timeout: some connections were still open");
    }
    quic.wait_idle(QUIC_CLOSE_WAIT).await;
    reload_task.abort();
    http_stop.cancel();
    let http_abort = http_task.abort_handle();
    match tokio::time::timeout(STEP_TIMEOUT, http_task).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "http server"),
        Ok(_) => {}
        Err(_) => {
            warn!("http server did not stop in time");
            http_abort.abort();
        }
    }
    // Pushes already accepted are stored and delivered before the store
    // closes; every step is bounded so a hung dependency cannot keep the
    // process from exiting.
    if tokio::time::timeout(STEP_TIMEOUT, center.shutdown())
        .await
        .is_err()
    {
        warn!("dispatcher did not finish in time");
    }
    prune_task.abort();
    let _ = tokio::time::timeout(STEP_TIMEOUT, async {
        let _ = tokio::join!(ws_task, tcp_task, quic_task);
    })
    .await;
    if let Err(e) = dir.room_down(room_id).await {
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

/// Upper bound of each shutdown step after the drain.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait after the drain for QUIC close frames to reach clients.
pub(crate) const QUIC_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long the directory remembers a user after their last connection ended.
const DIRECTORY_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// Forgets long-offline users once a minute (see [`LocalDirectory::prune_offline`]).
async fn prune_directory(dir: Arc<LocalDirectory>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cutoff = crate::adapters::now_ms()
            .saturating_sub(i64::try_from(DIRECTORY_MEMORY.as_millis()).unwrap_or(i64::MAX));
        let dropped = prune_offline_blocking(&dir, cutoff).await;
        tracing::debug!(dropped, "directory pruned");
    }
}

/// Runs the O(users) prune off the async workers.
async fn prune_offline_blocking(dir: &Arc<LocalDirectory>, cutoff: i64) -> usize {
    let dir = Arc::clone(dir);
    tokio::task::spawn_blocking(move || dir.prune_offline(cutoff))
        .await
        .unwrap_or(0)
}

/// Files kept for everything that is not a client connection (listeners,
/// the store, logs, HTTP clients).
const RESERVED_FILES: u64 = 256;

/// Every connection is a file: cap connections below the open-files limit,
/// less the files kept for other uses and the HTTP connections' share (see
/// [`net::http_cap`]), so a full process refuses new clients quickly instead
/// of failing accept() with EMFILE, and say so (docs/OPERATIONS.md explains
/// how to raise it).
pub(crate) fn effective_max_connections(configured: usize) -> usize {
    let Some(limit) = net::nofile_limit() else {
        return configured;
    };
    let http = net::http_cap(net::settings().http.max_conns, Some(limit));
    let http = u64::try_from(http).unwrap_or(u64::MAX);
    let cap = limit
        .saturating_sub(RESERVED_FILES)
        .saturating_sub(http)
        .max(1);
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    if cap < configured {
        warn!(
            nofile = limit,
            max_connections = cap,
            "the open-files limit caps connections below --max-connections; raise nofile (docs/OPERATIONS.md)"
        );
        cap
    } else {
        configured
    }
}
