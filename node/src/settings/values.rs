//! Value parsers shared by every settings struct: ranges, secrets and URLs
//! are checked once, by clap, for flags, environment and the config file
//! alike (see [`super::file`]).

use clap::builder::{RangedU64ValueParser, TypedValueParser, ValueParser};

/// A `usize` of at least 1.
pub(crate) fn positive() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..)
}

/// A `usize` of at least `min`.
pub(crate) fn at_least(min: u64) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(min..)
}

/// Seconds in `1..=max`.
pub(crate) fn seconds(max: u64) -> RangedU64ValueParser<u64> {
    RangedU64ValueParser::<u64>::new().range(1..=max)
}

/// A text of at least `min` characters (keys and secrets).
pub(crate) fn min_len(min: usize) -> ValueParser {
    ValueParser::new(
        clap::builder::StringValueParser::new().try_map(move |s: String| {
            if s.len() >= min {
                Ok(s)
            } else {
                Err(format!("must be at least {min} characters"))
            }
        }),
    )
}

/// A `redis://` or `rediss://` URL.
pub(crate) fn redis_url(s: &str) -> Result<String, String> {
    if s.starts_with("redis://") || s.starts_with("rediss://") {
        Ok(s.to_owned())
    } else {
        Err("must be a redis:// or rediss:// URL".into())
    }
}

/// Comma-separated `redis://` URLs (a Redis Cluster's nodes).
pub(crate) fn redis_urls(s: &str) -> Result<String, String> {
    let urls = link::split_addrs(s);
    if urls.is_empty() {
        return Err("at least one redis:// URL is required".into());
    }
    for u in &urls {
        redis_url(u).map_err(|e| format!("{u:?} {e}"))?;
    }
    Ok(s.to_owned())
}

/// Comma-separated `host:port` addresses, at least one.
pub(crate) fn addr_list(s: &str) -> Result<String, String> {
    if link::split_addrs(s).is_empty() {
        Err("at least one host:port address is required".into())
    } else {
        Ok(s.to_owned())
    }
}
