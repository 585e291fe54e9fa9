//! The children of `pushgate dev-cluster`: each one's [`Spec`] (all it takes
//! to start it again the same way), its output forwarded with a `[name]`
//! prefix, the [`Manifest`] kept current in a [`Book`], and, once the cluster
//! is up, one supervisor task per child ([`supervise`]) that restarts it when
//! it dies (unless `--no-restart`) and stops it, in order, when the cluster
//! stops ([`Children::stop`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Longest a child may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a child may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Wait before the first restart of a child; doubled after each restart.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait before a restart.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A child that stayed up this long is waited for [`BACKOFF_MIN`] again.
const STABLE: Duration = Duration::from_secs(30);
/// Before it says a child died unexpectedly, the supervisor waits this long
/// (at most the backoff) for a stop of the whole cluster: Ctrl-C in a
/// terminal reaches the children as soon as dev-cluster.
const STOP_GRACE: Duration = Duration::from_millis(100);
/// What a process prints before `ready` about the certificate it serves.
const FINGERPRINT_LINE: &str = "tls fingerprint: ";

/// How a child says it is ready.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ready {
    /// It prints `ready` on stdout (pushgate).
    Line,
    /// It accepts TCP connections on this address (redis-server, whose
    /// stdout is not forwarded).
    Port(SocketAddr),
}

/// Everything needed to start a child, and to start it again the same way:
/// same arguments, ports and data directory.
#[derive(Debug)]
pub(super) struct Spec {
    /// `room-3`, `center-1`, `register-2`, `idgen-1`, `saver`, `redis`.
    pub(super) name: String,
    /// The program.
    pub(super) program: PathBuf,
    /// Its arguments.
    pub(super) args: Vec<String>,
    /// Extra environment variables.
    pub(super) env: Vec<(String, String)>,
    /// Its data directory, for the ones with state on disk.
    pub(super) data_dir: Option<PathBuf>,
    /// An idgen's region.
    pub(super) region: Option<u16>,
    /// What it listens on, by flag name (`listen`, `http`, `ws`, …).
    pub(super) endpoints: BTreeMap<String, String>,
    /// How it says it is ready.
    pub(super) ready: Ready,
}

/// The variable behind `--worker-threads`.
const WORKER_THREADS_ENV: &str = "PUSHGATE_WORKER_THREADS";

impl Spec {
    /// `exe args…` (this binary) as child `name`; it stops by itself when
    /// this process is gone. It runs on one thread (`--worker-threads 1`)
    /// unless `PUSHGATE_WORKER_THREADS` is set here or a flag in `args`
    /// says otherwise: a dev-cluster puts many processes on few cores,
    /// where hand-offs between worker threads cost more than they give.
    pub(super) fn pushgate(exe: &Path, name: &str, args: Vec<String>) -> Spec {
        let mut env = vec![(
            crate::signal::PARENT_PID_ENV.to_owned(),
            std::process::id().to_string(),
        )];
        if std::env::var_os(WORKER_THREADS_ENV).is_none() {
            env.push((WORKER_THREADS_ENV.to_owned(), "1".to_owned()));
        }
        Spec {
            name: name.to_owned(),
            program: exe.to_owned(),
            args,
            env,
            data_dir: None,
            region: None,
            endpoints: BTreeMap::new(),
            ready: Ready::Line,
        }
    }

    /// Adds an endpoint.
    pub(super) fn endpoint(mut self, flag: &str, addr: impl ToString) -> Spec {
        self.endpoints.insert(flag.to_owned(), addr.to_string());
        self
    }

    /// The command line: the program, then the arguments.
    fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// Stop order: rooms, centers, the other services, Redis.
    fn rank(&self) -> u8 {
        if self.name.starts_with("room-") {
            0
        } else if self.name.starts_with("center-") {
            1
        } else if self.name == "redis" {
            3
        } else {
            2
        }
    }
}

