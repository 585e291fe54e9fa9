//! `bench c1m-worker`: one load-generator process of a `c1m` run. It holds
//! its share of the connections (users `c1m-<first>` .. `c1m-<first+count-1>`,
//! user `i` on room `i mod rooms`, subscribed to channel `c1m:<i mod channels>`),
//! keeps them alive with heartbeats, records when each pushed message
//! arrives (the send time is in the payload), and reconnects a dropped
//! connection to the next room with jittered backoff, resuming after the
//! last unicast id it had. It is driven by the runner over stdin/stdout
//! ([`super::wire`]) and exits when told to or when stdin closes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use parking_lot::Mutex;
use proto::{ClientFrame, MsgId, ServerFrame};
use pushgate_client::backoff::{server_delay, Backoff};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::wire::{Answer, Command, WorkerStats};
use crate::args::{parse_duration, sources_arg, Sources, Transport};
use crate::client::{Closed, Conn, Endpoint, Event};
use crate::pace::{Heartbeat, Schedule};
use crate::quic::QuicArgs;
use crate::stats::{LatencyHist, Tally};

/// Scheduling priority of a worker (`nice`): below the servers.
const WORKER_NICE: i32 = 10;

/// Arguments of `bench c1m-worker` (set by the runner, not by hand).
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// Worker number (for messages).
    #[arg(long)]
    id: u32,
    /// First user number.
    #[arg(long)]
    first: u64,
    /// Connections (users) of this worker.
    #[arg(long)]
    count: u64,
    /// Client transport (`ws` or `tcp`).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// The rooms' addresses in room order: WebSocket URLs, or TCP `host:port`.
    #[arg(long, value_delimiter = ',', required = true)]
    rooms: Vec<String>,
    /// Source addresses, round-robin.
    #[arg(long, value_parser = sources_arg)]
    sources: Option<Sources>,
    /// The rooms' token secret.
    #[arg(long, env = "PUSHGATE_TOKEN_SECRET", hide_env_values = true)]
    token_secret: String,
    /// Connection attempts started per second (this worker).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Most connects in flight at once (a small number keeps a ramp that
    /// asks for more than the cluster does from turning into timeouts).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Channels the users are spread over (0: none).
    #[arg(long, default_value_t = 100)]
    channels: u64,
    /// Time allowed for each of connect and auth.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    step_timeout: Duration,
}

/// Counters of this worker.
#[derive(Default)]
struct Counters {
    authenticated: AtomicU64,
    live: AtomicU64,
    reconnects: AtomicU64,
    last_auth_ns: AtomicU64,
    last_back_ns: AtomicU64,
    pings: AtomicU64,
    pongs: AtomicU64,
    duplicates: AtomicU64,
    bad_payloads: AtomicU64,
    failures: Tally,
    drops: Tally,
}

/// Everything the connection tasks share.
struct Shared {
    args: WorkerArgs,
    endpoints: Vec<Endpoint>,
    live_per_room: Vec<AtomicU64>,
    c: Counters,
    /// Latency histograms by key (see [`super::wire::Answer::Hists`]).
    hists: Mutex<BTreeMap<Key, LatencyHist>>,
    /// Limits connects in flight.
    connecting: Semaphore,
    cancel: CancellationToken,
}

