//! The cluster under test: started as `pushgate dev-cluster` (a child of the
//! runner, output to a log file) or attached to through the manifest such a
//! cluster writes (`--manifest FILE`). Either way the runner learns every
//! process's PID (for memory and CPU readings, and to kill a room) and every
//! endpoint from the manifest.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use tokio::process::{Child, Command};

/// What `pushgate dev-cluster --manifest FILE` writes.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Manifest {
    /// REST API base URLs (`http://addr/api/v1`).
    pub(crate) centers: Vec<String>,
    /// The rooms in id order.
    pub(crate) rooms: Vec<ManifestRoom>,
    /// Every child process.
    pub(crate) processes: Vec<ManifestProcess>,
    /// REST API key.
    pub(crate) api_key: String,
    /// Client token secret.
    pub(crate) token_secret: String,
}

/// One room.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ManifestRoom {
    /// `--id`.
    pub(crate) id: u32,
    /// Its PID.
    pub(crate) pid: Option<u32>,
    /// WebSocket URL.
    pub(crate) ws: String,
    /// TCP address.
    pub(crate) tcp: String,
    /// Health and metrics base URL (`http://addr`).
    #[serde(default)]
    pub(crate) health: Option<String>,
}

/// One process.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ManifestProcess {
    /// `room-3`, `center-1`, `saver`, ...
    pub(crate) name: String,
    /// Its PID.
    pub(crate) pid: Option<u32>,
    /// What it listens on, by flag name (`listen`, `http`, ...); absent
    /// from the manifests of older dev-clusters.
    #[serde(default)]
    pub(crate) endpoints: std::collections::BTreeMap<String, String>,
}

impl Manifest {
    /// Reads a manifest file.
    pub(crate) fn read(path: &Path) -> anyhow::Result<Manifest> {
        let text =
            std::fs::read(path).with_context(|| format!("reading manifest {}", path.display()))?;
        let m: Manifest = serde_json::from_slice(&text)
            .with_context(|| format!("manifest {} is not valid", path.display()))?;
        anyhow::ensure!(!m.rooms.is_empty(), "the manifest lists no rooms");
        anyhow::ensure!(!m.centers.is_empty(), "the manifest lists no centers");
        Ok(m)
    }

    /// Health and metrics base URLs (`http://addr`) of the processes that
    /// are neither rooms nor centers (registers, the saver, idgens) and
    /// serve one (`--http`).
    pub(crate) fn service_metrics(&self) -> Vec<String> {
        self.processes
            .iter()
            .filter(|p| !p.name.starts_with("room-") && !p.name.starts_with("center-"))
            .filter_map(|p| p.endpoints.get("http"))
            .map(|a| format!("http://{a}"))
            .collect()
    }

    /// PIDs of the centers.
    pub(crate) fn center_pids(&self) -> Vec<u32> {
        self.processes
            .iter()
            .filter(|p| p.name.starts_with("center-"))
            .filter_map(|p| p.pid)
            .collect()
    }
}

/// A dev cluster this run started.
pub(crate) struct Started {
    child: Child,
    /// Its manifest.
    pub(crate) manifest: Manifest,
}

/// How to start a dev cluster.
pub(crate) struct StartSpec<'a> {
    /// The `pushgate` binary.
    pub(crate) pushgate: &'a Path,
    /// Rooms.
    pub(crate) rooms: usize,
    /// `--max-connections` of each room.
    pub(crate) room_max: u64,
    /// `--base-port` (`None`: a block free at the start, see [`start_retrying`]).
    pub(crate) base_port: Option<u16>,
    /// `--store` (`embedded` or `redis`).
    pub(crate) store: &'a str,
    /// Heartbeat interval, seconds.
    pub(crate) heartbeat: u64,
    /// A fresh directory for its data, manifest and log.
    pub(crate) dir: &'a Path,
}

/// How many ports from `--base-port` a dev cluster of `rooms` rooms takes
/// (see `pushgate dev-cluster`: services below `B+100`, four per room).
fn port_span(rooms: usize) -> u16 {
    u16::try_from(100 + 4 * rooms).unwrap_or(u16::MAX)
}

/// A base port whose whole block of `span` ports on 127.0.0.1 can be bound
/// now (as the cluster binds them: `SO_REUSEADDR`, so sockets in TIME_WAIT
/// do not count). A random start keeps concurrent runs apart.
fn free_block(span: u16) -> anyhow::Result<u16> {
    for _ in 0..200 {
        let base = 20_000 + (rand::random::<u16>() % 400) * 100;
        let Some(end) = base.checked_add(span) else {
            continue;
        };
        if (base..end).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return Ok(base);
        }
    }
    anyhow::bail!(
        "found no block of {span} free ports on 127.0.0.1 in 200 tries (pass --base-port)"
    )
}

