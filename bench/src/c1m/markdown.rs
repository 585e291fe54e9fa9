//! The Markdown report of a C1M run: title, machine and command, the targets
//! table, one section per phase that ran, the notes and links to the plots.
//!
//! Counts are written with thousands separators (`1,000,000`), times in
//! milliseconds with two decimals, memory as `2,933 B` or `3.1 GiB`.

use std::collections::BTreeMap;

use super::report::{
    Broadcasts, Channels, Hold, Kill, Latency, Memory, Ramp, Report, RoomMemory, Unicast,
};
use super::scrape::ServiceCalls;

/// Rooms listed one by one in the memory section; above this, min/median/max rows.
const MAX_ROOM_ROWS: usize = 12;

/// The plots [`crate::c1m::plot::write_plots`] writes, linked at the end.
const PLOTS: [(&str, &str); 3] = [
    ("latency", "latency.svg"),
    ("connections", "connections.svg"),
    ("memory", "memory.svg"),
];

/// The whole report as Markdown.
pub(crate) fn render(r: &Report) -> String {
    let mut s = String::new();
    let date = if r.date.is_empty() {
        "date unknown"
    } else {
        &r.date
    };
    ln(
        &mut s,
        format!(
            "# pushgate C1M benchmark — {date}, {} connections",
            int(r.config.connections)
        ),
    );
    ln(&mut s, "");
    ln(&mut s, format!("**Machine:** {}  ", machine(r)));
    ln(&mut s, format!("**Run:** {}", config(r)));
    ln(&mut s, "");
    ln(&mut s, "Command:");
    ln(&mut s, "");
    code_block(&mut s, &r.command);
    if let Some(why) = &r.incomplete {
        ln(&mut s, "");
        ln(
            &mut s,
            format!(
                "> ⚠️ **Incomplete run:** {}. Figures below cover only what ran.",
                one_line(why)
            ),
        );
    }
    ln(&mut s, "");
    ln(&mut s, "## Summary");
    ln(&mut s, "");
    s.push_str(&summary_table(r));
    if let Some(x) = &r.floor {
        floor_run(&mut s, x);
    }
    if let Some(x) = &r.ramp {
        ramp(&mut s, x);
    }
    if let Some(x) = &r.memory {
        memory(&mut s, x);
    }
    if let Some(x) = &r.hold {
        hold(&mut s, x, r.config.floor_ping_us);
    }
    if let Some(x) = &r.broadcasts {
        broadcasts(&mut s, x, r.config.floor_delivery_us);
    }
    if let Some(x) = &r.channels {
        channels(&mut s, x);
    }
    if let Some(x) = &r.unicast_fixed {
        unicast(&mut s, "Unicast, fixed rate", x);
    }
    if let Some(x) = &r.unicast_max {
        unicast(&mut s, "Unicast, highest sustained rate", x);
    }
    if let Some(x) = &r.kill {
        kill(&mut s, x);
    }
    if r.rest.calls > 0 {
        rest(&mut s, r);
    }
    if let Some(i) = &r.internal {
        internal(&mut s, i);
    }
    if !r.notes.is_empty() {
        section(&mut s, "Notes");
        for n in &r.notes {
            ln(&mut s, format!("- {}", one_line(n)));
        }
    }
    section(&mut s, "Plots");
    let links: Vec<String> = PLOTS
        .iter()
        .map(|(alt, file)| format!("![{alt}]({file})"))
        .collect();
    ln(&mut s, links.join(" "));
    s
}

/// The targets table alone (the README embeds it): what, target, measured,
/// met (✅ / ❌ / — when not measured) and a note.
pub(crate) fn summary_table(r: &Report) -> String {
    let mut s = String::new();
    if r.targets.is_empty() {
        ln(&mut s, "_No targets measured._");
        return s;
    }
    ln(&mut s, "| what | target | measured | met? | note |");
    ln(&mut s, "|---|---|---|:---:|---|");
    for t in &r.targets {
        let met = match t.met {
            Some(true) => "✅",
            Some(false) => "❌",
            None => "—",
        };
        ln(
            &mut s,
            format!(
                "| {} | {} | {} | {met} | {} |",
                cell(&t.name),
                cell(&t.target),
                cell(&t.measured),
                cell(&t.note)
            ),
        );
    }
    s
}

/// The machine line.
fn machine(r: &Report) -> String {
    let m = &r.machine;
    let kernel = if m.kernel.is_empty() {
        "unknown"
    } else {
        &m.kernel
    };
    let nofile = m.nofile.map_or_else(|| "unknown".to_string(), int);
    format!(
        "{} CPUs, {} RAM, Linux {}, open-files limit {nofile}",
        m.cpus,
        bytes(m.mem_total_bytes),
        one_line(kernel)
    )
}

/// What was asked for, in one line (and where the workers ran, how the
/// broadcasts were paced, the floor figures given).
fn config(r: &Report) -> String {
    let c = &r.config;
    let mut line = config_base(r);
    if !c.remote_workers.is_empty() {
        line.push_str(&format!(
            " Workers listening elsewhere (`--workers-file`): {}.",
            one_line(&c.remote_workers.join(", "))
        ));
    }
    line.push_str(&match c.broadcast_gap_s {
        Some(g) => format!(" Broadcasts every {} (`--broadcast-gap`).", secs(g)),
        None => " Each broadcast waits for the previous one.".to_string(),
    });
    let floor = |v: Option<f64>| v.map_or_else(|| "not given".to_string(), |f| format!("{f} µs"));
    match &r.floor {
        Some(f) => line.push_str(&format!(
            " Floor, measured in this run (below): {} per delivery, {} per heartbeat.",
            floor(f.delivery_us.map(|u| (u * 100.0).round() / 100.0)),
            floor(f.ping_us.map(|u| (u * 10.0).round() / 10.0))
        )),
        None => line.push_str(&format!(
            " Floor: {} per delivery, {} per heartbeat.",
            floor(c.floor_delivery_us),
            floor(c.floor_ping_us)
        )),
    }
    line
}

