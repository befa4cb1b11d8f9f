//! The attempts of one fetch: each passes the circuit breaker and takes a slot from the schedule
//! (at the fetch's priority, for as long as anyone wants it), is signed afresh and sent;
//! throttling and transient failures are retried with exponential back-off and full jitter
//! inside the deadline (transient ones within the retry budget, throttled ones a few times within
//! a few seconds). What comes back is an answer to keep (a task, or a not-found) or an error to
//! share with this fetch's followers.
//!
//! Traced (when traces are on): each wait for a budget slot is a `budget wait` span (queued or
//! not, granted or refused), each attempt a client span `POST` with the HTTP client conventions
//! and what Tencent said: outcome, error code, `RequestId`. Never the credentials or signature.

use std::sync::Arc;
use std::time::Duration;

use super::cache::CachePolicy;
use super::coalesce::Leader;
use super::context::LookupContext;
use crate::answer::Answer;
use crate::budget::{Admission, Budget, Priority, Resilience, SlotAsk};
use crate::credentials::CredentialStore;
use crate::error::ApiError;
use crate::support::{ceil_secs, Clock};
use crate::task::{FlowId, Task};
use crate::telemetry::traces::{Kind, TraceSpan, Traces};
use crate::telemetry::{CallOutcome, Metrics};
use crate::upstream::{ApiErrorAnswer, ErrorFamily, UpstreamClient, UpstreamError};

/// First back-off after a throttled attempt; doubles per retry, capped, with full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// Retries of one lookup after transient failures (three attempts in all), as SDKs default to.
const MAX_TRANSIENT_RETRIES: u32 = 2;
/// Retries of one lookup that Tencent keeps throttling, and the span they must fit in: past
/// them the callers hear `Retry-After` rather than being held while the account is throttled.
const MAX_THROTTLED_RETRIES: u32 = 3;
const MAX_THROTTLED_SPAN: Duration = Duration::from_secs(5);

/// What the attempts of every fetch share, built once.
pub(crate) struct Attempts {
    pub budget: Arc<Budget>,
    pub resilience: Arc<Resilience>,
    pub credentials: Arc<CredentialStore>,
    pub policy: CachePolicy,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub traces: Traces,
}

