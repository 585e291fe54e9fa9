//! `bench c1m-worker`: one load-generator process of a `c1m` run. It holds
//! its share of the connections (users `c1m-<first>` .. `c1m-<first+count-1>`,
//! user `i` on room `i mod rooms`, subscribed to channel `c1m:<i mod channels>`),
//! keeps them alive with heartbeats, records when each pushed message
//! arrives (the send time is in the payload), and reconnects a dropped
//! connection to the next room with jittered backoff, resuming after the
//! last unicast id it had. It is driven by the runner over stdin/stdout
//! ([`super::wire`]) and exits when told to or when stdin closes; or, with
//! `--listen ADDR`, by a runner on another machine over TCP.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use parking_lot::Mutex;
use proto::MsgId;
use pushgate_client::backoff::{server_delay, Backoff};
use serde::Deserialize;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader, Lines,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::dial::{self, Framing, Login, Target};
use super::holder::{self, Arrival, Dropped, Holder, Hooks};
use super::wire::{Answer, Command, Setup, WorkerStats};
use crate::args::{parse_duration, sources_arg, Sources, Transport};
use crate::client::{Closed, Endpoint};
use crate::pace::Schedule;
use crate::quic::QuicArgs;
use crate::stats::{LatencyHist, Tally};

/// Scheduling priority of a worker (`nice`): below the servers.
const WORKER_NICE: i32 = 10;
/// Scheduling priority of the worker's holder thread, where allowed: the
/// servers'. It reads what the rooms send; starved, it would leave a
/// broadcast queued in a million sockets' buffers on a shared machine
/// (the kernel's TCP memory then runs out and every send slows down), and
/// what it measures would be its own delay.
const HOLDER_NICE: i32 = 0;

/// Arguments of `bench c1m-worker`: set by the runner when it spawns the
/// worker, or, with `--listen`, only the listen address (and `--bind`,
/// `--keep`): the runner then connects and sends the rest.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// Worker number (for messages).
    #[arg(long, required_unless_present = "listen")]
    id: Option<u32>,
    /// First user number.
    #[arg(long, required_unless_present = "listen")]
    first: Option<u64>,
    /// Connections (users) of this worker.
    #[arg(long, required_unless_present = "listen")]
    count: Option<u64>,
    /// Client transport (`ws` or `tcp`).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// The rooms' addresses in room order: WebSocket URLs, or TCP `host:port`.
    #[arg(long, value_delimiter = ',', required_unless_present = "listen")]
    rooms: Vec<String>,
    /// Source addresses, round-robin.
    #[arg(long, value_parser = sources_arg)]
    sources: Option<Sources>,
    /// The rooms' token secret.
    #[arg(long, env = "PUSHGATE_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
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
    /// Serve the runner's commands over TCP on this address instead of
    /// stdin/stdout (`bench c1m --workers-file`): prints `listening on
    /// ADDR` as its first line on stdout, takes one runner at a time (the
    /// runner sends the rooms, user range, rate and token secret), and exits
    /// when that runner disconnects unless `--keep`.
    #[arg(long)]
    listen: Option<String>,
    /// With `--listen`: source addresses for the connections, overriding
    /// what the runner suggests (by default the runner's `127.0.K.1`,
    /// `127.0.K.2` when the rooms are on loopback, else none: the kernel
    /// picks).
    #[arg(long, value_parser = sources_arg, requires = "listen")]
    bind: Option<Sources>,
    /// With `--listen`: wait for the next runner after one disconnects.
    #[arg(long, requires = "listen")]
    keep: bool,
    /// With `--listen`: exit when no runner connects for this long.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    wait: Duration,
}

/// What one worker session does: from the command line of a spawned
/// worker, or from the runner's [`Setup`] for a listening one.
#[derive(Clone, Debug)]
struct Plan {
    first: u64,
    count: u64,
    transport: Transport,
    rooms: Vec<String>,
    sources: Option<Sources>,
    token_secret: String,
    rate: u64,
    concurrency: usize,
    channels: u64,
    step_timeout: Duration,
}

