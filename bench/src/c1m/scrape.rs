//! What the cluster says about itself on `/metrics`: how long rooms and
//! centers waited for registers, savers and idgens
//! (`pushgate_link_call_seconds{service}`), how long those took to answer
//! as they timed it themselves (`pushgate_link_served_seconds{service}`,
//! from the registers', saver's and idgens' own health listeners), and
//! whether any room's lease failed or a register had to be refilled after a
//! fault. Scraped from every process before the ramp and after each phase up
//! to the end of the unicast phases (the killed-room phase causes refills on
//! purpose): the report gives the whole span and each phase.

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

/// Per service: bucket upper bound (seconds, `inf` last) → calls at or
/// below it (cumulative), summed over processes.
type Histograms = BTreeMap<String, BTreeMap<Bound, u64>>;

/// The figures of every process at one moment, summed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// Calls as the callers timed them.
    buckets: Histograms,
    /// Requests as the serving processes timed them.
    served: Histograms,
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

/// The calls of one phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PhaseCalls {
    /// `ramp`, `hold`, `broadcasts`, ...
    pub(crate) phase: String,
    /// Per service, as the callers timed them.
    pub(crate) services: Vec<ServiceCalls>,
    /// Per service, as the serving processes timed them.
    pub(crate) served: Vec<ServiceCalls>,
}

/// What the cluster said about itself over the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Internal {
    /// Per service called over links, as the callers timed the calls.
    pub(crate) services: Vec<ServiceCalls>,
    /// Per service, the requests as the serving processes timed them (from
    /// reading one to queueing its answer; `errors` counts answers that
    /// could not be queued). Empty where no serving process was scraped.
    #[serde(default)]
    pub(crate) served: Vec<ServiceCalls>,
    /// The same, phase by phase.
    #[serde(default)]
    pub(crate) phases: Vec<PhaseCalls>,
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

    /// The requests `service` answered, as it timed them, if it was scraped.
    pub(crate) fn served(&self, service: &str) -> Option<&ServiceCalls> {
        self.served.iter().find(|s| s.service == service)
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
                add_bucket(&mut self.buckets, rest);
            } else if let Some(rest) =
                line.strip_prefix("pushgate_link_served_seconds_bucket{service=\"")
            {
                add_bucket(&mut self.served, rest);
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
        let errors = |service: &str| {
            let a = self.errors.get(service).copied().unwrap_or(0);
            a.saturating_sub(before.errors.get(service).copied().unwrap_or(0))
        };
        Internal {
            services: quantiles(&self.buckets, &before.buckets, errors),
            served: quantiles(&self.served, &before.served, |_| 0),
            phases: Vec::new(),
            lease_failures: counter(MEMBERSHIP[0]),
            lease_fresh: counter(MEMBERSHIP[1]),
            fault_refills: counter(MEMBERSHIP[2]),
            refills: counter(MEMBERSHIP[3]),
            scraped: format!("{} of {}", self.answered, self.asked),
        }
    }
}

/// Adds one `service="…",le="…"} n` bucket line (the part after the
/// metric's name) to `to`.
fn add_bucket(to: &mut Histograms, rest: &str) {
    let Some((service, rest)) = rest.split_once("\",le=\"") else {
        return;
    };
    let Some((le, n)) = rest.split_once("\"} ") else {
        return;
    };
    let le = if le == "+Inf" {
        f64::INFINITY
    } else {
        le.parse().unwrap_or(f64::INFINITY)
    };
    let n: u64 = n.trim().parse().unwrap_or(0);
    *to.entry(service.to_owned())
        .or_default()
        .entry(Bound(le))
        .or_default() += n;
}

/// Per service with calls between `before` and `after`: how many, and the
/// buckets of the median, the 99th percentile and the slowest.
fn quantiles(
    after: &Histograms,
    before: &Histograms,
    errors: impl Fn(&str) -> u64,
) -> Vec<ServiceCalls> {
    let mut services = Vec::new();
    for (service, now) in after {
        let empty = BTreeMap::new();
        let prev = before.get(service).unwrap_or(&empty);
        let cum: Vec<(f64, u64)> = now
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
        services.push(ServiceCalls {
            service: service.clone(),
            calls,
            errors: errors(service),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        });
    }
    services
}

/// The calls of each phase, from the snapshots taken at its start and end:
/// `marks` holds the snapshot before the first phase, then `(phase, snapshot
/// at its end)` in order.
pub(crate) fn by_phase(first: &Snapshot, marks: &[(String, Snapshot)]) -> Vec<PhaseCalls> {
    let mut before = first;
    let mut out = Vec::new();
    for (phase, after) in marks {
        let i = after.since(before);
        out.push(PhaseCalls {
            phase: phase.clone(),
            services: i.services,
            served: i.served,
        });
        before = after;
    }
    out
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
        assert!(i.served.is_empty());
    }

    fn served(fast: u64, slow: u64) -> String {
        let all = fast + slow;
        format!(
            "pushgate_link_served_seconds_bucket{{service=\"register\",le=\"0.001\"}} {fast}\n\
             pushgate_link_served_seconds_bucket{{service=\"register\",le=\"0.1\"}} {all}\n\
             pushgate_link_served_seconds_bucket{{service=\"register\",le=\"+Inf\"}} {all}\n"
        )
    }

    #[test]
    fn served_figures_and_phases_are_apart_from_calls() {
        let snap = |texts: &[String]| {
            let mut s = Snapshot::default();
            for t in texts {
                s.add(t);
            }
            s
        };
        let start = snap(&[text(0, 0, 0), served(0, 0)]);
        // Phase one: 100 fast calls, served fast.
        let one = snap(&[text(100, 0, 0), served(100, 0)]);
        // Phase two: 100 more calls, half of them slow for the callers,
        // but served within 100 ms (the callers waited elsewhere).
        let two = snap(&[text(150, 50, 0), served(150, 50)]);
        let phases = by_phase(
            &start,
            &[
                ("ramp".to_owned(), one.clone()),
                ("hold".to_owned(), two.clone()),
            ],
        );
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[0].phase, "ramp");
        assert_eq!(phases[0].services[0].calls, 100);
        assert_eq!(phases[0].services[0].p99_ms, 1.0);
        assert_eq!(phases[0].served[0].p99_ms, 1.0);
        assert_eq!(phases[1].phase, "hold");
        assert_eq!(phases[1].services[0].calls, 100);
        assert_eq!(phases[1].services[0].p99_ms, 250.0);
        assert_eq!(phases[1].served[0].calls, 100);
        assert_eq!(phases[1].served[0].p99_ms, 100.0);
        // And the whole span.
        let all = two.since(&start);
        assert_eq!(all.served("register").unwrap().calls, 200);
        assert_eq!(all.served("register").unwrap().p50_ms, 1.0);
        assert_eq!(all.service("register").unwrap().p99_ms, 250.0);
    }
}
