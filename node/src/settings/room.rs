//! Settings of a room, the part clients see: the same flags, defaults and
//! limits in `pushgate standalone` and `pushgate room`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::values::{at_least, positive, seconds};

/// Client listeners, TLS and per-connection limits of a room.
#[derive(Debug, Clone, Args)]
pub(crate) struct RoomSettings {
    /// WebSocket listener (ws://ADDR/ws; wss:// with --tls-cert).
    #[arg(
        long,
        env = "PUSHGATE_WS",
        value_name = "ADDR",
        default_value = "127.0.0.1:7700"
    )]
    pub(crate) ws: SocketAddr,
    /// TCP listener (length-prefixed binary frames; TLS with --tls-cert).
    #[arg(
        long,
        env = "PUSHGATE_TCP",
        value_name = "ADDR",
        default_value = "127.0.0.1:7701"
    )]
    pub(crate) tcp: SocketAddr,
    /// TLS certificate chain (PEM, leaf first): turns on wss:// and TLS for TCP, and is QUIC's certificate. Reloaded on SIGHUP.
    #[arg(long, env = "PUSHGATE_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "PUSHGATE_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Heartbeat interval told to clients, seconds; silence for twice as long closes (4003).
    #[arg(long, env = "PUSHGATE_HEARTBEAT", value_name = "SECONDS", default_value_t = 30, value_parser = seconds(86_400))]
    pub(crate) heartbeat: u64,
    /// Public key (PEM, RSA or EC P-256) that RS256 or ES256 client tokens may be signed with, besides the HS256 secret.
    #[arg(long, env = "PUSHGATE_TOKEN_PUBLIC_KEY", value_name = "FILE")]
    pub(crate) token_public_key: Option<PathBuf>,
    /// JWKS file (JSON) of public keys that RS256 and ES256 client tokens may be signed with, picked by the token's `kid`.
    #[arg(long, env = "PUSHGATE_TOKEN_JWKS", value_name = "FILE")]
    pub(crate) token_jwks: Option<PathBuf>,
    /// JWKS URL (http or https) of public keys for RS256 and ES256 client tokens, fetched at start and every --token-jwks-refresh seconds; a failed fetch keeps the keys it had.
    #[arg(long, env = "PUSHGATE_TOKEN_JWKS_URL", value_name = "URL")]
    pub(crate) token_jwks_url: Option<reqwest::Url>,
    /// Seconds between two fetches of --token-jwks-url.
    #[arg(long, env = "PUSHGATE_TOKEN_JWKS_REFRESH", value_name = "SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) token_jwks_refresh: u64,
    /// URL to POST session events to (connect, disconnect, sub, unsub, ack), in batches, at least once (docs/API.md, "Session events").
    #[arg(long, env = "PUSHGATE_EVENTS_URL", value_name = "URL")]
    pub(crate) events_url: Option<reqwest::Url>,
    /// Session events queued for --events-url at most; more are dropped and counted.
    #[arg(long, env = "PUSHGATE_EVENTS_QUEUE", value_name = "N", default_value_t = 100_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub(crate) events_queue: usize,
    /// Secret sent to the application server's endpoints (--events-url) as `Authorization: Bearer <secret>`.
    #[arg(long, env = "PUSHGATE_HOOK_SECRET", value_name = "SECRET")]
    pub(crate) hook_secret: Option<String>,
    /// URL of the application server's hook: POSTed every client `send` and `pub` before it is accepted; it answers allow or deny (docs/API.md, "Hook").
    #[arg(long, env = "PUSHGATE_HOOK_URL", value_name = "URL")]
    pub(crate) hook_url: Option<reqwest::Url>,
    /// Milliseconds the hook has to answer; after it the client gets `hook_unavailable`.
    #[arg(long, env = "PUSHGATE_HOOK_TIMEOUT_MS", value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub(crate) hook_timeout_ms: u64,
    /// Hook calls in flight at most; a message waits for a slot within --hook-timeout-ms, then gets `hook_unavailable`.
    #[arg(long, env = "PUSHGATE_HOOK_CONCURRENCY", value_name = "N", default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub(crate) hook_concurrency: usize,
    /// Channels whose `pub` messages are kept in the channel's history: names, or prefixes ending in `*`, comma-separated.
    #[arg(
        long,
        env = "PUSHGATE_HISTORY_CHANNELS",
        value_name = "PATTERNS",
        value_delimiter = ','
    )]
    pub(crate) history_channels: Vec<String>,
    /// Channels with presence: names, or prefixes ending in `*`, comma-separated. Their members are kept, listed by `presence` and REST, and `sub` with `presence` gets their joins and leaves.
    #[arg(
        long,
        env = "PUSHGATE_PRESENCE_CHANNELS",
        value_name = "PATTERNS",
        value_delimiter = ','
    )]
    pub(crate) presence_channels: Vec<String>,
    /// `send` and `pub` frames per second per connection, bursts of twice that; more get the non-fatal `rate_limited` (0 = no limit).
    #[arg(long, env = "PUSHGATE_SEND_RATE", value_name = "N", default_value_t = room::config::DEFAULT_SEND_RATE)]
    pub(crate) send_rate: u32,
    /// `send` and `pub` frames per second per user, over all their connections in this room, bursts of twice that; more get the non-fatal `rate_limited` (0 = no limit).
    #[arg(long, env = "PUSHGATE_USER_SEND_RATE", value_name = "N", default_value_t = room::config::DEFAULT_USER_SEND_RATE)]
    pub(crate) user_send_rate: u32,
    /// Store reads for replays (at connect and after a fault) in flight at once in this room; more wait their turn.
    #[arg(long, env = "PUSHGATE_REPLAYS_AT_ONCE", value_name = "N", default_value_t = room::config::DEFAULT_REPLAYS_AT_ONCE, value_parser = positive())]
    pub(crate) replays_at_once: usize,
    /// Largest `data` of a `send` or `pub`, in bytes of JSON text; larger gets the non-fatal `too_large`.
    #[arg(long, env = "PUSHGATE_MAX_SEND_BYTES", value_name = "BYTES", default_value_t = room::config::DEFAULT_MAX_SEND_BYTES, value_parser = positive())]
    pub(crate) max_send_bytes: usize,
    /// Refuse a client's `send` to a user who has not authenticated on this deployment within --known-user-ttl and is not connected now (the non-fatal `unknown_user`; nothing is stored). REST pushes are not affected.
    #[arg(long, env = "PUSHGATE_SEND_KNOWN_USERS_ONLY")]
    pub(crate) send_known_users_only: bool,
    /// Seconds a user stays known after authenticating, for --send-known-users-only.
    #[arg(long, env = "PUSHGATE_KNOWN_USER_TTL", value_name = "SECONDS", default_value_t = crate::known::DEFAULT_TTL_SECS, value_parser = seconds(31_536_000))]
    pub(crate) known_user_ttl: u64,
    /// Seconds a connection stays open after its token's `exp` without a `refresh` (then 4008 token expired).
    #[arg(long, env = "PUSHGATE_TOKEN_GRACE", value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=2_592_000))]
    pub(crate) token_grace: u64,
    /// Seconds a new connection has to authenticate (4002 after).
    #[arg(long, env = "PUSHGATE_AUTH_TIMEOUT", value_name = "SECONDS", default_value_t = 10, value_parser = seconds(300))]
    pub(crate) auth_timeout: u64,
    /// Maximum client frame size in bytes (at least 256; larger frames close with 4004).
    #[arg(long, env = "PUSHGATE_MAX_FRAME", value_name = "BYTES", default_value_t = proto::DEFAULT_MAX_FRAME, value_parser = at_least(256))]
    pub(crate) max_frame: usize,
    /// Outbound queue per connection, in messages; a full queue closes the connection (4006).
    #[arg(long, env = "PUSHGATE_SEND_QUEUE", value_name = "N", default_value_t = 256, value_parser = positive())]
    pub(crate) send_queue: usize,
    /// Outbound queue per connection, in bytes of encoded frames; past it the connection is closed (4006).
    #[arg(long, env = "PUSHGATE_SEND_QUEUE_BYTES", value_name = "BYTES", default_value_t = room::config::DEFAULT_SEND_QUEUE_BYTES, value_parser = positive())]
    pub(crate) send_queue_bytes: usize,
    /// Connections one user may hold in this process; one more is refused with 4001 `too_many_connections` (0 = no limit).
    #[arg(
        long,
        env = "PUSHGATE_MAX_USER_CONNECTIONS",
        value_name = "N",
        default_value_t = 0
    )]
    pub(crate) max_user_connections: usize,
    /// Maximum connections held by this process (capped below the open-files limit).
    #[arg(long, env = "PUSHGATE_MAX_CONNECTIONS", value_name = "N", default_value_t = 1_000_000, value_parser = positive())]
    pub(crate) max_connections: usize,
    /// Channels one connection may subscribe to.
    #[arg(long, env = "PUSHGATE_MAX_CHANNELS", value_name = "N", default_value_t = 64, value_parser = positive())]
    pub(crate) max_channels: usize,
    /// Inbound frames per second allowed per connection, bursts of twice that (0 = no limit).
    #[arg(
        long,
        env = "PUSHGATE_RATE_LIMIT",
        value_name = "N",
        default_value_t = 50
    )]
    pub(crate) rate_limit: u32,
    /// Connections one client address (IPv6: one /64) may hold, over all client listeners together (WebSocket, TCP, QUIC); 0 = no limit.
    #[arg(
        long,
        env = "PUSHGATE_MAX_CONNS_PER_IP",
        value_name = "N",
        default_value_t = 0
    )]
    pub(crate) max_conns_per_ip: usize,
    /// Server-sent event streams one HTTP/2 connection (https:// with ALPN h2) may have open at once; each also counts as a connection.
    #[arg(long, env = "PUSHGATE_H2_MAX_STREAMS", value_name = "N", default_value_t = room::config::DEFAULT_H2_MAX_STREAMS, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) h2_max_streams: u32,
    /// QUIC handshakes in progress from which new clients must first answer a Retry (address validation; 0 = always) [default: never].
    #[arg(long, env = "PUSHGATE_QUIC_RETRY_ABOVE", value_name = "N")]
    pub(crate) quic_retry_above: Option<usize>,
    /// Seconds to drain connections on SIGTERM (clients are closed with 4007).
    #[arg(long, env = "PUSHGATE_DRAIN_TIMEOUT", value_name = "SECONDS", default_value_t = 10, value_parser = seconds(3600))]
    pub(crate) drain_timeout: u64,
}

