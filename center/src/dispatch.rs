//! The ordered dispatcher: every push goes through one task, so that per
//! user, message ids increase in delivery order.
//!
//! # Why one task
//!
//! The contract says a client that resumes with `last_id` never misses a
//! stored message. If two concurrent pushes to one user could reach the room
//! out of id order, a client could receive id 2, drop, resume with
//! `last_id = 2` and never see id 1. So the HTTP handlers only validate and
//! enqueue a job on a bounded queue (a full queue, or one that would keep
//! the push waiting past half the request timeout, answers 429
//! `overloaded` at once, see `admission`; nothing is ever queued without
//! bound), and one dispatcher
//! task does, for everything pending at once (at most [`MAX_BATCH`]):
//!
//! 1. allocate ids for the whole batch with one `next_ids(n)` call, in queue
//!    order;
//! 2. store every message that must be stored (user queues with
//!    `store: true`, channel history) with one [`Store::append_many`] call
//!    for the whole batch: one saver call and one Redis round trip in a
//!    cluster, one group commit (about one fsync) on the embedded store. A
//!    failed write answers that request 503 `store_unavailable`, and its
//!    message is not delivered;
//! 3. deliver the whole batch: one batched directory lookup, users grouped by
//!    room, and per room the batch's calls (`deliver_users`,
//!    `publish_channel`) in id order, sent as one call
//!    ([`Rooms::deliver_many`], one round trip). Rooms run concurrently; a
//!    room makes the calls in order, and rooms keep per-connection FIFO
//!    queues, so every connection sees ids in increasing order;
//! 4. answer each request.
//!
//! Only then does the next batch start, so a later batch never overtakes an
//! earlier one. Batching keeps the throughput up: ids, fsyncs and lookups are
//! amortised over everything that arrived while the previous batch ran.
//!
//! Broadcasts take their id here too (so no user message with a smaller id
//! is still undelivered when the broadcast starts) and then run as a task.
//!
//! # Faults on the way to a connection
//!
//! A stored message is acknowledged once it is stored, so live delivery
//! must not silently skip a connection that stays open, or the client would
//! receive newer messages and resume past the gap. Two cases:
//! - the directory cannot say where a user is (its register is down or
//!   unreachable): the rooms are the source of truth, so the message goes to
//!   every live room for that user ([`Directory::locate`]);
//! - a room call fails (the link is cut, the room is stalled): the users and
//!   the lowest missed id are remembered per room ([`Pending`], bounded), and
//!   before anything else is sent to that room the center asks it to
//!   *resync* them: their connections replay the stored queue from before
//!   the gap, in place, ahead of what is queued after (retried every second
//!   while the room is live; forgotten when it leaves the membership, since
//!   its clients then reconnect elsewhere and replay anyway).
//!
//! A register that restarts empty answers "offline" until the rooms refill
//! it; the rooms then resync the connections of its users themselves (see
//! `pushgate room`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::Mutex;
use proto::{EncodedMsg, MsgFrame, MsgId, RoomId, UserId};
use register::Directory;
use saver::{Append, Bounds, Store, StoredMsg};
use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::metrics::{KindLabel, Metrics};
use crate::{CenterConfig, CenterDeps, RoomCall, Rooms};

/// Most jobs handled in one batch.
pub const MAX_BATCH: usize = 1024;

/// Users remembered per room for a resync at most; beyond, the whole room is
/// asked to resync.
const MAX_PENDING_USERS: usize = 100_000;

/// How often pending resyncs are retried while no push comes.
const RESYNC_RETRY: Duration = Duration::from_secs(1);

/// Stored messages a room may have missed: its connections of `users` (all
/// of them when `all`) must replay after `after` before anything newer.
#[derive(Debug, Default)]
struct Pending {
    users: HashSet<UserId>,
    all: bool,
    after: Option<MsgId>,
}

impl Pending {
    fn add(&mut self, users: &[UserId], missed: MsgId) {
        let after = MsgId(missed.0.saturating_sub(1));
        self.after = Some(self.after.map_or(after, |a| a.min(after)));
        if self.all {
            return;
        }
        self.users.extend(users.iter().cloned());
        if self.users.len() > MAX_PENDING_USERS {
            self.users = HashSet::new();
            self.all = true;
        }
    }

    fn merge(&mut self, other: Pending) {
        if let Some(a) = other.after {
            self.after = Some(self.after.map_or(a, |b| b.min(a)));
        }
        if other.all {
            self.all = true;
            self.users = HashSet::new();
        } else if !self.all {
            self.users.extend(other.users);
        }
    }
}

