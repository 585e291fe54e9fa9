//! The runner's side of the worker processes: spawning them (this same
//! binary, `bench c1m-worker`) and asking them things over stdin/stdout, or
//! connecting to workers listening on other machines
//! (`bench c1m-worker --listen ADDR`, listed in `--workers-file`) and asking
//! them the same things over TCP.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader, Lines,
};
use tokio::process::{Child, Command as Proc};
use tokio::sync::Mutex;

use super::wire::{Answer, Buckets, Command, Setup, WorkerStats};

/// Longest a worker may take to answer one command (a worker at nice 10 on
/// a saturated machine may get no CPU for tens of seconds).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a connect to a listening worker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the runner writes commands.
type Tx = Box<dyn AsyncWrite + Send + Unpin>;
/// Where the runner reads answers.
type Rx = Lines<BufReader<Box<dyn AsyncRead + Send + Unpin>>>;

/// One worker: a child process, or a listening worker elsewhere.
pub(crate) struct Worker {
    /// Worker number.
    pub(crate) id: u32,
    /// The child's PID (`None`: a worker on TCP).
    pub(crate) pid: Option<u32>,
    /// The child process (`None`: a worker on TCP).
    child: Option<Mutex<Child>>,
    io: Mutex<(Tx, Rx)>,
}

/// What a worker is started with.
pub(crate) struct Spawn<'a> {
    /// Worker number.
    pub(crate) id: u32,
    /// First user number.
    pub(crate) first: u64,
    /// Connections.
    pub(crate) count: u64,
    /// `ws` or `tcp`.
    pub(crate) transport: &'a str,
    /// Room addresses, in room order.
    pub(crate) rooms: &'a [String],
    /// Source addresses (comma-separated).
    pub(crate) sources: &'a str,
    /// Token secret (passed in the environment, not on the command line).
    pub(crate) token_secret: &'a str,
    /// Connect rate of this worker.
    pub(crate) rate: u64,
    /// Channels.
    pub(crate) channels: u64,
}

