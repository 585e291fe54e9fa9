//! `bench c1m`: the one-million-connections benchmark. One command starts
//! (or attaches to) a local cluster with as many rooms as the open-files
//! limit requires, spreads the connections over worker processes and
//! source addresses, and runs the phases: ramp, idle hold, broadcasts,
//! channel pushes, unicast at a fixed rate and at the highest rate it
//! sustains, and a killed room. Everything is measured from outside the
//! servers (send times in the payloads, `/proc` for memory and CPU) and
//! written under `bench/results/` as JSON, Markdown and SVG plots.

pub(crate) mod cluster;
mod dial;
mod fleet;
mod floor_run;
mod holder;
pub(crate) mod markdown;
mod phases;
pub(crate) mod plot;
pub(crate) mod report;
mod rest;
mod scrape;
pub(crate) mod wire;
pub(crate) mod worker;
mod workers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use self::cluster::Manifest;
use self::fleet::{Fleet, Servers};
use self::report::{Machine, Report, RunConfig, Sample};
use self::rest::Rest;
use self::workers::{Spawn, Worker};
use crate::args::{parse_duration, Transport};
use crate::{proc, Outcome};

/// Open files a room or worker process needs beyond its connections.
const FD_HEADROOM: u64 = 200;

/// Arguments of `bench c1m`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct C1mArgs {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(100..=5_000_000))]
    pub(crate) connections: u64,
    /// Client transport: `ws` (JSON text frames) or `tcp` (binary frames).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub(crate) transport: Transport,
    /// Connections per room when all rooms live; rooms = connections / this,
    /// plus one so the clients of a killed room fit on the others. At most
    /// the open-files limit minus a few hundred.
    #[arg(long, default_value_t = 18_500)]
    pub(crate) per_room: u64,
    /// Connections per load-generator worker process.
    #[arg(long, default_value_t = 18_500)]
    pub(crate) per_worker: u64,
    /// Connection attempts per second, all workers together.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) ramp_rate: u64,
    /// How long to hold the connections idle.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub(crate) hold: Duration,
    /// Broadcasts to everyone.
    #[arg(long, default_value_t = 20)]
    pub(crate) broadcasts: u32,
    /// Channels the users are spread over (each pushed to once per round).
    #[arg(long, default_value_t = 100)]
    pub(crate) channels: u32,
    /// Rounds of channel pushes.
    #[arg(long, default_value_t = 3)]
    pub(crate) channel_rounds: u32,
    /// Unicast rate of the fixed-rate phase, pushes per second.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) unicast_rate: u64,
    /// Length of each unicast phase.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) unicast_for: Duration,
    /// Requests in flight in the highest-rate (closed loop) unicast phase.
    #[arg(long, default_value_t = 256)]
    pub(crate) unicast_concurrency: u64,
    /// Store unicast pushes (`"store": true`, acknowledged after the write).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) store: bool,
    /// Skip the killed-room phase.
    #[arg(long)]
    pub(crate) no_kill: bool,
    /// Heartbeat interval of the rooms, seconds (a started cluster only).
    #[arg(long, default_value_t = 30)]
    pub(crate) heartbeat: u64,
    /// Store of a started cluster: `redis` (starts redis-server, as a
    /// production cluster would use) or `embedded` (one saver process).
    #[arg(long, default_value = "redis")]
    pub(crate) cluster_store: String,
    /// First port of a started cluster (see `pushgate dev-cluster`); by
    /// default a block of ports that is free at the start (and another one
    /// if a process of the cluster still finds its port taken).
    #[arg(long)]
    pub(crate) base_port: Option<u16>,
    /// Attach to a running `pushgate dev-cluster --manifest FILE` instead
    /// of starting one (its rooms must have room for the connections).
    #[arg(long)]
    pub(crate) attach: Option<PathBuf>,
    /// The `pushgate` binary (default: next to this one).
    #[arg(long)]
    pub(crate) pushgate: Option<PathBuf>,
    /// Where to write the report (default: `bench/results/c1m-<date>-<N>`).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Wait after the ramp before measuring memory.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) settle: Duration,
    /// Send each broadcast this long after the previous one, without
    /// waiting for it to finish (default: each waits until the previous
    /// one's clients all have it and its task is done).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) broadcast_gap: Option<Duration>,
    /// The floor's server CPU per broadcast delivery, µs (`bench compare
    /// --floor-only`: "server CPU per broadcast delivery (µs)"); gives the
    /// time-to-last bound and the CPU-per-delivery ratio.
    #[arg(long, value_name = "US")]
    pub(crate) floor_delivery_us: Option<f64>,
    /// The floor's server CPU per heartbeat, µs (`bench compare
    /// --floor-only`: "server CPU per heartbeat (µs)"); gives the ratio of
    /// the rooms' CPU to hold the connections.
    #[arg(long, value_name = "US")]
    pub(crate) floor_ping_us: Option<f64>,
    /// Measure the floor in this run first: `bench floor` held by one
    /// load-generator worker with N connections at the run's heartbeat
    /// (N = the connections a room holds gives the same heartbeats per
    /// second per process), then broadcast to; its CPU per heartbeat and
    /// per delivery are the run's floor figures (in place of
    /// `--floor-ping-us` and `--floor-delivery-us`). Its worker runs on this
    /// machine, so not with `--workers-file` (measure the floor on the rooms'
    /// machine with `bench compare --floor-only` and pass the figures).
    #[arg(
        long,
        value_name = "N",
        conflicts_with_all = ["floor_ping_us", "floor_delivery_us", "workers_file"]
    )]
    pub(crate) floor: Option<u64>,
    /// How long the floor run holds its connections (with `--floor`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) floor_hold: Duration,
    /// Broadcasts of the floor run (with `--floor`).
    #[arg(long, default_value_t = 5)]
    pub(crate) floor_broadcasts: u32,
    /// Use the workers listening at these addresses (`bench c1m-worker
    /// --listen ADDR`, on this machine or others) instead of spawning them:
    /// one `host:port` (or `host:P1-P2`) per line, `#` comments. The
    /// connections are shared evenly among them.
    #[arg(long, value_name = "FILE")]
    pub(crate) workers_file: Option<PathBuf>,
}

