//! Measurement: latency histograms (HdrHistogram, microsecond resolution) and
//! tallies of why connections ended.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Highest latency a histogram holds, in microseconds (one minute); larger
/// samples are clamped to it.
const MAX_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant digits, 1 µs .. 60 s.
#[derive(Clone, Debug)]
pub(crate) struct LatencyHist {
    h: Histogram<u64>,
}

/// Percentiles of a [`LatencyHist`], in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Summary {
    /// Samples recorded.
    pub(crate) count: u64,
    /// Median.
    pub(crate) p50_ms: f64,
    /// 90th percentile.
    pub(crate) p90_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// 99.9th percentile.
    pub(crate) p999_ms: f64,
    /// Largest sample.
    pub(crate) max_ms: f64,
    /// Mean.
    pub(crate) mean_ms: f64,
}

impl LatencyHist {
    /// An empty histogram.
    pub(crate) fn new() -> anyhow::Result<Self> {
        let h = Histogram::new_with_bounds(1, MAX_US, 3)
            .map_err(|e| anyhow::anyhow!("creating histogram: {e:?}"))?;
        Ok(LatencyHist { h })
    }

    /// Records one sample in microseconds (0 counts as 1 µs, beyond a minute as a minute).
    pub(crate) fn record_us(&mut self, us: u64) {
        self.h.saturating_record(us.clamp(1, MAX_US));
    }

    /// Records one sample in nanoseconds.
    pub(crate) fn record_ns(&mut self, ns: u64) {
        self.record_us(ns / 1000);
    }

    /// The recorded values as (microseconds, count) pairs, for sending to
    /// another process.
    pub(crate) fn buckets(&self) -> Vec<(u64, u64)> {
        self.h
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    /// Adds (microseconds, count) pairs from [`LatencyHist::buckets`].
    pub(crate) fn add_buckets(&mut self, buckets: &[(u64, u64)]) {
        for &(us, n) in buckets {
            // Bounded values cannot fail; a count overflow saturates.
            let _ = self.h.record_n(us.clamp(1, MAX_US), n);
        }
    }

    /// Samples recorded.
    pub(crate) fn len(&self) -> u64 {
        self.h.len()
    }

    /// The value at quantile `q` (0..=1), in milliseconds (0 when empty).
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        if self.h.is_empty() {
            return 0.0;
        }
        self.h.value_at_quantile(q) as f64 / 1000.0
    }

    /// The largest sample, in milliseconds (0 when empty).
    pub(crate) fn max_ms(&self) -> f64 {
        self.h.max() as f64 / 1000.0
    }

    /// The distribution for plots: (percentile, milliseconds), denser in the
    /// tail (0..90 by 5, 90..99 by 1, then 99.5, 99.9, 99.95, 99.99, 100).
    pub(crate) fn curve(&self) -> Vec<(f64, f64)> {
        if self.h.is_empty() {
            return Vec::new();
        }
        let mut points: Vec<f64> = (0..18).map(|i| f64::from(i) * 5.0).collect();
        points.extend((90..100).map(f64::from));
        points.extend([99.5, 99.9, 99.95, 99.99, 100.0]);
        points
            .into_iter()
            .map(|p| (p, self.quantile_ms(p / 100.0)))
            .collect()
    }

    /// The percentiles, in milliseconds (all zero when empty).
    pub(crate) fn summary(&self) -> Summary {
        if self.h.is_empty() {
            return Summary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            count: self.h.len(),
            p50_ms: ms(self.h.value_at_quantile(0.50)),
            p90_ms: ms(self.h.value_at_quantile(0.90)),
            p99_ms: ms(self.h.value_at_quantile(0.99)),
            p999_ms: ms(self.h.value_at_quantile(0.999)),
            max_ms: ms(self.h.max()),
            mean_ms: self.h.mean() / 1000.0,
        }
    }
}

/// Counts of reasons (close codes, error kinds), shared between client tasks.
/// The set of distinct reasons is small (close codes, error classes), so the
/// map stays bounded.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    counts: Mutex<BTreeMap<String, u64>>,
}

