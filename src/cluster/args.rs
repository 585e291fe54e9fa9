//! Flags of the cluster subcommands. Every flag also reads `PUSHGATE_<NAME>`
//! from the environment (flags win). docs/DEPLOY.md lists them with examples.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::cli::LogFormat;

/// Flags every cluster process has.
#[derive(Debug, Clone, Args)]
pub(crate) struct CommonArgs {
    /// Shared secret every internal link presents (the same on every process of the cluster).
    #[arg(
        long,
        env = "PUSHGATE_CLUSTER_KEY",
        value_name = "KEY",
        default_value = ""
    )]
    pub(crate) cluster_key: String,
    /// Log format.
    #[arg(
        long,
        env = "PUSHGATE_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "human"
    )]
    pub(crate) log_format: LogFormat,
    /// Listen backlog and HTTP server limits.
    #[command(flatten)]
    pub(crate) net: NetArgs,
}

/// Listener settings every cluster process has (the HTTP ones matter where
/// there is an HTTP listener: rooms and centers).
#[derive(Debug, Clone, Args)]
pub(crate) struct NetArgs {
    /// Accept backlog of every TCP listener (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "PUSHGATE_LISTEN_BACKLOG", value_name = "N", default_value_t = crate::net::DEFAULT_BACKLOG, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::config::MAX_BACKLOG)))]
    pub(crate) listen_backlog: u32,
    /// Seconds an HTTP request header may take to arrive in full; also how long a kept-alive HTTP connection may wait for its next request.
    #[arg(long, env = "PUSHGATE_HTTP_HEADER_TIMEOUT", value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) http_header_timeout: u64,
    /// Seconds an HTTP connection may move no byte either way before it is closed.
    #[arg(long, env = "PUSHGATE_HTTP_IDLE_TIMEOUT", value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) http_idle_timeout: u64,
    /// HTTP connections served at once, apart from client connections; more are closed at once.
    #[arg(long, env = "PUSHGATE_HTTP_MAX_CONNS", value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) http_max_conns: u64,
}

impl NetArgs {
    /// The settings these flags give.
    pub(crate) fn settings(&self) -> crate::net::NetSettings {
        crate::net::NetSettings {
            backlog: self.listen_backlog,
            http: crate::net::HttpLimits {
                header_timeout: std::time::Duration::from_secs(self.http_header_timeout),
                idle_timeout: std::time::Duration::from_secs(self.http_idle_timeout),
                max_conns: usize::try_from(self.http_max_conns).unwrap_or(usize::MAX),
            },
        }
    }
}

impl CommonArgs {
    /// Warns when internal links run without a key on a non-loopback address.
    pub(crate) fn warn_if_open(&self, listen: std::net::SocketAddr) {
        if self.cluster_key.is_empty() && !listen.ip().is_loopback() {
            tracing::warn!(%listen, "no --cluster-key: anyone who can reach this internal port may use it; set PUSHGATE_CLUSTER_KEY on every process");
        }
    }
}

/// Where rooms and centers keep messages.
#[derive(Debug, Clone, Args)]
pub(crate) struct StoreArgs {
    /// Saver processes (`host:port,...`): the store is reached through them.
    #[arg(long, env = "PUSHGATE_SAVER", value_name = "ADDRS")]
    pub(crate) saver: Option<String>,
    /// A single Redis server (`redis://host:port/db`), reached directly.
    #[arg(
        long,
        env = "PUSHGATE_REDIS",
        value_name = "URL",
        conflicts_with = "saver"
    )]
    pub(crate) redis: Option<String>,
    /// Redis Cluster nodes (`redis://host:port,...`, any subset), reached directly.
    #[arg(long, env = "PUSHGATE_REDIS_CLUSTER", value_name = "URLS", conflicts_with_all = ["saver", "redis"])]
    pub(crate) redis_cluster: Option<String>,
}

