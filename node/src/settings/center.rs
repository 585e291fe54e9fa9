//! Settings of the REST API, the same in `pushgate standalone` and
//! `pushgate center`.

use std::time::Duration;

use clap::Args;

use super::values::positive;

/// Most messages kept per user: a reconnect replays at most this many.
pub(crate) const MAX_QUEUE: u32 = 100_000;

/// Queue and request limits of the REST API.
#[derive(Debug, Clone, Args)]
pub(crate) struct CenterSettings {
    /// Messages kept per offline user (newest kept).
    #[arg(long, env = "PUSHGATE_QUEUE_MAX", value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_QUEUE)))]
    pub(crate) queue_max: u32,
    /// Default time a stored user message is kept, seconds (at most 30 days).
    #[arg(long, env = "PUSHGATE_QUEUE_TTL", value_name = "SECONDS", default_value_t = 86_400, value_parser = super::values::seconds(center::MAX_TTL.as_secs()))]
    pub(crate) queue_ttl: u64,
    /// Maximum REST request body in bytes (413 above).
    #[arg(long, env = "PUSHGATE_MAX_BODY", value_name = "BYTES", default_value_t = 1_048_576, value_parser = positive())]
    pub(crate) max_body: usize,
    /// Maximum users in one push.
    #[arg(long, env = "PUSHGATE_MAX_USERS", value_name = "N", default_value_t = 10_000, value_parser = positive())]
    pub(crate) max_users: usize,
    /// Broadcasts that may wait for their turn (429 `overloaded` beyond).
    #[arg(long, env = "PUSHGATE_BROADCAST_QUEUE", value_name = "N", default_value_t = 64, value_parser = positive())]
    pub(crate) broadcast_queue: usize,
    /// Broadcasts that run at once; the next starts when one is written to
    /// all but 0.1 % of its connections.
    #[arg(long, env = "PUSHGATE_BROADCASTS_AT_ONCE", value_name = "N", default_value_t = 1, value_parser = positive())]
    pub(crate) broadcasts_at_once: usize,
    /// How long a broadcast follows connections that still have it queued
    /// before it is reported done (with them as `pending`), seconds.
    #[arg(long, env = "PUSHGATE_BROADCAST_WAIT", value_name = "SECONDS", default_value_t = 60, value_parser = super::values::seconds(3600))]
    pub(crate) broadcast_wait: u64,
}

impl CenterSettings {
    /// The center's configuration with `api_key`.
    pub(crate) fn center_config(&self, api_key: String) -> center::CenterConfig {
        center::CenterConfig {
            api_key,
            max_body: self.max_body,
            max_users: self.max_users,
            queue_max: self.queue_max,
            queue_ttl: Duration::from_secs(self.queue_ttl),
            broadcast_queue: self.broadcast_queue,
            broadcasts_at_once: self.broadcasts_at_once,
            broadcast_wait: Duration::from_secs(self.broadcast_wait),
            ..center::CenterConfig::default()
        }
    }
}
