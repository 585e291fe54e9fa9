//! The floor, measured in the run (`--floor N`): before the cluster starts,
//! a `bench floor` server (one thread, one epoll set, no runtime) is held by
//! one load-generator worker of this run's kind, with N connections at the
//! run's heartbeat, then broadcast to. Its CPU per heartbeat and per
//! broadcast delivery become the run's floor figures.
//!
//! Why: a floor figure passed in (`--floor-ping-us`) was measured another
//! day, by another load generator (`bench idle`'s clients), at another rate
//! per process; on a shared machine the floor's own cost moves by tens of
//! percent from one day to the next (32 µs per heartbeat one day, 55 µs
//! another on the same VM). Here the floor and the rooms see the same
//! clients, the same heartbeat and, with N = the connections a room holds,
//! the same heartbeats per second per process, minutes apart.

use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fleet::{per_delivery_us, per_op_us, Fleet, ThreadsCpu};
use super::rest::Rest;
use super::workers::{Spawn, Worker};
use super::{sleep_unless_cancelled, C1mArgs};
use crate::cmd_compare::{random_hex, start};

/// Longest wait for the floor's connections to authenticate, beyond what
/// the connect rate needs.
const RAMP_SLACK: Duration = Duration::from_secs(60);
/// Longest wait for one broadcast to reach every client.
const BROADCAST_WAIT: Duration = Duration::from_secs(30);

/// What the floor run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct FloorRun {
    /// Connections asked for.
    pub(crate) connections: u64,
    /// Connections authenticated.
    pub(crate) authenticated: u64,
    /// Heartbeat interval, seconds.
    pub(crate) heartbeat_s: u64,
    /// Length of the measured hold, seconds.
    pub(crate) hold_s: f64,
    /// Heartbeats answered during the hold.
    pub(crate) pongs: u64,
    /// The floor server's CPU during the hold, seconds.
    pub(crate) hold_cpu_s: f64,
    /// CPU per heartbeat, µs (`None` without a heartbeat answered).
    pub(crate) ping_us: Option<f64>,
    /// Broadcasts sent.
    pub(crate) broadcasts: u32,
    /// Broadcast messages the clients received.
    pub(crate) deliveries: u64,
    /// Broadcast messages expected (broadcasts × authenticated).
    pub(crate) expected: u64,
    /// Heartbeats answered while broadcasting (taken out).
    pub(crate) broadcast_pongs: u64,
    /// The floor server's CPU while broadcasting, seconds.
    pub(crate) broadcast_cpu_s: f64,
    /// CPU per delivery, µs, the heartbeats meanwhile taken out (`None`
    /// without a delivery).
    pub(crate) delivery_us: Option<f64>,
    /// Connections dropped during the floor run.
    pub(crate) drops: u64,
    /// Length of the ramp (start to the last authenticated), seconds.
    #[serde(default)]
    pub(crate) ramp_s: f64,
    /// The floor server's CPU per connect (upgrade, auth, sub), µs.
    #[serde(default)]
    pub(crate) connect_us: Option<f64>,
    /// The load generator's CPU per connect, µs: the clients' side, which
    /// shares the machine when they run on it.
    #[serde(default)]
    pub(crate) client_connect_us: Option<f64>,
    /// The load generator's CPU per heartbeat (ping sent, pong read), µs.
    #[serde(default)]
    pub(crate) client_ping_us: Option<f64>,
    /// The load generator's CPU per broadcast delivery (read, counted), µs,
    /// its heartbeats meanwhile taken out.
    #[serde(default)]
    pub(crate) client_delivery_us: Option<f64>,
}

impl FloorRun {
    /// Both ends of a connect, µs: what one costs the machine when the
    /// clients run on it.
    pub(crate) fn both_ends_connect_us(&self) -> Option<f64> {
        Some(self.connect_us? + self.client_connect_us?)
    }

    /// Both ends of a broadcast delivery, µs.
    pub(crate) fn both_ends_delivery_us(&self) -> Option<f64> {
        Some(self.delivery_us? + self.client_delivery_us?)
    }
}

/// `x` µs with `digits` decimals, or `?`.
fn fmt_us(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "?".to_string(), |u| format!("{u:.digits$}"))
}

/// Runs the floor: starts `bench floor` and one worker with `n`
/// connections, holds them for `--floor-hold`, sends `--floor-broadcasts`
/// broadcasts one after the other, and stops both. `Ok(None)`: cancelled.
pub(crate) async fn measure(
    args: &C1mArgs,
    n: u64,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<FloorRun>> {
    let log = std::env::temp_dir().join(format!("pushgate-c1m-floor-{}.log", std::process::id()));
    let secret = random_hex(32);
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["floor", "--ws", "127.0.0.1:0", "--tcp", "127.0.0.1:0"])
        .args(["--http", "127.0.0.1:0", "--duration", "2h"])
        .args(["--heartbeat", &args.heartbeat.to_string()])
        .args(["--max-connections", &(n + 16).to_string()])
        .args(["--token-secret", &secret]);
    eprintln!("== floor: bench floor held by one worker with {n} connections");
    let srv = start(cmd, &log).await?;
    let rooms = vec![match args.transport {
        crate::args::Transport::Tcp => srv.tcp.clone(),
        _ => format!("ws://{}/ws", srv.ws),
    }];
    let spawn = Spawn {
        id: 0,
        first: 0,
        count: n,
        transport: match args.transport {
            crate::args::Transport::Tcp => "tcp",
            _ => "ws",
        },
        rooms: &rooms,
        sources: "127.0.1.1,127.0.1.2",
        token_secret: &secret,
        rate: args.ramp_rate.max(1),
        channels: u64::from(args.channels),
    };
    let result = match Worker::spawn(&spawn).await {
        Ok(worker) => {
            let fleet = Fleet {
                workers: vec![worker],
            };
            let r = run(args, n, &fleet, srv.pid, &srv.http, cancel).await;
            for w in &fleet.workers {
                w.stop(Duration::from_secs(20)).await;
            }
            r
        }
        Err(e) => Err(e),
    };
    srv.stop().await;
    let _ = std::fs::remove_file(&log);
    result
}