impl Plan {
    /// A spawned worker's plan: its command line.
    fn from_args(a: &WorkerArgs) -> anyhow::Result<Plan> {
        Ok(Plan {
            first: a.first.context("--first is required")?,
            count: a.count.context("--count is required")?,
            transport: a.transport,
            rooms: a.rooms.clone(),
            sources: a.sources.clone(),
            token_secret: a
                .token_secret
                .clone()
                .context("--token-secret (or PUSHGATE_TOKEN_SECRET) is required")?,
            rate: a.rate,
            concurrency: a.concurrency,
            channels: a.channels,
            step_timeout: a.step_timeout,
        })
    }

    /// A listening worker's plan: what the runner sent, with this worker's
    /// own `--bind`, `--concurrency` and `--step-timeout`.
    fn from_setup(s: Setup, a: &WorkerArgs) -> anyhow::Result<Plan> {
        let transport = <Transport as clap::ValueEnum>::from_str(&s.transport, true)
            .map_err(|e| anyhow::anyhow!("transport {:?}: {e}", s.transport))?;
        let sources = match (&a.bind, &s.sources) {
            (Some(b), _) => Some(b.clone()),
            (None, Some(list)) => Some(sources_arg(list).map_err(|e| anyhow::anyhow!(e))?),
            (None, None) => None,
        };
        anyhow::ensure!(!s.rooms.is_empty(), "no rooms");
        Ok(Plan {
            first: s.first,
            count: s.count,
            transport,
            rooms: s.rooms,
            sources,
            token_secret: s.token_secret,
            rate: s.rate.max(1),
            concurrency: a.concurrency,
            channels: s.channels,
            step_timeout: a.step_timeout,
        })
    }
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
    args: Plan,
    framing: Framing,
    targets: Vec<Target>,
    /// Takes authenticated connections and holds them.
    holder: Holder,
    /// Connections that ended, to reconnect (at most one per user).
    dropped: mpsc::UnboundedSender<Dropped>,
    live_per_room: Vec<AtomicU64>,
    c: Counters,
    /// Latency histograms by key (see [`super::wire::Answer::Hists`]).
    hists: Mutex<BTreeMap<Key, LatencyHist>>,
    /// Limits connects in flight.
    connecting: Semaphore,
    cancel: CancellationToken,
}

impl Shared {
    /// Resolves the rooms. Suggested loopback source addresses are dropped
    /// when `drop_loopback_sources` and a room is not on loopback (a
    /// loopback source cannot reach it).
    async fn new(mut plan: Plan, drop_loopback_sources: bool) -> anyhow::Result<Arc<Shared>> {
        anyhow::ensure!(
            matches!(plan.transport, Transport::Ws | Transport::Tcp),
            "c1m workers speak ws or tcp"
        );
        let mut endpoints = Vec::with_capacity(plan.rooms.len());
        for r in &plan.rooms {
            endpoints.push(
                Endpoint::resolve(plan.transport, r, r, &QuicArgs::default())
                    .await
                    .with_context(|| format!("room address {r}"))?,
            );
        }
        let remote_room = endpoints.iter().any(|e| !e.addr().ip().is_loopback());
        let loopback_sources = plan
            .sources
            .as_ref()
            .is_some_and(|s| s.0.iter().all(IpAddr::is_loopback));
        if drop_loopback_sources && remote_room && loopback_sources {
            eprintln!(
                "c1m-worker: the rooms are not on loopback; connecting without the suggested \
                 loopback source addresses (--bind sets others)"
            );
            plan.sources = None;
        }
        let framing = match plan.transport {
            Transport::Tcp => Framing::Tcp,
            _ => Framing::Ws,
        };
        let targets = endpoints
            .iter()
            .zip(&plan.rooms)
            .map(|(e, url)| match framing {
                Framing::Tcp => Ok(Target::tcp(e.addr())),
                Framing::Ws => Target::ws(e.addr(), url),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (holder, runner) = holder::new(framing).context("starting the holder's poll")?;
        let (dropped, dropped_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            live_per_room: (0..targets.len()).map(|_| AtomicU64::new(0)).collect(),
            framing,
            targets,
            holder,
            dropped,
            c: Counters::default(),
            hists: Mutex::new(BTreeMap::new()),
            connecting: Semaphore::new(plan.concurrency.max(1)),
            cancel: CancellationToken::new(),
            args: plan,
        });
        runner
            .spawn(shared.clone(), HOLDER_NICE)
            .context("starting the holder thread")?;
        tokio::spawn(reconnects(shared.clone(), dropped_rx));
        Ok(shared)
    }
}

impl Hooks for Shared {
    fn message(&self, id: MsgId, data: &[u8], last_unicast: &mut Option<MsgId>) {
        on_message(self, id, data, last_unicast);
    }