impl Attempts {
    /// Attempts until an answer, a final error, or no time or budget left. Setbacks on the way
    /// (queued for budget, throttled, a failed attempt) are told to the fetch's followers.
    pub(crate) async fn run(
        &self,
        leader: &Leader,
        client: &UpstreamClient,
        flow_id: FlowId,
        context: &LookupContext,
        priority: Priority,
    ) -> Result<Answer, ApiError> {
        let mut retry: u32 = 0;
        let mut transient_retries: u32 = 0;
        let mut throttled_retries: u32 = 0;
        let mut first_throttled: Option<tokio::time::Instant> = None;
        let mut last_error: Option<ApiError> = None;
        loop {
            let now = self.clock.now();
            if let Admission::Rejected { until } = self.resilience.admit(now) {
                // A retry that finds the circuit open reports what the upstream last said.
                if let Some(error) = last_error {
                    return Err(error);
                }
                return Err(ApiError::CircuitOpen {
                    retry_after_secs: ceil_secs(until.saturating_duration_since(now)).max(1),
                });
            }
            let ask = SlotAsk {
                caller: context.caller.clone(),
                priority,
                interest: std::sync::Arc::clone(leader.interest()),
                deadline: context.deadline,
            };
            let waiting = self.traces.start("budget wait", Kind::Internal);
            if waiting.is_recording() {
                waiting.set("taskgate.budget.priority", priority_label(priority));
                waiting.set("taskgate.attempt", i64::from(retry + 1));
            }
            let permit = self
                .budget
                .acquire(ask, |queued, place| {
                    waiting.set("taskgate.budget.queued", true);
                    let error = ApiError::BudgetExhausted {
                        retry_after_secs: queued.retry_after_secs,
                    };
                    leader.queued(error, self.clock.now(), place)
                })
                .await
                .map_err(|refusal| {
                    waiting.set("taskgate.budget.outcome", "refused");
                    waiting.fail("no budget within the wait");
                    ApiError::BudgetExhausted {
                        retry_after_secs: refusal.retry_after_secs,
                    }
                })?;
            waiting.set("taskgate.budget.outcome", "granted");
            drop(waiting);
            leader.resumed();
            if retry > 0 {
                self.metrics.upstream_retries.inc();
            }
            // What the upstream says is true as of the request, not of its answer: the answer's
            // age counts from the send (as HTTP's corrected age counts from the request time),
            // so a caller polling at the processing interval finds it due at its next poll.
            let sent = self.clock.now();
            self.resilience.record_call(sent);
            let result = self
                .call_upstream(client, flow_id, context.trace_id.as_deref(), retry + 1)
                .await;
            // The slot starts cooling when the answer is in, which is what keeps Tencent's window.
            drop(permit);
            let now = self.clock.now();
            match result {
                Err(error) if error.is_transient() => {
                    self.resilience.failed(now);
                    let backoff = full_jitter(retry);
                    let error = ApiError::Upstream(error);
                    if transient_retries >= MAX_TRANSIENT_RETRIES
                        || now + backoff >= context.deadline_now(leader.interest())
                        || !self.resilience.try_retry(now)
                    {
                        return Err(error);
                    }
                    leader.setback(error.clone(), now);
                    last_error = Some(error);
                    tokio::time::sleep(backoff).await;
                    retry += 1;
                    transient_retries += 1;
                }
                Err(error) if error.is_throttled() => {
                    // An answer from a live upstream: not a breaker failure.
                    self.resilience.succeeded();
                    self.budget.throttled();
                    let since = *first_throttled.get_or_insert(now);
                    let backoff = full_jitter(retry);
                    let retry_after_secs = ceil_secs(backoff_ceiling(retry + 1))
                        .max(self.budget.retry_after_secs(priority))
                        .max(1);
                    let error = ApiError::Throttled {
                        error,
                        retry_after_secs,
                    };
                    if throttled_retries >= MAX_THROTTLED_RETRIES
                        || now + backoff >= context.deadline_now(leader.interest())
                        || now + backoff >= since + MAX_THROTTLED_SPAN
                    {
                        return Err(error);
                    }
                    leader.setback(error.clone(), now);
                    last_error = Some(error);
                    tokio::time::sleep(backoff).await;
                    retry += 1;
                    throttled_retries += 1;
                }
                Ok(task) => {
                    self.resilience.succeeded();
                    let (ttl, stale_for) = if task.status.is_final() {
                        (self.policy.final_ttl, Duration::ZERO)
                    } else {
                        let reuse = match priority {
                            Priority::Refresh { .. } => self
                                .policy
                                .refresh_reuse(sent.saturating_duration_since(context.asked_at)),
                            Priority::Unknown => self.policy.processing_reuse(),
                        };
                        (reuse, self.policy.stale_if_error)
                    };
                    return Ok(Answer::from_task(&task, sent, ttl, stale_for));
                }
                Err(error) if error.family() == Some(ErrorFamily::NotFound) => {
                    self.resilience.succeeded();
                    let ttl = self.policy.not_found_ttl;
                    return Ok(Answer::not_found(&ApiError::Upstream(error), sent, ttl));
                }
                // The handshake was refused: no answer from the upstream at all, so it neither
                // closes nor opens the breaker; and retrying cannot change it.
                Err(error @ UpstreamError::Tls { .. }) => return Err(ApiError::Upstream(error)),
                Err(error) => {
                    self.resilience.succeeded();
                    return Err(ApiError::Upstream(error));
                }
            }
        }
    }

    /// One signed attempt, measured, traced and logged by outcome.
    async fn call_upstream(
        &self,
        client: &UpstreamClient,
        flow_id: FlowId,
        trace_id: Option<&str>,
        attempt: u32,
    ) -> Result<Task, UpstreamError> {
        let span = self.traces.start("POST", Kind::Client);
        if span.is_recording() {
            attempt_attributes(&span, client, flow_id, attempt);
        }
        // Signed afresh for every attempt, with the clock read just before sending.
        let credentials = self.credentials.load_full();
        let started = self.clock.now();
        let result = client
            .describe(&credentials, flow_id, self.clock.unix_seconds(), trace_id)
            .await;
        let elapsed = self.clock.now().saturating_duration_since(started);
        if span.is_recording() {
            outcome_attributes(&span, &result);
        }
        self.metrics
            .record_upstream_call(&result, elapsed.as_secs_f64());
        if let Err(UpstreamError::Api(answer)) = &result {
            if answer.code == "AuthFailure.SignatureExpire" {
                self.report_clock_problem(answer);
                return result;
            }
        }
        log_upstream_failure(&result, elapsed);
        result
    }

