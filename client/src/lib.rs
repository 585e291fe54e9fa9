//! A client of pushgate's client protocol v1 (docs/PROTOCOL.md) for Rust
//! applications, tests and the load generator.
//!
//! It speaks every transport — WebSocket (`ws://`, `wss://`; JSON or binary
//! subprotocol), TCP (`tcp://`, `tls://`) and QUIC (`quic://`) — and keeps a
//! session alive by itself: it authenticates with a token from a provider
//! (called again before every reconnect, and before the token in force
//! expires, to send the new one with `refresh`), pings
//! at the heartbeat the server announces, reconnects with jittered
//! exponential backoff (or after the delay a draining server asks for),
//! rotating through a list of servers, resumes with `last_id`, drops
//! duplicates by id, re-subscribes its channels, and optionally acks.
//!
//! Frames are encoded and decoded only by the `proto` crate; this crate holds
//! no copy of the wire format.
//!
//! ```no_run
//! # async fn demo() -> Result<(), pushgate_client::ClientError> {
//! use pushgate_client::{Client, Event};
//!
//! let (client, mut events) = Client::builder(["ws://127.0.0.1:7700/ws"])
//!     .token_provider(|| async { Ok("eyJhbGciOiJIUzI1NiJ9...".to_string()) })
//!     .device("laptop-1")
//!     .auto_ack(true)
//!     .start()?;
//! client.subscribe("news").await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Message(m) => println!("{} {}", m.id, m.text()),
//!         Event::Disconnected(d) => println!("lost: {:?} {}", d.code, d.reason),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Layout: `url` (server URLs), `tls` (trust and pinning), `transport` (one
//! connection over any transport), `quic` (the QUIC endpoint and migration),
//! `backoff`, `dedupe` (recent ids), `driver` (the task that runs the
//! session and reconnects), `event` (what the application sees).

pub mod backoff;
mod dedupe;
mod driver;
mod error;
mod event;
mod io;
mod quic;
mod tls;
mod transport;
mod url;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use error::{BoxError, ClientError};
pub use event::{Connected, Disconnected, Event, Events, Message};

pub use proto::{ErrorCode, PresencePage, PresentUser};
pub use tls::{pin_verifier, Fingerprint};
pub use url::{Scheme, ServerUrl};

/// The frame encoding on WebSocket (TCP, TLS and QUIC always use binary).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encoding {
    /// Subprotocol `pushgate.v1.json`: JSON frames in text messages.
    #[default]
    Json,
    /// Subprotocol `pushgate.v1.bin`: binary frames in binary messages.
    Binary,
}

/// A boxed future returning a token.
pub(crate) type TokenFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

/// Where the client gets its token before each connection.
pub(crate) type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// Configures and starts a [`Client`]. Made by [`Client::builder`].
pub struct ClientBuilder {
    urls: Vec<String>,
    token: Option<TokenProvider>,
    device: Option<String>,
    last_id: Option<i64>,
    auto_ack: bool,
    ack_interval: Duration,
    subs: Vec<(String, Option<i64>)>,
    encoding: Encoding,
    backoff_initial: Duration,
    backoff_max: Duration,
    connect_timeout: Duration,
    event_capacity: usize,
    dedupe_capacity: usize,
    max_frame: usize,
    tls: tls::TlsSettings,
    quic_keep_alive: Option<Duration>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("urls", &self.urls)
            .field("device", &self.device)
            .field("last_id", &self.last_id)
            .field("auto_ack", &self.auto_ack)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Uses the same `token` for every connection.
    pub fn token(self, token: impl Into<String>) -> Self {
        let token: String = token.into();
        self.token_provider(move || {
            let t = token.clone();
            async move { Ok(t) }
        })
    }

    /// Calls `provider` for a token before every connection attempt, and
    /// on a live connection when 90 % of the current token's lifetime has
    /// passed: a token that expires later is sent with `refresh`
    /// ([`Event::TokenRefreshed`] when the server takes it), so the server
    /// does not close the connection with 4008. Before a connection, an
    /// error counts as a failed attempt ([`Event::ConnectFailed`]) and is
    /// retried with backoff; on a live connection it is logged and the
    /// provider is asked again later.
    pub fn token_provider<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, BoxError>> + Send + 'static,
    {
        self.token = Some(Arc::new(move || Box::pin(provider()) as TokenFuture));
        self
    }

