//! Guards against a failing upstream: a retry budget and a circuit breaker, both pure (every
//! method takes `now`) and shared by all workers.
//!
//! - The retry budget lets retries of transient failures be at most `ratio` of the calls made in
//!   the last `window`, plus a small floor per second so a lone request on a quiet gateway is
//!   still retried (as Envoy's `min_retry_concurrency`). An outage therefore never multiplies
//!   upstream traffic.
//! - The circuit breaker opens after `failures` consecutive transient failures: lookups that need
//!   the upstream are answered 503 at once instead of queueing behind a dead upstream. After the
//!   open period one probe call is let through (half-open); its success closes the circuit, its
//!   failure opens it again for twice as long (up to a cap).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::{BreakerState, Metrics};

/// Retry budget settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryBudgetConfig {
    pub ratio: f64,
    pub floor_per_second: u32,
    pub window: Duration,
}

/// Calls and retries over a sliding window, in one-second buckets.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    /// (bucket start, calls, retries), oldest first.
    buckets: VecDeque<(Instant, u32, u32)>,
}

impl RetryBudget {
    pub fn new(config: RetryBudgetConfig) -> Self {
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
    pub fn record_call(&mut self, now: Instant) {
        self.bucket(now).1 += 1;
    }

    /// Whether one more retry fits; takes it if so.
    pub fn try_retry(&mut self, now: Instant) -> bool {
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

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub failures: u32,
    pub open_for: Duration,
    pub max_open_for: Duration,
    /// How long a probe may take before another one is let through (a probe whose caller
    /// vanished must not keep the circuit half-open for ever).
    pub probe_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant, open_for: Duration },
    HalfOpen { open_for: Duration, since: Instant },
}

/// What the breaker lets a lookup do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Call,
    /// Go ahead: this call is the single probe of a half-open circuit.
    Probe,
    /// The circuit is open until this instant.
    Rejected { until: Instant },
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    circuit: Circuit,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            circuit: Circuit::Closed { failures: 0 },
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.circuit {
            Circuit::Closed { .. } => Admission::Call,
            Circuit::Open { until, open_for } if now >= until => {
                self.circuit = Circuit::HalfOpen {
                    open_for,
                    since: now,
                };
                Admission::Probe
            }
            Circuit::Open { until, .. } => Admission::Rejected { until },
            Circuit::HalfOpen { open_for, since } if now >= since + self.config.probe_timeout => {
                self.circuit = Circuit::HalfOpen {
                    open_for,
                    since: now,
                };
                Admission::Probe
            }
            // One probe at a time: the others hear its verdict soon.
            Circuit::HalfOpen { .. } => Admission::Rejected {
                until: now + Duration::from_secs(1),
            },
        }
    }

    /// A call got an answer (any answer that is not a transient failure).
    pub fn succeeded(&mut self) {
        self.circuit = Circuit::Closed { failures: 0 };
    }

    /// A call failed transiently (transport, timeout, 5xx, InternalError, ServiceUnavailable).
    pub fn failed(&mut self, now: Instant) {
        self.circuit = match self.circuit {
            Circuit::Closed { failures } if failures + 1 >= self.config.failures => Circuit::Open {
                until: now + self.config.open_for,
                open_for: self.config.open_for,
            },
            Circuit::Closed { failures } => Circuit::Closed {
                failures: failures + 1,
            },
            // Calls already under way when the circuit opened fail too: that says nothing new.
            open @ Circuit::Open { .. } => open,
            // The probe failed: stay away twice as long.
            Circuit::HalfOpen { open_for, .. } => {
                let open_for = (open_for * 2).min(self.config.max_open_for);
                Circuit::Open {
                    until: now + open_for,
                    open_for,
                }
            }
        };
    }

    pub fn state(&self) -> BreakerState {
        match self.circuit {
            Circuit::Closed { .. } => BreakerState::Closed,
            Circuit::Open { .. } => BreakerState::Open,
            Circuit::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// Both guards behind one lock, with their metrics.
pub struct Resilience {
    inner: Mutex<(RetryBudget, Breaker)>,
    metrics: Arc<Metrics>,
}

impl Resilience {
    pub fn new(retry: RetryBudgetConfig, breaker: BreakerConfig, metrics: Arc<Metrics>) -> Self {
        metrics.set_breaker_state(BreakerState::Closed);
        Self {
            inner: Mutex::new((RetryBudget::new(retry), Breaker::new(breaker))),
            metrics,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut RetryBudget, &mut Breaker) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (retry, breaker) = &mut *guard;
        let before = breaker.state();
        let result = f(retry, breaker);
        let after = breaker.state();
        if before != after {
            self.metrics.set_breaker_state(after);
            match after {
                BreakerState::Open => log::error!(
                    "circuit breaker open: the upstream keeps failing; answering 503 at once"
                ),
                BreakerState::HalfOpen => log::info!("circuit breaker half-open: probing"),
                BreakerState::Closed => log::info!("circuit breaker closed: upstream recovered"),
            }
        }
        result
    }

    pub fn admit(&self, now: Instant) -> Admission {
        self.with(|_, breaker| breaker.admit(now))
    }

    pub fn record_call(&self, now: Instant) {
        self.with(|retry, _| retry.record_call(now));
    }

    pub fn succeeded(&self) {
        self.with(|_, breaker| breaker.succeeded());
    }

    pub fn failed(&self, now: Instant) {
        self.with(|_, breaker| breaker.failed(now));
    }

    pub fn try_retry(&self, now: Instant) -> bool {
        let allowed = self.with(|retry, _| retry.try_retry(now));
        if !allowed {
            self.metrics.retries_denied.inc();
        }
        allowed
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

    #[test]
    fn the_breaker_opens_probes_and_closes() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(BreakerConfig {
            failures: 3,
            open_for: Duration::from_secs(2),
            max_open_for: Duration::from_secs(8),
            probe_timeout: Duration::from_secs(7),
        });
        for _ in 0..2 {
            breaker.failed(t0);
            assert_eq!(breaker.admit(t0), Admission::Call);
        }
        breaker.failed(t0);
        assert_eq!(
            breaker.admit(t0),
            Admission::Rejected {
                until: t0 + Duration::from_secs(2)
            }
        );
        // Calls that were already under way fail too; they do not lengthen the open time.
        for _ in 0..20 {
            breaker.failed(t0 + Duration::from_millis(500));
        }
        assert_eq!(
            breaker.admit(t0 + Duration::from_millis(600)),
            Admission::Rejected {
                until: t0 + Duration::from_secs(2)
            }
        );
        let later = t0 + Duration::from_secs(2);
        assert_eq!(breaker.admit(later), Admission::Probe);
        assert!(
            matches!(breaker.admit(later), Admission::Rejected { .. }),
            "one probe at a time"
        );
        assert_eq!(
            breaker.admit(later + Duration::from_secs(7)),
            Admission::Probe,
            "a vanished probe is replaced"
        );
        breaker.failed(later);
        assert_eq!(
            breaker.admit(later),
            Admission::Rejected {
                until: later + Duration::from_secs(4)
            },
            "a failed probe doubles the open time"
        );
        let much_later = later + Duration::from_secs(4);
        assert_eq!(breaker.admit(much_later), Admission::Probe);
        breaker.succeeded();
        assert_eq!(breaker.admit(much_later), Admission::Call);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
