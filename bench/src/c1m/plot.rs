//! SVG plots of a C1M report, drawn by hand (no plotting crate):
//! `latency.svg` (percentile curves), `connections.svg` (live connections
//! over time) and `memory.svg` (memory per connection, room RSS and slab over
//! time).
//!
//! Every plot is a stack of [`Chart`] panels: a frame with "nice" ticks and a
//! grid, the series as polylines, a legend, and marker lines (phase changes,
//! the memory target).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::markdown::int;
use super::report::{Latency, Report, Sample};

/// Width of every plot, px.
const WIDTH: f64 = 960.0;
/// Height of one panel, px.
const PANEL_HEIGHT: f64 = 420.0;
/// Space left of the plot area (tick labels, axis label), px.
const LEFT: f64 = 90.0;
/// Space right of the plot area, px.
const RIGHT: f64 = 30.0;
/// Space above the plot area (title, legend), px.
const TOP: f64 = 70.0;
/// Space below the plot area (tick labels, axis label), px.
const BOTTOM: f64 = 55.0;
/// Series colours, in order.
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
/// The memory target, bytes of room memory per connection.
const TARGET_BYTES_PER_CONN: f64 = 2048.0;
/// Below this many live connections, memory per connection is not plotted
/// (the rooms' own baseline would dominate).
const MIN_LIVE_PER_CONN: u64 = 1000;
/// Bytes in a GiB.
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Writes `latency.svg`, `connections.svg` and `memory.svg` into `dir`
/// (created if missing) and returns their paths. Missing phases leave their
/// series out; a panel without any data says so.
pub(crate) fn write_plots(r: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let plots = [
        (
            "latency.svg",
            document("C1M delivery latency", &[latency_chart(r)]),
        ),
        (
            "connections.svg",
            document("C1M live connections", &[connections_chart(&r.timeline)]),
        ),
        (
            "memory.svg",
            document("C1M memory", &memory_charts(&r.timeline)),
        ),
    ];
    let mut paths = Vec::with_capacity(plots.len());
    for (name, svg) in plots {
        let path = dir.join(name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        paths.push(path);
    }
    Ok(paths)
}

/// Latency percentile curves of every phase that measured one, on a "nines"
/// x axis (p50, p90, p99, p99.9, ... equally spaced; the right edge is the max).
fn latency_chart(r: &Report) -> Chart {
    let sources: [(&str, Option<&Latency>); 4] = [
        (
            "unicast, fixed rate",
            r.unicast_fixed.as_ref().map(|u| &u.latency),
        ),
        (
            "unicast, max rate",
            r.unicast_max.as_ref().map(|u| &u.latency),
        ),
        ("broadcasts", r.broadcasts.as_ref().map(|b| &b.latency)),
        ("channels", r.channels.as_ref().map(|c| &c.latency)),
    ];
    let finite = |(p, ms): &(f64, f64)| p.is_finite() && ms.is_finite();
    // The deepest percentile below 100 decides how many nines the axis shows.
    let deepest = sources
        .iter()
        .filter_map(|(_, l)| *l)
        .flat_map(|l| l.curve.iter().filter(|pt| finite(pt)))
        .filter(|(p, _)| *p < 100.0)
        .map(|(p, _)| nines(*p))
        .fold(0.0, f64::max);
    let top = ((deepest + 1e-9).floor() + 1.0).clamp(2.0, 7.0);
    let mut chart = Chart::new(
        "Delivery latency by percentile",
        "percentile (nines scale; right edge: max)",
        "milliseconds (log scale)",
    );
    chart.x_axis = Some(nines_axis(top));
    // Broadcasts to every connection take orders of magnitude longer than a
    // unicast: only a log scale shows both.
    chart.y_log = true;
    for (i, (name, latency)) in sources.iter().enumerate() {
        let Some(l) = latency else { continue };
        let points = l
            .curve
            .iter()
            .filter(|pt| finite(pt))
            .map(|&(p, ms)| (nines_x(p, top), ms));
        chart.series.push(Series::new(
            format!("{name} ({} samples)", int(l.count)),
            COLORS[i % COLORS.len()],
            points,
        ));
    }
    chart
}

/// How many nines a percentile has: 0 for p0, 1 for p90, 2 for p99, ...
fn nines(p: f64) -> f64 {
    -(1.0 - p.clamp(0.0, 100.0) / 100.0).log10()
}

/// Where percentile `p` lies on a nines axis ending at `top` (where p100 goes).
fn nines_x(p: f64, top: f64) -> f64 {
    if p >= 100.0 {
        top
    } else {
        nines(p).min(top)
    }
}

/// The nines axis: p0, p50, p90, p99, p99.9, ... up to `top`, labelled `max`.
fn nines_axis(top: f64) -> Axis {
    let mut ticks = vec![(0.0, "p0".to_string()), (nines(50.0), "p50".to_string())];
    let mut k = 1.0;
    while k < top - 1e-9 {
        let label = match k as usize {
            1 => "p90".to_string(),
            2 => "p99".to_string(),
            n => format!("p99.{}", "9".repeat(n - 2)),
        };
        ticks.push((k, label));
        k += 1.0;
    }
    ticks.push((top, "max".to_string()));
    Axis {
        lo: 0.0,
        hi: top,
        log: false,
        ticks,
    }
}

/// Live connections over time, phases marked.
fn connections_chart(timeline: &[Sample]) -> Chart {
    let mut chart = Chart::new("Live connections", "seconds since start", "connections");
    chart.series.push(Series::new(
        "live authenticated connections",
        COLORS[0],
        timeline.iter().map(|s| (s.t_s, s.live as f64)),
    ));
    chart.vlines = phase_changes(timeline);
    chart
}

/// Two panels: room memory per live connection (with the target), then room
/// RSS and kernel slab in GiB.
fn memory_charts(timeline: &[Sample]) -> Vec<Chart> {
    // Before the ramp: the rooms' own memory, taken off for the growth series.
    let baseline = timeline
        .iter()
        .map(|s| s.rooms_rss)
        .find(|&rss| rss > 0)
        .unwrap_or(0);
    // Gaps (NaN) where too few connections are live for the ratio to mean much.
    let per_conn = |f: fn(&Sample, u64) -> f64| {
        timeline.iter().map(move |s| {
            if s.live > MIN_LIVE_PER_CONN {
                (s.t_s, f(s, baseline))
            } else {
                (s.t_s, f64::NAN)
            }
        })
    };
    let mut per = Chart::new(
        "Room memory per live connection",
        "seconds since start",
        "bytes per connection",
    );
    per.series.push(Series::new(
        "rooms RSS / live",
        COLORS[0],
        per_conn(|s, _| s.rooms_rss as f64 / s.live as f64),
    ));
    per.series.push(Series::new(
        "(rooms RSS − RSS before the ramp) / live",
        COLORS[2],
        per_conn(|s, base| s.rooms_rss.saturating_sub(base) as f64 / s.live as f64),
    ));
    per.hlines.push(Marker {
        at: TARGET_BYTES_PER_CONN,
        label: format!("target {} B", int(TARGET_BYTES_PER_CONN as u64)),
    });
    // Early in the ramp the baseline spreads over few connections: keep
    // those values from flattening the interesting part.
    let mut values: Vec<f64> = per
        .series
        .iter()
        .flat_map(|s| s.runs.iter().flatten().map(|p| p.1))
        .collect();
    values.sort_by(f64::total_cmp);
    if let Some(median) = values.get(values.len() / 2) {
        per.y_cap = Some((2.0 * median).max(2.0 * TARGET_BYTES_PER_CONN));
    }
    per.vlines = phase_changes(timeline);

    let mut total = Chart::new("Memory", "seconds since start", "GiB");
    total.series.push(Series::new(
        "rooms RSS",
        COLORS[0],
        timeline.iter().map(|s| (s.t_s, s.rooms_rss as f64 / GIB)),
    ));
    total.series.push(Series::new(
        "kernel slab",
        COLORS[1],
        timeline.iter().map(|s| (s.t_s, s.slab as f64 / GIB)),
    ));
    total.vlines = phase_changes(timeline);
    vec![per, total]
}

/// A marker wherever the timeline's phase changes (and at its first sample).
fn phase_changes(timeline: &[Sample]) -> Vec<Marker> {
    let mut markers = Vec::new();
    let mut last: Option<&str> = None;
    for s in timeline {
        if last != Some(s.phase.as_str()) && s.t_s.is_finite() {
            markers.push(Marker {
                at: s.t_s,
                label: s.phase.clone(),
            });
        }
        last = Some(&s.phase);
    }
    markers
}

/// A line to plot: its legend name, colour, and runs of points (a polyline
/// each, so that gaps stay gaps).
struct Series {
    /// Legend text.
    name: String,
    /// Stroke colour.
    color: &'static str,
    /// Runs of finite points.
    runs: Vec<Vec<(f64, f64)>>,
}

impl Series {
    /// A series from points in x order; a non-finite point breaks the line.
    fn new(
        name: impl Into<String>,
        color: &'static str,
        points: impl IntoIterator<Item = (f64, f64)>,
    ) -> Self {
        let mut runs = vec![Vec::new()];
        for (x, y) in points {
            if x.is_finite() && y.is_finite() {
                if let Some(run) = runs.last_mut() {
                    run.push((x, y));
                }
            } else if runs.last().is_some_and(|r| !r.is_empty()) {
                runs.push(Vec::new());
            }
        }
        runs.retain(|r| !r.is_empty());
        Self {
            name: name.into(),
            color,
            runs,
        }
    }
}

/// A labelled marker line: vertical at an x value or horizontal at a y value.
struct Marker {
    /// Where, in data units.
    at: f64,
    /// Label drawn next to the line.
    label: String,
}

/// An axis: its range, scale and labelled ticks.
#[derive(Clone)]
struct Axis {
    /// Low end, data units.
    lo: f64,
    /// High end, data units.
    hi: f64,
    /// Logarithmic (else linear).
    log: bool,
    /// Positions and labels.
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// A linear axis over `lo..hi` with about `count` ticks at a 1-2-5 step;
    /// `snap` widens the range to the outer ticks.
    fn linear(lo: f64, hi: f64, count: u32, snap: bool) -> Self {
        let (step, ticks) = nice_ticks(lo, hi, count);
        let (lo, hi) = match (snap, ticks.first(), ticks.last()) {
            (true, Some(&first), Some(&last)) if last > first => (first, last),
            _ => (lo, hi),
        };
        let magnitude = lo.abs().max(hi.abs());
        let ticks = ticks
            .into_iter()
            .filter(|t| *t >= lo - step * 1e-6 && *t <= hi + step * 1e-6)
            .map(|t| (t, tick_label(t, step, magnitude)))
            .collect();
        Self {
            lo,
            hi,
            log: false,
            ticks,
        }
    }

    /// A logarithmic axis from the decade at or below `lowest` (the smallest
    /// positive value) to the decade at or above `highest`; ticks at 1, 2
    /// and 5 times powers of ten when there are few decades.
    fn log(lowest: f64, highest: f64) -> Self {
        let highest = if highest > 0.0 { highest } else { 1.0 };
        let lowest = if lowest > 0.0 && lowest <= highest {
            lowest
        } else {
            highest / 10.0
        };
        let lo_exp = (lowest.log10() + 1e-9).floor();
        let hi_exp = (highest.log10() - 1e-9).ceil().max(lo_exp + 1.0);
        let mut ticks = Vec::new();
        let mut e = lo_exp;
        while e <= hi_exp {
            let decade = 10f64.powf(e);
            ticks.push((decade, log_label(decade)));
            if hi_exp - lo_exp <= 3.0 && e < hi_exp {
                for m in [2.0, 5.0] {
                    ticks.push((m * decade, log_label(m * decade)));
                }
            }
            e += 1.0;
        }
        Self {
            lo: 10f64.powf(lo_exp),
            hi: 10f64.powf(hi_exp),
            log: true,
            ticks,
        }
    }

    /// Where `v` lies along the axis, 0 at `lo` and 1 at `hi` (on a log axis,
    /// values at or below zero go to `lo`).
    fn frac(&self, v: f64) -> f64 {
        if self.log {
            let v = v.max(self.lo);
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }
}

/// One panel: title, legend, frame with ticks, grid and axis labels, the
/// series and marker lines. Axes are linear; y starts at 0.
struct Chart {
    /// Bold, top left.
    title: String,
    /// Below the x axis.
    x_label: String,
    /// Left of the y axis, rotated.
    y_label: String,
    /// The lines.
    series: Vec<Series>,
    /// Vertical dashed lines (phase changes), labelled at the top.
    vlines: Vec<Marker>,
    /// Horizontal dashed lines (targets), labelled at the right.
    hlines: Vec<Marker>,
    /// A fixed x axis; else linear, from the data.
    x_axis: Option<Axis>,
    /// A logarithmic y axis (else linear from 0).
    y_log: bool,
    /// Highest y shown; values above are cut off (and the panel says so).
    y_cap: Option<f64>,
}

impl Chart {
    /// An empty chart.
    fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        Self {
            title: title.to_string(),
            x_label: x_label.to_string(),
            y_label: y_label.to_string(),
            series: Vec::new(),
            vlines: Vec::new(),
            hlines: Vec::new(),
            x_axis: None,
            y_log: false,
            y_cap: None,
        }
    }

    /// Appends the panel as a `<g>` placed `top` px down; `id` makes its
    /// clip path's id unique in the document.
    fn render(&self, out: &mut String, top: f64, id: usize) {
        let (pw, ph) = (WIDTH - LEFT - RIGHT, PANEL_HEIGHT - TOP - BOTTOM);
        out.push_str(&format!("<g transform=\"translate(0,{top})\">\n"));
        text(
            out,
            LEFT,
            26.0,
            "start",
            "font-size=\"16\" font-weight=\"bold\"",
            &self.title,
        );
        let points: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.runs.iter().flatten().copied())
            .collect();
        if points.is_empty() {
            frame(out, pw, ph);
            text(
                out,
                LEFT + pw / 2.0,
                TOP + ph / 2.0,
                "middle",
                "font-size=\"18\" fill=\"#888\"",
                "no data",
            );
            out.push_str("</g>\n");
            return;
        }

        // Axes: x from the data and the markers (or fixed), y from 0 (or log).
        let x_axis = match &self.x_axis {
            Some(a) => a.clone(),
            None => {
                let xs = points.iter().map(|p| p.0);
                let (lo, hi) = widen(min_max(xs.chain(self.vlines.iter().map(|m| m.at))));
                Axis::linear(lo, hi, 8, false)
            }
        };
        let ys = points.iter().map(|p| p.1);
        let (data_lo, data_hi) = min_max(ys.clone().chain(self.hlines.iter().map(|m| m.at)));
        let capped = self.y_cap.filter(|&cap| cap < data_hi);
        let y_hi = capped.unwrap_or(data_hi);
        let y_axis = if self.y_log {
            let lowest = ys.filter(|&y| y > 0.0).fold(f64::INFINITY, f64::min);
            Axis::log(lowest, y_hi)
        } else {
            let (lo, hi) = widen((data_lo.min(0.0), y_hi));
            Axis::linear(lo, hi, 5, true)
        };
        let px = |x: f64| LEFT + x_axis.frac(x) * pw;
        // Values above a cap end just past the top edge, where the clip path cuts them.
        let py = |y: f64| (TOP + ph - y_axis.frac(y) * ph).clamp(TOP - 2.0, TOP + ph + 2.0);

        // Grid and tick labels.
        for (t, label) in &y_axis.ticks {
            let y = py(*t);
            out.push_str(&format!(
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\n",
                LEFT + pw
            ));
            text(out, LEFT - 8.0, y + 4.0, "end", "", label);
        }
        for (t, label) in &x_axis.ticks {
            let x = px(*t);
            out.push_str(&format!(
                "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#e4e4e4\"/>\n",
                TOP + ph
            ));
            text(out, x, TOP + ph + 18.0, "middle", "", label);
        }
        frame(out, pw, ph);
        text(
            out,
            LEFT + pw / 2.0,
            TOP + ph + 42.0,
            "middle",
            "",
            &self.x_label,
        );
        out.push_str(&format!(
            "<text transform=\"translate(22,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
            TOP + ph / 2.0,
            esc(&self.y_label)
        ));
        if capped.is_some() {
            let top_label = y_axis.ticks.last().map_or("", |t| t.1.as_str());
            text(
                out,
                LEFT + pw,
                26.0,
                "end",
                "font-size=\"11\" fill=\"#888\"",
                &format!("y axis cut at {top_label}; higher values off the chart"),
            );
        }

        // Marker lines.
        let mut last_label = f64::NEG_INFINITY;
        for m in &self.vlines {
            if !(x_axis.lo..=x_axis.hi).contains(&m.at) {
                continue;
            }
            let x = px(m.at);
            out.push_str(&format!(
                "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\n",
                TOP + ph
            ));
            // Labels closer than a line of text would overlap: skip those.
            if x - last_label >= 14.0 {
                out.push_str(&format!(
                    "<text transform=\"translate({:.1},{:.1}) rotate(90)\" font-size=\"11\" fill=\"#666\">{}</text>\n",
                    x + 3.0,
                    TOP + 6.0,
                    esc(&m.label)
                ));
                last_label = x;
            }
        }
        for m in &self.hlines {
            if !(y_axis.lo..=y_axis.hi).contains(&m.at) {
                continue;
            }
            let y = py(m.at);
            out.push_str(&format!(
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ff7f0e\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/>\n",
                LEFT + pw
            ));
            text(
                out,
                LEFT + pw - 4.0,
                y - 5.0,
                "end",
                "fill=\"#ff7f0e\"",
                &m.label,
            );
        }

        // The series, clipped to the plot area.
        out.push_str(&format!(
            "<clipPath id=\"plot{id}\"><rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\"/></clipPath>\n<g clip-path=\"url(#plot{id})\">\n"
        ));
        for s in &self.series {
            for run in &s.runs {
                if let [(x, y)] = run.as_slice() {
                    out.push_str(&format!(
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{}\"/>\n",
                        px(*x),
                        py(*y),
                        s.color
                    ));
                    continue;
                }
                let pts: Vec<String> = run
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                    .collect();
                out.push_str(&format!(
                    "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\" stroke-linejoin=\"round\" points=\"{}\"/>\n",
                    s.color,
                    pts.join(" ")
                ));
            }
        }
        out.push_str("</g>\n");

        // Legend, one row under the title.
        let mut x = LEFT;
        for s in self.series.iter().filter(|s| !s.runs.is_empty()) {
            out.push_str(&format!(
                "<line x1=\"{x:.1}\" y1=\"47\" x2=\"{:.1}\" y2=\"47\" stroke=\"{}\" stroke-width=\"3\"/>\n",
                x + 22.0,
                s.color
            ));
            text(out, x + 28.0, 51.0, "start", "", &s.name);
            x += 28.0 + 6.5 * s.name.chars().count() as f64 + 20.0;
        }
        out.push_str("</g>\n");
    }
}

