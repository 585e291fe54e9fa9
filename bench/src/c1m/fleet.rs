//! The runner's view of everything it measures: the worker processes
//! (totals of their counters, merged histograms) and the server processes
//! (memory and CPU from `/proc`, by PID).

use std::collections::BTreeMap;

use futures_util::future::join_all;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

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
    /// Reads the totals every `every` until `done` holds for them,
    /// `deadline` passes or `cancel` fires; the last totals read.
    pub(crate) async fn wait_for(
        &self,
        done: impl Fn(&Totals) -> bool,
        deadline: Instant,
        every: Duration,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Totals> {
        loop {
            let t = self.totals().await?;
            if done(&t)
                || Instant::now() >= deadline
                || !super::sleep_unless_cancelled(cancel, every).await
            {
                return Ok(t);
            }
        }
    }

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

/// CPU per operation, µs (`None` without an operation or any CPU).
pub(crate) fn per_op_us(cpu_s: f64, ops: u64) -> Option<f64> {
    (ops > 0 && cpu_s > 0.0).then(|| cpu_s / ops as f64 * 1e6)
}

/// CPU per delivery, µs, with `pongs` heartbeats at `ping_us` taken out of
/// `cpu_s` (never below zero; `None` without a delivery or what is left).
pub(crate) fn per_delivery_us(
    cpu_s: f64,
    pongs: u64,
    ping_us: Option<f64>,
    deliveries: u64,
) -> Option<f64> {
    let heartbeats_s = ping_us.unwrap_or(0.0) * pongs as f64 / 1e6;
    per_op_us((cpu_s - heartbeats_s).max(0.0), deliveries)
}

/// Per-thread CPU readings of some processes (schedstat, ns: fine enough
/// for short windows, where `/proc/PID/stat`'s 10 ms ticks are not).
pub(crate) struct ThreadsCpu(Vec<Vec<(u32, u64)>>);

impl ThreadsCpu {
    /// Reads every process of `pids` now (a process that cannot be read
    /// counts as none).
    pub(crate) fn now(pids: &[u32]) -> ThreadsCpu {
        ThreadsCpu(
            pids.iter()
                .map(|&p| proc::cpu_threads(p).unwrap_or_default())
                .collect(),
        )
    }

    /// CPU seconds of each process of `pids` (as given to [`now`](Self::now)) since this reading.
    pub(crate) fn since(&self, pids: &[u32]) -> Vec<f64> {
        let later = ThreadsCpu::now(pids);
        self.0
            .iter()
            .zip(&later.0)
            .map(|(a, b)| proc::threads_cpu_delta(a, b) as f64 / 1e9)
            .collect()
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
    fn cpu_per_heartbeat_and_per_delivery() {
        assert_eq!(per_op_us(1.5, 30_000), Some(50.0));
        assert_eq!(per_op_us(1.5, 0), None);
        assert_eq!(per_op_us(0.0, 10), None);
        // 2 s of CPU, 10,000 heartbeats at 50 µs (0.5 s) taken out, 100,000
        // deliveries: 15 µs each.
        let d = per_delivery_us(2.0, 10_000, Some(50.0), 100_000).unwrap();
        assert!((d - 15.0).abs() < 1e-9, "{d}");
        assert_eq!(per_delivery_us(2.0, 10, Some(50.0), 0), None);
        // More heartbeat CPU than was used (coarse ticks): no figure rather
        // than a negative one.
        assert_eq!(per_delivery_us(0.1, 10_000, Some(50.0), 1_000), None);
    }

    #[test]
    fn own_cpu_is_readable() {
        assert!(cpu_s(std::iter::once(std::process::id())) >= 0.0);
    }
}