/// What differs between a standalone room and a cluster room.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoomRole {
    /// The room id.
    pub(crate) id: proto::RoomId,
    /// Reconnect delay suggested to drained clients.
    pub(crate) reconnect_delay: Duration,
    /// Replay look-back, in id units (see `--replay-overlap-ms`).
    pub(crate) replay_overlap: i64,
}

impl RoomSettings {
    /// The drain timeout.
    pub(crate) fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout)
    }

    /// Starts posting session events when `--events-url` is set.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub(crate) fn events(&self) -> anyhow::Result<Option<std::sync::Arc<crate::events::Events>>> {
        let Some(url) = self.events_url.clone() else {
            return Ok(None);
        };
        let cfg = crate::events::EventsConfig {
            url,
            secret: self.hook_secret.clone(),
            queue: self.events_queue,
        };
        crate::events::Events::start(cfg).map(Some)
    }

    /// The record of known users, kept in `store`, when
    /// `--send-known-users-only` is on (`None` otherwise: nothing is built
    /// or written).
    ///
    /// # Panics
    /// When called outside a tokio runtime (it starts the writer task).
    pub(crate) fn known_users(
        &self,
        store: &std::sync::Arc<dyn saver::Store>,
    ) -> Option<std::sync::Arc<crate::known::KnownUsers>> {
        self.send_known_users_only.then(|| {
            crate::known::KnownUsers::start(store.clone(), Duration::from_secs(self.known_user_ttl))
        })
    }

    /// What a room needs to take messages from clients: the hook (when
    /// `--hook-url` is set), the channels with history, and the known
    /// users (`known`, with `--send-known-users-only`). The center that
    /// dispatches them is set later ([`crate::messages::Messages::set_center`]).
    ///
    /// # Errors
    /// When the hook's HTTP client cannot be built.
    pub(crate) fn messages(
        &self,
        known: Option<std::sync::Arc<crate::known::KnownUsers>>,
    ) -> anyhow::Result<std::sync::Arc<crate::messages::Messages>> {
        let hook = match &self.hook_url {
            Some(url) => Some(crate::messages::Hook::new(
                url.clone(),
                self.hook_secret.clone(),
                Duration::from_millis(self.hook_timeout_ms),
                self.hook_concurrency,
                self.max_send_bytes,
            )?),
            None => None,
        };
        Ok(std::sync::Arc::new(crate::messages::Messages::new(
            hook,
            self.history_channels.clone(),
            known,
        )))
    }

    /// The public keys of `--token-public-key` and `--token-jwks`, read
    /// from their files.
    ///
    /// # Errors
    /// A text naming the flag, the file and what is wrong with it.
    pub(crate) fn token_keys(&self) -> Result<Vec<proto::keys::PublicKey>, String> {
        use proto::keys::PublicKey;
        let read = |flag: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| format!("--{flag} {}: {e}", p.display()))
        };
        let mut keys = Vec::new();
        if let Some(p) = &self.token_public_key {
            let pem = read("token-public-key", p)?;
            let key = PublicKey::from_pem(&pem)
                .map_err(|e| format!("--token-public-key {}: {e}", p.display()))?;
            keys.push(key);
        }
        if let Some(p) = &self.token_jwks {
            let json = read("token-jwks", p)?;
            let set = PublicKey::from_jwks(&json)
                .map_err(|e| format!("--token-jwks {}: {e}", p.display()))?;
            keys.extend(set);
        }
        Ok(keys)
    }

    /// Starts refreshing `keys` from `--token-jwks-url`, when given (see
    /// [`crate::jwks`]); the file keys stay beside the fetched ones.
    ///
    /// # Errors
    /// As [`RoomSettings::token_keys`].
    pub(crate) fn refresh_jwks(&self, keys: &room::TokenKeys) -> Result<(), String> {
        if let Some(url) = &self.token_jwks_url {
            let every = Duration::from_secs(self.token_jwks_refresh);
            crate::jwks::spawn(url.clone(), every, self.token_keys()?, keys.clone());
        }
        Ok(())
    }

    /// The room's configuration; connections are capped below the
    /// open-files limit (see [`crate::net::effective_max_connections`]).
    pub(crate) fn room_config(
        &self,
        role: RoomRole,
        token_secret: &str,
        token_keys: Vec<proto::keys::PublicKey>,
    ) -> room::RoomConfig {
        room::RoomConfig {
            room: role.id,
            token_secret: std::sync::Arc::from(token_secret.as_bytes()),
            token_keys: room::TokenKeys::new(token_keys),
            token_grace: Duration::from_secs(self.token_grace),
            heartbeat: Duration::from_secs(self.heartbeat),
            auth_timeout: Duration::from_secs(self.auth_timeout),
            max_frame: self.max_frame,
            send_queue: self.send_queue,
            send_queue_bytes: self.send_queue_bytes,
            max_user_connections: self.max_user_connections,
            max_channels: self.max_channels,
            max_connections: crate::net::effective_max_connections(self.max_connections),
            rate_limit: self.rate_limit,
            send_rate: self.send_rate,
            user_send_rate: self.user_send_rate,
            replays_at_once: self.replays_at_once,
            max_send_bytes: self.max_send_bytes,
            drain_reconnect_delay: role.reconnect_delay,
            replay_overlap: role.replay_overlap,
            quic_retry_above: self.quic_retry_above,
            max_conns_per_ip: self.max_conns_per_ip,
            h2_max_streams: self.h2_max_streams,
            presence_channels: std::sync::Arc::from(self.presence_channels.clone()),
        }
    }
}
