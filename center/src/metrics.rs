//! The center's Prometheus metrics (prometheus-client), and the extra text
//! sources that `/metrics` appends (the room's, in standalone mode).

use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Appends Prometheus text (`# TYPE` lines and samples) to the output of `/metrics`.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Label of a push counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub(crate) kind: &'static str,
}

/// Labels of the HTTP request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    pub(crate) method: String,
    pub(crate) route: String,
    pub(crate) status: u16,
}

/// Every metric of a center.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) pushes: Family<KindLabel, Counter>,
    pub(crate) push_errors: Family<KindLabel, Counter>,
    pub(crate) deliveries: Counter,
    pub(crate) stored: Counter,
    pub(crate) room_errors: Counter,
    pub(crate) fanout_users: Counter,
    pub(crate) resyncs: Counter,
    pub(crate) push_latency: Histogram,
    pub(crate) store_latency: Histogram,
    pub(crate) queue_depth: Gauge,
    pub(crate) batch_size: Histogram,
    pub(crate) http: Family<HttpLabels, Counter>,
    pub(crate) dir_connections: Gauge,
    pub(crate) dir_users: Gauge,
    pub(crate) shed: Family<KindLabel, Counter>,
    pub(crate) broadcast_skipped: Counter,
    pub(crate) broadcast_seconds: Histogram,
    pub(crate) broadcast_waiting: Gauge,
    sources: RwLock<Vec<MetricsSource>>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pushgate_center");
        let pushes = Family::<KindLabel, Counter>::default();
        let push_errors = Family::<KindLabel, Counter>::default();
        let deliveries = Counter::default();
        let stored = Counter::default();
        let room_errors = Counter::default();
        let fanout_users = Counter::default();
        let resyncs = Counter::default();
        let push_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let store_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let queue_depth = Gauge::default();
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        let http = Family::<HttpLabels, Counter>::default();
        let dir_connections = Gauge::default();
        let dir_users = Gauge::default();
        let shed = Family::<KindLabel, Counter>::default();
        let broadcast_skipped = Counter::default();
        let broadcast_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let broadcast_waiting = Gauge::default();
        registry.register(
            "shed",
            "Pushes refused at admission with 429 (the center could not serve them within the request timeout), by kind",
            shed.clone(),
        );
        registry.register(
            "broadcast_skipped",
            "Connections a broadcast did not reach although they were live when it reached their room (slow consumer, closed first)",
            broadcast_skipped.clone(),
        );
        registry.register(
            "broadcast_seconds",
            "From a broadcast's start until every connection wrote it or dropped it",
            broadcast_seconds.clone(),
        );
        registry.register(
            "broadcast_waiting",
            "Broadcasts waiting for their turn in the lane",
            broadcast_waiting.clone(),
        );
        registry.register(
            "pushes",
            "Pushes accepted, by kind (users, channel, broadcast)",
            pushes.clone(),
        );
        registry.register(
            "push_errors",
            "Pushes that failed after validation, by kind",
            push_errors.clone(),
        );
        registry.register(
            "deliveries",
            "Connections a message was written to",
            deliveries.clone(),
        );
        registry.register(
            "stored",
            "User queue appends (one per user of a stored push)",
            stored.clone(),
        );
        registry.register(
            "room_errors",
            "Calls to a room that failed",
            room_errors.clone(),
        );
        registry.register(
            "fanout_users",
            "Users whose register could not be asked, delivered through every live room",
            fanout_users.clone(),
        );
        registry.register(
            "resyncs",
            "Connections asked to replay in place after a failed room call",
            resyncs.clone(),
        );
        registry.register(
            "push_latency_seconds",
            "From accepting a push to its delivery to rooms",
            push_latency.clone(),
        );
        registry.register(
            "store_latency_seconds",
            "One batch's store write (every stored push of a dispatcher batch)",
            store_latency.clone(),
        );
        registry.register(
            "dispatch_queue_depth",
            "Pushes waiting for the dispatcher",
            queue_depth.clone(),
        );
        registry.register(
            "dispatch_batch_size",
            "Pushes handled together by the dispatcher",
            batch_size.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests, by method, route and status",
            http.clone(),
        );
        registry.register(
            "directory_connections",
            "Live connections in the directory",
            dir_connections.clone(),
        );
        registry.register(
            "directory_users",
            "Users with at least one live connection",
            dir_users.clone(),
        );
        Metrics {
            registry,
            pushes,
            push_errors,
            deliveries,
            stored,
            room_errors,
            fanout_users,
            resyncs,
            push_latency,
            store_latency,
            queue_depth,
            batch_size,
            http,
            dir_connections,
            dir_users,
            shed,
            broadcast_skipped,
            broadcast_seconds,
            broadcast_waiting,
            sources: RwLock::new(Vec::new()),
        }
    }

    pub(crate) fn add_source(&self, source: MetricsSource) {
        self.sources.write().push(source);
    }

    /// Renders everything as Prometheus text (format 0.0.4).
    pub(crate) fn render(&self) -> String {
        let mut om = String::with_capacity(8 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut om, &self.registry) {
            tracing::warn!(%e, "metrics encoding failed");
        }
        // The encoder writes OpenMetrics; we serve the Prometheus text
        // format (so that appended sources may follow).
        let mut out = openmetrics_to_text(&om);
        let sources: Vec<MetricsSource> = self.sources.read().clone();
        for s in sources {
            s(&mut out);
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

/// OpenMetrics text (prometheus-client's encoding) as Prometheus text
/// format 0.0.4: a counter family `x` is named by its sample `x_total` in
/// its `# HELP` and `# TYPE` lines (so that strict 0.0.4 parsers, such as
/// `promtool check metrics` and Python's prometheus_client, type the
/// samples), `# UNIT` lines and the final `# EOF` are dropped.
fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 16 * counters.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((kind, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) && !name.ends_with("_total") {
                out.push_str(kind);
                out.push_str(name);
                out.push_str("_total");
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_samples() {
        let m = Metrics::new();
        m.pushes.get_or_create(&KindLabel { kind: "users" }).inc();
        m.deliveries.inc();
        let text = m.render();
        assert!(
            text.contains("# TYPE pushgate_center_pushes_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP pushgate_center_pushes_total Pushes accepted"),
            "{text}"
        );
        assert!(
            text.contains("pushgate_center_pushes_total{kind=\"users\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE pushgate_center_deliveries_total counter\n"));
        // Gauges and histograms keep their names; no OpenMetrics-only lines.
        assert!(text.contains("# TYPE pushgate_center_dispatch_queue_depth gauge\n"));
        assert!(text.contains("# TYPE pushgate_center_push_latency_seconds histogram\n"));
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        // Every sample line belongs to a family declared by a # TYPE line.
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|r| r.split(' ').next())
            .collect();
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap_or_default();
            assert!(
                families.iter().any(|f| name == *f
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(*f))),
                "{name} has no # TYPE line:\n{text}"
            );
        }
    }

    #[test]
    fn openmetrics_units_and_eof_are_dropped() {
        let om = "# HELP a_seconds A.\n# TYPE a_seconds gauge\n# UNIT a_seconds seconds\na_seconds 1\n# HELP b B.\n# TYPE b counter\nb_total 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP a_seconds A.\n# TYPE a_seconds gauge\na_seconds 1\n# HELP b_total B.\n# TYPE b_total counter\nb_total 2\n"
        );
    }
}
