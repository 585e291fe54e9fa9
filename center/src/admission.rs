//! Admission of pushes: a push the center cannot serve within its request
//! timeout is refused at once, with 429 `overloaded` and a `Retry-After`,
//! rather than queued into a timeout that answers 503 after a long wait
//! (when the caller has already waited and the push may still happen).
//!
//! The dispatcher reports how long each batch took; the time per push,
//! smoothed, times the pushes already queued is the wait a new push would
//! see. Over half the request timeout, the push is shed: the other half is
//! left for its own store write and fan-out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::ApiError;

/// Longest `Retry-After` asked, seconds.
const MAX_RETRY_AFTER_S: u64 = 60;

/// The dispatcher's recent pace (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Smoothed dispatcher time per push, ns (an exponential moving
    /// average over batches, weight 1/8).
    per_job_ns: AtomicU64,
}

impl Admission {
    /// Records that the dispatcher handled `jobs` pushes in `took`.
    pub(crate) fn observe(&self, jobs: usize, took: Duration) {
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

    /// How long a push queued behind `queued` others would wait.
    pub(crate) fn wait_behind(&self, queued: usize) -> Duration {
        let per = self.per_job_ns.load(Ordering::Relaxed);
        Duration::from_nanos(per.saturating_mul(u64::try_from(queued).unwrap_or(u64::MAX)))
    }

    /// Refuses a push that would wait more than half of `timeout` behind
    /// `queued` others.
    pub(crate) fn check(&self, queued: usize, timeout: Duration) -> Result<(), ApiError> {
        let wait = self.wait_behind(queued);
        if wait > timeout / 2 {
            return Err(self.shed(queued));
        }
        Ok(())
    }

    /// The error for a push refused behind `queued` others.
    pub(crate) fn shed(&self, queued: usize) -> ApiError {
        ApiError::Overloaded {
            retry_after_s: retry_after(self.wait_behind(queued)),
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
        assert_eq!(a.wait_behind(1000), Duration::from_secs(1));
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

    #[test]
    fn retry_after_is_whole_seconds_within_bounds() {
        assert_eq!(retry_after(Duration::ZERO), 1);
        assert_eq!(retry_after(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after(Duration::from_secs(3)), 3);
        assert_eq!(retry_after(Duration::from_secs(3600)), 60);
    }
}
