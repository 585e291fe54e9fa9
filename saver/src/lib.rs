//! Offline queues per user and bounded channel history, behind one [`Store`]
//! trait with two backends: embedded (redb, one file in the data dir; the
//! default) and Redis (single node or Redis Cluster).
//!
//! This crate owns durable data; it does not decide who gets what.
//! See docs/STORAGE.md for the layout and the durability guarantees.

mod embedded;
mod live;
mod newest;
mod redis_backend;
pub mod remote;
mod wal;

pub use embedded::{EmbeddedStore, CHECKPOINT_BYTES, MAX_BATCH, SWEEP_LIMIT};
pub use redis_backend::{acks_key, cid_key, history_key, queue_key, seen_key, RedisStore};
pub use remote::{RemoteStore, SaverService};

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use proto::{MsgId, UserId};
use serde::{Deserialize, Serialize};

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMsg {
    /// Message id.
    pub id: MsgId,
    /// Milliseconds since the epoch when the push was accepted.
    pub ts: i64,
    /// Milliseconds since the epoch after which the message is dropped.
    pub expires_at: i64,
    /// The JSON payload, as text.
    pub data: Bytes,
    /// The client that sent it (`send`, `pub`); `None` for REST pushes.
    /// Last, so that records written before it existed still decode
    /// (see [`StoredMsg::decode`]).
    pub sender: Option<proto::Sender>,
}

/// [`StoredMsg`] as it was stored before messages had a sender.
#[derive(Deserialize)]
struct StoredMsgV1 {
    id: MsgId,
    ts: i64,
    expires_at: i64,
    data: Bytes,
}

impl StoredMsg {
    /// The stored form (postcard), appended to `out`.
    ///
    /// # Errors
    /// [`StoreError::Encode`] (not expected for this type).
    pub fn encode_into(&self, out: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        postcard::to_io(self, out).map_err(|source| StoreError::Encode { source })
    }