/// What `--manifest` writes: every process and endpoint of the cluster. The
/// fields `bench c1m --attach` reads (`centers`, `rooms[].id/pid/ws/tcp`,
/// `processes[].name/pid`, `api_key`, `token_secret`) keep their names.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct Manifest {
    /// PID of `pushgate dev-cluster` itself.
    pub(super) pid: u32,
    /// The cluster's data directory (absolute).
    pub(super) data: String,
    /// Whether children that die are restarted (not `--no-restart`).
    pub(super) restart: bool,
    /// Restarts of all children together.
    pub(super) restarts: u64,
    /// REST API base URLs of the centers (`http://addr/api/v1`).
    pub(super) centers: Vec<String>,
    /// The rooms, in `--id` order.
    pub(super) rooms: Vec<ManifestRoom>,
    /// Every child process.
    pub(super) processes: Vec<ManifestProcess>,
    /// The REST API key.
    pub(super) api_key: String,
    /// The client token secret.
    pub(super) token_secret: String,
}

/// One room in the manifest.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct ManifestRoom {
    /// `--id`.
    pub(super) id: u32,
    /// PID of the running room; `None` while it is down.
    pub(super) pid: Option<u32>,
    /// WebSocket URL.
    pub(super) ws: String,
    /// TCP address.
    pub(super) tcp: String,
    /// UDP address of the QUIC listener (with `--quic`).
    pub(super) quic: Option<String>,
    /// SHA-256 fingerprint of the certificate the room serves, when it
    /// serves one (`sha256:<hex>`); a restarted room may serve a new one.
    pub(super) tls_fingerprint: Option<String>,
    /// Internal (center-facing) address.
    pub(super) internal: String,
    /// Health and metrics base URL.
    pub(super) health: String,
}

/// One child process in the manifest.
#[derive(Debug, serde::Serialize)]
pub(super) struct ManifestProcess {
    /// `room-3`, `center-1`, `register-2`, `idgen-1`, `saver`, `redis`.
    name: String,
    /// PID of the running process; `None` while it is down.
    pid: Option<u32>,
    /// Its command line (program first), the same on every restart.
    argv: Vec<String>,
    /// Its data directory (idgen checkpoint, embedded store, Redis files);
    /// `None` for the stateless ones.
    data_dir: Option<String>,
    /// An idgen's region.
    region: Option<u16>,
    /// What it listens on, by flag name.
    endpoints: BTreeMap<String, String>,
    /// How often it was restarted.
    restarts: u32,
    /// How its last process ended (`signal: 9 (SIGKILL)`, `exit status: 1`).
    last_exit: Option<String>,
    /// Whether the running process is ready (printed `ready`, or Redis
    /// accepts connections).
    ready: bool,
}

impl Manifest {
    fn process(&mut self, name: &str) -> Option<&mut ManifestProcess> {
        self.processes.iter_mut().find(|p| p.name == name)
    }

    fn room(&mut self, name: &str) -> Option<&mut ManifestRoom> {
        let id: u32 = name.strip_prefix("room-")?.parse().ok()?;
        self.rooms.iter_mut().find(|r| r.id == id)
    }

    fn set_pid(&mut self, name: &str, pid: Option<u32>) {
        if let Some(p) = self.process(name) {
            p.pid = pid;
            p.ready = false;
        }
        if let Some(r) = self.room(name) {
            r.pid = pid;
        }
    }

    /// The process of `name` ended.
    fn exited(&mut self, name: &str, how: &str) {
        self.set_pid(name, None);
        if let Some(p) = self.process(name) {
            p.last_exit = Some(how.to_owned());
        }
    }

    /// `name` was started again as `pid`.
    fn restarted(&mut self, name: &str, pid: Option<u32>) {
        self.set_pid(name, pid);
        self.restarts += 1;
        if let Some(p) = self.process(name) {
            p.restarts += 1;
        }
    }

    /// Process `pid` of `name` is ready, serving the certificate `fingerprint`.
    fn ready(&mut self, name: &str, pid: Option<u32>, fingerprint: Option<String>) {
        let Some(p) = self.process(name) else { return };
        if p.pid != pid {
            return; // an earlier process of this name
        }
        p.ready = true;
        if let Some(r) = self.room(name) {
            r.tls_fingerprint = fingerprint;
        }
    }
}

