//! The REST API (axum) and the routing of a push: id → store → look up → fan
//! out to rooms. Broadcasts run as tasks with progress. Centers hold no
//! durable state.
//!
//! [`Center::new`] starts the ordered dispatcher (see [`dispatch`] for why
//! every push goes through one task); [`Center::router`] is the whole HTTP
//! surface: `/api/v1/*` (bearer auth), `/healthz`, `/readyz`, `/metrics`,
//! and the ops console at `/console` (static files; see `console.rs`).
//! The API is documented for users in `docs/API.md` and as OpenAPI at
//! `GET /api/v1/openapi.json`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use proto::{EncodedMsg, MsgId, RoomId, UserId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod admission;
pub mod api;
mod config;
mod console;
pub mod dispatch;
mod error;
mod messages;
mod metrics;
pub mod presence;
pub mod tasks;
pub mod users;

pub use api::ApiDoc;
pub use config::{CenterConfig, MAX_TTL};
pub use error::{ApiError, ApiJson, ErrorBody, ErrorDetail};
pub use messages::{ClientMsg, ClientTarget};
pub use metrics::MetricsSource;

/// Pushes waiting for the dispatcher at most; beyond, pushes get 429 `overloaded`.
pub const QUEUE_CAPACITY: usize = 4096;

/// What a center talks to.
#[derive(Clone)]
pub struct CenterDeps {
    /// Who is connected where; the live rooms.
    pub dir: Arc<dyn register::Directory>,
    /// Offline queues and channel history.
    pub store: Arc<dyn saver::Store>,
    /// Message ids.
    pub ids: Arc<dyn idgen::IdGen>,
    /// The rooms.
    pub rooms: Arc<dyn Rooms>,
}

pub(crate) struct Inner {
    pub(crate) cfg: Arc<CenterConfig>,
    pub(crate) deps: CenterDeps,
    pub(crate) tx: mpsc::Sender<dispatch::Job>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) tasks: tasks::Tasks,
    /// Where broadcasts wait for their turn.
    pub(crate) lane: tasks::Lane,
    /// The dispatcher's pace, for shedding pushes it cannot serve in time.
    pub(crate) admission: Arc<admission::Admission>,
    pub(crate) ready: AtomicBool,
    pub(crate) tracker: TaskTracker,
    /// Client message ids being dispatched (see [`messages`]).
    pub(crate) in_flight: messages::InFlight,
    stop: CancellationToken,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

/// A center: the REST API and the push dispatcher. Cheap to clone.
#[derive(Clone)]
pub struct Center {
    pub(crate) inner: Arc<Inner>,
}

impl Center {
    /// Builds a center and starts its dispatcher. It starts ready (see
    /// [`Center::set_ready`]).
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn new(cfg: CenterConfig, deps: CenterDeps) -> Center {
        let cfg = Arc::new(cfg);
        let metrics = Arc::new(metrics::Metrics::new());
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let stop = CancellationToken::new();
        let admission = Arc::new(admission::Admission::default());
        let d = dispatch::Dispatcher::new(cfg.clone(), &deps, metrics.clone(), admission.clone());
        let handle = tokio::spawn(d.run(rx, stop.clone()));
        let tracker = TaskTracker::new();
        let lane = tasks::Lane::start(
            tasks::BroadcastDeps {
                cfg: cfg.clone(),
                dir: deps.dir.clone(),
                rooms: deps.rooms.clone(),
                metrics: metrics.clone(),
            },
            stop.clone(),
            &tracker,
        );
        Center {
            inner: Arc::new(Inner {
                cfg,
                deps,
                tx,
                metrics,
                tasks: tasks::Tasks::default(),
                lane,
                admission,
                ready: AtomicBool::new(true),
                tracker,
                in_flight: messages::InFlight::default(),
                stop,
                dispatcher: Mutex::new(Some(handle)),
            }),
        }
    }

    /// Every route: `/api/v1/*`, `/healthz`, `/readyz`, `/metrics`, and the
    /// ops console (`/console`, with `/` redirecting to it).
    pub fn router(&self) -> axum::Router {
        api::router(self)
    }