    fn ping_sent(&self) {
        self.c.pings.fetch_add(1, Relaxed);
    }

    fn pong(&self) {
        self.c.pongs.fetch_add(1, Relaxed);
    }

    fn dropped(&self, d: Dropped) {
        self.c.live.fetch_sub(1, Relaxed);
        if let Some(n) = self.live_per_room.get(d.room) {
            n.fetch_sub(1, Relaxed);
        }
        self.c.drops.add(&d.closed.key());
        // Fails only once the run is over.
        let _ = self.dropped.send(d);
    }

    fn stopped(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Longest a listening worker waits for the runner's `setup`.
const SETUP_WAIT: Duration = Duration::from_secs(60);
/// A runner connected over TCP that says nothing for this long is gone
/// (the runner asks for counters every second).
const CONTROL_IDLE: Duration = Duration::from_secs(600);

/// Runs a worker: driven over stdin/stdout until told to stop or until stdin
/// closes, or with `--listen`, over TCP.
pub(crate) async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    // The load generator yields the CPU to the servers it measures (they
    // share the machine); lowering one's own priority needs no privilege.
    let _ = rustix::process::setpriority_process(None, WORKER_NICE);
    if let Some(addr) = args.listen.clone() {
        return listen(&args, &addr).await;
    }
    let shared = Shared::new(Plan::from_args(&args)?, false).await?;
    let _stop = shared.cancel.clone().drop_guard();
    let mut out = tokio::io::stdout();
    answer(&mut out, &Answer::Ready).await?;
    let lines = BufReader::new(tokio::io::stdin()).lines();
    // Sockets close with the process; a graceful close of thousands of
    // connections would only slow the end of the run.
    session(&shared, lines, &mut out, None).await
}

/// Serves runners on TCP, one at a time.
async fn listen(args: &WorkerArgs, addr: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    // The first line on stdout, for scripts and tests.
    println!("listening on {local}");
    loop {
        let (stream, peer) = match tokio::time::timeout(args.wait, listener.accept()).await {
            Ok(r) => r.context("accepting a runner")?,
            Err(_) => {
                eprintln!(
                    "c1m-worker {local}: no runner within {:?}; exiting",
                    args.wait
                );
                return Ok(());
            }
        };
        eprintln!("c1m-worker {local}: runner {peer} connected");
        let _ = stream.set_nodelay(true);
        let result = tokio::select! {
            r = remote_session(args, stream) => r,
            () = turn_away(&listener) => Ok(()),
        };
        match &result {
            Ok(()) => eprintln!("c1m-worker {local}: runner {peer} done"),
            Err(e) => eprintln!("c1m-worker {local}: runner {peer}: {e:#}"),
        }
        if !args.keep {
            return result;
        }
    }
}

/// Answers every other runner that connects while one is served: busy.
async fn turn_away(listener: &TcpListener) {
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                let busy = Answer::Error {
                    message: "busy: another runner is connected".to_string(),
                };
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), answer(&mut stream, &busy)).await;
            }
            // Out of file descriptors, say: try again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One runner on TCP: `setup` first, then the same commands as on stdin.
/// Everything this session opened closes when it ends.
async fn remote_session(args: &WorkerArgs, stream: TcpStream) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let Some(line) = tokio::time::timeout(SETUP_WAIT, lines.next_line())
        .await
        .context("no setup from the runner in time")?
        .context("reading the runner's setup")?
    else {
        return Ok(());
    };
    let plan = match serde_json::from_str::<Command>(&line) {
        Ok(Command::Setup(s)) => Plan::from_setup(s, args),
        Ok(other) => Err(anyhow::anyhow!("expected setup first, got {other:?}")),
        Err(e) => Err(anyhow::anyhow!("bad command {line:?}: {e}")),
    };
    let shared = match plan {
        Ok(p) => Shared::new(p, args.bind.is_none()).await,
        Err(e) => Err(e),
    };
    let shared = match shared {
        Ok(s) => s,
        Err(e) => {
            let message = format!("{e:#}");
            answer(&mut write, &Answer::Error { message }).await?;
            return Err(e);
        }
    };
    let _stop = shared.cancel.clone().drop_guard();
    answer(&mut write, &Answer::Ready).await?;
    session(&shared, lines, &mut write, Some(CONTROL_IDLE)).await
}

