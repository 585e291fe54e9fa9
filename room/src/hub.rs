//! The room's local indexes: connection → handle, user → connections and
//! channel → connections, and each connection's bounded outbound queue.
//!
//! Pushers never block and never await: they lock a DashMap shard, append
//! an `Arc` to each connection's queue (a short parking_lot critical
//! section) and wake the session through its `Notify`. A full queue (by
//! count or by bytes) marks the connection for closing (4006) instead of
//! growing.
//!
//! Besides messages and the close signal, an outbox carries a *resync*
//! request: the room learnt that live delivery to this connection may have
//! missed stored messages (a register lost its entry, a center could not
//! reach the room), so the session replays its user's queue from the last
//! stored id it sent before it writes anything queued after the request.
//!
//! Why not a `tokio::sync::mpsc` per connection: its channel state is
//! cache-padded (~0.5 KiB) and allocates a 32-slot block up front, per
//! connection, even while idle. [`Outbox`] is a `VecDeque` that holds no
//! allocation while empty, bounded by `send_queue`, with the close signal in
//! the same lock, so a full queue and a kick reach the session the same way.
//!
//! Why not a `tokio::sync::Notify` to wake the session: only the session
//! ever waits, so a flag and an `AtomicWaker` do (24 B less per connection
//! than a `Notify` and its `Notified`), and the wait holds only a reference.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use proto::{
    ConnId, EncodedMsg, MembersPage, MsgId, PresenceChange, PresentUser, ServerFrame, UserId,
};
use smallvec::SmallVec;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::{self, Drop as DropWhy, Metrics};

/// A pushed message prepared once per push for every connection: the JSON
/// text (already checked as UTF-8, so WebSocket text frames need no
/// per-connection check) and the binary body.
#[derive(Debug)]
pub(crate) struct Push {
    /// Message id.
    pub(crate) id: MsgId,
    /// The connection that sent it, which does not get it.
    pub(crate) except: Option<ConnId>,
    /// Whether a session's replay may already have sent this message (a stored
    /// user message); only such pushes are de-duplicated against the replay.
    pub(crate) replayable: bool,
    /// JSON encoding.
    pub(crate) text: Utf8Bytes,
    /// Binary encoding, without length prefix.
    pub(crate) bin: Bytes,
    /// The stream transports' length prefix for `bin`, computed once.
    pub(crate) bin_prefix: SmallVec<[u8; 8]>,
    /// What this push counts against a connection's byte bound: the larger
    /// of its two encodings (a connection writes one of them), computed
    /// once per push rather than per connection.
    pub(crate) weight: u32,
    /// Counts the queues that dropped this push unwritten (a tracked
    /// broadcast only; see [`Tracked`]).
    gone: Option<Arc<AtomicU64>>,
}

impl Push {
    /// Shares the encodings of `msg`; `None` if its JSON is not UTF-8 (a proto bug).
    pub(crate) fn new(msg: &EncodedMsg) -> Option<Arc<Push>> {
        let text = Utf8Bytes::try_from(msg.json.clone()).ok()?;
        let (p, n) = proto::binary::len_prefix(msg.bin.len());
        let prefix = SmallVec::from_slice(&p[..n]);
        let weight = text.len().max(msg.bin.len() + prefix.len());
        Some(Arc::new(Push {
            id: msg.id,
            except: msg.except,
            replayable: msg.stored && !msg.channel,
            text,
            bin: msg.bin.clone(),
            bin_prefix: prefix,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
            gone: None,
        }))
    }

    /// Like [`Push::new`], counting the queues that drop it unwritten in
    /// the returned counter (a broadcast whose progress is tracked).
    pub(crate) fn tracked(msg: &EncodedMsg) -> Option<(Arc<Push>, Arc<AtomicU64>)> {
        let mut p = Arc::into_inner(Push::new(msg)?)?;
        let gone = Arc::new(AtomicU64::new(0));
        p.gone = Some(Arc::clone(&gone));
        Some((Arc::new(p), gone))
    }

    /// Counts this push as dropped from a queue without being written.
    fn discarded(&self) {
        if let Some(g) = &self.gone {
            g.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A frame that is not a message (`join`, `leave`), encoded once for
    /// every connection it goes to, except `except`. It carries no id.
    pub(crate) fn frame(frame: &ServerFrame, except: Option<ConnId>) -> Option<Arc<Push>> {
        let (mut json, mut bin) = (Vec::with_capacity(96), Vec::with_capacity(64));
        proto::json::encode_server(frame, &mut json);
        proto::binary::encode_server(frame, &mut bin);
        Push::new(&EncodedMsg {
            id: MsgId(0),
            channel: true,
            stored: false,
            json: Bytes::from(json),
            bin: Bytes::from(bin),
            except,
        })
    }
}

/// Why a connection is told to close from outside its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Kicked through the API (4005).
    Kicked,
    /// Its outbound queue overflowed (4006).
    SlowConsumer,
    /// The room is draining (4007).
    Draining,
}

/// A connection's outbound queue, close signal and resync request.
#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<Arc<Push>>,
    /// Sum of [`Push::weight`] over `queue` (u32: it sits in padding).
    bytes: u32,
    close: Option<Signal>,
    /// Replay stored messages before anything still queued; from where is
    /// kept by the hub (see [`Hub::resync_users`]), not here: a resync is
    /// rare and every connection would pay for the id.
    resync: bool,
    /// Queued messages wait: a replay failed on the store and is retried
    /// later (see [`Conn::hold`]); cleared by the next resync request.
    held: bool,
}

impl Outbox {
    /// Empties the queue, counting what it held as never written.
    fn discard(&mut self) {
        for p in std::mem::take(&mut self.queue) {
            p.discarded();
        }
        self.bytes = 0;
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // A connection that ends with messages queued did not get them.
        for p in &self.queue {
            p.discarded();
        }
    }
}

/// What happened to one push to one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued.
    Yes,
    /// The queue was full: the connection is now closing (4006).
    Full,
    /// The connection was already closing.
    Closed,
    /// The queue was full and the message could be lost: dropped, the
    /// connection kept ([`Conn::try_push_lossy`]).
    Skipped,
}

/// The shared handle of one authenticated connection.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Connection id.
    pub(crate) id: ConnId,
    /// Device id (for directory re-syncs in cluster mode).
    device: Option<Arc<str>>,
    /// Milliseconds since the epoch when it authenticated.
    since: i64,
    outbox: Mutex<Outbox>,
    /// Set on every push and on a close signal; cleared by [`Conn::woken`].
    wake_flag: AtomicBool,
    /// The session's task while it waits in [`Conn::woken`].
    waker: AtomicWaker,
    /// The idle wheel's tick of the last inbound frame, with [`EXPIRED`]
    /// set once the wheel found the connection silent too long.
    seen: AtomicU32,
}

