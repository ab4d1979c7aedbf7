//! Rate limiting for operator-facing log lines: at most one event per call site per interval,
//! reporting how many were held back in between.

use std::time::{Duration, Instant};

/// The interval every sink warning uses.
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// One call site's limiter.
#[derive(Debug)]
pub(crate) struct RateLimit {
    interval: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimit {
    pub(crate) const fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(suppressed)` when an event may be logged now; `None` (and one more suppressed)
    /// when the last logged one is younger than the interval.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        if let Some(last) = self.last
            && now.duration_since(last) < self.interval
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_through_per_interval_and_counts_the_rest() {
        let mut r = RateLimit::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(r.allow(t), Some(0));
        assert_eq!(r.allow(t + Duration::from_secs(3)), None);
        assert_eq!(r.allow(t + Duration::from_secs(9)), None);
        assert_eq!(r.allow(t + Duration::from_secs(10)), Some(2));
        assert_eq!(r.allow(t + Duration::from_secs(11)), None);
    }
}
