//! The C1M report: every figure of a run, as JSON (this module's types), a
//! Markdown summary ([`crate::c1m::markdown`]) and SVG plots
//! ([`crate::c1m::plot`]). Phases that were skipped or did not finish are
//! `None`; times are milliseconds unless a field says otherwise.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub(crate) use super::rest::RestAnswers;

/// A whole run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Report format version.
    pub(crate) version: u32,
    /// When the run started, Unix seconds.
    pub(crate) started_unix_s: u64,
    /// UTC date of the run, `YYYY-MM-DD`.
    pub(crate) date: String,
    /// The command line that produced the report.
    pub(crate) command: String,
    /// Whether the run was interrupted (Ctrl-C) or stopped early by an error.
    pub(crate) incomplete: Option<String>,
    /// The machine.
    pub(crate) machine: Machine,
    /// What was asked for.
    pub(crate) config: RunConfig,
    /// Opening the connections.
    pub(crate) ramp: Option<Ramp>,
    /// Room (and load generator, kernel) memory once every connection is open.
    pub(crate) memory: Option<Memory>,
    /// Holding the connections idle.
    pub(crate) hold: Option<Hold>,
    /// The broadcasts.
    pub(crate) broadcasts: Option<Broadcasts>,
    /// The channel pushes.
    pub(crate) channels: Option<Channels>,
    /// Unicast at the fixed rate asked for.
    pub(crate) unicast_fixed: Option<Unicast>,
    /// Unicast at the highest rate the cluster sustained (closed loop).
    pub(crate) unicast_max: Option<Unicast>,
    /// The killed room.
    pub(crate) kill: Option<Kill>,
    /// Samples over the whole run, about one per second.
    pub(crate) timeline: Vec<Sample>,
    /// Each target of the issue, measured.
    pub(crate) targets: Vec<Target>,
    /// Free-form observations (what limited a figure, warnings).
    pub(crate) notes: Vec<String>,
    /// What the bench's REST calls got over the whole run.
    #[serde(default)]
    pub(crate) rest: RestAnswers,
    /// What rooms and centers said about their calls to registers, savers
    /// and idgens, and about their leases, from before the ramp until
    /// after the unicast phases.
    #[serde(default)]
    pub(crate) internal: Option<super::scrape::Internal>,
    /// The floor measured in this run (`--floor`), whose figures are the
    /// config's `floor_ping_us` and `floor_delivery_us`.
    #[serde(default)]
    pub(crate) floor: Option<super::floor_run::FloorRun>,
}

/// The machine the run was made on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Machine {
    /// Logical CPUs.
    pub(crate) cpus: usize,
    /// `MemTotal`, bytes.
    pub(crate) mem_total_bytes: u64,
    /// `uname -r`-like kernel release (from /proc/sys/kernel/osrelease).
    pub(crate) kernel: String,
    /// Open-files limit of the bench process (soft).
    pub(crate) nofile: Option<u64>,
}

/// What was asked for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RunConfig {
    /// Connections asked for.
    pub(crate) connections: u64,
    /// `ws` or `tcp`.
    pub(crate) transport: String,
    /// Room processes.
    pub(crate) rooms: usize,
    /// Load-generator worker processes.
    pub(crate) workers: usize,
    /// Heartbeat interval, seconds.
    pub(crate) heartbeat_s: u64,
    /// Connect rate asked for (all workers together), per second.
    pub(crate) ramp_rate: u64,
    /// Idle hold, seconds.
    pub(crate) hold_s: f64,
    /// Broadcasts asked for.
    pub(crate) broadcasts: u32,
    /// Channels pushed to in the channel phase.
    pub(crate) channels: u32,
    /// Unicast rate asked for in the fixed-rate phase, per second.
    pub(crate) unicast_rate: u64,
    /// Length of each unicast phase, seconds.
    pub(crate) unicast_s: f64,
    /// Whether the pushes were stored (`"store": true`).
    pub(crate) store: bool,
    /// Whether the cluster was started by the bench (else attached).
    pub(crate) started_cluster: bool,
    /// `--broadcast-gap` (each broadcast sent that long after the previous
    /// one, without waiting), seconds; `None`: each waits for the previous.
    #[serde(default)]
    pub(crate) broadcast_gap_s: Option<f64>,
    /// `--floor-delivery-us`: the floor's server CPU per broadcast delivery, µs.
    #[serde(default)]
    pub(crate) floor_delivery_us: Option<f64>,
    /// `--floor-ping-us`: the floor's server CPU per heartbeat, µs.
    #[serde(default)]
    pub(crate) floor_ping_us: Option<f64>,
    /// Workers on other machines (`--workers-file`), `host:port`; empty:
    /// spawned here.
    #[serde(default)]
    pub(crate) remote_workers: Vec<String>,
}