/// Queues shorter than this keep their allocation when they empty.
const KEEP_QUEUE_CAPACITY: usize = 8;

impl Conn {
    /// A connection with an empty queue.
    pub(crate) fn new(id: ConnId) -> Conn {
        Conn {
            id,
            device: None,
            since: 0,
            outbox: Mutex::new(Outbox::default()),
            wake_flag: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            seen: AtomicU32::new(0),
        }
    }

    /// Sets who the connection is, as the directory records it.
    pub(crate) fn with_meta(mut self, device: &Arc<str>, since: i64) -> Conn {
        self.device = Some(Arc::clone(device));
        self.since = since;
        self
    }

    /// Wakes the session (or makes its next [`Conn::woken`] return at once).
    fn wake(&self) {
        self.wake_flag.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Completes once a push or a close signal arrived since the last time
    /// it completed, like `Notify::notified` with `notify_one`. Only the
    /// session waits on it, one wait at a time.
    pub(crate) fn woken(&self) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| self.poll_woken(cx))
    }

    fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.wake_flag.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A wake between the check and the registration found no waker.
        if self.wake_flag.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Queues `msg` unless the queue is full: `limit.count` messages, or
    /// `limit.bytes` bytes with `msg` added (a message alone in the queue is
    /// always taken, whatever its size: frames are bounded elsewhere). A full
    /// queue marks the connection slow (4006).
    pub(crate) fn try_push(&self, msg: &Arc<Push>, limit: QueueLimit) -> Queued {
        self.push(msg, limit, true)
    }

    /// Like [`Conn::try_push`] for what may be lost (presence events): a
    /// full queue drops `msg` ([`Queued::Skipped`]) and keeps the
    /// connection, so a burst of joins never closes a watcher.
    pub(crate) fn try_push_lossy(&self, msg: &Arc<Push>, limit: QueueLimit) -> Queued {
        self.push(msg, limit, false)
    }

    fn push(&self, msg: &Arc<Push>, limit: QueueLimit, close_when_full: bool) -> Queued {
        let weight = msg.weight;
        let res = {
            let mut o = self.outbox.lock();
            if o.close.is_some() {
                Queued::Closed
            } else if o.queue.len() >= limit.count
                || (!o.queue.is_empty() && o.bytes.saturating_add(weight) > limit.bytes)
            {
                if !close_when_full {
                    return Queued::Skipped;
                }
                o.close = Some(Signal::SlowConsumer);
                // Nothing more will be written: let the memory go now.
                o.discard();
                Queued::Full
            } else {
                o.queue.push_back(Arc::clone(msg));
                o.bytes = o.bytes.saturating_add(weight);
                Queued::Yes
            }
        };
        if res != Queued::Closed {
            self.wake();
        }
        res
    }

    /// Tells the session to close; the first signal wins. Returns whether
    /// this call set it.
    pub(crate) fn signal(&self, why: Signal) -> bool {
        let set = {
            let mut o = self.outbox.lock();
            if o.close.is_some() {
                false
            } else {
                o.close = Some(why);
                true
            }
        };
        self.wake();
        set
    }

    /// Asks the session to resync before it writes anything queued from now
    /// on (see [`Hub::resync_users`]). Returns false when the connection is
    /// closing.
    pub(crate) fn request_resync(&self) -> bool {
        let set = {
            let mut o = self.outbox.lock();
            if o.close.is_some() {
                false
            } else {
                o.resync = true;
                o.held = false;
                true
            }
        };
        if set {
            self.wake();
        }
        set
    }

    /// Records an inbound frame at tick `now` ([`IdleWheel::now`]); once
    /// the connection expired, it stays expired.
    pub(crate) fn touch(&self, now: u32) {
        let _ = self
            .seen
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & EXPIRED == 0 && s != now).then_some(now)
            });
    }

    /// Whether the idle wheel found the connection silent past the idle
    /// limit (it also woke the session).
    pub(crate) fn idle_expired(&self) -> bool {
        self.seen.load(Ordering::Acquire) & EXPIRED != 0
    }

    /// The pending close signal, if any.
    pub(crate) fn closing(&self) -> Option<Signal> {
        self.outbox.lock().close
    }

    /// Holds queued messages back until the next [`Conn::request_resync`]:
    /// the session's replay failed on the store, and nothing newer may be
    /// written before the replay is done (a client would resume past the
    /// gap). The queue still fills, and still closes the connection (4006)
    /// when it overflows.
    pub(crate) fn hold(&self) {
        self.outbox.lock().held = true;
    }

    /// Whether messages (or a resync request) are waiting to be written.
    pub(crate) fn has_queued(&self) -> bool {
        let o = self.outbox.lock();
        (!o.queue.is_empty() && !o.held) || o.resync
    }

    /// Messages waiting in the queue (tests).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.outbox.lock().queue.len()
    }

    /// Takes the close signal (which wins over everything), else a resync
    /// request (which goes before queued messages), else the oldest queued
    /// message.
    pub(crate) fn pop(&self) -> Popped {
        let mut o = self.outbox.lock();
        if let Some(s) = o.close {
            return Popped::Signal(s);
        }
        if std::mem::take(&mut o.resync) {
            return Popped::Resync;
        }
        if o.held {
            return Popped::Empty;
        }
        match o.queue.pop_front() {
            Some(p) => {
                o.bytes = o.bytes.saturating_sub(p.weight);
                if o.queue.is_empty() && o.queue.capacity() > KEEP_QUEUE_CAPACITY {
                    // Let an idle connection hold no queue memory after a burst.
                    o.queue = VecDeque::new();
                }
                Popped::Msg(p)
            }
            None => Popped::Empty,
        }
    }
}

/// What [`Conn::pop`] found.
#[derive(Debug)]
pub(crate) enum Popped {
    /// The connection must close.
    Signal(Signal),
    /// Replay stored messages first ([`Hub::take_resync`] says from where).
    Resync,
    /// The oldest queued message.
    Msg(Arc<Push>),
    /// Nothing queued.
    Empty,
}

/// How much one connection's outbound queue may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueLimit {
    /// Messages.
    pub(crate) count: usize,
    /// Bytes of encoded frames ([`Push::weight`]).
    pub(crate) bytes: u32,
}