/// Everything the phases share.
pub(crate) struct Ctx {
    pub(crate) args: C1mArgs,
    pub(crate) fleet: Fleet,
    pub(crate) servers: Servers,
    /// Every process of the cluster (name, PID).
    pub(crate) manifest_processes: Vec<(String, Option<u32>)>,
    pub(crate) rest: Rest,
    /// Where the rooms and centers serve `/metrics` (base URLs).
    pub(crate) metrics_bases: Vec<String>,
    pub(crate) cancel: CancellationToken,
    /// The phase the timeline sampler labels samples with.
    pub(crate) phase: Mutex<String>,
    pub(crate) timeline: Mutex<Vec<Sample>>,
    pub(crate) run_start: tokio::time::Instant,
    pub(crate) cpu_start: Mutex<f64>,
    pub(crate) mem_available_min: Mutex<u64>,
}

impl Ctx {
    /// Labels the timeline from now on.
    pub(crate) fn set_phase(&self, p: &str) {
        *self.phase.lock() = p.to_string();
        eprintln!("== {p}");
    }

    /// Sleeps unless the run is cancelled first; false when cancelled.
    pub(crate) async fn sleep(&self, d: Duration) -> bool {
        sleep_unless_cancelled(&self.cancel, d).await
    }
}

/// Sleeps for `d` unless `cancel` fires first; false when it did.
pub(crate) async fn sleep_unless_cancelled(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Runs the benchmark.
pub(crate) async fn run(args: C1mArgs) -> anyhow::Result<Outcome> {
    let started_unix_s = crate::now_unix_ns() / 1_000_000_000;
    let date = utc_date(started_unix_s);
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("bench/results/c1m-{date}-{}", args.connections)));
    let n = args.connections;
    // Its clients subscribe to channels after auth, which an SSE client
    // cannot do, and its workers dial WebSocket or TCP only (bench idle
    // measures SSE and QUIC). A transport it does not speak is refused, not
    // run as WebSocket.
    anyhow::ensure!(
        matches!(args.transport, Transport::Ws | Transport::Tcp),
        "c1m speaks ws or tcp (--transport sse and quic: bench idle only)"
    );
    let remote = match &args.workers_file {
        Some(path) => workers::read_workers_file(path)?,
        None => Vec::new(),
    };
    let workers_n = if remote.is_empty() {
        n.div_ceil(args.per_worker.max(1)) as usize
    } else {
        remote.len()
    };
    anyhow::ensure!(
        workers_n <= 250,
        "{workers_n} workers: more than the 250 source-address blocks (raise --per-worker)"
    );
    anyhow::ensure!(
        args.floor_delivery_us
            .is_none_or(|f| f > 0.0 && f.is_finite())
            && args.floor_ping_us.is_none_or(|f| f > 0.0 && f.is_finite()),
        "--floor-delivery-us and --floor-ping-us take a positive number of microseconds"
    );
    preflight(&args, !remote.is_empty())?;
    let cancel = CancellationToken::new();
    let interrupted = crate::runctl::spawn_ctrl_c(cancel.clone(), "stopping the c1m run");

    // The floor, measured first on a quiet machine (see floor_run).
    let mut args = args;
    let floor = match args.floor {
        Some(k) => match floor_run::measure(&args, k, &cancel).await? {
            Some(f) => {
                args.floor_ping_us = f.ping_us;
                args.floor_delivery_us = f.delivery_us;
                Some(f)
            }
            None => return Ok(Outcome::Interrupted),
        },
        None => None,
    };

    // The cluster.
    let scratch = tempdir_for_cluster()?;
    let (started, manifest) = match &args.attach {
        Some(path) => (None, Manifest::read(path)?),
        None => {
            let pushgate = cluster::find_pushgate(args.pushgate.as_deref())?;
            let rooms = rooms_for(n, args.per_room);
            eprintln!(
                "starting pushgate dev-cluster: {rooms} rooms (log: {})",
                scratch.join("dev-cluster.log").display()
            );
            let spec = cluster::StartSpec {
                pushgate: &pushgate,
                rooms,
                room_max: room_limit(),
                base_port: args.base_port,
                store: &args.cluster_store,
                heartbeat: args.heartbeat,
                dir: &scratch,
            };
            let s = tokio::select! {
                s = cluster::start_retrying(&spec, Duration::from_secs(60 + rooms as u64)) => s?,
                _ = cancel.cancelled() => return Ok(Outcome::Interrupted),
            };
            let m = s.manifest.clone();
            (Some(s), m)
        }
    };
    let result = run_with_cluster(
        &args,
        floor,
        manifest,
        &remote,
        cancel.clone(),
        started_unix_s,
        &date,
    )
    .await;
    let stop_result = match started {
        Some(s) => {
            eprintln!("stopping the cluster");
            s.stop(Duration::from_secs(90)).await
        }
        None => Ok(()),
    };
    let log = scratch.join("dev-cluster.log");
    let keep_log = !matches!(result, Ok((_, Outcome::Ok)));
    if keep_log && log.exists() {
        let _ = std::fs::create_dir_all(&out_dir);
        if std::fs::copy(&log, out_dir.join("dev-cluster.log")).is_ok() {
            eprintln!(
                "the cluster's output: {}",
                out_dir.join("dev-cluster.log").display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let (mut report, outcome) = result?;
    if let Err(e) = stop_result {
        report.notes.push(format!("stopping the cluster: {e:#}"));
    }
    if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
        report.incomplete = Some("interrupted (Ctrl-C)".to_string());
    }
    write_report(&report, &out_dir)?;
    Ok(if report.incomplete.is_some() && outcome == Outcome::Ok {
        Outcome::Interrupted
    } else {
        outcome
    })
}

/// Rooms for `n` connections at `per_room` each, plus one spare.
fn rooms_for(n: u64, per_room: u64) -> usize {
    (n.div_ceil(per_room.max(1)) + 1).max(2) as usize
}

/// `--max-connections` of a started room: the open-files limit less headroom.
fn room_limit() -> u64 {
    proc::nofile()
        .and_then(|l| l.soft)
        .map_or(1_000_000, |soft| soft.saturating_sub(FD_HEADROOM))
}

/// A fresh directory for the started cluster's data, manifest and log.
fn tempdir_for_cluster() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pushgate-c1m-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Refuses a run this machine cannot hold, with advice (`remote`: the
/// workers run elsewhere, so this machine needs no sockets for them).
fn preflight(args: &C1mArgs, remote: bool) -> anyhow::Result<()> {
    if !remote {
        proc::check_nofile(args.per_worker + FD_HEADROOM)?;
    }
    if let Some(n) = args.floor {
        anyhow::ensure!(n > 0, "--floor takes a number of connections above 0");
        proc::check_nofile(n + FD_HEADROOM)?;
    }
    if args.attach.is_none() {
        let limit = room_limit();
        // With the spare room, each room holds at most `per_room` even
        // after one is killed.
        anyhow::ensure!(
            args.per_room <= limit,
            "--per-room {} is above what the open-files limit allows a room ({limit} \
             connections); lower --per-room or raise nofile (docs/DEPLOY.md)",
            args.per_room
        );
    }
    if let Some((lo, hi)) = proc::port_range().filter(|_| !remote) {
        let ports = u64::from(hi - lo);
        anyhow::ensure!(
            args.per_worker < ports,
            "--per-worker {} needs more than the {ports} ephemeral ports per source \
             address; widen them: sysctl -w net.ipv4.ip_local_port_range=\"1024 65000\"",
            args.per_worker
        );
    }
    // Room ~3 KB + worker ~5 KB + kernel ~10 KB per connection (both ends).
    let need = args.connections * 18 * 1024;
    if let Some(avail) = proc::mem_available() {
        if need > avail {
            eprintln!(
                "warning: this run may need ~{} GiB of memory and {} GiB is available",
                need >> 30,
                avail >> 30
            );
        }
    }
    Ok(())
}

async fn run_with_cluster(
    args: &C1mArgs,
    floor: Option<floor_run::FloorRun>,
    manifest: Manifest,
    remote: &[String],
    cancel: CancellationToken,
    started_unix_s: u64,
    date: &str,
) -> anyhow::Result<(Report, Outcome)> {
    let n = args.connections;
    let rooms: Vec<String> = manifest
        .rooms
        .iter()
        .map(|r| match args.transport {
            Transport::Tcp => r.tcp.clone(),
            _ => r.ws.clone(),
        })
        .collect();
    let servers = Servers {
        rooms: manifest.rooms.iter().map(|r| (r.id, r.pid)).collect(),
        centers: manifest.center_pids(),
    };
    let rest = Rest::new(&manifest.centers[0], &manifest.api_key)?;
    // Workers: contiguous user ranges, two source addresses each.
    let workers_n = if remote.is_empty() {
        n.div_ceil(args.per_worker.max(1))
    } else {
        remote.len() as u64
    };
    let per = n.div_ceil(workers_n);
    let mut workers = Vec::new();
    let transport = match args.transport {
        Transport::Tcp => "tcp",
        _ => "ws",
    };
    if remote.is_empty() {
        eprintln!(
            "starting {workers_n} load-generator workers ({} rooms)",
            rooms.len()
        );
    } else {
        eprintln!(
            "connecting to {workers_n} load-generator workers ({} rooms)",
            rooms.len()
        );
    }
    for k in 0..workers_n {
        let first = (k * per).min(n);
        let count = per.min(n - first);
        let sources = format!("127.0.{}.1,127.0.{}.2", k + 1, k + 1);
        let spawn = Spawn {
            id: u32::try_from(k)?,
            first,
            count,
            transport,
            rooms: &rooms,
            sources: &sources,
            token_secret: &manifest.token_secret,
            rate: args.ramp_rate.div_ceil(workers_n).max(1),
            channels: u64::from(args.channels),
        };
        let w = match remote.get(k as usize) {
            Some(addr) => Worker::connect(addr, &spawn).await,
            None => Worker::spawn(&spawn).await,
        };
        match w {
            Ok(w) => workers.push(w),
            Err(e) => {
                // Those already up are told to stop (a spawned one also exits
                // when its stdin closes; a listening one when we disconnect).
                let stops = workers
                    .iter()
                    .map(|w: &Worker| w.stop(Duration::from_secs(5)));
                futures_util::future::join_all(stops).await;
                return Err(e);
            }
        }
    }
    let mem_total = proc::mem_total().unwrap_or(0);
    let ctx = Arc::new(Ctx {
        args: args.clone(),
        fleet: Fleet { workers },
        servers,
        manifest_processes: manifest
            .processes
            .iter()
            .map(|p| (p.name.clone(), p.pid))
            .collect(),
        rest,
        metrics_bases: manifest
            .rooms
            .iter()
            .filter_map(|r| r.health.clone())
            .chain(
                manifest
                    .centers
                    .iter()
                    .map(|c| c.trim_end_matches("/api/v1").to_owned()),
            )
            .chain(manifest.service_metrics())
            .collect(),
        cancel: cancel.clone(),
        phase: Mutex::new("start".to_string()),
        timeline: Mutex::new(Vec::new()),
        run_start: tokio::time::Instant::now(),
        cpu_start: Mutex::new(0.0),
        mem_available_min: Mutex::new(mem_total),
    });
    *ctx.cpu_start.lock() = ctx.servers.rooms_cpu_s();
    let mut report = Report {
        version: 1,
        started_unix_s,
        date: date.to_string(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            mem_total_bytes: mem_total,
            kernel: proc::kernel_release().unwrap_or_default(),
            nofile: proc::nofile().and_then(|l| l.soft),
        },
        config: RunConfig {
            connections: n,
            transport: transport.to_string(),
            rooms: rooms.len(),
            workers: ctx.fleet.workers.len(),
            heartbeat_s: args.heartbeat,
            ramp_rate: args.ramp_rate,
            hold_s: args.hold.as_secs_f64(),
            broadcasts: args.broadcasts,
            channels: args.channels,
            unicast_rate: args.unicast_rate,
            unicast_s: args.unicast_for.as_secs_f64(),
            store: args.store,
            started_cluster: args.attach.is_none(),
            broadcast_gap_s: args.broadcast_gap.map(|g| g.as_secs_f64()),
            floor_delivery_us: args.floor_delivery_us,
            floor_ping_us: args.floor_ping_us,
            remote_workers: remote.to_vec(),
        },
        floor,
        ..Report::default()
    };
    if let Some(note) = favour_central(&ctx.manifest_processes) {
        report.notes.push(note);
    }
    let sampler = tokio::spawn(phases::sample_timeline(ctx.clone()));
    let phase_result = phases::run_all(&ctx, &mut report).await;
    sampler.abort();
    report.timeline = std::mem::take(&mut *ctx.timeline.lock());
    if let Some(m) = report.memory.as_mut() {
        m.mem_available_min = *ctx.mem_available_min.lock();
    }
    let outcome = match &phase_result {
        Ok(o) => *o,
        Err(e) => {
            report.incomplete = Some(format!("stopped by an error: {e:#}"));
            eprintln!("c1m: error: {e:#}");
            Outcome::Failed
        }
    };
    report.rest = ctx.rest.answers();
    phases::judge(&mut report);
    eprintln!("stopping the workers");
    let stops = ctx
        .fleet
        .workers
        .iter()
        .map(|w| w.stop(Duration::from_secs(20)));
    futures_util::future::join_all(stops).await;
    Ok((report, outcome))
}

/// Raises the scheduling priority of the cluster's central processes
/// (centers, registers, idgens, saver, Redis) to `nice -10` where allowed
/// (every thread of each; see [`renice_threads`]).
/// On one machine they share two cores with dozens of rooms and load
/// generators; in production they have cores of their own. Returns what was
/// done, for the report.
fn favour_central(processes: &[(String, Option<u32>)]) -> Option<String> {
    let central: Vec<(&str, u32)> = processes
        .iter()
        .filter(|(name, _)| !name.starts_with("room-"))
        .filter_map(|(name, pid)| pid.map(|p| (name.as_str(), p)))
        .collect();
    if central.is_empty() {
        return None;
    }
    let mut raised = 0;
    for (_, pid) in &central {
        raised += usize::from(renice_threads(*pid, CENTRAL_NICE));
    }
    Some(if raised == central.len() {
        format!(
            "scheduling: every thread of the {raised} central processes (centers, registers, \
             idgens, saver, Redis) ran at nice {CENTRAL_NICE} and the load-generator workers at \
             nice 10 (their holder threads, which read what the rooms send, at 0), so that on one machine the single saver and registers are not starved by \
             dozens of busy rooms and workers (in production they have cores of their own)"
        )
    } else {
        format!(
            "scheduling: the load-generator workers ran at nice 10 (their holder threads at 0 \
             where allowed); raising the central \
             processes to nice {CENTRAL_NICE} was not permitted for {} of {} (needs CAP_SYS_NICE)",
            central.len() - raised,
            central.len()
        )
    })
}

/// Priority of the central processes on a shared machine.
const CENTRAL_NICE: i32 = -10;

/// Sets the nice value of every thread of `pid`: on Linux a nice value
/// belongs to a thread, and `setpriority(PRIO_PROCESS, pid)` changes only
/// the thread whose id is `pid` (the main one), not the runtime's workers
/// that do the work (threads started later inherit their creator's).
/// Whether every thread was changed.
fn renice_threads(pid: u32, nice: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut all = true;
    for t in tasks.flatten() {
        let ok = t
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|tid| rustix::process::setpriority_process(Some(tid), nice).is_ok());
        all &= ok;
    }
    all
}

/// Writes report.json, report.md and the plots into `dir`.
fn write_report(r: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::write_json(&dir.join("report.json"), r)?;
    let md = markdown::render(r);
    std::fs::write(dir.join("report.md"), &md)
        .with_context(|| format!("writing {}", dir.join("report.md").display()))?;
    plot::write_plots(r, dir)?;
    println!("{}", markdown::summary_table(r));
    println!("report: {}", dir.join("report.md").display());
    Ok(())
}

/// `YYYY-MM-DD` (UTC) of Unix seconds `s` (civil-from-days, Howard Hinnant).
pub(crate) fn utc_date(s: u64) -> String {
    let z = (s / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_795_305_600), "2026-11-22");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
    }

    #[test]
    fn the_floor_run_takes_its_figures_from_nowhere_else() {
        use clap::Parser as _;
        let parse = |extra: &[&str]| {
            let mut argv = vec!["bench", "c1m", "--floor", "17858"];
            argv.extend_from_slice(extra);
            crate::Cli::try_parse_from(argv)
        };
        let cli = parse(&[]).unwrap();
        let crate::Cmd::C1m(a) = cli.cmd else {
            panic!("not c1m")
        };
        assert_eq!(a.floor, Some(17_858));
        assert_eq!(a.floor_hold, Duration::from_secs(60));
        assert_eq!(a.floor_broadcasts, 5);
        // Figures from elsewhere, or clients elsewhere: refused.
        assert!(parse(&["--floor-ping-us", "32.1"]).is_err());
        assert!(parse(&["--floor-delivery-us", "10.5"]).is_err());
        assert!(parse(&["--workers-file", "w.txt"]).is_err());
    }

    #[test]
    fn room_counts_leave_a_spare() {
        assert_eq!(rooms_for(1_000_000, 18_500), 56);
        assert_eq!(rooms_for(20_000, 18_500), 3);
        assert_eq!(rooms_for(100, 18_500), 2);
    }
}
