//! The embedded backend: one redb file (by convention `DATA/pushgate.redb`).
//!
//! Tables:
//! - `user_queue`: `(user, id) -> postcard(StoredMsg)`
//! - `user_queue_meta`: `user -> (count, min id)`, so trimming to
//!   [`Bounds::max`] pops the oldest entries instead of counting a range
//! - `acks`: `(user, device) -> id`, never moves back
//! - `channel_history` and `channel_history_meta`: the same shape per channel
//! - `cids`: `(user, cid) -> (id, expires_at)`: the id a client's `send` or
//!   `pub` got, so that a retry with the same cid is answered with it
//! - `seen`: `user -> expires_at`: the user authenticated lately
//!   (`--send-known-users-only`), logged and recovered like every write
//!
//! Writes go through one writer thread (redb has one writer at a time and is
//! synchronous) fed by a bounded queue. The thread takes everything pending,
//! up to [`MAX_BATCH`] jobs, appends them as ONE record to the write-ahead
//! log (`pushgate.wal` beside the redb file, [`crate::wal`]) with one
//! `fdatasync`, applies them in one redb write transaction committed without
//! a flush, and only then answers each caller: many concurrent appends share
//! one flush (group commit), and a flush is one sequential write instead of
//! a durable redb commit. A *checkpoint* (a durable redb commit, after
//! which the log starts over) runs with the once-a-second sweep, when the
//! log passes [`CHECKPOINT_BYTES`], and at close. Opening the store applies
//! what the log holds first (every write is idempotent: queue entries are
//! keyed by `(user, id)`, acks only move forward), so a crash loses nothing
//! that was answered. Reads run on the blocking pool with their own read
//! transactions (which see the unflushed commits) and never wait for the
//! writer.
//!
//! Expired messages are filtered on read and removed by a background sweep
//! once a second that looks at no more than [`SWEEP_LIMIT`] entries per table
//! per pass, continuing where the previous pass stopped.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use proto::{MsgId, UserId};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::live::{is_live, LiveMsgs};
use crate::newest::NewestIds;
use crate::wal::Wal;
use crate::{Bounds, Store, StoreError, StoredMsg};

const QUEUE: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("user_queue");
const QUEUE_META: TableDefinition<&str, (u64, i64)> = TableDefinition::new("user_queue_meta");
const ACKS: TableDefinition<(&str, &str), i64> = TableDefinition::new("acks");
const CIDS: TableDefinition<(&str, &str), (i64, i64)> = TableDefinition::new("cids");
const SEEN: TableDefinition<&str, i64> = TableDefinition::new("seen");
const HISTORY: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("channel_history");
const HISTORY_META: TableDefinition<&str, (u64, i64)> =
    TableDefinition::new("channel_history_meta");

/// Jobs the writer thread takes into one transaction at most.
pub const MAX_BATCH: usize = 1024;

/// Capacity of the writer's queue; callers wait (asynchronously) when full.
const QUEUE_CAPACITY: usize = 4096;

/// Entries one sweep pass looks at, per table.
pub const SWEEP_LIMIT: usize = 10_000;

/// How often the background sweep (and with it a checkpoint) runs.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Log bytes after which the writer checkpoints without waiting for the sweep.
pub const CHECKPOINT_BYTES: u64 = 16 << 20;

