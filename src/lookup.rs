//! The lookup pipeline between the HTTP handler and the upstream client.
//!
//! A lookup takes a validated flow id and a deadline and returns the task or an `ApiError`. This is
//! the seam where the cache, coalescing and the rate limiter sit; the handler knows only this.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Clock;
use crate::credentials::CredentialStore;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::task::{FlowId, Task};
use crate::upstream::{ErrorFamily, UpstreamClient, UpstreamError};

/// Shared lookup state, built once and handed to every worker.
pub struct LookupService {
    credentials: Arc<CredentialStore>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

impl LookupService {
    pub fn new(
        credentials: Arc<CredentialStore>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            credentials,
            metrics,
            clock,
        }
    }

    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// Looks up one task before `deadline`.
    pub async fn lookup(
        &self,
        client: &UpstreamClient,
        flow_id: FlowId,
        deadline: Instant,
        trace_id: Option<&str>,
    ) -> Result<Task, ApiError> {
        let call = self.call_upstream(client, flow_id, trace_id);
        match tokio::time::timeout_at(deadline, call).await {
            Ok(result) => result.map_err(ApiError::Upstream),
            Err(_) => Err(ApiError::DeadlineExceeded),
        }
    }

    /// One signed attempt, measured and logged by outcome.
    async fn call_upstream(
        &self,
        client: &UpstreamClient,
        flow_id: FlowId,
        trace_id: Option<&str>,
    ) -> Result<Task, UpstreamError> {
        // Signed afresh for every attempt, with the clock read just before sending.
        let credentials = self.credentials.current();
        let started = self.clock.now();
        let result = client
            .describe(&credentials, flow_id, self.clock.unix_seconds(), trace_id)
            .await;
        let elapsed = self.clock.now().saturating_duration_since(started);
        self.metrics
            .record_upstream_call(&result, elapsed.as_secs_f64());
        log_upstream_failure(&result, elapsed);
        result
    }
}

/// Upstream trouble that operators must act on is logged as an error; the rest as warnings.
fn log_upstream_failure(result: &Result<Task, UpstreamError>, elapsed: Duration) {
    let Err(error) = result else { return };
    let ms = elapsed.as_millis();
    match (error, error.family()) {
        (UpstreamError::Api(answer), Some(ErrorFamily::Auth | ErrorFamily::Permission)) => {
            log::error!(
                "upstream rejected taskgate's credentials: code={} request_id={} ({} ms); \
                 check the configured key, its permissions and this host's clock",
                answer.code,
                answer.request_id.as_deref().unwrap_or("-"),
                ms
            )
        }
        (UpstreamError::Api(answer), Some(ErrorFamily::NotFound)) => log::debug!(
            "upstream: no such task (request_id={})",
            answer.request_id.as_deref().unwrap_or("-")
        ),
        (UpstreamError::Api(answer), _) => log::warn!(
            "upstream error: code={} request_id={} ({} ms)",
            answer.code,
            answer.request_id.as_deref().unwrap_or("-"),
            ms
        ),
        (other, _) => log::warn!("upstream call failed: {other:?} ({ms} ms)"),
    }
}