/// The asked-for figures of [`config`].
fn config_base(r: &Report) -> String {
    let c = &r.config;
    let transport = if c.transport.is_empty() {
        "?"
    } else {
        &c.transport
    };
    format!(
        "{} transport, {} rooms, {} load-generator workers, heartbeat {} s, ramp {}/s, \
         hold {}, {} broadcasts, {} channels, unicast {}/s for {} each, {}, cluster {}.",
        one_line(transport),
        int(c.rooms as u64),
        int(c.workers as u64),
        int(c.heartbeat_s),
        int(c.ramp_rate),
        secs(c.hold_s),
        int(u64::from(c.broadcasts)),
        int(u64::from(c.channels)),
        int(c.unicast_rate),
        secs(c.unicast_s),
        if c.store {
            "stored pushes"
        } else {
            "pushes not stored"
        },
        if c.started_cluster {
            "started by the bench"
        } else {
            "attached"
        }
    )
}

/// The ramp section.
fn ramp(s: &mut String, x: &Ramp) {
    section(s, "Ramp");
    ln(
        s,
        format!(
            "- Authenticated: {} of {} ({})",
            int(x.authenticated),
            int(x.target),
            pct(x.authenticated, x.target)
        ),
    );
    ln(
        s,
        format!("- Failed attempts (retried): {}", by_reason(&x.failures)),
    );
    ln(
        s,
        format!(
            "- Connections that dropped after `auth_ok` during the ramp and settle (they reconnect): {}",
            by_reason(&x.drops)
        ),
    );
    ln(s, format!("- Duration: {}", secs(x.seconds)));
    ln(
        s,
        format!(
            "- Connect rate: {} on average, {} at best (one second)",
            rate(x.rate_per_s),
            rate(x.peak_rate_per_s)
        ),
    );
}

/// The memory section, with the per-room table.
fn memory(s: &mut String, x: &Memory) {
    section(s, "Memory");
    ln(
        s,
        format!("- Live connections when measured: {}", int(x.connections)),
    );
    ln(
        s,
        format!(
            "- Rooms RSS: {} → {} ({}), **{} per connection**",
            bytes(x.rooms_rss_before),
            bytes(x.rooms_rss_after),
            delta(x.rooms_rss_before, x.rooms_rss_after),
            bytes_f(x.bytes_per_conn)
        ),
    );
    ln(
        s,
        format!(
            "- Kernel slab: {} → {} ({}), {} per connection (both socket ends)",
            bytes(x.slab_before),
            bytes(x.slab_after),
            delta(x.slab_before, x.slab_after),
            bytes_f(x.slab_per_conn)
        ),
    );
    ln(s, format!("- Load generator RSS: {}", bytes(x.workers_rss)));
    ln(
        s,
        format!(
            "- Lowest MemAvailable during the run: {}",
            bytes(x.mem_available_min)
        ),
    );
    if x.per_room.is_empty() {
        return;
    }
    ln(s, "");
    ln(
        s,
        "| room | connections | RSS before | RSS after | per connection |",
    );
    ln(s, "|---:|---:|---:|---:|---:|");
    if x.per_room.len() <= MAX_ROOM_ROWS {
        for m in &x.per_room {
            ln(
                s,
                format!(
                    "| {} | {} | {} | {} | {} |",
                    m.room,
                    int(m.connections),
                    bytes(m.rss_before),
                    bytes(m.rss_after),
                    bytes_f(m.bytes_per_conn)
                ),
            );
        }
        return;
    }
    // Too many rooms to list: each column's min, median and max on its own.
    let conns = spread(&x.per_room, |m| m.connections as f64);
    let before = spread(&x.per_room, |m| m.rss_before as f64);
    let after = spread(&x.per_room, |m| m.rss_after as f64);
    let per = spread(&x.per_room, |m| m.bytes_per_conn);
    for (i, label) in ["min", "median", "max"].into_iter().enumerate() {
        ln(
            s,
            format!(
                "| {label} | {} | {} | {} | {} |",
                float_int(conns[i]),
                bytes_f(before[i]),
                bytes_f(after[i]),
                bytes_f(per[i])
            ),
        );
    }
    ln(s, "");
    ln(
        s,
        format!(
            "{} rooms; each column's min, median and max taken on its own.",
            int(x.per_room.len() as u64)
        ),
    );
}

/// Min, median and max of one column of the per-room table.
fn spread(rooms: &[RoomMemory], f: impl Fn(&RoomMemory) -> f64) -> [f64; 3] {
    let mut v: Vec<f64> = rooms.iter().map(f).collect();
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    [v[0], median, v[n - 1]]
}