    /// Tencent refuses signatures more than 5 minutes off its clock: ours is wrong. Says by how
    /// much, from the answer's `Date` header, so the fix (NTP) is obvious.
    fn report_clock_problem(&self, answer: &ApiErrorAnswer) {
        self.metrics.signature_expired.inc();
        let local =
            std::time::UNIX_EPOCH + Duration::from_secs(self.clock.unix_seconds().max(0) as u64);
        match answer.server_date {
            Some(server) => {
                let skew = match local.duration_since(server) {
                    Ok(ahead) => ahead.as_secs_f64(),
                    Err(behind) => -behind.duration().as_secs_f64(),
                };
                self.metrics.clock_skew.set(skew);
                log::error!(
                    "clock problem: upstream answered AuthFailure.SignatureExpire; this host's clock \
                     is {skew:+.0} s off the upstream's (request_id={}); fix time sync (NTP)",
                    answer.request_id.as_deref().unwrap_or("-")
                );
            }
            None => log::error!(
                "clock problem: upstream answered AuthFailure.SignatureExpire (no Date header to \
                 measure the skew; request_id={}); check this host's time sync (NTP)",
                answer.request_id.as_deref().unwrap_or("-")
            ),
        }
    }
}

fn priority_label(priority: Priority) -> &'static str {
    match priority {
        Priority::Unknown => "unknown",
        Priority::Refresh { .. } => "refresh",
    }
}

/// An attempt's HTTP client attributes: where it goes, what for, which try it is.
fn attempt_attributes(span: &TraceSpan, client: &UpstreamClient, flow_id: FlowId, attempt: u32) {
    let endpoint = client.endpoint();
    let default_port = if endpoint.is_tls { 443 } else { 80 };
    let (address, port) = match endpoint.host.rsplit_once(':') {
        Some((name, port)) => (name, port.parse().unwrap_or(default_port)),
        None => (endpoint.host.as_str(), default_port),
    };
    span.set("http.request.method", "POST");
    span.set("url.full", endpoint.url.clone());
    span.set("server.address", address.to_owned());
    span.set("server.port", i64::from(port));
    span.set("rpc.method", "DescribeAsyncRequestInfo");
    span.set("taskgate.flow_id", flow_id.get());
    span.set("taskgate.attempt", i64::from(attempt));
}

/// What the attempt came back with: outcome, HTTP status, Tencent's error code and `RequestId`.
/// A task Tencent does not know is an answer, not a failed call.
fn outcome_attributes(span: &TraceSpan, result: &Result<Task, UpstreamError>) {
    let outcome = CallOutcome::of(result);
    span.set("taskgate.upstream.outcome", outcome.as_str());
    let status = match result {
        Ok(_) | Err(UpstreamError::Api(_)) => Some(200),
        Err(UpstreamError::HttpStatus { status }) => Some(*status),
        Err(_) => None,
    };
    if let Some(status) = status {
        span.set("http.response.status_code", i64::from(status));
    }
    let request_id = match result {
        Ok(task) => Some(task.request_id.as_str()),
        Err(error) => error.request_id(),
    };
    if let Some(id) = request_id {
        span.set("tencentcloud.request_id", id.to_owned());
    }
    if let Err(error) = result {
        let error_type = match error {
            UpstreamError::Api(answer) => {
                span.set("tencentcloud.error_code", answer.code.clone());
                answer.code.clone()
            }
            _ => outcome.as_str().to_owned(),
        };
        if outcome != CallOutcome::NotFound {
            span.set("error.type", error_type.clone());
            span.fail(error_type);
        }
    }
}

/// Exponential back-off with full jitter: uniform in [0, min(cap, base * 2^retry)].
fn full_jitter(retry: u32) -> Duration {
    backoff_ceiling(retry).mul_f64(fastrand::f64())
}

fn backoff_ceiling(retry: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32 << retry.min(16))
        .min(BACKOFF_CAP)
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
        (UpstreamError::Tls { reason }, _) => log::error!(
            "TLS to the upstream failed: {reason} ({ms} ms); not retried. Check \
             TASKGATE_UPSTREAM_ENDPOINT and TASKGATE_UPSTREAM_CA_FILE (the CA that issued the \
             upstream's certificate, not the certificate itself)"
        ),
        (other, _) => log::warn!("upstream call failed: {other:?} ({ms} ms)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_under_the_growing_ceiling() {
        for retry in 0..20 {
            let ceiling = backoff_ceiling(retry);
            assert!(ceiling <= BACKOFF_CAP);
            for _ in 0..100 {
                assert!(full_jitter(retry) <= ceiling);
            }
        }
        assert_eq!(backoff_ceiling(0), BACKOFF_BASE);
        assert_eq!(backoff_ceiling(1), BACKOFF_BASE * 2);
    }
}
