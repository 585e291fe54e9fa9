//! The phases of a c1m run, in order, each filling its part of the report;
//! the timeline sampler; and the verdict against the targets.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fleet::{delta, Totals};
use super::report::{
    Broadcast, Broadcasts, Channels, Hold, Kill, Latency, Memory, Ramp, Report, RoomMemory, Sample,
    Target, Unicast,
};
use super::rest::PushTally;
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
/// Longest wait for the clients of a killed room to come back.
const KILL_WAIT: Duration = Duration::from_secs(120);
/// Unicast rate while a room is killed, pushes per second.
const KILL_PUSH_RATE: u64 = 1000;
/// Most unicast requests in flight in the fixed-rate phase.
const FIXED_MAX_IN_FLIGHT: usize = 4096;

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
    report.ramp = Some(ramp(ctx).await?);
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
    if ctx.cancel.is_cancelled() {
        return Ok(Outcome::Interrupted);
    }
    if ctx.args.broadcasts > 0 {
        report.broadcasts = Some(broadcasts(ctx).await?);
    }
    if ctx.args.channels > 0 && ctx.args.channel_rounds > 0 && !ctx.cancel.is_cancelled() {
        report.channels = Some(channels(ctx).await?);
    }
    if !ctx.cancel.is_cancelled() {
        report.unicast_fixed = Some(unicast(ctx, PHASE_FIXED, Some(ctx.args.unicast_rate)).await?);
    }
    if !ctx.cancel.is_cancelled() {
        report.unicast_max = Some(unicast(ctx, PHASE_MAX, None).await?);
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
        || r.broadcasts.as_ref().is_some_and(|b| b.missed > 0)
        || r.channels.as_ref().is_some_and(|c| c.received < c.expected)
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
    Ok(Hold {
        seconds: started.elapsed().as_secs_f64(),
        live_start: before.live,
        live_end: after.live,
        drops: drops.values().sum(),
        unexpected_drops: drops,
        pings: after.pings - before.pings,
        pongs: after.pongs - before.pongs,
        rooms_cpu_s: ctx.servers.rooms_cpu_s() - cpu0,
    })
}