/// Runs a worker until told to stop or until stdin closes.
pub(crate) async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(args.transport, Transport::Ws | Transport::Tcp),
        "c1m workers speak ws or tcp"
    );
    let mut endpoints = Vec::with_capacity(args.rooms.len());
    for r in &args.rooms {
        endpoints.push(
            Endpoint::resolve(args.transport, r, r, &QuicArgs::default())
                .await
                .with_context(|| format!("room address {r}"))?,
        );
    }
    let shared = Arc::new(Shared {
        live_per_room: (0..endpoints.len()).map(|_| AtomicU64::new(0)).collect(),
        endpoints,
        c: Counters::default(),
        hists: Mutex::new(BTreeMap::new()),
        connecting: Semaphore::new(args.concurrency.max(1)),
        cancel: CancellationToken::new(),
        args,
    });
    // The load generator yields the CPU to the servers it measures (they
    // share the machine); lowering one's own priority needs no privilege.
    let _ = rustix::process::setpriority_process(None, WORKER_NICE);
    let mut out = tokio::io::stdout();
    answer(&mut out, &Answer::Ready).await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut started = false;
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        let cmd: Command = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                answer(
                    &mut out,
                    &Answer::Error {
                        message: format!("bad command {line:?}: {e}"),
                    },
                )
                .await?;
                continue;
            }
        };
        match cmd {
            Command::Start => {
                if !started {
                    started = true;
                    tokio::spawn(ramp(shared.clone()));
                }
                answer(&mut out, &Answer::Ack).await?;
            }
            Command::Stats => answer(&mut out, &Answer::Stats(stats(&shared))).await?,
            Command::Hists => {
                let hists = shared
                    .hists
                    .lock()
                    .iter()
                    .map(|(k, h)| (key_name(*k), h.buckets()))
                    .collect();
                answer(&mut out, &Answer::Hists { hists }).await?;
            }
            Command::Stop => {
                answer(&mut out, &Answer::Ack).await?;
                break;
            }
        }
    }
    // Sockets close with the process; a graceful close of thousands of
    // connections would only slow the end of the run.
    shared.cancel.cancel();
    Ok(())
}

async fn answer(out: &mut tokio::io::Stdout, a: &Answer) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(a)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await?;
    Ok(())
}

fn stats(s: &Shared) -> WorkerStats {
    let c = &s.c;
    WorkerStats {
        target: s.args.count,
        authenticated: c.authenticated.load(Relaxed),
        live: c.live.load(Relaxed),
        live_per_room: s.live_per_room.iter().map(|n| n.load(Relaxed)).collect(),
        failures: c.failures.snapshot(),
        drops: c.drops.snapshot(),
        reconnects: c.reconnects.load(Relaxed),
        last_auth_ns: c.last_auth_ns.load(Relaxed),
        last_back_ns: c.last_back_ns.load(Relaxed),
        pings: c.pings.load(Relaxed),
        pongs: c.pongs.load(Relaxed),
        duplicates: c.duplicates.load(Relaxed),
        bad_payloads: c.bad_payloads.load(Relaxed),
        rss: crate::proc::self_rss().unwrap_or(0),
        counts: s
            .hists
            .lock()
            .iter()
            .map(|(k, h)| (key_name(*k), h.len()))
            .collect(),
    }
}

/// Starts one task per connection on the schedule.
async fn ramp(s: Arc<Shared>) {
    let schedule = Schedule::new(s.args.rate);
    let start = tokio::time::Instant::now();
    for k in 0..s.args.count {
        tokio::select! {
            _ = s.cancel.cancelled() => return,
            _ = tokio::time::sleep_until(start + schedule.offset(k)) => {}
        }
        tokio::spawn(connection(s.clone(), s.args.first + k, k));
    }
}

/// One user's connection, for the whole run.
async fn connection(s: Arc<Shared>, user: u64, k: u64) {
    let rooms = s.endpoints.len() as u64;
    let mut room = usize::try_from(user % rooms).unwrap_or(0);
    let source = s
        .args
        .sources
        .as_ref()
        .and_then(|v| v.0.get(usize::try_from(k).unwrap_or(0) % v.0.len().max(1)))
        .copied();
    let name = format!("c1m-{user}");
    let channel = (s.args.channels > 0).then(|| format!("c1m:{}", user % s.args.channels));
    let mut last_unicast: Option<MsgId> = None;
    let mut dropped_at: Option<Instant> = None;
    // The client library's reconnect rules: jittered exponential backoff,
    // or the delay a 4007 close asks for.
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let opened = tokio::select! {
            _ = s.cancel.cancelled() => return,
            // Boxed: the handshake's state is large and needed only while
            // connecting; inline it would stay in every task all run long.
            r = Box::pin(open(&s, room, source, &name, channel.as_deref(), last_unicast)) => r,
        };
        let (conn, heartbeat) = match opened {
            Ok(x) => x,
            Err(reason) => {
                s.c.failures.add(&reason);
                room = another_room(room, s.endpoints.len());
                let delay = backoff.next_delay(&mut rand::rng());
                pause(&s, delay).await;
                continue;
            }
        };
        backoff.reset();
        let now = crate::now_unix_ns();
        match dropped_at.take() {
            None => {
                s.c.authenticated.fetch_add(1, Relaxed);
                s.c.last_auth_ns.fetch_max(now, Relaxed);
            }
            Some(t) => {
                s.c.reconnects.fetch_add(1, Relaxed);
                s.c.last_back_ns.fetch_max(now, Relaxed);
                record(&s, RECONNECT, duration_ns(t.elapsed()));
            }
        }
        s.c.live.fetch_add(1, Relaxed);
        s.live_per_room[room].fetch_add(1, Relaxed);
        let closed = serve(&s, conn, heartbeat, &mut last_unicast).await;
        s.c.live.fetch_sub(1, Relaxed);
        s.live_per_room[room].fetch_sub(1, Relaxed);
        let Some(closed) = closed else { return };
        s.c.drops.add(&closed.key());
        dropped_at = Some(Instant::now());
        let delay = match &closed {
            Closed::Code(4007, reason) => server_delay(reason),
            _ => None,
        }
        .unwrap_or_else(|| backoff.next_delay(&mut rand::rng()));
        // Somewhere else: the room may be gone.
        room = another_room(room, s.endpoints.len());
        pause(&s, delay).await;
    }
}