/// Opening the connections.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Ramp {
    /// Connections asked for.
    pub(crate) target: u64,
    /// Connections authenticated.
    pub(crate) authenticated: u64,
    /// Attempts that failed (connect or auth), by reason.
    pub(crate) failures: BTreeMap<String, u64>,
    /// Connections that ended after `auth_ok` during the ramp and the
    /// settle (the server closed them or they broke; they reconnect), by
    /// reason.
    #[serde(default)]
    pub(crate) drops: BTreeMap<String, u64>,
    /// From the first attempt to the last `auth_ok`, seconds.
    pub(crate) seconds: f64,
    /// `authenticated / seconds`.
    pub(crate) rate_per_s: f64,
    /// Best one-second connect rate seen.
    pub(crate) peak_rate_per_s: f64,
}

/// Memory once every connection is open (after a settle).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Memory {
    /// Live connections when measured.
    pub(crate) connections: u64,
    /// Sum of room RSS before the ramp, bytes.
    pub(crate) rooms_rss_before: u64,
    /// Sum of room RSS after the ramp, bytes.
    pub(crate) rooms_rss_after: u64,
    /// Room RSS growth divided by connections.
    pub(crate) bytes_per_conn: f64,
    /// Each room.
    pub(crate) per_room: Vec<RoomMemory>,
    /// Kernel `Slab` before and after, bytes.
    pub(crate) slab_before: u64,
    /// Kernel `Slab` after, bytes.
    pub(crate) slab_after: u64,
    /// Slab growth per connection (both socket ends, and the load generator's), bytes.
    pub(crate) slab_per_conn: f64,
    /// Sum of the worker (load generator) RSS, bytes.
    pub(crate) workers_rss: u64,
    /// Lowest `MemAvailable` seen during the run, bytes.
    pub(crate) mem_available_min: u64,
}

/// One room's memory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RoomMemory {
    /// Room number (1-based, as `--id`).
    pub(crate) room: u32,
    /// Connections it held when measured.
    pub(crate) connections: u64,
    /// RSS before the ramp, bytes.
    pub(crate) rss_before: u64,
    /// RSS after, bytes.
    pub(crate) rss_after: u64,
    /// Growth per connection, bytes.
    pub(crate) bytes_per_conn: f64,
}

/// Holding the connections.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Hold {
    /// Length, seconds.
    pub(crate) seconds: f64,
    /// Connections live at the start.
    pub(crate) live_start: u64,
    /// Connections live at the end.
    pub(crate) live_end: u64,
    /// Connections the server closed or that broke, by reason.
    pub(crate) unexpected_drops: BTreeMap<String, u64>,
    /// Total of `unexpected_drops`.
    pub(crate) drops: u64,
    /// Heartbeats sent by the clients during the hold.
    pub(crate) pings: u64,
    /// Heartbeats answered.
    pub(crate) pongs: u64,
    /// CPU seconds of all rooms during the hold.
    pub(crate) rooms_cpu_s: f64,
    /// Heartbeats per second the rooms answered (`pongs / seconds`).
    #[serde(default)]
    pub(crate) pings_per_s: f64,
    /// Rooms' CPU ÷ (heartbeats × the floor's CPU per heartbeat); `None`
    /// without `--floor-ping-us`.
    #[serde(default)]
    pub(crate) cpu_to_floor: Option<f64>,
}

/// Percentiles of a latency distribution, milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Latency {
    /// Samples.
    pub(crate) count: u64,
    /// Median.
    pub(crate) p50: f64,
    /// 90th percentile.
    pub(crate) p90: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// 99.9th percentile.
    pub(crate) p999: f64,
    /// Largest.
    pub(crate) max: f64,
    /// The distribution for plots: (percentile 0..100, milliseconds), ~100 points.
    pub(crate) curve: Vec<(f64, f64)>,
}

