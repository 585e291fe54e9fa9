//! `bench idle`: open many authenticated connections at a fixed rate, keep
//! them alive with heartbeats, and measure what each costs the server
//! (resident memory, kernel slab), how fast they open, and whether any drop
//! while held; optionally broadcasts after the hold. With `--room-pid` it
//! also gives the server's CPU per operation: per connect (the ramp), per
//! heartbeat (the hold) and per broadcast delivery.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use proto::{ClientFrame, ServerFrame};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::args::{parse_duration, sources_arg, Sources, Transport};
use crate::client::{connect_and_auth, ClientError, Closed, Conn, Endpoint, Event};
use crate::pace::{Heartbeat, Schedule};
use crate::quic::QuicArgs;
use crate::runctl::{close_and_wait, spawn_ctrl_c};
use crate::stats::{per, Tally};
use crate::{proc, Outcome};

/// File descriptors kept free for everything that is not a client socket.
const FD_RESERVE: u64 = 64;
/// Failure and close messages printed in full before only counting.
const MAX_LOGGED: u64 = 5;

/// Arguments of `bench idle`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct IdleArgs {
    /// WebSocket URL of the room.
    #[arg(long, default_value = "ws://127.0.0.1:7700/ws")]
    ws: String,
    /// TCP address of the room (with `--transport tcp`).
    #[arg(long, default_value = "127.0.0.1:7701")]
    tcp: String,
    /// Client transport.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// QUIC address and trusted certificate (with `--transport quic`).
    #[command(flatten)]
    quic: QuicArgs,
    /// Connections to open (user ids `bench-0` .. `bench-<N-1>`).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    connections: u64,
    /// The server's token secret; tokens are minted locally.
    #[arg(
        long,
        env = "PUSHGATE_TOKEN_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    token_secret: String,
    /// Send no `auth` frame: a connection counts as open once the WebSocket
    /// upgrade is answered (for servers without pushgate's auth, e.g. Nchan;
    /// see bench/README.md). Needs `--heartbeat`.
    #[arg(long, requires = "heartbeat")]
    no_auth: bool,
    /// Source addresses to bind client sockets to, round-robin: a list
    /// (`127.0.0.2,127.0.0.3`) or ranges (`127.0.0.2-127.0.0.41`).
    #[arg(long, value_parser = sources_arg)]
    sources: Option<Sources>,
    /// Connection attempts started per second.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,
    /// Most connects/handshakes in flight at once during the ramp.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// How long to hold the connections once all are open.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    hold: Duration,
    /// Heartbeat interval in seconds (default: what the server says in auth_ok).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3600))]
    heartbeat: Option<u32>,
    /// PID of the room process, to sample its memory and CPU.
    #[arg(long)]
    room_pid: Option<u32>,
    /// Wait after the ramp before sampling memory.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    settle: Duration,
    /// Time allowed for each of connect and auth.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    step_timeout: Duration,
    /// Broadcasts to send after the hold, one at a time: each is a
    /// `POST <http>/api/v1/push/broadcast`, waited for until every live
    /// connection has it.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    broadcasts: u32,
    /// REST API base URL, for `--broadcasts`.
    #[arg(long, default_value = "http://127.0.0.1:7780")]
    http: String,
    /// API key, for `--broadcasts`.
    #[arg(
        long,
        env = "PUSHGATE_API_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    api_key: String,
    /// Send each broadcast's body as the `msg` frame itself
    /// (`{"op":"msg","id":N,"ts":T,"data":…}`), for servers that relay the
    /// body verbatim (Nchan's publisher).
    #[arg(long)]
    broadcast_as_frame: bool,
    /// Longest wait for one broadcast to reach every live connection.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    broadcast_wait: Duration,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Subscribe every connection to this channel after auth (the token
    /// allows it), e.g. to fill a channel with presence for
    /// `GET /api/v1/channels/{channel}/presence` (bench/scripts/presence.sh).
    #[arg(long, conflicts_with = "no_auth")]
    channel: Option<String>,
}

/// Counters shared by every client task.
#[derive(Default)]
struct Counters {
    started: AtomicU64,
    authenticated: AtomicU64,
    live: AtomicU64,
    connect_failed: AtomicU64,
    auth_failed: AtomicU64,
    unexpected_closes: AtomicU64,
    pings: AtomicU64,
    pongs: AtomicU64,
    msgs: AtomicU64,
    server_errors: AtomicU64,
    undecodable: AtomicU64,
    /// Nanoseconds from the ramp start to the latest auth_ok.
    last_auth_ns: AtomicU64,
    logged: AtomicU64,
    failures: Tally,
    closes: Tally,
}

impl Counters {
    fn done(&self) -> u64 {
        self.authenticated.load(Relaxed)
            + self.connect_failed.load(Relaxed)
            + self.auth_failed.load(Relaxed)
    }

    fn log(&self, what: &str) {
        if self.logged.fetch_add(1, Relaxed) < MAX_LOGGED {
            eprintln!("  {what}");
        }
    }
}

/// What every client task needs.
struct Ctx {
    ep: Endpoint,
    secret: Vec<u8>,
    exp: u64,
    no_auth: bool,
    heartbeat: Option<u32>,
    step_timeout: Duration,
    ramp_start: Instant,
    cancel: CancellationToken,
    c: Counters,
    channel: Option<String>,
}

/// The room's CPU time at one moment, by both clocks.
#[derive(Clone, Debug, Default)]
pub(crate) struct CpuMark {
    /// Each live thread's time on CPU, ns (`/proc/PID/task/*/schedstat`).
    threads: Option<Vec<(u32, u64)>>,
    /// User + system clock ticks (`/proc/PID/stat`).
    ticks: Option<proc::CpuTicks>,
}