type DataTable<'t> = Table<'t, (&'static str, i64), &'static [u8]>;
type MetaTable<'t> = Table<'t, &'static str, (u64, i64)>;

/// One write, as the writer thread logs and applies it.
#[derive(Debug, Serialize, Deserialize)]
enum WriteOp {
    Users {
        users: Vec<UserId>,
        id: i64,
        bytes: Vec<u8>,
        max: u32,
    },
    Channel {
        channel: String,
        id: i64,
        bytes: Vec<u8>,
        max: u32,
    },
    Ack {
        user: UserId,
        device: String,
        id: i64,
    },
    // New variants go last: the log holds them by index.
    Cid {
        user: UserId,
        cid: String,
        id: i64,
        expires_at: i64,
    },
    Seen {
        user: UserId,
        expires_at: i64,
    },
}

/// What the writer thread is asked to do.
enum Job {
    Write {
        op: WriteOp,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Sweep {
        now_ms: i64,
        reply: Option<oneshot::Sender<Result<u64, StoreError>>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Offline queues and channel history in one local redb file.
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// `None` once closed.
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Newest id per user (bounded table), for [`Store::nothing_after`].
    newest: NewestIds,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

/// A redb failure during `op`.
fn embedded<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Embedded {
        op,
        source: e.into(),
    }
}

/// A blocking task that panicked or was cancelled.
fn task(_: tokio::task::JoinError) -> StoreError {
    StoreError::Task {
        what: "blocking store task failed",
    }
}

impl EmbeddedStore {
    /// Opens (or creates, with its parent dir) the store file at `path`,
    /// starts the writer thread and the background sweep.
    ///
    /// Must be called inside a tokio runtime. Does blocking file I/O.
    ///
    /// # Errors
    /// [`StoreError::Embedded`] or [`StoreError::Io`] when the file cannot be opened or created
    /// (including when this process or another has it open already).
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Setup("EmbeddedStore::open needs a tokio runtime"))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                op: "creating the store directory",
                source,
            })?;
        }
        let db = Database::create(path).map_err(embedded("open"))?;
        create_tables(&db).map_err(embedded("create tables"))?;
        // After redb: its file lock keeps a second process off the log too.
        let wal = recover(&db, &path.with_extension("wal"))?;
        let newest = NewestIds::new();
        load_newest(&db, &newest).map_err(embedded("load newest ids"))?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("saver-writer".into())
            .spawn(move || run_writer(&writer_db, wal, rx))
            .map_err(|source| StoreError::Io {
                op: "spawning the writer thread",
                source,
            })?;
        let sweeper = runtime.spawn(sweep_loop(tx.downgrade()));
        Ok(EmbeddedStore {
            db,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            sweeper: Mutex::new(Some(sweeper)),
            newest,
        })
    }

    /// Runs one sweep pass now: removes up to [`SWEEP_LIMIT`] entries per
    /// table that expired at `now_ms`; returns how many were removed.
    ///
    /// # Errors
    /// [`StoreError`] when the store is closed or the write fails.
    pub async fn sweep(&self, now_ms: i64) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Sweep {
            now_ms,
            reply: Some(reply),
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        let tx = self.tx.lock().clone().ok_or(StoreError::Closed)?;
        tx.send(job).await.map_err(|_| StoreError::Closed)
    }

    async fn write(&self, op: WriteOp) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Write { op, reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    {
        if self.tx.lock().is_none() {
            return Err(StoreError::Closed);
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(task)?
            .map_err(embedded("read"))
    }

    /// [`read_range`] of `key` in the data table `table` (queue or history).
    async fn read_list(
        &self,
        table: TableDefinition<'static, (&'static str, i64), &'static [u8]>,
        key: &str,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError> {
        let key = key.to_owned();
        self.read(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(table)?;
            read_range(&table, &key, after.0, now_ms, limit)
        })
        .await
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        if let Some(sweeper) = self.sweeper.lock().take() {
            sweeper.abort();
        }
        // Dropping the last sender ends the writer once it has finished what
        // is queued; join it so the file is released when drop returns.
        drop(self.tx.lock().take());
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn append_users(
        &self,
        users: &[UserId],
        msg: &StoredMsg,
        bounds: Bounds,
    ) -> Result<(), StoreError> {
        if users.is_empty() {
            return Ok(());
        }
        let bytes = msg.encode_into(Vec::with_capacity(32 + msg.data.len()))?;
        // Raised before the write: an acknowledged append is never hidden.
        for user in users {
            self.newest.raise(user.as_str(), msg.id.0);
        }
        self.write(WriteOp::Users {
            users: users.to_vec(),
            id: msg.id.0,
            bytes,
            max: bounds.max,
        })
        .await
    }

    async fn read_user(
        &self,
        user: &UserId,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError> {
        self.read_list(QUEUE, user.as_str(), after, now_ms, limit)
            .await
    }

    fn nothing_after(&self, user: &UserId, after: MsgId) -> bool {
        self.newest.nothing_after(user.as_str(), after.0)
    }

    async fn ack(&self, user: &UserId, device: &str, id: MsgId) -> Result<(), StoreError> {
        self.write(WriteOp::Ack {
            user: user.clone(),
            device: device.to_owned(),
            id: id.0,
        })
        .await
    }

    async fn acked(&self, user: &UserId, device: &str) -> Result<Option<MsgId>, StoreError> {
        let user = user.clone();
        let device = device.to_owned();
        self.read(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(ACKS)?;
            let got = table.get((user.as_str(), device.as_str()))?;
            Ok(got.map(|g| MsgId(g.value())))
        })
        .await
    }

    async fn cid_get(
        &self,
        user: &UserId,
        cid: &str,
        now_ms: i64,
    ) -> Result<Option<MsgId>, StoreError> {
        let user = user.clone();
        let cid = cid.to_owned();
        self.read(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(CIDS)?;
            let got = table.get((user.as_str(), cid.as_str()))?;
            Ok(got
                .map(|g| g.value())
                .filter(|(_, expires_at)| *expires_at > now_ms)
                .map(|(id, _)| MsgId(id)))
        })
        .await
    }

    async fn cid_put(
        &self,
        user: &UserId,
        cid: &str,
        id: MsgId,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::Cid {
            user: user.clone(),
            cid: cid.to_owned(),
            id: id.0,
            expires_at,
        })
        .await
    }

    async fn seen_put(&self, user: &UserId, expires_at: i64) -> Result<(), StoreError> {
        self.write(WriteOp::Seen {
            user: user.clone(),
            expires_at,
        })
        .await
    }

    async fn seen_get(&self, user: &UserId, now_ms: i64) -> Result<bool, StoreError> {
        let user = user.clone();
        self.read(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(SEEN)?;
            let got = table.get(user.as_str())?;
            Ok(got.is_some_and(|g| g.value() > now_ms))
        })
        .await
    }

    async fn append_channel(
        &self,
        channel: &str,
        msg: &StoredMsg,
        bounds: Bounds,
    ) -> Result<(), StoreError> {
        let bytes = msg.encode_into(Vec::with_capacity(32 + msg.data.len()))?;
        self.write(WriteOp::Channel {
            channel: channel.to_owned(),
            id: msg.id.0,
            bytes,
            max: bounds.max,
        })
        .await
    }

    async fn read_channel(
        &self,
        channel: &str,
        after: MsgId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMsg>, StoreError> {
        self.read_list(HISTORY, channel, after, now_ms, limit).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        if let Some(sweeper) = self.sweeper.lock().take() {
            sweeper.abort();
        }
        let Some(tx) = self.tx.lock().take() else {
            return Ok(());
        };
        let (reply, done) = oneshot::channel();
        // Everything queued before Close is committed before it is answered.
        if tx.send(Job::Close { reply }).await.is_ok() {
            let _ = done.await;
        }
        drop(tx);
        let writer = self.writer.lock().take();
        if let Some(writer) = writer {
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .map_err(task)?
                .map_err(|_| StoreError::Task {
                    what: "writer thread panicked",
                })?;
        }
        Ok(())
    }
}

