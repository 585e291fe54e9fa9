//! What the cluster says about itself on `/metrics`: how long rooms and
//! centers waited for registers, savers and idgens
//! (`pushgate_link_call_seconds{service}`), and whether any room's lease
//! failed or a register had to be refilled after a fault. Scraped from
//! every room and center before the ramp and after the unicast phases (the
//! killed-room phase causes refills on purpose), and the difference is
//! reported.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The counters the rooms keep of their membership, summed over rooms.
const MEMBERSHIP: [&str; 4] = [
    "pushgate_room_lease_failures_total",
    "pushgate_room_lease_fresh_total",
    "pushgate_room_fault_refills_total",
    "pushgate_room_refills_total",
];

/// The figures of every process at one moment, summed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// Per service: bucket upper bound (seconds, `inf` last) → calls at or
    /// below it (cumulative), summed over processes.
    buckets: BTreeMap<String, BTreeMap<Bound, u64>>,
    /// Per service: failed calls.
    errors: BTreeMap<String, u64>,
    /// [`MEMBERSHIP`] counters.
    counters: BTreeMap<String, u64>,
    /// Processes that answered / asked.
    answered: usize,
    asked: usize,
}

/// A bucket bound that sorts (`f64` does not).
#[derive(Clone, Copy, Debug)]
struct Bound(f64);
impl PartialEq for Bound {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Bound {}
impl PartialOrd for Bound {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bound {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// Calls to one service over the measured span.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ServiceCalls {
    /// `register`, `saver`, `idgen`, `room`.
    pub(crate) service: String,
    /// Calls made.
    pub(crate) calls: u64,
    /// Failed calls.
    pub(crate) errors: u64,
    /// Upper bound of the bucket holding the median, ms.
    pub(crate) p50_ms: f64,
    /// Upper bound of the bucket holding the 99th percentile, ms (`inf`
    /// past the last bound, 10 s).
    pub(crate) p99_ms: f64,
    /// Upper bound of the bucket holding the slowest call, ms.
    pub(crate) max_ms: f64,
}

/// What the cluster said about itself over the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Internal {
    /// Per service called over links.
    pub(crate) services: Vec<ServiceCalls>,
    /// Lease renewals that failed or timed out, all rooms.
    pub(crate) lease_failures: u64,
    /// Renewals a register granted as new (it had lost the room).
    pub(crate) lease_fresh: u64,
    /// Refills after a fault (each followed by a resync).
    pub(crate) fault_refills: u64,
    /// Every refill (start-up and anti-entropy ones included).
    pub(crate) refills: u64,
    /// Processes scraped at the end / asked.
    pub(crate) scraped: String,
}

impl Internal {
    /// The calls to `service`, if any were made.
    pub(crate) fn service(&self, service: &str) -> Option<&ServiceCalls> {
        self.services.iter().find(|s| s.service == service)
    }
}

/// Reads `/metrics` of every URL (rooms' health bases and centers' HTTP
/// bases) and sums what it finds; a process that does not answer within
/// 5 s is left out (counted in the snapshot).
pub(crate) async fn snapshot(http: &reqwest::Client, bases: &[String]) -> Snapshot {
    let mut snap = Snapshot {
        asked: bases.len(),
        ..Snapshot::default()
    };
    let gets = bases.iter().map(|b| async move {
        let url = format!("{}/metrics", b.trim_end_matches('/'));
        let r = http.get(&url).timeout(Duration::from_secs(5)).send().await;
        match r {
            Ok(r) if r.status().is_success() => r.text().await.ok(),
            _ => None,
        }
    });
    for text in futures_util::future::join_all(gets)
        .await
        .into_iter()
        .flatten()
    {
        snap.answered += 1;
        snap.add(&text);
    }
    snap
}

impl Snapshot {
    fn add(&mut self, text: &str) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("pushgate_link_call_seconds_bucket{service=\"") {
                let Some((service, rest)) = rest.split_once("\",le=\"") else {
                    continue;
                };
                let Some((le, n)) = rest.split_once("\"} ") else {
                    continue;
                };
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                let n: u64 = n.trim().parse().unwrap_or(0);
                *self
                    .buckets
                    .entry(service.to_owned())
                    .or_default()
                    .entry(Bound(le))
                    .or_default() += n;
            } else if let Some(rest) =
                line.strip_prefix("pushgate_link_call_errors_total{service=\"")
            {
                if let Some((service, n)) = rest.split_once("\"} ") {
                    *self.errors.entry(service.to_owned()).or_default() +=
                        n.trim().parse::<u64>().unwrap_or(0);
                }
            } else if let Some((name, n)) = line.split_once(' ') {
                if MEMBERSHIP.contains(&name) {
                    *self.counters.entry(name.to_owned()).or_default() +=
                        n.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }

    /// What happened between `before` and `self`.
    pub(crate) fn since(&self, before: &Snapshot) -> Internal {
        let counter = |name: &str| {
            let a = self.counters.get(name).copied().unwrap_or(0);
            a.saturating_sub(before.counters.get(name).copied().unwrap_or(0))
        };
        let mut services = Vec::new();
        for (service, after) in &self.buckets {
            let empty = BTreeMap::new();
            let prev = before.buckets.get(service).unwrap_or(&empty);
            let cum: Vec<(f64, u64)> = after
                .iter()
                .map(|(b, n)| (b.0, n.saturating_sub(prev.get(b).copied().unwrap_or(0))))
                .collect();
            let calls = cum.last().map_or(0, |c| c.1);
            if calls == 0 {
                continue;
            }
            let at = |q: f64| {
                let want = (q * calls as f64).ceil().max(1.0) as u64;
                cum.iter()
                    .find(|(_, n)| *n >= want)
                    .map_or(f64::INFINITY, |(b, _)| b * 1000.0)
            };
            let errors = self
                .errors
                .get(service)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before.errors.get(service).copied().unwrap_or(0));
            services.push(ServiceCalls {
                service: service.clone(),
                calls,
                errors,
                p50_ms: at(0.5),
                p99_ms: at(0.99),
                max_ms: at(1.0),
            });
        }
        Internal {
            services,
            lease_failures: counter(MEMBERSHIP[0]),
            lease_fresh: counter(MEMBERSHIP[1]),
            fault_refills: counter(MEMBERSHIP[2]),
            refills: counter(MEMBERSHIP[3]),
            scraped: format!("{} of {}", self.answered, self.asked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(fast: u64, slow: u64, failures: u64) -> String {
        let all = fast + slow;
        format!(
            "pushgate_link_call_seconds_bucket{{service=\"register\",le=\"0.001\"}} {fast}\n\
             pushgate_link_call_seconds_bucket{{service=\"register\",le=\"0.1\"}} {fast}\n\
             pushgate_link_call_seconds_bucket{{service=\"register\",le=\"0.25\"}} {all}\n\
             pushgate_link_call_seconds_bucket{{service=\"register\",le=\"+Inf\"}} {all}\n\
             pushgate_link_call_errors_total{{service=\"register\"}} 0\n\
             pushgate_room_lease_failures_total {failures}\n\
             pushgate_room_refills_total 3\n"
        )
    }

    #[test]
    fn differences_and_quantiles_over_processes() {
        let mut before = Snapshot::default();
        before.add(&text(10, 0, 0));
        let mut after = Snapshot::default();
        after.add(&text(1000, 0, 0));
        after.add(&text(990, 10, 2));
        let i = after.since(&before);
        let r = i.service("register").unwrap();
        assert_eq!(r.calls, 1990);
        assert_eq!(r.p50_ms, 1.0);
        // 10 of 1990 slow: the 99th percentile is still fast.
        assert_eq!(r.p99_ms, 1.0);
        assert_eq!(r.max_ms, 250.0);
        assert_eq!(i.lease_failures, 2);
        assert_eq!(i.refills, 3);
    }
}
