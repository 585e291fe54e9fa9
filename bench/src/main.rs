//! `bench`: pushgate's load generator and measurement tool.
//!
//! It speaks the client protocol and the REST API like any outside client,
//! depending only on `proto`. Subcommands:
//! - `bench idle`: many authenticated, heartbeating connections; memory per
//!   connection, connect rate, drops while held.
//! - `bench latency`: pushes at a fixed rate through the REST API to connected
//!   users; end-to-end and HTTP latency percentiles, losses.
//! - `bench c1m`: the one-million-connections benchmark (a local cluster,
//!   worker processes, every phase, a report under `bench/results/`).
//! - `bench floor`: a minimal single-threaded epoll server speaking just
//!   enough of the protocol; the floor under pushgate's CPU per operation.
//! - `bench compare`: the same `bench idle` workload against `bench floor`
//!   and against pushgate; server CPU per connect, heartbeat and broadcast
//!   delivery side by side.
//! - `bench durable`: one write + `fdatasync` per acknowledgement on a
//!   directory's file system; the floor under a stored push.
//! - `bench chat`: clients sending 1:1 (`send`) or group (`pub`) messages to
//!   each other; answer and end-to-end latency, messages/s, CPU per message.
//!
//! Progress goes to stderr, results to stdout (and `--json-out`). Exit codes:
//! 0 all good, 1 the run completed but something failed (connections refused
//! or dropped, messages lost), 2 the run could not start, 130 interrupted.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod args;
mod c1m;
mod client;
mod cmd_chat;
mod cmd_compare;
mod cmd_idle;
mod cmd_latency;
mod durable;
mod floor;
mod pace;
mod proc;
mod quic;
mod runctl;
mod sse;
mod sse_h2;
mod stats;
#[cfg(test)]
mod testsrv;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

// The system allocator, as in the server: with tens of thousands of small,
// long-lived connections per process it keeps RSS lower than mimalloc did
// (c1m workers: see bench/README.md).

/// pushgate load generator and benchmark runner.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Open many idle authenticated connections; measure memory per connection and drops.
    Idle(cmd_idle::IdleArgs),
    /// Push at a fixed rate to connected users; measure end-to-end latency.
    Latency(cmd_latency::LatencyArgs),
    /// Clients sending 1:1 (`send`) or group (`pub`) messages to each other
    /// at a fixed rate; answer and end-to-end latency, CPU per message.
    Chat(cmd_chat::ChatArgs),
    /// The one-million-connections benchmark: start a local cluster, open,
    /// hold and push to N connections, kill a room; write a report.
    C1m(c1m::C1mArgs),
    /// A minimal epoll server (one thread, no runtime) speaking just enough
    /// of the protocol: the floor under pushgate's CPU per operation.
    Floor(floor::FloorArgs),
    /// The same `idle` workload against `bench floor` and against pushgate:
    /// server CPU per connect, heartbeat and broadcast delivery, and ratios.
    Compare(cmd_compare::CompareArgs),
    /// The floor under a stored push: one write + fdatasync per
    /// acknowledgement on the data directory's file system; CPU and latency.
    Durable(durable::DurableArgs),
    /// One load-generator process of a `c1m` run (started by `c1m`).
    #[command(hide = true)]
    C1mWorker(c1m::worker::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The floor server runs without any async runtime.
    if let Cmd::Floor(a) = cli.cmd {
        return floor::main(a);
    }
    // So does the durable-write floor: one thread, blocking file I/O.
    if let Cmd::Durable(a) = &cli.cmd {
        return match durable::run(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    // A c1m worker is one of many processes sharing the cores: one thread.
    let rt = if matches!(cli.cmd, Cmd::C1mWorker(_)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result: anyhow::Result<Outcome> = rt.block_on(async {
        match cli.cmd {
            Cmd::Idle(a) => cmd_idle::run(a).await,
            Cmd::Latency(a) => cmd_latency::run(a).await,
            Cmd::Chat(a) => cmd_chat::run(a).await,
            Cmd::C1m(a) => c1m::run(a).await,
            Cmd::Compare(a) => cmd_compare::run(a).await,
            Cmd::C1mWorker(a) => c1m::worker::run(a).await.map(|()| Outcome::Ok),
            Cmd::Floor(_) | Cmd::Durable(_) => Ok(Outcome::Ok),
        }
    });
    // Do not wait for stray tasks (e.g. a socket still closing).
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// How a completed run went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Everything as expected.
    Ok,
    /// The run completed, but something failed (see the report).
    Failed,
    /// Ctrl-C.
    Interrupted,
}

impl Outcome {
    fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Ok => ExitCode::SUCCESS,
            Outcome::Failed => ExitCode::FAILURE,
            Outcome::Interrupted => ExitCode::from(130),
        }
    }
}

/// Writes `value` as pretty JSON to `path`.
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(value).context("encoding the report")?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("report written to {}", path.display());
    Ok(())
}

/// Nanoseconds since the Unix epoch, by the wall clock.
pub(crate) fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