/// Subscribers of one channel.
type Subscribers = HashMap<ConnId, Arc<Conn>>;

/// A channel with presence, as this room sees it: its members here and
/// the connections here that asked for `join`/`leave`.
#[derive(Debug, Default)]
struct Presence {
    /// Subscribed connections per user, in user order (pages by cursor in
    /// O(log n + page)).
    members: BTreeMap<UserId, u32>,
    /// Subscribers that asked for join/leave events.
    watchers: Subscribers,
}

/// Where a room's presence changes go besides its own watchers (the other
/// rooms of a cluster). Must not block.
pub(crate) type PresenceRelay = Arc<dyn Fn(bool, &PresenceChange) + Send + Sync>;

/// The room's indexes.
#[derive(Debug)]
pub(crate) struct Hub {
    conns: DashMap<ConnId, Arc<Conn>>,
    users: DashMap<UserId, SmallVec<[Arc<Conn>; 2]>>,
    channels: DashMap<Arc<str>, Subscribers>,
    /// Outbound queue bound per connection.
    queue_limit: QueueLimit,
    /// Where each connection asked to resync replays from (at most): the
    /// lowest id asked. Only connections with a resync pending are here.
    resync_from: DashMap<ConnId, MsgId>,
    /// The connections' idle deadlines, started with the first session.
    idle: OnceLock<Arc<IdleWheel>>,
    /// Channels with presence that have members here.
    presence: DashMap<Arc<str>, Presence>,
    /// Which channels have presence (`--presence-channels`).
    presence_channels: Arc<[String]>,
    /// Where changes go besides this room's watchers.
    relay: Option<RelayFn>,
    /// Per-user `send`/`pub` buckets (`user_send_rate`), only for users
    /// here who sent; removed with the user's last connection.
    user_send: DashMap<UserId, Bucket>,
    /// The room's counters, for presence events sent from a connection's
    /// registration (which keeps no reference to them: it lives in every
    /// session).
    metrics: Arc<Metrics>,
}

/// [`PresenceRelay`] with a `Debug` for [`Hub`].
struct RelayFn(PresenceRelay);

impl std::fmt::Debug for RelayFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PresenceRelay")
    }
}

impl Hub {
    /// Empty indexes; each connection queues at most `count` messages and
    /// `bytes` bytes.
    pub(crate) fn new(count: usize, bytes: usize) -> Hub {
        Hub {
            conns: DashMap::new(),
            users: DashMap::new(),
            channels: DashMap::new(),
            queue_limit: QueueLimit {
                count: count.max(1),
                bytes: u32::try_from(bytes).unwrap_or(u32::MAX).max(1),
            },
            resync_from: DashMap::new(),
            idle: OnceLock::new(),
            presence: DashMap::new(),
            presence_channels: Arc::from(Vec::new()),
            relay: None,
            user_send: DashMap::new(),
            metrics: Arc::default(),
        }
    }

    /// Keeps members of `channels` (names or `prefix*`) and tells `relay`
    /// of every join and leave here.
    pub(crate) fn with_presence(
        mut self,
        channels: Arc<[String]>,
        relay: Option<PresenceRelay>,
        metrics: Arc<Metrics>,
    ) -> Hub {
        self.presence_channels = channels;
        self.relay = relay.map(RelayFn);
        self.metrics = metrics;
        self
    }

    /// Takes one of `user`'s `send`/`pub` tokens (`rate` a second over all
    /// their connections here, bursts of twice that; 0: no limit); `false`
    /// when none is left.
    pub(crate) fn allow_user_send(&self, user: &UserId, rate: u32, now_ms: u32) -> bool {
        if rate == 0 {
            return true;
        }
        // The user's bucket, once made, is found without cloning the id.
        if let Some(mut b) = self.user_send.get_mut(user) {
            return b.allow(rate, now_ms);
        }
        self.user_send
            .entry(user.clone())
            .or_insert_with(|| Bucket::new(rate, now_ms))
            .allow(rate, now_ms)
    }

    /// Whether `channel` has presence.
    pub(crate) fn has_presence(&self, channel: &str) -> bool {
        crate::config::matches_any(&self.presence_channels, channel)
    }

    /// Members of `channel` here after user `after` (all when `None`), at
    /// most `limit`, in user order.
    pub(crate) fn members(&self, channel: &str, after: Option<&str>, limit: usize) -> MembersPage {
        use std::ops::Bound;
        let Some(p) = self.presence.get(channel) else {
            return MembersPage::default();
        };
        let start = match after {
            Some(a) => Bound::Excluded(UserId::new(a)),
            None => Bound::Unbounded,
        };
        let mut range = p.members.range((start, Bound::Unbounded));
        let users: Vec<PresentUser> = range
            .by_ref()
            .take(limit)
            .map(|(user, n)| PresentUser {
                user: user.clone(),
                connections: *n,
            })
            .collect();
        let more = range.next().is_some();
        MembersPage { users, more }
    }

    /// Queues a `join` (or `leave`) to the watchers of its channel here,
    /// except `except`; returns how many got it.
    pub(crate) fn presence_event(
        &self,
        join: bool,
        change: &PresenceChange,
        except: Option<ConnId>,
    ) -> u64 {
        let m = &*self.metrics;
        let Some(p) = self.presence.get(change.channel.as_str()) else {
            return 0;
        };
        if p.watchers.keys().all(|id| Some(*id) == except) {
            return 0;
        }
        let change = Box::new(change.clone());
        let frame = if join {
            ServerFrame::Join(change)
        } else {
            ServerFrame::Leave(change)
        };
        let Some(push) = Push::frame(&frame, except) else {
            return 0;
        };
        let mut n = 0;
        for c in p.watchers.values() {
            if except == Some(c.id) {
                continue;
            }
            match c.try_push_lossy(&push, self.queue_limit) {
                Queued::Yes => n += 1,
                Queued::Skipped => m.dropped(DropWhy::PresenceSkipped),
                Queued::Closed | Queued::Full => m.dropped(DropWhy::Closed),
            }
        }
        metrics::add(&m.presence_events, n);
        n
    }

    /// `conn` of `user` became a member of `channel` (a presence channel);
    /// `watch`: it wants the events. Tells the others.
    fn join(&self, channel: &Arc<str>, user: &UserId, conn: &Arc<Conn>, watch: bool) {
        {
            let mut p = self.presence.entry(Arc::clone(channel)).or_default();
            *p.members.entry(user.clone()).or_insert(0) += 1;
            if watch {
                p.watchers.insert(conn.id, Arc::clone(conn));
            }
        }
        self.announce(true, channel, user, conn);
    }

