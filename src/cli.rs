//! Command-line interface: subcommands and flags. Every flag of `standalone`
//! also reads `PUSHGATE_<NAME>` from the environment (flags win), and the
//! TOML file given by `--config` fills in whatever neither sets.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// pushgate: a real-time push gateway.
#[derive(Debug, Parser)]
#[command(name = "pushgate", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,

    /// Flags of `standalone` (the default command).
    #[command(flatten)]
    pub(crate) standalone: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run everything in one process (the default).
    Standalone(Box<ServeArgs>),
    /// Print a client token (JWT, HS256) for development.
    Token(TokenArgs),
    /// Cluster: a connection server (clients connect here).
    Room(Box<crate::cluster::args::RoomArgs>),
    /// Cluster: the REST API and push routing (stateless; run several).
    Center(Box<crate::cluster::args::CenterArgs>),
    /// Cluster: a directory partition (who is connected where; live rooms).
    Register(crate::cluster::args::RegisterArgs),
    /// Cluster: the store service (offline queues, channel history).
    Saver(crate::cluster::args::SaverArgs),
    /// Cluster: an id generator region.
    Idgen(crate::cluster::args::IdgenArgs),
    /// A whole cluster on this machine (Redis, registers, idgens, saver, centers, N rooms).
    DevCluster(crate::cluster::args::DevClusterArgs),
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Flags of `pushgate standalone`. `None` means "not given": the environment
/// (read by clap) and then the config file fill it in. The TOML file has the
/// same keys (`_` for `-`), so it deserializes into this struct too.
#[derive(Debug, Default, Args, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "PUSHGATE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Data directory (embedded store, id checkpoints, generated secrets) [default: ./data].
    #[arg(long, env = "PUSHGATE_DATA", value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// WebSocket listener [default: 127.0.0.1:7700].
    #[arg(long, env = "PUSHGATE_WS", value_name = "ADDR")]
    pub(crate) ws: Option<SocketAddr>,
    /// TCP listener [default: 127.0.0.1:7701].
    #[arg(long, env = "PUSHGATE_TCP", value_name = "ADDR")]
    pub(crate) tcp: Option<SocketAddr>,
    /// QUIC listener (UDP) [default: 127.0.0.1:7702]; always TLS (the --tls-cert certificate, else a self-signed one kept in DATA).
    #[arg(long, env = "PUSHGATE_QUIC", value_name = "ADDR")]
    pub(crate) quic: Option<SocketAddr>,
    /// TLS certificate chain (PEM, leaf first): turns on wss:// and TLS for TCP [default: plain ws/tcp; QUIC self-signed]. Reloaded on SIGHUP.
    #[arg(long, env = "PUSHGATE_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "PUSHGATE_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// HTTP (REST API) listener [default: 127.0.0.1:7780].
    #[arg(long, env = "PUSHGATE_HTTP", value_name = "ADDR")]
    pub(crate) http: Option<SocketAddr>,
    /// API key for the REST API [default: generated, kept in DATA/api_key].
    #[arg(long, env = "PUSHGATE_API_KEY", value_name = "KEY")]
    pub(crate) api_key: Option<String>,
    /// HS256 secret for client tokens [default: generated, kept in DATA/token_secret].
    #[arg(long, env = "PUSHGATE_TOKEN_SECRET", value_name = "SECRET")]
    pub(crate) token_secret: Option<String>,
    /// Heartbeat interval told to clients, seconds [default: 30]; silence for twice as long closes.
    #[arg(long, env = "PUSHGATE_HEARTBEAT", value_name = "SECONDS")]
    pub(crate) heartbeat: Option<u64>,
    /// Keep queues in Redis (redis://host:port/db) instead of the embedded store.
    #[arg(long, env = "PUSHGATE_REDIS", value_name = "URL")]
    pub(crate) redis: Option<String>,
    /// Log format [default: human].
    #[arg(long, env = "PUSHGATE_LOG_FORMAT", value_name = "FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
    /// Seconds a new connection has to authenticate [default: 10].
    #[arg(long, env = "PUSHGATE_AUTH_TIMEOUT", value_name = "SECONDS")]
    pub(crate) auth_timeout: Option<u64>,
    /// Maximum client frame size in bytes [default: 65536].
    #[arg(long, env = "PUSHGATE_MAX_FRAME", value_name = "BYTES")]
    pub(crate) max_frame: Option<usize>,
    /// Outbound queue per connection, in messages; a full queue closes the connection (4006) [default: 256].
    #[arg(long, env = "PUSHGATE_SEND_QUEUE", value_name = "N")]
    pub(crate) send_queue: Option<usize>,
    /// Outbound queue per connection, in bytes of encoded frames; past it the connection is closed (4006) [default: 1048576].
    #[arg(long, env = "PUSHGATE_SEND_QUEUE_BYTES", value_name = "BYTES")]
    pub(crate) send_queue_bytes: Option<usize>,
    /// Connections one user may hold in this process; one more is refused with 4001 `too_many_connections` [default: 0 = no limit].
    #[arg(long, env = "PUSHGATE_MAX_USER_CONNECTIONS", value_name = "N")]
    pub(crate) max_user_connections: Option<usize>,
    /// Maximum connections held by this process [default: 1000000].
    #[arg(long, env = "PUSHGATE_MAX_CONNECTIONS", value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Channels one connection may subscribe to [default: 64].
    #[arg(long, env = "PUSHGATE_MAX_CHANNELS", value_name = "N")]
    pub(crate) max_channels: Option<usize>,
    /// Inbound frames per second allowed per connection (burst twice that) [default: 50].
    #[arg(long, env = "PUSHGATE_RATE_LIMIT", value_name = "N")]
    pub(crate) rate_limit: Option<u32>,
    /// Connections one client address (IPv6: one /64) may hold, over all client listeners together (WebSocket, TCP, QUIC); 0 = no limit [default: 0].
    #[arg(long, env = "PUSHGATE_MAX_CONNS_PER_IP", value_name = "N")]
    pub(crate) max_conns_per_ip: Option<usize>,
    /// QUIC handshakes in progress from which new clients must first answer a Retry (address validation; 0 = always) [default: never].
    #[arg(long, env = "PUSHGATE_QUIC_RETRY_ABOVE", value_name = "N")]
    pub(crate) quic_retry_above: Option<usize>,
    /// Messages kept per offline user [default: 1000].
    #[arg(long, env = "PUSHGATE_QUEUE_MAX", value_name = "N")]
    pub(crate) queue_max: Option<u32>,
    /// Default time a stored user message is kept, seconds [default: 86400].
    #[arg(long, env = "PUSHGATE_QUEUE_TTL", value_name = "SECONDS")]
    pub(crate) queue_ttl: Option<u64>,
    /// Seconds to drain connections and flush on SIGTERM [default: 10].
    #[arg(long, env = "PUSHGATE_DRAIN_TIMEOUT", value_name = "SECONDS")]
    pub(crate) drain_timeout: Option<u64>,
    /// Maximum REST request body in bytes [default: 1048576].
    #[arg(long, env = "PUSHGATE_MAX_BODY", value_name = "BYTES")]
    pub(crate) max_body: Option<usize>,
    /// Maximum users in one push [default: 10000].
    #[arg(long, env = "PUSHGATE_MAX_USERS", value_name = "N")]
    pub(crate) max_users: Option<usize>,
    /// This node's room id and id-generator region (0-255) [default: 0].
    #[arg(long, env = "PUSHGATE_NODE_ID", value_name = "N")]
    pub(crate) node_id: Option<u16>,
    /// Seconds an HTTP request header may take to arrive in full; also how long a kept-alive HTTP connection may wait for its next request [default: 10].
    #[arg(long, env = "PUSHGATE_HTTP_HEADER_TIMEOUT", value_name = "SECONDS")]
    pub(crate) http_header_timeout: Option<u64>,
    /// Seconds an HTTP connection may move no byte either way before it is closed [default: 60].
    #[arg(long, env = "PUSHGATE_HTTP_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub(crate) http_idle_timeout: Option<u64>,
    /// HTTP connections served at once, apart from client connections; more are closed at once [default: 1024].
    #[arg(long, env = "PUSHGATE_HTTP_MAX_CONNS", value_name = "N")]
    pub(crate) http_max_conns: Option<usize>,
    /// Accept backlog of the WebSocket, TCP and HTTP listeners (the kernel caps it at net.core.somaxconn) [default: 4096].
    #[arg(long, env = "PUSHGATE_LISTEN_BACKLOG", value_name = "N")]
    pub(crate) listen_backlog: Option<u32>,
}

/// Flags of `pushgate token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// User id (the `sub` claim).
    #[arg(long)]
    pub(crate) user: String,
    /// Device id (the `dev` claim).
    #[arg(long)]
    pub(crate) device: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub(crate) ttl: u64,
    /// Channels the connection may subscribe to: names, or prefixes ending in `*`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) channels: Option<Vec<String>>,
    /// The token secret [default: the one kept in DATA/token_secret].
    #[arg(long, env = "PUSHGATE_TOKEN_SECRET")]
    pub(crate) token_secret: Option<String>,
    /// Data directory holding the generated token secret [default: ./data].
    #[arg(long, env = "PUSHGATE_DATA")]
    pub(crate) data: Option<PathBuf>,
    /// TOML configuration file, for `token_secret` and `data`.
    #[arg(long, env = "PUSHGATE_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}