/// The manifest, written to `--manifest FILE` on every change once published.
#[derive(Debug)]
pub(super) struct Book {
    manifest: Mutex<Manifest>,
    path: Option<PathBuf>,
    /// Published: the file exists.
    published: AtomicBool,
    /// Changes are written now (not while the cluster stops).
    live: AtomicBool,
}

impl Book {
    /// A book for `manifest`, written to `path` when there is one.
    pub(super) fn new(manifest: Manifest, path: Option<PathBuf>) -> Arc<Book> {
        Arc::new(Book {
            manifest: Mutex::new(manifest),
            path,
            published: AtomicBool::new(false),
            live: AtomicBool::new(false),
        })
    }

    /// Changes the manifest, and rewrites the file once published.
    pub(super) fn edit(&self, f: impl FnOnce(&mut Manifest)) {
        let mut m = self.manifest.lock();
        f(&mut m);
        if self.live.load(Ordering::Acquire) {
            if let Err(e) = self.write(&m) {
                warn!(error = %format!("{e:#}"), "cannot rewrite the manifest");
            }
        }
    }

    /// Reads the manifest.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Manifest) -> T) -> T {
        f(&self.manifest.lock())
    }

    /// Writes the file for the first time; every change rewrites it from now on.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub(super) fn publish(&self) -> anyhow::Result<()> {
        let m = self.manifest.lock();
        self.write(&m)?;
        self.published.store(true, Ordering::Release);
        self.live.store(true, Ordering::Release);
        Ok(())
    }

    /// Stops rewriting the file on each change (while the cluster stops).
    fn hold(&self) {
        self.live.store(false, Ordering::Release);
    }

    /// Writes the file once more, if it was published.
    fn flush(&self) {
        if self.published.load(Ordering::Acquire) {
            let m = self.manifest.lock();
            if let Err(e) = self.write(&m) {
                warn!(error = %format!("{e:#}"), "cannot rewrite the manifest");
            }
        }
    }

    /// Writes `m` to the file, atomically (a temporary file renamed over
    /// it) and with mode 0600 (it holds the secrets).
    fn write(&self, m: &Manifest) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = serde_json::to_vec_pretty(m)?;
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("write {}", tmp.display()))?;
            f.write_all(&text)?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }
}

/// One running child.
#[derive(Debug)]
pub(super) struct Proc {
    spec: Arc<Spec>,
    child: Child,
    /// Completes with the certificate fingerprint the child printed, once
    /// it is ready; taken by whoever waits for that.
    ready: Option<oneshot::Receiver<Option<String>>>,
    /// When it was started.
    since: Instant,
}

impl Proc {
    /// Starts `spec` and forwards its output.
    fn spawn(spec: Arc<Spec>) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", spec.name))?;
        let (tx, rx) = oneshot::channel();
        forward(&spec, &mut child, tx);
        Ok(Proc {
            spec,
            child,
            ready: Some(rx),
            since: Instant::now(),
        })
    }

    /// Its PID (while it runs).
    pub(super) fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Starts `spec` for the first time and lists it in the manifest.
///
/// # Errors
/// When it cannot be started.
pub(super) fn start(book: &Book, spec: Spec) -> anyhow::Result<Proc> {
    let proc = Proc::spawn(Arc::new(spec))?;
    let spec = &proc.spec;
    let entry = ManifestProcess {
        name: spec.name.clone(),
        pid: proc.pid(),
        argv: spec.argv(),
        data_dir: spec.data_dir.as_ref().map(|d| d.display().to_string()),
        region: spec.region,
        endpoints: spec.endpoints.clone(),
        restarts: 0,
        last_exit: None,
        ready: false,
    };
    book.edit(|m| m.processes.push(entry));
    Ok(proc)
}

