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

    /// Completes on SIGTERM or SIGINT (Ctrl-C).
    pub(crate) async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