    /// `conn` of `user` left `channel`; tells the others when the channel
    /// has presence.
    fn leave(&self, channel: &str, user: &UserId, conn: &Arc<Conn>) {
        let empty = match self.presence.get_mut(channel) {
            Some(mut p) => {
                if let Some(n) = p.members.get_mut(user) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        p.members.remove(user);
                    }
                }
                p.watchers.remove(&conn.id);
                p.members.is_empty()
            }
            None => return,
        };
        if empty {
            self.presence
                .remove_if(channel, |_, p| p.members.is_empty());
        }
        self.announce(false, channel, user, conn);
    }

    fn announce(&self, join: bool, channel: &str, user: &UserId, conn: &Conn) {
        let watched = self
            .presence
            .get(channel)
            .is_some_and(|p| p.watchers.keys().any(|id| *id != conn.id));
        if !watched && self.relay.is_none() {
            // No one to tell: build nothing.
            return;
        }
        let change = PresenceChange {
            channel: channel.to_owned(),
            user: user.clone(),
            device: conn
                .device
                .as_deref()
                .unwrap_or(crate::shared::DEFAULT_DEVICE)
                .to_owned(),
        };
        self.presence_event(join, &change, Some(conn.id));
        if let Some(relay) = &self.relay {
            (relay.0)(join, &change);
        }
    }

    /// Watches `conn` for silence past `idle_limit` (the same for every
    /// connection of a room): see [`IdleWheel`]. The wheel's sweeper starts
    /// on the current runtime with the first connection.
    pub(crate) fn watch_idle(&self, conn: &Arc<Conn>, idle_limit: Duration) {
        self.idle
            .get_or_init(|| IdleWheel::start(idle_limit))
            .watch(conn);
    }

    /// The idle wheel's current tick, for [`Conn::touch`].
    pub(crate) fn idle_now(&self) -> u32 {
        self.idle.get().map_or(0, |w| w.now())
    }

    /// Authenticated connections.
    pub(crate) fn connections(&self) -> u64 {
        self.conns.len() as u64
    }

    /// Distinct users with at least one connection.
    pub(crate) fn users(&self) -> u64 {
        self.users.len() as u64
    }

    /// Channels with at least one subscriber.
    pub(crate) fn channels(&self) -> u64 {
        self.channels.len() as u64
    }

    /// Calls `f` with each connection of `user`, as the directory records
    /// it. `f` runs under the user's entry lock: it must not block.
    pub(crate) fn each_session(&self, user: &UserId, mut f: impl FnMut(crate::SessionInfo)) {
        if let Some(conns) = self.users.get(user) {
            for c in conns.iter() {
                f(session_info(user, c));
            }
        }
    }

    /// Whether `user` has a connection here.
    pub(crate) fn is_online(&self, user: &UserId) -> bool {
        self.users.get(user).is_some_and(|c| !c.is_empty())
    }

    /// Every connection whose user passes `keep`, as the directory records it.
    pub(crate) fn snapshot(
        &self,
        mut keep: impl FnMut(&UserId) -> bool,
    ) -> Vec<crate::SessionInfo> {
        let mut out = Vec::new();
        for entry in &self.users {
            if !keep(entry.key()) {
                continue;
            }
            out.extend(entry.value().iter().map(|c| session_info(entry.key(), c)));
        }
        out
    }

    /// Adds `conn` of `user` to the indexes, unless `user` already has
    /// `cap` connections here (`cap == 0`: no limit): then `Err(cap)`.
    /// Checked and added under the user's entry lock, so concurrent logins
    /// cannot both pass. The returned guard removes the connection from
    /// every index when dropped.
    pub(crate) fn register<'h>(
        &'h self,
        user: &'h UserId,
        conn: Arc<Conn>,
        cap: usize,
    ) -> Result<Registration<'h>, usize> {
        {
            let mut list = self.users.entry(user.clone()).or_default();
            if cap > 0 && list.len() >= cap {
                return Err(cap);
            }
            list.push(Arc::clone(&conn));
        }
        self.conns.insert(conn.id, Arc::clone(&conn));
        Ok(Registration {
            hub: self,
            conn,
            user,
            channels: None,
        })
    }

    /// Queues `msg` to `c` (never to the connection it names as its
    /// sender); 1 when queued, 0 when not (counted as a drop).
    pub(crate) fn push_to(&self, c: &Conn, msg: &Arc<Push>, m: &Metrics) -> u64 {
        if msg.except == Some(c.id) {
            return 0;
        }
        match c.try_push(msg, self.queue_limit) {
            Queued::Yes => 1,
            Queued::Full => {
                metrics::inc(&m.queue_full);
                m.dropped(DropWhy::QueueFull);
                0
            }
            // `try_push` never skips; counted as closed should it ever.
            Queued::Closed | Queued::Skipped => {
                m.dropped(DropWhy::Closed);
                0
            }
        }
    }

    /// Queues `msg` to every connection of each user; returns connections written.
    pub(crate) fn deliver_users(&self, users: &[UserId], msg: &Arc<Push>, m: &Metrics) -> u64 {
        let mut n = 0;
        for u in users {
            if let Some(list) = self.users.get(u) {
                for c in list.iter() {
                    n += self.push_to(c, msg, m);
                }
            }
        }
        metrics::add(&m.deliveries, n);
        n
    }

    /// Queues `msg` to every subscriber of `channel`; returns connections written.
    pub(crate) fn publish(&self, channel: &str, msg: &Arc<Push>, m: &Metrics) -> u64 {
        let mut n = 0;
        if let Some(subs) = self.channels.get(channel) {
            for c in subs.values() {
                n += self.push_to(c, msg, m);
            }
        }
        metrics::add(&m.deliveries, n);
        n
    }

    /// Every authenticated connection now: what a broadcast goes to (see
    /// [`crate::broadcasts::fan_out`]). One `Arc` clone per connection.
    pub(crate) fn all_conns(&self) -> Vec<Arc<Conn>> {
        let mut all = Vec::with_capacity(self.conns.len());
        all.extend(self.conns.iter().map(|e| Arc::clone(e.value())));
        all
    }

    /// Signals every connection of `user`; returns how many were newly told.
    pub(crate) fn signal_user(&self, user: &UserId, why: Signal) -> u64 {
        // Collect first: never call out while holding a shard lock longer than needed.
        let list: SmallVec<[Arc<Conn>; 4]> = match self.users.get(user) {
            Some(l) => l.iter().cloned().collect(),
            None => return 0,
        };
        list.iter().filter(|c| c.signal(why)).count() as u64
    }

    /// Asks every connection of these users to replay its user's stored
    /// messages after `after` (or after the last stored id it sent, whichever
    /// is lower) before it writes anything queued from now on. Requests
    /// merge (the lowest `after` wins). Returns how many were asked.
    pub(crate) fn resync_users(&self, users: &[UserId], after: MsgId) -> u64 {
        let mut n = 0;
        for u in users {
            let list: SmallVec<[Arc<Conn>; 4]> = match self.users.get(u) {
                Some(l) => l.iter().cloned().collect(),
                None => continue,
            };
            n += list.iter().filter(|c| self.resync_conn(c, after)).count() as u64;
        }
        n
    }

    fn resync_conn(&self, c: &Conn, after: MsgId) -> bool {
        // The id first, then the flag: the session takes the id after it
        // sees the flag.
        self.resync_later(c.id, after);
        if c.request_resync() {
            return true;
        }
        self.resync_from.remove(&c.id);
        false
    }

    /// Records that connection `id` must replay from `from` (at most) at
    /// its next resync, without asking for it yet (a replay put off).
    pub(crate) fn resync_later(&self, id: ConnId, from: MsgId) {
        self.resync_from
            .entry(id)
            .and_modify(|a| *a = (*a).min(from))
            .or_insert(from);
    }

    /// Where connection `id` resyncs from (at most), taken by its session
    /// when it pops [`Popped::Resync`].
    pub(crate) fn take_resync(&self, id: ConnId) -> Option<MsgId> {
        self.resync_from.remove(&id).map(|(_, a)| a)
    }

    /// Asks every connection whose user passes `pick` to resync after
    /// `after`; returns how many were asked. Visits every user: for rare
    /// repairs (a register refilled after a fault), not per message.
    pub(crate) fn resync_where(&self, mut pick: impl FnMut(&UserId) -> bool, after: MsgId) -> u64 {
        let mut list: Vec<Arc<Conn>> = Vec::new();
        for entry in &self.users {
            if pick(entry.key()) {
                list.extend(entry.value().iter().cloned());
            }
        }
        list.iter().filter(|c| self.resync_conn(c, after)).count() as u64
    }

    /// Signals every authenticated connection; returns how many were newly told.
    pub(crate) fn signal_all(&self, why: Signal) -> u64 {
        let mut n = 0;
        for e in self.conns.iter() {
            if e.value().signal(why) {
                n += 1;
            }
        }
        n
    }
}

