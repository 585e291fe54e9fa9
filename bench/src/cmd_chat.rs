//! `bench chat`: clients talking through pushgate with `send` (pairs of
//! users exchanging 1:1 messages) or `pub` (groups of users on one channel
//! each), at a fixed total rate paced by schedule. Reports the sender's
//! answer latency (`send` → `send_ok`), the end-to-end latency (`send` →
//! the recipient's `msg`, from the send time carried in the payload),
//! messages/s, losses, refusals by code, and with `--server-pid` the
//! server's CPU per message and per delivery.
//!
//! Each connection sends one message at a time and waits for its answer
//! before the next (the server answers one `send` at a time per connection
//! anyway): the schedule picks the senders round robin, and a message due
//! on a connection still waiting is counted late, queued behind it (at most
//! [`MAX_QUEUED`] per connection; more are skipped and counted).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use parking_lot::Mutex;
use proto::{ClientFrame, ServerFrame, UserId};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::args::{parse_duration, Transport};
use crate::client::{connect_and_auth, Conn, Endpoint, Event};
use crate::pace::Schedule;
use crate::quic::QuicArgs;
use crate::runctl::{close_and_wait, spawn_ctrl_c};
use crate::stats::{LatencyHist, Summary, Tally};
use crate::{now_unix_ns, proc, Outcome};

/// Most messages one run may send.
const MAX_MESSAGES: u64 = 10_000_000;
/// Connects in flight while the clients open.
const CONNECT_CONCURRENCY: usize = 64;
/// Messages waiting on one connection at most; more are skipped.
const MAX_QUEUED: usize = 64;

/// Arguments of `bench chat`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct ChatArgs {
    /// WebSocket URL of the room.
    #[arg(long, default_value = "ws://127.0.0.1:7700/ws")]
    ws: String,
    /// TCP address of the room (with `--transport tcp`).
    #[arg(long, default_value = "127.0.0.1:7701")]
    tcp: String,
    /// Client transport (ws, tcp or quic).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// QUIC address and trusted certificate (with `--transport quic`).
    #[command(flatten)]
    quic: QuicArgs,
    /// The server's token secret; tokens are minted locally.
    #[arg(long, env = "PUSHGATE_TOKEN_SECRET", hide_env_values = true)]
    token_secret: String,
    /// Pairs of users exchanging 1:1 messages (`send`); 2 connections each pair.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=50_000))]
    pairs: u64,
    /// Instead of pairs: groups of this many users, each group on its own
    /// channel (`pub`; every member subscribes, every member sends).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=10_000))]
    group_size: Option<u64>,
    /// Groups (with `--group-size`).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    groups: u64,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,
    /// How long to send.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// After the last message, how long to wait for answers and deliveries.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    grace: Duration,
    /// Time allowed for each of connect and auth.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    step_timeout: Duration,
    /// The server's process id: its CPU time over the sending phase gives
    /// CPU per message (for a cluster, run once per process, or sum).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// One connection's part in the run.
struct Member {
    user: String,
    /// Where its messages go: a user (`send`) or a channel (`pub`).
    to: Target,
}

#[derive(Clone)]
enum Target {
    User(String),
    Channel(String),
}

/// Counters shared by every connection.
struct Shared {
    run_tag: String,
    answer: Mutex<LatencyHist>,
    e2e: Mutex<LatencyHist>,
    sent: AtomicU64,
    accepted: AtomicU64,
    refused: Tally,
    received: AtomicU64,
    duplicates: AtomicU64,
    foreign: AtomicU64,
    late: AtomicU64,
    skipped: AtomicU64,
    closes: Tally,
}

