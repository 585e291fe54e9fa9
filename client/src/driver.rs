//! The client's task: connect, authenticate, run the session (heartbeat,
//! messages, subscriptions, acks), and when it ends wait and reconnect to the
//! next server URL, resuming with `last_id`.
//!
//! One `select!` loop per session. An event waiting for room in the bounded
//! [`Events`](crate::Events) channel stops reading from the server, but not
//! pinging, acking or obeying commands, so a slow application meets the
//! server's slow-consumer limit rather than a heartbeat timeout.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proto::{ClientFrame, MsgId, ServerFrame};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backoff::{server_delay, Backoff};
use crate::dedupe::RecentIds;
use crate::event::{Connected, Disconnected, Event, Message};
use crate::transport::{Closed, Conn, Dialer};
use crate::url::ServerUrl;
use crate::{Command, Shared, TokenFuture, TokenProvider};

/// The close code of a draining (or overloaded) server.
const DRAINING: u16 = 4007;

/// How long a polite close or a last ack may take when stopping.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// `send`/`pub` waiting for an answer at most (beyond: `ClientError::Busy`).
const MAX_OUTGOING: usize = 1024;

/// Where a client's message goes.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    User(String),
    Channel(String),
}

/// A `send` or `pub` until the server answers it.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) to: Target,
    pub(crate) data: bytes::Bytes,
    pub(crate) cid: String,
    pub(crate) reply: oneshot::Sender<Result<crate::Sent, crate::ClientError>>,
}

impl Outgoing {
    fn frame(&self, seq: u32) -> ClientFrame {
        match &self.to {
            Target::User(to) => ClientFrame::send(
                Some(seq),
                proto::UserId::new(to),
                self.data.clone(),
                self.cid.clone(),
            ),
            Target::Channel(channel) => ClientFrame::publish(
                Some(seq),
                channel.clone(),
                self.data.clone(),
                self.cid.clone(),
            ),
        }
    }
}

/// Everything the driver is made of.
pub(crate) struct Settings {
    pub(crate) urls: Vec<ServerUrl>,
    pub(crate) token: TokenProvider,
    pub(crate) device: Option<String>,
    pub(crate) last_id: Option<i64>,
    pub(crate) auto_ack: bool,
    pub(crate) ack_interval: Duration,
    pub(crate) subs: Vec<(String, Option<i64>)>,
    pub(crate) backoff: Backoff,
    pub(crate) connect_timeout: Duration,
    pub(crate) dedupe_capacity: usize,
    pub(crate) dialer: Dialer,
    pub(crate) shared: Arc<Shared>,
    pub(crate) cmds: mpsc::Receiver<Command>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) cancel: CancellationToken,
}

/// The client's task and the state that outlives connections.
pub(crate) struct Driver {
    urls: Vec<ServerUrl>,
    next_url: usize,
    token: TokenProvider,
    device: Option<String>,
    auto_ack: bool,
    ack_interval: Duration,
    connect_timeout: Duration,
    backoff: Backoff,
    dialer: Dialer,
    shared: Arc<Shared>,
    cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
    rng: StdRng,
    /// Ids of the recent messages, to drop duplicates.
    recent: RecentIds,
    /// Highest id of a user message received: the `last_id` of the next auth.
    last_id: Option<i64>,
    /// Subscribed channels and the highest id received on each.
    subs: BTreeMap<String, Option<i64>>,
    /// Subscribed channels whose presence events were asked for.
    presence_subs: std::collections::HashSet<String>,
    /// Highest id to ack, and the highest id acked on the wire.
    ack_want: Option<i64>,
    ack_sent: Option<i64>,
    /// `send`/`pub` not written on a live connection yet (offline, or
    /// written on one that ended before the answer), oldest first.
    outbox: std::collections::VecDeque<Outgoing>,
}

/// How a connection attempt or session ended.
enum End {
    /// The client is stopping.
    Stop,
    /// No connection was established.
    ConnectFailed(String),
    /// A connection ended.
    Closed(Closed),
}

/// One connection's state.
struct Live {
    conn: Conn,
    /// The last seq used on this connection (auth is 1).
    seq: u32,
    /// Subscriptions awaiting `sub_ok`, by seq.
    pending_subs: HashMap<u32, String>,
    /// `send`/`pub` written and awaiting their answer, by seq.
    sent: BTreeMap<u32, Outgoing>,
    /// `presence` requests awaiting their answer, by seq (dropped with the
    /// connection: the caller then gets `NotConnected`).
    presence_asked: HashMap<u32, PresenceReply>,
}

