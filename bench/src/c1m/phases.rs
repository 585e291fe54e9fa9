//! The phases of a c1m run, in order, each filling its part of the report;
//! the timeline sampler; and the verdict against the targets.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fleet::{delta, Totals};
use super::floor_run::FloorRun;
use super::report::{
    Broadcast, Broadcasts, Channels, Hold, Kill, Latency, Memory, Ramp, Report, RoomMemory, Sample,
    Target, Unicast,
};
use super::rest::{PushTally, TaskView};
use super::Ctx;
use crate::pace::Schedule;
use crate::stats::LatencyHist;
use crate::{proc, Outcome};

/// Unicast phase numbers (`u<N>` histogram keys).
const PHASE_FIXED: u32 = 1;
const PHASE_MAX: u32 = 2;
const PHASE_KILL: u32 = 3;
/// Longest wait for a broadcast or channel round to reach everyone.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for a broadcast's task to finish once its clients have it.
const TASK_WAIT: Duration = Duration::from_secs(30);
/// How often a broadcast task is polled.
const TASK_POLL: Duration = Duration::from_millis(100);
/// Longest wait for the clients of a killed room to come back.
const KILL_WAIT: Duration = Duration::from_secs(120);
/// Unicast rate while a room is killed, pushes per second.
const KILL_PUSH_RATE: u64 = 1000;
/// Most unicast requests in flight in the fixed-rate phase: with the REST
/// client's idle connections ([`super::rest::MAX_IDLE`]) and the bench's
/// other calls (task polls, scrapes), under the center's `--http-max-conns`
/// (1,024 by default; a connection over it is closed unanswered). The HTTP
/// client opens a new connection when none is idle even if one is about to
/// be, so connections can outnumber requests in flight: at 960 in flight,
/// runs at a million and at 20,000 connections saw the center refuse some
/// (its log: `http connection limit reached`) and the bench count calls
/// without an answer. A cluster slower than the rate asked for shows as a
/// lower achieved rate and a longer latency, not as refused connections.
const FIXED_MAX_IN_FLIGHT: usize = 600;

