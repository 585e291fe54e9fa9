//! `bench compare`: the same `bench idle` workload against `bench floor` and
//! against pushgate (standalone), one fresh server process per run, and the
//! server CPU per connect, per heartbeat and per broadcast delivery side by
//! side with their ratio. Every server listens on 127.0.0.1 port 0, gets the
//! same generated token secret and API key, and is stopped (SIGTERM, then
//! SIGKILL) before the next starts. The `bench idle` command line of every
//! run is printed and kept in the result file (the secret as `$SECRET`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::args::{parse_duration, sources_arg, Sources, Transport};
use crate::c1m::cluster::{find_pushgate, signal};
use crate::cmd_idle::IdleReport;
use crate::{proc, Outcome};

/// How long a server may take to print `ready`.
const START_WITHIN: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// Arguments of `bench compare`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct CompareArgs {
    /// The pushgate binary [default: `pushgate` next to this binary].
    #[arg(long)]
    pushgate: Option<PathBuf>,
    /// Measure `bench floor` only (no pushgate).
    #[arg(long)]
    floor_only: bool,
    /// Connections per run.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    connections: u64,
    /// Source addresses for the client sockets (as for `bench idle`).
    #[arg(long, value_parser = sources_arg)]
    sources: Option<Sources>,
    /// Connection attempts per second.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,
    /// Hold after the ramp (heartbeats only): the per-heartbeat window.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    hold: Duration,
    /// Wait between the ramp and the hold.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    settle: Duration,
    /// Heartbeat intervals, seconds; each is a run of its own (`25,5`).
    #[arg(long, value_delimiter = ',', default_value = "25,5",
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    heartbeats: Vec<u32>,
    /// Broadcasts after the hold, one at a time.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1000))]
    broadcasts: u32,
    /// Runs of each (heartbeat, server) pair; servers alternate within a run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    runs: u32,
    /// Client transport: `ws` or `tcp`.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// Also write the results as Markdown to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Which server a run measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Floor,
    Pushgate,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Floor => "floor",
            Which::Pushgate => "pushgate",
        }
    }
}

/// A started server process.
pub(crate) struct Server {
    child: Child,
    /// Its PID.
    pub(crate) pid: u32,
    /// The WebSocket listener it printed.
    pub(crate) ws: String,
    /// The TCP listener it printed.
    pub(crate) tcp: String,
    /// The HTTP listener it printed.
    pub(crate) http: String,
    log: PathBuf,
}

/// One measured run.
struct Run {
    run: u32,
    heartbeat: u32,
    which: Which,
    command: String,
    outcome: Outcome,
    rep: IdleReport,
}

/// A random lowercase hex string of `bytes` random bytes.
pub(crate) fn random_hex(bytes: usize) -> String {
    (0..bytes).fold(String::new(), |mut s, _| {
        let _ = write!(s, "{:02x}", rand::random::<u8>());
        s
    })
}

/// Starts `cmd` (its stdout piped, stderr to `log`) and reads its stdout
/// until `ready`, picking up the `... listening on ADDR` lines.
pub(crate) async fn start(mut cmd: Command, log: &Path) -> anyhow::Result<Server> {
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        // A server outlives nothing: if bench dies, so do they (pushgate
        // watches its parent; the floor also stops by its --duration).
        .env("PUSHGATE_PARENT_PID", std::process::id().to_string())
        .env("PUSHGATE_LOG", "warn")
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting the server")?;
    let pid = child.id().context("the server has no pid")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut ws, mut tcp, mut http) = (None, None, None);
    let ready = tokio::time::timeout(START_WITHIN, async {
        while let Some(line) = lines.next_line().await? {
            let addr = |p: &str| line.strip_prefix(p).map(|a| a.trim().to_string());
            if let Some(a) = addr("ws listening on ") {
                ws = Some(a);
            } else if let Some(a) = addr("tcp listening on ") {
                tcp = Some(a);
            } else if let Some(a) = addr("http listening on ") {
                http = Some(a);
            } else if line.trim() == "ready" {
                return Ok(true);
            }
        }
        Ok::<bool, std::io::Error>(false)
    })
    .await;
    if !matches!(ready, Ok(Ok(true))) {
        let _ = child.kill().await;
        anyhow::bail!(
            "the server did not print `ready` within {START_WITHIN:?}; its stderr:\n{}",
            crate::c1m::cluster::tail(log, 20)
        );
    }
    // Keep reading stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server {
        child,
        pid,
        ws: ws.context("no `ws listening on` line")?,
        tcp: tcp.context("no `tcp listening on` line")?,
        http: http.context("no `http listening on` line")?,
        log: log.to_path_buf(),
    })
}

