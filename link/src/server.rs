//! The serving side of a link.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::wire::{self, Conn, Hello, Reply, Welcome, MAGIC, VERSION};
use crate::{same_key, tune, Service, DEFAULT_MAX_FRAME, HELLO_TIMEOUT};

/// Settings of a link server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The cluster key clients must present (empty: none required).
    pub key: String,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Requests of one connection handled at once (concurrent services).
    pub max_in_flight: usize,
    /// This process's instance id, told to every client.
    pub instance: u64,
}

impl ServerConfig {
    /// Defaults with `key` and a random instance id.
    pub fn new(key: impl Into<String>) -> ServerConfig {
        ServerConfig {
            key: key.into(),
            max_frame: DEFAULT_MAX_FRAME,
            max_in_flight: 1024,
            instance: rand::random::<u64>() | 1,
        }
    }
}

/// Serves `svc` on `listener` until `stop` is cancelled; every connection is
/// closed then and its in-flight requests are dropped (their clients see
/// [`crate::LinkError::Disconnected`]).
pub async fn serve<S: Service>(
    listener: TcpListener,
    svc: Arc<S>,
    cfg: ServerConfig,
    stop: CancellationToken,
) {
    let cfg = Arc::new(cfg);
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                tune(&stream);
                let (svc, cfg, stop) = (svc.clone(), cfg.clone(), stop.clone());
                tracker.spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        r = connection(stream, svc, cfg) => if let Err(e) = r {
                            tracing::debug!(%peer, service = S::NAME, error = %e, "link connection ended");
                        }
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(service = S::NAME, error = %e, "link accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    tracker.close();
    tracker.wait().await;
}

async fn connection<S: Service>(
    stream: TcpStream,
    svc: Arc<S>,
    cfg: Arc<ServerConfig>,
) -> Result<(), String> {
    let mut conn = wire::framed(stream, cfg.max_frame);
    handshake::<S>(&mut conn, &cfg).await?;

    let (mut sink, mut frames) = conn.split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(cfg.max_in_flight.max(1));
    let writer = async move {
        while let Some(frame) = rx.recv().await {
            sink.feed(frame).await.map_err(|e| e.to_string())?;
            while let Ok(more) = rx.try_recv() {
                sink.feed(more).await.map_err(|e| e.to_string())?;
            }
            sink.flush().await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    let limit = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let stats = crate::stats::served(S::NAME);
    let reader = async move {
        while let Some(frame) = frames.next().await {
            let frame = frame.map_err(|e| e.to_string())?;
            let read_at = Instant::now();
            let (id, body) = wire::split_id(&frame).map_err(|e| format!("bad request id: {e}"))?;
            let req = match wire::decode::<S::Req>(body) {
                Ok(r) => r,
                Err(e) => {
                    let reply: Reply<S::Resp> =
                        Reply::Err(format!("{}: {e}", crate::UNDECODABLE_REQUEST));
                    send_reply(&tx, id, reply).await?;
                    continue;
                }
            };
            if S::ORDERED {
                let resp = svc.call(req).await;
                send_reply(&tx, id, Reply::Ok(resp)).await?;
                stats.observe(read_at.elapsed(), true);
            } else {
                let permit = limit
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| e.to_string())?;
                let (svc, tx, stats) = (svc.clone(), tx.clone(), stats.clone());
                tokio::spawn(async move {
                    let resp = svc.call(req).await;
                    let sent = send_reply(&tx, id, Reply::Ok(resp)).await;
                    stats.observe(read_at.elapsed(), sent.is_ok());
                    drop(permit);
                });
            }
        }
        Ok::<(), String>(())
    };
    // The writer ends when every sender is gone (reader done, spawned calls answered).
    let (r, w) = tokio::join!(reader, writer);
    r.and(w)
}

async fn send_reply<R: serde::Serialize>(
    tx: &mpsc::Sender<Bytes>,
    id: u64,
    reply: Reply<R>,
) -> Result<(), String> {
    // Encoded before the await: the reply itself need not be Sync.
    let frame = wire::encode(id, &reply).map_err(|e| format!("encode reply: {e}"))?;
    drop(reply);
    tx.send(frame).await.map_err(|_| "writer gone".to_owned())
}

async fn handshake<S: Service>(conn: &mut Conn, cfg: &ServerConfig) -> Result<(), String> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, conn.next())
        .await
        .map_err(|_| "no hello in time".to_owned())?
        .ok_or_else(|| "closed before hello".to_owned())?
        .map_err(|e| e.to_string())?;
    let refuse = match wire::decode::<Hello>(&first) {
        Err(e) => Some(format!("bad hello: {e}")),
        Ok(h) if h.magic != MAGIC => Some("not a pushgate link".to_owned()),
        Ok(h) if h.version != VERSION => Some(format!(
            "link version {} not supported (this server speaks {VERSION})",
            h.version
        )),
        Ok(h) if h.service != S::NAME => {
            Some(format!("this is a {} service, not {}", S::NAME, h.service))
        }
        Ok(h) if !same_key(&h.key, &cfg.key) => Some("wrong cluster key".to_owned()),
        Ok(_) => None,
    };
    let welcome = match &refuse {
        Some(reason) => Welcome::Refused {
            reason: reason.clone(),
        },
        None => Welcome::Ok {
            instance: cfg.instance,
        },
    };
    let bytes = postcard::to_stdvec(&welcome).map_err(|e| e.to_string())?;
    conn.send(Bytes::from(bytes))
        .await
        .map_err(|e| e.to_string())?;
    match refuse {
        Some(reason) => {
            tracing::warn!(service = S::NAME, %reason, "link refused");
            Err(reason)
        }
        None => Ok(()),
    }
}
