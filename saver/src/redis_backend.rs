//! The Redis backend: a single node (through a reconnecting
//! `ConnectionManager`) or a Redis Cluster (through `cluster_async`).
//!
//! Key layout; the part in braces is the hash tag, so every key of one user
//! (or one channel) sits in one cluster slot:
//! - `pg:{u:<user>}:q`: ZSET, the user's queue
//! - `pg:{u:<user>}:acks`: HASH device -> last acked id (decimal)
//! - `pg:{c:<channel>}:h`: ZSET, the channel's history
//! - `pg:{u:<user>}:cid:<cid>`: STRING, the id a client's `send`/`pub` got
//! - `pg:{u:<user>}:seen`: STRING `1`, the user authenticated lately
//!   (`--send-known-users-only`); expires with the record
//!
//! `<user>` and `<channel>` are written with `%`, `{` and `}` percent-escaped
//! (`%25`, `%7B`, `%7D`) so that a name cannot end the hash tag early.
//!
//! Queue and history members are `8 bytes id | postcard(StoredMsg)`: the id
//! big-endian with its sign bit flipped, so byte order is id order. Every
//! member has score 0 and the sets are read with `ZRANGE .. BYLEX`: a score
//! (an f64) cannot hold a 63-bit id exactly. The key expires (PEXPIREAT, only
//! ever moved later) when its newest-expiring message does; single expired
//! messages are filtered on read, and trimming bounds what is left.
//!
//! In cluster mode MULTI/EXEC cannot span slots, so a push to several users
//! is one atomic pipeline per user: atomic per user, not across users (see
//! docs/STORAGE.md, "Redis Cluster").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use proto::{MsgId, UserId};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisResult};

use crate::live::LiveMsgs;
use crate::{append_each, Append, Bounds, Store, StoreError, StoredMsg};

/// Rounds of reading one range when expired messages thin out a page.
const MAX_READ_ROUNDS: u32 = 64;

/// Per-user pipelines in flight at once in cluster mode.
const CLUSTER_FANOUT: usize = 32;

