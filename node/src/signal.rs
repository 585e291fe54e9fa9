//! Waiting for the signal to shut down.
//!
//! The handlers are installed by [`Shutdown::install`], before pushgate says
//! `ready`, so a SIGTERM that arrives at any moment after that drains and
//! flushes instead of killing the process outright.

#[cfg(unix)]
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Installed SIGTERM and SIGINT handlers.
pub(crate) struct Shutdown {
    #[cfg(unix)]
    term: Signal,
    #[cfg(unix)]
    int: Signal,
}

impl Shutdown {
    /// Installs the handlers now.
    ///
    /// # Errors
    /// When the signal handlers cannot be registered.
    pub(crate) fn install() -> std::io::Result<Shutdown> {
        Ok(Shutdown {
            #[cfg(unix)]
            term: signal(SignalKind::terminate())?,
            #[cfg(unix)]
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Completes on SIGTERM or SIGINT (Ctrl-C), or when the parent named by
    /// `PUSHGATE_PARENT_PID` is gone (children of `pushgate dev-cluster`
    /// stop with it even when it is killed outright).
    pub(crate) async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
            () = parent_gone() => {
                tracing::warn!("parent process gone: shutting down");
            },
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Environment variable naming the parent whose death stops this process.
pub(crate) const PARENT_PID_ENV: &str = "PUSHGATE_PARENT_PID";

/// Completes when this process has been re-parented away from the process
/// named by [`PARENT_PID_ENV`]; never when the variable is not set.
#[cfg(unix)]
async fn parent_gone() {
    let parent = std::env::var(PARENT_PID_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    let Some(parent) = parent else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
        if now != parent {
            return;
        }
    }
}
