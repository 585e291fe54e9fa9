//! The calling side of a link: one connection per peer, pipelined calls,
//! reconnect with jittered exponential backoff.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::wire::{self, Hello, Reply, Welcome, MAGIC, VERSION};
use crate::{tune, LinkError, DEFAULT_MAX_FRAME};

/// Settings of a link client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The cluster key sent in the hello.
    pub key: String,
    /// Longest a call waits for its answer.
    pub call_timeout: Duration,
    /// Longest a connection attempt (TCP and hello) may take.
    pub connect_timeout: Duration,
    /// How long a call made before the first connection waits for it.
    pub first_connect_wait: Duration,
    /// First reconnect delay; doubles up to `backoff_max`, with jitter.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Requests queued for the socket at most; callers wait beyond.
    pub queue: usize,
}

impl ClientConfig {
    /// Defaults with `key`: 5 s calls, 2 s connects, backoff 50 ms … 2 s.
    pub fn new(key: impl Into<String>) -> ClientConfig {
        ClientConfig {
            key: key.into(),
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            first_connect_wait: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_frame: DEFAULT_MAX_FRAME,
            queue: 4096,
        }
    }
}

type Pending<R> = Mutex<HashMap<u64, oneshot::Sender<Result<R, LinkError>>>>;

struct Shared<R> {
    addr: String,
    service: &'static str,
    cfg: ClientConfig,
    next_id: AtomicU64,
    pending: Pending<R>,
    /// The writer of the current connection, when there is one.
    conn: Mutex<Option<mpsc::Sender<Bytes>>>,
    /// The peer's instance id while connected.
    state: watch::Sender<Option<u64>>,
    ever_connected: AtomicBool,
    created: std::time::Instant,
    /// This process's figures for calls to `service`.
    stats: Arc<crate::stats::ServiceStats>,
}

struct Handle<R> {
    shared: Arc<Shared<R>>,
    _stop: DropGuard,
}

/// A client of one peer's service. Cheap to clone; the connection is closed
/// when the last clone is dropped.
pub struct Client<Req, Resp> {
    inner: Arc<Handle<Resp>>,
    _req: PhantomData<fn(Req)>,
}

impl<Req, Resp> Clone for Client<Req, Resp> {
    fn clone(&self) -> Self {
        Client {
            inner: self.inner.clone(),
            _req: PhantomData,
        }
    }
}

impl<Req, Resp> Client<Req, Resp>
where
    Req: Serialize + Send + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    /// A client of `service` at `addr`; it connects in the background and
    /// keeps reconnecting until dropped.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn new(addr: impl Into<String>, service: &'static str, cfg: ClientConfig) -> Self {
        let (state, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            addr: addr.into(),
            service,
            cfg,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            conn: Mutex::new(None),
            state,
            ever_connected: AtomicBool::new(false),
            created: std::time::Instant::now(),
            stats: crate::stats::of(service),
        });
        let stop = CancellationToken::new();
        tokio::spawn(drive(shared.clone(), stop.clone()));
        Client {
            inner: Arc::new(Handle {
                shared,
                _stop: stop.drop_guard(),
            }),
            _req: PhantomData,
        }
    }

    /// The peer's address.
    pub fn addr(&self) -> &str {
        &self.inner.shared.addr
    }

    /// The peer's instance id while connected (it changes when the peer restarts).
    pub fn instance(&self) -> Option<u64> {
        *self.inner.shared.state.borrow()
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        self.instance().is_some()
    }

    /// A receiver that sees the peer's instance id (None while disconnected).
    pub fn watch(&self) -> watch::Receiver<Option<u64>> {
        self.inner.shared.state.subscribe()
    }

    /// Waits until connected, at most `timeout`; true when connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.watch();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Sends `req` and waits for the answer (at most the call timeout).
    ///
    /// # Errors
    /// [`LinkError::Unavailable`] at once when the peer is not connected
    /// (before the first connection, after waiting up to
    /// `first_connect_wait`); [`LinkError::Disconnected`] or
    /// [`LinkError::Timeout`] when the request was sent but not answered;
    /// [`LinkError::Protocol`] on an undecodable frame.
    pub async fn call(&self, req: Req) -> Result<Resp, LinkError> {
        let began = std::time::Instant::now();
        let r = self.call_once(req).await;
        self.inner.shared.stats.observe(began.elapsed(), r.is_ok());
        r
    }

    async fn call_once(&self, req: Req) -> Result<Resp, LinkError> {
        let s = &self.inner.shared;
        if !s.ever_connected.load(Ordering::Acquire) {
            // Only right after creation: a peer that was never reached must
            // not cost every later call the whole wait.
            let left = s.cfg.first_connect_wait.saturating_sub(s.created.elapsed());
            if !left.is_zero() {
                self.wait_connected(left).await;
            }
        }
        let Some(tx) = s.conn.lock().clone() else {
            return Err(self.unavailable());
        };
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = wire::encode(id, &req).map_err(|e| LinkError::Protocol {
            service: s.service,
            reason: format!("encode request: {e}"),
        })?;
        let (done_tx, done_rx) = oneshot::channel();
        s.pending.lock().insert(id, done_tx);
        let timeout = s.cfg.call_timeout;
        let outcome = tokio::time::timeout(timeout, async {
            if tx.send(frame).await.is_err() {
                return Err(self.unavailable());
            }
            done_rx.await.unwrap_or_else(|_| Err(self.disconnected()))
        })
        .await;
        match outcome {
            Ok(r) => {
                if r.is_err() {
                    s.pending.lock().remove(&id);
                }
                r
            }
            Err(_) => {
                s.pending.lock().remove(&id);
                Err(LinkError::Timeout {
                    service: s.service,
                    addr: s.addr.clone(),
                    timeout,
                })
            }
        }
    }

    fn unavailable(&self) -> LinkError {
        LinkError::Unavailable {
            service: self.inner.shared.service,
            addr: self.inner.shared.addr.clone(),
        }
    }

    fn disconnected(&self) -> LinkError {
        LinkError::Disconnected {
            service: self.inner.shared.service,
            addr: self.inner.shared.addr.clone(),
        }
    }
}

