//! `bench latency`: one connected client per user, pushes through the REST
//! API at a fixed rate (paced by schedule), and the end-to-end latency from
//! the push's send time (carried in the payload) to its arrival at the client.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use parking_lot::Mutex;
use proto::{ClientFrame, MsgFrame, MsgId, ServerFrame};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::args::{parse_duration, Transport};
use crate::client::{
    connect_and_auth, mint_token, AuthOk, ClientError, Closed, Conn, Endpoint, Event,
};
use crate::pace::{Heartbeat, Schedule};
use crate::quic::QuicArgs;
use crate::runctl::{close_and_wait, spawn_ctrl_c};
use crate::stats::{per, LatencyHist, Summary, Tally};
use crate::{now_unix_ns, proc, Outcome};

/// Most pushes one run may make (bounds the id sets kept for loss counting).
const MAX_PUSHES: u64 = 10_000_000;
/// Connects in flight while the users' clients open.
const CONNECT_CONCURRENCY: usize = 64;
/// A push starting later than this after its scheduled time counts as late
/// (tokio's timer has millisecond granularity, so 1–2 ms is noise).
const LATE: Duration = Duration::from_millis(5);

/// Arguments of `bench latency`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct LatencyArgs {
    /// Base URL of the REST API.
    #[arg(long, default_value = "http://127.0.0.1:7780")]
    http: String,
    /// API key for the REST API.
    #[arg(long, env = "PUSHGATE_API_KEY", hide_env_values = true)]
    api_key: String,
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
    /// The server's token secret; tokens are minted locally.
    #[arg(long, env = "PUSHGATE_TOKEN_SECRET", hide_env_values = true)]
    token_secret: String,
    /// Users, one client each (`bench-lat-0` .. `bench-lat-<N-1>`); pushes go round-robin.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    users: u64,
    /// Pushes per second.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,
    /// How long to push.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Whether pushes are stored (`"store"` in the request).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    store: bool,
    /// Most HTTP requests in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    inflight: u64,
    /// Push over HTTP/2 cleartext (h2c, prior knowledge): every request in
    /// flight shares one connection, instead of one keep-alive HTTP/1.1
    /// connection per request in flight.
    #[arg(long)]
    http2: bool,
    /// After the last push, how long to wait for deliveries still on their way.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    grace: Duration,
    /// Time allowed for each of connect and auth, and for one HTTP request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    step_timeout: Duration,
    /// Nchan side by side (bench/scripts/nchan-unicast.sh): each user's
    /// client subscribes without auth at `<ws><user>` (`--ws
    /// ws://127.0.0.1:7900/sub/`), and each push is `POST <http>/pub/<user>`
    /// whose body is the `msg` frame itself, numbered by the bench (Nchan
    /// relays it verbatim); a 2xx answer is the acknowledgement.
    #[arg(long)]
    nchan: bool,
    /// Heartbeat interval in seconds with `--nchan` (there is no `auth_ok`).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=3600))]
    nchan_heartbeat: u32,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// State shared by the pusher and the receiving clients.
struct Shared {
    /// Messages with an earlier send time are leftovers (replays of earlier runs).
    run_start_ns: u64,
    e2e: Mutex<LatencyHist>,
    http: Mutex<LatencyHist>,
    /// Ids received (user messages of this run).
    received: Mutex<HashSet<i64>>,
    /// Ids of pushes the API acknowledged.
    acked: Mutex<Vec<i64>>,
    sent: AtomicU64,
    http_errors: AtomicU64,
    http_failures: Tally,
    not_delivered: AtomicU64,
    duplicates: AtomicU64,
    stale: AtomicU64,
    bad_payload: AtomicU64,
    late_sends: AtomicU64,
    /// Pushes that found every in-flight slot busy and waited.
    inflight_full: AtomicU64,
    max_lag_ns: AtomicU64,
    unexpected_closes: AtomicU64,
    closes: Tally,
}