    /// The device id sent with `auth` (used when the token has no `dev`
    /// claim). Give every installation its own: the server keeps acks per
    /// user and device.
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// Resumes after `id` on the first connection (e.g. the
    /// [`Client::last_id`] an earlier run saved): stored messages with a
    /// greater id are replayed. Without it the first connection gets what
    /// the device has not acked.
    pub fn last_id(mut self, id: i64) -> Self {
        self.last_id = Some(id);
        self
    }

    /// Acks user messages automatically once they are handed to [`Events`]
    /// (default off: call [`Client::ack`] after processing, for
    /// at-least-once processing across restarts). Acks are coalesced: at most
    /// one per [`ack_interval`](Self::ack_interval), carrying the highest id.
    pub fn auto_ack(mut self, on: bool) -> Self {
        self.auto_ack = on;
        self
    }

    /// How long acks are held to be coalesced into one (default 1 s).
    pub fn ack_interval(mut self, every: Duration) -> Self {
        self.ack_interval = every;
        self
    }

    /// Subscribes to `channel` on every connection. Invalid names are
    /// refused by [`start`](Self::start).
    pub fn subscribe(mut self, channel: impl Into<String>) -> Self {
        self.subs.push((channel.into(), None));
        self
    }

    /// Subscribes to `channel`, recovering its history after `last_id`
    /// (for channels pushed with history).
    pub fn subscribe_from(mut self, channel: impl Into<String>, last_id: i64) -> Self {
        self.subs.push((channel.into(), Some(last_id)));
        self
    }

