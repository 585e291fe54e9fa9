//! A [`Store`] over internal links (cluster mode).
//!
//! A saver process serves its store (Redis, or embedded) as
//! [`SaverService`]; centers and rooms use [`RemoteStore`], which makes one
//! call per [`Store`] method. The service is concurrent (not ordered), so
//! many calls reach the store at once and the embedded backend can
//! group-commit them.
//!
//! Savers on Redis are stateless: any of them serves any call, and
//! [`RemoteStore`] spreads calls round robin and moves on to the next saver
//! when one is down, restarting or draining. A saver on the embedded store
//! owns its file, so a cluster has exactly one.
//!
//! This module owns the wire protocol and both ends; it binds no sockets (the
//! caller passes listeners to [`link::serve`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use link::LinkError;
use proto::{MsgId, UserId};
use serde::{Deserialize, Serialize};

use crate::{append_each, Append, Bounds, Store, StoreError, StoredMsg};

/// A batch of appends over this many bytes goes as several calls (in
/// order), so that one call stays far below the link's frame limit and
/// does not hold the connection for long.
pub const APPEND_MANY_BYTES: usize = 1024 * 1024;

/// Service name in the link hello.
pub const SERVICE: &str = "saver";

/// A [`Store`] call, one variant per method (except `close`, which is local).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaverReq {
    /// [`Store::append_users`].
    AppendUsers {
        /// The users whose queues get the message.
        users: Vec<UserId>,
        /// The message.
        msg: StoredMsg,
        /// Bounds of each queue.
        bounds: Bounds,
    },
    /// [`Store::read_user`].
    ReadUser {
        /// The user.
        user: UserId,
        /// Only messages with a greater id.
        after: MsgId,
        /// Messages expired at this time are left out.
        now_ms: i64,
        /// At most this many.
        limit: u32,
    },
    /// [`Store::ack`].
    Ack {
        /// The user.
        user: UserId,
        /// The user's device.
        device: String,
        /// The highest id the device has.
        id: MsgId,
    },
    /// [`Store::acked`].
    Acked {
        /// The user.
        user: UserId,
        /// The user's device.
        device: String,
    },
    /// [`Store::cid_get`].
    CidGet {
        /// The user.
        user: UserId,
        /// The client message id.
        cid: String,
        /// Expired entries count as absent.
        now_ms: i64,
    },
    /// [`Store::cid_put`].
    CidPut {
        /// The user.
        user: UserId,
        /// The client message id.
        cid: String,
        /// The id it got.
        id: MsgId,
        /// Until when it is kept (ms since the epoch).
        expires_at: i64,
    },
    /// [`Store::append_channel`].
    AppendChannel {
        /// The channel.
        channel: String,
        /// The message.
        msg: StoredMsg,
        /// Bounds of the history.
        bounds: Bounds,
    },
    /// [`Store::read_channel`].
    ReadChannel {
        /// The channel.
        channel: String,
        /// Only messages with a greater id.
        after: MsgId,
        /// Messages expired at this time are left out.
        now_ms: i64,
        /// At most this many.
        limit: u32,
    },
    // New variants go last: older peers decode the others by index.
    /// [`Store::seen_put`].
    SeenPut {
        /// The user.
        user: UserId,
        /// Until when the record is kept (ms since the epoch).
        expires_at: i64,
    },
    /// [`Store::seen_get`].
    SeenGet {
        /// The user.
        user: UserId,
        /// Records expired at this time count as absent.
        now_ms: i64,
    },
    /// [`Store::append_many`]: answered with [`SaverResp::Each`].
    AppendMany {
        /// The writes, in id order.
        writes: Vec<Append>,
    },
}

/// A saver's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaverResp {
    /// A write is durable.
    Done,
    /// The messages read.
    Msgs(Vec<StoredMsg>),
    /// The answer to [`SaverReq::Acked`].
    Acked(Option<MsgId>),
    /// The answer to [`SaverReq::CidGet`].
    Cid(Option<MsgId>),
    /// The store failed (any [`StoreError`] but [`StoreError::Closed`], as text).
    Backend(String),
    /// The saver's store is closed (the saver is shutting down).
    Closed,
    // New variants go last: older peers decode the others by index.
    /// The answer to [`SaverReq::SeenGet`].
    Seen(bool),
    /// The answer to [`SaverReq::AppendMany`]: per write, in order, `None`
    /// when it is durable, else why it failed.
    Each(Vec<Option<String>>),
}

