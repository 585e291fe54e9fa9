//! Pacing by schedule: event `i` of a run at `rate` per second is due at
//! `start + i / rate`, whatever happened to earlier events. A slow event
//! therefore does not push later ones back (no sleep-after-send drift), and
//! how far behind schedule the sender ran is measurable.

use std::time::Duration;

/// A fixed-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    rate: u64,
}

impl Schedule {
    /// `rate` events per second (at least 1).
    pub(crate) fn new(rate: u64) -> Self {
        Schedule { rate: rate.max(1) }
    }

    /// When event `i` is due, as an offset from the start.
    pub(crate) fn offset(&self, i: u64) -> Duration {
        let ns = u128::from(i) * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Events due within a run of `duration` (offsets in `[0, duration)`).
    pub(crate) fn count_in(&self, duration: Duration) -> u64 {
        let n = (duration.as_nanos() * u128::from(self.rate)).div_ceil(1_000_000_000);
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

/// The next heartbeat delay: `interval` scaled into `[0.8, 1.0)` of itself by
/// `r` in `[0, 1)`, so pings spread out but never come later than the server
/// expects.
pub(crate) fn heartbeat_delay(interval: Duration, r: f64) -> Duration {
    interval.mul_f64(0.8 + 0.2 * unit(r))
}

/// The first heartbeat delay: anywhere in `[0, interval)` by `r` in `[0, 1)`,
/// so connections opened together do not ping together.
pub(crate) fn first_heartbeat_delay(interval: Duration, r: f64) -> Duration {
    interval.mul_f64(unit(r))
}

/// When one client's next ping is due.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heartbeat {
    interval: Duration,
    next: tokio::time::Instant,
}

impl Heartbeat {
    /// A ping every `secs` seconds (at least 1), the first one anywhere in
    /// the first interval ([`first_heartbeat_delay`]).
    pub(crate) fn start(secs: u32) -> Heartbeat {
        let interval = Duration::from_secs(u64::from(secs.max(1)));
        Heartbeat {
            interval,
            next: tokio::time::Instant::now() + first_heartbeat_delay(interval, rand::random()),
        }
    }

    /// When the next ping is due.
    pub(crate) fn due(&self) -> tokio::time::Instant {
        self.next
    }

    /// Schedules the next ping after one just sent ([`heartbeat_delay`]).
    pub(crate) fn sent(&mut self) {
        self.next = tokio::time::Instant::now() + heartbeat_delay(self.interval, rand::random());
    }
}

/// `r` forced into `[0, 1)`; NaN becomes 0.5.
fn unit(r: f64) -> f64 {
    if r.is_nan() {
        0.5
    } else {
        r.clamp(0.0, 0.999_999)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_rate() {
        let s = Schedule::new(1000);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_millis(1));
        assert_eq!(s.offset(1500), Duration::from_millis(1500));
        let s = Schedule::new(3);
        assert_eq!(s.offset(1), Duration::from_nanos(333_333_333));
        assert_eq!(s.offset(3), Duration::from_secs(1));
        // Large indices do not overflow.
        assert_eq!(
            Schedule::new(1).offset(u64::MAX),
            Duration::from_nanos(u64::MAX)
        );
    }

    #[test]
    fn zero_rate_is_one_per_second() {
        assert_eq!(Schedule::new(0).offset(2), Duration::from_secs(2));
    }

    #[test]
    fn count_agrees_with_offsets() {
        let s = Schedule::new(250);
        assert_eq!(s.count_in(Duration::from_secs(30)), 7500);
        assert_eq!(s.count_in(Duration::ZERO), 0);
        assert_eq!(s.count_in(Duration::from_millis(3)), 1);
        assert_eq!(s.count_in(Duration::from_millis(4)), 1);
        // The last event of a run is due before the run ends.
        let d = Duration::from_millis(1234);
        let n = s.count_in(d);
        assert!(s.offset(n - 1) < d);
        assert!(s.offset(n) >= d);
    }

    #[test]
    fn heartbeat_jitter_stays_in_bounds() {
        let iv = Duration::from_secs(30);
        assert_eq!(heartbeat_delay(iv, 0.0), Duration::from_secs(24));
        assert!(heartbeat_delay(iv, 1.0) < iv);
        assert!(heartbeat_delay(iv, 5.0) < iv);
        assert_eq!(first_heartbeat_delay(iv, 0.0), Duration::ZERO);
        assert!(first_heartbeat_delay(iv, 1.0) < iv);
        assert_eq!(first_heartbeat_delay(iv, 0.5), Duration::from_secs(15));
        assert_eq!(first_heartbeat_delay(iv, f64::NAN), Duration::from_secs(15));
        assert_eq!(heartbeat_delay(iv, -1.0), Duration::from_secs(24));
    }
}
