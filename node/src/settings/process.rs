//! Settings every server process has: the config file, the log format and
//! the network limits, and for cluster processes the cluster key.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::net::{HttpLimits, NetSettings, DEFAULT_BACKLOG};

/// Largest listen backlog accepted (the kernel caps it at `net.core.somaxconn`).
pub(crate) const MAX_BACKLOG: u32 = 1 << 20;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The config file, logging and network limits of a server process.
#[derive(Debug, Clone, Args)]
pub(crate) struct ProcessArgs {
    /// TOML configuration file: the same keys as the flags (`_` for `-`); flags and PUSHGATE_* win over it.
    #[arg(long, env = "PUSHGATE_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Log format on stderr (level filter: PUSHGATE_LOG).
    #[arg(
        long,
        env = "PUSHGATE_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "human"
    )]
    pub(crate) log_format: LogFormat,
    /// Runtime worker threads: 0 = one per core; 1 runs the whole process on one thread (no hand-offs between workers, the cheapest choice when many processes share few cores).
    #[arg(long, env = "PUSHGATE_WORKER_THREADS", value_name = "N", default_value_t = 0, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1024))]
    pub(crate) worker_threads: usize,
    /// Listen backlog and HTTP server limits.
    #[command(flatten)]
    pub(crate) net: NetArgs,
}

/// Listener settings of a process (the HTTP ones where it has an HTTP listener).
#[derive(Debug, Clone, Args)]
pub(crate) struct NetArgs {
    /// Accept backlog of every TCP listener (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "PUSHGATE_LISTEN_BACKLOG", value_name = "N", default_value_t = DEFAULT_BACKLOG, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BACKLOG)))]
    pub(crate) listen_backlog: u32,
    /// Seconds an HTTP request header may take to arrive in full; also how long a kept-alive HTTP connection may wait for its next request.
    #[arg(long, env = "PUSHGATE_HTTP_HEADER_TIMEOUT", value_name = "SECONDS", default_value_t = 10, value_parser = super::values::seconds(3600))]
    pub(crate) http_header_timeout: u64,
    /// Seconds an HTTP connection may move no byte either way before it is closed.
    #[arg(long, env = "PUSHGATE_HTTP_IDLE_TIMEOUT", value_name = "SECONDS", default_value_t = 60, value_parser = super::values::seconds(86_400))]
    pub(crate) http_idle_timeout: u64,
    /// HTTP connections served at once, apart from client connections; more are closed at once.
    #[arg(long, env = "PUSHGATE_HTTP_MAX_CONNS", value_name = "N", default_value_t = 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub(crate) http_max_conns: usize,
}

impl NetArgs {
    /// The settings these flags give.
    pub(crate) fn settings(&self) -> NetSettings {
        NetSettings {
            backlog: self.listen_backlog,
            http: HttpLimits {
                header_timeout: Duration::from_secs(self.http_header_timeout),
                idle_timeout: Duration::from_secs(self.http_idle_timeout),
                max_conns: self.http_max_conns,
            },
        }
    }
}

/// Flags every cluster process has.
#[derive(Debug, Clone, Args)]
pub(crate) struct CommonArgs {
    /// Shared secret every internal link presents (the same on every process of the cluster).
    #[arg(
        long,
        env = "PUSHGATE_CLUSTER_KEY",
        value_name = "KEY",
        default_value = "",
        hide_env_values = true
    )]
    pub(crate) cluster_key: String,
    /// The config file, log format and network limits.
    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

impl CommonArgs {
    /// Warns when internal links run without a key on a non-loopback address.
    pub(crate) fn warn_if_open(&self, listen: std::net::SocketAddr) {
        if self.cluster_key.is_empty() && !listen.ip().is_loopback() {
            tracing::warn!(%listen, "no --cluster-key: anyone who can reach this internal port may use it; set PUSHGATE_CLUSTER_KEY on every process");
        }
    }
}
