//! The room's [`room::Backend`]: the directory and the store, in process
//! (standalone) or over links to registers and savers (cluster rooms).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use proto::{MsgFrame, MsgId, RoomId, UserId};
use register::{ConnInfo, Directory};
use room::{Backend, BackendError, SessionInfo};
use saver::{Store, StoredMsg};

use crate::room_directory::OnlineTimes;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    proto::unix_ms(std::time::SystemTime::now())
}

/// [`Backend`] for a room: in process with the store (standalone), or over
/// links to registers and savers (cluster mode, where the directory and
/// `store` are remote).
pub(crate) struct LocalBackend {
    room: RoomId,
    presence: Presence,
    store: Arc<dyn Store>,
    /// Where session events go (`--events-url`), if anywhere.
    events: Option<Arc<crate::events::Events>>,
    /// Where clients' `send` and `pub` go (none: refused as unavailable).
    messages: Option<Arc<crate::messages::Messages>>,
    /// The other rooms of a cluster, for presence (none: one room).
    cluster_presence: Option<Arc<crate::presence::ClusterPresence>>,
    /// Notes users who authenticate (`--send-known-users-only`; none: off).
    known: Option<Arc<crate::known::KnownUsers>>,
}

/// Where a room reports its connections.
pub(crate) enum Presence {
    /// A directory (the registers) is told of every connect and disconnect.
    Directory {
        /// The directory.
        dir: Arc<dyn Directory>,
        /// Failures are logged at most once a second (a register outage
        /// would otherwise log once per connection).
        errors: Throttle,
        /// Called with the user whose connect or disconnect report failed
        /// (cluster mode: marks that user's register for a refill).
        on_error: Option<DirErrorHook>,
    },
    /// Standalone: the room's own index is the directory
    /// ([`crate::room_directory`]); only the online time of connections
    /// that end is recorded.
    Local(Arc<OnlineTimes>),
}

impl Presence {
    /// Reports to `dir`; `on_error` is told of every report that failed.
    pub(crate) fn directory(dir: Arc<dyn Directory>, on_error: Option<DirErrorHook>) -> Presence {
        Presence::Directory {
            dir,
            errors: Throttle::default(),
            on_error,
        }
    }
}

impl LocalBackend {
    /// The backend of room `room`, reporting its connections to `presence`
    /// and keeping messages in `store`.
    pub(crate) fn new(room: RoomId, presence: Presence, store: Arc<dyn Store>) -> LocalBackend {
        LocalBackend {
            room,
            presence,
            store,
            events: None,
            messages: None,
            cluster_presence: None,
            known: None,
        }
    }

    /// Notes every user who authenticates in `known` (none: nothing noted).
    pub(crate) fn with_known_users(
        mut self,
        known: Option<Arc<crate::known::KnownUsers>>,
    ) -> LocalBackend {
        self.known = known;
        self
    }

    /// Passes presence changes to the other rooms of a cluster, and counts
    /// their members in a client's `presence`.
    pub(crate) fn with_cluster_presence(
        mut self,
        p: Option<Arc<crate::presence::ClusterPresence>>,
    ) -> LocalBackend {
        self.cluster_presence = p;
        self
    }

    /// Takes clients' `send` and `pub` through `messages`.
    pub(crate) fn with_messages(
        mut self,
        messages: Arc<crate::messages::Messages>,
    ) -> LocalBackend {
        self.messages = Some(messages);
        self
    }

    /// Hands session events to `events` (none when `None`).
    pub(crate) fn with_events(
        mut self,
        events: Option<Arc<crate::events::Events>>,
    ) -> LocalBackend {
        self.events = events;
        self
    }
}

/// Sorts a store failure into a transient or a permanent backend error,
/// keeping it as the source.
fn store_error(e: saver::StoreError) -> BackendError {
    if e.is_retryable() {
        BackendError::Unavailable {
            source: Box::new(e),
        }
    } else {
        BackendError::Failed {
            source: Box::new(e),
        }
    }
}

/// See [`Presence::Directory`].
pub(crate) type DirErrorHook = Arc<dyn Fn(&UserId) + Send + Sync>;

/// Lets a log line through at most once per second and counts the rest.
#[derive(Default)]
pub(crate) struct Throttle {
    next_ms: AtomicI64,
    suppressed: AtomicU64,
}

