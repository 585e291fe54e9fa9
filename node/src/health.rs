//! Readiness and metrics of a process without the REST API (cluster rooms).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
