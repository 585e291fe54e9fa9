//! Admission of pushes: a push the center cannot serve within its request
//! timeout is refused at once, with 429 `overloaded` and a `Retry-After`,
//! rather than queued into a timeout that answers 503 after a long wait
//! (when the caller has already waited and the push may still happen).
//!
//! The dispatcher reports how long each batch took; the time per push,
//! smoothed, times the pushes already queued, plus how long the batch in
//! flight has been running, is the wait a new push would see. Over half the
//! request timeout, the push is shed: the other half is left for its own
//! store write and fan-out.
//!
//! The batch in flight counts because the pace alone knows nothing of a
//! batch that is stuck now: the first pushes after a quiet spell (nothing
//! measured yet, or only fast batches) would all be queued behind a batch
//! held by a stalled room or store, and answered 503 `timeout` after the
//! whole request timeout. A batch that has run for a time has, as far as
//! the center can tell, about as long to go; once that alone is over half
//! the timeout, new pushes are refused at once with 429.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// Longest `Retry-After` asked, seconds.
const MAX_RETRY_AFTER_S: u64 = 60;

/// The dispatcher's recent pace (see the module docs).
#[derive(Debug)]
pub(crate) struct Admission {
    /// Smoothed dispatcher time per push, ns (an exponential moving
    /// average over batches, weight 1/8).
    per_job_ns: AtomicU64,
    /// When the batch in flight started, ns after `epoch` plus one; 0 when
    /// the dispatcher is between batches.
    in_flight_since: AtomicU64,
    epoch: Instant,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            per_job_ns: AtomicU64::new(0),
            in_flight_since: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Admission {
    /// Records that the dispatcher started a batch at `now`.
    pub(crate) fn started(&self, now: Instant) {
        let at = now.saturating_duration_since(self.epoch).as_nanos();
        let at = u64::try_from(at).unwrap_or(u64::MAX - 1) + 1;
        self.in_flight_since.store(at, Ordering::Relaxed);
    }

    /// How long the batch in flight has been running at `now` (zero when
    /// none is).
    fn in_flight(&self, now: Instant) -> Duration {
        match self.in_flight_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            at => now
                .saturating_duration_since(self.epoch)
                .saturating_sub(Duration::from_nanos(at - 1)),
        }
    }

    /// Records that the dispatcher handled `jobs` pushes in `took` (the
    /// batch in flight is over).
    pub(crate) fn observe(&self, jobs: usize, took: Duration) {
        self.in_flight_since.store(0, Ordering::Relaxed);
        let Some(jobs) = u64::try_from(jobs).ok().filter(|&j| j > 0) else {
            return;
        };
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX) / jobs;
        // One writer (the dispatcher): a plain load and store will do.
        let old = self.per_job_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.per_job_ns.store(new, Ordering::Relaxed);
    }

    /// How long a push arriving at `now` behind `queued` others would wait.
    pub(crate) fn wait_behind(&self, queued: usize, now: Instant) -> Duration {
        let per = self.per_job_ns.load(Ordering::Relaxed);
        let queue =
            Duration::from_nanos(per.saturating_mul(u64::try_from(queued).unwrap_or(u64::MAX)));
        queue.saturating_add(self.in_flight(now))
    }

    /// Refuses a push that would wait more than half of `timeout` behind
    /// `queued` others and the batch in flight.
    pub(crate) fn check(&self, queued: usize, timeout: Duration) -> Result<(), ApiError> {
        let now = Instant::now();
        if self.wait_behind(queued, now) > timeout / 2 {
            return Err(self.shed_at(queued, now));
        }
        Ok(())
    }

    /// The error for a push refused behind `queued` others.
    pub(crate) fn shed(&self, queued: usize) -> ApiError {
        self.shed_at(queued, Instant::now())
    }

    fn shed_at(&self, queued: usize, now: Instant) -> ApiError {
        ApiError::Overloaded {
            retry_after_s: retry_after(self.wait_behind(queued, now)),
        }
    }
}

/// Whole seconds to wait for `wait` to pass, 1 to [`MAX_RETRY_AFTER_S`].
pub(crate) fn retry_after(wait: Duration) -> u64 {
    let s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    s.clamp(1, MAX_RETRY_AFTER_S)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_what_would_wait_past_half_the_timeout() {
        let a = Admission::default();
        // Nothing measured yet: everything is admitted.
        assert!(a.check(4000, Duration::from_secs(10)).is_ok());
        a.observe(100, Duration::from_millis(100)); // 1 ms per push
        assert_eq!(a.wait_behind(1000, Instant::now()), Duration::from_secs(1));
        assert!(a.check(4999, Duration::from_secs(10)).is_ok());
        match a.check(6000, Duration::from_secs(10)) {
            Err(ApiError::Overloaded { retry_after_s }) => assert_eq!(retry_after_s, 6),
            other => panic!("expected overloaded, got {other:?}"),
        }
        // The average follows the pace: ten fast batches bring it down.
        for _ in 0..40 {
            a.observe(1000, Duration::from_millis(10));
        }
        assert!(a.check(6000, Duration::from_secs(10)).is_ok());
    }

    /// The first pushes behind a batch that is stuck are shed once it has
    /// run for half the timeout, although nothing was measured before.
    #[test]
    fn a_batch_stuck_in_flight_sheds_what_queues_behind_it() {
        let a = Admission::default();
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        a.started(t0);
        assert_eq!(a.wait_behind(0, t0), Duration::ZERO);
        // Nothing measured: the queue costs nothing, the batch's age does.
        let later = t0 + Duration::from_secs(4);
        assert_eq!(a.wait_behind(100, later), Duration::from_secs(4));
        let stuck = t0 + Duration::from_secs(6);
        assert!(a.wait_behind(1, stuck) > timeout / 2);
        match a.shed_at(1, stuck) {
            ApiError::Overloaded { retry_after_s } => assert_eq!(retry_after_s, 6),
            other => panic!("expected overloaded, got {other:?}"),
        }
        // Once it is done, only the pace counts (6 s for 1 push: the
        // average starts there, and 0 queued wait nothing).
        a.observe(1, Duration::from_secs(6));
        assert_eq!(a.wait_behind(0, stuck), Duration::ZERO);
        assert!(a.check(0, timeout).is_ok());
    }

    #[test]
    fn retry_after_is_whole_seconds_within_bounds() {
        assert_eq!(retry_after(Duration::ZERO), 1);
        assert_eq!(retry_after(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after(Duration::from_secs(3)), 3);
        assert_eq!(retry_after(Duration::from_secs(3600)), 60);
    }
}
