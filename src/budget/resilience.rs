//! Guards against a failing upstream, shared by all workers: the retry budget and the circuit
//! breaker behind one lock, with their metrics and the log lines of the breaker's changes.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::breaker::{Admission, Breaker, BreakerConfig};
use super::retry_budget::{RetryBudget, RetryBudgetConfig};
use crate::support::lock;
use crate::telemetry::{BreakerState, Metrics};

/// Both guards behind one lock, with their metrics.
pub(crate) struct Resilience {
    inner: Mutex<(RetryBudget, Breaker)>,
    metrics: Arc<Metrics>,
}

impl Resilience {
    pub(crate) fn new(
        retry: RetryBudgetConfig,
        breaker: BreakerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.set_breaker_state(BreakerState::Closed);
        Self {
            inner: Mutex::new((RetryBudget::new(retry), Breaker::new(breaker))),
            metrics,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut RetryBudget, &mut Breaker) -> T) -> T {
        let mut guard = lock(&self.inner);
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

    pub(crate) fn admit(&self, now: Instant) -> Admission {
        self.with(|_, breaker| breaker.admit(now))
    }

    pub(crate) fn record_call(&self, now: Instant) {
        self.with(|retry, _| retry.record_call(now));
    }

    pub(crate) fn succeeded(&self) {
        self.with(|_, breaker| breaker.succeeded());
    }

    pub(crate) fn failed(&self, now: Instant) {
        self.with(|_, breaker| breaker.failed(now));
    }

    pub(crate) fn try_retry(&self, now: Instant) -> bool {
        let allowed = self.with(|retry, _| retry.try_retry(now));
        if !allowed {
            self.metrics.retries_denied.inc();
        }
        allowed
    }
}