impl CpuMark {
    fn read(pid: Option<u32>) -> CpuMark {
        CpuMark {
            threads: pid.and_then(proc::cpu_threads),
            ticks: pid.and_then(proc::cpu),
        }
    }

    /// CPU seconds since `earlier`: by schedstat, thread by thread, when
    /// both marks have it (nanoseconds), else by clock ticks (10 ms).
    fn since(&self, earlier: &CpuMark) -> Option<f64> {
        match (&earlier.threads, &self.threads, earlier.ticks, self.ticks) {
            (Some(a), Some(b), _, _) => Some(proc::threads_cpu_delta(a, b) as f64 / 1e9),
            (_, _, Some(a), Some(b)) => Some(b.since(a).as_secs_f64()),
            _ => None,
        }
    }

    /// Which clock [`since`](CpuMark::since) uses.
    fn clock(&self) -> Option<&'static str> {
        if self.threads.is_some() {
            Some("schedstat")
        } else {
            self.ticks.map(|_| "stat")
        }
    }
}

/// Memory and CPU of the room at one moment.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Sample {
    room_rss: Option<u64>,
    slab: Option<u64>,
    bench_rss: Option<u64>,
    #[serde(skip)]
    room_cpu: Option<proc::CpuTicks>,
    #[serde(skip)]
    cpu: CpuMark,
}

impl Sample {
    fn take(room_pid: Option<u32>) -> Sample {
        let cpu = CpuMark::read(room_pid);
        Sample {
            room_rss: room_pid.and_then(proc::rss),
            slab: proc::slab(),
            bench_rss: proc::self_rss(),
            room_cpu: cpu.ticks,
            cpu,
        }
    }
}

/// `(cpu - heartbeats x per_heartbeat) / ops`, in microseconds: the CPU of
/// an operation with the heartbeats answered in the same window taken out.
fn per_op_us(cpu_s: Option<f64>, ops: u64, heartbeats: u64, per_hb_us: Option<f64>) -> Option<f64> {
    let cpu_us = cpu_s? * 1e6;
    if ops == 0 {
        return None;
    }
    let hb_us = heartbeats as f64 * per_hb_us.unwrap_or(0.0);
    Some((cpu_us - hb_us).max(0.0) / ops as f64)
}

/// The `bench idle` report (also written as JSON).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct IdleReport {
    pub(crate) transport: String,
    pub(crate) connections: u64,
    pub(crate) sources: usize,
    pub(crate) target_rate: u64,
    pub(crate) authenticated: u64,
    pub(crate) connect_failed: u64,
    pub(crate) auth_failed: u64,
    pub(crate) failures: std::collections::BTreeMap<String, u64>,
    pub(crate) ramp_seconds: f64,
    pub(crate) connect_rate_per_sec: f64,
    pub(crate) live_after_ramp: u64,
    pub(crate) before: Sample,
    pub(crate) after: Sample,
    pub(crate) room_rss_per_conn_bytes: Option<f64>,
    pub(crate) slab_per_conn_bytes: Option<f64>,
    pub(crate) bench_rss_per_conn_bytes: Option<f64>,
    pub(crate) room_cpu_ramp_seconds: Option<f64>,
    pub(crate) room_cpu_hold_seconds: Option<f64>,
    /// The clock of the per-operation figures: `schedstat` (ns) or `stat` (ticks).
    pub(crate) room_cpu_clock: Option<String>,
    /// Room CPU from the ramp's start to its last auth_ok.
    pub(crate) room_cpu_connect_s: Option<f64>,
    pub(crate) pongs_during_ramp: u64,
    /// Room CPU per connection opened (accept, upgrade, auth), heartbeats
    /// answered during the ramp taken out.
    pub(crate) room_cpu_per_connect_us: Option<f64>,
    /// Room CPU during the hold, by the same clock as the per-op figures.
    pub(crate) room_cpu_hold_s: Option<f64>,
    pub(crate) pongs_during_hold: u64,
    /// Room CPU per heartbeat (ping answered with pong) during the hold.
    pub(crate) room_cpu_per_heartbeat_us: Option<f64>,
    pub(crate) broadcasts_sent: u32,
    pub(crate) broadcast_http_errors: u64,
    pub(crate) broadcast_expected: u64,
    pub(crate) broadcast_received: u64,
    /// Per broadcast: ms from the request to the last live connection's receipt.
    pub(crate) broadcast_last_ms: Vec<f64>,
    /// Room CPU from each broadcast request until every connection had it, summed.
    pub(crate) room_cpu_broadcast_s: Option<f64>,
    pub(crate) pongs_during_broadcasts: u64,
    /// Room CPU per broadcast delivery, heartbeats taken out.
    pub(crate) room_cpu_per_delivery_us: Option<f64>,
    pub(crate) hold_seconds: f64,
    pub(crate) live_at_end: u64,
    pub(crate) drops_during_hold: u64,
    pub(crate) unexpected_closes: u64,
    pub(crate) close_reasons: std::collections::BTreeMap<String, u64>,
    pub(crate) pings_sent: u64,
    pub(crate) pongs: u64,
    pub(crate) unexpected_msgs: u64,
    pub(crate) server_errors: u64,
    pub(crate) undecodable: u64,
    pub(crate) interrupted: bool,
}

/// Runs `bench idle`.
pub(crate) async fn run(args: IdleArgs) -> anyhow::Result<Outcome> {
    run_report(args).await.map(|(outcome, _)| outcome)
}

