//! The flags of each subcommand, composed of the settings groups that
//! subcommands share (each declared once: [`RoomSettings`],
//! [`CenterSettings`], [`ProcessArgs`], [`CommonArgs`], [`StoreArgs`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::center::CenterSettings;
use super::process::{CommonArgs, ProcessArgs};
use super::room::RoomSettings;
use super::store::{RedisArgs, StoreArgs};
use super::values::{addr_list, min_len};

/// `pushgate standalone` (the default command): every component in one process.
#[derive(Debug, Clone, Args)]
pub(crate) struct StandaloneArgs {
    /// Data directory (embedded store, id checkpoints, generated secrets, the self-signed TLS certificate).
    #[arg(
        long,
        env = "PUSHGATE_DATA",
        value_name = "DIR",
        default_value = "data"
    )]
    pub(crate) data: PathBuf,
    /// QUIC listener (UDP); always TLS (the --tls-cert certificate, else a self-signed one kept in DATA).
    #[arg(
        long,
        env = "PUSHGATE_QUIC",
        value_name = "ADDR",
        default_value = "127.0.0.1:7702"
    )]
    pub(crate) quic: SocketAddr,
    /// HTTP listener: REST API, health and metrics.
    #[arg(
        long,
        env = "PUSHGATE_HTTP",
        value_name = "ADDR",
        default_value = "127.0.0.1:7780"
    )]
    pub(crate) http: SocketAddr,
    /// API key for the REST API, at least 8 characters [default: generated, kept in DATA/api_key].
    #[arg(long, env = "PUSHGATE_API_KEY", value_name = "KEY", value_parser = min_len(8), hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// HS256 secret for client tokens, at least 16 characters [default: generated, kept in DATA/token_secret].
    #[arg(long, env = "PUSHGATE_TOKEN_SECRET", value_name = "SECRET", value_parser = min_len(16), hide_env_values = true)]
    pub(crate) token_secret: Option<String>,
    /// This node's room id and id-generator region (0-255).
    #[arg(long, env = "PUSHGATE_NODE_ID", value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=255))]
    pub(crate) node_id: u16,
    /// Keep queues in Redis instead of the embedded store.
    #[command(flatten)]
    pub(crate) store: RedisArgs,
    /// Client listeners and limits.
    #[command(flatten)]
    pub(crate) room: RoomSettings,
    /// REST API limits.
    #[command(flatten)]
    pub(crate) center: CenterSettings,
    /// Config file, logging, network limits.
    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

/// `pushgate room`: a connection server in a cluster.
#[derive(Debug, Clone, Args)]
pub(crate) struct RoomArgs {
    /// This room's id, unique in the cluster (1..=16777215).
    #[arg(long, env = "PUSHGATE_ROOM_ID", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16_777_215))]
    pub(crate) id: u32,
    /// QUIC listener (UDP) [default: off]. Always TLS: the --tls-cert
    /// certificate, else a self-signed one generated at start-up (in memory).
    #[arg(long, env = "PUSHGATE_QUIC", value_name = "ADDR")]
    pub(crate) quic: Option<SocketAddr>,
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
    #[arg(long, env = "PUSHGATE_REGISTERS", value_name = "ADDRS", value_parser = addr_list)]
    pub(crate) registers: String,
    /// Idgen processes: with them the room takes clients' `send` and `pub` (ids for the messages); without, those get `unavailable`.
    #[arg(long, env = "PUSHGATE_IDGENS", value_name = "ADDRS", value_parser = addr_list)]
    pub(crate) idgens: Option<String>,
    /// HS256 secret of client tokens (the same on every room).
    #[arg(
        long,
        env = "PUSHGATE_TOKEN_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub(crate) token_secret: String,
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
    /// Client listeners and limits.
    #[command(flatten)]
    pub(crate) room: RoomSettings,
    /// The store.
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Cluster key, config file, logging, network limits.
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// `pushgate center`: the REST API and push routing.
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
    /// API key for the REST API, not empty (the same on every center).
    #[arg(long, env = "PUSHGATE_API_KEY", value_name = "KEY", value_parser = min_len(1), hide_env_values = true)]
    pub(crate) api_key: String,
    /// Register processes, in the same order on every process.
    #[arg(long, env = "PUSHGATE_REGISTERS", value_name = "ADDRS", value_parser = addr_list)]
    pub(crate) registers: String,
    /// Idgen processes (each with its own region).
    #[arg(long, env = "PUSHGATE_IDGENS", value_name = "ADDRS", value_parser = addr_list)]
    pub(crate) idgens: String,
    /// REST API limits.
    #[command(flatten)]
    pub(crate) center: CenterSettings,
    /// The store.
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Cluster key, config file, logging, network limits.
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// `pushgate register`: a directory partition.
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
    /// Health and metrics listener (`/healthz`, `/readyz`, `/metrics`: the requests this process answered, `pushgate_link_served_seconds`); none when not given.
    #[arg(long, env = "PUSHGATE_HTTP", value_name = "ADDR")]
    pub(crate) http: Option<SocketAddr>,
    /// Cluster key, config file, logging, network limits.
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// `pushgate saver`: the store service.
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
    /// Redis instead of the embedded store.
    #[command(flatten)]
    pub(crate) store: RedisArgs,
    /// Health and metrics listener (`/healthz`, `/readyz`, `/metrics`: the requests this process answered, `pushgate_link_served_seconds`); none when not given.
    #[arg(long, env = "PUSHGATE_HTTP", value_name = "ADDR")]
    pub(crate) http: Option<SocketAddr>,
    /// Cluster key, config file, logging, network limits.
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// `pushgate idgen`: an id generator region.
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
    /// Health and metrics listener (`/healthz`, `/readyz`, `/metrics`: the requests this process answered, `pushgate_link_served_seconds`); none when not given.
    #[arg(long, env = "PUSHGATE_HTTP", value_name = "ADDR")]
    pub(crate) http: Option<SocketAddr>,
    /// Cluster key, config file, logging, network limits.
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// `pushgate token`: a development client token.
#[derive(Debug, Clone, Args)]
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
    /// Channels the connection may `pub` to (the `pub` claim): names, or prefixes ending in `*`, comma-separated.
    #[arg(long = "pub", value_delimiter = ',', value_name = "CHANNELS")]
    pub(crate) publish: Option<Vec<String>>,
    /// The connection may not `send` 1:1 messages (the claim `"send": false`).
    #[arg(long)]
    pub(crate) no_send: bool,
    /// The token secret [default: the one kept in DATA/token_secret].
    #[arg(long, env = "PUSHGATE_TOKEN_SECRET", hide_env_values = true)]
    pub(crate) token_secret: Option<String>,
    /// Data directory holding the generated token secret [default: ./data].
    #[arg(long, env = "PUSHGATE_DATA")]
    pub(crate) data: Option<PathBuf>,
    /// A standalone TOML configuration file, for `token_secret` and `data`.
    #[arg(long, env = "PUSHGATE_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}
