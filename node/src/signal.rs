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
    #[cfg(target_os = "linux")]
    if parent_exit(parent).await == Some(true) {
        return;
    }
    // No pidfd (not Linux, or a kernel before 5.3): look twice a second.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        if !is_parent(parent) {
            return;
        }
    }
}

/// Whether `pid` is still this process's parent.
#[cfg(unix)]
fn is_parent(pid: i32) -> bool {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()) == pid
}

/// Waits for `parent` to exit on a pidfd, polled by a small thread that
/// sleeps in the kernel until then: no timer wakes this process twice a
/// second (every process of a dev-cluster has one). `None` when no pidfd
/// can be opened, `Some(false)` when waiting on it failed.
#[cfg(target_os = "linux")]
async fn parent_exit(parent: i32) -> Option<bool> {
    use rustix::event::{poll, PollFd, PollFlags};
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    let fd = pidfd_open(Pid::from_raw(parent)?, PidfdFlags::empty()).ok()?;
    // Checked after the pidfd is open: if the parent is still ours now, the
    // pidfd names it (not a later process given the same pid).
    if !is_parent(parent) {
        return Some(true);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("parent-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            let exited = loop {
                match poll(&mut fds, None) {
                    Ok(n) if n > 0 => break true,
                    Ok(_) | Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => break false,
                }
            };
            let _ = tx.send(exited);
        })
        .ok()?;
    Some(rx.await.unwrap_or(false))
}