/// Runs `bench idle` and returns its report too.
pub(crate) async fn run_report(args: IdleArgs) -> anyhow::Result<(Outcome, IdleReport)> {
    let n = args.connections;
    anyhow::ensure!(
        !(args.no_auth && args.transport.is_sse()),
        "--no-auth does not apply to --transport sse or sse-h2: its request carries the token"
    );
    proc::check_nofile(n + FD_RESERVE)?;
    let sources: Arc<[IpAddr]> = args.sources.clone().map(|s| s.0).unwrap_or_default().into();
    check_ports(n, sources.len())?;
    let ep = Endpoint::resolve(args.transport, &args.ws, &args.tcp, &args.quic).await?;
    let secret = args.token_secret.as_bytes().to_vec();
    let sched = Schedule::new(args.rate);
    let ramp_estimate = sched.offset(n);
    let exp = crate::now_unix_ns() / 1_000_000_000
        + (ramp_estimate + args.settle + args.hold).as_secs()
        + 3600;
    if !args.no_auth {
        anyhow::ensure!(
            !secret.is_empty(),
            "--token-secret (or PUSHGATE_TOKEN_SECRET) is required unless --no-auth"
        );
        // Fail fast on a token problem rather than once per connection.
        mint(&secret, 0, exp, None).context("minting a client token")?;
    }

    let cancel = CancellationToken::new();
    let interrupted = spawn_ctrl_c(cancel.clone(), "closing connections");

    println!(
        "idle: {n} {} connections to {} at {}/s, {} source address(es), hold {:?}",
        args.transport.name(),
        ep.addr(),
        args.rate,
        sources.len().max(1),
        args.hold,
    );
    let before = Sample::take(args.room_pid);
    if args.room_pid.is_some() && before.room_rss.is_none() {
        anyhow::bail!(
            "cannot read /proc/{}/status: is --room-pid right?",
            args.room_pid.unwrap_or(0)
        );
    }

    let ctx = Arc::new(Ctx {
        ep,
        secret,
        exp,
        no_auth: args.no_auth,
        heartbeat: args.heartbeat,
        step_timeout: args.step_timeout,
        ramp_start: Instant::now(),
        cancel: cancel.clone(),
        c: Counters::default(),
        channel: args.channel.clone(),
    });
    let tracker = TaskTracker::new();
    let ramp = tokio::spawn(ramp(
        ctx.clone(),
        tracker.clone(),
        sources.clone(),
        sched,
        n,
        args.concurrency,
    ));

    // Ramp: wait until every connection has authenticated or failed.
    let ramp_deadline =
        ctx.ramp_start + ramp_estimate + 2 * args.step_timeout + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_progress = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(&ctx, "ramp");
        }
        if ramp.is_finished() && ctx.c.done() >= ctx.c.started.load(Relaxed) {
            break;
        }
        if Instant::now() > ramp_deadline {
            eprintln!(
                "ramp did not finish in {:?}; going on with what is open",
                ramp_deadline - ctx.ramp_start
            );
            break;
        }
    }
    let ramp_end_cpu = CpuMark::read(args.room_pid);
    let c = &ctx.c;
    let pongs_during_ramp = c.pongs.load(Relaxed);
    let mut rep = IdleReport {
        transport: args.transport.name().to_string(),
        connections: n,
        sources: sources.len(),
        target_rate: args.rate,
        before,
        ..IdleReport::default()
    };
    let authenticated = c.authenticated.load(Relaxed);
    rep.ramp_seconds = Duration::from_nanos(c.last_auth_ns.load(Relaxed)).as_secs_f64();
    rep.connect_rate_per_sec = per(authenticated as f64, rep.ramp_seconds);
    println!(
        "ramp: {authenticated}/{n} authenticated in {:.2} s ({:.0} conns/s); connect failed {}, auth failed {} [{}]",
        rep.ramp_seconds,
        rep.connect_rate_per_sec,
        c.connect_failed.load(Relaxed),
        c.auth_failed.load(Relaxed),
        c.failures.line(),
    );

    // Settle, then sample.
    if !cancel.is_cancelled() {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(args.settle) => {}
        }
    }
    rep.live_after_ramp = c.live.load(Relaxed);
    rep.after = Sample::take(args.room_pid);
    let live = rep.live_after_ramp as f64;
    let growth = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if live > 0.0 => Some((b as f64 - a as f64) / live),
        _ => None,
    };
    rep.room_rss_per_conn_bytes = growth(rep.before.room_rss, rep.after.room_rss);
    rep.slab_per_conn_bytes = growth(rep.before.slab, rep.after.slab);
    rep.bench_rss_per_conn_bytes = growth(rep.before.bench_rss, rep.after.bench_rss);
    if let (Some(a), Some(b)) = (rep.before.room_cpu, rep.after.room_cpu) {
        rep.room_cpu_ramp_seconds = Some(b.since(a).as_secs_f64());
    }
    if let Some(x) = rep.room_rss_per_conn_bytes {
        println!(
            "rss per connection: {x:.0} bytes (room VmRSS {} -> {} over {} live connections)",
            fmt_opt(rep.before.room_rss),
            fmt_opt(rep.after.room_rss),
            rep.live_after_ramp
        );
    }
    if let Some(x) = rep.slab_per_conn_bytes {
        println!(
            "slab per connection: {x:.0} bytes (kernel Slab, whole machine, both ends on loopback)"
        );
    }
    if let Some(x) = rep.bench_rss_per_conn_bytes {
        println!("bench rss per connection: {x:.0} bytes (client side)");
    }

    // Hold.
    let drops_before = c.unexpected_closes.load(Relaxed);
    let pongs_before = c.pongs.load(Relaxed);
    let hold_start = Instant::now();
    while !cancel.is_cancelled() && hold_start.elapsed() < args.hold {
        let left = args.hold.saturating_sub(hold_start.elapsed());
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(left.min(Duration::from_secs(1))) => {}
        }
        progress(&ctx, "hold");
        if c.live.load(Relaxed) == 0 {
            eprintln!("no connection left; ending the hold");
            break;
        }
    }
    rep.hold_seconds = hold_start.elapsed().as_secs_f64();
    let hold_end_cpu = CpuMark::read(args.room_pid);
    if let (Some(a), Some(b)) = (rep.after.room_cpu, hold_end_cpu.ticks) {
        rep.room_cpu_hold_seconds = Some(b.since(a).as_secs_f64());
    }
    rep.live_at_end = c.live.load(Relaxed);
    rep.drops_during_hold = c.unexpected_closes.load(Relaxed) - drops_before;

    // CPU per operation.
    rep.room_cpu_clock = rep.before.cpu.clock().map(str::to_string);
    rep.pongs_during_hold = c.pongs.load(Relaxed) - pongs_before;
    rep.room_cpu_hold_s = hold_end_cpu.since(&rep.after.cpu);
    rep.room_cpu_per_heartbeat_us = per_op_us(rep.room_cpu_hold_s, rep.pongs_during_hold, 0, None);
    rep.pongs_during_ramp = pongs_during_ramp;
    rep.room_cpu_connect_s = ramp_end_cpu.since(&rep.before.cpu);
    rep.room_cpu_per_connect_us = per_op_us(
        rep.room_cpu_connect_s,
        authenticated,
        pongs_during_ramp,
        rep.room_cpu_per_heartbeat_us,
    );

    if args.broadcasts > 0 && !cancel.is_cancelled() {
        broadcasts(&ctx, &args, &mut rep).await?;
    }

    // Close everything, bounded.
    cancel.cancel();
    let _ = ramp.await;
    let close_budget = args.step_timeout + Duration::from_secs(5);
    if !close_and_wait(&tracker, close_budget).await {
        eprintln!("some connections did not close within {close_budget:?}");
    }

    rep.authenticated = c.authenticated.load(Relaxed);
    rep.connect_failed = c.connect_failed.load(Relaxed);
    rep.auth_failed = c.auth_failed.load(Relaxed);
    rep.failures = c.failures.snapshot();
    rep.unexpected_closes = c.unexpected_closes.load(Relaxed);
    rep.close_reasons = c.closes.snapshot();
    rep.pings_sent = c.pings.load(Relaxed);
    rep.pongs = c.pongs.load(Relaxed);
    rep.unexpected_msgs = c.msgs.load(Relaxed).saturating_sub(rep.broadcast_received);
    rep.server_errors = c.server_errors.load(Relaxed);
    rep.undecodable = c.undecodable.load(Relaxed);
    rep.interrupted = interrupted.load(Relaxed);
    if let Some(cpu) = rep.room_cpu_hold_seconds {
        println!(
            "room cpu during hold: {cpu:.2} s over {:.1} s",
            rep.hold_seconds
        );
    }
    print_per_op(&rep);
    println!(
        "hold: {:.1} s, live at end {}, drops during hold {} [{}]; pings {} pongs {}",
        rep.hold_seconds,
        rep.live_at_end,
        rep.drops_during_hold,
        c.closes.line(),
        rep.pings_sent,
        rep.pongs,
    );
    if let Some(path) = &args.json_out {
        crate::write_json(path, &rep)?;
    }
    let ok = rep.authenticated == n
        && rep.unexpected_closes == 0
        && rep.broadcast_received == rep.broadcast_expected
        && rep.broadcast_http_errors == 0;
    let outcome = if rep.interrupted {
        Outcome::Interrupted
    } else if ok {
        println!("idle: ok");
        Outcome::Ok
    } else {
        println!(
            "idle: FAILED ({} of {n} authenticated, {} unexpected closes, broadcasts {} of {} \
             received, {} failed requests)",
            rep.authenticated,
            rep.unexpected_closes,
            rep.broadcast_received,
            rep.broadcast_expected,
            rep.broadcast_http_errors,
        );
        Outcome::Failed
    };
    Ok((outcome, rep))
}