/// Serves a [`Store`] over links (concurrent: every call is its own task).
pub struct SaverService {
    store: Arc<dyn Store>,
}

impl SaverService {
    /// Wraps `store`.
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(SaverService { store })
    }
}

#[async_trait]
impl link::Service for SaverService {
    type Req = SaverReq;
    type Resp = SaverResp;
    const NAME: &'static str = SERVICE;
    const ORDERED: bool = false;

    async fn call(&self, req: SaverReq) -> SaverResp {
        // Bounded below the clients' call timeout: a call whose caller gave
        // up must not keep holding one of the connection's request slots.
        match tokio::time::timeout(SERVE_TIMEOUT, self.serve(req)).await {
            Ok(resp) => resp,
            Err(_) => {
                tracing::warn!("saver store call timed out");
                SaverResp::Backend(format!("store call timed out after {SERVE_TIMEOUT:?}"))
            }
        }
    }
}

/// Longest the store behind a saver may take for one call.
pub const SERVE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(2500);

impl SaverService {
    async fn serve(&self, req: SaverReq) -> SaverResp {
        let s = &self.store;
        let r = match req {
            SaverReq::AppendUsers { users, msg, bounds } => s
                .append_users(&users, &msg, bounds)
                .await
                .map(|()| SaverResp::Done),
            SaverReq::ReadUser {
                user,
                after,
                now_ms,
                limit,
            } => s
                .read_user(&user, after, now_ms, limit)
                .await
                .map(SaverResp::Msgs),
            SaverReq::Ack { user, device, id } => {
                s.ack(&user, &device, id).await.map(|()| SaverResp::Done)
            }
            SaverReq::Acked { user, device } => s.acked(&user, &device).await.map(SaverResp::Acked),
            SaverReq::CidGet { user, cid, now_ms } => {
                s.cid_get(&user, &cid, now_ms).await.map(SaverResp::Cid)
            }
            SaverReq::CidPut {
                user,
                cid,
                id,
                expires_at,
            } => s
                .cid_put(&user, &cid, id, expires_at)
                .await
                .map(|()| SaverResp::Done),
            SaverReq::AppendChannel {
                channel,
                msg,
                bounds,
            } => s
                .append_channel(&channel, &msg, bounds)
                .await
                .map(|()| SaverResp::Done),
            SaverReq::ReadChannel {
                channel,
                after,
                now_ms,
                limit,
            } => s
                .read_channel(&channel, after, now_ms, limit)
                .await
                .map(SaverResp::Msgs),
            SaverReq::SeenPut { user, expires_at } => s
                .seen_put(&user, expires_at)
                .await
                .map(|()| SaverResp::Done),
            SaverReq::SeenGet { user, now_ms } => {
                s.seen_get(&user, now_ms).await.map(SaverResp::Seen)
            }
            SaverReq::AppendMany { writes } => {
                let results = s.append_many(&writes).await;
                if results.iter().any(|r| matches!(r, Err(StoreError::Closed))) {
                    Err(StoreError::Closed)
                } else {
                    Ok(SaverResp::Each(
                        results
                            .into_iter()
                            .map(|r| {
                                r.err().map(|e| {
                                    tracing::warn!(error = %e, "saver store write failed");
                                    e.to_string()
                                })
                            })
                            .collect(),
                    ))
                }
            }
        };
        match r {
            Ok(resp) => resp,
            Err(StoreError::Closed) => SaverResp::Closed,
            Err(e) => {
                tracing::warn!(error = %e, "saver store call failed");
                SaverResp::Backend(e.to_string())
            }
        }
    }
}