/// `pushgate room`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RoomArgs {
    /// This room's id, unique in the cluster (1..=16777215).
    #[arg(long, env = "PUSHGATE_ROOM_ID", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16_777_215))]
    pub(crate) id: u32,
    /// WebSocket listener.
    #[arg(
        long,
        env = "PUSHGATE_WS",
        value_name = "ADDR",
        default_value = "127.0.0.1:7700"
    )]
    pub(crate) ws: SocketAddr,
    /// TCP listener.
    #[arg(
        long,
        env = "PUSHGATE_TCP",
        value_name = "ADDR",
        default_value = "127.0.0.1:7701"
    )]
    pub(crate) tcp: SocketAddr,
    /// QUIC listener (UDP) [default: off]. Always TLS: the --tls-cert
    /// certificate, else a self-signed one generated at start-up (in memory).
    #[arg(long, env = "PUSHGATE_QUIC", value_name = "ADDR")]
    pub(crate) quic: Option<SocketAddr>,
    /// TLS certificate chain (PEM, leaf first): turns on wss:// and TLS for TCP, and is QUIC's certificate. Reloaded on SIGHUP.
    #[arg(long, env = "PUSHGATE_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "PUSHGATE_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Internal link listener (centers connect here).
    #[arg(
        long,
        env = "PUSHGATE_INTERNAL",
        value_name = "ADDR",
        default_value = "127.0.0.1:7790"
    )]
    pub(crate) internal: SocketAddr,
    /// Address centers use to reach the internal listener [default: the bound address].
    #[arg(long, env = "PUSHGATE_ADVERTISE", value_name = "ADDR")]
    pub(crate) advertise: Option<String>,
    /// Health and metrics listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(
        long,
        env = "PUSHGATE_HTTP",
        value_name = "ADDR",
        default_value = "127.0.0.1:7791"
    )]
    pub(crate) http: SocketAddr,
    /// Register processes, in the same order on every process.
    #[arg(long, env = "PUSHGATE_REGISTERS", value_name = "ADDRS")]
    pub(crate) registers: String,
    /// HS256 secret of client tokens (the same on every room).
    #[arg(long, env = "PUSHGATE_TOKEN_SECRET", value_name = "SECRET")]
    pub(crate) token_secret: String,
    /// Heartbeat interval told to clients, seconds.
    #[arg(long, env = "PUSHGATE_HEARTBEAT", value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) heartbeat: u64,
    /// Seconds a new connection has to authenticate.
    #[arg(long, env = "PUSHGATE_AUTH_TIMEOUT", value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub(crate) auth_timeout: u64,
    /// Maximum client frame size in bytes.
    #[arg(
        long,
        env = "PUSHGATE_MAX_FRAME",
        value_name = "BYTES",
        default_value_t = 65_536
    )]
    pub(crate) max_frame: usize,
    /// Outbound queue per connection, in messages.
    #[arg(
        long,
        env = "PUSHGATE_SEND_QUEUE",
        value_name = "N",
        default_value_t = 256
    )]
    pub(crate) send_queue: usize,
    /// Outbound queue per connection, in bytes of encoded frames (past it: 4006).
    #[arg(
        long,
        env = "PUSHGATE_SEND_QUEUE_BYTES",
        value_name = "BYTES",
        default_value_t = room::config::DEFAULT_SEND_QUEUE_BYTES
    )]
    pub(crate) send_queue_bytes: usize,
    /// Connections one user may hold in this room (0: no limit; one more gets 4001 `too_many_connections`).
    #[arg(
        long,
        env = "PUSHGATE_MAX_USER_CONNECTIONS",
        value_name = "N",
        default_value_t = 0
    )]
    pub(crate) max_user_connections: usize,
    /// Maximum connections held by this process (capped below the open-files limit).
    #[arg(
        long,
        env = "PUSHGATE_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 1_000_000
    )]
    pub(crate) max_connections: usize,
    /// Channels one connection may subscribe to.
    #[arg(
        long,
        env = "PUSHGATE_MAX_CHANNELS",
        value_name = "N",
        default_value_t = 64
    )]
    pub(crate) max_channels: usize,
    /// Inbound frames per second per connection (0 = unlimited).
    #[arg(
        long,
        env = "PUSHGATE_RATE_LIMIT",
        value_name = "N",
        default_value_t = 50
    )]
    pub(crate) rate_limit: u32,
    /// QUIC handshakes in progress from which new clients must first answer a Retry (address validation; 0 = always) [default: never].
    #[arg(long, env = "PUSHGATE_QUIC_RETRY_ABOVE", value_name = "N")]
    pub(crate) quic_retry_above: Option<usize>,
    /// Connections one client address (IPv6: one /64) may hold in this room, all client listeners together; 0 = no limit.
    #[arg(
        long,
        env = "PUSHGATE_MAX_CONNS_PER_IP",
        value_name = "N",
        default_value_t = 0
    )]
    pub(crate) max_conns_per_ip: usize,
    /// Seconds to drain connections on SIGTERM.
    #[arg(long, env = "PUSHGATE_DRAIN_TIMEOUT", value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) drain_timeout: u64,
    /// Delay suggested to drained clients before they reconnect, milliseconds (jittered up to twice).
    #[arg(
        long,
        env = "PUSHGATE_RECONNECT_DELAY_MS",
        value_name = "MS",
        default_value_t = 1000
    )]
    pub(crate) reconnect_delay_ms: u64,
    /// How far replay after `last_id` (or the device's ack) looks back, in
    /// milliseconds of id time: pushes that went through different centers
    /// may be stored out of id order by up to the id lease age plus the clock
    /// skew between idgen machines. Look-back messages are sent again; clients
    /// drop them by id.
    #[arg(
        long,
        env = "PUSHGATE_REPLAY_OVERLAP_MS",
        value_name = "MS",
        default_value_t = 5000
    )]
    pub(crate) replay_overlap_ms: u64,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// `pushgate center`.
