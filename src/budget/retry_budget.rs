//! The retry budget: retries of transient failures are at most `ratio` of the calls made in the
//! last `window`, plus a small floor per second so a lone request on a quiet gateway is still
//! retried (as Envoy's `min_retry_concurrency`). An outage therefore never multiplies upstream
//! traffic. Pure: every method takes `now`.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Retry budget settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryBudgetConfig {
    pub ratio: f64,
    pub floor_per_second: u32,
    pub window: Duration,
}

/// Calls and retries over a sliding window, in one-second buckets.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    config: RetryBudgetConfig,
    /// (bucket start, calls, retries), oldest first.
    buckets: VecDeque<(Instant, u32, u32)>,
}

impl RetryBudget {
    pub(crate) fn new(config: RetryBudgetConfig) -> Self {
        Self {
            config,
            buckets: VecDeque::new(),
        }
    }

    fn bucket(&mut self, now: Instant) -> &mut (Instant, u32, u32) {
        while self.buckets.front().is_some_and(|(start, _, _)| {
            now.saturating_duration_since(*start) >= self.config.window
        }) {
            self.buckets.pop_front();
        }
        let fresh = self.buckets.back().is_none_or(|(start, _, _)| {
            now.saturating_duration_since(*start) >= Duration::from_secs(1)
        });
        if fresh {
            self.buckets.push_back((now, 0, 0));
        }
        self.buckets.back_mut().expect("just ensured")
    }

    /// Every upstream attempt, first or retry, counts as a call.
    pub(crate) fn record_call(&mut self, now: Instant) {
        self.bucket(now).1 += 1;
    }

    /// Whether one more retry fits; takes it if so.
    pub(crate) fn try_retry(&mut self, now: Instant) -> bool {
        self.bucket(now);
        let calls: u32 = self.buckets.iter().map(|b| b.1).sum();
        let retries: u32 = self.buckets.iter().map(|b| b.2).sum();
        let floor = f64::from(self.config.floor_per_second) * self.config.window.as_secs_f64();
        let allowed = (f64::from(calls) * self.config.ratio).max(floor);
        if f64::from(retries) + 1.0 <= allowed {
            self.bucket(now).2 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_config() -> RetryBudgetConfig {
        RetryBudgetConfig {
            ratio: 0.1,
            floor_per_second: 1,
            window: Duration::from_secs(10),
        }
    }

    #[test]
    fn retries_are_a_tenth_of_calls_above_the_floor() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(retry_config());
        for _ in 0..1_000 {
            budget.record_call(t0);
        }
        let granted = (0..500).filter(|_| budget.try_retry(t0)).count();
        assert_eq!(granted, 100);
    }

    #[test]
    fn a_quiet_gateway_still_retries_within_the_floor() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(retry_config());
        budget.record_call(t0);
        assert!(budget.try_retry(t0), "a lone request is retried");
        let granted = (1..100).filter(|_| budget.try_retry(t0)).count();
        assert_eq!(granted, 9, "floor: 1/s over a 10 s window");
        // The window slides: old retries stop counting.
        assert!(budget.try_retry(t0 + Duration::from_secs(11)));
    }
}