/// A whole SVG document: the charts stacked vertically.
fn document(title: &str, charts: &[Chart]) -> String {
    let height = PANEL_HEIGHT * charts.len().max(1) as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n"
    );
    out.push_str(&format!("<title>{}</title>\n", esc(title)));
    out.push_str("<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n");
    for (i, chart) in charts.iter().enumerate() {
        chart.render(&mut out, i as f64 * PANEL_HEIGHT, i);
    }
    out.push_str("</svg>\n");
    out
}

/// The plot area's frame.
fn frame(out: &mut String, pw: f64, ph: f64) {
    out.push_str(&format!(
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>\n"
    ));
}

/// A `<text>` element; `attrs` are extra attributes, written as given.
fn text(out: &mut String, x: f64, y: f64, anchor: &str, attrs: &str, content: &str) {
    out.push_str(&format!(
        "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\" {attrs}>{}</text>\n",
        esc(content)
    ));
}

/// Escapes text for XML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Smallest and largest of finite values (`(0, 0)` when there are none).
fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo <= hi {
        (lo, hi)
    } else {
        (0.0, 0.0)
    }
}

/// A range with some width: a single value gets ±1 (or ±10 %).
fn widen((lo, hi): (f64, f64)) -> (f64, f64) {
    if hi > lo {
        (lo, hi)
    } else {
        let d = (lo.abs() * 0.1).max(1.0);
        (lo - d, hi + d)
    }
}