/// Connects, serves the connection until it ends, backs off, repeats; until `stop`.
async fn drive<R: DeserializeOwned + Send + 'static>(s: Arc<Shared<R>>, stop: CancellationToken) {
    let mut backoff = s.cfg.backoff_min;
    let mut down_logged = false;
    loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            a = tokio::time::timeout(s.cfg.connect_timeout, connect(&s)) => a,
        };
        match attempt {
            Ok(Ok((conn, instance))) => {
                backoff = s.cfg.backoff_min;
                if down_logged {
                    tracing::info!(service = s.service, addr = %s.addr, "link up again");
                }
                let ended = tokio::select! {
                    () = stop.cancelled() => None,
                    e = run(&s, conn, instance) => Some(e),
                };
                *s.conn.lock() = None;
                s.state.send_replace(None);
                fail_pending(&s);
                match ended {
                    None => return,
                    Some(e) => {
                        tracing::warn!(service = s.service, addr = %s.addr, reason = %e, "link down; reconnecting");
                        down_logged = true;
                    }
                }
            }
            Ok(Err(e)) => {
                if !down_logged {
                    tracing::warn!(service = s.service, addr = %s.addr, error = %e, "link connect failed; retrying with backoff");
                    down_logged = true;
                }
            }
            Err(_) => {
                if !down_logged {
                    tracing::warn!(service = s.service, addr = %s.addr, "link connect timed out; retrying with backoff");
                    down_logged = true;
                }
            }
        }
        let jitter = rand::rng().random_range(0.5..1.0);
        let delay = backoff.mul_f64(jitter);
        backoff = (backoff * 2).min(s.cfg.backoff_max);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn fail_pending<R>(s: &Shared<R>) {
    let drained: Vec<_> = s.pending.lock().drain().collect();
    for (_, tx) in drained {
        let _ = tx.send(Err(LinkError::Disconnected {
            service: s.service,
            addr: s.addr.clone(),
        }));
    }
}

async fn connect<R>(s: &Shared<R>) -> Result<(wire::Conn, u64), String> {
    let stream = TcpStream::connect(&s.addr)
        .await
        .map_err(|e| e.to_string())?;
    tune(&stream);
    let mut conn = wire::framed(stream, s.cfg.max_frame);
    let hello = Hello {
        magic: MAGIC,
        version: VERSION,
        service: s.service.to_owned(),
        key: s.cfg.key.clone(),
    };
    let bytes = postcard::to_stdvec(&hello).map_err(|e| e.to_string())?;
    conn.send(Bytes::from(bytes))
        .await
        .map_err(|e| e.to_string())?;
    let first = conn
        .next()
        .await
        .ok_or_else(|| "closed during hello".to_owned())?
        .map_err(|e| e.to_string())?;
    match wire::decode::<Welcome>(&first).map_err(|e| format!("bad welcome: {e}"))? {
        Welcome::Ok { instance } => Ok((conn, instance)),
        Welcome::Refused { reason } => Err(format!("refused: {reason}")),
    }
}

/// Runs one established connection; returns why it ended.
async fn run<R: DeserializeOwned + Send + 'static>(
    s: &Shared<R>,
    conn: wire::Conn,
    instance: u64,
) -> String {
    let (mut sink, mut frames) = conn.split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(s.cfg.queue.max(1));
    *s.conn.lock() = Some(tx);
    s.ever_connected.store(true, Ordering::Release);
    s.state.send_replace(Some(instance));
    let writer = async {
        while let Some(frame) = rx.recv().await {
            if let Err(e) = sink.feed(frame).await {
                return format!("write: {e}");
            }
            while let Ok(more) = rx.try_recv() {
                if let Err(e) = sink.feed(more).await {
                    return format!("write: {e}");
                }
            }
            if let Err(e) = sink.flush().await {
                return format!("write: {e}");
            }
        }
        "closed".to_owned()
    };
    let reader = async {
        while let Some(frame) = frames.next().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => return format!("read: {e}"),
            };
            let (id, body) = match wire::split_id(&frame) {
                Ok(x) => x,
                Err(e) => return format!("bad reply id: {e}"),
            };
            let Some(waiter) = s.pending.lock().remove(&id) else {
                continue; // the caller gave up (timeout)
            };
            let result = match wire::decode::<Reply<R>>(body) {
                Ok(Reply::Ok(r)) => Ok(r),
                Ok(Reply::Err(reason)) => Err(LinkError::Protocol {
                    service: s.service,
                    reason,
                }),
                Err(e) => Err(LinkError::Protocol {
                    service: s.service,
                    reason: format!("undecodable reply: {e}"),
                }),
            };
            let _ = waiter.send(result);
        }
        "closed by peer".to_owned()
    };
    tokio::select! {
        e = writer => e,
        e = reader => e,
    }
}