/// The hold section (`floor_us`: the floor's CPU per heartbeat).
/// The floor measured in this run (`--floor`).
fn floor_run(s: &mut String, x: &super::floor_run::FloorRun) {
    section(s, "Floor, measured in this run");
    ln(
        s,
        format!(
            "`bench floor` (one thread, epoll, no runtime) held by one load-generator \
             worker of this run, before the cluster started: {} of {} connections \
             authenticated, heartbeat {} s.",
            int(x.authenticated),
            int(x.connections),
            x.heartbeat_s
        ),
    );
    ln(s, "");
    let us = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "n/a".to_string(), |u| format!("{u:.digits$} µs"))
    };
    ln(
        s,
        format!(
            "- Hold: {} heartbeats in {}, {:.2} s of CPU: **{}** per heartbeat",
            int(x.pongs),
            secs(x.hold_s),
            x.hold_cpu_s,
            us(x.ping_us, 1)
        ),
    );
    ln(
        s,
        format!(
            "- Broadcasts: {} sent, {} of {} delivered, {:.2} s of CPU with {} heartbeats \
             taken out: **{}** per delivery",
            x.broadcasts,
            int(x.deliveries),
            int(x.expected),
            x.broadcast_cpu_s,
            int(x.broadcast_pongs),
            us(x.delivery_us, 2)
        ),
    );
    ln(s, format!("- Connections dropped: {}", int(x.drops)));
    ln(
        s,
        format!(
            "- Ramp: {} in {}: **{}** per connect",
            int(x.authenticated),
            secs(x.ramp_s),
            us(x.connect_us, 1)
        ),
    );
    ln(
        s,
        format!(
            "- The clients' side (the load-generator worker's CPU): {} per connect, {} per \
             heartbeat, {} per delivery",
            us(x.client_connect_us, 1),
            us(x.client_ping_us, 1),
            us(x.client_delivery_us, 2)
        ),
    );
}

fn hold(s: &mut String, x: &Hold, floor_us: Option<f64>) {
    section(s, "Hold");
    ln(s, format!("- Duration: {}", secs(x.seconds)));
    ln(
        s,
        format!(
            "- Live connections: {} at the start, {} at the end",
            int(x.live_start),
            int(x.live_end)
        ),
    );
    ln(
        s,
        format!(
            "- Unexpected drops: {} ({})",
            int(x.drops),
            by_reason(&x.unexpected_drops)
        ),
    );
    ln(
        s,
        format!(
            "- Heartbeats: {} sent, {} answered",
            int(x.pings),
            int(x.pongs)
        ),
    );
    let cores = if x.seconds > 0.0 {
        format!(" ({:.2} cores on average)", x.rooms_cpu_s / x.seconds)
    } else {
        String::new()
    };
    ln(s, format!("- Rooms CPU: {:.1} s{cores}", x.rooms_cpu_s));
    ln(
        s,
        format!(
            "- Heartbeats answered: {}, rooms' CPU ÷ (heartbeats × floor CPU per heartbeat): {}",
            rate(x.pings_per_s),
            match (x.cpu_to_floor, floor_us) {
                (Some(r), Some(f)) => format!("**{r:.2}×** (floor {f:.1} µs)"),
                _ => format!("n/a ({NO_FLOOR}: `--floor-ping-us`)"),
            }
        ),
    );
}

/// Why a floor ratio is missing, and how to get it.
const NO_FLOOR: &str = "no floor figure given; measure it with `bench compare --floor-only` \
    and pass it";

/// The broadcast section, with a row per broadcast (`floor_us`: the floor's
/// CPU per delivery).
fn broadcasts(s: &mut String, x: &Broadcasts, floor_us: Option<f64>) {
    section(s, "Broadcasts");
    ln(
        s,
        match x.gap_ms {
            Some(g) => format!(
                "- Sent every {} (`--broadcast-gap`), without waiting for the previous one",
                ms(g)
            ),
            None => "- One at a time: each sent once every live connection had the previous \
                     one and its task was done (each wait bounded)"
                .to_string(),
        },
    );
    ln(
        s,
        format!(
            "- Until the last client had it: {} median, {} p99 (over {} broadcasts)",
            ms(x.last_p50_ms),
            ms(x.last_p99_ms),
            int(x.each.len() as u64)
        ),
    );
    ln(
        s,
        format!(
            "- Deliveries: {} received, {} missed; lowest share of live connections {}",
            int(x.deliveries),
            int(x.missed),
            share(x.min_share_pct)
        ),
    );
    if let Some(got) = x.received_by_end() {
        let expected: u64 = x.each.iter().map(|b| b.expected).sum();
        ln(
            s,
            format!(
                "- By the end of the run (counted again after the unicast phases): {} of {} \
                 received, {} never",
                int(got),
                int(expected),
                int(x.lost())
            ),
        );
    }
    ln(
        s,
        format!(
            "- Server CPU (rooms + centers): {:.1} s, {:.2} s per million deliveries; \
             {:.2} µs per delivery with the {} heartbeats answered meanwhile taken out",
            x.server_cpu_s,
            x.cpu_s_per_million,
            x.cpu_us_per_delivery,
            int(x.pongs)
        ),
    );
    match (floor_us, x.cpu_per_delivery_to_floor) {
        (Some(f), Some(r)) => ln(
            s,
            format!(
                "- Floor: {f:.2} µs per delivery; CPU per delivery **{r:.2}×** the floor; \
                 floor bound = live connections × {f} µs ÷ {} cores",
                x.cores
            ),
        ),
        _ => ln(
            s,
            format!("- Floor ratios: n/a ({NO_FLOOR}: `--floor-delivery-us`)"),
        ),
    }
    ln(s, "");
    latency_table(s, &[("every delivery", &x.latency)]);
    if x.each.is_empty() {
        return;
    }
    ln(s, "");
    ln(
        s,
        "| # | expected | received | share | last | floor bound | last ÷ bound | p50 | p99 | \
         task: delivered / skipped / pending | REST call |",
    );
    ln(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for b in &x.each {
        let opt = |v: Option<u64>| v.map_or_else(|| "n/a".to_string(), int);
        let task = match &b.task_view {
            Some(v) => format!(
                "{} / {} / {} ({})",
                int(v.delivered),
                opt(v.skipped),
                opt(v.pending),
                one_line(&v.state)
            ),
            None if b.task.is_some() => "not read".to_string(),
            None => "—".to_string(),
        };
        ln(
            s,
            format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                b.index,
                int(b.expected),
                int(b.received),
                share(b.share_pct),
                ms(b.last_ms),
                b.floor_bound_ms.map_or_else(|| "n/a".to_string(), ms),
                b.last_to_floor
                    .map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}×")),
                ms(b.p50_ms),
                ms(b.p99_ms),
                cell(&task),
                ms(b.http_ms)
            ),
        );
    }
}