/// Result of a subscription attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Subscribed {
    /// Newly subscribed.
    Added,
    /// Was already subscribed.
    Already,
    /// The per-connection channel limit is reached.
    TooMany,
}

/// One connection's presence in the hub; dropping it removes the connection
/// from every index, on every exit path (return, `?`, panic).
#[derive(Debug)]
pub(crate) struct Registration<'h> {
    hub: &'h Hub,
    conn: Arc<Conn>,
    user: &'h UserId,
    /// Channels this connection is subscribed to (few: bounded by
    /// `max_channels`); boxed, and only once it subscribes: most
    /// connections never do, and the session keeps this all its life.
    /// (A `Box<[_]>` would take 16 bytes here, a `Vec` 24: this 8.)
    #[allow(clippy::box_collection)]
    channels: Option<Box<Vec<Arc<str>>>>,
}

impl Registration<'_> {
    /// Subscribes the connection to `channel`, at most `max` channels in all.
    /// On a channel with presence the connection becomes a member (the
    /// others get a `join`), and with `watch` it gets their joins and
    /// leaves from now on.
    pub(crate) fn subscribe(&mut self, channel: &str, max: usize, watch: bool) -> Subscribed {
        let list = self.channels.get_or_insert_default();
        if list.iter().any(|c| &**c == channel) {
            if watch {
                // Asking for events on a channel already subscribed.
                if let Some(mut p) = self.hub.presence.get_mut(channel) {
                    p.watchers.insert(self.conn.id, Arc::clone(&self.conn));
                }
            }
            return Subscribed::Already;
        }
        if list.len() >= max {
            return Subscribed::TooMany;
        }
        let name: Arc<str> = Arc::from(channel);
        self.hub
            .channels
            .entry(Arc::clone(&name))
            .or_default()
            .insert(self.conn.id, Arc::clone(&self.conn));
        if self.hub.has_presence(channel) {
            self.hub.join(&name, self.user, &self.conn, watch);
        }
        list.push(name);
        Subscribed::Added
    }

    /// Whether the connection is subscribed to `channel`.
    pub(crate) fn is_subscribed(&self, channel: &str) -> bool {
        self.channels
            .as_ref()
            .is_some_and(|l| l.iter().any(|c| &**c == channel))
    }

    /// Unsubscribes; returns whether it was subscribed.
    pub(crate) fn unsubscribe(&mut self, channel: &str) -> bool {
        let Some(list) = self.channels.as_mut() else {
            return false;
        };
        let Some(i) = list.iter().position(|c| &**c == channel) else {
            return false;
        };
        let name = list.swap_remove(i);
        if list.is_empty() {
            self.channels = None;
        }
        self.hub.remove_from_channel(&name, self.conn.id);
        self.hub.leave(&name, self.user, &self.conn);
        true
    }
}

impl Hub {
    fn remove_from_channel(&self, name: &str, id: ConnId) {
        let empty = match self.channels.get_mut(name) {
            Some(mut subs) => {
                subs.remove(&id);
                if subs.capacity() > 64 && subs.len() < subs.capacity() / 4 {
                    subs.shrink_to_fit();
                }
                subs.is_empty()
            }
            None => false,
        };
        if empty {
            self.channels.remove_if(name, |_, subs| subs.is_empty());
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let id = self.conn.id;
        for name in self.channels.take().into_iter().flat_map(|l| *l) {
            self.hub.remove_from_channel(&name, id);
            self.hub.leave(&name, self.user, &self.conn);
        }
        let empty = match self.hub.users.get_mut(self.user) {
            Some(mut list) => {
                list.retain(|c| c.id != id);
                list.is_empty()
            }
            None => false,
        };
        if empty {
            self.hub.users.remove_if(self.user, |_, l| l.is_empty());
            self.hub.user_send.remove(self.user);
        }
        self.hub.conns.remove(&id);
        self.hub.resync_from.remove(&id);
    }
}

/// Inbound token bucket: `rate` frames per second, burst `2 × rate`.
/// Eight bytes: times are the room's wrapping millisecond clock
/// ([`crate::shared::Shared::clock_ms`]); a gap of more than 49 days between two frames
/// (impossible under the heartbeat) would only refill less.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f32,
    last_ms: u32,
}

