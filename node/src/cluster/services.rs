//! `pushgate register`, `pushgate saver`, `pushgate idgen`: one link
//! service each, served until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use idgen::{FileIdGen, IdgenService};
use register::RegisterService;
use saver::{EmbeddedStore, SaverService, Store};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{announce, bind, connect_redis, STEP_TIMEOUT};
use crate::health::Health;
use crate::net::HttpServer;
use crate::settings::process::CommonArgs;
use crate::settings::{IdgenArgs, RegisterArgs, SaverArgs};

/// Runs a register until SIGTERM or SIGINT. It keeps everything in memory:
/// after a restart the rooms refill it within a lease renewal.
///
/// # Errors
/// Start-up failures.
pub(crate) async fn run_register(args: RegisterArgs) -> anyhow::Result<()> {
    let shutdown = crate::signal::Shutdown::install().context("install signal handlers")?;
    let svc = RegisterService::new(Duration::from_millis(args.lease_ms));
    let stop = CancellationToken::new();
    let sweeper = svc.spawn_sweeper(stop.clone());
    let lease_ms = args.lease_ms;
    serve_until_signal(
        args.listen,
        args.http,
        svc,
        &args.common,
        shutdown,
        |addr| {
            info!(internal = %addr, lease_ms, "register up");
        },
    )
    .await?;
    stop.cancel();
    let _ = tokio::time::timeout(STEP_TIMEOUT, sweeper).await;
    info!("stopped");
    Ok(())
}

/// Runs a saver until SIGTERM or SIGINT.
///
/// # Errors
/// Start-up failures (store unreachable, data dir).
pub(crate) async fn run_saver(args: SaverArgs) -> anyhow::Result<()> {
    let shutdown = crate::signal::Shutdown::install().context("install signal handlers")?;
    let redis = connect_redis(&args.store).await?;
    let (store, kind): (Arc<dyn Store>, String) = if let Some(s) = redis {
        let what = args.store.redis.as_ref().map_or_else(
            || {
                format!(
                    "redis cluster {}",
                    args.store.redis_cluster.as_deref().unwrap_or_default()
                )
            },
            |url| format!("redis {url}"),
        );
        (s, what)
    } else {
        std::fs::create_dir_all(&args.data)
            .with_context(|| format!("create data dir {}", args.data.display()))?;
        let path = args.data.join("pushgate.redb");
        let s = EmbeddedStore::open(&path).context("open embedded store")?;
        (Arc::new(s), format!("embedded {}", path.display()))
    };
    serve_until_signal(
        args.listen,
        args.http,
        SaverService::new(store.clone()),
        &args.common,
        shutdown,
        |addr| {
            info!(internal = %addr, store = %kind, "saver up");
        },
    )
    .await?;
    tokio::time::timeout(STEP_TIMEOUT, store.close())
        .await
        .context("close store: timed out")?
        .context("close store")?;
    info!("stopped");
    Ok(())
}

/// Runs an idgen until SIGTERM or SIGINT.
///
/// # Errors
/// Start-up failures (checkpoint unreadable, region out of range).
pub(crate) async fn run_idgen(args: IdgenArgs) -> anyhow::Result<()> {
    let shutdown = crate::signal::Shutdown::install().context("install signal handlers")?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("create data dir {}", args.data.display()))?;
    let ids = Arc::new(FileIdGen::open(&args.data, args.region).context("open idgen")?);
    let region = args.region;
    serve_until_signal(
        args.listen,
        args.http,
        IdgenService::new(ids.clone()),
        &args.common,
        shutdown,
        |addr| {
            info!(internal = %addr, region, "idgen up");
        },
    )
    .await?;
    tokio::time::timeout(STEP_TIMEOUT, ids.close())
        .await
        .context("checkpoint ids: timed out")?
        .context("checkpoint ids")?;
    info!("stopped");
    Ok(())
}

/// Serves `svc` on `listen` (an internal link listener), prints the
/// listener and `ready`, and returns once SIGTERM or SIGINT arrived and the
/// server stopped (bounded by [`STEP_TIMEOUT`]). `up` logs what started.
async fn serve_until_signal<S: link::Service>(
    listen: SocketAddr,
    http: Option<SocketAddr>,
    svc: Arc<S>,
    common: &CommonArgs,
    shutdown: crate::signal::Shutdown,
    up: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = bind(listen, "internal")?;
    let addr = listener.local_addr()?;
    common.warn_if_open(addr);
    let health = http.map(health_server).transpose()?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(link::serve(
        listener,
        svc,
        link::ServerConfig::new(common.cluster_key.clone()),
        stop.clone(),
    ));
    let mut lines = vec![format!("internal listening on {addr}")];
    if let Some((h, server)) = &health {
        h.set_ready(true);
        lines.push(format!("http listening on {}", server.addr()));
    }
    announce(&lines)?;
    up(addr);
    shutdown.wait().await;
    if let Some((h, _)) = &health {
        h.set_ready(false);
    }
    stop.cancel();
    let _ = tokio::time::timeout(STEP_TIMEOUT, server).await;
    if let Some((_, server)) = health {
        server.stop(STEP_TIMEOUT).await;
    }
    Ok(())
}

/// `/healthz`, `/readyz` and `/metrics` (the link figures: the requests
/// this process answered, and any calls it made) on `--http`.
fn health_server(addr: SocketAddr) -> anyhow::Result<(Health, HttpServer)> {
    let listener = bind(addr, "http")?;
    let health = Health::new(Arc::new(link::stats::render));
    let server = HttpServer::start(listener, health.router())?;
    Ok((health, server))
}