/// What a push to users achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PushOutcome {
    pub(crate) id: MsgId,
    pub(crate) delivered: u64,
    pub(crate) stored: u64,
}

type Reply = oneshot::Sender<Result<PushOutcome, ApiError>>;

/// One validated push waiting for the dispatcher.
pub(crate) enum Job {
    /// A push to users (already de-duplicated).
    Users {
        users: Vec<UserId>,
        data: Bytes,
        store: bool,
        ttl: Duration,
        ts: i64,
        accepted: Instant,
        reply: Reply,
        /// Who sent it and the connection that must not get it (client
        /// messages only).
        from: Option<From>,
    },
    /// A push to a channel.
    Channel {
        channel: String,
        data: Bytes,
        history: bool,
        ts: i64,
        accepted: Instant,
        reply: Reply,
        /// As for [`Job::Users`].
        from: Option<From>,
    },
    /// A broadcast: only takes its id here.
    Broadcast { reply: Reply },
}

/// The client behind a message sent with `send` or `pub`.
#[derive(Debug, Clone)]
pub(crate) struct From {
    pub(crate) sender: proto::Sender,
    /// The sending connection, which gets `send_ok`/`pub_ok` instead.
    pub(crate) conn: proto::ConnId,
}

impl Job {
    /// `users`, `channel` or `broadcast` (a metrics label).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Job::Users { .. } => "users",
            Job::Channel { .. } => "channel",
            Job::Broadcast { .. } => "broadcast",
        }
    }
}

/// The dispatcher's state.
pub(crate) struct Dispatcher {
    pub(crate) cfg: Arc<CenterConfig>,
    pub(crate) dir: Arc<dyn Directory>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) ids: Arc<dyn idgen::IdGen>,
    pub(crate) rooms: Arc<dyn Rooms>,
    pub(crate) metrics: Arc<Metrics>,
    /// Told how long each batch took.
    admission: Arc<crate::admission::Admission>,
    /// Resyncs owed to rooms whose calls failed (see the module docs).
    /// Touched only between awaits, never held across one.
    pending: Mutex<HashMap<RoomId, Pending>>,
}

/// One call to a room, in batch order.
enum RoomOp {
    Users(usize, Vec<UserId>),
    Channel(usize),
}

impl Dispatcher {
    pub(crate) fn new(
        cfg: Arc<CenterConfig>,
        deps: &CenterDeps,
        metrics: Arc<Metrics>,
        admission: Arc<crate::admission::Admission>,
    ) -> Self {
        Dispatcher {
            cfg,
            admission,
            dir: deps.dir.clone(),
            store: deps.store.clone(),
            ids: deps.ids.clone(),
            rooms: deps.rooms.clone(),
            metrics,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Runs until `stop` is cancelled and everything queued is answered (or
    /// every sender is gone).
    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Job>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut closing = false;
        let mut retry = tokio::time::interval(RESYNC_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled(), if !closing => {
                    // No new jobs; the ones already queued are still handled.
                    rx.close();
                    closing = true;
                }
                _ = retry.tick() => {
                    // Pushes wait behind it too.
                    let began = Instant::now();
                    self.admission.started(began);
                    self.retry_resyncs().await;
                    self.admission.observe(0, began.elapsed());
                }
                n = rx.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    self.metrics.queue_depth.set(i64::try_from(rx.len()).unwrap_or(i64::MAX));
                    self.metrics.batch_size.observe(n as f64);
                    let began = Instant::now();
                    self.admission.started(began);
                    self.process(std::mem::take(&mut batch)).await;
                    self.admission.observe(n, began.elapsed());
                }
            }
        }
        tracing::debug!("dispatcher stopped");
    }

    async fn process(&self, batch: Vec<Job>) {
        let n = u32::try_from(batch.len()).unwrap_or(u32::MAX);
        let first = match self.ids.next_ids(n).await {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(%e, "id allocation failed");
                for job in batch {
                    self.fail(job, ApiError::Unavailable("id generator"));
                }
                return;
            }
        };
        // Ids of one region are not adjacent integers: the k-th is nth_id.
        let ids: Vec<MsgId> = (0..n).map(|k| idgen::nth_id(first, k)).collect();

        // 2. Store, all in one call; the store group-commits.
        let stored = self.store(&batch, &ids).await;

