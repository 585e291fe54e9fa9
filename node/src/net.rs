//! Network plumbing every process shares: TCP listeners bound with a chosen
//! accept backlog ([`bind`]), and the one HTTP server ([`serve_http`]) that
//! serves the REST API (standalone, center) and the health endpoints (cluster
//! rooms), with limits against slow and idle clients.
//!
//! HTTP decisions:
//! - HTTP/1.1, and HTTP/2 over cleartext with prior knowledge (h2c: a
//!   client that starts with the HTTP/2 preface, e.g. `curl
//!   --http2-prior-knowledge`), told apart per connection by its first
//!   bytes. One h2c connection carries up to [`H2_MAX_STREAMS`] requests at
//!   once, so one publisher can keep many pushes in flight without many
//!   sockets. (No `Upgrade: h2c` dance: clients that speak h2c use prior
//!   knowledge; TLS termination with ALPN belongs to the proxy in front.)
//! - A request's header must arrive in full within
//!   [`HttpLimits::header_timeout`] (hyper's `header_read_timeout`), or the
//!   connection is closed (slowloris). hyper runs the same timer while a
//!   keep-alive connection waits for its next request, so a kept-alive
//!   connection with no new request is closed after it too.
//! - A connection that moves no byte either way for
//!   [`HttpLimits::idle_timeout`] is closed (a client that stops reading a
//!   response, or sends a body that never ends). It must exceed the longest
//!   request (the REST API answers within 10 s).
//! - At most [`HttpLimits::max_conns`] connections at once, apart from
//!   client connections. Over the cap a new connection is closed at once,
//!   unanswered: waiting would let the sockets that hold the cap also hold
//!   the queue behind it, and a caller that is refused at once can retry. The
//!   accept loop keeps accepting, so the kernel's backlog never fills with
//!   connections that are not looked at.
//! - Shutdown: no new connections; idle ones close, requests in flight
//!   finish (within the caller's bound).
//!
//! The settings of the process (`--http-*`, `--listen-backlog`) are set once
//! at start ([`init`]); [`settings`] reads them where a caller has no
//! configuration of its own at hand (the cluster processes' listeners).

use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Requests one HTTP/2 connection may have in flight at once.
pub(crate) const H2_MAX_STREAMS: u32 = 256;

/// Default accept backlog of every TCP listener (the kernel caps it at
/// `net.core.somaxconn`).
pub(crate) const DEFAULT_BACKLOG: u32 = 4096;

/// Limits of an HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HttpLimits {
    /// Longest time a request header may take to arrive in full.
    pub(crate) header_timeout: Duration,
    /// A connection with no byte moving either way this long is closed.
    pub(crate) idle_timeout: Duration,
    /// Connections served at once; more are closed at once.
    pub(crate) max_conns: usize,
}

impl Default for HttpLimits {
    /// 10 s for a header, 60 s idle, 1,024 connections.
    fn default() -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_conns: 1024,
        }
    }
}

/// The network settings of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NetSettings {
    /// Accept backlog of every TCP listener.
    pub(crate) backlog: u32,
    /// Limits of the HTTP server.
    pub(crate) http: HttpLimits,
}

impl Default for NetSettings {
    fn default() -> NetSettings {
        NetSettings {
            backlog: DEFAULT_BACKLOG,
            http: HttpLimits::default(),
        }
    }
}

static PROCESS: OnceLock<NetSettings> = OnceLock::new();

/// Sets this process's network settings; the first call wins.
pub(crate) fn init(s: NetSettings) {
    let _ = PROCESS.set(s);
}

/// This process's network settings (the defaults until [`init`]).
pub(crate) fn settings() -> NetSettings {
    PROCESS.get().copied().unwrap_or_default()
}

/// The soft limit on open files, from `/proc/self/limits` (Linux).
pub(crate) fn nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// HTTP connections served at once: `configured`, but at most a quarter of
/// the open-files limit `nofile`, so that HTTP connections alone can never
/// take the files client connections need (which are capped below the
/// limit, less this share).
pub(crate) fn http_cap(configured: usize, nofile: Option<u64>) -> usize {
    let Some(limit) = nofile else {
        return configured;
    };
    let quarter = usize::try_from(limit / 4).unwrap_or(usize::MAX).max(1);
    configured.min(quarter)
}

