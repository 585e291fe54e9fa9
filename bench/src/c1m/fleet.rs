//! The runner's view of everything it measures: the worker processes
//! (totals of their counters, merged histograms) and the server processes
//! (memory and CPU from `/proc`, by PID).

use std::collections::BTreeMap;

use futures_util::future::join_all;

use super::wire::WorkerStats;
use super::workers::Worker;
use crate::proc;
use crate::stats::LatencyHist;

/// Every worker.
pub(crate) struct Fleet {
    /// The workers, in user order.
    pub(crate) workers: Vec<Worker>,
}

/// The workers' counters added up: the same fields as one worker's.
pub(crate) type Totals = WorkerStats;

impl WorkerStats {
    /// All failed attempts.
    pub(crate) fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// All drops.
    pub(crate) fn dropped(&self) -> u64 {
        self.drops.values().sum()
    }

    /// Messages recorded under `key`.
    pub(crate) fn count(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    fn add(&mut self, s: &WorkerStats) {
        self.target += s.target;
        self.authenticated += s.authenticated;
        self.live += s.live;
        if self.live_per_room.len() < s.live_per_room.len() {
            self.live_per_room.resize(s.live_per_room.len(), 0);
        }
        for (t, n) in self.live_per_room.iter_mut().zip(&s.live_per_room) {
            *t += n;
        }
        merge(&mut self.failures, &s.failures);
        merge(&mut self.drops, &s.drops);
        merge(&mut self.counts, &s.counts);
        self.reconnects += s.reconnects;
        self.last_auth_ns = self.last_auth_ns.max(s.last_auth_ns);
        self.last_back_ns = self.last_back_ns.max(s.last_back_ns);
        self.pings += s.pings;
        self.pongs += s.pongs;
        self.duplicates += s.duplicates;
        self.bad_payloads += s.bad_payloads;
        self.rss += s.rss;
    }
}

fn merge(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

/// `after - before`, per key.
pub(crate) fn delta(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0).min(*v)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

impl Fleet {
    /// Every worker's counters, added up.
    pub(crate) async fn totals(&self) -> anyhow::Result<Totals> {
        let all = join_all(self.workers.iter().map(Worker::stats)).await;
        let mut t = Totals::default();
        for s in all {
            t.add(&s?);
        }
        Ok(t)
    }

    /// Every worker's histograms, merged by key.
    pub(crate) async fn hists(&self) -> anyhow::Result<BTreeMap<String, LatencyHist>> {
        let all = join_all(self.workers.iter().map(Worker::hists)).await;
        let mut out: BTreeMap<String, LatencyHist> = BTreeMap::new();
        for h in all {
            for (k, b) in h? {
                match out.get_mut(&k) {
                    Some(m) => m.add_buckets(&b),
                    None => {
                        let mut m = LatencyHist::new()?;
                        m.add_buckets(&b);
                        out.insert(k, m);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The server processes, by PID.
#[derive(Clone, Debug)]
pub(crate) struct Servers {
    /// Rooms: id and PID.
    pub(crate) rooms: Vec<(u32, Option<u32>)>,
    /// Centers.
    pub(crate) centers: Vec<u32>,
}

impl Servers {
    /// RSS of each room (0 when unreadable, e.g. killed).
    pub(crate) fn room_rss(&self) -> Vec<u64> {
        self.rooms
            .iter()
            .map(|(_, pid)| pid.and_then(proc::rss).unwrap_or(0))
            .collect()
    }

    /// CPU seconds used so far by the rooms (living ones).
    pub(crate) fn rooms_cpu_s(&self) -> f64 {
        cpu_s(self.rooms.iter().filter_map(|(_, p)| *p))
    }

    /// CPU seconds used so far by the rooms and the centers.
    pub(crate) fn servers_cpu_s(&self) -> f64 {
        self.rooms_cpu_s() + cpu_s(self.centers.iter().copied())
    }
}

/// CPU seconds (user + system) of the processes.
pub(crate) fn cpu_s(pids: impl Iterator<Item = u32>) -> f64 {
    pids.filter_map(proc::cpu)
        .map(|t| (t.user + t.system) as f64 / proc::CLOCK_TICKS_PER_SEC as f64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up() {
        let mut t = Totals::default();
        let a = WorkerStats {
            target: 2,
            live: 2,
            live_per_room: vec![1, 1],
            failures: BTreeMap::from([("connect: refused".to_string(), 1)]),
            counts: BTreeMap::from([("b1".to_string(), 2)]),
            last_auth_ns: 5,
            ..WorkerStats::default()
        };
        let b = WorkerStats {
            target: 3,
            live: 3,
            live_per_room: vec![2, 0, 1],
            failures: BTreeMap::from([("connect: refused".to_string(), 2)]),
            counts: BTreeMap::from([("b1".to_string(), 3), ("u1".to_string(), 1)]),
            last_auth_ns: 9,
            ..WorkerStats::default()
        };
        t.add(&a);
        t.add(&b);
        assert_eq!(t.target, 5);
        assert_eq!(t.live_per_room, vec![3, 1, 1]);
        assert_eq!(t.failed(), 3);
        assert_eq!(t.count("b1"), 5);
        assert_eq!(t.count("u1"), 1);
        assert_eq!(t.count("c1"), 0);
        assert_eq!(t.last_auth_ns, 9);
        let d = delta(&t.failures, &a.failures);
        assert_eq!(d["connect: refused"], 2);
    }

    #[test]
    fn own_cpu_is_readable() {
        assert!(cpu_s(std::iter::once(std::process::id())) >= 0.0);
    }
}