impl Server {
    /// SIGTERM, then SIGKILL after [`STOP_WITHIN`].
    pub(crate) async fn stop(mut self) {
        signal(self.pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(STOP_WITHIN, self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "server {} did not stop in {STOP_WITHIN:?}; killing it",
                self.pid
            );
            let _ = self.child.kill().await;
        }
    }
}

/// The `bench idle` arguments of one run (the secret as given).
fn idle_argv(args: &CompareArgs, srv: &Server, hb: u32, secret: &str, key: &str) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "idle".into(),
        "--transport".into(),
        args.transport.name().into(),
        "--ws".into(),
        format!("ws://{}/ws", srv.ws),
        "--tcp".into(),
        srv.tcp.clone(),
        "--http".into(),
        format!("http://{}", srv.http),
        "--connections".into(),
        args.connections.to_string(),
        "--rate".into(),
        args.rate.to_string(),
        "--heartbeat".into(),
        hb.to_string(),
        "--settle".into(),
        format!("{}ms", args.settle.as_millis()),
        "--hold".into(),
        format!("{}ms", args.hold.as_millis()),
        "--broadcasts".into(),
        args.broadcasts.to_string(),
        "--room-pid".into(),
        srv.pid.to_string(),
        "--token-secret".into(),
        secret.into(),
        "--api-key".into(),
        key.into(),
    ];
    if let Some(s) = &args.sources {
        v.push("--sources".into());
        v.push(
            s.0.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    v
}

/// Runs `bench compare`.
pub(crate) async fn run(args: CompareArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        matches!(args.transport, Transport::Ws | Transport::Tcp),
        "the floor speaks WebSocket and TCP only"
    );
    proc::check_nofile(args.connections + 64)?;
    let pushgate = if args.floor_only {
        None
    } else {
        Some(find_pushgate(args.pushgate.as_deref())?)
    };
    let me = std::env::current_exe().context("finding this binary")?;
    let secret = random_hex(24);
    let key = random_hex(24);
    let dir = std::env::temp_dir().join(format!("bench-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut servers = vec![Which::Floor];
    if pushgate.is_some() {
        servers.push(Which::Pushgate);
    }
    let mut runs = Vec::new();
    'all: for run in 1..=args.runs {
        for &hb in &args.heartbeats {
            // Alternate which server goes first, so drift over time (other
            // load on the machine) does not favour one.
            let mut order = servers.clone();
            if run % 2 == 0 {
                order.reverse();
            }
            for which in order {
                let hbs = hb.to_string();
                let log = dir.join(format!("{}-{run}-{hb}.log", which.name()));
                let cmd = match (which, &pushgate) {
                    (Which::Floor, _) => {
                        let mut c = Command::new(&me);
                        c.args(["floor", "--ws", "127.0.0.1:0", "--tcp", "127.0.0.1:0"])
                            .args(["--http", "127.0.0.1:0", "--duration", "2h"])
                            .args(["--heartbeat", &hbs, "--token-secret", &secret]);
                        c
                    }
                    (Which::Pushgate, Some(pg)) => {
                        let data = dir.join(format!("data-{run}-{hb}"));
                        let mut c = Command::new(pg);
                        c.arg("--data")
                            .arg(&data)
                            .args(["--ws", "127.0.0.1:0", "--tcp", "127.0.0.1:0"])
                            .args(["--quic", "127.0.0.1:0", "--http", "127.0.0.1:0"])
                            .args(["--heartbeat", &hbs, "--token-secret", &secret])
                            .args(["--api-key", &key]);
                        c
                    }
                    (Which::Pushgate, None) => continue,
                };
                let srv = start(cmd, &log).await?;
                let argv = idle_argv(&args, &srv, hb, &secret, &key);
                let shown = format!(
                    "bench {}",
                    argv.join(" ")
                        .replace(&secret, "$SECRET")
                        .replace(&key, "$API_KEY")
                );
                println!(
                    "\n=== run {run}, heartbeat {hb} s, {} (pid {}) ===\n$ {shown}",
                    which.name(),
                    srv.pid
                );
                let parsed = crate::Cli::try_parse_from(
                    std::iter::once("bench".to_string()).chain(argv.iter().cloned()),
                );
                let idle = match parsed.map(|c| c.cmd) {
                    Ok(crate::Cmd::Idle(a)) => a,
                    Ok(_) => anyhow::bail!("internal: not an idle command"),
                    Err(e) => anyhow::bail!("internal: bad idle arguments: {e}"),
                };
                let result = crate::cmd_idle::run_report(idle).await;
                let log = srv.log.clone();
                srv.stop().await;
                let (outcome, rep) = result?;
                if outcome == Outcome::Failed {
                    eprintln!(
                        "{} run failed; the end of its log:\n{}",
                        which.name(),
                        crate::c1m::cluster::tail(&log, 20)
                    );
                }
                runs.push(Run {
                    run,
                    heartbeat: hb,
                    which,
                    command: shown,
                    outcome,
                    rep,
                });
                if outcome == Outcome::Interrupted {
                    break 'all;
                }
            }
        }
    }

    let table = table(&runs, &args.heartbeats, pushgate.is_some());
    println!("\n{table}");
    if let Some(out) = &args.out {
        let md = markdown(&args, &runs, &table, &loadavg);
        std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))?;
        println!("results written to {}", out.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(if runs.iter().any(|r| r.outcome == Outcome::Interrupted) {
        Outcome::Interrupted
    } else if runs.iter().all(|r| r.outcome == Outcome::Ok) {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}

/// The figures compared, each with how to get it from a report.
type Metric = (&'static str, fn(&IdleReport) -> Option<f64>);

const METRICS: [Metric; 4] = [
    ("server CPU per connect (µs)", |r| {
        r.room_cpu_per_connect_us
    }),
    ("server CPU per heartbeat (µs)", |r| {
        r.room_cpu_per_heartbeat_us
    }),
    ("server CPU per broadcast delivery (µs)", |r| {
        r.room_cpu_per_delivery_us
    }),
    ("server RSS per connection (bytes)", |r| {
        r.room_rss_per_conn_bytes
    }),
];

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn fmt_value(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The values of `metric` for `which` at heartbeat `hb`, run by run.
fn values(runs: &[Run], hb: u32, which: Which, metric: &Metric) -> Vec<f64> {
    runs.iter()
        .filter(|r| r.heartbeat == hb && r.which == which)
        .filter_map(|r| (metric.1)(&r.rep))
        .collect()
}

/// The comparison table (Markdown): per heartbeat and metric, each run's
/// value, and the ratio of the means.
fn table(runs: &[Run], heartbeats: &[u32], with_pushgate: bool) -> String {
    let mut s = String::new();
    if with_pushgate {
        s.push_str(
            "| heartbeat | metric | pushgate (each run) | floor (each run) | pushgate ÷ floor |\n",
        );
        s.push_str("|---|---|---|---|---|\n");
    } else {
        s.push_str("| heartbeat | metric | floor (each run) |\n|---|---|---|\n");
    }
    let each = |v: &[f64]| {
        if v.is_empty() {
            "—".to_string()
        } else {
            v.iter()
                .map(|x| fmt_value(*x))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    for &hb in heartbeats {
        for m in &METRICS {
            let f = values(runs, hb, Which::Floor, m);
            if with_pushgate {
                let p = values(runs, hb, Which::Pushgate, m);
                let ratio = match (mean(&p), mean(&f)) {
                    (Some(p), Some(f)) if f > 0.0 => format!("{:.1}×", p / f),
                    _ => "—".to_string(),
                };
                let _ = writeln!(
                    s,
                    "| {hb} s | {} | {} | {} | {ratio} |",
                    m.0,
                    each(&p),
                    each(&f)
                );
            } else {
                let _ = writeln!(s, "| {hb} s | {} | {} |", m.0, each(&f));
            }
        }
    }
    s
}

/// One line per run: what was counted (the denominators) and whether it was clean.
fn run_line(r: &Run) -> String {
    let rep = &r.rep;
    format!(
        "| {} | {} s | {} | {}/{} | {} | {} | {}/{} | {} | {:.3} / {:.2} | {} |",
        r.run,
        r.heartbeat,
        r.which.name(),
        rep.authenticated,
        rep.connections,
        rep.pongs_during_hold,
        rep.drops_during_hold,
        rep.broadcast_received,
        rep.broadcast_expected,
        rep.room_cpu_clock.as_deref().unwrap_or("?"),
        rep.room_cpu_hold_s.unwrap_or(0.0),
        rep.room_cpu_hold_seconds.unwrap_or(0.0),
        match r.outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "FAILED",
            Outcome::Interrupted => "interrupted",
        }
    )
}

/// How [`run`] starts the servers, for the result file.
const SERVERS: &str = "Servers, fresh for each run (H the run's heartbeat):\n\n```sh\n\
    bench floor --ws 127.0.0.1:0 --tcp 127.0.0.1:0 --http 127.0.0.1:0 --duration 2h \\\n    \
    --heartbeat H --token-secret $SECRET\n\
    pushgate --data $TMP/data-RUN-H --ws 127.0.0.1:0 --tcp 127.0.0.1:0 --quic 127.0.0.1:0 \\\n    \
    --http 127.0.0.1:0 --heartbeat H --token-secret $SECRET --api-key $API_KEY\n```\n\n";

fn markdown(args: &CompareArgs, runs: &[Run], table: &str, loadavg: &str) -> String {
    let mut s = String::new();
    let date = crate::c1m::utc_date(crate::now_unix_ns() / 1_000_000_000);
    let _ = writeln!(
        s,
        "# Server CPU per operation: pushgate against the floor ({date})\n"
    );
    let _ = writeln!(
        s,
        "Machine: {} CPUs, {} GiB, kernel {}, load average at start {}. bench and the \
         servers share the machine.\n",
        std::thread::available_parallelism().map_or(0, usize::from),
        proc::mem_total().map_or(0, |b| b / (1 << 30)),
        proc::kernel_release().unwrap_or_default(),
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    let _ = writeln!(
        s,
        "Command: `{}`\n",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(
        s,
        "{} {} connections per run, {} runs of each (heartbeat, server) pair.\n",
        args.connections,
        args.transport.name(),
        args.runs
    );
    s.push_str(SERVERS);
    s.push_str(table);
    s.push_str(
        "\n| run | heartbeat | server | authenticated | pongs in hold | drops | broadcasts \
         received | cpu clock | cpu in hold, s (that clock / stat ticks) | outcome |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        s.push_str(&run_line(r));
        s.push('\n');
    }
    s.push_str("\nThe `bench idle` command of each run:\n\n```sh\n");
    for r in runs {
        let _ = writeln!(s, "# run {}, {}\n{}", r.run, r.which.name(), r.command);
    }
    s.push_str("```\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse() {
        let cli = crate::Cli::try_parse_from([
            "bench",
            "compare",
            "--connections",
            "5000",
            "--heartbeats",
            "25,5",
            "--sources",
            "127.0.0.2-127.0.0.4",
            "--floor-only",
        ])
        .unwrap();
        let crate::Cmd::Compare(a) = cli.cmd else {
            panic!("not compare")
        };
        assert_eq!(a.heartbeats, vec![25, 5]);
        assert_eq!(a.connections, 5000);
        assert_eq!(a.runs, 2);
        assert!(a.floor_only);
        assert!(crate::Cli::try_parse_from(["bench", "compare", "--heartbeats", "0"]).is_err());
    }

    fn fake_run(which: Which, hb: u32, per_hb: f64) -> Run {
        Run {
            run: 1,
            heartbeat: hb,
            which,
            command: String::new(),
            outcome: Outcome::Ok,
            rep: IdleReport {
                room_cpu_per_heartbeat_us: Some(per_hb),
                room_cpu_per_connect_us: Some(100.0),
                ..IdleReport::default()
            },
        }
    }

    #[test]
    fn table_has_ratios() {
        let runs = vec![
            fake_run(Which::Floor, 5, 2.0),
            fake_run(Which::Pushgate, 5, 7.0),
            fake_run(Which::Floor, 5, 4.0),
            fake_run(Which::Pushgate, 5, 11.0),
        ];
        let t = table(&runs, &[5], true);
        assert!(
            t.contains("| 5 s | server CPU per heartbeat (µs) | 7.00, 11.0 | 2.00, 4.00 | 3.0× |"),
            "{t}"
        );
        assert!(t.contains("| 5 s | server CPU per connect (µs) | 100, 100 | 100, 100 | 1.0× |"));
        assert!(t.contains("| server CPU per broadcast delivery (µs) | — | — | — |"));
        let t = table(&runs, &[5], false);
        assert!(
            t.contains("| 5 s | server CPU per heartbeat (µs) | 2.00, 4.00 |"),
            "{t}"
        );
    }
}