/// One broadcast.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Broadcast {
    /// 1-based.
    pub(crate) index: u32,
    /// Connections that should have received it (live when it was sent).
    pub(crate) expected: u64,
    /// Connections that received it.
    pub(crate) received: u64,
    /// Time until the last connection had it, from the REST call, ms.
    pub(crate) last_ms: f64,
    /// Median delivery time over connections.
    pub(crate) p50_ms: f64,
    /// 99th percentile delivery time over connections.
    pub(crate) p99_ms: f64,
    /// REST call time (until the task was accepted), ms.
    pub(crate) http_ms: f64,
    /// `received / expected`, percent.
    #[serde(default)]
    pub(crate) share_pct: f64,
    /// The server's task (`b-…`), when it named one.
    #[serde(default)]
    pub(crate) task: Option<String>,
    /// The task as last seen (`GET /tasks/{task}`).
    #[serde(default)]
    pub(crate) task_view: Option<super::rest::TaskView>,
    /// Live connections × the floor's CPU per delivery ÷ cores, ms: the
    /// shortest time-to-last the cores allow.
    #[serde(default)]
    pub(crate) floor_bound_ms: Option<f64>,
    /// `last_ms / floor_bound_ms`.
    #[serde(default)]
    pub(crate) last_to_floor: Option<f64>,
    /// Connections that had it by the end of the run (counted again after
    /// the unicast phases): `received` counts what arrived before the bench
    /// moved on, so a difference is late, not lost.
    #[serde(default)]
    pub(crate) received_by_end: Option<u64>,
}

/// The broadcast phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Broadcasts {
    /// Each broadcast.
    pub(crate) each: Vec<Broadcast>,
    /// Time until the last client had it: median over the broadcasts, ms.
    pub(crate) last_p50_ms: f64,
    /// Time until the last client had it: p99 over the broadcasts (the
    /// largest with 20), ms.
    pub(crate) last_p99_ms: f64,
    /// Deliveries in total (received).
    pub(crate) deliveries: u64,
    /// Deliveries expected but not received.
    pub(crate) missed: u64,
    /// CPU seconds of the rooms and centers during the phase.
    pub(crate) server_cpu_s: f64,
    /// `server_cpu_s` per million deliveries.
    pub(crate) cpu_s_per_million: f64,
    /// Every delivery of every broadcast together.
    pub(crate) latency: Latency,
    /// `--broadcast-gap`, ms (`None`: each broadcast waited for the previous).
    #[serde(default)]
    pub(crate) gap_ms: Option<f64>,
    /// Cores the floor bound divides by (this machine's).
    #[serde(default)]
    pub(crate) cores: usize,
    /// Heartbeats answered during the measured windows.
    #[serde(default)]
    pub(crate) pongs: u64,
    /// Server CPU per delivery, µs, with the heartbeats answered in the same
    /// windows taken out (at the hold's CPU per heartbeat), as `bench
    /// floor` figures are.
    #[serde(default)]
    pub(crate) cpu_us_per_delivery: f64,
    /// `cpu_us_per_delivery` ÷ the floor's; `None` without `--floor-delivery-us`.
    #[serde(default)]
    pub(crate) cpu_per_delivery_to_floor: Option<f64>,
    /// The largest `last_to_floor` of the broadcasts.
    #[serde(default)]
    pub(crate) worst_last_to_floor: Option<f64>,
    /// The smallest share of live connections a broadcast reached, percent.
    #[serde(default)]
    pub(crate) min_share_pct: f64,
}

impl Broadcast {
    /// Connections that never had it: counted at the end of the run where it
    /// was, else when the bench moved on.
    pub(crate) fn lost(&self) -> u64 {
        self.expected
            .saturating_sub(self.received_by_end.unwrap_or(self.received))
    }
}

impl Broadcasts {
    /// Deliveries never received, every broadcast together.
    pub(crate) fn lost(&self) -> u64 {
        self.each.iter().map(Broadcast::lost).sum()
    }

    /// Deliveries received by the end of the run, every broadcast together
    /// (`None` where they were not counted again).
    pub(crate) fn received_by_end(&self) -> Option<u64> {
        self.each.iter().map(|b| b.received_by_end).sum()
    }
}