#[derive(Debug, Clone, Args)]
pub(crate) struct CenterArgs {
    /// HTTP (REST API) listener.
    #[arg(
        long,
        env = "PUSHGATE_HTTP",
        value_name = "ADDR",
        default_value = "127.0.0.1:7780"
    )]
    pub(crate) http: SocketAddr,
    /// API key for the REST API (the same on every center).
    #[arg(long, env = "PUSHGATE_API_KEY", value_name = "KEY")]
    pub(crate) api_key: String,
    /// Register processes, in the same order on every process.
    #[arg(long, env = "PUSHGATE_REGISTERS", value_name = "ADDRS")]
    pub(crate) registers: String,
    /// Idgen processes (each with its own region).
    #[arg(long, env = "PUSHGATE_IDGENS", value_name = "ADDRS")]
    pub(crate) idgens: String,
    /// Messages kept per offline user.
    #[arg(long, env = "PUSHGATE_QUEUE_MAX", value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) queue_max: u32,
    /// Default time a stored user message is kept, seconds.
    #[arg(long, env = "PUSHGATE_QUEUE_TTL", value_name = "SECONDS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub(crate) queue_ttl: u64,
    /// Maximum REST request body in bytes.
    #[arg(
        long,
        env = "PUSHGATE_MAX_BODY",
        value_name = "BYTES",
        default_value_t = 1_048_576
    )]
    pub(crate) max_body: usize,
    /// Maximum users in one push.
    #[arg(
        long,
        env = "PUSHGATE_MAX_USERS",
        value_name = "N",
        default_value_t = 10_000
    )]
    pub(crate) max_users: usize,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// `pushgate register`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RegisterArgs {
    /// Internal link listener.
    #[arg(
        long,
        env = "PUSHGATE_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:7810"
    )]
    pub(crate) listen: SocketAddr,
    /// A room that has not renewed its lease for this long is dropped with its connections, milliseconds (rooms renew every second; at least 3000).
    #[arg(long, env = "PUSHGATE_LEASE_MS", value_name = "MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(3000..=60_000))]
    pub(crate) lease_ms: u64,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// `pushgate saver`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SaverArgs {
    /// Internal link listener.
    #[arg(
        long,
        env = "PUSHGATE_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:7830"
    )]
    pub(crate) listen: SocketAddr,
    /// Data directory for the embedded store (when neither --redis nor --redis-cluster is given; then run exactly one saver).
    #[arg(
        long,
        env = "PUSHGATE_DATA",
        value_name = "DIR",
        default_value = "data-saver"
    )]
    pub(crate) data: PathBuf,
    /// A single Redis server (`redis://host:port/db`).
    #[arg(long, env = "PUSHGATE_REDIS", value_name = "URL")]
    pub(crate) redis: Option<String>,
    /// Redis Cluster nodes (`redis://host:port,...`).
    #[arg(
        long,
        env = "PUSHGATE_REDIS_CLUSTER",
        value_name = "URLS",
        conflicts_with = "redis"
    )]
    pub(crate) redis_cluster: Option<String>,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// `pushgate idgen`.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdgenArgs {
    /// Internal link listener.
    #[arg(
        long,
        env = "PUSHGATE_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:7820"
    )]
    pub(crate) listen: SocketAddr,
    /// This idgen's region (0-255), unique in the cluster.
    #[arg(long, env = "PUSHGATE_REGION", value_name = "N", value_parser = clap::value_parser!(u16).range(0..=255))]
    pub(crate) region: u16,
    /// Directory for the id checkpoint.
    #[arg(
        long,
        env = "PUSHGATE_DATA",
        value_name = "DIR",
        default_value = "data-idgen"
    )]
    pub(crate) data: PathBuf,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// `pushgate dev-cluster`.