/// The `bench chat` report (also written as JSON).
#[derive(Debug, Serialize)]
struct ChatReport {
    mode: &'static str,
    transport: Transport,
    connections: u64,
    fanout: u64,
    target_rate: u64,
    duration_seconds: f64,
    sent: u64,
    accepted: u64,
    refused: BTreeMap<String, u64>,
    expected_deliveries: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    late: u64,
    skipped: u64,
    achieved_rate: f64,
    answer: Summary,
    e2e: Summary,
    server_cpu_seconds: Option<f64>,
    server_cpu_us_per_message: Option<f64>,
    server_cpu_us_per_delivery: Option<f64>,
    unexpected_closes: BTreeMap<String, u64>,
    interrupted: bool,
}

/// Runs `bench chat`.
pub(crate) async fn run(args: ChatArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        !args.transport.is_sse(),
        "bench chat needs clients that send: --transport ws, tcp or quic"
    );
    let sched = Schedule::new(args.rate);
    let total = sched.count_in(args.duration);
    anyhow::ensure!(
        total <= MAX_MESSAGES,
        "{total} messages is more than {MAX_MESSAGES}; lower --rate or --duration"
    );
    let run_tag = format!("{:08x}", rand::random::<u32>());
    let members = members(&args, &run_tag);
    let fanout = args.group_size.map_or(1, |g| g - 1);
    proc::check_nofile(members.len() as u64 + 64)?;
    let ep = Endpoint::resolve(args.transport, &args.ws, &args.tcp, &args.quic).await?;
    let cancel = CancellationToken::new();
    let interrupted = spawn_ctrl_c(cancel.clone(), "stopping");
    let exp = now_unix_ns() / 1_000_000_000
        + (args.duration + args.grace + args.step_timeout * 4).as_secs()
        + 3600;
    let conns = connect(&ep, &args, &members, exp).await?;
    let shared = Arc::new(Shared {
        run_tag,
        answer: Mutex::new(LatencyHist::new()?),
        e2e: Mutex::new(LatencyHist::new()?),
        sent: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        refused: Tally::default(),
        received: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        foreign: AtomicU64::new(0),
        late: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        closes: Tally::default(),
    });
    // Subscribe every group member before anyone sends.
    let mut conns = conns;
    if let Some(Target::Channel(_)) = members.first().map(|m| m.to.clone()) {
        for ((conn, _), m) in conns.iter_mut().zip(&members) {
            if let Target::Channel(ch) = &m.to {
                subscribe(conn, ch, args.step_timeout).await?;
            }
        }
    }
    let mode = if args.group_size.is_some() {
        "pub"
    } else {
        "send"
    };
    println!(
        "chat: {} {} clients connected to {} ({mode}, fan-out {fanout}); sending {total} messages at {}/s for {:?}",
        conns.len(),
        args.transport.name(),
        ep.addr(),
        args.rate,
        args.duration,
    );

    let stop = cancel.child_token();
    let tasks = TaskTracker::new();
    let mut senders = Vec::with_capacity(conns.len());
    for ((conn, hb), m) in conns.into_iter().zip(members) {
        let (tx, rx) = mpsc::channel::<u64>(MAX_QUEUED);
        senders.push(tx);
        tasks.spawn(member(shared.clone(), conn, hb, m, rx, stop.clone()));
    }

    let cpu_before = args.server_pid.and_then(proc::cpu);
    let start = Instant::now();
    for i in 0..total {
        let due = start + sched.offset(i);
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep_until(due.into()) => {}
        }
        let k = usize::try_from(i % senders.len() as u64).unwrap_or(0);
        if senders[k].try_send(now_unix_ns()).is_err() {
            shared.skipped.fetch_add(1, Relaxed);
        }
    }
    let send_seconds = start.elapsed().as_secs_f64();
    // Answers and deliveries still on their way.
    let grace_end = Instant::now() + args.grace;
    let mut cpu_after = args.server_pid.and_then(proc::cpu);
    while Instant::now() < grace_end && !cancel.is_cancelled() {
        let want = shared.accepted.load(Relaxed) * fanout;
        let answered = shared.accepted.load(Relaxed) + refused_total(&shared.refused);
        if shared.received.load(Relaxed) >= want && answered + shared.skipped.load(Relaxed) >= total
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        cpu_after = args.server_pid.and_then(proc::cpu);
    }
    drop(senders);
    stop.cancel();
    if !close_and_wait(&tasks, args.step_timeout).await {
        eprintln!("some clients did not close in time");
    }
    let cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some(a.since(b).as_secs_f64()),
        _ => None,
    };
    let rep = report(
        &args,
        &shared,
        mode,
        fanout,
        send_seconds,
        cpu,
        interrupted.load(Relaxed),
    );
    println!(
        "chat: sent {} accepted {} refused {:?} received {} of {} lost {} dup {} late {} skipped {} | answer ms p50 {:.3} p99 {:.3} p99.9 {:.3} | e2e ms p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} | {:.0} msg/s{}",
        rep.sent, rep.accepted, rep.refused, rep.received, rep.expected_deliveries, rep.lost,
        rep.duplicates, rep.late, rep.skipped,
        rep.answer.p50_ms, rep.answer.p99_ms, rep.answer.p999_ms,
        rep.e2e.p50_ms, rep.e2e.p99_ms, rep.e2e.p999_ms, rep.e2e.max_ms,
        rep.achieved_rate,
        match (rep.server_cpu_us_per_message, rep.server_cpu_us_per_delivery) {
            (Some(m), Some(d)) => format!(" | server CPU {m:.1} µs/message, {d:.1} µs/delivery"),
            _ => String::new(),
        },
    );
    if let Some(p) = &args.json_out {
        crate::write_json(p, &rep)?;
    }
    Ok(if rep.interrupted {
        Outcome::Interrupted
    } else if rep.lost > 0 || rep.duplicates > 0 || !rep.refused.is_empty() || rep.skipped > 0 {
        Outcome::Failed
    } else {
        Outcome::Ok
    })
}