/// Prints the room's CPU per connect, heartbeat and broadcast delivery.
fn print_per_op(rep: &IdleReport) {
    let clock = rep.room_cpu_clock.as_deref().unwrap_or("?");
    if let (Some(us), Some(cpu)) = (rep.room_cpu_per_connect_us, rep.room_cpu_connect_s) {
        println!(
            "room cpu per connect: {us:.1} us ({cpu:.3} s over {} connects, {} heartbeats \
             taken out; {clock})",
            rep.authenticated, rep.pongs_during_ramp
        );
    }
    if let (Some(us), Some(cpu)) = (rep.room_cpu_per_heartbeat_us, rep.room_cpu_hold_s) {
        println!(
            "room cpu per heartbeat: {us:.2} us ({cpu:.3} s over {} pongs during the hold; \
             {clock}; /proc/PID/stat ticks say {} s)",
            rep.pongs_during_hold,
            rep.room_cpu_hold_seconds
                .map_or("?".to_string(), |t| format!("{t:.2}")),
        );
    }
    if rep.broadcasts_sent > 0 {
        let mut last = rep.broadcast_last_ms.clone();
        last.sort_by(f64::total_cmp);
        let median = last.get(last.len() / 2).copied().unwrap_or(0.0);
        let max = last.last().copied().unwrap_or(0.0);
        println!(
            "broadcasts: {} sent ({} failed), {}/{} delivered, last client after {median:.1} ms \
             median, {max:.1} ms max",
            rep.broadcasts_sent,
            rep.broadcast_http_errors,
            rep.broadcast_received,
            rep.broadcast_expected,
        );
        if let (Some(us), Some(cpu)) = (rep.room_cpu_per_delivery_us, rep.room_cpu_broadcast_s) {
            println!(
                "room cpu per broadcast delivery: {us:.2} us ({cpu:.3} s over {} deliveries, {} \
                 heartbeats taken out; {clock})",
                rep.broadcast_received, rep.pongs_during_broadcasts
            );
        }
    }
}

