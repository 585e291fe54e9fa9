//! [`Shared`]: the state a room's handle, accept loops and sessions share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::CloseReason;
use crate::hub::{Hub, Signal};
use crate::metrics::Metrics;
use crate::per_ip::PerIp;
use crate::{Backend, RoomConfig};

/// The device id of connections that name none.
pub(crate) const DEFAULT_DEVICE: &str = "default";

/// Refused connections being answered (HTTP 503 / error frame) at once, at most.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// State shared by the room handle, its accept loops and its sessions.
pub(crate) struct Shared {
    pub(crate) cfg: RoomConfig,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) hub: Hub,
    /// Recent broadcasts, for their progress.
    pub(crate) broadcasts: crate::broadcasts::Broadcasts,
    pub(crate) metrics: Arc<Metrics>,
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
    /// Store reads for replays in flight (`replays_at_once`).
    pub(crate) replays: Semaphore,
    /// Connections per client address over every listener of the room
    /// (`max_conns_per_ip`); `None` when there is no limit.
    pub(crate) per_ip: Option<Arc<PerIp>>,
    /// When the room was created: the origin of [`Shared::clock_ms`].
    started: tokio::time::Instant,
    /// `"default"`, shared by every connection without a device id.
    pub(crate) default_device: Arc<str>,
    /// Whether the backend wants session events (asked once).
    events: bool,
}

impl Shared {
    /// The state of a new room, nothing listening yet.
    pub(crate) fn new(cfg: RoomConfig, backend: Arc<dyn Backend>) -> Shared {
        let metrics = Arc::new(Metrics::default());
        let relay: Option<crate::hub::PresenceRelay> =
            if cfg.presence_channels.is_empty() || !backend.relays_presence() {
                None
            } else {
                let b = Arc::clone(&backend);
                Some(Arc::new(move |join, change: &proto::PresenceChange| {
                    b.presence_changed(join, change);
                }))
            };
        Shared {
            hub: Hub::new(cfg.send_queue, cfg.send_queue_bytes).with_presence(
                Arc::clone(&cfg.presence_channels),
                relay,
                Arc::clone(&metrics),
            ),
            broadcasts: crate::broadcasts::Broadcasts::default(),
            limit: Arc::new(Semaphore::new(
                cfg.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
            replays: Semaphore::new(cfg.replays_at_once.clamp(1, Semaphore::MAX_PERMITS)),
            per_ip: PerIp::new(cfg.max_conns_per_ip),
            cfg,
            events: backend.wants_events(),
            backend,
            metrics,
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            draining: AtomicBool::new(false),
            next_serial: AtomicU64::new(1),
            started: tokio::time::Instant::now(),
            default_device: Arc::from(DEFAULT_DEVICE),
        }
    }

    /// Marks the room as draining (see [`Shared::is_draining`]).
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether `drain` has started.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Milliseconds since the room was created, wrapping at 2^32 (49 days):
    /// a 4-byte clock for per-session timestamps, compared with
    /// `wrapping_sub`.
    pub(crate) fn clock_ms(&self) -> u32 {
        // Truncation is the point: the clock wraps.
        self.started.elapsed().as_millis() as u32
    }

    /// Reports a session event of `info`'s connection, when the backend
    /// wants them (else builds nothing).
    pub(crate) fn event(
        &self,
        kind: crate::EventKind,
        info: &crate::SessionInfo,
        channel: Option<&str>,
        id: Option<proto::MsgId>,
    ) {
        if !self.events {
            return;
        }
        self.backend.event(crate::SessionEvent {
            event: kind,
            user: info.user.clone(),
            device: Arc::clone(&info.device),
            conn: info.conn,
            room: self.cfg.room,
            channel: channel.map(str::to_owned),
            id,
            ts: crate::session::now_ms(),
        });
    }

    /// The next connection serial number.
    pub(crate) fn next_serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs one handshake step of a new connection (TLS, WebSocket upgrade,
    /// QUIC) until `deadline`. `None` when the room stops first, or when the
    /// step fails or runs out of time: both are counted in
    /// `handshake_failures` and logged at debug as `<what> handshake failed`.
    pub(crate) async fn handshake_step<T, E: std::fmt::Display>(
        &self,
        peer: std::net::SocketAddr,
        what: &str,
        deadline: tokio::time::Instant,
        step: impl std::future::Future<Output = Result<T, E>>,
    ) -> Option<T> {
        let result = tokio::select! {
            () = self.stop.cancelled() => return None,
            r = tokio::time::timeout_at(deadline, step) => r,
        };
        match result {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                crate::metrics::inc(&self.metrics.handshake_failures);
                tracing::debug!(%peer, error = %e, "{what} handshake failed");
                None
            }
            Err(_) => {
                crate::metrics::inc(&self.metrics.handshake_failures);
                tracing::debug!(%peer, "{what} handshake timed out");
                None
            }
        }
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

#[cfg(test)]
mod tests {
    use super::splitmix64;

    #[test]
    fn splitmix_spreads() {
        let a: Vec<u64> = (0..100).map(|i| splitmix64(i) % 1001).collect();
        assert!(a.iter().all(|v| *v <= 1000));
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(distinct.len() > 80);
    }
}
