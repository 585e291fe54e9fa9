//! Argument parsers shared by the subcommands: durations (`60s`, `500ms`),
//! source address lists (`127.0.0.2,127.0.0.3` or `127.0.0.2-127.0.0.41`),
//! and the transport choice.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Most source addresses one list may name (a range included).
pub(crate) const MAX_SOURCES: usize = 4096;

/// Which client transport to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// WebSocket, JSON text frames.
    Ws,
    /// Plain TCP, length-prefixed binary frames.
    Tcp,
    /// QUIC (TLS 1.3, ALPN `pushgate/1`): one bidirectional stream carrying
    /// the TCP framing.
    Quic,
    /// Server-sent events: `GET /sse?token=…` on the WebSocket listener
    /// (`--ws`), then JSON frames as events, server to client only.
    Sse,
    /// Server-sent events over HTTP/2 over TLS (ALPN `h2`): each stream of
    /// a connection (`--h2-streams` per connection) is one `GET /sse`
    /// session, and counts as one connection.
    #[value(name = "sse-h2")]
    #[serde(rename = "sse-h2")]
    SseH2,
}

impl Transport {
    /// The name on the command line and in reports (`ws`, `tcp`, `quic`,
    /// `sse`, `sse-h2`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
            Transport::Sse => "sse",
            Transport::SseH2 => "sse-h2",
        }
    }

    /// Server-sent events (HTTP/1.1 or HTTP/2): a request carries the
    /// token, and nothing is sent after it.
    pub(crate) fn is_sse(self) -> bool {
        matches!(self, Transport::Sse | Transport::SseH2)
    }
}

/// Parses a duration: a number followed by `ms`, `s`, `m` or `h`; a bare
/// number means seconds. Fractions are allowed (`1.5s`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: expected e.g. 30s, 500ms, 2m"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: bad number"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("invalid duration {s:?}: unknown unit {other:?}")),
    };
    // A week is far beyond any benchmark and keeps the conversion finite.
    if !(0.0..=7.0 * 86400.0).contains(&secs) {
        return Err(format!("invalid duration {s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A parsed `--sources` list (a newtype, so clap takes it as one value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sources(pub(crate) Vec<IpAddr>);

/// `--sources` parser: see [`parse_sources`].
pub(crate) fn sources_arg(s: &str) -> Result<Sources, String> {
    parse_sources(s).map(Sources)
}

/// Parses a comma-separated list of source addresses. Each item is an IP
/// address or an inclusive IPv4 range `A-B` (e.g. `127.0.0.2-127.0.0.41`).
pub(crate) fn parse_sources(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if let Some((a, b)) = item.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .map_err(|_| format!("invalid source range {item:?}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .map_err(|_| format!("invalid source range {item:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a {
                return Err(format!("invalid source range {item:?}: end before start"));
            }
            if (b - a) as usize >= MAX_SOURCES {
                return Err(format!(
                    "source range {item:?} is larger than {MAX_SOURCES} addresses"
                ));
            }
            out.extend((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
        } else {
            let ip: IpAddr = item
                .parse()
                .map_err(|_| format!("invalid source address {item:?}"))?;
            out.push(ip);
        }
        if out.len() > MAX_SOURCES {
            return Err(format!("more than {MAX_SOURCES} source addresses"));
        }
    }
    if out.is_empty() {
        return Err("empty source address list".to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations() {
        for bad in ["", "s", "10x", "1.2.3s", "-5s", "999999h", "ms10"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn source_lists() {
        let v = parse_sources("127.0.0.2, 127.0.0.3").unwrap();
        assert_eq!(
            v,
            vec![IpAddr::from([127, 0, 0, 2]), IpAddr::from([127, 0, 0, 3])]
        );
        let v = parse_sources("127.0.0.254-127.0.1.1,::1").unwrap();
        assert_eq!(
            v,
            vec![
                IpAddr::from([127, 0, 0, 254]),
                IpAddr::from([127, 0, 0, 255]),
                IpAddr::from([127, 0, 1, 0]),
                IpAddr::from([127, 0, 1, 1]),
                "::1".parse::<IpAddr>().unwrap(),
            ]
        );
    }

    #[test]
    fn bad_source_lists() {
        for bad in [
            "",
            ",",
            "localhost",
            "127.0.0.9-127.0.0.2",
            "127.0.0.1-::1",
            "10.0.0.0-10.1.0.0",
        ] {
            assert!(parse_sources(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
