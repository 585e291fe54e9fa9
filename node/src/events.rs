//! Session events posted to the application server (`--events-url`):
//! connect, disconnect, sub, unsub and ack (delivery receipts), as
//! `POST URL` with `{"events":[…]}`, at least once a second while there
//! are any, and at most 1,000 per request.
//!
//! Delivery is at least once: a batch that fails (a refused connection, a
//! timeout, a status other than 2xx) is sent again, whole, with backoff
//! (0.1 s doubling to 10 s), until it is taken; the receiver de-duplicates
//! if it must (by `conn`, `event`, `ts`, and `id` or `channel`). Sessions
//! never wait for it: they hand events to a bounded queue
//! (`--events-queue`), and an event that finds the queue full is dropped
//! and counted (`pushgate_events_dropped_total`). At shutdown, what is
//! queued is posted once more within a few seconds, and what cannot be is
//! counted as dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use room::SessionEvent;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Events in one request at most.
pub(crate) const MAX_BATCH: usize = 1000;
/// How long an event waits for others to join its batch at most.
const LINGER: Duration = Duration::from_secs(1);
/// One request's time limit.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest wait before a failed batch is sent again.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Time allowed at shutdown to post what is queued.
const FLUSH_LIMIT: Duration = Duration::from_secs(3);

/// Where and how events are posted.
#[derive(Clone, Debug)]
pub(crate) struct EventsConfig {
    /// The receiver.
    pub(crate) url: reqwest::Url,
    /// Sent as `Authorization: Bearer <secret>` when set.
    pub(crate) secret: Option<String>,
    /// Events queued at most.
    pub(crate) queue: usize,
}

/// Counters of the poster.
#[derive(Default, Debug)]
struct Counters {
    posted: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
}

/// The sessions' side: a bounded queue in front of the posting task.
pub(crate) struct Events {
    tx: mpsc::Sender<SessionEvent>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    task: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

#[derive(Serialize)]
struct Batch<'a> {
    events: &'a [SessionEvent],
}

impl Events {
    /// Starts the posting task.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub(crate) fn start(cfg: EventsConfig) -> anyhow::Result<Arc<Events>> {
        let client = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .connect_timeout(POST_TIMEOUT)
            .build()?;
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let poster = Poster {
            client,
            cfg,
            counters: counters.clone(),
        };
        let task = tokio::spawn(poster.run(rx, stop.clone()));
        Ok(Arc::new(Events {
            tx,
            counters,
            stop,
            task: parking_lot::Mutex::new(Some(task)),
        }))
    }

    /// Queues `event`, or drops and counts it when the queue is full.
    pub(crate) fn push(&self, event: SessionEvent) {
        if self.tx.try_send(event).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Posts what is queued (bounded in time) and stops the task.
    pub(crate) async fn close(&self) {
        self.stop.cancel();
        let task = self.task.lock().take();
        if let Some(t) = task {
            let _ = timeout(FLUSH_LIMIT + POST_TIMEOUT, t).await;
        }
    }

    /// Appends the Prometheus text of the counters.
    pub(crate) fn write_metrics(&self, out: &mut String) {
        let c = &self.counters;
        let queued = self.tx.max_capacity() - self.tx.capacity();
        let rows = [
            (
                "pushgate_events_posted_total",
                "counter",
                "Session events taken by the events URL (a 2xx answer).",
                c.posted.load(Ordering::Relaxed),
            ),
            (
                "pushgate_events_dropped_total",
                "counter",
                "Session events dropped: the queue was full, or they could not be posted before shutdown.",
                c.dropped.load(Ordering::Relaxed),
            ),
            (
                "pushgate_events_post_failures_total",
                "counter",
                "Requests to the events URL that failed (refused, timed out, not 2xx); their batch is sent again.",
                c.failures.load(Ordering::Relaxed),
            ),
            (
                "pushgate_events_queued",
                "gauge",
                "Session events waiting to be posted.",
                queued as u64,
            ),
        ];
        write_rows(out, &rows);
    }
}

/// Writes unlabelled series in the Prometheus text format: (name, type,
/// help, value) each.
pub(crate) fn write_rows(out: &mut String, rows: &[(&str, &str, &str, u64)]) {
    use std::fmt::Write as _;
    for (name, kind, help, v) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
}

/// Writes one counter family with a label, a series per value: (label
/// value, count) each.
pub(crate) fn write_labelled(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    series: &[(&str, u64)],
) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, v) in series {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {v}");
    }
}

/// The posting task's state.
struct Poster {
    client: reqwest::Client,
    cfg: EventsConfig,
    counters: Arc<Counters>,
}

impl Poster {
    async fn run(self, mut rx: mpsc::Receiver<SessionEvent>, stop: CancellationToken) {
        let mut batch: Vec<SessionEvent> = Vec::with_capacity(MAX_BATCH);
        loop {
            // The first event, then others for up to LINGER or MAX_BATCH.
            let first = tokio::select! {
                () = stop.cancelled() => break,
                e = rx.recv() => match e {
                    Some(e) => e,
                    None => break,
                },
            };
            batch.push(first);
            let until = Instant::now() + LINGER;
            while batch.len() < MAX_BATCH {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until(until) => break,
                    e = rx.recv() => match e {
                        Some(e) => batch.push(e),
                        None => break,
                    },
                }
            }
            if !self.deliver(&batch, &stop).await {
                break;
            }
            batch.clear();
        }
        self.flush(batch, &mut rx).await;
    }

    /// Posts `batch` until it is taken; false when stopped first (the
    /// batch is then still to be flushed).
    async fn deliver(&self, batch: &[SessionEvent], stop: &CancellationToken) -> bool {
        let mut wait = BACKOFF_MIN;
        loop {
            if self.post(batch).await {
                return true;
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = sleep(wait) => {}
            }
            wait = (wait * 2).min(BACKOFF_MAX);
        }
    }

    /// At shutdown: `pending` and what is queued, one try per batch within
    /// [`FLUSH_LIMIT`]; what is left is counted as dropped.
    async fn flush(&self, mut pending: Vec<SessionEvent>, rx: &mut mpsc::Receiver<SessionEvent>) {
        rx.close();
        let deadline = Instant::now() + FLUSH_LIMIT;
        loop {
            while pending.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(e) => pending.push(e),
                    Err(_) => break,
                }
            }
            if pending.is_empty() {
                return;
            }
            let sent = Instant::now() < deadline
                && timeout(deadline - Instant::now(), self.post(&pending))
                    .await
                    .unwrap_or(false);
            if !sent {
                let mut lost = pending.len() as u64;
                while rx.try_recv().is_ok() {
                    lost += 1;
                }
                self.counters.dropped.fetch_add(lost, Ordering::Relaxed);
                warn!(lost, "session events not posted before shutdown");
                return;
            }
            pending.clear();
        }
    }

    /// One request; true on a 2xx answer.
    async fn post(&self, batch: &[SessionEvent]) -> bool {
        let mut req = self
            .client
            .post(self.cfg.url.clone())
            .json(&Batch { events: batch });
        if let Some(s) = &self.cfg.secret {
            req = req.bearer_auth(s);
        }
        let failed = match req.send().await {
            Ok(r) if r.status().is_success() => {
                self.counters
                    .posted
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                return true;
            }
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => e.to_string(),
        };
        let n = self.counters.failures.fetch_add(1, Ordering::Relaxed);
        // The first failure and then every 100th: a receiver that is down
        // would otherwise log at every retry.
        if n % 100 == 0 {
            warn!(url = %self.cfg.url, events = batch.len(), error = %failed, "posting session events failed; retrying");
        }
        false
    }
}