impl Bucket {
    pub(crate) fn new(rate: u32, now_ms: u32) -> Bucket {
        Bucket {
            tokens: 2.0 * rate as f32,
            last_ms: now_ms,
        }
    }

    /// Takes one token; `false` when the bucket is empty. `rate == 0` is unlimited.
    pub(crate) fn allow(&mut self, rate: u32, now_ms: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = rate as f32;
        let elapsed = now_ms.wrapping_sub(self.last_ms) as f32 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(2.0 * rate);
        self.last_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Marks [`Conn::seen`] once the idle wheel found the connection silent
/// past the idle limit.
const EXPIRED: u32 = 1 << 31;

/// One coarse timer for every connection's idle deadline (2 × heartbeat),
/// instead of a tokio `Sleep` (about 120 B with its deadline) in every
/// session.
///
/// Time is counted in ticks of `idle_limit / 8`, at least 10 ms and at
/// most 1 s (or `idle_limit / 1024` for idle limits over 17 minutes). A
/// connection records the tick of its last inbound frame in
/// [`Conn::seen`] (one atomic store, no timer to re-arm); the wheel keeps a
/// weak handle to it in the slot of the tick its deadline falls in. Each
/// tick the sweeper visits only that slot: a connection seen since is moved
/// to the slot of its new deadline, a silent one is marked expired and
/// woken, a finished one is dropped. So a tick costs O(connections due),
/// each connection is visited about once per idle limit, and a connection
/// costs the wheel one pointer.
///
/// A deadline is never early and at most two ticks late (2 s with the
/// default heartbeat of 30 s, 75 ms with a 150 ms one).
#[derive(Debug)]
pub(crate) struct IdleWheel {
    /// Length of a tick.
    tick: Duration,
    /// When tick 0 began.
    start: Instant,
    /// Ticks a connection may stay silent, rounded up, plus one: `seen` is
    /// the tick a frame arrived in, not the instant.
    limit: u32,
    /// The current tick, as the sweeper last advanced it.
    now: AtomicU64,
    /// `limit + 2` slots: every deadline lies less than one turn ahead.
    slots: Box<[Mutex<Vec<Weak<Conn>>>]>,
}

impl IdleWheel {
    /// A wheel for an idle limit of `idle`, with its sweeper task spawned
    /// on the current runtime; the sweeper ends when the wheel is dropped.
    fn start(idle: Duration) -> Arc<IdleWheel> {
        // At most about 1 s a tick, and at most about 1 026 slots.
        let mut tick = (idle / 8).max(Duration::from_millis(10));
        if tick > Duration::from_secs(1) {
            tick = (idle / 1024).max(Duration::from_secs(1));
        }
        let ticks = idle.as_nanos().div_ceil(tick.as_nanos().max(1));
        let limit = u32::try_from(ticks)
            .unwrap_or(u32::MAX / 4)
            .min(EXPIRED / 4)
            + 1;
        let slots = (0..limit as usize + 2)
            .map(|_| Mutex::new(Vec::new()))
            .collect();
        let wheel = Arc::new(IdleWheel {
            tick,
            start: Instant::now(),
            limit,
            now: AtomicU64::new(0),
            slots,
        });
        tokio::spawn(sweep(Arc::downgrade(&wheel)));
        wheel
    }

    /// The current tick, as [`Conn::seen`] records it (31 bits, wrapping).
    pub(crate) fn now(&self) -> u32 {
        short(self.now.load(Ordering::Acquire))
    }

    /// The slot of tick `t`.
    fn slot(&self, t: u64) -> &Mutex<Vec<Weak<Conn>>> {
        // The remainder is below the slot count, a `usize`.
        &self.slots[(t % self.slots.len() as u64) as usize]
    }

    /// Starts watching `conn`, as if a frame had just arrived.
    pub(crate) fn watch(&self, conn: &Arc<Conn>) {
        let now = self.now.load(Ordering::Acquire);
        conn.seen.store(short(now), Ordering::Release);
        self.slot(now + u64::from(self.limit))
            .lock()
            .push(Arc::downgrade(conn));
    }

    /// Advances to the tick of the present and visits the slots passed.
    fn advance(&self) {
        let elapsed = self.start.elapsed().as_nanos() / self.tick.as_nanos().max(1);
        let t = u64::try_from(elapsed).unwrap_or(u64::MAX);
        let prev = self.now.swap(t, Ordering::AcqRel);
        // Bounded: at most one turn of the wheel.
        let passed = t.saturating_sub(prev).min(self.slots.len() as u64);
        for back in (0..passed).rev() {
            self.visit(t - back, t);
        }
    }

    /// Visits the connections in the slot of tick `s`, the present being `t`.
    fn visit(&self, s: u64, t: u64) {
        let due = std::mem::take(&mut *self.slot(s).lock());
        for weak in due {
            let Some(conn) = weak.upgrade() else {
                continue;
            };
            // Bounded: a failed exchange means a frame just moved `seen`.
            loop {
                let seen = conn.seen.load(Ordering::Acquire);
                if seen & EXPIRED != 0 {
                    break;
                }
                // Ticks in `seen` wrap at 2^31: differences are taken modulo 2^31.
                let ahead = seen.wrapping_add(self.limit).wrapping_sub(short(t)) & !EXPIRED;
                if ahead != 0 && (ahead as usize) < self.slots.len() {
                    self.slot(t + u64::from(ahead)).lock().push(weak);
                    break;
                }
                let marked = seen | EXPIRED;
                if conn
                    .seen
                    .compare_exchange(seen, marked, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    conn.wake();
                    break;
                }
            }
        }
    }
}

/// Advances `wheel` every tick until it is dropped.
async fn sweep(wheel: Weak<IdleWheel>) {
    let Some(tick) = wheel.upgrade().map(|w| w.tick) else {
        return;
    };
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded by the wheel's life: it ends once the room is dropped.
    loop {
        every.tick().await;
        let Some(w) = wheel.upgrade() else {
            return;
        };
        w.advance();
    }
}

/// A tick as [`Conn::seen`] holds it: the low 31 bits.
fn short(t: u64) -> u32 {
    // Masked to 31 bits first, so the cast keeps every bit.
    (t & u64::from(!EXPIRED)) as u32
}

/// A registered connection of `user` as the directory records it.
fn session_info(user: &UserId, c: &Conn) -> crate::SessionInfo {
    crate::SessionInfo {
        conn: c.id,
        user: user.clone(),
        device: c.device.clone().unwrap_or_else(|| Arc::from("")),
        since: c.since,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proto::RoomId;

    fn push(id: i64) -> Arc<Push> {
        Arc::new(Push {
            id: MsgId(id),
            except: None,
            replayable: true,
            text: Utf8Bytes::from("{}"),
            bin: Bytes::new(),
            bin_prefix: SmallVec::new(),
            weight: 2,
            gone: None,
        })
    }

    #[test]
    fn registration_drop_cleans_every_index() {
        let hub = Hub::new(4, 1 << 20);
        let m = Metrics::default();
        let c1 = Arc::new(Conn::new(ConnId::new(RoomId(1), 1)));
        let c2 = Arc::new(Conn::new(ConnId::new(RoomId(1), 2)));
        let u = UserId::new("u");
        let mut r1 = hub.register(&u, Arc::clone(&c1), 0).unwrap();
        let r2 = hub.register(&u, Arc::clone(&c2), 0).unwrap();
        assert_eq!(r1.subscribe("news", 2, false), Subscribed::Added);
        assert_eq!(r1.subscribe("news", 2, false), Subscribed::Already);
        assert_eq!(r1.subscribe("sport", 2, false), Subscribed::Added);
        assert_eq!(r1.subscribe("x", 2, false), Subscribed::TooMany);
        assert_eq!((hub.connections(), hub.users(), hub.channels()), (2, 1, 2));
        assert_eq!(hub.deliver_users(std::slice::from_ref(&u), &push(1), &m), 2);
        assert_eq!(hub.publish("news", &push(2), &m), 1);
        drop(r1);
        assert_eq!((hub.connections(), hub.users(), hub.channels()), (1, 1, 0));
        drop(r2);
        assert_eq!((hub.connections(), hub.users(), hub.channels()), (0, 0, 0));
        assert_eq!(hub.deliver_users(&[u], &push(3), &m), 0);
    }

    #[test]
    fn full_queue_marks_slow_and_signal_wins_over_messages() {
        let c = Conn::new(ConnId(1));
        let p = push(1);
        let lim = QueueLimit {
            count: 2,
            bytes: 1 << 20,
        };
        assert_eq!(c.try_push(&p, lim), Queued::Yes);
        assert_eq!(c.try_push(&p, lim), Queued::Yes);
        assert_eq!(c.try_push(&p, lim), Queued::Full);
        assert_eq!(c.try_push(&p, lim), Queued::Closed);
        assert!(matches!(c.pop(), Popped::Signal(Signal::SlowConsumer)));
        assert!(!c.signal(Signal::Kicked), "first signal wins");
    }

    #[test]
    fn pop_is_fifo_and_releases_memory() {
        let c = Conn::new(ConnId(1));
        let lim = QueueLimit {
            count: 100,
            bytes: 1 << 20,
        };
        for i in 0..20 {
            assert_eq!(c.try_push(&push(i), lim), Queued::Yes);
        }
        for i in 0..20 {
            match c.pop() {
                Popped::Msg(p) => assert_eq!(p.id, MsgId(i)),
                other => panic!("expected message {i}, got {other:?}"),
            }
            assert_eq!(c.has_queued(), i < 19);
        }
        assert!(matches!(c.pop(), Popped::Empty));
        assert_eq!(c.outbox.lock().queue.capacity(), 0);
    }

    fn sized(id: i64, len: usize) -> Arc<Push> {
        Arc::new(Push {
            id: MsgId(id),
            except: None,
            replayable: true,
            text: Utf8Bytes::from("x".repeat(len)),
            gone: None,
            bin: Bytes::new(),
            bin_prefix: SmallVec::new(),
            weight: u32::try_from(len).unwrap(),
        })
    }

    #[test]
    fn queue_is_bounded_in_bytes_and_frees_them_when_full() {
        let c = Conn::new(ConnId(1));
        let lim = QueueLimit {
            count: 1000,
            bytes: 1000,
        };
        // A message larger than the bound alone in the queue is taken.
        assert_eq!(c.try_push(&sized(1, 5000), lim), Queued::Yes);
        assert!(matches!(c.pop(), Popped::Msg(_)));
        assert_eq!(c.outbox.lock().bytes, 0);
        for i in 0..3 {
            assert_eq!(c.try_push(&sized(i, 300), lim), Queued::Yes);
        }
        assert_eq!(c.outbox.lock().bytes, 900);
        assert_eq!(c.try_push(&sized(9, 300), lim), Queued::Full);
        assert!(matches!(c.pop(), Popped::Signal(Signal::SlowConsumer)));
        let o = c.outbox.lock();
        assert_eq!((o.queue.len(), o.queue.capacity(), o.bytes), (0, 0, 0));
    }

    /// The text of the next queued frame of `c`, if any.
    fn next_text(c: &Conn) -> Option<String> {
        match c.pop() {
            Popped::Msg(p) => Some(p.text.as_str().to_owned()),
            _ => None,
        }
    }

    #[test]
    fn presence_keeps_members_and_tells_watchers_of_the_others() {
        let relayed = Arc::new(Mutex::new(Vec::new()));
        let r = Arc::clone(&relayed);
        let relay: PresenceRelay = Arc::new(move |join, c: &PresenceChange| {
            r.lock().push((join, c.user.to_string()));
        });
        let hub = Hub::new(10, 1 << 20).with_presence(
            Arc::from(vec!["room:*".to_owned()]),
            Some(relay),
            Arc::default(),
        );
        let dev: Arc<str> = Arc::from("phone");
        let conn = |n| Arc::new(Conn::new(ConnId(n)).with_meta(&dev, 0));
        let (a, b1, b2) = (conn(1), conn(2), conn(3));
        let (ua, ub) = (UserId::new("a"), UserId::new("b"));
        let mut ra = hub.register(&ua, Arc::clone(&a), 0).unwrap();
        let mut rb1 = hub.register(&ub, Arc::clone(&b1), 0).unwrap();
        let mut rb2 = hub.register(&ub, Arc::clone(&b2), 0).unwrap();
        assert_eq!(ra.subscribe("room:1", 4, true), Subscribed::Added);
        assert_eq!(next_text(&a), None, "no join of its own");
        assert_eq!(rb1.subscribe("room:1", 4, false), Subscribed::Added);
        assert_eq!(rb2.subscribe("room:1", 4, false), Subscribed::Added);
        let join = r#"{"op":"join","channel":"room:1","user":"b","device":"phone"}"#;
        assert_eq!(next_text(&a).as_deref(), Some(join));
        assert_eq!(next_text(&a).as_deref(), Some(join));
        assert_eq!(next_text(&b1), None, "not watching");
        // Members in user order, paged.
        let page = hub.members("room:1", None, 1);
        assert_eq!((page.users.len(), page.more), (1, true));
        assert_eq!(
            (page.users[0].user.as_str(), page.users[0].connections),
            ("a", 1)
        );
        let page = hub.members("room:1", Some("a"), 10);
        assert_eq!(
            (page.users[0].user.as_str(), page.users[0].connections),
            ("b", 2)
        );
        assert!(!page.more);
        // Channels without presence keep nothing.
        assert_eq!(rb1.subscribe("news", 4, true), Subscribed::Added);
        assert_eq!(hub.members("news", None, 10), MembersPage::default());
        // Leaving: unsub, then the registration's end.
        assert!(rb1.unsubscribe("room:1"));
        let leave = r#"{"op":"leave","channel":"room:1","user":"b","device":"phone"}"#;
        assert_eq!(next_text(&a).as_deref(), Some(leave));
        drop(rb2);
        assert_eq!(next_text(&a).as_deref(), Some(leave));
        assert_eq!(hub.members("room:1", None, 10).users.len(), 1);
        drop(ra);
        assert!(hub.presence.is_empty(), "an empty channel is forgotten");
        let want: Vec<(bool, String)> = [
            (true, "a"),
            (true, "b"),
            (true, "b"),
            (false, "b"),
            (false, "b"),
            (false, "a"),
        ]
        .map(|(j, u)| (j, u.to_owned()))
        .into();
        assert_eq!(*relayed.lock(), want);
        drop(rb1);
    }

    #[test]
    fn a_burst_of_joins_skips_a_full_watcher_instead_of_closing_it() {
        let hub = Hub::new(2, 1 << 20).with_presence(
            Arc::from(vec!["room:*".to_owned()]),
            None,
            Arc::default(),
        );
        let dev: Arc<str> = Arc::from("d");
        let w = Arc::new(Conn::new(ConnId(1)).with_meta(&dev, 0));
        let uw = UserId::new("w");
        let mut rw = hub.register(&uw, Arc::clone(&w), 0).unwrap();
        assert_eq!(rw.subscribe("room:1", 4, true), Subscribed::Added);
        let users: Vec<UserId> = (0..5).map(|i| UserId::new(&format!("u{i}"))).collect();
        let mut regs = Vec::new();
        for (i, u) in users.iter().enumerate() {
            let c = Arc::new(Conn::new(ConnId(10 + i as u64)).with_meta(&dev, 0));
            let mut r = hub.register(u, c, 0).unwrap();
            assert_eq!(r.subscribe("room:1", 4, false), Subscribed::Added);
            regs.push(r);
        }
        // Two fit the queue; three are skipped; the watcher stays open.
        assert!(next_text(&w).is_some_and(|t| t.contains("\"u0\"")));
        assert!(next_text(&w).is_some_and(|t| t.contains("\"u1\"")));
        assert!(matches!(w.pop(), Popped::Empty));
        assert_eq!(w.closing(), None);
        assert_eq!(
            hub.members("room:1", None, 10).users.len(),
            6,
            "the list stays exact"
        );
        drop(regs);
    }

    #[test]
    fn resync_goes_before_queued_messages_and_merges_to_the_lowest() {
        let hub = Hub::new(10, 1 << 20);
        let m = Metrics::default();
        let c = Arc::new(Conn::new(ConnId(1)));
        let u = UserId::new("u");
        let reg = hub.register(&u, Arc::clone(&c), 0).unwrap();
        assert_eq!(hub.deliver_users(std::slice::from_ref(&u), &push(7), &m), 1);
        for after in [5, 3, 4] {
            assert_eq!(hub.resync_users(std::slice::from_ref(&u), MsgId(after)), 1);
        }
        assert!(c.has_queued());
        assert!(matches!(c.pop(), Popped::Resync));
        assert_eq!(hub.take_resync(c.id), Some(MsgId(3)));
        assert_eq!(hub.take_resync(c.id), None);
        assert!(matches!(c.pop(), Popped::Msg(p) if p.id == MsgId(7)));
        assert!(matches!(c.pop(), Popped::Empty));
        assert!(c.signal(Signal::Kicked));
        assert_eq!(
            hub.resync_users(std::slice::from_ref(&u), MsgId(1)),
            0,
            "a closing connection is not resynced"
        );
        assert!(hub.resync_from.is_empty());
        assert_eq!(hub.resync_users(std::slice::from_ref(&u), MsgId(1)), 0);
        drop(reg);
        assert!(hub.resync_from.is_empty());
    }

    #[test]
    fn resync_reaches_only_the_users_asked() {
        let hub = Hub::new(4, 1 << 20);
        let a = Arc::new(Conn::new(ConnId(1)));
        let b = Arc::new(Conn::new(ConnId(2)));
        let (ua, ub) = (UserId::new("a"), UserId::new("b"));
        let _ra = hub.register(&ua, Arc::clone(&a), 0).unwrap();
        let rb = hub.register(&ub, Arc::clone(&b), 0).unwrap();
        assert_eq!(
            hub.resync_users(&[UserId::new("a"), UserId::new("z")], MsgId(1)),
            1
        );
        assert!(matches!(a.pop(), Popped::Resync));
        assert!(matches!(b.pop(), Popped::Empty));
        assert_eq!(hub.resync_where(|u| u.as_str() == "b", MsgId(2)), 1);
        assert!(matches!(a.pop(), Popped::Empty));
        assert!(matches!(b.pop(), Popped::Resync));
        assert_eq!(hub.take_resync(b.id), Some(MsgId(2)));
        // A registration that ends forgets its pending resync.
        assert_eq!(hub.resync_where(|u| u.as_str() == "b", MsgId(2)), 1);
        drop(rb);
        assert_eq!(hub.take_resync(b.id), None);
    }

    #[test]
    fn unsubscribe_removes_empty_channel() {
        let hub = Hub::new(4, 1 << 20);
        let c = Arc::new(Conn::new(ConnId(9)));
        let u = UserId::new("u");
        let mut r = hub.register(&u, c, 0).unwrap();
        assert_eq!(r.subscribe("a", 4, false), Subscribed::Added);
        assert!(r.unsubscribe("a"));
        assert!(!r.unsubscribe("a"));
        assert_eq!(hub.channels(), 0);
    }
}
