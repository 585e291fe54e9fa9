//! Readiness and metrics of a process without the REST API (cluster rooms).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;

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

    /// `/healthz`, `/readyz` and `/metrics`, to serve with
    /// [`crate::net::HttpServer`].
    pub(crate) fn router(&self) -> axum::Router {
        let ready = self.ready.clone();
        let metrics = self.metrics.clone();
        axum::Router::new()
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
            )
    }
}
