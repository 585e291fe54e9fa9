//! The REST API's HTTP server around a [`Center`]: standalone and
//! `pushgate center` both serve it through [`ApiNode`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use center::Center;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Upper bound of each shutdown step.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A center serving the REST API (and health and metrics) on HTTP.
pub(crate) struct ApiNode {
    center: Center,
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
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
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = crate::net::spawn_http(listener, center.router(), net.http, stop.clone());
        center.set_ready(true);
        Ok(ApiNode {
            center,
            addr,
            stop,
            task,
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `/readyz` answers 503 from now on (load balancers move away).
    pub(crate) fn not_ready(&self) {
        self.center.set_ready(false);
    }

    /// Stops the HTTP server, then lets the dispatcher store and deliver
    /// every push already accepted; each step bounded.
    pub(crate) async fn stop(self) {
        self.not_ready();
        self.stop.cancel();
        let abort = self.task.abort_handle();
        match tokio::time::timeout(STEP_TIMEOUT, self.task).await {
            Ok(Ok(Err(e))) => warn!(error = %e, "http server"),
            Ok(_) => {}
            Err(_) => {
                warn!("http server did not stop in time");
                abort.abort();
            }
        }
        if tokio::time::timeout(STEP_TIMEOUT, self.center.shutdown())
            .await
            .is_err()
        {
            warn!("dispatcher did not finish in time");
        }
    }
}
