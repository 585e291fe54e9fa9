//! Server addresses: `ws://`, `wss://`, `tcp://`, `tls://` and `quic://` URLs.

use std::fmt;
use std::str::FromStr;

use crate::error::ClientError;

/// The transport a [`ServerUrl`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `ws://`: WebSocket over plain TCP.
    Ws,
    /// `wss://`: WebSocket over TLS.
    Wss,
    /// `tcp://`: length-prefixed binary frames over plain TCP.
    Tcp,
    /// `tls://`: length-prefixed binary frames over TLS.
    Tls,
    /// `quic://`: one bidirectional QUIC stream (ALPN `pushgate/1`) of
    /// length-prefixed binary frames.
    Quic,
}

impl Scheme {
    /// The URL scheme, e.g. `"wss"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
            Scheme::Quic => "quic",
        }
    }

    /// The port used when the URL names none: pushgate's default listeners
    /// (WebSocket 7700, TCP 7701, QUIC 7702; TLS runs on the same listeners).
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Ws | Scheme::Wss => 7700,
            Scheme::Tcp | Scheme::Tls => 7701,
            Scheme::Quic => 7702,
        }
    }

    /// Whether the transport is encrypted with TLS (QUIC always is).
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Wss | Scheme::Tls | Scheme::Quic)
    }

    /// Whether the transport is WebSocket.
    pub fn is_ws(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }

    fn parse(s: &str) -> Option<Scheme> {
        Some(match s.to_ascii_lowercase().as_str() {
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            "tcp" => Scheme::Tcp,
            "tls" => Scheme::Tls,
            "quic" => Scheme::Quic,
            _ => return None,
        })
    }
}

/// A parsed server address such as `ws://127.0.0.1:7700/ws`,
/// `tls://push.example.com:7701` or `quic://[::1]:7702`.
///
/// - The port defaults to pushgate's default for the scheme
///   ([`Scheme::default_port`]).
/// - WebSocket URLs keep their path and query; an empty path means `/ws`.
/// - TCP, TLS and QUIC URLs take no path (a lone `/` is allowed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerUrl {
    scheme: Scheme,
    host: String,
    port: u16,
    path: String,
}

impl ServerUrl {
    /// Parses a URL (the same as [`str::parse`]).
    ///
    /// # Errors
    /// [`ClientError::Url`] when the scheme is unknown, the host is missing,
    /// the port is not a number in 1..=65535, or a non-WebSocket URL has a path.
    pub fn parse(s: &str) -> Result<ServerUrl, ClientError> {
        let bad = |why: &str| ClientError::Url {
            url: s.to_string(),
            why: why.to_string(),
        };
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://host[:port]"))?;
        let scheme =
            Scheme::parse(scheme).ok_or_else(|| bad("scheme must be ws, wss, tcp, tls or quic"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("user info is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in IPv6 host"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("invalid IPv6 address"));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if host.contains(':') && !authority.starts_with('[') {
            return Err(bad("IPv6 hosts must be in brackets"));
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(bad("port must be a number in 1..=65535")),
            },
        };
        let path = if scheme.is_ws() {
            if path.is_empty() {
                "/ws".to_string()
            } else if path.starts_with('?') {
                format!("/ws{path}")
            } else {
                path.to_string()
            }
        } else if path.is_empty() || path == "/" {
            String::new()
        } else {
            return Err(bad("tcp, tls and quic urls take no path"));
        };
        Ok(ServerUrl {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }

    /// The transport.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host name or IP address, without IPv6 brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path and query of a WebSocket URL (`/ws` by default); empty for
    /// the other transports.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `host:port`, with brackets around an IPv6 host.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for ServerUrl {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServerUrl::parse(s)
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority(),
            self.path
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(s: &str) -> ServerUrl {
        ServerUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_scheme_with_defaults() {
        let u = p("ws://127.0.0.1");
        assert_eq!(
            (u.scheme(), u.host(), u.port(), u.path()),
            (Scheme::Ws, "127.0.0.1", 7700, "/ws")
        );
        assert_eq!(p("wss://push.example.com").port(), 7700);
        assert_eq!(p("tcp://h").port(), 7701);
        assert_eq!(p("tls://h").port(), 7701);
        assert_eq!(p("quic://h").port(), 7702);
        assert_eq!(p("QUIC://H:9").scheme(), Scheme::Quic);
        assert_eq!(p("QUIC://H:9").host(), "h");
        assert!(p("tls://h").scheme().is_tls());
        assert!(!p("tcp://h").scheme().is_tls());
        assert!(p("quic://h").scheme().is_tls());
    }

    #[test]
    fn keeps_ws_paths_and_queries() {
        assert_eq!(p("ws://h:1/").path(), "/");
        assert_eq!(p("ws://h:1/custom/ws").path(), "/custom/ws");
        assert_eq!(p("ws://h:1/ws?x=1").path(), "/ws?x=1");
        assert_eq!(p("ws://h:1?x=1").path(), "/ws?x=1");
        assert_eq!(p("tcp://h:1/").path(), "");
    }

    #[test]
    fn ipv6_hosts() {
        let u = p("quic://[::1]:7702");
        assert_eq!(u.host(), "::1");
        assert_eq!(u.authority(), "[::1]:7702");
        assert_eq!(u.to_string(), "quic://[::1]:7702");
        assert_eq!(p("ws://[::1]").port(), 7700);
        assert_eq!(p("ws://[::1]/x").to_string(), "ws://[::1]:7700/x");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "ws://127.0.0.1:7700/ws",
            "wss://a.example:443/ws?t=1",
            "tcp://10.0.0.1:7701",
            "tls://a.example:7701",
            "quic://[fe80::1]:7702",
        ] {
            assert_eq!(p(s).to_string(), s);
            assert_eq!(p(&p(s).to_string()), p(s));
        }
    }

    #[test]
    fn refuses_bad_urls() {
        for s in [
            "",
            "127.0.0.1:7700",
            "http://h:1",
            "ws://",
            "ws://:7700",
            "ws://h:0",
            "ws://h:65536",
            "ws://h:x",
            "ws://h:",
            "tcp://h:1/path",
            "quic://h:1/x",
            "ws://[::1",
            "ws://[nothex]:1",
            "ws://[::1]x",
            "ws://::1:7700",
            "ws://user@h:1",
        ] {
            assert!(ServerUrl::parse(s).is_err(), "{s:?} must be refused");
        }
    }
}