/// Spawns `push(i)` for i = 0, 1, ... at `rate` per second, at most
/// [`FIXED_MAX_IN_FLIGHT`] at once (a push waits for a slot, so a slow
/// cluster slows the pace instead of piling requests up), until `stop` is
/// cancelled or `end` passes; then waits for those in flight.
async fn paced<F>(
    rate: u64,
    stop: &CancellationToken,
    end: Option<Instant>,
    mut push: impl FnMut(u64) -> F,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let schedule = Schedule::new(rate);
    let slots = Arc::new(tokio::sync::Semaphore::new(FIXED_MAX_IN_FLIGHT));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(start + schedule.offset(i)) => {}
        }
        if end.is_some_and(|end| Instant::now() >= end) {
            break;
        }
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let pushed = push(i);
        tasks.spawn(async move {
            pushed.await;
            drop(slot);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Samples the timeline about once a second until aborted.
pub(crate) async fn sample_timeline(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(t) = ctx.fleet.totals().await else {
            continue;
        };
        let avail = proc::mem_available().unwrap_or(0);
        {
            let mut min = ctx.mem_available_min.lock();
            *min = (*min).min(avail);
        }
        let sample = Sample {
            t_s: ctx.run_start.elapsed().as_secs_f64(),
            phase: ctx.phase.lock().clone(),
            live: t.live,
            rooms_rss: ctx.servers.room_rss().iter().sum(),
            workers_rss: t.rss,
            slab: proc::slab().unwrap_or(0),
            mem_available: avail,
            rooms_cpu_s: ctx.servers.rooms_cpu_s() - *ctx.cpu_start.lock(),
        };
        ctx.timeline.lock().push(sample);
    }
}

/// Runs every phase in order; stops early when cancelled.
pub(crate) async fn run_all(ctx: &Ctx, report: &mut Report) -> anyhow::Result<Outcome> {
    let rss_before = ctx.servers.room_rss();
    let slab_before = proc::slab().unwrap_or(0);
    let http = reqwest::Client::new();
    let internal_before = super::scrape::snapshot(&http, &ctx.metrics_bases).await;
    // The snapshot at the end of each phase, for the calls phase by phase.
    let mut marks = Vec::new();
    let mark = |phase: &str| {
        let http = &http;
        let phase = phase.to_owned();
        async move {
            (
                phase,
                super::scrape::snapshot(http, &ctx.metrics_bases).await,
            )
        }
    };
    report.ramp = Some(ramp(ctx).await?);
    marks.push(mark("ramp").await);
    if ctx.cancel.is_cancelled() {
        return Ok(Outcome::Interrupted);
    }
    ctx.set_phase("settle");
    if !ctx.sleep(ctx.args.settle).await {
        return Ok(Outcome::Interrupted);
    }
    report.memory = Some(memory(ctx, &rss_before, slab_before).await?);
    if let Some(ramp) = report.ramp.as_mut() {
        ramp.drops = ctx.fleet.totals().await?.drops;
    }
    report.hold = Some(hold(ctx).await?);
    marks.push(mark("settle and hold").await);
    if ctx.cancel.is_cancelled() {
        return Ok(Outcome::Interrupted);
    }
    if ctx.args.broadcasts > 0 {
        // The rooms' CPU per heartbeat while idle, to take the heartbeats
        // out of the broadcast windows.
        let per_pong = report
            .hold
            .as_ref()
            .filter(|h| h.pongs > 0)
            .map(|h| h.rooms_cpu_s / h.pongs as f64);
        report.broadcasts = Some(broadcasts(ctx, per_pong).await?);
        marks.push(mark("broadcasts").await);
    }
    if ctx.args.channels > 0 && ctx.args.channel_rounds > 0 && !ctx.cancel.is_cancelled() {
        report.channels = Some(channels(ctx).await?);
        marks.push(mark("channels").await);
    }
    if !ctx.cancel.is_cancelled() {
        report.unicast_fixed = Some(unicast(ctx, PHASE_FIXED, Some(ctx.args.unicast_rate)).await?);
    }
    if !ctx.cancel.is_cancelled() {
        report.unicast_max = Some(unicast(ctx, PHASE_MAX, None).await?);
    }
    if !ctx.cancel.is_cancelled() {
        count_again(ctx, report).await?;
    }
    // Before the killed room, which fails leases and refills on purpose.
    marks.push(mark("unicast").await);
    if let Some((_, internal_after)) = marks.last() {
        let mut internal = internal_after.since(&internal_before);
        internal.phases = super::scrape::by_phase(&internal_before, &marks);
        report.internal = Some(internal);
    }
    if !ctx.args.no_kill && !ctx.cancel.is_cancelled() {
        report.kill = Some(kill(ctx).await?);
    }
    ctx.set_phase("end");
    Ok(if ctx.cancel.is_cancelled() {
        Outcome::Interrupted
    } else if lost_anything(report) {
        Outcome::Failed
    } else {
        Outcome::Ok
    })
}

/// Whether the run lost a connection or an acknowledged message.
fn lost_anything(r: &Report) -> bool {
    r.hold.as_ref().is_some_and(|h| h.drops > 0)
        || r.ramp.as_ref().is_some_and(|x| !x.drops.is_empty())
        || r.ramp.as_ref().is_some_and(|x| x.authenticated < x.target)
        || r.broadcasts.as_ref().is_some_and(|b| b.lost() > 0)
        || r.channels.as_ref().is_some_and(|c| c.lost() > 0)
        || r.unicast_fixed.as_ref().is_some_and(|u| u.lost > 0)
        || r.unicast_max.as_ref().is_some_and(|u| u.lost > 0)
        || r.kill
            .as_ref()
            .is_some_and(|k| k.lost > 0 || k.all_back_ms.is_none())
}

async fn ramp(ctx: &Ctx) -> anyhow::Result<Ramp> {
    ctx.set_phase("ramp");
    let n = ctx.args.connections;
    let start_ns = crate::now_unix_ns();
    let started = Instant::now();
    for w in &ctx.fleet.workers {
        w.start().await?;
    }
    // Generous: four times the planned ramp or 1,000 per second, whichever
    // is longer, plus two minutes.
    let planned = n as f64 / ctx.args.ramp_rate.max(1) as f64;
    let slow = n as f64 / 1000.0;
    let deadline = started + Duration::from_secs_f64((planned * 4.0).max(slow) + 120.0);
    let mut last = (Instant::now(), 0u64);
    let mut peak = 0.0f64;
    let mut t;
    loop {
        t = ctx.fleet.totals().await?;
        let now = Instant::now();
        let dt = now.duration_since(last.0).as_secs_f64();
        if dt >= 0.5 {
            let rate = (t.authenticated - last.1.min(t.authenticated)) as f64 / dt;
            peak = peak.max(rate);
            last = (now, t.authenticated);
            progress_bar(&t, n, started.elapsed(), rate);
        }
        if t.authenticated >= n || now >= deadline || ctx.cancel.is_cancelled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!();
    let seconds = t.last_auth_ns.saturating_sub(start_ns) as f64 / 1e9;
    Ok(Ramp {
        target: n,
        authenticated: t.authenticated,
        failures: t.failures.clone(),
        drops: t.drops.clone(),
        seconds,
        rate_per_s: crate::stats::per(t.authenticated as f64, seconds),
        peak_rate_per_s: peak,
    })
}

fn progress_bar(t: &Totals, n: u64, elapsed: Duration, rate: f64) {
    const WIDTH: u64 = 30;
    let done = (t.authenticated * WIDTH / n.max(1)).min(WIDTH);
    let bar: String = (0..WIDTH)
        .map(|i| if i < done { '#' } else { '.' })
        .collect();
    eprint!(
        "\r[{bar}] {:>9}/{n} authenticated  {:>7.0}/s  {:>4}s  failed attempts {}   ",
        t.authenticated,
        rate,
        elapsed.as_secs(),
        t.failed()
    );
}

async fn memory(ctx: &Ctx, rss_before: &[u64], slab_before: u64) -> anyhow::Result<Memory> {
    let t = ctx.fleet.totals().await?;
    let rss_after = ctx.servers.room_rss();
    let slab_after = proc::slab().unwrap_or(0);
    let per_room: Vec<RoomMemory> = ctx
        .servers
        .rooms
        .iter()
        .enumerate()
        .map(|(i, (id, _))| {
            let conns = t.live_per_room.get(i).copied().unwrap_or(0);
            let (b, a) = (rss_before[i], rss_after[i]);
            RoomMemory {
                room: *id,
                connections: conns,
                rss_before: b,
                rss_after: a,
                bytes_per_conn: crate::stats::per(a.saturating_sub(b) as f64, conns as f64),
            }
        })
        .collect();
    let before: u64 = rss_before.iter().sum();
    let after: u64 = rss_after.iter().sum();
    let m = Memory {
        connections: t.live,
        rooms_rss_before: before,
        rooms_rss_after: after,
        bytes_per_conn: crate::stats::per(after.saturating_sub(before) as f64, t.live as f64),
        per_room,
        slab_before,
        slab_after,
        slab_per_conn: crate::stats::per(
            slab_after.saturating_sub(slab_before) as f64,
            t.live as f64,
        ),
        workers_rss: t.rss,
        mem_available_min: 0,
    };
    eprintln!(
        "rooms: {:.0} B per connection ({} connections, RSS {} MiB → {} MiB); kernel slab {:.0} B per connection",
        m.bytes_per_conn,
        t.live,
        before >> 20,
        after >> 20,
        m.slab_per_conn
    );
    Ok(m)
}

async fn hold(ctx: &Ctx) -> anyhow::Result<Hold> {
    ctx.set_phase("hold");
    let before = ctx.fleet.totals().await?;
    let cpu0 = ctx.servers.rooms_cpu_s();
    let started = Instant::now();
    let end = started + ctx.args.hold;
    while Instant::now() < end {
        let step = end
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(30));
        if !ctx.sleep(step).await {
            break;
        }
        let t = ctx.fleet.totals().await?;
        eprintln!(
            "  hold {:>4}s/{}s: live {}, drops {}",
            started.elapsed().as_secs(),
            ctx.args.hold.as_secs(),
            t.live,
            t.dropped() - before.dropped()
        );
    }
    let after = ctx.fleet.totals().await?;
    let drops = delta(&after.drops, &before.drops);
    let seconds = started.elapsed().as_secs_f64();
    let pongs = after.pongs - before.pongs;
    let rooms_cpu_s = ctx.servers.rooms_cpu_s() - cpu0;
    Ok(Hold {
        seconds,
        live_start: before.live,
        live_end: after.live,
        drops: drops.values().sum(),
        unexpected_drops: drops,
        pings: after.pings - before.pings,
        pongs,
        rooms_cpu_s,
        pings_per_s: crate::stats::per(pongs as f64, seconds),
        cpu_to_floor: ctx
            .args
            .floor_ping_us
            .filter(|f| *f > 0.0 && pongs > 0)
            .map(|f| rooms_cpu_s / (pongs as f64 * f / 1e6)),
    })
}

/// Waits until `key` has `expected` messages (or the wait runs out); returns
/// how many arrived.
async fn wait_count(ctx: &Ctx, key: &str, expected: u64, within: Duration) -> anyhow::Result<u64> {
    wait_count_until(ctx, key, expected, Instant::now() + within).await
}

/// [`wait_count`] until `deadline`.
async fn wait_count_until(
    ctx: &Ctx,
    key: &str,
    expected: u64,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let every = Duration::from_millis(100);
    let done = |t: &super::fleet::Totals| t.count(key) >= expected;
    let t = ctx
        .fleet
        .wait_for(done, deadline, every, &ctx.cancel)
        .await?;
    Ok(t.count(key))
}

fn latency(h: Option<&LatencyHist>) -> Latency {
    let Some(h) = h else {
        return Latency::default();
    };
    Latency {
        count: h.len(),
        p50: h.quantile_ms(0.5),
        p90: h.quantile_ms(0.9),
        p99: h.quantile_ms(0.99),
        p999: h.quantile_ms(0.999),
        max: h.max_ms(),
        curve: h.curve(),
    }
}

/// A broadcast sent, waiting to be measured.
struct Sent {
    index: u32,
    expected: u64,
    http_ms: f64,
    task: Option<String>,
}

/// The broadcasts: one at a time, each sent once the previous one's clients
/// all have it and its task is done (each wait bounded), or with
/// `--broadcast-gap` on a fixed schedule regardless. `per_pong_s`: the
/// rooms' CPU per heartbeat in the hold.
async fn broadcasts(ctx: &Ctx, per_pong_s: Option<f64>) -> anyhow::Result<Broadcasts> {
    ctx.set_phase("broadcast");
    let mut each = Vec::new();
    // CPU and heartbeats in the measured windows: per broadcast from its
    // send until it is complete, or with a gap the whole phase.
    let mut cpu = 0.0;
    let mut pongs = 0;
    match ctx.args.broadcast_gap {
        None => {
            for k in 1..=ctx.args.broadcasts {
                if ctx.cancel.is_cancelled() {
                    break;
                }
                let before = ctx.fleet.totals().await?;
                let cpu0 = ctx.servers.servers_cpu_s();
                let sent = send_broadcast(ctx, k, before.live).await?;
                let deadline = Instant::now() + DELIVERY_WAIT;
                each.push(complete(ctx, sent, deadline).await?);
                cpu += ctx.servers.servers_cpu_s() - cpu0;
                pongs += ctx.fleet.totals().await?.pongs - before.pongs;
                // Let the tail settle before the next one.
                ctx.sleep(Duration::from_secs(1)).await;
            }
        }
        Some(gap) => {
            let before = ctx.fleet.totals().await?;
            let cpu0 = ctx.servers.servers_cpu_s();
            let start = Instant::now();
            let mut sent = Vec::new();
            for k in 1..=ctx.args.broadcasts {
                let at = start + gap * (k - 1);
                tokio::select! {
                    _ = ctx.cancel.cancelled() => break,
                    _ = tokio::time::sleep_until(at) => {}
                }
                let live = ctx.fleet.totals().await?.live;
                sent.push(send_broadcast(ctx, k, live).await?);
            }
            let deadline = Instant::now() + DELIVERY_WAIT;
            for b in sent {
                each.push(complete(ctx, b, deadline).await?);
            }
            cpu = ctx.servers.servers_cpu_s() - cpu0;
            pongs = ctx.fleet.totals().await?.pongs - before.pongs;
        }
    }
    let hists = ctx.fleet.hists().await?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let floor_us = ctx.args.floor_delivery_us.filter(|f| *f > 0.0);
    let mut all = LatencyHist::new()?;
    for b in &mut each {
        if let Some(h) = hists.get(&format!("b{}", b.index)) {
            b.last_ms = h.max_ms();
            b.p50_ms = h.quantile_ms(0.5);
            b.p99_ms = h.quantile_ms(0.99);
            all.add_buckets(&h.buckets());
        }
        b.floor_bound_ms = floor_us.map(|f| b.expected as f64 * f / cores as f64 / 1000.0);
        b.last_to_floor = b
            .floor_bound_ms
            .filter(|bound| *bound > 0.0)
            .map(|bound| b.last_ms / bound);
        let task = b.task_view.as_ref().map_or(String::new(), |v| {
            format!(
                "; task {} {}: {} delivered, {} skipped, {} pending",
                v.task,
                v.state,
                v.delivered,
                v.skipped.map_or("?".to_string(), |n| n.to_string()),
                v.pending.map_or("?".to_string(), |n| n.to_string())
            )
        });
        eprintln!(
            "  broadcast {:>2}: {}/{} received, last after {:.0} ms (p50 {:.0} ms, p99 {:.0} ms){task}",
            b.index, b.received, b.expected, b.last_ms, b.p50_ms, b.p99_ms
        );
    }
    let mut lasts: Vec<f64> = each.iter().map(|b| b.last_ms).collect();
    lasts.sort_by(f64::total_cmp);
    let deliveries: u64 = each.iter().map(|b| b.received).sum();
    let expected_total: u64 = each.iter().map(|b| b.expected).sum();
    let per_pong_us = per_pong_s.map(|p| p * 1e6);
    let cpu_us_per_delivery =
        super::fleet::per_delivery_us(cpu, pongs, per_pong_us, deliveries).unwrap_or(0.0);
    Ok(Broadcasts {
        last_p50_ms: pick(&lasts, 0.5),
        last_p99_ms: pick(&lasts, 0.99),
        deliveries,
        missed: expected_total - deliveries.min(expected_total),
        server_cpu_s: cpu,
        cpu_s_per_million: crate::stats::per(cpu, deliveries as f64 / 1e6),
        latency: latency(Some(&all)),
        gap_ms: ctx.args.broadcast_gap.map(|g| g.as_secs_f64() * 1000.0),
        cores,
        pongs,
        cpu_us_per_delivery,
        cpu_per_delivery_to_floor: floor_us
            .filter(|_| deliveries > 0)
            .map(|f| cpu_us_per_delivery / f),
        worst_last_to_floor: each
            .iter()
            .filter_map(|b| b.last_to_floor)
            .max_by(f64::total_cmp),
        min_share_pct: each
            .iter()
            .map(|b| b.share_pct)
            .min_by(f64::total_cmp)
            .unwrap_or(0.0),
        each,
    })
}

/// Sends broadcast `k` with `live` connections to reach.
async fn send_broadcast(ctx: &Ctx, k: u32, live: u64) -> anyhow::Result<Sent> {
    let sent = ctx.rest.broadcast(k).await?;
    Ok(Sent {
        index: k,
        expected: live,
        http_ms: sent.http.as_secs_f64() * 1000.0,
        task: sent.task,
    })
}

/// Waits (until `deadline`) for every live connection to have broadcast `b`,
/// then (up to [`TASK_WAIT`] more) for its task to finish.
async fn complete(ctx: &Ctx, b: Sent, deadline: Instant) -> anyhow::Result<Broadcast> {
    let key = format!("b{}", b.index);
    let received = wait_count_until(ctx, &key, b.expected, deadline).await?;
    let task_view = match &b.task {
        Some(task) => wait_task(ctx, task, Instant::now() + TASK_WAIT).await,
        None => None,
    };
    Ok(Broadcast {
        index: b.index,
        expected: b.expected,
        received,
        http_ms: b.http_ms,
        share_pct: if b.expected == 0 {
            100.0
        } else {
            received as f64 * 100.0 / b.expected as f64
        },
        task: b.task,
        task_view,
        ..Broadcast::default()
    })
}

/// Polls a broadcast task until it is done or failed, `deadline` passes or
/// the server stops answering (three errors in a row); the last view seen.
async fn wait_task(ctx: &Ctx, task: &str, deadline: Instant) -> Option<TaskView> {
    let mut last = None;
    let mut errors = 0;
    loop {
        match ctx.rest.task(task).await {
            Ok(v) => {
                errors = 0;
                let finished = v.finished();
                last = Some(v);
                if finished {
                    return last;
                }
            }
            Err(_) => {
                errors += 1;
                if errors >= 3 {
                    return last;
                }
            }
        }
        if Instant::now() >= deadline || ctx.cancel.is_cancelled() {
            return last;
        }
        tokio::time::sleep(TASK_POLL).await;
    }
}

/// The `q` quantile of sorted values (nearest rank).
fn pick(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The time-to-last bound of broadcast `w` with both ends of each delivery
/// (the floor run's server and clients: on one machine the clients' half
/// shares the cores), and `w`'s time against it.
fn both_ends_bound(w: &Broadcast, floor: Option<&FloorRun>, cores: usize) -> Option<String> {
    let us = floor?.both_ends_delivery_us()?;
    let bound = w.expected as f64 * us / 1000.0 / cores.max(1) as f64;
    (bound > 0.0).then(|| {
        format!(
            "with the clients' side too (the floor run: {us:.1} µs per delivery both ends), \
             bound {} ms: {}",
            thousands(bound.round() as u64),
            times(w.last_ms / bound)
        )
    })
}

/// Counts each broadcast and channel round again once the unicast phases
/// are over (minutes later at a million): what arrived after the bench
/// stopped waiting was late, what is still missing was lost.
async fn count_again(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let t = ctx.fleet.totals().await?;
    if let Some(b) = report.broadcasts.as_mut() {
        for x in &mut b.each {
            x.received_by_end = Some(t.count(&format!("b{}", x.index)));
        }
    }
    if let Some(c) = report.channels.as_mut() {
        let rounds = ctx.args.channel_rounds;
        c.received_by_end = Some((1..=rounds).map(|r| t.count(&format!("c{r}"))).sum());
    }
    Ok(())
}

async fn channels(ctx: &Ctx) -> anyhow::Result<Channels> {
    ctx.set_phase("channels");
    let g = ctx.args.channels;
    let mut expected = 0;
    let mut received = 0;
    let mut pushes = 0;
    for round in 1..=ctx.args.channel_rounds {
        if ctx.cancel.is_cancelled() {
            break;
        }
        let live = ctx.fleet.totals().await?.live;
        let calls = (0..g).map(|c| {
            let rest = ctx.rest.clone();
            async move { rest.channel(&format!("c1m:{c}"), round).await }
        });
        for r in futures_util::future::join_all(calls).await {
            r?;
            pushes += 1;
        }
        let got = wait_count(ctx, &format!("c{round}"), live, DELIVERY_WAIT).await?;
        eprintln!("  channel round {round}: {got}/{live} received");
        expected += live;
        received += got;
        ctx.sleep(Duration::from_secs(1)).await;
    }
    let hists = ctx.fleet.hists().await?;
    let mut all = LatencyHist::new()?;
    for round in 1..=ctx.args.channel_rounds {
        if let Some(h) = hists.get(&format!("c{round}")) {
            all.add_buckets(&h.buckets());
        }
    }
    Ok(Channels {
        channels: g,
        pushes,
        expected,
        received,
        latency: latency(Some(&all)),
        received_by_end: None,
    })
}

/// A unicast phase: at `rate` per second (open loop), or as fast as
/// `--unicast-concurrency` requests in flight go (closed loop).
async fn unicast(ctx: &Ctx, phase: u32, rate: Option<u64>) -> anyhow::Result<Unicast> {
    ctx.set_phase(if rate.is_some() {
        "unicast-fixed"
    } else {
        "unicast-max"
    });
    let tally = Arc::new(PushTally::default());
    let n = ctx.args.connections;
    let started = Instant::now();
    let dur = ctx.args.unicast_for;
    let concurrency;
    match rate {
        Some(rate) => {
            concurrency = FIXED_MAX_IN_FLIGHT as u64;
            let (rest, store) = (ctx.rest.clone(), ctx.args.store);
            let pushes = tally.clone();
            // A cluster slower than the rate asked for leaves pushes unsent
            // at the end: the phase lasts its length, not its count.
            paced(rate, &ctx.cancel, Some(started + dur), move |_| {
                let (rest, tally) = (rest.clone(), pushes.clone());
                let user = rand::random::<u64>() % n;
                async move { rest.unicast(user, phase, store, &tally).await }
            })
            .await;
        }
        None => {
            concurrency = ctx.args.unicast_concurrency;
            let end = started + dur;
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..concurrency {
                let (rest, tally, cancel) = (ctx.rest.clone(), tally.clone(), ctx.cancel.clone());
                let store = ctx.args.store;
                tasks.spawn(async move {
                    while Instant::now() < end && !cancel.is_cancelled() {
                        let user = rand::random::<u64>() % n;
                        rest.unicast(user, phase, store, &tally).await;
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let acked = tally.acked.load(Relaxed);
    let key = format!("u{phase}");
    let received = wait_count(ctx, &key, acked, Duration::from_secs(15)).await?;
    let hists = ctx.fleet.hists().await?;
    let u = Unicast {
        asked_rate: rate,
        concurrency,
        seconds,
        sent: tally.sent.load(Relaxed),
        acked,
        errors: tally.errors.lock().clone(),
        achieved_rate: crate::stats::per(acked as f64, seconds),
        received,
        lost: acked.saturating_sub(received),
        latency: latency(hists.get(&key)),
        http: latency(tally.http.lock().as_ref()),
    };
    eprintln!(
        "  unicast {}: {:.0}/s acked for {:.0}s, received {}/{}, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        rate.map_or("max".to_string(), |r| format!("{r}/s")),
        u.achieved_rate,
        seconds,
        received,
        acked,
        u.latency.p50,
        u.latency.p99,
        u.latency.p999
    );
    ctx.sleep(Duration::from_secs(2)).await;
    Ok(u)
}

/// Kills room 1 with SIGKILL while stored pushes go on (half of them to its
/// users), and measures how long its clients take to be back elsewhere and
/// whether any acknowledged push is missing.
async fn kill(ctx: &Ctx) -> anyhow::Result<Kill> {
    ctx.set_phase("kill");
    let (room_id, pid) = ctx.servers.rooms[0];
    let pid = pid.ok_or_else(|| anyhow::anyhow!("room {room_id} has no known pid"))?;
    let rooms = ctx.servers.rooms.len() as u64;
    let n = ctx.args.connections;
    let tally = Arc::new(PushTally::default());
    let stop_push = CancellationToken::new();
    let pusher = {
        let (rest, tally, stop) = (ctx.rest.clone(), tally.clone(), stop_push.clone());
        tokio::spawn(async move {
            // Every other push goes to a user of the killed room (user
            // numbers ≡ 0 mod rooms). Bounded in flight like the fixed-rate
            // phase: while the killed room's clients reconnect the pushes
            // slow down, and unbounded they would pile up past the center's
            // connection cap and be closed unanswered (7,198 in run i at a
            // million).
            paced(KILL_PUSH_RATE, &stop, None, move |i| {
                let r = rand::random::<u64>() % n;
                let user = if i % 2 == 0 { r - r % rooms } else { r };
                let (rest, tally) = (rest.clone(), tally.clone());
                async move { rest.unicast(user, PHASE_KILL, true, &tally).await }
            })
            .await;
        })
    };
    ctx.sleep(Duration::from_secs(2)).await;
    let before = ctx.fleet.totals().await?;
    let clients = before.live_per_room.first().copied().unwrap_or(0);
    let kill_ns = crate::now_unix_ns();
    eprintln!("  killing room {room_id} (pid {pid}, {clients} clients) with SIGKILL");
    anyhow::ensure!(
        super::cluster::signal(pid, rustix::process::Signal::KILL),
        "could not kill room {room_id} (pid {pid})"
    );
    let deadline = Instant::now() + KILL_WAIT;
    let mut t;
    let mut half_back_ms = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        t = ctx.fleet.totals().await?;
        let dropped = t.dropped() - before.dropped();
        let back = t.reconnects - before.reconnects;
        if half_back_ms.is_none() && back * 2 >= clients {
            half_back_ms = Some((crate::now_unix_ns() - kill_ns) as f64 / 1e6);
        }
        if (dropped >= clients && back >= dropped)
            || Instant::now() >= deadline
            || ctx.cancel.is_cancelled()
        {
            break;
        }
    }
    let dropped = t.dropped() - before.dropped();
    let back = t.reconnects - before.reconnects;
    let all_back = dropped >= clients && back >= dropped;
    let all_back_ms = all_back.then(|| t.last_back_ns.saturating_sub(kill_ns) as f64 / 1e6);
    eprintln!(
        "  {back}/{clients} back, all after {}",
        all_back_ms.map_or("(not all back)".to_string(), |ms| format!("{ms:.0} ms"))
    );
    // Pushes go on a little after everyone is back, then drain.
    ctx.sleep(Duration::from_secs(3)).await;
    stop_push.cancel();
    let _ = pusher.await;
    let acked = tally.acked.load(Relaxed);
    let sent = tally.sent.load(Relaxed);
    let errors = tally.errors.lock().clone();
    let received = wait_count(ctx, "u3", acked, Duration::from_secs(30)).await?;
    let after = ctx.fleet.totals().await?;
    let k = Kill {
        room: room_id,
        clients,
        reconnected: back,
        all_back_ms,
        half_back_ms,
        pushes_acked: acked,
        pushes_sent: sent,
        push_errors: errors,
        received,
        lost: acked.saturating_sub(received),
        duplicates: after.duplicates - before.duplicates,
        other_drops: dropped.saturating_sub(clients),
    };
    eprintln!(
        "  stored pushes around the kill: {acked} acknowledged, {received} received, {} lost, {} duplicates dropped",
        k.lost, k.duplicates
    );
    Ok(k)
}

/// How to get the floor figures, for rows that need them.
const FLOOR_HOWTO: &str = "not measured: pass the floor's figures (bench compare --floor-only, \
     see bench/README.md, \"bench c1m\")";

/// A ratio as `1.23×`.
fn times(x: f64) -> String {
    format!("{x:.2}×")
}

/// Fills `report.targets` (one row per target of issue 12, and the killed
/// room and memory rows) and the notes on what limited a figure.
pub(crate) fn judge(r: &mut Report) {
    let mut targets = Vec::new();
    let n = r.config.connections;
    let hb = r.config.heartbeat_s;
    if let (Some(ramp), Some(hold)) = (&r.ramp, &r.hold) {
        let mut why = Vec::new();
        if n < 1_000_000 || hold.seconds < 600.0 {
            why.push("a smaller or shorter run than the target".to_string());
        }
        if hb > 30 {
            why.push(format!("heartbeat {hb} s, longer than the clients' 30 s"));
        }
        targets.push(Target {
            name: "connections held, 0 unexpected drops".into(),
            target: "1,000,000 for 10 min at 30 s heartbeats, 0 drops".into(),
            measured: format!(
                "{} of {} for {:.0} s at {hb} s heartbeats, {} drops",
                thousands(hold.live_end),
                thousands(n),
                hold.seconds,
                thousands(hold.drops)
            ),
            met: Some(
                n >= 1_000_000
                    && ramp.authenticated >= n
                    && hold.seconds >= 600.0
                    && hold.drops == 0
                    && hb <= 30,
            ),
            note: why.join("; "),
        });
        let cores = if hold.seconds > 0.0 {
            hold.rooms_cpu_s / hold.seconds
        } else {
            0.0
        };
        let floor = r.config.floor_ping_us;
        targets.push(Target {
            name: "rooms' CPU to hold ÷ floor (heartbeats/s × floor CPU per heartbeat)".into(),
            target: "≤ 1.5×".into(),
            measured: match (hold.cpu_to_floor, floor) {
                (Some(x), Some(f)) => format!(
                    "{} ({cores:.2} cores at {}/s; floor {f:.1} µs per heartbeat)",
                    times(x),
                    thousands(hold.pings_per_s.round() as u64)
                ),
                _ => format!(
                    "n/a ({cores:.2} cores at {}/s)",
                    thousands(hold.pings_per_s.round() as u64)
                ),
            },
            met: hold.cpu_to_floor.map(|x| x <= 1.5),
            note: match hold.cpu_to_floor {
                None => format!("{FLOOR_HOWTO}: --floor-ping-us"),
                Some(x) if x > 1.5 => format!("missed by {:.2}×", x - 1.5),
                Some(_) => String::new(),
            },
        });
    }
    if let Some(m) = &r.memory {
        targets.push(Target {
            name: "room memory per idle connection".into(),
            target: "≤ 2,048 B".into(),
            measured: format!("{} B", thousands(m.bytes_per_conn.round() as u64)),
            met: Some(m.bytes_per_conn <= 2048.0),
            note: if m.bytes_per_conn > 2048.0 {
                format!("missed by {:.0} B", m.bytes_per_conn - 2048.0)
            } else {
                String::new()
            },
        });
    }
    if let Some(ramp) = &r.ramp {
        let failed: u64 = ramp.failures.values().sum();
        let mut why = Vec::new();
        if r.config.ramp_rate < 20_000 {
            why.push(format!(
                "ramp rate asked: {}/s",
                thousands(r.config.ramp_rate)
            ));
        }
        if failed > 0 {
            why.push(format!("{} failed attempts (retried)", thousands(failed)));
        }
        if let Some(us) = r.floor.as_ref().and_then(|f| f.both_ends_connect_us()) {
            // What the floor and its clients need per connect, with both
            // on this machine: the fastest ramp its cores allow.
            let cores = r.machine.cpus.max(1) as f64;
            why.push(format!(
                "the floor and its clients take {us:.0} µs of CPU per connect here: at most \
                 {}/s on {cores} cores",
                thousands((cores * 1e6 / us).round() as u64)
            ));
        }
        targets.push(Target {
            name: "connect rate (authenticated), averaged over the ramp".into(),
            target: "≥ 20,000/s, 0 failures".into(),
            measured: format!(
                "{}/s (peak {}/s), {} failures",
                thousands(ramp.rate_per_s.round() as u64),
                thousands(ramp.peak_rate_per_s.round() as u64),
                thousands(failed)
            ),
            met: Some(ramp.rate_per_s >= 20_000.0 && failed == 0),
            note: why.join("; "),
        });
    }
    if let Some(b) = &r.broadcasts {
        let full = b.each.iter().filter(|x| x.received >= x.expected).count();
        let asked = r.config.broadcasts as usize;
        targets.push(Target {
            name: "broadcasts reaching every live connection".into(),
            target: "each of 20 reaches 100 %".into(),
            measured: format!(
                "{full} of {} at 100 % (lowest {:.2} %)",
                b.each.len(),
                // Rounded down: short of 100 % never reads as 100.00 %.
                (b.min_share_pct * 100.0).floor() / 100.0
            ),
            met: Some(full == b.each.len() && b.each.len() >= asked.max(20)),
            note: if b.missed > 0 {
                format!(
                    "{} deliveries missing when the next was sent, {} at the end of the run",
                    thousands(b.missed),
                    thousands(b.lost())
                )
            } else if b.each.len() < 20 {
                format!(
                    "{} broadcasts made, fewer than the target's 20",
                    b.each.len()
                )
            } else {
                String::new()
            },
        });
        let worst = b
            .each
            .iter()
            .filter(|x| x.last_to_floor.is_some())
            .max_by(|x, y| {
                x.last_to_floor
                    .unwrap_or(0.0)
                    .total_cmp(&y.last_to_floor.unwrap_or(0.0))
            });
        targets.push(Target {
            name: "broadcast time-to-last ÷ floor bound (live × floor CPU per delivery ÷ cores)"
                .into(),
            target: "≤ 1.3× (worst broadcast)".into(),
            measured: match worst {
                Some(w) => format!(
                    "{} (broadcast {}: {} ms, bound {} ms on {} cores)",
                    times(w.last_to_floor.unwrap_or(0.0)),
                    w.index,
                    thousands(w.last_ms.round() as u64),
                    thousands(w.floor_bound_ms.unwrap_or(0.0).round() as u64),
                    b.cores
                ),
                None => format!(
                    "n/a (worst {} ms)",
                    thousands(b.each.iter().map(|x| x.last_ms).fold(0.0, f64::max).round() as u64)
                ),
            },
            met: b.worst_last_to_floor.map(|x| x <= 1.3),
            note: {
                let missed = match b.worst_last_to_floor {
                    None => Some(format!("{FLOOR_HOWTO}: --floor-delivery-us")),
                    Some(x) if x > 1.3 => Some(format!("missed by {:.2}×", x - 1.3)),
                    Some(_) => None,
                };
                let both = worst.and_then(|w| both_ends_bound(w, r.floor.as_ref(), b.cores));
                missed
                    .into_iter()
                    .chain(both)
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        });
        targets.push(Target {
            name: "server CPU per broadcast delivery ÷ floor".into(),
            target: "≤ 1.2×".into(),
            measured: match (b.cpu_per_delivery_to_floor, r.config.floor_delivery_us) {
                (Some(x), Some(f)) => format!(
                    "{} ({:.2} µs; floor {f:.2} µs)",
                    times(x),
                    b.cpu_us_per_delivery
                ),
                _ => format!("n/a ({:.2} µs per delivery)", b.cpu_us_per_delivery),
            },
            met: b.cpu_per_delivery_to_floor.map(|x| x <= 1.2),
            note: match b.cpu_per_delivery_to_floor {
                None => format!("{FLOOR_HOWTO}: --floor-delivery-us"),
                Some(x) if x > 1.2 => format!("missed by {:.2}×", x - 1.2),
                Some(_) => String::new(),
            },
        });
        targets.push(Target {
            name: format!("broadcast to all, last client (p99 over {})", b.each.len()),
            target: "≤ 2,000 ms".into(),
            measured: format!(
                "{} ms (median {} ms)",
                thousands(b.last_p99_ms.round() as u64),
                thousands(b.last_p50_ms.round() as u64)
            ),
            met: Some(b.last_p99_ms <= 2000.0 && b.missed == 0),
            note: if b.missed > 0 {
                format!("{} deliveries missing", b.missed)
            } else if b.last_p99_ms > 2000.0 {
                format!("missed by {:.0} ms", b.last_p99_ms - 2000.0)
            } else {
                String::new()
            },
        });
    }
    if let Some(u) = &r.unicast_fixed {
        let asked = u.asked_rate.unwrap_or(0) as f64;
        let kept_up = u.achieved_rate >= asked * 0.98;
        let errors: u64 = u.errors.values().sum();
        targets.push(Target {
            name: format!("unicast p99 at {} pushes/s", thousands(asked as u64)),
            target: "≤ 20 ms at 20,000/s, 0 lost, 0 errors".into(),
            measured: format!(
                "p99 {:.2} ms at {}/s ({} lost, {} errors)",
                u.latency.p99,
                thousands(u.achieved_rate.round() as u64),
                u.lost,
                thousands(errors)
            ),
            met: Some(
                kept_up && u.latency.p99 <= 20.0 && u.lost == 0 && errors == 0 && asked >= 20_000.0,
            ),
            note: if !kept_up {
                format!(
                    "the cluster sustained {}/s of the {}/s asked",
                    thousands(u.achieved_rate.round() as u64),
                    thousands(asked as u64)
                )
            } else if asked < 20_000.0 {
                format!("rate asked: {}/s", thousands(asked as u64))
            } else {
                String::new()
            },
        });
    }
    if r.rest.calls > 0 {
        let unavailable = r.rest.status(503);
        let shed = r.rest.status(429);
        let others: Vec<String> = r
            .rest
            .non_2xx
            .iter()
            .filter(|(code, _)| !matches!(code.as_str(), "503" | "429"))
            .chain(r.rest.no_answer.iter())
            .map(|(why, n)| format!("{why}: {}", thousands(*n)))
            .collect();
        targets.push(Target {
            name: "REST answers 503 during the run".into(),
            target: "0".into(),
            measured: format!(
                "{} of {} calls; 429 (shed load): {}",
                thousands(unavailable),
                thousands(r.rest.calls),
                thousands(shed)
            ),
            met: Some(unavailable == 0),
            note: if others.is_empty() {
                String::new()
            } else {
                format!("other failures: {}", others.join(", "))
            },
        });
    }
    if let Some(i) = &r.internal {
        let called = |svc: &str| i.service(svc).map(|c| c.p99_ms);
        let served = |svc: &str| i.served(svc).map(|c| c.p99_ms);
        let shown = |v: Option<f64>| match v {
            Some(ms) if ms.is_finite() => format!("≤ {ms} ms"),
            Some(_) => "> 10 s".to_string(),
            None => "no calls".to_string(),
        };
        let both = |f: &dyn Fn(&str) -> Option<f64>| {
            format!(
                "register {}, saver {}",
                shown(f("register")),
                shown(f("saver"))
            )
        };
        let within = |f: &dyn Fn(&str) -> Option<f64>| {
            f("register").unwrap_or(0.0) <= 100.0 && f("saver").unwrap_or(0.0) <= 100.0
        };
        // Judged as the registers and the saver timed their answers where
        // they were scraped (their own work, whatever the callers' cores
        // were doing), else as the callers saw them.
        let have_served = i.served("register").is_some() || i.served("saver").is_some();
        let (measured, met) = if have_served {
            (
                format!(
                    "as they timed it: {}; as rooms and centers saw it: {}",
                    both(&served),
                    both(&called)
                ),
                within(&served),
            )
        } else {
            (
                format!("as rooms and centers saw it: {}", both(&called)),
                within(&called),
            )
        };
        targets.push(Target {
            name: "registers and saver answer, p99".into(),
            target: "≤ 100 ms throughout".into(),
            measured,
            met: Some(met),
            note: format!(
                "bucket bounds of pushgate_link_served_seconds (the answering process: from reading a request to queueing its answer) and pushgate_link_call_seconds (the caller: the wait on both sides included), from before the ramp to the end of the unicast phases ({} processes scraped); by phase in \"Calls between the cluster's processes\"",
                i.scraped
            ),
        });
        targets.push(Target {
            name: "lease failures, registers refilled after a fault".into(),
            target: "0, 0".into(),
            measured: format!(
                "{}, {} (registers that had lost a room: {})",
                thousands(i.lease_failures),
                thousands(i.fault_refills),
                thousands(i.lease_fresh)
            ),
            met: Some(i.lease_failures == 0 && i.fault_refills == 0 && i.lease_fresh == 0),
            note: String::new(),
        });
    }
    if let Some(k) = &r.kill {
        targets.push(Target {
            name: "killed room: clients back, messages lost".into(),
            target: "all back, 0 lost".into(),
            measured: format!(
                "{}/{} back in {}, {} lost of {}",
                thousands(k.reconnected),
                thousands(k.clients),
                k.all_back_ms
                    .map_or("—".to_string(), |ms| format!("{:.1} s", ms / 1000.0)),
                k.lost,
                thousands(k.pushes_acked)
            ),
            met: Some(k.all_back_ms.is_some() && k.lost == 0),
            note: String::new(),
        });
    }
    r.targets = targets;
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(pick(&v, 0.5), 2.0);
        assert_eq!(pick(&v, 0.99), 4.0);
        assert_eq!(pick(&[], 0.5), 0.0);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn judge_flags_misses() {
        let mut r = Report::default();
        r.config.connections = 1_000_000;
        r.memory = Some(Memory {
            bytes_per_conn: 3000.0,
            ..Memory::default()
        });
        judge(&mut r);
        let m = &r.targets[0];
        assert_eq!(m.met, Some(false));
        assert!(m.note.contains("952"), "{}", m.note);
    }

    fn row<'a>(r: &'a Report, name: &str) -> &'a Target {
        r.targets
            .iter()
            .find(|t| t.name.contains(name))
            .unwrap_or_else(|| panic!("no row {name}: {:?}", r.targets))
    }

    #[test]
    fn judge_uses_the_floor_when_given() {
        let mut r = Report::default();
        r.config.connections = 1_000_000;
        r.config.heartbeat_s = 30;
        r.config.broadcasts = 20;
        r.ramp = Some(Ramp {
            target: 1_000_000,
            authenticated: 1_000_000,
            rate_per_s: 21_000.0,
            ..Ramp::default()
        });
        r.hold = Some(Hold {
            seconds: 600.0,
            live_end: 1_000_000,
            pongs: 20_000_000,
            pings_per_s: 33_333.0,
            rooms_cpu_s: 400.0,
            cpu_to_floor: Some(1.4),
            ..Hold::default()
        });
        let b = |i: u32, last_to_floor: f64| Broadcast {
            index: i,
            expected: 1_000_000,
            received: 1_000_000,
            share_pct: 100.0,
            last_ms: 3000.0,
            floor_bound_ms: Some(2500.0),
            last_to_floor: Some(last_to_floor),
            ..Broadcast::default()
        };
        r.broadcasts = Some(Broadcasts {
            each: (1..=20)
                .map(|i| b(i, if i == 7 { 1.35 } else { 1.1 }))
                .collect(),
            worst_last_to_floor: Some(1.35),
            cpu_us_per_delivery: 5.0,
            cpu_per_delivery_to_floor: Some(1.0),
            min_share_pct: 100.0,
            cores: 2,
            ..Broadcasts::default()
        });
        r.config.floor_delivery_us = Some(5.0);
        r.config.floor_ping_us = Some(10.0);
        r.rest = super::super::report::RestAnswers {
            calls: 100,
            non_2xx: [("429".to_string(), 2), ("503".to_string(), 1)].into(),
            no_answer: [("timeout".to_string(), 1)].into(),
        };
        judge(&mut r);
        assert_eq!(row(&r, "connections held").met, Some(true));
        assert_eq!(row(&r, "to hold ÷ floor").met, Some(true));
        assert_eq!(row(&r, "connect rate").met, Some(true));
        assert_eq!(row(&r, "reaching every").met, Some(true));
        let ttl = row(&r, "time-to-last");
        assert_eq!(ttl.met, Some(false));
        assert!(ttl.measured.contains("broadcast 7"), "{}", ttl.measured);
        assert_eq!(row(&r, "per broadcast delivery ÷ floor").met, Some(true));
        let rest = row(&r, "503");
        assert_eq!(rest.met, Some(false));
        assert!(
            rest.measured.contains("429 (shed load): 2"),
            "{}",
            rest.measured
        );
        assert!(rest.note.contains("timeout: 1"), "{}", rest.note);
        assert!(!r.targets.iter().any(|t| t.name.contains("per million")));
        // Without the floor: not measured, and a note on how.
        r.hold.as_mut().unwrap().cpu_to_floor = None;
        r.config.heartbeat_s = 120;
        judge(&mut r);
        assert_eq!(row(&r, "to hold ÷ floor").met, None);
        assert!(row(&r, "to hold ÷ floor").note.contains("--floor-ping-us"));
        assert_eq!(row(&r, "connections held").met, Some(false));
    }
}