/// Forwards the child's stdout and stderr line by line with a `[name]`
/// prefix (Redis's stdout is dropped), and sends on `ready` once it is.
fn forward(spec: &Spec, child: &mut Child, ready: oneshot::Sender<Option<String>>) {
    let mut ready = Some(ready);
    if let Ready::Port(addr) = spec.ready {
        if let Some(tx) = ready.take() {
            tokio::spawn(wait_port(addr, tx));
        }
    }
    if let Some(out) = child.stdout.take() {
        let label = spec.name.clone();
        let quiet = matches!(spec.ready, Ready::Port(_));
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            let mut fingerprint = None;
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(fp) = line.strip_prefix(FINGERPRINT_LINE) {
                    fingerprint = Some(fp.to_owned());
                }
                if line == "ready" {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(fingerprint.take());
                    }
                }
                if !quiet {
                    println!("[{label}] {line}");
                }
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let label = spec.name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{label}] {line}");
            }
        });
    }
}

/// Sends on `ready` once something accepts TCP connections on `addr`;
/// gives up after [`START_TIMEOUT`] or when nobody waits any more.
async fn wait_port(addr: SocketAddr, ready: oneshot::Sender<Option<String>>) {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline && !ready.is_closed() {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let _ = ready.send(None);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every child in `procs` not yet waited for is ready, and
/// marks it ready in the manifest (with its certificate fingerprint).
///
/// # Errors
/// When one exits first, or is not ready within [`START_TIMEOUT`].
pub(super) async fn wait_ready(book: &Book, procs: &mut [Proc]) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    for p in procs.iter_mut() {
        let Some(rx) = p.ready.take() else { continue };
        let name = &p.spec.name;
        let fingerprint = tokio::select! {
            r = tokio::time::timeout_at(deadline, rx) => match r {
                Ok(Ok(fp)) => fp,
                Ok(Err(_)) => anyhow::bail!("{name} exited before it was ready (its output is above)"),
                Err(_) => anyhow::bail!("{name} was not ready within {START_TIMEOUT:?}"),
            },
            st = p.child.wait() => {
                let how = st.map_or_else(|e| format!("wait failed: {e}"), |s| s.to_string());
                anyhow::bail!("{name} exited ({how}) before it was ready (its output is above)");
            }
        };
        let pid = p.pid();
        book.edit(|m| m.ready(name, pid, fingerprint));
    }
    Ok(())
}

/// The supervisor of one child.
#[derive(Debug)]
struct Supervisor {
    rank: u8,
    /// Cancelled to stop the child (SIGTERM, then kill after [`STOP_TIMEOUT`]).
    term: CancellationToken,
    task: JoinHandle<()>,
}

/// The supervised children of a dev cluster.
#[derive(Debug)]
pub(super) struct Children {
    list: Vec<Supervisor>,
    /// Cancelled when the cluster stops: nothing is restarted from then on.
    stopping: CancellationToken,
    book: Arc<Book>,
}

/// Hands every child to a supervisor task of its own. With `restart`, one
/// that dies is started again with the same [`Spec`], after a backoff
/// ([`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`], from the start again after
/// [`STABLE`] up), and the manifest is rewritten with its new PID and
/// restart count.
pub(super) fn supervise(procs: Vec<Proc>, book: &Arc<Book>, restart: bool) -> Children {
    let stopping = CancellationToken::new();
    let list = procs
        .into_iter()
        .map(|p| {
            let term = CancellationToken::new();
            let rank = p.spec.rank();
            let watch = Watch {
                book: book.clone(),
                restart,
                stopping: stopping.clone(),
                term: term.clone(),
            };
            Supervisor {
                rank,
                term,
                task: tokio::spawn(watch.run(p)),
            }
        })
        .collect();
    Children {
        list,
        stopping,
        book: book.clone(),
    }
}

impl Children {
    /// Stops every child: from now on none is restarted; SIGTERM to the
    /// rooms, then the centers, then the other services, then Redis
    /// (newest first); each group is waited for, each child killed after
    /// [`STOP_TIMEOUT`]. The manifest is written once more at the end
    /// (every PID `null`).
    pub(super) async fn stop(self) {
        self.stopping.cancel();
        self.book.hold();
        let mut list = self.list;
        list.reverse();
        for group in 0..4 {
            let (now, rest): (Vec<_>, Vec<_>) = list.into_iter().partition(|s| s.rank == group);
            list = rest;
            for s in &now {
                s.term.cancel();
            }
            for s in now {
                if let Err(e) = s.task.await {
                    warn!(error = %e, "a supervisor task failed");
                }
            }
        }
        let restarts = self.book.read(|m| m.restarts);
        info!(restarts, "every child stopped");
        self.book.flush();
    }
}

/// What a supervisor task needs besides its child.
struct Watch {
    book: Arc<Book>,
    restart: bool,
    stopping: CancellationToken,
    term: CancellationToken,
}

impl Watch {
    /// Watches `proc` (and the processes that replace it) until it is
    /// stopped, or dies while the cluster stops or with `--no-restart`.
    async fn run(self, mut proc: Proc) {
        let spec = proc.spec.clone();
        let name = spec.name.as_str();
        let mut delay = BACKOFF_MIN;
        let mut restarts: u32 = 0;
        loop {
            let status = tokio::select! {
                biased;
                () = self.term.cancelled() => {
                    self.stop(&mut proc).await;
                    return;
                }
                st = proc.child.wait() => st,
            };
            let how = status.map_or_else(|e| format!("wait failed: {e}"), |s| s.to_string());
            self.book.edit(|m| m.exited(name, &how));
            if self.stopping.is_cancelled() {
                return;
            }
            if !self.restart {
                warn!(process = name, exit = %how, "child exited; not restarted (--no-restart)");
                return;
            }
            if proc.since.elapsed() >= STABLE {
                delay = BACKOFF_MIN;
            }
            let grace = delay.min(STOP_GRACE);
            if !self.sleep(grace).await {
                return;
            }
            warn!(
                process = name,
                exit = %how,
                restart = restarts + 1,
                "child exited unexpectedly; restarting it in {delay:?}"
            );
            let mut wait = delay - grace;
            proc = loop {
                if !self.sleep(wait).await {
                    return;
                }
                delay = (delay * 2).min(BACKOFF_MAX);
                match Proc::spawn(spec.clone()) {
                    Ok(p) => break p,
                    Err(e) => {
                        warn!(
                            process = name,
                            error = %format!("{e:#}"),
                            "restart failed; trying again in {delay:?}"
                        );
                        wait = delay;
                    }
                }
            };
            restarts += 1;
            let pid = proc.pid();
            self.book.edit(|m| m.restarted(name, pid));
            info!(process = name, pid, restarts, "child restarted");
            if let Some(ready) = proc.ready.take() {
                let book = self.book.clone();
                let name = name.to_owned();
                tokio::spawn(async move {
                    if let Ok(fingerprint) = ready.await {
                        book.edit(|m| m.ready(&name, pid, fingerprint));
                        info!(process = %name, pid, "restarted child ready");
                    }
                });
            }
        }
    }

    /// Sleeps for `d`; false when the cluster began to stop meanwhile.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            biased;
            () = self.stopping.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }

    /// SIGTERM, then a kill after [`STOP_TIMEOUT`].
    async fn stop(&self, proc: &mut Proc) {
        let name = proc.spec.name.as_str();
        if let Some(pid) = proc.pid() {
            terminate(pid);
        }
        let how = match tokio::time::timeout(STOP_TIMEOUT, proc.child.wait()).await {
            Ok(Ok(status)) => {
                if !status.success() {
                    warn!(process = name, %status, "exited with an error");
                }
                status.to_string()
            }
            Ok(Err(e)) => {
                warn!(process = name, error = %e, "wait failed");
                format!("wait failed: {e}")
            }
            Err(_) => {
                warn!(process = name, "did not stop in time; killing it");
                let _ = proc.child.kill().await;
                "killed: did not stop in time".to_owned()
            }
        };
        self.book.edit(|m| m.exited(name, &how));
    }
}

/// Sends SIGTERM to `pid` (a child of this process).
fn terminate(pid: u32) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
}