/// Where the answer to a `presence` request goes.
type PresenceReply = tokio::sync::oneshot::Sender<Result<proto::PresencePage, crate::ClientError>>;

impl Live {
    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(2);
        self.seq
    }
}

/// What one step of the session loop decided.
enum Step {
    Continue,
    End(End),
}

impl Driver {
    pub(crate) fn new(s: Settings) -> Driver {
        Driver {
            urls: s.urls,
            next_url: 0,
            token: s.token,
            device: s.device,
            auto_ack: s.auto_ack,
            ack_interval: s.ack_interval,
            connect_timeout: s.connect_timeout,
            backoff: s.backoff,
            dialer: s.dialer,
            shared: s.shared,
            cmds: s.cmds,
            events: s.events,
            cancel: s.cancel,
            rng: StdRng::from_os_rng(),
            recent: RecentIds::new(s.dedupe_capacity),
            last_id: s.last_id,
            subs: s.subs.into_iter().collect(),
            presence_subs: std::collections::HashSet::new(),
            ack_want: None,
            ack_sent: None,
            outbox: std::collections::VecDeque::new(),
        }
    }

    /// Connects and reconnects until stopped.
    pub(crate) async fn run(mut self) {
        loop {
            let Some(url) = self
                .urls
                .get(self.next_url % self.urls.len().max(1))
                .cloned()
            else {
                return;
            };
            self.next_url = self.next_url.wrapping_add(1);
            let end = self.attempt(&url).await;
            self.shared.connected.store(false, Ordering::Relaxed);
            let event = match end {
                End::Stop => return,
                End::ConnectFailed(error) => {
                    let retry_in = self.backoff.next_delay(&mut self.rng);
                    debug!(%url, %error, ?retry_in, "connect failed");
                    Event::ConnectFailed {
                        url: url.to_string(),
                        error,
                        retry_in,
                    }
                }
                End::Closed(c) => {
                    let asked = match c.code {
                        Some(DRAINING) => server_delay(&c.reason),
                        _ => None,
                    };
                    let retry_in = match asked {
                        Some(d) => d,
                        None => self.backoff.next_delay(&mut self.rng),
                    };
                    debug!(%url, code = ?c.code, reason = %c.reason, ?retry_in, "disconnected");
                    Event::Disconnected(Disconnected {
                        url: url.to_string(),
                        code: c.code,
                        reason: c.reason,
                        retry_in,
                    })
                }
            };
            let retry_in = match &event {
                Event::ConnectFailed { retry_in, .. } => *retry_in,
                Event::Disconnected(d) => d.retry_in,
                _ => Duration::ZERO,
            };
            if !self.emit(event).await || !self.pause(retry_in).await {
                return;
            }
        }
    }