        // 3. Deliver, in order per room.
        let mut msgs: Vec<Option<Arc<EncodedMsg>>> = Vec::with_capacity(batch.len());
        for ((job, id), ok) in batch.iter().zip(&ids).zip(&stored) {
            msgs.push(match job {
                Job::Users {
                    data,
                    ts,
                    store,
                    from,
                    ..
                } if *ok => Some(encode(*id, *ts, None, data, *store, from.as_ref())),
                Job::Channel {
                    channel,
                    data,
                    ts,
                    from,
                    ..
                } if *ok => Some(encode(*id, *ts, Some(channel), data, false, from.as_ref())),
                _ => None,
            });
        }
        let delivered = self.deliver(&batch, &msgs).await;

        // 4. Answer.
        for (((job, id), ok), delivered) in batch.into_iter().zip(ids).zip(stored).zip(delivered) {
            let kind = job.kind();
            if !ok {
                self.fail(job, ApiError::StoreUnavailable);
                continue;
            }
            self.metrics.deliveries.inc_by(delivered);
            match job {
                Job::Users {
                    users,
                    store,
                    accepted,
                    reply,
                    ..
                } => {
                    let stored = if store { users.len() as u64 } else { 0 };
                    self.metrics.stored.inc_by(stored);
                    self.done(
                        kind,
                        accepted,
                        reply,
                        PushOutcome {
                            id,
                            delivered,
                            stored,
                        },
                    );
                }
                Job::Channel {
                    accepted, reply, ..
                } => {
                    self.done(
                        kind,
                        accepted,
                        reply,
                        PushOutcome {
                            id,
                            delivered,
                            stored: 0,
                        },
                    );
                }
                Job::Broadcast { reply } => {
                    // Counted and timed by the broadcast task.
                    let _ = reply.send(Ok(PushOutcome {
                        id,
                        delivered: 0,
                        stored: 0,
                    }));
                }
            }
        }
    }

    fn done(&self, kind: &'static str, accepted: Instant, reply: Reply, out: PushOutcome) {
        self.metrics.pushes.get_or_create(&KindLabel { kind }).inc();
        self.metrics
            .push_latency
            .observe(accepted.elapsed().as_secs_f64());
        // The caller may have gone (timeout); the push happened anyway.
        let _ = reply.send(Ok(out));
    }

    fn fail(&self, job: Job, err: ApiError) {
        self.metrics
            .push_errors
            .get_or_create(&KindLabel { kind: job.kind() })
            .inc();
        let reply = match job {
            Job::Users { reply, .. } | Job::Channel { reply, .. } | Job::Broadcast { reply } => {
                reply
            }
        };
        let _ = reply.send(Err(err));
    }

    /// Writes what the batch must store, in one [`Store::append_many`];
    /// per job, false when its write failed.
    async fn store(&self, batch: &[Job], ids: &[MsgId]) -> Vec<bool> {
        let mut writes = Vec::new();
        // Per job, its write's index in `writes`, if it has one.
        let mut which = Vec::with_capacity(batch.len());
        for (job, id) in batch.iter().zip(ids) {
            which.push(self.write_for(job, *id).map(|w| {
                writes.push(w);
                writes.len() - 1
            }));
        }
        if writes.is_empty() {
            return vec![true; batch.len()];
        }
        let started = Instant::now();
        let results = tokio::time::timeout(STORE_TIMEOUT, self.store.append_many(&writes))
            .await
            .unwrap_or_else(|_| {
                writes
                    .iter()
                    .map(|_| Err(saver::StoreError::Timeout(STORE_TIMEOUT)))
                    .collect()
            });
        self.metrics
            .store_latency
            .observe(started.elapsed().as_secs_f64());
        which
            .iter()
            .zip(ids)
            .map(|(w, id)| {
                let Some(k) = *w else { return true };
                match results.get(k) {
                    Some(Ok(())) => true,
                    Some(Err(e)) => {
                        tracing::warn!(%e, %id, "store failed, push refused");
                        false
                    }
                    None => {
                        tracing::warn!(%id, "store gave no result for a write, push refused");
                        false
                    }
                }
            })
            .collect()
    }

    /// What `job` must store with `id`, if anything.
    fn write_for(&self, job: &Job, id: MsgId) -> Option<Append> {
        let msg = |ts: i64, ttl: Duration, data: &Bytes, from: &Option<From>| StoredMsg {
            id,
            ts,
            expires_at: ts.saturating_add(millis(ttl)),
            data: data.clone(),
            sender: from.as_ref().map(|f| f.sender.clone()),
        };
        match job {
            Job::Users {
                users,
                data,
                store: true,
                ttl,
                ts,
                from,
                ..
            } => Some(Append::Users {
                users: users.clone(),
                msg: msg(*ts, *ttl, data, from),
                bounds: Bounds {
                    max: self.cfg.queue_max,
                },
            }),
            Job::Channel {
                channel,
                data,
                history: true,
                ts,
                from,
                ..
            } => Some(Append::Channel {
                channel: channel.clone(),
                msg: msg(*ts, self.cfg.channel_history_ttl, data, from),
                bounds: Bounds {
                    max: self.cfg.channel_history_max,
                },
            }),
            _ => None,
        }
    }

    /// Delivers every message of the batch that has one; returns the
    /// connections written per job.
    async fn deliver(&self, batch: &[Job], msgs: &[Option<Arc<EncodedMsg>>]) -> Vec<u64> {
        // One directory lookup for every user of the batch.
        let mut all_users: Vec<UserId> = Vec::new();
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(batch.len());
        let mut any_channel = false;
        for (job, msg) in batch.iter().zip(msgs) {
            let start = all_users.len();
            match job {
                Job::Users { users, .. } if msg.is_some() => {
                    all_users.extend(users.iter().cloned())
                }
                Job::Channel { .. } if msg.is_some() => any_channel = true,
                _ => {}
            }
            spans.push((start, all_users.len()));
        }
        // `None`: the directory could not say; every live room is asked.
        let conns: Vec<Option<Vec<register::ConnInfo>>> = if all_users.is_empty() {
            Vec::new()
        } else {
            match self.dir.locate(&all_users).await {
                Ok(c) if c.len() == all_users.len() => c,
                Ok(_) => {
                    tracing::error!("directory lookup answered the wrong number of users");
                    vec![None; all_users.len()]
                }
                Err(e) => {
                    tracing::warn!(%e, "directory lookup failed; delivering through every live room");
                    vec![None; all_users.len()]
                }
            }
        };
        let unknown = conns.iter().filter(|c| c.is_none()).count();
        if unknown > 0 {
            self.metrics.fanout_users.inc_by(unknown as u64);
        }
        let live_rooms: Vec<RoomId> = if any_channel || unknown > 0 {
            match self.dir.rooms().await {
                Ok(r) => r.into_iter().map(|r| r.room).collect(),
                Err(e) => {
                    tracing::warn!(%e, "room list unavailable; channel delivery skipped");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };

        // Per room, the batch's calls in order.
        let mut per_room: BTreeMap<RoomId, Vec<RoomOp>> = BTreeMap::new();
        for (i, (job, msg)) in batch.iter().zip(msgs).enumerate() {
            if msg.is_none() {
                continue;
            }
            match job {
                Job::Users { .. } => {
                    let (start, end) = spans[i];
                    let mut by_room: BTreeMap<RoomId, Vec<UserId>> = BTreeMap::new();
                    for (user, cs) in all_users[start..end].iter().zip(&conns[start..end]) {
                        let Some(cs) = cs else {
                            // Unknown: every live room delivers to its own connections.
                            for room in &live_rooms {
                                by_room.entry(*room).or_default().push(user.clone());
                            }
                            continue;
                        };
                        // A user's distinct rooms; nearly always one.
                        let mut seen: SmallVec<[RoomId; 2]> = SmallVec::new();
                        for c in cs {
                            if !seen.contains(&c.room) {
                                seen.push(c.room);
                                by_room.entry(c.room).or_default().push(user.clone());
                            }
                        }
                    }
                    for (room, users) in by_room {
                        per_room
                            .entry(room)
                            .or_default()
                            .push(RoomOp::Users(i, users));
                    }
                }
                Job::Channel { .. } => {
                    for room in &live_rooms {
                        per_room.entry(*room).or_default().push(RoomOp::Channel(i));
                    }
                }
                Job::Broadcast { .. } => {}
            }
        }

        let room_runs = per_room
            .into_iter()
            .map(|(room, ops)| self.run_room(room, ops, batch, msgs));
        let mut delivered = vec![0u64; batch.len()];
        for results in join_all(room_runs).await {
            for (i, n) in results {
                delivered[i] = delivered[i].saturating_add(n);
            }
        }
        delivered
    }

    /// Makes one room's calls, in order and in one [`Rooms::deliver_many`];
    /// returns (job index, connections written) for each.
    async fn run_room(
        &self,
        room: RoomId,
        ops: Vec<RoomOp>,
        batch: &[Job],
        msgs: &[Option<Arc<EncodedMsg>>],
    ) -> Vec<(usize, u64)> {
        // A resync owed to this room goes first: nothing newer may reach its
        // connections before the messages they missed.
        let reachable = self.resync_room(room).await;
        let mut jobs = Vec::with_capacity(ops.len());
        let mut calls = Vec::with_capacity(ops.len());
        for op in &ops {
            match op {
                RoomOp::Users(i, users) => {
                    if let Some(msg) = &msgs[*i] {
                        jobs.push(*i);
                        calls.push(RoomCall::Users { users, msg });
                    }
                }
                RoomOp::Channel(i) => {
                    if let (Job::Channel { channel, .. }, Some(msg)) = (&batch[*i], &msgs[*i]) {
                        jobs.push(*i);
                        calls.push(RoomCall::Channel { channel, msg });
                    }
                }
            }
        }
        if calls.is_empty() {
            return Vec::new();
        }
        let res = if reachable {
            match self.rooms.deliver_many(room, &calls).await {
                Ok(counts) if counts.len() == calls.len() => Ok(counts),
                Ok(counts) => Err(crate::RoomsError::BadAnswer {
                    room,
                    answer: format!("{} counts for {} calls", counts.len(), calls.len()),
                }),
                Err(e) => Err(e),
            }
        } else {
            Err(unreachable(room))
        };
        match res {
            Ok(counts) => jobs.into_iter().zip(counts).collect(),
            Err(e) => {
                self.metrics.room_errors.inc();
                if reachable {
                    tracing::warn!(%e, calls = calls.len(), "delivery to room failed");
                }
                // Any call of the batch may have been missed: every stored
                // message in it is owed a resync (a message that did arrive
                // comes again on the resync, with the same id).
                for op in &ops {
                    if let RoomOp::Users(i, users) = op {
                        if let Some(m) = msgs[*i].as_ref().filter(|m| m.stored) {
                            self.owe_resync(room, users, m.id);
                        }
                    }
                }
                Vec::new()
            }
        }
    }

    /// Remembers that `room` missed stored message `id` for `users`.
    fn owe_resync(&self, room: RoomId, users: &[UserId], id: MsgId) {
        self.pending.lock().entry(room).or_default().add(users, id);
    }

    /// Sends `room` the resync it is owed, if any. False when the room could
    /// not be reached (the resync stays owed).
    async fn resync_room(&self, room: RoomId) -> bool {
        let Some(owed) = self.pending.lock().remove(&room) else {
            return true;
        };
        let Some(after) = owed.after else {
            return true;
        };
        let users: Option<Vec<UserId>> = (!owed.all).then(|| owed.users.iter().cloned().collect());
        match self.rooms.resync(room, users.as_deref(), after).await {
            Ok(n) => {
                self.metrics.resyncs.inc_by(n);
                tracing::info!(%room, connections = n, after = after.0, "room resynced after failed deliveries");
                true
            }
            Err(e) => {
                tracing::debug!(%e, "resync of room failed; retrying");
                self.pending.lock().entry(room).or_default().merge(owed);
                false
            }
        }
    }

    /// Retries owed resyncs (between batches); forgets rooms that left the
    /// membership (their clients reconnect elsewhere and replay).
    async fn retry_resyncs(&self) {
        let owed: Vec<RoomId> = self.pending.lock().keys().copied().collect();
        if owed.is_empty() {
            return;
        }
        if let Ok(live) = self.dir.rooms().await {
            let live: HashSet<RoomId> = live.into_iter().map(|r| r.room).collect();
            self.pending.lock().retain(|room, _| {
                let keep = live.contains(room);
                if !keep {
                    tracing::info!(%room, "room left the membership; its owed resync is dropped (its clients replay on reconnect)");
                }
                keep
            });
        }
        let owed: Vec<RoomId> = self.pending.lock().keys().copied().collect();
        join_all(owed.into_iter().map(|room| self.resync_room(room))).await;
    }
}

fn unreachable(room: RoomId) -> crate::RoomsError {
    crate::RoomsError::Skipped { room }
}

/// Longest a store write may take before its push is refused with 503: a
/// hung store must not stall every later push. A write that times out may
/// still land; the caller was told it failed, so at worst the message is
/// delivered on replay although the push was refused (never the reverse).
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the encoded message once per push. `stored`: it is in the users'
/// queues, so a session's replay may already have sent it.
pub(crate) fn encode(
    id: MsgId,
    ts: i64,
    channel: Option<&str>,
    data: &Bytes,
    stored: bool,
    from: Option<&From>,
) -> Arc<EncodedMsg> {
    let mut msg = EncodedMsg::new(&MsgFrame {
        id,
        ts,
        channel: channel.map(str::to_owned),
        data: data.clone(),
        sender: from.map(|f| f.sender.clone()),
    });
    msg.stored = stored;
    msg.except = from.map(|f| f.conn);
    Arc::new(msg)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