fn create_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        txn.open_table(QUEUE)?;
        txn.open_table(QUEUE_META)?;
        txn.open_table(ACKS)?;
        txn.open_table(HISTORY)?;
        txn.open_table(HISTORY_META)?;
        txn.open_table(CIDS)?;
        txn.open_table(SEEN)?;
    }
    txn.commit()?;
    Ok(())
}

/// Opens the log at `path` and applies what it holds to `db` (the writes
/// answered before a crash that redb had not flushed), then checkpoints.
fn recover(db: &Database, path: &Path) -> Result<Wal, StoreError> {
    let io = |op| move |source| StoreError::Io { op, source };
    let (mut wal, records) = Wal::open(path).map_err(io("opening the write-ahead log"))?;
    if records.is_empty() {
        return Ok(wal);
    }
    let mut ops = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let batch: Vec<WriteOp> =
            postcard::from_bytes(record).map_err(|e| StoreError::Corrupt {
                what: format!("write-ahead log record {i} of {}: {e}", records.len()),
            })?;
        ops.extend(batch);
    }
    let refs: Vec<&WriteOp> = ops.iter().collect();
    commit_batch(db, &refs, Durability::Immediate)
        .map_err(embedded("replay the write-ahead log"))?;
    wal.checkpoint()
        .map_err(io("checkpointing the write-ahead log"))?;
    tracing::info!(
        records = records.len(),
        writes = ops.len(),
        "store: applied the write-ahead log"
    );
    Ok(wal)
}