/// What the bench's REST calls got over the run.
fn rest(s: &mut String, r: &Report) {
    section(s, "REST answers");
    let x = &r.rest;
    ln(s, format!("- Calls: {}", int(x.calls)));
    ln(
        s,
        format!(
            "- Answers other than 2xx, by status: {} (429 is load shed on purpose; 503 is the \
             server unable to serve)",
            by_reason(&x.non_2xx)
        ),
    );
    ln(
        s,
        format!("- No answer at all: {}", by_reason(&x.no_answer)),
    );
}

/// A bucket's upper bound, in words.
fn bucket(ms: f64) -> String {
    if ms.is_finite() {
        format!("≤ {ms} ms")
    } else {
        "> 10 s".to_string()
    }
}

/// What the cluster's processes said about their calls and leases.
fn internal(s: &mut String, i: &super::scrape::Internal) {
    section(s, "Calls between the cluster's processes");
    ln(
        s,
        "From before the ramp to the end of the unicast phases; figures are bucket upper bounds. \
         *Called*: as rooms and centers timed their calls (`pushgate_link_call_seconds{service}`: \
         the wait on both sides included, the caller's own wait for a core too). *Served*: as the \
         registers, the saver and the idgens timed their answers (`pushgate_link_served_seconds`: \
         from reading a request to queueing its answer).",
    );
    ln(s, "");
    ln(
        s,
        "| service | seen by | calls | failed | p50 | p99 | slowest |",
    );
    ln(s, "|---|---|---:|---:|---:|---:|---:|");
    let rows =
        |s: &mut String, phase: Option<&str>, called: &[ServiceCalls], served: &[ServiceCalls]| {
            let tagged = called
                .iter()
                .map(|c| (c, "called"))
                .chain(served.iter().map(|c| (c, "served")));
            let mut all: Vec<(&ServiceCalls, &str)> = tagged.collect();
            all.sort_by(|a, b| a.0.service.cmp(&b.0.service).then(a.1.cmp(b.1)));
            for (c, by) in all {
                let lead = phase.map_or(String::new(), |p| format!("{p} | "));
                ln(
                    s,
                    format!(
                        "| {lead}{} | {by} | {} | {} | {} | {} | {} |",
                        c.service,
                        int(c.calls),
                        int(c.errors),
                        bucket(c.p50_ms),
                        bucket(c.p99_ms),
                        bucket(c.max_ms)
                    ),
                );
            }
        };
    rows(s, None, &i.services, &i.served);
    if !i.phases.is_empty() {
        ln(s, "");
        ln(s, "By phase (each from the end of the one before):");
        ln(s, "");
        ln(
            s,
            "| phase | service | seen by | calls | failed | p50 | p99 | slowest |",
        );
        ln(s, "|---|---|---|---:|---:|---:|---:|---:|");
        for p in &i.phases {
            rows(s, Some(&p.phase), &p.services, &p.served);
        }
    }
    ln(s, "");
    ln(
        s,
        format!(
            "- Leases: {} failed renewals, {} granted afresh (a register had lost the room), \
             {} refills after a fault, {} refills in all (start-up and every 5 minutes included); \
             {} processes scraped",
            int(i.lease_failures),
            int(i.lease_fresh),
            int(i.fault_refills),
            int(i.refills),
            i.scraped
        ),
    );
}

/// The channel section.
fn channels(s: &mut String, x: &Channels) {
    section(s, "Channels");
    ln(
        s,
        format!(
            "- {} channels, {} pushes",
            int(u64::from(x.channels)),
            int(x.pushes)
        ),
    );
    ln(
        s,
        format!(
            "- Deliveries: {} of {} ({}), {} missed",
            int(x.received),
            int(x.expected),
            pct(x.received, x.expected),
            int(x.expected.saturating_sub(x.received))
        ),
    );
    if let Some(got) = x.received_by_end {
        ln(
            s,
            format!(
                "- By the end of the run (counted again after the unicast phases): {} of {}, \
                 {} never",
                int(got),
                int(x.expected),
                int(x.lost())
            ),
        );
    }
    ln(s, "");
    latency_table(s, &[("delivery", &x.latency)]);
}

/// A unicast section.
fn unicast(s: &mut String, title: &str, x: &Unicast) {
    section(s, title);
    let asked = x.asked_rate.map_or_else(
        || "closed loop (as fast as it goes)".to_string(),
        |r| format!("{}/s", int(r)),
    );
    ln(
        s,
        format!(
            "- Asked: {asked}, {} in flight at most, for {}",
            int(x.concurrency),
            secs(x.seconds)
        ),
    );
    ln(
        s,
        format!(
            "- Requests: {} sent, {} acknowledged, **{} achieved**",
            int(x.sent),
            int(x.acked),
            rate(x.achieved_rate)
        ),
    );
    ln(s, format!("- Errors: {}", by_reason(&x.errors)));
    ln(
        s,
        format!(
            "- Acknowledged pushes received: {} ({}), {} lost",
            int(x.received),
            pct(x.received, x.acked),
            int(x.lost)
        ),
    );
    ln(s, "");
    latency_table(s, &[("end to end", &x.latency), ("REST call", &x.http)]);
}