/// Sends `--broadcasts` broadcasts one at a time, each waited for until
/// every live connection has it (or `--broadcast-wait`), and measures the
/// room's CPU over each.
async fn broadcasts(ctx: &Ctx, args: &IdleArgs, rep: &mut IdleReport) -> anyhow::Result<()> {
    let c = &ctx.c;
    let http = reqwest::Client::builder()
        .timeout(args.step_timeout)
        .build()
        .context("building the HTTP client")?;
    let url = format!("{}/api/v1/push/broadcast", args.http.trim_end_matches('/'));
    let mut cpu: Option<f64> = None;
    for k in 1..=args.broadcasts {
        if ctx.cancel.is_cancelled() {
            break;
        }
        let expected = c.live.load(Relaxed);
        let (msgs0, pongs0) = (c.msgs.load(Relaxed), c.pongs.load(Relaxed));
        let cpu0 = CpuMark::read(args.room_pid);
        let started = Instant::now();
        let data = serde_json::json!({ "k": "b", "n": k, "t": crate::now_unix_ns() });
        let body = if args.broadcast_as_frame {
            let ms = crate::now_unix_ns() / 1_000_000;
            serde_json::json!({ "op": "msg", "id": k, "ts": ms, "data": data })
        } else {
            serde_json::json!({ "data": data })
        };
        let mut req = http.post(&url).json(&body);
        if !args.api_key.is_empty() {
            req = req.bearer_auth(&args.api_key);
        }
        rep.broadcasts_sent += 1;
        let sent = match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("status {}", r.status().as_u16())),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            rep.broadcast_http_errors += 1;
            c.log(&format!("broadcast {k}: {e}"));
            continue;
        }
        rep.broadcast_expected += expected;
        let deadline = started + args.broadcast_wait;
        while c.msgs.load(Relaxed) - msgs0 < expected
            && Instant::now() < deadline
            && !ctx.cancel.is_cancelled()
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = started.elapsed();
        if let Some(s) = CpuMark::read(args.room_pid).since(&cpu0) {
            *cpu.get_or_insert(0.0) += s;
        }
        rep.broadcast_received += (c.msgs.load(Relaxed) - msgs0).min(expected);
        rep.pongs_during_broadcasts += c.pongs.load(Relaxed) - pongs0;
        rep.broadcast_last_ms.push(elapsed.as_secs_f64() * 1000.0);
        // Let stragglers and the server settle before the next one.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rep.room_cpu_broadcast_s = cpu;
    rep.room_cpu_per_delivery_us = per_op_us(
        cpu,
        rep.broadcast_received,
        rep.pongs_during_broadcasts,
        rep.room_cpu_per_heartbeat_us,
    );
    Ok(())
}

/// Starts client `i` at `start + i / rate`, at most `concurrency` in their
/// connect/auth phase at once.
async fn ramp(
    ctx: Arc<Ctx>,
    tracker: TaskTracker,
    sources: Arc<[IpAddr]>,
    sched: Schedule,
    n: u64,
    concurrency: u64,
) {
    let sem = Arc::new(Semaphore::new(
        usize::try_from(concurrency).unwrap_or(usize::MAX),
    ));
    for i in 0..n {
        let due = tokio::time::Instant::from_std(ctx.ramp_start + sched.offset(i));
        let permit = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            p = async {
                tokio::time::sleep_until(due).await;
                sem.clone().acquire_owned().await
            } => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let source = pick_source(&sources, i);
        ctx.c.started.fetch_add(1, Relaxed);
        tracker.spawn(idle_client(ctx.clone(), i, source, permit));
    }
}

/// Source address for connection `i`, round-robin.
fn pick_source(sources: &[IpAddr], i: u64) -> Option<IpAddr> {
    if sources.is_empty() {
        return None;
    }
    let idx = usize::try_from(i % sources.len() as u64).unwrap_or(0);
    sources.get(idx).copied()
}