    /// The WebSocket encoding (default JSON).
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Reconnect backoff: the first delay is at most `initial`, each failed
    /// attempt doubles the bound up to `max`; every delay is uniformly
    /// random in the upper half of its bound. Defaults 500 ms and 30 s. The
    /// backoff starts over after each successful `auth`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Limit for each step of a connection attempt: getting a token,
    /// connecting (with the TLS, WebSocket or QUIC handshake), and the
    /// `auth_ok` (default 10 s).
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = limit;
        self
    }

    /// Capacity of the [`Events`] channel (default 1024).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n.max(1);
        self
    }

    /// How many recent message ids are remembered to drop duplicates
    /// (default 4096).
    pub fn dedupe_capacity(mut self, n: usize) -> Self {
        self.dedupe_capacity = n;
        self
    }

    /// Largest frame accepted from the server (default 16 MiB).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Also trusts the certificates of a PEM text as roots (e.g. a private CA).
    ///
    /// # Errors
    /// [`ClientError::RootCertificate`] when the PEM holds no certificate.
    pub fn tls_root_pem(mut self, pem: &[u8]) -> Result<Self, ClientError> {
        self.tls.extra_roots.extend(tls::parse_pem_certs(pem)?);
        Ok(self)
    }

    /// Whether to trust Mozilla's root certificates (default yes). Turn off
    /// to trust only the roots added with [`tls_root_pem`](Self::tls_root_pem).
    pub fn tls_webpki_roots(mut self, on: bool) -> Self {
        self.tls.webpki_roots = on;
        self
    }

    /// Accepts exactly the server certificate with this SHA-256 fingerprint
    /// and no other, without checking its chain or name: for the
    /// self-signed certificate standalone generates (it prints
    /// `tls fingerprint: sha256:<hex>`). The server must still prove that it
    /// holds the certificate's key.
    pub fn tls_pin(mut self, fingerprint: Fingerprint) -> Self {
        self.tls.pin = Some(fingerprint);
        self
    }

    /// The QUIC keep-alive interval (default 15 s; None: none). It keeps NAT
    /// bindings open between heartbeats; the idle timeout is the server's.
    pub fn quic_keep_alive(mut self, every: Option<Duration>) -> Self {
        self.quic_keep_alive = every;
        self
    }

    /// Starts the client: a task on the current Tokio runtime connects and
    /// keeps reconnecting until [`Client::close`] or until the [`Client`] or
    /// its [`Events`] are dropped.
    ///
    /// # Errors
    /// No URL, an invalid URL or channel name, no token, a TLS setting that
    /// cannot be built, or no Tokio runtime.
    pub fn start(self) -> Result<(Client, Events), ClientError> {
        if self.urls.is_empty() {
            return Err(ClientError::NoUrls);
        }
        let urls = self
            .urls
            .iter()
            .map(|u| ServerUrl::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let token = self.token.ok_or(ClientError::NoToken)?;
        for (c, _) in &self.subs {
            if !proto::valid_channel(c) {
                return Err(ClientError::BadChannel(c.clone()));
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let tls_stream = tls::client_config(&self.tls, &[], false)?;
        let tls_ws = tls::client_config(&self.tls, &[b"http/1.1"], false)?;
        let tls_quic = tls::client_config(&self.tls, &[tls::QUIC_ALPN], true)?;
        let shared = Arc::new(Shared {
            last_id: AtomicI64::new(self.last_id.unwrap_or(NO_ID)),
            connected: AtomicBool::new(false),
            quic: Arc::new(Mutex::new(None)),
        });
        let quic = quic::QuicEndpoints::new(tls_quic, self.quic_keep_alive, shared.quic.clone())
            .map_err(ClientError::Tls)?;
        let dialer = transport::Dialer {
            encoding: self.encoding,
            max_frame: self.max_frame,
            tls_stream,
            tls_ws,
            quic,
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(self.event_capacity);
        let cancel = CancellationToken::new();
        let driver = driver::Driver::new(driver::Settings {
            urls,
            token,
            device: self.device,
            last_id: self.last_id,
            auto_ack: self.auto_ack,
            ack_interval: self.ack_interval,
            subs: self.subs,
            backoff: backoff::Backoff::new(self.backoff_initial, self.backoff_max),
            connect_timeout: self.connect_timeout,
            dedupe_capacity: self.dedupe_capacity,
            dialer,
            shared: shared.clone(),
            cmds: cmd_rx,
            events: ev_tx,
            cancel: cancel.clone(),
        });
        let task = runtime.spawn(driver.run());
        Ok((
            Client {
                cmds: cmd_tx,
                shared,
                cancel,
                task: Some(task),
            },
            Events { rx: ev_rx },
        ))
    }
}

/// `last_id` not known yet.
const NO_ID: i64 = i64::MIN;

/// State the driver shares with the handle.
struct Shared {
    /// Highest user-message id received ([`NO_ID`]: none).
    last_id: AtomicI64,
    /// Whether a session is authenticated now.
    connected: AtomicBool,
    /// The QUIC endpoint, once the client used QUIC.
    quic: Arc<Mutex<Option<quinn::Endpoint>>>,
}

/// What the handle asks of the driver.
#[derive(Debug)]
enum Command {
    Sub {
        channel: String,
        last_id: Option<i64>,
        /// Also ask for the channel's `join` and `leave` events.
        presence: bool,
    },
    /// A `presence` request, answered when the server answers it.
    Presence {
        channel: String,
        reply: oneshot::Sender<Result<proto::PresencePage, ClientError>>,
    },
    Unsub {
        channel: String,
    },
    Ack(i64),
    /// Sends the pending ack now and replies when it is written (or there
    /// is no connection).
    Flush(oneshot::Sender<()>),
    /// A `send` or `pub`, answered when the server answers it.
    Send(driver::Outgoing),
}

/// A `send` or `pub` the server accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The message's id.
    pub id: i64,
    /// Its client message id.
    pub cid: String,
}

/// A fresh client message id: 32 random hex digits.
pub fn new_cid() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A running client: the handle to subscribe, ack, migrate and stop. Its
/// [`Events`] come with it from [`ClientBuilder::start`]. Dropping it stops
/// the client.
pub struct Client {
    cmds: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("last_id", &self.last_id())
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of `urls`, tried in turn: the first connection
    /// goes to the first URL, every reconnect to the next one (any room of a
    /// cluster will do).
    pub fn builder<I, S>(urls: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            urls: urls.into_iter().map(Into::into).collect(),
            token: None,
            device: None,
            last_id: None,
            auto_ack: false,
            ack_interval: Duration::from_secs(1),
            subs: Vec::new(),
            encoding: Encoding::Json,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            event_capacity: 1024,
            dedupe_capacity: 4096,
            max_frame: 16 * 1024 * 1024,
            tls: tls::TlsSettings::default(),
            quic_keep_alive: Some(Duration::from_secs(15)),
        }
    }

    async fn command(&self, cmd: Command) -> Result<(), ClientError> {
        self.cmds.send(cmd).await.map_err(|_| ClientError::Stopped)
    }

    /// Subscribes to `channel` now (or on the next connection) and again
    /// after every reconnect, resuming after the last message received on
    /// it. The answer comes as [`Event::Subscribed`] or
    /// [`Event::SubscribeFailed`].
    ///
    /// # Errors
    /// [`ClientError::BadChannel`], or [`ClientError::Stopped`].
    pub async fn subscribe(&self, channel: impl Into<String>) -> Result<(), ClientError> {
        self.subscribe_inner(channel.into(), None, false).await
    }

    /// Like [`subscribe`](Self::subscribe), also asking for the channel's
    /// presence events: [`Event::Join`] and [`Event::Leave`] of the other
    /// members (channels the server lists in `--presence-channels`), on
    /// every connection from now on.
    ///
    /// # Errors
    /// [`ClientError::BadChannel`], or [`ClientError::Stopped`].
    pub async fn subscribe_with_presence(
        &self,
        channel: impl Into<String>,
    ) -> Result<(), ClientError> {
        self.subscribe_inner(channel.into(), None, true).await
    }

    /// Who is in `channel` now (a channel with presence this client is
    /// subscribed to): the first 1,000 users with their connections, over
    /// every room; `more` when more follow (the REST API pages through all).
    ///
    /// # Errors
    /// [`ClientError::NotConnected`] when there is no connection now, or it
    /// ended before the answer; [`ClientError::Refused`] (`forbidden`: no
    /// presence on the channel, or not subscribed); [`ClientError::BadChannel`];
    /// [`ClientError::Stopped`].
    pub async fn presence(
        &self,
        channel: impl Into<String>,
    ) -> Result<proto::PresencePage, ClientError> {
        let channel = channel.into();
        if !proto::valid_channel(&channel) {
            return Err(ClientError::BadChannel(channel));
        }
        let (reply, rx) = oneshot::channel();
        self.command(Command::Presence { channel, reply }).await?;
        rx.await.map_err(|_| ClientError::NotConnected)?
    }

    /// Like [`subscribe`](Self::subscribe), recovering the channel's history
    /// after `last_id` (for channels pushed with history).
    ///
    /// # Errors
    /// [`ClientError::BadChannel`], or [`ClientError::Stopped`].
    pub async fn subscribe_from(
        &self,
        channel: impl Into<String>,
        last_id: i64,
    ) -> Result<(), ClientError> {
        self.subscribe_inner(channel.into(), Some(last_id), false)
            .await
    }

    async fn subscribe_inner(
        &self,
        channel: String,
        last_id: Option<i64>,
        presence: bool,
    ) -> Result<(), ClientError> {
        if !proto::valid_channel(&channel) {
            return Err(ClientError::BadChannel(channel));
        }
        self.command(Command::Sub {
            channel,
            last_id,
            presence,
        })
        .await
    }

    /// Sends a 1:1 message to user `to` (docs/PROTOCOL.md, "Sending") with
    /// a fresh cid, and waits for the server's answer. Sent at once when
    /// connected, else on the next connection; a message whose connection
    /// ends before the answer is sent again, with the same cid, on the next
    /// one (the server delivers it once).
    ///
    /// # Errors
    /// [`ClientError::Refused`] (nothing was delivered), [`ClientError::Json`],
    /// [`ClientError::BadField`], [`ClientError::Busy`], or
    /// [`ClientError::Stopped`].
    pub async fn send<T: serde::Serialize + ?Sized>(
        &self,
        to: impl Into<String>,
        data: &T,
    ) -> Result<Sent, ClientError> {
        self.send_with_cid(to, data, new_cid()).await
    }

    /// [`send`](Self::send) with the caller's cid (to retry a message
    /// across restarts of the application: the same cid is delivered once).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_with_cid<T: serde::Serialize + ?Sized>(
        &self,
        to: impl Into<String>,
        data: &T,
        cid: String,
    ) -> Result<Sent, ClientError> {
        let to = to.into();
        if to.is_empty() {
            return Err(ClientError::BadField("recipient"));
        }
        self.message(driver::Target::User(to), data, cid).await
    }

    /// Publishes a group message to `channel` (the token's `pub` claim must
    /// allow it) with a fresh cid, and waits for the answer; as
    /// [`send`](Self::send) otherwise.
    ///
    /// # Errors
    /// As [`send`](Self::send), and [`ClientError::BadChannel`].
    pub async fn publish<T: serde::Serialize + ?Sized>(
        &self,
        channel: impl Into<String>,
        data: &T,
    ) -> Result<Sent, ClientError> {
        let channel = channel.into();
        if !proto::valid_channel(&channel) {
            return Err(ClientError::BadChannel(channel));
        }
        self.message(driver::Target::Channel(channel), data, new_cid())
            .await
    }

    async fn message<T: serde::Serialize + ?Sized>(
        &self,
        to: driver::Target,
        data: &T,
        cid: String,
    ) -> Result<Sent, ClientError> {
        if !proto::valid_cid(&cid) {
            return Err(ClientError::BadField("cid"));
        }
        let data = serde_json::to_vec(data).map_err(|e| ClientError::Json(e.to_string()))?;
        let (reply, rx) = oneshot::channel();
        let out = driver::Outgoing {
            to,
            data: bytes::Bytes::from(data),
            cid,
            reply,
        };
        self.command(Command::Send(out)).await?;
        rx.await.map_err(|_| ClientError::Stopped)?
    }

    /// Unsubscribes from `channel`; it is not subscribed again after a
    /// reconnect. The answer comes as [`Event::Unsubscribed`].
    ///
    /// # Errors
    /// [`ClientError::Stopped`].
    pub async fn unsubscribe(&self, channel: impl Into<String>) -> Result<(), ClientError> {
        self.command(Command::Unsub {
            channel: channel.into(),
        })
        .await
    }

    /// Tells the server the device has every user message up to `id`
    /// (coalesced with other acks; sent within the ack interval, or on the
    /// next connection).
    ///
    /// # Errors
    /// [`ClientError::Stopped`].
    pub async fn ack(&self, id: i64) -> Result<(), ClientError> {
        self.command(Command::Ack(id)).await
    }

    /// Sends the pending ack now, if connected, and waits until it is written.
    ///
    /// # Errors
    /// [`ClientError::Stopped`].
    pub async fn flush_acks(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Flush(tx)).await?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// The highest id of a user message received so far (or given to
    /// [`ClientBuilder::last_id`]): the `last_id` of the next reconnect.
    /// Save it to resume after a restart.
    pub fn last_id(&self) -> Option<i64> {
        match self.shared.last_id.load(Ordering::Relaxed) {
            NO_ID => None,
            n => Some(n),
        }
    }

    /// Whether the client is connected and authenticated now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// The local address of the QUIC endpoint, once the client has used QUIC.
    pub fn quic_local_addr(&self) -> Option<SocketAddr> {
        let ep = self.shared.quic.lock().clone();
        ep.and_then(|e| e.local_addr().ok())
    }

    /// QUIC connection migration: moves the client's QUIC endpoint to a new
    /// UDP socket bound to `addr` (e.g. `0.0.0.0:0` after a network change,
    /// or a specific interface's address), without reconnecting. The server
    /// sees the connection come from a new address, validates the path, and
    /// the session goes on: no new `auth`, nothing lost. Returns the new
    /// local address. Must be called inside the Tokio runtime.
    ///
    /// # Errors
    /// [`ClientError::NoQuicEndpoint`] before the first QUIC connection, or
    /// [`ClientError::Io`] when the socket cannot be bound.
    pub fn rebind(&self, addr: SocketAddr) -> Result<SocketAddr, ClientError> {
        let ep = self
            .shared
            .quic
            .lock()
            .clone()
            .ok_or(ClientError::NoQuicEndpoint)?;
        let socket = std::net::UdpSocket::bind(addr)?;
        ep.rebind(socket)?;
        Ok(ep.local_addr()?)
    }

    /// Stops the client: sends the pending ack, closes the connection
    /// politely and waits (at most 3 s) for the task to end. [`Events`]
    /// ends after the events already queued.
    pub async fn close(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(b: ClientBuilder) -> ClientError {
        match b.start() {
            Ok(_) => panic!("start must fail"),
            Err(e) => e,
        }
    }

    #[test]
    fn start_refuses_bad_settings_before_connecting() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let none: [&str; 0] = [];
        assert!(matches!(
            err(Client::builder(none).token("t")),
            ClientError::NoUrls
        ));
        assert!(matches!(
            err(Client::builder(["ws://h", "http://h"]).token("t")),
            ClientError::Url { .. }
        ));
        assert!(matches!(
            err(Client::builder(["ws://h"])),
            ClientError::NoToken
        ));
        assert!(matches!(
            err(Client::builder(["ws://h"]).token("t").subscribe("a b")),
            ClientError::BadChannel(_)
        ));
        assert!(matches!(
            err(Client::builder(["ws://h"])
                .token("t")
                .tls_webpki_roots(false)),
            ClientError::RootCertificate(_) | ClientError::Tls(_)
        ));
        assert!(Client::builder(["ws://h"])
            .tls_root_pem(b"nothing")
            .is_err());
    }

    #[test]
    fn start_needs_a_runtime() {
        assert!(matches!(
            err(Client::builder(["ws://h"]).token("t")),
            ClientError::NoRuntime
        ));
    }

    #[tokio::test]
    async fn handle_without_a_server() {
        // Nothing listens on port 9 of 127.0.0.1: attempts fail and are retried.
        let (client, mut events) = Client::builder(["tcp://127.0.0.1:9", "quic://127.0.0.1:9"])
            .token("t")
            .backoff(Duration::from_millis(10), Duration::from_millis(20))
            .connect_timeout(Duration::from_millis(300))
            .last_id(42)
            .start()
            .unwrap();
        assert_eq!(client.last_id(), Some(42));
        assert!(!client.is_connected());
        assert!(matches!(
            client.rebind("127.0.0.1:0".parse().unwrap()),
            Err(ClientError::NoQuicEndpoint)
        ));
        let mut urls = Vec::new();
        while urls.len() < 3 {
            match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
                Ok(Some(Event::ConnectFailed { url, retry_in, .. })) => {
                    assert!(retry_in <= Duration::from_millis(20));
                    urls.push(url);
                }
                other => panic!("expected ConnectFailed, got {other:?}"),
            }
        }
        assert_eq!(
            urls,
            [
                "tcp://127.0.0.1:9",
                "quic://127.0.0.1:9",
                "tcp://127.0.0.1:9"
            ],
            "urls are tried in turn"
        );
        // The QUIC attempt made an endpoint; it can be moved to a new socket.
        let before = client.quic_local_addr().unwrap();
        let after = client.rebind("0.0.0.0:0".parse().unwrap()).unwrap();
        assert_ne!(before.port(), after.port());
        assert_eq!(client.quic_local_addr(), Some(after));
        assert!(client.subscribe("news").await.is_ok());
        assert!(matches!(
            client.subscribe("no spaces").await,
            Err(ClientError::BadChannel(_))
        ));
        client.close().await;
        // Events end once the client has stopped (after what was queued).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(None) => break,
                Ok(Some(_)) => {}
                Err(_) => panic!("events did not end after close"),
            }
        }
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_client() {
        let (client, mut events) = Client::builder(["tcp://127.0.0.1:9"])
            .token("t")
            .backoff(Duration::from_secs(60), Duration::from_secs(60))
            .start()
            .unwrap();
        drop(client);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(None) => break,
                Ok(Some(_)) => {}
                Err(_) => panic!("events did not end after the handle was dropped"),
            }
        }
    }
}