/// A random room other than `room` (the same one when there is only one).
fn another_room(room: usize, rooms: usize) -> usize {
    if rooms < 2 {
        return room;
    }
    (room + 1 + rand::random_range(0..rooms - 1)) % rooms
}

/// Sleeps `delay` unless the run stops first.
async fn pause(s: &Shared, delay: Duration) {
    tokio::select! {
        _ = s.cancel.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// Connects to room `room`, authenticates (resuming after `last_id`) and
/// subscribes; the connect itself holds a concurrency permit.
async fn open(
    s: &Shared,
    room: usize,
    source: Option<IpAddr>,
    user: &str,
    channel: Option<&str>,
    last_id: Option<MsgId>,
) -> Result<(Conn, Heartbeat), String> {
    let _permit = s
        .connecting
        .acquire()
        .await
        .map_err(|_| "closed".to_string())?;
    let ep = &s.endpoints[room];
    let step = s.args.step_timeout;
    let mut conn = tokio::time::timeout(step, Conn::connect(ep, source))
        .await
        .map_err(|_| "timeout: connect".to_string())?
        .map_err(|e| e.key())?;
    let claims = proto::token::Claims {
        sub: user.to_string(),
        exp: crate::now_unix_ns() / 1_000_000_000 + 86_400,
        dev: None,
        channels: channel.map(|c| vec![c.to_string()]),
        send: None,
        publish: None,
    };
    let token = proto::token::mint(&claims, s.args.token_secret.as_bytes())
        .map_err(|e| format!("token: {e}"))?;
    let ok = tokio::time::timeout(step, conn.auth_from(&token, last_id))
        .await
        .map_err(|_| "timeout: auth".to_string())?
        .map_err(|e| e.key())?;
    if let Some(channel) = channel {
        conn.send(&ClientFrame::Sub {
            seq: None,
            channel: channel.to_string(),
            last_id: None,
            presence: false,
        })
        .await
        .map_err(|e| e.key())?;
    }
    Ok((conn, Heartbeat::start(ok.heartbeat)))
}

/// Serves an open connection until it ends: `None` when the run stopped,
/// else how it ended.
async fn serve(
    s: &Shared,
    mut conn: Conn,
    mut heartbeat: Heartbeat,
    last_unicast: &mut Option<MsgId>,
) -> Option<Closed> {
    loop {
        tokio::select! {
            biased;
            _ = s.cancel.cancelled() => return None,
            _ = tokio::time::sleep_until(heartbeat.due()) => {
                if let Err(e) = conn.send(&ClientFrame::Ping { seq: None }).await {
                    return Some(Closed::Io(e.to_string()));
                }
                s.c.pings.fetch_add(1, Relaxed);
                heartbeat.sent();
            }
            ev = conn.recv() => match ev {
                Event::Frame(ServerFrame::Msg(m)) => {
                    on_message(s, m.id, &m.data, last_unicast);
                }
                Event::Frame(ServerFrame::Pong { .. }) => {
                    s.c.pongs.fetch_add(1, Relaxed);
                }
                Event::Frame(_) | Event::Undecodable(_) => {}
                Event::Closed(c) => return Some(c),
            },
        }
    }
}

/// The payload every c1m push carries.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct Payload<'a> {
    /// Kind: `b` broadcast, `c` channel, `u` unicast.
    pub(crate) k: &'a str,
    /// Broadcast number, channel round or unicast phase.
    pub(crate) n: u32,
    /// Send time, Unix nanoseconds.
    pub(crate) t: u64,
}

fn on_message(s: &Shared, id: MsgId, data: &[u8], last_unicast: &mut Option<MsgId>) {
    let now = crate::now_unix_ns();
    let Ok(p) = serde_json::from_slice::<Payload<'_>>(data) else {
        s.c.bad_payloads.fetch_add(1, Relaxed);
        return;
    };
    if p.k == "u" {
        // Stored messages of one user carry increasing ids; a replay after a
        // reconnect repeats some (the replay overlap).
        if last_unicast.is_some_and(|last| id <= last) {
            s.c.duplicates.fetch_add(1, Relaxed);
            return;
        }
        *last_unicast = Some(id);
    }
    let mut kind = p.k.chars();
    let (Some(k), None) = (kind.next(), kind.next()) else {
        s.c.bad_payloads.fetch_add(1, Relaxed);
        return;
    };
    record(s, (k, p.n), now.saturating_sub(p.t));
}

