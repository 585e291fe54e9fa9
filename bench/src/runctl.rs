//! Run control shared by the subcommands: Ctrl-C turns into cancellation,
//! and task groups are drained within a time budget.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// On Ctrl-C prints `interrupted: <what>` and cancels `cancel`; the flag it
/// returns tells afterwards whether that happened. The watcher ends when
/// `cancel` is cancelled for any other reason.
pub(crate) fn spawn_ctrl_c(cancel: CancellationToken, what: &'static str) -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            r = tokio::signal::ctrl_c() => if r.is_ok() {
                eprintln!("interrupted: {what}");
                flag.store(true, Relaxed);
                cancel.cancel();
            },
        }
    });
    interrupted
}

/// Closes `tracker` and waits up to `within` for its tasks to end; false
/// when some were still running then.
pub(crate) async fn close_and_wait(tracker: &TaskTracker, within: Duration) -> bool {
    tracker.close();
    tokio::time::timeout(within, tracker.wait()).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_and_wait_reports_stragglers() {
        let quick = TaskTracker::new();
        quick.spawn(async {});
        assert!(close_and_wait(&quick, Duration::from_secs(30)).await);
        assert!(quick.is_closed());

        let stuck = TaskTracker::new();
        stuck.spawn(std::future::pending::<()>());
        assert!(!close_and_wait(&stuck, Duration::from_millis(50)).await);
        assert!(stuck.is_closed());
    }
}