    /// Reads the stored form, written by this version or by one from before
    /// the `sender` field (such a record ends where `sender` would start).
    ///
    /// # Errors
    /// When `bytes` is neither form.
    pub fn decode(bytes: &[u8]) -> Result<StoredMsg, postcard::Error> {
        match postcard::from_bytes::<StoredMsg>(bytes) {
            Ok(m) => Ok(m),
            Err(postcard::Error::DeserializeUnexpectedEnd) => {
                let v1: StoredMsgV1 = postcard::from_bytes(bytes)?;
                Ok(StoredMsg {
                    id: v1.id,
                    ts: v1.ts,
                    expires_at: v1.expires_at,
                    data: v1.data,
                    sender: None,
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// One write of a batch ([`Store::append_many`]): an append to users' queues
/// or to a channel's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Append {
    /// As [`Store::append_users`].
    Users {
        /// The users whose queues get the message.
        users: Vec<UserId>,
        /// The message.
        msg: StoredMsg,
        /// Bounds of each queue.
        bounds: Bounds,
    },
    /// As [`Store::append_channel`].
    Channel {
        /// The channel.
        channel: String,
        /// The message.
        msg: StoredMsg,
        /// Bounds of the history.
        bounds: Bounds,
    },
}

impl Append {
    /// Its size on the wire, about (payload and names; enough to split a
    /// batch into calls of bounded size).
    #[must_use]
    pub fn wire_size(&self) -> usize {
        let names: usize = match self {
            Append::Users { users, .. } => users.iter().map(|u| u.as_str().len() + 2).sum(),
            Append::Channel { channel, .. } => channel.len() + 2,
        };
        names + self.msg().data.len() + 48
    }

    /// The message it appends.
    #[must_use]
    pub fn msg(&self) -> &StoredMsg {
        match self {
            Append::Users { msg, .. } | Append::Channel { msg, .. } => msg,
        }
    }

    /// The keys it writes: users, or one for the channel.
    #[must_use]
    pub fn keys(&self) -> usize {
        match self {
            Append::Users { users, .. } => users.len(),
            Append::Channel { .. } => 1,
        }
    }
}

/// Does each write of `writes` as its own [`Store::append_users`] or
/// [`Store::append_channel`] call, all at once; the result of each, in order.
/// What [`Store::append_many`] does unless a store can do better.
pub async fn append_each<S: Store + ?Sized>(
    store: &S,
    writes: &[Append],
) -> Vec<Result<(), StoreError>> {
    futures_util::future::join_all(writes.iter().map(|w| async move {
        match w {
            Append::Users { users, msg, bounds } => store.append_users(users, msg, *bounds).await,
            Append::Channel {
                channel,
                msg,
                bounds,
            } => store.append_channel(channel, msg, *bounds).await,
        }
    }))
    .await
}

/// Bounds of one queue or history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounds {
    /// Keep at most this many newest messages.
    pub max: u32,
}

/// Errors from a store.
///
/// [`StoreError::is_retryable`] tells transient failures (a backend that is
/// unreachable, slow or disconnected) from permanent ones (bad data, a bad
/// answer, a closed store).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A Redis command or connection failed.
    #[error("store backend: redis {op}: {source}")]
    Redis {
        /// What was being done (`connect`, `command`, …).
        op: &'static str,
        /// The Redis error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis failed on some keys of a multi-key write (cluster).
    #[error("store backend: not written to {failed} of {total} keys: {source}")]
    PartialWrite {
        /// Keys not written.
        failed: usize,
        /// Keys in the write.
        total: usize,
        /// The first failure (a Redis error or the push deadline).
        #[source]
        source: Box<StoreError>,
    },
    /// The embedded (redb) database failed.
    #[error("store backend: embedded {op}: {source}")]
    Embedded {
        /// What was being done (`open`, `read`, `commit`, …).
        op: &'static str,
        /// The redb error.
        #[source]
        source: redb::Error,
    },
    /// A group commit failed; every write of the batch gets this error.
    #[error("store backend: commit failed: {source}")]
    Commit {
        /// The commit error, shared by the writes of the batch.
        #[source]
        source: Arc<redb::Error>,
    },
    /// File or thread I/O failed.
    #[error("store backend: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A message could not be encoded for storage.
    #[error("store backend: encoding a message: {source}")]
    Encode {
        /// The encoder's error.
        #[source]
        source: postcard::Error,
    },
    /// Stored data could not be decoded.
    #[error("store backend: bad data: {what}")]
    Corrupt {
        /// What was wrong, and where.
        what: String,
    },
    /// A saver could not be reached over its link (or answered a bad frame).
    #[error("store backend: saver call failed: {source}")]
    Link {
        /// The link error.
        #[source]
        source: link::LinkError,
    },
    /// No saver answered: every one was unavailable or shutting down.
    #[error("store backend: no saver answered (last: {last})")]
    NoSaver {
        /// Why the last saver tried did not answer.
        last: String,
    },
    /// The store behind a saver failed (the saver's message, as sent on the wire).
    #[error("saver at {addr}: {message}")]
    Remote {
        /// The saver's address.
        addr: String,
        /// The saver's error message.
        message: String,
    },
    /// A saver answered with a response that does not fit the call.
    #[error("store backend: saver answered {call} with {answer}")]
    BadAnswer {
        /// The call.
        call: &'static str,
        /// The answer, debug-formatted.
        answer: String,
    },
    /// A batched write failed as a whole ([`Store::append_many`]); each of
    /// its writes is told this.
    #[error("{0}")]
    Batch(Arc<StoreError>),
    /// The store was misused or misconfigured (no saver address, no runtime).
    #[error("store backend: {0}")]
    Setup(&'static str),
    /// A store task or thread failed (panicked or was cancelled).
    #[error("store backend: {what}")]
    Task {
        /// Which task.
        what: &'static str,
    },
    /// The store did not answer in time.
    #[error("store backend: timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The store is closed.
    #[error("store closed")]
    Closed,
}

impl StoreError {
    /// Whether the same call may succeed later: the backend was unreachable,
    /// slow or dropped the connection. Bad data, bad answers, setup errors and
    /// a closed store are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Redis { source, .. } => redis_retryable(source),
            StoreError::PartialWrite { source, .. } => source.is_retryable(),
            StoreError::Batch(source) => source.is_retryable(),
            StoreError::Link { source } => source.is_retryable(),
            StoreError::NoSaver { .. } | StoreError::Timeout(_) => true,
            StoreError::Embedded { .. }
            | StoreError::Commit { .. }
            | StoreError::Io { .. }
            | StoreError::Encode { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Remote { .. }
            | StoreError::BadAnswer { .. }
            | StoreError::Setup(_)
            | StoreError::Task { .. }
            | StoreError::Closed => false,
        }
    }
}

/// Whether a Redis error is transient (I/O, timeout, dropped or refused connection).
fn redis_retryable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Offline queues and channel history.
///
/// Writes are durable when the call returns: on the embedded backend they are
/// group-committed (many concurrent calls share one fsync).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends `msg` to the queue of every user in `users`, trimming each queue
    /// to `bounds` (newest kept). Durable when it returns.
    ///
    /// # Errors
    /// [`StoreError`] when the write did not happen for every user. On one
    /// node or the embedded store none of it happened then; on a Redis
    /// Cluster some users may have been written (each user's write is atomic;
    /// see docs/STORAGE.md). Either way the caller reports the push as
    /// failed, and a retry with the same id adds nothing twice.
    async fn append_users(
        &self,
        users: &[UserId],
        msg: &StoredMsg,
        bounds: Bounds,
    ) -> Result<(), StoreError>;

    /// Does every write of `writes` (a dispatcher's batch, in id order) and
    /// returns the result of each, in order: each one is durable, or failed,
    /// as the single call would be. A store that can, writes them in fewer
    /// round trips (the Redis backend: one transaction per few thousand keys;
    /// a saver link: one call); the default makes the single calls at once,
    /// which the embedded backend group-commits.
    async fn append_many(&self, writes: &[Append]) -> Vec<Result<(), StoreError>> {
        append_each(self, writes).await
    }

    /// Messages of `user` with id greater than `after`, not expired at `now_ms`,
    /// in id order, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError`] when the backend fails.
    async fn read_user(
        &self,
        user: &UserId,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError>;

    /// Records that `device` of `user` has every message up to `id` (never moves back).
    ///
    /// # Errors
    /// [`StoreError`] when the backend fails.
    async fn ack(&self, user: &UserId, device: &str, id: MsgId) -> Result<(), StoreError>;

    /// Whether `user` surely has no stored message with id above `after`,
    /// answered from memory (no round trip); `false` means "unknown, read".
    /// A connect with nothing to replay then costs no store read. The
    /// default knows nothing.
    fn nothing_after(&self, _user: &UserId, _after: MsgId) -> bool {
        false
    }

    /// The highest id acked by `device` of `user`, if any.
    ///
    /// # Errors
    /// [`StoreError`] when the backend fails.
    async fn acked(&self, user: &UserId, device: &str) -> Result<Option<MsgId>, StoreError>;

    /// The id that the `send` or `pub` with `cid` from `user` was given, if
    /// [`Store::cid_put`] recorded one that has not expired at `now_ms`.
    ///
    /// # Errors
    /// [`StoreError`] when the backend fails.
    async fn cid_get(
        &self,
        user: &UserId,
        cid: &str,
        now_ms: i64,
    ) -> Result<Option<MsgId>, StoreError>;

    /// Records that the `send` or `pub` with `cid` from `user` was given
    /// `id`, until `expires_at` (ms since the epoch). Durable when it
    /// returns; a later call for the same cid replaces it.
    ///
    /// # Errors
    /// [`StoreError`] when the write did not happen.
    async fn cid_put(
        &self,
        user: &UserId,
        cid: &str,
        id: MsgId,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// Appends `msg` to the history of `channel`, trimmed to `bounds`.
    ///
    /// # Errors
    /// [`StoreError`] when the write did not happen.
    async fn append_channel(
        &self,
        channel: &str,
        msg: &StoredMsg,
        bounds: Bounds,
    ) -> Result<(), StoreError>;

    /// History of `channel` after `after`, not expired at `now_ms`, in id order, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError`] when the backend fails.
    async fn read_channel(
        &self,
        channel: &str,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError>;

    /// Records that `user` authenticated on this deployment, until
    /// `expires_at` (ms since the epoch; a later call replaces it: callers
    /// write now plus a fixed time to live, so it moves later).
    /// Written only with `--send-known-users-only` (see
    /// [`Store::seen_get`]). Durable when it returns.
    ///
    /// # Errors
    /// [`StoreError`] when the write did not happen. The default (a store
    /// that keeps no such records) is [`StoreError::Setup`].
    async fn seen_put(&self, user: &UserId, expires_at: i64) -> Result<(), StoreError> {
        let _ = (user, expires_at);
        Err(StoreError::Setup("this store keeps no seen users"))
    }

    /// Whether [`Store::seen_put`] recorded `user` until after `now_ms`.
    ///
    /// # Errors
    /// [`StoreError`] when the backend fails. The default (a store that
    /// keeps no such records) is [`StoreError::Setup`].
    async fn seen_get(&self, user: &UserId, now_ms: i64) -> Result<bool, StoreError> {
        let _ = (user, now_ms);
        Err(StoreError::Setup("this store keeps no seen users"))
    }

    /// Flushes anything pending and stops accepting writes.
    ///
    /// # Errors
    /// [`StoreError`] when the final flush fails.
    async fn close(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod stored_msg_tests {
    use super::*;

    /// Records written before `sender` existed still decode, and records
    /// with a sender decode with it.
    #[test]
    fn both_record_forms_decode() {
        #[derive(Serialize)]
        struct V1 {
            id: MsgId,
            ts: i64,
            expires_at: i64,
            data: Bytes,
        }
        let old = postcard::to_stdvec(&V1 {
            id: MsgId(7),
            ts: 1,
            expires_at: 2,
            data: Bytes::from_static(b"{}"),
        })
        .unwrap_or_default();
        let m = StoredMsg::decode(&old).expect("v1 record");
        assert_eq!((m.id, m.ts, m.expires_at, m.sender), (MsgId(7), 1, 2, None));
        let new = StoredMsg {
            sender: Some(proto::Sender {
                user: UserId::new("alice"),
                cid: "c1".into(),
            }),
            ..m
        };
        let bytes = new.encode_into(Vec::new()).expect("encode");
        assert_eq!(StoredMsg::decode(&bytes).ok(), Some(new));
        assert!(StoredMsg::decode(&old[..old.len() - 1]).is_err());
    }
}

#[cfg(test)]
mod error_tests {
    use std::error::Error as _;
    use std::time::Duration;

    use super::StoreError;

    fn link_err(kind: &str) -> link::LinkError {
        let addr = "127.0.0.1:1".to_owned();
        match kind {
            "unavailable" => link::LinkError::Unavailable {
                service: "saver",
                addr,
            },
            "disconnected" => link::LinkError::Disconnected {
                service: "saver",
                addr,
            },
            "timeout" => link::LinkError::Timeout {
                service: "saver",
                addr,
                timeout: Duration::from_secs(1),
            },
            _ => link::LinkError::Protocol {
                service: "saver",
                reason: "bad frame".to_owned(),
            },
        }
    }

    fn redis_io() -> redis::RedisError {
        redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ))
    }

    #[test]
    fn transient_failures_are_retryable() {
        for kind in ["unavailable", "disconnected", "timeout"] {
            let e = StoreError::Link {
                source: link_err(kind),
            };
            assert!(e.is_retryable(), "{e}");
        }
        assert!(StoreError::Timeout(Duration::from_secs(5)).is_retryable());
        assert!(StoreError::NoSaver {
            last: "down".to_owned()
        }
        .is_retryable());
        let e = StoreError::Redis {
            op: "command",
            source: redis_io(),
        };
        assert!(e.is_retryable(), "{e}");
        let e = StoreError::PartialWrite {
            failed: 1,
            total: 2,
            source: Box::new(StoreError::Timeout(Duration::from_secs(1))),
        };
        assert!(e.is_retryable(), "{e}");
    }

    #[test]
    fn permanent_failures_are_not_retryable() {
        let permanent = [
            StoreError::Link {
                source: link_err("protocol"),
            },
            StoreError::Corrupt {
                what: "bad ack".to_owned(),
            },
            StoreError::Remote {
                addr: "a".to_owned(),
                message: "m".to_owned(),
            },
            StoreError::BadAnswer {
                call: "ack",
                answer: "Done".to_owned(),
            },
            StoreError::Setup("no saver addresses"),
            StoreError::Task { what: "panicked" },
            StoreError::Closed,
            StoreError::Redis {
                op: "command",
                source: redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "wrong type",
                )),
            },
        ];
        for e in permanent {
            assert!(!e.is_retryable(), "{e}");
        }
    }

    #[test]
    fn causes_are_kept_as_sources() {
        let e = StoreError::Link {
            source: link_err("unavailable"),
        };
        assert!(e.source().is_some());
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
        let e = StoreError::Redis {
            op: "connect",
            source: redis_io(),
        };
        assert!(e.source().is_some());
        let e = StoreError::Io {
            op: "creating the store directory",
            source: std::io::Error::other("disk"),
        };
        assert!(e.source().is_some());
        let inner = StoreError::Timeout(Duration::from_secs(1));
        let e = StoreError::PartialWrite {
            failed: 1,
            total: 3,
            source: Box::new(inner),
        };
        assert!(e.to_string().contains("1 of 3 keys"), "{e}");
        assert!(e.source().is_some());
        assert!(StoreError::Closed.source().is_none());
    }
}