/// Ticks at a 1-2-5 step, about `count` of them, from at or below `lo` to
/// at or above `hi`. Returns the step and the ticks.
fn nice_ticks(lo: f64, hi: f64, count: u32) -> (f64, Vec<f64>) {
    let raw = (hi - lo) / f64::from(count.max(1));
    let mag = 10f64.powf(raw.log10().floor());
    let step = match raw / mag {
        f if f <= 1.0 => mag,
        f if f <= 2.0 => 2.0 * mag,
        f if f <= 5.0 => 5.0 * mag,
        _ => 10.0 * mag,
    };
    if !step.is_finite() || step <= 0.0 {
        return (1.0, vec![lo, hi]);
    }
    let first = (lo / step).floor();
    let ticks = (0..=2 * count.max(1) + 2)
        .map(|k| (first + f64::from(k)) * step)
        .take_while(|t| *t < hi + step * 0.999)
        .collect();
    (step, ticks)
}

/// A tick label: `k` or `M` suffix when the axis reaches 10,000 (or a
/// million), as many decimals as the step needs.
fn tick_label(v: f64, step: f64, magnitude: f64) -> String {
    if v.abs() < step * 1e-6 {
        return "0".to_string();
    }
    let (scale, suffix) = if magnitude >= 1e6 {
        (1e6, "M")
    } else if magnitude >= 1e4 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let s = step / scale;
    let decimals = if s >= 1.0 {
        0
    } else {
        (-s.log10() - 1e-9).ceil().clamp(0.0, 6.0) as usize
    };
    format!("{:.*}{suffix}", decimals, v / scale)
}

