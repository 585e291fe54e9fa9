//! The runner's side of the worker processes: spawning them (this same
//! binary, `bench c1m-worker`) and asking them things over stdin/stdout.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command as Proc};
use tokio::sync::Mutex;

use super::wire::{Answer, Buckets, Command, WorkerStats};

/// Longest a worker may take to answer one command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One worker process.
pub(crate) struct Worker {
    /// Worker number.
    pub(crate) id: u32,
    child: Mutex<Child>,
    io: Mutex<(ChildStdin, Lines<BufReader<ChildStdout>>)>,
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
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        match read_answer(&mut lines).await? {
            Answer::Ready => {}
            other => anyhow::bail!("worker {} started with {other:?}", s.id),
        }
        Ok(Worker {
            id: s.id,
            child: Mutex::new(child),
            io: Mutex::new((stdin, lines)),
        })
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
    /// otherwise.
    pub(crate) async fn stop(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.ask(&Command::Stop)).await;
        let mut child = self.child.lock().await;
        if tokio::time::timeout(within, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

async fn read_answer(lines: &mut Lines<BufReader<ChildStdout>>) -> anyhow::Result<Answer> {
    let line = tokio::time::timeout(ANSWER_TIMEOUT, lines.next_line())
        .await
        .context("a worker did not answer in time")?
        .context("reading a worker's answer")?
        .context("a worker exited")?;
    serde_json::from_str(&line).with_context(|| format!("a worker said {line:?}"))
}