/// The API's answer to a push.
#[derive(Deserialize)]
struct PushAnswer {
    id: i64,
    #[serde(default)]
    delivered: u64,
}

/// The `bench latency` report (also written as JSON).
#[derive(Debug, Serialize)]
struct LatencyReport {
    transport: Transport,
    users: u64,
    target_rate: u64,
    duration_seconds: f64,
    store: bool,
    sent: u64,
    acked: u64,
    http_errors: u64,
    http_failures: BTreeMap<String, u64>,
    not_delivered: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    stale: u64,
    bad_payload: u64,
    achieved_rate: f64,
    late_sends: u64,
    inflight_full: u64,
    max_send_lag_ms: f64,
    e2e: Summary,
    http: Summary,
    unexpected_closes: u64,
    close_reasons: BTreeMap<String, u64>,
    interrupted: bool,
}

/// Runs `bench latency`.
pub(crate) async fn run(args: LatencyArgs) -> anyhow::Result<Outcome> {
    // Its clients ack on the way out so that a later run gets no replay; an
    // SSE client cannot send an ack.
    anyhow::ensure!(
        !args.transport.is_sse(),
        "bench latency speaks ws, tcp or quic (--transport sse: bench idle only)"
    );
    let sched = Schedule::new(args.rate);
    let total = sched.count_in(args.duration);
    if total > MAX_PUSHES {
        anyhow::bail!("{total} pushes is more than {MAX_PUSHES}; lower --rate or --duration");
    }
    if total == 0 {
        anyhow::bail!(
            "--duration {:?} at --rate {} makes no push",
            args.duration,
            args.rate
        );
    }
    proc::check_nofile(args.users + args.inflight + 64)?;
    let ep = Endpoint::resolve(args.transport, &args.ws, &args.tcp, &args.quic).await?;
    let url: Arc<str> = if args.nchan {
        format!("{}/pub/", args.http.trim_end_matches('/')).into()
    } else {
        format!("{}/api/v1/push/users", args.http.trim_end_matches('/')).into()
    };
    let inflight = u32::try_from(args.inflight).context("--inflight too large")?;
    let mut http = reqwest::Client::builder()
        .pool_max_idle_per_host(inflight as usize)
        .timeout(args.step_timeout)
        .tcp_nodelay(true);
    if args.http2 {
        http = http.http2_prior_knowledge();
    }
    let http = http.build().context("building the http client")?;

    let cancel = CancellationToken::new();
    let interrupted = spawn_ctrl_c(cancel.clone(), "stopping");

    // Connect one client per user.
    let exp = now_unix_ns() / 1_000_000_000
        + (args.duration + args.grace + args.step_timeout * 4).as_secs()
        + 3600;
    let how = if args.nchan {
        Subscribe::Nchan {
            heartbeat: args.nchan_heartbeat,
        }
    } else {
        Subscribe::Auth { exp }
    };
    let conns = connect_users(
        &ep,
        args.token_secret.as_bytes(),
        args.users,
        how,
        args.step_timeout,
        &cancel,
    )
    .await?;
    println!(
        "latency: {} {} clients connected to {}; pushing {total} messages at {}/s for {:?} (store={})",
        conns.len(),
        args.transport.name(),
        ep.addr(),
        args.rate,
        args.duration,
        args.store,
    );

    let shared = Arc::new(Shared::new(
        now_unix_ns(),
        usize::try_from(total).unwrap_or(0),
    )?);
    let stop_clients = cancel.child_token();
    let clients = TaskTracker::new();
    for (conn, ok) in conns {
        clients.spawn(receiver(
            shared.clone(),
            conn,
            ok,
            !args.nchan,
            stop_clients.clone(),
        ));
    }

    // Push on schedule.
    let sem = Arc::new(Semaphore::new(inflight as usize));
    let pushes = TaskTracker::new();
    let start = Instant::now();
    let mut last_progress = start;
    for i in 0..total {
        let due = start + sched.offset(i);
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = async {
                tokio::time::sleep_until(due.into()).await;
                match sem.clone().try_acquire_owned() {
                    Ok(p) => Ok(p),
                    Err(_) => {
                        shared.inflight_full.fetch_add(1, Relaxed);
                        sem.clone().acquire_owned().await
                    }
                }
            } => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let lag = due.elapsed();
        if lag > LATE {
            shared.late_sends.fetch_add(1, Relaxed);
        }
        shared
            .max_lag_ns
            .fetch_max(u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        let user = format!("bench-lat-{}", i % args.users);
        let push = if args.nchan {
            // Nchan relays the body: the msg frame itself, id i + 1.
            Push::Nchan {
                id: i64::try_from(i + 1).unwrap_or(i64::MAX),
            }
        } else {
            Push::Api { store: args.store }
        };
        pushes.spawn(push_one(
            shared.clone(),
            http.clone(),
            url.clone(),
            args.api_key.clone(),
            user,
            push,
            permit,
        ));
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(&shared, start);
        }
    }
    let push_seconds = start.elapsed().as_secs_f64();
    if !close_and_wait(&pushes, args.step_timeout + Duration::from_secs(1)).await {
        eprintln!("some pushes did not finish in time");
    }

    // Grace: wait for what is still on its way.
    let grace_end = Instant::now() + args.grace;
    while Instant::now() < grace_end && !cancel.is_cancelled() {
        let acked = shared.acked.lock().len();
        let received = shared.received.lock().len();
        if received >= acked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stop_clients.cancel();
    if !close_and_wait(&clients, args.step_timeout).await {
        eprintln!("some clients did not close in time");
    }

    let rep = report(&args, &shared, push_seconds, interrupted.load(Relaxed));
    println!(
        "latency: sent {} acked {} received {} lost {} dup {} | e2e ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} | http ms p50 {:.3} p99 {:.3} | {:.0} pushes/s, late {} (max {:.1} ms), in-flight full {}",
        rep.sent, rep.acked, rep.received, rep.lost, rep.duplicates,
        rep.e2e.p50_ms, rep.e2e.p90_ms, rep.e2e.p99_ms, rep.e2e.p999_ms, rep.e2e.max_ms,
        rep.http.p50_ms, rep.http.p99_ms, rep.achieved_rate, rep.late_sends,
        rep.max_send_lag_ms, rep.inflight_full,
    );
    if rep.http_errors > 0 {
        println!(
            "http errors: {} [{}]",
            rep.http_errors,
            shared.http_failures.line()
        );
    }
    if rep.unexpected_closes > 0 {
        println!(
            "clients closed: {} [{}]",
            rep.unexpected_closes,
            shared.closes.line()
        );
    }
    if let Some(path) = &args.json_out {
        crate::write_json(path, &rep)?;
    }
    Ok(if rep.interrupted {
        Outcome::Interrupted
    } else if rep.lost == 0 && rep.http_errors == 0 && rep.unexpected_closes == 0 {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}

impl Shared {
    /// Fresh state for a run started at `run_start_ns`, sized for `pushes`.
    fn new(run_start_ns: u64, pushes: usize) -> anyhow::Result<Shared> {
        Ok(Shared {
            run_start_ns,
            e2e: Mutex::new(LatencyHist::new()?),
            http: Mutex::new(LatencyHist::new()?),
            received: Mutex::new(HashSet::with_capacity(pushes)),
            acked: Mutex::new(Vec::with_capacity(pushes)),
            sent: AtomicU64::new(0),
            http_errors: AtomicU64::new(0),
            http_failures: Tally::default(),
            not_delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            bad_payload: AtomicU64::new(0),
            late_sends: AtomicU64::new(0),
            inflight_full: AtomicU64::new(0),
            max_lag_ns: AtomicU64::new(0),
            unexpected_closes: AtomicU64::new(0),
            closes: Tally::default(),
        })
    }
}

fn report(args: &LatencyArgs, s: &Shared, push_seconds: f64, interrupted: bool) -> LatencyReport {
    let acked = s.acked.lock().clone();
    let lost = {
        let received = s.received.lock();
        acked.iter().filter(|id| !received.contains(id)).count() as u64
    };
    let sent = s.sent.load(Relaxed);
    LatencyReport {
        transport: args.transport,
        users: args.users,
        target_rate: args.rate,
        duration_seconds: push_seconds,
        store: args.store,
        sent,
        acked: acked.len() as u64,
        http_errors: s.http_errors.load(Relaxed),
        http_failures: s.http_failures.snapshot(),
        not_delivered: s.not_delivered.load(Relaxed),
        received: s.received.lock().len() as u64,
        lost,
        duplicates: s.duplicates.load(Relaxed),
        stale: s.stale.load(Relaxed),
        bad_payload: s.bad_payload.load(Relaxed),
        achieved_rate: per(sent as f64, push_seconds),
        late_sends: s.late_sends.load(Relaxed),
        inflight_full: s.inflight_full.load(Relaxed),
        max_send_lag_ms: s.max_lag_ns.load(Relaxed) as f64 / 1e6,
        e2e: s.e2e.lock().summary(),
        http: s.http.lock().summary(),
        unexpected_closes: s.unexpected_closes.load(Relaxed),
        close_reasons: s.closes.snapshot(),
        interrupted,
    }
}

/// How a user's client subscribes.
#[derive(Clone, Copy)]
enum Subscribe {
    /// pushgate: authenticate with a token minted for the user, expiring at
    /// `exp` (seconds since the epoch).
    Auth { exp: u64 },
    /// Nchan: open the user's subscriber location, no auth.
    Nchan { heartbeat: u32 },
}

/// Opens and authenticates `bench-lat-0 .. bench-lat-<users-1>`. Fails (after
/// closing what opened) if any client fails.
async fn connect_users(
    ep: &Endpoint,
    secret: &[u8],
    users: u64,
    how: Subscribe,
    step_timeout: Duration,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<(Conn, AuthOk)>> {
    let mut set = JoinSet::new();
    let mut conns = Vec::with_capacity(usize::try_from(users).unwrap_or(0));
    let failures = Tally::default();
    let mut first_error = None;
    let mut next = 0u64;
    loop {
        while next < users && set.len() < CONNECT_CONCURRENCY && !cancel.is_cancelled() {
            let user = format!("bench-lat-{next}");
            match how {
                Subscribe::Auth { exp } => {
                    let token = mint_token(secret, user, exp).context("minting a client token")?;
                    let ep = ep.clone();
                    set.spawn(
                        async move { connect_and_auth(&ep, None, &token, step_timeout).await },
                    );
                }
                Subscribe::Nchan { heartbeat } => {
                    let ep = ep.with_url_suffix(&user);
                    set.spawn(async move {
                        let conn = tokio::time::timeout(step_timeout, Conn::connect(&ep, None))
                            .await
                            .map_err(|_| ClientError::Timeout("connect"))??;
                        let ok = AuthOk {
                            conn: proto::ConnId(0),
                            heartbeat,
                        };
                        Ok((conn, ok))
                    });
                }
            }
            next += 1;
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        match joined {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => {
                failures.add(&e.key());
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                failures.add("task");
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if cancel.is_cancelled() || first_error.is_some() {
        let opened = conns.len();
        let mut closing = JoinSet::new();
        for (conn, _) in conns {
            closing.spawn(conn.close(Duration::from_secs(2)));
        }
        while closing.join_next().await.is_some() {}
        if cancel.is_cancelled() {
            anyhow::bail!("interrupted while connecting");
        }
        anyhow::bail!(
            "only {opened} of {users} clients connected [{}]; first error: {}",
            failures.line(),
            first_error.unwrap_or_default()
        );
    }
    Ok(conns)
}

/// One user's client: records each message's latency, keeps the heartbeat,
/// and on stop acks the highest id when `ack` (so a later run gets no
/// replay; Nchan would publish the frame) and closes.
async fn receiver(s: Arc<Shared>, mut conn: Conn, ok: AuthOk, ack: bool, stop: CancellationToken) {
    let mut heartbeat = Heartbeat::start(ok.heartbeat);
    let mut max_id: Option<MsgId> = None;
    let ended = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break None,
            _ = tokio::time::sleep_until(heartbeat.due()) => {
                if let Err(e) = conn.send(&ClientFrame::Ping { seq: None }).await {
                    break Some(Closed::Io(e.to_string()));
                }
                heartbeat.sent();
            }
            ev = conn.recv() => match ev {
                Event::Frame(ServerFrame::Msg(m)) => {
                    let now = now_unix_ns();
                    if m.channel.is_none() {
                        max_id = max_id.max(Some(m.id));
                        on_msg(&s, &m, now);
                    }
                }
                Event::Frame(_) | Event::Undecodable(_) => {}
                Event::Closed(c) => break Some(c),
            },
        }
    };
    match ended {
        None => {
            if let Some(id) = max_id.filter(|_| ack) {
                let _ = conn.send(&ClientFrame::Ack { seq: None, id }).await;
            }
            conn.close(Duration::from_secs(5)).await;
        }
        Some(closed) => {
            s.unexpected_closes.fetch_add(1, Relaxed);
            s.closes.add(&closed.key());
        }
    }
}

fn on_msg(s: &Shared, m: &MsgFrame, now_ns: u64) {
    let Some(t) = payload_t(&m.data) else {
        s.bad_payload.fetch_add(1, Relaxed);
        return;
    };
    if t < s.run_start_ns {
        s.stale.fetch_add(1, Relaxed);
        return;
    }
    if !s.received.lock().insert(m.id.0) {
        s.duplicates.fetch_add(1, Relaxed);
        return;
    }
    s.e2e.lock().record_ns(now_ns.saturating_sub(t));
}

/// The send time `t` (ns since the epoch) from a payload `{"t":...}`.
fn payload_t(data: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Payload {
        t: serde_json::Number,
    }
    let p: Payload = serde_json::from_slice(data).ok()?;
    // A server that passes numbers through f64 loses the low digits but
    // still yields a usable time.
    p.t.as_u64()
        .or_else(|| p.t.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// What one push is.
#[derive(Clone, Copy)]
enum Push {
    /// `POST /api/v1/push/users` for the user; the answer carries the id.
    Api { store: bool },
    /// `POST <url><user>` with the msg frame `id` as the body (Nchan).
    Nchan { id: i64 },
}

/// One push: POST, time the answer, remember the acknowledged id.
async fn push_one(
    s: Arc<Shared>,
    http: reqwest::Client,
    url: Arc<str>,
    api_key: String,
    user: String,
    push: Push,
    permit: OwnedSemaphorePermit,
) {
    let t = now_unix_ns();
    let request = match push {
        Push::Api { store } => http
            .post(&*url)
            .bearer_auth(&api_key)
            .json(&serde_json::json!({ "users": [user], "data": { "t": t }, "store": store })),
        Push::Nchan { id } => http.post(format!("{url}{user}")).body(
            serde_json::json!({ "op": "msg", "id": id, "ts": t / 1_000_000, "data": { "t": t } })
                .to_string(),
        ),
    };
    s.sent.fetch_add(1, Relaxed);
    let started = Instant::now();
    let result = async {
        let resp = request.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, bytes))
    }
    .await;
    let elapsed = started.elapsed();
    drop(permit);
    match result {
        Ok((status, bytes)) if status.is_success() => {
            s.http
                .lock()
                .record_ns(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
            let answer = match push {
                Push::Api { .. } => serde_json::from_slice::<PushAnswer>(&bytes).ok(),
                // Nchan answers with the channel's state, not an id.
                Push::Nchan { id } => Some(PushAnswer { id, delivered: 1 }),
            };
            match answer {
                Some(a) => {
                    s.acked.lock().push(a.id);
                    if a.delivered == 0 {
                        s.not_delivered.fetch_add(1, Relaxed);
                    }
                }
                None => {
                    s.http_errors.fetch_add(1, Relaxed);
                    s.http_failures.add("bad answer body");
                }
            }
        }
        Ok((status, bytes)) => {
            s.http_errors.fetch_add(1, Relaxed);
            s.http_failures.add(&format!("status {}", status.as_u16()));
            if s.http_errors.load(Relaxed) <= 3 {
                eprintln!(
                    "  push failed: {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                );
            }
        }
        Err(e) => {
            s.http_errors.fetch_add(1, Relaxed);
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "request"
            };
            s.http_failures.add(kind);
            if s.http_errors.load(Relaxed) <= 3 {
                eprintln!("  push failed: {e}");
            }
        }
    }
}

fn progress(s: &Shared, start: Instant) {
    eprintln!(
        "[{:>4}s] sent {} acked {} received {} http errors {}",
        start.elapsed().as_secs(),
        s.sent.load(Relaxed),
        s.acked.lock().len(),
        s.received.lock().len(),
        s.http_errors.load(Relaxed),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use std::sync::atomic::Ordering::Relaxed as R;

    #[test]
    fn payload_time() {
        assert_eq!(
            payload_t(br#"{"t":1700000000123456789}"#),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(
            payload_t(br#"{"t":1.7e18,"x":1}"#),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(payload_t(br#"{"t":-1}"#), None);
        assert_eq!(payload_t(br#"{"t":"1"}"#), None);
        assert_eq!(payload_t(br#"{"x":1}"#), None);
        assert_eq!(payload_t(b"not json"), None);
    }

    fn shared(run_start_ns: u64) -> Shared {
        Shared::new(run_start_ns, 0).unwrap()
    }

    fn msg(id: i64, data: &str) -> MsgFrame {
        MsgFrame {
            id: MsgId(id),
            ts: 0,
            channel: None,
            data: bytes::Bytes::copy_from_slice(data.as_bytes()),
            sender: None,
        }
    }

    #[test]
    fn messages_are_counted_once_and_stale_ones_ignored() {
        let s = shared(1_000_000_000);
        on_msg(&s, &msg(1, r#"{"t":1000000000}"#), 1_002_000_000); // 2 ms
        on_msg(&s, &msg(1, r#"{"t":1000000000}"#), 1_003_000_000); // duplicate
        on_msg(&s, &msg(2, r#"{"t":999999999}"#), 1_003_000_000); // before the run
        on_msg(&s, &msg(3, r#"{"u":1}"#), 1_003_000_000); // not ours
        assert_eq!(s.received.lock().len(), 1);
        assert_eq!(s.duplicates.load(Relaxed), 1);
        assert_eq!(s.stale.load(Relaxed), 1);
        assert_eq!(s.bad_payload.load(Relaxed), 1);
        let sum = s.e2e.lock().summary();
        assert_eq!(sum.count, 1);
        assert!((sum.p50_ms - 2.0).abs() < 0.01, "{sum:?}");
    }

    #[test]
    fn lost_is_acked_minus_received() {
        let s = shared(0);
        s.acked.lock().extend([1, 2, 3, 4]);
        s.received.lock().extend([1, 3, 99]);
        s.sent.store(5, Relaxed);
        let cli = crate::Cli::try_parse_from([
            "bench",
            "latency",
            "--api-key",
            "K",
            "--token-secret",
            "S",
        ])
        .unwrap();
        let crate::Cmd::Latency(args) = cli.cmd else {
            panic!("not latency")
        };
        let rep = report(&args, &s, 1.0, false);
        assert_eq!(rep.acked, 4);
        assert_eq!(rep.received, 3);
        assert_eq!(rep.lost, 2);
        assert_eq!(rep.sent, 5);
    }

    #[test]
    fn args_parse() {
        let cli = crate::Cli::try_parse_from([
            "bench",
            "latency",
            "--http",
            "http://127.0.0.1:1",
            "--api-key",
            "K",
            "--ws",
            "ws://127.0.0.1:2/ws",
            "--token-secret",
            "S",
            "--users",
            "10",
            "--rate",
            "50",
            "--duration",
            "2s",
            "--store",
            "false",
        ])
        .unwrap();
        let crate::Cmd::Latency(a) = cli.cmd else {
            panic!("not latency")
        };
        assert_eq!(a.users, 10);
        assert_eq!(a.rate, 50);
        assert_eq!(a.duration, Duration::from_secs(2));
        assert!(!a.store);
        assert_eq!(a.inflight, 64);
        assert!(crate::Cli::try_parse_from([
            "bench",
            "latency",
            "--api-key",
            "K",
            "--token-secret",
            "S",
            "--store",
            "maybe"
        ])
        .is_err());
        assert!(crate::Cli::try_parse_from([
            "bench",
            "latency",
            "--api-key",
            "K",
            "--token-secret",
            "S",
            "--users",
            "0"
        ])
        .is_err());
    }

    fn latency_args(fake: &crate::testsrv::Fake, extra: &[&str]) -> LatencyArgs {
        let mut argv = vec![
            "bench".to_string(),
            "latency".into(),
            "--http".into(),
            fake.http_url.clone(),
            "--api-key".into(),
            crate::testsrv::API_KEY.into(),
            "--ws".into(),
            fake.ws_url.clone(),
            "--tcp".into(),
            fake.tcp_addr.clone(),
            "--token-secret".into(),
            crate::testsrv::SECRET.into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let cli = crate::Cli::try_parse_from(argv).unwrap();
        let crate::Cmd::Latency(a) = cli.cmd else {
            panic!("not latency")
        };
        a
    }

    #[tokio::test]
    async fn latency_run_end_to_end() {
        for transport in ["ws", "tcp"] {
            let fake = crate::testsrv::start(crate::testsrv::Behavior::default()).await;
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("lat.json");
            let args = latency_args(
                &fake,
                &[
                    "--users",
                    "5",
                    "--rate",
                    "200",
                    "--duration",
                    "1s",
                    "--grace",
                    "2s",
                    "--transport",
                    transport,
                    "--json-out",
                    out.to_str().unwrap(),
                ],
            );
            assert_eq!(run(args).await.unwrap(), Outcome::Ok);
            let r = crate::testsrv::read_report(&out);
            assert_eq!(r["sent"], 200, "{r}");
            assert_eq!(r["acked"], 200, "{r}");
            assert_eq!(r["received"], 200, "{r}");
            assert_eq!(r["lost"], 0, "{r}");
            assert_eq!(r["not_delivered"], 0, "{r}");
            assert_eq!(r["e2e"]["count"], 200, "{r}");
            assert_eq!(r["http"]["count"], 200, "{r}");
            assert!(r["e2e"]["max_ms"].as_f64().unwrap() > 0.0, "{r}");
            // Every client acked its last message before closing.
            assert_eq!(fake.acked.load(R), 200);
        }
    }

    #[tokio::test]
    async fn latency_run_counts_losses_and_http_errors() {
        let fake = crate::testsrv::start(crate::testsrv::Behavior {
            drop_every: Some(10),
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("lat.json");
        let args = latency_args(
            &fake,
            &[
                "--users",
                "3",
                "--rate",
                "100",
                "--duration",
                "1s",
                "--grace",
                "500ms",
                "--json-out",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(run(args).await.unwrap(), Outcome::Failed);
        let r = crate::testsrv::read_report(&out);
        assert_eq!(r["acked"], 100, "{r}");
        assert_eq!(r["lost"], 10, "{r}");
        assert_eq!(r["not_delivered"], 10, "{r}");

        let mut args = latency_args(
            &fake,
            &[
                "--users",
                "1",
                "--rate",
                "10",
                "--duration",
                "500ms",
                "--grace",
                "0s",
            ],
        );
        args.api_key = "wrong".into();
        assert_eq!(run(args).await.unwrap(), Outcome::Failed);
    }
}