/// Fills `newest` from the queues on disk: one seek per user that has a
/// queue (the newest key of its range).
fn load_newest(db: &Database, newest: &NewestIds) -> Result<(), redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(QUEUE_META)?;
    let queue = txn.open_table(QUEUE)?;
    for entry in meta.iter()? {
        let (user, _) = entry?;
        let user = user.value();
        if let Some(last) = queue
            .range((user, i64::MIN)..=(user, i64::MAX))?
            .next_back()
        {
            newest.raise(user, last?.0.value().1);
        }
    }
    Ok(())
}

/// Live messages of `key` with id > `after`, in id order, at most `limit`.
fn read_range<T>(
    table: &T,
    key: &str,
    after: i64,
    now_ms: i64,
    limit: u32,
) -> Result<Vec<StoredMsg>, redb::Error>
where
    T: ReadableTable<(&'static str, i64), &'static [u8]>,
{
    let mut live = LiveMsgs::new(now_ms, limit);
    if live.is_full() {
        return Ok(live.into_vec());
    }
    let range = table.range::<(&str, i64)>((
        Bound::Excluded((key, after)),
        Bound::Included((key, i64::MAX)),
    ))?;
    for entry in range {
        let (_, value) = entry?;
        let msg = StoredMsg::decode(value.value())
            .map_err(|e| redb::Error::Corrupted(format!("stored message: {e}")))?;
        if !live.offer(msg) {
            break;
        }
    }
    Ok(live.into_vec())
}

/// Inserts `(key, id)` and trims the list of `key` to its newest `max`.
fn append_bounded(
    data: &mut DataTable<'_>,
    meta: &mut MetaTable<'_>,
    key: &str,
    id: i64,
    bytes: &[u8],
    max: u32,
) -> Result<(), redb::Error> {
    let is_new = data.insert((key, id), bytes)?.is_none();
    let (mut count, mut min) = meta.get(key)?.map_or((0, i64::MAX), |g| g.value());
    if is_new {
        count += 1;
        min = min.min(id);
    }
    let max = u64::from(max);
    if count > max {
        let excess = count - max;
        let oldest: Vec<i64> = data
            .range::<(&str, i64)>((key, i64::MIN)..=(key, i64::MAX))?
            .take(usize::try_from(excess).unwrap_or(usize::MAX))
            .map(|e| e.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for old in &oldest {
            data.remove((key, *old))?;
        }
        count -= oldest.len() as u64;
        min = first_id(data, key)?.unwrap_or(i64::MAX);
    }
    if count == 0 {
        meta.remove(key)?;
    } else {
        meta.insert(key, (count, min))?;
    }
    Ok(())
}

fn first_id(data: &DataTable<'_>, key: &str) -> Result<Option<i64>, redb::Error> {
    let mut range = data.range::<(&str, i64)>((key, i64::MIN)..=(key, i64::MAX))?;
    match range.next() {
        Some(entry) => Ok(Some(entry?.0.value().1)),
        None => Ok(None),
    }
}

/// The tables a write batch touches, opened once per transaction.
struct Tables<'t> {
    queue: DataTable<'t>,
    queue_meta: MetaTable<'t>,
    history: DataTable<'t>,
    history_meta: MetaTable<'t>,
    acks: Table<'t, (&'static str, &'static str), i64>,
    cids: Table<'t, (&'static str, &'static str), (i64, i64)>,
    seen: Table<'t, &'static str, i64>,
}

fn apply(t: &mut Tables<'_>, op: &WriteOp) -> Result<(), redb::Error> {
    match op {
        WriteOp::Users {
            users,
            id,
            bytes,
            max,
        } => {
            for user in users {
                append_bounded(
                    &mut t.queue,
                    &mut t.queue_meta,
                    user.as_str(),
                    *id,
                    bytes,
                    *max,
                )?;
            }
        }
        WriteOp::Channel {
            channel,
            id,
            bytes,
            max,
        } => {
            append_bounded(
                &mut t.history,
                &mut t.history_meta,
                channel,
                *id,
                bytes,
                *max,
            )?;
        }
        WriteOp::Ack { user, device, id } => {
            let key = (user.as_str(), device.as_str());
            let current = t.acks.get(key)?.map(|g| g.value());
            if current.is_none_or(|c| c < *id) {
                t.acks.insert(key, *id)?;
            }
        }
        WriteOp::Cid {
            user,
            cid,
            id,
            expires_at,
        } => {
            t.cids
                .insert((user.as_str(), cid.as_str()), (*id, *expires_at))?;
        }
        WriteOp::Seen { user, expires_at } => {
            let current = t.seen.get(user.as_str())?.map(|g| g.value());
            if current.is_none_or(|c| c < *expires_at) {
                t.seen.insert(user.as_str(), *expires_at)?;
            }
        }
    }
    Ok(())
}

/// Applies `ops` in one transaction and commits it with `durability`.
fn commit_batch(
    db: &Database,
    ops: &[&WriteOp],
    durability: Durability,
) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)
        .map_err(|e| redb::Error::Corrupted(format!("set durability: {e}")))?;
    {
        let mut tables = Tables {
            queue: txn.open_table(QUEUE)?,
            queue_meta: txn.open_table(QUEUE_META)?,
            history: txn.open_table(HISTORY)?,
            history_meta: txn.open_table(HISTORY_META)?,
            acks: txn.open_table(ACKS)?,
            cids: txn.open_table(CIDS)?,
            seen: txn.open_table(SEEN)?,
        };
        for op in ops {
            apply(&mut tables, op)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Makes a batch durable: one log record and a redb commit without a
/// flush; a batch too large for the log is committed durably instead.
fn write_batch(db: &Database, wal: &mut Wal, ops: &[&WriteOp]) -> Result<(), redb::Error> {
    let record = postcard::to_stdvec(ops)
        .map_err(|e| redb::Error::Corrupted(format!("encoding a log record: {e}")))?;
    if !Wal::could_fit(record.len()) {
        return commit_batch(db, ops, Durability::Immediate);
    }
    if !wal.fits(record.len()) {
        checkpoint(db, wal)?;
    }
    wal.append(&record).map_err(redb::Error::Io)?;
    commit_batch(db, ops, Durability::None)
}

/// A durable redb commit of everything applied so far; the log starts over.
fn checkpoint(db: &Database, wal: &mut Wal) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.commit()?;
    wal.checkpoint().map_err(redb::Error::Io)
}

/// Where the previous sweep pass of one table stopped.
#[derive(Default)]
struct SweepCursor(Option<(String, i64)>);

/// Where the sweep of the `cids` table continues.
#[derive(Default)]
struct CidCursor(Option<(String, String)>);

/// Where the sweep of the `seen` table continues.
#[derive(Default)]
struct SeenCursor(Option<String>);

/// Removes expired seen records, at most [`SWEEP_LIMIT`] looked at.
fn sweep_seen(
    seen: &mut Table<'_, &'static str, i64>,
    cursor: &mut SeenCursor,
    now_ms: i64,
) -> Result<u64, redb::Error> {
    let mut expired = Vec::new();
    let mut looked = 0;
    let mut last = None;
    {
        let range = match &cursor.0 {
            Some(u) => seen.range::<&str>((Bound::Excluded(u.as_str()), Bound::Unbounded))?,
            None => seen.range::<&str>(..)?,
        };
        for entry in range.take(SWEEP_LIMIT) {
            let (k, v) = entry?;
            looked += 1;
            if v.value() <= now_ms {
                expired.push(k.value().to_owned());
            }
            last = Some(k.value().to_owned());
        }
    }
    cursor.0 = if looked < SWEEP_LIMIT { None } else { last };
    for user in &expired {
        seen.remove(user.as_str())?;
    }
    Ok(expired.len() as u64)
}

/// Removes expired cids, at most [`SWEEP_LIMIT`] looked at.
fn sweep_cids(
    cids: &mut Table<'_, (&'static str, &'static str), (i64, i64)>,
    cursor: &mut CidCursor,
    now_ms: i64,
) -> Result<u64, redb::Error> {
    let mut expired = Vec::new();
    let mut seen = 0;
    let mut last = None;
    {
        let range = match &cursor.0 {
            Some((u, c)) => cids.range::<(&str, &str)>((
                Bound::Excluded((u.as_str(), c.as_str())),
                Bound::Unbounded,
            ))?,
            None => cids.range::<(&str, &str)>(..)?,
        };
        for entry in range.take(SWEEP_LIMIT) {
            let (k, v) = entry?;
            let (user, cid) = k.value();
            seen += 1;
            if v.value().1 <= now_ms {
                expired.push((user.to_owned(), cid.to_owned()));
            }
            last = Some((user.to_owned(), cid.to_owned()));
        }
    }
    cursor.0 = if seen < SWEEP_LIMIT { None } else { last };
    for (user, cid) in &expired {
        cids.remove((user.as_str(), cid.as_str()))?;
    }
    Ok(expired.len() as u64)
}

/// Removes expired entries of one table, at most [`SWEEP_LIMIT`] looked at.
fn sweep_table(
    data: &mut DataTable<'_>,
    meta: &mut MetaTable<'_>,
    cursor: &mut SweepCursor,
    now_ms: i64,
) -> Result<u64, redb::Error> {
    let mut expired: Vec<(String, i64)> = Vec::new();
    let mut seen = 0usize;
    let mut last: Option<(String, i64)> = None;
    {
        let range = match &cursor.0 {
            Some((k, id)) => {
                data.range::<(&str, i64)>((Bound::Excluded((k.as_str(), *id)), Bound::Unbounded))?
            }
            None => data.range::<(&str, i64)>(..)?,
        };
        for entry in range.take(SWEEP_LIMIT) {
            let (k, v) = entry?;
            let (key, id) = k.value();
            seen += 1;
            // An undecodable entry is left alone here; reads report it.
            if let Ok(msg) = StoredMsg::decode(v.value()) {
                if !is_live(&msg, now_ms) {
                    expired.push((key.to_owned(), id));
                }
            }
            last = Some((key.to_owned(), id));
        }
    }
    // Fewer than a full pass means the end was reached: start over next time.
    cursor.0 = if seen < SWEEP_LIMIT { None } else { last };
    for (key, id) in &expired {
        data.remove((key.as_str(), *id))?;
        let (count, _) = meta.get(key.as_str())?.map_or((0, 0), |g| g.value());
        let count = count.saturating_sub(1);
        if count == 0 {
            meta.remove(key.as_str())?;
        } else {
            let min = first_id(data, key)?.unwrap_or(i64::MAX);
            meta.insert(key.as_str(), (count, min))?;
        }
    }
    Ok(expired.len() as u64)
}

fn sweep(
    db: &Database,
    cursors: &mut (SweepCursor, SweepCursor, CidCursor, SeenCursor),
    now_ms: i64,
) -> Result<u64, redb::Error> {
    let mut txn = db.begin_write()?;
    let mut removed = 0;
    {
        let mut data = txn.open_table(QUEUE)?;
        let mut meta = txn.open_table(QUEUE_META)?;
        removed += sweep_table(&mut data, &mut meta, &mut cursors.0, now_ms)?;
        let mut data = txn.open_table(HISTORY)?;
        let mut meta = txn.open_table(HISTORY_META)?;
        removed += sweep_table(&mut data, &mut meta, &mut cursors.1, now_ms)?;
        removed += sweep_cids(&mut txn.open_table(CIDS)?, &mut cursors.2, now_ms)?;
        removed += sweep_seen(&mut txn.open_table(SEEN)?, &mut cursors.3, now_ms)?;
    }
    if removed == 0 {
        txn.abort()?;
        return Ok(0);
    }
    // Flushed by the checkpoint that follows; lost in a crash before it,
    // which only means sweeping the same expired entries again.
    txn.set_durability(Durability::None)
        .map_err(|e| redb::Error::Corrupted(format!("set durability: {e}")))?;
    txn.commit()?;
    Ok(removed)
}

/// The writer thread: group commit until Close or until every sender is
/// gone, then a last checkpoint.
fn run_writer(db: &Database, mut wal: Wal, mut rx: mpsc::Receiver<Job>) {
    let mut cursors = (
        SweepCursor::default(),
        SweepCursor::default(),
        CidCursor::default(),
        SeenCursor::default(),
    );
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while rx.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        let ops: Vec<&WriteOp> = batch
            .iter()
            .filter_map(|j| match j {
                Job::Write { op, .. } => Some(op),
                _ => None,
            })
            .collect();
        let result = if ops.is_empty() {
            Ok(())
        } else {
            write_batch(db, &mut wal, &ops).map_err(Arc::new)
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, jobs = ops.len(), "store commit failed");
        }
        if wal.used() >= CHECKPOINT_BYTES {
            checkpoint_or_warn(db, &mut wal);
        }
        let mut close = None;
        for job in batch.drain(..) {
            match job {
                Job::Write { reply, .. } => {
                    let _ = reply.send(
                        result
                            .clone()
                            .map_err(|source| StoreError::Commit { source }),
                    );
                }
                Job::Sweep { now_ms, reply } => {
                    let swept = sweep(db, &mut cursors, now_ms).map_err(embedded("sweep"));
                    if let Err(e) = &swept {
                        tracing::warn!(error = %e, "store sweep failed");
                    }
                    // Once a second at most: bounds what a crash leaves to
                    // replay, and makes the sweep's removals durable. An
                    // idle store with nothing to remove flushes nothing.
                    if wal.used() > 0 || swept.as_ref().is_ok_and(|n| *n > 0) {
                        checkpoint_or_warn(db, &mut wal);
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(swept);
                    }
                }
                Job::Close { reply } => close = Some(reply),
            }
        }
        if let Some(reply) = close {
            checkpoint_or_warn(db, &mut wal);
            let _ = reply.send(());
            return;
        }
    }
    checkpoint_or_warn(db, &mut wal);
}