/// Binds a TCP listener on `addr` with an accept backlog of `backlog`
/// (`SO_REUSEADDR` on, as tokio's `TcpListener::bind` does).
///
/// # Errors
/// The socket could not be created, bound or put to listen.
pub(crate) fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(backlog)
}

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning about refused connections this often.
const FULL_WARN_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` with `limits` until `stop`, then waits for the
/// connections to finish (idle ones close at once; the caller bounds the wait).
///
/// # Errors
/// None today: accept errors are logged and retried; the `Result` keeps the
/// shape of `axum::serve`.
pub(crate) async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let nofile = nofile_limit();
    let max_conns = http_cap(limits.max_conns, nofile);
    if max_conns < limits.max_conns {
        warn!(
            ?nofile,
            http_max_conns = max_conns,
            "the open-files limit caps HTTP connections below --http-max-conns; raise nofile (docs/OPERATIONS.md)"
        );
    }
    let permits = Arc::new(Semaphore::new(max_conns));
    let tracker = TaskTracker::new();
    let mut backoff = BACKOFF_MIN;
    let mut refused: u64 = 0;
    let mut warned: Option<Instant> = None;
    // Bounded by `stop`: each turn handles one accept.
    loop {
        let (sock, peer) = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff = BACKOFF_MIN;
                    x
                }
                Err(e) => {
                    // EMFILE and friends: wait, never exit.
                    warn!(error = %e, "http accept failed");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refused += 1;
            if warned.is_none_or(|t| t.elapsed() >= FULL_WARN_EVERY) {
                warn!(
                    max = limits.max_conns,
                    refused,
                    "http connection limit reached: closing new connections (--http-max-conns)"
                );
                warned = Some(Instant::now());
            }
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let app = app.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            serve_conn(sock, peer, app, limits, stop).await;
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    info!("http server stopped");
    Ok(())
}

/// One HTTP connection, to its end.
async fn serve_conn(
    sock: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    limits: HttpLimits,
    stop: CancellationToken,
) {
    let activity = Activity::new();
    let io = TokioIo::new(Tracked {
        io: sock,
        activity: activity.clone(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // HTTP/2: the header timeout does not apply (hyper's h2 has none); the
    // idle timer below (no server pings keep it alive) and the stream cap
    // bound what one connection holds.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS);
    let mut conn = pin!(builder.serve_connection(io, TowerToHyperService::new(app)));
    let mut stopping = false;
    // Bounded by the idle timer: each turn ends the connection, starts its
    // graceful shutdown (once), or waits for a later idle deadline, which
    // only moving bytes push back.
    loop {
        let deadline = activity.last() + limits.idle_timeout;
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, error = %e, "http connection ended");
                }
                return;
            }
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(deadline) => {
                if activity.last() + limits.idle_timeout <= Instant::now() {
                    debug!(%peer, "http connection idle: closed");
                    return;
                }
            }
        }
    }
}

/// When a connection last moved a byte.
#[derive(Clone)]
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A socket that records when bytes move.
struct Tracked<S> {
    io: S,
    activity: Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// An HTTP server on a task of its own ([`serve_http`] with the process's
/// HTTP limits), until [`HttpServer::stop`].
pub(crate) struct HttpServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// Serves `app` on `listener` with the process's `--http-*` limits.
    ///
    /// # Errors
    /// When the listener's address cannot be read.
    pub(crate) fn start(listener: TcpListener, app: axum::Router) -> std::io::Result<HttpServer> {
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_http(listener, app, settings().http, stop.clone()));
        Ok(HttpServer { addr, stop, task })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in progress finish, and waits up to
    /// `within` for the server to end (then aborts it).
    pub(crate) async fn stop(self, within: Duration) {
        self.stop.cancel();
        let abort = self.task.abort_handle();
        match tokio::time::timeout(within, self.task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server"),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("http server did not stop in time");
                abort.abort();
            }
        }
    }
}

/// Files kept for everything that is not a client connection (listeners,
/// the store, logs, HTTP clients).
const RESERVED_FILES: u64 = 256;

/// Every connection is a file: cap connections below the open-files limit,
/// less the files kept for other uses and the HTTP connections' share (see
/// [`http_cap`]), so a full process refuses new clients quickly instead
/// of failing accept() with EMFILE, and say so (docs/OPERATIONS.md explains
/// how to raise it).
pub(crate) fn effective_max_connections(configured: usize) -> usize {
    let Some(limit) = nofile_limit() else {
        return configured;
    };
    let http = http_cap(settings().http.max_conns, Some(limit));
    let http = u64::try_from(http).unwrap_or(u64::MAX);
    let cap = limit
        .saturating_sub(RESERVED_FILES)
        .saturating_sub(http)
        .max(1);
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    if cap < configured {
        tracing::warn!(
            nofile = limit,
            max_connections = cap,
            "the open-files limit caps connections below --max-connections; raise nofile (docs/OPERATIONS.md)"
        );
        cap
    } else {
        configured
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_cap_is_a_quarter_of_nofile_at_most() {
        assert_eq!(http_cap(1024, None), 1024);
        assert_eq!(http_cap(1024, Some(1_048_576)), 1024);
        assert_eq!(http_cap(1024, Some(1024)), 256);
        assert_eq!(http_cap(1024, Some(2)), 1);
    }
}