/// The kill section.
fn kill(s: &mut String, x: &Kill) {
    section(s, "Room kill");
    ln(
        s,
        format!(
            "- Killed room {} with {} clients; {} reconnected elsewhere ({})",
            x.room,
            int(x.clients),
            int(x.reconnected),
            pct(x.reconnected, x.clients)
        ),
    );
    let back = |v: Option<f64>| v.map_or_else(|| "not within the wait".to_string(), ms);
    ln(
        s,
        format!(
            "- Half of them back after: {}; all back after: {}",
            back(x.half_back_ms),
            back(x.all_back_ms)
        ),
    );
    ln(
        s,
        format!(
            "- Stored pushes around the kill: {} sent{}, {} acknowledged, {} received, {} lost, \
             {} duplicates dropped",
            int(x.pushes_sent),
            if x.push_errors.is_empty() {
                String::new()
            } else {
                format!(" (not acknowledged: {})", by_reason(&x.push_errors))
            },
            int(x.pushes_acked),
            int(x.received),
            int(x.lost),
            int(x.duplicates)
        ),
    );
    ln(
        s,
        format!(
            "- Connections of other rooms dropped meanwhile: {}",
            int(x.other_drops)
        ),
    );
}

/// A percentile table, one row per distribution.
fn latency_table(s: &mut String, rows: &[(&str, &Latency)]) {
    ln(s, "| latency | samples | p50 | p90 | p99 | p99.9 | max |");
    ln(s, "|---|---:|---:|---:|---:|---:|---:|");
    for (name, l) in rows {
        ln(
            s,
            format!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                cell(name),
                int(l.count),
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max)
            ),
        );
    }
}

/// Starts a `##` section.
fn section(s: &mut String, title: &str) {
    ln(s, "");
    ln(s, format!("## {title}"));
    ln(s, "");
}

/// Appends a line.
fn ln(s: &mut String, text: impl AsRef<str>) {
    s.push_str(text.as_ref());
    s.push('\n');
}

/// A fenced code block holding `text` verbatim, with a fence longer than any
/// run of backticks inside it.
fn code_block(s: &mut String, text: &str) {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat((longest + 1).max(3));
    ln(s, format!("{fence}sh"));
    ln(s, text.trim_end());
    ln(s, fence);
}

/// Text fit for one line of Markdown.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text fit for a table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