    /// Sets what `/readyz` answers (200 when true, 503 when false).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Adds a source of Prometheus text appended to `/metrics`.
    pub fn add_metrics_source(&self, source: Arc<dyn Fn(&mut String) + Send + Sync>) {
        self.inner.metrics.add_source(source);
    }

    /// Stops taking pushes (503 `shutting_down`), answers every push already
    /// queued, stops the dispatcher and waits for running broadcasts.
    pub async fn shutdown(&self) {
        self.set_ready(false);
        self.inner.stop.cancel();
        let handle = self.inner.dispatcher.lock().take();
        if let Some(h) = handle {
            if let Err(e) = h.await {
                tracing::error!(%e, "dispatcher ended abnormally");
            }
        }
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

/// One delivery of a batch to a room (see [`Rooms::deliver_many`]).
#[derive(Clone, Copy, Debug)]
pub enum RoomCall<'a> {
    /// Like [`Rooms::deliver_users`].
    Users {
        /// The users.
        users: &'a [UserId],
        /// The message.
        msg: &'a Arc<EncodedMsg>,
    },
    /// Like [`Rooms::publish_channel`].
    Channel {
        /// The channel.
        channel: &'a str,
        /// The message.
        msg: &'a Arc<EncodedMsg>,
    },
}

/// How a center reaches rooms (in process in standalone mode, over links in cluster mode).
#[async_trait]
pub trait Rooms: Send + Sync + 'static {
    /// Makes `calls` in `room`, in this order; returns the connections
    /// written by each. An error leaves the caller knowing nothing of the
    /// batch: each call may or may not have been made (so every stored
    /// message in it is owed a resync). The default makes them one at a
    /// time, stopping at the first error; a room over a link takes them in
    /// one round trip.
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn deliver_many(
        &self,
        room: RoomId,
        calls: &[RoomCall<'_>],
    ) -> Result<Vec<u64>, RoomsError> {
        let mut counts = Vec::with_capacity(calls.len());
        for call in calls {
            counts.push(self.deliver(room, *call).await?);
        }
        Ok(counts)
    }
    /// Makes one call of a batch on its own ([`Rooms::deliver_users`] or
    /// [`Rooms::publish_channel`]).
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn deliver(&self, room: RoomId, call: RoomCall<'_>) -> Result<u64, RoomsError> {
        match call {
            RoomCall::Users { users, msg } => self.deliver_users(room, users, msg).await,
            RoomCall::Channel { channel, msg } => self.publish_channel(room, channel, msg).await,
        }
    }
    /// Queues `msg` to every connection of `users` held by `room`; returns connections written.
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn deliver_users(
        &self,
        room: RoomId,
        users: &[UserId],
        msg: &Arc<EncodedMsg>,
    ) -> Result<u64, RoomsError>;
    /// Queues `msg` to every subscriber of `channel` in `room`.
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn publish_channel(
        &self,
        room: RoomId,
        channel: &str,
        msg: &Arc<EncodedMsg>,
    ) -> Result<u64, RoomsError>;
    /// Queues `msg` to every connection of `room`; returns the counts right
    /// after the fan-out (see [`proto::BroadcastProgress`]). A room that
    /// already fanned out this message id does not send it again.
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn broadcast(
        &self,
        room: RoomId,
        msg: &Arc<EncodedMsg>,
    ) -> Result<proto::BroadcastProgress, RoomsError>;
    /// How far broadcast `id` got in `room`; `None` when the room does not
    /// follow it (never fanned out there, forgotten, or a room that does
    /// not follow broadcasts: the default).
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn broadcast_progress(
        &self,
        room: RoomId,
        id: MsgId,
    ) -> Result<Option<proto::BroadcastProgress>, RoomsError> {
        let _ = (room, id);
        Ok(None)
    }
    /// Asks the connections of `users` in `room` (every connection when
    /// `None`) to replay their stored messages after `after` before anything
    /// delivered later: live delivery of stored messages to `room` failed,
    /// and the connections must not move past the gap. Returns how many
    /// connections were asked.
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn resync(
        &self,
        room: RoomId,
        users: Option<&[UserId]>,
        after: MsgId,
    ) -> Result<u64, RoomsError>;
    /// Closes every connection of `user` in `room` (4005); returns how many.
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn kick_user(&self, room: RoomId, user: &UserId) -> Result<u64, RoomsError>;
    /// Queues presence changes of another room (`true`: join) to the
    /// connections of `room` watching their channels; returns connections
    /// written.
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn presence_changes(
        &self,
        room: RoomId,
        changes: &[(bool, proto::PresenceChange)],
    ) -> Result<u64, RoomsError>;
    /// The members of `channel` held by `room` after user `after`, at most
    /// `limit`, in user order.
    ///
    /// # Errors
    /// [`RoomsError`] when the room cannot be reached.
    async fn channel_members(
        &self,
        room: RoomId,
        channel: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<proto::MembersPage, RoomsError>;
}

/// A room could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum RoomsError {
    /// No live room has this id (not in the membership, or not in this
    /// process).
    #[error("room {room} unreachable: {detail}")]
    Unknown {
        /// The room.
        room: RoomId,
        /// Where it was looked for.
        detail: &'static str,
    },
    /// The link to the room failed (down, disconnected, timed out, bad frame).
    #[error("room {room} unreachable: {source}")]
    Link {
        /// The room.
        room: RoomId,
        /// The link error.
        #[source]
        source: link::LinkError,
    },
    /// The room answered with something that does not fit the call.
    #[error("room {room} unreachable: unexpected answer {answer}")]
    BadAnswer {
        /// The room.
        room: RoomId,
        /// The answer, debug-formatted.
        answer: String,
    },
    /// The call was not made: the resync the room is owed for an earlier
    /// failed delivery could not be sent first.
    #[error("room {room} unreachable: its owed resync failed")]
    Skipped {
        /// The room.
        room: RoomId,
    },
}

impl RoomsError {
    /// The room the call was for.
    pub fn room(&self) -> RoomId {
        match self {
            RoomsError::Unknown { room, .. }
            | RoomsError::Link { room, .. }
            | RoomsError::BadAnswer { room, .. }
            | RoomsError::Skipped { room } => *room,
        }
    }

