//! Internal links between pushgate processes: one transport for every
//! service (register, saver, idgen, room).
//!
//! A link is a long-lived TCP connection carrying length-delimited frames
//! (4-byte big-endian length, then a postcard body). The client opens it with
//! a hello naming the service and the cluster key; the server answers with its
//! instance id (random per process start, so a client can tell that the peer
//! restarted). After that, calls are pipelined: every request carries a
//! request id, the reply echoes it, and any number of calls may be in flight
//! on one connection. [`Client`] reconnects with jittered exponential backoff;
//! [`serve`] runs a [`Service`] on a listener.
//!
//! ```text
//! client → server   Hello { magic, version, service, key }
//! server → client   Welcome::Ok { instance } | Welcome::Refused { reason }
//! client → server   (request id: varint u64, request: postcard)      … pipelined
//! server → client   (request id: varint u64, Reply::Ok(resp) | Reply::Err(text))
//! ```
//!
//! A service is either *ordered* (requests of one connection are handled one
//! after another, in the order sent: register and room calls, where a
//! "connected" must not overtake a "disconnected") or concurrent (each request
//! is its own task, bounded per connection: saver calls, which the store
//! group-commits).

mod client;
mod server;
pub mod stats;
mod wire;

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use client::{Client, ClientConfig};
pub use server::{serve, ServerConfig};
pub use wire::{Hello, Welcome, MAGIC, VERSION};

/// Largest frame accepted by default (either direction).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// How long a new connection has to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// A service served over links.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// What clients send.
    type Req: DeserializeOwned + Send + 'static;
    /// What the service answers.
    type Resp: Serialize + Send + 'static;
    /// The name a client must ask for in its hello (`"register"`, `"saver"`, …).
    const NAME: &'static str;
    /// Whether the requests of one connection are handled strictly in order
    /// (one at a time) instead of concurrently.
    const ORDERED: bool;

    /// Handles one request.
    async fn call(&self, req: Self::Req) -> Self::Resp;
}

/// Why a call did not get an answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// No connection to the peer (it is down or restarting); nothing was sent.
    #[error("{service} at {addr} unavailable")]
    Unavailable {
        /// Service name.
        service: &'static str,
        /// Peer address.
        addr: String,
    },
    /// The connection dropped after the request was sent: it may or may not
    /// have been handled.
    #[error("{service} at {addr}: connection lost during the call")]
    Disconnected {
        /// Service name.
        service: &'static str,
        /// Peer address.
        addr: String,
    },
    /// No answer within the call timeout: it may or may not have been handled.
    #[error("{service} at {addr}: no answer within {timeout:?}")]
    Timeout {
        /// Service name.
        service: &'static str,
        /// Peer address.
        addr: String,
        /// The call timeout.
        timeout: Duration,
    },
    /// The peer could not decode the request, or the answer could not be decoded.
    #[error("{service}: bad frame: {reason}")]
    Protocol {
        /// Service name.
        service: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl LinkError {
    /// Whether the same call may succeed later: the peer was down, the
    /// connection dropped, or the answer was late. A bad frame is permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            LinkError::Unavailable { .. }
            | LinkError::Disconnected { .. }
            | LinkError::Timeout { .. } => true,
            LinkError::Protocol { .. } => false,
        }
    }

    /// Whether the peer answered that it could not decode the request (an
    /// older version that does not know it): nothing was done.
    pub fn is_unknown_request(&self) -> bool {
        matches!(self, LinkError::Protocol { reason, .. } if reason.starts_with(UNDECODABLE_REQUEST))
    }
}

/// How a server's answer to a request it could not decode begins (an older
/// peer that does not know a newer request), so a client can tell it from
/// other bad frames and fall back ([`LinkError::is_unknown_request`]).
pub const UNDECODABLE_REQUEST: &str = "undecodable request";

/// Splits `items` into consecutive runs, in order, each cut just after the
/// item that brings its total `weight` to `limit` or more: how a batch is
/// sent as calls of bounded size (bytes per link call, keys per
/// transaction). Every item is in exactly one run; an empty slice gives none.
pub fn split_by<T>(items: &[T], weight: impl Fn(&T) -> usize, limit: usize) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let (mut start, mut total) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        total += weight(item);
        if total >= limit || i + 1 == items.len() {
            runs.push(&items[start..=i]);
            (start, total) = (i + 1, 0);
        }
    }
    runs
}

/// Parses a comma-separated list of addresses (`host:port,host:port`),
/// trimming blanks and dropping empty items.
pub fn split_addrs(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Compares two secrets in time independent of where they differ.
pub(crate) fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Sets `TCP_NODELAY`, TCP keepalive (10 s idle, then 3 probes 5 s apart:
/// a peer machine that vanishes without a FIN is noticed within about 25 s
/// when nothing is in flight) and, on Linux, `TCP_USER_TIMEOUT` of 10 s (the
/// same when data is in flight, which keepalive does not cover).
pub(crate) fn tune(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5));
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "freebsd"
    ))]
    let ka = ka.with_retries(3);
    let sock = socket2::SockRef::from(stream);
    let _ = sock.set_tcp_keepalive(&ka);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = sock.set_tcp_user_timeout(Some(Duration::from_secs(10)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_after_the_item_that_reaches_the_limit() {
        let w = [3, 4, 1, 10, 2];
        let runs = split_by(&w, |x| *x, 7);
        assert_eq!(runs, [&[3, 4][..], &[1, 10], &[2]]);
        assert!(split_by(&[] as &[usize], |x| *x, 7).is_empty());
        assert_eq!(split_by(&w, |_| 0, 7), [&w[..]]);
    }

    #[test]
    fn keys_compare() {
        assert!(same_key("abc", "abc"));
        assert!(!same_key("abc", "abd"));
        assert!(!same_key("abc", "abcd"));
        assert!(same_key("", ""));
    }

    #[test]
    fn addr_lists() {
        assert_eq!(
            split_addrs(" a:1, b:2,,"),
            vec!["a:1".to_owned(), "b:2".to_owned()]
        );
        assert!(split_addrs("").is_empty());
    }
}