/// Answers the runner's commands until `stop` or the end of its input
/// (`idle`: also after that long without a command).
async fn session<R, W>(
    shared: &Arc<Shared>,
    mut lines: Lines<R>,
    out: &mut W,
    idle: Option<Duration>,
) -> anyhow::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut started = false;
    loop {
        let next = match idle {
            Some(d) => tokio::time::timeout(d, lines.next_line())
                .await
                .map_err(|_| anyhow::anyhow!("no command from the runner for {d:?}"))?,
            None => lines.next_line().await,
        };
        let Some(line) = next.context("reading a command")? else {
            return Ok(());
        };
        let cmd: Command = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                let message = format!("bad command {line:?}: {e}");
                answer(out, &Answer::Error { message }).await?;
                continue;
            }
        };
        match cmd {
            Command::Setup(_) => {
                let message = "already set up".to_string();
                answer(out, &Answer::Error { message }).await?;
            }
            Command::Start => {
                if !started {
                    started = true;
                    tokio::spawn(ramp(shared.clone()));
                }
                answer(out, &Answer::Ack).await?;
            }
            Command::Stats => answer(out, &Answer::Stats(stats(shared))).await?,
            Command::Hists => {
                let hists = shared
                    .hists
                    .lock()
                    .iter()
                    .map(|(k, h)| (key_name(*k), h.buckets()))
                    .collect();
                answer(out, &Answer::Hists { hists }).await?;
            }
            Command::Stop => {
                answer(out, &Answer::Ack).await?;
                return Ok(());
            }
        }
    }
}

async fn answer<W: AsyncWrite + Unpin>(out: &mut W, a: &Answer) -> anyhow::Result<()> {
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
        let user = s.args.first + k;
        let room = usize::try_from(user % s.targets.len() as u64).unwrap_or(0);
        tokio::spawn(connection(s.clone(), user, Resume::first(room)));
    }
}

/// Where a user's connection (re)starts.
struct Resume {
    room: usize,
    last_unicast: Option<MsgId>,
    /// When it dropped (none: the first connect).
    dropped_at: Option<Instant>,
    /// The delay the server asked for when it closed (4007).
    server_delay: Option<Duration>,
}

impl Resume {
    fn first(room: usize) -> Resume {
        Resume {
            room,
            last_unicast: None,
            dropped_at: None,
            server_delay: None,
        }
    }
}

/// Starts a reconnect for each connection that ends.
async fn reconnects(s: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Dropped>) {
    loop {
        let d = tokio::select! {
            _ = s.cancel.cancelled() => return,
            d = rx.recv() => match d {
                Some(d) => d,
                None => return,
            },
        };
        let server_delay = match &d.closed {
            Closed::Code(4007, reason) => server_delay(reason),
            _ => None,
        };
        let resume = Resume {
            // Somewhere else: the room may be gone.
            room: another_room(d.room, s.targets.len()),
            last_unicast: d.last_unicast,
            dropped_at: Some(d.at),
            server_delay,
        };
        tokio::spawn(connection(s.clone(), d.user, resume));
    }
}

