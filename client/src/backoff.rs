//! Reconnect delays: jittered exponential backoff, and the delay a draining
//! server asks for (`reconnect_after_ms=N` in the 4007 reason). Public so
//! that other clients of the protocol (the load generator in `bench/`,
//! custom transports) reconnect by the same rules as [`crate::Client`].

use std::time::Duration;

use rand::Rng;

/// The longest `reconnect_after_ms` the client honours; a larger value (a
/// misconfigured server) is cut to this.
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(600);

/// Exponential backoff with "equal jitter": attempt `n` (from 0) waits a
/// uniformly random time in `[b/2, b]`, where `b = min(max, initial · 2ⁿ)`.
/// Half of the delay is random, so clients that lost the same server do not
/// come back in lockstep; half grows, so a server that is down is not hammered.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting around `initial` and never above `max`
    /// (`max` is raised to `initial` if it is smaller).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The upper bound of the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt; counts the attempt.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(rng.random_range(0..=spread))
    }

    /// Starts over (after a session that authenticated).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The delay a 4007 close asks for: the number after `reconnect_after_ms=`
/// in the close reason (`draining reconnect_after_ms=500`,
/// `unavailable reconnect_after_ms=200`), capped at [`MAX_SERVER_DELAY`].
pub fn server_delay(reason: &str) -> Option<Duration> {
    let (_, rest) = reason.split_once("reconnect_after_ms=")?;
    let digits: &str = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap_or("");
    let ms: u64 = digits.parse().ok()?;
    Some(Duration::from_millis(ms).min(MAX_SERVER_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn delays_stay_within_half_and_full_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let mut b = Backoff::new(initial, max);
        let mut ceilings = Vec::new();
        for _ in 0..40 {
            let c = b.ceiling();
            let d = b.next_delay(&mut rng);
            assert!(
                d >= c / 2 && d <= c,
                "delay {d:?} outside [{:?}, {c:?}]",
                c / 2
            );
            assert!(d <= max);
            ceilings.push(c);
        }
        assert_eq!(ceilings[0], initial);
        assert_eq!(ceilings[1], initial * 2);
        assert_eq!(ceilings[5], Duration::from_millis(3200));
        assert_eq!(ceilings[6], max);
        assert_eq!(ceilings[39], max);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            seen.insert(b.next_delay(&mut rng));
        }
        assert!(seen.len() > 40, "jitter must vary the delay: {seen:?}");
    }

    #[test]
    fn reset_starts_over_and_huge_attempts_saturate() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(60));
        for _ in 0..1000 {
            let d = b.next_delay(&mut rng);
            assert!(d <= Duration::from_secs(60));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(10));
        // max below initial is raised to initial
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.ceiling(), Duration::from_secs(2));
    }

    #[test]
    fn server_delay_parses_the_reason() {
        assert_eq!(
            server_delay("draining reconnect_after_ms=500"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            server_delay("unavailable reconnect_after_ms=0"),
            Some(Duration::ZERO)
        );
        assert_eq!(
            server_delay("draining reconnect_after_ms=1234 more"),
            Some(Duration::from_millis(1234))
        );
        assert_eq!(
            server_delay("draining reconnect_after_ms=99999999999"),
            Some(MAX_SERVER_DELAY)
        );
        assert_eq!(server_delay("draining"), None);
        assert_eq!(server_delay("server full"), None);
        assert_eq!(server_delay("reconnect_after_ms="), None);
        assert_eq!(server_delay("reconnect_after_ms=-5"), None);
    }
}
