//! Errors of the client's API calls. What goes wrong with a connection is not
//! an error of any call: it is reported as an [`Event`](crate::Event) and the
//! client reconnects by itself.

use thiserror::Error;

/// The error a token provider returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a [`ClientBuilder`](crate::ClientBuilder) or a
/// [`Client`](crate::Client) call failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A server URL could not be parsed.
    #[error("invalid url {url:?}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The builder was given no server URL.
    #[error("no server url given")]
    NoUrls,
    /// The builder was given no token nor token provider.
    #[error("no token or token provider given")]
    NoToken,
    /// A certificate fingerprint is not `sha256:` followed by 64 hex digits.
    #[error("invalid certificate fingerprint {0:?}: expected sha256:<64 hex digits>")]
    Fingerprint(String),
    /// A root certificate PEM could not be read or holds no usable certificate.
    #[error("invalid root certificate: {0}")]
    RootCertificate(String),
    /// The TLS configuration could not be built.
    #[error("tls configuration: {0}")]
    Tls(String),
    /// A channel name is not valid (1–128 bytes of `A-Za-z0-9_.:@/-`).
    #[error("invalid channel name {0:?}")]
    BadChannel(String),
    /// [`ClientBuilder::start`](crate::ClientBuilder::start) was called
    /// outside a Tokio runtime.
    #[error("the client must be started inside a tokio runtime")]
    NoRuntime,
    /// The client has stopped (closed, or its events were dropped).
    #[error("client stopped")]
    Stopped,
    /// No QUIC endpoint exists yet: the client has not connected over QUIC.
    #[error("no quic endpoint: the client has not connected over quic")]
    NoQuicEndpoint,
    /// Binding or rebinding a socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused a `send` or `pub` (a non-fatal error frame):
    /// nothing was stored or delivered. `rate_limited`, `unavailable` and
    /// `hook_unavailable` are worth retrying later with the same cid.
    #[error("refused: {}: {message}", code.as_str())]
    Refused {
        /// The error code.
        code: proto::ErrorCode,
        /// The server's (or the application hook's) text.
        message: String,
    },
    /// A `send` or `pub` payload could not be serialized as JSON.
    #[error("payload is not serializable as json: {0}")]
    Json(String),
    /// A cid is empty or longer than 64 bytes, or a recipient is empty.
    #[error("invalid {0}")]
    BadField(&'static str),
    /// Too many `send`/`pub` are waiting for an answer already.
    #[error("too many messages waiting for an answer ({0})")]
    Busy(usize),
    /// A request that needs a live connection (`presence`) found none, or
    /// its connection ended before the answer.
    #[error("not connected")]
    NotConnected,
}