/// A checkpoint whose failure leaves the log as it was (the next one retries).
fn checkpoint_or_warn(db: &Database, wal: &mut Wal) {
    if let Err(e) = checkpoint(db, wal) {
        tracing::warn!(error = %e, "store checkpoint failed; the write-ahead log keeps the writes");
    }
}

/// Asks the writer for a sweep once a second; ends when the store is gone.
async fn sweep_loop(tx: mpsc::WeakSender<Job>) {
    let mut interval = tokio::time::interval(SWEEP_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let Some(tx) = tx.upgrade() else { return };
        // Skip this pass when the writer is busy; the next one catches up.
        let _ = tx.try_send(Job::Sweep {
            now_ms: now_ms(),
            reply: None,
        });
    }
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    proto::unix_ms(std::time::SystemTime::now())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msg(id: i64) -> StoredMsg {
        StoredMsg {
            id: MsgId(id),
            ts: 1,
            expires_at: i64::MAX,
            data: bytes::Bytes::from(format!("{{\"n\":{id}}}")),
            sender: None,
        }
    }

    fn users_op(user: &str, id: i64) -> WriteOp {
        WriteOp::Users {
            users: vec![UserId::from(user.to_owned())],
            id,
            bytes: postcard::to_stdvec(&msg(id)).unwrap(),
            max: 100,
        }
    }

    /// What a crash leaves: writes answered from the log that redb never
    /// flushed. Opening the store applies them, once, and empties the log.
    #[tokio::test]
    async fn writes_only_in_the_log_are_applied_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pushgate.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        let alice = UserId::from("alice".to_owned());
        store
            .append_users(std::slice::from_ref(&alice), &msg(1), Bounds { max: 100 })
            .await
            .unwrap();
        store.close().await.unwrap();
        drop(store);
        // Two batches in the log that redb does not have; the second one
        // repeats id 2 (a replay applies each write once) and acks it.
        {
            let (mut wal, pending) = Wal::open(&path.with_extension("wal")).unwrap();
            assert!(pending.is_empty(), "a closed store leaves an empty log");
            let first = [&users_op("alice", 2), &users_op("bob", 3)];
            wal.append(&postcard::to_stdvec(&first[..]).unwrap())
                .unwrap();
            let ack = WriteOp::Ack {
                user: alice.clone(),
                device: "d".into(),
                id: 2,
            };
            let second = [&users_op("alice", 2), &ack];
            wal.append(&postcard::to_stdvec(&second[..]).unwrap())
                .unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let got = store.read_user(&alice, MsgId(0), 0, 100).await.unwrap();
        let ids: Vec<i64> = got.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, [1, 2]);
        let bob = UserId::from("bob".to_owned());
        assert_eq!(
            store.read_user(&bob, MsgId(0), 0, 100).await.unwrap().len(),
            1
        );
        assert_eq!(store.acked(&alice, "d").await.unwrap(), Some(MsgId(2)));
        // The newest-id index was built after the replay.
        assert!(!store.nothing_after(&bob, MsgId(0)));
        store.close().await.unwrap();
        drop(store);
        let (_, pending) = Wal::open(&path.with_extension("wal")).unwrap();
        assert!(pending.is_empty(), "the replayed log was checkpointed");
    }

    /// Expired seen records are swept away; live ones stay.
    #[tokio::test]
    async fn the_sweep_removes_expired_seen_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("pushgate.redb")).unwrap();
        let t = now_ms();
        let (old, live) = (UserId::new("old"), UserId::new("live"));
        store.seen_put(&old, t + 10).await.unwrap();
        store.seen_put(&live, t + 3_600_000).await.unwrap();
        assert_eq!(store.sweep(t + 100).await.unwrap(), 1);
        let left = store
            .read(|db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(SEEN)?;
                Ok(table.iter()?.count())
            })
            .await
            .unwrap();
        assert_eq!(left, 1);
        assert!(store.seen_get(&live, t + 100).await.unwrap());
        assert!(!store.seen_get(&old, t + 100).await.unwrap());
        store.close().await.unwrap();
    }

    /// Many batches, then a checkpoint every time the log passes its bound:
    /// the log never holds more than one bound's worth, and nothing is lost.
    #[tokio::test]
    async fn the_log_is_checkpointed_when_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pushgate.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        let big = bytes::Bytes::from(vec![b'x'; 60_000]);
        let user = UserId::from("big".to_owned());
        // 400 writes of 60 kB: 24 MB through a log checkpointed at 16 MiB.
        for id in 1..=400 {
            let m = StoredMsg {
                data: big.clone(),
                ..msg(id)
            };
            store
                .append_users(std::slice::from_ref(&user), &m, Bounds { max: 1000 })
                .await
                .unwrap();
        }
        let wal_len = std::fs::metadata(path.with_extension("wal")).unwrap().len();
        assert!(
            wal_len <= CHECKPOINT_BYTES + 2 * crate::wal::GROW_STEP,
            "log file {wal_len} B"
        );
        assert_eq!(
            store
                .read_user(&user, MsgId(0), 0, 1000)
                .await
                .unwrap()
                .len(),
            400
        );
        store.close().await.unwrap();
    }
}
