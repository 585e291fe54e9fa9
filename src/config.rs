//! Configuration: flags and environment (through clap) over the TOML file over
//! defaults, validated into typed values before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{LogFormat, ServeArgs};

/// Validated settings of `pushgate standalone`.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) data: PathBuf,
    pub(crate) ws: SocketAddr,
    pub(crate) tcp: SocketAddr,
    pub(crate) quic: SocketAddr,
    pub(crate) http: SocketAddr,
    /// Given certificate files (already loaded once, so a bad one is a
    /// configuration error); `None`: self-signed in the data dir, QUIC only.
    pub(crate) tls: Option<crate::tls::Given>,
    /// Given, or `None` to load/generate one in the data dir.
    pub(crate) api_key: Option<String>,
    /// Given, or `None` to load/generate one in the data dir.
    pub(crate) token_secret: Option<String>,
    pub(crate) heartbeat: Duration,
    pub(crate) redis: Option<String>,
    pub(crate) log_format: LogFormat,
    pub(crate) auth_timeout: Duration,
    pub(crate) max_frame: usize,
    pub(crate) send_queue: usize,
    pub(crate) send_queue_bytes: usize,
    pub(crate) max_user_connections: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_channels: usize,
    pub(crate) rate_limit: u32,
    pub(crate) quic_retry_above: Option<usize>,
    /// Connections per client address on each client listener; 0: no limit.
    pub(crate) max_conns_per_ip: usize,
    pub(crate) queue_max: u32,
    pub(crate) queue_ttl: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_body: usize,
    pub(crate) max_users: usize,
    pub(crate) node_id: u16,
    /// Listen backlog and HTTP server limits.
    pub(crate) net: crate::net::NetSettings,
}

/// A configuration that cannot be used (exit code 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(pub(crate) String);

/// `token_secret` and `data` from the config file, for `pushgate token`.
///
/// # Errors
/// [`ConfigError`] when the file cannot be read or parsed.
pub(crate) fn token_settings(
    path: &Path,
) -> Result<(Option<String>, Option<PathBuf>), ConfigError> {
    let f = read_file(path)?;
    Ok((f.token_secret, f.data))
}

/// The TOML file: the same keys as the flags (see [`ServeArgs`]).
fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text)
        .map_err(|e| ConfigError(format!("invalid config file {}: {e}", path.display())))
}

fn positive<T: PartialOrd + Default + std::fmt::Display>(
    name: &str,
    v: T,
) -> Result<T, ConfigError> {
    if v > T::default() {
        Ok(v)
    } else {
        Err(ConfigError(format!(
            "{name} must be greater than 0, got {v}"
        )))
    }
}

/// `v` in `1..=max`.
fn within<T: PartialOrd + Default + std::fmt::Display>(
    name: &str,
    v: T,
    max: T,
) -> Result<T, ConfigError> {
    let v = positive(name, v)?;
    if v <= max {
        Ok(v)
    } else {
        Err(ConfigError(format!(
            "{name} must be at most {max}, got {v}"
        )))
    }
}

/// Longest heartbeat interval accepted, seconds (one day).
const MAX_HEARTBEAT: u64 = 86_400;
/// Longest auth timeout accepted, seconds.
const MAX_AUTH_TIMEOUT: u64 = 300;
/// Largest listen backlog accepted (the kernel caps it at `net.core.somaxconn`).
pub(crate) const MAX_BACKLOG: u32 = 1 << 20;
/// Most messages kept per user: a reconnect replays at most this many.
pub(crate) const MAX_QUEUE: u32 = 100_000;