/// Opens one user's connection, retrying with the client library's rules
/// (jittered exponential backoff, or the delay a 4007 close asks for), and
/// hands it to the holder; a task lives only while its user is connecting.
async fn connection(s: Arc<Shared>, user: u64, r: Resume) {
    let Resume {
        mut room,
        last_unicast,
        dropped_at,
        server_delay,
    } = r;
    let k = user.saturating_sub(s.args.first);
    let source = s
        .args
        .sources
        .as_ref()
        .and_then(|v| v.0.get(usize::try_from(k).unwrap_or(0) % v.0.len().max(1)))
        .copied();
    let name = format!("c1m-{user}");
    let channel = (s.args.channels > 0).then(|| format!("c1m:{}", user % s.args.channels));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    if dropped_at.is_some() {
        let delay = server_delay.unwrap_or_else(|| backoff.next_delay(&mut rand::rng()));
        pause(&s, delay).await;
    }
    loop {
        let opened = tokio::select! {
            _ = s.cancel.cancelled() => return,
            // Boxed: the handshake's state is needed only while connecting.
            r = Box::pin(open(&s, room, source, &name, channel.as_deref(), last_unicast)) => r,
        };
        let opened = match opened {
            Ok(o) => o,
            Err(reason) => {
                s.c.failures.add(&reason);
                room = another_room(room, s.targets.len());
                let delay = backoff.next_delay(&mut rand::rng());
                pause(&s, delay).await;
                continue;
            }
        };
        let now = crate::now_unix_ns();
        match dropped_at {
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
        let arrival = Arrival {
            opened,
            user,
            room,
            last_unicast,
        };
        if s.holder.hold(arrival).is_err() {
            // The holder has ended: the run is over.
            s.c.live.fetch_sub(1, Relaxed);
            s.live_per_room[room].fetch_sub(1, Relaxed);
        }
        return;
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
) -> Result<dial::Opened, String> {
    let _permit = s
        .connecting
        .acquire()
        .await
        .map_err(|_| "closed".to_string())?;
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
    let login = Login {
        token: &token,
        last_id,
        channel,
    };
    dial::open(
        &s.targets[room],
        s.framing,
        source,
        &login,
        s.args.step_timeout,
    )
    .await
    .map_err(|e| e.key())
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

    fn parse(args: &[&str]) -> WorkerArgs {
        let cmd = <WorkerArgs as clap::Args>::augment_args(clap::Command::new("w"));
        let m = cmd
            .try_get_matches_from(std::iter::once("w").chain(args.iter().copied()))
            .unwrap();
        <WorkerArgs as clap::FromArgMatches>::from_arg_matches(&m).unwrap()
    }

    #[test]
    fn listening_needs_no_plan_and_bind_wins() {
        let a = parse(&["--listen", "127.0.0.1:0", "--bind", "127.0.0.9", "--keep"]);
        assert!(a.keep);
        let setup = Setup {
            id: 1,
            first: 10,
            count: 5,
            transport: "tcp".into(),
            rooms: vec!["127.0.0.1:1".into()],
            sources: Some("127.0.2.1,127.0.2.2".into()),
            token_secret: "s".into(),
            rate: 0,
            channels: 3,
        };
        let p = Plan::from_setup(setup.clone(), &a).unwrap();
        assert_eq!(p.transport, Transport::Tcp);
        assert_eq!(
            p.sources.unwrap().0,
            vec!["127.0.0.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!((p.first, p.count, p.rate, p.channels), (10, 5, 1, 3));
        let a = parse(&["--listen", "127.0.0.1:0"]);
        let p = Plan::from_setup(setup.clone(), &a).unwrap();
        assert_eq!(p.sources.unwrap().0.len(), 2);
        let bad = Setup {
            transport: "carrier-pigeon".into(),
            ..setup
        };
        assert!(Plan::from_setup(bad, &a).is_err());
        // Without --listen the plan is required.
        let cmd = <WorkerArgs as clap::Args>::augment_args(clap::Command::new("w"));
        assert!(cmd.try_get_matches_from(["w", "--keep"]).is_err());
    }

    #[tokio::test]
    async fn loopback_sources_are_dropped_for_remote_rooms() {
        let a = parse(&["--listen", "127.0.0.1:0"]);
        let setup = Setup {
            transport: "tcp".into(),
            rooms: vec!["192.0.2.1:7801".into()],
            sources: Some("127.0.2.1".into()),
            token_secret: "s".into(),
            ..Setup::default()
        };
        let s = Shared::new(Plan::from_setup(setup.clone(), &a).unwrap(), true)
            .await
            .unwrap();
        assert!(s.args.sources.is_none());
        let local = Setup {
            rooms: vec!["127.0.0.1:7801".into()],
            ..setup
        };
        let s = Shared::new(Plan::from_setup(local, &a).unwrap(), true)
            .await
            .unwrap();
        assert!(s.args.sources.is_some());
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