/// Cluster mode: the longest one command (or one user's pipeline) may take,
/// retries and redirections (`MOVED`, `ASK`) included. The client's default
/// is no limit at all, with up to 16 retries waiting up to 655 s each, so a
/// command for a slot whose master is down would hang for many minutes.
const CLUSTER_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest one attempt may wait for an answer (a single node, or one
/// node of a cluster).
const CLUSTER_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Cluster mode: the longest a connection to one node may take to open.
const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Cluster mode: a push to many users starts no new per-user write after
/// this long; the ones not started by then count as failed. Without it, a
/// hung master would hold all [`CLUSTER_FANOUT`] slots for
/// [`CLUSTER_REQUEST_TIMEOUT`] at a time and a push to thousands of users
/// would take many minutes to fail. A whole push takes at most this plus
/// [`CLUSTER_REQUEST_TIMEOUT`].
const CLUSTER_PUSH_DEADLINE: Duration = Duration::from_secs(10);

/// A single node: the most keys one transaction of [`Store::append_many`]
/// writes; a larger batch goes as several transactions at once (each
/// atomic, in one round trip on the multiplexed connection), so that a
/// push to many users does not build one huge transaction that Redis
/// serves at once while every other client waits.
const APPEND_MANY_KEYS: usize = 4096;

/// Cluster mode: retries of one command (redirections, reconnects), each
/// after a jittered wait between these bounds in ms; all of them within
/// [`CLUSTER_REQUEST_TIMEOUT`].
const CLUSTER_RETRIES: u32 = 6;
const CLUSTER_RETRY_WAIT_MIN_MS: u64 = 20;
const CLUSTER_RETRY_WAIT_MAX_MS: u64 = 1_000;

/// Keeps the highest id per device; ids compared as decimal strings (Lua
/// numbers are doubles and cannot hold every i64).
const ACK_SCRIPT: &str = r"
local function lt(a, b)
  local na, nb = string.sub(a, 1, 1) == '-', string.sub(b, 1, 1) == '-'
  if na ~= nb then return na end
  if #a ~= #b then
    if na then return #a > #b else return #a < #b end
  end
  if na then return a > b else return a < b end
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (not cur) or lt(cur, ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
";

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Offline queues and channel history in Redis (single node or cluster).
pub struct RedisStore {
    conn: Conn,
    ack: redis::Script,
    closed: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.conn {
            Conn::Single(_) => "single",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore").field("mode", &mode).finish()
    }
}

/// A failed Redis command.
fn backend(source: redis::RedisError) -> StoreError {
    StoreError::Redis {
        op: "command",
        source,
    }
}

/// A failed Redis connection.
fn connecting(source: redis::RedisError) -> StoreError {
    StoreError::Redis {
        op: "connect",
        source,
    }
}

impl RedisStore {
    /// Connects to one Redis node at `url` (`redis://host:port/db`); the
    /// connection reconnects by itself after failures.
    ///
    /// # Errors
    /// [`StoreError::Redis`] when the url is invalid or Redis is unreachable.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(connecting)?;
        // redis-rs gives up on an answer after 500 ms by default; on a busy
        // host a Redis that is merely slow for a moment would fail every
        // call in flight, and each failure costs more work (a retried push,
        // a replay put off) than the wait. As long as a cluster attempt.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(CLUSTER_ATTEMPT_TIMEOUT));
        let manager = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(connecting)?;
        Ok(RedisStore::with(Conn::Single(manager)))
    }

    /// Connects to a Redis Cluster through any of its nodes' `urls`
    /// (`redis://host:port/`; one reachable node is enough, the others are
    /// discovered); each command is routed to the node owning its key's slot.
    ///
    /// A command for a slot whose master is unreachable fails with
    /// [`StoreError::Redis`] within 5 s (retries included) instead of
    /// waiting for the node to come back.
    ///
    /// # Errors
    /// [`StoreError::Redis`] when no node is reachable or the urls are invalid.
    pub async fn connect_cluster(urls: &[String]) -> Result<RedisStore, StoreError> {
        let client = redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
            .connection_timeout(CLUSTER_CONNECT_TIMEOUT)
            .response_timeout(CLUSTER_ATTEMPT_TIMEOUT)
            .overall_response_timeout(Some(CLUSTER_REQUEST_TIMEOUT))
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(CLUSTER_RETRY_WAIT_MIN_MS)
            .max_retry_wait(CLUSTER_RETRY_WAIT_MAX_MS)
            .build()
            .map_err(connecting)?;
        let conn = client.get_async_connection().await.map_err(connecting)?;
        Ok(RedisStore::with(Conn::Cluster(conn)))
    }

    fn with(conn: Conn) -> RedisStore {
        RedisStore {
            conn,
            ack: redis::Script::new(ACK_SCRIPT),
            closed: AtomicBool::new(false),
        }
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    async fn run_cmd<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self.conn.clone() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    async fn run_pipe(&self, pipe: &redis::Pipeline) -> RedisResult<()> {
        match self.conn.clone() {
            Conn::Single(mut c) => pipe.exec_async(&mut c).await,
            Conn::Cluster(mut c) => pipe.exec_async(&mut c).await,
        }
    }

    /// Appends one encoded member to each key (each key alone is one slot).
    async fn append_keys(
        &self,
        keys: Vec<String>,
        member: Vec<u8>,
        expires_at: i64,
        max: u32,
    ) -> Result<(), StoreError> {
        self.check_open()?;
        match &self.conn {
            Conn::Single(_) => {
                // One round trip, all or nothing (MULTI/EXEC).
                let mut pipe = redis::pipe();
                pipe.atomic();
                for key in &keys {
                    add_append(&mut pipe, key, &member, expires_at, max);
                }
                self.run_pipe(&pipe).await.map_err(backend)
            }
            Conn::Cluster(_) => {
                // A pipeline is routed to one node and MULTI/EXEC cannot span
                // slots, so send one atomic pipeline per key (per slot),
                // several at a time. Every key is tried even after one
                // failed, so that a node being down costs only the users on
                // it (until the deadline); the call still fails if any key
                // was not written.
                let total = keys.len();
                let deadline = tokio::time::Instant::now() + CLUSTER_PUSH_DEADLINE;
                let (failed, first) = futures_util::stream::iter(keys)
                    .map(|key| {
                        let member = &member;
                        async move {
                            if tokio::time::Instant::now() >= deadline {
                                return Err(StoreError::Timeout(CLUSTER_PUSH_DEADLINE));
                            }
                            let mut pipe = redis::pipe();
                            pipe.atomic();
                            add_append(&mut pipe, &key, member, expires_at, max);
                            self.run_pipe(&pipe).await.map_err(backend)
                        }
                    })
                    .buffer_unordered(CLUSTER_FANOUT)
                    .fold((0usize, None), |(failed, first), r| async move {
                        match r {
                            Ok(()) => (failed, first),
                            Err(e) => (failed + 1, first.or(Some(e))),
                        }
                    })
                    .await;
                match first {
                    None => Ok(()),
                    Some(first) => Err(StoreError::PartialWrite {
                        failed,
                        total,
                        source: Box::new(first),
                    }),
                }
            }
        }
    }

    /// Live members of `key` with id > `after`, in id order, at most `limit`.
    async fn read_key(
        &self,
        key: &str,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError> {
        self.check_open()?;
        let mut live = LiveMsgs::new(now_ms, limit);
        if live.is_full() {
            return Ok(live.into_vec());
        }
        let Some(start) = after.0.checked_add(1) else {
            return Ok(live.into_vec());
        };
        let mut min = Vec::with_capacity(9);
        min.push(b'[');
        min.extend_from_slice(&id_prefix(start));
        for _ in 0..MAX_READ_ROUNDS {
            let want = live.wanted();
            let page: Vec<Vec<u8>> = self
                .run_cmd(
                    redis::cmd("ZRANGE")
                        .arg(key)
                        .arg(&min)
                        .arg("+")
                        .arg("BYLEX")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(want),
                )
                .await
                .map_err(backend)?;
            let full = page.len() == want;
            for member in &page {
                live.offer(decode_member(member)?);
            }
            match page.last() {
                Some(last) if full && !live.is_full() => {
                    min.clear();
                    min.push(b'(');
                    min.extend_from_slice(last);
                }
                _ => break,
            }
        }
        Ok(live.into_vec())
    }
}

/// ZADD + trim + expiry of one key, into `pipe`.
fn add_append(pipe: &mut redis::Pipeline, key: &str, member: &[u8], expires_at: i64, max: u32) {
    pipe.cmd("ZADD").arg(key).arg(0).arg(member).ignore();
    // Keep the `max` highest ranks (newest ids); max 0 removes everything.
    let stop = -i64::from(max) - 1;
    pipe.cmd("ZREMRANGEBYRANK")
        .arg(key)
        .arg(0)
        .arg(stop)
        .ignore();
    // Set an expiry if none, else only move it later (Redis >= 7.0).
    pipe.cmd("PEXPIREAT")
        .arg(key)
        .arg(expires_at)
        .arg("NX")
        .ignore();
    pipe.cmd("PEXPIREAT")
        .arg(key)
        .arg(expires_at)
        .arg("GT")
        .ignore();
}

/// Big-endian id with the sign bit flipped: byte order equals id order.
fn id_prefix(id: i64) -> [u8; 8] {
    ((id as u64) ^ (1 << 63)).to_be_bytes()
}

fn encode_member(msg: &StoredMsg) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(40 + msg.data.len());
    out.extend_from_slice(&id_prefix(msg.id.0));
    msg.encode_into(out)
}

fn decode_member(member: &[u8]) -> Result<StoredMsg, StoreError> {
    member
        .get(8..)
        .and_then(|body| StoredMsg::decode(body).ok())
        .ok_or_else(|| StoreError::Corrupt {
            what: "undecodable stored message in redis".into(),
        })
}

/// `s` with `%`, `{` and `}` percent-escaped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// The queue key of `user`.
#[must_use]
pub fn queue_key(user: &str) -> String {
    format!("pg:{{u:{}}}:q", escape(user))
}

/// The key of client message id `cid` of `user` (its value: the id the
/// message got; it expires with the message).
#[must_use]
pub fn cid_key(user: &str, cid: &str) -> String {
    format!("pg:{{u:{}}}:cid:{}", escape(user), escape(cid))
}

/// The key that says `user` authenticated lately (`--send-known-users-only`;
/// its value is `1`, and it expires when the record does).
#[must_use]
pub fn seen_key(user: &str) -> String {
    format!("pg:{{u:{}}}:seen", escape(user))
}

/// The acks key of `user`.
#[must_use]
pub fn acks_key(user: &str) -> String {
    format!("pg:{{u:{}}}:acks", escape(user))
}

/// The history key of `channel`.
#[must_use]
pub fn history_key(channel: &str) -> String {
    format!("pg:{{c:{}}}:h", escape(channel))
}

impl RedisStore {
    /// A single node: the writes in transactions of about
    /// [`APPEND_MANY_KEYS`] keys, sent together; each write gets the result
    /// of its transaction.
    async fn append_many_single(&self, writes: &[Append]) -> Vec<Result<(), StoreError>> {
        if self.check_open().is_err() {
            return writes.iter().map(|_| Err(StoreError::Closed)).collect();
        }
        // Encode first: a write that cannot be encoded fails alone.
        let mut results: Vec<Result<(), StoreError>> = Vec::with_capacity(writes.len());
        let mut members = Vec::with_capacity(writes.len());
        for w in writes {
            match encode_member(w.msg()) {
                Ok(m) => {
                    members.push(Some(m));
                    results.push(Ok(()));
                }
                Err(e) => {
                    members.push(None);
                    results.push(Err(e));
                }
            }
        }
        let order: Vec<usize> = (0..writes.len()).collect();
        let keys = |&i: &usize| members[i].as_ref().map_or(0, |_| writes[i].keys());
        let txs: Vec<(&[usize], redis::Pipeline)> = link::split_by(&order, keys, APPEND_MANY_KEYS)
            .into_iter()
            // A run of writes that all failed to encode has nothing to send.
            .filter(|tx| tx.iter().any(|&i| members[i].is_some()))
            .map(|tx| {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for &i in tx {
                    if let Some(member) = &members[i] {
                        add_write(&mut pipe, &writes[i], member);
                    }
                }
                (tx, pipe)
            })
            .collect();
        let done = futures_util::future::join_all(txs.iter().map(|(_, p)| self.run_pipe(p))).await;
        for ((tx, _), r) in txs.iter().zip(done) {
            if let Err(e) = r {
                let e = Arc::new(backend(e));
                for &i in *tx {
                    if results[i].is_ok() {
                        results[i] = Err(StoreError::Batch(Arc::clone(&e)));
                    }
                }
            }
        }
        results
    }
}

/// Every key of `w` (its users' queues, or its channel's history), into
/// `pipe`, with the encoded `member`.
fn add_write(pipe: &mut redis::Pipeline, w: &Append, member: &[u8]) {
    match w {
        Append::Users { users, msg, bounds } => {
            for u in users {
                add_append(
                    pipe,
                    &queue_key(u.as_str()),
                    member,
                    msg.expires_at,
                    bounds.max,
                );
            }
        }
        Append::Channel {
            channel,
            msg,
            bounds,
        } => add_append(
            pipe,
            &history_key(channel),
            member,
            msg.expires_at,
            bounds.max,
        ),
    }
}

#[async_trait]
impl Store for RedisStore {
    /// A single node: one transaction per [`APPEND_MANY_KEYS`] keys, all in
    /// one round trip. A cluster: each write as
    /// [`Store::append_users`] / [`Store::append_channel`] would, at once
    /// (a transaction cannot span slots).
    async fn append_many(&self, writes: &[Append]) -> Vec<Result<(), StoreError>> {
        match self.conn {
            Conn::Single(_) if writes.len() > 1 => self.append_many_single(writes).await,
            _ => append_each(self, writes).await,
        }
    }

    async fn append_users(
        &self,
        users: &[UserId],
        msg: &StoredMsg,
        bounds: Bounds,
    ) -> Result<(), StoreError> {
        if users.is_empty() {
            return self.check_open();
        }
        let member = encode_member(msg)?;
        let keys = users.iter().map(|u| queue_key(u.as_str())).collect();
        self.append_keys(keys, member, msg.expires_at, bounds.max)
            .await
    }

    async fn read_user(
        &self,
        user: &UserId,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError> {
        self.read_key(&queue_key(user.as_str()), after, now_ms, limit)
            .await
    }

    async fn ack(&self, user: &UserId, device: &str, id: MsgId) -> Result<(), StoreError> {
        self.check_open()?;
        let mut invocation = self.ack.prepare_invoke();
        invocation
            .key(acks_key(user.as_str()))
            .arg(device)
            .arg(id.0.to_string());
        let _: i64 = match self.conn.clone() {
            Conn::Single(mut c) => invocation.invoke_async(&mut c).await,
            Conn::Cluster(mut c) => invocation.invoke_async(&mut c).await,
        }
        .map_err(backend)?;
        Ok(())
    }

    async fn acked(&self, user: &UserId, device: &str) -> Result<Option<MsgId>, StoreError> {
        self.check_open()?;
        let got: Option<String> = self
            .run_cmd(redis::cmd("HGET").arg(acks_key(user.as_str())).arg(device))
            .await
            .map_err(backend)?;
        got.map(|s| {
            s.parse::<i64>()
                .map(MsgId)
                .map_err(|_| StoreError::Corrupt {
                    what: format!("bad ack value {s:?} in redis"),
                })
        })
        .transpose()
    }

    async fn cid_get(
        &self,
        user: &UserId,
        cid: &str,
        _now_ms: i64,
    ) -> Result<Option<MsgId>, StoreError> {
        self.check_open()?;
        // Redis expires the key itself (PXAT at `cid_put`).
        let got: Option<String> = self
            .run_cmd(redis::cmd("GET").arg(cid_key(user.as_str(), cid)))
            .await
            .map_err(backend)?;
        got.map(|s| {
            s.parse::<i64>()
                .map(MsgId)
                .map_err(|_| StoreError::Corrupt {
                    what: format!("bad cid value {s:?} in redis"),
                })
        })
        .transpose()
    }

    async fn cid_put(
        &self,
        user: &UserId,
        cid: &str,
        id: MsgId,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.check_open()?;
        let () = self
            .run_cmd(
                redis::cmd("SET")
                    .arg(cid_key(user.as_str(), cid))
                    .arg(id.0.to_string())
                    .arg("PXAT")
                    .arg(expires_at.max(1)),
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn seen_put(&self, user: &UserId, expires_at: i64) -> Result<(), StoreError> {
        self.check_open()?;
        let key = seen_key(user.as_str());
        let () = self
            .run_cmd(
                redis::cmd("SET")
                    .arg(&key)
                    .arg("1")
                    .arg("PXAT")
                    .arg(expires_at.max(1)),
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn seen_get(&self, user: &UserId, _now_ms: i64) -> Result<bool, StoreError> {
        self.check_open()?;
        // Redis expires the key itself (PXAT at `seen_put`).
        let n: i64 = self
            .run_cmd(redis::cmd("EXISTS").arg(seen_key(user.as_str())))
            .await
            .map_err(backend)?;
        Ok(n > 0)
    }

    async fn append_channel(
        &self,
        channel: &str,
        msg: &StoredMsg,
        bounds: Bounds,
    ) -> Result<(), StoreError> {
        let member = encode_member(msg)?;
        self.append_keys(
            vec![history_key(channel)],
            member,
            msg.expires_at,
            bounds.max,
        )
        .await
    }

    async fn read_channel(
        &self,
        channel: &str,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError> {
        self.read_key(&history_key(channel), after, now_ms, limit)
            .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Every write was acknowledged by Redis when it returned; nothing is pending.
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn id_prefix_orders_like_ids() {
        let ids = [i64::MIN, -5, -1, 0, 1, 255, 1 << 40, i64::MAX];
        for w in ids.windows(2) {
            assert!(id_prefix(w[0]) < id_prefix(w[1]), "{} vs {}", w[0], w[1]);
        }
    }

    #[test]
    fn keys_escape_hash_tag_characters() {
        assert_eq!(queue_key("alice"), "pg:{u:alice}:q");
        assert_eq!(acks_key("a}b"), "pg:{u:a%7Db}:acks");
        assert_eq!(history_key("{x}%"), "pg:{c:%7Bx%7D%25}:h");
        assert_ne!(queue_key("a%7Db"), queue_key("a}b"));
    }

    #[test]
    fn member_round_trips() {
        let msg = StoredMsg {
            id: MsgId(1 << 50),
            ts: 1,
            expires_at: 2,
            data: bytes::Bytes::from_static(b"{\"a\":1}"),
            sender: None,
        };
        let m = encode_member(&msg).unwrap();
        assert_eq!(decode_member(&m).unwrap(), msg);
        assert!(decode_member(&m[..5]).is_err());
    }
}