    /// Hands `event` to the application; false when the client must stop.
    async fn emit(&mut self, event: Event) -> bool {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => false,
            r = self.events.send(event) => r.is_ok(),
        }
    }

    /// Waits `delay` between connections, obeying commands meanwhile; false
    /// when the client must stop.
    async fn pause(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return false,
                cmd = self.cmds.recv() => match cmd {
                    None => return false,
                    Some(cmd) => self.command_offline(cmd),
                },
                _ = sleep_until(until) => return true,
            }
        }
    }

    /// Applies a command while there is no connection.
    fn command_offline(&mut self, cmd: Command) {
        match cmd {
            Command::Sub {
                channel,
                last_id,
                presence,
            } => self.remember_sub(channel, last_id, presence),
            Command::Presence { reply, .. } => {
                let _ = reply.send(Err(crate::ClientError::NotConnected));
            }
            Command::Unsub { channel } => {
                self.presence_subs.remove(&channel);
                self.subs.remove(&channel);
            }
            Command::Ack(id) => self.want_ack(id),
            Command::Flush(reply) => {
                let _ = reply.send(());
            }
            Command::Send(out) => self.queue_outgoing(out),
        }
    }

    /// Keeps `out` for the next connection, unless too many wait.
    fn queue_outgoing(&mut self, out: Outgoing) {
        if self.outbox.len() >= MAX_OUTGOING {
            let _ = out.reply.send(Err(crate::ClientError::Busy(MAX_OUTGOING)));
        } else {
            self.outbox.push_back(out);
        }
    }

    /// Writes `out` on the live connection and remembers it by seq.
    async fn write_outgoing(
        &mut self,
        live: &mut Live,
        out: Outgoing,
        hb: Duration,
    ) -> Result<(), Closed> {
        if live.sent.len() >= MAX_OUTGOING {
            let _ = out.reply.send(Err(crate::ClientError::Busy(MAX_OUTGOING)));
            return Ok(());
        }
        let seq = live.next_seq();
        let frame = out.frame(seq);
        live.sent.insert(seq, out);
        send_timed(&mut live.conn, &frame, hb).await
    }

    /// What a connection that ended had written without an answer goes
    /// back to the front of the outbox, in order, for the next connection.
    fn requeue_sent(&mut self, live: &mut Live) {
        for (_, out) in std::mem::take(&mut live.sent).into_iter().rev() {
            self.outbox.push_front(out);
        }
    }

    fn remember_sub(&mut self, channel: String, last_id: Option<i64>, presence: bool) {
        if presence {
            self.presence_subs.insert(channel.clone());
        }
        let slot = self.subs.entry(channel).or_insert(None);
        if last_id.is_some() {
            *slot = last_id;
        }
    }

    fn want_ack(&mut self, id: i64) {
        self.ack_want = Some(self.ack_want.map_or(id, |a| a.max(id)));
    }

    /// An ack to send now, if one is due.
    fn ack_frame(&mut self) -> Option<ClientFrame> {
        let want = self.ack_want?;
        if self.ack_sent.is_some_and(|s| s >= want) {
            return None;
        }
        self.ack_sent = Some(want);
        Some(ClientFrame::Ack {
            seq: None,
            id: MsgId(want),
        })
    }

    /// Runs `fut` unless the client stops first or it takes longer than the
    /// connect timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, End> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(End::Stop),
            r = timeout(self.connect_timeout, fut) => r.map_err(|_| {
                End::ConnectFailed(format!("{what}: timed out after {:?}", self.connect_timeout))
            }),
        }
    }

    /// One connection: token, connect, auth, session.
    async fn attempt(&mut self, url: &ServerUrl) -> End {
        let token = match self.bounded("token provider", (self.token)()).await {
            Err(end) => return end,
            Ok(Err(e)) => return End::ConnectFailed(format!("token provider: {e}")),
            Ok(Ok(t)) => t,
        };
        let exp = proto::token::unverified_exp(&token);
        let conn = match self.bounded("connect", self.dialer.connect(url)).await {
            Err(end) => return end,
            Ok(Err(e)) => return End::ConnectFailed(e),
            Ok(Ok(c)) => c,
        };
        let mut live = Live {
            conn,
            seq: 1,
            pending_subs: HashMap::new(),
            presence_asked: HashMap::new(),
            sent: BTreeMap::new(),
        };
        let resumed_from = self.last_id;
        let auth = ClientFrame::Auth {
            seq: Some(1),
            token,
            last_id: resumed_from.map(MsgId),
            device: self.device.clone(),
        };
        if let Err(c) = live.conn.send(&auth).await {
            return End::Closed(c);
        }
        let ok = match self.bounded("auth", wait_auth_ok(&mut live.conn)).await {
            Err(End::ConnectFailed(why)) => {
                return End::Closed(Closed {
                    code: None,
                    reason: why,
                })
            }
            Err(end) => {
                live.conn.close(CLOSE_LIMIT).await;
                return end;
            }
            Ok(Err(c)) => return End::Closed(c),
            Ok(Ok(ok)) => ok,
        };
        self.backoff.reset();
        self.shared.connected.store(true, Ordering::Relaxed);
        debug!(%url, conn = ok.conn, user = %ok.user, "connected");
        let heartbeat = ok.heartbeat;
        let event = Event::Connected(Connected {
            url: url.to_string(),
            conn: ok.conn,
            user: ok.user,
            room: ok.room,
            heartbeat,
            resumed_from,
        });
        if !self.emit(event).await {
            live.conn.close(CLOSE_LIMIT).await;
            return End::Stop;
        }
        self.session(live, heartbeat, exp).await
    }

    /// The authenticated session, until it ends. `exp` is the token's:
    /// a new token is asked for and sent with `refresh` before it.
    async fn session(&mut self, mut live: Live, heartbeat: u32, mut exp: Option<u64>) -> End {
        let hb = Duration::from_secs(u64::from(heartbeat.max(1)));
        // Channels first: subscribe again, resuming after the last id seen.
        let subs: Vec<(String, Option<i64>)> =
            self.subs.iter().map(|(c, l)| (c.clone(), *l)).collect();
        for (channel, last_id) in subs {
            if let Err(c) = self.send_sub(&mut live, channel, last_id, hb).await {
                return End::Closed(c);
            }
        }
        if let Some(ack) = self.ack_frame() {
            if let Err(c) = send_timed(&mut live.conn, &ack, hb).await {
                return End::Closed(c);
            }
        }
        // Messages waiting from before (the same cids: delivered once).
        while let Some(out) = self.outbox.pop_front() {
            if let Err(c) = self.write_outgoing(&mut live, out, hb).await {
                self.requeue_sent(&mut live);
                return End::Closed(c);
            }
        }
        let mut ping_at = Instant::now() + hb;
        let mut dead_at = Instant::now() + 2 * hb;
        let mut ack_at: Option<Instant> = None;
        let mut refresh_at = exp.map(refresh_time);
        // The token provider's answer, while a refresh is being prepared.
        let mut fetching: Option<TokenFuture> = None;
        // An event waiting for room in the channel, with the id to ack once delivered.
        let mut pending: Option<(Event, Option<i64>)> = None;
        let end = loop {
            let step = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    if let Some(ack) = self.ack_frame() {
                        let _ = send_timed(&mut live.conn, &ack, CLOSE_LIMIT).await;
                    }
                    live.conn.close(CLOSE_LIMIT).await;
                    return End::Stop;
                }
                permit = self.events.clone().reserve_owned(), if pending.is_some() => match (permit, pending.take()) {
                    (Ok(permit), Some((event, ack))) => {
                        permit.send(event);
                        if let Some(id) = ack {
                            self.want_ack(id);
                            ack_at.get_or_insert_with(|| Instant::now() + self.ack_interval);
                        }
                        // Time spent waiting for the application is not the server's silence.
                        dead_at = dead_at.max(Instant::now() + hb);
                        Step::Continue
                    }
                    _ => Step::End(End::Stop),
                },
                r = live.conn.recv(), if pending.is_none() => match r {
                    Err(c) => Step::End(End::Closed(c)),
                    Ok(frame) => {
                        dead_at = Instant::now() + 2 * hb;
                        self.on_frame(&mut live, frame, &mut pending)
                    }
                },
                cmd = self.cmds.recv() => match cmd {
                    None => Step::End(End::Stop),
                    Some(cmd) => match self.command_online(&mut live, cmd, hb, &mut ack_at).await {
                        Ok(()) => Step::Continue,
                        Err(c) => Step::End(End::Closed(c)),
                    },
                },
                _ = sleep_until(ping_at) => {
                    ping_at = Instant::now() + hb;
                    match send_timed(&mut live.conn, &ClientFrame::Ping { seq: None }, hb).await {
                        Ok(()) => Step::Continue,
                        Err(c) => Step::End(End::Closed(c)),
                    }
                }
                _ = sleep_until(ack_at.unwrap_or(ping_at)), if ack_at.is_some() => {
                    ack_at = None;
                    match self.ack_frame() {
                        None => Step::Continue,
                        Some(ack) => match send_timed(&mut live.conn, &ack, hb).await {
                            Ok(()) => Step::Continue,
                            Err(c) => Step::End(End::Closed(c)),
                        },
                    }
                }
                _ = sleep_until(refresh_at.unwrap_or(ping_at)), if refresh_at.is_some() && fetching.is_none() => {
                    refresh_at = None;
                    fetching = Some((self.token)());
                    Step::Continue
                }
                got = async {
                    match fetching.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if fetching.is_some() => {
                    fetching = None;
                    match got {
                        Ok(token) => match proto::token::unverified_exp(&token) {
                            Some(new) if exp.is_none_or(|old| new > old) => {
                                exp = Some(new);
                                refresh_at = Some(refresh_time(new));
                                let seq = Some(live.next_seq());
                                match send_timed(&mut live.conn, &ClientFrame::Refresh { seq, token }, hb).await {
                                    Ok(()) => Step::Continue,
                                    Err(c) => Step::End(End::Closed(c)),
                                }
                            }
                            // The same token (or an older one): nothing to
                            // send; the connection ends at its expiry and the
                            // next connection asks the provider again.
                            _ => {
                                debug!("the token provider gave no token expiring later: not refreshing");
                                Step::Continue
                            }
                        },
                        Err(e) => {
                            // Asked again after 90 % of what is left.
                            warn!(error = %e, "token provider failed; the token will be asked for again");
                            refresh_at = exp.map(refresh_time);
                            Step::Continue
                        }
                    }
                }
                _ = sleep_until(dead_at), if pending.is_none() => Step::End(End::Closed(Closed {
                    code: None,
                    reason: format!("nothing received for {:?} (2 heartbeats)", 2 * hb),
                })),
            };
            if let Step::End(end) = step {
                break end;
            }
        };
        if matches!(end, End::Stop) {
            live.conn.close(CLOSE_LIMIT).await;
            return End::Stop;
        }
        // Unanswered messages go again, with their cids, on the next connection.
        self.requeue_sent(&mut live);
        // An event already taken from the server is delivered before reconnecting.
        if let Some((event, ack)) = pending.take() {
            if !self.emit(event).await {
                return End::Stop;
            }
            if let Some(id) = ack {
                self.want_ack(id);
            }
        }
        end
    }

    /// Handles one server frame of an authenticated session.
    fn on_frame(
        &mut self,
        live: &mut Live,
        frame: ServerFrame,
        pending: &mut Option<(Event, Option<i64>)>,
    ) -> Step {
        match frame {
            ServerFrame::Msg(m) => {
                let id = m.id.0;
                if !self.recent.insert(id) {
                    debug!(id, "duplicate dropped");
                    return Step::Continue;
                }
                let ack = match &m.channel {
                    None => {
                        let last = self.last_id.map_or(id, |l| l.max(id));
                        self.last_id = Some(last);
                        self.shared.last_id.store(last, Ordering::Relaxed);
                        self.auto_ack.then_some(id)
                    }
                    Some(ch) => {
                        if let Some(slot) = self.subs.get_mut(ch) {
                            *slot = Some(slot.map_or(id, |l| l.max(id)));
                        }
                        None
                    }
                };
                *pending = Some((
                    Event::Message(Message {
                        id,
                        ts: m.ts,
                        channel: m.channel,
                        data: m.data,
                        from: m.sender.as_ref().map(|s| s.user.as_str().to_owned()),
                        cid: m.sender.map(|s| s.cid),
                    }),
                    ack,
                ));
            }
            ServerFrame::SubOk { seq, channel } => {
                if let Some(s) = seq {
                    live.pending_subs.remove(&s);
                }
                *pending = Some((Event::Subscribed { channel }, None));
            }
            ServerFrame::UnsubOk { channel, .. } => {
                *pending = Some((Event::Unsubscribed { channel }, None));
            }
            ServerFrame::Error {
                close: Some(code),
                message,
                ..
            } => {
                return Step::End(End::Closed(Closed {
                    code: Some(code.as_u16()),
                    reason: message,
                }))
            }
            ServerFrame::Error {
                seq: Some(s),
                code,
                message,
                ..
            } if live.presence_asked.contains_key(&s) => {
                if let Some(reply) = live.presence_asked.remove(&s) {
                    let _ = reply.send(Err(crate::ClientError::Refused { code, message }));
                }
            }
            ServerFrame::Error {
                seq: Some(s),
                code,
                message,
                ..
            } if live.sent.contains_key(&s) => {
                if let Some(out) = live.sent.remove(&s) {
                    let _ = out
                        .reply
                        .send(Err(crate::ClientError::Refused { code, message }));
                }
            }
            ServerFrame::Error {
                seq, code, message, ..
            } => {
                let failed = seq.and_then(|s| live.pending_subs.remove(&s));
                let event = match failed {
                    Some(channel) => {
                        self.subs.remove(&channel);
                        self.presence_subs.remove(&channel);
                        Event::SubscribeFailed {
                            channel,
                            code,
                            message,
                        }
                    }
                    None => Event::ServerError { code, message },
                };
                *pending = Some((event, None));
            }
            ServerFrame::RefreshOk { exp, .. } => {
                *pending = Some((Event::TokenRefreshed { exp }, None));
            }
            ServerFrame::SendOk { seq, cid, id } | ServerFrame::PubOk { seq, cid, id } => {
                if let Some(out) = seq.and_then(|s| live.sent.remove(&s)) {
                    let _ = out.reply.send(Ok(crate::Sent { id: id.0, cid }));
                }
            }
            ServerFrame::PresenceOk { seq, page } => {
                if let Some(reply) = seq.and_then(|s| live.presence_asked.remove(&s)) {
                    let _ = reply.send(Ok(*page));
                }
            }
            ServerFrame::Join(c) => *pending = Some((Event::Join(*c), None)),
            ServerFrame::Leave(c) => *pending = Some((Event::Leave(*c), None)),
            ServerFrame::Pong { .. } | ServerFrame::AuthOk { .. } => {}
        }
        Step::Continue
    }

    /// Applies a command on a live connection.
    async fn command_online(
        &mut self,
        live: &mut Live,
        cmd: Command,
        hb: Duration,
        ack_at: &mut Option<Instant>,
    ) -> Result<(), Closed> {
        match cmd {
            Command::Sub {
                channel,
                last_id,
                presence,
            } => {
                self.remember_sub(channel.clone(), last_id, presence);
                let last_id = self.subs.get(&channel).copied().flatten();
                self.send_sub(live, channel, last_id, hb).await
            }
            Command::Presence { channel, reply } => {
                let seq = live.next_seq();
                live.presence_asked.insert(seq, reply);
                let f = ClientFrame::Presence {
                    seq: Some(seq),
                    channel,
                };
                send_timed(&mut live.conn, &f, hb).await
            }
            Command::Unsub { channel } => {
                self.presence_subs.remove(&channel);
                self.subs.remove(&channel);
                let seq = live.next_seq();
                let f = ClientFrame::Unsub {
                    seq: Some(seq),
                    channel,
                };
                send_timed(&mut live.conn, &f, hb).await
            }
            Command::Ack(id) => {
                self.want_ack(id);
                ack_at.get_or_insert_with(|| Instant::now() + self.ack_interval);
                Ok(())
            }
            Command::Flush(reply) => {
                *ack_at = None;
                let r = match self.ack_frame() {
                    Some(ack) => send_timed(&mut live.conn, &ack, hb).await,
                    None => Ok(()),
                };
                let _ = reply.send(());
                r
            }
            Command::Send(out) => self.write_outgoing(live, out, hb).await,
        }
    }

    async fn send_sub(
        &mut self,
        live: &mut Live,
        channel: String,
        last_id: Option<i64>,
        hb: Duration,
    ) -> Result<(), Closed> {
        let seq = live.next_seq();
        let f = ClientFrame::Sub {
            seq: Some(seq),
            channel: channel.clone(),
            last_id: last_id.map(MsgId),
            presence: self.presence_subs.contains(&channel),
        };
        live.pending_subs.insert(seq, channel);
        send_timed(&mut live.conn, &f, hb).await
    }
}