/// A log axis label: `0.05`, `2`, `10,000`.
fn log_label(v: f64) -> String {
    if v >= 1.0 {
        int(v.round() as u64)
    } else {
        let decimals = (-v.log10() - 1e-9).ceil().clamp(0.0, 9.0) as usize;
        format!("{v:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::{Broadcasts, Channels, Unicast};
    use super::*;

    fn latency(scale: f64) -> Latency {
        // Percentiles thickening towards the tail, as a recorder would give.
        let mut curve: Vec<(f64, f64)> = (0..90)
            .map(|i| (f64::from(i), 1.0 + f64::from(i) / 30.0))
            .collect();
        curve.extend([
            (90.0, 4.0),
            (99.0, 9.0),
            (99.9, 20.0),
            (99.99, 40.0),
            (100.0, 55.0),
        ]);
        Latency {
            count: 1_000_000,
            p50: 2.6 * scale,
            p90: 4.0 * scale,
            p99: 9.0 * scale,
            p999: 20.0 * scale,
            max: 55.0 * scale,
            curve: curve.into_iter().map(|(p, ms)| (p, ms * scale)).collect(),
        }
    }

    /// 100 samples: ramp to a million, hold, broadcast, kill.
    fn timeline() -> Vec<Sample> {
        (0..100)
            .map(|i| {
                let live = if i < 40 { i * i * 640 } else { 1_000_000 };
                let phase = match i {
                    0..40 => "ramp",
                    40..70 => "hold",
                    70..90 => "broadcast",
                    _ => "kill <&\"room\">",
                };
                Sample {
                    t_s: f64::from(i as u32) * 1.5,
                    phase: phase.to_string(),
                    live,
                    rooms_rss: (60 << 20) + live * 2933,
                    workers_rss: 1 << 30,
                    slab: (200 << 20) + live * 3221,
                    mem_available: 40 << 30,
                    rooms_cpu_s: f64::from(i as u32) * 0.3,
                }
            })
            .collect()
    }

    fn report() -> Report {
        Report {
            unicast_fixed: Some(Unicast {
                latency: latency(1.0),
                ..Unicast::default()
            }),
            unicast_max: Some(Unicast {
                latency: latency(3.0),
                ..Unicast::default()
            }),
            broadcasts: Some(Broadcasts {
                latency: latency(20.0),
                ..Broadcasts::default()
            }),
            channels: Some(Channels {
                latency: latency(2.0),
                ..Channels::default()
            }),
            timeline: timeline(),
            ..Report::default()
        }
    }

    /// Tags nest and close, and every `&` starts an entity.
    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        for (i, _) in svg.match_indices('&') {
            let rest = &svg[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| rest.starts_with(e)),
                "stray & at {i}"
            );
        }
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = start + rest[start..].find('>').expect("unclosed tag");
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "< inside a tag: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().expect("tag name"));
            }
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "unclosed: {open:?}");
    }

    /// The coordinates of every polyline, checked to be numbers in the picture.
    fn polyline_points(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.split("<polyline ")
            .skip(1)
            .map(|p| {
                let pts = p.split("points=\"").nth(1).expect("points");
                let pts = &pts[..pts.find('"').expect("end of points")];
                pts.split(' ')
                    .map(|xy| {
                        let (x, y) = xy.split_once(',').expect("x,y");
                        let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                        assert!((0.0..=WIDTH).contains(&x), "x {x}");
                        assert!(y >= 0.0, "y {y}");
                        (x, y)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn writes_three_plots() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("plots");
        let paths = write_plots(&report(), &out).unwrap();
        let names: Vec<_> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["latency.svg", "connections.svg", "memory.svg"]);
        for p in &paths {
            let svg = std::fs::read_to_string(p).unwrap();
            assert_well_formed(&svg);
            assert!(!svg.contains("no data"), "{}", p.display());
            assert!(!polyline_points(&svg).is_empty(), "{}", p.display());
        }

        let latency = std::fs::read_to_string(&paths[0]).unwrap();
        assert_eq!(polyline_points(&latency).len(), 4);
        for name in [
            "unicast, fixed rate (1,000,000 samples)",
            "unicast, max rate",
            "broadcasts",
            "channels",
        ] {
            assert!(latency.contains(name), "{name}");
        }
        for tick in [">p50<", ">p99<", ">p99.9<", ">p99.99<", ">max<"] {
            assert!(latency.contains(tick), "{tick}");
        }

        let conns = std::fs::read_to_string(&paths[1]).unwrap();
        let lines = polyline_points(&conns);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), 100);
        // The line goes up during the ramp (smaller y is higher).
        assert!(lines[0][39].1 < lines[0][1].1);
        for phase in [
            ">ramp<",
            ">hold<",
            ">broadcast<",
            ">kill &lt;&amp;&quot;room&quot;&gt;<",
        ] {
            assert!(conns.contains(phase), "{phase}");
        }
        assert!(conns.contains(">1.0M<"));

        let memory = std::fs::read_to_string(&paths[2]).unwrap();
        // Per connection: two series, only where more than 1,000 are live
        // (not in samples 0 and 1); then rooms RSS and slab over all 100.
        let lines = polyline_points(&memory);
        assert_eq!(
            lines.iter().map(Vec::len).collect::<Vec<_>>(),
            [98, 98, 100, 100]
        );
        assert!(memory.contains("target 2,048 B"));
        assert!(memory.contains("y axis cut at"));
        assert!(memory.contains("kernel slab"));
    }

    #[test]
    fn missing_series_are_left_out() {
        let mut r = report();
        r.unicast_max = None;
        r.broadcasts = None;
        if let Some(c) = r.channels.as_mut() {
            c.latency.curve.clear();
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = write_plots(&r, dir.path()).unwrap();
        let latency = std::fs::read_to_string(&paths[0]).unwrap();
        assert_well_formed(&latency);
        assert_eq!(polyline_points(&latency).len(), 1);
        assert!(latency.contains("unicast, fixed rate"));
        assert!(!latency.contains("broadcasts"));
        assert!(!latency.contains("channels ("));
    }

    #[test]
    fn empty_report_says_no_data() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_plots(&Report::default(), dir.path()).unwrap();
        assert_eq!(paths.len(), 3);
        for p in &paths {
            let svg = std::fs::read_to_string(p).unwrap();
            assert_well_formed(&svg);
            assert!(svg.contains(">no data<"), "{}", p.display());
            assert!(!svg.contains("<polyline"));
        }
        // A single sample, and non-finite values, do not break anything.
        let r = Report {
            timeline: vec![Sample {
                t_s: 5.0,
                phase: "ramp".into(),
                live: 5000,
                rooms_rss: 1 << 30,
                ..Sample::default()
            }],
            channels: Some(Channels {
                latency: Latency {
                    curve: vec![(50.0, f64::NAN), (f64::INFINITY, 1.0), (100.0, 3.0)],
                    ..Latency::default()
                },
                ..Channels::default()
            }),
            ..Report::default()
        };
        let paths = write_plots(&r, dir.path()).unwrap();
        for p in &paths {
            let svg = std::fs::read_to_string(p).unwrap();
            assert_well_formed(&svg);
            assert!(svg.contains("<circle"), "{}", p.display());
            assert!(
                !svg.contains("NaN") && !svg.contains("inf"),
                "{}",
                p.display()
            );
        }
    }

    #[test]
    fn axes() {
        assert!((nines_x(99.0, 5.0) - 2.0).abs() < 1e-9);
        assert!((nines_x(90.0, 5.0) - 1.0).abs() < 1e-9);
        assert_eq!(nines_x(100.0, 5.0), 5.0);
        assert_eq!(nines_x(0.0, 5.0), 0.0);
        let labels: Vec<String> = nines_axis(4.0).ticks.into_iter().map(|t| t.1).collect();
        assert_eq!(labels, ["p0", "p50", "p90", "p99", "p99.9", "max"]);

        let (step, ticks) = nice_ticks(0.0, 1_000_000.0, 5);
        assert_eq!(step, 200_000.0);
        assert_eq!(ticks.len(), 6);
        let labels: Vec<String> = ticks.iter().map(|&t| tick_label(t, step, 1e6)).collect();
        assert_eq!(labels, ["0", "0.2M", "0.4M", "0.6M", "0.8M", "1.0M"]);
        let (step, ticks) = nice_ticks(0.0, 3.3, 5);
        assert_eq!(step, 1.0);
        assert_eq!(ticks.last(), Some(&4.0));
        assert_eq!(tick_label(0.4, 0.2, 1.0), "0.4");
        assert_eq!(tick_label(25_000.0, 5_000.0, 30_000.0), "25k");
        assert_eq!(widen((3.0, 3.0)), (2.0, 4.0));
        let log = Axis::log(0.3, 55.0);
        assert_eq!((log.lo, log.hi), (0.1, 100.0));
        let labels: Vec<&str> = log.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(
            labels,
            ["0.1", "0.2", "0.5", "1", "2", "5", "10", "20", "50", "100"]
        );
        assert!((log.frac(10.0) - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(log.frac(0.0), 0.0);
        let wide = Axis::log(0.01, 20_000.0);
        assert_eq!(wide.ticks.len(), 8);
        assert_eq!(wide.ticks[7].1, "100,000");
        assert_eq!(Axis::log(f64::INFINITY, 0.0).ticks.len(), 4);
        assert_eq!(min_max([f64::NAN].into_iter()), (0.0, 0.0));
        assert_eq!(esc("a<b & 'c'"), "a&lt;b &amp; &apos;c&apos;");
    }
}
