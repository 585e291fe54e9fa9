//! Cluster mode: each component as its own process, talking over internal
//! links (`link` crate). One module per subcommand; this one holds what
//! they share (store selection, link settings, the health endpoint).

pub(crate) mod args;
pub(crate) mod dev;
mod nodes;
mod room_node;
mod rooms;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use saver::{RedisStore, RemoteStore, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub(crate) use nodes::{run_center, run_idgen, run_register, run_saver};
pub(crate) use room_node::run_room;

use args::StoreArgs;

/// Upper bound of each shutdown step.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Link client settings for `key`.
pub(crate) fn client_config(key: &str) -> link::ClientConfig {
    let mut cfg = link::ClientConfig::new(key);
    cfg.call_timeout = Duration::from_secs(3);
    cfg
}

/// Parses a comma-separated address list; at least one is required.
pub(crate) fn addrs(list: &str, what: &str) -> anyhow::Result<Vec<String>> {
    let v = link::split_addrs(list);
    anyhow::ensure!(!v.is_empty(), "{what}: at least one address is required");
    Ok(v)
}

/// The store a room or center uses: through savers, or Redis directly.
pub(crate) async fn connect_store(
    args: &StoreArgs,
    cfg: link::ClientConfig,
) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(list) = &args.saver {
        return Ok(RemoteStore::new(addrs(list, "--saver")?, cfg));
    }
    if let Some(url) = &args.redis {
        return Ok(Arc::new(
            RedisStore::connect(url)
                .await
                .with_context(|| format!("connect to redis {url}"))?,
        ));
    }
    if let Some(list) = &args.redis_cluster {
        let urls = addrs(list, "--redis-cluster")?;
        return Ok(Arc::new(
            RedisStore::connect_cluster(&urls)
                .await
                .with_context(|| format!("connect to redis cluster {list}"))?,
        ));
    }
    anyhow::bail!(
        "cluster mode needs a shared store: --saver ADDRS, --redis URL or --redis-cluster URLS"
    )
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

/// Readiness and metrics of a process without the REST API.
#[derive(Clone)]
pub(crate) struct Health {
    ready: Arc<AtomicBool>,
    metrics: Arc<dyn Fn(&mut String) + Send + Sync>,
}

impl Health {
    pub(crate) fn new(metrics: Arc<dyn Fn(&mut String) + Send + Sync>) -> Health {
        Health {
            ready: Arc::new(AtomicBool::new(false)),
            metrics,
        }
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until `stop`,
    /// with the process's HTTP limits (`--http-*`, see [`crate::net`]).
    pub(crate) fn serve(
        &self,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let ready = self.ready.clone();
        let metrics = self.metrics.clone();
        let app = axum::Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || {
                    let ready = ready.load(Ordering::Acquire);
                    async move {
                        if ready {
                            (StatusCode::OK, "ready")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                get(move || {
                    let mut out = String::new();
                    metrics(&mut out);
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            out,
                        )
                    }
                }),
            );
        crate::net::spawn_http(listener, app, crate::net::settings().http, stop)
    }
}

/// Binds `addr` (with the process's `--listen-backlog`) or says which flag to change.
#[allow(clippy::unused_async)] // callers await it; binding itself does not block
pub(crate) async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    crate::net::bind(addr, crate::net::settings().backlog)
        .with_context(|| format!("bind {what} listener {addr}"))
}
