//! The REST API's HTTP server around a [`Center`]: standalone and
//! `pushgate center` both serve it through [`ApiNode`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use center::Center;
use tracing::warn;

use crate::net::HttpServer;

/// Upper bound of each shutdown step.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A center serving the REST API (and health and metrics) on HTTP.
pub(crate) struct ApiNode {
    center: Center,
    http: HttpServer,
}

impl ApiNode {
    /// Binds `addr` (with the process's backlog and HTTP limits), serves
    /// `center`'s router and turns ready.
    ///
    /// # Errors
    /// When `addr` cannot be bound.
    pub(crate) fn start(center: Center, addr: SocketAddr) -> anyhow::Result<ApiNode> {
        let net = crate::net::settings();
        let listener = crate::net::bind(addr, net.backlog)
            .with_context(|| format!("bind http listener {addr}"))?;
        let http = HttpServer::start(listener, center.router())?;
        center.set_ready(true);
        Ok(ApiNode { center, http })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.http.addr()
    }

    /// `/readyz` answers 503 from now on (load balancers move away).
    pub(crate) fn not_ready(&self) {
        self.center.set_ready(false);
    }

    /// Stops the HTTP server, then lets the dispatcher store and deliver
    /// every push already accepted; each step bounded.
    pub(crate) async fn stop(self) {
        self.not_ready();
        self.http.stop(STEP_TIMEOUT).await;
        if tokio::time::timeout(STEP_TIMEOUT, self.center.shutdown())
            .await
            .is_err()
        {
            warn!("dispatcher did not finish in time");
        }
    }
}
