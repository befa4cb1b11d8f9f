//! The lookup pipeline between the HTTP handler and the upstream client:
//! cache -> coalesce -> budget -> upstream, and back: store by status, wake the followers.
//!
//! 1. A fresh cached answer is served at once (`X-Cache: hit`).
//! 2. Otherwise the lookup joins the fetch under way for its flow id, or leads a new one. The fetch
//!    runs detached on the leader's worker, bounded by the configured request timeout, so no
//!    caller's disconnect or short deadline cancels it for the others.
//! 3. Each attempt takes a budget slot first; throttled attempts back off with full jitter inside
//!    the deadline and lower the budget's rate.
//! 4. Answers are stored by status (final, processing, not found); errors are shared with the
//!    followers of this fetch but never stored.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::board::AnswerBoard;
use crate::budget::Budget;
use crate::cache::{Answer, AnswerCache, CacheLookup};
use crate::callers::CallerName;
use crate::clock::Clock;
use crate::coalesce::{wait_for, Fetched, InFlight, Leader, Origin, Role};
use crate::credentials::CredentialStore;
use crate::error::ApiError;
use crate::metrics::{Metrics, Served};
use crate::resilience::{Admission, Resilience};
use crate::shared::envelope::Outcome;
use crate::shared::flight::{Flight, Lease};
use crate::task::{FlowId, Task};
use crate::upstream::{ErrorFamily, UpstreamClient, UpstreamError};

/// First back-off after a throttled attempt; doubles per retry, capped, with full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// Retries of one lookup after transient failures (three attempts in all), as SDKs default to.
const MAX_TRANSIENT_RETRIES: u32 = 2;

/// Who asks and until when.
#[derive(Debug, Clone)]
pub struct LookupContext {
    /// The caller's deadline (for a fetch: the fetch's own).
    pub deadline: Instant,
    /// The request id, sent upstream as `X-TC-TraceId`.
    pub trace_id: Option<Arc<str>>,
    /// The authenticated caller, whose queue the fetch waits in for budget.
    pub caller: Option<CallerName>,
}

/// What a lookup produced and how.
pub struct Lookup {
    pub answer: Arc<Answer>,
    pub served: Served,
}

struct Inner {
    cache: AnswerCache,
    in_flight: Arc<InFlight>,
    budget: Arc<Budget>,
    resilience: Arc<Resilience>,
    flight: Option<Arc<Flight>>,
    board: Arc<AnswerBoard>,
    credentials: Arc<CredentialStore>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    fetch_timeout: Duration,
}

/// Shared lookup state, built once and handed to every worker.
#[derive(Clone)]
pub struct LookupService {
    inner: Arc<Inner>,
}

/// What the lookup service is built from.
pub struct LookupParts {
    pub cache: AnswerCache,
    pub budget: Arc<Budget>,
    pub resilience: Arc<Resilience>,
    /// Shared mode's cache and cross-replica lookups, when Redis is configured.
    pub flight: Option<Arc<Flight>>,
    /// Where long polls listen for answers.
    pub board: Arc<AnswerBoard>,
    pub credentials: Arc<CredentialStore>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub fetch_timeout: Duration,
}

impl LookupService {
    pub fn new(parts: LookupParts) -> Self {
        Self {
            inner: Arc::new(Inner {
                cache: parts.cache,
                in_flight: Arc::new(InFlight::default()),
                budget: parts.budget,
                resilience: parts.resilience,
                flight: parts.flight,
                board: parts.board,
                credentials: parts.credentials,
                metrics: parts.metrics,
                clock: parts.clock,
                fetch_timeout: parts.fetch_timeout,
            }),
        }
    }

    pub fn clock(&self) -> &dyn Clock {
        self.inner.clock.as_ref()
    }

