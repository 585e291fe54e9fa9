//! How long calls over links take, per service: as callers see them (from
//! the call until its answer or its failure, queueing on both sides and the
//! peer's work included), `pushgate_link_call_seconds{service}` and
//! `pushgate_link_call_errors_total{service}`; and as the serving process
//! sees them (from a request read off its connection until its answer is
//! queued for writing: the service's own work, without the time on the wire
//! or in the caller), `pushgate_link_served_seconds{service}`. Both are
//! rendered by [`render`].
//!
//! A call costs a few relaxed atomic additions on counters the client or
//! the connection found once; no lock on the call path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use parking_lot::Mutex;

/// Upper bounds of the histogram's buckets, seconds.
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The calls to one service (every peer of it) from this process.
#[derive(Debug)]
pub(crate) struct ServiceStats {
    service: &'static str,
    /// Calls per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_us: AtomicU64,
    errors: AtomicU64,
}

impl ServiceStats {
    /// Records one call that took `took`.
    pub(crate) fn observe(&self, took: Duration, ok: bool) {
        let s = took.as_secs_f64();
        let i = BOUNDS.iter().position(|&b| s <= b).unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Calls made, per service called.
static CALLS: LazyLock<Mutex<Vec<Arc<ServiceStats>>>> = LazyLock::new(|| Mutex::new(Vec::new()));
/// Requests answered, per service served.
static SERVED: LazyLock<Mutex<Vec<Arc<ServiceStats>>>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// The figures of `service` in `list` (made on first use).
fn find_or_make(list: &Mutex<Vec<Arc<ServiceStats>>>, service: &'static str) -> Arc<ServiceStats> {
    let mut all = list.lock();
    if let Some(s) = all.iter().find(|s| s.service == service) {
        return Arc::clone(s);
    }
    let s = Arc::new(ServiceStats {
        service,
        buckets: Default::default(),
        sum_us: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    all.push(Arc::clone(&s));
    s
}

/// This process's figures for calls to `service` (made on first use).
pub(crate) fn of(service: &'static str) -> Arc<ServiceStats> {
    find_or_make(&CALLS, service)
}

/// This process's figures for the requests it answered as `service`.
pub(crate) fn served(service: &'static str) -> Arc<ServiceStats> {
    find_or_make(&SERVED, service)
}

/// Appends the link figures of this process in the Prometheus text format:
/// the calls it made (nothing when it made no link client) and the
/// requests it served (nothing when it served none).
pub fn render(out: &mut String) {
    let calls: Vec<Arc<ServiceStats>> = CALLS.lock().clone();
    if !calls.is_empty() {
        histogram(
            out,
            "pushgate_link_call_seconds",
            "Calls to other pushgate processes over internal links, from the call until its answer or failure, by service.",
            &calls,
        );
        out.push_str(
            "# HELP pushgate_link_call_errors_total Link calls that failed (peer down, timed out, bad answer), by service.\n\
             # TYPE pushgate_link_call_errors_total counter\n",
        );
        for s in &calls {
            let _ = writeln!(
                out,
                "pushgate_link_call_errors_total{{service=\"{}\"}} {}",
                s.service,
                s.errors.load(Ordering::Relaxed)
            );
        }
    }
    let served: Vec<Arc<ServiceStats>> = SERVED.lock().clone();
    if !served.is_empty() {
        histogram(
            out,
            "pushgate_link_served_seconds",
            "Requests this process answered over internal links, from reading one until its answer is queued for writing, by service.",
            &served,
        );
    }
}

/// One histogram family, a series per service.
fn histogram(out: &mut String, name: &str, help: &str, all: &[Arc<ServiceStats>]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for s in all {
        let mut cumulative = 0u64;
        for (i, b) in s.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = BOUNDS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{service=\"{}\",le=\"{le}\"}} {cumulative}",
                s.service
            );
        }
        let sum = s.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_sum{{service=\"{}\"}} {sum}\n{name}_count{{service=\"{}\"}} {cumulative}",
            s.service, s.service
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets_per_service() {
        let s = of("stats-test");
        s.observe(Duration::from_micros(300), true);
        s.observe(Duration::from_millis(30), true);
        s.observe(Duration::from_secs(30), false);
        let mut out = String::new();
        render(&mut out);
        for line in [
            r#"pushgate_link_call_seconds_bucket{service="stats-test",le="0.0005"} 1"#,
            r#"pushgate_link_call_seconds_bucket{service="stats-test",le="0.025"} 1"#,
            r#"pushgate_link_call_seconds_bucket{service="stats-test",le="0.05"} 2"#,
            r#"pushgate_link_call_seconds_bucket{service="stats-test",le="10"} 2"#,
            r#"pushgate_link_call_seconds_bucket{service="stats-test",le="+Inf"} 3"#,
            r#"pushgate_link_call_seconds_count{service="stats-test"} 3"#,
            r#"pushgate_link_call_errors_total{service="stats-test"} 1"#,
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
        assert!(Arc::ptr_eq(&s, &of("stats-test")));
    }

    #[test]
    fn served_requests_are_their_own_family() {
        let s = served("served-test");
        s.observe(Duration::from_micros(700), true);
        s.observe(Duration::from_millis(200), true);
        let mut out = String::new();
        render(&mut out);
        for line in [
            "# TYPE pushgate_link_served_seconds histogram",
            r#"pushgate_link_served_seconds_bucket{service="served-test",le="0.0005"} 0"#,
            r#"pushgate_link_served_seconds_bucket{service="served-test",le="0.001"} 1"#,
            r#"pushgate_link_served_seconds_bucket{service="served-test",le="0.1"} 1"#,
            r#"pushgate_link_served_seconds_bucket{service="served-test",le="0.25"} 2"#,
            r#"pushgate_link_served_seconds_count{service="served-test"} 2"#,
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
        // Not a call this process made.
        assert!(!out.contains(r#"pushgate_link_call_seconds_count{service="served-test"}"#));
        assert!(Arc::ptr_eq(&s, &served("served-test")));
        assert!(!Arc::ptr_eq(&s, &of("served-test")));
    }
}