impl Throttle {
    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = now_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn user_frame(m: StoredMsg) -> MsgFrame {
    MsgFrame {
        id: m.id,
        ts: m.ts,
        channel: None,
        data: m.data,
        sender: m.sender,
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn wants_events(&self) -> bool {
        self.events.is_some()
    }

    fn event(&self, event: room::SessionEvent) {
        if let Some(e) = &self.events {
            e.push(event);
        }
    }

    async fn connected(&self, s: &SessionInfo) {
        if let Some(k) = &self.known {
            k.note(&s.user);
        }
        let Presence::Directory {
            dir,
            errors,
            on_error,
        } = &self.presence
        else {
            return;
        };
        let info = ConnInfo {
            user: s.user.clone(),
            conn: s.conn,
            room: self.room,
            device: Some(s.device.to_string()),
            since: s.since,
        };
        if let Err(e) = dir.connected(info).await {
            if let Some(hook) = on_error {
                hook(&s.user);
            }
            if let Some(more) = errors.allow() {
                tracing::warn!(user = %s.user, error = %e, suppressed = more, "directory: connect not recorded");
            }
        }
    }

    async fn disconnected(&self, s: &SessionInfo, now_ms: i64) {
        let (dir, errors, on_error) = match &self.presence {
            Presence::Local(times) => {
                times.ended(&s.user, s.since, now_ms);
                return;
            }
            Presence::Directory {
                dir,
                errors,
                on_error,
            } => (dir, errors, on_error),
        };
        if let Err(e) = dir.disconnected(&s.user, s.conn, now_ms).await {
            if let Some(hook) = on_error {
                hook(&s.user);
            }
            if let Some(more) = errors.allow() {
                tracing::warn!(user = %s.user, error = %e, suppressed = more, "directory: disconnect not recorded");
            }
        }
    }

    fn nothing_after(&self, user: &UserId, after: MsgId) -> bool {
        self.store.nothing_after(user, after)
    }

    async fn acked(&self, user: &UserId, device: &str) -> Result<Option<MsgId>, BackendError> {
        self.store.acked(user, device).await.map_err(store_error)
    }

    async fn replay(
        &self,
        user: &UserId,
        after: MsgId,
        limit: u32,
    ) -> Result<Vec<MsgFrame>, BackendError> {
        let msgs = self
            .store
            .read_user(user, after, now_ms(), limit)
            .await
            .map_err(store_error)?;
        Ok(msgs.into_iter().map(user_frame).collect())
    }

    async fn ack(&self, user: &UserId, device: &str, id: MsgId) -> Result<(), BackendError> {
        self.store.ack(user, device, id).await.map_err(store_error)
    }

    async fn channel_history(
        &self,
        channel: &str,
        after: MsgId,
        limit: u32,
    ) -> Result<Vec<MsgFrame>, BackendError> {
        let msgs = self
            .store
            .read_channel(channel, after, now_ms(), limit)
            .await
            .map_err(store_error)?;
        Ok(msgs
            .into_iter()
            .map(|m| MsgFrame {
                channel: Some(channel.to_owned()),
                ..user_frame(m)
            })
            .collect())
    }

    async fn message(
        &self,
        from: &SessionInfo,
        msg: room::ClientMessage,
    ) -> Result<MsgId, room::MessageError> {
        match &self.messages {
            Some(m) => m.send(from, msg).await,
            None => Err(room::MessageError::Unavailable(
                "this server does not take messages from clients".into(),
            )),
        }
    }

    fn relays_presence(&self) -> bool {
        self.cluster_presence.is_some()
    }

    fn presence_changed(&self, join: bool, change: &proto::PresenceChange) {
        if let Some(p) = &self.cluster_presence {
            p.changed(join, change);
        }
    }

    async fn channel_members(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Option<Result<proto::MembersPage, BackendError>> {
        let p = self.cluster_presence.as_ref()?;
        Some(
            p.members(channel, after, limit)
                .await
                .map_err(|e| BackendError::Unavailable {
                    source: Box::new(e),
                }),
        )
    }
}

#[cfg(test)]
mod store_error_tests {
    use std::error::Error as _;
    use std::time::Duration;

    use super::store_error;

    #[test]
    fn store_errors_keep_their_class_and_source() {
        let e = store_error(saver::StoreError::Timeout(Duration::from_secs(5)));
        assert!(e.is_retryable(), "{e}");
        assert!(e.source().is_some());
        let e = store_error(saver::StoreError::Closed);
        assert!(!e.is_retryable(), "{e}");
        let src = e.source().map(ToString::to_string);
        assert_eq!(src.as_deref(), Some("store closed"));
    }
}
