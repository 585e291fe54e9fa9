//! Cluster mode: each component as its own process, talking over internal
//! links (`link` crate). One module per subcommand; this one holds what
//! they share (store selection, link settings, the `ready` lines).

pub(crate) mod center;
mod membership;
pub(crate) mod room;
mod rooms;
pub(crate) mod services;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use saver::{RedisStore, RemoteStore, Store};
use tokio::net::TcpListener;

use crate::settings::store::{RedisArgs, StoreArgs};

/// Upper bound of each shutdown step.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Link client settings for `key`.
pub(crate) fn client_config(key: &str) -> link::ClientConfig {
    let mut cfg = link::ClientConfig::new(key);
    cfg.call_timeout = Duration::from_secs(3);
    cfg
}

/// Redis, when `args` names a server or a cluster.
///
/// # Errors
/// When it cannot be reached.
pub(crate) async fn connect_redis(args: &RedisArgs) -> anyhow::Result<Option<Arc<dyn Store>>> {
    if let Some(url) = &args.redis {
        let s = RedisStore::connect(url)
            .await
            .with_context(|| format!("connect to redis {url}"))?;
        return Ok(Some(Arc::new(s)));
    }
    if let Some(list) = &args.redis_cluster {
        // At least one: the value parser has checked it.
        let urls = link::split_addrs(list);
        let s = RedisStore::connect_cluster(&urls)
            .await
            .with_context(|| format!("connect to redis cluster {list}"))?;
        return Ok(Some(Arc::new(s)));
    }
    Ok(None)
}

/// The store a room or center uses: through savers, or Redis directly.
pub(crate) async fn connect_store(
    args: &StoreArgs,
    cfg: link::ClientConfig,
) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(list) = &args.saver {
        return Ok(RemoteStore::new(link::split_addrs(list), cfg));
    }
    match connect_redis(&args.direct).await? {
        Some(s) => Ok(s),
        None => anyhow::bail!(
            "cluster mode needs a shared store: --saver ADDRS, --redis URL or --redis-cluster URLS"
        ),
    }
}

/// Prints the lines tools and tests wait for, then `ready`.
pub(crate) fn announce(lines: &[String]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for l in lines {
        writeln!(out, "{l}")?;
    }
    writeln!(out, "ready")?;
    out.flush()?;
    Ok(())
}

/// Binds `addr` (with the process's `--listen-backlog`) or says which flag to change.
pub(crate) fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    crate::net::bind(addr, crate::net::settings().backlog)
        .with_context(|| format!("bind {what} listener {addr}"))
}