impl Config {
    /// Merges flags/environment (`args`) over the config file over defaults,
    /// and validates the result.
    ///
    /// # Errors
    /// [`ConfigError`] describing the first problem found.
    pub(crate) fn load(args: ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => ServeArgs::default(),
        };
        macro_rules! pick {
            ($name:ident, $default:expr) => {
                args.$name.or(file.$name).unwrap_or_else(|| $default)
            };
        }
        let cfg = Config {
            data: pick!(data, PathBuf::from("data")),
            ws: pick!(ws, SocketAddr::from(([127, 0, 0, 1], 7700))),
            tcp: pick!(tcp, SocketAddr::from(([127, 0, 0, 1], 7701))),
            quic: pick!(quic, SocketAddr::from(([127, 0, 0, 1], 7702))),
            tls: crate::tls::given(
                args.tls_cert.or(file.tls_cert),
                args.tls_key.or(file.tls_key),
            )
            .map_err(ConfigError)?,
            http: pick!(http, SocketAddr::from(([127, 0, 0, 1], 7780))),
            api_key: args.api_key.or(file.api_key),
            token_secret: args.token_secret.or(file.token_secret),
            heartbeat: Duration::from_secs(within(
                "heartbeat",
                pick!(heartbeat, 30),
                MAX_HEARTBEAT,
            )?),
            redis: args.redis.or(file.redis),
            log_format: pick!(log_format, LogFormat::Human),
            auth_timeout: Duration::from_secs(within(
                "auth-timeout",
                pick!(auth_timeout, 10),
                MAX_AUTH_TIMEOUT,
            )?),
            max_frame: positive("max-frame", pick!(max_frame, proto::DEFAULT_MAX_FRAME))?,
            send_queue: positive("send-queue", pick!(send_queue, 256))?,
            send_queue_bytes: positive(
                "send-queue-bytes",
                pick!(send_queue_bytes, room::config::DEFAULT_SEND_QUEUE_BYTES),
            )?,
            max_user_connections: pick!(max_user_connections, 0),
            max_connections: positive("max-connections", pick!(max_connections, 1_000_000))?,
            max_channels: positive("max-channels", pick!(max_channels, 64))?,
            rate_limit: pick!(rate_limit, 50),
            quic_retry_above: args.quic_retry_above.or(file.quic_retry_above),
            max_conns_per_ip: pick!(max_conns_per_ip, 0),
            queue_max: within("queue-max", pick!(queue_max, 1000), MAX_QUEUE)?,
            queue_ttl: Duration::from_secs(within(
                "queue-ttl",
                pick!(queue_ttl, 86_400),
                center::MAX_TTL.as_secs(),
            )?),
            drain_timeout: Duration::from_secs(within(
                "drain-timeout",
                pick!(drain_timeout, 10),
                3600,
            )?),
            max_body: positive("max-body", pick!(max_body, 1024 * 1024))?,
            max_users: positive("max-users", pick!(max_users, 10_000))?,
            node_id: pick!(node_id, 0),
            net: crate::net::NetSettings {
                backlog: within(
                    "listen-backlog",
                    pick!(listen_backlog, crate::net::DEFAULT_BACKLOG),
                    MAX_BACKLOG,
                )?,
                http: crate::net::HttpLimits {
                    header_timeout: Duration::from_secs(within(
                        "http-header-timeout",
                        pick!(http_header_timeout, 10),
                        3600,
                    )?),
                    idle_timeout: Duration::from_secs(within(
                        "http-idle-timeout",
                        pick!(http_idle_timeout, 60),
                        86_400,
                    )?),
                    max_conns: positive("http-max-conns", pick!(http_max_conns, 1024))?,
                },
            },
        };
        if cfg.max_frame < 256 {
            return Err(ConfigError("max-frame must be at least 256 bytes".into()));
        }
        if cfg.node_id > 255 {
            return Err(ConfigError(format!(
                "node-id must be 0..=255, got {}",
                cfg.node_id
            )));
        }
        if let Some(k) = &cfg.api_key {
            if k.len() < 8 {
                return Err(ConfigError("api-key must be at least 8 characters".into()));
            }
        }
        if let Some(s) = &cfg.token_secret {
            if s.len() < 16 {
                return Err(ConfigError(
                    "token-secret must be at least 16 characters".into(),
                ));
            }
        }
        if let Some(url) = &cfg.redis {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError(format!(
                    "redis must be a redis:// or rediss:// URL, got {url:?}"
                )));
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs::default()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::load(args()).expect("defaults are valid");
        assert_eq!(c.ws.to_string(), "127.0.0.1:7700");
        assert_eq!(c.tcp.to_string(), "127.0.0.1:7701");
        assert_eq!(c.quic.to_string(), "127.0.0.1:7702");
        assert!(c.tls.is_none());
        assert_eq!(c.http.to_string(), "127.0.0.1:7780");
        assert_eq!(c.heartbeat, Duration::from_secs(30));
        assert_eq!(c.data, PathBuf::from("data"));
        assert_eq!(c.net, crate::net::NetSettings::default());
        assert_eq!(c.net.backlog, 4096);
        assert_eq!(c.net.http.header_timeout, Duration::from_secs(10));
        assert_eq!(c.net.http.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.net.http.max_conns, 1024);
    }

    #[test]
    fn example_file_loads() {
        let mut a = args();
        a.config = Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pushgate.example.toml"));
        let c = Config::load(a).expect("pushgate.example.toml is valid");
        assert_eq!(c.net, crate::net::NetSettings::default());
    }

    #[test]
    fn net_settings_from_file_and_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        let text = "listen_backlog = 100\nhttp_header_timeout = 3\nhttp_max_conns = 7\n";
        std::fs::write(&path, text).expect("write");
        let mut a = args();
        a.config = Some(path);
        a.http_max_conns = Some(9);
        let c = Config::load(a).expect("valid");
        assert_eq!(c.net.backlog, 100);
        assert_eq!(c.net.http.header_timeout, Duration::from_secs(3));
        assert_eq!(c.net.http.max_conns, 9);
        let mut a = args();
        a.http_header_timeout = Some(0);
        assert!(Config::load(a).is_err());
        let mut a = args();
        a.listen_backlog = Some(0);
        assert!(Config::load(a).is_err());
    }

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "heartbeat = 5\nqueue_max = 7\n").expect("write");
        let mut a = args();
        a.config = Some(path);
        a.heartbeat = Some(9);
        let c = Config::load(a).expect("valid");
        assert_eq!(c.heartbeat, Duration::from_secs(9));
        assert_eq!(c.queue_max, 7);
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "hartbeat = 5\n").expect("write");
        let mut a = args();
        a.config = Some(path);
        assert!(Config::load(a).is_err());
        let mut a = args();
        a.heartbeat = Some(0);
        assert!(Config::load(a).is_err());
        let mut a = args();
        a.redis = Some("http://x".into());
        assert!(Config::load(a).is_err());
        let mut a = args();
        a.heartbeat = Some(u64::MAX);
        assert!(Config::load(a).is_err(), "absurd heartbeat accepted");
        let mut a = args();
        a.queue_max = Some(MAX_QUEUE + 1);
        assert!(
            Config::load(a).is_err(),
            "queue-max above the replay bound accepted"
        );
    }
}