fn refused_total(t: &Tally) -> u64 {
    t.snapshot().values().sum()
}

/// Who sends to whom: pairs (a_i ↔ b_i) or groups (each member to its
/// group's channel).
fn members(args: &ChatArgs, tag: &str) -> Vec<Member> {
    match args.group_size {
        None => (0..args.pairs)
            .flat_map(|i| {
                let (a, b) = (format!("chat-{tag}-a{i}"), format!("chat-{tag}-b{i}"));
                [
                    Member {
                        user: a.clone(),
                        to: Target::User(b.clone()),
                    },
                    Member {
                        user: b,
                        to: Target::User(a),
                    },
                ]
            })
            .collect(),
        Some(size) => (0..args.groups)
            .flat_map(|g| {
                (0..size).map(move |i| Member {
                    user: format!("chat-{tag}-g{g}-{i}"),
                    to: Target::Channel(format!("bench-chat-{tag}-{g}")),
                })
            })
            .collect(),
    }
}

/// Connects and authenticates one client per member, in member order.
async fn connect(
    ep: &Endpoint,
    args: &ChatArgs,
    members: &[Member],
    exp: u64,
) -> anyhow::Result<Vec<(Conn, Duration)>> {
    let mut set = JoinSet::new();
    let mut out: Vec<Option<(Conn, Duration)>> = (0..members.len()).map(|_| None).collect();
    let mut next = 0;
    loop {
        while next < members.len() && set.len() < CONNECT_CONCURRENCY {
            let claims = proto::token::Claims {
                sub: members[next].user.clone(),
                exp,
                dev: None,
                channels: Some(vec!["bench-chat-*".into()]),
                send: None,
                publish: Some(vec!["bench-chat-*".into()]),
            };
            let token = proto::token::mint(&claims, args.token_secret.as_bytes())
                .context("minting a client token")?;
            let (ep, limit, k) = (ep.clone(), args.step_timeout, next);
            set.spawn(async move { (k, connect_and_auth(&ep, None, &token, limit).await) });
            next += 1;
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        let (k, r) = joined.context("connect task")?;
        let (conn, ok) = r.map_err(|e| anyhow::anyhow!("connect {}: {e}", members[k].user))?;
        out[k] = Some((conn, Duration::from_secs(u64::from(ok.heartbeat.max(1)))));
    }
    Ok(out.into_iter().flatten().collect())
}

async fn subscribe(conn: &mut Conn, channel: &str, limit: Duration) -> anyhow::Result<()> {
    let sub = ClientFrame::Sub {
        seq: Some(2),
        channel: channel.to_owned(),
        last_id: None,
        presence: false,
    };
    conn.send(&sub)
        .await
        .map_err(|e| anyhow::anyhow!("sub: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), conn.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no sub_ok for {channel} in {limit:?}"))?;
        match ev {
            Event::Frame(ServerFrame::SubOk { .. }) => return Ok(()),
            Event::Frame(ServerFrame::Error { code, message, .. }) => {
                anyhow::bail!("sub {channel}: {} {message}", code.as_str())
            }
            Event::Closed(c) => anyhow::bail!("sub {channel}: closed {c:?}"),
            _ => {}
        }
    }
}

