//! `pushgate center`, `pushgate register`, `pushgate saver`, `pushgate idgen`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use idgen::{FileIdGen, IdgenService, LeasedIds};
use register::{ClusterDirectory, RegisterService};
use saver::{EmbeddedStore, RedisStore, SaverService, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::args::{CenterArgs, CommonArgs, IdgenArgs, RegisterArgs, SaverArgs};
use super::rooms::ClusterRooms;
use super::{addrs, announce, bind, client_config, connect_store, STEP_TIMEOUT};

/// Ids leased from an idgen at a time.
const ID_BLOCK: u32 = 4096;
/// A leased block older than this is dropped, so ids stay close to the
/// clock (see `--replay-overlap-ms` of rooms).
const ID_BLOCK_AGE: Duration = Duration::from_millis(250);

/// Runs a center until SIGTERM or SIGINT.
///
/// # Errors
/// Start-up failures.
pub(crate) async fn run_center(args: CenterArgs) -> anyhow::Result<()> {
    let shutdown = crate::signal::Shutdown::install().context("install signal handlers")?;
    anyhow::ensure!(!args.api_key.is_empty(), "--api-key must not be empty");
    let key = &args.common.cluster_key;
    let cfg = client_config(key);
    let dir = ClusterDirectory::new(addrs(&args.registers, "--registers")?, cfg.clone());
    let ids = LeasedIds::new(
        addrs(&args.idgens, "--idgens")?,
        cfg.clone(),
        ID_BLOCK,
        ID_BLOCK_AGE,
    );
    let store = connect_store(&args.store, cfg).await?;
    let rooms = ClusterRooms::new(dir.clone(), key);
    let center = center::Center::new(
        center::CenterConfig {
            api_key: args.api_key.clone(),
            max_body: args.max_body,
            max_users: args.max_users,
            queue_max: args.queue_max,
            queue_ttl: Duration::from_secs(args.queue_ttl),
            ..center::CenterConfig::default()
        },
        center::CenterDeps {
            dir: dir.clone(),
            store,
            ids,
            rooms,
        },
    );
    if let Err(e) = dir.refresh().await {
        warn!(error = %e, "no register answered yet; rooms appear once one does");
    }
    let http = bind(args.http, "http").await?;
    let http_addr = http.local_addr()?;
    let stop = CancellationToken::new();
    let http_task = crate::net::spawn_http(
        http,
        center.router(),
        crate::net::settings().http,
        stop.clone(),
    );
    center.set_ready(true);
    announce(&[format!("http listening on {http_addr}")])?;
    info!(http = %http_addr, "center up");

    shutdown.wait().await;
    info!("shutting down");
    center.set_ready(false);
    stop.cancel();
    let abort = http_task.abort_handle();
    if tokio::time::timeout(STEP_TIMEOUT, http_task).await.is_err() {
        warn!("http server did not stop in time");
        abort.abort();
    }
    // Every push already accepted is stored and delivered before exit.
    if tokio::time::timeout(STEP_TIMEOUT, center.shutdown())
        .await
        .is_err()
    {
        warn!("dispatcher did not finish in time");
    }
    info!("stopped");
    Ok(())
}

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
    serve_until_signal(args.listen, svc, &args.common, shutdown, |addr| {
        info!(internal = %addr, lease_ms, "register up");
    })
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
    let (store, kind): (Arc<dyn Store>, String) = if let Some(url) = &args.redis {
        let s = RedisStore::connect(url)
            .await
            .with_context(|| format!("connect to redis {url}"))?;
        (Arc::new(s), format!("redis {url}"))
    } else if let Some(list) = &args.redis_cluster {
        let urls = addrs(list, "--redis-cluster")?;
        let s = RedisStore::connect_cluster(&urls)
            .await
            .with_context(|| format!("connect to redis cluster {list}"))?;
        (Arc::new(s), format!("redis cluster {list}"))
    } else {
        std::fs::create_dir_all(&args.data)
            .with_context(|| format!("create data dir {}", args.data.display()))?;
        let path = args.data.join("pushgate.redb");
        let s = EmbeddedStore::open(&path).context("open embedded store")?;
        (Arc::new(s), format!("embedded {}", path.display()))
    };
    serve_until_signal(
        args.listen,
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
    svc: Arc<S>,
    common: &CommonArgs,
    shutdown: crate::signal::Shutdown,
    up: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = bind(listen, "internal").await?;
    let addr = listener.local_addr()?;
    common.warn_if_open(addr);
    let stop = CancellationToken::new();
    let server = tokio::spawn(link::serve(
        listener,
        svc,
        link::ServerConfig::new(common.cluster_key.clone()),
        stop.clone(),
    ));
    announce(&[format!("internal listening on {addr}")])?;
    up(addr);
    shutdown.wait().await;
    stop.cancel();
    let _ = tokio::time::timeout(STEP_TIMEOUT, server).await;
    Ok(())
}