    /// Whether the same call may succeed later: the room's link was down,
    /// dropped or timed out, or the call was skipped. An unknown room, a bad
    /// answer or a bad frame are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            RoomsError::Link { source, .. } => source.is_retryable(),
            RoomsError::Skipped { .. } => true,
            RoomsError::Unknown { .. } | RoomsError::BadAnswer { .. } => false,
        }
    }
}

#[cfg(test)]
mod rooms_error_tests {
    use std::error::Error as _;
    use std::time::Duration;

    use proto::RoomId;

    use super::RoomsError;

    fn link(room: RoomId, source: link::LinkError) -> RoomsError {
        RoomsError::Link { room, source }
    }

    #[test]
    fn classification() {
        let room = RoomId(7);
        let addr = || "10.0.0.1:9".to_owned();
        for source in [
            link::LinkError::Unavailable {
                service: "room",
                addr: addr(),
            },
            link::LinkError::Disconnected {
                service: "room",
                addr: addr(),
            },
            link::LinkError::Timeout {
                service: "room",
                addr: addr(),
                timeout: Duration::from_secs(2),
            },
        ] {
            let e = link(room, source);
            assert!(e.is_retryable(), "{e}");
            assert_eq!(e.room(), room);
        }
        assert!(RoomsError::Skipped { room }.is_retryable());
        let permanent = [
            link(
                room,
                link::LinkError::Protocol {
                    service: "room",
                    reason: "bad".to_owned(),
                },
            ),
            RoomsError::Unknown {
                room,
                detail: "not a live room",
            },
            RoomsError::BadAnswer {
                room,
                answer: "Done".to_owned(),
            },
        ];
        for e in permanent {
            assert!(!e.is_retryable(), "{e}");
            assert_eq!(e.room(), room);
        }
    }

    #[test]
    fn link_error_is_the_source() {
        let e = link(
            RoomId(3),
            link::LinkError::Unavailable {
                service: "room",
                addr: "10.0.0.1:9".to_owned(),
            },
        );
        assert!(e.source().is_some());
        let text = e.to_string();
        assert!(text.starts_with("room "), "{text}");
        assert!(text.contains("10.0.0.1:9"), "{text}");
        assert!(RoomsError::Skipped { room: RoomId(3) }.source().is_none());
    }
}
