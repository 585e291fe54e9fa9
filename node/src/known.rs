//! `--send-known-users-only`: the users a client may `send` to.
//!
//! A user is *known* when they authenticated on this deployment within
//! `--known-user-ttl` (default 30 days), or are connected now. The first
//! half is a record in the store ([`saver::Store::seen_put`]: the embedded
//! store's `seen` table, through its write-ahead log; the Redis key
//! `pg:{u:<user>}:seen`; through a saver in a cluster); the second is the
//! directory. The check itself is [`center::Center::user_known`], made by
//! [`crate::messages::Messages`] before the hook is asked.
//!
//! A room notes a user when they authenticate ([`KnownUsers::note`]), at
//! most once per user per room per hour (or per quarter of the time to
//! live, when that is shorter): a per-room table user -> when noted makes
//! a reconnect storm one write per user, not one per connection. The table
//! holds at most [`MAX_NOTED`] users: when full, the users noted longer
//! ago than that interval are dropped from it, and when that frees less
//! than a quarter it is emptied (those users are written again at their
//! next connect: a record extended early, never one missed).
//!
//! Notes never hold up a connection: they queue (at most [`QUEUE`]) for one
//! task that writes [`WRITES_AT_ONCE`] at a time. A note that finds the
//! queue full, or whose write fails, is counted and forgotten, so the
//! user's next connect notes them again; while connected they are known
//! through the directory anyway.
//!
//! Nothing of this exists when the flag is off: no table, no task, no write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use proto::UserId;
use tokio::sync::mpsc;

use crate::backend::Throttle;

/// `--known-user-ttl`'s default: 30 days, in seconds.
pub(crate) const DEFAULT_TTL_SECS: u64 = 30 * 86_400;

/// A user is written at most once per this long per room.
const NOTE_EVERY: Duration = Duration::from_secs(3600);

/// Users in one room's table of notes at most.
pub(crate) const MAX_NOTED: usize = 100_000;

/// Notes waiting for the writer at most; more are dropped (and counted).
const QUEUE: usize = 10_000;

/// Seen records being written at once.
const WRITES_AT_ONCE: usize = 16;

/// The longest one write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A room's notes of the users who authenticated there.
pub(crate) struct KnownUsers {
    shared: Arc<Shared>,
    /// To the writer task; the task ends once this is dropped.
    tx: mpsc::Sender<UserId>,
    /// Seconds between two writes of one user.
    every_s: u32,
    /// What the table's times count from.
    epoch: Instant,
}

/// What the writer task shares with the room.
struct Shared {
    store: Arc<dyn saver::Store>,
    ttl_ms: i64,
    /// User -> seconds since [`KnownUsers::epoch`] when last noted.
    noted: DashMap<UserId, u32>,
    written: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    errors: Throttle,
}

impl KnownUsers {
    /// Notes users in `store` for `ttl`; starts the writer task.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub(crate) fn start(store: Arc<dyn saver::Store>, ttl: Duration) -> Arc<KnownUsers> {
        let every = NOTE_EVERY.min(ttl / 4).max(Duration::from_secs(1));
        let shared = Arc::new(Shared {
            store,
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            noted: DashMap::new(),
            written: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            errors: Throttle::default(),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(shared.clone(), rx));
        Arc::new(KnownUsers {
            shared,
            tx,
            every_s: u32::try_from(every.as_secs()).unwrap_or(u32::MAX),
            epoch: Instant::now(),
        })
    }

    fn now_s(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// `user` authenticated in this room: queues a seen record unless this
    /// room wrote one for them lately. Never waits.
    pub(crate) fn note(&self, user: &UserId) {
        let now = self.now_s();
        let noted = &self.shared.noted;
        if let Some(at) = noted.get(user) {
            if now.saturating_sub(*at) < self.every_s {
                return;
            }
        }
        if noted.len() >= MAX_NOTED {
            self.trim(now);
        }
        noted.insert(user.clone(), now);
        if self.tx.try_send(user.clone()).is_err() {
            noted.remove(user);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes room in the full table (see the module's text).
    fn trim(&self, now: u32) {
        let noted = &self.shared.noted;
        noted.retain(|_, at| now.saturating_sub(*at) < self.every_s);
        if noted.len() >= MAX_NOTED / 4 * 3 {
            noted.clear();
        }
    }

    /// Counts a `send` refused with `unknown_user`.
    pub(crate) fn refused(&self) {
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the counters (Prometheus text).
    pub(crate) fn write_metrics(&self, out: &mut String) {
        let s = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        crate::events::write_labelled(
            out,
            "pushgate_known_users_recorded_total",
            "Seen records of --send-known-users-only written at authentication, by outcome (failed: the store did not take it; dropped: too many were waiting).",
            "outcome",
            &[
                ("written", get(&s.written)),
                ("failed", get(&s.failed)),
                ("dropped", get(&s.dropped)),
            ],
        );
        let noted_help =
            format!("Users this room wrote a seen record for lately (at most {MAX_NOTED}).");
        crate::events::write_rows(
            out,
            &[
                (
                    "pushgate_known_users_noted",
                    "gauge",
                    &noted_help,
                    s.noted.len() as u64,
                ),
                (
                    "pushgate_send_unknown_user_total",
                    "counter",
                    "Client sends refused with unknown_user (--send-known-users-only).",
                    get(&s.refused),
                ),
            ],
        );
    }
}

/// Writes the queued notes, [`WRITES_AT_ONCE`] at a time, until the room's
/// [`KnownUsers`] is gone.
async fn write_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<UserId>) {
    let mut writes = tokio::task::JoinSet::new();
    loop {
        if writes.len() >= WRITES_AT_ONCE {
            let _ = writes.join_next().await;
            continue;
        }
        tokio::select! {
            user = rx.recv() => {
                let Some(user) = user else { break };
                let s = shared.clone();
                writes.spawn(async move { s.write(user).await });
            }
            Some(_) = writes.join_next(), if !writes.is_empty() => {}
        }
    }
    while writes.join_next().await.is_some() {}
}

impl Shared {
    async fn write(&self, user: UserId) {
        let expires_at = crate::backend::now_ms().saturating_add(self.ttl_ms);
        let r = tokio::time::timeout(WRITE_TIMEOUT, self.store.seen_put(&user, expires_at)).await;
        let error = match r {
            Ok(Ok(())) => {
                self.written.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {WRITE_TIMEOUT:?}"),
        };
        // Forgotten, so that the user's next connect notes them again.
        self.noted.remove(&user);
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Some(more) = self.errors.allow() {
            tracing::warn!(user = %user, %error, suppressed = more, "known users: seen record not written");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A user is written once however often they connect; the table never
    /// grows past its cap.
    #[tokio::test]
    async fn notes_are_written_once_and_the_table_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn saver::Store> =
            Arc::new(saver::EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        let known = KnownUsers::start(store.clone(), Duration::from_secs(86_400));
        let alice = UserId::new("alice");
        for _ in 0..100 {
            known.note(&alice);
        }
        let now = crate::backend::now_ms();
        for _ in 0..200 {
            if known.shared.written.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.seen_get(&alice, now).await.unwrap());
        assert!(!store.seen_get(&UserId::new("bob"), now).await.unwrap());
        assert_eq!(known.shared.written.load(Ordering::Relaxed), 1);
        // Fill the table past its cap without the writer (notes that find
        // the queue full are dropped and forgotten): it stays bounded.
        for i in 0..MAX_NOTED + 10 {
            known.note(&UserId::new(&format!("u{i}")));
            assert!(known.shared.noted.len() <= MAX_NOTED);
        }
        store.close().await.unwrap();
    }
}
