//! Room settings. Plain typed values: parsing TOML/flags is the binary's job.

use std::sync::Arc;
use std::time::Duration;

use proto::RoomId;

/// Default bound of one connection's outbound queue in bytes (1 MiB).
pub const DEFAULT_SEND_QUEUE_BYTES: usize = 1 << 20;

/// Default most concurrent server-sent event streams of one HTTP/2
/// connection (`h2_max_streams`).
pub const DEFAULT_H2_MAX_STREAMS: u32 = 100;

/// Default `send`/`pub` frames per second per connection.
pub const DEFAULT_SEND_RATE: u32 = 20;

/// Default largest `data` of a `send` or `pub` (16 KiB).
pub const DEFAULT_MAX_SEND_BYTES: usize = 16 << 10;
/// Default [`RoomConfig::replays_at_once`].
pub const DEFAULT_REPLAYS_AT_ONCE: usize = 64;
/// Default `send`/`pub` frames per second per user (over all their
/// connections in a room): twice a connection's.
pub const DEFAULT_USER_SEND_RATE: u32 = 2 * DEFAULT_SEND_RATE;

/// Room settings.
#[derive(Clone, Debug)]
pub struct RoomConfig {
    /// This room's id.
    pub room: RoomId,
    /// HS256 secret for client tokens.
    pub token_secret: Arc<[u8]>,
    /// Public keys for RS256 and ES256 client tokens (none by default:
    /// HS256 only); replaceable while the room runs.
    pub token_keys: TokenKeys,
    /// How long a connection outlives its token's `exp` without a
    /// `refresh`; after it the connection is closed with 4008.
    pub token_grace: Duration,
    /// Heartbeat interval told to clients; a connection silent for twice this long is closed (4003).
    pub heartbeat: Duration,
    /// Time allowed for the WebSocket handshake, and then again for the first (auth) frame.
    pub auth_timeout: Duration,
    /// Maximum frame size in bytes.
    pub max_frame: usize,
    /// Outbound queue length per connection; full = slow consumer (4006).
    pub send_queue: usize,
    /// Outbound queue size per connection in bytes of encoded frames; past
    /// it = slow consumer (4006). A single message is always taken.
    pub send_queue_bytes: usize,
    /// Channels one connection may hold.
    pub max_channels: usize,
    /// Connections one user may hold in this room (0: no limit); one more
    /// is refused after `auth` with `too_many_connections` and 4001.
    pub max_user_connections: usize,
    /// Connections (sockets, authenticated or not) this room holds before refusing new ones.
    pub max_connections: usize,
    /// Inbound frames per second allowed per connection (burst = 2×); 0 = unlimited.
    pub rate_limit: u32,
    /// `send` and `pub` frames per second allowed per connection (burst =
    /// 2×; more get the non-fatal `rate_limited`); 0 = unlimited.
    pub send_rate: u32,
    /// `send` and `pub` frames per second allowed per user over all their
    /// connections in this room (burst = 2×; more get `rate_limited`);
    /// 0 = unlimited.
    pub user_send_rate: u32,
    /// Store reads for replays (connect-time and resyncs) in flight at once
    /// in this room; more wait their turn, in order. A fault that resyncs
    /// every connection of a room then reaches the store as a queue at the
    /// pace it answers, not as thousands of calls that all time out.
    pub replays_at_once: usize,
    /// Largest `data` of a `send` or `pub`, in bytes of JSON text; larger
    /// gets the non-fatal `too_large`.
    pub max_send_bytes: usize,
    /// Upper bound of the reconnect delay suggested with 4007 when draining; each
    /// connection gets its own value, uniformly spread over `[0, this]`.
    pub drain_reconnect_delay: Duration,
    /// How far a replay after `last_id` (or the device's ack) and a channel
    /// history after `last_id` look back, in message-id units (0: not at all).
    ///
    /// In cluster mode, pushes through different centers can be stored out
    /// of id order by a little; replaying from `last_id - replay_overlap`
    /// sends those again (the client drops what it has by id), and live
    /// messages are then never dropped as replay duplicates.
    pub replay_overlap: i64,
    /// QUIC handshakes in progress from which a new attempt from an
    /// unvalidated address is answered with a Retry first (the client must
    /// prove it receives at its address before the room spends a handshake
    /// on it; one round trip more). `Some(0)`: always; `None`: never.
    pub quic_retry_above: Option<usize>,
    /// Connections one client address (IPv6: one /64) may hold in this
    /// room, over all its client listeners (WebSocket, TCP, QUIC together);
    /// more are refused like a full room. 0: no limit.
    pub max_conns_per_ip: usize,
    /// Server-sent event streams one HTTP/2 connection (https:// with ALPN
    /// `h2`) may have open at once, advertised as
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`; a stream over it is refused
    /// (`REFUSED_STREAM`). Each stream is also one connection of
    /// `max_connections` and `max_conns_per_ip`. At least 1.
    pub h2_max_streams: u32,
    /// Channels with presence (names, or prefixes ending in `*`): the room
    /// keeps their members and sends `join`/`leave` to subscribers that
    /// asked with `presence`. Empty: none.
    pub presence_channels: Arc<[String]>,
}

impl RoomConfig {
    /// Settings with the defaults of DESIGN.md for room `room` and token secret `token_secret`:
    /// heartbeat 30 s, auth timeout 10 s, frames up to 64 KiB, 256 queued messages
    /// and at most 1 MiB queued, 64 channels, 100 000 connections, 50 frames/s,
    /// reconnect spread over 5 s, no QUIC Retry, no per-address or per-user limit,
    /// 60 s of grace after a token expires, 100 streams per HTTP/2 connection.
    pub fn new(room: RoomId, token_secret: Arc<[u8]>) -> RoomConfig {
        RoomConfig {
            room,
            token_secret,
            token_keys: TokenKeys::default(),
            token_grace: Duration::from_secs(60),
            heartbeat: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(10),
            max_frame: proto::DEFAULT_MAX_FRAME,
            send_queue: 256,
            send_queue_bytes: DEFAULT_SEND_QUEUE_BYTES,
            max_channels: 64,
            max_user_connections: 0,
            max_connections: 100_000,
            rate_limit: 50,
            send_rate: DEFAULT_SEND_RATE,
            user_send_rate: DEFAULT_USER_SEND_RATE,
            replays_at_once: DEFAULT_REPLAYS_AT_ONCE,
            max_send_bytes: DEFAULT_MAX_SEND_BYTES,
            drain_reconnect_delay: Duration::from_secs(5),
            replay_overlap: 0,
            quic_retry_above: None,
            max_conns_per_ip: 0,
            h2_max_streams: DEFAULT_H2_MAX_STREAMS,
            presence_channels: Arc::from(Vec::new()),
        }
    }

    /// Whether `channel` has presence (see [`RoomConfig::presence_channels`]).
    pub fn has_presence(&self, channel: &str) -> bool {
        matches_any(&self.presence_channels, channel)
    }

    /// `after` moved back by [`RoomConfig::replay_overlap`] (never below 0).
    pub(crate) fn look_back(&self, after: proto::MsgId) -> proto::MsgId {
        if self.replay_overlap <= 0 || after.0 <= 0 {
            return after;
        }
        proto::MsgId(after.0.saturating_sub(self.replay_overlap).max(0))
    }

    /// Heartbeat interval told to clients, in whole seconds (at least 1).
    pub(crate) fn heartbeat_secs(&self) -> u32 {
        let s = self.heartbeat.as_secs_f64().ceil();
        if s < 1.0 {
            1
        } else if s > f64::from(u32::MAX) {
            u32::MAX
        } else {
            s as u32
        }
    }

    /// Checks a client token with the secret and the public keys at `now`
    /// (unix seconds).
    pub(crate) fn verify_token(
        &self,
        token: &str,
        now: u64,
    ) -> Result<proto::token::Claims, proto::token::TokenError> {
        let keys = self.token_keys.get();
        let checked = proto::token::verify_any(token, &self.token_secret, &keys, now);
        if checked.is_err() {
            if let Some(key) = proto::token::unknown_key(token, &keys) {
                self.token_keys.miss(key);
            }
        }
        checked
    }

    /// The unix second from which a connection whose token expires at
    /// `exp` is closed (4008): `exp` plus the grace, capped at `u32::MAX`
    /// (the year 2106) so that sessions keep it in 4 bytes.
    pub(crate) fn token_deadline(&self, exp: u64) -> u32 {
        let at = exp.saturating_add(self.token_grace.as_secs());
        u32::try_from(at).unwrap_or(u32::MAX)
    }

    /// A connection silent for this long is closed (4003).
    pub(crate) fn idle_limit(&self) -> Duration {
        self.heartbeat.saturating_mul(2)
    }
}

/// Whether `channel` is one of `patterns`: exact names, or prefixes ending
/// in `*` (`*` alone: every channel).
pub fn matches_any(patterns: &[String], channel: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => p == channel,
    })
}

/// The public keys client tokens may be signed with, shared by every clone
/// and replaceable while the room runs (a JWKS fetched from a URL and
/// refreshed in the background). A check takes a read lock just long
/// enough to clone an `Arc`. A token that names a key none of them is
/// (a key the provider added since) is noted, so that whoever refreshes
/// them can fetch again at once ([`TokenKeys::missed`]).
#[derive(Clone, Debug, Default)]
pub struct TokenKeys {
    keys: Arc<parking_lot::RwLock<Arc<[proto::keys::PublicKey]>>>,
    missed: Arc<Missed>,
}

/// Keys that tokens named and the keys did not have, since the last fetch
/// started.
#[derive(Debug, Default)]
struct Missed {
    /// What they named (a `kid`, or an algorithm), at most [`MAX_MISSES`].
    named: parking_lot::Mutex<Vec<String>>,
    notify: tokio::sync::Notify,
}

/// Distinct unknown keys remembered between two fetches.
const MAX_MISSES: usize = 16;

/// Longest key id remembered as missed; a longer one fetches nothing.
const MAX_MISSED_NAME: usize = 256;

impl TokenKeys {
    /// These keys, until [`TokenKeys::replace`].
    pub fn new(keys: Vec<proto::keys::PublicKey>) -> TokenKeys {
        TokenKeys {
            keys: Arc::new(parking_lot::RwLock::new(Arc::from(keys))),
            missed: Arc::default(),
        }
    }

    /// The keys now.
    pub fn get(&self) -> Arc<[proto::keys::PublicKey]> {
        Arc::clone(&self.keys.read())
    }

    /// From now on, `keys` (every clone sees them).
    pub fn replace(&self, keys: Vec<proto::keys::PublicKey>) {
        *self.keys.write() = Arc::from(keys);
    }

    /// Forgets the misses noted so far: called right before a fetch,
    /// which answers them.
    pub fn clear_misses(&self) {
        self.missed.named.lock().clear();
    }

    /// Completes once a token named a key that is not among these since
    /// [`TokenKeys::clear_misses`] and that they still lack (a miss that a
    /// fetch since brought the key for does not count).
    pub async fn missed(&self) {
        loop {
            self.missed.notify.notified().await;
            let keys = self.get();
            let mut named = self.missed.named.lock();
            named.retain(|n| !proto::token::names_known_key(n, &keys));
            if !named.is_empty() {
                return;
            }
        }
    }

    /// Notes a token that named `key` (a `kid`, or an algorithm), which
    /// these do not have.
    fn miss(&self, key: String) {
        // A made-up key id can be as long as the token: not kept.
        if key.len() > MAX_MISSED_NAME {
            return;
        }
        let mut named = self.missed.named.lock();
        if named.len() >= MAX_MISSES || named.contains(&key) {
            return;
        }
        named.push(key);
        drop(named);
        self.missed.notify.notify_one();
    }
}