/// The fields of `auth_ok`.
struct AuthOk {
    conn: u64,
    user: String,
    room: u32,
    heartbeat: u32,
}

/// Reads until `auth_ok`; a fatal error frame (or the end of the
/// connection) is the reason it failed.
async fn wait_auth_ok(conn: &mut Conn) -> Result<AuthOk, Closed> {
    loop {
        match conn.recv().await? {
            ServerFrame::AuthOk {
                conn,
                user,
                room,
                heartbeat,
                ..
            } => {
                return Ok(AuthOk {
                    conn: conn.0,
                    user: user.as_str().to_string(),
                    room: room.0,
                    heartbeat,
                })
            }
            ServerFrame::Error {
                close: Some(code),
                message,
                ..
            } => {
                return Err(Closed {
                    code: Some(code.as_u16()),
                    reason: message,
                })
            }
            _ => {}
        }
    }
}

/// Sends a frame; a write that takes longer than `limit` means the
/// connection is dead.
async fn send_timed(conn: &mut Conn, frame: &ClientFrame, limit: Duration) -> Result<(), Closed> {
    match timeout(limit, conn.send(frame)).await {
        Ok(r) => r,
        Err(_) => Err(Closed {
            code: None,
            reason: format!("send timed out after {limit:?}"),
        }),
    }
}

/// When to ask for a new token that replaces one expiring at `exp` (Unix
/// seconds): after 90 % of the time left, and not sooner than 0.5 s from
/// now (a provider that keeps failing is not called in a loop).
fn refresh_time(exp: u64) -> Instant {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let left_ms = u128::from(exp).saturating_mul(1000).saturating_sub(now_ms);
    let wait = u64::try_from(left_ms * 9 / 10).unwrap_or(u64::MAX).max(500);
    Instant::now() + Duration::from_millis(wait)
}
