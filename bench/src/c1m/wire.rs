//! What the `c1m` runner and its worker processes say to each other: one
//! JSON object per line, commands on the worker's stdin, answers on its
//! stdout (one answer per command, in order). A worker started with
//! `--listen ADDR` speaks the same lines over a TCP connection from the
//! runner, which first sends [`Command::Setup`] (what a spawned worker gets
//! on its command line).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A command to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum Command {
    /// What to do (a listening worker only; answered with `Ready`, or
    /// `Error` when the rooms cannot be resolved).
    Setup(Setup),
    /// Start opening the connections (answered at once with `Ack`).
    Start,
    /// Counters now (answered with `Stats`).
    Stats,
    /// Latency histograms so far (answered with `Hists`).
    Hists,
    /// Close everything and exit (answered with `Ack` first).
    Stop,
}

/// What a worker listening on TCP is told to do: the arguments a spawned
/// worker gets on its command line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Setup {
    /// Worker number.
    pub(crate) id: u32,
    /// First user number.
    pub(crate) first: u64,
    /// Connections.
    pub(crate) count: u64,
    /// `ws` or `tcp`.
    pub(crate) transport: String,
    /// Room addresses, in room order.
    pub(crate) rooms: Vec<String>,
    /// Source addresses the runner suggests (comma-separated); the worker's
    /// own `--bind` wins.
    #[serde(default)]
    pub(crate) sources: Option<String>,
    /// The rooms' token secret.
    pub(crate) token_secret: String,
    /// Connect rate of this worker, per second.
    pub(crate) rate: u64,
    /// Channels.
    pub(crate) channels: u64,
}

/// A worker's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub(crate) enum Answer {
    /// The worker is up (its first line, unprompted).
    Ready,
    /// Command done.
    Ack,
    /// Counters.
    Stats(WorkerStats),
    /// Histograms.
    Hists {
        /// By key: `b<N>` broadcast N, `c<N>` channel round N, `u<N>` unicast
        /// phase N, `r` reconnect durations.
        hists: BTreeMap<String, Buckets>,
    },
    /// The worker cannot go on.
    Error {
        /// Why.
        message: String,
    },
}

/// A histogram as (value in microseconds, count) pairs.
pub(crate) type Buckets = Vec<(u64, u64)>;

/// A worker's counters (totals since it started).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct WorkerStats {
    /// Connections this worker holds when all are open.
    pub(crate) target: u64,
    /// Connections authenticated at least once.
    pub(crate) authenticated: u64,
    /// Connections authenticated now.
    pub(crate) live: u64,
    /// Connections currently authenticated per room (index = room − 1).
    pub(crate) live_per_room: Vec<u64>,
    /// Failed connect or auth attempts, by reason.
    pub(crate) failures: BTreeMap<String, u64>,
    /// Connections the server closed or that broke, by reason.
    pub(crate) drops: BTreeMap<String, u64>,
    /// Connections authenticated again after a drop.
    pub(crate) reconnects: u64,
    /// Wall clock (Unix ns) of the latest first-time `auth_ok`.
    pub(crate) last_auth_ns: u64,
    /// Wall clock (Unix ns) of the latest re-authentication after a drop.
    pub(crate) last_back_ns: u64,
    /// Heartbeats sent.
    pub(crate) pings: u64,
    /// Heartbeat answers.
    pub(crate) pongs: u64,
    /// Unicast messages dropped as duplicates (id not above the last one).
    pub(crate) duplicates: u64,
    /// Messages whose payload the worker did not understand.
    pub(crate) bad_payloads: u64,
    /// The worker's resident memory, bytes.
    pub(crate) rss: u64,
    /// Messages recorded per histogram key (see [`Answer::Hists`]).
    pub(crate) counts: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for c in [
            Command::Setup(Setup {
                id: 2,
                rooms: vec!["ws://127.0.0.1:1/ws".into()],
                sources: Some("127.0.3.1".into()),
                ..Setup::default()
            }),
            Command::Start,
            Command::Stats,
            Command::Hists,
            Command::Stop,
        ] {
            let line = serde_json::to_string(&c).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Command>(&line).unwrap(), c);
        }
        assert_eq!(
            serde_json::to_string(&Command::Stats).unwrap(),
            r#"{"cmd":"stats"}"#
        );
        let a = Answer::Stats(WorkerStats {
            live: 3,
            ..WorkerStats::default()
        });
        let line = serde_json::to_string(&a).unwrap();
        match serde_json::from_str::<Answer>(&line).unwrap() {
            Answer::Stats(s) => assert_eq!(s.live, 3),
            other => panic!("{other:?}"),
        }
        let h = Answer::Hists {
            hists: BTreeMap::from([("b1".to_string(), vec![(10, 2)])]),
        };
        let line = serde_json::to_string(&h).unwrap();
        assert!(matches!(
            serde_json::from_str::<Answer>(&line).unwrap(),
            Answer::Hists { hists } if hists["b1"] == vec![(10, 2)]
        ));
    }
}
