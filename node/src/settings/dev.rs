//! Flags of `pushgate dev-cluster`.

use std::path::PathBuf;

use clap::Args;

use super::process::LogFormat;

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
