//! Process-wide state the handlers read: readiness, metrics and the request deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub request_timeout: Duration,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(metrics: Arc<Metrics>, request_timeout: Duration) -> Self {
        metrics.ready.set(1);
        Self {
            metrics,
            request_timeout,
            draining: AtomicBool::new(false),
        }
    }

    /// Ready means: configuration and credentials loaded (or we would not be running) and not
    /// draining. Never asks the upstream: that would spend the account's budget.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining: shutting down");
        }
        Ok(())
    }

    /// Marks the process as leaving: readiness turns 503 at once.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.metrics.ready.set(0);
    }
}