/// The floor run's phases, with the server (`pid`, REST API at `http`) and
/// its one worker up.
async fn run(
    args: &C1mArgs,
    n: u64,
    fleet: &Fleet,
    pid: u32,
    http: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<FloorRun>> {
    // The floor server's CPU and its clients' (the worker's), together.
    let pids: Vec<u32> = std::iter::once(pid).chain(fleet.workers[0].pid).collect();
    let cpu_since = |r: &ThreadsCpu| {
        let s = r.since(&pids);
        (s[0], s.get(1).copied().unwrap_or(0.0))
    };
    let sleep = |d: Duration| sleep_unless_cancelled(cancel, d);

    // The ramp.
    let cpu = ThreadsCpu::now(&pids);
    let ramp_started = Instant::now();
    fleet.workers[0].start().await?;
    let ramp_for = Duration::from_secs_f64(n as f64 / args.ramp_rate.max(1) as f64) + RAMP_SLACK;
    let every = Duration::from_millis(200);
    let t = fleet
        .wait_for(
            |t| t.authenticated >= n,
            ramp_started + ramp_for,
            every,
            cancel,
        )
        .await?;
    if cancel.is_cancelled() {
        return Ok(None);
    }
    let authenticated = t.authenticated;
    anyhow::ensure!(
        authenticated == n,
        "the floor run authenticated {authenticated} of {n} connections in {ramp_for:?}"
    );
    // Polled every 200 ms: the ramp's CPU includes up to that much idle
    // time and the heartbeats of the first connections (a few per thousand
    // at 30 s heartbeats), both small against the connects.
    let ramp_s = ramp_started.elapsed().as_secs_f64();
    let (server_s, client_s) = cpu_since(&cpu);
    let connect_us = per_op_us(server_s, n);
    let client_connect_us = per_op_us(client_s, n);
    eprintln!(
        "  floor ramp: {n} in {ramp_s:.1} s, {} µs per connect (the clients {} µs)",
        fmt_us(connect_us, 1),
        fmt_us(client_connect_us, 1)
    );
    if !sleep(args.settle).await {
        return Ok(None);
    }

    // The hold.
    let before = fleet.totals().await?;
    let cpu = ThreadsCpu::now(&pids);
    let started = Instant::now();
    if !sleep(args.floor_hold).await {
        return Ok(None);
    }
    let (hold_cpu_s, client_hold_cpu_s) = cpu_since(&cpu);
    let hold_s = started.elapsed().as_secs_f64();
    let after = fleet.totals().await?;
    let pongs = after.pongs - before.pongs;
    let ping_us = per_op_us(hold_cpu_s, pongs);
    let client_ping_us = per_op_us(client_hold_cpu_s, pongs);
    eprintln!(
        "  floor hold {hold_s:.1} s: {pongs} heartbeats, {hold_cpu_s:.2} s of CPU, {} µs each \
         (the clients {} µs)",
        fmt_us(ping_us, 1),
        fmt_us(client_ping_us, 1)
    );

    // The broadcasts, one at a time, each waited for.
    let rest = Rest::new(&format!("http://{http}/api/v1"), "floor")?;
    let cpu = ThreadsCpu::now(&pids);
    let mut deliveries = 0;
    for i in 1..=args.floor_broadcasts {
        rest.broadcast(i).await?;
        let key = format!("b{i}");
        let every = Duration::from_millis(50);
        let deadline = Instant::now() + BROADCAST_WAIT;
        let t = fleet
            .wait_for(|t| t.count(&key) >= authenticated, deadline, every, cancel)
            .await?;
        if cancel.is_cancelled() {
            return Ok(None);
        }
        deliveries += t.count(&key);
    }
    let (broadcast_cpu_s, client_broadcast_cpu_s) = cpu_since(&cpu);
    let end = fleet.totals().await?;
    let broadcast_pongs = end.pongs - after.pongs;
    let delivery_us = per_delivery_us(broadcast_cpu_s, broadcast_pongs, ping_us, deliveries);
    let client_delivery_us = per_delivery_us(
        client_broadcast_cpu_s,
        broadcast_pongs,
        client_ping_us,
        deliveries,
    );
    let expected = u64::from(args.floor_broadcasts) * authenticated;
    eprintln!(
        "  floor broadcasts: {deliveries} of {expected} delivered, {} µs each (the clients {} µs)",
        fmt_us(delivery_us, 2),
        fmt_us(client_delivery_us, 2)
    );
    Ok(Some(FloorRun {
        connections: n,
        authenticated,
        heartbeat_s: args.heartbeat,
        hold_s,
        pongs,
        hold_cpu_s,
        ping_us,
        broadcasts: args.floor_broadcasts,
        deliveries,
        expected,
        broadcast_pongs,
        broadcast_cpu_s,
        delivery_us,
        drops: end.dropped(),
        ramp_s,
        connect_us,
        client_connect_us,
        client_ping_us,
        client_delivery_us,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_add_up_where_both_were_measured() {
        let f = FloorRun {
            connect_us: Some(60.0),
            client_connect_us: Some(90.0),
            delivery_us: Some(10.0),
            client_delivery_us: None,
            ..FloorRun::default()
        };
        assert_eq!(f.both_ends_connect_us(), Some(150.0));
        assert_eq!(f.both_ends_delivery_us(), None);
    }
}
