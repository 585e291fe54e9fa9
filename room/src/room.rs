//! [`Room`]: the handle the rest of pushgate holds, and the state every
//! session and accept loop shares.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::{EncodedMsg, UserId};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::error::CloseReason;
use crate::hub::{Hub, Push, Signal};
use crate::metrics::Metrics;
use crate::{listen, Backend, RoomConfig};

/// Refused connections being answered (HTTP 503 / error frame) at once, at most.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// State shared by the room handle, its accept loops and its sessions.
pub(crate) struct Shared {
    pub(crate) cfg: RoomConfig,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) hub: Hub,
    pub(crate) metrics: Metrics,
    /// Every session (and refusal) task.
    pub(crate) tracker: TaskTracker,
    /// Cancelled by `drain`: accept loops stop, sessions still authenticating close with 4007.
    pub(crate) stop: CancellationToken,
    /// Set by `drain` before it signals the hub; checked by sessions right after registering.
    draining: AtomicBool,
    /// Connection serial numbers (the low bits of `ConnId`).
    next_serial: AtomicU64,
    /// One permit per open socket (`max_connections`).
    pub(crate) limit: Arc<Semaphore>,
    /// Bounds the tasks that answer refused connections.
    pub(crate) refusals: Arc<Semaphore>,
}

impl Shared {
    /// Whether `drain` has started.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The next connection serial number.
    pub(crate) fn next_serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// The close reason for an outside signal.
    pub(crate) fn signal_reason(&self, sig: Signal) -> CloseReason {
        match sig {
            Signal::Kicked => CloseReason::Kicked,
            Signal::SlowConsumer => CloseReason::SlowConsumer,
            Signal::Draining => self.draining_reason(),
        }
    }

    /// 4007 with a reconnect delay drawn uniformly from
    /// `[0, drain_reconnect_delay]`, so that clients do not all come back at once.
    pub(crate) fn draining_reason(&self) -> CloseReason {
        let max = u64::try_from(self.cfg.drain_reconnect_delay.as_millis()).unwrap_or(u64::MAX);
        let reconnect_after_ms = if max == 0 {
            0
        } else {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let seed = self.next_serial() ^ (u64::from(nanos) << 20);
            splitmix64(seed) % max.saturating_add(1)
        };
        CloseReason::Draining { reconnect_after_ms }
    }
}

/// A well-mixed 64-bit hash (SplitMix64), enough for spreading reconnects.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A running room: cheap to clone, every clone is the same room.
#[derive(Clone)]
pub struct Room {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("room", &self.shared.cfg.room)
            .field("connections", &self.connections())
            .finish()
    }
}

impl Room {
    /// Creates a room. Nothing listens until [`Room::serve_ws`] / [`Room::serve_tcp`].
    pub fn new(cfg: RoomConfig, backend: Arc<dyn Backend>) -> Room {
        let shared = Shared {
            hub: Hub::new(cfg.send_queue),
            limit: Arc::new(Semaphore::new(
                cfg.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
            cfg,
            backend,
            metrics: Metrics::default(),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            draining: AtomicBool::new(false),
            next_serial: AtomicU64::new(1),
        };
        Room {
            shared: Arc::new(shared),
        }
    }

    /// This room's settings.
    pub fn config(&self) -> &RoomConfig {
        &self.shared.cfg
    }

    /// Accepts WebSocket connections (`GET /ws`) until `shutdown` is
    /// cancelled or [`Room::drain`] starts. Stopping accepting does not end
    /// the sessions: [`Room::drain`] does.
    pub async fn serve_ws(&self, listener: TcpListener, shutdown: CancellationToken) {
        listen::accept_loop(
            Arc::clone(&self.shared),
            listener,
            shutdown,
            listen::Kind::Ws,
        )
        .await;
    }

    /// Accepts TCP connections (length-prefixed binary frames) until
    /// `shutdown` is cancelled or [`Room::drain`] starts.
    pub async fn serve_tcp(&self, listener: TcpListener, shutdown: CancellationToken) {
        listen::accept_loop(
            Arc::clone(&self.shared),
            listener,
            shutdown,
            listen::Kind::Tcp,
        )
        .await;
    }

    fn prepare(msg: &EncodedMsg) -> Option<Arc<Push>> {
        let p = Push::new(msg);
        if p.is_none() {
            error!(id = msg.id.0, "pushed message json is not utf-8; dropped");
        }
        p
    }

    /// Queues `msg` to every connection of each user; returns connections written.
    /// Never blocks: a connection whose queue is full is closed (4006) instead.
    pub fn deliver_users(&self, users: &[UserId], msg: &Arc<EncodedMsg>) -> u64 {
        let Some(p) = Self::prepare(msg) else {
            return 0;
        };
        self.shared
            .hub
            .deliver_users(users, &p, &self.shared.metrics)
    }

    /// Queues `msg` to every subscriber of `channel`; returns connections written.
    pub fn publish_channel(&self, channel: &str, msg: &Arc<EncodedMsg>) -> u64 {
        let Some(p) = Self::prepare(msg) else {
            return 0;
        };
        self.shared.hub.publish(channel, &p, &self.shared.metrics)
    }

    /// Queues `msg` to every authenticated connection; returns connections written.
    pub fn broadcast(&self, msg: &Arc<EncodedMsg>) -> u64 {
        let Some(p) = Self::prepare(msg) else {
            return 0;
        };
        self.shared.hub.broadcast(&p, &self.shared.metrics)
    }

    /// Closes every connection of `user` with 4005; returns how many.
    pub fn kick_user(&self, user: &UserId) -> u64 {
        self.shared.hub.signal_user(user, Signal::Kicked)
    }

    /// Authenticated connections held now.
    pub fn connections(&self) -> u64 {
        self.shared.hub.connections()
    }

    /// Distinct users with at least one authenticated connection now.
    pub fn users(&self) -> u64 {
        self.shared.hub.users()
    }

    /// Appends this room's metrics in the Prometheus text format (names
    /// prefixed `pushgate_room_`).
    pub fn write_metrics(&self, out: &mut String) {
        let hub = &self.shared.hub;
        self.shared
            .metrics
            .write(out, hub.connections(), hub.users(), hub.channels());
    }

    /// Stops accepting, tells every client to reconnect elsewhere (error
    /// `draining` + close 4007 with reason `draining reconnect_after_ms=<N>`,
    /// N jittered per connection in `[0, drain_reconnect_delay]`), then waits
    /// up to `timeout` for all sessions to end. Returns whether all ended.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let s = &self.shared;
        s.draining.store(true, Ordering::SeqCst);
        s.stop.cancel();
        let told = s.hub.signal_all(Signal::Draining);
        info!(room = %s.cfg.room, connections = told, "draining");
        s.tracker.close();
        let done = tokio::time::timeout(timeout, s.tracker.wait())
            .await
            .is_ok();
        if !done {
            info!(left = s.tracker.len(), "drain timed out");
        }
        done
    }
}
