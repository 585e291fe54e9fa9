//! Where messages are kept: Redis (one server or a cluster), the embedded
//! store, or, for cluster rooms and centers, savers.

use clap::Args;

use super::values::{addr_list, redis_url, redis_urls};

/// A Redis server or a Redis Cluster, reached directly.
#[derive(Debug, Clone, Args)]
pub(crate) struct RedisArgs {
    /// A single Redis server (`redis://host:port/db`).
    #[arg(long, env = "PUSHGATE_REDIS", value_name = "URL", value_parser = redis_url, conflicts_with = "redis_cluster")]
    pub(crate) redis: Option<String>,
    /// Redis Cluster nodes (`redis://host:port,...`, any subset).
    #[arg(long, env = "PUSHGATE_REDIS_CLUSTER", value_name = "URLS", value_parser = redis_urls)]
    pub(crate) redis_cluster: Option<String>,
}

/// Where cluster rooms and centers keep messages: savers or Redis.
#[derive(Debug, Clone, Args)]
pub(crate) struct StoreArgs {
    /// Saver processes (`host:port,...`): the store is reached through them.
    #[arg(long, env = "PUSHGATE_SAVER", value_name = "ADDRS", value_parser = addr_list, conflicts_with_all = ["redis", "redis_cluster"])]
    pub(crate) saver: Option<String>,
    /// Or Redis, directly.
    #[command(flatten)]
    pub(crate) direct: RedisArgs,
}