/// One connection: sends what the schedule hands it (one at a time),
/// receives, pings.
async fn member(
    shared: Arc<Shared>,
    mut conn: Conn,
    hb: Duration,
    m: Member,
    mut due: mpsc::Receiver<u64>,
    stop: CancellationToken,
) {
    let mut waiting: VecDeque<u64> = VecDeque::new();
    // The message in flight: (seq, send time ns).
    let mut inflight: Option<(u32, u64)> = None;
    let mut seq: u32 = 2;
    let mut n: u64 = 0;
    let mut seen: HashSet<i64> = HashSet::new();
    let mut ping = tokio::time::interval(hb.mul_f64(0.8));
    ping.tick().await;
    let mut schedule_open = true;
    loop {
        if inflight.is_none() {
            if let Some(t) = waiting.pop_front() {
                seq = seq.wrapping_add(1).max(3);
                n += 1;
                let data = Bytes::from(format!("{{\"t\":{t},\"run\":\"{}\"}}", shared.run_tag));
                let cid = format!("{}-{n}", m.user);
                let frame = match &m.to {
                    Target::User(to) => ClientFrame::send(Some(seq), UserId::new(to), data, cid),
                    Target::Channel(ch) => ClientFrame::publish(Some(seq), ch.clone(), data, cid),
                };
                if conn.send(&frame).await.is_err() {
                    shared.closes.add("send failed");
                    return;
                }
                shared.sent.fetch_add(1, Relaxed);
                inflight = Some((seq, t));
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            t = due.recv(), if schedule_open => match t {
                Some(t) => {
                    if inflight.is_some() {
                        shared.late.fetch_add(1, Relaxed);
                    }
                    if waiting.len() >= MAX_QUEUED {
                        shared.skipped.fetch_add(1, Relaxed);
                    } else {
                        waiting.push_back(t);
                    }
                }
                None => schedule_open = false,
            },
            _ = ping.tick() => {
                if conn.send(&ClientFrame::Ping { seq: None }).await.is_err() {
                    shared.closes.add("ping failed");
                    return;
                }
            }
            ev = conn.recv() => match ev {
                Event::Frame(f) => on_frame(&shared, f, &mut inflight, &mut seen),
                Event::Undecodable(_) => shared.closes.add("undecodable frame"),
                Event::Closed(c) => {
                    shared.closes.add(&c.key());
                    return;
                }
            },
        }
    }
    conn.close(Duration::from_secs(1)).await;
}

fn on_frame(
    shared: &Shared,
    f: ServerFrame,
    inflight: &mut Option<(u32, u64)>,
    seen: &mut HashSet<i64>,
) {
    let now = now_unix_ns();
    match f {
        ServerFrame::SendOk { seq, .. } | ServerFrame::PubOk { seq, .. } => {
            if let Some((s, t)) = *inflight {
                if seq == Some(s) {
                    *inflight = None;
                    shared.accepted.fetch_add(1, Relaxed);
                    shared.answer.lock().record_ns(now.saturating_sub(t));
                }
            }
        }
        ServerFrame::Error {
            seq, code, close, ..
        } if close.is_none() => {
            if let Some((s, _)) = *inflight {
                if seq == Some(s) {
                    *inflight = None;
                    shared.refused.add(code.as_str());
                }
            }
        }
        ServerFrame::Msg(m) => {
            // Only this run's messages count (a replay of an earlier run's
            // stored message is not a delivery of this one).
            let v: serde_json::Value = serde_json::from_slice(&m.data).unwrap_or_default();
            if v["run"] != shared.run_tag.as_str() {
                shared.foreign.fetch_add(1, Relaxed);
                return;
            }
            if !seen.insert(m.id.0) {
                shared.duplicates.fetch_add(1, Relaxed);
                return;
            }
            shared.received.fetch_add(1, Relaxed);
            if let Some(t) = v["t"].as_u64() {
                shared.e2e.lock().record_ns(now.saturating_sub(t));
            }
        }
        _ => {}
    }
}

fn report(
    args: &ChatArgs,
    s: &Shared,
    mode: &'static str,
    fanout: u64,
    send_seconds: f64,
    cpu: Option<f64>,
    interrupted: bool,
) -> ChatReport {
    let accepted = s.accepted.load(Relaxed);
    let received = s.received.load(Relaxed);
    let expected = accepted * fanout;
    let connections = match args.group_size {
        Some(g) => g * args.groups,
        None => args.pairs * 2,
    };
    ChatReport {
        mode,
        transport: args.transport,
        connections,
        fanout,
        target_rate: args.rate,
        duration_seconds: send_seconds,
        sent: s.sent.load(Relaxed),
        accepted,
        refused: s.refused.snapshot(),
        expected_deliveries: expected,
        received,
        lost: expected.saturating_sub(received),
        duplicates: s.duplicates.load(Relaxed),
        late: s.late.load(Relaxed),
        skipped: s.skipped.load(Relaxed),
        achieved_rate: if send_seconds > 0.0 {
            accepted as f64 / send_seconds
        } else {
            0.0
        },
        answer: s.answer.lock().summary(),
        e2e: s.e2e.lock().summary(),
        server_cpu_seconds: cpu,
        server_cpu_us_per_message: cpu
            .filter(|_| accepted > 0)
            .map(|c| c * 1e6 / accepted as f64),
        server_cpu_us_per_delivery: cpu
            .filter(|_| received > 0)
            .map(|c| c * 1e6 / received as f64),
        unexpected_closes: s.closes.snapshot(),
        interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(group: Option<u64>) -> ChatArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct A {
            #[command(flatten)]
            a: ChatArgs,
        }
        let mut v = vec!["x", "--token-secret", "s", "--pairs", "3"];
        let g;
        if let Some(n) = group {
            g = n.to_string();
            v.extend(["--group-size", &g, "--groups", "2"]);
        }
        A::parse_from(v).a
    }

    #[test]
    fn pairs_send_to_each_other_and_groups_to_their_channel() {
        let m = members(&args(None), "t");
        assert_eq!(m.len(), 6);
        assert!(matches!(&m[0].to, Target::User(u) if *u == m[1].user));
        assert!(matches!(&m[1].to, Target::User(u) if *u == m[0].user));
        let g = members(&args(Some(4)), "t");
        assert_eq!(g.len(), 8);
        let chans: HashSet<String> = g
            .iter()
            .map(|m| match &m.to {
                Target::Channel(c) => c.clone(),
                Target::User(_) => String::new(),
            })
            .collect();
        assert_eq!(chans.len(), 2);
        assert!(chans.iter().all(|c| proto::valid_channel(c)));
    }
}