/// Starts `pushgate dev-cluster` like [`start`]. Without `--base-port` it
/// takes a block of ports free at the start, and when a process of the
/// cluster finds one of them taken all the same (another program's outgoing
/// connection can take any port of the machine's ephemeral range between the
/// check and the bind) it starts again on another block, up to four times.
pub(crate) async fn start_retrying(
    spec: &StartSpec<'_>,
    within: Duration,
) -> anyhow::Result<Started> {
    if spec.base_port.is_some() {
        return start(spec, within).await;
    }
    let mut tries = 0;
    loop {
        tries += 1;
        let base = free_block(port_span(spec.rooms))?;
        let this = StartSpec {
            base_port: Some(base),
            ..*spec
        };
        match start(&this, within).await {
            Err(e) if tries < 4 && format!("{e:#}").contains("Address already in use") => {
                eprintln!(
                    "a port of the block from {base} was taken meanwhile; trying another block"
                );
            }
            r => return r,
        }
    }
}

/// Starts `pushgate dev-cluster` and waits (up to `within`) for its manifest.
pub(crate) async fn start(spec: &StartSpec<'_>, within: Duration) -> anyhow::Result<Started> {
    std::fs::create_dir_all(spec.dir)
        .with_context(|| format!("creating {}", spec.dir.display()))?;
    let manifest_path = spec.dir.join("manifest.json");
    let log = spec.dir.join("dev-cluster.log");
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(spec.pushgate);
    cmd.args([
        "dev-cluster",
        "--rooms",
        &spec.rooms.to_string(),
        "--store",
        spec.store,
        "--base-port",
        &spec.base_port.unwrap_or(7800).to_string(),
        "--heartbeat",
        &spec.heartbeat.to_string(),
        "--data",
    ])
    .arg(spec.dir.join("data"))
    .arg("--manifest")
    .arg(&manifest_path)
    // The kill phase measures failover to the spare room: the killed room
    // must stay down, not be restarted by dev-cluster's supervision.
    .arg("--no-restart")
    .args([
        "--room-args",
        &format!("--max-connections {}", spec.room_max),
    ])
    // The cluster stops by itself if this runner dies (see `pushgate`'s
    // parent watch), so an interrupted run leaves nothing behind.
    .env("PUSHGATE_PARENT_PID", std::process::id().to_string())
    .env("PUSHGATE_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::from(out))
    .stderr(Stdio::from(err))
    .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", spec.pushgate.display()))?;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "pushgate dev-cluster exited ({status}) before it was ready; its output:\n{}",
                tail(&log, 30)
            );
        }
        if manifest_path.exists() {
            let manifest = Manifest::read(&manifest_path)?;
            return Ok(Started { child, manifest });
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = stop_child(&mut child, Duration::from_secs(30)).await;
            anyhow::bail!(
                "pushgate dev-cluster was not ready within {within:?}; its output:\n{}",
                tail(&log, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Started {
    /// SIGTERM, then SIGKILL after `within`.
    pub(crate) async fn stop(mut self, within: Duration) -> anyhow::Result<()> {
        stop_child(&mut self.child, within).await
    }
}

async fn stop_child(child: &mut Child, within: Duration) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        signal(pid, rustix::process::Signal::TERM);
    }
    match tokio::time::timeout(within, child.wait()).await {
        Ok(r) => {
            r?;
            Ok(())
        }
        Err(_) => {
            child.kill().await?;
            anyhow::bail!("the dev cluster did not stop within {within:?}; killed it")
        }
    }
}

/// Sends `sig` to `pid` (a process this run started, or one of its children).
pub(crate) fn signal(pid: u32, sig: rustix::process::Signal) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|p| rustix::process::kill_process(p, sig).is_ok())
}

/// The last `n` lines of a file.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Finds the `pushgate` binary: `explicit`, else next to this one (cargo
/// puts both in `target/<profile>/`). When it is missing there and this
/// runs under `cargo run`, builds it with the same profile first.
pub(crate) fn find_pushgate(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(p.exists(), "--pushgate {} does not exist", p.display());
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe().context("finding this binary")?;
    let dir = me.parent().context("this binary has no directory")?;
    let candidate = dir.join("pushgate");
    if candidate.exists() {
        return Ok(candidate);
    }
    if let Ok(cargo) = std::env::var("CARGO") {
        let release = dir.file_name().is_some_and(|n| n == "release");
        eprintln!("building pushgate (cargo build -p pushgate) ...");
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "pushgate", "--bin", "pushgate"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().context("running cargo build")?;
        anyhow::ensure!(status.success(), "cargo build -p pushgate failed");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "no pushgate binary next to {} — build it with `cargo build --release -p pushgate`, \
         or pass --pushgate PATH",
        me.display()
    )
}
