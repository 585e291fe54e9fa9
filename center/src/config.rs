//! Limits and defaults of the REST API.

use std::time::Duration;

/// The longest `ttl` a push may ask for: 30 days.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Configuration of a [`crate::Center`].
#[derive(Clone, Debug)]
pub struct CenterConfig {
    /// The API key callers present as `Authorization: Bearer <key>`.
    pub api_key: String,
    /// Largest accepted request body, in bytes (default 1 MiB).
    pub max_body: usize,
    /// Most users in one `POST /push/users` (default 10 000).
    pub max_users: usize,
    /// Each user's offline queue keeps at most this many newest messages (default 1000).
    pub queue_max: u32,
    /// Default `ttl` of a stored user message (default 1 day; at most [`MAX_TTL`]).
    pub queue_ttl: Duration,
    /// A channel's history keeps at most this many newest messages (default 100).
    pub channel_history_max: u32,
    /// How long channel history is kept (default 1 hour).
    pub channel_history_ttl: Duration,
    /// A request that takes longer is answered 503 `timeout` (default 10 s).
    /// A push that would wait more than half of it behind the pushes
    /// already queued is refused at once with 429 `overloaded`.
    pub request_timeout: Duration,
    /// Broadcasts waiting for their turn at most; beyond, 429 `overloaded`
    /// (default 64).
    pub broadcast_queue: usize,
    /// Broadcasts running at once (default 1); the next one starts when a
    /// running one is written to all but 0.1 % of its connections.
    pub broadcasts_at_once: usize,
    /// How long a broadcast follows connections that still have it queued
    /// before it is reported done with them as `pending`, and gives up its
    /// turn whatever is left (default 60 s).
    pub broadcast_wait: Duration,
}

impl Default for CenterConfig {
    fn default() -> Self {
        CenterConfig {
            api_key: String::new(),
            max_body: 1024 * 1024,
            max_users: 10_000,
            queue_max: 1000,
            queue_ttl: Duration::from_secs(86_400),
            channel_history_max: 100,
            channel_history_ttl: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(10),
            broadcast_queue: 64,
            broadcasts_at_once: 1,
            broadcast_wait: Duration::from_secs(60),
        }
    }
}