/// Waits until `key` has `expected` messages (or the wait runs out); returns
/// how many arrived.
async fn wait_count(ctx: &Ctx, key: &str, expected: u64, within: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + within;
    loop {
        let got = ctx.fleet.totals().await?.count(key);
        if got >= expected || Instant::now() >= deadline || ctx.cancel.is_cancelled() {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

async fn broadcasts(ctx: &Ctx) -> anyhow::Result<Broadcasts> {
    ctx.set_phase("broadcast");
    let mut each = Vec::new();
    let mut cpu = 0.0;
    let mut expected_total = 0;
    for k in 1..=ctx.args.broadcasts {
        if ctx.cancel.is_cancelled() {
            break;
        }
        let expected = ctx.fleet.totals().await?.live;
        let cpu0 = ctx.servers.servers_cpu_s();
        let http = ctx.rest.broadcast(k).await?;
        let key = format!("b{k}");
        let received = wait_count(ctx, &key, expected, DELIVERY_WAIT).await?;
        cpu += ctx.servers.servers_cpu_s() - cpu0;
        expected_total += expected;
        each.push(Broadcast {
            index: k,
            expected,
            received,
            http_ms: http.as_secs_f64() * 1000.0,
            ..Broadcast::default()
        });
        // Let the tail settle before the next one.
        ctx.sleep(Duration::from_secs(1)).await;
    }
    let hists = ctx.fleet.hists().await?;
    let mut all = LatencyHist::new()?;
    for b in &mut each {
        if let Some(h) = hists.get(&format!("b{}", b.index)) {
            b.last_ms = h.max_ms();
            b.p50_ms = h.quantile_ms(0.5);
            b.p99_ms = h.quantile_ms(0.99);
            all.add_buckets(&h.buckets());
        }
        eprintln!(
            "  broadcast {:>2}: {}/{} received, last after {:.0} ms (p50 {:.0} ms, p99 {:.0} ms)",
            b.index, b.received, b.expected, b.last_ms, b.p50_ms, b.p99_ms
        );
    }
    let mut lasts: Vec<f64> = each.iter().map(|b| b.last_ms).collect();
    lasts.sort_by(f64::total_cmp);
    let deliveries: u64 = each.iter().map(|b| b.received).sum();
    Ok(Broadcasts {
        last_p50_ms: pick(&lasts, 0.5),
        last_p99_ms: pick(&lasts, 0.99),
        deliveries,
        missed: expected_total - deliveries.min(expected_total),
        server_cpu_s: cpu,
        cpu_s_per_million: crate::stats::per(cpu, deliveries as f64 / 1e6),
        latency: latency(Some(&all)),
        each,
    })
}

/// The `q` quantile of sorted values (nearest rank).
fn pick(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
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
            let schedule = Schedule::new(rate);
            let sem = Arc::new(tokio::sync::Semaphore::new(FIXED_MAX_IN_FLIGHT));
            let mut tasks = tokio::task::JoinSet::new();
            let end = started + dur;
            for i in 0..schedule.count_in(dur) {
                tokio::select! {
                    _ = ctx.cancel.cancelled() => break,
                    _ = tokio::time::sleep_until(started + schedule.offset(i)) => {}
                }
                // A cluster slower than the rate asked for leaves pushes
                // unsent at the end: the phase lasts its length, not its count.
                if Instant::now() >= end {
                    break;
                }
                let Ok(permit) = sem.clone().acquire_owned().await else {
                    break;
                };
                let (rest, tally) = (ctx.rest.clone(), tally.clone());
                let user = rand::random::<u64>() % n;
                let store = ctx.args.store;
                tasks.spawn(async move {
                    rest.unicast(user, phase, store, &tally).await;
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
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
            let schedule = Schedule::new(KILL_PUSH_RATE);
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            let mut i = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep_until(start + schedule.offset(i)) => {}
                }
                // Every other push goes to a user of the killed room (user
                // numbers ≡ 0 mod rooms).
                let r = rand::random::<u64>() % n;
                let user = if i % 2 == 0 { r - r % rooms } else { r };
                let (rest, tally) = (rest.clone(), tally.clone());
                tasks.spawn(async move { rest.unicast(user, PHASE_KILL, true, &tally).await });
                while tasks.try_join_next().is_some() {}
                i += 1;
            }
            while tasks.join_next().await.is_some() {}
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
    let received = wait_count(ctx, "u3", acked, Duration::from_secs(30)).await?;
    let after = ctx.fleet.totals().await?;
    let k = Kill {
        room: room_id,
        clients,
        reconnected: back,
        all_back_ms,
        half_back_ms,
        pushes_acked: acked,
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

/// Fills `report.targets` and the notes on what limited a figure.
pub(crate) fn judge(r: &mut Report) {
    let mut targets = Vec::new();
    let n = r.config.connections;
    if let (Some(ramp), Some(hold)) = (&r.ramp, &r.hold) {
        targets.push(Target {
            name: "connections held, 0 unexpected drops".into(),
            target: "1,000,000 for 10 min, 0 drops".into(),
            measured: format!(
                "{} of {} for {:.0} s, {} drops",
                thousands(hold.live_end),
                thousands(n),
                hold.seconds,
                thousands(hold.drops)
            ),
            met: Some(
                n >= 1_000_000
                    && ramp.authenticated >= n
                    && hold.seconds >= 600.0
                    && hold.drops == 0,
            ),
            note: if n < 1_000_000 || hold.seconds < 600.0 {
                "a smaller or shorter run than the target".into()
            } else {
                String::new()
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
    if let Some(b) = &r.broadcasts {
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
        targets.push(Target {
            name: "server CPU per million broadcast deliveries".into(),
            target: "≤ 2 CPU-s".into(),
            measured: format!("{:.2} CPU-s", b.cpu_s_per_million),
            met: Some(b.cpu_s_per_million <= 2.0),
            note: if b.cpu_s_per_million > 2.0 {
                format!("missed by {:.2} CPU-s", b.cpu_s_per_million - 2.0)
            } else {
                String::new()
            },
        });
    }
    if let Some(u) = &r.unicast_fixed {
        let asked = u.asked_rate.unwrap_or(0) as f64;
        let kept_up = u.achieved_rate >= asked * 0.98;
        targets.push(Target {
            name: format!("unicast p99 at {} pushes/s", thousands(asked as u64)),
            target: "< 20 ms at 20,000/s".into(),
            measured: format!(
                "p99 {:.2} ms at {}/s ({} lost)",
                u.latency.p99,
                thousands(u.achieved_rate.round() as u64),
                u.lost
            ),
            met: Some(kept_up && u.latency.p99 < 20.0 && u.lost == 0 && asked >= 20_000.0),
            note: if !kept_up {
                format!(
                    "the cluster sustained {}/s of the {}/s asked",
                    thousands(u.achieved_rate.round() as u64),
                    thousands(asked as u64)
                )
            } else {
                String::new()
            },
        });
    }
    if let Some(ramp) = &r.ramp {
        targets.push(Target {
            name: "connect rate (authenticated)".into(),
            target: "≥ 20,000/s".into(),
            measured: format!(
                "{}/s (peak {}/s)",
                thousands(ramp.rate_per_s.round() as u64),
                thousands(ramp.peak_rate_per_s.round() as u64)
            ),
            met: Some(ramp.rate_per_s >= 20_000.0),
            note: if r.config.ramp_rate < 20_000 {
                format!("ramp rate asked: {}/s", thousands(r.config.ramp_rate))
            } else {
                String::new()
            },
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
}