#[derive(Debug, Clone, Args)]
pub(crate) struct DevClusterArgs {
    /// Room processes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub(crate) rooms: u32,
    /// Center processes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub(crate) centers: u32,
    /// Register processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub(crate) registers: u32,
    /// Idgen processes (regions 1, 2, …).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub(crate) idgens: u32,
    /// Where messages are kept: `redis` (starts redis-server) or `embedded` (one saver with the embedded store).
    #[arg(long, default_value = "redis")]
    pub(crate) store: DevStore,
    /// First port; every process gets its ports from here (see docs/DEPLOY.md).
    #[arg(long, default_value_t = 7800)]
    pub(crate) base_port: u16,
    /// Loopback address every process binds.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: std::net::IpAddr,
    /// Data directory (secrets, idgen checkpoints, embedded store, Redis files).
    #[arg(long, default_value = "data-cluster")]
    pub(crate) data: PathBuf,
    /// Heartbeat interval of the rooms, seconds.
    #[arg(long, default_value_t = 30)]
    pub(crate) heartbeat: u64,
    /// Rooms also serve QUIC, on UDP at the port number of their WebSocket
    /// listener. Each room makes a self-signed certificate at start (unless
    /// `--room-args` gives `--tls-cert`/`--tls-key`); the fingerprints are
    /// printed and written to the manifest.
    #[arg(long)]
    pub(crate) quic: bool,
    /// Extra flags for every room, e.g. `--room-args "--max-connections 19000"`.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub(crate) room_args: String,
    /// Log format of this process and the children.
    #[arg(long, default_value = "human")]
    pub(crate) log_format: LogFormat,
    /// Once ready, write every process (name, PID, command line, data
    /// directory, endpoints, restart count) and the secrets as JSON to this
    /// file (mode 0600), rewritten on every restart; for tools such as
    /// `bench c1m --attach`.
    #[arg(long)]
    pub(crate) manifest: Option<PathBuf>,
    /// Leave a child that dies down instead of restarting it (for testing
    /// faults by hand). By default a child that dies is started again with
    /// the same arguments, ports and data directory, after 0.2 s doubling
    /// to 5 s.
    #[arg(long)]
    pub(crate) no_restart: bool,
}

/// Store of a dev cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DevStore {
    /// redis-server, started by dev-cluster.
    Redis,
    /// One saver with the embedded store.
    Embedded,
}