    /// Looks up one task, answering by `deadline` at the latest.
    pub async fn lookup(
        &self,
        client: &UpstreamClient,
        flow_id: FlowId,
        context: &LookupContext,
    ) -> Result<Lookup, ApiError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let stale = match inner.cache.lookup(flow_id, now).await {
            CacheLookup::Fresh(answer) => {
                inner.metrics.cache_lookups_hit.inc();
                return Ok(Lookup {
                    answer,
                    served: Served::Hit,
                });
            }
            CacheLookup::Stale(answer) => Some(answer),
            CacheLookup::Miss => None,
        };
        let (result, role) = self.fetch_or_join(client, flow_id, now, context).await;
        let result = match (result, stale) {
            // The refresh failed on the upstream's side: the last known status beats an error.
            (Err(error), Some(stale))
                if error.status().is_server_error()
                    && !stale.usable(inner.clock.now()).is_zero() =>
            {
                log::debug!("serving a stale processing status: {error}");
                Ok(Lookup {
                    answer: stale,
                    served: Served::Stale,
                })
            }
            (result, _) => result,
        };
        // Counted once, by how the caller was finally served (a failed lookup by its role).
        let served = result.as_ref().map_or(role, |found| found.served);
        match served {
            Served::Hit => inner.metrics.cache_lookups_hit.inc(),
            Served::Miss => inner.metrics.cache_lookups_miss.inc(),
            Served::Shared => inner.metrics.cache_lookups_shared.inc(),
            Served::Stale => inner.metrics.cache_lookups_stale.inc(),
        }
        result
    }

    /// Leads a fetch for this flow id or joins the one under way, and waits for its result.
    /// Also says which it was (`Miss` for the leader, `Shared` for a follower).
    async fn fetch_or_join(
        &self,
        client: &UpstreamClient,
        flow_id: FlowId,
        now: Instant,
        context: &LookupContext,
    ) -> (Result<Lookup, ApiError>, Served) {
        let deadline = context.deadline;
        let inner = &self.inner;
        match inner.in_flight.join(flow_id) {
            Role::Leader(leader, receiver) => {
                // The fetch has its own deadline, the longest any caller may have.
                let fetch_context = LookupContext {
                    deadline: now + inner.fetch_timeout,
                    ..context.clone()
                };
                let service = self.clone();
                let client = client.clone();
                // Detached: the fetch finishes for the followers even if this caller leaves.
                actix_rt::spawn(async move {
                    service.fetch(leader, &client, flow_id, fetch_context).await;
                });
                let result = wait_for(receiver, deadline).await;
                let served = match &result {
                    Ok(Fetched {
                        origin: Origin::SharedCache,
                        ..
                    }) => Served::Hit,
                    Ok(Fetched {
                        origin: Origin::Peer,
                        ..
                    }) => Served::Shared,
                    _ => Served::Miss,
                };
                let found = result.map(|fetched| Lookup {
                    answer: fetched.answer,
                    served,
                });
                (found, Served::Miss)
            }
            Role::Follower(receiver) => {
                inner.metrics.coalesced_waiters.inc();
                let result = wait_for(receiver, deadline).await;
                inner.metrics.coalesced_waiters.dec();
                let found = result.map(|fetched| Lookup {
                    answer: fetched.answer,
                    served: Served::Shared,
                });
                (found, Served::Shared)
            }
        }
    }

    /// The leader's fetch: shared cache and peers when Redis is usable, else (or then) budget
    /// and upstream; stores the answer locally and publishes the result to the followers.
    async fn fetch(
        &self,
        leader: Leader,
        client: &UpstreamClient,
        flow_id: FlowId,
        context: LookupContext,
    ) {
        let deadline = context.deadline;
        let inner = &self.inner;
        inner.metrics.inflight_fetches.inc();
        let work = self.fetch_anywhere(&leader, client, flow_id, &context);
        let result = match tokio::time::timeout_at(deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::DeadlineExceeded),
        };
        if let Ok(fetched) = &result {
            inner
                .cache
                .insert(flow_id, Arc::clone(&fetched.answer))
                .await;
            // Wakes long polls on this task at once, whoever's lookup learned the answer.
            inner.board.post(flow_id, &fetched.answer);
        }
        inner.metrics.inflight_fetches.dec();
        leader.finish(result);
    }

    async fn fetch_anywhere(
        &self,
        leader: &Leader,
        client: &UpstreamClient,
        flow_id: FlowId,
        context: &LookupContext,
    ) -> Result<Fetched, ApiError> {
        let deadline = context.deadline;
        let upstream = |answer: Answer| Fetched {
            answer: Arc::new(answer),
            origin: Origin::Upstream,
        };
        let Some(flight) = self.inner.flight.as_ref().filter(|f| f.redis().is_usable()) else {
            return self
                .attempts(leader, client, flow_id, context)
                .await
                .map(upstream);
        };
        let now = self.inner.clock.now();
        match flight.cached(flow_id, now).await {
            Ok(Some(answer)) => {
                return Ok(Fetched {
                    answer: Arc::new(answer),
                    origin: Origin::SharedCache,
                })
            }
            Ok(None) => {}
            // Redis is unavailable: this replica fetches on its own, within its local share.
            Err(_) => {
                return self
                    .attempts(leader, client, flow_id, context)
                    .await
                    .map(upstream)
            }
        }
        loop {
            // Listen before looking at the lease, so the holder's publish cannot be missed.
            let outcome = flight.register(flow_id);
            match flight.try_lease(flow_id).await {
                Err(_) => {
                    flight.unregister(flow_id);
                    return self
                        .attempts(leader, client, flow_id, context)
                        .await
                        .map(upstream);
                }
                Ok(Lease::Acquired(token)) => {
                    drop(outcome);
                    flight.unregister(flow_id);
                    return self
                        .fetch_as_lease_holder(flight, &token, leader, client, flow_id, context)
                        .await
                        .map(|answer| Fetched {
                            answer,
                            origin: Origin::Upstream,
                        });
                }
                Ok(Lease::Held(lease_left)) => {
                    let now = self.inner.clock.now();
                    if let Ok(Some(answer)) = flight.cached(flow_id, now).await {
                        flight.unregister(flow_id);
                        return Ok(Fetched {
                            answer: Arc::new(answer),
                            origin: Origin::SharedCache,
                        });
                    }
                    let wait_until = deadline.min(now + lease_left + Duration::from_millis(50));
                    if let Ok(Ok(published)) = tokio::time::timeout_at(wait_until, outcome).await {
                        let now = self.inner.clock.now();
                        if let Some(result) = published.into_result(now) {
                            return result.map(|answer| Fetched {
                                answer: Arc::new(answer),
                                origin: Origin::Peer,
                            });
                        }
                    }
                    // No outcome within the lease: its holder is gone. Take over.
                    flight.unregister(flow_id);
                }
            }
        }
    }

    /// Fetches while holding the cross-replica lease; stores and publishes the outcome.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_as_lease_holder(
        &self,
        flight: &Arc<Flight>,
        token: &str,
        leader: &Leader,
        client: &UpstreamClient,
        flow_id: FlowId,
        context: &LookupContext,
    ) -> Result<Arc<Answer>, ApiError> {
        let keepalive = {
            let flight = Arc::clone(flight);
            let token = token.to_string();
            tokio::spawn(async move {
                let every = flight.lease_ttl() / 3;
                loop {
                    tokio::time::sleep(every).await;
                    flight.renew(flow_id, &token).await;
                }
            })
        };
        let result = self
            .attempts(leader, client, flow_id, context)
            .await
            .map(Arc::new);
        keepalive.abort();
        if let Ok(answer) = &result {
            let remaining = answer.remaining(self.inner.clock.now());
            flight.store(flow_id, answer, remaining).await;
        }
        flight.finish(flow_id, token, &Outcome::of(&result)).await;
        result
    }

    /// Attempts until an answer, a final error, or no time or budget left: each attempt passes
    /// the circuit breaker and takes a budget slot; throttling and transient failures are retried
    /// with exponential back-off and full jitter (transient ones within the retry budget).
    async fn attempts(
        &self,
        leader: &Leader,
        client: &UpstreamClient,
        flow_id: FlowId,
        context: &LookupContext,
    ) -> Result<Answer, ApiError> {
        let deadline = context.deadline;
        let inner = &self.inner;
        let mut retry: u32 = 0;
        let mut transient_retries: u32 = 0;
        let mut last_error: Option<ApiError> = None;
        loop {
            let now = inner.clock.now();
            if let Admission::Rejected { until } = inner.resilience.admit(now) {
                // A retry that finds the circuit open reports what the upstream last said.
                if let Some(error) = last_error {
                    return Err(error);
                }
                let wait = until.saturating_duration_since(now);
                return Err(ApiError::CircuitOpen {
                    retry_after_secs: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
                });
            }
            let permit = inner
                .budget
                .acquire(deadline, context.caller.clone(), |queued| {
                    leader.setback(ApiError::BudgetExhausted {
                        retry_after_secs: queued.retry_after_secs,
                    })
                })
                .await
                .map_err(|refusal| ApiError::BudgetExhausted {
                    retry_after_secs: refusal.retry_after_secs,
                })?;
            if retry > 0 {
                inner.metrics.upstream_retries.inc();
            }
            inner.resilience.record_call(inner.clock.now());
            let result = self
                .call_upstream(client, flow_id, context.trace_id.as_deref())
                .await;
            // The slot starts cooling when the answer is in, which is what keeps Tencent's window.
            drop(permit);
            let now = inner.clock.now();
            match result {
                Err(error) if error.is_transient() => {
                    inner.resilience.failed(now);
                    let backoff = full_jitter(retry);
                    let error = ApiError::Upstream(error);
                    if transient_retries >= MAX_TRANSIENT_RETRIES
                        || now + backoff >= deadline
                        || !inner.resilience.try_retry(now)
                    {
                        return Err(error);
                    }
                    leader.setback(error.clone());
                    last_error = Some(error);
                    tokio::time::sleep(backoff).await;
                    retry += 1;
                    transient_retries += 1;
                }
                Err(error) if error.is_throttled() => {
                    // An answer from a live upstream: not a breaker failure.
                    inner.resilience.succeeded();
                    inner.budget.throttled();
                    let backoff = full_jitter(retry);
                    let error = ApiError::Upstream(error);
                    if now + backoff >= deadline {
                        return Err(error);
                    }
                    leader.setback(error.clone());
                    last_error = Some(error);
                    tokio::time::sleep(backoff).await;
                    retry += 1;
                }
                Ok(task) => {
                    inner.resilience.succeeded();
                    let policy = inner.cache.policy();
                    let (ttl, stale_for) = if task.status.is_final() {
                        (policy.final_ttl, Duration::ZERO)
                    } else {
                        (policy.processing_ttl, policy.stale_if_error)
                    };
                    return Ok(Answer::from_task(&task, now, ttl, stale_for));
                }
                Err(error) if error.family() == Some(ErrorFamily::NotFound) => {
                    inner.resilience.succeeded();
                    let ttl = inner.cache.policy().not_found_ttl;
                    return Ok(Answer::not_found(&ApiError::Upstream(error), now, ttl));
                }
                Err(error) => {
                    inner.resilience.succeeded();
                    return Err(ApiError::Upstream(error));
                }
            }
        }
    }

    /// One signed attempt, measured and logged by outcome.
    async fn call_upstream(
        &self,
        client: &UpstreamClient,
        flow_id: FlowId,
        trace_id: Option<&str>,
    ) -> Result<Task, UpstreamError> {
        let inner = &self.inner;
        // Signed afresh for every attempt, with the clock read just before sending.
        let credentials = inner.credentials.current();
        let started = inner.clock.now();
        let result = client
            .describe(&credentials, flow_id, inner.clock.unix_seconds(), trace_id)
            .await;
        let elapsed = inner.clock.now().saturating_duration_since(started);
        inner
            .metrics
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
    fn report_clock_problem(&self, answer: &crate::upstream::answer::ApiErrorAnswer) {
        let metrics = &self.inner.metrics;
        metrics.signature_expired.inc();
        let local = std::time::UNIX_EPOCH
            + Duration::from_secs(self.inner.clock.unix_seconds().max(0) as u64);
        match answer.server_date {
            Some(server) => {
                let skew = match local.duration_since(server) {
                    Ok(ahead) => ahead.as_secs_f64(),
                    Err(behind) => -behind.duration().as_secs_f64(),
                };
                metrics.clock_skew.set(skew);
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

/// Exponential back-off with full jitter: uniform in [0, min(cap, base * 2^retry)].
fn full_jitter(retry: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << retry.min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(fastrand::f64())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_under_the_growing_ceiling() {
        for retry in 0..20 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1u32 << retry.min(16))
                .min(BACKOFF_CAP);
            for _ in 0..100 {
                assert!(full_jitter(retry) <= ceiling);
            }
        }
    }
}