impl Worker {
    /// Spawns a worker and waits for it to say it is ready.
    pub(crate) async fn spawn(s: &Spawn<'_>) -> anyhow::Result<Worker> {
        let exe = std::env::current_exe().context("finding this binary")?;
        let mut child = Proc::new(exe)
            .args([
                "c1m-worker",
                "--id",
                &s.id.to_string(),
                "--first",
                &s.first.to_string(),
                "--count",
                &s.count.to_string(),
                "--transport",
                s.transport,
                "--rooms",
                &s.rooms.join(","),
                "--sources",
                s.sources,
                "--rate",
                &s.rate.to_string(),
                "--channels",
                &s.channels.to_string(),
            ])
            .env("PUSHGATE_TOKEN_SECRET", s.token_secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let stdin: Tx = Box::new(child.stdin.take().context("worker stdin")?);
        let stdout: Box<dyn AsyncRead + Send + Unpin> =
            Box::new(child.stdout.take().context("worker stdout")?);
        let mut lines = BufReader::new(stdout).lines();
        match read_answer(&mut lines).await? {
            Answer::Ready => {}
            other => anyhow::bail!("worker {} started with {other:?}", s.id),
        }
        Ok(Worker {
            id: s.id,
            pid: child.id(),
            child: Some(Mutex::new(child)),
            io: Mutex::new((stdin, lines)),
        })
    }

    /// Connects to a worker listening at `addr` (`bench c1m-worker
    /// --listen`), sends it what a spawned worker gets on its command line
    /// and waits for it to be ready.
    pub(crate) async fn connect(addr: &str, s: &Spawn<'_>) -> anyhow::Result<Worker> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .with_context(|| format!("worker {} at {addr}: no connection in time", s.id))?
            .with_context(|| format!("worker {} at {addr}", s.id))?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let read: Box<dyn AsyncRead + Send + Unpin> = Box::new(read);
        let w = Worker {
            id: s.id,
            pid: None,
            child: None,
            io: Mutex::new((Box::new(write), BufReader::new(read).lines())),
        };
        let setup = Setup {
            id: s.id,
            first: s.first,
            count: s.count,
            transport: s.transport.to_string(),
            rooms: s.rooms.to_vec(),
            sources: Some(s.sources.to_string()),
            token_secret: s.token_secret.to_string(),
            rate: s.rate,
            channels: s.channels,
        };
        match w
            .ask(&Command::Setup(setup))
            .await
            .with_context(|| format!("worker at {addr}"))?
        {
            Answer::Ready => Ok(w),
            other => anyhow::bail!("worker {} at {addr} answered setup with {other:?}", s.id),
        }
    }

    async fn ask(&self, cmd: &Command) -> anyhow::Result<Answer> {
        let mut io = self.io.lock().await;
        let (stdin, lines) = &mut *io;
        let mut line = serde_json::to_vec(cmd)?;
        line.push(b'\n');
        stdin
            .write_all(&line)
            .await
            .with_context(|| format!("worker {} is gone", self.id))?;
        stdin.flush().await?;
        match read_answer(lines).await? {
            Answer::Error { message } => anyhow::bail!("worker {}: {message}", self.id),
            a => Ok(a),
        }
    }

    /// Starts the ramp.
    pub(crate) async fn start(&self) -> anyhow::Result<()> {
        self.ask(&Command::Start).await.map(drop)
    }

    /// Counters now.
    pub(crate) async fn stats(&self) -> anyhow::Result<WorkerStats> {
        match self.ask(&Command::Stats).await? {
            Answer::Stats(s) => Ok(s),
            other => anyhow::bail!("worker {}: expected stats, got {other:?}", self.id),
        }
    }

    /// Histograms now.
    pub(crate) async fn hists(&self) -> anyhow::Result<BTreeMap<String, Buckets>> {
        match self.ask(&Command::Hists).await? {
            Answer::Hists { hists } => Ok(hists),
            other => anyhow::bail!("worker {}: expected hists, got {other:?}", self.id),
        }
    }

    /// Tells it to stop and waits (up to `within`) for it to exit; kills it
    /// otherwise. A worker on TCP is told to stop and disconnected (it
    /// exits, or with `--keep` waits for the next runner).
    pub(crate) async fn stop(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.ask(&Command::Stop)).await;
        let Some(child) = &self.child else {
            let mut io = self.io.lock().await;
            let _ = tokio::time::timeout(within, io.0.shutdown()).await;
            return;
        };
        let mut child = child.lock().await;
        if tokio::time::timeout(within, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

/// Reads a `--workers-file`: one `host:port` per line (or `host:P1-P2`, every
/// port from P1 to P2), `#` starts a comment, blank lines are skipped.
pub(crate) fn read_workers_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading workers file {}", path.display()))?;
    parse_workers(&text).with_context(|| format!("workers file {}", path.display()))
}

/// The addresses of a workers file's text (see [`read_workers_file`]).
fn parse_workers(text: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (host, ports) = line
            .rsplit_once(':')
            .with_context(|| format!("line {}: {line:?} is not host:port", i + 1))?;
        anyhow::ensure!(!host.is_empty(), "line {}: no host in {line:?}", i + 1);
        let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .with_context(|| format!("line {}: bad port in {line:?}", i + 1))
        };
        let (lo, hi) = (port(lo)?, port(hi)?);
        anyhow::ensure!(
            lo <= hi && lo > 0,
            "line {}: bad port range in {line:?}",
            i + 1
        );
        anyhow::ensure!(
            out.len() + usize::from(hi - lo) < 10_000,
            "more than 10,000 workers"
        );
        out.extend((lo..=hi).map(|p| format!("{host}:{p}")));
    }
    anyhow::ensure!(!out.is_empty(), "no worker addresses");
    Ok(out)
}

async fn read_answer(lines: &mut Rx) -> anyhow::Result<Answer> {
    let line = tokio::time::timeout(ANSWER_TIMEOUT, lines.next_line())
        .await
        .context("a worker did not answer in time")?
        .context("reading a worker's answer")?
        .context("a worker exited")?;
    serde_json::from_str(&line).with_context(|| format!("a worker said {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_files() {
        let text = "# box B\n10.0.0.2:7901\n\n10.0.0.2:7910-7912  # three more\n[::1]:7000\n";
        assert_eq!(
            parse_workers(text).unwrap(),
            [
                "10.0.0.2:7901",
                "10.0.0.2:7910",
                "10.0.0.2:7911",
                "10.0.0.2:7912",
                "[::1]:7000"
            ]
        );
        assert!(parse_workers("# nothing\n").is_err());
        assert!(parse_workers("10.0.0.2\n").is_err());
        assert!(parse_workers("10.0.0.2:9-8\n").is_err());
        assert!(parse_workers(":80\n").is_err());
    }
}