/// A histogram key: the payload's kind letter and number (no allocation
/// per message; named only when sent to the runner).
type Key = (char, u32);

/// Reconnect durations.
const RECONNECT: Key = ('r', 0);

/// The key's name on the wire: `b3`, `u1`, ..., and `r` for reconnects.
fn key_name(k: Key) -> String {
    if k == RECONNECT {
        "r".to_string()
    } else {
        format!("{}{}", k.0, k.1)
    }
}

fn record(s: &Shared, key: Key, ns: u64) {
    let mut hists = s.hists.lock();
    if let Some(h) = hists.get_mut(&key) {
        h.record_ns(ns);
    } else if let Ok(mut h) = LatencyHist::new() {
        h.record_ns(ns);
        hists.insert(key, h);
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each connection's task lives all run long; with a million of them
    /// its size is the load generator's memory (the handshake is boxed).
    #[test]
    fn connection_task_stays_small() {
        let cmd = <WorkerArgs as clap::Args>::augment_args(clap::Command::new("w"));
        let m = cmd.get_matches_from([
            "w",
            "--id",
            "0",
            "--first",
            "0",
            "--count",
            "1",
            "--rooms",
            "ws://127.0.0.1:1/ws",
            "--token-secret",
            "s",
        ]);
        let args = <WorkerArgs as clap::FromArgMatches>::from_arg_matches(&m).unwrap();
        let s = Arc::new(Shared {
            endpoints: vec![],
            live_per_room: vec![],
            c: Counters::default(),
            hists: Mutex::new(BTreeMap::new()),
            connecting: Semaphore::new(1),
            cancel: CancellationToken::new(),
            args,
        });
        let f = connection(s, 0, 0);
        let size = std::mem::size_of_val(&f);
        assert!(size <= 1024, "connection future is {size} B");
    }

    #[test]
    fn another_room_is_another_room() {
        for _ in 0..200 {
            let r = another_room(2, 5);
            assert!(r < 5 && r != 2);
        }
        assert_eq!(another_room(0, 1), 0);
    }

    #[test]
    fn key_names() {
        assert_eq!(key_name(('b', 3)), "b3");
        assert_eq!(key_name(('u', 1)), "u1");
        assert_eq!(key_name(RECONNECT), "r");
    }

    #[test]
    fn payload_parses() {
        let p: Payload<'_> = serde_json::from_slice(br#"{"k":"b","n":3,"t":17}"#).unwrap();
        assert_eq!(
            p,
            Payload {
                k: "b",
                n: 3,
                t: 17
            }
        );
        assert!(serde_json::from_slice::<Payload<'_>>(br#"{"t":1}"#).is_err());
    }
}