/// A [`Store`] over links to one or more saver processes: stateless savers
/// on Redis (any of them serves any call), or exactly one saver on the
/// embedded store.
///
/// Each method is one call, to the savers round robin. When a saver is
/// unavailable, drops the connection, times out or is draining, the call
/// goes to the next saver: that is safe for writes too, since appends and
/// acks are idempotent (same id, same member). A failure of the store behind
/// a saver ([`StoreError::Remote`]) is returned as it is: every saver shares
/// that store. [`Store::close`] closes nothing remote; later calls on this
/// `RemoteStore` fail with [`StoreError::Closed`].
pub struct RemoteStore {
    savers: Vec<link::Client<SaverReq, SaverResp>>,
    /// Round robin position.
    turn: AtomicUsize,
    closed: AtomicBool,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addrs: Vec<&str> = self.savers.iter().map(link::Client::addr).collect();
        f.debug_struct("RemoteStore")
            .field("savers", &addrs)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why one saver did not answer a call.
enum Miss {
    /// Try the next saver.
    Next(String),
    /// Give up: the answer is final.
    Stop(StoreError),
}

impl RemoteStore {
    /// Clients of the savers at `addrs` (they connect in the background).
    /// With no address every call fails.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn new(addrs: Vec<String>, cfg: link::ClientConfig) -> Arc<RemoteStore> {
        let savers = addrs
            .into_iter()
            .map(|a| link::Client::new(a, SERVICE, cfg.clone()))
            .collect();
        Arc::new(RemoteStore {
            savers,
            turn: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// Sends `req` to the savers in turn until one answers.
    async fn call(&self, req: SaverReq) -> Result<SaverResp, StoreError> {
        self.call_at(req).await.map(|(resp, _)| resp)
    }

    /// [`RemoteStore::call`], and the address of the saver that answered.
    async fn call_at(&self, req: SaverReq) -> Result<(SaverResp, &str), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let count = self.savers.len();
        if count == 0 {
            return Err(StoreError::Setup("no saver addresses"));
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut req = Some(req);
        let mut last = String::new();
        for i in 0..count {
            let saver = &self.savers[(start + i) % count];
            // Keep a copy only while another saver is left to try.
            let this = if i + 1 == count {
                req.take()
            } else {
                req.clone()
            };
            let Some(this) = this else { break };
            match Self::outcome(saver, saver.call(this).await) {
                Ok(resp) => return Ok((resp, saver.addr())),
                Err(Miss::Stop(e)) => return Err(e),
                Err(Miss::Next(why)) => {
                    // The link logs its own ups and downs.
                    tracing::debug!(saver = saver.addr(), %why, "saver call failed; trying the next");
                    last = why;
                }
            }
        }
        Err(StoreError::NoSaver { last })
    }

    /// One [`SaverReq::AppendMany`] call for `writes`; a saver of an older
    /// version, which does not know it, gets the single calls instead.
    async fn append_chunk(&self, writes: &[Append]) -> Vec<Result<(), StoreError>> {
        let req = SaverReq::AppendMany {
            writes: writes.to_vec(),
        };
        match self.call_at(req).await {
            Ok((SaverResp::Each(results), addr)) if results.len() == writes.len() => results
                .into_iter()
                .map(|r| match r {
                    None => Ok(()),
                    Some(message) => Err(StoreError::Remote {
                        addr: addr.to_owned(),
                        message,
                    }),
                })
                .collect(),
            Ok((other, _)) => all_failed(writes.len(), unexpected(&other, "append_many")),
            Err(StoreError::Link { source }) if source.is_unknown_request() => {
                tracing::debug!("a saver does not know AppendMany; one call per write");
                append_each(self, writes).await
            }
            Err(e) => all_failed(writes.len(), e),
        }
    }

    fn outcome(
        saver: &link::Client<SaverReq, SaverResp>,
        r: Result<SaverResp, LinkError>,
    ) -> Result<SaverResp, Miss> {
        match r {
            Ok(SaverResp::Backend(message)) => Err(Miss::Stop(StoreError::Remote {
                addr: saver.addr().to_owned(),
                message,
            })),
            Ok(SaverResp::Closed) => Err(Miss::Next(format!(
                "saver at {} is shutting down",
                saver.addr()
            ))),
            Ok(resp) => Ok(resp),
            // Down, dropped or late: the next saver may answer.
            Err(e) if e.is_retryable() => Err(Miss::Next(e.to_string())),
            Err(source) => Err(Miss::Stop(StoreError::Link { source })),
        }
    }
}

/// `n` results, each failed with `e` (shared).
fn all_failed(n: usize, e: StoreError) -> Vec<Result<(), StoreError>> {
    let e = Arc::new(e);
    (0..n)
        .map(|_| Err(StoreError::Batch(Arc::clone(&e))))
        .collect()
}

/// The answer did not fit the call: a saver of another version.
fn unexpected(resp: &SaverResp, call: &'static str) -> StoreError {
    StoreError::BadAnswer {
        call,
        answer: format!("{resp:?}"),
    }
}

#[async_trait]
impl Store for RemoteStore {
    async fn append_users(
        &self,
        users: &[UserId],
        msg: &StoredMsg,
        bounds: Bounds,
    ) -> Result<(), StoreError> {
        let req = SaverReq::AppendUsers {
            users: users.to_vec(),
            msg: msg.clone(),
            bounds,
        };
        match self.call(req).await? {
            SaverResp::Done => Ok(()),
            other => Err(unexpected(&other, "append_users")),
        }
    }

    /// One call for the whole batch (several, at once, past
    /// [`APPEND_MANY_BYTES`]); a single write goes as itself.
    async fn append_many(&self, writes: &[Append]) -> Vec<Result<(), StoreError>> {
        if writes.len() <= 1 {
            return append_each(self, writes).await;
        }
        let chunks = link::split_by(writes, Append::wire_size, APPEND_MANY_BYTES);
        futures_util::future::join_all(chunks.into_iter().map(|c| self.append_chunk(c)))
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn read_user(
        &self,
        user: &UserId,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError> {
        let req = SaverReq::ReadUser {
            user: user.clone(),
            after,
            now_ms,
            limit,
        };
        match self.call(req).await? {
            SaverResp::Msgs(msgs) => Ok(msgs),
            other => Err(unexpected(&other, "read_user")),
        }
    }

    async fn ack(&self, user: &UserId, device: &str, id: MsgId) -> Result<(), StoreError> {
        let req = SaverReq::Ack {
            user: user.clone(),
            device: device.to_owned(),
            id,
        };
        match self.call(req).await? {
            SaverResp::Done => Ok(()),
            other => Err(unexpected(&other, "ack")),
        }
    }

    async fn acked(&self, user: &UserId, device: &str) -> Result<Option<MsgId>, StoreError> {
        let req = SaverReq::Acked {
            user: user.clone(),
            device: device.to_owned(),
        };
        match self.call(req).await? {
            SaverResp::Acked(id) => Ok(id),
            other => Err(unexpected(&other, "acked")),
        }
    }

    async fn cid_get(
        &self,
        user: &UserId,
        cid: &str,
        now_ms: i64,
    ) -> Result<Option<MsgId>, StoreError> {
        let req = SaverReq::CidGet {
            user: user.clone(),
            cid: cid.to_owned(),
            now_ms,
        };
        match self.call(req).await? {
            SaverResp::Cid(id) => Ok(id),
            other => Err(unexpected(&other, "cid_get")),
        }
    }

    async fn cid_put(
        &self,
        user: &UserId,
        cid: &str,
        id: MsgId,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let req = SaverReq::CidPut {
            user: user.clone(),
            cid: cid.to_owned(),
            id,
            expires_at,
        };
        match self.call(req).await? {
            SaverResp::Done => Ok(()),
            other => Err(unexpected(&other, "cid_put")),
        }
    }

    async fn append_channel(
        &self,
        channel: &str,
        msg: &StoredMsg,
        bounds: Bounds,
    ) -> Result<(), StoreError> {
        let req = SaverReq::AppendChannel {
            channel: channel.to_owned(),
            msg: msg.clone(),
            bounds,
        };
        match self.call(req).await? {
            SaverResp::Done => Ok(()),
            other => Err(unexpected(&other, "append_channel")),
        }
    }

    async fn read_channel(
        &self,
        channel: &str,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError> {
        let req = SaverReq::ReadChannel {
            channel: channel.to_owned(),
            after,
            now_ms,
            limit,
        };
        match self.call(req).await? {
            SaverResp::Msgs(msgs) => Ok(msgs),
            other => Err(unexpected(&other, "read_channel")),
        }
    }

    async fn seen_put(&self, user: &UserId, expires_at: i64) -> Result<(), StoreError> {
        let req = SaverReq::SeenPut {
            user: user.clone(),
            expires_at,
        };
        match self.call(req).await? {
            SaverResp::Done => Ok(()),
            other => Err(unexpected(&other, "seen_put")),
        }
    }

    async fn seen_get(&self, user: &UserId, now_ms: i64) -> Result<bool, StoreError> {
        let req = SaverReq::SeenGet {
            user: user.clone(),
            now_ms,
        };
        match self.call(req).await? {
            SaverResp::Seen(known) => Ok(known),
            other => Err(unexpected(&other, "seen_get")),
        }
    }

    /// Stops this client from making calls; the savers and their stores stay up.
    async fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