/// `reason: count` pairs, or `none`.
fn by_reason(m: &BTreeMap<String, u64>) -> String {
    if m.values().all(|&n| n == 0) {
        return "none".to_string();
    }
    m.iter()
        .filter(|(_, &n)| n > 0)
        .map(|(why, &n)| format!("{}: {}", one_line(why), int(n)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `1234567` → `1,234,567`.
pub(super) fn int(n: u64) -> String {
    group(&n.to_string())
}

/// Thousands separators in the integer part of a formatted non-negative
/// number: `15432.10` → `15,432.10`.
fn group(number: &str) -> String {
    let digits = number.find('.').unwrap_or(number.len());
    let mut out = String::with_capacity(number.len() + digits / 3);
    for (i, c) in number[..digits].chars().enumerate() {
        if i > 0 && (digits - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out.push_str(&number[digits..]);
    out
}

/// A float rounded to an integer with thousands separators; `—` if not finite.
fn float_int(x: f64) -> String {
    if !x.is_finite() {
        return "—".to_string();
    }
    let sign = if x < -0.5 { "-" } else { "" };
    format!("{sign}{}", int(x.abs().round() as u64))
}

/// Milliseconds with two decimals (`15,432.10 ms`).
fn ms(x: f64) -> String {
    if !x.is_finite() {
        return "—".to_string();
    }
    let sign = if x <= -0.005 { "-" } else { "" };
    format!("{sign}{} ms", group(&format!("{:.2}", x.abs())))
}

/// Seconds with one decimal.
fn secs(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1} s")
    } else {
        "—".to_string()
    }
}

/// A rate per second, rounded.
fn rate(x: f64) -> String {
    format!("{}/s", float_int(x))
}

/// `part / whole` as a percentage, or `—` when `whole` is 0.
fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "—".to_string();
    }
    let p = part as f64 / whole as f64 * 100.0;
    // Two decimals, so that 999,999 of a million does not read as 100 %.
    format!("{p:.2} %")
}

/// A percentage rounded down to two decimals, so that short of 100 % never
/// reads as `100.00 %`.
fn share(p: f64) -> String {
    if !p.is_finite() {
        return "—".to_string();
    }
    format!("{:.2} %", (p * 100.0).floor() / 100.0)
}

/// Bytes: exact below 64 KiB (`2,933 B`), else KiB, MiB or GiB with one decimal.
pub(super) fn bytes(n: u64) -> String {
    bytes_f(n as f64)
}

/// [`bytes`] for a float (per-connection figures).
fn bytes_f(x: f64) -> String {
    const KIB: f64 = 1024.0;
    const MIB: f64 = KIB * 1024.0;
    const GIB: f64 = MIB * 1024.0;
    if !x.is_finite() {
        return "—".to_string();
    }
    let a = x.abs();
    if a < 64.0 * KIB {
        format!("{} B", float_int(x))
    } else if a < MIB {
        format!("{:.1} KiB", x / KIB)
    } else if a < GIB {
        format!("{:.1} MiB", x / MIB)
    } else {
        format!("{:.1} GiB", x / GIB)
    }
}

/// The change from `before` to `after`, signed (`+1.2 GiB`, `-3,000 B`).
fn delta(before: u64, after: u64) -> String {
    if after >= before {
        format!("+{}", bytes(after - before))
    } else {
        format!("-{}", bytes(before - after))
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::{
        Broadcast, Broadcasts, Channels, Hold, Kill, Latency, Machine, Memory, Ramp, Report,
        RoomMemory, RunConfig, Target, Unicast,
    };
    use super::*;

    fn latency(scale: f64) -> Latency {
        Latency {
            count: 1_000_000,
            p50: 1.5 * scale,
            p90: 3.25 * scale,
            p99: 8.0 * scale,
            p999: 20.0 * scale,
            max: 55.555 * scale,
            curve: (0..=100)
                .map(|i| (f64::from(i), f64::from(i) * 0.1 * scale))
                .collect(),
        }
    }

    fn rooms(n: u32) -> Vec<RoomMemory> {
        (1..=n)
            .map(|room| RoomMemory {
                room,
                connections: 333_333 + u64::from(room),
                rss_before: 20 << 20,
                rss_after: (20 << 20) + 977_000_000 + u64::from(room) * 1000,
                bytes_per_conn: 2930.0 + f64::from(room),
            })
            .collect()
    }

    /// A report as a full run would produce it (3 rooms).
    fn full_report() -> Report {
        Report {
            version: 1,
            started_unix_s: 1_767_225_600,
            date: "2026-01-01".into(),
            command: "bench c1m --connections 1000000 --rooms 3".into(),
            incomplete: None,
            machine: Machine {
                cpus: 16,
                mem_total_bytes: 64 << 30,
                kernel: "6.8.0-45-generic".into(),
                nofile: Some(2_000_000),
            },
            config: RunConfig {
                connections: 1_000_000,
                transport: "ws".into(),
                rooms: 3,
                workers: 8,
                heartbeat_s: 30,
                ramp_rate: 20_000,
                hold_s: 60.0,
                broadcasts: 2,
                channels: 100,
                unicast_rate: 10_000,
                unicast_s: 30.0,
                store: true,
                started_cluster: true,
                broadcast_gap_s: None,
                floor_delivery_us: Some(4.5),
                floor_ping_us: None,
                remote_workers: vec!["10.0.0.2:7901".into()],
            },
            ramp: Some(Ramp {
                target: 1_000_000,
                authenticated: 999_990,
                failures: [("connect refused".to_string(), 10)].into_iter().collect(),
                drops: BTreeMap::new(),
                seconds: 52.3,
                rate_per_s: 19_120.3,
                peak_rate_per_s: 24_001.0,
            }),
            memory: Some(Memory {
                connections: 999_990,
                rooms_rss_before: 60 << 20,
                rooms_rss_after: (60 << 20) + 2_933_000_000,
                bytes_per_conn: 2933.0,
                per_room: rooms(3),
                slab_before: 200 << 20,
                slab_after: (200 << 20) + (3 << 30),
                slab_per_conn: 3221.2,
                workers_rss: 5 << 30,
                mem_available_min: 20 << 30,
            }),
            hold: Some(Hold {
                seconds: 60.0,
                live_start: 999_990,
                live_end: 999_988,
                unexpected_drops: [("reset".to_string(), 2)].into_iter().collect(),
                drops: 2,
                pings: 2_000_000,
                pongs: 1_999_998,
                rooms_cpu_s: 12.0,
                pings_per_s: 33_333.3,
                cpu_to_floor: None,
            }),
            broadcasts: Some(Broadcasts {
                each: vec![
                    Broadcast {
                        index: 1,
                        expected: 999_988,
                        received: 999_988,
                        last_ms: 812.345,
                        p50_ms: 300.0,
                        p99_ms: 700.0,
                        http_ms: 2.5,
                        share_pct: 100.0,
                        task: Some("b-1".into()),
                        task_view: Some(super::super::rest::TaskView {
                            task: "b-1".into(),
                            state: "done".into(),
                            delivered: 999_988,
                            skipped: Some(0),
                            pending: Some(0),
                            ..Default::default()
                        }),
                        floor_bound_ms: Some(2249.97),
                        last_to_floor: Some(0.361),
                        received_by_end: None,
                    },
                    Broadcast {
                        index: 2,
                        expected: 999_988,
                        received: 999_980,
                        last_ms: 790.0,
                        p50_ms: 290.0,
                        p99_ms: 690.0,
                        http_ms: 2.25,
                        share_pct: 99.999,
                        task: Some("b-2".into()),
                        task_view: None,
                        floor_bound_ms: Some(2249.97),
                        last_to_floor: Some(0.351),
                        received_by_end: None,
                    },
                ],
                last_p50_ms: 801.17,
                last_p99_ms: 812.35,
                deliveries: 1_999_968,
                missed: 8,
                server_cpu_s: 4.5,
                cpu_s_per_million: 2.25,
                latency: latency(10.0),
                gap_ms: None,
                cores: 2,
                pongs: 70_000,
                cpu_us_per_delivery: 2.0,
                cpu_per_delivery_to_floor: Some(0.444),
                worst_last_to_floor: Some(0.361),
                min_share_pct: 99.999,
            }),
            channels: Some(Channels {
                channels: 100,
                pushes: 1000,
                expected: 9_999_880,
                received: 9_999_880,
                latency: latency(2.0),
                received_by_end: None,
            }),
            unicast_fixed: Some(Unicast {
                asked_rate: Some(10_000),
                concurrency: 512,
                seconds: 30.0,
                sent: 300_000,
                acked: 300_000,
                errors: BTreeMap::new(),
                achieved_rate: 10_000.0,
                received: 300_000,
                lost: 0,
                latency: latency(1.0),
                http: latency(0.5),
            }),
            unicast_max: Some(Unicast {
                asked_rate: None,
                concurrency: 1024,
                seconds: 30.0,
                sent: 1_500_000,
                acked: 1_499_000,
                errors: [("timeout".to_string(), 1000)].into_iter().collect(),
                achieved_rate: 49_966.7,
                received: 1_499_000,
                lost: 0,
                latency: latency(4.0),
                http: latency(3.0),
            }),
            kill: Some(Kill {
                room: 2,
                clients: 333_335,
                reconnected: 333_335,
                all_back_ms: Some(15_432.1),
                half_back_ms: None,
                pushes_acked: 10_000,
                pushes_sent: 10_012,
                push_errors: [("429".to_string(), 12)].into(),
                received: 10_000,
                lost: 0,
                duplicates: 17,
                other_drops: 0,
            }),
            timeline: Vec::new(),
            targets: vec![
                Target {
                    name: "memory per connection".into(),
                    target: "≤ 2,048 B".into(),
                    measured: "2,933 B".into(),
                    met: Some(false),
                    note: "rooms RSS | growth".into(),
                },
                Target {
                    name: "connections".into(),
                    target: "1,000,000".into(),
                    measured: "999,990".into(),
                    met: Some(true),
                    note: String::new(),
                },
                Target {
                    name: "broadcast p99".into(),
                    target: "≤ 1 s".into(),
                    measured: "not run".into(),
                    met: None,
                    note: "skipped".into(),
                },
            ],
            notes: vec![
                "ramp limited by\nthe workers".into(),
                "slab counts both ends".into(),
            ],
            rest: super::super::report::RestAnswers {
                calls: 1_800_000,
                non_2xx: [("429".to_string(), 3)].into(),
                no_answer: BTreeMap::new(),
            },
            internal: Some(super::super::scrape::Internal {
                services: vec![super::super::scrape::ServiceCalls {
                    service: "register".into(),
                    calls: 12_000,
                    errors: 0,
                    p50_ms: 1.0,
                    p99_ms: 25.0,
                    max_ms: 250.0,
                }],
                served: vec![super::super::scrape::ServiceCalls {
                    service: "register".into(),
                    calls: 12_000,
                    errors: 0,
                    p50_ms: 0.5,
                    p99_ms: 5.0,
                    max_ms: 100.0,
                }],
                phases: vec![super::super::scrape::PhaseCalls {
                    phase: "ramp".into(),
                    services: vec![super::super::scrape::ServiceCalls {
                        service: "register".into(),
                        calls: 11_000,
                        errors: 0,
                        p50_ms: 1.0,
                        p99_ms: 50.0,
                        max_ms: 250.0,
                    }],
                    served: Vec::new(),
                }],
                refills: 6,
                scraped: "4 of 4".into(),
                ..Default::default()
            }),
            floor: None,
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(1_000_000), "1,000,000");
        assert_eq!(int(u64::MAX), "18,446,744,073,709,551,615");
        assert_eq!(float_int(-1234.4), "-1,234");
        assert_eq!(float_int(f64::NAN), "—");
        assert_eq!(ms(1.0), "1.00 ms");
        assert_eq!(ms(812.345_6), "812.35 ms");
        assert_eq!(ms(1_234_567.0), "1,234,567.00 ms");
        assert_eq!(ms(-0.001), "0.00 ms");
        assert_eq!(ms(-12.5), "-12.50 ms");
        assert_eq!(bytes(2933), "2,933 B");
        assert_eq!(bytes(100 << 10), "100.0 KiB");
        assert_eq!(bytes(3_328_599_654), "3.1 GiB");
        assert_eq!(bytes_f(2932.6), "2,933 B");
        assert_eq!(delta(10, 4), "-6 B");
        assert_eq!(pct(999_999, 1_000_000), "100.00 %");
        assert_eq!(pct(1, 0), "—");
        assert_eq!(rate(19_120.3), "19,120/s");
        assert_eq!(share(99.999), "99.99 %");
        assert_eq!(share(100.0), "100.00 %");
    }

    #[test]
    fn full_report_renders_every_section() {
        let r = full_report();
        let md = render(&r);
        assert!(md.starts_with("# pushgate C1M benchmark — 2026-01-01, 1,000,000 connections\n"));
        assert!(md.contains("16 CPUs, 64.0 GiB RAM, Linux 6.8.0-45-generic"));
        assert!(md.contains("```sh\nbench c1m --connections 1000000 --rooms 3\n```"));
        assert!(!md.contains("Incomplete"));
        assert!(md.contains(
            "- Stored pushes around the kill: 10,012 sent (not acknowledged: 429: 12), \
             10,000 acknowledged, 10,000 received, 0 lost"
        ));
        assert!(md.contains("| register | called | 12,000 | 0 | ≤ 1 ms | ≤ 25 ms | ≤ 250 ms |"));
        assert!(md.contains("| register | served | 12,000 | 0 | ≤ 0.5 ms | ≤ 5 ms | ≤ 100 ms |"));
        assert!(
            md.contains("| ramp | register | called | 11,000 | 0 | ≤ 1 ms | ≤ 50 ms | ≤ 250 ms |")
        );
        // The targets table: escaped pipe, the three marks.
        assert!(md.contains("| what | target | measured | met? | note |"));
        assert!(md.contains(
            "| memory per connection | ≤ 2,048 B | 2,933 B | ❌ | rooms RSS \\| growth |"
        ));
        assert!(md.contains("| connections | 1,000,000 | 999,990 | ✅ |  |"));
        assert!(md.contains("| broadcast p99 | ≤ 1 s | not run | — | skipped |"));
        for title in [
            "## Ramp",
            "## Memory",
            "## Hold",
            "## Broadcasts",
            "## Channels",
            "## Unicast, fixed rate",
            "## Unicast, highest sustained rate",
            "## Room kill",
            "## REST answers",
            "## Notes",
            "## Plots",
        ] {
            assert!(md.contains(title), "{title} missing");
        }
        assert!(md.contains("- Authenticated: 999,990 of 1,000,000 (100.00 %)"));
        assert!(md.contains("connect refused: 10"));
        // Three rooms: one row each.
        assert!(md.contains("| 1 | 333,334 | 20.0 MiB | 951.7 MiB | 2,931 B |"));
        assert!(md.contains("| 3 | 333,336 |"));
        assert!(!md.contains("| median |"));
        assert!(md.contains("**2,933 B per connection**"));
        assert!(md.contains(
            "| 1 | 999,988 | 999,988 | 100.00 % | 812.35 ms | 2,249.97 ms | 0.36× | 300.00 ms | \
             700.00 ms | 999,988 / 0 / 0 (done) | 2.50 ms |"
        ));
        assert!(md.contains(
            "| 2 | 999,988 | 999,980 | 99.99 % | 790.00 ms | 2,249.97 ms | 0.35× | 290.00 ms | \
             690.00 ms | not read | 2.25 ms |"
        ));
        assert!(md.contains("CPU per delivery **0.44×** the floor"));
        assert!(md.contains("Each broadcast waits for the previous one."));
        assert!(md.contains("Floor: 4.5 µs per delivery, not given per heartbeat."));
        assert!(md.contains("`--workers-file`): 10.0.0.2:7901."));
        assert!(md.contains("rooms' CPU ÷ (heartbeats × floor CPU per heartbeat): n/a"));
        assert!(md.contains("## REST answers"));
        assert!(md.contains("by status: 429: 3"));
        assert!(md.contains("| every delivery | 1,000,000 | 15.00 ms | 32.50 ms |"));
        assert!(md.contains("closed loop"));
        assert!(md.contains("timeout: 1,000"));
        assert!(md.contains("**49,967/s achieved**"));
        assert!(md.contains("back after: not within the wait; all back after: 15,432.10 ms"));
        assert!(md.contains("- ramp limited by the workers\n"));
        assert!(md.contains(
            "![latency](latency.svg) ![connections](connections.svg) ![memory](memory.svg)"
        ));
        // The README's table is the same one.
        assert!(md.contains(&summary_table(&r)));
    }

    #[test]
    fn a_floor_measured_in_the_run_and_late_deliveries_are_shown() {
        let mut r = full_report();
        r.floor = Some(super::super::floor_run::FloorRun {
            connections: 17_858,
            authenticated: 17_858,
            heartbeat_s: 120,
            hold_s: 120.0,
            pongs: 17_900,
            hold_cpu_s: 0.7,
            ping_us: Some(39.106),
            broadcasts: 5,
            deliveries: 89_290,
            expected: 89_290,
            broadcast_pongs: 700,
            broadcast_cpu_s: 1.6,
            delivery_us: Some(17.611),
            drops: 0,
            ramp_s: 2.5,
            connect_us: Some(61.04),
            client_connect_us: Some(120.0),
            client_ping_us: Some(30.0),
            client_delivery_us: Some(9.5),
        });
        if let Some(b) = r.broadcasts.as_mut() {
            // 999,988 + 999,988 expected, 999,988 + 999,982 by the end.
            b.each[0].received_by_end = Some(999_988);
            b.each[1].received_by_end = Some(999_982);
        }
        if let Some(c) = r.channels.as_mut() {
            c.received_by_end = Some(c.expected);
        }
        let md = render(&r);
        assert!(md.contains(
            "Floor, measured in this run (below): 17.61 µs per delivery, 39.1 µs per heartbeat."
        ));
        assert!(md.contains("## Floor, measured in this run"));
        assert!(md.contains("17,858 of 17,858 connections authenticated, heartbeat 120 s"));
        assert!(md.contains("- Hold: 17,900 heartbeats in 120.0 s, 0.70 s of CPU: **39.1 µs**"));
        assert!(md.contains("89,290 of 89,290 delivered"));
        assert!(md.contains("- Ramp: 17,858 in 2.5 s: **61.0 µs** per connect"));
        assert!(md.contains("120.0 µs per connect, 30.0 µs per heartbeat, 9.50 µs per delivery"));
        // 999,988 + 999,988 expected, 1,999,970 by the end: 6 never.
        assert!(md.contains("1,999,970 of 1,999,976 received, 6 never"));
        assert!(md.contains("counted again after the unicast phases"));
    }

    #[test]
    fn many_rooms_become_min_median_max() {
        let mut r = full_report();
        if let Some(m) = r.memory.as_mut() {
            m.per_room = rooms(20);
        }
        let md = render(&r);
        assert!(md.contains("| min | 333,334 | 20.0 MiB | 951.7 MiB | 2,931 B |"));
        // Median of 20 rooms: between rooms 10 and 11.
        assert!(md.contains("| median | 333,344 |"));
        assert!(md.contains("| max | 333,353 |"));
        assert!(md.contains("20 rooms; each column's"));
        assert!(!md.contains("| 13 | 333,346 |"));
    }

    #[test]
    fn skipped_phases_and_incomplete_runs() {
        let mut r = full_report();
        r.kill = None;
        r.broadcasts = None;
        r.incomplete = Some("interrupted (Ctrl-C)".into());
        r.command = "echo ```x```".into();
        let md = render(&r);
        assert!(!md.contains("## Room kill"));
        assert!(!md.contains("## Broadcasts"));
        assert!(md.contains("## Channels"));
        assert!(md.contains("> ⚠️ **Incomplete run:** interrupted (Ctrl-C)."));
        assert!(md.contains("````sh\necho ```x```\n````"));
    }

    #[test]
    fn empty_report_does_not_panic() {
        let r = Report::default();
        let md = render(&r);
        assert!(md.contains("# pushgate C1M benchmark — date unknown, 0 connections"));
        assert!(md.contains("_No targets measured._"));
        assert!(!md.contains("## Ramp"));
        assert!(!md.contains("## Notes"));
        assert!(md.contains("![memory](memory.svg)"));
        assert_eq!(summary_table(&r), "_No targets measured._\n");
        // Phases present but empty.
        let r = Report {
            memory: Some(Memory::default()),
            broadcasts: Some(Broadcasts::default()),
            unicast_max: Some(Unicast::default()),
            kill: Some(Kill::default()),
            ..Report::default()
        };
        let md = render(&r);
        assert!(md.contains("## Memory"));
        assert!(md.contains("| end to end | 0 | 0.00 ms |"));
    }
}