/// One idle client: connect, auth, then heartbeat until cancelled.
async fn idle_client(ctx: Arc<Ctx>, i: u64, source: Option<IpAddr>, permit: OwnedSemaphorePermit) {
    let c = &ctx.c;
    let result = if ctx.no_auth {
        let connect = tokio::time::timeout(ctx.step_timeout, Conn::connect(&ctx.ep, source));
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            r = connect => match r {
                Ok(Ok(conn)) => Ok((conn, ctx.heartbeat.unwrap_or(30))),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ClientError::Timeout("connect")),
            },
        }
    } else {
        let token = match mint(&ctx.secret, i, ctx.exp, ctx.channel.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                c.auth_failed.fetch_add(1, Relaxed);
                c.failures.add("mint");
                c.log(&format!("mint: {e}"));
                return;
            }
        };
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            r = connect_and_auth(&ctx.ep, source, &token, ctx.step_timeout) => {
                r.map(|(conn, ok)| (conn, ok.heartbeat))
            }
        }
    };
    drop(permit);
    let (mut conn, server_heartbeat) = match result {
        Ok(x) => x,
        Err(e) => {
            record_failure(c, &e);
            return;
        }
    };
    c.authenticated.fetch_add(1, Relaxed);
    c.live.fetch_add(1, Relaxed);
    let since = u64::try_from(ctx.ramp_start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    c.last_auth_ns.fetch_max(since, Relaxed);

    if let Some(channel) = &ctx.channel {
        let sub = ClientFrame::Sub {
            seq: None,
            channel: channel.clone(),
            last_id: None,
            presence: false,
        };
        if let Err(e) = conn.send(&sub).await {
            record_failure(c, &e);
            c.live.fetch_sub(1, Relaxed);
            return;
        }
    }
    let mut heartbeat = Heartbeat::start(ctx.heartbeat.unwrap_or(server_heartbeat));
    // SSE: the client sends nothing; the server's comments (received as
    // pongs) keep the stream alive.
    let pinging = conn.sends_pings();
    let ended = loop {
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => break None,
            _ = tokio::time::sleep_until(heartbeat.due()), if pinging => {
                if let Err(e) = conn.send(&ClientFrame::Ping { seq: None }).await {
                    break Some(Closed::Io(e.to_string()));
                }
                c.pings.fetch_add(1, Relaxed);
                heartbeat.sent();
            }
            ev = conn.recv() => match ev {
                Event::Frame(ServerFrame::Pong { .. }) => { c.pongs.fetch_add(1, Relaxed); }
                Event::Frame(ServerFrame::Msg(_)) => { c.msgs.fetch_add(1, Relaxed); }
                Event::Frame(ServerFrame::Error { code, message, .. }) => {
                    // A fatal error is followed by a close, counted there.
                    c.server_errors.fetch_add(1, Relaxed);
                    c.log(&format!("bench-{i}: server error {}: {message}", code.as_str()));
                }
                Event::Frame(_) => {}
                Event::Undecodable(e) => {
                    c.undecodable.fetch_add(1, Relaxed);
                    c.log(&format!("bench-{i}: undecodable frame: {e}"));
                }
                Event::Closed(closed) => break Some(closed),
            },
        }
    };
    c.live.fetch_sub(1, Relaxed);
    match ended {
        None => conn.close(Duration::from_secs(5)).await,
        Some(closed) => {
            c.unexpected_closes.fetch_add(1, Relaxed);
            c.closes.add(&closed.key());
            c.log(&format!("bench-{i}: {closed}"));
        }
    }
}

fn record_failure(c: &Counters, e: &ClientError) {
    if e.is_auth() {
        c.auth_failed.fetch_add(1, Relaxed);
    } else {
        c.connect_failed.fetch_add(1, Relaxed);
    }
    c.failures.add(&e.key());
    c.log(&e.to_string());
}

/// A token for user `bench-<i>`.
fn mint(
    secret: &[u8],
    i: u64,
    exp: u64,
    channel: Option<&str>,
) -> Result<String, proto::token::TokenError> {
    let claims = proto::token::Claims {
        sub: format!("bench-{i}"),
        exp,
        dev: None,
        channels: channel.map(|c| vec![c.to_owned()]),
        send: None,
        publish: None,
    };
    proto::token::mint(&claims, secret)
}

/// Refuses a run that needs more ephemeral ports per source address than
/// the kernel has.
fn check_ports(n: u64, sources: usize) -> anyhow::Result<()> {
    let Some((lo, hi)) = proc::port_range() else {
        return Ok(());
    };
    let ports = u64::from(hi - lo) + 1;
    let per_source = n.div_ceil(sources.max(1) as u64);
    if per_source > ports {
        anyhow::bail!(
            "{per_source} connections per source address but only {ports} ephemeral ports \
             ({lo}-{hi}); add source addresses with --sources 127.0.0.2-127.0.0.N or widen \
             net.ipv4.ip_local_port_range (see bench/README.md)"
        );
    }
    Ok(())
}

fn progress(ctx: &Ctx, phase: &str) {
    let c = &ctx.c;
    let secs = ctx.ramp_start.elapsed().as_secs();
    eprintln!(
        "[{secs:>4}s] {phase}: live {} authenticated {} / started {} | connect failed {} auth failed {} closed {}",
        c.live.load(Relaxed),
        c.authenticated.load(Relaxed),
        c.started.load(Relaxed),
        c.connect_failed.load(Relaxed),
        c.auth_failed.load(Relaxed),
        c.unexpected_closes.load(Relaxed),
    );
}