/// The channel phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Channels {
    /// Channels the connections are spread over.
    pub(crate) channels: u32,
    /// Pushes made (one per channel per round).
    pub(crate) pushes: u64,
    /// Deliveries expected.
    pub(crate) expected: u64,
    /// Deliveries received.
    pub(crate) received: u64,
    /// Delivery latency.
    pub(crate) latency: Latency,
    /// Deliveries received by the end of the run (counted again after the
    /// unicast phases; see [`Broadcast::received_by_end`]).
    #[serde(default)]
    pub(crate) received_by_end: Option<u64>,
}

impl Channels {
    /// Deliveries never received (as [`Broadcasts::lost`]).
    pub(crate) fn lost(&self) -> u64 {
        self.expected
            .saturating_sub(self.received_by_end.unwrap_or(self.received))
    }
}

/// A unicast phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Unicast {
    /// Rate asked for (`None`: closed loop, as fast as it goes).
    pub(crate) asked_rate: Option<u64>,
    /// In-flight requests (closed loop) or the cap on them (fixed rate).
    pub(crate) concurrency: u64,
    /// Seconds of pushing.
    pub(crate) seconds: f64,
    /// Requests sent.
    pub(crate) sent: u64,
    /// Requests acknowledged (2xx).
    pub(crate) acked: u64,
    /// Requests that failed, by reason.
    pub(crate) errors: BTreeMap<String, u64>,
    /// `acked / seconds`.
    pub(crate) achieved_rate: f64,
    /// Acknowledged pushes received by their user.
    pub(crate) received: u64,
    /// Acknowledged but never received.
    pub(crate) lost: u64,
    /// End-to-end latency (REST call start to client receipt).
    pub(crate) latency: Latency,
    /// REST call latency.
    pub(crate) http: Latency,
}

/// The killed room.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Kill {
    /// Room number killed.
    pub(crate) room: u32,
    /// Its clients when killed.
    pub(crate) clients: u64,
    /// Clients that noticed and reconnected elsewhere.
    pub(crate) reconnected: u64,
    /// From the kill until every one of them was authenticated again, ms
    /// (`None`: not all came back within the wait).
    pub(crate) all_back_ms: Option<f64>,
    /// Until half of them were back, ms.
    pub(crate) half_back_ms: Option<f64>,
    /// Stored unicast pushes to all users acknowledged around the kill.
    pub(crate) pushes_acked: u64,
    /// Of them sent (at most 600 in flight).
    #[serde(default)]
    pub(crate) pushes_sent: u64,
    /// Pushes sent and not acknowledged, by reason (429, no answer, ...).
    #[serde(default)]
    pub(crate) push_errors: BTreeMap<String, u64>,
    /// Of those, received.
    pub(crate) received: u64,
    /// Acknowledged but never received.
    pub(crate) lost: u64,
    /// Duplicates the clients dropped (replay overlap).
    pub(crate) duplicates: u64,
    /// Connections of other rooms that dropped meanwhile.
    pub(crate) other_drops: u64,
}

/// One sample of the timeline.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Sample {
    /// Seconds since the run started.
    pub(crate) t_s: f64,
    /// Phase name (`ramp`, `hold`, `broadcast`, ...).
    pub(crate) phase: String,
    /// Live authenticated connections (as the clients count them).
    pub(crate) live: u64,
    /// Sum of room RSS, bytes.
    pub(crate) rooms_rss: u64,
    /// Sum of worker RSS, bytes.
    pub(crate) workers_rss: u64,
    /// Kernel slab, bytes.
    pub(crate) slab: u64,
    /// `MemAvailable`, bytes.
    pub(crate) mem_available: u64,
    /// CPU seconds of all rooms since the run started.
    pub(crate) rooms_cpu_s: f64,
}

/// One target of the benchmark and how the run did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Target {
    /// What is measured.
    pub(crate) name: String,
    /// The target, in words (`≤ 2,048 B`).
    pub(crate) target: String,
    /// The measured value, in words.
    pub(crate) measured: String,
    /// `Some(true)` met, `Some(false)` missed, `None` not measured.
    pub(crate) met: Option<bool>,
    /// By how much it was missed, what limited it.
    pub(crate) note: String,
}