/// Most distinct reasons kept; further new reasons count under `other`.
const MAX_REASONS: usize = 64;

impl Tally {
    /// Counts one occurrence of `reason`.
    pub(crate) fn add(&self, reason: &str) {
        let mut m = self.counts.lock();
        if let Some(n) = m.get_mut(reason) {
            *n += 1;
        } else if m.len() < MAX_REASONS {
            m.insert(reason.to_string(), 1);
        } else {
            *m.entry("other".to_string()).or_insert(0) += 1;
        }
    }

    /// A copy of the counts.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().clone()
    }

    /// `reason=n, reason=n` or `none`.
    pub(crate) fn line(&self) -> String {
        let m = self.snapshot();
        if m.is_empty() {
            return "none".to_string();
        }
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `a / b` as a float, 0 when `b` is 0.
pub(crate) fn per(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip() {
        let mut a = LatencyHist::new().unwrap();
        for us in [5, 5, 1_000, 250_000] {
            a.record_us(us);
        }
        let mut b = LatencyHist::new().unwrap();
        b.record_us(7);
        b.add_buckets(&a.buckets());
        assert_eq!(b.len(), 5);
        assert!((b.max_ms() - 250.0).abs() < 0.5, "{}", b.max_ms());
        assert_eq!(b.quantile_ms(0.0), 0.005);
        let curve = b.curve();
        assert_eq!(curve.first().map(|p| p.0), Some(0.0));
        assert_eq!(curve.last().map(|p| p.0), Some(100.0));
        assert!(curve.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(LatencyHist::new().unwrap().curve().is_empty());
    }

    #[test]
    fn percentiles_of_uniform_samples() {
        let mut h = LatencyHist::new().unwrap();
        for us in 1..=1000u64 {
            h.record_us(us * 1000); // 1 ms .. 1000 ms
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        // 3 significant digits: within 0.1 %.
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 1e-9;
        assert!(close(s.p50_ms, 500.0), "{s:?}");
        assert!(close(s.p90_ms, 900.0), "{s:?}");
        assert!(close(s.p99_ms, 990.0), "{s:?}");
        assert!(close(s.p999_ms, 999.0), "{s:?}");
        assert!(close(s.max_ms, 1000.0), "{s:?}");
        assert!(close(s.mean_ms, 500.5), "{s:?}");
    }

    #[test]
    fn tail_is_visible() {
        let mut h = LatencyHist::new().unwrap();
        for _ in 0..999 {
            h.record_ns(200_000); // 0.2 ms
        }
        h.record_ns(50_000_000); // one 50 ms outlier
        let s = h.summary();
        assert!((s.p99_ms - 0.2).abs() < 0.001, "{s:?}");
        assert!((s.max_ms - 50.0).abs() < 0.05, "{s:?}");
        assert!(s.p999_ms < 1.0, "{s:?}");
    }

    #[test]
    fn clamps_out_of_range_samples() {
        let mut h = LatencyHist::new().unwrap();
        h.record_us(0);
        h.record_us(u64::MAX);
        assert_eq!(h.summary().count, 2);
        let s = h.summary();
        assert!((s.max_ms - 60_000.0).abs() < 60.0, "{s:?}");
    }

    #[test]
    fn empty_summary_is_zero() {
        let h = LatencyHist::new().unwrap();
        assert_eq!(h.summary(), Summary::default());
    }

    #[test]
    fn tally_counts_and_bounds() {
        let t = Tally::default();
        t.add("4003");
        t.add("4003");
        t.add("eof");
        assert_eq!(t.line(), "4003=2, eof=1");
        for i in 0..100 {
            t.add(&format!("r{i}"));
        }
        let m = t.snapshot();
        assert_eq!(m.len(), MAX_REASONS + 1);
        assert_eq!(m.get("other"), Some(&(100 - (MAX_REASONS as u64 - 2))));
    }

    #[test]
    fn per_handles_zero() {
        assert_eq!(per(10.0, 0.0), 0.0);
        assert_eq!(per(10.0, 4.0), 2.5);
    }
}