fn fmt_opt(v: Option<u64>) -> String {
    v.map_or("?".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn sources_round_robin() {
        let s: Vec<IpAddr> = vec![[127, 0, 0, 2].into(), [127, 0, 0, 3].into()];
        assert_eq!(pick_source(&s, 0), Some(s[0]));
        assert_eq!(pick_source(&s, 1), Some(s[1]));
        assert_eq!(pick_source(&s, 2), Some(s[0]));
        assert_eq!(pick_source(&[], 5), None);
    }

    #[test]
    fn args_parse() {
        let cli = crate::Cli::try_parse_from([
            "bench",
            "idle",
            "--connections",
            "15000",
            "--token-secret",
            "S",
            "--sources",
            "127.0.0.2-127.0.0.4",
            "--rate",
            "5000",
            "--hold",
            "2m",
            "--heartbeat",
            "30",
            "--room-pid",
            "42",
            "--transport",
            "tcp",
        ])
        .unwrap();
        let crate::Cmd::Idle(a) = cli.cmd else {
            panic!("not idle")
        };
        assert_eq!(a.connections, 15000);
        assert_eq!(a.sources.as_ref().map(|s| s.0.len()), Some(3));
        assert_eq!(a.hold, Duration::from_secs(120));
        assert_eq!(a.heartbeat, Some(30));
        assert_eq!(a.room_pid, Some(42));
        assert_eq!(a.transport, Transport::Tcp);
        assert_eq!(a.ws, "ws://127.0.0.1:7700/ws");
    }

    #[test]
    fn quic_args_parse() {
        let cli = crate::Cli::try_parse_from([
            "bench",
            "idle",
            "--token-secret",
            "S",
            "--transport",
            "quic",
            "--quic",
            "127.0.0.1:9",
            "--tls-fingerprint",
            "sha256:00",
        ])
        .unwrap();
        let crate::Cmd::Idle(a) = cli.cmd else {
            panic!("not idle")
        };
        assert_eq!(a.transport, Transport::Quic);
        assert_eq!(a.quic.quic, "127.0.0.1:9");
        assert_eq!(a.quic.tls_fingerprint.as_deref(), Some("sha256:00"));
    }

    #[test]
    fn args_refuse_nonsense() {
        for bad in [
            vec!["bench", "idle", "--token-secret", "S", "--connections", "0"],
            vec!["bench", "idle", "--token-secret", "S", "--rate", "0"],
            vec!["bench", "idle", "--token-secret", "S", "--hold", "forever"],
            vec!["bench", "idle", "--token-secret", "S", "--sources", "nope"],
            vec![
                "bench",
                "idle",
                "--token-secret",
                "S",
                "--transport",
                "sctp",
            ],
        ] {
            assert!(
                crate::Cli::try_parse_from(&bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn port_check() {
        // Whatever the range here, one connection fits and ten million per source does not.
        assert!(check_ports(1, 0).is_ok());
        if proc::port_range().is_some() {
            assert!(check_ports(10_000_000, 1).is_err());
            assert!(check_ports(10_000_000, 4096).is_ok());
        }
    }

    fn idle_args(fake: &crate::testsrv::Fake, extra: &[&str]) -> IdleArgs {
        let mut argv = vec![
            "bench".to_string(),
            "idle".into(),
            "--ws".into(),
            fake.ws_url.clone(),
            "--tcp".into(),
            fake.tcp_addr.clone(),
            "--token-secret".into(),
            crate::testsrv::SECRET.into(),
            "--rate".into(),
            "2000".into(),
            "--settle".into(),
            "0s".into(),
            "--room-pid".into(),
            std::process::id().to_string(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let cli = crate::Cli::try_parse_from(argv).unwrap();
        let crate::Cmd::Idle(a) = cli.cmd else {
            panic!("not idle")
        };
        a
    }

    #[tokio::test]
    async fn idle_run_holds_and_closes_cleanly() {
        for transport in ["ws", "tcp"] {
            let fake = crate::testsrv::start(crate::testsrv::Behavior::default()).await;
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("idle.json");
            let args = idle_args(
                &fake,
                &[
                    "--connections",
                    "40",
                    "--hold",
                    "1500ms",
                    "--transport",
                    transport,
                    "--sources",
                    "127.0.0.2-127.0.0.3",
                    "--json-out",
                    out.to_str().unwrap(),
                ],
            );
            assert_eq!(run(args).await.unwrap(), Outcome::Ok);
            let r = crate::testsrv::read_report(&out);
            assert_eq!(r["authenticated"], 40);
            assert_eq!(r["connect_failed"], 0);
            assert_eq!(r["unexpected_closes"], 0);
            assert_eq!(r["live_at_end"], 40);
            // Heartbeat 1 s from the server, first ping within the first second.
            assert!(r["pings_sent"].as_u64().unwrap() >= 40, "{r}");
            // A ping sent just before the end may miss its pong.
            assert!(r["pongs"].as_u64().unwrap() >= 40, "{r}");
            assert!(r["pongs"].as_u64() <= r["pings_sent"].as_u64(), "{r}");
            assert!(r["room_rss_per_conn_bytes"].is_number(), "{r}");
            assert_eq!(fake.clean_closes.load(Relaxed), 40);
            let peers = fake.peers.lock();
            assert_eq!(peers.len(), 40);
            assert_eq!(
                peers
                    .iter()
                    .filter(|p| p.ip() == IpAddr::from([127, 0, 0, 2]))
                    .count(),
                20
            );
        }
    }

    #[tokio::test]
    async fn idle_run_over_sse_holds_receives_broadcasts_and_closes() {
        let fake = crate::testsrv::start(crate::testsrv::Behavior::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("idle.json");
        let http = fake.http_url.clone();
        let args = idle_args(
            &fake,
            &[
                "--connections",
                "40",
                "--hold",
                "1500ms",
                "--transport",
                "sse",
                "--sources",
                "127.0.0.2-127.0.0.3",
                "--broadcasts",
                "2",
                "--http",
                &http,
                "--api-key",
                crate::testsrv::API_KEY,
                "--json-out",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(run(args).await.unwrap(), Outcome::Ok);
        let r = crate::testsrv::read_report(&out);
        assert_eq!(r["transport"], "sse", "{r}");
        assert_eq!(r["authenticated"], 40, "{r}");
        assert_eq!(r["unexpected_closes"], 0, "{r}");
        assert_eq!(r["live_at_end"], 40, "{r}");
        assert_eq!(r["undecodable"], 0, "{r}");
        // No pings go out; the server's comments (every 250 ms) come in as pongs.
        assert_eq!(r["pings_sent"], 0, "{r}");
        assert!(r["pongs"].as_u64().unwrap() >= 40 * 4, "{r}");
        assert_eq!(r["broadcast_expected"], 80, "{r}");
        assert_eq!(r["broadcast_received"], 80, "{r}");
        assert_eq!(r["unexpected_msgs"], 0, "{r}");
        assert_eq!(fake.pings.load(Relaxed), 0);
        assert!(eventually_eq(|| fake.clean_closes.load(Relaxed), 40).await);
        assert_eq!(fake.peers.lock().len(), 40);
        // --no-auth cannot apply: the request carries the token.
        let mut args = idle_args(
            &fake,
            &[
                "--transport",
                "sse",
                "--no-auth",
                "--heartbeat",
                "1",
                "--hold",
                "0s",
            ],
        );
        args.token_secret = String::new();
        assert!(run(args).await.is_err());
    }

    /// Waits (bounded) until `f` gives `want`.
    async fn eventually_eq(f: impl Fn() -> u64, want: u64) -> bool {
        for _ in 0..250 {
            if f() == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn idle_run_reports_drops_with_close_codes() {
        let fake = crate::testsrv::start(crate::testsrv::Behavior {
            kick_after: Some(Duration::from_millis(200)),
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("idle.json");
        for transport in ["ws", "sse"] {
            let args = idle_args(
                &fake,
                &[
                    "--connections",
                    "10",
                    "--hold",
                    "3s",
                    "--transport",
                    transport,
                    "--json-out",
                    out.to_str().unwrap(),
                ],
            );
            assert_eq!(run(args).await.unwrap(), Outcome::Failed);
            let r = crate::testsrv::read_report(&out);
            assert_eq!(r["authenticated"], 10, "{transport}: {r}");
            assert_eq!(r["unexpected_closes"], 10, "{transport}: {r}");
            assert_eq!(r["close_reasons"]["4003"], 10, "{transport}: {r}");
            assert_eq!(r["live_at_end"], 0, "{transport}: {r}");
        }
    }

    #[tokio::test]
    async fn idle_run_broadcasts_to_the_floor_and_gives_cpu_per_op() {
        use crate::floor::{Floor, FloorConfig};
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let floor = Floor::bind(
            FloorConfig {
                secret: Some(crate::testsrv::SECRET.as_bytes().to_vec()),
                heartbeat: 1,
                ..FloorConfig::default()
            },
            any,
            any,
            any,
        )
        .unwrap();
        let (addrs, stopper) = (floor.addrs().unwrap(), floor.stopper());
        let thread = std::thread::spawn(move || floor.run());
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("idle.json");
        let ws = format!("ws://{}/ws", addrs.ws);
        let http = format!("http://{}", addrs.http);
        let cli = crate::Cli::try_parse_from([
            "bench",
            "idle",
            "--ws",
            &ws,
            "--http",
            &http,
            "--token-secret",
            crate::testsrv::SECRET,
            "--connections",
            "30",
            "--settle",
            "0s",
            "--hold",
            "1500ms",
            "--broadcasts",
            "3",
            "--room-pid",
            &std::process::id().to_string(),
            "--json-out",
            out.to_str().unwrap(),
        ])
        .unwrap();
        let crate::Cmd::Idle(args) = cli.cmd else {
            panic!("not idle")
        };
        assert_eq!(run(args).await.unwrap(), Outcome::Ok);
        stopper.stop();
        let stats = thread.join().unwrap();
        let r = crate::testsrv::read_report(&out);
        assert_eq!(r["authenticated"], 30, "{r}");
        assert_eq!(r["broadcasts_sent"], 3, "{r}");
        assert_eq!(r["broadcast_expected"], 90, "{r}");
        assert_eq!(r["broadcast_received"], 90, "{r}");
        assert_eq!(r["unexpected_msgs"], 0, "{r}");
        assert_eq!(r["broadcast_last_ms"].as_array().unwrap().len(), 3, "{r}");
        assert_eq!(stats.deliveries, 90);
        assert_eq!(stats.authenticated, 30);
        // The clock and figures exist (values are timings: not asserted).
        assert_eq!(r["room_cpu_clock"], "schedstat", "{r}");
        assert!(r["room_cpu_per_connect_us"].is_number(), "{r}");
        assert!(r["room_cpu_per_delivery_us"].is_number(), "{r}");
        assert!(r["pongs_during_hold"].as_u64().unwrap() > 0, "{r}");
    }

    #[tokio::test]
    async fn idle_run_without_auth_heartbeats() {
        let fake = crate::testsrv::start(crate::testsrv::Behavior::default()).await;
        let mut args = idle_args(
            &fake,
            &[
                "--connections",
                "10",
                "--hold",
                "1500ms",
                "--no-auth",
                "--heartbeat",
                "1",
            ],
        );
        args.token_secret = String::new();
        assert_eq!(run(args).await.unwrap(), Outcome::Ok);
        // The fake answers pings before auth, as Nchan's heartbeat does.
        assert!(fake.pings.load(Relaxed) >= 10);
        // --no-auth needs --heartbeat; without --no-auth a secret is needed.
        assert!(crate::Cli::try_parse_from(["bench", "idle", "--no-auth"]).is_err());
        let mut args = idle_args(&fake, &["--connections", "1", "--hold", "0s"]);
        args.token_secret = String::new();
        assert!(run(args).await.is_err());
    }

    #[test]
    fn per_op_takes_heartbeats_out() {
        // 1 s over 1000 ops with 2000 heartbeats of 100 us: 0.8 s / 1000.
        let us = per_op_us(Some(1.0), 1000, 2000, Some(100.0)).unwrap();
        assert!((us - 800.0).abs() < 1e-6, "{us}");
        assert_eq!(per_op_us(Some(1.0), 0, 0, None), None);
        assert_eq!(per_op_us(None, 10, 0, None), None);
        assert_eq!(per_op_us(Some(0.1), 10, 1_000_000, Some(1.0)), Some(0.0));
    }

    #[tokio::test]
    async fn idle_run_counts_auth_failures() {
        let fake = crate::testsrv::start(crate::testsrv::Behavior::default()).await;
        let mut args = idle_args(&fake, &["--connections", "5", "--hold", "0s"]);
        args.token_secret = "wrong".into();
        assert_eq!(run(args).await.unwrap(), Outcome::Failed);
    }
}
